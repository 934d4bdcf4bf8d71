//! The Nova compute API v2.1 over the store.
//!
//! Paths, bodies, errors and microversions follow Nova's (`nova.api.openstack.compute`):
//! version documents (`GET /`, `GET /v2.1`, without a token), flavors, availability zones,
//! server groups and servers. Every response under `/v2.1/` carries the negotiated
//! microversion in `OpenStack-API-Version` and `X-OpenStack-Nova-API-Version` with
//! `Vary` on both; every error is in Nova's body format ([`NovaError`]).
//!
//! The identity version document at `/identity/v3` is there for the `openstack` CLI, which
//! checks the identity API version before some compute calls even with `auth_type: none`.

mod error;
mod flavors;
mod groups;
mod query;
mod servers;
mod view;
mod zones;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header::{HOST, VARY};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

pub use self::error::{NovaError, NovaResult};
use super::ApiState;
use super::auth::Caller;
use super::microversion::{Version, VersionRange};

/// The legacy microversion header Nova still reads and echoes.
pub const LEGACY_VERSION_HEADER: &str = "x-openstack-nova-api-version";

/// The microversions this API serves. The maximum is the highest version whose response
/// fields for the resources served here (servers, flavors, server groups, availability
/// zones) are produced exactly as Nova produces them, which is also the highest version
/// tempest's response schemas describe and the cap of openstacksdk's server resource.
pub const VERSIONS: VersionRange = VersionRange {
    service: "compute",
    legacy_header: Some(LEGACY_VERSION_HEADER),
    min: Version::new(2, 1),
    max: Version::new(2, 100),
};

/// Per-request context: who calls, at which microversion, and the URL prefix for links.
#[derive(Clone, Debug)]
pub struct NovaCtx {
    /// The caller.
    pub caller: Caller,
    /// The negotiated microversion.
    pub version: Version,
    /// `http://<Host>` of the request, for links.
    pub base: String,
}

impl NovaCtx {
    /// Whether the request's microversion is at least `major.minor`.
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        self.version >= Version::new(major, minor)
    }

    /// `http://host/v2.1/<collection>/<id>` and `http://host/<collection>/<id>`.
    pub fn links(&self, collection: &str, id: &str) -> serde_json::Value {
        json!([
            {"rel": "self", "href": format!("{}/v2.1/{collection}/{id}", self.base)},
            {"rel": "bookmark", "href": format!("{}/{collection}/{id}", self.base)},
        ])
    }
}

/// The Nova API's routes for one replica.
pub fn router(state: ApiState) -> Router {
    let versioned = Router::new()
        .route("/v2.1/flavors", get(flavors::index))
        .route("/v2.1/flavors/detail", get(flavors::detail))
        .route("/v2.1/flavors/{flavor_id}", get(flavors::show))
        .route("/v2.1/servers", get(servers::index).post(servers::create))
        .route("/v2.1/servers/detail", get(servers::detail))
        .route("/v2.1/servers/{server_id}", get(servers::show).delete(servers::delete))
        .route("/v2.1/os-availability-zone", get(zones::index))
        .route("/v2.1/os-availability-zone/detail", get(zones::detail))
        .route("/v2.1/os-server-groups", get(groups::index).post(groups::create))
        .route("/v2.1/os-server-groups/{group_id}", get(groups::show).delete(groups::delete))
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), context));
    Router::new()
        .route("/", get(versions))
        .route("/v2.1", get(version))
        .route("/v2.1/", get(version))
        .route("/identity/v3", get(identity_version))
        .route("/identity/v3/", get(identity_version))
        .merge(versioned)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    tracing::debug_span!(target: "unicell::api", "nova", method = %req.method(), path = %req.uri().path())
                })
                .on_request(())
                .on_failure(()),
        )
        .with_state(state)
}

/// Authenticates, negotiates the microversion, runs the handler and echoes the version.
async fn context(State(state): State<ApiState>, mut req: Request, next: Next) -> Response {
    let caller = match Caller::from_headers(req.headers()) {
        Ok(c) => c,
        Err(e) => return NovaError::from(e).into_response(),
    };
    let version = match VERSIONS.negotiate(req.headers()) {
        Ok(v) => v,
        Err(e) => return NovaError::from(e).into_response(),
    };
    let base = base_url(req.headers(), &state);
    req.extensions_mut().insert(NovaCtx { caller, version, base });
    let mut resp = next.run(req).await;
    echo_version(resp.headers_mut(), version);
    resp
}

fn echo_version(headers: &mut HeaderMap, version: Version) {
    if let Ok(v) = HeaderValue::from_str(&format!("compute {version}")) {
        headers.insert(HeaderName::from_static(super::microversion::API_VERSION_HEADER), v);
    }
    if let Ok(v) = HeaderValue::from_str(&version.to_string()) {
        headers.insert(HeaderName::from_static(LEGACY_VERSION_HEADER), v);
    }
    headers.append(VARY, HeaderValue::from_static("OpenStack-API-Version"));
    headers.append(VARY, HeaderValue::from_static("X-OpenStack-Nova-API-Version"));
}

/// `http://<Host>`; a missing or malformed Host falls back to the listener's address.
fn base_url(headers: &HeaderMap, state: &ApiState) -> String {
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty() && h.len() <= 255 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| state.config().nova_listen.to_string());
    format!("http://{host}")
}

fn version_entry(base: &str) -> serde_json::Value {
    json!({
        "id": "v2.1",
        "status": "CURRENT",
        "version": VERSIONS.max.to_string(),
        "min_version": VERSIONS.min.to_string(),
        "updated": "2013-07-23T11:33:21Z",
        "links": [{"rel": "self", "href": format!("{base}/v2.1/")}],
    })
}

/// `GET /`: the versions this endpoint serves (only v2.1).
async fn versions(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let base = base_url(&headers, &state);
    axum::Json(json!({ "versions": [version_entry(&base)] })).into_response()
}

/// `GET /v2.1` and `/v2.1/`: the v2.1 version document.
async fn version(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let base = base_url(&headers, &state);
    let mut v = version_entry(&base);
    v["links"] = json!([
        {"rel": "self", "href": format!("{base}/v2.1/")},
        {"rel": "describedby", "type": "text/html", "href": "http://docs.openstack.org/"},
    ]);
    v["media-types"] = json!([
        {"base": "application/json", "type": "application/vnd.openstack.compute+json;version=2.1"}
    ]);
    axum::Json(json!({ "version": v })).into_response()
}

/// `GET /identity/v3`: an identity v3 version document, so that the `openstack` CLI with
/// `auth_type: none` finds the identity version it checks for.
async fn identity_version(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let base = base_url(&headers, &state);
    axum::Json(json!({
        "version": {
            "id": "v3.14",
            "status": "stable",
            "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": format!("{base}/identity/v3/")}],
            "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}],
        }
    }))
    .into_response()
}

async fn not_found() -> NovaError {
    NovaError::not_found("The resource could not be found.")
}

async fn method_not_allowed() -> NovaError {
    NovaError::new(StatusCode::METHOD_NOT_ALLOWED, "The method specified is not allowed for this resource.")
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!(target: "unicell::api", "a request handler panicked");
    NovaError::new(StatusCode::INTERNAL_SERVER_ERROR, "Unexpected API Error: see the API log.").into_response()
}
