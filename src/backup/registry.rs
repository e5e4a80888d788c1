//! The server's backups: at most one running, their progress, and a small
//! durable history (`backup_history.json` in the data directory) that
//! survives restarts and feeds the `thunderdb_last_backup_*` metrics.
//!
//! A backup is recorded as `running` durably before it starts, so one cut
//! by a crash is found at the next start and recorded as `failed`.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{backup_id, check_destination, estimate_bytes, rfc3339, take, write_atomically, BackupRequest, Progress};
use crate::db::Database;
use crate::wal::Lsn;

/// The history's file name in the data directory.
pub const HISTORY_NAME: &str = "backup_history.json";

/// Records kept in the history.
const HISTORY_KEPT: usize = 50;

/// A backup's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Copying.
    Running,
    /// Its manifest is durable.
    Completed,
    /// It stopped with an error; its directory never verifies.
    Failed,
}

/// One backup, as `GET /admin/backup/status/{id}` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// `bk-YYYYMMDD-HHMMSS`.
    pub backup_id: String,
    /// Its state.
    pub status: Status,
    /// Where it goes.
    pub destination: String,
    /// Bytes copied.
    pub bytes_done: u64,
    /// Bytes to copy, as far as known.
    pub bytes_total: u64,
    /// The start LSN, once known.
    pub start_lsn: Option<Lsn>,
    /// The end LSN, once known.
    pub end_lsn: Option<Lsn>,
    /// Why it failed.
    pub error: Option<String>,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it ended (RFC 3339).
    pub finished_at: Option<String>,
    /// Its duration in seconds, once ended.
    pub duration_seconds: Option<f64>,
    /// When it ended, µs since the Unix epoch.
    pub finished_micros: Option<u64>,
    #[serde(skip)]
    started_micros: u64,
}

/// Why a backup was not started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// Another backup is running (HTTP 409).
    #[error("backup {0} is still running; one backup runs at a time")]
    Conflict(String),
    /// A bad request (HTTP 400).
    #[error("{0}")]
    Invalid(String),
}

struct State {
    /// Oldest first.
    records: Vec<BackupRecord>,
    running: Option<(String, Arc<Progress>)>,
}

