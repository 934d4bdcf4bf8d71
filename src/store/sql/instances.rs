//! Instances on SQL, as Nova keeps them: an `instance_mappings` row in the API database says
//! where each instance lives; an instance without a cell is a build request (API database),
//! one with a cell is a row of that cell database's `instances` table.
//!
//! # Moving from build request to cell
//!
//! `update_instance` setting a cell (Nova's conductor scheduling an instance) moves the row
//! in three steps, in this order: (1) insert the row into the cell database (committed),
//! (2) point the instance mapping at the cell, (3) delete the build request, inside a
//! transaction that locked it (`SELECT ... FOR UPDATE`) before step 1, so concurrent updates
//! of the same instance wait and then re-resolve the mapping. A listing reads the build
//! requests *before* it reads any cell, so for the instance to be missing, the build-request
//! read would have to follow step 3 while a later cell read preceded step 1, which the order
//! forbids; it may see both copies, and the merge drops the second (by uuid, as Nova does).
//! Keyset paging by `(created_at, uuid)` makes a move between two pages harmless: the
//! sort key does not change.
//!
//! # Listing
//!
//! As Nova's `multi_cell_list`: the marker is resolved through `instance_mappings`, every
//! cell is queried with the marker's sort values (keyset) and a per-cell batch of
//! `int(limit / cells * 1.1)` clamped to `100..=limit` (Nova's `distributed` strategy), the
//! sorted cell streams are merged with a heap, a cell whose batch runs dry is refilled, and
//! the merge stops at `limit + 1` rows (the extra row says whether a next marker exists).
//! Build requests (instances not yet in a cell) are one more stream, read from the API
//! database *before* the cells. `list_strategy=concurrent` fetches the cells' first batches
//! in parallel; `sequential` fetches them one after another, as Nova's lazily pulled
//! generators do.
//!
//! # A cell database down (contract line 17)
//!
//! A cell database that fails or exceeds `cell_timeout` fails the listing naming it
//! (`down_cell=fail`), or is skipped (`down_cell=skip`, Nova's default, or a partial query)
//! and named in the page. A partial first page then lists the skipped databases' instances
//! as stubs from `instance_mappings`, which keeps each instance's project, creation time and
//! `queued_for_delete` (set by a soft-delete patch, after the record, as Nova does): Nova's
//! `_generate_minimal_construct_for_down_cells`, a query per down database joined through
//! `cell_mappings.database_slot`. The API database itself down fails every listing.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{Error, Kind, Result};
use crate::model::*;
use crate::sql_args;
use crate::store::prelude::*;
use crate::store::sql::conn::{Arg, Dialect, Pool, Row, Sql, Tx, is_unique_violation, map_err, rolled_back, to_pg};
use crate::store::sql::{DownCell, ListStrategy, SqlStore, from_json, to_json};

const COLS: &str = "uuid, display_name, project_id, user_id, cell_uuid, host, node, instance_type_id, \
                    vm_state, task_state, created_at, updated_at, launched_at, deleted, availability_zone, \
                    metadata, tags, fault, system_metadata";

/// Where an instance row lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loc {
    /// `build_requests` in the API database.
    Build,
    /// `instances` in cell database `slot`.
    Cell(usize),
}

/// Prepared statement texts of both tables, in the store's dialect.
#[derive(Debug)]
pub(crate) struct Statements {
    dialect: Dialect,
    insert: [Arc<str>; 2],
    select: [Arc<str>; 2],
    select_for_update: [Arc<str>; 2],
    update: [Arc<str>; 2],
    delete: [Arc<str>; 2],
}

fn table(i: usize) -> &'static str {
    if i == 0 { "build_requests" } else { "instances" }
}

