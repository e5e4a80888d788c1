//! Fuzz target; the check lives in `thunderdb_sim::fuzz_checks::backup_verify`, where
//! the committed corpus also replays as an ordinary test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| thunderdb_sim::fuzz_checks::backup_verify(data));
