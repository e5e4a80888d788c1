//! Transactions: reads and writes under strict two-phase locking, commit
//! under the commit rule, rollback through logged undo.
//!
//! Isolation is **serializable**: every read locks what it read (a row S, a
//! scan its whole table S) and every write locks its row X, all held until
//! the transaction ends; see [`lock`] for the modes and deadlock handling.
//! There are no dirty reads and no lost updates.
//!
//! - **Commit** appends the commit record (stamped with the wall clock, read
//!   while holding the store, and never earlier than the previous commit's
//!   stamp) while holding the store, then waits outside it for the record to be durable,
//!   sharing the sync with concurrent committers (group commit); only then
//!   are the locks released and the commit acknowledged.
//! - **Rollback** undoes the transaction's changes newest first, logging a
//!   compensation record for each, then an abort record.
//! - A transaction that loses a deadlock or times out waiting is rolled back
//!   at once, and the error says to retry. After any error from the engine
//!   the transaction accepts only rollback.
//! - A [`Transaction`] dropped while still open is rolled back by a
//!   background task (a client that disconnects mid-transaction).

pub mod lock;

use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::db::{DbError, Shared, CATALOG};
use crate::planted::{active, PlantedBug};
use crate::storage::{StoreError, Tree};
use crate::wal::Lsn;
use lock::{LockMode, Resource};

/// A table as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Its name.
    pub name: String,
    /// Its tree.
    pub tree: Tree,
    /// The description its creator stored (the SQL layer's schema).
    pub meta: Vec<u8>,
}

