//! Provider trees and claims: one tree = one partition of `trees`; every write to a tree is
//! one conditional batch on that partition `IF generation = g` (a lightweight transaction).
//!
//! A claim reads the tree (the first time at the regular consistency, after a lost race at
//! serial consistency), decides with [`ClaimRequest::evaluate`] (so decisions and errors are
//! exactly the reference's), and writes usages, the allocation row, the group count and
//! `generation = g + 1` in one conditional batch. When the batch loses the race it re-reads
//! and re-evaluates, a bounded loop. When it times out, the outcome is unknown: the claim
//! reads the tree at serial consistency (which completes any in-progress transaction) and
//! answers from what it finds there.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use scylla::value::Row;
use uuid::Uuid;

use async_trait::async_trait;

use super::CqlStore;
use super::conn::*;
use crate::error::{Conflict, Error, Kind, Result};
use crate::model::*;
use crate::store::prelude::*;

/// Leftover consumer-index rows younger than this may belong to a claim in flight and are
/// never cleaned up; older ones are checked at serial consistency first.
const INDEX_GRACE_US: i64 = 120_000_000;
/// Trees are listed from this many `tree_directory` partitions.
pub(crate) const DIRECTORY_SHARDS: u32 = 16;

const TREE_COLUMNS: &str = "kind, id, generation, cell, seq, name, parent, traits, aggregates, \
     inventories, usages, project_id, user_id, group_id, allocations, members";

/// A tree as read from its partition.
pub(crate) struct TreeRead {
    pub(crate) tree: ProviderTree,
    pub(crate) allocations: HashMap<ConsumerId, TreeAllocation>,
    seqs: HashMap<ProviderId, i32>,
}

impl TreeRead {
    fn generation(&self) -> u64 {
        self.tree.generation
    }
    fn max_seq(&self) -> i32 {
        self.seqs.values().copied().max().unwrap_or(0)
    }
}

fn now_us() -> i64 {
    Timestamp::now().as_micros()
}

fn gen_i64(g: u64) -> i64 {
    i64::try_from(g).unwrap_or(i64::MAX)
}

fn directory_shard(root: ProviderId) -> u32 {
    (root.0.as_u128() % u128::from(DIRECTORY_SHARDS)) as u32
}

/// The conditional head of every tree write.
fn bump(root: ProviderId, g: u64) -> (String, Vals) {
    (
        "UPDATE trees SET generation = ? WHERE root = ? IF generation = ?".to_string(),
        vec![big(gen_i64(g + 1)), uuid(root.0), big(gen_i64(g))],
    )
}

fn usages_stmt(root: ProviderId, node: &ProviderNode) -> (String, Vals) {
    (
        "UPDATE trees SET usages = ? WHERE root = ? AND kind = 'p' AND id = ?".to_string(),
        vec![bigint_map(node.usages.iter().map(|(c, a)| (c.as_str(), *a))), uuid(root.0), text(node.id.to_string())],
    )
}

impl CqlStore {
    /// The root of `provider`'s tree, from the provider -> root index.
    pub(crate) async fn root_of(&self, provider: ProviderId) -> Result<ProviderId> {
        let rows = self.db.query("SELECT root FROM provider_roots WHERE provider = ?", vec![uuid(provider.0)]).await?;
        let root = rows
            .first()
            .and_then(|r| get_uuid(r, 0))
            .map(ProviderId)
            .ok_or_else(|| Error::not_found(Kind::Provider, provider))?;
        let mut cache = self.root_cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 200_000 {
            cache.clear();
        }
        cache.insert(provider, root);
        Ok(root)
    }

    /// [`root_of`](Self::root_of) through the cache (the claim path).
    async fn root_cached(&self, provider: ProviderId) -> Result<ProviderId> {
        let hit = self.root_cache.lock().unwrap_or_else(|e| e.into_inner()).get(&provider).copied();
        match hit {
            Some(root) => Ok(root),
            None => self.root_of(provider).await,
        }
    }

    fn forget_roots(&self, providers: impl IntoIterator<Item = ProviderId>) {
        let mut cache = self.root_cache.lock().unwrap_or_else(|e| e.into_inner());
        for p in providers {
            cache.remove(&p);
        }
    }

    /// Reads a tree partition in one page. `allocations`: include the allocation rows (the
    /// claim path needs them; the scheduler's reads do not). `serial`: read at serial
    /// consistency. `None` when the tree does not exist.
    pub(crate) async fn read_tree(
        &self,
        root: ProviderId,
        allocations: bool,
        serial: bool,
    ) -> Result<Option<TreeRead>> {
        let cql = if allocations {
            format!("SELECT {TREE_COLUMNS} FROM trees WHERE root = ?")
        } else {
            format!("SELECT {TREE_COLUMNS} FROM trees WHERE root = ? AND kind >= 'g'")
        };
        let rows = if serial {
            self.db.query_serial(&cql, vec![uuid(root.0)]).await?
        } else {
            self.db.query(&cql, vec![uuid(root.0)]).await?
        };
        parse_tree(root, &rows)
    }

