//! The errors of the benchmarks, the demo and the conformance runner.
//!
//! The kind tells the caller what happened: [`Error::Invalid`] is the user's to fix and
//! nothing ran; [`Error::Failed`] means the run finished and its report was written, but it
//! found something wrong; [`Error::Measurement`] means a figure could not be measured (a
//! ceiling tool missing or failing); [`Error::Store`] and [`Error::Step`] are failures of the
//! environment, the latter naming the step that failed with the cause as its `source`.
//! Messages never hold a password: store URLs are shown through `StoreUrl`'s redacting
//! `Display`.

use std::fmt::Display;

/// What went wrong in a benchmark, the demo or the conformance runner.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An option or a store URL is invalid; the message names it. Nothing ran.
    #[error("{0}")]
    Invalid(String),
    /// The run finished (its report and chart are written) but found something wrong:
    /// broken invariants, instances skipped or repeated, candidates that failed.
    #[error("{0}")]
    Failed(String),
    /// A figure could not be measured (a ceiling's tool is missing or failed).
    #[error("{0}")]
    Measurement(String),
    /// A store call failed.
    #[error(transparent)]
    Store(#[from] unicell::Error),
    /// A step failed (`context` names it; `source` says why).
    #[error("{context}")]
    Step {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Short for `std::result::Result<T, unicell_bench::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Names the step an error comes from, keeping the error as its `source`.
pub trait Context<T> {
    /// Wraps the error with `context`.
    fn context(self, context: impl Display) -> Result<T>;
    /// Wraps the error with the context `f` returns (only computed on error).
    fn with_context<D: Display>(self, f: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl Display) -> Result<T> {
        self.map_err(|e| Error::Step { context: context.to_string(), source: Box::new(e) })
    }

    fn with_context<D: Display>(self, f: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| Error::Step { context: f().to_string(), source: Box::new(e) })
    }
}

/// `bail!(Kind, "format", args)`: returns `Err(Error::Kind(format!(...)))`.
macro_rules! bail {
    ($kind:ident, $($arg:tt)+) => {
        return Err($crate::error::Error::$kind(format!($($arg)+)))
    };
}
pub(crate) use bail;

/// `e` and every error in its `source` chain, joined with ": " (the step and its cause).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
