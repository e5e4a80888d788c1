//! Storage log records: what the engine writes in the payload of a WAL
//! `Data` record, and how redo applies it to a page.
//!
//! Records are physiological: each names one page and says what changed in
//! it by key (not by byte offset), and carries what undo needs:
//!
//! | op | tag | fields | redo | undo |
//! |---|---:|---|---|---|
//! | `PageImages` | 8 | count, then each image: page (u32), hole offset (u16), hole length (u16), storage (u8: 0 raw, 1 zstd), stored length (u32), stored bytes | install each image, its hole zeroed | none (structure changes and full-page images are redo-only) |
//! | `PageImages`, old form | 1 | count, then (page, 8 KiB image) each | as tag 8 | none (read, never written) |
//! | `Insert` | 2 | table, page, key, value | put key → value | delete key |
//! | `Delete` | 3 | table, page, key, old value | remove key | put key → old value |
//! | `Update` | 4 | table, page, key, old value, new value | put key → new value | put key → old value |
//! | `InsertBatch` | 9 | table, page, row count (u32), storage (u8: 0 raw, 1 zstd), raw length (u32), stored length (u32), stored rows (each key and value, u32-prefixed) | put each row | delete each key |
//! | `Update`, old edit form | 11 | table, page, key, old value, then the new value as the length of the prefix (u32) and suffix (u32) it shares with the old, and its middle | as `Update` | as `Update` (read, never written) |
//! | `Edit` | 12 | table, page, key, offset (u32), bytes replaced, bytes that replace them | in the key's row, replace the bytes at the offset (refused if the row does not hold them) | the reverse edit |
//! | `Compensation` | 5 | undo-next LSN, then one redo-only op | as the inner op | never undone |
//! | `PageChanges` | 10 | image count, images as in tag 8, delta count, then each delta: page (u32) and a stored block (as in tag 9) of runs, each offset (u16), length (u16), bytes | install each image; write each delta's runs into its page | none (redo-only) |
//! | `CheckpointBegin` | 6 | | | |
//! | `CheckpointEnd` | 7 | active transactions (id, last LSN, undo-next LSN), dirty pages (page, recovery LSN), newest commit time logged (u64 µs) | | |
//!
//! Integers are little-endian; keys, values and byte strings are u32-length-
//! prefixed. A full-page image is logged on a page's first change after each
//! checkpoint, so a torn page is rebuilt by redo; a B+tree split logs the
//! after-images of every page it touches in one record, so a crash mid-split
//! replays to a valid tree.
//!
//! An image leaves out its page's hole ([`image_hole`]: a node's free space
//! between slots and cells, or the zeroes that end any other page; its
//! checksum is stamped as if the hole were zeroes, so the rebuilt page is
//! checked end to end), and with
//! `wal_compression = "zstd"` the rest is stored zstd-compressed (level 1)
//! when that is smaller. The decoded op always holds whole 8 KiB images, so
//! redo, analysis and the tools see one form.
//!
//! A split or merge logs every page it changes in one record. A page that
//! was already imaged since the checkpoint is logged as a [`PageDelta`]:
//! the runs of bytes that differ, plus every byte that was in the page's
//! hole and is live now (the hole was logged as zeroes, so redo's copy may
//! differ from the live page there). Redo rebuilds the page byte for byte
//! from its image and the records after it, so the runs land on the same
//! bytes they were computed against.
//!
//! Redo rule: a record whose end LSN is `end` is applied to a page only if
//! the page's LSN is below `end`, and the page's LSN becomes `end`. Applying
//! a record twice is therefore impossible, and redo is idempotent.

use std::cell::RefCell;

use super::node::{self, NodeFull};
use super::page::{self, image_hole, Page, PAGE_HEADER_LEN, PAGE_SIZE};
use crate::probe::{self, Probe};
use crate::wal::{Lsn, WalCompression};

/// The zstd level for page images: level 1 is the fastest, and higher
/// levels gain little on 8 KiB pages (docs/performance.md).
const IMAGE_ZSTD_LEVEL: i32 = 1;

const STORED_RAW: u8 = 0;
const STORED_ZSTD: u8 = 1;

/// One storage change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Whole pages' contents, installed together (a full-page image, or
    /// every page a split touched).
    PageImages {
        /// Each page and its sealed bytes.
        images: Vec<(u32, Box<[u8; PAGE_SIZE]>)>,
    },
    /// Whole pages and byte deltas of pages, installed together (a split
    /// or merge that changed pages already imaged since the checkpoint).
    PageChanges {
        /// Each new or not yet imaged page and its sealed bytes.
        images: Vec<(u32, Box<[u8; PAGE_SIZE]>)>,
        /// Each page already imaged since the checkpoint, as what changed.
        deltas: Vec<PageDelta>,
    },
    /// A row was inserted.
    Insert {
        /// The table: its tree's root page, so undo can find the row by key.
        table: u32,
        /// The leaf page.
        page_no: u32,
        /// The row's key.
        key: Vec<u8>,
        /// The row.
        value: Vec<u8>,
    },
    /// Rows were inserted into one leaf together (a load: `COPY`, a
    /// multi-row `INSERT`, a rebuild), in one record instead of one each.
    InsertBatch {
        /// The table: its tree's root page, so undo can find the rows by key.
        table: u32,
        /// The leaf page.
        page_no: u32,
        /// The rows, as (key, value).
        rows: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// A row was deleted.
    Delete {
        /// The table: its tree's root page, so undo can find the row by key.
        table: u32,
        /// The leaf page.
        page_no: u32,
        /// The row's key.
        key: Vec<u8>,
        /// The row before deletion (for undo).
        old_value: Vec<u8>,
    },
    /// A row was replaced.
    Update {
        /// The table: its tree's root page, so undo can find the row by key.
        table: u32,
        /// The leaf page.
        page_no: u32,
        /// The row's key.
        key: Vec<u8>,
        /// The row before (for undo).
        old_value: Vec<u8>,
        /// The row after.
        new_value: Vec<u8>,
    },
    /// A row was replaced by an edit of itself: the bytes at `offset`
    /// that were `old_bytes` became `new_bytes`, the rest of the row kept.
    /// Logged instead of `Update` when the two rows share more than the
    /// offset costs (a balance changed in a row of filler, say): neither
    /// row is logged in full. Redo and undo apply it to the row they find,
    /// and refuse a row whose bytes at `offset` are not the ones the edit
    /// replaces.
    Edit {
        /// The table: its tree's root page, so undo can find the row by key.
        table: u32,
        /// The leaf page.
        page_no: u32,
        /// The row's key.
        key: Vec<u8>,
        /// Where the change starts in the row.
        offset: u32,
        /// The bytes replaced (for undo).
        old_bytes: Vec<u8>,
        /// The bytes that replace them.
        new_bytes: Vec<u8>,
    },
    /// A compensation record (CLR), written while undoing: redo-only.
    Compensation {
        /// The next record of the transaction still to undo.
        undo_next: Lsn,
        /// The change that undid one record.
        redo: Box<Op>,
    },
    /// A fuzzy checkpoint began.
    CheckpointBegin,
    /// A fuzzy checkpoint ended.
    CheckpointEnd {
        /// Active transactions: id, last LSN and undo-next LSN.
        active: Vec<ActiveTxnEntry>,
        /// Dirty pages and their recovery LSNs.
        dirty: Vec<(u32, Lsn)>,
        /// The newest commit time logged so far (µs since the epoch): the
        /// floor for later commit times after a restart, when the commits
        /// themselves may lie before the redo point.
        last_commit_micros: u64,
    },
}

