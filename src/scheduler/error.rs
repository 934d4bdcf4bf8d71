//! Why scheduling failed: [`ScheduleError`] and the operator-readable [`NoValidHostReason`].
//!
//! Nova keeps `NoValidHost` vague on purpose and leaves operators to dig per-filter counts
//! out of INFO logs. Here the reason is a value: which stage removed how many hosts and why
//! (missing resource class, trait, aggregate, each filter), and every claim that failed with
//! the store's own explanation (class and provider that did not fit, group limit, ...). Its
//! `Display` is the text an operator reads in the instance fault.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{AggregateId, GroupId, InstanceId, ProviderId, ResourceClass, Trait};

/// Why a host was not a candidate before filters ran (the Placement-like stage and the
/// request scope).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Rejection {
    /// The host is not in the requested cell.
    OtherCell,
    /// The host's cell is disabled.
    CellDisabled,
    /// The request names another host or node (`requested_destination`).
    NotRequestedHost,
    /// The host is in `ignore_hosts`.
    Ignored,
    /// The request forces other hosts (`force_hosts`).
    NotForced,
    /// No provider of the tree has inventory of this class.
    NoInventory(ResourceClass),
    /// Providers have this class, but none has enough free (or the amount breaks its
    /// `min_unit`/`max_unit`/`step_size`).
    NotEnough(ResourceClass),
    /// A required trait is on no provider that could serve the request.
    MissingTrait(Trait),
    /// The only providers able to serve a class carry this forbidden trait.
    ForbiddenTrait(Trait),
    /// The tree is not in the requested aggregates (`member_of`) or is in a forbidden one.
    Aggregates,
    /// No single provider satisfies numbered request group `suffix`.
    NumberedGroup(String),
    /// Each part fits alone, but no combination of providers satisfies the whole request
    /// (shared capacity, `group_policy=isolate`, traits spread over unused providers).
    NoCombination,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::OtherCell => f.write_str("not in the requested cell"),
            Rejection::CellDisabled => f.write_str("cell disabled"),
            Rejection::NotRequestedHost => f.write_str("not the requested host/node"),
            Rejection::Ignored => f.write_str("in ignore_hosts"),
            Rejection::NotForced => f.write_str("not in force_hosts"),
            Rejection::NoInventory(c) => write!(f, "no {c} inventory"),
            Rejection::NotEnough(c) => write!(f, "not enough free {c}"),
            Rejection::MissingTrait(t) => write!(f, "missing required trait {t}"),
            Rejection::ForbiddenTrait(t) => write!(f, "has forbidden trait {t}"),
            Rejection::Aggregates => f.write_str("not in the requested aggregates"),
            Rejection::NumberedGroup(s) => {
                write!(f, "no single provider satisfies request group {s:?}")
            }
            Rejection::NoCombination => f.write_str("no combination of providers satisfies the whole request"),
        }
    }
}

/// One stage of the pipeline for the instance that could not be placed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageCount {
    /// `scope`, `resources` or a filter's name (`ComputeFilter`, ...).
    pub stage: String,
    /// Hosts entering the stage.
    pub before: usize,
    /// Hosts it removed.
    pub removed: usize,
    /// For the scope and resources stages, how many hosts were removed for each reason.
    /// (In JSON a list of `{"reason": ..., "hosts": n}`: a reason is not a string key.)
    #[serde(with = "why_as_list")]
    pub why: BTreeMap<Rejection, usize>,
}

/// Why a claim on a host failed, as the store explained it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClaimFailureCause {
    /// Not enough of `class` on `provider` (another scheduler got there first).
    Capacity {
        /// The provider.
        provider: ProviderId,
        /// The class.
        class: ResourceClass,
        /// Amount asked.
        requested: i64,
        /// Usage seen by the store.
        used: i64,
        /// Capacity.
        capacity: i64,
    },
    /// The server group already has its maximum of members on the host.
    GroupLimit {
        /// The group.
        group: GroupId,
        /// Its per-host limit.
        max_per_host: u32,
    },
    /// The consumer already holds different allocations on that tree.
    ConsumerMismatch,
    /// The provider or inventory disappeared.
    Gone(String),
    /// The store rejected the amounts (units changed under the snapshot).
    Invalid(String),
    /// Any other conflict.
    Other(String),
    /// The part of the store holding the tree did not answer (`Unavailable` or `Timeout`):
    /// the scheduler moved on to a host elsewhere.
    Unavailable(String),
}

