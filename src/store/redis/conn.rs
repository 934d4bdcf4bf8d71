//! Connections (a round-robin pool of multiplexed connections, single node or cluster),
//! the Lua scripts, and the mapping of client errors into [`Error`].

use std::sync::atomic::{AtomicUsize, Ordering};

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, FromRedisValue, RedisError, ServerErrorKind, Value};

use super::config::RedisConfig;
use crate::error::{Error, Result};

const BACKEND: &str = "redis";

/// Commands sent per pipeline (single node) or in flight at once (cluster) by bulk reads.
const BULK_CHUNK: usize = 512;

/// One Lua script of `schema/redis/`, sent by EVALSHA (loaded on first NOSCRIPT).
#[derive(Debug)]
pub struct Lua {
    name: &'static str,
    source: &'static str,
    sha: String,
}

impl Lua {
    fn new(name: &'static str, source: &'static str) -> Self {
        Lua { name, source, sha: redis::Script::new(source).get_hash().to_string() }
    }

    /// The script's SHA1 (for EVALSHA, e.g. from redis-benchmark).
    pub fn sha(&self) -> &str {
        &self.sha
    }

    /// The EVALSHA command for `keys` and `args`.
    pub fn cmd<K: redis::ToRedisArgs, A: redis::ToRedisArgs>(&self, keys: &[K], args: &[A]) -> Cmd {
        let mut c = redis::cmd("EVALSHA");
        c.arg(&self.sha).arg(keys.len());
        for k in keys {
            c.arg(k);
        }
        for a in args {
            c.arg(a);
        }
        c
    }
}

macro_rules! scripts {
    ($($field:ident => $file:literal),* $(,)?) => {
        /// Every Lua script of the backend, compiled in from `schema/redis/`.
        #[derive(Debug)]
        pub struct Scripts {
            $(
                #[doc = concat!("`schema/redis/", $file, "`")]
                pub $field: Lua,
            )*
        }

        impl Scripts {
            /// All scripts, loaded from `schema/redis/` at compile time.
            pub fn new() -> Self {
                Scripts {
                    $($field: Lua::new($file, include_str!(concat!("../../../schema/redis/", $file))),)*
                }
            }

            fn all(&self) -> Vec<&Lua> {
                vec![$(&self.$field),*]
            }
        }
    };
}

scripts! {
    claim => "claim.lua",
    release => "release.lua",
    create_root => "create_root.lua",
    create_child => "create_child.lua",
    delete_provider => "delete_provider.lua",
    set_inventories => "set_inventories.lua",
    set_field => "set_field.lua",
    feed_read => "feed_read.lua",
    cas => "cas.lua",
    instance_create => "instance_create.lua",
    instance_delete => "instance_delete.lua",
    lease_cas => "lease_cas.lua",
    placement_read => "placement_read.lua",
    replace_tree => "replace_tree.lua",
    beat => "beat.lua",
    feed_touch => "feed_touch.lua",
}

/// Maps a client error into the store's error: connection failures, cluster reconfiguration
/// and loading are retryable `Unavailable`, timeouts `Timeout`, the rest `Backend`.
pub fn map_err(e: RedisError) -> Error {
    let message = e.to_string();
    if e.is_timeout() {
        return Error::Timeout { backend: BACKEND, message };
    }
    let unavailable = e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(ServerErrorKind::BusyLoading)
                | ErrorKind::Server(ServerErrorKind::MasterDown)
                | ErrorKind::Server(ServerErrorKind::ReadOnly)
                | ErrorKind::Server(ServerErrorKind::ClusterDown)
                | ErrorKind::Server(ServerErrorKind::TryAgain)
        );
    if unavailable {
        return Error::Unavailable { backend: BACKEND, message };
    }
    Error::backend(BACKEND, e)
}

/// A decoding problem in what the server returned (a corrupt or foreign key).
pub fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::backend(BACKEND, format!("unexpected data in redis: {what}"))
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> redis::RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

/// A fixed set of multiplexed connections used round-robin. Each connection pipelines the
/// requests of every task using it, so a few connections carry thousands of concurrent
/// requests; more than one lets the client spread encoding and decoding over cores.
pub struct Pool {
    conns: Vec<Conn>,
    next: AtomicUsize,
    cluster: bool,
    /// `wait_replicas` of the URL (0: writes do not wait).
    wait_replicas: u32,
    /// `wait_timeout_ms` of the URL.
    wait_timeout_ms: u64,
    /// The scripts.
    pub scripts: Scripts,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("connections", &self.conns.len()).field("cluster", &self.cluster).finish()
    }
}

