//! Progress bars for long phases, as `tracing` spans that the command's `tracing-indicatif`
//! layer draws (and that cost next to nothing when no such layer is installed).

use std::sync::Arc;

use tracing::Span;
use tracing_indicatif::span_ext::IndicatifSpanExt;
use tracing_indicatif::style::ProgressStyle;

/// A progress bar of `len` steps labelled `label`. Clone the span into tasks and call
/// [`inc`] from any of them; the bar disappears when the last clone is dropped.
pub fn bar(label: &str, len: u64) -> Span {
    let span = tracing::info_span!(
        target: "unicell_bench::progress",
        "progress",
        indicatif.pb_show = tracing::field::Empty
    );
    let style =
        ProgressStyle::with_template("{msg:>28} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    span.pb_set_style(&style);
    span.pb_set_length(len);
    span.pb_set_message(label);
    span.pb_start();
    span
}

/// Advances `bar` by `n`.
pub fn inc(bar: &Span, n: u64) {
    bar.pb_inc(n);
}

/// Shows the phases of the library's simulation (`unicell::sim::Progress`) as bars.
#[derive(Clone, Copy, Debug, Default)]
pub struct Bars;

impl unicell::sim::Progress for Bars {
    fn phase(&self, label: &str, total: u64) -> Arc<dyn unicell::sim::Phase> {
        Arc::new(BarPhase(bar(label, total)))
    }
}

struct BarPhase(Span);

impl unicell::sim::Phase for BarPhase {
    fn advance(&self, n: u64) {
        inc(&self.0, n);
    }
}
