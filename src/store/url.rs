//! Store URLs that never leak their credentials.

use std::fmt;

use crate::error::{Error, Result};

/// A parsed store URL. `Display` and `Debug` show it with any password replaced by `***`,
/// so a `StoreUrl` can be logged, put in an error or a benchmark report safely; the
/// original is available only through [`StoreUrl::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl {
    url: url::Url,
}

impl StoreUrl {
    /// Parses `s`. A URL that does not parse is `InvalidInput`, and the message repeats the
    /// input only with its password masked.
    pub fn parse(s: &str) -> Result<Self> {
        let url = url::Url::parse(s)
            .map_err(|e| Error::invalid("store url", format!("{:?} is not a URL: {e}", redact_str(s))))?;
        Ok(StoreUrl { url })
    }

    /// The scheme (`memory`, `redis`, ...).
    pub fn scheme(&self) -> &str {
        self.url.scheme()
    }

    /// The parsed URL, credentials included. Only for handing to a client library.
    pub fn expose(&self) -> &url::Url {
        &self.url
    }

    /// A query parameter's value.
    pub fn param(&self, key: &str) -> Option<String> {
        self.url.query_pairs().find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
    }

    /// The URL with the password masked.
    pub fn redacted(&self) -> String {
        let mut u = self.url.clone();
        if u.password().is_some() {
            let _ = u.set_password(Some("***"));
        }
        let mut pairs: Vec<(String, String)> = u.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        if pairs.iter().any(|(k, _)| is_secret_key(k)) {
            for (k, v) in pairs.iter_mut() {
                if is_secret_key(k) {
                    *v = "***".to_string();
                }
            }
            u.query_pairs_mut().clear().extend_pairs(pairs);
        }
        u.to_string()
    }
}

fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    k.contains("password") || k.contains("secret") || k.contains("token")
}

/// Best-effort masking for text that did not even parse as a URL: hides what sits between
/// `://user:` and `@`.
pub(crate) fn redact_str(s: &str) -> String {
    if let Some(scheme_end) = s.find("://") {
        let rest = &s[scheme_end + 3..];
        if let Some(at) = rest.rfind('@') {
            let userinfo = &rest[..at];
            if let Some(colon) = userinfo.find(':') {
                return format!("{}{}:***{}", &s[..scheme_end + 3], &userinfo[..colon], &rest[at..]);
            }
        }
    }
    s.to_string()
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({})", self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_print() {
        let u = StoreUrl::parse("mysql://root:hunter2@127.0.0.1:3306/nova?x=1&password=s3cret").unwrap();
        for shown in [u.to_string(), format!("{u:?}"), u.redacted()] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("root"), "{shown}");
        }
        assert_eq!(u.expose().password(), Some("hunter2"));
    }

    #[test]
    fn unparsable_urls_are_masked_in_errors() {
        let e = StoreUrl::parse("redis://u:hunter2@[bad").unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
