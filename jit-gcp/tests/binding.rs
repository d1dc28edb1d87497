//! Binding mode against the fake, through the real clients and auth flow.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use chrono::TimeDelta;
use common::*;
use jit_core::testing::provider::{run_all, spec};
use jit_core::{Error, Provider};
use jit_gcp::Mode;

#[tokio::test]
async fn conformance_suite_in_binding_mode() {
    let env = env();
    let provider = env.provider(Mode::Binding).await;
    let e = entitlement(provider.as_ref(), binding_target(), 8);
    provider.validate(&e).unwrap();
    let h = env.harness(provider, e);
    run_all(&h).await;
    env.assert_schema_clean();
    assert!(env.fake.calls("setIamPolicy") > 0);
}

#[tokio::test]
async fn revoke_removes_the_binding_at_the_provider() {
    let env = env();
    let provider = env.provider(Mode::Binding).await;
    let e = entitlement(provider.as_ref(), binding_target(), 8);
    let h = env.harness(provider.clone(), e);
    let s = spec(&h, TimeDelta::hours(1));
    let issued = provider.issue(&s).await.unwrap();
    assert!(env.fake.holds(PROJECT, ROLE, MEMBER));
    let title = issued.grant.external_id.clone();
    assert!(env
        .fake
        .bindings(PROJECT)
        .iter()
        .any(|b| b["condition"]["title"] == title.as_str()));
    provider.revoke(&issued.grant).await.unwrap();
    // Fails if the binding silently stayed: nobody holds the role any more,
    // and no binding carries the grant's title.
    assert!(
        !env.fake.holds(PROJECT, ROLE, MEMBER),
        "the binding survived its revocation"
    );
    assert!(env
        .fake
        .bindings(PROJECT)
        .iter()
        .all(|b| b["condition"]["title"] != title.as_str()));
    env.assert_schema_clean();
}

#[tokio::test]
async fn a_concurrent_writer_loses_nothing_and_ours_lands() {
    let env = env();
    let provider = env.provider(Mode::Binding).await;
    let e = entitlement(provider.as_ref(), binding_target(), 8);
    let h = env.harness(provider.clone(), e);
    let theirs = serde_json::json!({"role": "roles/viewer", "members": ["user:bob@example.com"]});
    let t = theirs.clone();
    // Another writer changes the policy between our read and our write.
    env.fake
        .interleave_before_next_set(PROJECT, move |b| b.push(t));
    let s = spec(&h, TimeDelta::hours(1));
    provider.issue(&s).await.unwrap();
    assert_eq!(env.fake.conflicts(), 1, "the stale write was not refused");
    assert_eq!(
        env.fake.calls("getIamPolicy"),
        2,
        "the policy was not read again"
    );
    let stored = env.fake.bindings(PROJECT);
    assert!(
        stored.contains(&theirs),
        "the other writer's binding was lost: {stored:?}"
    );
    assert!(
        env.fake.holds(PROJECT, ROLE, MEMBER),
        "our binding did not land"
    );
    env.assert_schema_clean();
}

#[tokio::test]
async fn endless_contention_is_a_transient_error_after_bounded_retries() {
    let env = env();
    let provider = env
        .provider_with(env.config(Mode::Binding).with_conflict_retries(3))
        .await;
    let e = entitlement(provider.as_ref(), binding_target(), 8);
    let h = env.harness(provider.clone(), e);
    for i in 0..5 {
        env.fake.interleave_before_next_set(PROJECT, move |b| {
            b.push(serde_json::json!({"role": "roles/viewer", "members": [format!("user:u{i}@example.com")]}))
        });
    }
    let s = spec(&h, TimeDelta::hours(1));
    let err = provider.issue(&s).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("3 times"), "{err}");
    assert_eq!(env.fake.calls("setIamPolicy"), 3);
    assert!(!env.fake.holds(PROJECT, ROLE, MEMBER));
}

#[tokio::test]
async fn an_unconditional_holder_is_refused_before_writing() {
    let env = env();
    env.fake.put_bindings(
        PROJECT,
        vec![serde_json::json!({"role": ROLE, "members": [MEMBER]})],
    );
    let provider = env.provider(Mode::Binding).await;
    let e = entitlement(provider.as_ref(), binding_target(), 8);
    let h = env.harness(provider.clone(), e);
    let err = provider
        .issue(&spec(&h, TimeDelta::hours(1)))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::ProviderRejected { message, .. } if message.contains("without a condition")),
        "{err}"
    );
    assert_eq!(env.fake.calls("setIamPolicy"), 0, "something was written");
}

