//! Verified tickets against a local fake issue tracker: existing, closed,
//! missing, slow, 5xx, unreachable; the cache; the catalogue's
//! `require_verified_ticket` and the verdict in the audit record.
#![cfg(all(feature = "testing", feature = "http-hooks"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use jit_core::audit::AuditKind;
use jit_core::testing::fake::{FakeServer, Fault};
use jit_core::testing::TestProvider;
use jit_core::ticket::{JiraVerifier, TicketVerifier};
use jit_core::{
    AccessRequest, Broker, CataloguePolicy, Error, MemoryStore, Principal, RequestError, Secret,
    State,
};

/// The tracker: issues by key.
#[derive(Default)]
struct Tracker {
    issues: Mutex<HashMap<String, serde_json::Value>>,
}

fn routes(t: Arc<Tracker>) -> Router {
    Router::new()
        .route(
            "/rest/api/2/issue/{key}",
            get(
                |AxState(t): AxState<Arc<Tracker>>, Path(key): Path<String>| async move {
                    match t.issues.lock().unwrap().get(&key) {
                        Some(issue) => Json(issue.clone()).into_response(),
                        None => (
                            StatusCode::NOT_FOUND,
                            Json(serde_json::json!({"errorMessages": ["Issue does not exist or you do not have permission to see it."], "errors": {}})),
                        )
                            .into_response(),
                    }
                },
            ),
        )
        .with_state(t)
}

fn issue(key: &str, status: &str, project: &str, assignee: Option<&str>) -> serde_json::Value {
    serde_json::json!({
        "id": "10001",
        "key": key,
        "fields": {
            "summary": format!("{key}: orders table is slow"),
            "status": {"name": status, "id": "3"},
            "project": {"key": project, "name": "Incidents"},
            "assignee": assignee.map(|a| serde_json::json!({"accountId": a, "displayName": "Someone"})),
            "labels": ["db"]
        }
    })
}

const CATALOGUE: &str = r#"
[[entitlements]]
id = "db-read"
provider = "test"
max_duration = "8h"
require_verified_ticket = true
[entitlements.eligible]
groups = ["eng"]
[entitlements.auto_approve]

[[entitlements]]
id = "plain"
provider = "test"
max_duration = "8h"
[entitlements.eligible]
groups = ["eng"]
[entitlements.auto_approve]
"#;

struct Env {
    server: FakeServer,
    tracker: Arc<Tracker>,
}

fn env() -> Env {
    let tracker = Arc::new(Tracker::default());
    {
        let mut issues = tracker.issues.lock().unwrap();
        issues.insert(
            "INC-1".into(),
            issue("INC-1", "In Progress", "INC", Some("bob")),
        );
        issues.insert("INC-2".into(), issue("INC-2", "Closed", "INC", Some("bob")));
        issues.insert("OPS-3".into(), issue("OPS-3", "Open", "OPS", Some("bob")));
        issues.insert("INC-4".into(), issue("INC-4", "open", "INC", Some("carol")));
        issues.insert("INC-5".into(), issue("INC-5", "Open", "INC", None));
    }
    let server = FakeServer::builder()
        .redact_header("authorization")
        .start(routes(tracker.clone()))
        .unwrap();
    Env { server, tracker }
}

fn verifier(base: &str) -> JiraVerifier {
    JiraVerifier::new(base, ["Open", "In Progress"])
        .unwrap()
        .timeout(Duration::from_millis(300))
        .bearer_token(Secret::new("jira-pat-s3cret"))
}

fn broker(v: Option<Arc<dyn TicketVerifier>>) -> Broker {
    let mut b = Broker::builder(
        Arc::new(MemoryStore::new()),
        Arc::new(CataloguePolicy::from_toml_str(CATALOGUE).unwrap()),
    )
    .provider(Arc::new(TestProvider::new("test")));
    if let Some(v) = v {
        b = b.ticket_verifier(v);
    }
    b.build().unwrap()
}

