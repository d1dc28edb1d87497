//! Store conformance checks.
//!
//! Every [`Store`] implementation runs [`run_all`] (or the single checks) in
//! its own tests. The checks share one store and tolerate whatever other data
//! it already holds: each uses fresh ids, requester names and entitlement ids,
//! measures the audit chain relative to its length before the check, and the
//! due check places its records before anything already due. So a store can
//! be checked even when a fresh database per check is expensive (a shared
//! PostgreSQL), and running the suite twice on one store must also pass.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Timelike, Utc};

use crate::audit::{self, AuditEvent, AuditKind, AuditRecord, GENESIS_HASH};
use crate::error::Error;
use crate::store::{audit_all, Claim, HistoryQuery, ListFilter, RiskFacts, RiskFactsQuery, Store};
use crate::types::{
    AccessRequest, Approval, ApproverSet, Decision, Entitlement, Grant, GrantDuration, GrantId,
    IssuedGrant, Principal, RequestId, RequestRecord, Revocation, State, Verdict,
};

/// Runs every check below on one store, in order.
///
/// Takes an `Arc` because [`check_concurrent_updates`] shares the store
/// between spawned tasks; call it from a multi-threaded tokio runtime.
pub async fn run_all(store: Arc<dyn Store>) {
    check_insert_get_roundtrip(&*store).await;
    check_every_state_roundtrips(&*store).await;
    check_entitlement_copy_roundtrips(&*store).await;
    check_duplicate_insert(&*store).await;
    check_insert_requires_version_one(&*store).await;
    check_update_cas(&*store).await;
    check_concurrent_updates(store.clone()).await;
    check_audit_chain(&*store).await;
    check_audit_paging(&*store).await;
    check_list(&*store).await;
    check_list_by_entitlements(&*store).await;
    check_count_by_state(&*store).await;
    check_history(&*store).await;
    check_risk_facts(&*store).await;
    check_due(&*store).await;
    check_live_revocations(&*store).await;
    check_claims(&*store).await;
    check_leases(&*store).await;
    check_concurrent_lease_acquires(store.clone()).await;
}

/// A complete record for `requester` asking for `entitlement`, in `state`, at
/// `now`, version 1.
///
/// Every field is filled the way the broker would fill it for that state: a
/// `NeedsApproval` decision, an approval and a grant once past `Pending`,
/// what the provider issued once `Active`, a revocation while `Revoking`, a
/// pending deadline an hour after `now`, a 30 minute window from `now`.
///
/// # Panics
///
/// If `requester` is not a valid principal id.
pub fn sample_record(
    requester: &str,
    entitlement: &str,
    state: State,
    now: DateTime<Utc>,
) -> RequestRecord {
    let duration = GrantDuration::from_secs_i64(1800).expect("30 minutes is a valid duration");
    let requester = Principal::new(requester)
        .expect("valid requester id")
        .with_group("engineering")
        .with_attribute("department", "platform");
    let approved = !matches!(
        state,
        State::Pending | State::Denied | State::Cancelled | State::TimedOut
    );
    let issued = matches!(
        state,
        State::Active | State::Expired | State::Revoking | State::Revoked | State::RevocationFailed
    );
    let revoking = matches!(
        state,
        State::Revoking | State::Revoked | State::RevocationFailed
    );
    let grant_id = GrantId::new();
    RequestRecord {
        id: RequestId::new(),
        version: 1,
        state,
        requester,
        request: AccessRequest::new(entitlement, duration, "investigate INC-1234")
            .with_ticket("INC-1234")
            .with_context("source", "conformance")
            .with_context("client", "jit-core tests"),
        decision: Decision {
            verdict: Verdict::NeedsApproval {
                approvers: ApproverSet {
                    ids: ["carol".to_string()].into(),
                    groups: ["sre".to_string()].into(),
                },
                quorum: 1,
            },
            max_duration: GrantDuration::from_secs_i64(3600).expect("1 hour is a valid duration"),
            reasons: vec![format!("entitlement `{entitlement}` needs one approval")],
            risk: None,
            ticket: None,
            on_call: None,
        },
        // As in records written before the broker kept a copy: the broker
        // then reads the catalogue (tests of removed entitlements rely on it).
        entitlement: None,
        approvals: if approved {
            vec![Approval {
                approver: Principal::new("carol").expect("valid id").with_group("sre"),
                at: now,
                comment: "ok".into(),
            }]
        } else {
            Vec::new()
        },
        grant: approved.then(|| Grant {
            id: grant_id,
            starts_at: now,
            ends_at: now + TimeDelta::minutes(30),
            issued: issued.then(|| IssuedGrant {
                provider: "local".into(),
                external_id: format!("jit-{grant_id}"),
                expires_at: now + TimeDelta::minutes(30),
                details: serde_json::json!({ "token_id": grant_id.to_string() }),
            }),
        }),
        extends: None,
        revocation: revoking.then(|| Revocation {
            by: "carol".into(),
            reason: "task done".into(),
            expiry: false,
            attempts: u32::from(state == State::RevocationFailed) * 3,
            last_error: (state == State::RevocationFailed).then(|| "provider unavailable".into()),
            next_attempt_at: now + TimeDelta::minutes(1),
        }),
        pending_until: Some(now + TimeDelta::hours(1)),
        note: Some(format!("sample in state `{state}`")),
        created_at: now,
        updated_at: now,
    }
}

/// [`Store::history`]: a requester's requests, theirs for one
/// entitlement, and an entitlement's by everyone else, each newest first
/// by `created_at`, cut at the limit, with the fields the entry holds and
/// the state as updated; the exact subject id only; a query naming
/// neither requester nor entitlement is an error.
pub async fn check_history(store: &dyn Store) {
    let u = unique();
    let (alice, bob, ent_a, ent_b) = (
        format!("alice-h{u}"),
        format!("bob-h{u}"),
        format!("ent-ha{u}"),
        format!("ent-hb{u}"),
    );
    let t0 = Utc::now() - TimeDelta::days(3);
    let mut made = Vec::new();
    for (i, (who, ent)) in [
        (&alice, &ent_a),
        (&bob, &ent_a),
        (&alice, &ent_b),
        (&alice, &ent_a),
        (&bob, &ent_a),
        (&alice, &ent_a),
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = sample_record(who, ent, State::Pending, t0 + TimeDelta::hours(i as i64));
        r.request.duration = GrantDuration::from_secs_i64(600 * (i as i64 + 1)).unwrap();
        r.request.context.insert("ip".into(), format!("10.0.0.{i}"));
        if who == &bob {
            r.requester.groups = ["data".to_string()].into();
        }
        store
            .insert(&r, &[event(&r, AuditKind::Requested, who)])
            .await
            .unwrap();
        made.push(r);
    }
    let ids = |q: &HistoryQuery| {
        let q = q.clone();
        async move {
            store
                .history(&q)
                .await
                .unwrap()
                .iter()
                .map(|e| e.id)
                .collect::<Vec<_>>()
        }
    };
    let id = |i: usize| made[i].id;

    assert_eq!(
        ids(&HistoryQuery::of_requester(&alice, 0)).await,
        [id(5), id(3), id(2), id(0)],
        "a requester's history, newest first"
    );
    assert_eq!(
        ids(&HistoryQuery::of_requester(&alice, 2)).await,
        [id(5), id(3)],
        "cut at the limit"
    );
    assert_eq!(
        ids(&HistoryQuery::of_requester(&alice, 0).for_entitlement(&ent_a)).await,
        [id(5), id(3), id(0)],
        "one requester's history of one entitlement"
    );
    assert_eq!(
        ids(&HistoryQuery::of_entitlement(&ent_a, 0).excluding(&alice)).await,
        [id(4), id(1)],
        "an entitlement's history by others"
    );
    assert_eq!(
        ids(&HistoryQuery::of_entitlement(&ent_a, 0)).await.len(),
        5,
        "an entitlement's history by everyone"
    );
    assert!(
        ids(&HistoryQuery::of_requester(&alice.to_uppercase(), 0))
            .await
            .is_empty(),
        "the exact subject id only"
    );

    let all = store
        .history(&HistoryQuery::of_requester(&bob, 0))
        .await
        .unwrap();
    let newest = &all[0];
    let src = &made[4];
    assert_eq!(newest.requester, bob);
    assert_eq!(newest.entitlement, ent_a);
    assert_eq!(newest.groups, src.requester.groups);
    assert_eq!(newest.duration, src.request.duration);
    assert_eq!(newest.context, src.request.context);
    assert_eq!(newest.created_at, src.created_at);
    assert_eq!(newest.state, State::Pending);

    // The state is the current one.
    let mut denied = src.clone();
    denied.version = 2;
    denied.state = State::Denied;
    store
        .update(1, &denied, &[event(&denied, AuditKind::Denied, "carol")])
        .await
        .unwrap();
    let again = store
        .history(&HistoryQuery::of_requester(&bob, 1))
        .await
        .unwrap();
    assert_eq!(again[0].state, State::Denied);

    let err = store.history(&HistoryQuery::default()).await.unwrap_err();
    assert!(matches!(err, Error::Store(_)), "{err:?}");
}

