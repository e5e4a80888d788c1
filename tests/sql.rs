//! SQL through real clients against the real binary: psql (`-c`, `-f`),
//! tokio-postgres with parameters, bad input that must not hurt the server,
//! and the admin HTTP API.
// The server runs only in the normal build (madsim has no real sockets).
#![cfg(not(madsim))]
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::Server;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

async fn connect(server: &Server) -> Client {
    let (client, connection) = tokio_postgres::connect(&server.conninfo(), NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

#[test]
fn psql_runs_commands_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.psql(
        "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(20) NOT NULL, price DOUBLE PRECISION, \
         stock SMALLINT DEFAULT 7, added TIMESTAMP DEFAULT now(), ok BOOLEAN) WITH (fillfactor=90)",
    );
    let script = dir.path().join("load.sql");
    std::fs::write(
        &script,
        "BEGIN;\nINSERT INTO items (id, name, price, ok) VALUES (1, 'apple', 0.5, true), (2, 'pear', 0.75, false);\n\
         INSERT INTO items (id, name, price) VALUES (3, 'fig', 2.25);\nCOMMIT;\n\
         UPDATE items SET stock = stock + 1 WHERE id = 3;\nDELETE FROM items WHERE name = 'pear';\n",
    )
    .unwrap();
    let out = server.client("psql", &["-X", "-v", "ON_ERROR_STOP=1", "-f", script.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for tag in ["BEGIN", "INSERT 0 2", "INSERT 0 1", "COMMIT", "UPDATE 1", "DELETE 1"] {
        assert!(stdout.lines().any(|l| l == tag), "no {tag} in {stdout}");
    }
    assert_eq!(server.psql("SELECT id, name, stock FROM items ORDER BY id"), "1|apple|7\n3|fig|8");
    assert_eq!(server.psql("SELECT count(*), sum(stock), min(price), max(name) FROM items"), "2|15|0.5|fig");
    assert_eq!(server.psql("SELECT ok IS NULL, ok FROM items ORDER BY id DESC LIMIT 1 OFFSET 0"), "t|");
    assert_eq!(server.psql("SELECT stock, count(*) FROM items GROUP BY stock ORDER BY stock"), "7|1\n8|1");
    assert_eq!(server.psql("SHOW transaction_isolation"), "serializable");
    server.psql("SET application_name = 'tests'");
    server.psql("TRUNCATE items");
    assert_eq!(server.psql("SELECT count(*) FROM items"), "0");
    server.psql("DROP TABLE items");
    server.psql("DROP TABLE IF EXISTS items");
    let out = server.client("psql", &["-X", "-c", "SELECT * FROM items"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("relation \"items\" does not exist"));
    assert_eq!(server.terminate().0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_with_parameters_and_sqlstates() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = connect(&server).await;
    client
        .batch_execute("CREATE TABLE accounts (id BIGINT PRIMARY KEY, owner TEXT NOT NULL, balance INT NOT NULL, opened TIMESTAMPTZ)")
        .await
        .unwrap();
    let insert =
        client.prepare("INSERT INTO accounts (id, owner, balance, opened) VALUES ($1, $2, $3, now())").await.unwrap();
    for (id, owner, balance) in [(1i64, "ann", 100i32), (2, "bob", 50), (3, "cy", 0)] {
        assert_eq!(client.execute(&insert, &[&id, &owner, &balance]).await.unwrap(), 1);
    }
    let row = client.query_one("SELECT owner, balance FROM accounts WHERE id = $1", &[&2i64]).await.unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, i32>(1)), ("bob".to_string(), 50));
    let rows = client.query("SELECT id FROM accounts WHERE balance >= $1 ORDER BY id", &[&50i32]).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>(), vec![1, 2]);
    let total: i64 = client.query_one("SELECT sum(balance) FROM accounts", &[]).await.unwrap().get(0);
    assert_eq!(total, 150);
    let opened: chrono::DateTime<chrono::Utc> =
        client.query_one("SELECT opened FROM accounts WHERE id = 1", &[]).await.unwrap().get(0);
    assert!(opened.timestamp() > 1_700_000_000);

    // A transfer in a transaction.
    client.batch_execute("BEGIN").await.unwrap();
    client.execute("UPDATE accounts SET balance = balance - $1 WHERE id = $2", &[&30i32, &1i64]).await.unwrap();
    client.execute("UPDATE accounts SET balance = balance + $1 WHERE id = $2", &[&30i32, &3i64]).await.unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    let balances = client.query("SELECT balance FROM accounts ORDER BY id", &[]).await.unwrap();
    assert_eq!(balances.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>(), vec![70, 50, 30]);

    // A parameter counts wherever it stands: typed by its cast, or text.
    let row = client.query_one("SELECT $1::INT, $2::TEXT || 'x'", &[&7i32, &"y"]).await.unwrap();
    assert_eq!((row.get::<_, i32>(0), row.get::<_, String>(1)), (7, "yx".to_string()));
    let row = client.query_one("SELECT $1", &[&"as text"]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "as text");

    // Errors carry SQLSTATEs, and the connection stays usable after each.
    let code = |e: tokio_postgres::Error| e.code().cloned();
    let dup = client.execute(&insert, &[&1i64, &"again", &1i32]).await.unwrap_err();
    assert_eq!(code(dup), Some(SqlState::UNIQUE_VIOLATION));
    let null = client.execute("INSERT INTO accounts (id, balance) VALUES (9, 1)", &[]).await.unwrap_err();
    assert_eq!(code(null), Some(SqlState::NOT_NULL_VIOLATION));
    let missing = client.query("SELECT * FROM nowhere", &[]).await.unwrap_err();
    assert_eq!(code(missing), Some(SqlState::UNDEFINED_TABLE));
    let syntax = client.batch_execute("SELEC 1").await.unwrap_err();
    assert_eq!(code(syntax), Some(SqlState::SYNTAX_ERROR));
    let column = client.query("SELECT nope FROM accounts", &[]).await.unwrap_err();
    assert_eq!(code(column), Some(SqlState::UNDEFINED_COLUMN));
    let bad_int = client.batch_execute("INSERT INTO accounts VALUES (10, 'x', 'lots', now())").await.unwrap_err();
    assert_eq!(code(bad_int), Some(SqlState::INVALID_TEXT_REPRESENTATION));
    let overflow = client.batch_execute("INSERT INTO accounts VALUES (10, 'x', 3000000000, now())").await.unwrap_err();
    assert_eq!(code(overflow), Some(SqlState::NUMERIC_VALUE_OUT_OF_RANGE));

    // A failed block refuses statements until it ends.
    client.batch_execute("BEGIN").await.unwrap();
    client.batch_execute("UPDATE accounts SET balance = 0 WHERE id = 2").await.unwrap();
    assert!(client.batch_execute("SELECT * FROM nowhere").await.is_err());
    let refused = client.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(code(refused), Some(SqlState::IN_FAILED_SQL_TRANSACTION));
    client.batch_execute("ROLLBACK").await.unwrap();
    let bob: i32 = client.query_one("SELECT balance FROM accounts WHERE id = 2", &[]).await.unwrap().get(0);
    assert_eq!(bob, 50, "the failed block's update was rolled back");

    // A client that disconnects mid-transaction is rolled back.
    let quitter = connect(&server).await;
    quitter.batch_execute("BEGIN; UPDATE accounts SET balance = 999 WHERE id = 3").await.unwrap();
    drop(quitter);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cy: i32 = client.query_one("SELECT balance FROM accounts WHERE id = 3", &[]).await.unwrap().get(0);
    assert_eq!(cy, 30);
    assert_eq!(server.terminate().0, 0);
}

/// Sends raw bytes on a fresh connection and returns what came back.
fn raw(server: &Server, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", server.pg_port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = stream.write_all(bytes);
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

fn startup_message() -> Vec<u8> {
    let mut body = 196608u32.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0admin\0\0");
    let mut message = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    message.extend(body);
    message
}

/// Reads backend messages up to and including `ReadyForQuery`; returns the
/// message types seen and the transaction status it reported.
fn until_ready(stream: &mut TcpStream) -> (Vec<u8>, u8) {
    let mut types = Vec::new();
    loop {
        let mut header = [0u8; 5];
        stream.read_exact(&mut header).unwrap();
        let len = u32::from_be_bytes(header[1..5].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len - 4];
        stream.read_exact(&mut body).unwrap();
        types.push(header[0]);
        match header[0] {
            b'Z' => return (types, body[0]),
            b'G' => return (types, 0),
            _ => {}
        }
    }
}

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn query(text: &str) -> Vec<u8> {
    message(b'Q', format!("{text}\0").as_bytes())
}

/// `CopyData` with `rows`, then `CopyDone`.
fn copy_in(rows: &[u8]) -> Vec<u8> {
    let mut out = message(b'd', rows);
    out.extend(message(b'c', b""));
    out
}

/// A raw protocol session, started and idle. A read that waits 3 s fails.
fn raw_session(server: &Server) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", server.pg_port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    stream.write_all(&startup_message()).unwrap();
    assert_eq!(until_ready(&mut stream).1, b'I');
    stream
}

/// `ReadyForQuery` reports the block's real state after `COPY … FROM STDIN`
/// (in a block, a failed block, or none), and each statement's whole reply
/// arrives before the server waits.
#[test]
fn copy_in_a_block_reports_the_block_in_ready_for_query() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut stream = raw_session(&server);
    let mut run = |bytes: Vec<u8>| {
        stream.write_all(&bytes).unwrap();
        until_ready(&mut stream)
    };
    assert_eq!(run(query("CREATE TABLE c (k INT PRIMARY KEY)")), (vec![b'C', b'Z'], b'I'));
    assert_eq!(run(query("BEGIN")).1, b'T');
    assert_eq!(run(query("COPY c FROM STDIN")).0, vec![b'G']);
    assert_eq!(run(copy_in(b"1\n2\n")), (vec![b'C', b'Z'], b'T'), "still in the block after COPY");
    assert_eq!(run(query("COPY c FROM STDIN")).0, vec![b'G']);
    assert_eq!(run(copy_in(b"2\n")), (vec![b'E', b'Z'], b'E'), "a duplicate key fails the block");
    assert_eq!(run(query("COMMIT")).1, b'I');
    assert_eq!(run(query("COPY c FROM STDIN")).0, vec![b'G']);
    assert_eq!(run(copy_in(b"3\n")), (vec![b'C', b'Z'], b'I'), "outside a block");
    assert_eq!(server.psql("SELECT count(*) FROM c").trim(), "1");
    assert_eq!(server.terminate().0, 0);
}

/// A client that pipelines two queries gets the first one's whole reply
/// while the second waits for a lock (replies go out at `ReadyForQuery`,
/// not only when the server next waits for input).
#[test]
fn a_pipelined_reply_is_not_held_behind_a_waiting_statement() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.psql("CREATE TABLE p (k INT PRIMARY KEY, v INT); INSERT INTO p VALUES (1, 0)");
    let mut holder = raw_session(&server);
    holder.write_all(&query("BEGIN; UPDATE p SET v = 1 WHERE k = 1")).unwrap();
    assert_eq!(until_ready(&mut holder).1, b'T');
    let mut waiter = raw_session(&server);
    let mut both = query("SELECT 41 + 1");
    both.extend(query("UPDATE p SET v = 2 WHERE k = 1"));
    waiter.write_all(&both).unwrap();
    assert_eq!(until_ready(&mut waiter), (vec![b'T', b'D', b'C', b'Z'], b'I'), "the first reply, at once");
    holder.write_all(&query("COMMIT")).unwrap();
    assert_eq!(until_ready(&mut holder).1, b'I');
    assert_eq!(until_ready(&mut waiter), (vec![b'C', b'Z'], b'I'), "the second, once the lock is free");
    assert_eq!(server.psql("SELECT v FROM p"), "2");
    assert_eq!(server.terminate().0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clean_errors_and_never_hurts_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    // Garbage instead of a start-up packet, a truncated one, a huge length.
    let reply = raw(&server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(String::from_utf8_lossy(&reply).contains("08P01"), "a protocol violation is named: {reply:?}");
    raw(&server, &[0, 0, 0, 200, 0, 3]);
    raw(&server, &[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]);
    // A session that sends a message of an unknown type, then one whose
    // length claims 2 GB.
    let mut bad = startup_message();
    bad.extend_from_slice(b"\x01\x00\x00\x00\x04");
    raw(&server, &bad);
    let mut huge = startup_message();
    huge.extend_from_slice(b"Q\x7f\xff\xff\xff");
    raw(&server, &huge);

    let client = connect(&server).await;
    client.batch_execute("CREATE TABLE t (k INT PRIMARY KEY, v TEXT)").await.unwrap();
    // An oversized query and an oversized row are refused, boundedly.
    let long_query = format!("SELECT '{}'", "x".repeat(17 << 20));
    let e = client.batch_execute(&long_query).await.unwrap_err();
    assert!(e.code().is_some(), "{e}");
    let e = client.execute("INSERT INTO t VALUES (1, $1)", &[&"y".repeat(10_000)]).await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::PROGRAM_LIMIT_EXCEEDED), "{e}");
    // Deeply nested expressions hit the parser's depth limit, not the stack.
    let deep = format!("SELECT {}1{}", "(".repeat(100_000), ")".repeat(100_000));
    let e = client.batch_execute(&deep).await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::SYNTAX_ERROR), "{e}");
    // Type errors and unknown tables.
    let e = client.query("SELECT v + 1 FROM t", &[]).await;
    assert!(e.is_ok(), "an empty table has nothing to add to");
    client.batch_execute("INSERT INTO t VALUES (1, 'one')").await.unwrap();
    let e = client.query("SELECT v + 1 FROM t", &[]).await.unwrap_err();
    assert!(e.code().is_some(), "{e}");
    // The parameter's type is inferred from the column it meets: the client
    // refuses to send an integer as text.
    let e = client.query("SELECT * FROM t WHERE v = $1", &[&1i32]).await.unwrap_err();
    assert!(e.to_string().contains("serializing parameter"), "{e}");
    let e = client.batch_execute("SELECT * FROM t WHERE k = 'one'").await.unwrap_err();
    assert!(e.code().is_some(), "{e}");
    // After all that, the connection and the server still work.
    let v: String = client.query_one("SELECT v FROM t WHERE k = 1", &[]).await.unwrap().get(0);
    assert_eq!(v, "one");
    let again = connect(&server).await;
    assert_eq!(again.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get::<_, i64>(0), 1);
    assert_eq!(server.terminate().0, 0);
}

