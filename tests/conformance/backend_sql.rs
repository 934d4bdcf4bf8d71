//! SQL-specific trials beyond the shared suite, named `sql::<config>::<case>`: the
//! differential checker (random claim/release/inventory sequences compared step by step
//! with the memory store), an instance moving from build request to a cell while it is
//! being listed (both list strategies), and a cell database going down during listings
//! (`down_cell=skip` and `fail`, through a TCP proxy this test kills; cells mode only):
//! listings skip it or fail, and so does `list_hosts` over all cells (what a scheduler's
//! catalog load reads), so scheduling goes on in the healthy cells; and a move between
//! cell databases interrupted after its first step (a process killed mid-build): the
//! copy it leaves is never listed, and `repair_instance` removes it; and a cell database
//! on a server of its own (a throwaway mariadbd or postgres) that is then stopped: listings
//! fail naming it, skip it and say so, or with `partial` list its instances as stubs from
//! the API database (contract line 17).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use libtest_mimic::Trial;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use unicell::error::Error;
use unicell::model::*;
use unicell::store::StoreUrl;
use unicell::store::conformance::differential;
use unicell::store::prelude::*;
use unicell::store::sql::SqlStore;

use crate::support::sql::Sql;
use crate::support::{Backend, trial, trial_on};

/// The SQL trials of every configuration.
pub fn trials(configs: &[Arc<Sql>]) -> Vec<Trial> {
    let mut out = Vec::new();
    for sql in configs {
        let backend: Arc<dyn Backend> = sql.clone();
        let name = sql.name();
        out.push(trial(format!("sql::{name}::differential"), &backend, differential_case));
        out.push(trial(format!("sql::{name}::build_request_moves_while_listing"), &backend, move_case));
        out.push(trial(format!("sql::{name}::repair_beside_live_moves_loses_nothing"), &backend, repair_race_case));
        if sql.is_cells() {
            let s = sql.clone();
            out.push(trial_on(
                format!("sql::{name}::interrupted_move_leaves_no_visible_copy"),
                false,
                move || async move { s.url().await },
                interrupted_move_case,
            ));
            let s = sql.clone();
            out.push(trial_on(
                format!("sql::{name}::down_cell_skip_and_fail"),
                false,
                move || async move { s.url().await },
                down_cell_case,
            ));
            let s = sql.clone();
            out.push(trial_on(
                format!("sql::{name}::stopped_cell_server_partial_listing"),
                false,
                move || async move { s.url().await },
                stopped_cell_server_case,
            ));
        }
    }
    out
}

async fn differential_case(store: Arc<dyn Store>) -> Result<(), String> {
    let mut runner = TestRunner::deterministic();
    let strategy = crate::support::ops::ops(40);
    for _ in 0..12 {
        let ops = strategy.new_tree(&mut runner).map_err(|e| format!("generator: {e}"))?.current();
        differential::run(store.clone(), &ops).await.map_err(|f| format!("{f} (ops: {ops:?})"))?;
    }
    Ok(())
}

fn building(token: &str, k: usize, created: Timestamp) -> Instance {
    let mut i = Instance::new_building(
        InstanceId::new_v4(),
        &format!("{token}-{k}"),
        "p-move",
        "u",
        FlavorId::new("m1").unwrap_or_else(|_| unreachable!()),
    );
    i.created_at = created;
    i.updated_at = created;
    i
}

async fn list_all(store: &dyn Store, token: &str) -> Result<Vec<InstanceId>, String> {
    let mut out = Vec::new();
    let mut marker = None;
    loop {
        let page = store
            .list_instances(&ListQuery {
                filters: InstanceFilters { name: Some(token.to_string()), ..Default::default() },
                limit: Some(7),
                marker,
                partial: false,
            })
            .await
            .map_err(|e| format!("list: {e}"))?;
        out.extend(page.instances.iter().map(|i| i.uuid));
        match page.next_marker {
            Some(m) => marker = Some(m),
            None => return Ok(out),
        }
    }
}

