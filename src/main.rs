//! The `thunderdb` command.
//!
//! With no subcommand it runs the server: the engine opens (recovering after
//! an unclean stop) with the configuration from the embedded defaults, the
//! `--config` file, `THUNDERDB_*` variables and flags, and runs until SIGTERM
//! or SIGINT, when it shuts down cleanly. `wal-dump` inspects a WAL
//! directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use clap::{Parser, Subcommand};

/// mimalloc: with glibc's allocator, sessions on different threads contend
/// for its arenas' locks (about a sixth of the CPU under `pgbench -S` went
/// to malloc and free, and to waiting for them). See docs/performance.md.
#[cfg(not(madsim))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use thunderdb::env::{Fs, RealFs};
use thunderdb::storage::Op;
use thunderdb::wal::{parse_segment_file_name, Lsn, Record, RecordKind, WalOptions, WalReader};

/// ThunderDB: a PostgreSQL-wire database that does not lose data.
#[derive(Parser, Debug)]
#[command(name = "thunderdb", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The TOML config file (settings: docs/configuration.md).
    #[arg(short = 'c', long = "config", value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Overrides `listen_addr`.
    #[arg(long)]
    listen_addr: Option<String>,
    /// Overrides `pg_port`.
    #[arg(long)]
    pg_port: Option<String>,
    /// Overrides `http_port`.
    #[arg(long)]
    http_port: Option<String>,
    /// Overrides `data_dir`.
    #[arg(long)]
    data_dir: Option<String>,
    /// Overrides `wal_dir`.
    #[arg(long)]
    wal_dir: Option<String>,
    /// Verify the backup in DIR (its manifest, every checksum, and a replay
    /// of its WAL into a scratch copy), print the result and exit.
    #[arg(long, value_name = "DIR")]
    verify_backup: Option<PathBuf>,
    /// Restore `--restore-backup` into the configured directories and
    /// replay its WAL and the archive's to TARGET (an RFC 3339 time,
    /// `latest`, or `lsn:X/Y`), then exit.
    #[arg(long, value_name = "TARGET", requires = "restore_backup")]
    restore_pitr: Option<String>,
    /// The backup directory `--restore-pitr` starts from; without
    /// `--restore-pitr`, the backup a standby (`[cluster] standby = true`)
    /// starts from: it is restored into the empty data and WAL directories
    /// and the server starts following the archive.
    #[arg(long, value_name = "DIR")]
    restore_backup: Option<PathBuf>,
    /// On a node of a Raft group: move its data and WAL directories aside
    /// (if they hold anything; its Raft log is kept), restore a snapshot
    /// of the database from the group's leader (an online backup,
    /// streamed over the Raft port), then start and catch up from the
    /// log. For a node whose data is lost or fails its checksums.
    #[arg(long)]
    rebuild_from_peers: bool,
    /// Where `--restore-pitr` reads archived WAL segments.
    #[arg(long, value_name = "DIR", requires = "restore_pitr")]
    wal_archive_dir: Option<PathBuf>,
    /// The timeline `--restore-pitr` follows (default: the newest in the
    /// archive that passes through the backup).
    #[arg(long, value_name = "N", requires = "restore_pitr")]
    restore_timeline: Option<u32>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the records of a WAL directory, like pg_waldump.
    WalDump {
        /// The WAL directory (e.g. ./thunderdb-data/wal).
        dir: PathBuf,
        /// Start at this LSN (a record boundary, e.g. a checkpoint's redo
        /// point). Default: the start of the log, if segment 1 is present.
        #[arg(long)]
        from: Option<Lsn>,
        /// The timeline to read. Default: the highest in the directory.
        #[arg(long)]
        timeline: Option<u32>,
    },
    /// Promote the standby the config describes: it replays what the
    /// archive holds, ends recovery on a new timeline and accepts writes.
    /// Asks the running server (`POST /admin/promote` on its `http_port`).
    Promote,
    /// Apply `wal_archive_retention` to `wal_archive_dir`: delete the
    /// archived WAL and backup records no point of the retention window
    /// needs, and print the oldest point still restorable.
    ArchiveCleanup {
        /// Only print what would be deleted, and why.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::WalDump { dir, from, timeline }) => match wal_dump(&dir, from, timeline) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("thunderdb wal-dump: {message}");
                ExitCode::FAILURE
            }
        },
        Some(Command::ArchiveCleanup { dry_run }) => archive_cleanup(&cli, dry_run),
        Some(Command::Promote) => promote(&cli),
        None if cli.verify_backup.is_some() => verify_backup(cli.verify_backup.as_deref().expect("checked")),
        None if cli.restore_pitr.is_some() => restore(&cli),
        None => serve(&cli),
    }
}

