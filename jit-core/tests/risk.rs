//! Risk review: each built-in signal against constructed histories (fires
//! when it should, stays quiet when it should not), the catalogue's
//! `max_risk` hook (risk only adds scrutiny), and assessors that are slow,
//! fail or lie never auto-approving.
#![cfg(feature = "testing")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use jit_core::audit::AuditKind;
use jit_core::risk::{
    History, HistoryAssessor, RiskAssessment, RiskAssessor, RiskInput, RiskSignal, Weights,
};
use jit_core::store::{MemoryStore, Store};
use jit_core::testing::store::sample_record;
use jit_core::testing::TestProvider;
use jit_core::{
    AccessRequest, AuditEvent, Broker, CataloguePolicy, Entitlement, ManualClock, Policy,
    PolicyContext, Principal, State, Verdict,
};

// ---------------------------------------------------------------------------
// Constructed histories.
// ---------------------------------------------------------------------------

/// 2026-11-02 (a Monday) at `h:m` UTC.
fn at(h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, h, m, 0).unwrap()
}

struct Past<'a> {
    who: &'a str,
    groups: &'a [&'a str],
    ent: &'a str,
    at: DateTime<Utc>,
    minutes: i64,
    ip: Option<&'a str>,
}

fn past<'a>(who: &'a str, ent: &'a str, at: DateTime<Utc>) -> Past<'a> {
    Past {
        who,
        groups: &["eng"],
        ent,
        at,
        minutes: 30,
        ip: None,
    }
}

