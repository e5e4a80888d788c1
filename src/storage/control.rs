//! The control file: where the last checkpoint is, and how the database was
//! left.
//!
//! It is one 512-byte sector, little-endian:
//!
//! | offset | field | type | meaning |
//! |---:|---|---|---|
//! | 0 | magic | [u8; 8] | `TDBCTRL\0` |
//! | 8 | version | u32 | 1 |
//! | 12 | state | u32 | [`ControlState`] |
//! | 16 | `checkpoint_lsn` | u64 | the last complete checkpoint's begin record |
//! | 24 | `redo_lsn` | u64 | where redo starts: the oldest recovery LSN of that checkpoint |
//! | 32 | `next_xid` | u64 | no transaction id below this was ever handed out |
//! | 40 | `timeline` | u32 | the timeline the server writes |
//! | 44 | reserved | u32 | zero |
//! | 48 | `wal_segment_size` | u64 | the WAL's segment size, fixed at initialisation |
//! | 56 | `system_id` | u64 | the database's identity, drawn once at initialisation (0: a file written before it existed) |
//! | 64 | reserved | zeroes to 508 | |
//! | 508 | crc | u32 | CRC-32 of bytes 0..508 |
//!
//! It is replaced atomically: written whole to `control.tmp`, synced, renamed
//! over `control`, and the directory synced. A crash at any point leaves the
//! old file or the new one, never a mix, so a crash mid-checkpoint leaves the
//! previous checkpoint usable.

use std::io;
use std::path::{Path, PathBuf};

use super::error::StorageError;
use crate::env::{Fs, SECTOR_SIZE};
use crate::wal::Lsn;

/// The control file's name in the data directory.
pub const CONTROL_FILE_NAME: &str = "control";

const TEMP_NAME: &str = "control.tmp";
const MAGIC: &[u8; 8] = b"TDBCTRL\0";
const VERSION: u32 = 1;
const LEN: usize = SECTOR_SIZE as usize;

const _: () = assert!(LEN == 512, "the control file is one sector");

/// How the database was left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ControlState {
    /// Shut down cleanly: the last checkpoint is the end of the log.
    ShutDown = 1,
    /// Running, or crashed while running: recovery is needed.
    InProduction = 2,
    /// Crash recovery was running.
    InCrashRecovery = 3,
    /// Point-in-time recovery was running.
    InArchiveRecovery = 4,
}

impl ControlState {
    fn from_u32(value: u32) -> Option<Self> {
        Some(match value {
            1 => ControlState::ShutDown,
            2 => ControlState::InProduction,
            3 => ControlState::InCrashRecovery,
            4 => ControlState::InArchiveRecovery,
            _ => return None,
        })
    }
}

/// The control file's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlFile {
    /// How the database was left.
    pub state: ControlState,
    /// The last complete checkpoint's begin record.
    pub checkpoint_lsn: Lsn,
    /// Where redo starts.
    pub redo_lsn: Lsn,
    /// The next transaction id to hand out.
    pub next_xid: u64,
    /// The timeline the server writes.
    pub timeline: u32,
    /// The WAL segment size the database was initialised with.
    pub wal_segment_size: u64,
    /// The database's identity: backups record it, and a restore refuses
    /// files of another database.
    pub system_id: u64,
}

