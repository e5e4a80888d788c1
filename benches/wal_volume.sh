#!/usr/bin/env bash
# WAL volume, side by side with PostgreSQL 15, in one run: the same work on
# every system (`pgbench -i -I dtgp -s SCALE`, then a checkpoint, then
# CLIENTS clients running TXNS TPC-B-like transactions each), with
# checkpoints every 30 s (the seed's `checkpoint_interval`; PostgreSQL's
# `checkpoint_timeout`). Measured as the distance the log's insert position
# moved, so both count logged bytes, not segment files:
#
# - ThunderDB: the LSN that `POST /admin/checkpoint` answers, before and
#   after each phase, with `wal_compression = "zstd"` (the default) and
#   `"off"`;
# - PostgreSQL: `pg_current_wal_insert_lsn()`, with `wal_compression = off`
#   (its default) and `zstd`.
#
# Both phases end in a checkpoint, so each total includes the one checkpoint
# record that closes it.
#
#   benches/wal_volume.sh                      the reported figures
#   SCALE=2 TXNS=500 benches/wal_volume.sh     a quick look
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-10}
TXNS=${TXNS:-2000}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
BIN=/usr/lib/postgresql/15/bin
PG_PORT=${PG_BENCH_PORT:-55480}
TDB_PORT=${TDB_BENCH_PORT:-55481}
TDB_HTTP=${TDB_BENCH_HTTP_PORT:-55482}
WORK=$(mktemp -d "${THUNDERDB_BENCH_DIR:-/tmp}/wal-volume.XXXXXX")
chmod 755 "$WORK"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
TDB_PID=
cleanup() {
  [ -n "$TDB_PID" ] && kill "$TDB_PID" 2>/dev/null && wait "$TDB_PID" 2>/dev/null || true
  as_pg "$BIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# An LSN "X/Y" as a byte position.
lsn_bytes() { local hi=${1%/*} lo=${1#*/}; echo $(( (16#$hi << 32) | 16#$lo )); }
mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
per_txn() { awk -v b="$1" -v n="$2" 'BEGIN { printf "%.2f", b / n / 1024 }'; }

# "load_bytes run_bytes" for ThunderDB with wal_compression=$1.
thunderdb_volume() {
  local dir="$WORK/tdb-$1" a b c
  mkdir -p "$dir"
  THUNDERDB_PG_PORT=$TDB_PORT THUNDERDB_HTTP_PORT=$TDB_HTTP THUNDERDB_WAL_COMPRESSION=$1 \
    THUNDERDB_CHECKPOINT_INTERVAL=30s THUNDERDB_DATA_DIR="$dir/data" THUNDERDB_WAL_DIR="$dir/wal" \
    target/release/thunderdb 2>"$dir.log" &
  TDB_PID=$!
  for _ in $(seq 100); do grep -q "ThunderDB is up" "$dir.log" && break; sleep 0.1; done
  local checkpoint=(curl -sf -X POST "http://127.0.0.1:$TDB_HTTP/admin/checkpoint")
  local tdb=(pgbench -h 127.0.0.1 -p "$TDB_PORT" -U admin)
  a=$("${checkpoint[@]}" | jq -r .lsn)
  echo "thunderdb ($1): pgbench -i -s $SCALE..." >&2
  "${tdb[@]}" -i -I dtgp -s "$SCALE" -q >/dev/null 2>&1
  b=$("${checkpoint[@]}" | jq -r .lsn)
  echo "thunderdb ($1): $CLIENTS x $TXNS transactions..." >&2
  "${tdb[@]}" -n -c "$CLIENTS" -j "$THREADS" -t "$TXNS" >"$dir.run" 2>&1
  c=$("${checkpoint[@]}" | jq -r .lsn)
  kill "$TDB_PID"; wait "$TDB_PID" 2>/dev/null || true; TDB_PID=
  echo "$(( $(lsn_bytes "$b") - $(lsn_bytes "$a") )) $(( $(lsn_bytes "$c") - $(lsn_bytes "$b") ))"
}

# "load_bytes run_bytes" for PostgreSQL with wal_compression=$1.
postgres_volume() {
  local dir="$WORK/pg" a b c
  as_pg "$BIN/pg_ctl" -D "$dir" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$dir"; mkdir -p "$dir"; chown postgres "$WORK" "$dir"
  as_pg "$BIN/initdb" -D "$dir" -A trust >/dev/null
  cat >>"$dir/postgresql.conf" <<CONF
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
checkpoint_timeout = 30s
max_wal_size = 512MB
wal_compression = $1
CONF
  as_pg "$BIN/pg_ctl" -D "$dir" -l "$WORK/pg-$1.log" -w start >/dev/null
  local sql=(psql -X -qAt -h 127.0.0.1 -p "$PG_PORT" -U postgres postgres)
  local pg=(pgbench -h 127.0.0.1 -p "$PG_PORT" -U postgres)
  a=$("${sql[@]}" -c 'CHECKPOINT' -c 'SELECT pg_current_wal_insert_lsn()')
  echo "postgresql ($1): pgbench -i -s $SCALE..." >&2
  "${pg[@]}" -i -I dtgp -s "$SCALE" -q postgres >/dev/null 2>&1
  b=$("${sql[@]}" -c 'CHECKPOINT' -c 'SELECT pg_current_wal_insert_lsn()')
  echo "postgresql ($1): $CLIENTS x $TXNS transactions..." >&2
  "${pg[@]}" -n -c "$CLIENTS" -j "$THREADS" -t "$TXNS" postgres >"$WORK/pg-$1.run" 2>&1
  c=$("${sql[@]}" -c 'CHECKPOINT' -c 'SELECT pg_current_wal_insert_lsn()')
  as_pg "$BIN/pg_ctl" -D "$dir" -m fast stop >/dev/null
  echo "$(( $(lsn_bytes "$b") - $(lsn_bytes "$a") )) $(( $(lsn_bytes "$c") - $(lsn_bytes "$b") ))"
}

echo "building thunderdb (release)..." >&2
cargo build --release --quiet --bin thunderdb
read -r tz_load tz_run < <(thunderdb_volume zstd)
read -r to_load to_run < <(thunderdb_volume off)
read -r po_load po_run < <(postgres_volume off)
read -r pz_load pz_run < <(postgres_volume zstd)
txns=$(( CLIENTS * TXNS ))

printf '\nWAL volume: pgbench -i -s %s, then %s TPC-B-like transactions (%s clients), checkpoints every 30 s\n\n' \
  "$SCALE" "$txns" "$CLIENTS"
printf '| system | load (MB) | per transaction (KB) |\n|---|---:|---:|\n'
printf '| ThunderDB, wal_compression = zstd | %s | %s |\n' "$(mb "$tz_load")" "$(per_txn "$tz_run" "$txns")"
printf '| ThunderDB, wal_compression = off | %s | %s |\n' "$(mb "$to_load")" "$(per_txn "$to_run" "$txns")"
printf '| PostgreSQL 15, wal_compression = off | %s | %s |\n' "$(mb "$po_load")" "$(per_txn "$po_run" "$txns")"
printf '| PostgreSQL 15, wal_compression = zstd | %s | %s |\n' "$(mb "$pz_load")" "$(per_txn "$pz_run" "$txns")"
awk -v a="$tz_load" -v b="$pz_load" -v c="$tz_run" -v d="$pz_run" 'BEGIN {
  printf "\nThunderDB (zstd) / PostgreSQL (zstd): load %.2fx, per transaction %.2fx\n", a / b, c / d }'
