//! Planning and running statements inside a transaction.

use std::collections::BTreeMap;
use std::ops::Bound;

use sqlparser::ast::{
    AlterTableOperation, BinaryOperator, ColumnOption, CopySource, CopyTarget, CreateIndex, CreateTable, Delete, Expr,
    FromTable, Ident, InTarget, Insert, LimitClause, ObjectName, ObjectNamePart, SelectItem, Set, SetExpr, Statement,
    TableConstraint, TableFactor, TableObject, TableWithJoins, Update, Value as AstValue,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

use super::expr::{self, eval, ident_name, Col, Scope};
use super::index;
use super::query;
use super::types::{decode_row, encode_row, Column, IndexDef, Schema, SqlType, Value};
use super::{ColumnDesc, Output, SqlError};
use crate::db::DbError;
use crate::txn::{Table, Transaction};

/// Rows read per batch of a table scan.
pub(super) const SCAN_BATCH: usize = 1024;

/// What a statement runs with.
pub struct Context<'a> {
    pub txn: &'a mut Transaction,
    pub params: &'a [Value],
    pub now: i64,
    pub next_row_id: &'a mut u64,
}

/// A statement's result.
pub enum Executed {
    Done(Output),
    Copy(CopyState),
}

pub async fn execute(ctx: &mut Context<'_>, statement: &Statement) -> Result<Executed, SqlError> {
    let done = |out| Ok(Executed::Done(out));
    match statement {
        Statement::Query(query) => {
            let (columns, rows) = query::run(ctx, query).await?;
            done(Output::Rows { command: "SELECT", columns, rows })
        }
        Statement::Explain { statement, analyze, options, .. } => {
            let Statement::Query(query) = statement.as_ref() else {
                return Err(SqlError::unsupported("EXPLAIN of anything but a query"));
            };
            let option = |name: &str| {
                options.iter().flatten().any(|o| {
                    o.name.value.eq_ignore_ascii_case(name)
                        && o.arg
                            .as_ref()
                            .is_none_or(|a| !matches!(a.to_string().to_lowercase().as_str(), "false" | "off" | "0"))
                })
            };
            let rows = query::explain(ctx, query, *analyze || option("analyze")).await?;
            let columns = vec![ColumnDesc { name: "QUERY PLAN".into(), ty: SqlType::Text(None) }];
            done(Output::Rows { command: "EXPLAIN", columns, rows })
        }
        Statement::Insert(insert) => done(insert_rows(ctx, insert).await?),
        Statement::Update(update) => done(update_rows(ctx, update).await?),
        Statement::Delete(delete) => done(delete_rows(ctx, delete).await?),
        Statement::CreateTable(create) => done(create_table(ctx, create).await?),
        Statement::Drop { object_type, if_exists, names, .. } => {
            let kind = object_type.to_string().to_uppercase();
            if kind == "INDEX" {
                for name in names {
                    drop_index(ctx.txn, &object_name(name)?, *if_exists).await?;
                }
                return done(Output::Command("DROP INDEX".into()));
            }
            if kind != "TABLE" {
                return Err(SqlError::unsupported(&format!("DROP {object_type}")));
            }
            for name in names {
                let name = object_name(name)?;
                if let Ok((_, schema)) = load(ctx.txn, &name).await {
                    for index in &schema.indexes {
                        ctx.txn.drop_table(&index::tree_name(&index.name)).await?;
                    }
                }
                match ctx.txn.drop_table(&name).await {
                    Err(DbError::NoSuchTable(_)) if *if_exists => {}
                    Err(DbError::NoSuchTable(_)) => {
                        return Err(SqlError::new("42P01", format!("table \"{name}\" does not exist")))
                    }
                    other => other?,
                }
            }
            done(Output::Command("DROP TABLE".into()))
        }
        Statement::CreateIndex(create) => done(create_index(ctx, create).await?),
        Statement::Truncate(truncate) => {
            for target in &truncate.table_names {
                let name = object_name(&target.name)?;
                let (table, schema) = load(ctx.txn, &name).await?;
                ctx.txn.replace_table(&name, &table.meta).await?;
                for index in &schema.indexes {
                    ctx.txn.replace_table(&index::tree_name(&index.name), name.as_bytes()).await?;
                }
            }
            done(Output::Command("TRUNCATE TABLE".into()))
        }
        Statement::AlterTable(alter) => {
            let name = object_name(&alter.name)?;
            for operation in &alter.operations {
                match operation {
                    AlterTableOperation::AddConstraint { constraint: TableConstraint::PrimaryKey(pk), .. } => {
                        let columns = pk
                            .columns
                            .iter()
                            .map(|c| expr::column_ref(&c.column.expr).ok_or_else(|| SqlError::syntax("bad key column")))
                            .collect::<Result<Vec<_>, _>>()?;
                        add_primary_key(ctx, &name, &columns).await?;
                    }
                    other => return Err(SqlError::unsupported(&format!("ALTER TABLE … {other}"))),
                }
            }
            done(Output::Command("ALTER TABLE".into()))
        }
        Statement::Copy { source, to, target, options, legacy_options, .. } => {
            if *to || !matches!(target, CopyTarget::Stdin) {
                return Err(SqlError::unsupported("COPY other than FROM STDIN"));
            }
            let CopySource::Table { table_name, columns } = source else {
                return Err(SqlError::unsupported("COPY from a query"));
            };
            let mut delimiter = b'\t';
            for option in options {
                let text = option.to_string().to_uppercase();
                if text.starts_with("DELIMITER") {
                    let d = option.to_string();
                    delimiter =
                        d.trim_start_matches(|c: char| c != '\'').trim_matches('\'').bytes().next().unwrap_or(b'\t');
                } else if text.starts_with("FORMAT") && !text.contains("TEXT") {
                    return Err(SqlError::unsupported(&format!("COPY option {option}")));
                }
            }
            if !legacy_options.is_empty() {
                return Err(SqlError::unsupported("COPY's legacy options"));
            }
            let name = object_name(table_name)?;
            let (table, schema) = load(ctx.txn, &name).await?;
            let targets = target_columns(&schema, &name, columns.iter().map(ident_name))?;
            // A bulk load locks the table once instead of every row.
            ctx.txn.lock_exclusive(&table).await?;
            Ok(Executed::Copy(CopyState {
                table,
                schema,
                targets,
                delimiter,
                pending: Vec::new(),
                parsed: Vec::new(),
                rows: 0,
                error: None,
                now: ctx.now,
            }))
        }
        other => Err(SqlError::unsupported(&format!("the statement `{}`", first_words(&other.to_string())))),
    }
}

