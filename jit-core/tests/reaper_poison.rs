//! One record the broker cannot handle (its entitlement or provider is no
//! longer configured here) never stops the reaper: it is logged, counted and
//! skipped, every other kind of due work still runs, and on a shared store
//! it is handed to replicas that can do it instead of being hoarded.
#![cfg(all(feature = "testing", feature = "sqlite", feature = "postgres"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use chrono::{TimeDelta, Utc};
use common::*;
use jit_core::store::{SqliteStore, Store};
use jit_core::testing::postgres::TestSchema;
use jit_core::testing::store::sample_record;
use jit_core::testing::{MemorySink, TestProvider};
use jit_core::{Broker, CataloguePolicy, Clock, ListFilter, ManualClock, Reaper, State};

/// A record `entitlement` has in `state`, written before any broker started.
async fn left_behind(store: &dyn Store, entitlement: &str, state: State) -> jit_core::RequestId {
    let mut r = sample_record(
        "bob",
        entitlement,
        state,
        Utc::now() - TimeDelta::minutes(10),
    );
    if let Some(g) = r.grant.as_mut() {
        g.ends_at = Utc::now() + TimeDelta::minutes(50);
    }
    store.insert(&r, &[]).await.unwrap();
    r.id
}

#[tokio::test]
async fn a_record_of_a_removed_entitlement_does_not_stop_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(dir.path().join("jit.db")).await.unwrap());
    // A crash left an `Issuing` grant and an `Approved` request of an
    // entitlement the catalogue no longer has.
    let issuing = left_behind(store.as_ref(), "removed-entitlement", State::Issuing).await;
    let approved = left_behind(store.as_ref(), "removed-entitlement", State::Approved).await;

    let e = env_with_store(store.clone());
    let live = e
        .broker
        .submit(&user("alice"), req("dev-read", "10m"))
        .await
        .unwrap();
    assert_eq!(live.record.state, State::Active);
    e.clock.advance(TimeDelta::minutes(11));

    let mut reaper = Reaper::new(e.broker.clone());
    for _ in 0..2 {
        let report = reaper.tick().await.unwrap();
        assert_eq!(report.failed, 0, "{report:?}");
    }
    assert_eq!(
        e.broker.get(live.record.id).await.unwrap().state,
        State::Expired,
        "the grant expired although a poison record came first"
    );
    assert!(
        e.broker.skipped_records() >= 2,
        "{}",
        e.broker.skipped_records()
    );
    // The poison records are untouched, waiting for a broker that knows them.
    assert_eq!(e.broker.get(issuing).await.unwrap().state, State::Issuing);
    assert_eq!(e.broker.get(approved).await.unwrap().state, State::Approved);
}

fn small_catalogue_broker(store: Arc<dyn Store>, clock: &ManualClock, replica: &str) -> Broker {
    // Knows only `prod-read`: a replica mid-way through a rolling update.
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
        .replica_id(replica)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_hands_back_what_it_cannot_do_and_a_healthy_one_does_it_at_once() {
    let schema = TestSchema::new().await;
    let store: Arc<dyn Store> = Arc::new(schema.store().await);
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(left_behind(store.as_ref(), "dev-read", State::Approved).await);
    }
    let poison = left_behind(store.as_ref(), "removed-entitlement", State::Issuing).await;

    let clock = ManualClock::starting_now();
    let provider = Arc::new(TestProvider::new("test"));
    let manual = Arc::new(TestProvider::new("manual-expiry").without_native_expiry());
    let sink = Arc::new(MemorySink::new());
    let healthy = broker_with(
        store.clone(),
        &provider,
        &manual,
        &clock,
        &sink,
        Some("healthy"),
    );
    let partial = small_catalogue_broker(store.clone(), &clock, "partial");

    // The replica that does not know `dev-read` reaps first, twice: it claims
    // the approved requests, cannot issue them, and must not keep them.
    let mut partial_reaper = Reaper::new(partial.clone());
    for _ in 0..2 {
        let report = partial_reaper.tick().await.unwrap();
        assert_eq!((report.settled, report.failed), (0, 0), "{report:?}");
    }
    assert!(
        partial.skipped_records() >= 20,
        "{}",
        partial.skipped_records()
    );

    // The healthy replica, with no time passing (the claims' lease has not
    // lapsed), issues every one of them on its next tick.
    clock.advance(TimeDelta::seconds(1));
    let report = Reaper::new(healthy.clone()).tick().await.unwrap();
    assert_eq!(report.settled, 20, "{report:?}");
    for id in &ids {
        assert_eq!(healthy.get(*id).await.unwrap().state, State::Active);
    }
    // Another record the healthy one cannot handle either is skipped there too.
    assert_eq!(healthy.get(poison).await.unwrap().state, State::Issuing);
    assert!(healthy.skipped_records() >= 1);
    assert!(healthy.verify_audit().await.unwrap().is_ok());
    schema.drop_schema().await;
}

/// A replica that starts while another has just approved a request (and is
/// issuing it) must not issue it too: on a shared store "approved before I
/// started" does not mean "left by a dead process".
#[tokio::test(flavor = "multi_thread")]
async fn a_starting_replica_leaves_a_fresh_approval_to_the_replica_issuing_it() {
    let schema = TestSchema::new().await;
    let store: Arc<dyn Store> = Arc::new(schema.store().await);
    let clock = ManualClock::starting_now();
    let provider = Arc::new(TestProvider::new("test"));
    let manual = Arc::new(TestProvider::new("manual-expiry").without_native_expiry());
    let sink = Arc::new(MemorySink::new());
    let first = broker_with(
        store.clone(),
        &provider,
        &manual,
        &clock,
        &sink,
        Some("first"),
    );
    // An approval committed by `first` whose issue has not happened yet: the
    // record as `first` leaves it between its approve and issue steps.
    let mut r = sample_record("alice", "dev-read", State::Approved, clock.now());
    r.updated_at = clock.now();
    if let Some(g) = r.grant.as_mut() {
        g.starts_at = clock.now();
    }
    store.insert(&r, &[]).await.unwrap();
    clock.advance(TimeDelta::milliseconds(100));
    // A second replica starts now and reaps at once.
    let second = broker_with(
        store.clone(),
        &provider,
        &manual,
        &clock,
        &sink,
        Some("second"),
    );
    let report = Reaper::new(second.clone()).tick().await.unwrap();
    assert_eq!(
        report.settled, 0,
        "the starting replica took in-flight work"
    );
    assert_eq!(second.get(r.id).await.unwrap().state, State::Approved);
    assert!(provider.minted().is_empty());
    // After the grace, a stalled issue is picked up (the issuer crashed).
    clock.advance(TimeDelta::minutes(3));
    let report = Reaper::new(second.clone()).tick().await.unwrap();
    assert_eq!(report.settled, 1, "{report:?}");
    let _ = first;
    assert_eq!(
        second
            .list(&ListFilter::default())
            .await
            .unwrap()
            .iter()
            .filter(|r| r.state == State::Active)
            .count(),
        1
    );
    schema.drop_schema().await;
}
