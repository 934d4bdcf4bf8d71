//! Store URLs: the schemes this crate knows ([`Scheme`], the one place that maps a scheme
//! string to a backend) and a parsed URL that never leaks its credentials ([`StoreUrl`]).
//! Every store URL goes through [`StoreUrl::parse`], CQL's multi-host ones included.

use std::fmt;
use std::str::FromStr;

use url::Position;

use crate::error::{Error, Result};

/// The scheme of a store URL: which backend, and which server family, a URL names.
///
/// Code that needs to know what kind of store a URL is matches on this enum rather than
/// on scheme strings; [`Scheme::from_name`] is the only place that reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Scheme {
    /// `memory://`: the embedded in-process store.
    Memory,
    /// `redis://`: one Redis server.
    Redis,
    /// `redis+cluster://`: a Redis Cluster.
    RedisCluster,
    /// `scylla://`: ScyllaDB.
    Scylla,
    /// `cassandra://`: Apache Cassandra.
    Cassandra,
    /// `mysql://` (or `mariadb://`): the SQL baseline on MariaDB or MySQL.
    MySql,
    /// `postgres://` (or `postgresql://`): the SQL baseline on PostgreSQL.
    Postgres,
}

impl Scheme {
    /// Every scheme, whether or not this build has its backend.
    pub const ALL: [Scheme; 7] = [
        Scheme::Memory,
        Scheme::Redis,
        Scheme::RedisCluster,
        Scheme::Scylla,
        Scheme::Cassandra,
        Scheme::MySql,
        Scheme::Postgres,
    ];

    /// Every spelling of the scheme in a URL, the canonical one first.
    pub fn names(self) -> &'static [&'static str] {
        match self {
            Scheme::Memory => &["memory"],
            Scheme::Redis => &["redis"],
            Scheme::RedisCluster => &["redis+cluster"],
            Scheme::Scylla => &["scylla"],
            Scheme::Cassandra => &["cassandra"],
            Scheme::MySql => &["mysql", "mariadb"],
            Scheme::Postgres => &["postgres", "postgresql"],
        }
    }

    /// The canonical spelling (`mysql` for `mariadb://` too).
    pub fn name(self) -> &'static str {
        self.names()[0]
    }

    /// The scheme a URL spells `name` (ASCII case-insensitive, as URL schemes are), if any.
    pub fn from_name(name: &str) -> Option<Scheme> {
        Scheme::ALL.into_iter().find(|s| s.names().iter().any(|n| n.eq_ignore_ascii_case(name)))
    }

    /// The backend that serves it, as [`Store::backend`](crate::store::Store::backend)
    /// names it: `memory`, `redis`, `cql` or `sql`.
    pub fn backend(self) -> &'static str {
        match self {
            Scheme::Memory => "memory",
            Scheme::Redis | Scheme::RedisCluster => "redis",
            Scheme::Scylla | Scheme::Cassandra => "cql",
            Scheme::MySql | Scheme::Postgres => "sql",
        }
    }

    /// The cargo feature that compiles the backend in (`None`: always there).
    pub fn feature(self) -> Option<&'static str> {
        match self.backend() {
            "memory" => None,
            other => Some(other),
        }
    }

    /// Whether this build has the backend.
    pub fn is_enabled(self) -> bool {
        match self {
            Scheme::Memory => true,
            Scheme::Redis | Scheme::RedisCluster => cfg!(feature = "redis"),
            Scheme::Scylla | Scheme::Cassandra => cfg!(feature = "cql"),
            Scheme::MySql | Scheme::Postgres => cfg!(feature = "sql"),
        }
    }

    /// The schemes whose backends this build has.
    pub fn enabled() -> impl Iterator<Item = Scheme> {
        Scheme::ALL.into_iter().filter(|s| s.is_enabled())
    }

    /// The server's port when the URL names none (`None` for the embedded store).
    pub fn default_port(self) -> Option<u16> {
        match self {
            Scheme::Memory => None,
            Scheme::Redis | Scheme::RedisCluster => Some(6379),
            Scheme::Scylla | Scheme::Cassandra => Some(9042),
            Scheme::MySql => Some(3306),
            Scheme::Postgres => Some(5432),
        }
    }

    /// Whether the URL may list several `host[:port]`s separated by commas
    /// (`scylla://h1:9042,h2:9042/keyspace`): the CQL driver takes several contact points.
    /// (A Redis Cluster URL names further seeds in its `seeds=` option instead.)
    pub fn allows_host_list(self) -> bool {
        matches!(self, Scheme::Scylla | Scheme::Cassandra)
    }

    /// Every spelling of every scheme this build has, canonical ones first per scheme.
    pub fn known_names() -> Vec<&'static str> {
        Scheme::enabled().flat_map(|s| s.names().iter().copied()).collect()
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scheme {
    type Err = Error;

    /// As [`Scheme::from_name`], with an `InvalidInput` naming the schemes this build knows.
    fn from_str(s: &str) -> Result<Self> {
        Scheme::from_name(s).ok_or_else(|| {
            Error::invalid(
                "store url",
                format!("unknown scheme {s:?}; this build knows: {}", Scheme::known_names().join(", ")),
            )
        })
    }
}

