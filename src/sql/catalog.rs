//! The system catalogs clients read: the `pg_catalog` relations and
//! functions that psql's `\d` commands, drivers and GUI tools query, and
//! `information_schema.tables` and `.columns`. They are built from the
//! engine's catalog (each table's stored schema) when a statement first
//! reads one, so they always describe the tables as they are; nothing is
//! canned but the fixed facts of a one-database, one-role server (its
//! name, its owner, the types it has, the namespaces).
//!
//! Object ids: a table's is `16384 + 2 × its root page`, its primary key
//! index's the next number. They are stable while the table lives (a
//! `TRUNCATE`, which gives the table a new tree, changes them).

use std::collections::BTreeMap;

use sqlparser::ast::ObjectName;

use super::expr::{ident_name, Col};
use super::index;
use super::query::Relation;
use super::types::{Column, Schema, SqlType, Value};
use super::SqlError;
use crate::txn::Transaction;

/// The one database's name, as `\l` and `current_database()` show it.
pub const DATABASE: &str = "thunderdb";
/// The one role's name: the owner of everything.
pub const OWNER: &str = "thunderdb";

const OWNER_OID: i64 = 10;
const DATABASE_OID: i64 = 5;
const PG_CATALOG_OID: i64 = 11;
const PUBLIC_OID: i64 = 2200;
const INFORMATION_SCHEMA_OID: i64 = 13_000;
const HEAP_AM_OID: i64 = 2;
const BTREE_AM_OID: i64 = 403;
const UTF8_ENCODING: i64 = 6;
const DEFAULT_TABLESPACE_OID: i64 = 1663;

/// One user table, as the catalogs see it.
#[derive(Debug)]
struct Entry {
    name: String,
    oid: i64,
    schema: Schema,
    /// The object ids of `schema.indexes`, in order.
    index_oids: Vec<i64>,
}

/// One index of a table: its primary key's, or a secondary one.
#[derive(Debug)]
struct IndexInfo<'e> {
    oid: i64,
    name: String,
    columns: &'e [usize],
    unique: bool,
    primary: bool,
}

impl Entry {
    /// Its indexes: the primary key's first (`TABLE_pkey`), then the
    /// secondary ones in creation order.
    fn indexes(&self) -> Vec<IndexInfo<'_>> {
        let mut out = Vec::new();
        if !self.schema.primary_key.is_empty() {
            out.push(IndexInfo {
                oid: self.oid + 1,
                name: format!("{}_pkey", self.name),
                columns: &self.schema.primary_key,
                unique: true,
                primary: true,
            });
        }
        for (index, &oid) in self.schema.indexes.iter().zip(&self.index_oids) {
            out.push(IndexInfo {
                oid,
                name: index.name.clone(),
                columns: &index.columns,
                unique: index.unique,
                primary: false,
            });
        }
        out
    }

    fn column_names(&self, columns: &[usize]) -> Vec<&str> {
        columns.iter().map(|&i| self.schema.columns[i].name.as_str()).collect()
    }

    fn find_index(&self, oid: i64) -> Option<IndexInfo<'_>> {
        self.indexes().into_iter().find(|i| i.oid == oid)
    }
}

/// The engine's tables, read once per statement.
#[derive(Debug, Default)]
pub struct Catalog {
    tables: Vec<Entry>,
}

impl Catalog {
    /// Reads every table's schema.
    pub async fn load(txn: &mut Transaction) -> Result<Catalog, SqlError> {
        let mut tables = Vec::new();
        let mut index_roots = BTreeMap::new();
        for table in txn.tables().await? {
            let oid = 16_384 + 2 * i64::from(table.tree.root);
            match index::index_of_tree(&table.name) {
                Some(index) => {
                    index_roots.insert(index.to_string(), oid);
                }
                None => {
                    let schema = Schema::decode(&table.name, &table.meta)?;
                    tables.push(Entry { name: table.name, oid, schema, index_oids: Vec::new() });
                }
            }
        }
        for t in &mut tables {
            t.index_oids = t.schema.indexes.iter().map(|i| index_roots.get(&i.name).copied().unwrap_or(0)).collect();
        }
        Ok(Catalog { tables })
    }

