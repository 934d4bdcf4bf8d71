//! `unicell serve` (the Nova compute API over the store) and `unicell computes` (simulated
//! compute hosts that register and heartbeat, as nova-compute does): wiring of library
//! calls, `unicell::api` and `unicell::sim`, and the signals that stop them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use unicell::api::{ApiConfig, ApiState, Server};
use unicell::sim::{Cloud, CloudSpec, Heartbeat, HeartbeatTask, Silent, SimulatedCompute};
use unicell::store::Store;
use unicell_bench::candidate::open_store;

use crate::args::{CloudArgs, ComputesArgs, ServeArgs};

/// Runs the API until SIGTERM or Ctrl-C, then lets the builds in flight finish.
pub async fn serve(store_url: &str, a: ServeArgs) -> Result<bool> {
    let placement = match a.placement_listen {
        Some(_) => Some(unicell::store::placement::open(store_url).await.with_context(|| {
            format!("cannot serve the Placement API on {}", unicell::store::redact_text(store_url))
        })?),
        None => None,
    };
    let store: Arc<dyn Store> = match &placement {
        Some(p) => p.clone(),
        None => open_store(store_url).await?,
    };
    let heartbeats = if a.computes > 0 { Some(computes_in(&store, a.computes, &a.cloud).await?) } else { None };
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
    let tick = (a.build_lease_ttl / 6).max(Duration::from_millis(50));
    config.builds.lease_ttl = a.build_lease_ttl;
    config.builds.renew_every = tick;
    config.builds.reap_every = tick;
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
        tracing::info!(%addr, store = %store.describe(), "Nova compute API listening");
        println!("unicell serve: Nova compute API on http://{addr}/v2.1 (store {})", store.describe());
    }
    if let Some(addr) = server.placement_addr() {
        tracing::info!(%addr, "Placement API listening");
        println!("unicell serve: Placement API on http://{addr}/");
    }
    server.run(shutdown_signal()).await?;
    let handed = state.builds().shutdown(a.drain_timeout).await;
    if handed > 0 {
        tracing::warn!(handed, "builds still running at exit were handed back");
    }
    if let Some(h) = heartbeats {
        h.stop().await?;
    }
    Ok(true)
}

/// Registers the hosts and heartbeats them until SIGTERM or Ctrl-C.
pub async fn computes(store_url: &str, a: ComputesArgs) -> Result<bool> {
    let store = open_store(store_url).await?;
    let heartbeats = computes_in(&store, a.hosts, &a.cloud).await?;
    println!(
        "unicell computes: {} hosts registered in {} (heartbeat every {:?})",
        a.hosts,
        store.describe(),
        a.cloud.heartbeat
    );
    shutdown_signal().await;
    heartbeats.stop().await?;
    Ok(true)
}

/// Registers `hosts` simulated hosts (idempotently: a restart finds its hosts again) and
/// starts their heartbeats.
async fn computes_in(store: &Arc<dyn Store>, hosts: usize, a: &CloudArgs) -> Result<HeartbeatTask> {
    let mut spec = CloudSpec::new(a.cells, hosts, a.seed);
    spec.server_groups = 0;
    let cloud = Cloud::register(store.clone(), &spec, 16, &Silent).await.context("registering the simulated hosts")?;
    Ok(Heartbeat::for_cloud(&cloud, a.heartbeat).spawn())
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
    tracing::info!("shutting down");
}