async fn seed(store: &dyn Store, items: &[Past<'_>]) {
    // In time order, as a broker would have written them.
    let mut items: Vec<&Past> = items.iter().collect();
    items.sort_by_key(|p| p.at);
    for p in items {
        let mut r = sample_record(p.who, p.ent, State::Expired, p.at);
        r.requester.groups = p.groups.iter().map(|g| g.to_string()).collect();
        r.request.duration = jit_core::GrantDuration::from_secs_i64(p.minutes * 60).unwrap();
        r.request.context.clear();
        if let Some(ip) = p.ip {
            r.request.context.insert("ip".into(), ip.into());
        }
        let e = AuditEvent::new(p.at, AuditKind::Requested, r.id, p.who, r.state);
        store.insert(&r, &[e]).await.unwrap();
    }
}

fn entitlement(id: &str) -> Entitlement {
    Entitlement {
        id: id.into(),
        description: String::new(),
        provider: "test".into(),
        target: serde_json::json!({}),
        max_duration: "8h".parse().unwrap(),
    }
}

fn principal(id: &str, groups: &[&str]) -> Principal {
    groups
        .iter()
        .fold(Principal::new(id).unwrap(), |p, g| p.with_group(g))
}

fn request(ent: &str, dur: &str) -> AccessRequest {
    AccessRequest::new(ent, dur.parse().unwrap(), "investigating INC-42")
}

/// Assesses `req` by `who` at `now` against `store` with the defaults.
async fn assess_with(
    assessor: &HistoryAssessor,
    store: &dyn Store,
    who: &Principal,
    req: &AccessRequest,
    now: DateTime<Utc>,
) -> RiskAssessment {
    let ent = entitlement(&req.entitlement);
    let input = RiskInput {
        requester: who,
        request: req,
        entitlement: &ent,
        now,
        history: History::new(store),
    };
    assessor.assess(&input).await.unwrap()
}

async fn fired(
    store: &dyn Store,
    who: &Principal,
    req: &AccessRequest,
    now: DateTime<Utc>,
) -> BTreeSet<String> {
    let a = assess_with(&HistoryAssessor::new(), store, who, req, now).await;
    // The score is always the capped sum of what fired.
    let sum: u32 = a.signals.iter().map(|s| u32::from(s.weight)).sum();
    assert_eq!(a.score, Some(sum.min(100) as u8), "{a:?}");
    a.signals.into_iter().map(|s| s.name).collect()
}

/// A requester with an ordinary history: ten `db-read` requests of 30
/// minutes at 09:00-09:50 from 10.0.0.1 on earlier days, and a peer in
/// their group who uses `db-read` too.
async fn routine(store: &dyn Store) {
    let mut items = Vec::new();
    for d in 1..=10 {
        items.push(Past {
            ip: Some("10.0.0.1"),
            ..past("bob", "db-read", at(9, 5 * d as u32) - TimeDelta::days(d))
        });
    }
    items.push(past("carol", "db-read", at(8, 0) - TimeDelta::days(2)));
    seed(store, &items).await;
}

fn bob() -> Principal {
    principal("bob", &["eng"])
}

fn from_ip(req: AccessRequest, ip: &str) -> AccessRequest {
    req.with_context("ip", ip)
}

#[tokio::test]
async fn a_routine_request_fires_nothing() {
    let store = MemoryStore::new();
    routine(&store).await;
    let got = fired(
        &store,
        &bob(),
        &from_ip(request("db-read", "30m"), "10.0.0.1"),
        at(9, 30),
    )
    .await;
    assert!(got.is_empty(), "{got:?}");
}

#[tokio::test]
async fn first_request_for_an_entitlement() {
    let store = MemoryStore::new();
    routine(&store).await;
    // Fires: bob never asked for `db-write`, although a peer did and bob asked for others.
    seed(
        &store,
        &[past("carol", "db-write", at(8, 0) - TimeDelta::days(1))],
    )
    .await;
    let got = fired(
        &store,
        &bob(),
        &from_ip(request("db-write", "30m"), "10.0.0.1"),
        at(9, 30),
    )
    .await;
    assert_eq!(got, BTreeSet::from(["first_for_entitlement".to_string()]));
    // Fires for someone with no history at all.
    let dave = principal("dave", &[]);
    let got = fired(&store, &dave, &request("db-read", "30m"), at(9, 30)).await;
    assert!(got.contains("first_for_entitlement"), "{got:?}");
    // Quiet once bob has asked for it, whatever its outcome.
    seed(
        &store,
        &[past("bob", "db-write", at(9, 0) - TimeDelta::days(1))],
    )
    .await;
    let got = fired(
        &store,
        &bob(),
        &from_ip(request("db-write", "30m"), "10.0.0.1"),
        at(9, 30),
    )
    .await;
    assert!(!got.contains("first_for_entitlement"), "{got:?}");
}

#[tokio::test]
async fn an_hour_outside_the_usual_pattern() {
    let store = MemoryStore::new();
    routine(&store).await;
    let req = from_ip(request("db-read", "30m"), "10.0.0.1");
    // Fires at 03:00 and at 21:59: no past request within an hour.
    for now in [at(3, 0), at(21, 59), at(11, 0)] {
        let got = fired(&store, &bob(), &req, now).await;
        assert_eq!(got, BTreeSet::from(["unusual_hour".to_string()]), "{now}");
    }
    // Quiet within an hour of the usual 09:xx.
    for now in [at(8, 0), at(9, 59), at(10, 30)] {
        let got = fired(&store, &bob(), &req, now).await;
        assert!(got.is_empty(), "{now}: {got:?}");
    }
    // Quiet without enough history to have a pattern (9 samples).
    let few = MemoryStore::new();
    let items: Vec<Past> = (1..=9)
        .map(|d| past("bob", "db-read", at(9, 0) - TimeDelta::days(d)))
        .collect();
    seed(&few, &items).await;
    let got = fired(&few, &bob(), &request("db-read", "30m"), at(3, 0)).await;
    assert!(!got.contains("unusual_hour"), "{got:?}");
    // The usual hour wraps around midnight: 23:30 history, 00:15 now.
    let night = MemoryStore::new();
    let items: Vec<Past> = (1..=10)
        .map(|d| past("bob", "db-read", at(23, 30) - TimeDelta::days(d)))
        .collect();
    seed(&night, &items).await;
    let got = fired(&night, &bob(), &request("db-read", "30m"), at(0, 15)).await;
    assert!(!got.contains("unusual_hour"), "{got:?}");
}

#[tokio::test]
async fn a_duration_far_above_the_median() {
    let store = MemoryStore::new();
    routine(&store).await;
    // Fires above twice the 30m median.
    let got = fired(
        &store,
        &bob(),
        &from_ip(request("db-read", "61m"), "10.0.0.1"),
        at(9, 30),
    )
    .await;
    assert_eq!(got, BTreeSet::from(["long_duration".to_string()]));
    // Quiet at exactly twice.
    let got = fired(
        &store,
        &bob(),
        &from_ip(request("db-read", "1h"), "10.0.0.1"),
        at(9, 30),
    )
    .await;
    assert!(got.is_empty(), "{got:?}");
    // Quiet with fewer than three past requests for the entitlement, and
    // other entitlements' durations do not count.
    let short = MemoryStore::new();
    seed(
        &short,
        &[
            past("bob", "db-read", at(9, 0) - TimeDelta::days(1)),
            past("bob", "db-read", at(9, 0) - TimeDelta::days(2)),
            Past {
                minutes: 5,
                ..past("bob", "other", at(9, 0) - TimeDelta::days(3))
            },
            Past {
                minutes: 5,
                ..past("bob", "other", at(9, 0) - TimeDelta::days(4))
            },
        ],
    )
    .await;
    let got = fired(&short, &bob(), &request("db-read", "4h"), at(9, 30)).await;
    assert!(!got.contains("long_duration"), "{got:?}");
}

#[tokio::test]
async fn a_burst_of_requests() {
    let store = MemoryStore::new();
    routine(&store).await;
    let now = at(9, 30);
    let burst: Vec<Past> = (1..=5)
        .map(|i| Past {
            ip: Some("10.0.0.1"),
            ..past("bob", "db-read", now - TimeDelta::minutes(i))
        })
        .collect();
    // Four in the last ten minutes: quiet.
    seed(&store, &burst[..4]).await;
    let req = from_ip(request("db-read", "30m"), "10.0.0.1");
    let got = fired(&store, &bob(), &req, now).await;
    assert!(got.is_empty(), "{got:?}");
    // The fifth: fires.
    seed(&store, &burst[4..]).await;
    let got = fired(&store, &bob(), &req, now).await;
    assert_eq!(got, BTreeSet::from(["burst".to_string()]));
    // The same five seen from 20 minutes later are no burst.
    let got = fired(&store, &bob(), &req, now + TimeDelta::minutes(20)).await;
    assert!(!got.contains("burst"), "{got:?}");
}

#[tokio::test]
async fn an_unseen_source() {
    let store = MemoryStore::new();
    routine(&store).await;
    let a = assess_with(
        &HistoryAssessor::new(),
        &store,
        &bob(),
        &from_ip(request("db-read", "30m"), "203.0.113.9").with_context("client", "curl/8"),
        at(9, 30),
    )
    .await;
    let names: Vec<&str> = a.signals.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["new_source"]);
    // The reason names the keys, never the values.
    let reason = &a.signals[0].reason;
    assert!(
        reason.contains("`ip`") && reason.contains("`client`"),
        "{reason}"
    );
    assert!(
        !reason.contains("203.0.113.9") && !reason.contains("curl"),
        "{reason}"
    );
    // Quiet for a known IP, for a request without source context, for
    // context keys that are not sources, and for someone without history.
    for req in [
        from_ip(request("db-read", "30m"), "10.0.0.1"),
        request("db-read", "30m"),
        request("db-read", "30m").with_context("trace", "abc"),
    ] {
        let got = fired(&store, &bob(), &req, at(9, 30)).await;
        assert!(got.is_empty(), "{req:?}: {got:?}");
    }
    let got = fired(
        &store,
        &principal("erin", &["eng"]),
        &from_ip(request("db-read", "30m"), "203.0.113.9"),
        at(9, 30),
    )
    .await;
    assert!(!got.contains("new_source"), "{got:?}");
}

