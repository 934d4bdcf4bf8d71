//! A seeded cloud generator shared by the demo and the benchmarks: cells, availability
//! zones, hosts whose provider trees have NUMA and SR-IOV children, flavors with extra specs,
//! server groups, and (for listing) instances. The same seed gives the same cloud, so every
//! candidate store of a benchmark gets exactly the same data.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::{Context, Result};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use unicell::model::*;
use unicell::store::prelude::*;
use uuid::Uuid;

use super::progress;

/// The shape of a generated cloud.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CloudSpec {
    /// Cells.
    pub cells: usize,
    /// Hosts in total, spread round-robin over the cells.
    pub hosts: usize,
    /// Availability zones (host aggregates with AZ metadata), spread over the hosts.
    pub azs: usize,
    /// NUMA children per host (each with PCPU and the HW_NUMA_ROOT trait).
    pub numa_per_host: usize,
    /// Physical cores per NUMA cell (PCPU inventory of each NUMA child).
    pub pcpus_per_numa: i64,
    /// VCPU inventory of the root (before the allocation ratio).
    pub vcpus: i64,
    /// MEMORY_MB inventory of the root.
    pub memory_mb: i64,
    /// DISK_GB inventory of the root.
    pub disk_gb: i64,
    /// SRIOV_NET_VF inventory of the SR-IOV physical function child.
    pub vfs: i64,
    /// Anti-affinity and affinity server groups to create.
    pub server_groups: usize,
    /// Add a rarely requested flavor no host can hold (the demo shows NoValidHost with
    /// its reason).
    pub oversized_flavor: bool,
    /// The seed.
    pub seed: u64,
}

impl CloudSpec {
    /// A cloud of `hosts` hosts over `cells` cells with realistic host sizes.
    pub fn new(cells: usize, hosts: usize, seed: u64) -> Self {
        CloudSpec {
            cells: cells.max(1),
            hosts,
            azs: 3,
            numa_per_host: 2,
            pcpus_per_numa: 8,
            vcpus: 32,
            memory_mb: 131_072,
            disk_gb: 2_000,
            vfs: 16,
            server_groups: 8,
            oversized_flavor: false,
            seed,
        }
    }
}

/// One generated host: its catalog record and its provider tree (root first).
#[derive(Debug, Clone)]
pub struct GenHost {
    /// The host record.
    pub host: Host,
    /// The providers of its tree, parents before children.
    pub providers: Vec<NewProvider>,
}

/// A generated cloud.
#[derive(Debug, Clone)]
pub struct Cloud {
    /// Cells.
    pub cells: Vec<Cell>,
    /// Availability-zone aggregates.
    pub aggregates: Vec<Aggregate>,
    /// Hosts with their trees.
    pub hosts: Vec<GenHost>,
    /// Flavors, with a weight each for the request mix.
    pub flavors: Vec<(Flavor, u32)>,
    /// Server groups.
    pub groups: Vec<ServerGroup>,
}

/// A v4-shaped UUID from the generator.
pub fn uuid_from(rng: &mut impl Rng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid()
}

/// The trait every SR-IOV physical function of the generated cloud carries.
pub const PHYSNET_TRAIT: &str = "CUSTOM_PHYSNET_PUBLIC";
/// The trait a quarter of the hosts carry on their root (for `trait:...=required` flavors).
pub const AVX_TRAIT: &str = "HW_CPU_X86_AVX2";

fn trait_(name: &str) -> Result<Trait> {
    Trait::new(name).with_context(|| format!("bad generated trait {name}"))
}

