//! Encodings of values stored in Redis and of script replies.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use redis::Value;

use super::conn::corrupt;
use crate::error::Result;
use crate::model::*;

/// An inventory as stored in a tree hash: `capacity min max step total reserved ratio`. The
/// scripts read the first four numbers; capacity is computed here, by the same function
/// every backend uses, rather than in Lua.
pub fn inv_string(inv: &Inventory) -> String {
    format!(
        "{} {} {} {} {} {} {}",
        inv.capacity(),
        inv.min_unit,
        inv.max_unit,
        inv.step_size,
        inv.total,
        inv.reserved,
        inv.allocation_ratio
    )
}

/// Parses [`inv_string`].
pub fn parse_inv(s: &str) -> Result<Inventory> {
    let f: Vec<&str> = s.split(' ').collect();
    if f.len() != 7 {
        return Err(corrupt(format!("inventory {s:?}")));
    }
    let int = |x: &str| x.parse::<i64>().map_err(|_| corrupt(format!("inventory {s:?}")));
    Ok(Inventory {
        min_unit: int(f[1])?,
        max_unit: int(f[2])?,
        step_size: int(f[3])?,
        total: int(f[4])?,
        reserved: int(f[5])?,
        allocation_ratio: f[6].parse().map_err(|_| corrupt(format!("inventory {s:?}")))?,
    })
}

/// Comma-joined set (traits and aggregates never contain commas).
pub fn csv<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items.into_iter().map(|t| t.to_string()).collect::<Vec<_>>().join(",")
}

fn parse_csv<T: FromStr + Ord>(s: &str) -> Result<BTreeSet<T>> {
    s.split(',').filter(|x| !x.is_empty()).map(|x| x.parse().map_err(|_| corrupt(format!("list item {x:?}")))).collect()
}

/// The canonical text of an allocation map: `provider=CLASS=amount` items joined by commas,
/// in key order, empty providers dropped. Two maps are equal exactly when their signatures
/// are, which is how the claim script recognises a replay.
pub fn signature(allocations: &AllocationMap) -> String {
    let mut out = String::new();
    for (p, resources) in allocations {
        for (c, a) in resources {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(&format!("{p}={c}={a}"));
        }
    }
    out
}

/// Parses [`signature`].
pub fn parse_signature(s: &str) -> Result<AllocationMap> {
    let mut out = AllocationMap::new();
    for item in s.split(',').filter(|x| !x.is_empty()) {
        let mut it = item.split('=');
        let (Some(p), Some(c), Some(a), None) = (it.next(), it.next(), it.next(), it.next()) else {
            return Err(corrupt(format!("allocation item {item:?}")));
        };
        let p: ProviderId = p.parse().map_err(|_| corrupt(format!("provider {p:?}")))?;
        let c = ResourceClass::parse(c).map_err(|_| corrupt(format!("class {c:?}")))?;
        let a: i64 = a.parse().map_err(|_| corrupt(format!("amount {a:?}")))?;
        out.entry(p).or_default().insert(c, a);
    }
    Ok(out)
}

/// Metadata of an allocation record.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct AllocMeta {
    /// Project.
    pub p: String,
    /// User.
    pub u: String,
}

/// Parses an allocation record `token \n group \n signature \n meta-json`.
pub fn parse_alloc(consumer: &str, root: ProviderId, rec: &str) -> Result<(String, TreeAllocation)> {
    let mut it = rec.splitn(4, '\n');
    let (Some(token), Some(group), Some(sig), Some(meta)) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(corrupt(format!("allocation record of {consumer}")));
    };
    let meta: AllocMeta = serde_json::from_str(meta).map_err(|e| corrupt(format!("allocation meta: {e}")))?;
    Ok((
        token.to_string(),
        TreeAllocation {
            consumer: consumer.parse().map_err(|_| corrupt(format!("consumer {consumer:?}")))?,
            root,
            project_id: meta.p,
            user_id: meta.u,
            group: if group.is_empty() {
                None
            } else {
                Some(group.parse().map_err(|_| corrupt(format!("group {group:?}")))?)
            },
            allocations: parse_signature(sig)?,
        },
    ))
}

/// Text of a reply value (bulk or simple string, or an integer printed).
pub fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

