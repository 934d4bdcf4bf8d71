//! Request templates: [`allocation_candidate`](super::candidates::allocation_candidate)
//! split into what depends only on a host's *class* (tree shape, traits, aggregates, unit
//! rules) and what depends on the host itself (capacity and usage, plain integers).
//!
//! Hosts that share a tree shape share one [`Shape`]; a request is compiled once per shape
//! into a [`Template`] (which providers may serve which request group, the unit checks, the
//! reasons a provider is excluded for), and each host of the class then needs only integer
//! compares on its free capacity ([`Template::fits`]) or, for the allocation and the exact
//! rejection reason, the same depth-first search as the oracle over those integers
//! ([`Template::evaluate`]).
//!
//! The contract is equality with the oracle: for every tree and request,
//! `evaluate(shape(tree), usage(tree))` returns the allocation `allocation_candidate`
//! returns, or the same [`Rejection`]: same provider order, same first-fit search, same step
//! budget, same reasons. The property tests at the bottom check it on random nested trees.

use std::collections::BTreeSet;

use crate::model::{AggregateId, AllocationMap, Inventory, ProviderId, ProviderTree, ResourceClass, Trait};
use crate::scheduler::candidates::CandidateRequest;
use crate::scheduler::error::Rejection;

/// One provider of a tree shape (tree order: root first, parents before children).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ProvShape {
    /// Index of the parent in the shape (`None` for the root).
    pub parent: Option<u16>,
    /// Traits on this provider.
    pub traits: BTreeSet<Trait>,
    /// Aggregates of this provider.
    pub aggregates: BTreeSet<AggregateId>,
}

/// One inventory of a tree shape: a provider and a class, with the unit rules (capacity is
/// the host's).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct EntryShape {
    /// Provider index in the shape.
    pub slot: u16,
    /// The class.
    pub rc: ResourceClass,
    /// `min_unit`.
    pub min_unit: i64,
    /// `max_unit`.
    pub max_unit: i64,
    /// `step_size`.
    pub step_size: i64,
}

impl EntryShape {
    fn units_ok(&self, amount: i64) -> bool {
        amount >= self.min_unit && amount <= self.max_unit && amount % self.step_size == 0
    }
}

/// What hosts of one class share: the providers and inventories of their trees, without
/// capacities and usage. Entries are sorted by (provider, class).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Shape {
    /// Providers in tree order.
    pub providers: Vec<ProvShape>,
    /// Inventories sorted by (slot, class).
    pub entries: Vec<EntryShape>,
}

/// A tree split into its shape and its per-host integers.
#[derive(Clone, Debug)]
pub(crate) struct SplitTree {
    /// The class-level part.
    pub shape: Shape,
    /// Provider ids, in shape order.
    pub providers: Vec<ProviderId>,
    /// Capacity of each entry.
    pub cap: Vec<i64>,
    /// Usage of each entry.
    pub used: Vec<i64>,
    /// The inventory of each entry (for rebuilding the tree).
    pub inventories: Vec<Inventory>,
}

impl Shape {
    /// Splits a tree read from the store. Usage recorded for a class without inventory
    /// (impossible under the store contract) is dropped.
    pub fn split(tree: &ProviderTree) -> SplitTree {
        let index_of = |id: ProviderId| tree.providers.iter().position(|p| p.id == id);
        let mut shape = Shape::default();
        let mut providers = Vec::with_capacity(tree.providers.len());
        let mut cap = Vec::new();
        let mut used = Vec::new();
        let mut inventories = Vec::new();
        for (i, p) in tree.providers.iter().enumerate() {
            let parent = p.parent.and_then(index_of).map(|x| x as u16);
            shape.providers.push(ProvShape { parent, traits: p.traits.clone(), aggregates: p.aggregates.clone() });
            providers.push(p.id);
            for (rc, inv) in &p.inventories {
                shape.entries.push(EntryShape {
                    slot: i as u16,
                    rc: rc.clone(),
                    min_unit: inv.min_unit,
                    max_unit: inv.max_unit,
                    step_size: inv.step_size.max(1),
                });
                cap.push(inv.capacity());
                used.push(p.used(rc));
                inventories.push(*inv);
            }
        }
        SplitTree { shape, providers, cap, used, inventories }
    }

