//! The storage seam: one trait, one contract, one conformance suite.
//!
//! Every backend (the embedded [`memory`] store, Redis, CQL and the SQL baseline) implements
//! [`Store`] and runs the whole conformance suite (module `conformance`, feature
//! `conformance`). Open one by URL with [`open`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::Result;
use crate::model::{
    Aggregate, AggregateId, Cell, CellId, ChangeCursor, Changes, Claim, ClaimRequest, ConsumerId, Flavor, FlavorId,
    GroupId, Host, Instance, InstanceId, InstancePage, InstancePatch, InstanceStub, Inventory, InventoryWrite,
    ListQuery, NewProvider, ProviderId, ProviderTree, Released, RequestSpec, ResourceClass, ServerGroup, Timestamp,
    Trait, TreeAllocation,
};

pub mod audit;
pub mod candidates;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
#[cfg(feature = "cql")]
pub mod cql;
pub mod leases;
pub mod memory;
pub mod placement;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sql")]
pub mod sql;
mod url;

pub use self::url::{Scheme, StoreUrl, redact_text};
pub(crate) use self::url::{is_secret_key, percent_decode_lossy, split_host_list};

/// The one storage contract of unicell, the sum of five per-concern traits. Object safe; used
/// as `Arc<dyn Store>`. Calling a method on a `dyn Store` needs its sub-trait in scope: `use
/// unicell::store::prelude::*;`.
///
/// The numbered lines below are the whole contract, written once here; each sub-trait names
/// the lines it carries ([`Providers`]: 7 to 10, [`Claims`]: 1 to 7, [`ChangeFeed`]: 11,
/// [`Catalog`]: 12, [`Instances`]: 13, 14 and 17; lines 15 and 16 bind every method). The
/// conformance suite (feature `conformance`) checks every line on every backend.
///
/// # Claims (the invariant everything else serves)
///
/// 1. **Atomic and isolated per provider tree.** [`claim`](Claims::claim) writes every amount
///    of one consumer on one tree, or none. Two claims that together exceed a provider's
///    capacity can never both succeed, whatever the number of schedulers, processes or
///    backend nodes. After any interleaving of claims and releases, every provider's usage
///    of every class equals the sum of the allocations held on it and never exceeds its
///    capacity (unless inventory shrank underneath, see below).
/// 2. **Fit rule** (Placement's): an amount `A` of class `C` on provider `P` fits when `P` has
///    an inventory of `C`, `min_unit <= A <= max_unit`, `A % step_size == 0` and
///    `used + A <= floor((total - reserved) * allocation_ratio)`. Decisions are exactly those
///    of [`ClaimRequest::evaluate`], including which error wins.
/// 3. **Idempotent per consumer.** Replaying a claim the consumer already holds on that tree
///    (same amounts) succeeds with `replayed = true` and changes nothing; a claim with
///    different amounts on a tree where the consumer already holds some fails with
///    [`Conflict::ConsumerMismatch`](crate::error::Conflict::ConsumerMismatch). A consumer
///    may hold allocations on several trees (one claim each).
/// 4. **Release** ([`release`](Claims::release)) removes everything the consumer holds on
///    every tree and is idempotent: releasing a consumer that holds nothing succeeds with no
///    roots. A crash between any two steps of a claim or release must never leave an
///    allocation that `allocations`/`release` cannot find.
/// 5. **Failures say why:** [`Error::Capacity`](crate::Error::Capacity) names the provider and
///    class that did not fit; [`Error::NotFound`](crate::Error::NotFound) an unknown provider
///    (kind `Provider`) or a class the provider has no inventory of (kind `Inventory`);
///    [`Error::InvalidInput`](crate::Error::InvalidInput) an amount that is not positive, off
///    `step_size`, outside `min_unit..=max_unit`, or providers spanning trees;
///    [`Conflict::GroupLimit`](crate::error::Conflict::GroupLimit) a server group full on
///    that tree. A failed claim writes nothing.
/// 6. **Server groups in claims:** a claim naming a [`GroupClaim`](crate::model::GroupClaim)
///    records the consumer as a member on that tree (visible in [`ProviderTree::groups`]) and
///    enforces `max_per_host` atomically with the amounts.
///
/// # Generations and inventories
///
/// 7. Every write to a tree (claim, release, inventory, traits, aggregates, new child)
///    changes its generation; a replayed claim or an empty release does not.
/// 8. [`set_inventories`](Providers::set_inventories), [`set_traits`](Providers::set_traits)
///    and [`set_aggregates`](Providers::set_aggregates) take the generation the caller read and
///    fail with [`Conflict::Generation`](crate::error::Conflict::Generation) when it moved
///    (optimistic read-modify-write, as Placement's `PUT .../inventories`).
/// 9. Shrinking an inventory below its usage is accepted, as in Placement, and reported in
///    [`InventoryWrite::over_capacity`]; claims of that class then fail until usage drops
///    (an allocation write may leave a provider over capacity only if it does not make it
///    worse). Removing a class that has allocations fails with
///    [`Conflict::InventoryInUse`](crate::error::Conflict::InventoryInUse).
///
/// # Scheduler reads
///
/// 10. [`provider_tree`](Providers::provider_tree) and
///     [`list_provider_trees`](Providers::list_provider_trees) return trees with inventories,
///     usages, traits, aggregates and group counts, each tree read consistently (one
///     generation).
/// 11. [`change_cursor`](ChangeFeed::change_cursor) and
///     [`changes_since`](ChangeFeed::changes_since) are the cheap change check: take a cursor,
///     load everything, then ask for the trees that changed since the cursor; the answer costs
///     in proportion to the changes, may name a tree that did not change, never omits one that
///     did, and says [`Changes::Resync`] when the feed no longer reaches back that far. A
///     generation it gives for a tree is never behind the changes it reports (and is never
///     given for a deleted tree): a reader holding that generation may skip the tree. A
///     [`TreeUsage`](crate::model::TreeUsage) it gives for a tree is the tree's usage and
///     group counts at the generation it gives for that tree, and every write to the tree
///     after its `usage_only_since` was a claim or a release: a reader holding the tree at
///     that generation or later may apply the usage instead of reading the tree.
///
/// # Catalog
///
/// 12. Cells, hosts, flavors and aggregates are upserted by id (`put_*`); server groups are
///     created once ([`Error::AlreadyExists`](crate::Error::AlreadyExists) otherwise); request
///     specs are stored per instance. Reads of missing ids give `NotFound`. A host's
///     `last_heartbeat` never goes back: it is the latest of the values
///     [`put_host`](Catalog::put_host) and [`report_host`](Catalog::report_host) wrote.
///     Every completed [`put_cell`](Catalog::put_cell), [`put_host`](Catalog::put_host) and
///     [`put_aggregate`](Catalog::put_aggregate) sets [`Changes::Trees::catalog`] in the
///     answer of a later `changes_since` from a cursor taken before it; a heartbeat does not.
///     A writer that stops between its write and the feed entry (the two are one atomic
///     step only where the backend says so) leaves the write unannounced: readers keep a
///     slow periodic catalog read as the safety net.
///
/// # Instances
///
/// 13. [`create_instance`](Instances::create_instance) fails with `AlreadyExists` for a known
///     uuid; [`update_instance`](Instances::update_instance) applies an [`InstancePatch`]
///     atomically and bumps `updated_at`; soft delete is a patch (`deleted: Some(true)`);
///     [`delete_instance`](Instances::delete_instance) removes the record for good. A write
///     interrupted by a crash is either applied or not as far as reads and listings can
///     tell; what it left behind is removed by
///     [`repair_instance`](Instances::repair_instance).
/// 14. [`list_instances`](Instances::list_instances) has Nova's semantics: order `created_at`
///     descending then uuid descending (a total order); `limit` defaults to and is clamped
///     at [`MAX_LIMIT`](crate::model::MAX_LIMIT); `marker` is the uuid of the previous
///     page's last instance and an unknown marker is `NotFound` of kind `Marker` (never an
///     empty page); filters as [`InstanceFilters::matches`](crate::model::InstanceFilters::matches);
///     `next_marker` is set exactly when more instances remain. Paging never skips or
///     repeats an instance that existed when the first page was read, while other instances
///     are created concurrently.
///
/// # Errors and secrets
///
/// 15. Every failure is an [`Error`](crate::Error) variant with its meaning. Three are
///     [retryable](crate::Error::is_retryable): `Unavailable` and `Timeout`, where the same
///     call may succeed when repeated as is, and
///     [`Conflict::Generation`](crate::error::Conflict::Generation), which is retryable only
///     after a re-read: the caller reads the tree again and redoes its write from what it
///     finds, with the new generation (repeating a `set_*` call with the stale generation
///     fails again; a [`claim`](Claims::claim) carries no generation and reads the tree
///     itself, so repeating the claim is the re-read). Nothing panics on bad input.
/// 16. Credentials in URLs never appear in `Debug`, `Display`, errors or logs (see
///     [`StoreUrl`]).
///
/// # Degraded listings
///
/// 17. A listing that cannot read part of the store (a cell database down, a Redis master
///     with its slots lost, CQL replicas short of the consistency level) never returns a
///     page that silently lacks instances:
///     * **Without [`ListQuery::partial`]** it fails with a retryable `Unavailable` or
///       `Timeout` whose message names the unreachable part (the cell database's redacted
///       URL, the Redis shard and slot, the CQL partition), never a credential. One
///       exception, for fidelity to Nova's default (`list_records_by_skipping_down_cells`):
///       the SQL baseline with `down_cell=skip` returns the page without the cell's
///       instances and names the cell in [`InstancePage::unreachable`] (`stubbed: false`).
///     * **With `partial`** a backend that can read the other parts returns their page
///       (line 14 over the readable parts: order, limit, filters, `next_marker`) and names
///       every part it could not read in [`InstancePage::unreachable`]. Where the store
///       still knows an unreachable part's instances without their records, the page lists
///       them in [`InstancePage::stubs`] ([`InstanceStub`]: uuid, project, creation time)
///       and marks the part `stubbed`: every such instance whose project matches
///       `filters.project_id` and whose cell matches `filters.cell`, unless known to be
///       soft-deleted, newest first, never one already in `instances`, at most `limit`
///       minus the instances listed (Nova prepends its down-cell stubs within the limit).
///       Other filters cannot be evaluated without the record, so a caller that filters
///       must not show stubs as matches (Nova asks for stubs only without filters). Stubs
///       come only on a page without a marker, so paging never repeats one. What each
///       backend can do: memory is never partial; the SQL baseline skips a down cell
///       database and stubs its instances from the API database's `instance_mappings`
///       (the API database itself down fails every listing); Redis skips the index shards
///       it cannot read, without stubs (an instance's record lives in its index shard's
///       slot, so nothing else knows it); CQL cannot skip (a partition it cannot read is
///       a bucket of every shard's time line) and fails as without `partial`.
///     * A marker whose record cannot be read fails either way (Nova: 500).
///     * [`instance_stub`](Instances::instance_stub) gives what the store knows of one
///       instance apart from its record, for a caller whose read of it failed.
#[async_trait]
pub trait Store: Providers + Claims + ChangeFeed + Catalog + Instances + std::fmt::Debug + Send + Sync {
    /// The backend's short name (`memory`, `redis`, `cql`, `sql`).
    fn backend(&self) -> &'static str;

