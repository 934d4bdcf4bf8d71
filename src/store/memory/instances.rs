//! The memory store's instances: records by uuid plus the listing order, globally and per
//! project, as ordered sets of sort keys (a page is a range read).

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;

use async_trait::async_trait;

use crate::error::{Error, Kind, Result};
use crate::model::*;
use crate::store::prelude::*;

use super::{MemoryStore, read, write};

#[derive(Default)]
pub(super) struct InstanceData {
    by_id: HashMap<InstanceId, Instance>,
    /// Every instance in listing order.
    order: BTreeSet<SortKey>,
    /// Per project, in listing order.
    by_project: HashMap<String, BTreeSet<SortKey>>,
}

#[async_trait]
impl Instances for MemoryStore {
    async fn create_instance(&self, instance: &Instance) -> Result<()> {
        instance.validate()?;
        let mut t = write(&self.instances);
        if t.by_id.contains_key(&instance.uuid) {
            return Err(Error::already_exists(Kind::Instance, instance.uuid));
        }
        let key = instance.sort_key();
        t.order.insert(key);
        t.by_project.entry(instance.project_id.clone()).or_default().insert(key);
        t.by_id.insert(instance.uuid, instance.clone());
        Ok(())
    }

    async fn get_instance(&self, id: InstanceId) -> Result<Instance> {
        read(&self.instances).by_id.get(&id).cloned().ok_or_else(|| Error::not_found(Kind::Instance, id))
    }

    async fn update_instance(&self, id: InstanceId, patch: &InstancePatch) -> Result<Instance> {
        let mut t = write(&self.instances);
        let i = t.by_id.get_mut(&id).ok_or_else(|| Error::not_found(Kind::Instance, id))?;
        i.apply(patch, Timestamp::now());
        Ok(i.clone())
    }

    async fn delete_instance(&self, id: InstanceId) -> Result<()> {
        let mut t = write(&self.instances);
        let i = t.by_id.remove(&id).ok_or_else(|| Error::not_found(Kind::Instance, id))?;
        let key = i.sort_key();
        t.order.remove(&key);
        if let Some(set) = t.by_project.get_mut(&i.project_id) {
            set.remove(&key);
            if set.is_empty() {
                t.by_project.remove(&i.project_id);
            }
        }
        Ok(())
    }

    async fn repair_instance(&self, _id: InstanceId) -> Result<()> {
        // Nothing to repair: one record per instance, written under one lock, so no write leaves a part behind.
        Ok(())
    }

    async fn list_instances(&self, query: &ListQuery) -> Result<InstancePage> {
        let t = read(&self.instances);
        let start = match query.marker {
            Some(m) => Bound::Excluded(t.by_id.get(&m).ok_or_else(|| Error::not_found(Kind::Marker, m))?.sort_key()),
            None => Bound::Unbounded,
        };
        let limit = query.effective_limit();
        if limit == 0 {
            return Ok(InstancePage::default());
        }
        let empty = BTreeSet::new();
        let index = match &query.filters.project_id {
            Some(p) => t.by_project.get(p).unwrap_or(&empty),
            None => &t.order,
        };
        let mut instances: Vec<Instance> = index
            .range((start, Bound::Unbounded))
            .filter_map(|k| t.by_id.get(&k.uuid))
            .filter(|i| query.filters.matches(i))
            .take(limit + 1)
            .cloned()
            .collect();
        let next_marker = if instances.len() > limit {
            instances.truncate(limit);
            instances.last().map(|i| i.uuid)
        } else {
            None
        };
        // One process, one lock: every part is always readable, so the page is complete
        // whether or not the query accepts a partial one.
        Ok(InstancePage { instances, next_marker, ..Default::default() })
    }

    async fn instance_stub(&self, _id: InstanceId) -> Result<Option<InstanceStub>> {
        // Nothing is kept apart from the record, which is always readable.
        Ok(None)
    }
}
