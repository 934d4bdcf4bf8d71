//! Placement on SQL: provider trees, inventories, claims (`_set_allocations`) and
//! releases, all in the API database (each tree write also appends to the change feed of
//! `feed.rs` inside its transaction).
//!
//! A claim is Placement's `_set_allocations`, in one transaction: read the tree's providers
//! (generation first), inventories and usage, decide with [`ClaimRequest::evaluate`], insert
//! the allocations, create or bump the consumer (generation-checked), then bump the
//! generation of every touched provider with `UPDATE ... WHERE id = ? AND generation = ?`
//! and the tree's generation (on the root row) the same way. Zero rows updated means a
//! concurrent writer won: roll back and retry, at most `claim_retries` times (Placement's
//! `allocation_conflict_retry_count`, 10), then `Conflict::Generation`. Deadlocks and
//! serialization failures reported by the database are retried the same way.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;

use crate::error::{Conflict, Error, Kind, Result};
use crate::model::*;
use crate::sql_args;
use crate::store::prelude::*;
use crate::store::sql::conn::{Arg, Dialect, Sql, Tx, is_retryable_tx_error, is_unique_violation, map_err};
use crate::store::sql::{SqlStore, backoff};

/// Why one transaction attempt stopped.
pub(crate) enum Fail {
    /// A concurrent writer won (generation moved, deadlock): retry.
    Retry,
    /// A real error.
    Err(Error),
}

impl From<sqlx::Error> for Fail {
    fn from(e: sqlx::Error) -> Self {
        if is_retryable_tx_error(&e) { Fail::Retry } else { Fail::Err(map_err(e)) }
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Err(e)
    }
}

/// Which trees to load.
#[derive(Clone, Copy)]
pub(super) enum Sel<'a> {
    Root(i64),
    /// The trees of these root ids (non-empty).
    Roots(&'a [i64]),
    Cell(&'a str),
    All,
}

impl Sel<'_> {
    fn clause(&self, alias: &str) -> String {
        match self {
            Sel::Root(_) => format!(" WHERE {alias}.root_provider_id = ?"),
            Sel::Roots(ids) => format!(" WHERE {alias}.root_provider_id IN ({})", vec!["?"; ids.len()].join(", ")),
            Sel::Cell(_) => format!(" WHERE {alias}.cell_uuid = ?"),
            Sel::All => String::new(),
        }
    }
    fn args(&self) -> Vec<Arg> {
        match self {
            Sel::Root(id) => sql_args![*id],
            Sel::Roots(ids) => ids.iter().map(|id| Arg::I64(*id)).collect(),
            Sel::Cell(c) => sql_args![*c],
            Sel::All => vec![],
        }
    }
}

/// A provider row as the claim path needs it.
#[derive(Clone, Debug)]
pub(super) struct ProviderRow {
    pub(super) id: i64,
    pub(super) generation: i64,
}

/// Loaded trees plus the per-provider ids and generations the writes need.
pub(super) struct Loaded {
    pub(super) trees: Vec<ProviderTree>,
    pub(super) rows: HashMap<ProviderId, ProviderRow>,
}

pub(super) fn gen_u64(g: i64) -> u64 {
    u64::try_from(g).unwrap_or(0)
}

impl SqlStore {
    /// A statement built at run time, in the store's dialect.
    pub(super) fn sql(&self, s: String) -> Sql {
        match self.dialect {
            Dialect::MySql => Sql::Dynamic(s.into()),
            Dialect::Postgres => Sql::Dynamic(crate::store::sql::conn::to_pg(&s).into()),
        }
    }

    /// Loads whole trees (providers, inventories, usages, traits, aggregates, group counts)
    /// inside `tx`. The providers (and so the generations) are read first.
    pub(super) async fn load_trees(&self, tx: &mut Tx, sel: Sel<'_>) -> Result<Loaded, Fail> {
        self.load_trees_with(tx, sel, true, true).await
    }

