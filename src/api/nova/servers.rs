//! `/servers`: create (202, the build runs in the background through this replica's
//! conductor), list and detail with Nova's paging and filters, show, delete
//! (`nova.api.openstack.compute.servers`).
//!
//! With part of the store unreachable (store contract line 17), list and show follow Nova's
//! down-cell handling: from 2.69, a list without paging, sorting or filters (`all_tenants`
//! aside) asks the store for a partial page and prepends its stubs as `UNKNOWN` servers, and
//! a show of an unreachable server gives its minimal form; otherwise the store's default
//! applies (the SQL baseline's `down_cell=skip` leaves them out with a warning, any other
//! failure is a 503 naming the unreachable part).

use std::collections::{BTreeMap, BTreeSet};

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::header::LOCATION;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::query::Query;
use super::view::{self, ViewData, sysmeta};
use super::{NovaCtx, NovaError, NovaResult};
use crate::api::ApiState;
use crate::api::error::{check_json_media_type, parse_json, read_body};
use crate::model::{
    ConsumerId, Destination, FlavorId, GroupId, Instance, InstanceFilters, InstanceId, InstancePatch, ListQuery,
    RequestSpec, SchedulerHints, Timestamp, VmState,
};

/// Nova's `[DEFAULT] max_count`-style guard: one request builds at most this many.
pub const MAX_INSTANCES_PER_REQUEST: u64 = 1000;

// ------------------------------------------------------------------------------------
// show / delete
// ------------------------------------------------------------------------------------

pub(super) async fn show(
    State(state): State<ApiState>,
    Extension(ctx): Extension<NovaCtx>,
    Path(id): Path<String>,
) -> NovaResult<Json<Value>> {
    let inst = match visible(&state, &ctx, &id, "show").await {
        Ok(inst) => inst,
        // Nova 2.69: a server whose cell is down is shown in its minimal form, from what
        // the API database knows (the store's instance stub and the request spec).
        Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE && ctx.at_least(2, 69) => {
            return match unknown_server(&state, &ctx, &id).await? {
                Some(server) => Ok(Json(json!({ "server": server }))),
                None => Err(e),
            };
        }
        Err(e) => return Err(e),
    };
    let data = view_data(&state, &ctx, std::slice::from_ref(&inst)).await?;
    Ok(Json(json!({ "server": view::detail(&ctx, &inst, &data, true) })))
}