    /// `pg_get_indexdef(oid, column)`: the `CREATE INDEX` that would build
    /// it, or (for a column number above zero) that key column's name.
    pub fn index_def(&self, oid: i64, column: i64) -> Option<String> {
        let (t, index) = self.tables.iter().find_map(|t| Some((t, t.find_index(oid)?)))?;
        let names = t.column_names(index.columns);
        if column > 0 {
            return names.get(usize::try_from(column - 1).ok()?).map(|name| name.to_string());
        }
        let unique = if index.unique { "UNIQUE " } else { "" };
        Some(format!("CREATE {unique}INDEX {} ON public.{} USING btree ({})", index.name, t.name, names.join(", ")))
    }

    /// `pg_get_constraintdef(oid)`: the constraint's clause.
    pub fn constraint_def(&self, oid: i64) -> Option<String> {
        let t = self.tables.iter().find(|t| !t.schema.primary_key.is_empty() && t.oid + 1 == oid)?;
        Some(format!("PRIMARY KEY ({})", t.column_names(&t.schema.primary_key).join(", ")))
    }

    /// `oid::regclass`: a relation's name.
    pub fn relation_name(&self, oid: i64) -> Option<String> {
        self.tables.iter().find_map(|t| {
            if t.oid == oid {
                Some(t.name.clone())
            } else {
                t.find_index(oid).map(|index| index.name)
            }
        })
    }

    /// The relation `name` (`pg_catalog.x`, `information_schema.x`, or a
    /// bare `pg_x`), if it is a catalog relation.
    pub fn relation(&self, name: &ObjectName) -> Option<Result<Relation, SqlError>> {
        let (schema, table) = catalog_name(name)?;
        Some(match (schema, table.as_str()) {
            ("information_schema", "tables") => Ok(self.information_schema_tables()),
            ("information_schema", "columns") => Ok(self.information_schema_columns()),
            ("information_schema", other) => Err(unknown("information_schema", other)),
            (_, "pg_class") => Ok(self.pg_class()),
            (_, "pg_namespace") => Ok(pg_namespace()),
            (_, "pg_attribute") => Ok(self.pg_attribute()),
            (_, "pg_attrdef") => Ok(self.pg_attrdef()),
            (_, "pg_type") => Ok(pg_type()),
            (_, "pg_index") => Ok(self.pg_index()),
            (_, "pg_constraint") => Ok(self.pg_constraint()),
            (_, "pg_database") => Ok(pg_database()),
            (_, "pg_roles" | "pg_user" | "pg_authid") => Ok(pg_roles()),
            (_, "pg_am") => Ok(pg_am()),
            (_, "pg_tablespace") => Ok(relation(
                "t",
                &[("oid", INT), ("spcname", TEXT), ("spcowner", INT)],
                vec![vec![Value::Int(DEFAULT_TABLESPACE_OID), text("pg_default"), Value::Int(OWNER_OID)]],
            )),
            (_, "pg_tables") => Ok(self.pg_tables()),
            (_, other) => match EMPTY.iter().find(|(n, _)| *n == other) {
                Some((_, cols)) => Ok(relation("", cols, Vec::new())),
                None => Err(unknown("pg_catalog", other)),
            },
        })
    }

    fn pg_class(&self) -> Relation {
        let mut rows = Vec::new();
        for t in &self.tables {
            let indexes = t.indexes();
            let natts = t.schema.columns.len() as i64;
            rows.push(class_row(t.oid, &t.name, "r", HEAP_AM_OID, natts, !indexes.is_empty()));
            for index in indexes {
                rows.push(class_row(index.oid, &index.name, "i", BTREE_AM_OID, index.columns.len() as i64, false));
            }
        }
        relation("c", CLASS_COLS, rows)
    }