/// [`Store::risk_facts`]: the facts of a constructed history, over every
/// request the store holds (no window): the hours in UTC, the burst
/// window's start inclusive, sources matched by key and value (a value
/// with a quote), peers by the groups they had when they asked and never
/// the requester, the exact subject id only; and always the same as
/// [`RiskFacts::from_history`] of the store's own [`Store::history`] (what
/// the facts are defined by). A query without a requester or an
/// entitlement, or about a source key the stores do not keep, is an error.
pub async fn check_risk_facts(store: &dyn Store) {
    let u = unique();
    let (amy, ben, cal) = (
        format!("amy-r{u}"),
        format!("ben-r{u}"),
        format!("cal-r{u}"),
    );
    let amy_upper = amy.to_uppercase();
    let (x, y) = (format!("ent-rx{u}"), format!("ent-ry{u}"));
    let (odd_key, odd_value) = ("user_agent", "jit \"cli\" 1.0; ünïcode");
    let day = DateTime::parse_from_rfc3339("2026-01-05T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let at = |d: i64, h: i64, m: i64| {
        day + TimeDelta::days(d) + TimeDelta::hours(h) + TimeDelta::minutes(m)
    };
    /// (requester, groups, entitlement, created_at, minutes, context, state)
    type Past<'a> = (
        &'a str,
        &'a [&'a str],
        &'a str,
        DateTime<Utc>,
        i64,
        Vec<(&'a str, &'a str)>,
        State,
    );
    let history: Vec<Past> = vec![
        (
            &amy,
            &["ops"],
            &x,
            at(0, 9, 0),
            30,
            vec![("ip", "10.0.0.1"), ("client", "cli")],
            State::Expired,
        ),
        (
            &ben,
            &["ops", "db"],
            &x,
            at(0, 9, 30),
            60,
            vec![("ip", "10.0.0.2")],
            State::Revoked,
        ),
        (
            &amy,
            &["ops"],
            &y,
            at(1, 10, 0),
            10,
            vec![("ip", "10.0.0.1"), (odd_key, odd_value)],
            State::Denied,
        ),
        (
            &amy,
            &["ops"],
            &x,
            at(1, 23, 59),
            90,
            vec![("ip", "10.0.0.3")],
            State::Expired,
        ),
        (&cal, &["fin"], &x, at(2, 9, 0), 20, vec![], State::Active),
        (
            &amy,
            &["ops"],
            &x,
            at(2, 9, 10),
            120,
            vec![],
            State::Pending,
        ),
        (
            &amy,
            &["ops"],
            &x,
            at(2, 9, 20),
            40,
            vec![("ip", "10.0.0.9")],
            State::Pending,
        ),
        (
            &amy_upper,
            &["zzz"],
            &x,
            at(2, 9, 25),
            30,
            vec![("ip", "10.0.0.2")],
            State::Pending,
        ),
    ];
    for (who, groups, ent, when, minutes, context, state) in &history {
        let mut r = sample_record(who, ent, *state, *when);
        r.requester.groups = groups.iter().map(|g| g.to_string()).collect();
        r.request.duration = GrantDuration::from_secs_i64(minutes * 60).unwrap();
        r.request.context = context
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        store
            .insert(&r, &[event(&r, AuditKind::Requested, who)])
            .await
            .unwrap();
    }
    let source = |k: &str, v: &str| (k.to_string(), v.to_string());
    let groups = |gs: &[&str]| gs.iter().map(|g| g.to_string()).collect();
    let mut hours = [0u64; 24];
    (hours[9], hours[10], hours[23]) = (3, 1, 1);
    let mut nine = [0u64; 24];
    nine[9] = 1;
    let minutes = |m: u64| Some(std::time::Duration::from_secs(m * 60));

    let cases: Vec<(&str, RiskFactsQuery, RiskFacts)> = vec![
        (
            "every fact",
            RiskFactsQuery {
                groups: groups(&["ops"]),
                sources: vec![
                    source("ip", "10.0.0.1"),
                    source("client", "cli"),
                    source(odd_key, odd_value),
                    source("ip", "10.0.0.2"),
                    source("client", "10.0.0.1"),
                ],
                since: at(2, 9, 10),
                ..RiskFactsQuery::new(&amy, &x)
            },
            RiskFacts {
                requests: 5,
                hours,
                since: 2,
                sources_seen: vec![true, true, true, false, false],
                entitlement_requests: 4,
                median_duration: minutes(40),
                peer_used: true,
            },
        ),
        (
            "a group only the requester was in",
            RiskFactsQuery {
                groups: groups(&["db"]),
                sources: vec![source("ip", "10.0.0.2"), source("ip", "10.0.0.1")],
                since: at(0, 9, 30),
                ..RiskFactsQuery::new(&ben, &x)
            },
            RiskFacts {
                requests: 1,
                hours: nine,
                since: 1,
                sources_seen: vec![true, false],
                entitlement_requests: 1,
                median_duration: minutes(60),
                peer_used: false,
            },
        ),
        (
            "no groups, no peer",
            RiskFactsQuery {
                sources: vec![source(odd_key, odd_value)],
                ..RiskFactsQuery::new(&amy, &y)
            },
            RiskFacts {
                requests: 5,
                hours,
                since: 0,
                sources_seen: vec![true],
                entitlement_requests: 1,
                median_duration: minutes(10),
                peer_used: false,
            },
        ),
        (
            "the exact subject id",
            RiskFactsQuery {
                groups: groups(&["ops"]),
                sources: vec![source("ip", "10.0.0.2"), source("ip", "10.0.0.1")],
                since: at(2, 9, 26),
                ..RiskFactsQuery::new(&amy_upper, &x)
            },
            RiskFacts {
                requests: 1,
                hours: nine,
                since: 0,
                sources_seen: vec![true, false],
                entitlement_requests: 1,
                median_duration: minutes(30),
                peer_used: true,
            },
        ),
        (
            "no history",
            RiskFactsQuery {
                groups: groups(&["fin", "other"]),
                sources: vec![source("ip", "10.0.0.1")],
                since: day,
                ..RiskFactsQuery::new(&format!("nobody-r{u}"), &x)
            },
            RiskFacts {
                sources_seen: vec![false],
                peer_used: true,
                ..RiskFacts::default()
            },
        ),
    ];
    for (what, query, expected) in &cases {
        let got = store.risk_facts(query).await.unwrap();
        assert_eq!(&got, expected, "{what}");
        assert_eq!(
            got,
            facts_of_history(store, query).await,
            "{what}: the facts of the store's own history"
        );
    }

    let odd = RiskFactsQuery {
        sources: vec![source("trace_id", "abc")],
        ..RiskFactsQuery::new(&amy, &x)
    };
    for bad in [
        RiskFactsQuery::new("", &x),
        RiskFactsQuery::new(&amy, ""),
        odd,
    ] {
        let err = store.risk_facts(&bad).await.unwrap_err();
        assert!(matches!(err, Error::Store(_)), "{bad:?}: {err:?}");
    }
}

/// [`RiskFacts::from_history`] of `store`'s own history: what its
/// [`Store::risk_facts`] must answer.
async fn facts_of_history(store: &dyn Store, query: &RiskFactsQuery) -> RiskFacts {
    let (mine, peers) = query.history_queries();
    let mine = store.history(&mine).await.unwrap();
    let peers = match peers {
        Some(q) => store.history(&q).await.unwrap(),
        None => Vec::new(),
    };
    RiskFacts::from_history(query, &mine, &peers)
}

