//! pgbench against the real binary: the TPC-B-like run keeps its balance
//! invariant, and so does a run cut off by `kill -9`, after crash recovery,
//! with every transaction pgbench saw committed still there.
// The server runs only in the normal build (madsim has no real sockets).
#![cfg(not(madsim))]
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::Server;

fn pgbench_init(server: &Server, scale: &str) {
    let out = server.client("pgbench", &["-i", "-I", "dtgp", "-s", scale]);
    assert!(out.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&out.stderr));
}

/// Asserts sum(abalance) = sum(bbalance) = sum(tbalance) = sum(delta) and
/// returns the history's row count.
fn check_balances(server: &Server) -> i64 {
    let sums: Vec<String> = [
        "SELECT sum(abalance) FROM pgbench_accounts",
        "SELECT sum(bbalance) FROM pgbench_branches",
        "SELECT sum(tbalance) FROM pgbench_tellers",
        "SELECT coalesce(sum(delta), 0) FROM pgbench_history",
    ]
    .iter()
    .map(|q| server.psql(q))
    .collect();
    assert!(sums.windows(2).all(|w| w[0] == w[1]), "balances differ: {sums:?}");
    server.psql("SELECT count(*) FROM pgbench_history").parse().unwrap()
}

fn processed(pgbench_stdout: &str) -> i64 {
    pgbench_stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split('/').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in:\n{pgbench_stdout}"))
}

#[test]
fn pgbench_tpcb_keeps_its_balance_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), "");
    pgbench_init(&server, "10");
    assert_eq!(server.psql("SELECT count(*) FROM pgbench_accounts"), "1000000");
    let out = server.client("pgbench", &["-n", "-c", "8", "-j", "2", "-T", "30"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("number of failed transactions: 0"), "{stdout}");
    let done = processed(&stdout);
    assert!(done > 0);
    assert_eq!(check_balances(&server), done, "one history row per transaction");
    assert_eq!(server.terminate().0, 0);
}

#[test]
fn pgbench_survives_kill_9_with_its_invariant_and_every_acknowledged_commit() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    pgbench_init(&server, "2");
    let run = Command::new("pgbench")
        .args(["-h", "127.0.0.1", "-p", &server.pg_port.to_string(), "-U", "admin"])
        .args(["-n", "-c", "8", "-j", "2", "-T", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let pg_port = server.pg_port;
    server.kill_9();
    let out = run.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let acknowledged = processed(&stdout);
    assert!(acknowledged > 0, "{stdout}");

    let mut server = Server::start(dir.path());
    assert_ne!(server.pg_port, pg_port, "fresh ports");
    server.wait_for("Recovery complete in");
    let log = server.log();
    for line in [
        "Crash recovery initiated",
        "Last checkpoint LSN: ",
        "Phase 1 (Analysis): ",
        "Phase 2 (Redo): Replaying from LSN ",
        "Phase 3 (Undo): Rolling back ",
    ] {
        assert!(log.contains(line), "missing {line:?} in\n{log}");
    }
    let history = check_balances(&server);
    assert!(history >= acknowledged, "{history} history rows, but pgbench saw {acknowledged} commits");
    assert_eq!(server.terminate().0, 0);
}