    /// A description safe to log: backend and URL with credentials redacted.
    fn describe(&self) -> String;

    /// The build leases of this store ([`leases`]), or `None` for a backend that does not
    /// implement them yet (builds then run without crash-safe takeover).
    fn leases(&self) -> Option<&dyn leases::Leases> {
        None
    }

    /// This store as a [`PlacementStore`](placement::PlacementStore) (the state only the
    /// Placement API needs), or `None` for a backend that does not keep it.
    fn placement(&self) -> Option<&dyn placement::PlacementStore> {
        None
    }

    /// Placement's candidate query and Nova's host reads ([`candidates`]), for the
    /// Nova-faithful scheduler; `None` for a backend without Placement's tables (every
    /// backend but the SQL baseline).
    fn candidate_queries(&self) -> Option<&dyn candidates::CandidateQueries> {
        None
    }

    /// The part of the store that holds `root`'s tree, for a backend that splits its data
    /// so that one part can fail while the others answer (Redis's tree shards, each on the
    /// cluster master owning its slots); `None` when the backend does not say. The
    /// scheduler uses it to move on to a host in another part after a retryable error.
    fn tree_shard(&self, _root: ProviderId) -> Option<usize> {
        None
    }
}

/// Provider trees: creation, deletion, the scheduler's reads and the optimistic writes of
/// inventories, traits and aggregates. Carries [`Store`] contract lines 7 to 10.
#[async_trait]
pub trait Providers: Send + Sync {
    /// Creates a provider: a new tree when `parent` is `None`, else a child added to the
    /// parent's tree (bumping its generation). Returns the tree's generation. Fails with
    /// `AlreadyExists` for a known id, `Conflict::DuplicateName` for a taken name,
    /// `NotFound` for an unknown parent.
    async fn create_provider(&self, provider: &NewProvider) -> Result<u64>;

