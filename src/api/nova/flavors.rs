//! `GET /flavors`, `/flavors/detail`, `/flavors/{id}` (`nova.api.openstack.compute.flavors`
//! and its view builder).
//!
//! unicell's flavors are all public and enabled, with no description and an rxtx factor
//! of 1.0; the fields Nova shows for those are shown with exactly those values.

use std::cmp::Ordering;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use serde_json::{Value, json};

use super::query::Query;
use super::{NovaCtx, NovaError, NovaResult};
use crate::api::ApiState;
use crate::model::Flavor;
use crate::store::Store;

/// Nova's `VALID_SORT_KEYS` for flavors.
const SORT_KEYS: &[&str] = &[
    "created_at",
    "description",
    "disabled",
    "ephemeral_gb",
    "flavorid",
    "id",
    "is_public",
    "memory_mb",
    "name",
    "root_gb",
    "rxtx_factor",
    "swap",
    "updated_at",
    "vcpu_weight",
    "vcpus",
];
const KNOWN_PARAMS: &[&str] = &["limit", "marker", "is_public", "minRam", "minDisk", "sort_key", "sort_dir"];

pub(super) async fn index(
    State(state): State<ApiState>,
    Extension(ctx): Extension<NovaCtx>,
    RawQuery(raw): RawQuery,
) -> NovaResult<Json<Value>> {
    list(&state, &ctx, raw.as_deref(), false).await
}

pub(super) async fn detail(
    State(state): State<ApiState>,
    Extension(ctx): Extension<NovaCtx>,
    RawQuery(raw): RawQuery,
) -> NovaResult<Json<Value>> {
    list(&state, &ctx, raw.as_deref(), true).await
}

pub(super) async fn show(
    State(state): State<ApiState>,
    Extension(ctx): Extension<NovaCtx>,
    Path(id): Path<String>,
) -> NovaResult<Json<Value>> {
    let flavor = find(state.store().as_ref(), &id).await?;
    Ok(Json(json!({ "flavor": detailed(&ctx, &flavor) })))
}

/// A flavor by id (404 in Nova's words when missing or not a valid id).
pub(super) async fn find(store: &dyn Store, id: &str) -> NovaResult<Flavor> {
    let not_found = || NovaError::not_found(format!("Flavor {} could not be found.", id.escape_default()));
    let Ok(fid) = crate::model::FlavorId::new(id) else {
        return Err(not_found());
    };
    match store.get_flavor(&fid).await {
        Ok(f) => Ok(f),
        Err(crate::Error::NotFound { .. }) => Err(not_found()),
        Err(e) => Err(e.into()),
    }
}

async fn list(state: &ApiState, ctx: &NovaCtx, raw: Option<&str>, detail: bool) -> NovaResult<Json<Value>> {
    let q = Query::parse(raw);
    if ctx.at_least(2, 75)
        && let Some(k) = q.keys().find(|k| !KNOWN_PARAMS.contains(k))
    {
        return Err(NovaError::bad_request(format!(
            "Invalid input for query parameters {}. Additional properties are not allowed ('{}' was unexpected)",
            k.escape_default(),
            k.escape_default()
        )));
    }
    let (limit, marker) = q.limit_and_marker()?;
    // Every unicell flavor is public and enabled: the only filter that can hide them is an
    // admin's `is_public=false`.
    let public_wanted = if ctx.caller.is_admin { parse_is_public(q.get("is_public"))? } else { Some(true) };
    let min_ram = int_filter(&q, "minRam")?;
    let min_disk = int_filter(&q, "minDisk")?;
    let sort_key = q.get("sort_key").filter(|s| !s.is_empty()).unwrap_or("flavorid");
    if !SORT_KEYS.contains(&sort_key) {
        return Err(NovaError::bad_request(format!(
            "Invalid input for query parameters sort_key. Value: {}. '{}' is not one of {SORT_KEYS:?}",
            sort_key.escape_default(),
            sort_key.escape_default()
        )));
    }
    let desc = match q.get("sort_dir").filter(|s| !s.is_empty()).unwrap_or("asc") {
        "asc" => false,
        "desc" => true,
        other => {
            return Err(NovaError::bad_request(format!(
                "Invalid input for query parameters sort_dir. Value: {}. '{}' is not one of ['asc', 'desc']",
                other.escape_default(),
                other.escape_default()
            )));
        }
    };
    let mut flavors: Vec<Flavor> = state
        .store()
        .list_flavors()
        .await?
        .into_iter()
        .filter(|_| public_wanted != Some(false))
        .filter(|f| min_ram.is_none_or(|m| f.memory_mb >= m))
        .filter(|f| min_disk.is_none_or(|m| f.root_gb >= m))
        .collect();
    flavors.sort_by(|a, b| {
        let o = compare(a, b, sort_key).then_with(|| a.id.cmp(&b.id));
        if desc { o.reverse() } else { o }
    });
    if let Some(m) = marker {
        match flavors.iter().position(|f| f.id.as_str() == m) {
            Some(i) => {
                flavors.drain(..=i);
            }
            None => return Err(NovaError::bad_request(format!("marker [{}] not found", m.escape_default()))),
        }
    }
    flavors.truncate(limit as usize);
    let items: Vec<Value> = flavors.iter().map(|f| if detail { detailed(ctx, f) } else { basic(ctx, f) }).collect();
    let mut body = json!({ "flavors": items });
    let collection = if detail { "flavors/detail" } else { "flavors" };
    if let Some(links) = q.next_links(ctx, collection, flavors.len(), flavors.last().map(|f| f.id.as_str())) {
        body["flavors_links"] = links;
    }
    Ok(Json(body))
}