    /// As [`load_trees`](Self::load_trees); a claim reads only what Placement's
    /// `_set_allocations` reads (providers, inventories, usage) plus group counts when it
    /// names a group, not traits or aggregates.
    async fn load_trees_with(&self, tx: &mut Tx, sel: Sel<'_>, labels: bool, groups: bool) -> Result<Loaded, Fail> {
        let w = sel.clause("rp");
        let rows = tx
            .fetch_all(
                self.sql(format!(
                    "SELECT rp.id, rp.uuid, rp.name, rp.parent_provider_id, rp.root_provider_id, \
                     rp.generation, rp.tree_generation, rp.cell_uuid FROM resource_providers rp{w} \
                     ORDER BY rp.root_provider_id, rp.id"
                )),
                sel.args(),
            )
            .await?;
        let mut by_id: HashMap<i64, (ProviderId, i64)> = HashMap::new(); // id -> (uuid, root id)
        let mut trees: BTreeMap<i64, ProviderTree> = BTreeMap::new();
        let mut prow = HashMap::new();
        let mut pending = Vec::new();
        for r in &rows {
            let id = r.i64(0)?;
            let uuid = ProviderId(r.uuid(1)?);
            let root_id = r.opt_i64(4)?.unwrap_or(id);
            by_id.insert(id, (uuid, root_id));
            prow.insert(uuid, ProviderRow { id, generation: r.i64(5)? });
            pending.push((id, uuid, r.str(2)?, r.opt_i64(3)?, root_id, r.i64(6)?, r.opt_uuid(7)?));
        }
        for (id, uuid, name, parent, root_id, tree_gen, cell) in pending {
            let parent = parent.and_then(|p| by_id.get(&p).map(|x| x.0));
            let tree = trees.entry(root_id).or_insert_with(|| ProviderTree {
                root: uuid,
                generation: 0,
                cell: None,
                providers: Vec::new(),
                groups: BTreeMap::new(),
            });
            if id == root_id {
                tree.root = uuid;
                tree.generation = gen_u64(tree_gen);
                tree.cell = cell.map(CellId);
            }
            tree.providers.push(ProviderNode {
                id: uuid,
                name,
                parent,
                traits: BTreeSet::new(),
                aggregates: BTreeSet::new(),
                inventories: BTreeMap::new(),
                usages: Resources::new(),
            });
        }
        if trees.is_empty() {
            return Ok(Loaded { trees: vec![], rows: prow });
        }
        let inv = tx
            .fetch_all(
                self.sql(format!(
                    "SELECT i.resource_provider_id, i.resource_class, i.total, i.reserved, i.min_unit, \
                     i.max_unit, i.step_size, i.allocation_ratio FROM inventories i \
                     JOIN resource_providers rp ON rp.id = i.resource_provider_id{w}"
                )),
                sel.args(),
            )
            .await?;
        for r in &inv {
            let Some((uuid, root)) = by_id.get(&r.i64(0)?) else {
                continue;
            };
            let class = ResourceClass::parse(&r.str(1)?)?;
            let value = Inventory {
                total: r.i64(2)?,
                reserved: r.i64(3)?,
                min_unit: r.i64(4)?,
                max_unit: r.i64(5)?,
                step_size: r.i64(6)?,
                allocation_ratio: r.f64(7)?,
            };
            if let Some(n) = trees.get_mut(root).and_then(|t| t.node_mut(*uuid)) {
                n.inventories.insert(class, value);
            }
        }
        let sum = self.dialect.pick("SIGNED", "BIGINT");
        let usage = tx
            .fetch_all(
                self.sql(format!(
                    "SELECT a.resource_provider_id, a.resource_class, CAST(SUM(a.used) AS {sum}) \
                     FROM allocations a JOIN resource_providers rp ON rp.id = a.resource_provider_id{w} \
                     GROUP BY a.resource_provider_id, a.resource_class"
                )),
                sel.args(),
            )
            .await?;
        for r in &usage {
            let Some((uuid, root)) = by_id.get(&r.i64(0)?) else {
                continue;
            };
            let class = ResourceClass::parse(&r.str(1)?)?;
            let used = r.i64(2)?;
            if used > 0
                && let Some(n) = trees.get_mut(root).and_then(|t| t.node_mut(*uuid))
            {
                n.usages.insert(class, used);
            }
        }
        let traits = if !labels {
            vec![]
        } else {
            tx.fetch_all(
                self.sql(format!(
                    "SELECT t.resource_provider_id, t.trait FROM resource_provider_traits t \
                     JOIN resource_providers rp ON rp.id = t.resource_provider_id{w}"
                )),
                sel.args(),
            )
            .await?
        };
        for r in &traits {
            let Some((uuid, root)) = by_id.get(&r.i64(0)?) else {
                continue;
            };
            let t = Trait::new(r.str(1)?)?;
            if let Some(n) = trees.get_mut(root).and_then(|t| t.node_mut(*uuid)) {
                n.traits.insert(t);
            }
        }
        let aggs = if !labels {
            vec![]
        } else {
            tx.fetch_all(
                self.sql(format!(
                    "SELECT a.resource_provider_id, a.aggregate_uuid FROM resource_provider_aggregates a \
                     JOIN resource_providers rp ON rp.id = a.resource_provider_id{w}"
                )),
                sel.args(),
            )
            .await?
        };
        for r in &aggs {
            let Some((uuid, root)) = by_id.get(&r.i64(0)?) else {
                continue;
            };
            let a = AggregateId(r.uuid(1)?);
            if let Some(n) = trees.get_mut(root).and_then(|t| t.node_mut(*uuid)) {
                n.aggregates.insert(a);
            }
        }
        let groups = if !groups {
            vec![]
        } else {
            tx.fetch_all(
                self.sql(format!(
                    "SELECT tc.root_provider_id, tc.group_uuid, COUNT(*) FROM tree_consumers tc \
                     JOIN resource_providers rp ON rp.id = tc.root_provider_id{w}{} \
                     tc.group_uuid IS NOT NULL GROUP BY tc.root_provider_id, tc.group_uuid",
                    if w.is_empty() { " WHERE" } else { " AND" }
                )),
                sel.args(),
            )
            .await?
        };
        for r in &groups {
            let root = r.i64(0)?;
            let g = GroupId(r.uuid(1)?);
            let n = u32::try_from(r.i64(2)?).unwrap_or(u32::MAX);
            if let Some(t) = trees.get_mut(&root) {
                t.groups.insert(g, n);
            }
        }
        let mut out: Vec<ProviderTree> = trees.into_values().collect();
        out.sort_by_key(|t| t.root);
        Ok(Loaded { trees: out, rows: prow })
    }