impl Statements {
    pub(crate) fn new(dialect: Dialect) -> Self {
        let mk = |f: &dyn Fn(&str) -> String| -> [Arc<str>; 2] {
            [0, 1].map(|i| {
                let s = f(table(i));
                match dialect {
                    Dialect::MySql => s.into(),
                    Dialect::Postgres => to_pg(&s).into(),
                }
            })
        };
        Statements {
            dialect,
            insert: mk(&|t| {
                format!("INSERT INTO {t} ({COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
            }),
            select: mk(&|t| format!("SELECT {COLS} FROM {t} WHERE uuid = ?")),
            select_for_update: mk(&|t| format!("SELECT {COLS} FROM {t} WHERE uuid = ? FOR UPDATE")),
            update: mk(&|t| {
                format!(
                    "UPDATE {t} SET cell_uuid = ?, host = ?, node = ?, vm_state = ?, task_state = ?, \
                     updated_at = ?, launched_at = ?, deleted = ?, availability_zone = ?, metadata = ?, \
                     tags = ?, fault = ? WHERE uuid = ?"
                )
            }),
            delete: mk(&|t| format!("DELETE FROM {t} WHERE uuid = ?")),
        }
    }

    /// A statement written with `?` in this store's dialect.
    pub(crate) fn adapt(&self, s: &str) -> String {
        match self.dialect {
            Dialect::MySql => s.to_string(),
            Dialect::Postgres => to_pg(s),
        }
    }
}

fn idx(loc: Loc) -> usize {
    match loc {
        Loc::Build => 0,
        Loc::Cell(_) => 1,
    }
}

fn row_args(i: &Instance) -> Result<Vec<Arg>> {
    Ok(sql_args![
        i.uuid.to_string(),
        &i.name,
        &i.project_id,
        &i.user_id,
        i.cell.map(|c| c.to_string()),
        i.host.clone(),
        i.node.clone(),
        i.flavor.as_str(),
        i.vm_state.as_str(),
        i.task_state.map(|t| t.as_str().to_string()),
        i.created_at.as_micros(),
        i.updated_at.as_micros(),
        i.launched_at.map(|t| t.as_micros()),
        i.deleted,
        i.availability_zone.clone(),
        crate::store::sql::to_json(&i.metadata)?,
        crate::store::sql::to_json(&i.tags)?,
        i.fault.as_ref().map(to_json).transpose()?,
        (!i.system_metadata.is_empty()).then(|| to_json(&i.system_metadata)).transpose()?
    ])
}

fn update_args(i: &Instance) -> Result<Vec<Arg>> {
    Ok(sql_args![
        i.cell.map(|c| c.to_string()),
        i.host.clone(),
        i.node.clone(),
        i.vm_state.as_str(),
        i.task_state.map(|t| t.as_str().to_string()),
        i.updated_at.as_micros(),
        i.launched_at.map(|t| t.as_micros()),
        i.deleted,
        i.availability_zone.clone(),
        to_json(&i.metadata)?,
        to_json(&i.tags)?,
        i.fault.as_ref().map(to_json).transpose()?,
        i.uuid.to_string()
    ])
}

fn instance_from(r: &Row) -> Result<Instance> {
    Ok(Instance {
        uuid: InstanceId(r.uuid(0)?),
        name: r.str(1)?,
        project_id: r.str(2)?,
        user_id: r.str(3)?,
        cell: r.opt_uuid(4)?.map(CellId),
        host: r.opt_str(5)?,
        node: r.opt_str(6)?,
        flavor: FlavorId::new(r.str(7)?)?,
        vm_state: VmState::parse(&r.str(8)?)?,
        task_state: r.opt_str(9)?.map(|s| TaskState::parse(&s)).transpose()?,
        created_at: Timestamp::from_micros(r.i64(10)?),
        updated_at: Timestamp::from_micros(r.i64(11)?),
        launched_at: r.opt_i64(12)?.map(Timestamp::from_micros),
        deleted: r.bool(13)?,
        availability_zone: r.opt_str(14)?,
        metadata: from_json(&r.str(15)?)?,
        tags: from_json(&r.str(16)?)?,
        fault: r.opt_str(17)?.map(|s| from_json(&s)).transpose()?,
        system_metadata: r.opt_str(18)?.map(|s| from_json(&s)).transpose()?.unwrap_or_default(),
    })
}

/// One sorted input of the merge: the build requests or one cell.
struct Stream {
    loc: Loc,
    buf: VecDeque<Instance>,
    /// Sort key of the last row read (filtered or not): the keyset position of the next batch.
    after: Option<SortKey>,
    exhausted: bool,
    /// Whether a cell database that fails is skipped (`down_cell=skip` or a partial
    /// listing) rather than failing the listing.
    skip: bool,
    /// Why this stream's cell database could not be read, once it was skipped.
    failed: Option<Error>,
}

impl SqlStore {
    fn pool_of(&self, loc: Loc) -> &Pool {
        match loc {
            Loc::Build => &self.api,
            Loc::Cell(slot) => &self.cells[slot].pool,
        }
    }

    async fn loc_of_cell(&self, cell: Option<CellId>) -> Result<Loc> {
        Ok(match cell {
            None => Loc::Build,
            Some(c) => Loc::Cell(self.slot_of(c).await?),
        })
    }

    /// Takes the head of stream `n` of a listing merge, refilling the stream when that
    /// empties it and putting its new head on the heap.
    async fn advance(
        &self,
        s: &mut Stream,
        n: usize,
        heap: &mut BinaryHeap<Reverse<(SortKey, usize)>>,
        f: &InstanceFilters,
        want: usize,
        batch: usize,
    ) -> Result<Option<Instance>> {
        let Some(i) = s.buf.pop_front() else {
            return Ok(None);
        };
        while s.buf.is_empty() && !s.exhausted {
            let b = if s.loc == Loc::Build { want } else { batch };
            self.fill(s, f, b).await?;
        }
        if let Some(next) = s.buf.front() {
            heap.push(Reverse((next.sort_key(), n)));
        }
        Ok(Some(i))
    }

    /// The one copy of an instance a listing shows when it met several: the one its
    /// mapping points at. Two copies exist while a move is between its steps (the mapping
    /// still names the old one, which is then the instance) and after a move interrupted
    /// by a crash, which leaves a stale copy behind until [`Instances::repair_instance`]
    /// removes it: showing that copy would show a state the instance left long ago (a
    /// server BUILDING forever). `None`: the instance was deleted meanwhile.
    async fn resolve_copies(&self, id: InstanceId, mut copies: Vec<(Loc, Instance)>) -> Result<Option<Instance>> {
        if copies.len() < 2 {
            return Ok(copies.pop().map(|(_, i)| i));
        }
        let Some(loc) = self.mapping(id).await? else {
            return Ok(None);
        };
        let pick = copies.iter().position(|(l, _)| *l == loc).unwrap_or(0);
        tracing::debug!(instance = %id, copies = copies.len(), "listing met several copies of an instance; showing the mapped one");
        Ok(Some(copies.swap_remove(pick).1))
    }

