//! Command-line arguments (clap derive), and their conversion into the libraries' options.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// unicell: a Nova/Placement-style compute scheduler whose whole state lives in one
/// datastore, with the benchmarks that compare datastores (and Nova's SQL cells layout)
/// side by side.
#[derive(Debug, Parser)]
#[command(name = "unicell", version, about, long_about = None)]
pub struct Cli {
    /// The store to use, as a URL (`unicell stores` lists the schemes of this build).
    /// Passwords in it are never printed.
    #[arg(long, global = true, env = "UNICELL_STORE", hide_env_values = true, default_value = "memory://")]
    pub store: String,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a cloud, build many instances with concurrent schedulers and injected build
    /// failures, page through the global instance list, and write a report.
    Demo(DemoArgs),
    /// Benchmarks: candidates side by side in one run, same generated data, ratios.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run the whole store conformance suite against --store and print each case.
    Conformance(ConformanceArgs),
    /// Evaluate datastore choices: conformance, then every bench at a size, then the report.
    Evaluate(EvaluateArgs),
    /// One self-contained HTML page (tables, inline SVG charts) from every report JSON in DIR.
    Report(ReportArgs),
    /// List the store URL schemes this build understands.
    Stores,
    /// Serve the Nova compute API over the store (any number of replicas per store).
    Serve(ServeArgs),
    /// Register simulated compute hosts and heartbeat them until stopped.
    Computes(ComputesArgs),
}

/// `unicell bench ...`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Page through N instances over C cells; page latency against depth and cell count.
    List(ListArgs),
    /// Raw claim throughput per backend beside the backend's own ceiling.
    Claims(ClaimsArgs),
    /// Build requests from concurrent schedulers through the conductor; placements/s and audit.
    Schedule(ScheduleArgs),
    /// Sites with injected latency (a delaying TCP proxy): list and claim latency.
    Sites(SitesArgs),
    /// Placement's GET /allocation_candidates over N compute trees: p50/p99 per store.
    Placement(PlacementArgs),
    /// `GET /servers/detail` paged through the Nova API over each store, beside the store call.
    ApiList(ApiListArgs),
    /// SIGKILL a master of a replicated Redis Cluster (its own) under claims: time to fail
    /// over and resume, acknowledged claims lost with and without `wait_replicas=1`, audit.
    #[cfg(feature = "redis")]
    Failover(FailoverArgs),
    /// Both designs losing a node under the same builds and listings: a Redis Cluster
    /// master (unicell) and a cell's database server (the SQL cells baseline, Nova's layout).
    #[cfg(all(feature = "redis", feature = "sql"))]
    Faults(FaultsArgs),
    /// Millions of claims and releases from concurrent schedulers, then a full audit.
    Soak(SoakArgs),
}

/// `unicell bench soak`
#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// Common options.
    #[command(flatten)]
    pub common: BenchCommon,
    /// Claims plus releases per candidate [default: 10000000; quick: 20000].
    #[arg(long)]
    pub ops: Option<u64>,
    /// Concurrent schedulers (tasks).
    #[arg(long, default_value_t = 8)]
    pub schedulers: usize,
    /// Provider trees [default: 1000; quick: 50].
    #[arg(long)]
    pub trees: Option<usize>,
    /// Claims each scheduler holds before releasing its oldest.
    #[arg(long, default_value_t = 64)]
    pub hold: usize,
}

impl From<SoakArgs> for unicell_bench::SoakOptions {
    fn from(a: SoakArgs) -> Self {
        unicell_bench::SoakOptions {
            common: a.common.into(),
            ops: a.ops,
            schedulers: a.schedulers,
            trees: a.trees,
            hold: a.hold,
        }
    }
}

