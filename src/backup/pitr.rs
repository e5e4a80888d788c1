//! Point-in-time recovery: a backup, then the archived WAL replayed to a
//! time, an LSN or the end, then a new timeline.
//!
//! `thunderdb --restore-pitr TARGET --restore-backup DIR` runs
//! [`point_in_time_recovery`]. Everything it can check is checked before a
//! single data page is written, so an unreachable target is refused in
//! seconds, naming the segment, LSN or time:
//!
//! 1. The manifest is read and its checksum verified; the data and WAL
//!    directories must be empty or hold this backup's copy. A marker file,
//!    [`PITR_MARKER`], then says a recovery is under way: a server never
//!    starts normally on a directory whose recovery did not finish, and a
//!    rerun of the same command clears what the unfinished one left and
//!    starts over.
//! 2. The backup's WAL is restored, the timeline is chosen (the newest in
//!    the archive whose history passes through the backup, or
//!    `--restore-timeline`), and the archived segments are fetched,
//!    [`FETCH_AHEAD`](crate::archive::source::FETCH_AHEAD) at a time. A gap,
//!    a short segment, or an archived segment that differs from the
//!    backup's own copy (another database's WAL) is refused.
//! 3. The WAL is scanned from the backup's start to resolve the stop point:
//!    every record's checksum is checked on the way, and every fetched
//!    segment but the last is known complete, so damage is never taken for
//!    the end of the log. A time target stops just before the first commit
//!    stamped after it (keeping every commit at or before it); an LSN
//!    target stops after the last record that begins at or before it;
//!    `latest` stops at the end. A stop before the backup's end LSN, or a
//!    target past the last WAL available, is refused.
//! 4. The data files are restored (Phase 1). The log is branched at the
//!    stop point onto a new timeline (the highest one the archive knows,
//!    plus one): the segment holding the stop point is copied under the new
//!    timeline's name with everything from the stop point on zeroed, later
//!    segments of the old timeline are removed from the WAL directory (the
//!    archive keeps them), the history file is written, and the control
//!    file names the new timeline.
//! 5. The database opens: crash recovery replays the log to the stop point
//!    and rolls back every transaction open there, with compensation
//!    records on the new timeline (Phase 2), then shuts down cleanly. The
//!    marker is removed last (Phase 3). Nothing is archived during the
//!    recovery (a cut one leaves no trace of its timeline in the archive);
//!    the normal start that follows archives the history file, then the new
//!    timeline's segments.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::manifest::Manifest;
use super::restore::RestorePlan;
use crate::archive::source::{fetch_wal, ArchiveSource, Fetched};
use crate::db::{Database, EngineConfig};
use crate::env::{write_atomically, Env, Fs};
use crate::planted::{active, PlantedBug};
use crate::probe::{self, Probe};
use crate::recovery::thousands;
use crate::storage::{ControlFile, Op};
use crate::wal::{
    history_file_name, parse_segment_file_name, segment_file_name, Lsn, Record, RecordKind, TimelineHistory,
    WalOptions, WalReader,
};

/// The file in the data directory that says a point-in-time recovery into
/// it has not finished.
pub const PITR_MARKER: &str = "pitr_in_progress.json";

/// Where a point-in-time recovery stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Everything the archive holds, up to the first gap or the end.
    Latest,
    /// The last commit stamped at or before this time (µs since the Unix
    /// epoch).
    Time(u64),
    /// The last record that begins at or before this LSN.
    Lsn(Lsn),
}

impl FromStr for Target {
    type Err = String;

    /// `latest`, `lsn:X/Y`, or an RFC 3339 timestamp
    /// (`2026-01-15T14:30:00Z`, `2026-01-15T15:30:00.250+01:00`).
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("latest") {
            return Ok(Target::Latest);
        }
        if let Some(lsn) = text.strip_prefix("lsn:").or_else(|| text.strip_prefix("LSN:")) {
            return lsn.parse().map(Target::Lsn).map_err(|_| format!("`{lsn}` is not an LSN: write lsn:X/Y in hex"));
        }
        let time = chrono::DateTime::parse_from_rfc3339(text).map_err(|e| {
            format!("`{text}` is not a recovery target ({e}): give an RFC 3339 time such as 2026-01-15T14:30:00Z, `latest`, or lsn:X/Y")
        })?;
        let micros = u64::try_from(time.timestamp_micros())
            .map_err(|_| format!("`{text}` is before 1970: no WAL was written then"))?;
        Ok(Target::Time(micros))
    }
}

