//! 64 tasks racing approve/deny/cancel/revoke on one request, 200 rounds:
//! every round ends in exactly one consistent state, and the chain verifies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::*;
use jit_core::{Error, MemoryStore, RequestId, State, Store};

#[derive(Debug, Default)]
struct Tally {
    approved: usize,
    denied: usize,
    cancelled: usize,
    revoked: usize,
}

async fn race_round(e: &Env, round: usize) -> (RequestId, Tally) {
    let alice = user("alice");
    let id = e
        .broker
        .submit(&alice, req("prod-read", "1h"))
        .await
        .unwrap()
        .record
        .id;
    let mut tasks = Vec::new();
    for t in 0..64 {
        let b = e.broker.clone();
        let alice = alice.clone();
        tasks.push(tokio::spawn(async move {
            // Interleave kinds so every kind starts early in the round.
            let r = match (t + round) % 4 {
                0 => b
                    .approve(&lead(&format!("lead{t}")), id, "")
                    .await
                    .map(|_| 'a'),
                1 => b
                    .deny(&lead(&format!("lead{t}")), id, "no")
                    .await
                    .map(|_| 'd'),
                2 => b.cancel(&alice, id, "changed my mind").await.map(|_| 'c'),
                // Revoked, or being revoked by a racing task (revoke is idempotent).
                _ => b.revoke(&alice, id, "done").await.map(|r| {
                    assert!(
                        matches!(r.state, State::Revoked | State::Revoking),
                        "{}",
                        r.state
                    );
                    'r'
                }),
            };
            match r {
                Ok(k) => Some(k),
                // The only acceptable failures: the race was lost to another final state.
                Err(Error::InvalidState { .. }) | Err(Error::Conflict { .. }) => None,
                Err(Error::Forbidden { ref reason, .. }) if reason.contains("already") => None,
                Err(other) => panic!("unexpected error: {other}"),
            }
        }));
    }
    let mut tally = Tally::default();
    for t in tasks {
        match t.await.unwrap() {
            Some('a') => tally.approved += 1,
            Some('d') => tally.denied += 1,
            Some('c') => tally.cancelled += 1,
            Some('r') => tally.revoked += 1,
            _ => {}
        }
    }
    (id, tally)
}

async fn run(store: Arc<dyn Store>, rounds: usize) {
    let e = env_with_store(store);
    for round in 0..rounds {
        let (id, tally) = race_round(&e, round).await;
        let rec = e.broker.get(id).await.unwrap();
        let audit = e.broker.audit_records().await.unwrap();
        let k = kinds(&audit, id);
        let count = |name: &str| k.iter().filter(|x| **x == name).count();
        match rec.state {
            State::Denied => {
                assert_eq!(
                    (tally.denied, tally.cancelled, count("issued")),
                    (1, 0, 0),
                    "{k:?}"
                );
                assert_eq!(count("denied"), 1);
            }
            State::Cancelled => {
                assert_eq!(
                    (tally.denied, tally.cancelled, count("issued")),
                    (0, 1, 0),
                    "{k:?}"
                );
                assert_eq!(count("cancelled"), 1);
            }
            State::Active | State::Revoked => {
                assert_eq!((tally.denied, tally.cancelled), (0, 0));
                assert_eq!(count("issued"), 1, "{k:?}");
                assert_eq!(
                    count("approved"),
                    2,
                    "quorum 2: exactly two approvals count"
                );
                assert_eq!(tally.approved, 2);
                assert_eq!(count("revoked"), usize::from(rec.state == State::Revoked));
            }
            // Pending is impossible: 16 approvers, deniers and cancellers all ran.
            other => panic!("round {round}: unexpected final state {other}: {k:?}"),
        }
        assert!(!rec
            .approvals
            .iter()
            .any(|a| a.approver.same_person(&rec.requester)));
        assert_eq!(k.last().copied(), Some(last_kind(rec.state)), "{k:?}");
    }
    assert!(e.broker.verify_audit().await.unwrap().is_ok());
    // Nothing minted twice, nothing left live for a revoked grant.
    let revoked_or_active = e
        .broker
        .list(&jit_core::ListFilter {
            limit: 10_000,
            ..Default::default()
        })
        .await
        .unwrap();
    let issued = revoked_or_active
        .iter()
        .filter(|r| matches!(r.state, State::Active | State::Revoked))
        .count();
    assert_eq!(e.provider.minted().len(), issued);
    let active = revoked_or_active
        .iter()
        .filter(|r| r.state == State::Active)
        .count();
    assert_eq!(e.provider.live().len(), active);
}

fn last_kind(s: State) -> &'static str {
    match s {
        State::Denied => "denied",
        State::Cancelled => "cancelled",
        State::Active => "issued",
        State::Revoked => "revoked",
        _ => "?",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_on_memory_store() {
    run(Arc::new(MemoryStore::new()), 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_on_sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = jit_core::store::SqliteStore::open(dir.path().join("race.db"))
        .await
        .unwrap();
    run(Arc::new(store), 200).await;
}