    /// The entry of `rc` on provider `slot`.
    pub fn entry(&self, slot: u16, rc: &ResourceClass) -> Option<usize> {
        let start = self.entries.partition_point(|e| e.slot < slot);
        self.entries[start..].iter().take_while(|e| e.slot == slot).position(|e| &e.rc == rc).map(|i| start + i)
    }

    fn has_inventory(&self, slot: u16, rc: &ResourceClass) -> bool {
        self.entry(slot, rc).is_some()
    }
}

/// Capacity and usage of one host, by entry.
pub(crate) trait Usage {
    /// Capacity of entry `e`.
    fn cap(&self, e: usize) -> i64;
    /// Usage of entry `e`.
    fn used(&self, e: usize) -> i64;
}

impl Usage for SplitTree {
    fn cap(&self, e: usize) -> i64 {
        self.cap[e]
    }
    fn used(&self, e: usize) -> i64 {
        self.used[e]
    }
}

/// One way to serve a variable: a provider and the amounts it would take.
#[derive(Clone, Debug)]
struct Opt {
    slot: u16,
    parts: Vec<(u16, i64)>,
}

#[derive(Clone, Debug)]
enum ShadowKind {
    Forbidden(Trait),
    Aggregate,
}

/// A provider with the inventory and units for an unsuffixed class that was excluded for a
/// trait or an aggregate: it only decides the rejection reason.
#[derive(Clone, Debug)]
struct Shadow {
    entry: u16,
    amount: i64,
    kind: ShadowKind,
}

#[derive(Clone, Debug)]
enum Empty {
    /// The reason does not depend on capacity.
    Fixed(Rejection),
    /// The unsuffixed rule: a forbidden trait or an aggregate on a provider that would have
    /// fit, else not enough of the class.
    Unsuffixed { rc: ResourceClass, shadows: Vec<Shadow> },
}

#[derive(Clone, Debug)]
struct Var {
    group: usize,
    numbered: bool,
    options: Vec<Opt>,
    empty: Empty,
}

#[derive(Clone, Debug)]
enum Step {
    Var(usize),
    Reject(Rejection),
}

/// A request compiled against one [`Shape`].
#[derive(Clone, Debug)]
pub(crate) struct Template {
    steps: Vec<Step>,
    vars: Vec<Var>,
    /// No host of the shape can fit (a class-level rejection or a variable without options).
    impossible: bool,
    /// Every variable can pick its first fitting option on its own (no shared inventory, no
    /// isolate, no trait spread over serving providers): no search needed.
    independent: bool,
    isolate: bool,
    /// Unsuffixed groups with required traits: (group index, traits).
    unsuffixed_required: Vec<(usize, Vec<Trait>)>,
    /// Traits of each provider, for the leaf check of `unsuffixed_required`.
    provider_traits: Vec<BTreeSet<Trait>>,
    entries: Vec<EntryShape>,
    budget: usize,
    /// One-provider shapes: the oracle's single-provider path (every amount of every group
    /// on the root, no step budget), tried before the search.
    single: Option<Single>,
}

/// The oracle's single-provider path, compiled: the class-level conditions held, so the
/// host passes when each amount and each per-class sum fits.
#[derive(Clone, Debug)]
struct Single {
    parts: Vec<(u16, i64)>,
    sums: Vec<(u16, i64)>,
}

