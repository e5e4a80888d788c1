//! The slotted layout of B+tree nodes: the body of a Leaf or Internal page.
//!
//! Pure logic over a page body, no I/O (it only counts a coverage probe):
//! the tree calls these functions and logs what it did. Layout of the
//! 8,168-byte body (little-endian):
//!
//! | offset | field | type | meaning |
//! |---:|---|---|---|
//! | 0 | `count` | u16 | cells in the node |
//! | 2 | `content_at` | u16 | where the cell content area starts (it grows down) |
//! | 4 | `link` | u32 | leaf: right sibling page (0: none); internal: leftmost child |
//! | 8 | `garbage` | u16 | bytes of content freed by removals, reclaimed by compaction |
//! | 10 | reserved | [u8; 6] | zero |
//! | 16 | slots | [u16; count] | each cell's offset, in key order |
//! | … | free space | | |
//! | `content_at`.. | cells | | `key_len` u16, `value_len` u16, key, value |
//!
//! In an internal node a cell's value is a child page number (u32): the
//! child holding keys ≥ the cell's key and < the next cell's key; `link`
//! holds keys below the first cell's key.
//!
//! Invariants (checked by `check`, and by the property tests against a
//! `BTreeMap`): slots are in strictly increasing key order; every cell lies
//! inside the content area; used + free + garbage space accounts for the
//! whole body. A cell is at most [`MAX_CELL_LEN`] bytes, so a node always
//! holds at least four cells and a split always makes room. Rows larger than
//! that are refused with an error naming the size (overflow pages may lift
//! the limit later without changing this layout).

use super::page::{PAGE_HEADER_LEN, PAGE_SIZE};
use crate::probe::{self, Probe};

/// Bytes in a node body.
pub const BODY_LEN: usize = PAGE_SIZE - PAGE_HEADER_LEN;

const HEADER_LEN: usize = 16;
const SLOT_LEN: usize = 2;
const CELL_HEADER_LEN: usize = 4;

/// The largest cell (4 header bytes + key + value).
pub const MAX_CELL_LEN: usize = 2000;

const _: () = assert!(BODY_LEN <= u16::MAX as usize, "offsets fit in u16");
const _: () = assert!(4 * (MAX_CELL_LEN + SLOT_LEN) <= BODY_LEN - HEADER_LEN, "a node holds at least four cells");

/// The node has no room for the cell, even after compaction: split it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeFull;

/// A cell too large for any node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a row of {len} bytes (key and value) exceeds the {max}-byte limit of a B+tree cell")]
pub struct CellTooLarge {
    /// Key plus value bytes.
    pub len: usize,
    /// The most key plus value bytes a cell can hold.
    pub max: usize,
}

fn u16_at(body: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([body[at], body[at + 1]]))
}