fn bob() -> Principal {
    Principal::new("bob")
        .unwrap()
        .with_group("eng")
        .with_alias("carol")
}

fn req(ent: &str, ticket: &str) -> AccessRequest {
    AccessRequest::new(ent, "30m".parse().unwrap(), "looking into it").with_ticket(ticket)
}

#[tokio::test]
async fn verdicts_for_existing_closed_missing_and_malformed_tickets() {
    let e = env();
    let v = verifier(e.server.http_url());
    let strict = verifier(e.server.http_url())
        .projects(["INC"])
        .require_assignee(true);
    let cases = [
        (&v, "INC-1", true, "is `In Progress`"),
        (&v, "inc-1", true, "is `In Progress`"),
        (&v, "INC-2", false, "is `Closed`, not one of"),
        (&v, "INC-404", false, "does not exist"),
        (&v, "OPS-3", true, "is `Open`"),
        (&v, "INC-4", true, "is `open`"),
        (&strict, "OPS-3", false, "not in one of the projects `INC`"),
        (&strict, "INC-1", true, "is `In Progress`"),
        // Bob's alias `carol` is not carol: aliases never match an assignee.
        (&strict, "INC-4", false, "not assigned to `bob`"),
        (&strict, "INC-5", false, "not assigned to `bob`"),
        (&v, "INC-1/../../admin", false, "not an issue key"),
        (&v, "DROP TABLE", false, "not an issue key"),
    ];
    for (verifier, ticket, verified, why) in cases {
        let got = verifier.verify(ticket, &bob()).await.unwrap();
        assert_eq!(got.verified, verified, "{ticket}: {got:?}");
        assert!(got.reason.contains(why), "{ticket}: {}", got.reason);
        assert_eq!(got.ticket, ticket);
        if verified {
            assert_eq!(
                got.summary.as_deref(),
                Some(&*format!("{}: orders table is slow", ticket.to_uppercase()))
            );
        }
    }
    // Malformed keys never reached the tracker; the token went as a bearer header.
    let seen = e.server.requests();
    assert!(seen
        .iter()
        .all(|r| !r.path.contains("admin") && !r.path.contains("DROP")));
    assert_eq!(
        seen[0].header("authorization"),
        Some("Bearer ** redacted **")
    );
    assert!(!format!("{v:?}").contains("s3cret"));
}

#[tokio::test]
async fn answers_are_cached_per_key_errors_are_not_and_the_cache_is_bounded() {
    let e = env();
    let v = verifier(e.server.http_url());
    for _ in 0..3 {
        assert!(v.verify("INC-1", &bob()).await.unwrap().verified);
        assert!(!v.verify("INC-404", &bob()).await.unwrap().verified);
    }
    assert_eq!(e.server.request_count(), 2, "one lookup per key");
    // A cached issue is judged per requester.
    let carol = Principal::new("carol").unwrap();
    let strict = verifier(e.server.http_url()).require_assignee(true);
    assert!(strict.verify("INC-4", &carol).await.unwrap().verified);
    assert!(!strict.verify("INC-4", &bob()).await.unwrap().verified);
    assert_eq!(e.server.request_count(), 3);

    // An error is not remembered: the next call asks again.
    e.server.clear_requests();
    let fresh = verifier(e.server.http_url());
    let fault = e
        .server
        .inject(Fault::respond(503).path("/rest/api/2/issue/INC-1"));
    assert!(fresh.verify("INC-1", &bob()).await.is_err());
    assert!(fresh.verify("INC-1", &bob()).await.unwrap().verified);
    assert_eq!((fault.fired(), e.server.request_count()), (1, 2));

    // At most `capacity` keys: with one, two keys in turn always ask.
    e.server.clear_requests();
    let tiny = verifier(e.server.http_url()).cache(Duration::from_secs(60), 1);
    for _ in 0..2 {
        tiny.verify("INC-1", &bob()).await.unwrap();
        tiny.verify("OPS-3", &bob()).await.unwrap();
    }
    assert_eq!(e.server.request_count(), 4);
    // A closed ticket stays cached as closed until the entry lapses: with
    // no cache, a status change is seen at once.
    let uncached = verifier(e.server.http_url()).cache(Duration::ZERO, 0);
    assert!(uncached.verify("INC-1", &bob()).await.unwrap().verified);
    e.tracker
        .issues
        .lock()
        .unwrap()
        .insert("INC-1".into(), issue("INC-1", "Closed", "INC", Some("bob")));
    assert!(!uncached.verify("INC-1", &bob()).await.unwrap().verified);
}

