//! 64 tasks racing approve/deny/cancel/revoke on one request, split across
//! one or more brokers (replicas) that share a store: every round ends in
//! exactly one consistent state, and the chain verifies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use jit_core::testing::TestProvider;
use jit_core::{Broker, Error, ListFilter, RequestId, State};

use super::{kinds, lead, req, user};

/// Racing tasks per round.
pub const TASKS: usize = 64;

#[derive(Debug, Default)]
struct Tally {
    approved: usize,
    denied: usize,
    cancelled: usize,
    revoked: usize,
}

async fn race_round(brokers: &[Broker], round: usize) -> (RequestId, Tally) {
    let alice = user("alice");
    let id = brokers[round % brokers.len()]
        .submit(&alice, req("prod-read", "1h"))
        .await
        .unwrap()
        .record
        .id;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        // Each run of four tasks (one of each kind) goes to the next replica,
        // so every kind of action races from every replica in every round.
        let b = brokers[(t / 4) % brokers.len()].clone();
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

/// Runs `rounds` rounds across `brokers` (sharing one store and `provider`)
/// and checks each round's outcome, the chain, and the provider's ledger.
pub async fn run(brokers: &[Broker], provider: &TestProvider, rounds: usize) {
    let reader = &brokers[0];
    for round in 0..rounds {
        let (id, tally) = race_round(brokers, round).await;
        let rec = reader.get(id).await.unwrap();
        let audit = reader.audit_records().await.unwrap();
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
            .any(|a| a.approver.may_be_same_person(&rec.requester)));
        assert_eq!(k.last().copied(), Some(last_kind(rec.state)), "{k:?}");
    }
    for b in brokers {
        assert!(b.verify_audit().await.unwrap().is_ok());
    }
    // Nothing minted twice, nothing left live for a revoked grant.
    let all = reader
        .list(&ListFilter {
            limit: 10_000,
            ..Default::default()
        })
        .await
        .unwrap();
    let issued = all
        .iter()
        .filter(|r| matches!(r.state, State::Active | State::Revoked))
        .count();
    assert_eq!(provider.minted().len(), issued);
    let active = all.iter().filter(|r| r.state == State::Active).count();
    assert_eq!(provider.live().len(), active);
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
