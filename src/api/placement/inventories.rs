//! `/resource_providers/{uuid}/inventories[/{resource_class}]`.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use super::providers::{load, node};
use super::{ApiError, ApiResult, Ctx, Reply, error};
use crate::error::{Conflict, Error};
use crate::model::{Inventory, MAX_AMOUNT, ProviderId, ResourceClass};
use crate::store::placement::{PlacementTree, update_tree};

/// Placement's largest `allocation_ratio` (`SQL_SP_FLOAT_MAX`).
const SQL_SP_FLOAT_MAX: f64 = 3.40282e38;

fn record_schema(generation_required: bool) -> Value {
    let int = |min: i64| json!({"type": "integer", "maximum": MAX_AMOUNT, "minimum": min});
    let mut required = vec!["total"];
    if generation_required {
        required.push("resource_provider_generation");
    }
    json!({
        "type": "object",
        "properties": {
            "resource_provider_generation": {"type": "integer"},
            "total": int(1),
            "reserved": int(0),
            "min_unit": int(1),
            "max_unit": int(1),
            "step_size": int(1),
            "allocation_ratio": {"type": "number", "maximum": SQL_SP_FLOAT_MAX},
        },
        "required": required,
        "additionalProperties": false,
    })
}

fn to_inventory(v: &Value) -> Inventory {
    let d = Inventory::default();
    let i = |k: &str, default: i64| v.get(k).and_then(Value::as_f64).map_or(default, |f| f as i64);
    Inventory {
        total: i("total", d.total),
        reserved: i("reserved", d.reserved),
        min_unit: i("min_unit", d.min_unit),
        max_unit: i("max_unit", d.max_unit),
        step_size: i("step_size", d.step_size),
        allocation_ratio: v.get("allocation_ratio").and_then(Value::as_f64).unwrap_or(d.allocation_ratio),
    }
}

/// Placement's `_validate_inventory_capacity`: capacity must be positive before 1.26, at
/// least zero from 1.26 (reserved may equal total).
fn check_capacity(ctx: &Ctx, rp: ProviderId, class: &str, inv: &Inventory) -> Result<(), String> {
    let capacity = (inv.total - inv.reserved) as f64 * inv.allocation_ratio;
    if ctx.at_least(1, 26) {
        if capacity < 0.0 {
            return Err(format!(
                "Invalid inventory for '{class}' on resource provider '{rp}'. The reserved value is greater than total."
            ));
        }
    } else if capacity <= 0.0 {
        return Err(format!(
            "Invalid inventory for '{class}' on resource provider '{rp}'. The reserved value is greater than or equal \
             to total."
        ));
    }
    Ok(())
}

fn serialize_one(inv: &Inventory) -> Value {
    json!({
        "total": inv.total,
        "reserved": inv.reserved,
        "min_unit": inv.min_unit,
        "max_unit": inv.max_unit,
        "step_size": inv.step_size,
        "allocation_ratio": inv.allocation_ratio,
    })
}

fn serialize_all(t: &PlacementTree, rp: ProviderId) -> Result<Value, ApiError> {
    let n = node(t, rp)?;
    let invs: Map<String, Value> = n.inventories.iter().map(|(c, i)| (c.to_string(), serialize_one(i))).collect();
    Ok(json!({"resource_provider_generation": t.generation(rp), "inventories": invs}))
}

/// Classes with allocations on `rp` that `keep` drops, in Placement's order.
fn in_use(t: &PlacementTree, rp: ProviderId, keep: &BTreeMap<ResourceClass, Inventory>) -> Vec<String> {
    t.tree
        .node(rp)
        .map(|n| {
            n.usages.iter().filter(|(c, u)| **u > 0 && !keep.contains_key(*c)).map(|(c, _)| c.to_string()).collect()
        })
        .unwrap_or_default()
}

fn in_use_message(rp: ProviderId, classes: &[String]) -> String {
    format!("Inventory for '{}' on resource provider '{rp}' in use.", classes.join(", "))
}

/// The store error of an inventory write, as Placement words it.
fn write_error(e: Error, rp: ProviderId, what: &str) -> ApiError {
    match e {
        Error::Conflict(Conflict::ProviderGeneration { .. }) => {
            ApiError::conflict("resource provider generation conflict").code(error::CONCURRENT_UPDATE)
        }
        Error::Conflict(Conflict::InventoryInUse { class, .. }) => {
            ApiError::conflict(format!("update conflict: {}", in_use_message(rp, &[class.to_string()])))
                .code(error::INVENTORY_INUSE)
        }
        Error::InvalidInput { message, .. } => {
            ApiError::bad_request(format!("Unable to {what} inventory for resource provider {rp}: {message}"))
        }
        e => ApiError::from_store(e),
    }
}

