//! Online backups against the real binary: the admin API, `--verify-backup`
//! on sound and damaged backups, restoring a compressed backup, the page's
//! cron script and its hardened copy, and the manual procedure.
// These tests drive a real child process, its files and shell scripts.
#![cfg(not(madsim))]
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{restore_config, Server};

/// `(1, 'row'), (2, 'row'), …`
fn values(ids: std::ops::RangeInclusive<i64>) -> String {
    ids.map(|id| format!("({id}, 'row')")).collect::<Vec<_>>().join(", ")
}

fn post(server: &Server, path: &str, body: &str) -> (u16, serde_json::Value) {
    let url = format!("http://127.0.0.1:{}{path}", server.http_port);
    let out = Command::new("curl")
        .args(["-s", "-X", "POST", "-H", "Content-Type: application/json", "-d", body, "-w", "\n%{http_code}", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

fn status(server: &Server, id: &str) -> (u16, serde_json::Value) {
    let (code, body) = server.http("GET", &format!("/admin/backup/status/{id}"), None);
    (code, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
}

/// Starts a backup and waits for it to end; returns its final status.
fn backup(server: &Server, destination: &Path, compress: bool) -> serde_json::Value {
    let body = serde_json::json!({"destination": destination, "include_wal": true, "compress": compress}).to_string();
    let (code, answer) = post(server, "/admin/backup", &body);
    assert_eq!(code, 202, "{answer}");
    let id = answer["backup_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("bk-") && id.len() >= "bk-YYYYMMDD-HHMMSS".len(), "{id}");
    for _ in 0..600 {
        let (code, status) = status(server, &id);
        assert_eq!(code, 200);
        if status["status"] != "running" {
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("backup {id} did not end in 60 s");
}

fn verify(dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_thunderdb")).arg("--verify-backup").arg(dir).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Inserts rows 1, 2, 3, … one transaction each until stopped; returns the
/// ids acknowledged.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<i64>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Writer {
    fn start(server: &Server) -> Writer {
        server.psql("CREATE TABLE load (id BIGINT PRIMARY KEY, pad TEXT)");
        let (stop, acked) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let conninfo = server.conninfo();
        let thread = {
            let (stop, acked) = (stop.clone(), acked.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async move {
                    let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await.unwrap();
                    tokio::spawn(conn);
                    let pad = "x".repeat(300);
                    let mut id = 0i64;
                    while !stop.load(Ordering::Relaxed) {
                        id += 1;
                        let sql = format!("INSERT INTO load VALUES ({id}, '{pad}')");
                        if client.simple_query(&sql).await.is_err() {
                            return;
                        }
                        acked.lock().unwrap().push(id);
                    }
                });
            })
        };
        Writer { stop, acked, thread }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn stop(self) -> Vec<i64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        self.acked.lock().unwrap().clone()
    }
}

fn wait_for_rows(writer: &Writer, n: usize) {
    for _ in 0..600 {
        if writer.acked() >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the writer did not reach {n} rows");
}

/// The ids in `load` on a server started on `dir`.
fn ids_after_restore(dir: &Path) -> Vec<i64> {
    let server = Server::start(dir);
    let ids = server.psql("SELECT id FROM load ORDER BY id");
    let ids = ids.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(server.terminate().0, 0);
    ids
}

fn restore(backup: &Path, config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_thunderdb"))
        .args(["--restore-pitr", "latest", "--restore-backup"])
        .arg(backup)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

#[test]
fn a_compressed_backup_under_write_load_verifies_and_restores_to_a_prefix_of_the_commits() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &dir.path().join("live"),
        "[storage]\nwal_segment_size = \"1MB\"\nbuffer_pool_size = \"8MB\"\ncheckpoint_interval = \"200ms\"",
    );
    let writer = Writer::start(&server);
    wait_for_rows(&writer, 300);
    let before = writer.acked();
    let destination = dir.path().join("backup");
    let done = backup(&server, &destination, true);
    assert_eq!(done["status"], "completed", "{done}");
    let end_lsn = done["end_lsn"].as_str().unwrap().to_string();
    assert!(done["bytes_done"].as_u64().unwrap() > 0 && done["start_lsn"].is_string(), "{done}");
    wait_for_rows(&writer, writer.acked() + 50);
    let acked = writer.stop();
    assert_eq!(server.terminate().0, 0);

    let out = verify(&destination);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("Backup verification: PASSED\n"), "{text}");
    assert!(text.contains(&format!("\nLSN: {end_lsn}\n")), "{text}");
    assert!(text.contains(" (verified)\nWAL segments: ") && text.ends_with("Checksum: OK\n"), "{text}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(destination.join("backup_manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["compress"], true);
    assert!(manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["path"] == "thunderdb.toml" || f["compression"] == "zstd"));
    assert!(std::fs::read_to_string(destination.join("thunderdb.toml")).unwrap().contains("wal_segment_size"));

    // Copying compressed files into place is refused with the way out.
    let copied = dir.path().join("copied");
    std::fs::create_dir_all(copied.join("data")).unwrap();
    for entry in std::fs::read_dir(destination.join("data")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copied.join("data").join(entry.file_name())).unwrap();
    }
    let refused = Command::new(env!("CARGO_BIN_EXE_thunderdb"))
        .arg("--config")
        .arg(restore_config(&copied))
        .args(["--pg-port", "0", "--http-port", "0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("--restore-pitr latest --restore-backup"), "{err}");

    let target = dir.path().join("restored");
    std::fs::create_dir_all(&target).unwrap();
    let out = restore(&destination, &restore_config(&target));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    for line in [
        "[INFO] Starting Point-in-Time Recovery",
        "[INFO] Target time: latest",
        "[INFO] Base backup LSN: ",
        "[INFO] Phase 1: Restoring base backup... done (",
        "[INFO] Phase 2: Replaying WAL segments...",
        "... done (target reached)",
        "[INFO] Phase 3: Recovery complete",
        &format!("(LSN: {end_lsn})"),
        "[INFO] Transactions recovered: ",
        "[INFO] Transactions rolled back: ",
    ] {
        assert!(log.contains(line), "no {line:?} in:\n{log}");
    }
    // Commits are sequential, so the backup holds exactly a prefix of
    // them: everything acknowledged before it started, nothing never
    // acknowledged, and no hole.
    let ids = ids_after_restore(&target);
    assert!(ids.len() >= before, "{} rows restored, {before} were acknowledged before the backup", ids.len());
    assert_eq!(ids, acked[..ids.len()].to_vec(), "the restored rows are not a prefix of the commits");
    assert!(ids.len() < acked.len(), "rows committed after the backup ended were restored");
}

#[test]
fn the_api_refuses_bad_requests_and_reports_unknown_ids() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let cases = [
        ("{not json", "must be JSON"),
        (r#"{"include_wal": true}"#, "destination"),
        (r#"{"destination": "relative/dir"}"#, "absolute"),
        (r#"{"destination": "/x", "compress": "yes"}"#, "compress"),
        (r#"{"destination": "/x", "colour": 1}"#, "colour"),
    ];
    for (body, says) in cases {
        let (code, answer) = post(&server, "/admin/backup", body);
        assert_eq!(code, 400, "{body}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(says), "{body}: {answer}");
    }
    let full = dir.path().join("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("keep.txt"), "precious").unwrap();
    let (code, answer) = post(&server, "/admin/backup", &format!(r#"{{"destination": "{}"}}"#, full.display()));
    assert_eq!(code, 400, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("not empty"), "{answer}");
    assert_eq!(std::fs::read_to_string(full.join("keep.txt")).unwrap(), "precious");
    let (code, answer) = status(&server, "bk-20990101-000000");
    assert_eq!(code, 404, "{answer}");

    // The defaults: include_wal true, compress false. An empty directory
    // is a valid destination.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let done = backup(&server, &empty, false);
    assert_eq!(done["status"], "completed", "{done}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(empty.join("backup_manifest.json")).unwrap()).unwrap();
    assert_eq!((manifest["include_wal"].as_bool(), manifest["compress"].as_bool()), (Some(true), Some(false)));
    let (_, metrics) = server.http("GET", "/metrics", None);
    assert!(metrics.contains("thunderdb_last_backup_status 1"), "{metrics}");
    assert!(!metrics.contains("thunderdb_last_backup_timestamp 0"), "{metrics}");

    // The history survives a restart.
    let id = done["backup_id"].as_str().unwrap().to_string();
    assert_eq!(server.terminate().0, 0);
    let server = Server::start(dir.path());
    let (code, again) = status(&server, &id);
    assert_eq!(code, 200);
    assert_eq!(again["status"], "completed", "{again}");
    let (_, metrics) = server.http("GET", "/metrics", None);
    assert!(metrics.contains("thunderdb_last_backup_status 1"), "{metrics}");
    assert_eq!(server.terminate().0, 0);
}

/// Copies a backup and damages the copy with `damage`; verify must fail
/// and name `names`.
fn damaged(backup: &Path, scratch: &Path, what: &str, names: &str, damage: impl FnOnce(&Path)) {
    let copy = scratch.join(what.replace(' ', "-"));
    assert!(Command::new("cp").arg("-r").arg(backup).arg(&copy).status().unwrap().success());
    damage(&copy);
    let out = verify(&copy);
    let text = stdout(&out);
    assert!(!out.status.success(), "{what}: verify passed:\n{text}");
    assert!(text.starts_with("Backup verification: FAILED\n"), "{what}: {text}");
    assert!(text.contains(names), "{what}: {names:?} not named in:\n{text}");
}

fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = at % bytes.len();
    bytes[at] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn verify_fails_on_any_damage_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("live"));
    server.psql("CREATE TABLE t (id INT PRIMARY KEY, v TEXT)");
    server.psql(&format!("INSERT INTO t VALUES {}", values(1..=200)));
    for compress in [false, true] {
        let backup_dir = dir.path().join(format!("backup-{compress}"));
        assert_eq!(backup(&server, &backup_dir, compress)["status"], "completed");
        assert!(verify(&backup_dir).status.success());
        let z = if compress { ".zst" } else { "" };
        let data = format!("data/main.tdb{z}");
        let scratch = dir.path().join(format!("damaged-{compress}"));
        std::fs::create_dir_all(&scratch).unwrap();
        for at in [0, 5000, 8192 + 100, 1 << 40] {
            damaged(&backup_dir, &scratch, &format!("data bit {at}"), &data, |d| flip(&d.join(&data), at));
        }
        let wal = std::fs::read_dir(backup_dir.join("wal")).unwrap().next().unwrap().unwrap().file_name();
        let wal = format!("wal/{}", wal.to_string_lossy());
        damaged(&backup_dir, &scratch, "wal bit", &wal, |d| flip(&d.join(&wal), 300));
        let control = format!("data/control{z}");
        damaged(&backup_dir, &scratch, "control bit", &control, |d| flip(&d.join(&control), 30));
        damaged(&backup_dir, &scratch, "manifest bit", "backup_manifest.json", |d| {
            flip(&d.join("backup_manifest.json"), 200)
        });
        damaged(&backup_dir, &scratch, "missing manifest", "backup_manifest.json", |d| {
            std::fs::remove_file(d.join("backup_manifest.json")).unwrap()
        });
        damaged(&backup_dir, &scratch, "missing file", &control, |d| std::fs::remove_file(d.join(&control)).unwrap());
        damaged(&backup_dir, &scratch, "extra file", "data/stray", |d| {
            std::fs::write(d.join("data/stray"), "x").unwrap()
        });
        damaged(&backup_dir, &scratch, "truncated data", &data, |d| {
            let f = std::fs::OpenOptions::new().write(true).open(d.join(&data)).unwrap();
            f.set_len(f.metadata().unwrap().len() / 2).unwrap();
        });
    }
    assert_eq!(server.terminate().0, 0);
}

/// The page's script with only its paths, port and sleep changed.
fn page_script(backup_dir: &Path, http_port: u16) -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/page-backup-script.sh"))
        .unwrap()
        .replace("/backups/thunderdb", &backup_dir.display().to_string())
        .replace("localhost:8088", &format!("localhost:{http_port}"))
        .replace("sleep 10", "sleep 1")
}

fn bin_path() -> String {
    let bin = Path::new(env!("CARGO_BIN_EXE_thunderdb")).parent().unwrap().display().to_string();
    format!("{bin}:{}", std::env::var("PATH").unwrap())
}

fn run_script(script: &str, envs: &[(&str, String)]) -> Output {
    let mut command = Command::new("bash");
    command.arg("-c").arg(script).env("PATH", bin_path());
    for (key, value) in envs {
        command.env(key, value);
    }
    command.output().unwrap()
}

#[test]
fn the_pages_cron_script_backs_up_a_server_under_load_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("live"));
    let writer = Writer::start(&server);
    wait_for_rows(&writer, 100);
    let backups = dir.path().join("backups");
    let out = run_script(&page_script(&backups, server.http_port), &[]);
    writer.stop();
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let done = text.find("Backup completed successfully").expect(&text);
    let block = text.find("Backup verification: PASSED\n").expect(&text);
    assert!(done < block, "{text}");
    assert!(text.contains("Checksum: OK\n") && text.contains("Backup process complete"), "{text}");
    assert_eq!(server.terminate().0, 0);
}

#[test]
fn the_hardened_cron_script_fails_with_the_servers_message_where_the_pages_polls_forever() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("live"));
    let backups = dir.path().join("backups");
    let script =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/cron/thunderdb-backup.sh")).unwrap();
    let envs = [
        ("THUNDERDB_ADMIN_URL", format!("http://localhost:{}", server.http_port)),
        ("BACKUP_DIR", backups.display().to_string()),
        ("POLL_SECONDS", "1".to_string()),
        ("THUNDERDB_BACKUP_TIMEOUT", "120".to_string()),
    ];
    let out = run_script(&script, &envs);
    assert!(out.status.success(), "{}\n{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(stdout(&out).contains("Backup verification: PASSED"), "{}", stdout(&out));

    // Tonight's destination now exists and is not empty: the server says so.
    let out = run_script(&script, &envs);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("HTTP 400") && err.contains("not empty"), "{err}");

    // The page's script, on the same refusal, polls an empty id forever.
    let mut page = Command::new("bash")
        .arg("-c")
        .arg(page_script(&backups, server.http_port))
        .env("PATH", bin_path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(page.try_wait().unwrap().is_none(), "the page's script was expected to keep polling");
    page.kill().unwrap();
    page.wait().unwrap();
    assert_eq!(server.terminate().0, 0);
}

#[test]
fn the_manual_backup_procedure_gives_a_copy_that_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let server = Server::start(&live);
    server.psql("CREATE TABLE load (id BIGINT PRIMARY KEY, pad TEXT)");
    server.psql(&format!("INSERT INTO load VALUES {}", values(1..=500)));
    let (code, body) = server.http("POST", "/admin/checkpoint", None);
    assert_eq!(code, 200, "{body}");
    let copy = dir.path().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    for sub in ["data", "wal"] {
        assert!(Command::new("cp").arg("-a").arg(live.join(sub)).arg(copy.join(sub)).status().unwrap().success());
    }
    std::fs::copy(live.join("thunderdb.toml"), copy.join("thunderdb.toml")).unwrap();
    server.psql("INSERT INTO load VALUES (501, 'after the copy')");
    assert_eq!(server.terminate().0, 0);
    let ids = ids_after_restore(&copy);
    assert_eq!(ids, (1..=500).collect::<Vec<i64>>());
}
