//! The Placement API (microversions 1.0 to [`MAX_VERSION`]) over one store.
//!
//! Paths start at `/` on their own listener. Requests go through the same steps as in
//! Placement's WSGI pipeline, in the same order, so that errors win in the same order:
//! authentication (noauth2: no `X-Auth-Token` is 401 except at `/`), microversion
//! (`OpenStack-API-Version: placement X.Y|latest`; 400 for a malformed one, 406 with
//! `min_version`/`max_version` for one out of range; the version is echoed on every
//! response after that, with `Vary` on successes), `Content-Length` without `Content-Type`
//! (400), routing (404; 405 with `Allow`), then the handler: `Accept` (406), policy (every
//! call but `GET /` needs the admin role, Placement's default policy), `Content-Type`
//! (415), body schema (400 with Python jsonschema's message), and the operation.
//!
//! Errors have Placement's body `{"errors": [{"status", "title", "detail", "request_id",
//! "code"}]}` (`code` from 1.23), or text/HTML when the client does not accept JSON, as
//! webob renders them. From 1.15 successful reads carry `Last-Modified` and
//! `Cache-Control: no-cache`.
//!
//! Every write goes through [`PlacementStore`]: the store checks generations and capacity
//! atomically, so several replicas of this API on one store cannot overcommit. Where
//! unicell's contract differs from Placement's, the API answers with a clear error; the
//! differences are listed in `docs/placement-api.md`.

mod aggregates;
mod allocations;
mod candidates;
mod classes;
mod error;
mod inventories;
mod os_traits;
mod providers;
mod query;
pub mod schema;
mod traits;
mod usages;

use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

pub use self::error::{ApiError, ApiResult};
use crate::store::placement::PlacementStore;

/// The highest microversion served (Placement 2025.2's maximum).
pub const MAX_VERSION: Version = Version(1, 39);
/// The lowest microversion (also what a request without the header gets).
pub const MIN_VERSION: Version = Version(1, 0);
/// The microversion header.
pub const VERSION_HEADER: &str = "openstack-api-version";
/// Largest request body read (oslo's `max_request_body_size`).
pub const MAX_BODY_BYTES: usize = 114_688;

/// A Placement microversion `major.minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32);

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// Parses `microversion_parse`'s version strings: `X.Y` with decimal numbers.
fn parse_version(s: &str) -> Option<Version> {
    let (a, b) = s.split_once('.')?;
    let ok = |p: &str| !p.is_empty() && p.len() <= 9 && p.bytes().all(|c| c.is_ascii_digit());
    (ok(a) && ok(b)).then(|| Version(a.parse().unwrap_or(0), b.parse().unwrap_or(0)))
}

/// The version a request asks for (`microversion_parse.extract_version` semantics).
fn negotiate(headers: &HeaderMap) -> Result<Version, ApiError> {
    let mut asked = None;
    'outer: for value in headers.get_all(VERSION_HEADER) {
        let Ok(value) = value.to_str() else { continue };
        for entry in value.split(',') {
            let mut parts = entry.split_whitespace();
            if let (Some(service), Some(v)) = (parts.next(), parts.next())
                && service.eq_ignore_ascii_case("placement")
            {
                asked = Some(v.to_string());
                break 'outer;
            }
        }
    }
    let Some(asked) = asked else { return Ok(MIN_VERSION) };
    if asked.eq_ignore_ascii_case("latest") {
        return Ok(MAX_VERSION);
    }
    let v = parse_version(&asked).ok_or_else(|| {
        ApiError::bad_request(format!(
            "Invalid microversion: invalid version string: {asked}; a version is two decimal numbers separated by a dot"
        ))
    })?;
    if v < MIN_VERSION || v > MAX_VERSION {
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            format!("Invalid microversion: Unacceptable version header: {asked}"),
        )
        .with_version_range());
    }
    Ok(v)
}

