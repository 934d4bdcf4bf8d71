//! Microversion negotiation, shared by the Nova and Placement APIs.
//!
//! A client asks for a version with `OpenStack-API-Version: <service> X.Y` (several
//! services may share one header, comma-separated, and the header may repeat) or, for
//! Nova only, with the legacy `X-OpenStack-Nova-API-Version: X.Y`; the first one wins, as in
//! `microversion_parse.get_version`. `latest` means the maximum. No header means the
//! minimum. A string that is not `MajorNum.MinorNum` (no leading zeros) is a 400; a version
//! outside `[min, max]` is a 406, with the messages Nova and Placement use.

use std::fmt;
use std::str::FromStr;

use axum::http::HeaderMap;

/// The standard microversion header.
pub const API_VERSION_HEADER: &str = "openstack-api-version";

/// A microversion `major.minor`. Orders numerically (2.10 > 2.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
}

impl Version {
    /// `major.minor`.
    pub const fn new(major: u32, minor: u32) -> Self {
        Version { major, minor }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl FromStr for Version {
    type Err = VersionError;

    /// Parses `X.Y` with Nova's rule (`^([1-9]\d*)\.([1-9]\d*|0)$`).
    fn from_str(s: &str) -> Result<Self, VersionError> {
        let invalid = || VersionError::Invalid { version: s.to_string() };
        let (ma, mi) = s.split_once('.').ok_or_else(invalid)?;
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ma) || !digits(mi) || ma.starts_with('0') || (mi.len() > 1 && mi.starts_with('0')) {
            return Err(invalid());
        }
        let major = ma.parse().map_err(|_| invalid())?;
        let minor = mi.parse().map_err(|_| invalid())?;
        Ok(Version { major, minor })
    }
}

/// Why a requested microversion was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// Not `MajorNum.MinorNum` (400).
    #[error("API Version String {version} is of invalid format. Must be of format MajorNum.MinorNum.")]
    Invalid {
        /// What the client sent (control characters removed).
        version: String,
    },
    /// Outside the supported range (406).
    #[error("Version {requested} is not supported by the API. Minimum is {min} and maximum is {max}.")]
    NotAcceptable {
        /// What the client asked for.
        requested: Version,
        /// The minimum.
        min: Version,
        /// The maximum.
        max: Version,
    },
}

impl VersionError {
    /// The HTTP status this error maps to (400 or 406).
    pub fn status(&self) -> u16 {
        match self {
            VersionError::Invalid { .. } => 400,
            VersionError::NotAcceptable { .. } => 406,
        }
    }
}

/// What one API supports and how its clients name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionRange {
    /// Service type in `OpenStack-API-Version` (`compute`, `placement`).
    pub service: &'static str,
    /// A legacy header that also carries the version (Nova: `X-OpenStack-Nova-API-Version`).
    pub legacy_header: Option<&'static str>,
    /// The lowest version (also what a request without a header gets).
    pub min: Version,
    /// The highest version (`latest`).
    pub max: Version,
}

impl VersionRange {
    /// The version a request asks for, checked against the range.
    pub fn negotiate(&self, headers: &HeaderMap) -> Result<Version, VersionError> {
        let Some(asked) = requested(headers, self.service, self.legacy_header) else {
            return Ok(self.min);
        };
        if asked.eq_ignore_ascii_case("latest") {
            return Ok(self.max);
        }
        let v: Version = asked.parse()?;
        if v < self.min || v > self.max {
            return Err(VersionError::NotAcceptable { requested: v, min: self.min, max: self.max });
        }
        Ok(v)
    }
}

/// The version string a request carries for `service`, if any (`microversion_parse`
/// semantics: every `OpenStack-API-Version` entry `<service> <version>`, service names
/// case-insensitive, then the legacy header).
fn requested(headers: &HeaderMap, service: &str, legacy: Option<&str>) -> Option<String> {
    for value in headers.get_all(API_VERSION_HEADER) {
        let Ok(text) = value.to_str() else {
            // Not visible ASCII: report it as an invalid version, shown escaped.
            return Some(String::from_utf8_lossy(value.as_bytes()).escape_default().to_string());
        };
        for entry in text.split(',') {
            let mut parts = entry.split_whitespace();
            let (Some(name), version) = (parts.next(), parts.next()) else {
                continue;
            };
            if name.eq_ignore_ascii_case(service) {
                let rest: Vec<&str> = parts.collect();
                let mut v = version.unwrap_or("").to_string();
                if !rest.is_empty() {
                    // `compute 2.1 junk`: keep it all so that it is reported as invalid.
                    v = format!("{v} {}", rest.join(" "));
                }
                return Some(v.escape_default().to_string());
            }
        }
    }
    let legacy = legacy?;
    let value = headers.get(legacy)?;
    Some(match value.to_str() {
        Ok(s) => s.trim().escape_default().to_string(),
        Err(_) => String::from_utf8_lossy(value.as_bytes()).escape_default().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const NOVA: VersionRange = VersionRange {
        service: "compute",
        legacy_header: Some("x-openstack-nova-api-version"),
        min: Version::new(2, 1),
        max: Version::new(2, 100),
    };

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn parses_and_orders() {
        assert!("2.10".parse::<Version>().unwrap() > "2.9".parse().unwrap());
        for bad in ["2", "2.", ".1", "02.1", "2.01", "2.1.1", "a.b", "", " 2.1", "2.-1"] {
            assert!(bad.parse::<Version>().is_err(), "{bad}");
        }
        assert_eq!("2.0".parse::<Version>().unwrap(), Version::new(2, 0));
    }

    #[test]
    fn negotiates() {
        assert_eq!(NOVA.negotiate(&h(&[])).unwrap(), Version::new(2, 1));
        assert_eq!(NOVA.negotiate(&h(&[("openstack-api-version", "compute 2.37")])).unwrap(), Version::new(2, 37));
        assert_eq!(NOVA.negotiate(&h(&[("openstack-api-version", "compute latest")])).unwrap(), NOVA.max);
        assert_eq!(
            NOVA.negotiate(&h(&[("openstack-api-version", "placement 1.2, compute 2.5")])).unwrap(),
            Version::new(2, 5)
        );
        assert_eq!(NOVA.negotiate(&h(&[("x-openstack-nova-api-version", "2.9")])).unwrap(), Version::new(2, 9));
        // The standard header wins over the legacy one.
        assert_eq!(
            NOVA.negotiate(&h(&[("openstack-api-version", "compute 2.3"), ("x-openstack-nova-api-version", "2.9")]))
                .unwrap(),
            Version::new(2, 3)
        );
        // Another service's entry only: the default.
        assert_eq!(NOVA.negotiate(&h(&[("openstack-api-version", "placement 1.9")])).unwrap(), NOVA.min);
        let e = NOVA.negotiate(&h(&[("openstack-api-version", "compute 2.1000")])).unwrap_err();
        assert_eq!(e.status(), 406);
        assert_eq!(e.to_string(), "Version 2.1000 is not supported by the API. Minimum is 2.1 and maximum is 2.100.");
        let e = NOVA.negotiate(&h(&[("openstack-api-version", "compute 2.x")])).unwrap_err();
        assert_eq!(e.status(), 400);
        assert_eq!(e.to_string(), "API Version String 2.x is of invalid format. Must be of format MajorNum.MinorNum.");
        assert_eq!(NOVA.negotiate(&h(&[("openstack-api-version", "compute")])).unwrap_err().status(), 400);
        assert_eq!(NOVA.negotiate(&h(&[("openstack-api-version", "compute 3.0")])).unwrap_err().status(), 406);
    }
}