    /// Deletes a provider with no children and no allocations (a root deletes its tree).
    async fn delete_provider(&self, provider: ProviderId) -> Result<()>;

    /// The tree containing `provider` (any provider of it, not only the root).
    async fn provider_tree(&self, provider: ProviderId) -> Result<ProviderTree>;

    /// Every tree, or those of one cell.
    async fn list_provider_trees(&self, cell: Option<CellId>) -> Result<Vec<ProviderTree>>;

    /// Replaces the provider's whole inventory if the tree is still at `generation`.
    async fn set_inventories(
        &self,
        provider: ProviderId,
        generation: u64,
        inventories: &BTreeMap<ResourceClass, Inventory>,
    ) -> Result<InventoryWrite>;

    /// Replaces the provider's traits if the tree is still at `generation`; returns the new one.
    async fn set_traits(&self, provider: ProviderId, generation: u64, traits: &BTreeSet<Trait>) -> Result<u64>;

    /// Replaces the provider's aggregates if the tree is still at `generation`; returns the new one.
    async fn set_aggregates(
        &self,
        provider: ProviderId,
        generation: u64,
        aggregates: &BTreeSet<AggregateId>,
    ) -> Result<u64>;
}

/// Claims and releases: the invariant everything else serves. Carries [`Store`] contract
/// lines 1 to 6, and line 7 for the generation changes its writes make.
#[async_trait]
pub trait Claims: Send + Sync {
    /// Claims the request's amounts atomically on one tree (contract lines 1 to 6).
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim>;

