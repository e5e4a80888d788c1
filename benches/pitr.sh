#!/usr/bin/env bash
# Point-in-time recovery, side by side with PostgreSQL 15, in one run: the
# same work on both (pgbench -i -s SCALE, a base backup, then CLIENTS
# clients running TXNS pgbench transactions each, then ten more, archived),
# then a recovery of that backup plus the archive to a time between the
# main run and the ten (a time target is reached by the first commit after
# it, on both systems). Measured: the seconds from starting the recovery to a
# server that answers `SELECT 1`, not MB/s (which would reward a fat log).
#
# - ThunderDB: `POST /admin/backup`, `wal_archive_dir`, then
#   `thunderdb --restore-pitr TIME --restore-backup … --wal-archive-dir …`
#   and a normal start.
# - PostgreSQL: `pg_basebackup`, `archive_command = 'cp …'`, then archive
#   recovery (`restore_command = 'cp …'`, `recovery_target_time`,
#   `recovery_target_action = promote`, `hot_standby = off`, so that it
#   answers only once recovered).
#
# Then the time ThunderDB takes to refuse a target past a gap (one archived
# segment removed from the middle).
#
#   benches/pitr.sh                        the reported figures
#   SCALE=2 TXNS=500 benches/pitr.sh       a quick look
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-10}
TXNS=${TXNS:-20000}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
NAME=pitr-bench
source benches/lib.sh
mb() { du -sb "$1" | awk '{ printf "%.0f", $1 / 1048576 }'; }

build_thunderdb
TDB=target/release/thunderdb

# ThunderDB: the work.
live="$WORK/tdb"; archive="$WORK/tdb-archive"; mkdir -p "$live" "$archive"
printf 'pg_port = %s\nhttp_port = %s\ndata_dir = "%s/data"\nwal_dir = "%s/wal"\n[storage]\nwal_archive_enabled = true\nwal_archive_dir = "%s"\n' \
  "$TDB_PORT" "$TDB_HTTP" "$live" "$live" "$archive" >"$live/thunderdb.toml"
start_tdb() {
  "$TDB" --config "$1" 2>"$2" &
  TDB_PID=$!
  for _ in $(seq 600); do grep -q "ThunderDB is up" "$2" && return; sleep 0.1; done
  echo "thunderdb did not start: $(tail -5 "$2")" >&2; exit 1
}
start_tdb "$live/thunderdb.toml" "$live/log"
tdb=(pgbench -h 127.0.0.1 -p "$TDB_PORT" -U admin)
api() { curl -sf -X "$1" "http://127.0.0.1:$TDB_HTTP$2" "${@:3}"; }
echo "thunderdb: pgbench -i -s $SCALE, backup, $CLIENTS x $TXNS transactions..." >&2
"${tdb[@]}" -i -I dtgp -s "$SCALE" -q >/dev/null 2>&1
id=$(api POST /admin/backup -d "{\"destination\": \"$WORK/tdb-backup\"}" | jq -r .backup_id)
while [ "$(api GET "/admin/backup/status/$id" | jq -r .status)" = running ]; do sleep 0.2; done
"${tdb[@]}" -n -c "$CLIENTS" -j "$THREADS" -t "$TXNS" >"$WORK/tdb-bench.txt" 2>&1
expected=$(psql -X -A -t -h 127.0.0.1 -p "$TDB_PORT" -U admin -c "SELECT count(*) FROM pgbench_history")
# A time target is reached by the first commit after it: a few more.
sleep 1; target=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ); sleep 1
"${tdb[@]}" -n -c 1 -t 10 >/dev/null 2>&1
api POST /admin/checkpoint >/dev/null
while [ "$(api GET /admin/wal/archive/status | jq -r .segments_pending)" != 0 ]; do sleep 0.2; done
kill "$TDB_PID"; wait "$TDB_PID" 2>/dev/null || true; TDB_PID=
tdb_wal=$(mb "$archive")

# ThunderDB: the recovery, to a server that answers.
restored="$WORK/tdb-restored"; mkdir -p "$restored"
printf 'pg_port = %s\nhttp_port = %s\ndata_dir = "%s/data"\nwal_dir = "%s/wal"\n' \
  "$TDB_PORT" "$TDB_HTTP" "$restored" "$restored" >"$restored/thunderdb.toml"
echo "thunderdb: point-in-time recovery to $target..." >&2
sync # Both recoveries start with nothing dirty in the page cache.
t0=$(now)
"$TDB" --restore-pitr "$target" --restore-backup "$WORK/tdb-backup" --wal-archive-dir "$archive" \
  --config "$restored/thunderdb.toml" 2>"$restored/pitr.log"
[ -n "${VERBOSE:-}" ] && echo "pitr exited at $(date -u +%T.%N)" >&2
start_tdb "$restored/thunderdb.toml" "$restored/log"
until psql -X -A -t -h 127.0.0.1 -p "$TDB_PORT" -U admin -c "SELECT 1" >/dev/null 2>&1; do sleep 0.05; done
tdb_secs=$(since "$t0")
[ -n "${VERBOSE:-}" ] && cat "$restored/log" >&2
found=$(psql -X -A -t -h 127.0.0.1 -p "$TDB_PORT" -U admin -c "SELECT count(*) FROM pgbench_history")
kill "$TDB_PID"; wait "$TDB_PID" 2>/dev/null || true; TDB_PID=
[ "$found" = "$expected" ] || { echo "thunderdb recovered $found transactions, expected $expected" >&2; exit 1; }

