//! The handler invoked locally with real API Gateway events, minting through
//! jit-aws against moto.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use common::*;
use jit_core::audit::{verify_jsonl, AuditKind, AuditRecord};
use jit_core::{ListFilter, Principal, RequestId, State};
use lambda_vendor::Config;
use serde_json::{json, Value};

fn request_id(body: &Value) -> RequestId {
    body["request_id"].as_str().unwrap().parse().unwrap()
}

fn records(lines: &[String]) -> Vec<AuditRecord> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_approved_jwt_event_returns_credentials_that_work() {
    let f = fixture().await;
    let (status, body) = invoke(&f.vendor, event("http-api-v2-jwt.json")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "active");
    assert_eq!(body["entitlement"], "aws-auto");
    let creds = &body["credentials"];
    assert_eq!(creds["Version"], 1);
    assert_eq!(creds["Expiration"], body["expires_at"]);

    // The credentials are the grant's session: its name derives from the grant id.
    let grant_id: jit_core::GrantId = body["grant_id"].as_str().unwrap().parse().unwrap();
    let session = jit_core::provider::external_name(grant_id);
    assert_eq!(body["session_name"], session.as_str());
    let role_name = f.role_arn.rsplit('/').next().unwrap();
    assert_eq!(
        caller_arn(creds).await,
        format!("arn:aws:sts::{ACCOUNT}:assumed-role/{role_name}/{session}")
    );

    // 30 minutes asked, at most 30 minutes given.
    let expires: DateTime<Utc> = body["expires_at"].as_str().unwrap().parse().unwrap();
    let left = expires - Utc::now();
    assert!(
        left <= chrono::TimeDelta::minutes(30) && left > chrono::TimeDelta::minutes(28),
        "{left}"
    );

    let rec = f.vendor.broker().get(request_id(&body)).await.unwrap();
    assert_eq!(rec.state, State::Active);
    assert_eq!(rec.requester.id.as_str(), "alice@example.com");
    assert!(rec.requester.in_group("oncall") && rec.requester.in_group("engineering"));
    let ctx = &rec.request.context;
    assert_eq!(ctx["source"], "lambda-vendor");
    assert_eq!(ctx["auth"], "jwt");
    assert_eq!(ctx["api_request_id"], "Zk3aPgWvoAMEV6Q=");
    assert_eq!(ctx["source_ip"], "203.0.113.10");
    assert_eq!(ctx["user_agent"], "jit-cli/0.1.0");
    assert!(!ctx["aws_request_id"].is_empty());

    // The audit lines: requested, decided, approved, issued; a valid chain.
    let lines = f.sink.lines();
    let kinds: Vec<AuditKind> = records(&lines).iter().map(|r| r.event.kind).collect();
    assert_eq!(
        kinds,
        [
            AuditKind::Requested,
            AuditKind::Decided,
            AuditKind::Approved,
            AuditKind::Issued
        ]
    );
    let summary = verify_jsonl(lines.join("\n").as_bytes()).unwrap();
    assert_eq!(summary.records, 4);
    let issued = &records(&lines)[3].event.details;
    assert_eq!(issued["external_id"], session.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn lambda_authorizer_events_http_and_rest() {
    let f = fixture().await;

    // HTTP API, Lambda authorizer context, groups as a JSON array, base64 body.
    let (status, body) = invoke(&f.vendor, event("http-api-v2-lambda-authorizer.json")).await;
    assert_eq!(status, 200, "{body}");
    let rec = f.vendor.broker().get(request_id(&body)).await.unwrap();
    assert_eq!(rec.requester.id.as_str(), "bob@example.com");
    assert_eq!(rec.request.context["auth"], "lambda_authorizer");
    assert_eq!(rec.request.justification, "INC-43: rotate the keys");
    assert_eq!(rec.request.duration.as_secs(), 1800);

    // REST API, Lambda authorizer: principalId, groups as JSON text, seconds.
    let (status, body) = invoke(&f.vendor, event("rest-api-lambda-authorizer.json")).await;
    assert_eq!(status, 200, "{body}");
    let rec = f.vendor.broker().get(request_id(&body)).await.unwrap();
    assert_eq!(rec.requester.id.as_str(), "dave@example.com");
    assert!(rec.requester.in_group("oncall"));
    assert_eq!(rec.request.context["source_ip"], "192.0.2.45");
    assert_ne!(
        caller_arn(&body["credentials"]).await,
        "",
        "credentials from a REST event work too"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn needing_approval_is_202_with_a_stored_pending_request() {
    let f = fixture_with(
        |cat| {
            let mut c = Config::with_catalogue(cat);
            c.claims.id = "email".into();
            c.claims.groups = "cognito:groups".into();
            c
        },
        LinesSink::default(),
    )
    .await;
    let (status, body) = invoke(&f.vendor, event("rest-api-cognito.json")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "pending");
    assert!(body.get("credentials").is_none());
    assert_eq!(body["approvers"]["groups"], json!(["leads"]));
    assert_eq!(body["quorum"], 1);
    assert!(body["pending_until"].is_string());
    let id = request_id(&body);
    let rec = f.vendor.broker().get(id).await.unwrap();
    assert_eq!(rec.state, State::Pending);
    assert_eq!(rec.requester.id.as_str(), "carol@example.com");
    assert_eq!(rec.request.ticket.as_deref(), Some("CHG-7"));
    assert_eq!(rec.request.context["auth"], "claims");

    // Asking with the request id before anyone approved: still 202.
    let collect = |rid: &str| with_body(event("rest-api-cognito.json"), json!({"request_id": rid}));
    let (status, body) = invoke(&f.vendor, collect(&id.to_string())).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (202, Some("pending")),
        "{body}"
    );

    // Whoever shares the store approves it; the grant is then issued there.
    let lead = Principal::new("lena").unwrap().with_group("leads");
    let out = f.vendor.broker().approve(&lead, id, "ok").await.unwrap();
    assert_eq!(out.record.state, State::Active);

    // The requester collects the credentials through the function: the
    // grant's own session, ending at the grant's end.
    let (status, body) = invoke(&f.vendor, collect(&id.to_string())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "active");
    let session = out
        .record
        .grant
        .as_ref()
        .unwrap()
        .issued
        .as_ref()
        .unwrap()
        .external_id
        .clone();
    let role_name = f.role_arn.rsplit('/').next().unwrap();
    assert_eq!(
        caller_arn(&body["credentials"]).await,
        format!("arn:aws:sts::{ACCOUNT}:assumed-role/{role_name}/{session}")
    );
    let ends = out.record.grant.as_ref().unwrap().ends_at;
    let got: DateTime<Utc> = body["credentials"]["Expiration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        got <= ends && ends - got < chrono::TimeDelta::seconds(30),
        "{got} vs {ends}"
    );
    // Someone else's id, and a malformed one, answer like a missing request.
    let mut stranger = with_body(
        event("http-api-v2-jwt.json"),
        json!({"request_id": id.to_string()}),
    );
    let (status, body) = invoke(&f.vendor, stranger.clone()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "an unverified email names nobody: {body}"
    );
    stranger["requestContext"]["authorizer"]["jwt"]["claims"]["email_verified"] = json!("true");
    let (status, body) = invoke(&f.vendor, stranger).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let (status, _) = invoke(&f.vendor, collect("not-an-id")).await;
    assert_eq!(status, 404);
    // A collect body takes nothing else.
    let mixed = with_body(
        event("rest-api-cognito.json"),
        json!({"request_id": id.to_string(), "entitlement": "x"}),
    );
    assert_eq!(invoke(&f.vendor, mixed).await.0, 400);
    // Revoked: nothing to deliver.
    f.vendor.broker().revoke(&lead, id, "done").await.unwrap();
    let (status, body) = invoke(&f.vendor, collect(&id.to_string())).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("invalid_state")),
        "{body}"
    );
    // Requested, decided, approved, issued, issued (redelivered), revoked: one chain.
    let lines = f.sink.lines();
    let kinds: Vec<AuditKind> = records(&lines).iter().map(|r| r.event.kind).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == AuditKind::Issued).count(),
        2,
        "{kinds:?}"
    );
    assert!(verify_jsonl(lines.join("\n").as_bytes()).is_ok());

    // Eligible but not on call: the auto-approve rule fails, approval is needed.
    let mut ev = event("http-api-v2-jwt.json");
    ev["requestContext"]["authorizer"]["jwt"]["claims"]["groups"] = json!("[engineering]");
    let f = fixture().await;
    let (status, body) = invoke(&f.vendor, ev).await;
    assert_eq!(status, 202, "{body}");
    assert!(body["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r.as_str().unwrap().contains("oncall")));
    let lines = f.sink.lines();
    assert_eq!(
        verify_jsonl(lines.join("\n").as_bytes()).unwrap().records,
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn not_eligible_is_403_with_reasons_and_a_denied_record() {
    let f = fixture().await;
    let ev = with_body(
        event("http-api-v2-jwt.json"),
        json!({"entitlement": "aws-break-glass", "duration": "20m", "justification": "curious"}),
    );
    let (status, body) = invoke(&f.vendor, ev).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "denied");
    let reasons = body["error"]["details"]["reasons"].as_array().unwrap();
    assert!(
        reasons[0].as_str().unwrap().contains("not eligible"),
        "{reasons:?}"
    );
    let rec = f
        .vendor
        .broker()
        .get(
            body["error"]["details"]["request_id"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(rec.state, State::Denied);
    assert_eq!(f.calls.get("AssumeRole"), 0);
    let kinds: Vec<AuditKind> = records(&f.sink.lines())
        .iter()
        .map(|r| r.event.kind)
        .collect();
    assert_eq!(
        kinds,
        [AuditKind::Requested, AuditKind::Decided, AuditKind::Denied]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_authorizer_identity_is_401_and_records_nothing() {
    let f = fixture().await;
    let mut no_sub = event("http-api-v2-jwt.json");
    no_sub["requestContext"]["authorizer"]["jwt"]["claims"]
        .as_object_mut()
        .unwrap()
        .remove("sub");
    let mut array_sub = event("http-api-v2-jwt.json");
    array_sub["requestContext"]["authorizer"]["jwt"]["claims"]["sub"] = json!(["a", "b"]);
    for (name, ev) in [
        (
            "rest without authorizer",
            event("rest-api-no-authorizer.json"),
        ),
        (
            "direct invocation with an identity in the body",
            json!({"entitlement": "aws-auto", "duration": "30m", "sub": "alice@example.com",
                   "groups": ["oncall"]}),
        ),
        ("jwt without the id claim", no_sub),
        ("id claim that is not a string", array_sub),
    ] {
        let (status, body) = invoke(&f.vendor, ev).await;
        assert_eq!(status, 401, "{name}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{name}");
    }
    assert!(f
        .vendor
        .broker()
        .list(&ListFilter::default())
        .await
        .unwrap()
        .is_empty());
    assert!(f.sink.lines().is_empty());
    assert_eq!(f.calls.get("AssumeRole"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_bodies_are_400_and_record_nothing() {
    let f = fixture().await;
    let jwt = event("http-api-v2-jwt.json");
    let body = |v: Value| with_body(jwt.clone(), v);
    let raw = |s: &str| {
        let mut e = jwt.clone();
        e["body"] = json!(s);
        e
    };
    let just = "INC-42: look at the orders logs";
    let cases: Vec<(&str, Value, &str)> = vec![
        ("malformed json", raw("{\"entitlement\": "), "invalid JSON"),
        ("no body", raw(""), "body is required"),
        (
            "unknown field",
            body(
                json!({"entitlement": "aws-auto", "duration": "30m", "justification": just,
                        "role_arn": "arn:aws:iam::123456789012:role/Admin"}),
            ),
            "unknown field `role_arn`",
        ),
        (
            "over the 7 day ceiling",
            body(json!({"entitlement": "aws-auto", "duration": "8d", "justification": just})),
            "exceeds the maximum",
        ),
        (
            "below STS's minimum",
            body(json!({"entitlement": "aws-auto", "duration": "10m", "justification": just})),
            "below the minimum",
        ),
        (
            "negative seconds",
            body(json!({"entitlement": "aws-auto", "duration": -60, "justification": just})),
            "negative",
        ),
        (
            "not a duration",
            body(json!({"entitlement": "aws-auto", "duration": "soon", "justification": just})),
            "not valid",
        ),
        (
            "unknown entitlement",
            body(json!({"entitlement": "aws-root", "duration": "30m", "justification": just})),
            "unknown entitlement",
        ),
        (
            "justification pattern",
            body(json!({"entitlement": "aws-auto", "duration": "30m", "justification": "because"})),
            "does not match",
        ),
        (
            "ticket required",
            body(json!({"entitlement": "aws-approval", "duration": "30m", "justification": just})),
            "ticket reference is required",
        ),
    ];
    for (name, ev, expect) in cases {
        let (status, body) = invoke(&f.vendor, ev).await;
        assert_eq!(status, 400, "{name}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{name}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains(expect), "{name}: {msg}");
    }
    let huge = body(json!({"entitlement": "aws-auto", "duration": "30m",
                           "justification": "x".repeat(70_000)}));
    let (status, body) = invoke(&f.vendor, huge).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");

    assert!(f
        .vendor
        .broker()
        .list(&ListFilter::default())
        .await
        .unwrap()
        .is_empty());
    assert!(f.sink.lines().is_empty());
    assert_eq!(f.calls.get("AssumeRole"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_entitlement_maximum_is_clamped_or_refused() {
    let two_hours = with_body(
        event("http-api-v2-jwt.json"),
        json!({"entitlement": "aws-auto", "duration": "2h",
               "justification": "INC-42: a long investigation"}),
    );

    let f = fixture().await;
    let (status, body) = invoke(&f.vendor, two_hours.clone()).await;
    assert_eq!(status, 200, "{body}");
    let expires: DateTime<Utc> = body["expires_at"].as_str().unwrap().parse().unwrap();
    assert!(expires - Utc::now() <= chrono::TimeDelta::hours(1));
    assert!(
        body["reasons"].to_string().contains("clamped"),
        "{}",
        body["reasons"]
    );

    let f = fixture_with(
        |cat| {
            let mut c = Config::with_catalogue(cat);
            c.over_max = lambda_vendor::OverMax::Refuse;
            c
        },
        LinesSink::default(),
    )
    .await;
    let (status, body) = invoke(&f.vendor, two_hours).await;
    assert_eq!(status, 400, "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("`2h` exceeds the maximum of 1h"), "{msg}");
    assert!(f.sink.lines().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_failure_is_500_without_credentials_and_the_session_is_revoked() {
    let f = fixture_with(
        Config::with_catalogue,
        LinesSink::failing_on(AuditKind::Issued),
    )
    .await;
    let (status, body) = invoke(&f.vendor, event("http-api-v2-jwt.json")).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "audit_failed");
    assert!(body.get("credentials").is_none());
    assert!(!body.to_string().contains("SecretAccessKey"));
    assert_eq!(f.calls.get("AssumeRole"), 1, "it was minted");

    let recs = f
        .vendor
        .broker()
        .list(&ListFilter::default())
        .await
        .unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].state, State::Revoked, "{:?}", recs[0].note);
    // The session is denied on the role (jit-aws's per-grant revocation).
    assert!(f.calls.get("PutRolePolicy") >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn cold_start_work_happens_once_per_container() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalogue.toml");
    let path_text = path.to_str().unwrap().to_string();
    let f = fixture_with(
        |cat| {
            std::fs::write(&path, cat).unwrap();
            let env: HashMap<&str, &str> = HashMap::from([
                ("JIT_CATALOGUE_FILE", path_text.as_str()),
                ("JIT_STORE_URL", "memory:"),
            ]);
            Config::from_lookup(|k| env.get(k).map(|v| v.to_string())).unwrap()
        },
        LinesSink::default(),
    )
    .await;
    // The catalogue was read at cold start: later invocations do not need the file.
    std::fs::remove_file(&path).unwrap();
    let built_with = f.calls.get("GetCallerIdentity");
    assert_eq!(built_with, 1, "role-chaining detection at cold start");

    for _ in 0..3 {
        let (status, body) = invoke(&f.vendor, event("http-api-v2-jwt.json")).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(f.calls.get("AssumeRole"), 3);
    assert_eq!(
        f.calls.get("GetCallerIdentity"),
        1,
        "no per-invocation setup"
    );
    assert_eq!(
        f.calls.get("GetRole"),
        1,
        "role facts cached across invocations"
    );
    // One container, one chain: all invocations' lines verify together.
    let lines = f.sink.lines();
    assert_eq!(
        verify_jsonl(lines.join("\n").as_bytes()).unwrap().records,
        12
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_configuration_fails_the_cold_start_with_a_typed_error() {
    let env: HashMap<&str, &str> = HashMap::from([("JIT_CATALOGUE_FILE", "/nonexistent/cat.toml")]);
    let config = Config::from_lookup(|k| env.get(k).map(|v| v.to_string())).unwrap();
    let (clients, _) = counted_clients().await;
    let err = lambda_vendor::Vendor::builder(config)
        .provider(provider(clients).await)
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, jit_core::Error::Config(_)), "{err}");
    assert!(err.to_string().contains("/nonexistent/cat.toml"), "{err}");

    // An entitlement naming a provider the function does not have.
    let config = Config::with_catalogue(
        r#"
        [[entitlements]]
        id = "gcp-thing"
        provider = "gcp"
        max_duration = "1h"
        [entitlements.eligible]
        groups = ["x"]
        "#,
    );
    let (clients, _) = counted_clients().await;
    let err = lambda_vendor::Vendor::builder(config)
        .provider(provider(clients).await)
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("`gcp`"), "{err}");
}

/// IAM-authorized callers (issue: one caller presenting another's id): every
/// Cognito identity-pool user arrives as the same pool role, and the session
/// name of an assumed role is whatever its assumer chose. The caller is the
/// pool identity, or the role unless its trust policy pins session names.
#[tokio::test(flavor = "multi_thread")]
async fn iam_callers_cannot_claim_each_others_requests() {
    const ALICE_POOL_ID: &str = "us-east-1:aaaaaaaa-1111-4222-8333-444444444444";
    const MALLORY_POOL_ID: &str = "us-east-1:bbbbbbbb-5555-4666-8777-888888888888";
    let f = fixture_with(
        |cat| {
            let role = cat
                .split("role_arn = \"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap()
                .to_string();
            let mut c = Config::with_catalogue(format!(
                r#"
                [[entitlements]]
                id = "aws-iam"
                provider = "aws"
                max_duration = "1h"
                target = {{ role_arn = "{role}" }}
                [entitlements.eligible]
                ids = ["cognito-identity:{ALICE_POOL_ID}", "cognito-identity:{MALLORY_POOL_ID}",
                       "arn:aws:sts::123456789012:assumed-role/people/alice",
                       "arn:aws:sts::123456789012:assumed-role/people/mallory",
                       "arn:aws:sts::123456789012:assumed-role/ops"]
                [entitlements.approval]
                groups = ["leads"]
                "#
            ));
            c.claims.pinned_session_roles = vec![("123456789012".into(), "people".into())];
            c
        },
        LinesSink::default(),
    )
    .await;
    let lead = Principal::new("lena").unwrap().with_group("leads");
    let collect = |mut ev: Value, rid: RequestId| {
        ev = with_body(ev, json!({"request_id": rid.to_string()}));
        ev
    };

    // Cognito identity pool: alice asks; the pool identity is the requester.
    let alice_pool = event("rest-api-iam-cognito-pool.json");
    let mut mallory_pool = alice_pool.clone();
    mallory_pool["requestContext"]["identity"]["cognitoIdentityId"] = json!(MALLORY_POOL_ID);
    let (status, body) = invoke(&f.vendor, alice_pool.clone()).await;
    assert_eq!(status, 202, "{body}");
    let id = request_id(&body);
    let rec = f.vendor.broker().get(id).await.unwrap();
    assert_eq!(
        rec.requester.id.as_str(),
        format!("cognito-identity:{ALICE_POOL_ID}")
    );
    assert_eq!(rec.request.context["auth"], "iam");
    f.vendor.broker().approve(&lead, id, "ok").await.unwrap();
    // Mallory, same pool role and same userArn, tries alice's request id.
    let (status, body) = invoke(&f.vendor, collect(mallory_pool.clone(), id)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "another pool identity must not collect alice's credentials: {body}"
    );
    assert!(body.get("credentials").is_none());
    let (status, body) = invoke(&f.vendor, collect(alice_pool.clone(), id)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["credentials"]["SessionToken"].is_string());

    // A guest (unauthenticated) pool identity gets nothing.
    let mut guest = alice_pool.clone();
    guest["requestContext"]["identity"]["cognitoAuthenticationType"] = json!("unauthenticated");
    assert_eq!(invoke(&f.vendor, guest).await.0, 401);

    // A role whose trust policy pins session names: sessions are people.
    let alice_sts = event("http-api-v2-iam.json");
    let mut mallory_sts = alice_sts.clone();
    for key in ["userArn", "callerId", "userId"] {
        let v = alice_sts["requestContext"]["authorizer"]["iam"][key]
            .as_str()
            .unwrap()
            .replace("alice", "mallory");
        mallory_sts["requestContext"]["authorizer"]["iam"][key] = json!(v);
    }
    let (status, body) = invoke(&f.vendor, alice_sts.clone()).await;
    assert_eq!(status, 202, "{body}");
    let id = request_id(&body);
    assert_eq!(
        f.vendor
            .broker()
            .get(id)
            .await
            .unwrap()
            .requester
            .id
            .as_str(),
        "arn:aws:sts::123456789012:assumed-role/people/alice"
    );
    f.vendor.broker().approve(&lead, id, "ok").await.unwrap();
    let (status, body) = invoke(&f.vendor, collect(mallory_sts, id)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    assert_eq!(
        invoke(&f.vendor, collect(alice_sts.clone(), id)).await.0,
        200
    );

    // Any other role: whoever may assume it picks the session name, so the
    // caller is the role, whatever name a session presents.
    let mut ops = alice_sts.clone();
    ops["requestContext"]["authorizer"]["iam"]["userArn"] =
        json!("arn:aws:sts::123456789012:assumed-role/ops/alice");
    let (status, body) = invoke(&f.vendor, ops).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        f.vendor
            .broker()
            .get(request_id(&body))
            .await
            .unwrap()
            .requester
            .id
            .as_str(),
        "arn:aws:sts::123456789012:assumed-role/ops"
    );
}