#[tokio::test]
async fn the_conditional_limit_per_role_and_member_is_refused_before_writing() {
    let env = env();
    let provider = env.provider(Mode::Binding).await;
    let e = entitlement(provider.as_ref(), binding_target(), 8);
    let h = env.harness(provider.clone(), e);
    for _ in 0..20 {
        provider
            .issue(&spec(&h, TimeDelta::hours(1)))
            .await
            .unwrap();
    }
    let writes = env.fake.calls("setIamPolicy");
    let err = provider
        .issue(&spec(&h, TimeDelta::hours(1)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("limit is 20"), "{err}");
    assert_eq!(
        env.fake.calls("setIamPolicy"),
        writes,
        "the refused binding was written"
    );
    env.assert_schema_clean();
}

#[tokio::test]
async fn reconciliation_finds_a_binding_written_before_a_crash() {
    let env = env();
    let first = env.provider(Mode::Binding).await;
    let e = entitlement(first.as_ref(), binding_target(), 8);
    let h = env.harness(first.clone(), e.clone());
    let s = spec(&h, TimeDelta::hours(1));
    let issued = first.issue(&s).await.unwrap();
    drop(first); // the process dies before recording the grant
    let second = env.provider(Mode::Binding).await;
    let found = second
        .find(&s)
        .await
        .unwrap()
        .expect("binding not found after restart");
    assert_eq!(found.external_id, issued.grant.external_id);
    assert_eq!(found.expires_at, issued.grant.expires_at);
    second.revoke(&found).await.unwrap();
    assert!(!env.fake.holds(PROJECT, ROLE, MEMBER));
    assert!(second.find(&s).await.unwrap().is_none());
}

#[tokio::test]
async fn pruning_leaves_unrelated_bindings_byte_identical() {
    let env = env();
    let unrelated = vec![
        serde_json::json!({"role": "roles/viewer", "members": ["user:bob@example.com", "group:ops@example.com"]}),
        serde_json::json!({"role": "roles/storage.objectViewer", "members": ["user:carol@example.com"],
            "condition": {"title": "bucket a", "description": "theirs", "expression": "resource.name.startsWith(\"projects/_/buckets/a\")"}}),
    ];
    env.fake.put_bindings(PROJECT, unrelated.clone());
    let provider = env.provider(Mode::Binding).await;
    let e = entitlement(provider.as_ref(), binding_target(), 8);
    let h = env.harness(provider.clone(), e);
    provider
        .issue(&spec(&h, TimeDelta::minutes(30)))
        .await
        .unwrap();
    let live = provider
        .issue(&spec(&h, TimeDelta::hours(3)))
        .await
        .unwrap();
    env.clock.advance(TimeDelta::hours(1));
    let pruned = provider
        .prune_expired(&jit_gcp::Resource::parse(PROJECT).unwrap())
        .await
        .unwrap();
    assert_eq!(pruned.len(), 1);
    let stored = env.fake.bindings(PROJECT);
    // Compared as JSON values: every role, member and condition field the
    // same. Key order is not compared: the SDK writes a condition's fields in
    // its own order, and serde_json keeps insertion order in builds where
    // another crate turns on `preserve_order` (jit-core's `cedar` feature).
    assert_eq!(&stored[..2], &unrelated[..], "unrelated bindings changed");
    assert_eq!(stored.len(), 3);
    assert_eq!(
        stored[2]["condition"]["title"],
        live.grant.external_id.as_str()
    );
    env.assert_schema_clean();
}

/// Refusals happen before any call: a provider pointed at a tripwire.
#[tokio::test]
async fn refusals_make_no_remote_call() {
    use jit_core::testing::tripwire::Tripwire;
    let env = env();
    let tripwire = Tripwire::new();
    let provider = env
        .provider_with(env.config(Mode::Binding).with_endpoint_url(tripwire.url()))
        .await;
    let e = entitlement(provider.as_ref(), binding_target(), 8);
    let h = env.harness(provider.clone(), e.clone());
    // No member attribute.
    let mut s = spec(&h, TimeDelta::hours(1));
    s.subject = jit_core::Principal::new("sub-bob").unwrap();
    let err = provider.issue(&s).await.unwrap_err();
    assert!(err.to_string().contains("gcp_member"), "{err}");
    // The requester's side to fix, not the cloud's: a 400, not a 502.
    assert!(
        matches!(
            &err,
            jit_core::Error::InvalidRequest(jit_core::RequestError::NoCloudIdentity { .. })
        ),
        "{err:?}"
    );
    // A public member.
    s.subject = s.subject.with_attribute("gcp_member", "allUsers");
    assert!(provider.issue(&s).await.is_err());
    // A window over the maximum.
    let long = spec(&h, TimeDelta::hours(13));
    assert!(matches!(
        provider.issue(&long).await.unwrap_err(),
        Error::InvalidRequest(_)
    ));
    // A basic role.
    let mut basic = spec(&h, TimeDelta::hours(1));
    basic.entitlement.target = serde_json::json!({"resource": PROJECT, "role": "roles/owner"});
    assert!(matches!(
        provider.issue(&basic).await.unwrap_err(),
        Error::Config(_)
    ));
    tripwire.assert_untouched();
}

/// The broker's credentials never show up in Debug output or errors.
#[tokio::test]
async fn secrets_stay_out_of_debug_and_errors() {
    let env = env();
    let provider = env.provider(Mode::Binding).await;
    let shown = format!("{provider:?} {:?}", provider.config());
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    let key_body = &env.key.private_pem()[40..90];
    assert!(!shown.contains(key_body));
    // A request the fake refuses (a resource it does not know): the error
    // names the call, never the bearer token or the key.
    let e = entitlement(
        provider.as_ref(),
        serde_json::json!({"resource": "projects/unknown-5678", "role": ROLE}),
        8,
    );
    let h = env.harness(provider.clone(), e);
    let err = provider
        .issue(&spec(&h, TimeDelta::hours(1)))
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("PERMISSION_DENIED"), "{text}");
    assert!(!text.contains("Bearer") && !text.contains("eyJ"), "{text}");
    assert!(!text.contains(key_body));
    // What crossed the wire carried a bearer token, redacted in the record.
    let recorded = env.server.requests();
    assert!(!recorded.is_empty());
    assert!(
        recorded.iter().all(|r| !format!("{r:?}").contains("eyJ")),
        "a token reached the request record"
    );
}

