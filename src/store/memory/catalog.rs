//! The memory store's catalog: cells, hosts, flavors, aggregates, server groups and
//! request specs, each in a map behind one lock.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;

use crate::error::{Error, Kind, Result};
use crate::model::*;
use crate::store::prelude::*;

use super::{MemoryStore, read, write};

#[derive(Default)]
pub(super) struct CatalogData {
    cells: BTreeMap<CellId, Cell>,
    hosts: BTreeMap<String, Host>,
    flavors: BTreeMap<FlavorId, Flavor>,
    aggregates: BTreeMap<AggregateId, Aggregate>,
    groups: BTreeMap<GroupId, ServerGroup>,
    specs: HashMap<InstanceId, RequestSpec>,
}

#[async_trait]
impl Catalog for MemoryStore {
    async fn put_cell(&self, cell: &Cell) -> Result<()> {
        if cell.name.is_empty() {
            return Err(Error::invalid("cell.name", "must not be empty"));
        }
        let mut c = write(&self.catalog);
        c.cells.insert(cell.id, cell.clone());
        self.changes.record(CATALOG_ROOT, None);
        Ok(())
    }

    async fn get_cell(&self, id: CellId) -> Result<Cell> {
        read(&self.catalog).cells.get(&id).cloned().ok_or_else(|| Error::not_found(Kind::Cell, id))
    }

    async fn list_cells(&self) -> Result<Vec<Cell>> {
        Ok(read(&self.catalog).cells.values().cloned().collect())
    }

    async fn put_host(&self, host: &Host) -> Result<()> {
        if host.name.is_empty() || host.name.len() > 255 {
            return Err(Error::invalid("host.name", "must be 1 to 255 characters"));
        }
        let mut c = write(&self.catalog);
        let mut host = host.clone();
        if let Some(old) = c.hosts.get(&host.name) {
            host.last_heartbeat = host.last_heartbeat.max(old.last_heartbeat);
        }
        c.hosts.insert(host.name.clone(), host);
        self.changes.record(CATALOG_ROOT, None);
        Ok(())
    }

    async fn report_host(&self, name: &str, at: Timestamp) -> Result<()> {
        let mut c = write(&self.catalog);
        let host = c.hosts.get_mut(name).ok_or_else(|| Error::not_found(Kind::Host, name))?;
        host.last_heartbeat = host.last_heartbeat.max(at);
        Ok(())
    }

    async fn host_heartbeats(&self, cell: Option<CellId>) -> Result<Vec<(String, Timestamp)>> {
        Ok(read(&self.catalog)
            .hosts
            .values()
            .filter(|h| cell.is_none_or(|c| h.cell == c))
            .map(|h| (h.name.clone(), h.last_heartbeat))
            .collect())
    }

    async fn get_host(&self, name: &str) -> Result<Host> {
        read(&self.catalog).hosts.get(name).cloned().ok_or_else(|| Error::not_found(Kind::Host, name))
    }

    async fn list_hosts(&self, cell: Option<CellId>) -> Result<Vec<Host>> {
        Ok(read(&self.catalog).hosts.values().filter(|h| cell.is_none_or(|c| h.cell == c)).cloned().collect())
    }

    async fn put_flavor(&self, flavor: &Flavor) -> Result<()> {
        flavor.validate()?;
        write(&self.catalog).flavors.insert(flavor.id.clone(), flavor.clone());
        Ok(())
    }

    async fn get_flavor(&self, id: &FlavorId) -> Result<Flavor> {
        read(&self.catalog).flavors.get(id).cloned().ok_or_else(|| Error::not_found(Kind::Flavor, id))
    }

    async fn list_flavors(&self) -> Result<Vec<Flavor>> {
        Ok(read(&self.catalog).flavors.values().cloned().collect())
    }

    async fn put_aggregate(&self, aggregate: &Aggregate) -> Result<()> {
        let mut c = write(&self.catalog);
        c.aggregates.insert(aggregate.id, aggregate.clone());
        self.changes.record(CATALOG_ROOT, None);
        Ok(())
    }

    async fn get_aggregate(&self, id: AggregateId) -> Result<Aggregate> {
        read(&self.catalog).aggregates.get(&id).cloned().ok_or_else(|| Error::not_found(Kind::Aggregate, id))
    }

    async fn list_aggregates(&self) -> Result<Vec<Aggregate>> {
        Ok(read(&self.catalog).aggregates.values().cloned().collect())
    }

    async fn create_server_group(&self, group: &ServerGroup) -> Result<()> {
        group.validate()?;
        let mut c = write(&self.catalog);
        if c.groups.contains_key(&group.id) {
            return Err(Error::already_exists(Kind::ServerGroup, group.id));
        }
        c.groups.insert(group.id, group.clone());
        Ok(())
    }

    async fn get_server_group(&self, id: GroupId) -> Result<ServerGroup> {
        read(&self.catalog).groups.get(&id).cloned().ok_or_else(|| Error::not_found(Kind::ServerGroup, id))
    }

    async fn delete_server_group(&self, id: GroupId) -> Result<()> {
        write(&self.catalog).groups.remove(&id).map(|_| ()).ok_or_else(|| Error::not_found(Kind::ServerGroup, id))
    }

    async fn list_server_groups(&self) -> Result<Vec<ServerGroup>> {
        let mut v: Vec<ServerGroup> = read(&self.catalog).groups.values().cloned().collect();
        v.sort_by_key(|g| g.id);
        Ok(v)
    }

    async fn put_request_spec(&self, spec: &RequestSpec) -> Result<()> {
        write(&self.catalog).specs.insert(spec.instance_uuid, spec.clone());
        Ok(())
    }

    async fn get_request_spec(&self, instance: InstanceId) -> Result<RequestSpec> {
        read(&self.catalog).specs.get(&instance).cloned().ok_or_else(|| Error::not_found(Kind::RequestSpec, instance))
    }

    async fn delete_request_spec(&self, instance: InstanceId) -> Result<()> {
        write(&self.catalog).specs.remove(&instance);
        Ok(())
    }
}