/// A parsed store URL. `Display` and `Debug` show it with any password replaced by `***`
/// (in the URL itself, in options whose name says password, secret or token, and in
/// options whose value is itself a URL with a password, such as SQL's `cell_url`), so a
/// `StoreUrl` can be logged, put in an error or a benchmark report safely; the original is
/// available only through [`StoreUrl::expose`].
///
/// A URL of a scheme that [allows a host list](Scheme::allows_host_list) may name several
/// `host[:port]`s separated by commas; [`hosts`](StoreUrl::hosts) has them all, while
/// [`expose`](StoreUrl::expose) carries only the first (a `url::Url` has one host).
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl {
    scheme: Scheme,
    /// The URL with its first host only.
    url: url::Url,
    /// Every host, in order, with its port if the URL names one.
    hosts: Vec<(String, Option<u16>)>,
}

impl StoreUrl {
    /// Parses `s`. A URL that does not parse, has an unknown scheme or lists several hosts
    /// where its scheme does not allow it is `InvalidInput`, and the message repeats the
    /// input only with its password masked.
    pub fn parse(s: &str) -> Result<Self> {
        let shown = || redact_str(s);
        let scheme_end = s.find("://");
        let scheme = match scheme_end {
            Some(i) => Scheme::from_name(&s[..i]).ok_or_else(|| {
                Error::invalid(
                    "store url",
                    format!(
                        "unknown scheme {:?} in {:?}; this build knows: {}",
                        &s[..i],
                        shown(),
                        Scheme::known_names().join(", ")
                    ),
                )
            })?,
            None => {
                // Let the URL parser say what is wrong with it (no scheme, spaces, ...).
                let e = url::Url::parse(s).err().map(|e| e.to_string()).unwrap_or_else(|| "no `://`".into());
                return Err(Error::invalid("store url", format!("{:?} is not a URL: {e}", shown())));
            }
        };
        let (single, extra) = split_host_list(s);
        if !extra.is_empty() && !scheme.allows_host_list() {
            return Err(Error::invalid(
                "store url",
                format!("{:?} lists several hosts; only scylla:// and cassandra:// URLs may", shown()),
            ));
        }
        let url = url::Url::parse(&single)
            .map_err(|e| Error::invalid("store url", format!("{:?} is not a URL: {e}", shown())))?;
        let mut hosts = Vec::new();
        if let Some(h) = url.host_str().filter(|h| !h.is_empty()) {
            hosts.push((h.to_string(), url.port()));
        }
        for h in extra {
            let one = url::Url::parse(&format!("{}://{h}", url.scheme()))
                .ok()
                .and_then(|u| Some((u.host_str().filter(|h| !h.is_empty())?.to_string(), u.port())));
            match one {
                Some(hp) if !h.contains(['@', '/', '?', '#']) => hosts.push(hp),
                _ => {
                    return Err(Error::invalid("store url", format!("{:?}: bad host {h:?} in the host list", shown())));
                }
            }
        }
        Ok(StoreUrl { scheme, url, hosts })
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The parsed URL, credentials included, with its first host only. Only for handing to
    /// a client library.
    pub fn expose(&self) -> &url::Url {
        &self.url
    }

    /// Every host the URL names, in order, with its port if given (empty for `memory://`).
    pub fn hosts(&self) -> &[(String, Option<u16>)] {
        &self.hosts
    }

    /// Every host as `host:port`, the scheme's [default port](Scheme::default_port) where
    /// the URL names none.
    pub fn host_ports(&self) -> Vec<String> {
        self.hosts
            .iter()
            .map(|(h, p)| match p.or(self.scheme.default_port()) {
                Some(p) => format!("{h}:{p}"),
                None => h.clone(),
            })
            .collect()
    }

    /// A query parameter's value (the first, if it repeats).
    pub fn param(&self, key: &str) -> Option<String> {
        self.url.query_pairs().find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
    }

    /// Every value of a query parameter that may repeat.
    pub fn params(&self, key: &str) -> Vec<String> {
        self.url.query_pairs().filter(|(k, _)| k == key).map(|(_, v)| v.into_owned()).collect()
    }

    /// The URL with every password masked (see the type's docs).
    pub fn redacted(&self) -> String {
        let mut u = self.url.clone();
        if u.password().is_some() {
            let _ = u.set_password(Some("***"));
        }
        let pairs: Vec<(String, String)> = u.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        let masked: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.clone(), if is_secret_key(k) { "***".into() } else { redact_nested(v) }))
            .collect();
        if masked != pairs {
            u.query_pairs_mut().clear().extend_pairs(masked);
        }
        if self.hosts.len() <= 1 {
            return u.to_string();
        }
        let list: Vec<String> = self
            .hosts
            .iter()
            .map(|(h, p)| match p {
                Some(p) => format!("{h}:{p}"),
                None => h.clone(),
            })
            .collect();
        format!("{}{}{}", &u[..Position::BeforeHost], list.join(","), &u[Position::AfterPort..])
    }
}

