//! Fuzz target `redis_codec`: the check is [`unicell::testkit::fuzzing::redis_codec`], shared with the
//! stable regression replay (`tests/fuzz_regressions.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| unicell::testkit::fuzzing::redis_codec(data));
