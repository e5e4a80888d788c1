//! `thunderdb-sim`: run seeds, summarise, replay failures, measure power.
//!
//! ```text
//! cargo sim -- --seed 42                  # one seed; the last line has trace_hash=…
//! cargo sim -- --seeds 0..2000            # a range, each run twice for determinism
//! cargo sim -- --regressions sim/regressions.txt
//! cargo sim --features planted-bugs -- --planted-report
//! cargo sim --features planted-bugs -- --plant ack_before_sync --seeds 0..100
//! ```

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use thunderdb::env::{Clock, FaultKind, Fs, RealClock, RealFs};
use thunderdb::planted::PlantedBug;
use thunderdb::probe::Layer;
use thunderdb_sim::{run_seed_checked, run_seed_isolated, run_seeds_parallel, SeedFailure, SeedOutcome, Workload};

/// ThunderDB's deterministic simulator.
#[derive(Parser, Debug)]
#[command(name = "thunderdb-sim", version)]
struct Args {
    /// Run one seed and print its trace hash.
    #[arg(long, conflicts_with_all = ["seeds", "regressions"])]
    seed: Option<u64>,
    /// Run a range of seeds, `A..B` (B excluded).
    #[arg(long, value_parser = parse_range)]
    seeds: Option<Range<u64>>,
    /// Run the seeds listed in a file (one per line; `#` starts a comment).
    #[arg(long)]
    regressions: Option<PathBuf>,
    /// What the seeds exercise.
    #[arg(long, value_enum, default_value = "wal")]
    workload: Workload,
    /// Skip the second run of each seed that checks determinism.
    #[arg(long)]
    no_determinism_check: bool,
    /// Switch a planted bug on (needs `--features planted-bugs`).
    #[arg(long, value_parser = parse_bug)]
    plant: Option<PlantedBug>,
    /// Hunt every planted bug and report the median seeds-to-detect (needs
    /// `--features planted-bugs`). Fails if any bug survives its budget.
    #[arg(long)]
    planted_report: bool,
    /// Seeds one hunt may try before the bug counts as uncaught.
    #[arg(long, default_value_t = 2000)]
    hunt_budget: u64,
    /// Fail if any coverage probe was never hit (for long runs).
    #[arg(long)]
    require_probes: bool,
    /// Independent hunts per planted bug.
    #[arg(long, default_value_t = 5)]
    hunts: u64,
    /// Seeds over which the planted report measures each bug's detection
    /// rate (seeds 1 to N).
    #[arg(long, default_value_t = 800)]
    rate_window: u64,
    /// Seeds run at once, each on its own thread (default: the machine's
    /// cores). A seed's outcome does not depend on it.
    #[arg(long)]
    jobs: Option<usize>,
}

fn parse_range(text: &str) -> Result<Range<u64>, String> {
    let (start, end) = text.split_once("..").ok_or_else(|| format!("{text:?}: expected A..B"))?;
    let number = |s: &str| s.parse::<u64>().map_err(|e| format!("{s:?}: {e}"));
    let range = number(start)?..number(end)?;
    if range.is_empty() {
        return Err(format!("{text:?}: the range is empty"));
    }
    Ok(range)
}

fn parse_bug(name: &str) -> Result<PlantedBug, String> {
    PlantedBug::from_name(name).ok_or_else(|| {
        let names: Vec<_> = PlantedBug::ALL.iter().map(|b| b.name()).collect();
        format!("unknown planted bug {name:?}; known: {}", names.join(", "))
    })
}

fn read_regressions(path: &std::path::Path) -> Result<Vec<u64>, String> {
    let read = || -> std::io::Result<String> {
        let file = RealFs.open(path)?;
        let mut bytes = vec![0; file.len()? as usize];
        file.read_exact_at(&mut bytes, 0)?;
        String::from_utf8(bytes).map_err(std::io::Error::other)
    };
    let text = read().map_err(|e| format!("{}: {e}", path.display()))?;
    let mut seeds = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let seed = line.split('#').next().unwrap_or("").trim();
        if !seed.is_empty() {
            seeds.push(seed.parse().map_err(|e| format!("{}:{}: {seed:?}: {e}", path.display(), index + 1))?);
        }
    }
    Ok(seeds)
}

