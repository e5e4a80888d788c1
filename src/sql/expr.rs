//! Expression evaluation over one row.

use sqlparser::ast::{
    BinaryOperator, CastKind, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, InTarget, Query,
    UnaryOperator, Value as AstValue,
};

use std::collections::BTreeMap;
use std::sync::Arc;

use super::catalog::{self, Catalog};
use super::types::{SqlType, Value};
use super::SqlError;

/// A column of a relation a query reads: the name or alias of the table it
/// comes from (empty for a computed column), its own name and type.
/// A hidden column (the right-hand copy of a `USING` column) is reached
/// only by a qualified name and is left out of `*`.
#[derive(Debug, Clone, PartialEq)]
pub struct Col {
    pub table: String,
    pub name: String,
    pub ty: SqlType,
    pub hidden: bool,
}

impl Col {
    pub fn new(table: &str, name: &str, ty: SqlType) -> Col {
        Col { table: table.to_string(), name: name.to_string(), ty, hidden: false }
    }
}

/// The row of an enclosing query that a correlated subquery sees.
#[derive(Debug)]
pub struct Outer {
    pub cols: Vec<Col>,
    pub row: Vec<Value>,
    pub outer: Option<Arc<Outer>>,
}

/// The rows each subquery of an expression returned for the current row,
/// by the address of the subquery's AST node.
pub type Subqueries = BTreeMap<usize, Arc<Vec<Vec<Value>>>>;

static NO_SUBQUERIES: Subqueries = BTreeMap::new();

/// The key of a subquery in [`Subqueries`].
pub fn subquery_key(query: &Query) -> usize {
    query as *const Query as usize
}

/// What an expression can see: the row's columns, the statement's
/// parameters, the statement's clock, (in an aggregate query) the group's
/// aggregate values, its subqueries' results, and the rows of the queries
/// it is nested in.
pub struct Scope<'a> {
    /// The row's columns.
    pub cols: &'a [Col],
    /// The row (empty when there is no `FROM`).
    pub row: &'a [Value],
    /// `$1`, `$2`, … values.
    pub params: &'a [Value],
    /// `now()`, in microseconds since the epoch.
    pub now: i64,
    /// Aggregate results of the current group, by the aggregate's SQL text.
    pub aggregates: &'a [(String, Value)],
    /// The subqueries' results for this row.
    pub subqueries: &'a Subqueries,
    /// The enclosing query's row, for a correlated subquery.
    pub outer: Option<&'a Outer>,
    /// The system catalog, when the statement reads it.
    pub catalog: Option<&'a Catalog>,
}

impl<'a> Scope<'a> {
    /// A scope without a row: constants, parameters and the clock.
    pub fn constants(params: &'a [Value], now: i64) -> Scope<'a> {
        Scope::row(&[], &[], params, now)
    }

    /// A scope over one row of `cols`.
    pub fn row(cols: &'a [Col], row: &'a [Value], params: &'a [Value], now: i64) -> Scope<'a> {
        Scope { cols, row, params, now, aggregates: &[], subqueries: &NO_SUBQUERIES, outer: None, catalog: None }
    }
}

/// Where a column reference (`name` or `table.name`) points in `cols`:
/// `None` if nowhere, an error if it could mean two columns.
pub fn resolve(cols: &[Col], expr: &Expr) -> Result<Option<usize>, SqlError> {
    let (qualifier, name) = match expr {
        Expr::Identifier(ident) => (None, ident_name(ident)),
        Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
            (Some(ident_name(&parts[parts.len() - 2])), ident_name(&parts[parts.len() - 1]))
        }
        Expr::CompoundIdentifier(parts) => (None, parts.last().map(ident_name).unwrap_or_default()),
        Expr::Nested(inner) => return resolve(cols, inner),
        _ => return Ok(None),
    };
    let mut found = None;
    for (i, col) in cols.iter().enumerate() {
        let hit = match &qualifier {
            Some(table) => col.table == *table && col.name == name,
            None => !col.hidden && col.name == name,
        };
        if hit {
            if found.is_some() {
                return Err(SqlError::new("42702", format!("column reference \"{name}\" is ambiguous")));
            }
            found = Some(i);
        }
    }
    Ok(found)
}

/// The value of a column reference: this row's column, else the enclosing
/// queries' (innermost first).
fn column_value(expr: &Expr, scope: &Scope) -> Result<Value, SqlError> {
    if let Some(i) = resolve(scope.cols, expr)? {
        return Ok(scope.row.get(i).cloned().unwrap_or(Value::Null));
    }
    let mut outer = scope.outer;
    while let Some(o) = outer {
        if let Some(i) = resolve(&o.cols, expr)? {
            return Ok(o.row.get(i).cloned().unwrap_or(Value::Null));
        }
        outer = o.outer.as_deref();
    }
    let name = column_ref(expr).expect("a column reference");
    match expr {
        Expr::Identifier(_) if name == "current_timestamp" || name == "localtimestamp" => {
            Ok(Value::Timestamp(scope.now))
        }
        Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
            let table = ident_name(&parts[parts.len() - 2]);
            if scope.cols.iter().any(|c| c.table == table) {
                Err(SqlError::new("42703", format!("column {table}.{name} does not exist")))
            } else {
                Err(SqlError::new("42P01", format!("missing FROM-clause entry for table \"{table}\"")))
            }
        }
        _ => Err(SqlError::new("42703", format!("column \"{name}\" does not exist"))),
    }
}

