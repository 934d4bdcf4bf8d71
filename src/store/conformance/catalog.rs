//! Catalog cases (contract line 12).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::fixtures::*;
use super::harness::*;
use super::{case, check};
use crate::error::{Error, Kind};
use crate::model::*;
use crate::store::prelude::*;

/// The cases of this group, in the suite's order.
pub(super) fn cases() -> Vec<Case> {
    vec![
        case!("catalog::cells_hosts_flavors_aggregates", cells_hosts_flavors_aggregates),
        case!("catalog::server_groups_and_request_specs", server_groups_and_request_specs),
        case!("catalog::heartbeats_never_go_back", heartbeats_never_go_back),
        case!("catalog::writes_are_announced_in_the_feed", writes_are_announced_in_the_feed),
    ]
}

/// An enabled host record for the tree at `root` in `cell`, heartbeat at `at`.
fn host_record(cell: CellId, root: ProviderId, at: Timestamp) -> Host {
    Host {
        name: unique("compute"),
        cell,
        root_provider: root,
        node: unique("node"),
        enabled: true,
        disabled_reason: None,
        last_heartbeat: at,
        availability_zone: None,
        capabilities: BTreeMap::new(),
    }
}

/// A cell, a tree in it and a host record for the tree, heartbeat at `at`.
async fn host_in_new_cell(store: &dyn Store, at: Timestamp) -> Result<(Cell, Host), Failure> {
    let cell = Cell { id: CellId::new_v4(), name: unique("cell"), disabled: false };
    store.put_cell(&cell).await?;
    let f = make_tree(store, Some(cell.id), 8, 4096).await?;
    let host = host_record(cell.id, f.root, at);
    store.put_host(&host).await?;
    Ok((cell, host))
}

async fn heartbeats_never_go_back(store: Arc<dyn Store>) -> CaseResult {
    let t0 = Timestamp::from_micros(1_790_000_000_000_000);
    let (cell, host) = host_in_new_cell(&*store, t0).await?;
    let later = t0.plus(Duration::from_secs(10));
    store.report_host(&host.name, later).await?;
    let reported = Host { last_heartbeat: later, ..host.clone() };
    check!(store.get_host(&host.name).await? == reported, "a report must set last_heartbeat and nothing else");
    store.report_host(&host.name, t0.plus(Duration::from_secs(5))).await?;
    check!(
        store.get_host(&host.name).await?.last_heartbeat == later,
        "an older report must not move the heartbeat back"
    );
    // An operator's write carrying the heartbeat it read before the report: the record is
    // replaced, the heartbeat stays the later one.
    let disabled = Host { enabled: false, disabled_reason: Some("maintenance".into()), ..host.clone() };
    store.put_host(&disabled).await?;
    let expected = Host { last_heartbeat: later, ..disabled };
    check!(store.get_host(&host.name).await? == expected, "put_host with an older heartbeat must keep the later one");
    let listed = store.list_hosts(Some(cell.id)).await?;
    check!(listed == vec![expected.clone()], "list_hosts(cell) after a report = {listed:?}");
    for scope in [Some(cell.id), None] {
        let beats = store.host_heartbeats(scope).await?;
        let mine: Vec<_> = beats.iter().filter(|(n, _)| *n == host.name).collect();
        check!(mine == vec![&(host.name.clone(), later)], "host_heartbeats({scope:?}) gives {mine:?} for the host");
    }
    let newer = later.plus(Duration::from_secs(10));
    store.put_host(&Host { last_heartbeat: newer, ..expected.clone() }).await?;
    check!(store.get_host(&host.name).await?.last_heartbeat == newer, "put_host with a later heartbeat must set it");
    expect_err(store.report_host(&unique("nohost"), later).await, "a report of an unknown host", |e| {
        matches!(e, Error::NotFound { kind: Kind::Host, .. })
    })?;
    Ok(())
}

/// `changes_since(cursor)` must say the catalog changed, and must not show the reserved root.
async fn expect_catalog_change(store: &dyn Store, cursor: &ChangeCursor, what: &str) -> CaseResult {
    match store.changes_since(cursor).await? {
        Changes::Trees { catalog, roots, .. } => {
            check!(catalog, "{what} must set `catalog` in the change feed");
            check!(!roots.contains(&CATALOG_ROOT), "the feed must not give the reserved root as a tree: {roots:?}");
            Ok(())
        }
        Changes::Resync => Err(Failure(format!("a fresh cursor must not need a resync (after {what})"))),
    }
}

