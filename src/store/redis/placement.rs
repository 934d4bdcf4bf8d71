//! [`PlacementStore`] on Redis.
//!
//! Placement's extra state lives in the tree hash next to the tree it belongs to, so every
//! write that touches it is the same one script as the tree write:
//!
//! * `pg:<provider>`: Placement's provider generation (absent: 0), moved by `claim.lua`,
//!   `set_inventories.lua`, `set_field.lua` and by [`replace_tree`](PlacementStore::replace_tree);
//! * `cg:<consumer>`: `generation|type` of a consumer whose generation is above 1 or that has
//!   a type (absent: generation 1, no type, which is what a claim creates); removed by
//!   `release.lua`.
//!
//! A read is one script (`placement_read.lua`) returning the tree hash and the allocation
//! hash together, so both are of one tree generation. A write is the decision of
//! [`crate::store::placement`] (the same code as every backend) written by
//! `replace_tree.lua`, which rewrites the tree hash and the changed allocation records only if
//! the tree is still at the generation the decision was read at: Redis runs the script
//! atomically, so capacity and generations are enforced by the server for every API replica.
//! The custom resource classes and traits are two hashes `P:reg:classes` and `P:reg:traits`.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use redis::Value;

use super::RedisStore;
use super::codec::*;
use super::conn::corrupt;
use super::trees::{parse_reservation, rand_u64};
use crate::error::{Conflict, Error, Kind, Result};
use crate::model::*;
use crate::store::placement::{ConsumerRecord, PlacementStore, PlacementTree, RegistryEntry};
use crate::store::prelude::*;

/// Decodes a [`PlacementTree`] from the two hashes `placement_read.lua` returns.
pub(crate) fn decode_placement(root: ProviderId, v: Value) -> Result<Option<PlacementTree>> {
    let Value::Array(mut parts) = v else {
        return Err(corrupt("placement_read reply"));
    };
    if parts.len() != 2 {
        return Err(corrupt("placement_read reply"));
    }
    let alloc = pairs(parts.pop().ok_or_else(|| corrupt("placement_read reply"))?)?;
    let fields = pairs(parts.pop().ok_or_else(|| corrupt("placement_read reply"))?)?;
    let mut generations = BTreeMap::new();
    let mut consumer_state: BTreeMap<ConsumerId, (u64, Option<String>)> = BTreeMap::new();
    for (f, v) in &fields {
        if let Some(p) = f.strip_prefix("pg:") {
            let p: ProviderId = p.parse().map_err(|_| corrupt(f))?;
            generations.insert(p, v.parse::<u64>().map_err(|_| corrupt(f))?);
        } else if let Some(c) = f.strip_prefix("cg:") {
            let c: ConsumerId = c.parse().map_err(|_| corrupt(f))?;
            let (g, t) = v.split_once('|').ok_or_else(|| corrupt(f))?;
            let t = (!t.is_empty()).then(|| t.to_string());
            consumer_state.insert(c, (g.parse().map_err(|_| corrupt(f))?, t));
        }
    }
    let Some(tree) = decode_tree(root, fields)? else {
        return Ok(None);
    };
    let mut consumers = BTreeMap::new();
    for (c, rec) in alloc {
        let (_, allocation) = parse_alloc(&c, root, &rec)?;
        let (generation, consumer_type) = consumer_state.remove(&allocation.consumer).unwrap_or((1, None));
        consumers.insert(allocation.consumer, ConsumerRecord { allocation, generation, consumer_type });
    }
    generations.retain(|p, _| tree.node(*p).is_some());
    Ok(Some(PlacementTree { tree, generations, consumers }))
}

