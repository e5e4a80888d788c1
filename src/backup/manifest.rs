//! `backup_manifest.json`: what a backup holds, and a checksum of itself.
//!
//! The file is pretty-printed JSON whose last member is
//! `"manifest_checksum": "crc32:XXXXXXXX"`, the CRC-32 of every byte before
//! the `,` that precedes it (as PostgreSQL's backup manifest checksums the
//! bytes before its own checksum line). Checksums of files are CRC-32 too,
//! written `crc32:` and eight lower-case hex digits. LSNs are `X/Y` strings
//! and times RFC 3339 UTC, as everywhere else.

use serde::{Deserialize, Serialize};

use crate::wal::{Lsn, WalOptions};

/// The manifest's file name in a backup directory.
pub const MANIFEST_NAME: &str = "backup_manifest.json";

/// The format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

const CHECKSUM_MEMBER: &str = ",\n  \"manifest_checksum\": \"";

/// A CRC-32 as the manifest writes it.
pub fn checksum_text(crc: u32) -> String {
    format!("crc32:{crc:08x}")
}

/// How a file is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// As the server wrote it.
    None,
    /// One zstd frame of the original bytes; the stored name ends `.zst`.
    Zstd,
}

/// One file in the backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Its path in the backup directory, `/`-separated (`data/main.tdb.zst`).
    pub path: String,
    /// Where a restore puts it, relative to the server's directories
    /// (`data/main.tdb`, `wal/000000010000000000000001`).
    pub restore_path: String,
    /// The original size in bytes.
    pub size: u64,
    /// The CRC-32 of the original bytes.
    pub checksum: String,
    /// How the bytes are stored.
    pub compression: Compression,
    /// The stored size in bytes.
    pub stored_size: u64,
    /// The CRC-32 of the stored bytes.
    pub stored_checksum: String,
}

/// One WAL segment the backup needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentEntry {
    /// The segment's file name.
    pub name: String,
    /// The CRC-32 of its bytes in the backup; `None` when the backup does not
    /// include WAL and the archive must supply it.
    pub checksum: Option<String>,
}

/// Everything a backup records about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// `bk-YYYYMMDD-HHMMSS`.
    pub backup_id: String,
    /// The database's identity, 16 hex digits: a restore refuses files of
    /// another database.
    pub system_identifier: String,
    /// When the backup started and ended (RFC 3339 UTC).
    pub start_time: String,
    /// See `start_time`.
    pub end_time: String,
    /// The start checkpoint's redo point: replay starts here.
    pub start_lsn: Lsn,
    /// The durable end of the log after the last page was copied: a restore
    /// is consistent once replayed to here.
    pub end_lsn: Lsn,
    /// The oldest WAL a restore reads: `start_lsn`, or the first record of
    /// a transaction open at the start, which undo may read back.
    pub wal_start_lsn: Lsn,
    /// The timeline the WAL was written on.
    pub timeline: u32,
    /// The WAL segment size.
    pub wal_segment_size: u64,
    /// Whether `wal/` holds the segments from `wal_start_lsn` to `end_lsn`.
    pub include_wal: bool,
    /// Whether files are stored zstd-compressed.
    pub compress: bool,
    /// Pages in the data file.
    pub data_pages: u64,
    /// The data file's pages that no table used when the backup started,
    /// as inclusive ranges `[first, last]` in ascending order. The copy
    /// holds them as zeroes (their old bytes are garbage no restore reads),
    /// and a restored database finds them free again. Absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub free_pages: Vec<[u32; 2]>,
    /// Every file of the backup but the manifest.
    pub files: Vec<FileEntry>,
    /// The WAL segments from `wal_start_lsn` to `end_lsn`, in order.
    pub wal_segments: Vec<SegmentEntry>,
}

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON, or not an object.
    #[error("{MANIFEST_NAME} does not parse: {0}")]
    Parse(String),
    /// Written by another format.
    #[error("{MANIFEST_NAME} has format version {found}; this thunderdb reads version {FORMAT_VERSION}")]
    Version {
        /// The version it claims.
        found: String,
    },
    /// Its own checksum is missing or does not match.
    #[error("{MANIFEST_NAME} fails its own checksum: expected {expected}, found {found}")]
    Checksum {
        /// What the manifest says.
        expected: String,
        /// What its bytes give.
        found: String,
    },
    /// Parses, but a field is missing, unknown or of the wrong type.
    #[error("{MANIFEST_NAME} has bad fields: {0}")]
    Fields(String),
}

/// Ascending page numbers as inclusive ranges `[first, last]`.
pub fn page_ranges(pages: impl IntoIterator<Item = u32>) -> Vec<[u32; 2]> {
    let mut ranges: Vec<[u32; 2]> = Vec::new();
    for page_no in pages {
        match ranges.last_mut() {
            Some(last) if last[1].checked_add(1) == Some(page_no) => last[1] = page_no,
            _ => ranges.push([page_no, page_no]),
        }
    }
    ranges
}

/// Whether `page_no` lies in one of `ranges` (ascending, as
/// [`page_ranges`] gives them).
pub fn in_ranges(ranges: &[[u32; 2]], page_no: u32) -> bool {
    let at = ranges.partition_point(|range| range[1] < page_no);
    ranges.get(at).is_some_and(|range| range[0] <= page_no)
}

impl Manifest {
    /// The WAL options of the backup's log, read from `dir`.
    pub fn wal_options(&self, dir: impl Into<std::path::PathBuf>) -> WalOptions {
        WalOptions { timeline: self.timeline, ..WalOptions::new(dir) }.with_segment_size(self.wal_segment_size)
    }

