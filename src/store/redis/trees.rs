//! Provider trees and claims on Redis.
//!
//! # Claims
//!
//! One script (`claim.lua`) per claim: it checks every amount of the request against the
//! tree's inventories and usages in exactly the order of [`ClaimRequest::evaluate`] and, if
//! everything fits, writes the usages, the consumer's allocation record, the group count,
//! the new tree generation and the change-feed entry. A script runs atomically on the node
//! that owns its keys, so two claims on one tree are serialized by the server itself: no
//! WATCH/MULTI, no optimistic retry loop, one round trip. Every key a tree write touches
//! shares the tree shard's hash tag, so the script is legal in Redis Cluster.
//!
//! # Finding a consumer's allocations
//!
//! Each consumer has an index set `cons:<consumer>` of `root|token|ms` members naming the
//! trees it may hold allocations on; the allocation record on the tree carries the claim's
//! `token`. On a single node the claim script adds the member atomically with the claim (a
//! non-cluster server lets a script touch keys of any slot), so index and allocation can
//! never disagree. In a cluster the index lives in another slot, so the member is written
//! *before* the claim script runs: whatever crashes afterwards, an allocation always has its
//! member, and [`release`](Claims::release) and [`allocations`](Claims::allocations) find it.
//! The opposite leftover (a member whose claim failed, timed out or never ran) is harmless:
//! readers ignore members whose token is not the tree's record, and remove them once older
//! than the grace period (URL option `grace_ms`, default 5 minutes): a younger member may
//! belong to a claim still in flight, which must not lose its index entry. A claim that
//! fails for sure or is a replay removes its own member at once.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use redis::Value;

use super::codec::*;
use super::conn::corrupt;
use super::{RedisStore, age, now_ms};
use crate::error::{Conflict, Error, Kind, Result};
use crate::model::*;
use crate::store::prelude::*;

/// Entries of the provider -> root cache before it is cleared.
const ROOT_CACHE_MAX: usize = 1 << 20;

/// `value owner ms` of a reservation key.
pub(super) fn parse_reservation(v: &str) -> Option<(String, u64)> {
    let (owner, ms) = v.rsplit_once(' ')?;
    Some((owner.to_string(), ms.parse().ok()?))
}

/// A member of a consumer's index: the tree, the claim's token and when it was written.
pub(super) struct IndexMember {
    pub(super) raw: String,
    pub(super) root: ProviderId,
    pub(super) token: String,
    pub(super) ms: u64,
}

fn parse_member(raw: String) -> Option<IndexMember> {
    let mut it = raw.splitn(3, '|');
    let root = it.next()?.parse().ok()?;
    let token = it.next()?.to_string();
    let ms = it.next()?.parse().ok()?;
    Some(IndexMember { raw, root, token, ms })
}

/// The EVALSHA a claim sends, for benchmarks that replay it with `redis-benchmark`.
#[derive(Clone, Debug)]
pub struct ClaimEval {
    /// SHA1 of `claim.lua`.
    pub sha: String,
    /// KEYS.
    pub keys: Vec<String>,
    /// ARGV.
    pub args: Vec<String>,
}

impl RedisStore {
    // ---- provider lookups -----------------------------------------------------------

    pub(super) fn cached_root(&self, p: ProviderId) -> Option<ProviderId> {
        self.roots.read().unwrap_or_else(|e| e.into_inner()).get(&p).copied()
    }

    pub(super) fn cache_root(&self, p: ProviderId, root: ProviderId) {
        let mut m = self.roots.write().unwrap_or_else(|e| e.into_inner());
        if m.len() >= ROOT_CACHE_MAX {
            m.clear();
        }
        m.insert(p, root);
    }

    pub(super) fn forget_root(&self, p: ProviderId) {
        self.roots.write().unwrap_or_else(|e| e.into_inner()).remove(&p);
    }

