//! The WAL's error type.

use std::io;
use std::path::PathBuf;

use super::lsn::Lsn;

/// What can go wrong in the WAL. Every variant names the file, segment or LSN
/// involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// The disk failed an operation.
    #[error("WAL I/O error: {op} {path}: {source}")]
    Io {
        /// What the WAL was doing.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A record failed its checks and valid, durable records follow it, so it
    /// is not a torn tail: cutting the log here would lose committed history.
    #[error("WAL corruption in segment {segment} at LSN {lsn}: {detail}")]
    Corrupt {
        /// The segment file holding the bad record.
        segment: String,
        /// Where the bad record starts.
        lsn: Lsn,
        /// What was wrong and how we know it is not a torn tail.
        detail: String,
    },
    /// An earlier I/O error stopped the WAL (fail-stop): the outcome of that
    /// write or sync is unknown, so nothing more is accepted until restart.
    #[error("the WAL stopped after an earlier I/O error and accepts nothing more; restart the database to run recovery (first error: {cause})")]
    Stopped {
        /// The error that stopped the WAL.
        cause: String,
    },
    /// A record is larger than the format allows.
    #[error("WAL record payload of {len} bytes exceeds the {max}-byte limit")]
    RecordTooLarge {
        /// The payload's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The WAL options are invalid.
    #[error("invalid WAL configuration: {0}")]
    Config(String),
}

impl WalError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        WalError::Io { op, path: path.into(), source }
    }

    /// Whether the error reports damaged data on disk.
    pub fn is_corruption(&self) -> bool {
        matches!(self, WalError::Corrupt { .. })
    }

    /// Whether retrying the same call could succeed. WAL errors never are:
    /// after an I/O error the WAL is stopped until restart.
    pub fn is_retryable(&self) -> bool {
        false
    }
}
