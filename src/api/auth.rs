//! Authentication as Nova's and Placement's functional tests run it (`noauth2`).
//!
//! The token in `X-Auth-Token` names the caller: `user:project` is `user` in `project`;
//! a token without `:` is a user whose project has the same name; the user `admin` is an
//! administrator (`admin` alone is the admin of project `admin`). No token is 401, except on
//! version documents, which each API serves before calling [`Caller::from_headers`].
//!
//! Tokens never reach logs: [`Caller`]'s `Debug` shows the user and project it resolved to,
//! and nothing here logs the header or puts it in an error.

use std::fmt;

use axum::http::HeaderMap;

/// The token header.
pub const AUTH_TOKEN_HEADER: &str = "x-auth-token";

/// Who is calling.
#[derive(Clone, PartialEq, Eq)]
pub struct Caller {
    /// The user id.
    pub user_id: String,
    /// The project the token is scoped to.
    pub project_id: String,
    /// Administrators pass every policy check (Nova's and Placement's admin rules).
    pub is_admin: bool,
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller")
            .field("user_id", &self.user_id)
            .field("project_id", &self.project_id)
            .field("is_admin", &self.is_admin)
            .finish()
    }
}

/// Why a request is not authenticated (401). The message never contains the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `X-Auth-Token` header.
    #[error("The request you have made requires authentication.")]
    Missing,
    /// A header that is empty, not visible ASCII, or longer than 255 characters per part.
    #[error("The X-Auth-Token header is malformed: noauth2 expects 'user' or 'user:project'.")]
    Malformed,
}

/// Longest user or project id accepted (Nova's and Placement's columns are 255 wide).
const MAX_ID: usize = 255;

impl Caller {
    /// Resolves the caller from the request's `X-Auth-Token`.
    pub fn from_headers(headers: &HeaderMap) -> Result<Caller, AuthError> {
        let value = headers.get(AUTH_TOKEN_HEADER).ok_or(AuthError::Missing)?;
        let token = value.to_str().map_err(|_| AuthError::Malformed)?.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let (user, project) = match token.split_once(':') {
            Some((u, p)) if !p.is_empty() => (u, p),
            Some((u, _)) => (u, u),
            None => (token, token),
        };
        let ok = |s: &str| !s.is_empty() && s.len() <= MAX_ID && s.chars().all(|c| !c.is_control());
        if !ok(user) || !ok(project) {
            return Err(AuthError::Malformed);
        }
        Ok(Caller { user_id: user.to_string(), project_id: project.to_string(), is_admin: user == "admin" })
    }

    /// Whether the caller may act on an object owned by `project_id` (Nova's default
    /// `project_reader_or_admin` / `project_member_or_admin` rules).
    pub fn owns(&self, project_id: &str) -> bool {
        self.is_admin || self.project_id == project_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn caller(token: Option<&'static str>) -> Result<Caller, AuthError> {
        let mut h = HeaderMap::new();
        if let Some(t) = token {
            h.insert(AUTH_TOKEN_HEADER, HeaderValue::from_static(t));
        }
        Caller::from_headers(&h)
    }

    #[test]
    fn noauth2_tokens() {
        let a = caller(Some("admin")).unwrap();
        assert!(a.is_admin);
        assert_eq!(a.project_id, "admin");
        let u = caller(Some("alice:proj1")).unwrap();
        assert!(!u.is_admin);
        assert_eq!((u.user_id.as_str(), u.project_id.as_str()), ("alice", "proj1"));
        assert!(u.owns("proj1") && !u.owns("proj2"));
        assert_eq!(caller(Some("notused")).unwrap().project_id, "notused");
        assert_eq!(caller(None), Err(AuthError::Missing));
        assert_eq!(caller(Some(":proj")), Err(AuthError::Malformed));
        assert!(caller(Some("admin:other")).unwrap().is_admin);
    }
}
