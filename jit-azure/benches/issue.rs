//! jit-azure `issue` against the same calls sent raw through an
//! `azure_core` pipeline, in one run against the same fake.
//!
//! ```sh
//! nice -n 10 cargo bench -p jit-azure --bench issue -- --warm-up-time 2 --measurement-time 8
//! ```
//!
//! Three functions, all with the same TLS client, the same `azure_identity`
//! client-secret credential flow (its token cached after the first call) and
//! a fresh principal per iteration (one assignment per principal, role and
//! scope):
//!
//! - `jit_azure_issue`: the provider's `issue`: target, principal and window
//!   checks, the derived name, the role's id and the policy maximum (both
//!   cached, so not in the loop), the schedule request PUT, its status, and
//!   one GET of the schedule the answer names (the grant's end is the
//!   schedule's `endDateTime` as Azure returns it);
//! - `raw_pipeline_put`: the schedule request PUT alone;
//! - `raw_pipeline_put_get`: the same PUT and GET, raw.
//!
//! `issue / raw_pipeline_put_get` is jit-azure's own overhead;
//! `issue / raw_pipeline_put` also counts the second round trip, which no
//! implementation that reports the schedule's real end can avoid.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;

use azure_core::credentials::Secret as AzSecret;
use azure_core::http::policies::auth::BearerTokenAuthorizationPolicy;
use azure_core::http::policies::Policy;
use azure_core::http::{ClientOptions, Context, Method, Pipeline, Request, Transport, Url};
use azure_identity::{ClientSecretCredential, ClientSecretCredentialOptions};
use chrono::TimeDelta;
use criterion::{criterion_group, criterion_main, Criterion};
use jit_azure::client::{https_client, pem_certificates};
use jit_azure::testing::{
    entitlement, reader_role, scope, RunningFake, CLIENT_ID, CLIENT_SECRET, TENANT,
};
use jit_azure::Mode;
use jit_core::{Clock, GrantId, GrantSpec, ManualClock, Principal, Provider, RequestId};
use serde_json::json;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let clock = ManualClock::starting_now();
    let fake = RunningFake::start(clock.clone());
    fake.state.set_default_policy_max("PT8H");
    let provider = fake.provider(fake.config(Mode::Pim), clock.clone());

    let http = https_client(&pem_certificates(fake.server.ca_pem())).unwrap();
    let options = || ClientOptions {
        transport: Some(Transport::new(Arc::new(http.clone()))),
        ..ClientOptions::default()
    };
    let mut cloud = azure_core::cloud::CustomConfiguration::default();
    cloud.authority_host = fake.url().to_string();
    let credential = ClientSecretCredential::new(
        TENANT,
        CLIENT_ID.to_string(),
        AzSecret::new(CLIENT_SECRET.to_string()),
        Some(ClientSecretCredentialOptions {
            client_options: ClientOptions {
                cloud: Some(Arc::new(cloud.into())),
                ..options()
            },
        }),
    )
    .unwrap();
    let auth: Arc<dyn Policy> = Arc::new(BearerTokenAuthorizationPolicy::new(
        credential,
        [format!("{}/.default", fake.url())],
    ));
    let pipeline = Pipeline::new(None, None, options(), Vec::new(), vec![auth], None);

    let principal = || uuid::Uuid::new_v4().to_string();
    let mut group = c.benchmark_group("azure_issue");
    group.bench_function("jit_azure_issue", |b| {
        b.to_async(&rt).iter(|| async {
            let now = clock.now();
            let spec = GrantSpec {
                grant_id: GrantId::new(),
                request_id: RequestId::new(),
                subject: Principal::new("bench@example.com")
                    .unwrap()
                    .with_attribute("azure_object_id", &principal()),
                entitlement: entitlement("azure"),
                starts_at: now,
                ends_at: now + TimeDelta::minutes(45),
                justification: "bench".into(),
                ticket: Some("BENCH-1".into()),
            };
            provider.issue(&spec).await.unwrap()
        })
    });
    group.bench_function("raw_pipeline_put", |b| {
        b.to_async(&rt).iter(|| async {
            let url = Url::parse(&format!(
                "{}{}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/{}?api-version=2020-10-01",
                fake.url(),
                scope(),
                uuid::Uuid::new_v4()
            ))
            .unwrap();
            let mut req = Request::new(url, Method::Put);
            req.insert_header("content-type", "application/json");
            let body = json!({"properties": {
                "principalId": principal(),
                "roleDefinitionId": reader_role(),
                "requestType": "AdminAssign",
                "justification": "bench",
                "ticketInfo": {"ticketNumber": "BENCH-1", "ticketSystem": "jit"},
                "scheduleInfo": {
                    "startDateTime": clock.now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "expiration": {"type": "AfterDuration", "duration": "PT44M55S"}
                }
            }});
            req.set_body(serde_json::to_vec(&body).unwrap());
            let r = pipeline
                .send(&Context::new(), &mut req, None)
                .await
                .unwrap();
            assert_eq!(u16::from(r.status()), 201);
        })
    });
    group.bench_function("raw_pipeline_put_get", |b| {
        b.to_async(&rt).iter(|| async {
            let url = Url::parse(&format!(
                "{}{}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/{}?api-version=2020-10-01",
                fake.url(),
                scope(),
                uuid::Uuid::new_v4()
            ))
            .unwrap();
            let mut req = Request::new(url, Method::Put);
            req.insert_header("content-type", "application/json");
            let body = json!({"properties": {
                "principalId": principal(),
                "roleDefinitionId": reader_role(),
                "requestType": "AdminAssign",
                "justification": "bench",
                "ticketInfo": {"ticketNumber": "BENCH-1", "ticketSystem": "jit"},
                "scheduleInfo": {
                    "startDateTime": clock.now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "expiration": {"type": "AfterDuration", "duration": "PT44M55S"}
                }
            }});
            req.set_body(serde_json::to_vec(&body).unwrap());
            let r = pipeline
                .send(&Context::new(), &mut req, None)
                .await
                .unwrap();
            assert_eq!(u16::from(r.status()), 201);
            let answer: serde_json::Value =
                serde_json::from_slice(r.body().as_ref()).unwrap();
            let schedule = answer["properties"]["targetRoleAssignmentScheduleId"]
                .as_str()
                .unwrap();
            let url = Url::parse(&format!(
                "{}{}/providers/Microsoft.Authorization/roleAssignmentSchedules/{schedule}?api-version=2020-10-01",
                fake.url(),
                scope(),
            ))
            .unwrap();
            let mut get = Request::new(url, Method::Get);
            let r = pipeline
                .send(&Context::new(), &mut get, None)
                .await
                .unwrap();
            assert_eq!(u16::from(r.status()), 200);
            let s: serde_json::Value = serde_json::from_slice(r.body().as_ref()).unwrap();
            assert!(s["properties"]["endDateTime"].is_string());
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
