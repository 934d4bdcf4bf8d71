//! Instance cases: records, soft delete, filters and Nova's paging (contract lines 13 and
//! 14), and what a healthy store answers to the degraded-listing calls (line 17; the
//! unreachable parts themselves are made by per-backend trials that stop a real server).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::fixtures::*;
use super::harness::*;
use super::{case, check};
use crate::error::{Error, Kind};
use crate::model::*;
use crate::store::prelude::*;

/// The cases of this group, in the suite's order.
pub(super) fn cases() -> Vec<Case> {
    vec![
        case!("instances::create_read_update_delete", create_read_update_delete),
        case!("instances::soft_delete_and_changes_since", soft_delete_and_changes_since),
        case!("instances::filters", filters),
        case!("instances::limit_cap_zero_and_next_marker", limit_cap_zero_and_next_marker),
        case!("instances::unknown_marker_is_an_error", unknown_marker_is_an_error),
        case!("instances::paging_under_concurrent_inserts", paging_under_concurrent_inserts),
        case!("instances::system_metadata_round_trip", system_metadata_round_trip),
        case!(
            "instances::partial_listing_of_a_healthy_store_is_complete",
            partial_listing_of_a_healthy_store_is_complete
        ),
        case!("instances::instance_stub_agrees_with_the_record", instance_stub_agrees_with_the_record),
        case!("instances::batched_updates_answer_each_on_its_own", batched_updates_answer_each_on_its_own),
    ]
}

/// `update_instances`: one result per update, in order; an update of a missing instance
/// fails alone; two updates of one instance apply in order; each result is the record as
/// stored, and each applied patch is exactly the patch.
async fn batched_updates_answer_each_on_its_own(store: Arc<dyn Store>) -> CaseResult {
    let project = unique("p");
    let mut made = Vec::new();
    for n in 0..3 {
        let i = new_instance(&project, &format!("vm-{n}"), Timestamp::now());
        store.create_instance(&i).await?;
        made.push(i);
    }
    let host = |h: &str| InstancePatch {
        vm_state: Some(VmState::Active),
        task_state: Some(None),
        host: Some(Some(h.to_string())),
        ..InstancePatch::default()
    };
    let missing = InstanceId::new_v4();
    let tagged = InstancePatch { tags: Some(BTreeSet::from(["batched".to_string()])), ..InstancePatch::default() };
    let batch = vec![
        (made[0].uuid, host("compute-0")),
        (missing, host("compute-x")),
        (made[1].uuid, host("compute-1")),
        (made[2].uuid, host("compute-2")),
        (made[0].uuid, tagged.clone()),
    ];
    let results = store.update_instances(&batch).await?;
    check!(results.len() == batch.len(), "{} results for a batch of {}", results.len(), batch.len());
    check!(
        matches!(&results[1], Err(Error::NotFound { kind: Kind::Instance, .. })),
        "update of a missing instance in a batch must fail alone with NotFound: {:?}",
        results[1]
    );
    for (n, at) in [(1usize, 2usize), (2, 3)] {
        let got = results[at].as_ref().map_err(|e| Failure(format!("update {at} failed: {e}")))?;
        let mut want = made[n].clone();
        want.apply(&host(&format!("compute-{n}")), got.updated_at);
        check!(*got == want, "batched update {at}: got {got:?}, want {want:?}");
        check!(store.get_instance(made[n].uuid).await? == *got, "batched update {at} is what the store holds");
    }
    // Instance 0 was patched twice: its last result holds both patches.
    let last = results[4].as_ref().map_err(|e| Failure(format!("second update of instance 0 failed: {e}")))?;
    check!(
        last.host.as_deref() == Some("compute-0") && last.tags.contains("batched") && last.vm_state == VmState::Active,
        "two updates of one instance in a batch apply in order: {last:?}"
    );
    check!(store.get_instance(made[0].uuid).await? == *last, "the last update of instance 0 is what the store holds");
    check!(store.update_instances(&[]).await?.is_empty(), "an empty batch must answer an empty list");
    // A batch without repeats (the pipelined path on backends that have one).
    let again: Vec<(InstanceId, InstancePatch)> = made.iter().map(|i| (i.uuid, tagged.clone())).collect();
    for (r, i) in store.update_instances(&again).await?.into_iter().zip(&made) {
        let r = r.map_err(|e| Failure(format!("update of {} failed: {e}", i.uuid)))?;
        check!(r.tags.contains("batched") && r.host.is_some(), "a repeated patch keeps the earlier fields: {r:?}");
    }
    Ok(())
}

