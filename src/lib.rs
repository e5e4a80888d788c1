//! ThunderDB: a transactional, PostgreSQL-wire database whose durability is
//! checked by a deterministic simulator with a faulty disk.
//!
//! The engine reaches the world only through [`env`](mod@env); [`wal`] is the
//! write-ahead log; [`storage`] holds pages, B+trees and the control file;
//! [`txn`] runs transactions under locks; [`recovery`] is ARIES crash
//! recovery; [`db`] ties them together behind [`db::Database`]. See
//! `docs/design.md` for the on-disk formats and the protocols.

pub mod archive;
pub mod backup;
pub mod cluster;
pub mod db;
pub mod env;
pub mod planted;
pub mod probe;
pub mod recovery;
pub mod server;
pub mod sql;
pub mod storage;
pub mod txn;
pub mod wal;