    async fn tree_or_not_found(
        &self,
        root: ProviderId,
        provider: ProviderId,
        allocations: bool,
        serial: bool,
    ) -> Result<TreeRead> {
        self.read_tree(root, allocations, serial).await?.ok_or_else(|| Error::not_found(Kind::Provider, provider))
    }

    async fn backoff(&self, attempt: u32) {
        let base = 2u64.saturating_mul(u64::from(attempt.min(8)));
        let jitter = u64::from(Uuid::new_v4().as_u128() as u32 % 8);
        tokio::time::sleep(Duration::from_millis(base + jitter)).await;
    }

    /// Reserves `name` for `id`; `true` when this call made the reservation, `false` when
    /// `id` already held it.
    async fn reserve_name(&self, name: &str, id: ProviderId) -> Result<bool> {
        let cas = self
            .db
            .cas(
                "INSERT INTO provider_names (name, provider, reserved_at) VALUES (?, ?, ?) IF NOT EXISTS",
                vec![text(name), uuid(id.0), big(now_us())],
            )
            .await?;
        if cas.applied {
            return Ok(true);
        }
        let owner = match cas.get("provider") {
            Some(scylla::value::CqlValue::Uuid(u)) => ProviderId(*u),
            _ => {
                return Err(Error::Conflict(Conflict::DuplicateName { name: name.to_string() }));
            }
        };
        if owner == id {
            return Ok(false);
        }
        // A reservation whose provider never came to exist (its creator crashed) is taken
        // over once it is older than the grace period.
        let reserved_at = match cas.get("reserved_at") {
            Some(scylla::value::CqlValue::BigInt(t)) => *t,
            _ => now_us(),
        };
        let owner_exists = match self.root_of(owner).await {
            Ok(root) => self.read_tree(root, false, false).await?.is_some_and(|t| t.tree.node(owner).is_some()),
            Err(Error::NotFound { .. }) => false,
            Err(e) => return Err(e),
        };
        if !owner_exists && now_us() - reserved_at > INDEX_GRACE_US {
            let taken = self
                .db
                .cas(
                    "UPDATE provider_names SET provider = ?, reserved_at = ? WHERE name = ? IF provider = ?",
                    vec![uuid(id.0), big(now_us()), text(name), uuid(owner.0)],
                )
                .await?;
            if taken.applied {
                return Ok(true);
            }
        }
        Err(Error::Conflict(Conflict::DuplicateName { name: name.to_string() }))
    }

    async fn release_name(&self, name: &str, id: ProviderId) -> Result<()> {
        self.db
            .cas("DELETE FROM provider_names WHERE name = ? IF provider = ?", vec![text(name), uuid(id.0)])
            .await
            .map(|_| ())
    }

    fn provider_row(p: &NewProvider, root: ProviderId, seq: i32) -> Result<(String, Vals)> {
        Ok((
            "INSERT INTO trees (root, kind, id, seq, name, parent, traits, aggregates, inventories, usages) \
             VALUES (?, 'p', ?, ?, ?, ?, ?, ?, ?, ?)"
                .to_string(),
            vec![
                uuid(root.0),
                text(p.id.to_string()),
                int(seq),
                text(p.name.clone()),
                p.parent.map(|x| scylla::value::CqlValue::Uuid(x.0)),
                text_set(p.traits.iter().map(Trait::as_str)),
                uuid_set(p.aggregates.iter().map(|a| a.0)),
                json(&p.inventories)?,
                bigint_map(std::iter::empty()),
            ],
        ))
    }

    async fn create_root(&self, p: &NewProvider) -> Result<u64> {
        let root = p.id;
        self.db
            .exec("INSERT INTO provider_roots (provider, root) VALUES (?, ?)", vec![uuid(p.id.0), uuid(root.0)])
            .await?;
        let mut dir = vec![(
            "INSERT INTO tree_directory (scope, root) VALUES (?, ?)".to_string(),
            vec![text(format!("all:{}", directory_shard(root))), uuid(root.0)],
        )];
        if let Some(cell) = p.cell {
            dir.push((
                "INSERT INTO tree_directory (scope, root) VALUES (?, ?)".to_string(),
                vec![text(format!("cell:{cell}")), uuid(root.0)],
            ));
        }
        self.db.logged_batch(&dir).await?;
        self.record_change(root).await?;
        let (_, row_vals) = Self::provider_row(p, root, 0)?;
        // The root row and the static generation/cell, created only if the root row does
        // not exist yet.
        let mut vals = row_vals;
        vals.push(big(1));
        vals.push(p.cell.map(|c| scylla::value::CqlValue::Uuid(c.0)));
        let cas = self
            .db
            .cas(
                "INSERT INTO trees (root, kind, id, seq, name, parent, traits, aggregates, inventories, usages, generation, cell) \
                 VALUES (?, 'p', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS",
                vals,
            )
            .await?;
        if !cas.applied {
            return Err(Error::already_exists(Kind::Provider, p.id));
        }
        self.record_change(root).await?;
        Ok(1)
    }

