//! Replication. Today: the archive-fed standby ([`standby`]), a server
//! that follows a primary by replaying the WAL it archives, and that
//! `thunderdb promote` turns into a primary on a new timeline. The Raft
//! group of `../shared/SPEC.md` ("Cluster") is not built yet.

pub mod standby;