#[tokio::test]
async fn slow_failing_or_unreachable_trackers_never_let_a_request_through() {
    let e = env();
    let b = broker(Some(Arc::new(
        verifier(e.server.http_url()).cache(Duration::ZERO, 0),
    )));
    let faults = [
        ("slow", Fault::pass_after(Duration::from_secs(3))),
        ("500", Fault::respond(500)),
        ("502", Fault::respond(502).body("<html>bad gateway</html>")),
        ("401", Fault::respond(401)),
        ("garbage", Fault::respond(200).body("{\"fields\": 5}")),
        ("drop", Fault::drop_connection()),
    ];
    for (name, fault) in faults {
        let f = e.server.inject(fault.path_prefix("/rest/api/2/issue/"));
        let out = b.submit(&bob(), req("db-read", "INC-1")).await.unwrap();
        assert_eq!(f.fired(), 1, "{name}");
        assert_eq!(out.record.state, State::Denied, "{name}");
        assert!(
            out.record
                .decision
                .reasons
                .iter()
                .any(|r| r.contains("could not be verified")),
            "{name}: {:?}",
            out.record.decision.reasons
        );
    }
    // Unreachable: a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = broker(Some(Arc::new(verifier(&format!(
        "http://127.0.0.1:{port}"
    )))));
    let out = down.submit(&bob(), req("db-read", "INC-1")).await.unwrap();
    assert_eq!(out.record.state, State::Denied);
    // No verifier at all: denied too.
    let none = broker(None);
    let out = none.submit(&bob(), req("db-read", "INC-1")).await.unwrap();
    assert_eq!(out.record.state, State::Denied);
    assert!(out
        .record
        .decision
        .reasons
        .iter()
        .any(|r| r.contains("no ticket verifier")));
    // The tracker works: the refusals above were not vacuous.
    let out = b.submit(&bob(), req("db-read", "INC-1")).await.unwrap();
    assert_eq!(out.record.state, State::Active);
}

#[tokio::test]
async fn the_verdict_and_summary_are_in_the_audit_and_only_required_where_configured() {
    let e = env();
    let b = broker(Some(Arc::new(verifier(e.server.http_url()))));
    let ok = b.submit(&bob(), req("db-read", "INC-1")).await.unwrap();
    assert_eq!(ok.record.state, State::Active);
    let closed = b.submit(&bob(), req("db-read", "INC-2")).await.unwrap();
    assert_eq!(closed.record.state, State::Denied);
    let missing = b.submit(&bob(), req("db-read", "INC-404")).await.unwrap();
    assert_eq!(missing.record.state, State::Denied);
    // Not required: a closed ticket is recorded, and the request decided as before.
    let plain = b.submit(&bob(), req("plain", "INC-2")).await.unwrap();
    assert_eq!(plain.record.state, State::Active);
    // Required means a ticket must be given at all.
    let err = b
        .submit(
            &bob(),
            AccessRequest::new("db-read", "30m".parse().unwrap(), "no ticket"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidRequest(RequestError::TicketMissing(_))),
        "{err:?}"
    );

    let audit = b.audit_records().await.unwrap();
    let decided = |id| {
        audit
            .iter()
            .find(|r| r.event.request_id == id && r.event.kind == AuditKind::Decided)
            .unwrap()
            .event
            .details["decision"]["ticket"]
            .clone()
    };
    let t = decided(ok.record.id);
    assert_eq!(t["verified"], true);
    assert_eq!(t["summary"], "INC-1: orders table is slow");
    assert_eq!(t["status"], "In Progress");
    assert_eq!(t["verifier"], "jira");
    // The record an approver reads carries the same verdict.
    let v = ok.record.decision.ticket.as_ref().unwrap();
    assert_eq!(serde_json::to_value(v).unwrap(), t);
    let stored = b.get(ok.record.id).await.unwrap();
    assert_eq!(stored.decision.ticket.as_ref(), Some(v));
    assert_eq!(decided(closed.record.id)["verified"], false);
    assert_eq!(
        decided(missing.record.id)["summary"],
        serde_json::Value::Null
    );
    assert_eq!(decided(plain.record.id)["status"], "Closed");
    let text = serde_json::to_string(&audit).unwrap();
    assert!(!text.contains("s3cret"));
}

