//! Pages: the 8 KiB unit of data files.
//!
//! Every page starts with a 24-byte header (little-endian):
//!
//! | offset | field | type | meaning |
//! |---:|---|---|---|
//! | 0 | `checksum` | u32 | CRC-32 of the page number (u32 LE), then bytes 4..8192 |
//! | 4 | `version` | u8 | page format version, 1 |
//! | 5 | `kind` | u8 | [`PageKind`]; 0 is never valid |
//! | 6 | reserved | u16 | zero |
//! | 8 | `page_no` | u32 | the page's own number in its file |
//! | 12 | reserved | u32 | zero |
//! | 16 | `page_lsn` | u64 | LSN of the last WAL record applied to the page |
//! | 24 | body | bytes | kind-specific |
//!
//! Invariants:
//!
//! - The checksum is verified on every read; a page that fails it is never
//!   used silently (outside recovery, it is an error naming file and page).
//! - The checksum covers the page number, and the header repeats it, so a
//!   page written to the wrong place (a misdirected write) is detected.
//! - An all-zero page is a page that was never written (a file grown without
//!   its data); it is reported as such, distinct from damage, so recovery
//!   can rebuild it from a full-page image.
//! - WAL rule (enforced by the buffer pool): a page is written only after the
//!   WAL is durable up to its `page_lsn`.

use crate::env::SECTOR_SIZE;
use crate::wal::Lsn;

/// Bytes in a page.
pub const PAGE_SIZE: usize = 8192;

/// Bytes in a page header.
pub const PAGE_HEADER_LEN: usize = 24;

const PAGE_VERSION: u8 = 1;

const _: () = assert!(PAGE_SIZE % SECTOR_SIZE as usize == 0, "pages are whole sectors");
const _: () = assert!(PAGE_SIZE.is_power_of_two());
const _: () = assert!(PAGE_HEADER_LEN % 8 == 0, "the body is 8-byte aligned");

/// What a page holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum PageKind {
    /// A file's first page: its identity and roots.
    Meta = 1,
    /// A B+tree leaf: rows in key order.
    Leaf = 2,
    /// A B+tree internal node: separator keys and child pointers.
    Internal = 3,
    /// The continuation of a row too large for a leaf.
    Overflow = 4,
    /// A page on the free list.
    Free = 5,
}

impl PageKind {
    fn from_u8(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => PageKind::Meta,
            2 => PageKind::Leaf,
            3 => PageKind::Internal,
            4 => PageKind::Overflow,
            5 => PageKind::Free,
            _ => return None,
        })
    }
}

/// Why a page's bytes failed their checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageCheck {
    /// All zeroes: never written.
    Zeroed,
    /// Bytes that are not a page this code wrote.
    Damaged(String),
}

/// One page in memory.
#[derive(Clone, PartialEq, Eq)]
pub struct Page {
    bytes: Box<[u8; PAGE_SIZE]>,
}

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Page")
            .field("page_no", &self.page_no())
            .field("kind", &self.kind())
            .field("page_lsn", &self.page_lsn())
            .finish_non_exhaustive()
    }
}

impl Page {
    /// A fresh page of `kind` numbered `page_no`, with an empty body.
    pub fn new(page_no: u32, kind: PageKind) -> Self {
        let mut page = Page { bytes: Box::new([0; PAGE_SIZE]) };
        page.bytes[4] = PAGE_VERSION;
        page.bytes[5] = kind as u8;
        page.bytes[8..12].copy_from_slice(&page_no.to_le_bytes());
        page
    }

    /// Checks bytes read from page `page_no` and wraps them as a page.
    pub fn from_bytes(bytes: &[u8], page_no: u32) -> Result<Self, PageCheck> {
        Page::check(bytes, page_no)?;
        let mut page = Page { bytes: Box::new([0; PAGE_SIZE]) };
        page.bytes.copy_from_slice(bytes);
        Ok(page)
    }