/// The rows a subquery returned for this row.
fn subquery_rows<'s>(query: &Query, scope: &'s Scope) -> Result<&'s [Vec<Value>], SqlError> {
    scope
        .subqueries
        .get(&subquery_key(query))
        .map(|rows| rows.as_slice())
        .ok_or_else(|| SqlError::unsupported("a subquery in this clause"))
}

/// The single column of a subquery's rows.
fn single_column(rows: &[Vec<Value>]) -> Result<impl Iterator<Item = &Value>, SqlError> {
    if rows.first().is_some_and(|row| row.len() != 1) {
        return Err(SqlError::new("42601", "subquery has too many columns"));
    }
    Ok(rows.iter().map(|row| &row[0]))
}

/// `v IN (values)` with SQL's NULL rules.
fn in_values(
    v: Value,
    values: impl Iterator<Item = Result<Value, SqlError>>,
    negated: bool,
) -> Result<Value, SqlError> {
    let mut result = Value::Bool(false);
    for item in values {
        let eq = binary(v.clone(), &BinaryOperator::Eq, item?)?;
        result = binary(result, &BinaryOperator::Or, eq)?;
        if result == Value::Bool(true) {
            break;
        }
    }
    Ok(if negated { not(result) } else { result })
}

/// Calls `f` on `expr` and every expression inside it, outer ones first;
/// not inside subqueries.
pub fn visit<'e>(expr: &'e Expr, f: &mut impl FnMut(&'e Expr)) {
    f(expr);
    let mut walk = |e: &'e Expr| visit(e, f);
    match expr {
        Expr::In { expr, target, .. } => {
            walk(expr);
            if let InTarget::List(list) = target {
                list.iter().for_each(walk);
            }
        }
        Expr::BinaryOp { left, right, .. } => {
            walk(left);
            walk(right);
        }
        Expr::Nested(e)
        | Expr::UnaryOp { expr: e, .. }
        | Expr::Cast { expr: e, .. }
        | Expr::IsNull(e)
        | Expr::IsNotNull(e)
        | Expr::IsTrue(e)
        | Expr::IsFalse(e) => walk(e),
        Expr::Between { expr, low, high, .. } => {
            walk(expr);
            walk(low);
            walk(high);
        }
        Expr::Like { expr, pattern, .. } | Expr::ILike { expr, pattern, .. } => {
            walk(expr);
            walk(pattern);
        }
        Expr::Case { operand, conditions, else_result, .. } => {
            operand.iter().for_each(|e| walk(e));
            for when in conditions {
                walk(&when.condition);
                walk(&when.result);
            }
            else_result.iter().for_each(|e| walk(e));
        }
        Expr::Function(function) => {
            if let FunctionArguments::List(list) = &function.args {
                for arg in &list.args {
                    if let FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) = arg {
                        walk(e);
                    }
                }
            }
        }
        _ => {}
    }
}

/// Calls `f` on every subquery in `expr` (not those nested inside them).
pub fn for_each_subquery<'e>(expr: &'e Expr, f: &mut impl FnMut(&'e Query)) {
    visit(expr, &mut |e| match e {
        Expr::Subquery(q) | Expr::Exists { subquery: q, .. } | Expr::In { target: InTarget::Subquery(q), .. } => f(q),
        Expr::Function(Function { args: FunctionArguments::Subquery(q), .. }) => f(q),
        _ => {}
    });
}