    /// Claims several requests in one call: one result per request, in order, each claim
    /// still all-or-nothing on its own tree exactly as [`claim`](Claims::claim) (one failing
    /// request does not undo or stop the others). The outer `Err` is only for a failure of
    /// the whole call (transport), after which any of the claims may or may not have been
    /// made: claims are idempotent, so replaying them tells.
    ///
    /// This default claims one request after the other; a backend overrides it when it can
    /// send the claims in fewer round trips.
    async fn claim_batch(&self, requests: &[ClaimRequest]) -> Result<Vec<Result<Claim>>> {
        let mut out = Vec::with_capacity(requests.len());
        for request in requests {
            out.push(self.claim(request).await);
        }
        Ok(out)
    }

    /// Releases everything `consumer` holds (idempotent).
    async fn release(&self, consumer: ConsumerId) -> Result<Released>;

    /// What `consumer` holds, one entry per tree (empty when nothing).
    async fn allocations(&self, consumer: ConsumerId) -> Result<Vec<TreeAllocation>>;

    /// Every consumer's allocations on the tree containing `provider` (for audits).
    async fn tree_allocations(&self, provider: ProviderId) -> Result<Vec<TreeAllocation>>;
}

/// [`Claims::claim_batch`] for a backend whose claims are independent round trips (a CQL
/// lightweight transaction, a SQL transaction): up to `width` claims in flight at once on
/// the backend's connection pool, results in request order. Each claim is still
/// all-or-nothing on its own tree; two requests of one batch on the same tree race as two
/// schedulers would, and the backend's own conflict handling settles them.
#[cfg(any(feature = "cql", feature = "sql"))]
pub(crate) async fn claim_in_parallel<S: Claims + ?Sized>(
    store: &S,
    requests: &[ClaimRequest],
    width: usize,
) -> Vec<Result<Claim>> {
    use futures::StreamExt;
    // Built in a loop, not a `map` closure: a closure returning the `async_trait` future
    // trips the compiler's higher-ranked lifetime inference inside another `Send` future.
    let mut claims = Vec::with_capacity(requests.len());
    for r in requests {
        claims.push(store.claim(r));
    }
    futures::stream::iter(claims).buffered(width.max(1)).collect().await
}

