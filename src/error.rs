//! The one error type of the store contract.

use std::fmt;

use crate::model::{ConsumerId, GroupId, ProviderId, ResourceClass};

/// What kind of object an [`Error::NotFound`] or [`Error::AlreadyExists`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// A resource provider.
    Provider,
    /// An inventory of a class on a provider.
    Inventory,
    /// A consumer.
    Consumer,
    /// A cell.
    Cell,
    /// A host.
    Host,
    /// A flavor.
    Flavor,
    /// An aggregate.
    Aggregate,
    /// A server group.
    ServerGroup,
    /// A request spec.
    RequestSpec,
    /// An instance.
    Instance,
    /// A listing marker (Nova answers 400 "marker not found").
    Marker,
    /// A resource class (Placement's registry of custom classes).
    ResourceClass,
    /// A trait (Placement's registry of custom traits).
    Trait,
    /// A build lease ([`crate::store::leases`]).
    BuildLease,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Provider => "resource provider",
            Kind::Inventory => "inventory",
            Kind::Consumer => "consumer",
            Kind::Cell => "cell",
            Kind::Host => "host",
            Kind::Flavor => "flavor",
            Kind::Aggregate => "aggregate",
            Kind::ServerGroup => "server group",
            Kind::RequestSpec => "request spec",
            Kind::Instance => "instance",
            Kind::Marker => "marker",
            Kind::ResourceClass => "resource class",
            Kind::Trait => "trait",
            Kind::BuildLease => "build lease",
        })
    }
}

/// Why a write conflicted with the current state.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Conflict {
    /// The tree's generation was not the one the caller read (Placement's
    /// `placement.concurrent_update`). Retryable only after a re-read: read the tree again
    /// and redo the write with the generation found (see [`Error::is_retryable`]).
    Generation {
        /// The tree.
        root: ProviderId,
        /// The generation the caller sent.
        expected: u64,
        /// The generation the store has.
        actual: u64,
    },
    /// The consumer already holds different allocations on this tree: release first.
    ConsumerMismatch {
        /// The consumer.
        consumer: ConsumerId,
        /// The tree.
        root: ProviderId,
    },
    /// The server group already has `max_per_host` members on this tree.
    GroupLimit {
        /// The group.
        group: GroupId,
        /// The tree.
        root: ProviderId,
        /// The limit.
        max_per_host: u32,
    },
    /// An inventory with allocations cannot be removed (`placement.inventory.inuse`).
    InventoryInUse {
        /// The provider.
        provider: ProviderId,
        /// The class.
        class: ResourceClass,
    },
    /// A provider with allocations or children cannot be deleted.
    ProviderInUse {
        /// The provider.
        provider: ProviderId,
    },
    /// A unique name is taken by another object.
    DuplicateName {
        /// The name.
        name: String,
    },
    /// Placement's generation of one provider was not the one the caller sent
    /// (`placement.concurrent_update`): re-read the provider and retry.
    ProviderGeneration {
        /// The provider.
        provider: ProviderId,
        /// The generation the caller sent.
        expected: u64,
        /// The provider's generation.
        actual: u64,
    },
    /// A consumer's generation was not the one the caller sent (`null` when the consumer does
    /// not exist, or when the caller expected it not to).
    ConsumerGeneration {
        /// The consumer.
        consumer: ConsumerId,
        /// The consumer's generation in the store, or `null`.
        expected: String,
        /// What the caller sent, or `null`.
        got: String,
    },
    /// A registry entry (custom resource class or trait) is still used.
    InUse {
        /// What kind of entry.
        kind: Kind,
        /// Its name.
        name: String,
    },
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conflict::Generation { root, expected, actual } => {
                write!(f, "generation of tree {root} is {actual}, not {expected}")
            }
            Conflict::ConsumerMismatch { consumer, root } => {
                write!(f, "consumer {consumer} already holds different allocations on tree {root}")
            }
            Conflict::GroupLimit { group, root, max_per_host } => {
                write!(f, "server group {group} already has {max_per_host} member(s) on tree {root}")
            }
            Conflict::InventoryInUse { provider, class } => {
                write!(f, "inventory {class} on provider {provider} has allocations")
            }
            Conflict::ProviderInUse { provider } => {
                write!(f, "provider {provider} has allocations or children")
            }
            Conflict::DuplicateName { name } => write!(f, "name {name:?} is already taken"),
            Conflict::ProviderGeneration { provider, expected, actual } => {
                write!(f, "generation of resource provider {provider} is {actual}, not {expected}")
            }
            Conflict::ConsumerGeneration { consumer, expected, got } => {
                write!(f, "consumer generation conflict - expected {expected} but got {got} (consumer {consumer})")
            }
            Conflict::InUse { kind, name } => write!(f, "{kind} {name} is in use"),
        }
    }
}

