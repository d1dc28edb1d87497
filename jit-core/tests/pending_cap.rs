//! The broker's cap on requests waiting for approval: refused past it with
//! nothing stored, never applied to a request that does not wait, and held
//! by parallel submits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::*;
use jit_core::store::SqliteStore;
use jit_core::testing::{MemorySink, TestProvider};
use jit_core::{Broker, Error, ListFilter, ManualClock, MemoryStore, State, Store};

fn capped(store: Arc<dyn Store>, max: usize) -> Broker {
    builder_with(
        store,
        &Arc::new(TestProvider::new("test")),
        &Arc::new(TestProvider::new("manual-expiry").without_native_expiry()),
        &ManualClock::starting_now(),
        &Arc::new(MemorySink::new()),
    )
    .max_pending_per_requester(max)
    .build()
    .unwrap()
}

async fn pending_of(store: &dyn Store, who: &str) -> usize {
    store
        .list(&ListFilter {
            requester: Some(who.into()),
            states: vec![State::Pending],
            limit: 1000,
            ..ListFilter::default()
        })
        .await
        .unwrap()
        .len()
}

#[tokio::test]
async fn past_the_cap_a_request_that_would_wait_is_refused_and_nothing_is_stored() {
    let store = Arc::new(MemoryStore::new());
    let broker = capped(store.clone(), 2);
    let mallory = user("mallory");
    let mut held = Vec::new();
    for _ in 0..2 {
        let out = broker
            .submit(&mallory, req("prod-read", "1h"))
            .await
            .unwrap();
        assert_eq!(out.record.state, State::Pending);
        held.push(out.record.id);
    }
    let audit_before = broker.audit_records().await.unwrap().len();
    let err = broker
        .submit(&mallory, req("prod-read", "1h"))
        .await
        .unwrap_err();
    match &err {
        Error::TooManyPending { requester, max } => {
            assert_eq!((requester.as_str(), *max), ("mallory", 2));
        }
        other => panic!("expected TooManyPending, got {other:?}"),
    }
    assert_eq!((err.code(), err.http_status()), ("too_many_requests", 429));
    assert!(err.to_string().contains("2 pending requests"), "{err}");
    // Nothing half-done: no record, no audit event.
    assert_eq!(pending_of(store.as_ref(), "mallory").await, 2);
    assert_eq!(broker.audit_records().await.unwrap().len(), audit_before);

    // What the policy auto-approves never waits, so the cap does not apply.
    let out = broker
        .submit(&mallory, req("dev-read", "15m"))
        .await
        .unwrap();
    assert_eq!(out.record.state, State::Active);
    assert!(out.credentials.is_some());

    // The cap is per requester: someone else is not affected.
    let bob = user("bob");
    let out = broker.submit(&bob, req("prod-read", "1h")).await.unwrap();
    assert_eq!(out.record.state, State::Pending);

    // A cancelled request frees its place.
    broker
        .cancel(&mallory, held[0], "no longer needed")
        .await
        .unwrap();
    let out = broker
        .submit(&mallory, req("prod-read", "1h"))
        .await
        .unwrap();
    assert_eq!(out.record.state, State::Pending);
    assert!(broker.verify_audit().await.unwrap().is_ok());
}

#[tokio::test]
async fn without_a_cap_pending_requests_are_not_limited() {
    let store = Arc::new(MemoryStore::new());
    let broker = capped(store.clone(), 0);
    let mallory = user("mallory");
    for _ in 0..30 {
        broker
            .submit(&mallory, req("prod-read", "1h"))
            .await
            .unwrap();
    }
    assert_eq!(pending_of(store.as_ref(), "mallory").await, 30);
}

/// On SQLite, whose reads really wait, parallel submits by one requester
/// interleave; the cap still holds exactly, and auto-approved submits
/// racing them are never refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_submits_cannot_race_past_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("jit.db")).await.unwrap());
    let broker = capped(store.clone(), 3);
    let mallory = user("mallory");
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let (broker, mallory) = (broker.clone(), mallory.clone());
            tokio::spawn(async move {
                let ent = if i % 4 == 0 { "dev-read" } else { "prod-read" };
                let dur = if i % 4 == 0 { "15m" } else { "1h" };
                (ent, broker.submit(&mallory, req(ent, dur)).await)
            })
        })
        .collect();
    let (mut waiting, mut refused, mut active) = (0, 0, 0);
    for t in tasks {
        match t.await.unwrap() {
            ("prod-read", Ok(out)) if out.record.state == State::Pending => waiting += 1,
            ("prod-read", Err(Error::TooManyPending { .. })) => refused += 1,
            ("dev-read", Ok(out)) if out.record.state == State::Active => active += 1,
            (ent, other) => panic!("{ent}: unexpected {other:?}"),
        }
    }
    assert_eq!((waiting, refused, active), (3, 15, 6));
    assert_eq!(pending_of(store.as_ref(), "mallory").await, 3);
    assert!(broker.verify_audit().await.unwrap().is_ok());
}
