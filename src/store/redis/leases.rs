//! Build leases in one hash (`<prefix>:build_leases`, field = instance, value = the lease as
//! JSON); every write is a compare-and-set on the lease's version in `lease_cas.lua`, so it
//! is atomic against other replicas. One hash means one Cluster slot, which is fine: there
//! are only as many leases as builds in flight.

use async_trait::async_trait;

use super::{RedisStore, from_json, json};
use crate::error::{Error, Kind, Result};
use crate::model::{InstanceId, Timestamp};
use crate::store::leases::{BuildLease, Leases, validate};

impl RedisStore {
    fn leases_key(&self) -> String {
        self.keys.catalog("build_leases")
    }

    async fn lease_cas(&self, instance: InstanceId, expected: u64, new: Option<&BuildLease>) -> Result<bool> {
        let doc = match new {
            Some(l) => json(l)?,
            None => String::new(),
        };
        let key = self.leases_key();
        let cmd = self.pool.scripts.lease_cas.cmd(&[&key], &[&instance.to_string(), &expected.to_string(), &doc]);
        Ok(self.pool.eval::<i64>(&cmd).await? == 1)
    }
}

#[async_trait]
impl Leases for RedisStore {
    async fn create_lease(&self, lease: &BuildLease) -> Result<()> {
        validate(lease)?;
        let new = BuildLease { version: 1, ..lease.clone() };
        if self.lease_cas(lease.instance, 0, Some(&new)).await? {
            Ok(())
        } else {
            Err(Error::already_exists(Kind::BuildLease, lease.instance))
        }
    }

    async fn get_lease(&self, instance: InstanceId) -> Result<Option<BuildLease>> {
        let v: Option<String> =
            self.pool.query(redis::cmd("HGET").arg(self.leases_key()).arg(instance.to_string())).await?;
        v.map(|s| from_json(&s)).transpose()
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
        if expected == 0 {
            return Ok(None);
        }
        Ok(self.lease_cas(instance, expected, Some(&new)).await?.then_some(new))
    }

    async fn delete_lease(&self, instance: InstanceId, expected: u64) -> Result<bool> {
        if expected == 0 {
            return Ok(false);
        }
        self.lease_cas(instance, expected, None).await
    }

    async fn list_leases(&self) -> Result<Vec<BuildLease>> {
        let v: Vec<String> = self.pool.query(redis::cmd("HVALS").arg(self.leases_key())).await?;
        v.iter().map(|s| from_json(s)).collect()
    }
}
