//! WAL archiving in the db workload: the swarm's archive plan, a simulated
//! archive command over a simulated object store, and the archive oracle.
//!
//! The oracle, on every seed that archives:
//!
//! - **Identical:** at every open, each archived segment that the WAL
//!   directory still holds complete under its name has exactly its bytes.
//! - **One content per name:** no name in the archive ever changes content
//!   (a retried put of the same bytes is fine).
//! - **Gapless, nothing recycled unarchived:** at the end, the archive holds
//!   a contiguous run of segments from the first, and the WAL directory
//!   holds every later one.
//! - **Complete and replayable:** the archive alone, replayed from its first
//!   segment into an empty database, gives exactly the committed state.
//! - **Status is the truth:** pending count, last archived segment and
//!   archived bytes match the archive.
//! - A foreign file planted under a future segment's name is never
//!   overwritten, and that segment is never recycled: archiving stops there
//!   and says so.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thunderdb::archive::{ArchiveConfig, ArchiveMode, ArchiveStatus};
use thunderdb::env::{CommandOutput, CommandRunner, Fs, SimDisk};
use thunderdb::wal::{parse_segment_file_name, segment_file_name};

use crate::wal_run::knobs_seed;

/// The archive directory, on the live disk (so the disk's faults, ENOSPC
/// included, and its power loss reach it).
pub const ARCHIVE_DIR: &str = "/archive";
/// The simulated command: `sim-archive PATH NAME`.
const COMMAND: &str = "sim-archive %f %n";

/// How a seed archives.
#[derive(Debug, Clone, Copy)]
pub struct ArchivePlan {
    /// Through the simulated command instead of into a directory.
    pub command: bool,
    /// The command's failure, hang and half-write rates.
    pub fail_rate: f64,
    pub hang_rate: f64,
    pub half_write_rate: f64,
    /// A foreign file (another server's segment, say) already sits in the
    /// archive under this segment's name (directory mode only).
    pub foreign_segno: Option<u64>,
    /// Seeds the command's faults.
    pub seed: u64,
}

impl ArchivePlan {
    /// Drawn on a stream of its own, so the other draws of old seeds stay.
    pub fn draw(seed: u64) -> Option<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(knobs_seed(seed) ^ 0xa7c4_u64.rotate_left(24));
        if !rng.random_bool(0.6) {
            return None;
        }
        let command = rng.random_bool(0.4);
        let rate = |rng: &mut ChaCha8Rng, rates: &[f64]| rates[rng.random_range(0..rates.len())];
        Some(ArchivePlan {
            command,
            fail_rate: rate(&mut rng, &[0.0, 0.1, 0.3]),
            hang_rate: rate(&mut rng, &[0.0, 0.05]),
            half_write_rate: rate(&mut rng, &[0.0, 0.1]),
            foreign_segno: (!command && rng.random_bool(0.3)).then(|| rng.random_range(2..8)),
            seed: rng.random(),
        })
    }

    /// The engine's archive settings, with simulation timings.
    pub fn config(&self) -> ArchiveConfig {
        let mode =
            if self.command { ArchiveMode::Command(COMMAND.into()) } else { ArchiveMode::Dir(ARCHIVE_DIR.into()) };
        ArchiveConfig {
            command_timeout: Duration::from_millis(30),
            retry_min: Duration::from_millis(1),
            retry_max: Duration::from_millis(16),
            poll: Duration::from_millis(3),
            pending_alarm: 16,
            ..ArchiveConfig::new(mode)
        }
    }
}

/// The simulated object store the command archives into: remote, so power
/// loss on the live disk never touches it; each put is atomic.
#[derive(Default)]
struct Store {
    objects: BTreeMap<String, Vec<u8>>,
    /// What each name held when a put of it last reported success.
    confirmed: BTreeMap<String, Vec<u8>>,
    violations: Vec<String>,
}

/// `sim-archive PATH NAME`: reads PATH from the live disk and puts it in the
/// store as NAME; fails, hangs or half-writes at the plan's rates.
pub struct SimCommands {
    /// The live disk (a handle of each boot reads it).
    disk: SimDisk,
    store: Mutex<Store>,
    rng: Mutex<ChaCha8Rng>,
    plan: ArchivePlan,
    faults_on: AtomicBool,
}