/// Integer of a reply value.
pub fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other).and_then(|s| s.parse().ok()),
    }
}

/// A script reply: `{status, ...}`.
pub struct Reply(pub Vec<Value>);

impl Reply {
    /// Splits a script reply.
    pub fn from(v: Value) -> Result<Self> {
        match v {
            Value::Array(a) if !a.is_empty() => Ok(Reply(a)),
            other => Err(corrupt(format!("script reply {other:?}"))),
        }
    }
    /// The status word.
    pub fn status(&self) -> String {
        self.0.first().and_then(text).unwrap_or_default()
    }
    /// Element `i` as text.
    pub fn s(&self, i: usize) -> Result<String> {
        self.0.get(i).and_then(text).ok_or_else(|| corrupt(format!("script reply element {i}")))
    }
    /// Element `i` as an integer.
    pub fn i(&self, i: usize) -> Result<i64> {
        self.0.get(i).and_then(int).ok_or_else(|| corrupt(format!("script reply element {i}")))
    }
    /// Element `i` as a u64.
    pub fn u(&self, i: usize) -> Result<u64> {
        u64::try_from(self.i(i)?).map_err(|_| corrupt(format!("script reply element {i}")))
    }
}

/// Pairs of an HGETALL reply (RESP2 array or RESP3 map).
pub fn pairs(v: Value) -> Result<Vec<(String, String)>> {
    match v {
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len() / 2);
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                out.push((
                    text(&k).ok_or_else(|| corrupt("hash field"))?,
                    text(&v).ok_or_else(|| corrupt("hash value"))?,
                ));
            }
            Ok(out)
        }
        Value::Map(m) => m
            .into_iter()
            .map(|(k, v)| {
                Ok((text(&k).ok_or_else(|| corrupt("hash field"))?, text(&v).ok_or_else(|| corrupt("hash value"))?))
            })
            .collect(),
        Value::Nil => Ok(Vec::new()),
        other => Err(corrupt(format!("hash reply {other:?}"))),
    }
}

/// Members of a SMEMBERS/ZRANGE reply.
pub fn members(v: Value) -> Result<Vec<String>> {
    match v {
        Value::Array(items) | Value::Set(items) => {
            items.iter().map(|x| text(x).ok_or_else(|| corrupt("set member"))).collect()
        }
        Value::Nil => Ok(Vec::new()),
        other => Err(corrupt(format!("set reply {other:?}"))),
    }
}

#[derive(Default)]
struct NodeParts {
    seq: i64,
    parent: Option<ProviderId>,
    name: String,
    traits: BTreeSet<Trait>,
    aggregates: BTreeSet<AggregateId>,
    inventories: BTreeMap<ResourceClass, Inventory>,
    usages: Resources,
}