async fn create_read_update_delete(store: Arc<dyn Store>) -> CaseResult {
    let project = unique("p");
    let mut i = new_instance(&project, "vm-1", Timestamp::now());
    i.metadata.insert("role".into(), "web".into());
    i.tags.insert("blue".into());
    store.create_instance(&i).await?;
    check!(store.get_instance(i.uuid).await? == i, "instance round trip must preserve every field");
    expect_err(store.create_instance(&i).await, "duplicate instance", |e| {
        matches!(e, Error::AlreadyExists { kind: Kind::Instance, .. })
    })?;
    let cell = CellId::new_v4();
    let launched = Timestamp::now();
    let patch = InstancePatch {
        vm_state: Some(VmState::Active),
        task_state: Some(None),
        cell: Some(Some(cell)),
        host: Some(Some("compute-1".into())),
        node: Some(Some("node-1".into())),
        launched_at: Some(Some(launched)),
        availability_zone: Some(Some("az1".into())),
        tags: Some(BTreeSet::from(["blue".to_string(), "prod".to_string()])),
        ..InstancePatch::default()
    };
    let updated = store.update_instance(i.uuid, &patch).await?;
    let mut want = i.clone();
    want.apply(&patch, updated.updated_at);
    check!(updated == want, "update must apply exactly the patch: got {updated:?}, want {want:?}");
    check!(updated.updated_at >= i.updated_at, "updated_at must not go backwards");
    check!(updated.created_at == i.created_at, "created_at is immutable");
    check!(store.get_instance(i.uuid).await? == updated, "read after update");
    let fault = Fault { code: 500, message: "No valid host".into(), details: "x".into(), created_at: Timestamp::now() };
    let cleared = store
        .update_instance(
            i.uuid,
            &InstancePatch {
                vm_state: Some(VmState::Error),
                host: Some(None),
                node: Some(None),
                fault: Some(Some(fault.clone())),
                ..InstancePatch::default()
            },
        )
        .await?;
    check!(cleared.host.is_none() && cleared.node.is_none(), "Some(None) must clear host and node");
    check!(cleared.fault == Some(fault), "fault must round trip");
    check!(cleared.cell == Some(cell), "fields not in the patch are kept");
    // Moves between cells and back to no cell (a backend may keep each cell apart, as the
    // SQL baseline's cell databases): the record follows, whole.
    for to in [Some(CellId::new_v4()), Some(CellId::new_v4()), None, Some(cell)] {
        let moved =
            store.update_instance(i.uuid, &InstancePatch { cell: Some(to), ..InstancePatch::default() }).await?;
        check!(moved.cell == to && moved.fault == cleared.fault, "moved to cell {to:?}: {moved:?}");
        check!(store.get_instance(i.uuid).await? == moved, "read after a move to cell {to:?}");
    }
    store.delete_instance(i.uuid).await?;
    expect_err(store.get_instance(i.uuid).await, "read deleted", |e| {
        matches!(e, Error::NotFound { kind: Kind::Instance, .. })
    })?;
    expect_err(store.delete_instance(i.uuid).await, "delete twice", |e| {
        matches!(e, Error::NotFound { kind: Kind::Instance, .. })
    })?;
    expect_err(store.update_instance(i.uuid, &InstancePatch::default()).await, "update deleted", |e| {
        matches!(e, Error::NotFound { kind: Kind::Instance, .. })
    })?;
    let page = store
        .list_instances(&ListQuery {
            filters: InstanceFilters { project_id: Some(project.clone()), ..Default::default() },
            ..Default::default()
        })
        .await?;
    check!(page.instances.is_empty(), "a deleted instance must not be listed");
    let mut bad = new_instance(&project, "bad", Timestamp::now());
    bad.project_id.clear();
    expect_err(store.create_instance(&bad).await, "instance without project", |e| {
        matches!(e, Error::InvalidInput { .. })
    })?;
    Ok(())
}