#[tokio::test]
async fn an_entitlement_no_peer_uses() {
    let store = MemoryStore::new();
    routine(&store).await;
    seed(
        &store,
        &[
            // Only someone outside bob's groups uses `billing`, and bob himself.
            Past {
                groups: &["finance"],
                ..past("frank", "billing", at(9, 0) - TimeDelta::days(1))
            },
            past("bob", "billing", at(9, 0) - TimeDelta::days(2)),
        ],
    )
    .await;
    let got = fired(
        &store,
        &bob(),
        &from_ip(request("billing", "30m"), "10.0.0.1"),
        at(9, 30),
    )
    .await;
    assert_eq!(got, BTreeSet::from(["no_peer_uses".to_string()]));
    // Quiet when someone in any of the requester's groups uses it.
    let multi = principal("bob", &["eng", "finance"]);
    let got = fired(
        &store,
        &multi,
        &from_ip(request("billing", "30m"), "10.0.0.1"),
        at(9, 30),
    )
    .await;
    assert!(!got.contains("no_peer_uses"), "{got:?}");
    // Quiet for `db-read`, which carol (eng) uses.
    let got = fired(
        &store,
        &bob(),
        &from_ip(request("db-read", "30m"), "10.0.0.1"),
        at(9, 30),
    )
    .await;
    assert!(!got.contains("no_peer_uses"), "{got:?}");
    // Quiet for a requester in no group: there are no peers to compare with.
    let loner = principal("gina", &[]);
    let got = fired(&store, &loner, &request("billing", "30m"), at(9, 30)).await;
    assert!(!got.contains("no_peer_uses"), "{got:?}");
}