    async fn create_child(&self, p: &NewProvider, parent: ProviderId) -> Result<u64> {
        let root = self.root_of(parent).await?;
        self.db
            .exec("INSERT INTO provider_roots (provider, root) VALUES (?, ?)", vec![uuid(p.id.0), uuid(root.0)])
            .await?;
        self.record_change(root).await?;
        let result = async {
            for attempt in 0..self.db.cfg.claim_attempts {
                let t = self.tree_or_not_found(root, parent, false, attempt > 0).await?;
                if t.tree.node(parent).is_none() {
                    return Err(Error::not_found(Kind::Provider, parent));
                }
                if t.tree.node(p.id).is_some() {
                    return Err(Error::already_exists(Kind::Provider, p.id));
                }
                let g = t.generation();
                let stmts = vec![bump(root, g), Self::provider_row(p, root, t.max_seq() + 1)?];
                if self.db.cas_batch(&stmts).await?.applied {
                    self.record_change(root).await?;
                    return Ok(g + 1);
                }
                self.backoff(attempt).await;
            }
            Err(self.exhausted(root).await)
        }
        .await;
        if let Err(e) = &result
            && !matches!(e, Error::AlreadyExists { .. })
        {
            let _ = self.db.exec("DELETE FROM provider_roots WHERE provider = ?", vec![uuid(p.id.0)]).await;
        }
        result
    }

    async fn exhausted(&self, root: ProviderId) -> Error {
        let actual = match self.read_tree(root, false, true).await {
            Ok(Some(t)) => t.generation(),
            _ => 0,
        };
        Error::Conflict(Conflict::Generation { root, expected: actual.saturating_sub(1), actual })
    }

    /// The optimistic read-modify-write of one provider row (inventories, traits,
    /// aggregates): fails with `Conflict::Generation` when the tree moved.
    async fn write_provider_field(
        &self,
        provider: ProviderId,
        generation: u64,
        check: impl FnOnce(&ProviderNode) -> Result<()>,
        column: &str,
        value: Option<scylla::value::CqlValue>,
    ) -> Result<u64> {
        let root = self.root_of(provider).await?;
        let t = self.tree_or_not_found(root, provider, false, false).await?;
        if t.generation() != generation {
            return Err(Error::Conflict(Conflict::Generation { root, expected: generation, actual: t.generation() }));
        }
        let node = t.tree.node(provider).ok_or_else(|| Error::not_found(Kind::Provider, provider))?;
        check(node)?;
        let stmts = vec![
            bump(root, generation),
            (
                format!("UPDATE trees SET {column} = ? WHERE root = ? AND kind = 'p' AND id = ?"),
                vec![value, uuid(root.0), text(provider.to_string())],
            ),
        ];
        self.record_change(root).await?;
        let cas = self.db.cas_batch(&stmts).await?;
        if !cas.applied {
            let actual = match cas.get("generation") {
                Some(scylla::value::CqlValue::BigInt(g)) => *g as u64,
                _ => self.read_tree(root, false, true).await?.map(|t| t.generation()).unwrap_or(0),
            };
            return Err(Error::Conflict(Conflict::Generation { root, expected: generation, actual }));
        }
        self.record_change(root).await?;
        Ok(generation + 1)
    }

