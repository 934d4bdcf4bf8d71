//! The server representation (`nova.api.openstack.compute.views.servers.ViewBuilder`),
//! field for field and microversion for microversion up to [`VERSIONS`](super::VERSIONS)'s
//! maximum.
//!
//! What unicell does not have is shown as Nova shows it for a server without it: no
//! networks (`addresses` is `{}`, no `security_groups` key outside the create response, as
//! Nova without bound ports), no volumes, never locked, no trusted certificates unless
//! given. Everything the boot request carried is kept in the instance's
//! `system_metadata` (keys in [`sysmeta`]) and shown from there.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde::ser::{SerializeMap, SerializeSeq};
use serde_json::{Map, Value, json};

use super::NovaCtx;
use crate::model::{
    Fault, Flavor, FlavorId, Host, Instance, InstanceId, InstanceStub, RequestSpec, TaskState, Timestamp, VmState,
};

/// Keys of [`Instance::system_metadata`] written by the API.
pub mod sysmeta {
    /// The image id (`imageRef`), absent or empty when booted from volume.
    pub const IMAGE_REF: &str = "image_ref";
    /// `description` (2.19).
    pub const DESCRIPTION: &str = "description";
    /// `key_name`.
    pub const KEY_NAME: &str = "key_name";
    /// The hostname (derived from the name, or given at 2.90).
    pub const HOSTNAME: &str = "hostname";
    /// The reservation id of the request (`r-xxxxxxxx`).
    pub const RESERVATION_ID: &str = "reservation_id";
    /// Index of the instance in its request.
    pub const LAUNCH_INDEX: &str = "launch_index";
    /// `user_data` (base64).
    pub const USER_DATA: &str = "user_data";
    /// `config_drive` (`True` or empty).
    pub const CONFIG_DRIVE: &str = "config_drive";
    /// `accessIPv4`.
    pub const ACCESS_IP_V4: &str = "access_ip_v4";
    /// `accessIPv6`.
    pub const ACCESS_IP_V6: &str = "access_ip_v6";
    /// `AUTO` or `MANUAL`.
    pub const DISK_CONFIG: &str = "disk_config";
    /// The availability zone asked for (`pinned_availability_zone`, 2.96).
    pub const PINNED_AZ: &str = "pinned_availability_zone";
    /// The scheduler hints as given, JSON (`scheduler_hints`, 2.100).
    pub const SCHEDULER_HINTS: &str = "scheduler_hints";
    /// The server group joined.
    pub const GROUP: &str = "group";
    /// `trusted_image_certificates`, JSON array.
    pub const TRUSTED_CERTS: &str = "trusted_image_certificates";
}

/// What a view needs beyond the instance: flavors (2.47 embeds them) and, for admins at
/// 2.16+, host records (`host_status`).
#[derive(Debug, Default)]
pub struct ViewData {
    /// Flavors by id.
    pub flavors: HashMap<FlavorId, Flavor>,
    /// Hosts by name (only loaded when `host_status` is shown).
    pub hosts: Option<HashMap<String, Host>>,
    /// When hosts count as down.
    pub service_down_time: std::time::Duration,
}

/// Nova's `status_from_state` for the states unicell has.
pub fn status(i: &Instance) -> &'static str {
    if i.deleted {
        return "DELETED";
    }
    match i.vm_state {
        VmState::Active => "ACTIVE",
        VmState::Building => "BUILD",
        VmState::Stopped => "SHUTOFF",
        VmState::Paused => "PAUSED",
        VmState::Suspended => "SUSPENDED",
        VmState::Rescued => "RESCUE",
        VmState::Resized => "VERIFY_RESIZE",
        VmState::Shelved => "SHELVED",
        VmState::ShelvedOffloaded => "SHELVED_OFFLOADED",
        VmState::SoftDeleted => "SOFT_DELETED",
        VmState::Deleted => "DELETED",
        VmState::Error => "ERROR",
    }
}

/// Nova's power states: 0 NOSTATE, 1 RUNNING, 3 PAUSED, 4 SHUTDOWN, 7 SUSPENDED.
pub fn power_state(i: &Instance) -> u8 {
    match i.vm_state {
        VmState::Active | VmState::Rescued | VmState::Resized => 1,
        VmState::Paused => 3,
        VmState::Stopped | VmState::Shelved => 4,
        VmState::Suspended => 7,
        _ => 0,
    }
}

