//! The catalog on Redis: one hash per kind (cells, hosts, flavors, aggregates, server
//! groups) of JSON records, and one key per request spec. Host heartbeats have a hash of
//! their own (`P:beats`), so that a report writes one small field and a scheduler re-reads
//! liveness without the records; cell, host and aggregate writes are announced in
//! the change feed under the reserved root `CATALOG_ROOT`.

use async_trait::async_trait;
use redis::Value;

use super::{RedisStore, from_json, json};
use crate::error::{Error, Kind, Result};
use crate::model::*;
use crate::store::prelude::*;

impl RedisStore {
    async fn hash_put(&self, what: &str, field: String, value: String) -> Result<()> {
        self.pool
            .query::<Value>(redis::cmd("HSET").arg(self.keys.catalog(what)).arg(field).arg(value))
            .await
            .map(|_| ())
    }

    async fn hash_get<T: serde::de::DeserializeOwned>(&self, what: &str, field: String, kind: Kind) -> Result<T> {
        let v: Option<String> = self.pool.query(redis::cmd("HGET").arg(self.keys.catalog(what)).arg(&field)).await?;
        from_json(&v.ok_or_else(|| Error::not_found(kind, &field))?)
    }

    async fn hash_values<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<Vec<T>> {
        let v: Vec<String> = self.pool.query(redis::cmd("HVALS").arg(self.keys.catalog(what))).await?;
        v.iter().map(|s| from_json(s)).collect()
    }

    /// Announces a catalog write in the change feed (after the write: a reader that sees
    /// the entry reads the written record). The record and the entry live in different
    /// slots, so they are two steps: a writer that dies between them leaves its write
    /// unannounced until the readers' periodic catalog read.
    async fn announce_catalog(&self) -> Result<()> {
        let shard = self.keys.tree_shard(CATALOG_ROOT.0);
        let cmd = self
            .pool
            .scripts
            .feed_touch
            .cmd(&[self.keys.chg(shard), self.keys.feed(shard)], &[CATALOG_ROOT.to_string()]);
        self.pool.eval::<Value>(&cmd).await.map(|_| ())
    }

    /// Records a heartbeat (never backwards: `beat.lua`).
    async fn beat(&self, name: &str, at: Timestamp) -> Result<()> {
        let cmd =
            self.pool.scripts.beat.cmd(&[self.keys.host_beats()], &[name.to_string(), at.as_micros().to_string()]);
        self.pool.eval::<Value>(&cmd).await.map(|_| ())
    }

    /// Every host's last report (µs), from the heartbeat hash.
    async fn beats(&self) -> Result<std::collections::HashMap<String, i64>> {
        self.pool.query(redis::cmd("HGETALL").arg(self.keys.host_beats())).await
    }
}

#[async_trait]
impl Catalog for RedisStore {
    async fn put_cell(&self, cell: &Cell) -> Result<()> {
        if cell.name.is_empty() {
            return Err(Error::invalid("cell.name", "must not be empty"));
        }
        self.hash_put("cells", cell.id.to_string(), json(cell)?).await?;
        self.announce_catalog().await
    }

    async fn get_cell(&self, id: CellId) -> Result<Cell> {
        self.hash_get("cells", id.to_string(), Kind::Cell).await
    }

    async fn list_cells(&self) -> Result<Vec<Cell>> {
        let mut v: Vec<Cell> = self.hash_values("cells").await?;
        v.sort_by_key(|c| c.id);
        Ok(v)
    }

    async fn put_host(&self, host: &Host) -> Result<()> {
        if host.name.is_empty() || host.name.len() > 255 {
            return Err(Error::invalid("host.name", "must be 1 to 255 characters"));
        }
        // The record, then its heartbeat (another key, maybe another Cluster slot). A writer
        // that stops between them leaves the heartbeat hash behind the record, which reads
        // merge (the later of the two) and the next report catches up.
        self.hash_put("hosts", host.name.clone(), json(host)?).await?;
        self.beat(&host.name, host.last_heartbeat).await?;
        self.announce_catalog().await
    }

    async fn get_host(&self, name: &str) -> Result<Host> {
        let mut host: Host = self.hash_get("hosts", name.to_string(), Kind::Host).await?;
        let beat: Option<i64> = self.pool.query(redis::cmd("HGET").arg(self.keys.host_beats()).arg(name)).await?;
        if let Some(at) = beat {
            host.last_heartbeat = host.last_heartbeat.max(Timestamp::from_micros(at));
        }
        Ok(host)
    }