async fn soft_delete_and_changes_since(store: Arc<dyn Store>) -> CaseResult {
    let project = unique("p");
    let old = Timestamp::now().minus(std::time::Duration::from_secs(3600));
    let a = new_instance(&project, "a", old);
    let b = new_instance(&project, "b", old.plus(std::time::Duration::from_micros(1)));
    store.create_instance(&a).await?;
    store.create_instance(&b).await?;
    let cutoff = Timestamp::now();
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    store
        .update_instance(
            a.uuid,
            &InstancePatch { deleted: Some(true), vm_state: Some(VmState::Deleted), ..Default::default() },
        )
        .await?;
    let by = |f: InstanceFilters| InstanceFilters { project_id: Some(project.clone()), ..f };
    let live = list_all(&*store, &by(InstanceFilters::default()), 10).await?;
    check!(uuids(&live) == vec![b.uuid], "default listing hides soft-deleted: {:?}", uuids(&live));
    let deleted = list_all(&*store, &by(InstanceFilters { deleted: Some(true), ..Default::default() }), 10).await?;
    check!(uuids(&deleted) == vec![a.uuid], "deleted=true lists only soft-deleted: {:?}", uuids(&deleted));
    let changed =
        list_all(&*store, &by(InstanceFilters { changes_since: Some(cutoff), ..Default::default() }), 10).await?;
    check!(
        uuids(&changed) == vec![a.uuid],
        "changes_since lists what changed since, deleted included: {:?}",
        uuids(&changed)
    );
    let everything =
        list_all(&*store, &by(InstanceFilters { changes_since: Some(old), ..Default::default() }), 10).await?;
    check!(uuids(&everything) == vec![b.uuid, a.uuid], "changes_since(old) lists both: {:?}", uuids(&everything));
    check!(store.get_instance(a.uuid).await?.deleted, "a soft-deleted instance can still be read");
    store.update_instance(a.uuid, &InstancePatch { deleted: Some(false), ..Default::default() }).await?;
    let live = list_all(&*store, &by(InstanceFilters::default()), 1).await?;
    check!(uuids(&live) == vec![b.uuid, a.uuid], "a restored instance is listed again");
    Ok(())
}

