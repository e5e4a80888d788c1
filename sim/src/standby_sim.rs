//! The archive-fed standby oracle.
//!
//! Seeds that run the point-in-time recovery oracle also start a standby
//! from the same backup, on a disk of its own with power loss (torn and
//! lost writes). The archive is revealed to it in a few stages, segment by
//! segment, as a primary would archive them; after each stage the standby
//! catches up. The power fails at a drawn moment (during the restore of
//! the backup, a replay round, its restartpoint, or the promotion), and the
//! standby restarts as a server would: the restore rerun if its signal says
//! it did not finish, the promotion finished if it was cut short. At the
//! end it is promoted and opened:
//!
//! - **`standby_promotes_exact`:** the promoted database holds exactly the
//!   commits the archive holds (what a point-in-time recovery to `latest`
//!   gives), whatever crashed on the way, and accepts a write.
//! - **`standby_refuses_plain_open`:** until promoted, a normal open of the
//!   standby's directories is refused.

use std::path::Path;

use rand::Rng;
use thunderdb::archive::source::ArchiveSource;
use thunderdb::cluster::standby::{read_signal, restore_base, Promotion, Standby};
use thunderdb::db::{Database, DbError, EngineConfig};
use thunderdb::env::{Env, FaultConfig, Fs, SimDisk};
use thunderdb::probe::Phase;
use thunderdb::storage::PAGE_SIZE;
use thunderdb::wal::parse_segment_file_name;

use crate::db_run::read_state;
use crate::pitr_sim::{commit_marker_rows, put, PitrCheck};

const BACKUP: &str = "/backup";
const ARCHIVE: &str = "/archive";
const LATER: &str = ".later";

