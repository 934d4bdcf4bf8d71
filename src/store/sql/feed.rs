//! The change feed on SQL, in the API database: `change_shards` holds one sequence counter
//! per shard and `tree_changes` one row per tree write, appended inside the write's own
//! transaction (the shard row stays locked until commit, so a shard's entries commit in
//! sequence order). A cursor is the vector of shard counters; old rows are pruned now and
//! then, and a cursor older than what was pruned gets [`Changes::Resync`]. Catalog writes
//! are rows of the reserved root `CATALOG_ROOT` (`announce_catalog`).

use std::collections::BTreeSet;

use async_trait::async_trait;

use super::SqlStore;
use super::conn::{Arg, Dialect, Tx};
use super::trees::Fail;
use crate::error::{Error, Result};
use crate::model::*;
use crate::sql_args;
use crate::store::prelude::*;

/// Shards of the change feed (rows of `change_shards`).
pub(crate) const CHANGE_SHARDS: usize = 16;

/// Change-log rows kept per shard before old ones are pruned (older cursors resync).
const CHANGE_KEEP: i64 = 8192;

fn shard_of(root: ProviderId) -> i64 {
    (root.0.as_bytes()[15] as usize % CHANGE_SHARDS) as i64
}

impl SqlStore {
    /// Appends a change-feed entry for `root` inside `tx` (the shard row stays locked until
    /// commit, so a shard's entries commit in sequence order).
    pub(super) async fn log_change(&self, tx: &mut Tx, root: ProviderId) -> Result<(), Fail> {
        let shard = shard_of(root);
        match self.dialect {
            Dialect::MySql => {
                tx.execute("UPDATE change_shards SET seq = LAST_INSERT_ID(seq + 1) WHERE shard = ?", sql_args![shard])
                    .await?;
                tx.execute(
                    "INSERT INTO tree_changes (shard, seq, root_uuid) VALUES (?, LAST_INSERT_ID(), ?)",
                    sql_args![shard, root.to_string()],
                )
                .await?;
            }
            Dialect::Postgres => {
                tx.execute(
                    "WITH s AS (UPDATE change_shards SET seq = seq + 1 WHERE shard = ? RETURNING seq) \
                     INSERT INTO tree_changes (shard, seq, root_uuid) SELECT ?, seq, ? FROM s",
                    sql_args![shard, shard, root.to_string()],
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Announces a catalog write (cell, host record, aggregate) under `CATALOG_ROOT`, in a
    /// transaction of its own after the write: host records live in the cell databases, so
    /// the write and its entry cannot share a transaction in general. A writer that dies
    /// between the two leaves the write unannounced until the readers' periodic catalog read.
    pub(super) async fn announce_catalog(&self) -> Result<()> {
        for attempt in 0..=self.opts.claim_retries {
            if attempt > 0 {
                super::backoff(attempt).await;
            }
            let entry: Result<(), Fail> = async {
                let mut tx = self.api.begin().await?;
                self.log_change(&mut tx, CATALOG_ROOT).await?;
                tx.commit().await?;
                Ok(())
            }
            .await;
            match entry {
                Ok(()) => return Ok(()),
                Err(Fail::Err(e)) => return Err(e),
                Err(Fail::Retry) => {}
            }
        }
        Err(Error::Timeout {
            backend: "sql",
            message: "announcing a catalog write in the change feed kept deadlocking".to_string(),
        })
    }

    /// Now and then, drops old change-log rows of a shard (outside any claim transaction).
    pub(super) async fn maybe_prune(&self, root: ProviderId) {
        if uuid::Uuid::new_v4().as_bytes()[0] != 0 {
            return; // about one write in 256
        }
        let shard = shard_of(root);
        // pruned_upto first, then the delete: a reader that checks pruned_upto after
        // reading rows never misses a deleted row without noticing.
        let r = async {
            self.api
                .execute(
                    self.dialect.pick(
                        "UPDATE change_shards SET pruned_upto = GREATEST(pruned_upto, seq - ?) WHERE shard = ?",
                        "UPDATE change_shards SET pruned_upto = GREATEST(pruned_upto, seq - ?) WHERE shard = ?",
                    ),
                    sql_args![CHANGE_KEEP, shard],
                )
                .await?;
            self.api
                .execute(
                    "DELETE FROM tree_changes WHERE shard = ? AND seq <= \
                     (SELECT pruned_upto FROM change_shards WHERE shard = ?)",
                    sql_args![shard, shard],
                )
                .await
        }
        .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "pruning the change feed failed");
        }
    }
}

#[async_trait]
impl ChangeFeed for SqlStore {
    async fn change_cursor(&self) -> Result<ChangeCursor> {
        let rows = self.api.fetch_all("SELECT shard, seq FROM change_shards ORDER BY shard", vec![]).await?;
        let mut seqs = [0i64; CHANGE_SHARDS];
        for r in &rows {
            if let Some(s) = usize::try_from(r.i64(0)?).ok().filter(|s| *s < CHANGE_SHARDS) {
                seqs[s] = r.i64(1)?;
            }
        }
        Ok(ChangeCursor(format!("sql:{}", seqs.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(","))))
    }

    async fn changes_since(&self, cursor: &ChangeCursor) -> Result<Changes> {
        let bad = || Error::invalid("change cursor", format!("{:?} was not issued by a sql store", cursor.0));
        let since: Vec<i64> = cursor
            .0
            .strip_prefix("sql:")
            .ok_or_else(bad)?
            .split(',')
            .map(|s| s.parse::<i64>().map_err(|_| bad()))
            .collect::<Result<_>>()?;
        if since.len() != CHANGE_SHARDS {
            return Err(bad());
        }
        // 1. the next cursor (everything at or below it has committed), 2. the rows,
        // 3. pruned_upto (after the rows: see maybe_prune).
        let next = self.change_cursor().await?;
        let mut cond = Vec::new();
        let mut args = Vec::new();
        for (shard, s) in since.iter().enumerate() {
            cond.push("(shard = ? AND seq > ?)");
            args.push(Arg::I64(shard as i64));
            args.push(Arg::I64(*s));
        }
        let rows = self
            .api
            .fetch_all(
                self.sql(format!("SELECT DISTINCT root_uuid FROM tree_changes WHERE {}", cond.join(" OR "))),
                args,
            )
            .await?;
        let pruned = self.api.fetch_all("SELECT shard, pruned_upto FROM change_shards", vec![]).await?;
        for r in &pruned {
            let shard = usize::try_from(r.i64(0)?).unwrap_or(usize::MAX);
            if let Some(s) = since.get(shard)
                && *s < r.i64(1)?
            {
                return Ok(Changes::Resync);
            }
        }
        let mut roots = BTreeSet::new();
        for r in &rows {
            roots.insert(ProviderId(r.uuid(0)?));
        }
        // The feed's rows name trees, not generations: every reported tree is re-read.
        Ok(Changes::from_feed(roots, Default::default(), Default::default(), next))
    }
}
