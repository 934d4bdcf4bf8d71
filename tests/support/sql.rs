//! The SQL baseline, four ways: MariaDB in cells mode (4 cell databases) and single mode,
//! PostgreSQL in cells mode and single mode (`mariadb-cells`, `mariadb-single`,
//! `postgres-cells`, `postgres-single`).
//!
//! A server, first that applies: the URL in `MYSQL_URL` / `DATABASE_URL`; the local server
//! on 127.0.0.1:3306 (root, no password) / 127.0.0.1:5432 (postgres, trust) when it answers
//! (how this machine and CI run them); a testcontainers one when a Docker daemon answers;
//! otherwise the trials are ignored with the reason. Each configuration creates its own
//! uniquely named databases (API + cells) once, every case opens its own store on them with
//! `create=false` (cases only touch what they create), and the databases are dropped at the
//! end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use testcontainers_modules::testcontainers::ContainerAsync;
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use unicell::store::StoreUrl;
use unicell::store::prelude::*;
use unicell::store::sql::SqlStore;

use super::{Backend, Opened, Why, docker_answers, run_id, shared_runtime};

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SqlKind {
    /// MariaDB (or MySQL).
    MariaDb,
    /// PostgreSQL.
    Postgres,
}

/// A reachable server: a base URL without database, and the container keeping it alive.
pub struct Server {
    /// `mysql://user[:pass]@host:port` or `postgres://...`, no path.
    pub base: String,
    /// Where it came from (for messages).
    pub origin: String,
    _mariadb: Option<ContainerAsync<testcontainers_modules::mariadb::Mariadb>>,
    _postgres: Option<ContainerAsync<testcontainers_modules::postgres::Postgres>>,
}

/// A server found (once) for one kind, or why there is none.
type Found = Arc<tokio::sync::OnceCell<Result<Arc<Server>, String>>>;

/// The servers, found once per kind and shared by that kind's configurations; a server
/// found unreachable is not tried again by the other configuration.
#[derive(Default)]
pub struct Servers {
    found: Mutex<HashMap<SqlKind, Found>>,
    unreachable: Mutex<HashMap<SqlKind, String>>,
}

impl Servers {
    async fn get(&self, kind: SqlKind) -> Result<Arc<Server>, String> {
        let cell = self.found.lock().unwrap_or_else(|e| e.into_inner()).entry(kind).or_default().clone();
        cell.get_or_init(|| async move {
            // Containers live on the shared runtime.
            shared_runtime().spawn(find(kind)).await.unwrap_or_else(|e| Err(format!("find task: {e}"))).map(Arc::new)
        })
        .await
        .clone()
    }
}

/// One configuration of the SQL baseline as a backend.
pub struct Sql {
    name: &'static str,
    kind: SqlKind,
    query: &'static str,
    servers: Arc<Servers>,
    /// The URL of the prepared databases (with `create=false`).
    prepared: tokio::sync::OnceCell<Result<String, Why>>,
    /// The databases created, to drop at the end.
    created: Mutex<Option<StoreUrl>>,
}

/// The four configurations, sharing the servers.
pub fn all() -> Vec<Arc<Sql>> {
    let servers = Arc::new(Servers::default());
    [
        ("mariadb-cells", SqlKind::MariaDb, "cells=4"),
        ("mariadb-single", SqlKind::MariaDb, "mode=single"),
        ("postgres-cells", SqlKind::Postgres, "cells=4"),
        ("postgres-single", SqlKind::Postgres, "mode=single"),
    ]
    .into_iter()
    .map(|(name, kind, query)| {
        Arc::new(Sql {
            name,
            kind,
            query,
            servers: servers.clone(),
            prepared: tokio::sync::OnceCell::new(),
            created: Mutex::new(None),
        })
    })
    .collect()
}

impl Sql {
    /// The URL of this configuration's databases (with `create=false`), creating them on
    /// first use.
    pub async fn url(&self) -> Result<String, Why> {
        self.prepared.get_or_init(|| self.prepare()).await.clone()
    }

    /// Whether this is a cells-mode configuration.
    pub fn is_cells(&self) -> bool {
        self.name.ends_with("-cells")
    }

