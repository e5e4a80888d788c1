//! WAL segment files: naming, sizing and the mapping from LSN to file.
//!
//! The WAL is one byte stream cut into equal segments. Segment `n` holds the
//! bytes `[n * size, (n + 1) * size)` and is named, as PostgreSQL names them,
//! by 24 upper-case hex digits: the timeline, then the segment number split
//! into a high part (`n / (2^32 / size)`) and a low part (`n % (2^32 / size)`),
//! each as 8 digits. With 16 MiB segments, LSN `0/42000000` lives in
//! `000000010000000000000042`. The first segment is number 1, so no record is
//! ever written at LSN 0.

use std::path::PathBuf;

use super::error::WalError;
use super::lsn::Lsn;
use super::timeline::TimelineSwitch;

/// The default segment size: 16 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 << 20;

/// The smallest segment the format allows. Configuration requires at least
/// 1 MiB; tests use tiny segments so that rotation happens often.
const MIN_SEGMENT_SIZE: u64 = 1024;

/// The largest segment: 1 GiB.
const MAX_SEGMENT_SIZE: u64 = 1 << 30;

/// Where the WAL lives and how it is cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalOptions {
    /// The directory holding the segment files.
    pub dir: PathBuf,
    /// The timeline this server writes (1 until the first point-in-time
    /// recovery).
    pub timeline: u32,
    /// Bytes per segment: a power of two.
    pub segment_size: u64,
    /// Appended bytes beyond which an append writes the buffer out (not
    /// synced), bounding the insert buffer's memory. The simulator shrinks
    /// it so that flushes meet WAL that is written but not yet durable.
    pub write_behind_bytes: u64,
    /// The zero-fill chunk for new segments: a segment larger than this is
    /// filled in several writes.
    pub zero_fill_chunk: u64,
    /// How many retired segments a checkpoint keeps, renamed to future
    /// names, for reuse; the rest are removed.
    pub recycled_segments_max: usize,
    /// The switches that led to `timeline` (its history file), oldest
    /// first: which ancestor's segments and records hold the log below
    /// each switch point. Empty on timeline 1.
    pub history: Vec<TimelineSwitch>,
    /// How full-page images are stored in the log (`wal_compression`).
    pub compression: WalCompression,
}

/// How full-page images are stored in the log. Either way an image leaves
/// out its page's free-space hole; `Zstd` also compresses what is left when
/// that makes it smaller (the `wal_compression` config key: `"zstd"`, the
/// default, or `"off"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WalCompression {
    /// Images are stored as they are, less their hole.
    Off,
    /// Images are zstd-compressed (level 1).
    #[default]
    Zstd,
}

/// The default write-behind threshold: 4 MiB.
pub const DEFAULT_WRITE_BEHIND_BYTES: u64 = 4 << 20;

/// The default zero-fill chunk: 1 MiB.
pub const DEFAULT_ZERO_FILL_CHUNK: u64 = 1 << 20;

/// Retired segments kept for reuse by default.
pub const DEFAULT_RECYCLED_SEGMENTS_MAX: usize = 2;

impl WalOptions {
    /// Timeline 1, 16 MiB segments.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            timeline: 1,
            segment_size: DEFAULT_SEGMENT_SIZE,
            write_behind_bytes: DEFAULT_WRITE_BEHIND_BYTES,
            zero_fill_chunk: DEFAULT_ZERO_FILL_CHUNK,
            recycled_segments_max: DEFAULT_RECYCLED_SEGMENTS_MAX,
            history: Vec::new(),
            compression: WalCompression::default(),
        }
    }

    /// The same options with another segment size.
    pub fn with_segment_size(mut self, segment_size: u64) -> Self {
        self.segment_size = segment_size;
        self
    }

    /// The same options with another write-behind threshold.
    pub fn with_write_behind_bytes(mut self, bytes: u64) -> Self {
        self.write_behind_bytes = bytes;
        self
    }

    /// The same options with another zero-fill chunk.
    pub fn with_zero_fill_chunk(mut self, bytes: u64) -> Self {
        self.zero_fill_chunk = bytes;
        self
    }

    /// Checks the options.
    pub fn validate(&self) -> Result<(), WalError> {
        let size = self.segment_size;
        if !size.is_power_of_two() || !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&size) {
            return Err(WalError::Config(format!(
                "wal_segment_size {size} must be a power of two between {MIN_SEGMENT_SIZE} and {MAX_SEGMENT_SIZE} bytes"
            )));
        }
        if self.write_behind_bytes == 0 || self.zero_fill_chunk == 0 {
            return Err(WalError::Config(format!(
                "write-behind ({}) and zero-fill chunk ({}) must be at least one byte",
                self.write_behind_bytes, self.zero_fill_chunk
            )));
        }
        if self.timeline == 0 {
            return Err(WalError::Config("timeline 0 is reserved; timelines start at 1".into()));
        }
        Ok(())
    }

    /// The LSN of the first record of a new WAL: the start of segment 1.
    pub fn first_lsn(&self) -> Lsn {
        Lsn(self.segment_size)
    }

    /// The segment number holding `lsn`.
    pub fn segno(&self, lsn: Lsn) -> u64 {
        lsn.0 / self.segment_size
    }

    /// The offset of `lsn` within its segment.
    pub fn offset(&self, lsn: Lsn) -> u64 {
        lsn.0 % self.segment_size
    }

    /// The timeline whose file holds segment `segno`: the oldest one in the
    /// history that switched after the segment ends, else this one. (The
    /// segment holding a switch point is the child's.)
    pub fn timeline_of_segment(&self, segno: u64) -> u32 {
        self.history
            .iter()
            .find(|switch| segno < self.segno(switch.switch_lsn))
            .map_or(self.timeline, |switch| switch.parent)
    }

    /// Whether a record written by `timeline` at `lsn` belongs to this
    /// timeline's log: it is this timeline's, or an ancestor's from below
    /// the point where the ancestor was left.
    pub fn accepts(&self, timeline: u32, lsn: Lsn) -> bool {
        timeline == self.timeline
            || self.history.iter().any(|switch| switch.parent == timeline && lsn < switch.switch_lsn)
    }

    /// The file name of segment `segno` on this timeline's log (an
    /// ancestor's name below the last switch).
    pub fn file_name(&self, segno: u64) -> String {
        segment_file_name(self.timeline_of_segment(segno), segno, self.segment_size)
    }

    /// Whether a file named for `timeline` and `segno` is part of this
    /// timeline's log.
    pub fn owns_segment(&self, timeline: u32, segno: u64) -> bool {
        self.timeline_of_segment(segno) == timeline
    }

    /// The path of segment `segno` on this timeline's log.
    pub fn path(&self, segno: u64) -> PathBuf {
        self.dir.join(self.file_name(segno))
    }
}

