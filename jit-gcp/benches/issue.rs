//! jit-gcp's binding issue and revoke against the same fake, next to the
//! same calls sent raw through the same clients (the baseline, measured in
//! the same run): what the provider adds on top of the two
//! read-modify-writes it cannot avoid.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use criterion::{criterion_group, criterion_main, Criterion};
use google_cloud_iam_v1::model::Policy;
use jit_core::testing::fake::FakeServer;
use jit_core::{
    Clock, Entitlement, GrantDuration, GrantId, GrantSpec, ManualClock, Principal, Provider,
    RequestId,
};
use jit_gcp::testing::{router, FakeGcp, TestKey};
use jit_gcp::{binding, GcpConfig, GcpProvider, Mode, Resource};

const PROJECT: &str = "projects/bench-1234";
const ROLE: &str = "roles/storage.admin";
const MEMBER: &str = "user:alice@example.com";

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let clock = ManualClock::starting_now();
    let fake = FakeGcp::new(Arc::new(clock.clone()));
    fake.add_resource(PROJECT);
    let key = TestKey::generate("bench@bench-1234.iam.gserviceaccount.com");
    fake.register_key(&key);
    let server = FakeServer::builder()
        .clock(clock.clone())
        .start(router(fake.clone()))
        .unwrap();
    let provider = rt.block_on(async {
        GcpProvider::builder(
            GcpConfig::default()
                .with_mode(Mode::Binding)
                .with_endpoint_url(server.http_url()),
        )
        .credentials(key.credentials(&format!("{}/token", server.http_url())))
        .clock(Arc::new(clock.clone()))
        .build()
        .await
        .unwrap()
    });
    let entitlement = Entitlement {
        id: "bench".into(),
        description: String::new(),
        provider: "gcp".into(),
        target: serde_json::json!({"resource": PROJECT, "role": ROLE}),
        max_duration: GrantDuration::new(Duration::from_secs(3600)).unwrap(),
    };
    let subject = Principal::new("sub-alice")
        .unwrap()
        .with_attribute("gcp_member", MEMBER);
    let resource = Resource::parse(PROJECT).unwrap();

    let mut group = c.benchmark_group("gcp_binding");
    group.bench_function("jit_gcp_issue_and_revoke", |b| {
        b.to_async(&rt).iter(|| async {
            let now = clock.now();
            let spec = GrantSpec {
                grant_id: GrantId::new(),
                request_id: RequestId::new(),
                subject: subject.clone(),
                entitlement: entitlement.clone(),
                starts_at: now,
                ends_at: now + TimeDelta::minutes(30),
                justification: "bench".into(),
                ticket: None,
            };
            let issued = provider.issue(&spec).await.unwrap();
            provider.revoke(&issued.grant).await.unwrap();
        })
    });
    group.bench_function("raw_get_set_twice", |b| {
        b.to_async(&rt).iter(|| async {
            let clients = provider.clients();
            let title = binding::title(GrantId::new());
            let mut p: Policy = clients.get_iam_policy(&resource).await.unwrap();
            binding::add(
                &mut p,
                ROLE,
                MEMBER,
                &title,
                "bench",
                clock.now() + TimeDelta::minutes(30),
            )
            .unwrap();
            clients.set_iam_policy(&resource, p).await.unwrap();
            let mut p: Policy = clients.get_iam_policy(&resource).await.unwrap();
            binding::remove(&mut p, &title);
            p.version = binding::POLICY_VERSION;
            clients.set_iam_policy(&resource, p).await.unwrap();
        })
    });
    group.finish();
    drop(server);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
