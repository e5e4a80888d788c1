#!/usr/bin/env bash
# The archive-fed standby, side by side with PostgreSQL 15, in one run: the
# same work on both (pgbench -i -s SCALE, a base backup, a standby started
# from it that follows the WAL archive, then CLIENTS clients running TXNS
# pgbench transactions each on the primary, everything archived, the
# primary stopped). Then the failover: the seconds from the promote command
# to the promoted standby committing a write, with every transaction of the
# primary there. The standbys may still be catching up when the primary
# stops: the measure includes whatever replay is left, on both.
#
# - ThunderDB: `[cluster] standby = true`, `thunderdb --restore-backup`,
#   `thunderdb promote`.
# - PostgreSQL: `pg_basebackup`, `standby.signal`, `restore_command = 'cp
#   …'` (the archive only, no streaming), `pg_ctl promote`.
#
#   benches/standby.sh                     the reported figures
#   SCALE=2 TXNS=500 benches/standby.sh    a quick look
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-10}
TXNS=${TXNS:-5000}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
NAME=standby-bench
source benches/lib.sh
TDB_STANDBY_PORT=$((TDB_PORT + 10)); TDB_STANDBY_HTTP=$((TDB_HTTP + 10)); PG_STANDBY_PORT=$((PG_PORT + 3))
STANDBY_PID=

build_thunderdb
TDB=target/release/thunderdb
start_tdb() { # config log -> pid in $!
  "$TDB" --config "$1" "${@:3}" 2>"$2" &
}
wait_log() { # log text
  for _ in $(seq 600); do grep -q "$2" "$1" && return; sleep 0.1; done
  echo "no \"$2\" in $1: $(tail -5 "$1")" >&2; exit 1
}
api() { curl -sf -X "$1" "http://127.0.0.1:$2$3" "${@:4}"; }

# ThunderDB: the primary, the backup, the standby, the work.
live="$WORK/tdb"; archive="$WORK/tdb-archive"; standby="$WORK/tdb-standby"; mkdir -p "$live" "$archive" "$standby"
printf 'pg_port = %s\nhttp_port = %s\ndata_dir = "%s/data"\nwal_dir = "%s/wal"\n[storage]\nwal_archive_enabled = true\nwal_archive_dir = "%s"\n' \
  "$TDB_PORT" "$TDB_HTTP" "$live" "$live" "$archive" >"$live/thunderdb.toml"
printf 'pg_port = %s\nhttp_port = %s\ndata_dir = "%s/data"\nwal_dir = "%s/wal"\n[storage]\nwal_archive_dir = "%s"\n[cluster]\nstandby = true\nnode_id = 2\n' \
  "$TDB_STANDBY_PORT" "$TDB_STANDBY_HTTP" "$standby" "$standby" "$archive" >"$standby/thunderdb.toml"
start_tdb "$live/thunderdb.toml" "$live/log"; TDB_PID=$!
wait_log "$live/log" "ThunderDB is up"
tdb=(pgbench -h 127.0.0.1 -p "$TDB_PORT" -U admin)
echo "thunderdb: pgbench -i -s $SCALE, backup, standby, $CLIENTS x $TXNS transactions..." >&2
"${tdb[@]}" -i -I dtgp -s "$SCALE" -q >/dev/null 2>&1
id=$(api POST "$TDB_HTTP" /admin/backup -d "{\"destination\": \"$WORK/tdb-backup\"}" | jq -r .backup_id)
while [ "$(api GET "$TDB_HTTP" "/admin/backup/status/$id" | jq -r .status)" = running ]; do sleep 0.2; done
start_tdb "$standby/thunderdb.toml" "$standby/log" --restore-backup "$WORK/tdb-backup"; STANDBY_PID=$!
wait_log "$standby/log" "as a standby"
"${tdb[@]}" -n -c "$CLIENTS" -j "$THREADS" -t "$TXNS" >"$WORK/tdb-bench.txt" 2>&1
expected=$(psql -X -A -t -h 127.0.0.1 -p "$TDB_PORT" -U admin -c "SELECT count(*) FROM pgbench_history")
api POST "$TDB_HTTP" /admin/checkpoint >/dev/null
while [ "$(api GET "$TDB_HTTP" /admin/wal/archive/status | jq -r .segments_pending)" != 0 ]; do sleep 0.1; done
kill "$TDB_PID"; wait "$TDB_PID" 2>/dev/null || true; TDB_PID=
lag=$(api GET "$TDB_STANDBY_HTTP" /admin/cluster/status | jq -r .standby.replay_lsn)
echo "thunderdb: primary stopped; the standby has replayed to $lag; promoting..." >&2
t0=$(now)
"$TDB" promote --config "$standby/thunderdb.toml" >"$WORK/promote.txt"
until psql -X -A -t -h 127.0.0.1 -p "$TDB_STANDBY_PORT" -U admin -c "CREATE TABLE after_failover (id INT PRIMARY KEY)" >/dev/null 2>&1; do sleep 0.02; done
tdb_secs=$(since "$t0")
found=$(psql -X -A -t -h 127.0.0.1 -p "$TDB_STANDBY_PORT" -U admin -c "SELECT count(*) FROM pgbench_history")
kill "$STANDBY_PID"; wait "$STANDBY_PID" 2>/dev/null || true; STANDBY_PID=
[ "$found" = "$expected" ] || { echo "the promoted standby has $found transactions, expected $expected" >&2; exit 1; }