/// The minimal form of server `id` whose record could not be read, if the store still knows
/// it ([`Instances::instance_stub`](crate::store::Instances::instance_stub)); 403 for another
/// project's, as for a server that could be read.
async fn unknown_server(state: &ApiState, ctx: &NovaCtx, id: &str) -> NovaResult<Option<Value>> {
    let Ok(uuid) = id.parse::<InstanceId>() else {
        return Ok(None);
    };
    let Some(stub) = state.store().instance_stub(uuid).await? else {
        return Ok(None);
    };
    if !ctx.caller.owns(&stub.project_id) {
        return Err(NovaError::policy("os_compute_api:servers:show"));
    }
    let spec = match state.store().get_request_spec(uuid).await {
        Ok(spec) => Some(spec),
        Err(crate::Error::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    tracing::warn!(instance = %uuid, "the server's record cannot be read; showing its minimal form (2.69)");
    Ok(Some(view::show_unknown(ctx, &stub, spec.as_ref())))
}

pub(super) async fn delete(
    State(state): State<ApiState>,
    Extension(ctx): Extension<NovaCtx>,
    Path(id): Path<String>,
) -> NovaResult<StatusCode> {
    let inst = visible(&state, &ctx, &id, "delete").await?;
    let patch = InstancePatch {
        deleted: Some(true),
        vm_state: Some(VmState::Deleted),
        task_state: Some(None),
        ..Default::default()
    };
    state.store().update_instance(inst.uuid, &patch).await?;
    // The claim goes with the server. A build still running notices the deletion when it
    // ends and releases again (see `builds`), so a claim made after this release is not
    // left behind either.
    state.store().release(ConsumerId::from(inst.uuid)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The instance `id` if the caller may see it: 404 for a malformed or unknown id or a
/// deleted server, 403 for another project's (Nova's policy check after the lookup).
async fn visible(state: &ApiState, ctx: &NovaCtx, id: &str, action: &str) -> NovaResult<Instance> {
    let not_found = || NovaError::not_found(format!("Instance {} could not be found.", id.escape_default()));
    let Ok(uuid) = id.parse::<InstanceId>() else {
        return Err(not_found());
    };
    let inst = match state.store().get_instance(uuid).await {
        Ok(i) => i,
        Err(crate::Error::NotFound { .. }) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    if inst.deleted {
        return Err(not_found());
    }
    if !ctx.caller.owns(&inst.project_id) {
        return Err(NovaError::policy(&format!("os_compute_api:servers:{action}")));
    }
    Ok(inst)
}

async fn view_data(state: &ApiState, ctx: &NovaCtx, instances: &[Instance]) -> NovaResult<ViewData> {
    let mut data = ViewData { service_down_time: state.config().scheduler.service_down_time, ..Default::default() };
    if ctx.at_least(2, 47) && !instances.is_empty() {
        data.flavors = state.store().list_flavors().await?.into_iter().map(|f| (f.id.clone(), f)).collect();
    }
    if ctx.at_least(2, 16) && ctx.caller.is_admin && !instances.is_empty() {
        data.hosts = Some(state.store().list_hosts(None).await?.into_iter().map(|h| (h.name.clone(), h)).collect());
    }
    Ok(data)
}

// ------------------------------------------------------------------------------------
// list
// ------------------------------------------------------------------------------------

pub(super) async fn index(
    State(state): State<ApiState>,
    Extension(ctx): Extension<NovaCtx>,
    RawQuery(raw): RawQuery,
) -> NovaResult<Response> {
    list(&state, &ctx, raw.as_deref(), false).await
}

pub(super) async fn detail(
    State(state): State<ApiState>,
    Extension(ctx): Extension<NovaCtx>,
    RawQuery(raw): RawQuery,
) -> NovaResult<Response> {
    list(&state, &ctx, raw.as_deref(), true).await
}

/// A filter the store does not evaluate: applied to each instance the store returns,
/// paging on until the page is full.
enum Residual {
    Exact(&'static str, Vec<String>),
    Regex(&'static str, regex::Regex),
    NotTags(Vec<String>),
    NotTagsAny(Vec<String>),
    ChangesBefore(Timestamp),
    TaskStates(Vec<String>),
    Nothing,
}

impl Residual {
    fn matches(&self, i: &Instance) -> bool {
        match self {
            Residual::Exact(k, values) => view::filter_attr(i, k).is_some_and(|v| values.contains(&v)),
            Residual::Regex(k, re) => view::filter_attr(i, k).is_some_and(|v| re.is_match(&v)),
            Residual::NotTags(t) => !t.iter().all(|t| i.tags.contains(t)),
            Residual::NotTagsAny(t) => !t.iter().any(|t| i.tags.contains(t)),
            Residual::ChangesBefore(t) => i.updated_at <= *t,
            Residual::TaskStates(states) => i.task_state.is_some_and(|t| states.iter().any(|s| s == t.as_str())),
            Residual::Nothing => false,
        }
    }
}

/// Every query parameter Nova's schema knows (2.75 rejects the others).
const KNOWN: &[&str] = &[
    "user_id",
    "project_id",
    "tenant_id",
    "launch_index",
    "image_ref",
    "image",
    "kernel_id",
    "ramdisk_id",
    "hostname",
    "key_name",
    "power_state",
    "vm_state",
    "task_state",
    "host",
    "node",
    "flavor",
    "reservation_id",
    "launched_at",
    "terminated_at",
    "availability_zone",
    "name",
    "display_name",
    "description",
    "display_description",
    "locked_by",
    "uuid",
    "root_device_name",
    "config_drive",
    "access_ip_v4",
    "access_ip_v6",
    "auto_disk_config",
    "progress",
    "sort_key",
    "sort_dir",
    "all_tenants",
    "soft_deleted",
    "deleted",
    "status",
    "changes-since",
    "ip",
    "ip6",
    "created_at",
    "limit",
    "marker",
    "tags",
    "tags-any",
    "not-tags",
    "not-tags-any",
    "changes-before",
    "locked",
    "block_device_mapping",
    "services",
    "metadata",
    "system_metadata",
    "info_cache",
    "security_groups",
    "pci_devices",
];
const JOINED: &[&str] = &[
    "block_device_mapping",
    "services",
    "metadata",
    "system_metadata",
    "info_cache",
    "security_groups",
    "pci_devices",
];

fn bad(msg: impl Into<String>) -> NovaError {
    NovaError::bad_request(msg)
}

fn parse_bool(name: &str, raw: &str) -> NovaResult<bool> {
    match raw.to_ascii_lowercase().as_str() {
        "" | "1" | "t" | "true" | "on" | "y" | "yes" => Ok(true),
        "0" | "f" | "false" | "off" | "n" | "no" => Ok(false),
        _ => Err(bad(format!("Invalid value '{}' for {name}: expected a boolean", raw.escape_default()))),
    }
}

fn parse_time(name: &str, raw: &str) -> NovaResult<Timestamp> {
    // Nova accepts ISO 8601; a date-time without zone is UTC.
    let t = if raw.len() == 10 { format!("{raw}T00:00:00Z") } else { raw.to_string() };
    let has_zone = t.ends_with('Z') || t.contains('+') || t.get(10..).is_some_and(|rest| rest.contains('-'));
    let t = if has_zone { t } else { format!("{t}Z") };
    Timestamp::parse_rfc3339(&t).map_err(|_| {
        bad(format!(
            "Invalid input for query parameters {name}. Value: {}. '{}' is not a 'date-time'",
            raw.escape_default(),
            raw.escape_default()
        ))
    })
}

fn regex_of(name: &str, raw: &str) -> NovaResult<regex::Regex> {
    regex::RegexBuilder::new(raw)
        .size_limit(1 << 20)
        .build()
        .map_err(|_| bad(format!("Invalid regular expression for {name}: {}", raw.escape_default())))
}

/// Splits Nova's comma-separated tag lists.
fn tag_list(raw: &str) -> Vec<String> {
    raw.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect()
}

async fn list(state: &ApiState, ctx: &NovaCtx, raw: Option<&str>, detail: bool) -> NovaResult<Response> {
    let q = Query::parse(raw);
    let admin = ctx.caller.is_admin;
    if ctx.at_least(2, 75)
        && let Some(k) = q.keys().find(|k| !KNOWN.contains(k) && !k.starts_with('_'))
    {
        return Err(bad(format!(
            "Invalid input for query parameters {}. Additional properties are not allowed ('{}' was unexpected)",
            k.escape_default(),
            k.escape_default()
        )));
    }
    let (limit, marker) = q.limit_and_marker()?;
    let marker = match marker {
        None => None,
        Some(m) => {
            Some(m.parse::<InstanceId>().map_err(|_| bad(format!("marker [{}] not found", m.escape_default())))?)
        }
    };
    sort_params(&q, ctx)?;

    // Which filters this caller may use (Nova strips the others for non-admins).
    let allowed = |k: &str| -> bool {
        admin
            || matches!(
                k,
                "reservation_id" | "name" | "status" | "image" | "flavor" | "ip" | "changes-since" | "all_tenants"
            )
            || (k == "ip6" && ctx.at_least(2, 5))
            || (matches!(k, "tags" | "tags-any" | "not-tags" | "not-tags-any") && ctx.at_least(2, 26))
            || (k == "changes-before" && ctx.at_least(2, 66))
            || (k == "locked" && ctx.at_least(2, 73))
            || (matches!(
                k,
                "availability_zone"
                    | "config_drive"
                    | "key_name"
                    | "created_at"
                    | "launched_at"
                    | "terminated_at"
                    | "power_state"
                    | "task_state"
                    | "vm_state"
                    | "progress"
                    | "user_id"
            ) && ctx.at_least(2, 83))
            || (k == "hostname" && ctx.at_least(2, 90))
    };
    if admin && let Some(k) = q.keys().find(|k| k.starts_with('_') || JOINED.contains(k)) {
        return Err(bad(format!("Invalid filter field: {}.", k.escape_default())));
    }
    // Nova's `_is_cell_down_supported`: at 2.69, servers of a part of the store that cannot
    // be read are listed as UNKNOWN, unless the request pages, sorts or filters (their
    // records are needed to do that right); `all_tenants` is the one filter allowed. The
    // filters counted are those left after the caller's disallowed ones are dropped.
    let cell_down_support = ctx.at_least(2, 69)
        && !q
            .keys()
            .any(|k| matches!(k, "limit" | "marker" | "sort_key" | "sort_dir") || (k != "all_tenants" && allowed(k)));

    let mut filters = InstanceFilters::default();
    let mut residual: Vec<Residual> = Vec::new();
    let all_tenants = match q.get("all_tenants") {
        Some(v) => parse_bool("all_tenants", v)?,
        None => false,
    };
    if all_tenants && !admin {
        return Err(NovaError::policy("os_compute_api:servers:index:get_all_tenants"));
    }
    if !all_tenants {
        filters.project_id = Some(ctx.caller.project_id.clone());
    } else if let Some(p) = q.get("project_id").or_else(|| q.get("tenant_id")) {
        filters.project_id = Some(p.to_string());
    }
    if let Some(raw) = q.get("changes-since").filter(|_| allowed("changes-since")) {
        filters.changes_since = Some(parse_time("changes-since", raw)?);
    }
    if let Some(raw) = q.get("changes-before").filter(|_| allowed("changes-before")) {
        let before = parse_time("changes-before", raw)?;
        if filters.changes_since.is_some_and(|s| before < s) {
            return Err(bad("The value of changes-since must be less than or equal to changes-before."));
        }
        residual.push(Residual::ChangesBefore(before));
        // changes-before also shows deleted servers, as changes-since does.
        filters.deleted = None;
        if filters.changes_since.is_none() {
            filters.changes_since = Some(Timestamp::EPOCH);
        }
    }
    if let Some(raw) = q.get("status").filter(|_| allowed("status")) {
        let _ = raw;
        let statuses: Vec<String> = q
            .pairs_of("status")
            .into_iter()
            .map(str::to_ascii_uppercase)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut states = Vec::new();
        let mut deleted_wanted = false;
        for s in &statuses {
            match s.as_str() {
                "ACTIVE" => states.push(VmState::Active),
                "BUILD" => states.push(VmState::Building),
                "SHUTOFF" => states.push(VmState::Stopped),
                "PAUSED" => states.push(VmState::Paused),
                "SUSPENDED" => states.push(VmState::Suspended),
                "RESCUE" => states.push(VmState::Rescued),
                "VERIFY_RESIZE" => states.push(VmState::Resized),
                "SHELVED" => states.push(VmState::Shelved),
                "SHELVED_OFFLOADED" => states.push(VmState::ShelvedOffloaded),
                "SOFT_DELETED" => states.push(VmState::SoftDeleted),
                "ERROR" => states.push(VmState::Error),
                "DELETED" => {
                    deleted_wanted = true;
                    states.push(VmState::Deleted);
                }
                // Statuses that exist only as task states unicell never sets.
                "REBOOT" | "HARD_REBOOT" | "PASSWORD" | "REBUILD" | "MIGRATING" | "RESIZE" | "REVERT_RESIZE" => {
                    residual.push(Residual::Nothing)
                }
                _ => {
                    if ctx.at_least(2, 38) {
                        return Err(bad(format!("Invalid status value: {}", s.escape_default())));
                    }
                    residual.push(Residual::Nothing);
                }
            }
        }
        if deleted_wanted {
            if !admin {
                return Err(NovaError::forbidden("Only administrators may list deleted instances"));
            }
            filters.deleted = Some(true);
        }
        filters.vm_states = states;
    }
    if let Some(raw) = q.get("deleted").filter(|_| admin) {
        filters.deleted = Some(parse_bool("deleted", raw)?);
    }
    if let Some(h) = q.get("host").filter(|_| admin) {
        filters.host = Some(h.to_string());
    }
    if let Some(u) = q.get("user_id").filter(|_| allowed("user_id")) {
        filters.user_id = Some(u.to_string());
    }
    if ctx.at_least(2, 26) {
        if let Some(t) = q.get("tags").filter(|_| allowed("tags")) {
            filters.tags = tag_list(t);
        }
        if let Some(t) = q.get("tags-any").filter(|_| allowed("tags-any")) {
            filters.tags_any = tag_list(t);
        }
        if let Some(t) = q.get("not-tags").filter(|_| allowed("not-tags")) {
            residual.push(Residual::NotTags(tag_list(t)));
        }
        if let Some(t) = q.get("not-tags-any").filter(|_| allowed("not-tags-any")) {
            residual.push(Residual::NotTagsAny(tag_list(t)));
        }
    }
    if let Some(v) = q.get("locked").filter(|_| allowed("locked")) {
        // unicell never locks a server.
        if parse_bool("locked", v)? {
            residual.push(Residual::Nothing);
        }
    }
    if (q.has("ip") && allowed("ip")) || (q.has("ip6") && allowed("ip6")) {
        // No server has an address: an address filter matches nothing.
        residual.push(Residual::Nothing);
    }
    for (key, exact) in [
        ("name", false),
        ("display_name", false),
        ("image", true),
        ("image_ref", true),
        ("flavor", true),
        ("uuid", true),
        ("availability_zone", false),
        ("node", false),
        ("reservation_id", false),
        ("key_name", false),
        ("hostname", false),
        ("description", false),
        ("display_description", false),
        ("launch_index", true),
        ("config_drive", false),
        ("access_ip_v4", false),
        ("access_ip_v6", false),
        ("power_state", false),
        ("progress", false),
        ("launched_at", false),
        ("terminated_at", false),
        ("created_at", false),
        ("vm_state", true),
        ("kernel_id", false),
        ("ramdisk_id", false),
        ("root_device_name", false),
        ("locked_by", false),
    ] {
        let Some(v) = q.get(key).filter(|_| allowed(key)) else {
            continue;
        };
        if key == "vm_state" {
            let states: Vec<String> = std::iter::once(v.to_string()).collect();
            residual.push(Residual::Exact("vm_state", states));
        } else if exact {
            residual.push(Residual::Exact(key, vec![v.to_string()]));
        } else {
            residual.push(Residual::Regex(key, regex_of(key, v)?));
        }
    }
    if let Some(v) = q.get("task_state").filter(|_| allowed("task_state")) {
        residual.push(Residual::TaskStates(vec![v.to_string()]));
    }

    let (page, stubs) = if cell_down_support {
        // No filters but the project, no marker: one store call. Nova prepends its minimal
        // constructs within the limit; the store returns them within it.
        let query = ListQuery { filters, limit: Some(limit), marker: None, partial: true };
        let page = state.store().list_instances(&query).await?;
        (page.instances, page.stubs)
    } else {
        (fetch_page(state, filters, &residual, limit, marker).await?, Vec::new())
    };
    let collection = if detail { "servers/detail" } else { "servers" };
    let last = page.last().map(|i| i.uuid).or(stubs.last().map(|s| s.uuid)).map(|id| id.to_string());
    let servers_links = q.next_links(ctx, collection, stubs.len() + page.len(), last.as_deref());
    // Serialized straight from the instances (no JSON tree in between): a 1,000-server
    // detail page is about a megabyte.
    // Sized for the page up front (a detail item is about 1.2 KB), so the buffer is not
    // regrown and copied a dozen times on the way to a megabyte.
    let mut body = Vec::with_capacity(256 + page.len() * if detail { 1536 } else { 256 });
    let written = if detail {
        let data = view_data(state, ctx, &page).await?;
        let servers: Vec<_> = stubs
            .iter()
            .map(|s| view::ListItem::Unknown(view::unknown(ctx, s, true)))
            .chain(page.iter().map(|i| view::ListItem::Known(view::detail(ctx, i, &data, false))))
            .collect();
        serde_json::to_writer(&mut body, &ListBody { servers, servers_links })
    } else {
        let servers: Vec<_> = stubs
            .iter()
            .map(|s| view::ListItem::Unknown(view::unknown(ctx, s, false)))
            .chain(page.iter().map(|i| view::ListItem::Known(view::basic(ctx, i))))
            .collect();
        serde_json::to_writer(&mut body, &ListBody { servers, servers_links })
    };
    written
        .map_err(|e| NovaError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("serializing the server list: {e}")))?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// A server list response.
#[derive(serde::Serialize)]
struct ListBody<T> {
    servers: Vec<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    servers_links: Option<Value>,
}

/// Reads pages from the store from `marker` until `limit` instances pass the residual
/// filters or the listing ends. Without residual filters this is one store call.
async fn fetch_page(
    state: &ApiState,
    filters: InstanceFilters,
    residual: &[Residual],
    limit: u32,
    marker: Option<InstanceId>,
) -> NovaResult<Vec<Instance>> {
    if limit == 0 {
        // Still check the marker, as Nova does before it looks at the limit.
        if let Some(m) = marker {
            state
                .store()
                .list_instances(&ListQuery { filters, limit: Some(1), marker: Some(m), partial: false })
                .await?;
        }
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(limit as usize);
    let mut cursor = marker;
    loop {
        let query = ListQuery { filters: filters.clone(), limit: Some(limit), marker: cursor, partial: false };
        let page = state.store().list_instances(&query).await?;
        for part in &page.unreachable {
            // Nova's default (`list_records_by_skipping_down_cells`): the part's servers are
            // left out of this answer, with a warning.
            tracing::warn!(target: "unicell::api", part = %part.part, reason = %part.reason,
                "part of the store is unreachable; its servers are left out of the list");
        }
        let next = page.next_marker;
        for i in page.instances {
            if residual.iter().all(|r| r.matches(&i)) {
                out.push(i);
                if out.len() == limit as usize {
                    return Ok(out);
                }
            }
        }
        match next {
            Some(m) if !residual.is_empty() => cursor = Some(m),
            _ => return Ok(out),
        }
    }
}

/// unicell lists in Nova's default order only (`created_at desc`, then uuid). Sort keys
/// Nova drops silently before 2.75 are dropped; an explicit request for that order is
/// accepted; any other order is refused with a 400 that says so.
fn sort_params(q: &Query, ctx: &NovaCtx) -> NovaResult<()> {
    const IGNORED: &[&str] = &[
        "architecture",
        "cell_name",
        "cleaned",
        "default_ephemeral_device",
        "default_swap_device",
        "deleted",
        "deleted_at",
        "disable_terminate",
        "ephemeral_gb",
        "ephemeral_key_uuid",
        "id",
        "key_data",
        "launched_on",
        "locked",
        "memory_mb",
        "os_type",
        "reservation_id",
        "root_gb",
        "shutdown_terminate",
        "user_data",
        "vcpus",
        "vm_mode",
    ];
    let keys: Vec<&str> = q.pairs_of("sort_key");
    let dirs: Vec<&str> = q.pairs_of("sort_dir");
    for d in &dirs {
        if *d != "asc" && *d != "desc" {
            return Err(bad(format!("Unknown sort direction, must be 'desc' or 'asc': {}", d.escape_default())));
        }
    }
    if dirs.len() > keys.len().max(1) {
        return Err(bad("Sort direction size exceeds sort key size"));
    }
    let default_dir = dirs.first().copied().unwrap_or("desc");
    for (n, key) in keys.iter().enumerate() {
        let dir = dirs.get(n).copied().unwrap_or(default_dir);
        if IGNORED.contains(key) && !(ctx.at_least(2, 73) && *key == "locked") {
            if ctx.at_least(2, 75) {
                return Err(bad(format!(
                    "Invalid input for query parameters sort_key. Value: {}.",
                    key.escape_default()
                )));
            }
            continue;
        }
        let default_order =
            (n == 0 && *key == "created_at" && dir == "desc") || (n == 1 && *key == "uuid" && dir == "desc");
        if !default_order {
            return Err(bad(format!(
                "sort_key={} sort_dir={dir} is not supported: unicell lists servers by created_at desc, uuid desc only",
                key.escape_default()
            )));
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------
// create
// ------------------------------------------------------------------------------------

/// The create-body fields Nova accepts, by the microversion that introduced them.
fn allowed_create_fields(ctx: &NovaCtx) -> Vec<&'static str> {
    let mut v = vec![
        "name",
        "imageRef",
        "flavorRef",
        "adminPass",
        "metadata",
        "networks",
        "OS-DCF:diskConfig",
        "accessIPv4",
        "accessIPv6",
        "availability_zone",
        "block_device_mapping",
        "block_device_mapping_v2",
        "config_drive",
        "key_name",
        "min_count",
        "max_count",
        "return_reservation_id",
        "security_groups",
        "user_data",
    ];
    if !ctx.at_least(2, 57) {
        v.push("personality");
    }
    if ctx.at_least(2, 19) {
        v.push("description");
    }
    if ctx.at_least(2, 52) {
        v.push("tags");
    }
    if ctx.at_least(2, 63) {
        v.push("trusted_image_certificates");
    }
    if ctx.at_least(2, 74) {
        v.extend(["host", "hypervisor_hostname"]);
    }
    if ctx.at_least(2, 90) {
        v.push("hostname");
    }
    v
}

fn invalid_body(field: &str, why: impl std::fmt::Display) -> NovaError {
    bad(format!("Invalid input for field/attribute {field}. {why}"))
}

fn string_field<'a>(
    obj: &'a Map<String, Value>,
    field: &str,
    max: usize,
    required: bool,
) -> NovaResult<Option<&'a str>> {
    match obj.get(field) {
        None | Some(Value::Null) if required => {
            Err(bad(format!("Invalid input for field/attribute server. '{field}' is a required property")))
        }
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            if s.chars().count() > max {
                return Err(invalid_body(field, format!("Value is longer than {max} characters")));
            }
            if s.chars().any(char::is_control) {
                return Err(invalid_body(field, "Value contains control characters"));
            }
            Ok(Some(s.as_str()))
        }
        Some(other) => Err(invalid_body(field, format!("{other} is not of type 'string'"))),
    }
}

fn count_field(obj: &Map<String, Value>, field: &str) -> NovaResult<Option<u64>> {
    let v = match obj.get(field) {
        None => return Ok(None),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        Some(_) => None,
    };
    match v {
        Some(n) if n >= 1 => Ok(Some(n)),
        _ => Err(invalid_body(field, "Value must be a positive integer")),
    }
}

fn uuid_list(field: &str, v: &Value) -> NovaResult<Vec<InstanceId>> {
    let items: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    items
        .into_iter()
        .map(|x| {
            x.as_str()
                .and_then(|s| s.parse::<InstanceId>().ok())
                .ok_or_else(|| invalid_body(&format!("os:scheduler_hints/{field}"), format!("{x} is not a 'uuid'")))
        })
        .collect()
}

pub(super) async fn create(
    State(state): State<ApiState>,
    Extension(ctx): Extension<NovaCtx>,
    headers: HeaderMap,
    body: Body,
) -> NovaResult<Response> {
    check_json_media_type(&headers, &["application/json", "application/vnd.openstack.compute+json"])?;
    let bytes = read_body(body, state.config().max_body_bytes).await?;
    let doc = parse_json(&bytes)?;
    let Value::Object(top) = doc else {
        return Err(bad("Invalid input for field/attribute body. The body must be a JSON object"));
    };
    for k in top.keys() {
        if !matches!(k.as_str(), "server" | "os:scheduler_hints" | "OS-SCH-HNT:scheduler_hints") {
            return Err(bad(format!(
                "Invalid input for field/attribute body. Additional properties are not allowed ('{}' was unexpected)",
                k.escape_default()
            )));
        }
    }
    let Some(Value::Object(server)) = top.get("server") else {
        return Err(bad(
            "Invalid input for field/attribute body. 'server' is a required property and must be an object",
        ));
    };
    let allowed = allowed_create_fields(&ctx);
    if let Some(k) = server.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(bad(format!(
            "Invalid input for field/attribute server. Additional properties are not allowed ('{}' was unexpected)",
            k.escape_default()
        )));
    }

    // ---- fields -----------------------------------------------------------------------
    let name = string_field(server, "name", 255, true)?.unwrap_or_default();
    if name.trim().is_empty() || name.trim() != name {
        return Err(invalid_body("name", "Value must be non-empty, without leading or trailing whitespace"));
    }
    let flavor_ref = match server.get("flavorRef") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        None => return Err(bad("Invalid input for field/attribute server. 'flavorRef' is a required property")),
        Some(other) => return Err(invalid_body("flavorRef", format!("{other} is not a valid flavor reference"))),
    };
    let flavor_id = flavor_ref.rsplit('/').next().unwrap_or_default().to_string();
    let image_ref =
        string_field(server, "imageRef", 2048, false)?.map(|s| s.rsplit('/').next().unwrap_or_default().to_string());
    let bdm = server.get("block_device_mapping_v2").or_else(|| server.get("block_device_mapping"));
    let is_bfv = match bdm {
        None | Some(Value::Null) => false,
        Some(Value::Array(items)) => {
            for item in items {
                if !item.is_object() {
                    return Err(invalid_body("block_device_mapping_v2", format!("{item} is not of type 'object'")));
                }
            }
            items.iter().any(|b| {
                b.get("boot_index").is_some_and(|i| i == &json!(0) || i == &json!("0"))
                    && b.get("destination_type").and_then(Value::as_str) == Some("volume")
            })
        }
        Some(other) => return Err(invalid_body("block_device_mapping_v2", format!("{other} is not of type 'array'"))),
    };
    let image_ref = image_ref.filter(|s| !s.is_empty());
    if image_ref.is_none() && !is_bfv {
        return Err(bad("Missing imageRef attribute"));
    }
    if let Some(img) = &image_ref
        && (img.len() > 255 || img.chars().any(|c| c.is_whitespace()))
    {
        return Err(bad("Invalid imageRef provided."));
    }
    let min_count = count_field(server, "min_count")?.unwrap_or(1);
    let max_count = count_field(server, "max_count")?.unwrap_or(min_count);
    if min_count > max_count {
        return Err(bad("min_count must be <= max_count"));
    }
    if max_count > MAX_INSTANCES_PER_REQUEST {
        return Err(NovaError::forbidden(format!(
            "Quota exceeded for instances: Requested {max_count}, but already used 0 of {MAX_INSTANCES_PER_REQUEST} instances"
        )));
    }
    let metadata: BTreeMap<String, String> = match server.get("metadata") {
        None => BTreeMap::new(),
        Some(Value::Object(m)) => {
            let mut out = BTreeMap::new();
            for (k, v) in m {
                let Value::String(v) = v else {
                    return Err(invalid_body(&format!("metadata/{k}"), format!("{v} is not of type 'string'")));
                };
                if k.is_empty() || k.chars().count() > 255 || v.chars().count() > 255 {
                    return Err(invalid_body("metadata", "keys must be 1 to 255 characters and values at most 255"));
                }
                out.insert(k.clone(), v.clone());
            }
            if out.len() > 128 {
                return Err(NovaError::forbidden("Quota exceeded for metadata_items: at most 128 items"));
            }
            out
        }
        Some(other) => return Err(invalid_body("metadata", format!("{other} is not of type 'object'"))),
    };
    match server.get("networks") {
        None if ctx.at_least(2, 37) => {
            return Err(bad("Invalid input for field/attribute server. 'networks' is a required property"));
        }
        None | Some(Value::Array(_)) => {}
        Some(Value::String(s)) if ctx.at_least(2, 37) && (s == "auto" || s == "none") => {}
        Some(other) => {
            return Err(invalid_body("networks", format!("{other} is not valid under any of the given schemas")));
        }
    }
    let security_groups = match server.get("security_groups") {
        None => json!([{"name": "default"}]),
        Some(Value::Array(a)) if a.iter().all(|g| g.get("name").is_some_and(Value::is_string)) => {
            Value::Array(a.clone())
        }
        Some(other) => return Err(invalid_body("security_groups", format!("{other} is not valid"))),
    };
    let mut sys: BTreeMap<String, String> = BTreeMap::new();
    if let Some(img) = &image_ref {
        sys.insert(sysmeta::IMAGE_REF.into(), img.clone());
    }
    let description = if ctx.at_least(2, 19) {
        string_field(server, "description", 255, false)?.map(str::to_string)
    } else {
        Some(name.to_string())
    };
    if let Some(d) = description {
        sys.insert(sysmeta::DESCRIPTION.into(), d);
    }
    for (field, key, max) in [
        ("key_name", sysmeta::KEY_NAME, 255),
        ("accessIPv4", sysmeta::ACCESS_IP_V4, 64),
        ("accessIPv6", sysmeta::ACCESS_IP_V6, 64),
        ("user_data", sysmeta::USER_DATA, 65535),
    ] {
        if let Some(v) = string_field(server, field, max, false)? {
            sys.insert(key.into(), v.to_string());
        }
    }
    match server.get("OS-DCF:diskConfig").map(|v| v.as_str()) {
        None => {}
        Some(Some("AUTO")) => {
            sys.insert(sysmeta::DISK_CONFIG.into(), "AUTO".into());
        }
        Some(Some("MANUAL")) => {
            sys.insert(sysmeta::DISK_CONFIG.into(), "MANUAL".into());
        }
        Some(_) => return Err(invalid_body("OS-DCF:diskConfig", "Value must be AUTO or MANUAL")),
    }
    match server.get("config_drive") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(b)) => {
            if *b {
                sys.insert(sysmeta::CONFIG_DRIVE.into(), "True".into());
            }
        }
        Some(Value::String(s)) => {
            if parse_bool("config_drive", s).map_err(|_| bad("Invalid config_drive provided."))? {
                sys.insert(sysmeta::CONFIG_DRIVE.into(), "True".into());
            }
        }
        Some(_) => return Err(bad("Invalid config_drive provided.")),
    }
    if let Some(certs) = server.get("trusted_image_certificates").filter(|c| !c.is_null()) {
        match certs {
            Value::Array(a) if !a.is_empty() && a.len() <= 50 && a.iter().all(Value::is_string) => {
                sys.insert(sysmeta::TRUSTED_CERTS.into(), certs.to_string());
            }
            _ => return Err(invalid_body("trusted_image_certificates", "must be 1 to 50 strings")),
        }
    }
    let hostname =
        if ctx.at_least(2, 90) { string_field(server, "hostname", 255, false)?.map(str::to_string) } else { None };
    if let Some(h) = &hostname
        && (max_count > 1 || view::sanitize_hostname(h) != h.to_ascii_lowercase() || h.is_empty())
    {
        return Err(bad(if max_count > 1 {
            "Unable to allocate hostnames to multiple instances when 'hostname' is given".to_string()
        } else {
            format!("Invalid input for field/attribute hostname. Value: {}", h.escape_default())
        }));
    }
    let tags: BTreeSet<String> = match server.get("tags") {
        None => BTreeSet::new(),
        Some(Value::Array(a)) => {
            let mut t = BTreeSet::new();
            for x in a {
                let Some(s) =
                    x.as_str().filter(|s| !s.is_empty() && s.len() <= 60 && !s.contains(',') && !s.contains('/'))
                else {
                    return Err(invalid_body("tags", format!("{x} is not a valid tag")));
                };
                t.insert(s.to_string());
            }
            if t.len() > 50 {
                return Err(invalid_body("tags", "at most 50 tags"));
            }
            t
        }
        Some(other) => return Err(invalid_body("tags", format!("{other} is not of type 'array'"))),
    };

    // ---- availability zone, forced host ---------------------------------------------
    let mut destination: Option<Destination> = None;
    let mut az = string_field(server, "availability_zone", 255, false)?.map(str::to_string);
    if let Some(raw) = az.clone()
        && raw.contains(':')
    {
        // `zone:host[:node]`, admins only (`create:forced_host`).
        if !ctx.caller.is_admin {
            return Err(NovaError::policy("os_compute_api:servers:create:forced_host"));
        }
        let mut parts = raw.splitn(3, ':');
        let zone = parts.next().unwrap_or_default();
        let host = parts.next().filter(|s| !s.is_empty()).map(str::to_string);
        let node = parts.next().filter(|s| !s.is_empty()).map(str::to_string);
        az = (!zone.is_empty()).then(|| zone.to_string());
        destination = Some(Destination { host, node, ..Default::default() });
    }
    if ctx.at_least(2, 74) {
        let host = string_field(server, "host", 255, false)?;
        let node = string_field(server, "hypervisor_hostname", 255, false)?;
        if host.is_some() || node.is_some() {
            if !ctx.caller.is_admin {
                return Err(NovaError::policy("compute:servers:create:requested_destination"));
            }
            let d = destination.get_or_insert_with(Destination::default);
            d.host = host.map(str::to_string).or(d.host.take());
            d.node = node.map(str::to_string).or(d.node.take());
        }
    }
    if let Some(zone) = &az {
        sys.insert(sysmeta::PINNED_AZ.into(), zone.clone());
        let hosts = state.store().list_hosts(None).await?;
        let default = &state.config().scheduler.default_availability_zone;
        if !hosts.iter().any(|h| h.availability_zone.as_deref().unwrap_or(default) == zone) {
            return Err(bad("The requested availability zone is not available"));
        }
    }

    // ---- scheduler hints ------------------------------------------------------------
    let raw_hints = match top.get("os:scheduler_hints").or_else(|| top.get("OS-SCH-HNT:scheduler_hints")) {
        None => Map::new(),
        Some(Value::Object(h)) => h.clone(),
        Some(other) => return Err(invalid_body("os:scheduler_hints", format!("{other} is not of type 'object'"))),
    };
    let mut hints = SchedulerHints::default();
    if let Some(g) = raw_hints.get("group") {
        let ids = uuid_list("group", g)?;
        if ids.len() != 1 {
            return Err(invalid_body("os:scheduler_hints/group", "exactly one server group"));
        }
        let gid = GroupId(ids[0].0);
        let group = match state.store().get_server_group(gid).await {
            Ok(g) => g,
            Err(crate::Error::NotFound { .. }) => return Err(bad(format!("Instance group {gid} could not be found."))),
            Err(e) => return Err(e.into()),
        };
        if !ctx.caller.owns(&group.project_id) {
            return Err(bad(format!("Instance group {gid} could not be found.")));
        }
        hints.group = Some(gid);
        sys.insert(sysmeta::GROUP.into(), gid.to_string());
    }
    if let Some(v) = raw_hints.get("same_host") {
        hints.same_host = uuid_list("same_host", v)?;
    }
    if let Some(v) = raw_hints.get("different_host") {
        hints.different_host = uuid_list("different_host", v)?;
    }
    if !raw_hints.is_empty() {
        sys.insert(sysmeta::SCHEDULER_HINTS.into(), view::hints_as_lists(&raw_hints).to_string());
    }

    // ---- flavor -----------------------------------------------------------------------
    let flavor = match FlavorId::new(flavor_id.clone()) {
        Ok(fid) => match state.store().get_flavor(&fid).await {
            Ok(f) => f,
            Err(crate::Error::NotFound { .. }) => return Err(bad("Invalid flavorRef provided.")),
            Err(e) => return Err(e.into()),
        },
        Err(_) => return Err(bad("Invalid flavorRef provided.")),
    };

    // ---- instances and the build --------------------------------------------------
    let reservation_id = format!("r-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    sys.insert(sysmeta::RESERVATION_ID.into(), reservation_id.clone());
    let count = max_count as usize;
    let now = Timestamp::now();
    let mut instances = Vec::with_capacity(count);
    for index in 0..count {
        let display = if count > 1 { format!("{name}-{}", index + 1) } else { name.to_string() };
        let mut inst = Instance::new_building(
            InstanceId(uuid::Uuid::now_v7()),
            &display,
            &ctx.caller.project_id,
            &ctx.caller.user_id,
            flavor.id.clone(),
        );
        inst.created_at = now;
        inst.updated_at = now;
        inst.metadata = metadata.clone();
        inst.tags = tags.clone();
        inst.availability_zone = az.clone();
        inst.system_metadata = sys.clone();
        inst.system_metadata.insert(sysmeta::LAUNCH_INDEX.into(), index.to_string());
        inst.system_metadata.insert(
            sysmeta::HOSTNAME.into(),
            hostname.clone().unwrap_or_else(|| {
                let h = view::sanitize_hostname(&display);
                if h.is_empty() { format!("server-{}", inst.uuid) } else { h }
            }),
        );
        inst.validate().map_err(NovaError::from)?;
        instances.push(inst);
    }
    let spec = RequestSpec {
        instance_uuid: instances[0].uuid,
        flavor: flavor.clone(),
        image_properties: BTreeMap::new(),
        is_bfv,
        num_instances: count as u32,
        project_id: ctx.caller.project_id.clone(),
        user_id: ctx.caller.user_id.clone(),
        availability_zone: az.clone(),
        hints,
        requested_destination: destination,
        ignore_hosts: Vec::new(),
        force_hosts: Vec::new(),
    };
    let first = instances[0].uuid;
    state.builds().start(spec, instances).await?;

    if server
        .get("return_reservation_id")
        .is_some_and(|v| v == &json!(true) || v == &json!("True") || v == &json!("true"))
    {
        return Ok((StatusCode::ACCEPTED, Json(json!({ "reservation_id": reservation_id }))).into_response());
    }
    let id = first.to_string();
    let password: String = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let body = json!({"server": {
        "id": id,
        "links": ctx.links("servers", &id),
        "OS-DCF:diskConfig": if sys.get(sysmeta::DISK_CONFIG).map(String::as_str) == Some("AUTO") { "AUTO" } else { "MANUAL" },
        "security_groups": security_groups,
        "adminPass": password,
    }});
    let mut resp = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("{}/v2.1/servers/{id}", ctx.base)) {
        resp.headers_mut().insert(LOCATION, v);
    }
    Ok(resp)
}