/// Risk review's aggregates stay exact: under concurrent inserts of one
/// requester (each counted once), after writes that fail (a duplicate
/// insert, a refused prune that had already deleted part of its batch:
/// nothing of them counts), after updates (which change no fact), and
/// after a prune, which takes its requests out (a requester whose every
/// request for an entitlement was pruned asks for it for the first time
/// again, a source or a peer only pruned requests had is gone). After
/// every step the facts are those of the store's own history.
///
/// It prunes the audit chain up to its own last record, so give it a store
/// of its own (it is not part of [`run_all`]).
pub async fn check_risk_aggregates(store: Arc<dyn Store>) {
    let u = unique();
    let (ann, bo, ent, other) = (
        format!("ann-a{u}"),
        format!("bo-a{u}"),
        format!("ent-a{u}"),
        format!("ent-b{u}"),
    );
    let t0 = DateTime::parse_from_rfc3339("2026-02-02T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let query = |who: &str, e: &str| RiskFactsQuery {
        groups: ["team".to_string()].into(),
        sources: vec![
            ("ip".to_string(), "10.1.0.1".to_string()),
            ("ip".to_string(), "10.1.0.2".to_string()),
            ("user_agent".to_string(), "old-cli".to_string()),
        ],
        since: t0 + TimeDelta::hours(12),
        ..RiskFactsQuery::new(who, e)
    };
    let record = |who: &str, e: &str, i: i64, state: State| {
        let mut r = sample_record(who, e, state, t0 + TimeDelta::minutes(37 * i));
        r.requester.groups = ["team".to_string()].into();
        r.request.duration = GrantDuration::from_secs_i64(60 * (1 + i % 5)).unwrap();
        r.request
            .context
            .insert("ip".into(), format!("10.1.0.{}", 1 + i % 2));
        r
    };
    let agree = |step: &'static str| {
        let store = store.clone();
        let queries = [
            query(&ann, &ent),
            query(&ann, &other),
            query(&bo, &ent),
            query(&bo, &other),
        ];
        async move {
            let mut out = Vec::new();
            for q in &queries {
                let got = store.risk_facts(q).await.unwrap();
                assert_eq!(got, facts_of_history(&*store, q).await, "{step}: {q:?}");
                out.push(got);
            }
            out
        }
    };

    // Eight writers at once, four requests each, all by ann for `ent`
    // (one hour row, one duration row per length, one source row per IP,
    // one peer row: every insert of one requester meets the others on
    // the same rows); and bo once, in the same group.
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            let rs: Vec<RequestRecord> = (0..4)
                .map(|k| record(&ann, &ent, t * 4 + k, State::Expired))
                .collect();
            tokio::spawn(async move {
                for r in &rs {
                    store
                        .insert(r, &[event(r, AuditKind::Requested, "t")])
                        .await
                        .unwrap();
                }
                rs
            })
        })
        .collect();
    let mut ann_made = Vec::new();
    for t in tasks {
        ann_made.extend(t.await.unwrap());
    }
    let with_ua = {
        let mut r = record(&bo, &ent, 1, State::Expired);
        r.request
            .context
            .insert("user_agent".into(), "old-cli".into());
        r
    };
    store
        .insert(&with_ua, &[event(&with_ua, AuditKind::Requested, "t")])
        .await
        .unwrap();
    let facts = agree("concurrent inserts").await;
    assert_eq!(facts[0].requests, 32, "{:?}", facts[0]);
    assert_eq!(facts[0].entitlement_requests, 32, "{:?}", facts[0]);
    assert_eq!(facts[0].hours.iter().sum::<u64>(), 32, "{:?}", facts[0]);
    assert_eq!(facts[0].sources_seen, [true, true, false]);
    assert!(facts[0].peer_used, "bo is in the team: {:?}", facts[0]);
    assert_eq!(facts[2].sources_seen, [false, true, true]);
    let before = facts;

    // A duplicate insert fails and counts nothing; an update changes no fact.
    assert!(store.insert(&ann_made[0], &[]).await.is_err());
    let mut touched = ann_made[1].clone();
    touched.version = 2;
    touched.state = State::Revoked;
    touched.note = Some("touched".into());
    store
        .update(1, &touched, &[event(&touched, AuditKind::Revoked, "t")])
        .await
        .unwrap();
    ann_made[1] = touched;
    assert_eq!(agree("a duplicate insert and an update").await, before);

    // One request of ann's for `other`, still pending: it stays.
    let live = record(&ann, &other, 40, State::Pending);
    store
        .insert(&live, &[event(&live, AuditKind::Requested, "t")])
        .await
        .unwrap();
    let before = agree("a live request").await;
    assert_eq!(before[1].entitlement_requests, 1);

    // A prune refused after part of its batch rolls back, counts included.
    let chain = audit_all(&*store).await.unwrap();
    let head = chain.last().unwrap();
    let after = store.audit_anchor().await.unwrap().map_or(0, |a| a.seq);
    let anchor = audit::AuditAnchor::new(head.seq, &head.hash, Utc::now(), None);
    // Every request of ann's for `ent` but the first goes, and bo's one.
    let mut going: Vec<(RequestId, u64)> = ann_made[1..]
        .iter()
        .chain([&with_ua])
        .map(|r| (r.id, r.version))
        .collect();
    going.sort_unstable_by_key(|(id, _)| id.to_string());
    let mut refused = going.clone();
    refused.push((live.id, live.version));
    let err = store
        .prune(&crate::store::Prune {
            after,
            anchor: anchor.clone(),
            records: refused,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    assert_eq!(agree("a refused prune").await, before);

    store
        .prune(&crate::store::Prune {
            after,
            anchor,
            records: going,
        })
        .await
        .unwrap();
    let facts = agree("a prune").await;
    // ann keeps the first request for `ent` and the live one for `other`.
    assert_eq!(facts[0].requests, 2, "{:?}", facts[0]);
    assert_eq!(facts[0].entitlement_requests, 1, "{:?}", facts[0]);
    assert_eq!(
        facts[0].median_duration,
        Some(std::time::Duration::from_secs(60))
    );
    // Only pruned requests came from 10.1.0.2; only bo's had a peer's
    // use of `ent` and the old user agent, and bo has nothing left.
    assert_eq!(facts[0].sources_seen, [true, false, false]);
    assert!(!facts[0].peer_used, "{:?}", facts[0]);
    assert_eq!(
        facts[2],
        RiskFacts {
            sources_seen: vec![false; 3],
            peer_used: true,
            ..RiskFacts::default()
        }
    );
    assert!(!facts[3].asked_before());
}

/// An event about `r` in its current state.
fn event(r: &RequestRecord, kind: AuditKind, actor: &str) -> AuditEvent {
    AuditEvent::new(r.updated_at, kind, r.id, actor, r.state).grant(r.grant_id())
}

/// A short unique suffix, so checks never see each other's records.
fn unique() -> String {
    RequestId::new().0.simple().to_string()[..12].to_string()
}

async fn chain_len(store: &dyn Store) -> u64 {
    audit_all(store).await.unwrap().len() as u64
}

async fn assert_chain_verifies(store: &dyn Store) -> Vec<AuditRecord> {
    let all = audit_all(store).await.unwrap();
    let summary = audit::verify(&all).unwrap_or_else(|b| panic!("chain does not verify: {b}"));
    assert_eq!(summary.records, all.len() as u64);
    all
}

/// `insert` then `get` returns an equal record (nanosecond timestamps,
/// unicode, nested JSON with awkward floats included), and the audit records
/// `insert` returns are exactly what `audit` reads back; `get` of an unknown
/// id is `None`.
pub async fn check_insert_get_roundtrip(store: &dyn Store) {
    let now = Utc::now().with_nanosecond(123_456_789).unwrap();
    let mut r = sample_record(
        &format!("Dana-{}", unique()),
        "db-admin",
        State::Active,
        now,
    );
    r.extends = Some(RequestId::new());
    r.request.justification = "needs access — ünïcode ✓ \"quoted\" \\ back".into();
    r.request.start_at = Some(now + TimeDelta::nanoseconds(1));
    r.requester.display_name = Some("Dana Ødegård".into());
    r.requester = r.requester.clone().with_alias("dana@example.com");
    if let Some(issued) = r.grant.as_mut().and_then(|g| g.issued.as_mut()) {
        issued.details = serde_json::json!({
            "role": "arn:aws:iam::123456789012:role/admin",
            "risk": 0.30000000000000004,
            "big": 6.162599865641032e196,
            "tiny": -1.9477003958951618e-169,
            "nested": { "list": [1, -2, 3.5, null, true], "u64": u64::MAX },
        });
    }
    let events = [
        event(&r, AuditKind::Requested, r.requester.id.as_str()),
        event(&r, AuditKind::Decided, "policy").details(serde_json::json!({
            "score": 0.1 + 0.2,
            "edge": 1.4901437678453862e129,
            "reasons": ["ünïcode ✓"],
        })),
    ];
    let before = chain_len(store).await;
    let written = store.insert(&r, &events).await.unwrap();
    assert_eq!(written.len(), events.len());
    for (w, e) in written.iter().zip(&events) {
        assert_eq!(&w.event, e, "the store must chain the events unchanged");
    }
    assert_eq!(store.get(r.id).await.unwrap().as_ref(), Some(&r));
    assert_eq!(store.get(RequestId::new()).await.unwrap(), None);
    let read = store.audit(before + 1, 10).await.unwrap();
    assert_eq!(
        read, written,
        "audit records read back differ from those written"
    );
    assert_chain_verifies(store).await;
}

/// A sample record in each state reads back equal.
pub async fn check_every_state_roundtrips(store: &dyn Store) {
    let who = format!("erin-{}", unique());
    for state in State::ALL {
        let r = sample_record(&who, "db-admin", state, Utc::now());
        store.insert(&r, &[]).await.unwrap();
        assert_eq!(store.get(r.id).await.unwrap(), Some(r), "state {state}");
    }
}

/// The entitlement kept with a record (its target's JSON included) reads
/// back equal after `insert` and after an `update`; a record without one
/// (as older brokers wrote them) reads back without one.
pub async fn check_entitlement_copy_roundtrips(store: &dyn Store) {
    let mut r = sample_record(
        &format!("kim-{}", unique()),
        "db-admin",
        State::Active,
        Utc::now(),
    );
    r.entitlement = Some(Entitlement {
        id: "db-admin".into(),
        description: "Database admin — ünïcode".into(),
        provider: "local".into(),
        target: serde_json::json!({
            "role": "arn:aws:iam::123456789012:role/db-admin",
            "session_policy": { "Version": "2012-10-17", "Statement": [] },
        }),
        max_duration: GrantDuration::from_secs_i64(7200).expect("2 hours is a valid duration"),
    });
    store.insert(&r, &[]).await.unwrap();
    assert_eq!(store.get(r.id).await.unwrap().as_ref(), Some(&r));
    let mut next = r.clone();
    next.version = 2;
    next.state = State::Revoking;
    store.update(1, &next, &[]).await.unwrap();
    let read = store.get(r.id).await.unwrap().unwrap();
    assert_eq!(
        read.entitlement, r.entitlement,
        "the copy must survive an update"
    );

    let old = sample_record(
        &format!("kim-{}", unique()),
        "db-admin",
        State::Active,
        Utc::now(),
    );
    assert_eq!(old.entitlement, None);
    store.insert(&old, &[]).await.unwrap();
    assert_eq!(store.get(old.id).await.unwrap().unwrap().entitlement, None);
}

/// Inserting an id twice is `Conflict { expected: 0 }`, keeps the first
/// record and appends no audit event.
pub async fn check_duplicate_insert(store: &dyn Store) {
    let r = sample_record(
        &format!("frank-{}", unique()),
        "db-admin",
        State::Pending,
        Utc::now(),
    );
    store
        .insert(&r, &[event(&r, AuditKind::Requested, "frank")])
        .await
        .unwrap();
    let before = chain_len(store).await;
    let mut again = r.clone();
    again.note = Some("second insert".into());
    let err = store
        .insert(&again, &[event(&again, AuditKind::Requested, "frank")])
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Conflict { request, expected: 0 } if request == r.id),
        "duplicate insert: {err:?}"
    );
    assert_eq!(store.get(r.id).await.unwrap(), Some(r));
    assert_eq!(
        chain_len(store).await,
        before,
        "a failed insert appended audit events"
    );
}