/// `utils.isotime`: seconds, `Z`.
pub fn isotime(t: Timestamp) -> String {
    let s = t.to_string();
    // RFC 3339 with micros from humantime: 2026-11-20T23:06:43.123456Z.
    match s.split_once('.') {
        Some((head, _)) => format!("{head}Z"),
        None => s,
    }
}

/// `str(datetime)` of a tz-naive datetime, as Nova shows `launched_at`:
/// `2026-11-20T23:06:43.123456`.
fn naive(t: Timestamp) -> String {
    t.to_string().trim_end_matches('Z').to_string()
}

/// `utils.generate_hostid`: sha224 of project and host, hex; empty without a host.
pub fn host_id(i: &Instance) -> String {
    match &i.host {
        Some(h) if !h.is_empty() => sha224_hex(format!("{}{}", i.project_id, h).as_bytes()),
        _ => String::new(),
    }
}

/// The instance's hypervisor name (`instance-xxxxxxxx`; Nova numbers instances, unicell
/// takes the uuid's first eight hex digits).
fn instance_name(i: &Instance) -> String {
    format!("instance-{}", &i.uuid.0.simple().to_string()[..8])
}

fn meta<'a>(i: &'a Instance, key: &str) -> Option<&'a str> {
    i.system_metadata.get(key).map(String::as_str)
}

/// `GET /servers` item: id, name, links.
pub fn basic<'a>(ctx: &'a NovaCtx, i: &'a Instance) -> Basic<'a> {
    Basic { id: i.uuid, name: &i.name, links: Links { base: &ctx.base, collection: "servers", id: i.uuid } }
}

/// The `GET /servers` item, serialized straight into the response body.
#[derive(Debug, Serialize)]
pub struct Basic<'a> {
    id: InstanceId,
    name: &'a str,
    links: Links<'a>,
}

/// A server whose record the store cannot read right now (its cell database is down), as
/// Nova 2.69 lists it (`ViewBuilder.basic` and `_show_from_down_cell` with
/// `cell_down_support`): `id`, `status: UNKNOWN` and `links`; the detail list adds
/// `tenant_id` and `created`. (Nova adds `security_groups` when Neutron has bindings for the
/// server; unicell has no networking, so no server shows them.)
#[derive(Debug, Serialize)]
pub struct Unknown<'a> {
    id: InstanceId,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant_id: Option<&'a str>,
    /// `null` for an instance whose creation time the store did not keep.
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<Option<String>>,
    links: Links<'a>,
}

/// The list item of an unreachable server (`detail`: the `/servers/detail` form).
pub fn unknown<'a>(ctx: &'a NovaCtx, s: &'a InstanceStub, detail: bool) -> Unknown<'a> {
    Unknown {
        id: s.uuid,
        status: "UNKNOWN",
        tenant_id: detail.then_some(s.project_id.as_str()),
        created: detail.then(|| s.created_at.map(isotime)),
        links: Links { base: &ctx.base, collection: "servers", id: s.uuid },
    }
}

/// An item of a server list: a server of an unreachable part, or one the store read.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ListItem<'a, T> {
    /// A server whose record could not be read.
    Unknown(Unknown<'a>),
    /// A server as read.
    Known(T),
}

