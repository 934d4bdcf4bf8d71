//! Placement's `GET /allocation_candidates` and Nova's HostManager reads as store queries,
//! for the Nova-faithful scheduler ([`NovaScheduler`](crate::scheduler::nova::NovaScheduler)).
//!
//! Why a separate trait: unicell's own scheduler never asks the store which hosts fit (it
//! ranks from its snapshot and lets the claim decide), so the [`Store`](crate::store::Store)
//! contract has no such query. Nova does ask, on every request, and the benchmarks compare
//! the two designs on the same SQL baseline; only a backend that keeps Placement's tables
//! can answer the way Placement does, so only the SQL baseline implements this
//! ([`Store::candidate_queries`](crate::store::Store::candidate_queries)).
//!
//! # What of Placement's query is reproduced
//!
//! * **Resources on the root provider only**: a candidate is a tree whose root provider has
//!   an inventory of every requested class with `used + amount <= (total - reserved) *
//!   allocation_ratio`, `min_unit <= amount <= max_unit` and `amount % step_size == 0`
//!   (Placement's `_get_providers_with_resource` rules). No nested providers (a class
//!   served by a child provider such as a NUMA cell gives no candidate, where Placement
//!   would find one), no sharing providers, no numbered request groups, no
//!   `group_policy`, no `in_tree`, no `same_subtree`, no `required` on children.
//! * Required and forbidden traits of the (unsuffixed) request group, on the root.
//! * `member_of` (each OR-list must meet the root's aggregates) and forbidden aggregates.
//! * `limit` = Nova's `max_placement_results`, with Placement's default
//!   `randomize_allocation_candidates = False`: the first rows the database returns, not a
//!   random sample.
//! * The provider summaries of the candidates: every provider of each candidate tree with
//!   inventories, usage, traits and aggregates (Placement since microversion 1.29), plus
//!   the tree's server-group member counts (Nova's HostManager knows the instances of each
//!   host; here the per-tree counts stand for them).

use std::collections::BTreeSet;

use async_trait::async_trait;

use crate::error::Result;
use crate::model::{AggregateId, CellId, GroupId, Host, ProviderId, ProviderTree, Resources, Trait};

/// One `GET /allocation_candidates` request of the subset described in the module docs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CandidateQuery {
    /// Amount per class, all from the root provider (`resources=`).
    pub resources: Resources,
    /// Traits the root must have (`required=`).
    pub required: BTreeSet<Trait>,
    /// Traits the root must not have (`required=!T`).
    pub forbidden: BTreeSet<Trait>,
    /// `member_of`: the root must be in one aggregate of each set.
    pub member_of: Vec<BTreeSet<AggregateId>>,
    /// Aggregates the root must not be in (`member_of=!in:`).
    pub forbidden_aggregates: BTreeSet<AggregateId>,
    /// `limit` (Nova's `max_placement_results`); `None`: every candidate.
    pub limit: Option<usize>,
}

/// The queries the Nova-faithful scheduler sends to the store (see the module docs).
#[async_trait]
pub trait CandidateQueries: Send + Sync {
    /// Placement's `GET /allocation_candidates` for `query`: the candidate trees (root
    /// first in each), at most `query.limit` of them, with their provider summaries and
    /// generations as read. Fails with `InvalidInput` for a query with no resources.
    async fn allocation_candidates(&self, query: &CandidateQuery) -> Result<Vec<ProviderTree>>;

    /// The compute hosts whose root providers are `roots`, read from the cell databases
    /// (Nova's HostManager reading compute nodes by uuid, one query per cell). A root
    /// whose cell is `None` is looked for in every cell. Unknown roots are left out.
    async fn hosts_by_root(&self, roots: &[(ProviderId, Option<CellId>)]) -> Result<Vec<Host>>;

    /// The root providers of the trees holding members of `group` (Nova reads the hosts of
    /// a group's instances for the affinity filter).
    async fn group_roots(&self, group: GroupId) -> Result<Vec<(ProviderId, Option<CellId>)>>;
}
