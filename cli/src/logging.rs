//! Logging through `tracing`, to stderr, sharing the terminal with the progress bars.
//!
//! `RUST_LOG` chooses what is printed (default [`DEFAULT_FILTER`]: warnings from everything,
//! progress notes from the benchmarks and the command). Progress bars are `tracing` spans
//! carrying the `indicatif.pb_show` field (`unicell_bench::progress`); they are drawn by
//! `tracing-indicatif` whatever `RUST_LOG` says, and log lines are written through its
//! writer so that a log line never tears a bar. When stderr is not a terminal the bars are
//! not drawn at all.

use std::io::{IsTerminal, Write};

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
    // Records of the `log` crate (ureq, mio and others) are forwarded to `tracing`; with
    // the bridge's default maximum (TRACE) every `log::trace!` in a dependency's hot path
    // went through the subscriber only to be dropped (a tenth of the CPU of a Nova API
    // list page). The bridge now stops at the most verbose level the filter can print.
    let log_max = match filter.max_level_hint() {
        Some(l) if l == tracing::level_filters::LevelFilter::OFF => log::LevelFilter::Off,
        Some(l) if l == tracing::level_filters::LevelFilter::ERROR => log::LevelFilter::Error,
        Some(l) if l == tracing::level_filters::LevelFilter::WARN => log::LevelFilter::Warn,
        Some(l) if l == tracing::level_filters::LevelFilter::INFO => log::LevelFilter::Info,
        Some(l) if l == tracing::level_filters::LevelFilter::DEBUG => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    let indicatif = IndicatifLayer::new().with_span_field_formatter(hide_indicatif_span_fields(DefaultFields::new()));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(Redacting(indicatif.get_stderr_writer()))
        .with_target(true)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter);
    tracing_subscriber::registry()
        .with(fmt)
        .with(indicatif.with_filter(IndicatifFilter::new(false)))
        .try_init()
        .context("cannot install the log subscriber")?;
    log::set_max_level(log_max);
    Ok(())
}

/// A log writer that masks credentials ([`unicell::store::redact_text`]) in every line before
/// it reaches the terminal: a safety net under the rule that code logs only redacted URLs,
/// for fields a library fills with a raw one.
struct Redacting<M>(M);

impl<'a, M: tracing_subscriber::fmt::MakeWriter<'a>> tracing_subscriber::fmt::MakeWriter<'a> for Redacting<M> {
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter { inner: self.0.make_writer(), buf: Vec::new() }
    }
}

/// One event's writer: buffers the formatted event (the fmt layer writes an event through a
/// fresh writer) and writes it masked when flushed or dropped.
struct RedactingWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let text = unicell::store::redact_text(&String::from_utf8_lossy(&self.buf));
            self.buf.clear();
            self.inner.write_all(text.as_bytes())?;
        }
        self.inner.flush()
    }
}

impl<W: Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_masked() {
        let mut out = Vec::new();
        {
            let mut w = RedactingWriter { inner: &mut out, buf: Vec::new() };
            w.write_all(b"WARN opening url=mysql://root:hunter2@h/x?cell_url=mysql%3A%2F%2Fr%3Ahunter2%40h2%2Fc\n")
                .unwrap();
        }
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("hunter2") && text.contains("root:***@h"), "{text}");
    }
}
