//! Pieces both APIs share for reading requests: the body (size limit, media type, JSON)
//! and the errors of the server itself.
//!
//! Each API renders these in its own error format (Nova: `{"badRequest": {...}}`,
//! Placement: `{"errors": [...]}`); nothing here builds a response.

use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;

/// Why a request body was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Larger than the configured limit (413).
    #[error("Request is too large: the body exceeds {limit} bytes.")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A `Content-Type` the API does not read (415).
    #[error("Unsupported Content-Type")]
    UnsupportedMediaType {
        /// The media type sent (control characters escaped).
        content_type: String,
    },
    /// Not JSON, or not the JSON the API expects (400). `reason` says what was wrong,
    /// without repeating the body.
    #[error("Malformed request body: {reason}")]
    Malformed {
        /// What was wrong.
        reason: String,
    },
    /// The body could not be read from the connection (400).
    #[error("The request body could not be read: {reason}")]
    Unreadable {
        /// Why.
        reason: String,
    },
}

impl BodyError {
    /// The HTTP status this error maps to.
    pub fn status(&self) -> u16 {
        match self {
            BodyError::TooLarge { .. } => 413,
            BodyError::UnsupportedMediaType { .. } => 415,
            BodyError::Malformed { .. } | BodyError::Unreadable { .. } => 400,
        }
    }
}

/// Reads the whole body, refusing more than `limit` bytes without buffering them.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, BodyError> {
    match axum::body::to_bytes(body, limit).await {
        Ok(b) => Ok(b),
        Err(e) => {
            // `to_bytes` reports a limit hit as an error whose source is `LengthLimitError`.
            let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(s) = src {
                if s.is::<http_body_util::LengthLimitError>() {
                    return Err(BodyError::TooLarge { limit });
                }
                src = s.source();
            }
            Err(BodyError::Unreadable { reason: e.to_string() })
        }
    }
}

/// Checks the `Content-Type` against the JSON media types an API accepts. A missing header
/// (or `text/plain`, which some HTTP stacks send by default) is read as JSON, as Nova does
/// for clients that omit it.
pub fn check_json_media_type(headers: &HeaderMap, accepted: &[&str]) -> Result<(), BodyError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    let essence = text.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if essence.is_empty() || essence == "text/plain" || accepted.iter().any(|a| *a == essence) {
        return Ok(());
    }
    Err(BodyError::UnsupportedMediaType { content_type: text.escape_default().to_string() })
}

/// Parses a JSON document. The error names the line and column, never the content.
pub fn parse_json(bytes: &[u8]) -> Result<serde_json::Value, BodyError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(BodyError::Malformed { reason: "the body is empty".into() });
    }
    serde_json::from_slice(bytes).map_err(|e| BodyError::Malformed {
        reason: format!("cannot understand JSON ({} at line {} column {})", category(&e), e.line(), e.column()),
    })
}

fn category(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected data",
        serde_json::error::Category::Eof => "unexpected end of input",
    }
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server failed while running.
    #[error("the HTTP server on {addr} failed: {source}")]
    Serve {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A background task of the server failed or panicked.
    #[error("a server task failed: {0}")]
    Task(String),
    /// The store failed during start-up.
    #[error("store error during start-up: {0}")]
    Store(#[from] crate::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn media_types() {
        let mut h = HeaderMap::new();
        assert!(check_json_media_type(&h, &["application/json"]).is_ok());
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json; charset=UTF-8"));
        assert!(check_json_media_type(&h, &["application/json"]).is_ok());
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/xml"));
        assert_eq!(check_json_media_type(&h, &["application/json"]).unwrap_err().status(), 415);
    }

    #[test]
    fn json_errors_do_not_echo_the_body() {
        let e = parse_json(b"{\"secret\": ").unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(parse_json(b"  ").is_err());
        assert!(parse_json(b"{}").is_ok());
    }

    #[tokio::test]
    async fn body_limit() {
        let big = Body::from(vec![b'x'; 100]);
        assert_eq!(read_body(big, 10).await.unwrap_err(), BodyError::TooLarge { limit: 10 });
        assert_eq!(read_body(Body::from("abc"), 10).await.unwrap(), Bytes::from_static(b"abc"));
    }
}