/// `unicell bench failover`
#[cfg(feature = "redis")]
#[derive(Debug, Clone, Args)]
pub struct FailoverArgs {
    /// Common options (`--stores` is ignored: the benchmark starts its own cluster).
    #[command(flatten)]
    pub common: BenchCommon,
    /// Runs per `--wait-replicas` value, each on a fresh cluster [default: 3; quick: 1].
    #[arg(long)]
    pub runs: Option<usize>,
    /// Provider trees, spread over every master [default: 48; quick: 12].
    #[arg(long)]
    pub trees: Option<usize>,
    /// Concurrent claiming and releasing tasks [default: 32; quick: 8].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Load before the kill, in ms [default: 4000; quick: 1500].
    #[arg(long)]
    pub before_ms: Option<u64>,
    /// Load after the old master has resynced as a replica, in ms [default: 4000; quick: 1500].
    #[arg(long)]
    pub after_ms: Option<u64>,
    /// `cluster-node-timeout` of the nodes, in ms: how long before a silent master is
    /// declared failed and its replica promoted.
    #[arg(long, default_value_t = 1000)]
    pub node_timeout_ms: u64,
    /// The store URL's `wait_replicas` values to compare, comma-separated [default: 0,1].
    #[arg(long, value_delimiter = ',')]
    pub wait_replicas: Vec<u32>,
}

#[cfg(feature = "redis")]
impl From<FailoverArgs> for unicell_bench::failover::FailoverOptions {
    fn from(a: FailoverArgs) -> Self {
        unicell_bench::failover::FailoverOptions {
            common: a.common.into(),
            runs: a.runs,
            trees: a.trees,
            workers: a.workers,
            before_ms: a.before_ms,
            after_ms: a.after_ms,
            node_timeout_ms: a.node_timeout_ms,
            wait_replicas: a.wait_replicas,
        }
    }
}

/// `unicell bench faults`
#[cfg(all(feature = "redis", feature = "sql"))]
#[derive(Debug, Clone, Args)]
pub struct FaultsArgs {
    /// Common options (`--stores` is ignored: the benchmark starts its own servers).
    #[command(flatten)]
    pub common: BenchCommon,
    /// Provider trees, spread over the three cells [default: 60; quick: 24].
    #[arg(long)]
    pub trees: Option<usize>,
    /// Concurrent building tasks (create, claim, move into the cell) [default: 16; quick: 6].
    #[arg(long)]
    pub builders: Option<usize>,
    /// Concurrent listing tasks [default: 4; quick: 2].
    #[arg(long)]
    pub listers: Option<usize>,
    /// Instances of the listed project, spread over the cells [default: 600; quick: 150].
    #[arg(long)]
    pub instances: Option<usize>,
    /// Load before the kill, in ms [default: 10000; quick: 5000].
    #[arg(long)]
    pub before_ms: Option<u64>,
    /// How long the killed node stays down, in ms [default: 30000; quick: 14000]: longer than
    /// the SQL pools' 10 s acquire timeout, so that builds can resume in the healthy cells.
    #[arg(long)]
    pub down_ms: Option<u64>,
    /// Load after the restart, in ms [default: 10000; quick: 6000].
    #[arg(long)]
    pub after_ms: Option<u64>,
    /// `cluster-node-timeout` of the Redis nodes, in ms: how long before a silent master is
    /// declared failed and its replica promoted.
    #[arg(long, default_value_t = 1000)]
    pub node_timeout_ms: u64,
}

#[cfg(all(feature = "redis", feature = "sql"))]
impl From<FaultsArgs> for unicell_bench::faults::FaultsOptions {
    fn from(a: FaultsArgs) -> Self {
        unicell_bench::faults::FaultsOptions {
            common: a.common.into(),
            trees: a.trees,
            builders: a.builders,
            listers: a.listers,
            instances: a.instances,
            before_ms: a.before_ms,
            down_ms: a.down_ms,
            after_ms: a.after_ms,
            node_timeout_ms: a.node_timeout_ms,
        }
    }
}

/// `unicell bench placement`
#[derive(Debug, Clone, Args)]
pub struct PlacementArgs {
    /// Common options.
    #[command(flatten)]
    pub common: BenchCommon,
    /// Compute trees (each with two NUMA children and an SR-IOV PF), comma-separated
    /// [default: 1000,10000; quick: 100].
    #[arg(long, value_delimiter = ',')]
    pub trees: Vec<usize>,
    /// Timed requests per store and size [default: 30; quick: 5].
    #[arg(long)]
    pub requests: Option<usize>,
    /// Untimed requests first [default: 2; quick: 1].
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Concurrent writers while loading the trees.
    #[arg(long, default_value_t = 32)]
    pub load_concurrency: usize,
}

