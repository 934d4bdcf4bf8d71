//! `/allocations/{consumer}`, `POST /allocations` (1.13+) and
//! `/resource_providers/{uuid}/allocations`.
//!
//! Every write is [`PlacementTree::set_allocations`] applied through the store's
//! compare-and-set ([`update_tree`]): generations and capacity are checked by the store
//! against the state the write lands on. A consumer's allocations live on one provider tree
//! (unicell's claim contract): a request whose providers span trees, or that would move a
//! consumer to another tree, is refused with a message saying so.

use std::collections::{BTreeMap, BTreeSet};

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use super::providers::{load, parse_uuid};
use super::{ApiError, ApiResult, Ctx, Reply, error, query, since};
use crate::error::{Conflict, Error, Kind};
use crate::model::{AllocationMap, ConsumerId, ProviderId, Resources};
use crate::store::placement::{
    AllocationWrite, ExpectedGeneration, INCOMPLETE_CONSUMER_ID, PlacementTree, update_tree,
};

const UUID_PATTERN: &str = "^[0-9a-fA-F-]{36}$";
const RC_PATTERN: &str = "^[A-Z0-9_]+$";

fn resources_schema() -> Value {
    json!({"type": "object", "minProperties": 1,
        "patternProperties": {RC_PATTERN: {"type": "integer", "minimum": 1}}, "additionalProperties": false})
}

fn id_schema() -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": 255})
}

/// The body schema of `PUT /allocations/{consumer}` (`post`: one entry of `POST /allocations`).
fn schema(ctx: &Ctx, post: bool) -> Value {
    if !ctx.at_least(1, 12) {
        let mut s = json!({
            "type": "object",
            "properties": {"allocations": {"type": "array", "minItems": 1, "items": {
                "type": "object",
                "properties": {
                    "resource_provider": {"type": "object", "properties": {"uuid": {"type": "string", "format": "uuid"}},
                        "additionalProperties": false, "required": ["uuid"]},
                    "resources": resources_schema(),
                },
                "required": ["resource_provider", "resources"],
                "additionalProperties": false,
            }}},
            "required": ["allocations"],
            "additionalProperties": false,
        });
        if ctx.at_least(1, 8) {
            s["properties"]["project_id"] = id_schema();
            s["properties"]["user_id"] = id_schema();
            s["required"] = json!(["allocations", "project_id", "user_id"]);
        }
        return s;
    }
    let deletable = post || ctx.at_least(1, 28);
    let mut s = json!({
        "type": "object",
        "properties": {
            "allocations": {
                "type": "object",
                "minProperties": if deletable { 0 } else { 1 },
                "patternProperties": {UUID_PATTERN: {
                    "type": "object",
                    "properties": {"generation": {"type": "integer"}, "resources": resources_schema()},
                    "required": ["resources"],
                    "additionalProperties": false,
                }},
                "additionalProperties": false,
            },
            "project_id": id_schema(),
            "user_id": id_schema(),
        },
        "additionalProperties": false,
        "required": ["allocations", "project_id", "user_id"],
    });
    let mut required = vec!["allocations", "project_id", "user_id"];
    if ctx.at_least(1, 28) {
        s["properties"]["consumer_generation"] = json!({"type": ["integer", "null"], "additionalProperties": false});
        required.push("consumer_generation");
    }
    if ctx.at_least(1, 34) {
        s["properties"]["mappings"] = json!({"type": "object", "minProperties": 1,
            "patternProperties": {"[a-zA-Z0-9_-]{1,64}": {"type": "array", "minItems": 1,
                "items": {"type": "string", "format": "uuid"}}}});
    }
    if ctx.at_least(1, 38) {
        s["properties"]["consumer_type"] =
            json!({"type": "string", "pattern": RC_PATTERN, "minLength": 1, "maxLength": 255});
        required.push("consumer_type");
    }
    s["required"] = json!(required);
    s
}

/// One consumer's request, parsed.
struct Parsed {
    write: AllocationWrite,
}

