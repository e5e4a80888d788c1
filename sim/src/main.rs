//! `thunderdb-sim`: run seeds, summarise, replay failures.
//!
//! ```text
//! cargo sim -- --seed 42            # one seed; the last line has trace_hash=…
//! cargo sim -- --seeds 0..2000      # a range, each run twice for determinism
//! ```

use std::collections::BTreeMap;
use std::ops::Range;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use thunderdb::env::{Clock, FaultKind, RealClock};
use thunderdb_sim::{run_seed_checked, SeedFailure};

/// ThunderDB's deterministic simulator.
#[derive(Parser, Debug)]
#[command(name = "thunderdb-sim", version)]
struct Args {
    /// Run one seed and print its trace hash.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run a range of seeds, `A..B` (B excluded).
    #[arg(long, value_parser = parse_range)]
    seeds: Option<Range<u64>>,
    /// Skip the second run of each seed that checks determinism.
    #[arg(long)]
    no_determinism_check: bool,
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

fn report_failure(failure: &SeedFailure) {
    println!("FAILED: {failure}");
    println!("replay: cargo sim -- --seed {}", failure.seed);
}

fn main() -> ExitCode {
    let args = Args::parse();
    let determinism = !args.no_determinism_check;
    if let Some(seed) = args.seed {
        return match run_seed_checked(seed, determinism) {
            Ok(outcome) => {
                println!(
                    "seed={seed} ok crashes={} recoveries={} accepted={} acknowledged={} retired={} trace_hash={:016x}",
                    outcome.crashes,
                    outcome.recoveries,
                    outcome.records_accepted,
                    outcome.records_acknowledged,
                    outcome.segments_retired,
                    outcome.trace_hash
                );
                ExitCode::SUCCESS
            }
            Err(failure) => {
                report_failure(&failure);
                ExitCode::FAILURE
            }
        };
    }
    let range = args.seeds.unwrap_or(0..100);
    let clock = RealClock::new();
    let mut faults: BTreeMap<FaultKind, u64> = BTreeMap::new();
    let (mut crashes, mut recoveries, mut acknowledged, mut retired, mut failures) =
        (0u64, 0u64, 0u64, 0u64, Vec::new());
    for seed in range.clone() {
        match run_seed_checked(seed, determinism) {
            Ok(outcome) => {
                for (kind, count) in outcome.faults {
                    *faults.entry(kind).or_default() += count;
                }
                crashes += outcome.crashes;
                recoveries += outcome.recoveries;
                acknowledged += outcome.records_acknowledged;
                retired += outcome.segments_retired;
            }
            Err(failure) => {
                report_failure(&failure);
                failures.push(failure);
            }
        }
    }
    let elapsed = clock.monotonic().max(Duration::from_millis(1));
    let seeds = range.end - range.start;
    println!("seeds run: {seeds}, failures: {}", failures.len());
    println!(
        "crashes: {crashes}, recoveries: {recoveries}, records acknowledged: {acknowledged}, segments retired: {retired}"
    );
    let listed: Vec<String> = FaultKind::ALL.iter().map(|k| format!("{k}={}", faults.get(k).unwrap_or(&0))).collect();
    println!("faults injected: {}", listed.join(" "));
    println!(
        "seeds per second: {:.1}{}",
        seeds as f64 / elapsed.as_secs_f64(),
        if determinism { " (each seed run twice)" } else { "" }
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
