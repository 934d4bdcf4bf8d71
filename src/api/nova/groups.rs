//! `/os-server-groups`: create, list, show, delete
//! (`nova.api.openstack.compute.server_groups`).
//!
//! Bodies and views follow Nova's microversions: before 2.64 a group has `policies` (a list
//! of exactly one policy) and an empty `metadata`; from 2.64 it has `policy` and `rules`
//! (`max_server_per_host`, anti-affinity only); 2.13 adds `project_id` and `user_id`; the
//! soft policies exist from 2.15. Create answers 200, as Nova does.
//!
//! `members` are the group's live servers: the instances of the group's project whose
//! request named the group (`os:scheduler_hints.group`, kept in their system metadata).
//! They are found by reading that project's live instances, once per request however many
//! groups are shown; a server an admin created in another project's group is a member of
//! the group for scheduling but is not listed here.

use std::collections::{BTreeMap, BTreeSet};

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Map, Value, json};

use super::query::{Query, parse_non_negative};
use super::view::sysmeta;
use super::{NovaCtx, NovaError, NovaResult};
use crate::api::ApiState;
use crate::api::error::{check_json_media_type, parse_json, read_body};
use crate::model::{GroupId, GroupPolicy, InstanceFilters, ListQuery, MAX_LIMIT, ServerGroup};

fn bad(msg: impl Into<String>) -> NovaError {
    NovaError::bad_request(msg)
}

fn policy_name(p: GroupPolicy) -> &'static str {
    match p {
        GroupPolicy::Affinity => "affinity",
        GroupPolicy::AntiAffinity => "anti-affinity",
        GroupPolicy::SoftAffinity => "soft-affinity",
        GroupPolicy::SoftAntiAffinity => "soft-anti-affinity",
    }
}

/// The policies a request at this microversion may name (the soft ones from 2.15).
fn policy_of(ctx: &NovaCtx, name: &str) -> Option<GroupPolicy> {
    match name {
        "affinity" => Some(GroupPolicy::Affinity),
        "anti-affinity" => Some(GroupPolicy::AntiAffinity),
        "soft-affinity" if ctx.at_least(2, 15) => Some(GroupPolicy::SoftAffinity),
        "soft-anti-affinity" if ctx.at_least(2, 15) => Some(GroupPolicy::SoftAntiAffinity),
        _ => None,
    }
}

/// Nova's `_format_server_group` at the request's microversion.
fn view(ctx: &NovaCtx, g: &ServerGroup, members: &[String]) -> Value {
    let mut v = Map::new();
    v.insert("id".into(), json!(g.id.to_string()));
    v.insert("name".into(), json!(g.name));
    if ctx.at_least(2, 64) {
        v.insert("policy".into(), json!(policy_name(g.policy)));
        let rules = match g.max_per_host {
            Some(n) => json!({"max_server_per_host": n}),
            None => json!({}),
        };
        v.insert("rules".into(), rules);
    } else {
        v.insert("policies".into(), json!([policy_name(g.policy)]));
        v.insert("metadata".into(), json!({}));
    }
    v.insert("members".into(), json!(members));
    if ctx.at_least(2, 13) {
        v.insert("project_id".into(), json!(g.project_id));
        v.insert("user_id".into(), json!(g.user_id));
    }
    Value::Object(v)
}

/// The live members of `groups`, keyed by group: one read of each owning project's live
/// instances, in listing order (newest first).
async fn members_of(state: &ApiState, groups: &[ServerGroup]) -> NovaResult<BTreeMap<GroupId, Vec<String>>> {
    let wanted: BTreeMap<String, GroupId> = groups.iter().map(|g| (g.id.to_string(), g.id)).collect();
    let projects: BTreeSet<&str> = groups.iter().map(|g| g.project_id.as_str()).collect();
    let mut out: BTreeMap<GroupId, Vec<String>> = groups.iter().map(|g| (g.id, Vec::new())).collect();
    for project in projects {
        let mut query = ListQuery {
            filters: InstanceFilters {
                project_id: Some(project.to_string()),
                deleted: Some(false),
                ..Default::default()
            },
            limit: Some(MAX_LIMIT),
            marker: None,
            partial: false,
        };
        loop {
            let page = state.store().list_instances(&query).await?;
            for inst in &page.instances {
                if let Some(gid) = inst.system_metadata.get(sysmeta::GROUP).and_then(|g| wanted.get(g))
                    && let Some(list) = out.get_mut(gid)
                {
                    list.push(inst.uuid.to_string());
                }
            }
            match page.next_marker {
                Some(m) => query.marker = Some(m),
                None => break,
            }
        }
    }
    Ok(out)
}