/// The 24-hex-digit name of a segment.
pub fn segment_file_name(timeline: u32, segno: u64, segment_size: u64) -> String {
    let per_id = 0x1_0000_0000 / segment_size;
    format!("{timeline:08X}{:08X}{:08X}", segno / per_id, segno % per_id)
}

/// Parses a segment file name into its timeline and segment number, or `None`
/// if the name is not one (temp files, history files, …).
pub fn parse_segment_file_name(name: &str, segment_size: u64) -> Option<(u32, u64)> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)) {
        return None;
    }
    let part = |range: std::ops::Range<usize>| u32::from_str_radix(&name[range], 16).ok();
    let (timeline, high, low) = (part(0..8)?, part(8..16)?, part(16..24)?);
    let per_id = 0x1_0000_0000 / segment_size;
    if u64::from(low) >= per_id {
        return None;
    }
    Some((timeline, u64::from(high) * per_id + u64::from(low)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_postgres() {
        let size = DEFAULT_SEGMENT_SIZE;
        assert_eq!(segment_file_name(1, 0x42, size), "000000010000000000000042");
        // 256 segments of 16 MiB per 4 GiB "log id".
        assert_eq!(segment_file_name(3, 0x1FF, size), "0000000300000001000000FF");
        let opts = WalOptions::new("/wal");
        assert_eq!(opts.file_name(opts.segno(Lsn(0x4200_0010))), "000000010000000000000042");
    }

    #[test]
    fn names_parse_back_and_others_are_ignored() {
        for size in [1024, 1 << 20, DEFAULT_SEGMENT_SIZE, 1 << 30] {
            for segno in [1, 2, 255, 256, 4097, 1 << 30] {
                let name = segment_file_name(7, segno, size);
                assert_eq!(parse_segment_file_name(&name, size), Some((7, segno)), "{name}");
            }
        }
        for other in ["xlogtemp.3", "00000002.history", "00000001000000000000004g", "0000000100000000000000420"] {
            assert_eq!(parse_segment_file_name(other, DEFAULT_SEGMENT_SIZE), None, "{other}");
        }
        // A low part beyond the segments in one log id is not a name we write.
        assert_eq!(parse_segment_file_name("000000010000000000000100", DEFAULT_SEGMENT_SIZE), None);
    }

    #[test]
    fn segment_size_must_be_a_bounded_power_of_two() {
        assert!(WalOptions::new("/w").validate().is_ok());
        for bad in [0, 1000, 3 << 20, 512, 2 << 30] {
            let err = WalOptions::new("/w").with_segment_size(bad).validate().unwrap_err();
            assert!(err.to_string().contains("wal_segment_size"), "{err}");
        }
        for (write_behind, chunk) in [(0, 1 << 20), (4 << 20, 0)] {
            let opts = WalOptions::new("/w").with_write_behind_bytes(write_behind).with_zero_fill_chunk(chunk);
            let err = opts.validate().unwrap_err();
            assert!(err.to_string().contains("at least one byte"), "{err}");
        }
    }

    /// Timeline 2 branched from timeline 1 at the middle of segment 3: its
    /// log is timeline 1's records below the switch, and its own from there.
    #[test]
    fn a_timeline_takes_its_parents_records_and_segments_only_below_the_switch() {
        let size = 1u64 << 20;
        let switch_lsn = Lsn(3 * size + 4096);
        let mut opts = WalOptions::new("/w").with_segment_size(size);
        opts.timeline = 2;
        opts.history = vec![TimelineSwitch { parent: 1, switch_lsn, reason: "test".into() }];
        assert!(opts.accepts(2, Lsn(size)) && opts.accepts(2, switch_lsn));
        assert!(opts.accepts(1, Lsn(switch_lsn.0 - 8)));
        assert!(!opts.accepts(1, switch_lsn), "the parent's record at the switch is its abandoned future");
        assert!(!opts.accepts(3, Lsn(size)), "a stranger timeline");
        // The segment that holds the switch point is the child's.
        assert!(opts.owns_segment(1, 2) && !opts.owns_segment(2, 2));
        assert!(opts.owns_segment(2, 3) && !opts.owns_segment(1, 3));
        assert!(!opts.owns_segment(1, 4) && !opts.owns_segment(5, 4));
        assert_eq!(opts.file_name(2), segment_file_name(1, 2, size));
        assert_eq!(opts.file_name(3), segment_file_name(2, 3, size));
    }
}