/// `n` BUILDING instances named `<token>-<k>` in the build requests, created 3 µs apart.
async fn create_building(store: &dyn Store, token: &str, n: usize) -> Result<Vec<InstanceId>, String> {
    let t0 = Timestamp::now();
    let mut ids = Vec::with_capacity(n);
    for k in 0..n {
        let i = building(token, k, t0.plus(Duration::from_micros(k as u64 * 3)));
        store.create_instance(&i).await.map_err(|e| e.to_string())?;
        ids.push(i.uuid);
    }
    Ok(ids)
}

/// Instances scheduled into cells (moved from build_requests to a cell database) while
/// other tasks page through the listing: every listing sees every instance exactly once.
async fn move_case(store: Arc<dyn Store>) -> Result<(), String> {
    let token = format!("mv{}", uuid::Uuid::new_v4().simple());
    let cells: Vec<CellId> = (0..4).map(|_| CellId::new_v4()).collect();
    let ids = create_building(&*store, &token, 40).await?;
    let expected: BTreeSet<InstanceId> = ids.iter().copied().collect();
    let mover = {
        let store = store.clone();
        let ids = ids.clone();
        let cells = cells.clone();
        tokio::spawn(async move {
            for (k, id) in ids.iter().enumerate() {
                let patch = InstancePatch {
                    cell: Some(Some(cells[k % cells.len()])),
                    host: Some(Some(format!("h{k}"))),
                    vm_state: Some(VmState::Active),
                    ..Default::default()
                };
                store.update_instance(*id, &patch).await?;
            }
            Ok::<(), Error>(())
        })
    };
    let mut listings = 0;
    while !mover.is_finished() || listings < 3 {
        let seen = list_all(&*store, &token).await?;
        let set: BTreeSet<InstanceId> = seen.iter().copied().collect();
        if set.len() != seen.len() {
            return Err(format!("listing {listings} repeated an instance: {seen:?}"));
        }
        if set != expected {
            return Err(format!("listing {listings} lost {:?}", expected.difference(&set).collect::<Vec<_>>()));
        }
        listings += 1;
    }
    mover.await.map_err(|e| e.to_string())?.map_err(|e| format!("update_instance: {e}"))?;
    for (k, id) in ids.iter().enumerate() {
        let i = store.get_instance(*id).await.map_err(|e| e.to_string())?;
        if i.cell != Some(cells[k % cells.len()]) {
            return Err(format!("{id} ended in {:?}", i.cell));
        }
    }
    Ok(())
}

