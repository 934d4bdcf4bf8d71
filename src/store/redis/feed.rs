//! The change feed on Redis.
//!
//! Each tree shard has a counter (`feed.seq`) and a sorted set `chg` of root -> sequence of
//! the root's last change, both written by the same script as the change itself. A cursor is
//! the vector of shard counters; [`changes_since`](ChangeFeed::changes_since) reads, per shard and
//! atomically, the counter and the roots whose score is above the cursor. No clock is
//! involved, so concurrent writers and clock skew cannot hide a change, and the cost is one
//! small read per shard plus the changed roots. Deleted trees leave tombstones; when more
//! than `tombstones` (URL option, default 4,096) accumulate in a shard the oldest are
//! dropped and cursors older than them get [`Changes::Resync`].

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;

use super::RedisStore;
use super::codec::*;
use super::conn::corrupt;
use crate::error::{Error, Result};
use crate::model::*;
use crate::store::prelude::*;

#[async_trait]
impl ChangeFeed for RedisStore {
    async fn change_cursor(&self) -> Result<ChangeCursor> {
        let cmds = (0..self.keys.tree_shards())
            .map(|s| {
                let mut c = redis::cmd("HGET");
                c.arg(self.keys.feed(s)).arg("seq");
                c
            })
            .collect();
        let seqs: Vec<String> = self.pool.bulk(cmds).await?.iter().map(|v| int(v).unwrap_or(0).to_string()).collect();
        Ok(ChangeCursor(format!("r1:{}", seqs.join(","))))
    }

    async fn changes_since(&self, cursor: &ChangeCursor) -> Result<Changes> {
        let bad = || Error::invalid("change cursor", format!("{:?} was not issued by this redis store", cursor.0));
        let since: Vec<i64> = cursor
            .0
            .strip_prefix("r1:")
            .ok_or_else(bad)?
            .split(',')
            .map(|s| s.parse::<i64>().map_err(|_| bad()))
            .collect::<Result<_>>()?;
        if since.len() != self.keys.tree_shards() {
            return Err(bad());
        }
        let cmds = since
            .iter()
            .enumerate()
            .map(|(s, n)| {
                self.pool.scripts.feed_read.cmd(
                    &[self.keys.chg(s), self.keys.feed(s)],
                    &[n.to_string(), self.keys.tree_prefix(s), self.writer.clone()],
                )
            })
            .collect();
        let mut roots = BTreeSet::new();
        let mut generations = BTreeMap::new();
        let mut usages = BTreeMap::new();
        let mut next = Vec::with_capacity(since.len());
        for (s, v) in self.pool.bulk(cmds).await?.into_iter().enumerate() {
            let r = Reply::from(v)?;
            let (seq, trimmed) = (r.i(0)?, r.i(1)?);
            // Trimmed past the cursor, or the counter went backwards (data lost, e.g. a
            // server restarted without persistence): the feed cannot vouch for the gap.
            if since[s] < trimmed || since[s] > seq {
                return Ok(Changes::Resync);
            }
            if r.0.len() % 4 != 2 {
                return Err(corrupt("feed reply (a root without its generation and usage)"));
            }
            for i in (2..r.0.len()).step_by(4) {
                let root = r.s(i)?.parse::<ProviderId>().map_err(|_| corrupt("feed root"))?;
                roots.insert(root);
                let generation = r.s(i + 1)?;
                if generation.is_empty() {
                    continue;
                }
                let generation = generation.parse::<u64>().map_err(|_| corrupt("feed generation"))?;
                generations.insert(root, generation);
                let from = r.s(i + 2)?;
                if !from.is_empty() {
                    let usage_only_since = from.parse::<u64>().map_err(|_| corrupt("feed usage run"))?;
                    usages.insert(root, decode_usage(generation, usage_only_since, &r.s(i + 3)?)?);
                }
            }
            next.push(seq.max(since[s]).to_string());
        }
        Ok(Changes::from_feed(roots, generations, usages, ChangeCursor(format!("r1:{}", next.join(",")))))
    }
}

/// A tree's usage from `feed_read.lua`: `u:PROVIDER:CLASS=n` and `g:GROUP=n`, comma-separated.
fn decode_usage(generation: u64, usage_only_since: u64, fields: &str) -> Result<TreeUsage> {
    let mut usage = TreeUsage { generation, usage_only_since, ..Default::default() };
    for item in fields.split(',').filter(|s| !s.is_empty()) {
        let (field, n) = item.split_once('=').ok_or_else(|| corrupt(format!("feed usage {item:?}")))?;
        let n: i64 = n.parse().map_err(|_| corrupt(format!("feed usage {item:?}")))?;
        if n <= 0 {
            continue;
        }
        if let Some(rest) = field.strip_prefix("u:") {
            let (p, c) = rest.split_once(':').ok_or_else(|| corrupt(format!("feed usage {item:?}")))?;
            let p: ProviderId = p.parse().map_err(|_| corrupt(format!("feed usage {item:?}")))?;
            let c = ResourceClass::parse(c).map_err(|_| corrupt(format!("feed usage {item:?}")))?;
            usage.used.entry(p).or_default().insert(c, n);
        } else if let Some(g) = field.strip_prefix("g:") {
            let g: GroupId = g.parse().map_err(|_| corrupt(format!("feed usage {item:?}")))?;
            usage.groups.insert(g, u32::try_from(n).unwrap_or(u32::MAX));
        }
    }
    Ok(usage)
}
