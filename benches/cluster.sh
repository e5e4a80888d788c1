#!/usr/bin/env bash
# The Raft group on this machine's loopback, in one run:
#
# - pgbench (CLIENTS clients, DURATION seconds, scale SCALE) on one
#   ThunderDB node, then on a group of three through a libpq multi-host
#   string, both starting from copies of the same loaded database;
# - failover: `kill -9` of the leader, then the seconds until a write
#   through the multi-host string commits;
# - PostgreSQL 15's own price for synchronous replication on the same
#   machine: the same pgbench on its primary alone, then with two
#   streaming standbys and quorum commit (`ANY 1 (*)`);
# - rebuilding a node: a follower's directories wiped, then the seconds
#   from `thunderdb --rebuild-from-peers` until it holds and has replayed
#   everything the group committed, against PostgreSQL 15's
#   `pg_basebackup -X stream -R --checkpoint=fast` of the same loaded database plus the
#   standby's start until it has replayed the primary's WAL.
#
#   benches/cluster.sh                          the reported figures
#   SCALE=2 DURATION=5 benches/cluster.sh       a quick look
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-10}
DURATION=${DURATION:-30}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
NAME=cluster-bench
source benches/lib.sh
RAFT_PORT=$((TDB_PORT + 120))
NODE_PIDS=(0 0 0 0)
stop_nodes() {
  for i in 1 2 3; do [ "${NODE_PIDS[$i]}" != 0 ] && kill -9 "${NODE_PIDS[$i]}" 2>/dev/null || true; done
}
trap 'stop_nodes; cleanup' EXIT
trap 'exit 1' INT TERM

build_thunderdb
TDB=target/release/thunderdb

# The loaded database every run starts from.
echo "thunderdb: pgbench -i -s $SCALE..." >&2
start_thunderdb "$WORK/seed"
pgbench -h 127.0.0.1 -p "$TDB_PORT" -U admin -i -I dtgp -s "$SCALE" -q >/dev/null 2>&1
stop_thunderdb
copy_seed() { mkdir -p "$1"; cp -r "$WORK/seed/data" "$WORK/seed/wal" "$1/"; }

echo "thunderdb, one node: pgbench -T $DURATION..." >&2
copy_seed "$WORK/single"
start_thunderdb "$WORK/single"
pgbench -h 127.0.0.1 -p "$TDB_PORT" -U admin -n -c "$CLIENTS" -j "$THREADS" -T "$DURATION" >"$WORK/single.txt" 2>&1
stop_thunderdb
single_tps=$(tps_of "$WORK/single.txt")

pg_port() { echo $((TDB_PORT + 100 + $1)); }
http_port() { echo $((TDB_PORT + 110 + $1)); }
PEERS="\"1@127.0.0.1:$((RAFT_PORT + 1))\", \"2@127.0.0.1:$((RAFT_PORT + 2))\", \"3@127.0.0.1:$((RAFT_PORT + 3))\""
start_node() {
  local i=$1 dir="$WORK/node$1"
  shift
  printf 'pg_port = %s\nhttp_port = %s\ndata_dir = "%s/data"\nwal_dir = "%s/wal"\n[cluster]\nnode_id = %s\npeers = [%s]\n' \
    "$(pg_port "$i")" "$(http_port "$i")" "$dir" "$dir" "$i" "$PEERS" >"$dir.toml"
  "$TDB" --config "$dir.toml" "$@" 2>>"$dir.log" &
  NODE_PIDS[$i]=$!
}
status() { curl -sf "http://127.0.0.1:$(http_port "$1")/admin/cluster/status" || echo '{}'; }
# The index of the node that serves writes, waiting for one.
leader() {
  for _ in $(seq 600); do
    for i in 1 2 3; do
      [ "${NODE_PIDS[$i]}" != 0 ] && [ "$(status "$i" | jq -r .serving)" = true ] && { echo "$i"; return; }
    done
    sleep 0.05
  done
  echo "no leader within 30 s" >&2
  return 1
}
MULTI="host=127.0.0.1,127.0.0.1,127.0.0.1 port=$(pg_port 1),$(pg_port 2),$(pg_port 3) user=admin dbname=thunderdb target_session_attrs=read-write"

