//! Instances and instance listing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::model::{CellId, FlavorId, InstanceId, Timestamp};

/// Nova's `vm_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum VmState {
    /// Being scheduled and built.
    Building,
    /// Running.
    Active,
    /// Powered off.
    Stopped,
    /// Paused.
    Paused,
    /// Suspended.
    Suspended,
    /// In rescue mode.
    Rescued,
    /// Resized, awaiting confirmation.
    Resized,
    /// Shelved.
    Shelved,
    /// Shelved and offloaded.
    ShelvedOffloaded,
    /// Soft-deleted (restorable).
    SoftDeleted,
    /// Deleted.
    Deleted,
    /// Failed; see the instance's fault.
    Error,
}

impl VmState {
    /// All states.
    pub const ALL: &'static [VmState] = &[
        VmState::Building,
        VmState::Active,
        VmState::Stopped,
        VmState::Paused,
        VmState::Suspended,
        VmState::Rescued,
        VmState::Resized,
        VmState::Shelved,
        VmState::ShelvedOffloaded,
        VmState::SoftDeleted,
        VmState::Deleted,
        VmState::Error,
    ];

    /// The snake_case name (`building`, `active`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            VmState::Building => "building",
            VmState::Active => "active",
            VmState::Stopped => "stopped",
            VmState::Paused => "paused",
            VmState::Suspended => "suspended",
            VmState::Rescued => "rescued",
            VmState::Resized => "resized",
            VmState::Shelved => "shelved",
            VmState::ShelvedOffloaded => "shelved_offloaded",
            VmState::SoftDeleted => "soft_deleted",
            VmState::Deleted => "deleted",
            VmState::Error => "error",
        }
    }

    /// Parses a state name.
    pub fn parse(s: &str) -> Result<Self, Error> {
        VmState::ALL
            .iter()
            .copied()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| Error::invalid("vm_state", format!("unknown vm_state {s:?}")))
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Nova's `task_state` (the subset this scheduler drives).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TaskState {
    /// Waiting for the scheduler.
    Scheduling,
    /// Networking being set up.
    Networking,
    /// Block devices being mapped.
    BlockDeviceMapping,
    /// The hypervisor is spawning it.
    Spawning,
    /// Being deleted.
    Deleting,
}

impl TaskState {
    /// The snake_case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            TaskState::Scheduling => "scheduling",
            TaskState::Networking => "networking",
            TaskState::BlockDeviceMapping => "block_device_mapping",
            TaskState::Spawning => "spawning",
            TaskState::Deleting => "deleting",
        }
    }

    /// Parses a task state name.
    pub fn parse(s: &str) -> Result<Self, Error> {
        [
            TaskState::Scheduling,
            TaskState::Networking,
            TaskState::BlockDeviceMapping,
            TaskState::Spawning,
            TaskState::Deleting,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
        .ok_or_else(|| Error::invalid("task_state", format!("unknown task_state {s:?}")))
    }
}

/// Why an instance is in ERROR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// HTTP-like code (500 for NoValidHost, as in Nova).
    pub code: u16,
    /// One-line message.
    pub message: String,
    /// Details for operators (filter counts, claims tried, the last build error).
    #[serde(default)]
    pub details: String,
    /// When the fault was recorded.
    pub created_at: Timestamp,
}

