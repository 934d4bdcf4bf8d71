//! The whole conformance suite against the SQL baseline, four ways: MariaDB in cells mode
//! (4 cell databases) and single mode, PostgreSQL in cells mode and single mode. Trials are
//! named `conformance::{mariadb,postgres}-{cells,single}::<case>`.
//!
//! Each run creates its own uniquely named databases (API + cells) once, every case opens
//! its own store on them (cases only touch what they create), and the databases are
//! dropped when the run ends. A server that cannot be found is reported as ignored with the
//! reason (see `support/sql_server.rs`).

#[path = "support/sql_extra.rs"]
mod extra;
#[path = "support/sql_server.rs"]
mod sql_server;
mod support;

use std::sync::Arc;

use libtest_mimic::Trial;
use sql_server::{Server, SqlKind, find};
use support::{Factory, Skip, conformance_trials};
use unicell::store::StoreUrl;
use unicell::store::prelude::*;
use unicell::store::sql::SqlStore;

struct Config {
    name: &'static str,
    kind: SqlKind,
    query: &'static str,
}

const CONFIGS: &[Config] = &[
    Config { name: "mariadb-cells", kind: SqlKind::MariaDb, query: "cells=4" },
    Config { name: "mariadb-single", kind: SqlKind::MariaDb, query: "mode=single" },
    Config { name: "postgres-cells", kind: SqlKind::Postgres, query: "cells=4" },
    Config { name: "postgres-single", kind: SqlKind::Postgres, query: "mode=single" },
];

/// The URL (without `create=false`) a config's databases were created with, if any.
fn prepared_url(created: &[StoreUrl], cfg: &Config) -> Option<String> {
    let suffix = cfg.name.replace('-', "_");
    created.iter().find(|u| u.expose().path().ends_with(&suffix)).map(|u| u.expose().to_string())
}

fn main() {
    let args = libtest_mimic::Arguments::from_args();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let run_id = format!("uct_{}_{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
    // Servers (and containers) live until the end of main.
    let mut servers: Vec<(SqlKind, Result<Server, String>)> = Vec::new();
    for kind in [SqlKind::MariaDb, SqlKind::Postgres] {
        let s = rt.block_on(find(kind));
        servers.push((kind, s));
    }
    let mut trials: Vec<Trial> = Vec::new();
    let mut created: Vec<StoreUrl> = Vec::new();
    let mut failed: Vec<(SqlKind, String)> = Vec::new();
    for cfg in CONFIGS {
        let server = servers.iter().find(|(f, _)| *f == cfg.kind).map(|(_, s)| s).expect("server probed");
        let earlier_failure = failed.iter().find(|(f, _)| *f == cfg.kind).map(|(_, r)| r.clone());
        let prepared: Result<String, String> = match (server, earlier_failure) {
            (Err(reason), _) => Err(reason.clone()),
            (Ok(_), Some(reason)) => Err(reason),
            (Ok(server), None) => {
                let db = format!("{run_id}_{}", cfg.name.replace('-', "_"));
                let url = format!("{}/{db}?{}", server.base, cfg.query);
                rt.block_on(async {
                    let parsed = StoreUrl::parse(&url).map_err(|e| e.to_string())?;
                    match SqlStore::open(&parsed).await {
                        Ok(store) => {
                            created.push(parsed.clone());
                            store.close().await;
                            Ok(format!("{url}&create=false"))
                        }
                        Err(e) => {
                            let reason = format!("{} ({}): {e}", cfg.name, server.origin);
                            // An unreachable server is not tried again for the other mode,
                            // and only databases that may exist are dropped at the end.
                            if e.is_retryable() {
                                failed.push((cfg.kind, reason.clone()));
                            } else {
                                created.push(parsed.clone());
                            }
                            Err(reason)
                        }
                    }
                })
            }
        };
        let factory: Factory = match prepared {
            Err(reason) => {
                eprintln!("{}: ignored: {reason}", cfg.name);
                let reason = Arc::new(reason);
                Arc::new(move || {
                    let reason = reason.clone();
                    Box::pin(async move { Err(Skip(reason.to_string())) })
                })
            }
            Ok(url) => {
                let url = Arc::new(url);
                Arc::new(move || {
                    let url = url.clone();
                    Box::pin(async move {
                        let parsed = StoreUrl::parse(&url).map_err(|e| Skip(format!("bad url: {e}")))?;
                        match SqlStore::open(&parsed).await {
                            Ok(s) => Ok(Arc::new(s) as Arc<dyn Store>),
                            // The databases were created at start-up: failing now is a
                            // failure, not a reason to skip. Surface it as a store that
                            // cannot be opened by panicking inside the trial.
                            Err(e) => panic!("opening {parsed} failed: {e}"),
                        }
                    })
                })
            }
        };
        trials.extend(conformance_trials(cfg.name, factory.clone()));
        trials.extend(extra::trials(cfg.name, factory, prepared_url(&created, cfg)));
    }
    let conclusion = libtest_mimic::run(&args, trials);
    rt.block_on(async {
        for url in &created {
            if let Err(e) = SqlStore::drop_databases(url).await {
                eprintln!("could not drop the databases of {url}: {e}");
            }
        }
    });
    drop(servers);
    conclusion.exit();
}