/// Who may call the Placement API (besides `GET /`, which needs no token).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Placement's default: every call needs the admin role (noauth2 token `admin`).
    #[default]
    AdminOnly,
    /// Any authenticated caller may call everything: for clients that cannot choose their
    /// token, such as the `openstack` CLI with `auth_type: none` (it sends `notused`).
    Authenticated,
}

/// Shared by every handler.
#[derive(Clone)]
pub struct PlacementState {
    store: Arc<dyn PlacementStore>,
    policy: Policy,
}

impl std::fmt::Debug for PlacementState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlacementState").field("store", &self.store.describe()).finish()
    }
}

/// One request as the handlers see it.
pub struct Ctx {
    /// The negotiated microversion.
    pub version: Version,
    /// Whether the caller has the admin role.
    pub admin: bool,
    /// The request headers.
    pub headers: HeaderMap,
    /// The query string parameters, in order, decoded.
    pub query: Vec<(String, String)>,
    /// The raw body.
    pub body: Bytes,
    /// The store.
    pub store: Arc<dyn PlacementStore>,
}

impl Ctx {
    /// Whether the request's microversion is at least `major.minor`.
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        self.version >= Version(major, minor)
    }

    /// The store as a `dyn PlacementStore`.
    pub fn store(&self) -> &dyn PlacementStore {
        self.store.as_ref()
    }

    /// Every value of query parameter `key`.
    pub fn query_all(&self, key: &str) -> Vec<&str> {
        self.query.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
    }

    /// The last value of query parameter `key` (webob's `req.GET[key]`).
    pub fn query_one(&self, key: &str) -> Option<&str> {
        self.query.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Placement's `check_accept('application/json')`: an explicit `Accept` that does not
    /// allow JSON is a 406.
    pub fn accept_json(&self) -> Result<(), ApiError> {
        if let Some(a) = self.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok())
            && !a.trim().is_empty()
            && error::accept_q(a, "application/json") <= 0.0
        {
            return Err(ApiError::new(StatusCode::NOT_ACCEPTABLE, "Only application/json is provided"));
        }
        Ok(())
    }

    /// Placement's `require_content('application/json')`.
    pub fn require_json(&self) -> Result<(), ApiError> {
        let ct = self.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let base = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if base != "application/json" {
            let shown = if base.is_empty() { "None".to_string() } else { base };
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("The media type {shown} is not supported, use application/json"),
            ));
        }
        Ok(())
    }

    /// Placement's default policy: every call but the version document needs the admin role.
    pub fn admin_only(&self) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::new(StatusCode::FORBIDDEN, "Policy does not allow this action to be performed."))
        }
    }

    /// The body as JSON validated against `schema` (Placement's `extract_json`).
    pub fn json(&self, schema: &Value) -> Result<Value, ApiError> {
        let v: Value =
            serde_json::from_slice(&self.body).map_err(|e| ApiError::bad_request(format!("Malformed JSON: {e}")))?;
        schema::validate(&v, schema).map_err(|e| ApiError::bad_request(format!("JSON does not validate: {e}")))?;
        Ok(v)
    }
}

/// A successful response.
#[derive(Debug, Default)]
pub struct Reply {
    /// The status (200 when not set).
    pub status: Option<StatusCode>,
    /// A JSON body, or none.
    pub body: Option<Value>,
    /// `Location`.
    pub location: Option<String>,
    /// `Last-Modified` (with `Cache-Control: no-cache`), set by handlers from 1.15.
    pub last_modified: Option<SystemTime>,
}

impl Reply {
    /// 200 with a JSON body.
    pub fn json(body: Value) -> Self {
        Reply { body: Some(body), ..Default::default() }
    }

    /// A body-less reply with `status`.
    pub fn empty(status: StatusCode) -> Self {
        Reply { status: Some(status), ..Default::default() }
    }

    /// Adds `Last-Modified: now` and `Cache-Control: no-cache` when the version is 1.15+.
    pub fn cached(mut self, ctx: &Ctx) -> Self {
        if ctx.at_least(1, 15) {
            self.last_modified = Some(SystemTime::now());
        }
        self
    }
}