/// Folders, organizations and service accounts' own policies go through
/// their own clients and paths (IAM v1 takes the version as a query parameter).
#[tokio::test]
async fn every_resource_kind_round_trips_through_its_client() {
    let env = env();
    let provider = env.provider(Mode::Binding).await;
    let sa_policy = format!("projects/-/serviceAccounts/{SA}");
    for (resource, role) in [
        ("folders/123456789012", "roles/resourcemanager.folderViewer"),
        ("organizations/42", "organizations/42/roles/jitReader"),
        (sa_policy.as_str(), "roles/iam.serviceAccountTokenCreator"),
    ] {
        let e = entitlement(
            provider.as_ref(),
            serde_json::json!({"resource": resource, "role": role}),
            8,
        );
        provider.validate(&e).unwrap();
        let h = env.harness(provider.clone(), e);
        let s = spec(&h, TimeDelta::hours(1));
        let issued = provider.issue(&s).await.unwrap();
        assert!(env.fake.holds(resource, role, MEMBER), "{resource}");
        assert_eq!(
            provider.find(&s).await.unwrap().unwrap().external_id,
            issued.grant.external_id
        );
        provider.revoke(&issued.grant).await.unwrap();
        assert!(!env.fake.holds(resource, role, MEMBER), "{resource}");
    }
    let sa_reads = env
        .server
        .requests_to("POST", "/v1/projects/-/serviceAccounts/")
        .into_iter()
        .filter(|r| r.path.ends_with(":getIamPolicy"))
        .collect::<Vec<_>>();
    assert!(!sa_reads.is_empty());
    for r in sa_reads {
        assert_eq!(
            r.query_param("options.requestedPolicyVersion").as_deref(),
            Some("3"),
            "a service-account policy was read without asking for version 3"
        );
    }
    env.assert_schema_clean();
}
