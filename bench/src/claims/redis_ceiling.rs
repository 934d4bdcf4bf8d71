//! The Redis ceiling of `bench claims`: `EVALSHA` of a minimal check-and-increment script
//! through redis-rs (the client the Redis backend uses), one multiplexed connection shared
//! by the W tasks as the backend shares its own, over T hashes `{used, total}`:
//!
//! ```lua
//! local used = tonumber(redis.call('HGET', KEYS[1], 'used'))
//! local total = tonumber(redis.call('HGET', KEYS[1], 'total'))
//! if used + tonumber(ARGV[1]) > total then return 0 end
//! redis.call('HINCRBY', KEYS[1], 'used', ARGV[1])
//! return 1
//! ```
//!
//! Afterwards the hashes' `used` are summed and must equal the successful calls, so a
//! script that did not update cannot pass for a fast one. The keys live under the run's
//! prefix and are deleted afterwards.

use std::sync::Arc;

use crate::error::{Context, Result, bail};
use unicell::store::{Scheme, StoreUrl};

use super::workload::{Outcome, Workload, measure};
use crate::candidate::{Candidate, run_url};
use crate::progress;

const SCRIPT: &str = "local used = tonumber(redis.call('HGET', KEYS[1], 'used'))\n\
local total = tonumber(redis.call('HGET', KEYS[1], 'total'))\n\
if used + tonumber(ARGV[1]) > total then return 0 end\n\
redis.call('HINCRBY', KEYS[1], 'used', ARGV[1])\n\
return 1";

fn backend_err(e: redis::RedisError) -> unicell::Error {
    unicell::Error::backend("redis-ceiling", e)
}

/// Measures the ceiling (see the module docs).
pub async fn run(cand: &Candidate, w: &Workload, tag: &str) -> Result<Outcome> {
    let url = run_url(cand, &format!("{tag}_x"), None)?;
    let parsed = StoreUrl::parse(&url)?;
    if parsed.scheme() != Scheme::Redis {
        bail!(Measurement, "the Redis ceiling is defined for single-node redis:// URLs");
    }
    let u = parsed.expose();
    let mut conn_url = url::Url::parse(&format!(
        "redis://{}:{}/{}",
        u.host_str().unwrap_or("127.0.0.1"),
        u.port().unwrap_or(6379),
        u.path().trim_start_matches('/')
    ))
    .context("bad Redis URL")?;
    if let Some(pw) = u.password() {
        let _ = conn_url.set_password(Some(pw));
        let _ = conn_url.set_username(u.username());
    }
    let client = redis::Client::open(conn_url.as_str()).context("bad Redis URL")?;
    let mut conn =
        client.get_multiplexed_async_connection().await.with_context(|| format!("cannot connect to {parsed}"))?;
    let prefix = parsed.param("prefix").unwrap_or_else(|| format!("unicell-bench-{tag}"));
    let keys: Arc<Vec<String>> = Arc::new((0..w.trees).map(|i| format!("{prefix}:ceiling:{i}")).collect());
    let total = (w.claims / w.trees + 1) as i64 * 2;
    for chunk in keys.chunks(1000) {
        let mut p = redis::pipe();
        for k in chunk {
            p.cmd("HSET").arg(k).arg("used").arg(0).arg("total").arg(total).ignore();
        }
        let () = p.query_async(&mut conn).await.context("creating the ceiling's keys")?;
    }
    let script = Arc::new(redis::Script::new(SCRIPT));
    // Loaded up front, so that every measured call is a plain EVALSHA.
    let _: String = script.prepare_invoke().load_async(&mut conn).await.context("SCRIPT LOAD")?;
    let bar = progress::bar("ceiling redis", w.claims as u64);
    let c = conn.clone();
    let (k, s) = (Arc::clone(&keys), Arc::clone(&script));
    let measured =
        measure("EVALSHA check-and-increment (redis-rs, one multiplexed connection)".into(), w, bar, move |tree| {
            let (mut c, key, script) = (c.clone(), k[tree].clone(), Arc::clone(&s));
            async move {
                let applied: i64 = script.key(key).arg(1).invoke_async(&mut c).await.map_err(backend_err)?;
                if applied == 1 { Ok(()) } else { Err(unicell::Error::backend("ceiling", "the ceiling's key is full")) }
            }
        })
        .await;
    let mut used_total = 0i64;
    let mut read = Ok(());
    for chunk in keys.chunks(1000) {
        let mut p = redis::pipe();
        for k in chunk {
            p.cmd("HGET").arg(k).arg("used");
        }
        match p.query_async::<Vec<Option<i64>>>(&mut conn).await {
            Ok(v) => used_total += v.into_iter().flatten().sum::<i64>(),
            Err(e) => read = Err(e),
        }
        let _: Result<i64, _> = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await;
    }
    let out = measured?;
    read.context("reading the ceiling's keys back")?;
    if used_total != out.ok as i64 {
        bail!(
            Measurement,
            "the Redis ceiling reported {} successful EVALSHA calls but its keys sum to {used_total}",
            out.ok
        );
    }
    Ok(out)
}