async fn filters(store: Arc<dyn Store>) -> CaseResult {
    let project = unique("p");
    let token = unique("flt").replace('-', "");
    let t0 = Timestamp::now().minus(std::time::Duration::from_secs(60));
    let (c1, c2) = (CellId::new_v4(), CellId::new_v4());
    let mk = |name: &str, user: &str, vm: VmState, host: Option<&str>, cell: Option<CellId>, tags: &[&str], dt: u64| {
        let mut i = new_instance(&project, &format!("{token}-{name}"), t0.plus(std::time::Duration::from_micros(dt)));
        i.user_id = user.into();
        i.vm_state = vm;
        i.host = host.map(String::from);
        i.cell = cell;
        i.tags = tags.iter().map(|s| s.to_string()).collect();
        i
    };
    let all = vec![
        mk("web-1", "u1", VmState::Active, Some("h1"), Some(c1), &["a", "b"], 5),
        mk("web-2", "u2", VmState::Error, Some("h2"), Some(c2), &["b"], 5),
        mk("db-1", "u1", VmState::Active, Some("h2"), Some(c1), &[], 3),
        mk("db-2", "u2", VmState::Building, None, None, &["c"], 1),
    ];
    for i in &all {
        store.create_instance(i).await?;
    }
    let mut ordered = all.clone();
    ordered.sort_by_key(|i| i.sort_key());
    let queries: Vec<(&str, InstanceFilters)> = vec![
        ("project", InstanceFilters::default()),
        ("vm_state active", InstanceFilters { vm_states: vec![VmState::Active], ..Default::default() }),
        (
            "vm_state active|error",
            InstanceFilters { vm_states: vec![VmState::Active, VmState::Error], ..Default::default() },
        ),
        ("host h2", InstanceFilters { host: Some("h2".into()), ..Default::default() }),
        ("cell c1", InstanceFilters { cell: Some(c1), ..Default::default() }),
        ("name web", InstanceFilters { name: Some("web".into()), ..Default::default() }),
        ("name -2", InstanceFilters { name: Some("-2".into()), ..Default::default() }),
        ("name with %", InstanceFilters { name: Some("%".into()), ..Default::default() }),
        ("user u2", InstanceFilters { user_id: Some("u2".into()), ..Default::default() }),
        ("tags b", InstanceFilters { tags: vec!["b".into()], ..Default::default() }),
        ("tags a,b", InstanceFilters { tags: vec!["a".into(), "b".into()], ..Default::default() }),
        ("tags-any a,c", InstanceFilters { tags_any: vec!["a".into(), "c".into()], ..Default::default() }),
        (
            "active on h2",
            InstanceFilters { vm_states: vec![VmState::Active], host: Some("h2".into()), ..Default::default() },
        ),
    ];
    let expected_counts = [4, 2, 3, 2, 2, 2, 2, 0, 2, 2, 1, 2, 1];
    for ((what, f), want_n) in queries.into_iter().zip(expected_counts) {
        let scoped = InstanceFilters { project_id: Some(project.clone()), ..f };
        let want: Vec<InstanceId> = ordered.iter().filter(|i| scoped.matches(i)).map(|i| i.uuid).collect();
        check!(want.len() == want_n, "test bug: filter {what} should match {want_n}");
        for limit in [1, 3, 1000] {
            let got = list_all(&*store, &scoped, limit).await?;
            check!(uuids(&got) == want, "filter {what} (limit {limit}): got {:?}, want {want:?}", uuids(&got));
        }
    }
    // Without a project: the name filter still finds exactly ours, in order.
    let global = list_all(&*store, &InstanceFilters { name: Some(token.clone()), ..Default::default() }, 2).await?;
    check!(uuids(&global) == uuids(&ordered), "global name filter: {:?}", uuids(&global));
    let none =
        list_all(&*store, &InstanceFilters { project_id: Some(unique("nobody")), ..Default::default() }, 5).await?;
    check!(none.is_empty(), "an unknown project lists nothing");
    Ok(())
}

async fn limit_cap_zero_and_next_marker(store: Arc<dyn Store>) -> CaseResult {
    let project = unique("p");
    let t0 = Timestamp::now().minus(std::time::Duration::from_secs(600));
    let n = MAX_LIMIT as usize + 3;
    let instances: Vec<Instance> = (0..n)
        .map(|k| new_instance(&project, "cap", t0.plus(std::time::Duration::from_micros((k / 7) as u64))))
        .collect();
    for chunk in instances.chunks(32) {
        futures::future::try_join_all(chunk.iter().map(|i| store.create_instance(i))).await?;
    }
    let filters = InstanceFilters { project_id: Some(project.clone()), ..Default::default() };
    let q = |limit: Option<u32>, marker: Option<InstanceId>| ListQuery {
        filters: filters.clone(),
        limit,
        marker,
        partial: false,
    };
    let big = store.list_instances(&q(Some(5000), None)).await?;
    check!(big.instances.len() == MAX_LIMIT as usize, "limit above the cap is clamped: got {}", big.instances.len());
    check!(big.next_marker == big.instances.last().map(|i| i.uuid), "next_marker is the last uuid when more remain");
    let default = store.list_instances(&q(None, None)).await?;
    check!(uuids(&default.instances) == uuids(&big.instances), "no limit means the cap");
    let rest = store.list_instances(&q(Some(5000), big.next_marker)).await?;
    check!(
        rest.instances.len() == 3 && rest.next_marker.is_none(),
        "last page: {} and {:?}",
        rest.instances.len(),
        rest.next_marker
    );
    let zero = store.list_instances(&q(Some(0), None)).await?;
    check!(zero.instances.is_empty() && zero.next_marker.is_none(), "limit 0 gives an empty page");
    let mut sorted = instances.clone();
    sorted.sort_by_key(|i| i.sort_key());
    let all: Vec<InstanceId> = big.instances.iter().chain(rest.instances.iter()).map(|i| i.uuid).collect();
    check!(all == uuids(&sorted), "pages must follow created_at desc, uuid desc");
    // A page that ends exactly at the end has no next marker (Nova would send one).
    let exact = store.list_instances(&q(Some(3), Some(big.instances[MAX_LIMIT as usize - 1].uuid))).await?;
    check!(exact.instances.len() == 3 && exact.next_marker.is_none(), "exact last page must not offer a next marker");
    Ok(())
}

