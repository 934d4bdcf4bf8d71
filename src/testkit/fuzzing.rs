//! The checks behind the fuzz targets (`fuzz/`, cargo-fuzz on nightly) and behind their
//! replay on stable (`tests/fuzz_regressions.rs`).
//!
//! Why here: a fuzz target and the regression test that replays its corpus must run the
//! same code, or a crash fixed in one is not guarded by the other. Each check takes the raw
//! bytes libFuzzer generates, drives the library's real entry points with them (never a copy
//! of their logic) and **panics when an invariant breaks**: that is how libFuzzer and the
//! replay test notice. For any input the code under test handles, rejections included, it
//! returns normally.
//!
//! Inputs are text where the code under test reads text, so that the committed corpus
//! (`fuzz/corpus/<target>/`) and every crash kept as a regression (`fuzz/regressions/<target>/`)
//! read as what they test. The formats are described on each check.
//!
//! | target | check | invariants |
//! |---|---|---|
//! | `store_url` | [`store_url`] | no panic; no password of the input in any `Display`/`Debug` of the parsed URL, of the backends' option parsers, or in their errors |
//! | `request_spec` | [`request_spec`] | no panic or overflow; bad amounts are `InvalidInput`; a candidate allocation fits by Placement's fit rule |
//! | `redis_codec` | [`redis_codec`] | decoding any bytes never panics; encode then decode gives back what was decoded or built |
//! | `http_api` | [`http_api`] | the Nova and Placement routers never answer 5xx (a panic caught by the routers is a 500) |

use std::collections::{BTreeMap, BTreeSet};

use crate::error::Error;
use crate::model::*;
use crate::scheduler::candidates::{CandidateRequest, allocation_candidate, fits_request};
use crate::scheduler::{ScheduleError, filters};
use crate::store::{StoreUrl, redact_text};

/// A check: bytes in, a panic when an invariant breaks.
pub type Check = fn(&[u8]);