    /// `(provider id, root id, root uuid)` of a provider, or `NotFound`.
    pub(super) async fn locate(&self, provider: ProviderId) -> Result<(i64, i64, ProviderId)> {
        let row = self
            .api
            .fetch_optional(
                "SELECT rp.id, root.id, root.uuid FROM resource_providers rp \
                 JOIN resource_providers root ON root.id = rp.root_provider_id WHERE rp.uuid = ?",
                sql_args![provider.to_string()],
            )
            .await?
            .ok_or_else(|| Error::not_found(Kind::Provider, provider))?;
        Ok((row.i64(0)?, row.i64(1)?, ProviderId(row.uuid(2)?)))
    }

    async fn insert_provider_details(&self, tx: &mut Tx, id: i64, p: &NewProvider) -> Result<(), Fail> {
        for (class, inv) in &p.inventories {
            tx.execute(
                "INSERT INTO inventories (resource_provider_id, resource_class, total, reserved, \
                 min_unit, max_unit, step_size, allocation_ratio) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                sql_args![
                    id,
                    class.as_str(),
                    inv.total,
                    inv.reserved,
                    inv.min_unit,
                    inv.max_unit,
                    inv.step_size,
                    inv.allocation_ratio
                ],
            )
            .await?;
        }
        for t in &p.traits {
            tx.execute(
                "INSERT INTO resource_provider_traits (resource_provider_id, trait) VALUES (?, ?)",
                sql_args![id, t.as_str()],
            )
            .await?;
        }
        for a in &p.aggregates {
            tx.execute(
                "INSERT INTO resource_provider_aggregates (resource_provider_id, aggregate_uuid) VALUES (?, ?)",
                sql_args![id, a.to_string()],
            )
            .await?;
        }
        Ok(())
    }

    /// Bumps the tree generation iff it is still `expected` (Placement's generation check on
    /// `PUT .../inventories|traits|aggregates`); `Conflict::Generation` otherwise.
    async fn cas_tree(
        &self,
        tx: &mut Tx,
        root_id: i64,
        root: ProviderId,
        expected: u64,
        touched: Option<i64>,
    ) -> Result<(), Fail> {
        if let Some(p) = touched
            && p != root_id
        {
            tx.execute("UPDATE resource_providers SET generation = generation + 1 WHERE id = ?", sql_args![p]).await?;
        }
        let n = tx
            .execute(
                "UPDATE resource_providers SET tree_generation = tree_generation + 1, \
                 generation = generation + ? WHERE id = ? AND tree_generation = ?",
                sql_args![i64::from(touched == Some(root_id)), root_id, expected as i64],
            )
            .await?;
        if n == 0 {
            let actual = tx
                .fetch_optional("SELECT tree_generation FROM resource_providers WHERE id = ?", sql_args![root_id])
                .await?
                .map(|r| r.i64(0))
                .transpose()?
                .unwrap_or(0);
            return Err(Error::Conflict(Conflict::Generation { root, expected, actual: gen_u64(actual) }).into());
        }
        Ok(())
    }

    async fn generation_write<T>(
        &self,
        provider: ProviderId,
        generation: u64,
        body: impl AsyncFnOnce(&mut Tx, i64) -> Result<T, Fail>,
    ) -> Result<(T, u64)> {
        let (id, root_id, root) = self.locate(provider).await?;
        let r: Result<T, Fail> = async {
            let mut tx = self.api.begin().await?;
            let current = tx
                .fetch_optional("SELECT tree_generation FROM resource_providers WHERE id = ?", sql_args![root_id])
                .await?
                .ok_or_else(|| Error::not_found(Kind::Provider, provider))?
                .i64(0)?;
            if gen_u64(current) != generation {
                return Err(Error::Conflict(Conflict::Generation {
                    root,
                    expected: generation,
                    actual: gen_u64(current),
                })
                .into());
            }
            let v = body(&mut tx, id).await?;
            self.cas_tree(&mut tx, root_id, root, generation, Some(id)).await?;
            self.log_change(&mut tx, root).await?;
            tx.commit().await?;
            Ok(v)
        }
        .await;
        match r {
            Ok(v) => {
                self.maybe_prune(root).await;
                Ok((v, generation + 1))
            }
            Err(Fail::Err(e)) => Err(e),
            Err(Fail::Retry) => {
                let actual = self.provider_tree(provider).await?.generation;
                Err(Error::Conflict(Conflict::Generation { root, expected: generation, actual }))
            }
        }
    }

    async fn claim_attempt(
        &self,
        request: &ClaimRequest,
        allocations: &AllocationMap,
        root_id: i64,
        tried: &mut u64,
    ) -> Result<Claim, Fail> {
        let mut tx = self.api.begin().await?;
        let loaded = self.load_trees_with(&mut tx, Sel::Root(root_id), false, request.group.is_some()).await?;
        let Some(tree) = loaded.trees.into_iter().next() else {
            let first = request.allocations.keys().next().copied();
            return Err(Error::not_found(Kind::Provider, first.map(|p| p.to_string()).unwrap_or_default()).into());
        };
        *tried = tree.generation;
        let consumer = request.consumer.to_string();
        let held_rows = tx
            .fetch_all(
                "SELECT rp.uuid, a.resource_class, a.used FROM allocations a \
                 JOIN resource_providers rp ON rp.id = a.resource_provider_id \
                 WHERE a.consumer_id = ? AND rp.root_provider_id = ?",
                sql_args![&consumer, root_id],
            )
            .await?;
        let mut held = AllocationMap::new();
        for r in &held_rows {
            *held.entry(ProviderId(r.uuid(0)?)).or_default().entry(ResourceClass::parse(&r.str(1)?)?).or_insert(0) +=
                r.i64(2)?;
        }
        let held = (!held_rows.is_empty()).then_some(&held);
        if request.evaluate(&tree, held)? {
            tx.rollback().await?;
            return Ok(Claim { root: tree.root, generation: tree.generation, replayed: true });
        }
        // Insert the allocations (one multi-row INSERT).
        let mut values = Vec::new();
        let mut args = Vec::new();
        for (provider, resources) in allocations {
            let row = loaded.rows.get(provider).ok_or_else(|| Error::not_found(Kind::Provider, provider))?;
            for (class, amount) in resources {
                values.push("(?, ?, ?, ?)");
                args.extend(sql_args![row.id, &consumer, class.as_str(), *amount]);
            }
        }
        tx.execute(
            self.sql(format!(
                "INSERT INTO allocations (resource_provider_id, consumer_id, resource_class, used) VALUES {}",
                values.join(", ")
            )),
            args,
        )
        .await?;
        // The consumer: created, or its generation bumped (generation-checked).
        let existing =
            tx.fetch_optional("SELECT generation FROM consumers WHERE uuid = ?", sql_args![&consumer]).await?;
        match existing {
            None => {
                let r = tx
                    .execute(
                        "INSERT INTO consumers (uuid, project_id, user_id, generation) VALUES (?, ?, ?, 1)",
                        sql_args![&consumer, &request.project_id, &request.user_id],
                    )
                    .await;
                match r {
                    Ok(_) => {}
                    Err(e) if is_unique_violation(&e) => return Err(Fail::Retry),
                    Err(e) => return Err(e.into()),
                }
            }
            Some(row) => {
                let g = row.i64(0)?;
                let n = tx
                    .execute(
                        "UPDATE consumers SET generation = generation + 1, project_id = ?, user_id = ? \
                         WHERE uuid = ? AND generation = ?",
                        sql_args![&request.project_id, &request.user_id, &consumer, g],
                    )
                    .await?;
                if n == 0 {
                    return Err(Fail::Retry);
                }
            }
        }
        let r = tx
            .execute(
                "INSERT INTO tree_consumers (root_provider_id, consumer_id, group_uuid) VALUES (?, ?, ?)",
                sql_args![root_id, &consumer, request.group.map(|g| g.group.to_string())],
            )
            .await;
        match r {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(Fail::Retry),
            Err(e) => return Err(e.into()),
        }
        // Generations: every touched provider, then the tree (on the root row).
        let root_row = loaded.rows.get(&tree.root).ok_or_else(|| Error::not_found(Kind::Provider, tree.root))?.clone();
        for provider in allocations.keys() {
            if *provider == tree.root {
                continue;
            }
            let row = &loaded.rows[provider];
            let n = tx
                .execute(
                    "UPDATE resource_providers SET generation = generation + 1 WHERE id = ? AND generation = ?",
                    sql_args![row.id, row.generation],
                )
                .await?;
            if n == 0 {
                return Err(Fail::Retry);
            }
        }
        let root_touched = allocations.contains_key(&tree.root);
        let n = tx
            .execute(
                "UPDATE resource_providers SET tree_generation = tree_generation + 1, \
                 generation = generation + ? WHERE id = ? AND tree_generation = ? AND generation = ?",
                sql_args![i64::from(root_touched), root_row.id, tree.generation as i64, root_row.generation],
            )
            .await?;
        if n == 0 {
            return Err(Fail::Retry);
        }
        self.log_change(&mut tx, tree.root).await?;
        tx.commit().await?;
        Ok(Claim { root: tree.root, generation: tree.generation + 1, replayed: false })
    }

    async fn release_attempt(&self, c: &str, root_id: i64, root: ProviderId) -> Result<bool, Fail> {
        let mut tx = self.api.begin().await?;
        let n = tx
            .execute("DELETE FROM tree_consumers WHERE root_provider_id = ? AND consumer_id = ?", sql_args![root_id, c])
            .await?;
        if n == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        let touched = tx
            .fetch_all(
                "SELECT DISTINCT a.resource_provider_id FROM allocations a \
                 JOIN resource_providers rp ON rp.id = a.resource_provider_id \
                 WHERE a.consumer_id = ? AND rp.root_provider_id = ?",
                sql_args![c, root_id],
            )
            .await?;
        for r in &touched {
            let id = r.i64(0)?;
            tx.execute("DELETE FROM allocations WHERE consumer_id = ? AND resource_provider_id = ?", sql_args![c, id])
                .await?;
            tx.execute("UPDATE resource_providers SET generation = generation + 1 WHERE id = ?", sql_args![id]).await?;
        }
        // Placement deletes a consumer with no allocations left, else bumps its generation.
        let left = tx.fetch_optional("SELECT 1 FROM tree_consumers WHERE consumer_id = ?", sql_args![c]).await?;
        if left.is_none() {
            tx.execute("DELETE FROM consumers WHERE uuid = ?", sql_args![c]).await?;
        } else {
            tx.execute("UPDATE consumers SET generation = generation + 1 WHERE uuid = ?", sql_args![c]).await?;
        }
        // The tree generation last, as claims do (same lock order: children, then root).
        tx.execute(
            "UPDATE resource_providers SET tree_generation = tree_generation + 1 WHERE id = ?",
            sql_args![root_id],
        )
        .await?;
        self.log_change(&mut tx, root).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn tree_allocs(&self, where_: &'static str, arg: Arg) -> Result<Vec<TreeAllocation>> {
        let (heads_sql, rows_sql) = match where_ {
            "consumer" => (
                "SELECT tc.consumer_id, root.uuid, tc.group_uuid, c.project_id, c.user_id, tc.root_provider_id \
                 FROM tree_consumers tc JOIN resource_providers root ON root.id = tc.root_provider_id \
                 JOIN consumers c ON c.uuid = tc.consumer_id WHERE tc.consumer_id = ?",
                "SELECT a.consumer_id, rp.root_provider_id, rp.uuid, a.resource_class, a.used FROM allocations a \
                 JOIN resource_providers rp ON rp.id = a.resource_provider_id WHERE a.consumer_id = ?",
            ),
            _ => (
                "SELECT tc.consumer_id, root.uuid, tc.group_uuid, c.project_id, c.user_id, tc.root_provider_id \
                 FROM tree_consumers tc JOIN resource_providers root ON root.id = tc.root_provider_id \
                 JOIN consumers c ON c.uuid = tc.consumer_id WHERE tc.root_provider_id = ?",
                "SELECT a.consumer_id, rp.root_provider_id, rp.uuid, a.resource_class, a.used FROM allocations a \
                 JOIN resource_providers rp ON rp.id = a.resource_provider_id WHERE rp.root_provider_id = ?",
            ),
        };
        let r: Result<_, Fail> = async {
            let mut tx = self.api.begin_snapshot().await?;
            let heads = tx.fetch_all(heads_sql, vec![arg.clone()]).await?;
            let rows = tx.fetch_all(rows_sql, vec![arg.clone()]).await?;
            tx.commit().await?;
            Ok((heads, rows))
        }
        .await;
        let (heads, rows) = match r {
            Ok(x) => x,
            Err(Fail::Err(e)) => return Err(e),
            Err(Fail::Retry) => {
                return Err(Error::Timeout { backend: "sql", message: "allocation read conflicted".into() });
            }
        };
        let mut out: BTreeMap<(ProviderId, ConsumerId), (i64, TreeAllocation)> = BTreeMap::new();
        for h in &heads {
            let consumer = ConsumerId(h.uuid(0)?);
            let root = ProviderId(h.uuid(1)?);
            out.insert(
                (root, consumer),
                (
                    h.i64(5)?,
                    TreeAllocation {
                        consumer,
                        root,
                        project_id: h.str(3)?,
                        user_id: h.str(4)?,
                        group: h.opt_uuid(2)?.map(GroupId),
                        allocations: AllocationMap::new(),
                    },
                ),
            );
        }
        let mut by_root_id: HashMap<(i64, ConsumerId), (ProviderId, ConsumerId)> = HashMap::new();
        for ((root, consumer), (root_id, _)) in &out {
            by_root_id.insert((*root_id, *consumer), (*root, *consumer));
        }
        for r in &rows {
            let consumer = ConsumerId(r.uuid(0)?);
            let Some(key) = by_root_id.get(&(r.i64(1)?, consumer)) else {
                continue;
            };
            if let Some((_, ta)) = out.get_mut(key) {
                *ta.allocations
                    .entry(ProviderId(r.uuid(2)?))
                    .or_default()
                    .entry(ResourceClass::parse(&r.str(3)?)?)
                    .or_insert(0) += r.i64(4)?;
            }
        }
        let mut v: Vec<TreeAllocation> = out.into_values().map(|(_, t)| t).collect();
        v.sort_by_key(|t| (t.consumer, t.root));
        Ok(v)
    }
}

