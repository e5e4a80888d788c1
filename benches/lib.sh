# Shared by the shell benchmarks that run ThunderDB and PostgreSQL 15 side
# by side: a scratch directory removed on exit, and starting and stopping
# each server. Source it after setting NAME (the scratch directory's prefix).
#
#   TDB_PORT, TDB_HTTP   ThunderDB's ports (defaults below)
#   PG_PORT              PostgreSQL's port
#   THUNDERDB_BENCH_DIR  where the scratch directory goes (default /tmp)
#   KEEP=1               keep the scratch directory after the run
BIN=/usr/lib/postgresql/15/bin
# Below the kernel's ephemeral range (32768 and up here), so no client
# socket holds one of them when a server starts.
PG_PORT=${PG_BENCH_PORT:-25490}
TDB_PORT=${TDB_BENCH_PORT:-25491}
TDB_HTTP=${TDB_BENCH_HTTP_PORT:-25492}
WORK=$(mktemp -d "${THUNDERDB_BENCH_DIR:-/tmp}/$NAME.XXXXXX")
chmod 755 "$WORK"
TDB_PID=
PG_DIR=

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# Stops ThunderDB and every PostgreSQL cluster still running under $WORK.
cleanup() {
  [ -n "${STANDBY_PID:-}" ] && kill -9 "$STANDBY_PID" 2>/dev/null || true
  [ -n "$TDB_PID" ] && kill -9 "$TDB_PID" 2>/dev/null && wait "$TDB_PID" 2>/dev/null || true
  for pid in "$WORK"/*/postmaster.pid; do
    [ -e "$pid" ] && as_pg "$BIN/pg_ctl" -D "$(dirname "$pid")" -m immediate stop >/dev/null 2>&1 || true
  done
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

build_thunderdb() {
  echo "building thunderdb (release)..." >&2
  cargo build --release --quiet --bin thunderdb
}

# Starts ThunderDB on the data and WAL directories under $1, with any extra
# `THUNDERDB_*=value` settings after it, and returns once it answers a query.
start_thunderdb() {
  local dir=$1
  shift
  mkdir -p "$dir"
  env THUNDERDB_PG_PORT="$TDB_PORT" THUNDERDB_HTTP_PORT="$TDB_HTTP" \
    THUNDERDB_DATA_DIR="$dir/data" THUNDERDB_WAL_DIR="$dir/wal" "$@" \
    target/release/thunderdb 2>>"$dir.log" &
  TDB_PID=$!
  wait_for_query "$TDB_PORT" admin
}

# Stops ThunderDB: gracefully, or with SIGKILL (a crash) if $1 is "kill".
stop_thunderdb() {
  if [ "${1:-}" = kill ]; then kill -9 "$TDB_PID"; else kill "$TDB_PID"; fi
  wait "$TDB_PID" 2>/dev/null || true
  TDB_PID=
}

# Creates a PostgreSQL cluster in $1 with the settings in $2 (lines of
# postgresql.conf) and starts it.
start_new_postgres() {
  PG_DIR=$1
  as_pg "$BIN/pg_ctl" -D "$PG_DIR" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$PG_DIR"
  mkdir -p "$PG_DIR"
  chown postgres "$WORK" "$PG_DIR" 2>/dev/null || true
  as_pg "$BIN/initdb" -D "$PG_DIR" -A trust >/dev/null
  printf 'port = %s\nlisten_addresses = %s\nunix_socket_directories = %s\n%s\n' \
    "$PG_PORT" "'127.0.0.1'" "'$WORK'" "$2" >>"$PG_DIR/postgresql.conf"
  start_postgres
}

# Starts the cluster in $PG_DIR (without waiting: wait_for_query does).
start_postgres() {
  as_pg "$BIN/pg_ctl" -D "$PG_DIR" -l "$PG_DIR.log" start >/dev/null
  wait_for_query "$PG_PORT" postgres
}

# Stops PostgreSQL: "fast" (a clean shutdown) or "immediate" (a crash).
stop_postgres() {
  as_pg "$BIN/pg_ctl" -D "$PG_DIR" -m "$1" -w stop >/dev/null
}

# Waits until the server on port $1 answers `SELECT 1` as user $2.
wait_for_query() {
  for _ in $(seq 6000); do
    psql -X -qAt -h 127.0.0.1 -p "$1" -U "$2" -d postgres -c 'SELECT 1' >/dev/null 2>&1 && return 0
    sleep 0.01
  done
  echo "the server on port $1 did not answer within 60 s" >&2
  return 1
}

# A checkpoint: ThunderDB's admin API or PostgreSQL's CHECKPOINT.
checkpoint_thunderdb() { curl -sf -X POST "http://127.0.0.1:$TDB_HTTP/admin/checkpoint" >/dev/null; }
checkpoint_postgres() { psql -X -qAt -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c CHECKPOINT >/dev/null; }

now_ms() { echo $(($(date +%s%N) / 1000000)); }
now() { date +%s.%N; }
# Seconds since a `now` reading, to the hundredth.
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
# tps from a pgbench report.
tps_of() { sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$1"; }
