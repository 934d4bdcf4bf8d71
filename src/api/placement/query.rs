//! Query-string parsing shared by `GET /resource_providers` and `GET /allocation_candidates`
//! (Placement's `util.normalize_*` functions, with their messages).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::{ApiError, Ctx, schema};
use crate::model::{AggregateId, ProviderNode, ResourceClass, Trait};
use crate::store::placement::PlacementTree;

/// Placement's `validate_query_params`: the last value of every key, as a JSON object,
/// against `schema`.
pub fn validate(ctx: &Ctx, s: &Value) -> Result<(), ApiError> {
    let mut obj = Map::new();
    for (k, v) in &ctx.query {
        obj.insert(k.clone(), Value::String(v.clone()));
    }
    schema::validate(&Value::Object(obj), s)
        .map_err(|e| ApiError::bad_request(format!("Invalid query string parameters: {e}")))
}

/// `resources=VCPU:2,MEMORY_MB:1024` -> amounts by class name.
pub fn resources(value: &str) -> Result<BTreeMap<String, i64>, ApiError> {
    let form = "Badly formed resources parameter. Expected resources query string parameter in form: \
                ?resources=VCPU:2,MEMORY_MB:1024.";
    if value.trim().is_empty() {
        return Err(ApiError::bad_request(format!("{form} Got: empty string.")));
    }
    let mut out = BTreeMap::new();
    for part in value.split(',') {
        let mut it = part.split(':');
        let (Some(rc), Some(amount), None) = (it.next(), it.next(), it.next()) else {
            return Err(ApiError::bad_request(format!("{form} Got: {part}.")));
        };
        let amount: i64 = amount.trim().parse().map_err(|_| {
            ApiError::bad_request(format!("Requested resource {rc} expected positive integer amount. Got: {amount}."))
        })?;
        if amount < 1 {
            return Err(ApiError::bad_request(format!("Requested resource {rc} requires amount >= 1. Got: {amount}.")));
        }
        out.insert(rc.to_string(), amount);
    }
    Ok(out)
}

/// One `required` value: any-of sets (ANDed) and forbidden traits.
pub fn traits_value(
    value: &str,
    allow_forbidden: bool,
    allow_any: bool,
) -> Result<(Vec<BTreeSet<String>>, BTreeSet<String>), ApiError> {
    if let Some(rest) = value.strip_prefix("in:") {
        if !allow_any {
            return Err(ApiError::bad_request(format!(
                "Invalid query string parameters: The format 'in:HW_CPU_X86_VMX,CUSTOM_MAGIC' only supported since \
                 microversion 1.39. Got: {value}"
            )));
        }
        let any: BTreeSet<String> = rest.split(',').map(|s| s.trim().to_string()).collect();
        if any.iter().any(String::is_empty) {
            return Err(ApiError::bad_request(format!(
                "Invalid query string parameters: Expected 'required' parameter value of the form: \
                 in:HW_CPU_X86_VMX,CUSTOM_MAGIC. Got an empty trait in: {value}"
            )));
        }
        if any.iter().any(|t| t.starts_with('!')) {
            return Err(ApiError::bad_request(format!(
                "Invalid query string parameters: The format 'in:HW_CPU_X86_VMX,CUSTOM_MAGIC' does not support \
                 forbidden traits. Got: {value}"
            )));
        }
        return Ok((vec![any], BTreeSet::new()));
    }
    let all: Vec<String> = value.split(',').map(|s| s.trim().to_string()).collect();
    let forbidden: BTreeSet<String> =
        all.iter().filter(|t| t.starts_with('!')).map(|t| t.trim_start_matches('!').to_string()).collect();
    if all.iter().chain(forbidden.iter()).any(String::is_empty) {
        let form = if allow_forbidden { "HW_CPU_X86_VMX,!CUSTOM_MAGIC" } else { "HW_CPU_X86_VMX,CUSTOM_MAGIC" };
        return Err(ApiError::bad_request(format!(
            "Invalid query string parameters: Expected 'required' parameter value of the form: {form}. Got an \
             empty trait in: {value}"
        )));
    }
    if !forbidden.is_empty() && !allow_forbidden {
        return Err(ApiError::bad_request(format!(
            "Invalid query string parameters: Expected 'required' parameter value of the form: \
             HW_CPU_X86_VMX,CUSTOM_MAGIC. Got: {value}"
        )));
    }
    let required = all.into_iter().filter(|t| !t.starts_with('!')).map(|t| BTreeSet::from([t])).collect();
    Ok((required, forbidden))
}

