#!/usr/bin/env bash
# Soak: runs many simulator seeds across every workload, in chunks, with
# progress, then a summary of seeds per second and faults injected by kind.
# Far past what CI runs; a developer runs it before a release or after a
# change to the engine's durability paths.
#
#   scripts/soak.sh                       125,000 seeds: 60,000 WAL, 40,000 db, 20,000 cluster, 5,000 replica
#   WAL_SEEDS=200000 DB_SEEDS=100000 CLUSTER_SEEDS=50000 REPLICA_SEEDS=20000 scripts/soak.sh
#   START=5000000 scripts/soak.sh         a fresh stretch of seeds
#
# Seeds run once each (no determinism rerun: CI checks that on its range).
# A failure prints the seed and its replay command; the script goes on to
# the end and exits non-zero if any seed failed.
set -euo pipefail
cd "$(dirname "$0")/.."

WAL_SEEDS=${WAL_SEEDS:-60000}
DB_SEEDS=${DB_SEEDS:-40000}
CLUSTER_SEEDS=${CLUSTER_SEEDS:-20000}
REPLICA_SEEDS=${REPLICA_SEEDS:-5000}
START=${START:-1000000}
CHUNK=${CHUNK:-5000}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

cargo sim -- --seed 0 >/dev/null # build first, so the timings below are runs only

run_workload() {
    local workload=$1 total=$2 from=$START done=0
    while [ "$done" -lt "$total" ]; do
        local count=$((total - done < CHUNK ? total - done : CHUNK))
        local to=$((from + count))
        local log="$out/$workload-$from.log"
        target/sim/release/thunderdb-sim --workload "$workload" --seeds "$from..$to" --no-determinism-check >"$log" 2>/dev/null || true
        grep -E '^(FAILED|replay):' "$log" || true
        done=$((done + count))
        from=$to
        printf '%s: %d/%d seeds, %s\n' "$workload" "$done" "$total" "$(grep -E '^seeds per second' "$log")"
    done
}

started=$(date +%s)
run_workload wal "$WAL_SEEDS"
run_workload db "$DB_SEEDS"
run_workload cluster "$CLUSTER_SEEDS"
run_workload replica "$REPLICA_SEEDS"
elapsed=$(($(date +%s) - started))

# Sum the chunks' summaries: seeds, failures, crashes, recoveries,
# corruptions detected, and faults by kind.
cat "$out"/*.log | awk -v elapsed="$elapsed" '
    /^seeds run:/ { gsub(",", ""); seeds += $3; failures += $5 }
    /^crashes:/ { gsub(",", ""); crashes += $2; recoveries += $4; corruptions += $NF }
    /^faults injected:/ {
        for (i = 3; i <= NF; i++) { split($i, kv, "="); faults[kv[1]] += kv[2]; if (!(kv[1] in order)) { order[kv[1]] = ++n; names[n] = kv[1] } }
    }
    END {
        printf "\nsoak: %d seeds, %d failed, in %d s (%.1f seeds/s)\n", seeds, failures, elapsed, seeds / (elapsed > 0 ? elapsed : 1)
        printf "crashes: %d, recoveries: %d, corruptions detected (injected damage reported): %d\n", crashes, recoveries, corruptions
        printf "faults injected by kind:\n"
        for (i = 1; i <= n; i++) printf "  %-20s %d\n", names[i], faults[names[i]]
    }'
if grep -qh '^FAILED' "$out"/*.log; then
    echo "soak: failures above; each line gives its replay command" >&2
    exit 1
fi
