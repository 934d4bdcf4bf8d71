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
        let shown = || shown_input(s);
        let scheme_end = s.find("://");
        let scheme = match scheme_end {
            Some(i) => Scheme::from_name(&s[..i]).ok_or_else(|| {
                // What precedes the first `://` is repeated only when it looks like a
                // scheme: otherwise it is arbitrary text (`user:pw@h?x=y://...`), which may
                // hold a secret the masked form below hides.
                let name = &s[..i];
                let looks_like_scheme = name.len() <= 32
                    && name.starts_with(|c: char| c.is_ascii_alphabetic())
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
                let what = if looks_like_scheme { format!("unknown scheme {name:?}") } else { "no scheme".into() };
                Error::invalid(
                    "store url",
                    format!("{what} in {:?}; this build knows: {}", shown(), Scheme::known_names().join(", ")),
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
        let u = redact_parsed(&self.url);
        if self.hosts.len() <= 1 {
            return u;
        }
        let list: Vec<String> = self
            .hosts
            .iter()
            .map(|(h, p)| match p {
                Some(p) => format!("{h}:{p}"),
                None => h.clone(),
            })
            .collect();
        // `u` is the single-host URL with the password masked; put the list back where
        // its one host was.
        match url::Url::parse(&u) {
            Ok(m) => format!("{}{}{}", &m[..Position::BeforeHost], list.join(","), &m[Position::AfterPort..]),
            Err(_) => redact_text(&u),
        }
    }
}

/// A parsed URL of any scheme with its password, its secret query values and the passwords
/// of URLs nested in its query values masked.
fn redact_parsed(url: &url::Url) -> String {
    redact_parsed_at(url, 0)
}

/// How deep URLs nested in query values are followed; a value nested deeper is masked
/// whole (no store URL nests more than one level: SQL's `cell_url`).
const MAX_NESTING: usize = 4;

fn redact_parsed_at(url: &url::Url, depth: usize) -> String {
    let mut u = url.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    // A secret can recur outside the place that makes it one: in a query key, in another
    // value, in the fragment (a URL pasted twice, a password that is also a prefix). Every
    // secret of the URL, at any nesting level, is masked wherever it recurs in the query
    // and the fragment (the scheme, user, host and path are shown as they are: a password
    // equal to the user name or the database name cannot be told apart from them).
    let mut secrets = Vec::new();
    collect_secrets(url, depth, &mut secrets);
    // First in the query as typed (a secret holding `=`, `&` or `+` is split or changed by
    // decoding, so no decoded pair holds it whole), then pair by pair, decoded.
    if let Some(q) = u.query() {
        let m = mask_recurrences(q, &secrets);
        if m != q {
            u.set_query(Some(&m));
        }
    }
    let pairs: Vec<(String, String)> = u.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let masked: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| {
            let shown =
                if is_secret_key(k) { "***".into() } else { redact_nested(&mask_recurrences(v, &secrets), depth) };
            (mask_recurrences(k, &secrets), shown)
        })
        .collect();
    if masked != pairs {
        u.query_pairs_mut().clear().extend_pairs(masked);
    }
    if let Some(frag) = u.fragment() {
        let f = mask_recurrences(frag, &secrets);
        let f = if f.contains("://") || f.contains('=') { redact_text(&f) } else { f };
        if f != frag {
            u.set_fragment(Some(&f));
        }
    }
    u.to_string()
}

/// The secrets of a parsed URL, as typed and percent-decoded: its password, the values of
/// its secret query keys, and those of URLs nested in its query values. Secrets shorter
/// than 4 characters are left out: their recurrences cannot be told apart from other text
/// (the secret itself is still masked where it stands).
fn collect_secrets(u: &url::Url, depth: usize, out: &mut Vec<String>) {
    let mut push = |s: &str| {
        if s.chars().count() >= 4 && !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    };
    if let Some(p) = u.password() {
        push(p);
        push(&percent_decode_lossy(p));
    }
    let mut nested = Vec::new();
    for (k, v) in u.query_pairs() {
        if is_secret_key(&k) {
            push(&v);
        } else if v.contains("://") && depth < MAX_NESTING {
            nested.push(v.into_owned());
        }
    }
    for v in nested {
        if let Ok(n) = url::Url::parse(&split_host_list(&v).0) {
            collect_secrets(&n, depth + 1, out);
        }
    }
}

/// `text` with every occurrence of every secret replaced by `***`, longest secrets first
/// (so a secret that contains another is masked whole).
fn mask_recurrences(text: &str, secrets: &[String]) -> String {
    let mut by_len: Vec<&String> = secrets.iter().collect();
    by_len.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_string();
    for s in by_len {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

/// `%XX` decoding (a password as `url::Url` holds it), lossy; malformed escapes stay.
pub(crate) fn percent_decode_lossy(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (b.get(i + 1).and_then(|c| hex(*c)), b.get(i + 2).and_then(|c| hex(*c)))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Masks every credential in free text: the password of every URL in it (whatever its
/// scheme, CQL host lists included), the values of query keys that name a secret
/// (`password=`, `pwd=`, `secret=`, `token=`, ...), and the same inside URLs nested in
/// query values (`cell_url=`, percent-encoded or not). Text that is not even a URL is
/// masked best-effort (what sits between `scheme://user:` and the last `@` of the
/// authority, and secret `key=value`s), erring towards hiding too much.
///
/// Every place that shows something a user typed as a URL (errors, reports, the
/// command line, log lines) goes through this or [`StoreUrl`]'s `Display`.
pub fn redact_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(sep) = rest.find("://") {
        let scheme_start = scheme_start_before(rest, sep);
        // The URL runs to the next whitespace or quote.
        let mut end = rest[sep..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
            .map_or(rest.len(), |e| sep + e);
        // A second URL in the same token (`memory://,mysql://u:p@h`, an unencoded
        // `cell_url=mysql://...`) starts a new one: each is masked on its own.
        if let Some(next) = rest[sep + 3..end].find("://") {
            let next = sep + 3 + next;
            let k = scheme_start_before(rest, next);
            if k > sep + 3 && k < next {
                end = k;
            }
        }
        out.push_str(&mask_secret_pairs(&rest[..scheme_start]));
        out.push_str(&redact_one(&rest[scheme_start..end]));
        rest = &rest[end..];
    }
    out.push_str(&mask_secret_pairs(rest));
    out
}

/// Where the scheme ending at `sep` (the index of its `://`) starts: the run of scheme
/// characters before it.
fn scheme_start_before(s: &str, sep: usize) -> usize {
    s[..sep]
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        .last()
        .map_or(sep, |(i, _)| i)
}

/// One URL-like token (no whitespace): parsed and masked if it parses (host lists
/// allowed), masked best-effort otherwise.
fn redact_one(token: &str) -> String {
    // Trailing punctuation of prose (`... at redis://h/0.`, `(mysql://u:p@h)`) is not part
    // of the URL.
    let trimmed = token.trim_end_matches([')', ']', '.', ',', ';', ':']);
    let (token, tail) = token.split_at(trimmed.len());
    let (single, extra) = split_host_list(token);
    if !token.starts_with("://")
        && let Ok(u) = url::Url::parse(&single)
    {
        let shown = redact_parsed(&u);
        let shown = if extra.is_empty() {
            shown
        } else {
            match url::Url::parse(&shown) {
                Ok(m) if m.has_host() => {
                    let first = &m[Position::BeforeHost..Position::AfterPort];
                    let mut list = vec![first.to_string()];
                    list.extend(extra.iter().map(|h| mask_secret_pairs(h)));
                    format!("{}{}{}", &m[..Position::BeforeHost], list.join(","), &m[Position::AfterPort..])
                }
                _ => redact_fallback(token),
            }
        };
        return shown + tail;
    }
    redact_fallback(token) + tail
}

/// Masking for a token that does not parse as a URL: the userinfo's password (up to the
/// last `@` before the path, or the last `@` at all when unsure) and secret pairs.
fn redact_fallback(token: &str) -> String {
    let masked = match token.find("://") {
        Some(i) => {
            let rest = &token[i + 3..];
            match rest.rfind('@') {
                Some(at) => match rest[..at].find(':') {
                    Some(colon) => format!("{}{}:***{}", &token[..i + 3], &rest[..colon], &rest[at..]),
                    None => token.to_string(),
                },
                None => token.to_string(),
            }
        }
        None => token.to_string(),
    };
    mask_secret_pairs(&masked)
}

/// Masks `key=value` pairs whose key names a secret, in free text or a query string, and
/// nested URLs in percent-encoded values (`cell_url=mysql%3A%2F%2Fu%3Ap%40h`).
fn mask_secret_pairs(s: &str) -> String {
    if !s.contains('=') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let key_start = rest[..eq]
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            .last()
            .map_or(eq, |(i, _)| i);
        let key = &rest[key_start..eq];
        let value_end = rest[eq + 1..]
            .find(|c: char| c.is_whitespace() || matches!(c, '&' | ';' | '"' | '\'' | ',' | ')'))
            .map_or(rest.len(), |e| eq + 1 + e);
        let value = &rest[eq + 1..value_end];
        out.push_str(&rest[..eq + 1]);
        if !key.is_empty() && is_secret_key(key) && !value.is_empty() {
            out.push_str("***");
        } else if value.to_ascii_lowercase().contains("%3a%2f%2f") {
            let decoded: String = url::form_urlencoded::parse(format!("v={value}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            let masked = redact_text(&decoded);
            if masked == decoded {
                out.push_str(value);
            } else {
                out.extend(url::form_urlencoded::byte_serialize(masked.as_bytes()));
            }
        } else {
            out.push_str(value);
        }
        rest = &rest[value_end..];
    }
    out.push_str(rest);
    out
}

/// Splits a comma-separated host list out of the authority: the URL with its first host
/// only, and the text of the other hosts.
pub(crate) fn split_host_list(s: &str) -> (String, Vec<String>) {
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

/// A query value that may itself be a URL with credentials (SQL's `cell_url`), masked as
/// one URL, the way [`StoreUrl::parse`]'s errors show their input: not word by word, which
/// would let a space or a quote in the nested password cut its masking short.
fn redact_nested(v: &str, depth: usize) -> String {
    if v.contains("://") {
        if depth >= MAX_NESTING { "***".into() } else { shown_value(v, depth + 1) }
    } else if v.contains('=') {
        mask_secret_pairs(v)
    } else {
        v.to_string()
    }
}

/// Whether a query key (or `key=` in free text) names a secret: `password`, `passwd`,
/// `pwd`, `pass`, `secret`, `token`, `auth`, `credential(s)`, `api_key`/`apikey`, any case,
/// alone or inside a longer key (`db_password`, `authToken`).
pub(crate) fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    ["pass", "pwd", "secret", "token", "auth", "credential", "apikey", "api_key", "api-key"]
        .iter()
        .any(|s| k.contains(s))
}

/// The input of [`StoreUrl::parse`] as its errors show it. Text meant as one store URL is
/// masked as a whole, not word by word as [`redact_text`] masks free text (where a quote,
/// a space or a control character ends a URL, so a password containing one would be cut in
/// two and shown): a single-host URL that parses exactly as `Display` shows a parsed URL;
/// anything else with everything between the first `://` and the last `@` masked, the user
/// too, along with secret `key=value`s.
fn shown_input(s: &str) -> String {
    shown_value(s, 0)
}

fn shown_value(s: &str, depth: usize) -> String {
    let (single, extra) = split_host_list(s);
    // A host list splits the text where a URL-shaped password could hide (`memory://,mysql://u:p@h`):
    // only a single-host URL is shown parsed.
    if extra.is_empty()
        && let Ok(u) = url::Url::parse(&single)
    {
        return redact_parsed_at(&u, depth);
    }
    let masked = match (s.find("://"), s.rfind('@')) {
        (Some(i), Some(at)) if at > i => format!("{}***{}", &s[..i + 3], &s[at..]),
        _ => s.to_string(),
    };
    mask_secret_pairs(&masked)
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

    /// Every form a URL with a secret can take, alone and inside free text: each one's
    /// secret (`hunter2`) must vanish while the rest stays readable.
    const SECRET_FORMS: &[&str] = &[
        "mysql://root:hunter2@127.0.0.1:3306/nova",
        "redis://:hunter2@h:6379/0",
        "redis://u:hunter2@h/0?prefix=x",
        "mysql://root@h/nova?password=hunter2",
        "mysql://root@h/nova?x=1&PassWord=hunter2&y=2",
        "postgres://p@h/api?db_password=hunter2",
        "redis://h/0?auth_token=hunter2",
        "postgres://h/api?pwd=hunter2",
        "postgres://p:pw@h/api?cell_url=postgres%3A%2F%2Fp%3Ahunter2%40h2%2Fc1&cells=2",
        "postgres://p@h/api?cell_url=postgres%3A%2F%2Fp%40h2%2Fc1%3Fpassword%3Dhunter2",
        "postgres://p@h/api?cell_url=postgres://p:hunter2@h2/c1",
        "postgres://p@h/api?cell_url=mysql%3A%2F%2Fr%3Ahunter2%40h2%2Fc1&cell_url=mysql%3A%2F%2Fr%3Ahunter2%40h3%2Fc2",
        "scylla://app:hunter2@10.0.0.1:9042,10.0.0.2,[::1]:19042/nova",
        "cassandra://app:hunter2@a,b,c/ks?replication=3",
        "scylla://app:hunter2@a,b:99999/ks",
        "redis://admin:hunter2@[broken",
        "bogus://admin:hunter2@db.example:1/x",
        "mysql://u:hunt@er2:hunter2@h/x",
        "mysql://u:p%40hunter2@h/x",
        "memory://,mysql://root:hunter2@h/x",
    ];

    #[test]
    fn every_form_of_secret_is_masked_everywhere() {
        for form in SECRET_FORMS {
            let texts = [
                form.to_string(),
                format!("cannot open store {form}: connection refused"),
                format!("unicell bench list --stores={form} --quick"),
                format!("error at \"{form}\"."),
                format!("(see {form})"),
                format!("--stores memory://,{form}"),
                format!("password=hunter2 {form}"),
            ];
            for t in &texts {
                let shown = redact_text(t);
                assert!(!shown.contains("hunter2"), "{t:?} shown as {shown:?}");
                assert!(shown.contains("***"), "{t:?} shown as {shown:?}");
            }
            if let Ok(u) = StoreUrl::parse(form) {
                for shown in [u.to_string(), format!("{u:?}"), u.redacted()] {
                    assert!(!shown.contains("hunter2"), "{form:?} shown as {shown:?}");
                }
            } else {
                let e = StoreUrl::parse(form).unwrap_err();
                for shown in [e.to_string(), format!("{e:?}")] {
                    assert!(!shown.contains("hunter2"), "{form:?} error shown as {shown:?}");
                }
            }
        }
    }

    /// Found by the `store_url` fuzz target: secrets shown where they recur, nested URLs of
    /// unknown schemes masked word by word, garbage repeated as a scheme name.
    #[test]
    fn recurring_and_nested_secrets_are_masked() {
        for (input, secret) in [
            ("postgres://p:hunter22@h/api?x=hunter22&y=1", "hunter22"),
            ("postgres://p:hunt=er22@h/api?ahunt=er22b", "hunt=er22"),
            ("postgres://p:hunt+er22@h/api?q=hunt+er22", "hunt+er22"),
            ("postgres://p:hunter22@h/api#frag-hunter22", "hunter22"),
            ("postgres://p@h/api?token=hunter22&note=hunter22", "hunter22"),
            ("postgres://p@h/api?cell_url=mysql%3A%2F%2Fr%3Ahunter22%40h2%2Fc1&label=hunter22", "hunter22"),
            ("bogus://p:x@h/api?cell_url=postgres%3A%2F%2Fp%3Ahunt%20er22%40h2%2Fc1", "er22"),
            ("bogus:/x@h/api?a_token=z=hunter22/x://y", "hunter22"),
        ] {
            let shown = match StoreUrl::parse(input) {
                Ok(u) => vec![u.to_string(), format!("{u:?}")],
                Err(e) => vec![e.to_string(), format!("{e:?}")],
            };
            for s in shown {
                assert!(!s.contains(secret), "{input:?} shown as {s:?}");
            }
        }
        let e = StoreUrl::parse("ftp://h/x").unwrap_err().to_string();
        assert!(e.contains("unknown scheme \"ftp\""), "{e}");
        let e = StoreUrl::parse("a b:/x?t=1://h").unwrap_err().to_string();
        assert!(e.contains("no scheme in"), "{e}");
        // What is not a secret stays readable.
        let u = StoreUrl::parse("postgres://p:pw@h/api?cells=4&x=pw").unwrap();
        assert_eq!(u.to_string(), "postgres://p:***@h/api?cells=4&x=pw");
    }

    #[test]
    fn redaction_keeps_what_is_not_secret() {
        assert_eq!(redact_text("no url here, key=value"), "no url here, key=value");
        assert_eq!(redact_text("redis://127.0.0.1:6379/0?prefix=a"), "redis://127.0.0.1:6379/0?prefix=a");
        assert_eq!(redact_text("mysql://root:pw@h/x"), "mysql://root:***@h/x");
        assert_eq!(
            redact_text("stores memory://,mysql://root:pw@h/x and more"),
            "stores memory://,mysql://root:***@h/x and more"
        );
        let shown = redact_text("scylla://app:pw@10.0.0.1:9042,10.0.0.2/ks");
        assert_eq!(shown, "scylla://app:***@10.0.0.1:9042,10.0.0.2/ks");
        let shown = redact_text("postgres://p@h/api?cell_url=postgres%3A%2F%2Fp%3Apw%40h2%2Fc1&cells=2");
        assert!(shown.contains("h2") && shown.contains("cells=2") && !shown.contains("pw%40"), "{shown}");
    }
}
