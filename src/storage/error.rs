//! The storage layer's error type.

use std::io;
use std::path::PathBuf;

/// What can go wrong in storage. Every variant names the file (and page).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The disk failed an operation.
    #[error("storage I/O error: {op} {path}: {source}")]
    Io {
        /// What storage was doing.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A page failed its checks.
    #[error("corrupt page {page_no} in {path}: {detail}")]
    CorruptPage {
        /// The data file.
        path: PathBuf,
        /// The page number within it.
        page_no: u32,
        /// What was wrong.
        detail: String,
    },
    /// The control file failed its checks.
    #[error("corrupt control file {path}: {detail}")]
    CorruptControl {
        /// The control file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
}

impl StorageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StorageError::Io { op, path: path.into(), source }
    }

    /// Whether the error reports damaged data on disk.
    pub fn is_corruption(&self) -> bool {
        matches!(self, StorageError::CorruptPage { .. } | StorageError::CorruptControl { .. })
    }

    /// Whether retrying could succeed. Storage errors never are: an I/O error
    /// stops the engine until restart, and corruption needs repair.
    pub fn is_retryable(&self) -> bool {
        false
    }
}
