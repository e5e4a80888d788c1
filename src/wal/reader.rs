//! Reading the WAL: iterate records from any LSN across segments, and find
//! where the valid log ends.
//!
//! The reader stops at the first record that fails its checks (zeroed space,
//! a bad length or kind, a checksum mismatch, a missing segment). Whether that
//! is the end of the log or corruption is decided as the FAST'18
//! "protocol-aware recovery" paper advises, using evidence on disk:
//!
//! - If the bad record lies below a position the caller knows was durable
//!   (e.g. the last checkpoint), it is corruption.
//! - Otherwise the reader scans every later 8-byte-aligned position, to the
//!   end of the last segment file, for a valid record. Each record's CRC
//!   covers its own LSN, so a valid record there was really written there. If
//!   its `durable_lsn` lies past the bad record, the bad record was durable
//!   once: it is corruption, and the reader fails with an error naming the
//!   segment and the LSN. Committed history is never truncated.
//! - Otherwise the bad record belongs to a write that never completed a sync:
//!   a torn tail. The reader reports the end of the log there, as a
//!   [`LogEnd`], which [`Wal::open`](super::Wal::open) cuts off durably.
//!
//! One exception: when a torn tail ends mid-sector, writing resumes at the
//! next sector boundary with a `Resume` record naming the old end (the torn
//! sector itself is never rewritten, because it holds durable records). The
//! reader follows that link. A `Switch` record ends its segment early (a
//! checkpoint's segment switch, for the archiver): the reader goes on at the
//! next segment's start.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use super::error::WalError;
use super::lsn::Lsn;
use super::record::{
    decode, parse_header, peek_timeline_and_durable, DecodeError, Decoded, Record, RecordKind, HEADER_LEN, RECORD_ALIGN,
};
use super::segment::{parse_segment_file_name, WalOptions};
use crate::env::{File, Fs, SECTOR_SIZE};
use crate::planted::{active, PlantedBug};
use crate::probe::{self, Phase, Probe};

/// Where the valid log ends, as found by a [`WalReader`]. Only a reader that
/// has read to the end makes one, so [`Wal::open`](super::Wal::open) cannot be
/// told to cut the log anywhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogEnd {
    lsn: Lsn,
}

impl LogEnd {
    /// The LSN just past the last valid record.
    pub fn lsn(self) -> Lsn {
        self.lsn
    }
}

/// Reads records in order from a starting LSN.
pub struct WalReader {
    fs: Arc<dyn Fs>,
    opts: WalOptions,
    next: Lsn,
    durable_floor: Lsn,
    /// Where reading stops for now (see [`WalReader::resume`]).
    limit: Option<Lsn>,
    end: Option<LogEnd>,
    /// Loaded segments; `None` marks a missing one.
    segments: BTreeMap<u64, Option<Loaded>>,
}

/// How much of a segment file the reader reads at a time.
const PIECE: usize = 1 << 20;

/// A segment file as read so far: `data` holds its first bytes, and the
/// rest, up to the file's length `len`, is read a piece at a time when a
/// record reaches it. Memory costs a page fault per 4 KiB the first time it
/// is written, so the part of a segment past the log's end is never read
/// (and its memory never touched) unless the torn-tail check must scan it.
struct Loaded {
    file: Box<dyn File>,
    data: Arc<Vec<u8>>,
    len: usize,
}

impl WalReader {
    /// A reader whose first record starts at `start`, which must be a record
    /// boundary (the first LSN of the WAL, or a checkpoint's redo point).
    pub fn new(fs: Arc<dyn Fs>, opts: WalOptions, start: Lsn) -> Self {
        assert!(start.0 % RECORD_ALIGN == 0, "reading starts at a record boundary: {start}");
        Self { fs, opts, next: start, durable_floor: Lsn::ZERO, limit: None, end: None, segments: BTreeMap::new() }
    }

