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
NAME=wal-volume
source benches/lib.sh

# An LSN "X/Y" as a byte position.
lsn_bytes() { local hi=${1%/*} lo=${1#*/}; echo $(( (16#$hi << 32) | 16#$lo )); }
distance() { echo $(( $(lsn_bytes "$2") - $(lsn_bytes "$1") )); }
mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
per_txn() { awk -v b="$1" -v n="$2" 'BEGIN { printf "%.2f", b / n / 1024 }'; }

# "copy_bytes key_bytes run_bytes" for ThunderDB with wal_compression=$1:
# the load's COPY, its ADD PRIMARY KEY, and the transactions.
thunderdb_volume() {
  local dir="$WORK/tdb-$1" a b c d
  start_thunderdb "$dir" THUNDERDB_WAL_COMPRESSION="$1" THUNDERDB_CHECKPOINT_INTERVAL=30s
  local lsn=(curl -sf -X POST "http://127.0.0.1:$TDB_HTTP/admin/checkpoint")
  local tdb=(pgbench -h 127.0.0.1 -p "$TDB_PORT" -U admin)
  a=$("${lsn[@]}" | jq -r .lsn)
  echo "thunderdb ($1): pgbench -i -s $SCALE..." >&2
  "${tdb[@]}" -i -I dtg -s "$SCALE" -q >/dev/null 2>&1
  b=$("${lsn[@]}" | jq -r .lsn)
  "${tdb[@]}" -i -I p -s "$SCALE" -q >/dev/null 2>&1
  c=$("${lsn[@]}" | jq -r .lsn)
  echo "thunderdb ($1): $CLIENTS x $TXNS transactions..." >&2
  "${tdb[@]}" -n -c "$CLIENTS" -j "$THREADS" -t "$TXNS" >"$dir.run" 2>&1
  d=$("${lsn[@]}" | jq -r .lsn)
  stop_thunderdb
  echo "$(distance "$a" "$b") $(distance "$b" "$c") $(distance "$c" "$d")"
}

# "copy_bytes key_bytes run_bytes" for PostgreSQL with wal_compression=$1.
postgres_volume() {
  local a b c d
  start_new_postgres "$WORK/pg" "checkpoint_timeout = 30s
max_wal_size = 512MB
wal_compression = $1"
  local lsn=(psql -X -qAt -h 127.0.0.1 -p "$PG_PORT" -U postgres postgres -c 'CHECKPOINT' -c 'SELECT pg_current_wal_insert_lsn()')
  local pg=(pgbench -h 127.0.0.1 -p "$PG_PORT" -U postgres)
  a=$("${lsn[@]}")
  echo "postgresql ($1): pgbench -i -s $SCALE..." >&2
  "${pg[@]}" -i -I dtg -s "$SCALE" -q postgres >/dev/null 2>&1
  b=$("${lsn[@]}")
  "${pg[@]}" -i -I p -s "$SCALE" -q postgres >/dev/null 2>&1
  c=$("${lsn[@]}")
  echo "postgresql ($1): $CLIENTS x $TXNS transactions..." >&2
  "${pg[@]}" -n -c "$CLIENTS" -j "$THREADS" -t "$TXNS" postgres >"$WORK/pg-$1.run" 2>&1
  d=$("${lsn[@]}")
  stop_postgres fast
  echo "$(distance "$a" "$b") $(distance "$b" "$c") $(distance "$c" "$d")"
}

build_thunderdb
read -r tz_copy tz_key tz_run < <(thunderdb_volume zstd)
read -r to_copy to_key to_run < <(thunderdb_volume off)
read -r po_copy po_key po_run < <(postgres_volume off)
read -r pz_copy pz_key pz_run < <(postgres_volume zstd)
txns=$(( CLIENTS * TXNS ))
tz_load=$((tz_copy + tz_key)) pz_load=$((pz_copy + pz_key))

printf '\nWAL volume: pgbench -i -s %s, then %s TPC-B-like transactions (%s clients), checkpoints every 30 s\n\n' \
  "$SCALE" "$txns" "$CLIENTS"
printf '| system | load (MB): COPY + ADD PRIMARY KEY | per transaction (KB) |\n|---|---:|---:|\n'
row() { printf '| %s | %s: %s + %s | %s |\n' "$1" "$(mb $(($2 + $3)))" "$(mb "$2")" "$(mb "$3")" "$(per_txn "$4" "$txns")"; }
row "ThunderDB, wal_compression = zstd" "$tz_copy" "$tz_key" "$tz_run"
row "ThunderDB, wal_compression = off" "$to_copy" "$to_key" "$to_run"
row "PostgreSQL 15, wal_compression = off" "$po_copy" "$po_key" "$po_run"
row "PostgreSQL 15, wal_compression = zstd" "$pz_copy" "$pz_key" "$pz_run"
awk -v a="$tz_load" -v b="$pz_load" -v c="$tz_run" -v d="$pz_run" 'BEGIN {
  printf "\nThunderDB (zstd) / PostgreSQL (zstd): load %.2fx, per transaction %.2fx\n", a / b, c / d }'
