//! Workload generators and their reference models, for ThunderDB's simulator.
//!
//! Each workload pairs a generator of operations with a model of what the
//! engine must hold afterwards, and a checker that compares the two after
//! every crash and recovery.

pub mod commit_times;
pub mod db;
pub mod wal_log;
