//! The memory store's change feed.
//!
//! Every tree write appends `(seq, root)` to one of [`SHARDS`] logs chosen by root, taking
//! `seq` from a global counter *while holding that shard's lock*. A reader first reads the
//! counter, then scans the shards; any write with a smaller `seq` either is already in its
//! shard or is holding the shard's lock and will be seen when the reader gets it. So the
//! counter read first is a safe next cursor: nothing below it can be missed. Each shard keeps
//! the last [`SHARD_CAPACITY`] entries; an older cursor gets [`Changes::Resync`]. Catalog
//! writes are entries of the reserved root `CATALOG_ROOT`, recorded under the catalog's
//! lock, so they are announced exactly like tree writes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::model::*;
use crate::store::prelude::*;

use super::{MemoryStore, SHARD_CAPACITY, SHARDS, lock, read, shard_of};

#[derive(Default)]
struct LogShard {
    /// `(seq, root, generation the write left the tree at; None for a deletion)`.
    entries: VecDeque<(u64, ProviderId, Option<u64>)>,
    /// Highest seq dropped from this shard (0: none).
    dropped_upto: u64,
}

pub(super) struct ChangeLog {
    seq: AtomicU64,
    shards: Vec<Mutex<LogShard>>,
}

impl ChangeLog {
    pub(super) fn new() -> Self {
        ChangeLog { seq: AtomicU64::new(0), shards: (0..SHARDS).map(|_| Mutex::default()).collect() }
    }

    /// Records a write to `root`'s tree that left it at `generation` (`None`: the tree is
    /// gone, or the caller cannot say). Called while the tree's lock is held, so entries of
    /// one root carry rising generations.
    pub(super) fn record(&self, root: ProviderId, generation: Option<u64>) {
        let mut shard = lock(&self.shards[shard_of(&root, SHARDS)]);
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        shard.entries.push_back((seq, root, generation));
        if shard.entries.len() > SHARD_CAPACITY
            && let Some((dropped, _, _)) = shard.entries.pop_front()
        {
            shard.dropped_upto = dropped;
        }
    }

    fn cursor(&self) -> ChangeCursor {
        ChangeCursor(format!("mem:{}", self.seq.load(Ordering::SeqCst)))
    }

    fn since(&self, cursor: &ChangeCursor) -> Result<Changes> {
        let since: u64 = cursor.0.strip_prefix("mem:").and_then(|s| s.parse().ok()).ok_or_else(|| {
            Error::invalid("change cursor", format!("{:?} was not issued by a memory store", cursor.0))
        })?;
        let next = self.seq.load(Ordering::SeqCst);
        // root -> generation of its latest entry (None: re-read it).
        let mut latest: BTreeMap<ProviderId, Option<u64>> = BTreeMap::new();
        for shard in &self.shards {
            let shard = lock(shard);
            if shard.dropped_upto > since {
                return Ok(Changes::Resync);
            }
            let start = shard.entries.partition_point(|(s, _, _)| *s <= since);
            // Entries are in seq order, so the last one of a root is its latest write.
            for (_, root, generation) in shard.entries.range(start..) {
                latest.insert(*root, *generation);
            }
        }
        let generations = latest.iter().filter_map(|(r, g)| g.map(|g| (*r, g))).collect();
        Ok(Changes::from_feed(latest.into_keys(), generations, BTreeMap::new(), ChangeCursor(format!("mem:{next}"))))
    }
}

#[async_trait]
impl ChangeFeed for MemoryStore {
    async fn change_cursor(&self) -> Result<ChangeCursor> {
        Ok(self.changes.cursor())
    }

    async fn changes_since(&self, cursor: &ChangeCursor) -> Result<Changes> {
        let mut changes = self.changes.since(cursor)?;
        if let Changes::Trees { roots, generations, usages, .. } = &mut changes {
            // Each tree is read under its lock, so its generation and usage agree; the
            // generation may be past the log's (a write after `next`), never behind it.
            for root in roots.iter() {
                let Some(tree) = read(&self.trees).get(root).cloned() else {
                    continue;
                };
                let state = lock(&tree);
                let Some((start, last)) = state.usage_run else {
                    continue;
                };
                if state.deleted || last != state.tree.generation {
                    continue;
                }
                generations.insert(*root, last);
                usages.insert(
                    *root,
                    TreeUsage {
                        generation: last,
                        usage_only_since: start,
                        used: state
                            .tree
                            .providers
                            .iter()
                            .map(|p| (p.id, p.usages.iter().filter(|(_, n)| **n != 0).map(|(c, n)| (c.clone(), *n))))
                            .map(|(id, used)| (id, used.collect::<Resources>()))
                            .filter(|(_, used)| !used.is_empty())
                            .collect(),
                        groups: state.tree.groups.clone(),
                    },
                );
            }
        }
        Ok(changes)
    }
}
