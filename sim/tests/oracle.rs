//! The simulator as a test oracle: a few hundred seeds of each workload must
//! pass. It is the test `cargo mutants` runs against each mutant of the
//! durability-critical files (docs/simulation.md, "Mutation testing"), and
//! an ordinary test in both builds.
//!
//! `ORACLE_WAL_SEEDS` and `ORACLE_DB_SEEDS` change the counts.

use thunderdb_sim::{run_seed_isolated, Workload};

fn seeds(variable: &str, default: u64) -> u64 {
    std::env::var(variable).ok().and_then(|text| text.parse().ok()).unwrap_or(default)
}

fn run(workload: Workload, count: u64) {
    let mut failures = Vec::new();
    for seed in 0..count {
        if let Err(failure) = run_seed_isolated(seed, workload) {
            failures.push(failure.to_string());
        }
    }
    assert!(failures.is_empty(), "{} of {count} seeds failed, first: {}", failures.len(), failures[0]);
}

#[test]
fn wal_seeds_pass() {
    run(Workload::Wal, seeds("ORACLE_WAL_SEEDS", 300));
}

#[test]
fn db_seeds_pass() {
    run(Workload::Db, seeds("ORACLE_DB_SEEDS", 100));
}