impl fmt::Display for ClaimFailureCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClaimFailureCause::Capacity { provider, class, requested, used, capacity } => write!(
                f,
                "not enough {class} on provider {provider} (requested {requested}, used {used} of {capacity})"
            ),
            ClaimFailureCause::GroupLimit { group, max_per_host } => {
                write!(f, "server group {group} already has {max_per_host} member(s) there")
            }
            ClaimFailureCause::ConsumerMismatch => {
                f.write_str("the instance already holds different allocations there")
            }
            ClaimFailureCause::Gone(s) => write!(f, "gone: {s}"),
            ClaimFailureCause::Invalid(s) => write!(f, "invalid: {s}"),
            ClaimFailureCause::Other(s) => f.write_str(s),
            ClaimFailureCause::Unavailable(s) => write!(f, "store unreachable: {s}"),
        }
    }
}

/// A failed claim during one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimFailure {
    /// The instance the claim was for.
    pub instance: InstanceId,
    /// The host.
    pub host: String,
    /// The host's root provider.
    pub root: ProviderId,
    /// Why the store refused it.
    pub cause: ClaimFailureCause,
}

/// The structured reason of a `NoValidHost`: everything an operator needs to see why a
/// request failed without reading code or DEBUG logs. Serializable (serde), so that it can
/// be stored with a fault, sent over an API or written to a report; it names hosts, so only
/// admins may read it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoValidHostReason {
    /// The instance that could not be placed.
    pub instance: Option<InstanceId>,
    /// Its index in the request (0-based).
    pub instance_index: usize,
    /// Instances in the request.
    pub num_instances: usize,
    /// A special condition, if any (`No such host - host: x`, ...).
    pub message: Option<String>,
    /// Hosts the scheduler knew when it ranked that instance.
    pub hosts_known: usize,
    /// The stages, in order, with the hosts each removed.
    pub stages: Vec<StageCount>,
    /// Hosts that passed every stage for that instance.
    pub hosts_passed: usize,
    /// Claims tried during the whole request.
    pub claims_tried: usize,
    /// Every claim that failed during the request, with the store's reason.
    pub claim_failures: Vec<ClaimFailure>,
    /// True when the claim budget (`max_claim_attempts`) ran out before the host list.
    pub claim_budget_exhausted: bool,
    /// Claims made for earlier instances of the request and released (all or nothing).
    pub released_claims: usize,
    /// Aggregates the request required, for the message (`member_of`).
    pub member_of: Vec<Vec<AggregateId>>,
}

/// `StageCount::why` as a list of pairs.
mod why_as_list {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Rejection;

    #[derive(Serialize, Deserialize)]
    struct Entry {
        reason: Rejection,
        hosts: usize,
    }