# ThunderDB: time to refuse a target past a gap.
# The segment halfway between the backup's first and the archive's last
# (16 MiB segments: 256 per 4 GiB).
IFS=/ read -r hi lo < <(jq -r .wal_start_lsn "$WORK/tdb-backup/backup_manifest.json")
first=$(( 0x$hi * 256 + 0x$lo / 16777216 ))
segments=()
for path in $(find "$archive" -name '000000010*' ! -name '*.backup' | sort); do
  name=$(basename "$path")
  (( 0x${name:8:8} * 256 + 0x${name:16:8} >= first )) && segments+=("$path")
done
middle=${segments[$(( ${#segments[@]} / 2 ))]}
echo "segments: ${segments[*]##*/}; removing ${middle##*/}" >&2
rm "$middle"
gap="$WORK/tdb-gap"; mkdir -p "$gap"
sed "s|$restored|$gap|g" "$restored/thunderdb.toml" >"$gap/thunderdb.toml"
t0=$(now)
if "$TDB" --restore-pitr "$target" --restore-backup "$WORK/tdb-backup" --wal-archive-dir "$archive" \
  --config "$gap/thunderdb.toml" 2>"$gap/pitr.log"; then
  echo "thunderdb recovered past a gap" >&2; exit 1
fi
refusal_secs=$(since "$t0")
grep -q "has a gap" "$gap/pitr.log" || { echo "no gap named: $(tail -3 "$gap/pitr.log")" >&2; exit 1; }

# PostgreSQL: the same work.
pg=(pgbench -h 127.0.0.1 -p "$PG_PORT" -U postgres)
pgarch="$WORK/pg-archive"
mkdir -p "$WORK/pg" "$pgarch"; chown postgres "$WORK" "$WORK/pg" "$pgarch"
as_pg "$BIN/initdb" -D "$WORK/pg" -A trust >/dev/null
printf "port = %s\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\narchive_mode = on\narchive_command = 'cp %%p %s/%%f'\n" \
  "$PG_PORT" "$WORK" "$pgarch" >>"$WORK/pg/postgresql.conf"
as_pg "$BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w start >/dev/null
echo "postgresql: pgbench -i -s $SCALE, pg_basebackup, $CLIENTS x $TXNS transactions..." >&2
"${pg[@]}" -i -I dtgp -s "$SCALE" -q postgres >/dev/null 2>&1
as_pg "$BIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PORT" -U postgres -D "$WORK/pg-base" -c fast
"${pg[@]}" -n -c "$CLIENTS" -j "$THREADS" -t "$TXNS" postgres >"$WORK/pg-bench.txt" 2>&1
pg_expected=$(psql -X -A -t -h 127.0.0.1 -p "$PG_PORT" -U postgres -c "SELECT count(*) FROM pgbench_history" postgres)
sleep 1; pg_target=$(date -u +"%Y-%m-%d %H:%M:%S.%3N+00"); sleep 1
"${pg[@]}" -n -c 1 -t 10 postgres >/dev/null 2>&1
psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -c "SELECT pg_switch_wal()" postgres >/dev/null
while [ "$(find "$WORK/pg/pg_wal/archive_status" -name '*.ready' | wc -l)" != 0 ]; do sleep 0.2; done
as_pg "$BIN/pg_ctl" -D "$WORK/pg" -m fast stop >/dev/null
pg_wal=$(mb "$pgarch")

# PostgreSQL: archive recovery, to a server that answers.
as_pg cp -a "$WORK/pg-base" "$WORK/pg-restored"
as_pg touch "$WORK/pg-restored/recovery.signal"
printf "restore_command = 'cp %s/%%f %%p'\nrecovery_target_time = '%s'\nrecovery_target_action = promote\nhot_standby = off\narchive_mode = off\n" \
  "$pgarch" "$pg_target" | as_pg tee -a "$WORK/pg-restored/postgresql.conf" >/dev/null
echo "postgresql: archive recovery to $pg_target..." >&2
sync
t0=$(now)
as_pg "$BIN/pg_ctl" -D "$WORK/pg-restored" -l "$WORK/pg-restored.log" -t 3600 start >/dev/null
until psql -X -A -t -h 127.0.0.1 -p "$PG_PORT" -U postgres -c "SELECT 1" postgres >/dev/null 2>&1; do sleep 0.05; done
pg_secs=$(since "$t0")
pg_found=$(psql -X -A -t -h 127.0.0.1 -p "$PG_PORT" -U postgres -c "SELECT count(*) FROM pgbench_history" postgres)
as_pg "$BIN/pg_ctl" -D "$WORK/pg-restored" -m fast stop >/dev/null
[ "$pg_found" = "$pg_expected" ] || { echo "postgresql recovered $pg_found, expected $pg_expected" >&2; exit 1; }

r() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
printf '\nPoint-in-time recovery: pgbench -i -s %s, a base backup, then %s x %s transactions, one run each\n\n' "$SCALE" "$CLIENTS" "$TXNS"
printf '| | ThunderDB | PostgreSQL 15 | ratio |\n|---|---:|---:|---:|\n'
printf '| WAL archived, the load included (MB) | %s | %s | %s |\n' "$tdb_wal" "$pg_wal" "$(r "$tdb_wal" "$pg_wal")"
printf '| recovery to a server that answers (s) | %s | %s | %s |\n' "$tdb_secs" "$pg_secs" "$(r "$tdb_secs" "$pg_secs")"
printf '| transactions recovered | %s | %s | |\n' "$found" "$pg_found"
printf '| time to refuse a target past a gap (s) | %s | | |\n' "$refusal_secs"
