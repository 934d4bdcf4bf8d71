//! The change feed of provider trees, for the scheduler's snapshot.
//!
//! Every tree write appends `(bucket, shard, ts, root)` to `tree_changes` twice: once
//! before the write (an intent: a crash after the write cannot hide the change) and once
//! after it (a reader that saw the intent too early and re-read the old tree sees the
//! change again). `ts` is the writer's clock in microseconds, `bucket = ts / 10 s`, `shard =
//! root % 4`.
//!
//! A cursor is a time `c`. [`changes_since`](crate::store::ChangeFeed::changes_since) reads,
//! for every bucket from `c - WINDOW` to now and every shard, the slice `ts >= c - WINDOW`,
//! and returns the roots found plus the cursor `now`. The safety window covers the time
//! between a writer taking `ts` and its row becoming visible, and clock skew between
//! clients: a change is reported at least once, possibly a few times. The cost is the
//! number of changes in the window plus `4 x buckets` slices, never a scan of the trees.
//! Rows expire after two hours; a cursor older than one hour gets `Resync`.

use std::collections::BTreeSet;

use async_trait::async_trait;

use super::CqlStore;
use super::conn::*;
use crate::error::{Error, Result};
use crate::model::{ChangeCursor, Changes, ProviderId, Timestamp};
use crate::store::prelude::*;

const BUCKET_US: i64 = 10_000_000;
const SHARDS: i32 = 4;
const WINDOW_US: i64 = 5_000_000;
const RETENTION_US: i64 = 3_600_000_000;
const PREFIX: &str = "cql1:";

impl CqlStore {
    /// Appends a change record for `root` (see the module doc).
    pub(crate) async fn record_change(&self, root: ProviderId) -> Result<()> {
        let ts = Timestamp::now().as_micros();
        let shard = (root.0.as_u128() % SHARDS as u128) as i32;
        self.db
            .exec(
                "INSERT INTO tree_changes (bucket, shard, ts, root) VALUES (?, ?, ?, ?)",
                vec![big(ts / BUCKET_US), int(shard), big(ts), uuid(root.0)],
            )
            .await
    }
}

#[async_trait]
impl ChangeFeed for CqlStore {
    async fn change_cursor(&self) -> Result<ChangeCursor> {
        Ok(ChangeCursor(format!("{PREFIX}{}", Timestamp::now().as_micros())))
    }

    async fn changes_since(&self, cursor: &ChangeCursor) -> Result<Changes> {
        let since: i64 =
            cursor.0.strip_prefix(PREFIX).and_then(|s| s.parse().ok()).ok_or_else(|| {
                Error::invalid("change cursor", format!("{:?} was not issued by a CQL store", cursor.0))
            })?;
        let now = Timestamp::now().as_micros();
        let from = since.saturating_sub(WINDOW_US);
        if now.saturating_sub(from) > RETENTION_US {
            return Ok(Changes::Resync);
        }
        let slices: Vec<(i64, i32)> = ((from / BUCKET_US)..=(now.max(from) / BUCKET_US))
            .flat_map(|bucket| (0..SHARDS).map(move |shard| (bucket, shard)))
            .collect();
        // At most 64 slices in flight: an old cursor means many (empty) buckets.
        use futures::{StreamExt, TryStreamExt};
        let results: Vec<Vec<scylla::value::Row>> = futures::stream::iter(slices)
            .map(|(bucket, shard)| {
                self.db.query(
                    "SELECT root FROM tree_changes WHERE bucket = ? AND shard = ? AND ts >= ?",
                    vec![big(bucket), int(shard), big(from)],
                )
            })
            .buffer_unordered(64)
            .try_collect()
            .await?;
        let mut roots = BTreeSet::new();
        for rows in results {
            roots.extend(rows.iter().filter_map(|r| get_uuid(r, 0)).map(ProviderId));
        }
        // Feed rows name trees, not generations: every reported tree is re-read.
        Ok(Changes::from_feed(roots, Default::default(), Default::default(), ChangeCursor(format!("{PREFIX}{now}"))))
    }
}
