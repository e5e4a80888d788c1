//! Queries: `FROM` with joins, derived tables and `WITH`; subqueries in
//! expressions; grouping and aggregates; `DISTINCT`; `UNION`, `INTERSECT`
//! and `EXCEPT`; `ORDER BY`, `LIMIT` and `OFFSET`.
//!
//! Each part of a query is a [`Relation`]: its columns and its rows, held
//! in memory within the statement's budget ([`QUERY_MEMORY`]). A query with
//! one table in `FROM` reads it in batches, applies `WHERE` as it goes, and
//! reads a single row when `WHERE` fixes the primary key. Joins pick their
//! method per join: an index lookup when the inner table's primary key is
//! fixed by equalities with the outer side, a hash join on other
//! equalities, and a nested loop otherwise.
//!
//! Subqueries run when a row needs them. One that does not refer to the
//! enclosing query runs once per statement; a correlated one runs for each
//! row, seeing that row as [`Outer`]. A dry run (for `Describe`) reads no
//! rows and evaluates nothing, and so finds every relation's columns.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Bound;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sqlparser::ast::{
    BinaryOperator, Distinct, Expr, GroupByExpr, Ident, JoinConstraint, JoinOperator, LimitClause, ObjectName,
    OrderByExpr, OrderByKind, Query, Select, SelectItem, SelectItemQualifiedWildcardKind, SetExpr, SetOperator,
    SetQuantifier, TableAlias, TableFactor, TableWithJoins, Value as AstValue,
};

use super::catalog::{catalog_name, Catalog};
use super::exec::{is_constant, load, object_name, split_and, Context, SCAN_BATCH};
use super::expr::{
    self, eval, for_each_subquery, ident_name, is_aggregate, resolve, single_arg, subquery_key, Col, Outer, Scope,
    Subqueries,
};
use super::index::{self, key_prefix, prefix_end};
use super::types::{decode_columns, decode_row, encode_key_part, IndexDef, Schema, SqlType, Value};
use super::{ColumnDesc, SqlError};

/// The most row data one statement may hold in memory at once: its
/// materialized relations, hash tables and sorted output. Past it the
/// statement fails with SQLSTATE 53200 instead of exhausting the server.
pub const QUERY_MEMORY: usize = 512 << 20;

/// Whether a row passes a filter: [`Runner::keep_now`], else (a subquery
/// must run) [`Runner::keep`].
macro_rules! keep {
    ($runner:expr, $filter:expr, $subqueries:expr, $cols:expr, $row:expr, $outer:expr) => {
        match {
            $runner.pace().await;
            $runner.keep_now($filter, $subqueries, $cols, $row, $outer)
        } {
            Some(kept) => kept?,
            None => $runner.keep($filter, $subqueries, $cols, $row, $outer).await?,
        }
    };
}

/// A relation: columns and rows.
#[derive(Debug, Clone, Default)]
pub struct Relation {
    pub cols: Vec<Col>,
    pub rows: Vec<Vec<Value>>,
}

type Boxed<'s, T> = Pin<Box<dyn Future<Output = Result<T, SqlError>> + Send + 's>>;

/// Runs `query` and returns its result.
pub async fn run(ctx: &mut Context<'_>, query: &Query) -> Result<(Vec<ColumnDesc>, Vec<Vec<Value>>), SqlError> {
    let param_types = ctx.params.iter().map(value_type).collect();
    let mut runner = Runner::new(ctx, param_types, false);
    runner.source = Some(query);
    let relation = runner.query(query, None).await?;
    Ok((descs(&relation.cols), relation.rows))
}

/// `EXPLAIN [ANALYZE] query`: the plan, a line per row. Without ANALYZE
/// it is a dry run (nothing read); with it the query runs, and each
/// operator shows the rows it produced, how often it ran and its time.
pub async fn explain(ctx: &mut Context<'_>, query: &Query, analyze: bool) -> Result<Vec<Vec<Value>>, SqlError> {
    let param_types = ctx.params.iter().map(value_type).collect();
    let mut runner = Runner::new(ctx, param_types, !analyze);
    runner.trace = Some(Trace::default());
    let start = runner.ctx.txn.monotonic();
    runner.query(query, None).await?;
    let elapsed = runner.ctx.txn.monotonic().saturating_sub(start);
    let trace = runner.trace.take().expect("traced");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut out = Vec::new();
    for line in &trace.lines {
        let indent = if line.depth == 0 { String::new() } else { " ".repeat(6 * (line.depth - 1) + 2) };
        let text = match (line.detail, line.depth) {
            (true, _) => format!("{indent}{}", line.text),
            (false, 0) => line.text.clone(),
            (false, _) => format!("{indent}->  {}", line.text),
        };
        let text = if analyze && !line.detail {
            format!("{text}  (actual rows={} loops={} time={:.3} ms)", line.rows, line.loops, ms(line.time))
        } else {
            text
        };
        out.push(vec![Value::Text(text)]);
    }
    if analyze {
        out.push(vec![Value::Text(format!("Execution Time: {:.3} ms", ms(elapsed)))]);
    }
    Ok(out)
}

/// Every name a statement's text (`sql`) could refer to a column by, as
/// PostgreSQL folds it; `None` when it could refer to columns without
/// naming them (`*`, `t.*`, `NATURAL JOIN`). Table scans decode only the
/// named columns and read the rest as NULL, so a query never copies text
/// it does not look at. A name counts wherever it appears (as a table, a
/// function, a keyword), which can only keep more columns than needed.
fn names_in(sql: &str) -> Option<BTreeSet<String>> {
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::keywords::Keyword;
    use sqlparser::tokenizer::{Token, Tokenizer};
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    let mut names = BTreeSet::new();
    let mut previous = &Token::EOF;
    for token in &tokens {
        match token {
            Token::Whitespace(_) => continue,
            // `count(*)` names no column; any other `*` may stand for all.
            Token::Mul if *previous != Token::LParen => return None,
            Token::Word(w) if w.keyword == Keyword::NATURAL => return None,
            Token::Word(w) if w.quote_style.is_some() => {
                names.insert(w.value.clone());
            }
            Token::Word(w) => {
                names.insert(w.value.to_lowercase());
            }
            _ => {}
        }
        previous = token;
    }
    Some(names)
}

/// Whether `filter` holds a subquery.
pub fn has_subqueries(filter: Option<&Expr>) -> bool {
    !subqueries_in(filter).is_empty()
}

/// The rows (of a table with columns `cols`) that `filter` keeps: the
/// `WHERE` of an `UPDATE` or `DELETE` that holds subqueries.
pub async fn retain_matching<K>(
    ctx: &mut Context<'_>,
    cols: &[Col],
    rows: Vec<(K, Vec<Value>)>,
    filter: &Expr,
) -> Result<Vec<(K, Vec<Value>)>, SqlError> {
    let param_types = ctx.params.iter().map(value_type).collect();
    let mut runner = Runner::new(ctx, param_types, false);
    runner.source = Some(filter);
    let subqueries = subqueries_in(Some(filter));
    let mut kept = Vec::new();
    for (key, row) in rows {
        if runner.keep(Some(filter), &subqueries, cols, &row, None).await? {
            kept.push((key, row));
        }
    }
    Ok(kept)
}

/// The columns `query` would return, given its parameters' types: a dry
/// run, which reads no rows.
pub async fn columns(
    ctx: &mut Context<'_>,
    query: &Query,
    param_types: &[SqlType],
) -> Result<Vec<ColumnDesc>, SqlError> {
    let mut runner = Runner::new(ctx, param_types.to_vec(), true);
    Ok(descs(&runner.query(query, None).await?.cols))
}

fn descs(cols: &[Col]) -> Vec<ColumnDesc> {
    cols.iter().map(|c| ColumnDesc { name: c.name.clone(), ty: c.ty }).collect()
}

/// The type a parameter's value was given as.
pub fn value_type(v: &Value) -> SqlType {
    match v {
        Value::Int(_) => SqlType::BigInt,
        Value::Float(_) => SqlType::Double,
        Value::Bool(_) => SqlType::Bool,
        Value::Timestamp(_) => SqlType::TimestampTz,
        _ => SqlType::Text(None),
    }
}

/// The plan as `EXPLAIN` shows it: one line per operator, its inputs
/// indented under it; with `ANALYZE`, each operator's rows, runs and time.
#[derive(Debug, Default)]
struct Trace {
    lines: Vec<PlanLine>,
    depth: usize,
    /// Each subquery's line, once it has one: later runs add to it.
    subplans: BTreeMap<usize, usize>,
    /// Above zero while a subquery runs again: its plan is shown once.
    quiet: usize,
    /// Details for the operator closed next.
    notes: Vec<String>,
}

#[derive(Debug)]
struct PlanLine {
    depth: usize,
    text: String,
    /// A detail of the operator above (`Filter: …`), not an operator.
    detail: bool,
    rows: usize,
    loops: usize,
    time: Duration,
}

/// Where an operator's line is, and when its work began.
#[derive(Debug, Clone, Copy)]
struct Node {
    index: usize,
    depth: usize,
    start: Duration,
}

/// The point in the trace an operator's inputs start at.
#[derive(Debug, Clone, Copy)]
struct Mark {
    index: usize,
    start: Duration,
}

/// How a join keeps rows without a partner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JoinKind {
    Inner,
    Left,
    Right,
    Full,
}

struct Runner<'c, 'a> {
    ctx: &'c mut Context<'a>,
    param_types: Vec<SqlType>,
    dry: bool,
    /// `WITH` relations in scope, innermost last.
    ctes: Vec<(String, Arc<Relation>)>,
    /// Results of subqueries that do not depend on the row.
    uncorrelated: BTreeMap<usize, Arc<Vec<Vec<Value>>>>,
    /// Subqueries known to refer to an enclosing query's row.
    correlated: BTreeSet<usize>,
    /// Row data held, by estimate.
    memory: usize,
    /// The system catalog, read when the statement first needs it.
    catalog: Option<Arc<Catalog>>,
    /// The plan, for `EXPLAIN`.
    trace: Option<Trace>,
    /// The statement, whose text says which columns it may read.
    source: Option<&'c (dyn std::fmt::Display + Sync)>,
    /// The names `source` mentions ([`names_in`]), read at the first scan
    /// of many rows: such a scan decodes only columns by these names.
    /// `Some(None)` decodes every column.
    named: Option<Option<BTreeSet<String>>>,
    /// Rows looked at so far ([`Runner::pace`]).
    work: u64,
}

/// How many rows a statement looks at between its yields ([`Runner::pace`]).
const PACE: u64 = 4096;

impl<'c, 'a> Runner<'c, 'a> {
    fn new(ctx: &'c mut Context<'a>, param_types: Vec<SqlType>, dry: bool) -> Self {
        Runner {
            ctx,
            param_types,
            dry,
            ctes: Vec::new(),
            uncorrelated: BTreeMap::new(),
            correlated: BTreeSet::new(),
            memory: 0,
            catalog: None,
            trace: None,
            source: None,
            named: None,
            work: 0,
        }
    }

    /// Counts a row looked at, and every [`PACE`] rows lets the other
    /// sessions on this thread run (`env::SessionThread`): a long join,
    /// filter or aggregate must not hold them up for its whole length.
    /// Cheap when it does not yield: no `async` state beyond a counter.
    #[inline]
    fn pace(&mut self) -> impl Future<Output = ()> {
        self.work += 1;
        let due = self.work % PACE == 0;
        async move {
            if due {
                tokio::task::yield_now().await;
            }
        }
    }