/// `insert` of a record whose version is not 1 fails, stores nothing and
/// appends nothing.
pub async fn check_insert_requires_version_one(store: &dyn Store) {
    let mut r = sample_record(
        &format!("gina-{}", unique()),
        "db-admin",
        State::Pending,
        Utc::now(),
    );
    let before = chain_len(store).await;
    for version in [0, 2] {
        r.version = version;
        let result = store
            .insert(&r, &[event(&r, AuditKind::Requested, "gina")])
            .await;
        assert!(result.is_err(), "insert with version {version} succeeded");
        assert_eq!(store.get(r.id).await.unwrap(), None);
    }
    assert_eq!(
        chain_len(store).await,
        before,
        "a failed insert appended audit events"
    );
}

/// Compare-and-set: the right version succeeds and the new version is
/// stored; a stale version is `Conflict`; a new version other than
/// expected + 1 is an error; an unknown id is `NotFound`. Every failure
/// leaves the record and the audit chain untouched.
pub async fn check_update_cas(store: &dyn Store) {
    let now = Utc::now();
    let v1 = sample_record(
        &format!("hank-{}", unique()),
        "db-admin",
        State::Pending,
        now,
    );
    store
        .insert(&v1, &[event(&v1, AuditKind::Requested, "hank")])
        .await
        .unwrap();

    let mut v2 = sample_record(
        "hank",
        "db-admin",
        State::Approved,
        now + TimeDelta::seconds(1),
    );
    v2.id = v1.id;
    v2.requester = v1.requester.clone();
    v2.created_at = v1.created_at;
    v2.version = 2;
    let written = store
        .update(1, &v2, &[event(&v2, AuditKind::Approved, "carol")])
        .await
        .unwrap();
    assert_eq!(written.len(), 1);
    assert_eq!(store.get(v1.id).await.unwrap().as_ref(), Some(&v2));

    let before = chain_len(store).await;
    let mut stale = v2.clone();
    stale.state = State::Cancelled;
    stale.note = Some("stale".into());
    let err = store
        .update(1, &stale, &[event(&stale, AuditKind::Cancelled, "hank")])
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Conflict { request, expected: 1 } if request == v1.id),
        "stale update: {err:?}"
    );

    for (expected, version) in [(2, 4), (2, 2), (2, 1)] {
        let mut wrong = v2.clone();
        wrong.version = version;
        wrong.state = State::Cancelled;
        let result = store
            .update(
                expected,
                &wrong,
                &[event(&wrong, AuditKind::Cancelled, "hank")],
            )
            .await;
        assert!(result.is_err(), "update {expected} -> {version} succeeded");
    }

    let mut unknown = v2.clone();
    unknown.id = RequestId::new();
    let err = store
        .update(
            1,
            &unknown,
            &[event(&unknown, AuditKind::Approved, "carol")],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { kind: "request", id } if *id == unknown.id.to_string()),
        "update of an unknown id: {err:?}"
    );
    assert_eq!(store.get(unknown.id).await.unwrap(), None);

    assert_eq!(
        store.get(v1.id).await.unwrap().as_ref(),
        Some(&v2),
        "a failed update changed the record"
    );
    assert_eq!(
        chain_len(store).await,
        before,
        "a failed update appended audit events"
    );

    // A request's identity never changes: each of an update that moves
    // the requester, the entitlement or the creation time is refused and
    // writes nothing (the stores index by them once, at insert).
    type Move = (&'static str, fn(&mut RequestRecord));
    let moves: [Move; 3] = [
        ("requester", |r| {
            r.requester = Principal::new(&format!("{}-other", r.requester.id)).unwrap()
        }),
        ("entitlement", |r| {
            r.request.entitlement = "other-entitlement".into()
        }),
        ("creation time", |r| r.created_at += TimeDelta::seconds(1)),
    ];
    for (what, change) in moves {
        let mut moved = v2.clone();
        moved.version = 3;
        change(&mut moved);
        let err = store
            .update(2, &moved, &[event(&moved, AuditKind::Revoked, "carol")])
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Store(m) if m.contains("may not change")),
            "an update changing the {what}: {err:?}"
        );
    }
    assert_eq!(
        store.get(v1.id).await.unwrap().as_ref(),
        Some(&v2),
        "a refused update changed the record"
    );
    assert_eq!(
        chain_len(store).await,
        before,
        "a refused update appended audit events"
    );

    // An update without events is allowed and appends nothing.
    let mut v3 = v2.clone();
    v3.version = 3;
    v3.note = Some("quiet".into());
    assert!(store.update(2, &v3, &[]).await.unwrap().is_empty());
    assert_eq!(store.get(v1.id).await.unwrap(), Some(v3));
    assert_eq!(chain_len(store).await, before);
    assert_chain_verifies(store).await;
}

