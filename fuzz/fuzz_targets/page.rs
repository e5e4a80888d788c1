//! Checking arbitrary bytes as a page never panics, and an accepted page
//! reseals to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use thunderdb::storage::{Page, PAGE_SIZE};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let page_no = u32::from_le_bytes(data[..4].try_into().unwrap());
    let mut bytes = data[4..].to_vec();
    // Most inputs are the wrong length; pad some to a page to reach the checks.
    if bytes.len() < PAGE_SIZE && page_no % 2 == 0 {
        bytes.resize(PAGE_SIZE, 0);
    }
    if let Ok(mut page) = Page::from_bytes(&bytes, page_no) {
        assert_eq!(&page.seal()[..], &bytes[..]);
    }
});
