//! `GET /allocation_candidates` (1.10+), answered by the scheduler's candidate search
//! ([`crate::scheduler::candidates`]): the API parses Placement's query into the same
//! [`CandidateRequest`] the scheduler builds from a flavor, so both decide alike.
//!
//! Differences from Placement, answered with a 400 naming the parameter rather than
//! approximated: any-of trait groups with more than one trait (`required=in:A,B`),
//! `member_of<N>` and `in_tree<N>` on numbered groups, and `same_subtree`. The search returns
//! the first fitting allocation of each tree (root first), not every combination, so a tree
//! appears at most once in `allocation_requests`; sharing providers
//! (`MISC_SHARES_VIA_AGGREGATE`) contribute nothing, because unicell's claims stay inside one
//! tree.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::{ApiError, ApiResult, Ctx, Reply, error, query, since};
use crate::model::{AggregateId, ProviderTree, RequestGroup, ResourceClass, Trait};
use crate::scheduler::candidates::{CandidateRequest, allocation_candidate_mapped};

/// Search steps per tree before a tree is given up (the scheduler's bound on wide trees).
const BUDGET_PER_TREE: usize = 10_000;

const KINDS: [&str; 4] = ["resources", "required", "member_of", "in_tree"];

/// The query schema for the request's microversion (Placement's `GET_SCHEMA_1_x`).
fn schema(ctx: &Ctx) -> Value {
    if !ctx.at_least(1, 25) {
        let mut props = json!({"resources": {"type": "string"}});
        if ctx.at_least(1, 16) {
            props["limit"] =
                json!({"type": ["integer", "string"], "pattern": "^[1-9][0-9]*$", "minimum": 1, "minLength": 1});
        }
        if ctx.at_least(1, 17) {
            props["required"] = json!({"type": ["string"]});
        }
        if ctx.at_least(1, 21) {
            props["member_of"] = json!({"type": ["string"]});
        }
        return json!({"type": "object", "properties": props, "required": ["resources"], "additionalProperties": false});
    }
    let group = if ctx.at_least(1, 33) { "[a-zA-Z0-9_-]{1,64}" } else { "[1-9][0-9]*" };
    let kinds: &[&str] = if ctx.at_least(1, 31) { &KINDS } else { &KINDS[..3] };
    let patterns: Map<String, Value> =
        kinds.iter().map(|k| (format!("^{k}({group})?$"), json!({"type": "string"}))).collect();
    let mut props = json!({
        "limit": {"type": ["integer", "string"], "pattern": "^[1-9][0-9]*$", "minimum": 1, "minLength": 1},
        "group_policy": {"type": "string", "enum": ["none", "isolate"]},
    });
    if ctx.at_least(1, 35) {
        props["root_required"] = json!({"type": ["string"]});
    }
    if ctx.at_least(1, 36) {
        props["same_subtree"] = json!({"type": ["string"]});
    }
    json!({"type": "object", "properties": props, "patternProperties": patterns, "additionalProperties": false})
}

/// One request group as parsed from the query.
#[derive(Default)]
struct Group {
    resources: BTreeMap<String, i64>,
    required: Vec<BTreeSet<String>>,
    forbidden: BTreeSet<String>,
    has_member_of: bool,
    has_in_tree: bool,
}

fn unsupported(what: &str) -> ApiError {
    ApiError::bad_request(format!(
        "{what} is not supported by unicell's allocation candidates (see the Placement API notes)"
    ))
    .code(error::QUERYPARAM_BAD_VALUE)
}