/// `unicell bench api-list`
#[derive(Debug, Clone, Args)]
pub struct ApiListArgs {
    /// Common options.
    #[command(flatten)]
    pub common: BenchCommon,
    /// Instances to load into each candidate [default: 1000000; quick: 2000].
    #[arg(long)]
    pub instances: Option<usize>,
    /// Cell databases of the SQL baseline in cells mode.
    #[arg(long, default_value_t = 4)]
    pub cells: usize,
    /// Page size [default: 1000; quick: 100].
    #[arg(long)]
    pub limit: Option<u32>,
    /// Concurrent writers while loading.
    #[arg(long, default_value_t = 32)]
    pub load_concurrency: usize,
    /// Number of page-depth buckets in the report.
    #[arg(long, default_value_t = 10)]
    pub depth_buckets: usize,
}

impl From<ApiListArgs> for unicell_bench::ApiListOptions {
    fn from(a: ApiListArgs) -> Self {
        unicell_bench::ApiListOptions {
            common: a.common.into(),
            instances: a.instances,
            cells: a.cells,
            limit: a.limit,
            load_concurrency: a.load_concurrency,
            depth_buckets: a.depth_buckets,
        }
    }
}

/// Options every benchmark takes.
#[derive(Debug, Clone, Args)]
pub struct BenchCommon {
    /// Candidate stores, comma-separated URLs (default: the global --store). Each candidate
    /// gets the same generated data. A comma starts a new candidate only when a URL scheme
    /// follows it, so CQL host lists (`scylla://h1,h2:9042/ks`) and Redis Cluster seeds stay
    /// whole. Besides store URLs: `testkit:redis?appendfsync=everysec|always|no` and
    /// `testkit:cassandra` start a throwaway server for the run, and `cell_servers=K` on a
    /// SQL URL puts its cell databases on K throwaway servers.
    #[arg(long)]
    pub stores: Vec<String>,
    /// Directory for `<bench>.json` and `<bench>.svg` (created if missing).
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// A small size that finishes in seconds (for CI smoke runs). Explicit knobs still win.
    #[arg(long)]
    pub quick: bool,
    /// Seed of the data generator: the same seed gives the same data.
    #[arg(long, default_value_t = 20261120)]
    pub seed: u64,
}

/// `unicell bench list`
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Common options.
    #[command(flatten)]
    pub common: BenchCommon,
    /// Instances to load into each candidate [default: 100000; quick: 3000].
    #[arg(long)]
    pub instances: Option<usize>,
    /// Cell counts to run, comma-separated [default: 1,4,16,64; quick: 1,4].
    #[arg(long, value_delimiter = ',')]
    pub cells: Vec<usize>,
    /// Page size [default: 1000; quick: 100].
    #[arg(long)]
    pub limit: Option<u32>,
    /// Concurrent writers while loading.
    #[arg(long, default_value_t = 32)]
    pub load_concurrency: usize,
    /// Number of page-depth buckets in the report.
    #[arg(long, default_value_t = 10)]
    pub depth_buckets: usize,
    /// Listing workloads, comma-separated: all (unfiltered), project (a member's own
    /// project), status (vm_state ERROR), host (one compute host), changes-since (the newer
    /// half) [default: all five].
    #[arg(long, value_delimiter = ',', value_parser = parse_workload)]
    pub workloads: Vec<unicell_bench::list::Workload>,
}

fn parse_workload(s: &str) -> Result<unicell_bench::list::Workload, String> {
    unicell_bench::list::Workload::parse(s)
        .ok_or_else(|| format!("unknown workload {s:?}: one of all, project, status, host, changes-since"))
}

/// `unicell bench claims`
#[derive(Debug, Clone, Args)]
pub struct ClaimsArgs {
    /// Common options.
    #[command(flatten)]
    pub common: BenchCommon,
    /// Claims to make per candidate (and ceiling operations) [default: 100000; quick: 3000].
    #[arg(long)]
    pub claims: Option<usize>,
    /// Concurrent claiming tasks [default: 50; quick: 16].
    #[arg(long)]
    pub tasks: Option<usize>,
    /// Provider trees claims are spread over (1 = everyone on one tiny tree)
    /// [default: 1000; quick: 50].
    #[arg(long)]
    pub trees: Option<usize>,
}

