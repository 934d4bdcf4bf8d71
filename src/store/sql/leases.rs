//! Build leases in the API database (`build_leases`): compare-and-set by `version` in the
//! `WHERE` clause of one statement, so concurrent replicas never both win.

use async_trait::async_trait;

use super::SqlStore;
use super::conn::{is_unique_violation, map_err};
use crate::error::{Error, Kind, Result};
use crate::model::{InstanceId, Timestamp};
use crate::sql_args;
use crate::store::leases::{BuildLease, Leases, validate};

fn lease_of(r: &super::conn::Row) -> Result<BuildLease> {
    Ok(BuildLease {
        instance: InstanceId(r.uuid(0)?),
        owner: r.str(1)?,
        expires_at: Timestamp::from_micros(r.i64(2)?),
        version: u64::try_from(r.i64(3)?).unwrap_or(0),
        attempts: u32::try_from(r.i64(4)?).unwrap_or(0),
    })
}

#[async_trait]
impl Leases for SqlStore {
    async fn create_lease(&self, lease: &BuildLease) -> Result<()> {
        validate(lease)?;
        let r = self
            .api
            .execute_raw(
                "INSERT INTO build_leases (instance_uuid, owner, expires_at, version, attempts) VALUES (?, ?, ?, 1, ?)",
                sql_args![
                    lease.instance.to_string(),
                    lease.owner.clone(),
                    lease.expires_at.as_micros(),
                    i64::from(lease.attempts)
                ],
            )
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(Error::already_exists(Kind::BuildLease, lease.instance)),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn get_lease(&self, instance: InstanceId) -> Result<Option<BuildLease>> {
        let r = self
            .api
            .fetch_optional(
                "SELECT instance_uuid, owner, expires_at, version, attempts FROM build_leases WHERE instance_uuid = ?",
                sql_args![instance.to_string()],
            )
            .await?;
        r.as_ref().map(lease_of).transpose()
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
        let n = self
            .api
            .execute(
                "UPDATE build_leases SET owner = ?, expires_at = ?, version = ?, attempts = ? \
                 WHERE instance_uuid = ? AND version = ?",
                sql_args![
                    new.owner.clone(),
                    expires_at.as_micros(),
                    i64::try_from(new.version).unwrap_or(i64::MAX),
                    i64::from(attempts),
                    instance.to_string(),
                    i64::try_from(expected).unwrap_or(i64::MAX)
                ],
            )
            .await?;
        Ok((n == 1).then_some(new))
    }

    async fn delete_lease(&self, instance: InstanceId, expected: u64) -> Result<bool> {
        let n = self
            .api
            .execute(
                "DELETE FROM build_leases WHERE instance_uuid = ? AND version = ?",
                sql_args![instance.to_string(), i64::try_from(expected).unwrap_or(i64::MAX)],
            )
            .await?;
        Ok(n == 1)
    }

    async fn list_leases(&self) -> Result<Vec<BuildLease>> {
        let rows = self
            .api
            .fetch_all("SELECT instance_uuid, owner, expires_at, version, attempts FROM build_leases", sql_args![])
            .await?;
        rows.iter().map(lease_of).collect()
    }
}
