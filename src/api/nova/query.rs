//! Query strings as Nova reads them (webob's MultiDict: a key may repeat and the last value
//! wins for single-valued parameters), and Nova's paging rules
//! (`nova.api.openstack.common.get_limit_and_marker`, `_get_collection_links`).

use std::collections::BTreeMap;

use serde_json::json;

use super::{NovaCtx, NovaError};
use crate::model::MAX_LIMIT;

/// The parsed query string, in order.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Parses a raw query string (`None`: no query).
    pub fn parse(raw: Option<&str>) -> Query {
        let pairs = raw
            .map(|q| url::form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
            .unwrap_or_default();
        Query { pairs }
    }

    /// The last value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order.
    pub fn pairs_of(&self, key: &str) -> Vec<&str> {
        self.pairs.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
    }

    /// Whether `key` is present.
    pub fn has(&self, key: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == key)
    }

    /// The distinct keys.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        let mut seen = std::collections::BTreeSet::new();
        self.pairs.iter().filter_map(move |(k, _)| seen.insert(k.as_str()).then_some(k.as_str()))
    }

    /// Nova's `limit` and `marker`: `limit` a non-negative integer (400 otherwise), clamped
    /// at the maximum page size; no `limit` means the maximum.
    pub fn limit_and_marker(&self) -> Result<(u32, Option<&str>), NovaError> {
        let limit = match self.get("limit") {
            None => MAX_LIMIT,
            Some(raw) => parse_non_negative("limit", raw)?.min(u64::from(MAX_LIMIT)) as u32,
        };
        Ok((limit, self.get("marker")))
    }

    /// `servers_links` / `flavors_links`: a `next` link when the page is full
    /// (`len == min(limit, max_limit)`, and not zero), with the other query parameters
    /// sorted and `marker` set to the last item.
    pub fn next_links(
        &self,
        ctx: &NovaCtx,
        collection: &str,
        len: usize,
        last: Option<&str>,
    ) -> Option<serde_json::Value> {
        let (limit, _) = self.limit_and_marker().ok()?;
        let last = last?;
        if limit == 0 || len != limit as usize {
            return None;
        }
        let mut params: BTreeMap<&str, &str> = BTreeMap::new();
        for (k, v) in &self.pairs {
            params.insert(k, v);
        }
        params.insert("marker", last);
        let query = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
        Some(json!([{"rel": "next", "href": format!("{}/v2.1/{collection}?{query}", ctx.base)}]))
    }
}

/// A non-negative integer parameter, as Nova's `non_negative_integer` schema.
pub fn parse_non_negative(name: &str, raw: &str) -> Result<u64, NovaError> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NovaError::bad_request(format!(
            "Invalid input for query parameters {name}. Value: {}. '{}' does not match '^[0-9]*$'",
            raw.escape_default(),
            raw.escape_default()
        )));
    }
    // Too many digits for u64: clamp, it is above any limit anyway.
    Ok(raw.parse::<u64>().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert_eq!(Query::parse(None).limit_and_marker().unwrap(), (1000, None));
        assert_eq!(Query::parse(Some("limit=5&marker=abc")).limit_and_marker().unwrap(), (5, Some("abc")));
        assert_eq!(Query::parse(Some("limit=0")).limit_and_marker().unwrap().0, 0);
        assert_eq!(Query::parse(Some("limit=99999999999999999999999")).limit_and_marker().unwrap().0, 1000);
        for bad in ["limit=-1", "limit=abc", "limit=", "limit=1.5"] {
            assert_eq!(Query::parse(Some(bad)).limit_and_marker().unwrap_err().status.as_u16(), 400, "{bad}");
        }
        // The last value wins, as webob's MultiDict.
        assert_eq!(Query::parse(Some("limit=5&limit=7")).limit_and_marker().unwrap().0, 7);
    }
}