fn parse_consumer_body(ctx: &Ctx, consumer: ConsumerId, data: &Value) -> Result<Parsed, ApiError> {
    let mut allocations: BTreeMap<String, Resources> = BTreeMap::new();
    let mut raw: Vec<(String, &Value)> = Vec::new();
    match &data["allocations"] {
        Value::Array(list) => {
            for a in list {
                raw.push((a["resource_provider"]["uuid"].as_str().unwrap_or_default().to_string(), &a["resources"]));
            }
        }
        Value::Object(m) => {
            for (rp, a) in m {
                raw.push((rp.clone(), &a["resources"]));
            }
        }
        _ => {}
    }
    for (rp, resources) in raw {
        let entry = allocations.entry(rp).or_default();
        if let Some(m) = resources.as_object() {
            for (rc, amount) in m {
                let class = crate::model::ResourceClass::parse(rc).map_err(|_| {
                    ApiError::bad_request(format!(
                        "Unable to allocate inventory for consumer {consumer}: No such resource class {rc}."
                    ))
                })?;
                entry.insert(class, amount.as_i64().unwrap_or(0));
            }
        }
    }
    let (project, user) =
        match (data.get("project_id").and_then(Value::as_str), data.get("user_id").and_then(Value::as_str)) {
            (Some(p), Some(u)) => (p.to_string(), u.to_string()),
            _ => (INCOMPLETE_CONSUMER_ID.to_string(), INCOMPLETE_CONSUMER_ID.to_string()),
        };
    let expected = if ctx.at_least(1, 28) {
        match data.get("consumer_generation").and_then(Value::as_u64) {
            Some(g) => ExpectedGeneration::Is(g),
            None => ExpectedGeneration::New,
        }
    } else {
        ExpectedGeneration::Unchecked
    };
    let mut by_provider = AllocationMap::new();
    for (rp, res) in allocations {
        let id = parse_uuid(&rp).ok_or_else(|| {
            ApiError::bad_request(format!("Allocation for resource provider '{rp}' that does not exist."))
        })?;
        by_provider.insert(id, res);
    }
    Ok(Parsed {
        write: AllocationWrite {
            consumer,
            project_id: project,
            user_id: user,
            consumer_type: data.get("consumer_type").and_then(Value::as_str).map(String::from),
            expected,
            allocations: by_provider,
        },
    })
}

/// Checks that every class named exists (standard or registered custom).
async fn check_classes(ctx: &Ctx, writes: &[AllocationWrite], prefix: &str) -> Result<(), ApiError> {
    let mut seen = BTreeSet::new();
    for w in writes {
        for res in w.allocations.values() {
            for class in res.keys() {
                if seen.insert(class.clone()) {
                    query::known_class(ctx, class.as_str())
                        .await
                        .map_err(|m| ApiError::bad_request(format!("{prefix}{m}")))?;
                }
            }
        }
    }
    Ok(())
}