    fn pg_attribute(&self) -> Relation {
        let mut rows = Vec::new();
        for t in &self.tables {
            for (i, c) in t.schema.columns.iter().enumerate() {
                let not_null = c.not_null || t.schema.primary_key.contains(&i);
                rows.push(attribute_row(t.oid, c, i + 1, not_null, c.default.is_some()));
            }
            for index in t.indexes() {
                for (n, &i) in index.columns.iter().enumerate() {
                    rows.push(attribute_row(index.oid, &t.schema.columns[i], n + 1, false, false));
                }
            }
        }
        relation("a", ATTRIBUTE_COLS, rows)
    }

    fn pg_attrdef(&self) -> Relation {
        let mut rows = Vec::new();
        for t in &self.tables {
            for (i, c) in t.schema.columns.iter().enumerate() {
                if let Some(default) = &c.default {
                    rows.push(vec![
                        Value::Int(t.oid * 1000 + i as i64),
                        Value::Int(t.oid),
                        Value::Int(i as i64 + 1),
                        text(default),
                    ]);
                }
            }
        }
        relation("d", &[("oid", INT), ("adrelid", INT), ("adnum", INT), ("adbin", TEXT)], rows)
    }

    fn pg_index(&self) -> Relation {
        let mut rows = Vec::new();
        for t in &self.tables {
            for index in t.indexes() {
                let keys: Vec<String> = index.columns.iter().map(|i| (i + 1).to_string()).collect();
                rows.push(vec![
                    Value::Int(index.oid),
                    Value::Int(t.oid),
                    Value::Int(keys.len() as i64),
                    Value::Int(keys.len() as i64),
                    Value::Bool(index.unique),
                    Value::Bool(index.primary),
                    Value::Bool(false),
                    Value::Bool(true),
                    Value::Bool(true),
                    Value::Bool(false),
                    Value::Bool(true),
                    Value::Bool(false),
                    Value::Null,
                    text(&keys.join(" ")),
                ]);
            }
        }
        relation("i", INDEX_COLS, rows)
    }

    fn pg_constraint(&self) -> Relation {
        let rows = self
            .tables
            .iter()
            .filter_map(|t| {
                let index = t.indexes().into_iter().find(|i| i.primary)?;
                let keys: Vec<String> = index.columns.iter().map(|i| (i + 1).to_string()).collect();
                Some(vec![
                    Value::Int(index.oid),
                    text(&index.name),
                    Value::Int(PUBLIC_OID),
                    text("p"),
                    Value::Bool(false),
                    Value::Bool(false),
                    Value::Int(t.oid),
                    Value::Int(index.oid),
                    text(&format!("{{{}}}", keys.join(","))),
                ])
            })
            .collect();
        relation("con", CONSTRAINT_COLS, rows)
    }

    fn pg_tables(&self) -> Relation {
        let rows = self
            .tables
            .iter()
            .map(|t| vec![text("public"), text(&t.name), text(OWNER), Value::Bool(!t.indexes().is_empty())])
            .collect();
        relation("", &[("schemaname", TEXT), ("tablename", TEXT), ("tableowner", TEXT), ("hasindexes", BOOL)], rows)
    }

    fn information_schema_tables(&self) -> Relation {
        let rows = self
            .tables
            .iter()
            .map(|t| vec![text(DATABASE), text("public"), text(&t.name), text("BASE TABLE"), text("YES"), text("NO")])
            .collect();
        relation(
            "",
            &[
                ("table_catalog", TEXT),
                ("table_schema", TEXT),
                ("table_name", TEXT),
                ("table_type", TEXT),
                ("is_insertable_into", TEXT),
                ("is_typed", TEXT),
            ],
            rows,
        )
    }

