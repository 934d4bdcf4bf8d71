//! The harness every case runs in: [`Case`], [`Failure`], the `check!` and `case!` macros
//! (shared with the crate's test binaries), and the helpers cases use to expect errors,
//! retry what is retryable and audit what they wrote.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::check;
use crate::error::Error;
use crate::model::*;
use crate::store::prelude::*;

/// Why a case failed: a readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub String);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Failure(message.to_string())
    }
}

impl From<Failure> for String {
    fn from(f: Failure) -> Self {
        f.0
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure(format!("unexpected store error: {e} ({e:?})"))
    }
}

/// What a case returns.
pub type CaseResult = Result<(), Failure>;

/// One named conformance case.
#[derive(Clone, Copy)]
pub struct Case {
    /// Stable name, used as the test name (`claims::replay_is_noop`).
    pub name: &'static str,
    /// Runs the case against a store.
    pub run: fn(Arc<dyn Store>) -> BoxFuture<'static, CaseResult>,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

pub(super) fn expect_err<T: std::fmt::Debug>(
    r: Result<T, Error>,
    what: &str,
    pred: impl Fn(&Error) -> bool,
) -> Result<Error, Failure> {
    match r {
        Ok(v) => Err(Failure(format!("{what}: expected an error, got Ok({v:?})"))),
        Err(e) if pred(&e) => Ok(e),
        Err(e) => Err(Failure(format!("{what}: wrong error {e} ({e:?})"))),
    }
}

/// A claim retried on retryable errors. Claims are idempotent, so replaying after a timeout
/// (outcome unknown) or a generation race is safe and tells what really happened.
pub(super) async fn claim_retrying(store: &dyn Store, req: &ClaimRequest) -> Result<Claim, Error> {
    let mut attempt = 0;
    loop {
        match store.claim(req).await {
            Err(e) if e.is_retryable() && attempt < 20 => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(5 * attempt)).await;
            }
            other => return other,
        }
    }
}

pub(super) async fn release_retrying(store: &dyn Store, consumer: ConsumerId) -> Result<Released, Error> {
    let mut attempt = 0;
    loop {
        match store.release(consumer).await {
            Err(e) if e.is_retryable() && attempt < 20 => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(5 * attempt)).await;
            }
            other => return other,
        }
    }
}

pub(super) async fn audit_clean(store: &dyn Store, roots: &[ProviderId]) -> CaseResult {
    let report = crate::store::audit::audit(store, &crate::store::audit::AuditScope::trees(roots)).await?;
    check!(
        report.is_clean(),
        "audit found violations: {}",
        report.violations.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("; ")
    );
    Ok(())
}