    /// The roots of `providers` (None for unknown ones), from the cache unless `fresh`.
    pub(super) async fn roots_of(&self, providers: &[ProviderId], fresh: bool) -> Result<Vec<Option<ProviderId>>> {
        let mut out: Vec<Option<ProviderId>> =
            providers.iter().map(|p| if fresh { None } else { self.cached_root(*p) }).collect();
        let missing: Vec<usize> = (0..providers.len()).filter(|i| out[*i].is_none()).collect();
        if missing.is_empty() {
            return Ok(out);
        }
        let cmds = missing
            .iter()
            .map(|i| {
                let mut c = redis::cmd("GET");
                c.arg(self.keys.prov(providers[*i].0));
                c
            })
            .collect();
        let values = self.pool.bulk(cmds).await?;
        for (i, v) in missing.into_iter().zip(values) {
            if let Some(s) = text(&v) {
                let (root, _) = parse_reservation(&s).ok_or_else(|| corrupt("provider mapping"))?;
                let root: ProviderId = root.parse().map_err(|_| corrupt("provider mapping"))?;
                self.cache_root(providers[i], root);
                out[i] = Some(root);
            }
        }
        Ok(out)
    }

    pub(super) async fn root_of(&self, p: ProviderId, fresh: bool) -> Result<ProviderId> {
        self.roots_of(&[p], fresh)
            .await?
            .into_iter()
            .next()
            .flatten()
            .ok_or_else(|| Error::not_found(Kind::Provider, p))
    }

    pub(super) async fn read_tree(&self, root: ProviderId) -> Result<Option<ProviderTree>> {
        let v: Value = self.pool.query(redis::cmd("HGETALL").arg(self.keys.tree(root.0))).await?;
        decode_tree(root, pairs(v)?)
    }

    /// Whether `p` exists (its mapping names a tree that contains it).
    pub(super) async fn provider_live(&self, p: ProviderId) -> Result<bool> {
        let Some(root) = self.roots_of(&[p], true).await?.into_iter().next().flatten() else {
            return Ok(false);
        };
        let n: i64 = self.pool.query(redis::cmd("HEXISTS").arg(self.keys.tree(root.0)).arg(format!("p:{p}"))).await?;
        Ok(n == 1)
    }

    pub(super) fn tree_keys(&self, root: ProviderId) -> (String, String, String) {
        let shard = self.keys.tree_shard(root.0);
        (self.keys.tree(root.0), self.keys.chg(shard), self.keys.feed(shard))
    }

    /// Releases a reservation this call made (`Some`), best effort.
    pub(super) async fn undo(&self, key: &str, reservation: &Option<String>) {
        if let Some(v) = reservation
            && let Err(e) = self.cas_del(key, v).await
        {
            tracing::warn!(error = %e, "could not release a reservation (left for takeover)");
        }
    }

    pub(super) async fn cas_del(&self, key: &str, expected: &str) -> Result<()> {
        let cmd = self.pool.scripts.cas.cmd(&[key], &[expected, "", "del"]);
        self.pool.eval::<i64>(&cmd).await.map(|_| ())
    }

    /// Reserves the unique name for provider `id`. Ok(Some(value)) when newly reserved (undo
    /// with `cas_del` on failure), Ok(None) when `id` already held it.
    pub(super) async fn reserve_name(&self, name: &str, id: ProviderId) -> Result<Option<String>> {
        let key = self.keys.pname(name);
        let value = format!("{id} {}", now_ms());
        for _ in 0..2 {
            let set: Option<String> = self.pool.query(redis::cmd("SET").arg(&key).arg(&value).arg("NX")).await?;
            if set.is_some() {
                return Ok(Some(value));
            }
            let Some(cur): Option<String> = self.pool.query(redis::cmd("GET").arg(&key)).await? else {
                continue;
            };
            let (holder, ms) = parse_reservation(&cur).ok_or_else(|| corrupt("name reservation"))?;
            if holder == id.to_string() {
                return Ok(None);
            }
            let holder_id: ProviderId = holder.parse().map_err(|_| corrupt("name reservation"))?;
            let duplicate = || Error::Conflict(Conflict::DuplicateName { name: name.to_string() });
            if age(ms) < self.cfg.grace || self.provider_live(holder_id).await? {
                return Err(duplicate());
            }
            // A leftover of a create or delete that crashed long ago: take it over.
            let cmd = self.pool.scripts.cas.cmd(&[&key], &[&cur, &value, "set"]);
            if self.pool.eval::<i64>(&cmd).await? == 1 {
                return Ok(Some(value));
            }
            return Err(duplicate());
        }
        Err(Error::Conflict(Conflict::DuplicateName { name: name.to_string() }))
    }