    /// Declares that the log was durable at least up to `lsn` (e.g. the redo
    /// point of the last checkpoint): a bad record before it is corruption,
    /// whatever follows.
    pub fn durable_through(mut self, lsn: Lsn) -> Self {
        self.durable_floor = lsn;
        self
    }

    /// Where the next record starts (after a switch record, the next
    /// segment's start).
    pub fn position(&self) -> Lsn {
        self.next
    }

    /// Makes [`next_record`](Self::next_record) return `None` once it
    /// reaches `lsn`, without looking past it (the end of the log is not
    /// decided there: [`WalReader::end`] stays `None`).
    pub fn stop_at(&mut self, lsn: Lsn) {
        self.limit = Some(lsn);
    }

    /// Goes on reading after the log has grown, up to `through`, which is
    /// known whole (the new durable floor and [`WalReader::stop_at`]):
    /// forgets where it ended, and will read again the part of its cached
    /// segment from its position on (into the same buffer: the bytes
    /// before are as they were), dropping any later one. A standby's
    /// replay resumes this way each round, instead of loading the segment
    /// whole again.
    pub fn resume(&mut self, through: Lsn) -> Result<(), WalError> {
        self.end = None;
        self.durable_floor = self.durable_floor.max(through);
        self.limit = Some(through);
        let segno = self.opts.segno(self.next);
        self.segments.retain(|cached, _| *cached <= segno);
        let from = (self.opts.offset(self.next) / SECTOR_SIZE * SECTOR_SIZE) as usize;
        let path = self.opts.path(segno);
        let Some(Some(loaded)) = self.segments.get_mut(&segno) else {
            self.segments.remove(&segno);
            return Ok(());
        };
        let file = self.fs.open(&path).map_err(|e| WalError::io("open", &path, e))?;
        let len = file.len().map_err(|e| WalError::io("stat", &path, e))?.min(self.opts.segment_size) as usize;
        if loaded.len == len {
            // The path may name a new file now (a segment restored again):
            // the rest is read from what it names.
            loaded.file = file;
            Arc::make_mut(&mut loaded.data).truncate(from);
        } else {
            // The file's length changed: loaded again when next needed.
            self.segments.remove(&segno);
        }
        Ok(())
    }

    /// Where the log ends, once [`next_record`](Self::next_record) has
    /// returned `None`.
    pub fn end(&self) -> Option<LogEnd> {
        self.end
    }

    /// The next record and its LSN; `None` at the end of the log; an error on
    /// corruption or I/O failure.
    pub fn next_record(&mut self) -> Result<Option<(Lsn, Record)>, WalError> {
        let _phase = probe::enter_unless_marked(Phase::WalRecoveryRead);
        loop {
            if self.end.is_some() || self.limit.is_some_and(|limit| self.next >= limit) {
                return Ok(None);
            }
            let at = self.next;
            match self.decode_at(at)? {
                Ok(decoded) => {
                    if at.plus(decoded.encoded_len) > Lsn(at.0.next_multiple_of(SECTOR_SIZE)) {
                        // A record that runs into the next sector, where a
                        // Resume record names its start: recovery once found
                        // the log ending here, this record torn, and the
                        // writer went on past the sector. The bytes written
                        // there since completed it by chance (the Resume
                        // record's own first bytes did, in wal seed 397 under
                        // another I/O schedule). It is not part of the log.
                        if let Some(resumed) = self.resume_after(at)? {
                            probe::hit(Probe::ResumeLinkFollowed);
                            self.next = resumed;
                            continue;
                        }
                    }
                    self.next = if decoded.record.kind == RecordKind::Switch {
                        // The rest of the segment the switch ends in is
                        // unused. A switch appended within a header's length
                        // of its segment's end runs into the next one, and
                        // the writer goes on after that one (seed 1072 of
                        // the db workload: jumping to the next segment's
                        // start instead read the switch's own tail there as
                        // a torn record, and recovery wrote over it).
                        Lsn(at.plus(decoded.encoded_len).0.next_multiple_of(self.opts.segment_size))
                    } else {
                        at.plus(decoded.encoded_len)
                    };
                    if !decoded.record.kind.is_internal() {
                        return Ok(Some((at, decoded.record)));
                    }
                }
                Err(why) => {
                    if let Some(resumed) = self.resume_after(at)? {
                        probe::hit(Probe::ResumeLinkFollowed);
                        self.next = resumed;
                        continue;
                    }
                    if matches!(why, DecodeError::Zeroed) && active(PlantedBug::ZeroedHeaderIsEndOfLog) {
                        self.end = Some(LogEnd { lsn: at });
                        return Ok(None);
                    }
                    if let Err(corrupt) = self.check_torn_tail(at, &why) {
                        probe::hit(Probe::CorruptionReported);
                        return Err(corrupt);
                    }
                    if !matches!(
                        why,
                        DecodeError::Zeroed | DecodeError::Truncated { .. } | DecodeError::SegmentMissing { .. }
                    ) {
                        probe::hit(Probe::TornTailCut);
                    }
                    self.end = Some(LogEnd { lsn: at });
                    return Ok(None);
                }
            }
        }
    }