fn report_failure(failure: &SeedFailure, plant: Option<PlantedBug>, workload: Workload) {
    println!("FAILED: {failure}");
    let features = if plant.is_some() { " --features planted-bugs" } else { "" };
    let planted = plant.map(|bug| format!(" --plant {bug}")).unwrap_or_default();
    let workload = match workload {
        Workload::Wal => String::new(),
        Workload::Db => " --workload db".into(),
        Workload::Cluster => " --workload cluster".into(),
        Workload::Replica => " --workload replica".into(),
    };
    println!("replay: cargo sim{features} --{planted}{workload} --seed {}", failure.seed);
}

#[cfg(feature = "planted-bugs")]
fn plant(bugs: &[PlantedBug]) -> Result<(), String> {
    thunderdb::planted::set_active(bugs);
    Ok(())
}

#[cfg(not(feature = "planted-bugs"))]
fn plant(bugs: &[PlantedBug]) -> Result<(), String> {
    if bugs.is_empty() {
        Ok(())
    } else {
        Err("planted bugs need a build with them: cargo sim --features planted-bugs -- …".into())
    }
}

/// The detection rate every planted bug must reach: the fraction of its
/// workload's seeds, in the rate window, that catch it.
const DETECTION_RATE_MIN: f64 = 0.05;

/// Hunts each planted bug from `hunts` starting points and prints the
/// seeds-to-detect, and measures its detection rate over seeds
/// `1..=rate_window`. Returns whether every bug was caught in every hunt
/// and by at least [`DETECTION_RATE_MIN`] of the window's seeds.
fn planted_report(budget: u64, hunts: u64, rate_window: u64, jobs: usize) -> Result<bool, String> {
    // Planted bugs trip assertions; the report says so, without the noise.
    std::panic::set_hook(Box::new(|_| {}));
    println!("| planted bug | caught | median seeds to detect | detection rate | first check failed |");
    println!("|---|---:|---:|---:|---|");
    let mut all_caught = true;
    for bug in PlantedBug::ALL {
        plant(&[bug])?;
        let workload = match bug.layer() {
            Layer::Wal => Workload::Wal,
            Layer::Storage => Workload::Db,
            Layer::Cluster => Workload::Cluster,
            Layer::Replication => Workload::Replica,
        };
        let mut counts = Vec::new();
        let mut checks = BTreeMap::new();
        for hunt in 0..hunts {
            let start = 1 + hunt * 1_000_000;
            // The first failing seed, found `jobs` seeds at a time.
            let seeds: Vec<u64> = (start..start + budget).collect();
            let found = seeds.chunks(jobs).find_map(|batch| {
                run_seeds_parallel(batch, jobs, |seed| run_seed_isolated(seed, workload))
                    .into_iter()
                    .find_map(Result::err)
            });
            if let Some(failure) = found {
                counts.push(failure.seed - start + 1);
                *checks.entry(failure.check).or_insert(0) += 1;
            }
        }
        let window: Vec<u64> = (1..=rate_window).collect();
        let caught_seeds = run_seeds_parallel(&window, jobs, |seed| run_seed_isolated(seed, workload).is_err())
            .into_iter()
            .filter(|caught| *caught)
            .count();
        let rate = caught_seeds as f64 / rate_window.max(1) as f64;
        counts.sort_unstable();
        let caught = counts.len() as u64 == hunts;
        all_caught &= caught && rate >= DETECTION_RATE_MIN;
        let median = counts.get(counts.len() / 2).map_or("-".into(), |m| m.to_string());
        let checks: Vec<String> = checks.iter().map(|(check, n)| format!("`{check}` ×{n}")).collect();
        println!(
            "| {bug} | {}/{hunts} | {median} | {:.1}% ({caught_seeds}/{rate_window}) | {} |",
            counts.len(),
            rate * 100.0,
            checks.join(", ")
        );
    }
    plant(&[])?;
    if !all_caught {
        println!(
            "FAILED: a planted bug escaped a hunt or was caught by fewer than {:.0}% of its seeds",
            DETECTION_RATE_MIN * 100.0
        );
    }
    Ok(all_caught)
}

struct Summary {
    seeds: u64,
    faults: BTreeMap<FaultKind, u64>,
    crashes: u64,
    recoveries: u64,
    acknowledged: u64,
    retired: u64,
    checkpoints: u64,
    corruptions_detected: u64,
    io_ops: u64,
    failures: Vec<SeedFailure>,
}