/// Every fuzz target this build has, by name, with its check. The names are those of
/// `fuzz/fuzz_targets/<name>.rs` and of the directories `fuzz/corpus/<name>/` and
/// `fuzz/regressions/<name>/`.
pub fn targets() -> Vec<(&'static str, Check)> {
    let mut t: Vec<(&'static str, Check)> = vec![("store_url", store_url), ("request_spec", request_spec)];
    #[cfg(feature = "redis")]
    t.push(("redis_codec", redis_codec));
    #[cfg(feature = "api")]
    t.push(("http_api", http_api));
    t
}

// ---------------------------------------------------------------------------------------
// store_url

/// Target `store_url`: the input (UTF-8; other bytes are skipped) is a store URL.
///
/// Runs [`StoreUrl::parse`], [`redact_text`] (for panics only), and on a parsed URL its accessors and the
/// option parser of its backend without connecting (`RedisConfig::parse`,
/// `CqlConfig::parse`, the SQL baseline's database targets and options). Invariants: no
/// panic; a parsed URL's redacted form parses again with the same scheme; and no text any of
/// them shows (`Display`, `Debug`, error messages, database labels) contains a password of
/// the input: the userinfo's, the values of query keys that name a secret (`password=`,
/// `token=`, ...), and those of URLs nested in query values (`cell_url=`), percent-encoded
/// or not. A "password" counts only when it is at least 4 characters with a letter and a
/// digit and appears in no public part of the URL (user, host, path, other keys and values),
/// so that a host that happens to equal the password is not a finding.
pub fn store_url(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if s.len() > 4096 {
        return;
    }
    let secrets = url_secrets(s);
    // `redact_text` runs (it must not panic) but is not held to the invariant: it masks
    // free text word by word, so a password with a quote, a space or a control character
    // in it ends its masking early (found by this target; see fuzz/README.md). What shows a
    // store URL as such (`StoreUrl`, its errors, the backends' options) must hide it whole.
    let _ = redact_text(s);
    let mut shown = Vec::new();
    match StoreUrl::parse(s) {
        Err(e) => {
            shown.push(e.to_string());
            shown.push(format!("{e:?}"));
        }
        Ok(u) => {
            shown.push(u.to_string());
            shown.push(format!("{u:?}"));
            shown.push(u.redacted());
            let _ = u.host_ports();
            let _ = u.params("cell_url");
            match StoreUrl::parse(&u.redacted()) {
                Ok(again) => assert_eq!(again.scheme(), u.scheme(), "the redacted URL changed scheme: {u}"),
                Err(e) => panic!("the redacted form of a parsed URL does not parse: {u}: {e}"),
            }
            shown.extend(backend_options_shown(&u));
        }
    }
    for text in &shown {
        for secret in &secrets {
            assert!(!leaks(text, secret), "password {secret:?} of {s:?} shown in {text:?}");
        }
    }
}

/// What the backend's option parser shows for `u` (its `Debug`, its error, its labels).
fn backend_options_shown(u: &StoreUrl) -> Vec<String> {
    fn shown_result<T: std::fmt::Debug>(r: &crate::Result<T>) -> Vec<String> {
        match r {
            Ok(v) => vec![format!("{v:?}")],
            Err(e) => vec![e.to_string(), format!("{e:?}")],
        }
    }
    let mut out = Vec::new();
    match u.scheme().backend() {
        #[cfg(feature = "redis")]
        "redis" => out.extend(shown_result(&crate::store::redis::RedisConfig::parse(u))),
        #[cfg(feature = "cql")]
        "cql" => {
            let r = crate::store::cql::CqlConfig::parse(u);
            if let Ok(c) = &r {
                out.push(c.to_string());
            }
            out.extend(shown_result(&r));
        }
        #[cfg(feature = "sql")]
        "sql" => match crate::store::sql::config::targets(u) {
            Ok((api, cells, mode)) => {
                out.push(api.label());
                out.extend(cells.iter().map(|c| c.label()));
                out.extend(shown_result(&crate::store::sql::SqlOptions::parse(u, mode)));
            }
            Err(e) => out.extend([e.to_string(), format!("{e:?}")]),
        },
        _ => {}
    }
    out
}

/// The passwords of a URL (see [`store_url`]), each distinctive and in no public part.
fn url_secrets(s: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    let mut public = Vec::new();
    collect_url_parts(s, 0, &mut secrets, &mut public);
    let public: Vec<String> = public.iter().map(|p| p.to_lowercase()).collect();
    secrets.retain(|x| {
        x.chars().count() >= 4
            && x.chars().any(|c| c.is_ascii_alphabetic())
            && x.chars().any(|c| c.is_ascii_digit())
            && !public.iter().any(|p| p.contains(&x.to_lowercase()))
    });
    secrets.sort();
    secrets.dedup();
    secrets
}

fn collect_url_parts(s: &str, depth: usize, secrets: &mut Vec<String>, public: &mut Vec<String>) {
    let (single, extra) = crate::store::split_host_list(s);
    public.extend(extra);
    let Ok(u) = url::Url::parse(&single) else {
        public.push(s.to_string());
        return;
    };
    public.push(u.scheme().to_string());
    public.push(u.username().to_string());
    public.push(crate::store::percent_decode_lossy(u.username()));
    public.extend(u.host_str().map(str::to_string));
    public.extend(u.port().map(|p| p.to_string()));
    public.push(u.path().to_string());
    public.push(crate::store::percent_decode_lossy(u.path()));
    public.extend(u.fragment().map(str::to_string));
    if let Some(p) = u.password() {
        secrets.push(p.to_string());
        secrets.push(crate::store::percent_decode_lossy(p));
    }
    for (k, v) in u.query_pairs() {
        public.push(k.to_string());
        if crate::store::is_secret_key(&k) {
            secrets.push(v.to_string());
        } else if v.contains("://") && depth < 4 {
            collect_url_parts(&v, depth + 1, secrets, public);
        } else {
            public.push(v.to_string());
        }
    }
}

/// Whether `text` shows `secret`, as is or percent-encoded.
fn leaks(text: &str, secret: &str) -> bool {
    let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    text.contains(secret) || text.contains(&encoded) || text.contains(&encoded.replace('+', "%20"))
}

// ---------------------------------------------------------------------------------------
// request_spec

/// Target `request_spec`: the input is text, one `key=value` a line, building a flavor, a
/// request spec and a provider tree:
///
/// ```text
/// vcpus=2                      flavor sizes (also memory_mb, root_gb, ephemeral_gb, swap_mb)
/// bfv=1                        boot from volume
/// extra:resources1:VCPU=2      a flavor extra spec
/// image:traits_required=A,B    an image property
/// inv:1:VCPU=8,0,1,8,1,1.0     inventory of provider 0 (root), 1 or 2 (children of the root):
///                              total[,reserved,min_unit,max_unit,step_size,allocation_ratio]
/// used:1:VCPU=3                usage
/// traits:1=HW_NUMA_ROOT,X      traits of a provider
/// hv_version=6000              the host's hypervisor version, for img_hv_requested_version
/// ```
///
/// Numbers are full `i64`s, so sizes and amounts can be anything. Drives
/// `Flavor::validate`, `Flavor::resource_request`, the scheduler's spec-to-request step (the
/// one `select_destinations` uses), `allocation_candidate`, `fits_request` and the fit rule
/// (`ClaimRequest::evaluate`). Invariants: no panic and no integer overflow (debug
/// assertions); every rejection is `InvalidInput` (an `InvalidRequest` of the scheduler
/// wrapping one); a validated flavor yields a request; every requested amount is between 1
/// and `MAX_AMOUNT`; `fits_request` agrees with `allocation_candidate`; and a candidate
/// allocation is accepted by the fit rule on the tree it was found on.
pub fn request_spec(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut flavor = Flavor {
        id: FlavorId::new("fuzz").unwrap_or_else(|e| panic!("flavor id: {e}")),
        name: "fuzz".into(),
        vcpus: 1,
        memory_mb: 512,
        root_gb: 1,
        ephemeral_gb: 0,
        swap_mb: 0,
        extra_specs: BTreeMap::new(),
    };
    let mut image = BTreeMap::new();
    let mut bfv = false;
    let mut hv_version = None;
    let mut invs: [BTreeMap<ResourceClass, Inventory>; 3] = Default::default();
    let mut used: [Resources; 3] = Default::default();
    let mut traits: [BTreeSet<Trait>; 3] = Default::default();
    for line in text.lines().take(200) {
        let Some((k, v)) = line.split_once('=') else { continue };
        let num = |v: &str| v.trim().parse::<i64>().ok();
        match k {
            "vcpus" => flavor.vcpus = num(v).unwrap_or(flavor.vcpus),
            "memory_mb" => flavor.memory_mb = num(v).unwrap_or(flavor.memory_mb),
            "root_gb" => flavor.root_gb = num(v).unwrap_or(flavor.root_gb),
            "ephemeral_gb" => flavor.ephemeral_gb = num(v).unwrap_or(flavor.ephemeral_gb),
            "swap_mb" => flavor.swap_mb = num(v).unwrap_or(flavor.swap_mb),
            "bfv" => bfv = matches!(v, "1" | "true"),
            "hv_version" => hv_version = Some(v.to_string()),
            _ => {
                if let Some(key) = k.strip_prefix("extra:") {
                    flavor.extra_specs.insert(key.to_string(), v.to_string());
                } else if let Some(key) = k.strip_prefix("image:") {
                    image.insert(key.to_string(), v.to_string());
                } else if let Some((i, rest)) = provider_key(k, "inv:") {
                    let Ok(class) = ResourceClass::parse(rest) else { continue };
                    let f: Vec<&str> = v.split(',').map(str::trim).collect();
                    let field = |n: usize, d: i64| f.get(n).and_then(|x| x.parse().ok()).unwrap_or(d);
                    let inv = Inventory {
                        total: field(0, 1),
                        reserved: field(1, 0),
                        min_unit: field(2, 1),
                        max_unit: field(3, MAX_AMOUNT),
                        step_size: field(4, 1),
                        allocation_ratio: f.get(5).and_then(|x| x.parse().ok()).unwrap_or(1.0),
                    };
                    // The store only ever holds validated inventories.
                    if inv.validate("fuzz").is_ok() {
                        invs[i].insert(class, inv);
                    }
                } else if let Some((i, rest)) = provider_key(k, "used:") {
                    if let (Ok(class), Some(n)) = (ResourceClass::parse(rest), num(v))
                        && (0..=MAX_AMOUNT).contains(&n)
                    {
                        used[i].insert(class, n);
                    }
                } else if let Some((i, _)) = provider_key(&format!("{k}:"), "traits:") {
                    traits[i] = v.split(',').filter_map(|t| Trait::new(t.trim()).ok()).collect();
                }
            }
        }
    }

    let validated = flavor.validate();
    let requested = flavor.resource_request(bfv);
    for e in [validated.as_ref().err(), requested.as_ref().err()].into_iter().flatten() {
        assert!(matches!(e, Error::InvalidInput { .. }), "flavor rejected with {e:?}, not InvalidInput");
    }
    if validated.is_ok() {
        assert!(flavor.resource_request(false).is_ok(), "a validated flavor has no resource request: {flavor:?}");
    }
    if let Ok(request) = &requested {
        for g in &request.groups {
            for (c, a) in &g.resources {
                assert!((1..=MAX_AMOUNT).contains(a), "request amount {c}={a} out of range from {flavor:?}");
            }
        }
        let _ = request.totals();
    }

    if let (Some(have), Some(want)) = (&hv_version, image.get("img_hv_requested_version")) {
        let _ = filters::version_satisfies(have, want);
    }

    let spec = RequestSpec {
        instance_uuid: InstanceId(uuid::Uuid::from_u128(1)),
        flavor,
        image_properties: image,
        is_bfv: bfv,
        num_instances: 1,
        project_id: "p".into(),
        user_id: "u".into(),
        availability_zone: None,
        hints: SchedulerHints::default(),
        requested_destination: None,
        ignore_hosts: Vec::new(),
        force_hosts: Vec::new(),
    };
    let cand: CandidateRequest = match crate::scheduler::candidate_request(&spec, 2_000) {
        Ok(c) => c,
        Err(ScheduleError::InvalidRequest(Error::InvalidInput { .. })) => return,
        Err(e) => panic!("request spec rejected with {e:?}, not an InvalidRequest of InvalidInput"),
    };

    let tree = fuzz_tree(invs, used, traits);
    let candidate = allocation_candidate(&tree, &cand);
    let fits = fits_request(&tree, &cand);
    assert_eq!(
        candidate.is_ok(),
        fits.is_ok(),
        "allocation_candidate {candidate:?} and fits_request {fits:?} disagree on {tree:?} for {cand:?}"
    );
    if let Ok(allocations) = candidate {
        let claim = ClaimRequest {
            consumer: ConsumerId(uuid::Uuid::from_u128(2)),
            project_id: "p".into(),
            user_id: "u".into(),
            allocations: allocations.clone(),
            group: None,
        };
        match claim.evaluate(&tree, None) {
            Ok(false) => {}
            other => panic!("candidate {allocations:?} on {tree:?} is refused by the fit rule: {other:?}"),
        }
    }
}

/// `prefix<i>:<rest>` with `i` in 0..3.
fn provider_key<'a>(k: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let (i, rest) = k.strip_prefix(prefix)?.split_once(':')?;
    let i: usize = i.parse().ok()?;
    (i < 3).then_some((i, rest))
}