impl Template {
    /// Compiles `req` against `shape` (Placement's rules as in the oracle).
    pub fn compile(shape: &Shape, req: &CandidateRequest) -> Template {
        let providers = &shape.providers;
        let root_aggs: BTreeSet<AggregateId> = providers.first().map(|r| r.aggregates.clone()).unwrap_or_default();
        let agg_ok: Vec<bool> = providers
            .iter()
            .map(|p| {
                let in_agg = |a: &AggregateId| p.aggregates.contains(a) || root_aggs.contains(a);
                req.member_of.iter().all(|set| set.iter().any(in_agg)) && !req.forbidden_aggregates.iter().any(in_agg)
            })
            .collect();
        let mut steps = Vec::new();
        let mut vars: Vec<Var> = Vec::new();
        let mut unsuffixed_required = Vec::new();
        for (gi, g) in req.groups.iter().enumerate() {
            if g.suffix.is_none() {
                if let Some(t) = g.required.iter().find(|t| !providers.iter().any(|p| p.traits.contains(*t))) {
                    steps.push(Step::Reject(Rejection::MissingTrait(t.clone())));
                }
                if !g.required.is_empty() {
                    unsuffixed_required.push((gi, g.required.iter().cloned().collect()));
                }
                for (rc, amount) in &g.resources {
                    let mut options = Vec::new();
                    let mut shadows = Vec::new();
                    let mut has_inventory = false;
                    for (pi, p) in providers.iter().enumerate() {
                        let Some(e) = shape.entry(pi as u16, rc) else {
                            continue;
                        };
                        has_inventory = true;
                        if !shape.entries[e].units_ok(*amount) {
                            continue;
                        }
                        if let Some(t) = g.forbidden.iter().find(|t| p.traits.contains(*t)) {
                            shadows.push(Shadow {
                                entry: e as u16,
                                amount: *amount,
                                kind: ShadowKind::Forbidden(t.clone()),
                            });
                            continue;
                        }
                        if !agg_ok[pi] {
                            shadows.push(Shadow { entry: e as u16, amount: *amount, kind: ShadowKind::Aggregate });
                            continue;
                        }
                        options.push(Opt { slot: pi as u16, parts: vec![(e as u16, *amount)] });
                    }
                    let empty = if has_inventory {
                        Empty::Unsuffixed { rc: rc.clone(), shadows }
                    } else {
                        Empty::Fixed(Rejection::NoInventory(rc.clone()))
                    };
                    steps.push(Step::Var(vars.len()));
                    vars.push(Var { group: gi, numbered: false, options, empty });
                }
                if g.resources.is_empty() {
                    if let Some(t) =
                        g.forbidden.iter().find(|t| providers.first().is_some_and(|r| r.traits.contains(*t)))
                    {
                        steps.push(Step::Reject(Rejection::ForbiddenTrait(t.clone())));
                    }
                    if (!req.member_of.is_empty() || !req.forbidden_aggregates.is_empty())
                        && !agg_ok.first().copied().unwrap_or(false)
                    {
                        steps.push(Step::Reject(Rejection::Aggregates));
                    }
                }
            } else {
                let mut options = Vec::new();
                for (pi, p) in providers.iter().enumerate() {
                    if !agg_ok[pi]
                        || !g.required.iter().all(|t| p.traits.contains(t))
                        || g.forbidden.iter().any(|t| p.traits.contains(t))
                    {
                        continue;
                    }
                    let mut parts = Vec::with_capacity(g.resources.len());
                    let mut ok = true;
                    for (rc, amount) in &g.resources {
                        match shape.entry(pi as u16, rc) {
                            Some(e) if shape.entries[e].units_ok(*amount) => parts.push((e as u16, *amount)),
                            _ => {
                                ok = false;
                                break;
                            }
                        }
                    }
                    if ok {
                        options.push(Opt { slot: pi as u16, parts });
                    }
                }
                let first = g.resources.keys().next();
                let any_inventory =
                    first.is_none_or(|c| (0..providers.len()).any(|pi| shape.has_inventory(pi as u16, c)));
                let reason = match first {
                    Some(c) if !any_inventory => Rejection::NoInventory(c.clone()),
                    _ => Rejection::NumberedGroup(g.suffix.clone().unwrap_or_default()),
                };
                steps.push(Step::Var(vars.len()));
                vars.push(Var { group: gi, numbered: true, options, empty: Empty::Fixed(reason) });
            }
        }
        let impossible =
            steps.iter().any(|s| matches!(s, Step::Reject(_))) || vars.iter().any(|v| v.options.is_empty());
        let numbered = vars.iter().filter(|v| v.numbered).count();
        let mut touched = vec![0usize; shape.entries.len()];
        for v in &vars {
            let mut mine: Vec<u16> = v.options.iter().flat_map(|o| o.parts.iter().map(|(e, _)| *e)).collect();
            mine.sort_unstable();
            mine.dedup();
            for e in mine {
                touched[e as usize] += 1;
            }
        }
        let independent = touched.iter().all(|n| *n <= 1)
            && !(req.isolate && numbered > 1)
            && unsuffixed_required.is_empty()
            && vars.len() <= req.budget;
        let single = match providers.as_slice() {
            [p] => compile_single(shape, p, req),
            _ => None,
        };
        Template {
            single,
            steps,
            vars,
            impossible,
            independent,
            isolate: req.isolate,
            unsuffixed_required,
            provider_traits: providers.iter().map(|p| p.traits.clone()).collect(),
            entries: shape.entries.clone(),
            budget: req.budget,
        }
    }

