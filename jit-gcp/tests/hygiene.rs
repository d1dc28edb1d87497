//! Hygiene through jit-core's reaper: expired `jit-` bindings are pruned on
//! the reaper's cadence, each removal lands in its grant's audit trail, and
//! nothing else in the policy changes by a byte. A failing hygiene run is
//! counted and never stops the tick.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use chrono::TimeDelta;
use common::*;
use jit_core::store::audit_all;
use jit_core::testing::fake::Fault;
use jit_core::{
    AccessRequest, AuditKind, Broker, CataloguePolicy, GrantId, MemoryStore, Principal, Provider,
    Reaper, State,
};
use jit_gcp::{binding, Mode};
use serde_json::{json, Value};

fn catalogue() -> CataloguePolicy {
    CataloguePolicy::from_toml_str(&format!(
        r#"
        [[entitlements]]
        id = "storage-admin"
        provider = "gcp"
        max_duration = "4h"
        target = {{ resource = "{PROJECT}", role = "{ROLE}" }}
        [entitlements.eligible]
        groups = ["oncall"]
        [entitlements.auto_approve]
        groups = ["oncall"]
        "#
    ))
    .unwrap()
}

fn person(id: &str, member: &str) -> Principal {
    Principal::new(id)
        .unwrap()
        .with_group("oncall")
        .with_attribute("gcp_member", member)
}

fn titled(bindings: &[Value], title: &str) -> Option<Value> {
    bindings
        .iter()
        .find(|b| b["condition"]["title"] == title)
        .cloned()
}

