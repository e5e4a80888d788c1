//! Secondary indexes. Each is a B+tree of the engine, registered in the
//! catalog under a reserved name ([`tree_name`]), and changed in the same
//! transaction as its table, so the WAL logs it, recovery redoes it and a
//! rollback undoes it exactly as it does the table's own tree.
//!
//! An entry's key is the indexed columns in the order-preserving key
//! encoding, followed by the row's primary key unless the index is unique
//! and no indexed column is NULL (NULLs never collide, as in PostgreSQL);
//! its value is the row's primary key. A unique index refuses a second
//! entry with the same columns: the insert of the entry finds the key taken.

use std::ops::Bound;

use super::exec::SCAN_BATCH;
use super::types::{decode_row, encode_key_part, IndexDef, Schema, Value};
use super::SqlError;
use crate::db::DbError;
use crate::planted::{active, PlantedBug};
use crate::txn::{Table, Transaction};

/// Catalog names of index trees start with this; no SQL identifier can.
const TREE_PREFIX: &str = "\u{0}index\u{0}";

/// The catalog name of index `index`'s tree.
pub fn tree_name(index: &str) -> String {
    format!("{TREE_PREFIX}{index}")
}

/// The index a catalog entry is the tree of, if it is one.
pub fn index_of_tree(name: &str) -> Option<&str> {
    name.strip_prefix(TREE_PREFIX)
}

/// The tree of `index`.
pub async fn tree(txn: &mut Transaction, index: &IndexDef) -> Result<Table, SqlError> {
    txn.table(&tree_name(&index.name)).await?.ok_or_else(|| {
        SqlError::new("XX001", format!("the tree of index \"{}\" is missing from the catalog", index.name))
    })
}

/// The key prefix of `values` (one per indexed column, or fewer: a prefix).
pub fn key_prefix(values: &[Value]) -> Vec<u8> {
    let mut key = Vec::new();
    for value in values {
        encode_key_part(value, &mut key);
    }
    key
}

/// The entry for `row`, whose primary key is `pk`.
pub fn entry(index: &IndexDef, row: &[Value], pk: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let values: Vec<Value> = index.columns.iter().map(|&c| row[c].clone()).collect();
    let mut key = key_prefix(&values);
    if !index.unique || values.iter().any(Value::is_null) {
        key.extend_from_slice(pk);
    }
    (key, pk.to_vec())
}

/// The first key after every key that starts with `prefix` (`None`: no
/// such key, the range is unbounded above).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn duplicate(index: &IndexDef) -> SqlError {
    SqlError::new("23505", format!("duplicate key value violates unique constraint \"{}\"", index.name))
}

/// Adds the entries of `rows` (primary key, row) to every index of the
/// table; a duplicate in a unique index fails with 23505 naming it.
pub async fn add(txn: &mut Transaction, schema: &Schema, rows: &[(Vec<u8>, Vec<Value>)]) -> Result<(), SqlError> {
    for index in &schema.indexes {
        let tree = tree(txn, index).await?;
        let mut entries: Vec<(Vec<u8>, Vec<u8>)> = rows.iter().map(|(pk, row)| entry(index, row, pk)).collect();
        // In key order, a batch's entries that share a leaf log together.
        entries.sort();
        for batch in entries.chunks(512) {
            let inserted = txn.insert_many(&tree, batch).await?;
            if inserted < batch.len() {
                return Err(duplicate(index));
            }
        }
    }
    Ok(())
}

/// Removes the entries of `rows` (primary key, row) from every index.
pub async fn remove(txn: &mut Transaction, schema: &Schema, rows: &[(Vec<u8>, Vec<Value>)]) -> Result<(), SqlError> {
    for index in &schema.indexes {
        let tree = tree(txn, index).await?;
        for (pk, row) in rows {
            let (key, _) = entry(index, row, pk);
            if !txn.delete(&tree, &key).await? {
                return Err(SqlError::new(
                    "XX001",
                    format!("index \"{}\" has no entry for a row of its table: the index is corrupt", index.name),
                ));
            }
        }
    }
    Ok(())
}

/// Changes the entries of a row from `old` to `new` (same or new primary
/// key) in the indexes whose columns or key changed.
pub async fn replace(
    txn: &mut Transaction,
    schema: &Schema,
    (old_pk, old): (&[u8], &[Value]),
    (new_pk, new): (&[u8], &[Value]),
) -> Result<(), SqlError> {
    for index in &schema.indexes {
        let (old_key, old_value) = entry(index, old, old_pk);
        let (new_key, new_value) = entry(index, new, new_pk);
        if (&old_key, &old_value) == (&new_key, &new_value) {
            continue;
        }
        let tree = tree(txn, index).await?;
        if !active(PlantedBug::IndexUpdateKeepsOldEntry) {
            txn.delete(&tree, &old_key).await?;
        }
        match txn.insert(&tree, &new_key, &new_value).await {
            Err(DbError::DuplicateKey { .. }) => return Err(duplicate(index)),
            other => other?,
        }
    }
    Ok(())
}

/// Fills `index`'s (new, empty) tree from every row of `table`, in batches.
pub async fn build(txn: &mut Transaction, table: &Table, schema: &Schema, index: &IndexDef) -> Result<(), SqlError> {
    let one = Schema { indexes: vec![index.clone()], ..schema.clone() };
    let mut after: Option<Vec<u8>> = None;
    loop {
        let start = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let batch = txn.scan_limit(table, start, Bound::Unbounded, SCAN_BATCH).await?;
        let full = batch.len() == SCAN_BATCH;
        after = batch.last().map(|(key, _)| key.clone());
        let rows = batch
            .into_iter()
            .map(|(pk, bytes)| Ok((pk, decode_row(&table.name, &bytes)?)))
            .collect::<Result<Vec<_>, SqlError>>()?;
        add(txn, &one, &rows).await?;
        if !full {
            return Ok(());
        }
    }
}

/// The primary keys of the entries of `index` with keys in the range, in
/// index order.
pub async fn lookup(
    txn: &mut Transaction,
    index: &IndexDef,
    start: Bound<&[u8]>,
    end: Bound<&[u8]>,
) -> Result<Vec<Vec<u8>>, SqlError> {
    let tree = tree(txn, index).await?;
    let mut keys = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let from = after.as_deref().map_or(start, Bound::Excluded);
        let batch = txn.scan_limit(&tree, from, end, SCAN_BATCH).await?;
        let full = batch.len() == SCAN_BATCH;
        after = batch.last().map(|(key, _)| key.clone());
        keys.extend(batch.into_iter().map(|(_, pk)| pk));
        if !full {
            return Ok(keys);
        }
    }
}
