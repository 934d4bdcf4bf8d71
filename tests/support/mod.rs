//! Test support shared by the backend test binaries: turns the conformance suite into
//! named libtest-mimic trials, reported as ignored with a reason when the backend's server
//! cannot be reached.
#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub mod ops;

use libtest_mimic::{Completion, Failed, Trial};
use unicell::store::conformance;
use unicell::store::prelude::*;

/// Builds a store for one case, or says why it cannot (the trial is then ignored).
pub type Factory = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Arc<dyn Store>, Skip>> + Send>> + Send + Sync>;

/// Why a backend could not be tested here.
#[derive(Debug, Clone)]
pub struct Skip(pub String);

/// One trial per conformance case, named `conformance::<backend>::<case>`.
pub fn conformance_trials(backend: &str, factory: Factory) -> Vec<Trial> {
    conformance::cases()
        .into_iter()
        .map(|case| {
            let factory = factory.clone();
            Trial::ignorable_test(format!("conformance::{backend}::{}", case.name), move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(4)
                    .enable_all()
                    .build()
                    .map_err(|e| Failed::from(format!("tokio runtime: {e}")))?;
                rt.block_on(async move {
                    let store = match factory().await {
                        Ok(s) => s,
                        Err(Skip(reason)) => return Ok(Completion::ignored_with(reason)),
                    };
                    (case.run)(store).await.map_err(|f| Failed::from(f.0))?;
                    Ok(Completion::Completed)
                })
            })
        })
        .collect()
}
