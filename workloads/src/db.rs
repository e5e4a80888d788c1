//! The transactional workloads' reference model: tables of rows, changed by
//! committed transactions in commit order.
//!
//! The model holds the state recovery last established (the truth) and every
//! transaction that asked to commit since, in the order their commit records
//! were appended, each marked once its commit was acknowledged. After a
//! crash, the state found must equal the truth with some prefix of those
//! commits applied, and the prefix must cover every acknowledged one: a
//! commit whose call failed may or may not have survived, but one that
//! returned `Ok` must have, and nothing of a transaction that never asked to
//! commit may appear.
//!
//! Workloads keep their own invariants too; the bank's is here:
//! [`bank_total`].

use std::collections::BTreeMap;

/// A table's rows by key.
pub type Rows = BTreeMap<Vec<u8>, Vec<u8>>;

/// Every table's rows, by table name.
pub type State = BTreeMap<String, Rows>;

/// One change a transaction made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// A row set.
    Put(String, Vec<u8>, Vec<u8>),
    /// A row removed (whether or not it existed).
    Delete(String, Vec<u8>),
    /// A table created, empty.
    CreateTable(String),
    /// A table dropped with its rows.
    DropTable(String),
}

#[derive(Debug)]
struct Commit {
    writes: Vec<Write>,
    acknowledged: bool,
    /// The commit record's LSN, once acknowledged with one.
    lsn: Option<u64>,
}

/// What the database must hold.
#[derive(Debug, Default)]
pub struct DbModel {
    truth: State,
    commits: Vec<Commit>,
}

impl DbModel {
    /// A transaction with these writes is about to append its commit record;
    /// returns its index for [`acknowledged`](Self::acknowledged). Call it
    /// in commit-record order.
    pub fn committing(&mut self, writes: Vec<Write>) -> usize {
        self.commits.push(Commit { writes, acknowledged: false, lsn: None });
        self.commits.len() - 1
    }

    /// The commit at `index` returned `Ok`: it must survive any crash.
    pub fn acknowledged(&mut self, index: usize) {
        self.commits[index].acknowledged = true;
    }

    /// The acknowledged commit at `index` logged its commit record at `lsn`.
    pub fn logged_at(&mut self, index: usize, lsn: u64) {
        self.commits[index].lsn = Some(lsn);
    }

    /// Checks the state a backup restored to its end LSN `end`: the truth
    /// with exactly the commits whose records lie below `end`. Commits are
    /// in commit-record order, so that is a prefix; acknowledged commits
    /// (whose LSNs are known) pin it from both sides, and the rest may fall
    /// either way within those bounds. Returns the prefix's length.
    pub fn check_backup(&self, found: &State, end: u64) -> Result<usize, String> {
        let logged = || self.commits.iter().enumerate().filter_map(|(i, c)| c.lsn.map(|lsn| (i, lsn)));
        let at_least = logged().filter(|(_, lsn)| *lsn < end).map(|(i, _)| i + 1).max().unwrap_or(0);
        let at_most = logged().filter(|(_, lsn)| *lsn >= end).map(|(i, _)| i).min().unwrap_or(self.commits.len());
        if let Some(applied) = self.matching_prefix(found, at_least, at_most) {
            return Ok(applied);
        }
        Err(format!(
            "the backup restored ({}) matches no prefix of the commits from {at_least} to {at_most} (those below its end LSN {end:#x}); against the first {at_least}: {}",
            describe(found),
            first_difference(found, &self.expected_prefix(at_least)),
        ))
    }

    /// Appends the first `applied` commits since the last recovery (those
    /// the recovery found: [`check`](Self::check)'s answer) to `history`,
    /// with their LSNs where known. A model that only ever gets survivors
    /// appended holds every commit in the log, in log order: the reference
    /// for a point-in-time recovery to any LSN
    /// ([`check_backup`](Self::check_backup)).
    pub fn record_survivors(&self, applied: usize, history: &mut DbModel) {
        for commit in &self.commits[..applied] {
            history.commits.push(Commit { writes: commit.writes.clone(), acknowledged: true, lsn: commit.lsn });
        }
    }

    /// Whether the commit whose record is at `lsn` changed anything
    /// (`None`: no commit known there).
    pub fn changed_at(&self, lsn: u64) -> Option<bool> {
        self.commits.iter().find(|commit| commit.lsn == Some(lsn)).map(|commit| !commit.writes.is_empty())
    }

    /// Commits since the last recovery.
    pub fn len(&self) -> usize {
        self.commits.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.commits.is_empty()
    }

    /// Commits acknowledged since the last recovery.
    pub fn acknowledged_count(&self) -> usize {
        self.commits.iter().filter(|commit| commit.acknowledged).count()
    }

    /// The value of one row if every commit so far survives (what a
    /// serializable read sees once it holds its lock).
    pub fn expected_value(&self, table: &str, key: &[u8]) -> Option<Vec<u8>> {
        for commit in self.commits.iter().rev() {
            for write in commit.writes.iter().rev() {
                match write {
                    Write::Put(t, k, value) if t == table && k == key => return Some(value.clone()),
                    Write::Delete(t, k) if t == table && k == key => return None,
                    Write::CreateTable(t) | Write::DropTable(t) if t == table => return None,
                    _ => {}
                }
            }
        }
        self.truth.get(table).and_then(|rows| rows.get(key).cloned())
    }

    /// The state if every commit so far survives.
    pub fn expected(&self) -> State {
        let mut state = self.truth.clone();
        for commit in &self.commits {
            apply(&mut state, &commit.writes);
        }
        state
    }