# PostgreSQL: the same.
pg=(pgbench -h 127.0.0.1 -p "$PG_PORT" -U postgres)
pgarch="$WORK/pg-archive"
mkdir -p "$pgarch"; chown postgres "$pgarch"
start_new_postgres "$WORK/pg" "archive_mode = on
archive_command = 'cp %p $pgarch/%f'"
echo "postgresql: pgbench -i -s $SCALE, pg_basebackup, standby, $CLIENTS x $TXNS transactions..." >&2
"${pg[@]}" -i -I dtgp -s "$SCALE" -q postgres >/dev/null 2>&1
as_pg "$BIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PORT" -U postgres -D "$WORK/pg-standby" -c fast
as_pg touch "$WORK/pg-standby/standby.signal"
printf "port = %s\narchive_mode = off\nrestore_command = 'cp %s/%%f %%p'\nhot_standby = off\n" "$PG_STANDBY_PORT" "$pgarch" \
  | as_pg tee -a "$WORK/pg-standby/postgresql.conf" >/dev/null
as_pg "$BIN/pg_ctl" -D "$WORK/pg-standby" -l "$WORK/pg-standby.log" start >/dev/null
"${pg[@]}" -n -c "$CLIENTS" -j "$THREADS" -t "$TXNS" postgres >"$WORK/pg-bench.txt" 2>&1
pg_expected=$(psql -X -A -t -h 127.0.0.1 -p "$PG_PORT" -U postgres -c "SELECT count(*) FROM pgbench_history" postgres)
psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -c "SELECT pg_switch_wal()" postgres >/dev/null
while [ "$(find "$WORK/pg/pg_wal/archive_status" -name '*.ready' | wc -l)" != 0 ]; do sleep 0.1; done
as_pg "$BIN/pg_ctl" -D "$WORK/pg" -m fast stop >/dev/null
echo "postgresql: primary stopped; promoting..." >&2
t0=$(now)
as_pg "$BIN/pg_ctl" -D "$WORK/pg-standby" -w -t 3600 promote >/dev/null
until psql -X -A -t -h 127.0.0.1 -p "$PG_STANDBY_PORT" -U postgres -c "CREATE TABLE after_failover (id INT PRIMARY KEY)" postgres >/dev/null 2>&1; do sleep 0.02; done
pg_secs=$(since "$t0")
pg_found=$(psql -X -A -t -h 127.0.0.1 -p "$PG_STANDBY_PORT" -U postgres -c "SELECT count(*) FROM pgbench_history" postgres)
as_pg "$BIN/pg_ctl" -D "$WORK/pg-standby" -m fast stop >/dev/null
[ "$pg_found" = "$pg_expected" ] || { echo "postgresql's promoted standby has $pg_found, expected $pg_expected" >&2; exit 1; }

r() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
printf '\nFailover to an archive-fed standby: pgbench -i -s %s, a base backup, a standby, then %s x %s transactions, one run each\n\n' "$SCALE" "$CLIENTS" "$TXNS"
printf '| | ThunderDB | PostgreSQL 15 | ratio |\n|---|---:|---:|---:|\n'
printf '| promote to a committed write on the standby (s) | %s | %s | %s |\n' "$tdb_secs" "$pg_secs" "$(r "$tdb_secs" "$pg_secs")"
printf '| transactions on the promoted standby | %s | %s | |\n' "$found" "$pg_found"
echo
cat "$WORK/promote.txt"