/// An identifier as PostgreSQL folds it: lower case unless quoted.
pub fn ident_name(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

/// The name a column reference refers to, if `expr` is one.
pub fn column_ref(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(ident) => Some(ident_name(ident)),
        Expr::CompoundIdentifier(parts) => parts.last().map(ident_name),
        Expr::Nested(inner) => column_ref(inner),
        _ => None,
    }
}

/// The aggregate functions.
pub fn is_aggregate(function: &Function) -> bool {
    matches!(function.name.to_string().to_lowercase().as_str(), "count" | "sum" | "min" | "max" | "avg")
}

/// The single argument of a function call (`None` for `*` or no argument).
pub fn single_arg(function: &Function) -> Result<Option<&Expr>, SqlError> {
    match &function.args {
        FunctionArguments::None => Ok(None),
        FunctionArguments::List(list) => match list.args.as_slice() {
            [] => Ok(None),
            [FunctionArg::Unnamed(FunctionArgExpr::Expr(e))] => Ok(Some(e)),
            [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)] => Ok(None),
            _ => Err(SqlError::new("42883", format!("function {} takes one argument", function.name))),
        },
        FunctionArguments::Subquery(_) => Err(SqlError::unsupported("subqueries")),
    }
}

fn args(function: &Function) -> Result<Vec<&Expr>, SqlError> {
    match &function.args {
        FunctionArguments::None => Ok(Vec::new()),
        FunctionArguments::List(list) => list
            .args
            .iter()
            .map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e),
                _ => Err(SqlError::new("42883", format!("unsupported arguments to {}", function.name))),
            })
            .collect(),
        FunctionArguments::Subquery(_) => Err(SqlError::unsupported("subqueries")),
    }
}

/// Evaluates a literal.
pub fn literal(value: &AstValue, params: &[Value]) -> Result<Value, SqlError> {
    Ok(match value {
        AstValue::Number(n, _) => match n.parse::<i64>() {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Float(n.parse().map_err(|_| SqlError::syntax(format!("bad number {n}")))?),
        },
        AstValue::SingleQuotedString(s) | AstValue::EscapedStringLiteral(s) | AstValue::NationalStringLiteral(s) => {
            Value::Text(s.clone())
        }
        AstValue::DollarQuotedString(s) => Value::Text(s.value.clone()),
        AstValue::Boolean(b) => Value::Bool(*b),
        AstValue::Null => Value::Null,
        AstValue::Placeholder(p) => {
            let n: usize =
                p.trim_start_matches('$').parse().map_err(|_| SqlError::syntax(format!("bad parameter {p}")))?;
            params
                .get(n.wrapping_sub(1))
                .cloned()
                .ok_or_else(|| SqlError::new("08P01", format!("there is no parameter {p}")))?
        }
        other => return Err(SqlError::unsupported(&format!("the literal {other}"))),
    })
}