#[tokio::test]
async fn weights_set_the_score_and_zero_turns_a_signal_off() {
    let store = MemoryStore::new();
    let dave = principal("dave", &["eng"]);
    let req = request("db-read", "30m");
    // No history, a group nobody shares: first request and no peer.
    let a = assess_with(&HistoryAssessor::new(), &store, &dave, &req, at(9, 0)).await;
    assert_eq!(a.score, Some(50), "{a:?}");
    assert_eq!(a.assessor, "history");
    let custom = HistoryAssessor::new().weights(Weights {
        first_for_entitlement: 70,
        no_peer_uses: 0,
        ..Weights::default()
    });
    let a = assess_with(&custom, &store, &dave, &req, at(9, 0)).await;
    assert_eq!(a.score, Some(70), "{a:?}");
    assert_eq!(a.signals.len(), 1);
    let capped = HistoryAssessor::new().weights(Weights {
        first_for_entitlement: 90,
        no_peer_uses: 90,
        ..Weights::default()
    });
    let a = assess_with(&capped, &store, &dave, &req, at(9, 0)).await;
    assert_eq!(a.score, Some(100));
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_history_gives_the_same_signals() {
    let sqlite = jit_core::store::SqliteStore::connect("sqlite::memory:")
        .await
        .unwrap();
    let memory = MemoryStore::new();
    for s in [&sqlite as &dyn Store, &memory] {
        routine(s).await;
        seed(
            s,
            &[Past {
                groups: &["finance"],
                ..past("frank", "billing", at(9, 0) - TimeDelta::days(1))
            }],
        )
        .await;
    }
    for (req, now) in [
        (from_ip(request("db-read", "30m"), "10.0.0.1"), at(9, 30)),
        (from_ip(request("db-read", "3h"), "10.9.9.9"), at(2, 0)),
        (request("billing", "30m"), at(9, 30)),
    ] {
        let a = fired(&sqlite, &bob(), &req, now).await;
        let b = fired(&memory, &bob(), &req, now).await;
        assert_eq!(a, b, "{req:?}");
    }
}

// ---------------------------------------------------------------------------
// The catalogue's hook: risk only adds scrutiny.
// ---------------------------------------------------------------------------

const CATALOGUE: &str = r#"
[[entitlements]]
id = "db-read"
provider = "test"
max_duration = "8h"
[entitlements.eligible]
groups = ["eng", "vendors"]
[entitlements.approval]
groups = ["leads"]
[entitlements.auto_approve]
max_duration = "1h"
max_risk = 40

[[entitlements]]
id = "no-humans"
provider = "test"
max_duration = "8h"
[entitlements.eligible]
groups = ["eng"]
[entitlements.auto_approve]
max_risk = 40

[[entitlements]]
id = "humans-only"
provider = "test"
max_duration = "8h"
[entitlements.eligible]
groups = ["eng"]
[entitlements.approval]
groups = ["leads"]

[[entitlements]]
id = "no-risk-rule"
provider = "test"
max_duration = "8h"
[entitlements.eligible]
groups = ["eng"]
[entitlements.approval]
groups = ["leads"]
[entitlements.auto_approve]
max_duration = "1h"
"#;

fn scored(score: u8) -> RiskAssessment {
    RiskAssessment::from_signals(
        "test",
        vec![RiskSignal {
            name: "test".into(),
            weight: score,
            reason: "constructed".into(),
        }],
    )
}

fn kind(v: &Verdict) -> &'static str {
    match v {
        Verdict::Deny => "deny",
        Verdict::NeedsApproval { .. } => "review",
        Verdict::AutoApprove => "auto",
    }
}

