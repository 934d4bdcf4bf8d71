//! The whole conformance suite against a real Redis server and a real Redis Cluster.
//!
//! Single node, first that applies: `REDIS_URL`; a throwaway `redis-server` started here
//! from the installed binary; a testcontainers Redis when a Docker daemon answers; else every
//! trial is ignored with the reason. Cluster: `REDIS_CLUSTER_URL`, else a three-master
//! cluster started here from `redis-server --cluster-enabled yes` and `redis-cli --cluster
//! create`, else ignored with the reason. Every case uses a fresh key prefix; servers started
//! here are killed at the end, and prefixes on a given server are purged.

#[path = "support/redis_server.rs"]
mod redis_server;
mod support;

use std::sync::Arc;

use support::{Factory, Skip, conformance_trials};
use unicell::store::Store;
use unicell::store::redis::RedisStore;

/// Where a target's servers live; dropping it stops what this binary started.
#[allow(dead_code)]
enum Guard {
    None,
    Single(redis_server::Single),
    Cluster(redis_server::Cluster),
    Container(
        Box<(
            tokio::runtime::Runtime,
            testcontainers_modules::testcontainers::ContainerAsync<testcontainers_modules::redis::Redis>,
        )>,
    ),
}

fn docker_answers() -> bool {
    if let Ok(h) = std::env::var("DOCKER_HOST")
        && let Some(addr) = h.strip_prefix("tcp://")
    {
        return std::net::TcpStream::connect(addr).is_ok();
    }
    std::os::unix::net::UnixStream::connect("/var/run/docker.sock").is_ok()
}

fn single_target() -> (Result<String, String>, Guard) {
    if let Ok(url) = std::env::var("REDIS_URL") {
        return (Ok(url), Guard::None);
    }
    let binary_reason = match redis_server::Single::start() {
        Ok(s) => return (Ok(s.server.url()), Guard::Single(s)),
        Err(e) => e,
    };
    if !docker_answers() {
        return (
            Err(format!("no REDIS_URL, no usable redis-server ({binary_reason}), and no Docker daemon answers")),
            Guard::None,
        );
    }
    let started = (|| -> Result<_, String> {
        use testcontainers_modules::testcontainers::runners::AsyncRunner;
        let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
        let (c, url) = rt.block_on(async {
            let c = testcontainers_modules::redis::Redis::default().start().await.map_err(|e| e.to_string())?;
            let host = c.get_host().await.map_err(|e| e.to_string())?;
            let port =
                c.get_host_port_ipv4(testcontainers_modules::redis::REDIS_PORT).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((c, format!("redis://{host}:{port}")))
        })?;
        Ok((url, Guard::Container(Box::new((rt, c)))))
    })();
    match started {
        Ok((url, g)) => (Ok(url), g),
        Err(e) => (Err(format!("testcontainers Redis failed: {e}")), Guard::None),
    }
}

fn cluster_target() -> (Result<String, String>, Guard) {
    if let Ok(url) = std::env::var("REDIS_CLUSTER_URL") {
        return (Ok(url), Guard::None);
    }
    match redis_server::Cluster::start(3) {
        Ok(c) => (Ok(c.url()), Guard::Cluster(c)),
        Err(e) => (Err(format!("no REDIS_CLUSTER_URL and no cluster could be started: {e}")), Guard::None),
    }
}

fn with_prefix(url: &str, prefix: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}prefix={prefix}")
}

fn factory(target: Result<String, String>, run: &str) -> Factory {
    let run = run.to_string();
    Arc::new(move || {
        let target = target.clone();
        let prefix = format!("{run}-{}", uuid::Uuid::new_v4().simple());
        Box::pin(async move {
            let url = target.map_err(Skip)?;
            let store = RedisStore::open(
                &unicell::store::StoreUrl::parse(&with_prefix(&url, &prefix)).map_err(|e| Skip(e.to_string()))?,
            )
            .await
            .unwrap_or_else(|e| panic!("the redis server at {url} is set up but the store does not open: {e}"));
            Ok(Arc::new(store) as Arc<dyn Store>)
        })
    })
}

/// Removes every key of this run from a server this binary did not start.
fn purge(url: &str, run: &str) {
    let Ok(rt) = tokio::runtime::Runtime::new() else {
        return;
    };
    rt.block_on(async {
        let Ok(u) = unicell::store::StoreUrl::parse(&with_prefix(url, run)) else {
            return;
        };
        if let Ok(s) = RedisStore::open(&u).await {
            // Prefixes of this run are `<run>-<case>`: purge them all with one pattern.
            let _ = s.purge_matching(&format!("{run}-*")).await;
            let _ = s.purge().await;
        }
    });
}

fn main() {
    let args = libtest_mimic::Arguments::from_args();
    let run = format!("unicell-conf-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (single, single_guard) = single_target();
    let (cluster, cluster_guard) = cluster_target();
    let mut trials = conformance_trials("redis", factory(single.clone(), &run));
    trials.extend(conformance_trials("redis-cluster", factory(cluster, &run)));
    let conclusion = libtest_mimic::run(&args, trials);
    if let (Ok(url), Guard::None) = (&single, &single_guard) {
        purge(url, &run);
    }
    drop(single_guard);
    drop(cluster_guard);
    conclusion.exit();
}
