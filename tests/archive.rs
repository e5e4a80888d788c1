//! WAL archiving against the real binary: the page's status endpoint, a
//! backup without WAL restored from the archive, retention, commands that
//! fail, hang or lie, a foreign file in the archive, and a round trip
//! through the `aws` CLI and a local S3 server (moto).
// These tests drive a real child process, its files and shell commands.
#![cfg(not(madsim))]
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{free_port, python_tools, text, thunderdb, Server};

const SEGMENT: u64 = 1 << 20;

/// `[storage]` for a server archiving as `how` says (one line or more).
fn storage(how: &str) -> String {
    format!(
        "[storage]\nwal_segment_size = \"1MB\"\nbuffer_pool_size = \"8MB\"\ncheckpoint_interval = \"500ms\"\n\
         wal_archive_enabled = true\n{how}\n"
    )
}

fn json(server: &Server, path: &str) -> (u16, serde_json::Value) {
    let (code, body) = server.http("GET", path, None);
    (code, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
}

/// Inserts rows `ids` into `t` (created on first use).
fn insert(server: &Server, ids: std::ops::RangeInclusive<i64>) {
    let pad = "x".repeat(1500);
    let rows: Vec<String> = ids.map(|id| format!("({id}, '{pad}')")).collect();
    server.psql("CREATE TABLE IF NOT EXISTS t (id BIGINT PRIMARY KEY, v TEXT)");
    // In statements of 50 rows: one argument may not pass 128 KiB.
    for chunk in rows.chunks(50) {
        server.psql(&format!("INSERT INTO t VALUES {}", chunk.join(", ")));
    }
}

/// Polls the archive status until `done` holds (up to 60 s).
fn wait_status(server: &Server, what: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    for _ in 0..600 {
        let (code, status) = json(server, "/admin/wal/archive/status");
        assert_eq!(code, 200);
        if done(&status) {
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("archive status never showed {what}: {:?}", json(server, "/admin/wal/archive/status"));
}

/// Forces a checkpoint (and with it a segment switch).
fn checkpoint(server: &Server) {
    let (code, body) = server.http("POST", "/admin/checkpoint", None);
    assert_eq!(code, 200, "{body}");
}

/// Takes a backup without WAL and waits for it.
fn backup_without_wal(server: &Server, destination: &Path) -> serde_json::Value {
    let url = format!("http://127.0.0.1:{}/admin/backup", server.http_port);
    let body = serde_json::json!({"destination": destination, "include_wal": false}).to_string();
    let out = Command::new("curl").args(["-s", "-X", "POST", "-d", &body, &url]).output().unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = answer["backup_id"].as_str().unwrap_or_else(|| panic!("{answer}")).to_string();
    for _ in 0..600 {
        let (_, status) = json(server, &format!("/admin/backup/status/{id}"));
        if status["status"] != "running" {
            assert_eq!(status["status"], "completed", "{status}");
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("backup {id} did not end");
}

/// `--restore-pitr latest --restore-backup BACKUP [EXTRA…]` into `target`
/// (created), with a config holding `storage` lines and `envs` set.
fn restore_latest(backup: &Path, target: &Path, storage: &str, extra: &[&str], envs: &[(&str, &str)]) -> Output {
    restore_to("latest", backup, target, storage, extra, envs)
}

/// As [`restore_latest`], to `to`.
fn restore_to(to: &str, backup: &Path, target: &Path, storage: &str, extra: &[&str], envs: &[(&str, &str)]) -> Output {
    std::fs::create_dir_all(target).unwrap();
    let config = target.join("restore.toml");
    let text = format!(
        "data_dir = \"{}\"\nwal_dir = \"{}\"\n[storage]\nwal_segment_size = \"1MB\"\n{storage}\n",
        target.join("data").display(),
        target.join("wal").display()
    );
    std::fs::write(&config, text).unwrap();
    let mut args = vec!["--restore-pitr", to, "--restore-backup", backup.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend(["--config", config.to_str().unwrap()]);
    thunderdb(&args, envs)
}

fn count_after_restore(dir: &Path) -> i64 {
    let server = Server::start(dir);
    let count = server.psql("SELECT count(*) FROM t").parse().unwrap();
    assert_eq!(server.terminate().0, 0);
    count
}

fn segments_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().to_string()).collect())
        .unwrap_or_default();
    names.retain(|name| name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit()));
    names.sort();
    names
}

#[test]
fn archiving_to_a_directory_answers_the_pages_status_and_a_backup_without_wal_restores_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("wal-archive");
    let how = format!("wal_archive_dir = \"{}\"\nwal_archive_retention = \"1s\"", archive.display());
    let server = Server::start_with(&dir.path().join("live"), &storage(&how));
    insert(&server, 1..=100);
    let backup = dir.path().join("full");
    let status = backup_without_wal(&server, &backup);
    assert!(status["start_lsn"].is_string());
    insert(&server, 101..=3000);
    checkpoint(&server);
    let status = wait_status(&server, "everything archived", |s| {
        s["segments_pending"] == 0 && s["total_archived_bytes"].as_u64() > Some(3 * SEGMENT)
    });
    let keys: Vec<&str> = status.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "archive_rate_bytes_per_sec",
            "archiving_enabled",
            "last_archive_time",
            "last_archived_segment",
            "segments_pending",
            "total_archived_bytes"
        ],
        "exactly the page's fields"
    );
    assert_eq!(status["archiving_enabled"], true);
    let last = status["last_archived_segment"].as_str().unwrap();
    assert_eq!(segments_in(&archive).last().map(String::as_str), Some(last), "{status}");
    assert!(status["last_archive_time"].as_str().unwrap().ends_with('Z'), "{status}");
    assert_eq!(status["total_archived_bytes"].as_u64().unwrap() % SEGMENT, 0, "whole segments: {status}");
    let (_, metrics) = server.http("GET", "/metrics", None);
    assert!(metrics.contains("thunderdb_wal_archive_pending_segments 0"), "{metrics}");
    assert!(metrics.contains("thunderdb_wal_archived_segments_total"), "{metrics}");
    let (code, health) = server.http("GET", "/admin/health", None);
    assert_eq!(code, 200, "{health}");
    assert!(health.contains("\"wal_archive\":\"ok\""), "{health}");
    assert_eq!(server.terminate().0, 0);
    let history: Vec<String> = std::fs::read_dir(&archive)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
        .filter(|name| name.ends_with(".backup"))
        .collect();
    assert_eq!(history.len(), 1, "the backup left its history record in the archive");

    // The backup has no WAL: alone it is refused, with the archive it
    // replays every archived commit.
    let target = dir.path().join("restored");
    let refused = restore_latest(&backup, &target, "", &[], &[]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("does not include its WAL"), "{}", text(&refused));
    let out = restore_latest(&backup, &target, "", &["--wal-archive-dir", archive.to_str().unwrap()], &[]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains(&format!("Replaying segment {last}... done (target reached)")), "{log}");
    assert_eq!(count_after_restore(&target), 3000);

    // Retention of one second: every segment before the backup's first
    // goes, and the backup's record says why.
    let live_config = dir.path().join("live").join("thunderdb.toml");
    let dry = thunderdb(&["archive-cleanup", "--dry-run", "--config", live_config.to_str().unwrap()], &[]);
    let report = text(&dry);
    assert!(dry.status.success(), "{report}");
    assert!(report.contains("Oldest point still restorable:"), "{report}");
    let before = segments_in(&archive);
    let first_needed = history[0][..24].to_string();
    let doomed: Vec<&String> = before.iter().filter(|name| **name < first_needed).collect();
    for name in &doomed {
        assert!(report.contains(&format!("would delete {name}")), "{report}");
    }
    assert_eq!(segments_in(&archive), before, "a dry run deletes nothing");
    let real = thunderdb(&["archive-cleanup", "--config", live_config.to_str().unwrap()], &[]);
    assert!(real.status.success(), "{}", text(&real));
    let after = segments_in(&archive);
    assert!(after.iter().all(|name| *name >= first_needed) && after.len() + doomed.len() == before.len(), "{after:?}");
}