/// A root with up to two children; a provider without inventory (other than the root) is
/// left out. Without any inventory line the root has a small compute node's.
fn fuzz_tree(
    mut invs: [BTreeMap<ResourceClass, Inventory>; 3],
    used: [Resources; 3],
    traits: [BTreeSet<Trait>; 3],
) -> ProviderTree {
    if invs.iter().all(BTreeMap::is_empty) {
        invs[0] = BTreeMap::from([
            (ResourceClass::Vcpu, Inventory::with_total(16)),
            (ResourceClass::MemoryMb, Inventory::with_total(65_536)),
            (ResourceClass::DiskGb, Inventory::with_total(1_000)),
        ]);
    }
    let ids: Vec<ProviderId> = (0..3).map(|i| ProviderId(uuid::Uuid::from_u128(100 + i))).collect();
    let mut providers = Vec::new();
    for (i, ((inv, used), traits)) in invs.into_iter().zip(used).zip(traits).enumerate() {
        if i > 0 && inv.is_empty() {
            continue;
        }
        let usages = used.into_iter().filter(|(c, _)| inv.contains_key(c)).collect();
        providers.push(ProviderNode {
            id: ids[i],
            name: format!("p{i}"),
            parent: (i > 0).then_some(ids[0]),
            traits,
            aggregates: BTreeSet::new(),
            inventories: inv,
            usages,
        });
    }
    ProviderTree { root: ids[0], generation: 1, cell: None, providers, groups: BTreeMap::new() }
}