/// The single tree a write lands on: every provider named and every tree the consumers hold
/// allocations on. Providers that do not exist are Placement's 400.
async fn target_tree(ctx: &Ctx, writes: &[AllocationWrite]) -> Result<Option<ProviderId>, ApiError> {
    let mut named_roots: BTreeMap<ProviderId, ProviderId> = BTreeMap::new();
    for w in writes {
        for rp in w.allocations.keys() {
            match ctx.store().placement_tree(*rp).await {
                Ok(t) => {
                    named_roots.insert(*rp, t.tree.root);
                }
                Err(Error::NotFound { kind: Kind::Provider, .. }) => {
                    return Err(ApiError::bad_request(format!(
                        "Allocation for resource provider '{rp}' that does not exist."
                    )));
                }
                Err(e) => return Err(ApiError::from_store(e)),
            }
        }
    }
    let roots: BTreeSet<ProviderId> = named_roots.values().copied().collect();
    if roots.len() > 1 {
        let list = named_roots.iter().map(|(p, r)| format!("{p} (tree {r})")).collect::<Vec<_>>().join(", ");
        return Err(ApiError::bad_request(format!(
            "Unable to allocate inventory: unicell writes allocations on one provider tree at a time (its claims \
             are atomic per tree) and this request names providers of {} trees: {list}. Allocations spanning \
             provider trees, including sharing providers, are not supported.",
            roots.len()
        )));
    }
    let mut held: BTreeSet<ProviderId> = BTreeSet::new();
    for w in writes {
        for a in ctx.store().allocations(w.consumer).await.map_err(ApiError::from_store)? {
            held.insert(a.root);
        }
    }
    let target = roots.iter().next().copied();
    let all: BTreeSet<ProviderId> = roots.union(&held).copied().collect();
    if all.len() > 1 {
        return Err(ApiError::conflict(format!(
            "Unable to allocate inventory: the consumers of this request hold allocations on provider tree(s) {} \
             and unicell keeps a consumer's allocations on one provider tree; moving them to another tree in one \
             request is not supported. Delete the allocations first, or use a separate consumer (as Nova does with \
             a migration uuid).",
            held.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(target.or_else(|| held.into_iter().next()))
}

/// Writes `writes` on one tree, mapping errors as Placement does (`prefix_400` for missing
/// inventory-related 400s).
async fn write(ctx: &Ctx, writes: Vec<AllocationWrite>, consumer_for_400: Option<ConsumerId>) -> ApiResult {
    let prefix = match consumer_for_400 {
        Some(c) => format!("Unable to allocate inventory for consumer {c}: "),
        None => "Unable to allocate inventory ".to_string(),
    };
    check_classes(ctx, &writes, &prefix).await?;
    let Some(root) = target_tree(ctx, &writes).await? else {
        // Nothing named and nothing held: only the consumer-generation checks remain.
        for w in &writes {
            if let ExpectedGeneration::Is(g) = w.expected {
                return Err(ApiError::conflict(format!("consumer generation conflict - expected null but got {g}"))
                    .code(error::CONCURRENT_UPDATE));
            }
        }
        return Ok(Reply::empty(StatusCode::NO_CONTENT));
    };
    match update_tree(ctx.store(), root, |t| t.set_allocations(&writes)).await {
        Ok(_) => Ok(Reply::empty(StatusCode::NO_CONTENT)),
        Err(e) => Err(alloc_error(e)),
    }
}

fn alloc_error(e: Error) -> ApiError {
    match e {
        Error::Conflict(Conflict::ConsumerGeneration { expected, got, .. }) => {
            ApiError::conflict(format!("consumer generation conflict - expected {expected} but got {got}"))
                .code(error::CONCURRENT_UPDATE)
        }
        Error::Conflict(Conflict::Generation { .. }) => ApiError::conflict(
            "Inventory and/or allocations changed while attempting to allocate: Another thread concurrently updated \
             the resource provider data. Please retry your update",
        )
        .code(error::CONCURRENT_UPDATE),
        Error::Capacity { provider, class, .. } => ApiError::conflict(format!(
            "Unable to allocate inventory: Unable to create allocation for '{class}' on resource provider \
             '{provider}'. The requested amount would exceed the capacity."
        )),
        Error::NotFound { kind: Kind::Inventory, id } => {
            ApiError::conflict(format!("Unable to allocate inventory: Inventory for {id} invalid."))
        }
        Error::InvalidInput { field, .. } if field.starts_with("allocation ") => ApiError::conflict(format!(
            "Unable to allocate inventory: Unable to create allocation for {}. The requested amount would violate \
             inventory constraints.",
            &field["allocation ".len()..]
        )),
        Error::InvalidInput { message, .. } => {
            ApiError::bad_request(format!("Unable to allocate inventory: {message}"))
        }
        e => ApiError::from_store(e),
    }
}

fn consumer_id(s: &str) -> Result<ConsumerId, ApiError> {
    parse_uuid(s).map(|p| ConsumerId(p.0)).ok_or_else(|| ApiError::bad_request(format!("Malformed consumer_uuid: {s}")))
}

/// `PUT /allocations/{consumer}`.
pub async fn put(ctx: &Ctx, consumer: &str) -> ApiResult {
    ctx.require_json()?;
    ctx.admin_only()?;
    let c = consumer_id(consumer)?;
    let data = ctx.json(&schema(ctx, false))?;
    let parsed = parse_consumer_body(ctx, c, &data)?;
    write(ctx, vec![parsed.write], Some(c)).await
}

/// `POST /allocations` (1.13+): several consumers in one atomic write (on one tree).
pub async fn post(ctx: &Ctx) -> ApiResult {
    since(ctx, 1, 13)?;
    ctx.require_json()?;
    ctx.admin_only()?;
    let s = json!({"type": "object", "minProperties": 1, "additionalProperties": false,
        "patternProperties": {UUID_PATTERN: schema(ctx, true)}});
    let data = ctx.json(&s)?;
    let mut writes = Vec::new();
    if let Some(m) = data.as_object() {
        for (consumer, body) in m {
            let c = consumer_id(consumer)?;
            writes.push(parse_consumer_body(ctx, c, body)?.write);
        }
    }
    write(ctx, writes, None).await
}

/// `DELETE /allocations/{consumer}`: removes everything the consumer holds.
pub async fn delete(ctx: &Ctx, consumer: &str) -> ApiResult {
    ctx.admin_only()?;
    let none = || ApiError::not_found(format!("No allocations for consumer '{consumer}'"));
    let c = parse_uuid(consumer).map(|p| ConsumerId(p.0)).ok_or_else(none)?;
    let released = ctx.store().release(c).await.map_err(ApiError::from_store)?;
    if released.roots.is_empty() {
        return Err(none());
    }
    Ok(Reply::empty(StatusCode::NO_CONTENT))
}

/// `GET /allocations/{consumer}`.
pub async fn for_consumer(ctx: &Ctx, consumer: &str) -> ApiResult {
    ctx.accept_json()?;
    ctx.admin_only()?;
    let Some(c) = parse_uuid(consumer).map(|p| ConsumerId(p.0)) else {
        return Ok(Reply::json(json!({"allocations": {}})).cached(ctx));
    };
    let held = ctx.store().allocations(c).await.map_err(ApiError::from_store)?;
    let mut allocs = Map::new();
    let mut record = None;
    for a in held {
        let t = match ctx.store().placement_tree(a.root).await {
            Ok(t) => t,
            Err(Error::NotFound { .. }) => continue,
            Err(e) => return Err(ApiError::from_store(e)),
        };
        let Some(r) = t.consumers.get(&c) else { continue };
        for (rp, res) in &r.allocation.allocations {
            let resources: Map<String, Value> = res.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
            allocs.insert(rp.to_string(), json!({"generation": t.generation(*rp), "resources": resources}));
        }
        record.get_or_insert_with(|| r.clone());
    }
    let mut body = json!({"allocations": allocs});
    if let Some(r) = record
        && ctx.at_least(1, 12)
    {
        body["project_id"] = json!(r.allocation.project_id);
        body["user_id"] = json!(r.allocation.user_id);
        if ctx.at_least(1, 28) {
            body["consumer_generation"] = json!(r.generation);
        }
        if ctx.at_least(1, 38) {
            body["consumer_type"] = json!(r.consumer_type.unwrap_or_else(|| "unknown".to_string()));
        }
    }
    Ok(Reply::json(body).cached(ctx))
}

/// `GET /resource_providers/{uuid}/allocations`.
pub async fn for_provider(ctx: &Ctx, id: &str) -> ApiResult {
    ctx.accept_json()?;
    ctx.admin_only()?;
    let (t, rp) = load(ctx, id)
        .await
        .map_err(|e| ApiError { detail: format!("Resource provider '{id}' not found: {}", e.detail), ..e })?;
    Ok(Reply::json(provider_allocations(ctx, &t, rp)).cached(ctx))
}

fn provider_allocations(ctx: &Ctx, t: &PlacementTree, rp: ProviderId) -> Value {
    let mut out = Map::new();
    for (c, r) in &t.consumers {
        if let Some(res) = r.allocation.allocations.get(&rp) {
            let resources: Map<String, Value> = res.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
            let mut entry = json!({"resources": resources});
            if ctx.at_least(1, 28) {
                entry["consumer_generation"] = json!(r.generation);
            }
            out.insert(c.to_string(), entry);
        }
    }
    json!({"allocations": out, "resource_provider_generation": t.generation(rp)})
}
