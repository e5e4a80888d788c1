//! SQL types and values, table schemas, and how rows and keys are encoded
//! for the engine's trees.
//!
//! - A **row** is its columns in order, each a tag byte (`0` for NULL) and
//!   the value: integers and timestamps as 8 little-endian bytes, floats as
//!   their 8-byte IEEE bits, booleans as one byte, text as a 4-byte length
//!   and UTF-8.
//! - A **key** is the primary-key columns in an order-preserving encoding
//!   (byte order = value order), so the B+tree's order is the key's. A table
//!   without a primary key is keyed by a hidden row id: the inserting
//!   transaction's id and a counter, both big-endian.

use std::collections::BTreeMap;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use super::SqlError;

/// A column's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SqlType {
    /// `SMALLINT`.
    SmallInt,
    /// `INT`, `INTEGER`.
    Int,
    /// `BIGINT`.
    BigInt,
    /// `REAL`.
    Real,
    /// `DOUBLE PRECISION`.
    Double,
    /// `NUMERIC`/`DECIMAL`, held as a double (see docs/sql.md).
    Numeric,
    /// `TEXT`, or `VARCHAR(n)` with its limit.
    Text(Option<u32>),
    /// `CHAR(n)`: blank-padded to `n`.
    Char(u32),
    /// `BOOLEAN`.
    Bool,
    /// `TIMESTAMP` (without time zone).
    Timestamp,
    /// `TIMESTAMPTZ`, shown in UTC.
    TimestampTz,
}

impl SqlType {
    /// Parses a type as sqlparser prints it (`INT`, `CHARACTER VARYING(10)`,
    /// `TIMESTAMP WITH TIME ZONE`, …).
    pub fn parse(text: &str) -> Result<SqlType, SqlError> {
        let upper = text.to_ascii_uppercase();
        let (base, arg) = match upper.split_once('(') {
            Some((base, rest)) => (base.trim(), rest.trim_end_matches(')').split(',').next().map(str::trim)),
            None => (upper.trim(), None),
        };
        let length = || -> Result<u32, SqlError> {
            arg.map_or(Ok(1), |n| n.parse().map_err(|_| SqlError::syntax(format!("bad length in type {text}"))))
        };
        Ok(match base {
            "SMALLINT" | "INT2" => SqlType::SmallInt,
            "INT" | "INTEGER" | "INT4" => SqlType::Int,
            "BIGINT" | "INT8" => SqlType::BigInt,
            "REAL" | "FLOAT4" => SqlType::Real,
            "DOUBLE PRECISION" | "DOUBLE" | "FLOAT8" | "FLOAT" => SqlType::Double,
            "NUMERIC" | "DECIMAL" => SqlType::Numeric,
            "TEXT" | "STRING" => SqlType::Text(None),
            "VARCHAR" | "CHARACTER VARYING" | "CHAR VARYING" => SqlType::Text(arg.map(|_| length()).transpose()?),
            "CHAR" | "CHARACTER" | "BPCHAR" => SqlType::Char(length()?),
            "BOOLEAN" | "BOOL" => SqlType::Bool,
            "TIMESTAMP" | "TIMESTAMP WITHOUT TIME ZONE" => SqlType::Timestamp,
            "TIMESTAMPTZ" | "TIMESTAMP WITH TIME ZONE" => SqlType::TimestampTz,
            _ => return Err(SqlError::new("0A000", format!("type {text} is not supported (see docs/sql.md)"))),
        })
    }

