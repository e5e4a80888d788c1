//! The Raft group's building blocks, on tikv's raft-rs (sans-IO): the
//! durable log with its snapshots ([`log`]) and the node that drives
//! raft-rs over it ([`node`]). The simulator's cluster workload runs
//! groups of them on a seeded network with partitions, crashes and power
//! loss. The WAL replicated through it is [`super::replica`]. What is not
//! built yet: the server's transport, and membership changes.

pub mod log;
pub mod node;

pub use ::raft::eraftpb::{Entry, HardState, Message, MessageType};
pub use log::{RaftLog, RaftLogError, LOG_FILE};
pub use node::{Advanced, ExportedLog, ProposeError, RaftConfig, RaftNode};