    /// Reserves the id -> root mapping of a new provider. Ok(Some(value)) when newly written.
    async fn reserve_id(&self, id: ProviderId, root: ProviderId) -> Result<Option<String>> {
        let key = self.keys.prov(id.0);
        let value = format!("{root} {}", now_ms());
        let set: Option<String> = self.pool.query(redis::cmd("SET").arg(&key).arg(&value).arg("NX")).await?;
        if set.is_some() {
            return Ok(Some(value));
        }
        let cur: Option<String> = self.pool.query(redis::cmd("GET").arg(&key)).await?;
        let Some(cur) = cur else {
            return Err(Error::Unavailable {
                backend: "redis",
                message: format!("provider {id} is being created or deleted concurrently"),
            });
        };
        let (holder, ms) = parse_reservation(&cur).ok_or_else(|| corrupt("provider mapping"))?;
        if holder == root.to_string() {
            // Same tree: the create script itself refuses a provider the tree already has.
            return Ok(None);
        }
        if age(ms) < self.cfg.grace || self.provider_live(id).await? {
            return Err(Error::already_exists(Kind::Provider, id));
        }
        let cmd = self.pool.scripts.cas.cmd(&[&key], &[&cur, &value, "set"]);
        if self.pool.eval::<i64>(&cmd).await? == 1 {
            self.forget_root(id);
            return Ok(Some(value));
        }
        Err(Error::already_exists(Kind::Provider, id))
    }

    /// The EVALSHA (keys and args) of a claim on `root`, and the index member it adds.
    fn claim_eval(&self, request: &ClaimRequest, root: ProviderId) -> (ClaimEval, String) {
        let shard = self.keys.tree_shard(root.0);
        let token = format!("{:016x}", rand_u64());
        let member = format!("{root}|{token}|{}", now_ms());
        let mut keys =
            vec![self.keys.tree(root.0), self.keys.alloc(root.0), self.keys.chg(shard), self.keys.feed(shard)];
        let single = !self.pool.is_cluster();
        if single {
            keys.push(self.keys.consumer(request.consumer.0));
        }
        let allocations = normalized(&request.allocations);
        let meta = serde_json::to_string(&AllocMeta { p: request.project_id.clone(), u: request.user_id.clone() })
            .unwrap_or_default();
        let mut args = vec![
            request.consumer.to_string(),
            token,
            request.group.map(|g| g.group.to_string()).unwrap_or_default(),
            request.group.and_then(|g| g.max_per_host).map(|m| m.to_string()).unwrap_or_default(),
            signature(&allocations),
            meta,
            root.to_string(),
            if single { member.clone() } else { String::new() },
            self.writer.clone(),
            request.allocations.len().to_string(),
        ];
        args.extend(request.allocations.keys().map(|p| p.to_string()));
        for (p, resources) in &request.allocations {
            for (c, a) in resources {
                args.push(p.to_string());
                args.push(c.to_string());
                args.push(a.to_string());
            }
        }
        (ClaimEval { sha: self.pool.scripts.claim.sha().to_string(), keys, args }, member)
    }

    /// The exact EVALSHA this store sends to claim `request` on the tree of its first
    /// provider (for benchmarks that measure the server's own ceiling with the same script).
    pub async fn claim_command(&self, request: &ClaimRequest) -> Result<ClaimEval> {
        let first = *request
            .allocations
            .keys()
            .next()
            .ok_or_else(|| Error::invalid("allocations", "a claim needs at least one amount"))?;
        let root = self.root_of(first, false).await?;
        Ok(self.claim_eval(request, root).0)
    }

    pub(super) async fn srem(&self, key: String, members: Vec<String>) {
        if members.is_empty() {
            return;
        }
        if let Err(e) = self.pool.query::<Value>(redis::cmd("SREM").arg(key).arg(members)).await {
            tracing::debug!(error = %e, "could not remove consumer index members (left for later cleanup)");
        }
    }

    /// The members of a consumer's index.
    pub(super) async fn index_members(&self, consumer: ConsumerId) -> Result<Vec<IndexMember>> {
        let v: Value = self.pool.query(redis::cmd("SMEMBERS").arg(self.keys.consumer(consumer.0))).await?;
        Ok(members(v)?.into_iter().filter_map(parse_member).collect())
    }