impl SimCommands {
    pub fn new(disk: &SimDisk, plan: ArchivePlan) -> Self {
        SimCommands {
            disk: disk.clone(),
            store: Mutex::default(),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(plan.seed)),
            plan,
            faults_on: AtomicBool::new(true),
        }
    }

    /// Faults off (the liveness phase).
    pub fn calm(&self) {
        self.faults_on.store(false, Ordering::Relaxed);
    }

    fn draw(&self) -> f64 {
        if !self.faults_on.load(Ordering::Relaxed) {
            return 1.0;
        }
        self.rng.lock().expect("rng").random()
    }

    fn put(&self, name: &str, bytes: Vec<u8>, confirmed: bool) {
        let mut store = self.store.lock().expect("store");
        if confirmed {
            if let Some(earlier) = store.confirmed.get(name).filter(|earlier| **earlier != bytes) {
                let detail =
                    format!("{name} was archived as {} bytes, then as {} different bytes", earlier.len(), bytes.len());
                store.violations.push(detail);
            }
            store.confirmed.insert(name.to_string(), bytes.clone());
        }
        store.objects.insert(name.to_string(), bytes);
    }

    fn objects(&self) -> BTreeMap<String, Vec<u8>> {
        self.store.lock().expect("store").objects.clone()
    }

    /// The objects whose last put reported success (a failed put's partial
    /// object is not archived, by the command rule).
    fn confirmed(&self) -> BTreeMap<String, Vec<u8>> {
        let store = self.store.lock().expect("store");
        store
            .objects
            .iter()
            .filter(|(name, bytes)| store.confirmed.get(*name) == Some(bytes))
            .map(|(n, b)| (n.clone(), b.clone()))
            .collect()
    }

    fn violations(&self) -> Vec<String> {
        self.store.lock().expect("store").violations.clone()
    }
}

pub(crate) fn read_all(fs: &dyn Fs, path: &Path) -> io::Result<Vec<u8>> {
    let file = fs.open(path)?;
    let mut bytes = vec![0; file.len()? as usize];
    file.read_exact_at(&mut bytes, 0)?;
    Ok(bytes)
}