/// RFC 3339 UTC, with as many fractional digits as the time needs.
pub fn format_micros(micros: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_micros(micros);
    if micros % 1_000_000 == 0 {
        humantime::format_rfc3339_seconds(at).to_string()
    } else if micros % 1_000 == 0 {
        humantime::format_rfc3339_millis(at).to_string()
    } else {
        humantime::format_rfc3339_micros(at).to_string()
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Latest => f.write_str("latest"),
            Target::Time(micros) => f.write_str(&format_micros(*micros)),
            Target::Lsn(lsn) => write!(f, "lsn:{lsn}"),
        }
    }
}

/// What to recover, from where, into where.
#[derive(Debug, Clone)]
pub struct PitrRequest {
    /// The backup directory (on the env's disk).
    pub backup: PathBuf,
    /// Where to stop.
    pub target: Target,
    /// Where archived WAL comes from; `None`: only the backup's own WAL.
    pub source: Option<ArchiveSource>,
    /// `--restore-timeline`: the timeline to follow; default the newest
    /// whose history passes through the backup.
    pub timeline: Option<u32>,
    /// The server's engine settings: its data and WAL directories, pool
    /// size, archiving.
    pub engine: EngineConfig,
}

/// What a point-in-time recovery did.
#[derive(Debug, Clone, Default)]
pub struct PitrOutcome {
    /// The backup's data pages restored.
    pub pages: u64,
    /// The segments replayed, by their archived names.
    pub segments: Vec<String>,
    /// Where the replayed log ends: the new timeline starts here.
    pub stop: Lsn,
    /// The last commit replayed: its time (µs since the Unix epoch).
    pub recovered_to_micros: Option<u64>,
    /// Commits replayed after the backup's start.
    pub commits: u64,
    /// Transactions open at the stop point, rolled back.
    pub rolled_back: usize,
    /// The timeline the server continues on.
    pub timeline: u32,
    /// The log lines, as logged.
    pub lines: Vec<String>,
}

/// What the marker file records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PitrMarker {
    /// The backup directory.
    pub backup: String,
    /// Its id.
    pub backup_id: String,
    /// The target, as given.
    pub target: String,
}

impl PitrMarker {
    /// How to finish it.
    pub fn how_to_resume(&self) -> String {
        format!(
            "a point-in-time recovery to {} from backup {} ({}) did not finish; rerun \
             `thunderdb --restore-pitr {} --restore-backup {} --config FILE` with the same config: it starts over and \
             completes",
            self.target, self.backup_id, self.backup, self.target, self.backup
        )
    }
}

/// Reads the marker in `data_dir`, if a recovery into it is unfinished.
pub fn read_marker(fs: &dyn Fs, data_dir: &Path) -> Result<Option<PitrMarker>, String> {
    let path = data_dir.join(PITR_MARKER);
    if !fs.exists(&path).map_err(|e| format!("{}: {e}", path.display()))? {
        return Ok(None);
    }
    let bytes = crate::archive::read_file(fs, &path).map_err(|e| e.to_string())?;
    // A marker cut by a crash still says a recovery was under way.
    Ok(Some(serde_json::from_slice(&bytes).unwrap_or_else(|_| PitrMarker {
        backup: "?".into(),
        backup_id: "?".into(),
        target: "?".into(),
    })))
}

struct Log(Vec<String>);

impl Log {
    fn say(&mut self, line: String) {
        tracing::info!("{line}");
        self.0.push(line);
    }
}

