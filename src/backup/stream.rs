//! A backup streamed to a peer instead of written to a directory: how a
//! Raft group rebuilds a node ([`super::Sink::Stream`]). The files go one
//! after another on one byte stream, in the order a backup writes them
//! (the manifest last), and the peer writes each where it belongs as it
//! arrives, so the backup's bytes are read once on the leader and written
//! once on the node.
//!
//! # Format
//!
//! Each file: its path's length (u32 LE, at most [`MAX_PATH`]) and its path
//! in the backup (`data/main.tdb`, `wal/…`, `backup_manifest.json`), then
//! its bytes as runs, then a zero u32 and the file's size (u64 LE). A run
//! is its length (u32 LE, at most [`MAX_RUN`]) with [`ZERO_RUN`] set for a
//! run of zeroes, which no bytes follow (whole blocks of free pages, a WAL
//! segment's unused tail: the peer leaves them as holes), or clear for a
//! run of bytes, which follow. A zero path length ends the files.

use std::io;
use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::env::{zero_runs, Fs};

/// Set in a run's length for a run of zeroes.
pub const ZERO_RUN: u32 = 1 << 31;

/// The longest run a sender sends (a backup's default chunk).
pub const MAX_RUN: usize = super::DEFAULT_CHUNK;

/// The longest path a receiver takes.
pub const MAX_PATH: usize = 4096;

/// Starts a file.
pub(super) async fn send_path(out: &mut (dyn AsyncWrite + Unpin + Send), path: &str) -> io::Result<()> {
    out.write_u32_le(path.len() as u32).await?;
    out.write_all(path.as_bytes()).await
}

/// Sends `chunk`, which lies at `offset` in its file, as runs. Returns the
/// bytes sent as bytes (not as zero runs).
pub(super) async fn send_runs(
    out: &mut (dyn AsyncWrite + Unpin + Send),
    chunk: &[u8],
    offset: u64,
) -> io::Result<usize> {
    let mut sent = 0;
    for (i, piece) in chunk.chunks(MAX_RUN).enumerate() {
        let at = offset + (i * MAX_RUN) as u64;
        for (run, zeroes) in zero_runs(piece, at) {
            if zeroes {
                out.write_u32_le(run.len() as u32 | ZERO_RUN).await?;
            } else {
                out.write_u32_le(run.len() as u32).await?;
                out.write_all(&piece[run.clone()]).await?;
                sent += run.len();
            }
        }
    }
    Ok(sent)
}

/// Ends a file of `size` bytes.
pub(super) async fn send_end(out: &mut (dyn AsyncWrite + Unpin + Send), size: u64) -> io::Result<()> {
    out.write_u32_le(0).await?;
    out.write_u64_le(size).await
}

/// Ends the files.
pub(super) async fn send_finish(out: &mut (dyn AsyncWrite + Unpin + Send)) -> io::Result<()> {
    out.write_u32_le(0).await?;
    out.flush().await
}

/// Receives files until the stream says they end, each written (through
/// `fs`) to the path `place` gives for its path in the backup (or refuses
/// with), created new, its zero runs left as holes, its length set and
/// synced. Returns the bytes received as bytes. An error names the file.
pub async fn receive(
    input: &mut (impl AsyncRead + Unpin),
    fs: &dyn Fs,
    place: &mut (dyn FnMut(&str) -> Result<PathBuf, String> + Send),
) -> Result<u64, String> {
    let cut = |e: io::Error| format!("the backup's stream was cut short: {e}");
    let mut received = 0;
    let mut buf = vec![0; MAX_RUN];
    loop {
        let len = input.read_u32_le().await.map_err(cut)? as usize;
        if len == 0 {
            return Ok(received);
        }
        if len > MAX_PATH {
            return Err(format!("a file's path of {len} bytes in the backup's stream"));
        }
        let mut name = vec![0; len];
        input.read_exact(&mut name).await.map_err(cut)?;
        let name = String::from_utf8(name).map_err(|e| format!("a file's path in the backup's stream: {e}"))?;
        let path = place(&name)?;
        let at = |e: io::Error| format!("{}: {e}", path.display());
        let file = fs.create(&path).map_err(at)?;
        let mut offset = 0u64;
        loop {
            let run = input.read_u32_le().await.map_err(cut)?;
            let n = (run & !ZERO_RUN) as usize;
            if run == 0 {
                break;
            }
            if n == 0 || n > MAX_RUN {
                return Err(format!("{name}: a run of {n} bytes at offset {offset}"));
            }
            if run & ZERO_RUN == 0 {
                input.read_exact(&mut buf[..n]).await.map_err(cut)?;
                file.write_all_at(&buf[..n], offset).map_err(at)?;
                received += n as u64;
            }
            offset += n as u64;
        }
        let size = input.read_u64_le().await.map_err(cut)?;
        if size != offset {
            return Err(format!("{name}: its runs hold {offset} bytes, its end says {size}"));
        }
        // The zero runs' holes, to the file's length.
        file.set_len(size).map_err(at)?;
        file.sync_all().map_err(at)?;
    }
}