    /// True when no host of the shape can fit, whatever its free capacity.
    pub fn impossible(&self) -> bool {
        self.impossible
    }

    /// Whether the request fits on a host with this usage (`evaluate(..).is_ok()`, without
    /// building anything in the common case).
    pub fn fits<U: Usage>(&self, u: &U) -> bool {
        if self.single_hit(u).is_some() {
            return true;
        }
        if self.impossible {
            return false;
        }
        if self.independent {
            return self.vars.iter().all(|v| v.options.iter().any(|o| standalone(u, o)));
        }
        self.evaluate(u).is_ok()
    }

    /// The oracle's answer for a host with this usage: the amount taken from each entry
    /// (`(entry, sum)`, the allocation by inventory), or why not.
    pub fn evaluate<U: Usage>(&self, u: &U) -> Result<Vec<(u16, i64)>, Rejection> {
        if let Some(single) = self.single_hit(u) {
            return Ok(single.sums.clone());
        }
        for step in &self.steps {
            match step {
                Step::Reject(r) => return Err(r.clone()),
                Step::Var(v) => {
                    let var = &self.vars[*v];
                    if !var.options.iter().any(|o| standalone(u, o)) {
                        return Err(self.empty_reason(u, var));
                    }
                }
            }
        }
        let mut search = Search {
            t: self,
            u,
            choice: vec![0; self.vars.len()],
            sums: vec![0; self.entries.len()],
            count: vec![0; self.entries.len()],
            steps: 0,
            trait_miss: None,
        };
        if search.dfs(0) {
            let mut out = Vec::new();
            for (e, n) in search.count.iter().enumerate() {
                if *n > 0 {
                    out.push((e as u16, search.sums[e]));
                }
            }
            Ok(out)
        } else if let Some(t) = search.trait_miss {
            Err(Rejection::MissingTrait(t))
        } else {
            Err(Rejection::NoCombination)
        }
    }

    /// Same as [`evaluate`](Self::evaluate) (the name the scheduler reads better).
    pub fn parts<U: Usage>(&self, u: &U) -> Result<Vec<(u16, i64)>, Rejection> {
        self.evaluate(u)
    }

    /// Amounts by entry as an allocation map over `providers` (shape order).
    pub fn to_allocation(&self, parts: &[(u16, i64)], providers: &[ProviderId]) -> AllocationMap {
        let mut out = AllocationMap::new();
        for (e, sum) in parts {
            let entry = &self.entries[*e as usize];
            if let Some(p) = providers.get(entry.slot as usize) {
                out.entry(*p).or_default().insert(entry.rc.clone(), *sum);
            }
        }
        out
    }

    /// [`evaluate`](Self::evaluate) as an allocation map over `providers` (shape order),
    /// exactly as the oracle builds it.
    #[cfg(test)]
    pub fn allocation<U: Usage>(&self, u: &U, providers: &[ProviderId]) -> Result<AllocationMap, Rejection> {
        let parts = self.evaluate(u)?;
        let mut out = self.to_allocation(&parts, providers);
        // The oracle's single-provider path answers with the root's entry even when it
        // holds no amount; its search answers with nothing then.
        if let ([root], Some(_)) = (providers, self.single_hit(u)) {
            out.entry(*root).or_default();
        }
        Ok(out)
    }

    fn single_hit<U: Usage>(&self, u: &U) -> Option<&Single> {
        let s = self.single.as_ref()?;
        let fits = |(e, a): &(u16, i64)| u.used(*e as usize) + a <= u.cap(*e as usize);
        (s.parts.iter().all(fits) && s.sums.iter().all(fits)).then_some(s)
    }

