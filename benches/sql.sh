#!/usr/bin/env bash
# The SQL layer against PostgreSQL 15, on the same data, one system after
# the other on the same machine:
#
# 1. pgbench -S (select-only: a primary-key lookup per transaction), scale
#    10, CLIENTS clients, DURATION seconds;
# 2. a two-table equality join of ROWS x ROWS rows on a non-key column
#    (`SELECT count(*) FROM a JOIN b ON a.k = b.k`), best of 3 after a warm-up;
# 3. a point lookup by an indexed secondary column (`SELECT v FROM a WHERE
#    k = :k`, k random), pgbench with a custom script, DURATION seconds.
#
#   benches/sql.sh                   30 s runs, 100k-row tables (reported)
#   DURATION=5 ROWS=20000 benches/sql.sh   a quick look
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-30}
ROWS=${ROWS:-100000}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
NAME=sql-bench
source benches/lib.sh

tps_run() { # pgbench args...: tps
  local out
  out=$("$@" -n -c "$CLIENTS" -j "$THREADS" -T "$DURATION" 2>&1)
  echo "$out" >"$WORK/last-run.txt"
  echo "$out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p'
}

# Loads tables a and b (ROWS rows each, k a permutation of 1..ROWS) and
# indexes a.k, through psql on port $1 as user $2 into database $3.
load() {
  local q=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U "$2" -d "$3")
  "${q[@]}" -c "CREATE TABLE a (id INT PRIMARY KEY, k INT NOT NULL, v TEXT)" \
    -c "CREATE TABLE b (id INT PRIMARY KEY, k INT NOT NULL, w TEXT)"
  awk -v n="$ROWS" 'BEGIN { for (i = 1; i <= n; i++) printf "%d\t%d\tvalue %d\n", i, (i * 7919) % n + 1, i }' \
    | "${q[@]}" -c "COPY a FROM STDIN"
  awk -v n="$ROWS" 'BEGIN { for (i = 1; i <= n; i++) printf "%d\t%d\twide %d\n", i, (i * 104729) % n + 1, i }' \
    | "${q[@]}" -c "COPY b FROM STDIN"
  "${q[@]}" -c "CREATE INDEX a_k ON a (k)"
}

# Best of three timings (seconds) of the join, and its result, after one
# untimed run: the -S run before it left each system's cache full of
# pgbench's accounts, and the first join reads its tables back in.
join_time() {
  local best= count
  psql -X -qAt -h 127.0.0.1 -p "$1" -U "$2" -d "$3" -c "SELECT count(*) FROM a JOIN b ON a.k = b.k" >/dev/null
  for _ in 1 2 3; do
    local t0
    t0=$(now)
    count=$(psql -X -qAt -h 127.0.0.1 -p "$1" -U "$2" -d "$3" -c "SELECT count(*) FROM a JOIN b ON a.k = b.k")
    local t
    t=$(since "$t0")
    if [ -z "$best" ] || awk -v a="$t" -v b="$best" 'BEGIN { exit !(a < b) }'; then best=$t; fi
  done
  echo "$best $count"
}

printf '\\set k random(1, %s)\nSELECT v FROM a WHERE k = :k;\n' "$ROWS" >"$WORK/lookup.sql"

build_thunderdb
start_thunderdb "$WORK/tdb"
echo "thunderdb: loading..." >&2
pgbench -h 127.0.0.1 -p "$TDB_PORT" -U admin -i -I dtgp -s 10 -q >/dev/null 2>&1
load "$TDB_PORT" admin thunderdb
checkpoint_thunderdb
sync
echo "thunderdb: pgbench -S..." >&2
tdb_s=$(tps_run pgbench -h 127.0.0.1 -p "$TDB_PORT" -U admin -S)
echo "thunderdb: join..." >&2
read -r tdb_join tdb_count < <(join_time "$TDB_PORT" admin thunderdb)
echo "thunderdb: indexed lookups..." >&2
tdb_lookup=$(tps_run pgbench -h 127.0.0.1 -p "$TDB_PORT" -U admin -f "$WORK/lookup.sql")
stop_thunderdb

start_new_postgres "$WORK/pg" "fsync = on"
echo "postgresql: loading..." >&2
pgbench -h 127.0.0.1 -p "$PG_PORT" -U postgres -i -I dtgp -s 10 -q postgres >/dev/null 2>&1
load "$PG_PORT" postgres postgres
psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c "VACUUM ANALYZE"
checkpoint_postgres
sync
echo "postgresql: pgbench -S..." >&2
pg_s=$(tps_run pgbench -h 127.0.0.1 -p "$PG_PORT" -U postgres -S postgres)
echo "postgresql: join..." >&2
read -r pg_join pg_count < <(join_time "$PG_PORT" postgres postgres)
echo "postgresql: indexed lookups..." >&2
pg_lookup=$(tps_run pgbench -h 127.0.0.1 -p "$PG_PORT" -U postgres -f "$WORK/lookup.sql" postgres)

[ "$tdb_count" = "$pg_count" ] || { echo "the joins disagree: $tdb_count vs $pg_count rows" >&2; exit 1; }
printf '\nSQL, %s clients, %s s runs; join of %s x %s rows (%s matches)\n\n' "$CLIENTS" "$DURATION" "$ROWS" "$ROWS" "$tdb_count"
printf '| work | ThunderDB | PostgreSQL 15 | ratio |\n|---|---:|---:|---:|\n'
awk -v a="$tdb_s" -v b="$pg_s" 'BEGIN { printf "| pgbench -S (tps) | %.0f | %.0f | %.2fx |\n", a, b, a / b }'
awk -v a="$tdb_join" -v b="$pg_join" 'BEGIN { printf "| join, best of 3 (s) | %.2f | %.2f | %.2fx |\n", a, b, a / b }'
awk -v a="$tdb_lookup" -v b="$pg_lookup" 'BEGIN { printf "| indexed lookup by k (tps) | %.0f | %.0f | %.2fx |\n", a, b, a / b }'