/// `GET .../inventories`.
pub async fn list(ctx: &Ctx, id: &str) -> ApiResult {
    ctx.accept_json()?;
    ctx.admin_only()?;
    let (t, rp) = load(ctx, id).await.map_err(|e| ApiError { detail: format!("{} : ", e.detail), ..e })?;
    Ok(Reply::json(serialize_all(&t, rp)?).cached(ctx))
}

/// `GET .../inventories/{rc}`.
pub async fn show(ctx: &Ctx, id: &str, rc: &str) -> ApiResult {
    ctx.accept_json()?;
    ctx.admin_only()?;
    let (t, rp) = load(ctx, id).await.map_err(|e| ApiError { detail: format!("{} : ", e.detail), ..e })?;
    let n = node(&t, rp)?;
    let inv = ResourceClass::parse(rc)
        .ok()
        .and_then(|c| n.inventories.get(&c))
        .ok_or_else(|| ApiError::not_found(format!("No inventory of class {rc} for {id}")))?;
    let mut body = serialize_one(inv);
    body["resource_provider_generation"] = json!(t.generation(rp));
    Ok(Reply::json(body).cached(ctx))
}

/// `POST .../inventories`: add one class (no generation check, as in Placement).
pub async fn create(ctx: &Ctx, id: &str) -> ApiResult {
    ctx.require_json()?;
    ctx.admin_only()?;
    let (_, rp) = load(ctx, id).await?;
    let mut s = record_schema(false);
    s["properties"]["resource_class"] = json!({"type": "string", "pattern": "^[A-Z0-9_]+$"});
    s["required"] = json!(["total", "resource_class"]);
    let data = ctx.json(&s)?;
    let rc = data["resource_class"].as_str().unwrap_or_default().to_string();
    let fail = |m: String| ApiError::bad_request(format!("Unable to create inventory for resource provider {rp}: {m}"));
    let class = super::query::known_class(ctx, &rc).await.map_err(fail)?;
    let inv = to_inventory(&data);
    check_capacity(ctx, rp, &rc, &inv).map_err(fail)?;
    let result = update_tree(ctx.store(), rp, |t| {
        let n = t.tree.node(rp).ok_or_else(|| Error::not_found(crate::error::Kind::Provider, rp))?;
        if n.inventories.contains_key(&class) {
            return Err(Error::already_exists(crate::error::Kind::Inventory, format!("{class} on {rp}")));
        }
        let mut invs = n.inventories.clone();
        invs.insert(class.clone(), inv);
        let g = t.generation(rp);
        t.set_inventories(rp, g, &invs)
    })
    .await;
    let (t, _) = match result {
        Ok(r) => r,
        Err(Error::AlreadyExists { .. }) => {
            return Err(ApiError::conflict(format!(
                "Update conflict: inventory of class {rc} already exists on resource provider {rp}"
            ))
            .code(error::CONCURRENT_UPDATE));
        }
        Err(e) => return Err(write_error(e, rp, "create")),
    };
    let mut body = serialize_one(&inv);
    body["resource_provider_generation"] = json!(t.generation(rp));
    Ok(Reply {
        status: Some(StatusCode::CREATED),
        location: Some(format!("/resource_providers/{rp}/inventories/{rc}")),
        ..Reply::json(body).cached(ctx)
    })
}

/// `PUT .../inventories`: replace every inventory of the provider.
pub async fn set_all(ctx: &Ctx, id: &str) -> ApiResult {
    ctx.require_json()?;
    ctx.admin_only()?;
    let (_, rp) = load(ctx, id).await?;
    let s = json!({
        "type": "object",
        "properties": {
            "resource_provider_generation": {"type": "integer"},
            "inventories": {"type": "object", "patternProperties": {"^[A-Z0-9_]+$": record_schema(false)}},
        },
        "required": ["inventories", "resource_provider_generation"],
        "additionalProperties": false,
    });
    let data = ctx.json(&s)?;
    let generation = data["resource_provider_generation"].as_u64();
    let mut invs = BTreeMap::new();
    if let Some(m) = data["inventories"].as_object() {
        for (rc, raw) in m {
            let class = super::query::known_class(ctx, rc).await.map_err(|m| {
                ApiError::bad_request(format!("Unknown resource class in inventory for resource provider {rp}: {m}"))
            })?;
            let inv = to_inventory(raw);
            check_capacity(ctx, rp, rc, &inv).map_err(|m| {
                ApiError::bad_request(format!("Unable to update inventory for resource provider {rp}: {m}"))
            })?;
            invs.insert(class, inv);
        }
    }
    let result = update_tree(ctx.store(), rp, |t| {
        let expected = generation.unwrap_or(u64::MAX);
        if t.generation(rp) == expected {
            let used = in_use(t, rp, &invs);
            if !used.is_empty() {
                return Err(Error::Conflict(Conflict::InUse {
                    kind: crate::error::Kind::Inventory,
                    name: used.join(", "),
                }));
            }
        }
        t.set_inventories(rp, expected, &invs)
    })
    .await;
    match result {
        Ok((t, _)) => Ok(Reply::json(serialize_all(&t, rp)?).cached(ctx)),
        Err(Error::Conflict(Conflict::InUse { name, .. })) => Err(ApiError::conflict(format!(
            "update conflict: {}",
            in_use_message(rp, &name.split(", ").map(String::from).collect::<Vec<_>>())
        ))
        .code(error::INVENTORY_INUSE)),
        Err(e) => Err(write_error(e, rp, "update")),
    }
}