/// [`Instances::update_instances`] for a backend whose writes are independent round trips
/// (a CQL lightweight transaction, a SQL transaction): up to `width` in flight at once,
/// results in request order. Updates of one instance are applied one after the other, in
/// batch order (they would race otherwise).
#[cfg(any(feature = "cql", feature = "sql"))]
pub(crate) async fn update_in_parallel<S: Instances + ?Sized>(
    store: &S,
    updates: &[(InstanceId, InstancePatch)],
    width: usize,
) -> Vec<Result<Instance>> {
    use futures::StreamExt;
    if repeats_an_instance(updates) {
        return update_in_order(store, updates).await;
    }
    // Built in a loop for the same reason as in `claim_in_parallel`.
    let mut writes = Vec::with_capacity(updates.len());
    for (id, patch) in updates {
        writes.push(store.update_instance(*id, patch));
    }
    futures::stream::iter(writes).buffered(width.max(1)).collect().await
}

/// [`Instances::update_instances`] one update after the other, in batch order: the
/// default, and what a backend with a faster path falls back to for a batch that names an
/// instance twice.
pub(crate) async fn update_in_order<S: Instances + ?Sized>(
    store: &S,
    updates: &[(InstanceId, InstancePatch)],
) -> Vec<Result<Instance>> {
    let mut out = Vec::with_capacity(updates.len());
    for (id, patch) in updates {
        out.push(store.update_instance(*id, patch).await);
    }
    out
}

/// Whether a batch names an instance more than once (its updates must then be applied in
/// order, not side by side).
#[cfg(any(feature = "redis", feature = "cql", feature = "sql"))]
pub(crate) fn repeats_an_instance(updates: &[(InstanceId, InstancePatch)]) -> bool {
    let distinct: std::collections::HashSet<InstanceId> = updates.iter().map(|(id, _)| *id).collect();
    distinct.len() != updates.len()
}

/// The change feed a scheduler polls to keep its snapshot fresh. Carries [`Store`] contract
/// line 11.
#[async_trait]
pub trait ChangeFeed: Send + Sync {
    /// A cursor at "now": every tree change that completes after this call returns is
    /// reported by a later [`changes_since`](ChangeFeed::changes_since).
    async fn change_cursor(&self) -> Result<ChangeCursor>;

    /// The trees changed since `cursor` (see the contract, line 11).
    async fn changes_since(&self, cursor: &ChangeCursor) -> Result<Changes>;
}

/// The catalog: cells, hosts, flavors, aggregates, server groups and request specs. Carries
/// [`Store`] contract line 12.
#[async_trait]
pub trait Catalog: Send + Sync {
    /// Creates or replaces a cell.
    async fn put_cell(&self, cell: &Cell) -> Result<()>;
    /// A cell by id.
    async fn get_cell(&self, id: CellId) -> Result<Cell>;
    /// All cells.
    async fn list_cells(&self) -> Result<Vec<Cell>>;

    /// Creates or replaces a host (keyed by name).
    async fn put_host(&self, host: &Host) -> Result<()>;
    /// A host by name.
    async fn get_host(&self, name: &str) -> Result<Host>;
    /// All hosts, or those of one cell.
    async fn list_hosts(&self, cell: Option<CellId>) -> Result<Vec<Host>>;
    /// A compute service's report: the host's `last_heartbeat` becomes `at` unless it is
    /// already later; nothing else of the record changes (so a report cannot undo an
    /// operator's concurrent `put_host`). `NotFound` for an unknown host.
    ///
    /// Why apart from `put_host`: a cloud's computes report every 10 s each, and a report is
    /// not a catalog change. It does not enter the change feed, so schedulers re-read
    /// heartbeats on a timer ([`host_heartbeats`](Catalog::host_heartbeats)) instead of the
    /// whole catalog on every report.
    async fn report_host(&self, name: &str, at: Timestamp) -> Result<()>;
    /// The `last_heartbeat` of the hosts of `cell` (every cell: `None`), by host name,
    /// without the rest of the records. A backend that cannot select by cell cheaply may
    /// add hosts of other cells; readers ignore names they do not know.
    async fn host_heartbeats(&self, cell: Option<CellId>) -> Result<Vec<(String, Timestamp)>>;

