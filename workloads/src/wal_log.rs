//! The WAL workload: writers append records of random kinds and sizes and
//! flush some of them; crashes cut in anywhere.
//!
//! The model keeps every record the WAL accepted, by LSN, and how far the WAL
//! acknowledged durability. After a crash, the records recovered must be
//! exactly the first `k` accepted records, byte for byte (never a damaged or
//! invented one), and `k` must cover every acknowledged record.

use std::collections::BTreeMap;

use rand::Rng;
use thunderdb::wal::{Lsn, Record};

/// Draws a record: mostly small data records, some commits and aborts, now
/// and then one larger than a tiny segment.
pub fn random_record(rng: &mut impl Rng, xid: u64, prev_lsn: Lsn) -> Record {
    match rng.random_range(0..100u32) {
        0..=19 => Record::commit(xid, prev_lsn, rng.random_range(1_700_000_000_000_000..1_800_000_000_000_000)),
        20..=24 => Record::abort(xid, prev_lsn),
        25..=29 => Record::data(xid, prev_lsn, fill(rng, 600..5000)),
        _ => Record::data(xid, prev_lsn, fill(rng, 0..200)),
    }
}

fn fill(rng: &mut impl Rng, len: std::ops::Range<usize>) -> Vec<u8> {
    let len = rng.random_range(len);
    let mut payload = vec![0; len];
    rng.fill(&mut payload[..]);
    payload
}

/// What the WAL must hold.
#[derive(Debug, Default)]
pub struct WalModel {
    accepted: BTreeMap<Lsn, Record>,
    /// Each accepted record's `durable_lsn` hint: how far the log was durable
    /// when it was appended.
    hints: BTreeMap<Lsn, Lsn>,
    acknowledged_through: Lsn,
    /// The log before this LSN is retired (see [`forget_before`](Self::forget_before)).
    retired_before: Lsn,
}

impl WalModel {
    /// A model of a WAL that recovered `records` (in LSN order).
    pub fn recovered(records: &[(Lsn, Record)]) -> Self {
        let mut model = WalModel::default();
        model.reset_to(records);
        model
    }

    /// The WAL accepted `record` at `lsn`, when the log was durable through
    /// `durable_hint` (read from the WAL just before the append).
    pub fn accepted(&mut self, lsn: Lsn, record: Record, durable_hint: Lsn) {
        if lsn < self.retired_before {
            // Its append returned after the redo point moved past it (it
            // waited to write the buffer behind): recovery never reads it.
            return;
        }
        let previous = self.accepted.insert(lsn, record);
        assert!(previous.is_none(), "the WAL handed out LSN {lsn} twice");
        self.hints.insert(lsn, durable_hint);
    }

    /// Bytes of the log below this LSN have durable evidence after them: an
    /// acknowledged record appended when the log was already durable past
    /// them. Damage there must be reported as corruption, never cut off.
    pub fn evidence_point(&self) -> Lsn {
        self.hints.range(..self.acknowledged_through).map(|(_, hint)| *hint).max().unwrap_or(Lsn::ZERO)
    }

    /// A flush returned: everything before `durable` is acknowledged.
    pub fn acknowledged(&mut self, durable: Lsn) {
        self.acknowledged_through = self.acknowledged_through.max(durable);
    }

    /// Records accepted so far.
    pub fn accepted_count(&self) -> usize {
        self.accepted.len()
    }

    /// Records acknowledged so far.
    pub fn acknowledged_count(&self) -> usize {
        self.accepted.range(..self.acknowledged_through).count()
    }

    /// A durable LSN of an accepted record below the acknowledged point,
    /// suitable as a redo point (the oldest LSN recovery needs), drawn at
    /// random; `None` if nothing is acknowledged yet.
    pub fn pick_redo_point(&self, rng: &mut impl Rng) -> Option<Lsn> {
        let candidates = self.acknowledged_count();
        if candidates == 0 {
            return None;
        }
        self.accepted.keys().nth(rng.random_range(0..candidates)).copied()
    }