/// `PUT .../inventories/{rc}`: update one existing class.
pub async fn update(ctx: &Ctx, id: &str, rc: &str) -> ApiResult {
    ctx.require_json()?;
    ctx.admin_only()?;
    let (_, rp) = load(ctx, id).await?;
    let data = ctx.json(&record_schema(true))?;
    let generation = data["resource_provider_generation"].as_u64().unwrap_or(u64::MAX);
    let inv = to_inventory(&data);
    let missing = || {
        ApiError::bad_request(format!(
            "No inventory record with resource class for resource provider {rp}: No inventory of class {rc} found."
        ))
    };
    let class = ResourceClass::parse(rc).ok();
    let result = update_tree(ctx.store(), rp, |t| {
        if t.generation(rp) != generation {
            return t.set_inventories(rp, generation, &BTreeMap::new());
        }
        check_capacity(ctx, rp, rc, &inv).map_err(|m| Error::invalid("inventory", m))?;
        let n = t.tree.node(rp).ok_or_else(|| Error::not_found(crate::error::Kind::Provider, rp))?;
        let Some(class) = class.clone().filter(|c| n.inventories.contains_key(c)) else {
            return Err(Error::not_found(crate::error::Kind::Inventory, rc));
        };
        let mut invs = n.inventories.clone();
        invs.insert(class, inv);
        t.set_inventories(rp, generation, &invs)
    })
    .await;
    match result {
        Ok((t, _)) => {
            let mut body = serialize_one(&inv);
            body["resource_provider_generation"] = json!(t.generation(rp));
            Ok(Reply::json(body).cached(ctx))
        }
        Err(Error::NotFound { kind: crate::error::Kind::Inventory, .. }) => Err(missing()),
        Err(e) => Err(write_error(e, rp, "update")),
    }
}

/// `DELETE .../inventories/{rc}`.
pub async fn delete(ctx: &Ctx, id: &str, rc: &str) -> ApiResult {
    ctx.admin_only()?;
    let (_, rp) = load(ctx, id).await?;
    let missing = || {
        ApiError::not_found(format!("No inventory of class {rc} found for delete: No inventory of class {rc} found."))
    };
    let class = ResourceClass::parse(rc).map_err(|_| missing())?;
    let result = update_tree(ctx.store(), rp, |t| {
        let n = t.tree.node(rp).ok_or_else(|| Error::not_found(crate::error::Kind::Provider, rp))?;
        if !n.inventories.contains_key(&class) {
            return Err(Error::not_found(crate::error::Kind::Inventory, rc));
        }
        let mut invs = n.inventories.clone();
        invs.remove(&class);
        let g = t.generation(rp);
        t.set_inventories(rp, g, &invs)
    })
    .await;
    match result {
        Ok(_) => Ok(Reply::empty(StatusCode::NO_CONTENT)),
        Err(Error::NotFound { kind: crate::error::Kind::Inventory, .. }) => Err(missing()),
        Err(Error::Conflict(Conflict::InventoryInUse { .. })) => Err(ApiError::conflict(format!(
            "Unable to delete inventory of class {rc}: {}",
            in_use_message(rp, &[rc.to_string()])
        ))
        .code(error::CONCURRENT_UPDATE)),
        Err(e) => Err(write_error(e, rp, "delete")),
    }
}

/// `DELETE .../inventories` (1.5+; 405 before, as in Placement).
pub async fn delete_all(ctx: &Ctx, id: &str) -> ApiResult {
    if !ctx.at_least(1, 5) {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "The method specified is not allowed for this resource.",
        ));
    }
    ctx.admin_only()?;
    let (_, rp) = load(ctx, id).await?;
    let result = update_tree(ctx.store(), rp, |t| {
        let used = in_use(t, rp, &BTreeMap::new());
        if !used.is_empty() {
            return Err(Error::Conflict(Conflict::InUse {
                kind: crate::error::Kind::Inventory,
                name: used.join(", "),
            }));
        }
        let g = t.generation(rp);
        t.set_inventories(rp, g, &BTreeMap::new())
    })
    .await;
    match result {
        Ok(_) => Ok(Reply::empty(StatusCode::NO_CONTENT)),
        Err(Error::Conflict(Conflict::InUse { name, .. })) => {
            Err(ApiError::conflict(in_use_message(rp, &name.split(", ").map(String::from).collect::<Vec<_>>()))
                .code(error::INVENTORY_INUSE))
        }
        Err(e) => Err(write_error(e, rp, "delete")),
    }
}
