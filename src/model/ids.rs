//! Typed identifiers.
//!
//! Every entity that Placement or Nova names by UUID gets its own newtype so that a
//! provider id can never be passed where a consumer id is expected. All of them print
//! and parse as the canonical hyphenated UUID, which is also how every backend stores
//! them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Error;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh random (v4) id.
            pub fn new_v4() -> Self {
                Self(Uuid::new_v4())
            }

            /// The underlying UUID.
            pub fn uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|e| Error::invalid($field, format!("{s:?} is not a UUID: {e}")))
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }
    };
}

uuid_id!(
    /// A resource provider (a compute node root, a NUMA cell, an SR-IOV device, ...).
    ProviderId,
    "provider"
);
uuid_id!(
    /// A consumer of resources. For instances it is the instance's uuid.
    ConsumerId,
    "consumer"
);
uuid_id!(
    /// An instance (server).
    InstanceId,
    "instance"
);
uuid_id!(
    /// A cell.
    CellId,
    "cell"
);
uuid_id!(
    /// A Placement aggregate (also a Nova host aggregate).
    AggregateId,
    "aggregate"
);
uuid_id!(
    /// A server group.
    GroupId,
    "server_group"
);

impl From<InstanceId> for ConsumerId {
    fn from(i: InstanceId) -> Self {
        ConsumerId(i.0)
    }
}

/// A flavor id. Nova's flavor ids are free-form strings (`"1"`, `"m1.small"`, a UUID).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Debug)]
#[serde(try_from = "String", into = "String")]
pub struct FlavorId(String);

impl FlavorId {
    /// Validates a flavor id: 1 to 255 printable characters without whitespace.
    pub fn new(s: impl Into<String>) -> Result<Self, Error> {
        let s = s.into();
        if s.is_empty() || s.len() > 255 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::invalid(
                "flavor_id",
                format!("{s:?} must be 1 to 255 printable characters without whitespace"),
            ));
        }
        Ok(Self(s))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for FlavorId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl From<FlavorId> for String {
    fn from(f: FlavorId) -> String {
        f.0
    }
}

impl fmt::Display for FlavorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for FlavorId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}
