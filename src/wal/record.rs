//! WAL records and their byte format.
//!
//! Every record is a 40-byte header followed by its payload, padded with
//! zeroes to a multiple of 8 bytes. All integers are little-endian:
//!
//! | offset | field        | type    | meaning                                              |
//! |-------:|--------------|---------|------------------------------------------------------|
//! | 0      | `crc`        | u32     | CRC-32 of the record's LSN (u64 LE), then bytes 4..len |
//! | 4      | `len`        | u32     | header + payload bytes, without padding              |
//! | 8      | `kind`       | u8      | [`RecordKind`]; 0 is never valid                     |
//! | 9      | reserved     | [u8; 3] | zero                                                 |
//! | 12     | `timeline`   | u32     | the timeline that wrote the record                   |
//! | 16     | `xid`        | u64     | transaction id (0: none)                             |
//! | 24     | `prev_lsn`   | u64     | the transaction's previous record (0: none)          |
//! | 32     | `durable_lsn`| u64     | how far the log was durable when this was appended   |
//! | 40     | payload      | bytes   | `len - 40` bytes                                     |
//!
//! Invariants:
//!
//! - The CRC covers the record's own LSN, so a stale record left at another
//!   position (a recycled or misdirected block) never validates.
//! - `durable_lsn` is a lower bound on the durable end of the log when the
//!   record was appended. A valid record whose `durable_lsn` lies past a bad
//!   record proves the bad record was once durable: that is corruption, not a
//!   torn tail (see the reader).
//! - Commit records carry the commit's wall-clock time (µs since the Unix
//!   epoch) as their 8-byte payload, for point-in-time recovery.

use std::fmt;

use super::lsn::Lsn;

/// Bytes in a record header.
pub const HEADER_LEN: usize = 40;

/// Records start at multiples of this.
pub const RECORD_ALIGN: u64 = 8;

/// The largest payload a record may carry.
pub const MAX_PAYLOAD_LEN: usize = 16 << 20;

const _: () = assert!(HEADER_LEN as u64 % RECORD_ALIGN == 0);
const _: () = assert!(HEADER_LEN + MAX_PAYLOAD_LEN <= u32::MAX as usize);

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum RecordKind {
    /// Filler up to a sector boundary at the end of a flush; skipped by the
    /// reader.
    Pad = 1,
    /// Marks where writing resumed after recovery found a torn sector; its
    /// payload is the LSN where the valid log ended. Skipped by the reader.
    Resume = 2,
    /// An engine change; the payload is the engine's.
    Data = 3,
    /// A transaction committed; the payload is the commit time.
    Commit = 4,
    /// A transaction aborted.
    Abort = 5,
    /// Ends its segment early (a checkpoint's switch, so that the segment
    /// can be archived): the log continues at the next segment's start.
    /// Skipped by the reader.
    Switch = 6,
}

impl RecordKind {
    fn from_u8(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => RecordKind::Pad,
            2 => RecordKind::Resume,
            3 => RecordKind::Data,
            4 => RecordKind::Commit,
            5 => RecordKind::Abort,
            6 => RecordKind::Switch,
            _ => return None,
        })
    }

    /// Whether the reader hands records of this kind to its caller.
    pub fn is_internal(self) -> bool {
        matches!(self, RecordKind::Pad | RecordKind::Resume | RecordKind::Switch)
    }
}

/// A log record, as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// What the record is.
    pub kind: RecordKind,
    /// The transaction that wrote it (0: none).
    pub xid: u64,
    /// The transaction's previous record ([`Lsn::ZERO`]: none).
    pub prev_lsn: Lsn,
    /// The kind-specific payload.
    pub payload: Vec<u8>,
}

impl Record {
    /// An engine change.
    pub fn data(xid: u64, prev_lsn: Lsn, payload: Vec<u8>) -> Self {
        Record { kind: RecordKind::Data, xid, prev_lsn, payload }
    }

    /// A commit at `commit_time_micros` (wall clock, µs since the epoch).
    pub fn commit(xid: u64, prev_lsn: Lsn, commit_time_micros: u64) -> Self {
        Record { kind: RecordKind::Commit, xid, prev_lsn, payload: commit_time_micros.to_le_bytes().to_vec() }
    }

    /// An abort.
    pub fn abort(xid: u64, prev_lsn: Lsn) -> Self {
        Record { kind: RecordKind::Abort, xid, prev_lsn, payload: Vec::new() }
    }

    /// The commit time of a commit record.
    pub fn commit_time_micros(&self) -> Option<u64> {
        match self.kind {
            RecordKind::Commit => Some(u64::from_le_bytes(self.payload[..8].try_into().ok()?)),
            _ => None,
        }
    }

