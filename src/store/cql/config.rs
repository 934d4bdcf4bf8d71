//! The CQL store's URL: `scylla://[user[:password]@]host[:port][,host[:port]...]/keyspace?options`
//! (or `cassandra://...`).
//!
//! [`StoreUrl::parse`] reads the host list (port 9042 where a host names none);
//! [`CqlConfig`]'s `Display`/`Debug` mask the password, like [`StoreUrl`]'s.
//!
//! | option | values | default |
//! |---|---|---|
//! | `replication` | `simple:N` (SimpleStrategy) or `nts:dc1=3,dc2=3` (NetworkTopologyStrategy) | `simple:1` |
//! | `consistency` | `one`, `two`, `three`, `quorum`, `all`, `local_quorum`, `each_quorum`, `local_one` | `quorum` |
//! | `serial_consistency` | `serial`, `local_serial` | `serial` |
//! | `request_timeout_ms` | client-side timeout of one request | `15000` |
//! | `connect_timeout_ms` | connection setup timeout | `5000` |
//! | `create_schema` | `true`: create the keyspace and tables if missing; `false`: expect them | `true` |
//! | `instance_shards` | partitions per time bucket of the instance listing (fixed at keyspace creation) | `4` |
//! | `instance_bucket_hours` | width of a listing time bucket (fixed at keyspace creation) | `24` |
//! | `claim_attempts` | bound of the read-evaluate-CAS loop of a claim | `64` |
//!
//! `serial_consistency=serial` is the default because only SERIAL makes claims linearizable
//! across datacenters; `local_serial` is faster in multi-DC clusters but only correct when
//! every provider tree is claimed from one datacenter.

use std::fmt;
use std::time::Duration;

use scylla::statement::{Consistency, SerialConsistency};

use crate::error::{Error, Result};
use crate::store::{Scheme, StoreUrl};

/// Which server family the URL names. Decides DDL details: ScyllaDB keyspaces are created
/// with tablets disabled (LWT is not supported on tablet keyspaces in ScyllaDB 2025.x),
/// while Cassandra rejects the `tablets` option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CqlServer {
    /// `scylla://`
    Scylla,
    /// `cassandra://`
    Cassandra,
}

/// Keyspace replication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replication {
    /// `SimpleStrategy` with this replication factor.
    Simple(u32),
    /// `NetworkTopologyStrategy` with a factor per datacenter.
    NetworkTopology(Vec<(String, u32)>),
}

impl Replication {
    /// The CQL map literal.
    pub fn cql(&self) -> String {
        match self {
            Replication::Simple(n) => {
                format!("{{'class': 'SimpleStrategy', 'replication_factor': {n}}}")
            }
            Replication::NetworkTopology(dcs) => {
                let mut s = String::from("{'class': 'NetworkTopologyStrategy'");
                for (dc, n) in dcs {
                    s.push_str(&format!(", '{dc}': {n}"));
                }
                s.push('}');
                s
            }
        }
    }
}

/// A parsed CQL store URL.
#[derive(Clone)]
pub struct CqlConfig {
    /// The URL (displays with its password masked).
    pub url: StoreUrl,
    /// Server family, from the scheme.
    pub server: CqlServer,
    /// Contact points (`host:port`).
    pub hosts: Vec<String>,
    /// Credentials, if any.
    pub credentials: Option<(String, String)>,
    /// The keyspace.
    pub keyspace: String,
    /// Replication used when creating the keyspace.
    pub replication: Replication,
    /// Consistency of every regular read and write.
    pub consistency: Consistency,
    /// Serial consistency of lightweight transactions and of serial reads.
    pub serial_consistency: SerialConsistency,
    /// Client-side timeout of one request.
    pub request_timeout: Duration,
    /// Connection setup timeout.
    pub connect_timeout: Duration,
    /// Whether to create the keyspace and tables.
    pub create_schema: bool,
    /// Instance listing shards per bucket (only used when the keyspace is created).
    pub instance_shards: u32,
    /// Instance listing bucket width in hours (only used when the keyspace is created).
    pub instance_bucket_hours: u32,
    /// Bound of the claim loop.
    pub claim_attempts: u32,
}