/// `GET /allocation_candidates`.
pub async fn list(ctx: &Ctx) -> ApiResult {
    since(ctx, 1, 10)?;
    ctx.accept_json()?;
    ctx.admin_only()?;
    query::validate(ctx, &schema(ctx))?;

    // Collect the groups by suffix.
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    let mut keys: BTreeSet<(String, String)> = BTreeSet::new();
    for (k, _) in &ctx.query {
        for kind in KINDS {
            if let Some(suffix) = k.strip_prefix(kind) {
                keys.insert((kind.to_string(), suffix.to_string()));
            }
        }
    }
    for (kind, suffix) in &keys {
        let g = groups.entry(suffix.clone()).or_default();
        let key = format!("{kind}{suffix}");
        match kind.as_str() {
            "resources" => {
                let value = ctx.query_one(&key).unwrap_or_default();
                g.resources = query::resources(value)?;
            }
            "required" => (g.required, g.forbidden) = query::traits_params(ctx, suffix)?,
            "member_of" => {
                query::member_of_params(ctx, suffix)?;
                g.has_member_of = true;
            }
            _ => g.has_in_tree = true,
        }
    }
    let orphans = |kind: &str| -> Vec<String> {
        groups
            .iter()
            .filter(|(s, g)| {
                !s.is_empty() && g.resources.is_empty() && keys.contains(&(kind.to_string(), (*s).clone()))
            })
            .map(|(s, _)| format!("{kind}{s}"))
            .collect()
    };
    let orphan_traits = orphans("required");
    if !orphan_traits.is_empty() {
        return Err(ApiError::bad_request(format!(
            "All traits parameters must be associated with resources. Found the following orphaned traits keys: {}",
            orphan_traits.join(", ")
        )));
    }
    let orphan_aggs = orphans("member_of");
    if !orphan_aggs.is_empty() {
        return Err(ApiError::bad_request(format!(
            "All member_of parameters must be associated with resources. Found the following orphaned member_of \
             keys: {}",
            orphan_aggs.join(", ")
        )));
    }
    if groups.values().all(|g| g.resources.is_empty()) {
        return Err(ApiError::bad_request("At least one request group (`resources` or `resources{$S}`) is required."));
    }
    let numbered = groups.iter().filter(|(s, g)| !s.is_empty() && !g.resources.is_empty()).count();
    let group_policy = ctx.query_one("group_policy");
    if group_policy.is_none() && numbered > 1 {
        return Err(ApiError::bad_request(
            "The \"group_policy\" parameter is required when specifying more than one \"resources{N}\" parameter.",
        ));
    }
    if ctx.query_one("same_subtree").is_some() {
        return Err(unsupported("same_subtree"));
    }
    for (suffix, g) in &groups {
        if g.required.iter().any(|set| set.len() > 1) {
            return Err(unsupported(&format!("an any-of trait list (required{suffix}=in:...)")));
        }
        let conflicting: Vec<&String> = g.required.iter().flatten().filter(|t| g.forbidden.contains(*t)).collect();
        if !conflicting.is_empty() {
            return Err(ApiError::bad_request(format!(
                "Conflicting required and forbidden traits found in the following traits keys: required{suffix}: ({})",
                conflicting.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        if !suffix.is_empty() && g.has_member_of {
            return Err(unsupported(&format!("member_of{suffix}")));
        }
        if !suffix.is_empty() && g.has_in_tree {
            return Err(unsupported(&format!("in_tree{suffix}")));
        }
    }

    // Classes and traits must exist.
    let mut request_groups = Vec::new();
    for (suffix, g) in &groups {
        let mut rg = RequestGroup { suffix: (!suffix.is_empty()).then(|| suffix.clone()), ..Default::default() };
        for (name, amount) in &g.resources {
            let class = query::known_class(ctx, name)
                .await
                .map_err(|m| ApiError::bad_request(format!("Invalid resource class in resources parameter: {m}")))?;
            rg.resources.insert(class, *amount);
        }
        let names: Vec<String> = g.required.iter().flatten().chain(g.forbidden.iter()).cloned().collect();
        query::check_traits(ctx, &names).await.map_err(ApiError::bad_request)?;
        let to_trait = |s: &String| Trait::new(s.clone()).map_err(|e| ApiError::bad_request(e.to_string()));
        rg.required = g.required.iter().flatten().map(to_trait).collect::<Result<_, _>>()?;
        rg.forbidden = g.forbidden.iter().map(to_trait).collect::<Result<_, _>>()?;
        request_groups.push(rg);
    }
    let (member_of, forbidden_aggs): (Vec<BTreeSet<AggregateId>>, BTreeSet<AggregateId>) =
        if ctx.at_least(1, 21) || ctx.query_one("member_of").is_some() {
            query::member_of_params(ctx, "")?
        } else {
            (vec![], BTreeSet::new())
        };
    let mut root_required = BTreeSet::new();
    let mut root_forbidden = BTreeSet::new();
    if ctx.at_least(1, 35) {
        let values = ctx.query_all("root_required");
        if values.len() > 1 {
            return Err(ApiError::bad_request("Query parameter 'root_required' may be specified only once.")
                .code(error::ILLEGAL_DUPLICATE_QUERYPARAM));
        }
        if let Some(v) = values.first() {
            let (req, forb) = query::traits_value(v, true, false)?;
            let names: Vec<String> = req.iter().flatten().chain(forb.iter()).cloned().collect();
            query::check_traits(ctx, &names).await.map_err(ApiError::bad_request)?;
            root_required = req.into_iter().flatten().collect::<BTreeSet<String>>();
            root_forbidden = forb;
            if let Some(t) = root_required.intersection(&root_forbidden).next() {
                return Err(ApiError::bad_request(format!(
                    "Conflicting required and forbidden traits found in root_required: {t}"
                )));
            }
        }
    }
    let in_tree = match ctx.query_one("in_tree") {
        Some(v) => {
            let id = super::providers::parse_uuid(v.trim()).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Invalid query string parameters: Expected 'in_tree' parameter to be a format of uuid. Got: {v}"
                ))
            })?;
            match ctx.store().provider_tree(id).await {
                Ok(t) => Some(Some(t.root)),
                Err(crate::Error::NotFound { .. }) => Some(None),
                Err(e) => return Err(ApiError::from_store(e)),
            }
        }
        None => None,
    };
    let limit: Option<usize> = ctx.query_one("limit").and_then(|l| l.parse().ok());

    let request = CandidateRequest {
        groups: request_groups,
        isolate: group_policy == Some("isolate"),
        member_of,
        forbidden_aggregates: forbidden_aggs,
        budget: BUDGET_PER_TREE,
    };
    let requested: BTreeSet<ResourceClass> = request.groups.iter().flat_map(|g| g.resources.keys().cloned()).collect();
    let trees = ctx.store().list_provider_trees(None).await.map_err(ApiError::from_store)?;
    let nested_aware = ctx.at_least(1, 29);
    let mut allocation_requests = Vec::new();
    let mut summaries = Map::new();
    for tree in &trees {
        if limit.is_some_and(|l| allocation_requests.len() >= l) {
            break;
        }
        if !nested_aware && tree.providers.len() > 1 {
            continue;
        }
        if let Some(r) = in_tree
            && r != Some(tree.root)
        {
            continue;
        }
        if !root_required.is_empty() || !root_forbidden.is_empty() {
            let Some(root) = tree.root_node() else { continue };
            let has = |t: &String| root.traits.iter().any(|x| x.as_str() == t);
            if !root_required.iter().all(has) || root_forbidden.iter().any(has) {
                continue;
            }
        }
        let Ok((alloc, mappings)) = allocation_candidate_mapped(tree, &request) else { continue };
        allocation_requests.push(serialize_request(ctx, &alloc, &mappings));
        summarize(ctx, tree, &requested, &mut summaries);
    }
    Ok(Reply::json(json!({"allocation_requests": allocation_requests, "provider_summaries": summaries})).cached(ctx))
}