/// An instance (server).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// Its uuid.
    pub uuid: InstanceId,
    /// Display name.
    pub name: String,
    /// Owning project.
    pub project_id: String,
    /// Owning user.
    pub user_id: String,
    /// Cell, once scheduled.
    #[serde(default)]
    pub cell: Option<CellId>,
    /// Service host, once scheduled.
    #[serde(default)]
    pub host: Option<String>,
    /// Compute node, once scheduled.
    #[serde(default)]
    pub node: Option<String>,
    /// Flavor.
    pub flavor: FlavorId,
    /// VM state.
    pub vm_state: VmState,
    /// Task state.
    #[serde(default)]
    pub task_state: Option<TaskState>,
    /// Creation time: the first sort key of every listing. Immutable.
    pub created_at: Timestamp,
    /// Last update time (what `changes_since` compares).
    pub updated_at: Timestamp,
    /// When it first became active.
    #[serde(default)]
    pub launched_at: Option<Timestamp>,
    /// Soft-deleted: hidden from listings unless asked for.
    #[serde(default)]
    pub deleted: bool,
    /// Availability zone.
    #[serde(default)]
    pub availability_zone: Option<String>,
    /// Metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Tags.
    #[serde(default)]
    pub tags: BTreeSet<String>,
    /// Fault when in ERROR.
    #[serde(default)]
    pub fault: Option<Fault>,
    /// Attributes of the boot request that the scheduler does not read but the compute
    /// API shows (Nova's `instance_system_metadata` and the instance columns unicell does
    /// not model one by one): `image_ref`, `description`, `key_name`, `hostname`,
    /// `reservation_id`, `launch_index`, ... Written at create time; never shown as user
    /// metadata. Backends store it with the instance.
    #[serde(default)]
    pub system_metadata: BTreeMap<String, String>,
}

impl Instance {
    /// A new instance in `building`/`scheduling`, created now.
    pub fn new_building(uuid: InstanceId, name: &str, project_id: &str, user_id: &str, flavor: FlavorId) -> Self {
        let now = Timestamp::now();
        Instance {
            uuid,
            name: name.to_string(),
            project_id: project_id.to_string(),
            user_id: user_id.to_string(),
            cell: None,
            host: None,
            node: None,
            flavor,
            vm_state: VmState::Building,
            task_state: Some(TaskState::Scheduling),
            created_at: now,
            updated_at: now,
            launched_at: None,
            deleted: false,
            availability_zone: None,
            metadata: BTreeMap::new(),
            tags: BTreeSet::new(),
            fault: None,
            system_metadata: BTreeMap::new(),
        }
    }

    /// Checks names and sizes before a create.
    pub fn validate(&self) -> Result<(), Error> {
        if self.name.len() > 255 || self.name.chars().any(char::is_control) {
            return Err(Error::invalid("instance.name", "must be at most 255 printable characters"));
        }
        for (field, v) in [("instance.project_id", &self.project_id), ("instance.user_id", &self.user_id)] {
            if v.is_empty() || v.len() > 255 {
                return Err(Error::invalid(field, "must be 1 to 255 characters"));
            }
        }
        if self.tags.len() > 50 {
            return Err(Error::invalid("instance.tags", "at most 50 tags"));
        }
        for t in &self.tags {
            if t.is_empty() || t.len() > 60 || t.contains(',') || t.contains('/') {
                return Err(Error::invalid(
                    "instance.tags",
                    format!("{t:?} must be 1 to 60 characters without ',' or '/'"),
                ));
            }
        }
        Ok(())
    }

    /// The listing sort key: created_at descending, then uuid descending. Sorting ascending
    /// by this key gives Nova's default order.
    pub fn sort_key(&self) -> SortKey {
        SortKey { created_at: self.created_at, uuid: self.uuid }
    }

    /// Applies a patch and bumps `updated_at` (never backwards).
    pub fn apply(&mut self, patch: &InstancePatch, now: Timestamp) {
        if let Some(v) = patch.vm_state {
            self.vm_state = v;
        }
        if let Some(v) = patch.task_state {
            self.task_state = v;
        }
        if let Some(v) = &patch.cell {
            self.cell = *v;
        }
        if let Some(v) = &patch.host {
            self.host = v.clone();
        }
        if let Some(v) = &patch.node {
            self.node = v.clone();
        }
        if let Some(v) = patch.launched_at {
            self.launched_at = v;
        }
        if let Some(v) = patch.deleted {
            self.deleted = v;
        }
        if let Some(v) = &patch.availability_zone {
            self.availability_zone = v.clone();
        }
        if let Some(v) = &patch.metadata {
            self.metadata = v.clone();
        }
        if let Some(v) = &patch.tags {
            self.tags = v.clone();
        }
        if let Some(v) = &patch.fault {
            self.fault = v.clone();
        }
        self.updated_at = self.updated_at.max(now);
    }
}

