//! CQL-specific trials beyond the shared suite, on every CQL backend:
//! `cql::<backend>::change_feed_resync_and_bad_cursor`, `cql::cassandra-2.1::crash_leftovers_are_reconciled`
//! (rows a crashed client leaves, written raw next to the store's own),
//! `differential::<backend>::random_ops_match_memory`, `cql::urls_fail_clearly_without_leaking_passwords`,
//! and `bench::cassandra-2.1::claims_per_second`, ignored unless `--ignored` is given: it
//! measures claim throughput and prints it, asserting nothing about speed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use libtest_mimic::Trial;
use unicell::model::*;
use unicell::store::conformance::differential;
use unicell::store::cql::CqlStore;
use unicell::store::prelude::*;

use crate::support::cql::Cql;
use crate::support::{Backend, Why, env_num, plain_trial, trial_on};

/// The CQL trials on `backends` (the Cassandra 2.1 one last).
pub fn trials(backends: &[Arc<Cql>]) -> Vec<Trial> {
    let mut out = Vec::new();
    for b in backends {
        out.push(differential_trial(b));
        out.push(feed_trial(b));
    }
    out.push(url_trial());
    if let Some(cassandra) = backends.iter().find(|b| b.name() == "cassandra-2.1") {
        out.push(leftovers_trial(cassandra));
        out.push(claims_per_second(cassandra));
    }
    out
}

/// Crash leftovers of the consumer index are reconciled, on the real server: rows are
/// written raw (as a crashed client would have left them) next to the store's own.
fn leftovers_trial(backend: &Arc<Cql>) -> Trial {
    let b = backend.clone();
    trial_on(
        format!("cql::{}::crash_leftovers_are_reconciled", backend.name()),
        true,
        move || async move {
            let cql = b.cql().await?;
            let addr = b.proxy_addr().ok_or_else(|| Why::Skip("needs the Cassandra 2.1 path's raw session".into()))?;
            Ok((cql, addr))
        },
        |(cql, addr)| leftovers(cql, addr),
    )
}

async fn leftovers(cql: Arc<CqlStore>, addr: std::net::SocketAddr) -> Result<(), String> {
    use uuid::Uuid;
    let ks = cql.config().keyspace.clone();
    let raw = scylla::client::session_builder::SessionBuilder::new()
        .known_node_addr(addr)
        .fetch_schema_metadata(false)
        .build()
        .await
        .map_err(|e| format!("raw session: {e}"))?;
    let store: Arc<dyn Store> = cql.clone();
    let root = ProviderId::new_v4();
    store
        .create_provider(&NewProvider {
            id: root,
            name: format!("leftovers-{}", root.0.simple()),
            parent: None,
            cell: None,
            inventories: BTreeMap::from([(ResourceClass::Vcpu, Inventory::with_total(8))]),
            traits: Default::default(),
            aggregates: Default::default(),
        })
        .await
        .map_err(|e| e.to_string())?;
    let now = Timestamp::now().as_micros();
    let index_rows = |consumer: ConsumerId| {
        let raw = &raw;
        let ks = ks.clone();
        async move {
            let r = raw
                .query_unpaged(format!("SELECT attempt FROM {ks}.consumer_trees WHERE consumer = ?"), (consumer.0,))
                .await
                .map_err(|e| e.to_string())?;
            let rows = r.into_rows_result().map_err(|e| e.to_string())?;
            let v: Vec<Uuid> =
                rows.rows::<(Uuid,)>().map_err(|e| e.to_string())?.filter_map(|r| r.ok().map(|(u,)| u)).collect();
            Ok::<Vec<Uuid>, String>(v)
        }
    };
    let insert = format!("INSERT INTO {ks}.consumer_trees (consumer, root, attempt, done, at) VALUES (?, ?, ?, ?, ?)");

    // 1. A claim that crashed after writing its index row and before its transaction: an
    //    old, unfinished row and no allocation. Ignored, then cleaned (after a serial check).
    let c1 = ConsumerId::new_v4();
    raw.query_unpaged(insert.clone(), (c1.0, root.0, Uuid::new_v4(), false, now - 600_000_000))
        .await
        .map_err(|e| e.to_string())?;
    let held = store.allocations(c1).await.map_err(|e| e.to_string())?;
    if !held.is_empty() {
        return Err(format!("a leftover index row produced allocations: {held:?}"));
    }
    if !index_rows(c1).await?.is_empty() {
        return Err("an old leftover index row was not cleaned up".into());
    }

    // 2. A claim that crashed after its transaction landed and before marking its row done:
    //    the allocation is found through the unfinished row, and released.
    let c2 = ConsumerId::new_v4();
    let req = ClaimRequest {
        consumer: c2,
        project_id: "p".into(),
        user_id: "u".into(),
        allocations: BTreeMap::from([(root, BTreeMap::from([(ResourceClass::Vcpu, 2)]))]),
        group: None,
    };
    store.claim(&req).await.map_err(|e| e.to_string())?;
    for attempt in index_rows(c2).await? {
        raw.query_unpaged(
            format!("UPDATE {ks}.consumer_trees SET done = false WHERE consumer = ? AND root = ? AND attempt = ?"),
            (c2.0, root.0, attempt),
        )
        .await
        .map_err(|e| e.to_string())?;
    }
    let held = store.allocations(c2).await.map_err(|e| e.to_string())?;
    if held.len() != 1 || held[0].allocations != req.allocations {
        return Err(format!("the landed claim is not found through its unfinished index row: {held:?}"));
    }
    let released = store.release(c2).await.map_err(|e| e.to_string())?;
    if released.roots != vec![root] {
        return Err(format!("release found {:?}, not the tree", released.roots));
    }
    let tree = store.provider_tree(root).await.map_err(|e| e.to_string())?;
    if tree.root_node().map(|n| n.used(&ResourceClass::Vcpu)) != Some(0) {
        return Err(format!("usage not returned: {:?}", tree.root_node()));
    }

    // 3. A young unfinished row may be a claim in flight: ignored, but never deleted.
    let c3 = ConsumerId::new_v4();
    raw.query_unpaged(insert, (c3.0, root.0, Uuid::new_v4(), false, now)).await.map_err(|e| e.to_string())?;
    if !store.allocations(c3).await.map_err(|e| e.to_string())?.is_empty() {
        return Err("a young index row produced allocations".into());
    }
    if index_rows(c3).await?.len() != 1 {
        return Err("a young unfinished index row (a claim in flight) was deleted".into());
    }
    if !store.release(c3).await.map_err(|e| e.to_string())?.roots.is_empty() {
        return Err("releasing a consumer that holds nothing released something".into());
    }
    Ok(())
}