    /// The PostgreSQL type name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            SqlType::SmallInt => "smallint",
            SqlType::Int => "integer",
            SqlType::BigInt => "bigint",
            SqlType::Real => "real",
            SqlType::Double => "double precision",
            SqlType::Numeric => "numeric",
            SqlType::Text(None) => "text",
            SqlType::Text(Some(_)) => "character varying",
            SqlType::Char(_) => "character",
            SqlType::Bool => "boolean",
            SqlType::Timestamp => "timestamp without time zone",
            SqlType::TimestampTz => "timestamp with time zone",
        }
    }

    /// Converts `value` to this type, as an assignment to a column does.
    pub fn coerce(self, value: Value) -> Result<Value, SqlError> {
        let bad =
            |v: &Value| SqlError::new("22P02", format!("invalid input syntax for type {}: \"{}\"", self.name(), v));
        Ok(match (self, value) {
            (_, Value::Null) => Value::Null,
            (SqlType::SmallInt | SqlType::Int | SqlType::BigInt, v) => {
                let n = match &v {
                    Value::Int(n) => *n,
                    Value::Float(f) if f.is_finite() => f.round() as i64,
                    Value::Text(s) => s.trim().parse::<i64>().map_err(|_| bad(&v))?,
                    Value::Bool(b) => i64::from(*b),
                    _ => return Err(bad(&v)),
                };
                let (lo, hi) = match self {
                    SqlType::SmallInt => (i16::MIN as i64, i16::MAX as i64),
                    SqlType::Int => (i32::MIN as i64, i32::MAX as i64),
                    _ => (i64::MIN, i64::MAX),
                };
                if n < lo || n > hi {
                    return Err(SqlError::new("22003", format!("{} out of range for type {}", n, self.name())));
                }
                Value::Int(n)
            }
            (SqlType::Real | SqlType::Double | SqlType::Numeric, v) => match &v {
                Value::Int(n) => Value::Float(*n as f64),
                Value::Float(f) => Value::Float(*f),
                Value::Text(s) => Value::Float(s.trim().parse::<f64>().map_err(|_| bad(&v))?),
                _ => return Err(bad(&v)),
            },
            (SqlType::Text(limit), v) => {
                let s = v.to_string();
                if let Some(limit) = limit {
                    if s.chars().count() > limit as usize {
                        return Err(SqlError::new(
                            "22001",
                            format!("value too long for type character varying({limit})"),
                        ));
                    }
                }
                Value::Text(s)
            }
            (SqlType::Char(n), v) => {
                let s = v.to_string();
                let s = s.trim_end_matches(' ');
                let len = s.chars().count();
                if len > n as usize {
                    return Err(SqlError::new("22001", format!("value too long for type character({n})")));
                }
                Value::Text(format!("{s}{}", " ".repeat(n as usize - len)))
            }
            (SqlType::Bool, v) => match &v {
                Value::Bool(b) => Value::Bool(*b),
                Value::Int(n) => Value::Bool(*n != 0),
                Value::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
                    "t" | "true" | "yes" | "on" | "1" => Value::Bool(true),
                    "f" | "false" | "no" | "off" | "0" => Value::Bool(false),
                    _ => return Err(bad(&v)),
                },
                _ => return Err(bad(&v)),
            },
            (SqlType::Timestamp | SqlType::TimestampTz, v) => match &v {
                Value::Timestamp(t) => Value::Timestamp(*t),
                Value::Text(s) => Value::Timestamp(parse_timestamp(s).ok_or_else(|| bad(&v))?),
                _ => return Err(bad(&v)),
            },
        })
    }
}

/// A value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// Any integer type.
    Int(i64),
    /// Any floating or numeric type.
    Float(f64),
    /// Any character type.
    Text(String),
    /// A boolean.
    Bool(bool),
    /// A timestamp: microseconds since the Unix epoch, UTC.
    Timestamp(i64),
}

impl Value {
    /// Whether this is NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Orders two non-NULL values of comparable types; NULLs sort last.
    pub fn compare(&self, other: &Value) -> Option<std::cmp::Ordering> {
        use Value::*;
        match (self, other) {
            (Null, Null) => Some(std::cmp::Ordering::Equal),
            (Null, _) => Some(std::cmp::Ordering::Greater),
            (_, Null) => Some(std::cmp::Ordering::Less),
            (Int(a), Int(b)) => Some(a.cmp(b)),
            (Int(a), Float(b)) => (*a as f64).partial_cmp(b),
            (Float(a), Int(b)) => a.partial_cmp(&(*b as f64)),
            (Float(a), Float(b)) => a.partial_cmp(b),
            (Text(a), Text(b)) => Some(a.trim_end_matches(' ').cmp(b.trim_end_matches(' '))),
            (Bool(a), Bool(b)) => Some(a.cmp(b)),
            (Timestamp(a), Timestamp(b)) => Some(a.cmp(b)),
            (Timestamp(a), Text(b)) => parse_timestamp(b).map(|b| a.cmp(&b)),
            (Text(a), Timestamp(b)) => parse_timestamp(a).map(|a| a.cmp(b)),
            (Int(a), Text(b)) => b.trim().parse::<i64>().ok().map(|b| a.cmp(&b)),
            (Text(a), Int(b)) => a.trim().parse::<i64>().ok().map(|a| a.cmp(b)),
            _ => None,
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Null => Ok(()),
            Value::Int(n) => write!(f, "{n}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Text(s) => f.write_str(s),
            Value::Bool(b) => f.write_str(if *b { "t" } else { "f" }),
            Value::Timestamp(t) => f.write_str(&format_timestamp(*t)),
        }
    }
}

/// Formats microseconds since the epoch as PostgreSQL prints a timestamp.
pub fn format_timestamp(micros: i64) -> String {
    match chrono::DateTime::from_timestamp_micros(micros) {
        Some(t) => t.naive_utc().to_string(),
        None => micros.to_string(),
    }
}

/// Parses the timestamp forms PostgreSQL accepts most often: `YYYY-MM-DD`,
/// with an optional time (`T` or space) and an optional zone (`Z`, `+hh:mm`).
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_micros());
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%z"] {
        if let Ok(t) = chrono::DateTime::parse_from_str(text, format) {
            return Some(t.timestamp_micros());
        }
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_micros())
}

