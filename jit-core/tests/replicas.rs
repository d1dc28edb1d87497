//! Replicas on one PostgreSQL store, the way operators run them (#11): a
//! replica that cannot do some work (mid-way through a rolling catalogue
//! change) never keeps it from the others, and a replica restarting again
//! and again never takes work another live replica is doing.
#![cfg(all(feature = "testing", feature = "postgres"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use common::*;
use jit_core::audit::{AuditKind, AuditRecord, AuditSink};
use jit_core::store::Store;
use jit_core::testing::postgres::TestSchema;
use jit_core::testing::store::sample_record;
use jit_core::testing::{MemorySink, TestProvider};
use jit_core::{
    Broker, CataloguePolicy, Clock, ManualClock, Reaper, RequestId, RequestRecord, State,
};

/// Knows only `prod-read` and only the `test` provider: a replica mid-way
/// through a rolling update, without `dev-read`, `batch-job` and the
/// `manual-expiry` provider the others have.
fn partial_broker(store: Arc<dyn Store>, clock: &ManualClock) -> Broker {
    let policy = CataloguePolicy::from_toml_str(
        r#"
        [[entitlements]]
        id = "prod-read"
        provider = "test"
        max_duration = "8h"
        [entitlements.eligible]
        groups = ["eng"]
        [entitlements.approval]
        groups = ["leads"]
        "#,
    )
    .unwrap();
    Broker::builder(store, Arc::new(policy))
        .provider(Arc::new(TestProvider::new("test")))
        .clock(Arc::new(clock.clone()))
        .replica_id("partial")
        .build()
        .unwrap()
}

/// A replica on the test catalogue whose `test` provider is `provider`.
fn replica(
    store: &Arc<dyn Store>,
    policy: &Arc<CataloguePolicy>,
    provider: &Arc<TestProvider>,
    id: &str,
) -> Broker {
    Broker::builder(store.clone(), policy.clone())
        .provider(provider.clone())
        .provider(Arc::new(
            TestProvider::new("manual-expiry").without_native_expiry(),
        ))
        .replica_id(id)
        .build()
        .unwrap()
}

/// A sink that takes its time, as one across a network does: it widens the
/// moment between a request's approval and its issue, when a restarting
/// replica could mistake the approval for one a dead process left.
#[derive(Debug)]
struct SlowSink;

#[async_trait::async_trait]
impl AuditSink for SlowSink {
    async fn append(&self, _record: &AuditRecord) -> jit_core::Result<()> {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(())
    }
}

/// Writes `r` as a crashed or earlier process left it, long before `now`.
async fn insert(store: &dyn Store, r: RequestRecord) -> RequestId {
    store.insert(&r, &[]).await.unwrap();
    r.id
}

/// Every kind of due work, each on a record the partial replica cannot
/// handle, plus a poison record nobody can: the partial replica reaps first
/// (twice, claiming everything), then the healthy one, with no lease having
/// lapsed, does all of it on its very next tick.
#[tokio::test(flavor = "multi_thread")]
async fn everything_due_is_done_by_the_healthy_replica_at_once() {
    let schema = TestSchema::new().await;
    let store: Arc<dyn Store> = Arc::new(schema.store().await);
    let clock = ManualClock::starting_now();
    let now = clock.now();
    let long_ago = now - TimeDelta::minutes(30);

    let provider = Arc::new(TestProvider::new("test"));
    let manual = Arc::new(TestProvider::new("manual-expiry").without_native_expiry());

    // An active grant on the provider only the healthy replica has, past its end.
    let mut r = sample_record("alice", "batch-job", State::Active, long_ago);
    if let Some(g) = r.grant.as_mut() {
        g.ends_at = now - TimeDelta::minutes(1);
        if let Some(i) = g.issued.as_mut() {
            i.provider = "manual-expiry".into();
            i.expires_at = g.ends_at;
        }
    }
    let expiring = insert(store.as_ref(), r).await;
    // A revocation on that provider whose retry is due.
    let mut r = sample_record("alice", "batch-job", State::Revoking, long_ago);
    if let Some(i) = r.grant.as_mut().and_then(|g| g.issued.as_mut()) {
        i.provider = "manual-expiry".into();
    }
    if let Some(rv) = r.revocation.as_mut() {
        rv.next_attempt_at = now - TimeDelta::minutes(1);
    }
    let revoking = insert(store.as_ref(), r).await;
    // A scheduled request of `dev-read` whose start has come.
    let mut r = sample_record("alice", "dev-read", State::Approved, long_ago);
    if let Some(g) = r.grant.as_mut() {
        g.starts_at = now - TimeDelta::minutes(1);
        g.ends_at = now + TimeDelta::minutes(20);
    }
    let scheduled = insert(store.as_ref(), r).await;
    // A `dev-read` grant a crash left `Issuing`, long past the grace.
    let stuck = insert(
        store.as_ref(),
        sample_record("alice", "dev-read", State::Issuing, long_ago),
    )
    .await;
    // A pending request past its deadline.
    let mut r = sample_record("alice", "dev-read", State::Pending, long_ago);
    r.pending_until = Some(now - TimeDelta::minutes(1));
    let pending = insert(store.as_ref(), r).await;
    // And one nobody can handle.
    let poison = insert(
        store.as_ref(),
        sample_record("alice", "removed-entitlement", State::Issuing, long_ago),
    )
    .await;

    let partial = partial_broker(store.clone(), &clock);
    let mut partial_reaper = Reaper::new(partial.clone());
    for _ in 0..2 {
        let report = partial_reaper.tick().await.unwrap();
        assert_eq!(report.failed, 0, "{report:?}");
    }
    // It touched nothing it cannot finish (the timeout needs no entitlement).
    for id in [expiring, revoking, scheduled, stuck] {
        let rec = partial.get(id).await.unwrap();
        assert_eq!(
            rec.version, 1,
            "the partial replica changed `{}` ({})",
            rec.request.entitlement, rec.state
        );
    }
    assert!(
        partial.skipped_records() >= 5,
        "{}",
        partial.skipped_records()
    );

    // The healthy replica's next tick, one second later (every lease the
    // partial one took is still running), does the rest.
    clock.advance(TimeDelta::seconds(1));
    let sink = Arc::new(MemorySink::new());
    let healthy = broker_with(
        store.clone(),
        &provider,
        &manual,
        &clock,
        &sink,
        Some("healthy"),
    );
    let report = Reaper::new(healthy.clone()).tick().await.unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    let state = |id| {
        let healthy = healthy.clone();
        async move { healthy.get(id).await.unwrap().state }
    };
    assert_eq!(state(expiring).await, State::Expired);
    assert_eq!(state(revoking).await, State::Revoked);
    assert_eq!(state(scheduled).await, State::Active);
    assert_eq!(
        state(stuck).await,
        State::Failed,
        "nothing was minted for it"
    );
    assert_eq!(state(pending).await, State::TimedOut);
    assert_eq!(state(poison).await, State::Issuing);
    assert_eq!(manual.revoke_calls(), 2, "the expiry and the retry");
    assert_eq!(provider.issue_calls(), 1, "the scheduled request");
    assert!(healthy.verify_audit().await.unwrap().is_ok());
    schema.drop_schema().await;
}

