//! The SQL store's URL: which databases it names and the options.
//!
//! ```text
//! mysql://root@127.0.0.1:3306/unicell?cells=4          API db `unicell`, cells `unicell_cell0..3`
//! mysql://root@db0/unicell?cell_url=mysql%3A%2F%2Froot%40db1%2Fc1&cell_url=...   one URL per cell
//! postgres://postgres@127.0.0.1:5432/unicell?cells=8   the same on PostgreSQL
//! mysql://root@127.0.0.1/unicell?mode=single           everything in one database
//! ```
//!
//! `mariadb://` is an alias of `mysql://`, `postgresql://` of `postgres://`. Options (query
//! parameters): `cells=N` (default 2) or repeated `cell_url=`; `mode=cells|single`;
//! `pool_size` (API pool, default 8) and `cell_pool_size` (each cell pool, default 4):
//! sized for a 2-core machine, where more connections only add context switches;
//! `list_strategy=concurrent|sequential` (default concurrent, see the listing in `instances.rs`);
//! `down_cell=skip|fail` (default skip, Nova's `list_records_by_skipping_down_cells=True`;
//! a partial listing, `ListQuery::partial`, skips and stubs a down cell whatever this says);
//! `cell_timeout` (default `60s`, Nova's hard-coded `CELL_TIMEOUT`); `claim_retries`
//! (default 10, Placement's `allocation_conflict_retry_count`); `create=false` to refuse to
//! create missing databases. Passwords are redacted wherever the URL is shown.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::store::{Scheme, StoreUrl};

use super::conn::Dialect;

/// How listings query the cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListStrategy {
    /// First batches of all cells in parallel (unicell's default).
    Concurrent,
    /// One cell after another, as Nova's generators are pulled.
    Sequential,
}

/// What a listing that did not ask for partial results does when a cell database fails or
/// times out (the [`Store`](crate::store::Store) contract, line 17).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownCell {
    /// Log a warning and return what the other cells have (Nova's default), naming the
    /// skipped cell database in `InstancePage::unreachable`.
    Skip,
    /// Fail the request (`Unavailable` / `Timeout`) naming the cell database.
    Fail,
}

/// Whether cells have their own databases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// API database plus one database per cell (Nova's cells v2).
    Cells,
    /// Everything in one database.
    Single,
}

/// The parsed options of a SQL store URL.
#[derive(Clone, Debug)]
pub struct SqlOptions {
    /// Cells or single mode.
    pub mode: Mode,
    /// Listing strategy.
    pub list_strategy: ListStrategy,
    /// Down-cell policy.
    pub down_cell: DownCell,
    /// Per-cell timeout of a listing query.
    pub cell_timeout: Duration,
    /// Generation-conflict retries of a claim.
    pub claim_retries: u32,
    /// API pool size.
    pub pool_size: u32,
    /// Cell pool size.
    pub cell_pool_size: u32,
    /// Create missing databases.
    pub create: bool,
}

impl SqlOptions {
    /// The options of `url` (`mode` as [`targets`] found it).
    pub(crate) fn parse(url: &StoreUrl, mode: Mode) -> Result<SqlOptions> {
        Ok(SqlOptions {
            mode,
            list_strategy: match url.param("list_strategy").as_deref() {
                None | Some("concurrent") => ListStrategy::Concurrent,
                Some("sequential") => ListStrategy::Sequential,
                Some(o) => {
                    return Err(Error::invalid(
                        "store url list_strategy",
                        format!("{o:?} must be concurrent or sequential"),
                    ));
                }
            },
            down_cell: match url.param("down_cell").as_deref() {
                None | Some("skip") => DownCell::Skip,
                Some("fail") => DownCell::Fail,
                Some(o) => {
                    return Err(Error::invalid("store url down_cell", format!("{o:?} must be skip or fail")));
                }
            },
            cell_timeout: match url.param("cell_timeout") {
                None => Duration::from_secs(60),
                Some(s) => humantime::parse_duration(&s)
                    .map_err(|e| Error::invalid("store url cell_timeout", format!("{s:?}: {e}")))?,
            },
            claim_retries: param_u32(url, "claim_retries", 10, 0)?,
            pool_size: param_u32(url, "pool_size", 8, 1)?,
            cell_pool_size: param_u32(url, "cell_pool_size", 4, 1)?,
            create: param_bool(url, "create", true)?,
        })
    }
}

fn param_bool(url: &StoreUrl, key: &str, default: bool) -> Result<bool> {
    match url.param(key).as_deref() {
        None => Ok(default),
        Some("true" | "1" | "yes") => Ok(true),
        Some("false" | "0" | "no") => Ok(false),
        Some(other) => Err(Error::invalid(format!("store url {key}"), format!("{other:?} is not a boolean"))),
    }
}

fn param_u32(url: &StoreUrl, key: &str, default: u32, min: u32) -> Result<u32> {
    match url.param(key) {
        None => Ok(default),
        Some(s) => match s.parse::<u32>() {
            Ok(v) if v >= min => Ok(v),
            _ => Err(Error::invalid(format!("store url {key}"), format!("{s:?} must be an integer >= {min}"))),
        },
    }
}