    /// Removes every copy of `id` outside `keep`, the database its mapping named when
    /// read, while holding the lock on the row at `keep`; `false` when no row is there
    /// (the instance moved or was deleted since the mapping was read, or a create stopped
    /// half way), and then nothing was removed.
    ///
    /// The lock is what makes this safe beside a live writer of the instance (a build
    /// taken over while its replica still runs it, see `api::builds`): a move holds the
    /// lock on the row it moves from across its three steps, so while this holds that
    /// lock no move is between its steps, and a copy outside `keep` can only be one that
    /// an interrupted move left. Without it, a repair that read the mapping just before a
    /// move committed deleted the moved row, the only copy left: the instance was gone
    /// while its mapping remained (the replicas test on MariaDB lost a server that had
    /// been answered 202).
    ///
    /// Which databases hold a copy is found first with plain reads, holding nothing: a
    /// delete of a missing row would take InnoDB gap locks that block creates. The pools
    /// are taken in `update_at`'s order, the API database first, and a pool already held
    /// is never asked for a second connection. A database that cannot be read or written
    /// through a transaction of its own is logged and skipped (best effort: the listing
    /// still shows the mapped copy only).
    async fn remove_stale_copies(&self, id: InstanceId, keep: Loc) -> Result<bool> {
        let mut stale = Vec::new();
        for loc in std::iter::once(Loc::Build).chain((0..self.cells.len()).map(Loc::Cell)).filter(|l| *l != keep) {
            match self.read_at(loc, id).await {
                Ok(Some(_)) => stale.push(loc),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(instance = %id, location = ?loc, error = %e, "could not look for a stale copy of an instance")
                }
            }
        }
        if stale.is_empty() {
            return Ok(true);
        }
        let keep_pool = self.pool_of(keep);
        let shares_api = |loc: &Loc| self.pool_of(*loc).same_as(&self.api) && !keep_pool.same_as(&self.api);
        let mut api_tx = match stale.iter().any(shares_api) {
            true => Some(self.api.begin().await.map_err(map_err)?),
            false => None,
        };
        let mut tx = keep_pool.begin().await.map_err(map_err)?;
        let locked = tx
            .fetch_optional(Sql::Dynamic(self.stmts.select_for_update[idx(keep)].clone()), sql_args![id.to_string()])
            .await
            .map_err(map_err)?;
        if locked.is_none() {
            return Ok(false);
        }
        for loc in stale {
            let pool = self.pool_of(loc);
            if pool.same_as(keep_pool) {
                self.delete_at(&mut tx, loc, id).await.map_err(map_err)?;
            } else if let Some(a) = api_tx.as_mut().filter(|_| pool.same_as(&self.api)) {
                self.delete_at(a, loc, id).await.map_err(map_err)?;
            } else {
                let own = async {
                    let mut t = pool.begin().await.map_err(map_err)?;
                    self.delete_at(&mut t, loc, id).await.map_err(map_err)?;
                    t.commit().await.map_err(map_err)
                };
                if let Err(e) = own.await {
                    tracing::warn!(instance = %id, location = ?loc, error = %e, "could not remove a stale copy of an instance");
                }
            }
        }
        if let Some(a) = api_tx {
            a.commit().await.map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    /// Failure tests: performs step (1) of a move of `instance` into `cell` and stops, as
    /// a process killed there would: a copy of the instance (as given) is written into
    /// that cell's database, and neither the mapping nor the current row changes.
    pub async fn interrupted_move(&self, instance: &Instance, cell: CellId) -> Result<()> {
        let loc = self.loc_of_cell(Some(cell)).await?;
        let mut tx = self.pool_of(loc).begin().await.map_err(map_err)?;
        self.replace_at(&mut tx, loc, instance).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    /// The instance mapping: `None` when the instance is unknown.
    async fn mapping(&self, id: InstanceId) -> Result<Option<Loc>> {
        let Some(r) = self
            .api
            .fetch_optional(
                "SELECT cell_uuid FROM instance_mappings WHERE instance_uuid = ?",
                sql_args![id.to_string()],
            )
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(self.loc_of_cell(r.opt_uuid(0)?.map(CellId)).await?))
    }

    async fn read_at(&self, loc: Loc, id: InstanceId) -> Result<Option<Instance>> {
        let read = self
            .pool_of(loc)
            .fetch_optional(Sql::Dynamic(self.stmts.select[idx(loc)].clone()), sql_args![id.to_string()]);
        let r = match loc {
            Loc::Build => read.await?,
            // A cell database gets `cell_timeout`, as in a listing (Nova's CELL_TIMEOUT for a
            // single cell): a down one otherwise held the caller for the pool's own wait.
            Loc::Cell(slot) => match tokio::time::timeout(self.opts.cell_timeout, read).await {
                Ok(r) => r.map_err(|e| self.name_cell(slot, e))?,
                Err(_) => {
                    return Err(self.name_cell(
                        slot,
                        Error::Timeout {
                            backend: "sql",
                            message: format!("no answer within {:?}", self.opts.cell_timeout),
                        },
                    ));
                }
            },
        };
        r.map(|r| instance_from(&r)).transpose()
    }

    /// `e`, a failure to reach cell database `slot`, with the database named (its URL,
    /// redacted): a bare driver error ("connection refused") does not say which of the
    /// cell databases is down (contract line 17).
    fn name_cell(&self, slot: usize, e: Error) -> Error {
        let label = &self.cells[slot].label;
        let named = |m: String| if m.contains(label) { m } else { format!("cell database {label}: {m}") };
        match e {
            Error::Unavailable { backend, message } => Error::Unavailable { backend, message: named(message) },
            Error::Timeout { backend, message } => Error::Timeout { backend, message: named(message) },
            other => other,
        }
    }

    /// Resolves and reads an instance; re-resolves when it moved between the two reads.
    async fn find(&self, id: InstanceId) -> Result<Option<(Loc, Instance)>> {
        for _ in 0..5 {
            let Some(loc) = self.mapping(id).await? else {
                return Ok(None);
            };
            if let Some(i) = self.read_at(loc, id).await? {
                return Ok(Some((loc, i)));
            }
        }
        Ok(None)
    }

    async fn insert_at(&self, tx: &mut Tx, loc: Loc, i: &Instance) -> std::result::Result<(), sqlx::Error> {
        tx.execute(
            Sql::Dynamic(self.stmts.insert[idx(loc)].clone()),
            row_args(i).map_err(|e| sqlx::Error::Protocol(e.to_string()))?,
        )
        .await?;
        if loc != Loc::Build {
            write_tags(tx, i).await?;
        }
        Ok(())
    }

    /// Step (1) of a move: writes the instance's row at `loc`, first removing a copy left
    /// there by a move that was interrupted after its step (1) (its process died before
    /// the mapping was repointed). The caller holds the lock on the row the mapping points
    /// at, so any other copy is stale; without this, the next move of that instance into
    /// the same database failed on the duplicate and the build ended in ERROR.
    async fn replace_at(&self, tx: &mut Tx, loc: Loc, i: &Instance) -> std::result::Result<(), sqlx::Error> {
        self.delete_at(tx, loc, i.uuid).await?;
        self.insert_at(tx, loc, i).await
    }

    /// Removes the instance's row at `loc` and, in a cell, its tags (the build table of the
    /// API database keeps none).
    async fn delete_at(&self, tx: &mut Tx, loc: Loc, id: InstanceId) -> std::result::Result<(), sqlx::Error> {
        tx.execute(Sql::Dynamic(self.stmts.delete[idx(loc)].clone()), sql_args![id.to_string()]).await?;
        if loc != Loc::Build {
            tx.execute("DELETE FROM tags WHERE resource_id = ?", sql_args![id.to_string()]).await?;
        }
        Ok(())
    }

    /// Bulk load: inserts many new instances with multi-row statements, mapping rows into
    /// the API database 1000 at a time, then each cell's instance (and tag) rows into its
    /// database 500 at a time, the cells concurrently. Not atomic: mappings may exist for
    /// instances whose cell insert failed. Backs [`Instances::create_instances`].
    pub async fn bulk_create_instances(&self, instances: &[Instance]) -> Result<()> {
        let mut by_loc: std::collections::BTreeMap<usize, Vec<&Instance>> = Default::default();
        for i in instances {
            i.validate()?;
            let k = match self.loc_of_cell(i.cell).await? {
                Loc::Build => usize::MAX,
                Loc::Cell(s) => s,
            };
            by_loc.entry(k).or_default().push(i);
        }
        for chunk in instances.chunks(1000) {
            let mut args = Vec::with_capacity(chunk.len() * 5);
            for i in chunk {
                args.extend(sql_args![
                    i.uuid.to_string(),
                    i.cell.map(|c| c.to_string()),
                    &i.project_id,
                    i.created_at.as_micros(),
                    i.deleted
                ]);
            }
            let sql = format!(
                "INSERT INTO instance_mappings (instance_uuid, cell_uuid, project_id, created_at, queued_for_delete) \
                 VALUES {}",
                vec!["(?, ?, ?, ?, ?)"; chunk.len()].join(", ")
            );
            match self.api.execute_raw(Sql::Dynamic(self.stmts.adapt(&sql).into()), args).await {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => {
                    return Err(Error::already_exists(Kind::Instance, chunk[0].uuid));
                }
                Err(e) => return Err(map_err(e)),
            }
        }
        let per_loc = by_loc.into_iter().map(|(k, list)| async move {
            let loc = if k == usize::MAX { Loc::Build } else { Loc::Cell(k) };
            let pool = self.pool_of(loc);
            for part in list.chunks(500) {
                let ph = format!("({})", vec!["?"; COLS.split(',').count()].join(", "));
                let mut args = Vec::new();
                let mut tag_values = Vec::new();
                let mut tag_args = Vec::new();
                for i in part {
                    args.extend(row_args(i)?);
                    for t in &i.tags {
                        tag_values.push("(?, ?)");
                        tag_args.extend(sql_args![i.uuid.to_string(), t]);
                    }
                }
                let sql = format!(
                    "INSERT INTO {} ({COLS}) VALUES {}",
                    table(idx(loc)),
                    vec![ph.as_str(); part.len()].join(", ")
                );
                pool.execute(Sql::Dynamic(self.stmts.adapt(&sql).into()), args).await?;
                if loc != Loc::Build && !tag_values.is_empty() {
                    let sql = format!("INSERT INTO tags (resource_id, tag) VALUES {}", tag_values.join(", "));
                    pool.execute(Sql::Dynamic(self.stmts.adapt(&sql).into()), tag_args).await?;
                }
            }
            Ok::<_, Error>(())
        });
        for r in futures::future::join_all(per_loc).await {
            r?;
        }
        Ok(())
    }

    /// Whether the cell database at `loc` gives a connection within `cell_timeout`, asked
    /// while holding no connection (see `update_at`). The API database is not checked:
    /// nothing works without it.
    async fn reachable(&self, loc: Loc) -> Result<()> {
        let Loc::Cell(slot) = loc else { return Ok(()) };
        let unreachable = |why: String| Error::Unavailable {
            backend: "sql",
            message: format!("cell database {}: {why}", self.cells[slot].label),
        };
        match tokio::time::timeout(self.opts.cell_timeout, self.pool_of(loc).check()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(unreachable(map_err(e).to_string())),
            Err(_) => Err(unreachable(format!("no connection within {:?}", self.opts.cell_timeout))),
        }
    }

    /// One attempt of `update_instance` on the instance found at `loc`, moving it to
    /// `new_loc` when that differs; `None` when the row was no longer at `loc` (moved or
    /// deleted since the mapping was read: the caller resolves it again).
    ///
    /// No pool is ever asked for a second connection by a caller already holding one of
    /// it: whatever this writes to the pool of `loc` (the instance mapping when `loc` is the
    /// API database, the new row in single mode) goes through the transaction that locked
    /// the row. When that was not so, every connection of the API pool could be held by a
    /// build moving its instance into a cell while waiting for one more, and the pool
    /// starved until its queue wait ran out (`bench schedule` on MariaDB). Across pools
    /// the order is always the API pool first, then a cell's: a patch that may change the
    /// cell of an instance in a cell opens its API transaction before the cell's.
    async fn update_at(
        &self,
        id: InstanceId,
        loc: Loc,
        new_loc: Loc,
        patch: &InstancePatch,
    ) -> Result<Option<Instance>> {
        const REMAP: &str = "UPDATE instance_mappings SET cell_uuid = ? WHERE instance_uuid = ?";
        let pool = self.pool_of(loc);
        // This call may hold an API connection (and a row lock) while it waits for a cell
        // database's connection: the instance's own cell when the patch may move it (the
        // API transaction is opened first), and the destination of a move. With that cell's
        // server down, every such call held an API connection for the pool's whole wait,
        // the API pool ran dry and builds into the healthy cells stopped too (`bench
        // faults`). So those cells are checked first, holding nothing, within
        // `cell_timeout`; a cell that dies between the check and the wait still holds a
        // connection, for one wait at most.
        let holds_api = !pool.same_as(&self.api);
        if holds_api && patch.cell.is_some() {
            self.reachable(loc).await?;
        }
        let target = self.pool_of(new_loc);
        if new_loc != loc && !target.same_as(pool) && !target.same_as(&self.api) {
            self.reachable(new_loc).await?;
        }
        // The API database's own transaction, when `loc` is another database and the
        // patch may have to write the API database (a new cell: the mapping, maybe the row).
        let mut api_tx = match pool.same_as(&self.api) || patch.cell.is_none() {
            true => None,
            false => Some(self.api.begin().await.map_err(map_err)?),
        };
        let mut tx = pool.begin().await.map_err(map_err)?;
        let Some(row) = tx
            .fetch_optional(Sql::Dynamic(self.stmts.select_for_update[idx(loc)].clone()), sql_args![id.to_string()])
            .await
            .map_err(map_err)?
        else {
            return Ok(None);
        };
        let mut inst = instance_from(&row)?;
        let tags_before = inst.tags.clone();
        let cell_before = inst.cell;
        inst.apply(patch, Timestamp::now());
        let remap_args = sql_args![inst.cell.map(|c| c.to_string()), id.to_string()];
        if new_loc == loc {
            tx.execute(Sql::Dynamic(self.stmts.update[idx(loc)].clone()), update_args(&inst)?)
                .await
                .map_err(map_err)?;
            if loc != Loc::Build && inst.tags != tags_before {
                tx.execute("DELETE FROM tags WHERE resource_id = ?", sql_args![id.to_string()])
                    .await
                    .map_err(map_err)?;
                write_tags(&mut tx, &inst).await.map_err(map_err)?;
            }
            if inst.cell != cell_before {
                let api = api_tx.as_mut().unwrap_or(&mut tx);
                api.execute(REMAP, remap_args).await.map_err(map_err)?;
            }
            if let Some(a) = api_tx {
                a.commit().await.map_err(map_err)?;
            }
            tx.commit().await.map_err(map_err)?;
            return Ok(Some(inst));
        }
        // A move (see the module docs for why this order): (1) the new row, committed
        // before (2) the mapping, committed before (3) the old row's delete. Steps that
        // share a database share a transaction (never reordering them).
        let new_pool = self.pool_of(new_loc);
        if new_pool.same_as(pool) {
            self.replace_at(&mut tx, new_loc, &inst).await.map_err(map_err)?;
            tx.execute(REMAP, remap_args).await.map_err(map_err)?;
        } else if new_pool.same_as(&self.api)
            && let Some(mut a) = api_tx.take()
        {
            self.replace_at(&mut a, new_loc, &inst).await.map_err(map_err)?;
            a.execute(REMAP, remap_args).await.map_err(map_err)?;
            a.commit().await.map_err(map_err)?;
        } else {
            let mut ntx = new_pool.begin().await.map_err(map_err)?;
            self.replace_at(&mut ntx, new_loc, &inst).await.map_err(map_err)?;
            ntx.commit().await.map_err(map_err)?;
            let api = api_tx.as_mut().unwrap_or(&mut tx);
            api.execute(REMAP, remap_args).await.map_err(map_err)?;
            if let Some(a) = api_tx {
                a.commit().await.map_err(map_err)?;
            }
        }
        self.delete_at(&mut tx, loc, id).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(Some(inst))
    }

    /// The marker's sort values, found through its instance mapping as Nova does (unknown
    /// marker: `NotFound` of kind `Marker`; soft-deleted markers are fine).
    async fn marker_key(&self, marker: InstanceId) -> Result<SortKey> {
        for _ in 0..5 {
            let Some(loc) = self.mapping(marker).await? else {
                break;
            };
            let r = self
                .pool_of(loc)
                .fetch_optional(
                    Sql::Dynamic(
                        self.stmts.adapt(&format!("SELECT created_at FROM {} WHERE uuid = ?", table(idx(loc)))).into(),
                    ),
                    sql_args![marker.to_string()],
                )
                .await;
            match r {
                Ok(Some(r)) => {
                    return Ok(SortKey { created_at: Timestamp::from_micros(r.i64(0)?), uuid: marker });
                }
                Ok(None) => continue,
                Err(e) => {
                    // Nova: a marker in a down cell is an error (500), whatever the policy.
                    return Err(e);
                }
            }
        }
        Err(Error::not_found(Kind::Marker, marker))
    }

    /// One batch of a stream: the next `batch` rows after the stream's position, in listing
    /// order, with the filters Nova applies in SQL.
    fn batch_sql(&self, loc: Loc, f: &InstanceFilters, after: Option<SortKey>, batch: usize) -> (Sql, Vec<Arg>) {
        let t = table(idx(loc));
        let mut w: Vec<String> = Vec::new();
        let mut a: Vec<Arg> = Vec::new();
        match f.deleted {
            Some(d) => {
                w.push("i.deleted = ?".into());
                a.push(Arg::Bool(d));
            }
            None if f.changes_since.is_none() => {
                w.push("i.deleted = ?".into());
                a.push(Arg::Bool(false));
            }
            None => {}
        }
        if let Some(p) = &f.project_id {
            w.push("i.project_id = ?".into());
            a.push(p.into());
        }
        if let Some(u) = &f.user_id {
            w.push("i.user_id = ?".into());
            a.push(u.into());
        }
        if !f.vm_states.is_empty() {
            w.push(format!("i.vm_state IN ({})", vec!["?"; f.vm_states.len()].join(", ")));
            a.extend(f.vm_states.iter().map(|s| Arg::from(s.as_str())));
        }
        if let Some(h) = &f.host {
            w.push("i.host = ?".into());
            a.push(h.into());
        }
        if let Some(c) = f.cell {
            w.push("i.cell_uuid = ?".into());
            a.push(c.to_string().into());
        }
        if let Some(n) = &f.name {
            let escaped = n.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            w.push("i.display_name LIKE ?".into());
            a.push(format!("%{escaped}%").into());
        }
        if let Some(t) = f.changes_since {
            w.push("i.updated_at >= ?".into());
            a.push(t.as_micros().into());
        }
        if loc != Loc::Build {
            for tag in &f.tags {
                w.push("EXISTS (SELECT 1 FROM tags t WHERE t.resource_id = i.uuid AND t.tag = ?)".into());
                a.push(tag.into());
            }
            if !f.tags_any.is_empty() {
                w.push(format!(
                    "EXISTS (SELECT 1 FROM tags t WHERE t.resource_id = i.uuid AND t.tag IN ({}))",
                    vec!["?"; f.tags_any.len()].join(", ")
                ));
                a.extend(f.tags_any.iter().map(Arg::from));
            }
        }
        if let Some(k) = after {
            match self.dialect {
                // Spelled out as oslo.db's paginate_query does: MariaDB turns it into two
                // index ranges (it does not range-scan row-value comparisons).
                Dialect::MySql => {
                    w.push("(i.created_at < ? OR (i.created_at = ? AND i.uuid < ?))".into());
                    a.extend(sql_args![k.created_at.as_micros(), k.created_at.as_micros(), k.uuid.to_string()]);
                }
                Dialect::Postgres => {
                    w.push("(i.created_at, i.uuid) < (?, ?)".into());
                    a.extend(sql_args![k.created_at.as_micros(), k.uuid.to_string()]);
                }
            }
        }
        let where_ = if w.is_empty() { String::new() } else { format!(" WHERE {}", w.join(" AND ")) };
        let cols = COLS.split(", ").map(|c| format!("i.{}", c.trim())).collect::<Vec<_>>().join(", ");
        // LIMIT is bound too, so one statement per filter shape is prepared and reused.
        a.push(Arg::I64(batch as i64));
        let sql = format!("SELECT {cols} FROM {t} i{where_} ORDER BY i.created_at DESC, i.uuid DESC LIMIT ?");
        (Sql::Dynamic(self.stmts.adapt(&sql).into()), a)
    }

    async fn fill(&self, s: &mut Stream, f: &InstanceFilters, batch: usize) -> Result<()> {
        let (sql, args) = self.batch_sql(s.loc, f, s.after, batch);
        let pool = self.pool_of(s.loc);
        let rows = match s.loc {
            Loc::Build => pool.fetch_all(sql, args).await?,
            Loc::Cell(slot) => match tokio::time::timeout(self.opts.cell_timeout, pool.fetch_all(sql, args)).await {
                Ok(Ok(rows)) => rows,
                Ok(Err(e)) => return self.cell_failed(s, slot, e),
                Err(_) => {
                    let e = Error::Timeout {
                        backend: "sql",
                        message: format!(
                            "cell database {} did not answer within {:?}",
                            self.cells[slot].label, self.opts.cell_timeout
                        ),
                    };
                    return self.cell_failed(s, slot, e);
                }
            },
        };
        s.exhausted = rows.len() < batch;
        for r in &rows {
            let i = instance_from(r)?;
            s.after = Some(i.sort_key());
            if f.matches(&i) {
                s.buf.push_back(i);
            }
        }
        Ok(())
    }

    /// A cell database's read failed: fail the listing naming the database, or skip it
    /// and remember why (`down_cell=skip`, or a partial listing: contract line 17).
    fn cell_failed(&self, s: &mut Stream, slot: usize, e: Error) -> Result<()> {
        let e = self.name_cell(slot, e);
        if !s.skip {
            return Err(e);
        }
        tracing::warn!(cell_database = %self.cells[slot].label, error = %e,
            "cell did not respond; skipping it in this listing");
        s.exhausted = true;
        s.buf.clear();
        s.failed = Some(e);
        Ok(())
    }

    /// The stubs of the instances of cell database `slot` (contract line 17): from the API
    /// database's instance mappings, as Nova's `_generate_minimal_construct_for_down_cells`,
    /// those not queued for delete, of the filters' project and cell, newest first.
    async fn stubs_of(&self, slot: usize, f: &InstanceFilters, limit: usize) -> Result<Vec<InstanceStub>> {
        let mut w = vec!["m.queued_for_delete = ?".to_string()];
        let mut a: Vec<Arg> = sql_args![false];
        let from = if self.cells.len() == 1 {
            // One cell database holds every cell (its mappings may not record a slot).
            w.push("m.cell_uuid IS NOT NULL".into());
            "instance_mappings m"
        } else {
            w.push("c.database_slot = ?".into());
            a.push(Arg::I64(slot as i64));
            "instance_mappings m JOIN cell_mappings c ON c.uuid = m.cell_uuid"
        };
        if let Some(p) = &f.project_id {
            w.push("m.project_id = ?".into());
            a.push(p.into());
        }
        if let Some(c) = f.cell {
            w.push("m.cell_uuid = ?".into());
            a.push(c.to_string().into());
        }
        a.push(Arg::I64(limit as i64));
        let sql = format!(
            "SELECT m.instance_uuid, m.project_id, m.created_at, m.cell_uuid FROM {from} WHERE {} \
             ORDER BY COALESCE(m.created_at, 0) DESC, m.instance_uuid DESC LIMIT ?",
            w.join(" AND ")
        );
        let rows = self.api.fetch_all(Sql::Dynamic(self.stmts.adapt(&sql).into()), a).await?;
        rows.iter()
            .map(|r| {
                Ok(InstanceStub {
                    uuid: InstanceId(r.uuid(0)?),
                    project_id: r.str(1)?,
                    created_at: r.opt_i64(2)?.map(Timestamp::from_micros),
                    cell: r.opt_uuid(3)?.map(CellId),
                })
            })
            .collect()
    }
}

#[async_trait]
impl Instances for SqlStore {
    async fn create_instances(&self, instances: &[Instance]) -> Result<()> {
        self.bulk_create_instances(instances).await
    }

