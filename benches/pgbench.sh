#!/usr/bin/env bash
# pgbench TPC-B-like (-n, scale 10, 8 clients, 2 threads, DURATION seconds)
# against ThunderDB and against a PostgreSQL 15 started here in a temp
# directory, one after the other, on the same disk, both with default
# durability (fsync on, synchronous_commit on). Each loads with
# `pgbench -i -I dtgp`, then checkpoints and syncs before its run. Prints
# tps and latency for each, the ratio, and ThunderDB's peak resident memory
# during the run.
#
#   benches/pgbench.sh                 60 s runs (the reported figures)
#   DURATION=10 benches/pgbench.sh     a quick look
#   SKIP_POSTGRES=1 benches/pgbench.sh ThunderDB only
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-60}
SCALE=${SCALE:-10}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
NAME=pgbench
source benches/lib.sh

# "tps latency_ms" from pgbench's report.
run_pgbench() {
  local out
  out=$("$@" -n -c "$CLIENTS" -j "$THREADS" -T "$DURATION" 2>&1)
  echo "$out" >"$WORK/last-run.txt"
  local tps lat
  tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p')
  lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
  echo "$tps $lat"
}

build_thunderdb
start_thunderdb "$WORK/tdb"
tdb=(pgbench -h 127.0.0.1 -p "$TDB_PORT" -U admin)
echo "thunderdb: pgbench -i -s $SCALE..." >&2
"${tdb[@]}" -i -I dtgp -s "$SCALE" -q >/dev/null 2>&1
# Both systems start the run from a checkpoint with the load on disk, so
# neither pays for writing back the other's (or its own) load mid-run.
checkpoint_thunderdb
sync
# Peak RSS while the run goes (VmHWM would include the load).
peak=0
( while kill -0 "$TDB_PID" 2>/dev/null; do
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$TDB_PID/status" 2>/dev/null || echo 0)
    [ "${rss:-0}" -gt "$peak" ] && peak=$rss && echo "$peak" >"$WORK/peak"
    sleep 0.5
  done ) &
sampler=$!
echo "thunderdb: ${DURATION}s run..." >&2
read -r tdb_tps tdb_lat < <(run_pgbench "${tdb[@]}")
kill "$sampler" 2>/dev/null || true
tdb_peak_mb=$(( $(cat "$WORK/peak" 2>/dev/null || echo 0) / 1024 ))
stop_thunderdb

if [ "${SKIP_POSTGRES:-0}" != 1 ]; then
  start_new_postgres "$WORK/pg" "fsync = on
synchronous_commit = on"
  pg=(pgbench -h 127.0.0.1 -p "$PG_PORT" -U postgres)
  echo "postgresql: pgbench -i -s $SCALE..." >&2
  "${pg[@]}" -i -I dtgp -s "$SCALE" -q postgres >/dev/null 2>&1
  checkpoint_postgres
  sync
  echo "postgresql: ${DURATION}s run..." >&2
  read -r pg_tps pg_lat < <(run_pgbench "${pg[@]}" postgres)
fi

printf '\npgbench TPC-B-like, scale %s, %s clients, %s threads, %ss, fsync on\n\n' "$SCALE" "$CLIENTS" "$THREADS" "$DURATION"
printf '| system | tps | latency avg (ms) |\n|---|---:|---:|\n'
printf '| ThunderDB | %.0f | %.2f |\n' "$tdb_tps" "$tdb_lat"
if [ -n "${pg_tps:-}" ]; then
  printf '| PostgreSQL 15 | %.0f | %.2f |\n' "$pg_tps" "$pg_lat"
  awk -v a="$tdb_tps" -v b="$pg_tps" 'BEGIN { printf "\nratio (ThunderDB / PostgreSQL): %.2fx\n", a / b }'
fi
printf 'ThunderDB peak RSS during the run: %s MB (buffer_pool_size 128 MB + 100 MB = 228 MB bound)\n' "$tdb_peak_mb"