/// `repair_instance` called while the instance is being moved, as a reaper taking over a
/// build whose replica stalled (not died) does: build request to a cell, then cell to
/// cell, each move raced by repairs of the same instance. Every instance must end where
/// its last move put it, listed once. Before the repair took the lock of the mapped row,
/// a repair that read the mapping just before a move committed deleted the moved row,
/// and the instance vanished with its mapping left behind (seen in the replicas test).
async fn repair_race_case(store: Arc<dyn Store>) -> Result<(), String> {
    use futures::StreamExt;
    let token = format!("rr{}", uuid::Uuid::new_v4().simple());
    let cells: Vec<CellId> = (0..4).map(|_| CellId::new_v4()).collect();
    let ids = create_building(&*store, &token, 120).await?;
    let cell_of = |round: usize, k: usize| cells[(k + round) % cells.len()];
    for round in 0..2 {
        let results: Vec<Result<(), String>> = futures::stream::iter(ids.clone().into_iter().enumerate())
            .map(|(k, id)| {
                let store = store.clone();
                let patch = InstancePatch {
                    cell: Some(Some(cell_of(round, k))),
                    host: Some(Some(format!("h{k}-{round}"))),
                    vm_state: Some(VmState::Active),
                    ..Default::default()
                };
                async move {
                    let repairs = async {
                        for _ in 0..3 {
                            store.repair_instance(id).await.map_err(|e| format!("repair_instance {id}: {e}"))?;
                            tokio::task::yield_now().await;
                        }
                        Ok::<(), String>(())
                    };
                    let moved =
                        async { store.update_instance(id, &patch).await.map_err(|e| format!("move {id}: {e}")) };
                    let (r, m) = tokio::join!(repairs, moved);
                    r.and(m.map(|_| ()))
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>, String>>()?;
        for (k, id) in ids.iter().enumerate() {
            let i = store.get_instance(*id).await.map_err(|e| format!("round {round}: {id} after its move: {e}"))?;
            if i.cell != Some(cell_of(round, k)) || i.host.as_deref() != Some(format!("h{k}-{round}").as_str()) {
                return Err(format!("round {round}: {id} ended in {:?} on {:?}", i.cell, i.host));
            }
        }
        let seen = list_all(&*store, &token).await?;
        let set: BTreeSet<InstanceId> = seen.iter().copied().collect();
        let expected: BTreeSet<InstanceId> = ids.iter().copied().collect();
        if set.len() != seen.len() || set != expected {
            return Err(format!(
                "round {round}: listed {} ({} distinct), missing {:?}",
                seen.len(),
                set.len(),
                expected.difference(&set).collect::<Vec<_>>()
            ));
        }
    }
    Ok(())
}

/// A TCP proxy in front of a database server that the test can cut.
struct Proxy {
    port: u16,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: (String, u16)) -> Result<Proxy, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let t2 = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let h = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                t2.lock().unwrap_or_else(|e| e.into_inner()).push(h);
            }
        });
        tasks.lock().unwrap_or_else(|e| e.into_inner()).push(accept);
        Ok(Proxy { port, tasks })
    }

    fn kill(&self) {
        for t in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            t.abort();
        }
    }
}

/// A cells-mode store URL of a test's own: API database `db` on `api`'s server, cell 0's
/// database `<db>_c0` there too, cell 1's `<db>_c1` on `cell1_server` (its path replaced),
/// and `cell_timeout`; with cell 0's URL.
fn two_cell_url(api: &url::Url, db: &str, cell1_server: &url::Url, cell_timeout: &str) -> (url::Url, url::Url) {
    let mut cell0 = api.clone();
    cell0.set_path(&format!("/{db}_c0"));
    cell0.set_query(None);
    let mut cell1 = cell1_server.clone();
    cell1.set_path(&format!("/{db}_c1"));
    let mut u = api.clone();
    u.set_path(&format!("/{db}"));
    u.set_query(None);
    u.query_pairs_mut()
        .append_pair("cell_url", cell0.as_str())
        .append_pair("cell_url", cell1.as_str())
        .append_pair("cell_timeout", cell_timeout);
    (u, cell0)
}