/// Every field of the tree hash of `t` except `gen`, `cell` and `nseq` (the layout of
/// `schema/redis/README.md`); providers get their position as creation sequence, which keeps
/// parents before children.
pub(crate) fn tree_fields(t: &PlacementTree) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (seq, p) in t.tree.providers.iter().enumerate() {
        let id = p.id;
        let parent = p.parent.map(|x| x.to_string()).unwrap_or_default();
        out.push((format!("p:{id}"), format!("{seq}|{parent}|{}", p.name)));
        out.push((format!("t:{id}"), csv(&p.traits)));
        out.push((format!("ag:{id}"), csv(&p.aggregates)));
        for (c, inv) in &p.inventories {
            out.push((format!("inv:{id}:{c}"), inv_string(inv)));
        }
        for (c, used) in &p.usages {
            if *used > 0 {
                out.push((format!("u:{id}:{c}"), used.to_string()));
            }
        }
        let g = t.generation(id);
        if g > 0 {
            out.push((format!("pg:{id}"), g.to_string()));
        }
    }
    for (g, n) in &t.tree.groups {
        if *n > 0 {
            out.push((format!("g:{g}"), n.to_string()));
        }
    }
    for (c, r) in &t.consumers {
        if r.generation != 1 || r.consumer_type.is_some() {
            out.push((format!("cg:{c}"), format!("{}|{}", r.generation, r.consumer_type.as_deref().unwrap_or(""))));
        }
    }
    out
}

