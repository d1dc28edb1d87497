//! The HTTP on-call source against a local fake paging service: answers
//! are used (and cached until the next hand-over); 5xx, slow, malformed,
//! lying or unreachable services never put anyone on call.
#![cfg(all(feature = "testing", feature = "http-hooks"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State as AxState};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, TimeDelta, Utc};
use jit_core::oncall::{HttpOnCall, OnCallSettings, OnCallSource};
use jit_core::testing::fake::{FakeServer, Fault};
use jit_core::testing::TestProvider;
use jit_core::{
    AccessRequest, Broker, CataloguePolicy, ManualClock, MemoryStore, Principal, Secret, State,
};

const CATALOGUE: &str = r#"
[[entitlements]]
id = "payments-db"
provider = "test"
max_duration = "1h"
[entitlements.eligible]
groups = ["payments"]
[entitlements.approval]
groups = ["leads"]
[entitlements.auto_approve]
on_call = ["payments-primary"]
"#;

/// The paging service: answers whatever the test put in `answer` (with
/// `schedule` filled in from the query unless the answer has one), and
/// keeps the queries it was sent.
#[derive(Default)]
struct Pager {
    answer: Mutex<serde_json::Value>,
    seen: Mutex<Vec<HashMap<String, String>>>,
}

fn routes(p: Arc<Pager>) -> Router {
    Router::new()
        .route(
            "/oncalls",
            get(
                |AxState(p): AxState<Arc<Pager>>, Query(q): Query<HashMap<String, String>>| async move {
                    let mut answer = p.answer.lock().unwrap().clone();
                    if let (Some(obj), Some(s)) = (answer.as_object_mut(), q.get("schedule")) {
                        obj.entry("schedule").or_insert(s.clone().into());
                    }
                    p.seen.lock().unwrap().push(q);
                    Json(answer)
                },
            ),
        )
        .with_state(p)
}

struct Env {
    server: FakeServer,
    pager: Arc<Pager>,
}

fn env() -> Env {
    let pager = Arc::new(Pager::default());
    *pager.answer.lock().unwrap() = serde_json::json!({"on_call": ["alice"]});
    let server = FakeServer::builder()
        .redact_header("authorization")
        .start(routes(pager.clone()))
        .unwrap();
    Env { server, pager }
}

fn source(base: &str) -> HttpOnCall {
    HttpOnCall::new(&format!("{base}/oncalls"))
        .unwrap()
        .timeout(Duration::from_millis(300))
        .cache(Duration::ZERO, 0)
        .bearer_token(Secret::new("pager-token-s3cret"))
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn broker(clock: &ManualClock, source: Arc<dyn OnCallSource>) -> Broker {
    Broker::builder(
        Arc::new(MemoryStore::new()),
        Arc::new(CataloguePolicy::from_toml_str(CATALOGUE).unwrap()),
    )
    .provider(Arc::new(TestProvider::new("test")))
    .clock(Arc::new(clock.clone()))
    .on_call_source(source)
    .build()
    .unwrap()
}

fn person(id: &str) -> Principal {
    Principal::new(id).unwrap().with_group("payments")
}

fn req() -> AccessRequest {
    AccessRequest::new(
        "payments-db",
        "30m".parse().unwrap(),
        "INC-7: payments stuck",
    )
}

#[tokio::test]
async fn answers_are_used_with_exact_ids_and_the_query_names_schedule_and_instant() {
    let e = env();
    let clock = ManualClock::new(utc("2026-12-10T07:59:59Z"));
    let b = broker(&clock, Arc::new(source(e.server.http_url())));
    *e.pager.answer.lock().unwrap() = serde_json::json!({"on_call": ["alice", "Bob"]});
    let alice = b.submit(&person("alice"), req()).await.unwrap();
    assert_eq!(alice.record.state, State::Active);
    let bob = b.submit(&person("bob"), req()).await.unwrap();
    assert_eq!(bob.record.state, State::Pending, "`Bob` is not `bob`");

    let q = e.pager.seen.lock().unwrap()[0].clone();
    assert_eq!(q["schedule"], "payments-primary");
    assert_eq!(q["at"], "2026-12-10T07:59:59Z");
    let recorded = e.server.requests_to("GET", "/oncalls");
    assert_eq!(
        recorded[0].header("authorization"),
        Some("Bearer ** redacted **")
    );
    assert_eq!(recorded[0].header("accept"), Some("application/json"));
}

#[tokio::test]
async fn failures_never_put_anyone_on_call() {
    let e = env();
    let clock = ManualClock::new(utc("2026-12-10T07:00:00Z"));
    let b = broker(&clock, Arc::new(source(e.server.http_url())));
    let lies = [
        serde_json::json!({"on_call": "alice"}),
        serde_json::json!({"on_call": [7]}),
        serde_json::json!({"on_call": ["alice"], "schedule": "other"}),
        serde_json::json!({"on_call": ["alice", ""]}),
        serde_json::json!({"on_call": ["alice"], "approve": true}),
        serde_json::json!({"on_call": ["alice"], "until": "tomorrow"}),
        serde_json::json!({"oncall": ["alice"]}),
        serde_json::json!(["alice"]),
    ];
    let mut outcomes = Vec::new();
    for lie in lies {
        *e.pager.answer.lock().unwrap() = lie.clone();
        let out = b.submit(&person("alice"), req()).await.unwrap();
        outcomes.push((lie.to_string(), out.record));
    }
    *e.pager.answer.lock().unwrap() = serde_json::json!({"on_call": ["alice"]});
    let faults = [
        ("slow", Fault::pass_after(Duration::from_secs(3))),
        ("500", Fault::respond(500).body("boom")),
        ("503", Fault::respond(503).retry_after_secs(1)),
        ("404", Fault::respond(404)),
        ("html", Fault::respond(200).body("<html>alice</html>")),
        (
            "huge",
            Fault::respond(200).body(format!(
                "{{\"schedule\": \"payments-primary\", \"on_call\": [\"alice\"], \"pad\": \"{}\"}}",
                "x".repeat(70_000)
            )),
        ),
        ("drop", Fault::drop_connection()),
    ];
    for (name, fault) in faults {
        let handle = e.server.inject(fault.path("/oncalls"));
        let out = b.submit(&person("alice"), req()).await.unwrap();
        assert_eq!(handle.fired(), 1, "{name}");
        outcomes.push((name.to_string(), out.record));
    }
    let audit = serde_json::to_string(&b.audit_records().await.unwrap()).unwrap();
    assert!(!audit.contains("s3cret"));
    for (what, rec) in &outcomes {
        assert_eq!(rec.state, State::Pending, "{what}: {:?}", rec.decision);
        assert!(
            rec.decision
                .reasons
                .iter()
                .any(|r| r.contains("not on call for any of `payments-primary`")),
            "{what}: {:?}",
            rec.decision
        );
    }
    // The service still works afterwards: the refusals above were not vacuous.
    let out = b.submit(&person("alice"), req()).await.unwrap();
    assert_eq!(out.record.state, State::Active);
}

#[tokio::test]
async fn errors_say_what_went_wrong() {
    let e = env();
    let s = source(e.server.http_url());
    let at = utc("2026-12-10T07:00:00Z");
    *e.pager.answer.lock().unwrap() =
        serde_json::json!({"on_call": ["alice"], "schedule": "other"});
    let err = s
        .on_call("payments-primary", at)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("answered about `other`"), "{err}");
    e.server.inject(Fault::respond(404).path("/oncalls"));
    let err = s
        .on_call("payments-primary", at)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no schedule `payments-primary`"), "{err}");
    e.server
        .inject(Fault::pass_after(Duration::from_secs(3)).path("/oncalls"));
    let err = s
        .on_call("payments-primary", at)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no answer within 300 ms"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}

#[tokio::test]
async fn an_unreachable_service_puts_nobody_on_call() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let clock = ManualClock::new(utc("2026-12-10T07:00:00Z"));
    let b = broker(
        &clock,
        Arc::new(source(&format!("http://127.0.0.1:{port}"))),
    );
    let out = b.submit(&person("alice"), req()).await.unwrap();
    assert_eq!(out.record.state, State::Pending);
}