/// Every `required{suffix}` of the request (only the last before 1.39).
pub fn traits_params(ctx: &Ctx, suffix: &str) -> Result<(Vec<BTreeSet<String>>, BTreeSet<String>), ApiError> {
    let allow_forbidden = ctx.at_least(1, 22);
    let allow_any = ctx.at_least(1, 39);
    let mut values = ctx.query_all(&format!("required{suffix}"));
    if !allow_any && values.len() > 1 {
        values = values.split_off(values.len() - 1);
    }
    let mut required = Vec::new();
    let mut forbidden = BTreeSet::new();
    for v in values {
        let (r, f) = traits_value(v, allow_forbidden, allow_any)?;
        required.extend(r);
        forbidden.extend(f);
    }
    Ok((required, forbidden))
}

/// Every `member_of{suffix}`: required any-of sets and forbidden aggregates.
pub fn member_of_params(
    ctx: &Ctx,
    suffix: &str,
) -> Result<(Vec<BTreeSet<AggregateId>>, BTreeSet<AggregateId>), ApiError> {
    let key = format!("member_of{suffix}");
    let values = ctx.query_all(&key);
    if !ctx.at_least(1, 24) && values.len() > 1 {
        return Err(ApiError::bad_request(format!("Multiple member_of{suffix} parameters are not supported")));
    }
    let mut required = Vec::new();
    let mut forbidden = BTreeSet::new();
    for value in values {
        if value.contains(',') && !(value.starts_with("in:") || value.starts_with("!in:")) {
            return Err(ApiError::bad_request(format!(
                "Multiple values for 'member_of' must be prefixed with the 'in:' or '!in:' keyword using the valid \
                 microversion. Got: {value}"
            )));
        }
        let (req, forb): (Vec<&str>, Vec<&str>) = if let Some(r) = value.strip_prefix("!in:") {
            (vec![], r.split(',').collect())
        } else if let Some(r) = value.strip_prefix('!') {
            (vec![], vec![r])
        } else if let Some(r) = value.strip_prefix("in:") {
            (r.split(',').collect(), vec![])
        } else {
            (vec![value], vec![])
        };
        let parse = |s: &str| -> Result<AggregateId, ApiError> {
            schema::is_uuid_like(s).then(|| uuid::Uuid::parse_str(s).ok().map(AggregateId)).flatten().ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Invalid query string parameters: Expected 'member_of' parameter to contain valid UUID(s). \
                         Got: {s}"
                ))
            })
        };
        let req: BTreeSet<AggregateId> = req.into_iter().map(parse).collect::<Result<_, _>>()?;
        let forb: BTreeSet<AggregateId> = forb.into_iter().map(parse).collect::<Result<_, _>>()?;
        if !req.is_empty() {
            required.push(req);
        }
        if !forb.is_empty() {
            if !ctx.at_least(1, 32) {
                return Err(ApiError::bad_request(format!(
                    "Forbidden member_of{suffix} parameters are not supported in the specified microversion"
                )));
            }
            forbidden.extend(forb);
        }
    }
    Ok((required, forbidden))
}

/// The names of every trait the store knows: the standard ones and the custom registry.
pub async fn known_traits(ctx: &Ctx) -> Result<BTreeSet<String>, ApiError> {
    let mut out: BTreeSet<String> = super::os_traits::STANDARD_TRAITS.iter().map(|s| s.to_string()).collect();
    out.extend(ctx.store().custom_traits().await.map_err(ApiError::from_store)?.into_iter().map(|e| e.name));
    Ok(out)
}

/// Fails with Placement's `No such trait(s): A, B.` for names the store does not know.
pub async fn check_traits<'a>(ctx: &Ctx, names: impl IntoIterator<Item = &'a String>) -> Result<(), String> {
    let known = known_traits(ctx).await.map_err(|e| e.detail)?;
    let missing: BTreeSet<&String> = names.into_iter().filter(|n| !known.contains(*n)).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("No such trait(s): {}.", missing.into_iter().cloned().collect::<Vec<_>>().join(", ")))
    }
}