    /// The log before `lsn` is retired: recovery starts reading there.
    pub fn forget_before(&mut self, lsn: Lsn) {
        self.retired_before = self.retired_before.max(lsn);
        self.accepted = self.accepted.split_off(&lsn);
        self.hints = self.hints.split_off(&lsn);
    }

    /// Checks what recovery found against the model. Returns a description of
    /// the first violation.
    pub fn check(&self, recovered: &[(Lsn, Record)]) -> Result<(), String> {
        for (index, ((lsn, record), (model_lsn, model_record))) in recovered.iter().zip(&self.accepted).enumerate() {
            if lsn != model_lsn {
                return Err(format!(
                    "record #{index}: recovered a record at {lsn}, but the next accepted record is at {model_lsn}"
                ));
            }
            if record != model_record {
                return Err(format!("record #{index} at {lsn}: recovered bytes differ from the accepted record"));
            }
        }
        if recovered.len() > self.accepted.len() {
            let (lsn, _) = &recovered[self.accepted.len()];
            return Err(format!("recovered a record at {lsn} that the WAL never accepted"));
        }
        let acknowledged = self.acknowledged_count();
        if recovered.len() < acknowledged {
            let (lost, _) = self.accepted.iter().nth(recovered.len()).expect("fewer recovered than acknowledged");
            return Err(format!(
                "lost acknowledged record at {lost}: {acknowledged} records were acknowledged (durable through {}), {} recovered",
                self.acknowledged_through,
                recovered.len()
            ));
        }
        Ok(())
    }

    /// After a successful check: the recovered records are now the truth, and
    /// the LSNs of the lost ones will be reused.
    pub fn reset_to(&mut self, recovered: &[(Lsn, Record)]) {
        self.accepted = recovered.iter().cloned().collect();
        self.hints.retain(|lsn, _| self.accepted.contains_key(lsn));
        self.acknowledged_through = recovered.last().map_or(Lsn::ZERO, |(lsn, rec)| lsn.plus(rec.encoded_len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u8) -> Record {
        Record::data(u64::from(i), Lsn::ZERO, vec![i])
    }

    fn model() -> WalModel {
        let mut model = WalModel::default();
        for i in 0..4u8 {
            model.accepted(Lsn(1024 + 48 * u64::from(i)), rec(i), Lsn(1024 + 48 * u64::from(i)));
        }
        model.acknowledged(Lsn(1024 + 48 * 2));
        model
    }

    #[test]
    fn a_prefix_covering_the_acknowledged_records_passes() {
        let model = model();
        let all: Vec<_> = model.accepted.clone().into_iter().collect();
        assert!(model.check(&all[..2]).is_ok());
        assert!(model.check(&all).is_ok());
    }

    #[test]
    fn evidence_reaches_the_largest_hint_among_acknowledged_records() {
        // Records at 0x400 and 0x430 are acknowledged; their hints are their LSNs.
        assert_eq!(model().evidence_point(), Lsn(1024 + 48));
    }

    #[test]
    fn losing_an_acknowledged_record_fails() {
        let model = model();
        let all: Vec<_> = model.accepted.clone().into_iter().collect();
        let err = model.check(&all[..1]).unwrap_err();
        assert!(err.contains("lost acknowledged record at 0/430"), "{err}");
    }

    #[test]
    fn a_hole_a_damaged_or_an_invented_record_fails() {
        let model = model();
        let all: Vec<_> = model.accepted.clone().into_iter().collect();
        let hole = vec![all[0].clone(), all[2].clone()];
        assert!(model.check(&hole).unwrap_err().contains("next accepted record"));
        let mut damaged = all.clone();
        damaged[1].1.payload[0] ^= 1;
        assert!(model.check(&damaged).unwrap_err().contains("differ"));
        let mut invented = all.clone();
        invented.push((Lsn(4096), rec(9)));
        assert!(model.check(&invented).unwrap_err().contains("never accepted"));
    }
}
