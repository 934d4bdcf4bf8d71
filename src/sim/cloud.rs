//! One simulated cloud in one store: [`Cloud`].
//!
//! A cloud is written through this type only, one host at a time ([`Cloud::add_host`], what
//! tests do) or as a whole seeded cloud ([`Cloud::generate`], what the demo and the
//! benchmarks do). Both turn a [`HostSpec`] into a provider tree and a host record with the
//! same code, and both keep what they wrote (cells, aggregates, hosts, flavors, groups) so
//! that callers can refer to it: a test asks for a host by name, the request mix picks
//! flavors and groups, the heartbeat loop knows which hosts to report for.
//!
//! The generator is deterministic in its seed: every candidate store of a benchmark gets
//! exactly the same cells, providers, flavors and groups, ids included.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::Progress;
use super::seeded::uuid_from;
use crate::error::{Error, Result};
use crate::model::*;
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::store::Store;

/// One child provider of a host's tree (a NUMA cell, a NIC's physical function, ...).
#[derive(Clone, Debug, PartialEq)]
pub struct ChildSpec {
    /// Appended to the host name to name the provider (`-numa0`, `-pf0`).
    pub suffix: String,
    /// Index of an earlier child of the same host that is this one's parent; `None` puts
    /// it right under the root.
    pub parent: Option<usize>,
    /// Inventories.
    pub inventories: BTreeMap<ResourceClass, Inventory>,
    /// Traits.
    pub traits: BTreeSet<Trait>,
}

/// The shape of one compute host: its root provider's inventories and traits, its child
/// providers, and its service record (enabled, last heartbeat, availability zone,
/// capabilities).
#[derive(Clone, Debug, PartialEq)]
pub struct HostSpec {
    /// VCPU total of the root.
    pub vcpu: i64,
    /// VCPU allocation ratio (Nova's `cpu_allocation_ratio`).
    pub vcpu_allocation_ratio: f64,
    /// MEMORY_MB total of the root.
    pub mem_mb: i64,
    /// MEMORY_MB reserved for the hypervisor (Nova's `reserved_host_memory_mb`).
    pub reserved_mem_mb: i64,
    /// DISK_GB total of the root.
    pub disk_gb: i64,
    /// Traits of the root.
    pub traits: BTreeSet<Trait>,
    /// Aggregates the root is in.
    pub aggregates: Vec<AggregateId>,
    /// Whether the compute service is enabled (a disabled one is skipped by ComputeFilter).
    pub enabled: bool,
    /// Age of the last heartbeat when the host is written, in seconds (older than the
    /// scheduler's `service_down_time` means down).
    pub heartbeat_age_s: u64,
    /// Availability zone of the host record.
    pub az: Option<String>,
    /// Capabilities of the host record (`architecture`, `hypervisor_type`, ...).
    pub capabilities: BTreeMap<String, String>,
    /// Child providers, parents before children.
    pub children: Vec<ChildSpec>,
}

impl Default for HostSpec {
    /// 16 VCPU, 32 GiB, 500 GB, no ratio, nothing reserved, no children, enabled and up.
    fn default() -> Self {
        HostSpec {
            vcpu: 16,
            vcpu_allocation_ratio: 1.0,
            mem_mb: 32768,
            reserved_mem_mb: 0,
            disk_gb: 500,
            traits: BTreeSet::new(),
            aggregates: Vec::new(),
            enabled: true,
            heartbeat_age_s: 0,
            az: None,
            capabilities: BTreeMap::new(),
            children: Vec::new(),
        }
    }
}

impl HostSpec {
    /// A host with these sizes and defaults for the rest.
    pub fn sized(vcpu: i64, mem_mb: i64, disk_gb: i64) -> Self {
        HostSpec { vcpu, mem_mb, disk_gb, ..Default::default() }
    }

