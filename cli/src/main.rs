//! The `unicell` command: the demo, the benchmarks and the tools to evaluate a datastore.
//!
//! A thin shell: it parses the arguments ([`args`]), sets up logging ([`logging`]), starts the
//! runtime and calls into the libraries, `unicell` (the store) and `unicell-bench` (the demo,
//! the benchmarks, the conformance runner). Adding a subcommand is a variant of
//! [`args::Command`] with its options and one arm in [`run`]; its work belongs in a library.

mod args;
mod logging;
mod serve;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use self::args::{BenchCommand, Cli, Command};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = logging::init() {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        // The command ran and reported what was wrong (a failed case, a broken invariant).
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            // Errors name URLs already masked; mask again in case a library quoted one raw.
            eprintln!("error: {}", unicell::store::redact_text(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// Runs the parsed command; `Ok(false)` when it ran and reported a failure.
async fn run(cli: Cli) -> Result<bool> {
    let store = cli.store.as_str();
    match cli.command {
        Command::Stores => {
            for scheme in unicell::store::known_schemes() {
                println!("{scheme}://");
            }
            Ok(true)
        }
        Command::Serve(a) => serve::serve(store, a).await,
        Command::Computes(a) => serve::computes(store, a).await,
        Command::Conformance(a) => {
            Ok(unicell_bench::conformance::run(store, a.filter.as_deref(), a.out.as_deref()).await?)
        }
        Command::Evaluate(a) => {
            let options = unicell_bench::evaluate::EvaluateOptions {
                stores: a.stores,
                testcontainers: a.testcontainers,
                size: a.size.parse()?,
                benches: a.benches,
                no_conformance: a.no_conformance,
                out: a.out,
                seed: a.seed,
            };
            Ok(unicell_bench::evaluate::run(store, options).await?)
        }
        Command::Report(a) => {
            let w = unicell_bench::page::write(&a.dir, a.out.as_deref())?;
            for (name, why) in &w.skipped {
                eprintln!("skipped {name}: {why}");
            }
            println!("wrote {} from {} report(s)", w.path.display(), w.reports);
            Ok(true)
        }
        Command::Demo(a) => Ok(unicell_bench::demo::run(store, a.into()).await?),
        Command::Bench(b) => {
            match b {
                BenchCommand::List(a) => unicell_bench::list::run(store, a.into()).await?,
                BenchCommand::Claims(a) => unicell_bench::claims::run(store, a.into()).await?,
                BenchCommand::Sites(a) => unicell_bench::sites::run(store, a.into()).await?,
                BenchCommand::Schedule(a) => unicell_bench::schedule::run(store, a.into()).await?,
                BenchCommand::Placement(a) => unicell_bench::placement::run(store, a.into()).await?,
                BenchCommand::ApiList(a) => unicell_bench::api_list::run(store, a.into()).await?,
                #[cfg(feature = "redis")]
                BenchCommand::Failover(a) => unicell_bench::failover::run(a.into()).await?,
                #[cfg(all(feature = "redis", feature = "sql"))]
                BenchCommand::Faults(a) => unicell_bench::faults::run(a.into()).await?,
                BenchCommand::Soak(a) => unicell_bench::soak::run(store, a.into()).await?,
            }
            Ok(true)
        }
    }
}
