//! zstd against lz4 on the full-page images the WAL logs: every page of a
//! ThunderDB data file, less its hole (as `Op::PageImages` stores it),
//! compressed one page at a time, as the log compresses them. zstd runs at
//! level 1 with a reused context, as the engine does; lz4 is `lz4_flex`'s
//! block format. Prints the bytes each stores and its speed each way.
//!
//! ```sh
//! benches/image_compression.sh        # loads pgbench -s 10, then runs this
//! THUNDERDB_DATA_FILE=/path/data.tdb cargo bench --bench image_compression
//! ```
//!
//! A benchmark, not engine code: it reads a file and times with the real
//! clock directly.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::time::{Duration, Instant};

use thunderdb::storage::{image_hole, PAGE_SIZE};

/// A page less its hole: the bytes an image stores before compression.
fn without_hole(page: &[u8; PAGE_SIZE]) -> Vec<u8> {
    let hole = image_hole(page);
    [&page[..hole.start], &page[hole.end..]].concat()
}

/// Compresses and decompresses every image three times with one codec and
/// prints its row: the bytes stored, and the fastest pass each way.
fn measure(
    name: &str,
    images: &[Vec<u8>],
    mut compress: impl FnMut(&[u8]) -> Vec<u8>,
    mut decompress: impl FnMut(&[u8], usize) -> Vec<u8>,
) {
    let raw: usize = images.iter().map(Vec::len).sum();
    let (mut best_c, mut best_d, mut stored_bytes) = (Duration::MAX, Duration::MAX, 0);
    for _ in 0..3 {
        let started = Instant::now();
        let stored: Vec<Vec<u8>> = images.iter().map(|image| compress(image)).collect();
        best_c = best_c.min(started.elapsed());
        let started = Instant::now();
        for (image, stored) in images.iter().zip(&stored) {
            assert_eq!(&decompress(stored, image.len()), image, "{name} round-trips");
        }
        best_d = best_d.min(started.elapsed());
        stored_bytes = stored.iter().map(Vec::len).sum();
    }
    let rate = |d: Duration| raw as f64 / 1e6 / d.as_secs_f64();
    println!(
        "| {name} | {:.1} | {:.1}x | {:.0} | {:.0} |",
        stored_bytes as f64 / 1e6,
        raw as f64 / stored_bytes as f64,
        rate(best_c),
        rate(best_d)
    );
}

fn main() {
    let path = std::env::var("THUNDERDB_DATA_FILE")
        .expect("set THUNDERDB_DATA_FILE to a ThunderDB data file (see benches/image_compression.sh)");
    let file = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let images: Vec<Vec<u8>> = file
        .chunks_exact(PAGE_SIZE)
        .map(|page| without_hole(page.try_into().expect("a page")))
        .filter(|image| image.iter().any(|&b| b != 0))
        .collect();
    let raw: usize = images.iter().map(Vec::len).sum();
    println!(
        "{path}: {} pages, {:.1} MB less their holes ({:.1} MB whole)\n",
        images.len(),
        raw as f64 / 1e6,
        (images.len() * PAGE_SIZE) as f64 / 1e6
    );
    let mut zstd_c = zstd::bulk::Compressor::new(1).expect("zstd");
    let mut zstd_d = zstd::bulk::Decompressor::new().expect("zstd");
    println!("| codec | stored (MB) | ratio | compress (MB/s) | decompress (MB/s) |");
    println!("|---|---:|---:|---:|---:|");
    measure(
        "zstd level 1 (the engine's)",
        &images,
        |raw| zstd_c.compress(raw).expect("zstd"),
        |stored, len| zstd_d.decompress(stored, len).expect("zstd"),
    );
    measure("lz4 (lz4_flex block)", &images, lz4_flex::block::compress, |stored, len| {
        lz4_flex::block::decompress(stored, len).expect("lz4")
    });
}
