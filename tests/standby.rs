//! The archive-fed standby against the real binary: it starts from a backup
//! of the primary, follows the archive while the primary writes, turns SQL
//! clients away until promoted, survives a restart, and `thunderdb promote`
//! makes it a primary on a new timeline holding every commit the primary
//! archived (the seed page's "Regional disaster: failover to cross-region
//! replica").
// These tests drive real child processes and their files.
#![cfg(not(madsim))]
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{archive_everything, archiving_storage, backup, insert_rows, text, thunderdb, Server};

/// Waits until the standby has fetched and replayed the primary's last
/// archived segment.
fn wait_for_replay(standby: &Server, primary: &Server) {
    let last = primary.json("/admin/wal/archive/status")["last_archived_segment"].clone();
    for _ in 0..600 {
        let status = standby.json("/admin/cluster/status");
        assert_eq!(status["role"], "standby", "{status}");
        if status["standby"]["last_segment"] == last {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the standby never replayed {last}: {}", standby.json("/admin/cluster/status"));
}

/// Runs `sql` through psql with a libpq multi-host connection string over
/// `ports`, `target_session_attrs=read-write`: the answer of the server
/// libpq picked.
fn read_write(ports: &[u16], sql: &str) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let hosts = vec!["127.0.0.1"; ports.len()].join(",");
    let conninfo = format!(
        "host={hosts} port={} user=admin dbname=thunderdb target_session_attrs=read-write connect_timeout=10",
        ports.join(",")
    );
    let out = Command::new("psql").args([conninfo.as_str(), "-X", "-A", "-t", "-c", sql]).output().unwrap();
    assert!(out.status.success(), "psql {conninfo:?} -c {sql:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_standby_follows_the_archive_and_promotes_to_a_primary_on_a_new_timeline() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let primary = Server::start_with(&dir.path().join("primary"), &archiving_storage(&archive));
    insert_rows(&primary, 1..=100);
    let base = dir.path().join("base");
    backup(&primary, &base);
    insert_rows(&primary, 101..=300);
    archive_everything(&primary);

    // The standby starts from the backup and catches up from the archive.
    let standby_dir = dir.path().join("standby");
    let standby_config = format!("{}[cluster]\nstandby = true\nnode_id = 2\n", archiving_storage(&archive));
    let mut standby =
        Server::start_args(&standby_dir, &standby_config, &[], &["--restore-backup", base.to_str().unwrap()]);
    standby.wait_for("as a standby");
    wait_for_replay(&standby, &primary);

    // Until promoted, SQL clients are turned away with 57P03, and the
    // admin endpoints that need a database say why.
    let refused = standby.client("psql", &["-X", "-c", "SELECT 1"]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("is a standby"), "{}", text(&refused));
    let (code, body) = standby.http("POST", "/admin/checkpoint", None);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("promote"), "{body}");
    let metrics = standby.http("GET", "/metrics", None).1;
    assert!(metrics.contains("thunderdb_cluster_standby 1"), "{metrics}");
    assert!(metrics.contains("thunderdb_standby_replay_lag_seconds"), "{metrics}");
    let status = standby.json("/admin/cluster/status");
    assert!(status["standby"]["lag_seconds"].as_f64().is_some(), "{status}");
    // libpq's multi-host routing skips the standby and finds the primary.
    assert_eq!(read_write(&[standby.pg_port, primary.pg_port], "SHOW transaction_read_only"), "off");
    assert_eq!(read_write(&[standby.pg_port, primary.pg_port], "SELECT count(*) FROM t"), "300");
    assert_eq!(status["node_id"], 2);

    // A restart resumes from its restartpoint; a normal start is refused.
    assert_eq!(standby.terminate().0, 0);
    let plain = dir.path().join("plain.toml");
    std::fs::write(
        &plain,
        format!(
            "data_dir = \"{}\"\nwal_dir = \"{}\"\npg_port = {}\nhttp_port = {}\n",
            standby_dir.join("data").display(),
            standby_dir.join("wal").display(),
            common::free_port(),
            common::free_port()
        ),
    )
    .unwrap();
    let refused = thunderdb(&["--config", plain.to_str().unwrap()], &[]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("standby.signal"), "{}", text(&refused));
    let standby = Server::start_args(&standby_dir, &standby_config, &[], &[]);

    // The primary writes more and stops; the standby is promoted.
    insert_rows(&primary, 301..=400);
    primary.psql("DELETE FROM t WHERE id % 7 = 0");
    archive_everything(&primary);
    let expected = primary.psql("SELECT count(*), sum(id) FROM t");
    let primary_stopped = primary.pg_port;
    assert_eq!(primary.terminate().0, 0);
    let config = standby_dir.join("thunderdb.toml");
    let promoted = thunderdb(&["promote", "--config", config.to_str().unwrap()], &[]);
    assert!(promoted.status.success(), "{}", text(&promoted));
    assert!(text(&promoted).contains("promoted: continuing on timeline 2"), "{}", text(&promoted));
    let mut standby = standby;
    standby.wait_for("ThunderDB is up");
    assert_eq!(standby.psql("SELECT count(*), sum(id) FROM t"), expected);
    let status = standby.json("/admin/cluster/status");
    assert_eq!(status["role"], "leader", "{status}");
    assert_eq!(
        read_write(&[primary_stopped, standby.pg_port], "SELECT count(*) FROM t"),
        expected.split('|').next().unwrap()
    );

    // It accepts writes and archives its new timeline beside the old one.
    insert_rows(&standby, 401..=420);
    archive_everything(&standby);
    assert!(archive.join("00000002.history").exists());
    let again = standby.http("POST", "/admin/promote", None);
    assert_eq!(again.0, 409, "{}", again.1);

    // A second standby, from a backup of the promoted one, follows
    // timeline 2 and promotes to timeline 3.
    let base2 = dir.path().join("base2");
    backup(&standby, &base2);
    let second_dir = dir.path().join("second");
    let mut second =
        Server::start_args(&second_dir, &standby_config, &[], &["--restore-backup", base2.to_str().unwrap()]);
    second.wait_for("as a standby");
    insert_rows(&standby, 421..=460);
    archive_everything(&standby);
    wait_for_replay(&second, &standby);
    let expected = standby.psql("SELECT count(*), sum(id) FROM t");
    assert_eq!(standby.terminate().0, 0);
    let (code, body) = second.http("POST", "/admin/promote", None);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"timeline\":3"), "{body}");
    second.wait_for("ThunderDB is up data_dir");
    assert_eq!(second.psql("SELECT count(*), sum(id) FROM t"), expected);
    assert_eq!(second.terminate().0, 0);

    // The new timeline replays: a point-in-time recovery to latest from
    // the primary's backup follows it to the promoted standby's commits.
    let again = dir.path().join("again");
    let config = common::restore_config(&again);
    let out = common::pitr("latest", &base, &config, &["--wal-archive-dir", archive.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let recovered = Server::start(&again);
    assert_eq!(recovered.psql("SELECT count(*), sum(id) FROM t"), expected);
}

#[test]
fn a_standby_without_a_backup_or_an_archive_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("standby.toml");
    let data = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(
        &config,
        format!("data_dir = \"{}\"\nwal_dir = \"{}\"\n[cluster]\nstandby = true\n", data("data"), data("wal")),
    )
    .unwrap();
    let out = thunderdb(&["--config", config.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("neither `storage.wal_archive_dir` nor"), "{}", text(&out));
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\nwal_dir = \"{}\"\n[storage]\nwal_archive_dir = \"{}\"\n[cluster]\nstandby = true\n",
            data("data"),
            data("wal"),
            data("archive")
        ),
    )
    .unwrap();
    let out = thunderdb(&["--config", config.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--restore-backup BACKUP_DIR"), "{}", text(&out));
}

#[test]
fn a_standby_that_cannot_replay_says_why_and_refuses_to_promote() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let primary = Server::start_with(&dir.path().join("primary"), &archiving_storage(&archive));
    insert_rows(&primary, 1..=50);
    let base = dir.path().join("base");
    backup(&primary, &base);
    insert_rows(&primary, 51..=400);
    archive_everything(&primary);
    assert_eq!(primary.terminate().0, 0);
    // Damage the middle of the last segment archived, where records are.
    let mut segments: Vec<_> = std::fs::read_dir(&archive)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().len() == 24)
        .collect();
    segments.sort();
    let last = segments.last().unwrap();
    let mut bytes = std::fs::read(last).unwrap();
    for b in &mut bytes[4096..4200] {
        *b ^= 0x5a;
    }
    std::fs::write(last, bytes).unwrap();

    let standby_dir = dir.path().join("standby");
    let config = format!("{}[cluster]\nstandby = true\n", archiving_storage(&archive));
    let standby = Server::start_args(&standby_dir, &config, &[], &["--restore-backup", base.to_str().unwrap()]);
    let mut status = serde_json::Value::Null;
    for _ in 0..100 {
        status = standby.json("/admin/cluster/status");
        if !status["standby"]["last_error"].is_null() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let error = status["standby"]["last_error"].as_str().unwrap_or_else(|| panic!("no error reported: {status}"));
    let name = last.file_name().unwrap().to_str().unwrap();
    assert!(error.contains(name), "{error}");
    let (code, body) = standby.http("GET", "/admin/health", None);
    assert_eq!(code, 503, "{body}");
    let (code, body) = standby.http("POST", "/admin/promote", None);
    assert_eq!(code, 500, "{body}");
    assert!(body.contains(name), "{body}");
    // Still a standby, still refusing SQL.
    assert_eq!(standby.json("/admin/cluster/status")["role"], "standby");
}
