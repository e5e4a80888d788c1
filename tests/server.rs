//! The `thunderdb` server process, run for real: start-up with a config
//! file, graceful shutdown on SIGTERM, crash recovery after `kill -9`, and
//! configuration errors that name their source.
// These tests drive a real child process and read its output as it runs.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running server and the lines it has logged.
struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let config = dir.join("thunderdb.toml");
        let text = format!(
            "data_dir = \"{}\"\nwal_dir = \"{}\"\n[storage]\nwal_segment_size = \"1MB\"\nbuffer_pool_size = \"8MB\"\n",
            dir.join("data").display(),
            dir.join("wal").display()
        );
        std::fs::write(&config, text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_thunderdb"))
            .args(["--config", config.to_str().unwrap()])
            .stderr(Stdio::piped())
            .spawn()
            .expect("start thunderdb");
        let stderr = child.stderr.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server { child, lines, seen: Vec::new() };
        server.wait_for("ThunderDB is up");
        server
    }

    fn wait_for(&mut self, text: &str) {
        while !self.seen.iter().any(|line| line.contains(text)) {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no {text:?} in the log:\n{}", self.seen.join("\n")),
            }
        }
    }

    fn log(&self) -> String {
        self.seen.join("\n")
    }

    /// Sends SIGTERM and returns the exit code.
    fn terminate(mut self) -> (i32, String) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let code = self.child.wait().unwrap().code().unwrap_or(-1);
        self.seen.extend(self.lines.try_iter());
        (code, self.log())
    }

    fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

#[test]
fn sigterm_shuts_down_cleanly_and_the_next_start_needs_no_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (code, log) = server.terminate();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("[INFO] shut down cleanly"), "{log}");
    let server = Server::start(dir.path());
    assert!(!server.log().contains("Crash recovery initiated"), "{}", server.log());
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
