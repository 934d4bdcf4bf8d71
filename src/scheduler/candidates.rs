//! Allocation candidates from a provider tree, as Placement's `GET /allocation_candidates`
//! computes them, but locally on the snapshot.
//!
//! Rules (Placement's):
//! * the unsuffixed request group's classes may come from different providers of the tree,
//!   but each class comes whole from one provider;
//! * a numbered group (`resources1:...`) comes whole from one provider, which must carry the
//!   group's required traits and none of its forbidden ones;
//! * the unsuffixed group's required traits must be on some provider that serves it (the
//!   union of their traits), its forbidden traits on none of them;
//! * `member_of`: aggregates of the root span the tree; every provider serving the request
//!   must be in one aggregate of each OR-list and in no forbidden aggregate;
//! * amounts of several groups on one provider and class are added before the unit and
//!   capacity checks; `group_policy=isolate` keeps numbered groups on distinct providers.
//!
//! Unlike Placement, which generates every combination and then truncates (bugs 2070257 and
//! 2126751: timeouts and OOM on wide trees), the search is a depth-first first-fit with
//! capacity pruning and a step budget: the scheduler needs one allocation per host.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{
    AggregateId, AllocationMap, ProviderId, ProviderNode, ProviderTree, RequestGroup, ResourceClass, ResourceRequest,
    Trait,
};
use crate::scheduler::error::Rejection;

/// What the request asks of a tree, prepared once per request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CandidateRequest {
    /// The request groups: unsuffixed first (may be absent), then numbered ones.
    pub groups: Vec<RequestGroup>,
    /// `group_policy=isolate`: numbered groups on distinct providers.
    pub isolate: bool,
    /// `member_of`: every inner set must intersect the provider's aggregates.
    pub member_of: Vec<BTreeSet<AggregateId>>,
    /// Aggregates a serving provider must not be in.
    pub forbidden_aggregates: BTreeSet<AggregateId>,
    /// Maximum search steps per tree before giving up with [`Rejection::NoCombination`].
    pub budget: usize,
}

impl CandidateRequest {
    /// From a resource request (flavor and image translated) and the destination's
    /// aggregates. `group_policy` comes from the flavor's extra specs.
    pub fn new(request: ResourceRequest, isolate: bool, budget: usize) -> Self {
        CandidateRequest { groups: request.groups, isolate, budget: budget.max(1), ..Default::default() }
    }

    /// True when the request asks for no amount at all (cannot be claimed).
    pub fn is_empty(&self) -> bool {
        self.groups.iter().all(|g| g.resources.is_empty())
    }
}

/// Whether `amount` can be taken from `node`'s `class` now: inventory, units and free.
fn fits(node: &ProviderNode, class: &ResourceClass, amount: i64) -> bool {
    match node.inventories.get(class) {
        Some(inv) => {
            amount >= inv.min_unit
                && amount <= inv.max_unit
                && amount % inv.step_size == 0
                && node.used(class).saturating_add(amount) <= inv.capacity()
        }
        None => false,
    }
}

struct Var<'a> {
    /// The group the variable belongs to (index into groups).
    group: usize,
    /// For the unsuffixed group, the one class this variable places; numbered groups place
    /// all their classes at once.
    class: Option<&'a ResourceClass>,
    /// Provider indexes that may serve it.
    options: Vec<usize>,
}

struct Search<'a> {
    tree: &'a ProviderTree,
    req: &'a CandidateRequest,
    vars: Vec<Var<'a>>,
    choice: Vec<usize>,
    /// Running sums per (provider index, class).
    sums: BTreeMap<(usize, &'a ResourceClass), i64>,
    steps: usize,
    trait_miss: Option<Trait>,
}

impl<'a> Search<'a> {
    fn amounts(&self, var: &Var<'a>) -> Vec<(&'a ResourceClass, i64)> {
        let g = &self.req.groups[var.group];
        match var.class {
            Some(c) => vec![(c, g.resources.get(c).copied().unwrap_or(0))],
            None => g.resources.iter().map(|(c, a)| (c, *a)).collect(),
        }
    }