/// Two cells, the second behind a proxy; after the proxy dies, `down_cell=skip` lists the
/// first cell's instances (and warns), `down_cell=fail` fails with a retryable error.
async fn down_cell_case(url: String) -> Result<(), String> {
    let base = StoreUrl::parse(&url).map_err(|e| e.to_string())?;
    let api = base.expose().clone();
    let host = api.host_str().unwrap_or("127.0.0.1").to_string();
    let port = api.port().or(base.scheme().default_port()).unwrap_or(3306);
    let proxy = Proxy::start((host.clone(), port)).await?;
    let db = format!("{}_down", api.path().trim_start_matches('/'));
    let mut via_proxy = api.clone();
    via_proxy.set_query(None);
    via_proxy.set_port(Some(proxy.port)).map_err(|_| "port")?;
    let (u, _) = two_cell_url(&api, &db, &via_proxy, "2s");
    let skip_url = StoreUrl::parse(u.as_str()).map_err(|e| e.to_string())?;
    let result = async {
        let store = SqlStore::open(&skip_url).await.map_err(|e| e.to_string())?;
        let (c0, c1) = (CellId::new_v4(), CellId::new_v4());
        store.put_cell(&Cell { id: c0, name: "c0".into(), disabled: false }).await.map_err(|e| e.to_string())?;
        store.put_cell(&Cell { id: c1, name: "c1".into(), disabled: false }).await.map_err(|e| e.to_string())?;
        let token = format!("dc{}", uuid::Uuid::new_v4().simple());
        let t0 = Timestamp::now();
        let mut in_c0 = BTreeSet::new();
        for k in 0..10 {
            let mut i = building(&token, k, t0.plus(Duration::from_micros(k as u64)));
            i.cell = Some(if k % 2 == 0 { c0 } else { c1 });
            if k % 2 == 0 {
                in_c0.insert(i.uuid);
            }
            store.create_instance(&i).await.map_err(|e| e.to_string())?;
        }
        if list_all(&store, &token).await?.len() != 10 {
            return Err("before the cut, all 10 instances must be listed".to_string());
        }
        // Two compute hosts per cell (trees in the API database, host records in the cell
        // databases, as Nova's compute_nodes).
        for k in 0..4 {
            let cell = if k % 2 == 0 { c0 } else { c1 };
            let name = format!("{token}-h{k}");
            let root = ProviderId::new_v4();
            store
                .create_provider(&NewProvider {
                    id: root,
                    name: name.clone(),
                    parent: None,
                    cell: Some(cell),
                    inventories: std::collections::BTreeMap::from([
                        (ResourceClass::Vcpu, Inventory::with_total(8)),
                        (ResourceClass::MemoryMb, Inventory::with_total(16384)),
                        (ResourceClass::DiskGb, Inventory::with_total(100)),
                    ]),
                    traits: BTreeSet::new(),
                    aggregates: BTreeSet::new(),
                })
                .await
                .map_err(|e| e.to_string())?;
            store
                .put_host(&Host {
                    name: name.clone(),
                    cell,
                    root_provider: root,
                    node: name.clone(),
                    enabled: true,
                    disabled_reason: None,
                    last_heartbeat: Timestamp::now(),
                    availability_zone: None,
                    capabilities: Default::default(),
                })
                .await
                .map_err(|e| e.to_string())?;
        }
        if store.list_hosts(None).await.map_err(|e| e.to_string())?.len() != 4 {
            return Err("before the cut, list_hosts over all cells must give the 4 hosts".to_string());
        }
        let mut fail_url = u.clone();
        fail_url.query_pairs_mut().append_pair("down_cell", "fail").append_pair("create", "false");
        let failing = SqlStore::open(&StoreUrl::parse(fail_url.as_str()).map_err(|e| e.to_string())?)
            .await
            .map_err(|e| e.to_string())?;
        if list_all(&failing, &token).await?.len() != 10 {
            return Err("before the cut, the fail store must list all 10".to_string());
        }
        proxy.kill();
        let seen: BTreeSet<InstanceId> = list_all(&store, &token).await?.into_iter().collect();
        if seen != in_c0 {
            return Err(format!("down_cell=skip listed {} instances, want the 5 of cell 0", seen.len()));
        }
        match failing.list_instances(&ListQuery::default()).await {
            // The error names the cell database that is down (its label is its URL's path).
            Err(e) if e.is_retryable() && e.to_string().contains(&format!("{db}_c1")) => {}
            other => return Err(format!("down_cell=fail must fail retryably, naming cell 1, got {other:?}")),
        }
        // Scheduling goes on in the healthy cell (Nova's HostManager skips a cell that
        // fails): list_hosts over all cells gives cell 0's hosts instead of failing.
        let hosts = store.list_hosts(None).await.map_err(|e| format!("list_hosts with a cell down: {e}"))?;
        if hosts.len() != 2 || hosts.iter().any(|h| h.cell != c0) {
            return Err(format!(
                "list_hosts with cell 1 down gave {:?}",
                hosts.iter().map(|h| &h.name).collect::<Vec<_>>()
            ));
        }
        match failing.list_hosts(None).await {
            Err(e) if e.is_retryable() => {}
            other => return Err(format!("down_cell=fail list_hosts must fail retryably, got {other:?}")),
        }
        failing.close().await;
        store.close().await;
        Ok(())
    }
    .await;
    proxy.kill();
    // Drop the three databases directly (cell 1 through the real port).
    let mut direct = api.clone();
    direct.set_query(None);
    let (cleanup, _) = two_cell_url(&api, &db, &direct, "2s");
    if let Ok(c) = StoreUrl::parse(cleanup.as_str()) {
        let _ = SqlStore::drop_databases(&c).await;
    }
    result
}

