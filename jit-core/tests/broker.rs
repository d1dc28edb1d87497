//! The broker's lifecycle, rules 1–7, error paths and fail-closed behaviour.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use chrono::TimeDelta;
use common::*;
use jit_core::testing::{FaultyStore, TestProvider};
use jit_core::Clock;
use jit_core::{
    AccessRequest, Error, ListFilter, MemoryStore, Principal, Reaper, RequestError, State,
};

#[tokio::test]
async fn auto_approved_lifecycle_issues_revokes_and_audits() {
    let e = env();
    let alice = user("alice");
    let out = e
        .broker
        .submit(&alice, req("dev-read", "15m"))
        .await
        .unwrap();
    assert_eq!(out.record.state, State::Active);
    let creds = out.credentials.expect("credentials on auto-issue");
    let g = out.record.grant.clone().unwrap();
    assert_eq!(g.ends_at - g.starts_at, TimeDelta::minutes(15));
    assert_eq!(creds.expires_at(), g.ends_at);
    assert_eq!(e.provider.live().len(), 1);

    let r = e
        .broker
        .revoke(&alice, out.record.id, "done early")
        .await
        .unwrap();
    assert_eq!(r.state, State::Revoked);
    assert!(e.provider.live().is_empty());
    // Idempotent.
    let again = e
        .broker
        .revoke(&alice, out.record.id, "again")
        .await
        .unwrap();
    assert_eq!(again.state, State::Revoked);

    let audit = e.broker.audit_records().await.unwrap();
    assert_eq!(
        kinds(&audit, out.record.id),
        ["requested", "decided", "approved", "issued", "revoked"]
    );
    assert!(e.broker.verify_audit().await.unwrap().is_ok());
    // The sink received exactly the same chain.
    assert_eq!(e.sink.records(), audit);
}

#[tokio::test]
async fn quorum_counts_distinct_people_never_the_requester() {
    let e = env();
    // The requester is also a lead, and has aliases.
    let alice = user("alice")
        .with_group("leads")
        .with_alias("alice@example.com");
    let out = e
        .broker
        .submit(&alice, req("prod-read", "2h"))
        .await
        .unwrap();
    let id = out.record.id;
    assert_eq!(out.record.state, State::Pending);

    // Directly, through the group, by case variant, by alias, by full-width form.
    for p in [
        alice.clone(),
        lead("ALICE"),
        lead("mallory").with_alias("Alice@Example.com"),
        lead("ａｌｉｃｅ"),
        lead("alice\u{200b}"),
        lead("ali\u{ad}ce"),
        lead("\u{430}lice"), // Cyrillic a: a confusable skeleton
    ] {
        let err = e.broker.approve(&p, id, "").await.unwrap_err();
        assert!(matches!(err, Error::Forbidden { .. }), "{p:?}: {err}");
    }
    // Not an approver.
    let err = e.broker.approve(&user("bob"), id, "").await.unwrap_err();
    assert!(matches!(err, Error::Forbidden { .. }));

    let one = e.broker.approve(&lead("carol"), id, "ok").await.unwrap();
    assert_eq!(one.record.state, State::Pending);
    // The same person again, by another spelling.
    for again in [
        lead("CAROL"),
        lead("car\u{200b}ol"),
        lead("x").with_alias("carol"),
    ] {
        let err = e.broker.approve(&again, id, "").await.unwrap_err();
        assert!(matches!(err, Error::Forbidden { ref reason, .. } if reason.contains("already")));
    }

    let two = e.broker.approve(&lead("dave"), id, "ok").await.unwrap();
    assert_eq!(two.record.state, State::Active);
    assert!(two.credentials.is_some());
    assert_eq!(two.record.approvals.len(), 2);
}