fn first_words(sql: &str) -> String {
    sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// A table name, lower-cased unless quoted; `public.` is accepted.
pub(super) fn object_name(name: &ObjectName) -> Result<String, SqlError> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(ident) => Ok(ident_name(ident)),
            _ => Err(SqlError::syntax(format!("bad name {name}"))),
        })
        .collect::<Result<_, _>>()?;
    match parts.as_slice() {
        [table] => Ok(table.clone()),
        [schema, table] if schema == "public" => Ok(table.clone()),
        _ => Err(SqlError::new("42P01", format!("relation \"{name}\" does not exist"))),
    }
}

pub(super) async fn load(txn: &mut Transaction, name: &str) -> Result<(Table, Schema), SqlError> {
    let table =
        txn.table(name).await?.ok_or_else(|| SqlError::new("42P01", format!("relation \"{name}\" does not exist")))?;
    let schema = Schema::decode(name, &table.meta)?;
    Ok((table, schema))
}

fn target_columns(schema: &Schema, table: &str, names: impl Iterator<Item = String>) -> Result<Vec<usize>, SqlError> {
    let targets: Vec<usize> = names
        .map(|n| {
            schema
                .column(&n)
                .ok_or_else(|| SqlError::new("42703", format!("column \"{n}\" of relation \"{table}\" does not exist")))
        })
        .collect::<Result<_, _>>()?;
    Ok(if targets.is_empty() { (0..schema.columns.len()).collect() } else { targets })
}

/// Completes a row from the values given for `targets`: defaults for the
/// rest, every value converted to its column's type, NOT NULL checked.
fn complete_row(
    schema: &Schema,
    table: &str,
    targets: &[usize],
    values: Vec<Value>,
    now: i64,
) -> Result<Vec<Value>, SqlError> {
    let mut row = vec![None; schema.columns.len()];
    for (&i, v) in targets.iter().zip(values) {
        row[i] = Some(v);
    }
    row.into_iter()
        .zip(&schema.columns)
        .map(|(v, column)| {
            let v = match v {
                Some(v) => v,
                None => match &column.default {
                    Some(text) => {
                        let e = parse_expr(text)?;
                        eval(&e, &Scope::constants(&[], now))?
                    }
                    None => Value::Null,
                },
            };
            let v = column
                .ty
                .coerce(v)
                .map_err(|e| SqlError::new(e.code, format!("{} (column \"{}\")", e.message, column.name)))?;
            if v.is_null() && column.not_null {
                return Err(SqlError::new(
                    "23502",
                    format!(
                        "null value in column \"{}\" of relation \"{table}\" violates not-null constraint",
                        column.name
                    ),
                ));
            }
            Ok(v)
        })
        .collect()
}

fn parse_expr(text: &str) -> Result<Expr, SqlError> {
    sqlparser::parser::Parser::new(&sqlparser::dialect::PostgreSqlDialect {})
        .try_with_sql(text)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| SqlError::syntax(e.to_string()))
}

fn row_key(schema: &Schema, row: &[Value], txn: &Transaction, next_row_id: &mut u64) -> Vec<u8> {
    schema.key(row).unwrap_or_else(|| {
        *next_row_id += 1;
        let mut key = txn.xid().to_be_bytes().to_vec();
        key.extend_from_slice(&next_row_id.to_be_bytes());
        key
    })
}

