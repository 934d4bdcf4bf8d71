//! Catalog: cells, hosts, flavors, aggregates, server groups and request specs, one small
//! table each, every object stored as its JSON document under its id. Lists read the
//! (small) table whole and sort like the reference store. Heartbeats have a table of their
//! own (`host_beats`), so that a report is one small write and liveness can be re-read
//! without the records; cell, host and aggregate writes are announced in the change feed
//! after the write, under the reserved root `CATALOG_ROOT`.

use scylla::value::CqlValue;
use serde::Serialize;
use serde::de::DeserializeOwned;

use async_trait::async_trait;

use super::CqlStore;
use super::conn::*;
use crate::error::{Error, Kind, Result};
use crate::model::*;
use crate::store::prelude::*;

impl CqlStore {
    async fn put_doc<T: Serialize>(&self, table: &str, key: &str, id: Option<CqlValue>, v: &T) -> Result<()> {
        self.db.exec(&format!("INSERT INTO {table} ({key}, body) VALUES (?, ?)"), vec![id, json(v)?]).await
    }

    async fn get_doc<T: DeserializeOwned>(
        &self,
        table: &str,
        key: &str,
        id: Option<CqlValue>,
        kind: Kind,
        shown: &(dyn std::fmt::Display + Sync),
    ) -> Result<T> {
        let rows = self.db.query(&format!("SELECT body FROM {table} WHERE {key} = ?"), vec![id]).await?;
        match rows.first().and_then(|r| get_text(r, 0)) {
            Some(b) => parse_json(&b),
            None => Err(Error::not_found(kind, shown)),
        }
    }

    /// A heartbeat, written with the heartbeat's own time as the write timestamp: the cell
    /// keeps the latest of all writes, so a heartbeat never goes back, without a read or a
    /// lightweight transaction (a report is one write, as it is one UPDATE in Nova).
    async fn write_beat(&self, name: &str, at: Timestamp) -> Result<()> {
        let micros = at.as_micros().max(0);
        self.db
            .exec(
                "INSERT INTO host_beats (name, at) VALUES (?, ?) USING TIMESTAMP ?",
                vec![text(name), big(micros), big(micros)],
            )
            .await
    }

    async fn list_docs<T: DeserializeOwned>(&self, table: &str) -> Result<Vec<T>> {
        let rows = self.db.query(&format!("SELECT body FROM {table}"), vec![]).await?;
        rows.iter().filter_map(|r| get_text(r, 0)).map(|b| parse_json(&b)).collect()
    }
}

#[async_trait]
impl Catalog for CqlStore {
    async fn put_cell(&self, cell: &Cell) -> Result<()> {
        if cell.name.is_empty() {
            return Err(Error::invalid("cell.name", "must not be empty"));
        }
        self.put_doc("cells", "id", uuid(cell.id.0), cell).await?;
        self.record_change(CATALOG_ROOT).await
    }

    async fn get_cell(&self, id: CellId) -> Result<Cell> {
        self.get_doc("cells", "id", uuid(id.0), Kind::Cell, &id).await
    }

    async fn list_cells(&self) -> Result<Vec<Cell>> {
        let mut v: Vec<Cell> = self.list_docs("cells").await?;
        v.sort_by_key(|c| c.id);
        Ok(v)
    }

    async fn put_host(&self, host: &Host) -> Result<()> {
        if host.name.is_empty() || host.name.len() > 255 {
            return Err(Error::invalid("host.name", "must be 1 to 255 characters"));
        }
        self.db
            .exec(
                "INSERT INTO hosts (name, cell, body) VALUES (?, ?, ?)",
                vec![text(host.name.clone()), uuid(host.cell.0), json(host)?],
            )
            .await?;
        self.write_beat(&host.name, host.last_heartbeat).await?;
        self.record_change(CATALOG_ROOT).await
    }

    async fn get_host(&self, name: &str) -> Result<Host> {
        let mut host: Host = self.get_doc("hosts", "name", text(name), Kind::Host, &name).await?;
        let rows = self.db.query("SELECT at FROM host_beats WHERE name = ?", vec![text(name)]).await?;
        if let Some(at) = rows.first().and_then(|r| get_i64(r, 0)) {
            host.last_heartbeat = host.last_heartbeat.max(Timestamp::from_micros(at));
        }
        Ok(host)
    }

