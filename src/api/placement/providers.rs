//! `/resource_providers` and `/resource_providers/{uuid}`.

use std::collections::{BTreeMap, BTreeSet};

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::query::{self, Filters};
use super::{ApiError, ApiResult, Ctx, Reply, schema};
use crate::error::{Conflict, Error, Kind};
use crate::model::{NewProvider, ProviderId, ProviderNode};
use crate::store::placement::{PlacementTree, update_tree};

/// The provider `id` and the tree holding it, or Placement's 404.
pub async fn load(ctx: &Ctx, id: &str) -> Result<(PlacementTree, ProviderId), ApiError> {
    let not_found = || ApiError::not_found(format!("No resource provider with uuid {id} found"));
    let pid: ProviderId = parse_uuid(id).ok_or_else(not_found)?;
    match ctx.store().placement_tree(pid).await {
        Ok(t) => Ok((t, pid)),
        Err(Error::NotFound { kind: Kind::Provider, .. }) => Err(not_found()),
        Err(e) => Err(ApiError::from_store(e)),
    }
}

/// A UUID as Placement accepts it in paths and bodies (with or without dashes).
pub fn parse_uuid(s: &str) -> Option<ProviderId> {
    schema::is_uuid_like(s).then(|| uuid::Uuid::parse_str(s).ok().map(ProviderId)).flatten()
}

/// The node of `id` in `t` (present when `t` was read for `id`).
pub fn node(t: &PlacementTree, id: ProviderId) -> Result<&ProviderNode, ApiError> {
    t.tree.node(id).ok_or_else(|| ApiError::not_found(format!("No resource provider with uuid {id} found")))
}

fn links(ctx: &Ctx, id: ProviderId) -> Value {
    let url = format!("/resource_providers/{id}");
    let mut links = vec![json!({"rel": "self", "href": url})];
    let mut rels = vec!["inventories", "usages"];
    if ctx.at_least(1, 1) {
        rels.push("aggregates");
    }
    if ctx.at_least(1, 6) {
        rels.push("traits");
    }
    if ctx.at_least(1, 11) {
        rels.push("allocations");
    }
    links.extend(rels.into_iter().map(|r| json!({"rel": r, "href": format!("{url}/{r}")})));
    Value::Array(links)
}

/// Placement's `_serialize_provider`.
pub fn serialize(ctx: &Ctx, t: &PlacementTree, n: &ProviderNode) -> Value {
    let mut v = json!({
        "uuid": n.id.to_string(),
        "name": n.name,
        "generation": t.generation(n.id),
        "links": links(ctx, n.id),
    });
    if ctx.at_least(1, 14) {
        v["parent_provider_uuid"] = json!(n.parent.map(|p| p.to_string()));
        v["root_provider_uuid"] = json!(t.tree.root.to_string());
    }
    v
}

fn post_schema(ctx: &Ctx, put: bool) -> Value {
    let mut s = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 200},
            "uuid": {"type": "string", "format": "uuid"},
        },
        "required": ["name"],
        "additionalProperties": false,
    });
    if ctx.at_least(1, 14) {
        s["properties"]["parent_provider_uuid"] =
            json!({"anyOf": [{"type": "string", "format": "uuid"}, {"type": "null"}]});
    }
    if put && let Some(p) = s["properties"].as_object_mut() {
        p.remove("uuid");
    }
    s
}