/// `unicell bench schedule`
#[derive(Debug, Clone, Args)]
pub struct ScheduleArgs {
    /// Common options.
    #[command(flatten)]
    pub common: BenchCommon,
    /// Compute hosts (each a tree with NUMA and SR-IOV children) [default: 5000; quick: 100].
    #[arg(long)]
    pub hosts: Option<usize>,
    /// Cells the hosts are spread over [default: 4; quick: 2].
    #[arg(long)]
    pub cells: Option<usize>,
    /// Build requests (one instance each) [default: 20000; quick: 400].
    #[arg(long)]
    pub requests: Option<usize>,
    /// Schedulers of the process, sharing one snapshot, each with its own conductor
    /// [default: 4; quick: 2].
    #[arg(long)]
    pub schedulers: Option<usize>,
    /// Alternates asked for per instance.
    #[arg(long, default_value_t = 2)]
    pub alternates: u32,
    /// Probability that the simulated compute fails a build (reschedulable).
    #[arg(long, default_value_t = 0.02)]
    pub failure_rate: f64,
    /// Builds each scheduler's conductor runs at once.
    #[arg(long, default_value_t = 8, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pub builds_per_scheduler: usize,
    /// Requests each scheduler serves at once in the claims phase [default: 32; quick: 8].
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pub tasks_per_scheduler: Option<usize>,
    /// Hosts weighed per instance by the indexed ranking (k) [default: 16].
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100000))]
    pub indexed_candidates: Option<usize>,
    /// Cloud sizes of the CPU-per-placement sweep on memory, comma-separated
    /// [default: 1000,5000,20000,100000; quick: 100,400]; 0: no sweep.
    #[arg(long, value_delimiter = ',')]
    pub sweep: Vec<usize>,
    /// Skip the placement-quality and fill-to-failure runs.
    #[arg(long)]
    pub no_quality: bool,
    /// Claims each scheduler coalesces into one store call (a pipeline on Redis); 0 or 1:
    /// each claim alone.
    #[arg(long, default_value_t = 0, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=4096))]
    pub claim_batch: usize,
    /// Instance writes each conductor coalesces into one store call (two pipelined rounds
    /// on Redis) in the build run; 0 or 1: each write alone.
    #[arg(long, default_value_t = 0, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=4096))]
    pub write_batch: usize,
    /// Hosts of the fill-to-failure cloud [default: 500; quick: 40].
    #[arg(long)]
    pub fill_hosts: Option<usize>,
    /// Also run on a throwaway redis-server with appendonly yes and appendfsync everysec,
    /// started by the bench on a free port.
    #[arg(long)]
    pub redis_aof: bool,
    /// Scheduling designs, comma-separated, run side by side on each candidate: unicell
    /// (the snapshot scheduler) and nova (per request Placement's allocation candidates as
    /// SQL, Nova's filters and weighers over them, PUT /allocations; claims phase only, on
    /// the SQL candidates: the other candidates run unicell's design only) [default: unicell].
    #[arg(long, value_delimiter = ',')]
    pub design: Vec<String>,
}

/// `unicell bench sites`
#[derive(Debug, Clone, Args)]
pub struct SitesArgs {
    /// Common options.
    #[command(flatten)]
    pub common: BenchCommon,
    /// Site counts to run, comma-separated [default: 1,2,4; quick: 1,2].
    #[arg(long, value_delimiter = ',')]
    pub sites: Vec<usize>,
    /// One-way delays between sites in milliseconds, comma-separated
    /// [default: 0,1,5,20; quick: 0,2].
    #[arg(long, value_delimiter = ',')]
    pub delays_ms: Vec<f64>,
    /// Cells (spread round-robin over the sites) [default: 8; quick: 4].
    #[arg(long)]
    pub cells: Option<usize>,
    /// Instances loaded once per candidate [default: 20000; quick: 1000].
    #[arg(long)]
    pub instances: Option<usize>,
    /// Page size [default: 1000; quick: 100].
    #[arg(long)]
    pub limit: Option<u32>,
    /// List pages measured per point [default: 10; quick: 3].
    #[arg(long)]
    pub pages: Option<usize>,
    /// Claims measured per point [default: 50; quick: 10].
    #[arg(long)]
    pub claims: Option<usize>,
}