    async fn set_field(&self, provider: ProviderId, generation: u64, prefix: &str, value: String) -> Result<u64> {
        for fresh in [false, true] {
            let root = self.root_of(provider, fresh).await?;
            let (tree, chg, feed) = self.tree_keys(root);
            let cmd = self.pool.scripts.set_field.cmd(
                &[tree, chg, feed],
                &[provider.to_string(), generation.to_string(), root.to_string(), prefix.to_string(), value.clone()],
            );
            let r = Reply::from(self.pool.eval(&cmd).await?)?;
            match r.status().as_str() {
                "ok" => return r.u(1),
                "generation" => {
                    return Err(Error::Conflict(Conflict::Generation { root, expected: generation, actual: r.u(1)? }));
                }
                "no_tree" | "not_found" if !fresh => self.forget_root(provider),
                "no_tree" | "not_found" => return Err(Error::not_found(Kind::Provider, provider)),
                other => return Err(corrupt(format!("set_field status {other}"))),
            }
        }
        Err(Error::not_found(Kind::Provider, provider))
    }
}

pub(super) fn rand_u64() -> u64 {
    let u = uuid::Uuid::new_v4().as_u128();
    (u >> 64) as u64 ^ u as u64
}

#[async_trait]
impl Providers for RedisStore {
    async fn create_provider(&self, p: &NewProvider) -> Result<u64> {
        p.validate()?;
        // Same order of failures as the reference: id taken, name taken, unknown parent.
        if self.provider_live(p.id).await? {
            return Err(Error::already_exists(Kind::Provider, p.id));
        }
        let name_res = self.reserve_name(&p.name, p.id).await?;
        let name_key = self.keys.pname(&p.name);
        let root = match p.parent {
            None => p.id,
            Some(parent) => match self.root_of(parent, true).await {
                Ok(r) => r,
                Err(e) => {
                    self.undo(&name_key, &name_res).await;
                    return Err(e);
                }
            },
        };
        let id_res = match self.reserve_id(p.id, root).await {
            Ok(v) => v,
            Err(e) => {
                self.undo(&name_key, &name_res).await;
                return Err(e);
            }
        };
        let id_key = self.keys.prov(p.id.0);
        let shard = self.keys.tree_shard(root.0);
        let mut invs = Vec::new();
        for (c, inv) in &p.inventories {
            invs.push(c.to_string());
            invs.push(inv_string(inv));
        }
        let cmd = match p.parent {
            None => {
                let cell_key = self.keys.cell(shard, p.cell.map(|c| c.0).unwrap_or_default());
                let mut args = vec![
                    p.id.to_string(),
                    p.cell.map(|c| c.to_string()).unwrap_or_default(),
                    p.name.clone(),
                    csv(&p.traits),
                    csv(&p.aggregates),
                ];
                args.extend(invs);
                self.pool.scripts.create_root.cmd(
                    &[
                        self.keys.tree(root.0),
                        self.keys.trees(shard),
                        self.keys.chg(shard),
                        self.keys.feed(shard),
                        cell_key,
                    ],
                    &args,
                )
            }
            Some(parent) => {
                let mut args = vec![
                    p.id.to_string(),
                    parent.to_string(),
                    root.to_string(),
                    p.name.clone(),
                    csv(&p.traits),
                    csv(&p.aggregates),
                ];
                args.extend(invs);
                let (tree, chg, feed) = self.tree_keys(root);
                self.pool.scripts.create_child.cmd(&[tree, chg, feed], &args)
            }
        };
        let reply = match self.pool.eval(&cmd).await {
            Ok(v) => Reply::from(v)?,
            // Outcome unknown: keep the reservations (a later read tells), report retryable.
            Err(e) => return Err(e),
        };
        match reply.status().as_str() {
            "ok" => {
                self.cache_root(p.id, root);
                reply.u(1)
            }
            "exists" => {
                self.undo(&name_key, &name_res).await;
                Err(Error::already_exists(Kind::Provider, p.id))
            }
            "no_tree" | "no_parent" => {
                self.undo(&name_key, &name_res).await;
                self.undo(&id_key, &id_res).await;
                Err(Error::not_found(Kind::Provider, p.parent.unwrap_or(p.id)))
            }
            other => Err(corrupt(format!("create status {other}"))),
        }
    }