    /// Reads to the end of the log, returning where it ends.
    pub fn read_to_end(&mut self) -> Result<LogEnd, WalError> {
        while self.next_record()?.is_some() {}
        Ok(self.end.expect("set when next_record returns None"))
    }

    /// The record at `lsn`, which an earlier read proved valid (undo follows a
    /// transaction's `prev_lsn` chain back through the log). Loaded segments
    /// stay cached, so walking a chain reads each segment once. A record that
    /// no longer decodes there is corruption.
    pub fn record_at(&mut self, lsn: Lsn) -> Result<Record, WalError> {
        match self.decode_at(lsn)? {
            Ok(decoded) => Ok(decoded.record),
            Err(why) => Err(WalError::Corrupt {
                segment: self.opts.file_name(self.opts.segno(lsn)),
                lsn,
                detail: format!("a record a transaction's chain points to does not decode: {why}"),
            }),
        }
    }

    fn decode_at(&mut self, at: Lsn) -> Result<Result<Decoded, DecodeError>, WalError> {
        // Fast path: the record lies inside one segment; decode it in place.
        let (segno, offset) = (self.opts.segno(at), self.opts.offset(at) as usize);
        let header = self
            .segment(segno, offset + HEADER_LEN)?
            .filter(|data| data.len() >= offset + HEADER_LEN)
            .map(|data| parse_header(&data[offset..]));
        match header {
            Some(Err(why)) => return Ok(Err(why)),
            Some(Ok(header)) => {
                let end = offset + header.len as usize;
                if let Some(record) = self.segment(segno, end)?.filter(|data| data.len() >= end) {
                    return Ok(self.on_timeline(decode(&record[offset..end], at), at));
                }
            }
            None => {}
        }
        let header = match self.read_span(at, HEADER_LEN as u64)? {
            Ok(bytes) => bytes,
            Err(why) => return Ok(Err(why)),
        };
        let len = match parse_header(&header) {
            Ok(header) => u64::from(header.len),
            Err(why) => return Ok(Err(why)),
        };
        let bytes = match self.read_span(at, len)? {
            Ok(bytes) => bytes,
            Err(why) => return Ok(Err(why)),
        };
        Ok(self.on_timeline(decode(&bytes, at), at))
    }

    fn on_timeline(&self, decoded: Result<Decoded, DecodeError>, at: Lsn) -> Result<Decoded, DecodeError> {
        decoded.and_then(|decoded| {
            if self.opts.accepts(decoded.timeline, at) {
                Ok(decoded)
            } else {
                Err(DecodeError::WrongTimeline(decoded.timeline))
            }
        })
    }