/// A move interrupted after its first step (the process SIGKILLed between writing the new
/// row and repointing the mapping, as in the replicas test) leaves a stale copy of the
/// instance in the other cell database. Before the fix, a listing showed whichever copy
/// its merge met first: a server listed BUILD forever after it had become ACTIVE.
async fn interrupted_move_case(url: String) -> Result<(), String> {
    // A database of its own, so that its two cells get slots 0 and 1 (one per database).
    let base = StoreUrl::parse(&url).map_err(|e| e.to_string())?;
    let mut own = base.expose().clone();
    let db = format!("{}_stale", own.path().trim_start_matches('/'));
    own.set_path(&format!("/{db}"));
    // The shared URL says `create=false` (its databases exist); these are created here.
    let query: Vec<(String, String)> =
        own.query_pairs().filter(|(k, _)| k != "create").map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    own.query_pairs_mut().clear().extend_pairs(query);
    let own = StoreUrl::parse(own.as_str()).map_err(|e| e.to_string())?;
    let result = async {
        let store = SqlStore::open(&own).await.map_err(|e| e.to_string())?;
        let (a, b) = (CellId::new_v4(), CellId::new_v4());
        store.put_cell(&Cell { id: a, name: "a".into(), disabled: false }).await.map_err(|e| e.to_string())?;
        store.put_cell(&Cell { id: b, name: "b".into(), disabled: false }).await.map_err(|e| e.to_string())?;
        let token = format!("st{}", uuid::Uuid::new_v4().simple());
        let t0 = Timestamp::now();
        let mut ids = Vec::new();
        for k in 0..5 {
            let i = building(&token, k, t0.plus(Duration::from_micros(k as u64)));
            store.create_instance(&i).await.map_err(|e| e.to_string())?;
            ids.push(i.uuid);
        }
        // Instance 2: the dead build's move into cell a stopped after step (1); the
        // takeover then built it in cell b, where it became ACTIVE.
        let victim = ids[2];
        let mut half_moved = store.get_instance(victim).await.map_err(|e| e.to_string())?;
        half_moved.cell = Some(a);
        half_moved.host = Some("dead-host".into());
        half_moved.task_state = Some(TaskState::Spawning);
        store.interrupted_move(&half_moved, a).await.map_err(|e| format!("interrupted_move: {e}"))?;
        // While the mapping still names the build request, the listing shows that copy.
        let listed = list_all(&store, &token).await?;
        if listed.len() != 5 || listed.iter().filter(|id| **id == victim).count() != 1 {
            return Err(format!("mid-move listing: {listed:?}"));
        }
        let active = InstancePatch {
            cell: Some(Some(b)),
            host: Some(Some("live-host".into())),
            vm_state: Some(VmState::Active),
            task_state: Some(None),
            ..Default::default()
        };
        store.update_instance(victim, &active).await.map_err(|e| format!("update_instance: {e}"))?;
        for limit in [1, 2, 3, 7] {
            let mut shown = Vec::new();
            let mut marker = None;
            loop {
                let page = store
                    .list_instances(&ListQuery {
                        filters: InstanceFilters { name: Some(token.clone()), ..Default::default() },
                        limit: Some(limit),
                        marker,
                        partial: false,
                    })
                    .await
                    .map_err(|e| format!("list: {e}"))?;
                shown.extend(page.instances);
                match page.next_marker {
                    Some(m) => marker = Some(m),
                    None => break,
                }
            }
            let ids_shown: Vec<InstanceId> = shown.iter().map(|i| i.uuid).collect();
            if ids_shown.len() != 5 || ids_shown.iter().collect::<BTreeSet<_>>().len() != 5 {
                return Err(format!("limit {limit}: listed {ids_shown:?}"));
            }
            let v = shown.iter().find(|i| i.uuid == victim).ok_or("victim not listed")?;
            if v.vm_state != VmState::Active || v.cell != Some(b) {
                return Err(format!("limit {limit}: the stale copy was listed: {v:?}"));
            }
        }
        // The stale copy is still there (a status filter finds it) until the repair.
        let building_filter = ListQuery {
            filters: InstanceFilters {
                name: Some(token.clone()),
                vm_states: vec![VmState::Building],
                ..Default::default()
            },
            limit: None,
            marker: None,
            partial: false,
        };
        let before = store.list_instances(&building_filter).await.map_err(|e| e.to_string())?;
        if !before.instances.iter().any(|i| i.uuid == victim) {
            return Err("the interrupted move left no copy to repair: the test did not set up the case".into());
        }
        store.repair_instance(victim).await.map_err(|e| format!("repair_instance: {e}"))?;
        store.repair_instance(victim).await.map_err(|e| format!("repair_instance again: {e}"))?;
        let after = store.list_instances(&building_filter).await.map_err(|e| e.to_string())?;
        if after.instances.iter().any(|i| i.uuid == victim) || after.instances.len() != 4 {
            return Err(format!("after the repair, BUILDING lists {:?}", after.instances));
        }
        let got = store.get_instance(victim).await.map_err(|e| e.to_string())?;
        if got.vm_state != VmState::Active || got.cell != Some(b) {
            return Err(format!("the repair changed the instance: {got:?}"));
        }
        store.close().await;
        Ok::<(), String>(())
    }
    .await;
    SqlStore::drop_databases(&own).await.map_err(|e| format!("dropping {db}: {e}"))?;
    result
}

