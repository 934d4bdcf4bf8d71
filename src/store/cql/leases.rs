//! Build leases in `build_leases` (one partition per instance); every write is a
//! lightweight transaction on `version`, so two replicas never both win a lease. Reads of
//! one lease are SERIAL; the listing is a plain scan (the reaper then decides with a CAS).

use async_trait::async_trait;

use super::CqlStore;
use super::conn::{big, get_text, json, parse_json, uuid};
use crate::error::{Error, Kind, Result};
use crate::model::{InstanceId, Timestamp};
use crate::store::leases::{BuildLease, Leases, validate};

fn version_arg(v: u64) -> Option<scylla::value::CqlValue> {
    big(i64::try_from(v).unwrap_or(i64::MAX))
}

#[async_trait]
impl Leases for CqlStore {
    async fn create_lease(&self, lease: &BuildLease) -> Result<()> {
        validate(lease)?;
        let new = BuildLease { version: 1, ..lease.clone() };
        let cas = self
            .db
            .cas(
                "INSERT INTO build_leases (instance, version, body) VALUES (?, ?, ?) IF NOT EXISTS",
                vec![uuid(lease.instance.0), version_arg(1), json(&new)?],
            )
            .await?;
        if cas.applied { Ok(()) } else { Err(Error::already_exists(Kind::BuildLease, lease.instance)) }
    }

    async fn get_lease(&self, instance: InstanceId) -> Result<Option<BuildLease>> {
        let rows =
            self.db.query_serial("SELECT body FROM build_leases WHERE instance = ?", vec![uuid(instance.0)]).await?;
        rows.first().and_then(|r| get_text(r, 0)).map(|b| parse_json(&b)).transpose()
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
        let cas = self
            .db
            .cas(
                "UPDATE build_leases SET version = ?, body = ? WHERE instance = ? IF version = ?",
                vec![version_arg(new.version), json(&new)?, uuid(instance.0), version_arg(expected)],
            )
            .await?;
        Ok(cas.applied.then_some(new))
    }

    async fn delete_lease(&self, instance: InstanceId, expected: u64) -> Result<bool> {
        let cas = self
            .db
            .cas(
                "DELETE FROM build_leases WHERE instance = ? IF version = ?",
                vec![uuid(instance.0), version_arg(expected)],
            )
            .await?;
        Ok(cas.applied)
    }

    async fn list_leases(&self) -> Result<Vec<BuildLease>> {
        let rows = self.db.query("SELECT body FROM build_leases", vec![]).await?;
        rows.iter().filter_map(|r| get_text(r, 0)).map(|b| parse_json(&b)).collect()
    }
}