#[test]
fn a_failing_archive_command_keeps_the_wal_says_so_and_catches_up_once_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let failing = storage("wal_archive_command = \"echo 'upload denied: bucket policy' >&2; exit 3\"");
    let mut server = Server::start_with(&live, &failing);
    insert(&server, 1..=2000);
    checkpoint(&server);
    let status = wait_status(&server, "pending segments", |s| s["segments_pending"].as_u64() >= Some(2));
    assert!(status["last_archived_segment"].is_null(), "{status}");
    checkpoint(&server);
    server.wait_for("WAL archiving failed");
    assert!(server.log().contains("upload denied: bucket policy"), "the command's stderr is logged");
    let (_, metrics) = server.http("GET", "/metrics", None);
    let failures = metrics.lines().find(|l| l.starts_with("thunderdb_wal_archive_failures_total")).unwrap();
    assert_ne!(failures, "thunderdb_wal_archive_failures_total 0", "{metrics}");
    let wal = segments_in(&live.join("wal"));
    assert_eq!(wal.first().map(String::as_str), Some("000000010000000000000001"), "nothing unarchived is recycled");
    assert_eq!(server.terminate().0, 0);

    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let fixed = storage(&format!("wal_archive_command = \"cp %f {}/%n\"", archive.display()));
    let server = Server::start_with(&live, &fixed);
    let status =
        wait_status(&server, "caught up", |s| s["segments_pending"] == 0 && !s["last_archived_segment"].is_null());
    let archived = segments_in(&archive);
    assert_eq!(archived.first().map(String::as_str), Some("000000010000000000000001"), "{status}");
    assert_eq!(archived.len() as u64, status["total_archived_bytes"].as_u64().unwrap() / SEGMENT);
    assert_eq!(server.terminate().0, 0);
}