impl Pool {
    /// Connects `cfg.pool` connections and loads the scripts.
    pub async fn connect(cfg: &RedisConfig) -> Result<Pool> {
        let mut conns = Vec::with_capacity(cfg.pool);
        if cfg.cluster {
            let client = redis::cluster::ClusterClient::builder(cfg.nodes.clone())
                .connection_timeout(cfg.connect_timeout)
                .response_timeout(cfg.timeout)
                .retries(cfg.retries)
                .min_retry_wait(20)
                .max_retry_wait(500)
                .build()
                .map_err(map_err)?;
            for _ in 0..cfg.pool {
                conns.push(Conn::Cluster(client.get_async_connection().await.map_err(map_err)?));
            }
        } else {
            let node = cfg.nodes.first().ok_or_else(|| Error::invalid("store url", "no node"))?;
            let client = redis::Client::open(node.as_str()).map_err(map_err)?;
            let mc = redis::aio::ConnectionManagerConfig::new()
                .set_response_timeout(Some(cfg.timeout))
                .set_connection_timeout(Some(cfg.connect_timeout))
                .set_number_of_retries(2)
                .set_max_delay(std::time::Duration::from_millis(500));
            for _ in 0..cfg.pool {
                conns.push(Conn::Single(
                    ConnectionManager::new_with_config(client.clone(), mc.clone()).await.map_err(map_err)?,
                ));
            }
        }
        let pool = Pool {
            conns,
            next: AtomicUsize::new(0),
            cluster: cfg.cluster,
            wait_replicas: cfg.wait_replicas,
            wait_timeout_ms: u64::try_from(cfg.wait_timeout.as_millis()).unwrap_or(u64::MAX),
            scripts: Scripts::new(),
        };
        pool.load_scripts().await?;
        Ok(pool)
    }

    /// Whether the deployment is a cluster (keys of one command must share a slot).
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    fn pick(&self) -> Conn {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[i].clone()
    }

    /// Loads every script (on every master in cluster mode: SCRIPT LOAD is routed to all).
    pub async fn load_scripts(&self) -> Result<()> {
        let mut c = self.pick();
        for s in self.scripts.all() {
            let sha: String = c.query(redis::cmd("SCRIPT").arg("LOAD").arg(s.source)).await.map_err(map_err)?;
            if sha != s.sha {
                return Err(corrupt(format!("SCRIPT LOAD of {} gave {sha}", s.name)));
            }
        }
        Ok(())
    }

