#!/usr/bin/env python3
"""Prints the WAL benchmark table, with ratios to the disk's own limits.

Reads criterion's estimates from target/criterion after `cargo bench --bench wal`.
"""
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"


def rate(group, name):
    """Per-second rate: elements/s or bytes/s, from the mean time per iteration."""
    base = ROOT / group / name / "new"
    try:
        mean_ns = json.loads((base / "estimates.json").read_text())["mean"]["point_estimate"]
        throughput = json.loads((base / "benchmark.json").read_text())["throughput"]
    except FileNotFoundError:
        sys.exit(f"missing {base}: run `cargo bench --bench wal` first")
    per_iter = throughput.get("Elements") or throughput.get("Bytes")
    return per_iter / (mean_ns / 1e9)


fsync = rate("disk", "fdatasync_512B")
seq_prealloc = rate("disk", "sequential_1MiB_sync_prealloc")
seq_append = rate("disk", "sequential_1MiB_sync_append")
c1, c8, c64 = (rate("wal", f"commit_{n}") for n in (1, 8, 64))
recycled = rate("wal", "append_1MiB_sync_recycled")
fresh = rate("wal", "append_1MiB_sync_fresh")
MB = 1e6

rows = [
    ("raw fdatasync (512 B overwrite + fdatasync)", f"{fsync:,.0f} /s", ""),
    ("raw sequential, 1 MiB + fdatasync, preallocated", f"{seq_prealloc / MB:,.0f} MB/s", ""),
    ("raw sequential, 1 MiB + fdatasync, appending", f"{seq_append / MB:,.0f} MB/s", ""),
    ("WAL commits/s, 1 committer", f"{c1:,.0f} /s", f"{c1 / fsync:.2f}x raw fdatasync (target >= 0.80)"),
    ("WAL commits/s, 8 committers", f"{c8:,.0f} /s", f"{c8 / c1:.1f}x one committer"),
    ("WAL commits/s, 64 committers", f"{c64:,.0f} /s", f"{c64 / c1:.1f}x one committer (target >= 20)"),
    ("WAL append, flush every MiB, recycled segments", f"{recycled / MB:,.0f} MB/s",
     f"{recycled / seq_prealloc:.2f}x raw preallocated, {recycled / seq_append:.2f}x raw appending (target >= 0.70)"),
    ("WAL append, flush every MiB, new zero-filled segments", f"{fresh / MB:,.0f} MB/s",
     f"{fresh / seq_prealloc:.2f}x raw preallocated, {fresh / seq_append:.2f}x raw appending"),
]
print("| measure | figure | ratio |")
print("|---|---:|---|")
for name, figure, ratio in rows:
    print(f"| {name} | {figure} | {ratio} |")