    /// Which of `cols` a scan must decode: `None` for all.
    fn wanted(&mut self, cols: &[Col]) -> Option<Vec<bool>> {
        let source = self.source;
        let named = self.named.get_or_insert_with(|| source.and_then(|s| names_in(&s.to_string())));
        named.as_ref().map(|names| cols.iter().map(|c| names.contains(&c.name)).collect())
    }

    fn tracing(&self) -> bool {
        self.trace.as_ref().is_some_and(|t| t.quiet == 0)
    }

    fn mark(&self) -> Mark {
        Mark { index: self.trace.as_ref().map_or(0, |t| t.lines.len()), start: self.ctx.txn.monotonic() }
    }

    /// Starts an operator's line; what it reads is traced under it.
    fn open_node(&mut self, text: impl FnOnce() -> String) -> Option<Node> {
        if !self.tracing() {
            return None;
        }
        let start = self.ctx.txn.monotonic();
        let trace = self.trace.as_mut().expect("tracing");
        let depth = trace.depth;
        trace.lines.push(PlanLine { depth, text: text(), detail: false, rows: 0, loops: 0, time: Duration::ZERO });
        trace.depth += 1;
        Some(Node { index: trace.lines.len() - 1, depth, start })
    }

    /// Puts an operator above the lines traced since `mark` (its inputs).
    fn wrap_node(&mut self, mark: Mark, text: impl FnOnce() -> String) -> Option<Node> {
        if !self.tracing() {
            return None;
        }
        let trace = self.trace.as_mut().expect("tracing");
        let depth = trace.lines.get(mark.index).map_or(trace.depth, |line| line.depth);
        for line in &mut trace.lines[mark.index..] {
            line.depth += 1;
        }
        let line = PlanLine { depth, text: text(), detail: false, rows: 0, loops: 0, time: Duration::ZERO };
        trace.lines.insert(mark.index, line);
        trace.depth = depth + 1;
        Some(Node { index: mark.index, depth, start: mark.start })
    }

    /// A detail line (`Filter: …`) of the operator being traced.
    fn detail(&mut self, text: impl FnOnce() -> String) {
        if self.tracing() {
            let trace = self.trace.as_mut().expect("tracing");
            let depth = trace.depth;
            trace.lines.push(PlanLine { depth, text: text(), detail: true, rows: 0, loops: 0, time: Duration::ZERO });
        }
    }

    /// A detail for the operator closed next (a join's condition, known
    /// only once it has chosen how to join).
    fn note(&mut self, text: impl FnOnce() -> String) {
        if self.tracing() {
            let text = text();
            self.trace.as_mut().expect("tracing").notes.push(text);
        }
    }

    /// Ends an operator: its rows and time (and, if given, its final
    /// text); pending notes go right under its line.
    fn close_node(&mut self, node: Option<Node>, rows: usize, text: Option<String>) {
        let Some(node) = node else { return };
        let now = self.ctx.txn.monotonic();
        let trace = self.trace.as_mut().expect("tracing");
        let line = &mut trace.lines[node.index];
        line.rows += rows;
        line.loops += 1;
        line.time += now.saturating_sub(node.start);
        if let Some(text) = text {
            line.text = text;
        }
        for (n, text) in std::mem::take(&mut trace.notes).into_iter().enumerate() {
            let line = PlanLine { depth: node.depth + 1, text, detail: true, rows: 0, loops: 0, time: Duration::ZERO };
            trace.lines.insert(node.index + 1 + n, line);
        }
        trace.depth = node.depth;
    }

    /// Counts `row` against the statement's memory budget.
    fn hold(&mut self, row: &[Value]) -> Result<(), SqlError> {
        self.memory += 16 + row.iter().map(value_size).sum::<usize>();
        if self.memory > QUERY_MEMORY {
            return Err(SqlError::new(
                "53200",
                format!(
                    "out of memory: the query holds more than {} MiB of rows; add conditions that narrow it",
                    QUERY_MEMORY >> 20
                ),
            ));
        }
        Ok(())
    }

    fn scope<'s>(&'s self, cols: &'s [Col], row: &'s [Value], outer: Option<&'s Outer>) -> Scope<'s> {
        Scope { outer, catalog: self.catalog.as_deref(), ..Scope::row(cols, row, self.ctx.params, self.ctx.now) }
    }