    async fn prepare(&self) -> Result<String, Why> {
        if let Some(reason) = self.servers.unreachable.lock().unwrap_or_else(|e| e.into_inner()).get(&self.kind) {
            return Err(Why::Skip(reason.clone()));
        }
        let server = self.servers.get(self.kind).await.map_err(Why::Skip)?;
        let db = format!("uct_{}_{}_{}", std::process::id(), run_id(), self.name.replace('-', "_"));
        let url = format!("{}/{db}?{}", server.base, self.query);
        let parsed = StoreUrl::parse(&url).map_err(|e| Why::Fail(e.to_string()))?;
        match SqlStore::open(&parsed).await {
            Ok(store) => {
                *self.created.lock().unwrap_or_else(|e| e.into_inner()) = Some(parsed);
                store.close().await;
                Ok(format!("{url}&create=false"))
            }
            Err(e) => {
                let reason = format!("{} ({}): {e}", self.name, server.origin);
                // Skipped only when nothing answers any more; a server that accepts
                // connections but whose store does not open is a failure.
                if matches!(Why::from_open_error(self.name, &url, &e).await, Why::Skip(_)) {
                    // An unreachable server is not tried again for the other mode.
                    self.servers
                        .unreachable
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(self.kind, reason.clone());
                    Err(Why::Skip(reason))
                } else {
                    // Databases may exist: drop them at the end.
                    *self.created.lock().unwrap_or_else(|e| e.into_inner()) = Some(parsed);
                    Err(Why::Fail(reason))
                }
            }
        }
    }
}

impl Backend for Sql {
    fn name(&self) -> &str {
        self.name
    }

    fn store(&self) -> BoxFuture<'_, Opened> {
        Box::pin(async move {
            let url = self.url().await?;
            let parsed = StoreUrl::parse(&url).map_err(|e| Why::Fail(format!("bad url: {e}")))?;
            // The databases were created at start-up: failing to open now is a failure.
            match SqlStore::open(&parsed).await {
                Ok(s) => Ok(Arc::new(s) as Arc<dyn Store>),
                Err(e) => Err(Why::Fail(format!("opening {parsed} failed: {e}"))),
            }
        })
    }

    fn finish(&self, _failed: bool) {
        let created = self.created.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(url) = created {
            shared_runtime().block_on(async move {
                if let Err(e) = SqlStore::drop_databases(&url).await {
                    eprintln!("could not drop the databases of {url}: {e}");
                }
            });
        }
    }
}

fn strip_path(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            u.set_path("");
            u.set_query(None);
            u.to_string().trim_end_matches('/').to_string()
        }
        Err(_) => url.to_string(),
    }
}

async fn answers(host: &str, port: u16) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect((host, port))).await,
        Ok(Ok(_))
    )
}

/// Finds a server or says why not.
pub async fn find(kind: SqlKind) -> Result<Server, String> {
    let (env, host, port, local) = match kind {
        SqlKind::MariaDb => ("MYSQL_URL", "127.0.0.1", 3306, "mysql://root@127.0.0.1:3306"),
        SqlKind::Postgres => ("DATABASE_URL", "127.0.0.1", 5432, "postgres://postgres@127.0.0.1:5432"),
    };
    if let Ok(url) = std::env::var(env) {
        return Ok(Server { base: strip_path(&url), origin: format!("${env}"), _mariadb: None, _postgres: None });
    }
    if answers(host, port).await {
        return Ok(Server {
            base: local.to_string(),
            origin: format!("local server at {host}:{port}"),
            _mariadb: None,
            _postgres: None,
        });
    }
    if let Err(docker) = docker_answers() {
        return Err(format!("no {kind:?} server: ${env} unset, nothing listens on {host}:{port}, and {docker}"));
    }
    match kind {
        SqlKind::MariaDb => {
            let c = testcontainers_modules::mariadb::Mariadb::default()
                .start()
                .await
                .map_err(|e| format!("testcontainers could not start MariaDB: {e}"))?;
            let port = c.get_host_port_ipv4(3306).await.map_err(|e| format!("MariaDB container port: {e}"))?;
            Ok(Server {
                base: format!("mysql://root@127.0.0.1:{port}"),
                origin: "testcontainers mariadb".into(),
                _mariadb: Some(c),
                _postgres: None,
            })
        }
        SqlKind::Postgres => {
            let c = testcontainers_modules::postgres::Postgres::default()
                .with_host_auth()
                .start()
                .await
                .map_err(|e| format!("testcontainers could not start PostgreSQL: {e}"))?;
            let port = c.get_host_port_ipv4(5432).await.map_err(|e| format!("PostgreSQL container port: {e}"))?;
            Ok(Server {
                base: format!("postgres://postgres@127.0.0.1:{port}"),
                origin: "testcontainers postgres".into(),
                _mariadb: None,
                _postgres: Some(c),
            })
        }
    }
}