/// The position of an instance in a listing. Its `Ord` is the listing order: newer first,
/// and among equal `created_at`, the larger uuid first (Nova appends uuid to make the order
/// total; bug 1721791).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SortKey {
    /// created_at.
    pub created_at: Timestamp,
    /// uuid.
    pub uuid: InstanceId,
}

impl Ord for SortKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.created_at.cmp(&self.created_at).then_with(|| other.uuid.cmp(&self.uuid))
    }
}

impl PartialOrd for SortKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// A partial update. `None` leaves a field alone; for nullable fields `Some(None)` clears.
/// `created_at`, `project_id` and `user_id` cannot change: listings are indexed by them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InstancePatch {
    /// New vm_state.
    pub vm_state: Option<VmState>,
    /// New task_state.
    pub task_state: Option<Option<TaskState>>,
    /// New cell.
    pub cell: Option<Option<CellId>>,
    /// New host.
    pub host: Option<Option<String>>,
    /// New node.
    pub node: Option<Option<String>>,
    /// New launched_at.
    pub launched_at: Option<Option<Timestamp>>,
    /// Soft delete (true) or restore (false).
    pub deleted: Option<bool>,
    /// New availability zone.
    pub availability_zone: Option<Option<String>>,
    /// Replaces the metadata.
    pub metadata: Option<BTreeMap<String, String>>,
    /// Replaces the tags.
    pub tags: Option<BTreeSet<String>>,
    /// Sets or clears the fault.
    pub fault: Option<Option<Fault>>,
}

/// The largest page a listing returns (Nova's `[api]max_limit` default); larger limits are
/// clamped, as Nova does.
pub const MAX_LIMIT: u32 = 1000;

/// Listing filters, with Nova's semantics. Every given filter must match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceFilters {
    /// Exact project.
    pub project_id: Option<String>,
    /// Exact user.
    pub user_id: Option<String>,
    /// vm_state is one of these (empty: any).
    pub vm_states: Vec<VmState>,
    /// Exact host.
    pub host: Option<String>,
    /// Exact cell.
    pub cell: Option<CellId>,
    /// Substring of the name. Nova matches a regular expression whose dialect depends on the
    /// database engine; unicell matches a plain, case-sensitive substring on every backend.
    pub name: Option<String>,
    /// `updated_at >= changes_since`; also shows soft-deleted instances, as in Nova.
    pub changes_since: Option<Timestamp>,
    /// Has all of these tags.
    pub tags: Vec<String>,
    /// Has at least one of these tags.
    pub tags_any: Vec<String>,
    /// `Some(true)`: only soft-deleted; `Some(false)`: only live; `None`: live ones unless
    /// `changes_since` is set, in which case both.
    pub deleted: Option<bool>,
}

impl InstanceFilters {
    /// Whether `i` passes every filter. Backends that cannot index a filter apply this while
    /// reading, so the semantics are the same everywhere.
    pub fn matches(&self, i: &Instance) -> bool {
        let deleted_ok = match self.deleted {
            Some(d) => i.deleted == d,
            None => self.changes_since.is_some() || !i.deleted,
        };
        deleted_ok
            && self.project_id.as_ref().is_none_or(|p| &i.project_id == p)
            && self.user_id.as_ref().is_none_or(|u| &i.user_id == u)
            && (self.vm_states.is_empty() || self.vm_states.contains(&i.vm_state))
            && self.host.as_ref().is_none_or(|h| i.host.as_ref() == Some(h))
            && self.cell.is_none_or(|c| i.cell == Some(c))
            && self.name.as_ref().is_none_or(|n| i.name.contains(n.as_str()))
            && self.changes_since.is_none_or(|t| i.updated_at >= t)
            && self.tags.iter().all(|t| i.tags.contains(t))
            && (self.tags_any.is_empty() || self.tags_any.iter().any(|t| i.tags.contains(t)))
    }