    /// Runs a whole query: `WITH`, the body, `ORDER BY`, `LIMIT`.
    fn query<'s>(&'s mut self, query: &'s Query, outer: Option<&'s Arc<Outer>>) -> Boxed<'s, Relation> {
        Box::pin(async move {
            // FOR UPDATE/SHARE is accepted as it always was: reads already
            // lock what they read (strict two-phase locking).
            if query.fetch.is_some() {
                return Err(SqlError::unsupported("FETCH in a query"));
            }
            let scoped = self.ctes.len();
            let result = self.query_in_scope(query, outer).await;
            self.ctes.truncate(scoped);
            result
        })
    }

    async fn query_in_scope(&mut self, query: &Query, outer: Option<&Arc<Outer>>) -> Result<Relation, SqlError> {
        if let Some(with) = &query.with {
            if with.recursive {
                return Err(SqlError::unsupported("WITH RECURSIVE"));
            }
            for cte in &with.cte_tables {
                let name = ident_name(&cte.alias.name);
                let node = self.open_node(|| format!("CTE {name}"));
                let relation = self.query(&cte.query, outer).await;
                self.close_node(node, relation.as_ref().map_or(0, |r| r.rows.len()), None);
                let mut relation = relation?;
                rename(&mut relation, &name, &cte.alias)?;
                self.ctes.push((name, Arc::new(relation)));
            }
        }
        let order: Vec<&OrderByExpr> = match &query.order_by {
            Some(order) => match &order.kind {
                OrderByKind::Expressions(list) => list.iter().collect(),
                OrderByKind::All(_) => return Err(SqlError::unsupported("ORDER BY ALL")),
            },
            None => Vec::new(),
        };
        let (limit, offset) = if self.dry { (None, 0) } else { self.limits(query)? };
        if let SetExpr::Select(select) = query.body.as_ref() {
            return self.select(select, &order, limit, offset, outer).await;
        }
        let mark = self.mark();
        let mut relation = self.set_expr(&query.body, outer).await?;
        if !order.is_empty() {
            let node = self.wrap_node(mark, || format!("Sort (by {})", list(order.iter().map(|o| &o.expr))));
            self.close_node(node, relation.rows.len(), None);
            let mut keyed = Vec::with_capacity(relation.rows.len());
            for row in std::mem::take(&mut relation.rows) {
                let keys = order
                    .iter()
                    .map(|o| output_key(&o.expr, &row, &self.scope(&relation.cols, &row, None)))
                    .collect::<Result<Vec<_>, _>>()?;
                keyed.push((row, keys));
            }
            sort(&mut keyed, &order)?;
            relation.rows = keyed.into_iter().map(|(row, _)| row).collect();
        }
        relation.rows = relation.rows.into_iter().skip(offset).take(limit.unwrap_or(usize::MAX)).collect();
        if query.limit_clause.is_some() {
            let node = self.wrap_node(mark, || "Limit".into());
            self.close_node(node, relation.rows.len(), None);
        }
        Ok(relation)
    }

    fn limits(&self, query: &Query) -> Result<(Option<usize>, usize), SqlError> {
        let scope = Scope::constants(self.ctx.params, self.ctx.now);
        let number = |e: &Expr| -> Result<Option<usize>, SqlError> {
            match eval(e, &scope)? {
                Value::Null => Ok(None),
                Value::Int(n) if n >= 0 => Ok(Some(n as usize)),
                other => Err(SqlError::new("2201W", format!("LIMIT/OFFSET must not be negative: {other}"))),
            }
        };
        match &query.limit_clause {
            None => Ok((None, 0)),
            Some(LimitClause::LimitOffset { limit, offset, .. }) => Ok((
                limit.as_ref().map(number).transpose()?.flatten(),
                offset.as_ref().map(|o| number(&o.value)).transpose()?.flatten().unwrap_or(0),
            )),
            Some(LimitClause::OffsetCommaLimit { offset, limit }) => Ok((number(limit)?, number(offset)?.unwrap_or(0))),
        }
    }

    fn set_expr<'s>(&'s mut self, body: &'s SetExpr, outer: Option<&'s Arc<Outer>>) -> Boxed<'s, Relation> {
        Box::pin(async move {
            match body {
                SetExpr::Select(select) => self.select(select, &[], None, 0, outer).await,
                SetExpr::Query(query) => self.query(query, outer).await,
                SetExpr::Values(values) => self.values(values),
                SetExpr::SetOperation { left, op, set_quantifier, right } => {
                    let mark = self.mark();
                    let left = self.set_expr(left, outer).await?;
                    let right = self.set_expr(right, outer).await?;
                    let node = self.wrap_node(mark, || format!("{op} {set_quantifier}").trim().to_string());
                    let result = set_operation(left, *op, *set_quantifier, right)?;
                    self.close_node(node, result.rows.len(), None);
                    Ok(result)
                }
                _ => Err(SqlError::unsupported("this kind of query")),
            }
        })
    }

    fn values(&mut self, values: &sqlparser::ast::Values) -> Result<Relation, SqlError> {
        let width = values.rows.first().map_or(0, |row| row.content.len());
        let cols = (0..width)
            .map(|i| {
                let ty = type_of(&values.rows[0].content[i], &[], &self.param_types);
                Col::new("", &format!("column{}", i + 1), ty)
            })
            .collect();
        let mut relation = Relation { cols, rows: Vec::new() };
        if self.dry {
            return Ok(relation);
        }
        let scope = Scope::constants(self.ctx.params, self.ctx.now);
        for row in &values.rows {
            if row.content.len() != width {
                return Err(SqlError::new("42601", "VALUES lists must all be the same length"));
            }
            relation.rows.push(row.content.iter().map(|e| eval(e, &scope)).collect::<Result<Vec<_>, _>>()?);
        }
        Ok(relation)
    }

    /// The results, for this row, of the subqueries in `subqueries`.
    async fn subqueries(
        &mut self,
        subqueries: &[&Query],
        cols: &[Col],
        row: &[Value],
        outer: Option<&Arc<Outer>>,
    ) -> Result<Subqueries, SqlError> {
        let mut results = Subqueries::new();
        for &query in subqueries {
            let key = subquery_key(query);
            if let Some(rows) = self.uncorrelated.get(&key) {
                results.insert(key, rows.clone());
                continue;
            }
            if !self.correlated.contains(&key) {
                // Run it on its own first: if it needs nothing from outside,
                // its result holds for every row.
                let mark = self.mark();
                match self.traced_subquery(query, None, "InitPlan (runs once)").await {
                    Ok(relation) => {
                        let rows = Arc::new(relation.rows);
                        self.uncorrelated.insert(key, rows.clone());
                        results.insert(key, rows);
                        continue;
                    }
                    Err(e) if matches!(e.code, "42703" | "42P01") => {
                        self.correlated.insert(key);
                        if let Some(trace) = self.trace.as_mut() {
                            trace.lines.truncate(mark.index);
                            trace.subplans.remove(&key);
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            let here = Arc::new(Outer { cols: cols.to_vec(), row: row.to_vec(), outer: outer.cloned() });
            let relation = self.traced_subquery(query, Some(&here), "SubPlan (runs for each row)").await?;
            results.insert(key, Arc::new(relation.rows));
        }
        Ok(results)
    }

    /// Runs a subquery, its plan traced the first time only.
    async fn traced_subquery(
        &mut self,
        query: &Query,
        outer: Option<&Arc<Outer>>,
        label: &str,
    ) -> Result<Relation, SqlError> {
        let key = subquery_key(query);
        let seen = self.trace.as_ref().and_then(|t| t.subplans.get(&key).copied());
        let (node, quiet) = match (self.tracing(), seen) {
            (false, _) => (None, false),
            (true, None) => {
                let node = self.open_node(|| label.to_string());
                if let (Some(trace), Some(node)) = (self.trace.as_mut(), node) {
                    trace.subplans.insert(key, node.index);
                }
                (node, false)
            }
            (true, Some(index)) => {
                let trace = self.trace.as_mut().expect("tracing");
                trace.quiet += 1;
                let node = Node { index, depth: trace.depth, start: self.ctx.txn.monotonic() };
                (Some(node), true)
            }
        };
        let result = self.query(query, outer).await;
        if quiet {
            self.trace.as_mut().expect("tracing").quiet -= 1;
        }
        self.close_node(node, result.as_ref().map_or(0, |r| r.rows.len()), None);
        result
    }

    /// [`keep`](Self::keep) without awaiting, when no subquery must run:
    /// `None` when one must. Row loops call this first, since an `async`
    /// call per row costs more than most filters.
    fn keep_now(
        &self,
        filter: Option<&Expr>,
        subqueries: &[&Query],
        cols: &[Col],
        row: &[Value],
        outer: Option<&Arc<Outer>>,
    ) -> Option<Result<bool, SqlError>> {
        match filter {
            None => Some(Ok(true)),
            Some(filter) if subqueries.is_empty() => {
                Some(eval(filter, &self.scope(cols, row, outer.map(|o| o.as_ref()))).map(|v| v == Value::Bool(true)))
            }
            Some(_) => None,
        }
    }

    /// Whether `filter` holds for `row`.
    async fn keep(
        &mut self,
        filter: Option<&Expr>,
        subqueries: &[&Query],
        cols: &[Col],
        row: &[Value],
        outer: Option<&Arc<Outer>>,
    ) -> Result<bool, SqlError> {
        if let Some(kept) = self.keep_now(filter, subqueries, cols, row, outer) {
            return kept;
        }
        let Some(filter) = filter else { return Ok(true) };
        let results = self.subqueries(subqueries, cols, row, outer).await?;
        let scope = Scope { subqueries: &results, ..self.scope(cols, row, outer.map(|o| o.as_ref())) };
        Ok(eval(filter, &scope)? == Value::Bool(true))
    }

    /// One `SELECT`, with the enclosing query's `ORDER BY` and `LIMIT`
    /// (which may name columns of `FROM` that the select list leaves out).
    async fn select(
        &mut self,
        select: &Select,
        order: &[&OrderByExpr],
        limit: Option<usize>,
        offset: usize,
        outer: Option<&Arc<Outer>>,
    ) -> Result<Relation, SqlError> {
        let distinct = match &select.distinct {
            None | Some(Distinct::All) => false,
            Some(Distinct::Distinct) => true,
            Some(Distinct::On(_)) => return Err(SqlError::unsupported("SELECT DISTINCT ON")),
        };
        let group_by = match &select.group_by {
            GroupByExpr::Expressions(list, modifiers) if modifiers.is_empty() => list.clone(),
            _ => return Err(SqlError::unsupported("GROUP BY ALL / ROLLUP")),
        };
        let filter = select.selection.as_ref();
        let filter_subqueries = subqueries_in(filter);
        let mark = self.mark();

        // FROM and WHERE.
        let (cols, rows) = match select.from.as_slice() {
            [] => {
                let kept = !self.dry && keep!(self, filter, &filter_subqueries, &[], &[], outer);
                (Vec::new(), if kept { vec![Vec::new()] } else { Vec::new() })
            }
            [TableWithJoins { relation: TableFactor::Table { name, alias, args: None, .. }, joins }]
                if joins.is_empty() && self.cte(name).is_none() =>
            {
                let plain = order.is_empty() && !distinct && group_by.is_empty() && !has_aggregates(select);
                let stop = if plain { limit.map(|l| l + offset) } else { None };
                self.scan_table(name, alias.as_ref(), filter, &filter_subqueries, stop, outer).await?
            }
            from => {
                let relation = self.from(from, outer).await?;
                let node = filter.and_then(|f| self.wrap_node(mark, || format!("Filter: {f}")));
                let mut rows = Vec::with_capacity(if filter.is_some() { 0 } else { relation.rows.len() });
                for row in relation.rows {
                    if keep!(self, filter, &filter_subqueries, &relation.cols, &row, outer) {
                        rows.push(row);
                    }
                }
                self.close_node(node, rows.len(), None);
                (relation.cols, rows)
            }
        };

        // The select list.
        let mut items: Vec<(String, Expr)> = Vec::new();
        for item in &select.projection {
            match item {
                SelectItem::Wildcard(_) => {
                    for col in cols.iter().filter(|c| !c.hidden) {
                        items.push((col.name.clone(), column_expr(col)));
                    }
                }
                SelectItem::QualifiedWildcard(kind, _) => {
                    let SelectItemQualifiedWildcardKind::ObjectName(name) = kind else {
                        return Err(SqlError::unsupported("expr.*"));
                    };
                    let table = name.0.last().and_then(|p| p.as_ident()).map(ident_name).unwrap_or_default();
                    let before = items.len();
                    for col in cols.iter().filter(|c| c.table == table) {
                        items.push((col.name.clone(), column_expr(col)));
                    }
                    if items.len() == before {
                        return Err(SqlError::new("42P01", format!("missing FROM-clause entry for table \"{table}\"")));
                    }
                }
                SelectItem::UnnamedExpr(e) => items.push((output_name(e), e.clone())),
                SelectItem::ExprWithAlias { expr, alias } => items.push((ident_name(alias), expr.clone())),
                SelectItem::ExprWithAliases { .. } => return Err(SqlError::unsupported("multiple aliases")),
            }
        }
        let mut aggregates = Vec::new();
        for (_, e) in &items {
            collect_aggregates(e, &mut aggregates);
        }
        if let Some(having) = &select.having {
            collect_aggregates(having, &mut aggregates);
        }
        for o in order {
            collect_aggregates(&o.expr, &mut aggregates);
        }
        let grouped = !aggregates.is_empty() || !group_by.is_empty();
        let mut out_cols = Vec::with_capacity(items.len());
        for (name, e) in &items {
            let ty = match e {
                Expr::Subquery(query) => self.subquery_type(query, &cols, outer).await,
                e => type_of(e, &cols, &self.param_types),
            };
            out_cols.push(Col::new("", name, ty));
        }
        let mut output_exprs: Vec<&Expr> = items.iter().map(|(_, e)| e).collect();
        output_exprs.extend(select.having.iter());
        output_exprs.extend(order.iter().map(|o| &o.expr));
        let output_subqueries: Vec<&Query> = output_exprs.iter().flat_map(|e| subqueries_in(Some(e))).collect();
        let stages = [
            (
                grouped,
                if group_by.is_empty() {
                    "Aggregate".to_string()
                } else {
                    format!("Aggregate (group by {})", list(&group_by))
                },
            ),
            (distinct, "Unique".to_string()),
            (!order.is_empty(), format!("Sort (by {})", list(order.iter().map(|o| &o.expr)))),
            (limit.is_some() || offset > 0, "Limit".to_string()),
        ];
        if self.dry {
            if self.tracing() {
                // EXPLAIN without ANALYZE: show each subquery's plan once.
                let nulls = vec![Value::Null; cols.len()];
                let mut all = filter_subqueries.clone();
                all.extend(&output_subqueries);
                self.subqueries(&all, &cols, &nulls, outer).await?;
                for (applies, text) in stages {
                    if applies {
                        let node = self.wrap_node(mark, || text);
                        self.close_node(node, 0, None);
                    }
                }
            }
            return Ok(Relation { cols: out_cols, rows: Vec::new() });
        }
        let mut out: Vec<(Vec<Value>, Vec<Value>)> = Vec::new();
        let mut seen = BTreeSet::new();
        if grouped {
            let mut groups: BTreeMap<Vec<u8>, (Vec<Value>, Vec<Acc>)> = BTreeMap::new();
            let mut args = Vec::with_capacity(aggregates.len());
            for row in rows {
                self.pace().await;
                let scope = self.scope(&cols, &row, outer.map(|o| o.as_ref()));
                let mut group_key = Vec::new();
                for e in &group_by {
                    encode_key_part(&eval(e, &scope)?, &mut group_key);
                }
                args.clear();
                for f in &aggregates {
                    args.push(single_arg(f)?.map(|a| eval(a, &scope)).transpose()?);
                }
                // Without GROUP BY, every row is in the one group: no key
                // to look up (and with it, no descent to the first group).
                let single = if group_by.is_empty() { groups.first_entry() } else { None };
                let group = match single {
                    Some(first) => first.into_mut(),
                    None => groups.entry(group_key).or_insert_with(|| (row, aggregates.iter().map(Acc::new).collect())),
                };
                let accs = &mut group.1;
                for (acc, arg) in accs.iter_mut().zip(args.drain(..)) {
                    acc.add(arg)?;
                }
            }
            if groups.is_empty() && group_by.is_empty() {
                let accs = aggregates.iter().map(Acc::new).collect();
                groups.insert(Vec::new(), (vec![Value::Null; cols.len()], accs));
            }
            for (first, accs) in groups.into_values() {
                let values: Vec<(String, Value)> =
                    aggregates.iter().zip(&accs).map(|(f, a)| (f.to_string(), a.value())).collect();
                let results = self.subqueries(&output_subqueries, &cols, &first, outer).await?;
                let scope = Scope {
                    aggregates: &values,
                    subqueries: &results,
                    ..self.scope(&cols, &first, outer.map(|o| o.as_ref()))
                };
                if let Some(having) = &select.having {
                    if eval(having, &scope)? != Value::Bool(true) {
                        continue;
                    }
                }
                let projected = project(&items, order, &scope)?;
                if !distinct || seen.insert(row_key(&projected.0)) {
                    self.hold(&projected.0)?;
                    out.push(projected);
                }
            }
        } else {
            if select.having.is_some() {
                return Err(SqlError::new("42803", "HAVING needs GROUP BY or an aggregate"));
            }
            for row in rows {
                self.pace().await;
                let results = self.subqueries(&output_subqueries, &cols, &row, outer).await?;
                let scope = Scope { subqueries: &results, ..self.scope(&cols, &row, outer.map(|o| o.as_ref())) };
                let projected = project(&items, order, &scope)?;
                if !distinct || seen.insert(row_key(&projected.0)) {
                    self.hold(&projected.0)?;
                    out.push(projected);
                }
            }
        }
        sort(&mut out, order)?;
        let rows: Vec<Vec<Value>> =
            out.into_iter().skip(offset).take(limit.unwrap_or(usize::MAX)).map(|(row, _)| row).collect();
        if self.tracing() {
            // The stages ran interleaved; each is shown with the rows it
            // passed on (the aggregate's groups, the distinct rows, …).
            for (applies, text) in stages {
                if applies {
                    let node = self.wrap_node(mark, || text);
                    self.close_node(node, rows.len(), None);
                }
            }
        }
        Ok(Relation { cols: out_cols, rows })
    }

    /// The type of a scalar subquery's column, from a dry run.
    async fn subquery_type(&mut self, query: &Query, cols: &[Col], outer: Option<&Arc<Outer>>) -> SqlType {
        let dry = std::mem::replace(&mut self.dry, true);
        let here = Arc::new(Outer { cols: cols.to_vec(), row: vec![Value::Null; cols.len()], outer: outer.cloned() });
        let found = self.query(query, Some(&here)).await;
        self.dry = dry;
        found.ok().and_then(|r| r.cols.first().map(|c| c.ty)).unwrap_or(SqlType::Text(None))
    }

    fn cte(&self, name: &ObjectName) -> Option<Arc<Relation>> {
        let [part] = name.0.as_slice() else { return None };
        let name = ident_name(part.as_ident()?);
        self.ctes.iter().rev().find(|(n, _)| *n == name).map(|(_, r)| r.clone())
    }

    /// The rows of one table that `filter` keeps: one row when the filter
    /// fixes the primary key, else a scan in batches, which stops once
    /// `stop` rows are kept.
    async fn scan_table(
        &mut self,
        name: &ObjectName,
        alias: Option<&TableAlias>,
        filter: Option<&Expr>,
        filter_subqueries: &[&Query],
        stop: Option<usize>,
        outer: Option<&Arc<Outer>>,
    ) -> Result<(Vec<Col>, Vec<Vec<Value>>), SqlError> {
        // The line's text is set once the scan has chosen its access path.
        let node = self.open_node(String::new);
        if let Some(filter) = filter {
            self.detail(|| format!("Filter: {filter}"));
        }
        if let Some(stop) = stop {
            self.detail(|| format!("Stops after {stop} rows"));
        }
        let mut access = None;
        let result = self.scan_table_rows(name, alias, filter, filter_subqueries, stop, outer, &mut access).await;
        self.close_node(node, result.as_ref().map_or(0, |(_, rows)| rows.len()), access);
        result
    }

    /// [`scan_table`](Self::scan_table)'s work; when tracing, `access`
    /// says how it read the table, for EXPLAIN.
    #[allow(clippy::too_many_arguments)]
    async fn scan_table_rows(
        &mut self,
        name: &ObjectName,
        alias: Option<&TableAlias>,
        filter: Option<&Expr>,
        filter_subqueries: &[&Query],
        stop: Option<usize>,
        outer: Option<&Arc<Outer>>,
        access: &mut Option<String>,
    ) -> Result<(Vec<Col>, Vec<Vec<Value>>), SqlError> {
        let on = |table: &dyn std::fmt::Display| match alias {
            Some(a) => format!("{table} {}", ident_name(&a.name)),
            None => table.to_string(),
        };
        if let Some((_, catalog_table)) = catalog_name(name) {
            if self.tracing() {
                *access = Some(format!("Catalog Scan on {}", on(name)));
            }
            if self.catalog.is_none() {
                self.catalog = Some(Arc::new(Catalog::load(self.ctx.txn).await?));
            }
            let catalog = self.catalog.clone().expect("just loaded");
            let mut relation = catalog.relation(name).expect("a catalog name")?;
            rename(&mut relation, &alias.map_or(catalog_table, |a| ident_name(&a.name)), alias.unwrap_or(&no_alias()))?;
            let mut rows = Vec::new();
            for row in std::mem::take(&mut relation.rows) {
                if !self.dry && keep!(self, filter, filter_subqueries, &relation.cols, &row, outer) {
                    rows.push(row);
                }
            }
            return Ok((relation.cols, rows));
        }
        let table_name = object_name(name)?;
        let (table, schema) = load(self.ctx.txn, &table_name).await?;
        let mut relation = Relation { cols: table_cols(&schema, &table_name), rows: Vec::new() };
        if let Some(alias) = alias {
            rename(&mut relation, &ident_name(&alias.name), alias)?;
        }
        let cols = relation.cols;
        let mut rows = Vec::new();
        // The access path, chosen once. A dry run (Describe, EXPLAIN) has no
        // parameter values: a key it cannot compute makes it a scan.
        let key = point_key(&schema, &cols, filter, self.ctx.params, self.ctx.now);
        let plan = match key {
            Ok(Some(_)) => Ok(None),
            _ => index_plan(&schema, &cols, filter, self.ctx.params, self.ctx.now),
        };
        if self.tracing() {
            let on = on(&table_name);
            *access = Some(match (&key, &plan) {
                (Ok(Some(_)), _) => format!("Index Scan using {table_name}_pkey on {on} (one row by primary key)"),
                (_, Ok(Some(plan))) => format!("Index Scan using {} on {on} ({})", plan.index.name, plan.shape),
                _ => format!("Seq Scan on {on}"),
            });
        }
        if self.dry {
            return Ok((cols, rows));
        }
        if let Some(key) = key? {
            if let Some(bytes) = self.ctx.txn.get(&table, &key).await? {
                let row = decode_row(&table.name, &bytes)?;
                if keep!(self, filter, filter_subqueries, &cols, &row, outer) {
                    rows.push(row);
                }
            }
            return Ok((cols, rows));
        }
        // Which columns to decode is worth working out (it reads the
        // statement's text) only for a scan of many rows.
        if let Some(plan) = plan? {
            let (start, end) = (as_ref_bound(&plan.start), as_ref_bound(&plan.end));
            let pks = index::lookup(self.ctx.txn, plan.index, start, end).await?;
            let wanted = if pks.len() >= SCAN_BATCH { self.wanted(&cols) } else { None };
            for pk in pks {
                let Some(bytes) = self.ctx.txn.get(&table, &pk).await? else {
                    return Err(SqlError::new(
                        "XX001",
                        format!(
                            "index \"{}\" names a row its table does not hold: the index is corrupt",
                            plan.index.name
                        ),
                    ));
                };
                let row = decode_columns(&table.name, &bytes, wanted.as_deref())?;
                if keep!(self, filter, filter_subqueries, &cols, &row, outer) {
                    self.hold(&row)?;
                    rows.push(row);
                    if stop.is_some_and(|n| rows.len() >= n) {
                        break;
                    }
                }
            }
            return Ok((cols, rows));
        }
        let mut after: Option<Vec<u8>> = None;
        let mut wanted = None;
        loop {
            let start = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            let batch = self.ctx.txn.scan_limit(&table, start, Bound::Unbounded, SCAN_BATCH).await?;
            let full = batch.len() == SCAN_BATCH;
            if full && wanted.is_none() {
                wanted = Some(self.wanted(&cols));
            }
            for (key, bytes) in batch {
                let row = decode_columns(&table.name, &bytes, wanted.as_ref().and_then(|w| w.as_deref()))?;
                if keep!(self, filter, filter_subqueries, &cols, &row, outer) {
                    self.hold(&row)?;
                    rows.push(row);
                    if stop.is_some_and(|n| rows.len() >= n) {
                        return Ok((cols, rows));
                    }
                }
                after = Some(key);
            }
            if !full {
                return Ok((cols, rows));
            }
        }
    }

    /// Every row of a table, or of a `WITH` relation by that name.
    async fn table_factor(&mut self, factor: &TableFactor, outer: Option<&Arc<Outer>>) -> Result<Relation, SqlError> {
        match factor {
            TableFactor::Table { name, alias, args: None, .. } => {
                let mut relation = match self.cte(name) {
                    Some(cte) => {
                        let node = self.open_node(|| format!("CTE Scan on {name}"));
                        self.close_node(node, cte.rows.len(), None);
                        let mut relation = cte.as_ref().clone();
                        for col in &mut relation.cols {
                            col.table = ident_name(name.0[0].as_ident().expect("a CTE name is an identifier"));
                        }
                        relation
                    }
                    None => {
                        let (cols, rows) = self.scan_table(name, alias.as_ref(), None, &[], None, outer).await?;
                        Relation { cols, rows }
                    }
                };
                if let Some(alias) = alias {
                    rename(&mut relation, &ident_name(&alias.name), alias)?;
                }
                Ok(relation)
            }
            TableFactor::Derived { lateral: false, subquery, alias, .. } => {
                let label = alias.as_ref().map(|a| ident_name(&a.name)).unwrap_or_default();
                let node = self.open_node(|| format!("Subquery Scan on {label}"));
                let relation = self.query(subquery, outer).await;
                self.close_node(node, relation.as_ref().map_or(0, |r| r.rows.len()), None);
                let mut relation = relation?;
                match alias {
                    Some(alias) => rename(&mut relation, &ident_name(&alias.name), alias)?,
                    None => return Err(SqlError::syntax("a subquery in FROM must have an alias")),
                }
                Ok(relation)
            }
            TableFactor::NestedJoin { table_with_joins, alias } => {
                let mut relation = self.from(std::slice::from_ref(table_with_joins), outer).await?;
                if let Some(alias) = alias {
                    rename(&mut relation, &ident_name(&alias.name), alias)?;
                }
                Ok(relation)
            }
            TableFactor::Table { name, alias, args: Some(args), .. } => {
                let node = self.open_node(|| format!("Function Scan on {name}"));
                let relation = self.table_function(name, &args.args, outer);
                self.close_node(node, relation.as_ref().map_or(0, |r| r.rows.len()), None);
                let mut relation = relation?;
                if let Some(alias) = alias {
                    let table = ident_name(&alias.name);
                    rename(&mut relation, &table, alias)?;
                    // As in PostgreSQL, a function returning one column
                    // names it after the alias (`generate_series(1, 3) AS g`
                    // gives `g`), unless the alias names its columns.
                    if alias.columns.is_empty() {
                        relation.cols[0].name = table;
                    }
                }
                Ok(relation)
            }
            other => Err(SqlError::unsupported(&format!("`{other}` in FROM"))),
        }
    }

    /// `unnest(array)` and `generate_series(from, to[, step])` in `FROM`.
    fn table_function(
        &self,
        name: &ObjectName,
        args: &[sqlparser::ast::FunctionArg],
        outer: Option<&Arc<Outer>>,
    ) -> Result<Relation, SqlError> {
        let function = name.to_string().to_lowercase();
        let function = function.strip_prefix("pg_catalog.").unwrap_or(&function).to_string();
        let scope = self.scope(&[], &[], outer.map(|o| o.as_ref()));
        let values = args
            .iter()
            .map(|arg| match arg {
                sqlparser::ast::FunctionArg::Unnamed(sqlparser::ast::FunctionArgExpr::Expr(e)) => eval(e, &scope),
                other => Err(SqlError::unsupported(&format!("the argument {other} of {function}"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (ty, rows) = match (function.as_str(), values.as_slice()) {
            ("unnest", [array]) => {
                let rows = match array {
                    Value::Null => Vec::new(),
                    v => {
                        let text = v.to_string();
                        let inner = text.trim().trim_start_matches('{').trim_end_matches('}');
                        inner
                            .split(',')
                            .filter(|s| !s.is_empty())
                            .map(|s| vec![Value::Text(s.trim().to_string())])
                            .collect()
                    }
                };
                (SqlType::Text(None), rows)
            }
            ("generate_series", [from, to, rest @ ..]) if rest.len() <= 1 => {
                let step = match rest.first() {
                    Some(Value::Int(0)) => return Err(SqlError::new("22023", "step size cannot equal zero")),
                    Some(Value::Int(step)) => *step,
                    None => 1,
                    Some(other) => return Err(SqlError::new("42883", format!("generate_series step {other:?}"))),
                };
                let rows = match (from, to) {
                    (Value::Int(from), Value::Int(to)) => {
                        let count = if step > 0 { (to - from) / step + 1 } else { (from - to) / -step + 1 };
                        if count > 100_000_000 {
                            return Err(SqlError::new("54000", "generate_series would return too many rows"));
                        }
                        (0..count.max(0)).map(|i| vec![Value::Int(from + i * step)]).collect()
                    }
                    (Value::Null, _) | (_, Value::Null) => Vec::new(),
                    _ => return Err(SqlError::new("42883", "generate_series takes integers")),
                };
                (SqlType::BigInt, rows)
            }
            _ => return Err(SqlError::unsupported(&format!("the function {function}() in FROM"))),
        };
        Ok(Relation { cols: vec![Col::new(&function, &function, ty)], rows })
    }

    /// The relation a `FROM` list makes: each item's joins in order, and
    /// the items crossed.
    fn from<'s>(&'s mut self, from: &'s [TableWithJoins], outer: Option<&'s Arc<Outer>>) -> Boxed<'s, Relation> {
        Box::pin(async move {
            let mut result: Option<Relation> = None;
            let first = self.mark();
            for item in from {
                let mark = self.mark();
                let mut relation = self.table_factor(&item.relation, outer).await?;
                for join in &item.joins {
                    let node = self.wrap_node(mark, String::new);
                    let (joined, how) = self.join(relation, join, outer).await?;
                    self.close_node(node, joined.rows.len(), Some(how));
                    relation = joined;
                }
                result = Some(match result {
                    None => relation,
                    Some(left) => {
                        let node = self.wrap_node(first, || "Nested Loop (cross join)".into());
                        let crossed = self.combine(left, relation, JoinKind::Inner, None, None, outer).await?;
                        self.close_node(node, crossed.rows.len(), None);
                        crossed
                    }
                });
            }
            Ok(result.unwrap_or_default())
        })
    }

    async fn join(
        &mut self,
        left: Relation,
        join: &sqlparser::ast::Join,
        outer: Option<&Arc<Outer>>,
    ) -> Result<(Relation, String), SqlError> {
        let (kind, constraint) = match &join.join_operator {
            JoinOperator::Join(c) | JoinOperator::Inner(c) => (JoinKind::Inner, c),
            JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (JoinKind::Left, c),
            JoinOperator::Right(c) | JoinOperator::RightOuter(c) => (JoinKind::Right, c),
            JoinOperator::FullOuter(c) => (JoinKind::Full, c),
            JoinOperator::CrossJoin(c) => (JoinKind::Inner, c),
            other => return Err(SqlError::unsupported(&format!("the join `{other:?}`"))),
        };
        let condition = match constraint {
            JoinConstraint::On(e) => Some(e.clone()),
            JoinConstraint::None => None,
            JoinConstraint::Using(names) => {
                let names = names.iter().map(object_name).collect::<Result<Vec<_>, _>>()?;
                let right = self.table_factor(&join.relation, outer).await?;
                let joined = self.join_using(left, right, kind, &names, outer).await?;
                return Ok((joined, format!("Hash {}Join (USING {})", kind.label(), names.join(", "))));
            }
            JoinConstraint::Natural => {
                let right = self.table_factor(&join.relation, outer).await?;
                let names: Vec<String> = left
                    .cols
                    .iter()
                    .filter(|l| !l.hidden && right.cols.iter().any(|r| !r.hidden && r.name == l.name))
                    .map(|c| c.name.clone())
                    .collect();
                let joined = self.join_using(left, right, kind, &names, outer).await?;
                return Ok((joined, format!("Hash {}Join (NATURAL: {})", kind.label(), names.join(", "))));
            }
            JoinConstraint::UsingAlias(..) => return Err(SqlError::unsupported("USING … AS")),
        };
        // An index lookup: the inner side is a table whose primary key the
        // condition fixes from the outer row.
        if let (JoinKind::Inner | JoinKind::Left, Some(on), TableFactor::Table { name, alias, args: None, .. }) =
            (kind, &condition, &join.relation)
        {
            if self.cte(name).is_none() {
                if let Some((relation, using)) = self.index_join(&left, name, alias.as_ref(), on, kind, outer).await? {
                    self.note(|| format!("Join Filter: {on}"));
                    let how = format!("Index Nested Loop {}Join using {using} on {name}", kind.label());
                    return Ok((relation, how));
                }
            }
        }
        let right = self.table_factor(&join.relation, outer).await?;
        self.join_relations(left, right, kind, condition.as_ref(), outer).await
    }

    /// `USING (names)`: the named columns once, first (for an outer join,
    /// whichever side has them), then both sides' columns, their copies of
    /// the named columns hidden.
    async fn join_using(
        &mut self,
        left: Relation,
        right: Relation,
        kind: JoinKind,
        names: &[String],
        outer: Option<&Arc<Outer>>,
    ) -> Result<Relation, SqlError> {
        let find = |cols: &[Col], name: &str, side: &str| {
            let found: Vec<usize> =
                cols.iter().enumerate().filter(|(_, c)| !c.hidden && c.name == name).map(|(i, _)| i).collect();
            match found.as_slice() {
                [i] => Ok(*i),
                [] => Err(SqlError::new(
                    "42703",
                    format!("column \"{name}\" specified in USING clause does not exist in {side} table"),
                )),
                _ => Err(SqlError::new(
                    "42702",
                    format!("common column name \"{name}\" appears more than once in {side} table"),
                )),
            }
        };
        let pairs = names
            .iter()
            .map(|name| Ok((find(&left.cols, name, "left")?, find(&right.cols, name, "right")?)))
            .collect::<Result<Vec<_>, SqlError>>()?;
        let width = left.cols.len();
        let left_keys: Vec<KeyPart> = pairs.iter().map(|&(l, _)| KeyPart::Column(l)).collect();
        let right_keys: Vec<KeyPart> = pairs.iter().map(|&(_, r)| KeyPart::Column(r)).collect();
        let mut joined = self.combine(left, right, kind, Some((&left_keys, &right_keys)), None, outer).await?;
        let mut cols: Vec<Col> =
            pairs.iter().map(|&(l, _)| Col { table: String::new(), ..joined.cols[l].clone() }).collect();
        for &(l, r) in &pairs {
            joined.cols[l].hidden = true;
            joined.cols[width + r].hidden = true;
        }
        for row in &mut joined.rows {
            let merged: Vec<Value> = pairs
                .iter()
                .map(|&(l, r)| if row[l].is_null() { row[width + r].clone() } else { row[l].clone() })
                .collect();
            row.splice(0..0, merged);
        }
        cols.append(&mut joined.cols);
        joined.cols = cols;
        Ok(joined)
    }

    /// Joins two relations on `condition`: a hash join on its equalities
    /// between one side and the other, checking the rest on each pair; a
    /// nested loop if it has none.
    async fn join_relations(
        &mut self,
        left: Relation,
        right: Relation,
        kind: JoinKind,
        condition: Option<&Expr>,
        outer: Option<&Arc<Outer>>,
    ) -> Result<(Relation, String), SqlError> {
        let nested = format!("Nested Loop {}Join", kind.label());
        let Some(condition) = condition else {
            return Ok((self.combine(left, right, kind, None, None, outer).await?, nested));
        };
        let mut conjuncts = Vec::new();
        split_and(condition, &mut conjuncts);
        let (mut left_keys, mut right_keys, mut rest) = (Vec::new(), Vec::new(), Vec::new());
        let mut hash_cond = Vec::new();
        for c in conjuncts {
            if let Expr::BinaryOp { left: a, op: BinaryOperator::Eq, right: b } = c {
                let (l, r) = if refers_only(a, &left.cols, &right.cols) && refers_only(b, &right.cols, &left.cols) {
                    (a, b)
                } else if refers_only(b, &left.cols, &right.cols) && refers_only(a, &right.cols, &left.cols) {
                    (b, a)
                } else {
                    rest.push(c.clone());
                    continue;
                };
                left_keys.push(KeyPart::of(l, &left.cols));
                right_keys.push(KeyPart::of(r, &right.cols));
                hash_cond.push(format!("{l} = {r}"));
                continue;
            }
            rest.push(c.clone());
        }
        let residual = rest.into_iter().reduce(|a, b| Expr::BinaryOp {
            left: Box::new(a),
            op: BinaryOperator::And,
            right: Box::new(b),
        });
        if left_keys.is_empty() {
            self.note(|| format!("Join Filter: {condition}"));
            return Ok((self.combine(left, right, kind, None, Some(condition), outer).await?, nested));
        }
        self.note(|| format!("Hash Cond: {}", hash_cond.join(" AND ")));
        if let Some(residual) = &residual {
            self.note(|| format!("Join Filter: {residual}"));
        }
        let joined = self.combine(left, right, kind, Some((&left_keys, &right_keys)), residual.as_ref(), outer).await?;
        Ok((joined, format!("Hash {}Join", kind.label())))
    }

    /// The pairs of rows that match, and for an outer join the rows without
    /// a partner, padded with NULLs. With `keys`, the right side is hashed
    /// on its key and each left row meets only the rows with its key (a
    /// NULL in a key matches nothing); without, every pair is tried.
    /// `residual` must then hold for the pair.
    async fn combine(
        &mut self,
        left: Relation,
        right: Relation,
        kind: JoinKind,
        keys: Option<(&[KeyPart<'_>], &[KeyPart<'_>])>,
        residual: Option<&Expr>,
        outer: Option<&Arc<Outer>>,
    ) -> Result<Relation, SqlError> {
        let cols: Vec<Col> = left.cols.iter().chain(&right.cols).cloned().collect();
        let residual_subqueries = subqueries_in(residual);
        let outer_row = outer.map(|o| o.as_ref());
        // Each right row's successor among the rows a left row may match:
        // all rows in order without keys; with keys, the next row with the
        // same key, each key's first row in `first` (chains, so that a key
        // costs no list of its own).
        let mut next: Vec<usize> = (1..=right.rows.len()).collect();
        self.memory += 8 * next.len();
        let mut first = JoinTable::default();
        let mut key = Vec::new();
        if let Some((_, right_keys)) = keys {
            for (i, row) in right.rows.iter().enumerate().rev() {
                let scope = self.scope(&right.cols, row, outer_row);
                next[i] = NO_ROW;
                if let Some(key) = join_key(right_keys, &scope, &mut key)? {
                    match first.push(key, i, i + 1) {
                        Some(head) => next[i] = head,
                        None => self.memory += key.size() + 32,
                    }
                }
            }
        }
        let mut right_matched = vec![false; right.rows.len()];
        let mut rows = Vec::with_capacity(left.rows.len());
        for left_row in &left.rows {
            let mut candidate = match keys {
                None if right.rows.is_empty() => NO_ROW,
                None => 0,
                Some((left_keys, _)) => {
                    let scope = self.scope(&left.cols, left_row, outer_row);
                    match join_key(left_keys, &scope, &mut key)? {
                        Some(key) => first.get(key).unwrap_or(NO_ROW),
                        None => NO_ROW,
                    }
                }
            };
            let mut matched = false;
            while candidate < right.rows.len() {
                let i = candidate;
                candidate = next[i];
                let row: Vec<Value> = left_row.iter().chain(&right.rows[i]).cloned().collect();
                if keep!(self, residual, &residual_subqueries, &cols, &row, outer) {
                    matched = true;
                    right_matched[i] = true;
                    self.hold(&row)?;
                    rows.push(row);
                }
            }
            if !matched && matches!(kind, JoinKind::Left | JoinKind::Full) {
                let row: Vec<Value> =
                    left_row.iter().cloned().chain(std::iter::repeat_n(Value::Null, right.cols.len())).collect();
                self.hold(&row)?;
                rows.push(row);
            }
        }
        if matches!(kind, JoinKind::Right | JoinKind::Full) {
            for (right_row, _) in right.rows.iter().zip(&right_matched).filter(|(_, m)| !**m) {
                let row: Vec<Value> =
                    std::iter::repeat_n(Value::Null, left.cols.len()).chain(right_row.iter().cloned()).collect();
                self.hold(&row)?;
                rows.push(row);
            }
        }
        Ok(Relation { cols, rows })
    }

    /// Joins `left` to the table `name` by looking up each left row's
    /// partner by primary key, when `on` fixes every key column from the
    /// left side and the left side is small enough that lookups beat a
    /// scan. `None` when it does not apply.
    async fn index_join(
        &mut self,
        left: &Relation,
        name: &ObjectName,
        alias: Option<&TableAlias>,
        on: &Expr,
        kind: JoinKind,
        outer: Option<&Arc<Outer>>,
    ) -> Result<Option<(Relation, String)>, SqlError> {
        if left.rows.len() > INDEX_JOIN_MAX_OUTER || catalog_name(name).is_some() {
            return Ok(None);
        }
        let table_name = object_name(name)?;
        let (table, schema) = load(self.ctx.txn, &table_name).await?;
        let mut right = Relation { cols: table_cols(&schema, &table_name), rows: Vec::new() };
        if let Some(alias) = alias {
            rename(&mut right, &ident_name(&alias.name), alias)?;
        }
        let cols: Vec<Col> = left.cols.iter().chain(&right.cols).cloned().collect();
        let wanted = self.wanted(&right.cols);
        let mut conjuncts = Vec::new();
        split_and(on, &mut conjuncts);
        // The left-side expression each of `columns` equals, if all have one.
        let fixed = |columns: &[usize]| -> Option<Vec<(&Expr, SqlType)>> {
            columns
                .iter()
                .map(|&column| {
                    let at = left.cols.len() + column;
                    let e = conjuncts.iter().find_map(|c| match c {
                        Expr::BinaryOp { left: a, op: BinaryOperator::Eq, right: b } => {
                            let is_key = |e: &Expr| matches!(resolve(&cols, e), Ok(Some(i)) if i == at);
                            if is_key(a) && refers_only(b, &left.cols, &right.cols) {
                                Some(b.as_ref())
                            } else if is_key(b) && refers_only(a, &left.cols, &right.cols) {
                                Some(a.as_ref())
                            } else {
                                None
                            }
                        }
                        _ => None,
                    })?;
                    Some((e, schema.columns[column].ty))
                })
                .collect()
        };
        // The primary key if the condition fixes it, else a secondary index.
        let (via, key_exprs) = match (!schema.primary_key.is_empty()).then(|| fixed(&schema.primary_key)).flatten() {
            Some(exprs) => (None, exprs),
            None => match schema.indexes.iter().find_map(|index| Some((index, fixed(&index.columns)?))) {
                Some((index, exprs)) => (Some(index), exprs),
                None => return Ok(None),
            },
        };
        let mut rows = Vec::new();
        let subqueries = subqueries_in(Some(on));
        let outer_row = outer.map(|o| o.as_ref());
        for left_row in &left.rows {
            let mut key = Some(Vec::new());
            for &(e, ty) in &key_exprs {
                let value = eval(e, &self.scope(&left.cols, left_row, outer_row))?;
                match (ty.coerce(value), key.as_mut()) {
                    (Ok(v), Some(k)) if !v.is_null() => encode_key_part(&v, k),
                    _ => key = None,
                }
            }
            let pks = match (key, via) {
                (None, _) => Vec::new(),
                (Some(key), None) => vec![key],
                (Some(prefix), Some(index)) => {
                    let end = prefix_end(&prefix);
                    let end = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
                    index::lookup(self.ctx.txn, index, Bound::Included(&prefix), end).await?
                }
            };
            let mut matched = false;
            for pk in pks {
                let Some(bytes) = self.ctx.txn.get(&table, &pk).await? else { continue };
                let row: Vec<Value> =
                    left_row.iter().cloned().chain(decode_columns(&table.name, &bytes, wanted.as_deref())?).collect();
                if keep!(self, Some(on), &subqueries, &cols, &row, outer) {
                    matched = true;
                    self.hold(&row)?;
                    rows.push(row);
                }
            }
            if !matched && kind == JoinKind::Left {
                rows.push(left_row.iter().cloned().chain(std::iter::repeat_n(Value::Null, right.cols.len())).collect());
            }
        }
        let using = via.map_or_else(|| format!("{table_name}_pkey"), |index| index.name.clone());
        Ok(Some((Relation { cols, rows }, using)))
    }
}

/// Outer sides up to this many rows join a table by primary-key lookups;
/// larger ones hash it (a lookup costs a descent and a row lock).
const INDEX_JOIN_MAX_OUTER: usize = 1_000;

/// One row's hash join key.
#[derive(Clone, Copy)]
enum JoinKey<'k> {
    /// A key of one integer (or timestamp, or integral float): the common
    /// case, kept apart so that its table holds 16-byte entries and compares
    /// machine words.
    Int(i64),
    /// Any other key, encoded as an index key is.
    Encoded(&'k [u8]),
}

impl JoinKey<'_> {
    /// The bytes the key holds, for the query's memory budget.
    fn size(&self) -> usize {
        match self {
            JoinKey::Int(_) => 8,
            JoinKey::Encoded(bytes) => bytes.len(),
        }
    }
}

/// An encoded join key in the table: up to 16 bytes stay inline, so probing
/// does not chase a pointer per entry.
type EncodedKey = smallvec::SmallVec<[u8; 16]>;

/// A hash join's table: the first row of the build side with each key (the
/// rest are chained). Its hasher has fixed keys, so even its order is the
/// same in every run; and it is only probed, never iterated.
#[derive(Default)]
struct JoinTable {
    ints: WordMap<i64>,
    encoded: WordMap<EncodedKey>,
}

#[allow(clippy::disallowed_types)]
type WordMap<K> = std::collections::HashMap<K, usize, BuildHasherDefault<WordHash>>;

impl JoinTable {
    /// Makes `row` the first row with `key` and returns the row it displaced,
    /// or None if the key is new. `left` is how many rows may still come, so
    /// that a map is sized once, on its first key.
    fn push(&mut self, key: JoinKey, row: usize, left: usize) -> Option<usize> {
        fn push_in<K: std::hash::Hash + Eq>(map: &mut WordMap<K>, key: K, row: usize, left: usize) -> Option<usize> {
            if map.is_empty() {
                map.reserve(left);
            }
            map.insert(key, row)
        }
        match key {
            JoinKey::Int(n) => push_in(&mut self.ints, n, row, left),
            JoinKey::Encoded(bytes) => push_in(&mut self.encoded, EncodedKey::from_slice(bytes), row, left),
        }
    }

    /// The first row with `key`.
    fn get(&self, key: JoinKey) -> Option<usize> {
        match key {
            JoinKey::Int(n) => self.ints.get(&n),
            JoinKey::Encoded(bytes) => self.encoded.get(bytes),
        }
        .copied()
    }
}

/// The end of a chain of join candidates.
const NO_ROW: usize = usize::MAX;

/// A multiply-xorshift hash over eight bytes at a time, with murmur3's
/// finalizer: fast, with no keys, so the same in every run. Join keys are the
/// statement's own data, hashed for one statement.
#[derive(Default)]
struct WordHash(u64);

impl WordHash {
    fn add(&mut self, word: u64) {
        // The shift carries the high bits' differences down before the
        // next word lands on them.
        let h = (self.0 ^ word).wrapping_mul(0xf135_7aea_2e62_a9c5);
        self.0 = h ^ (h >> 32);
    }
}

impl Hasher for WordHash {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.add(u64::from_le_bytes(word.try_into().expect("eight bytes")));
        }
        let mut last = [0u8; 8];
        let rest = words.remainder();
        last[..rest.len()].copy_from_slice(rest);
        self.add(u64::from_le_bytes(last) ^ ((rest.len() as u64) << 59));
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn write_i64(&mut self, n: i64) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        // A multiply carries a difference only upwards, and hashbrown picks
        // buckets by the low bits: murmur3's finalizer mixes them down.
        let mut h = self.0;
        h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h = (h ^ (h >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// One part of a hash join's key: a column by position or an expression.
enum KeyPart<'e> {
    Column(usize),
    Expr(&'e Expr),
}

impl<'e> KeyPart<'e> {
    /// A plain column reference by its position (no name lookup per row);
    /// anything else as an expression.
    fn of(e: &'e Expr, cols: &[Col]) -> KeyPart<'e> {
        match resolve(cols, e) {
            Ok(Some(i)) if matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) => KeyPart::Column(i),
            _ => KeyPart::Expr(e),
        }
    }
}

impl JoinKind {
    /// The word EXPLAIN puts before "Join".
    fn label(self) -> &'static str {
        match self {
            JoinKind::Inner => "",
            JoinKind::Left => "Left ",
            JoinKind::Right => "Right ",
            JoinKind::Full => "Full ",
        }
    }
}

/// A row's join key, encoded into `buffer` unless it is one integer; None
/// if a part is NULL (it equals nothing).
fn join_key<'k>(parts: &[KeyPart], scope: &Scope, buffer: &'k mut Vec<u8>) -> Result<Option<JoinKey<'k>>, SqlError> {
    buffer.clear();
    for part in parts {
        let value = match part {
            KeyPart::Column(i) => Cow::Borrowed(&scope.row[*i]),
            KeyPart::Expr(e) => Cow::Owned(eval(e, scope)?),
        };
        let integer = match *value {
            Value::Null => return Ok(None),
            // A timestamp is its microseconds, as in an index key; and
            // 1 = 1.0, so integral floats hash as integers.
            Value::Int(n) | Value::Timestamp(n) => Some(n),
            Value::Float(x) if x.fract() == 0.0 && x.abs() < 9e15 => Some(x as i64),
            _ => None,
        };
        match integer {
            Some(n) if parts.len() == 1 => return Ok(Some(JoinKey::Int(n))),
            Some(n) => encode_key_part(&Value::Int(n), buffer),
            None => encode_key_part(&value, buffer),
        }
    }
    Ok(Some(JoinKey::Encoded(buffer)))
}

/// Whether `e` reads columns of `cols` only (at least one), none that
/// `other` also names, and no subquery.
fn refers_only(e: &Expr, cols: &[Col], other: &[Col]) -> bool {
    let mut columns = 0;
    let mut ok = true;
    expr::visit(e, &mut |node| match node {
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) => {
            columns += 1;
            ok &= matches!(resolve(cols, node), Ok(Some(_))) && matches!(resolve(other, node), Ok(None));
        }
        Expr::Subquery(_) | Expr::Exists { .. } | Expr::In { target: sqlparser::ast::InTarget::Subquery(_), .. } => {
            ok = false
        }
        _ => {}
    });
    ok && columns > 0
}

/// Expressions as a comma-separated list, for EXPLAIN.
fn list<'e>(exprs: impl IntoIterator<Item = &'e Expr>) -> String {
    exprs.into_iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// The subqueries in `e`.
fn subqueries_in(e: Option<&Expr>) -> Vec<&Query> {
    let mut found = Vec::new();
    if let Some(e) = e {
        for_each_subquery(e, &mut |q| found.push(q));
    }
    found
}

fn has_aggregates(select: &Select) -> bool {
    let mut found = Vec::new();
    for item in &select.projection {
        if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item {
            collect_aggregates(e, &mut found);
        }
    }
    select.having.is_some() || !found.is_empty()
}

/// A table's columns, qualified by its name.
pub(super) fn table_cols(schema: &Schema, table: &str) -> Vec<Col> {
    schema.columns.iter().map(|c| Col::new(table, &c.name, c.ty)).collect()
}

/// An alias without column names.
fn no_alias() -> TableAlias {
    TableAlias { explicit: false, name: Ident::new(""), columns: Vec::new(), at: None }
}

/// Gives a relation a table name and, from `alias`'s column list, new
/// names for its first columns.
fn rename(relation: &mut Relation, table: &str, alias: &TableAlias) -> Result<(), SqlError> {
    if alias.columns.len() > relation.cols.len() {
        return Err(SqlError::new(
            "42P10",
            format!(
                "table \"{table}\" has {} columns available but {} columns specified",
                relation.cols.len(),
                alias.columns.len()
            ),
        ));
    }
    for col in &mut relation.cols {
        col.table = table.to_string();
    }
    for (col, name) in relation.cols.iter_mut().zip(&alias.columns) {
        col.name = ident_name(&name.name);
    }
    Ok(())
}

/// An expression that reads `col` (qualified, so that it is unambiguous).
fn column_expr(col: &Col) -> Expr {
    if col.table.is_empty() {
        Expr::Identifier(Ident::with_quote('"', col.name.clone()))
    } else {
        Expr::CompoundIdentifier(vec![
            Ident::with_quote('"', col.table.clone()),
            Ident::with_quote('"', col.name.clone()),
        ])
    }
}

/// The encoded values of a row: equal rows, equal keys (for DISTINCT and
/// set operations).
fn row_key(row: &[Value]) -> Vec<u8> {
    let mut key = Vec::new();
    for v in row {
        encode_key_part(v, &mut key);
    }
    key
}

fn set_operation(
    left: Relation,
    op: SetOperator,
    quantifier: SetQuantifier,
    right: Relation,
) -> Result<Relation, SqlError> {
    let name = match op {
        SetOperator::Union => "UNION",
        SetOperator::Intersect => "INTERSECT",
        SetOperator::Except | SetOperator::Minus => "EXCEPT",
    };
    if left.cols.len() != right.cols.len() {
        return Err(SqlError::new("42601", format!("each {name} query must have the same number of columns")));
    }
    let all = match quantifier {
        SetQuantifier::All => true,
        SetQuantifier::Distinct | SetQuantifier::None => false,
        _ => return Err(SqlError::unsupported(&format!("{name} BY NAME"))),
    };
    let cols = left.cols.into_iter().map(|c| Col { table: String::new(), hidden: false, ..c }).collect();
    let mut counts: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    let rows = match op {
        SetOperator::Union => left.rows.into_iter().chain(right.rows).collect(),
        _ => {
            for row in &right.rows {
                *counts.entry(row_key(row)).or_default() += 1;
            }
            let intersect = op == SetOperator::Intersect;
            let mut rows = Vec::new();
            for row in left.rows {
                let count = counts.entry(row_key(&row)).or_default();
                let in_right = *count > 0;
                if all && in_right {
                    *count -= 1;
                }
                if in_right == intersect {
                    rows.push(row);
                }
            }
            rows
        }
    };
    let rows = if all {
        rows
    } else {
        let mut seen = BTreeSet::new();
        rows.into_iter().filter(|row| seen.insert(row_key(row))).collect()
    };
    Ok(Relation { cols, rows })
}

/// A select list item's values and its `ORDER BY` keys.
fn project(
    items: &[(String, Expr)],
    order: &[&OrderByExpr],
    scope: &Scope,
) -> Result<(Vec<Value>, Vec<Value>), SqlError> {
    let values = items.iter().map(|(_, e)| eval(e, scope)).collect::<Result<Vec<_>, _>>()?;
    let keys = order.iter().map(|o| sort_key(&o.expr, items, &values, scope)).collect::<Result<Vec<_>, _>>()?;
    Ok((values, keys))
}

/// An `ORDER BY` key: a select list position, an output column's name, or
/// an expression over the row.
fn sort_key(e: &Expr, items: &[(String, Expr)], values: &[Value], scope: &Scope) -> Result<Value, SqlError> {
    if let Some(i) = position(e)? {
        return values
            .get(i.wrapping_sub(1))
            .cloned()
            .ok_or_else(|| SqlError::new("42P10", format!("ORDER BY position {i} is not in select list")));
    }
    if let Expr::Identifier(ident) = e {
        let name = ident_name(ident);
        if let Some(i) = items.iter().position(|(n, _)| *n == name) {
            return Ok(values[i].clone());
        }
    }
    eval(e, scope)
}

/// An `ORDER BY` key of a set operation's output row.
fn output_key(e: &Expr, row: &[Value], scope: &Scope) -> Result<Value, SqlError> {
    if let Some(i) = position(e)? {
        return row
            .get(i.wrapping_sub(1))
            .cloned()
            .ok_or_else(|| SqlError::new("42P10", format!("ORDER BY position {i} is not in select list")));
    }
    eval(e, scope)
}

fn position(e: &Expr) -> Result<Option<usize>, SqlError> {
    if let Expr::Value(v) = e {
        if let AstValue::Number(n, _) = &v.value {
            return n.parse().map(Some).map_err(|_| SqlError::syntax(format!("bad ORDER BY position {n}")));
        }
    }
    Ok(None)
}

/// Sorts rows by their keys, each ascending or descending; NULLs sort as
/// larger than any value (last ascending, first descending), as in
/// PostgreSQL, unless `NULLS FIRST`/`LAST` says otherwise.
fn sort<R>(rows: &mut [(R, Vec<Value>)], order: &[&OrderByExpr]) -> Result<(), SqlError> {
    if order.is_empty() {
        return Ok(());
    }
    let mut failure = None;
    rows.sort_by(|(_, a), (_, b)| {
        for ((x, y), o) in a.iter().zip(b).zip(order) {
            let descending = o.options.sort == Some(sqlparser::ast::OrderBySort::Desc);
            let nulls_first = o.options.nulls_first.unwrap_or(descending);
            let ordering = match (x.is_null(), y.is_null()) {
                (true, true) => std::cmp::Ordering::Equal,
                (true, false) => {
                    return if nulls_first { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater }
                }
                (false, true) => {
                    return if nulls_first { std::cmp::Ordering::Greater } else { std::cmp::Ordering::Less }
                }
                (false, false) => x.compare(y).unwrap_or_else(|| {
                    failure = Some(SqlError::new("42883", "ORDER BY values of different types"));
                    std::cmp::Ordering::Equal
                }),
            };
            let ordering = if descending { ordering.reverse() } else { ordering };
            if ordering.is_ne() {
                return ordering;
            }
        }
        std::cmp::Ordering::Equal
    });
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A scan of a secondary index: its key range and, for EXPLAIN, its shape.
struct IndexPlan<'s> {
    index: &'s IndexDef,
    start: Bound<Vec<u8>>,
    end: Bound<Vec<u8>>,
    shape: String,
}

fn as_ref_bound(bound: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(key) => Bound::Included(key),
        Bound::Excluded(key) => Bound::Excluded(key),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The best secondary index for `filter`: the one whose leading columns it
/// fixes with `=` to constants the most, then a range (`<`, `<=`, `>`,
/// `>=`, `BETWEEN`) on the next column. `None` if no index has either. The
/// filter is still applied to every row the index yields.
fn index_plan<'s>(
    schema: &'s Schema,
    cols: &[Col],
    filter: Option<&Expr>,
    params: &[Value],
    now: i64,
) -> Result<Option<IndexPlan<'s>>, SqlError> {
    let Some(filter) = filter else { return Ok(None) };
    if schema.indexes.is_empty() {
        return Ok(None);
    }
    let mut conjuncts = Vec::new();
    split_and(filter, &mut conjuncts);
    let scope = Scope::constants(params, now);
    // The constants `column OP constant` conjuncts compare the column with
    // (the operator turned round if the constant comes first), coerced to
    // the column's type.
    let comparisons = |column: usize| -> Result<Vec<(BinaryOperator, Value)>, SqlError> {
        let is_column = |e: &Expr| matches!(resolve(cols, e), Ok(Some(i)) if i == column);
        let ty = schema.columns[column].ty;
        let mut found = Vec::new();
        for c in &conjuncts {
            match c {
                Expr::BinaryOp { left, op, right } if is_column(left) && is_constant(right) => {
                    found.push((op.clone(), right.as_ref()));
                }
                Expr::BinaryOp { left, op, right } if is_column(right) && is_constant(left) => {
                    let flipped = match op {
                        BinaryOperator::Lt => BinaryOperator::Gt,
                        BinaryOperator::LtEq => BinaryOperator::GtEq,
                        BinaryOperator::Gt => BinaryOperator::Lt,
                        BinaryOperator::GtEq => BinaryOperator::LtEq,
                        other => other.clone(),
                    };
                    found.push((flipped, left.as_ref()));
                }
                Expr::Between { expr, negated: false, low, high }
                    if is_column(expr) && is_constant(low) && is_constant(high) =>
                {
                    found.push((BinaryOperator::GtEq, low.as_ref()));
                    found.push((BinaryOperator::LtEq, high.as_ref()));
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        for (op, constant) in found {
            if let Ok(v) = ty.coerce(eval(constant, &scope)?) {
                if !v.is_null() {
                    out.push((op, v));
                }
            }
        }
        Ok(out)
    };
    let mut best: Option<(usize, IndexPlan<'s>)> = None;
    for index in &schema.indexes {
        let mut prefix = Vec::new();
        for &column in &index.columns {
            match comparisons(column)?.into_iter().find(|(op, _)| *op == BinaryOperator::Eq) {
                Some((_, v)) => prefix.push(v),
                None => break,
            }
        }
        let fixed = key_prefix(&prefix);
        let mut start = Bound::Included(fixed.clone());
        let mut end = prefix_end(&fixed).map_or(Bound::Unbounded, Bound::Excluded);
        let mut ranged = false;
        if let Some(&next) = index.columns.get(prefix.len()) {
            for (op, v) in comparisons(next)? {
                let key = key_prefix(&[prefix.clone(), vec![v]].concat());
                match op {
                    BinaryOperator::Gt => start = prefix_end(&key).map_or(Bound::Unbounded, Bound::Included),
                    BinaryOperator::GtEq => start = Bound::Included(key),
                    BinaryOperator::Lt => end = Bound::Excluded(key),
                    BinaryOperator::LtEq => end = prefix_end(&key).map_or(Bound::Unbounded, Bound::Excluded),
                    _ => continue,
                }
                ranged = true;
            }
        }
        let score = 2 * prefix.len() + usize::from(ranged);
        if score == 0 || best.as_ref().is_some_and(|(s, _)| *s >= score) {
            continue;
        }
        let names: Vec<&str> = index.columns.iter().map(|&c| schema.columns[c].name.as_str()).collect();
        let shape = match (prefix.len(), ranged) {
            (n, false) => format!("{} fixed", names[..n].join(", ")),
            (0, true) => format!("a range of {}", names[0]),
            (n, true) => format!("{} fixed, a range of {}", names[..n].join(", "), names[n]),
        };
        best = Some((score, IndexPlan { index, start, end, shape }));
    }
    Ok(best.map(|(_, plan)| plan))
}

/// The rows a WHERE fixing the primary key with constants reads: its key.
pub(super) fn point_key(
    schema: &Schema,
    cols: &[Col],
    filter: Option<&Expr>,
    params: &[Value],
    now: i64,
) -> Result<Option<Vec<u8>>, SqlError> {
    let Some(filter) = filter else { return Ok(None) };
    if schema.primary_key.is_empty() {
        return Ok(None);
    }
    let mut conjuncts = Vec::new();
    split_and(filter, &mut conjuncts);
    let scope = Scope::constants(params, now);
    let mut key = Vec::new();
    for &column in &schema.primary_key {
        let is_key = |e: &Expr| matches!(resolve(cols, e), Ok(Some(i)) if i == column);
        let found = conjuncts.iter().find_map(|c| match c {
            Expr::BinaryOp { left, op: BinaryOperator::Eq, right } => {
                if is_key(left) && is_constant(right) {
                    Some(right.as_ref())
                } else if is_key(right) && is_constant(left) {
                    Some(left.as_ref())
                } else {
                    None
                }
            }
            _ => None,
        });
        let Some(constant) = found else { return Ok(None) };
        let Ok(value) = schema.columns[column].ty.coerce(eval(constant, &scope)?) else { return Ok(None) };
        if value.is_null() {
            return Ok(None);
        }
        encode_key_part(&value, &mut key);
    }
    Ok(Some(key))
}

fn value_size(v: &Value) -> usize {
    match v {
        Value::Text(s) => 24 + s.len(),
        _ => 16,
    }
}

/// The name PostgreSQL gives an unnamed select list item.
pub fn output_name(e: &Expr) -> String {
    match e {
        Expr::Function(f) => f.name.0.last().map_or_else(|| "?column?".into(), |p| p.to_string().to_lowercase()),
        Expr::Cast { expr, .. } | Expr::Nested(expr) => output_name(expr),
        Expr::Exists { .. } => "exists".into(),
        Expr::Case { .. } => "case".into(),
        e => expr::column_ref(e).unwrap_or_else(|| "?column?".into()),
    }
}

fn collect_aggregates(e: &Expr, out: &mut Vec<sqlparser::ast::Function>) {
    expr::visit(e, &mut |node| {
        if let Expr::Function(f) = node {
            if is_aggregate(f) && !out.iter().any(|g| g.to_string() == f.to_string()) {
                out.push(f.clone());
            }
        }
    });
}

/// The type an expression yields, as PostgreSQL would report it (within
/// our types), its columns read from `cols`.
pub fn type_of(e: &Expr, cols: &[Col], params: &[SqlType]) -> SqlType {
    if let Ok(Some(i)) = resolve(cols, e) {
        return cols[i].ty;
    }
    let of = |e: &Expr| type_of(e, cols, params);
    match e {
        Expr::Value(v) => match &v.value {
            AstValue::Number(n, _) => match n.parse::<i64>() {
                Ok(i) if i32::try_from(i).is_ok() => SqlType::Int,
                Ok(_) => SqlType::BigInt,
                Err(_) => SqlType::Numeric,
            },
            AstValue::Boolean(_) => SqlType::Bool,
            AstValue::Placeholder(p) => p
                .trim_start_matches('$')
                .parse::<usize>()
                .ok()
                .and_then(|n| params.get(n.wrapping_sub(1)).copied())
                .unwrap_or(SqlType::Text(None)),
            _ => SqlType::Text(None),
        },
        Expr::Nested(inner) => of(inner),
        Expr::UnaryOp { expr, op } => match op {
            sqlparser::ast::UnaryOperator::Not => SqlType::Bool,
            _ => of(expr),
        },
        Expr::Cast { data_type, .. } => SqlType::parse(&data_type.to_string()).unwrap_or(SqlType::Text(None)),
        Expr::BinaryOp { left, op, right } => match op {
            BinaryOperator::Plus
            | BinaryOperator::Minus
            | BinaryOperator::Multiply
            | BinaryOperator::Divide
            | BinaryOperator::Modulo => {
                let rank = |t: SqlType| match t {
                    SqlType::SmallInt => 0,
                    SqlType::Int => 1,
                    SqlType::BigInt => 2,
                    _ => 3,
                };
                match rank(of(left)).max(rank(of(right))) {
                    0 => SqlType::SmallInt,
                    1 => SqlType::Int,
                    2 => SqlType::BigInt,
                    _ => SqlType::Double,
                }
            }
            BinaryOperator::StringConcat => SqlType::Text(None),
            _ => SqlType::Bool,
        },
        Expr::Case { conditions, else_result, .. } => conditions
            .first()
            .map(|w| of(&w.result))
            .or_else(|| else_result.as_ref().map(|e| of(e)))
            .unwrap_or(SqlType::Text(None)),
        Expr::Function(f) => {
            let arg = single_arg(f).ok().flatten().map(of);
            match f.name.to_string().to_lowercase().as_str() {
                "count" => SqlType::BigInt,
                "sum" => match arg {
                    Some(SqlType::SmallInt | SqlType::Int | SqlType::BigInt) => SqlType::BigInt,
                    _ => SqlType::Double,
                },
                "avg" => SqlType::Double,
                "min" | "max" | "abs" | "coalesce" => arg.unwrap_or(SqlType::Text(None)),
                "now" | "current_timestamp" | "transaction_timestamp" | "statement_timestamp" => SqlType::TimestampTz,
                "length" | "char_length" => SqlType::Int,
                _ => SqlType::Text(None),
            }
        }
        Expr::IsNull(_)
        | Expr::IsNotNull(_)
        | Expr::Between { .. }
        | Expr::In { .. }
        | Expr::Like { .. }
        | Expr::ILike { .. }
        | Expr::Exists { .. } => SqlType::Bool,
        Expr::Identifier(i) if i.value.eq_ignore_ascii_case("current_timestamp") => SqlType::TimestampTz,
        _ => SqlType::Text(None),
    }
}

#[derive(Clone)]
enum Acc {
    Count(i64),
    Sum(Value),
    Min(Value),
    Max(Value),
    Avg(f64, i64),
}

impl Acc {
    fn new(f: &sqlparser::ast::Function) -> Acc {
        match f.name.to_string().to_lowercase().as_str() {
            "count" => Acc::Count(0),
            "sum" => Acc::Sum(Value::Null),
            "min" => Acc::Min(Value::Null),
            "max" => Acc::Max(Value::Null),
            _ => Acc::Avg(0.0, 0),
        }
    }

    fn add(&mut self, v: Option<Value>) -> Result<(), SqlError> {
        match (self, v) {
            (Acc::Count(n), None) => *n += 1,
            (_, None) => return Err(SqlError::syntax("only count takes *")),
            (_, Some(Value::Null)) => {}
            (Acc::Count(n), Some(_)) => *n += 1,
            (Acc::Sum(s), Some(v)) => {
                *s = if s.is_null() { v } else { expr::binary(s.clone(), &BinaryOperator::Plus, v)? };
            }
            (Acc::Min(m), Some(v)) => {
                if m.is_null() || v.compare(m) == Some(std::cmp::Ordering::Less) {
                    *m = v;
                }
            }
            (Acc::Max(m), Some(v)) => {
                if m.is_null() || v.compare(m) == Some(std::cmp::Ordering::Greater) {
                    *m = v;
                }
            }
            (Acc::Avg(s, n), Some(v)) => {
                *s += match v {
                    Value::Int(i) => i as f64,
                    Value::Float(x) => x,
                    other => return Err(SqlError::new("42883", format!("avg of {other:?}"))),
                };
                *n += 1;
            }
        }
        Ok(())
    }

    fn value(&self) -> Value {
        match self {
            Acc::Count(n) => Value::Int(*n),
            Acc::Sum(v) | Acc::Min(v) | Acc::Max(v) => v.clone(),
            Acc::Avg(_, 0) => Value::Null,
            Acc::Avg(s, n) => Value::Float(s / *n as f64),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn join_keys_spread_over_the_bits_that_pick_buckets() {
        // A hash join's keys are often consecutive integers, which differ
        // only in their encoding's last bytes. hashbrown picks a bucket by
        // the low bits and filters by the top seven: both must vary.
        // One integer is hashed as a word; others as encoded keys.
        let hasher = BuildHasherDefault::<WordHash>::default();
        let n = 100_000u64;
        let words: Vec<u64> = (1..=n as i64).map(|k| hasher.hash_one(k)).collect();
        let encoded: Vec<u64> = (1..=n as i64)
            .map(|k| {
                let mut key = Vec::new();
                encode_key_part(&Value::Int(k), &mut key);
                hasher.hash_one(&key)
            })
            .collect();
        for hashes in [words, encoded] {
            let distinct = |f: &dyn Fn(u64) -> u64| hashes.iter().map(|&h| f(h)).collect::<BTreeSet<_>>().len();
            assert_eq!(distinct(&|h| h), n as usize);
            // 100,000 random values fill about 69,960 of 2^17 buckets.
            assert!(distinct(&|h| h & 0x1_ffff) > 68_000, "{}", distinct(&|h| h & 0x1_ffff));
            assert_eq!(distinct(&|h| h >> 57), 128);
        }
    }

    #[test]
    fn a_statement_names_its_columns_unless_a_star_or_natural_join_may_stand_for_them() {
        let names = names_in("SELECT count(*), \"Mixed\" FROM a JOIN b ON a.K = b.k WHERE v > 1").unwrap();
        for name in ["k", "Mixed", "v", "a", "b"] {
            assert!(names.contains(name), "{name} in {names:?}");
        }
        assert!(!names.contains("w"));
        assert_eq!(names_in("SELECT * FROM a"), None);
        assert_eq!(names_in("SELECT a.* FROM a"), None);
        assert_eq!(names_in("SELECT k FROM a WHERE EXISTS (SELECT * FROM b)"), None);
        assert_eq!(names_in("SELECT k FROM a NATURAL JOIN b"), None);
    }
}