#[test]
fn a_hanging_archive_command_is_killed_after_its_timeout_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let how = "wal_archive_command = \"sleep 30\"\nwal_archive_timeout = \"300ms\"";
    let mut server = Server::start_with(&dir.path().join("live"), &storage(how));
    insert(&server, 1..=1000);
    checkpoint(&server);
    server.wait_for("ran longer than 300ms");
    let status = wait_status(&server, "pending", |s| s["segments_pending"].as_u64() >= Some(1));
    assert!(status["last_archived_segment"].is_null(), "{status}");
    assert_eq!(server.terminate().0, 0, "shutdown does not wait for the hung command");
}

#[test]
fn a_command_that_exits_0_without_copying_is_caught_when_the_archive_is_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let server = Server::start_with(&dir.path().join("live"), &storage("wal_archive_command = \"true\""));
    insert(&server, 1..=50);
    let backup = dir.path().join("full");
    backup_without_wal(&server, &backup);
    insert(&server, 51..=1500);
    checkpoint(&server);
    wait_status(&server, "archived (so it says)", |s| {
        s["segments_pending"] == 0 && !s["last_archived_segment"].is_null()
    });
    assert_eq!(server.terminate().0, 0);
    let storage = format!("wal_restore_command = \"cp {}/%n %f\"", archive.display());
    let out = restore_latest(&backup, &dir.path().join("restored"), &storage, &[], &[]);
    let log = text(&out);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("before the backup's end LSN") && log.contains("is missing"), "{log}");
    assert!(log.contains("segment 0000000100000000000000"), "the missing segment is named: {log}");
}