    /// Adds two NUMA children (PCPU 8 and NUMA_MEMORY_MB 16384 each) and, under NUMA 0, an
    /// SR-IOV physical function (SRIOV_NET_VF 4, trait `CUSTOM_PHYSNET_A`): a host whose NIC
    /// is affine to one NUMA cell, for numbered request groups and nested trees.
    pub fn nested(mut self) -> Result<Self> {
        for n in 0..2 {
            self.children.push(ChildSpec {
                suffix: format!("-numa{n}"),
                parent: None,
                inventories: BTreeMap::from([
                    (ResourceClass::Pcpu, Inventory::with_total(8)),
                    (ResourceClass::NumaMemoryMb, Inventory::with_total(16384)),
                ]),
                traits: BTreeSet::new(),
            });
        }
        let numa0 = self.children.len() - 2;
        self.children.push(ChildSpec {
            suffix: "-pf0".into(),
            parent: Some(numa0),
            inventories: BTreeMap::from([(ResourceClass::SriovNetVf, Inventory::with_total(4))]),
            traits: BTreeSet::from([Trait::new("CUSTOM_PHYSNET_A")?]),
        });
        Ok(self)
    }

    /// Adds a trait to the root (fails on a malformed trait name).
    pub fn with_trait(mut self, name: &str) -> Result<Self> {
        self.traits.insert(Trait::new(name)?);
        Ok(self)
    }

    /// Sets a capability of the host record.
    pub fn with_capability(mut self, key: &str, value: &str) -> Self {
        self.capabilities.insert(key.to_string(), value.to_string());
        self
    }

    /// The host named `name` (hypervisor node `node`) in `cell` as records: its provider
    /// tree with root `root` and children ids from `child_id` (drawn in child order), and
    /// its host record. Writes nothing.
    fn host(
        &self,
        name: &str,
        node: &str,
        cell: CellId,
        root: ProviderId,
        mut child_id: impl FnMut() -> ProviderId,
    ) -> Result<SimHost> {
        let mut providers = vec![NewProvider {
            id: root,
            name: name.to_string(),
            parent: None,
            cell: Some(cell),
            inventories: BTreeMap::from([
                (
                    ResourceClass::Vcpu,
                    Inventory { allocation_ratio: self.vcpu_allocation_ratio, ..Inventory::with_total(self.vcpu) },
                ),
                (
                    ResourceClass::MemoryMb,
                    Inventory { reserved: self.reserved_mem_mb, ..Inventory::with_total(self.mem_mb) },
                ),
                (ResourceClass::DiskGb, Inventory::with_total(self.disk_gb)),
            ]),
            traits: self.traits.clone(),
            aggregates: self.aggregates.iter().copied().collect(),
        }];
        for (i, child) in self.children.iter().enumerate() {
            let parent = match child.parent {
                None => root,
                // `providers[0]` is the root, so child `p` is `providers[p + 1]`.
                Some(p) if p < i => providers[p + 1].id,
                Some(p) => {
                    return Err(Error::invalid(
                        "host spec",
                        format!(
                            "child {i} ({}) names child {p} as its parent, which does not come before it",
                            child.suffix
                        ),
                    ));
                }
            };
            providers.push(NewProvider {
                id: child_id(),
                name: format!("{name}{}", child.suffix),
                parent: Some(parent),
                cell: Some(cell),
                inventories: child.inventories.clone(),
                traits: child.traits.clone(),
                aggregates: BTreeSet::new(),
            });
        }
        let host = Host {
            name: name.to_string(),
            cell,
            root_provider: root,
            node: node.to_string(),
            enabled: self.enabled,
            disabled_reason: (!self.enabled).then(|| "disabled in the host spec".to_string()),
            last_heartbeat: Timestamp::now(),
            availability_zone: self.az.clone(),
            capabilities: self.capabilities.clone(),
        };
        Ok(SimHost { name: name.to_string(), root, host, providers, heartbeat_age_s: self.heartbeat_age_s })
    }
}

/// One host of a [`Cloud`]: its record and its provider tree, as written.
#[derive(Clone, Debug)]
pub struct SimHost {
    /// Service host name (the same as `host.name`).
    pub name: String,
    /// Root provider (the same as `host.root_provider`).
    pub root: ProviderId,
    /// The host record (its `last_heartbeat` is the one of the moment it was built).
    pub host: Host,
    /// The providers of its tree, parents before children.
    pub providers: Vec<NewProvider>,
    heartbeat_age_s: u64,
}

