//! Fault test placeholder replaced below.
fn main() {}
