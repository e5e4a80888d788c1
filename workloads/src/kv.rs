//! The kv workload's reference model: puts and deletes on one table.
//!
//! The model holds the rows recovery last established (the truth) and the
//! operations issued since, in order, with how many were acknowledged. After
//! a crash, the rows found must equal the truth with some prefix of those
//! operations applied, and the prefix must cover every acknowledged one.

use std::collections::BTreeMap;

/// A row change: a put (`Some`) or a delete (`None`).
pub type Change = (Vec<u8>, Option<Vec<u8>>);

/// What the table must hold.
#[derive(Debug, Default)]
pub struct KvModel {
    truth: BTreeMap<Vec<u8>, Vec<u8>>,
    pending: Vec<Change>,
    acknowledged: usize,
}

impl KvModel {
    /// A change was made (not yet durable).
    pub fn changed(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.pending.push((key, value));
    }

    /// Every change so far is durable.
    pub fn acknowledged_all(&mut self) {
        self.acknowledged = self.pending.len();
    }

    /// The rows if every change so far survives.
    pub fn expected(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut rows = self.truth.clone();
        for (key, value) in &self.pending {
            apply(&mut rows, key, value);
        }
        rows
    }

    /// Checks rows found after a crash; returns how many pending changes
    /// they reflect, or the violation.
    pub fn check(&self, found: &[(Vec<u8>, Vec<u8>)]) -> Result<usize, String> {
        let mut rows = self.truth.clone();
        for applied in 0..=self.pending.len() {
            if applied > 0 {
                let (key, value) = &self.pending[applied - 1];
                apply(&mut rows, key, value);
            }
            if applied >= self.acknowledged
                && rows.len() == found.len()
                && rows.iter().eq(found.iter().map(|(k, v)| (k, v)))
            {
                return Ok(applied);
            }
        }
        Err(format!(
            "{} rows found match no prefix of the {} changes since the last recovery that keeps the {} acknowledged ones",
            found.len(),
            self.pending.len(),
            self.acknowledged
        ))
    }

    /// Recovery succeeded: the rows found are the truth now.
    pub fn adopt(&mut self, found: Vec<(Vec<u8>, Vec<u8>)>) {
        self.truth = found.into_iter().collect();
        self.pending.clear();
        self.acknowledged = 0;
    }
}

fn apply(rows: &mut BTreeMap<Vec<u8>, Vec<u8>>, key: &[u8], value: &Option<Vec<u8>>) {
    match value {
        Some(value) => rows.insert(key.to_vec(), value.clone()),
        None => rows.remove(key),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(pairs: &[(&[u8], &[u8])]) -> Vec<(Vec<u8>, Vec<u8>)> {
        pairs.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
    }

    #[test]
    fn any_prefix_covering_the_acknowledged_changes_passes() {
        let mut model = KvModel::default();
        model.changed(b"a".to_vec(), Some(b"1".to_vec()));
        model.acknowledged_all();
        model.changed(b"b".to_vec(), Some(b"2".to_vec()));
        model.changed(b"a".to_vec(), None);
        assert_eq!(model.check(&rows(&[(b"a", b"1")])), Ok(1));
        assert_eq!(model.check(&rows(&[(b"a", b"1"), (b"b", b"2")])), Ok(2));
        assert_eq!(model.check(&rows(&[(b"b", b"2")])), Ok(3));
        assert!(model.check(&[]).is_err(), "the acknowledged put is lost");
        assert!(model.check(&rows(&[(b"a", b"9")])).is_err(), "a value nobody wrote");
        assert!(model.check(&rows(&[(b"a", b"1"), (b"c", b"3")])).is_err(), "a row nobody wrote");
    }
}
