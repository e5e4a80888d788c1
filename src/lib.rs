//! ThunderDB: a transactional, PostgreSQL-wire database whose durability is
//! checked by a deterministic simulator with a faulty disk.
//!
//! The engine reaches the world only through [`env`](mod@env); [`wal`] is the
//! write-ahead log; [`storage`] holds pages and the control file. See
//! `docs/design.md` for the on-disk formats and the protocols.

pub mod env;
pub mod planted;
pub mod probe;
pub mod storage;
pub mod wal;