// ---------------------------------------------------------------------------------------
// redis_codec

/// Target `redis_codec`: the first byte picks what the rest is, for the Redis backend's
/// codec (`store::redis::codec`, the claim-reply reader, the placement decoder and its JSON
/// records):
///
/// * `0`: a RESP reply (bytes as Redis sends them), read as a script reply, a hash, a set,
///   a `placement_read` reply (decoded, then re-encoded and decoded again);
/// * `1`: a tree hash as text, one `field<TAB>value` a line, decoded as a tree, which must
///   survive encoding and decoding unchanged;
/// * `2`: an allocation record (`token\ngroup\nsignature\nmeta-json`), whose allocations
///   must survive their signature;
/// * `3`: a RESP reply read as the claim script's answer;
/// * `4`: JSON of an instance, request spec, host or flavor record, which must survive
///   re-encoding;
/// * anything else: bytes from which an inventory, an allocation map and two listing index
///   members are built, each encoded and decoded (and the members' order checked).
///
/// Invariants: decoding never panics (bad data is a backend error); encode then decode is
/// the identity on what was decoded or built.
#[cfg(feature = "redis")]
pub fn redis_codec(data: &[u8]) {
    use crate::store::redis::codec;
    let Some((&mode, rest)) = data.split_first() else { return };
    let root = ProviderId(uuid::Uuid::from_u128(7));
    match mode {
        0 => {
            let Ok(v) = redis::parse_redis_value(rest) else { return };
            let _ = codec::text(&v);
            let _ = codec::int(&v);
            if let Ok(r) = codec::Reply::from(v.clone()) {
                let _ = r.status();
                for i in 0..8 {
                    let _ = (r.s(i), r.i(i), r.u(i));
                }
            }
            let _ = codec::pairs(v.clone());
            let _ = codec::members(v.clone());
            if let Ok(Some(p)) = crate::store::redis::placement::decode_placement(root, v) {
                tree_round_trip(root, &p.tree, &p.generations);
            }
        }
        1 => {
            let text = String::from_utf8_lossy(rest);
            let fields: Vec<(String, String)> = text
                .lines()
                .take(500)
                .map(|l| match l.split_once('\t') {
                    Some((f, v)) => (f.to_string(), v.to_string()),
                    None => (l.to_string(), String::new()),
                })
                .collect();
            if let Ok(Some(tree)) = codec::decode_tree(root, fields) {
                tree_round_trip(root, &tree, &BTreeMap::new());
            }
        }
        2 => {
            let text = String::from_utf8_lossy(rest);
            let (consumer, rec) = text.split_once('\n').unwrap_or(("", &text));
            if let Ok((_, a)) = codec::parse_alloc(consumer, root, rec) {
                let sig = codec::signature(&a.allocations);
                let back = codec::parse_signature(&sig).unwrap_or_else(|e| panic!("signature {sig:?}: {e}"));
                assert_eq!(back, without_empty(&a.allocations), "signature {sig:?} of a decoded record");
            }
        }
        3 => {
            let Ok(v) = redis::parse_redis_value(rest) else { return };
            let Ok(r) = codec::Reply::from(v) else { return };
            let p = ProviderId(uuid::Uuid::from_u128(8));
            let request = ClaimRequest {
                consumer: ConsumerId(uuid::Uuid::from_u128(9)),
                project_id: "p".into(),
                user_id: "u".into(),
                allocations: BTreeMap::from([(p, BTreeMap::from([(ResourceClass::Vcpu, 1)]))]),
                group: None,
            };
            let target = crate::store::redis::trees::ClaimTarget { providers: vec![p], roots: vec![Some(root)], root };
            for fresh in [false, true] {
                let _ = crate::store::redis::trees::read_claim_reply(&request, &target, fresh, &r);
            }
        }
        4 => {
            let text = String::from_utf8_lossy(rest);
            json_round_trip::<Instance>(&text);
            json_round_trip::<RequestSpec>(&text);
            json_round_trip::<Host>(&text);
            json_round_trip::<Flavor>(&text);
        }
        _ => built_round_trips(rest),
    }
}

