//! [`PlacementStore`] on the SQL baseline (MariaDB and PostgreSQL).
//!
//! Placement's state is where Placement keeps it: the provider generation is
//! `resource_providers.generation`, the consumer generation, project, user and type are the
//! `consumers` row (migration 0003 adds `consumer_type`), and the custom resource classes and
//! traits are rows of `placement_custom_names`. A read is one snapshot transaction. A write
//! ([`replace_tree`](PlacementStore::replace_tree)) is one transaction that locks the root
//! row (`SELECT ... FOR UPDATE`), compares its `tree_generation` with the one the decision
//! was read at, writes only the rows that differ, bumps `tree_generation` and logs the change:
//! a claim racing with it either waits for the lock and then fails its own generation check
//! (and retries), or commits first and makes this write fail with `Conflict::Generation`
//! (then [`update_tree`](crate::store::placement::update_tree) re-reads and re-decides). So
//! the database, not the API process, enforces capacity and generations.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;

use super::SqlStore;
use super::conn::{Tx, is_unique_violation};
use super::trees::{Fail, Sel, gen_u64};
use crate::error::{Conflict, Error, Kind, Result};
use crate::model::*;
use crate::sql_args;
use crate::store::placement::{ConsumerRecord, PlacementStore, PlacementTree, RegistryEntry};

fn finish<T>(r: Result<T, Fail>, retry: impl FnOnce() -> Error) -> Result<T> {
    match r {
        Ok(v) => Ok(v),
        Err(Fail::Err(e)) => Err(e),
        Err(Fail::Retry) => Err(retry()),
    }
}

impl SqlStore {
    /// Trees (by `sel`) with their Placement state, inside `tx`.
    async fn load_placement(&self, tx: &mut Tx, sel: Sel<'_>) -> Result<Vec<PlacementTree>, Fail> {
        let loaded = self.load_trees(tx, sel).await?;
        let (w, args) = match sel {
            Sel::Root(id) => (" WHERE tc.root_provider_id = ?", sql_args![id]),
            _ => ("", vec![]),
        };
        let heads = tx
            .fetch_all(
                self.sql(format!(
                    "SELECT tc.consumer_id, root.uuid, tc.group_uuid, c.project_id, c.user_id, c.generation, \
                     c.consumer_type FROM tree_consumers tc \
                     JOIN resource_providers root ON root.id = tc.root_provider_id \
                     JOIN consumers c ON c.uuid = tc.consumer_id{w}"
                )),
                args.clone(),
            )
            .await?;
        let w = if w.is_empty() { "" } else { " WHERE rp.root_provider_id = ?" };
        let rows = tx
            .fetch_all(
                self.sql(format!(
                    "SELECT a.consumer_id, root.uuid, rp.uuid, a.resource_class, a.used FROM allocations a \
                     JOIN resource_providers rp ON rp.id = a.resource_provider_id \
                     JOIN resource_providers root ON root.id = rp.root_provider_id{w}"
                )),
                args,
            )
            .await?;
        let mut trees: BTreeMap<ProviderId, PlacementTree> = BTreeMap::new();
        for t in loaded.trees {
            let generations = t
                .providers
                .iter()
                .filter_map(|p| {
                    let g = gen_u64(loaded.rows.get(&p.id)?.generation);
                    (g > 0).then_some((p.id, g))
                })
                .collect();
            trees.insert(t.root, PlacementTree { tree: t, generations, consumers: BTreeMap::new() });
        }
        for h in &heads {
            let consumer = ConsumerId(h.uuid(0)?);
            let root = ProviderId(h.uuid(1)?);
            if let Some(t) = trees.get_mut(&root) {
                t.consumers.insert(
                    consumer,
                    ConsumerRecord {
                        allocation: TreeAllocation {
                            consumer,
                            root,
                            project_id: h.str(3)?,
                            user_id: h.str(4)?,
                            group: h.opt_uuid(2)?.map(GroupId),
                            allocations: AllocationMap::new(),
                        },
                        generation: gen_u64(h.i64(5)?),
                        consumer_type: h.opt_str(6)?,
                    },
                );
            }
        }
        for r in &rows {
            let consumer = ConsumerId(r.uuid(0)?);
            let root = ProviderId(r.uuid(1)?);
            if let Some(rec) = trees.get_mut(&root).and_then(|t| t.consumers.get_mut(&consumer)) {
                *rec.allocation
                    .allocations
                    .entry(ProviderId(r.uuid(2)?))
                    .or_default()
                    .entry(ResourceClass::parse(&r.str(3)?)?)
                    .or_insert(0) += r.i64(4)?;
            }
        }
        Ok(trees.into_values().collect())
    }