#[tokio::test]
async fn the_cache_stops_at_the_next_hand_over() {
    let e = env();
    let s = HttpOnCall::new(&format!("{}/oncalls", e.server.http_url()))
        .unwrap()
        .cache(Duration::from_secs(7200), 8);
    let t0 = utc("2026-12-10T07:00:00Z");
    *e.pager.answer.lock().unwrap() =
        serde_json::json!({"on_call": ["alice"], "until": "2026-12-10T08:00:00Z"});
    let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        s.on_call("payments-primary", t0).await.unwrap(),
        ids(&["alice"])
    );
    // The service changes its mind; within the answer's validity the cache holds.
    *e.pager.answer.lock().unwrap() = serde_json::json!({"on_call": ["bob"]});
    let before = t0 + TimeDelta::minutes(59) + TimeDelta::seconds(59);
    assert_eq!(
        s.on_call("payments-primary", before).await.unwrap(),
        ids(&["alice"])
    );
    assert_eq!(e.pager.seen.lock().unwrap().len(), 1);
    // At the hand-over it asks again.
    let at = utc("2026-12-10T08:00:00Z");
    assert_eq!(
        s.on_call("payments-primary", at).await.unwrap(),
        ids(&["bob"])
    );
    assert_eq!(e.pager.seen.lock().unwrap().len(), 2);
    // An earlier instant than the one cached is asked too.
    assert_eq!(
        s.on_call("payments-primary", t0).await.unwrap(),
        ids(&["bob"])
    );
    assert_eq!(e.pager.seen.lock().unwrap().len(), 3);
    // Errors are not cached: a failure, then the answer.
    e.server.inject(Fault::respond(500).path("/oncalls"));
    let other = utc("2026-12-11T07:00:00Z");
    assert!(s.on_call("secondary", other).await.is_err());
    assert_eq!(s.on_call("secondary", other).await.unwrap(), ids(&["bob"]));
}

#[test]
fn urls_are_checked_and_the_token_is_never_shown() {
    for bad in [
        "ftp://pager/oncalls",
        "not a url",
        "https://user:hunter2@pager/oncalls",
    ] {
        let err = HttpOnCall::new(bad).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
    let s = source("https://pager.internal");
    let shown = format!("{s:?}");
    assert!(shown.contains("pager.internal"), "{shown}");
    assert!(!shown.contains("pager-token-s3cret"), "{shown}");
    // Settings build the same source, and refuse a URL it cannot use.
    let settings = OnCallSettings {
        url: Some("https://pager.internal/oncalls".into()),
        token: Some(Secret::new("pager-token-s3cret")),
        timeout: Some(Duration::from_millis(500)),
        cache_ttl: Some(Duration::from_secs(10)),
        ..Default::default()
    };
    let built = settings.build().unwrap().unwrap();
    assert_eq!(built.name(), "http");
    assert!(!format!("{built:?}").contains("s3cret"));
    let bad = OnCallSettings {
        url: Some("ftp://pager".into()),
        ..Default::default()
    };
    assert!(bad.build().is_err());
}