    /// Runs one command.
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        self.pick().query(cmd).await.map_err(map_err)
    }

    /// Runs one EVALSHA command, loading the scripts once if the server lost them (a
    /// restarted node). Re-sending is safe: the script did not run.
    pub async fn eval<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        let mut c = self.pick();
        match c.query(cmd).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.load_scripts().await?;
                c.query(cmd).await.map_err(map_err)
            }
            r => r.map_err(map_err),
        }
    }

    /// Whether claims and releases wait for replicas (`wait_replicas` > 0).
    pub fn waits(&self) -> bool {
        self.wait_replicas > 0
    }

    /// Whether writes wait for replicas (`wait_replicas` above 0).
    pub fn waits_for_replicas(&self) -> bool {
        self.wait_replicas > 0
    }

    /// Runs one write (`cmd`: an EVALSHA, loading the scripts once on NOSCRIPT as
    /// [`eval`](Self::eval) does, or a plain command) and, when the URL sets
    /// `wait_replicas`, makes it durable before answering: `INCR barrier` and
    /// `WAIT wait_replicas wait_timeout_ms` follow it in **one pipeline**, so all three go
    /// down one connection to the one master that owns the slot (a pipeline is routed by its
    /// first keyed command; WAIT has no key, and alone the cluster client would send it to
    /// every master). WAIT counts the replicas that acknowledged everything this connection
    /// wrote, which is why the barrier (a key in `cmd`'s slot) is there: a script that
    /// writes nothing (a replayed claim, a release of nothing) would otherwise let WAIT
    /// answer for older writes only, while the state the script read may not be replicated
    /// yet. If the cluster client resends the pipeline elsewhere (MOVED, a dead
    /// connection), all three go again, together.
    ///
    /// Fewer acknowledgements than asked for within the timeout is a retryable
    /// [`Error::Unavailable`]: the write happened on the master and may or may not survive a
    /// failover, and the caller replays it (claims and releases are idempotent).
    pub async fn write_waited<T: FromRedisValue>(&self, cmd: &Cmd, barrier: Option<&str>) -> Result<T> {
        if self.wait_replicas == 0 {
            return self.eval(cmd).await;
        }
        let mut c = self.pick();
        let v = match self.waited_once(&mut c, cmd, barrier).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.load_scripts().await?;
                self.waited_once(&mut c, cmd, barrier).await
            }
            r => r,
        }
        .map_err(map_err)?;
        T::from_redis_value(v).map_err(|e| map_err(e.into()))
    }

    async fn waited_once(&self, c: &mut Conn, cmd: &Cmd, barrier: Option<&str>) -> redis::RedisResult<Value> {
        let mut p = redis::pipe();
        p.add_command(cmd.clone());
        if let Some(b) = barrier {
            p.cmd("INCR").arg(b).ignore();
        }
        p.cmd("WAIT").arg(self.wait_replicas).arg(self.wait_timeout_ms);
        // Each reply is inspected below: the command's own error (NOSCRIPT) comes first.
        p.ignore_errors();
        let replies: Value = match c {
            Conn::Single(c) => p.query_async(c).await?,
            Conn::Cluster(c) => p.query_async(c).await?,
        };
        let mut replies = match replies {
            Value::Array(v) if v.len() == 2 => v.into_iter(),
            other => {
                return Err(RedisError::from((
                    ErrorKind::Parse,
                    "unexpected reply to a waited write",
                    format!("{other:?}"),
                )));
            }
        };
        let (Some(reply), Some(acks)) = (replies.next(), replies.next()) else {
            return Err(RedisError::from((ErrorKind::Parse, "unexpected reply to a waited write")));
        };
        let reply = reply.extract_error()?;
        let acks = match acks.extract_error()? {
            Value::Int(n) => n,
            other => {
                return Err(RedisError::from((ErrorKind::Parse, "unexpected reply to WAIT", format!("{other:?}"))));
            }
        };
        if acks < i64::from(self.wait_replicas) {
            return Err(RedisError::from((
                ErrorKind::Server(ServerErrorKind::TryAgain),
                "write not replicated",
                format!(
                    "{acks} of {} replicas acknowledged it within {} ms (wait_replicas); it is on the master \
                     and may or may not survive a failover: replay it",
                    self.wait_replicas, self.wait_timeout_ms
                ),
            )));
        }
        Ok(reply)
    }

    /// Runs many independent commands with few round trips: pipelines on a single node; on a
    /// cluster (where a pipeline must stay in one slot) as concurrent requests multiplexed
    /// over the node connections. Results are in command order.
    pub async fn bulk(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>> {
        match self.bulk_once(&cmds).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.load_scripts().await?;
                self.bulk_once(&cmds).await.map_err(map_err)
            }
            r => r.map_err(map_err),
        }
    }

    /// Runs independent read commands as [`bulk`](Self::bulk) does, but answers each on its
    /// own: on a cluster one command's master being down fails that command only, so a
    /// listing can go on with the shards that answered (contract line 17). On a single
    /// node, one failure is every command's (they share the server).
    pub async fn bulk_each(&self, cmds: Vec<Cmd>) -> Vec<Result<Value>> {
        if !self.cluster {
            return match self.bulk(cmds.clone()).await {
                Ok(v) => v.into_iter().map(Ok).collect(),
                Err(e) => {
                    let message = e.to_string();
                    let retry = e.is_retryable();
                    cmds.iter()
                        .map(|_| {
                            Err(if retry {
                                Error::Unavailable { backend: BACKEND, message: message.clone() }
                            } else {
                                Error::backend(BACKEND, message.clone())
                            })
                        })
                        .collect()
                }
            };
        }
        let futs = cmds.into_iter().map(|cmd| {
            let mut c = self.pick();
            async move { c.query::<Value>(&cmd).await.map_err(map_err) }
        });
        futures::future::join_all(futs).await
    }

    /// The address (`host:port`) of the master that serves `slot`, asked of the cluster
    /// (`CLUSTER SLOTS`, routed to any node that answers), for naming an unreachable part;
    /// `None` on a single node or when no node answers within a second.
    pub async fn master_of_slot(&self, slot: u16) -> Option<String> {
        if !self.cluster {
            return None;
        }
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SLOTS");
        let ask = self.query::<Value>(&cmd);
        let Ok(Ok(Value::Array(ranges))) = tokio::time::timeout(std::time::Duration::from_secs(1), ask).await else {
            return None;
        };
        let int = |v: &Value| match v {
            Value::Int(n) => Some(*n),
            _ => None,
        };
        let text = |v: &Value| match v {
            Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        };
        ranges.iter().find_map(|r| {
            let Value::Array(r) = r else { return None };
            let (start, end) = (int(r.first()?)?, int(r.get(1)?)?);
            if !(start..=end).contains(&i64::from(slot)) {
                return None;
            }
            let Value::Array(master) = r.get(2)? else { return None };
            Some(format!("{}:{}", text(master.first()?)?, int(master.get(1)?)?))
        })
    }

    async fn bulk_once(&self, cmds: &[Cmd]) -> redis::RedisResult<Vec<Value>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        if self.cluster {
            let futs: Vec<_> = cmds
                .iter()
                .cloned()
                .map(|cmd| {
                    let mut c = self.pick();
                    async move { c.query::<Value>(&cmd).await }
                })
                .collect();
            futures::future::join_all(futs).await.into_iter().collect()
        } else {
            let futs: Vec<_> = cmds
                .chunks(BULK_CHUNK)
                .map(|chunk| {
                    let mut p = redis::pipe();
                    for c in chunk {
                        p.add_command(c.clone());
                    }
                    let mut conn = self.pick();
                    async move {
                        match &mut conn {
                            Conn::Single(c) => p.query_async::<Vec<Value>>(c).await,
                            Conn::Cluster(c) => p.query_async::<Vec<Value>>(c).await,
                        }
                    }
                })
                .collect();
            let mut out = Vec::with_capacity(cmds.len());
            for c in futures::future::join_all(futs).await {
                out.extend(c?);
            }
            Ok(out)
        }
    }
}
