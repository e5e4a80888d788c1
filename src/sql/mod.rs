//! SQL over the engine: `sqlparser` parses, and this module plans and runs
//! statements for one client session.
//!
//! [`Session`] is the API every front uses: the PostgreSQL wire server
//! (`server::pg`) and the simulator, which drives it directly on madsim.
//! A session runs each statement in its own transaction unless `BEGIN`
//! opened one; after an error inside `BEGIN` … the transaction is rolled
//! back at once and the session refuses further statements (SQLSTATE 25P02)
//! until `COMMIT` or `ROLLBACK`, as PostgreSQL does. See docs/sql.md for the
//! SQL that works.

mod catalog;
mod exec;
pub mod expr;
pub mod index;
mod query;
pub mod types;

use std::collections::BTreeMap;
use std::sync::Arc;

use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::db::{Database, DbError};
use crate::storage::StoreError;
use crate::txn::lock::LockError;
use crate::txn::Transaction;
pub use types::{SqlType, Value};

/// What `SELECT version()` and `SHOW server_version` report: drivers and
/// tools parse PostgreSQL's version, and ours speaks its protocol 3.0.
pub const VERSION: &str = "PostgreSQL 15.0 (ThunderDB 0.1.0)";

/// The longest statement text accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 16 << 20;

/// An error with its PostgreSQL SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SqlError {
    /// The five-character SQLSTATE (`42601`, `23505`, …).
    pub code: &'static str,
    /// What went wrong, naming the table, column or value.
    pub message: String,
}

impl SqlError {
    /// An error with `code`.
    pub fn new(code: &'static str, message: impl Into<String>) -> SqlError {
        SqlError { code, message: message.into() }
    }

    /// A syntax error (42601).
    pub fn syntax(message: impl Into<String>) -> SqlError {
        SqlError::new("42601", message)
    }

    /// A feature we do not have (0A000).
    pub fn unsupported(what: &str) -> SqlError {
        SqlError::new("0A000", format!("{what} is not supported by ThunderDB (see docs/sql.md)"))
    }

    /// Whether the client should retry the transaction (a deadlock victim or
    /// a lock timeout).
    pub fn is_retryable(&self) -> bool {
        matches!(self.code, "40001" | "40P01" | "55P03")
    }
}

impl From<DbError> for SqlError {
    fn from(e: DbError) -> SqlError {
        let code = match &e {
            DbError::DuplicateKey { .. } => "23505",
            DbError::TableExists(_) => "42P07",
            DbError::NoSuchTable(_) => "42P01",
            DbError::Lock(LockError::Deadlock { .. }) => "40P01",
            DbError::Lock(_) => "55P03",
            DbError::Aborted { .. } => "25P02",
            DbError::ShuttingDown => "57P01",
            DbError::Store(StoreError::TooLarge(_) | StoreError::KeyTooLong { .. }) => "54000",
            e if e.is_corruption() => "XX001",
            _ => "58030",
        };
        SqlError::new(code, e.to_string())
    }
}

/// An output column.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDesc {
    /// Its name.
    pub name: String,
    /// Its type.
    pub ty: SqlType,
}

/// What a statement produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Rows (`SELECT`, `SHOW`).
    Rows {
        /// The command, for the completion tag (`SELECT n`, `SHOW`).
        command: &'static str,
        /// The columns.
        columns: Vec<ColumnDesc>,
        /// The rows.
        rows: Vec<Vec<Value>>,
    },
    /// A command's completion tag (`INSERT 0 3`, `CREATE TABLE`, …).
    Command(String),
    /// `BEGIN` opened a transaction block.
    Begin,
    /// The transaction block ended (`COMMIT`, or `ROLLBACK`, which is also
    /// what `COMMIT` of a failed block reports).
    End(&'static str),
    /// `COPY … FROM STDIN` waits for data: [`Session::copy_data`], then
    /// [`Session::copy_done`].
    CopyIn {
        /// How many columns each line holds.
        columns: usize,
    },
}