async fn writes_are_announced_in_the_feed(store: Arc<dyn Store>) -> CaseResult {
    let cursor = store.change_cursor().await?;
    let (cell, host) = host_in_new_cell(&*store, Timestamp::now()).await?;
    expect_catalog_change(&*store, &cursor, "put_cell and put_host").await?;
    let cursor = store.change_cursor().await?;
    store.put_cell(&Cell { disabled: true, ..cell }).await?;
    expect_catalog_change(&*store, &cursor, "put_cell").await?;
    let cursor = store.change_cursor().await?;
    store.put_host(&Host { enabled: false, ..host.clone() }).await?;
    expect_catalog_change(&*store, &cursor, "put_host").await?;
    let cursor = store.change_cursor().await?;
    let aggregate = Aggregate {
        id: AggregateId::new_v4(),
        name: unique("agg"),
        availability_zone: None,
        metadata: BTreeMap::new(),
    };
    store.put_aggregate(&aggregate).await?;
    expect_catalog_change(&*store, &cursor, "put_aggregate").await?;
    // (That a report is *not* announced cannot be checked here: other cases write to the
    // same store meanwhile. The backends' own tests check it on a store of their own.)
    let nil = NewProvider {
        id: CATALOG_ROOT,
        name: unique("nil"),
        parent: None,
        cell: None,
        inventories: BTreeMap::new(),
        traits: Default::default(),
        aggregates: Default::default(),
    };
    expect_err(store.create_provider(&nil).await, "a provider with the nil uuid", |e| {
        matches!(e, Error::InvalidInput { .. })
    })?;
    Ok(())
}

async fn cells_hosts_flavors_aggregates(store: Arc<dyn Store>) -> CaseResult {
    let cell = Cell { id: CellId::new_v4(), name: unique("cell"), disabled: false };
    store.put_cell(&cell).await?;
    check!(store.get_cell(cell.id).await? == cell, "cell round trip");
    check!(store.list_cells().await?.contains(&cell), "list_cells");
    let renamed = Cell { name: unique("cell2"), disabled: true, ..cell.clone() };
    store.put_cell(&renamed).await?;
    check!(store.get_cell(cell.id).await? == renamed, "put_cell must replace");
    expect_err(store.get_cell(CellId::new_v4()).await, "unknown cell", |e| {
        matches!(e, Error::NotFound { kind: Kind::Cell, .. })
    })?;

    let f = make_tree(&*store, Some(cell.id), 8, 4096).await?;
    let host = Host {
        availability_zone: Some("az1".into()),
        capabilities: BTreeMap::from([("hypervisor_type".into(), "QEMU".into())]),
        ..host_record(cell.id, f.root, Timestamp::from_micros(1_790_000_000_000_000))
    };
    store.put_host(&host).await?;
    check!(store.get_host(&host.name).await? == host, "host round trip");
    let disabled = Host { enabled: false, disabled_reason: Some("maintenance".into()), ..host.clone() };
    store.put_host(&disabled).await?;
    check!(store.get_host(&host.name).await? == disabled, "put_host must replace");
    let in_cell = store.list_hosts(Some(cell.id)).await?;
    check!(in_cell == vec![disabled.clone()], "list_hosts(cell) = {in_cell:?}");
    check!(store.list_hosts(None).await?.contains(&disabled), "list_hosts(None)");
    check!(store.list_hosts(Some(CellId::new_v4())).await?.is_empty(), "list_hosts(other cell)");
    expect_err(store.get_host(&unique("nohost")).await, "unknown host", |e| {
        matches!(e, Error::NotFound { kind: Kind::Host, .. })
    })?;

    let flavor = Flavor {
        id: FlavorId::new(unique("m1"))?,
        name: "m1.small".into(),
        vcpus: 2,
        memory_mb: 2048,
        root_gb: 20,
        ephemeral_gb: 0,
        swap_mb: 0,
        extra_specs: BTreeMap::from([
            ("resources:SRIOV_NET_VF".into(), "1".into()),
            ("trait:HW_CPU_X86_AVX2".into(), "required".into()),
        ]),
    };
    store.put_flavor(&flavor).await?;
    check!(store.get_flavor(&flavor.id).await? == flavor, "flavor round trip");
    check!(store.list_flavors().await?.contains(&flavor), "list_flavors");
    let bad = Flavor {
        id: FlavorId::new(unique("bad"))?,
        extra_specs: BTreeMap::from([("resources:CUSTOM_x".into(), "1".into())]),
        ..flavor.clone()
    };
    expect_err(store.put_flavor(&bad).await, "flavor with a malformed class", |e| {
        matches!(e, Error::InvalidInput { .. })
    })?;
    expect_err(store.get_flavor(&bad.id).await, "rejected flavor must not be stored", |e| {
        matches!(e, Error::NotFound { kind: Kind::Flavor, .. })
    })?;

    let agg = Aggregate {
        id: AggregateId::new_v4(),
        name: unique("agg"),
        availability_zone: Some("az1".into()),
        metadata: BTreeMap::from([("ssd".into(), "true".into())]),
    };
    store.put_aggregate(&agg).await?;
    check!(store.get_aggregate(agg.id).await? == agg, "aggregate round trip");
    check!(store.list_aggregates().await?.contains(&agg), "list_aggregates");
    expect_err(store.get_aggregate(AggregateId::new_v4()).await, "unknown aggregate", |e| {
        matches!(e, Error::NotFound { kind: Kind::Aggregate, .. })
    })?;
    Ok(())
}

