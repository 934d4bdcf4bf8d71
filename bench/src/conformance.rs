//! `unicell conformance`: the store conformance suite (`unicell::store::conformance`)
//! against any store URL, case by case: the quickest way to evaluate a datastore.
//!
//! With an output directory it also writes `conformance.json` (one entry per store, each case
//! with its outcome and time), which `unicell report` shows beside the benchmarks.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::error::{Result, bail};
use crate::report;

use crate::candidate::{check_store_url, open_store};

/// One case's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct CaseOutcome {
    /// The case's name.
    pub name: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// Wall time in milliseconds.
    pub ms: f64,
    /// Why it failed (passwords masked); `None` when it passed.
    pub error: Option<String>,
}

/// The suite's outcome against one store.
#[derive(Debug, Clone, Serialize)]
pub struct StoreOutcome {
    /// The store URL, password masked.
    pub candidate: String,
    /// What the store says it is (`Store::describe`).
    pub describe: String,
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed.
    pub failed: usize,
    /// Cases run.
    pub total: usize,
    /// Wall time of the whole suite in seconds.
    pub seconds: f64,
    /// Every case, in the suite's order.
    pub cases: Vec<CaseOutcome>,
}

impl StoreOutcome {
    /// Whether every case passed.
    pub fn all_passed(&self) -> bool {
        self.failed == 0
    }
}

/// Runs every case of the conformance suite whose name contains `filter` (all without one)
/// against the store at `url`, printing one line per case and a summary. `Ok(false)` when a
/// case failed (a normal, reported outcome); the error is for what stops the run (a bad URL,
/// an unreachable server, a filter matching nothing). With `out`, also writes
/// `out/conformance.json`.
pub async fn run(url: &str, filter: Option<&str>, out: Option<&Path>) -> Result<bool> {
    let env = report::Environment::capture();
    let outcome = run_suite(url, filter).await?;
    let ok = outcome.all_passed();
    if let Some(dir) = out {
        let path = write(dir, filter, env, std::slice::from_ref(&outcome))?;
        println!("\nwrote {}", path.display());
    }
    Ok(ok)
}

/// Runs the suite against one store (see [`run`]) and returns its outcome; prints as it goes.
pub async fn run_suite(url: &str, filter: Option<&str>) -> Result<StoreOutcome> {
    let parsed = check_store_url(url)?;
    // Open once up front so that an unreachable server is one clear error, not N failures.
    let first = open_store(url).await?;
    let describe = report::redact_text(&first.describe());
    println!("conformance suite against {describe}");
    drop(first);
    let cases: Vec<_> = unicell::store::conformance::cases()
        .into_iter()
        .filter(|c| filter.is_none_or(|f| c.name.contains(f)))
        .collect();
    if cases.is_empty() {
        bail!(Invalid, "no conformance case matches --filter {filter:?}");
    }
    let mut outcomes = Vec::with_capacity(cases.len());
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
        let error = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(f)) => Some(report::redact_text(&f.to_string())),
            Err(e) => Some(format!("panicked: {}", report::redact_text(&e.to_string()))),
        };
        match &error {
            None => println!("ok      {:<60} {ms:>9.1} ms", case.name),
            Some(e) => println!("FAILED  {:<60} {ms:>9.1} ms\n        {e}", case.name),
        }
        outcomes.push(CaseOutcome { name: case.name, ok: error.is_none(), ms, error });
    }
    let failed: Vec<&str> = outcomes.iter().filter(|c| !c.ok).map(|c| c.name).collect();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "\n{} passed, {} failed of {} cases against {parsed} in {seconds:.2} s",
        outcomes.len() - failed.len(),
        failed.len(),
        outcomes.len(),
    );
    if !failed.is_empty() {
        println!("failed: {}", failed.join(", "));
    }
    Ok(StoreOutcome {
        candidate: parsed.to_string(),
        describe,
        passed: outcomes.len() - failed.len(),
        failed: failed.len(),
        total: outcomes.len(),
        seconds,
        cases: outcomes,
    })
}

#[derive(Debug, Serialize)]
struct Params<'a> {
    filter: Option<&'a str>,
    candidates: Vec<&'a str>,
}

/// Writes `dir/conformance.json` for the outcomes of one or more stores (the report's
/// `results` is the list of [`StoreOutcome`]s); returns its path.
pub fn write(
    dir: &Path,
    filter: Option<&str>,
    environment: report::Environment,
    outcomes: &[StoreOutcome],
) -> Result<std::path::PathBuf> {
    let rep = report::Report {
        bench: "conformance",
        parameters: Params { filter, candidates: outcomes.iter().map(|o| o.candidate.as_str()).collect() },
        environment,
        durability: Vec::new(),
        results: outcomes,
        notes: vec![
            "The store conformance suite (unicell::store::conformance): the same cases every backend's own tests run."
                .into(),
        ],
    };
    report::write_json(dir, "conformance", &rep)
}