fn compare(a: &Flavor, b: &Flavor, key: &str) -> Ordering {
    match key {
        "name" => a.name.cmp(&b.name),
        "memory_mb" => a.memory_mb.cmp(&b.memory_mb),
        "root_gb" => a.root_gb.cmp(&b.root_gb),
        "ephemeral_gb" => a.ephemeral_gb.cmp(&b.ephemeral_gb),
        "swap" => a.swap_mb.cmp(&b.swap_mb),
        "vcpus" => a.vcpus.cmp(&b.vcpus),
        // flavorid and id order the same here; the other keys are equal for every flavor.
        _ => a.id.cmp(&b.id),
    }
}

/// Nova's `_parse_is_public`: absent means public only, `None` (any case) means all,
/// otherwise a strict boolean.
fn parse_is_public(raw: Option<&str>) -> NovaResult<Option<bool>> {
    let Some(raw) = raw else {
        return Ok(Some(true));
    };
    if raw.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    match raw.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "on" | "y" | "yes" => Ok(Some(true)),
        "0" | "f" | "false" | "off" | "n" | "no" => Ok(Some(false)),
        _ => Err(NovaError::bad_request(format!("Invalid is_public filter [{}]", raw.escape_default()))),
    }
}

fn int_filter(q: &Query, name: &str) -> NovaResult<Option<i64>> {
    match q.get(name) {
        None => Ok(None),
        Some(raw) => raw
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| NovaError::bad_request(format!("Invalid {name} filter [{}]", raw.escape_default()))),
    }
}

fn basic(ctx: &NovaCtx, f: &Flavor) -> Value {
    let mut v = json!({
        "id": f.id.as_str(),
        "name": f.name,
        "links": ctx.links("flavors", f.id.as_str()),
    });
    if ctx.at_least(2, 55) {
        v["description"] = Value::Null;
    }
    v
}

/// The detailed flavor view (`ViewBuilder.show`).
pub(super) fn detailed(ctx: &NovaCtx, f: &Flavor) -> Value {
    let swap = if ctx.at_least(2, 75) || f.swap_mb != 0 { json!(f.swap_mb) } else { json!("") };
    let mut v = json!({
        "id": f.id.as_str(),
        "name": f.name,
        "ram": f.memory_mb,
        "disk": f.root_gb,
        "swap": swap,
        "OS-FLV-EXT-DATA:ephemeral": f.ephemeral_gb,
        "OS-FLV-DISABLED:disabled": false,
        "vcpus": f.vcpus,
        "os-flavor-access:is_public": true,
        "rxtx_factor": 1.0,
        "links": ctx.links("flavors", f.id.as_str()),
    });
    if ctx.at_least(2, 55) {
        v["description"] = Value::Null;
    }
    if ctx.at_least(2, 61) {
        v["extra_specs"] = json!(f.extra_specs);
    }
    v
}
