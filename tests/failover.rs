//! Failover on a replicated Redis Cluster (three masters, three replicas, started from the
//! installed `redis-server` and `redis-cli`, `cluster-node-timeout` 1000 ms): many tasks
//! claim and release on trees spread over every shard, one master is killed with SIGKILL
//! mid-run, its replica is promoted, the old master is restarted as a replica, the load goes
//! on ([`unicell::testkit::failover`]). Every acknowledged claim and release is recorded and
//! checked against the store afterwards, Jepsen-style.
//!
//! * With `wait_replicas=1` no acknowledged claim may be lost, none may lose its consumer
//!   index entry, no acknowledged release may come back, and the audit must be clean.
//! * Without it, Redis's asynchronous replication may lose acknowledged claims: the test
//!   prints how many and asserts only what must hold whatever the timing (a clean audit:
//!   a claim's usage and allocation replicate together, so none is ever half lost).
//!
//! No timing is asserted. Ignored with the reason when `redis-server` or `redis-cli` is not
//! installed; a failure when they are and the cluster misbehaves.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use libtest_mimic::{Completion, Failed, Trial};
use support::block_on;
use unicell::testkit::failover::{FailoverConfig, FailoverReport, run};
use unicell::testkit::find_binary;
use unicell::testkit::redis_server::RedisCluster;

/// The installed binaries, or why the trial is ignored.
fn binaries() -> Result<(), String> {
    for (bin, package) in [("redis-server", "redis-server"), ("redis-cli", "redis-tools")] {
        if find_binary(bin).is_none() {
            return Err(format!("{bin} is not installed (Debian package {package})"));
        }
    }
    Ok(())
}

fn experiment(wait_replicas: u32) -> Result<Result<FailoverReport, Failed>, Completion> {
    if let Err(why) = binaries() {
        return Err(Completion::ignored_with(why));
    }
    // The binaries are there: from here on, anything that goes wrong is a failure.
    let cluster = match RedisCluster::start_replicated(3, 1, Duration::from_millis(1000)) {
        Ok(c) => c,
        Err(e) => return Ok(Err(format!("starting a replicated cluster: {e}").into())),
    };
    let cluster = Arc::new(Mutex::new(cluster));
    let cfg = FailoverConfig { wait_replicas, ..FailoverConfig::default() };
    Ok(match block_on(false, run(cluster, &cfg)) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(format!("failover run: {e}").into()),
        Err(e) => Err(e),
    })
}

fn check_common(r: &FailoverReport) -> Result<(), Failed> {
    eprintln!(
        "failover (wait_replicas={}): promotion after {:.0} ms, claims resumed {} after it, old master resynced \
         {:.0} ms after it; {} claims and {} releases acknowledged, {} retryable errors, {} calls abandoned as hung; LOST {} acknowledged \
         claims, {} unindexed, {} releases undone; {:.0} claims/s before, {:.0} after; {}",
        r.wait_replicas,
        r.promotion_ms,
        r.resume_ms.map(|m| format!("{m:.0} ms")).unwrap_or_else(|| "never".into()),
        r.resynced_ms,
        r.claims_acknowledged,
        r.releases_acknowledged,
        r.retryable_errors,
        r.hung_calls,
        r.lost_claims,
        r.unindexed_claims,
        r.resurrected_releases,
        r.claims_per_s_before,
        r.claims_per_s_after,
        r.audit
    );
    if !r.audit_clean {
        return Err(r.audit.clone().into());
    }
    if r.retryable_errors == 0 {
        return Err("no call failed while the master was down: the kill did not bite".into());
    }
    if r.resume_ms.is_none() {
        return Err("no claim was acknowledged on the failed shard after the promotion".into());
    }
    Ok(())
}

fn trial(name: &str, wait_replicas: u32) -> Trial {
    Trial::ignorable_test(name, move || {
        let r = match experiment(wait_replicas) {
            Ok(r) => r?,
            Err(ignored) => return Ok(ignored),
        };
        check_common(&r)?;
        if wait_replicas > 0 && (r.lost_claims > 0 || r.unindexed_claims > 0 || r.resurrected_releases > 0) {
            return Err(format!(
                "wait_replicas={wait_replicas}: {} acknowledged claims lost, {} unindexed, {} acknowledged releases undone",
                r.lost_claims, r.unindexed_claims, r.resurrected_releases
            )
            .into());
        }
        Ok(Completion::Completed)
    })
}

fn main() {
    support::run(
        vec![
            trial("failover::redis-cluster::kill_master_no_replica_wait_reports_losses", 0),
            trial("failover::redis-cluster::kill_master_wait_replicas_1_loses_nothing", 1),
        ],
        Vec::new(),
    );
}