#[async_trait]
impl Providers for SqlStore {
    async fn create_provider(&self, p: &NewProvider) -> Result<u64> {
        p.validate()?;
        let exists = |sql: &'static str, v: String| async move {
            Ok::<bool, Error>(self.api.fetch_optional(sql, sql_args![v]).await?.is_some())
        };
        let check_dups = || async {
            if exists("SELECT 1 FROM resource_providers WHERE uuid = ?", p.id.to_string()).await? {
                return Err(Error::already_exists(Kind::Provider, p.id));
            }
            if exists("SELECT 1 FROM resource_providers WHERE name = ?", p.name.clone()).await? {
                return Err(Error::Conflict(Conflict::DuplicateName { name: p.name.clone() }));
            }
            Ok(())
        };
        check_dups().await?;
        let parent = match p.parent {
            None => None,
            Some(parent) => Some(self.locate(parent).await?),
        };
        let result: Result<u64, Fail> = async {
            let mut tx = self.api.begin().await?;
            let (root_uuid, generation) = match parent {
                None => {
                    tx.execute(
                        "INSERT INTO resource_providers (uuid, name, generation, tree_generation, \
                         root_provider_id, parent_provider_id, cell_uuid) VALUES (?, ?, 0, 1, NULL, NULL, ?)",
                        sql_args![p.id.to_string(), &p.name, p.cell.map(|c| c.to_string())],
                    )
                    .await?;
                    tx.execute(
                        "UPDATE resource_providers SET root_provider_id = id WHERE uuid = ?",
                        sql_args![p.id.to_string()],
                    )
                    .await?;
                    (p.id, 1u64)
                }
                Some((parent_id, root_id, root_uuid)) => {
                    // Children inherit their root's cell; the root row is locked (and its
                    // tree generation bumped) so the tree changes atomically.
                    let row = tx
                        .fetch_optional(
                            self.dialect.pick(
                                "SELECT tree_generation, cell_uuid FROM resource_providers WHERE id = ? FOR UPDATE",
                                "SELECT tree_generation, cell_uuid FROM resource_providers WHERE id = ? FOR UPDATE",
                            ),
                            sql_args![root_id],
                        )
                        .await?
                        .ok_or_else(|| Error::not_found(Kind::Provider, p.parent.unwrap_or(p.id)))?;
                    let g = row.i64(0)?;
                    let cell = row.opt_str(1)?;
                    tx.execute(
                        "INSERT INTO resource_providers (uuid, name, generation, tree_generation, \
                         root_provider_id, parent_provider_id, cell_uuid) VALUES (?, ?, 0, 0, ?, ?, ?)",
                        sql_args![p.id.to_string(), &p.name, root_id, parent_id, cell],
                    )
                    .await?;
                    tx.execute(
                        // Placement leaves the other providers' generations alone.
                        "UPDATE resource_providers SET tree_generation = tree_generation + 1 WHERE id = ?",
                        sql_args![root_id],
                    )
                    .await?;
                    (root_uuid, gen_u64(g + 1))
                }
            };
            let id = tx
                .fetch_optional("SELECT id FROM resource_providers WHERE uuid = ?", sql_args![p.id.to_string()])
                .await?
                .ok_or_else(|| Error::backend("sql", "inserted provider vanished"))?
                .i64(0)?;
            self.insert_provider_details(&mut tx, id, p).await?;
            self.log_change(&mut tx, root_uuid).await?;
            tx.commit().await?;
            Ok(generation)
        }
        .await;
        match result {
            Ok(g) => Ok(g),
            Err(Fail::Err(Error::Backend { source, .. }))
                if source.downcast_ref::<sqlx::Error>().is_some_and(is_unique_violation) =>
            {
                check_dups().await?;
                Err(Error::Conflict(Conflict::DuplicateName { name: p.name.clone() }))
            }
            Err(Fail::Err(e)) => Err(e),
            Err(Fail::Retry) => {
                Err(Error::Timeout { backend: "sql", message: format!("creating provider {} deadlocked; retry", p.id) })
            }
        }
    }

    async fn delete_provider(&self, provider: ProviderId) -> Result<()> {
        let (id, root_id, root_uuid) = self.locate(provider).await?;
        let r: Result<(), Fail> = async {
            let mut tx = self.api.begin().await?;
            // Lock the root row: deletes and claims on the tree serialize on it.
            tx.fetch_optional("SELECT id FROM resource_providers WHERE id = ? FOR UPDATE", sql_args![root_id]).await?;
            let in_use = tx
                .fetch_optional(
                    "SELECT 1 FROM resource_providers WHERE parent_provider_id = ? \
                     UNION ALL SELECT 1 FROM allocations WHERE resource_provider_id = ? \
                     UNION ALL SELECT 1 FROM tree_consumers WHERE root_provider_id = ? AND ? = ?",
                    sql_args![id, id, id, id, root_id],
                )
                .await?;
            if in_use.is_some() {
                return Err(Error::Conflict(Conflict::ProviderInUse { provider }).into());
            }
            for sql in [
                "DELETE FROM inventories WHERE resource_provider_id = ?",
                "DELETE FROM resource_provider_traits WHERE resource_provider_id = ?",
                "DELETE FROM resource_provider_aggregates WHERE resource_provider_id = ?",
            ] {
                tx.execute(sql, sql_args![id]).await?;
            }
            if id != root_id {
                tx.execute(
                    "UPDATE resource_providers SET tree_generation = tree_generation + 1 WHERE id = ?",
                    sql_args![root_id],
                )
                .await?;
            }
            tx.execute("DELETE FROM resource_providers WHERE id = ?", sql_args![id]).await?;
            self.log_change(&mut tx, root_uuid).await?;
            tx.commit().await?;
            Ok(())
        }
        .await;
        match r {
            Ok(()) => Ok(()),
            Err(Fail::Err(e)) => Err(e),
            Err(Fail::Retry) => Err(Error::Timeout {
                backend: "sql",
                message: format!("deleting provider {provider} deadlocked; retry"),
            }),
        }
    }

    async fn provider_tree(&self, provider: ProviderId) -> Result<ProviderTree> {
        let (_, root_id, _) = self.locate(provider).await?;
        let r: Result<Loaded, Fail> = async {
            let mut tx = self.api.begin_snapshot().await?;
            let l = self.load_trees(&mut tx, Sel::Root(root_id)).await?;
            tx.commit().await?;
            Ok(l)
        }
        .await;
        match r {
            Ok(l) => l.trees.into_iter().next().ok_or_else(|| Error::not_found(Kind::Provider, provider)),
            Err(Fail::Err(e)) => Err(e),
            Err(Fail::Retry) => Err(Error::Timeout { backend: "sql", message: "tree read kept conflicting".into() }),
        }
    }

    async fn list_provider_trees(&self, cell: Option<CellId>) -> Result<Vec<ProviderTree>> {
        let cell_s = cell.map(|c| c.to_string());
        let sel = match &cell_s {
            Some(c) => Sel::Cell(c),
            None => Sel::All,
        };
        let r: Result<Loaded, Fail> = async {
            let mut tx = self.api.begin_snapshot().await?;
            let l = self.load_trees(&mut tx, sel).await?;
            tx.commit().await?;
            Ok(l)
        }
        .await;
        match r {
            Ok(l) => Ok(l.trees),
            Err(Fail::Err(e)) => Err(e),
            Err(Fail::Retry) => Err(Error::Timeout { backend: "sql", message: "tree read kept conflicting".into() }),
        }
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
        let sum = self.dialect.pick("SIGNED", "BIGINT");
        let (over, g) = self
            .generation_write(provider, generation, async |tx: &mut Tx, id: i64| {
                let usage = tx
                    .fetch_all(
                        self.sql(format!(
                            "SELECT resource_class, CAST(SUM(used) AS {sum}) FROM allocations \
                             WHERE resource_provider_id = ? GROUP BY resource_class ORDER BY resource_class"
                        )),
                        sql_args![id],
                    )
                    .await?;
                let mut used = BTreeMap::new();
                for r in &usage {
                    let u = r.i64(1)?;
                    if u > 0 {
                        used.insert(ResourceClass::parse(&r.str(0)?)?, u);
                    }
                }
                if let Some(class) = used.keys().find(|c| !inventories.contains_key(*c)) {
                    return Err(Error::Conflict(Conflict::InventoryInUse { provider, class: class.clone() }).into());
                }
                tx.execute("DELETE FROM inventories WHERE resource_provider_id = ?", sql_args![id]).await?;
                for (class, inv) in inventories {
                    tx.execute(
                        "INSERT INTO inventories (resource_provider_id, resource_class, total, reserved, \
                         min_unit, max_unit, step_size, allocation_ratio) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        sql_args![
                            id,
                            class.as_str(),
                            inv.total,
                            inv.reserved,
                            inv.min_unit,
                            inv.max_unit,
                            inv.step_size,
                            inv.allocation_ratio
                        ],
                    )
                    .await?;
                }
                Ok(inventories
                    .iter()
                    .filter(|(c, inv)| used.get(*c).copied().unwrap_or(0) > inv.capacity())
                    .map(|(c, _)| c.clone())
                    .collect::<Vec<_>>())
            })
            .await?;
        Ok(InventoryWrite { generation: g, over_capacity: over })
    }

    async fn set_traits(&self, provider: ProviderId, generation: u64, traits: &BTreeSet<Trait>) -> Result<u64> {
        let ((), g) = self
            .generation_write(provider, generation, async |tx: &mut Tx, id: i64| {
                tx.execute("DELETE FROM resource_provider_traits WHERE resource_provider_id = ?", sql_args![id])
                    .await?;
                for t in traits {
                    tx.execute(
                        "INSERT INTO resource_provider_traits (resource_provider_id, trait) VALUES (?, ?)",
                        sql_args![id, t.as_str()],
                    )
                    .await?;
                }
                Ok(())
            })
            .await?;
        Ok(g)
    }

    async fn set_aggregates(
        &self,
        provider: ProviderId,
        generation: u64,
        aggregates: &BTreeSet<AggregateId>,
    ) -> Result<u64> {
        let ((), g) = self
            .generation_write(provider, generation, async |tx: &mut Tx, id: i64| {
                tx.execute("DELETE FROM resource_provider_aggregates WHERE resource_provider_id = ?", sql_args![id])
                    .await?;
                for a in aggregates {
                    tx.execute(
                        "INSERT INTO resource_provider_aggregates (resource_provider_id, aggregate_uuid) VALUES (?, ?)",
                        sql_args![id, a.to_string()],
                    )
                    .await?;
                }
                Ok(())
            })
            .await?;
        Ok(g)
    }
}