/// `POST /resource_providers`.
pub async fn create(ctx: &Ctx) -> ApiResult {
    ctx.require_json()?;
    ctx.admin_only()?;
    let data = ctx.json(&post_schema(ctx, false))?;
    let name = data["name"].as_str().unwrap_or_default().to_string();
    let id = match data.get("uuid").and_then(Value::as_str) {
        Some(u) => parse_uuid(u).ok_or_else(|| ApiError::bad_request(format!("Malformed uuid: {u}")))?,
        None => ProviderId::new_v4(),
    };
    let fail = |reason: &str| {
        ApiError::bad_request(format!(
            "Unable to create resource provider \"{name}\", {id}: Object action create failed because: {reason}"
        ))
    };
    let parent = match data.get("parent_provider_uuid").and_then(Value::as_str) {
        Some(p) => {
            let p = parse_uuid(p).ok_or_else(|| fail("parent provider UUID does not exist."))?;
            if p == id {
                return Err(fail(
                    "parent provider UUID cannot be same as UUID. Please set parent provider UUID to None if there \
                     is no parent.",
                ));
            }
            Some(p)
        }
        None => None,
    };
    let new = NewProvider {
        id,
        name: name.clone(),
        parent,
        cell: None,
        inventories: BTreeMap::new(),
        traits: BTreeSet::new(),
        aggregates: BTreeSet::new(),
    };
    match ctx.store().create_provider(&new).await {
        Ok(_) => {}
        Err(Error::AlreadyExists { kind: Kind::Provider, .. }) => {
            return Err(ApiError::conflict(format!("Conflicting resource provider uuid: {id} already exists."))
                .code(super::error::DUPLICATE_NAME));
        }
        Err(Error::Conflict(Conflict::DuplicateName { .. })) => {
            return Err(ApiError::conflict(format!("Conflicting resource provider name: {name} already exists."))
                .code(super::error::DUPLICATE_NAME));
        }
        Err(Error::NotFound { kind: Kind::Provider, .. }) => return Err(fail("parent provider UUID does not exist.")),
        Err(Error::InvalidInput { message, .. }) => return Err(fail(&message)),
        Err(e) => return Err(ApiError::from_store(e)),
    }
    let location = format!("/resource_providers/{id}");
    if ctx.at_least(1, 20) {
        let (t, _) = load(ctx, &id.to_string()).await?;
        let body = serialize(ctx, &t, node(&t, id)?);
        Ok(Reply { location: Some(location), ..Reply::json(body).cached(ctx) })
    } else {
        Ok(Reply { location: Some(location), ..Reply::empty(StatusCode::CREATED) })
    }
}

/// `GET /resource_providers/{uuid}`.
pub async fn show(ctx: &Ctx, id: &str) -> ApiResult {
    ctx.accept_json()?;
    ctx.admin_only()?;
    let (t, pid) = load(ctx, id).await?;
    Ok(Reply::json(serialize(ctx, &t, node(&t, pid)?)).cached(ctx))
}

/// `DELETE /resource_providers/{uuid}`.
pub async fn delete(ctx: &Ctx, id: &str) -> ApiResult {
    ctx.admin_only()?;
    let not_found = || ApiError::not_found(format!("No resource provider with uuid {id} found for delete"));
    let pid = parse_uuid(id).ok_or_else(not_found)?;
    let t = match ctx.store().placement_tree(pid).await {
        Ok(t) => t,
        Err(Error::NotFound { .. }) => return Err(not_found()),
        Err(e) => return Err(ApiError::from_store(e)),
    };
    let in_use = || {
        ApiError::conflict(format!("Unable to delete resource provider {id}: Resource provider has allocations."))
            .code(super::error::PROVIDER_IN_USE)
    };
    if t.tree.providers.iter().any(|p| p.parent == Some(pid)) {
        return Err(ApiError::conflict(format!(
            "Unable to delete parent resource provider {id}: It has child resource providers."
        ))
        .code(super::error::PROVIDER_CANNOT_DELETE_PARENT));
    }
    if t.consumers.values().any(|c| c.allocation.allocations.contains_key(&pid)) {
        return Err(in_use());
    }
    match ctx.store().delete_provider(pid).await {
        Ok(()) => Ok(Reply::empty(StatusCode::NO_CONTENT)),
        Err(Error::NotFound { .. }) => Err(not_found()),
        Err(Error::Conflict(Conflict::ProviderInUse { .. })) => Err(in_use()),
        Err(e) => Err(ApiError::from_store(e)),
    }
}

