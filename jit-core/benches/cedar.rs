//! Catalogue decision against Cedar decision over catalogues of growing
//! size, and Cedar's raw `Authorizer::is_authorized` on the same policy set,
//! in one run (ratios are what to compare across machines).
//!
//! Both policies say the same thing for every entitlement `svc-N:read`:
//! eligible by id `owner-N` or the groups `team-(N % 50)` and `engineering`;
//! auto-approved for 15 minutes or less when the requester is in `oncall`
//! with the attribute `oncall = "true"`; otherwise one approval from
//! `sre-leads`. The Cedar set has two policies per entitlement, as a team
//! writing Cedar by hand would. Each iteration decides one request for the
//! entitlement in the middle, by an on-call engineer, so every step runs:
//!
//! - `catalogue`: `CataloguePolicy::evaluate`;
//! - `cedar`: `CedarPolicy::evaluate` without a risk score (so the risk
//!   guard asks Cedar a second time, as it does for every unscored request
//!   that is not denied);
//! - `cedar_scored_0`: the same with a risk score of 0 (one question);
//! - `raw_is_authorized`: `Authorizer::is_authorized` alone on a request and
//!   entities built beforehand.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Duration;

use cedar_policy::Authorizer;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use jit_core::policy::cedar::{CedarAction, CedarPolicy};
use jit_core::policy::{CataloguePolicy, Policy, PolicyContext};
use jit_core::risk::RiskAssessment;
use jit_core::types::{AccessRequest, Principal, Verdict};

fn id(i: usize) -> String {
    format!("svc-{i}:read")
}

fn catalogue(n: usize) -> String {
    let mut text = String::from("[settings]\npending_ttl = \"4h\"\n");
    for i in 0..n {
        write!(
            text,
            r#"
[[entitlements]]
id = "{id}"
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
            id = id(i),
            g = i % 50
        )
        .unwrap();
    }
    text
}

fn cedar_entitlements(n: usize) -> String {
    let mut text = String::from("[settings]\npending_ttl = \"4h\"\n");
    for i in 0..n {
        write!(
            text,
            r#"
[[entitlements]]
id = "{id}"
description = "Read access to service {i}"
provider = "local"
max_duration = "1h"
target = {{ audience = "svc-{i}", scopes = ["read"] }}
justification_pattern = "^(INC|CHG)-[0-9]+: .{{10,}}"
ticket_pattern = "^INC-[0-9]+$"

[entitlements.approval]
groups = ["sre-leads"]
quorum = 1
"#,
            id = id(i)
        )
        .unwrap();
    }
    text
}

fn cedar_policies(n: usize) -> String {
    let mut text = String::new();
    for i in 0..n {
        write!(
            text,
            r#"
@id("{id}: eligible")
permit(principal, action == Jit::Action::"request", resource == Jit::Entitlement::"{id}")
when {{
  principal == Jit::User::"owner-{i}" ||
  principal in Jit::Group::"team-{g}" ||
  principal in Jit::Group::"engineering"
}};

@id("{id}: on call, short")
@decision("auto_approve")
permit(principal in Jit::Group::"oncall", action == Jit::Action::"request", resource == Jit::Entitlement::"{id}")
when {{
  context.duration_secs <= 900 &&
  principal.hasTag("oncall") && principal.getTag("oncall") == "true"
}};
"#,
            id = id(i),
            g = i % 50
        )
        .unwrap();
    }
    text
}

fn decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("cedar_vs_catalogue");
    group.sample_size(20);
    let requester = Principal::new("bob")
        .unwrap()
        .with_group("engineering")
        .with_group("web")
        .with_group("oncall")
        .with_attribute("oncall", "true");
    let ctx = PolicyContext::new(chrono::Utc::now(), Duration::from_secs(12 * 3600));
    let scored = ctx
        .clone()
        .with_risk(RiskAssessment::from_signals("bench", vec![]));
    let authorizer = Authorizer::new();
    for n in [10usize, 1_000, 10_000] {
        let catalogue = CataloguePolicy::from_toml_str(&catalogue(n)).unwrap();
        let cedar = CedarPolicy::from_strs(&cedar_entitlements(n), &cedar_policies(n)).unwrap();
        let id = id(n / 2);
        let entitlement = catalogue.entitlement(&id).unwrap();
        let request = AccessRequest::new(
            &id,
            "10m".parse().unwrap(),
            "INC-42: restore the orders table",
        )
        .with_ticket("INC-42");
        // Guard against benchmarking an early exit or a disagreement.
        for (name, policy, ctx) in [
            ("catalogue", &catalogue as &dyn Policy, &ctx),
            ("cedar", &cedar, &ctx),
            ("cedar scored 0", &cedar, &scored),
        ] {
            let d = policy
                .evaluate(&requester, &request, &entitlement, ctx)
                .unwrap();
            assert_eq!(d.verdict, Verdict::AutoApprove, "{name}: {:?}", d.reasons);
        }
        let (raw_request, raw_entities) = cedar
            .cedar_request(
                CedarAction::Request,
                &requester,
                &request,
                &entitlement,
                request.duration,
                &ctx,
            )
            .unwrap();
        let raw = authorizer.is_authorized(&raw_request, cedar.policy_set(), &raw_entities);
        assert_eq!(raw.decision(), cedar_policy::Decision::Allow);
        assert_eq!(raw.diagnostics().reason().count(), 2);

        group.bench_with_input(BenchmarkId::new("catalogue", n), &n, |b, _| {
            b.iter(|| {
                catalogue
                    .evaluate(
                        black_box(&requester),
                        black_box(&request),
                        black_box(&entitlement),
                        &ctx,
                    )
                    .unwrap()
            })
        });
        group.bench_with_input(BenchmarkId::new("cedar", n), &n, |b, _| {
            b.iter(|| {
                cedar
                    .evaluate(
                        black_box(&requester),
                        black_box(&request),
                        black_box(&entitlement),
                        &ctx,
                    )
                    .unwrap()
            })
        });
        group.bench_with_input(BenchmarkId::new("cedar_scored_0", n), &n, |b, _| {
            b.iter(|| {
                cedar
                    .evaluate(
                        black_box(&requester),
                        black_box(&request),
                        black_box(&entitlement),
                        &scored,
                    )
                    .unwrap()
            })
        });
        group.bench_with_input(BenchmarkId::new("raw_is_authorized", n), &n, |b, _| {
            b.iter(|| {
                authorizer.is_authorized(
                    black_box(&raw_request),
                    cedar.policy_set(),
                    black_box(&raw_entities),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