    fn information_schema_columns(&self) -> Relation {
        let mut rows = Vec::new();
        for t in &self.tables {
            for (i, c) in t.schema.columns.iter().enumerate() {
                let nullable = !(c.not_null || t.schema.primary_key.contains(&i));
                let length = match c.ty {
                    SqlType::Text(Some(n)) | SqlType::Char(n) => Value::Int(i64::from(n)),
                    _ => Value::Null,
                };
                rows.push(vec![
                    text(DATABASE),
                    text("public"),
                    text(&t.name),
                    text(&c.name),
                    Value::Int(i as i64 + 1),
                    c.default.as_deref().map_or(Value::Null, text),
                    text(if nullable { "YES" } else { "NO" }),
                    text(c.ty.name()),
                    length,
                    text(udt_name(c.ty)),
                ]);
            }
        }
        relation(
            "",
            &[
                ("table_catalog", TEXT),
                ("table_schema", TEXT),
                ("table_name", TEXT),
                ("column_name", TEXT),
                ("ordinal_position", INT),
                ("column_default", TEXT),
                ("is_nullable", TEXT),
                ("data_type", TEXT),
                ("character_maximum_length", INT),
                ("udt_name", TEXT),
            ],
            rows,
        )
    }
}

/// Whether `name` names a catalog relation, and which: its schema and name.
pub fn catalog_name(name: &ObjectName) -> Option<(&'static str, String)> {
    let parts: Vec<String> = name.0.iter().map(|p| p.as_ident().map(ident_name)).collect::<Option<_>>()?;
    match parts.as_slice() {
        [schema, table] if schema == "pg_catalog" => Some(("pg_catalog", table.clone())),
        [schema, table] if schema == "information_schema" => Some(("information_schema", table.clone())),
        [table] if table.starts_with("pg_") => Some(("pg_catalog", table.clone())),
        _ => None,
    }
}

fn unknown(schema: &str, name: &str) -> SqlError {
    SqlError::new("42P01", format!("relation \"{schema}.{name}\" does not exist"))
}

const INT: SqlType = SqlType::BigInt;
const TEXT: SqlType = SqlType::Text(None);
const BOOL: SqlType = SqlType::Bool;
const FLOAT: SqlType = SqlType::Real;

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

fn relation(table: &str, cols: &[(&str, SqlType)], rows: Vec<Vec<Value>>) -> Relation {
    debug_assert!(rows.iter().all(|row| row.len() == cols.len()), "a catalog row of the wrong width");
    Relation { cols: cols.iter().map(|(name, ty)| Col::new(table, name, *ty)).collect(), rows }
}

const CLASS_COLS: &[(&str, SqlType)] = &[
    ("oid", INT),
    ("relname", TEXT),
    ("relnamespace", INT),
    ("reltype", INT),
    ("relowner", INT),
    ("relam", INT),
    ("relkind", TEXT),
    ("relnatts", INT),
    ("relchecks", INT),
    ("relhasindex", BOOL),
    ("relhasrules", BOOL),
    ("relhastriggers", BOOL),
    ("relrowsecurity", BOOL),
    ("relforcerowsecurity", BOOL),
    ("relispartition", BOOL),
    ("reltablespace", INT),
    ("reloftype", INT),
    ("relpersistence", TEXT),
    ("relreplident", TEXT),
    ("reltoastrelid", INT),
    ("relpartbound", TEXT),
    ("reltuples", FLOAT),
    ("relpages", INT),
    ("relacl", TEXT),
    ("reloptions", TEXT),
];

