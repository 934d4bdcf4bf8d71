//! Fuzz target `request_spec`: the check is [`unicell::testkit::fuzzing::request_spec`], shared with the
//! stable regression replay (`tests/fuzz_regressions.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| unicell::testkit::fuzzing::request_spec(data));
