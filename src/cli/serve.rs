//! `unicell serve` (the Nova compute API over the store) and `unicell computes` (simulated
//! compute hosts that register and heartbeat, as nova-compute does).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use unicell::api::{ApiConfig, ApiState, Server};
use unicell::compute::SimulatedCompute;
use unicell::error::Error;
use unicell::model::Timestamp;
use unicell::store::Store;

use super::cloud::{Cloud, CloudSpec};
use super::open_store;

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

/// Shape of the simulated hosts.
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

/// Runs the API until SIGTERM or Ctrl-C, then lets the builds in flight finish.
pub async fn serve(store_url: &str, a: ServeArgs) -> Result<ExitCode> {
    let placement = match a.placement_listen {
        Some(_) => Some(
            unicell::store::placement::open(store_url)
                .await
                .with_context(|| format!("cannot serve the Placement API on {store_url}"))?,
        ),
        None => None,
    };
    let store: Arc<dyn Store> = match &placement {
        Some(p) => p.clone(),
        None => open_store(store_url).await?,
    };
    let mut heartbeats = None;
    if a.computes > 0 {
        let cloud = register(&store, a.computes, &a.cloud).await?;
        heartbeats = Some(tokio::spawn(heartbeat(store.clone(), host_names(&cloud), a.cloud.heartbeat)));
    }
    let placement_policy = match a.placement_policy.as_str() {
        "authenticated" => unicell::api::placement::Policy::Authenticated,
        _ => unicell::api::placement::Policy::AdminOnly,
    };
    let mut config = ApiConfig {
        nova_listen: a.listen,
        placement_listen: a.placement_listen,
        placement_policy,
        ..ApiConfig::default()
    };
    if let Some(r) = a.replica {
        config.replica = r;
    }
    let compute = SimulatedCompute::new(a.cloud.seed)
        .with_latency(Duration::from_millis(a.build_ms), Duration::from_millis(a.build_ms / 2))
        .with_failure_rate(a.build_failure_rate, 1.0);
    let state = match placement {
        Some(p) => ApiState::with_placement(p, config, Some(Arc::new(compute))).await,
        None => ApiState::new(store.clone(), config, Some(Arc::new(compute))).await,
    }
    .context("starting the API")?;
    let server = Server::bind(state.clone()).await?;
    if let Some(addr) = server.nova_addr() {
        tracing::info!(target: "unicell::cli", %addr, store = %store.describe(), "Nova compute API listening");
        println!("unicell serve: Nova compute API on http://{addr}/v2.1 (store {})", store.describe());
    }
    if let Some(addr) = server.placement_addr() {
        tracing::info!(target: "unicell::cli", %addr, "Placement API listening");
        println!("unicell serve: Placement API on http://{addr}/");
    }
    server.run(shutdown_signal()).await?;
    let handed = state.builds().shutdown(a.drain_timeout).await;
    if handed > 0 {
        tracing::warn!(target: "unicell::cli", handed, "builds still running at exit were handed back");
    }
    if let Some(h) = heartbeats {
        h.abort();
    }
    Ok(ExitCode::SUCCESS)
}

/// Registers the hosts and heartbeats them until SIGTERM or Ctrl-C.
pub async fn computes(store_url: &str, a: ComputesArgs) -> Result<ExitCode> {
    let store = open_store(store_url).await?;
    let cloud = register(&store, a.hosts, &a.cloud).await?;
    println!(
        "unicell computes: {} hosts registered in {} (heartbeat every {:?})",
        a.hosts,
        store.describe(),
        a.cloud.heartbeat
    );
    let beat = tokio::spawn(heartbeat(store.clone(), host_names(&cloud), a.cloud.heartbeat));
    shutdown_signal().await;
    beat.abort();
    Ok(ExitCode::SUCCESS)
}

fn host_names(cloud: &Cloud) -> Vec<String> {
    cloud.hosts.iter().map(|h| h.host.name.clone()).collect()
}

/// Writes cells, zones and hosts (idempotent: hosts already registered are kept), and the
/// generator's flavors when the store has none.
async fn register(store: &Arc<dyn Store>, hosts: usize, a: &CloudArgs) -> Result<Cloud> {
    let mut spec = CloudSpec::new(a.cells, hosts, a.seed);
    spec.server_groups = 0;
    let cloud = Cloud::generate(spec)?;
    for c in &cloud.cells {
        store.put_cell(c).await.context("put_cell")?;
    }
    for g in &cloud.aggregates {
        store.put_aggregate(g).await.context("put_aggregate")?;
    }
    if store.list_flavors().await.context("list_flavors")?.is_empty() {
        for (f, _) in &cloud.flavors {
            store.put_flavor(f).await.context("put_flavor")?;
        }
    }
    let known: BTreeSet<String> = store.list_hosts(None).await?.into_iter().map(|h| h.name).collect();
    for h in &cloud.hosts {
        if known.contains(&h.host.name) {
            continue;
        }
        for p in &h.providers {
            match store.create_provider(p).await {
                Ok(_) | Err(Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e).with_context(|| format!("create_provider {}", p.name)),
            }
        }
        let mut host = h.host.clone();
        host.last_heartbeat = Timestamp::now();
        store.put_host(&host).await.with_context(|| format!("put_host {}", host.name))?;
    }
    Ok(cloud)
}

/// Reports every host as alive every `interval` (nova-compute's service heartbeat).
async fn heartbeat(store: Arc<dyn Store>, hosts: Vec<String>, interval: Duration) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for name in &hosts {
            let result = async {
                let mut h = store.get_host(name).await?;
                h.last_heartbeat = Timestamp::now();
                store.put_host(&h).await
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(target: "unicell::cli", host = %name, error = %e, "heartbeat failed");
            }
        }
    }
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!(target: "unicell::cli", "shutting down");
}
