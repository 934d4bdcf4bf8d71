//! Race cases: concurrent claims and releases on shared trees never overcommit, never
//! exceed a group limit, and leave usage equal to the allocations (contract line 1).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::fixtures::*;
use super::harness::*;
use super::{case, check};
use crate::error::{Conflict, Error};
use crate::model::*;
use crate::store::prelude::*;

/// The cases of this group, in the suite's order.
pub(super) fn cases() -> Vec<Case> {
    vec![
        case!("race::concurrent_claims_never_overcommit", concurrent_claims_never_overcommit),
        case!("race::group_limit_under_concurrency", group_limit_under_concurrency),
        case!("race::claim_release_churn", claim_release_churn),
        case!("race::concurrent_batches_never_overcommit", concurrent_batches_never_overcommit),
    ]
}

/// Number of concurrent workers in the race cases.
pub const RACE_WORKERS: usize = 48;

async fn concurrent_claims_never_overcommit(store: Arc<dyn Store>) -> CaseResult {
    use rand::{Rng, SeedableRng};
    let mut trees = Vec::new();
    for _ in 0..3 {
        trees.push(make_tree(&*store, None, 12, 4096).await?);
    }
    let trees = Arc::new(trees);
    let mut tasks = Vec::new();
    for w in 0..RACE_WORKERS {
        let store = store.clone();
        let trees = trees.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed + w as u64);
            let mut won: Vec<ClaimRequest> = Vec::new();
            let mut refused: Vec<ProviderId> = Vec::new();
            let mut misses = 0;
            let mut attempts = 0;
            while misses < 10 && attempts < 200 {
                attempts += 1;
                let t = &trees[rng.random_range(0..trees.len())];
                let mut parts = vec![
                    (t.root, "VCPU", rng.random_range(1..=3)),
                    (t.root, "MEMORY_MB", 256 * rng.random_range(1..=3)),
                ];
                if rng.random_bool(0.4) {
                    parts.push((t.numa[rng.random_range(0..2)], "PCPU", rng.random_range(1..=2)));
                }
                if rng.random_bool(0.25) {
                    parts.push((t.sriov, "SRIOV_NET_VF", 1));
                }
                let req = claim_req(ConsumerId::new_v4(), &parts);
                match claim_retrying(&*store, &req).await {
                    Ok(c) if !c.replayed => {
                        misses = 0;
                        won.push(req);
                    }
                    Ok(_) => won.push(req), // a retried claim whose first attempt landed
                    Err(Error::Capacity { provider, class, requested, used, capacity }) => {
                        misses += 1;
                        refused.push(provider);
                        let asked = req.allocations.get(&provider).and_then(|r| r.get(&class));
                        if asked != Some(&requested) {
                            return Err(Failure(format!(
                                "capacity error names {class} on {provider} with {requested}, not in the claim {:?}",
                                req.allocations
                            )));
                        }
                        if used + requested <= capacity {
                            return Err(Failure(format!(
                                "capacity error for {class} on {provider} although {used} + {requested} <= {capacity}"
                            )));
                        }
                    }
                    Err(e) => return Err(Failure(format!("unexpected claim error under contention: {e}"))),
                }
            }
            Ok::<_, Failure>((won, refused))
        }));
    }
    let mut expected: BTreeMap<(ProviderId, ResourceClass), i64> = BTreeMap::new();
    let mut wins = 0;
    let mut refused_on: BTreeSet<ProviderId> = BTreeSet::new();
    for t in tasks {
        let (won, refused) = t.await.map_err(|e| Failure(format!("worker panicked: {e}")))??;
        refused_on.extend(refused);
        for req in won {
            wins += 1;
            expect(&mut expected, &req);
        }
    }
    check!(wins > 0, "no claim succeeded at all");
    for t in trees.iter() {
        let tree = store.provider_tree(t.root).await?;
        usage_is_the_claims_won(&tree, &expected)?;
        // The race really raced: every tree took claims and refused some for lack of room.
        check!(
            tree.providers.iter().any(|p| !p.usages.is_empty()),
            "tree {} took no claim: the race did not race",
            tree.root
        );
        check!(
            tree.providers.iter().any(|p| refused_on.contains(&p.id)),
            "tree {} never refused a claim: it was never contended up to its capacity",
            tree.root
        );
    }
    let roots: Vec<_> = trees.iter().map(|t| t.root).collect();
    audit_clean(&*store, &roots).await
}