/// The route a path names, with its path parameters.
#[derive(Debug, Clone, PartialEq)]
enum Route {
    Root,
    ResourceClasses,
    ResourceClass(String),
    ResourceProviders,
    ResourceProvider(String),
    Inventories(String),
    Inventory(String, String),
    ProviderUsages(String),
    ProviderAggregates(String),
    ProviderAllocations(String),
    ProviderTraits(String),
    Allocations,
    Allocation(String),
    AllocationCandidates,
    Traits,
    Trait(String),
    Usages,
    Reshaper,
}

impl Route {
    fn parse(path: &str) -> Option<Route> {
        if path.is_empty() || path == "/" {
            return Some(Route::Root);
        }
        let rest = path.strip_prefix('/')?;
        let seg: Vec<&str> = rest.split('/').collect();
        if seg.iter().any(|s| s.is_empty()) {
            return None;
        }
        let s = |i: usize| seg[i].to_string();
        Some(match seg.as_slice() {
            ["resource_classes"] => Route::ResourceClasses,
            ["resource_classes", _] => Route::ResourceClass(s(1)),
            ["resource_providers"] => Route::ResourceProviders,
            ["resource_providers", _] => Route::ResourceProvider(s(1)),
            ["resource_providers", _, "inventories"] => Route::Inventories(s(1)),
            ["resource_providers", _, "inventories", _] => Route::Inventory(s(1), s(3)),
            ["resource_providers", _, "usages"] => Route::ProviderUsages(s(1)),
            ["resource_providers", _, "aggregates"] => Route::ProviderAggregates(s(1)),
            ["resource_providers", _, "allocations"] => Route::ProviderAllocations(s(1)),
            ["resource_providers", _, "traits"] => Route::ProviderTraits(s(1)),
            ["allocations"] => Route::Allocations,
            ["allocations", _] => Route::Allocation(s(1)),
            ["allocation_candidates"] => Route::AllocationCandidates,
            ["traits"] => Route::Traits,
            ["traits", _] => Route::Trait(s(1)),
            ["usages"] => Route::Usages,
            ["reshaper"] => Route::Reshaper,
            _ => return None,
        })
    }

    /// The methods the route serves, in Placement's declaration order (for `Allow`).
    fn methods(&self) -> &'static [&'static str] {
        match self {
            Route::Root => &["GET"],
            Route::ResourceClasses | Route::ResourceProviders => &["GET", "POST"],
            Route::ResourceClass(_) | Route::Trait(_) => &["GET", "PUT", "DELETE"],
            Route::ResourceProvider(_) => &["GET", "DELETE", "PUT"],
            Route::Inventories(_) => &["GET", "POST", "PUT", "DELETE"],
            Route::Inventory(..) | Route::Allocation(_) | Route::ProviderTraits(_) => &["GET", "PUT", "DELETE"],
            Route::ProviderUsages(_)
            | Route::ProviderAllocations(_)
            | Route::AllocationCandidates
            | Route::Traits
            | Route::Usages => &["GET"],
            Route::ProviderAggregates(_) => &["GET", "PUT"],
            Route::Allocations | Route::Reshaper => &["POST"],
        }
    }
}

/// 404 for a handler that does not exist at the requested microversion.
fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "The resource could not be found.")
}

/// Requires microversion `major.minor` for a handler (Placement's `version_handler`).
pub fn since(ctx: &Ctx, major: u32, minor: u32) -> Result<(), ApiError> {
    if ctx.at_least(major, minor) { Ok(()) } else { Err(not_found()) }
}