    fn empty_reason<U: Usage>(&self, u: &U, var: &Var) -> Rejection {
        match &var.empty {
            Empty::Fixed(r) => r.clone(),
            Empty::Unsuffixed { rc, shadows } => {
                let fits = |s: &Shadow| u.used(s.entry as usize) + s.amount <= u.cap(s.entry as usize);
                if let Some(t) = shadows.iter().find_map(|s| match &s.kind {
                    ShadowKind::Forbidden(t) if fits(s) => Some(t),
                    _ => None,
                }) {
                    return Rejection::ForbiddenTrait(t.clone());
                }
                if shadows.iter().any(|s| matches!(s.kind, ShadowKind::Aggregate) && fits(s)) {
                    return Rejection::Aggregates;
                }
                Rejection::NotEnough(rc.clone())
            }
        }
    }
}

/// The class-level part of the oracle's single-provider path for a one-provider shape, or
/// `None` when it can never succeed (the search then decides).
fn compile_single(shape: &Shape, p: &ProvShape, req: &CandidateRequest) -> Option<Single> {
    let in_agg = |a: &AggregateId| p.aggregates.contains(a);
    if !req.member_of.iter().all(|set| set.iter().any(in_agg)) || req.forbidden_aggregates.iter().any(in_agg) {
        return None;
    }
    if req.isolate && req.groups.iter().filter(|g| g.suffix.is_some()).count() > 1 {
        return None;
    }
    let mut parts = Vec::new();
    let mut sums: std::collections::BTreeMap<u16, i64> = std::collections::BTreeMap::new();
    for g in &req.groups {
        if !g.required.iter().all(|t| p.traits.contains(t)) || g.forbidden.iter().any(|t| p.traits.contains(t)) {
            return None;
        }
        for (rc, amount) in &g.resources {
            let e = shape.entry(0, rc)?;
            if !shape.entries[e].units_ok(*amount) {
                return None;
            }
            parts.push((e as u16, *amount));
            let s = sums.entry(e as u16).or_insert(0);
            *s = s.saturating_add(*amount);
        }
    }
    if !sums.iter().all(|(e, sum)| shape.entries[*e as usize].units_ok(*sum)) {
        return None;
    }
    Some(Single { parts, sums: sums.into_iter().collect() })
}

/// The option fits on its own (the oracle's candidate list: units are class-level).
fn standalone<U: Usage>(u: &U, o: &Opt) -> bool {
    o.parts.iter().all(|(e, a)| u.used(*e as usize).saturating_add(*a) <= u.cap(*e as usize))
}

struct Search<'a, U: Usage> {
    t: &'a Template,
    u: &'a U,
    choice: Vec<u16>,
    sums: Vec<i64>,
    count: Vec<u32>,
    steps: usize,
    trait_miss: Option<Trait>,
}

