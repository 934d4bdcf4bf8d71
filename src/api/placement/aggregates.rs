//! `/resource_providers/{uuid}/aggregates` (1.1+; generation-checked from 1.19).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::providers::{load, node, parse_uuid};
use super::{ApiError, ApiResult, Ctx, Reply, error, since};
use crate::error::{Conflict, Error};
use crate::model::AggregateId;
use crate::store::placement::{PlacementTree, update_tree};

fn reply(ctx: &Ctx, t: &PlacementTree, rp: crate::model::ProviderId) -> ApiResult {
    let aggs: Vec<String> = node(t, rp)?.aggregates.iter().map(|a| a.to_string()).collect();
    let mut body = json!({"aggregates": aggs});
    if ctx.at_least(1, 19) {
        body["resource_provider_generation"] = json!(t.generation(rp));
    }
    Ok(Reply::json(body).cached(ctx))
}

/// `GET .../aggregates`.
pub async fn get(ctx: &Ctx, id: &str) -> ApiResult {
    ctx.accept_json()?;
    since(ctx, 1, 1)?;
    ctx.admin_only()?;
    let (t, rp) = load(ctx, id).await?;
    reply(ctx, &t, rp)
}

/// `PUT .../aggregates`.
pub async fn set(ctx: &Ctx, id: &str) -> ApiResult {
    ctx.require_json()?;
    since(ctx, 1, 1)?;
    ctx.admin_only()?;
    let list = json!({"type": "array", "items": {"type": "string", "format": "uuid"}, "uniqueItems": true});
    let (_, rp) = load(ctx, id).await?;
    let with_generation = ctx.at_least(1, 19);
    let s = if with_generation {
        json!({"type": "object", "properties": {"aggregates": list, "resource_provider_generation": {"type": "integer"}},
            "required": ["aggregates", "resource_provider_generation"], "additionalProperties": false})
    } else {
        list
    };
    let data = ctx.json(&s)?;
    let (aggs, expected) = if with_generation {
        (data["aggregates"].clone(), Some(data["resource_provider_generation"].as_u64().unwrap_or(u64::MAX)))
    } else {
        (data, None)
    };
    // Placement answers a PUT with the list as sent (its order), a GET in storage order.
    let sent: Vec<String> = aggs.as_array().into_iter().flatten().filter_map(Value::as_str).map(String::from).collect();
    let aggs: BTreeSet<AggregateId> = sent.iter().filter_map(|s| parse_uuid(s).map(|p| AggregateId(p.0))).collect();
    match update_tree(ctx.store(), rp, |t| t.set_aggregates(rp, expected, &aggs)).await {
        Ok((t, ())) => {
            let mut body = json!({"aggregates": sent});
            if ctx.at_least(1, 19) {
                body["resource_provider_generation"] = json!(t.generation(rp));
            }
            Ok(Reply::json(body).cached(ctx))
        }
        Err(Error::Conflict(Conflict::ProviderGeneration { .. })) => Err(ApiError::conflict(
            "Resource provider's generation already changed. Please update the generation and try again.",
        )
        .code(error::CONCURRENT_UPDATE)),
        Err(e) => Err(ApiError::from_store(e)),
    }
}
