//! The HTTP risk assessor against a local fake scoring service: a good
//! answer is used; a slow, failing or lying service (or none at all) never
//! lets a request be auto-approved.
#![cfg(all(feature = "testing", feature = "http-hooks"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State as AxState;
use axum::routing::post;
use axum::{Json, Router};
use jit_core::risk::{HttpAssessor, RiskAssessor};
use jit_core::testing::fake::{FakeServer, Fault};
use jit_core::testing::TestProvider;
use jit_core::{AccessRequest, Broker, CataloguePolicy, MemoryStore, Principal, Secret, State};

const CATALOGUE: &str = r#"
[[entitlements]]
id = "db-read"
provider = "test"
max_duration = "8h"
[entitlements.eligible]
groups = ["eng"]
[entitlements.approval]
groups = ["leads"]
[entitlements.auto_approve]
max_risk = 40
"#;

/// The scoring service: answers whatever the test put in `answer`, and
/// keeps the bodies it was sent.
#[derive(Default)]
struct Scorer {
    answer: Mutex<serde_json::Value>,
    seen: Mutex<Vec<serde_json::Value>>,
}

fn routes(s: Arc<Scorer>) -> Router {
    Router::new()
        .route(
            "/score",
            post(
                |AxState(s): AxState<Arc<Scorer>>, Json(body): Json<serde_json::Value>| async move {
                    s.seen.lock().unwrap().push(body);
                    Json(s.answer.lock().unwrap().clone())
                },
            ),
        )
        .with_state(s)
}

struct Env {
    server: FakeServer,
    scorer: Arc<Scorer>,
    broker: Broker,
}

fn env() -> Env {
    let scorer = Arc::new(Scorer::default());
    *scorer.answer.lock().unwrap() = serde_json::json!({"score": 10});
    let server = FakeServer::builder()
        .redact_header("authorization")
        .start(routes(scorer.clone()))
        .unwrap();
    let assessor = assessor(server.http_url());
    let broker = broker(Arc::new(assessor));
    Env {
        server,
        scorer,
        broker,
    }
}

fn assessor(base: &str) -> HttpAssessor {
    HttpAssessor::new(&format!("{base}/score"))
        .unwrap()
        .timeout(Duration::from_millis(300))
        .bearer_token(Secret::new("risk-token-s3cret"))
}

fn broker(assessor: Arc<dyn RiskAssessor>) -> Broker {
    Broker::builder(
        Arc::new(MemoryStore::new()),
        Arc::new(CataloguePolicy::from_toml_str(CATALOGUE).unwrap()),
    )
    .provider(Arc::new(TestProvider::new("test")))
    .risk_assessor(assessor)
    .build()
    .unwrap()
}

fn bob() -> Principal {
    Principal::new("bob").unwrap().with_group("eng")
}

fn req() -> AccessRequest {
    AccessRequest::new(
        "db-read",
        "30m".parse().unwrap(),
        "INC-42: look at the orders",
    )
    .with_ticket("INC-42")
    .with_context("ip", "10.0.0.7")
}

#[tokio::test]
async fn a_good_answer_is_used_and_the_service_sees_no_target() {
    let e = env();
    *e.scorer.answer.lock().unwrap() = serde_json::json!({
        "score": 12,
        "signals": [{"name": "odd_ip", "weight": 12, "reason": "IP first seen today"}]
    });
    let out = e.broker.submit(&bob(), req()).await.unwrap();
    assert_eq!(out.record.state, State::Active);
    let risk = out.record.decision.risk.unwrap();
    assert_eq!((risk.assessor.as_str(), risk.score), ("http", Some(12)));
    assert_eq!(risk.signals[0].name, "odd_ip");

    let sent = e.scorer.seen.lock().unwrap()[0].clone();
    assert_eq!(sent["requester"]["id"], "bob");
    assert_eq!(sent["request"]["entitlement"], "db-read");
    assert_eq!(sent["request"]["context"]["ip"], "10.0.0.7");
    assert_eq!(sent["entitlement"]["provider"], "test");
    assert!(sent["entitlement"].get("target").is_none(), "{sent}");
    // The token went as a bearer header (the fake records it redacted).
    let recorded = e.server.requests_to("POST", "/score");
    assert_eq!(
        recorded[0].header("authorization"),
        Some("Bearer ** redacted **")
    );

    // A score over the limit sends the request to a human.
    *e.scorer.answer.lock().unwrap() = serde_json::json!({"score": 41});
    let out = e.broker.submit(&bob(), req()).await.unwrap();
    assert_eq!(out.record.state, State::Pending);
}