    async fn create_instance(&self, i: &Instance) -> Result<()> {
        i.validate()?;
        let loc = self.loc_of_cell(i.cell).await?;
        let r = self
            .api
            .execute_raw(
                "INSERT INTO instance_mappings (instance_uuid, cell_uuid, project_id, created_at, queued_for_delete) \
                 VALUES (?, ?, ?, ?, ?)",
                sql_args![
                    i.uuid.to_string(),
                    i.cell.map(|c| c.to_string()),
                    &i.project_id,
                    i.created_at.as_micros(),
                    i.deleted
                ],
            )
            .await;
        match r {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                if self.find(i.uuid).await?.is_some() {
                    return Err(Error::already_exists(Kind::Instance, i.uuid));
                }
                // A mapping without its instance row is what a create that failed half way
                // leaves when its clean-up below could not reach the API database either
                // (a starved pool, a lost connection): the retry of that create takes it
                // over instead of failing with a duplicate of a record that never was.
                self.api
                    .execute(
                        "UPDATE instance_mappings SET cell_uuid = ?, project_id = ?, created_at = ?, \
                         queued_for_delete = ? WHERE instance_uuid = ?",
                        sql_args![
                            i.cell.map(|c| c.to_string()),
                            &i.project_id,
                            i.created_at.as_micros(),
                            i.deleted,
                            i.uuid.to_string()
                        ],
                    )
                    .await?;
            }
            Err(e) => return Err(map_err(e)),
        }
        let r: std::result::Result<(), sqlx::Error> = async {
            let mut tx = self.pool_of(loc).begin().await?;
            self.insert_at(&mut tx, loc, i).await?;
            tx.commit().await
        }
        .await;
        if let Err(e) = r {
            if is_unique_violation(&e) {
                // The row is there: the mapping is its own, keep it.
                return Err(Error::already_exists(Kind::Instance, i.uuid));
            }
            let _ = self
                .api
                .execute("DELETE FROM instance_mappings WHERE instance_uuid = ?", sql_args![i.uuid.to_string()])
                .await;
            return Err(map_err(e));
        }
        Ok(())
    }