/// Inserts rows (key, values) and their index entries; a duplicate key
/// fails with 23505, together with the index of its row (0 for an index's).
async fn insert_indexed(
    txn: &mut Transaction,
    table: &Table,
    schema: &Schema,
    rows: &[(Vec<u8>, Vec<Value>)],
) -> Result<(), (usize, SqlError)> {
    let encoded: Vec<(Vec<u8>, Vec<u8>)> = rows.iter().map(|(key, row)| (key.clone(), encode_row(row))).collect();
    insert_encoded(txn, table, &encoded).await?;
    index::add(txn, schema, rows).await.map_err(|e| (0, e))
}

/// Rows in one `insert_many` call: a load's rows are logged a leaf at a time.
const INSERT_BATCH: usize = 512;

/// Inserts encoded rows (key, row) in batches; a key that exists fails
/// with 23505, together with the index of its row.
async fn insert_encoded(
    txn: &mut Transaction,
    table: &Table,
    rows: &[(Vec<u8>, Vec<u8>)],
) -> Result<(), (usize, SqlError)> {
    for (batch_no, batch) in rows.chunks(INSERT_BATCH).enumerate() {
        let at = batch_no * INSERT_BATCH;
        let inserted = txn.insert_many(table, batch).await.map_err(|e| (at, e.into()))?;
        if inserted < batch.len() {
            let message = format!("duplicate key value violates unique constraint \"{}_pkey\"", table.name);
            return Err((at + inserted, SqlError::new("23505", message)));
        }
    }
    Ok(())
}

async fn insert_rows(ctx: &mut Context<'_>, insert: &Insert) -> Result<Output, SqlError> {
    let TableObject::TableName(name) = &insert.table else {
        return Err(SqlError::unsupported("INSERT into a function"));
    };
    if insert.returning.is_some() || insert.on.is_some() {
        return Err(SqlError::unsupported("INSERT … RETURNING / ON CONFLICT"));
    }
    let name = object_name(name)?;
    let (table, schema) = load(ctx.txn, &name).await?;
    let column_names = insert.columns.iter().map(|c| c.to_string().trim_matches('"').to_lowercase());
    let mut targets = target_columns(&schema, &name, column_names)?;
    let Some(source) = &insert.source else { return Err(SqlError::syntax("INSERT needs VALUES or a query")) };
    // The values, each row's given columns: VALUES evaluated, or the rows a
    // query returns (all read before the first is inserted, so a query of
    // the table itself sees none of them).
    let (given_rows, width) = match source.body.as_ref() {
        SetExpr::Values(values) => {
            let scope = Scope::constants(ctx.params, ctx.now);
            let rows = values
                .rows
                .iter()
                .map(|row| row.content.iter().map(|e| eval(e, &scope)).collect::<Result<Vec<_>, _>>())
                .collect::<Result<Vec<_>, _>>()?;
            let width = values.rows.first().map_or(0, |row| row.content.len());
            (rows, width)
        }
        _ => {
            let (columns, rows) = query::run(ctx, source).await?;
            (rows, columns.len())
        }
    };
    if insert.columns.is_empty() {
        // Without a column list, the values fill the first columns.
        targets.truncate(width.max(1));
    }
    let mismatch =
        |n: usize| SqlError::syntax(format!("INSERT has {n} expressions for {} target columns", targets.len()));
    if width != targets.len() {
        return Err(mismatch(width));
    }
    let mut rows = Vec::with_capacity(given_rows.len());
    for given in given_rows {
        if given.len() != targets.len() {
            return Err(mismatch(given.len()));
        }
        let full = complete_row(&schema, &name, &targets, given, ctx.now)?;
        rows.push((row_key(&schema, &full, ctx.txn, ctx.next_row_id), full));
    }
    insert_indexed(ctx.txn, &table, &schema, &rows).await.map_err(|(_, e)| e)?;
    Ok(Output::Command(format!("INSERT 0 {}", rows.len())))
}

/// The rows of `table` that `filter` selects, as (key, row) pairs, read
/// for update (row locks taken exclusive, or the table's) when `for_update`.
async fn matching_rows(
    ctx: &mut Context<'_>,
    table: &Table,
    alias: Option<&str>,
    schema: &Schema,
    filter: Option<&Expr>,
    for_update: bool,
) -> Result<Vec<(Vec<u8>, Vec<Value>)>, SqlError> {
    let cols = query::table_cols(schema, alias.unwrap_or(&table.name));
    if query::has_subqueries(filter) {
        // Subqueries need the query runner: read the candidates, then filter.
        let candidates = Box::pin(matching_rows(ctx, table, alias, schema, None, for_update)).await?;
        return query::retain_matching(ctx, &cols, candidates, filter.expect("a filter with subqueries")).await;
    }
    let keep = |row: &[Value], params: &[Value], now: i64| -> Result<bool, SqlError> {
        match filter {
            None => Ok(true),
            Some(f) => Ok(eval(f, &Scope::row(&cols, row, params, now))? == Value::Bool(true)),
        }
    };
    if let Some(key) = query::point_key(schema, &cols, filter, ctx.params, ctx.now)? {
        let found =
            if for_update { ctx.txn.get_for_update(table, &key).await? } else { ctx.txn.get(table, &key).await? };
        let mut out = Vec::new();
        if let Some(bytes) = found {
            let row = decode_row(&table.name, &bytes)?;
            if keep(&row, ctx.params, ctx.now)? {
                out.push((key, row));
            }
        }
        return Ok(out);
    }
    if for_update {
        ctx.txn.lock_exclusive(table).await?;
    }
    let mut out = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let start = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let batch = ctx.txn.scan_limit(table, start, Bound::Unbounded, SCAN_BATCH).await?;
        let full = batch.len() == SCAN_BATCH;
        for (key, bytes) in batch {
            let row = decode_row(&table.name, &bytes)?;
            if keep(&row, ctx.params, ctx.now)? {
                out.push((key.clone(), row));
            }
            after = Some(key);
        }
        if !full {
            return Ok(out);
        }
    }
}