/// A known resource class by name (standard, or custom and registered), or Placement's
/// `No such resource class X.`.
pub async fn known_class(ctx: &Ctx, name: &str) -> Result<ResourceClass, String> {
    let missing = || format!("No such resource class {name}.");
    let class = ResourceClass::parse(name).map_err(|_| missing())?;
    if ResourceClass::STANDARD.contains(&class) {
        return Ok(class);
    }
    let custom = ctx.store().resource_classes().await.map_err(|e| e.to_string())?;
    if custom.iter().any(|e| e.name == name) { Ok(class) } else { Err(missing()) }
}

/// The filters of `GET /resource_providers`.
#[derive(Debug, Default)]
pub struct Filters {
    name: Option<String>,
    uuid: Option<String>,
    in_tree: Option<String>,
    member_of: Vec<BTreeSet<AggregateId>>,
    forbidden_aggs: BTreeSet<AggregateId>,
    required: Vec<BTreeSet<Trait>>,
    forbidden: BTreeSet<Trait>,
    resources: BTreeMap<ResourceClass, i64>,
    /// A filter that nothing can match (an unknown `in_tree` provider).
    none: bool,
}

impl Filters {
    /// Reads and checks the filters of a request.
    pub async fn from_request(ctx: &Ctx) -> Result<Filters, ApiError> {
        let mut f = Filters::default();
        if ctx.query_one("member_of").is_some() {
            (f.member_of, f.forbidden_aggs) = member_of_params(ctx, "")?;
        }
        if ctx.query_one("required").is_some() {
            let (req, forb) = traits_params(ctx, "")?;
            let names: Vec<String> = req.iter().flatten().chain(forb.iter()).cloned().collect();
            check_traits(ctx, &names)
                .await
                .map_err(|m| ApiError::bad_request(format!("Invalid trait(s) in \"required\" parameter: {m}")))?;
            let to_trait = |s: &String| Trait::new(s.clone()).map_err(|e| ApiError::bad_request(e.to_string()));
            f.required =
                req.iter().map(|set| set.iter().map(to_trait).collect::<Result<_, _>>()).collect::<Result<_, _>>()?;
            f.forbidden = forb.iter().map(to_trait).collect::<Result<_, _>>()?;
        }
        f.name = ctx.query_one("name").map(String::from);
        f.uuid = ctx.query_one("uuid").map(|u| u.to_ascii_lowercase());
        if let Some(t) = ctx.query_one("in_tree") {
            match super::providers::parse_uuid(t) {
                Some(p) => match ctx.store().placement_tree(p).await {
                    Ok(tree) => f.in_tree = Some(tree.tree.root.to_string()),
                    Err(crate::Error::NotFound { .. }) => f.none = true,
                    Err(e) => return Err(ApiError::from_store(e)),
                },
                None => f.none = true,
            }
        }
        if let Some(r) = ctx.query_one("resources") {
            for (name, amount) in resources(r)? {
                let class = known_class(ctx, &name).await.map_err(|m| {
                    ApiError::bad_request(format!("Invalid resource class in resources parameter: {m}"))
                })?;
                f.resources.insert(class, amount);
            }
        }
        Ok(f)
    }

    /// Whether provider `n` of tree `t` passes every filter.
    pub fn matches(&self, t: &PlacementTree, n: &ProviderNode) -> bool {
        if self.none {
            return false;
        }
        if self.name.as_ref().is_some_and(|name| *name != n.name) {
            return false;
        }
        if self.uuid.as_ref().is_some_and(|u| *u != n.id.to_string() && *u != n.id.0.simple().to_string()) {
            return false;
        }
        if self.in_tree.as_ref().is_some_and(|r| *r != t.tree.root.to_string()) {
            return false;
        }
        if !self.member_of.iter().all(|set| set.iter().any(|a| n.aggregates.contains(a))) {
            return false;
        }
        if self.forbidden_aggs.iter().any(|a| n.aggregates.contains(a)) {
            return false;
        }
        if !self.required.iter().all(|set| set.iter().any(|tr| n.traits.contains(tr))) {
            return false;
        }
        if self.forbidden.iter().any(|tr| n.traits.contains(tr)) {
            return false;
        }
        self.resources.iter().all(|(c, a)| match n.inventories.get(c) {
            Some(inv) => {
                *a >= inv.min_unit && *a <= inv.max_unit && a % inv.step_size == 0 && n.used(c) + a <= inv.capacity()
            }
            None => false,
        })
    }
}
