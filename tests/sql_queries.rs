//! Queries beyond one table, in-process on the simulated disk, in both
//! builds: joins of every kind and method, subqueries (correlated or not),
//! `WITH`, derived tables, set operations, `DISTINCT`, `CASE`, and the
//! errors PostgreSQL gives for ambiguous or missing names.

use std::sync::Arc;

use thunderdb::db::{Database, EngineConfig};
use thunderdb::env::{Env, FaultConfig, SimClock, SimDisk};
use thunderdb::sql::{Output, Session, Value};

async fn session() -> Session {
    let disk = SimDisk::new(11, FaultConfig::none());
    let env = Env::new(disk.fs(), Arc::new(SimClock::new(1_700_000_000_000_000)), 7);
    let mut config = EngineConfig::new("/db");
    config.wal_segment_size = 1 << 16;
    let db = Arc::new(Database::open(env, config).await.unwrap());
    std::mem::forget(disk);
    let mut s = Session::new(db);
    for sql in [
        "CREATE TABLE dept (id INT PRIMARY KEY, name TEXT NOT NULL)",
        "INSERT INTO dept VALUES (1, 'eng'), (2, 'ops'), (3, 'empty')",
        "CREATE TABLE emp (id INT PRIMARY KEY, name TEXT, dept_id INT, salary INT)",
        "INSERT INTO emp VALUES (10, 'ann', 1, 100), (11, 'bob', 1, 80), (12, 'cy', 2, 90), (13, 'dee', NULL, 70), \
         (14, 'eve', 9, 60)",
        "CREATE TABLE note (dept_id INT, body TEXT)",
        "INSERT INTO note VALUES (1, 'a'), (1, 'b'), (2, 'c')",
    ] {
        rows_of(&mut s, sql).await;
    }
    s
}

