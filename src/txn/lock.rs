//! The lock manager: strict two-phase locking on tables and rows, with
//! multi-granularity intention locks, deadlock detection and a lock timeout.
//!
//! A transaction locks a row (S to read, X to write) after taking an intention
//! lock (IS or IX) on its table; a range scan locks the whole table S. Since
//! an insert into a scanned range needs IX on the table, which conflicts with
//! the scan's S, phantoms are impossible, and with every lock held to the
//! end of the transaction the schedule is serializable.
//!
//! Compatibility (a request is granted when it is compatible with every
//! other transaction's lock on the resource):
//!
//! |    | IS | IX | S | X |
//! |----|----|----|---|---|
//! | IS | ✓  | ✓  | ✓ |   |
//! | IX | ✓  | ✓  |   |   |
//! | S  | ✓  |    | ✓ |   |
//! | X  |    |    |   |   |
//!
//! A transaction that asks for a stronger lock than it holds upgrades it
//! (S plus IX becomes X: there is no SIX mode, which only costs
//! concurrency). A request that must wait records the edge in the wait-for
//! graph; if the edge closes a cycle, the requester is the victim and gets
//! [`LockError::Deadlock`] at once. A wait longer than the lock timeout gets
//! [`LockError::Timeout`]. Either way the caller rolls the transaction back,
//! which releases its locks and wakes the waiters.
//!
//! Waiters sleep on a per-resource [`Notify`]; every release wakes them all
//! to re-check (simple, and fair enough for short waits).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use crate::probe::{self, Probe};

/// A lock mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LockMode {
    /// Intention to read rows of a table.
    IntentShared,
    /// Intention to write rows of a table.
    IntentExclusive,
    /// Read the resource (a row, or a whole table for a scan).
    Shared,
    /// Write the resource.
    Exclusive,
}

impl LockMode {
    fn compatible(self, other: LockMode) -> bool {
        use LockMode::*;
        matches!(
            (self, other),
            (IntentShared, IntentShared | IntentExclusive | Shared)
                | (IntentExclusive, IntentShared | IntentExclusive)
                | (Shared, IntentShared | Shared)
        )
    }

    /// Whether holding `self` already grants `wanted`.
    fn covers(self, wanted: LockMode) -> bool {
        use LockMode::*;
        self == wanted || self == Exclusive || (wanted == IntentShared && matches!(self, Shared | IntentExclusive))
    }

    /// The weakest mode granting both.
    fn combine(self, wanted: LockMode) -> LockMode {
        if self.covers(wanted) {
            self
        } else if wanted.covers(self) {
            wanted
        } else {
            LockMode::Exclusive
        }
    }
}

/// What a lock protects.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    /// A whole table, by its tree's root page.
    Table(u32),
    /// One row of a table, by primary key (present or not).
    Row(u32, Vec<u8>),
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Table(table) => write!(f, "table {table}"),
            Resource::Row(table, key) => {
                write!(f, "row {} of table {table}", String::from_utf8_lossy(key).escape_debug())
            }
        }
    }
}

/// Why a lock was not granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// Waiting would close a cycle in the wait-for graph.
    #[error("deadlock detected: transaction {xid} waiting for {resource} would wait for itself; it was rolled back, retry it")]
    Deadlock {
        /// The victim.
        xid: u64,
        /// What it asked for.
        resource: String,
    },
    /// The lock was not granted within the lock timeout.
    #[error("lock timeout: transaction {xid} waited {waited:?} for {resource}; it was rolled back, retry it")]
    Timeout {
        /// The transaction that waited.
        xid: u64,
        /// What it asked for.
        resource: String,
        /// How long it waited.
        waited: Duration,
    },
}

#[derive(Default)]
struct Entry {
    holders: BTreeMap<u64, LockMode>,
    released: Arc<Notify>,
}

#[derive(Default)]
struct State {
    locks: BTreeMap<Resource, Entry>,
    /// The wait-for graph's edges, by waiter: what it waits for, in which mode.
    waiting: BTreeMap<u64, (Resource, LockMode)>,
}

impl State {
    /// The transactions that keep `xid` waiting.
    fn blockers(&self, xid: u64) -> Vec<u64> {
        let Some((resource, wanted)) = self.waiting.get(&xid) else { return Vec::new() };
        let Some(entry) = self.locks.get(resource) else { return Vec::new() };
        entry
            .holders
            .iter()
            .filter(|(other, mode)| **other != xid && !mode.compatible(*wanted))
            .map(|(o, _)| *o)
            .collect()
    }

    /// Whether `xid`'s wait closes a cycle.
    fn waits_for_itself(&self, xid: u64) -> bool {
        let mut seen = BTreeSet::new();
        let mut stack = self.blockers(xid);
        while let Some(next) = stack.pop() {
            if next == xid {
                return true;
            }
            if seen.insert(next) {
                stack.extend(self.blockers(next));
            }
        }
        false
    }
}

/// Locks held by transactions, and the transactions waiting for them.
pub struct LockManager {
    state: Mutex<State>,
    timeout: Duration,
}