#[test]
fn admin_api_health_checkpoint_metrics_and_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.psql("CREATE TABLE t (k INT PRIMARY KEY)");
    server.psql("INSERT INTO t VALUES (1), (2)");
    let (status, body) = server.http("GET", "/admin/health", None);
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["checks"]["wal"], "ok");
    let (status, body) = server.http("POST", "/admin/checkpoint", None);
    assert_eq!(status, 200, "{body}");
    let checkpoint: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(checkpoint["lsn"].as_str().unwrap().starts_with("0/"), "{body}");
    let (status, metrics) = server.http("GET", "/metrics", None);
    assert_eq!(status, 200);
    for line in [
        "thunderdb_transactions_committed_total 2",
        "thunderdb_checkpoints_total",
        "thunderdb_commit_time_clamps_total",
        "thunderdb_wal_written_bytes_total",
        "thunderdb_buffer_pool_hits_total",
        "thunderdb_buffer_pool_misses_total",
        "thunderdb_recovery_duration_seconds",
        "thunderdb_transactions_aborted_total",
    ] {
        assert!(metrics.contains(line), "no {line} in\n{metrics}");
    }
    assert_eq!(server.terminate().0, 0);

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), "[security]\nadmin_token = \"s3cret\"");
    assert_eq!(server.http("GET", "/admin/health", None).0, 401);
    assert_eq!(server.http("GET", "/metrics", Some("wrong")).0, 401);
    assert_eq!(server.http("GET", "/admin/health", Some("s3cret")).0, 200);
    assert_eq!(server.http("POST", "/admin/checkpoint", Some("s3cret")).0, 200);
    assert_eq!(server.terminate().0, 0);
}