    async fn delete_provider(&self, provider: ProviderId) -> Result<()> {
        let root = self.root_of(provider, true).await?;
        let shard = self.keys.tree_shard(root.0);
        let cmd = self.pool.scripts.delete_provider.cmd(
            &[
                self.keys.tree(root.0),
                self.keys.alloc(root.0),
                self.keys.trees(shard),
                self.keys.chg(shard),
                self.keys.feed(shard),
                self.keys.dead(shard),
            ],
            &[provider.to_string(), root.to_string(), self.keys.cell_prefix(shard), self.cfg.tombstones.to_string()],
        );
        let r = Reply::from(self.pool.eval(&cmd).await?)?;
        match r.status().as_str() {
            "ok" => {
                let name = r.s(2)?;
                self.forget_root(provider);
                let prov_key = self.keys.prov(provider.0);
                if let Some(v) = self.pool.query::<Option<String>>(redis::cmd("GET").arg(&prov_key)).await?
                    && v.starts_with(&format!("{root} "))
                {
                    self.cas_del(&prov_key, &v).await?;
                }
                let name_key = self.keys.pname(&name);
                if let Some(v) = self.pool.query::<Option<String>>(redis::cmd("GET").arg(&name_key)).await?
                    && v.starts_with(&format!("{provider} "))
                {
                    self.cas_del(&name_key, &v).await?;
                }
                Ok(())
            }
            "no_tree" | "not_found" => {
                self.forget_root(provider);
                Err(Error::not_found(Kind::Provider, provider))
            }
            "in_use" => Err(Error::Conflict(Conflict::ProviderInUse { provider })),
            other => Err(corrupt(format!("delete status {other}"))),
        }
    }

    async fn provider_tree(&self, provider: ProviderId) -> Result<ProviderTree> {
        for fresh in [false, true] {
            let root = self.root_of(provider, fresh).await?;
            if let Some(tree) = self.read_tree(root).await?
                && tree.node(provider).is_some()
            {
                return Ok(tree);
            }
            self.forget_root(provider);
        }
        Err(Error::not_found(Kind::Provider, provider))
    }