/// A decoded tree, encoded as the store writes it and decoded again, is the same tree
/// (and the same non-zero provider generations).
#[cfg(feature = "redis")]
fn tree_round_trip(root: ProviderId, tree: &ProviderTree, generations: &BTreeMap<ProviderId, u64>) {
    use crate::store::placement::PlacementTree;
    use crate::store::redis::codec;
    let pt = PlacementTree { tree: tree.clone(), generations: generations.clone(), consumers: BTreeMap::new() };
    let mut fields = crate::store::redis::placement::tree_fields(&pt);
    fields.push(("gen".into(), tree.generation.to_string()));
    fields.push(("cell".into(), tree.cell.map(|c| c.to_string()).unwrap_or_default()));
    let again = codec::decode_tree(root, fields.clone())
        .unwrap_or_else(|e| panic!("re-encoded tree does not decode: {e}: {fields:?}"))
        .unwrap_or_else(|| panic!("re-encoded tree decodes as no tree: {fields:?}"));
    assert_eq!(&again, tree, "tree changed by encode and decode: {fields:?}");
}

#[cfg(feature = "redis")]
fn without_empty(a: &AllocationMap) -> AllocationMap {
    a.iter().filter(|(_, r)| !r.is_empty()).map(|(p, r)| (*p, r.clone())).collect()
}