    /// True when the only constraint is the default "not deleted" one.
    pub fn is_unfiltered(&self) -> bool {
        *self == InstanceFilters::default()
    }
}

/// A listing request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ListQuery {
    /// Filters.
    pub filters: InstanceFilters,
    /// Page size; `None` means [`MAX_LIMIT`], larger values are clamped to it, 0 gives an
    /// empty page.
    pub limit: Option<u32>,
    /// The uuid of the last instance of the previous page. An unknown marker is an error.
    pub marker: Option<InstanceId>,
    /// Accept a partial page when part of the store cannot be read (the [`Store`] contract,
    /// line 17): the page then lists what the readable parts hold, names the unreachable
    /// parts in [`InstancePage::unreachable`] and lists in [`InstancePage::stubs`] the
    /// instances the store still knows there without their records. `false` (the default):
    /// such a listing fails with an error naming the unreachable part (the SQL baseline's
    /// `down_cell=skip` excepted, Nova's default, which skips and says so in the page).
    ///
    /// [`Store`]: crate::store::Store
    #[serde(default)]
    pub partial: bool,
}

impl ListQuery {
    /// The limit actually applied.
    pub fn effective_limit(&self) -> usize {
        self.limit.unwrap_or(MAX_LIMIT).min(MAX_LIMIT) as usize
    }
}

/// One page of a listing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InstancePage {
    /// The instances, in listing order.
    pub instances: Vec<Instance>,
    /// Set only when more instances remain after this page (unlike Nova, which sets it on
    /// every full page): the marker for the next page. Computed over the parts that could
    /// be read.
    pub next_marker: Option<InstanceId>,
    /// The parts of the store this page could not read (empty: the page is complete). Only
    /// a [`ListQuery::partial`] listing, or the SQL baseline's `down_cell=skip`, returns a
    /// page with unreachable parts; every other listing that cannot read a part fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<UnreachablePart>,
    /// Instances of the unreachable parts that the store still knows without their records
    /// (id, project, creation time), newest first, never one of [`instances`](Self::instances):
    /// what Nova 2.69 shows as servers with status `UNKNOWN`. Only on a
    /// [`ListQuery::partial`] page without a marker, within the limit left by `instances`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stubs: Vec<InstanceStub>,
}

impl InstancePage {
    /// Whether every part of the store was read (nothing unreachable).
    pub fn is_complete(&self) -> bool {
        self.unreachable.is_empty()
    }
}

/// A part of the store a listing could not read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreachablePart {
    /// What part, named for an operator, credentials never included: `cell database
    /// mysql://root@10.0.0.7:3306/nova_cell1` on the SQL baseline, `redis instance shard 3
    /// (slot 1234)` on Redis.
    pub part: String,
    /// Why it could not be read: the backend's error, credentials masked.
    pub reason: String,
    /// Whether every instance of this part that the page could show is listed in
    /// [`InstancePage::stubs`] (SQL: the API database's instance mappings were read); when
    /// `false` the part's instances are simply missing from the page.
    pub stubbed: bool,
}

/// What the store still knows of an instance whose record it cannot read: what Nova's API
/// database keeps in `instance_mappings` while the instance's cell database is down.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStub {
    /// Its uuid.
    pub uuid: InstanceId,
    /// Owning project.
    pub project_id: String,
    /// Creation time; `None` for an instance created before the store recorded it outside
    /// the record (a mapping written by an older unicell).
    pub created_at: Option<Timestamp>,
    /// Its cell.
    pub cell: Option<CellId>,
}

impl InstanceStub {
    /// The listing position of the stub: its creation time (the oldest possible when
    /// unknown) and uuid, so stubs sort as their instances would.
    pub fn sort_key(&self) -> SortKey {
        SortKey { created_at: self.created_at.unwrap_or(Timestamp::EPOCH), uuid: self.uuid }
    }
}