#[cfg(not(madsim))]
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| {
        eprintln!("thunderdb: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

/// `--verify-backup DIR`: prints the verification block; exits 0 only on
/// PASSED. The replay runs in a temporary directory, removed afterwards.
#[cfg(not(madsim))]
fn verify_backup(dir: &Path) -> ExitCode {
    use std::io::IsTerminal;
    use thunderdb::backup::verify::{verify, Scratch};
    use thunderdb::env::RealClock;
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let scratch_dir = std::env::temp_dir().join(format!("thunderdb-verify-{}", std::process::id()));
    let fs: Arc<dyn Fs> = Arc::new(RealFs);
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("verifying {bar:40} {bytes}/{total_bytes} ({eta})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let report = runtime.block_on(async {
        let scratch = Scratch { fs: fs.clone(), dir: scratch_dir.clone() };
        let mut progress = |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        };
        verify(fs.as_ref(), dir, &scratch, Arc::new(RealClock::new()), &mut progress).await
    });
    bar.finish_and_clear();
    remove_scratch(&scratch_dir);
    print!("{}", report.render());
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Removes the verifier's scratch directory (a tree the process made).
#[cfg(not(madsim))]
#[allow(clippy::disallowed_methods)] // the CLI's own temporary directory, not engine I/O
fn remove_scratch(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("thunderdb: could not remove the scratch directory {}: {e}", dir.display());
        }
    }
}