/// Runs `sql`, which must succeed, and renders its rows as `a|b` lines
/// (NULL as `-`).
async fn rows_of(s: &mut Session, sql: &str) -> Vec<String> {
    let (mut outputs, error) = s.run(sql).await;
    assert!(error.is_none(), "{sql}: {error:?}");
    match outputs.pop().unwrap() {
        Output::Rows { rows, .. } => rows
            .into_iter()
            .map(|row| {
                row.iter()
                    .map(|v| if *v == Value::Null { "-".to_string() } else { v.to_string() })
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect(),
        _ => Vec::new(),
    }
}

async fn check(s: &mut Session, sql: &str, want: &[&str]) {
    assert_eq!(rows_of(s, sql).await, want, "{sql}");
}

async fn fails(s: &mut Session, sql: &str) -> (&'static str, String) {
    let error = s.run(sql).await.1.unwrap_or_else(|| panic!("{sql} succeeded"));
    (error.code, error.message)
}

#[tokio::test]
async fn joins_of_every_kind() {
    let mut s = session().await;
    // Inner, with aliases and qualified columns: a hash join on the equality.
    check(
        &mut s,
        "SELECT e.name, d.name FROM emp e JOIN dept d ON e.dept_id = d.id ORDER BY e.id",
        &["ann|eng", "bob|eng", "cy|ops"],
    )
    .await;
    // The same by comma join and WHERE.
    check(
        &mut s,
        "SELECT e.name, d.name AS dept FROM emp AS e, dept AS d WHERE e.dept_id = d.id AND d.name = 'ops'",
        &["cy|ops"],
    )
    .await;
    // Left, right and full outer joins keep the rows without partners.
    check(
        &mut s,
        "SELECT e.name, d.name FROM emp e LEFT JOIN dept d ON e.dept_id = d.id ORDER BY e.name",
        &["ann|eng", "bob|eng", "cy|ops", "dee|-", "eve|-"],
    )
    .await;
    check(
        &mut s,
        "SELECT e.name, d.name FROM emp e RIGHT OUTER JOIN dept d ON e.dept_id = d.id ORDER BY d.id, e.id",
        &["ann|eng", "bob|eng", "cy|ops", "-|empty"],
    )
    .await;
    check(
        &mut s,
        "SELECT e.name, d.name FROM emp e FULL JOIN dept d ON e.dept_id = d.id ORDER BY e.name NULLS FIRST, d.name",
        &["-|empty", "ann|eng", "bob|eng", "cy|ops", "dee|-", "eve|-"],
    )
    .await;
    // A condition with no equality: a nested loop.
    check(
        &mut s,
        "SELECT e.name, d.id FROM emp e JOIN dept d ON e.salary > 85 AND d.id < e.dept_id ORDER BY 1, 2",
        &["cy|1"],
    )
    .await;
    // An equality plus a residual condition.
    check(
        &mut s,
        "SELECT e.name FROM emp e LEFT JOIN dept d ON e.dept_id = d.id AND e.salary > 85 ORDER BY e.id",
        &["ann", "bob", "cy", "dee", "eve"],
    )
    .await;
    check(
        &mut s,
        "SELECT e.name, d.name FROM emp e LEFT JOIN dept d ON e.dept_id = d.id AND e.salary > 85 ORDER BY e.id",
        &["ann|eng", "bob|-", "cy|ops", "dee|-", "eve|-"],
    )
    .await;
    // CROSS JOIN, and USING (the column once, first, in *).
    check(&mut s, "SELECT count(*) FROM emp CROSS JOIN dept", &["15"]).await;
    check(
        &mut s,
        "SELECT * FROM note JOIN (SELECT id AS dept_id, name FROM dept) AS d USING (dept_id) ORDER BY body",
        &["1|a|eng", "1|b|eng", "2|c|ops"],
    )
    .await;
    check(
        &mut s,
        "SELECT dept_id, n.body FROM dept d2 (dept_id, dname) FULL JOIN note n USING (dept_id) ORDER BY 1, 2",
        &["1|a", "1|b", "2|c", "3|-"],
    )
    .await;
    // Three tables, grouped.
    check(
        &mut s,
        "SELECT d.name, count(n.body), sum(e.salary) FROM dept d JOIN emp e ON e.dept_id = d.id \
         LEFT JOIN note n ON n.dept_id = d.id GROUP BY d.name ORDER BY d.name",
        &["eng|4|360", "ops|1|90"],
    )
    .await;
    // A join to a table by its primary key from a small side: lookups.
    check(
        &mut s,
        "SELECT n.body, d.name FROM note n JOIN dept d ON d.id = n.dept_id WHERE n.body <> 'b' ORDER BY 1",
        &["a|eng", "c|ops"],
    )
    .await;
    check(
        &mut s,
        "SELECT e.name, d.name FROM emp e LEFT JOIN dept d ON d.id = e.dept_id ORDER BY e.id",
        &["ann|eng", "bob|eng", "cy|ops", "dee|-", "eve|-"],
    )
    .await;
    // t.* and a self-join.
    check(
        &mut s,
        "SELECT a.name, b.* FROM emp a JOIN emp b ON a.salary = b.salary + 10 ORDER BY a.id",
        &["ann|12|cy|2|90", "bob|13|dee|-|70", "cy|11|bob|1|80", "dee|14|eve|9|60"],
    )
    .await;
    // Hash keys of every form: one integer against an integral float (1 =
    // 1.0), two columns, text, and a NULL that matches nothing.
    for sql in [
        "CREATE TABLE mix (id INT PRIMARY KEY, f FLOAT, t TEXT, d INT)",
        "INSERT INTO mix VALUES (1, 1.0, 'eng', 1), (2, 2.5, 'ops', 2), (3, NULL, NULL, NULL), (4, 9.0, 'eng', 2)",
    ] {
        rows_of(&mut s, sql).await;
    }
    check(
        &mut s,
        "SELECT m.id, e.name FROM mix m JOIN emp e ON e.dept_id = m.f ORDER BY 1, 2",
        &["1|ann", "1|bob", "4|eve"],
    )
    .await;
    check(&mut s, "SELECT m.id, d.id FROM mix m JOIN dept d ON d.name = m.t ORDER BY 1", &["1|1", "2|2", "4|1"]).await;
    check(&mut s, "SELECT m.id FROM mix m JOIN dept d ON d.name = m.t AND d.id = m.d ORDER BY 1", &["1", "2"]).await;
    check(&mut s, "SELECT count(*), max(m.id) FROM mix m JOIN dept d ON d.id = m.d + 100", &["0|-"]).await;
    check(&mut s, "SELECT count(*), sum(m.d) FROM mix m JOIN mix n ON n.d = m.d", &["5|9"]).await;
}

#[tokio::test]
async fn subqueries_ctes_and_set_operations() {
    let mut s = session().await;
    check(
        &mut s,
        "SELECT name FROM emp WHERE dept_id IN (SELECT id FROM dept WHERE name = 'eng') ORDER BY 1",
        &["ann", "bob"],
    )
    .await;
    // NOT IN with a NULL in the list is never true, as in SQL.
    check(&mut s, "SELECT name FROM dept WHERE id NOT IN (SELECT dept_id FROM emp)", &[]).await;
    check(
        &mut s,
        "SELECT name FROM dept WHERE id NOT IN (SELECT dept_id FROM emp WHERE dept_id IS NOT NULL)",
        &["empty"],
    )
    .await;
    // Correlated EXISTS and scalar subqueries.
    check(
        &mut s,
        "SELECT d.name FROM dept d WHERE NOT EXISTS (SELECT 1 FROM emp e WHERE e.dept_id = d.id)",
        &["empty"],
    )
    .await;
    check(
        &mut s,
        "SELECT d.name, (SELECT max(salary) FROM emp WHERE dept_id = d.id) AS top FROM dept d ORDER BY d.id",
        &["eng|100", "ops|90", "empty|-"],
    )
    .await;
    check(&mut s, "SELECT name FROM emp WHERE salary > (SELECT avg(salary) FROM emp) ORDER BY 1", &["ann", "cy"]).await;
    // A correlated subquery in a correlated subquery.
    check(
        &mut s,
        "SELECT d.name FROM dept d WHERE EXISTS (SELECT 1 FROM emp e WHERE e.dept_id = d.id AND \
         e.salary = (SELECT max(salary) FROM emp x WHERE x.dept_id = d.id) AND e.salary > 95)",
        &["eng"],
    )
    .await;
    assert_eq!(fails(&mut s, "SELECT (SELECT id FROM dept)").await.0, "21000");
    assert_eq!(fails(&mut s, "SELECT 1 WHERE 1 IN (SELECT id, name FROM dept)").await.0, "42601");

    // WITH, derived tables, DISTINCT, HAVING, ORDER BY an expression.
    check(
        &mut s,
        "WITH paid AS (SELECT dept_id, sum(salary) AS total FROM emp GROUP BY dept_id), \
         big AS (SELECT * FROM paid WHERE total > 80) \
         SELECT d.name, big.total FROM big JOIN dept d ON d.id = big.dept_id ORDER BY big.total DESC",
        &["eng|180", "ops|90"],
    )
    .await;
    check(&mut s, "SELECT DISTINCT dept_id FROM note ORDER BY dept_id", &["1", "2"]).await;
    check(&mut s, "SELECT count(*) FROM (SELECT DISTINCT dept_id FROM emp) AS x", &["4"]).await;
    check(&mut s, "SELECT dept_id, count(*) FROM emp GROUP BY dept_id HAVING count(*) > 1 ORDER BY dept_id", &["1|2"])
        .await;
    check(&mut s, "SELECT name FROM emp ORDER BY salary % 30, name LIMIT 2", &["cy", "eve"]).await;

    // Set operations.
    check(&mut s, "SELECT id FROM dept UNION SELECT dept_id FROM note ORDER BY 1", &["1", "2", "3"]).await;
    check(&mut s, "SELECT dept_id FROM note UNION ALL SELECT id FROM dept ORDER BY 1", &["1", "1", "1", "2", "2", "3"])
        .await;
    check(&mut s, "SELECT id FROM dept INTERSECT SELECT dept_id FROM emp ORDER BY 1", &["1", "2"]).await;
    check(&mut s, "SELECT id FROM dept EXCEPT SELECT dept_id FROM emp", &["3"]).await;
    check(&mut s, "SELECT * FROM (VALUES (2, 'b'), (1, 'a')) AS v (n, s) ORDER BY n", &["1|a", "2|b"]).await;
    assert_eq!(fails(&mut s, "SELECT 1 UNION SELECT 1, 2").await.0, "42601");

    // CASE, simple and searched.
    check(
        &mut s,
        "SELECT name, CASE WHEN salary >= 90 THEN 'high' WHEN salary >= 70 THEN 'mid' ELSE 'low' END, \
         CASE dept_id WHEN 1 THEN 'one' END FROM emp ORDER BY id",
        &["ann|high|one", "bob|mid|one", "cy|high|-", "dee|mid|-", "eve|low|-"],
    )
    .await;

    // Subqueries in UPDATE and DELETE, correlated or not.
    rows_of(&mut s, "UPDATE emp SET salary = salary + 1 WHERE dept_id IN (SELECT id FROM dept WHERE name = 'ops')")
        .await;
    check(&mut s, "SELECT salary FROM emp WHERE id = 12", &["91"]).await;
    rows_of(&mut s, "DELETE FROM emp e WHERE NOT EXISTS (SELECT 1 FROM dept d WHERE d.id = e.dept_id)").await;
    check(&mut s, "SELECT name FROM emp ORDER BY id", &["ann", "bob", "cy"]).await;
    // A subquery where the engine cannot run one is refused clearly.
    let (code, message) = fails(&mut s, "UPDATE emp SET salary = (SELECT 1)").await;
    assert_eq!(code, "0A000", "{message}");
}

#[tokio::test]
async fn names_resolve_as_in_postgresql() {
    let mut s = session().await;
    let (code, message) = fails(&mut s, "SELECT id FROM emp JOIN dept ON true").await;
    assert_eq!((code, message.as_str()), ("42702", "column reference \"id\" is ambiguous"));
    let (code, message) = fails(&mut s, "SELECT x.id FROM emp").await;
    assert_eq!((code, message.as_str()), ("42P01", "missing FROM-clause entry for table \"x\""));
    assert_eq!(fails(&mut s, "SELECT emp.nope FROM emp").await.0, "42703");
    // An alias hides the table's own name.
    assert_eq!(fails(&mut s, "SELECT emp.id FROM emp e").await.0, "42P01");
    assert_eq!(fails(&mut s, "SELECT * FROM (SELECT 1)").await.0, "42601");
    assert_eq!(fails(&mut s, "WITH RECURSIVE r AS (SELECT 1) SELECT * FROM r").await.0, "0A000");
    // A CTE shadows a table of the same name, inside its query only.
    check(&mut s, "WITH emp AS (SELECT 1 AS id) SELECT id FROM emp", &["1"]).await;
    check(&mut s, "SELECT count(*) FROM emp", &["5"]).await;
}

/// The plan's lines, as EXPLAIN returns them.
async fn plan(s: &mut Session, sql: &str) -> String {
    rows_of(s, sql).await.join("\n")
}

#[tokio::test]
async fn explain_shows_the_chosen_plan_and_analyze_counts_rows() {
    let mut s = session().await;
    let point = plan(&mut s, "EXPLAIN SELECT * FROM emp WHERE id = 12").await;
    assert!(point.starts_with("Index Scan using emp_pkey on emp"), "{point}");
    let scan = plan(&mut s, "EXPLAIN SELECT * FROM emp WHERE salary > 1").await;
    assert!(scan.starts_with("Seq Scan on emp") && scan.contains("Filter: salary > 1"), "{scan}");
    // A small outer side joins a table by its primary key with lookups;
    // an equality without a usable key hashes; no equality loops.
    let lookup = plan(&mut s, "EXPLAIN SELECT * FROM note n JOIN dept d ON d.id = n.dept_id").await;
    assert!(lookup.starts_with("Index Nested Loop Join using dept_pkey on dept"), "{lookup}");
    let hash = plan(&mut s, "EXPLAIN SELECT * FROM dept d LEFT JOIN note n ON n.dept_id = d.id").await;
    assert!(hash.starts_with("Hash Left Join\n  Hash Cond: d.id = n.dept_id"), "{hash}");
    assert!(hash.contains("->  Seq Scan on dept d") && hash.contains("->  Seq Scan on note n"), "{hash}");
    let nested = plan(&mut s, "EXPLAIN SELECT * FROM emp e JOIN dept d ON e.salary > d.id").await;
    assert!(nested.starts_with("Nested Loop Join\n  Join Filter: e.salary > d.id"), "{nested}");
    // EXPLAIN reads nothing; ANALYZE runs the query and counts.
    let analyzed = plan(
        &mut s,
        "EXPLAIN ANALYZE SELECT d.name, count(*) FROM dept d JOIN emp e ON e.dept_id = d.id GROUP BY d.name \
         ORDER BY 1 LIMIT 1",
    )
    .await;
    let lines: Vec<&str> = analyzed.lines().collect();
    assert!(lines[0].starts_with("Limit  (actual rows=1 loops=1"), "{analyzed}");
    assert!(lines[1].contains("Sort (by 1)") && lines[2].contains("Aggregate (group by d.name)"), "{analyzed}");
    assert!(analyzed.contains("Hash Join  (actual rows=3 loops=1"), "{analyzed}");
    assert!(analyzed.contains("->  Seq Scan on emp e  (actual rows=5 loops=1"), "{analyzed}");
    assert!(lines.last().unwrap().starts_with("Execution Time: "), "{analyzed}");
    let sub =
        plan(&mut s, "EXPLAIN ANALYZE SELECT name FROM dept d WHERE EXISTS (SELECT 1 FROM emp WHERE dept_id = d.id)")
            .await;
    assert!(sub.contains("SubPlan (runs for each row)  (actual rows=3 loops=3"), "{sub}");
    assert_eq!(fails(&mut s, "EXPLAIN DELETE FROM emp").await.0, "0A000");
}

#[tokio::test]
async fn secondary_indexes_are_kept_with_their_table_and_used() {
    let mut s = session().await;
    rows_of(&mut s, "CREATE INDEX emp_dept ON emp (dept_id)").await;
    rows_of(&mut s, "CREATE UNIQUE INDEX ON emp (name)").await;
    rows_of(&mut s, "CREATE INDEX IF NOT EXISTS emp_dept ON emp (salary)").await;
    assert_eq!(fails(&mut s, "CREATE INDEX emp_dept ON emp (salary)").await.0, "42P07");
    assert_eq!(fails(&mut s, "CREATE INDEX dept ON emp (salary)").await.0, "42P07");
    assert_eq!(fails(&mut s, "CREATE INDEX ON emp (nope)").await.0, "42703");
    // Lookups by an indexed column, equal and in a range, use the index.
    let plan = rows_of(&mut s, "EXPLAIN SELECT name FROM emp WHERE dept_id = 1").await.join("\n");
    assert!(plan.starts_with("Index Scan using emp_dept on emp (dept_id fixed)"), "{plan}");
    check(&mut s, "SELECT name FROM emp WHERE dept_id = 1 ORDER BY name", &["ann", "bob"]).await;
    check(&mut s, "SELECT name FROM emp WHERE dept_id > 1 ORDER BY name", &["cy", "eve"]).await;
    check(&mut s, "SELECT name FROM emp WHERE dept_id BETWEEN 2 AND 9 ORDER BY name", &["cy", "eve"]).await;
    check(&mut s, "SELECT name FROM emp WHERE dept_id <= 2 AND dept_id >= 2", &["cy"]).await;
    check(&mut s, "SELECT id FROM emp WHERE name = 'dee'", &["13"]).await;
    let plan = rows_of(&mut s, "EXPLAIN SELECT * FROM emp WHERE name = 'dee'").await.join("\n");
    assert!(plan.starts_with("Index Scan using emp_name_key on emp"), "{plan}");
    // A unique index refuses a duplicate, and NULLs never collide.
    assert_eq!(fails(&mut s, "INSERT INTO emp VALUES (20, 'ann', 1, 1)").await.0, "23505");
    rows_of(&mut s, "INSERT INTO emp VALUES (20, NULL, 1, 1), (21, NULL, 1, 1)").await;
    // Updates and deletes keep every index exact; a rollback undoes them.
    rows_of(&mut s, "UPDATE emp SET dept_id = 2 WHERE name = 'bob'").await;
    check(&mut s, "SELECT name FROM emp WHERE dept_id = 2 ORDER BY 1", &["bob", "cy"]).await;
    rows_of(&mut s, "UPDATE emp SET id = 30 WHERE id = 10").await;
    check(&mut s, "SELECT id FROM emp WHERE name = 'ann'", &["30"]).await;
    rows_of(&mut s, "BEGIN; DELETE FROM emp WHERE dept_id = 2; ROLLBACK").await;
    check(&mut s, "SELECT count(*) FROM emp WHERE dept_id = 2", &["2"]).await;
    rows_of(&mut s, "DELETE FROM emp WHERE id IN (20, 21)").await;
    assert_eq!(fails(&mut s, "UPDATE emp SET name = 'cy' WHERE id = 30").await.0, "23505");
    // A join to an indexed column looks rows up through the index.
    let plan =
        rows_of(&mut s, "EXPLAIN SELECT d.name, e.name FROM dept d JOIN emp e ON e.dept_id = d.id").await.join("\n");
    assert!(plan.starts_with("Index Nested Loop Join using emp_dept on emp"), "{plan}");
    check(
        &mut s,
        "SELECT d.name, e.name FROM dept d JOIN emp e ON e.dept_id = d.id ORDER BY 2",
        &["eng|ann", "ops|bob", "ops|cy"],
    )
    .await;
    // TRUNCATE empties the indexes; COPY fills them; DROP INDEX drops.
    rows_of(&mut s, "TRUNCATE emp").await;
    check(&mut s, "SELECT count(*) FROM emp WHERE dept_id = 1", &["0"]).await;
    s.run("COPY emp FROM STDIN").await;
    s.copy_data(b"1\tx\t3\t10\n5\tz\t4\t10\n").await;
    s.copy_done().await.unwrap();
    check(&mut s, "SELECT name FROM emp WHERE dept_id = 3", &["x"]).await;
    check(&mut s, "SELECT id FROM emp WHERE name = 'z'", &["5"]).await;
    s.run("COPY emp FROM STDIN").await;
    s.copy_data(b"6\tz\t4\t10\n").await;
    assert_eq!(s.copy_done().await.unwrap_err().code, "23505", "COPY checks a unique index");
    rows_of(&mut s, "DROP INDEX emp_dept").await;
    assert_eq!(fails(&mut s, "DROP INDEX emp_dept").await.0, "42704");
    rows_of(&mut s, "DROP INDEX IF EXISTS emp_dept").await;
    let plan = rows_of(&mut s, "EXPLAIN SELECT name FROM emp WHERE dept_id = 3").await.join("\n");
    assert!(plan.starts_with("Seq Scan on emp"), "{plan}");
    // A unique index cannot be built over duplicates; nothing is left of it.
    rows_of(&mut s, "INSERT INTO emp VALUES (2, 'y', 4, 10)").await;
    let (code, message) = fails(&mut s, "CREATE UNIQUE INDEX emp_dept_u ON emp (dept_id)").await;
    assert_eq!(
        (code, message.as_str()),
        ("23505", "could not create unique index \"emp_dept_u\": a key is duplicated")
    );
    rows_of(&mut s, "CREATE INDEX emp_dept_u ON emp (dept_id)").await;
    // Dropping the table drops its indexes.
    rows_of(&mut s, "DROP TABLE emp").await;
    rows_of(&mut s, "CREATE TABLE emp (id INT PRIMARY KEY)").await;
    rows_of(&mut s, "CREATE INDEX emp_dept_u ON emp (id)").await;
}

/// Scans past 1,024 rows decode only the columns the statement names; every
/// way a statement can name one must still see its values.
#[tokio::test]
async fn scans_of_many_rows_see_every_column_the_statement_names() {
    let mut s = session().await;
    rows_of(&mut s, "CREATE TABLE big (id INT PRIMARY KEY, k INT, label TEXT, note TEXT)").await;
    rows_of(&mut s, "INSERT INTO big SELECT g, g % 10, 'l' || g, 'n' || g FROM generate_series(1, 3000) AS g").await;
    // In WHERE and an aggregate; in ORDER BY only; everything by `*`.
    check(&mut s, "SELECT count(*), max(label) FROM big WHERE k = 3", &["300|l993"]).await;
    check(&mut s, "SELECT label FROM big ORDER BY note DESC LIMIT 1", &["l999"]).await;
    check(&mut s, "SELECT * FROM big ORDER BY id DESC LIMIT 1", &["3000|0|l3000|n3000"]).await;
    check(&mut s, "SELECT big.* FROM big ORDER BY id LIMIT 1", &["1|1|l1|n1"]).await;
    // In a join's condition and a quoted name; in a subquery.
    check(&mut s, "SELECT b.\"label\" FROM big b JOIN big c ON c.id = b.id + 1 WHERE c.note = 'n3000'", &["l2999"])
        .await;
    check(&mut s, "SELECT count(*) FROM big WHERE note IN (SELECT 'n' || id FROM dept)", &["3"]).await;
    check(&mut s, "SELECT count(*) FROM big b WHERE EXISTS (SELECT 1 FROM dept d WHERE 'n' || d.id = b.note)", &["3"])
        .await;
    // Columns a NATURAL join matches by name without naming them.
    check(&mut s, "SELECT count(*), max(label) FROM big NATURAL JOIN (SELECT id, k, note FROM big) s", &["3000|l999"])
        .await;
    // Through an index range of more than 1,024 rows.
    rows_of(&mut s, "CREATE INDEX big_k ON big (k)").await;
    check(&mut s, "SELECT count(note), min(label) FROM big WHERE k >= 2", &["2400|l1002"]).await;
}

#[tokio::test]
async fn insert_select_inserts_a_querys_rows_all_or_none() {
    let mut s = session().await;
    rows_of(&mut s, "CREATE TABLE pay (id INT PRIMARY KEY, who TEXT, dept TEXT, total INT DEFAULT 0)").await;
    rows_of(&mut s, "CREATE INDEX pay_dept ON pay (dept)").await;
    // From a join, into named columns; the rest take their defaults.
    let (outputs, error) = s
        .run("INSERT INTO pay (id, who, dept) SELECT e.id, e.name, d.name FROM emp e JOIN dept d ON d.id = e.dept_id")
        .await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(outputs, vec![Output::Command("INSERT 0 3".into())]);
    check(&mut s, "SELECT id, who, dept, total FROM pay ORDER BY id", &["10|ann|eng|0", "11|bob|eng|0", "12|cy|ops|0"])
        .await;
    // The index holds the new rows.
    check(&mut s, "SELECT who FROM pay WHERE dept = 'ops'", &["cy"]).await;
    // A query of the target table reads it before the first insert.
    rows_of(&mut s, "INSERT INTO pay SELECT id + 100, who || '2', dept, total + 1 FROM pay WHERE id > 10").await;
    check(&mut s, "SELECT count(*), sum(total) FROM pay", &["5|2"]).await;
    // Without a column list the query's columns fill the first ones.
    rows_of(&mut s, "INSERT INTO pay SELECT 200, 'zed' FROM dept WHERE id = 1").await;
    check(&mut s, "SELECT who, dept, total FROM pay WHERE id = 200", &["zed|-|0"]).await;
    // A duplicate key fails the whole statement: no row of it is left.
    let (code, _) =
        fails(&mut s, "INSERT INTO pay (id, who) SELECT id + 300, name FROM emp UNION ALL SELECT 10, 'x'").await;
    assert_eq!(code, "23505");
    check(&mut s, "SELECT count(*) FROM pay WHERE id > 300", &["0"]).await;
    // Too many columns for the targets, even when the query returns none.
    let (code, message) = fails(&mut s, "INSERT INTO pay (id) SELECT id, name FROM emp WHERE false").await;
    assert_eq!((code, message.as_str()), ("42601", "INSERT has 2 expressions for 1 target columns"));
}

/// `CREATE INDEX` on a populated table, cut by a power failure at each of
/// its I/O operations: after recovery the index either does not exist (and
/// can be created) or holds exactly its table's rows; the table is intact.
#[tokio::test]
async fn building_an_index_is_crash_safe_at_every_io() {
    use std::ops::Bound;
    use thunderdb::sql::index;
    use thunderdb::sql::types::{decode_row, Schema};

    fn config() -> EngineConfig {
        let mut config = EngineConfig::new("/db");
        config.wal_segment_size = 1 << 16;
        config.buffer_pool_size = 8 * thunderdb::storage::PAGE_SIZE as u64;
        config
    }
    async fn open(disk: &SimDisk) -> Arc<Database> {
        let env = Env::new(disk.fs(), Arc::new(SimClock::new(1_700_000_000_000_000)), 7);
        Arc::new(Database::open(env, config()).await.unwrap())
    }
    async fn populated(disk: &SimDisk) {
        let db = open(disk).await;
        let mut s = Session::new(db.clone());
        rows_of(&mut s, "CREATE TABLE t (id INT PRIMARY KEY, v INT, pad TEXT)").await;
        let values: Vec<String> =
            (0..2000).map(|i| format!("({i}, {}, '{}')", (i * 37) % 101, "x".repeat(60))).collect();
        rows_of(&mut s, &format!("INSERT INTO t VALUES {}", values.join(", "))).await;
        s.close().await;
        db.shutdown().await.unwrap();
    }
    /// The index's entries, if it exists, and the ones the table's rows make.
    async fn entries(db: &Database) -> (Option<Vec<(Vec<u8>, Vec<u8>)>>, Vec<(Vec<u8>, Vec<u8>)>, usize) {
        let mut txn = db.begin().await.unwrap();
        let table = txn.table("t").await.unwrap().expect("the table survives");
        let schema = Schema::decode("t", &table.meta).unwrap();
        let rows = txn.scan(&table, Bound::Unbounded, Bound::Unbounded).await.unwrap();
        let tree = txn.table(&index::tree_name("t_v")).await.unwrap();
        let found = match (&tree, schema.indexes.first()) {
            (Some(tree), Some(_)) => Some(txn.scan(tree, Bound::Unbounded, Bound::Unbounded).await.unwrap()),
            (None, None) => None,
            other => panic!("the index's tree and its schema entry disagree: {other:?}"),
        };
        let def = thunderdb::sql::types::IndexDef { name: "t_v".into(), columns: vec![1], unique: false };
        let mut expected: Vec<(Vec<u8>, Vec<u8>)> =
            rows.iter().map(|(pk, row)| index::entry(&def, &decode_row("t", row).unwrap(), pk)).collect();
        expected.sort();
        txn.commit().await.unwrap();
        (found, expected, rows.len())
    }

    let total = {
        let disk = SimDisk::new(21, FaultConfig::none());
        populated(&disk).await;
        let db = open(&disk).await;
        let before = disk.op_count();
        rows_of(&mut Session::new(db.clone()), "CREATE INDEX t_v ON t (v)").await;
        disk.op_count() - before
    };
    assert!(total > 20, "building the index does real I/O: {total} operations");
    // Every other I/O, and after the last (the commit durable, the pages
    // not yet written: recovery rebuilds the index from the log).
    let mut present = 0;
    for crash_at in (0..total).step_by(2).chain([total - 1, total]) {
        let disk = SimDisk::new(21, FaultConfig::none());
        populated(&disk).await;
        {
            let db = open(&disk).await;
            disk.set_faults(FaultConfig::power_loss());
            disk.set_crash_countdown(Some(crash_at));
            let _ = Session::new(db.clone()).run("CREATE INDEX t_v ON t (v)").await;
        }
        disk.crash();
        disk.set_crash_countdown(None);
        disk.set_faults(FaultConfig::none());
        let db = open(&disk).await;
        let (found, expected, rows) = entries(&db).await;
        assert_eq!(rows, 2000, "crash at I/O {crash_at} of {total}: the table lost rows");
        match found {
            Some(found) => {
                present += 1;
                assert_eq!(found, expected, "crash at I/O {crash_at} of {total}: the index differs");
            }
            None => {
                rows_of(&mut Session::new(db.clone()), "CREATE INDEX t_v ON t (v)").await;
                let (found, expected, _) = entries(&db).await;
                assert_eq!(found, Some(expected), "crash at I/O {crash_at}: the index built again differs");
            }
        }
    }
    assert!(present > 0, "some crash came after the commit was durable");
}