/// `GET /servers/{id}` of a server whose record the store cannot read, at 2.69 and later
/// (Nova's `_show_from_down_cell` for a show): what the instance mapping knows (`id`,
/// `tenant_id`, `created`) plus what its request spec knows (`flavor`, `user_id`,
/// `OS-EXT-AZ:availability_zone`, server groups at 2.71), `status: UNKNOWN`, power state 0
/// (NOSTATE). The request spec of a multi-create is kept under its first instance only;
/// for the others `user_id` and the zone are `UNKNOWN` (as Nova shows a spec without them)
/// and `flavor` is `{}` (as Nova shows a flavor it cannot find).
pub fn show_unknown(ctx: &NovaCtx, s: &InstanceStub, spec: Option<&RequestSpec>) -> Value {
    let id = s.uuid.to_string();
    let flavor = match spec.map(|r| &r.flavor) {
        None => json!({}),
        Some(f) if ctx.at_least(2, 47) => json!({
            "vcpus": f.vcpus, "ram": f.memory_mb, "disk": f.root_gb, "ephemeral": f.ephemeral_gb,
            "swap": f.swap_mb, "original_name": f.name, "extra_specs": f.extra_specs,
        }),
        Some(f) => json!({
            "id": f.id.as_str(),
            "links": [{"rel": "bookmark", "href": format!("{}/flavors/{}", ctx.base, f.id.as_str())}],
        }),
    };
    let mut server = json!({
        "id": id,
        "status": "UNKNOWN",
        "tenant_id": s.project_id,
        "created": s.created_at.map(isotime),
        "links": ctx.links("servers", &id),
        // The request spec keeps no image id: shown as for a server booted from a volume.
        "image": "",
        "flavor": flavor,
        "OS-EXT-AZ:availability_zone": spec.and_then(|r| r.availability_zone.clone()).unwrap_or_else(|| "UNKNOWN".into()),
        "OS-EXT-STS:power_state": 0,
        "user_id": spec.map(|r| r.user_id.clone()).filter(|u| !u.is_empty()).unwrap_or_else(|| "UNKNOWN".into()),
    });
    if ctx.at_least(2, 71) {
        let groups: Vec<String> = spec.and_then(|r| r.hints.group).map(|g| g.to_string()).into_iter().collect();
        server["server_groups"] = json!(groups);
    }
    server
}

/// A resource's `self` and `bookmark` links, written without building them first.
#[derive(Debug, Clone, Copy)]
pub struct Links<'a> {
    base: &'a str,
    collection: &'static str,
    id: InstanceId,
}

impl Serialize for Links<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Link<'b> {
            rel: &'static str,
            href: std::fmt::Arguments<'b>,
        }
        let (base, collection, id) = (self.base, self.collection, self.id);
        let mut seq = ser.serialize_seq(Some(2))?;
        seq.serialize_element(&Link { rel: "self", href: format_args!("{base}/v2.1/{collection}/{id}") })?;
        seq.serialize_element(&Link { rel: "bookmark", href: format_args!("{base}/{collection}/{id}") })?;
        seq.end()
    }
}

/// `{}`.
#[derive(Debug, Clone, Copy)]
struct EmptyObject;

impl Serialize for EmptyObject {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_map(Some(0))?.end()
    }
}

/// `[]`.
#[derive(Debug, Clone, Copy)]
struct EmptyList;

impl Serialize for EmptyList {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_seq(Some(0))?.end()
    }
}

/// The detailed server view (`ViewBuilder.show`), serialized straight into the response
/// body: a list page of 1,000 servers is written without building a JSON tree first.
///
/// Field presence follows the microversion and the caller: a field that is `None` here is
/// absent from the body; a nullable field is `Some(None)` when it shows `null`.
#[derive(Debug, Serialize)]
pub struct Detail<'a> {
    #[serde(rename = "accessIPv4")]
    access_ipv4: &'a str,
    #[serde(rename = "accessIPv6")]
    access_ipv6: &'a str,
    addresses: EmptyObject,
    created: String,
    flavor: FlavorView<'a>,
    #[serde(rename = "hostId")]
    host_id: String,
    id: InstanceId,
    image: ImageView<'a>,
    links: Links<'a>,
    metadata: &'a BTreeMap<String, String>,
    name: &'a str,
    status: &'static str,
    tenant_id: &'a str,
    user_id: &'a str,
    updated: String,
    #[serde(rename = "OS-DCF:diskConfig")]
    disk_config: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    fault: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<u8>,
    #[serde(rename = "OS-EXT-AZ:availability_zone")]
    availability_zone: &'a str,
    config_drive: &'a str,
    key_name: Option<&'a str>,
    #[serde(rename = "OS-SRV-USG:launched_at")]
    launched_at: Option<String>,
    #[serde(rename = "OS-SRV-USG:terminated_at")]
    terminated_at: Option<String>,
    #[serde(rename = "OS-EXT-SRV-ATTR:host", skip_serializing_if = "Option::is_none")]
    host: Option<Option<&'a str>>,
    #[serde(rename = "OS-EXT-SRV-ATTR:instance_name", skip_serializing_if = "Option::is_none")]
    instance_name: Option<String>,
    #[serde(rename = "OS-EXT-SRV-ATTR:hypervisor_hostname", skip_serializing_if = "Option::is_none")]
    hypervisor_hostname: Option<Option<&'a str>>,
    #[serde(rename = "OS-EXT-SRV-ATTR:hostname", skip_serializing_if = "Option::is_none")]
    hostname: Option<String>,
    #[serde(rename = "OS-EXT-SRV-ATTR:kernel_id", skip_serializing_if = "Option::is_none")]
    kernel_id: Option<&'static str>,
    #[serde(rename = "OS-EXT-SRV-ATTR:launch_index", skip_serializing_if = "Option::is_none")]
    launch_index: Option<i64>,
    #[serde(rename = "OS-EXT-SRV-ATTR:ramdisk_id", skip_serializing_if = "Option::is_none")]
    ramdisk_id: Option<&'static str>,
    #[serde(rename = "OS-EXT-SRV-ATTR:reservation_id", skip_serializing_if = "Option::is_none")]
    reservation_id: Option<&'a str>,
    #[serde(rename = "OS-EXT-SRV-ATTR:root_device_name", skip_serializing_if = "Option::is_none")]
    root_device_name: Option<Option<&'static str>>,
    #[serde(rename = "OS-EXT-SRV-ATTR:user_data", skip_serializing_if = "Option::is_none")]
    user_data: Option<Option<&'a str>>,
    #[serde(rename = "OS-EXT-STS:task_state")]
    task_state: Option<&'static str>,
    #[serde(rename = "OS-EXT-STS:vm_state")]
    vm_state: &'static str,
    #[serde(rename = "OS-EXT-STS:power_state")]
    power_state: u8,
    #[serde(rename = "os-extended-volumes:volumes_attached")]
    volumes_attached: EmptyList,
    #[serde(skip_serializing_if = "Option::is_none")]
    locked: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host_status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<&'a std::collections::BTreeSet<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trusted_image_certificates: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_groups: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    locked_reason: Option<Option<&'static str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pinned_availability_zone: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduler_hints: Option<Value>,
}