impl Table {
    pub(crate) fn decode(name: &[u8], value: &[u8]) -> Table {
        let root = u32::from_le_bytes(value[..4].try_into().expect("catalog rows start with the root"));
        Table { name: String::from_utf8_lossy(name).into_owned(), tree: Tree { root }, meta: value[4..].to_vec() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    Aborted,
    Ended,
}

/// An open transaction. End it with [`commit`](Self::commit) or
/// [`rollback`](Self::rollback).
pub struct Transaction {
    shared: Arc<Shared>,
    xid: u64,
    state: State,
    held: Vec<Resource>,
    /// Roots of the tables this transaction holds exclusively: their rows
    /// need no locks of their own (a bulk load or a rewrite would otherwise
    /// hold one per row).
    exclusive: Vec<u32>,
    /// The wall clock when the transaction began (µs since the epoch); read
    /// only for the planted bug that stamps commits with it.
    begun_micros: u64,
}

impl Transaction {
    pub(crate) fn new(shared: Arc<Shared>, xid: u64) -> Self {
        let begun_micros = if active(PlantedBug::CommitStampedAtBegin) { shared.env.clock.wall_micros() } else { 0 };
        Transaction { shared, xid, state: State::Active, held: Vec::new(), exclusive: Vec::new(), begun_micros }
    }

    /// The environment's monotonic clock (simulated time in simulation):
    /// for timing work, as `EXPLAIN ANALYZE` does.
    pub fn monotonic(&self) -> std::time::Duration {
        self.shared.env.clock.monotonic()
    }

    /// The transaction's id.
    pub fn xid(&self) -> u64 {
        self.xid
    }

    /// The row under `key`, or `None`.
    pub async fn get(&mut self, table: &Table, key: &[u8]) -> Result<Option<Vec<u8>>, DbError> {
        if !crate::planted::active(crate::planted::PlantedBug::ReadWithoutLock) {
            self.lock_row(table.tree, key, LockMode::Shared).await?;
        }
        let found = self.shared.store.lock().await.get(table.tree, key).await;
        self.check(found)
    }

    /// The row under `key`, or `None`, locked for writing: a read that is
    /// about to become a write takes the write lock at once, so two
    /// read-modify-write transactions queue instead of deadlocking on the
    /// upgrade.
    pub async fn get_for_update(&mut self, table: &Table, key: &[u8]) -> Result<Option<Vec<u8>>, DbError> {
        self.lock_row(table.tree, key, LockMode::Exclusive).await?;
        let found = self.shared.store.lock().await.get(table.tree, key).await;
        self.check(found)
    }

    /// The rows with keys in the range, in key order.
    pub async fn scan(
        &mut self,
        table: &Table,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, DbError> {
        self.scan_limit(table, start, end, usize::MAX).await
    }

    /// At most `limit` rows with keys in the range, in key order; a long scan
    /// reads in batches, each starting just after the last key of the one
    /// before. The whole table is locked shared, so the batches see one
    /// state.
    pub async fn scan_limit(
        &mut self,
        table: &Table,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, DbError> {
        if !self.exclusive.contains(&table.tree.root) {
            self.lock(Resource::Table(table.tree.root), LockMode::Shared).await?;
        }
        let rows = self.shared.store.lock().await.scan_limit(table.tree, start, end, limit).await;
        let rows = self.check(rows)?;
        if rows.len() == limit {
            // A batch of a longer scan: the sessions that share this thread
            // (server::SessionThread) run before the next one.
            tokio::task::yield_now().await;
        }
        Ok(rows)
    }

    /// Locks the whole table exclusively until the transaction ends; its
    /// rows then take no locks of their own.
    pub async fn lock_exclusive(&mut self, table: &Table) -> Result<(), DbError> {
        if !self.exclusive.contains(&table.tree.root) {
            self.lock(Resource::Table(table.tree.root), LockMode::Exclusive).await?;
            self.exclusive.push(table.tree.root);
        }
        Ok(())
    }

    /// Sets the row under `key`, inserting or replacing it.
    pub async fn put(&mut self, table: &Table, key: &[u8], value: &[u8]) -> Result<(), DbError> {
        self.lock_row(table.tree, key, LockMode::Exclusive).await?;
        let done = self.shared.store.lock().await.put(self.xid, table.tree, key, value).await;
        self.check(done)
    }

    /// Inserts a row; fails with [`DbError::DuplicateKey`] if the key exists.
    pub async fn insert(&mut self, table: &Table, key: &[u8], value: &[u8]) -> Result<(), DbError> {
        self.lock_row(table.tree, key, LockMode::Exclusive).await?;
        let mut store = self.shared.store.lock().await;
        let exists = match store.get(table.tree, key).await {
            Ok(found) => found.is_some(),
            Err(e) => {
                drop(store);
                return self.check(Err(e));
            }
        };
        if exists {
            return Err(DbError::DuplicateKey { table: table.name.clone() });
        }
        let done = store.put(self.xid, table.tree, key, value).await;
        drop(store);
        self.check(done)
    }

    /// Inserts new rows in order until one whose key exists (in the table,
    /// or earlier in `rows`); returns how many it inserted. Each row's lock
    /// is taken first, as [`Transaction::insert`] does; rows that share a
    /// leaf are logged together.
    pub async fn insert_many(&mut self, table: &Table, rows: &[(Vec<u8>, Vec<u8>)]) -> Result<usize, DbError> {
        for (key, _) in rows {
            self.lock_row(table.tree, key, LockMode::Exclusive).await?;
        }
        let done = self.shared.store.lock().await.insert_batch(self.xid, table.tree, rows).await;
        self.check(done)
    }

    /// Deletes the row under `key`; `false` if there was none.
    pub async fn delete(&mut self, table: &Table, key: &[u8]) -> Result<bool, DbError> {
        self.lock_row(table.tree, key, LockMode::Exclusive).await?;
        let done = self.shared.store.lock().await.delete(self.xid, table.tree, key).await;
        self.check(done)
    }

    /// The table called `name`, if one exists (and is visible: its creation
    /// committed, or was this transaction's).
    pub async fn table(&mut self, name: &str) -> Result<Option<Table>, DbError> {
        self.lock_row(CATALOG, name.as_bytes(), LockMode::Shared).await?;
        let found = self.shared.store.lock().await.get(CATALOG, name.as_bytes()).await;
        Ok(self.check(found)?.map(|value| Table::decode(name.as_bytes(), &value)))
    }

    /// Every table, by name.
    pub async fn tables(&mut self) -> Result<Vec<Table>, DbError> {
        self.lock(Resource::Table(CATALOG.root), LockMode::Shared).await?;
        let rows = self.shared.store.lock().await.scan(CATALOG).await;
        Ok(self.check(rows)?.iter().map(|(name, value)| Table::decode(name, value)).collect())
    }

    /// Creates a table called `name` described by `meta`.
    pub async fn create_table(&mut self, name: &str, meta: &[u8]) -> Result<Table, DbError> {
        self.lock_row(CATALOG, name.as_bytes(), LockMode::Exclusive).await?;
        let mut store = self.shared.store.lock().await;
        let created = async {
            if store.get(CATALOG, name.as_bytes()).await?.is_some() {
                return Ok(None);
            }
            let tree = store.create_tree().await?;
            store.free_on_rollback(self.xid, tree);
            let mut row = tree.root.to_le_bytes().to_vec();
            row.extend_from_slice(meta);
            store.put(self.xid, CATALOG, name.as_bytes(), &row).await?;
            Ok(Some(tree))
        }
        .await;
        drop(store);
        match self.check(created)? {
            Some(tree) => Ok(Table { name: name.to_string(), tree, meta: meta.to_vec() }),
            None => Err(DbError::TableExists(name.to_string())),
        }
    }

    /// Replaces the description of the table called `name`, keeping its
    /// tree (the SQL layer's schema gains or loses an index).
    pub async fn set_table_meta(&mut self, name: &str, meta: &[u8]) -> Result<Table, DbError> {
        let Some(table) = self.table(name).await? else { return Err(DbError::NoSuchTable(name.to_string())) };
        self.lock_row(CATALOG, name.as_bytes(), LockMode::Exclusive).await?;
        let mut row = table.tree.root.to_le_bytes().to_vec();
        row.extend_from_slice(meta);
        let done = self.shared.store.lock().await.put(self.xid, CATALOG, name.as_bytes(), &row).await;
        self.check(done)?;
        Ok(Table { meta: meta.to_vec(), ..table })
    }

    /// Drops the table called `name`.
    pub async fn drop_table(&mut self, name: &str) -> Result<(), DbError> {
        let Some(table) = self.table(name).await? else { return Err(DbError::NoSuchTable(name.to_string())) };
        self.lock_row(CATALOG, name.as_bytes(), LockMode::Exclusive).await?;
        self.lock(Resource::Table(table.tree.root), LockMode::Exclusive).await?;
        let mut store = self.shared.store.lock().await;
        let done = store.delete(self.xid, CATALOG, name.as_bytes()).await;
        if done.is_ok() {
            store.free_on_commit(self.xid, table.tree).await;
        }
        drop(store);
        self.check(done).map(|_| ())
    }

    /// Gives the table called `name` a new, empty tree described by `meta`
    /// (`TRUNCATE`, or a rewrite that fills the new tree from the old).
    /// Returns the old table and the new; both are locked exclusively. The
    /// old tree's pages are freed if the transaction commits, the new one's
    /// if it rolls back.
    pub async fn replace_table(&mut self, name: &str, meta: &[u8]) -> Result<(Table, Table), DbError> {
        let Some(old) = self.table(name).await? else { return Err(DbError::NoSuchTable(name.to_string())) };
        self.lock_row(CATALOG, name.as_bytes(), LockMode::Exclusive).await?;
        self.lock_exclusive(&old).await?;
        let mut store = self.shared.store.lock().await;
        let created = async {
            let tree = store.create_tree().await?;
            store.free_on_rollback(self.xid, tree);
            let mut row = tree.root.to_le_bytes().to_vec();
            row.extend_from_slice(meta);
            store.put(self.xid, CATALOG, name.as_bytes(), &row).await?;
            store.free_on_commit(self.xid, old.tree).await;
            Ok(tree)
        }
        .await;
        drop(store);
        let tree = self.check(created)?;
        // Nobody else can see the new tree before this transaction commits
        // (the catalog row is ours), so the lock is only bookkeeping.
        let new = Table { name: name.to_string(), tree, meta: meta.to_vec() };
        self.lock_exclusive(&new).await?;
        Ok((old, new))
    }

    /// Commits: returns once the commit record is durable, with its LSN;
    /// `None` if the transaction changed nothing, so nothing was logged and
    /// nothing waited for the disk (a read-only commit says nothing about
    /// other transactions' durability).
    pub async fn commit(mut self) -> Result<Option<Lsn>, DbError> {
        self.ensure_active()?;
        let appended = {
            // The clock is read holding the store, so that commit times
            // follow log order (the store clamps a clock stepped back).
            let mut store = self.shared.store.lock().await;
            let now = self.shared.env.clock.wall_micros();
            let stamp = if active(PlantedBug::CommitStampedAtBegin) { self.begun_micros } else { now };
            store.commit(self.xid, stamp).await
        };
        // The store forgot the transaction; whatever happens next, it is over.
        self.state = State::Ended;
        let result = match appended {
            Ok(Some(commit)) => {
                if commit.clamped {
                    self.shared.stats.commit_time_clamps.fetch_add(1, Ordering::Relaxed);
                }
                self.shared
                    .wal
                    .flush_commit(commit.end)
                    .await
                    .map(|_| Some(commit.lsn))
                    .map_err(|e| DbError::Store(e.into()))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(e.into()),
        };
        self.release();
        if result.is_ok() {
            self.shared.stats.committed.fetch_add(1, Ordering::Relaxed);
            self.shared.wal_written();
        }
        result
    }

    /// Rolls back: undoes every change, then releases the locks.
    pub async fn rollback(mut self) -> Result<(), DbError> {
        let result = self.abort().await;
        self.state = State::Ended;
        result
    }

    /// Undoes the transaction's changes unless that was done already, and
    /// releases its locks.
    async fn abort(&mut self) -> Result<(), DbError> {
        self.state = State::Aborted;
        let undone = rollback_if_open(&self.shared, self.xid).await;
        self.release();
        undone
    }

    fn release(&mut self) {
        let held = std::mem::take(&mut self.held);
        self.shared.locks.release_all(self.xid, &held);
    }

    fn ensure_active(&self) -> Result<(), DbError> {
        match self.state {
            State::Active if self.shared.shutting_down.load(Ordering::Acquire) => Err(DbError::ShuttingDown),
            State::Active => Ok(()),
            State::Aborted | State::Ended => Err(DbError::Aborted { xid: self.xid }),
        }
    }

    /// Passes a store result through; after a store error the transaction
    /// accepts only rollback (the engine may have stopped, or the statement
    /// failed half way).
    fn check<T>(&mut self, result: Result<T, StoreError>) -> Result<T, DbError> {
        result.map_err(|e| {
            if !matches!(e, StoreError::TooLarge(_) | StoreError::KeyTooLong { .. }) {
                self.state = State::Aborted;
            }
            DbError::Store(e)
        })
    }

    async fn lock_row(&mut self, tree: Tree, key: &[u8], mode: LockMode) -> Result<(), DbError> {
        if self.exclusive.contains(&tree.root) {
            return self.ensure_active();
        }
        let intent = if mode == LockMode::Shared { LockMode::IntentShared } else { LockMode::IntentExclusive };
        self.lock(Resource::Table(tree.root), intent).await?;
        self.lock(Resource::Row(tree.root, key.to_vec()), mode).await
    }

    async fn lock(&mut self, resource: Resource, mode: LockMode) -> Result<(), DbError> {
        self.ensure_active()?;
        match self.shared.locks.acquire(self.xid, &resource, mode).await {
            Ok(true) => {
                self.held.push(resource);
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(lock_error) => {
                // The victim rolls back now, so the others can go on.
                self.abort().await?;
                Err(lock_error.into())
            }
        }
    }
}

/// Rolls `xid` back in the store if the store still has it open.
async fn rollback_if_open(shared: &Shared, xid: u64) -> Result<(), DbError> {
    let mut store = shared.store.lock().await;
    if !store.is_active(xid) {
        return Ok(());
    }
    shared.stats.aborted.fetch_add(1, Ordering::Relaxed);
    store.rollback(xid).await.map(|_| ()).map_err(DbError::from)
}

impl Transaction {
    /// Leaves the transaction open for good, as a client that went silent
    /// mid-transaction does: its locks stay held and its changes stay
    /// uncommitted until the engine stops, and recovery rolls it back. For
    /// the simulator, which used `mem::forget` and so kept every such
    /// database's memory for the rest of the process.
    #[doc(hidden)]
    pub fn abandon(mut self) {
        self.state = State::Ended;
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if self.state == State::Ended {
            return;
        }
        let (shared, xid, held) = (self.shared.clone(), self.xid, std::mem::take(&mut self.held));
        tokio::spawn(async move {
            if let Err(error) = rollback_if_open(&shared, xid).await {
                tracing::error!(xid, %error, "rolling back an abandoned transaction failed");
            }
            shared.locks.release_all(xid, &held);
        });
    }
}