#[test]
fn a_superuser_password_is_required_when_set() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), "[security]\nsuperuser_password = \"hunter2\"");
    let out = server.client("psql", &["-X", "-w", "-c", "SELECT 1"]);
    assert!(!out.status.success());
    let out = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &server.pg_port.to_string(), "-U", "admin", "-X", "-A", "-t", "-c", "SELECT 1"])
        .env("PGPASSWORD", "wrong")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).to_lowercase().contains("password authentication failed"), "{out:?}");
    let out = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &server.pg_port.to_string(), "-U", "admin", "-X", "-A", "-t", "-c", "SELECT 1"])
        .env("PGPASSWORD", "hunter2")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "{out:?}");
    // tokio-postgres speaks SCRAM-SHA-256 only when the server asks for it.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let good = format!("{} password=hunter2", server.conninfo());
        let (client, connection) = tokio_postgres::connect(&good, NoTls).await.unwrap();
        tokio::spawn(connection);
        assert_eq!(client.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
        let bad = format!("{} password=hunter3", server.conninfo());
        let e = tokio_postgres::connect(&bad, NoTls).await.err().expect("a wrong password is refused");
        assert_eq!(e.code(), Some(&SqlState::INVALID_PASSWORD), "{e}");
    });
    assert_eq!(server.terminate().0, 0);
}