/// Parses SQL text into statements.
pub fn parse(sql: &str) -> Result<Vec<Statement>, SqlError> {
    if sql.len() > MAX_QUERY_BYTES {
        return Err(SqlError::new(
            "54000",
            format!("statement of {} bytes is longer than the limit of {} bytes", sql.len(), MAX_QUERY_BYTES),
        ));
    }
    let normalized;
    let sql = if sql.trim_start().get(..4).is_some_and(|w| w.eq_ignore_ascii_case("copy")) {
        normalized = copy_booleans(sql)?;
        normalized.as_str()
    } else {
        sql
    };
    Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| SqlError::syntax(e.to_string()))
}

/// How many parsed statement shapes a session keeps; past it, it starts over.
const SHAPES_KEPT: usize = 256;

/// `sql` with each integer literal that is the right operand of a
/// comparison (`= 42`, `< 7`, `<> 0`, …) replaced by a parameter (`$1`,
/// `$2`, …), and those literals' values: `None` if there are none, or if
/// the text is not one `SELECT`, `INSERT`, `UPDATE` or `DELETE` statement
/// this simple scan can read with certainty (no comments, no `$`, no
/// unterminated quotes). A comparison's right operand is a place where a
/// parameter always stands for a literal: the statement means the same.
pub fn parameterize(sql: &str) -> Option<(String, Vec<Value>)> {
    let first = sql.trim_start().split(|c: char| !c.is_ascii_alphabetic()).next()?;
    if !["select", "insert", "update", "delete"].iter().any(|k| first.eq_ignore_ascii_case(k)) {
        return None;
    }
    let bytes = sql.as_bytes();
    let mut shape = String::with_capacity(sql.len());
    let mut literals = Vec::new();
    let mut copied = 0;
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            quote @ (b'\'' | b'"') => {
                // A quoted string or name, '' or "" inside it.
                at += 1;
                loop {
                    match bytes.get(at) {
                        None => return None,
                        Some(&b) if b == quote && bytes.get(at + 1) == Some(&quote) => at += 2,
                        Some(&b) if b == quote => break,
                        Some(_) => at += 1,
                    }
                }
                at += 1;
            }
            b'$' => return None,
            b'-' if bytes.get(at + 1) == Some(&b'-') => return None,
            b'/' if bytes.get(at + 1) == Some(&b'*') => return None,
            b';' if !sql[at + 1..].trim().is_empty() => return None,
            b'0'..=b'9' => {
                let end = at + bytes[at..].iter().take_while(|b| b.is_ascii_digit()).count();
                let word =
                    |b: Option<&u8>| b.is_some_and(|&b| b.is_ascii_alphanumeric() || b >= 0x80 || b"_.:".contains(&b));
                let compared = || {
                    let before = sql[..at].trim_end();
                    let op_len = before.bytes().rev().take_while(|b| b"=<>!~*+-/%^&|#@".contains(b)).count();
                    ["=", "<", ">", "<=", ">=", "<>", "!="].contains(&&before[before.len() - op_len..])
                };
                let value = sql[at..end].parse::<i64>().ok();
                match value {
                    Some(value)
                        if !word(at.checked_sub(1).map(|i| &bytes[i])) && !word(bytes.get(end)) && compared() =>
                    {
                        shape.push_str(&sql[copied..at]);
                        literals.push(Value::Int(value));
                        shape.push_str(&format!("${}", literals.len()));
                        copied = end;
                    }
                    _ => {}
                }
                at = end;
            }
            _ => at += 1,
        }
    }
    if literals.is_empty() {
        return None;
    }
    shape.push_str(&sql[copied..]);
    Some((shape, literals))
}