fn class_row(oid: i64, name: &str, kind: &str, am: i64, natts: i64, has_index: bool) -> Vec<Value> {
    vec![
        Value::Int(oid),
        text(name),
        Value::Int(PUBLIC_OID),
        Value::Int(0),
        Value::Int(OWNER_OID),
        Value::Int(am),
        text(kind),
        Value::Int(natts),
        Value::Int(0),
        Value::Bool(has_index),
        Value::Bool(false),
        Value::Bool(false),
        Value::Bool(false),
        Value::Bool(false),
        Value::Bool(false),
        Value::Int(0),
        Value::Int(0),
        text("p"),
        text("d"),
        Value::Int(0),
        Value::Null,
        Value::Float(-1.0),
        Value::Int(0),
        Value::Null,
        Value::Null,
    ]
}

const ATTRIBUTE_COLS: &[(&str, SqlType)] = &[
    ("attrelid", INT),
    ("attname", TEXT),
    ("atttypid", INT),
    ("atttypmod", INT),
    ("attnum", INT),
    ("attnotnull", BOOL),
    ("atthasdef", BOOL),
    ("attisdropped", BOOL),
    ("attidentity", TEXT),
    ("attgenerated", TEXT),
    ("attcollation", INT),
    ("attlen", INT),
    ("attstorage", TEXT),
    ("attcompression", TEXT),
    ("attstattarget", INT),
];

fn attribute_row(relid: i64, column: &Column, number: usize, not_null: bool, has_default: bool) -> Vec<Value> {
    vec![
        Value::Int(relid),
        text(&column.name),
        Value::Int(type_oid(column.ty)),
        Value::Int(type_mod(column.ty)),
        Value::Int(number as i64),
        Value::Bool(not_null),
        Value::Bool(has_default),
        Value::Bool(false),
        text(""),
        text(""),
        Value::Int(0),
        Value::Int(type_len(column.ty)),
        text(if type_len(column.ty) < 0 { "x" } else { "p" }),
        text(""),
        Value::Int(-1),
    ]
}

const INDEX_COLS: &[(&str, SqlType)] = &[
    ("indexrelid", INT),
    ("indrelid", INT),
    ("indnatts", INT),
    ("indnkeyatts", INT),
    ("indisunique", BOOL),
    ("indisprimary", BOOL),
    ("indisclustered", BOOL),
    ("indisvalid", BOOL),
    ("indisready", BOOL),
    ("indisreplident", BOOL),
    ("indimmediate", BOOL),
    ("indnullsnotdistinct", BOOL),
    ("indpred", TEXT),
    ("indkey", TEXT),
];

const CONSTRAINT_COLS: &[(&str, SqlType)] = &[
    ("oid", INT),
    ("conname", TEXT),
    ("connamespace", INT),
    ("contype", TEXT),
    ("condeferrable", BOOL),
    ("condeferred", BOOL),
    ("conrelid", INT),
    ("conindid", INT),
    ("conkey", TEXT),
];