impl<U: Usage> Search<'_, U> {
    fn try_add(&mut self, o: &Opt) -> bool {
        for (e, a) in &o.parts {
            let e = *e as usize;
            if self.u.used(e).saturating_add(self.sums[e]).saturating_add(*a) > self.u.cap(e) {
                return false;
            }
        }
        for (e, a) in &o.parts {
            self.sums[*e as usize] = self.sums[*e as usize].saturating_add(*a);
            self.count[*e as usize] += 1;
        }
        true
    }

    fn remove(&mut self, o: &Opt) {
        for (e, a) in &o.parts {
            self.sums[*e as usize] = self.sums[*e as usize].saturating_sub(*a);
            self.count[*e as usize] -= 1;
        }
    }

    fn leaf_ok(&mut self) -> bool {
        for (e, n) in self.count.iter().enumerate() {
            if *n > 0 && !self.t.entries[e].units_ok(self.sums[e]) {
                return false;
            }
        }
        if self.t.isolate {
            let mut seen = BTreeSet::new();
            for (i, v) in self.t.vars.iter().enumerate() {
                if v.numbered && !seen.insert(self.choice[i]) {
                    return false;
                }
            }
        }
        for (gi, required) in &self.t.unsuffixed_required {
            let serving: Vec<u16> =
                self.t.vars.iter().enumerate().filter(|(_, v)| v.group == *gi).map(|(i, _)| self.choice[i]).collect();
            for t in required {
                let on_tree = if serving.is_empty() {
                    self.t.provider_traits.first().is_some_and(|r| r.contains(t))
                } else {
                    serving.iter().any(|p| self.t.provider_traits[*p as usize].contains(t))
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
        if i == self.t.vars.len() {
            return self.leaf_ok();
        }
        let t = self.t;
        for o in &t.vars[i].options {
            if !standalone(self.u, o) {
                continue;
            }
            self.steps += 1;
            if self.steps > t.budget {
                return false;
            }
            if !self.try_add(o) {
                continue;
            }
            self.choice[i] = o.slot;
            if self.dfs(i + 1) {
                return true;
            }
            self.remove(o);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Inventory, ProviderNode, RequestGroup, Resources};
    use crate::scheduler::candidates::allocation_candidate;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const TRAITS: [&str; 3] = ["CUSTOM_A", "CUSTOM_B", "HW_NUMA_ROOT"];
    const CLASSES: [ResourceClass; 4] =
        [ResourceClass::Vcpu, ResourceClass::MemoryMb, ResourceClass::Pcpu, ResourceClass::SriovNetVf];

    fn aggs() -> [AggregateId; 3] {
        // Fixed ids so that shrinking and regressions are reproducible.
        [
            AggregateId(uuid::Uuid::from_u128(1)),
            AggregateId(uuid::Uuid::from_u128(2)),
            AggregateId(uuid::Uuid::from_u128(3)),
        ]
    }

    #[derive(Debug, Clone)]
    struct NodeSpec {
        parent_pick: usize,
        inv: Vec<(usize, i64, i64, i64, i64, i64)>, // class, total, used, min, max, step
        traits: Vec<usize>,
        aggs: Vec<usize>,
    }

    fn node_spec() -> impl Strategy<Value = NodeSpec> {
        (
            any::<usize>(),
            prop::collection::vec((0..4usize, 1..12i64, 0..12i64, 1..3i64, 2..12i64, 1..3i64), 0..3),
            prop::collection::vec(0..3usize, 0..2),
            prop::collection::vec(0..3usize, 0..2),
        )
            .prop_map(|(parent_pick, inv, traits, aggs)| NodeSpec { parent_pick, inv, traits, aggs })
    }

    fn build_tree(nodes: &[NodeSpec]) -> ProviderTree {
        let ids: Vec<ProviderId> =
            (0..nodes.len()).map(|i| ProviderId(uuid::Uuid::from_u128(100 + i as u128))).collect();
        let aggs = aggs();
        let mut providers = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let parent = if i == 0 { None } else { Some(ids[n.parent_pick % i]) };
            let mut inventories = BTreeMap::new();
            let mut usages = Resources::new();
            for (c, total, used, min, max, step) in &n.inv {
                let inv = Inventory {
                    total: *total,
                    min_unit: *min,
                    max_unit: (*max).max(*min),
                    step_size: *step,
                    ..Inventory::with_total(*total)
                };
                inventories.insert(CLASSES[*c].clone(), inv);
                let u = (*used).min(*total);
                if u > 0 {
                    usages.insert(CLASSES[*c].clone(), u);
                }
            }
            providers.push(ProviderNode {
                id: ids[i],
                name: format!("p{i}"),
                parent,
                traits: n.traits.iter().map(|t| Trait::new(TRAITS[*t]).unwrap()).collect(),
                aggregates: n.aggs.iter().map(|a| aggs[*a]).collect(),
                inventories,
                usages,
            });
        }
        ProviderTree { root: ids[0], generation: 1, cell: None, providers, groups: BTreeMap::new() }
    }

    #[derive(Debug, Clone)]
    struct GroupSpec {
        res: Vec<(usize, i64)>,
        required: Vec<usize>,
        forbidden: Vec<usize>,
    }

    fn group_spec() -> impl Strategy<Value = GroupSpec> {
        (
            prop::collection::vec((0..4usize, 1..6i64), 0..3),
            prop::collection::vec(0..3usize, 0..2),
            prop::collection::vec(0..3usize, 0..2),
        )
            .prop_map(|(res, required, forbidden)| GroupSpec { res, required, forbidden })
    }

    fn build_req(
        unsuffixed: Option<GroupSpec>,
        numbered: Vec<GroupSpec>,
        isolate: bool,
        member_of: Vec<Vec<usize>>,
        forbidden_aggs: Vec<usize>,
        budget: usize,
    ) -> CandidateRequest {
        let aggs = aggs();
        let mk = |suffix: Option<String>, g: &GroupSpec| RequestGroup {
            suffix,
            resources: g.res.iter().map(|(c, a)| (CLASSES[*c].clone(), *a)).collect(),
            required: g.required.iter().map(|t| Trait::new(TRAITS[*t]).unwrap()).collect(),
            forbidden: g
                .forbidden
                .iter()
                .filter(|t| !g.required.contains(t))
                .map(|t| Trait::new(TRAITS[*t]).unwrap())
                .collect(),
        };
        let mut groups = Vec::new();
        if let Some(u) = &unsuffixed {
            groups.push(mk(None, u));
        }
        for (i, g) in numbered.iter().enumerate() {
            groups.push(mk(Some((i + 1).to_string()), g));
        }
        CandidateRequest {
            groups,
            isolate,
            member_of: member_of
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| s.iter().map(|a| aggs[*a]).collect())
                .collect(),
            forbidden_aggregates: forbidden_aggs.iter().map(|a| aggs[*a]).collect(),
            budget,
        }
    }

    fn check(tree: &ProviderTree, req: &CandidateRequest) -> Result<(), TestCaseError> {
        let split = Shape::split(tree);
        let t = Template::compile(&split.shape, req);
        let oracle = allocation_candidate(tree, req);
        let ours = t.allocation(&split, &split.providers);
        prop_assert_eq!(&ours, &oracle, "tree {:?} req {:?}", tree, req);
        prop_assert_eq!(t.fits(&split), oracle.is_ok());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        /// The compiled template decides exactly as the oracle (allocation or reason) on
        /// random nested trees and requests with numbered groups, traits and aggregates.
        #[test]
        fn template_matches_the_oracle(
            nodes in prop::collection::vec(node_spec(), 1..6),
            unsuffixed in prop::option::weighted(0.85, group_spec()),
            numbered in prop::collection::vec(group_spec(), 0..3),
            isolate in any::<bool>(),
            member_of in prop::collection::vec(prop::collection::vec(0..3usize, 0..3), 0..2),
            forbidden_aggs in prop::collection::vec(0..3usize, 0..2),
            budget in prop_oneof![Just(1000usize), 1..6usize],
        ) {
            let tree = build_tree(&nodes);
            let req = build_req(unsuffixed, numbered, isolate, member_of, forbidden_aggs, budget);
            check(&tree, &req)?;
        }
    }

    #[test]
    fn bench_shaped_host_is_independent_and_agrees() {
        // Root with VCPU/MEMORY/DISK, two NUMA children with PCPU, a PF with VFs.
        let nodes = vec![
            NodeSpec {
                parent_pick: 0,
                inv: vec![(0, 10, 2, 1, 10, 1), (1, 10, 0, 1, 10, 1)],
                traits: vec![],
                aggs: vec![0],
            },
            NodeSpec { parent_pick: 0, inv: vec![(2, 8, 8, 1, 8, 1)], traits: vec![2], aggs: vec![] },
            NodeSpec { parent_pick: 0, inv: vec![(2, 8, 3, 1, 8, 1)], traits: vec![2], aggs: vec![] },
            NodeSpec { parent_pick: 0, inv: vec![(3, 4, 0, 1, 4, 1)], traits: vec![0], aggs: vec![] },
        ];
        let tree = build_tree(&nodes);
        let unsuffixed = GroupSpec { res: vec![(2, 4), (1, 5)], required: vec![], forbidden: vec![] };
        let vf = GroupSpec { res: vec![(3, 1)], required: vec![0], forbidden: vec![] };
        let req = build_req(Some(unsuffixed), vec![vf], false, vec![vec![0]], vec![], 1000);
        let split = Shape::split(&tree);
        let t = Template::compile(&split.shape, &req);
        assert!(t.independent && !t.impossible);
        let a = t.allocation(&split, &split.providers).unwrap();
        assert_eq!(a, allocation_candidate(&tree, &req).unwrap());
        assert_eq!(a[&split.providers[2]][&ResourceClass::Pcpu], 4, "NUMA 0 is full: NUMA 1 serves");
    }
}