/// A column of a table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Column {
    /// Its name (lower case unless quoted).
    pub name: String,
    /// Its type.
    pub ty: SqlType,
    /// Whether NULL is refused.
    pub not_null: bool,
    /// Its `DEFAULT` expression, as SQL text.
    pub default: Option<String>,
}

/// A table's schema, stored as the catalog entry's description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    /// The columns, in order.
    pub columns: Vec<Column>,
    /// Indexes of the primary-key columns; empty for a hidden row id.
    pub primary_key: Vec<usize>,
    /// Secondary indexes (`CREATE INDEX`), each a tree of its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub indexes: Vec<IndexDef>,
}

/// A secondary index: its name, its columns (positions in the table) and
/// whether it refuses duplicates. Its tree is the catalog entry named by
/// [`crate::sql::index::tree_name`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexDef {
    pub name: String,
    pub columns: Vec<usize>,
    pub unique: bool,
}

impl Schema {
    /// Decodes a catalog description.
    ///
    /// Every statement reads its tables' schemas, and decoding the JSON
    /// was a tenth of a primary-key lookup's cost; so decoded schemas are
    /// kept by their bytes. An entry's bytes determine its schema, so a
    /// kept one is never stale; the memo only starts over when full.
    pub fn decode(table: &str, meta: &[u8]) -> Result<Schema, SqlError> {
        static DECODED: RwLock<BTreeMap<Vec<u8>, Schema>> = RwLock::new(BTreeMap::new());
        const DECODED_MAX: usize = 1024;
        if let Some(schema) = DECODED.read().unwrap_or_else(|e| e.into_inner()).get(meta) {
            return Ok(schema.clone());
        }
        let schema: Schema = serde_json::from_slice(meta).map_err(|e| {
            SqlError::new("XX001", format!("the catalog entry of table \"{table}\" is unreadable: {e}"))
        })?;
        let mut decoded = DECODED.write().unwrap_or_else(|e| e.into_inner());
        if decoded.len() >= DECODED_MAX {
            decoded.clear();
        }
        decoded.insert(meta.to_vec(), schema.clone());
        Ok(schema)
    }

    /// Encodes the schema for the catalog.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a schema serializes")
    }

    /// The index of the column called `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The key of `row`, or `None` for a table keyed by hidden row id.
    pub fn key(&self, row: &[Value]) -> Option<Vec<u8>> {
        if self.primary_key.is_empty() {
            return None;
        }
        let mut key = Vec::new();
        for &i in &self.primary_key {
            encode_key_part(&row[i], &mut key);
        }
        Some(key)
    }
}

/// Appends `value` in an order-preserving encoding.
pub fn encode_key_part(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.push(0),
        Value::Bool(b) => out.extend_from_slice(&[1, u8::from(*b)]),
        Value::Int(n) | Value::Timestamp(n) => {
            out.push(1);
            out.extend_from_slice(&((*n as u64) ^ (1 << 63)).to_be_bytes());
        }
        Value::Float(x) => {
            out.push(1);
            let bits = x.to_bits();
            let ordered = if bits >> 63 == 1 { !bits } else { bits | (1 << 63) };
            out.extend_from_slice(&ordered.to_be_bytes());
        }
        Value::Text(s) => {
            out.push(1);
            for &b in s.trim_end_matches(' ').as_bytes() {
                out.push(b);
                if b == 0 {
                    out.push(0xff);
                }
            }
            out.extend_from_slice(&[0, 0]);
        }
    }
}

/// Encodes a row's values.
pub fn encode_row(row: &[Value]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * row.len());
    for value in row {
        match value {
            Value::Null => out.push(0),
            Value::Int(n) => {
                out.push(1);
                out.extend_from_slice(&n.to_le_bytes());
            }
            Value::Float(x) => {
                out.push(2);
                out.extend_from_slice(&x.to_bits().to_le_bytes());
            }
            Value::Text(s) => {
                out.push(3);
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            Value::Bool(b) => out.extend_from_slice(&[4, u8::from(*b)]),
            Value::Timestamp(t) => {
                out.push(5);
                out.extend_from_slice(&t.to_le_bytes());
            }
        }
    }
    out
}