#[tokio::test]
async fn slow_failing_or_lying_services_never_auto_approve() {
    let e = env();
    let lies = [
        serde_json::json!({"score": 101}),
        serde_json::json!({"score": -1}),
        serde_json::json!({"score": 12.5}),
        serde_json::json!({"score": "low"}),
        serde_json::json!({"score": null}),
        serde_json::json!({}),
        serde_json::json!({"score": 5, "approve": true}),
        serde_json::json!({"score": 5, "signals": [{"name": "x"}]}),
        serde_json::json!([5]),
    ];
    let mut outcomes = Vec::new();
    for lie in lies {
        *e.scorer.answer.lock().unwrap() = lie.clone();
        let out = e.broker.submit(&bob(), req()).await.unwrap();
        outcomes.push((lie.to_string(), out.record));
    }
    // Faults: a slow answer (a good one, too late), 5xx, a body that is
    // not JSON, one too large, a dropped connection.
    *e.scorer.answer.lock().unwrap() = serde_json::json!({"score": 0});
    let faults = [
        ("slow", Fault::pass_after(Duration::from_secs(3))),
        ("500", Fault::respond(500).body("boom")),
        ("503", Fault::respond(503).retry_after_secs(1)),
        ("html", Fault::respond(200).body("<html>ok</html>")),
        (
            "huge",
            Fault::respond(200).body(format!(
                "{{\"score\": 1, \"pad\": \"{}\"}}",
                "x".repeat(70_000)
            )),
        ),
        ("drop", Fault::drop_connection()),
    ];
    for (name, fault) in faults {
        let handle = e.server.inject(fault.path("/score"));
        let out = e.broker.submit(&bob(), req()).await.unwrap();
        assert_eq!(handle.fired(), 1, "{name}");
        outcomes.push((name.to_string(), out.record));
    }
    for (what, rec) in &outcomes {
        assert_eq!(rec.state, State::Pending, "{what}: {:?}", rec.decision);
        let risk = rec.decision.risk.as_ref().unwrap();
        assert_eq!(risk.score, None, "{what}");
        let error = risk.error.as_deref().unwrap();
        assert!(!error.contains("s3cret"), "{what}: {error}");
    }
    // The service still works afterwards: the checks above were not vacuous.
    let out = e.broker.submit(&bob(), req()).await.unwrap();
    assert_eq!(out.record.state, State::Active);
}

#[tokio::test]
async fn an_unreachable_service_never_auto_approves() {
    // A port nobody listens on: take a free one and close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let broker = broker(Arc::new(assessor(&format!("http://127.0.0.1:{port}"))));
    let out = broker.submit(&bob(), req()).await.unwrap();
    assert_eq!(out.record.state, State::Pending);
    assert!(out.record.decision.risk.unwrap().error.is_some());
}

#[test]
fn urls_are_checked_and_the_token_is_never_shown() {
    for bad in [
        "ftp://scorer/score",
        "not a url",
        "https://user:hunter2@scorer/score",
    ] {
        let err = HttpAssessor::new(bad).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
    let a = assessor("https://scorer.internal");
    let shown = format!("{a:?}");
    assert!(shown.contains("scorer.internal"), "{shown}");
    assert!(!shown.contains("risk-token-s3cret"), "{shown}");
    assert!(shown.contains("** redacted **"), "{shown}");
}