#[test]
fn a_foreign_file_in_the_archive_is_never_overwritten_and_health_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let foreign = archive.join("000000010000000000000001");
    std::fs::write(&foreign, b"another server's segment").unwrap();
    let mut server =
        Server::start_with(&dir.path().join("live"), &storage(&format!("wal_archive_dir = \"{}\"", archive.display())));
    insert(&server, 1..=1000);
    checkpoint(&server);
    server.wait_for("with different contents");
    let (code, health) = server.http("GET", "/admin/health", None);
    assert_eq!(code, 503, "{health}");
    assert!(health.contains("wal_archive") && health.contains("never overwritten"), "{health}");
    let (_, metrics) = server.http("GET", "/metrics", None);
    assert!(!metrics.contains("thunderdb_wal_archive_conflicts_total 0"), "{metrics}");
    assert_eq!(std::fs::read(&foreign).unwrap(), b"another server's segment");
    assert_eq!(server.terminate().0, 0);
}

/// moto's S3 server on a loopback port; killed on drop.
struct S3 {
    child: Child,
    url: String,
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn wal_archived_to_s3_through_the_aws_cli_restores_to_latest_and_to_a_time_through_wal_restore_command() {
    let Some(bin) = python_tools() else {
        eprintln!("SKIPPED: the aws CLI and moto could not be installed (scripts/python-tools.sh failed)");
        return;
    };
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let child = Command::new(bin.join("moto_server"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server");
    let s3 = S3 { child, url };
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let envs = [
        ("PATH", path.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ];
    let aws = |args: &[&str]| {
        Command::new(bin.join("aws")).args(args).args(["--endpoint-url", &s3.url]).envs(envs).output().unwrap()
    };
    let mut made = false;
    for _ in 0..100 {
        if aws(&["s3", "mb", "s3://thunderdb-backups"]).status.success() {
            made = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(made, "the local S3 server did not come up");

    let dir = tempfile::tempdir().unwrap();
    // The page's command shape, pointed at the local server.
    let endpoint = format!("--endpoint-url {}", s3.url);
    let how = format!(
        "wal_archive_command = \"aws s3 cp %f s3://thunderdb-backups/wal/%n {endpoint} --only-show-errors\"\n\
         wal_restore_command = \"aws s3 cp s3://thunderdb-backups/wal/%n %f {endpoint} --only-show-errors\""
    );
    let server = Server::start_env(&dir.path().join("live"), &storage(&how), &envs);
    insert(&server, 1..=50);
    let backup = dir.path().join("full");
    backup_without_wal(&server, &backup);
    insert(&server, 51..=1200);
    std::thread::sleep(Duration::from_millis(300));
    let before_delete = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    std::thread::sleep(Duration::from_millis(300));
    server.psql("DELETE FROM t WHERE id > 600");
    checkpoint(&server);
    let status = wait_status(&server, "archived to S3", |s| {
        s["segments_pending"] == 0 && s["total_archived_bytes"].as_u64() >= Some(2 * SEGMENT)
    });
    assert_eq!(server.terminate().0, 0);
    let listing = String::from_utf8_lossy(&aws(&["s3", "ls", "s3://thunderdb-backups/wal/"]).stdout).to_string();
    let last = status["last_archived_segment"].as_str().unwrap();
    assert!(listing.contains(last) && listing.contains(".backup"), "{listing}");

    let target = dir.path().join("restored");
    let out = restore_latest(&backup, &target, how.lines().nth(1).unwrap(), &[], &envs);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains(&format!("Replaying segment {last}... done (target reached)")), "{log}");
    assert_eq!(count_after_restore(&target), 600);
    // The page's accidental deletion, through the same restore command.
    let target = dir.path().join("before-delete");
    let out = restore_to(&before_delete, &backup, &target, how.lines().nth(1).unwrap(), &[], &envs);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(count_after_restore(&target), 1200);
}

#[test]
fn segments_removed_while_archiving_was_off_are_named_as_a_gap_and_archiving_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let archive = dir.path().join("archive");
    let on = storage(&format!("wal_archive_dir = \"{}\"", archive.display()));
    let server = Server::start_with(&live, &on);
    insert(&server, 1..=700);
    checkpoint(&server);
    wait_status(&server, "archived", |s| s["segments_pending"] == 0 && !s["last_archived_segment"].is_null());
    assert_eq!(server.terminate().0, 0);
    let archived_before = segments_in(&archive);

    // Archiving off: checkpoints recycle and remove segments freely.
    let off = "[storage]\nwal_segment_size = \"1MB\"\nbuffer_pool_size = \"8MB\"\ncheckpoint_interval = \"500ms\"\n";
    let server = Server::start_with(&live, off);
    insert(&server, 701..=4000);
    checkpoint(&server);
    checkpoint(&server);
    assert_eq!(server.terminate().0, 0);
    let next = format!("{:024X}", u128::from_str_radix(archived_before.last().unwrap(), 16).unwrap() + 1);
    assert!(!segments_in(&live.join("wal")).contains(&next), "the test needs {next} recycled");

    let mut server = Server::start_with(&live, &on);
    insert(&server, 4001..=4100);
    checkpoint(&server);
    server.wait_for("were removed before they were archived");
    let status = wait_status(&server, "archiving again", |s| {
        s["segments_pending"] == 0 && s["last_archived_segment"].as_str() > archived_before.last().map(String::as_str)
    });
    assert!(server.log().contains(&next), "the gap's first segment is named");
    assert!(!segments_in(&archive).contains(&next), "{status}");
    assert_eq!(server.terminate().0, 0);
}

#[test]
fn a_damaged_segment_in_the_archive_is_refused_by_name_never_taken_for_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let server =
        Server::start_with(&dir.path().join("live"), &storage(&format!("wal_archive_dir = \"{}\"", archive.display())));
    insert(&server, 1..=50);
    let backup = dir.path().join("full");
    backup_without_wal(&server, &backup);
    insert(&server, 51..=3000);
    checkpoint(&server);
    wait_status(&server, "archived", |s| {
        s["segments_pending"] == 0 && s["total_archived_bytes"].as_u64() >= Some(4 * SEGMENT)
    });
    assert_eq!(server.terminate().0, 0);
    // Zero the first record that begins in the second segment the backup
    // needs, as a lost write would: the archive's later segments prove it
    // was written. (A record, not a fixed offset: a checkpoint's segment
    // switch leaves the rest of a segment unused.)
    let record = std::fs::read_dir(&archive)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
        .find(|name| name.ends_with(".backup"))
        .unwrap();
    let history: serde_json::Value = serde_json::from_slice(&std::fs::read(archive.join(&record)).unwrap()).unwrap();
    let start: thunderdb::wal::Lsn = history["wal_start_lsn"].as_str().unwrap().parse().unwrap();
    let dump = thunderdb(&["wal-dump", archive.to_str().unwrap(), "--from", &start.to_string()], &[]);
    let victim_segno = start.0 / SEGMENT + 1;
    let lsn: thunderdb::wal::Lsn = String::from_utf8_lossy(&dump.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next()?.parse::<thunderdb::wal::Lsn>().ok())
        .find(|lsn| lsn.0 / SEGMENT == victim_segno)
        .unwrap_or_else(|| panic!("no record begins in segment {victim_segno}: {}", text(&dump)));
    let victim = thunderdb::wal::segment_file_name(1, victim_segno, SEGMENT);
    let path = archive.join(&victim);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = (lsn.0 % SEGMENT) as usize;
    bytes[at..at + 64].fill(0);
    std::fs::write(&path, bytes).unwrap();
    let storage = format!("wal_archive_dir = \"{}\"", archive.display());
    let out = restore_latest(&backup, &dir.path().join("restored"), &storage, &[], &[]);
    let log = text(&out);
    assert!(!out.status.success(), "a restore that stops at the damage would lose commits silently: {log}");
    assert!(log.contains(&victim), "the damaged segment is named: {log}");
}