    /// The manifest's bytes, ending with its own checksum.
    pub fn encode(&self) -> String {
        let text = serde_json::to_string_pretty(self).expect("a manifest always serializes");
        let body = text.strip_suffix("\n}").expect("a pretty JSON object ends with a closing brace");
        let crc = crc32fast::hash(body.as_bytes());
        format!("{body}{CHECKSUM_MEMBER}{}\"\n}}\n", checksum_text(crc))
    }

    /// Parses a manifest, checking its version and then its own checksum.
    /// Never panics.
    pub fn decode(text: &str) -> Result<Manifest, ManifestError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| ManifestError::Parse(e.to_string()))?;
        let serde_json::Value::Object(mut object) = value else {
            return Err(ManifestError::Parse("the top level is not a JSON object".into()));
        };
        match object.get("format_version") {
            Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(FORMAT_VERSION)) => {}
            Some(other) => return Err(ManifestError::Version { found: other.to_string() }),
            None => return Err(ManifestError::Version { found: "none".into() }),
        }
        let expected = match object.remove("manifest_checksum") {
            Some(serde_json::Value::String(s)) => s,
            _ => {
                return Err(ManifestError::Checksum {
                    expected: "a manifest_checksum member".into(),
                    found: "none".into(),
                })
            }
        };
        let found = match text.rfind(CHECKSUM_MEMBER) {
            // Nothing but the checksum itself may follow the checksummed
            // bytes, so no byte of the file can change unnoticed.
            Some(at) if text[at..] == format!("{CHECKSUM_MEMBER}{expected}\"\n}}\n") => {
                checksum_text(crc32fast::hash(&text.as_bytes()[..at]))
            }
            Some(_) => "bytes after the checksum line, or a checksum member out of place".into(),
            None => "no checksum line where the format puts it".into(),
        };
        if found != expected {
            return Err(ManifestError::Checksum { expected, found });
        }
        serde_json::from_value(serde_json::Value::Object(object)).map_err(|e| ManifestError::Fields(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            backup_id: "bk-20260115-103045".into(),
            system_identifier: "0000000100000002".into(),
            start_time: "2026-01-15T10:30:45Z".into(),
            end_time: "2026-01-15T10:31:02Z".into(),
            start_lsn: Lsn(0x1A00_0000),
            end_lsn: Lsn(0x1A3B_4C58),
            wal_start_lsn: Lsn(0x1A00_0000),
            timeline: 1,
            wal_segment_size: 16 << 20,
            include_wal: true,
            compress: true,
            data_pages: 3,
            free_pages: vec![[1, 1]],
            files: vec![FileEntry {
                path: "data/main.tdb.zst".into(),
                restore_path: "data/main.tdb".into(),
                size: 24576,
                checksum: checksum_text(1),
                compression: Compression::Zstd,
                stored_size: 100,
                stored_checksum: checksum_text(2),
            }],
            wal_segments: vec![SegmentEntry {
                name: "00000001000000000000001A".into(),
                checksum: Some(checksum_text(3)),
            }],
        }
    }

    #[test]
    fn round_trips_and_ends_with_its_checksum() {
        let text = sample().encode();
        assert!(text.contains("\"manifest_checksum\": \"crc32:"), "{text}");
        assert!(text.contains("\"start_lsn\": \"0/1A000000\""), "{text}");
        assert_eq!(Manifest::decode(&text), Ok(sample()));
    }

    #[test]
    fn refusals_say_which_check_failed() {
        let text = sample().encode();
        let edited = text.replace("\"timeline\": 1", "\"timeline\": 2");
        assert!(
            matches!(Manifest::decode(&edited), Err(ManifestError::Checksum { .. })),
            "an edit breaks the checksum"
        );
        let future = text.replace("\"format_version\": 1", "\"format_version\": 9");
        let err = Manifest::decode(&future).unwrap_err();
        assert_eq!(err, ManifestError::Version { found: "9".into() });
        assert!(err.to_string().contains("format version 9"), "{err}");
        assert!(matches!(Manifest::decode(&text[..text.len() / 2]), Err(ManifestError::Parse(_))));
        let unsigned = text.replace("\"manifest_checksum\"", "\"other\"");
        assert!(matches!(Manifest::decode(&unsigned), Err(ManifestError::Checksum { .. })));
    }

    #[test]
    fn free_pages_are_optional_and_ranges_cover_exactly_their_pages() {
        let mut manifest = sample();
        manifest.free_pages.clear();
        let text = manifest.encode();
        assert!(!text.contains("free_pages"), "no member when nothing is free: {text}");
        assert_eq!(Manifest::decode(&text), Ok(manifest));
        let pages = [0, 1, 2, 5, 7, 8, u32::MAX - 1, u32::MAX];
        let ranges = page_ranges(pages);
        assert_eq!(ranges, vec![[0, 2], [5, 5], [7, 8], [u32::MAX - 1, u32::MAX]]);
        for page_no in (0..12).chain([u32::MAX - 2, u32::MAX - 1, u32::MAX]) {
            assert_eq!(in_ranges(&ranges, page_no), pages.contains(&page_no), "page {page_no}");
        }
        assert!(!in_ranges(&[], 0));
    }

    proptest! {
        #[test]
        fn a_flipped_bit_never_passes(at in 0usize..2000, bit in 0u8..8) {
            let text = sample().encode();
            let mut bytes = text.into_bytes();
            let at = at % bytes.len();
            bytes[at] ^= 1 << bit;
            if let Ok(text) = String::from_utf8(bytes) {
                prop_assert!(Manifest::decode(&text).is_err(), "a flipped bit at {} passed", at);
            }
        }
    }
}