async fn server_groups_and_request_specs(store: Arc<dyn Store>) -> CaseResult {
    let group = ServerGroup {
        id: GroupId::new_v4(),
        name: unique("grp"),
        project_id: "p".into(),
        user_id: "u".into(),
        policy: GroupPolicy::AntiAffinity,
        max_per_host: Some(2),
    };
    store.create_server_group(&group).await?;
    check!(store.get_server_group(group.id).await? == group, "group round trip");
    let second =
        ServerGroup { id: GroupId::new_v4(), policy: GroupPolicy::SoftAffinity, max_per_host: None, ..group.clone() };
    store.create_server_group(&second).await?;
    let listed = store.list_server_groups().await?;
    check!(listed.contains(&group) && listed.contains(&second), "list_server_groups shows both groups");
    check!(listed.windows(2).all(|w| w[0].id < w[1].id), "list_server_groups is ordered by id");
    store.delete_server_group(second.id).await?;
    check!(!store.list_server_groups().await?.contains(&second), "a deleted group leaves the list");
    expect_err(store.create_server_group(&group).await, "duplicate group", |e| {
        matches!(e, Error::AlreadyExists { kind: Kind::ServerGroup, .. })
    })?;
    let bad = ServerGroup { id: GroupId::new_v4(), policy: GroupPolicy::Affinity, ..group.clone() };
    expect_err(store.create_server_group(&bad).await, "affinity with max_per_host", |e| {
        matches!(e, Error::InvalidInput { .. })
    })?;
    store.delete_server_group(group.id).await?;
    expect_err(store.get_server_group(group.id).await, "deleted group", |e| {
        matches!(e, Error::NotFound { kind: Kind::ServerGroup, .. })
    })?;
    expect_err(store.delete_server_group(group.id).await, "deleting twice", |e| {
        matches!(e, Error::NotFound { kind: Kind::ServerGroup, .. })
    })?;

    let spec = RequestSpec {
        instance_uuid: InstanceId::new_v4(),
        flavor: Flavor {
            id: FlavorId::new("1")?,
            name: "tiny".into(),
            vcpus: 1,
            memory_mb: 512,
            root_gb: 1,
            ephemeral_gb: 0,
            swap_mb: 0,
            extra_specs: BTreeMap::new(),
        },
        image_properties: BTreeMap::from([("hw_architecture".into(), "x86_64".into())]),
        is_bfv: false,
        num_instances: 2,
        project_id: "p".into(),
        user_id: "u".into(),
        availability_zone: Some("az1".into()),
        hints: SchedulerHints { group: Some(group.id), same_host: vec![], different_host: vec![InstanceId::new_v4()] },
        requested_destination: None,
        ignore_hosts: vec!["h1".into()],
        force_hosts: vec![],
    };
    store.put_request_spec(&spec).await?;
    check!(store.get_request_spec(spec.instance_uuid).await? == spec, "request spec round trip");
    let changed = RequestSpec { num_instances: 3, ..spec.clone() };
    store.put_request_spec(&changed).await?;
    check!(store.get_request_spec(spec.instance_uuid).await? == changed, "put_request_spec must replace");
    store.delete_request_spec(spec.instance_uuid).await?;
    store.delete_request_spec(spec.instance_uuid).await?;
    expect_err(store.get_request_spec(spec.instance_uuid).await, "deleted spec", |e| {
        matches!(e, Error::NotFound { kind: Kind::RequestSpec, .. })
    })?;
    Ok(())
}