/// A record that decodes encodes back to one that decodes to the same value.
#[cfg(feature = "redis")]
fn json_round_trip<T>(text: &str)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    use crate::store::redis::{from_json, json};
    let Ok(v) = from_json::<T>(text) else { return };
    let s = json(&v).unwrap_or_else(|e| panic!("{v:?} does not encode: {e}"));
    let back: T = from_json(&s).unwrap_or_else(|e| panic!("{s:?} does not decode: {e}"));
    assert_eq!(back, v, "record changed by encode and decode: {s}");
}

/// Values built from bytes, encoded and decoded: an inventory, an allocation map, two
/// listing index members.
#[cfg(feature = "redis")]
fn built_round_trips(data: &[u8]) {
    use crate::store::redis::codec;
    let mut r = Bytes(data);
    let inv = Inventory {
        total: r.i64(),
        reserved: r.i64(),
        min_unit: r.i64(),
        max_unit: r.i64(),
        step_size: r.i64(),
        allocation_ratio: f64::from_bits(r.u64()),
    };
    let _ = inv.capacity();
    let s = codec::inv_string(&inv);
    match codec::parse_inv(&s) {
        Ok(back) if inv.allocation_ratio.is_nan() => assert!(back.allocation_ratio.is_nan(), "{s}"),
        Ok(back) => assert_eq!(back, inv, "inventory changed by encode and decode: {s}"),
        Err(e) => panic!("inventory {s:?} does not decode: {e}"),
    }

    let mut allocations = AllocationMap::new();
    for _ in 0..(r.u8() % 6) {
        let p = ProviderId(uuid::Uuid::from_u128(u128::from(r.u8() % 4)));
        let class = match r.u8() % 5 {
            0 => ResourceClass::Vcpu,
            1 => ResourceClass::MemoryMb,
            2 => ResourceClass::DiskGb,
            3 => ResourceClass::Pcpu,
            n => ResourceClass::parse(&format!("CUSTOM_C{}", r.u8() as u32 + n as u32)).unwrap_or(ResourceClass::Vcpu),
        };
        allocations.entry(p).or_default().insert(class, r.i64());
    }
    let sig = codec::signature(&allocations);
    let back = codec::parse_signature(&sig).unwrap_or_else(|e| panic!("signature {sig:?} does not decode: {e}"));
    assert_eq!(back, allocations, "allocations changed by signature and parse: {sig}");

    let members: Vec<(i64, InstanceId, String)> = (0..2)
        .map(|_| {
            let t = r.i64();
            let id = InstanceId(uuid::Uuid::from_u128((u128::from(r.u64()) << 64) | u128::from(r.u64())));
            (t, id, codec::index_member(Timestamp::from_micros(t), id))
        })
        .collect();
    for (_, id, m) in &members {
        assert_eq!(codec::member_uuid(m).ok(), Some(*id), "member {m} of {id}");
    }
    let ((t1, u1, m1), (t2, u2, m2)) = (&members[0], &members[1]);
    if *t1 >= 0 && *t2 >= 0 {
        // Ascending members are the listing order: created_at descending, then uuid descending.
        assert_eq!(m1.cmp(m2), (t2, u2.0.as_u128()).cmp(&(t1, u1.0.as_u128())), "index order of {m1} and {m2}");
    }
}

