//! A real `thunderdb` server for tests: started from the built binary with
//! a config in a temp directory, on free ports, its log read as it runs.
// These helpers drive a real child process and its sockets.
#![allow(clippy::disallowed_methods, clippy::disallowed_types, dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running server and the lines it has logged.
pub struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    /// The PostgreSQL wire port.
    pub pg_port: u16,
    /// The admin HTTP port.
    pub http_port: u16,
}

/// A port nobody listens on right now, below the kernel's ephemeral range
/// (32768 and up on Linux): a port the kernel hands out (`bind` to port 0)
/// may be taken by any outgoing connection, a Raft node's to its peers
/// included, before the server binds it. Tests run in parallel processes,
/// so each starts at a point of its own in the range and takes the next
/// port it can bind.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let start = std::process::id().wrapping_mul(7_919).wrapping_add(nanos) % COUNT;
    let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..COUNT {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % COUNT) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + COUNT)
}

impl Server {
    /// Starts a server whose files live in `dir`, with `extra` appended to
    /// its config file (top-level keys; sections may follow).
    pub fn start_with(dir: &Path, extra: &str) -> Server {
        Server::start_env(dir, extra, &[])
    }

    /// As [`start_with`](Self::start_with), with extra environment
    /// variables for the server (e.g. a `PATH` for its archive command).
    pub fn start_env(dir: &Path, extra: &str, envs: &[(&str, &str)]) -> Server {
        Server::start_args(dir, extra, envs, &[])
    }

