//! Decoding arbitrary bytes as a WAL record never panics, and whatever decodes
//! re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use thunderdb::wal::{decode, Lsn, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let lsn = Lsn(u64::from_le_bytes(data[..8].try_into().unwrap()) & !7);
    let bytes = &data[8..];
    if let Ok(decoded) = decode(bytes, lsn) {
        let mut again = Vec::new();
        let len = decoded.record.encode_into(&mut again, lsn, decoded.timeline, decoded.durable_lsn);
        assert_eq!(len, decoded.encoded_len);
        let framed = HEADER_LEN + decoded.record.payload.len();
        assert_eq!(&again[..framed], &bytes[..framed], "a valid record re-encodes to its bytes (padding aside)");
    }
});
