#!/usr/bin/env bash
# zstd against lz4 on real full-page images: loads `pgbench -i -s SCALE` into
# a ThunderDB and runs CLIENTS x TXNS TPC-B-like transactions (so the pages
# are as a running database logs them, not only freshly loaded), stops it,
# then runs `benches/image_compression.rs` over its data file.
#
#   benches/image_compression.sh             the reported figures
#   SCALE=2 benches/image_compression.sh     a quick look
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-10}
TXNS=${TXNS:-1000}
CLIENTS=${CLIENTS:-8}
NAME=image-compression
source benches/lib.sh

build_thunderdb
start_thunderdb "$WORK/tdb"
tdb=(-h 127.0.0.1 -p "$TDB_PORT" -U admin)
echo "thunderdb: pgbench -i -s $SCALE, then $CLIENTS x $TXNS transactions..." >&2
pgbench "${tdb[@]}" -i -I dtgp -s "$SCALE" -q >/dev/null 2>&1
pgbench "${tdb[@]}" -n -c "$CLIENTS" -j 2 -t "$TXNS" >/dev/null 2>&1
stop_thunderdb
THUNDERDB_DATA_FILE=$(ls "$WORK"/tdb/data/*.tdb) cargo bench --quiet --bench image_compression