/// The change feed's limits: a cursor older than the feed's retention gets `Resync`, a
/// cursor this backend did not issue is `InvalidInput`, a fresh one reports a change.
fn feed_trial(backend: &Arc<Cql>) -> Trial {
    let b = backend.clone();
    trial_on(
        format!("cql::{}::change_feed_resync_and_bad_cursor", backend.name()),
        true,
        move || async move { b.cql().await },
        |store| async move {
            let two_hours_ago = Timestamp::now().as_micros() - 7_200_000_000;
            match store.changes_since(&ChangeCursor(format!("cql1:{two_hours_ago}"))).await {
                Ok(Changes::Resync) => {}
                other => return Err(format!("an expired cursor gave {other:?}")),
            }
            match store.changes_since(&ChangeCursor("mem:12".into())).await {
                Err(unicell::Error::InvalidInput { .. }) => {}
                other => return Err(format!("a foreign cursor gave {other:?}")),
            }
            let cursor = store.change_cursor().await.map_err(|e| e.to_string())?;
            let root = ProviderId::new_v4();
            store
                .create_provider(&NewProvider {
                    id: root,
                    name: format!("feed-{}", root.0.simple()),
                    parent: None,
                    cell: None,
                    inventories: BTreeMap::new(),
                    traits: Default::default(),
                    aggregates: Default::default(),
                })
                .await
                .map_err(|e| e.to_string())?;
            match store.changes_since(&cursor).await {
                Ok(Changes::Trees { roots, .. }) if roots.contains(&root) => Ok(()),
                other => Err(format!("a new tree is missing from the feed: {other:?}")),
            }
        },
    )
}

/// Random sequences of claims, releases and inventory writes, applied to the backend and to
/// the reference memory store side by side (`conformance::differential`): every outcome,
/// error kind and usage must agree. `UNICELL_CQL_DIFF_CASES` sequences (default 24).
fn differential_trial(backend: &Arc<Cql>) -> Trial {
    let b = backend.clone();
    trial_on(
        format!("differential::{}::random_ops_match_memory", backend.name()),
        true,
        move || async move { b.cql().await },
        |store| async move {
            use proptest::test_runner::{Config, TestCaseError, TestRunner};
            let store: Arc<dyn Store> = store;
            let mut runner = TestRunner::new(Config {
                cases: env_num("UNICELL_CQL_DIFF_CASES", 24) as u32,
                failure_persistence: None,
                max_shrink_iters: 64,
                ..Config::default()
            });
            let handle = tokio::runtime::Handle::current();
            tokio::task::block_in_place(|| {
                runner.run(&crate::support::ops::ops(30), |ops| {
                    handle.block_on(differential::run(store.clone(), &ops)).map_err(|f| TestCaseError::fail(f.0))
                })
            })
            .map_err(|e| e.to_string())
        },
    )
}

/// Raw LWT throughput of the server: `tasks` tasks inserting fresh rows `IF NOT EXISTS`.
async fn lwt_ceiling(addr: std::net::SocketAddr, ks: &str, tasks: usize, seconds: u64) -> Result<String, String> {
    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_node_addr(addr)
        .fetch_schema_metadata(false)
        .build()
        .await
        .map_err(|e| format!("ceiling session: {e}"))?;
    let stmt = session
        .prepare(format!("INSERT INTO {ks}.settings (name, value) VALUES (?, 'x') IF NOT EXISTS"))
        .await
        .map_err(|e| format!("ceiling prepare: {e}"))?;
    let session = Arc::new(session);
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (session, stmt, done) = (session.clone(), stmt.clone(), done.clone());
        handles.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let name = format!("ceiling-{}", uuid::Uuid::new_v4().simple());
                if session.execute_unpaged(&stmt, (name,)).await.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    let secs = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    Ok(format!("server ceiling: {n} LWT inserts in {secs:.1} s = {:.0} LWT/s ({tasks} tasks)", n as f64 / secs))
}