/// `PUT /resource_providers/{uuid}`: rename, and from 1.14 set the parent (re-parent and
/// un-parent from 1.37).
pub async fn update(ctx: &Ctx, id: &str) -> ApiResult {
    ctx.require_json()?;
    ctx.admin_only()?;
    let (t, pid) = load(ctx, id).await?;
    let data = ctx.json(&post_schema(ctx, true))?;
    let name = data["name"].as_str().unwrap_or_default().to_string();
    let allow_reparenting = ctx.at_least(1, 37);
    let fail = |reason: &str| {
        ApiError::bad_request(format!(
            "Unable to save resource provider {id}: Object action update failed because: {reason}"
        ))
    };
    let current_parent = node(&t, pid)?.parent;
    // Where the provider goes, decided on the tree as read; the store re-checks atomically.
    enum Move {
        Stay,
        Within(ProviderId),
        To(Option<ProviderId>),
    }
    let mv = match data.get("parent_provider_uuid") {
        None => Move::Stay,
        Some(Value::Null) => match current_parent {
            None => Move::Stay,
            Some(_) if !allow_reparenting => return Err(fail("un-parenting a provider is not currently allowed.")),
            Some(_) => Move::To(None),
        },
        Some(p) => {
            let parent = p.as_str().and_then(parse_uuid).ok_or_else(|| fail("parent provider UUID does not exist."))?;
            if current_parent == Some(parent) {
                Move::Stay
            } else {
                if current_parent.is_some() && !allow_reparenting {
                    return Err(fail("re-parenting a provider is not currently allowed."));
                }
                if t.subtree(pid).contains(&parent) {
                    return Err(fail("creating loop in the provider tree is not allowed."));
                }
                match ctx.store().placement_tree(parent).await {
                    Ok(pt) if pt.tree.root == t.tree.root => Move::Within(parent),
                    Ok(_) => Move::To(Some(parent)),
                    Err(Error::NotFound { .. }) => return Err(fail("parent provider UUID does not exist.")),
                    Err(e) => return Err(ApiError::from_store(e)),
                }
            }
        }
    };
    let renamed = node(&t, pid)?.name != name;
    if renamed || matches!(mv, Move::Within(_)) {
        let result = update_tree(ctx.store(), pid, |tree| {
            tree.rename(pid, &name)?;
            if let Move::Within(parent) = mv {
                tree.reparent_within(pid, parent)?;
            }
            Ok(())
        })
        .await;
        match result {
            Ok(_) => {}
            Err(Error::Conflict(Conflict::DuplicateName { .. })) => {
                return Err(ApiError::conflict(format!("Conflicting resource provider {name} already exists."))
                    .code(super::error::DUPLICATE_NAME));
            }
            Err(Error::InvalidInput { message, .. }) => return Err(fail(&message)),
            Err(e) => return Err(ApiError::from_store(e)),
        }
    }
    if let Move::To(parent) = mv {
        match ctx.store().move_provider(pid, parent).await {
            Ok(()) => {}
            Err(Error::Conflict(Conflict::ProviderInUse { .. })) => {
                return Err(ApiError::conflict(format!(
                    "Unable to move resource provider {id} to another provider tree: unicell keeps allocations \
                     per provider tree, and providers of this subtree hold allocations. Remove them first."
                )));
            }
            Err(Error::NotFound { .. }) => return Err(fail("parent provider UUID does not exist.")),
            Err(e) => return Err(ApiError::from_store(e)),
        }
    }
    let (t, pid) = load(ctx, id).await?;
    Ok(Reply::json(serialize(ctx, &t, node(&t, pid)?)).cached(ctx))
}

/// `GET /resource_providers` with `name`, `uuid`, `member_of`, `resources`, `in_tree`,
/// `required`.
pub async fn list(ctx: &Ctx) -> ApiResult {
    ctx.accept_json()?;
    ctx.admin_only()?;
    let mut props = serde_json::Map::new();
    props.insert("name".into(), json!({"type": "string"}));
    props.insert("uuid".into(), json!({"type": "string", "format": "uuid"}));
    if ctx.at_least(1, 3) {
        props.insert("member_of".into(), json!({"type": "string"}));
    }
    if ctx.at_least(1, 4) {
        props.insert("resources".into(), json!({"type": "string"}));
    }
    if ctx.at_least(1, 14) {
        props.insert("in_tree".into(), json!({"type": "string", "format": "uuid"}));
    }
    if ctx.at_least(1, 18) {
        props.insert("required".into(), json!({"type": "string"}));
    }
    query::validate(ctx, &json!({"type": "object", "properties": props, "additionalProperties": false}))?;
    let filters = Filters::from_request(ctx).await?;
    let trees = ctx.store().placement_trees().await.map_err(ApiError::from_store)?;
    let mut out = Vec::new();
    for t in &trees {
        for n in &t.tree.providers {
            if filters.matches(t, n) {
                out.push(serialize(ctx, t, n));
            }
        }
    }
    Ok(Reply::json(json!({"resource_providers": out})).cached(ctx))
}
