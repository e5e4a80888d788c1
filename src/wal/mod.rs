//! The write-ahead log: records, LSNs, segments, group commit and the reader.
//!
//! See `docs/design.md` for the byte format and the commit protocol, with what
//! a crash at each step leaves behind.

mod error;
mod lsn;
mod reader;
mod record;
mod replication;
mod segment;
mod timeline;
mod writer;

pub use error::WalError;
pub use lsn::{Lsn, ParseLsnError};
pub use reader::{LogEnd, WalReader};
pub use record::{decode, DecodeError, Decoded, Record, RecordKind, HEADER_LEN, MAX_PAYLOAD_LEN, RECORD_ALIGN};
pub use replication::{read_wal, ReplicationGate, WalCopy};
pub use segment::{
    parse_segment_file_name, segment_file_name, WalCompression, WalOptions, DEFAULT_RECYCLED_SEGMENTS_MAX,
    DEFAULT_SEGMENT_SIZE, DEFAULT_WRITE_BEHIND_BYTES, DEFAULT_ZERO_FILL_CHUNK,
};
pub use timeline::{
    history_file_name, parse_history_file_name, read_history, HistoryError, TimelineHistory, TimelineSwitch,
};
pub use writer::{RetireReport, Wal, WalStats};
