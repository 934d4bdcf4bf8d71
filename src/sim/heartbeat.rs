//! Simulated compute services reporting in.
//!
//! A nova-compute service reports every `report_interval` (10 s by default) by updating its
//! service record; the scheduler's ComputeFilter treats a host whose last report is older
//! than `service_down_time` (60 s) as down. Simulated hosts written by a [`Cloud`] report
//! once, when they are written; [`Heartbeat`] keeps reporting for them, so that a long run or
//! a long-lived server (`unicell computes`, `unicell serve`) keeps its hosts up with Nova's
//! default settings instead of stretching `service_down_time`.
//!
//! A report is the store's [`report_host`](crate::store::Catalog::report_host): one write of
//! the heartbeat alone, as Nova's service report is one UPDATE. It leaves the rest of the
//! record alone (an operator disabling the host meanwhile keeps their change) and is not a
//! catalog change, so a cloud's reports do not make every scheduler re-read the catalog.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Cloud;
use crate::error::{Error, Result};
use crate::model::Timestamp;
use crate::store::Store;

/// Nova's default `report_interval`.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// What a heartbeat loop did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HeartbeatStats {
    /// Rounds started (each reports every host once).
    pub rounds: u64,
    /// Reports written.
    pub reports: u64,
    /// Reports that failed (the store failed, or the host record is gone).
    pub failures: u64,
}

/// The outcome of one round of reports.
#[derive(Debug, Default)]
pub struct Round {
    /// Hosts reported.
    pub reported: u64,
    /// Hosts whose report failed, with the reason.
    pub failed: Vec<(String, Error)>,
}

/// The reports of a set of simulated compute hosts (see the module docs).
#[derive(Clone, Debug)]
pub struct Heartbeat {
    store: Arc<dyn Store>,
    hosts: Arc<[String]>,
    interval: Duration,
    concurrency: usize,
}

impl Heartbeat {
    /// Reports for `hosts` of `store` every `interval`, 16 reports at a time.
    pub fn new(store: Arc<dyn Store>, hosts: impl IntoIterator<Item = String>, interval: Duration) -> Self {
        Heartbeat { store, hosts: hosts.into_iter().collect(), interval, concurrency: 16 }
    }

    /// Reports for every host of `cloud`, in its store, every `interval`.
    pub fn for_cloud(cloud: &Cloud, interval: Duration) -> Self {
        Heartbeat::new(Arc::clone(&cloud.store), cloud.hosts.iter().map(|h| h.name.clone()), interval)
    }

    /// Sets how many reports are in flight at once (at least one). A round takes about
    /// `hosts / concurrency` store round trips; keep it well under the interval.
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// The hosts reported for.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// Reports every host once, now.
    pub async fn beat(&self) -> Round {
        let mut round = Round::default();
        // Owned futures (not a closure over `self`), so a spawned loop can run them.
        let reports: Vec<_> = self.hosts.iter().map(|name| report(Arc::clone(&self.store), name.clone())).collect();
        let mut reports = futures::stream::iter(reports).buffer_unordered(self.concurrency);
        while let Some((name, outcome)) = reports.next().await {
            match outcome {
                Ok(()) => round.reported += 1,
                Err(e) => round.failed.push((name, e)),
            }
        }
        round
    }

    /// Reports every `interval` in a task of its own, starting now, until
    /// [`HeartbeatTask::stop`] (or until the handle is dropped). A failed report is logged and
    /// retried at the next round, as nova-compute does.
    pub fn spawn(self) -> HeartbeatTask {
        let (stop, mut stopped) = watch::channel(false);
        let handle = tokio::spawn(async move {
            let mut stats = HeartbeatStats::default();
            let mut ticks = tokio::time::interval(self.interval.max(Duration::from_millis(1)));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = stopped.changed() => break,
                }
                let round = self.beat().await;
                stats.rounds += 1;
                stats.reports += round.reported;
                stats.failures += round.failed.len() as u64;
                if let Some((host, e)) = round.failed.first() {
                    tracing::warn!(failed = round.failed.len(), "heartbeat round: {host} could not report: {e}");
                }
            }
            stats
        });
        HeartbeatTask { stop, handle }
    }
}