pub(super) fn split_and<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    match e {
        Expr::BinaryOp { left, op: BinaryOperator::And, right } => {
            split_and(left, out);
            split_and(right, out);
        }
        Expr::Nested(inner) => split_and(inner, out),
        other => out.push(other),
    }
}

pub(super) fn is_constant(e: &Expr) -> bool {
    match e {
        Expr::Value(_) => true,
        Expr::Nested(inner) | Expr::UnaryOp { expr: inner, .. } | Expr::Cast { expr: inner, .. } => is_constant(inner),
        Expr::BinaryOp { left, right, .. } => is_constant(left) && is_constant(right),
        _ => false,
    }
}

fn single_table(from: &[TableWithJoins]) -> Result<Option<String>, SqlError> {
    match from {
        [] => Ok(None),
        [TableWithJoins { relation: TableFactor::Table { name, .. }, joins }] if joins.is_empty() => {
            Ok(Some(object_name(name)?))
        }
        _ => Err(SqlError::unsupported("joins and subqueries in FROM")),
    }
}

/// The alias of the one table of an UPDATE or DELETE, if it has one.
fn table_alias(from: &[TableWithJoins]) -> Option<String> {
    match from {
        [TableWithJoins { relation: TableFactor::Table { alias: Some(alias), .. }, .. }] => {
            Some(ident_name(&alias.name))
        }
        _ => None,
    }
}

async fn update_rows(ctx: &mut Context<'_>, update: &Update) -> Result<Output, SqlError> {
    if update.returning.is_some() || update.from.is_some() {
        return Err(SqlError::unsupported("UPDATE … FROM / RETURNING"));
    }
    let name = single_table(std::slice::from_ref(&update.table))?.expect("one table");
    let (table, schema) = load(ctx.txn, &name).await?;
    let alias = table_alias(std::slice::from_ref(&update.table));
    let cols = query::table_cols(&schema, alias.as_deref().unwrap_or(&name));
    let assignments = update
        .assignments
        .iter()
        .map(|a| {
            let column = a.target.to_string().trim_matches('"').to_lowercase();
            let i = schema.column(&column).ok_or_else(|| {
                SqlError::new("42703", format!("column \"{column}\" of relation \"{name}\" does not exist"))
            })?;
            Ok((i, &a.value))
        })
        .collect::<Result<Vec<_>, SqlError>>()?;
    let rows = matching_rows(ctx, &table, alias.as_deref(), &schema, update.selection.as_ref(), true).await?;
    let count = rows.len();
    for (key, old) in rows {
        let scope = Scope::row(&cols, &old, ctx.params, ctx.now);
        let mut new = old.clone();
        for &(i, value) in &assignments {
            new[i] = eval(value, &scope)?;
        }
        let targets: Vec<usize> = (0..new.len()).collect();
        let new = complete_row(&schema, &name, &targets, new, ctx.now)?;
        match schema.key(&new) {
            Some(new_key) if new_key != key => {
                ctx.txn.delete(&table, &key).await?;
                insert_encoded(ctx.txn, &table, &[(new_key.clone(), encode_row(&new))]).await.map_err(|(_, e)| e)?;
                index::replace(ctx.txn, &schema, (&key, &old), (&new_key, &new)).await?;
            }
            _ => {
                ctx.txn.put(&table, &key, &encode_row(&new)).await?;
                index::replace(ctx.txn, &schema, (&key, &old), (&key, &new)).await?;
            }
        }
    }
    Ok(Output::Command(format!("UPDATE {count}")))
}

async fn delete_rows(ctx: &mut Context<'_>, delete: &Delete) -> Result<Output, SqlError> {
    if delete.returning.is_some() || delete.using.is_some() {
        return Err(SqlError::unsupported("DELETE … USING / RETURNING"));
    }
    let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &delete.from;
    let name = single_table(from)?.ok_or_else(|| SqlError::syntax("DELETE needs a table"))?;
    let (table, schema) = load(ctx.txn, &name).await?;
    let alias = table_alias(from);
    let rows = matching_rows(ctx, &table, alias.as_deref(), &schema, delete.selection.as_ref(), true).await?;
    for (key, _) in &rows {
        ctx.txn.delete(&table, key).await?;
    }
    index::remove(ctx.txn, &schema, &rows).await?;
    Ok(Output::Command(format!("DELETE {}", rows.len())))
}

