//! `/traits`, `/traits/{name}` and `/resource_providers/{uuid}/traits` (1.6+).

use std::collections::BTreeSet;

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::providers::{load, node};
use super::{ApiError, ApiResult, Ctx, Reply, error, os_traits, query, since};
use crate::error::{Conflict, Error, Kind};
use crate::model::Trait;
use crate::store::placement::update_tree;

const INVALID_TRAIT: &str = "The trait is invalid. A valid trait must be no longer than 255 characters, start with \
                             the prefix \"CUSTOM_\" and use following characters: \"A\"-\"Z\", \"0\"-\"9\" and \"_\"";

fn custom_name_ok(name: &str) -> bool {
    name.len() <= 255
        && name.strip_prefix("CUSTOM_").is_some_and(|r| {
            !r.is_empty() && r.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
}

/// `PUT /traits/{name}`: create a custom trait (201) or confirm it exists (204).
pub async fn put(ctx: &Ctx, name: &str) -> ApiResult {
    since(ctx, 1, 6)?;
    ctx.admin_only()?;
    if !custom_name_ok(name) {
        return Err(ApiError::bad_request(INVALID_TRAIT));
    }
    let t = Trait::new(name).map_err(|_| ApiError::bad_request(INVALID_TRAIT))?;
    let created = ctx.store().create_trait(&t).await.map_err(ApiError::from_store)?;
    let status = if created { StatusCode::CREATED } else { StatusCode::NO_CONTENT };
    Ok(Reply { location: Some(format!("/traits/{name}")), ..Reply::empty(status) }.cached(ctx))
}

async fn exists(ctx: &Ctx, name: &str) -> Result<bool, ApiError> {
    if os_traits::is_standard(name) {
        return Ok(true);
    }
    let custom = ctx.store().custom_traits().await.map_err(ApiError::from_store)?;
    Ok(custom.iter().any(|e| e.name == name))
}

/// `GET /traits/{name}`: 204 when it exists.
pub async fn show(ctx: &Ctx, name: &str) -> ApiResult {
    since(ctx, 1, 6)?;
    ctx.admin_only()?;
    if !exists(ctx, name).await? {
        return Err(ApiError::not_found(format!("No such trait(s): {name}.")));
    }
    Ok(Reply::empty(StatusCode::NO_CONTENT).cached(ctx))
}

/// `DELETE /traits/{name}`: custom traits no provider has.
pub async fn delete(ctx: &Ctx, name: &str) -> ApiResult {
    since(ctx, 1, 6)?;
    ctx.admin_only()?;
    if os_traits::is_standard(name) {
        return Err(ApiError::bad_request(format!("Cannot delete standard trait {name}.")));
    }
    let missing = || ApiError::not_found(format!("No such trait(s): {name}."));
    let t = Trait::new(name).map_err(|_| missing())?;
    match ctx.store().delete_trait(&t).await {
        Ok(()) => Ok(Reply::empty(StatusCode::NO_CONTENT)),
        Err(Error::NotFound { .. }) => Err(missing()),
        Err(Error::Conflict(Conflict::InUse { .. })) => {
            Err(ApiError::conflict(format!("The trait {name} is in use by a resource provider.")))
        }
        Err(e) => Err(ApiError::from_store(e)),
    }
}

/// `GET /traits` with `name=in:A,B|startswith:P` and `associated=true|false`.
pub async fn list(ctx: &Ctx) -> ApiResult {
    since(ctx, 1, 6)?;
    ctx.accept_json()?;
    ctx.admin_only()?;
    query::validate(
        ctx,
        &json!({"type": "object", "properties": {"name": {"type": "string"}, "associated": {"type": "string"}},
            "additionalProperties": false}),
    )?;
    let mut names = query::known_traits(ctx).await?;
    if let Some(q) = ctx.query_one("name") {
        let Some((op, value)) = q.split_once(':') else {
            return Err(ApiError::bad_request(format!(
                "Badly formatted name parameter. Expected name query string parameter in form: \
                 ?name=[in|startswith]:[name1,name2|prefix]. Got: \"{q}\""
            )));
        };
        match op {
            "in" => {
                let wanted: BTreeSet<&str> = value.split(',').collect();
                names.retain(|n| wanted.contains(n.as_str()));
            }
            "startswith" => names.retain(|n| n.starts_with(value)),
            _ => {}
        }
    }
    if let Some(a) = ctx.query_one("associated") {
        let associated = match a.to_ascii_lowercase().as_str() {
            "true" => true,
            "false" => false,
            _ => {
                return Err(ApiError::bad_request(
                    "The query parameter \"associated\" only accepts \"true\" or \"false\"",
                ));
            }
        };
        let trees = ctx.store().placement_trees().await.map_err(ApiError::from_store)?;
        let used: BTreeSet<String> = trees
            .iter()
            .flat_map(|t| t.tree.providers.iter().flat_map(|p| p.traits.iter().map(|t| t.to_string())))
            .collect();
        names.retain(|n| used.contains(n) == associated);
    }
    Ok(Reply::json(json!({"traits": names})).cached(ctx))
}

/// `GET /resource_providers/{uuid}/traits`.
pub async fn provider_list(ctx: &Ctx, id: &str) -> ApiResult {
    since(ctx, 1, 6)?;
    ctx.accept_json()?;
    ctx.admin_only()?;
    let (t, rp) = load(ctx, id).await.map_err(|e| ApiError { detail: format!("{}: ", e.detail), ..e })?;
    let traits: Vec<String> = node(&t, rp)?.traits.iter().map(|t| t.to_string()).collect();
    Ok(Reply::json(json!({"traits": traits, "resource_provider_generation": t.generation(rp)})).cached(ctx))
}

/// `PUT /resource_providers/{uuid}/traits`.
pub async fn provider_set(ctx: &Ctx, id: &str) -> ApiResult {
    since(ctx, 1, 6)?;
    ctx.require_json()?;
    ctx.admin_only()?;
    let data = ctx.json(&json!({
        "type": "object",
        "properties": {
            "traits": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 255}},
            "resource_provider_generation": {"type": "integer"},
        },
        "required": ["traits", "resource_provider_generation"],
        "additionalProperties": false,
    }))?;
    let (t, rp) = load(ctx, id).await?;
    let generation = data["resource_provider_generation"].as_u64().unwrap_or(u64::MAX);
    let conflict = || {
        ApiError::conflict(
            "Resource provider's generation already changed. Please update the generation and try again.",
        )
        .code(error::CONCURRENT_UPDATE)
    };
    if t.generation(rp) != generation {
        return Err(conflict());
    }
    let wanted: Vec<String> =
        data["traits"].as_array().into_iter().flatten().filter_map(Value::as_str).map(String::from).collect();
    let known = query::known_traits(ctx).await?;
    let missing: Vec<&String> = wanted.iter().filter(|n| !known.contains(*n)).collect();
    if !missing.is_empty() {
        return Err(ApiError::bad_request(format!(
            "No such trait {}",
            missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    let traits: BTreeSet<Trait> = wanted
        .iter()
        .map(|n| Trait::new(n.clone()).map_err(|e| ApiError::bad_request(e.to_string())))
        .collect::<Result<_, _>>()?;
    match update_tree(ctx.store(), rp, |t| t.set_traits(rp, generation, &traits)).await {
        Ok((t, ())) => {
            let names: Vec<String> = traits.iter().map(|t| t.to_string()).collect();
            Ok(Reply::json(json!({"traits": names, "resource_provider_generation": t.generation(rp)})).cached(ctx))
        }
        Err(Error::Conflict(Conflict::ProviderGeneration { .. })) => Err(conflict()),
        Err(Error::NotFound { kind: Kind::Provider, .. }) => {
            Err(ApiError::not_found(format!("No resource provider with uuid {id} found")))
        }
        Err(e) => Err(ApiError::from_store(e)),
    }
}

/// `DELETE /resource_providers/{uuid}/traits`.
pub async fn provider_delete(ctx: &Ctx, id: &str) -> ApiResult {
    since(ctx, 1, 6)?;
    ctx.admin_only()?;
    let (_, rp) = load(ctx, id).await?;
    update_tree(ctx.store(), rp, |t| {
        let g = t.generation(rp);
        t.set_traits(rp, g, &BTreeSet::new())
    })
    .await
    .map_err(ApiError::from_store)?;
    Ok(Reply::empty(StatusCode::NO_CONTENT))
}