/// Contract line 17 on a real outage: cell 1's database lives on a server of its own
/// (started here), which is stopped after the instances are written. Then a listing
/// without `partial` fails naming the cell database (`down_cell=fail`) or skips it and names
/// it in the page (`down_cell=skip`); with `partial`, every instance of the reachable parts
/// is listed once and exactly cell 1's live instances of the project come back as stubs,
/// newest first, within the limit, never on a page with a marker.
async fn stopped_cell_server_case(url: String) -> Result<(), String> {
    use unicell::testkit::sql_server::{SqlKind, SqlServer};
    let base = StoreUrl::parse(&url).map_err(|e| e.to_string())?;
    let kind = if base.expose().scheme().starts_with("postgres") { SqlKind::Postgres } else { SqlKind::MariaDb };
    let server = tokio::task::spawn_blocking(move || SqlServer::start(kind))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("starting the cell server: {e}"))?;
    let api = base.expose().clone();
    let db = format!("{}_stop", api.path().trim_start_matches('/'));
    let own_server = url::Url::parse(&server.url()).map_err(|e| e.to_string())?;
    let (u, cell0) = two_cell_url(&api, &db, &own_server, "3s");
    let c1_label = format!("{}/{db}_c1", server.port);
    let mut server = Some(server);
    let result = async {
        let skip_url = StoreUrl::parse(u.as_str()).map_err(|e| e.to_string())?;
        let store = SqlStore::open(&skip_url).await.map_err(|e| e.to_string())?;
        let mut fail_url = u.clone();
        fail_url.query_pairs_mut().append_pair("down_cell", "fail").append_pair("create", "false");
        let failing = SqlStore::open(&StoreUrl::parse(fail_url.as_str()).map_err(|e| e.to_string())?)
            .await
            .map_err(|e| e.to_string())?;
        let (c0, c1) = (CellId::new_v4(), CellId::new_v4());
        store.put_cell(&Cell { id: c0, name: "c0".into(), disabled: false }).await.map_err(|e| e.to_string())?;
        store.put_cell(&Cell { id: c1, name: "c1".into(), disabled: false }).await.map_err(|e| e.to_string())?;
        let project = format!("p-{}", uuid::Uuid::new_v4().simple());
        let other = format!("q-{}", uuid::Uuid::new_v4().simple());
        let t0 = Timestamp::now();
        let at = |k: u64| t0.plus(Duration::from_micros(k * 10));
        // Project `project`: 6 in cell 0, 6 in cell 1 (one soft-deleted), 2 build requests;
        // project `other`: 3 in cell 1. Creation times interleave the cells.
        let (mut reachable, mut in_c1) = (BTreeSet::new(), Vec::new());
        for k in 0..12u64 {
            let mut i = building("stop", k as usize, at(k));
            i.project_id = project.clone();
            i.cell = Some(if k % 2 == 0 { c0 } else { c1 });
            store.create_instance(&i).await.map_err(|e| e.to_string())?;
            if k % 2 == 0 {
                reachable.insert(i.uuid);
            } else if k == 5 {
                store
                    .update_instance(i.uuid, &InstancePatch { deleted: Some(true), ..Default::default() })
                    .await
                    .map_err(|e| e.to_string())?;
            } else {
                in_c1.push(i.clone());
            }
        }
        for k in 12..14u64 {
            let mut i = building("stop", k as usize, at(k));
            i.project_id = project.clone();
            store.create_instance(&i).await.map_err(|e| e.to_string())?;
            reachable.insert(i.uuid);
        }
        let mut others = Vec::new();
        for k in 14..17u64 {
            let mut i = building("stop", k as usize, at(k));
            i.project_id = other.clone();
            i.cell = Some(c1);
            store.create_instance(&i).await.map_err(|e| e.to_string())?;
            others.push(i.uuid);
        }
        let mine = InstanceFilters { project_id: Some(project.clone()), ..Default::default() };
        let q =
            |limit: u32, partial: bool| ListQuery { filters: mine.clone(), limit: Some(limit), marker: None, partial };
        let before = failing.list_instances(&q(100, false)).await.map_err(|e| e.to_string())?;
        if before.instances.len() != 13 || !before.is_complete() {
            return Err(format!(
                "before the stop: {} instances, complete {}",
                before.instances.len(),
                before.is_complete()
            ));
        }

        // Stop cell 1's server (SIGTERM, wait for it to exit).
        if let Some(s) = server.take() {
            tokio::task::spawn_blocking(move || drop(s)).await.map_err(|e| e.to_string())?;
        }

        // down_cell=fail, not partial: an error naming the cell database (never a password).
        match failing.list_instances(&q(100, false)).await {
            Err(e) if e.is_retryable() && e.to_string().contains(&c1_label) => {}
            other => return Err(format!("down_cell=fail must fail retryably naming {c1_label}, got {other:?}")),
        }
        // down_cell=skip, not partial: Nova's skip, but the page names the skipped cell.
        let skipped = store.list_instances(&q(100, false)).await.map_err(|e| e.to_string())?;
        let ids: BTreeSet<InstanceId> = skipped.instances.iter().map(|i| i.uuid).collect();
        if ids != reachable || !skipped.stubs.is_empty() {
            return Err(format!("skip: listed {} (want the 8 reachable), {} stubs", ids.len(), skipped.stubs.len()));
        }
        match skipped.unreachable.as_slice() {
            [p] if p.part.contains(&c1_label) && !p.stubbed => {}
            other => return Err(format!("skip must name the one skipped cell database, got {other:?}")),
        }
        // Partial (either policy): every reachable instance once, cell 1's live ones as stubs.
        in_c1.sort_by_key(|i| i.sort_key());
        let want_stubs: Vec<InstanceId> = in_c1.iter().map(|i| i.uuid).collect();
        for s in [&store, &failing] {
            let page = s.list_instances(&q(100, true)).await.map_err(|e| e.to_string())?;
            let listed: Vec<InstanceId> = page.instances.iter().map(|i| i.uuid).collect();
            let stubs: Vec<InstanceId> = page.stubs.iter().map(|s| s.uuid).collect();
            if listed.iter().collect::<BTreeSet<_>>().len() != listed.len()
                || listed.iter().copied().collect::<BTreeSet<_>>() != reachable
            {
                return Err(format!("partial listed {listed:?}, want each of {reachable:?} once"));
            }
            if stubs != want_stubs {
                return Err(format!("partial stubs {stubs:?}, want cell 1's live instances {want_stubs:?}"));
            }
            for (stub, i) in page.stubs.iter().zip(&in_c1) {
                if stub.project_id != project || stub.created_at != Some(i.created_at) || stub.cell != Some(c1) {
                    return Err(format!("stub {stub:?} does not say what the mapping knows of {i:?}"));
                }
            }
            match page.unreachable.as_slice() {
                [p] if p.part.contains(&c1_label) && p.stubbed => {}
                other => return Err(format!("partial must name the stubbed cell database, got {other:?}")),
            }
            // Stubs fill what the reachable instances leave of the limit, newest first.
            let small = s.list_instances(&q(10, true)).await.map_err(|e| e.to_string())?;
            let want: Vec<InstanceId> = want_stubs.iter().take(2).copied().collect();
            let got: Vec<InstanceId> = small.stubs.iter().map(|s| s.uuid).collect();
            if small.instances.len() != 8 || got != want {
                return Err(format!(
                    "limit 10: {} instances and stubs {got:?}, want 8 and {want:?}",
                    small.instances.len()
                ));
            }
            // A page with a marker has no stubs (paging never repeats one).
            let marker = page.instances.first().map(|i| i.uuid);
            let next = s
                .list_instances(&ListQuery { filters: mine.clone(), limit: Some(100), marker, partial: true })
                .await
                .map_err(|e| e.to_string())?;
            if !next.stubs.is_empty() || next.instances.len() != 7 || next.is_complete() {
                return Err(format!("with a marker: {} instances, {} stubs", next.instances.len(), next.stubs.len()));
            }
            // Without a project filter, the other project's instances of cell 1 too.
            let all = s
                .list_instances(&ListQuery { limit: Some(1000), partial: true, ..Default::default() })
                .await
                .map_err(|e| e.to_string())?;
            let all_stubs: BTreeSet<InstanceId> = all.stubs.iter().map(|s| s.uuid).collect();
            if !others.iter().chain(&want_stubs).all(|id| all_stubs.contains(id)) {
                return Err("an unfiltered partial listing must stub every project's instances of cell 1".into());
            }
        }
        // One instance: its record fails naming the cell, its stub is there.
        let victim = &in_c1[0];
        match store.get_instance(victim.uuid).await {
            Err(e) if e.is_retryable() => {}
            other => return Err(format!("get_instance in the stopped cell must fail retryably, got {other:?}")),
        }
        match store.instance_stub(victim.uuid).await.map_err(|e| e.to_string())? {
            Some(s) if s.project_id == project && s.cell == Some(c1) => {}
            other => return Err(format!("instance_stub of a stopped cell's instance: {other:?}")),
        }
        failing.close().await;
        store.close().await;
        Ok(())
    }
    .await;
    if let Some(s) = server.take() {
        let _ = tokio::task::spawn_blocking(move || drop(s)).await;
    }
    // Drop the API and cell 0 databases (cell 1's went with its server).
    let mut cleanup = u.clone();
    cleanup.set_query(None);
    cleanup.query_pairs_mut().append_pair("cell_url", cell0.as_str());
    if let Ok(c) = StoreUrl::parse(cleanup.as_str()) {
        let _ = SqlStore::drop_databases(&c).await;
    }
    result
}