echo "thunderdb, three nodes: pgbench -T $DURATION..." >&2
for i in 1 2 3; do copy_seed "$WORK/node$i"; start_node "$i"; done
first=$(leader)
for i in 1 2 3; do
  if [ "$(status "$i" | jq -r '.role // empty')" = "" ]; then
    echo "node $i is not running; its log:" >&2
    tail -n 5 "$WORK/node$i.log" >&2
    exit 1
  fi
done
pgbench -n -c "$CLIENTS" -j "$THREADS" -T "$DURATION" "$MULTI" >"$WORK/group.txt" 2>&1
group_tps=$(tps_of "$WORK/group.txt")
latency=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' "$WORK/group.txt")
# What each node holds after the run: its memory, and its Raft log (which
# compaction keeps to what some voter may still need).
held=""
for i in 1 2 3; do
  rss=$(awk '/^VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/${NODE_PIDS[$i]}/status")
  entries=$(status "$i" | jq -r '.raft_log | .last_index - .first_index + 1')
  log_kb=$(du -sk "$WORK/node$i/data/raft" | cut -f1)
  held="$held node $i: $rss MB, $entries entries, $((log_kb / 1024)) MB on disk;"
done

echo "thunderdb: kill -9 of the leader (node $first)..." >&2
kill -9 "${NODE_PIDS[$first]}"
NODE_PIDS[$first]=0
killed=$(now)
until psql -X -qAt "$MULTI connect_timeout=1" -c "UPDATE pgbench_branches SET bbalance = bbalance WHERE bid = 1" >/dev/null 2>&1; do
  if [ "$(since "$killed" | cut -d. -f1)" -ge 60 ]; then
    echo "no new leader served a write within 60 s of the kill; the nodes' logs:" >&2
    tail -n 5 "$WORK"/node?.log >&2
    exit 1
  fi
  sleep 0.01
done
failover=$(since "$killed")
start_node "$first"
leader >/dev/null

# Rebuild: a follower loses its directories (Raft log included).
victim=$(( $(leader) % 3 + 1 ))
kill -9 "${NODE_PIDS[$victim]}"
NODE_PIDS[$victim]=0
sleep 1
rm -rf "$WORK/node$victim/data" "$WORK/node$victim/wal"
echo "thunderdb: rebuilding node $victim from its peers..." >&2
started=$(now)
start_node "$victim" --rebuild-from-peers
for _ in $(seq 12000); do
  lead=$(status "$(leader)" | jq -r .commit_lsn)
  mine=$(status "$victim")
  [ "$(jq -r .wal_end <<<"$mine")" = "$lead" ] && [ "$(jq -r .replay_lsn <<<"$mine")" = "$lead" ] && break
  sleep 0.05
done
tdb_rebuild=$(since "$started")
tdb_size=$(du -sb "$WORK/node$victim/data" "$WORK/node$victim/wal" | awk '{s += $1} END {print s}')
stop_nodes
NODE_PIDS=(0 0 0 0)

echo "postgresql: pgbench -i -s $SCALE, then pg_basebackup and a streaming standby..." >&2
start_new_postgres "$WORK/pg" "wal_level = replica
max_wal_senders = 4
hot_standby = on"
pgbench -h 127.0.0.1 -p "$PG_PORT" -U postgres -i -I dtgp -s "$SCALE" -q postgres >/dev/null 2>&1
STANDBY_PORT=$((PG_PORT + 5))
started=$(now)
as_pg "$BIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PORT" -U postgres -D "$WORK/pg-standby" -X stream -R --checkpoint=fast
printf 'port = %s\n' "$STANDBY_PORT" >>"$WORK/pg-standby/postgresql.conf"
as_pg "$BIN/pg_ctl" -D "$WORK/pg-standby" -l "$WORK/pg-standby.log" start >/dev/null
target=$(psql -X -qAt -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c "SELECT pg_current_wal_lsn()")
for _ in $(seq 12000); do
  replayed=$(psql -X -qAt -h 127.0.0.1 -p "$STANDBY_PORT" -U postgres -d postgres \
    -c "SELECT pg_last_wal_replay_lsn() >= '$target'::pg_lsn" 2>/dev/null || true)
  [ "$replayed" = t ] && break
  sleep 0.05
done
pg_rebuild=$(since "$started")
pg_size=$(du -sb "$WORK/pg-standby" | awk '{print $1}')

# PostgreSQL's own price for the same guarantee on this machine: the
# primary alone, then with two streaming standbys and quorum commit (each
# commit waits for one of the two, as a Raft group of three waits for one
# follower), the same pgbench on the same data.
echo "postgresql: pgbench -T $DURATION alone, then with two standbys and quorum commit..." >&2
as_pg "$BIN/pg_ctl" -D "$WORK/pg-standby" -m fast -w stop >/dev/null
pg_q=(psql -X -qAt -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres)
"${pg_q[@]}" -c "CHECKPOINT" >/dev/null
sync
pgbench -h 127.0.0.1 -p "$PG_PORT" -U postgres -n -c "$CLIENTS" -j "$THREADS" -T "$DURATION" postgres >"$WORK/pg-single.txt" 2>&1
pg_single_tps=$(tps_of "$WORK/pg-single.txt")
as_pg "$BIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PORT" -U postgres -D "$WORK/pg-standby2" -X stream -R --checkpoint=fast
printf 'port = %s\n' "$((STANDBY_PORT + 1))" >>"$WORK/pg-standby2/postgresql.conf"
for standby in pg-standby pg-standby2; do
  as_pg "$BIN/pg_ctl" -D "$WORK/$standby" -l "$WORK/$standby.log" start >/dev/null
done
"${pg_q[@]}" -c "ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (*)'" -c "SELECT pg_reload_conf()" >/dev/null
for _ in $(seq 600); do
  [ "$("${pg_q[@]}" -c "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'quorum' AND state = 'streaming'")" = 2 ] && break
  sleep 0.1
done
"${pg_q[@]}" -c "CHECKPOINT" >/dev/null
sync
pgbench -h 127.0.0.1 -p "$PG_PORT" -U postgres -n -c "$CLIENTS" -j "$THREADS" -T "$DURATION" postgres >"$WORK/pg-group.txt" 2>&1
pg_group_tps=$(tps_of "$WORK/pg-group.txt")
pg_latency=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' "$WORK/pg-group.txt")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
mb() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }
cat <<EOF
| measure | ThunderDB | against | ratio |
|---|---|---|---|
| pgbench tps, $CLIENTS clients, scale $SCALE, ${DURATION} s | $group_tps (three nodes; latency $latency ms) | $single_tps (one node) | $(ratio "$group_tps" "$single_tps") |
| PostgreSQL 15, the same pgbench: a primary and two standbys, quorum commit (\`ANY 1 (*)\`) | $pg_group_tps (latency $pg_latency ms) | $pg_single_tps (the primary alone) | $(ratio "$pg_group_tps" "$pg_single_tps") |
| after the three-node run: each node's resident memory, Raft log entries and Raft directory |${held% ;} | | |
| failover after \`kill -9\` of the leader, to the first committed write | ${failover} s | | |
| rebuilding a node from its peers, to caught up | ${tdb_rebuild} s ($(mb "$tdb_size") MB) | ${pg_rebuild} s (PostgreSQL 15: pg_basebackup -X stream + standby catch-up, $(mb "$pg_size") MB) | $(ratio "$pg_rebuild" "$tdb_rebuild")× PostgreSQL's speed |
EOF
