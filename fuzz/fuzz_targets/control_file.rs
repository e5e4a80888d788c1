//! Decoding arbitrary bytes as a control file never panics, and whatever
//! decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use thunderdb::storage::ControlFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(control) = ControlFile::decode(data) {
        let again = control.encode();
        // Reserved bytes are not checked on decode; compare the fields.
        assert_eq!(ControlFile::decode(&again), Ok(control));
    }
});