/// The bytes of a node page that a structure change rewrote, as runs of
/// (page offset, new bytes). Never covers the checksum or the page LSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageDelta {
    /// The page.
    pub page_no: u32,
    /// The runs, in offset order.
    pub runs: Vec<(u16, Vec<u8>)>,
}

/// Bytes of a page a delta never writes: the checksum and the page LSN.
const DELTA_SKIPS: [std::ops::Range<usize>; 2] = [0..4, 16..PAGE_HEADER_LEN];

/// A delta larger than this is logged as the page's image instead.
const DELTA_MAX: usize = PAGE_SIZE / 2;

impl PageDelta {
    /// What turns `before` into `after`, two versions of node page
    /// `page_no`: every byte outside `after`'s hole that differs, or that
    /// lay in `before`'s hole (which the log may hold as zeroes, whatever
    /// the live page held there). `None` when either is not a node page or
    /// the delta would be large.
    pub fn between(page_no: u32, before: &[u8; PAGE_SIZE], after: &[u8; PAGE_SIZE]) -> Option<PageDelta> {
        let is_node = |bytes: &[u8; PAGE_SIZE]| matches!(bytes[5], 2 | 3);
        if !is_node(before) || !is_node(after) {
            return None;
        }
        let (mut was_hole, now_hole) = (image_hole(before), image_hole(after));
        if crate::planted::active(crate::planted::PlantedBug::DeltaIgnoresHole) {
            was_hole = 0..0;
        }
        let mut runs: Vec<(u16, Vec<u8>)> = Vec::new();
        let mut size = 0;
        let mut last_end = 0;
        for at in 0..PAGE_SIZE {
            let wanted = !now_hole.contains(&at)
                && !DELTA_SKIPS.iter().any(|skip| skip.contains(&at))
                && (was_hole.contains(&at) || before[at] != after[at]);
            if !wanted {
                continue;
            }
            // Runs closer than a run header's size are joined.
            match runs.last_mut() {
                // (Such a gap never holds a skipped byte: both skipped
                // ranges are longer, and no run starts before them.)
                Some((start, bytes)) if at - last_end <= 4 => {
                    let from = usize::from(*start) + bytes.len();
                    size += at + 1 - from;
                    bytes.extend_from_slice(&after[from..=at]);
                }
                _ => {
                    size += 4 + 1;
                    runs.push((u16::try_from(at).expect("offsets in a page fit in u16"), vec![after[at]]));
                }
            }
            last_end = at + 1;
            if size > DELTA_MAX {
                return None;
            }
        }
        Some(PageDelta { page_no, runs })
    }

    /// Applies the delta to `page` during redo, if the page does not
    /// already reflect it. `end` is the record's end LSN.
    pub fn redo(&self, page: &mut Page, end: Lsn) -> Redo {
        if page.page_lsn() >= end {
            return Redo::AlreadyApplied;
        }
        self.apply(page);
        page.set_page_lsn(end);
        Redo::Applied
    }

    /// Writes the runs into `page`.
    fn apply(&self, page: &mut Page) {
        let bytes = page.bytes_mut();
        for (at, run) in &self.runs {
            let at = usize::from(*at);
            bytes[at..at + run.len()].copy_from_slice(run);
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>, compression: WalCompression) {
        out.extend_from_slice(&self.page_no.to_le_bytes());
        let mut raw = Vec::new();
        for (at, run) in &self.runs {
            raw.extend_from_slice(&at.to_le_bytes());
            raw.extend_from_slice(&u16::try_from(run.len()).expect("runs lie in a page").to_le_bytes());
            raw.extend_from_slice(run);
        }
        store_block(out, &raw, compression);
    }

    fn decode(reader: &mut Reader<'_>) -> Result<PageDelta, OpDecodeError> {
        let page_no = reader.u32()?;
        let raw = reader.stored_block(BATCH_RAW_MAX)?;
        let mut runs_reader = Reader { bytes: &raw, at: 0 };
        let mut runs = Vec::new();
        while runs_reader.at < raw.len() {
            let at = runs_reader.u16()?;
            let len = usize::from(runs_reader.u16()?);
            let run = runs_reader.take(len)?.to_vec();
            let range = usize::from(at)..usize::from(at) + len;
            if range.end > PAGE_SIZE || DELTA_SKIPS.iter().any(|skip| range.start < skip.end && skip.start < range.end)
            {
                return Err(OpDecodeError(format!("page {page_no}: a delta run over bytes {range:?}")));
            }
            runs.push((at, run));
        }
        Ok(PageDelta { page_no, runs })
    }
}

/// A transaction active at a checkpoint, as its end record lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveTxnEntry {
    /// The transaction id.
    pub xid: u64,
    /// Its last record, which its next record's `prev_lsn` names.
    pub last_lsn: Lsn,
    /// Its newest record not yet undone (`Lsn::ZERO`: nothing to undo).
    pub undo_next: Lsn,
}

/// What redo did with a record for a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redo {
    /// The change was applied; the page's LSN is now the record's end.
    Applied,
    /// The page already reflects the record.
    AlreadyApplied,
}

/// Why redo could not apply a row change to its page: the page is not
/// the one the change was logged against.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RedoRefused(pub String);

impl From<NodeFull> for RedoRefused {
    fn from(_: NodeFull) -> Self {
        RedoRefused("the row no longer fits in its page".into())
    }
}

/// A key or row, as hex, for messages.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Why bytes are not a storage op.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed storage log record: {0}")]
pub struct OpDecodeError(String);

impl Op {
    /// The pages this op changes (what `peek` must agree with).
    #[cfg(test)]
    fn pages(&self) -> Vec<u32> {
        match self {
            Op::PageImages { images } => images.iter().map(|(page_no, _)| *page_no).collect(),
            Op::PageChanges { images, deltas } => {
                images.iter().map(|(page_no, _)| *page_no).chain(deltas.iter().map(|d| d.page_no)).collect()
            }
            _ => self.row_page().into_iter().collect(),
        }
    }