/// Little-endian numbers read off fuzz input, zeros once it runs out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.take())
    }
}

// ---------------------------------------------------------------------------------------
// http_api

/// Target `http_api`: the input is a sequence of HTTP requests separated by lines `%%`,
/// each as text:
///
/// ```text
/// nova POST /v2.1/servers?x=1          or: placement PUT /resource_providers/<uuid>
/// x-auth-token: demo:demo              headers, one a line, up to an empty line
/// content-type: application/json
///
/// {"server": {...}}                    the body: the rest
/// ```
///
/// Each input gets a fresh memory store with a small cloud (one cell, two hosts of 4 VCPU /
/// 8 GiB / 100 GB, flavors `small` and `numa` with extra specs) behind one
/// [`ApiState::with_placement`](crate::api::ApiState::with_placement), and the requests go
/// in order, in process (no sockets), to `api::nova::router` or `api::placement::router`,
/// so that later requests see what earlier ones created. A request line or header that
/// `http` cannot represent is skipped; at most 8 requests of 64 KiB of body each.
/// With `UNICELL_FUZZ_VERBOSE` set, each request's status is printed (to check that new
/// corpus entries get past validation). Invariant: no answer is a 5xx (the Nova router turns a panic into a 500; under libFuzzer
/// every panic aborts), except Placement's deliberate 501 for `POST /reshaper`.
#[cfg(feature = "api")]
pub fn http_api(data: &[u8]) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        panic!("no tokio runtime");
    };
    let text = String::from_utf8_lossy(data);
    let requests: Vec<&str> = text.split("\n%%\n").take(8).collect();
    let verbose = std::env::var_os("UNICELL_FUZZ_VERBOSE").is_some();
    rt.block_on(async {
        let (nova, placement) = http_fixture().await;
        for raw in requests {
            let Some((which, req)) = parse_request(raw) else { continue };
            let (method, path) = (req.method().clone(), req.uri().to_string());
            let router = if which == "nova" { nova.clone() } else { placement.clone() };
            let resp = match tower::ServiceExt::oneshot(router, req).await {
                Ok(r) => r,
                Err(e) => match e {},
            };
            let status = resp.status();
            if verbose {
                eprintln!("{which} {method} {path} -> {status}");
            }
            if status.is_server_error() && !(status.as_u16() == 501 && path.ends_with("/reshaper")) {
                let body = http_body_util::BodyExt::collect(resp.into_body()).await.map(|b| b.to_bytes());
                panic!("{which} {method} {path} answered {status}: {body:?}");
            }
        }
        // Let the builds the requests started run, so that their panics show under libFuzzer.
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    });
}

