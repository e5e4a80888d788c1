//! WAL archiving: every complete segment is copied, in order, to an archive
//! directory or through an archive command, and none is recycled or
//! removed before that copy is confirmed.
//!
//! - **Ready:** a segment is complete once the durable log has moved past
//!   it: it filled up, or a checkpoint switched to a new segment after
//!   anything was written ([`crate::wal::Wal::switch_segment`]), so the
//!   archive is never more than `checkpoint_interval` behind. Readiness
//!   needs no state of its own: recovery finds the end of the log, and
//!   every segment before it is complete.
//! - **Done:** segments are archived in order, so one durable record says
//!   which are done: `archive_status.json` in the WAL directory names the
//!   last archived segment. It is replaced atomically after each segment.
//!   A crash between an archive copy and that record re-archives the
//!   segment at the next start; the archive then already holds the same
//!   bytes, which counts as success.
//! - **Held:** the checkpoint's retire hook ([`Archiver::may_remove`])
//!   refuses every segment of this timeline past the durable record, so no
//!   segment is recycled or removed before it is archived, whatever the
//!   archiver does.
//! - **Directory mode** copies under a temporary name, syncs, renames and
//!   syncs the directory. A file already there with the same bytes is
//!   success; with other bytes it is an error that is logged, counted and
//!   shown in the status, and never overwritten.
//! - **Command mode** runs `wal_archive_command` with `%f`/`%n`/`%%`
//!   substituted; exit 0 means archived and durable. Failures and hangs
//!   (past a timeout, then killed) are retried with exponential backoff.
//!
//! While archiving fails, WAL piles up in the WAL directory rather than
//! being dropped: the log says so on every failure, and the status, the
//! metrics and `/admin/health` show the pending count.

pub mod cleanup;
pub mod source;

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::env::{substitute, write_atomically, Env, Fs};
use crate::planted::{active, PlantedBug};
use crate::probe::{self, Phase, Probe};
use crate::wal::{parse_segment_file_name, Lsn, Wal, WalOptions};

/// The durable record of archiving progress, in the WAL directory.
pub const STATUS_FILE: &str = "archive_status.json";

/// Where archived segments go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveMode {
    /// `wal_archive_dir`: copied into this directory.
    Dir(PathBuf),
    /// `wal_archive_command`: a shell command per segment.
    Command(String),
}

/// How the archiver runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveConfig {
    /// Where segments go.
    pub mode: ArchiveMode,
    /// An archive command running longer than this is killed and retried.
    pub command_timeout: Duration,
    /// The first retry's delay; it doubles with each failure in a row.
    pub retry_min: Duration,
    /// The longest delay between retries.
    pub retry_max: Duration,
    /// How often the archiver looks for complete segments when nothing woke
    /// it.
    pub poll: Duration,
    /// `/admin/health` reports archiving degraded when more segments than
    /// this wait.
    pub pending_alarm: u64,
    /// `wal_archive_retention`: after each backup, directory mode deletes
    /// what no point of this window needs (see [`cleanup`]).
    pub retention: Option<Duration>,
}

impl ArchiveConfig {
    /// Production timings for `mode`.
    pub fn new(mode: ArchiveMode) -> Self {
        ArchiveConfig {
            mode,
            command_timeout: Duration::from_secs(300),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            poll: Duration::from_secs(1),
            pending_alarm: 16,
            retention: None,
        }
    }
}

/// What `archive_status.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct DurableStatus {
    /// The last segment archived.
    last_archived: Option<String>,
    /// When (µs since the epoch).
    last_archive_micros: Option<u64>,
    /// Bytes archived over the server's life.
    total_archived_bytes: u64,
}

/// What `GET /admin/wal/archive/status` and the metrics report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ArchiveStatus {
    /// Whether archiving is on.
    pub archiving_enabled: bool,
    /// The last segment archived.
    pub last_archived_segment: Option<String>,
    /// When (RFC 3339).
    pub last_archive_time: Option<String>,
    /// Complete segments not archived yet.
    pub segments_pending: u64,
    /// Bytes archived per second over the last minute.
    pub archive_rate_bytes_per_sec: u64,
    /// Bytes archived over the server's life.
    pub total_archived_bytes: u64,
    /// The rest is for metrics and health, not the status answer.
    #[serde(skip)]
    pub detail: ArchiveDetail,
}

