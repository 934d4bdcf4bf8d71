//! The HTTP APIs (feature `api`): the Nova compute API and the Placement API over one store.
//!
//! A process running [`serve`] is stateless apart from the store: any number of replicas
//! may serve the same store and share nothing else. Each API has its own listener
//! ([`ApiConfig`]); both share [`auth`] (noauth2 tokens), [`microversion`] negotiation and
//! the request-body rules of [`error`].
//!
//! Logging: requests are traced (method, path, status, latency) at `debug` under the
//! `unicell::api` target; headers, and so tokens, are never logged.

pub mod auth;
pub mod builds;
pub mod error;
pub mod microversion;
pub mod nova;
pub mod placement;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

use crate::compute::ComputeDriver;
use crate::conductor::{Conductor, ConductorConfig};
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::sim::SimulatedCompute;
use crate::store::Store;
use crate::store::placement::PlacementStore;

pub use self::error::ServeError;

/// Oslo's default `max_request_body_size` (112 KiB), which Nova and Placement run behind.
pub const DEFAULT_MAX_BODY_BYTES: usize = 114_688;

/// How a server runs.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Where the Nova compute API listens (Nova's default port is 8774).
    pub nova_listen: SocketAddr,
    /// Where the Placement API listens (Placement's default port is 8778); `None`: not served.
    /// Needs a store with Placement's state ([`ApiState::with_placement`]).
    pub placement_listen: Option<SocketAddr>,
    /// Who may call the Placement API (Placement's default: admins only).
    pub placement_policy: placement::Policy,
    /// Largest request body accepted; larger ones get a 413.
    pub max_body_bytes: usize,
    /// This replica's name, recorded with the builds it runs (unique per process; the
    /// default combines the host name, the process id and a random suffix).
    pub replica: String,
    /// The scheduler this replica runs for its builds.
    pub scheduler: SchedulerConfig,
    /// The conductor this replica runs for its builds.
    pub conductor: ConductorConfig,
    /// Build leases: TTL, renewal, reaper.
    pub builds: builds::BuildConfig,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            nova_listen: SocketAddr::from(([127, 0, 0, 1], 8774)),
            placement_listen: None,
            placement_policy: placement::Policy::AdminOnly,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            replica: default_replica_name(),
            scheduler: SchedulerConfig::default(),
            conductor: ConductorConfig::default(),
            builds: builds::BuildConfig::default(),
        }
    }
}

/// `<hostname>-<pid>-<random>`: unique per process even when replicas share a host.
pub fn default_replica_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_string()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unicell".to_string());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &suffix[..8])
}

/// What every request handler of both APIs can reach: the store, this replica's scheduler
/// and conductor, and the configuration. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ApiState {
    inner: Arc<StateInner>,
}

#[derive(Debug)]
struct StateInner {
    store: Arc<dyn Store>,
    config: ApiConfig,
    conductor: Arc<Conductor>,
    builds: builds::Builds,
    placement: Option<Arc<dyn PlacementStore>>,
}

impl ApiState {
    /// Builds the state: loads this replica's scheduler from the store and a conductor that
    /// casts builds to `compute` (the simulated compute when `None`: instant, successful
    /// builds).
    pub async fn new(
        store: Arc<dyn Store>,
        config: ApiConfig,
        compute: Option<Arc<dyn ComputeDriver>>,
    ) -> Result<ApiState, ServeError> {
        Self::build(store, None, config, compute).await
    }

    async fn build(
        store: Arc<dyn Store>,
        placement: Option<Arc<dyn PlacementStore>>,
        config: ApiConfig,
        compute: Option<Arc<dyn ComputeDriver>>,
    ) -> Result<ApiState, ServeError> {
        let scheduler = Arc::new(Scheduler::new(store.clone(), config.scheduler.clone()).await?);
        let compute = compute.unwrap_or_else(|| Arc::new(SimulatedCompute::new(0)));
        let conductor = Arc::new(Conductor::new(store.clone(), scheduler, compute, config.conductor.clone()));
        let builds =
            builds::Builds::new(store.clone(), conductor.clone(), config.replica.clone(), config.builds.clone());
        builds.start_background();
        Ok(ApiState { inner: Arc::new(StateInner { store, config, conductor, builds, placement }) })
    }