fn put_u16(body: &mut [u8], at: usize, value: usize) {
    let value = u16::try_from(value).expect("node offsets fit in u16");
    body[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

/// Checks that a key and value fit in one cell.
pub fn check_cell(key: &[u8], value: &[u8]) -> Result<(), CellTooLarge> {
    let len = key.len() + value.len();
    if CELL_HEADER_LEN + len > MAX_CELL_LEN {
        return Err(CellTooLarge { len, max: MAX_CELL_LEN - CELL_HEADER_LEN });
    }
    Ok(())
}

/// Formats an empty node with `link`.
pub fn init(body: &mut [u8], link: u32) {
    assert_eq!(body.len(), BODY_LEN, "a node is a whole page body");
    body.fill(0);
    put_u16(body, 2, BODY_LEN);
    set_link(body, link);
}

/// Cells in the node.
pub fn count(body: &[u8]) -> usize {
    u16_at(body, 0)
}

/// The node's link: right sibling (leaf) or leftmost child (internal).
pub fn link(body: &[u8]) -> u32 {
    u32::from_le_bytes(body[4..8].try_into().expect("4 bytes"))
}

/// Sets the node's link.
pub fn set_link(body: &mut [u8], link: u32) {
    body[4..8].copy_from_slice(&link.to_le_bytes());
}

/// The free space between the slot array and the cell content area (body
/// offsets): bytes no reader looks at, which a full-page image leaves out.
/// Empty when the header is not sane, so a damaged body is imaged whole.
pub fn free_range(body: &[u8]) -> std::ops::Range<usize> {
    let mut slots_end = HEADER_LEN + SLOT_LEN * count(body);
    if crate::planted::active(crate::planted::PlantedBug::ImageHoleTooWide) && count(body) > 0 {
        slots_end -= SLOT_LEN;
    }
    let content = content_at(body).min(body.len());
    slots_end.min(content)..content
}

fn content_at(body: &[u8]) -> usize {
    u16_at(body, 2)
}

fn garbage(body: &[u8]) -> usize {
    u16_at(body, 8)
}

fn cell_at(body: &[u8], index: usize) -> usize {
    u16_at(body, HEADER_LEN + SLOT_LEN * index)
}

fn cell_len(body: &[u8], at: usize) -> usize {
    CELL_HEADER_LEN + u16_at(body, at) + u16_at(body, at + 2)
}

/// The key of cell `index`.
pub fn key(body: &[u8], index: usize) -> &[u8] {
    let at = cell_at(body, index);
    &body[at + CELL_HEADER_LEN..at + CELL_HEADER_LEN + u16_at(body, at)]
}

/// The value of cell `index`.
pub fn value(body: &[u8], index: usize) -> &[u8] {
    let at = cell_at(body, index);
    let start = at + CELL_HEADER_LEN + u16_at(body, at);
    &body[start..start + u16_at(body, at + 2)]
}

/// Where `key` is (`Ok`) or would go (`Err`).
pub fn search(body: &[u8], key_wanted: &[u8]) -> Result<usize, usize> {
    let (mut low, mut high) = (0, count(body));
    while low < high {
        let mid = low + (high - low) / 2;
        match key(body, mid).cmp(key_wanted) {
            std::cmp::Ordering::Less => low = mid + 1,
            std::cmp::Ordering::Greater => high = mid,
            std::cmp::Ordering::Equal => return Ok(mid),
        }
    }
    Err(low)
}

/// Contiguous free bytes between the slots and the content area.
pub fn free_space(body: &[u8]) -> usize {
    content_at(body) - (HEADER_LEN + SLOT_LEN * count(body))
}

/// Bytes an insert can use: contiguous free space plus reclaimable garbage.
pub fn room(body: &[u8]) -> usize {
    free_space(body) + garbage(body)
}

/// Bytes the cells and their slots occupy: what moving every cell into an
/// empty node would use.
pub fn live_bytes(body: &[u8]) -> usize {
    BODY_LEN - HEADER_LEN - room(body)
}

/// Whether every cell of `left` and `right` fits in one node.
pub fn fits_together(left: &[u8], right: &[u8]) -> bool {
    live_bytes(left) + live_bytes(right) <= BODY_LEN - HEADER_LEN
}

/// Inserts a cell at slot `index` (the position `search` returned). Compacts
/// if that makes room; `NodeFull` if nothing does.
pub fn insert(body: &mut [u8], index: usize, key: &[u8], value: &[u8]) -> Result<(), NodeFull> {
    check_cell(key, value).expect("the caller checks cell sizes");
    assert!(index <= count(body), "slot {index} out of {} cells", count(body));
    let need = CELL_HEADER_LEN + key.len() + value.len();
    if free_space(body) < need + SLOT_LEN {
        if free_space(body) + garbage(body) < need + SLOT_LEN {
            return Err(NodeFull);
        }
        compact(body);
    }
    let at = content_at(body) - need;
    put_u16(body, at, key.len());
    put_u16(body, at + 2, value.len());
    body[at + CELL_HEADER_LEN..at + CELL_HEADER_LEN + key.len()].copy_from_slice(key);
    body[at + CELL_HEADER_LEN + key.len()..at + need].copy_from_slice(value);
    put_u16(body, 2, at);
    let count = count(body);
    let slots = HEADER_LEN + SLOT_LEN * index;
    body.copy_within(slots..HEADER_LEN + SLOT_LEN * count, slots + SLOT_LEN);
    put_u16(body, slots, at);
    put_u16(body, 0, count + 1);
    Ok(())
}

/// Sets `key` to `value`. A replacement no longer than the cell it replaces
/// is written in place (any bytes it no longer needs become garbage);
/// anything else is inserted, compacting if that makes room. `NodeFull` if
/// nothing does, with the node unchanged.
pub fn put(body: &mut [u8], key: &[u8], value: &[u8]) -> Result<(), NodeFull> {
    let index = match search(body, key) {
        Ok(index) => index,
        Err(index) => return insert(body, index, key, value),
    };
    check_cell(key, value).expect("the caller checks cell sizes");
    let at = cell_at(body, index);
    let (old, need) = (cell_len(body, at), CELL_HEADER_LEN + key.len() + value.len());
    if need <= old {
        put_u16(body, at + 2, value.len());
        let start = at + CELL_HEADER_LEN + key.len();
        body[start..start + value.len()].copy_from_slice(value);
        if need < old {
            probe::hit(Probe::RowShrunkInPlace);
            put_u16(body, 8, garbage(body) + old - need);
        }
        return Ok(());
    }
    // Removing the old cell frees it and its slot; the new one needs a slot.
    if room(body) + old < need {
        return Err(NodeFull);
    }
    remove(body, index);
    insert(body, index, key, value)
}

/// Removes cell `index`; its bytes become garbage until the next compaction.
pub fn remove(body: &mut [u8], index: usize) {
    let count = count(body);
    assert!(index < count, "slot {index} out of {count} cells");
    let freed = cell_len(body, cell_at(body, index));
    let slots = HEADER_LEN + SLOT_LEN * index;
    body.copy_within(slots + SLOT_LEN..HEADER_LEN + SLOT_LEN * count, slots);
    put_u16(body, 0, count - 1);
    put_u16(body, 8, garbage(body) + freed);
}

/// Rewrites the content area without garbage, keeping slot order.
fn compact(body: &mut [u8]) {
    let before: [u8; BODY_LEN] = body.try_into().expect("a node is a whole page body");
    let mut at = BODY_LEN;
    for index in 0..count(body) {
        let from = cell_at(&before[..], index);
        let len = cell_len(&before[..], from);
        at -= len;
        body[at..at + len].copy_from_slice(&before[from..from + len]);
        put_u16(body, HEADER_LEN + SLOT_LEN * index, at);
    }
    put_u16(body, 2, at);
    put_u16(body, 8, 0);
}

/// Moves the upper half of the cells (by bytes) into `right`, a freshly
/// initialised node, and returns the first key now in `right`.
pub fn split_into(body: &mut [u8], right: &mut [u8]) -> Vec<u8> {
    let count = count(body);
    assert!(count >= 2, "splitting a node of {count} cells");
    assert_eq!(self::count(right), 0, "the right node starts empty");
    let total: usize = (0..count).map(|i| cell_len(body, cell_at(body, i))).sum();
    let (mut left_bytes, mut mid) = (0, 0);
    while mid < count - 1 && left_bytes < total / 2 {
        left_bytes += cell_len(body, cell_at(body, mid));
        mid += 1;
    }
    let mid = mid.max(1);
    for index in mid..count {
        let placed = insert(right, index - mid, key(body, index), value(body, index));
        placed.expect("half a node fits in an empty one");
    }
    for index in (mid..count).rev() {
        remove(body, index);
    }
    compact(body);
    key(right, 0).to_vec()
}

/// Checks the node's invariants; returns the first violation.
pub fn check(body: &[u8]) -> Result<(), String> {
    let count = count(body);
    let slots_end = HEADER_LEN + SLOT_LEN * count;
    let content = content_at(body);
    if slots_end > content || content > BODY_LEN {
        return Err(format!("{count} slots end at {slots_end}, past the content area at {content}"));
    }
    let mut used = 0;
    for index in 0..count {
        let at = cell_at(body, index);
        if at < content || at + CELL_HEADER_LEN > BODY_LEN || at + cell_len(body, at) > BODY_LEN {
            return Err(format!("cell {index} at {at} lies outside the content area"));
        }
        used += cell_len(body, at);
        if index > 0 && key(body, index - 1) >= key(body, index) {
            return Err(format!("cells {} and {index} are out of key order", index - 1));
        }
    }
    if used + garbage(body) != BODY_LEN - content {
        return Err(format!("{used} used + {} garbage != {} bytes of content", garbage(body), BODY_LEN - content));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn node() -> Vec<u8> {
        let mut body = vec![0; BODY_LEN];
        init(&mut body, 7);
        body
    }

    fn contents(body: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..count(body)).map(|i| (key(body, i).to_vec(), value(body, i).to_vec())).collect()
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(Vec<u8>, Vec<u8>),
        Delete(Vec<u8>),
    }

    fn op() -> impl Strategy<Value = Op> {
        let key = proptest::collection::vec(0u8..8, 1..4);
        prop_oneof![
            3 => (key.clone(), proptest::collection::vec(any::<u8>(), 0..400)).prop_map(|(k, v)| Op::Put(k, v)),
            1 => key.prop_map(Op::Delete),
        ]
    }

    proptest! {
        /// Puts (insert or replace) and deletes agree with a BTreeMap; a
        /// full node splits and both halves stay valid and ordered.
        #[test]
        fn a_node_behaves_like_an_ordered_map(ops in proptest::collection::vec(op(), 1..200)) {
            let mut model = BTreeMap::new();
            let mut body = node();
            for op in ops {
                match op {
                    Op::Put(k, v) => {
                        let before = body.clone();
                        if put(&mut body, &k, &v).is_err() {
                            prop_assert!(body == before, "a failed put leaves the node unchanged");
                            if let Ok(index) = search(&body, &k) {
                                remove(&mut body, index);
                            }
                            let mut right = node();
                            let separator = split_into(&mut body, &mut right);
                            prop_assert!(check(&body).is_ok() && check(&right).is_ok());
                            let (left_max, right_min) = (key(&body, count(&body) - 1).to_vec(), key(&right, 0).to_vec());
                            prop_assert!(left_max < right_min && right_min == separator);
                            // Keep testing the half the key belongs to, with the other half's
                            // cells forgotten by the model.
                            let keep_right = k >= separator;
                            let dropped = if keep_right { contents(&body) } else { contents(&right) };
                            for (key, _) in dropped {
                                model.remove(&key);
                            }
                            if keep_right {
                                body = right;
                            }
                            let index = search(&body, &k).unwrap_err();
                            prop_assert!(insert(&mut body, index, &k, &v).is_ok(), "a split makes room");
                        }
                        model.insert(k, v);
                    }
                    Op::Delete(k) => {
                        if let Ok(index) = search(&body, &k) {
                            remove(&mut body, index);
                        }
                        model.remove(&k);
                    }
                }
                prop_assert_eq!(check(&body), Ok(()));
                prop_assert_eq!(contents(&body), model.clone().into_iter().collect::<Vec<_>>());
            }
            prop_assert_eq!(link(&body), 7);
        }
    }

    #[test]
    fn oversized_rows_are_refused_with_their_size() {
        assert!(check_cell(&[1; 10], &[2; 1986]).is_ok());
        let err = check_cell(&[1; 10], &[2; 1987]).unwrap_err();
        assert_eq!(err.to_string(), "a row of 1997 bytes (key and value) exceeds the 1996-byte limit of a B+tree cell");
    }

    #[test]
    fn a_replacement_no_longer_than_its_cell_is_written_in_place() {
        let mut body = node();
        put(&mut body, b"a", &[1; 100]).unwrap();
        put(&mut body, b"b", &[2; 100]).unwrap();
        let (free, cell) = (free_space(&body), cell_at(&body, 0));
        put(&mut body, b"a", &[3; 100]).unwrap();
        assert_eq!((free_space(&body), garbage(&body), cell_at(&body, 0)), (free, 0, cell), "same length: in place");
        put(&mut body, b"a", &[4; 60]).unwrap();
        assert_eq!(
            (free_space(&body), garbage(&body), cell_at(&body, 0)),
            (free, 40, cell),
            "shorter: the rest is garbage"
        );
        put(&mut body, b"a", &[5; 80]).unwrap();
        assert_ne!(cell_at(&body, 0), cell, "longer than the cell: moved");
        assert_eq!(garbage(&body), 105, "the whole old 105-byte cell is garbage");
        assert_eq!(check(&body), Ok(()));
        assert_eq!(contents(&body), vec![(b"a".to_vec(), vec![5; 80]), (b"b".to_vec(), vec![2; 100])]);
    }

    #[test]
    fn removals_are_reclaimed_by_compaction() {
        let mut body = node();
        let value = vec![9; 1900];
        let mut inserted = 0u8;
        while insert(&mut body, usize::from(inserted), &[inserted], &value).is_ok() {
            inserted += 1;
        }
        assert!(inserted >= 4, "a node holds at least four maximal cells");
        remove(&mut body, 0);
        assert!(free_space(&body) < 1900, "freed bytes are garbage, not contiguous free space yet");
        insert(&mut body, 0, &[0], &value).expect("compaction reclaims the garbage");
        assert_eq!(check(&body), Ok(()));
    }
}