    /// The leaf page a row change (or the compensation of one) changes;
    /// `None` for page images and checkpoint records.
    pub fn row_page(&self) -> Option<u32> {
        match self {
            Op::Insert { page_no, .. }
            | Op::InsertBatch { page_no, .. }
            | Op::Delete { page_no, .. }
            | Op::Update { page_no, .. }
            | Op::Edit { page_no, .. } => Some(*page_no),
            Op::Compensation { redo, .. } => redo.row_page(),
            Op::PageImages { .. } | Op::PageChanges { .. } | Op::CheckpointBegin | Op::CheckpointEnd { .. } => None,
        }
    }

    /// Whether the op is a row edit, or the compensation of one.
    pub fn is_edit(&self) -> bool {
        match self {
            Op::Edit { .. } => true,
            Op::Compensation { redo, .. } => redo.is_edit(),
            _ => false,
        }
    }

    /// A row replaced by `new_value`: an [`Op::Edit`] when the two rows
    /// share more bytes than the edit's offset costs, else an `Update`.
    pub fn update(table: u32, page_no: u32, key: Vec<u8>, old_value: &[u8], new_value: &[u8]) -> Op {
        let prefix = old_value.iter().zip(new_value).take_while(|(a, b)| a == b).count();
        let rest = old_value.len().min(new_value.len()) - prefix;
        let suffix = old_value.iter().rev().zip(new_value.iter().rev()).take(rest).take_while(|(a, b)| a == b).count();
        if prefix + suffix <= 4 {
            return Op::Update { table, page_no, key, old_value: old_value.to_vec(), new_value: new_value.to_vec() };
        }
        Op::Edit {
            table,
            page_no,
            key,
            offset: u32::try_from(prefix).expect("rows fit in a page"),
            old_bytes: old_value[prefix..old_value.len() - suffix].to_vec(),
            new_bytes: new_value[prefix..new_value.len() - suffix].to_vec(),
        }
    }

    /// The row an [`Op::Edit`] makes of `current`, the row its key holds:
    /// an error naming the key and offset if there is no row, or its bytes
    /// at the offset are not the ones the edit replaces.
    pub fn edit(&self, current: Option<&[u8]>) -> Result<Vec<u8>, String> {
        let Op::Edit { key, offset, old_bytes, new_bytes, .. } = self else { panic!("edit() of {self:?}") };
        let Some(current) = current else {
            return Err(format!("an edit of key {} finds no row", hex(key)));
        };
        let at = *offset as usize;
        if current.get(at..at + old_bytes.len()) != Some(&old_bytes[..]) {
            return Err(format!(
                "an edit of key {} replaces {} bytes at offset {at}, which the {}-byte row does not hold",
                hex(key),
                old_bytes.len(),
                current.len()
            ));
        }
        let tail = if crate::planted::active(crate::planted::PlantedBug::EditDropsTail) {
            &[][..]
        } else {
            &current[at + old_bytes.len()..]
        };
        Ok([&current[..at], &new_bytes[..], tail].concat())
    }

    /// The row changes that undo this op, applied in order (one for a row
    /// change, one per row for a batch); empty for redo-only ops.
    pub fn undo(&self) -> Vec<Op> {
        match self.clone() {
            Op::Insert { table, page_no, key, value } => vec![Op::Delete { table, page_no, key, old_value: value }],
            Op::InsertBatch { table, page_no, rows } => rows
                .into_iter()
                .rev()
                .map(|(key, value)| Op::Delete { table, page_no, key, old_value: value })
                .collect(),
            Op::Delete { table, page_no, key, old_value } => vec![Op::Insert { table, page_no, key, value: old_value }],
            Op::Update { table, page_no, key, old_value, new_value } => {
                vec![Op::Update { table, page_no, key, old_value: new_value, new_value: old_value }]
            }
            Op::Edit { table, page_no, key, offset, old_bytes, new_bytes } => {
                vec![Op::Edit { table, page_no, key, offset, old_bytes: new_bytes, new_bytes: old_bytes }]
            }
            Op::PageImages { .. }
            | Op::PageChanges { .. }
            | Op::Compensation { .. }
            | Op::CheckpointBegin
            | Op::CheckpointEnd { .. } => Vec::new(),
        }
    }

