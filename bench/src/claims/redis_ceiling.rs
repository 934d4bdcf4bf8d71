//! The Redis ceiling of `bench claims`.
//!
//! The ceiling is `redis-benchmark` sending the very EVALSHA the Redis backend sends for a
//! claim ([`RedisStore::claim_command`]): same script, same keys, same arguments, with the
//! consumer id replaced by redis-benchmark's `__rand_int__` so that (almost) every call
//! takes the write path, not the cheaper replay path. The claims go to one tree sized for
//! all of them (a single Redis executes scripts one at a time, so spreading keys changes
//! nothing there). Same number of operations and the same concurrency (`-c`) as the claims
//! through unicell; run twice, without pipelining (`-P 1`, how redis-benchmark figures are
//! usually quoted) and with 16 commands in flight per connection (`-P 16`, closer to what a
//! multiplexed client does), and the better run is the ceiling. Afterwards the tree's
//! usage is read back to prove the calls really claimed.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::{Context, Result, bail};
use unicell::model::*;
use unicell::store::prelude::*;
use unicell::store::redis::RedisStore;
use unicell::store::{Scheme, StoreUrl};

use super::workload::{Outcome, Workload};
use crate::candidate::{Candidate, run_url};
use crate::stats::Summary;

/// Measures the ceiling (see the module docs).
pub async fn run(cand: &Candidate, w: &Workload, tag: &str) -> Result<Outcome> {
    let url = run_url(cand, &format!("{tag}_x"), None)?;
    let parsed = StoreUrl::parse(&url)?;
    if parsed.scheme() != Scheme::Redis {
        bail!(Measurement, "the redis-benchmark ceiling needs a single-node redis:// URL");
    }
    let exe = which("redis-benchmark").ok_or_else(|| {
        crate::Error::Measurement("redis-benchmark is not installed (Debian package redis-tools)".into())
    })?;
    let store = RedisStore::open(&parsed).await?;
    let result = measure(&store, &parsed, &exe, w).await;
    if let Err(e) = store.purge().await {
        tracing::warn!("could not purge the ceiling's keys: {e}");
    }
    result
}

async fn measure(store: &RedisStore, parsed: &StoreUrl, exe: &std::path::Path, w: &Workload) -> Result<Outcome> {
    // Room for both redis-benchmark runs (see below).
    let per = w.claims as i64 * 4 + 10;
    let root = ProviderId::new_v4();
    store
        .create_provider(&NewProvider {
            id: root,
            name: format!("ceiling-{root}"),
            parent: None,
            cell: None,
            inventories: BTreeMap::from([
                (ResourceClass::Vcpu, Inventory::with_total(per)),
                (ResourceClass::MemoryMb, Inventory::with_total(per * 64)),
            ]),
            traits: Default::default(),
            aggregates: Default::default(),
        })
        .await
        .context("create the ceiling's tree")?;
    let consumer = ConsumerId::new_v4();
    let req = ClaimRequest {
        consumer,
        project_id: "bench".into(),
        user_id: "bench".into(),
        allocations: BTreeMap::from([(
            root,
            BTreeMap::from([(ResourceClass::Vcpu, 1), (ResourceClass::MemoryMb, 64)]),
        )]),
        group: None,
    };
    let eval = store.claim_command(&req).await?;
    // Without pipelining (how redis-benchmark figures are usually quoted) and with 16 commands in flight
    // per connection (what a multiplexed client such as unicell's does): the ceiling is the
    // better of the two.
    let mut runs = Vec::new();
    for pipeline in [1usize, 16] {
        runs.push((pipeline, benchmark(exe, parsed, w, &eval, &consumer.to_string(), pipeline).await?));
    }
    // Prove the script really claimed: usage on the tree counts successful claims.
    let tree = store.provider_tree(root).await?;
    let used = tree.root_node().map_or(0, |n| n.used(&ResourceClass::Vcpu));
    let sent = w.claims * runs.len();
    if (used as f64) < sent as f64 * 0.99 {
        bail!(
            Measurement,
            "redis-benchmark ran {sent} EVALSHA calls but the tree shows only {used} claims: the script did \
             not claim"
        );
    }
    let rps = |r: &(BTreeMap<String, f64>, f64)| r.0.get("rps").copied().unwrap_or(0.0);
    let what = format!(
        "redis-benchmark EVALSHA claim.lua -c {} ({})",
        w.tasks,
        runs.iter().map(|(p, r)| format!("-P {p}: {:.0}/s", rps(r))).collect::<Vec<_>>().join(", ")
    );
    let Some((_, (row, seconds))) = runs.into_iter().max_by(|a, b| rps(&a.1).total_cmp(&rps(&b.1))) else {
        bail!(Measurement, "no redis-benchmark run");
    };
    let get = |k: &str| row.get(k).copied().unwrap_or(f64::NAN);
    Ok(Outcome {
        what,
        ops: w.claims,
        ok: w.claims,
        capacity_failures: 0,
        conflicts: 0,
        errors: 0,
        first_error: None,
        seconds,
        per_second: get("rps"),
        latency: Summary {
            count: w.claims as u64,
            mean_ms: get("avg_latency_ms"),
            p50_ms: get("p50_latency_ms"),
            // redis-benchmark reports p95, not p90.
            p90_ms: f64::NAN,
            p99_ms: get("p99_latency_ms"),
            max_ms: get("max_latency_ms"),
        },
    })
}