    async fn replace_attempt(&self, old: &PlacementTree, new: &PlacementTree) -> Result<u64, Fail> {
        let root = old.tree.root;
        let mut tx = self.api.begin().await?;
        let row = tx
            .fetch_optional(
                "SELECT id, tree_generation FROM resource_providers WHERE uuid = ? FOR UPDATE",
                sql_args![root.to_string()],
            )
            .await?
            .ok_or_else(|| Error::not_found(Kind::Provider, root))?;
        let root_id = row.i64(0)?;
        let actual = gen_u64(row.i64(1)?);
        if actual != old.tree.generation {
            return Err(Error::Conflict(Conflict::Generation { root, expected: old.tree.generation, actual }).into());
        }
        let mut ids: HashMap<ProviderId, i64> = HashMap::new();
        for r in tx
            .fetch_all("SELECT id, uuid FROM resource_providers WHERE root_provider_id = ?", sql_args![root_id])
            .await?
        {
            ids.insert(ProviderId(r.uuid(1)?), r.i64(0)?);
        }
        let id_of = |p: ProviderId| ids.get(&p).copied().ok_or_else(|| Fail::Err(Error::not_found(Kind::Provider, p)));
        // Providers: only what changed.
        for p in &new.tree.providers {
            let Some(before) = old.tree.node(p.id) else {
                return Err(Error::invalid("tree", "a tree replacement keeps the set of providers").into());
            };
            let id = id_of(p.id)?;
            if before.name != p.name {
                let r = tx.execute("UPDATE resource_providers SET name = ? WHERE id = ?", sql_args![&p.name, id]).await;
                match r {
                    Ok(_) => {}
                    Err(e) if is_unique_violation(&e) => {
                        return Err(Error::Conflict(Conflict::DuplicateName { name: p.name.clone() }).into());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if before.parent != p.parent {
                let parent = p.parent.map(id_of).transpose()?;
                tx.execute("UPDATE resource_providers SET parent_provider_id = ? WHERE id = ?", sql_args![parent, id])
                    .await?;
            }
            if old.generation(p.id) != new.generation(p.id) {
                tx.execute(
                    "UPDATE resource_providers SET generation = ? WHERE id = ?",
                    sql_args![new.generation(p.id) as i64, id],
                )
                .await?;
            }
            if before.inventories != p.inventories {
                tx.execute("DELETE FROM inventories WHERE resource_provider_id = ?", sql_args![id]).await?;
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
            }
            if before.traits != p.traits {
                tx.execute("DELETE FROM resource_provider_traits WHERE resource_provider_id = ?", sql_args![id])
                    .await?;
                for t in &p.traits {
                    tx.execute(
                        "INSERT INTO resource_provider_traits (resource_provider_id, trait) VALUES (?, ?)",
                        sql_args![id, t.as_str()],
                    )
                    .await?;
                }
            }
            if before.aggregates != p.aggregates {
                tx.execute("DELETE FROM resource_provider_aggregates WHERE resource_provider_id = ?", sql_args![id])
                    .await?;
                for a in &p.aggregates {
                    tx.execute(
                        "INSERT INTO resource_provider_aggregates (resource_provider_id, aggregate_uuid) VALUES (?, ?)",
                        sql_args![id, a.to_string()],
                    )
                    .await?;
                }
            }
        }
        // Consumers: removed ones, then new or changed ones. Usage is the sum of the
        // allocation rows, so it follows.
        for c in old.consumers.keys().filter(|c| !new.consumers.contains_key(c)) {
            let cs = c.to_string();
            self.drop_tree_allocations(&mut tx, &cs, root_id).await?;
            tx.execute(
                "DELETE FROM tree_consumers WHERE root_provider_id = ? AND consumer_id = ?",
                sql_args![root_id, &cs],
            )
            .await?;
            let left = tx.fetch_optional("SELECT 1 FROM tree_consumers WHERE consumer_id = ?", sql_args![&cs]).await?;
            if left.is_none() {
                tx.execute("DELETE FROM consumers WHERE uuid = ?", sql_args![&cs]).await?;
            }
        }
        for (c, rec) in &new.consumers {
            let cs = c.to_string();
            let a = &rec.allocation;
            let before = old.consumers.get(c);
            if before.is_none_or(|b| b.allocation.allocations != a.allocations || b.allocation.group != a.group) {
                self.drop_tree_allocations(&mut tx, &cs, root_id).await?;
                for (p, resources) in &a.allocations {
                    let pid = id_of(*p)?;
                    for (class, amount) in resources {
                        tx.execute(
                            "INSERT INTO allocations (resource_provider_id, consumer_id, resource_class, used) \
                             VALUES (?, ?, ?, ?)",
                            sql_args![pid, &cs, class.as_str(), *amount],
                        )
                        .await?;
                    }
                }
                tx.execute(
                    "DELETE FROM tree_consumers WHERE root_provider_id = ? AND consumer_id = ?",
                    sql_args![root_id, &cs],
                )
                .await?;
                tx.execute(
                    "INSERT INTO tree_consumers (root_provider_id, consumer_id, group_uuid) VALUES (?, ?, ?)",
                    sql_args![root_id, &cs, a.group.map(|g| g.to_string())],
                )
                .await?;
            }
            if before.is_none_or(|b| {
                b.generation != rec.generation
                    || b.consumer_type != rec.consumer_type
                    || b.allocation.project_id != a.project_id
                    || b.allocation.user_id != a.user_id
            }) {
                let n = tx
                    .execute(
                        "UPDATE consumers SET project_id = ?, user_id = ?, generation = ?, consumer_type = ? \
                         WHERE uuid = ?",
                        sql_args![&a.project_id, &a.user_id, rec.generation as i64, rec.consumer_type.clone(), &cs],
                    )
                    .await?;
                if n == 0 {
                    let r = tx
                        .execute(
                            "INSERT INTO consumers (uuid, project_id, user_id, generation, consumer_type) \
                             VALUES (?, ?, ?, ?, ?)",
                            sql_args![&cs, &a.project_id, &a.user_id, rec.generation as i64, rec.consumer_type.clone()],
                        )
                        .await;
                    match r {
                        Ok(_) => {}
                        // A claim of the same consumer on another tree created it meanwhile.
                        Err(e) if is_unique_violation(&e) => return Err(Fail::Retry),
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        tx.execute(
            "UPDATE resource_providers SET tree_generation = tree_generation + 1 WHERE id = ?",
            sql_args![root_id],
        )
        .await?;
        self.log_change(&mut tx, root).await?;
        tx.commit().await?;
        Ok(old.tree.generation + 1)
    }

    async fn drop_tree_allocations(&self, tx: &mut Tx, consumer: &str, root_id: i64) -> Result<(), Fail> {
        tx.execute(
            self.sql(
                "DELETE FROM allocations WHERE consumer_id = ? AND resource_provider_id IN \
                 (SELECT id FROM resource_providers WHERE root_provider_id = ?)"
                    .to_string(),
            ),
            sql_args![consumer, root_id],
        )
        .await?;
        Ok(())
    }

    async fn move_attempt(&self, provider: ProviderId, parent: Option<ProviderId>) -> Result<(), Fail> {
        let (pid, src_root_id, src_root) = self.locate(provider).await?;
        let dst = match parent {
            Some(p) => Some(self.locate(p).await?),
            None if src_root == provider => return Ok(()),
            None => None,
        };
        if dst.as_ref().is_some_and(|d| d.1 == src_root_id) {
            return Err(Error::invalid("parent", "the new parent is in the same tree: replace the tree instead").into());
        }
        let mut tx = self.api.begin().await?;
        // Lock both roots in id order (claims and replaces lock one root each).
        let mut roots = vec![src_root_id];
        roots.extend(dst.as_ref().map(|d| d.1));
        roots.sort();
        for r in &roots {
            tx.fetch_optional("SELECT id FROM resource_providers WHERE id = ? FOR UPDATE", sql_args![*r]).await?;
        }
        // The subtree, from the locked tree's rows.
        let rows = tx
            .fetch_all(
                "SELECT id, parent_provider_id FROM resource_providers WHERE root_provider_id = ?",
                sql_args![src_root_id],
            )
            .await?;
        let mut sub = BTreeSet::from([pid]);
        loop {
            let before = sub.len();
            for r in &rows {
                if r.opt_i64(1)?.is_some_and(|p| sub.contains(&p)) {
                    sub.insert(r.i64(0)?);
                }
            }
            if sub.len() == before {
                break;
            }
        }
        let list = sub.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        let used = tx
            .fetch_optional(
                self.sql(format!("SELECT 1 FROM allocations WHERE resource_provider_id IN ({list}) LIMIT 1")),
                vec![],
            )
            .await?;
        if used.is_some() {
            return Err(Error::Conflict(Conflict::ProviderInUse { provider }).into());
        }
        match &dst {
            Some((parent_id, dst_root_id, dst_root)) => {
                let cell = tx
                    .fetch_optional("SELECT cell_uuid FROM resource_providers WHERE id = ?", sql_args![*dst_root_id])
                    .await?
                    .map(|r| r.opt_str(0))
                    .transpose()?
                    .flatten();
                tx.execute(
                    self.sql(format!(
                        "UPDATE resource_providers SET root_provider_id = ?, cell_uuid = ? WHERE id IN ({list})"
                    )),
                    sql_args![*dst_root_id, cell],
                )
                .await?;
                tx.execute(
                    "UPDATE resource_providers SET parent_provider_id = ? WHERE id = ?",
                    sql_args![*parent_id, pid],
                )
                .await?;
                tx.execute(
                    "UPDATE resource_providers SET tree_generation = tree_generation + 1 WHERE id = ?",
                    sql_args![*dst_root_id],
                )
                .await?;
                self.log_change(&mut tx, *dst_root).await?;
            }
            None => {
                tx.execute(
                    self.sql(format!("UPDATE resource_providers SET root_provider_id = ? WHERE id IN ({list})")),
                    sql_args![pid],
                )
                .await?;
                tx.execute(
                    "UPDATE resource_providers SET parent_provider_id = NULL, tree_generation = 1 WHERE id = ?",
                    sql_args![pid],
                )
                .await?;
                self.log_change(&mut tx, provider).await?;
            }
        }
        if pid != src_root_id {
            tx.execute(
                "UPDATE resource_providers SET tree_generation = tree_generation + 1 WHERE id = ?",
                sql_args![src_root_id],
            )
            .await?;
        }
        self.log_change(&mut tx, src_root).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn custom_names(&self, kind: &str) -> Result<Vec<RegistryEntry>> {
        let rows = self
            .api
            .fetch_all(
                "SELECT name, created_at FROM placement_custom_names WHERE kind = ? ORDER BY name",
                sql_args![kind],
            )
            .await?;
        rows.iter().map(|r| Ok(RegistryEntry { name: r.str(0)?, created_at: r.i64(1)? })).collect()
    }

    async fn add_custom_name(&self, kind: &str, name: &str) -> Result<bool> {
        let r = self
            .api
            .execute_raw(
                "INSERT INTO placement_custom_names (kind, name, created_at) VALUES (?, ?, ?)",
                sql_args![kind, name, Timestamp::now().as_micros()],
            )
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if is_unique_violation(&e) => Ok(false),
            Err(e) => Err(super::conn::map_err(e)),
        }
    }

    async fn remove_custom_name(&self, kind: &str, what: Kind, name: &str, in_use: &'static str) -> Result<()> {
        let known = self
            .api
            .fetch_optional("SELECT 1 FROM placement_custom_names WHERE kind = ? AND name = ?", sql_args![kind, name])
            .await?;
        if known.is_none() {
            return Err(Error::not_found(what, name));
        }
        if self.api.fetch_optional(in_use, sql_args![name]).await?.is_some() {
            return Err(Error::Conflict(Conflict::InUse { kind: what, name: name.to_string() }));
        }
        self.api
            .execute("DELETE FROM placement_custom_names WHERE kind = ? AND name = ?", sql_args![kind, name])
            .await?;
        Ok(())
    }
}

#[async_trait]
impl PlacementStore for SqlStore {
    async fn placement_tree(&self, provider: ProviderId) -> Result<PlacementTree> {
        let (_, root_id, _) = self.locate(provider).await?;
        let r: Result<Vec<PlacementTree>, Fail> = async {
            let mut tx = self.api.begin_snapshot().await?;
            let t = self.load_placement(&mut tx, Sel::Root(root_id)).await?;
            tx.commit().await?;
            Ok(t)
        }
        .await;
        let trees = finish(r, || Error::Timeout { backend: "sql", message: "tree read conflicted".into() })?;
        trees
            .into_iter()
            .find(|t| t.tree.node(provider).is_some())
            .ok_or_else(|| Error::not_found(Kind::Provider, provider))
    }

    async fn placement_trees(&self) -> Result<Vec<PlacementTree>> {
        let r: Result<Vec<PlacementTree>, Fail> = async {
            let mut tx = self.api.begin_snapshot().await?;
            let t = self.load_placement(&mut tx, Sel::All).await?;
            tx.commit().await?;
            Ok(t)
        }
        .await;
        finish(r, || Error::Timeout { backend: "sql", message: "tree read conflicted".into() })
    }

    async fn replace_tree(&self, old: &PlacementTree, new: &PlacementTree) -> Result<u64> {
        let root = old.tree.root;
        let ids = |t: &PlacementTree| t.tree.providers.iter().map(|p| p.id).collect::<BTreeSet<_>>();
        if new.tree.root != root || ids(old) != ids(new) {
            return Err(Error::invalid("tree", "a tree replacement keeps the root and the set of providers"));
        }
        let r = self.replace_attempt(old, new).await;
        if r.is_ok() {
            self.maybe_prune(root).await;
        }
        // A deadlock or serialization failure: the decision is re-made on a fresh read.
        finish(r, || Error::Conflict(Conflict::Generation { root, expected: old.tree.generation, actual: 0 }))
    }

    async fn move_provider(&self, provider: ProviderId, parent: Option<ProviderId>) -> Result<()> {
        let r = self.move_attempt(provider, parent).await;
        finish(r, || Error::Unavailable { backend: "sql", message: "provider move conflicted; retry".into() })
    }

    async fn resource_classes(&self) -> Result<Vec<RegistryEntry>> {
        self.custom_names("class").await
    }

    async fn create_resource_class(&self, class: &ResourceClass) -> Result<bool> {
        if !class.as_str().starts_with("CUSTOM_") {
            return Err(Error::invalid("resource_class", format!("{class} is a standard class")));
        }
        self.add_custom_name("class", class.as_str()).await
    }

    async fn delete_resource_class(&self, class: &ResourceClass) -> Result<()> {
        self.remove_custom_name(
            "class",
            Kind::ResourceClass,
            class.as_str(),
            "SELECT 1 FROM inventories WHERE resource_class = ? LIMIT 1",
        )
        .await
    }

    async fn custom_traits(&self) -> Result<Vec<RegistryEntry>> {
        self.custom_names("trait").await
    }

    async fn create_trait(&self, name: &Trait) -> Result<bool> {
        if !name.as_str().starts_with("CUSTOM_") {
            return Err(Error::invalid("trait", format!("{name} is not a custom trait")));
        }
        self.add_custom_name("trait", name.as_str()).await
    }

    async fn delete_trait(&self, name: &Trait) -> Result<()> {
        self.remove_custom_name(
            "trait",
            Kind::Trait,
            name.as_str(),
            "SELECT 1 FROM resource_provider_traits WHERE trait = ? LIMIT 1",
        )
        .await
    }
}