    fn try_add(&mut self, p: usize, amounts: &[(&'a ResourceClass, i64)]) -> bool {
        let node = &self.tree.providers[p];
        for (c, a) in amounts {
            let have = self.sums.get(&(p, *c)).copied().unwrap_or(0);
            let Some(inv) = node.inventories.get(*c) else {
                return false;
            };
            if node.used(c).saturating_add(have).saturating_add(*a) > inv.capacity() {
                return false;
            }
        }
        for (c, a) in amounts {
            let s = self.sums.entry((p, *c)).or_insert(0);
            *s = s.saturating_add(*a);
        }
        true
    }

    fn remove(&mut self, p: usize, amounts: &[(&'a ResourceClass, i64)]) {
        for (c, a) in amounts {
            if let Some(v) = self.sums.get_mut(&(p, *c)) {
                *v -= a;
                if *v == 0 {
                    self.sums.remove(&(p, *c));
                }
            }
        }
    }

    /// Checks at a leaf: units on summed amounts, isolate, unsuffixed traits.
    fn leaf_ok(&mut self) -> bool {
        for ((p, c), sum) in &self.sums {
            let node = &self.tree.providers[*p];
            match node.inventories.get(*c) {
                Some(inv) if *sum >= inv.min_unit && *sum <= inv.max_unit && sum % inv.step_size == 0 => {}
                _ => return false,
            }
        }
        if self.req.isolate {
            let mut seen = BTreeSet::new();
            for (i, v) in self.vars.iter().enumerate() {
                if v.class.is_none() && !seen.insert(self.choice[i]) {
                    return false;
                }
            }
        }
        for (gi, g) in self.req.groups.iter().enumerate() {
            if g.suffix.is_some() || g.required.is_empty() {
                continue;
            }
            let serving: Vec<usize> =
                self.vars.iter().enumerate().filter(|(_, v)| v.group == gi).map(|(i, _)| self.choice[i]).collect();
            for t in &g.required {
                let on_tree = if serving.is_empty() {
                    self.tree.providers.first().is_some_and(|r| r.traits.contains(t))
                } else {
                    serving.iter().any(|p| self.tree.providers[*p].traits.contains(t))
                };
                if !on_tree {
                    self.trait_miss.get_or_insert_with(|| t.clone());
                    return false;
                }
            }
        }
        true
    }

    fn dfs(&mut self, i: usize) -> bool {
        if i == self.vars.len() {
            return self.leaf_ok();
        }
        let n = self.vars[i].options.len();
        for k in 0..n {
            self.steps += 1;
            if self.steps > self.req.budget {
                return false;
            }
            let p = self.vars[i].options[k];
            let amounts = self.amounts(&self.vars[i]);
            if !self.try_add(p, &amounts) {
                continue;
            }
            self.choice[i] = p;
            if self.dfs(i + 1) {
                return true;
            }
            self.remove(p, &amounts);
        }
        false
    }
}

/// The first allocation (in tree order: root first) that satisfies `req` on `tree` given its
/// current usage, or why there is none.
pub fn allocation_candidate(tree: &ProviderTree, req: &CandidateRequest) -> Result<AllocationMap, Rejection> {
    if let [root] = tree.providers.as_slice()
        && let Some(a) = single_provider(root, req)
    {
        return Ok(a);
    }
    search(tree, req)
}

/// Whether `req` fits on `tree` now, or why not: [`allocation_candidate`] without building
/// the allocation in the common case (a one-provider tree, one request group), which is
/// what ranking thousands of hosts per request needs.
pub fn fits_request(tree: &ProviderTree, req: &CandidateRequest) -> Result<(), Rejection> {
    if let ([p], [g]) = (tree.providers.as_slice(), req.groups.as_slice()) {
        let in_agg = |a: &AggregateId| p.aggregates.contains(a);
        let ok = req.member_of.iter().all(|set| set.iter().any(in_agg))
            && !req.forbidden_aggregates.iter().any(in_agg)
            && g.required.iter().all(|t| p.traits.contains(t))
            && !g.forbidden.iter().any(|t| p.traits.contains(t))
            && g.resources.iter().all(|(c, a)| fits(p, c, *a));
        if ok {
            return Ok(());
        }
    }
    if unsuffixed_fits(tree, req) {
        return Ok(());
    }
    allocation_candidate(tree, req).map(|_| ())
}

/// The common nested case (a host with NUMA or NIC children and a plain flavor): one
/// unsuffixed group with no required traits. Each class then comes whole from one
/// provider and no two classes share a provider's running sum, so the search succeeds
/// exactly when every class has a provider that fits it, is not forbidden by a trait and
/// is in the requested aggregates (the search's first pick for each class never needs
/// backtracking, and takes one step per class). `false` means "ask the search", which
/// also says why not.
fn unsuffixed_fits(tree: &ProviderTree, req: &CandidateRequest) -> bool {
    let [g] = req.groups.as_slice() else {
        return false;
    };
    if g.suffix.is_some() || !g.required.is_empty() || g.resources.is_empty() || req.budget < g.resources.len() {
        return false;
    }
    let root_aggs = tree.providers.first().map(|r| &r.aggregates);
    let agg_ok = |p: &ProviderNode| {
        let in_agg = |a: &AggregateId| p.aggregates.contains(a) || root_aggs.is_some_and(|r| r.contains(a));
        req.member_of.iter().all(|set| set.iter().any(in_agg)) && !req.forbidden_aggregates.iter().any(in_agg)
    };
    g.resources.iter().all(|(c, a)| {
        tree.providers.iter().any(|p| fits(p, c, *a) && !g.forbidden.iter().any(|t| p.traits.contains(t)) && agg_ok(p))
    })
}

/// The common case, a tree of one provider, without the search machinery: every amount of
/// every group on the root. `None` when that does not fit (the general search then says
/// why, so both paths give the same answers).
fn single_provider(p: &ProviderNode, req: &CandidateRequest) -> Option<AllocationMap> {
    let in_agg = |a: &AggregateId| p.aggregates.contains(a);
    if !req.member_of.iter().all(|set| set.iter().any(in_agg)) || req.forbidden_aggregates.iter().any(in_agg) {
        return None;
    }
    if req.isolate && req.groups.iter().filter(|g| g.suffix.is_some()).count() > 1 {
        return None;
    }
    let mut sums = crate::model::Resources::new();
    for g in &req.groups {
        if !g.required.iter().all(|t| p.traits.contains(t)) || g.forbidden.iter().any(|t| p.traits.contains(t)) {
            return None;
        }
        for (c, a) in &g.resources {
            if !fits(p, c, *a) {
                return None;
            }
            let s = sums.entry(c.clone()).or_insert(0);
            *s = s.saturating_add(*a);
        }
    }
    if !sums.iter().all(|(c, a)| fits(p, c, *a)) {
        return None;
    }
    Some(AllocationMap::from([(p.id, sums)]))
}

/// Which providers served each request group of a candidate: Placement's `mappings`, keyed
/// by suffix (`""` for the unsuffixed group). Groups without resources have no entry.
pub type GroupMappings = BTreeMap<String, BTreeSet<ProviderId>>;

/// [`allocation_candidate`] with the providers that serve each request group (what
/// Placement's `GET /allocation_candidates` returns as `mappings` from 1.34).
pub fn allocation_candidate_mapped(
    tree: &ProviderTree,
    req: &CandidateRequest,
) -> Result<(AllocationMap, GroupMappings), Rejection> {
    if let [root] = tree.providers.as_slice()
        && let Some(a) = single_provider(root, req)
    {
        let mappings = req
            .groups
            .iter()
            .filter(|g| !g.resources.is_empty())
            .map(|g| (g.suffix.clone().unwrap_or_default(), BTreeSet::from([root.id])))
            .collect();
        return Ok((a, mappings));
    }
    search_mapped(tree, req)
}

/// The general depth-first search over the providers of the tree.
fn search(tree: &ProviderTree, req: &CandidateRequest) -> Result<AllocationMap, Rejection> {
    search_mapped(tree, req).map(|(a, _)| a)
}

/// [`search`] with the providers each request group was served by.
fn search_mapped(tree: &ProviderTree, req: &CandidateRequest) -> Result<(AllocationMap, GroupMappings), Rejection> {
    let root_aggs: BTreeSet<AggregateId> = tree.providers.first().map(|r| r.aggregates.clone()).unwrap_or_default();
    let agg_ok: Vec<bool> = tree
        .providers
        .iter()
        .map(|p| {
            let in_agg = |a: &AggregateId| p.aggregates.contains(a) || root_aggs.contains(a);
            req.member_of.iter().all(|set| set.iter().any(in_agg)) && !req.forbidden_aggregates.iter().any(in_agg)
        })
        .collect();

    let mut vars: Vec<Var<'_>> = Vec::new();
    for (gi, g) in req.groups.iter().enumerate() {
        if g.suffix.is_none() {
            if let Some(t) = g.required.iter().find(|t| !tree.providers.iter().any(|p| p.traits.contains(*t))) {
                return Err(Rejection::MissingTrait(t.clone()));
            }
            for (class, amount) in &g.resources {
                let mut options = Vec::new();
                let mut has_inventory = false;
                let mut fit_but_forbidden: Option<&Trait> = None;
                let mut fit_but_aggregate = false;
                for (pi, p) in tree.providers.iter().enumerate() {
                    if !p.inventories.contains_key(class) {
                        continue;
                    }
                    has_inventory = true;
                    if !fits(p, class, *amount) {
                        continue;
                    }
                    if let Some(t) = g.forbidden.iter().find(|t| p.traits.contains(*t)) {
                        fit_but_forbidden.get_or_insert(t);
                        continue;
                    }
                    if !agg_ok[pi] {
                        fit_but_aggregate = true;
                        continue;
                    }
                    options.push(pi);
                }
                if options.is_empty() {
                    return Err(if !has_inventory {
                        Rejection::NoInventory(class.clone())
                    } else if let Some(t) = fit_but_forbidden {
                        Rejection::ForbiddenTrait(t.clone())
                    } else if fit_but_aggregate {
                        Rejection::Aggregates
                    } else {
                        Rejection::NotEnough(class.clone())
                    });
                }
                vars.push(Var { group: gi, class: Some(class), options });
            }
            if g.resources.is_empty() {
                if let Some(t) =
                    g.forbidden.iter().find(|t| tree.providers.first().is_some_and(|r| r.traits.contains(*t)))
                {
                    return Err(Rejection::ForbiddenTrait(t.clone()));
                }
                if (!req.member_of.is_empty() || !req.forbidden_aggregates.is_empty())
                    && !agg_ok.first().copied().unwrap_or(false)
                {
                    return Err(Rejection::Aggregates);
                }
            }
        } else {
            let options: Vec<usize> = tree
                .providers
                .iter()
                .enumerate()
                .filter(|(pi, p)| {
                    agg_ok[*pi]
                        && g.required.iter().all(|t| p.traits.contains(t))
                        && !g.forbidden.iter().any(|t| p.traits.contains(t))
                        && g.resources.iter().all(|(c, a)| fits(p, c, *a))
                })
                .map(|(pi, _)| pi)
                .collect();
            if options.is_empty() {
                let first = g.resources.keys().next();
                let any_inventory = first.is_none_or(|c| tree.providers.iter().any(|p| p.inventories.contains_key(c)));
                return Err(match first {
                    Some(c) if !any_inventory => Rejection::NoInventory(c.clone()),
                    _ => Rejection::NumberedGroup(g.suffix.clone().unwrap_or_default()),
                });
            }
            vars.push(Var { group: gi, class: None, options });
        }
    }
    let mut search =
        Search { tree, req, choice: vec![0; vars.len()], vars, sums: BTreeMap::new(), steps: 0, trait_miss: None };
    if search.dfs(0) {
        let mut out = AllocationMap::new();
        for ((p, c), sum) in &search.sums {
            out.entry(tree.providers[*p].id).or_default().insert((*c).clone(), *sum);
        }
        let mut mappings = GroupMappings::new();
        for (i, v) in search.vars.iter().enumerate() {
            let suffix = req.groups[v.group].suffix.clone().unwrap_or_default();
            mappings.entry(suffix).or_default().insert(tree.providers[search.choice[i]].id);
        }
        Ok((out, mappings))
    } else if let Some(t) = search.trait_miss {
        Err(Rejection::MissingTrait(t))
    } else {
        Err(Rejection::NoCombination)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Inventory, ProviderId, Resources};
    use std::collections::BTreeMap;

    fn node(parent: Option<ProviderId>, inv: &[(ResourceClass, i64)], traits: &[&str]) -> ProviderNode {
        ProviderNode {
            id: ProviderId::new_v4(),
            name: "n".into(),
            parent,
            traits: traits.iter().map(|t| Trait::new(*t).unwrap()).collect(),
            aggregates: BTreeSet::new(),
            inventories: inv.iter().map(|(c, t)| (c.clone(), Inventory::with_total(*t))).collect(),
            usages: Resources::new(),
        }
    }

    fn tree(nodes: Vec<ProviderNode>) -> ProviderTree {
        ProviderTree { root: nodes[0].id, generation: 1, cell: None, providers: nodes, groups: BTreeMap::new() }
    }

    fn group(suffix: Option<&str>, res: &[(ResourceClass, i64)]) -> RequestGroup {
        RequestGroup {
            suffix: suffix.map(String::from),
            resources: res.iter().cloned().collect(),
            ..Default::default()
        }
    }

    fn req(groups: Vec<RequestGroup>) -> CandidateRequest {
        CandidateRequest { groups, budget: 1000, ..Default::default() }
    }

    use ResourceClass::*;

    #[test]
    fn unsuffixed_classes_come_from_different_providers() {
        let root = node(None, &[(Vcpu, 4), (MemoryMb, 1024)], &[]);
        let numa = node(Some(root.id), &[(Pcpu, 4)], &[]);
        let (r, n) = (root.id, numa.id);
        let t = tree(vec![root, numa]);
        let a = allocation_candidate(&t, &req(vec![group(None, &[(Pcpu, 2), (MemoryMb, 512)])])).unwrap();
        assert_eq!(a[&r][&MemoryMb], 512);
        assert_eq!(a[&n][&Pcpu], 2);
    }

    #[test]
    fn one_class_is_never_split() {
        let root = node(None, &[(Vcpu, 2)], &[]);
        let numa = node(Some(root.id), &[(Vcpu, 2)], &[]);
        let t = tree(vec![root, numa]);
        assert_eq!(allocation_candidate(&t, &req(vec![group(None, &[(Vcpu, 3)])])), Err(Rejection::NotEnough(Vcpu)));
        assert_eq!(allocation_candidate(&t, &req(vec![group(None, &[(Vgpu, 1)])])), Err(Rejection::NoInventory(Vgpu)));
    }

    #[test]
    fn numbered_group_from_one_provider_with_traits() {
        let root = node(None, &[(Vcpu, 4)], &[]);
        let pf_a = node(Some(root.id), &[(SriovNetVf, 2)], &["CUSTOM_PHYSNET_A"]);
        let pf_b = node(Some(root.id), &[(SriovNetVf, 8)], &["CUSTOM_PHYSNET_B"]);
        let b = pf_b.id;
        let t = tree(vec![root, pf_a, pf_b]);
        let mut g1 = group(Some("1"), &[(SriovNetVf, 2)]);
        g1.required.insert(Trait::new("CUSTOM_PHYSNET_B").unwrap());
        let a = allocation_candidate(&t, &req(vec![group(None, &[(Vcpu, 1)]), g1.clone()])).unwrap();
        assert_eq!(a[&b][&SriovNetVf], 2);
        g1.resources.insert(SriovNetVf, 9);
        assert_eq!(
            allocation_candidate(&t, &req(vec![group(None, &[(Vcpu, 1)]), g1])),
            Err(Rejection::NumberedGroup("1".into()))
        );
    }

    #[test]
    fn groups_share_capacity_and_isolate() {
        let root = node(None, &[(Vcpu, 4)], &[]);
        let pf = node(Some(root.id), &[(SriovNetVf, 3)], &[]);
        let t = tree(vec![root, pf]);
        let g = vec![group(Some("1"), &[(SriovNetVf, 2)]), group(Some("2"), &[(SriovNetVf, 2)])];
        assert_eq!(allocation_candidate(&t, &req(g.clone())), Err(Rejection::NoCombination));
        let g = vec![group(Some("1"), &[(SriovNetVf, 1)]), group(Some("2"), &[(SriovNetVf, 1)])];
        let a = allocation_candidate(&t, &req(g.clone())).unwrap();
        assert_eq!(a.values().next().unwrap()[&SriovNetVf], 2, "amounts add up");
        let mut r = req(g);
        r.isolate = true;
        assert_eq!(allocation_candidate(&t, &r), Err(Rejection::NoCombination));
    }

    #[test]
    fn traits_required_and_forbidden() {
        let root = node(None, &[(Vcpu, 4)], &["HW_CPU_X86_AVX2", "COMPUTE_STATUS_DISABLED"]);
        let t = tree(vec![root]);
        let mut g = group(None, &[(Vcpu, 1)]);
        g.required.insert(Trait::new("HW_CPU_X86_AVX2").unwrap());
        assert!(allocation_candidate(&t, &req(vec![g.clone()])).is_ok());
        g.required.insert(Trait::new("CUSTOM_GOLD").unwrap());
        assert_eq!(
            allocation_candidate(&t, &req(vec![g.clone()])),
            Err(Rejection::MissingTrait(Trait::new("CUSTOM_GOLD").unwrap()))
        );
        let mut g = group(None, &[(Vcpu, 1)]);
        g.forbidden.insert(Trait::new("COMPUTE_STATUS_DISABLED").unwrap());
        assert_eq!(
            allocation_candidate(&t, &req(vec![g])),
            Err(Rejection::ForbiddenTrait(Trait::new("COMPUTE_STATUS_DISABLED").unwrap()))
        );
    }

    #[test]
    fn required_trait_must_be_on_a_serving_provider() {
        let root = node(None, &[(MemoryMb, 1024)], &[]);
        let numa = node(Some(root.id), &[(Vcpu, 4)], &["HW_NUMA_ROOT"]);
        let t = tree(vec![root, numa]);
        let mut g = group(None, &[(MemoryMb, 512)]);
        g.required.insert(Trait::new("HW_NUMA_ROOT").unwrap());
        assert_eq!(
            allocation_candidate(&t, &req(vec![g.clone()])),
            Err(Rejection::MissingTrait(Trait::new("HW_NUMA_ROOT").unwrap()))
        );
        g.resources.insert(Vcpu, 1);
        assert!(allocation_candidate(&t, &req(vec![g])).is_ok());
    }

    #[test]
    fn member_of_spans_tree_from_root() {
        let agg = AggregateId::new_v4();
        let mut root = node(None, &[(Vcpu, 4)], &[]);
        root.aggregates.insert(agg);
        let child = node(Some(root.id), &[(Pcpu, 4)], &[]);
        let t = tree(vec![root, child]);
        let mut r = req(vec![group(None, &[(Pcpu, 1)])]);
        r.member_of = vec![BTreeSet::from([agg])];
        assert!(allocation_candidate(&t, &r).is_ok());
        r.member_of = vec![BTreeSet::from([AggregateId::new_v4()])];
        assert_eq!(allocation_candidate(&t, &r), Err(Rejection::Aggregates));
        r.member_of.clear();
        r.forbidden_aggregates.insert(agg);
        assert_eq!(allocation_candidate(&t, &r), Err(Rejection::Aggregates));
    }

    #[test]
    fn units_and_usage_respected() {
        let mut root = node(None, &[(MemoryMb, 1024)], &[]);
        root.inventories.get_mut(&MemoryMb).unwrap().step_size = 256;
        root.usages.insert(MemoryMb, 768);
        let t = tree(vec![root]);
        assert!(allocation_candidate(&t, &req(vec![group(None, &[(MemoryMb, 256)])])).is_ok());
        assert_eq!(
            allocation_candidate(&t, &req(vec![group(None, &[(MemoryMb, 100)])])),
            Err(Rejection::NotEnough(MemoryMb))
        );
        assert_eq!(
            allocation_candidate(&t, &req(vec![group(None, &[(MemoryMb, 512)])])),
            Err(Rejection::NotEnough(MemoryMb))
        );
    }

    #[test]
    fn single_provider_fast_path_agrees_with_the_search() {
        let mut rng = crate::scheduler::SplitMix64::new(11);
        let traits = ["CUSTOM_A", "CUSTOM_B"];
        let agg = AggregateId::new_v4();
        let (mut ok, mut rejected) = (0, 0);
        for _ in 0..3000 {
            let mut root =
                node(None, &[(Vcpu, 1 + rng.below(8) as i64), (MemoryMb, 512 * (1 + rng.below(4) as i64))], &[]);
            if rng.below(2) == 0 {
                root.usages.insert(Vcpu, rng.below(4) as i64);
            }
            if rng.below(3) == 0 {
                root.inventories.get_mut(&MemoryMb).unwrap().step_size = 256;
            }
            if rng.below(2) == 0 {
                root.traits.insert(Trait::new(traits[rng.below(2)]).unwrap());
            }
            if rng.below(2) == 0 {
                root.aggregates.insert(agg);
            }
            let t = tree(vec![root]);
            let mut g0 = group(None, &[(Vcpu, 1 + rng.below(4) as i64), (MemoryMb, 128 * (1 + rng.below(8) as i64))]);
            match rng.below(4) {
                0 => {
                    g0.required.insert(Trait::new(traits[rng.below(2)]).unwrap());
                }
                1 => {
                    g0.forbidden.insert(Trait::new(traits[rng.below(2)]).unwrap());
                }
                _ => {}
            }
            let mut groups = vec![g0];
            for k in 0..rng.below(3) {
                groups.push(group(Some(&(k + 1).to_string()), &[(Vcpu, 1 + rng.below(2) as i64)]));
            }
            let mut r = req(groups);
            r.isolate = rng.below(2) == 0;
            if rng.below(3) == 0 {
                r.member_of = vec![BTreeSet::from([agg])];
            }
            let fast = allocation_candidate(&t, &r);
            assert_eq!(fast, search(&t, &r), "{t:?} {r:?}");
            assert_eq!(fits_request(&t, &r), fast.as_ref().map(|_| ()).map_err(Clone::clone));
            if fast.is_ok() { ok += 1 } else { rejected += 1 }
        }
        assert!(ok > 100 && rejected > 100, "both outcomes exercised: {ok} / {rejected}");
    }

    #[test]
    fn unsuffixed_nested_fast_path_agrees_with_the_search() {
        let mut rng = crate::scheduler::SplitMix64::new(23);
        let traits = ["CUSTOM_A", "CUSTOM_B"];
        let (agg, agg2) = (AggregateId::new_v4(), AggregateId::new_v4());
        let (mut ok, mut rejected, mut fast_hits) = (0, 0, 0);
        for _ in 0..3000 {
            let root = node(None, &[(DiskGb, 10 + rng.below(40) as i64)], &[]);
            let mut nodes = vec![root.clone()];
            for _ in 0..1 + rng.below(3) {
                let mut n = node(
                    Some(root.id),
                    &[(Vcpu, 1 + rng.below(8) as i64), (MemoryMb, 512 * (1 + rng.below(4) as i64))],
                    &[],
                );
                if rng.below(2) == 0 {
                    n.usages.insert(Vcpu, rng.below(4) as i64);
                }
                if rng.below(3) == 0 {
                    n.inventories.get_mut(&MemoryMb).unwrap().step_size = 256;
                }
                if rng.below(2) == 0 {
                    n.traits.insert(Trait::new(traits[rng.below(2)]).unwrap());
                }
                if rng.below(3) == 0 {
                    n.aggregates.insert(agg2);
                }
                nodes.push(n);
            }
            if rng.below(2) == 0 {
                nodes[0].aggregates.insert(agg);
            }
            let t = tree(nodes);
            let mut g0 = group(
                None,
                &[(Vcpu, 1 + rng.below(4) as i64), (MemoryMb, 128 * (1 + rng.below(8) as i64)), (DiskGb, 20)],
            );
            if rng.below(3) == 0 {
                g0.forbidden.insert(Trait::new(traits[rng.below(2)]).unwrap());
            }
            if rng.below(5) == 0 {
                g0.required.insert(Trait::new(traits[rng.below(2)]).unwrap());
            }
            let mut r = req(vec![g0]);
            match rng.below(4) {
                0 => r.member_of = vec![BTreeSet::from([agg])],
                1 => r.member_of = vec![BTreeSet::from([agg2])],
                2 => r.forbidden_aggregates = BTreeSet::from([agg2]),
                _ => {}
            }
            if rng.below(10) == 0 {
                r.budget = 1 + rng.below(3);
            }
            let full = search(&t, &r);
            fast_hits += usize::from(unsuffixed_fits(&t, &r));
            assert!(
                !(unsuffixed_fits(&t, &r) && full.is_err()),
                "fast path accepted what the search refuses: {t:?} {r:?}"
            );
            assert_eq!(fits_request(&t, &r), full.as_ref().map(|_| ()).map_err(Clone::clone), "{t:?} {r:?}");
            if full.is_ok() { ok += 1 } else { rejected += 1 }
        }
        assert!(ok > 100 && rejected > 100 && fast_hits > 100, "exercised: {ok} / {rejected} / {fast_hits}");
    }

    #[test]
    fn wide_tree_search_is_bounded() {
        let root = node(None, &[(Vcpu, 64)], &[]);
        let mut nodes = vec![root.clone()];
        for _ in 0..8 {
            nodes.push(node(Some(root.id), &[(Pgpu, 1)], &[]));
        }
        let t = tree(nodes);
        // 9 groups of one PGPU each on 8 one-unit providers: impossible, and the search
        // must stop at the budget instead of exploring 8^9 combinations.
        let groups: Vec<_> = (1..=9).map(|i| group(Some(&i.to_string()), &[(Pgpu, 1)])).collect();
        let mut r = req(groups.clone());
        r.budget = 5000;
        assert_eq!(allocation_candidate(&t, &r), Err(Rejection::NoCombination));
        // 8 groups fit exactly.
        let mut r = req(groups[..8].to_vec());
        r.budget = 5000;
        let a = allocation_candidate(&t, &r).unwrap();
        assert_eq!(a.len(), 8);
    }
}