/// `unicell demo`
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Directory for the report (`demo.json`, `demo.svg`).
    #[arg(long, default_value = "unicell-demo-out")]
    pub out: PathBuf,
    /// Cells.
    #[arg(long, default_value_t = 4)]
    pub cells: usize,
    /// Compute hosts in total (each with 2 NUMA cells and an SR-IOV NIC).
    #[arg(long, default_value_t = 400)]
    pub hosts: usize,
    /// Instances to build.
    #[arg(long, default_value_t = 3000)]
    pub instances: usize,
    /// Concurrent schedulers (each with its own conductor).
    #[arg(long, default_value_t = 4)]
    pub schedulers: usize,
    /// Probability that the simulated compute fails a build.
    #[arg(long, default_value_t = 0.05)]
    pub failure_rate: f64,
    /// Builds each scheduler's conductor runs at once.
    #[arg(long, default_value_t = 8, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pub builds_per_scheduler: usize,
    /// Alternates asked for per instance.
    #[arg(long, default_value_t = 2)]
    pub alternates: u32,
    /// Seed of the cloud and request generator.
    #[arg(long, default_value_t = 20261120)]
    pub seed: u64,
}

/// `unicell serve`
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address of the Nova compute API.
    #[arg(long, default_value = "127.0.0.1:8774")]
    pub listen: SocketAddr,
    /// Also serve the Placement API on this address (Placement's port is 8778). Needs a
    /// store that keeps Placement's state (`unicell stores` says which).
    #[arg(long)]
    pub placement_listen: Option<SocketAddr>,
    /// Who may call the Placement API: `admin` (Placement's default policy: the noauth2
    /// token `admin`) or `authenticated` (any token, for clients that cannot pick theirs,
    /// such as the openstack CLI with `auth_type: none`).
    #[arg(long, default_value = "admin", value_parser = ["admin", "authenticated"])]
    pub placement_policy: String,
    /// Also run this many simulated compute hosts in this process (registered and
    /// heartbeating; what `unicell computes` does). The embedded `memory://` store lives in
    /// this process, so this is how it gets hosts.
    #[arg(long, default_value_t = 0)]
    pub computes: usize,
    /// Options of the in-process computes.
    #[command(flatten)]
    pub cloud: CloudArgs,
    /// Simulated build time of each instance, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub build_ms: u64,
    /// Probability that a simulated build fails (reschedulable).
    #[arg(long, default_value_t = 0.0)]
    pub build_failure_rate: f64,
    /// This replica's name in the build leases (default: host-pid-random).
    #[arg(long)]
    pub replica: Option<String>,
    /// On SIGTERM, how long to wait for the builds in flight before exiting.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// How long a build lease lasts without renewal: a replica that dies (SIGKILL, power
    /// loss) has its builds taken over by another replica after about this long. Leases are
    /// renewed, and expired ones looked for, every sixth of it.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub build_lease_ttl: Duration,
}

/// `unicell computes`
#[derive(Debug, Clone, Args)]
pub struct ComputesArgs {
    /// Simulated compute hosts to register (each a tree with NUMA and SR-IOV children).
    #[arg(long, default_value_t = 10)]
    pub hosts: usize,
    /// Options of the hosts.
    #[command(flatten)]
    pub cloud: CloudArgs,
}

/// Shape of the simulated hosts of `serve --computes` and `computes`.
#[derive(Debug, Clone, Args)]
pub struct CloudArgs {
    /// Cells the hosts are spread over.
    #[arg(long, default_value_t = 1)]
    pub cells: usize,
    /// Seed of the host generator: the same seed registers the same hosts (so a restarted
    /// `computes` picks its hosts up again).
    #[arg(long, default_value_t = 20261129)]
    pub seed: u64,
    /// How often each host reports (nova-compute's `report_interval`, 10 s).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
}

