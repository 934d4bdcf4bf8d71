//! `GET /resource_providers/{uuid}/usages` and `GET /usages` (1.9+).

use serde_json::{Map, Value, json};

use super::providers::{load, node};
use super::{ApiError, ApiResult, Ctx, Reply, query, since};
use crate::store::placement::usages_of;

/// Usage of every class the provider has inventory of (0 when nothing is allocated).
pub async fn provider(ctx: &Ctx, id: &str) -> ApiResult {
    ctx.accept_json()?;
    ctx.admin_only()?;
    let (t, rp) = load(ctx, id).await.map_err(|e| ApiError { detail: format!("{}: ", e.detail), ..e })?;
    let n = node(&t, rp)?;
    let mut usages: Map<String, Value> = n.inventories.keys().map(|c| (c.to_string(), json!(n.used(c)))).collect();
    for (c, u) in &n.usages {
        usages.insert(c.to_string(), json!(u));
    }
    Ok(Reply::json(json!({"resource_provider_generation": t.generation(rp), "usages": usages})).cached(ctx))
}

/// `GET /usages?project_id=&user_id=[&consumer_type=]`.
pub async fn total(ctx: &Ctx) -> ApiResult {
    since(ctx, 1, 9)?;
    ctx.accept_json()?;
    ctx.admin_only()?;
    let by_type = ctx.at_least(1, 38);
    let id = json!({"type": "string", "minLength": 1, "maxLength": 255});
    let mut s = json!({"type": "object", "properties": {"project_id": id, "user_id": id},
        "required": ["project_id"], "additionalProperties": false});
    if by_type {
        s["properties"]["consumer_type"] = json!({"type": "string", "pattern": "^[A-Z0-9_]+$|^all|^unknown$",
            "minLength": 1, "maxLength": 255});
    }
    query::validate(ctx, &s)?;
    let project = ctx.query_one("project_id").unwrap_or_default();
    let user = ctx.query_one("user_id");
    let trees = ctx.store().placement_trees().await.map_err(ApiError::from_store)?;
    if !by_type {
        let groups = usages_of(&trees, project, user, Some("all"));
        let usages: Map<String, Value> = groups
            .get("all")
            .map(|(r, _)| r.iter().map(|(c, a)| (c.to_string(), json!(a))).collect())
            .unwrap_or_default();
        return Ok(Reply::json(json!({"usages": usages})).cached(ctx));
    }
    let groups = usages_of(&trees, project, user, ctx.query_one("consumer_type"));
    let usages: Map<String, Value> = groups
        .into_iter()
        .map(|(kind, (res, count))| {
            let mut m: Map<String, Value> = res.iter().map(|(c, a)| (c.to_string(), json!(a))).collect();
            m.insert("consumer_count".into(), json!(count));
            (kind, Value::Object(m))
        })
        .collect();
    Ok(Reply::json(json!({"usages": usages})).cached(ctx))
}