/// One redis-benchmark run of `w.claims` EVALSHA calls from `w.tasks` clients with
/// `pipeline` commands in flight each; returns its CSV figures and the wall time.
async fn benchmark(
    exe: &std::path::Path,
    parsed: &StoreUrl,
    w: &Workload,
    eval: &unicell::store::redis::ClaimEval,
    consumer: &str,
    pipeline: usize,
) -> Result<(BTreeMap<String, f64>, f64)> {
    let subst = |s: &String| s.replace(consumer, "c__rand_int__");
    let u = parsed.expose();
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("-h")
        .arg(u.host_str().unwrap_or("127.0.0.1"))
        .arg("-p")
        .arg(u.port().unwrap_or(6379).to_string())
        .arg("-c")
        .arg(w.tasks.to_string())
        .arg("-n")
        .arg(w.claims.to_string())
        .arg("-P")
        .arg(pipeline.to_string())
        .arg("-r")
        .arg("1000000000")
        .arg("--csv");
    let db = u.path().trim_start_matches('/');
    if !db.is_empty() {
        cmd.arg("--dbnum").arg(db);
    }
    if let Some(pw) = u.password() {
        // redis-benchmark 7 takes the password only as an argument (it ignores
        // REDISCLI_AUTH); it is never printed or logged here.
        cmd.arg("-a").arg(percent_decode(pw));
        if !u.username().is_empty() {
            cmd.arg("--user").arg(percent_decode(u.username()));
        }
    }
    cmd.arg("EVALSHA")
        .arg(&eval.sha)
        .arg(eval.keys.len().to_string())
        .args(eval.keys.iter().map(subst))
        .args(eval.args.iter().map(subst));
    cmd.kill_on_drop(true);
    let started = std::time::Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(1800), cmd.output())
        .await
        .context("redis-benchmark did not finish within 30 minutes")?
        .context("cannot run redis-benchmark")?;
    let seconds = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(Measurement, "redis-benchmark failed ({}): {}", out.status, stderr.lines().next().unwrap_or(""));
    }
    let row = parse_csv(&stdout).ok_or_else(|| {
        crate::Error::Measurement(format!(
            "cannot read redis-benchmark's output: {}",
            stdout.lines().chain(stderr.lines()).next().unwrap_or("")
        ))
    })?;
    Ok((row, seconds))
}

/// Parses redis-benchmark's `--csv` output (a header line and one row) into name -> value.
fn parse_csv(s: &str) -> Option<BTreeMap<String, f64>> {
    let mut lines = s.lines().filter(|l| l.starts_with('"'));
    let header: Vec<String> = lines.next()?.split(',').map(|f| f.trim_matches('"').to_string()).collect();
    let row = lines.next()?;
    // The first field is the command line, which may itself contain quotes and commas (the
    // claim's JSON metadata); the figures are the last fields and contain neither.
    let fields: Vec<&str> = row.split(',').collect();
    let numeric = header.len().checked_sub(1)?;
    let values = fields.get(fields.len().checked_sub(numeric)?..)?;
    let map: BTreeMap<String, f64> = header
        .into_iter()
        .skip(1)
        .zip(values)
        .filter_map(|(k, v)| v.trim_matches('"').parse().ok().map(|v| (k, v)))
        .collect();
    map.contains_key("rps").then_some(map)
}

/// Decodes `%XX` escapes (URL userinfo is percent-encoded; `+` stays `+`).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_redis_benchmark_csv() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\"EVALSHA abc 5 k1 {\"p\":\"x\",\"u\":\"y\"} a,b\",\"116279.07\",\"0.301\",\"0.080\",\"0.287\",\"0.455\",\"0.631\",\"2.007\"\n";
        let m = super::parse_csv(out).unwrap();
        assert_eq!(super::percent_decode("a%40b+c%2"), "a@b+c%2");
        assert_eq!(m["rps"], 116279.07);
        assert_eq!(m["p99_latency_ms"], 0.631);
    }
}
