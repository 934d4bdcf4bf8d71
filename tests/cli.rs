//! Runs the built `unicell` binary.
