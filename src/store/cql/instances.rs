//! Instances: the record by uuid plus two listing copies, partitioned by time bucket of
//! `created_at` (and by project), clustered in Nova's order (created_at DESC, uuid DESC).
//!
//! * create: reserve the uuid with `INSERT ... IF NOT EXISTS` on `instance_ids`
//!   (uniqueness; that table is only ever written by lightweight transactions), then ONE
//!   logged batch with the record, both listing rows and the bucket-directory entries, so
//!   the record and its listing copies appear together (the batchlog finishes the batch even
//!   if the client dies); delete removes the rows, then the reservation (`IF EXISTS`);
//! * update: one logged batch writing only the patched columns (plus `updated_at`) to the
//!   three rows, so the patch lands everywhere or nowhere; concurrent patches of different
//!   fields both survive, of the same field the last write wins (as Nova's `save()`);
//! * listing: the marker is one point read; then, bucket by bucket from the bucket
//!   directory (empty buckets never exist there), each shard's partition is read as a slice
//!   `(created_at, uuid) < marker LIMIT n`, the shards are merged in order, and buckets are
//!   read until the page is full. Filters other than the project are applied while reading
//!   ([`InstanceFilters::matches`]), so a selective filter reads more rows, still in order
//!   and never by scanning the table.
//!
//! A row missing its `flavor` is a fragment (an update racing a delete) and is ignored.

use std::collections::VecDeque;

use scylla::value::{CqlValue, Row};

use async_trait::async_trait;

use super::CqlStore;
use super::conn::*;
use crate::error::{Error, Kind, Result};
use crate::model::*;
use crate::store::prelude::*;

const COLS: &str = "uuid, name, project_id, user_id, cell, host, node, flavor, vm_state, \
     task_state, created_at, updated_at, launched_at, deleted, availability_zone, metadata, tags, fault, \
     system_metadata";

/// An `instance_ids` reservation without a record is taken over after this long.
const RESERVATION_GRACE_US: i64 = 120_000_000;

/// The listing key of an instance.
struct Keys {
    bucket: i64,
    shard: i32,
    created_at: i64,
    uuid: Vec<u8>,
    project: String,
}

struct ShardCursor {
    shard: i32,
    bound: Option<(i64, Vec<u8>)>,
    buf: VecDeque<Instance>,
    exhausted: bool,
}

impl CqlStore {
    fn keys(&self, i: &Instance) -> Keys {
        Keys {
            bucket: i.created_at.as_micros() / self.bucket_us,
            shard: (i.uuid.0.as_u128() % u128::from(self.shards)) as i32,
            created_at: i.created_at.as_micros(),
            uuid: i.uuid.0.as_bytes().to_vec(),
            project: i.project_id.clone(),
        }
    }

    /// Reserves an instance uuid with `INSERT ... IF NOT EXISTS` on `instance_ids` (the only
    /// lightweight transaction on instances, on a table only ever written by LWT: mixing LWT
    /// and plain writes on the same cells can order them wrongly). A reservation left by a
    /// creator that crashed before writing the record is taken over after a grace period.
    async fn reserve_instance_id(&self, id: InstanceId) -> Result<()> {
        let owner = uuid::Uuid::new_v4();
        let now = Timestamp::now().as_micros();
        let cas = self
            .db
            .cas(
                "INSERT INTO instance_ids (uuid, owner, at) VALUES (?, ?, ?) IF NOT EXISTS",
                vec![uuid(id.0), uuid(owner), big(now)],
            )
            .await?;
        if cas.applied {
            return Ok(());
        }
        let exists = Error::already_exists(Kind::Instance, id);
        let (Some(CqlValue::Uuid(old)), Some(CqlValue::BigInt(at))) = (cas.get("owner"), cas.get("at")) else {
            return Err(exists);
        };
        if now - at < RESERVATION_GRACE_US || self.read_instance(id).await?.is_some() {
            return Err(exists);
        }
        let taken = self
            .db
            .cas(
                "UPDATE instance_ids SET owner = ?, at = ? WHERE uuid = ? IF owner = ?",
                vec![uuid(owner), big(now), uuid(id.0), uuid(*old)],
            )
            .await?;
        if taken.applied { Ok(()) } else { Err(exists) }
    }

