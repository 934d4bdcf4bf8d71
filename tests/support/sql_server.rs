//! Finding a MariaDB / PostgreSQL server for the SQL backend's tests.
//!
//! In order: the URL in `MYSQL_URL` / `DATABASE_URL`; the local server on 127.0.0.1:3306
//! (root, no password) / 127.0.0.1:5432 (postgres, trust) when it answers (how this machine
//! and CI run them); a throwaway container through testcontainers when a Docker daemon
//! answers; otherwise a reason to report the trials as ignored.
#![allow(dead_code)]

use std::time::Duration;

use testcontainers_modules::testcontainers::ContainerAsync;
use testcontainers_modules::testcontainers::runners::AsyncRunner;

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// Where it came from (for the log).
    pub origin: String,
    _mariadb: Option<ContainerAsync<testcontainers_modules::mariadb::Mariadb>>,
    _postgres: Option<ContainerAsync<testcontainers_modules::postgres::Postgres>>,
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

fn docker_answers() -> bool {
    let sock = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
        .unwrap_or_else(|| "/var/run/docker.sock".to_string());
    std::os::unix::net::UnixStream::connect(sock).is_ok()
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
    if !docker_answers() {
        return Err(format!(
            "no {kind:?} server: ${env} unset, nothing listens on {host}:{port}, and no Docker daemon answers"
        ));
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