/// Every error a [`Store`](crate::store::Store) returns. Backends translate their own errors
/// into these variants so that callers can act on the meaning, not on the database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The object does not exist.
    #[error("{kind} {id} not found")]
    NotFound {
        /// What kind of object.
        kind: Kind,
        /// Its id (or a description such as `VCPU on provider <uuid>`).
        id: String,
    },
    /// An object with this id exists already.
    #[error("{kind} {id} already exists")]
    AlreadyExists {
        /// What kind of object.
        kind: Kind,
        /// Its id.
        id: String,
    },
    /// A claim did not fit: names the first provider and class in key order that lacked room.
    #[error("not enough {class} on provider {provider}: requested {requested}, used {used} of capacity {capacity}")]
    Capacity {
        /// The provider.
        provider: ProviderId,
        /// The class.
        class: ResourceClass,
        /// The amount the claim asked for.
        requested: i64,
        /// Usage when the claim was evaluated.
        used: i64,
        /// Capacity (`floor((total - reserved) * allocation_ratio)`).
        capacity: i64,
    },
    /// The write conflicts with the current state.
    #[error("conflict: {0}")]
    Conflict(Conflict),
    /// The input is malformed; `field` names what was wrong.
    #[error("invalid {field}: {message}")]
    InvalidInput {
        /// The offending field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The backend cannot be reached. Retryable.
    #[error("{backend} unavailable: {message}")]
    Unavailable {
        /// Which backend.
        backend: &'static str,
        /// Details (never credentials).
        message: String,
    },
    /// The backend did not answer in time. Retryable. For a write the outcome is unknown
    /// unless the backend found out before answering; claims are idempotent, so replaying
    /// the claim (or releasing the consumer) resolves it.
    #[error("{backend} timed out: {message}")]
    Timeout {
        /// Which backend.
        backend: &'static str,
        /// Details.
        message: String,
    },
    /// Any other backend failure.
    #[error("{backend} error: {source}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// The backend's own error (credentials redacted).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// `InvalidInput` for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidInput { field: field.into(), message: message.into() }
    }

    /// `NotFound` of `kind`.
    pub fn not_found(kind: Kind, id: impl fmt::Display) -> Self {
        Error::NotFound { kind, id: id.to_string() }
    }

    /// `AlreadyExists` of `kind`.
    pub fn already_exists(kind: Kind, id: impl fmt::Display) -> Self {
        Error::AlreadyExists { kind, id: id.to_string() }
    }

    /// `Backend` wrapping any error. A client library may quote the URL it was given in
    /// its message; if the message holds a credential (see
    /// [`redact_text`](crate::store::redact_text)) it is replaced by its masked text, so a
    /// `Backend` error never shows a password (the original error is then dropped).
    pub fn backend(backend: &'static str, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        let source = source.into();
        let shown = source.to_string();
        let masked = crate::store::redact_text(&shown);
        let source = if masked == shown { source } else { masked.into() };
        Error::Backend { backend, source }
    }

    /// Whether trying again may succeed (the [`Store`](crate::store::Store) contract, line 15):
    ///
    /// * `Unavailable` and `Timeout`: the backend was unreachable or slow; the same call may
    ///   succeed when repeated as is (a timed-out write's outcome is unknown, and claims and
    ///   releases are idempotent, so repeating one tells what happened).
    /// * [`Conflict::Generation`]: retryable only after a re-read. The tree moved under an
    ///   optimistic write; repeating a `set_inventories`/`set_traits`/`set_aggregates` call
    ///   with the same stale generation fails again, so the caller reads the tree, redoes its
    ///   change from what it finds and sends the new generation. A claim carries no
    ///   generation and reads the tree itself, so for a claim repeating the call is the
    ///   re-read.
    ///
    /// Everything else fails again on retry until something else changes.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Timeout { .. } | Error::Conflict(Conflict::Generation { .. }))
    }
}

/// Short for `std::result::Result<T, unicell::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