    /// [`ApiState::new`] over a store that also keeps Placement's state, so that this
    /// replica can serve the Placement API too (on [`ApiConfig::placement_listen`]). Both
    /// APIs then share the one store: what Placement writes, the scheduler sees.
    pub async fn with_placement(
        store: Arc<dyn PlacementStore>,
        config: ApiConfig,
        compute: Option<Arc<dyn ComputeDriver>>,
    ) -> Result<ApiState, ServeError> {
        let plain: Arc<dyn Store> = store.clone();
        Self::build(plain, Some(store), config, compute).await
    }

    /// The store with Placement's state, when this replica serves the Placement API.
    pub fn placement(&self) -> Option<&Arc<dyn PlacementStore>> {
        self.inner.placement.as_ref()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The configuration.
    pub fn config(&self) -> &ApiConfig {
        &self.inner.config
    }

    /// This replica's conductor (and through it, its scheduler).
    pub fn conductor(&self) -> &Arc<Conductor> {
        &self.inner.conductor
    }

    /// The builds this replica runs.
    pub fn builds(&self) -> &builds::Builds {
        &self.inner.builds
    }
}

/// Runs the APIs until `shutdown` completes, then stops accepting connections and lets the
/// requests in flight finish. Fails at once if a listener cannot be bound.
pub async fn serve(state: ApiState, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
    Server::bind(state).await?.run(shutdown).await
}

/// The APIs with their listeners bound (so that a caller who asked for port 0 can read
/// the ports before serving).
#[derive(Debug)]
pub struct Server {
    listeners: Vec<(SocketAddr, TcpListener, Router)>,
}

impl Server {
    /// Binds every API's listener.
    pub async fn bind(state: ApiState) -> Result<Server, ServeError> {
        let nova_addr = state.config().nova_listen;
        let mut routers = vec![(nova_addr, nova::router(state.clone()))];
        if let Some(addr) = state.config().placement_listen {
            let Some(store) = state.placement() else {
                return Err(ServeError::Task(format!(
                    "the Placement API (on {addr}) needs a store with Placement's state; {} has none",
                    state.store().describe()
                )));
            };
            routers.push((addr, placement::router_for(store.clone(), state.config().placement_policy)));
        }
        let mut listeners = Vec::with_capacity(routers.len());
        for (addr, router) in routers {
            let listener = TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })?;
            let local = listener.local_addr().unwrap_or(addr);
            tracing::info!(target: "unicell::api", %local, "listening");
            listeners.push((local, listener, router));
        }
        Ok(Server { listeners })
    }

    /// The Nova API's bound address.
    pub fn nova_addr(&self) -> Option<SocketAddr> {
        self.listeners.first().map(|(a, _, _)| *a)
    }

    /// The address the Placement API is bound to (the second listener), when served.
    pub fn placement_addr(&self) -> Option<SocketAddr> {
        self.listeners.get(1).map(|(a, _, _)| *a)
    }

    /// Serves every listener until `shutdown` completes (or one of them fails), then lets
    /// the requests in flight finish.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
        let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
        let mut tasks = tokio::task::JoinSet::new();
        for (addr, listener, router) in self.listeners {
            let mut rx = tx.subscribe();
            tasks.spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = rx.recv().await;
                    })
                    .await
                    .map_err(|source| ServeError::Serve { addr, source })
            });
        }
        let mut shutdown = Box::pin(shutdown);
        let mut first_error = None;
        tokio::select! {
            () = &mut shutdown => {}
            Some(done) = tasks.join_next() => {
                first_error = Some(match done {
                    Ok(Ok(())) => ServeError::Task("a listener stopped on its own".into()),
                    Ok(Err(e)) => e,
                    Err(e) => ServeError::Task(e.to_string()),
                });
            }
        }
        let _ = tx.send(());
        while let Some(done) = tasks.join_next().await {
            if let (None, Ok(Err(e))) = (&first_error, done) {
                first_error = Some(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