impl CqlConfig {
    /// Reads a `scylla://` or `cassandra://` URL (parsed, host list included, by
    /// [`StoreUrl::parse`]).
    pub fn parse(url: &StoreUrl) -> Result<Self> {
        let bad = |msg: String| Error::invalid("store url", format!("{url}: {msg}"));
        let server = match url.scheme() {
            Scheme::Scylla => CqlServer::Scylla,
            Scheme::Cassandra => CqlServer::Cassandra,
            other => return Err(bad(format!("scheme {other} is not scylla or cassandra"))),
        };
        let u = url.expose();
        let credentials = match (u.username(), u.password()) {
            ("", None) => None,
            (user, password) => Some((percent_decode(user), percent_decode(password.unwrap_or("")))),
        };
        let hosts = url.host_ports();
        if hosts.is_empty() {
            return Err(bad("no host".into()));
        }
        let path = u.path().trim_start_matches('/');
        let keyspace = if path.is_empty() { "unicell".to_string() } else { path.trim_end_matches('/').to_string() };
        let valid_ks = keyspace.len() <= 48
            && keyspace.starts_with(|c: char| c.is_ascii_lowercase())
            && keyspace.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid_ks {
            return Err(bad(format!("keyspace {keyspace:?} must match [a-z][a-z0-9_]{{0,47}}")));
        }
        let mut cfg = CqlConfig {
            url: url.clone(),
            server,
            hosts,
            credentials,
            keyspace,
            replication: Replication::Simple(1),
            consistency: Consistency::Quorum,
            serial_consistency: SerialConsistency::Serial,
            request_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            create_schema: true,
            instance_shards: 4,
            instance_bucket_hours: 24,
            claim_attempts: 64,
        };
        for (k, v) in u.query_pairs() {
            let num = |v: &str| -> Result<u64> {
                v.parse::<u64>().map_err(|_| bad(format!("option {k}={v:?} is not a number")))
            };
            match k.as_ref() {
                "replication" => cfg.replication = parse_replication(&v).map_err(bad)?,
                "consistency" => cfg.consistency = parse_consistency(&v).map_err(bad)?,
                "serial_consistency" => {
                    cfg.serial_consistency = match v.to_ascii_lowercase().as_str() {
                        "serial" => SerialConsistency::Serial,
                        "local_serial" => SerialConsistency::LocalSerial,
                        _ => {
                            return Err(bad(format!("serial_consistency={v:?}: serial or local_serial")));
                        }
                    }
                }
                "request_timeout_ms" => cfg.request_timeout = Duration::from_millis(num(&v)?.max(1)),
                "connect_timeout_ms" => cfg.connect_timeout = Duration::from_millis(num(&v)?.max(1)),
                "create_schema" => {
                    cfg.create_schema = match v.as_ref() {
                        "true" | "1" | "yes" => true,
                        "false" | "0" | "no" => false,
                        _ => return Err(bad(format!("create_schema={v:?}: true or false"))),
                    }
                }
                "instance_shards" => cfg.instance_shards = u32::try_from(num(&v)?.clamp(1, 256)).unwrap_or(4),
                "instance_bucket_hours" => {
                    cfg.instance_bucket_hours = u32::try_from(num(&v)?.clamp(1, 24 * 366)).unwrap_or(24)
                }
                "claim_attempts" => cfg.claim_attempts = u32::try_from(num(&v)?.clamp(1, 10_000)).unwrap_or(64),
                other => return Err(bad(format!("unknown option {other:?}"))),
            }
        }
        Ok(cfg)
    }

    /// The URL with the password masked.
    pub fn redacted(&self) -> String {
        self.url.redacted()
    }
}

impl fmt::Display for CqlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for CqlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CqlConfig")
            .field("url", &self.redacted())
            .field("replication", &self.replication)
            .field("consistency", &self.consistency)
            .field("serial_consistency", &self.serial_consistency)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

fn parse_replication(v: &str) -> std::result::Result<Replication, String> {
    if let Some(n) = v.strip_prefix("simple:") {
        let n: u32 = n.parse().map_err(|_| format!("replication={v:?}: simple:N"))?;
        if n == 0 {
            return Err("replication factor must be at least 1".into());
        }
        return Ok(Replication::Simple(n));
    }
    if let Some(dcs) = v.strip_prefix("nts:") {
        let mut out = Vec::new();
        for part in dcs.split(',') {
            let (dc, n) = part.split_once('=').ok_or_else(|| format!("replication={v:?}: nts:dc1=3,dc2=3"))?;
            let n: u32 = n.parse().map_err(|_| format!("replication={v:?}: bad factor {n:?}"))?;
            let ok =
                !dc.is_empty() && dc.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
            if !ok {
                return Err(format!("replication={v:?}: bad datacenter name {dc:?}"));
            }
            out.push((dc.to_string(), n));
        }
        return Ok(Replication::NetworkTopology(out));
    }
    Err(format!("replication={v:?}: simple:N or nts:dc1=N,dc2=M"))
}

fn parse_consistency(v: &str) -> std::result::Result<Consistency, String> {
    Ok(match v.to_ascii_lowercase().as_str() {
        "one" => Consistency::One,
        "two" => Consistency::Two,
        "three" => Consistency::Three,
        "quorum" => Consistency::Quorum,
        "all" => Consistency::All,
        "local_quorum" => Consistency::LocalQuorum,
        "each_quorum" => Consistency::EachQuorum,
        "local_one" => Consistency::LocalOne,
        _ => return Err(format!("consistency={v:?} is not a CQL consistency level")),
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(hex) = std::str::from_utf8(&b[i + 1..i + 3])
            && let Ok(v) = u8::from_str_radix(hex, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<CqlConfig> {
        CqlConfig::parse(&StoreUrl::parse(url)?)
    }

    #[test]
    fn parses_hosts_options_and_hides_password() {
        let c = parse(
            "scylla://app:s3cr%40t@10.0.0.1:9042,10.0.0.2,[::1]:19042/nova?replication=nts:dc1=3,dc2=2&serial_consistency=local_serial&create_schema=false",
        )
        .unwrap();
        assert_eq!(c.server, CqlServer::Scylla);
        assert_eq!(c.hosts, vec!["10.0.0.1:9042", "10.0.0.2:9042", "[::1]:19042"]);
        assert_eq!(c.keyspace, "nova");
        assert_eq!(c.credentials.as_ref().unwrap().1, "s3cr@t");
        assert_eq!(c.replication, Replication::NetworkTopology(vec![("dc1".into(), 3), ("dc2".into(), 2)]));
        assert_eq!(c.serial_consistency, SerialConsistency::LocalSerial);
        assert!(!c.create_schema);
        for shown in [c.to_string(), format!("{c:?}")] {
            assert!(!shown.contains("s3cr"), "{shown}");
        }
    }

    #[test]
    fn rejects_bad_input_without_leaking() {
        for bad in [
            "cassandra://u:hunter2@h/Bad-Name",
            "cassandra://u:hunter2@h:99999/ks",
            "cassandra://u:hunter2@h/ks?replication=simple:x",
            "cassandra://u:hunter2@h/ks?nope=1",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(!e.contains("hunter2"), "{e}");
        }
    }
}