type Failure = (&'static str, String);

/// The standby oracle takes what the point-in-time recovery oracle takes:
/// the seed, the clock, the knobs, the history, the backup and the archive.
impl PitrCheck<'_> {
    /// Runs the standby check (see the module docs).
    pub async fn run_standby(self) -> Result<(), Failure> {
        let size = self.base.manifest.wal_segment_size;
        let disk = SimDisk::new(self.seed ^ 0x57a7, FaultConfig::power_loss());
        let fs = disk.fs();
        for (path, bytes) in &self.base.files {
            put(fs.as_ref(), &Path::new(BACKUP).join(path), bytes);
        }
        // The archive's files wait under another name (one no fetch asks
        // for), and are renamed into place stage by stage (a rename a crash
        // undoes is redone).
        for (name, bytes) in self.archive {
            put(fs.as_ref(), &Path::new(ARCHIVE).join(format!("{name}{LATER}")), bytes);
        }
        let mut segments: Vec<(u64, &String)> = self
            .archive
            .keys()
            .filter_map(|name| parse_segment_file_name(name, size).map(|(_, segno)| (segno, name)))
            .collect();
        segments.sort();
        let mut config = EngineConfig::new("/standby");
        config.wal_segment_size = size;
        config.buffer_pool_size = 64 * PAGE_SIZE as u64;
        let env = || Env::new(disk.fs(), self.clock.clone(), self.seed);
        let source = ArchiveSource::Dir(ARCHIVE.into());
        let knobs = self.knobs;
        // Where the archive is cut between rounds, and when the power fails.
        let stages = knobs.random_range(1..5usize);
        let mut cuts: Vec<usize> = (0..stages).map(|_| knobs.random_range(0..=segments.len())).collect();
        cuts.sort();
        cuts.push(segments.len());
        let mut crash_at = knobs.random_bool(0.6).then(|| knobs.random_range(1..600u64));
        let what = |crashed: bool| {
            format!(
                "a standby fed the archive in {} stages{}",
                cuts.len(),
                if crashed { ", with a power failure" } else { "" }
            )
        };
        let mut crashed = false;
        disk.set_crash_countdown(crash_at.take());

        let mut standby: Option<Standby> = None;
        let mut stage = 0;
        loop {
            // One step: (re)start the standby, or reveal a stage and catch up.
            let step: Result<bool, String> = async {
                if read_signal(&env(), &config.data_dir).ok().flatten().is_none_or(|signal| !signal.restored) {
                    restore_base(&env(), &config, Path::new(BACKUP))?;
                }
                let current = match standby.as_mut() {
                    Some(current) => current,
                    None => standby.insert(Standby::open(&env(), &config, source.clone()).await?),
                };
                if current.promotion_cut() {
                    return Ok(true);
                }
                if stage == 0 {
                    // Before any promotion, a plain open is refused.
                    match Database::open(env(), config.clone()).await {
                        Err(DbError::Standby { .. }) => {}
                        Err(e) if disk.is_crashed() => return Err(e.to_string()),
                        other => {
                            return Err(format!(
                                "standby_refuses_plain_open: a normal open of the standby's directories gave {}",
                                other.map(|_| "a database".to_string()).unwrap_or_else(|e| e.to_string())
                            ))
                        }
                    }
                }
                while stage < cuts.len() {
                    let fs = disk.fs();
                    for (_, name) in &segments[..cuts[stage]] {
                        let shown = Path::new(ARCHIVE).join(name);
                        let hidden = Path::new(ARCHIVE).join(format!("{name}{LATER}"));
                        if !fs.exists(&shown).map_err(|e| e.to_string())? {
                            fs.rename(&hidden, &shown).map_err(|e| e.to_string())?;
                        }
                    }
                    fs.sync_dir(Path::new(ARCHIVE)).map_err(|e| e.to_string())?;
                    current.catch_up().await?;
                    stage += 1;
                }
                Ok(true)
            }
            .await;
            match step {
                Ok(_) if !disk.is_crashed() => break,
                Err(e) if e.starts_with("standby_refuses_plain_open") => {
                    return Err(("standby_refuses_plain_open", format!("{}: {e}", what(crashed))))
                }
                Err(e) if !disk.is_crashed() => {
                    return Err(("standby_promotes_exact", format!("{}: following failed: {e}", what(crashed))))
                }
                _ => {
                    // The power failed: restart from what is on disk.
                    crashed = true;
                    disk.set_crash_countdown(None);
                    disk.crash();
                    standby = None;
                }
            }
        }

        // The promotion, perhaps cut by a power failure and finished by
        // the next start.
        // A countdown the following did not use may fire here too.
        let crash_promotion = !crashed && knobs.random_bool(0.7);
        if crash_promotion {
            if knobs.random_bool(0.2) {
                disk.set_crash_countdown(Some(knobs.random_range(1..300)));
            } else {
                // Just after the log is branched: the first tail cut is the
                // promoted database's opening (the standby's rounds never
                // cut the log), with the fetched WAL all it has.
                disk.set_crash_in_phase(Phase::WalTailCut, knobs.random_range(1..4));
            }
        }
        let standby = standby.expect("the loop opened it");
        let mut promoted = standby.promote().await;
        if crash_promotion || disk.is_crashed() {
            disk.set_crash_countdown(None);
            disk.crash();
            crashed = true;
            promoted = match read_signal(&env(), &config.data_dir) {
                Ok(Some(_)) => match Standby::open(&env(), &config, source.clone()).await {
                    Ok(standby) => standby.promote().await,
                    Err(e) => Err(e),
                },
                // The signal was removed last: the promotion had finished.
                Ok(None) => promoted.or_else(|_| Ok(Promotion::default())),
                Err(e) => Err(e),
            };
        }
        disk.set_crash_countdown(None);
        promoted.map_err(|e| ("standby_promotes_exact", format!("{}: the promotion failed: {e}", what(crashed))))?;
        let db = Database::open(env(), config.clone()).await.map_err(|e| {
            ("standby_promotes_exact", format!("{}: the promoted database does not open: {e}", what(crashed)))
        })?;
        let found = read_state(&db)
            .await
            .map_err(|e| ("standby_promotes_exact", format!("{}: reading: {e}", what(crashed))))?;
        self.history
            .check_backup(&found, u64::MAX)
            .map_err(|detail| ("standby_promotes_exact", format!("{}, then promoted: {detail}", what(crashed))))?;
        commit_marker_rows(&db, 1)
            .await
            .map_err(|e| ("standby_promotes_exact", format!("{}: a write after the promotion: {e}", what(crashed))))?;
        db.close().await;
        Ok(())
    }
}
