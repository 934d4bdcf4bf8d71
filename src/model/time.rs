//! Timestamps.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

/// A point in time with microsecond precision, stored as microseconds since the Unix epoch.
///
/// Microseconds (not nanoseconds) because that is what MariaDB `DATETIME(6)`, PostgreSQL
/// `timestamp` and CQL can all hold without rounding, so an instance's `created_at` sorts the
/// same on every backend. Serialized as RFC 3339 text (`2026-11-20T23:06:43.123456Z`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The earliest representable time (the epoch).
    pub const EPOCH: Timestamp = Timestamp(0);

    /// Now, from the system clock.
    pub fn now() -> Self {
        let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        Self(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
    }

    /// From microseconds since the epoch. Negative values are clamped to the epoch.
    pub fn from_micros(us: i64) -> Self {
        Self(us.max(0))
    }

    /// Microseconds since the epoch.
    pub fn as_micros(&self) -> i64 {
        self.0
    }

    /// This time plus `d` (saturating).
    pub fn plus(&self, d: Duration) -> Self {
        Self(self.0.saturating_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)))
    }

    /// This time minus `d` (saturating at the epoch).
    pub fn minus(&self, d: Duration) -> Self {
        Self::from_micros(self.0.saturating_sub(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)))
    }

    /// Parses RFC 3339 text such as `2026-11-20T23:06:43.123456Z`.
    pub fn parse_rfc3339(s: &str) -> Result<Self, Error> {
        let t = humantime::parse_rfc3339_weak(s)
            .map_err(|e| Error::invalid("timestamp", format!("{s:?} is not an RFC 3339 time: {e}")))?;
        let d =
            t.duration_since(UNIX_EPOCH).map_err(|_| Error::invalid("timestamp", format!("{s:?} is before 1970")))?;
        Ok(Self(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)))
    }

    fn system_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.0.max(0) as u64)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_rfc3339_micros(self.system_time()).fmt(f)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip_keeps_micros() {
        let t = Timestamp::from_micros(1_795_000_000_123_456);
        let s = t.to_string();
        assert_eq!(Timestamp::parse_rfc3339(&s).unwrap(), t);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
    }
}
