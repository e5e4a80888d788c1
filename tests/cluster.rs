//! A three-node Raft group against the real binary, on loopback: pgbench
//! through a libpq multi-host string, `kill -9` of the leader (a new one
//! serves writes within seconds, with every acknowledged commit), a
//! restarted node catching up, followers that refuse writes naming the
//! leader, and every node's copy holding the same rows.
// These tests drive real child processes and their files.
#![cfg(not(madsim))]
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, text, Server};

const STORAGE: &str =
    "[storage]\nwal_segment_size = \"1MB\"\nbuffer_pool_size = \"8MB\"\ncheckpoint_interval = \"2s\"\n";

/// A group of three nodes started from one initialised database.
struct Group {
    dirs: Vec<PathBuf>,
    storage: String,
    raft_ports: Vec<u16>,
    nodes: Vec<Option<Server>>,
}

/// Copies `from`'s data and WAL directories into `to`.
fn copy_database(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for sub in ["data", "wal"] {
        let out = Command::new("cp").arg("-r").arg(from.join(sub)).arg(to).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
}

impl Group {
    /// Initialises the database on a single node (`setup` runs on it),
    /// stops it, copies its directories to the two others, and starts all
    /// three as a group.
    fn start(root: &Path, setup: impl FnOnce(&Server)) -> Group {
        Group::start_with(root, STORAGE, setup)
    }

    /// As [`Group::start`], with `storage` as every node's `[storage]`.
    fn start_with(root: &Path, storage: &str, setup: impl FnOnce(&Server)) -> Group {
        let dirs: Vec<PathBuf> = (1..=3).map(|id| root.join(format!("node{id}"))).collect();
        let single = Server::start_with(&dirs[0], storage);
        setup(&single);
        let (code, log) = single.terminate();
        assert_eq!(code, 0, "{log}");
        for dir in &dirs[1..] {
            copy_database(&dirs[0], dir);
        }
        let mut group = Group::new(dirs, storage);
        for index in 0..3 {
            group.restart(index);
        }
        group
    }

    /// A group over `dirs`, none of its nodes started.
    fn new(dirs: Vec<PathBuf>, storage: &str) -> Group {
        let raft_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        Group { dirs, storage: storage.to_string(), raft_ports, nodes: vec![None, None, None] }
    }

    fn config(&self, index: usize) -> String {
        let peers: Vec<String> =
            self.raft_ports.iter().enumerate().map(|(i, port)| format!("\"{}@127.0.0.1:{port}\"", i + 1)).collect();
        // Compacting often, so that failovers, restarts and rebuilds run on
        // compacted Raft logs.
        format!(
            "{}[cluster]\nnode_id = {}\npeers = [{}]\nraft_log_compact_entries = 64\n",
            self.storage,
            index + 1,
            peers.join(", ")
        )
    }

    fn restart(&mut self, index: usize) {
        self.start_node(index, &[]);
    }

    fn start_node(&mut self, index: usize, args: &[&str]) {
        let config = self.config(index);
        self.nodes[index] = Some(Server::start_args(&self.dirs[index], &config, &[], args));
    }

    /// Stops every node, the leader first, then opens a copy of each
    /// node's directories as a single server: `sql` answers `expected` on
    /// every one.
    fn stop_and_compare(&mut self, checks: &[(&str, String)]) {
        let leader = self.leader();
        let mut order: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
        order.insert(0, leader);
        for index in order {
            let (code, log) = self.nodes[index].take().unwrap().terminate();
            assert_eq!(code, 0, "{log}");
        }
        for (index, dir) in self.dirs.iter().enumerate() {
            let copy = dir.parent().unwrap().join(format!("check{index}"));
            copy_database(dir, &copy);
            let single = Server::start_with(&copy, STORAGE);
            for (sql, expected) in checks {
                assert_eq!(&single.psql(sql), expected, "node {}: {sql}", index + 1);
            }
        }
    }

    fn node(&self, index: usize) -> &Server {
        self.nodes[index].as_ref().expect("the node runs")
    }

    /// A libpq multi-host string over every node that runs, which finds
    /// the leader.
    fn conninfo(&self) -> String {
        let ports: Vec<String> = self.nodes.iter().flatten().map(|n| n.pg_port.to_string()).collect();
        let hosts = vec!["127.0.0.1"; ports.len()].join(",");
        format!(
            "host={hosts} port={} user=admin dbname=thunderdb target_session_attrs=read-write connect_timeout=5",
            ports.join(",")
        )
    }

    /// Runs `sql` on the leader (found by libpq): its output, or the error.
    fn psql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("psql")
            .args([self.conninfo().as_str(), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(text(&out))
        }
    }

    /// Inserts rows `ids` into `t (id, v)` on the leader, 50 per statement,
    /// each with `width` letters that do not compress much.
    fn insert(&self, ids: std::ops::RangeInclusive<i64>, width: usize) {
        self.leader();
        let rows: Vec<String> = ids.map(|id| format!("({id}, '{}')", common::letters(id, width))).collect();
        for chunk in rows.chunks(50) {
            self.psql(&format!("INSERT INTO t VALUES {}", chunk.join(", "))).unwrap();
        }
    }

    /// Waits (up to 30 s) until some node serves writes; its index.
    fn leader(&self) -> usize {
        for _ in 0..300 {
            for (index, node) in self.nodes.iter().enumerate() {
                if node.as_ref().is_some_and(|n| n.json("/admin/cluster/status")["serving"] == true) {
                    return index;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no node serves writes: {:?}", self.statuses());
    }

    fn statuses(&self) -> Vec<serde_json::Value> {
        self.nodes.iter().flatten().map(|n| n.json("/admin/cluster/status")).collect()
    }

    /// Waits (up to 30 s) until every running node holds and has replayed
    /// the WAL the group committed.
    fn wait_converged(&self) {
        for _ in 0..300 {
            let statuses = self.statuses();
            let leader = statuses.iter().find(|s| s["serving"] == true);
            if let Some(commit) = leader.map(|l| l["commit_lsn"].clone()) {
                let followers = statuses.iter().filter(|s| s["serving"] != true);
                if followers.clone().all(|s| s["wal_end"] == commit && s["replay_lsn"] == commit) {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the nodes never converged: {:?}", self.statuses());
    }
}

fn balances(group: &Group) -> Vec<String> {
    [
        "SELECT sum(abalance) FROM pgbench_accounts",
        "SELECT sum(bbalance) FROM pgbench_branches",
        "SELECT sum(tbalance) FROM pgbench_tellers",
        "SELECT coalesce(sum(delta), 0) FROM pgbench_history",
    ]
    .iter()
    .map(|sql| group.psql(sql).unwrap())
    .collect()
}

#[test]
fn a_group_fails_over_after_kill_9_of_its_leader_and_keeps_every_acknowledged_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut group = Group::start(dir.path(), |single| {
        single.psql("CREATE TABLE acked (id BIGINT PRIMARY KEY)");
    });

    // pgbench through the multi-host string reaches the leader.
    let conninfo = group.conninfo();
    // A machine starved of CPU (the test suite runs in parallel) may miss a
    // heartbeat and elect another leader mid-run, which ends the sessions
    // of the old one: pgbench then fails as any client would, and is run
    // again (its load starts over from scratch).
    let pgbench = |args: &[&str]| {
        let mut tries = Vec::new();
        for _ in 0..3 {
            group.leader();
            let out = Command::new("pgbench").args(args).arg(&conninfo).output().unwrap();
            if out.status.success() {
                return;
            }
            tries.push(text(&out));
        }
        panic!("pgbench {args:?} failed three times: {tries:#?}");
    };
    pgbench(&["-i", "-I", "dtgp", "-s", "1", "-q"]);
    pgbench(&["-n", "-c", "4", "-T", "3"]);
    let leader = group.leader();
    let before = balances(&group);
    assert!(before.iter().all(|b| *b == before[0]), "balances {before:?}");
    // Every node dropped what every voter holds from its Raft log.
    for status in group.statuses() {
        let log = &status["raft_log"];
        assert!(log["first_index"].as_u64().unwrap() > 64, "never compacted: {status}");
        assert!(log["last_index"].as_u64().unwrap() >= log["first_index"].as_u64().unwrap() - 1, "{status}");
    }

    // Followers: read-only to libpq, refuse writes naming the leader, and
    // send admin requests that need the engine to it.
    let follower = (leader + 1) % 3;
    let node = group.node(follower);
    assert_eq!(node.psql("SHOW transaction_read_only"), "on");
    let refused = node.client("psql", &["-X", "-c", "INSERT INTO acked VALUES (0)"]);
    let refusal = text(&refused);
    assert!(!refused.status.success() && refusal.contains("read-only transaction"), "{refusal}");
    assert!(refusal.contains(&format!("the leader is node {}", leader + 1)), "{refusal}");
    let (code, body) = node.http("POST", "/admin/checkpoint", None);
    assert_eq!(code, 503, "{body}");
    assert_eq!(group.node(leader).psql("SHOW transaction_read_only"), "off");
    let (code, body) = group.node(leader).http("POST", "/admin/checkpoint", None);
    assert_eq!(code, 200, "{body}");
    let metrics = group.node(leader).http("GET", "/metrics", None).1;
    assert!(metrics.contains("thunderdb_cluster_leader 1"), "{metrics}");
    assert!(metrics.contains("thunderdb_cluster_replication_lag_bytes{node_id=\"2\"}"), "{metrics}");
    assert!(metrics.contains("thunderdb_cluster_raft_log_entries "), "{metrics}");
    let status = group.node(leader).json("/admin/cluster/status");
    assert_eq!(status["role"], "leader", "{status}");
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3), "{status}");

    // Acknowledged rows, then the leader dies mid-stream.
    let mut acked = Vec::new();
    for id in 1..=40 {
        group.psql(&format!("INSERT INTO acked VALUES ({id})")).unwrap();
        acked.push(id);
    }
    group.nodes[leader].take().unwrap().kill_9();
    let killed = Instant::now();
    let mut id = 41;
    let mut first_write = None;
    while acked.len() < 80 {
        assert!(killed.elapsed() < Duration::from_secs(30), "no write succeeded for 30 s: {:?}", group.statuses());
        if group.psql(&format!("INSERT INTO acked VALUES ({id})")).is_ok() {
            first_write.get_or_insert_with(|| killed.elapsed());
            acked.push(id);
        }
        // A failed insert may have committed: its id is not used again.
        id += 1;
    }
    let failover = first_write.unwrap();
    eprintln!("failover: the first write after kill -9 of the leader succeeded {failover:?} later");
    assert!(failover < Duration::from_secs(10), "failover took {failover:?}");

    let rows: Vec<i64> =
        group.psql("SELECT id FROM acked ORDER BY id").unwrap().lines().map(|l| l.parse().unwrap()).collect();
    for id in &acked {
        assert!(rows.contains(id), "acknowledged row {id} is lost after failover: {rows:?}");
    }
    assert_eq!(balances(&group), before, "pgbench's balances changed across the failover");

    // The killed node comes back as a follower and catches up; then every
    // node's copy, opened on its own, holds the same rows.
    group.restart(leader);
    group.wait_converged();
    let expected = group.psql("SELECT count(*), sum(id) FROM acked").unwrap();
    group.stop_and_compare(&[
        ("SELECT count(*), sum(id) FROM acked", expected),
        ("SELECT sum(abalance) FROM pgbench_accounts", before[0].clone()),
    ]);
}

#[test]
fn a_wiped_follower_is_rebuilt_from_its_peers() {
    let dir = tempfile::tempdir().unwrap();
    let mut group = Group::start(dir.path(), |single| {
        single.psql("CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT)");
    });
    let leader = group.leader();
    group.insert(1..=1000, 1500);

    // A follower loses its data and WAL (its Raft log too).
    let follower = (leader + 1) % 3;
    let (code, log) = group.nodes[follower].take().unwrap().terminate();
    assert_eq!(code, 0, "{log}");
    std::fs::remove_dir_all(group.dirs[follower].join("data")).unwrap();
    std::fs::remove_dir_all(group.dirs[follower].join("wal")).unwrap();
    group.insert(1001..=1500, 1500);

    // Without a database the node refuses to start, saying how to rebuild.
    let config = group.dirs[follower].join("thunderdb.toml");
    let refused = common::thunderdb(&["--config", config.to_str().unwrap()], &[]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("holds no database") && text(&refused).contains("--rebuild-from-peers"));
    group.start_node(follower, &["--rebuild-from-peers"]);
    group.nodes[follower].as_mut().unwrap().wait_for("rebuilt from the leader's snapshot");
    group.insert(1501..=2000, 1500);
    group.wait_converged();

    // The rebuilt node holds everything: it can lead, and every node's copy
    // is the same.
    let (code, log) = group.nodes[leader].take().unwrap().terminate();
    assert_eq!(code, 0, "{log}");
    group.restart(leader);
    group.wait_converged();
    assert_eq!(group.psql("SELECT count(*), sum(id) FROM t").unwrap(), "2000|2001000");
    group.stop_and_compare(&[("SELECT count(*), sum(id), sum(length(v)) FROM t", "2000|2001000|3000000".into())]);
}

#[test]
fn a_whole_group_is_restored_from_a_backup_and_the_archive_to_one_point() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    // Every node archives into the same place; only the leader's engine
    // runs, so only the leader archives.
    let storage = common::archiving_storage(&archive);
    let mut group = Group::start_with(&dir.path().join("old"), &storage, |single| {
        single.psql("CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT)");
    });
    let leader = group.leader();
    group.insert(1..=300, 1000);
    let base = dir.path().join("base");
    common::backup(group.node(leader), &base);
    // A cross-region standby follows the group's archive from that backup.
    let standby_config = format!("{storage}[cluster]\nstandby = true\nnode_id = 9\n");
    let mut standby = Server::start_args(
        &dir.path().join("standby"),
        &standby_config,
        &[],
        &["--restore-backup", base.to_str().unwrap()],
    );
    standby.wait_for("as a standby");
    group.insert(301..=600, 1000);

    // The leader dies; the new one archives on from where it stopped.
    group.nodes[leader].take().unwrap().kill_9();
    group.insert(601..=900, 1000);
    let leader = group.leader();
    common::archive_everything(group.node(leader));
    let expected = group.psql("SELECT count(*), sum(id), sum(length(v)) FROM t").unwrap();
    assert_eq!(expected, "900|405450|900000");
    let last = group.node(leader).json("/admin/wal/archive/status")["last_archived_segment"].clone();
    for index in 0..3 {
        if let Some(node) = group.nodes[index].take() {
            node.kill_9();
        }
    }

    // With the whole group gone, the standby is promoted: it holds every
    // commit the archive holds.
    let caught_up = (0..600).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        standby.json("/admin/cluster/status")["standby"]["last_segment"] == last
    });
    assert!(caught_up, "the standby never replayed {last}: {}", standby.json("/admin/cluster/status"));
    let standby_toml = dir.path().join("standby").join("thunderdb.toml");
    let promoted = common::thunderdb(&["promote", "--config", standby_toml.to_str().unwrap()], &[]);
    assert!(promoted.status.success(), "{}", text(&promoted));
    standby.wait_for("ThunderDB is up data_dir");
    assert_eq!(standby.psql("SELECT count(*), sum(id), sum(length(v)) FROM t"), expected);
    assert_eq!(standby.terminate().0, 0);

    // The whole group is lost. One node is restored to the archive's end
    // (`latest`), the group starts from it (a second node from its copy),
    // and the third rebuilds from its peers.
    let dirs: Vec<PathBuf> = (1..=3).map(|id| dir.path().join(format!("new{id}"))).collect();
    let config = common::restore_config(&dirs[0]);
    let restored = common::pitr("latest", &base, &config, &["--wal-archive-dir", archive.to_str().unwrap()]);
    assert!(restored.status.success(), "{}", text(&restored));
    let archived: Vec<String> =
        std::fs::read_dir(&archive).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    let restored = format!("{}\narchive: {archived:?}", text(&restored));
    copy_database(&dirs[0], &dirs[1]);
    let mut group = Group::new(dirs, &storage);
    group.restart(0);
    group.restart(1);
    group.leader();
    group.start_node(2, &["--rebuild-from-peers"]);
    group.nodes[2].as_mut().unwrap().wait_for("rebuilt from the leader's snapshot");
    let rows = group.psql("SELECT count(*), sum(id), sum(length(v)) FROM t").unwrap();
    assert_eq!(rows, expected, "{restored}");
    group.insert(901..=950, 1000);
    group.wait_converged();
    group.stop_and_compare(&[("SELECT count(*), sum(id), sum(length(v)) FROM t", "950|451725|950000".to_string())]);
}
