//! jit-aws against scripted STS/IAM endpoints, for answers moto cannot give:
//! a `ValidationError` for a lowered `MaxSessionDuration` (moto does not
//! check `DurationSeconds` against it), and an endpoint that never answers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::TimeDelta;
use common::*;
use jit_aws::{AwsConfig, AwsProvider};
use jit_core::testing::fake::axum::extract::{Form, State};
use jit_core::testing::fake::axum::http::StatusCode;
use jit_core::testing::fake::axum::response::{IntoResponse, Response};
use jit_core::testing::fake::axum::routing::post;
use jit_core::testing::fake::axum::Router;
use jit_core::testing::fake::{FakeServer, Fault};
use jit_core::testing::provider::{spec, ProviderHarness};
use jit_core::{IssuedGrant, Principal, Provider, SystemClock};
use serde_json::json;

const ROLE: &str = "arn:aws:iam::123456789012:role/Lowered";

/// An endpoint answering `GetRole` with a 12-hour role and `AssumeRole`
/// with STS's `ValidationError` (the role's maximum was lowered since);
/// counts the actions it was asked for. A fake on jit-core's harness: the
/// state is the count, the route table one POST (the query protocol).
fn scripted() -> (FakeServer, Arc<Mutex<BTreeMap<String, usize>>>) {
    type Seen = Arc<Mutex<BTreeMap<String, usize>>>;
    async fn answer(
        State(seen): State<Seen>,
        Form(form): Form<BTreeMap<String, String>>,
    ) -> Response {
        let action = form.get("Action").cloned().unwrap_or_else(|| "?".into());
        *seen.lock().unwrap().entry(action.clone()).or_default() += 1;
        let (status, xml) = match action.as_str() {
            "GetRole" => (StatusCode::OK, format!(
                "<GetRoleResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\"><GetRoleResult><Role>\
                 <Path>/</Path><RoleName>Lowered</RoleName><RoleId>AROALOWERED0000000001</RoleId>\
                 <Arn>{ROLE}</Arn><CreateDate>2026-01-01T00:00:00Z</CreateDate>\
                 <MaxSessionDuration>43200</MaxSessionDuration></Role></GetRoleResult>\
                 <ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></GetRoleResponse>"
            )),
            _ => (StatusCode::BAD_REQUEST, "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error>\
                  <Type>Sender</Type><Code>ValidationError</Code>\
                  <Message>The requested DurationSeconds exceeds the MaxSessionDuration set for this role.</Message>\
                  </Error><RequestId>2</RequestId></ErrorResponse>".to_string()),
        };
        (status, [("content-type", "text/xml")], xml).into_response()
    }
    let seen = Seen::default();
    let server = FakeServer::start(
        Router::new()
            .route("/", post(answer))
            .with_state(seen.clone()),
    )
    .unwrap();
    (server, seen)
}

// Regression (issue 10 item 4): after `AssumeRole` said the role does not
// allow the duration (its maximum was lowered), the cached maximum was kept
// until the cache's TTL, so every issue failed the same way meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_validation_error_drops_the_cached_role() {
    let (server, seen) = scripted();
    let url = server.http_url().to_string();
    let sdk = sdk(&url, "AKIASCRIPTED", "secret", None).await;
    let p = Arc::new(
        AwsProvider::builder(
            AwsConfig::default()
                .with_role_chaining(false)
                .with_account_id("123456789012")
                .with_role_cache_ttl(Duration::from_secs(3600)),
        )
        .sdk_config(sdk)
        .build()
        .await
        .unwrap(),
    );
    let h = ProviderHarness {
        provider: p.clone(),
        entitlement: entitlement(
            "lowered",
            json!({"role_arn": ROLE}),
            Duration::from_secs(4 * 3600),
        ),
        subject: Principal::new("cache@example.com").unwrap(),
        clock: Arc::new(SystemClock),
        probe: Arc::new(StsProbe { url: url.clone() }),
        advance: None,
    };
    for _ in 0..2 {
        let e = p.issue(&spec(&h, TimeDelta::hours(2))).await.unwrap_err();
        assert!(e.to_string().contains("ValidationError"), "{e}");
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.get("AssumeRole"), Some(&2), "{seen:?}");
    assert_eq!(
        seen.get("GetRole"),
        Some(&2),
        "the role was not read again after the ValidationError: {seen:?}"
    );
}

/// An endpoint that takes every request and never answers.
fn stalled() -> FakeServer {
    let server = FakeServer::start(Router::new()).unwrap();
    server.inject(Fault::pass_after(Duration::from_secs(3600)).times(usize::MAX));
    server
}

// Regression (issue 10 item 4): no call had an operation timeout, so one
// stalled IAM call held the role's revocation lock, and every later
// revocation of that role waited behind it, for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_call_times_out_and_releases_the_role() {
    let server = stalled();
    let sdk = sdk(server.http_url(), "AKIASTALLED", "secret", None).await;
    let p = AwsProvider::builder(
        AwsConfig::default()
            .with_role_chaining(false)
            .with_account_id("123456789012")
            .with_call_timeout(Duration::from_secs(1)),
    )
    .sdk_config(sdk)
    .build()
    .await
    .unwrap();
    let grant = |n: u128| IssuedGrant {
        provider: "aws".into(),
        external_id: format!("jit-{n:032x}"),
        expires_at: chrono::Utc::now() + TimeDelta::minutes(20),
        details: json!({
            "role_arn": ROLE,
            "assumed_role_id": format!("AROALOWERED0000000001:jit-{n:032x}"),
        }),
    };
    let (g1, g2) = (grant(1), grant(2));
    let started = std::time::Instant::now();
    let (a, b) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(p.revoke(&g1), p.revoke(&g2))
    })
    .await
    .expect("revocations hung on a stalled endpoint");
    for r in [a, b] {
        let e = r.unwrap_err();
        assert!(e.is_transient(), "{e}");
    }
    // Two calls in a row (the second waited for the role's lock), each
    // bounded by the timeout and the SDK's retries within it.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}
