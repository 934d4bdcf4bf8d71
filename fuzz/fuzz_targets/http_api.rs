//! Fuzz target `http_api`: the check is [`unicell::testkit::fuzzing::http_api`], shared with the
//! stable regression replay (`tests/fuzz_regressions.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| unicell::testkit::fuzzing::http_api(data));