    /// Encodes the op as a WAL payload, storing page images as
    /// `compression` says.
    pub fn encode(&self, compression: WalCompression) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out, compression);
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>, compression: WalCompression) {
        let bytes = |out: &mut Vec<u8>, b: &[u8]| {
            out.extend_from_slice(&u32::try_from(b.len()).expect("bounded by the WAL").to_le_bytes());
            out.extend_from_slice(b);
        };
        match self {
            Op::PageImages { images } => {
                out.push(8);
                out.extend_from_slice(&(images.len() as u32).to_le_bytes());
                for (page_no, image) in images {
                    encode_image(out, *page_no, image, compression);
                }
            }
            Op::Insert { table, page_no, key, value } => {
                out.push(2);
                out.extend_from_slice(&table.to_le_bytes());
                out.extend_from_slice(&page_no.to_le_bytes());
                bytes(out, key);
                bytes(out, value);
            }
            Op::PageChanges { images, deltas } => {
                out.push(10);
                out.extend_from_slice(&(images.len() as u32).to_le_bytes());
                for (page_no, image) in images {
                    encode_image(out, *page_no, image, compression);
                }
                out.extend_from_slice(&(deltas.len() as u32).to_le_bytes());
                for delta in deltas {
                    delta.encode_into(out, compression);
                }
            }
            Op::InsertBatch { table, page_no, rows } => {
                out.push(9);
                out.extend_from_slice(&table.to_le_bytes());
                out.extend_from_slice(&page_no.to_le_bytes());
                out.extend_from_slice(&(rows.len() as u32).to_le_bytes());
                let mut raw = Vec::new();
                for (key, value) in rows {
                    bytes(&mut raw, key);
                    bytes(&mut raw, value);
                }
                store_block(out, &raw, compression);
            }
            Op::Delete { table, page_no, key, old_value } => {
                out.push(3);
                out.extend_from_slice(&table.to_le_bytes());
                out.extend_from_slice(&page_no.to_le_bytes());
                bytes(out, key);
                bytes(out, old_value);
            }
            Op::Update { table, page_no, key, old_value, new_value } => {
                out.push(4);
                out.extend_from_slice(&table.to_le_bytes());
                out.extend_from_slice(&page_no.to_le_bytes());
                bytes(out, key);
                bytes(out, old_value);
                bytes(out, new_value);
            }
            Op::Edit { table, page_no, key, offset, old_bytes, new_bytes } => {
                out.push(12);
                out.extend_from_slice(&table.to_le_bytes());
                out.extend_from_slice(&page_no.to_le_bytes());
                bytes(out, key);
                out.extend_from_slice(&offset.to_le_bytes());
                bytes(out, old_bytes);
                bytes(out, new_bytes);
            }
            Op::Compensation { undo_next, redo } => {
                assert!(!matches!(**redo, Op::Compensation { .. }), "compensations do not nest");
                out.push(5);
                out.extend_from_slice(&undo_next.0.to_le_bytes());
                redo.encode_into(out, compression);
            }
            Op::CheckpointBegin => out.push(6),
            Op::CheckpointEnd { active, dirty, last_commit_micros } => {
                out.push(7);
                out.extend_from_slice(&(active.len() as u32).to_le_bytes());
                for entry in active {
                    out.extend_from_slice(&entry.xid.to_le_bytes());
                    out.extend_from_slice(&entry.last_lsn.0.to_le_bytes());
                    out.extend_from_slice(&entry.undo_next.0.to_le_bytes());
                }
                out.extend_from_slice(&(dirty.len() as u32).to_le_bytes());
                for (page_no, lsn) in dirty {
                    out.extend_from_slice(&page_no.to_le_bytes());
                    out.extend_from_slice(&lsn.0.to_le_bytes());
                }
                out.extend_from_slice(&last_commit_micros.to_le_bytes());
            }
        }
    }

    /// What recovery's analysis needs from a payload, read without decoding
    /// it: the pages the op changes and, for a compensation record, its
    /// undo-next LSN. `None` for checkpoint records (decode those) and for
    /// payloads too short to say (the redo pass decodes and reports them).
    pub fn peek(bytes: &[u8]) -> Option<(Vec<u32>, Option<Lsn>)> {
        let u32_at = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
        match *bytes.first()? {
            1 | 8 | 10 => {
                let (mut pages, deltas) = Self::changed_pages(bytes)?;
                pages.extend(deltas);
                Some((pages, None))
            }
            2..=4 | 9 | 11 | 12 => Some((vec![u32_at(5)?], None)),
            5 => {
                let undo_next = Lsn(u64::from_le_bytes(bytes.get(1..9)?.try_into().ok()?));
                let inner = bytes.get(9..)?;
                if inner.first() == Some(&5) {
                    return None;
                }
                Some((Self::peek(inner)?.0, Some(undo_next)))
            }
            _ => None,
        }
    }

    /// The pages a `PageImages` payload installs, read without copying the
    /// images (recovery's analysis needs only the page numbers); `None` for
    /// any other op or a malformed payload.
    pub fn image_pages(bytes: &[u8]) -> Option<Vec<u32>> {
        Some(Self::changed_pages(bytes)?.0)
    }

    /// The pages a `PageImages` or `PageChanges` payload installs whole,
    /// and those it changes by delta, read without decompressing anything;
    /// `None` for any other op or a malformed payload.
    fn changed_pages(bytes: &[u8]) -> Option<(Vec<u32>, Vec<u32>)> {
        let mut reader = Reader { bytes, at: 0 };
        let tag = reader.take(1).ok()?[0];
        if !matches!(tag, 1 | 8 | 10) {
            return None;
        }
        let count = reader.u32().ok()?;
        let images = (0..count)
            .map(|_| {
                let page_no = reader.u32().ok()?;
                if tag == 1 {
                    reader.take(PAGE_SIZE).ok()?;
                } else {
                    reader.take(5).ok()?;
                    let stored = reader.u32().ok()? as usize;
                    reader.take(stored).ok()?;
                }
                Some(page_no)
            })
            .collect::<Option<Vec<u32>>>()?;
        let mut deltas = Vec::new();
        if tag == 10 {
            for _ in 0..reader.u32().ok()? {
                deltas.push(reader.u32().ok()?);
                reader.take(5).ok()?;
                let stored = reader.u32().ok()? as usize;
                reader.take(stored).ok()?;
            }
        }
        (reader.at == bytes.len()).then_some((images, deltas))
    }

    /// Decodes a WAL payload. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Op, OpDecodeError> {
        let mut reader = Reader { bytes, at: 0 };
        let op = reader.op(true)?;
        if reader.at != bytes.len() {
            return Err(OpDecodeError(format!("{} trailing bytes", bytes.len() - reader.at)));
        }
        Ok(op)
    }

    /// Applies the op's change to `page` during redo, if the page does not
    /// already reflect it. `end` is the record's end LSN.
    pub fn redo(&self, page: &mut Page, end: Lsn) -> Result<Redo, RedoRefused> {
        if page.page_lsn() >= end {
            return Ok(Redo::AlreadyApplied);
        }
        match self {
            Op::PageImages { images } | Op::PageChanges { images, .. }
                if images.iter().any(|(no, _)| *no == page.page_no()) =>
            {
                let page_no = page.page_no();
                let (_, image) = images.iter().find(|(no, _)| *no == page_no).expect("just found");
                *page = Page::from_bytes(&image[..], page_no).expect("logged images are valid pages");
                page.reset_page_lsn(end);
                return Ok(Redo::Applied);
            }
            Op::PageChanges { deltas, .. } => {
                let page_no = page.page_no();
                deltas.iter().find(|d| d.page_no == page_no).expect("redo gives each change its page").apply(page);
            }
            Op::PageImages { .. } => unreachable!("redo gives each image its page"),
            Op::Insert { key, value, .. } | Op::Update { key, new_value: value, .. } => {
                node::put(page.body_mut(), key, value)?;
            }
            Op::Edit { key, .. } => {
                let page_no = page.page_no();
                let body = page.body_mut();
                let current = node::search(body, key).ok().map(|index| node::value(body, index));
                let edited = self.edit(current).map_err(|detail| RedoRefused(format!("page {page_no}: {detail}")))?;
                node::put(body, key, &edited)?;
            }
            Op::InsertBatch { rows, .. } => {
                for (key, value) in rows {
                    node::put(page.body_mut(), key, value)?;
                }
            }
            Op::Delete { key, .. } => {
                let body = page.body_mut();
                if let Ok(index) = node::search(body, key) {
                    node::remove(body, index);
                }
            }
            Op::Compensation { redo, .. } => return redo.redo(page, end),
            Op::CheckpointBegin | Op::CheckpointEnd { .. } => unreachable!("checkpoint records change no page"),
        }
        page.set_page_lsn(end);
        Ok(Redo::Applied)
    }
}

thread_local! {
    /// A zstd context per thread, reused: creating one per image would cost
    /// more than compressing the image.
    static ZSTD: RefCell<(zstd::bulk::Compressor<'static>, zstd::bulk::Decompressor<'static>)> = RefCell::new((
        zstd::bulk::Compressor::new(IMAGE_ZSTD_LEVEL).expect("a zstd context"),
        zstd::bulk::Decompressor::new().expect("a zstd context"),
    ));
}

