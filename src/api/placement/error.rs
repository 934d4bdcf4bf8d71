//! Placement's error responses.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::json;

use super::{MAX_VERSION, MIN_VERSION, Version};
use crate::error::{Conflict, Error, Kind};

/// `placement.undefined_code`, the default error code.
pub const DEFAULT: &str = "placement.undefined_code";
/// `placement.inventory.inuse`.
pub const INVENTORY_INUSE: &str = "placement.inventory.inuse";
/// `placement.concurrent_update`.
pub const CONCURRENT_UPDATE: &str = "placement.concurrent_update";
/// `placement.duplicate_name`.
pub const DUPLICATE_NAME: &str = "placement.duplicate_name";
/// `placement.resource_provider.inuse`.
pub const PROVIDER_IN_USE: &str = "placement.resource_provider.inuse";
/// `placement.resource_provider.cannot_delete_parent`.
pub const PROVIDER_CANNOT_DELETE_PARENT: &str = "placement.resource_provider.cannot_delete_parent";
/// `placement.query.duplicate_key`.
pub const ILLEGAL_DUPLICATE_QUERYPARAM: &str = "placement.query.duplicate_key";
/// `placement.query.bad_value`.
pub const QUERYPARAM_BAD_VALUE: &str = "placement.query.bad_value";

/// An error response: status, detail, and Placement's error code.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The `detail` text.
    pub detail: String,
    /// The `code` (shown from 1.23); `placement.undefined_code` when `None`.
    pub code: Option<&'static str>,
    /// Add `min_version`/`max_version` to the body (406 on a bad microversion).
    pub version_range: bool,
}

/// What every handler returns.
pub type ApiResult = Result<super::Reply, ApiError>;

impl ApiError {
    /// An error with `status` and `detail`.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        ApiError { status, detail: detail.into(), code: None, version_range: false }
    }

    /// 400.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }

    /// 409.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, detail)
    }

    /// Sets the error code.
    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub(super) fn with_version_range(mut self) -> Self {
        self.version_range = true;
        self
    }

    /// A store failure that no handler-specific mapping caught: 404 for a missing object,
    /// 409 for conflicts and capacity, 400 for invalid input, 503 when the store is down.
    pub fn from_store(e: Error) -> Self {
        match &e {
            Error::NotFound { .. } => Self::not_found(e.to_string()),
            Error::AlreadyExists { .. } => Self::conflict(e.to_string()),
            Error::Capacity { .. } => Self::conflict(e.to_string()),
            Error::Conflict(c) => {
                let err = Self::conflict(e.to_string());
                match c {
                    Conflict::Generation { .. }
                    | Conflict::ProviderGeneration { .. }
                    | Conflict::ConsumerGeneration { .. } => err.code(CONCURRENT_UPDATE),
                    Conflict::DuplicateName { .. } => err.code(DUPLICATE_NAME),
                    Conflict::InventoryInUse { .. } => err.code(INVENTORY_INUSE),
                    Conflict::ProviderInUse { .. } => err.code(PROVIDER_IN_USE),
                    _ => err,
                }
            }
            Error::InvalidInput { .. } => Self::bad_request(e.to_string()),
            Error::Unavailable { .. } | Error::Timeout { .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, format!("The store is unavailable: {e}"))
            }
            _ => {
                tracing::warn!(target: "unicell::api::placement", error = %e, "store error");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, format!("Store error: {e}"))
            }
        }
    }

    /// Whether the store error is a missing object of `kind`.
    pub fn is_not_found(e: &Error, kind: Kind) -> bool {
        matches!(e, Error::NotFound { kind: k, .. } if *k == kind)
    }

    /// The response, in the format webob picks from `Accept` (JSON, HTML or plain text).
    pub fn into_response_for(self, accept: &str, version: Option<Version>, request_id: &str) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let status_line = format!("{} {}", self.status.as_u16(), title);
        let q_json = accept_q(accept, "application/json");
        let q_html = explicit_q(accept, "text/html");
        let (content_type, body) = if q_html > 0.0 && q_html >= q_json {
            let detail = html_escape(&self.detail);
            (
                "text/html; charset=UTF-8",
                format!(
                    "<html>\n <head>\n  <title>{status_line}</title>\n </head>\n <body>\n  <h1>{status_line}</h1>\n  {detail}<br /><br />\n\n\n\n </body>\n</html>"
                ),
            )
        } else if q_json > 0.0 {
            let mut e = json!({"status": self.status.as_u16(), "title": title, "detail": self.detail,
                "request_id": request_id});
            if version.is_some_and(|v| v >= Version(1, 23)) {
                e["code"] = json!(self.code.unwrap_or(DEFAULT));
            }
            if self.version_range {
                e["max_version"] = json!(MAX_VERSION.to_string());
                e["min_version"] = json!(MIN_VERSION.to_string());
            }
            ("application/json", json!({"errors": [e]}).to_string())
        } else {
            ("text/plain; charset=UTF-8", format!("{status_line}\n\n{}\n\n", self.detail))
        };
        let mut resp = Response::new(Body::from(body));
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        resp
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The `q` an `Accept` header gives `media` (wildcards included); 1.0 when the header is
/// empty, 0.0 when not acceptable.
pub fn accept_q(accept: &str, media: &str) -> f32 {
    if accept.trim().is_empty() {
        return 0.0;
    }
    let (ty, sub) = media.split_once('/').unwrap_or((media, ""));
    let mut best: Option<(u8, f32)> = None;
    for (range, q) in ranges(accept) {
        let (rt, rs) = range.split_once('/').unwrap_or((range.as_str(), "*"));
        let specificity = match (rt, rs) {
            (t, s) if t.eq_ignore_ascii_case(ty) && s.eq_ignore_ascii_case(sub) => 3,
            (t, "*") if t.eq_ignore_ascii_case(ty) => 2,
            ("*", "*") => 1,
            _ => continue,
        };
        if best.is_none_or(|(s, _)| specificity > s) {
            best = Some((specificity, q));
        }
    }
    best.map_or(0.0, |(_, q)| q)
}

/// The `q` of `media` when the header names it exactly (not through a wildcard).
fn explicit_q(accept: &str, media: &str) -> f32 {
    ranges(accept).into_iter().find(|(r, _)| r.eq_ignore_ascii_case(media)).map_or(0.0, |(_, q)| q)
}

fn ranges(accept: &str) -> Vec<(String, f32)> {
    accept
        .split(',')
        .filter_map(|part| {
            let mut it = part.split(';');
            let range = it.next()?.trim().to_string();
            if range.is_empty() {
                return None;
            }
            let mut q = 1.0;
            for p in it {
                if let Some(v) = p.trim().strip_prefix("q=") {
                    q = v.trim().parse().unwrap_or(0.0);
                }
            }
            Some((range, q))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_matching() {
        assert_eq!(accept_q("application/json", "application/json"), 1.0);
        assert_eq!(accept_q("text/plain", "application/json"), 0.0);
        assert_eq!(
            accept_q("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "application/json"),
            0.8
        );
        assert_eq!(accept_q("text/html,application/xhtml+xml,application/xml;q=0.9", "application/json"), 0.0);
        assert_eq!(explicit_q("*/*", "text/html"), 0.0);
    }
}