/// Aliases and folded forms only take away: someone carrying the
/// requester's id as an alias, or a case variant of it, gains nothing of
/// theirs (cancel, issue, extend, revoke, collect), and `straße` cannot
/// approve for `STRASSE`.
#[tokio::test]
async fn aliases_and_variants_never_act_for_the_requester() {
    let e = env();
    let alice = user("alice");
    let pending = e
        .broker
        .submit(&alice, req("prod-read", "2h"))
        .await
        .unwrap();
    let pid = pending.record.id;
    let intruders = [
        user("mallory").with_alias("alice"),
        user("ALICE"),
        user("ａｌｉｃｅ"),
    ];
    for p in &intruders {
        let err = e.broker.cancel(p, pid, "mine").await.unwrap_err();
        assert!(matches!(err, Error::Forbidden { .. }), "{:?}: {err}", p.id);
        let listed = e
            .broker
            .list(&ListFilter {
                requester: Some(p.id.to_string()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(listed.is_empty(), "{:?} listed alice's requests", p.id);
    }
    e.broker.approve(&lead("carol"), pid, "ok").await.unwrap();
    let active = e.broker.approve(&lead("dave"), pid, "ok").await.unwrap();
    assert_eq!(active.record.state, State::Active);
    for p in &intruders {
        let err = e.broker.revoke(p, pid, "mine").await.unwrap_err();
        assert!(matches!(err, Error::Forbidden { .. }), "{:?}: {err}", p.id);
        let err = e
            .broker
            .extend(p, pid, "1h".parse().unwrap(), "more")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{:?}: {err}", p.id);
    }
    assert_eq!(e.broker.get(pid).await.unwrap().state, State::Active);

    // Full case folding: `STRASSE` may be `straße`.
    let s = user("straße");
    let out = e.broker.submit(&s, req("prod-read", "2h")).await.unwrap();
    let err = e
        .broker
        .approve(&lead("STRASSE"), out.record.id, "")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Forbidden { .. }), "{err}");
}

#[tokio::test]
async fn deny_cancel_and_state_errors() {
    let e = env();
    let alice = user("alice");
    let id = e
        .broker
        .submit(&alice, req("prod-read", "1h"))
        .await
        .unwrap()
        .record
        .id;
    // Requesters cancel, they do not deny.
    assert!(matches!(
        e.broker.deny(&alice, id, "no").await.unwrap_err(),
        Error::Forbidden { .. }
    ));
    assert!(matches!(
        e.broker.deny(&lead("carol"), id, " ").await.unwrap_err(),
        Error::InvalidRequest(RequestError::Reason(_))
    ));
    let d = e
        .broker
        .deny(&lead("carol"), id, "not during the freeze")
        .await
        .unwrap();
    assert_eq!(d.state, State::Denied);
    assert!(matches!(
        e.broker.approve(&lead("dave"), id, "").await.unwrap_err(),
        Error::InvalidState {
            state: State::Denied,
            ..
        }
    ));

    let id2 = e
        .broker
        .submit(&alice, req("prod-read", "1h"))
        .await
        .unwrap()
        .record
        .id;
    assert!(matches!(
        e.broker.cancel(&user("bob"), id2, "").await.unwrap_err(),
        Error::Forbidden { .. }
    ));
    assert_eq!(
        e.broker
            .cancel(&alice, id2, "not needed")
            .await
            .unwrap()
            .state,
        State::Cancelled
    );
    // Someone else's request cannot be revoked by a stranger.
    let id3 = e
        .broker
        .submit(&alice, req("dev-read", "10m"))
        .await
        .unwrap()
        .record
        .id;
    assert!(matches!(
        e.broker.revoke(&user("bob"), id3, "x").await.unwrap_err(),
        Error::Forbidden { .. }
    ));
    // An admin can.
    let r = e
        .broker
        .revoke(&Principal::new("root-admin").unwrap(), id3, "incident")
        .await
        .unwrap();
    assert_eq!(r.state, State::Revoked);
}

#[tokio::test]
async fn ineligible_requests_are_denied_and_audited() {
    let e = env();
    let outsider = Principal::new("eve").unwrap();
    let out = e
        .broker
        .submit(&outsider, req("dev-read", "10m"))
        .await
        .unwrap();
    assert_eq!(out.record.state, State::Denied);
    assert!(out.credentials.is_none());
    assert!(out
        .record
        .decision
        .reasons
        .iter()
        .any(|r| r.contains("eligible")));
    let audit = e.broker.audit_records().await.unwrap();
    assert_eq!(
        kinds(&audit, out.record.id),
        ["requested", "decided", "denied"]
    );
    assert_eq!(e.provider.issue_calls(), 0);
}

#[tokio::test]
async fn durations_are_clamped_to_the_entitlement_maximum() {
    let e = env();
    let alice = user("alice");
    let out = e
        .broker
        .submit(&alice, req("prod-read", "12h"))
        .await
        .unwrap();
    assert!(out
        .record
        .decision
        .reasons
        .iter()
        .any(|r| r.contains("clamped")));
    let id = out.record.id;
    e.broker.approve(&lead("carol"), id, "").await.unwrap();
    let rec = e
        .broker
        .approve(&lead("dave"), id, "")
        .await
        .unwrap()
        .record;
    let g = rec.grant.unwrap();
    assert_eq!(g.ends_at - g.starts_at, TimeDelta::hours(8));
}

#[tokio::test]
async fn provider_maximum_bounds_the_grant() {
    let provider =
        Arc::new(TestProvider::new("test").with_max(std::time::Duration::from_secs(1800)));
    let e = env_with(Arc::new(MemoryStore::new()), provider);
    let id = e
        .broker
        .submit(&user("alice"), req("prod-read", "4h"))
        .await
        .unwrap()
        .record
        .id;
    e.broker.approve(&lead("carol"), id, "").await.unwrap();
    let rec = e
        .broker
        .approve(&lead("dave"), id, "")
        .await
        .unwrap()
        .record;
    let g = rec.grant.unwrap();
    assert_eq!(g.ends_at - g.starts_at, TimeDelta::minutes(30));
}

#[tokio::test]
async fn reaper_expires_natively_and_revokes_non_native_grants() {
    let e = env();
    let alice = user("alice");
    let native = e
        .broker
        .submit(&alice, req("dev-read", "10m"))
        .await
        .unwrap()
        .record
        .id;
    let manual = e
        .broker
        .submit(&alice, req("batch-job", "20m"))
        .await
        .unwrap()
        .record
        .id;
    let mut reaper = Reaper::new(e.broker.clone());
    reaper.tick().await.unwrap();
    assert_eq!(e.broker.get(native).await.unwrap().state, State::Active);

    e.clock.advance(TimeDelta::minutes(11));
    reaper.tick().await.unwrap();
    assert_eq!(e.broker.get(native).await.unwrap().state, State::Expired);
    assert_eq!(e.broker.get(manual).await.unwrap().state, State::Active);
    assert_eq!(
        e.provider.revoke_calls(),
        0,
        "native expiry needs no revoke"
    );

    e.clock.advance(TimeDelta::minutes(10));
    reaper.tick().await.unwrap();
    assert_eq!(e.broker.get(manual).await.unwrap().state, State::Expired);
    assert_eq!(e.manual.revoke_calls(), 1);
    assert!(e.manual.live().is_empty());
    let audit = e.broker.audit_records().await.unwrap();
    assert_eq!(kinds(&audit, manual).last(), Some(&"expired"));
}

#[tokio::test]
async fn pending_requests_time_out() {
    let e = env();
    let id = e
        .broker
        .submit(&user("alice"), req("prod-read", "1h"))
        .await
        .unwrap()
        .record
        .id;
    let mut reaper = Reaper::new(e.broker.clone());
    e.clock.advance(TimeDelta::minutes(59));
    reaper.tick().await.unwrap();
    assert_eq!(e.broker.get(id).await.unwrap().state, State::Pending);
    e.clock.advance(TimeDelta::minutes(2));
    reaper.tick().await.unwrap();
    assert_eq!(e.broker.get(id).await.unwrap().state, State::TimedOut);
    assert!(matches!(
        e.broker.approve(&lead("carol"), id, "").await.unwrap_err(),
        Error::InvalidState {
            state: State::TimedOut,
            ..
        }
    ));
}

#[tokio::test]
async fn failed_revocations_back_off_then_show_and_keep_retrying() {
    let e = env();
    let alice = user("alice");
    let id = e
        .broker
        .submit(&alice, req("dev-read", "30m"))
        .await
        .unwrap()
        .record
        .id;
    e.provider.fail_next_revokes(100);
    let r = e.broker.revoke(&alice, id, "leaving").await.unwrap();
    assert_eq!(r.state, State::Revoking);
    let rv = r.revocation.clone().unwrap();
    assert_eq!(rv.attempts, 1);
    assert!(rv.last_error.unwrap().contains("injected"));

    let mut reaper = Reaper::new(e.broker.clone());
    let mut delays = Vec::new();
    let mut prev = rv.next_attempt_at;
    for _ in 0..5 {
        let now = e.clock.now_for_test();
        e.clock.advance(prev - now);
        reaper.tick().await.unwrap();
        let r = e.broker.get(id).await.unwrap();
        let next = r.revocation.unwrap().next_attempt_at;
        delays.push((next - prev).num_seconds());
        prev = next;
    }
    // 10s, 20s, 40s, 80s, then the slow pace once shown as failed.
    assert_eq!(&delays[..4], &[10, 20, 40, 80]);
    let r = e.broker.get(id).await.unwrap();
    assert_eq!(r.state, State::RevocationFailed);
    assert_eq!(delays[4], 900);
    let audit = e.broker.audit_records().await.unwrap();
    assert_eq!(
        kinds(&audit, id)
            .iter()
            .filter(|k| **k == "revocation_failed")
            .count(),
        1
    );

    // The provider recovers: the slow retry completes it.
    e.provider.fail_next_revokes(0);
    e.clock.advance(TimeDelta::minutes(15));
    reaper.tick().await.unwrap();
    let r = e.broker.get(id).await.unwrap();
    assert_eq!(r.state, State::Revoked);
    assert!(e.provider.live().is_empty());
}

#[tokio::test]
async fn extension_is_a_linked_request_within_the_same_bounds() {
    let e = env();
    let alice = user("alice");
    let first = e
        .broker
        .submit(&alice, req("dev-read", "20m"))
        .await
        .unwrap()
        .record;
    let end = first.ends_at().unwrap();
    e.clock.advance(TimeDelta::minutes(5));
    // Someone else's grant looks like a missing one.
    assert!(matches!(
        e.broker
            .extend(&user("bob"), first.id, "10m".parse().unwrap(), "more")
            .await
            .unwrap_err(),
        Error::NotFound { .. }
    ));
    let ext = e
        .broker
        .extend(&alice, first.id, "10m".parse().unwrap(), "need more")
        .await
        .unwrap();
    assert_eq!(ext.record.extends, Some(first.id));
    assert_eq!(ext.record.state, State::Active);
    assert_eq!(ext.record.ends_at().unwrap(), end + TimeDelta::minutes(10));
    // An extension can never reach past the maximum from now (1h).
    let ext2 = e
        .broker
        .extend(&alice, first.id, "30m".parse().unwrap(), "more")
        .await
        .unwrap();
    let now = e.clock.now_for_test();
    assert!(ext2.record.ends_at().unwrap() <= now + TimeDelta::hours(1));
    // Not extendable once revoked.
    e.broker.revoke(&alice, first.id, "done").await.unwrap();
    assert!(matches!(
        e.broker
            .extend(&alice, first.id, "10m".parse().unwrap(), "x")
            .await
            .unwrap_err(),
        Error::InvalidRequest(RequestError::NotExtendable(_))
    ));
}

#[tokio::test]
async fn scheduled_start_is_issued_by_the_reaper() {
    let e = env();
    let alice = user("alice");
    let start = e.clock.now_for_test() + TimeDelta::hours(1);
    let out = e
        .broker
        .submit(&alice, req("dev-read", "10m").starting_at(start))
        .await
        .unwrap();
    assert_eq!(out.record.state, State::Approved);
    assert!(matches!(
        e.broker.issue(&alice, out.record.id).await.unwrap_err(),
        Error::InvalidRequest(RequestError::NotYetStarted { .. })
    ));
    let mut reaper = Reaper::new(e.broker.clone());
    e.clock.advance(TimeDelta::hours(1));
    reaper.tick().await.unwrap();
    let r = e.broker.get(out.record.id).await.unwrap();
    assert_eq!(r.state, State::Active);
    assert_eq!(r.grant.unwrap().starts_at, start);
}

#[tokio::test]
async fn provider_refusal_is_recorded_as_failed() {
    let e = env();
    e.provider.fail_issue(true);
    let err = e
        .broker
        .submit(&user("alice"), req("dev-read", "10m"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ProviderRejected { .. }));
    let recs = e.broker.list(&ListFilter::default()).await.unwrap();
    assert_eq!(recs[0].state, State::Failed);
    let audit = e.broker.audit_records().await.unwrap();
    assert_eq!(kinds(&audit, recs[0].id).last(), Some(&"issue_failed"));
}

#[tokio::test]
async fn failing_audit_sink_blocks_issuance_and_takes_back_the_mint() {
    let alice = user("alice");
    // Sink broken before submit: the call fails, nothing is minted.
    let e = env();
    e.sink.set_failing(true);
    let err = e
        .broker
        .submit(&alice, req("dev-read", "10m"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AuditFailed(_)), "{err}");
    assert_eq!(e.provider.issue_calls(), 0);

    // Sink fails exactly at `issued`: minted, then revoked, nothing returned.
    let e = env();
    let sink = Arc::new(jit_core::testing::MemorySink::new());
    let broker = jit_core::Broker::builder(e.broker.store().clone(), e.broker.policy().clone())
        .provider(e.provider.clone())
        .provider(e.manual.clone())
        .audit_sink(sink.clone())
        .auto_issue(false)
        .build()
        .unwrap();
    let id = broker
        .submit(&alice, req("dev-read", "10m"))
        .await
        .unwrap()
        .record
        .id;
    sink.set_failing(true);
    let err = broker.issue(&alice, id).await.unwrap_err();
    assert!(matches!(err, Error::AuditFailed(_)));
    assert_eq!(e.provider.issue_calls(), 1);
    assert!(e.provider.live().is_empty(), "what was minted is revoked");
    let rec = broker.get(id).await.unwrap();
    assert_eq!(rec.state, State::Revoked);
    assert!(rec.revocation.unwrap().reason.contains("audit sink failed"));
    assert!(broker.verify_audit().await.unwrap().is_ok());
}

#[tokio::test]
async fn store_failure_after_mint_revokes_and_records_failure() {
    let faulty = Arc::new(FaultyStore::new(Arc::new(MemoryStore::new())));
    let e = env_with_store(faulty.clone());
    faulty.fail_updates_into(&[State::Active]);
    let err = e
        .broker
        .submit(&user("alice"), req("dev-read", "10m"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Store(_)));
    assert_eq!(e.provider.minted().len(), 1);
    assert!(e.provider.live().is_empty());
    let rec = &e.broker.list(&ListFilter::default()).await.unwrap()[0];
    assert_eq!(rec.state, State::Failed);
}

#[tokio::test]
async fn every_invalid_field_gets_its_own_typed_error_and_nothing_is_stored() {
    let e = env();
    let alice = user("alice");
    let now = e.clock.now_for_test();
    let d = |s: &str| s.parse().unwrap();
    type Check = fn(&RequestError) -> bool;
    let cases: Vec<(AccessRequest, Check)> = vec![
        (AccessRequest::new("", d("10m"), "x"), |e| {
            matches!(e, RequestError::EntitlementId(_))
        }),
        (AccessRequest::new("bad id!", d("10m"), "x"), |e| {
            matches!(e, RequestError::EntitlementId(_))
        }),
        (AccessRequest::new("nope", d("10m"), "x"), |e| {
            matches!(e, RequestError::UnknownEntitlement(_))
        }),
        (AccessRequest::new("dev-read", d("10m"), ""), |e| {
            matches!(e, RequestError::JustificationMissing)
        }),
        (
            AccessRequest::new("dev-read", d("10m"), &"x".repeat(2000)),
            |e| {
                matches!(
                    e,
                    RequestError::TextTooLong {
                        field: "justification",
                        limit: 1024,
                        ..
                    }
                )
            },
        ),
        (
            req("dev-read", "10m").starting_at(now - TimeDelta::hours(1)),
            |e| matches!(e, RequestError::StartInPast(_)),
        ),
        (
            req("dev-read", "10m").starting_at(now + TimeDelta::days(90)),
            |e| matches!(e, RequestError::StartTooFar { .. }),
        ),
        (req("dev-read", "10m").with_ticket("bad\nticket"), |e| {
            matches!(e, RequestError::TicketPattern { .. })
        }),
        (
            {
                let mut r = req("dev-read", "10m");
                for i in 0..40 {
                    r.context.insert(format!("k{i}"), "v".into());
                }
                r
            },
            |e| matches!(e, RequestError::ContextTooLarge(_)),
        ),
    ];
    for (r, check) in cases {
        let err = e.broker.submit(&alice, r.clone()).await.unwrap_err();
        match &err {
            Error::InvalidRequest(re) => assert!(check(re), "{r:?} gave {re:?}"),
            other => panic!("{r:?} gave {other:?}"),
        }
        assert!(!err.to_string().is_empty());
    }
    // Durations: typed at parse time.
    assert!(matches!(
        "0s".parse::<jit_core::GrantDuration>(),
        Err(RequestError::ZeroDuration)
    ));
    assert!(matches!(
        "-5m".parse::<jit_core::GrantDuration>(),
        Err(RequestError::NegativeDuration(_))
    ));
    assert!(matches!(
        "30d".parse::<jit_core::GrantDuration>(),
        Err(RequestError::DurationTooLong { .. })
    ));
    assert!(e
        .broker
        .list(&ListFilter::default())
        .await
        .unwrap()
        .is_empty());
    assert!(e.broker.audit_records().await.unwrap().is_empty());
}

#[tokio::test]
async fn secrets_never_reach_debug_errors_or_audit() {
    let e = env();
    let alice = user("alice");
    let out = e
        .broker
        .submit(&alice, req("dev-read", "10m"))
        .await
        .unwrap();
    let creds = out.credentials.clone().unwrap();
    let secret = match &creds {
        jit_core::Credentials::LocalToken { token, .. } => token.expose().to_string(),
        _ => unreachable!(),
    };
    assert!(secret.len() > 20);
    let mut haystack = format!("{out:?} {creds:?} {:?}", out.record);
    let mut buf = Vec::new();
    e.broker.export_audit(&mut buf).await.unwrap();
    haystack.push_str(&String::from_utf8(buf).unwrap());
    haystack.push_str(&serde_json::to_string(&out.record).unwrap());
    haystack.push_str(&format!("{:?}", e.broker));
    assert!(!haystack.contains(&secret));
}

trait NowForTest {
    fn now_for_test(&self) -> chrono::DateTime<chrono::Utc>;
}

impl NowForTest for jit_core::ManualClock {
    fn now_for_test(&self) -> chrono::DateTime<chrono::Utc> {
        jit_core::Clock::now(self)
    }
}

#[tokio::test]
async fn providers_that_cannot_revoke_early_are_refused_not_faked() {
    let provider =
        Arc::new(TestProvider::new("test").with_revocation(jit_core::RevocationKind::None));
    let e = env_with(Arc::new(MemoryStore::new()), provider);
    let alice = user("alice");
    let id = e
        .broker
        .submit(&alice, req("dev-read", "10m"))
        .await
        .unwrap()
        .record
        .id;
    // A stranger learns nothing about the grant.
    assert!(matches!(
        e.broker.revoke(&user("bob"), id, "x").await.unwrap_err(),
        Error::Forbidden { .. }
    ));
    let err = e.broker.revoke(&alice, id, "done").await.unwrap_err();
    assert!(
        matches!(err, Error::ProviderRejected { operation: "revoke", ref message, .. } if message.contains("cannot be revoked early")),
        "{err}"
    );
    assert_eq!(e.broker.get(id).await.unwrap().state, State::Active);
    assert_eq!(e.provider.revoke_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoke_racing_expiry_ends_in_one_state_with_one_provider_call() {
    let e = env();
    let alice = user("alice");
    // `batch-job` has no native expiry: both paths must call the provider.
    for round in 0..100 {
        let id = e
            .broker
            .submit(&alice, req("batch-job", "15m"))
            .await
            .unwrap()
            .record
            .id;
        e.clock.advance(TimeDelta::minutes(15));
        let calls_before = e.manual.revoke_calls();
        let b1 = e.broker.clone();
        let b2 = e.broker.clone();
        let who = alice.clone();
        let (tick, revoke) = tokio::join!(
            tokio::spawn(async move { Reaper::new(b1).tick().await }),
            tokio::spawn(async move { b2.revoke(&who, id, "racing the end").await }),
        );
        tick.unwrap().unwrap();
        let revoke = revoke.unwrap();
        let rec = e.broker.get(id).await.unwrap();
        let audit = e.broker.audit_records().await.unwrap();
        let k = kinds(&audit, id);
        match rec.state {
            State::Expired => {
                assert_eq!(k.last(), Some(&"expired"), "round {round}: {k:?}");
                assert!(!k.contains(&"revoked"));
                // The user's revoke lost: told so, or shown the grant being taken away.
                assert!(matches!(revoke, Err(Error::InvalidState { .. }) | Ok(_)));
            }
            State::Revoked => {
                assert_eq!(k.last(), Some(&"revoked"), "round {round}: {k:?}");
                assert!(!k.contains(&"expired"));
                assert!(revoke.is_ok());
            }
            other => panic!("round {round}: {other} {k:?}"),
        }
        assert_eq!(
            e.manual.revoke_calls() - calls_before,
            1,
            "round {round}: one provider call"
        );
    }
    assert!(e.manual.live().is_empty());
    assert!(e.broker.verify_audit().await.unwrap().is_ok());
}

#[tokio::test]
async fn credentials_are_redelivered_to_the_requester_only_while_active() {
    let e = env();
    let alice = user("alice");
    let out = e
        .broker
        .submit(&alice, req("dev-read", "15m"))
        .await
        .unwrap();
    let id = out.record.id;
    let first = out.credentials.unwrap();
    let calls = e.provider.issue_calls();

    // The requester gets the same grant again (the provider is idempotent by grant id).
    let again = e.broker.credentials(&alice, id).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(e.provider.issue_calls(), calls + 1);
    assert_eq!(e.provider.live().len(), 1);
    let audit = e.broker.audit_records().await.unwrap();
    let last = audit.last().unwrap();
    assert_eq!(last.event.kind.as_str(), "issued");
    assert_eq!(last.event.details["redelivered"], true);
    assert!(e.broker.verify_audit().await.unwrap().is_ok());

    // Anyone else, even a lead or an admin, is told the request does not exist.
    for p in [lead("carol"), Principal::new("root-admin").unwrap()] {
        let err = e.broker.credentials(&p, id).await.unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
    }
    // A case, width or invisible-character variant of the requester's
    // subject, or someone carrying it as an alias, is someone else (OIDC
    // `sub` is case-sensitive): they are told the request does not exist.
    for p in [
        user("ALICE"),
        user("ａｌｉｃｅ"),
        user("alice\u{200b}"),
        user("mallory").with_alias("alice"),
    ] {
        let err = e.broker.credentials(&p, id).await.unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{:?}: {err}", p.id);
    }

    // Not once the grant is over.
    e.broker.revoke(&alice, id, "done").await.unwrap();
    let err = e.broker.credentials(&alice, id).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidState {
                state: State::Revoked,
                ..
            }
        ),
        "{err}"
    );

    // Not for a pending request.
    let pending = e
        .broker
        .submit(&alice, req("prod-read", "2h"))
        .await
        .unwrap();
    let err = e
        .broker
        .credentials(&alice, pending.record.id)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidState {
                state: State::Pending,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn redelivery_refuses_a_window_shorter_than_the_provider_minimum() {
    let e = env();
    let alice = user("alice");
    let out = e
        .broker
        .submit(&alice, req("dev-read", "15m"))
        .await
        .unwrap();
    // The test provider mints at least one second; leave less than that.
    let end = out.record.grant.unwrap().ends_at;
    let left = (end - e.clock.now()) - TimeDelta::milliseconds(500);
    e.clock.advance(left);
    let before = e.broker.audit_records().await.unwrap().len();
    let err = e
        .broker
        .credentials(&alice, out.record.id)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidState { .. }), "{err}");
    assert!(err.to_string().contains("too little time left"), "{err}");
    // Nothing was audited as delivered.
    assert_eq!(e.broker.audit_records().await.unwrap().len(), before);
}

#[tokio::test]
async fn the_reaper_leaves_a_fresh_approval_to_the_call_that_issues_it() {
    // An approved request whose approving call has not issued it yet (here its
    // issue failed to record): the reaper must not race that call, but takes
    // over after the grace, or at once in a broker started later (a restart).
    let store = Arc::new(jit_core::testing::FaultyStore::new(Arc::new(
        MemoryStore::new(),
    )));
    let e = env_with_store(store.clone());
    store.fail_updates_into(&[State::Issuing]);
    let err = e
        .broker
        .submit(&user("alice"), req("dev-read", "15m"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Store(_)), "{err}");
    store.fail_updates_into(&[]);
    let id = e.broker.list(&ListFilter::default()).await.unwrap()[0].id;
    let mut reaper = Reaper::new(e.broker.clone());
    reaper.tick().await.unwrap();
    assert_eq!(e.broker.get(id).await.unwrap().state, State::Approved);

    // A new broker on the same store, started later (a restart), issues it at once.
    let clock = jit_core::ManualClock::new(e.clock.now() + TimeDelta::seconds(5));
    let restarted = jit_core::Broker::builder(
        store.clone(),
        Arc::new(jit_core::CataloguePolicy::from_toml_str(CATALOGUE).unwrap()),
    )
    .provider(Arc::new(TestProvider::new("test")))
    .provider(Arc::new(
        TestProvider::new("manual-expiry").without_native_expiry(),
    ))
    .clock(Arc::new(clock))
    .build()
    .unwrap();
    Reaper::new(restarted.clone()).tick().await.unwrap();
    assert_eq!(restarted.get(id).await.unwrap().state, State::Active);
}

#[tokio::test]
async fn the_reaper_issues_a_stalled_fresh_approval_after_the_grace() {
    let store = Arc::new(jit_core::testing::FaultyStore::new(Arc::new(
        MemoryStore::new(),
    )));
    let e = env_with_store(store.clone());
    store.fail_updates_into(&[State::Issuing]);
    let _ = e
        .broker
        .submit(&user("alice"), req("dev-read", "15m"))
        .await;
    store.fail_updates_into(&[]);
    let id = e.broker.list(&ListFilter::default()).await.unwrap()[0].id;
    let mut reaper = Reaper::new(e.broker.clone());
    reaper.tick().await.unwrap();
    assert_eq!(e.broker.get(id).await.unwrap().state, State::Approved);
    e.clock.advance(TimeDelta::minutes(3));
    reaper.tick().await.unwrap();
    assert_eq!(e.broker.get(id).await.unwrap().state, State::Active);
}
