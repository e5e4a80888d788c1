//! Replication: the archive-fed standby ([`standby`]), a server that
//! follows a primary by replaying the WAL it archives, and that `thunderdb
//! promote` turns into a primary on a new timeline; the Raft group's
//! consensus layer ([`raft`]); and the WAL replicated through it
//! ([`replica`]), proven in the simulator but not yet serving in the
//! server.

pub mod raft;
pub mod replica;
pub mod standby;
