//! The whole conformance suite against the embedded store, a fresh store per case.

mod support;

use std::sync::Arc;

use support::{Factory, conformance_trials};
use unicell::store::memory::MemoryStore;
use unicell::store::prelude::*;

fn main() {
    let args = libtest_mimic::Arguments::from_args();
    let factory: Factory = Arc::new(|| Box::pin(async { Ok(Arc::new(MemoryStore::new()) as Arc<dyn Store>) }));
    libtest_mimic::run(&args, conformance_trials("memory", factory)).exit();
}
