//! `GET /os-availability-zone` and `/os-availability-zone/detail`
//! (`nova.api.openstack.compute.availability_zone`).
//!
//! A zone is available when at least one enabled compute service is in it; zones whose
//! services are all disabled are listed as not available, after the available ones.
//! Hosts without a zone are in the default zone (`default_availability_zone`, `nova`).

use std::collections::BTreeMap;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::{NovaCtx, NovaError, NovaResult};
use crate::api::ApiState;
use crate::model::{Host, Timestamp};

pub(super) async fn index(
    State(state): State<ApiState>,
    Extension(_ctx): Extension<NovaCtx>,
) -> NovaResult<Json<Value>> {
    let zones = zones(&state).await?;
    let info: Vec<Value> = zones
        .iter()
        .map(|(name, available, _)| json!({"zoneName": name, "zoneState": {"available": available}, "hosts": null}))
        .collect();
    Ok(Json(json!({ "availabilityZoneInfo": info })))
}

pub(super) async fn detail(
    State(state): State<ApiState>,
    Extension(ctx): Extension<NovaCtx>,
) -> NovaResult<Json<Value>> {
    if !ctx.caller.is_admin {
        return Err(NovaError::policy("os_compute_api:os-availability-zone:detail"));
    }
    let down_after = state.config().scheduler.service_down_time;
    let now = Timestamp::now();
    let zones = zones(&state).await?;
    let info: Vec<Value> = zones
        .iter()
        .map(|(name, available, hosts)| {
            let hosts: serde_json::Map<String, Value> = hosts
                .iter()
                .map(|h| {
                    (
                        h.name.clone(),
                        json!({"nova-compute": {
                            "available": h.enabled && h.is_up(now, down_after),
                            "active": h.enabled,
                            "updated_at": h.last_heartbeat.to_string(),
                        }}),
                    )
                })
                .collect();
            json!({"zoneName": name, "zoneState": {"available": available}, "hosts": hosts})
        })
        .collect();
    Ok(Json(json!({ "availabilityZoneInfo": info })))
}

/// `(zone, available, hosts)`: available zones first, each group sorted by name.
async fn zones(state: &ApiState) -> NovaResult<Vec<(String, bool, Vec<Host>)>> {
    let default = state.config().scheduler.default_availability_zone.clone();
    let mut by_zone: BTreeMap<String, Vec<Host>> = BTreeMap::new();
    for h in state.store().list_hosts(None).await? {
        let zone = h.availability_zone.clone().unwrap_or_else(|| default.clone());
        by_zone.entry(zone).or_default().push(h);
    }
    let mut out: Vec<(String, bool, Vec<Host>)> =
        by_zone.into_iter().map(|(z, hosts)| (z, hosts.iter().any(|h| h.enabled), hosts)).collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(out)
}
