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
    raft_ports: Vec<u16>,
    nodes: Vec<Option<Server>>,
}

impl Group {
    /// Initialises the database on a single node (`setup` runs on it),
    /// stops it, copies its directories to the two others, and starts all
    /// three as a group.
    fn start(root: &Path, setup: impl FnOnce(&Server)) -> Group {
        let dirs: Vec<PathBuf> = (1..=3).map(|id| root.join(format!("node{id}"))).collect();
        let single = Server::start_with(&dirs[0], STORAGE);
        setup(&single);
        let (code, log) = single.terminate();
        assert_eq!(code, 0, "{log}");
        for dir in &dirs[1..] {
            std::fs::create_dir_all(dir).unwrap();
            for sub in ["data", "wal"] {
                let out = Command::new("cp").arg("-r").arg(dirs[0].join(sub)).arg(dir).output().unwrap();
                assert!(out.status.success(), "{}", text(&out));
            }
        }
        let raft_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut group = Group { dirs, raft_ports, nodes: vec![None, None, None] };
        for index in 0..3 {
            group.restart(index);
        }
        group
    }

    fn config(&self, index: usize) -> String {
        let peers: Vec<String> =
            self.raft_ports.iter().enumerate().map(|(i, port)| format!("\"{}@127.0.0.1:{port}\"", i + 1)).collect();
        format!("{STORAGE}[cluster]\nnode_id = {}\npeers = [{}]\n", index + 1, peers.join(", "))
    }

    fn restart(&mut self, index: usize) {
        let config = self.config(index);
        self.nodes[index] = Some(Server::start_with(&self.dirs[index], &config));
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
    let leader = group.leader();

    // pgbench through the multi-host string reaches the leader.
    let conninfo = group.conninfo();
    let init = Command::new("pgbench").args(["-i", "-I", "dtgp", "-s", "1", "-q", &conninfo]).output().unwrap();
    assert!(init.status.success(), "pgbench -i: {}", text(&init));
    let run = Command::new("pgbench").args(["-n", "-c", "4", "-T", "3", &conninfo]).output().unwrap();
    assert!(run.status.success(), "pgbench: {}", text(&run));
    let before = balances(&group);
    assert!(before.iter().all(|b| *b == before[0]), "balances {before:?}");

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
    let new_leader = group.leader();
    let expected = group.psql("SELECT count(*), sum(id) FROM acked").unwrap();
    let mut order: Vec<usize> = (0..3).filter(|i| *i != new_leader).collect();
    order.insert(0, new_leader);
    for index in order {
        let (code, log) = group.nodes[index].take().unwrap().terminate();
        assert_eq!(code, 0, "{log}");
    }
    for (index, dir) in group.dirs.iter().enumerate() {
        // A copy of the node's directories, opened as a single server.
        let copy = dir.parent().unwrap().join(format!("check{index}"));
        for sub in ["data", "wal"] {
            std::fs::create_dir_all(&copy).unwrap();
            let out = Command::new("cp").arg("-r").arg(dir.join(sub)).arg(&copy).output().unwrap();
            assert!(out.status.success(), "{}", text(&out));
        }
        let single = Server::start_with(&copy, STORAGE);
        assert_eq!(single.psql("SELECT count(*), sum(id) FROM acked"), expected, "node {}", index + 1);
        assert_eq!(single.psql("SELECT sum(abalance) FROM pgbench_accounts"), before[0], "node {}", index + 1);
    }
}