    pub fn serialize<S: Serializer>(why: &BTreeMap<Rejection, usize>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(why.iter().map(|(r, n)| Entry { reason: r.clone(), hosts: *n }))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<Rejection, usize>, D::Error> {
        Ok(Vec::<Entry>::deserialize(d)?.into_iter().map(|e| (e.reason, e.hosts)).collect())
    }
}

impl NoValidHostReason {
    /// A one-line summary for the fault message: the stage that removed the last hosts, or
    /// the claims that failed.
    pub fn summary(&self) -> String {
        if let Some(m) = &self.message {
            return m.clone();
        }
        if self.hosts_known == 0 {
            return "the scheduler knows no compute hosts".into();
        }
        if self.hosts_passed == 0 {
            if let Some(stage) = self.stages.iter().rev().find(|s| s.removed > 0) {
                let top = stage
                    .why
                    .iter()
                    .max_by_key(|(_, n)| **n)
                    .map(|(r, n)| format!(" (most: {r}, {n})"))
                    .unwrap_or_default();
                return format!(
                    "{} removed the last {} of {} host(s){top}",
                    stage.stage, stage.removed, self.hosts_known
                );
            }
            return "no host passed".into();
        }
        format!("{} host(s) passed the filters but {} claim(s) failed", self.hosts_passed, self.claim_failures.len())
    }
}

impl fmt::Display for NoValidHostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "No valid host was found for instance {} of {}", self.instance_index + 1, self.num_instances)?;
        if let Some(i) = self.instance {
            write!(f, " ({i})")?;
        }
        write!(f, ": {}.", self.summary())?;
        write!(f, "\n  hosts known: {}", self.hosts_known)?;
        for s in &self.stages {
            write!(
                f,
                "\n  {}: {} -> {} (removed {})",
                s.stage,
                s.before,
                s.before - s.removed.min(s.before),
                s.removed
            )?;
            if !s.why.is_empty() {
                let parts: Vec<String> = s.why.iter().map(|(r, n)| format!("{r}: {n}")).collect();
                write!(f, " [{}]", parts.join("; "))?;
            }
        }
        write!(f, "\n  claims: {} tried, {} failed", self.claims_tried, self.claim_failures.len())?;
        if self.claim_budget_exhausted {
            f.write_str(" (claim budget exhausted)")?;
        }
        for c in self.claim_failures.iter().take(20) {
            write!(f, "\n    {} for {}: {}", c.host, c.instance, c.cause)?;
        }
        if self.claim_failures.len() > 20 {
            write!(f, "\n    ... {} more", self.claim_failures.len() - 20)?;
        }
        if self.released_claims > 0 {
            write!(f, "\n  released {} claim(s) made for earlier instances (all or nothing)", self.released_claims)?;
        }
        Ok(())
    }
}

/// Why [`Scheduler::select_destinations`](crate::scheduler::Scheduler::select_destinations)
/// failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// No host could be found and claimed for every instance; nothing stays claimed.
    #[error("No valid host was found. {}", .reason.summary())]
    NoValidHost {
        /// The structured reason (its `Display` is the full operator text).
        reason: Box<NoValidHostReason>,
    },
    /// The request itself is malformed (bad flavor extra specs, image traits, no
    /// instances, duplicate instance uuids). Retrying will not help.
    #[error("invalid request: {0}")]
    InvalidRequest(crate::Error),
    /// The store failed; every claim the request made was released (best effort).
    #[error("store error while scheduling: {0}")]
    Store(#[from] crate::Error),
}

impl ScheduleError {
    /// The NoValidHost reason, if that is what this is.
    pub fn no_valid_host(&self) -> Option<&NoValidHostReason> {
        match self {
            ScheduleError::NoValidHost { reason } => Some(reason),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_valid_host_reason_round_trips_through_json() {
        let root = ProviderId::new_v4();
        let reason = NoValidHostReason {
            instance: Some(InstanceId::new_v4()),
            instance_index: 1,
            num_instances: 3,
            message: None,
            hosts_known: 4,
            stages: vec![StageCount {
                stage: "resources".into(),
                before: 4,
                removed: 3,
                why: BTreeMap::from([
                    (Rejection::NoInventory(ResourceClass::Vcpu), 1),
                    (Rejection::OtherCell, 1),
                    (Rejection::NumberedGroup("1".into()), 1),
                ]),
            }],
            hosts_passed: 1,
            claims_tried: 1,
            claim_failures: vec![ClaimFailure {
                instance: InstanceId::new_v4(),
                host: "cmp-1".into(),
                root,
                cause: ClaimFailureCause::Capacity {
                    provider: root,
                    class: ResourceClass::MemoryMb,
                    requested: 2048,
                    used: 1024,
                    capacity: 2048,
                },
            }],
            claim_budget_exhausted: false,
            released_claims: 1,
            member_of: vec![],
        };
        let json = serde_json::to_string(&reason).unwrap();
        assert!(json.contains("\"reason\":{\"no_inventory\":\"VCPU\"}"), "{json}");
        let back: NoValidHostReason = serde_json::from_str(&json).unwrap();
        assert_eq!(back, reason);
    }
}
