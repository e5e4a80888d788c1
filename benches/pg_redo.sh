#!/usr/bin/env bash
# PostgreSQL 15's crash-recovery redo rate on this machine, for comparison
# with ThunderDB's (benches/recovery.rs runs this in the same run).
#
# Starts a throwaway cluster in a temp dir (as the `postgres` user: the server
# refuses root), loads pgbench at scale 10, checkpoints, runs pgbench until
# WAL_MB of WAL has been written since, kills the server (`-m immediate`),
# restarts it and reads the redo span and elapsed time from its log.
# Prints one line: `<redo bytes> <redo seconds> <redo start LSN> <redo end LSN>`.
set -euo pipefail
WAL_MB=${WAL_MB:-512}
BIN=/usr/lib/postgresql/15/bin
PORT=${PG_BENCH_PORT:-55439}
DIR=$(mktemp -d "${THUNDERDB_BENCH_DIR:-/tmp}/pg-redo.XXXXXX")
chmod 755 "$DIR"
chown postgres "$DIR"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  as_pg "$BIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$DIR"
}
trap cleanup EXIT
psql_() { as_pg "$BIN/psql" -h "$DIR" -p "$PORT" -X -Atq -d postgres -c "$1"; }

as_pg "$BIN/initdb" -D "$DIR/data" -A trust >/dev/null
cat >>"$DIR/data/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$DIR'
shared_buffers = 128MB
max_wal_size = 8GB
checkpoint_timeout = 1h
fsync = on
synchronous_commit = on
full_page_writes = on
CONF
as_pg "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w start >/dev/null
as_pg "$BIN/pgbench" -h "$DIR" -p "$PORT" -i -q -s 10 postgres >/dev/null 2>&1
psql_ "CHECKPOINT"
start=$(psql_ "SELECT pg_current_wal_lsn()")
while :; do
  as_pg "$BIN/pgbench" -h "$DIR" -p "$PORT" -n -c 8 -j 2 -T 5 postgres >/dev/null 2>&1
  written=$(psql_ "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$start')")
  [ "${written%.*}" -ge $((WAL_MB * 1024 * 1024)) ] && break
done
as_pg "$BIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null
as_pg "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/recovery.log" -w start >/dev/null
redo_start=$(grep -o 'redo starts at [0-9A-F/]*' "$DIR/recovery.log" | awk '{print $4}')
done_line=$(grep 'redo done at' "$DIR/recovery.log")
redo_end=$(echo "$done_line" | grep -o 'redo done at [0-9A-F/]*' | awk '{print $4}')
elapsed=$(echo "$done_line" | grep -o 'elapsed: [0-9.]*' | awk '{print $2}')
bytes=$(psql_ "SELECT pg_wal_lsn_diff('$redo_end', '$redo_start')")
echo "${bytes%.*} $elapsed $redo_start $redo_end"
