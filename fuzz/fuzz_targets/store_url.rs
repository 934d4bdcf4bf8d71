//! Fuzz target `store_url`: the check is [`unicell::testkit::fuzzing::store_url`], shared with the
//! stable regression replay (`tests/fuzz_regressions.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| unicell::testkit::fuzzing::store_url(data));