/// Evaluates `expr` in `scope`.
pub fn eval(expr: &Expr, scope: &Scope) -> Result<Value, SqlError> {
    match expr {
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) => column_value(expr, scope),
        Expr::Value(v) => literal(&v.value, scope.params),
        Expr::Nested(inner) => eval(inner, scope),
        Expr::UnaryOp { op, expr } => {
            let v = eval(expr, scope)?;
            match (op, v) {
                (_, Value::Null) => Ok(Value::Null),
                (UnaryOperator::Minus, Value::Int(n)) => {
                    n.checked_neg().map(Value::Int).ok_or_else(|| SqlError::new("22003", "integer out of range"))
                }
                (UnaryOperator::Minus, Value::Float(x)) => Ok(Value::Float(-x)),
                (UnaryOperator::Plus, v @ (Value::Int(_) | Value::Float(_))) => Ok(v),
                (UnaryOperator::Not, Value::Bool(b)) => Ok(Value::Bool(!b)),
                (op, v) => Err(type_error(&format!("operator {op} does not apply to {v:?}"))),
            }
        }
        Expr::BinaryOp { left, op, right } => binary(eval(left, scope)?, op, eval(right, scope)?),
        Expr::IsNull(e) => Ok(Value::Bool(eval(e, scope)?.is_null())),
        Expr::IsNotNull(e) => Ok(Value::Bool(!eval(e, scope)?.is_null())),
        Expr::IsTrue(e) => Ok(Value::Bool(eval(e, scope)? == Value::Bool(true))),
        Expr::IsFalse(e) => Ok(Value::Bool(eval(e, scope)? == Value::Bool(false))),
        Expr::Between { expr, negated, low, high } => {
            let v = eval(expr, scope)?;
            let ge = binary(v.clone(), &BinaryOperator::GtEq, eval(low, scope)?)?;
            let le = binary(v, &BinaryOperator::LtEq, eval(high, scope)?)?;
            let both = binary(ge, &BinaryOperator::And, le)?;
            Ok(if *negated { not(both) } else { both })
        }
        Expr::In { expr, target: InTarget::List(list), negated, .. } => {
            in_values(eval(expr, scope)?, list.iter().map(|item| eval(item, scope)), *negated)
        }
        Expr::In { expr, target: InTarget::Subquery(query), negated, .. } => {
            let v = eval(expr, scope)?;
            let rows = subquery_rows(query, scope)?;
            in_values(v, single_column(rows)?.map(|item| Ok(item.clone())), *negated)
        }
        Expr::Exists { subquery, negated } => Ok(Value::Bool(subquery_rows(subquery, scope)?.is_empty() == *negated)),
        Expr::Subquery(query) => {
            let rows = subquery_rows(query, scope)?;
            let mut values = single_column(rows)?;
            match (values.next(), values.next()) {
                (None, _) => Ok(Value::Null),
                (Some(v), None) => Ok(v.clone()),
                _ => Err(SqlError::new("21000", "more than one row returned by a subquery used as an expression")),
            }
        }
        Expr::Case { operand, conditions, else_result, .. } => {
            let operand = operand.as_ref().map(|e| eval(e, scope)).transpose()?;
            for when in conditions {
                let hit = match &operand {
                    Some(v) => binary(v.clone(), &BinaryOperator::Eq, eval(&when.condition, scope)?)?,
                    None => eval(&when.condition, scope)?,
                };
                if hit == Value::Bool(true) {
                    return eval(&when.result, scope);
                }
            }
            else_result.as_ref().map_or(Ok(Value::Null), |e| eval(e, scope))
        }
        Expr::Like { negated, expr, pattern, .. } => like_expr(expr, pattern, *negated, false, scope),
        Expr::ILike { negated, expr, pattern, .. } => like_expr(expr, pattern, *negated, true, scope),
        Expr::Cast { kind: CastKind::Cast | CastKind::DoubleColon, expr, data_type, .. } => {
            let value = eval(expr, scope)?;
            let name = data_type.to_string().to_lowercase();
            match name.trim_start_matches("pg_catalog.") {
                kind @ ("regclass" | "regtype" | "regnamespace") => catalog::cast_to_name(kind, &value, scope.catalog)
                    .ok_or_else(|| type_error(&format!("cannot cast {value:?} to {kind}"))),
                "oid" | "regproc" => SqlType::BigInt.coerce(value),
                "name" | "\"char\"" | "char" if !matches!(value, Value::Null) => Ok(Value::Text(value.to_string())),
                other => SqlType::parse(other)?.coerce(value),
            }
        }
        Expr::Collate { expr, .. } => eval(expr, scope),
        Expr::Function(function) => call(function, scope),
        Expr::TypedString(typed) => {
            let ty = SqlType::parse(&typed.data_type.to_string())?;
            ty.coerce(literal(&typed.value.value, scope.params)?)
        }
        other => Err(SqlError::unsupported(&format!("the expression {other}"))),
    }
}