async fn create_table(ctx: &mut Context<'_>, create: &CreateTable) -> Result<Output, SqlError> {
    let name = object_name(&create.name)?;
    if create.query.is_some() || create.like.is_some() {
        return Err(SqlError::unsupported("CREATE TABLE … AS / LIKE"));
    }
    let mut columns = Vec::new();
    let mut primary_key = Vec::new();
    for def in &create.columns {
        let column_name = ident_name(&def.name);
        if columns.iter().any(|c: &Column| c.name == column_name) {
            return Err(SqlError::new("42701", format!("column \"{column_name}\" specified more than once")));
        }
        let mut column = Column {
            name: column_name,
            ty: SqlType::parse(&def.data_type.to_string())?,
            not_null: false,
            default: None,
        };
        for option in &def.options {
            match &option.option {
                ColumnOption::Null => {}
                ColumnOption::NotNull => column.not_null = true,
                ColumnOption::Default(e) => column.default = Some(e.to_string()),
                ColumnOption::PrimaryKey(_) => {
                    column.not_null = true;
                    primary_key.push(columns.len());
                }
                other => return Err(SqlError::unsupported(&format!("the column option {other}"))),
            }
        }
        columns.push(column);
    }
    for constraint in &create.constraints {
        match constraint {
            TableConstraint::PrimaryKey(pk) => {
                if !primary_key.is_empty() {
                    return Err(SqlError::new("42P16", format!("multiple primary keys for table \"{name}\"")));
                }
                for c in &pk.columns {
                    let n = expr::column_ref(&c.column.expr).unwrap_or_default();
                    let i = columns
                        .iter()
                        .position(|col| col.name == n)
                        .ok_or_else(|| SqlError::new("42703", format!("column \"{n}\" named in key does not exist")))?;
                    columns[i].not_null = true;
                    primary_key.push(i);
                }
            }
            other => return Err(SqlError::unsupported(&format!("the constraint {other}"))),
        }
    }
    let schema = Schema { columns, primary_key, indexes: Vec::new() };
    match ctx.txn.create_table(&name, &schema.encode()).await {
        Err(DbError::TableExists(_)) if create.if_not_exists => {}
        Err(DbError::TableExists(_)) => {
            return Err(SqlError::new("42P07", format!("relation \"{name}\" already exists")));
        }
        other => {
            other?;
        }
    }
    Ok(Output::Command("CREATE TABLE".into()))
}