/// `--restore-pitr TARGET --restore-backup DIR`: a point-in-time recovery
/// into the configured directories (`thunderdb::backup::pitr`), then exit.
#[cfg(not(madsim))]
fn restore(cli: &Cli) -> ExitCode {
    use std::io::IsTerminal;
    use thunderdb::archive::source::ArchiveSource;
    use thunderdb::backup::pitr::{point_in_time_recovery, PitrRequest, Target};
    use thunderdb::env::{Env, RealClock, ShellCommands};
    let config = match config_or_exit(cli) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let text = cli.restore_pitr.as_deref().expect("checked");
    let target: Target = match text.parse() {
        Ok(target) => target,
        Err(message) => {
            eprintln!("thunderdb: --restore-pitr: {message}");
            return ExitCode::from(2);
        }
    };
    let source = match &cli.wal_archive_dir {
        Some(dir) => Some(ArchiveSource::Dir(dir.clone())),
        None => ArchiveSource::configured(&config.storage.wal_archive_dir, &config.storage.wal_restore_command),
    };
    let request = PitrRequest {
        backup: cli.restore_backup.clone().expect("clap requires it"),
        target,
        source,
        timeline: cli.restore_timeline,
        engine: config.engine(),
    };
    thunderdb::server::logging::init();
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let fs: Arc<dyn Fs> = Arc::new(RealFs);
    let env =
        Env::new(fs, Arc::new(RealClock::new()), u64::from(std::process::id())).with_commands(Arc::new(ShellCommands));
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} fetched {pos} WAL segments ({per_sec}) {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut progress = |name: &str| {
        bar.inc(1);
        bar.set_message(name.to_string());
    };
    let result = runtime.block_on(point_in_time_recovery(&env, &request, &mut progress));
    bar.finish_and_clear();
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("point-in-time recovery refused: {message}");
            eprintln!("thunderdb: point-in-time recovery refused: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(madsim)]
fn verify_backup(_: &Path) -> ExitCode {
    eprintln!("thunderdb: --verify-backup does not run in the madsim build; use the normal build");
    ExitCode::from(2)
}

#[cfg(madsim)]
fn restore(_: &Cli) -> ExitCode {
    eprintln!("thunderdb: --restore-pitr does not run in the madsim build; use the normal build");
    ExitCode::from(2)
}

/// `archive-cleanup [--dry-run]`: plans (and without `--dry-run`
/// applies) the retention of the archive directory.
#[cfg(not(madsim))]
fn archive_cleanup(cli: &Cli, dry_run: bool) -> ExitCode {
    use thunderdb::archive::{cleanup, ArchiveMode};
    use thunderdb::env::{Clock, RealClock};
    let config = match config_or_exit(cli) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let dir = match config.storage.archive_mode() {
        Ok(Some(ArchiveMode::Dir(dir))) => dir,
        Ok(Some(ArchiveMode::Command(_))) => {
            eprintln!(
                "thunderdb archive-cleanup: archiving goes through wal_archive_command, so the archive is not a \
                 directory this command can clean; let the object store's lifecycle rules expire old WAL \
                 (docs/backup.md, \"Retention\")"
            );
            return ExitCode::from(2);
        }
        Ok(None) | Err(_) if !config.storage.wal_archive_dir.trim().is_empty() => {
            PathBuf::from(config.storage.wal_archive_dir.trim())
        }
        _ => {
            eprintln!("thunderdb archive-cleanup: no archive directory is configured (storage.wal_archive_dir)");
            return ExitCode::from(2);
        }
    };
    let retention = config.storage.wal_archive_retention.0;
    let fs = RealFs;
    let plan = match cleanup::plan(&fs, &dir, retention, RealClock::new().wall_micros()) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("thunderdb archive-cleanup: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "Archive {}: retention {} (window from {})",
        dir.display(),
        humantime::format_duration(retention),
        plan.window_start
    );
    if !dry_run {
        if let Err(e) = cleanup::apply(&fs, &dir, &plan) {
            eprintln!("thunderdb archive-cleanup: {e}");
            return ExitCode::FAILURE;
        }
    }
    print!("{}", plan.render(!dry_run));
    ExitCode::SUCCESS
}

#[cfg(madsim)]
fn archive_cleanup(_: &Cli, _: bool) -> ExitCode {
    eprintln!("thunderdb: archive-cleanup does not run in the madsim build; use the normal build");
    ExitCode::from(2)
}

/// Loads the configuration; an error names the file, variable or flag and
/// the key.
fn load_config(cli: &Cli) -> Result<thunderdb::server::config::Config, String> {
    let text = match &cli.config {
        Some(path) => Some(read_text(path).map_err(|e| format!("config file {}: {e}", path.display()))?),
        None => None,
    };
    let file = cli.config.as_deref().zip(text.as_deref());
    let env: Vec<(String, String)> = std::env::vars().filter(|(name, _)| name.starts_with("THUNDERDB_")).collect();
    let flags: Vec<(&str, String)> = [
        ("listen_addr", &cli.listen_addr),
        ("pg_port", &cli.pg_port),
        ("http_port", &cli.http_port),
        ("data_dir", &cli.data_dir),
        ("wal_dir", &cli.wal_dir),
    ]
    .into_iter()
    .filter_map(|(key, value)| value.clone().map(|value| (key, value)))
    .collect();
    thunderdb::server::config::load(file, &env, &flags).map_err(|e| e.to_string())
}

/// The configuration, or the exit code after saying why it is invalid.
#[cfg(not(madsim))]
fn config_or_exit(cli: &Cli) -> Result<thunderdb::server::config::Config, ExitCode> {
    load_config(cli).map_err(|message| {
        eprintln!("thunderdb: invalid configuration: {message}");
        ExitCode::from(2)
    })
}

fn read_text(path: &Path) -> std::io::Result<String> {
    let file = RealFs.open(path)?;
    let mut bytes = vec![0; file.len()? as usize];
    file.read_exact_at(&mut bytes, 0)?;
    String::from_utf8(bytes).map_err(std::io::Error::other)
}

#[cfg(not(madsim))]
fn serve(cli: &Cli) -> ExitCode {
    let config = match config_or_exit(cli) {
        Ok(config) => config,
        Err(code) => return code,
    };
    thunderdb::server::logging::init();
    if let Some(backup) = &cli.restore_backup {
        use thunderdb::env::{Env, RealClock};
        if !config.cluster.standby {
            eprintln!(
                "thunderdb: --restore-backup without --restore-pitr starts a standby, and the config does not say \
                 `[cluster] standby = true`; to restore to a point in time, add --restore-pitr TARGET"
            );
            return ExitCode::from(2);
        }
        let env = Env::new(Arc::new(RealFs), Arc::new(RealClock::new()), u64::from(std::process::id()));
        if let Err(message) = thunderdb::cluster::standby::restore_base(&env, &config.engine(), backup) {
            tracing::error!("restoring the standby's backup failed: {message}");
            eprintln!("thunderdb: restoring the standby's backup failed: {message}");
            return ExitCode::FAILURE;
        }
    }
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    if cli.rebuild_from_peers {
        use thunderdb::env::{Env, RealClock};
        let env = Env::new(Arc::new(RealFs), Arc::new(RealClock::new()), u64::from(std::process::id()));
        if let Err(message) = runtime.block_on(thunderdb::server::cluster::rebuild(&env, &config)) {
            tracing::error!("rebuilding the node from its peers failed: {message}");
            eprintln!("thunderdb: rebuilding the node from its peers failed: {message}");
            return ExitCode::FAILURE;
        }
    }
    // The handlers are installed before the server says it is up, so a
    // signal sent as soon as it is up is a clean stop, never a kill.
    let signals = match runtime.block_on(async { shutdown_signals() }) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("thunderdb: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(thunderdb::server::run(config, signals)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// A future that resolves on SIGTERM or SIGINT, with both handlers
/// installed when this returns.
#[cfg(not(madsim))]
fn shutdown_signals() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

/// The server needs real sockets and signals; the madsim build drives the
/// engine through the simulator instead.
#[cfg(madsim)]
fn serve(cli: &Cli) -> ExitCode {
    if let Err(message) = load_config(cli) {
        eprintln!("thunderdb: invalid configuration: {message}");
    }
    eprintln!("thunderdb: the server does not run in the madsim build; use the normal build");
    ExitCode::from(2)
}

/// `thunderdb promote`: asks the running standby to promote itself and
/// prints its answer.
#[cfg(not(madsim))]
fn promote(cli: &Cli) -> ExitCode {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = match config_or_exit(cli) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let addr = format!("{}:{}", config.listen_addr, config.http_port);
    let token = config.security.admin_token.trim().to_string();
    let answer = runtime.block_on(async {
        let mut stream =
            tokio::net::TcpStream::connect(&addr).await.map_err(|e| format!("connecting to {addr}: {e}"))?;
        let auth = if token.is_empty() { String::new() } else { format!("Authorization: Bearer {token}\r\n") };
        let request = format!(
            "POST /admin/promote HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("writing to {addr}: {e}"))?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.map_err(|e| format!("reading from {addr}: {e}"))?;
        Ok::<_, String>(String::from_utf8_lossy(&response).to_string())
    });
    let response = match answer {
        Ok(response) => response,
        Err(message) => {
            eprintln!("thunderdb promote: {message} (is the standby running, with this config's http_port?)");
            return ExitCode::FAILURE;
        }
    };
    let status = response.split_whitespace().nth(1).unwrap_or("");
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    if status == "200" {
        println!(
            "promoted: continuing on timeline {} from {}; {} transaction(s) open there rolled back; last commit {}",
            json["timeline"],
            json["switch_lsn"].as_str().unwrap_or("?"),
            json["rolled_back"],
            json["last_commit_time"].as_str().unwrap_or("none")
        );
        ExitCode::SUCCESS
    } else {
        let error = json["error"].as_str().map_or_else(|| body.to_string(), str::to_string);
        eprintln!("thunderdb promote: HTTP {status}: {error}");
        ExitCode::FAILURE
    }
}

#[cfg(madsim)]
fn promote(_: &Cli) -> ExitCode {
    eprintln!("thunderdb: promote does not run in the madsim build; use the normal build");
    ExitCode::from(2)
}

/// Finds the segment size and timeline from the files in `dir`: segments are
/// preallocated, so each file's length is the segment size.
fn detect(fs: &dyn Fs, dir: &Path, timeline: Option<u32>) -> Result<(WalOptions, Vec<u64>), String> {
    let names = fs.list(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let first = names
        .iter()
        // Any segment name parses under the smallest segment size.
        .find(|name| parse_segment_file_name(name, 1024).is_some())
        .ok_or_else(|| format!("no WAL segment files in {}", dir.display()))?;
    let size = fs.open(&dir.join(first)).and_then(|f| f.len()).map_err(|e| format!("{first}: {e}"))?;
    let opts = WalOptions::new(dir).with_segment_size(size);
    opts.validate().map_err(|e| format!("{first} is {size} bytes, not a WAL segment: {e}"))?;
    let segments: Vec<(u32, u64)> = names.iter().filter_map(|n| parse_segment_file_name(n, size)).collect();
    let timeline = match timeline {
        Some(timeline) => timeline,
        None => segments.iter().map(|(t, _)| *t).max().expect("at least one segment"),
    };
    // Below its switch points a timeline's log is its ancestors' segments.
    let history = thunderdb::wal::read_history(fs, dir, timeline)?.map(|h| h.switches).unwrap_or_default();
    let opts = WalOptions { timeline, history, ..opts };
    let segnos = segments.iter().filter(|(t, s)| opts.owns_segment(*t, *s)).map(|(_, s)| *s).collect();
    Ok((opts, segnos))
}

fn wal_dump(dir: &Path, from: Option<Lsn>, timeline: Option<u32>) -> Result<(), String> {
    let fs: Arc<dyn Fs> = Arc::new(RealFs);
    let (opts, segnos) = detect(fs.as_ref(), dir, timeline)?;
    let start = match from {
        Some(lsn) => lsn,
        None if segnos.contains(&opts.segno(opts.first_lsn())) => opts.first_lsn(),
        None => {
            let oldest = segnos.iter().min().map(|s| opts.file_name(*s)).unwrap_or_default();
            return Err(format!(
                "segment 1 is gone (oldest is {oldest}), so the first record boundary is unknown: pass --from LSN"
            ));
        }
    };
    if start.0 % 8 != 0 {
        return Err(format!("--from {start} is not a record boundary (records start at multiples of 8)"));
    }
    println!("WAL {} timeline {} segment size {} bytes, from {start}", dir.display(), opts.timeline, opts.segment_size);
    let mut reader = WalReader::new(fs, opts, start);
    let mut count = 0u64;
    while let Some((lsn, record)) = reader.next_record().map_err(|e| e.to_string())? {
        count += 1;
        let mut line = format!(
            "{lsn:>12} {:<6} xid {:<6} prev {:<10} len {}",
            kind_name(record.kind),
            record.xid,
            record.prev_lsn.to_string(),
            record.payload.len()
        );
        if let Some(op) = describe_op(&record) {
            line.push_str(&format!(" {op}"));
        }
        if let Some(micros) = record.commit_time_micros() {
            let time = UNIX_EPOCH + Duration::from_micros(micros);
            line.push_str(&format!(" time {}", humantime::format_rfc3339_micros(time)));
        }
        println!("{line}");
    }
    let end = reader.end().expect("the reader reached the end");
    println!("end of log at {} ({count} records)", end.lsn());
    Ok(())
}

/// A storage record's op in a few words.
fn describe_op(record: &Record) -> Option<String> {
    if record.kind != RecordKind::Data {
        return None;
    }
    let Ok(op) = Op::decode(&record.payload) else { return Some("(not a storage record)".into()) };
    let row = |table: u32, page: u32, key: &[u8], value: usize| {
        format!("table {table} page {page} key {} value {value} bytes", hex(key))
    };
    Some(match op {
        Op::PageImages { images } => {
            let pages: Vec<String> = images.iter().map(|(page, _)| page.to_string()).collect();
            format!("PAGE IMAGES {}", pages.join(","))
        }
        Op::PageChanges { images, deltas } => {
            let pages: Vec<String> = images.iter().map(|(page, _)| page.to_string()).collect();
            let changed: Vec<String> =
                deltas.iter().map(|d| format!("{} ({} runs)", d.page_no, d.runs.len())).collect();
            format!("PAGE CHANGES images {} deltas {}", pages.join(","), changed.join(","))
        }
        Op::Insert { table, page_no, key, value } => format!("INSERT {}", row(table, page_no, &key, value.len())),
        Op::InsertBatch { table, page_no, rows } => {
            let bytes: usize = rows.iter().map(|(key, value)| key.len() + value.len()).sum();
            let first = rows.first().map_or_else(String::new, |(key, _)| format!(" first key {}", hex(key)));
            format!("INSERT BATCH table {table} page {page_no} {} rows, {bytes} bytes{first}", rows.len())
        }
        Op::Update { table, page_no, key, new_value, .. } => {
            format!("UPDATE {}", row(table, page_no, &key, new_value.len()))
        }
        Op::Edit { table, page_no, key, offset, old_bytes, new_bytes } => format!(
            "EDIT table {table} page {page_no} key {} at offset {offset}: {} bytes become {}",
            hex(&key),
            old_bytes.len(),
            new_bytes.len()
        ),
        Op::Delete { table, page_no, key, .. } => format!("DELETE {}", row(table, page_no, &key, 0)),
        Op::Compensation { undo_next, .. } => format!("COMPENSATION undo-next {undo_next}"),
        Op::CheckpointBegin => "CHECKPOINT BEGIN".into(),
        Op::CheckpointEnd { active, dirty, .. } => {
            format!("CHECKPOINT END {} active, {} dirty", active.len(), dirty.len())
        }
    })
}

/// A key as hex, shortened past 16 bytes.
fn hex(bytes: &[u8]) -> String {
    let shown: String = bytes.iter().take(16).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > 16 {
        format!("{shown}…")
    } else {
        shown
    }
}

fn kind_name(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Data => "DATA",
        RecordKind::Commit => "COMMIT",
        RecordKind::Abort => "ABORT",
        _ => "OTHER",
    }
}
