//! Build lease cases ([`crate::store::leases`]): compare-and-set on the version, and one
//! winner among concurrent takeovers.

use std::sync::Arc;

use super::harness::*;
use super::{case, check};
use crate::error::{Error, Kind};
use crate::model::*;
use crate::store::Store;

/// The cases of this group, in the suite's order.
pub(super) fn cases() -> Vec<Case> {
    vec![
        case!("leases::compare_and_set", compare_and_set),
        case!("leases::one_winner_under_concurrency", one_winner_under_concurrency),
    ]
}

fn leases_of(store: &dyn Store) -> Result<&dyn crate::store::leases::Leases, Failure> {
    store.leases().ok_or_else(|| Failure(format!("backend {} has no build leases", store.backend())))
}

async fn compare_and_set(store: Arc<dyn Store>) -> CaseResult {
    use crate::store::leases::BuildLease;
    let leases = leases_of(store.as_ref())?;
    let id = InstanceId::new_v4();
    let now = Timestamp::now();
    let lease = BuildLease { instance: id, owner: "replica-a".into(), expires_at: now, version: 7, attempts: 0 };
    check!(leases.get_lease(id).await?.is_none(), "no lease before create");
    leases.create_lease(&lease).await?;
    let got = leases.get_lease(id).await?;
    check!(got.as_ref().map(|l| l.version) == Some(1), "create writes version 1, got {got:?}");
    check!(got.as_ref().map(|l| l.owner.as_str()) == Some("replica-a"), "owner kept");
    expect_err(leases.create_lease(&lease).await, "second create", |e| {
        matches!(e, Error::AlreadyExists { kind: Kind::BuildLease, .. })
    })?;
    let later = now.plus(std::time::Duration::from_secs(30));
    let renewed = leases.replace_lease(id, 1, "replica-a", later, 0).await?;
    check!(renewed.as_ref().map(|l| l.version) == Some(2), "replace at the right version applies: {renewed:?}");
    check!(leases.replace_lease(id, 1, "replica-b", later, 1).await?.is_none(), "a stale version does not apply");
    let taken = leases.replace_lease(id, 2, "replica-b", later, 1).await?;
    check!(taken.as_ref().map(|l| (l.owner.as_str(), l.attempts)) == Some(("replica-b", 1)), "takeover: {taken:?}");
    let got = leases.get_lease(id).await?;
    check!(got == taken, "read back the takeover: {got:?}");
    check!(got.as_ref().is_some_and(|l| l.expires_at == later), "expiry kept to the microsecond");
    check!(leases.list_leases().await?.iter().any(|l| l.instance == id && l.version == 3), "listed at version 3");
    check!(!leases.delete_lease(id, 2).await?, "delete at a stale version does nothing");
    check!(leases.delete_lease(id, 3).await?, "delete at the right version");
    check!(leases.get_lease(id).await?.is_none(), "gone after delete");
    check!(!leases.delete_lease(id, 3).await?, "deleting twice is false");
    check!(leases.replace_lease(id, 3, "replica-c", later, 0).await?.is_none(), "no replace of a deleted lease");
    let bad = BuildLease { owner: String::new(), ..lease.clone() };
    expect_err(leases.create_lease(&bad).await, "empty owner", |e| matches!(e, Error::InvalidInput { .. }))?;
    Ok(())
}

async fn one_winner_under_concurrency(store: Arc<dyn Store>) -> CaseResult {
    use crate::store::leases::BuildLease;
    leases_of(store.as_ref())?;
    let id = InstanceId::new_v4();
    let expired = Timestamp::now().minus(std::time::Duration::from_secs(60));
    leases_of(store.as_ref())?
        .create_lease(&BuildLease { instance: id, owner: "dead".into(), expires_at: expired, version: 1, attempts: 0 })
        .await?;
    let reapers = (0..8).map(|n| {
        let store = store.clone();
        async move {
            let leases = store.leases().ok_or_else(|| Failure("no leases".into()))?;
            let owner = format!("reaper-{n}");
            Ok::<_, Failure>(leases.replace_lease(id, 1, &owner, Timestamp::now(), 1).await?.is_some())
        }
    });
    let results = futures::future::join_all(reapers).await;
    let mut winners = 0;
    for r in results {
        if r? {
            winners += 1;
        }
    }
    check!(winners == 1, "{winners} reapers took one lease over");
    let leases = leases_of(store.as_ref())?;
    check!(leases.delete_lease(id, 2).await?, "the winner's version is 2");
    Ok(())
}