/// Claims per second: `tasks` concurrent tasks, each claiming 1 VCPU for fresh consumers on
/// a pool of trees (so contention is realistic but bounded), for `seconds`.
fn claims_per_second(backend: &Arc<Cql>) -> Trial {
    let b = backend.clone();
    let name = backend.name().to_string();
    trial_on(
        format!("bench::{}::claims_per_second", backend.name()),
        true,
        move || async move { Ok((b.cql().await?, b.proxy_addr())) },
        move |(cql, proxy): (Arc<CqlStore>, Option<std::net::SocketAddr>)| async move {
            let store: Arc<dyn Store> = cql.clone();
            let tasks: usize = env_num("UNICELL_BENCH_TASKS", 32);
            let trees: usize = env_num("UNICELL_BENCH_TREES", 64);
            let seconds: u64 = env_num("UNICELL_BENCH_SECONDS", 20) as u64;
            let result = async move {
                let mut roots = Vec::new();
                for n in 0..trees {
                    let id = ProviderId::new_v4();
                    store
                        .create_provider(&NewProvider {
                            id,
                            name: format!("bench-{}-{n}", id.0.simple()),
                            parent: None,
                            cell: None,
                            inventories: BTreeMap::from([(ResourceClass::Vcpu, Inventory::with_total(1_000_000))]),
                            traits: Default::default(),
                            aggregates: Default::default(),
                        })
                        .await
                        .map_err(|e| format!("setup: {e}"))?;
                    roots.push(id);
                }
                let roots = Arc::new(roots);
                let ok = Arc::new(AtomicU64::new(0));
                let failed = Arc::new(AtomicU64::new(0));
                let deadline = Instant::now() + Duration::from_secs(seconds);
                let start = Instant::now();
                let mut handles = Vec::new();
                for t in 0..tasks {
                    let (store, roots, ok, failed) = (store.clone(), roots.clone(), ok.clone(), failed.clone());
                    handles.push(tokio::spawn(async move {
                        let mut n = t;
                        while Instant::now() < deadline {
                            n += tasks;
                            let root = roots[n % roots.len()];
                            let req = ClaimRequest {
                                consumer: ConsumerId::new_v4(),
                                project_id: "bench".into(),
                                user_id: "bench".into(),
                                allocations: BTreeMap::from([(root, BTreeMap::from([(ResourceClass::Vcpu, 1)]))]),
                                group: None,
                            };
                            match store.claim(&req).await {
                                Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                                Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                            };
                        }
                    }));
                }
                for h in handles {
                    let _ = h.await;
                }
                let secs = start.elapsed().as_secs_f64();
                let ok = ok.load(Ordering::Relaxed);
                let claims = format!(
                    "{}: {ok} claims in {secs:.1} s = {:.0} claims/s ({} failed; {tasks} tasks, {trees} trees)",
                    name,
                    ok as f64 / secs,
                    failed.load(Ordering::Relaxed)
                );
                // The server's own ceiling in the same run: the cheapest lightweight transaction
                // (INSERT ... IF NOT EXISTS of a fresh row, one Paxos round), same task count.
                let ceiling = match proxy {
                    Some(addr) => lwt_ceiling(addr, &cql.config().keyspace, tasks, seconds).await?,
                    None => "no ceiling measured for this path".to_string(),
                };
                Ok::<String, String>(format!("{claims}\n{ceiling}"))
            }
            .await?;
            println!("\n{result}");
            Ok::<(), String>(())
        },
    )
    .with_ignored_flag(true)
}

/// Opening by URL: bad input is `InvalidInput`, an unreachable server `Unavailable`, and
/// neither message carries the password.
fn url_trial() -> Trial {
    plain_trial("cql::urls_fail_clearly_without_leaking_passwords", || async {
        for (url, invalid) in [
            ("cassandra://admin:hunter2@127.0.0.1:1/Bad-Keyspace", true),
            ("scylla://admin:hunter2@127.0.0.1:1/ks?replication=simple:zero", true),
            ("scylla://admin:hunter2@127.0.0.1:1/ks?no_such_option=1", true),
            ("cassandra://admin:hunter2@127.0.0.1:1,127.0.0.1:2/ks?connect_timeout_ms=500", false),
        ] {
            let err = match unicell::store::open(url).await {
                Ok(_) => return Err(format!("{url}: opened?")),
                Err(e) => e,
            };
            let ok_kind = match &err {
                unicell::Error::InvalidInput { .. } => invalid,
                unicell::Error::Unavailable { .. } => !invalid,
                _ => false,
            };
            if !ok_kind {
                return Err(format!("{url}: unexpected error {err:?}"));
            }
            let shown = format!("{err} {err:?}");
            if shown.contains("hunter2") {
                return Err(format!("password leaked: {shown}"));
            }
        }
        Ok(())
    })
}