async fn setup(env: &Env) -> (Broker, Arc<MemoryStore>, Arc<jit_gcp::GcpProvider>) {
    let provider = env.provider(Mode::Binding).await;
    let store = Arc::new(MemoryStore::new());
    let broker = Broker::builder(store.clone(), Arc::new(catalogue()))
        .provider(provider.clone())
        .clock(Arc::new(env.clock.clone()))
        .build()
        .unwrap();
    (broker, store, provider)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_prunes_expired_bindings_audits_them_and_touches_nothing_else() {
    let env = env();
    let now = env.clock_now();
    // Someone else's bindings, and an expired `jit-` binding of a grant this
    // broker never issued (another deployment sharing the project).
    let foreign_title = binding::title(GrantId::new());
    let unrelated = vec![
        json!({"role": "roles/viewer", "members": ["user:bob@example.com", "group:ops@example.com"]}),
        json!({"role": ROLE, "members": ["user:carol@example.com"], "condition": {
            "title": "bucket a", "description": "not ours",
            "expression": "resource.name.startsWith(\"projects/_/buckets/a\")"}}),
    ];
    let orphan = json!({"role": "roles/storage.viewer", "members": ["user:dave@example.com"], "condition": {
        "title": foreign_title, "description": "someone else's jit grant",
        "expression": binding::expression(now - TimeDelta::hours(2))}});
    let mut seeded = unrelated.clone();
    seeded.push(orphan);
    env.fake.put_bindings(PROJECT, seeded);

    let (broker, store, provider) = setup(&env).await;
    // The catalogue names the project: hygiene knows it before any issue.
    assert_eq!(provider.hygiene_resources(), vec![PROJECT.to_string()]);
    assert!(provider.capabilities().tidy);

    let alice = person("sub-alice", MEMBER);
    let erin = person("sub-erin", "user:erin@example.com");
    let short = broker
        .submit(
            &alice,
            AccessRequest::new("storage-admin", "30m".parse().unwrap(), "INC-1: fix it"),
        )
        .await
        .unwrap();
    let long = broker
        .submit(
            &erin,
            AccessRequest::new("storage-admin", "3h".parse().unwrap(), "INC-2: migrate"),
        )
        .await
        .unwrap();
    assert_eq!(short.record.state, State::Active, "{:?}", short.record.note);
    assert_eq!(long.record.state, State::Active, "{:?}", long.record.note);
    let short_title = binding::title(short.record.grant_id().unwrap());
    let long_title = binding::title(long.record.grant_id().unwrap());
    let before = env.fake.bindings(PROJECT);
    let live_before = titled(&before, &long_title).expect("the long grant's binding");
    assert!(titled(&before, &short_title).is_some());

    env.clock.advance(TimeDelta::minutes(31));
    // Native expiry: Google stops honouring it, but keeps the binding.
    assert!(!env.fake.holds(PROJECT, ROLE, MEMBER));
    assert!(titled(&env.fake.bindings(PROJECT), &short_title).is_some());

    let mut reaper = Reaper::new(broker.clone());
    let report = reaper.tick().await.unwrap();
    assert_eq!(report.expired, 1, "{report:?}");
    assert_eq!(report.tidied, 2, "ours and the orphan: {report:?}");
    assert_eq!(report.tidy_failed, 0, "{report:?}");

    let after = env.fake.bindings(PROJECT);
    assert!(
        titled(&after, &short_title).is_none(),
        "expired binding kept"
    );
    assert!(titled(&after, &foreign_title).is_none(), "orphan kept");
    assert_eq!(
        titled(&after, &long_title),
        Some(live_before),
        "the live jit binding changed"
    );
    let mut rest: Vec<Value> = after
        .into_iter()
        .filter(|b| b["condition"]["title"] != long_title.as_str())
        .collect();
    // Compared as JSON values, in a canonical order: every role, member and
    // condition field the same. Key order is not compared: the SDK writes a
    // condition's fields in its own order, and serde_json keeps insertion
    // order in builds where another crate turns on `preserve_order`
    // (jit-core's `cedar` feature).
    let by_role_and_title = |b: &Value| {
        (
            b["role"].as_str().unwrap_or_default().to_string(),
            b["condition"]["title"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };
    rest.sort_by_key(by_role_and_title);
    let mut want = unrelated.clone();
    want.sort_by_key(by_role_and_title);
    assert_eq!(rest, want, "unrelated bindings changed");
    assert!(env.fake.holds(PROJECT, ROLE, "user:erin@example.com"));
    env.assert_schema_clean();

    // The removal is in the short grant's own trail, and only there.
    let chain = audit_all(store.as_ref()).await.unwrap();
    let tidied: Vec<_> = chain
        .iter()
        .filter(|r| r.event.kind == AuditKind::Tidied)
        .collect();
    assert_eq!(tidied.len(), 1, "exactly one attributed removal");
    let t = &tidied[0].event;
    assert_eq!(t.request_id, short.record.id);
    assert_eq!(t.grant_id, short.record.grant_id());
    assert_eq!(t.state, State::Expired);
    assert_eq!(t.details["provider"], "gcp");
    assert_eq!(t.details["resource"], PROJECT);
    assert_eq!(t.details["external_id"], short_title.as_str());
    assert_eq!(t.details["removed"]["role"], ROLE);
    assert_eq!(t.details["removed"]["member"], MEMBER);
    assert!(broker.verify_audit().await.unwrap().is_ok());
    assert_eq!(
        broker.get(short.record.id).await.unwrap().state,
        State::Expired
    );

    // Not every tick: the default cadence skips the next one.
    env.clock.advance(TimeDelta::hours(3));
    let calls = env.fake.calls("getIamPolicy");
    let report = reaper.tick().await.unwrap();
    assert_eq!(report.expired, 1);
    assert_eq!(report.tidied, 0);
    assert_eq!(
        env.fake.calls("getIamPolicy"),
        calls,
        "hygiene ran off cadence"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_hygiene_run_is_counted_and_never_stops_the_tick() {
    let env = env();
    let (broker, store, _provider) = setup(&env).await;
    let alice = person("sub-alice", MEMBER);
    let out = broker
        .submit(
            &alice,
            AccessRequest::new("storage-admin", "30m".parse().unwrap(), "INC-3: look"),
        )
        .await
        .unwrap();
    let title = binding::title(out.record.grant_id().unwrap());
    env.clock.advance(TimeDelta::minutes(31));
    let denied = env.server.inject(
        Fault::respond(403)
            .path_contains(":getIamPolicy")
            .json(json!({"error": {"code": 403, "message": "the caller does not have permission", "status": "PERMISSION_DENIED"}}))
            .times(1),
    );
    let mut reaper = Reaper::new(broker.clone()).tidy_every(1);
    let report = reaper.tick().await.unwrap();
    assert_eq!(denied.fired(), 1);
    assert_eq!(report.expired, 1, "expiry still ran: {report:?}");
    assert_eq!(report.tidy_failed, 1, "{report:?}");
    assert_eq!(report.tidied, 0);
    assert!(titled(&env.fake.bindings(PROJECT), &title).is_some());
    // The next run prunes it.
    let report = reaper.tick().await.unwrap();
    assert_eq!((report.tidied, report.tidy_failed), (1, 0), "{report:?}");
    assert!(titled(&env.fake.bindings(PROJECT), &title).is_none());
    let chain = audit_all(store.as_ref()).await.unwrap();
    assert_eq!(
        chain
            .iter()
            .filter(|r| r.event.kind == AuditKind::Tidied)
            .count(),
        1
    );
    assert!(broker.verify_audit().await.unwrap().is_ok());
}

#[tokio::test]
async fn token_mode_has_no_hygiene_and_configured_resources_are_visited() {
    let env = env();
    let token = env.provider(Mode::Token).await;
    assert!(!token.capabilities().tidy);
    assert!(token.tidy(5).await.unwrap().removed.is_empty());
    // A configured resource is visited although no entitlement names it.
    let now = env.clock_now();
    let t = binding::title(GrantId::new());
    env.fake.put_bindings(
        "folders/123456789012",
        vec![json!({"role": ROLE, "members": [MEMBER], "condition": {
            "title": t, "expression": binding::expression(now - TimeDelta::minutes(1))}})],
    );
    let p = env
        .provider_with(
            env.config(Mode::Binding)
                .with_hygiene_resources(["folders/123456789012"]),
        )
        .await;
    let report = p.tidy(5).await.unwrap();
    assert_eq!(report.removed.len(), 1);
    assert_eq!(report.removed[0].resource, "folders/123456789012");
    assert_eq!(report.removed[0].external_id, t);
    assert!(env.fake.bindings("folders/123456789012").is_empty());
}