#[async_trait]
impl CommandRunner for SimCommands {
    async fn run(&self, command: &str) -> io::Result<CommandOutput> {
        let words: Vec<&str> = command.split_whitespace().collect();
        let [_, path, name] = words[..] else {
            return Ok(CommandOutput { status: Some(127), stderr: format!("sim: unknown command {command:?}") });
        };
        let bytes = match read_all(self.disk.fs().as_ref(), Path::new(path)) {
            Ok(bytes) => bytes,
            Err(e) => return Ok(CommandOutput { status: Some(1), stderr: format!("sim: reading {path}: {e}") }),
        };
        // Simulated network time.
        tokio::time::sleep(Duration::from_micros(200)).await;
        let plan = &self.plan;
        let draw = self.draw();
        if draw < plan.fail_rate {
            return Ok(CommandOutput { status: Some(1), stderr: "sim: access denied".into() });
        }
        if draw < plan.fail_rate + plan.hang_rate {
            // Sometimes the upload went through before the client hung.
            if draw < plan.fail_rate + plan.hang_rate / 2.0 {
                self.put(name, bytes, false);
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return Ok(CommandOutput { status: Some(1), stderr: "sim: hung".into() });
        }
        if draw < plan.fail_rate + plan.hang_rate + plan.half_write_rate {
            let half = bytes[..bytes.len() / 2].to_vec();
            self.put(name, half, false);
            return Ok(CommandOutput { status: Some(1), stderr: "sim: connection reset mid-upload".into() });
        }
        self.put(name, bytes, true);
        Ok(CommandOutput { status: Some(0), stderr: String::new() })
    }
}

/// The archive as seen now: the directory's files, or the store's objects
/// (all of them, or only those a put confirmed).
pub fn contents(fs: &dyn Fs, commands: Option<&SimCommands>, confirmed: bool) -> BTreeMap<String, Vec<u8>> {
    match commands {
        Some(commands) if confirmed => commands.confirmed(),
        Some(commands) => commands.objects(),
        None => {
            let dir = Path::new(ARCHIVE_DIR);
            let names = fs.list(dir).unwrap_or_default();
            names
                .into_iter()
                .filter(|name| !name.ends_with(".tmp"))
                .filter_map(|name| read_all(fs, &dir.join(&name)).ok().map(|bytes| (name, bytes)))
                .collect()
        }
    }
}

/// Plants the foreign file.
pub fn plant_foreign(fs: &dyn Fs, segno: u64, segment_size: u64) -> PathBuf {
    let dir = Path::new(ARCHIVE_DIR);
    fs.create_dir_all(dir).expect("the archive directory");
    let path = dir.join(segment_file_name(1, segno, segment_size));
    let file = fs.create(&path).expect("the foreign file");
    file.write_all_at(&vec![0x5a; segment_size as usize], 0).expect("written");
    file.sync_all().expect("synced");
    fs.sync_dir(dir).expect("dir synced");
    path
}

/// A failed check: its name and what was found.
pub type Violation = (&'static str, String);

/// What the oracle remembers between observations.
#[derive(Default)]
pub struct ArchiveOracle {
    /// Each name's content when first seen.
    seen: BTreeMap<String, Vec<u8>>,
}

impl ArchiveOracle {
    /// At an open: every archived segment the WAL directory still holds
    /// complete (before `complete_below`) must be byte-identical, and no
    /// name may have changed content since it was first seen. (The caller
    /// stops asking once the live WAL lost sectors at rest.)
    pub fn observe(
        &mut self,
        fs: &dyn Fs,
        wal_dir: &Path,
        segment_size: u64,
        complete_below: u64,
        commands: Option<&SimCommands>,
        foreign: Option<u64>,
    ) -> Result<(), Violation> {
        if let Some(commands) = commands {
            if let Some(violation) = commands.violations().first() {
                return Err(("archive_one_content_per_name", violation.clone()));
            }
        }
        for (name, bytes) in contents(fs, commands, true) {
            if let Some(first) = self.seen.get(&name) {
                if *first != bytes {
                    return Err((
                        "archive_one_content_per_name",
                        format!(
                            "{name} in the archive changed: {} bytes, then {} different bytes",
                            first.len(),
                            bytes.len()
                        ),
                    ));
                }
            } else {
                self.seen.insert(name.clone(), bytes.clone());
            }
            let Some((1, segno)) = parse_segment_file_name(&name, segment_size) else { continue };
            if segno >= complete_below || Some(segno) == foreign {
                continue;
            }
            if let Ok(live) = read_all(fs, &wal_dir.join(&name)) {
                if live != bytes {
                    let at = live.iter().zip(&bytes).position(|(a, b)| a != b).unwrap_or(live.len().min(bytes.len()));
                    return Err((
                        "archive_identical",
                        format!(
                            "archived {name} ({} bytes) differs from the complete segment in the WAL directory ({} bytes) from byte {at}",
                            bytes.len(),
                            live.len()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The end-of-run checks on the archive's shape and the status. Returns
/// the archived segments in order, for the replay check.
pub fn check_final(
    fs: &dyn Fs,
    wal_dir: &Path,
    segment_size: u64,
    durable_segno: u64,
    status: &ArchiveStatus,
    plan: &ArchivePlan,
    commands: Option<&SimCommands>,
) -> Result<Vec<(String, Vec<u8>)>, Violation> {
    let archive = contents(fs, commands, false);
    let mut segments: Vec<(u64, String, Vec<u8>)> = archive
        .iter()
        .filter_map(|(name, bytes)| match parse_segment_file_name(name, segment_size) {
            Some((1, segno)) => Some((segno, name.clone(), bytes.clone())),
            _ => None,
        })
        .collect();
    segments.sort();
    if let Some(foreign) = plan.foreign_segno {
        let name = segment_file_name(1, foreign, segment_size);
        if archive.get(&name).is_none_or(|bytes| bytes.iter().any(|b| *b != 0x5a)) {
            return Err((
                "archive_never_overwrites",
                format!("the foreign file {name} in the archive was overwritten or removed"),
            ));
        }
        // Archiving stops at the foreign file; that segment and every later
        // one stay in the WAL directory.
        segments.retain(|(segno, _, _)| *segno != foreign);
        if foreign < durable_segno && status.detail.conflicts == 0 {
            return Err(("archive_conflict_reported", format!("the archive's foreign {name} was never reported")));
        }
    }
    let archived_through = segments.last().map_or(0, |(segno, _, _)| *segno);
    for (expected, (segno, name, _)) in (1..).zip(&segments) {
        if *segno != expected {
            return Err((
                "archive_gapless",
                format!("the archive holds {name} but not segment {}", segment_file_name(1, expected, segment_size)),
            ));
        }
    }
    let live: Vec<u64> = fs
        .list(wal_dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|name| parse_segment_file_name(name, segment_size))
        .filter(|(timeline, _)| *timeline == 1)
        .map(|(_, segno)| segno)
        .collect();
    for segno in archived_through + 1..durable_segno {
        if !live.contains(&segno) {
            return Err((
                "archive_nothing_recycled_unarchived",
                format!(
                    "segment {} is neither in the archive (which ends at segment {archived_through}) nor in the WAL directory",
                    segment_file_name(1, segno, segment_size)
                ),
            ));
        }
    }
    let pending = durable_segno.saturating_sub(archived_through + 1);
    let last = segments.last().map(|(_, name, _)| name.clone());
    let bytes: u64 = segments.iter().map(|(_, _, bytes)| bytes.len() as u64).sum();
    let reported = (status.segments_pending, status.last_archived_segment.clone(), status.total_archived_bytes);
    if reported != (pending, last.clone(), bytes) {
        return Err((
            "archive_status_true",
            format!(
                "the status says {reported:?} (pending, last archived, bytes); the archive says {:?}",
                (pending, last, bytes)
            ),
        ));
    }
    Ok(segments.into_iter().map(|(_, name, bytes)| (name, bytes)).collect())
}