impl Cloud {
    /// Generates the cloud described by `spec` (deterministic in `spec.seed`).
    pub fn generate(spec: CloudSpec) -> Result<Self> {
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let cells: Vec<Cell> = (0..spec.cells)
            .map(|i| Cell { id: CellId(uuid_from(&mut rng)), name: format!("cell{i}"), disabled: false })
            .collect();
        let aggregates: Vec<Aggregate> = (0..spec.azs.max(1))
            .map(|i| Aggregate {
                id: AggregateId(uuid_from(&mut rng)),
                name: format!("az{i}-hosts"),
                availability_zone: Some(format!("az{i}")),
                metadata: BTreeMap::new(),
            })
            .collect();
        let now = Timestamp::now();
        let numa_root = trait_("HW_NUMA_ROOT")?;
        let sriov = trait_("HW_NIC_SRIOV")?;
        let physnet = trait_(PHYSNET_TRAIT)?;
        let avx = trait_(AVX_TRAIT)?;
        let mut hosts = Vec::with_capacity(spec.hosts);
        for h in 0..spec.hosts {
            let cell = &cells[h % cells.len()];
            let agg = &aggregates[(h / cells.len()) % aggregates.len()];
            let name = format!("{}-host{h:05}", cell.name);
            let root = ProviderId(uuid_from(&mut rng));
            let mut root_traits = BTreeSet::new();
            if rng.random_bool(0.25) {
                root_traits.insert(avx.clone());
            }
            let inv = |total: i64, ratio: f64| Inventory { allocation_ratio: ratio, ..Inventory::with_total(total) };
            let mut providers = vec![NewProvider {
                id: root,
                name: name.clone(),
                parent: None,
                cell: Some(cell.id),
                inventories: BTreeMap::from([
                    (ResourceClass::Vcpu, inv(spec.vcpus, 4.0)),
                    (
                        ResourceClass::MemoryMb,
                        Inventory { reserved: 4096.min(spec.memory_mb - 1), ..inv(spec.memory_mb, 1.0) },
                    ),
                    (ResourceClass::DiskGb, inv(spec.disk_gb, 1.0)),
                ]),
                traits: root_traits,
                aggregates: BTreeSet::from([agg.id]),
            }];
            for n in 0..spec.numa_per_host {
                providers.push(NewProvider {
                    id: ProviderId(uuid_from(&mut rng)),
                    name: format!("{name}-numa{n}"),
                    parent: Some(root),
                    cell: Some(cell.id),
                    inventories: BTreeMap::from([(ResourceClass::Pcpu, inv(spec.pcpus_per_numa, 1.0))]),
                    traits: BTreeSet::from([numa_root.clone()]),
                    aggregates: BTreeSet::new(),
                });
            }
            providers.push(NewProvider {
                id: ProviderId(uuid_from(&mut rng)),
                name: format!("{name}-pf0"),
                parent: Some(root),
                cell: Some(cell.id),
                inventories: BTreeMap::from([(ResourceClass::SriovNetVf, inv(spec.vfs, 1.0))]),
                traits: BTreeSet::from([sriov.clone(), physnet.clone()]),
                aggregates: BTreeSet::new(),
            });
            hosts.push(GenHost {
                host: Host {
                    name: name.clone(),
                    cell: cell.id,
                    root_provider: root,
                    node: name,
                    enabled: true,
                    disabled_reason: None,
                    last_heartbeat: now,
                    availability_zone: agg.availability_zone.clone(),
                    capabilities: BTreeMap::from([
                        ("hypervisor_type".to_string(), "QEMU".to_string()),
                        ("architecture".to_string(), "x86_64".to_string()),
                    ]),
                },
                providers,
            });
        }
        let flavor = |id: &str, vcpus, memory_mb, root_gb, specs: &[(&str, &str)]| -> Result<Flavor> {
            let f = Flavor {
                id: FlavorId::new(id)?,
                name: id.to_string(),
                vcpus,
                memory_mb,
                root_gb,
                ephemeral_gb: 0,
                swap_mb: 0,
                extra_specs: specs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            };
            f.validate().with_context(|| format!("generated flavor {id} is invalid"))?;
            Ok(f)
        };
        let mut flavors = vec![
            (flavor("m1.small", 1, 2048, 20, &[])?, 40),
            (flavor("m1.medium", 2, 4096, 40, &[])?, 30),
            (flavor("m1.large", 4, 8192, 80, &[])?, 10),
            (flavor("c1.avx2", 4, 8192, 40, &[("trait:HW_CPU_X86_AVX2", "required")])?, 5),
            (
                flavor(
                    "n1.sriov",
                    2,
                    4096,
                    40,
                    &[("resources1:SRIOV_NET_VF", "1"), ("trait1:CUSTOM_PHYSNET_PUBLIC", "required")],
                )?,
                10,
            ),
            (flavor("d1.dedicated", 2, 4096, 40, &[("hw:cpu_policy", "dedicated")])?, 5),
        ];
        if spec.oversized_flavor {
            flavors.push((flavor("x1.huge", spec.vcpus * 8, 4096, 40, &[])?, 1));
        }
        let groups = (0..spec.server_groups)
            .map(|i| {
                let policy = if i % 2 == 0 { GroupPolicy::AntiAffinity } else { GroupPolicy::SoftAntiAffinity };
                ServerGroup {
                    id: GroupId(uuid_from(&mut rng)),
                    name: format!("group{i}"),
                    project_id: format!("project{}", i % 10),
                    user_id: "demo".to_string(),
                    policy,
                    max_per_host: (policy == GroupPolicy::AntiAffinity).then_some(2),
                }
            })
            .collect();
        Ok(Cloud { cells, aggregates, hosts, flavors, groups })
    }