/// PostgreSQL's boolean COPY options also take `on`/`off`/`1`/`0` (pgbench
/// sends `freeze on`); sqlparser knows only `true`/`false`, so those are
/// rewritten token by token.
fn copy_booleans(sql: &str) -> Result<String, SqlError> {
    use sqlparser::tokenizer::{Token, Tokenizer};
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().map_err(|e| SqlError::syntax(e.to_string()))?;
    let mut last_word = String::new();
    let mut out = String::with_capacity(sql.len());
    for token in tokens {
        let text = match &token {
            Token::Word(w) if ["freeze", "header"].contains(&last_word.as_str()) => {
                match w.value.to_ascii_lowercase().as_str() {
                    "on" => "true".to_string(),
                    "off" => "false".to_string(),
                    _ => token.to_string(),
                }
            }
            Token::Number(n, _) if ["freeze", "header"].contains(&last_word.as_str()) => {
                if n == "0" {
                    "false".into()
                } else {
                    "true".into()
                }
            }
            _ => token.to_string(),
        };
        match &token {
            Token::Word(w) => last_word = w.value.to_ascii_lowercase(),
            Token::Whitespace(_) => {}
            _ => last_word.clear(),
        }
        out.push_str(&text);
    }
    Ok(out)
}

/// One client's session.
pub struct Session {
    db: Arc<Database>,
    txn: Option<Transaction>,
    /// Inside `BEGIN` … `COMMIT`.
    explicit: bool,
    /// The block failed; only `COMMIT`/`ROLLBACK` are accepted.
    failed: bool,
    /// Hidden row ids for tables without a primary key.
    next_row_id: u64,
    settings: BTreeMap<String, String>,
    copy: Option<exec::CopyState>,
    /// Parsed statements by their [`parameterize`]d text.
    shapes: BTreeMap<String, Arc<Vec<Statement>>>,
}

impl Session {
    /// A new session on `db`.
    pub fn new(db: Arc<Database>) -> Session {
        Session {
            db,
            txn: None,
            explicit: false,
            failed: false,
            next_row_id: 0,
            settings: BTreeMap::new(),
            copy: None,
            shapes: BTreeMap::new(),
        }
    }

    /// Whether a transaction block is open (`BEGIN` was run), and whether
    /// it has failed.
    pub fn in_block(&self) -> (bool, bool) {
        (self.explicit, self.failed)
    }

    /// Runs every statement of `sql` (the simple query protocol), stopping
    /// at the first error. Returns the outputs of the statements that ran,
    /// and the error if one failed.
    pub async fn run(&mut self, sql: &str) -> (Vec<Output>, Option<SqlError>) {
        let (statements, params) = match self.parsed(sql) {
            Ok(parsed) => parsed,
            // A syntax error fails an open block like any other error.
            Err(e) => return (Vec::new(), self.finish_statement(Err(e)).await.err()),
        };
        let mut outputs = Vec::new();
        for statement in statements.iter() {
            match self.execute(statement, &params).await {
                Ok(out) => {
                    let copying = matches!(out, Output::CopyIn { .. });
                    outputs.push(out);
                    if copying {
                        break;
                    }
                }
                Err(e) => return (outputs, Some(e)),
            }
        }
        (outputs, None)
    }

    /// The statements of `sql`, and the values of the parameters they
    /// take. Text the [`parameterize`] rule applies to is parsed once per
    /// shape: later texts that differ only in those literals reuse the
    /// statement, with the literals as parameters (as SQL Server's simple
    /// parameterization does), so a client repeating one query with new
    /// keys does not pay for parsing each time.
    fn parsed(&mut self, sql: &str) -> Result<(Arc<Vec<Statement>>, Vec<Value>), SqlError> {
        if let Some((shape, literals)) = parameterize(sql) {
            if let Some(statements) = self.shapes.get(&shape) {
                return Ok((statements.clone(), literals));
            }
            if let Ok(statements) = parse(&shape) {
                if self.shapes.len() >= SHAPES_KEPT {
                    self.shapes.clear();
                }
                let statements = Arc::new(statements);
                self.shapes.insert(shape, statements.clone());
                return Ok((statements, literals));
            }
        }
        Ok((Arc::new(parse(sql)?), Vec::new()))
    }