async fn group_limit_under_concurrency(store: Arc<dyn Store>) -> CaseResult {
    let mut trees = Vec::new();
    for _ in 0..4 {
        trees.push(make_tree(&*store, None, 64, 16384).await?);
    }
    let group = GroupId::new_v4();
    let roots: Arc<Vec<ProviderId>> = Arc::new(trees.iter().map(|t| t.root).collect());
    let mut tasks = Vec::new();
    for w in 0..RACE_WORKERS {
        let store = store.clone();
        let roots = roots.clone();
        tasks.push(tokio::spawn(async move {
            // every worker tries every host, starting at a different one
            for k in 0..roots.len() {
                let root = roots[(w + k) % roots.len()];
                let mut req = claim_req(ConsumerId::new_v4(), &[(root, "VCPU", 1)]);
                req.group = Some(GroupClaim { group, max_per_host: Some(2) });
                match claim_retrying(&*store, &req).await {
                    Ok(_) => return Ok(Some(root)),
                    Err(Error::Conflict(Conflict::GroupLimit { .. })) => continue,
                    Err(e) => return Err(Failure(format!("unexpected error: {e}"))),
                }
            }
            Ok::<_, Failure>(None)
        }));
    }
    let mut placed: BTreeMap<ProviderId, u32> = BTreeMap::new();
    for t in tasks {
        if let Some(root) = t.await.map_err(|e| Failure(format!("worker panicked: {e}")))?? {
            *placed.entry(root).or_insert(0) += 1;
        }
    }
    for root in roots.iter() {
        let n = placed.get(root).copied().unwrap_or(0);
        check!(n == 2, "host {root} got {n} group members, want exactly 2 (max_per_host)");
        let tree = store.provider_tree(*root).await?;
        check!(tree.groups.get(&group) == Some(&2), "tree group count {:?}", tree.groups.get(&group));
    }
    audit_clean(&*store, &roots).await
}

async fn claim_release_churn(store: Arc<dyn Store>) -> CaseResult {
    use rand::{Rng, SeedableRng};
    let f = make_tree(&*store, None, 6, 2048).await?;
    let root = f.root;
    let sriov = f.sriov;
    let mut tasks = Vec::new();
    for w in 0..RACE_WORKERS / 2 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(0xc0ffee + w as u64);
            let mut held: Option<ClaimRequest> = None;
            for _ in 0..40 {
                if let Some(req) = held.take() {
                    release_retrying(&*store, req.consumer).await?;
                    continue;
                }
                let mut parts = vec![(root, "VCPU", rng.random_range(1..=2))];
                if rng.random_bool(0.5) {
                    parts.push((sriov, "SRIOV_NET_VF", 1));
                }
                let req = claim_req(ConsumerId::new_v4(), &parts);
                match claim_retrying(&*store, &req).await {
                    Ok(_) => held = Some(req),
                    Err(Error::Capacity { .. }) => {}
                    Err(e) => return Err(Failure(format!("unexpected error: {e}"))),
                }
            }
            Ok::<_, Failure>(held)
        }));
    }
    let mut still_held = Vec::new();
    for t in tasks {
        if let Some(req) = t.await.map_err(|e| Failure(format!("worker panicked: {e}")))?? {
            still_held.push(req);
        }
    }
    audit_clean(&*store, &[root]).await?;
    let allocs = store.tree_allocations(root).await?;
    check!(
        allocs.len() == still_held.len(),
        "{} allocations on the tree, {} held by workers",
        allocs.len(),
        still_held.len()
    );
    for req in still_held {
        release_retrying(&*store, req.consumer).await?;
    }
    let tree = store.provider_tree(root).await?;
    check!(usages(&tree).is_empty(), "usage left after every release: {:?}", usages(&tree));
    Ok(())
}

