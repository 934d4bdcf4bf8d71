//! Instances on Redis.
//!
//! A JSON record per instance and, per instance shard, a global and a per-project sorted set
//! of members that sort (ZRANGEBYLEX) in listing order (`hex(u64::MAX - created_at) ++ hex(!uuid)`). A page
//! resolves the marker with one read of its record, then merges the shards (k-way) reading
//! each lazily: first a share of the page with some slack from every shard in one concurrent
//! round, further chunks only from shards that run dry; the page's records are fetched in one
//! pipelined round. Filters other than the project are applied to the records read; when
//! they reject records the page keeps reading further batches (doubling, up to 2,000 members
//! a batch) until it is full or the index
//! ends, so a selective filter costs in proportion to the instances it skips.

use async_trait::async_trait;

use super::codec::*;
use super::conn::{Pool, corrupt};
use super::{RedisStore, from_json, json};
use crate::error::{Error, Kind, Result};
use crate::model::*;
use crate::store::prelude::*;

/// Attempts of an instance read-modify-write before giving up under contention.
const CAS_ATTEMPTS: usize = 64;

/// Largest batch of index members read at once by a filtered listing.
const MAX_SCAN_BATCH: usize = 2000;

impl RedisStore {
    async fn read_instance(&self, id: InstanceId) -> Result<Option<(String, Instance)>> {
        let v: Option<String> = self.pool.query(redis::cmd("GET").arg(self.keys.instance(id.0))).await?;
        match v {
            None => Ok(None),
            Some(s) => {
                let i = from_json(&s)?;
                Ok(Some((s, i)))
            }
        }
    }
}

/// One shard of a listing index being read in listing order, a chunk at a time.
struct ShardReader {
    key: String,
    buf: std::collections::VecDeque<String>,
    /// The last member read from the server (exclusive start of the next chunk).
    after: Option<String>,
    /// Members to ask for next time (doubles as the shard keeps being drained).
    chunk: usize,
    done: bool,
}

/// A k-way merge over the shards of a listing index: pops members in global listing order,
/// reading each shard lazily in chunks (all shards that ran dry in one concurrent round).
///
/// A shard whose read fails is recorded in `failed` and read no further (contract line
/// 17): a partial listing goes on with the others, any other listing stops at once and
/// fails naming it.
struct MergedIndex {
    shards: Vec<ShardReader>,
    partial: bool,
    failed: Vec<(usize, Error)>,
}

impl MergedIndex {
    fn new(keys: Vec<String>, after: Option<String>, first_chunk: usize, partial: bool) -> Self {
        MergedIndex {
            shards: keys
                .into_iter()
                .map(|key| ShardReader {
                    key,
                    buf: Default::default(),
                    after: after.clone(),
                    chunk: first_chunk,
                    done: false,
                })
                .collect(),
            partial,
            failed: Vec::new(),
        }
    }

    /// Gives up on shard `i` (its reads failed with `e`).
    fn fail(&mut self, i: usize, e: Error) {
        let sh = &mut self.shards[i];
        sh.done = true;
        sh.buf.clear();
        if !self.failed.iter().any(|(s, _)| *s == i) {
            self.failed.push((i, e));
        }
    }

    /// Whether the listing must stop: a shard failed and partial results were not asked for.
    fn stop(&self) -> bool {
        !self.partial && !self.failed.is_empty()
    }