/// Counters and errors behind the status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArchiveDetail {
    /// Segments archived since start.
    pub archived_segments: u64,
    /// Failed attempts since start.
    pub failures: u64,
    /// Failed attempts in a row, now.
    pub failing_for: u64,
    /// The last failure's error, until the next success.
    pub last_error: Option<String>,
    /// Attempts that found a different file under the segment's name.
    pub conflicts: u64,
    /// When the last segment was archived (µs since the epoch).
    pub last_archive_micros: Option<u64>,
}

struct State {
    durable: DurableStatus,
    /// The next segment to archive, on this timeline.
    next: u64,
    detail: ArchiveDetail,
    /// (µs, bytes) of the archives in the last minute.
    recent: VecDeque<(u64, u64)>,
    started_micros: u64,
    /// This timeline's history file is archived (or there is none).
    history_archived: bool,
}

/// Why an archive attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading the segment or writing the archive failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The archive holds other bytes under this name.
    #[error(
        "the archive already holds {} with different contents ({found} bytes found, {expected} expected): \
         it is never overwritten; the segment stays in the WAL directory until an operator resolves it",
        path.display()
    )]
    Conflict {
        /// The archived file.
        path: PathBuf,
        /// Its size.
        found: u64,
        /// The segment's size.
        expected: u64,
    },
    /// The archive command failed.
    #[error("wal_archive_command exited with {status} for {segment}: {stderr}")]
    Command {
        /// The segment.
        segment: String,
        /// The exit status.
        status: String,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// The archive command ran past its timeout.
    #[error("wal_archive_command ran longer than {timeout:?} for {segment} and was killed")]
    TimedOut {
        /// The segment.
        segment: String,
        /// The timeout.
        timeout: Duration,
    },
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ArchiveError {
    let path = path.to_path_buf();
    move |source| ArchiveError::Io { op, path, source }
}

/// The archiver of one open database.
pub struct Archiver {
    env: Env,
    opts: WalOptions,
    config: ArchiveConfig,
    state: Mutex<State>,
}

impl Archiver {
    /// Loads the durable status from the WAL directory. With none (archiving
    /// was just turned on), archiving starts at the oldest segment there.
    pub fn open(env: Env, opts: WalOptions, config: ArchiveConfig) -> Result<Archiver, ArchiveError> {
        let path = opts.dir.join(STATUS_FILE);
        let durable = match env.fs.open(&path) {
            Ok(file) => {
                let len = file.len().map_err(io_error("stat", &path))?;
                let mut bytes = vec![0; len as usize];
                file.read_exact_at(&mut bytes, 0).map_err(io_error("read", &path))?;
                match serde_json::from_slice::<DurableStatus>(&bytes) {
                    Ok(durable) => durable,
                    Err(e) => {
                        // Safe to start over: every segment still here is
                        // archived again, and one the archive holds already
                        // is found identical.
                        tracing::warn!(file = %path.display(), error = %e, "unreadable archive status; archiving every segment still in the WAL directory again");
                        DurableStatus::default()
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => DurableStatus::default(),
            Err(e) => return Err(io_error("open", &path)(e)),
        };
        let ours = |name: &str| match parse_segment_file_name(name, opts.segment_size) {
            Some((timeline, segno)) if timeline == opts.timeline => Some(segno),
            _ => None,
        };
        let next = match durable.last_archived.as_deref().and_then(ours) {
            Some(segno) => segno + 1,
            None => {
                let names = env.fs.list(&opts.dir).map_err(io_error("list", &opts.dir))?;
                names.iter().filter_map(|name| ours(name)).min().unwrap_or(1)
            }
        };
        let started_micros = env.clock.wall_micros();
        let detail = ArchiveDetail { last_archive_micros: durable.last_archive_micros, ..ArchiveDetail::default() };
        let history_archived = opts.timeline == 1;
        let state = State { durable, next, detail, recent: VecDeque::new(), started_micros, history_archived };
        Ok(Archiver { env, opts, config, state: Mutex::new(state) })
    }

    /// How it runs.
    pub fn config(&self) -> &ArchiveConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The retire hook: whether segment `name` may be recycled or removed.
    /// Only segments of this timeline at or before the durable record of
    /// the last archived one may.
    pub fn may_remove(&self, name: &str) -> bool {
        match parse_segment_file_name(name, self.opts.segment_size) {
            Some((timeline, segno)) if timeline == self.opts.timeline => {
                let next = self.lock().next + u64::from(active(PlantedBug::ArchiveRecycleUnarchived));
                let archived = segno < next;
                if !archived {
                    probe::hit(Probe::ArchiveHeldSegment);
                }
                archived
            }
            _ => true,
        }
    }

    /// The status, with `durable` the WAL's durable end (segments before
    /// its segment are complete).
    pub fn status(&self, durable: Lsn) -> ArchiveStatus {
        let now = self.env.clock.wall_micros();
        let mut state = self.lock();
        forget_old(&mut state.recent, now);
        let window = (now.saturating_sub(state.started_micros)).clamp(1_000_000, 60_000_000);
        let recent: u64 = state.recent.iter().map(|(_, bytes)| bytes).sum();
        ArchiveStatus {
            archiving_enabled: true,
            last_archived_segment: state.durable.last_archived.clone(),
            last_archive_time: state.durable.last_archive_micros.map(crate::backup::rfc3339),
            segments_pending: self.opts.segno(durable).saturating_sub(state.next),
            archive_rate_bytes_per_sec: recent * 1_000_000 / window,
            total_archived_bytes: state.durable.total_archived_bytes,
            detail: state.detail.clone(),
        }
    }

    /// Archives every complete segment (those before the segment holding
    /// `wal`'s durable end), in order, stopping at the first failure, which
    /// it records and returns. `stop` is polled between segments.
    pub async fn archive_ready(&self, wal: &Wal, stop: &(dyn Fn() -> bool + Sync)) -> Result<u64, ArchiveError> {
        if !self.lock().history_archived {
            // Before any segment of a new timeline: a restore that finds
            // them must find how the timeline branched off.
            if let Err(error) = self.archive_history().await {
                let mut state = self.lock();
                state.detail.failures += 1;
                state.detail.failing_for += 1;
                state.detail.last_error = Some(error.to_string());
                tracing::error!(timeline = self.opts.timeline, %error, "archiving the timeline history file failed");
                return Err(error);
            }
            self.lock().history_archived = true;
        }
        let mut archived = 0;
        loop {
            let complete_below = self.opts.segno(wal.durable_lsn());
            let mut next = self.lock().next;
            if next >= complete_below || stop() {
                return Ok(archived);
            }
            if let Some(present) = self.skip_removed(next, complete_below)? {
                next = present;
                self.lock().next = present;
            }
            let result = self.archive_segment(next).await;
            let mut state = self.lock();
            match result {
                Ok((durable, bytes)) => {
                    state.next = next + 1;
                    let now = durable.last_archive_micros.unwrap_or_default();
                    state.durable = durable;
                    state.recent.push_back((now, bytes));
                    state.detail.archived_segments += 1;
                    state.detail.failing_for = 0;
                    state.detail.last_error = None;
                    state.detail.last_archive_micros = Some(now);
                    archived += 1;
                    tracing::debug!(segment = %self.opts.file_name(next), "archived WAL segment");
                }
                Err(error) => {
                    probe::hit(Probe::ArchiveAttemptFailed);
                    state.detail.failures += 1;
                    state.detail.failing_for += 1;
                    state.detail.last_error = Some(error.to_string());
                    if matches!(error, ArchiveError::Conflict { .. }) {
                        state.detail.conflicts += 1;
                    }
                    let pending = complete_below - next;
                    tracing::error!(
                        segment = %self.opts.file_name(next),
                        %error,
                        pending,
                        failures_in_a_row = state.detail.failing_for,
                        "WAL archiving failed; the segment stays in the WAL directory and will be retried"
                    );
                    return Err(error);
                }
            }
        }
    }

    /// When segment `next` is not in the WAL directory but a later
    /// complete one is, segments were removed unarchived while archiving
    /// was off: says so loudly and returns the oldest one present, where
    /// archiving goes on (refusing would hold the WAL forever).
    fn skip_removed(&self, next: u64, complete_below: u64) -> Result<Option<u64>, ArchiveError> {
        let fs = self.env.fs.as_ref();
        let path = self.opts.path(next);
        if fs.exists(&path).map_err(io_error("stat", &path))? {
            return Ok(None);
        }
        let names = fs.list(&self.opts.dir).map_err(io_error("list", &self.opts.dir))?;
        let present = names
            .iter()
            .filter_map(|name| parse_segment_file_name(name, self.opts.segment_size))
            .filter(|(timeline, segno)| *timeline == self.opts.timeline && *segno > next && *segno < complete_below)
            .map(|(_, segno)| segno)
            .min();
        if let Some(present) = present {
            tracing::error!(
                from = %self.opts.file_name(next),
                to = %self.opts.file_name(present - 1),
                "these WAL segments were removed before they were archived (was archiving off?): the archive has a \
                 gap there; restores from backups taken before it cannot replay past it; take a new base backup"
            );
        }
        Ok(present)
    }

    /// Archives segment `segno` and records it durably; returns the record
    /// and the segment's size.
    async fn archive_segment(&self, segno: u64) -> Result<(DurableStatus, u64), ArchiveError> {
        let name = self.opts.file_name(segno);
        let path = self.opts.dir.join(&name);
        let bytes = {
            let _phase = probe::enter(Phase::Archive);
            read_file(self.env.fs.as_ref(), &path)?
        };
        match &self.config.mode {
            ArchiveMode::Dir(dir) => {
                let _phase = probe::enter(Phase::Archive);
                archive_to_dir(self.env.fs.as_ref(), dir, &name, &bytes)?;
            }
            ArchiveMode::Command(_) => self.run_command(&path, &name).await?,
        }
        let mut durable = self.lock().durable.clone();
        durable.last_archived = Some(name);
        durable.last_archive_micros = Some(self.env.clock.wall_micros());
        durable.total_archived_bytes += bytes.len() as u64;
        let text = serde_json::to_vec_pretty(&durable).expect("the status serializes");
        {
            let _phase = probe::enter(Phase::Archive);
            write_atomically(self.env.fs.as_ref(), &self.opts.dir, STATUS_FILE, &text)
                .map_err(|e| ArchiveError::Io { op: e.op, path: e.path, source: e.source })?;
        }
        probe::hit(Probe::ArchiveSegmentArchived);
        Ok((durable, bytes.len() as u64))
    }

    /// Archives a small file that is not a segment (a backup's history
    /// record): into the directory, or through the command from a copy in
    /// the WAL directory that is removed afterwards.
    pub async fn archive_file(&self, name: &str, bytes: &[u8]) -> Result<(), ArchiveError> {
        match &self.config.mode {
            ArchiveMode::Dir(dir) => archive_to_dir(self.env.fs.as_ref(), dir, name, bytes),
            ArchiveMode::Command(_) => {
                let fs = self.env.fs.as_ref();
                write_atomically(fs, &self.opts.dir, name, bytes).map_err(|e| ArchiveError::Io {
                    op: e.op,
                    path: e.path,
                    source: e.source,
                })?;
                let path = self.opts.dir.join(name);
                let result = self.run_command(&path, name).await;
                fs.remove(&path).map_err(io_error("remove", &path))?;
                result
            }
        }
    }

    /// Archives this timeline's history file from the WAL directory, where
    /// a point-in-time recovery left it (it stays there).
    async fn archive_history(&self) -> Result<(), ArchiveError> {
        let name = crate::wal::history_file_name(self.opts.timeline);
        let path = self.opts.dir.join(&name);
        if !self.env.fs.exists(&path).map_err(io_error("stat", &path))? {
            tracing::warn!(file = %path.display(), "no history file for this timeline to archive");
            return Ok(());
        }
        match &self.config.mode {
            ArchiveMode::Dir(dir) => {
                archive_to_dir(self.env.fs.as_ref(), dir, &name, &read_file(self.env.fs.as_ref(), &path)?)
            }
            ArchiveMode::Command(_) => self.run_command(&path, &name).await,
        }?;
        tracing::info!(file = %name, "archived the timeline history file");
        Ok(())
    }

    /// Runs the archive command for `path` (named `name` in the archive).
    async fn run_command(&self, path: &Path, name: &str) -> Result<(), ArchiveError> {
        let ArchiveMode::Command(template) = &self.config.mode else { unreachable!("command mode") };
        let command = substitute(template, &path.to_string_lossy(), name);
        let run = self.env.commands.run(&command);
        match tokio::time::timeout(self.config.command_timeout, run).await {
            Err(_) => {
                probe::hit(Probe::ArchiveCommandTimedOut);
                Err(ArchiveError::TimedOut { segment: name.to_string(), timeout: self.config.command_timeout })
            }
            Ok(Err(source)) => {
                Err(ArchiveError::Io { op: "run wal_archive_command for", path: path.to_path_buf(), source })
            }
            Ok(Ok(output)) if !output.success() => {
                let status = output.status.map_or("a signal".to_string(), |code| format!("status {code}"));
                Err(ArchiveError::Command { segment: name.to_string(), status, stderr: output.stderr })
            }
            Ok(Ok(output)) => {
                if !output.stderr.is_empty() {
                    tracing::info!(file = %name, stderr = %output.stderr, "wal_archive_command");
                }
                Ok(())
            }
        }
    }

    /// Applies `wal_archive_retention` to the archive directory (directory
    /// mode only; a no-op otherwise). Logs what it deletes.
    pub fn apply_retention(&self) -> Result<(), cleanup::CleanupError> {
        let (ArchiveMode::Dir(dir), Some(retention)) = (&self.config.mode, self.config.retention) else {
            return Ok(());
        };
        let fs = self.env.fs.as_ref();
        let plan = cleanup::plan(fs, dir, retention, self.env.clock.wall_micros())?;
        cleanup::apply(fs, dir, &plan)?;
        for deletion in &plan.deletions {
            tracing::info!(file = %deletion.name, reason = %deletion.reason, "archive retention deleted");
        }
        Ok(())
    }

    /// Whether segments were left unarchived from before this start.
    pub fn resuming(&self, wal: &Wal) -> bool {
        self.lock().next < self.opts.segno(wal.durable_lsn())
    }
}

fn forget_old(recent: &mut VecDeque<(u64, u64)>, now: u64) {
    while recent.front().is_some_and(|(at, _)| now.saturating_sub(*at) > 60_000_000) {
        recent.pop_front();
    }
}

/// A whole file's bytes.
pub(crate) fn read_file(fs: &dyn Fs, path: &Path) -> Result<Vec<u8>, ArchiveError> {
    let file = fs.open(path).map_err(io_error("open", path))?;
    let len = file.len().map_err(io_error("stat", path))?;
    let mut bytes = vec![0; len as usize];
    file.read_exact_at(&mut bytes, 0).map_err(io_error("read", path))?;
    Ok(bytes)
}

/// Copies `bytes` into `dir` as `name`, crash-safely; a file already there
/// with the same bytes is success, with other bytes a conflict.
pub fn archive_to_dir(fs: &dyn Fs, dir: &Path, name: &str, bytes: &[u8]) -> Result<(), ArchiveError> {
    let path = dir.join(name);
    if fs.exists(&path).map_err(io_error("stat", &path))? {
        let found = read_file(fs, &path)?;
        if found == bytes || active(PlantedBug::ArchiveExistsWithoutCompare) {
            // A retry after a crash, or after a failed sync: make sure what
            // is there is durable before counting it.
            probe::hit(Probe::ArchiveExistsIdentical);
            let file = fs.open(&path).map_err(io_error("open", &path))?;
            file.sync_all().map_err(io_error("sync", &path))?;
            return fs.sync_dir(dir).map_err(io_error("sync directory", dir));
        }
        probe::hit(Probe::ArchiveExistsDifferent);
        return Err(ArchiveError::Conflict { path, found: found.len() as u64, expected: bytes.len() as u64 });
    }
    fs.create_dir_all(dir).map_err(io_error("create directory", dir))?;
    if active(PlantedBug::ArchiveWithoutSync) {
        let file = fs.create(&path).map_err(io_error("create", &path))?;
        return file.write_all_at(bytes, 0).map_err(io_error("write", &path));
    }
    write_atomically(fs, dir, name, bytes).map_err(|e| ArchiveError::Io { op: e.op, path: e.path, source: e.source })
}