impl LockManager {
    /// A lock manager whose waits give up after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        LockManager { state: Mutex::new(State::default()), timeout }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Grants `xid` a `mode` lock on `resource`, waiting while others hold
    /// conflicting locks. Returns whether the lock is new to `xid` (so the
    /// caller knows to release it).
    pub async fn acquire(&self, xid: u64, resource: &Resource, mode: LockMode) -> Result<bool, LockError> {
        let timer = tokio::time::sleep(self.timeout);
        tokio::pin!(timer);
        loop {
            let released;
            let wakeup = {
                let mut state = self.state();
                let entry = state.locks.entry(resource.clone()).or_default();
                let held = entry.holders.get(&xid).copied();
                if held.is_some_and(|held| held.covers(mode)) {
                    return Ok(false);
                }
                let wanted = held.map_or(mode, |held| held.combine(mode));
                if entry.holders.iter().all(|(other, theirs)| *other == xid || theirs.compatible(wanted)) {
                    entry.holders.insert(xid, wanted);
                    state.waiting.remove(&xid);
                    return Ok(held.is_none());
                }
                released = entry.released.clone();
                state.waiting.insert(xid, (resource.clone(), wanted));
                if state.waits_for_itself(xid) {
                    state.waiting.remove(&xid);
                    probe::hit(Probe::DeadlockVictim);
                    return Err(LockError::Deadlock { xid, resource: resource.to_string() });
                }
                probe::hit(Probe::LockWaited);
                // Registered before the state unlocks, so no release is missed.
                released.notified()
            };
            tokio::select! {
                biased;
                () = wakeup => {}
                () = &mut timer => {
                    self.state().waiting.remove(&xid);
                    return Err(LockError::Timeout { xid, resource: resource.to_string(), waited: self.timeout });
                }
            }
        }
    }

    /// Releases `xid`'s locks on `resources` and wakes their waiters.
    pub fn release_all(&self, xid: u64, resources: &[Resource]) {
        let mut state = self.state();
        state.waiting.remove(&xid);
        for resource in resources {
            if let Some(entry) = state.locks.get_mut(resource) {
                entry.holders.remove(&xid);
                entry.released.notify_waiters();
                if entry.holders.is_empty() {
                    state.locks.remove(resource);
                }
            }
        }
    }

    /// Transactions waiting for a lock now.
    pub fn waiters(&self) -> usize {
        self.state().waiting.len()
    }

    /// Resources with at least one holder (for tests and metrics).
    pub fn locked(&self) -> usize {
        self.state().locks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LockMode::*;

    #[test]
    fn the_compatibility_matrix_is_symmetric_and_upgrades_cover_both_modes() {
        let all = [IntentShared, IntentExclusive, Shared, Exclusive];
        for a in all {
            for b in all {
                assert_eq!(a.compatible(b), b.compatible(a), "{a:?} vs {b:?}");
                let both = a.combine(b);
                assert!(both.covers(a) && both.covers(b), "{a:?} + {b:?} = {both:?}");
            }
        }
        assert!(!Shared.compatible(IntentExclusive), "a scan excludes writers");
        assert_eq!(Shared.combine(IntentExclusive), Exclusive);
    }

    #[tokio::test]
    async fn a_writer_waits_for_a_reader_and_proceeds_when_it_releases() {
        let locks = Arc::new(LockManager::new(Duration::from_secs(5)));
        let row = Resource::Row(1, b"k".to_vec());
        assert!(locks.acquire(1, &row, Shared).await.unwrap());
        assert!(!locks.acquire(1, &row, Shared).await.unwrap(), "held already");
        let granted = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waiter = {
            let (locks, row, granted) = (locks.clone(), row.clone(), granted.clone());
            tokio::spawn(async move {
                let result = locks.acquire(2, &row, Exclusive).await;
                granted.store(true, std::sync::atomic::Ordering::SeqCst);
                result
            })
        };
        while locks.waiters() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(!granted.load(std::sync::atomic::Ordering::SeqCst), "the writer waits");
        locks.release_all(1, std::slice::from_ref(&row));
        assert!(waiter.await.unwrap().unwrap());
    }

    #[tokio::test]
    async fn a_cycle_makes_the_requester_the_victim() {
        let locks = Arc::new(LockManager::new(Duration::from_secs(5)));
        let (a, b) = (Resource::Row(1, b"a".to_vec()), Resource::Row(1, b"b".to_vec()));
        locks.acquire(1, &a, Exclusive).await.unwrap();
        locks.acquire(2, &b, Exclusive).await.unwrap();
        let first = {
            let (locks, b) = (locks.clone(), b.clone());
            tokio::spawn(async move { locks.acquire(1, &b, Exclusive).await })
        };
        while locks.waiters() == 0 {
            tokio::task::yield_now().await;
        }
        let err = locks.acquire(2, &a, Exclusive).await.unwrap_err();
        assert!(matches!(err, LockError::Deadlock { xid: 2, .. }), "{err}");
        assert!(err.to_string().contains("retry"), "{err}");
        locks.release_all(2, std::slice::from_ref(&b));
        assert!(first.await.unwrap().unwrap(), "the survivor gets its lock");
    }

    #[tokio::test]
    async fn an_upgrade_deadlock_between_two_readers_is_found() {
        let locks = Arc::new(LockManager::new(Duration::from_secs(5)));
        let row = Resource::Row(1, b"k".to_vec());
        locks.acquire(1, &row, Shared).await.unwrap();
        locks.acquire(2, &row, Shared).await.unwrap();
        let first = {
            let (locks, row) = (locks.clone(), row.clone());
            tokio::spawn(async move { locks.acquire(1, &row, Exclusive).await })
        };
        while locks.waiters() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(locks.acquire(2, &row, Exclusive).await, Err(LockError::Deadlock { .. })));
        locks.release_all(2, &[row]);
        first.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_wait_past_the_timeout_fails_with_a_timeout() {
        let locks = LockManager::new(Duration::from_millis(50));
        let table = Resource::Table(7);
        locks.acquire(1, &table, Shared).await.unwrap();
        let err = locks.acquire(2, &table, IntentExclusive).await.unwrap_err();
        assert!(matches!(err, LockError::Timeout { xid: 2, .. }), "{err}");
        assert_eq!(locks.locked(), 1);
    }
}
