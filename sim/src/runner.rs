//! Running a seed in isolation: a fresh OS thread and a fresh runtime pinned
//! to the seed, so that the scheduler's choices, simulated time and every
//! fault follow from the seed alone. Two runs of a seed in one runtime would
//! differ, because the scheduler's generator carries on from the first.

use crate::cluster_sim::run_cluster_seed;
use crate::db_run::run_db_seed;
use crate::replica_sim::run_replica_seed;
use crate::wal_run::{run_wal_seed, SeedFailure, SeedOutcome};

/// What a seed exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// The write-ahead log, directly.
    Wal,
    /// Concurrent transactions through the engine: kv, bank, long
    /// transactions, catalog churn and large rows.
    Db,
    /// A Raft group on a seeded network: partitions, crashes, power loss.
    Cluster,
    /// Databases whose WAL is replicated through a Raft group, with
    /// failovers.
    Replica,
}

impl Workload {
    async fn run(self, seed: u64) -> Result<SeedOutcome, SeedFailure> {
        match self {
            Workload::Wal => run_wal_seed(seed).await,
            Workload::Db => run_db_seed(seed).await,
            Workload::Cluster => run_cluster_seed(seed).await,
            Workload::Replica => run_replica_seed(seed).await,
        }
    }
}

/// Runs one seed on a fresh thread in its own runtime. A panic is reported as
/// the failure of the `no_panic` check.
// madsim needs a fresh thread per seed; the harness, not the engine, owns it.
#[allow(clippy::disallowed_methods)]
pub fn run_seed_isolated(seed: u64, workload: Workload) -> Result<SeedOutcome, SeedFailure> {
    std::thread::spawn(move || block_on(seed, workload)).join().unwrap_or_else(|panic| {
        let detail = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into());
        Err(SeedFailure { seed, check: "no_panic", detail })
    })
}

/// Runs a seed, and with `determinism` runs it again and compares the
/// outcomes, trace hash included.
pub fn run_seed_checked(seed: u64, determinism: bool, workload: Workload) -> Result<SeedOutcome, SeedFailure> {
    let first = run_seed_isolated(seed, workload)?;
    if determinism {
        let second = run_seed_isolated(seed, workload)?;
        if first != second {
            let divergence = match first.trace.first_divergence(&second.trace) {
                Some((index, one, two)) => {
                    let context: Vec<String> =
                        (index.saturating_sub(6)..index).map(|i| first.trace.describe(i)).collect();
                    format!("first diverging event #{index}: `{one}` then `{two}`; before it: {}", context.join(" | "))
                }
                None => "the disk traces match; the model or the counters differ".into(),
            };
            return Err(SeedFailure {
                seed,
                check: "determinism",
                detail: format!("trace_hash {:016x} then {:016x}; {divergence}", first.trace_hash, second.trace_hash),
            });
        }
    }
    Ok(first)
}

/// Runs `run` over `seeds` on `jobs` harness threads and returns the results
/// in the seeds' order. Each seed still runs on a fresh thread in its own
/// runtime ([`run_seed_isolated`]), so its outcome is the same whatever else
/// runs beside it; only the wall-clock time changes.
pub fn run_seeds_parallel<T: Send>(seeds: &[u64], jobs: usize, run: impl Fn(u64) -> T + Sync) -> Vec<T> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<(usize, T)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..jobs.clamp(1, seeds.len().max(1)))
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&seed) = seeds.get(index) else { return done };
                        done.push((index, run(seed)));
                    }
                })
            })
            .collect();
        workers.into_iter().flat_map(|worker| worker.join().expect("a harness thread panicked")).collect()
    });
    results.sort_by_key(|(index, _)| *index);
    results.into_iter().map(|(_, result)| result).collect()
}

#[cfg(madsim)]
fn block_on(seed: u64, workload: Workload) -> Result<SeedOutcome, SeedFailure> {
    let runtime = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
    runtime.block_on(workload.run(seed))
}

#[cfg(not(madsim))]
fn block_on(seed: u64, workload: Workload) -> Result<SeedOutcome, SeedFailure> {
    // Paused time advances only when every task waits, as madsim's does, so
    // sleeps cost nothing and task order does not depend on the real clock.
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("tokio runtime");
    runtime.block_on(workload.run(seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_runs_give_each_seed_its_sequential_outcome() {
        let seeds: Vec<u64> = (0..12).collect();
        let sequential: Vec<_> = seeds.iter().map(|&seed| run_seed_isolated(seed, Workload::Wal)).collect();
        let parallel = run_seeds_parallel(&seeds, 3, |seed| run_seed_isolated(seed, Workload::Wal));
        assert_eq!(sequential, parallel);
    }

    #[test]
    fn seeds_pass_and_replay_identically() {
        let mut detected = 0;
        for seed in 0..60 {
            let outcome = run_seed_checked(seed, true, Workload::Wal).unwrap_or_else(|f| panic!("{f}"));
            assert!(outcome.recoveries > 0, "seed {seed}: recovery ran");
            if outcome.corruption_detected {
                detected += 1;
            } else {
                assert!(outcome.crashes >= 8, "seed {seed}: every cycle crashes");
            }
        }
        assert!(detected > 0, "some seeds rot the log and see it reported");
    }

    #[test]
    fn cluster_seeds_pass_and_replay_identically() {
        for seed in 0..40 {
            let outcome = run_seed_checked(seed, true, Workload::Cluster).unwrap_or_else(|f| panic!("{f}"));
            assert!(outcome.records_acknowledged > 0, "seed {seed}: writes were acknowledged");
        }
    }

    #[test]
    fn replica_seeds_pass_and_replay_identically() {
        for seed in 0..8 {
            let outcome = run_seed_checked(seed, true, Workload::Replica).unwrap_or_else(|f| panic!("{f}"));
            assert!(outcome.records_acknowledged > 0, "seed {seed}: commits were acknowledged");
        }
    }

    #[test]
    fn db_seeds_pass_and_replay_identically() {
        for seed in 0..30 {
            let outcome = run_seed_checked(seed, true, Workload::Db).unwrap_or_else(|f| panic!("{f}"));
            assert!(outcome.recoveries > 0, "seed {seed}: recovery ran");
        }
    }
}
