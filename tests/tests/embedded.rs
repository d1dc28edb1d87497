//! End to end on the embedded default: a broker on SQLite with the local
//! provider, an internal admin service protected by the local token layer,
//! and an audit file written beside it. A grant opens the service, revocation
//! and expiry close it again, a restart keeps every record, and both copies of
//! the audit chain verify and agree.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use axum::body::Body;
use axum::routing::get;
use axum::{Extension, Router};
use chrono::TimeDelta;
use http_body_util::BodyExt;
use jit_core::audit::{verify_jsonl, JsonlFileSink};
use jit_core::local::{LocalClaims, LocalKey, LocalProvider, LocalTokenLayer, RevocationList};
use jit_core::store::SqliteStore;
use jit_core::{
    AccessRequest, Broker, CataloguePolicy, Credentials, ListFilter, ManualClock, Principal,
    Reaper, State,
};
use tower::ServiceExt;

const CATALOGUE: &str = r#"
[[entitlements]]
id = "admin-api"
provider = "local"
max_duration = "1h"
target = { audience = "admin-api", scopes = ["users:write"] }
[entitlements.eligible]
groups = ["engineering"]
[entitlements.auto_approve]
max_duration = "20m"
[entitlements.approval]
groups = ["leads"]
"#;

struct World {
    broker: Broker,
    clock: ManualClock,
    app: Router,
}

async fn world(
    db: &std::path::Path,
    audit: &std::path::Path,
    key: &LocalKey,
    revocations: RevocationList,
    clock: ManualClock,
) -> World {
    let provider = Arc::new(
        LocalProvider::builder(
            LocalKey::from_pkcs8_pem(key.to_pkcs8_pem().unwrap().expose()).unwrap(),
        )
        .issuer("e2e")
        .clock(Arc::new(clock.clone()))
        .revocations(revocations)
        .build(),
    );
    let app = Router::new()
        .route(
            "/admin/users",
            get(|Extension(claims): Extension<LocalClaims>| async move {
                format!("hello {}", claims.sub)
            }),
        )
        .layer(LocalTokenLayer::new(provider.verifier(), "admin-api"));
    let broker = Broker::builder(
        Arc::new(SqliteStore::open(db).await.unwrap()),
        Arc::new(CataloguePolicy::from_toml_str(CATALOGUE).unwrap()),
    )
    .provider(provider)
    .clock(Arc::new(clock.clone()))
    .audit_sink(Arc::new(JsonlFileSink::open(audit).unwrap()))
    .build()
    .unwrap();
    World { broker, clock, app }
}

async fn call(app: &Router, token: Option<&str>) -> (u16, String) {
    let mut req = axum::http::Request::get("/admin/users");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn token_of(c: Option<Credentials>) -> String {
    match c {
        Some(Credentials::LocalToken { token, .. }) => token.expose().to_string(),
        other => panic!("expected a local token, got {other:?}"),
    }
}

#[tokio::test]
async fn grant_opens_the_service_and_revocation_and_expiry_close_it() {
    let dir = tempfile::tempdir().unwrap();
    let (db, audit) = (dir.path().join("jit.db"), dir.path().join("audit.jsonl"));
    let key = LocalKey::generate();
    let revocations = RevocationList::new();
    let clock = ManualClock::starting_now();
    let w = world(&db, &audit, &key, revocations.clone(), clock.clone()).await;
    let alice = Principal::new("alice").unwrap().with_group("engineering");

    assert_eq!(call(&w.app, None).await.0, 401);

    // Auto-approved: the token opens the service.
    let out = w
        .broker
        .submit(
            &alice,
            AccessRequest::new("admin-api", "10m".parse().unwrap(), "INC-1: reset a user"),
        )
        .await
        .unwrap();
    let t1 = token_of(out.credentials);
    assert_eq!(
        call(&w.app, Some(&t1)).await,
        (200, "hello alice".to_string())
    );

    // Revoked: closed at once.
    w.broker
        .revoke(&alice, out.record.id, "done")
        .await
        .unwrap();
    assert_eq!(call(&w.app, Some(&t1)).await.0, 401);

    // Needs approval: a lead approves, the token works until its end, then the reaper expires it.
    let out = w
        .broker
        .submit(
            &alice,
            AccessRequest::new("admin-api", "40m".parse().unwrap(), "INC-2: migration"),
        )
        .await
        .unwrap();
    assert_eq!(out.record.state, State::Pending);
    let bob = Principal::new("bob").unwrap().with_group("leads");
    let out = w.broker.approve(&bob, out.record.id, "ok").await.unwrap();
    let t2 = token_of(out.credentials);
    assert_eq!(call(&w.app, Some(&t2)).await.0, 200);
    w.clock.advance(TimeDelta::minutes(41));
    assert_eq!(
        call(&w.app, Some(&t2)).await.0,
        401,
        "expired natively, before any reaper"
    );
    Reaper::new(w.broker.clone()).tick().await.unwrap();
    assert_eq!(
        w.broker.get(out.record.id).await.unwrap().state,
        State::Expired
    );
    let head = w.broker.verify_audit().await.unwrap().unwrap().head;
    drop(w);

    // Restart on the same files: every record is there, both chains agree.
    let w = world(&db, &audit, &key, revocations, clock).await;
    let states: Vec<State> = w
        .broker
        .list(&ListFilter::default())
        .await
        .unwrap()
        .iter()
        .map(|r| r.state)
        .collect();
    assert_eq!(states, [State::Expired, State::Revoked]);
    assert_eq!(w.broker.verify_audit().await.unwrap().unwrap().head, head);
    let file = std::fs::read(&audit).unwrap();
    let from_file = verify_jsonl(&file[..]).unwrap();
    assert_eq!(from_file.head, head);
    // Neither copy holds a token.
    let text = String::from_utf8(file).unwrap();
    assert!(!text.contains(&t1) && !text.contains(&t2));
}
