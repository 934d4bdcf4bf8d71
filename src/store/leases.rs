//! Build leases: which API replica runs the build of an instance, and until when.
//!
//! A replica that starts a build records a lease (owner, expiry) before the instance, renews
//! it while the build runs and deletes it when the build has settled. A replica that dies
//! (SIGKILL, power loss) stops renewing; once the lease has expired, a reaper in any replica
//! takes it over with a compare-and-set on the lease's version and finishes the build's
//! story: reschedule, or ERROR with a fault, releasing the claim either way. The version
//! makes every change a compare-and-set, so two reapers never both take one lease and a
//! replica that lost its lease learns it at its next renewal.
//!
//! # Contract (every backend that returns them from `Store::leases`)
//! 1. [`create_lease`](Leases::create_lease) writes version 1; `AlreadyExists` (kind
//!    `BuildLease`) if the instance has a lease.
//! 2. [`replace_lease`](Leases::replace_lease) writes owner, expiry and attempts with
//!    version `expected + 1` only if the stored version is `expected`; otherwise (moved or
//!    gone) it writes nothing and returns `None`. Atomic against concurrent replaces and
//!    deletes from any process.
//! 3. [`delete_lease`](Leases::delete_lease) deletes only at version `expected`; `false`
//!    when it moved or is gone.
//! 4. [`list_leases`](Leases::list_leases) returns every lease (there are only as many as
//!    builds in flight), each read consistently.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::model::{InstanceId, Timestamp};

/// One build lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildLease {
    /// The instance being built.
    pub instance: InstanceId,
    /// The replica running the build.
    pub owner: String,
    /// After this, any replica may take the build over.
    pub expires_at: Timestamp,
    /// Incremented by every write; the compare-and-set token.
    pub version: u64,
    /// Takeovers so far (a reaper reschedules a build a bounded number of times).
    pub attempts: u32,
}

impl BuildLease {
    /// Whether the lease has expired at `now`.
    pub fn expired(&self, now: Timestamp) -> bool {
        self.expires_at < now
    }
}

/// The lease sub-trait of the store contract (see the module documentation).
#[async_trait]
pub trait Leases: Send + Sync {
    /// Records a new lease at version 1 (the `version` field is ignored).
    async fn create_lease(&self, lease: &BuildLease) -> Result<()>;
    /// The lease of `instance`, if any.
    async fn get_lease(&self, instance: InstanceId) -> Result<Option<BuildLease>>;
    /// Compare-and-set: replaces owner, expiry and attempts if the stored version is
    /// `expected`; returns the lease written (version `expected + 1`), or `None`.
    async fn replace_lease(
        &self,
        instance: InstanceId,
        expected: u64,
        owner: &str,
        expires_at: Timestamp,
        attempts: u32,
    ) -> Result<Option<BuildLease>>;
    /// Deletes the lease if the stored version is `expected`.
    async fn delete_lease(&self, instance: InstanceId, expected: u64) -> Result<bool>;
    /// Every lease.
    async fn list_leases(&self) -> Result<Vec<BuildLease>>;
}

/// The backends' shared checks on a lease to create.
pub fn validate(lease: &BuildLease) -> Result<()> {
    if lease.owner.is_empty() || lease.owner.len() > 255 || lease.owner.chars().any(char::is_control) {
        return Err(crate::Error::invalid("lease.owner", "must be 1 to 255 printable characters"));
    }
    Ok(())
}

/// The in-process implementation, used by the memory store.
#[derive(Debug, Default)]
pub struct MemoryLeases {
    leases: std::sync::Mutex<std::collections::HashMap<InstanceId, BuildLease>>,
}

impl MemoryLeases {
    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<InstanceId, BuildLease>> {
        self.leases.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl Leases for MemoryLeases {
    async fn create_lease(&self, lease: &BuildLease) -> Result<()> {
        validate(lease)?;
        let mut m = self.map();
        if m.contains_key(&lease.instance) {
            return Err(crate::Error::already_exists(crate::error::Kind::BuildLease, lease.instance));
        }
        m.insert(lease.instance, BuildLease { version: 1, ..lease.clone() });
        Ok(())
    }

    async fn get_lease(&self, instance: InstanceId) -> Result<Option<BuildLease>> {
        Ok(self.map().get(&instance).cloned())
    }

    async fn replace_lease(
        &self,
        instance: InstanceId,
        expected: u64,
        owner: &str,
        expires_at: Timestamp,
        attempts: u32,
    ) -> Result<Option<BuildLease>> {
        let new = BuildLease { instance, owner: owner.to_string(), expires_at, version: expected + 1, attempts };
        validate(&new)?;
        let mut m = self.map();
        match m.get_mut(&instance) {
            Some(l) if l.version == expected => {
                *l = new.clone();
                Ok(Some(new))
            }
            _ => Ok(None),
        }
    }

    async fn delete_lease(&self, instance: InstanceId, expected: u64) -> Result<bool> {
        let mut m = self.map();
        if m.get(&instance).is_some_and(|l| l.version == expected) {
            m.remove(&instance);
            return Ok(true);
        }
        Ok(false)
    }

    async fn list_leases(&self) -> Result<Vec<BuildLease>> {
        Ok(self.map().values().cloned().collect())
    }
}