    /// Creates or replaces a flavor.
    async fn put_flavor(&self, flavor: &Flavor) -> Result<()>;
    /// A flavor by id.
    async fn get_flavor(&self, id: &FlavorId) -> Result<Flavor>;
    /// All flavors.
    async fn list_flavors(&self) -> Result<Vec<Flavor>>;

    /// Creates or replaces an aggregate.
    async fn put_aggregate(&self, aggregate: &Aggregate) -> Result<()>;
    /// An aggregate by id.
    async fn get_aggregate(&self, id: AggregateId) -> Result<Aggregate>;
    /// All aggregates.
    async fn list_aggregates(&self) -> Result<Vec<Aggregate>>;

    /// Creates a server group (`AlreadyExists` if the id is taken).
    async fn create_server_group(&self, group: &ServerGroup) -> Result<()>;
    /// A server group by id.
    async fn get_server_group(&self, id: GroupId) -> Result<ServerGroup>;
    /// Deletes a server group (`NotFound` if missing).
    async fn delete_server_group(&self, id: GroupId) -> Result<()>;
    /// Every server group of every project, ordered by id (callers filter by project; Nova's
    /// quota keeps a project's groups few, so one read of all of them is the whole cost).
    async fn list_server_groups(&self) -> Result<Vec<ServerGroup>>;

    /// Stores (or replaces) the request spec of `spec.instance_uuid`.
    async fn put_request_spec(&self, spec: &RequestSpec) -> Result<()>;
    /// The request spec of an instance.
    async fn get_request_spec(&self, instance: InstanceId) -> Result<RequestSpec>;
    /// Deletes a request spec (idempotent).
    async fn delete_request_spec(&self, instance: InstanceId) -> Result<()>;
}

/// Instance records and Nova's paged listing. Carries [`Store`] contract lines 13, 14 and 17.
#[async_trait]
pub trait Instances: Send + Sync {
    /// Creates an instance (`AlreadyExists` for a known uuid).
    async fn create_instance(&self, instance: &Instance) -> Result<()>;
    /// Creates many new instances: a bulk load (benchmarks, imports). Each instance is
    /// created as by [`create_instance`](Self::create_instance), but the whole is not atomic:
    /// after an error some of them may exist, and a known uuid may fail the call with
    /// `AlreadyExists` or with a backend error. The default creates them one by one;
    /// backends with a cheaper path (the SQL baseline's multi-row `INSERT`s) override it.
    async fn create_instances(&self, instances: &[Instance]) -> Result<()> {
        for i in instances {
            self.create_instance(i).await?;
        }
        Ok(())
    }
    /// An instance by uuid (soft-deleted ones included).
    async fn get_instance(&self, id: InstanceId) -> Result<Instance>;
    /// Applies `patch` atomically and returns the updated instance.
    async fn update_instance(&self, id: InstanceId, patch: &InstancePatch) -> Result<Instance>;
    /// Applies several patches in one call: one result per update, in order, each applied
    /// atomically on its own instance exactly as [`update_instance`](Self::update_instance)
    /// (one failing update does not undo or stop the others; two updates of one instance
    /// in a batch are applied in order). The outer `Err` is only for a failure of the
    /// whole call (transport), after which any of the updates may or may not have been
    /// applied: a patch sets fields, so applying it again is harmless.
    ///
    /// This default applies one update after the other; a backend overrides it when it can
    /// send the updates in fewer round trips.
    async fn update_instances(&self, updates: &[(InstanceId, InstancePatch)]) -> Result<Vec<Result<Instance>>> {
        Ok(update_in_order(self, updates).await)
    }
    /// Removes an instance for good (`NotFound` if missing).
    async fn delete_instance(&self, id: InstanceId) -> Result<()>;
    /// One page of the instance listing (contract lines 14 and 17).
    async fn list_instances(&self, query: &ListQuery) -> Result<InstancePage>;
    /// What the store knows of instance `id` apart from its record (contract line 17):
    /// `Some` when it keeps the instance's id, project and creation time elsewhere and the
    /// instance is not known to be soft-deleted (the SQL baseline: its instance mapping in
    /// the API database, whose cell database may be down); `None` for an unknown instance,
    /// and always on a backend that keeps nothing apart from the record (memory, Redis,
    /// CQL). For a caller whose [`get_instance`](Self::get_instance) failed because the
    /// record's part of the store is unreachable (Nova 2.69's minimal server). Required,
    /// not defaulted, so that a decorator cannot silently answer `None` for its store.
    async fn instance_stub(&self, id: InstanceId) -> Result<Option<InstanceStub>>;
    /// Removes what an instance write interrupted by a crash left behind (contract line
    /// 13): on the SQL baseline, copies of the instance that a move between databases
    /// wrote before its process died, outside the database its mapping names. Call it
    /// when taking over an interrupted build. It must be safe while another process
    /// still writes the instance (a build taken over from a replica that stalled rather
    /// than died): a copy that a move in progress has written is never removed, and
    /// neither is the copy the mapping names. Idempotent and best effort (a part of the store that cannot be reached keeps its
    /// copy, which reads and listings never show). Required, not defaulted, so that a
    /// decorator cannot silently swallow it; stores whose instance writes touch one record
    /// leave nothing behind and do nothing.
    async fn repair_instance(&self, id: InstanceId) -> Result<()>;
}

