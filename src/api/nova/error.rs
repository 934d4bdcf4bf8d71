//! Nova's error body: `{"<faultName>": {"code": N, "message": "..."}}`, the name following
//! the status (`nova.api.openstack.wsgi.Fault`).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::api::auth::AuthError;
use crate::api::error::BodyError;
use crate::api::microversion::VersionError;
use crate::error::{Error, Kind};

/// An error answered in Nova's format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NovaError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The message shown to the client.
    pub message: String,
}

impl NovaError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        NovaError { status, message: message.into() }
    }

    /// 400 badRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 403 forbidden.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// 404 itemNotFound.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 409 conflictingRequest.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// Nova's policy failure message.
    pub fn policy(rule: &str) -> Self {
        Self::forbidden(format!("Policy doesn't allow {rule} to be performed."))
    }

    /// The fault name Nova uses for this status.
    pub fn fault_name(&self) -> &'static str {
        match self.status.as_u16() {
            400 => "badRequest",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "itemNotFound",
            405 => "badMethod",
            409 => "conflictingRequest",
            413 | 429 => "overLimit",
            415 => "badMediaType",
            501 => "notImplemented",
            503 => "serviceUnavailable",
            _ => "computeFault",
        }
    }
}

impl IntoResponse for NovaError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            self.fault_name(): { "code": self.status.as_u16(), "message": self.message }
        });
        (self.status, Json(body)).into_response()
    }
}

impl From<VersionError> for NovaError {
    fn from(e: VersionError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
        NovaError::new(status, e.to_string())
    }
}

impl From<AuthError> for NovaError {
    fn from(e: AuthError) -> Self {
        NovaError::new(StatusCode::UNAUTHORIZED, e.to_string())
    }
}

impl From<BodyError> for NovaError {
    fn from(e: BodyError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
        let message = match &e {
            // Nova's own wording.
            BodyError::UnsupportedMediaType { .. } => "Unsupported Content-Type".to_string(),
            _ => e.to_string(),
        };
        NovaError::new(status, message)
    }
}

impl From<Error> for NovaError {
    /// Store errors: missing objects are 404 (a missing marker 400, as Nova), bad input
    /// 400, conflicts 409, an unreachable store 503; anything else is a 500 whose message
    /// says the store failed, the details going to the log only.
    fn from(e: Error) -> Self {
        match &e {
            Error::NotFound { kind: Kind::Marker, id } => NovaError::bad_request(format!("marker [{id}] not found")),
            Error::NotFound { kind: Kind::Instance, id } => {
                NovaError::not_found(format!("Instance {id} could not be found."))
            }
            Error::NotFound { kind: Kind::Flavor, id } => {
                NovaError::not_found(format!("Flavor {id} could not be found."))
            }
            Error::NotFound { kind: Kind::ServerGroup, id } => {
                NovaError::not_found(format!("Instance group {id} could not be found."))
            }
            Error::NotFound { .. } => NovaError::not_found(e.to_string()),
            Error::InvalidInput { .. } => NovaError::bad_request(e.to_string()),
            Error::AlreadyExists { .. } | Error::Conflict(_) => NovaError::conflict(e.to_string()),
            Error::Unavailable { .. } | Error::Timeout { .. } => {
                tracing::warn!(target: "unicell::api", error = %e, "store unavailable");
                NovaError::new(StatusCode::SERVICE_UNAVAILABLE, format!("The store is unavailable, retry later: {e}"))
            }
            _ => {
                tracing::error!(target: "unicell::api", error = %e, "store failure");
                NovaError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Unexpected API Error: the store failed; see the API log.",
                )
            }
        }
    }
}

/// Short for handler results.
pub type NovaResult<T> = Result<T, NovaError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_status() {
        assert_eq!(NovaError::not_found("x").fault_name(), "itemNotFound");
        assert_eq!(NovaError::new(StatusCode::NOT_ACCEPTABLE, "x").fault_name(), "computeFault");
        assert_eq!(NovaError::new(StatusCode::PAYLOAD_TOO_LARGE, "x").fault_name(), "overLimit");
        let m: NovaError = Error::not_found(Kind::Marker, "abc").into();
        assert_eq!((m.status.as_u16(), m.message.as_str()), (400, "marker [abc] not found"));
    }
}