    /// The bytes this record occupies in the log, padding included.
    pub fn encoded_len(&self) -> u64 {
        padded(HEADER_LEN + self.payload.len())
    }

    /// Appends the encoded record to `out`; returns the bytes appended.
    pub fn encode_into(&self, out: &mut Vec<u8>, lsn: Lsn, timeline: u32, durable_lsn: Lsn) -> u64 {
        assert!(self.payload.len() <= MAX_PAYLOAD_LEN, "caller checks the payload limit");
        assert!(lsn.0 % RECORD_ALIGN == 0, "records are aligned: {lsn}");
        let start = out.len();
        let len = HEADER_LEN + self.payload.len();
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&[self.kind as u8, 0, 0, 0]);
        out.extend_from_slice(&timeline.to_le_bytes());
        out.extend_from_slice(&self.xid.to_le_bytes());
        out.extend_from_slice(&self.prev_lsn.0.to_le_bytes());
        out.extend_from_slice(&durable_lsn.0.to_le_bytes());
        out.extend_from_slice(&self.payload);
        let crc = checksum(lsn, &out[start + 4..start + len]);
        out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
        let total = padded(len);
        out.resize(start + total as usize, 0);
        total
    }
}

fn padded(len: usize) -> u64 {
    (len as u64).next_multiple_of(RECORD_ALIGN)
}

fn checksum(lsn: Lsn, bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    if !crate::planted::active(crate::planted::PlantedBug::CrcWithoutLsn) {
        hasher.update(&lsn.0.to_le_bytes());
    }
    hasher.update(bytes);
    hasher.finalize()
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the header or the record needs.
    Truncated {
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// An all-zero header: unwritten (preallocated or cut-off) space.
    Zeroed,
    /// The segment file that should hold the record does not exist (the
    /// end of the log, unless the log is known durable past it).
    SegmentMissing {
        /// The segment missing (the record's own, or one it runs into).
        segno: u64,
    },
    /// The length field is out of range.
    BadLength(u32),
    /// The kind byte is unknown.
    BadKind(u8),
    /// The reserved bytes are not zero.
    BadReserved,
    /// The checksum does not match.
    BadChecksum {
        /// The checksum stored in the record.
        stored: u32,
        /// The checksum of the bytes found.
        computed: u32,
    },
    /// The payload does not fit the kind (e.g. a commit without its time).
    BadPayload(RecordKind),
    /// The record was written by another timeline.
    WrongTimeline(u32),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated { needed, available } => {
                write!(f, "record truncated: needs {needed} bytes, {available} available")
            }
            DecodeError::Zeroed => f.write_str("zeroed space where a record header should be"),
            DecodeError::SegmentMissing { .. } => f.write_str("the segment file that holds it does not exist"),
            DecodeError::BadLength(len) => write!(f, "record length {len} out of range"),
            DecodeError::BadKind(kind) => write!(f, "unknown record kind {kind}"),
            DecodeError::BadReserved => f.write_str("reserved header bytes are not zero"),
            DecodeError::BadChecksum { stored, computed } => {
                write!(f, "checksum mismatch: stored {stored:08x}, computed {computed:08x}")
            }
            DecodeError::BadPayload(kind) => write!(f, "payload does not fit a {kind:?} record"),
            DecodeError::WrongTimeline(timeline) => write!(f, "record belongs to timeline {timeline}"),
        }
    }
}

/// A decoded record with its framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The record.
    pub record: Record,
    /// The timeline that wrote it.
    pub timeline: u32,
    /// How far the log was durable when it was appended.
    pub durable_lsn: Lsn,
    /// Bytes it occupies, padding included.
    pub encoded_len: u64,
}

/// The header fields needed to frame a record, checked for sanity but not
/// yet against the checksum.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub(crate) len: u32,
    pub(crate) kind: RecordKind,
}

pub(crate) fn parse_header(bytes: &[u8]) -> Result<Header, DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Truncated { needed: HEADER_LEN as u64, available: bytes.len() as u64 });
    }
    if bytes[..HEADER_LEN].iter().all(|b| *b == 0) {
        return Err(DecodeError::Zeroed);
    }
    let len = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if (len as usize) < HEADER_LEN || len as usize > HEADER_LEN + MAX_PAYLOAD_LEN {
        return Err(DecodeError::BadLength(len));
    }
    let kind = RecordKind::from_u8(bytes[8]).ok_or(DecodeError::BadKind(bytes[8]))?;
    if bytes[9..12] != [0, 0, 0] {
        return Err(DecodeError::BadReserved);
    }
    Ok(Header { len, kind })
}