/// The detailed view (`ViewBuilder.show`). `show_groups`: 2.71's `server_groups`, shown by
/// `GET /servers/{id}` but not by the detail list.
pub fn detail<'a>(ctx: &'a NovaCtx, i: &'a Instance, data: &'a ViewData, show_groups: bool) -> Detail<'a> {
    let admin = ctx.caller.is_admin;
    let status = status(i);
    let fault = match &i.fault {
        Some(f) if status == "ERROR" || status == "DELETED" => {
            Some(fault_view(f, [i.host.as_deref(), i.node.as_deref()], admin))
        }
        _ => None,
    };
    let progress =
        matches!(status, "ACTIVE" | "BUILD" | "REBUILD" | "RESIZE" | "VERIFY_RESIZE" | "MIGRATING").then_some(0);
    let hostname = || meta(i, sysmeta::HOSTNAME).map(str::to_string).unwrap_or_else(|| sanitize_hostname(&i.name));
    let ext = admin && ctx.at_least(2, 3);
    Detail {
        access_ipv4: meta(i, sysmeta::ACCESS_IP_V4).unwrap_or(""),
        access_ipv6: meta(i, sysmeta::ACCESS_IP_V6).unwrap_or(""),
        addresses: EmptyObject,
        created: isotime(i.created_at),
        flavor: flavor(ctx, i, data),
        host_id: host_id(i),
        id: i.uuid,
        image: image(ctx, i),
        links: Links { base: &ctx.base, collection: "servers", id: i.uuid },
        metadata: &i.metadata,
        name: &i.name,
        status,
        tenant_id: &i.project_id,
        user_id: &i.user_id,
        updated: isotime(i.updated_at),
        disk_config: if meta(i, sysmeta::DISK_CONFIG) == Some("AUTO") { "AUTO" } else { "MANUAL" },
        fault,
        progress,
        availability_zone: i.availability_zone.as_deref().unwrap_or(""),
        config_drive: meta(i, sysmeta::CONFIG_DRIVE).unwrap_or(""),
        key_name: meta(i, sysmeta::KEY_NAME),
        launched_at: i.launched_at.map(naive),
        terminated_at: i.deleted.then(|| naive(i.updated_at)),
        host: admin.then_some(i.host.as_deref()),
        instance_name: admin.then(|| instance_name(i)),
        hypervisor_hostname: admin.then_some(i.node.as_deref()),
        hostname: (ext || (ctx.at_least(2, 90) && !admin)).then(hostname),
        kernel_id: ext.then_some(""),
        launch_index: ext.then(|| meta(i, sysmeta::LAUNCH_INDEX).and_then(|v| v.parse().ok()).unwrap_or(0)),
        ramdisk_id: ext.then_some(""),
        reservation_id: ext.then(|| meta(i, sysmeta::RESERVATION_ID).unwrap_or("")),
        root_device_name: ext.then_some(None),
        user_data: ext.then(|| meta(i, sysmeta::USER_DATA)),
        task_state: i.task_state.map(task_name),
        vm_state: i.vm_state.as_str(),
        power_state: power_state(i),
        volumes_attached: EmptyList,
        locked: ctx.at_least(2, 9).then_some(false),
        host_status: match &data.hosts {
            Some(hosts) if ctx.at_least(2, 16) && admin => Some(host_status(i, hosts, data.service_down_time)),
            _ => None,
        },
        description: ctx.at_least(2, 19).then(|| meta(i, sysmeta::DESCRIPTION)),
        tags: ctx.at_least(2, 26).then_some(&i.tags),
        trusted_image_certificates: ctx.at_least(2, 63).then(|| {
            meta(i, sysmeta::TRUSTED_CERTS).and_then(|c| serde_json::from_str::<Value>(c).ok()).unwrap_or(Value::Null)
        }),
        server_groups: (show_groups && ctx.at_least(2, 71)).then(|| meta(i, sysmeta::GROUP).into_iter().collect()),
        locked_reason: ctx.at_least(2, 73).then_some(None),
        pinned_availability_zone: ctx.at_least(2, 96).then(|| meta(i, sysmeta::PINNED_AZ)),
        scheduler_hints: ctx.at_least(2, 100).then(|| {
            meta(i, sysmeta::SCHEDULER_HINTS)
                .and_then(|h| serde_json::from_str::<Value>(h).ok())
                .unwrap_or_else(|| json!({}))
        }),
    }
}