/// `CREATE [UNIQUE] INDEX [IF NOT EXISTS] [name] ON t (columns)`: a new
/// tree filled from the table's rows, in this transaction (a crash or a
/// rollback leaves no index and no tree), the table locked meanwhile.
async fn create_index(ctx: &mut Context<'_>, create: &CreateIndex) -> Result<Output, SqlError> {
    if create.predicate.is_some() || !create.include.is_empty() || create.nulls_distinct == Some(false) {
        return Err(SqlError::unsupported("partial indexes, INCLUDE and NULLS NOT DISTINCT"));
    }
    if create.using.as_ref().is_some_and(|using| !using.to_string().eq_ignore_ascii_case("btree")) {
        return Err(SqlError::unsupported("index methods other than btree"));
    }
    let table_name = object_name(&create.table_name)?;
    let (table, mut schema) = load(ctx.txn, &table_name).await?;
    let columns = create
        .columns
        .iter()
        .map(|c| {
            let name =
                expr::column_ref(&c.column.expr).ok_or_else(|| SqlError::unsupported("indexes on expressions"))?;
            schema.column(&name).ok_or_else(|| {
                SqlError::new("42703", format!("column \"{name}\" of relation \"{table_name}\" does not exist"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let name = match &create.name {
        Some(name) => object_name(name)?,
        None => {
            let names: Vec<&str> = columns.iter().map(|&c| schema.columns[c].name.as_str()).collect();
            format!("{table_name}_{}_{}", names.join("_"), if create.unique { "key" } else { "idx" })
        }
    };
    let pkey_of = name.strip_suffix("_pkey");
    let taken = ctx.txn.table(&name).await?.is_some()
        || ctx.txn.table(&index::tree_name(&name)).await?.is_some()
        || match pkey_of {
            Some(owner) => load(ctx.txn, owner).await.is_ok_and(|(_, s)| !s.primary_key.is_empty()),
            None => false,
        };
    if taken {
        if create.if_not_exists {
            return Ok(Output::Command("CREATE INDEX".into()));
        }
        return Err(SqlError::new("42P07", format!("relation \"{name}\" already exists")));
    }
    ctx.txn.lock_exclusive(&table).await?;
    ctx.txn.create_table(&index::tree_name(&name), table_name.as_bytes()).await?;
    let def = IndexDef { name: name.clone(), columns, unique: create.unique };
    index::build(ctx.txn, &table, &schema, &def).await.map_err(|e| match e.code {
        "23505" => SqlError::new("23505", format!("could not create unique index \"{name}\": a key is duplicated")),
        _ => e,
    })?;
    schema.indexes.push(def);
    ctx.txn.set_table_meta(&table_name, &schema.encode()).await?;
    Ok(Output::Command("CREATE INDEX".into()))
}

/// `DROP INDEX [IF EXISTS] name`: out of its table's schema, its tree freed
/// when the transaction commits.
async fn drop_index(txn: &mut Transaction, name: &str, if_exists: bool) -> Result<(), SqlError> {
    let Some(tree) = txn.table(&index::tree_name(name)).await? else {
        if if_exists {
            return Ok(());
        }
        return Err(SqlError::new("42704", format!("index \"{name}\" does not exist")));
    };
    let table_name = String::from_utf8_lossy(&tree.meta).into_owned();
    let (table, mut schema) = load(txn, &table_name).await?;
    txn.lock_exclusive(&table).await?;
    schema.indexes.retain(|index| index.name != name);
    txn.set_table_meta(&table_name, &schema.encode()).await?;
    txn.drop_table(&index::tree_name(name)).await?;
    Ok(())
}

/// Rebuilds `name` keyed by `columns`: a new tree filled from the old in
/// batches, in this transaction (so a crash leaves the old table).
async fn add_primary_key(ctx: &mut Context<'_>, name: &str, columns: &[String]) -> Result<(), SqlError> {
    let (_, mut schema) = load(ctx.txn, name).await?;
    if !schema.primary_key.is_empty() {
        return Err(SqlError::new("42P16", format!("multiple primary keys for table \"{name}\" are not allowed")));
    }
    for column in columns {
        let i = schema.column(column).ok_or_else(|| {
            SqlError::new("42703", format!("column \"{column}\" of relation \"{name}\" does not exist"))
        })?;
        schema.columns[i].not_null = true;
        schema.primary_key.push(i);
    }
    let (old, new) = ctx.txn.replace_table(name, &schema.encode()).await?;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let start = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let batch = ctx.txn.scan_limit(&old, start, Bound::Unbounded, SCAN_BATCH).await?;
        let full = batch.len() == SCAN_BATCH;
        after = batch.last().map(|(key, _)| key.clone());
        let mut rekeyed = Vec::with_capacity(batch.len());
        for (_, bytes) in batch {
            let row = decode_row(name, &bytes)?;
            for &i in &schema.primary_key {
                if row[i].is_null() {
                    return Err(SqlError::new(
                        "23502",
                        format!("column \"{}\" of relation \"{name}\" contains null values", schema.columns[i].name),
                    ));
                }
            }
            rekeyed.push((schema.key(&row).expect("a primary key"), bytes));
        }
        match insert_encoded(ctx.txn, &new, &rekeyed).await {
            Err((_, e)) if e.code == "23505" => {
                return Err(SqlError::new(
                    "23505",
                    format!("could not create unique index \"{name}_pkey\": the key is duplicated"),
                ))
            }
            other => other.map_err(|(_, e)| e)?,
        }
        if !full {
            // The indexes hold primary keys, which all changed: rebuild them.
            for index in &schema.indexes {
                ctx.txn.replace_table(&index::tree_name(&index.name), name.as_bytes()).await?;
                index::build(ctx.txn, &new, &schema, index).await?;
            }
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------- Describe

/// Parameter types (declared ones kept, the rest inferred from the columns
/// they meet) and result columns of `statement`.
pub async fn describe(
    txn: &mut Transaction,
    statement: &Statement,
    declared: &[Option<SqlType>],
) -> Result<(Vec<SqlType>, Vec<ColumnDesc>), SqlError> {
    let mut inferred: BTreeMap<usize, SqlType> = BTreeMap::new();
    let mut columns = Vec::new();
    match statement {
        Statement::Query(query) => {
            if let SetExpr::Select(select) = query.body.as_ref() {
                if let [TableWithJoins { relation: TableFactor::Table { name, .. }, joins }] = select.from.as_slice() {
                    if joins.is_empty() {
                        if let Ok(name) = object_name(name) {
                            if let Ok((_, schema)) = load(txn, &name).await {
                                if let Some(f) = &select.selection {
                                    infer(f, &schema, &mut inferred);
                                }
                            }
                        }
                    }
                }
            }
            if let SetExpr::Select(select) = query.body.as_ref() {
                for item in &select.projection {
                    if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item {
                        infer_in(e, &[], &mut inferred);
                    }
                }
            }
            if let Some(LimitClause::LimitOffset { limit, offset, .. }) = &query.limit_clause {
                for e in limit.iter().chain(offset.as_ref().map(|o| &o.value)) {
                    if let Some(n) = placeholder(e) {
                        inferred.insert(n, SqlType::BigInt);
                    }
                }
            }
            let types = param_list(declared, &inferred);
            let mut next_row_id = 0;
            let mut ctx = Context { txn, params: &[], now: 0, next_row_id: &mut next_row_id };
            columns = query::columns(&mut ctx, query, &types).await?;
        }
        Statement::Insert(insert) => {
            if let (TableObject::TableName(name), Some(source)) = (&insert.table, &insert.source) {
                let name = object_name(name)?;
                let (_, schema) = load(txn, &name).await?;
                let targets = target_columns(
                    &schema,
                    &name,
                    insert.columns.iter().map(|c| c.to_string().trim_matches('"').to_lowercase()),
                )?;
                if let SetExpr::Values(values) = source.body.as_ref() {
                    for row in &values.rows {
                        for (e, &i) in row.content.iter().zip(&targets) {
                            if let Some(n) = placeholder(e) {
                                inferred.insert(n, schema.columns[i].ty);
                            }
                        }
                    }
                }
            }
        }
        Statement::Update(update) => {
            if let Some(name) = single_table(std::slice::from_ref(&update.table))? {
                let (_, schema) = load(txn, &name).await?;
                for a in &update.assignments {
                    let column = a.target.to_string().trim_matches('"').to_lowercase();
                    if let (Some(n), Some(i)) = (placeholder(&a.value), schema.column(&column)) {
                        inferred.insert(n, schema.columns[i].ty);
                    }
                    infer(&a.value, &schema, &mut inferred);
                }
                if let Some(f) = &update.selection {
                    infer(f, &schema, &mut inferred);
                }
            }
        }
        Statement::Delete(delete) => {
            let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &delete.from;
            if let Some(name) = single_table(from)? {
                let (_, schema) = load(txn, &name).await?;
                if let Some(f) = &delete.selection {
                    infer(f, &schema, &mut inferred);
                }
            }
        }
        Statement::Explain { .. } => {
            columns.push(ColumnDesc { name: "QUERY PLAN".into(), ty: SqlType::Text(None) });
        }
        Statement::ShowVariable { variable } => {
            columns.push(ColumnDesc {
                name: variable.iter().map(ident_name).collect::<Vec<_>>().join("_"),
                ty: SqlType::Text(None),
            });
        }
        _ => {}
    }
    let mut types = param_list(declared, &inferred);
    types.resize(types.len().max(highest_placeholder(statement)), SqlType::Text(None));
    Ok((types, columns))
}

fn param_list(declared: &[Option<SqlType>], inferred: &BTreeMap<usize, SqlType>) -> Vec<SqlType> {
    let count = declared.len().max(inferred.keys().next_back().copied().unwrap_or(0));
    (1..=count)
        .map(|n| {
            declared.get(n - 1).copied().flatten().or_else(|| inferred.get(&n).copied()).unwrap_or(SqlType::Text(None))
        })
        .collect()
}

fn placeholder(e: &Expr) -> Option<usize> {
    match e {
        Expr::Value(v) => match &v.value {
            AstValue::Placeholder(p) => p.trim_start_matches('$').parse().ok(),
            _ => None,
        },
        Expr::Nested(inner) => placeholder(inner),
        _ => None,
    }
}

/// Infers parameter types from the expressions they meet: `col = $1`,
/// `$1 + col`, `col BETWEEN $1 AND $2`, `col IN ($1, $2)`.
fn infer(e: &Expr, schema: &Schema, out: &mut BTreeMap<usize, SqlType>) {
    let cols = query::table_cols(schema, "");
    infer_in(e, &cols, out);
}

fn infer_in(e: &Expr, cols: &[Col], out: &mut BTreeMap<usize, SqlType>) {
    let pair = |a: &Expr, b: &Expr, out: &mut BTreeMap<usize, SqlType>| {
        if let Some(n) = placeholder(b) {
            let ty = query::type_of(a, cols, &[]);
            if placeholder(a).is_none() && ty != SqlType::Text(None) || expr::column_ref(a).is_some() {
                out.entry(n).or_insert(ty);
            }
        }
    };
    match e {
        Expr::BinaryOp { left, right, .. } => {
            pair(left, right, out);
            pair(right, left, out);
            infer_in(left, cols, out);
            infer_in(right, cols, out);
        }
        Expr::Between { expr, low, high, .. } => {
            pair(expr, low, out);
            pair(expr, high, out);
        }
        Expr::In { expr, target: InTarget::List(list), .. } => {
            for item in list {
                pair(expr, item, out);
            }
        }
        Expr::Cast { expr: inner, data_type, .. } => match placeholder(inner) {
            Some(n) => {
                if let Ok(ty) = SqlType::parse(&data_type.to_string()) {
                    out.entry(n).or_insert(ty);
                }
            }
            None => infer_in(inner, cols, out),
        },
        Expr::Nested(inner) | Expr::UnaryOp { expr: inner, .. } => infer_in(inner, cols, out),
        _ => {}
    }
}

/// The highest `$n` in `statement`: a parameter counts wherever it stands,
/// even where nothing says its type (it is then text).
fn highest_placeholder(statement: &Statement) -> usize {
    let text = statement.to_string();
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, &text).tokenize().unwrap_or_default();
    tokens
        .iter()
        .filter_map(|t| match t {
            Token::Placeholder(p) => p.strip_prefix('$')?.parse().ok(),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

// ---------------------------------------------------------------- SET / SHOW

pub fn set(settings: &mut BTreeMap<String, String>, set: &Set) -> Result<(), SqlError> {
    if let Set::SingleAssignment { variable, values, .. } = set {
        let value = values
            .iter()
            .map(|v| match v {
                Expr::Value(v) => match &v.value {
                    AstValue::SingleQuotedString(s) => s.clone(),
                    other => other.to_string(),
                },
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        settings.insert(variable.to_string().to_lowercase(), value);
    }
    Ok(())
}

pub fn show(settings: &BTreeMap<String, String>, variable: &[Ident]) -> Result<Output, SqlError> {
    let name = variable.iter().map(ident_name).collect::<Vec<_>>().join(" ");
    let builtin = match name.as_str() {
        "server_version" => Some("15.0"),
        "server_version_num" => Some("150000"),
        "server_encoding" | "client_encoding" => Some("UTF8"),
        "transaction_isolation" | "transaction isolation level" | "default_transaction_isolation" => {
            Some("serializable")
        }
        "standard_conforming_strings" | "integer_datetimes" => Some("on"),
        // A server that answers SQL is a writable primary (a standby turns
        // clients away until promoted): what libpq's
        // `target_session_attrs=read-write` asks.
        "transaction_read_only" | "default_transaction_read_only" | "in_hot_standby" => Some("off"),
        "datestyle" => Some("ISO, MDY"),
        "timezone" | "time zone" => Some("UTC"),
        "max_identifier_length" => Some("63"),
        "search_path" => Some("\"$user\", public"),
        _ => None,
    };
    let value = settings
        .get(&name)
        .cloned()
        .or(builtin.map(str::to_string))
        .ok_or_else(|| SqlError::new("42704", format!("unrecognized configuration parameter \"{name}\"")))?;
    Ok(Output::Rows {
        command: "SHOW",
        columns: vec![ColumnDesc { name: name.replace(' ', "_"), ty: SqlType::Text(None) }],
        rows: vec![vec![Value::Text(value)]],
    })
}

// ---------------------------------------------------------------- COPY

/// `COPY … FROM STDIN` in progress: text format, one row per line.
pub struct CopyState {
    table: Table,
    schema: Schema,
    targets: Vec<usize>,
    delimiter: u8,
    /// The incomplete last line of the data so far.
    pending: Vec<u8>,
    /// Rows parsed, not yet inserted: they go in together, a batch at a
    /// time, however the client cut the data into messages.
    parsed: Vec<(Vec<u8>, Vec<Value>)>,
    /// Rows inserted.
    rows: u64,
    error: Option<SqlError>,
    now: i64,
}

impl CopyState {
    pub fn columns(&self) -> usize {
        self.targets.len()
    }

    /// Loads the complete lines of `data` (all of it at `end`).
    pub async fn feed(&mut self, txn: &mut Transaction, data: &[u8], end: bool, next_row_id: &mut u64) {
        if self.error.is_some() {
            return;
        }
        self.pending.extend_from_slice(data);
        let Some(cut) = (if end {
            Some(self.pending.len())
        } else {
            self.pending.iter().rposition(|&b| b == b'\n').map(|i| i + 1)
        }) else {
            return;
        };
        let chunk: Vec<u8> = self.pending.drain(..cut).collect();
        for line in chunk.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            if line == b"\\." {
                break;
            }
            match self.parse_line(line) {
                Ok(row) => self.parsed.push((row_key(&self.schema, &row, txn, next_row_id), row)),
                Err(e) => return self.fail(self.rows + self.parsed.len() as u64, e),
            }
        }
        if self.parsed.len() >= INSERT_BATCH || end {
            let rows = std::mem::take(&mut self.parsed);
            match insert_indexed(txn, &self.table, &self.schema, &rows).await {
                Ok(()) => self.rows += rows.len() as u64,
                Err((at, e)) => self.fail(self.rows + at as u64, e),
            }
        }
    }

    /// Records the error of the row after `rows_before`, with its line.
    fn fail(&mut self, rows_before: u64, e: SqlError) {
        let line_no = rows_before + 1;
        self.error = Some(SqlError::new(e.code, format!("{} (COPY {}, line {line_no})", e.message, self.table.name)));
    }

    fn parse_line(&self, line: &[u8]) -> Result<Vec<Value>, SqlError> {
        let text = std::str::from_utf8(line).map_err(|_| SqlError::new("22021", "invalid UTF-8 in COPY data"))?;
        let fields: Vec<Value> = text.split(self.delimiter as char).map(unescape).collect();
        if fields.len() != self.targets.len() {
            return Err(SqlError::new(
                "22P04",
                format!("expected {} columns, found {}", self.targets.len(), fields.len()),
            ));
        }
        complete_row(&self.schema, &self.table.name, &self.targets, fields, self.now)
    }

    pub fn finish(self) -> Result<Output, SqlError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(Output::Command(format!("COPY {}", self.rows))),
        }
    }
}

/// A COPY text field: `\N` is NULL; backslash escapes are decoded.
fn unescape(field: &str) -> Value {
    if field == "\\N" {
        return Value::Null;
    }
    if !field.contains('\\') {
        return Value::Text(field.to_string());
    }
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    Value::Text(out)
}