impl SimHost {
    /// The provider of this host's tree named `<host name><suffix>` (`""`: the root;
    /// `"-numa0"`, `"-pf0"`: children of the shapes above).
    pub fn provider(&self, suffix: &str) -> Option<ProviderId> {
        let name = format!("{}{suffix}", self.name);
        self.providers.iter().find(|p| p.name == name).map(|p| p.id)
    }

    /// Writes the tree, then the host record with a heartbeat `heartbeat_age_s` old, as a
    /// nova-compute registering on start does.
    async fn write(&self, store: &dyn Store) -> Result<()> {
        for p in &self.providers {
            store.create_provider(p).await?;
        }
        self.write_record(store).await
    }

    /// Writes the host record with a heartbeat `heartbeat_age_s` old.
    async fn write_record(&self, store: &dyn Store) -> Result<()> {
        let mut host = self.host.clone();
        host.last_heartbeat = Timestamp::now().minus(std::time::Duration::from_secs(self.heartbeat_age_s));
        store.put_host(&host).await
    }
}

/// The parameters of a generated cloud ([`Cloud::generate`]).
#[derive(Debug, Clone, Serialize)]
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

    /// The shape of every generated host: VCPU at ratio 4, 4 GiB of memory reserved,
    /// `numa_per_host` NUMA children and one SR-IOV physical function on the root.
    fn host_spec(&self, numa_root: &Trait, sriov: &Trait, physnet: &Trait) -> HostSpec {
        let mut children: Vec<ChildSpec> = (0..self.numa_per_host)
            .map(|n| ChildSpec {
                suffix: format!("-numa{n}"),
                parent: None,
                inventories: BTreeMap::from([(ResourceClass::Pcpu, Inventory::with_total(self.pcpus_per_numa))]),
                traits: BTreeSet::from([numa_root.clone()]),
            })
            .collect();
        children.push(ChildSpec {
            suffix: "-pf0".into(),
            parent: None,
            inventories: BTreeMap::from([(ResourceClass::SriovNetVf, Inventory::with_total(self.vfs))]),
            traits: BTreeSet::from([sriov.clone(), physnet.clone()]),
        });
        HostSpec {
            vcpu: self.vcpus,
            vcpu_allocation_ratio: 4.0,
            mem_mb: self.memory_mb,
            reserved_mem_mb: 4096.min(self.memory_mb - 1),
            disk_gb: self.disk_gb,
            capabilities: BTreeMap::from([
                ("hypervisor_type".to_string(), "QEMU".to_string()),
                ("architecture".to_string(), "x86_64".to_string()),
            ]),
            children,
            ..HostSpec::default()
        }
    }
}

/// The trait every SR-IOV physical function of a generated cloud carries.
pub const PHYSNET_TRAIT: &str = "CUSTOM_PHYSNET_PUBLIC";
/// The trait a quarter of the generated hosts carry on their root (for
/// `trait:...=required` flavors).
pub const AVX_TRAIT: &str = "HW_CPU_X86_AVX2";

/// A simulated cloud in one store, and everything written into it.
#[derive(Clone, Debug)]
pub struct Cloud {
    /// The store it lives in.
    pub store: Arc<dyn Store>,
    /// The cell [`add_host`](Self::add_host) puts hosts into (the first of `cells`).
    pub cell: CellId,
    /// A short random tag naming what [`Cloud::new`] and [`add_host`](Self::add_host)
    /// create, so that clouds sharing a store never collide.
    pub tag: String,
    /// Cells.
    pub cells: Vec<Cell>,
    /// Availability-zone aggregates.
    pub aggregates: Vec<Aggregate>,
    /// Hosts with their trees.
    pub hosts: Vec<SimHost>,
    /// Flavors, with a weight each for the request mix.
    pub flavors: Vec<(Flavor, u32)>,
    /// Server groups.
    pub groups: Vec<ServerGroup>,
}