impl Summary {
    fn add(&mut self, outcome: SeedOutcome) {
        for (kind, count) in outcome.faults {
            *self.faults.entry(kind).or_default() += count;
        }
        self.crashes += outcome.crashes;
        self.recoveries += outcome.recoveries;
        self.acknowledged += outcome.records_acknowledged;
        self.retired += outcome.segments_retired;
        self.checkpoints += outcome.checkpoints;
        self.corruptions_detected += u64::from(outcome.corruption_detected);
        self.io_ops += outcome.io_ops;
    }

    fn print(&self, elapsed: Duration, determinism: bool) {
        println!("seeds run: {}, failures: {}", self.seeds, self.failures.len());
        println!(
            "crashes: {}, recoveries: {}, records acknowledged: {}, segments retired: {}, checkpoints: {}, corruptions detected: {}",
            self.crashes, self.recoveries, self.acknowledged, self.retired, self.checkpoints, self.corruptions_detected
        );
        let listed: Vec<String> =
            FaultKind::ALL.iter().map(|k| format!("{k}={}", self.faults.get(k).unwrap_or(&0))).collect();
        println!("faults injected: {}", listed.join(" "));
        let passed = (self.seeds - self.failures.len() as u64).max(1);
        println!("I/O operations per seed: {} on average", self.io_ops / passed);
        println!(
            "seeds per second: {:.1}{}",
            self.seeds as f64 / elapsed.as_secs_f64().max(0.001),
            if determinism { " (each seed run twice)" } else { "" }
        );
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("thunderdb-sim: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<bool, String> {
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    if args.planted_report {
        return planted_report(args.hunt_budget, args.hunts, args.rate_window, jobs);
    }
    plant(&args.plant.into_iter().collect::<Vec<_>>())?;
    let determinism = !args.no_determinism_check;
    if let Some(seed) = args.seed {
        return Ok(match run_seed_checked(seed, determinism, args.workload) {
            Ok(outcome) => {
                println!(
                    "seed={seed} ok crashes={} recoveries={} accepted={} acknowledged={} retired={} corruption_detected={} trace_hash={:016x}",
                    outcome.crashes,
                    outcome.recoveries,
                    outcome.records_accepted,
                    outcome.records_acknowledged,
                    outcome.segments_retired,
                    outcome.corruption_detected,
                    outcome.trace_hash
                );
                true
            }
            Err(failure) => {
                report_failure(&failure, args.plant, args.workload);
                false
            }
        });
    }
    let seeds: Vec<u64> = match (&args.regressions, &args.seeds) {
        (Some(path), _) => read_regressions(path)?,
        (None, Some(range)) => range.clone().collect(),
        (None, None) => (0..100).collect(),
    };
    let clock = RealClock::new();
    let mut summary = Summary {
        seeds: seeds.len() as u64,
        faults: BTreeMap::new(),
        crashes: 0,
        recoveries: 0,
        acknowledged: 0,
        retired: 0,
        checkpoints: 0,
        corruptions_detected: 0,
        io_ops: 0,
        failures: Vec::new(),
    };
    for result in run_seeds_parallel(&seeds, jobs, |seed| run_seed_checked(seed, determinism, args.workload)) {
        match result {
            Ok(outcome) => summary.add(outcome),
            Err(failure) => {
                report_failure(&failure, args.plant, args.workload);
                summary.failures.push(failure);
            }
        }
    }
    summary.print(clock.monotonic(), determinism);
    let layer = match args.workload {
        Workload::Wal => Layer::Wal,
        Workload::Db => Layer::Storage,
        Workload::Cluster => Layer::Cluster,
        Workload::Replica => Layer::Replication,
    };
    let counts = thunderdb::probe::counts(layer);
    let hit = counts.iter().filter(|(_, count)| *count > 0).count();
    println!("probes hit: {hit} of {} ({layer:?} layer)", counts.len());
    let missing = thunderdb::probe::missing(layer);
    if args.require_probes && !missing.is_empty() {
        println!("FAILED: probes never hit: {}", missing.join(", "));
        return Ok(false);
    }
    Ok(summary.failures.is_empty())
}