/// Catalogs that exist and are empty here (no policies, publications,
/// inheritance, extended statistics, descriptions, collations, role
/// memberships, triggers, rules, …), with the columns clients read.
const EMPTY: &[(&str, &[(&str, SqlType)])] = &[
    ("pg_description", &[("objoid", INT), ("classoid", INT), ("objsubid", INT), ("description", TEXT)]),
    ("pg_auth_members", &[("roleid", INT), ("member", INT), ("grantor", INT), ("admin_option", BOOL)]),
    ("pg_collation", &[("oid", INT), ("collname", TEXT), ("collnamespace", INT)]),
    (
        "pg_policy",
        &[
            ("oid", INT),
            ("polname", TEXT),
            ("polrelid", INT),
            ("polcmd", TEXT),
            ("polpermissive", BOOL),
            ("polroles", TEXT),
            ("polqual", TEXT),
            ("polwithcheck", TEXT),
        ],
    ),
    (
        "pg_statistic_ext",
        &[
            ("oid", INT),
            ("stxrelid", INT),
            ("stxname", TEXT),
            ("stxnamespace", INT),
            ("stxkind", TEXT),
            ("stxstattarget", INT),
        ],
    ),
    ("pg_publication", &[("oid", INT), ("pubname", TEXT), ("puballtables", BOOL)]),
    ("pg_publication_namespace", &[("oid", INT), ("pnpubid", INT), ("pnnspid", INT)]),
    ("pg_publication_rel", &[("oid", INT), ("prpubid", INT), ("prrelid", INT), ("prqual", TEXT), ("prattrs", TEXT)]),
    ("pg_inherits", &[("inhrelid", INT), ("inhparent", INT), ("inhseqno", INT), ("inhdetachpending", BOOL)]),
    ("pg_trigger", &[("oid", INT), ("tgrelid", INT), ("tgname", TEXT), ("tgisinternal", BOOL), ("tgenabled", TEXT)]),
    ("pg_rewrite", &[("oid", INT), ("rulename", TEXT), ("ev_class", INT)]),
    ("pg_foreign_table", &[("ftrelid", INT), ("ftserver", INT), ("ftoptions", TEXT)]),
    ("pg_partitioned_table", &[("partrelid", INT), ("partstrat", TEXT)]),
    ("pg_sequence", &[("seqrelid", INT), ("seqtypid", INT)]),
    ("pg_extension", &[("oid", INT), ("extname", TEXT), ("extversion", TEXT), ("extnamespace", INT)]),
    ("pg_proc", &[("oid", INT), ("proname", TEXT), ("pronamespace", INT), ("prokind", TEXT)]),
    ("pg_settings", &[("name", TEXT), ("setting", TEXT)]),
    ("pg_stat_activity", &[("pid", INT), ("datname", TEXT), ("usename", TEXT), ("state", TEXT), ("query", TEXT)]),
];

fn pg_namespace() -> Relation {
    let rows = [(PG_CATALOG_OID, "pg_catalog"), (PUBLIC_OID, "public"), (INFORMATION_SCHEMA_OID, "information_schema")]
        .into_iter()
        .map(|(oid, name)| vec![Value::Int(oid), text(name), Value::Int(OWNER_OID), Value::Null])
        .collect();
    relation("n", &[("oid", INT), ("nspname", TEXT), ("nspowner", INT), ("nspacl", TEXT)], rows)
}

fn pg_database() -> Relation {
    let rows = vec![vec![
        Value::Int(DATABASE_OID),
        text(DATABASE),
        Value::Int(OWNER_OID),
        Value::Int(UTF8_ENCODING),
        text("C"),
        text("C"),
        Value::Null,
        text("c"),
        Value::Null,
        Value::Bool(true),
        Value::Bool(false),
        Value::Int(-1),
        Value::Int(DEFAULT_TABLESPACE_OID),
    ]];
    relation(
        "d",
        &[
            ("oid", INT),
            ("datname", TEXT),
            ("datdba", INT),
            ("encoding", INT),
            ("datcollate", TEXT),
            ("datctype", TEXT),
            ("daticulocale", TEXT),
            ("datlocprovider", TEXT),
            ("datacl", TEXT),
            ("datallowconn", BOOL),
            ("datistemplate", BOOL),
            ("datconnlimit", INT),
            ("dattablespace", INT),
        ],
        rows,
    )
}

fn pg_roles() -> Relation {
    let rows = vec![vec![
        Value::Int(OWNER_OID),
        text(OWNER),
        Value::Bool(true),
        Value::Bool(true),
        Value::Bool(true),
        Value::Bool(true),
        Value::Bool(true),
        Value::Int(-1),
        Value::Null,
        Value::Bool(true),
        Value::Bool(true),
    ]];
    relation(
        "r",
        &[
            ("oid", INT),
            ("rolname", TEXT),
            ("rolsuper", BOOL),
            ("rolinherit", BOOL),
            ("rolcreaterole", BOOL),
            ("rolcreatedb", BOOL),
            ("rolcanlogin", BOOL),
            ("rolconnlimit", INT),
            ("rolvaliduntil", SqlType::TimestampTz),
            ("rolreplication", BOOL),
            ("rolbypassrls", BOOL),
        ],
        rows,
    )
}

