//! Point-in-time recovery against the real binary: the page's accidental
//! deletion and step-by-step procedures, `latest` and `lsn:X/Y` targets,
//! timelines (the old timeline's archive is never overwritten, and a second
//! recovery follows the new one), "Testing Recovery" on port 15432, and
//! every refusal with its message.
// These tests drive a real child process and its files.
#![cfg(not(madsim))]
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::{
    archive_everything, archiving_storage, backup, insert_rows, pitr, restore_config, text, thunderdb, Server,
};

/// Archives everything complete, then stops the server.
fn archive_everything_and_stop(server: Server) {
    archive_everything(&server);
    assert_eq!(server.terminate().0, 0);
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn count(dir: &Path) -> i64 {
    let server = Server::start(dir);
    let count = server.psql("SELECT count(*) FROM t").parse().unwrap();
    assert_eq!(server.terminate().0, 0);
    count
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| (e.file_name().to_string_lossy().to_string(), std::fs::read(e.path()).unwrap()))
        .collect()
}

/// Empties a directory, as the page's `rm -rf dir/*` does.
fn clear(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
}

/// The page's `cp -a backup/data/* data/` and `cp -a backup/wal/* wal/`.
fn copy_backup_in(backup: &Path, live: &Path) {
    for part in ["data", "wal"] {
        for entry in std::fs::read_dir(backup.join(part)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), live.join(part).join(entry.file_name())).unwrap();
        }
    }
}

/// The commit records in a WAL directory from `from`, as `wal-dump` prints
/// them: (LSN, the line).
fn commits(dir: &Path, from: &str) -> Vec<(String, String)> {
    let out = thunderdb(&["wal-dump", dir.to_str().unwrap(), "--from", from], &[]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.contains(" COMMIT "))
        .map(|line| (line.split_whitespace().next().unwrap().to_string(), line.to_string()))
        .collect()
}