    /// Checks the state found after a crash; returns how many commits since
    /// the last recovery it reflects, or the violation.
    pub fn check(&self, found: &State) -> Result<usize, String> {
        let must_keep = self.commits.iter().rposition(|commit| commit.acknowledged).map_or(0, |last| last + 1);
        if let Some(applied) = self.matching_prefix(found, must_keep, self.commits.len()) {
            return Ok(applied);
        }
        Err(format!(
            "the state found ({}) matches no prefix of the {} commits since the last recovery that keeps the {} acknowledged ones (the first {must_keep}); against that prefix: {}",
            describe(found),
            self.commits.len(),
            self.acknowledged_count(),
            first_difference(found, &self.expected_prefix(must_keep)),
        ))
    }

    /// The length of the prefix of the commits, between `at_least` and
    /// `at_most`, that turns the truth into `found`, if any.
    fn matching_prefix(&self, found: &State, at_least: usize, at_most: usize) -> Option<usize> {
        let mut state = self.truth.clone();
        for applied in 0..=at_most {
            if applied > 0 {
                apply(&mut state, &self.commits[applied - 1].writes);
            }
            if applied >= at_least && &state == found {
                return Some(applied);
            }
        }
        None
    }

    fn expected_prefix(&self, commits: usize) -> State {
        let mut state = self.truth.clone();
        for commit in &self.commits[..commits] {
            apply(&mut state, &commit.writes);
        }
        state
    }

    /// Recovery passed the check: the state found is the truth now.
    pub fn adopt(&mut self, found: State) {
        self.truth = found;
        self.commits.clear();
    }
}

fn apply(state: &mut State, writes: &[Write]) {
    for write in writes {
        match write {
            Write::Put(table, key, value) => {
                state.entry(table.clone()).or_default().insert(key.clone(), value.clone());
            }
            Write::Delete(table, key) => {
                if let Some(rows) = state.get_mut(table) {
                    rows.remove(key);
                }
            }
            Write::CreateTable(table) => {
                state.insert(table.clone(), Rows::new());
            }
            Write::DropTable(table) => {
                state.remove(table);
            }
        }
    }
}

/// A short description of a state: each table and its row count.
pub fn describe(state: &State) -> String {
    let tables: Vec<String> = state.iter().map(|(name, rows)| format!("{name}: {} rows", rows.len())).collect();
    tables.join(", ")
}

/// The first row (or table) where `found` and `expected` differ.
pub fn first_difference(found: &State, expected: &State) -> String {
    for name in found.keys().chain(expected.keys()) {
        let (Some(f), Some(e)) = (found.get(name), expected.get(name)) else {
            return format!(
                "table {name} exists in only one ({})",
                if found.contains_key(name) { "found" } else { "expected" }
            );
        };
        for key in f.keys().chain(e.keys()) {
            if f.get(key) != e.get(key) {
                return format!(
                    "table {name} key {}: found {}, expected {}",
                    short(key),
                    f.get(key).map_or("nothing".into(), |v| short(v)),
                    e.get(key).map_or("nothing".into(), |v| short(v))
                );
            }
        }
    }
    "no difference".into()
}

/// Bytes as hex, shortened past 8 bytes, with the length.
pub fn short(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{hex}{} ({} bytes)", if bytes.len() > 8 { "…" } else { "" }, bytes.len())
}

/// The bank's balances: 8-byte little-endian signed integers.
pub fn balance(value: &[u8]) -> Option<i64> {
    Some(i64::from_le_bytes(value.try_into().ok()?))
}

/// The sum of the bank's balances, which transfers conserve; `Err` names a
/// row that is not a balance.
pub fn bank_total(rows: &Rows) -> Result<i64, String> {
    rows.iter().try_fold(0i64, |sum, (key, value)| {
        balance(value)
            .map(|b| sum + b)
            .ok_or_else(|| format!("account {key:?} holds {} bytes, not a balance", value.len()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(table: &str, key: &[u8], value: &[u8]) -> Write {
        Write::Put(table.into(), key.to_vec(), value.to_vec())
    }

    type Table<'a> = (&'a str, &'a [(&'a [u8], &'a [u8])]);

    fn state(tables: &[Table]) -> State {
        tables
            .iter()
            .map(|(name, rows)| (name.to_string(), rows.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()))
            .collect()
    }

    #[test]
    fn any_prefix_keeping_the_acknowledged_commits_passes() {
        let mut model = DbModel::default();
        let first = model.committing(vec![Write::CreateTable("t".into()), put("t", b"a", b"1")]);
        model.acknowledged(first);
        model.committing(vec![put("t", b"b", b"2"), Write::Delete("t".into(), b"a".to_vec())]);
        model.committing(vec![Write::DropTable("t".into())]);
        assert_eq!(model.check(&state(&[("t", &[(b"a", b"1")])])), Ok(1));
        assert_eq!(model.check(&state(&[("t", &[(b"b", b"2")])])), Ok(2));
        assert_eq!(model.check(&State::new()), Ok(3));
        assert!(model.check(&state(&[("t", &[(b"a", b"1"), (b"b", b"2")])])).is_err(), "half a transaction");
        assert!(model.check(&state(&[("t", &[])])).is_err(), "the acknowledged put is lost");
    }

    #[test]
    fn the_bank_total_sums_balances_and_names_a_bad_row() {
        let mut rows = Rows::new();
        rows.insert(vec![1], 70i64.to_le_bytes().to_vec());
        rows.insert(vec![2], (-20i64).to_le_bytes().to_vec());
        assert_eq!(bank_total(&rows), Ok(50));
        rows.insert(vec![3], vec![1, 2]);
        assert!(bank_total(&rows).unwrap_err().contains("2 bytes"));
    }
}
