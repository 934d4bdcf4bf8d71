//! The embedded store, and the stores named in `UNICELL_TEST_STORES`.

use std::sync::Arc;

use futures::future::BoxFuture;
use unicell::store::StoreUrl;
use unicell::store::memory::MemoryStore;
use unicell::store::prelude::*;

use super::{Backend, Opened, Why};

/// The embedded store: a fresh one per case.
pub struct Memory;

impl Backend for Memory {
    fn name(&self) -> &str {
        "memory"
    }

    fn store(&self) -> BoxFuture<'_, Opened> {
        Box::pin(async { Ok(Arc::new(MemoryStore::new()) as Arc<dyn Store>) })
    }
}

/// [`Memory`] as a backend.
pub fn memory() -> Arc<dyn Backend> {
    Arc::new(Memory)
}

/// A store given by URL, opened afresh for each case (with a key prefix of its own when the
/// URL has one, so that cases running at the same time do not see each other's trees in a
/// change feed that reports every change under a prefix).
pub struct ByUrl {
    label: String,
    url: String,
}

impl Backend for ByUrl {
    fn name(&self) -> &str {
        &self.label
    }

    fn store(&self) -> BoxFuture<'_, Opened> {
        Box::pin(async move {
            let url = isolated(&self.url);
            let what = format!("opening store {}", self.label);
            match unicell::store::open(&url).await {
                Ok(s) => Ok(s),
                Err(e) => Err(Why::from_open_error(&what, &url, &e).await),
            }
        })
    }
}

/// The stores of `UNICELL_TEST_STORES` (comma-separated URLs), labelled by scheme
/// (`redis`, `mysql`, ...; `redis#2` when a scheme repeats, `memory#1` for a memory URL,
/// since `memory` is always there). A URL that does not parse is a backend whose trials fail
/// with the reason.
pub fn from_env() -> Vec<Arc<dyn Backend>> {
    let urls: Vec<String> = std::env::var("UNICELL_TEST_STORES")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let schemes: Vec<String> = urls
        .iter()
        .map(|u| match StoreUrl::parse(u) {
            Ok(p) => p.scheme().name().to_string(),
            Err(_) => "store".to_string(),
        })
        .collect();
    let mut out: Vec<Arc<dyn Backend>> = Vec::new();
    for (i, url) in urls.into_iter().enumerate() {
        let scheme = &schemes[i];
        let repeats = scheme == "memory" || schemes[..i].contains(scheme);
        let label = if repeats { format!("{scheme}#{}", i + 1) } else { scheme.clone() };
        out.push(Arc::new(ByUrl { label, url }));
    }
    out
}

/// `url` with its `prefix` option made unique to one case; other URLs as given.
fn isolated(url: &str) -> String {
    let Ok(parsed) = StoreUrl::parse(url) else { return url.to_string() };
    let Some(prefix) = parsed.param("prefix") else { return url.to_string() };
    let mut u = parsed.expose().clone();
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "prefix" {
                format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    u.query_pairs_mut().clear().extend_pairs(pairs);
    u.to_string()
}