impl Cloud {
    /// A cloud of one fresh cell (named after a fresh tag) and nothing else yet.
    pub async fn new(store: Arc<dyn Store>) -> Result<Cloud> {
        let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let cell = Cell { id: CellId::new_v4(), name: format!("cell-{tag}"), disabled: false };
        store.put_cell(&cell).await?;
        Ok(Cloud {
            store,
            cell: cell.id,
            tag,
            cells: vec![cell],
            aggregates: Vec::new(),
            hosts: Vec::new(),
            flavors: Vec::new(),
            groups: Vec::new(),
        })
    }

    /// Generates the cloud `spec` describes (deterministic in `spec.seed`) and writes it
    /// into `store`, which must not hold it yet: cells, aggregates, flavors and server
    /// groups, then each host's provider tree and host record, `concurrency` hosts at a time
    /// (phase "creating hosts" of `progress`). Host `h` is `cell<h % cells>-host<h>`, in
    /// availability zone `az<(h / cells) % azs>`; a quarter of the hosts (seeded) carry
    /// [`AVX_TRAIT`].
    pub async fn generate(
        store: Arc<dyn Store>,
        spec: &CloudSpec,
        concurrency: usize,
        progress: &dyn Progress,
    ) -> Result<Cloud> {
        let plan = Plan::of(spec)?;
        for c in &plan.cells {
            store.put_cell(c).await?;
        }
        for a in &plan.aggregates {
            store.put_aggregate(a).await?;
        }
        for (f, _) in &plan.flavors {
            store.put_flavor(f).await?;
        }
        for g in &plan.groups {
            store.create_server_group(g).await?;
        }
        write_hosts(&*store, &plan.hosts, concurrency, progress).await?;
        Ok(plan.into_cloud(store))
    }

