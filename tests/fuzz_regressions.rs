//! Replays every fuzz input kept in the repository, on stable, as part of
//! `cargo test --all-targets`: each file of `fuzz/corpus/<target>/` (the minimized corpus)
//! and `fuzz/regressions/<target>/` (every crash the fuzzers found, fixed since) goes through
//! the same check as the fuzz target of that name (`unicell::testkit::fuzzing`). A check
//! panics when its invariant breaks; this test reports every failing file by path and
//! fails.

use std::path::{Path, PathBuf};
use std::time::Instant;

use unicell::testkit::fuzzing;

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

#[test]
fn every_kept_fuzz_input_passes_its_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (target, check) in fuzzing::targets() {
        let mut inputs = files(&root.join("corpus").join(target));
        let regressions = files(&root.join("regressions").join(target));
        assert!(!inputs.is_empty(), "fuzz/corpus/{target}/ is empty: commit its minimized corpus");
        inputs.extend(regressions);
        for path in inputs {
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            replayed += 1;
            if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{}: {why}", path.display()));
            }
        }
    }
    eprintln!("replayed {replayed} fuzz inputs in {:.2?}", started.elapsed());
    assert!(failures.is_empty(), "{} fuzz inputs fail their check:\n{}", failures.len(), failures.join("\n"));
}