/// Splits a comma-separated host list out of the authority: the URL with its first host
/// only, and the text of the other hosts.
fn split_host_list(s: &str) -> (String, Vec<String>) {
    let Some(i) = s.find("://") else { return (s.to_string(), Vec::new()) };
    let start = i + 3;
    let after = &s[start..];
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let authority = &after[..end];
    let hosts_at = authority.rfind('@').map(|k| k + 1).unwrap_or(0);
    let list = &authority[hosts_at..];
    if !list.contains(',') {
        return (s.to_string(), Vec::new());
    }
    let mut parts = list.split(',');
    let first = parts.next().unwrap_or_default();
    let extra = parts.map(str::to_string).collect();
    (format!("{}{}{}", &s[..start + hosts_at], first, &after[end..]), extra)
}

/// A query value that is itself a URL with a password (SQL's `cell_url`), masked.
fn redact_nested(v: &str) -> String {
    if !v.contains("://") {
        return v.to_string();
    }
    match url::Url::parse(v) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(_) => v.to_string(),
        Err(_) => redact_str(v),
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

    #[test]
    fn every_spelling_names_its_scheme() {
        for s in Scheme::ALL {
            for name in s.names() {
                assert_eq!(Scheme::from_name(name), Some(s));
                let u = StoreUrl::parse(&format!("{name}://h/x")).unwrap();
                assert_eq!(u.scheme(), s);
            }
        }
        assert_eq!(Scheme::from_name("MariaDB"), Some(Scheme::MySql));
        assert_eq!(Scheme::from_name("ftp"), None);
        let e = StoreUrl::parse("ftp://u:hunter2@x").unwrap_err().to_string();
        assert!(e.contains("unknown scheme \"ftp\"") && e.contains("memory"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn cql_host_lists_parse_and_print_without_the_password() {
        let u = StoreUrl::parse(
            "scylla://app:s3cr%40t@10.0.0.1:9042,10.0.0.2,[::1]:19042/nova?replication=nts:dc1=3,dc2=2",
        )
        .unwrap();
        assert_eq!(u.scheme(), Scheme::Scylla);
        assert_eq!(u.host_ports(), vec!["10.0.0.1:9042", "10.0.0.2:9042", "[::1]:19042"]);
        assert_eq!(u.param("replication").as_deref(), Some("nts:dc1=3,dc2=2"));
        assert_eq!(u.expose().path(), "/nova");
        let shown = u.to_string();
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(shown.contains("10.0.0.1:9042,10.0.0.2,[::1]:19042/nova"), "{shown}");
        for bad in ["redis://a:1,b:2/0", "scylla://a,/ks", "scylla://a,b:99999/ks", "scylla://a,b:x/ks"] {
            assert!(StoreUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nested_url_passwords_are_masked() {
        let u = StoreUrl::parse("postgres://p:s3cret@h/api?cell_url=postgres%3A%2F%2Fp%3As3cret%40h2%2Fc1&cells=2")
            .unwrap();
        let shown = u.to_string();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("h2"), "{shown}");
        assert_eq!(u.params("cell_url"), vec!["postgres://p:s3cret@h2/c1"]);
    }
}