    /// Runs one statement with its parameter values.
    pub async fn execute(&mut self, statement: &Statement, params: &[Value]) -> Result<Output, SqlError> {
        match statement {
            Statement::StartTransaction { .. } => {
                self.explicit = true;
                Ok(Output::Begin)
            }
            Statement::Commit { .. } => Ok(Output::End(self.end_block(true).await?)),
            Statement::Rollback { .. } => Ok(Output::End(self.end_block(false).await?)),
            _ if self.failed => Err(SqlError::new(
                "25P02",
                "current transaction is aborted, commands ignored until end of transaction block",
            )),
            Statement::Set(set) => {
                exec::set(&mut self.settings, set)?;
                Ok(Output::Command("SET".into()))
            }
            Statement::ShowVariable { variable } => exec::show(&self.settings, variable),
            // Accepted, not acted on: prepared statements live in the wire
            // protocol's store, where preparing a name again replaces it
            // (drivers such as psycopg send DEALLOCATE ALL after a rollback).
            Statement::Deallocate { name, .. } => Ok(Output::Command(
                if name.value.eq_ignore_ascii_case("all") { "DEALLOCATE ALL" } else { "DEALLOCATE" }.into(),
            )),
            Statement::Vacuum(_) | Statement::Analyze(_) => {
                Ok(Output::Command(if matches!(statement, Statement::Vacuum(_)) { "VACUUM" } else { "ANALYZE" }.into()))
            }
            _ => {
                let result = self.in_transaction(statement, params).await;
                self.finish_statement(result).await
            }
        }
    }

    /// The parameter types and result columns of `statement`, without
    /// running it (the extended protocol's Describe).
    pub async fn describe(
        &mut self,
        statement: &Statement,
        declared: &[Option<SqlType>],
    ) -> Result<(Vec<SqlType>, Vec<ColumnDesc>), SqlError> {
        let had_txn = self.txn.is_some();
        let result = async {
            let txn = self.transaction().await?;
            exec::describe(txn, statement, declared).await
        }
        .await;
        if !had_txn {
            // A read-only look at the catalog: nothing to log.
            if let Some(txn) = self.txn.take() {
                txn.commit().await?;
            }
        }
        result
    }

    /// Feeds `COPY … FROM STDIN` data. Errors are kept until
    /// [`copy_done`](Self::copy_done), which reports them.
    pub async fn copy_data(&mut self, data: &[u8]) {
        let Some(mut copy) = self.copy.take() else { return };
        if let Some(txn) = self.txn.as_mut() {
            copy.feed(txn, data, false, &mut self.next_row_id).await;
        }
        self.copy = Some(copy);
    }

    /// Ends `COPY … FROM STDIN`: the tag (`COPY n`) or the first error.
    pub async fn copy_done(&mut self) -> Result<Output, SqlError> {
        let Some(mut copy) = self.copy.take() else {
            return Err(SqlError::new("08P01", "COPY data ended with no COPY in progress"));
        };
        let result = match self.txn.as_mut() {
            Some(txn) => {
                copy.feed(txn, &[], true, &mut self.next_row_id).await;
                copy.finish()
            }
            None => Err(SqlError::new("08P01", "COPY lost its transaction")),
        };
        self.finish_statement(result).await
    }

    /// The client abandoned `COPY … FROM STDIN`.
    pub async fn copy_fail(&mut self, message: &str) -> SqlError {
        self.copy = None;
        let error = SqlError::new("57014", format!("COPY from stdin failed: {message}"));
        match self.finish_statement(Err(error.clone())).await {
            Err(e) => e,
            Ok(_) => error,
        }
    }

    /// Ends the session: an open transaction is rolled back.
    pub async fn close(mut self) {
        if let Some(txn) = self.txn.take() {
            if let Err(error) = txn.rollback().await {
                tracing::warn!(%error, "rolling back a closed session's transaction failed");
            }
        }
    }

    async fn transaction(&mut self) -> Result<&mut Transaction, SqlError> {
        if self.txn.is_none() {
            self.txn = Some(self.db.begin().await?);
        }
        Ok(self.txn.as_mut().expect("just begun"))
    }

    async fn in_transaction(&mut self, statement: &Statement, params: &[Value]) -> Result<Output, SqlError> {
        let now = self.db.wall_micros() as i64;
        let mut next_row_id = self.next_row_id;
        let txn = self.transaction().await?;
        let mut ctx = exec::Context { txn, params, now, next_row_id: &mut next_row_id };
        let out = exec::execute(&mut ctx, statement).await;
        self.next_row_id = next_row_id;
        match out? {
            exec::Executed::Done(out) => Ok(out),
            exec::Executed::Copy(state) => {
                let columns = state.columns();
                self.copy = Some(state);
                Ok(Output::CopyIn { columns })
            }
        }
    }

