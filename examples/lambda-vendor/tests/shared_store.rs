//! The deployment the docs describe for requests that need approval: the
//! function and the vending server (here, its broker) on one PostgreSQL
//! database. The function records the pending request, a lead approves on
//! the server side (which issues through its own AWS provider), and the
//! requester collects the credentials through the function.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::*;
use jit_core::audit::AuditKind;
use jit_core::testing::postgres::TestSchema;
use jit_core::{Broker, CataloguePolicy, Principal, RequestId, State};
use lambda_vendor::{Config, Vendor};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn approve_on_the_server_collect_through_the_function() {
    let schema = TestSchema::new().await;
    let role_arn = create_role(&moto_sdk().await).await;
    let catalogue = catalogue(&role_arn);

    let mut config = Config::with_catalogue(catalogue.clone());
    config.claims.id = "email".into();
    config.claims.groups = "cognito:groups".into();
    let vendor = Vendor::builder(config)
        .store(Arc::new(schema.store().await))
        .provider(provider(counted_clients().await.0).await)
        .build()
        .await
        .unwrap();
    let server = Broker::builder(
        Arc::new(schema.store().await),
        Arc::new(CataloguePolicy::from_toml_str(&catalogue).unwrap()),
    )
    .provider(provider(counted_clients().await.0).await)
    .build()
    .unwrap();

    // The function records the request; the server sees it waiting for leads.
    let (status, body) = invoke(&vendor, event("rest-api-cognito.json")).await;
    assert_eq!(status, 202, "{body}");
    let id: RequestId = body["request_id"].as_str().unwrap().parse().unwrap();
    let lead = Principal::new("lena").unwrap().with_group("leads");
    let waiting = server.awaiting_approval_by(&lead).await.unwrap();
    assert_eq!(waiting.iter().map(|r| r.id).collect::<Vec<_>>(), [id]);

    // Approved on the server side, which issues the grant.
    let out = server.approve(&lead, id, "ok").await.unwrap();
    assert_eq!(out.record.state, State::Active);
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

    // Collected through the function: the grant's own session.
    let collect = with_body(
        event("rest-api-cognito.json"),
        json!({"request_id": id.to_string()}),
    );
    let (status, body) = invoke(&vendor, collect).await;
    assert_eq!(status, 200, "{body}");
    let role_name = role_arn.rsplit('/').next().unwrap();
    assert_eq!(
        caller_arn(&body["credentials"]).await,
        format!("arn:aws:sts::{ACCOUNT}:assumed-role/{role_name}/{session}")
    );

    // One chain in the shared store, written by both sides.
    let records = server.audit_records().await.unwrap();
    let kinds: Vec<AuditKind> = records
        .iter()
        .filter(|r| r.event.request_id == id)
        .map(|r| r.event.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            AuditKind::Requested,
            AuditKind::Decided,
            AuditKind::Approved,
            AuditKind::Issued,
            AuditKind::Issued
        ]
    );
    assert!(server.verify_audit().await.unwrap().is_ok());
    drop((vendor, server));
    schema.drop_schema().await;
}