#[async_trait]
impl Claims for SqlStore {
    /// Placement's `_set_allocations` for one consumer on one tree (module docs).
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim> {
        request.validate()?;
        // Resolve every provider first (unknown provider: NotFound, before anything else).
        let uuids: Vec<ProviderId> = request.allocations.keys().copied().collect();
        let placeholders = vec!["?"; uuids.len()].join(", ");
        let rows = self
            .api
            .fetch_all(
                self.sql(format!(
                    "SELECT uuid, root_provider_id FROM resource_providers WHERE uuid IN ({placeholders})"
                )),
                uuids.iter().map(|u| Arg::Str(u.to_string())).collect(),
            )
            .await?;
        let mut roots = HashMap::new();
        for r in &rows {
            roots.insert(ProviderId(r.uuid(0)?), r.i64(1)?);
        }
        for u in &uuids {
            if !roots.contains_key(u) {
                return Err(Error::not_found(Kind::Provider, u));
            }
        }
        let first = uuids.first().ok_or_else(|| Error::invalid("allocations", "empty"))?;
        let root_id = roots[first];
        let allocations = normalized(&request.allocations);
        let mut tried = 0u64;
        for attempt in 0..=self.opts.claim_retries {
            if attempt > 0 {
                backoff(attempt).await;
            }
            match self.claim_attempt(request, &allocations, root_id, &mut tried).await {
                Ok(claim) => {
                    if !claim.replayed {
                        self.maybe_prune(claim.root).await;
                    }
                    return Ok(claim);
                }
                Err(Fail::Err(e)) => return Err(e),
                Err(Fail::Retry) => {
                    tracing::debug!(attempt, consumer = %request.consumer, "claim generation conflict, retrying");
                }
            }
        }
        let tree = self.provider_tree(*first).await?;
        Err(Error::Conflict(Conflict::Generation { root: tree.root, expected: tried, actual: tree.generation }))
    }

