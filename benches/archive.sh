#!/usr/bin/env bash
# WAL archiving's cost, side by side with PostgreSQL 15, in one run: the
# same pgbench work (scale SCALE, CLIENTS clients, DURATION seconds) on a
# fresh database for each configuration:
#
# - ThunderDB with archiving off, into a directory (`wal_archive_dir`), and
#   through a command (`wal_archive_command = "cp %f DIR/%n"`);
# - PostgreSQL with `archive_mode = off`, and with
#   `archive_command = 'cp %p DIR/%f'`.
#
# Each database is loaded (`pgbench -i`), its archive allowed to catch up,
# and checkpointed before the timed run; during the run the archive's
# pending count is sampled every 0.5 s (ThunderDB: `segments_pending`;
# PostgreSQL: `.ready` files in pg_wal/archive_status).
#
#   benches/archive.sh                      the reported figures
#   SCALE=5 DURATION=10 benches/archive.sh  a quick look
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-10}
DURATION=${DURATION:-30}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
NAME=archive-bench
source benches/lib.sh

build_thunderdb
TDB=target/release/thunderdb
tdb=(pgbench -h 127.0.0.1 -p "$TDB_PORT" -U admin)
pending() { curl -sf "http://127.0.0.1:$TDB_HTTP/admin/wal/archive/status" | jq -r .segments_pending; }

# One ThunderDB run: NAME, then [storage] lines. Prints "tps max_pending".
tdb_run() {
  local name=$1 storage=$2 dir="$WORK/tdb-$1" max=0 p
  mkdir -p "$dir"
  printf 'pg_port = %s\nhttp_port = %s\ndata_dir = "%s/data"\nwal_dir = "%s/wal"\n[storage]\n%s\n' \
    "$TDB_PORT" "$TDB_HTTP" "$dir" "$dir" "$storage" >"$dir/thunderdb.toml"
  "$TDB" --config "$dir/thunderdb.toml" 2>"$dir/log" &
  TDB_PID=$!
  for _ in $(seq 100); do grep -q "ThunderDB is up" "$dir/log" && break; sleep 0.1; done
  echo "thunderdb ($name): pgbench -i -s $SCALE..." >&2
  "${tdb[@]}" -i -I dtgp -s "$SCALE" -q >/dev/null 2>&1
  curl -sf -X POST "http://127.0.0.1:$TDB_HTTP/admin/checkpoint" >/dev/null
  while [ "$(pending)" != 0 ]; do sleep 0.2; done
  echo "thunderdb ($name): pgbench -T $DURATION..." >&2
  "${tdb[@]}" -n -c "$CLIENTS" -j "$THREADS" -T "$DURATION" >"$dir/bench.txt" 2>&1 &
  local bench=$!
  while kill -0 "$bench" 2>/dev/null; do
    p=$(pending); [ "$p" -gt "$max" ] && max=$p; sleep 0.5
  done
  wait "$bench"
  kill "$TDB_PID"; wait "$TDB_PID" 2>/dev/null || true; TDB_PID=
  echo "$(tps_of "$dir/bench.txt") $max"
  rm -rf "$dir"
}

mkdir -p "$WORK/archive-dir" "$WORK/archive-cmd"
read -r tdb_off _ < <(tdb_run off "wal_archive_enabled = false")
read -r tdb_dir tdb_dir_max < <(tdb_run dir "wal_archive_enabled = true
wal_archive_dir = \"$WORK/archive-dir\"")
read -r tdb_cmd tdb_cmd_max < <(tdb_run cmd "wal_archive_enabled = true
wal_archive_command = \"cp %f $WORK/archive-cmd/%n\"")
tdb_archived=$(du -sb "$WORK/archive-cmd" | awk '{print $1}')
rm -rf "$WORK/archive-dir" "$WORK/archive-cmd"

pg=(pgbench -h 127.0.0.1 -p "$PG_PORT" -U postgres)
pg_pending() { find "$WORK/pg/pg_wal/archive_status" -name '*.ready' 2>/dev/null | wc -l; }
# One PostgreSQL run: NAME, then postgresql.conf lines. Prints "tps max_pending".
pg_run() {
  local name=$1 conf=$2 max=0 p
  rm -rf "$WORK/pg"; mkdir -p "$WORK/pg"; chown postgres "$WORK" "$WORK/pg"
  as_pg "$BIN/initdb" -D "$WORK/pg" -A trust >/dev/null
  printf "port = %s\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\n%s\n" \
    "$PG_PORT" "$WORK" "$conf" >>"$WORK/pg/postgresql.conf"
  as_pg "$BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w start >/dev/null
  echo "postgresql ($name): pgbench -i -s $SCALE..." >&2
  "${pg[@]}" -i -I dtgp -s "$SCALE" -q postgres >/dev/null 2>&1
  psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -c CHECKPOINT postgres
  while [ "$(pg_pending)" != 0 ]; do sleep 0.2; done
  echo "postgresql ($name): pgbench -T $DURATION..." >&2
  "${pg[@]}" -n -c "$CLIENTS" -j "$THREADS" -T "$DURATION" postgres >"$WORK/pg-bench.txt" 2>&1 &
  local bench=$!
  while kill -0 "$bench" 2>/dev/null; do
    p=$(pg_pending); [ "$p" -gt "$max" ] && max=$p; sleep 0.5
  done
  wait "$bench"
  as_pg "$BIN/pg_ctl" -D "$WORK/pg" -m fast stop >/dev/null
  echo "$(tps_of "$WORK/pg-bench.txt") $max"
}
mkdir -p "$WORK/pg-archive"; chown postgres "$WORK/pg-archive"
read -r pg_off _ < <(pg_run off "archive_mode = off")
read -r pg_cp pg_cp_max < <(pg_run cp "archive_mode = on
archive_command = 'cp %p $WORK/pg-archive/%f'")

r() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
printf '\nWAL archiving, pgbench scale %s, %s clients, %s s per run, one run each\n\n' "$SCALE" "$CLIENTS" "$DURATION"
printf '| configuration | ThunderDB tps | kept | max pending | PostgreSQL 15 tps | kept | max pending |\n|---|---:|---:|---:|---:|---:|---:|\n'
printf '| archiving off | %.0f | 1.000 | | %.0f | 1.000 | |\n' "$tdb_off" "$pg_off"
printf '| directory (`wal_archive_dir`) | %.0f | %s | %s | | | |\n' "$tdb_dir" "$(r "$tdb_dir" "$tdb_off")" "$tdb_dir_max"
printf '| command (`cp`) | %.0f | %s | %s | %.0f | %s | %s |\n' \
  "$tdb_cmd" "$(r "$tdb_cmd" "$tdb_off")" "$tdb_cmd_max" "$pg_cp" "$(r "$pg_cp" "$pg_off")" "$pg_cp_max"
printf '\nThunderDB archived %s MB in its command run.\n' "$(awk -v b="$tdb_archived" 'BEGIN { printf "%.0f", b / 1048576 }')"