/// The group `id` if the caller may see it: 404 for a malformed or unknown id, 403 for
/// another project's group (Nova's policy check after the lookup).
async fn visible(state: &ApiState, ctx: &NovaCtx, id: &str, action: &str) -> NovaResult<ServerGroup> {
    let not_found = || NovaError::not_found(format!("Instance group {} could not be found.", id.escape_default()));
    let Ok(uuid) = id.parse::<uuid::Uuid>() else {
        return Err(not_found());
    };
    let group = match state.store().get_server_group(GroupId(uuid)).await {
        Ok(g) => g,
        Err(crate::Error::NotFound { .. }) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    if !ctx.caller.owns(&group.project_id) {
        return Err(NovaError::policy(&format!("os_compute_api:os-server-groups:{action}")));
    }
    Ok(group)
}

pub(super) async fn show(
    State(state): State<ApiState>,
    Extension(ctx): Extension<NovaCtx>,
    Path(id): Path<String>,
) -> NovaResult<Json<Value>> {
    let group = visible(&state, &ctx, &id, "show").await?;
    let members = members_of(&state, std::slice::from_ref(&group)).await?;
    let list = members.get(&group.id).map(Vec::as_slice).unwrap_or_default();
    Ok(Json(json!({ "server_group": view(&ctx, &group, list) })))
}

pub(super) async fn delete(
    State(state): State<ApiState>,
    Extension(ctx): Extension<NovaCtx>,
    Path(id): Path<String>,
) -> NovaResult<StatusCode> {
    let group = visible(&state, &ctx, &id, "delete").await?;
    match state.store().delete_server_group(group.id).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        // Deleted by a concurrent request in between: gone either way, as Nova answers.
        Err(crate::Error::NotFound { .. }) => {
            Err(NovaError::not_found(format!("Instance group {} could not be found.", group.id)))
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn index(
    State(state): State<ApiState>,
    Extension(ctx): Extension<NovaCtx>,
    RawQuery(raw): RawQuery,
) -> NovaResult<Json<Value>> {
    let q = Query::parse(raw.as_deref());
    if ctx.at_least(2, 75)
        && let Some(k) = q.keys().find(|k| !matches!(*k, "all_projects" | "limit" | "offset"))
    {
        return Err(bad(format!(
            "Invalid input for query parameters {}. Additional properties are not allowed ('{}' was unexpected)",
            k.escape_default(),
            k.escape_default()
        )));
    }
    // Nova's `common.limited`: offset then limit, the limit capped at max_limit.
    let limit = match q.get("limit") {
        None => MAX_LIMIT as usize,
        Some(raw) => parse_non_negative("limit", raw)?.min(u64::from(MAX_LIMIT)) as usize,
    };
    let offset = match q.get("offset") {
        None => 0,
        Some(raw) => usize::try_from(parse_non_negative("offset", raw)?).unwrap_or(usize::MAX),
    };
    let all_projects = q.has("all_projects");
    if all_projects && !ctx.caller.is_admin {
        return Err(NovaError::policy("os_compute_api:os-server-groups:index:all_projects"));
    }
    let groups: Vec<ServerGroup> = state
        .store()
        .list_server_groups()
        .await?
        .into_iter()
        .filter(|g| all_projects || g.project_id == ctx.caller.project_id)
        .skip(offset)
        .take(limit)
        .collect();
    let members = members_of(&state, &groups).await?;
    let list: Vec<Value> =
        groups.iter().map(|g| view(&ctx, g, members.get(&g.id).map(Vec::as_slice).unwrap_or_default())).collect();
    Ok(Json(json!({ "server_groups": list })))
}

fn invalid(field: &str, why: impl std::fmt::Display) -> NovaError {
    bad(format!("Invalid input for field/attribute {field}. {why}"))
}

/// Nova's `max_server_per_host`: `parameter_types.positive_integer` (an integer >= 1, or a
/// string of digits that is one).
fn positive(v: &Value) -> Option<u32> {
    let n = match v {
        Value::Number(n) => n.as_u64()?,
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0') => {
            s.parse().ok()?
        }
        _ => return None,
    };
    u32::try_from(n).ok().filter(|n| *n >= 1)
}

pub(super) async fn create(
    State(state): State<ApiState>,
    Extension(ctx): Extension<NovaCtx>,
    headers: HeaderMap,
    body: Body,
) -> NovaResult<Json<Value>> {
    check_json_media_type(&headers, &["application/json", "application/vnd.openstack.compute+json"])?;
    let bytes = read_body(body, state.config().max_body_bytes).await?;
    let Value::Object(top) = parse_json(&bytes)? else {
        return Err(bad("Invalid input for field/attribute body. The body must be a JSON object"));
    };
    if let Some(k) = top.keys().find(|k| *k != "server_group") {
        return Err(invalid(
            "body",
            format!("Additional properties are not allowed ('{}' was unexpected)", k.escape_default()),
        ));
    }
    let Some(Value::Object(sg)) = top.get("server_group") else {
        return Err(bad(
            "Invalid input for field/attribute body. 'server_group' is a required property and must be an object",
        ));
    };
    let v264 = ctx.at_least(2, 64);
    let allowed: &[&str] = if v264 { &["name", "policy", "rules"] } else { &["name", "policies"] };
    if let Some(k) = sg.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(invalid(
            "server_group",
            format!("Additional properties are not allowed ('{}' was unexpected)", k.escape_default()),
        ));
    }
    // parameter_types.name: 1 to 255 characters, no leading or trailing whitespace.
    let name = match sg.get("name") {
        None => return Err(invalid("server_group", "'name' is a required property")),
        Some(Value::String(s))
            if !s.is_empty() && s.chars().count() <= 255 && s.trim() == s && !s.chars().any(char::is_control) =>
        {
            s.clone()
        }
        Some(other) => return Err(invalid("name", format!("{other} is not a valid name"))),
    };
    let (policy, max_per_host) = if v264 {
        let policy = match sg.get("policy") {
            None => return Err(invalid("server_group", "'policy' is a required property")),
            Some(Value::String(s)) => policy_of(&ctx, s),
            Some(_) => None,
        }
        .ok_or_else(|| invalid("policy", "Value is not one of the policies"))?;
        let rules = match sg.get("rules") {
            None => Map::new(),
            Some(Value::Object(r)) => r.clone(),
            Some(other) => return Err(invalid("rules", format!("{other} is not of type 'object'"))),
        };
        if let Some(k) = rules.keys().find(|k| *k != "max_server_per_host") {
            return Err(invalid(
                "rules",
                format!("Additional properties are not allowed ('{}' was unexpected)", k.escape_default()),
            ));
        }
        let max = match rules.get("max_server_per_host") {
            None => None,
            Some(v) => Some(
                positive(v)
                    .ok_or_else(|| invalid("rules/max_server_per_host", format!("{v} is not a positive integer")))?,
            ),
        };
        if policy != GroupPolicy::AntiAffinity && !rules.is_empty() {
            return Err(bad("Only anti-affinity policy supports rules."));
        }
        (policy, max)
    } else {
        let policy = match sg.get("policies") {
            None => return Err(invalid("server_group", "'policies' is a required property")),
            Some(Value::Array(a)) if a.len() == 1 => a[0].as_str().and_then(|s| policy_of(&ctx, s)),
            Some(_) => None,
        }
        .ok_or_else(|| invalid("policies", "Value must be a list of exactly one of the policies"))?;
        (policy, None)
    };
    let group = ServerGroup {
        id: GroupId(uuid::Uuid::new_v4()),
        name,
        project_id: ctx.caller.project_id.clone(),
        user_id: ctx.caller.user_id.clone(),
        policy,
        max_per_host,
    };
    match state.store().create_server_group(&group).await {
        Ok(()) => {}
        Err(crate::Error::InvalidInput { .. }) => return Err(bad("Only anti-affinity policy supports rules.")),
        Err(e) => return Err(e.into()),
    }
    Ok(Json(json!({ "server_group": view(&ctx, &group, &[]) })))
}