#[test]
fn accidental_deletion_step_by_step_then_a_new_timeline_that_a_second_recovery_follows() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("wal-archive");
    let live = dir.path().join("live");
    let server = Server::start_with(&live, &archiving_storage(&archive));
    insert_rows(&server, 1..=300);
    let full = dir.path().join("full-2026-01-15");
    backup(&server, &full);
    insert_rows(&server, 301..=1000);
    std::thread::sleep(Duration::from_millis(300));
    let before_delete = now_rfc3339();
    std::thread::sleep(Duration::from_millis(300));
    server.psql("DELETE FROM t WHERE id > 10");
    insert_rows(&server, 5001..=5100);
    archive_everything_and_stop(server);
    let archived_before = files(&archive);

    // The page's step by step: stop (done), clear, copy the backup in,
    // recover with --config, start, health, count.
    let config = live.join("thunderdb.toml");
    clear(&live.join("data"));
    clear(&live.join("wal"));
    copy_backup_in(&full, &live);
    let out = pitr(&before_delete, &full, &config, &["--wal-archive-dir", archive.to_str().unwrap()]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    for line in [
        "[INFO] Starting Point-in-Time Recovery",
        &format!("[INFO] Target time: {before_delete}"),
        "[INFO] Base backup LSN: 0/",
        "[INFO] Phase 1: Restoring base backup... done (",
        "[INFO] Phase 2: Replaying WAL segments...",
        "... done (target reached)",
        "[INFO] Phase 3: Recovery complete",
        "[INFO] Recovered to: ",
        // The DELETE had logged its changes but not its commit at the target.
        "[INFO] Transactions rolled back: 1 (in-progress at recovery point)",
    ] {
        assert!(log.contains(line), "no {line:?} in:\n{log}");
    }
    // 14 statements of 50 rows committed after the backup.
    assert!(log.contains("[INFO] Transactions recovered: 14\n"), "{log}");
    let server = Server::start_with(&live, &archiving_storage(&archive));
    let (code, health) = server.http("GET", "/admin/health", None);
    assert_eq!(code, 200, "{health}");
    assert_eq!(server.psql("SELECT count(*) FROM t"), "1000", "every deleted row is back, nothing after the target");

    // The server goes on on timeline 2; nothing of timeline 1's archive
    // changes, and the history file is archived.
    insert_rows(&server, 2001..=2100);
    archive_everything_and_stop(server);
    let archived_after = files(&archive);
    for (name, bytes) in &archived_before {
        assert!(archived_after.get(name) == Some(bytes), "{name} in the archive changed or went");
    }
    let history = String::from_utf8(archived_after["00000002.history"].clone()).unwrap();
    assert!(history.starts_with("1\t0/") && history.contains(&format!("\tbefore {before_delete}")), "{history}");
    assert!(archived_after.keys().any(|name| name.starts_with("00000002") && name.len() == 24), "{archived_after:?}");

    // A second recovery from the same backup follows timeline 2 by
    // default; --restore-timeline 1 picks the old history.
    let second = dir.path().join("second");
    let out = pitr("latest", &full, &restore_config(&second), &["--wal-archive-dir", archive.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Continuing on timeline 3"), "{}", text(&out));
    assert_eq!(count(&second), 1100);
    let third = dir.path().join("third");
    let out = pitr(
        "latest",
        &full,
        &restore_config(&third),
        &["--wal-archive-dir", archive.to_str().unwrap(), "--restore-timeline", "1"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(count(&third), 110, "timeline 1 to its end: the deletion and the 100 rows after it");
}

#[test]
fn lsn_targets_stop_at_the_last_record_that_begins_at_or_before_them() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("wal-archive");
    let server = Server::start_with(&dir.path().join("live"), &archiving_storage(&archive));
    insert_rows(&server, 1..=100);
    let full = dir.path().join("full");
    let status = backup(&server, &full);
    for id in 101..=110 {
        server.psql(&format!("INSERT INTO t VALUES ({id}, 'one commit each')"));
    }
    archive_everything_and_stop(server);
    let from = status["start_lsn"].as_str().unwrap();
    let commits = commits(&archive, from);
    assert!(commits.len() >= 10, "{commits:?}");
    let fifth: thunderdb::wal::Lsn = commits[commits.len() - 6].0.parse().unwrap();

    // At the fifth insert's commit record: it is in.
    let at = dir.path().join("at");
    let target = format!("lsn:{fifth}");
    let out = pitr(&target, &full, &restore_config(&at), &["--wal-archive-dir", archive.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("Target LSN: {fifth}")), "{}", text(&out));
    assert_eq!(count(&at), 105);
    // Just before it: the fifth insert's row change is replayed, its
    // commit is not, so it is rolled back.
    let before = dir.path().join("before");
    let target = format!("lsn:{}", thunderdb::wal::Lsn(fifth.0 - 8));
    let out = pitr(&target, &full, &restore_config(&before), &["--wal-archive-dir", archive.to_str().unwrap()]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("Transactions rolled back: 1 (in-progress at recovery point)"), "{log}");
    assert_eq!(count(&before), 104);
    // `latest`: everything.
    let latest = dir.path().join("latest");
    let out = pitr("latest", &full, &restore_config(&latest), &["--wal-archive-dir", archive.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(count(&latest), 110);
}

#[test]
fn unreachable_targets_are_refused_in_seconds_naming_the_segment_lsn_or_time() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("wal-archive");
    let server = Server::start_with(&dir.path().join("live"), &archiving_storage(&archive));
    let before_backup = now_rfc3339();
    std::thread::sleep(Duration::from_millis(300));
    insert_rows(&server, 1..=100);
    let full = dir.path().join("full");
    let status = backup(&server, &full);
    insert_rows(&server, 101..=2000);
    archive_everything_and_stop(server);
    let with_archive = ["--wal-archive-dir", archive.to_str().unwrap()];
    let refused = |name: &str, target: &str, extra: &[&str], wanted: &[&str]| {
        let target_dir = dir.path().join(name);
        let out = pitr(target, &full, &restore_config(&target_dir), extra);
        let log = text(&out);
        assert!(!out.status.success(), "{name}: {log}");
        for want in wanted {
            assert!(log.contains(want), "{name}: no {want:?} in:\n{log}");
        }
        let data = target_dir.join("data");
        assert!(!data.join("thunderdb.data").exists(), "{name}: no data page is written before the checks pass");
        target_dir
    };
    // A time before the backup ended.
    refused("early", &before_backup, &with_archive, &["is before the backup's end LSN", &before_backup]);
    // An LSN before the backup's end.
    refused("early-lsn", "lsn:0/10", &with_archive, &["target LSN 0/10 is before the backup's end LSN"]);
    // A time after the last commit archived.
    let future = humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(3600)).to_string();
    refused("future", &future, &with_archive, &["is past the last WAL available", "is not in the archive"]);
    refused("future-lsn", "lsn:FF/0", &with_archive, &["target lsn:FF/0 is past the last WAL available"]);
    // Not a target at all.
    let out = pitr("yesterday", &full, &restore_config(&dir.path().join("garbage")), &with_archive);
    assert!(!out.status.success() && text(&out).contains("RFC 3339"), "{}", text(&out));

    // A gap: a segment in the middle of the archive is gone.
    let segments: Vec<String> = files(&archive).into_keys().filter(|n| n.len() == 24).collect();
    let first_needed = thunderdb::wal::segment_file_name(
        1,
        status["start_lsn"].as_str().unwrap().parse::<thunderdb::wal::Lsn>().unwrap().0 >> 20,
        1 << 20,
    );
    // One with a later segment after it, or it is only a shorter archive
    // (how many segments the inserts fill depends on checkpoint timing).
    let later: Vec<&String> = segments.iter().filter(|n| **n > first_needed).collect();
    assert!(later.len() >= 2, "too few archived segments after {first_needed}: {segments:?}");
    let middle = later[later.len() - 2].clone();
    std::fs::rename(archive.join(&middle), dir.path().join(&middle)).unwrap();
    let started = std::time::Instant::now();
    refused("gap", "latest", &with_archive, &["the WAL archive has a gap", &format!("{middle} is missing")]);
    assert!(started.elapsed() < Duration::from_secs(10), "refused in {:?}", started.elapsed());
    std::fs::rename(dir.path().join(&middle), archive.join(&middle)).unwrap();

    // A damaged segment: a flipped byte in the first record that begins in
    // it (a record, not a fixed offset: a segment switch leaves the rest of
    // a segment unused).
    let (_, segno) = thunderdb::wal::parse_segment_file_name(&middle, 1 << 20).unwrap();
    let dump =
        thunderdb(&["wal-dump", archive.to_str().unwrap(), "--from", status["start_lsn"].as_str().unwrap()], &[]);
    let record: thunderdb::wal::Lsn = String::from_utf8_lossy(&dump.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next()?.parse::<thunderdb::wal::Lsn>().ok())
        .find(|lsn| lsn.0 >> 20 == segno)
        .unwrap_or_else(|| panic!("no record begins in {middle}: {}", text(&dump)));
    let at = (record.0 % (1 << 20)) as usize + 20;
    let path = archive.join(&middle);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[at] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    refused("damaged", "latest", &with_archive, &["the WAL cannot be replayed", &middle]);
    bytes[at] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();

    // Non-empty directories.
    let busy = dir.path().join("busy");
    std::fs::create_dir_all(busy.join("data")).unwrap();
    std::fs::write(busy.join("data").join("notes.txt"), "mine").unwrap();
    let out = pitr("latest", &full, &restore_config(&busy), &with_archive);
    assert!(!out.status.success() && text(&out).contains("is not empty"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(busy.join("data").join("notes.txt")).unwrap(), "mine");

    // Another database's archive.
    let other_archive = dir.path().join("other-archive");
    let other = Server::start_with(&dir.path().join("other"), &archiving_storage(&other_archive));
    insert_rows(&other, 1..=1500);
    archive_everything_and_stop(other);
    refused(
        "foreign",
        "latest",
        &["--wal-archive-dir", other_archive.to_str().unwrap()],
        &["WAL of another database or timeline"],
    );
}

#[test]
fn an_unfinished_recovery_blocks_a_normal_start_and_a_rerun_completes_it() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("wal-archive");
    let server = Server::start_with(&dir.path().join("live"), &archiving_storage(&archive));
    insert_rows(&server, 1..=200);
    let full = dir.path().join("full");
    backup(&server, &full);
    insert_rows(&server, 201..=700);
    archive_everything_and_stop(server);
    let target = dir.path().join("restored");
    let config = restore_config(&target);
    let with_archive = ["--wal-archive-dir", archive.to_str().unwrap()];
    let out = pitr("latest", &full, &config, &with_archive);
    assert!(out.status.success(), "{}", text(&out));
    // What a recovery killed part way leaves: its marker, and replayed
    // files that are no longer the backup's.
    let marker = serde_json::json!({"backup": full, "backup_id": "x", "target": "latest"}).to_string();
    std::fs::write(target.join("data").join("pitr_in_progress.json"), marker).unwrap();
    let out = thunderdb(&["--config", config.to_str().unwrap()], &[]);
    let log = text(&out);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("did not finish") && log.contains("--restore-pitr latest"), "{log}");
    let out = pitr("latest", &full, &config, &with_archive);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!target.join("data").join("pitr_in_progress.json").exists());
    assert_eq!(count(&target), 700);
}

#[test]
fn testing_recovery_into_a_test_config_on_port_15432_and_a_validation_script() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("wal-archive");
    let server = Server::start_with(&dir.path().join("live"), &archiving_storage(&archive));
    insert_rows(&server, 1..=400);
    let full_latest = dir.path().join("full-latest");
    backup(&server, &full_latest);
    insert_rows(&server, 401..=900);
    archive_everything_and_stop(server);
    // The test instance's config: its own directories, port 15432.
    let test = dir.path().join("test");
    std::fs::create_dir_all(&test).unwrap();
    let config = test.join("thunderdb-test.toml");
    let http_port = common::free_port();
    std::fs::write(
        &config,
        format!(
            "pg_port = 15432\nhttp_port = {http_port}\ndata_dir = \"{}\"\nwal_dir = \"{}\"\n\
             [storage]\nwal_segment_size = \"1MB\"\nwal_archive_dir = \"{}\"\n",
            test.join("data").display(),
            test.join("wal").display(),
            archive.display()
        ),
    )
    .unwrap();
    let out = pitr("latest", &full_latest, &config, &[]);
    assert!(out.status.success(), "segments come from the config's archive directory: {}", text(&out));
    let mut child = Command::new(env!("CARGO_BIN_EXE_thunderdb"))
        .args(["--config", config.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let script = test.join("recovery-validation.sql");
    std::fs::write(
        &script,
        "SELECT count(*) AS rows FROM t;\nSELECT min(id), max(id) FROM t;\nSELECT count(*) FROM t WHERE id > 400;\n",
    )
    .unwrap();
    let mut output = None;
    for _ in 0..100 {
        let out = Command::new("psql")
            .args(["-h", "localhost", "-p", "15432", "-U", "admin", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f"])
            .arg(&script)
            .output()
            .unwrap();
        if out.status.success() {
            output = Some(String::from_utf8_lossy(&out.stdout).to_string());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let output = output.expect("psql -f against port 15432");
    assert_eq!(output.lines().collect::<Vec<_>>(), ["900", "1|900", "500"], "{output}");
}
