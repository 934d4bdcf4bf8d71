//! The embedded store (`memory://`): the default backend and the reference model every
//! other backend is compared against.
//!
//! One file per concern, as every backend: `trees.rs` (providers and claims), `feed.rs`,
//! `catalog.rs`, `instances.rs`; this file holds the struct and its shared helpers.

mod catalog;
mod feed;
mod instances;
mod placement;
mod trees;

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;

use self::catalog::CatalogData;
use self::feed::ChangeLog;
use self::instances::InstanceData;
use self::trees::TreeState;
use crate::model::*;
use crate::store::prelude::*;

/// Number of change-log shards.
pub const SHARDS: usize = 32;
/// Entries kept per change-log shard before old ones are dropped.
pub const SHARD_CAPACITY: usize = 8192;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

fn shard_of<K: Hash>(k: &K, n: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    k.hash(&mut h);
    (h.finish() as usize) % n
}

/// The embedded in-process store. Cheap to create; everything is lost when it is dropped.
pub struct MemoryStore {
    trees: RwLock<HashMap<ProviderId, Arc<Mutex<TreeState>>>>,
    provider_root: RwLock<HashMap<ProviderId, ProviderId>>,
    names: Mutex<HashMap<String, ProviderId>>,
    consumers: Vec<Mutex<HashMap<ConsumerId, BTreeSet<ProviderId>>>>,
    changes: ChangeLog,
    catalog: RwLock<CatalogData>,
    instances: RwLock<InstanceData>,
    leases: super::leases::MemoryLeases,
    registry: Mutex<placement::Registry>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").field("trees", &read(&self.trees).len()).finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore {
            trees: RwLock::default(),
            provider_root: RwLock::default(),
            names: Mutex::default(),
            consumers: (0..SHARDS).map(|_| Mutex::default()).collect(),
            changes: ChangeLog::new(),
            catalog: RwLock::default(),
            instances: RwLock::default(),
            leases: super::leases::MemoryLeases::default(),
            registry: Mutex::default(),
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn describe(&self) -> String {
        "memory://".to_string()
    }

    fn leases(&self) -> Option<&dyn super::leases::Leases> {
        Some(&self.leases)
    }

    fn placement(&self) -> Option<&dyn super::placement::PlacementStore> {
        Some(self)
    }
}