async fn handle(route: Route, method: &Method, ctx: Ctx) -> ApiResult {
    use Route as R;
    match (route, method.as_str()) {
        (R::Root, "GET") => Ok(root(&ctx)),
        (R::ResourceProviders, "GET") => providers::list(&ctx).await,
        (R::ResourceProviders, "POST") => providers::create(&ctx).await,
        (R::ResourceProvider(id), "GET") => providers::show(&ctx, &id).await,
        (R::ResourceProvider(id), "PUT") => providers::update(&ctx, &id).await,
        (R::ResourceProvider(id), "DELETE") => providers::delete(&ctx, &id).await,
        (R::Inventories(id), "GET") => inventories::list(&ctx, &id).await,
        (R::Inventories(id), "POST") => inventories::create(&ctx, &id).await,
        (R::Inventories(id), "PUT") => inventories::set_all(&ctx, &id).await,
        (R::Inventories(id), "DELETE") => inventories::delete_all(&ctx, &id).await,
        (R::Inventory(id, rc), "GET") => inventories::show(&ctx, &id, &rc).await,
        (R::Inventory(id, rc), "PUT") => inventories::update(&ctx, &id, &rc).await,
        (R::Inventory(id, rc), "DELETE") => inventories::delete(&ctx, &id, &rc).await,
        (R::ProviderUsages(id), "GET") => usages::provider(&ctx, &id).await,
        (R::Usages, "GET") => usages::total(&ctx).await,
        (R::ProviderAggregates(id), "GET") => aggregates::get(&ctx, &id).await,
        (R::ProviderAggregates(id), "PUT") => aggregates::set(&ctx, &id).await,
        (R::ResourceClasses, "GET") => classes::list(&ctx).await,
        (R::ResourceClasses, "POST") => classes::create(&ctx).await,
        (R::ResourceClass(name), "GET") => classes::show(&ctx, &name).await,
        (R::ResourceClass(name), "PUT") => classes::update(&ctx, &name).await,
        (R::ResourceClass(name), "DELETE") => classes::delete(&ctx, &name).await,
        (R::Traits, "GET") => traits::list(&ctx).await,
        (R::Trait(name), "GET") => traits::show(&ctx, &name).await,
        (R::Trait(name), "PUT") => traits::put(&ctx, &name).await,
        (R::Trait(name), "DELETE") => traits::delete(&ctx, &name).await,
        (R::ProviderTraits(id), "GET") => traits::provider_list(&ctx, &id).await,
        (R::ProviderTraits(id), "PUT") => traits::provider_set(&ctx, &id).await,
        (R::ProviderTraits(id), "DELETE") => traits::provider_delete(&ctx, &id).await,
        (R::ProviderAllocations(id), "GET") => allocations::for_provider(&ctx, &id).await,
        (R::Allocations, "POST") => allocations::post(&ctx).await,
        (R::Allocation(c), "GET") => allocations::for_consumer(&ctx, &c).await,
        (R::Allocation(c), "PUT") => allocations::put(&ctx, &c).await,
        (R::Allocation(c), "DELETE") => allocations::delete(&ctx, &c).await,
        (R::AllocationCandidates, "GET") => candidates::list(&ctx).await,
        (R::Reshaper, "POST") => {
            since(&ctx, 1, 30)?;
            ctx.admin_only()?;
            Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "POST /reshaper is not supported by unicell: moving inventories and allocations between \
                 providers atomically is not part of its contract",
            ))
        }
        _ => {
            Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "The method specified is not allowed for this resource."))
        }
    }
}

fn root(ctx: &Ctx) -> Reply {
    let body = serde_json::json!({"versions": [{
        "id": format!("v{MIN_VERSION}"),
        "max_version": MAX_VERSION.to_string(),
        "min_version": MIN_VERSION.to_string(),
        "status": "CURRENT",
        "links": [{"rel": "self", "href": ""}],
    }]});
    Reply::json(body).cached(ctx)
}

fn decode_query(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|q| url::form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
        .unwrap_or_default()
}