/// Batched claims from many workers at once (`claim_batch`, as the scheduler's claim
/// batcher sends them): each claim all-or-nothing on its own tree, none overcommits, and
/// usage ends equal to the claims that were acknowledged.
async fn concurrent_batches_never_overcommit(store: Arc<dyn Store>) -> CaseResult {
    use rand::{Rng, SeedableRng};
    let mut trees = Vec::new();
    for _ in 0..3 {
        trees.push(make_tree(&*store, None, 16, 8192).await?);
    }
    let trees = Arc::new(trees);
    let workers = RACE_WORKERS / 4;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let store = store.clone();
        let trees = trees.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(0xba7c + w as u64);
            let mut won: Vec<ClaimRequest> = Vec::new();
            let mut refused = 0usize;
            for _ in 0..6 {
                let batch: Vec<ClaimRequest> = (0..rng.random_range(1..=8))
                    .map(|_| {
                        let t = &trees[rng.random_range(0..trees.len())];
                        let mut parts = vec![(t.root, "VCPU", rng.random_range(1..=2))];
                        if rng.random_bool(0.3) {
                            parts.push((t.numa[rng.random_range(0..2)], "PCPU", 1));
                        }
                        claim_req(ConsumerId::new_v4(), &parts)
                    })
                    .collect();
                let mut attempt = 0;
                let results = loop {
                    match store.claim_batch(&batch).await {
                        Err(e) if e.is_retryable() && attempt < 20 => {
                            attempt += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(5 * attempt)).await;
                        }
                        other => break other.map_err(|e| Failure(format!("batch failed as a whole: {e}")))?,
                    }
                };
                if results.len() != batch.len() {
                    return Err(Failure(format!("{} results for a batch of {}", results.len(), batch.len())));
                }
                for (req, r) in batch.into_iter().zip(results) {
                    // A claim whose outcome is unknown (retryable) is replayed alone: claims
                    // are idempotent.
                    let r = match r {
                        Err(e) if e.is_retryable() => claim_retrying(&*store, &req).await,
                        other => other,
                    };
                    match r {
                        Ok(_) => won.push(req),
                        Err(Error::Capacity { .. }) => refused += 1,
                        Err(e) => return Err(Failure(format!("unexpected claim error in a batch: {e}"))),
                    }
                }
            }
            Ok::<_, Failure>((won, refused))
        }));
    }
    let mut expected: BTreeMap<(ProviderId, ResourceClass), i64> = BTreeMap::new();
    let (mut wins, mut refusals) = (0, 0);
    for t in tasks {
        let (won, refused) = t.await.map_err(|e| Failure(format!("worker panicked: {e}")))??;
        refusals += refused;
        for req in won {
            wins += 1;
            expect(&mut expected, &req);
        }
    }
    check!(wins > 0 && refusals > 0, "the batches must both win and lose claims: {wins} won, {refusals} refused");
    for t in trees.iter() {
        let tree = store.provider_tree(t.root).await?;
        usage_is_the_claims_won(&tree, &expected)?;
    }
    let roots: Vec<_> = trees.iter().map(|t| t.root).collect();
    audit_clean(&*store, &roots).await
}

/// Adds a won claim's amounts to the usage expected per provider and class.
fn expect(expected: &mut BTreeMap<(ProviderId, ResourceClass), i64>, req: &ClaimRequest) {
    for (p, res) in &req.allocations {
        for (c, n) in res {
            *expected.entry((*p, c.clone())).or_insert(0) += n;
        }
    }
}

/// Every provider of `tree` uses exactly what the won claims put there, within capacity.
fn usage_is_the_claims_won(tree: &ProviderTree, expected: &BTreeMap<(ProviderId, ResourceClass), i64>) -> CaseResult {
    for node in &tree.providers {
        for (class, inv) in &node.inventories {
            let used = node.used(class);
            let want = expected.get(&(node.id, class.clone())).copied().unwrap_or(0);
            check!(used == want, "{class} on {}: usage {used} != sum of successful claims {want}", node.id);
            check!(
                used <= inv.capacity(),
                "{class} on {}: OVERCOMMIT usage {used} > capacity {}",
                node.id,
                inv.capacity()
            );
        }
    }
    Ok(())
}