async fn unknown_marker_is_an_error(store: Arc<dyn Store>) -> CaseResult {
    let project = unique("p");
    store.create_instance(&new_instance(&project, "x", Timestamp::now())).await?;
    for filters in [InstanceFilters::default(), InstanceFilters { project_id: Some(project), ..Default::default() }] {
        expect_err(
            store
                .list_instances(&ListQuery {
                    filters,
                    limit: Some(10),
                    marker: Some(InstanceId::new_v4()),
                    partial: false,
                })
                .await,
            "unknown marker",
            |e| matches!(e, Error::NotFound { kind: Kind::Marker, .. }),
        )?;
    }
    Ok(())
}

async fn paging_under_concurrent_inserts(store: Arc<dyn Store>) -> CaseResult {
    use rand::{Rng, SeedableRng};
    let project = unique("p");
    let token = unique("page");
    let t0 = Timestamp::now().minus(std::time::Duration::from_secs(120));
    // Few distinct created_at values: many ties, which only the uuid breaks.
    let at = move |k: u64| t0.plus(std::time::Duration::from_micros(k));
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let initial: Vec<Instance> = (0..240).map(|_| new_instance(&project, &token, at(rng.random_range(0..8)))).collect();
    for chunk in initial.chunks(24) {
        futures::future::try_join_all(chunk.iter().map(|i| store.create_instance(i))).await?;
    }
    let existing: BTreeSet<InstanceId> = initial.iter().map(|i| i.uuid).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut inserters = Vec::new();
    for w in 0..3u64 {
        let store = store.clone();
        let stop = stop.clone();
        let project = project.clone();
        let token = token.clone();
        inserters.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(100 + w);
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 150 {
                let i = new_instance(&project, &token, at(rng.random_range(0..10)));
                store.create_instance(&i).await?;
                n += 1;
                tokio::task::yield_now().await;
            }
            Ok::<_, Error>(())
        }));
    }
    let filters_list = [
        InstanceFilters { project_id: Some(project.clone()), ..Default::default() },
        InstanceFilters { name: Some(token.clone()), ..Default::default() },
    ];
    let mut result = Ok(());
    'outer: for filters in filters_list {
        let mut seen: Vec<Instance> = Vec::new();
        let mut marker = None;
        loop {
            let limit = rng.random_range(1..=37);
            let page = match store
                .list_instances(&ListQuery { filters: filters.clone(), limit: Some(limit), marker, partial: false })
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    result = Err(Failure(format!("listing failed: {e}")));
                    break 'outer;
                }
            };
            if page.instances.len() > limit as usize {
                result = Err(Failure(format!("page of {} exceeds limit {limit}", page.instances.len())));
                break 'outer;
            }
            seen.extend(page.instances);
            match page.next_marker {
                Some(m) => marker = Some(m),
                None => break,
            }
        }
        for w in seen.windows(2) {
            if w[0].sort_key() >= w[1].sort_key() {
                result = Err(Failure(format!(
                    "listing out of order or repeated ({filters:?}): {:?} then {:?}",
                    w[0].sort_key(),
                    w[1].sort_key()
                )));
                break 'outer;
            }
        }
        let mut count: BTreeMap<InstanceId, usize> = BTreeMap::new();
        for i in &seen {
            *count.entry(i.uuid).or_insert(0) += 1;
        }
        if let Some(missing) = existing.iter().find(|u| count.get(u) != Some(&1)) {
            result = Err(Failure(format!(
                "instance {missing} existed before paging but was seen {} times ({filters:?})",
                count.get(missing).copied().unwrap_or(0)
            )));
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in inserters {
        t.await.map_err(|e| Failure(format!("inserter panicked: {e}")))??;
    }
    result
}