    /// After a bad record at an unaligned `at`, a `Resume` record at the next
    /// sector boundary that names `at` continues the log.
    fn resume_after(&mut self, at: Lsn) -> Result<Option<Lsn>, WalError> {
        if at.0 % SECTOR_SIZE == 0 {
            return Ok(None);
        }
        let boundary = Lsn(at.0.next_multiple_of(SECTOR_SIZE));
        // Only a header that frames a Resume record pays for a checksum.
        let (segno, offset) = (self.opts.segno(boundary), self.opts.offset(boundary) as usize);
        let framed = self.segment(segno, offset + HEADER_LEN)?.is_some_and(|data| {
            data.get(offset..)
                .and_then(|here| parse_header(here).ok())
                .is_some_and(|header| header.kind == RecordKind::Resume && header.len as usize == HEADER_LEN + 8)
        });
        if !framed {
            return Ok(None);
        }
        match self.decode_at(boundary)? {
            Ok(d) if d.record.kind == RecordKind::Resume && d.record.payload == at.0.to_le_bytes() => {
                Ok(Some(boundary.plus(d.encoded_len)))
            }
            _ => Ok(None),
        }
    }

    /// Decides whether a bad record at `at` is a torn tail (Ok) or corruption.
    fn check_torn_tail(&mut self, at: Lsn, why: &DecodeError) -> Result<(), WalError> {
        let segment = self.opts.file_name(self.opts.segno(at));
        // A record that begins below the floor but runs into a segment that
        // begins at or past it is incomplete, not damaged: the log is known
        // whole only below the floor (a standby's or a point-in-time
        // recovery's last fetched segment ends there).
        let runs_past_floor = matches!(why, DecodeError::SegmentMissing { segno }
            if Lsn(segno * self.opts.segment_size) >= self.durable_floor);
        if at < self.durable_floor && !runs_past_floor {
            return Err(WalError::Corrupt {
                segment,
                lsn: at,
                detail: format!("{why}, below {} which is known durable", self.durable_floor),
            });
        }
        if active(PlantedBug::TruncateAtFirstBadCrc) {
            return Ok(());
        }
        if let Some((found, durable)) = self.find_later_durable_record(at)? {
            return Err(WalError::Corrupt {
                segment,
                lsn: at,
                detail: format!(
                    "{why}, yet the valid record at {found} was appended when the log was durable through {durable}"
                ),
            });
        }
        Ok(())
    }

