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
use jit_azure::{AzureProvider, Mode};
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

    let url = fake.url().to_string();

    // Paired rounds first: the three calls in turn, their order rotating,
    // so load that drifts during the run (a shared machine) hits all three
    // alike; the per-round ratio's median is the robust figure.
    let rounds = 300;
    let mut times: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    rt.block_on(async {
        for r in 0..rounds + 20 {
            let mut round = [0.0; 3];
            for k in 0..3 {
                let which = (r + k) % 3;
                let started = std::time::Instant::now();
                match which {
                    0 => issue_once(&provider, &clock).await,
                    1 => {
                        raw_put(&pipeline, &url, &clock).await;
                    }
                    _ => raw_put_get(&pipeline, &url, &clock).await,
                }
                round[which] = started.elapsed().as_secs_f64();
            }
            // The first rounds warm the caches (token, role, policy).
            if r >= 20 {
                for (t, x) in times.iter_mut().zip(round) {
                    t.push(x);
                }
            }
        }
    });
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratio = |a: &[f64], b: &[f64]| median(a.iter().zip(b).map(|(x, y)| x / y).collect());
    println!(
        "paired, {rounds} rounds, medians: jit_azure_issue {:.3} ms, raw_pipeline_put {:.3} ms, raw_pipeline_put_get {:.3} ms; per-round ratio medians: issue/put_get {:.2}x, issue/put {:.2}x",
        median(times[0].clone()) * 1e3,
        median(times[1].clone()) * 1e3,
        median(times[2].clone()) * 1e3,
        ratio(&times[0], &times[2]),
        ratio(&times[0], &times[1]),
    );

    let mut group = c.benchmark_group("azure_issue");
    group.bench_function("jit_azure_issue", |b| {
        b.to_async(&rt).iter(|| issue_once(&provider, &clock))
    });
    group.bench_function("raw_pipeline_put", |b| {
        b.to_async(&rt).iter(|| async {
            raw_put(&pipeline, &url, &clock).await;
        })
    });
    group.bench_function("raw_pipeline_put_get", |b| {
        b.to_async(&rt)
            .iter(|| raw_put_get(&pipeline, &url, &clock))
    });
    group.finish();
}

fn principal() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn issue_once(provider: &AzureProvider, clock: &ManualClock) {
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
    provider.issue(&spec).await.unwrap();
}

/// The schedule request PUT, raw; returns the answer.
async fn raw_put(pipeline: &Pipeline, base: &str, clock: &ManualClock) -> serde_json::Value {
    let url = Url::parse(&format!(
        "{base}{}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/{}?api-version=2020-10-01",
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
    serde_json::from_slice(r.body().as_ref()).unwrap()
}

/// The PUT and the GET of the schedule its answer names, raw.
async fn raw_put_get(pipeline: &Pipeline, base: &str, clock: &ManualClock) {
    let answer = raw_put(pipeline, base, clock).await;
    let schedule = answer["properties"]["targetRoleAssignmentScheduleId"]
        .as_str()
        .unwrap();
    let url = Url::parse(&format!(
        "{base}{}/providers/Microsoft.Authorization/roleAssignmentSchedules/{schedule}?api-version=2020-10-01",
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
}

criterion_group!(benches, bench);
criterion_main!(benches);