/// The `timeline` and `durable_lsn` fields of a would-be header, unchecked
/// (`None` if `bytes` is shorter than a header): enough to rule a position
/// out before paying for its checksum.
pub(crate) fn peek_timeline_and_durable(bytes: &[u8]) -> Option<(u32, Lsn)> {
    let header = bytes.get(..HEADER_LEN)?;
    let timeline = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes"));
    Some((timeline, Lsn(u64::from_le_bytes(header[32..40].try_into().expect("8 bytes")))))
}

/// Decodes the record that starts at `lsn` from `bytes` (which start there
/// too and may run on past the record). Never panics, whatever the bytes.
pub fn decode(bytes: &[u8], lsn: Lsn) -> Result<Decoded, DecodeError> {
    let header = parse_header(bytes)?;
    let len = header.len as usize;
    if bytes.len() < len {
        return Err(DecodeError::Truncated { needed: len as u64, available: bytes.len() as u64 });
    }
    let stored = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    let computed = checksum(lsn, &bytes[4..len]);
    if stored != computed {
        return Err(DecodeError::BadChecksum { stored, computed });
    }
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let kind = header.kind;
    let payload = bytes[HEADER_LEN..len].to_vec();
    let payload_fits = match kind {
        RecordKind::Commit | RecordKind::Resume => payload.len() == 8,
        RecordKind::Abort | RecordKind::Switch => payload.is_empty(),
        RecordKind::Pad | RecordKind::Data => true,
    };
    if !payload_fits {
        return Err(DecodeError::BadPayload(kind));
    }
    Ok(Decoded {
        record: Record { kind, xid: u64_at(16), prev_lsn: Lsn(u64_at(24)), payload },
        timeline: u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")),
        durable_lsn: Lsn(u64_at(32)),
        encoded_len: padded(len),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind() -> impl Strategy<Value = RecordKind> {
        prop_oneof![Just(RecordKind::Data), Just(RecordKind::Commit), Just(RecordKind::Abort), Just(RecordKind::Pad)]
    }

    fn record() -> impl Strategy<Value = Record> {
        (kind(), any::<u64>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300), any::<u64>()).prop_map(
            |(kind, xid, prev, payload, time)| match kind {
                RecordKind::Commit => Record::commit(xid, Lsn(prev), time),
                RecordKind::Abort => Record::abort(xid, Lsn(prev)),
                kind => Record { kind, xid, prev_lsn: Lsn(prev), payload },
            },
        )
    }

    proptest! {
        #[test]
        fn encode_then_decode_round_trips(rec in record(), lsn in any::<u64>(), timeline: u32, durable: u64) {
            let lsn = Lsn(lsn & !7);
            let mut out = vec![];
            let len = rec.encode_into(&mut out, lsn, timeline, Lsn(durable));
            prop_assert_eq!(len, out.len() as u64);
            prop_assert_eq!(len % RECORD_ALIGN, 0);
            let decoded = decode(&out, lsn).unwrap();
            prop_assert_eq!(&decoded.record, &rec);
            prop_assert_eq!(decoded.timeline, timeline);
            prop_assert_eq!(decoded.durable_lsn, Lsn(durable));
            prop_assert_eq!(decoded.encoded_len, len);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), lsn: u64) {
            let _ = decode(&bytes, Lsn(lsn));
        }

        #[test]
        fn any_flipped_bit_is_detected(rec in record(), bit in 0usize..(8 * HEADER_LEN)) {
            let mut out = vec![];
            rec.encode_into(&mut out, Lsn(4096), 1, Lsn(0));
            out[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode(&out, Lsn(4096)).is_err());
        }
    }

    #[test]
    fn a_record_read_at_another_lsn_does_not_validate() {
        let mut out = vec![];
        Record::data(1, Lsn::ZERO, b"x".to_vec()).encode_into(&mut out, Lsn(4096), 1, Lsn(0));
        assert!(matches!(decode(&out, Lsn(8192)), Err(DecodeError::BadChecksum { .. })));
    }

    #[test]
    fn commit_records_carry_their_time() {
        let rec = Record::commit(9, Lsn(4096), 1_768_473_045_000_000);
        assert_eq!(rec.commit_time_micros(), Some(1_768_473_045_000_000));
        assert_eq!(Record::abort(9, Lsn::ZERO).commit_time_micros(), None);
    }

    #[test]
    fn pad_and_resume_are_the_wals_own() {
        assert!(RecordKind::Pad.is_internal() && RecordKind::Resume.is_internal() && RecordKind::Switch.is_internal());
        assert!(!RecordKind::Commit.is_internal() && !RecordKind::Data.is_internal());
    }

    #[test]
    fn zeroes_are_not_a_record() {
        assert_eq!(decode(&[0; 64], Lsn(4096)), Err(DecodeError::Zeroed));
        assert!(matches!(decode(&[1; 8], Lsn(4096)), Err(DecodeError::Truncated { .. })));
    }
}
