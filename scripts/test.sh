#!/usr/bin/env bash
# Runs every check: formatting, clippy in both builds, the tests in both
# builds, simulator seeds, docs and a bounded fuzz run. This is the command the
# README gives and the one CI runs.
#
#   scripts/test.sh            everything
#   SIM_SEEDS=0..200 scripts/test.sh   fewer simulator seeds
set -euo pipefail
cd "$(dirname "$0")/.."

SIM_SEEDS=${SIM_SEEDS:-0..2000}
# CI fuzzing is reproducible: a fixed libFuzzer seed and a fixed number of
# runs per target (crash_schedule runs are ~1 ms each, the codecs' ~1 µs).
# Longer, exploratory fuzzing is a developer's job: docs/simulation.md.
FUZZ_SEED=${FUZZ_SEED:-1}
fuzz_runs() { case "$1" in crash_schedule) echo 10000 ;; backup_verify) echo 30000 ;; *) echo 2000000 ;; esac; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# Each step's header gives the minutes and seconds since the start, so a slow
# step shows in the log.
step() { printf '\n==> [%d:%02d] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

step "format"
cargo fmt --all --check

step "clippy, normal build"
cargo clippy --workspace --all-targets -- -D warnings

step "clippy, madsim build (target/sim)"
cargo simclippy -- -D warnings

step "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

step "alert rules: promtool check and test"
if ! command -v promtool >/dev/null; then
    # Debian's prometheus package ships promtool. Installing it never starts
    # the service in a container (policy-rc.d), and nothing here needs it.
    SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
promtool check rules deploy/prometheus/rules/thunderdb-backup-alerts.yml
promtool test rules deploy/prometheus/rules/thunderdb-backup-alerts.test.yml

step "python tools for the archiving tests: aws CLI, moto (S3 on loopback), psycopg"
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi
# The S3 round-trip test installs them itself if this did not; it reports
# itself skipped only if the install fails.
scripts/python-tools.sh

step "tests, normal build"
cargo test --workspace 2>&1 | tee -a "$log"

step "tests, madsim build (target/sim)"
cargo simtest 2>&1 | tee -a "$log"

step "simulator: seeds $SIM_SEEDS, each run twice for determinism"
cargo sim -- --seeds "$SIM_SEEDS" --require-probes

step "simulator: db workload (concurrent transactions through the engine), seeds 0..2500"
cargo sim -- --workload db --seeds 0..2500 --require-probes

step "simulator: cluster workload (a Raft group under partitions, crashes and power loss), seeds 0..2000"
cargo sim -- --workload cluster --seeds 0..2000 --require-probes

step "simulator: replica workload (databases replicating their WAL through Raft, with failovers), seeds 0..2000"
cargo sim -- --workload replica --seeds 0..2000 --require-probes

step "simulator: regression seeds"
cargo sim -- --regressions sim/regressions.txt
cargo sim -- --workload db --regressions sim/regressions-db.txt
cargo sim -- --workload cluster --regressions sim/regressions-cluster.txt
cargo sim -- --workload replica --regressions sim/regressions-replica.txt

step "simulator: every planted bug must be caught in every hunt and by at least 5% of seeds"
cargo sim --features planted-bugs -- --planted-report

step "fuzz: a fixed seed ($FUZZ_SEED) and run count per target"
if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --locked
fi
# New inputs go to a scratch directory; the committed corpus is read, not grown.
# On a failure, the panic and the saved input (fuzz/artifacts/<target>/) are
# shown; add the input to fuzz/corpus/<target>/ with the fix.
for target in $(cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz list); do
    scratch=$(mktemp -d)
    if ! out=$(cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "$scratch" "corpus/$target" -- -seed="$FUZZ_SEED" -runs="$(fuzz_runs "$target")" 2>&1); then
        printf '%s\n' "$out" | grep -E "panicked|assertion|Test unit written|SUMMARY" | cut -c1-300
        echo "fuzz target $target failed" >&2
        exit 1
    fi
    printf '%s: %s\n' "$target" "$(printf '%s\n' "$out" | grep -E '^Done' | tail -n 1)"
    rm -rf "$scratch"
done

passed=$(grep -Eo 'test result: ok\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
if [ "$passed" -eq 0 ]; then
    echo "no tests ran" >&2
    exit 1
fi
printf '\nAll checks passed in %d:%02d.\n%s passed, 0 failed\n' $((SECONDS / 60)) $((SECONDS % 60)) "$passed"