    async fn list_hosts(&self, cell: Option<CellId>) -> Result<Vec<Host>> {
        let mut v: Vec<Host> = self.list_docs("hosts").await?;
        v.retain(|h| cell.is_none_or(|c| h.cell == c));
        let beats: std::collections::HashMap<String, Timestamp> =
            self.host_heartbeats(cell).await?.into_iter().collect();
        for h in &mut v {
            if let Some(at) = beats.get(&h.name) {
                h.last_heartbeat = h.last_heartbeat.max(*at);
            }
        }
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    async fn report_host(&self, name: &str, at: Timestamp) -> Result<()> {
        // Hosts are never deleted, so a record seen here stays.
        if self.db.query("SELECT name FROM hosts WHERE name = ?", vec![text(name)]).await?.is_empty() {
            return Err(Error::not_found(Kind::Host, name));
        }
        self.write_beat(name, at).await
    }

    async fn host_heartbeats(&self, _cell: Option<CellId>) -> Result<Vec<(String, Timestamp)>> {
        // `host_beats` does not know cells: every host's (the contract allows it).
        let rows = self.db.query("SELECT name, at FROM host_beats", vec![]).await?;
        Ok(rows.iter().filter_map(|r| Some((get_text(r, 0)?, Timestamp::from_micros(get_i64(r, 1)?)))).collect())
    }

    async fn put_flavor(&self, flavor: &Flavor) -> Result<()> {
        flavor.validate()?;
        self.put_doc("flavors", "id", text(flavor.id.as_str()), flavor).await
    }

    async fn get_flavor(&self, id: &FlavorId) -> Result<Flavor> {
        self.get_doc("flavors", "id", text(id.as_str()), Kind::Flavor, id).await
    }

    async fn list_flavors(&self) -> Result<Vec<Flavor>> {
        let mut v: Vec<Flavor> = self.list_docs("flavors").await?;
        v.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(v)
    }

    async fn put_aggregate(&self, a: &Aggregate) -> Result<()> {
        self.put_doc("aggregates", "id", uuid(a.id.0), a).await?;
        self.record_change(CATALOG_ROOT).await
    }

    async fn get_aggregate(&self, id: AggregateId) -> Result<Aggregate> {
        self.get_doc("aggregates", "id", uuid(id.0), Kind::Aggregate, &id).await
    }

    async fn list_aggregates(&self) -> Result<Vec<Aggregate>> {
        let mut v: Vec<Aggregate> = self.list_docs("aggregates").await?;
        v.sort_by_key(|a| a.id);
        Ok(v)
    }

    async fn create_server_group(&self, g: &ServerGroup) -> Result<()> {
        g.validate()?;
        let cas = self
            .db
            .cas("INSERT INTO server_groups (id, body) VALUES (?, ?) IF NOT EXISTS", vec![uuid(g.id.0), json(g)?])
            .await?;
        if !cas.applied {
            return Err(Error::already_exists(Kind::ServerGroup, g.id));
        }
        Ok(())
    }

    async fn get_server_group(&self, id: GroupId) -> Result<ServerGroup> {
        self.get_doc("server_groups", "id", uuid(id.0), Kind::ServerGroup, &id).await
    }

    async fn delete_server_group(&self, id: GroupId) -> Result<()> {
        let cas = self.db.cas("DELETE FROM server_groups WHERE id = ? IF EXISTS", vec![uuid(id.0)]).await?;
        if !cas.applied {
            return Err(Error::not_found(Kind::ServerGroup, id));
        }
        Ok(())
    }

    async fn list_server_groups(&self) -> Result<Vec<ServerGroup>> {
        let mut v: Vec<ServerGroup> = self.list_docs("server_groups").await?;
        v.sort_by_key(|g| g.id);
        Ok(v)
    }

    async fn put_request_spec(&self, spec: &RequestSpec) -> Result<()> {
        self.put_doc("request_specs", "instance", uuid(spec.instance_uuid.0), spec).await
    }

    async fn get_request_spec(&self, instance: InstanceId) -> Result<RequestSpec> {
        self.get_doc("request_specs", "instance", uuid(instance.0), Kind::RequestSpec, &instance).await
    }

    async fn delete_request_spec(&self, instance: InstanceId) -> Result<()> {
        self.db.exec("DELETE FROM request_specs WHERE instance = ?", vec![uuid(instance.0)]).await
    }
}
