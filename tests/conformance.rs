//! The conformance binary: the whole conformance suite on every backend this machine can
//! reach, each trial named `conformance::<backend>::<case>`, plus each backend's own trials.
//!
//! Backends: `memory` (always); `redis`, `redis-cluster` and `redis-cluster-wait-replicas`
//! (a replicated cluster with `wait_replicas=1`; see `support/redis.rs`);
//! `scylla`, `scylla-testcontainers` and `cassandra-2.1` (Cassandra 2.1 behind the
//! v4<->v3 proxy, see `support/cql.rs`); `mariadb-cells`, `mariadb-single`,
//! `postgres-cells` and `postgres-single` (see `support/sql.rs`). A backend that cannot be
//! reached here reports its trials ignored with the reason; one that is there but broken
//! fails them.
//!
//! Backend-specific trials: `backend::redis*::*` and `differential::redis*::*`
//! (`conformance/backend_redis.rs`), `cql::*`, `differential::<cql backend>::*` and
//! `bench::cassandra-2.1::claims_per_second` (`conformance/backend_cql.rs`), `sql::*`
//! (`conformance/backend_sql.rs`); opening stores by URL, `urls::*` (`conformance/urls.rs`).

mod support;

/// The backend-specific trials, one file each in `tests/conformance/`.
mod conformance {
    pub mod backend_cql;
    pub mod backend_redis;
    pub mod backend_sql;
    pub mod urls;
}

use std::sync::Arc;

use conformance::{backend_cql, backend_redis, backend_sql, urls};
use support::cql::{self as cql_support, Cql};
use support::redis::{self as redis_support, Redis};
use support::{Backend, case_trials, stores};

fn main() {
    let redis = Redis::new(redis_support::Kind::Single);
    let redis_cluster = Redis::new(redis_support::Kind::Cluster);
    let redis_cluster_wait = Redis::new(redis_support::Kind::ClusterWait);
    let cql = [
        Cql::new(cql_support::Kind::External),
        Cql::new(cql_support::Kind::Container),
        Cql::new(cql_support::Kind::Cassandra),
    ];
    let sql = support::sql::all();

    let mut backends: Vec<Arc<dyn Backend>> =
        vec![stores::memory(), redis.clone(), redis_cluster.clone(), redis_cluster_wait.clone()];
    backends.extend(cql.iter().map(|b| b.clone() as Arc<dyn Backend>));
    backends.extend(sql.iter().map(|b| b.clone() as Arc<dyn Backend>));

    let mut trials = Vec::new();
    for b in &backends {
        trials.extend(case_trials(b, unicell::store::conformance::cases(), |b, case| {
            format!("conformance::{b}::{case}")
        }));
    }
    // Placement's state: on the backends that keep it.
    let mut placement: Vec<Arc<dyn Backend>> =
        vec![stores::memory(), redis.clone(), redis_cluster.clone(), redis_cluster_wait.clone()];
    placement.extend(sql.iter().map(|b| b.clone() as Arc<dyn Backend>));
    for b in &placement {
        trials.extend(case_trials(b, unicell::store::conformance::placement_cases(), |b, case| {
            format!("conformance::{b}::{case}")
        }));
    }
    trials.extend(backend_redis::trials(&redis, &redis_cluster));
    trials.extend(backend_cql::trials(&cql));
    trials.extend(backend_sql::trials(&sql));
    trials.extend(urls::trials());
    support::run(trials, backends);
}