/// One request of the `http_api` format, and which API it goes to.
#[cfg(feature = "api")]
fn parse_request(raw: &str) -> Option<(&'static str, axum::http::Request<axum::body::Body>)> {
    let (head, body) = match raw.split_once("\n\n") {
        Some((h, b)) => (h, b),
        None => (raw, ""),
    };
    let mut lines = head.lines();
    let mut first = lines.next()?.split(' ');
    let which = match first.next()? {
        "nova" => "nova",
        "placement" => "placement",
        _ => return None,
    };
    let method = axum::http::Method::from_bytes(first.next()?.as_bytes()).ok()?;
    let uri = first.next()?;
    let mut req = axum::http::Request::builder().method(method).uri(uri).header("host", "fuzz.test:8774");
    for line in lines.take(32) {
        let (k, v) = line.split_once(':')?;
        req = req.header(k.trim(), v.trim());
    }
    if body.len() > 64 * 1024 {
        return None;
    }
    req.body(axum::body::Body::from(body.to_string())).ok().map(|r| (which, r))
}

/// A fresh memory store with a small cloud, and the Nova and Placement routers over it.
#[cfg(feature = "api")]
async fn http_fixture() -> (axum::Router, axum::Router) {
    use std::sync::Arc;

    use crate::api::{ApiConfig, ApiState, nova, placement};
    use crate::store::memory::MemoryStore;
    use crate::store::placement::PlacementStore;
    use crate::store::prelude::*;

    let store = Arc::new(MemoryStore::new());
    let cell = Cell { id: CellId(uuid::Uuid::from_u128(1)), name: "cell1".into(), disabled: false };
    fn fail(what: &str, e: Error) -> ! {
        panic!("fixture: {what}: {e}")
    }
    store.put_cell(&cell).await.unwrap_or_else(|e| fail("cell", e));
    for h in 0..2u128 {
        let root = ProviderId(uuid::Uuid::from_u128(0x1000 + h));
        let name = format!("host{h}");
        let p = NewProvider {
            id: root,
            name: name.clone(),
            parent: None,
            cell: Some(cell.id),
            inventories: BTreeMap::from([
                (ResourceClass::Vcpu, Inventory::with_total(4)),
                (ResourceClass::MemoryMb, Inventory::with_total(8192)),
                (ResourceClass::DiskGb, Inventory::with_total(100)),
            ]),
            traits: Default::default(),
            aggregates: Default::default(),
        };
        store.create_provider(&p).await.unwrap_or_else(|e| fail("provider", e));
        let host = Host {
            name: name.clone(),
            cell: cell.id,
            root_provider: root,
            node: name,
            enabled: true,
            disabled_reason: None,
            last_heartbeat: Timestamp::now(),
            availability_zone: Some("az1".into()),
            capabilities: BTreeMap::new(),
        };
        store.put_host(&host).await.unwrap_or_else(|e| fail("host", e));
    }
    let small = Flavor {
        id: FlavorId::new("small").unwrap_or_else(|e| fail("flavor id", e)),
        name: "small".into(),
        vcpus: 1,
        memory_mb: 1024,
        root_gb: 10,
        ephemeral_gb: 0,
        swap_mb: 0,
        extra_specs: BTreeMap::new(),
    };
    let numa = Flavor {
        id: FlavorId::new("numa").unwrap_or_else(|e| fail("flavor id", e)),
        name: "numa".into(),
        extra_specs: BTreeMap::from([
            ("resources1:VCPU".into(), "1".into()),
            ("trait:HW_CPU_X86_AVX".into(), "forbidden".into()),
            ("hw:cpu_policy".into(), "shared".into()),
        ]),
        ..small.clone()
    };
    store.put_flavor(&small).await.unwrap_or_else(|e| fail("flavor", e));
    store.put_flavor(&numa).await.unwrap_or_else(|e| fail("flavor", e));
    let as_placement: Arc<dyn PlacementStore> = store;
    let state = ApiState::with_placement(as_placement, ApiConfig::default(), None)
        .await
        .unwrap_or_else(|e| panic!("fixture: api state: {e}"));
    let placement = placement::router(state.clone()).unwrap_or_else(|| panic!("fixture: no placement router"));
    (nova::router(state), placement)
}