fn task_name(t: TaskState) -> &'static str {
    t.as_str()
}

/// A `{"rel": "bookmark", "href": "<base>/<collection>/<id>"}` link.
#[derive(Debug, Clone, Copy)]
struct Bookmark<'a> {
    base: &'a str,
    collection: &'static str,
    id: &'a str,
}

impl Serialize for Bookmark<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let (base, collection, id) = (self.base, self.collection, self.id);
        let mut map = ser.serialize_map(Some(2))?;
        map.serialize_entry("rel", "bookmark")?;
        map.serialize_entry("href", &format_args!("{base}/{collection}/{id}"))?;
        map.end()
    }
}

/// The server's `image`: `""` when booted from a volume.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum ImageView<'a> {
    Link {
        id: &'a str,
        links: [Bookmark<'a>; 1],
        #[serde(skip_serializing_if = "Option::is_none")]
        properties: Option<EmptyObject>,
    },
    None(&'static str),
}

fn image<'a>(ctx: &'a NovaCtx, i: &'a Instance) -> ImageView<'a> {
    match meta(i, sysmeta::IMAGE_REF) {
        Some(id) if !id.is_empty() => ImageView::Link {
            id,
            links: [Bookmark { base: &ctx.base, collection: "images", id }],
            // Image properties (2.98) come from the image service, which unicell does not
            // have: none are known.
            properties: ctx.at_least(2, 98).then_some(EmptyObject),
        },
        _ => ImageView::None(""),
    }
}

/// The server's `flavor`: a link before 2.47, the flavor itself from 2.47 (`{}` when the
/// flavor is gone, as Nova shows it).
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum FlavorView<'a> {
    Link {
        id: &'a str,
        links: [Bookmark<'a>; 1],
    },
    Embedded {
        vcpus: i64,
        ram: i64,
        disk: i64,
        ephemeral: i64,
        swap: i64,
        original_name: &'a str,
        extra_specs: &'a BTreeMap<String, String>,
    },
    Gone(EmptyObject),
}

fn flavor<'a>(ctx: &'a NovaCtx, i: &'a Instance, data: &'a ViewData) -> FlavorView<'a> {
    if !ctx.at_least(2, 47) {
        let id = i.flavor.as_str();
        return FlavorView::Link { id, links: [Bookmark { base: &ctx.base, collection: "flavors", id }] };
    }
    match data.flavors.get(&i.flavor) {
        Some(f) => FlavorView::Embedded {
            vcpus: f.vcpus,
            ram: f.memory_mb,
            disk: f.root_gb,
            ephemeral: f.ephemeral_gb,
            swap: f.swap_mb,
            original_name: &f.name,
            extra_specs: &f.extra_specs,
        },
        None => FlavorView::Gone(EmptyObject),
    }
}