/// Decodes a row written by [`encode_row`].
pub fn decode_row(table: &str, bytes: &[u8]) -> Result<Vec<Value>, SqlError> {
    decode_columns(table, bytes, None)
}

/// [`decode_row`], keeping only the columns `wanted` marks: the others read
/// as NULL without being copied or checked (a text column's bytes are
/// skipped, never allocated).
pub fn decode_columns(table: &str, bytes: &[u8], wanted: Option<&[bool]>) -> Result<Vec<Value>, SqlError> {
    let corrupt = || SqlError::new("XX001", format!("a row of table \"{table}\" is unreadable"));
    let mut row = Vec::with_capacity(wanted.map_or(8, <[bool]>::len));
    let mut at = 0;
    let take = |at: &mut usize, n: usize| -> Result<&[u8], SqlError> {
        let part = bytes.get(*at..*at + n).ok_or_else(corrupt)?;
        *at += n;
        Ok(part)
    };
    while at < bytes.len() {
        let tag = bytes[at];
        at += 1;
        let eight = |at: &mut usize| -> Result<[u8; 8], SqlError> { Ok(take(at, 8)?.try_into().expect("eight bytes")) };
        let keep = wanted.is_none_or(|w| w.get(row.len()).copied().unwrap_or(true));
        let value = match tag {
            0 => Value::Null,
            1 => Value::Int(i64::from_le_bytes(eight(&mut at)?)),
            2 => Value::Float(f64::from_bits(u64::from_le_bytes(eight(&mut at)?))),
            3 => {
                let len = u32::from_le_bytes(take(&mut at, 4)?.try_into().expect("four bytes")) as usize;
                let text = take(&mut at, len)?;
                if keep {
                    Value::Text(std::str::from_utf8(text).map_err(|_| corrupt())?.to_owned())
                } else {
                    Value::Null
                }
            }
            4 => Value::Bool(take(&mut at, 1)?[0] != 0),
            5 => Value::Timestamp(i64::from_le_bytes(eight(&mut at)?)),
            _ => return Err(corrupt()),
        };
        row.push(if keep { value } else { Value::Null });
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_as_their_values() {
        let values = [Value::Int(i64::MIN), Value::Int(-5), Value::Int(0), Value::Int(7), Value::Int(i64::MAX)];
        let keys: Vec<Vec<u8>> = values
            .iter()
            .map(|v| {
                let mut k = Vec::new();
                encode_key_part(v, &mut k);
                k
            })
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        let texts = ["", "a", "a\0", "ab", "b"].map(|s| {
            let mut k = Vec::new();
            encode_key_part(&Value::Text(s.to_string()), &mut k);
            k
        });
        assert!(texts.windows(2).all(|w| w[0] < w[1]), "{texts:?}");
        let floats = [-1e9, -0.5, 0.0, 0.25, 3e7].map(|x| {
            let mut k = Vec::new();
            encode_key_part(&Value::Float(x), &mut k);
            k
        });
        assert!(floats.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn rows_round_trip() {
        let row = vec![
            Value::Int(-3),
            Value::Null,
            Value::Text("héllo".into()),
            Value::Float(2.5),
            Value::Bool(true),
            Value::Timestamp(1_700_000_000_000_000),
        ];
        assert_eq!(decode_row("t", &encode_row(&row)).unwrap(), row);
        assert!(decode_row("t", &[3, 200, 0, 0, 0, b'x']).is_err());
    }

    #[test]
    fn coercion_checks_ranges_lengths_and_syntax() {
        assert_eq!(SqlType::Int.coerce(Value::Text(" 42 ".into())).unwrap(), Value::Int(42));
        assert_eq!(SqlType::SmallInt.coerce(Value::Int(40_000)).unwrap_err().code, "22003");
        assert_eq!(SqlType::Int.coerce(Value::Text("x".into())).unwrap_err().code, "22P02");
        assert_eq!(SqlType::Char(3).coerce(Value::Text("a".into())).unwrap(), Value::Text("a  ".into()));
        assert_eq!(SqlType::Text(Some(2)).coerce(Value::Text("abc".into())).unwrap_err().code, "22001");
        assert_eq!(SqlType::parse("CHARACTER VARYING(10)").unwrap(), SqlType::Text(Some(10)));
        assert_eq!(SqlType::parse("TIMESTAMP WITH TIME ZONE").unwrap(), SqlType::TimestampTz);
        assert!(parse_timestamp("2026-01-15T10:30:45Z").is_some());
        assert_eq!(format_timestamp(parse_timestamp("2026-01-15 10:30:45.5").unwrap()), "2026-01-15 10:30:45.500");
    }
}
