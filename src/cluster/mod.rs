//! Replication. Today: the archive-fed standby ([`standby`]), a server
//! that follows a primary by replaying the WAL it archives, and that
//! `thunderdb promote` turns into a primary on a new timeline; and the Raft
//! group's consensus layer ([`raft`]), proven in the simulator but not yet
//! carrying the WAL or serving in the server.

pub mod raft;
pub mod replica;
pub mod standby;