    /// Checks bytes read from page `page_no`: size, checksum, page number,
    /// format version and kind.
    pub fn check(bytes: &[u8], page_no: u32) -> Result<(), PageCheck> {
        if bytes.len() != PAGE_SIZE {
            return Err(PageCheck::Damaged(format!("{} bytes, expected {PAGE_SIZE}", bytes.len())));
        }
        if crate::env::all_zeroes(bytes) {
            return Err(PageCheck::Zeroed);
        }
        let stored = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
        let computed = checksum(page_no, bytes);
        if stored != computed {
            let found_no = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
            let hint = if found_no != page_no && checksum(found_no, bytes) == stored {
                format!(" (it is a valid image of page {found_no}: a misdirected write)")
            } else {
                String::new()
            };
            return Err(PageCheck::Damaged(format!(
                "checksum mismatch: stored {stored:08x}, computed {computed:08x}{hint}"
            )));
        }
        let header_no = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if header_no != page_no {
            return Err(PageCheck::Damaged(format!("the header names page {header_no}")));
        }
        if bytes[4] != PAGE_VERSION {
            return Err(PageCheck::Damaged(format!("unknown page format version {}", bytes[4])));
        }
        if PageKind::from_u8(bytes[5]).is_none() {
            return Err(PageCheck::Damaged(format!("unknown page kind {}", bytes[5])));
        }
        Ok(())
    }

    /// Reads page `page_no` into this page's memory (reusing it, as the
    /// buffer pool does with a frame it evicted): `read` fills the bytes,
    /// which are then checked. On an error the contents are unspecified.
    pub(crate) fn read_from<E>(
        &mut self,
        page_no: u32,
        read: impl FnOnce(&mut [u8; PAGE_SIZE]) -> Result<(), E>,
    ) -> Result<Result<(), PageCheck>, E> {
        read(&mut self.bytes)?;
        Ok(Page::check(&self.bytes[..], page_no))
    }

    /// The page's bytes as they stand (the checksum is stamped only by
    /// [`Page::seal`]).
    pub fn bytes(&self) -> &[u8; PAGE_SIZE] {
        &self.bytes
    }

    /// The page's bytes, to change at byte level (redo of a logged delta).
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8; PAGE_SIZE] {
        &mut self.bytes
    }

    /// Makes this page a copy of `other`, in this page's own memory.
    pub fn copy_from(&mut self, other: &Page) {
        *self.bytes = *other.bytes;
    }

    /// Stamps the checksum; returns the bytes to write.
    pub fn seal(&mut self) -> &[u8; PAGE_SIZE] {
        let sum = checksum(self.page_no(), &self.bytes[..]);
        self.bytes[0..4].copy_from_slice(&sum.to_le_bytes());
        &self.bytes
    }

    /// The page's number.
    pub fn page_no(&self) -> u32 {
        u32::from_le_bytes(self.bytes[8..12].try_into().expect("4 bytes"))
    }

    /// What the page holds.
    pub fn kind(&self) -> PageKind {
        PageKind::from_u8(self.bytes[5]).expect("checked on construction")
    }

    /// The LSN of the last WAL record applied to the page.
    pub fn page_lsn(&self) -> Lsn {
        Page::lsn_of(&self.bytes[..])
    }

    /// The page LSN in a page's bytes (which [`Page::check`] passed).
    pub fn lsn_of(bytes: &[u8]) -> Lsn {
        Lsn(u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")))
    }

    /// Records that the WAL record at `lsn` has been applied. Page LSNs only
    /// move forward.
    pub fn set_page_lsn(&mut self, lsn: Lsn) {
        assert!(lsn >= self.page_lsn(), "page {} LSN going back: {} -> {lsn}", self.page_no(), self.page_lsn());
        self.bytes[16..24].copy_from_slice(&lsn.0.to_le_bytes());
    }

    /// A page from a full-page image that a WAL record carried, installed by
    /// redo as the record ending at `end` left it. The record's checksum
    /// already covered the bytes, so they are not checked again (in debug
    /// builds they are).
    pub(crate) fn from_logged_image(page_no: u32, image: Box<[u8; PAGE_SIZE]>, end: Lsn) -> Self {
        debug_assert!(Page::from_bytes(&image[..], page_no).is_ok(), "logged images are valid pages");
        let mut page = Page { bytes: image };
        page.reset_page_lsn(end);
        page
    }

    /// Sets the page LSN of a page just installed from a logged image, whose
    /// own LSN is older than the record that carried it.
    pub(crate) fn reset_page_lsn(&mut self, lsn: Lsn) {
        self.bytes[16..24].copy_from_slice(&lsn.0.to_le_bytes());
    }

    /// The kind-specific body.
    pub fn body(&self) -> &[u8] {
        &self.bytes[PAGE_HEADER_LEN..]
    }

    /// The kind-specific body, to change. The caller logs the change first.
    pub fn body_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[PAGE_HEADER_LEN..]
    }
}