async fn system_metadata_round_trip(store: Arc<dyn Store>) -> CaseResult {
    let mut inst =
        Instance::new_building(InstanceId::new_v4(), &unique("sysmeta"), &unique("p"), "u", FlavorId::new("1")?);
    inst.system_metadata.insert("image_ref".into(), "70a599e0-31e7-49b7-b260-868f441e862b".into());
    inst.system_metadata.insert("description".into(), "with \"quotes\", commas and = signs".into());
    store.create_instance(&inst).await?;
    let got = store.get_instance(inst.uuid).await?;
    check!(got.system_metadata == inst.system_metadata, "system_metadata read back {:?}", got.system_metadata);
    let patched = store
        .update_instance(inst.uuid, &InstancePatch { vm_state: Some(VmState::Active), ..Default::default() })
        .await?;
    check!(patched.system_metadata == inst.system_metadata, "a patch keeps system_metadata");
    let page = store
        .list_instances(&ListQuery {
            filters: InstanceFilters { project_id: Some(inst.project_id.clone()), ..Default::default() },
            limit: Some(10),
            marker: None,
            partial: false,
        })
        .await?;
    check!(
        page.instances.iter().any(|i| i.uuid == inst.uuid && i.system_metadata == inst.system_metadata),
        "the listing shows system_metadata"
    );
    store.delete_instance(inst.uuid).await?;
    Ok(())
}

/// Line 17 on a store whose every part answers: a partial listing is the same page as the
/// plain one (every page, filters and markers included), complete, with no stubs.
async fn partial_listing_of_a_healthy_store_is_complete(store: Arc<dyn Store>) -> CaseResult {
    let project = unique("p");
    let t0 = Timestamp::now();
    for k in 0..7u64 {
        let mut i = new_instance(&project, &format!("vm-{k}"), t0.plus(std::time::Duration::from_micros(k)));
        i.cell = (k % 2 == 0).then(CellId::new_v4);
        store.create_instance(&i).await?;
    }
    let filters = InstanceFilters { project_id: Some(project.clone()), ..Default::default() };
    let mut marker = None;
    let mut pages = 0;
    loop {
        let plain = ListQuery { filters: filters.clone(), limit: Some(3), marker, partial: false };
        let partial = ListQuery { partial: true, ..plain.clone() };
        let (a, b) = (store.list_instances(&plain).await?, store.list_instances(&partial).await?);
        check!(a.is_complete() && a.stubs.is_empty(), "a healthy store's page is complete: {:?}", a.unreachable);
        check!(
            b.is_complete() && b.stubs.is_empty(),
            "a healthy store's partial page is complete: {:?}",
            b.unreachable
        );
        let ids = |p: &InstancePage| p.instances.iter().map(|i| i.uuid).collect::<Vec<_>>();
        check!(ids(&a) == ids(&b) && a.next_marker == b.next_marker, "partial must not change a complete page");
        pages += 1;
        match a.next_marker {
            Some(m) => marker = Some(m),
            None => break,
        }
    }
    check!(pages == 3, "7 instances in pages of 3 make 3 pages, got {pages}");
    Ok(())
}

/// Line 17: what [`Instances::instance_stub`] gives apart from the record is either nothing
/// or the record's own id, project, cell and creation time (never another's), and nothing
/// for an unknown or soft-deleted instance.
async fn instance_stub_agrees_with_the_record(store: Arc<dyn Store>) -> CaseResult {
    let project = unique("p");
    check!(store.instance_stub(InstanceId::new_v4()).await?.is_none(), "an unknown instance has no stub");
    for cell in [None, Some(CellId::new_v4())] {
        let mut i = new_instance(&project, "vm", Timestamp::now());
        i.cell = cell;
        store.create_instance(&i).await?;
        if let Some(s) = store.instance_stub(i.uuid).await? {
            let want = InstanceStub { uuid: i.uuid, project_id: project.clone(), created_at: Some(i.created_at), cell };
            check!(s == want, "the stub must say what the record says: got {s:?}, want {want:?}");
        }
        store.update_instance(i.uuid, &InstancePatch { deleted: Some(true), ..Default::default() }).await?;
        check!(store.instance_stub(i.uuid).await?.is_none(), "a soft-deleted instance has no stub (queued for delete)");
        store.delete_instance(i.uuid).await?;
        check!(store.instance_stub(i.uuid).await?.is_none(), "a deleted instance has no stub");
    }
    Ok(())
}