#[test]
fn bad_tracker_settings_are_refused() {
    assert!(JiraVerifier::new("ftp://jira", ["Open"]).is_err());
    assert!(JiraVerifier::new("https://jira.internal", Vec::<String>::new()).is_err());
    let err = JiraVerifier::new("https://u:hunter2@jira.internal", ["Open"])
        .unwrap_err()
        .to_string();
    assert!(!err.contains("hunter2"), "{err}");
}

/// A ticket verifier that lets a risk assessor finish: the assessor waits
/// for the verifier's signal, so it can only answer within its timeout if
/// the broker asks both at once (asked one after the other, risk first
/// as the broker used to, the assessor would wait for a verifier not yet
/// asked, and time out).
#[derive(Debug)]
struct Signalling(Arc<tokio::sync::Notify>);

#[async_trait::async_trait]
impl TicketVerifier for Signalling {
    fn name(&self) -> &str {
        "signalling"
    }
    async fn verify(
        &self,
        ticket: &str,
        _requester: &Principal,
    ) -> jit_core::Result<jit_core::ticket::TicketVerdict> {
        self.0.notify_one();
        Ok(serde_json::from_value(serde_json::json!({
            "ticket": ticket, "verifier": "signalling", "verified": true, "reason": "ok"
        }))
        .unwrap())
    }
}

#[derive(Debug)]
struct Waiting(Arc<tokio::sync::Notify>);

#[async_trait::async_trait]
impl jit_core::risk::RiskAssessor for Waiting {
    fn name(&self) -> &str {
        "waiting"
    }
    async fn assess(
        &self,
        _input: &jit_core::risk::RiskInput<'_>,
    ) -> jit_core::Result<jit_core::risk::RiskAssessment> {
        self.0.notified().await;
        Ok(jit_core::risk::RiskAssessment::from_signals(
            "waiting",
            vec![],
        ))
    }
}

#[tokio::test]
async fn risk_review_and_ticket_verification_are_asked_together() {
    let signal = Arc::new(tokio::sync::Notify::new());
    let b = Broker::builder(
        Arc::new(MemoryStore::new()),
        Arc::new(CataloguePolicy::from_toml_str(CATALOGUE).unwrap()),
    )
    .provider(Arc::new(TestProvider::new("test")))
    .ticket_verifier(Arc::new(Signalling(signal.clone())))
    .risk_assessor(Arc::new(Waiting(signal)))
    .risk_timeout(Duration::from_secs(10))
    .build()
    .unwrap();
    let out = b.submit(&bob(), req("db-read", "INC-1")).await.unwrap();
    let risk = out.record.decision.risk.unwrap();
    assert_eq!(risk.error, None, "{risk:?}");
    assert!(out.record.decision.ticket.unwrap().verified);
}