/// Nova's `get_instance_host_status`: `UP`, `DOWN`, `MAINTENANCE` (disabled), `UNKNOWN`
/// (host record missing), or empty without a host.
fn host_status(i: &Instance, hosts: &HashMap<String, Host>, down_after: std::time::Duration) -> &'static str {
    let Some(name) = &i.host else {
        return "";
    };
    match hosts.get(name) {
        None => "UNKNOWN",
        Some(h) if !h.enabled => "MAINTENANCE",
        Some(h) if h.is_up(Timestamp::now(), down_after) => "UP",
        Some(_) => "DOWN",
    }
}

/// Nova's `utils.sanitize_hostname`: lowercase, spaces and underscores to dashes, other
/// characters outside `[a-z0-9.-]` dropped, leading/trailing dots and dashes trimmed, at
/// most 63 characters; `Server-<uuid>`-style fallback is left to the caller.
pub fn sanitize_hostname(name: &str) -> String {
    let mut out: String = name
        .to_lowercase()
        .chars()
        .map(|c| if c == ' ' || c == '_' { '-' } else { c })
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '.' || *c == '-')
        .collect();
    out.truncate(63);
    out.trim_matches(|c| c == '.' || c == '-').to_string()
}

/// Values of the residual filters, by Nova's filter name.
pub fn filter_attr(i: &Instance, key: &str) -> Option<String> {
    let m = |k: &str| meta(i, k).map(str::to_string);
    match key {
        "uuid" => Some(i.uuid.to_string()),
        "image" | "image_ref" => m(sysmeta::IMAGE_REF),
        "flavor" => Some(i.flavor.to_string()),
        "node" => i.node.clone(),
        "host" => i.host.clone(),
        "availability_zone" => i.availability_zone.clone(),
        "reservation_id" => m(sysmeta::RESERVATION_ID),
        "key_name" => m(sysmeta::KEY_NAME),
        "hostname" => Some(m(sysmeta::HOSTNAME).unwrap_or_else(|| sanitize_hostname(&i.name))),
        "description" | "display_description" => m(sysmeta::DESCRIPTION),
        "launch_index" => Some(m(sysmeta::LAUNCH_INDEX).unwrap_or_else(|| "0".into())),
        "config_drive" => m(sysmeta::CONFIG_DRIVE),
        "access_ip_v4" => m(sysmeta::ACCESS_IP_V4),
        "access_ip_v6" => m(sysmeta::ACCESS_IP_V6),
        "power_state" => Some(power_state(i).to_string()),
        "progress" => Some("0".into()),
        "vm_state" => Some(i.vm_state.as_str().to_string()),
        "task_state" => i.task_state.map(|t| t.as_str().to_string()),
        "locked" | "locked_by" => None,
        "launched_at" => i.launched_at.map(naive),
        "created_at" => Some(naive(i.created_at)),
        "terminated_at" => i.deleted.then(|| naive(i.updated_at)),
        "user_id" => Some(i.user_id.clone()),
        "project_id" | "tenant_id" => Some(i.project_id.clone()),
        "name" | "display_name" => Some(i.name.clone()),
        _ => None,
    }
}

/// Scheduler hints as Nova keeps them in the request spec: every value a list.
pub fn hints_as_lists(hints: &Map<String, Value>) -> Value {
    let mut out = BTreeMap::new();
    for (k, v) in hints {
        let list = match v {
            Value::Array(a) => Value::Array(a.clone()),
            other => Value::Array(vec![other.clone()]),
        };
        out.insert(k.clone(), list);
    }
    json!(out)
}