/// Decodes a tree hash (HGETALL) into a tree; `None` when the hash is empty (no tree).
pub fn decode_tree(root: ProviderId, fields: Vec<(String, String)>) -> Result<Option<ProviderTree>> {
    if fields.is_empty() {
        return Ok(None);
    }
    let mut generation = None;
    let mut cell = None;
    let mut nodes: BTreeMap<ProviderId, NodeParts> = BTreeMap::new();
    let mut groups = BTreeMap::new();
    let pid = |s: &str| -> Result<ProviderId> { s.parse().map_err(|_| corrupt(format!("provider {s:?}"))) };
    for (f, v) in fields {
        if f == "gen" {
            generation = Some(v.parse::<u64>().map_err(|_| corrupt("generation"))?);
        } else if f == "cell" {
            if !v.is_empty() {
                cell = Some(v.parse().map_err(|_| corrupt(format!("cell {v:?}")))?);
            }
        } else if let Some(p) = f.strip_prefix("p:") {
            let mut it = v.splitn(3, '|');
            let (Some(seq), Some(parent), Some(name)) = (it.next(), it.next(), it.next()) else {
                return Err(corrupt(format!("provider record {v:?}")));
            };
            let n = nodes.entry(pid(p)?).or_default();
            n.seq = seq.parse().map_err(|_| corrupt("provider seq"))?;
            n.parent = if parent.is_empty() { None } else { Some(pid(parent)?) };
            n.name = name.to_string();
        } else if let Some(p) = f.strip_prefix("t:") {
            nodes.entry(pid(p)?).or_default().traits = parse_csv(&v)?;
        } else if let Some(p) = f.strip_prefix("ag:") {
            nodes.entry(pid(p)?).or_default().aggregates = parse_csv(&v)?;
        } else if let Some(rest) = f.strip_prefix("inv:") {
            let (p, c) = rest.split_once(':').ok_or_else(|| corrupt(&f))?;
            let c = ResourceClass::parse(c).map_err(|_| corrupt(&f))?;
            nodes.entry(pid(p)?).or_default().inventories.insert(c, parse_inv(&v)?);
        } else if let Some(rest) = f.strip_prefix("u:") {
            let (p, c) = rest.split_once(':').ok_or_else(|| corrupt(&f))?;
            let c = ResourceClass::parse(c).map_err(|_| corrupt(&f))?;
            let used: i64 = v.parse().map_err(|_| corrupt(&f))?;
            if used > 0 {
                nodes.entry(pid(p)?).or_default().usages.insert(c, used);
            }
        } else if let Some(g) = f.strip_prefix("g:") {
            let n: i64 = v.parse().map_err(|_| corrupt(&f))?;
            if n > 0 {
                groups.insert(g.parse().map_err(|_| corrupt(&f))?, u32::try_from(n).unwrap_or(u32::MAX));
            }
        }
    }
    let Some(generation) = generation else {
        return Ok(None);
    };
    let mut ordered: Vec<(ProviderId, NodeParts)> = nodes.into_iter().filter(|(_, n)| !n.name.is_empty()).collect();
    ordered.sort_by_key(|(id, n)| (n.seq, *id));
    Ok(Some(ProviderTree {
        root,
        generation,
        cell,
        providers: ordered
            .into_iter()
            .map(|(id, n)| ProviderNode {
                id,
                name: n.name,
                parent: n.parent,
                traits: n.traits,
                aggregates: n.aggregates,
                inventories: n.inventories,
                usages: n.usages,
            })
            .collect(),
        groups,
    }))
}

/// The listing index member of an instance: `(u64::MAX - created_at)` as 16 hex digits, then
/// the uuid's bytes inverted as 32 hex digits. Ascending byte order of members (ZRANGEBYLEX)
/// is then exactly the listing order: `created_at` descending, then uuid descending.
pub fn index_member(created_at: Timestamp, uuid: InstanceId) -> String {
    let t = u64::MAX - u64::try_from(created_at.as_micros()).unwrap_or(0);
    format!("{t:016x}{:032x}", !uuid.0.as_u128())
}

/// The instance uuid of an index member.
pub fn member_uuid(m: &str) -> Result<InstanceId> {
    m.get(16..48)
        .and_then(|h| u128::from_str_radix(h, 16).ok())
        .map(|x| InstanceId(uuid::Uuid::from_u128(!x)))
        .ok_or_else(|| corrupt(format!("index member {m:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_members_sort_in_listing_order() {
        let mut keys = Vec::new();
        for t in [5i64, 5, 7, 1_795_000_000_000_000, 0] {
            let id = InstanceId::new_v4();
            keys.push((
                SortKey { created_at: Timestamp::from_micros(t), uuid: id },
                index_member(Timestamp::from_micros(t), id),
            ));
        }
        let mut by_key = keys.clone();
        by_key.sort_by_key(|a| a.0);
        let mut by_member = keys.clone();
        by_member.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(by_key, by_member);
        for (k, m) in &keys {
            assert_eq!(member_uuid(m).unwrap(), k.uuid);
        }
    }

    #[test]
    fn inventories_and_signatures_round_trip() {
        let inv = Inventory { total: 10, reserved: 3, allocation_ratio: 1.5, step_size: 2, ..Inventory::default() };
        assert_eq!(parse_inv(&inv_string(&inv)).unwrap(), inv);
        let p = ProviderId::new_v4();
        let mut a = AllocationMap::new();
        a.entry(p).or_default().insert(ResourceClass::Vcpu, 2);
        a.entry(p).or_default().insert(ResourceClass::parse("CUSTOM_X").unwrap(), 7);
        assert_eq!(parse_signature(&signature(&a)).unwrap(), a);
    }
}