fn call(function: &Function, scope: &Scope) -> Result<Value, SqlError> {
    let name = function.name.to_string().to_lowercase();
    let name = name.strip_prefix("pg_catalog.").unwrap_or(&name).to_string();
    if let FunctionArguments::Subquery(query) = &function.args {
        if name != "array" {
            return Err(SqlError::unsupported(&format!("{name}(subquery)")));
        }
        // ARRAY(subquery), in PostgreSQL's text form for an array.
        let items: Vec<String> = single_column(subquery_rows(query, scope)?)?.map(Value::to_string).collect();
        return Ok(Value::Text(format!("{{{}}}", items.join(","))));
    }
    if is_aggregate(function) {
        let text = function.to_string();
        return scope
            .aggregates
            .iter()
            .find(|(t, _)| *t == text)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| SqlError::new("42803", format!("aggregate {text} is not allowed here")));
    }
    let args = args(function)?;
    let values = args.iter().map(|a| eval(a, scope)).collect::<Result<Vec<_>, _>>()?;
    let one = || -> Result<&Value, SqlError> {
        match values.as_slice() {
            [v] => Ok(v),
            _ => Err(SqlError::new("42883", format!("function {name} takes one argument"))),
        }
    };
    Ok(match name.as_str() {
        "now" | "current_timestamp" | "transaction_timestamp" | "statement_timestamp" | "localtimestamp" => {
            Value::Timestamp(scope.now)
        }
        "coalesce" => values.into_iter().find(|v| !v.is_null()).unwrap_or(Value::Null),
        "abs" => match one()? {
            Value::Int(n) => Value::Int(n.abs()),
            Value::Float(x) => Value::Float(x.abs()),
            Value::Null => Value::Null,
            v => return Err(type_error(&format!("abs of {v:?}"))),
        },
        "lower" => text_fn(one()?, |s| s.to_lowercase()),
        "upper" => text_fn(one()?, |s| s.to_uppercase()),
        "length" | "char_length" => match one()? {
            Value::Null => Value::Null,
            v => Value::Int(v.to_string().chars().count() as i64),
        },
        "version" => Value::Text(super::VERSION.to_string()),
        _ => match catalog::call(&name, &values, scope.catalog) {
            Some(result) => result?,
            None => return Err(SqlError::new("42883", format!("function {name}() does not exist"))),
        },
    })
}

fn text_fn(v: &Value, f: impl Fn(&str) -> String) -> Value {
    match v {
        Value::Null => Value::Null,
        v => Value::Text(f(&v.to_string())),
    }
}

fn not(v: Value) -> Value {
    match v {
        Value::Bool(b) => Value::Bool(!b),
        other => other,
    }
}

fn type_error(what: &str) -> SqlError {
    SqlError::new("42883", what.to_string())
}

fn like_expr(expr: &Expr, pattern: &Expr, negated: bool, fold: bool, scope: &Scope) -> Result<Value, SqlError> {
    let (v, p) = (eval(expr, scope)?, eval(pattern, scope)?);
    if v.is_null() || p.is_null() {
        return Ok(Value::Null);
    }
    let (v, p) = if fold {
        (v.to_string().to_lowercase(), p.to_string().to_lowercase())
    } else {
        (v.to_string(), p.to_string())
    };
    Ok(Value::Bool(like(&v, &p) != negated))
}

/// `LIKE` with `%` and `_`.
fn like(text: &str, pattern: &str) -> bool {
    let (t, p): (Vec<char>, Vec<char>) = (text.chars().collect(), pattern.chars().collect());
    fn go(t: &[char], p: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('%', rest)) => (0..=t.len()).any(|i| go(&t[i..], rest)),
            Some(('_', rest)) => !t.is_empty() && go(&t[1..], rest),
            Some((c, rest)) => t.first() == Some(c) && go(&t[1..], rest),
        }
    }
    go(&t, &p)
}

