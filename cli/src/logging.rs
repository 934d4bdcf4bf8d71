//! Logging through `tracing`, to stderr, sharing the terminal with the progress bars.
//!
//! `RUST_LOG` chooses what is printed (default [`DEFAULT_FILTER`]: warnings from everything,
//! progress notes from the benchmarks and the command). Progress bars are `tracing` spans
//! carrying the `indicatif.pb_show` field (`unicell_bench::progress`); they are drawn by
//! `tracing-indicatif` whatever `RUST_LOG` says, and log lines are written through its
//! writer so that a log line never tears a bar. When stderr is not a terminal the bars are
//! not drawn at all.

use std::io::IsTerminal;

use anyhow::{Context, Result};
use tracing_indicatif::IndicatifLayer;
use tracing_indicatif::filter::{IndicatifFilter, hide_indicatif_span_fields};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::DefaultFields;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The filter used when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "warn,sqlx=error,unicell_bench=info,unicell_cli=info";

/// Installs the global subscriber. Fails on a malformed `RUST_LOG`, naming it.
pub fn init() -> Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => {
            EnvFilter::try_new(&v).with_context(|| format!("RUST_LOG={v:?} is not a valid tracing filter"))?
        }
        _ => EnvFilter::new(DEFAULT_FILTER),
    };
    let indicatif = IndicatifLayer::new().with_span_field_formatter(hide_indicatif_span_fields(DefaultFields::new()));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(indicatif.get_stderr_writer())
        .with_target(true)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter);
    tracing_subscriber::registry()
        .with(fmt)
        .with(indicatif.with_filter(IndicatifFilter::new(false)))
        .try_init()
        .context("cannot install the log subscriber")?;
    Ok(())
}
