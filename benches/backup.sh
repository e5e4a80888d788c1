#!/usr/bin/env bash
# Online backup, side by side with PostgreSQL 15, on the same data
# (pgbench scale SCALE, default 50, about 750 MB), on the same disk, in one
# run. For each system, after `pgbench -i -I dtgp` and a checkpoint:
#
# - `cp -r` of the data (and WAL) directories plus `sync`: the floor;
# - ThunderDB's `POST /admin/backup` (include_wal, uncompressed, then
#   compressed), timed until `completed`, and PostgreSQL's
#   `pg_basebackup -X stream -Fp` (its default checksums), each plus `sync`;
# - `thunderdb --verify-backup` (checksums and the WAL replay) against
#   `pg_verifybackup`;
# - pgbench tps (8 clients) with backups running back to back for the
#   whole window, against the mean of a run without one before it and one
#   after it (this machine's tps drifts by 10% from run to run).
#
#   benches/backup.sh                 the reported figures
#   SCALE=10 DURATION=10 benches/backup.sh   a quick look
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-50}
DURATION=${DURATION:-30}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
NAME=backup-bench
source benches/lib.sh

build_thunderdb
TDB=target/release/thunderdb
mkdir -p "$WORK/tdb"
THUNDERDB_PG_PORT=$TDB_PORT THUNDERDB_HTTP_PORT=$TDB_HTTP \
  THUNDERDB_DATA_DIR="$WORK/tdb/data" THUNDERDB_WAL_DIR="$WORK/tdb/wal" \
  "$TDB" 2>"$WORK/tdb.log" &
TDB_PID=$!
for _ in $(seq 100); do grep -q "ThunderDB is up" "$WORK/tdb.log" && break; sleep 0.1; done
tdb=(pgbench -h 127.0.0.1 -p "$TDB_PORT" -U admin)
echo "thunderdb: pgbench -i -s $SCALE..." >&2
"${tdb[@]}" -i -I dtgp -s "$SCALE" -q >/dev/null 2>&1
curl -sf -X POST "http://127.0.0.1:$TDB_HTTP/admin/checkpoint" >/dev/null
sync
tdb_bytes=$(du -sb "$WORK/tdb/data" "$WORK/tdb/wal" | awk '{s += $1} END {print s}')

# One backup through the API, timed to `completed` plus sync, its status
# polled every $3 seconds (default 0.05, for the timing). Under load poll
# once a second: each poll is a curl and a jq process, and at 20 a second
# they alone cost pgbench about a fifth of its tps on two cores (measured:
# 3,185 tps polling against 3,955 not). The seed page's cron script polls
# every 10 s.
tdb_backup() { # dest compress [poll seconds]
  local start id status
  start=$(now)
  id=$(curl -sf -X POST "http://127.0.0.1:$TDB_HTTP/admin/backup" -H 'Content-Type: application/json' \
    -d "{\"destination\": \"$1\", \"include_wal\": true, \"compress\": $2}" | jq -r .backup_id)
  while status=$(curl -sf "http://127.0.0.1:$TDB_HTTP/admin/backup/status/$id" | jq -r .status); [ "$status" = running ]; do
    sleep "${3:-0.05}"
  done
  [ "$status" = completed ] || { echo "backup $id: $status" >&2; exit 1; }
  sync
  since "$start"
}

echo "thunderdb: cp -r + sync..." >&2
mkdir -p "$WORK/cp-tdb"
start=$(now); cp -r "$WORK/tdb/data" "$WORK/tdb/wal" "$WORK/cp-tdb/"; sync; tdb_cp=$(since "$start")
rm -rf "$WORK/cp-tdb"
echo "thunderdb: backups..." >&2
tdb_plain=$(tdb_backup "$WORK/b-plain" false)
tdb_zstd=$(tdb_backup "$WORK/b-zstd" true)
stored=$(jq '[.files[].stored_size] | add' "$WORK/b-zstd/backup_manifest.json")
original=$(jq '[.files[].size] | add' "$WORK/b-zstd/backup_manifest.json")
echo "thunderdb: verify..." >&2
start=$(now); "$TDB" --verify-backup "$WORK/b-plain" >"$WORK/verify.txt"; tdb_verify=$(since "$start")
start=$(now); "$TDB" --verify-backup "$WORK/b-zstd" >/dev/null; tdb_verify_zstd=$(since "$start")
rm -rf "$WORK/b-plain" "$WORK/b-zstd"

echo "thunderdb: pgbench without a backup, with backups back to back, and without again..." >&2
"${tdb[@]}" -n -c "$CLIENTS" -j "$THREADS" -T "$DURATION" >"$WORK/tdb-quiet.txt" 2>&1
"${tdb[@]}" -n -c "$CLIENTS" -j "$THREADS" -T "$DURATION" >"$WORK/tdb-busy.txt" 2>&1 &
bench=$!
n=0
while kill -0 "$bench" 2>/dev/null; do
  n=$((n + 1)); tdb_backup "$WORK/busy-$n" false 1 >/dev/null; rm -rf "$WORK/busy-$n"
done
wait "$bench"
tdb_busy_backups=$n
"${tdb[@]}" -n -c "$CLIENTS" -j "$THREADS" -T "$DURATION" >"$WORK/tdb-quiet2.txt" 2>&1
kill "$TDB_PID"; wait "$TDB_PID" 2>/dev/null || true; TDB_PID=