/// One replica serves auto-approved requests while another is restarted
/// again and again, reaping at once after each start. Every client gets its
/// credentials (no conflict, no invalid state), and every grant is issued
/// exactly once, by the replica that approved it, never by the restarting
/// one's reaper.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_restarting_under_load_never_takes_work_in_flight() {
    const CLIENTS: usize = 8;
    const REQUESTS: usize = 15;
    let schema = TestSchema::new().await;
    let store: Arc<dyn Store> = Arc::new(schema.store().await);
    // Real time: a restarted replica must start after approvals it sees.
    let serving_provider = Arc::new(TestProvider::new("test"));
    let restarting_provider = Arc::new(TestProvider::new("test"));
    let policy = Arc::new(CataloguePolicy::from_toml_str(CATALOGUE).unwrap());
    let serving = Broker::builder(store.clone(), policy.clone())
        .provider(serving_provider.clone())
        .provider(Arc::new(
            TestProvider::new("manual-expiry").without_native_expiry(),
        ))
        .audit_sink(Arc::new(SlowSink))
        .replica_id("serving")
        .build()
        .unwrap();

    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let restarts = {
        let done = done.clone();
        let (store, policy, provider) =
            (store.clone(), policy.clone(), restarting_provider.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                // A fresh process: a new broker and reaper, ticking at once.
                let mut reaper = Reaper::new(replica(
                    &store,
                    &policy,
                    &provider,
                    &format!("restarting-{n}"),
                ))
                .batch(50);
                for _ in 0..3 {
                    let report = reaper.tick().await.unwrap();
                    assert_eq!(report.failed, 0, "{report:?}");
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            n
        })
    };

    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let broker = serving.clone();
        clients.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..REQUESTS {
                let out = broker
                    .submit(&user(&format!("client-{c}")), req("dev-read", "10m"))
                    .await
                    .unwrap_or_else(|e| panic!("a client got `{e}` ({})", e.code()));
                assert_eq!(out.record.state, State::Active);
                assert!(out.credentials.is_some(), "a client got no credentials");
                ids.push(out.record.id);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for c in clients {
        ids.extend(c.await.unwrap());
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let restarted = restarts.await.unwrap();
    assert!(restarted >= 2, "the replica restarted {restarted} times");

    assert_eq!(ids.len(), CLIENTS * REQUESTS);
    assert_eq!(
        serving_provider.issue_calls(),
        CLIENTS * REQUESTS,
        "each grant minted once, by the replica that approved it"
    );
    assert_eq!(
        restarting_provider.issue_calls(),
        0,
        "the restarting replica minted work in flight"
    );
    let audit = serving.audit_records().await.unwrap();
    for id in &ids {
        let issued: Vec<_> = audit
            .iter()
            .filter(|r| r.event.request_id == *id && r.event.kind == AuditKind::Issued)
            .collect();
        assert_eq!(
            issued.len(),
            1,
            "request {id} issued {} times",
            issued.len()
        );
        assert_eq!(issued[0].event.actor, jit_core::broker::SYSTEM_ACTOR);
        assert_eq!(
            serving.get(*id).await.unwrap().state,
            State::Active,
            "request {id}"
        );
    }
    assert!(serving.verify_audit().await.unwrap().is_ok());
    schema.drop_schema().await;
}