async fn dispatch(State(state): State<PlacementState>, req: Request) -> Response {
    let request_id = format!("req-{}", uuid::Uuid::new_v4());
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let method = parts.method;
    let path = parts.uri.path().to_string();
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let render = |e: ApiError, version: Option<Version>| e.into_response_for(&accept, version, &request_id);

    // noauth2: any token; `admin` (user `admin`) is the admin role.
    let admin = if path == "/" || path.is_empty() {
        false
    } else {
        match headers.get("x-auth-token").and_then(|v| v.to_str().ok()).map(str::trim) {
            None | Some("") => {
                return render(
                    ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "This server could not verify that you are authorized to access the document you requested.",
                    ),
                    None,
                );
            }
            Some(token) => state.policy == Policy::Authenticated || token.split(':').next() == Some("admin"),
        }
    };
    let version = match negotiate(&headers) {
        Ok(v) => v,
        Err(e) => return render(e, None),
    };
    let with_version = |mut resp: Response, ok: bool| {
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&format!("placement {version}")) {
            h.insert(HeaderName::from_static(VERSION_HEADER), v);
        }
        if ok {
            h.insert(header::VARY, HeaderValue::from_static(VERSION_HEADER));
        }
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            h.insert(HeaderName::from_static("x-openstack-request-id"), v);
        }
        resp
    };
    let fail = |e: ApiError| with_version(render(e, Some(version)), false);

    match headers.get(header::CONTENT_LENGTH).map(|v| v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok())) {
        Some(None) => return fail(ApiError::bad_request("content-length header must be an integer")),
        Some(Some(n)) if n > 0 && headers.get(header::CONTENT_TYPE).is_none_or(|v| v.is_empty()) => {
            return fail(ApiError::bad_request("content-type header required when content-length > 0"));
        }
        _ => {}
    }
    let Some(route) = Route::parse(&path) else {
        return fail(not_found());
    };
    if !route.methods().contains(&method.as_str()) {
        let allow = route.methods().join(", ");
        let mut resp = fail(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("The method {method} is not allowed for this resource."),
        ));
        if let Ok(v) = HeaderValue::from_str(&allow) {
            resp.headers_mut().insert(header::ALLOW, v);
        }
        return resp;
    }
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return fail(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Request is too large: the limit is {MAX_BODY_BYTES} bytes."),
            ));
        }
    };
    // webob makes `Location` absolute with the request's host.
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).map(|h| format!("http://{h}"));
    let ctx = Ctx { version, admin, headers, query: decode_query(parts.uri.query()), body, store: state.store.clone() };
    let started = std::time::Instant::now();
    let result = handle(route, &method, ctx).await;
    let resp = match result {
        Ok(reply) => with_version(reply_to_response(reply, host.as_deref()), true),
        Err(e) => fail(e),
    };
    tracing::debug!(target: "unicell::api::placement", %method, path = %path, status = resp.status().as_u16(),
        elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "request");
    resp
}

fn reply_to_response(reply: Reply, base: Option<&str>) -> Response {
    let status = reply.status.unwrap_or(StatusCode::OK);
    let mut resp = match reply.body {
        Some(v) => {
            let mut r = (status, serde_json::to_vec(&v).unwrap_or_default()).into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        None => {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = status;
            r
        }
    };
    let h = resp.headers_mut();
    if let Some(loc) = reply.location
        && let Ok(v) = HeaderValue::from_str(&format!("{}{loc}", base.unwrap_or_default()))
    {
        h.insert(header::LOCATION, v);
    }
    if let Some(t) = reply.last_modified
        && let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(t))
    {
        h.insert(header::LAST_MODIFIED, v);
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    resp
}

/// The Placement API's router over `store`: every path, answered by one dispatcher so that
/// authentication, microversions, routing errors and 405s come out as Placement's.
pub fn router_for(store: Arc<dyn PlacementStore>, policy: Policy) -> Router {
    Router::new().fallback(dispatch).with_state(PlacementState { store, policy })
}

/// The Placement API's router for a server's state (its store must keep Placement's state;
/// see [`ApiState::with_placement`](super::ApiState::with_placement)).
pub fn router(state: super::ApiState) -> Option<Router> {
    let policy = state.config().placement_policy;
    state.placement().map(|s| router_for(s.clone(), policy))
}