    /// Writes the whole cloud into `store`: cells, aggregates, flavors and server groups,
    /// then each host's provider tree and host record (hosts concurrently, with a progress
    /// bar).
    pub async fn load(&self, store: &Arc<dyn Store>, concurrency: usize) -> Result<()> {
        for c in &self.cells {
            store.put_cell(c).await.context("put_cell")?;
        }
        for a in &self.aggregates {
            store.put_aggregate(a).await.context("put_aggregate")?;
        }
        for (f, _) in &self.flavors {
            store.put_flavor(f).await.context("put_flavor")?;
        }
        for g in &self.groups {
            store.create_server_group(g).await.context("create_server_group")?;
        }
        let bar = progress::bar("creating hosts", self.hosts.len() as u64);
        let mut results = futures::stream::iter(self.hosts.iter().map(|h| {
            let bar = bar.clone();
            async move {
                for p in &h.providers {
                    store.create_provider(p).await.with_context(|| format!("create_provider {}", p.name))?;
                }
                // The host reports now (its service heartbeat), as nova-compute does on start.
                let mut host = h.host.clone();
                host.last_heartbeat = Timestamp::now();
                store.put_host(&host).await.with_context(|| format!("put_host {}", host.name))?;
                progress::inc(&bar, 1);
                anyhow::Ok(())
            }
        }))
        .buffer_unordered(concurrency.max(1));
        while let Some(r) = results.next().await {
            r?;
        }
        Ok(())
    }

    /// Picks a flavor by the mix's weights.
    pub fn pick_flavor(&self, rng: &mut impl Rng) -> &Flavor {
        let total: u32 = self.flavors.iter().map(|(_, w)| w).sum();
        let mut x = rng.random_range(0..total.max(1));
        for (f, w) in &self.flavors {
            if x < *w {
                return f;
            }
            x -= w;
        }
        &self.flavors[0].0
    }
}

/// splitmix64: a fast, well-mixed hash used to derive per-index data without keeping it.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The cells of a listing dataset: `n` cells with ids derived from `seed`.
pub fn list_cells(seed: u64, n: usize) -> Vec<Cell> {
    (0..n.max(1))
        .map(|i| {
            let a = mix(seed ^ 0xCE11 ^ (i as u64).wrapping_mul(0x1000_0001));
            let b = mix(a);
            let id = uuid::Builder::from_random_bytes((u128::from(a) << 64 | u128::from(b)).to_be_bytes()).into_uuid();
            Cell { id: CellId(id), name: format!("cell{i}"), disabled: false }
        })
        .collect()
}

/// Instance `i` of a listing dataset, a pure function of `(seed, i, cells)`, so that every
/// candidate gets exactly the same instances without keeping them all in memory. Every
/// four consecutive instances share a `created_at`, so the uuid tie-break of the listing
/// order is exercised; instances are spread over the cells by a hash, so every page needs
/// rows from every cell.
pub fn list_instance(seed: u64, i: u64, cells: &[Cell], flavor: &FlavorId) -> Instance {
    let a = mix(seed ^ i.wrapping_mul(0xA24B_AED4_963E_E407));
    let b = mix(a ^ 0x5851_F42D_4C95_7F2D);
    let uuid = uuid::Builder::from_random_bytes((u128::from(a) << 64 | u128::from(b)).to_be_bytes()).into_uuid();
    let cell = &cells[(a % cells.len().max(1) as u64) as usize];
    // 2026-01-01T00:00:00Z plus one millisecond per group of four.
    let created = Timestamp::from_micros(1_767_225_600_000_000 + (i / 4) as i64 * 1000);
    let host = format!("{}-host{:05}", cell.name, b % 500);
    Instance {
        uuid: InstanceId(uuid),
        name: format!("vm-{i}"),
        project_id: format!("project{}", b % 50),
        user_id: format!("user{}", a % 200),
        cell: Some(cell.id),
        host: Some(host.clone()),
        node: Some(host),
        flavor: flavor.clone(),
        vm_state: VmState::Active,
        task_state: None,
        created_at: created,
        updated_at: created,
        launched_at: Some(created),
        deleted: false,
        availability_zone: Some(format!("az{}", a % 3)),
        metadata: BTreeMap::new(),
        tags: BTreeSet::new(),
        fault: None,
        system_metadata: BTreeMap::new(),
    }
}