mkdir -p "$WORK/pg"; chown postgres "$WORK" "$WORK/pg"
as_pg "$BIN/initdb" -D "$WORK/pg" -A trust >/dev/null
cat >>"$WORK/pg/postgresql.conf" <<CONF
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
CONF
as_pg "$BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w start >/dev/null
pg=(pgbench -h 127.0.0.1 -p "$PG_PORT" -U postgres)
echo "postgresql: pgbench -i -s $SCALE..." >&2
"${pg[@]}" -i -I dtgp -s "$SCALE" -q postgres >/dev/null 2>&1
psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -c CHECKPOINT postgres
sync
pg_bytes=$(du -sb "$WORK/pg" | awk '{print $1}')
echo "postgresql: cp -r + sync, pg_basebackup, pg_verifybackup..." >&2
start=$(now); cp -r "$WORK/pg" "$WORK/cp-pg"; sync; pg_cp=$(since "$start"); rm -rf "$WORK/cp-pg"
start=$(now); as_pg "$BIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PORT" -U postgres -D "$WORK/pgb" -X stream -Fp -c fast; sync
pg_base=$(since "$start")
start=$(now); as_pg "$BIN/pg_verifybackup" "$WORK/pgb" >/dev/null; pg_verify=$(since "$start")
rm -rf "$WORK/pgb"
echo "postgresql: pgbench without a backup, with backups back to back, and without again..." >&2
"${pg[@]}" -n -c "$CLIENTS" -j "$THREADS" -T "$DURATION" postgres >"$WORK/pg-quiet.txt" 2>&1
"${pg[@]}" -n -c "$CLIENTS" -j "$THREADS" -T "$DURATION" postgres >"$WORK/pg-busy.txt" 2>&1 &
bench=$!
n=0
while kill -0 "$bench" 2>/dev/null; do
  n=$((n + 1)); as_pg "$BIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PORT" -U postgres -D "$WORK/pgb-$n" -X stream -Fp -c fast; rm -rf "$WORK/pgb-$n"
done
wait "$bench"
pg_busy_backups=$n
"${pg[@]}" -n -c "$CLIENTS" -j "$THREADS" -T "$DURATION" postgres >"$WORK/pg-quiet2.txt" 2>&1

r() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
mb() { awk -v b="$1" 'BEGIN { printf "%.0f MB", b / 1048576 }'; }
printf '\nOnline backup, pgbench scale %s (ThunderDB %s on disk, PostgreSQL %s), one run\n\n' "$SCALE" "$(mb "$tdb_bytes")" "$(mb "$pg_bytes")"
printf '| measure | ThunderDB | PostgreSQL 15 | ratio |\n|---|---:|---:|---|\n'
printf '| `cp -r` + `sync` of the directories | %s s | %s s | |\n' "$tdb_cp" "$pg_cp"
printf '| online backup + `sync` (ThunderDB: API, uncompressed; PostgreSQL: pg_basebackup) | %s s | %s s | %sx PostgreSQL'"'"'s time; speed %sx `cp`+`sync` (target >= 0.9) |\n' \
  "$tdb_plain" "$pg_base" "$(r "$tdb_plain" "$pg_base")" "$(r "$tdb_cp" "$tdb_plain")"
printf '| online backup, `compress: true` | %s s | | %sx the uncompressed backup; stored %s of %s (%sx smaller) |\n' \
  "$tdb_zstd" "$(r "$tdb_zstd" "$tdb_plain")" "$(mb "$stored")" "$(mb "$original")" "$(r "$original" "$stored")"
printf '| verify (ThunderDB: checksums + WAL replay + tree checks; PostgreSQL: pg_verifybackup) | %s s | %s s | %sx (target <= 2) |\n' \
  "$tdb_verify" "$pg_verify" "$(r "$tdb_verify" "$pg_verify")"
printf '| verify a compressed backup | %s s | | |\n' "$tdb_verify_zstd"
mean() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (a + b) / 2 }'; }
tq1=$(tps_of "$WORK/tdb-quiet.txt"); tq2=$(tps_of "$WORK/tdb-quiet2.txt"); tq=$(mean "$tq1" "$tq2")
pq1=$(tps_of "$WORK/pg-quiet.txt"); pq2=$(tps_of "$WORK/pg-quiet2.txt"); pq=$(mean "$pq1" "$pq2")
tb=$(tps_of "$WORK/tdb-busy.txt"); pb=$(tps_of "$WORK/pg-busy.txt")
printf '| pgbench tps, no backup (mean of before and after: %.0f and %.0f; %.0f and %.0f) | %.0f | %.0f | |\n' \
  "$tq1" "$tq2" "$pq1" "$pq2" "$tq" "$pq"
printf '| pgbench tps, backups back to back (%s and %s of them) | %.0f | %.0f | ThunderDB keeps %s, PostgreSQL %s (target >= 0.90) |\n' \
  "$tdb_busy_backups" "$pg_busy_backups" "$tb" "$pb" "$(r "$tb" "$tq")" "$(r "$pb" "$pq")"
echo
cat "$WORK/verify.txt"