impl ControlFile {
    /// Encodes the control file as one sector.
    pub fn encode(&self) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        out[0..8].copy_from_slice(MAGIC);
        out[8..12].copy_from_slice(&VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&(self.state as u32).to_le_bytes());
        out[16..24].copy_from_slice(&self.checkpoint_lsn.0.to_le_bytes());
        out[24..32].copy_from_slice(&self.redo_lsn.0.to_le_bytes());
        out[32..40].copy_from_slice(&self.next_xid.to_le_bytes());
        out[40..44].copy_from_slice(&self.timeline.to_le_bytes());
        out[48..56].copy_from_slice(&self.wal_segment_size.to_le_bytes());
        out[56..64].copy_from_slice(&self.system_id.to_le_bytes());
        let crc = crc32fast::hash(&out[..LEN - 4]);
        out[LEN - 4..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a control file, naming the first problem. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() != LEN {
            return Err(format!("{} bytes, expected {LEN}", bytes.len()));
        }
        let stored = u32::from_le_bytes(bytes[LEN - 4..].try_into().expect("4 bytes"));
        let computed = crc32fast::hash(&bytes[..LEN - 4]);
        if stored != computed {
            return Err(format!("checksum mismatch: stored {stored:08x}, computed {computed:08x}"));
        }
        if &bytes[0..8] != MAGIC {
            return Err("not a ThunderDB control file (bad magic)".into());
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        if u32_at(8) != VERSION {
            return Err(format!("control file version {} is not supported (expected {VERSION})", u32_at(8)));
        }
        let state = ControlState::from_u32(u32_at(12)).ok_or_else(|| format!("unknown state {}", u32_at(12)))?;
        let control = ControlFile {
            state,
            checkpoint_lsn: Lsn(u64_at(16)),
            redo_lsn: Lsn(u64_at(24)),
            next_xid: u64_at(32),
            timeline: u32_at(40),
            wal_segment_size: u64_at(48),
            system_id: u64_at(56),
        };
        if control.redo_lsn > control.checkpoint_lsn {
            return Err(format!("redo LSN {} is after checkpoint LSN {}", control.redo_lsn, control.checkpoint_lsn));
        }
        Ok(control)
    }

    /// Reads the control file from `dir`; `None` if there is none (a new
    /// database). A leftover temporary file from a crash is ignored.
    pub fn load(fs: &dyn Fs, dir: &Path) -> Result<Option<Self>, StorageError> {
        let path = dir.join(CONTROL_FILE_NAME);
        let file = match fs.open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io("open", path, e)),
        };
        let len = file.len().map_err(|e| StorageError::io("stat", &path, e))?;
        let mut bytes = vec![0; len.min(LEN as u64 + 1) as usize];
        file.read_exact_at(&mut bytes, 0).map_err(|e| StorageError::io("read", &path, e))?;
        Self::decode(&bytes).map(Some).map_err(|detail| StorageError::CorruptControl { path, detail })
    }

    /// Replaces the control file in `dir` atomically; durable on return.
    pub fn store(&self, fs: &dyn Fs, dir: &Path) -> Result<(), StorageError> {
        let temp = dir.join(TEMP_NAME);
        let path: PathBuf = dir.join(CONTROL_FILE_NAME);
        if fs.exists(&temp).map_err(|e| StorageError::io("stat", &temp, e))? {
            fs.remove(&temp).map_err(|e| StorageError::io("remove", &temp, e))?;
        }
        let file = fs.create(&temp).map_err(|e| StorageError::io("create", &temp, e))?;
        file.write_all_at(&self.encode(), 0).map_err(|e| StorageError::io("write", &temp, e))?;
        file.sync_all().map_err(|e| StorageError::io("sync", &temp, e))?;
        fs.rename(&temp, &path).map_err(|e| StorageError::io("rename", &temp, e))?;
        fs.sync_dir(dir).map_err(|e| StorageError::io("sync directory", dir, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::{FaultConfig, SimDisk};
    use proptest::prelude::*;

    fn control(n: u64) -> ControlFile {
        ControlFile {
            state: ControlState::InProduction,
            checkpoint_lsn: Lsn(0x1000 * n + 0x40),
            redo_lsn: Lsn(0x1000 * n),
            next_xid: 100 + n,
            timeline: 1,
            wal_segment_size: 16 << 20,
            system_id: 0x5eed_0000 + n,
        }
    }

    #[test]
    fn round_trips_and_names_damage() {
        let bytes = control(3).encode();
        assert_eq!(ControlFile::decode(&bytes), Ok(control(3)));
        let mut bad = bytes;
        bad[20] ^= 1;
        assert!(ControlFile::decode(&bad).unwrap_err().contains("checksum mismatch"));
        assert!(ControlFile::decode(&bytes[..100]).unwrap_err().contains("100 bytes"));
    }

    #[test]
    fn a_crash_at_every_step_of_a_replace_leaves_the_old_file_or_the_new_one() {
        let dir = Path::new("/db/data");
        let steps = {
            let disk = SimDisk::new(0, FaultConfig::none());
            disk.fs().create_dir_all(dir).unwrap();
            control(1).store(disk.fs().as_ref(), dir).unwrap();
            let before = disk.op_count();
            control(2).store(disk.fs().as_ref(), dir).unwrap();
            disk.op_count() - before
        };
        let mut seen = std::collections::BTreeSet::new();
        for crash_at in 0..=steps {
            for seed in 0..8 {
                let disk = SimDisk::new(seed, FaultConfig::power_loss());
                let fs = disk.fs();
                fs.create_dir_all(dir).unwrap();
                control(1).store(fs.as_ref(), dir).unwrap();
                disk.set_crash_countdown(Some(crash_at));
                let stored = control(2).store(fs.as_ref(), dir).is_ok();
                disk.crash();
                let found = ControlFile::load(disk.fs().as_ref(), dir).unwrap().expect("a control file");
                assert!(found == control(1) || found == control(2), "crash at step {crash_at}: {found:?}");
                if stored {
                    assert_eq!(found, control(2), "a completed store is durable");
                }
                seen.insert(found.next_xid);
            }
        }
        assert_eq!(seen.len(), 2, "both outcomes occur across the crash points");
    }

    #[test]
    fn a_damaged_control_file_is_an_error_naming_it() {
        let disk = SimDisk::new(1, FaultConfig::none());
        let fs = disk.fs();
        let dir = Path::new("/db/data");
        fs.create_dir_all(dir).unwrap();
        assert_eq!(ControlFile::load(fs.as_ref(), dir).unwrap(), None);
        control(1).store(fs.as_ref(), dir).unwrap();
        disk.rot(1, |p| p.ends_with(CONTROL_FILE_NAME));
        let err = ControlFile::load(fs.as_ref(), dir).unwrap_err();
        assert!(err.is_corruption());
        assert!(err.to_string().contains("/db/data/control"), "{err}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = ControlFile::decode(&bytes);
        }
    }
}
