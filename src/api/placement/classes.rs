//! `/resource_classes` and `/resource_classes/{name}` (1.2+).

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, Ctx, Reply, since};
use crate::error::{Conflict, Error};
use crate::model::ResourceClass;

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {"name": {"type": "string", "pattern": "^CUSTOM_[A-Z0-9_]+$", "maxLength": 255}},
        "required": ["name"],
        "additionalProperties": false,
    })
}

fn serialize(name: &str) -> Value {
    json!({"name": name, "links": [{"rel": "self", "href": format!("/resource_classes/{name}")}]})
}

fn standard(name: &str) -> bool {
    ResourceClass::STANDARD.iter().any(|c| c.as_str() == name)
}

async fn exists(ctx: &Ctx, name: &str) -> Result<bool, ApiError> {
    if standard(name) {
        return Ok(true);
    }
    let custom = ctx.store().resource_classes().await.map_err(ApiError::from_store)?;
    Ok(custom.iter().any(|e| e.name == name))
}

fn no_such(name: &str) -> ApiError {
    ApiError::not_found(format!("No such resource class {name}."))
}

/// `GET /resource_classes`: the standard classes, then the custom ones.
pub async fn list(ctx: &Ctx) -> ApiResult {
    since(ctx, 1, 2)?;
    ctx.accept_json()?;
    ctx.admin_only()?;
    let custom = ctx.store().resource_classes().await.map_err(ApiError::from_store)?;
    let all: Vec<Value> = ResourceClass::STANDARD
        .iter()
        .map(|c| serialize(c.as_str()))
        .chain(custom.iter().map(|e| serialize(&e.name)))
        .collect();
    Ok(Reply::json(json!({"resource_classes": all})).cached(ctx))
}

/// `GET /resource_classes/{name}`.
pub async fn show(ctx: &Ctx, name: &str) -> ApiResult {
    since(ctx, 1, 2)?;
    ctx.accept_json()?;
    ctx.admin_only()?;
    if !exists(ctx, name).await? {
        return Err(no_such(name));
    }
    Ok(Reply::json(serialize(name)).cached(ctx))
}

fn parse_custom(name: &str) -> Result<ResourceClass, ApiError> {
    ResourceClass::parse(name).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// `POST /resource_classes`.
pub async fn create(ctx: &Ctx) -> ApiResult {
    since(ctx, 1, 2)?;
    ctx.require_json()?;
    ctx.admin_only()?;
    let data = ctx.json(&schema())?;
    let name = data["name"].as_str().unwrap_or_default();
    let class = parse_custom(name)?;
    if !ctx.store().create_resource_class(&class).await.map_err(ApiError::from_store)? {
        return Err(ApiError::conflict(format!("Conflicting resource class already exists: {name}")));
    }
    Ok(Reply { location: Some(format!("/resource_classes/{name}")), ..Reply::empty(StatusCode::CREATED) })
}

/// `PUT /resource_classes/{name}`: a rename before 1.7 (only of a class no inventory uses:
/// unicell's inventories name their class, see the API notes), create-or-confirm from 1.7.
pub async fn update(ctx: &Ctx, name: &str) -> ApiResult {
    since(ctx, 1, 2)?;
    ctx.admin_only()?;
    if ctx.at_least(1, 7) {
        let body = json!({"name": name});
        super::schema::validate(&body, &schema())
            .map_err(|e| ApiError::bad_request(format!("JSON does not validate: {e}")))?;
        let class = parse_custom(name)?;
        let created = ctx.store().create_resource_class(&class).await.map_err(ApiError::from_store)?;
        let status = if created { StatusCode::CREATED } else { StatusCode::NO_CONTENT };
        return Ok(Reply { location: Some(format!("/resource_classes/{name}")), ..Reply::empty(status) });
    }
    ctx.require_json()?;
    let data = ctx.json(&schema())?;
    let new_name = data["name"].as_str().unwrap_or_default().to_string();
    if !exists(ctx, name).await? {
        return Err(no_such(name));
    }
    if standard(name) {
        return Err(ApiError::bad_request(format!("Cannot update standard resource class {name}")));
    }
    if exists(ctx, &new_name).await? {
        return Err(ApiError::conflict(format!("Resource class already exists: {new_name}")));
    }
    let old = parse_custom(name)?;
    let new = parse_custom(&new_name)?;
    match ctx.store().delete_resource_class(&old).await {
        Ok(()) => {}
        Err(Error::Conflict(Conflict::InUse { .. })) => {
            return Err(ApiError::conflict(format!(
                "Cannot rename resource class {name}: it is in use in inventory, and unicell renames only unused \
                 custom classes"
            )));
        }
        Err(e) => return Err(ApiError::from_store(e)),
    }
    if !ctx.store().create_resource_class(&new).await.map_err(ApiError::from_store)? {
        return Err(ApiError::conflict(format!("Resource class already exists: {new_name}")));
    }
    Ok(Reply::json(serialize(&new_name)))
}

/// `DELETE /resource_classes/{name}`.
pub async fn delete(ctx: &Ctx, name: &str) -> ApiResult {
    since(ctx, 1, 2)?;
    ctx.admin_only()?;
    if !exists(ctx, name).await? {
        return Err(no_such(name));
    }
    if standard(name) {
        return Err(ApiError::bad_request(format!(
            "Error in delete resource class: Cannot delete standard resource class {name}."
        )));
    }
    match ctx.store().delete_resource_class(&parse_custom(name)?).await {
        Ok(()) => Ok(Reply::empty(StatusCode::NO_CONTENT)),
        Err(Error::NotFound { .. }) => Err(no_such(name)),
        Err(Error::Conflict(Conflict::InUse { .. })) => Err(ApiError::conflict(format!(
            "Error in delete resource class: Cannot delete resource class {name}. Class is in use in inventory."
        ))),
        Err(e) => Err(ApiError::from_store(e)),
    }
}