const OUR_PARAMS: &[&str] = &[
    "cells",
    "cell_url",
    "mode",
    "pool_size",
    "cell_pool_size",
    "list_strategy",
    "down_cell",
    "cell_timeout",
    "claim_retries",
    "create",
];

/// Where one database is: the server and the database name.
#[derive(Clone)]
pub(crate) struct Target {
    pub(super) dialect: Dialect,
    pub(super) url: url::Url,
    pub(super) database: String,
}

impl Target {
    pub(super) fn parse(store_url: &StoreUrl) -> Result<Target> {
        let dialect = match store_url.scheme() {
            Scheme::MySql => Dialect::MySql,
            Scheme::Postgres => Dialect::Postgres,
            other => {
                return Err(Error::invalid("store url", format!("scheme {other} is not a SQL scheme")));
            }
        };
        let url = store_url.expose();
        let database = url.path().trim_start_matches('/').to_string();
        if database.is_empty()
            || !database.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || database.len() > 48
        {
            return Err(Error::invalid(
                "store url",
                format!(
                    "database name {database:?} must be 1 to 48 characters of [A-Za-z0-9_] \
                     (it is also the prefix of the cell databases)"
                ),
            ));
        }
        let mut clean = url.clone();
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| !OUR_PARAMS.contains(&k.as_ref()))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        clean.set_query(None);
        if !kept.is_empty() {
            clean.query_pairs_mut().extend_pairs(kept);
        }
        Ok(Target { dialect, url: clean, database })
    }

    pub(super) fn with_database(&self, database: String) -> Target {
        let mut t = self.clone();
        t.url.set_path(&format!("/{database}"));
        t.database = database;
        t
    }

    pub(crate) fn label(&self) -> String {
        StoreUrl::parse(self.url.as_str()).map(|u| u.redacted()).unwrap_or_else(|_| "<unparsable url>".into())
    }
}

/// The databases a URL names: the API database and the cell databases (the same one in
/// single mode).
pub(crate) fn targets(url: &StoreUrl) -> Result<(Target, Vec<Target>, Mode)> {
    let api = Target::parse(url)?;
    let mode = match url.param("mode").as_deref() {
        None | Some("cells") => Mode::Cells,
        Some("single") => Mode::Single,
        Some(other) => {
            return Err(Error::invalid("store url mode", format!("{other:?} must be cells or single")));
        }
    };
    if mode == Mode::Single {
        return Ok((api.clone(), vec![api], mode));
    }
    let explicit: Vec<String> = url.params("cell_url");
    let cells = if explicit.is_empty() {
        let n = param_u32(url, "cells", 2, 1)?;
        if n > 256 {
            return Err(Error::invalid("store url cells", "at most 256 cells"));
        }
        (0..n).map(|i| api.with_database(format!("{}_cell{i}", api.database))).collect()
    } else {
        let mut v = Vec::new();
        for s in &explicit {
            let u = StoreUrl::parse(s)?;
            let t = Target::parse(&u)?;
            if t.dialect != api.dialect {
                return Err(Error::invalid("store url cell_url", format!("{u} is not the API database's dialect")));
            }
            v.push(t);
        }
        v
    };
    Ok((api, cells, mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_redact() {
        let u = StoreUrl::parse("mysql://root:hunter2@127.0.0.1:3306/nova?cells=3&pool_size=2").unwrap();
        let (api, cells, mode) = targets(&u).unwrap();
        assert_eq!(mode, Mode::Cells);
        assert_eq!(api.database, "nova");
        assert_eq!(cells.len(), 3);
        assert_eq!(cells[2].database, "nova_cell2");
        assert!(!cells[2].label().contains("hunter2"));
        assert!(cells[2].label().contains("nova_cell2"));
        assert!(!api.url.as_str().contains("pool_size"));
        let u = StoreUrl::parse(
            "postgres://p:s3cret@h/api?cell_url=postgres%3A%2F%2Fp%3As3cret%40h2%2Fc1&cell_url=postgres%3A%2F%2Fh3%2Fc2",
        )
        .unwrap();
        let (_, cells, _) = targets(&u).unwrap();
        assert_eq!(cells.len(), 2);
        assert_eq!(cells[0].database, "c1");
        assert_eq!(cells[0].url.host_str(), Some("h2"));
        assert!(!cells[0].label().contains("s3cret"));
        assert!(!u.redacted().contains("s3cret"), "{}", u.redacted());
        assert!(u.redacted().contains("h2"));
        let (_, cells, mode) = targets(&StoreUrl::parse("mariadb://root@h/x?mode=single").unwrap()).unwrap();
        assert_eq!((cells.len(), mode), (1, Mode::Single));
        assert!(targets(&StoreUrl::parse("mysql://root@h/bad-name").unwrap()).is_err());
        assert!(targets(&StoreUrl::parse("mysql://root@h/x?mode=weird").unwrap()).is_err());
    }
}