fn registry_entries(v: Value) -> Result<Vec<RegistryEntry>> {
    let mut out = pairs(v)?
        .into_iter()
        .map(|(name, at)| Ok(RegistryEntry { name, created_at: at.parse().map_err(|_| corrupt("registry entry"))? }))
        .collect::<Result<Vec<_>>>()?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

impl RedisStore {
    async fn read_placement(&self, root: ProviderId) -> Result<Option<PlacementTree>> {
        let cmd =
            self.pool.scripts.placement_read.cmd(&[self.keys.tree(root.0), self.keys.alloc(root.0)], &[] as &[&str]);
        decode_placement(root, self.pool.eval(&cmd).await?)
    }

    /// Gives up the name reservation `name` if `provider` holds it.
    async fn release_name(&self, name: &str, provider: ProviderId) -> Result<()> {
        let key = self.keys.pname(name);
        if let Some(v) = self.pool.query::<Option<String>>(redis::cmd("GET").arg(&key)).await?
            && parse_reservation(&v).is_some_and(|(holder, _)| holder == provider.to_string())
        {
            self.cas_del(&key, &v).await?;
        }
        Ok(())
    }

    async fn registry_add(&self, kind: &str, name: &str) -> Result<bool> {
        let key = self.keys.registry(kind);
        let n: i64 = self.pool.query(redis::cmd("HSETNX").arg(key).arg(name).arg(Timestamp::now().as_micros())).await?;
        Ok(n == 1)
    }

    async fn registry_remove(
        &self,
        kind: &str,
        what: Kind,
        name: &str,
        in_use: impl Fn(&ProviderNode) -> bool,
    ) -> Result<()> {
        let key = self.keys.registry(kind);
        let exists: i64 = self.pool.query(redis::cmd("HEXISTS").arg(&key).arg(name)).await?;
        if exists == 0 {
            return Err(Error::not_found(what, name));
        }
        for t in self.list_provider_trees(None).await? {
            if t.providers.iter().any(&in_use) {
                return Err(Error::Conflict(Conflict::InUse { kind: what, name: name.to_string() }));
            }
        }
        self.pool.query::<i64>(redis::cmd("HDEL").arg(&key).arg(name)).await?;
        Ok(())
    }
}

#[async_trait]
impl PlacementStore for RedisStore {
    async fn placement_tree(&self, provider: ProviderId) -> Result<PlacementTree> {
        for fresh in [false, true] {
            let root = self.root_of(provider, fresh).await?;
            if let Some(t) = self.read_placement(root).await?
                && t.tree.node(provider).is_some()
            {
                return Ok(t);
            }
            self.forget_root(provider);
        }
        Err(Error::not_found(Kind::Provider, provider))
    }

    async fn placement_trees(&self) -> Result<Vec<PlacementTree>> {
        let sets = (0..self.keys.tree_shards())
            .map(|s| {
                let mut c = redis::cmd("SMEMBERS");
                c.arg(self.keys.trees(s));
                c
            })
            .collect();
        let mut roots = Vec::new();
        for v in self.pool.bulk(sets).await? {
            for m in members(v)? {
                roots.push(m.parse::<ProviderId>().map_err(|_| corrupt("tree set member"))?);
            }
        }
        roots.sort();
        let cmds = roots
            .iter()
            .map(|r| self.pool.scripts.placement_read.cmd(&[self.keys.tree(r.0), self.keys.alloc(r.0)], &[] as &[&str]))
            .collect();
        let mut out = Vec::with_capacity(roots.len());
        for (root, v) in roots.into_iter().zip(self.pool.bulk(cmds).await?) {
            if let Some(t) = decode_placement(root, v)? {
                out.push(t);
            }
        }
        Ok(out)
    }

    async fn replace_tree(&self, old: &PlacementTree, new: &PlacementTree) -> Result<u64> {
        let root = old.tree.root;
        let ids = |t: &PlacementTree| t.tree.providers.iter().map(|p| p.id).collect::<BTreeSet<_>>();
        if new.tree.root != root || ids(old) != ids(new) {
            return Err(Error::invalid("tree", "a tree replacement keeps the root and the set of providers"));
        }
        // Renames: reserve every new name first; give up the old ones once the write landed.
        let renamed: Vec<(ProviderId, String, String)> = new
            .tree
            .providers
            .iter()
            .filter_map(|p| {
                let before = old.tree.node(p.id)?;
                (before.name != p.name).then(|| (p.id, before.name.clone(), p.name.clone()))
            })
            .collect();
        let mut reserved = Vec::new();
        for (id, _, name) in &renamed {
            match self.reserve_name(name, *id).await {
                Ok(r) => reserved.push((self.keys.pname(name), r)),
                Err(e) => {
                    for (key, r) in &reserved {
                        self.undo(key, r).await;
                    }
                    return Err(e);
                }
            }
        }
        let single = !self.pool.is_cluster();
        let shard = self.keys.tree_shard(root.0);
        let mut keys =
            vec![self.keys.tree(root.0), self.keys.alloc(root.0), self.keys.chg(shard), self.keys.feed(shard)];
        let now = super::now_ms();
        let fields = tree_fields(new);
        let mut args = vec![
            old.tree.generation.to_string(),
            root.to_string(),
            new.tree.providers.len().to_string(),
            now.to_string(),
            fields.len().to_string(),
        ];
        for (f, v) in fields {
            args.push(f);
            args.push(v);
        }
        // Consumers whose record changes, with the index member a new one needs.
        let mut added_members = Vec::new();
        let changed: Vec<&ConsumerRecord> = new
            .consumers
            .iter()
            .filter(|(c, r)| old.consumers.get(c).is_none_or(|o| o.allocation != r.allocation))
            .map(|(_, r)| r)
            .collect();
        args.push(changed.len().to_string());
        for r in &changed {
            let a = &r.allocation;
            let token = format!("{:016x}", rand_u64());
            let key_number = if old.consumers.contains_key(&a.consumer) {
                0
            } else if single {
                keys.push(self.keys.consumer(a.consumer.0));
                keys.len()
            } else {
                added_members.push((self.keys.consumer(a.consumer.0), format!("{root}|{token}|{now}")));
                0
            };
            let meta = serde_json::to_string(&AllocMeta { p: a.project_id.clone(), u: a.user_id.clone() })
                .map_err(|e| Error::backend("redis", e))?;
            args.extend([
                a.consumer.to_string(),
                token,
                a.group.map(|g| g.to_string()).unwrap_or_default(),
                signature(&normalized(&a.allocations)),
                meta,
                key_number.to_string(),
            ]);
        }
        let removed: Vec<ConsumerId> =
            old.consumers.keys().filter(|c| !new.consumers.contains_key(c)).copied().collect();
        args.push(removed.len().to_string());
        for c in &removed {
            let key_number = if single {
                keys.push(self.keys.consumer(c.0));
                keys.len()
            } else {
                0
            };
            args.push(c.to_string());
            args.push(key_number.to_string());
        }
        // Cluster: index members first, as claims do (an allocation is never unfindable).
        // With `wait_replicas`, both wait for replicas as claims do: this writes allocations.
        for (key, member) in &added_members {
            self.pool.write_waited::<Value>(redis::cmd("SADD").arg(key).arg(member), None).await?;
        }
        let cmd = self.pool.scripts.replace_tree.cmd(&keys, &args);
        let barrier = self.keys.wait(self.keys.tree_shard(root.0));
        let outcome = match self.pool.write_waited(&cmd, Some(&barrier)).await {
            Ok(v) => Reply::from(v),
            Err(e) => Err(e),
        };
        let result = match outcome {
            Ok(r) => match r.status().as_str() {
                "ok" => r.u(1),
                "generation" => {
                    Err(Error::Conflict(Conflict::Generation { root, expected: old.tree.generation, actual: r.u(1)? }))
                }
                "no_tree" => Err(Error::not_found(Kind::Provider, root)),
                other => Err(corrupt(format!("replace_tree status {other}"))),
            },
            Err(e) => Err(e),
        };
        match &result {
            Ok(_) => {
                for (id, old_name, _) in &renamed {
                    self.release_name(old_name, *id).await?;
                }
                if !single {
                    for c in &removed {
                        let stale = self
                            .index_members(*c)
                            .await?
                            .into_iter()
                            .filter(|m| m.root == root)
                            .map(|m| m.raw)
                            .collect();
                        self.srem(self.keys.consumer(c.0), stale).await;
                    }
                }
            }
            // A definite refusal: nothing was written, give back what this call reserved.
            Err(Error::Conflict(_)) | Err(Error::NotFound { .. }) => {
                for (key, r) in &reserved {
                    self.undo(key, r).await;
                }
                for (key, member) in added_members {
                    self.srem(key, vec![member]).await;
                }
            }
            // Outcome unknown: keep the reservations (readers ignore members without a record).
            Err(_) => {}
        }
        result
    }

    async fn move_provider(&self, provider: ProviderId, parent: Option<ProviderId>) -> Result<()> {
        let root = self.root_of(provider, true).await?;
        if parent.is_none() && root == provider {
            return Ok(());
        }
        Err(Error::invalid(
            "parent_provider_uuid",
            "the redis backend cannot move a provider to another provider tree (re-parenting \
             inside one tree is supported): delete and re-create the subtree",
        ))
    }

    async fn resource_classes(&self) -> Result<Vec<RegistryEntry>> {
        registry_entries(self.pool.query(redis::cmd("HGETALL").arg(self.keys.registry("classes"))).await?)
    }

    async fn create_resource_class(&self, class: &ResourceClass) -> Result<bool> {
        if !class.as_str().starts_with("CUSTOM_") {
            return Err(Error::invalid("resource_class", format!("{class} is a standard class")));
        }
        self.registry_add("classes", class.as_str()).await
    }

    async fn delete_resource_class(&self, class: &ResourceClass) -> Result<()> {
        self.registry_remove("classes", Kind::ResourceClass, class.as_str(), |p| p.inventories.contains_key(class))
            .await
    }

    async fn custom_traits(&self) -> Result<Vec<RegistryEntry>> {
        registry_entries(self.pool.query(redis::cmd("HGETALL").arg(self.keys.registry("traits"))).await?)
    }

    async fn create_trait(&self, name: &Trait) -> Result<bool> {
        if !name.as_str().starts_with("CUSTOM_") {
            return Err(Error::invalid("trait", format!("{name} is not a custom trait")));
        }
        self.registry_add("traits", name.as_str()).await
    }

    async fn delete_trait(&self, name: &Trait) -> Result<()> {
        self.registry_remove("traits", Kind::Trait, name.as_str(), |p| p.traits.contains(name)).await
    }
}