/// The server's backups.
pub struct Registry {
    db: Arc<Database>,
    config_text: String,
    state: Mutex<State>,
    task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Registry {
    /// Loads the history; a backup still `running` in it was cut by a stop
    /// and is recorded as failed. `config_text` is stored in each backup as
    /// `thunderdb.toml`.
    pub fn open(db: Arc<Database>, config_text: String) -> Result<Arc<Registry>, String> {
        let fs = db.env().fs.clone();
        let path = db.config().data_dir.join(HISTORY_NAME);
        let mut records: Vec<BackupRecord> = match fs.open(&path) {
            Ok(file) => {
                let mut bytes = vec![0; file.len().map_err(|e| format!("{}: {e}", path.display()))? as usize];
                file.read_exact_at(&mut bytes, 0).map_err(|e| format!("{}: {e}", path.display()))?;
                serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut cut = false;
        for record in records.iter_mut().filter(|r| r.status == Status::Running) {
            record.status = Status::Failed;
            record.error = Some("the server stopped during the backup".into());
            cut = true;
        }
        let registry =
            Registry { db, config_text, state: Mutex::new(State { records, running: None }), task: Default::default() };
        if cut {
            registry.save().map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(Arc::new(registry))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("backup registry poisoned")
    }

    fn save(&self) -> Result<(), String> {
        let text = serde_json::to_string_pretty(&self.lock().records).expect("records serialize");
        let fs = self.db.env().fs.clone();
        write_atomically(fs.as_ref(), &self.db.config().data_dir, HISTORY_NAME, text.as_bytes())
            .map_err(|e| e.to_string())
    }

    /// Starts a backup in the background and returns its record; refuses a
    /// second one while one runs, and a bad destination.
    pub fn start(
        self: &Arc<Self>,
        destination: PathBuf,
        include_wal: bool,
        compress: bool,
    ) -> Result<(BackupRecord, u64), StartError> {
        if self.db.is_shutting_down() {
            return Err(StartError::Invalid("the server is shutting down".into()));
        }
        check_destination(self.db.env().fs.as_ref(), &destination).map_err(StartError::Invalid)?;
        let now = self.db.wall_micros();
        let progress = Arc::new(Progress::default());
        let record = {
            let mut state = self.lock();
            if let Some((id, _)) = &state.running {
                return Err(StartError::Conflict(id.clone()));
            }
            let base = backup_id(now);
            let mut id = base.clone();
            let mut n = 1;
            while state.records.iter().any(|r| r.backup_id == id) {
                n += 1;
                id = format!("{base}-{n}");
            }
            let record = BackupRecord {
                backup_id: id.clone(),
                status: Status::Running,
                destination: destination.display().to_string(),
                bytes_done: 0,
                bytes_total: 0,
                start_lsn: None,
                end_lsn: None,
                error: None,
                started_at: rfc3339(now),
                finished_at: None,
                duration_seconds: None,
                finished_micros: None,
                started_micros: now,
            };
            state.records.push(record.clone());
            let excess = state.records.len().saturating_sub(HISTORY_KEPT);
            state.records.drain(..excess);
            state.running = Some((id, progress.clone()));
            record
        };
        if let Err(e) = self.save() {
            self.finish(&record.backup_id, &progress, Err(format!("recording the backup in its history failed: {e}")));
            return Err(StartError::Invalid(format!("the backup history cannot be written: {e}")));
        }
        let estimate = estimate_bytes(&self.db, include_wal);
        let request = BackupRequest::new(destination, include_wal, compress, self.config_text.clone());
        let registry = self.clone();
        let id = record.backup_id.clone();
        let handle = tokio::spawn(async move {
            let fs = registry.db.env().fs.clone();
            let outcome = take(&registry.db, fs.as_ref(), &id, &request, &progress).await;
            match &outcome {
                Ok(manifest) => tracing::info!(backup_id = %id, end_lsn = %manifest.end_lsn, "backup completed"),
                Err(error) => tracing::error!(backup_id = %id, %error, "backup failed"),
            }
            registry.finish(&id, &progress, outcome.map(|_| ()).map_err(|e| e.to_string()));
        });
        if let Ok(mut task) = self.task.try_lock() {
            *task = Some(handle);
        }
        Ok((record, estimate))
    }

    fn finish(&self, id: &str, progress: &Progress, outcome: Result<(), String>) {
        let now = self.db.wall_micros();
        {
            let mut state = self.lock();
            if let Some(record) = state.records.iter_mut().find(|r| r.backup_id == id) {
                fill(record, progress);
                record.status = if outcome.is_ok() { Status::Completed } else { Status::Failed };
                record.error = outcome.err();
                record.finished_at = Some(rfc3339(now));
                record.finished_micros = Some(now);
                record.duration_seconds = Some(now.saturating_sub(record.started_micros) as f64 / 1e6);
            }
            state.running = None;
        }
        if let Err(error) = self.save() {
            tracing::error!(%error, "recording the backup's outcome in its history failed");
        }
    }

    /// A backup's record, with live progress while it runs.
    pub fn status(&self, id: &str) -> Option<BackupRecord> {
        let state = self.lock();
        let mut record = state.records.iter().find(|r| r.backup_id == id)?.clone();
        if let Some((_, progress)) = state.running.as_ref().filter(|(running, _)| running == id) {
            fill(&mut record, progress);
        }
        Some(record)
    }

    /// The last backup that ended, and the last that succeeded.
    pub fn last(&self) -> (Option<BackupRecord>, Option<BackupRecord>) {
        let state = self.lock();
        let ended = state.records.iter().rev().find(|r| r.status != Status::Running).cloned();
        let succeeded = state.records.iter().rev().find(|r| r.status == Status::Completed).cloned();
        (ended, succeeded)
    }

    /// Waits for a running backup to end (the engine's shutdown fails it).
    pub async fn wait(&self) {
        let handle = self.task.lock().await.take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }
}

fn fill(record: &mut BackupRecord, progress: &Progress) {
    record.bytes_done = progress.bytes_done.load(Ordering::Relaxed);
    record.bytes_total = progress.bytes_total.load(Ordering::Relaxed).max(record.bytes_done);
    let lsn = |value: u64| (value != 0).then_some(Lsn(value));
    record.start_lsn = lsn(progress.start_lsn.load(Ordering::Relaxed));
    record.end_lsn = lsn(progress.end_lsn.load(Ordering::Relaxed));
}