    /// The claims of a batch in parallel, as many at once as the API pool has connections
    /// (each claim is its own transaction: one per tree, as Placement's). Not one
    /// multi-statement transaction: a claim's generation conflict retries that claim alone,
    /// and one transaction over many trees would hold their rows locked together.
    async fn claim_batch(&self, requests: &[ClaimRequest]) -> Result<Vec<Result<Claim>>> {
        let width = self.opts.pool_size as usize;
        Ok(crate::store::claim_in_parallel(self, requests, width).await)
    }

    async fn release(&self, consumer: ConsumerId) -> Result<Released> {
        let c = consumer.to_string();
        let trees = self
            .api
            .fetch_all(
                "SELECT tc.root_provider_id, rp.uuid FROM tree_consumers tc \
                 JOIN resource_providers rp ON rp.id = tc.root_provider_id WHERE tc.consumer_id = ? \
                 ORDER BY rp.uuid",
                sql_args![&c],
            )
            .await?;
        let mut released = Vec::new();
        for t in &trees {
            let root_id = t.i64(0)?;
            let root = ProviderId(t.uuid(1)?);
            let mut done = false;
            for attempt in 0..=self.opts.claim_retries {
                if attempt > 0 {
                    backoff(attempt).await;
                }
                match self.release_attempt(&c, root_id, root).await {
                    Ok(d) => {
                        done = d;
                        break;
                    }
                    Err(Fail::Err(e)) => return Err(e),
                    Err(Fail::Retry) if attempt == self.opts.claim_retries => {
                        return Err(Error::Timeout {
                            backend: "sql",
                            message: format!("release of {consumer} on tree {root} kept deadlocking"),
                        });
                    }
                    Err(Fail::Retry) => {}
                }
            }
            if done {
                released.push(root);
            }
        }
        Ok(Released { roots: released })
    }

    async fn allocations(&self, consumer: ConsumerId) -> Result<Vec<TreeAllocation>> {
        let mut v = self.tree_allocs("consumer", Arg::Str(consumer.to_string())).await?;
        v.sort_by_key(|t| t.root);
        Ok(v)
    }

    async fn tree_allocations(&self, provider: ProviderId) -> Result<Vec<TreeAllocation>> {
        let (_, root_id, _) = self.locate(provider).await?;
        self.tree_allocs("tree", Arg::I64(root_id)).await
    }
}