    async fn refill(&mut self, pool: &Pool) -> Result<()> {
        let dry: Vec<usize> =
            (0..self.shards.len()).filter(|i| self.shards[*i].buf.is_empty() && !self.shards[*i].done).collect();
        if dry.is_empty() {
            return Ok(());
        }
        let cmds = dry
            .iter()
            .map(|i| {
                let sh = &self.shards[*i];
                let start = match &sh.after {
                    Some(m) => format!("({m}"),
                    None => "-".to_string(),
                };
                let mut c = redis::cmd("ZRANGEBYLEX");
                c.arg(&sh.key).arg(start).arg("+").arg("LIMIT").arg(0).arg(sh.chunk);
                c
            })
            .collect();
        for (i, v) in dry.into_iter().zip(pool.bulk_each(cmds).await) {
            let got = match v {
                Ok(v) => members(v)?,
                Err(e) if e.is_retryable() => {
                    self.fail(i, e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let sh = &mut self.shards[i];
            sh.done = got.len() < sh.chunk;
            sh.chunk = (sh.chunk * 2).min(MAX_SCAN_BATCH);
            if let Some(last) = got.last() {
                sh.after = Some(last.clone());
            }
            sh.buf.extend(got);
        }
        Ok(())
    }

    /// Up to `n` next members in listing order with their shards (fewer only at the end of
    /// the index, or when a shard failed: see [`stop`](Self::stop)).
    async fn next(&mut self, pool: &Pool, n: usize) -> Result<Vec<(usize, String)>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            self.refill(pool).await?;
            if self.stop() {
                break;
            }
            let best =
                (0..self.shards.len()).filter_map(|i| self.shards[i].buf.front().map(|m| (m, i))).min().map(|(_, i)| i);
            let Some(i) = best else { break };
            if let Some(m) = self.shards[i].buf.pop_front() {
                out.push((i, m));
            }
        }
        Ok(out)
    }
}

impl RedisStore {
    /// Names instance shard `shard` for an operator: its hash tag's slot and, on a cluster,
    /// the master serving that slot when a live node can say.
    async fn shard_name(&self, shard: usize) -> String {
        let key = self.keys.inst_index(shard);
        let slot = super::keys::slot(key.as_bytes());
        match self.pool.master_of_slot(slot).await {
            Some(addr) => format!("redis instance shard {shard} (slot {slot}, master {addr})"),
            None => format!("redis instance shard {shard} (slot {slot})"),
        }
    }

    /// `e`, a failed read of instance shard `shard`, with the shard named (contract line 17).
    async fn shard_error(&self, shard: usize, e: Error) -> Error {
        let name = self.shard_name(shard).await;
        match e {
            Error::Unavailable { backend, message } => {
                Error::Unavailable { backend, message: format!("{name}: {message}") }
            }
            Error::Timeout { backend, message } => Error::Timeout { backend, message: format!("{name}: {message}") },
            other => other,
        }
    }
}

#[async_trait]
impl Instances for RedisStore {
    async fn create_instance(&self, instance: &Instance) -> Result<()> {
        instance.validate()?;
        let shard = self.keys.instance_shard(instance.uuid.0);
        let cmd = self.pool.scripts.instance_create.cmd(
            &[
                self.keys.instance(instance.uuid.0),
                self.keys.inst_index(shard),
                self.keys.inst_project(shard, &instance.project_id),
            ],
            &[json(instance)?, index_member(instance.created_at, instance.uuid)],
        );
        if self.pool.eval::<i64>(&cmd).await? == 0 {
            return Err(Error::already_exists(Kind::Instance, instance.uuid));
        }
        Ok(())
    }

    async fn get_instance(&self, id: InstanceId) -> Result<Instance> {
        let read = match self.read_instance(id).await {
            Ok(r) => r,
            Err(e) => return Err(self.shard_error(self.keys.instance_shard(id.0), e).await),
        };
        read.map(|(_, i)| i).ok_or_else(|| Error::not_found(Kind::Instance, id))
    }

    async fn update_instance(&self, id: InstanceId, patch: &InstancePatch) -> Result<Instance> {
        let key = self.keys.instance(id.0);
        for _ in 0..CAS_ATTEMPTS {
            let (old, mut inst) = self.read_instance(id).await?.ok_or_else(|| Error::not_found(Kind::Instance, id))?;
            inst.apply(patch, Timestamp::now());
            let new = json(&inst)?;
            let cmd = self.pool.scripts.cas.cmd(&[&key], &[old.as_str(), new.as_str(), "set"]);
            match self.pool.eval::<i64>(&cmd).await? {
                1 => return Ok(inst),
                -1 => return Err(Error::not_found(Kind::Instance, id)),
                _ => continue,
            }
        }
        Err(Error::Timeout {
            backend: "redis",
            message: format!("instance {id} kept changing during {CAS_ATTEMPTS} update attempts"),
        })
    }