    async fn list_provider_trees(&self, cell: Option<CellId>) -> Result<Vec<ProviderTree>> {
        let sets = (0..self.keys.tree_shards())
            .map(|s| {
                let mut c = redis::cmd("SMEMBERS");
                c.arg(match cell {
                    Some(cell) => self.keys.cell(s, cell.0),
                    None => self.keys.trees(s),
                });
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
            .map(|r| {
                let mut c = redis::cmd("HGETALL");
                c.arg(self.keys.tree(r.0));
                c
            })
            .collect();
        let mut out = Vec::with_capacity(roots.len());
        for (root, v) in roots.into_iter().zip(self.pool.bulk(cmds).await?) {
            if let Some(t) = decode_tree(root, pairs(v)?)? {
                out.push(t);
            }
        }
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
        for fresh in [false, true] {
            let root = self.root_of(provider, fresh).await?;
            let (tree, chg, feed) = self.tree_keys(root);
            let mut args = vec![provider.to_string(), generation.to_string(), root.to_string()];
            for (c, inv) in inventories {
                args.push(c.to_string());
                args.push(inv_string(inv));
            }
            let cmd = self.pool.scripts.set_inventories.cmd(&[tree, chg, feed], &args);
            let r = Reply::from(self.pool.eval(&cmd).await?)?;
            match r.status().as_str() {
                "ok" => {
                    let mut used = BTreeMap::new();
                    let mut i = 2;
                    while i + 1 < r.0.len() {
                        let c = ResourceClass::parse(&r.s(i)?).map_err(|_| corrupt("class"))?;
                        used.insert(c, r.i(i + 1)?);
                        i += 2;
                    }
                    return Ok(InventoryWrite {
                        generation: r.u(1)?,
                        over_capacity: inventories
                            .iter()
                            .filter(|(c, inv)| used.get(*c).copied().unwrap_or(0) > inv.capacity())
                            .map(|(c, _)| c.clone())
                            .collect(),
                    });
                }
                "generation" => {
                    return Err(Error::Conflict(Conflict::Generation { root, expected: generation, actual: r.u(1)? }));
                }
                "in_use" => {
                    let mut classes = Vec::new();
                    for i in 1..r.0.len() {
                        classes.push(ResourceClass::parse(&r.s(i)?).map_err(|_| corrupt("class"))?);
                    }
                    let class = classes.into_iter().min().ok_or_else(|| corrupt("in_use without class"))?;
                    return Err(Error::Conflict(Conflict::InventoryInUse { provider, class }));
                }
                "no_tree" | "not_found" if !fresh => self.forget_root(provider),
                "no_tree" | "not_found" => return Err(Error::not_found(Kind::Provider, provider)),
                other => return Err(corrupt(format!("set_inventories status {other}"))),
            }
        }
        Err(Error::not_found(Kind::Provider, provider))
    }

    async fn set_traits(&self, provider: ProviderId, generation: u64, traits: &BTreeSet<Trait>) -> Result<u64> {
        self.set_field(provider, generation, "t:", csv(traits)).await
    }

    async fn set_aggregates(
        &self,
        provider: ProviderId,
        generation: u64,
        aggregates: &BTreeSet<AggregateId>,
    ) -> Result<u64> {
        self.set_field(provider, generation, "ag:", csv(aggregates)).await
    }
}

/// A claim's script reply, read: the claim, its refusal, or `Stale` when the cached root of
/// one of its providers was wrong (the caller looks the roots up again and retries once).
pub(crate) enum ClaimReply {
    /// The claim, or why it was refused.
    Done(Result<Claim>),
    /// A cached root was wrong: look the roots up again and retry.
    Stale,
}

/// Where a claim goes: its providers, their roots as looked up, and the tree of the first.
pub(crate) struct ClaimTarget {
    /// The providers of the claim, in key order.
    pub(crate) providers: Vec<ProviderId>,
    /// Their roots as looked up (`None`: unknown provider).
    pub(crate) roots: Vec<Option<ProviderId>>,
    /// The tree of the first provider, where the claim goes.
    pub(crate) root: ProviderId,
}

impl RedisStore {
    /// Validates `request` and finds its tree (through the root cache unless `fresh`).
    async fn claim_root(&self, request: &ClaimRequest, fresh: bool) -> Result<ClaimTarget> {
        request.validate()?;
        let providers: Vec<ProviderId> = request.allocations.keys().copied().collect();
        let first =
            *providers.first().ok_or_else(|| Error::invalid("allocations", "a claim needs at least one amount"))?;
        let roots = self.roots_of(&providers, fresh).await?;
        for (p, r) in providers.iter().zip(&roots) {
            if r.is_none() {
                return Err(Error::not_found(Kind::Provider, p));
            }
        }
        let root = roots[0].ok_or_else(|| Error::not_found(Kind::Provider, first))?;
        Ok(ClaimTarget { providers, roots, root })
    }

    /// Reads the claim script's reply for `request` on `target`; on `Stale`, forgets the
    /// cached roots of its providers so that the retry looks them up again.
    fn claim_reply(&self, request: &ClaimRequest, target: &ClaimTarget, fresh: bool, r: &Reply) -> Result<ClaimReply> {
        let reply = read_claim_reply(request, target, fresh, r)?;
        if matches!(reply, ClaimReply::Stale) {
            for p in &target.providers {
                self.forget_root(*p);
            }
        }
        Ok(reply)
    }
}

/// Reads the claim script's reply `r` for `request` on `target` (`fresh`: the roots were
/// just read, so a wrong root is an answer, not a stale cache). Pure, without I/O or the
/// root cache, so that the fuzzing checks (`testkit::fuzzing`) can feed it any reply: a
/// reply the script cannot have sent is a backend error, never a panic.
pub(crate) fn read_claim_reply(
    request: &ClaimRequest,
    target: &ClaimTarget,
    fresh: bool,
    r: &Reply,
) -> Result<ClaimReply> {
    let ClaimTarget { providers, roots, root } = target;
    let root = *root;
    let status = r.status();
    let done = |res| Ok(ClaimReply::Done(res));
    match status.as_str() {
        "ok" => done(Ok(Claim { root, generation: r.u(1)?, replayed: r.i(2)? == 1 })),
        "no_tree" | "not_in_tree" if !fresh => Ok(ClaimReply::Stale),
        "no_tree" => done(Err(Error::not_found(Kind::Provider, providers.first().copied().unwrap_or(root)))),
        "not_in_tree" => {
            let p: ProviderId = r.s(1)?.parse().map_err(|_| corrupt("provider"))?;
            let i = providers.iter().position(|x| *x == p).unwrap_or(0);
            if roots.get(i).copied().flatten() == Some(root) {
                return done(Err(Error::not_found(Kind::Provider, p)));
            }
            done(Err(Error::invalid(
                "allocations",
                format!("provider {p} is not in tree {root}: a claim covers one provider tree"),
            )))
        }
        "mismatch" => done(Err(Error::Conflict(Conflict::ConsumerMismatch { consumer: request.consumer, root }))),
        "no_inventory" => done(Err(Error::not_found(Kind::Inventory, format!("{} on provider {}", r.s(2)?, r.s(1)?)))),
        "units" => {
            let inv = Inventory { min_unit: r.i(4)?, max_unit: r.i(5)?, step_size: r.i(6)?, ..Inventory::default() };
            inv.check_units(&format!("{} on provider {}", r.s(2)?, r.s(1)?), r.i(3)?)?;
            Err(corrupt("units failure the inventory accepts"))
        }
        "capacity" => done(Err(Error::Capacity {
            provider: r.s(1)?.parse().map_err(|_| corrupt("provider"))?,
            class: ResourceClass::parse(&r.s(2)?).map_err(|_| corrupt("class"))?,
            requested: r.i(3)?,
            used: r.i(4)?,
            capacity: r.i(5)?,
        })),
        "group_limit" => done(Err(Error::Conflict(Conflict::GroupLimit {
            group: r.s(1)?.parse().map_err(|_| corrupt("group"))?,
            root,
            max_per_host: u32::try_from(r.i(2)?).unwrap_or(u32::MAX),
        }))),
        other => Err(corrupt(format!("claim status {other}"))),
    }
}

#[async_trait]
impl Claims for RedisStore {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim> {
        for fresh in [false, true] {
            let target = self.claim_root(request, fresh).await?;
            let root = target.root;
            let (eval, member) = self.claim_eval(request, root);
            let index_key = self.keys.consumer(request.consumer.0);
            let cluster = self.pool.is_cluster();
            if cluster {
                // Index first: a crash after this leaves a harmless member, never an
                // allocation nobody can find.
                // With `wait_replicas`, the member is replicated before the claim is made:
                // a claim whose index entry a failover lost could be neither found nor
                // released.
                self.pool.write_waited::<Value>(redis::cmd("SADD").arg(&index_key).arg(&member), None).await?;
            }
            let cmd = self.pool.scripts.claim.cmd(&eval.keys, &eval.args);
            let barrier = self.keys.wait(self.keys.tree_shard(root.0));
            let r = Reply::from(self.pool.write_waited(&cmd, Some(&barrier)).await?)?;
            let keep_member = r.status() == "ok" && r.i(2)? == 0;
            if cluster && !keep_member {
                self.srem(index_key, vec![member]).await;
            }
            match self.claim_reply(request, &target, fresh, &r)? {
                ClaimReply::Done(result) => return result,
                ClaimReply::Stale => {}
            }
        }
        match request.allocations.keys().next() {
            Some(first) => Err(Error::not_found(Kind::Provider, first)),
            None => Err(Error::invalid("allocations", "a claim needs at least one amount")),
        }
    }

    /// On a single node, one pipeline of claim scripts (each still atomic on its own tree;
    /// a claim whose cached root was stale is sent again alone). On a cluster every claim
    /// first writes its consumer-index member on another node, and with `wait_replicas`
    /// every claim waits for its replicas, so there the claims go concurrently, each as
    /// [`claim`](Claims::claim).
    async fn claim_batch(&self, requests: &[ClaimRequest]) -> Result<Vec<Result<Claim>>> {
        if self.pool.is_cluster() || self.pool.waits_for_replicas() || requests.len() < 2 {
            return Ok(futures::future::join_all(requests.iter().map(|r| self.claim(r))).await);
        }
        let mut out: Vec<Option<Result<Claim>>> = (0..requests.len()).map(|_| None).collect();
        let mut sent: Vec<(usize, ClaimTarget)> = Vec::new();
        let mut cmds = Vec::new();
        for (i, request) in requests.iter().enumerate() {
            match self.claim_root(request, false).await {
                Ok(target) => {
                    let (eval, _member) = self.claim_eval(request, target.root);
                    cmds.push(self.pool.scripts.claim.cmd(&eval.keys, &eval.args));
                    sent.push((i, target));
                }
                Err(e) if e.is_retryable() => return Err(e),
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        let replies = self.pool.bulk(cmds).await?;
        for ((i, target), v) in sent.into_iter().zip(replies) {
            let r = Reply::from(v)?;
            out[i] = Some(match self.claim_reply(&requests[i], &target, false, &r)? {
                ClaimReply::Done(result) => result,
                ClaimReply::Stale => self.claim(&requests[i]).await,
            });
        }
        Ok(out.into_iter().map(|r| r.unwrap_or_else(|| Err(corrupt("a batched claim without a result")))).collect())
    }

    async fn release(&self, consumer: ConsumerId) -> Result<Released> {
        let index_key = self.keys.consumer(consumer.0);
        let members = self.index_members(consumer).await?;
        let roots: BTreeSet<ProviderId> = members.iter().map(|m| m.root).collect();
        let roots: Vec<ProviderId> = roots.into_iter().collect();
        let single = !self.pool.is_cluster();
        let cmds: Vec<(redis::Cmd, String)> = roots
            .iter()
            .map(|root| {
                let shard = self.keys.tree_shard(root.0);
                let mut keys =
                    vec![self.keys.tree(root.0), self.keys.alloc(root.0), self.keys.chg(shard), self.keys.feed(shard)];
                if single {
                    keys.push(index_key.clone());
                }
                (
                    self.pool
                        .scripts
                        .release
                        .cmd(&keys, &[consumer.to_string(), root.to_string(), self.writer.clone()]),
                    self.keys.wait(shard),
                )
            })
            .collect();
        let replies = if self.pool.waits() {
            // One waited pipeline per tree (each on its own master), concurrently.
            futures::future::join_all(
                cmds.iter().map(|(cmd, barrier)| self.pool.write_waited::<Value>(cmd, Some(barrier))),
            )
            .await
            .into_iter()
            .collect::<Result<Vec<Value>>>()?
        } else {
            self.pool.bulk(cmds.into_iter().map(|(cmd, _)| cmd).collect()).await?
        };
        let mut released = Vec::new();
        let mut remove = Vec::new();
        for (root, v) in roots.iter().zip(replies) {
            let r = Reply::from(v)?;
            let token = match r.status().as_str() {
                "ok" => {
                    released.push(*root);
                    Some(r.s(1)?)
                }
                "none" => None,
                other => return Err(corrupt(format!("release status {other}"))),
            };
            for m in members.iter().filter(|m| m.root == *root) {
                if Some(&m.token) == token.as_ref() || age(m.ms) > self.cfg.grace {
                    remove.push(m.raw.clone());
                }
            }
        }
        self.srem(index_key, remove).await;
        Ok(Released { roots: released })
    }

    async fn allocations(&self, consumer: ConsumerId) -> Result<Vec<TreeAllocation>> {
        let members = self.index_members(consumer).await?;
        let roots: BTreeSet<ProviderId> = members.iter().map(|m| m.root).collect();
        let roots: Vec<ProviderId> = roots.into_iter().collect();
        let cmds = roots
            .iter()
            .map(|r| {
                let mut c = redis::cmd("HGET");
                c.arg(self.keys.alloc(r.0)).arg(consumer.to_string());
                c
            })
            .collect();
        let mut out = Vec::new();
        let mut stale = Vec::new();
        let consumer_s = consumer.to_string();
        for (root, v) in roots.iter().zip(self.pool.bulk(cmds).await?) {
            let token = match text(&v) {
                Some(rec) => {
                    let (token, a) = parse_alloc(&consumer_s, *root, &rec)?;
                    out.push(a);
                    Some(token)
                }
                None => None,
            };
            stale.extend(
                members
                    .iter()
                    .filter(|m| m.root == *root && Some(&m.token) != token.as_ref())
                    .filter(|m| age(m.ms) > self.cfg.grace)
                    .map(|m| m.raw.clone()),
            );
        }
        self.srem(self.keys.consumer(consumer.0), stale).await;
        Ok(out)
    }

    async fn tree_allocations(&self, provider: ProviderId) -> Result<Vec<TreeAllocation>> {
        for fresh in [false, true] {
            let root = self.root_of(provider, fresh).await?;
            let mut exists = redis::cmd("HEXISTS");
            exists.arg(self.keys.tree(root.0)).arg(format!("p:{provider}"));
            let mut all = redis::cmd("HGETALL");
            all.arg(self.keys.alloc(root.0));
            let mut v = self.pool.bulk(vec![exists, all]).await?.into_iter();
            let (Some(exists), Some(all)) = (v.next(), v.next()) else {
                return Err(corrupt("tree allocations reply"));
            };
            if int(&exists) != Some(1) {
                self.forget_root(provider);
                continue;
            }
            let mut out = pairs(all)?
                .into_iter()
                .map(|(c, rec)| parse_alloc(&c, root, &rec).map(|(_, a)| a))
                .collect::<Result<Vec<_>>>()?;
            out.sort_by_key(|a| a.consumer);
            return Ok(out);
        }
        Err(Error::not_found(Kind::Provider, provider))
    }
}