/// Runs a point-in-time recovery (see the module docs). `progress` hears
/// each segment fetched. Refusals and failures are errors that name the
/// file, segment, LSN or time.
pub async fn point_in_time_recovery(
    env: &Env,
    request: &PitrRequest,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<PitrOutcome, String> {
    let outcome = recover_to_target(env, request, progress).await;
    if outcome.is_err() {
        probe::hit(Probe::PitrRefused);
    }
    outcome
}

async fn recover_to_target(
    env: &Env,
    request: &PitrRequest,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<PitrOutcome, String> {
    let fs = env.fs.as_ref();
    let (data_dir, wal_dir) = (&request.engine.data_dir, &request.engine.wal_dir);
    let target = request.target;
    let mut log = Log(Vec::new());
    log.say("Starting Point-in-Time Recovery".into());
    log.say(match target {
        Target::Time(_) => format!("Target time: {target}"),
        Target::Lsn(lsn) => format!("Target LSN: {lsn}"),
        Target::Latest => "Target time: latest".into(),
    });
    if let Some(previous) = read_marker(fs, data_dir)? {
        tracing::warn!(
            target = %previous.target,
            backup = %previous.backup_id,
            "a point-in-time recovery into {} did not finish: clearing what it left and starting over",
            data_dir.display()
        );
        for dir in [wal_dir, data_dir] {
            clear_dir(fs, dir, PITR_MARKER)?;
        }
        probe::hit(Probe::PitrRestartedAfterCrash);
    }
    // A recovery cut by a crash while it wrote its marker left only the
    // marker's temporary file (it restores nothing before the marker).
    let marker_temp = data_dir.join(format!("{PITR_MARKER}.tmp"));
    if fs.exists(&marker_temp).map_err(|e| format!("{}: {e}", marker_temp.display()))? {
        fs.remove(&marker_temp).map_err(|e| format!("{}: {e}", marker_temp.display()))?;
        fs.sync_dir(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    }
    let plan = RestorePlan::new(fs, &request.backup, fs, data_dir, wal_dir)?;
    let manifest = plan.manifest.clone();
    log.say(format!("Base backup LSN: {}", manifest.start_lsn));
    if !manifest.include_wal && request.source.is_none() {
        return Err(format!(
            "backup {} does not include its WAL: restoring it needs segments from {} on from a WAL archive \
             (--wal-archive-dir, or wal_archive_dir or wal_restore_command in the config)",
            manifest.backup_id,
            manifest.wal_options(wal_dir).file_name(manifest.wal_options(wal_dir).segno(manifest.wal_start_lsn)),
        ));
    }
    if let Target::Lsn(lsn) = target {
        if lsn < manifest.end_lsn {
            return Err(before_backup_end(&manifest, format!("target LSN {lsn}")));
        }
    }
    let marker = PitrMarker {
        backup: request.backup.display().to_string(),
        backup_id: manifest.backup_id.clone(),
        target: target.to_string(),
    };
    let text = serde_json::to_vec_pretty(&marker).expect("the marker serializes");
    write_atomically(fs, data_dir, PITR_MARKER, &text).map_err(|e| e.to_string())?;
    plan.restore(fs, &request.backup, fs, &|path| path.starts_with("wal/"))?;

    // The timeline to follow, and the WAL along it.
    let timelines = choose_timeline(env, request, &manifest).await?;
    let chain = timelines.chain;
    let own_copies = prefix_checksums(fs, &manifest, wal_dir)?;
    let first = chain.segno(manifest.wal_start_lsn);
    let mut complete_through = Lsn::ZERO;
    let mut gap = None;
    if let Some(source) = &request.source {
        // Everything: the records that begin before an LSN target may end
        // several segments on, and a time target's stop is found by the scan.
        let fetched = fetch_wal(source, env, &chain, first, progress).await?;
        tracing::info!(segments = fetched.names.len(), timeline = chain.timeline, "fetched archived WAL");
        if fetched.names.len() > 1 {
            complete_through = Lsn((first + fetched.names.len() as u64 - 1) * chain.segment_size);
        }
        gap = fetched.gap;
    }
    if let (Some(gap), Target::Latest) = (&gap, target) {
        // `latest` is the archive's end: never silently short of it.
        return Err(format!("{gap}; recover to a time or an LSN before the gap to stop there"));
    }
    for (segno, limit, checksum) in own_copies {
        let path = chain.path(segno);
        if prefix_checksum(fs, &path, limit).ok() != Some(checksum) {
            return Err(format!(
                "archived segment {} differs from the backup's own copy before the backup's end LSN {}: the archive \
                 holds WAL of another database or timeline",
                chain.file_name(segno),
                manifest.end_lsn
            ));
        }
    }
    let scan = resolve(env, &chain, &manifest, complete_through, target, gap.as_deref())?;

    // Phase 1: the data files.
    plan.restore(fs, &request.backup, fs, &|path| !path.starts_with("wal/"))?;
    log.say(format!("Phase 1: Restoring base backup... done ({} pages)", thousands(manifest.data_pages)));

    // Phase 2: branch onto a new timeline at the stop point, then replay.
    log.say("Phase 2: Replaying WAL segments...".into());
    let timeline = if active(PlantedBug::PitrReusesTimeline) { chain.timeline } else { timelines.highest + 1 };
    let reason = match target {
        Target::Time(_) => format!("before {target}"),
        Target::Lsn(_) => format!("at {target}"),
        Target::Latest => "latest".into(),
    };
    let history = timelines.history.child(chain.timeline, scan.stop, reason);
    branch(fs, &chain, scan.stop, &scan.open, timeline, &history, data_dir)?;
    // Archiving stays configured, so the new timeline's segments are held
    // until archived (a later recovery along this timeline replays them);
    // the archiver itself waits for the normal start (see `Database::open`),
    // which archives the history file first.
    let mut engine = request.engine.clone();
    engine.wal_segment_size = manifest.wal_segment_size;
    engine.point_in_time_recovery = true;
    let db = Database::open(env.clone(), engine).await.map_err(|e| format!("replaying the WAL failed: {e}"))?;
    let last = chain.segno(Lsn(scan.stop.0 - 1));
    let segments: Vec<String> = (first..=last).map(|segno| chain.file_name(segno)).collect();
    for (i, name) in segments.iter().enumerate() {
        let reached = if i + 1 == segments.len() { " (target reached)" } else { "" };
        log.say(format!("Replaying segment {name}... done{reached}"));
    }
    let rolled_back = db.recovery_report().losers;
    if rolled_back > 0 {
        probe::hit(Probe::PitrRolledBackOpen);
    }
    db.shutdown().await.map_err(|e| format!("the closing checkpoint failed: {e}"))?;
    let marker = data_dir.join(PITR_MARKER);
    fs.remove(&marker).map_err(|e| format!("{}: {e}", marker.display()))?;
    fs.sync_dir(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;

    // Phase 3.
    log.say("Phase 3: Recovery complete".into());
    let when = scan.last_commit_micros.map_or_else(
        || "the backup's end (no commit after it)".to_string(),
        |micros| humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_micros(micros)).to_string(),
    );
    log.say(format!("Recovered to: {when} (LSN: {})", scan.stop));
    log.say(format!("Transactions recovered: {}", thousands(scan.commits)));
    log.say(format!("Transactions rolled back: {} (in-progress at recovery point)", thousands(rolled_back as u64)));
    log.say(format!("Continuing on timeline {timeline} (history file {})", history_file_name(timeline)));
    Ok(PitrOutcome {
        pages: manifest.data_pages,
        segments,
        stop: scan.stop,
        recovered_to_micros: scan.last_commit_micros,
        commits: scan.commits,
        rolled_back,
        timeline,
        lines: log.0,
    })
}

fn before_backup_end(manifest: &Manifest, what: String) -> String {
    format!(
        "{what} is before the backup's end LSN {} (backup {}, ended {}): the backup is consistent only from there \
         on; restore an older backup",
        manifest.end_lsn, manifest.backup_id, manifest.end_time
    )
}

/// Removes every file in `dir` (what an unfinished recovery left), the
/// marker file `last` last: a crash part way leaves it.
pub(crate) fn clear_dir(fs: &dyn Fs, dir: &Path, last: &str) -> Result<(), String> {
    let names = match fs.list(dir) {
        Ok(names) => names,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    for name in names.iter().filter(|name| *name != last).chain(names.iter().filter(|n| *n == last)) {
        let path = dir.join(name);
        fs.remove(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    fs.sync_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))
}

struct Timelines {
    /// The chosen timeline's log.
    chain: WalOptions,
    /// Its history.
    history: TimelineHistory,
    /// The highest timeline the archive knows.
    highest: u32,
}

/// Finds the timelines the archive knows (history files `N+1`, `N+2`, …
/// after the backup's `N`, as PostgreSQL probes), and picks the one to
/// follow: `--restore-timeline`, or the newest whose history passes
/// through the backup (it left the backup's timeline at or after the
/// backup's end).
async fn choose_timeline(env: &Env, request: &PitrRequest, manifest: &Manifest) -> Result<Timelines, String> {
    let wal_dir = &request.engine.wal_dir;
    let base = manifest.timeline;
    let mut histories = std::collections::BTreeMap::new();
    if let Some(source) = &request.source {
        let mut timeline = if base > 1 { base } else { base + 1 };
        loop {
            let name = history_file_name(timeline);
            let staging = wal_dir.join(format!("{name}.fetched"));
            if source.fetch(env, &name, &staging).await? == Fetched::NotFound {
                if timeline > base {
                    break;
                }
                timeline += 1;
                continue;
            }
            let bytes = crate::archive::read_file(env.fs.as_ref(), &staging).map_err(|e| e.to_string())?;
            env.fs.remove(&staging).map_err(|e| format!("{}: {e}", staging.display()))?;
            let history = String::from_utf8(bytes)
                .map_err(|_| format!("{name} in the archive is not text"))
                .and_then(|text| TimelineHistory::parse(&text).map_err(|e| format!("{name} in the archive: {e}")))?;
            histories.insert(timeline, history);
            timeline += 1;
        }
    }
    let highest = histories.keys().copied().max().unwrap_or(base).max(base);
    let passes_through = |timeline: u32| {
        timeline == base
            || histories
                .get(&timeline)
                .and_then(|history: &TimelineHistory| history.switch_of(base))
                .is_some_and(|switch| switch >= manifest.end_lsn)
    };
    let chosen = match request.timeline {
        Some(wanted) if passes_through(wanted) => wanted,
        Some(wanted) if wanted != base && !histories.contains_key(&wanted) => {
            return Err(format!(
                "--restore-timeline {wanted}: the archive has no history file {} (timelines known: {base}{})",
                history_file_name(wanted),
                histories.keys().map(|t| format!(", {t}")).collect::<String>()
            ))
        }
        Some(wanted) => {
            return Err(format!(
                "--restore-timeline {wanted}: timeline {wanted} does not pass through backup {} (timeline {base}, end \
                 LSN {}): it left timeline {base} before the backup's end, or never was on it",
                manifest.backup_id, manifest.end_lsn
            ))
        }
        None => (base..=highest).rev().find(|t| passes_through(*t)).unwrap_or(base),
    };
    let history = histories.get(&chosen).cloned().unwrap_or_default();
    let mut chain = manifest.wal_options(wal_dir);
    chain.timeline = chosen;
    chain.history = history.switches.clone();
    if chosen != base {
        probe::hit(Probe::PitrFollowedNewerTimeline);
        tracing::info!(timeline = chosen, backup_timeline = base, "following the newest timeline in the archive");
    }
    Ok(Timelines { chain, history, highest })
}

/// The backup's own WAL copies in `wal_dir`: each segment's number, how
/// many of its bytes were final when the backup ended, and their checksum.
pub(crate) fn prefix_checksums(
    fs: &dyn Fs,
    manifest: &Manifest,
    wal_dir: &Path,
) -> Result<Vec<(u64, u64, u32)>, String> {
    let opts = manifest.wal_options(wal_dir);
    let mut out = Vec::new();
    for entry in &manifest.wal_segments {
        let Some((_, segno)) = parse_segment_file_name(&entry.name, opts.segment_size) else { continue };
        let path = wal_dir.join(&entry.name);
        if !fs.exists(&path).unwrap_or(false) {
            continue;
        }
        let limit =
            if segno == opts.segno(manifest.end_lsn) { opts.offset(manifest.end_lsn) } else { opts.segment_size };
        out.push((segno, limit, prefix_checksum(fs, &path, limit)?));
    }
    Ok(out)
}

pub(crate) fn prefix_checksum(fs: &dyn Fs, path: &Path, limit: u64) -> Result<u32, String> {
    let file = fs.open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let len = file.len().map_err(|e| format!("{}: {e}", path.display()))?.min(limit);
    let mut bytes = vec![0; len as usize];
    file.read_exact_at(&mut bytes, 0).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(crc32fast::hash(&bytes))
}

/// Where the replay stops, and what it replays.
#[derive(Debug, Clone)]
struct Stop {
    stop: Lsn,
    commits: u64,
    last_commit_micros: Option<u64>,
    /// Transactions with changes but no end before the stop: their last
    /// record's LSN, by id (tracked only for the planted bug that needs it).
    open: std::collections::BTreeMap<u64, Lsn>,
}

/// Scans the WAL from the backup's start (checking every record) and
/// resolves the stop point; refuses a target it cannot reach.
fn resolve(
    env: &Env,
    chain: &WalOptions,
    manifest: &Manifest,
    complete_through: Lsn,
    target: Target,
    gap: Option<&str>,
) -> Result<Stop, String> {
    let mut reader =
        WalReader::new(env.fs.clone(), chain.clone(), manifest.wal_start_lsn).durable_through(complete_through);
    let mut commits = 0;
    let mut last_commit_micros = None;
    let mut previous_end = manifest.wal_start_lsn;
    let mut stop = None;
    let mut start_checkpoint_seen = false;
    let mut open = std::collections::BTreeMap::new();
    while let Some((lsn, record)) = reader.next_record().map_err(|e| format!("the WAL cannot be replayed: {e}"))? {
        if !start_checkpoint_seen && record.kind == RecordKind::Data && Op::peek(&record.payload).is_none() {
            if let Ok(Op::CheckpointEnd { last_commit_micros: newest, .. }) = Op::decode(&record.payload) {
                // The backup's start checkpoint names the newest commit
                // before it: commits the scan does not see.
                start_checkpoint_seen = true;
                if newest > 0 {
                    last_commit_micros = Some(newest);
                }
                if let Target::Time(at) = target {
                    if newest > at {
                        return Err(before_backup_end(
                            manifest,
                            format!(
                                "target time {target} (a commit at {} precedes the backup's start)",
                                format_micros(newest)
                            ),
                        ));
                    }
                }
            }
        }
        let commit_time = (record.kind == RecordKind::Commit).then(|| record.commit_time_micros()).flatten();
        match target {
            Target::Time(at) if commit_time.is_some_and(|time| time > at) => {
                stop = Some(if active(PlantedBug::PitrIncludesFirstCommitAfter) {
                    lsn.plus(record.encoded_len())
                } else {
                    lsn
                });
                break;
            }
            Target::Lsn(at) if lsn > at => {
                stop = Some(previous_end);
                break;
            }
            _ => {}
        }
        if active(PlantedBug::PitrAbortsWithoutUndo) {
            match record.kind {
                RecordKind::Commit | RecordKind::Abort => {
                    open.remove(&record.xid);
                }
                _ if record.xid != 0 => {
                    open.insert(record.xid, lsn);
                }
                _ => {}
            }
        }
        if let Some(time) = commit_time {
            if lsn >= manifest.start_lsn {
                commits += 1;
            }
            last_commit_micros = Some(time);
        }
        previous_end = lsn.plus(record.encoded_len());
    }
    let end = reader.end().map(|end| end.lsn());
    let stop = match (stop, end) {
        (Some(stop), _) => stop,
        (None, Some(end)) => match target {
            Target::Latest => end,
            // Every record begins before `end`, but one may still begin
            // between the last and `at`, in WAL not available.
            Target::Lsn(at) if at < end => end,
            _ => {
                let next = chain.file_name(chain.segno(end) + u64::from(end.0 % chain.segment_size != 0));
                let what = match target {
                    Target::Time(_) => format!(
                        "target time {target} is past the last WAL available: no commit after it was found, and \
                         the last commit replayable is {}",
                        last_commit_micros.map_or("none".into(), format_micros)
                    ),
                    _ => format!("target {target} is past the last WAL available"),
                };
                return Err(match gap {
                    Some(gap) => format!("{what} before a gap: {gap}"),
                    None => format!("{what}; the WAL ends at {end}, and segment {next} is not in the archive"),
                });
            }
        },
        (None, None) => unreachable!("the reader stopped without reaching the end"),
    };
    if stop < manifest.end_lsn {
        if end == Some(stop) {
            let segno = chain.segno(stop);
            return Err(format!(
                "the WAL available ends at {stop} (in segment {}), before the backup's end LSN {}: the backup cannot \
                 be made consistent; segment {} is missing from the backup and the archive",
                chain.file_name(segno),
                manifest.end_lsn,
                chain.file_name(segno + u64::from(stop.0 % chain.segment_size != 0)),
            ));
        }
        return Err(before_backup_end(
            manifest,
            format!("target time {target} (the first commit after it is at {stop})"),
        ));
    }
    probe::hit(match target {
        Target::Time(_) => Probe::PitrTimeTargetReached,
        Target::Lsn(_) => Probe::PitrLsnTargetReached,
        Target::Latest => Probe::PitrLatestReached,
    });
    if let Target::Lsn(_) = target {
        // A record that begins past the stop was counted above as open.
        open.retain(|_, last| *last < stop);
    }
    Ok(Stop { stop, commits, last_commit_micros, open })
}

/// Branches the log at `stop` onto `timeline` (see the module docs, step
/// 4).
/// `open` names the transactions open at `stop` (only the planted
/// `pitr_aborts_without_undo` reads it). A promoted standby branches the
/// same way.
pub(crate) fn branch(
    fs: &dyn Fs,
    chain: &WalOptions,
    stop: Lsn,
    open: &std::collections::BTreeMap<u64, Lsn>,
    timeline: u32,
    history: &TimelineHistory,
    data_dir: &Path,
) -> Result<(), String> {
    let dir = &chain.dir;
    let segno = chain.segno(stop);
    let mut bytes = vec![0; chain.segment_size as usize];
    let old = chain.path(segno);
    if fs.exists(&old).unwrap_or(false) {
        let file = fs.open(&old).map_err(|e| format!("{}: {e}", old.display()))?;
        let keep = file.len().map_err(|e| format!("{}: {e}", old.display()))?.min(chain.offset(stop));
        file.read_exact_at(&mut bytes[..keep as usize], 0).map_err(|e| format!("{}: {e}", old.display()))?;
    }
    if active(PlantedBug::PitrAbortsWithoutUndo) {
        // Ends each open transaction with an abort record at the stop
        // point (recovery then sees nothing to undo).
        let mut out = Vec::new();
        for (xid, last) in open {
            let at = stop.plus(out.len() as u64);
            if chain.segno(at.plus(64)) != chain.segno(stop) {
                break;
            }
            Record::abort(*xid, *last).encode_into(&mut out, at, timeline, stop);
        }
        let offset = chain.offset(stop) as usize;
        bytes[offset..offset + out.len()].copy_from_slice(&out);
    }
    let io = |e: crate::env::AtomicWriteError| e.to_string();
    write_atomically(fs, dir, &history_file_name(timeline), history.render().as_bytes()).map_err(io)?;
    write_atomically(fs, dir, &segment_file_name(timeline, segno, chain.segment_size), &bytes).map_err(io)?;
    for name in fs.list(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let stale = match parse_segment_file_name(&name, chain.segment_size) {
            Some((tl, n)) => tl != timeline && (n >= segno || !chain.owns_segment(tl, n)),
            None => name.ends_with(".archived") || name.ends_with(".fetched"),
        };
        if stale {
            let path = dir.join(&name);
            fs.remove(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    fs.sync_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut control = ControlFile::load(fs, data_dir)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("the backup restored no control file into {}", data_dir.display()))?;
    control.timeline = timeline;
    control.store(fs, data_dir).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_as_the_page_writes_them() {
        assert_eq!("latest".parse::<Target>(), Ok(Target::Latest));
        assert_eq!("lsn:0/1A3B4C5D".parse::<Target>(), Ok(Target::Lsn(Lsn(0x1A3B_4C5D))));
        assert_eq!("lsn:0/1a3b4c5d".parse::<Target>(), Ok(Target::Lsn(Lsn(0x1A3B_4C5D))));
        let Ok(Target::Time(micros)) = "2026-01-15T14:30:00Z".parse::<Target>() else { panic!("a time") };
        assert_eq!(format_micros(micros), "2026-01-15T14:30:00Z");
        assert_eq!("2026-01-15T15:30:00+01:00".parse::<Target>(), Ok(Target::Time(micros)));
        assert_eq!("2026-01-15T14:30:00.250Z".parse::<Target>(), Ok(Target::Time(micros + 250_000)));
        assert_eq!(Target::Time(micros + 250_000).to_string(), "2026-01-15T14:30:00.250Z");
        assert!("yesterday".parse::<Target>().unwrap_err().contains("RFC 3339"));
        assert!("lsn:12".parse::<Target>().unwrap_err().contains("not an LSN"));
    }
}