/// `unicell conformance`
#[derive(Debug, Clone, Args)]
pub struct ConformanceArgs {
    /// Only cases whose name contains this text.
    #[arg(long)]
    pub filter: Option<String>,
    /// Also write `conformance.json` into this directory (for `unicell report`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `unicell evaluate`
#[derive(Debug, Clone, Args)]
pub struct EvaluateArgs {
    /// Candidate stores, comma-separated URLs (default: the global --store).
    #[arg(long, value_delimiter = ',')]
    pub stores: Vec<String>,
    /// Also start these servers as containers and evaluate them, comma-separated: redis
    /// (appendonly yes, appendfsync everysec), postgres, mariadb, scylla. Each is reported
    /// as skipped, with the reason, where no Docker daemon answers.
    #[arg(long, value_delimiter = ',')]
    pub testcontainers: Vec<String>,
    /// How big the benches run: quick (each bench's --quick), small (minutes), full (the
    /// benches' defaults).
    #[arg(long, default_value = "small", value_parser = ["quick", "small", "full"])]
    pub size: String,
    /// Only these benches, comma-separated (claims, list, schedule, sites) [default: all].
    #[arg(long, value_delimiter = ',')]
    pub benches: Vec<String>,
    /// Skip the conformance suite.
    #[arg(long)]
    pub no_conformance: bool,
    /// Directory for the reports, charts and report.html (created if missing).
    #[arg(long, default_value = "unicell-evaluation")]
    pub out: PathBuf,
    /// Seed of the data generator.
    #[arg(long, default_value_t = 20261120)]
    pub seed: u64,
}

/// `unicell report`
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// Directory holding the reports (`<bench>.json`, `conformance.json`; subdirectories too).
    pub dir: PathBuf,
    /// Where to write the page [default: DIR/report.html].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl From<BenchCommon> for unicell_bench::Common {
    fn from(a: BenchCommon) -> Self {
        let stores = a.stores.iter().flat_map(|s| unicell_bench::candidate::split_candidates(s)).collect();
        unicell_bench::Common { stores, out: a.out, quick: a.quick, seed: a.seed }
    }
}

impl From<PlacementArgs> for unicell_bench::PlacementOptions {
    fn from(a: PlacementArgs) -> Self {
        unicell_bench::PlacementOptions {
            common: a.common.into(),
            trees: a.trees,
            requests: a.requests,
            warmup: a.warmup,
            load_concurrency: a.load_concurrency,
        }
    }
}

impl From<ListArgs> for unicell_bench::ListOptions {
    fn from(a: ListArgs) -> Self {
        unicell_bench::ListOptions {
            common: a.common.into(),
            instances: a.instances,
            cells: a.cells,
            limit: a.limit,
            load_concurrency: a.load_concurrency,
            depth_buckets: a.depth_buckets,
            workloads: a.workloads,
        }
    }
}

impl From<ClaimsArgs> for unicell_bench::ClaimsOptions {
    fn from(a: ClaimsArgs) -> Self {
        unicell_bench::ClaimsOptions { common: a.common.into(), claims: a.claims, tasks: a.tasks, trees: a.trees }
    }
}

impl From<ScheduleArgs> for unicell_bench::ScheduleOptions {
    fn from(a: ScheduleArgs) -> Self {
        unicell_bench::ScheduleOptions {
            common: a.common.into(),
            hosts: a.hosts,
            cells: a.cells,
            requests: a.requests,
            schedulers: a.schedulers,
            alternates: a.alternates,
            failure_rate: a.failure_rate,
            builds_per_scheduler: a.builds_per_scheduler,
            tasks_per_scheduler: a.tasks_per_scheduler,
            indexed_candidates: a.indexed_candidates,
            sweep: a.sweep,
            no_quality: a.no_quality,
            fill_hosts: a.fill_hosts,
            redis_aof: a.redis_aof,
            claim_batch: a.claim_batch,
            write_batch: a.write_batch,
            designs: a.design,
        }
    }
}

impl From<SitesArgs> for unicell_bench::SitesOptions {
    fn from(a: SitesArgs) -> Self {
        unicell_bench::SitesOptions {
            common: a.common.into(),
            sites: a.sites,
            delays_ms: a.delays_ms,
            cells: a.cells,
            instances: a.instances,
            limit: a.limit,
            pages: a.pages,
            claims: a.claims,
        }
    }
}

impl From<DemoArgs> for unicell_bench::DemoOptions {
    fn from(a: DemoArgs) -> Self {
        unicell_bench::DemoOptions {
            out: a.out,
            cells: a.cells,
            hosts: a.hosts,
            instances: a.instances,
            schedulers: a.schedulers,
            failure_rate: a.failure_rate,
            builds_per_scheduler: a.builds_per_scheduler,
            alternates: a.alternates,
            seed: a.seed,
        }
    }
}
