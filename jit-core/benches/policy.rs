//! Policy decision latency over catalogues of growing size.
//!
//! The catalogue is generated and loaded outside the timed loop; each
//! iteration evaluates one request for the entitlement in the middle of the
//! catalogue, for a requester eligible through a group and an auto-approve
//! rule that holds, so every step of the evaluation runs.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use jit_core::policy::{CataloguePolicy, Policy, PolicyContext};
use jit_core::types::{AccessRequest, Principal, Verdict};

fn catalogue(n: usize) -> String {
    let mut text =
        String::from("[settings]\npending_ttl = \"4h\"\n\n[admins]\ngroups = [\"secops\"]\n");
    for i in 0..n {
        write!(
            text,
            r#"
[[entitlements]]
id = "svc-{i}:read"
description = "Read access to service {i}"
provider = "local"
max_duration = "1h"
target = {{ audience = "svc-{i}", scopes = ["read"] }}
justification_pattern = "^(INC|CHG)-[0-9]+: .{{10,}}"
ticket_pattern = "^INC-[0-9]+$"

[entitlements.eligible]
ids = ["owner-{i}"]
groups = ["team-{g}", "engineering"]

[entitlements.approval]
groups = ["sre-leads"]
quorum = 1

[entitlements.auto_approve]
max_duration = "15m"
groups = ["oncall"]
attributes = {{ oncall = "true" }}
"#,
            g = i % 50
        )
        .unwrap();
    }
    text
}

fn decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy_evaluate");
    let requester = Principal::new("bob")
        .unwrap()
        .with_alias("bob@example.com")
        .with_group("Engineering")
        .with_group("web")
        .with_group("OnCall")
        .with_attribute("oncall", "true");
    let ctx = PolicyContext::new(chrono::Utc::now(), Duration::from_secs(12 * 3600));
    for n in [10usize, 1_000, 10_000] {
        let policy = CataloguePolicy::from_toml_str(&catalogue(n)).unwrap();
        let id = format!("svc-{}:read", n / 2);
        let entitlement = policy.entitlement(&id).unwrap();
        let request = AccessRequest::new(
            &id,
            "10m".parse().unwrap(),
            "INC-42: restore the orders table",
        )
        .with_ticket("INC-42");
        // Guard against benchmarking an early exit.
        let d = policy
            .evaluate(&requester, &request, &entitlement, &ctx)
            .unwrap();
        assert_eq!(d.verdict, Verdict::AutoApprove, "{:?}", d.reasons);

        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                policy
                    .evaluate(
                        black_box(&requester),
                        black_box(&request),
                        black_box(&entitlement),
                        &ctx,
                    )
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
