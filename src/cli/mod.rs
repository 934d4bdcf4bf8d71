//! The `unicell` command line: argument parsing, logging, progress bars, the demo, the
//! benchmarks and their reports and charts.

pub mod args;
pub mod audit;
pub mod bench;
pub mod build;
pub mod chart;
pub mod cloud;
pub mod demo;
pub mod logging;
pub mod progress;
pub mod proxy;
pub mod report;
pub mod serve;
pub mod stats;

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use unicell::store::{self, StoreUrl};

use self::args::{BenchCommand, Cli, Command, ConformanceArgs};

/// Runs the parsed command; `Ok` carries the exit code (a failed conformance case is a
/// normal, reported outcome with a non-zero code, not an error).
pub async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Stores => {
            for scheme in store::known_schemes() {
                println!("{scheme}://");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Conformance(a) => conformance(&cli.store, a).await,
        Command::Demo(a) => demo::run(&cli.store, a).await,
        Command::Serve(a) => serve::serve(&cli.store, a).await,
        Command::Computes(a) => serve::computes(&cli.store, a).await,
        Command::Bench(b) => {
            match b {
                BenchCommand::List(a) => bench::list::run(&cli.store, a).await?,
                BenchCommand::Claims(a) => bench::claims::run(&cli.store, a).await?,
                BenchCommand::Sites(a) => bench::sites::run(&cli.store, a).await?,
                BenchCommand::Schedule(a) => bench::schedule::run(&cli.store, a).await?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Checks that `url` parses and names a scheme this build knows, with a message that names
/// the bad URL (its password masked) and the known schemes.
pub fn check_store_url(url: &str) -> Result<StoreUrl> {
    let parsed = StoreUrl::parse(url).map_err(|e| anyhow::anyhow!("bad store URL: {e}"))?;
    if !parsed.scheme().is_enabled() {
        anyhow::bail!(
            "bad store URL {parsed}: scheme {} needs a feature this build lacks; this build knows: {}",
            parsed.scheme(),
            store::known_schemes().join(", ")
        );
    }
    Ok(parsed)
}

/// Opens a store, naming it (redacted) when it fails.
pub async fn open_store(url: &str) -> Result<std::sync::Arc<dyn store::Store>> {
    let parsed = check_store_url(url)?;
    store::open(url).await.with_context(|| format!("cannot open store {parsed}"))
}

async fn conformance(url: &str, a: ConformanceArgs) -> Result<ExitCode> {
    let parsed = check_store_url(url)?;
    // Open once up front so that an unreachable server is one clear error, not N failures.
    let first = open_store(url).await?;
    println!("conformance suite against {}", first.describe());
    drop(first);
    let cases: Vec<_> = store::conformance::cases()
        .into_iter()
        .filter(|c| a.filter.as_deref().is_none_or(|f| c.name.contains(f)))
        .collect();
    if cases.is_empty() {
        anyhow::bail!("no conformance case matches --filter {:?}", a.filter);
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
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        println!("failed: {}", failed.join(", "));
        Ok(ExitCode::FAILURE)
    }
}