/// `raw` zstd-compressed, if `compression` asks for it and that is smaller.
fn compress(raw: &[u8], compression: WalCompression) -> Option<Vec<u8>> {
    match compression {
        WalCompression::Off => None,
        WalCompression::Zstd => {
            ZSTD.with(|codec| codec.borrow_mut().0.compress(raw)).ok().filter(|compressed| compressed.len() < raw.len())
        }
    }
}

/// A batch's rows fit in one leaf: their encoding is at most this long.
const BATCH_RAW_MAX: usize = 2 * PAGE_SIZE;

/// Appends a block of bytes as storage (u8), raw length (u32), stored
/// length (u32) and the stored bytes: zstd-compressed when `compression`
/// asks and that is smaller.
fn store_block(out: &mut Vec<u8>, raw: &[u8], compression: WalCompression) {
    let compressed = compress(raw, compression);
    let (storage, stored) = match &compressed {
        Some(compressed) => (STORED_ZSTD, compressed.as_slice()),
        None => (STORED_RAW, raw),
    };
    out.push(storage);
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    out.extend_from_slice(&(stored.len() as u32).to_le_bytes());
    out.extend_from_slice(stored);
}

/// Appends one image of a tag-8 record: the page less its hole, compressed
/// when `compression` asks and that is smaller. The stored checksum is
/// restamped over the page with its hole zeroed, so the page that redo
/// rebuilds is checked end to end.
fn encode_image(out: &mut Vec<u8>, page_no: u32, image: &[u8; PAGE_SIZE], compression: WalCompression) {
    let hole = image_hole(image);
    let mut whole = *image;
    whole[hole.clone()].fill(0);
    page::reseal(&mut whole);
    let mut kept = Vec::with_capacity(PAGE_SIZE - hole.len());
    kept.extend_from_slice(&whole[..hole.start]);
    kept.extend_from_slice(&whole[hole.end..]);
    let compressed = compress(&kept, compression);
    let (storage, stored) = match &compressed {
        Some(compressed) => (STORED_ZSTD, compressed),
        None => (STORED_RAW, &kept),
    };
    out.extend_from_slice(&page_no.to_le_bytes());
    out.extend_from_slice(&u16::try_from(hole.start).expect("offsets in a page fit in u16").to_le_bytes());
    out.extend_from_slice(&u16::try_from(hole.len()).expect("lengths in a page fit in u16").to_le_bytes());
    out.push(storage);
    out.extend_from_slice(&(stored.len() as u32).to_le_bytes());
    out.extend_from_slice(stored);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, len: usize) -> Result<&[u8], OpDecodeError> {
        let end = self.at.checked_add(len).filter(|end| *end <= self.bytes.len());
        let end =
            end.ok_or_else(|| OpDecodeError(format!("needs {len} bytes at {}, has {}", self.at, self.bytes.len())))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, OpDecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    /// A block [`store_block`] wrote, as its raw bytes (at most `max`).
    fn stored_block(&mut self, max: usize) -> Result<Vec<u8>, OpDecodeError> {
        let storage = self.take(1)?[0];
        let raw_len = self.u32()? as usize;
        let stored_len = self.u32()? as usize;
        let stored = self.take(stored_len)?;
        if raw_len > max {
            return Err(OpDecodeError(format!("a block of {raw_len} bytes, over the {max}-byte bound")));
        }
        let raw = match storage {
            STORED_RAW => stored.to_vec(),
            STORED_ZSTD => ZSTD
                .with(|codec| codec.borrow_mut().1.decompress(stored, raw_len))
                .map_err(|e| OpDecodeError(format!("zstd: {e}")))?,
            other => return Err(OpDecodeError(format!("unknown block storage {other}"))),
        };
        if raw.len() != raw_len {
            return Err(OpDecodeError(format!("a block of {} bytes, expected {raw_len}", raw.len())));
        }
        Ok(raw)
    }

    fn u16(&mut self) -> Result<u16, OpDecodeError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }

    fn u64(&mut self) -> Result<u64, OpDecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, OpDecodeError> {
        let len = self.u32()? as usize;
        Ok(self.take(len)?.to_vec())
    }

    /// One image of a tag-8 record, rebuilt whole (its hole zeroed) and
    /// checked as a page: its checksum was stamped with the hole zeroed.
    fn compact_image(&mut self) -> Result<(u32, Box<[u8; PAGE_SIZE]>), OpDecodeError> {
        let page_no = self.u32()?;
        let hole_at = usize::from(self.u16()?);
        let hole_len = usize::from(self.u16()?);
        let storage = self.take(1)?[0];
        let stored_len = self.u32()? as usize;
        let stored = self.take(stored_len)?;
        if hole_at < PAGE_HEADER_LEN || hole_at + hole_len > PAGE_SIZE {
            return Err(OpDecodeError(format!(
                "page {page_no}: hole of {hole_len} bytes at {hole_at} is outside the body"
            )));
        }
        let kept_len = PAGE_SIZE - hole_len;
        // The kept bytes land at the image's start, in place (no buffer of
        // their own), then the hole opens: what follows it moves up.
        let mut image: Box<[u8; PAGE_SIZE]> = Box::new([0; PAGE_SIZE]);
        let placed = match storage {
            STORED_RAW => {
                probe::hit(Probe::ImageDecodedRaw);
                if stored.len() == kept_len {
                    image[..kept_len].copy_from_slice(stored);
                }
                stored.len()
            }
            STORED_ZSTD => {
                probe::hit(Probe::ImageDecodedCompressed);
                ZSTD.with(|codec| codec.borrow_mut().1.decompress_to_buffer(stored, &mut image[..kept_len]))
                    .map_err(|e| OpDecodeError(format!("page {page_no}: zstd: {e}")))?
            }
            other => return Err(OpDecodeError(format!("page {page_no}: unknown image storage {other}"))),
        };
        if placed != kept_len {
            return Err(OpDecodeError(format!("page {page_no}: {placed} bytes stored, expected {kept_len}")));
        }
        image.copy_within(hole_at..kept_len, hole_at + hole_len);
        image[hole_at..hole_at + hole_len].fill(0);
        Page::check(&image[..], page_no)
            .map_err(|e| OpDecodeError(format!("page {page_no}: the rebuilt image is not a page: {e:?}")))?;
        Ok((page_no, image))
    }

    fn op(&mut self, compensation_allowed: bool) -> Result<Op, OpDecodeError> {
        let tag = self.take(1)?[0];
        Ok(match tag {
            1 => {
                let count = self.u32()?;
                let images = (0..count)
                    .map(|_| {
                        let page_no = self.u32()?;
                        let image: Box<[u8; PAGE_SIZE]> = self.take(PAGE_SIZE)?.to_vec().try_into().expect("page size");
                        Ok((page_no, image))
                    })
                    .collect::<Result<_, _>>()?;
                Op::PageImages { images }
            }
            8 => {
                let count = self.u32()?;
                let images = (0..count).map(|_| self.compact_image()).collect::<Result<_, _>>()?;
                Op::PageImages { images }
            }
            2 => Op::Insert { table: self.u32()?, page_no: self.u32()?, key: self.bytes()?, value: self.bytes()? },
            10 => {
                let count = self.u32()?;
                let images = (0..count).map(|_| self.compact_image()).collect::<Result<_, _>>()?;
                let deltas = (0..self.u32()?).map(|_| PageDelta::decode(self)).collect::<Result<_, _>>()?;
                Op::PageChanges { images, deltas }
            }
            11 => {
                let (table, page_no, key, old_value) = (self.u32()?, self.u32()?, self.bytes()?, self.bytes()?);
                let (prefix, suffix) = (self.u32()? as usize, self.u32()? as usize);
                let middle = self.bytes()?;
                if prefix.checked_add(suffix).is_none_or(|shared| shared > old_value.len()) {
                    return Err(OpDecodeError(format!(
                        "an update edit keeps {prefix} + {suffix} bytes of a {}-byte value",
                        old_value.len()
                    )));
                }
                let mut new_value = old_value[..prefix].to_vec();
                new_value.extend_from_slice(&middle);
                new_value.extend_from_slice(&old_value[old_value.len() - suffix..]);
                Op::Update { table, page_no, key, old_value, new_value }
            }
            12 => Op::Edit {
                table: self.u32()?,
                page_no: self.u32()?,
                key: self.bytes()?,
                offset: self.u32()?,
                old_bytes: self.bytes()?,
                new_bytes: self.bytes()?,
            },
            9 => {
                let (table, page_no, count) = (self.u32()?, self.u32()?, self.u32()?);
                let raw = self.stored_block(BATCH_RAW_MAX)?;
                let mut rows_reader = Reader { bytes: &raw, at: 0 };
                let rows = (0..count)
                    .map(|_| Ok((rows_reader.bytes()?, rows_reader.bytes()?)))
                    .collect::<Result<Vec<_>, OpDecodeError>>()?;
                if rows_reader.at != raw.len() {
                    return Err(OpDecodeError(format!("{} bytes after a batch's rows", raw.len() - rows_reader.at)));
                }
                Op::InsertBatch { table, page_no, rows }
            }
            3 => Op::Delete { table: self.u32()?, page_no: self.u32()?, key: self.bytes()?, old_value: self.bytes()? },
            4 => Op::Update {
                table: self.u32()?,
                page_no: self.u32()?,
                key: self.bytes()?,
                old_value: self.bytes()?,
                new_value: self.bytes()?,
            },
            5 if compensation_allowed => {
                let undo_next = Lsn(self.u64()?);
                Op::Compensation { undo_next, redo: Box::new(self.op(false)?) }
            }
            6 => Op::CheckpointBegin,
            7 => {
                let active = (0..self.u32()?)
                    .map(|_| {
                        Ok(ActiveTxnEntry { xid: self.u64()?, last_lsn: Lsn(self.u64()?), undo_next: Lsn(self.u64()?) })
                    })
                    .collect::<Result<_, _>>()?;
                let dirty = (0..self.u32()?).map(|_| Ok((self.u32()?, Lsn(self.u64()?)))).collect::<Result<_, _>>()?;
                Op::CheckpointEnd { active, dirty, last_commit_micros: self.u64()? }
            }
            tag => return Err(OpDecodeError(format!("unknown op tag {tag}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::page::PageKind;
    use proptest::prelude::*;

    fn leaf() -> Page {
        let mut page = Page::new(3, PageKind::Leaf);
        node::init(page.body_mut(), 0);
        page
    }

    fn row_op() -> impl Strategy<Value = Op> {
        let key = proptest::collection::vec(0u8..6, 1..3);
        let value = proptest::collection::vec(any::<u8>(), 0..64);
        prop_oneof![
            (key.clone(), value.clone()).prop_map(|(key, value)| Op::Insert { table: 1, page_no: 3, key, value }),
            (key.clone(), value.clone()).prop_map(|(key, old_value)| Op::Delete {
                table: 1,
                page_no: 3,
                key,
                old_value
            }),
            (key.clone(), value.clone(), value.clone()).prop_map(|(key, old_value, new_value)| Op::Update {
                table: 1,
                page_no: 3,
                key,
                old_value,
                new_value
            }),
            // Values that share a prefix and a suffix: logged as an edit.
            (key.clone(), value.clone(), value.clone(), value.clone(), value.clone()).prop_map(
                |(key, prefix, old_middle, new_middle, suffix)| Op::update(
                    1,
                    3,
                    key,
                    &[&prefix[..], &old_middle, &suffix].concat(),
                    &[&prefix[..], &new_middle, &suffix].concat(),
                )
            ),
            proptest::collection::vec((key, value), 0..30).prop_map(|rows| Op::InsertBatch {
                table: 1,
                page_no: 3,
                rows
            }),
        ]
    }

    /// A sealed leaf holding `rows` (inserted only, so its hole is zeroes
    /// and its image round-trips byte for byte).
    fn sealed_leaf(page_no: u32, rows: &[(Vec<u8>, Vec<u8>)]) -> Box<[u8; PAGE_SIZE]> {
        let mut page = Page::new(page_no, PageKind::Leaf);
        node::init(page.body_mut(), 0);
        for (key, value) in rows {
            let _ = node::put(page.body_mut(), key, value);
        }
        page.set_page_lsn(Lsn(77));
        Box::new(*page.seal())
    }

    fn image_op() -> impl Strategy<Value = Op> {
        let rows = proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 1..8), proptest::collection::vec(any::<u8>(), 0..200)),
            0..40,
        );
        proptest::collection::vec((1u32..1000, rows), 1..4).prop_map(|pages| Op::PageImages {
            images: pages.iter().map(|(page_no, rows)| (*page_no, sealed_leaf(*page_no, rows))).collect(),
        })
    }

    fn changes_op() -> impl Strategy<Value = Op> {
        let run = (24u16..8000, proptest::collection::vec(any::<u8>(), 1..100));
        let delta = (1u32..1000, proptest::collection::vec(run, 0..6)).prop_map(|(page_no, runs)| PageDelta {
            page_no,
            runs: runs
                .into_iter()
                .map(|(at, bytes)| (at, bytes[..bytes.len().min(8192 - usize::from(at))].to_vec()))
                .collect(),
        });
        (image_op(), proptest::collection::vec(delta, 0..3)).prop_map(|(images, deltas)| match images {
            Op::PageImages { images } => Op::PageChanges { images, deltas },
            _ => unreachable!(),
        })
    }

    fn any_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => row_op(),
            1 => image_op(),
            1 => changes_op(),
            1 => (row_op(), any::<u64>()).prop_map(|(op, next)| Op::Compensation { undo_next: Lsn(next), redo: Box::new(op) }),
            1 => Just(Op::CheckpointBegin),
            1 => (proptest::collection::vec((any::<u64>(), any::<u64>(), any::<u64>()), 0..5), proptest::collection::vec((any::<u32>(), any::<u64>()), 0..5), any::<u64>())
                .prop_map(|(a, d, t)| Op::CheckpointEnd {
                    active: a.into_iter().map(|(xid, l, u)| ActiveTxnEntry { xid, last_lsn: Lsn(l), undo_next: Lsn(u) }).collect(),
                    dirty: d.into_iter().map(|(p, l)| (p, Lsn(l))).collect(),
                    last_commit_micros: t,
                }),
        ]
    }

    proptest! {
        #[test]
        fn ops_round_trip(op in any_op()) {
            for compression in [WalCompression::Zstd, WalCompression::Off] {
                prop_assert_eq!(Op::decode(&op.encode(compression)), Ok(op.clone()));
            }
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Op::decode(&bytes);
            let _ = Op::peek(&bytes);
        }

        /// Peeking agrees with decoding on the pages and the undo-next LSN.
        #[test]
        fn peeking_agrees_with_decoding(op in any_op()) {
            let bytes = op.encode(WalCompression::Zstd);
            match (Op::peek(&bytes), &op) {
                (None, Op::CheckpointBegin | Op::CheckpointEnd { .. }) => {}
                (Some((pages, undo_next)), op) => {
                    prop_assert_eq!(pages, op.pages());
                    let expected = match op { Op::Compensation { undo_next, .. } => Some(*undo_next), _ => None };
                    prop_assert_eq!(undo_next, expected);
                }
                (None, op) => prop_assert!(false, "peek failed on {:?}", op),
            }
        }

        /// Replaying a log twice (a crash during recovery) gives the same page
        /// as replaying it once, and a compensation record undoing the last
        /// op restores the page's rows exactly.
        #[test]
        fn redo_is_idempotent_and_undo_inverts(steps in proptest::collection::vec((0u8..12, proptest::collection::vec(any::<u8>(), 0..64), 0u8..3), 1..40)) {
            let ops = valid_history(&steps);
            let mut once = leaf();
            for (n, op) in ops.iter().enumerate() {
                prop_assert_eq!(op.redo(&mut once, Lsn(1000 + 100 * n as u64)).unwrap(), Redo::Applied);
            }
            let mut twice = once.clone();
            for (n, op) in ops.iter().enumerate() {
                prop_assert_eq!(op.redo(&mut twice, Lsn(1000 + 100 * n as u64)).unwrap(), Redo::AlreadyApplied);
            }
            prop_assert_eq!(twice.body(), once.body());

            let mut before = leaf();
            for (n, op) in ops[..ops.len() - 1].iter().enumerate() {
                op.redo(&mut before, Lsn(1000 + 100 * n as u64)).unwrap();
            }
            let mut undone = once.clone();
            for (n, inverse) in ops.last().unwrap().undo().into_iter().enumerate() {
                let clr = Op::Compensation { undo_next: Lsn::ZERO, redo: Box::new(inverse) };
                prop_assert_eq!(clr.redo(&mut undone, Lsn(1_000_000 + n as u64)).unwrap(), Redo::Applied);
            }
            prop_assert_eq!(rows(&undone), rows(&before));
        }
    }

    /// Turns (key, value, action) steps into the ops a tree would log: an
    /// insert for a new key (action 2: into a batch with the new keys just
    /// before it), an update (action 0) or a delete (1) for an existing one,
    /// each with the true old value.
    fn valid_history(steps: &[(u8, Vec<u8>, u8)]) -> Vec<Op> {
        let mut model = std::collections::BTreeMap::new();
        let mut ops: Vec<Op> = Vec::new();
        for (key, value, action) in steps {
            let key = vec![*key];
            let op = match (model.get(&key).cloned(), action) {
                (None, 2) => {
                    model.insert(key.clone(), value.clone());
                    if let Some(Op::InsertBatch { rows, .. }) = ops.last_mut() {
                        rows.push((key, value.clone()));
                        continue;
                    }
                    Op::InsertBatch { table: 1, page_no: 3, rows: vec![(key, value.clone())] }
                }
                (None, _) => {
                    model.insert(key.clone(), value.clone());
                    Op::Insert { table: 1, page_no: 3, key, value: value.clone() }
                }
                (Some(old_value), 1) => {
                    model.remove(&key);
                    Op::Delete { table: 1, page_no: 3, key, old_value }
                }
                (Some(old_value), 0) => {
                    model.insert(key.clone(), value.clone());
                    Op::update(1, 3, key, &old_value, value)
                }
                // An edit: the old row with its middle third replaced.
                (Some(old_value), _) => {
                    let third = old_value.len() / 3;
                    let new_value = [&old_value[..third], &value[..], &old_value[old_value.len() - third..]].concat();
                    model.insert(key.clone(), new_value.clone());
                    Op::update(1, 3, key, &old_value, &new_value)
                }
            };
            ops.push(op);
        }
        ops
    }

    fn rows(page: &Page) -> Vec<(Vec<u8>, Vec<u8>)> {
        let body = page.body();
        (0..node::count(body)).map(|i| (node::key(body, i).to_vec(), node::value(body, i).to_vec())).collect()
    }

    /// A page whose free space holds stale bytes (removals leave them):
    /// its image leaves them out, and the rebuilt page has the same rows,
    /// header and cells, zeroes in its hole, and a valid checksum.
    #[test]
    fn an_image_leaves_out_its_hole_in_both_storages() {
        let mut page = Page::new(9, PageKind::Leaf);
        node::init(page.body_mut(), 4);
        for key in 0u8..60 {
            node::put(page.body_mut(), &[key], &[key; 40]).unwrap();
        }
        for index in (0..60).step_by(2).rev() {
            node::remove(page.body_mut(), index);
        }
        page.set_page_lsn(Lsn(900));
        let image: Box<[u8; PAGE_SIZE]> = Box::new(*page.seal());
        let hole = image_hole(&image);
        assert!(hole.len() > 4000 && image[hole.clone()].iter().any(|b| *b != 0), "stale slots lie in the hole");
        for (compression, limit) in [(WalCompression::Off, PAGE_SIZE - hole.len() + 30), (WalCompression::Zstd, 1000)] {
            let bytes = Op::PageImages { images: vec![(9, image.clone())] }.encode(compression);
            assert!(bytes.len() <= limit, "{compression:?}: {} bytes", bytes.len());
            let Ok(Op::PageImages { images }) = Op::decode(&bytes) else { panic!("decodes") };
            let rebuilt = Page::from_bytes(&images[0].1[..], 9).expect("a valid page");
            assert_eq!(rows(&rebuilt), rows(&page));
            assert_eq!(rebuilt.page_lsn(), Lsn(900));
            assert_eq!(node::link(rebuilt.body()), 4);
            assert!(images[0].1[hole.clone()].iter().all(|b| *b == 0));
            assert_eq!(images[0].1[hole.end..], image[hole.end..], "the cells are kept byte for byte");
            node::check(rebuilt.body()).unwrap();
        }
    }

    /// Damage inside a stored image that the record's CRC somehow missed
    /// (or a bug in the encoder) is a decode error, never a panic or a page.
    #[test]
    fn a_damaged_stored_image_is_refused() {
        let image = sealed_leaf(5, &[(b"k".to_vec(), vec![7; 300])]);
        for compression in [WalCompression::Zstd, WalCompression::Off] {
            let good = Op::PageImages { images: vec![(5, image.clone())] }.encode(compression);
            for at in 5..good.len() {
                let mut bad = good.clone();
                bad[at] ^= 0x40;
                assert!(Op::decode(&bad).is_err(), "{compression:?}: a flip at byte {at} was accepted");
            }
        }
    }

    /// A node page shaped by `steps` (puts, and removals that leave stale
    /// bytes in its free space).
    fn shaped_leaf(steps: &[(u8, u8, bool)]) -> Page {
        let mut page = leaf();
        for (key, len, remove) in steps {
            let body = page.body_mut();
            match node::search(body, &[*key]) {
                Ok(index) if *remove => node::remove(body, index),
                _ => {
                    let _ = node::put(body, &[*key], &vec![*key; usize::from(*len)]);
                }
            }
        }
        page
    }

    proptest! {
        /// Redo's copy of a page equals the live page except in its hole,
        /// where it may hold zeroes (from an image) or stale bytes. A delta
        /// from the live page's before to its after, applied to such a copy,
        /// gives the after's rows and layout exactly.
        #[test]
        fn a_delta_rebuilds_the_page_from_redos_copy(
            before_steps in proptest::collection::vec((any::<u8>(), 0u8..200, any::<bool>()), 0..80),
            after_steps in proptest::collection::vec((any::<u8>(), 0u8..200, any::<bool>()), 1..40),
            noise in any::<u8>(),
        ) {
            let before = shaped_leaf(&before_steps);
            let mut after = before.clone();
            for (key, len, remove) in &after_steps {
                let body = after.body_mut();
                match node::search(body, &[*key]) {
                    Ok(index) if *remove => node::remove(body, index),
                    _ => {
                        let _ = node::put(body, &[*key], &vec![key.wrapping_add(1); usize::from(*len)]);
                    }
                }
            }
            let Some(delta) = PageDelta::between(3, before.bytes(), after.bytes()) else { return Ok(()) };
            let mut copy = before.clone();
            let hole = image_hole(before.bytes());
            copy.bytes_mut()[hole].fill(noise);
            prop_assert_eq!(delta.redo(&mut copy, Lsn(900)), Redo::Applied);
            prop_assert_eq!(rows(&copy), rows(&after));
            let after_hole = image_hole(after.bytes());
            for at in (4..16).chain(PAGE_HEADER_LEN..PAGE_SIZE).filter(|at| !after_hole.contains(at)) {
                prop_assert_eq!(copy.bytes()[at], after.bytes()[at], "byte {}", at);
            }
            prop_assert!(node::check(copy.body()).is_ok());
        }
    }

    #[test]
    fn an_update_logs_only_the_bytes_it_changes() {
        let old_value = [b"balance=".as_slice(), b"00001000", &[b' '; 100]].concat();
        let new_value = [b"balance=".as_slice(), b"00000750", &[b' '; 100]].concat();
        let op = Op::update(1, 3, b"k".to_vec(), &old_value, &new_value);
        assert_eq!(
            op,
            Op::Edit {
                table: 1,
                page_no: 3,
                key: b"k".to_vec(),
                offset: 12,
                old_bytes: b"100".to_vec(),
                new_bytes: b"075".to_vec()
            }
        );
        let bytes = op.encode(WalCompression::Off);
        assert_eq!(bytes[0], 12);
        assert!(bytes.len() < 40, "{} bytes", bytes.len());
        assert_eq!(Op::decode(&bytes), Ok(op.clone()));
        assert_eq!(op.edit(Some(&old_value)), Ok(new_value.clone()));
        assert_eq!(op.undo()[0].edit(Some(&new_value)), Ok(old_value));
        // Rows that share almost nothing are logged whole.
        assert!(matches!(Op::update(1, 3, b"k".to_vec(), b"abcdef", b"uvwxyz"), Op::Update { .. }));
    }

    #[test]
    fn an_edit_refuses_a_row_it_was_not_logged_against() {
        let mut page = leaf();
        node::insert(page.body_mut(), 0, b"k", b"balance=00009999").unwrap();
        let op = Op::update(1, 3, b"k".to_vec(), b"balance=00001000", b"balance=00000750");
        let refused = op.redo(&mut page, Lsn(100)).unwrap_err();
        assert!(
            refused.0.contains("page 3") && refused.0.contains("key 6b") && refused.0.contains("offset 12"),
            "{refused}"
        );
        assert!(op.edit(None).unwrap_err().contains("finds no row"));
    }

    #[test]
    fn the_old_edit_form_still_decodes() {
        // Tag 11: the old row in full, then the new one as shared prefix and
        // suffix lengths and its middle.
        let mut bytes = vec![11];
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.push(b'k');
        bytes.extend_from_slice(&6u32.to_le_bytes());
        bytes.extend_from_slice(b"abcdef");
        bytes.extend_from_slice(&2u32.to_le_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&2u32.to_le_bytes());
        bytes.extend_from_slice(b"XY");
        let op = Op::Update {
            table: 1,
            page_no: 3,
            key: b"k".to_vec(),
            old_value: b"abcdef".to_vec(),
            new_value: b"abXYf".to_vec(),
        };
        assert_eq!(Op::decode(&bytes), Ok(op));
    }

    #[test]
    fn a_full_page_image_rebuilds_a_torn_page() {
        let mut good = leaf();
        node::insert(good.body_mut(), 0, b"k", b"v").unwrap();
        good.set_page_lsn(Lsn(500));
        let image: Box<[u8; PAGE_SIZE]> = Box::new(*good.clone().seal());
        let mut torn = leaf();
        Op::PageImages { images: vec![(3, image)] }.redo(&mut torn, Lsn(600)).unwrap();
        assert_eq!(node::key(torn.body(), 0), b"k");
        assert_eq!(torn.page_lsn(), Lsn(600));
    }
}