    /// Registers the cloud `spec` describes in `store` the way a fleet of nova-compute
    /// services starting (or restarting) does: what is already there is kept, so running it
    /// again with the same spec changes nothing and a larger `spec.hosts` adds the missing
    /// hosts. Cells and aggregates are written (the same records), server groups that exist
    /// are kept, hosts already registered are left alone (their heartbeat is
    /// [`Heartbeat`](super::Heartbeat)'s job) and a half-written host is completed. The
    /// generated flavors are written only when the store has no flavor at all (an operator's
    /// flavors win); `flavors` of the result lists them only when they were written.
    pub async fn register(
        store: Arc<dyn Store>,
        spec: &CloudSpec,
        concurrency: usize,
        progress: &dyn Progress,
    ) -> Result<Cloud> {
        let mut plan = Plan::of(spec)?;
        for c in &plan.cells {
            store.put_cell(c).await?;
        }
        for a in &plan.aggregates {
            store.put_aggregate(a).await?;
        }
        if store.list_flavors().await?.is_empty() {
            for (f, _) in &plan.flavors {
                store.put_flavor(f).await?;
            }
        } else {
            plan.flavors.clear();
        }
        for g in &plan.groups {
            match store.create_server_group(g).await {
                Ok(()) | Err(Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let known: BTreeSet<String> = store.list_hosts(None).await?.into_iter().map(|h| h.name).collect();
        let missing: Vec<SimHost> = plan.hosts.iter().filter(|h| !known.contains(&h.name)).cloned().collect();
        let phase = progress.phase("registering hosts", missing.len() as u64);
        let mut writes = futures::stream::iter(missing.iter().map(|h| {
            let (store, phase) = (&store, &phase);
            async move {
                for p in &h.providers {
                    match store.create_provider(p).await {
                        Ok(_) | Err(Error::AlreadyExists { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                h.write_record(&**store).await?;
                phase.advance(1);
                Ok(())
            }
        }))
        .buffer_unordered(concurrency.max(1));
        while let Some(r) = writes.next().await {
            r?;
        }
        drop(writes);
        Ok(plan.into_cloud(store))
    }

    /// Adds a host shaped by `spec` to [`cell`](Self::cell) and writes it; its name is
    /// `<tag>-h<index>`, so hosts sort by creation order, and its node `<name>.node`.
    pub async fn add_host(&mut self, spec: HostSpec) -> Result<SimHost> {
        let name = format!("{}-h{:04}", self.tag, self.hosts.len());
        let host = spec.host(&name, &format!("{name}.node"), self.cell, ProviderId::new_v4(), ProviderId::new_v4)?;
        host.write(&*self.store).await?;
        self.hosts.push(host.clone());
        Ok(host)
    }

    /// Adds `n` hosts shaped by `spec`.
    pub async fn add_hosts(&mut self, n: usize, spec: HostSpec) -> Result<()> {
        for _ in 0..n {
            self.add_host(spec.clone()).await?;
        }
        Ok(())
    }

    /// Creates a server group of `policy` (project `proj`, user `user`).
    pub async fn group(&mut self, policy: GroupPolicy, max_per_host: Option<u32>) -> Result<ServerGroup> {
        let g = ServerGroup {
            id: GroupId::new_v4(),
            name: format!("g-{}", self.tag),
            project_id: "proj".into(),
            user_id: "user".into(),
            policy,
            max_per_host,
        };
        self.store.create_server_group(&g).await?;
        self.groups.push(g.clone());
        Ok(g)
    }

    /// A scheduler configuration scoped to this cloud's cells, with a fixed seed.
    pub fn config(&self) -> SchedulerConfig {
        SchedulerConfig { cells: self.cells.iter().map(|c| c.id).collect(), seed: Some(7), ..Default::default() }
    }

    /// A scheduler with [`config`](Self::config).
    pub async fn scheduler(&self) -> Result<Arc<Scheduler>> {
        self.scheduler_with(self.config()).await
    }

    /// A scheduler with `config` on this cloud's store.
    pub async fn scheduler_with(&self, config: SchedulerConfig) -> Result<Arc<Scheduler>> {
        Ok(Arc::new(Scheduler::new(Arc::clone(&self.store), config).await?))
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> Option<&SimHost> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// Providers written for hosts.
    pub fn providers(&self) -> usize {
        self.hosts.iter().map(|h| h.providers.len()).sum()
    }

    /// Picks a flavor by the mix's weights (`None` when the cloud has no flavor).
    pub fn pick_flavor(&self, rng: &mut impl Rng) -> Option<&Flavor> {
        let total: u32 = self.flavors.iter().map(|(_, w)| w).sum();
        let mut x = rng.random_range(0..total.max(1));
        for (f, w) in &self.flavors {
            if x < *w {
                return Some(f);
            }
            x -= w;
        }
        self.flavors.first().map(|(f, _)| f)
    }
}

/// A generated cloud before it is written.
struct Plan {
    cells: Vec<Cell>,
    aggregates: Vec<Aggregate>,
    hosts: Vec<SimHost>,
    flavors: Vec<(Flavor, u32)>,
    groups: Vec<ServerGroup>,
}

impl Plan {
    /// The records of the cloud `spec` describes (deterministic in `spec.seed`).
    fn of(spec: &CloudSpec) -> Result<Plan> {
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let cells: Vec<Cell> = (0..spec.cells.max(1))
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
        let avx = Trait::new(AVX_TRAIT)?;
        let shape =
            spec.host_spec(&Trait::new("HW_NUMA_ROOT")?, &Trait::new("HW_NIC_SRIOV")?, &Trait::new(PHYSNET_TRAIT)?);
        let mut hosts = Vec::with_capacity(spec.hosts);
        for h in 0..spec.hosts {
            let cell = &cells[h % cells.len()];
            let agg = &aggregates[(h / cells.len()) % aggregates.len()];
            let name = format!("{}-host{h:05}", cell.name);
            // The draws come in this order (root, trait roll, children) so that a seed
            // keeps giving the same cloud.
            let root = ProviderId(uuid_from(&mut rng));
            let mut host_spec = HostSpec {
                aggregates: vec![agg.id],
                az: agg.availability_zone.clone(),
                traits: BTreeSet::new(),
                ..shape.clone()
            };
            if rng.random_bool(0.25) {
                host_spec.traits.insert(avx.clone());
            }
            hosts.push(host_spec.host(&name, &name, cell.id, root, || ProviderId(uuid_from(&mut rng)))?);
        }
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

        Ok(Plan { cells, aggregates, hosts, flavors, groups })
    }

    fn into_cloud(self, store: Arc<dyn Store>) -> Cloud {
        let Plan { cells, aggregates, hosts, flavors, groups } = self;
        Cloud { cell: cells[0].id, tag: "sim".into(), store, cells, aggregates, hosts, flavors, groups }
    }
}

/// Writes `hosts` (trees, then records), `concurrency` at a time, as phase "creating hosts".
async fn write_hosts(store: &dyn Store, hosts: &[SimHost], concurrency: usize, progress: &dyn Progress) -> Result<()> {
    let phase = progress.phase("creating hosts", hosts.len() as u64);
    let mut writes = futures::stream::iter(hosts.iter().map(|h| {
        let phase = &phase;
        async move {
            h.write(store).await?;
            phase.advance(1);
            Ok::<_, Error>(())
        }
    }))
    .buffer_unordered(concurrency.max(1));
    while let Some(r) = writes.next().await {
        r?;
    }
    Ok(())
}

/// A validated flavor of the generated mix.
fn flavor(id: &str, vcpus: i64, memory_mb: i64, root_gb: i64, specs: &[(&str, &str)]) -> Result<Flavor> {
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
    f.validate()?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::Silent;
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn generation_is_deterministic_and_complete() {
        let spec = CloudSpec::new(2, 10, 42);
        let a = Cloud::generate(Arc::new(MemoryStore::new()), &spec, 4, &Silent).await.unwrap();
        let b = Cloud::generate(Arc::new(MemoryStore::new()), &spec, 4, &Silent).await.unwrap();
        let ids = |c: &Cloud| c.hosts.iter().flat_map(|h| h.providers.iter().map(|p| p.id)).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&b));
        assert_eq!(a.providers(), 10 * 4, "root, two NUMA cells and a PF per host");
        assert_eq!(a.store.list_provider_trees(None).await.unwrap().len(), 10);
        assert_eq!(a.store.list_hosts(None).await.unwrap().len(), 10);
        let pf = &a.hosts[3].providers[3];
        assert_eq!((pf.name.as_str(), pf.parent), ("cell1-host00003-pf0", Some(a.hosts[3].root)));
    }

    #[tokio::test]
    async fn registering_again_keeps_what_is_there_and_adds_what_is_missing() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let mut spec = CloudSpec::new(1, 3, 9);
        let first = Cloud::register(store.clone(), &spec, 2, &Silent).await.unwrap();
        assert_eq!(first.flavors.len(), 6, "an empty store gets the generated flavors");
        spec.hosts = 5;
        let again = Cloud::register(store.clone(), &spec, 2, &Silent).await.unwrap();
        assert!(again.flavors.is_empty(), "flavors already there win");
        assert_eq!(
            again.hosts[..3].iter().map(|h| h.root).collect::<Vec<_>>(),
            first.hosts.iter().map(|h| h.root).collect::<Vec<_>>()
        );
        assert_eq!(store.list_hosts(None).await.unwrap().len(), 5);
        assert_eq!(store.list_provider_trees(None).await.unwrap().len(), 5);
        assert!(Cloud::generate(store, &spec, 2, &Silent).await.is_err(), "generate expects a store without the cloud");
    }

    #[tokio::test]
    async fn added_hosts_follow_their_spec() {
        let mut cloud = Cloud::new(Arc::new(MemoryStore::new())).await.unwrap();
        let h = cloud.add_host(HostSpec::default().nested().unwrap()).await.unwrap();
        let tree = cloud.store.provider_tree(h.root).await.unwrap();
        assert_eq!(tree.providers.len(), 4);
        let pf = tree.providers.iter().find(|p| p.name.ends_with("-pf0")).unwrap();
        assert_eq!(pf.parent, Some(h.providers[1].id), "the PF sits under NUMA 0");
        let bad = HostSpec {
            children: vec![ChildSpec {
                suffix: "-x".into(),
                parent: Some(0),
                inventories: BTreeMap::new(),
                traits: BTreeSet::new(),
            }],
            ..HostSpec::default()
        };
        assert!(matches!(cloud.add_host(bad).await, Err(Error::InvalidInput { .. })));
    }
}