    /// Outside a block, commits (or on error rolls back) the statement's
    /// transaction; inside one, an error fails the block.
    async fn finish_statement(&mut self, result: Result<Output, SqlError>) -> Result<Output, SqlError> {
        if matches!(result, Ok(Output::CopyIn { .. })) {
            return result;
        }
        match result {
            Ok(out) if self.explicit => Ok(out),
            Ok(out) => {
                if let Some(txn) = self.txn.take() {
                    txn.commit().await?;
                }
                Ok(out)
            }
            Err(e) => {
                self.fail_block();
                if let Some(txn) = self.txn.take() {
                    if let Err(error) = txn.rollback().await {
                        tracing::warn!(%error, "rolling back after a failed statement failed");
                    }
                }
                Err(e)
            }
        }
    }

    fn fail_block(&mut self) {
        if self.explicit {
            self.failed = true;
        }
    }

    async fn end_block(&mut self, commit: bool) -> Result<&'static str, SqlError> {
        let (failed, txn) = (self.failed, self.txn.take());
        self.explicit = false;
        self.failed = false;
        match txn {
            Some(txn) if commit && !failed => {
                txn.commit().await?;
                Ok("COMMIT")
            }
            Some(txn) => {
                txn.rollback().await?;
                Ok("ROLLBACK")
            }
            None if commit && !failed => Ok("COMMIT"),
            None => Ok("ROLLBACK"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(sql: &str) -> Option<(String, Vec<i64>)> {
        parameterize(sql).map(|(shape, values)| {
            let ints = values
                .into_iter()
                .map(|v| match v {
                    Value::Int(i) => i,
                    v => panic!("{v:?}"),
                })
                .collect();
            (shape, ints)
        })
    }

    #[test]
    fn comparison_literals_become_parameters_and_nothing_else_does() {
        assert_eq!(
            shape("SELECT abalance FROM pgbench_accounts WHERE aid = 98765;"),
            Some(("SELECT abalance FROM pgbench_accounts WHERE aid = $1;".into(), vec![98765]))
        );
        assert_eq!(
            shape("update t set v = 'x = 5' where a>=1 and b<>22 and c != 3 and d<4"),
            Some(("update t set v = 'x = 5' where a>=$1 and b<>$2 and c != $3 and d<$4".into(), vec![1, 22, 3, 4]))
        );
        // Not a comparison's operand, or not a plain integer: kept as text.
        for sql in [
            "SELECT 1",
            "SELECT a FROM t ORDER BY 1 LIMIT 5 OFFSET 2",
            "SELECT a FROM t WHERE a = -5",
            "SELECT a FROM t WHERE a = 5.5 OR a = 1e3 OR a = 5::text OR a = t1",
            "SELECT a FROM t WHERE a + 1 > b",
            "SELECT a FROM t WHERE a = 99999999999999999999",
            "SELECT a FROM t WHERE a @> 5 OR a ->> 3",
            "SELECT a FROM t WHERE \"col=1\" = 'v'",
        ] {
            assert_eq!(shape(sql), None, "{sql}");
        }
        // Text this scan cannot read with certainty is left alone.
        for sql in [
            "SELECT a FROM t WHERE a = 1 -- = 2",
            "SELECT a FROM t WHERE a = 1 /* = 2 */",
            "SELECT a FROM t WHERE a = $1 AND b = 2",
            "SELECT a FROM t WHERE a = 1; SELECT 2",
            "SELECT a FROM t WHERE a = 'open = 1",
            "CREATE TABLE t (a INT CHECK (a = 1))",
            "SET x = 5",
            "WITH w AS (SELECT 1) SELECT * FROM w WHERE 1 = 1",
        ] {
            assert_eq!(shape(sql), None, "{sql}");
        }
    }
}