    /// One claim. With `cached`, provider roots come from the cache, and `Ok(None)` says a
    /// cached root was stale (the tree read lacks a provider of the claim): retry uncached.
    async fn claim_once(&self, request: &ClaimRequest, cached: bool) -> Result<Option<Claim>> {
        let roots = futures::future::join_all(
            request
                .allocations
                .keys()
                .map(|p| async move { if cached { self.root_cached(*p).await } else { self.root_of(*p).await } }),
        )
        .await;
        let mut root = None;
        for r in roots {
            let r = r?;
            root.get_or_insert(r);
        }
        let root = root.ok_or_else(|| Error::invalid("allocations", "empty"))?;
        let consumer = request.consumer;
        let attempt_id = Uuid::new_v4();
        // The index row first: whatever happens next, the consumer's allocation on this
        // tree can be found. And the change-feed intent, so a crash after the write cannot
        // hide the change from schedulers.
        let (idx, intent, first) = futures::join!(
            self.db.exec(
                "INSERT INTO consumer_trees (consumer, root, attempt, done, at) VALUES (?, ?, ?, ?, ?)",
                vec![uuid(consumer.0), uuid(root.0), uuid(attempt_id), boolean(false), big(now_us())],
            ),
            self.record_change(root),
            // The first read needs neither write; only the transaction must come after them.
            self.read_tree(root, true, false)
        );
        idx?;
        intent?;
        let mut first = Some(first);
        let mut uncertain = false;
        let mut serial = false;
        let allocations = normalized(&request.allocations);
        let mut last_generation = 0;
        // A retryable failure (timeout, unavailable) inside the loop is retried like a
        // lost race; it is returned only when the attempts run out.
        let mut last_error: Option<Error> = None;
        for attempt in 0..self.db.cfg.claim_attempts {
            if attempt > 0 && last_error.is_some() {
                self.backoff(attempt).await;
            }
            let read = match first.take() {
                Some(r) => r,
                None => self.read_tree(root, true, serial).await,
            };
            let stale = cached
                && match &read {
                    Ok(Some(t)) => request.allocations.keys().any(|p| t.tree.node(*p).is_none()),
                    Ok(None) => true,
                    Err(_) => false,
                };
            if stale {
                self.drop_attempt(consumer, root, attempt_id, uncertain).await;
                self.forget_roots(request.allocations.keys().copied());
                return Ok(None);
            }
            let t = match read {
                Ok(Some(t)) => t,
                Ok(None) => {
                    self.drop_attempt(consumer, root, attempt_id, uncertain).await;
                    return Err(Error::not_found(
                        Kind::Provider,
                        request.allocations.keys().next().copied().unwrap_or(root),
                    ));
                }
                Err(e) if e.is_retryable() => {
                    serial = true;
                    last_error = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            last_error = None;
            let g = t.generation();
            last_generation = g;
            let held = t.allocations.get(&consumer).map(|a| &a.allocations);
            match request.evaluate(&t.tree, held) {
                Err(e) => {
                    self.drop_attempt(consumer, root, attempt_id, uncertain).await;
                    return Err(e);
                }
                // After a transaction with an unknown outcome, finding the allocation means
                // that transaction landed: this call made the claim.
                Ok(true) if uncertain => {
                    self.after_claim(consumer, root, attempt_id).await;
                    return Ok(Some(Claim { root, generation: g, replayed: false }));
                }
                Ok(true) => {
                    self.drop_attempt(consumer, root, attempt_id, uncertain).await;
                    return Ok(Some(Claim { root, generation: g, replayed: true }));
                }
                Ok(false) => {}
            }
            let mut tree = t.tree.clone();
            tree.apply(&allocations, 1);
            let mut stmts = vec![bump(root, g)];
            for p in allocations.keys() {
                if let Some(node) = tree.node(*p) {
                    stmts.push(usages_stmt(root, node));
                }
            }
            stmts.push((
                "INSERT INTO trees (root, kind, id, project_id, user_id, group_id, allocations) \
                 VALUES (?, 'a', ?, ?, ?, ?, ?)"
                    .to_string(),
                vec![
                    uuid(root.0),
                    text(consumer.to_string()),
                    text(request.project_id.clone()),
                    text(request.user_id.clone()),
                    request.group.map(|g| scylla::value::CqlValue::Uuid(g.group.0)),
                    json(&allocations)?,
                ],
            ));
            if let Some(group) = request.group {
                let members = t.tree.groups.get(&group.group).copied().unwrap_or(0) + 1;
                stmts.push(members_stmt(root, group.group, members));
            }
            match self.db.cas_batch_raw(&stmts).await {
                Ok(Ok(cas)) if cas.applied => {
                    self.after_claim(consumer, root, attempt_id).await;
                    return Ok(Some(Claim { root, generation: g + 1, replayed: false }));
                }
                Ok(Ok(_)) => {
                    serial = true;
                    self.backoff(attempt).await;
                }
                Ok(Err(e)) => return Err(e),
                Err(e) if outcome_unknown(&e) => {
                    // The transaction may or may not have applied: the next read is at
                    // serial consistency (which completes an in-progress transaction), and
                    // the claim answers from what it finds there.
                    tracing::debug!(%root, %consumer, error = %e, "claim outcome unknown; reading at serial consistency");
                    uncertain = true;
                    serial = true;
                    last_error = Some(map_exec(e));
                }
                Err(e) => {
                    let e = map_exec(e);
                    if !e.is_retryable() {
                        return Err(e);
                    }
                    serial = true;
                    last_error = Some(e);
                }
            }
        }
        if let Some(e) = last_error {
            return Err(e);
        }
        Err(Error::Conflict(Conflict::Generation {
            root,
            expected: last_generation,
            actual: self
                .read_tree(root, false, true)
                .await
                .ok()
                .flatten()
                .map(|t| t.generation())
                .unwrap_or(last_generation),
        }))
    }

    /// After a claim landed: marks the index row done and records the change. Failures are
    /// logged, not returned: the allocation is there (an unfinished index row is reconciled
    /// once old, and the change-feed intent written before the claim covers the change).
    async fn after_claim(&self, consumer: ConsumerId, root: ProviderId, attempt: Uuid) {
        let (done, change) = futures::join!(
            self.db.exec(
                "UPDATE consumer_trees SET done = ? WHERE consumer = ? AND root = ? AND attempt = ?",
                vec![boolean(true), uuid(consumer.0), uuid(root.0), uuid(attempt)],
            ),
            self.record_change(root)
        );
        for e in [done.err(), change.err()].into_iter().flatten() {
            tracing::warn!(%consumer, %root, error = %e, "claim landed; a follow-up write failed");
        }
    }

    /// Removes this attempt's index row after a definite failure. After an unknown outcome
    /// the row stays: it is reconciled (checked at serial consistency) once it is old.
    async fn drop_attempt(&self, consumer: ConsumerId, root: ProviderId, attempt: Uuid, uncertain: bool) {
        if uncertain {
            return;
        }
        if let Err(e) = self
            .db
            .exec(
                "DELETE FROM consumer_trees WHERE consumer = ? AND root = ? AND attempt = ?",
                vec![uuid(consumer.0), uuid(root.0), uuid(attempt)],
            )
            .await
        {
            tracing::debug!(%consumer, %root, error = %e, "leaving a consumer index row behind");
        }
    }

    /// The consumer's index rows: root -> [(attempt, done, written at)].
    async fn index_rows(&self, consumer: ConsumerId) -> Result<BTreeMap<ProviderId, Vec<(Uuid, bool, i64)>>> {
        let rows = self
            .db
            .query("SELECT root, attempt, done, at FROM consumer_trees WHERE consumer = ?", vec![uuid(consumer.0)])
            .await?;
        let mut out: BTreeMap<ProviderId, Vec<(Uuid, bool, i64)>> = BTreeMap::new();
        for r in &rows {
            if let (Some(root), Some(attempt)) = (get_uuid(r, 0), get_uuid(r, 1)) {
                out.entry(ProviderId(root)).or_default().push((
                    attempt,
                    get_bool(r, 2).unwrap_or(false),
                    get_i64(r, 3).unwrap_or(0),
                ));
            }
        }
        Ok(out)
    }

    /// Deletes the index rows of `root` that can no longer refer to an allocation that
    /// `holds_nothing_serially` has not seen: finished attempts, and attempts older than the
    /// grace period. Young unfinished attempts may be claims in flight: they stay.
    async fn clean_index(&self, consumer: ConsumerId, root: ProviderId, rows: &[(Uuid, bool, i64)]) {
        let now = now_us();
        let stmts: Vec<(String, Vals)> = rows
            .iter()
            .filter(|(_, done, at)| *done || now - at > INDEX_GRACE_US)
            .map(|(attempt, _, _)| {
                (
                    "DELETE FROM consumer_trees WHERE consumer = ? AND root = ? AND attempt = ?".to_string(),
                    vec![uuid(consumer.0), uuid(root.0), uuid(*attempt)],
                )
            })
            .collect();
        if stmts.is_empty() {
            return;
        }
        if let Err(e) = self.db.logged_batch(&stmts).await {
            tracing::debug!(%consumer, %root, error = %e, "consumer index cleanup failed; will retry later");
        }
    }

    fn needs_serial_check(rows: &[(Uuid, bool, i64)]) -> bool {
        let now = now_us();
        rows.iter().any(|(_, done, at)| !*done && now - at > INDEX_GRACE_US)
    }
}

#[async_trait]
impl Providers for CqlStore {
    // ---- providers ------------------------------------------------------------------

    async fn create_provider(&self, p: &NewProvider) -> Result<u64> {
        p.validate()?;
        if let Ok(root) = self.root_of(p.id).await
            && let Some(t) = self.read_tree(root, false, false).await?
            && t.tree.node(p.id).is_some()
        {
            return Err(Error::already_exists(Kind::Provider, p.id));
        }
        let fresh = self.reserve_name(&p.name, p.id).await?;
        let result = match p.parent {
            None => self.create_root(p).await,
            Some(parent) => self.create_child(p, parent).await,
        };
        // A concurrent create of the same id shares the reservation: only a failure that
        // is not "it exists" gives back a name this call reserved.
        if let Err(e) = &result
            && fresh
            && !matches!(e, Error::AlreadyExists { .. })
        {
            let _ = self.release_name(&p.name, p.id).await;
        }
        result
    }

    async fn delete_provider(&self, provider: ProviderId) -> Result<()> {
        let root = self.root_of(provider).await?;
        self.record_change(root).await?;
        let mut name = None;
        let mut cell = None;
        let mut done = false;
        for attempt in 0..self.db.cfg.claim_attempts {
            let t = self.tree_or_not_found(root, provider, true, attempt > 0).await?;
            let node = t.tree.node(provider).ok_or_else(|| Error::not_found(Kind::Provider, provider))?;
            if t.tree.providers.iter().any(|p| p.parent == Some(provider))
                || !node.usages.is_empty()
                || (provider == root && !t.allocations.is_empty())
            {
                return Err(Error::Conflict(Conflict::ProviderInUse { provider }));
            }
            name = Some(node.name.clone());
            cell = t.tree.cell;
            let g = t.generation();
            let mut stmts = Vec::new();
            if provider == root {
                // Cassandra 2.1 deletes only the static columns for a partition-key-only
                // DELETE, so every row is deleted explicitly.
                stmts.push((
                    "DELETE FROM trees WHERE root = ? IF generation = ?".to_string(),
                    vec![uuid(root.0), big(gen_i64(g))],
                ));
                for p in &t.tree.providers {
                    stmts.push(delete_row(root, "p", &p.id.to_string()));
                }
                for gid in t.tree.groups.keys() {
                    stmts.push(delete_row(root, "g", &gid.to_string()));
                }
            } else {
                stmts.push(bump(root, g));
                stmts.push(delete_row(root, "p", &provider.to_string()));
            }
            if self.db.cas_batch(&stmts).await?.applied {
                done = true;
                break;
            }
            self.backoff(attempt).await;
        }
        if !done {
            return Err(self.exhausted(root).await);
        }
        self.record_change(root).await?;
        self.db.exec("DELETE FROM provider_roots WHERE provider = ?", vec![uuid(provider.0)]).await?;
        self.forget_roots([provider]);
        if let Some(name) = name {
            self.release_name(&name, provider).await?;
        }
        if provider == root {
            let mut stmts = vec![(
                "DELETE FROM tree_directory WHERE scope = ? AND root = ?".to_string(),
                vec![text(format!("all:{}", directory_shard(root))), uuid(root.0)],
            )];
            if let Some(c) = cell {
                stmts.push((
                    "DELETE FROM tree_directory WHERE scope = ? AND root = ?".to_string(),
                    vec![text(format!("cell:{c}")), uuid(root.0)],
                ));
            }
            self.db.logged_batch(&stmts).await?;
        }
        Ok(())
    }

    async fn provider_tree(&self, provider: ProviderId) -> Result<ProviderTree> {
        let root = self.root_of(provider).await?;
        let t = self.tree_or_not_found(root, provider, false, false).await?;
        if t.tree.node(provider).is_none() {
            return Err(Error::not_found(Kind::Provider, provider));
        }
        Ok(t.tree)
    }

    async fn list_provider_trees(&self, cell: Option<CellId>) -> Result<Vec<ProviderTree>> {
        let scopes: Vec<String> = match cell {
            Some(c) => vec![format!("cell:{c}")],
            None => (0..DIRECTORY_SHARDS).map(|s| format!("all:{s}")).collect(),
        };
        let mut roots = BTreeSet::new();
        for rows in futures::future::try_join_all(
            scopes.into_iter().map(|s| self.db.query("SELECT root FROM tree_directory WHERE scope = ?", vec![text(s)])),
        )
        .await?
        {
            roots.extend(rows.iter().filter_map(|r| get_uuid(r, 0)).map(ProviderId));
        }
        use futures::StreamExt;
        let trees: Vec<Result<Option<TreeRead>>> =
            futures::stream::iter(roots).map(|root| self.read_tree(root, false, false)).buffered(32).collect().await;
        let mut out = Vec::new();
        for t in trees {
            if let Some(t) = t?
                && cell.is_none_or(|c| t.tree.cell == Some(c))
            {
                out.push(t.tree);
            }
        }
        out.sort_by_key(|t| t.root);
        Ok(out)
    }

    async fn set_inventories(
        &self,
        provider: ProviderId,
        generation: u64,
        inventories: &BTreeMap<ResourceClass, Inventory>,
    ) -> Result<InventoryWrite> {
        for (class, inv) in inventories {
            inv.validate(&format!("{class} on {provider}"))?;
        }
        let mut over = Vec::new();
        let g = self
            .write_provider_field(
                provider,
                generation,
                |node| {
                    if let Some(class) = node.usages.keys().find(|c| !inventories.contains_key(*c)) {
                        return Err(Error::Conflict(Conflict::InventoryInUse { provider, class: class.clone() }));
                    }
                    over = inventories
                        .iter()
                        .filter(|(c, inv)| node.used(c) > inv.capacity())
                        .map(|(c, _)| c.clone())
                        .collect();
                    Ok(())
                },
                "inventories",
                json(inventories)?,
            )
            .await?;
        Ok(InventoryWrite { generation: g, over_capacity: over })
    }

    async fn set_traits(&self, provider: ProviderId, generation: u64, traits: &BTreeSet<Trait>) -> Result<u64> {
        self.write_provider_field(
            provider,
            generation,
            |_| Ok(()),
            "traits",
            text_set(traits.iter().map(Trait::as_str)),
        )
        .await
    }

    async fn set_aggregates(
        &self,
        provider: ProviderId,
        generation: u64,
        aggregates: &BTreeSet<AggregateId>,
    ) -> Result<u64> {
        self.write_provider_field(
            provider,
            generation,
            |_| Ok(()),
            "aggregates",
            uuid_set(aggregates.iter().map(|a| a.0)),
        )
        .await
    }
}

/// Claims of one [`Claims::claim_batch`] in flight at once: enough to hide the round trips
/// of Paxos (four per LWT) without flooding the coordinator's LWT queue.
pub(super) const CLAIM_BATCH_WIDTH: usize = 16;

#[async_trait]
impl Claims for CqlStore {
    // ---- claims ---------------------------------------------------------------------

    async fn claim(&self, request: &ClaimRequest) -> Result<Claim> {
        request.validate()?;
        match self.claim_once(request, true).await? {
            Some(claim) => Ok(claim),
            None => self
                .claim_once(request, false)
                .await?
                .ok_or_else(|| Error::backend(BACKEND, "provider -> root index changed during the claim")),
        }
    }

    /// The lightweight transactions of a batch in parallel (a CQL `BATCH` of conditional
    /// updates must stay within one partition, and a batch spans trees): at most
    /// [`CLAIM_BATCH_WIDTH`] at once.
    async fn claim_batch(&self, requests: &[ClaimRequest]) -> Result<Vec<Result<Claim>>> {
        Ok(crate::store::claim_in_parallel(self, requests, CLAIM_BATCH_WIDTH).await)
    }

    async fn release(&self, consumer: ConsumerId) -> Result<Released> {
        let index = self.index_rows(consumer).await?;
        let mut released = Vec::new();
        for (root, rows) in index {
            let mut serial = Self::needs_serial_check(&rows);
            let mut removed = false;
            let mut settled = false;
            let (intent, first) = futures::join!(self.record_change(root), self.read_tree(root, true, serial));
            intent?;
            let mut first = Some(first);
            let mut last_error: Option<Error> = None;
            for attempt in 0..self.db.cfg.claim_attempts {
                if attempt > 0 && last_error.is_some() {
                    self.backoff(attempt).await;
                }
                let read = match first.take() {
                    Some(r) => r,
                    None => self.read_tree(root, true, serial).await,
                };
                let read = match read {
                    Ok(r) => r,
                    Err(e) if e.is_retryable() => {
                        serial = true;
                        last_error = Some(e);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                last_error = None;
                let Some(t) = read else {
                    settled = true;
                    break;
                };
                let Some(alloc) = t.allocations.get(&consumer) else {
                    settled = true;
                    break;
                };
                let g = t.generation();
                let mut tree = t.tree.clone();
                tree.apply(&alloc.allocations, -1);
                let mut stmts = vec![bump(root, g)];
                for p in alloc.allocations.keys() {
                    if let Some(node) = tree.node(*p) {
                        stmts.push(usages_stmt(root, node));
                    }
                }
                stmts.push(delete_row(root, "a", &consumer.to_string()));
                if let Some(group) = alloc.group {
                    let members = t.tree.groups.get(&group).copied().unwrap_or(1).saturating_sub(1);
                    if members == 0 {
                        stmts.push(delete_row(root, "g", &group.to_string()));
                    } else {
                        stmts.push(members_stmt(root, group, members));
                    }
                }
                match self.db.cas_batch_raw(&stmts).await {
                    Ok(Ok(cas)) if cas.applied => {
                        removed = true;
                        settled = true;
                        break;
                    }
                    Ok(Ok(_)) => {
                        serial = true;
                        self.backoff(attempt).await;
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(e) if outcome_unknown(&e) => {
                        // Loop: the serial re-read tells whether the allocation is gone.
                        serial = true;
                        removed = true;
                        last_error = Some(map_exec(e));
                    }
                    Err(e) => {
                        let e = map_exec(e);
                        if !e.is_retryable() {
                            return Err(e);
                        }
                        serial = true;
                        last_error = Some(e);
                    }
                }
            }
            if !settled {
                return Err(match last_error {
                    Some(e) => e,
                    None => self.exhausted(root).await,
                });
            }
            if removed {
                let (change, ()) = futures::join!(self.record_change(root), self.clean_index(consumer, root, &rows));
                if let Err(e) = change {
                    tracing::warn!(%consumer, %root, error = %e, "release landed; recording the change failed");
                }
                released.push(root);
            } else {
                self.clean_index(consumer, root, &rows).await;
            }
        }
        Ok(Released { roots: released })
    }

    async fn allocations(&self, consumer: ConsumerId) -> Result<Vec<TreeAllocation>> {
        let index = self.index_rows(consumer).await?;
        let mut out = Vec::new();
        for (root, rows) in index {
            let serial = Self::needs_serial_check(&rows);
            let cql = "SELECT project_id, user_id, group_id, allocations FROM trees \
                       WHERE root = ? AND kind = 'a' AND id = ?";
            let vals = vec![uuid(root.0), text(consumer.to_string())];
            let found = if serial { self.db.query_serial(cql, vals).await? } else { self.db.query(cql, vals).await? };
            match found.first() {
                Some(r) => out.push(allocation_of(consumer, root, r, 0)?),
                None => self.clean_index(consumer, root, &rows).await,
            }
        }
        Ok(out)
    }

    async fn tree_allocations(&self, provider: ProviderId) -> Result<Vec<TreeAllocation>> {
        let root = self.root_of(provider).await?;
        let t = self.tree_or_not_found(root, provider, true, false).await?;
        if t.tree.node(provider).is_none() {
            return Err(Error::not_found(Kind::Provider, provider));
        }
        let mut v: Vec<TreeAllocation> = t.allocations.into_values().collect();
        v.sort_by_key(|a| a.consumer);
        Ok(v)
    }
}

fn delete_row(root: ProviderId, kind: &str, id: &str) -> (String, Vals) {
    ("DELETE FROM trees WHERE root = ? AND kind = ? AND id = ?".to_string(), vec![uuid(root.0), text(kind), text(id)])
}

fn members_stmt(root: ProviderId, group: GroupId, members: u32) -> (String, Vals) {
    (
        "UPDATE trees SET members = ? WHERE root = ? AND kind = 'g' AND id = ?".to_string(),
        vec![int(i32::try_from(members).unwrap_or(i32::MAX)), uuid(root.0), text(group.to_string())],
    )
}

fn allocation_of(consumer: ConsumerId, root: ProviderId, r: &Row, at: usize) -> Result<TreeAllocation> {
    Ok(TreeAllocation {
        consumer,
        root,
        project_id: get_text(r, at).unwrap_or_default(),
        user_id: get_text(r, at + 1).unwrap_or_default(),
        group: get_uuid(r, at + 2).map(GroupId),
        allocations: parse_json(&get_text(r, at + 3).unwrap_or_else(|| "{}".into()))?,
    })
}

fn parse_tree(root: ProviderId, rows: &[Row]) -> Result<Option<TreeRead>> {
    // Columns: see TREE_COLUMNS.
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let Some(generation) = get_i64(first, 2) else {
        return Ok(None);
    };
    let cell = get_uuid(first, 3).map(CellId);
    let mut providers: Vec<(i32, ProviderNode)> = Vec::new();
    let mut groups = BTreeMap::new();
    let mut allocations = HashMap::new();
    for r in rows {
        let (Some(kind), Some(id)) = (get_text(r, 0), get_text(r, 1)) else {
            continue;
        };
        match kind.as_str() {
            "p" => {
                let id: ProviderId = id.parse()?;
                let mut usages = Resources::new();
                for (class, v) in get_map(r, 10) {
                    if let scylla::value::CqlValue::BigInt(a) = v
                        && a != 0
                    {
                        usages.insert(ResourceClass::parse(&class)?, a);
                    }
                }
                let traits = get_text_set(r, 7).into_iter().map(Trait::new).collect::<Result<BTreeSet<_>>>()?;
                providers.push((
                    get_i32(r, 4).unwrap_or(0),
                    ProviderNode {
                        id,
                        name: get_text(r, 5).unwrap_or_default(),
                        parent: get_uuid(r, 6).map(ProviderId),
                        traits,
                        aggregates: get_uuid_set(r, 8).into_iter().map(AggregateId).collect(),
                        inventories: parse_json(&get_text(r, 9).unwrap_or_else(|| "{}".into()))?,
                        usages,
                    },
                ));
            }
            "g" => {
                let gid: GroupId = id.parse()?;
                let n = get_i32(r, 15).unwrap_or(0);
                if n > 0 {
                    groups.insert(gid, n as u32);
                }
            }
            "a" => {
                let consumer: ConsumerId = id.parse()?;
                allocations.insert(consumer, allocation_of(consumer, root, r, 11)?);
            }
            _ => {}
        }
    }
    if !providers.iter().any(|(_, p)| p.id == root) {
        return Ok(None);
    }
    providers.sort_by_key(|(seq, _)| *seq);
    let seqs = providers.iter().map(|(s, p)| (p.id, *s)).collect();
    Ok(Some(TreeRead {
        tree: ProviderTree {
            root,
            generation: u64::try_from(generation).unwrap_or(0),
            cell,
            providers: providers.into_iter().map(|(_, p)| p).collect(),
            groups,
        },
        allocations,
        seqs,
    }))
}