#[test]
fn max_risk_is_checked_and_fails_closed() {
    let policy = CataloguePolicy::from_toml_str(CATALOGUE).unwrap();
    let ent = policy.entitlement("db-read").unwrap();
    let ctx = PolicyContext::new(at(9, 0), Duration::from_secs(12 * 3600));
    let decide = |risk: Option<RiskAssessment>, dur: &str| {
        let ctx = match risk {
            Some(r) => ctx.clone().with_risk(r),
            None => ctx.clone(),
        };
        policy
            .evaluate(&bob(), &request("db-read", dur), &ent, &ctx)
            .unwrap()
    };
    assert_eq!(
        decide(Some(scored(40)), "30m").verdict,
        Verdict::AutoApprove
    );
    let d = decide(Some(scored(41)), "30m");
    assert_eq!(kind(&d.verdict), "review");
    assert!(
        d.reasons
            .iter()
            .any(|r| r.contains("risk 41/100 (test) exceeds the auto-approve limit of 40")),
        "{:?}",
        d.reasons
    );
    let d = decide(
        Some(RiskAssessment::unavailable("http", "status 500")),
        "30m",
    );
    assert_eq!(kind(&d.verdict), "review");
    assert!(
        d.reasons.iter().any(|r| r.contains("status 500")),
        "{:?}",
        d.reasons
    );
    let d = decide(None, "30m");
    assert_eq!(kind(&d.verdict), "review");
    assert!(
        d.reasons.iter().any(|r| r.contains("no risk assessor")),
        "{:?}",
        d.reasons
    );

    for bad in ["-1", "101", "\"low\""] {
        let text = CATALOGUE.replacen("max_risk = 40", &format!("max_risk = {bad}"), 1);
        let err = CataloguePolicy::from_toml_str(&text)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("max_risk") || err.contains("line"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn risk_never_loosens_a_decision() {
    let policy = CataloguePolicy::from_toml_str(CATALOGUE).unwrap();
    let ctx = PolicyContext::new(at(9, 0), Duration::from_secs(12 * 3600));
    let risks = [
        Some(scored(0)),
        Some(scored(40)),
        Some(scored(41)),
        Some(scored(100)),
        Some(RiskAssessment::unavailable("t", "down")),
        None,
    ];
    let people = [
        bob(),
        principal("eve", &["sales"]),
        principal("lee", &["eng", "leads"]),
    ];
    let mut autos = 0;
    for ent in ["db-read", "no-humans", "humans-only", "no-risk-rule"] {
        let e = policy.entitlement(ent).unwrap();
        for who in &people {
            for dur in ["15m", "59m", "2h", "8h"] {
                let req = request(ent, dur);
                // The verdict with the lowest possible risk is the loosest.
                let base = policy
                    .evaluate(who, &req, &e, &ctx.clone().with_risk(scored(0)))
                    .unwrap();
                for risk in &risks {
                    let c = match risk {
                        Some(r) => ctx.clone().with_risk(r.clone()),
                        None => ctx.clone(),
                    };
                    let d = policy.evaluate(who, &req, &e, &c).unwrap();
                    let (b, v) = (kind(&base.verdict), kind(&d.verdict));
                    if v == "auto" {
                        autos += 1;
                        assert_eq!(b, "auto", "{ent} {dur} {who:?} {risk:?}");
                    }
                    if b == "deny" {
                        assert_eq!(v, "deny", "{ent} {dur} {risk:?}");
                    }
                    if b == "review" {
                        assert_eq!(v, "review", "{ent} {dur} {risk:?}");
                    }
                    if risk.as_ref().is_none_or(|r| r.exceeds(40)) && ent != "no-risk-rule" {
                        assert_ne!(v, "auto", "{ent} {dur} {risk:?}");
                    }
                }
            }
        }
    }
    assert!(
        autos > 0,
        "the table must contain auto-approvals to mean anything"
    );
}

// ---------------------------------------------------------------------------
// Through the broker.
// ---------------------------------------------------------------------------

fn broker(store: Arc<dyn Store>, assessor: Option<Arc<dyn RiskAssessor>>) -> (Broker, ManualClock) {
    let clock = ManualClock::new(at(9, 30));
    let policy = Arc::new(CataloguePolicy::from_toml_str(CATALOGUE).unwrap());
    let mut b = Broker::builder(store, policy)
        .provider(Arc::new(TestProvider::new("test")))
        .clock(Arc::new(clock.clone()))
        .risk_timeout(Duration::from_millis(200));
    if let Some(a) = assessor {
        b = b.risk_assessor(a);
    }
    (b.build().unwrap(), clock)
}

#[tokio::test]
async fn the_broker_records_the_review_in_the_decision_and_the_audit() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    routine(&*store).await;
    let (broker, _clock) = broker(store, Some(Arc::new(HistoryAssessor::new())));

    // Routine: auto-approved, with a zero score on record.
    let out = broker
        .submit(&bob(), from_ip(request("db-read", "30m"), "10.0.0.1"))
        .await
        .unwrap();
    assert_eq!(out.record.state, State::Active);
    let risk = out.record.decision.risk.clone().unwrap();
    assert_eq!((risk.assessor.as_str(), risk.score), ("history", Some(0)));

    let newcomer = principal("hank", &["eng", "contractors"]);
    let out = broker
        .submit(&newcomer, from_ip(request("db-read", "30m"), "10.0.0.1"))
        .await
        .unwrap();
    // Someone new in a group that uses it: one signal, 30 <= 40, auto-approved.
    assert_eq!(out.record.state, State::Active);
    let risk = out.record.decision.risk.clone().unwrap();
    assert_eq!(risk.score, Some(30), "{risk:?}");
    // Someone new in a group nobody there uses it in: 30 + 20 > 40, to a human.
    let out2 = broker
        .submit(&principal("ivy", &["vendors"]), request("db-read", "30m"))
        .await
        .unwrap();
    let risk2 = out2.record.decision.risk.clone().unwrap();
    assert_eq!(risk2.score, Some(50), "{risk2:?}");
    assert_eq!(out2.record.state, State::Pending);
    assert!(matches!(
        out2.record.decision.verdict,
        Verdict::NeedsApproval { .. }
    ));

    // The decided event's details carry the score and the signals.
    let audit = broker.audit_records().await.unwrap();
    let decided = audit
        .iter()
        .find(|r| r.event.request_id == out2.record.id && r.event.kind == AuditKind::Decided)
        .unwrap();
    let details = &decided.event.details["decision"]["risk"];
    assert_eq!(details["score"], 50);
    let names: Vec<&str> = details["signals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["first_for_entitlement", "no_peer_uses"]);

    // The API's answer carries it too.
    let answer = jit_core::wire::RequestAnswer::new(out2.record.clone(), None);
    let json = serde_json::to_value(&answer).unwrap();
    assert_eq!(json["request"]["decision"]["risk"]["score"], 50);
}

#[tokio::test]
async fn without_an_assessor_decisions_carry_no_review_and_max_risk_fails_closed() {
    let (broker, _clock) = broker(Arc::new(MemoryStore::new()), None);
    let out = broker
        .submit(&bob(), request("no-risk-rule", "30m"))
        .await
        .unwrap();
    assert_eq!(out.record.state, State::Active);
    assert_eq!(out.record.decision.risk, None);
    let json = serde_json::to_value(&out.record.decision).unwrap();
    assert!(json.get("risk").is_none(), "{json}");
    let out = broker
        .submit(&bob(), request("db-read", "30m"))
        .await
        .unwrap();
    assert_eq!(out.record.state, State::Pending);
}

/// Never answers.
#[derive(Debug)]
struct Slow;

#[async_trait]
impl RiskAssessor for Slow {
    fn name(&self) -> &str {
        "slow"
    }
    async fn assess(&self, _: &RiskInput<'_>) -> jit_core::Result<RiskAssessment> {
        std::future::pending().await
    }
}

/// Always fails.
#[derive(Debug)]
struct Failing;

#[async_trait]
impl RiskAssessor for Failing {
    fn name(&self) -> &str {
        "failing"
    }
    async fn assess(&self, _: &RiskInput<'_>) -> jit_core::Result<RiskAssessment> {
        Err(jit_core::Error::Unavailable {
            what: "model".into(),
            message: "connection refused".into(),
        })
    }
}

/// Answers a score no assessor may give.
#[derive(Debug)]
struct Lying;

#[async_trait]
impl RiskAssessor for Lying {
    fn name(&self) -> &str {
        "lying"
    }
    async fn assess(&self, _: &RiskInput<'_>) -> jit_core::Result<RiskAssessment> {
        Ok(RiskAssessment {
            assessor: "lying".into(),
            score: Some(250),
            signals: Vec::new(),
            error: None,
        })
    }
}

#[tokio::test]
async fn slow_failing_or_lying_assessors_never_auto_approve() {
    let cases: [(Arc<dyn RiskAssessor>, &str); 3] = [
        (Arc::new(Slow), "no answer within 200 ms"),
        (Arc::new(Failing), "connection refused"),
        (Arc::new(Lying), "above the maximum"),
    ];
    for (assessor, why) in cases {
        let name = assessor.name().to_string();
        let (broker, _clock) = broker(Arc::new(MemoryStore::new()), Some(assessor));
        // Would be auto-approved at any valid score up to 40: goes to a human.
        let out = broker
            .submit(&bob(), request("db-read", "30m"))
            .await
            .unwrap();
        assert_eq!(out.record.state, State::Pending, "{name}");
        let risk = out.record.decision.risk.clone().unwrap();
        assert_eq!(risk.score, None, "{name}");
        assert!(
            risk.error.as_deref().unwrap().contains(why),
            "{name}: {risk:?}"
        );
        assert!(
            out.record.decision.reasons.iter().any(|r| r.contains(why)),
            "{name}: {:?}",
            out.record.decision.reasons
        );
        // Without a human to fall back on: denied, never approved.
        let out = broker
            .submit(&bob(), request("no-humans", "30m"))
            .await
            .unwrap();
        assert_eq!(out.record.state, State::Denied, "{name}");
        // Entitlements that do not use risk are decided as before.
        let out = broker
            .submit(&bob(), request("no-risk-rule", "30m"))
            .await
            .unwrap();
        assert_eq!(out.record.state, State::Active, "{name}");
        assert_eq!(out.record.decision.risk.unwrap().score, None, "{name}");
    }
}
