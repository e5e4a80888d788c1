//! The `thunderdb` server process, run for real: start-up with a config
//! file, graceful shutdown on SIGTERM, crash recovery after `kill -9`, and
//! configuration errors that name their source.
// These tests drive a real child process and read its output as it runs.
// The server runs only in the normal build (madsim has no real sockets).
#![cfg(not(madsim))]
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::process::Command;

use common::Server;

#[test]
fn sigterm_shuts_down_cleanly_and_the_next_start_needs_no_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (code, log) = server.terminate();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("[INFO] shut down cleanly"), "{log}");
    let mut server = Server::start(dir.path());
    let log = server.log();
    assert!(!log.contains("Crash recovery initiated"), "{log}");
    assert_eq!(server.terminate().0, 0);
}

#[test]
fn after_kill_9_the_next_start_runs_crash_recovery_and_logs_its_lines() {
    let dir = tempfile::tempdir().unwrap();
    Server::start(dir.path()).kill_9();
    let mut server = Server::start(dir.path());
    server.wait_for("Recovery complete in");
    let log = server.log();
    for line in [
        "[INFO] Crash recovery initiated",
        "[INFO] Last checkpoint LSN: 0/",
        "[INFO] Phase 1 (Analysis): Scanning WAL... ",
        "[INFO] Phase 2 (Redo): Replaying from LSN 0/",
        "[INFO] Phase 3 (Undo): Rolling back 0 active transactions... done",
    ] {
        assert!(log.contains(line), "missing {line:?} in:\n{log}");
    }
    let recovered = log.find("Recovery complete").unwrap();
    assert!(log.find("ThunderDB is up").unwrap() > recovered, "recovery runs before the server is up");
    assert_eq!(server.terminate().0, 0);
}

#[test]
fn a_bad_setting_stops_start_up_naming_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[storage]\nwal_archive_enabeld = true\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_thunderdb")).args(["-c", config.to_str().unwrap()]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.toml") && stderr.contains("`storage.wal_archive_enabeld`"), "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_thunderdb")).env("THUNDERDB_MAX_WAL_SIZE", "lots").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("THUNDERDB_MAX_WAL_SIZE") && stderr.contains("\"lots\""), "{stderr}");
}
