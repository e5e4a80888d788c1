//! The SQL session API in-process on the simulated disk, in both builds:
//! the statements, transaction blocks, errors, COPY, Describe's parameter
//! inference, and SQL state surviving a crash.

use std::sync::Arc;

use thunderdb::db::{Database, EngineConfig};
use thunderdb::env::{Env, FaultConfig, SimClock, SimDisk};
use thunderdb::sql::{parse, Output, Session, SqlType, Value};

async fn open(disk: &SimDisk) -> Arc<Database> {
    let env = Env::new(disk.fs(), Arc::new(SimClock::new(1_700_000_000_000_000)), 7);
    let mut config = EngineConfig::new("/db");
    config.wal_segment_size = 1 << 16;
    Arc::new(Database::open(env, config).await.unwrap())
}

/// Runs `sql`, which must succeed; the last statement's output.
async fn ok(session: &mut Session, sql: &str) -> Output {
    let (mut outputs, error) = session.run(sql).await;
    assert!(error.is_none(), "{sql}: {error:?}");
    outputs.pop().unwrap()
}

/// Runs `sql`, which must fail; its SQLSTATE.
async fn fails(session: &mut Session, sql: &str) -> &'static str {
    session.run(sql).await.1.unwrap_or_else(|| panic!("{sql} succeeded")).code
}

fn rows(out: Output) -> Vec<Vec<Value>> {
    match out {
        Output::Rows { rows, .. } => rows,
        other => panic!("no rows: {other:?}"),
    }
}