    async fn list_hosts(&self, cell: Option<CellId>) -> Result<Vec<Host>> {
        let (mut v, beats): (Vec<Host>, _) = futures::try_join!(self.hash_values("hosts"), self.beats())?;
        v.retain(|h| cell.is_none_or(|c| h.cell == c));
        for h in &mut v {
            if let Some(at) = beats.get(&h.name) {
                h.last_heartbeat = h.last_heartbeat.max(Timestamp::from_micros(*at));
            }
        }
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    async fn report_host(&self, name: &str, at: Timestamp) -> Result<()> {
        // Hosts are never deleted, so a record seen here stays.
        let known: bool = self.pool.query(redis::cmd("HEXISTS").arg(self.keys.catalog("hosts")).arg(name)).await?;
        if !known {
            return Err(Error::not_found(Kind::Host, name));
        }
        self.beat(name, at).await
    }

    async fn host_heartbeats(&self, _cell: Option<CellId>) -> Result<Vec<(String, Timestamp)>> {
        // The heartbeat hash does not know cells: every host's (the contract allows it).
        Ok(self.beats().await?.into_iter().map(|(name, at)| (name, Timestamp::from_micros(at))).collect())
    }

    async fn put_flavor(&self, flavor: &Flavor) -> Result<()> {
        flavor.validate()?;
        self.hash_put("flavors", flavor.id.to_string(), json(flavor)?).await
    }

    async fn get_flavor(&self, id: &FlavorId) -> Result<Flavor> {
        self.hash_get("flavors", id.to_string(), Kind::Flavor).await
    }

    async fn list_flavors(&self) -> Result<Vec<Flavor>> {
        let mut v: Vec<Flavor> = self.hash_values("flavors").await?;
        v.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(v)
    }

    async fn put_aggregate(&self, aggregate: &Aggregate) -> Result<()> {
        self.hash_put("aggregates", aggregate.id.to_string(), json(aggregate)?).await?;
        self.announce_catalog().await
    }

    async fn get_aggregate(&self, id: AggregateId) -> Result<Aggregate> {
        self.hash_get("aggregates", id.to_string(), Kind::Aggregate).await
    }

    async fn list_aggregates(&self) -> Result<Vec<Aggregate>> {
        let mut v: Vec<Aggregate> = self.hash_values("aggregates").await?;
        v.sort_by_key(|a| a.id);
        Ok(v)
    }

    async fn create_server_group(&self, group: &ServerGroup) -> Result<()> {
        group.validate()?;
        let n: i64 = self
            .pool
            .query(redis::cmd("HSETNX").arg(self.keys.catalog("groups")).arg(group.id.to_string()).arg(json(group)?))
            .await?;
        if n == 0 {
            return Err(Error::already_exists(Kind::ServerGroup, group.id));
        }
        Ok(())
    }

    async fn get_server_group(&self, id: GroupId) -> Result<ServerGroup> {
        self.hash_get("groups", id.to_string(), Kind::ServerGroup).await
    }

    async fn delete_server_group(&self, id: GroupId) -> Result<()> {
        let n: i64 = self.pool.query(redis::cmd("HDEL").arg(self.keys.catalog("groups")).arg(id.to_string())).await?;
        if n == 0 {
            return Err(Error::not_found(Kind::ServerGroup, id));
        }
        Ok(())
    }

    async fn list_server_groups(&self) -> Result<Vec<ServerGroup>> {
        let mut v: Vec<ServerGroup> = self.hash_values("groups").await?;
        v.sort_by_key(|g| g.id);
        Ok(v)
    }

    async fn put_request_spec(&self, spec: &RequestSpec) -> Result<()> {
        self.pool
            .query::<Value>(redis::cmd("SET").arg(self.keys.spec(spec.instance_uuid.0)).arg(json(spec)?))
            .await
            .map(|_| ())
    }

    async fn get_request_spec(&self, instance: InstanceId) -> Result<RequestSpec> {
        let v: Option<String> = self.pool.query(redis::cmd("GET").arg(self.keys.spec(instance.0))).await?;
        from_json(&v.ok_or_else(|| Error::not_found(Kind::RequestSpec, instance))?)
    }

    async fn delete_request_spec(&self, instance: InstanceId) -> Result<()> {
        self.pool.query::<Value>(redis::cmd("DEL").arg(self.keys.spec(instance.0))).await.map(|_| ())
    }
}