/// 32 tasks race to update one record from the same version: exactly one
/// wins, all others get `Conflict`, the stored record is the winner's and the
/// chain grew by exactly the winner's one event and still verifies.
pub async fn check_concurrent_updates(store: Arc<dyn Store>) {
    const TASKS: usize = 32;
    let v1 = sample_record(
        &format!("ivan-{}", unique()),
        "db-admin",
        State::Pending,
        Utc::now(),
    );
    store
        .insert(&v1, &[event(&v1, AuditKind::Requested, "ivan")])
        .await
        .unwrap();
    let before = chain_len(&*store).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let store = store.clone();
            let barrier = barrier.clone();
            let mut next = v1.clone();
            next.version = 2;
            next.state = if i % 2 == 0 {
                State::Approved
            } else {
                State::Cancelled
            };
            next.note = Some(format!("task {i}"));
            tokio::spawn(async move {
                let ev = event(&next, AuditKind::Approved, &format!("approver-{i}"));
                barrier.wait().await;
                (next.clone(), store.update(1, &next, &[ev]).await)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        let (next, result) = t.await.unwrap();
        match result {
            Ok(written) => winners.push((next, written)),
            Err(Error::Conflict {
                request,
                expected: 1,
            }) if request == v1.id => {}
            Err(e) => panic!("a losing update must be a conflict, got {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one update must win");
    let (winner, written) = winners.remove(0);
    assert_eq!(store.get(v1.id).await.unwrap(), Some(winner));
    let all = assert_chain_verifies(&*store).await;
    assert_eq!(all.len() as u64, before + 1, "losers appended audit events");
    assert_eq!(written.len(), 1);
    assert_eq!(all.last(), written.first());
}

/// Events appended by `insert` and `update` get consecutive seqs, link to the
/// previous head, equal what `audit` reads back, and the whole chain verifies.
pub async fn check_audit_chain(store: &dyn Store) {
    let all = audit_all(store).await.unwrap();
    let head = all
        .last()
        .map_or(GENESIS_HASH.to_string(), |r| r.hash.clone());
    let before = all.len() as u64;

    let r = sample_record(
        &format!("judy-{}", unique()),
        "db-admin",
        State::Pending,
        Utc::now(),
    );
    let mut written = store
        .insert(
            &r,
            &[
                event(&r, AuditKind::Requested, "judy"),
                event(&r, AuditKind::Decided, "policy").details(serde_json::json!({"quorum": 1})),
            ],
        )
        .await
        .unwrap();
    let mut next = r.clone();
    next.version = 2;
    next.state = State::Denied;
    written.extend(
        store
            .update(1, &next, &[event(&next, AuditKind::Denied, "carol")])
            .await
            .unwrap(),
    );

    assert_eq!(written.len(), 3);
    let mut prev = head;
    for (i, w) in written.iter().enumerate() {
        assert_eq!(w.seq, before + 1 + i as u64, "seqs must be consecutive");
        assert_eq!(w.prev_hash, prev, "record {} does not link", w.seq);
        assert_eq!(w.hash, w.compute_hash());
        prev = w.hash.clone();
    }
    assert_eq!(written[2].event.kind, AuditKind::Denied);
    assert_eq!(store.audit(before + 1, 100).await.unwrap(), written);
    let all = assert_chain_verifies(store).await;
    assert_eq!(all.len() as u64, before + 3);
}

/// Paging: 1,200 events appended in batches of 100 read back through
/// `audit(from, limit)` pages and through [`audit_all`] (which pages by
/// 1,000), in order and verifying; limits and out-of-range starts behave.
pub async fn check_audit_paging(store: &dyn Store) {
    const BATCHES: u64 = 12;
    const PER_BATCH: usize = 100;
    let before = chain_len(store).await;
    let mut r = sample_record(
        &format!("kim-{}", unique()),
        "db-admin",
        State::Active,
        Utc::now(),
    );
    store.insert(&r, &[]).await.unwrap();
    let mut written = Vec::new();
    for b in 0..BATCHES {
        let mut next = r.clone();
        next.version = r.version + 1;
        next.note = Some(format!("batch {b}"));
        let events: Vec<_> = (0..PER_BATCH)
            .map(|i| {
                event(&next, AuditKind::Reconciled, "reaper")
                    .details(serde_json::json!({ "batch": b, "i": i }))
            })
            .collect();
        written.extend(store.update(r.version, &next, &events).await.unwrap());
        r = next;
    }
    let total = BATCHES * PER_BATCH as u64;
    assert_eq!(written.len() as u64, total);

    let all = assert_chain_verifies(store).await;
    assert_eq!(all.len() as u64, before + total);
    assert_eq!(&all[before as usize..], &written[..]);

    let first = before + 1;
    let page1 = store.audit(first, 1000).await.unwrap();
    let page2 = store.audit(first + 1000, 1000).await.unwrap();
    assert_eq!(page1.len(), 1000);
    assert_eq!(page2.len(), 200);
    assert_eq!(page1[..], written[..1000]);
    assert_eq!(page2[..], written[1000..]);
    let mid = store.audit(first + 5, 3).await.unwrap();
    assert_eq!(
        mid.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![first + 5, first + 6, first + 7]
    );
    assert!(store.audit(first, 0).await.unwrap().is_empty());
    assert!(store
        .audit(before + total + 1, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.audit(0, 1).await.unwrap().first().map(|r| r.seq),
        Some(1)
    );
}

/// `list`: newest first; filters by the exact requester id (`ALICE`,
/// full-width `ＡＬＩＣＥ` and `alice` are three subjects, each seeing only
/// its own), by states, by entitlement; honours the limit (100 when zero);
/// and sees the state a record was updated to.
pub async fn check_list(store: &dyn Store) {
    let u = unique();
    let alice = format!("alice-{u}");
    let bob = format!("bob-{u}");
    let (ent_a, ent_b) = (format!("ent-a-{u}"), format!("ent-b-{u}"));
    let base = Utc::now();
    let plan = [
        (&alice, &ent_a, State::Pending),
        (&alice, &ent_b, State::Active),
        (&bob, &ent_b, State::Pending),
        (&alice, &ent_a, State::Denied),
        (&alice, &ent_a, State::Pending),
        (&bob, &ent_a, State::Expired),
        (&alice, &ent_b, State::Expired),
    ];
    let mut records = Vec::new();
    for (i, (who, ent, state)) in plan.iter().enumerate() {
        let r = sample_record(who, ent, *state, base + TimeDelta::seconds(i as i64));
        store.insert(&r, &[]).await.unwrap();
        records.push(r);
    }
    // Expected results: matching records, newest first.
    let expect = |f: &dyn Fn(&RequestRecord) -> bool| -> Vec<RequestRecord> {
        records.iter().rev().filter(|r| f(r)).cloned().collect()
    };
    let list = |filter: ListFilter| async move { store.list(&filter).await.unwrap() };
    let by = |who: &str| ListFilter {
        requester: Some(who.to_string()),
        ..ListFilter::default()
    };

    let alices = expect(&|r| r.requester.id.as_str() == alice);
    assert_eq!(alices.len(), 5);
    assert_eq!(list(by(&alice)).await, alices);
    assert!(
        list(by(&alice.to_uppercase())).await.is_empty(),
        "a case variant of the requester is another subject"
    );
    assert!(
        list(by(&format!("ＡＬＩＣＥ-{u}"))).await.is_empty(),
        "a compatibility variant of the requester is another subject"
    );
    // A subject that differs only by case has its own requests, apart from alice's.
    let upper = sample_record(
        &alice.to_uppercase(),
        &ent_a,
        State::Pending,
        base + TimeDelta::seconds(100),
    );
    store.insert(&upper, &[]).await.unwrap();
    assert_eq!(list(by(&alice.to_uppercase())).await, vec![upper]);
    assert_eq!(list(by(&alice)).await, alices);
    assert!(list(by(&format!("carol-{u}"))).await.is_empty());

    let pending = ListFilter {
        states: vec![State::Pending],
        ..by(&alice)
    };
    assert_eq!(
        list(pending).await,
        expect(&|r| r.requester.id.as_str() == alice && r.state == State::Pending)
    );
    let live = ListFilter {
        states: vec![State::Pending, State::Active],
        ..by(&alice)
    };
    assert_eq!(list(live).await.len(), 3);

    let ent = ListFilter {
        entitlement: Some(ent_b.clone()),
        ..ListFilter::default()
    };
    assert_eq!(list(ent).await, expect(&|r| r.request.entitlement == ent_b));
    let ent_and_state = ListFilter {
        entitlement: Some(ent_a.clone()),
        states: vec![State::Expired],
        ..ListFilter::default()
    };
    assert_eq!(
        list(ent_and_state).await,
        expect(&|r| r.request.entitlement == ent_a && r.state == State::Expired)
    );

    let limited = ListFilter {
        limit: 2,
        ..by(&alice)
    };
    assert_eq!(list(limited).await, alices[..2]);
    let zero = ListFilter {
        limit: 0,
        ..by(&alice)
    };
    assert_eq!(
        list(zero).await.len(),
        5,
        "limit 0 means the default of 100"
    );

    // The stored state follows updates.
    let mut cancelled = records[0].clone();
    cancelled.version = 2;
    cancelled.state = State::Cancelled;
    store.update(1, &cancelled, &[]).await.unwrap();
    let now_cancelled = ListFilter {
        states: vec![State::Cancelled],
        ..by(&alice)
    };
    assert_eq!(list(now_cancelled).await, vec![cancelled]);
    let still_pending = ListFilter {
        states: vec![State::Pending],
        ..by(&alice)
    };
    assert_eq!(list(still_pending).await, vec![records[4].clone()]);
}

/// `list` with a set of entitlements: only requests for one of them, newest
/// first, combined with the other filters; and the limit applies after the
/// set, so many requests for another entitlement never push these out (the
/// approver queue's flood).
pub async fn check_list_by_entitlements(store: &dyn Store) {
    let u = unique();
    let (mine, other, third) = (
        format!("queue-a-{u}"),
        format!("queue-flood-{u}"),
        format!("queue-c-{u}"),
    );
    let base = Utc::now();
    let wanted = sample_record(&format!("alice-{u}"), &mine, State::Pending, base);
    store.insert(&wanted, &[]).await.unwrap();
    let also = sample_record(
        &format!("carol-{u}"),
        &third,
        State::Pending,
        base + TimeDelta::milliseconds(1),
    );
    store.insert(&also, &[]).await.unwrap();
    let done = sample_record(
        &format!("carol-{u}"),
        &third,
        State::Denied,
        base + TimeDelta::milliseconds(2),
    );
    store.insert(&done, &[]).await.unwrap();
    // Newer than both: a flood for an entitlement the queue does not ask for.
    for i in 0..30 {
        let r = sample_record(
            &format!("mallory-{u}"),
            &other,
            State::Pending,
            base + TimeDelta::milliseconds(10 + i),
        );
        store.insert(&r, &[]).await.unwrap();
    }
    let queue = ListFilter {
        states: vec![State::Pending],
        entitlements: vec![mine.clone(), third.clone()],
        limit: 5,
        ..ListFilter::default()
    };
    assert_eq!(
        store.list(&queue).await.unwrap(),
        vec![also.clone(), wanted.clone()],
        "only pending requests of the listed entitlements, newest first"
    );
    let any_state = ListFilter {
        states: Vec::new(),
        ..queue.clone()
    };
    assert_eq!(
        store.list(&any_state).await.unwrap(),
        vec![done, also, wanted.clone()]
    );
    let one = ListFilter {
        entitlements: vec![mine.clone()],
        ..queue
    };
    assert_eq!(store.list(&one).await.unwrap(), vec![wanted]);
}

/// `count_by_state`: every state once, in [`State::ALL`] order, counting
/// every record (no limit), following inserts and updates. Measured as the
/// difference to the counts before, so other data in the store does not matter.
pub async fn check_count_by_state(store: &dyn Store) {
    let count = |counts: &[(State, u64)], s: State| {
        counts
            .iter()
            .find(|(c, _)| *c == s)
            .map(|(_, n)| *n)
            .unwrap_or_else(|| panic!("count_by_state left out `{s}`"))
    };
    let before = store.count_by_state().await.unwrap();
    assert_eq!(
        before.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        State::ALL.to_vec(),
        "every state once, in State::ALL order"
    );
    let u = unique();
    let ent = format!("count-{u}");
    let base = Utc::now();
    // More than the 100 a zero-limit list would return: counts have no limit.
    let mut first = None;
    for i in 0..120 {
        let r = sample_record(
            &format!("counter-{u}"),
            &ent,
            State::Pending,
            base + TimeDelta::milliseconds(i),
        );
        store.insert(&r, &[]).await.unwrap();
        first.get_or_insert(r);
    }
    let active = sample_record(&format!("counter-{u}"), &ent, State::Active, base);
    store.insert(&active, &[]).await.unwrap();
    let mut cancelled = first.unwrap();
    cancelled.version = 2;
    cancelled.state = State::Cancelled;
    store.update(1, &cancelled, &[]).await.unwrap();

    let after = store.count_by_state().await.unwrap();
    for s in State::ALL {
        let expected = match s {
            State::Pending => 119,
            State::Active | State::Cancelled => 1,
            _ => 0,
        };
        assert_eq!(
            count(&after, s) - count(&before, s),
            expected,
            "count of `{s}`"
        );
    }
}

/// `due`: only the given states, only `due_at <= now` (inclusive), earliest
/// first, at most `limit`; a pending record whose deadline is ahead is not
/// due, an active one whose grant ended is; `due_at` follows updates.
///
/// To stay independent of other data, it works at times before anything the
/// store already holds as due.
pub async fn check_due(store: &dyn Store) {
    let far = DateTime::parse_from_rfc3339("9000-01-01T00:00:00Z")
        .unwrap()
        .to_utc();
    let earliest = store
        .due(&State::ALL, far, 1)
        .await
        .unwrap()
        .first()
        .and_then(RequestRecord::due_at);
    let now = earliest.map_or(Utc::now(), |e| e.min(Utc::now())) - TimeDelta::days(365);
    let who = format!("liam-{}", unique());
    let at = |minutes: i64| now + TimeDelta::minutes(minutes);

    let make = |state: State, due_minutes: i64| {
        let mut r = sample_record(&who, "db-admin", state, at(-120));
        match state {
            State::Pending => r.pending_until = Some(at(due_minutes)),
            State::Active => {
                if let Some(g) = r.grant.as_mut() {
                    g.ends_at = at(due_minutes);
                }
            }
            State::Approved => {
                if let Some(g) = r.grant.as_mut() {
                    g.starts_at = at(due_minutes);
                }
            }
            State::Revoking => {
                if let Some(rev) = r.revocation.as_mut() {
                    rev.next_attempt_at = at(due_minutes);
                }
            }
            _ => {}
        }
        if state != State::Denied {
            assert_eq!(r.due_at(), Some(at(due_minutes)));
        }
        r
    };
    let overdue_pending = make(State::Pending, -10);
    let future_pending = make(State::Pending, 60);
    let ended_active = make(State::Active, -5);
    let running_active = make(State::Active, 5);
    let denied = make(State::Denied, 0);
    let revoking = make(State::Revoking, -20);
    let approved = make(State::Approved, -1);
    let pending_now = make(State::Pending, 0);
    for r in [
        &overdue_pending,
        &future_pending,
        &ended_active,
        &running_active,
        &denied,
        &revoking,
        &approved,
        &pending_now,
    ] {
        store.insert(r, &[]).await.unwrap();
    }
    let ids = |v: Vec<RequestRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let pa = [State::Pending, State::Active];

    assert_eq!(
        ids(store.due(&pa, now, 10).await.unwrap()),
        vec![overdue_pending.id, ended_active.id, pending_now.id],
        "pending and active records due at or before now, earliest first"
    );
    assert_eq!(
        store.due(&pa, now, 10).await.unwrap()[0],
        overdue_pending,
        "due returns whole records"
    );
    assert_eq!(
        ids(store.due(&pa, now, 2).await.unwrap()),
        vec![overdue_pending.id, ended_active.id]
    );
    assert_eq!(
        ids(store.due(&[State::Revoking], now, 10).await.unwrap()),
        vec![revoking.id]
    );
    assert_eq!(
        ids(store
            .due(
                &[
                    State::Pending,
                    State::Active,
                    State::Revoking,
                    State::Approved,
                    State::Denied
                ],
                now,
                10
            )
            .await
            .unwrap()),
        vec![
            revoking.id,
            overdue_pending.id,
            ended_active.id,
            approved.id,
            pending_now.id
        ]
    );
    assert!(store.due(&[], now, 10).await.unwrap().is_empty());
    assert!(store.due(&pa, now, 0).await.unwrap().is_empty());
    assert!(store.due(&pa, at(-11), 10).await.unwrap().is_empty());

    // Updates move `due_at`: the ended grant expires (final, never due again)
    // and the future deadline is pulled before everything else.
    let mut expired = ended_active.clone();
    expired.version = 2;
    expired.state = State::Expired;
    store.update(1, &expired, &[]).await.unwrap();
    let mut pulled = future_pending.clone();
    pulled.version = 2;
    pulled.pending_until = Some(at(-30));
    store.update(1, &pulled, &[]).await.unwrap();
    assert_eq!(
        ids(store.due(&pa, now, 10).await.unwrap()),
        vec![pulled.id, overdue_pending.id, pending_now.id]
    );
    assert!(store
        .due(&[State::Expired], far, 10)
        .await
        .unwrap()
        .is_empty());
}

/// [`ListFilter::ends_after`]: the revoked grants still running, as start-up
/// asks for them ([`crate::Broker::restore_revocations`]). A grant that ended
/// at or before the bound is never returned, every one ending after it is
/// (down to the nanosecond, so stored ends must order like time), records
/// without a grant never match, and the other filters still apply.
pub async fn check_live_revocations(store: &dyn Store) {
    let now = Utc::now().with_nanosecond(123_456_789).unwrap();
    let who = format!("mia-{}", unique());
    let ending = |state: State, end: DateTime<Utc>| {
        let mut r = sample_record(&who, "db-admin", state, now - TimeDelta::hours(1));
        r.grant.as_mut().unwrap().ends_at = end;
        r
    };
    let ended_long_ago = ending(State::Revoked, now - TimeDelta::days(30));
    let ended_at_bound = ending(State::Revoked, now);
    let ended_just_before = ending(State::Revoked, now - TimeDelta::nanoseconds(1));
    let live_by_a_nanosecond = ending(State::Revoked, now + TimeDelta::nanoseconds(1));
    // Whole seconds and milliseconds serialize with fewer fractional digits.
    let live_whole_second = ending(
        State::Revoked,
        (now + TimeDelta::minutes(10)).with_nanosecond(0).unwrap(),
    );
    let live_millis = ending(
        State::Revoked,
        (now + TimeDelta::minutes(20))
            .with_nanosecond(5_000_000)
            .unwrap(),
    );
    let live_revoking = ending(State::Revoking, now + TimeDelta::minutes(5));
    let live_failed = ending(State::RevocationFailed, now + TimeDelta::minutes(5));
    let live_active = ending(State::Active, now + TimeDelta::minutes(5));
    let no_grant = sample_record(&who, "db-admin", State::Pending, now);
    assert!(no_grant.grant.is_none());
    let all = [
        &ended_long_ago,
        &ended_at_bound,
        &ended_just_before,
        &live_by_a_nanosecond,
        &live_whole_second,
        &live_millis,
        &live_revoking,
        &live_failed,
        &live_active,
        &no_grant,
    ];
    for r in all {
        store.insert(r, &[]).await.unwrap();
    }
    let revoked_states = vec![State::Revoked, State::Revoking, State::RevocationFailed];
    let mut expected = vec![
        live_by_a_nanosecond.id,
        live_whole_second.id,
        live_millis.id,
        live_revoking.id,
        live_failed.id,
    ];
    expected.sort();
    let sorted_ids = |v: Vec<RequestRecord>| {
        let mut ids: Vec<_> = v.into_iter().map(|r| r.id).collect();
        ids.sort();
        ids
    };

    // As start-up asks: no requester, whatever else the store holds.
    let found = store
        .list(&ListFilter {
            states: revoked_states.clone(),
            ends_after: Some(now),
            limit: usize::MAX,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    for r in &found {
        assert!(
            r.ends_at().is_some_and(|end| end > now),
            "record `{}` ends at {:?}, not after {now}",
            r.id,
            r.ends_at()
        );
        assert!(revoked_states.contains(&r.state), "{:?}", r.state);
    }
    let ours: Vec<_> = found
        .into_iter()
        .filter(|r| r.requester.id.as_str() == who)
        .collect();
    assert_eq!(
        sorted_ids(ours),
        expected,
        "every live revoked grant, no ended one"
    );

    // With the other filters.
    let mine = |states: Vec<State>| ListFilter {
        requester: Some(who.clone()),
        states,
        ends_after: Some(now),
        limit: usize::MAX,
        ..ListFilter::default()
    };
    assert_eq!(
        sorted_ids(store.list(&mine(revoked_states.clone())).await.unwrap()),
        expected
    );
    let mut running = expected.clone();
    running.push(live_active.id);
    running.sort();
    assert_eq!(
        sorted_ids(store.list(&mine(Vec::new())).await.unwrap()),
        running,
        "any state: the active grant too, never the record without a grant"
    );
    let everything = store
        .list(&ListFilter {
            requester: Some(who.clone()),
            limit: usize::MAX,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        everything.len(),
        all.len(),
        "without the bound, all of them"
    );
    // The bound moves: a later one leaves out what ended before it.
    let later = ListFilter {
        ends_after: Some(now + TimeDelta::minutes(15)),
        ..mine(revoked_states)
    };
    assert_eq!(
        sorted_ids(store.list(&later).await.unwrap()),
        vec![live_millis.id]
    );
}

/// `claim_due` returns what `due` returns to its first claimer. On a store
/// shared by replicas ([`Store::is_shared`]) it also keeps the contract of
/// leases: another owner gets none of the claimed records until the lease
/// lapses (inclusive), the owner may claim them again, unclaimed due records
/// still go to others, and leases never get in the way of `update`.
/// Single-process stores must return `due` to every claimer.
///
/// Like [`check_due`], it works before anything the store already holds as due.
pub async fn check_claims(store: &dyn Store) {
    let far = DateTime::parse_from_rfc3339("9000-01-01T00:00:00Z")
        .unwrap()
        .to_utc();
    let earliest = store
        .due(&State::ALL, far, 1)
        .await
        .unwrap()
        .first()
        .and_then(RequestRecord::due_at);
    let now = earliest.map_or(Utc::now(), |e| e.min(Utc::now())) - TimeDelta::days(30);
    let who = format!("mona-{}", unique());
    let active = |minutes: i64| {
        let mut r = sample_record(&who, "db-admin", State::Active, now - TimeDelta::hours(2));
        if let Some(g) = r.grant.as_mut() {
            g.ends_at = now + TimeDelta::minutes(minutes);
        }
        r
    };
    let (a, b, c, later) = (active(-3), active(-2), active(-1), active(10));
    for r in [&a, &b, &c, &later] {
        store.insert(r, &[]).await.unwrap();
    }
    let ids = |v: Vec<RequestRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let lease = std::time::Duration::from_secs(60);
    let by = |owner: &str, at: DateTime<Utc>| Claim {
        owner: owner.to_string(),
        now: at,
        lease,
    };
    let active_only = [State::Active];

    let first = store
        .claim_due(&active_only, now, 2, &by("replica-a", now))
        .await
        .unwrap();
    assert_eq!(
        first,
        vec![a.clone(), b.clone()],
        "earliest first, at most limit, whole records"
    );
    assert_eq!(
        ids(store.due(&active_only, now, 10).await.unwrap()),
        vec![a.id, b.id, c.id],
        "claims do not change what is due"
    );
    assert!(store
        .claim_due(&[], now, 10, &by("replica-a", now))
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .claim_due(&active_only, now, 0, &by("replica-a", now))
        .await
        .unwrap()
        .is_empty());

    if !store.is_shared() {
        assert_eq!(
            ids(store
                .claim_due(&active_only, now, 10, &by("replica-b", now))
                .await
                .unwrap()),
            vec![a.id, b.id, c.id],
            "a single-process store hands due work to every claimer"
        );
        return;
    }

    // Another owner gets only what is not leased.
    let second = store
        .claim_due(&active_only, now, 10, &by("replica-b", now))
        .await
        .unwrap();
    assert_eq!(
        ids(second),
        vec![c.id],
        "records leased to another owner are skipped"
    );
    assert!(
        store
            .claim_due(&active_only, now, 10, &by("replica-c", now))
            .await
            .unwrap()
            .is_empty(),
        "everything due is leased"
    );
    // The owner renews its own lease.
    let almost = now + TimeDelta::seconds(59);
    assert_eq!(
        ids(store
            .claim_due(&active_only, now, 10, &by("replica-a", almost))
            .await
            .unwrap()),
        vec![a.id, b.id]
    );
    // Renewed at `almost`: still held at `now + 60s`, lapsed at `almost + 60s` (inclusive).
    let at_old_end = now + TimeDelta::seconds(60);
    assert_eq!(
        ids(store
            .claim_due(&active_only, now, 10, &by("replica-c", at_old_end))
            .await
            .unwrap()),
        vec![c.id],
        "a renewed lease holds; replica-b's lapsed at its end"
    );
    let lapsed = almost + TimeDelta::seconds(60);
    assert_eq!(
        ids(store
            .claim_due(&active_only, now, 10, &by("replica-c", lapsed))
            .await
            .unwrap()),
        vec![a.id, b.id, c.id],
        "lapsed leases are claimable by anyone"
    );

    // A lease is not a lock: updates work, stay compare-and-set, and leave the lease alone.
    let mut expired = a.clone();
    expired.version = 2;
    expired.state = State::Expired;
    store.update(1, &expired, &[]).await.unwrap();
    let mut revoking = b.clone();
    revoking.version = 2;
    revoking.state = State::Revoking;
    if let Some(rv) = revoking.revocation.as_mut() {
        rv.next_attempt_at = now - TimeDelta::minutes(5);
    }
    store.update(1, &revoking, &[]).await.unwrap();
    assert!(matches!(
        store.update(1, &revoking, &[]).await,
        Err(Error::Conflict { .. })
    ));
    let both = [State::Active, State::Revoking];
    assert!(
        store
            .claim_due(&both, lapsed, 10, &by("replica-a", lapsed))
            .await
            .unwrap()
            .is_empty(),
        "replica-c still holds the lease across the update to `Revoking`"
    );
    assert_eq!(
        ids(store
            .claim_due(&both, lapsed, 10, &by("replica-c", lapsed))
            .await
            .unwrap()),
        vec![revoking.id, c.id],
        "the holder still gets it, in its new state, and final records are never due"
    );
    let _ = later;
}

/// Named leases ([`Store::try_acquire_lease`]): one holder at a time, the
/// holder renews (also by acquiring again), another holder gets the key
/// only once the lease has lapsed (at its end, inclusive), a lapsed lease
/// cannot be renewed, release by the wrong holder is refused and changes
/// nothing, and keys are independent.
pub async fn check_leases(store: &dyn Store) {
    let key = format!("conformance:lease:{}", unique());
    let other_key = format!("{key}:other");
    let (a, b) = (
        format!("holder-a-{}", unique()),
        format!("holder-b-{}", unique()),
    );
    let ttl = std::time::Duration::from_secs(30);
    let now = DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z")
        .unwrap()
        .to_utc();
    let at = |secs: i64| now + TimeDelta::seconds(secs);

    assert!(
        store.try_acquire_lease(&key, &a, ttl, now).await.unwrap(),
        "a free key is taken"
    );
    assert!(
        !store.try_acquire_lease(&key, &b, ttl, at(1)).await.unwrap(),
        "a held key is refused"
    );
    assert!(
        store
            .try_acquire_lease(&other_key, &b, ttl, at(1))
            .await
            .unwrap(),
        "keys are independent"
    );
    assert!(
        !store.release_lease(&key, &b).await.unwrap(),
        "release by the wrong holder is refused"
    );
    assert!(
        !store.try_acquire_lease(&key, &b, ttl, at(2)).await.unwrap(),
        "a refused release leaves the lease with its holder"
    );
    assert!(
        store
            .try_acquire_lease(&key, &a, ttl, at(10))
            .await
            .unwrap(),
        "the holder acquires again (renewing)"
    );
    assert!(
        store.renew_lease(&key, &a, ttl, at(20)).await.unwrap(),
        "the holder renews"
    );
    assert!(
        !store.renew_lease(&key, &b, ttl, at(20)).await.unwrap(),
        "only the holder renews"
    );
    // Renewed at 20 s: held until 50 s.
    assert!(!store
        .try_acquire_lease(&key, &b, ttl, at(49))
        .await
        .unwrap());
    assert!(
        !store.renew_lease(&key, &a, ttl, at(50)).await.unwrap(),
        "a lapsed lease cannot be renewed: the holder must learn it lost the key"
    );
    assert!(
        store
            .try_acquire_lease(&key, &b, ttl, at(50))
            .await
            .unwrap(),
        "a lapsed lease goes to another holder (at its end, inclusive)"
    );
    assert!(
        !store.renew_lease(&key, &a, ttl, at(51)).await.unwrap(),
        "the old holder has lost it"
    );
    assert!(!store.release_lease(&key, &a).await.unwrap());
    assert!(
        store.release_lease(&key, &b).await.unwrap(),
        "the holder releases"
    );
    assert!(
        !store.release_lease(&key, &b).await.unwrap(),
        "released once"
    );
    assert!(
        store
            .try_acquire_lease(&key, &a, ttl, at(52))
            .await
            .unwrap(),
        "a released key is free before its end"
    );
    assert!(store.release_lease(&key, &a).await.unwrap());
    assert!(store.release_lease(&other_key, &b).await.unwrap());
}

/// Many holders racing for one free key at once: exactly one wins.
pub async fn check_concurrent_lease_acquires(store: Arc<dyn Store>) {
    let key = format!("conformance:race:{}", unique());
    let now = Utc::now();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move {
                store
                    .try_acquire_lease(
                        &key,
                        &format!("racer-{i}"),
                        std::time::Duration::from_secs(30),
                        now,
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.unwrap());
    }
    assert_eq!(winners, 1, "one holder at a time");
}

/// Counts from [`Store::count_by_state`] as a map.
async fn counts_of(store: &dyn Store) -> std::collections::BTreeMap<State, i64> {
    store
        .count_by_state()
        .await
        .unwrap()
        .into_iter()
        .map(|(s, n)| (s, i64::try_from(n).unwrap()))
        .collect()
}

/// Asserts `count_by_state` moved from `before` by exactly what `model`
/// (id → state of the records this check wrote and did not prune) holds.
async fn assert_counts(
    store: &dyn Store,
    before: &std::collections::BTreeMap<State, i64>,
    model: &std::collections::HashMap<RequestId, State>,
    step: &str,
) {
    let now = counts_of(store).await;
    for s in State::ALL {
        let expected = model.values().filter(|m| **m == s).count() as i64;
        let got = now.get(&s).copied().unwrap_or(0) - before.get(&s).copied().unwrap_or(0);
        assert_eq!(got, expected, "count of `{s}` after {step}");
    }
}

/// The lifecycle paths the counts check walks: every state is entered and
/// left at least once.
const COUNT_PATHS: &[&[State]] = &[
    &[
        State::Pending,
        State::Approved,
        State::Issuing,
        State::Active,
        State::Revoking,
        State::Revoked,
    ],
    &[State::Pending, State::Denied],
    &[State::Pending, State::Cancelled],
    &[State::Pending, State::TimedOut],
    &[
        State::Pending,
        State::Approved,
        State::Issuing,
        State::Failed,
    ],
    &[
        State::Pending,
        State::Approved,
        State::Issuing,
        State::Active,
        State::Expired,
    ],
    &[
        State::Pending,
        State::Approved,
        State::Issuing,
        State::Active,
        State::Revoking,
        State::RevocationFailed,
    ],
];

/// Writes one record along `path` (insert, then one update per step, each
/// with an audit event), returning it as last written.
async fn walk(store: &dyn Store, who: &str, ent: &str, path: &[State]) -> RequestRecord {
    let mut r = sample_record(who, ent, path[0], Utc::now());
    store
        .insert(&r, &[event(&r, AuditKind::Requested, who)])
        .await
        .unwrap();
    for s in &path[1..] {
        let mut next = r.clone();
        next.version += 1;
        next.state = *s;
        next.updated_at = Utc::now();
        store
            .update(
                r.version,
                &next,
                &[event(&next, AuditKind::Reconciled, "reaper")],
            )
            .await
            .unwrap();
        r = next;
    }
    r
}

/// `count_by_state` stays exact, counted against a model of what the
/// check wrote: after each insert and each transition through every state,
/// after an update that keeps the state, after writes that fail (a
/// duplicate insert, a lost compare-and-set, a refused prune that had
/// already deleted part of its batch: their counts roll back with them),
/// under two writers at once, and after a prune of finished records.
///
/// It prunes the audit chain up to its own last record, so give it a store
/// of its own (it is not part of [`run_all`], whose chain checks verify
/// from the genesis); other records in the store do not matter.
pub async fn check_counts_exact(store: Arc<dyn Store>) {
    use std::collections::HashMap;

    let before = counts_of(&*store).await;
    let u = unique();
    let who = format!("tally-{u}");
    let ent = format!("tally-{u}");
    let mut model: HashMap<RequestId, State> = HashMap::new();
    let mut last: HashMap<RequestId, RequestRecord> = HashMap::new();

    // Every transition, one step at a time.
    for path in COUNT_PATHS {
        let mut r = sample_record(&who, &ent, path[0], Utc::now());
        store
            .insert(&r, &[event(&r, AuditKind::Requested, &who)])
            .await
            .unwrap();
        model.insert(r.id, r.state);
        assert_counts(
            &*store,
            &before,
            &model,
            &format!("insert in `{}`", r.state),
        )
        .await;
        for s in &path[1..] {
            let mut next = r.clone();
            next.version += 1;
            next.state = *s;
            store
                .update(
                    r.version,
                    &next,
                    &[event(&next, AuditKind::Reconciled, "reaper")],
                )
                .await
                .unwrap();
            model.insert(r.id, *s);
            assert_counts(&*store, &before, &model, &format!("`{}` → `{s}`", r.state)).await;
            r = next;
        }
        last.insert(r.id, r);
    }

    // Writes that change no state, or fail, change no count.
    let mut live = sample_record(&who, &ent, State::Active, Utc::now());
    store.insert(&live, &[]).await.unwrap();
    model.insert(live.id, State::Active);
    let mut same = live.clone();
    same.version = 2;
    same.note = Some("touched".into());
    store.update(1, &same, &[]).await.unwrap();
    live = same;
    assert_counts(&*store, &before, &model, "an update keeping the state").await;
    assert!(store.insert(&live, &[]).await.is_err());
    let mut stale = live.clone();
    stale.version = 2;
    stale.state = State::Revoking;
    assert!(matches!(
        store.update(1, &stale, &[]).await,
        Err(Error::Conflict { .. })
    ));
    assert_counts(
        &*store,
        &before,
        &model,
        "a duplicate insert and a lost CAS",
    )
    .await;

    // Two writers at once, each walking every path.
    let tasks: Vec<_> = (0..2)
        .map(|t| {
            let store = store.clone();
            let (who, ent) = (format!("{who}-{t}"), ent.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                for path in COUNT_PATHS {
                    out.push(walk(&*store, &who, &ent, path).await);
                }
                out
            })
        })
        .collect();
    for t in tasks {
        for r in t.await.unwrap() {
            model.insert(r.id, r.state);
            last.insert(r.id, r);
        }
    }
    assert_counts(&*store, &before, &model, "two concurrent writers").await;

    // A prune refused after its first delete rolls back, counts included.
    let chain = audit_all(&*store).await.unwrap();
    let head = chain.last().unwrap();
    let after = store.audit_anchor().await.unwrap().map_or(0, |a| a.seq);
    let anchor = audit::AuditAnchor::new(head.seq, &head.hash, Utc::now(), None);
    let mut finished: Vec<(RequestId, u64)> = last
        .values()
        .filter(|r| r.state.is_final())
        .map(|r| (r.id, r.version))
        .collect();
    finished.sort_unstable_by_key(|(id, _)| id.to_string());
    let mut refused = finished.clone();
    refused.push((live.id, live.version));
    let err = store
        .prune(&crate::store::Prune {
            after,
            anchor: anchor.clone(),
            records: refused,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    assert_counts(&*store, &before, &model, "a refused prune").await;

    // A prune takes its records out of the counts.
    store
        .prune(&crate::store::Prune {
            after,
            anchor,
            records: finished.clone(),
        })
        .await
        .unwrap();
    for (id, _) in &finished {
        model.remove(id);
    }
    assert!(model.values().any(|s| !s.is_final()));
    assert_counts(&*store, &before, &model, "a prune").await;
}