/// The bytes a full-page image may leave out (page offsets): a node's free
/// space between its slots and its cells; for other kinds, the zeroes that
/// end the page. Redo rebuilds them as zeroes. Empty for bytes that are not
/// a page of a known kind.
pub fn image_hole(image: &[u8; PAGE_SIZE]) -> std::ops::Range<usize> {
    match PageKind::from_u8(image[5]) {
        Some(PageKind::Leaf | PageKind::Internal) => {
            let free = super::node::free_range(&image[PAGE_HEADER_LEN..]);
            free.start + PAGE_HEADER_LEN..free.end + PAGE_HEADER_LEN
        }
        Some(PageKind::Meta | PageKind::Overflow | PageKind::Free) => {
            let used = image.iter().rposition(|b| *b != 0).map_or(0, |last| last + 1);
            used.max(PAGE_HEADER_LEN)..PAGE_SIZE
        }
        None => PAGE_HEADER_LEN..PAGE_HEADER_LEN,
    }
}

/// Stamps the checksum of page bytes for the page their header names: the
/// WAL stamps an image this way once it has zeroed the image's hole, which
/// is how redo rebuilds it.
pub(crate) fn reseal(bytes: &mut [u8; PAGE_SIZE]) {
    let page_no = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    let sum = checksum(page_no, &bytes[..]);
    bytes[0..4].copy_from_slice(&sum.to_le_bytes());
}

fn checksum(page_no: u32, bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&page_no.to_le_bytes());
    hasher.update(&bytes[4..PAGE_SIZE]);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sealed(page_no: u32) -> Vec<u8> {
        let mut page = Page::new(page_no, PageKind::Leaf);
        page.body_mut()[..5].copy_from_slice(b"hello");
        page.set_page_lsn(Lsn(0x1234));
        page.seal().to_vec()
    }

    #[test]
    fn a_sealed_page_reads_back() {
        let page = Page::from_bytes(&sealed(7), 7).unwrap();
        assert_eq!(page.page_no(), 7);
        assert_eq!(page.kind(), PageKind::Leaf);
        assert_eq!(page.page_lsn(), Lsn(0x1234));
        assert_eq!(&page.body()[..5], b"hello");
    }

    #[test]
    fn zeroes_are_an_unwritten_page_not_damage() {
        assert_eq!(Page::from_bytes(&[0; PAGE_SIZE], 3), Err(PageCheck::Zeroed));
    }

    #[test]
    fn a_page_at_the_wrong_place_is_named_as_misdirected() {
        let Err(PageCheck::Damaged(detail)) = Page::from_bytes(&sealed(7), 9) else { panic!("accepted") };
        assert!(detail.contains("valid image of page 7"), "{detail}");
    }

    /// Found by the `page` fuzz target: a checksum computed over the page
    /// number asked for, while the header names another page.
    #[test]
    fn a_header_naming_another_page_is_damage() {
        let mut bytes = sealed(4);
        bytes[8..12].copy_from_slice(&27908u32.to_le_bytes());
        let sum = checksum(4, &bytes);
        bytes[0..4].copy_from_slice(&sum.to_le_bytes());
        let Err(PageCheck::Damaged(detail)) = Page::from_bytes(&bytes, 4) else { panic!("accepted") };
        assert_eq!(detail, "the header names page 27908");
    }

    #[test]
    #[should_panic(expected = "LSN going back")]
    fn page_lsns_never_go_back() {
        let mut page = Page::new(1, PageKind::Leaf);
        page.set_page_lsn(Lsn(100));
        page.set_page_lsn(Lsn(99));
    }

    proptest! {
        #[test]
        fn any_flipped_bit_is_detected(bit in 0..PAGE_SIZE * 8) {
            let mut bytes = sealed(7);
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(Page::from_bytes(&bytes, 7).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..PAGE_SIZE + 10), page_no: u32) {
            let _ = Page::from_bytes(&bytes, page_no);
        }
    }
}
