//! Key names and hash-tag shards (the layout is documented in `schema/redis/README.md`).
//!
//! Every key starts with the configured prefix. Keys that must be written together by one
//! script share a hash tag (`{...}`), so that they live in one Redis Cluster slot:
//!
//! * a provider tree, its allocations, its shard's tree and cell sets and its shard's change
//!   feed share the tree shard's tag `{tN.x}`;
//! * an instance record and its entries in the global and per-project listing indexes share
//!   the instance shard's tag `{iN.x}`.
//!
//! Shard tags are chosen so that shard `k` of `n` hashes into the `k`-th of `n` equal slot
//! ranges: `redis-cli --cluster create` gives each master an equal contiguous slot range, so
//! shards spread evenly over the masters instead of by chance.

use uuid::Uuid;

/// Redis Cluster's key slot function (CRC16-XMODEM of the hash tag, mod 16384).
pub fn slot(key: &[u8]) -> u16 {
    let tag = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(tag) % 16384
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// `n` hash tags (without braces) of kind `kind`, tag `k` hashing into slot range `k`.
pub fn shard_tags(kind: char, n: u32) -> Vec<String> {
    let n = n.max(1);
    (0..n)
        .map(|k| {
            let lo = (k as u64 * 16384 / n as u64) as u16;
            let hi = ((k as u64 + 1) * 16384 / n as u64) as u16;
            (0u32..)
                .map(|j| format!("{kind}{k}.{j}"))
                .find(|t| {
                    let s = slot(t.as_bytes());
                    s >= lo && s < hi.max(lo + 1)
                })
                .unwrap_or_else(|| format!("{kind}{k}"))
        })
        .collect()
}

/// The shard of a uuid among `n`.
pub fn shard_of(id: Uuid, n: usize) -> usize {
    (id.as_u128() % n.max(1) as u128) as usize
}

/// Key builder for one prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
    tree_tags: Vec<String>,
    inst_tags: Vec<String>,
}

impl Keys {
    /// Keys under `prefix` with the given shard counts.
    pub fn new(prefix: &str, tree_shards: u32, instance_shards: u32) -> Self {
        Keys {
            prefix: prefix.to_string(),
            tree_tags: shard_tags('t', tree_shards),
            inst_tags: shard_tags('i', instance_shards),
        }
    }

    /// The prefix's meta hash (shard counts).
    pub fn meta(prefix: &str) -> String {
        format!("{prefix}:meta")
    }

    /// Number of tree shards.
    pub fn tree_shards(&self) -> usize {
        self.tree_tags.len()
    }

    /// Number of instance shards.
    pub fn instance_shards(&self) -> usize {
        self.inst_tags.len()
    }

    /// The tree shard of a root.
    pub fn tree_shard(&self, root: Uuid) -> usize {
        shard_of(root, self.tree_tags.len())
    }

    fn t(&self, shard: usize) -> String {
        format!("{}:{{{}}}", self.prefix, self.tree_tags[shard])
    }

    /// The prefix of every tree hash key of a shard (`tree(root)` is this plus the root).
    pub fn tree_prefix(&self, shard: usize) -> String {
        format!("{}:tree:", self.t(shard))
    }

    /// A tree's hash.
    pub fn tree(&self, root: Uuid) -> String {
        format!("{}:tree:{root}", self.t(self.tree_shard(root)))
    }
    /// A tree's allocation hash (consumer -> record).
    pub fn alloc(&self, root: Uuid) -> String {
        format!("{}:alloc:{root}", self.t(self.tree_shard(root)))
    }
    /// A shard's set of roots.
    pub fn trees(&self, shard: usize) -> String {
        format!("{}:trees", self.t(shard))
    }
    /// Prefix of a shard's per-cell root sets.
    pub fn cell_prefix(&self, shard: usize) -> String {
        format!("{}:cell:", self.t(shard))
    }
    /// A shard's set of the roots of one cell.
    pub fn cell(&self, shard: usize, cell: Uuid) -> String {
        format!("{}{cell}", self.cell_prefix(shard))
    }
    /// A shard's change zset (root -> sequence of its last change).
    pub fn chg(&self, shard: usize) -> String {
        format!("{}:chg", self.t(shard))
    }
    /// A shard's feed hash (`seq`, `trimmed`).
    pub fn feed(&self, shard: usize) -> String {
        format!("{}:feed", self.t(shard))
    }
    /// A shard's replication barrier: a counter that claims and releases increment before
    /// Redis `WAIT` when the URL sets `wait_replicas`, so that the wait covers the state the
    /// script read even when the script itself wrote nothing.
    pub fn wait(&self, shard: usize) -> String {
        format!("{}:wait", self.t(shard))
    }
    /// A shard's tombstones of deleted trees.
    pub fn dead(&self, shard: usize) -> String {
        format!("{}:dead", self.t(shard))
    }

    /// Provider -> root mapping.
    pub fn prov(&self, provider: Uuid) -> String {
        format!("{}:prov:{provider}", self.prefix)
    }
    /// Provider name reservation.
    pub fn pname(&self, name: &str) -> String {
        format!("{}:pname:{name}", self.prefix)
    }
    /// A Placement registry hash (`classes` or `traits`): custom name -> creation time (µs).
    pub fn registry(&self, kind: &str) -> String {
        format!("{}:reg:{kind}", self.prefix)
    }
    /// A consumer's set of tree references.
    pub fn consumer(&self, consumer: Uuid) -> String {
        format!("{}:cons:{consumer}", self.prefix)
    }

    fn i(&self, shard: usize) -> String {
        format!("{}:{{{}}}", self.prefix, self.inst_tags[shard])
    }
    /// The instance shard of an instance.
    pub fn instance_shard(&self, id: Uuid) -> usize {
        shard_of(id, self.inst_tags.len())
    }
    /// An instance record.
    pub fn instance(&self, id: Uuid) -> String {
        format!("{}:inst:{id}", self.i(self.instance_shard(id)))
    }
    /// A shard's global listing index.
    pub fn inst_index(&self, shard: usize) -> String {
        format!("{}:idx", self.i(shard))
    }
    /// A shard's listing index of one project.
    pub fn inst_project(&self, shard: usize, project: &str) -> String {
        format!("{}:proj:{project}", self.i(shard))
    }

    /// A catalog hash (`cells`, `hosts`, `flavors`, `aggregates`, `groups`).
    pub fn catalog(&self, what: &str) -> String {
        format!("{}:{what}", self.prefix)
    }
    /// Host heartbeats (name -> µs), beside the hosts hash.
    pub fn host_beats(&self) -> String {
        self.catalog("beats")
    }
    /// An instance's request spec.
    pub fn spec(&self, instance: Uuid) -> String {
        format!("{}:spec:{instance}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
    }

    #[test]
    fn shard_tags_spread_over_ranges() {
        let tags = shard_tags('t', 64);
        for (k, t) in tags.iter().enumerate() {
            let s = slot(t.as_bytes()) as usize;
            assert_eq!(s * 64 / 16384, k, "{t}");
        }
        let keys = Keys::new("p", 64, 16);
        let root = Uuid::new_v4();
        assert_eq!(slot(keys.tree(root).as_bytes()), slot(keys.chg(keys.tree_shard(root)).as_bytes()));
    }
}