fn pg_am() -> Relation {
    let rows = [(HEAP_AM_OID, "heap", "t"), (BTREE_AM_OID, "btree", "i")]
        .into_iter()
        .map(|(oid, name, kind)| vec![Value::Int(oid), text(name), text(kind)])
        .collect();
    relation("am", &[("oid", INT), ("amname", TEXT), ("amtype", TEXT)], rows)
}

/// The types a column can have, as `pg_type` rows.
const TYPES: &[(SqlType, &str)] = &[
    (SqlType::Bool, "bool"),
    (SqlType::SmallInt, "int2"),
    (SqlType::Int, "int4"),
    (SqlType::BigInt, "int8"),
    (SqlType::Real, "float4"),
    (SqlType::Double, "float8"),
    (SqlType::Numeric, "numeric"),
    (SqlType::Text(None), "text"),
    (SqlType::Text(Some(0)), "varchar"),
    (SqlType::Char(0), "bpchar"),
    (SqlType::Timestamp, "timestamp"),
    (SqlType::TimestampTz, "timestamptz"),
];

fn pg_type() -> Relation {
    let rows = TYPES
        .iter()
        .map(|&(ty, name)| {
            vec![
                Value::Int(type_oid(ty)),
                text(name),
                Value::Int(PG_CATALOG_OID),
                Value::Int(type_len(ty)),
                text("b"),
                Value::Int(0),
                Value::Int(OWNER_OID),
            ]
        })
        .collect();
    relation(
        "t",
        &[
            ("oid", INT),
            ("typname", TEXT),
            ("typnamespace", INT),
            ("typlen", INT),
            ("typtype", TEXT),
            ("typcollation", INT),
            ("typowner", INT),
        ],
        rows,
    )
}

/// A type's PostgreSQL object id.
pub fn type_oid(ty: SqlType) -> i64 {
    match ty {
        SqlType::Bool => 16,
        SqlType::SmallInt => 21,
        SqlType::Int => 23,
        SqlType::BigInt => 20,
        SqlType::Real => 700,
        SqlType::Double => 701,
        SqlType::Numeric => 1700,
        SqlType::Text(None) => 25,
        SqlType::Text(Some(_)) => 1043,
        SqlType::Char(_) => 1042,
        SqlType::Timestamp => 1114,
        SqlType::TimestampTz => 1184,
    }
}

fn type_mod(ty: SqlType) -> i64 {
    match ty {
        SqlType::Text(Some(n)) | SqlType::Char(n) => i64::from(n) + 4,
        _ => -1,
    }
}

fn type_len(ty: SqlType) -> i64 {
    match ty {
        SqlType::Bool => 1,
        SqlType::SmallInt => 2,
        SqlType::Int | SqlType::Real => 4,
        SqlType::BigInt | SqlType::Double | SqlType::Timestamp | SqlType::TimestampTz => 8,
        _ => -1,
    }
}

fn udt_name(ty: SqlType) -> &'static str {
    TYPES.iter().find(|(t, _)| type_oid(*t) == type_oid(ty)).map_or("text", |(_, name)| name)
}

/// `format_type(oid, typmod)`: a type's SQL name.
pub fn format_type(oid: i64, typmod: i64) -> Option<String> {
    let (ty, _) = TYPES.iter().find(|(t, _)| type_oid(*t) == oid)?;
    let n = (typmod >= 4).then(|| typmod - 4);
    Some(match (ty, n) {
        (SqlType::Text(Some(_)), Some(n)) => format!("character varying({n})"),
        (SqlType::Char(_), Some(n)) => format!("character({n})"),
        (ty, _) => ty.name().to_string(),
    })
}