    /// Two pipelined rounds for the whole batch: the records (GET), then one
    /// compare-and-set script per record. An update whose record changed between the two
    /// (another writer) is done again alone, as [`update_instance`](Instances::update_instance)
    /// does it. A batch naming an instance twice is applied one update after the other, so
    /// that the second sees the first.
    async fn update_instances(&self, updates: &[(InstanceId, InstancePatch)]) -> Result<Vec<Result<Instance>>> {
        if updates.len() < 2 || crate::store::repeats_an_instance(updates) {
            return Ok(crate::store::update_in_order(self, updates).await);
        }
        let reads = updates
            .iter()
            .map(|(id, _)| {
                let mut c = redis::cmd("GET");
                c.arg(self.keys.instance(id.0));
                c
            })
            .collect();
        let reads = self.pool.bulk(reads).await?;
        let mut out: Vec<Option<Result<Instance>>> = (0..updates.len()).map(|_| None).collect();
        let mut sent: Vec<(usize, Instance)> = Vec::new();
        let mut cmds = Vec::new();
        let now = Timestamp::now();
        for (i, ((id, patch), v)) in updates.iter().zip(reads).enumerate() {
            let Some(old) = text(&v) else {
                out[i] = Some(Err(Error::not_found(Kind::Instance, id)));
                continue;
            };
            let mut inst: Instance = match from_json(&old) {
                Ok(inst) => inst,
                Err(e) => {
                    out[i] = Some(Err(e));
                    continue;
                }
            };
            inst.apply(patch, now);
            let new = match json(&inst) {
                Ok(new) => new,
                Err(e) => {
                    out[i] = Some(Err(e));
                    continue;
                }
            };
            cmds.push(self.pool.scripts.cas.cmd(&[self.keys.instance(id.0)], &[old.as_str(), new.as_str(), "set"]));
            sent.push((i, inst));
        }
        let replies = if cmds.is_empty() { Vec::new() } else { self.pool.bulk(cmds).await? };
        if replies.len() != sent.len() {
            return Err(corrupt(format!("{} answers to {} instance writes", replies.len(), sent.len())));
        }
        for ((i, inst), v) in sent.into_iter().zip(replies) {
            let (id, patch) = &updates[i];
            out[i] = Some(match int(&v) {
                Some(1) => Ok(inst),
                Some(-1) => Err(Error::not_found(Kind::Instance, id)),
                Some(_) => self.update_instance(*id, patch).await,
                None => Err(corrupt(format!("instance write reply {v:?}"))),
            });
        }
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(corrupt("a batched instance write without a result"))))
            .collect())
    }

    async fn delete_instance(&self, id: InstanceId) -> Result<()> {
        for _ in 0..CAS_ATTEMPTS {
            let (old, inst) = self.read_instance(id).await?.ok_or_else(|| Error::not_found(Kind::Instance, id))?;
            let shard = self.keys.instance_shard(id.0);
            let cmd = self.pool.scripts.instance_delete.cmd(
                &[
                    self.keys.instance(id.0),
                    self.keys.inst_index(shard),
                    self.keys.inst_project(shard, &inst.project_id),
                ],
                &[old, index_member(inst.created_at, inst.uuid)],
            );
            match self.pool.eval::<i64>(&cmd).await? {
                1 => return Ok(()),
                -1 => return Err(Error::not_found(Kind::Instance, id)),
                _ => continue,
            }
        }
        Err(Error::Timeout {
            backend: "redis",
            message: format!("instance {id} kept changing during {CAS_ATTEMPTS} delete attempts"),
        })
    }

    async fn repair_instance(&self, _id: InstanceId) -> Result<()> {
        // Nothing to repair: an instance and its index entries are written by one script, so no write leaves a part behind.
        Ok(())
    }

    async fn list_instances(&self, query: &ListQuery) -> Result<InstancePage> {
        let mut pos = match query.marker {
            Some(m) => {
                // A marker that cannot be read fails, partial or not (contract line 17).
                let read = match self.read_instance(m).await {
                    Ok(r) => r,
                    Err(e) => return Err(self.shard_error(self.keys.instance_shard(m.0), e).await),
                };
                let (_, i) = read.ok_or_else(|| Error::not_found(Kind::Marker, m))?;
                Some(index_member(i.created_at, i.uuid))
            }
            None => None,
        };
        let limit = query.effective_limit();
        if limit == 0 {
            return Ok(InstancePage::default());
        }
        let want = limit + 1;
        let shards = self.keys.instance_shards();
        let index: Vec<String> = (0..shards)
            .map(|s| match &query.filters.project_id {
                Some(p) => self.keys.inst_project(s, p),
                None => self.keys.inst_index(s),
            })
            .collect();
        let mut only_project = query.filters.clone();
        only_project.project_id = None;
        let exact = only_project == InstanceFilters::default();
        // Each shard is asked first for a share of the page with some slack; a shard that
        // runs dry before the page is complete is read further (doubling chunks).
        let mut batch = if exact { want } else { want.max(100) };
        let first_chunk = if shards == 1 { batch } else { (batch * 3 / 2 / shards).max(16) + 1 };
        let mut merged = MergedIndex::new(index, pos.take(), first_chunk, query.partial);
        let mut found: Vec<Instance> = Vec::with_capacity(want);
        'scan: loop {
            let page = merged.next(&self.pool, batch).await?;
            if merged.stop() {
                break;
            }
            let cmds = page
                .iter()
                .map(|(_, m)| {
                    let id = member_uuid(m)?;
                    let mut c = redis::cmd("GET");
                    c.arg(self.keys.instance(id.0));
                    Ok(c)
                })
                .collect::<Result<Vec<_>>>()?;
            for ((shard, _), v) in page.iter().zip(self.pool.bulk_each(cmds).await) {
                // A record lives in its index shard's slot: its read fails only when that
                // master was lost after the index was read. The shard is then unreachable.
                let v = match v {
                    Ok(v) => v,
                    Err(e) if e.is_retryable() => {
                        merged.fail(*shard, e);
                        if merged.stop() {
                            break 'scan;
                        }
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if merged.failed.iter().any(|(s, _)| s == shard) {
                    continue;
                }
                // A record deleted since its index entry was read is simply not listed.
                let Some(s) = text(&v) else { continue };
                let inst: Instance = from_json(&s)?;
                if query.filters.matches(&inst) {
                    found.push(inst);
                    if found.len() == want {
                        break 'scan;
                    }
                }
            }
            if page.len() < batch {
                break;
            }
            batch = (batch * 2).min(MAX_SCAN_BATCH.max(want));
        }
        let mut failed = std::mem::take(&mut merged.failed);
        failed.sort_by_key(|(s, _)| *s);
        if !query.partial && !failed.is_empty() {
            let (shard, e) = failed.swap_remove(0);
            return Err(self.shard_error(shard, e).await);
        }
        let mut unreachable = Vec::with_capacity(failed.len());
        for (shard, e) in failed {
            let part = self.shard_name(shard).await;
            tracing::warn!(part = %part, error = %e, "instance shard unreachable; listing without it");
            unreachable.push(UnreachablePart { part, reason: e.to_string(), stubbed: false });
        }
        let next_marker = if found.len() > limit {
            found.truncate(limit);
            found.last().map(|i| i.uuid)
        } else {
            None
        };
        Ok(InstancePage { instances: found, next_marker, unreachable, stubs: Vec::new() })
    }

    async fn instance_stub(&self, _id: InstanceId) -> Result<Option<InstanceStub>> {
        // The record and its index entries share one slot: nothing else knows the instance.
        Ok(None)
    }
}