    async fn read_instance(&self, id: InstanceId) -> Result<Option<Instance>> {
        let rows = self.db.query(&format!("SELECT {COLS} FROM instances WHERE uuid = ?"), vec![uuid(id.0)]).await?;
        match rows.first() {
            Some(r) => instance_of(r),
            None => Ok(None),
        }
    }

    /// Merges the shards of one bucket into `out` (in listing order) until `want` rows
    /// matched or the bucket is exhausted.
    async fn read_bucket(
        &self,
        bucket: i64,
        project: Option<&str>,
        bound: &Option<(i64, Vec<u8>)>,
        query: &ListQuery,
        want: usize,
        out: &mut Vec<Instance>,
    ) -> Result<()> {
        let mut cursors: Vec<ShardCursor> = (0..self.shards as i32)
            .map(|shard| ShardCursor { shard, bound: bound.clone(), buf: VecDeque::new(), exhausted: false })
            .collect();
        loop {
            let needed = want.saturating_sub(out.len());
            if needed == 0 {
                return Ok(());
            }
            // Refill every empty, unexhausted shard (in parallel).
            let batch = (needed.div_ceil(self.shards as usize) + 8).clamp(16, 1001);
            let refills = cursors
                .iter()
                .enumerate()
                .filter(|(_, c)| c.buf.is_empty() && !c.exhausted)
                .map(|(n, c)| {
                    let shard = c.shard;
                    let fut = self.slice(bucket, shard, project, c.bound.clone(), batch);
                    async move {
                        fut.await.map(|rows| (n, rows)).map_err(|e| unreachable_partition(e, bucket, shard, project))
                    }
                })
                .collect::<Vec<_>>();
            for (n, (rows, last, read)) in futures::future::try_join_all(refills).await? {
                let c = &mut cursors[n];
                c.exhausted = read < batch;
                if let Some(last) = last {
                    c.bound = Some(last);
                }
                c.buf.extend(rows);
            }
            // Take the greatest head while every live shard has a head.
            loop {
                if cursors.iter().any(|c| c.buf.is_empty() && !c.exhausted) {
                    break;
                }
                let best = cursors
                    .iter()
                    .enumerate()
                    .filter_map(|(n, c)| c.buf.front().map(|i| (n, i.sort_key())))
                    .min_by(|a, b| a.1.cmp(&b.1))
                    .map(|(n, _)| n);
                let Some(n) = best else {
                    return Ok(());
                };
                if let Some(i) = cursors[n].buf.pop_front()
                    && query.filters.matches(&i)
                {
                    out.push(i);
                    if out.len() >= want {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// One slice of one shard partition: up to `limit` rows below `bound`. Returns the
    /// complete instances, the key of the last row read (fragments included) and the number
    /// of rows read (fewer than `limit`: the partition is exhausted).
    async fn slice(
        &self,
        bucket: i64,
        shard: i32,
        project: Option<&str>,
        bound: Option<(i64, Vec<u8>)>,
        limit: usize,
    ) -> Result<(Vec<Instance>, Option<(i64, Vec<u8>)>, usize)> {
        let (table, mut keys, mut cond) = match project {
            Some(p) => (
                "instances_by_project",
                vec![text(p), big(bucket), int(shard)],
                "project_id = ? AND bucket = ? AND shard = ?".to_string(),
            ),
            None => ("instances_by_time", vec![big(bucket), int(shard)], "bucket = ? AND shard = ?".to_string()),
        };
        if let Some((c, u)) = &bound {
            cond.push_str(" AND (created_at, uuid) < (?, ?)");
            keys.push(big(*c));
            keys.push(blob(u));
        }
        keys.push(int(i32::try_from(limit).unwrap_or(1001)));
        let rows = self.db.query(&format!("SELECT {COLS} FROM {table} WHERE {cond} LIMIT ?"), keys).await?;
        let last = rows.last().and_then(|r| {
            let c = get_i64(r, 10)?;
            match col(r, 0)? {
                CqlValue::Blob(b) => Some((c, b.clone())),
                _ => None,
            }
        });
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            if let Some(i) = instance_of(r)? {
                out.push(i);
            }
        }
        Ok((out, last, rows.len()))
    }
}

#[async_trait]
impl Instances for CqlStore {
    async fn create_instance(&self, i: &Instance) -> Result<()> {
        i.validate()?;
        let vals = data_values(i)?;
        let mut main = vec![uuid(i.uuid.0)];
        main.extend(vals.iter().cloned());
        main.push(opt_big(Some(i.created_at.as_micros())));
        main.push(text(i.project_id.clone()));
        self.reserve_instance_id(i.uuid).await?;
        let k = self.keys(i);
        let mut by_time = vec![big(k.bucket), int(k.shard), big(k.created_at), blob(&k.uuid)];
        by_time.extend(vals.iter().cloned());
        by_time.push(text(k.project.clone()));
        let mut by_project =
            vec![text(k.project.clone()), big(k.bucket), int(k.shard), big(k.created_at), blob(&k.uuid)];
        by_project.extend(vals.iter().cloned());
        let stmts = vec![
            (
                "INSERT INTO instances (uuid, name, user_id, cell, host, node, flavor, vm_state, task_state, \
                 updated_at, launched_at, deleted, availability_zone, metadata, tags, fault, system_metadata, created_at, \
                 project_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    .to_string(),
                main,
            ),
            (
                "INSERT INTO instances_by_time (bucket, shard, created_at, uuid, name, user_id, cell, host, node, flavor, \
                 vm_state, task_state, updated_at, launched_at, deleted, availability_zone, metadata, tags, fault, system_metadata, \
                 project_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    .to_string(),
                by_time,
            ),
            (
                "INSERT INTO instances_by_project (project_id, bucket, shard, created_at, uuid, name, user_id, cell, host, node, flavor, \
                 vm_state, task_state, updated_at, launched_at, deleted, availability_zone, metadata, tags, fault, \
                 system_metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    .to_string(),
                by_project,
            ),
            (
                "INSERT INTO instance_buckets (scope, bucket) VALUES (?, ?)".to_string(),
                vec![text("all"), big(k.bucket)],
            ),
            (
                "INSERT INTO instance_buckets (scope, bucket) VALUES (?, ?)".to_string(),
                vec![text(format!("project:{}", k.project)), big(k.bucket)],
            ),
        ];
        self.db.logged_batch(&stmts).await
    }

    async fn get_instance(&self, id: InstanceId) -> Result<Instance> {
        self.read_instance(id).await?.ok_or_else(|| Error::not_found(Kind::Instance, id))
    }

    /// The updates of a batch concurrently, up to
    /// [`CLAIM_BATCH_WIDTH`](super::trees::CLAIM_BATCH_WIDTH) at once (each is its own
    /// read and write, as [`update_instance`](Instances::update_instance)).
    async fn update_instances(&self, updates: &[(InstanceId, InstancePatch)]) -> Result<Vec<Result<Instance>>> {
        Ok(crate::store::update_in_parallel(self, updates, super::trees::CLAIM_BATCH_WIDTH).await)
    }

    async fn update_instance(&self, id: InstanceId, patch: &InstancePatch) -> Result<Instance> {
        let mut i = self.get_instance(id).await?;
        i.apply(patch, Timestamp::now());
        let mut cols: Vec<(&str, Option<CqlValue>)> = Vec::new();
        if patch.vm_state.is_some() {
            cols.push(("vm_state", text(i.vm_state.as_str())));
        }
        if patch.task_state.is_some() {
            cols.push(("task_state", opt_text(i.task_state.map(|t| t.as_str()))));
        }
        if patch.cell.is_some() {
            cols.push(("cell", i.cell.map(|c| CqlValue::Uuid(c.0))));
        }
        if patch.host.is_some() {
            cols.push(("host", opt_text(i.host.as_deref())));
        }
        if patch.node.is_some() {
            cols.push(("node", opt_text(i.node.as_deref())));
        }
        if patch.launched_at.is_some() {
            cols.push(("launched_at", opt_big(i.launched_at.map(|t| t.as_micros()))));
        }
        if patch.deleted.is_some() {
            cols.push(("deleted", boolean(i.deleted)));
        }
        if patch.availability_zone.is_some() {
            cols.push(("availability_zone", opt_text(i.availability_zone.as_deref())));
        }
        if patch.metadata.is_some() {
            cols.push(("metadata", text_map(i.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())))));
        }
        if patch.tags.is_some() {
            cols.push(("tags", text_set(i.tags.iter().map(String::as_str))));
        }
        if patch.fault.is_some() {
            cols.push((
                "fault",
                match &i.fault {
                    Some(f) => json(f)?,
                    None => None,
                },
            ));
        }
        cols.push(("updated_at", big(i.updated_at.as_micros())));
        let set = cols.iter().map(|(c, _)| format!("{c} = ?")).collect::<Vec<_>>().join(", ");
        let values: Vec<Option<CqlValue>> = cols.into_iter().map(|(_, v)| v).collect();
        let k = self.keys(&i);
        let with = |mut v: Vec<Option<CqlValue>>, keys: Vec<Option<CqlValue>>| {
            v.extend(keys);
            v
        };
        let stmts = vec![
            (format!("UPDATE instances SET {set} WHERE uuid = ?"), with(values.clone(), vec![uuid(id.0)])),
            (
                format!(
                    "UPDATE instances_by_time SET {set} WHERE bucket = ? AND shard = ? AND created_at = ? AND uuid = ?"
                ),
                with(values.clone(), vec![big(k.bucket), int(k.shard), big(k.created_at), blob(&k.uuid)]),
            ),
            (
                format!(
                    "UPDATE instances_by_project SET {set} WHERE project_id = ? AND bucket = ? AND shard = ? AND created_at = ? AND uuid = ?"
                ),
                with(
                    values,
                    vec![text(k.project.clone()), big(k.bucket), int(k.shard), big(k.created_at), blob(&k.uuid)],
                ),
            ),
        ];
        self.db.logged_batch(&stmts).await?;
        Ok(i)
    }

    async fn delete_instance(&self, id: InstanceId) -> Result<()> {
        let i = self.get_instance(id).await?;
        let k = self.keys(&i);
        self.db
            .logged_batch(&[
                (
                    "DELETE FROM instances WHERE uuid = ?".to_string(),
                    vec![uuid(id.0)],
                ),
                (
                    "DELETE FROM instances_by_time WHERE bucket = ? AND shard = ? AND created_at = ? AND uuid = ?"
                        .to_string(),
                    vec![big(k.bucket), int(k.shard), big(k.created_at), blob(&k.uuid)],
                ),
                (
                    "DELETE FROM instances_by_project WHERE project_id = ? AND bucket = ? AND shard = ? AND created_at = ? AND uuid = ?"
                        .to_string(),
                    vec![text(k.project), big(k.bucket), int(k.shard), big(k.created_at), blob(&k.uuid)],
                ),
            ])
            .await?;
        self.db.cas("DELETE FROM instance_ids WHERE uuid = ? IF EXISTS", vec![uuid(id.0)]).await.map(|_| ())
    }

    async fn repair_instance(&self, _id: InstanceId) -> Result<()> {
        // Nothing to repair: an instance lives in one partition and the listing reads it there; a patch is one UPDATE.
        Ok(())
    }

    async fn list_instances(&self, query: &ListQuery) -> Result<InstancePage> {
        let bound = match query.marker {
            Some(m) => {
                let i = self.read_instance(m).await?.ok_or_else(|| Error::not_found(Kind::Marker, m))?;
                Some((i.created_at.as_micros(), i.uuid.0.as_bytes().to_vec()))
            }
            None => None,
        };
        let limit = query.effective_limit();
        if limit == 0 {
            return Ok(InstancePage::default());
        }
        let project = query.filters.project_id.clone();
        let scope = match &project {
            Some(p) => format!("project:{p}"),
            None => "all".to_string(),
        };
        let want = limit + 1;
        let mut out: Vec<Instance> = Vec::with_capacity(want.min(1024));
        let mut bucket_from = bound.as_ref().map(|(c, _)| c / self.bucket_us).unwrap_or(i64::MAX);
        'buckets: loop {
            let rows = self
                .db
                .query(
                    "SELECT bucket FROM instance_buckets WHERE scope = ? AND bucket <= ? LIMIT 64",
                    vec![text(scope.clone()), big(bucket_from)],
                )
                .await?;
            let buckets: Vec<i64> = rows.iter().filter_map(|r| get_i64(r, 0)).collect();
            if buckets.is_empty() {
                break;
            }
            for &bucket in &buckets {
                self.read_bucket(bucket, project.as_deref(), &bound, query, want, &mut out).await?;
                if out.len() >= want {
                    break 'buckets;
                }
            }
            match buckets.last() {
                Some(&last) if buckets.len() == 64 && last > i64::MIN => bucket_from = last - 1,
                _ => break,
            }
        }
        let next_marker = if out.len() > limit {
            out.truncate(limit);
            out.last().map(|i| i.uuid)
        } else {
            None
        };
        Ok(InstancePage { instances: out, next_marker, ..Default::default() })
    }

    async fn instance_stub(&self, _id: InstanceId) -> Result<Option<InstanceStub>> {
        // The record and its listing copies are all CQL keeps of an instance.
        Ok(None)
    }
}

/// Names the listing partition a failed read was for (contract line 17): the driver says
/// which consistency it could not reach, not which part of the data that was. CQL cannot
/// skip the partition (a time bucket of one shard: older buckets of the same shard may
/// answer, and a page with a hole in its middle would break line 14), so even a partial
/// listing fails.
fn unreachable_partition(e: Error, bucket: i64, shard: i32, project: Option<&str>) -> Error {
    let table = if project.is_some() { "instances_by_project" } else { "instances_by_time" };
    let named = |m: String| format!("listing partition {table} (bucket {bucket}, shard {shard}): {m}");
    match e {
        Error::Unavailable { backend, message } => Error::Unavailable { backend, message: named(message) },
        Error::Timeout { backend, message } => Error::Timeout { backend, message: named(message) },
        other => other,
    }
}

fn opt_big(v: Option<i64>) -> Option<CqlValue> {
    v.map(CqlValue::BigInt)
}

/// name, user_id, cell, host, node, flavor, vm_state, task_state, updated_at, launched_at,
/// deleted, availability_zone, metadata, tags, fault, system_metadata
fn data_values(i: &Instance) -> Result<Vec<Option<CqlValue>>> {
    Ok(vec![
        text(i.name.clone()),
        text(i.user_id.clone()),
        i.cell.map(|c| CqlValue::Uuid(c.0)),
        opt_text(i.host.as_deref()),
        opt_text(i.node.as_deref()),
        text(i.flavor.as_str()),
        text(i.vm_state.as_str()),
        opt_text(i.task_state.map(|t| t.as_str())),
        big(i.updated_at.as_micros()),
        opt_big(i.launched_at.map(|t| t.as_micros())),
        boolean(i.deleted),
        opt_text(i.availability_zone.as_deref()),
        text_map(i.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
        text_set(i.tags.iter().map(String::as_str)),
        match &i.fault {
            Some(f) => json(f)?,
            None => None,
        },
        if i.system_metadata.is_empty() { None } else { json(&i.system_metadata)? },
    ])
}

/// Decodes a row selected with `COLS`; `None` for a fragment.
fn instance_of(r: &Row) -> Result<Option<Instance>> {
    let (Some(id), Some(flavor), Some(created_at)) = (get_uuid(r, 0), get_text(r, 7), get_i64(r, 10)) else {
        return Ok(None);
    };
    let metadata = get_map(r, 15)
        .into_iter()
        .filter_map(|(k, v)| match v {
            CqlValue::Text(s) => Some((k, s)),
            _ => None,
        })
        .collect();
    Ok(Some(Instance {
        uuid: InstanceId(id),
        name: get_text(r, 1).unwrap_or_default(),
        project_id: get_text(r, 2).unwrap_or_default(),
        user_id: get_text(r, 3).unwrap_or_default(),
        cell: get_uuid(r, 4).map(CellId),
        host: get_text(r, 5),
        node: get_text(r, 6),
        flavor: FlavorId::new(flavor)?,
        vm_state: VmState::parse(&get_text(r, 8).unwrap_or_default())?,
        task_state: get_text(r, 9).map(|t| TaskState::parse(&t)).transpose()?,
        created_at: Timestamp::from_micros(created_at),
        updated_at: Timestamp::from_micros(get_i64(r, 11).unwrap_or(created_at)),
        launched_at: get_i64(r, 12).map(Timestamp::from_micros),
        deleted: get_bool(r, 13).unwrap_or(false),
        availability_zone: get_text(r, 14),
        metadata,
        tags: get_text_set(r, 16).into_iter().collect(),
        fault: get_text(r, 17).map(|f| parse_json(&f)).transpose()?,
        system_metadata: get_text(r, 18).map(|s| parse_json(&s)).transpose()?.unwrap_or_default(),
    }))
}
