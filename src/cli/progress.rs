//! Progress bars for long phases, as `tracing` spans drawn by `tracing-indicatif`.

use tracing::Span;
use tracing_indicatif::span_ext::IndicatifSpanExt;
use tracing_indicatif::style::ProgressStyle;

/// A progress bar of `len` steps labelled `label`. Clone the span into tasks and call
/// [`inc`] from any of them; the bar disappears when the last clone is dropped.
pub fn bar(label: &str, len: u64) -> Span {
    let span = tracing::info_span!(
        target: "unicell::progress",
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