    /// As [`start_env`](Self::start_env), with extra command-line
    /// arguments (after `--config FILE`).
    pub fn start_args(dir: &Path, extra: &str, envs: &[(&str, &str)], args: &[&str]) -> Server {
        let (pg_port, http_port) = (free_port(), free_port());
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("thunderdb.toml");
        let text = format!(
            "pg_port = {pg_port}\nhttp_port = {http_port}\ndata_dir = \"{}\"\nwal_dir = \"{}\"\n{extra}\n",
            dir.join("data").display(),
            dir.join("wal").display()
        );
        std::fs::write(&config, text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_thunderdb"))
            .args(["--config", config.to_str().unwrap()])
            .args(args)
            .envs(envs.iter().copied())
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
        let mut server = Server { child, lines, seen: Vec::new(), pg_port, http_port };
        server.wait_for("ThunderDB is up");
        server
    }

    /// Starts a server with small segments and pool.
    pub fn start(dir: &Path) -> Server {
        Server::start_with(dir, "[storage]\nwal_segment_size = \"1MB\"\nbuffer_pool_size = \"8MB\"")
    }

    /// Waits (up to 60 s) for a log line containing `text`.
    pub fn wait_for(&mut self, text: &str) {
        while !self.seen.iter().any(|line| line.contains(text)) {
            match self.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no {text:?} in the log:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// What the server has logged so far.
    pub fn log(&mut self) -> String {
        self.seen.extend(self.lines.try_iter());
        self.seen.join("\n")
    }

    /// Sends SIGTERM and returns the exit code and the whole log.
    pub fn terminate(mut self) -> (i32, String) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let code = self.child.wait().unwrap().code().unwrap_or(-1);
        std::thread::sleep(Duration::from_millis(50));
        (code, self.log())
    }

    /// Kills the server with SIGKILL.
    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// A libpq connection string for `tokio-postgres`.
    pub fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=admin dbname=thunderdb", self.pg_port)
    }

    /// Runs `program` (psql, pgbench) against the server with `args`.
    pub fn client(&self, program: &str, args: &[&str]) -> Output {
        Command::new(program)
            .args(["-h", "127.0.0.1", "-p", &self.pg_port.to_string(), "-U", "admin"])
            .args(args)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"))
    }

    /// `psql -X -A -t -c sql`: the unaligned output, asserting success.
    pub fn psql(&self, sql: &str) -> String {
        let out = self.client("psql", &["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]);
        assert!(out.status.success(), "psql -c {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// An HTTP request to the admin API with curl: (status, body).
    pub fn http(&self, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
        let url = format!("http://127.0.0.1:{}{path}", self.http_port);
        let mut args = vec!["-s", "-X", method, "-w", "\n%{http_code}", &url];
        let header;
        if let Some(token) = token {
            header = format!("Authorization: Bearer {token}");
            args.extend(["-H", &header]);
        }
        let out = Command::new("curl").args(&args).output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }
}

/// A server a test did not stop is killed, never left running: it would
/// hold the test's stdout open (and with it the pipe of whoever reads it).
impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the built `thunderdb` with `args` and extra environment variables.
pub fn thunderdb(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_thunderdb")).args(args).envs(envs.iter().copied()).output().unwrap()
}

/// `thunderdb --restore-pitr TARGET --restore-backup BACKUP [EXTRA…] --config CONFIG`.
pub fn pitr(target: &str, backup: &Path, config: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["--restore-pitr", target, "--restore-backup", backup.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend(["--config", config.to_str().unwrap()]);
    thunderdb(&args, &[])
}

/// `n` pseudo-random letters for row `id`: text that does not compress
/// much, so that rows of it make the WAL span segments.
pub fn letters(id: i64, n: usize) -> String {
    let mut x = (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

/// What a command printed: stdout, then stderr.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A config (created in `dir`) for restoring into `dir`'s own data and WAL
/// directories, with 1 MB segments.
pub fn restore_config(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("restore.toml");
    let text = format!(
        "data_dir = \"{}\"\nwal_dir = \"{}\"\n[storage]\nwal_segment_size = \"1MB\"\n",
        dir.join("data").display(),
        dir.join("wal").display()
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// The virtualenv with `aws`, `moto_server` and psycopg, installing it if
/// needed (`scripts/python-tools.sh`); `None` if that install fails.
pub fn python_tools() -> Option<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/python-tools.sh");
    let out = Command::new("bash").arg(script).stderr(Stdio::inherit()).output().ok()?;
    out.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// `[storage]` for a test that archives: 1 MB segments, an 8 MB pool,
/// checkpoints every 500 ms, archiving into `archive`.
pub fn archiving_storage(archive: &Path) -> String {
    format!(
        "[storage]\nwal_segment_size = \"1MB\"\nbuffer_pool_size = \"8MB\"\ncheckpoint_interval = \"500ms\"\n\
         wal_archive_enabled = true\nwal_archive_dir = \"{}\"\n",
        archive.display()
    )
}

impl Server {
    /// `GET path` on the admin API, asserting 200: the JSON answer.
    pub fn json(&self, path: &str) -> serde_json::Value {
        let (code, body) = self.http("GET", path, None);
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// Inserts rows `ids` into `t` (created on first use), 50 per statement,
/// with letters that do not compress much, so that the WAL spans segments.
pub fn insert_rows(server: &Server, ids: std::ops::RangeInclusive<i64>) {
    let rows: Vec<String> = ids.map(|id| format!("({id}, '{}')", letters(id, 1500))).collect();
    server.psql("CREATE TABLE IF NOT EXISTS t (id BIGINT PRIMARY KEY, v TEXT)");
    for chunk in rows.chunks(50) {
        server.psql(&format!("INSERT INTO t VALUES {}", chunk.join(", ")));
    }
}

/// Takes a backup (with its WAL) and waits for it; returns its status.
pub fn backup(server: &Server, destination: &Path) -> serde_json::Value {
    let url = format!("http://127.0.0.1:{}/admin/backup", server.http_port);
    let body = serde_json::json!({ "destination": destination }).to_string();
    let out = Command::new("curl").args(["-s", "-X", "POST", "-d", &body, &url]).output().unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = answer["backup_id"].as_str().unwrap_or_else(|| panic!("{answer}")).to_string();
    for _ in 0..600 {
        let status = server.json(&format!("/admin/backup/status/{id}"));
        if status["status"] != "running" {
            assert_eq!(status["status"], "completed", "{status}");
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("backup {id} did not end");
}

/// A checkpoint (which switches segments), then waits until everything
/// complete is archived.
pub fn archive_everything(server: &Server) {
    let (code, body) = server.http("POST", "/admin/checkpoint", None);
    assert_eq!(code, 200, "{body}");
    for _ in 0..600 {
        if server.json("/admin/wal/archive/status")["segments_pending"] == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("archiving never caught up");
}