/// The store traits, for `use unicell::store::prelude::*;`: calling a method on a
/// `dyn Store` needs the sub-trait that declares it in scope.
pub mod prelude {
    pub use super::{Catalog, ChangeFeed, Claims, Instances, Providers, Store};
}

/// Opens a store by URL:
///
/// | URL | backend |
/// |---|---|
/// | `memory://` | [`memory`]: the embedded in-process store (the default) |
/// | `redis://host:port[/db]`, `redis+cluster://host:port?seeds=...` | [`redis`] (feature `redis`): one Redis server or a Redis Cluster |
/// | `scylla://h1:9042,h2/keyspace?...`, `cassandra://...` | [`cql`] (feature `cql`): ScyllaDB or Apache Cassandra |
/// | `mysql://root@host:3306/unicell?cells=4`, `mariadb://...`, `postgres://...`, `postgresql://...`, `...?mode=single` | [`sql`] (feature `sql`): the SQL baseline, Nova's API database plus one database per cell (or one database) |
///
/// [`Scheme`] owns the schemes and [`StoreUrl::parse`] reads every URL. A URL that does not
/// parse, an unknown scheme, or a scheme whose backend this build lacks is
/// [`Error::InvalidInput`](crate::Error::InvalidInput) naming the schemes this build knows.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    open_url(&StoreUrl::parse(url)?).await
}

/// [`open`] for a URL already parsed.
pub async fn open_url(url: &StoreUrl) -> Result<Arc<dyn Store>> {
    match url.scheme() {
        Scheme::Memory => Ok(Arc::new(memory::MemoryStore::new())),
        #[cfg(feature = "redis")]
        Scheme::Redis | Scheme::RedisCluster => Ok(Arc::new(redis::RedisStore::open(url).await?)),
        #[cfg(feature = "cql")]
        Scheme::Scylla | Scheme::Cassandra => Ok(Arc::new(cql::CqlStore::open(url).await?)),
        #[cfg(feature = "sql")]
        Scheme::MySql | Scheme::Postgres => Ok(Arc::new(sql::SqlStore::open(url).await?)),
        #[allow(unreachable_patterns)]
        other => Err(crate::Error::invalid(
            "store url",
            format!(
                "scheme {other} in {url} needs feature `{}`, which this build lacks; this build knows: {}",
                other.feature().unwrap_or_default(),
                known_schemes().join(", ")
            ),
        )),
    }
}

/// Every scheme spelling [`open`] understands in this build (see [`Scheme::known_names`]).
pub fn known_schemes() -> Vec<&'static str> {
    Scheme::known_names()
}
