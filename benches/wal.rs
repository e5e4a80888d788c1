//! WAL benchmarks on the real disk, beside the disk's own limits.
//!
//! - `disk/fdatasync_512B`: the raw rate of a 512-byte overwrite plus
//!   `fdatasync` in a preallocated file (what one commit costs at best).
//! - `disk/sequential_1MiB_sync_prealloc` and `…_append`: raw bandwidth of
//!   1 MiB writes with an `fdatasync` after each, into a preallocated file
//!   and appending to a new one.
//! - `wal/commit_N`: commits per second with N concurrent committers.
//! - `wal/append_1MiB_sync_recycled` and `…_fresh`: WAL append throughput
//!   with a flush every MiB, reusing retired segments (steady state) or
//!   creating zero-filled ones.
//!
//! Run `cargo bench --bench wal`, then `python3 benches/wal_report.py` for the
//! table of ratios. `THUNDERDB_BENCH_DIR` picks the directory (default: the
//! system temp dir).
// Benchmarks measure the real machine: they own their clock and scratch files.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use thunderdb::env::{File, Fs, RealFs};
use thunderdb::wal::{Lsn, Record, Wal, WalOptions, WalReader};

const MIB: u64 = 1 << 20;

fn scratch() -> tempfile::TempDir {
    match std::env::var_os("THUNDERDB_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir).expect("scratch dir"),
        None => tempfile::tempdir().expect("scratch dir"),
    }
}

fn preallocated(path: &Path, len: u64) -> Box<dyn File> {
    let file = RealFs.create(path).expect("create");
    let zeroes = vec![0u8; MIB as usize];
    for offset in (0..len).step_by(MIB as usize) {
        file.write_all_at(&zeroes, offset).expect("zero-fill");
    }
    file.sync_all().expect("sync");
    file
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
}

fn open_wal(dir: &Path) -> Arc<Wal> {
    let opts = WalOptions::new(dir.join("wal"));
    let fs: Arc<dyn Fs> = Arc::new(RealFs);
    fs.create_dir_all(&opts.dir).expect("wal dir");
    let end = WalReader::new(fs.clone(), opts.clone(), opts.first_lsn()).read_to_end().expect("read");
    Arc::new(Wal::open(fs, opts, end).expect("open"))
}

fn disk(c: &mut Criterion) {
    let dir = scratch();
    let mut group = c.benchmark_group("disk");
    group.sample_size(20).measurement_time(Duration::from_secs(5));

    let file = preallocated(&dir.path().join("fsync"), 64 * MIB);
    let block = [0x5Au8; 512];
    let mut offset = 0u64;
    group.throughput(Throughput::Elements(1));
    group.bench_function("fdatasync_512B", |b| {
        b.iter(|| {
            file.write_all_at(&block, offset).expect("write");
            file.sync_data().expect("fdatasync");
            offset = (offset + 512) % (64 * MIB);
        })
    });

    let chunk = vec![0xA5u8; MIB as usize];
    let file = preallocated(&dir.path().join("seq"), 256 * MIB);
    let mut offset = 0u64;
    group.throughput(Throughput::Bytes(MIB));
    group.bench_function("sequential_1MiB_sync_prealloc", |b| {
        b.iter(|| {
            file.write_all_at(&chunk, offset).expect("write");
            file.sync_data().expect("fdatasync");
            offset = (offset + MIB) % (256 * MIB);
        })
    });

    let mut round = 0u64;
    group.bench_function("sequential_1MiB_sync_append", |b| {
        b.iter_custom(|iters| {
            // A fresh file every 256 MiB keeps the scratch space bounded.
            let mut elapsed = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                round += 1;
                let path = dir.path().join(format!("append-{round}"));
                let file = RealFs.create(&path).expect("create");
                let batch = (iters - done).min(256);
                let start = Instant::now();
                for i in 0..batch {
                    file.write_all_at(&chunk, i * MIB).expect("write");
                    file.sync_data().expect("fdatasync");
                }
                elapsed += start.elapsed();
                drop(file);
                RealFs.remove(&path).expect("remove");
                done += batch;
            }
            elapsed
        })
    });
    group.finish();
}

fn commits(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("wal");
    group.sample_size(20).measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(1));
    for committers in [1u64, 8, 64] {
        let dir = scratch();
        let wal = open_wal(dir.path());
        group.bench_function(format!("commit_{committers}"), |b| {
            b.iter_custom(|iters| {
                let per_task = iters.div_ceil(committers);
                rt.block_on(async {
                    let start = Instant::now();
                    let tasks: Vec<_> = (0..committers)
                        .map(|xid| {
                            let wal = wal.clone();
                            tokio::spawn(async move {
                                for n in 0..per_task {
                                    wal.commit(xid, Lsn::ZERO, n).await.expect("commit");
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.expect("committer");
                    }
                    // Report the time per commit actually made.
                    start.elapsed().mul_f64(iters as f64 / (per_task * committers) as f64)
                })
            })
        });
        rt.block_on(retire_all(&wal, 0));
    }
    group.finish();
}

async fn retire_all(wal: &Wal, keep_ready: usize) {
    let durable = wal.durable_lsn();
    let needed = Lsn(durable.0.saturating_sub(wal.options().segment_size));
    wal.retire_segments(needed, keep_ready, &|_| true).await.expect("retire");
}

fn append(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("wal");
    group.sample_size(20).measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Bytes(MIB));
    // 8 KiB records (about a page each); 128 of them are a MiB with headers.
    let payload = vec![0x42u8; 8192 - 48];
    for (name, keep_ready) in [("append_1MiB_sync_recycled", 4usize), ("append_1MiB_sync_fresh", 0)] {
        let dir = scratch();
        let wal = open_wal(dir.path());
        let record = Record::data(1, Lsn::ZERO, payload.clone());
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut elapsed = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        let mut end = Lsn::ZERO;
                        for _ in 0..128 {
                            end = wal.append(&record).await.expect("append").1;
                        }
                        wal.flush(end).await.expect("flush");
                        elapsed += start.elapsed();
                        // Retiring is a checkpoint's job, outside the timing.
                        retire_all(&wal, keep_ready).await;
                    }
                    elapsed
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, disk, commits, append);
criterion_main!(benches);
