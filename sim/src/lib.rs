//! ThunderDB's deterministic simulator.
//!
//! A seed fixes everything: the swarm options (segment size, writer count,
//! which fault kinds are on and how often), the crash schedule, the
//! simulated disk's every fault, and (under madsim) the interleaving of tasks.
//! A run of a seed ends in an oracle verdict and a trace hash; two runs of the
//! same seed must give the same hash.
//!
//! Workloads: `wal` drives the write-ahead log directly (`wal_run`); `db`
//! runs concurrent transactions through the engine (`db_run`: kv, bank,
//! long transactions, catalog churn, large rows, SQL; with backups,
//! archiving, point-in-time recovery and standbys on its seeds); `cluster`
//! runs a Raft group on a seeded network (`cluster_sim`); `replica` runs
//! databases whose WAL is replicated through such a group (`replica_sim`).

pub mod archive_sim;
pub mod cluster_sim;
pub mod db_run;
pub mod fuzz_checks;
pub mod pitr_sim;
pub mod replica_sim;
pub mod runner;
pub mod standby_sim;
pub mod wal_run;

pub use runner::{run_seed_checked, run_seed_isolated, run_seeds_parallel, Workload};
pub use wal_run::{run_wal_seed, SeedFailure, SeedOutcome};