fn serialize_request(
    ctx: &Ctx,
    alloc: &crate::model::AllocationMap,
    mappings: &crate::scheduler::candidates::GroupMappings,
) -> Value {
    let res = |r: &crate::model::Resources| -> Map<String, Value> {
        r.iter().map(|(c, a)| (c.to_string(), json!(a))).collect()
    };
    if !ctx.at_least(1, 12) {
        let list: Vec<Value> = alloc
            .iter()
            .map(|(p, r)| json!({"resource_provider": {"uuid": p.to_string()}, "resources": res(r)}))
            .collect();
        return json!({"allocations": list});
    }
    let allocations: Map<String, Value> =
        alloc.iter().map(|(p, r)| (p.to_string(), json!({"resources": res(r)}))).collect();
    let mut v = json!({"allocations": allocations});
    if ctx.at_least(1, 34) {
        let m: Map<String, Value> = mappings
            .iter()
            .map(|(s, ps)| (s.clone(), json!(ps.iter().map(|p| p.to_string()).collect::<Vec<_>>())))
            .collect();
        v["mappings"] = Value::Object(m);
    }
    v
}

/// Adds every provider of `tree` to the provider summaries.
fn summarize(ctx: &Ctx, tree: &ProviderTree, requested: &BTreeSet<ResourceClass>, out: &mut Map<String, Value>) {
    for n in &tree.providers {
        let resources: Map<String, Value> = n
            .inventories
            .iter()
            .filter(|(c, _)| ctx.at_least(1, 27) || requested.contains(*c))
            .map(|(c, inv)| (c.to_string(), json!({"capacity": inv.capacity(), "used": n.used(c)})))
            .collect();
        let mut s = json!({"resources": resources});
        if ctx.at_least(1, 17) {
            s["traits"] = json!(n.traits.iter().map(|t| t.to_string()).collect::<Vec<_>>());
        }
        if ctx.at_least(1, 29) {
            s["parent_provider_uuid"] = json!(n.parent.map(|p| p.to_string()));
            s["root_provider_uuid"] = json!(tree.root.to_string());
        }
        out.insert(n.id.to_string(), s);
    }
}