    async fn get_instance(&self, id: InstanceId) -> Result<Instance> {
        self.find(id).await?.map(|(_, i)| i).ok_or_else(|| Error::not_found(Kind::Instance, id))
    }

    /// The updates of a batch in parallel, as many at once as the API pool has
    /// connections: each is its own transaction in its instance's cell database, as Nova's
    /// `instance.save()` is.
    async fn update_instances(&self, updates: &[(InstanceId, InstancePatch)]) -> Result<Vec<Result<Instance>>> {
        let width = self.opts.pool_size as usize;
        Ok(crate::store::update_in_parallel(self, updates, width).await)
    }

    async fn update_instance(&self, id: InstanceId, patch: &InstancePatch) -> Result<Instance> {
        // Where the patched instance belongs is resolved before any transaction begins:
        // `slot_of` may read the API database, and a caller that holds a pooled connection
        // must never wait for another one (see `update_at`).
        let patched_loc = match patch.cell {
            Some(cell) => Some(self.loc_of_cell(cell).await?),
            None => None,
        };
        let mut backoff = std::time::Duration::from_millis(5);
        for attempt in 0..10 {
            let Some(loc) = self.mapping(id).await? else {
                return Err(Error::not_found(Kind::Instance, id));
            };
            match self.update_at(id, loc, patched_loc.unwrap_or(loc), patch).await {
                Ok(Some(inst)) => {
                    if let Some(deleted) = patch.deleted {
                        // Nova's queued_for_delete: what a listing that cannot reach the
                        // instance's cell database goes by (contract line 17). Written after
                        // the record, as Nova does; a failure here fails the update, whose
                        // patch the caller may simply repeat.
                        self.api
                            .execute(
                                "UPDATE instance_mappings SET queued_for_delete = ? WHERE instance_uuid = ?",
                                sql_args![deleted, id.to_string()],
                            )
                            .await?;
                    }
                    return Ok(inst);
                }
                Ok(None) => {}
                // A deadlock between concurrent moves (InnoDB gap locks on the build
                // requests and mappings): that attempt was rolled back; a move's committed
                // first step is replaced by the next attempt (`replace_at`).
                Err(e) if rolled_back(&e) && attempt < 9 => {
                    tracing::debug!(instance = %id, error = %e, "instance update rolled back; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Timeout { backend: "sql", message: format!("instance {id} kept moving while being updated") })
    }

    async fn delete_instance(&self, id: InstanceId) -> Result<()> {
        let Some((loc, _)) = self.find(id).await? else {
            return Err(Error::not_found(Kind::Instance, id));
        };
        let mut tx = self.pool_of(loc).begin().await.map_err(map_err)?;
        self.delete_at(&mut tx, loc, id).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        self.api.execute("DELETE FROM instance_mappings WHERE instance_uuid = ?", sql_args![id.to_string()]).await?;
        Ok(())
    }

    async fn repair_instance(&self, id: InstanceId) -> Result<()> {
        for _ in 0..5 {
            let Some(loc) = self.mapping(id).await? else {
                return Ok(());
            };
            if self.remove_stale_copies(id, loc).await? {
                return Ok(());
            }
        }
        // The mapping kept naming a database without the row: a create stopped half way,
        // or an instance moving faster than this looks. Nothing is removed.
        Ok(())
    }

    async fn list_instances(&self, q: &ListQuery) -> Result<InstancePage> {
        let after = match q.marker {
            Some(m) => Some(self.marker_key(m).await?),
            None => None,
        };
        let limit = q.effective_limit();
        if limit == 0 {
            return Ok(InstancePage::default());
        }
        let want = limit + 1;
        let f = &q.filters;
        let skip = q.partial || self.opts.down_cell == DownCell::Skip;
        let slots: Vec<usize> = match f.cell {
            Some(c) => vec![self.slot_of(c).await?],
            None => (0..self.cells.len()).collect(),
        };
        // Nova's 'distributed' batch size: limit / cells * 1.1, at least 100, at most limit.
        let batch = if slots.len() <= 1 {
            want
        } else {
            ((want as f64 / slots.len() as f64 * 1.1) as usize).clamp(100.min(want), want)
        };
        let mut streams: Vec<Stream> = Vec::with_capacity(slots.len() + 1);
        // Build requests first (completed before any cell is read: see the module docs).
        if f.cell.is_none() {
            let mut s = Stream { loc: Loc::Build, buf: VecDeque::new(), after, exhausted: false, skip, failed: None };
            self.fill(&mut s, f, want).await?;
            streams.push(s);
        }
        let mut cells: Vec<Stream> = slots
            .iter()
            .map(|slot| Stream {
                loc: Loc::Cell(*slot),
                buf: VecDeque::new(),
                after,
                exhausted: false,
                skip,
                failed: None,
            })
            .collect();
        match self.opts.list_strategy {
            ListStrategy::Concurrent => {
                let futs = cells.iter_mut().map(|s| self.fill(s, f, batch));
                for r in futures::future::join_all(futs).await {
                    r?;
                }
            }
            ListStrategy::Sequential => {
                for s in cells.iter_mut() {
                    self.fill(s, f, batch).await?;
                }
            }
        }
        streams.extend(cells);
        // Refill streams whose first batch was entirely filtered out, so every live stream
        // has a head (or is exhausted) before the merge starts.
        for s in streams.iter_mut() {
            while s.buf.is_empty() && !s.exhausted {
                let b = if s.loc == Loc::Build { want } else { batch };
                self.fill(s, f, b).await?;
            }
        }
        let mut heap: BinaryHeap<Reverse<(SortKey, usize)>> = BinaryHeap::new();
        for (n, s) in streams.iter().enumerate() {
            if let Some(i) = s.buf.front() {
                heap.push(Reverse((i.sort_key(), n)));
            }
        }
        let mut out: Vec<Instance> = Vec::with_capacity(want);
        let mut seen: HashSet<InstanceId> = HashSet::new();
        while let Some(Reverse((key, n))) = heap.pop() {
            let Some(first) = self.advance(&mut streams[n], n, &mut heap, f, want, batch).await? else {
                continue;
            };
            // Copies of one instance share its sort key, so they leave the heap together
            // (all of them, even across a page boundary).
            let mut copies = vec![(streams[n].loc, first)];
            while heap.peek().is_some_and(|Reverse((k, _))| *k == key) {
                let Some(Reverse((_, m))) = heap.pop() else {
                    break;
                };
                if let Some(i) = self.advance(&mut streams[m], m, &mut heap, f, want, batch).await? {
                    copies.push((streams[m].loc, i));
                }
            }
            let Some(i) = self.resolve_copies(key.uuid, copies).await? else {
                continue;
            };
            if seen.insert(i.uuid) {
                out.push(i);
                if out.len() == want {
                    break;
                }
            }
        }
        let next_marker = if out.len() > limit {
            out.truncate(limit);
            out.last().map(|i| i.uuid)
        } else {
            None
        };
        // The cell databases skipped (contract line 17): named in the page, and with a
        // partial query on a first page, their instances stubbed from the API database.
        let down: Vec<(usize, Error)> = streams
            .into_iter()
            .filter_map(|s| match (s.loc, s.failed) {
                (Loc::Cell(slot), Some(e)) => Some((slot, e)),
                _ => None,
            })
            .collect();
        let stubbed = q.partial && q.marker.is_none();
        let mut stubs: Vec<InstanceStub> = Vec::new();
        let mut unreachable = Vec::with_capacity(down.len());
        let room = limit.saturating_sub(out.len());
        for (slot, e) in down {
            if stubbed && room > 0 {
                let listed: HashSet<InstanceId> = out.iter().map(|i| i.uuid).collect();
                // More than the room by what is listed: an instance both listed and mapped to
                // the down cell (read before its cell failed, or a move between its steps) is
                // not stubbed.
                let got = self.stubs_of(slot, f, room + listed.len()).await?;
                stubs.extend(got.into_iter().filter(|s| !listed.contains(&s.uuid)));
            }
            unreachable.push(UnreachablePart {
                part: format!("cell database {}", self.cells[slot].label),
                reason: e.to_string(),
                stubbed,
            });
        }
        stubs.sort_by_key(InstanceStub::sort_key);
        stubs.dedup_by_key(|s| s.uuid);
        stubs.truncate(room);
        Ok(InstancePage { instances: out, next_marker, unreachable, stubs })
    }

    async fn instance_stub(&self, id: InstanceId) -> Result<Option<InstanceStub>> {
        let row = self
            .api
            .fetch_optional(
                "SELECT project_id, created_at, cell_uuid, queued_for_delete FROM instance_mappings \
                 WHERE instance_uuid = ?",
                sql_args![id.to_string()],
            )
            .await?;
        let Some(r) = row else {
            return Ok(None);
        };
        if r.bool(3)? {
            return Ok(None);
        }
        Ok(Some(InstanceStub {
            uuid: id,
            project_id: r.str(0)?,
            created_at: r.opt_i64(1)?.map(Timestamp::from_micros),
            cell: r.opt_uuid(2)?.map(CellId),
        }))
    }
}

async fn write_tags(tx: &mut Tx, i: &Instance) -> std::result::Result<(), sqlx::Error> {
    for t in &i.tags {
        tx.execute("INSERT INTO tags (resource_id, tag) VALUES (?, ?)", sql_args![i.uuid.to_string(), t]).await?;
    }
    Ok(())
}