fn ints(out: Output) -> Vec<i64> {
    rows(out)
        .into_iter()
        .map(|r| match r[0] {
            Value::Int(n) => n,
            ref other => panic!("{other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn statements_blocks_and_errors() {
    let disk = SimDisk::new(1, FaultConfig::none());
    let db = open(&disk).await;
    let mut s = Session::new(db.clone());
    ok(&mut s, "CREATE TABLE t (k INT PRIMARY KEY, v TEXT NOT NULL, n BIGINT DEFAULT 10, c CHAR(3))").await;
    assert_eq!(
        ok(&mut s, "INSERT INTO t (k, v) VALUES (3, 'c'), (1, 'a'), (2, 'b')").await,
        Output::Command("INSERT 0 3".into())
    );
    assert_eq!(ints(ok(&mut s, "SELECT k FROM t ORDER BY k DESC").await), vec![3, 2, 1]);
    assert_eq!(ints(ok(&mut s, "SELECT n FROM t WHERE k = 2").await), vec![10]);
    assert_eq!(ok(&mut s, "UPDATE t SET n = n * 2 + k WHERE k >= 2").await, Output::Command("UPDATE 2".into()));
    assert_eq!(ints(ok(&mut s, "SELECT sum(n) FROM t").await), vec![10 + 22 + 23]);
    assert_eq!(ints(ok(&mut s, "SELECT count(*) FROM t WHERE v LIKE '_' AND k IN (1, 3)").await), vec![2]);
    assert_eq!(ints(ok(&mut s, "SELECT k FROM t ORDER BY k LIMIT 1 OFFSET 1").await), vec![2]);
    ok(&mut s, "UPDATE t SET c = 'x' WHERE k = 1").await;
    assert_eq!(rows(ok(&mut s, "SELECT c FROM t WHERE k = 1").await), vec![vec![Value::Text("x  ".into())]]);

    // A primary-key change moves the row.
    ok(&mut s, "UPDATE t SET k = 10 WHERE k = 1").await;
    assert_eq!(ints(ok(&mut s, "SELECT k FROM t ORDER BY k").await), vec![2, 3, 10]);
    assert_eq!(fails(&mut s, "UPDATE t SET k = 2 WHERE k = 3").await, "23505");

    assert_eq!(fails(&mut s, "INSERT INTO t (k) VALUES (4)").await, "23502");
    assert_eq!(fails(&mut s, "INSERT INTO t VALUES (5, 'e', 1, 'toolong')").await, "22001");
    assert_eq!(fails(&mut s, "SELECT * FROM missing").await, "42P01");
    assert_eq!(fails(&mut s, "SELECT missing FROM t").await, "42703");
    assert_eq!(fails(&mut s, "SELEC 1").await, "42601");
    assert_eq!(fails(&mut s, "SELECT 1 / 0").await, "22012");
    assert_eq!(fails(&mut s, "CREATE TABLE t (x INT)").await, "42P07");
    assert_eq!(fails(&mut s, "SELECT k FROM t JOIN t AS u ON true").await, "42702");
    assert_eq!(fails(&mut s, "SELECT * FROM t, LATERAL (SELECT 1) AS x").await, "0A000");

    // A block: its writes are invisible to others until COMMIT; an error
    // fails it and takes its writes with it.
    let mut other = Session::new(db.clone());
    assert_eq!(ok(&mut s, "BEGIN").await, Output::Begin);
    ok(&mut s, "INSERT INTO t VALUES (20, 'u')").await;
    assert_eq!(fails(&mut s, "INSERT INTO t VALUES (20, 'dup')").await, "23505");
    assert_eq!(fails(&mut s, "SELECT 1").await, "25P02");
    assert_eq!(ok(&mut s, "COMMIT").await, Output::End("ROLLBACK"));
    assert_eq!(ints(ok(&mut other, "SELECT count(*) FROM t WHERE k = 20").await), vec![0]);
    ok(&mut s, "START TRANSACTION; INSERT INTO t VALUES (21, 'w'); END").await;
    ok(&mut s, "BEGIN; INSERT INTO t VALUES (22, 'gone'); ROLLBACK").await;
    assert_eq!(ints(ok(&mut other, "SELECT count(*) FROM t").await), vec![4]);

    // GROUP BY, HAVING and aggregates inside expressions.
    ok(&mut s, "CREATE TABLE g (id INT PRIMARY KEY, grp TEXT, x DOUBLE PRECISION)").await;
    ok(&mut s, "INSERT INTO g VALUES (1, 'a', 1.5), (2, 'a', 2.5), (3, 'b', 4), (4, NULL, 1)").await;
    let out = rows(ok(&mut s, "SELECT grp, count(*), avg(x) FROM g GROUP BY grp HAVING count(*) > 1 ORDER BY 1").await);
    assert_eq!(out, vec![vec![Value::Text("a".into()), Value::Int(2), Value::Float(2.0)]]);
    assert_eq!(ints(ok(&mut s, "SELECT coalesce(max(id), 0) + 1 FROM g WHERE grp = 'zzz'").await), vec![1]);

    // TRUNCATE, ALTER TABLE ADD PRIMARY KEY on a table without one.
    ok(&mut s, "CREATE TABLE h (a INT, b TEXT)").await;
    ok(&mut s, "INSERT INTO h VALUES (2, 'two'), (1, 'one'), (1, 'uno')").await;
    assert_eq!(fails(&mut s, "ALTER TABLE h ADD PRIMARY KEY (a)").await, "23505");
    ok(&mut s, "DELETE FROM h WHERE b = 'uno'").await;
    ok(&mut s, "ALTER TABLE h ADD PRIMARY KEY (a)").await;
    assert_eq!(ints(ok(&mut s, "SELECT a FROM h").await), vec![1, 2], "rows now in key order");
    assert_eq!(fails(&mut s, "INSERT INTO h VALUES (1, 'again')").await, "23505");
    ok(&mut s, "TRUNCATE h").await;
    assert_eq!(ints(ok(&mut s, "SELECT count(*) FROM h").await), vec![0]);
    ok(&mut s, "DROP TABLE h, g").await;
    assert_eq!(fails(&mut s, "DROP TABLE h").await, "42P01");
    ok(&mut s, "DROP TABLE IF EXISTS h").await;
    s.close().await;
    other.close().await;
}

#[tokio::test]
async fn copy_describe_and_a_crash() {
    let disk = SimDisk::new(2, FaultConfig::none());
    let db = open(&disk).await;
    let mut s = Session::new(db.clone());
    ok(&mut s, "CREATE TABLE acc (aid INT NOT NULL, bid INT, abalance INT, filler CHAR(84))").await;
    assert_eq!(ok(&mut s, "COPY acc FROM STDIN WITH (FREEZE on)").await, Output::CopyIn { columns: 4 });
    // Lines split across messages, a NULL, an escaped tab.
    s.copy_data(b"1\t1\t0\t\n2\t1\t").await;
    s.copy_data(b"5\t\\N\n3\t1\t-5\ta\\tb\n").await;
    assert_eq!(s.copy_done().await.unwrap(), Output::Command("COPY 3".into()));
    ok(&mut s, "COPY acc FROM STDIN").await;
    s.copy_data(b"4\t1\n").await;
    assert_eq!(s.copy_done().await.unwrap_err().code, "22P04", "a short line is refused");
    assert_eq!(ints(ok(&mut s, "SELECT count(*) FROM acc").await), vec![3], "the failed COPY left nothing");
    ok(&mut s, "ALTER TABLE acc ADD PRIMARY KEY (aid)").await;

    // Describe infers parameter types from the columns they meet.
    let statement = parse("UPDATE acc SET abalance = abalance + $1 WHERE aid = $2").unwrap().remove(0);
    let (params, _) = s.describe(&statement, &[]).await.unwrap();
    assert_eq!(params, vec![SqlType::Int, SqlType::Int]);
    let statement = parse("SELECT filler, abalance * 2 FROM acc WHERE aid = $1 LIMIT $2").unwrap().remove(0);
    let (params, columns) = s.describe(&statement, &[]).await.unwrap();
    assert_eq!(params, vec![SqlType::Int, SqlType::BigInt]);
    assert_eq!(
        columns.iter().map(|c| (c.name.as_str(), c.ty)).collect::<Vec<_>>(),
        vec![("filler", SqlType::Char(84)), ("?column?", SqlType::Int)]
    );
    let out = s.execute(&statement, &[Value::Int(3), Value::Int(5)]).await.unwrap();
    assert_eq!(rows(out)[0][1], Value::Int(-10));

    // Committed SQL survives a crash; an open block does not.
    ok(&mut s, "BEGIN; UPDATE acc SET abalance = 99 WHERE aid = 1").await;
    let mut other = Session::new(db.clone());
    ok(&mut other, "UPDATE acc SET abalance = 7 WHERE aid = 2").await;
    drop((s, other));
    disk.crash();
    let db = open(&disk).await;
    assert!(db.recovery_report().crashed);
    let mut s = Session::new(db);
    let out = ok(&mut s, "SELECT aid, abalance FROM acc ORDER BY aid").await;
    let expected: Vec<Vec<Value>> =
        [(1, 0), (2, 7), (3, -5)].iter().map(|&(a, b)| vec![Value::Int(a), Value::Int(b)]).collect();
    assert_eq!(rows(out), expected);
    s.close().await;
}

/// A load logs about its data's size, not several times it: COPY sent a line
/// per message (as pgbench sends it) and the rebuild of `ADD PRIMARY KEY`
/// each log their rows a leaf at a time. A duplicate in a COPY names its
/// line, and the failed COPY leaves nothing, after a crash too.
#[tokio::test]
async fn loads_log_in_proportion_to_their_data() {
    let disk = SimDisk::new(3, FaultConfig::none());
    let db = open(&disk).await;
    let mut s = Session::new(db.clone());
    ok(&mut s, "CREATE TABLE acc (aid INT NOT NULL, bid INT, abalance INT, filler CHAR(84))").await;
    let written = || db.wal().stats().bytes_written.load(std::sync::atomic::Ordering::Relaxed);
    let rows_loaded = 3000;
    let line = |aid: i32| format!("{aid}\t{}\t0\t{:84}\n", aid / 100, "");
    let data_bytes: usize = (1..=rows_loaded).map(|aid| line(aid).len()).sum();

    let before = written();
    ok(&mut s, "COPY acc FROM STDIN").await;
    for aid in 1..=rows_loaded {
        s.copy_data(line(aid).as_bytes()).await;
    }
    assert_eq!(s.copy_done().await.unwrap(), Output::Command(format!("COPY {rows_loaded}")));
    let copy_wal = written() - before;
    let before = written();
    ok(&mut s, "ALTER TABLE acc ADD PRIMARY KEY (aid)").await;
    let rebuild_wal = written() - before;
    for (what, wal) in [("COPY", copy_wal), ("ADD PRIMARY KEY", rebuild_wal)] {
        assert!(wal < data_bytes as u64 / 2, "{what} logged {wal} bytes for {data_bytes} bytes of rows");
    }

    ok(&mut s, "COPY acc FROM STDIN").await;
    for aid in rows_loaded + 1..rows_loaded + 2000 {
        s.copy_data(line(if aid == rows_loaded + 1500 { 17 } else { aid }).as_bytes()).await;
    }
    let error = s.copy_done().await.unwrap_err();
    assert_eq!(error.code, "23505");
    assert!(error.message.contains("line 1500"), "{}", error.message);
    drop(s);
    disk.crash();
    let db = open(&disk).await;
    let mut s = Session::new(db);
    assert_eq!(ints(ok(&mut s, "SELECT count(*) FROM acc").await), vec![i64::from(rows_loaded)]);
    assert_eq!(ints(ok(&mut s, "SELECT sum(aid) FROM acc").await), vec![(1..=i64::from(rows_loaded)).sum::<i64>()]);
}