/// SHA-224 (FIPS 180-4), hex: Nova's hostId. Small and dependency-free; hostId is only
/// an opaque per-project host fingerprint.
fn sha224_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
        0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
        0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
        0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
        0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
        0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] =
        [0xc1059ed8, 0x367cd507, 0x3070dd17, 0xf70e5939, 0xffc00b31, 0x68581511, 0x64f98fa7, 0xbefa4fa4];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for chunk in msg.chunks(64) {
        let mut w = [0u32; 64];
        for (t, word) in chunk.chunks(4).enumerate() {
            w[t] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for t in 16..64 {
            let s0 = w[t - 15].rotate_right(7) ^ w[t - 15].rotate_right(18) ^ (w[t - 15] >> 3);
            let s1 = w[t - 2].rotate_right(17) ^ w[t - 2].rotate_right(19) ^ (w[t - 2] >> 10);
            w[t] = w[t - 16].wrapping_add(s0).wrapping_add(w[t - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for t in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh.wrapping_add(s1).wrapping_add(ch).wrapping_add(K[t]).wrapping_add(w[t]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    h[..7].iter().map(|x| format!("{x:08x}")).collect()
}

/// An instance's fault as a caller may see it. Nova's rule (`ViewBuilder._get_fault`): the
/// details only for admins or when the code is not 500. Further, a non-admin never reads a
/// host name (Nova hides which hosts exist from projects): every name the fault can hold,
/// the instance's host and node and the hosts its build history lists (detail lines
/// `<host>: ...`), is replaced by `***` in the message and in details shown to them.
pub fn fault_view<'a>(f: &Fault, known_hosts: impl IntoIterator<Item = Option<&'a str>>, admin: bool) -> Value {
    let show_details = !f.details.is_empty() && (admin || f.code != 500);
    if admin {
        let mut fault = json!({"code": f.code, "created": isotime(f.created_at), "message": f.message});
        if show_details {
            fault["details"] = json!(f.details);
        }
        return fault;
    }
    let mut hosts: Vec<&str> = known_hosts.into_iter().flatten().filter(|h| !h.is_empty()).collect();
    hosts.extend(
        f.details
            .lines()
            .filter(|l| !l.starts_with(char::is_whitespace))
            .filter_map(|l| l.split_once(": ").map(|(h, _)| h))
            .filter(|h| !h.is_empty() && !h.contains(char::is_whitespace)),
    );
    // Longest first, so that `node-1` is not half-masked by `node`.
    hosts.sort_by_key(|h| std::cmp::Reverse(h.len()));
    hosts.dedup();
    let scrub = |text: &str| hosts.iter().fold(text.to_string(), |t, h| t.replace(h, "***"));
    let mut fault = json!({"code": f.code, "created": isotime(f.created_at), "message": scrub(&f.message)});
    if show_details {
        fault["details"] = json!(scrub(&f.details));
    }
    fault
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_hide_host_names_and_500_details_from_non_admins() {
        let f = Fault {
            code: 500,
            message: "Build of instance 1 aborted: simulated fatal failure spawning 1 on cmp-0042".into(),
            details: "cmp-0007: simulated transient failure\ncmp-0042: simulated fatal failure".into(),
            created_at: Timestamp::from_micros(1_795_000_000_000_000),
        };
        let user = fault_view(&f, [None, None], false);
        let text = user.to_string();
        assert!(!text.contains("cmp-00"), "{text}");
        assert!(user.get("details").is_none(), "{text}");
        assert_eq!(user["message"], "Build of instance 1 aborted: simulated fatal failure spawning 1 on ***");
        let admin = fault_view(&f, [None, None], true);
        assert_eq!(admin["message"], json!(f.message));
        assert_eq!(admin["details"], json!(f.details));
        // A 4xx fault shows details to its owner, host names masked.
        let f = Fault { code: 409, message: "refused on node-a1".into(), ..f };
        let user = fault_view(&f, [Some("node-a"), Some("node-a1")], false).to_string();
        assert!(!user.contains("node-a") && !user.contains("cmp-00") && user.contains("details"), "{user}");
    }

    #[test]
    fn sha224_known_answers() {
        assert_eq!(sha224_hex(b""), "d14a028c2a3a2bc9476102bb288234c415a2b01f828ea62ac5b3e42f");
        assert_eq!(sha224_hex(b"abc"), "23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7");
    }

    #[test]
    fn hostnames_and_times() {
        assert_eq!(sanitize_hostname("My Server_1!"), "my-server-1");
        assert_eq!(isotime(Timestamp::from_micros(1_795_000_000_123_456)), "2026-11-18T11:06:40Z");
    }
}