/// Applies a binary operator with SQL's NULL rules.
pub fn binary(left: Value, op: &BinaryOperator, right: Value) -> Result<Value, SqlError> {
    use BinaryOperator::*;
    match op {
        And => {
            return Ok(match (truth(&left)?, truth(&right)?) {
                (Some(false), _) | (_, Some(false)) => Value::Bool(false),
                (Some(true), Some(true)) => Value::Bool(true),
                _ => Value::Null,
            })
        }
        Or => {
            return Ok(match (truth(&left)?, truth(&right)?) {
                (Some(true), _) | (_, Some(true)) => Value::Bool(true),
                (Some(false), Some(false)) => Value::Bool(false),
                _ => Value::Null,
            })
        }
        _ => {}
    }
    if left.is_null() || right.is_null() {
        return Ok(Value::Null);
    }
    let compare = |want: fn(std::cmp::Ordering) -> bool| -> Result<Value, SqlError> {
        left.compare(&right)
            .map(|o| Value::Bool(want(o)))
            .ok_or_else(|| type_error(&format!("cannot compare {left:?} with {right:?}")))
    };
    match op {
        Eq => compare(|o| o.is_eq()),
        NotEq => compare(|o| o.is_ne()),
        Lt => compare(|o| o.is_lt()),
        LtEq => compare(|o| o.is_le()),
        Gt => compare(|o| o.is_gt()),
        GtEq => compare(|o| o.is_ge()),
        StringConcat => Ok(Value::Text(format!("{left}{right}"))),
        PGRegexMatch | PGRegexNotMatch | PGRegexIMatch | PGRegexNotIMatch => {
            let fold = matches!(op, PGRegexIMatch | PGRegexNotIMatch);
            let negated = matches!(op, PGRegexNotMatch | PGRegexNotIMatch);
            regex_match(&left.to_string(), &right.to_string(), fold).map(|m| Value::Bool(m != negated))
        }
        PGCustomBinaryOperator(path) => {
            let op = match path.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
                ["pg_catalog", op] | [op] => match *op {
                    "~" => PGRegexMatch,
                    "!~" => PGRegexNotMatch,
                    "~*" => PGRegexIMatch,
                    "!~*" => PGRegexNotIMatch,
                    "=" => Eq,
                    "<>" => NotEq,
                    _ => return Err(SqlError::unsupported(&format!("the operator {op}"))),
                },
                _ => return Err(SqlError::unsupported(&format!("the operator {op}"))),
            };
            binary(left, &op, right)
        }
        Plus | Minus | Multiply | Divide | Modulo => arithmetic(left, op, right),
        other => Err(SqlError::unsupported(&format!("the operator {other}"))),
    }
}

/// `text ~ pattern`, PostgreSQL's POSIX regular expressions as far as the
/// `regex` crate's syntax agrees with them (which covers what catalog
/// queries and ordinary patterns use).
fn regex_match(text: &str, pattern: &str, fold: bool) -> Result<bool, SqlError> {
    let re = regex::RegexBuilder::new(pattern)
        .case_insensitive(fold)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| SqlError::new("2201B", format!("invalid regular expression: {e}")))?;
    Ok(re.is_match(text))
}

fn truth(v: &Value) -> Result<Option<bool>, SqlError> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        other => Err(SqlError::new("42804", format!("argument of AND/OR must be type boolean, not {other:?}"))),
    }
}

fn arithmetic(left: Value, op: &BinaryOperator, right: Value) -> Result<Value, SqlError> {
    use BinaryOperator::*;
    let overflow = || SqlError::new("22003", "integer out of range");
    let as_number = |v: &Value| -> Result<Value, SqlError> {
        match v {
            Value::Int(_) | Value::Float(_) => Ok(v.clone()),
            Value::Text(s) => SqlType::Double.coerce(Value::Text(s.clone())).map(|f| match f {
                Value::Float(x) if x.fract() == 0.0 && s.trim().parse::<i64>().is_ok() => Value::Int(x as i64),
                other => other,
            }),
            other => Err(type_error(&format!("operator {op} does not apply to {other:?}"))),
        }
    };
    match (as_number(&left)?, as_number(&right)?) {
        (Value::Int(a), Value::Int(b)) => match op {
            Plus => a.checked_add(b).map(Value::Int).ok_or_else(overflow),
            Minus => a.checked_sub(b).map(Value::Int).ok_or_else(overflow),
            Multiply => a.checked_mul(b).map(Value::Int).ok_or_else(overflow),
            Divide | Modulo if b == 0 => Err(SqlError::new("22012", "division by zero")),
            Divide => a.checked_div(b).map(Value::Int).ok_or_else(overflow),
            _ => a.checked_rem(b).map(Value::Int).ok_or_else(overflow),
        },
        (a, b) => {
            let (a, b) = (float(&a), float(&b));
            match op {
                Plus => Ok(Value::Float(a + b)),
                Minus => Ok(Value::Float(a - b)),
                Multiply => Ok(Value::Float(a * b)),
                Divide | Modulo if b == 0.0 => Err(SqlError::new("22012", "division by zero")),
                Divide => Ok(Value::Float(a / b)),
                _ => Ok(Value::Float(a % b)),
            }
        }
    }
}

fn float(v: &Value) -> f64 {
    match v {
        Value::Int(n) => *n as f64,
        Value::Float(x) => *x,
        _ => f64::NAN,
    }
}