/// One report: the host's heartbeat set to now.
async fn report(store: Arc<dyn Store>, name: String) -> (String, Result<()>) {
    let outcome = store.report_host(&name, Timestamp::now()).await;
    (name, outcome)
}

/// A running heartbeat loop ([`Heartbeat::spawn`]). Dropping it stops the loop too.
#[derive(Debug)]
pub struct HeartbeatTask {
    stop: watch::Sender<bool>,
    handle: JoinHandle<HeartbeatStats>,
}

impl HeartbeatTask {
    /// Stops the loop after the round in progress, if any, and returns what it did.
    pub async fn stop(mut self) -> Result<HeartbeatStats> {
        let _ = self.stop.send(true);
        match (&mut self.handle).await {
            Ok(stats) => Ok(stats),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(Error::backend("heartbeat loop", e)),
        }
    }
}

impl Drop for HeartbeatTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::HostSpec;
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn reports_keep_hosts_up_and_missing_hosts_are_failures() {
        let mut cloud = Cloud::new(Arc::new(MemoryStore::new())).await.unwrap();
        cloud.add_hosts(3, HostSpec { heartbeat_age_s: 3600, ..HostSpec::default() }).await.unwrap();
        let before = Timestamp::now();
        let names = cloud.hosts.iter().map(|h| h.name.clone()).chain(["no-such-host".to_string()]);
        let beat = Heartbeat::new(Arc::clone(&cloud.store), names, Duration::from_millis(20));
        let round = beat.beat().await;
        assert_eq!(round.reported, 3);
        assert_eq!(round.failed.len(), 1);
        assert!(matches!(round.failed[0].1, Error::NotFound { .. }));
        for h in &cloud.hosts {
            assert!(cloud.store.get_host(&h.name).await.unwrap().last_heartbeat >= before);
        }
        let task = beat.spawn();
        tokio::time::sleep(Duration::from_millis(70)).await;
        let stats = task.stop().await.unwrap();
        assert!(stats.rounds >= 2, "{stats:?}");
        assert_eq!(stats.reports, 3 * stats.rounds);
        assert_eq!(stats.failures, stats.rounds);
    }

    #[tokio::test]
    async fn reports_are_not_catalog_changes_and_keep_an_operators_write() {
        let mut cloud = Cloud::new(Arc::new(MemoryStore::new())).await.unwrap();
        cloud.add_hosts(2, HostSpec::default()).await.unwrap();
        let cursor = cloud.store.change_cursor().await.unwrap();
        let mut disabled = cloud.store.get_host(&cloud.hosts[0].name).await.unwrap();
        let beat = Heartbeat::for_cloud(&cloud, Duration::from_secs(10));
        assert_eq!(beat.beat().await.reported, 2);
        // An operator's write made with the record read before the reports: the heartbeat
        // the reports wrote stays, the operator's change too.
        disabled.enabled = false;
        cloud.store.put_host(&disabled).await.unwrap();
        let after = cloud.store.get_host(&disabled.name).await.unwrap();
        assert!(!after.enabled);
        assert!(after.last_heartbeat > disabled.last_heartbeat);
        let next = match cloud.store.changes_since(&cursor).await.unwrap() {
            crate::model::Changes::Trees { catalog, next, .. } => {
                assert!(catalog, "the operator's write is announced");
                next
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(beat.beat().await.reported, 2);
        match cloud.store.changes_since(&next).await.unwrap() {
            crate::model::Changes::Trees { catalog, roots, .. } => {
                assert!(!catalog && roots.is_empty(), "reports are not announced: {catalog} {roots:?}")
            }
            other => panic!("{other:?}"),
        }
    }
}