/// Past `max_connections` a new client is told "too many clients" with
/// SQLSTATE 53300 and closed, as by PostgreSQL; a flood of idle sockets does
/// not starve the sessions already open, and a freed slot is reusable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_are_refused_with_53300() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), "max_connections = 3");
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(connect(&server).await);
    }
    let error = tokio_postgres::connect(&server.conninfo(), NoTls).await.err().expect("a fourth session is refused");
    assert_eq!(error.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{error}");
    let message = error.as_db_error().expect("a server error").message();
    assert_eq!(message, "sorry, too many clients already (max_connections is 3)");
    let out = server.client("psql", &["-X", "-c", "SELECT 1"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sorry, too many clients already (max_connections is 3)"), "{stderr}");

    // A flood of sockets that never speak: the open sessions still work.
    let flood: Vec<TcpStream> = (0..200).map(|_| TcpStream::connect(("127.0.0.1", server.pg_port)).unwrap()).collect();
    let one: i32 = open[0].query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    drop(flood);

    // A session that ends frees its slot.
    drop(open.pop());
    let mut reconnected = None;
    for _ in 0..50 {
        match tokio_postgres::connect(&server.conninfo(), NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                reconnected = Some(client);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let client = reconnected.expect("a freed slot takes a new session");
    let two: i32 = client.query_one("SELECT 2", &[]).await.unwrap().get(0);
    assert_eq!(two, 2);
    let mut server = server;
    assert!(server.log().contains("refusing a connection: too many clients"));
    assert_eq!(server.terminate().0, 0);
}

/// Every session runs on one thread (`env::SessionThread`), so a statement
/// that looks at a million rows must let the others run between its rows.
/// A second session connects and runs twenty statements while the long
/// one (seconds in a debug build) is running; had the long one held the
/// thread, the second could not even connect until it ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_statement_does_not_hold_up_the_other_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = connect(&server).await;
    client.batch_execute("CREATE TABLE t (id INT PRIMARY KEY, v INT NOT NULL)").await.unwrap();
    client.batch_execute("INSERT INTO t SELECT g, g FROM generate_series(1, 1000) AS g").await.unwrap();
    // A nested-loop join of 1,000 x 1,000 rows that keeps none of them.
    let long = tokio::spawn(async move {
        client.query_one("SELECT count(*) FROM t a JOIN t b ON a.v + b.v < 0", &[]).await.unwrap().get::<_, i64>(0)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let other = connect(&server).await;
    for n in 1..=20i32 {
        let got: i32 = other.query_one("SELECT v FROM t WHERE id = $1", &[&n]).await.unwrap().get(0);
        assert_eq!(got, n);
    }
    assert!(!long.is_finished(), "the short statements waited for the long one to end");
    assert_eq!(long.await.unwrap(), 0);
    assert_eq!(server.terminate().0, 0);
}
