//! `unicell conformance`: the store conformance suite (`unicell::store::conformance`)
//! against any store URL, case by case: the quickest way to evaluate a datastore.

use std::time::Instant;

use crate::error::{Result, bail};

use crate::candidate::{check_store_url, open_store};

/// Runs every case of the conformance suite whose name contains `filter` (all without one)
/// against the store at `url`, printing one line per case and a summary. `Ok(false)` when a
/// case failed (a normal, reported outcome); the error is for what stops the run (a bad URL,
/// an unreachable server, a filter matching nothing).
pub async fn run(url: &str, filter: Option<&str>) -> Result<bool> {
    let parsed = check_store_url(url)?;
    // Open once up front so that an unreachable server is one clear error, not N failures.
    let first = open_store(url).await?;
    println!("conformance suite against {}", first.describe());
    drop(first);
    let cases: Vec<_> = unicell::store::conformance::cases()
        .into_iter()
        .filter(|c| filter.is_none_or(|f| c.name.contains(f)))
        .collect();
    if cases.is_empty() {
        bail!(Invalid, "no conformance case matches --filter {filter:?}");
    }
    let (mut passed, mut failed) = (0usize, Vec::new());
    let started = Instant::now();
    for case in &cases {
        // A fresh handle per case: for memory:// that is a fresh store; cases only touch
        // what they create, so a shared server is fine too.
        let store = open_store(url).await?;
        let t = Instant::now();
        // Run each case in its own task so that a panic in a backend is reported as a
        // failure of that case instead of ending the run.
        let outcome = tokio::spawn((case.run)(store)).await;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        match outcome {
            Ok(Ok(())) => {
                passed += 1;
                println!("ok      {:<60} {ms:>9.1} ms", case.name);
            }
            Ok(Err(f)) => {
                println!("FAILED  {:<60} {ms:>9.1} ms\n        {f}", case.name);
                failed.push(case.name);
            }
            Err(e) => {
                println!("FAILED  {:<60} {ms:>9.1} ms\n        panicked: {e}", case.name);
                failed.push(case.name);
            }
        }
    }
    println!(
        "\n{} passed, {} failed of {} cases against {parsed} in {:.2} s",
        passed,
        failed.len(),
        cases.len(),
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        println!("failed: {}", failed.join(", "));
    }
    Ok(failed.is_empty())
}
