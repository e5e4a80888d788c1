//! The commit-time model: what time each commit record must carry.
//!
//! Point-in-time recovery stops at the first commit after a target time, so
//! commit times are part of the durable contract (docs/design.md, "Commit
//! times"):
//!
//! - **Order:** in log order, commit times never go backwards, even when the
//!   wall clock is stepped back (the engine clamps to the previous commit's
//!   time).
//! - **Truth:** a commit's time is the clock read while it committed (or the
//!   clamp). The harness reads the clock just before the commit call and
//!   again when it returns; with no backward step in between, the stamp is
//!   at least the first reading, and it is never past the highest time the
//!   clock has shown.

use std::collections::BTreeMap;
use std::sync::Arc;

use thunderdb::env::Fs;
use thunderdb::wal::{Lsn, RecordKind, WalError, WalOptions, WalReader};

/// Where one acknowledged commit's stamp must lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitWindow {
    /// The clock just before the commit call, when the clock was not
    /// stepped back during the call; `None` when it was.
    pub earliest_micros: Option<u64>,
    /// The highest time the clock had shown when the call returned.
    pub latest_micros: u64,
}

/// The windows of acknowledged commits, by commit LSN.
#[derive(Debug, Default)]
pub struct CommitTimes {
    windows: BTreeMap<Lsn, CommitWindow>,
}

impl CommitTimes {
    /// The commit logged at `lsn` was acknowledged inside `window`.
    pub fn acknowledged(&mut self, lsn: Lsn, window: CommitWindow) {
        self.windows.insert(lsn, window);
    }

    /// Checks commit records read back from the log, in log order: times
    /// never go backwards, and each known commit's time lies in its window.
    pub fn check(&self, logged: &[(Lsn, u64)]) -> Result<(), String> {
        for pair in logged.windows(2) {
            let [(before_lsn, before), (lsn, time)] = [pair[0], pair[1]];
            if time < before {
                return Err(format!(
                    "the commit at {lsn} is stamped {time}, before the commit at {before_lsn} ({before}): commit times went backwards in log order"
                ));
            }
        }
        for (lsn, time) in logged {
            let Some(window) = self.windows.get(lsn) else { continue };
            if window.earliest_micros.is_some_and(|earliest| *time < earliest) {
                return Err(format!(
                    "the commit at {lsn} is stamped {time}, before the clock read {} as it committed",
                    window.earliest_micros.unwrap_or_default()
                ));
            }
            if *time > window.latest_micros {
                return Err(format!(
                    "the commit at {lsn} is stamped {time}, past any time the clock had shown ({})",
                    window.latest_micros
                ));
            }
        }
        Ok(())
    }

    /// Forgets commits before `lsn` (the log no longer holds them).
    pub fn forget_before(&mut self, lsn: Lsn) {
        self.windows = self.windows.split_off(&lsn);
    }
}

/// Every commit record from `from` (a record boundary, such as a
/// checkpoint's redo point) to the end of the log: its LSN and time.
pub fn read_commit_times(fs: Arc<dyn Fs>, opts: WalOptions, from: Lsn) -> Result<Vec<(Lsn, u64)>, WalError> {
    let mut reader = WalReader::new(fs, opts, from);
    let mut commits = Vec::new();
    while let Some((lsn, record)) = reader.next_record()? {
        if record.kind == RecordKind::Commit {
            commits.push((lsn, record.commit_time_micros().expect("a commit record carries its time")));
        }
    }
    Ok(commits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(earliest: Option<u64>, latest: u64) -> CommitWindow {
        CommitWindow { earliest_micros: earliest, latest_micros: latest }
    }

    #[test]
    fn times_must_not_go_backwards_in_log_order() {
        let times = CommitTimes::default();
        assert!(times.check(&[(Lsn(10), 5), (Lsn(20), 5), (Lsn(30), 9)]).is_ok());
        let err = times.check(&[(Lsn(10), 5), (Lsn(20), 4)]).unwrap_err();
        assert!(err.contains("0/14") && err.contains("backwards"), "{err}");
    }

    #[test]
    fn a_known_commit_must_lie_in_its_window() {
        let mut times = CommitTimes::default();
        times.acknowledged(Lsn(10), window(Some(100), 200));
        times.acknowledged(Lsn(20), window(None, 200));
        assert!(times.check(&[(Lsn(10), 150), (Lsn(20), 150)]).is_ok());
        assert!(times.check(&[(Lsn(10), 99)]).unwrap_err().contains("before the clock read 100"));
        assert!(times.check(&[(Lsn(10), 201)]).unwrap_err().contains("past any time"));
        // The clock stepped back during the call: no lower bound.
        assert!(times.check(&[(Lsn(20), 1)]).is_ok());
        times.forget_before(Lsn(20));
        assert!(times.check(&[(Lsn(10), 1)]).is_ok(), "forgotten");
    }
}