    fn find_later_durable_record(&mut self, at: Lsn) -> Result<Option<(Lsn, Lsn)>, WalError> {
        let names = match self.fs.list(&self.opts.dir) {
            Ok(names) => names,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(WalError::io("list", &self.opts.dir, e)),
        };
        let last_segno = names
            .iter()
            .filter_map(|name| parse_segment_file_name(name, self.opts.segment_size))
            .filter(|(timeline, segno)| self.opts.owns_segment(*timeline, *segno))
            .map(|(_, segno)| segno)
            .max();
        let Some(last_segno) = last_segno else { return Ok(None) };
        let first = at.plus(RECORD_ALIGN);
        for segno in self.opts.segno(first)..=last_segno {
            let segment_start = segno * self.opts.segment_size;
            // Missing, or a short file: nothing more in this segment.
            let Some(data) = self.segment(segno, usize::MAX)? else { continue };
            let mut offset = first.0.saturating_sub(segment_start) as usize;
            while offset < data.len() {
                let here = &data[offset..];
                let candidate = Lsn(segment_start + offset as u64);
                offset += RECORD_ALIGN as usize;
                // Most positions fail the cheap checks, and only plausible
                // headers pay for a checksum. A header's kind byte is never
                // zero, which passes over zeroed space (a segment created
                // ahead of the writer) one load per position. The evidence
                // sought is a record appended after `at` was durable, so its
                // `durable_lsn` lies in (at, candidate], on a timeline this
                // log accepts: old contents of a recycled segment (whose
                // lengths may ask for megabytes of checksum each) are passed
                // over without one.
                if here.get(8).is_none_or(|kind| *kind == 0) {
                    continue;
                }
                let plausible = peek_timeline_and_durable(here).is_none_or(|(timeline, durable)| {
                    durable > at && durable <= candidate && self.opts.accepts(timeline, candidate)
                });
                if plausible && parse_header(here).is_ok() {
                    if let Ok(decoded) = self.decode_at(candidate)? {
                        if decoded.durable_lsn > at {
                            return Ok(Some((candidate, decoded.durable_lsn)));
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    /// `len` bytes starting at `at`, across segments.
    fn read_span(&mut self, at: Lsn, len: u64) -> Result<Result<Vec<u8>, DecodeError>, WalError> {
        let mut out = Vec::with_capacity(len as usize);
        let mut pos = at;
        while (out.len() as u64) < len {
            let segno = self.opts.segno(pos);
            let offset = self.opts.offset(pos) as usize;
            let wanted = (len - out.len() as u64) as usize;
            let Some(data) = self.segment(segno, offset.saturating_add(wanted))? else {
                return Ok(Err(DecodeError::SegmentMissing { segno }));
            };
            if offset >= data.len() {
                return Ok(Err(DecodeError::Truncated { needed: len, available: out.len() as u64 }));
            }
            let take = wanted.min(data.len() - offset);
            out.extend_from_slice(&data[offset..offset + take]);
            pos = pos.plus(take as u64);
            if offset + take < self.opts.segment_size as usize && (out.len() as u64) < len {
                // The file is shorter than a segment: nothing more to read.
                return Ok(Err(DecodeError::Truncated { needed: len, available: out.len() as u64 }));
            }
        }
        Ok(Ok(out))
    }

    /// Segment `segno`'s bytes, read at least up to `upto` (or to its end,
    /// if shorter); `None` if the segment is missing.
    fn segment(&mut self, segno: u64, upto: usize) -> Result<Option<Arc<Vec<u8>>>, WalError> {
        if !self.segments.contains_key(&segno) {
            let loaded = self.open_segment(segno)?;
            self.segments.insert(segno, loaded);
        }
        let Some(Some(loaded)) = self.segments.get_mut(&segno) else { return Ok(None) };
        let (from, wanted) = (loaded.data.len(), upto.min(loaded.len));
        if from < wanted {
            // Whole pieces, so that reading a segment record by record
            // costs a read per piece.
            let to = wanted.next_multiple_of(PIECE).min(loaded.len);
            let data = Arc::make_mut(&mut loaded.data);
            data.resize(to, 0);
            if let Err(e) = loaded.file.read_exact_at(&mut data[from..], from as u64) {
                data.truncate(from);
                return Err(WalError::io("read", self.opts.path(segno), e));
            }
        }
        Ok(Some(loaded.data.clone()))
    }

    /// Segment `segno`, nothing read from it yet; `None` if it is missing.
    fn open_segment(&mut self, segno: u64) -> Result<Option<Loaded>, WalError> {
        // Keep at most the previous segment, for records that span a
        // boundary; an evicted one's memory is reused (its pages are
        // already faulted in).
        let mut spare = None;
        self.segments.retain(|cached, loaded| {
            let keep = cached + 1 >= segno && *cached <= segno;
            if !keep {
                spare = spare.take().or(loaded.take());
            }
            keep
        });
        let path = self.opts.path(segno);
        let file = match self.fs.open(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(WalError::io("open", path, e)),
            Ok(file) => file,
        };
        let len = file.len().map_err(|e| WalError::io("stat", &path, e))?.min(self.opts.segment_size) as usize;
        let data = match spare.and_then(|spare| Arc::into_inner(spare.data)) {
            Some(mut data) => {
                data.clear();
                data
            }
            None => Vec::with_capacity(len),
        };
        Ok(Some(Loaded { file, data: Arc::new(data), len }))
    }
}
