//! jit-aws `issue` against a raw `aws-sdk-sts` `AssumeRole` with the same
//! parameters, in one run against the same moto server.
//!
//! ```sh
//! bash scripts/moto.sh start && eval "$(bash scripts/moto.sh env)"
//! cargo bench -p jit-aws --bench assume_role
//! ```
//!
//! Without `JIT_TEST_MOTO_URL` the bench starts moto itself through
//! `scripts/moto.sh`. The difference between the two is jit-aws's own work:
//! parsing and checking the target, the window and the derived names and
//! tags, the role cache lookup (`iam:GetRole` is cached, so it is not in the
//! loop), mapping the answer and recording the grant.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sts::types::Tag;
use chrono::{TimeDelta, Utc};
use criterion::{criterion_group, criterion_main, Criterion};
use jit_aws::{AwsConfig, AwsProvider};
use jit_core::{Entitlement, GrantDuration, GrantId, GrantSpec, Principal, Provider, RequestId};
use serde_json::json;

fn moto_url() -> String {
    if let Ok(u) = std::env::var("JIT_TEST_MOTO_URL") {
        if !u.is_empty() {
            return u;
        }
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let st = Command::new("bash")
        .arg(root.join("scripts/moto.sh"))
        .arg("start")
        .status()
        .expect("cannot run scripts/moto.sh");
    assert!(st.success(), "moto did not start");
    let port = std::fs::read_to_string(root.join("target/moto/port")).unwrap();
    format!("http://127.0.0.1:{}", port.trim())
}

async fn sdk(url: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(jit_aws::client::http_client())
        .region(Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(aws_credential_types::Credentials::new(
            "AKIABENCH",
            "bench",
            None,
            None,
            "bench",
        ))
        .load()
        .await
}

fn spec(role_arn: &str) -> GrantSpec {
    let now = Utc::now();
    GrantSpec {
        grant_id: GrantId::new(),
        request_id: RequestId::new(),
        subject: Principal::new("bench@example.com").unwrap(),
        entitlement: Entitlement {
            id: "bench".into(),
            description: String::new(),
            provider: "aws".into(),
            target: json!({"role_arn": role_arn}),
            max_duration: GrantDuration::new(Duration::from_secs(3600)).unwrap(),
        },
        starts_at: now,
        ends_at: now + TimeDelta::minutes(30),
        justification: "bench".into(),
        ticket: Some("BENCH-1".into()),
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = moto_url();
    let (provider, sts, role_arn) = rt.block_on(async {
        let sdk = sdk(&url).await;
        let trust = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Principal": {"AWS": "*"}, "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"]}]});
        let role = aws_sdk_iam::Client::new(&sdk)
            .create_role()
            .role_name(format!("jit-bench-{}", uuid::Uuid::new_v4().simple()))
            .assume_role_policy_document(trust.to_string())
            .send()
            .await
            .unwrap();
        let role_arn = role.role().unwrap().arn().to_string();
        let provider = AwsProvider::builder(AwsConfig::default().with_role_chaining(false))
            .sdk_config(sdk.clone())
            .build()
            .await
            .unwrap();
        // Warm the role cache, as in a running broker.
        provider.issue(&spec(&role_arn)).await.unwrap();
        (Arc::new(provider), aws_sdk_sts::Client::new(&sdk), role_arn)
    });

    let mut g = c.benchmark_group("assume_role");
    g.sample_size(40)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(2));
    g.bench_function("jit_aws_issue", |b| {
        b.to_async(&rt).iter(|| {
            let p = provider.clone();
            let s = spec(&role_arn);
            async move { p.issue(&s).await.unwrap() }
        })
    });
    g.bench_function("raw_sdk_assume_role", |b| {
        b.to_async(&rt).iter(|| {
            let sts = sts.clone();
            let s = spec(&role_arn);
            let role_arn = role_arn.clone();
            async move {
                // The same parameters jit-aws sends for this spec.
                let tag = |k: &str, v: String| Tag::builder().key(k).value(v).build().unwrap();
                sts.assume_role()
                    .role_arn(role_arn)
                    .role_session_name(s.external_name())
                    .duration_seconds(1794)
                    .source_identity("bench@example.com")
                    .tags(tag("jit:grant", s.grant_id.to_string()))
                    .tags(tag("jit:request", s.request_id.to_string()))
                    .tags(tag("jit:entitlement", "bench".into()))
                    .tags(tag("jit:requester", "bench@example.com".into()))
                    .tags(tag("jit:ticket", "BENCH-1".into()))
                    .send()
                    .await
                    .unwrap()
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