/// Catalog functions that need no catalog data, by name (without a
/// `pg_catalog.` prefix); `None` if `name` is not one.
pub fn call(name: &str, args: &[Value], catalog: Option<&Catalog>) -> Option<Result<Value, SqlError>> {
    let int = |i: usize| match args.get(i) {
        Some(Value::Int(n)) => Some(*n),
        Some(Value::Text(s)) => s.trim().parse().ok(),
        _ => None,
    };
    let optional_text = |s: Option<String>| Ok(s.map_or(Value::Null, Value::Text));
    let needs_catalog = || SqlError::new("0A000", format!("{name}() here"));
    Some(match name {
        "pg_get_userbyid" => Ok(text(OWNER)),
        "pg_table_is_visible"
        | "pg_type_is_visible"
        | "has_table_privilege"
        | "has_schema_privilege"
        | "has_database_privilege" => Ok(Value::Bool(true)),
        "pg_encoding_to_char" => Ok(text(if int(0) == Some(UTF8_ENCODING) { "UTF8" } else { "" })),
        "array_to_string" => Ok(match args.first() {
            Some(Value::Text(s)) => Value::Text(s.trim_matches(|c| c == '{' || c == '}').to_string()),
            _ => Value::Null,
        }),
        "format_type" => optional_text(int(0).and_then(|oid| format_type(oid, int(1).unwrap_or(-1)))),
        "obj_description" | "col_description" | "shobj_description" => Ok(Value::Null),
        "pg_get_expr" => Ok(args.first().cloned().unwrap_or(Value::Null)),
        "pg_relation_is_publishable" => Ok(Value::Bool(false)),
        // Sizes are not tracked per table: unknown, not invented.
        "pg_table_size" | "pg_relation_size" | "pg_total_relation_size" | "pg_indexes_size" | "pg_database_size" => {
            Ok(Value::Null)
        }
        "pg_size_pretty" => Ok(match args.first() {
            Some(Value::Int(n)) => Value::Text(size_pretty(*n)),
            _ => Value::Null,
        }),
        "current_user" | "session_user" | "user" => Ok(text(OWNER)),
        "current_database" => Ok(text(DATABASE)),
        "current_schema" => Ok(text("public")),
        "pg_get_indexdef" => match catalog {
            Some(catalog) => optional_text(int(0).and_then(|oid| catalog.index_def(oid, int(1).unwrap_or(0)))),
            None => Err(needs_catalog()),
        },
        "pg_get_constraintdef" => match catalog {
            Some(catalog) => optional_text(int(0).and_then(|oid| catalog.constraint_def(oid))),
            None => Err(needs_catalog()),
        },
        _ => return None,
    })
}

/// `pg_size_pretty`: bytes in the largest unit that keeps the number at
/// least 10 (rounded half up), as PostgreSQL prints them.
fn size_pretty(bytes: i64) -> String {
    let mut value = bytes;
    for unit in ["bytes", "kB", "MB", "GB"] {
        if value.abs() < 10 * 1024 {
            return format!("{value} {unit}");
        }
        value = (value + 512) / 1024;
    }
    format!("{value} TB")
}

/// `x::regclass` and friends: an object id shown as its name.
pub fn cast_to_name(kind: &str, value: &Value, catalog: Option<&Catalog>) -> Option<Value> {
    let oid = match value {
        Value::Int(n) => *n,
        Value::Null => return Some(Value::Null),
        _ => return None,
    };
    match kind {
        "regclass" => catalog.and_then(|c| c.relation_name(oid)).map(Value::Text),
        "regtype" => format_type(oid, -1).map(Value::Text),
        "regnamespace" => {
            let names: BTreeMap<i64, &str> = [
                (PG_CATALOG_OID, "pg_catalog"),
                (PUBLIC_OID, "public"),
                (INFORMATION_SCHEMA_OID, "information_schema"),
            ]
            .into_iter()
            .collect();
            names.get(&oid).map(|n| text(n))
        }
        _ => None,
    }
    .or(Some(Value::Text(oid.to_string())))
}
