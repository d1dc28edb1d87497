//! jit-aws against a real moto server (started by `scripts/moto.sh`; the
//! tests fail, never skip, when it cannot start).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use common::*;
use jit_aws::{AwsConfig, AwsProvider, OverRoleMax, RoleArn};
use jit_core::testing::provider::{run_all, spec, ProviderHarness};
use jit_core::{
    Clock, Credentials, Error, GrantSpec, IssuedGrant, ManualClock, Principal, Provider,
    RequestError, SystemClock,
};
use serde_json::json;

async fn provider_with(config: AwsConfig, clock: Arc<dyn Clock>) -> (AwsProvider, CallCounter) {
    let (clients, counter) = counted_clients(&moto_sdk().await);
    let p = AwsProvider::builder(config)
        .clients(clients)
        .clock(clock)
        .build()
        .await
        .unwrap();
    (p, counter)
}

fn harness_for(provider: Arc<AwsProvider>, role_arn: &str) -> ProviderHarness {
    ProviderHarness {
        provider: provider.clone(),
        entitlement: entitlement(
            "aws.conformance",
            json!({"role_arn": role_arn}),
            Duration::from_secs(3600),
        ),
        subject: Principal::new("conformance@example.com").unwrap(),
        clock: Arc::new(SystemClock),
        probe: Arc::new(StsProbe { url: moto_url() }),
        // moto never expires sessions (its auth check ignores `Expiration`,
        // and with auth off it answers for any key), so the expiry probe
        // would test the emulator, not the provider: skipped by passing no
        // clock to advance. Native expiry is STS's own guarantee; what we
        // verify is that the recorded expiry is STS's and within the window.
        advance: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn conformance_suite_passes_against_moto() {
    let sdk = moto_sdk().await;
    let (role_arn, _) = create_role(&sdk, 3600, &open_trust()).await;
    // Role chaining detected through sts:GetCallerIdentity (moto: a user).
    let provider = AwsProvider::builder(AwsConfig::default().with_endpoint_url(moto_url()))
        .sdk_config(sdk)
        .build()
        .await
        .unwrap();
    assert!(!provider.role_chaining());
    let h = harness_for(Arc::new(provider), &role_arn);
    run_all(&h).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn issue_uses_derived_names_and_records_what_sts_returned() {
    let sdk = moto_sdk().await;
    let (role_arn, role_id) = create_role(&sdk, 7200, &open_trust()).await;
    let (p, calls) = provider_with(
        AwsConfig::default().with_role_chaining(false),
        Arc::new(SystemClock),
    )
    .await;
    let h = harness_for(Arc::new(p), &role_arn);
    let s = spec(&h, TimeDelta::minutes(30));
    let issued = h.provider.issue(&s).await.unwrap();
    let g = &issued.grant;
    assert_eq!(g.external_id, s.external_name());
    assert_eq!(g.provider, "aws");
    let d = &g.details;
    assert_eq!(d["role_arn"], role_arn);
    assert_eq!(d["role_id"], role_id);
    assert_eq!(d["session_name"], s.external_name());
    let name = role_arn.rsplit('/').next().unwrap();
    assert_eq!(
        d["assumed_role_arn"],
        format!(
            "arn:aws:sts::{ACCOUNT}:assumed-role/{name}/{}",
            s.external_name()
        )
    );
    assert_eq!(
        d["assumed_role_id"],
        format!("{role_id}:{}", s.external_name())
    );
    assert_eq!(d["source_identity"], "conformance@example.com");
    assert_eq!(d["clamped_to_role_max"], false);
    let Credentials::Aws {
        access_key_id,
        secret_access_key,
        session_token,
        expires_at,
    } = &issued.credentials
    else {
        panic!("not aws credentials");
    };
    assert_eq!(d["access_key_id"], access_key_id.as_str());
    // The grant's end is STS's Expiration, within the window and close to its end.
    assert_eq!(*expires_at, g.expires_at);
    assert!(g.expires_at <= s.ends_at);
    assert!(
        s.ends_at - g.expires_at < TimeDelta::seconds(10),
        "{} vs {}",
        g.expires_at,
        s.ends_at
    );
    // Whole seconds left of the 30-minute window, less the call allowance.
    let ds = d["duration_secs"].as_i64().unwrap();
    assert!((1790..=1794).contains(&ds), "{ds}");
    let text = serde_json::to_string(g).unwrap();
    assert!(!text.contains(secret_access_key.expose()) && !text.contains(session_token.expose()));
    assert!(h.probe.works(&issued.credentials, g).await);
    // One GetRole (then cached), one AssumeRole per issue.
    assert_eq!((calls.get("GetRole"), calls.get("AssumeRole")), (1, 1));
    h.provider
        .issue(&spec(&h, TimeDelta::minutes(20)))
        .await
        .unwrap();
    assert_eq!((calls.get("GetRole"), calls.get("AssumeRole")), (1, 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn role_cache_expires_after_its_ttl() {
    let sdk = moto_sdk().await;
    let (role_arn, _) = create_role(&sdk, 3600, &open_trust()).await;
    let clock = ManualClock::starting_now();
    let (p, calls) = provider_with(
        AwsConfig::default()
            .with_role_chaining(false)
            .with_role_cache_ttl(Duration::from_secs(60)),
        Arc::new(clock.clone()),
    )
    .await;
    let mut h = harness_for(Arc::new(p), &role_arn);
    h.clock = Arc::new(clock.clone());
    h.provider
        .issue(&spec(&h, TimeDelta::minutes(20)))
        .await
        .unwrap();
    h.provider
        .issue(&spec(&h, TimeDelta::minutes(20)))
        .await
        .unwrap();
    assert_eq!(calls.get("GetRole"), 1);
    clock.advance(TimeDelta::seconds(61));
    h.provider
        .issue(&spec(&h, TimeDelta::minutes(20)))
        .await
        .unwrap();
    assert_eq!(calls.get("GetRole"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn windows_longer_than_the_role_allows_are_clamped_or_refused_before_assume_role() {
    let sdk = moto_sdk().await;
    let (role_arn, _) = create_role(&sdk, 3600, &open_trust()).await;

    let (p, calls) = provider_with(
        AwsConfig::default().with_role_chaining(false),
        Arc::new(SystemClock),
    )
    .await;
    let h = harness_for(Arc::new(p), &role_arn);
    let s = spec(&h, TimeDelta::hours(2));
    let issued = h.provider.issue(&s).await.unwrap();
    assert_eq!(issued.grant.details["clamped_to_role_max"], true);
    assert_eq!(issued.grant.details["duration_secs"], 3600);
    let len = issued.grant.expires_at - Utc::now();
    assert!(
        len <= TimeDelta::seconds(3600) && len > TimeDelta::seconds(3590),
        "{len}"
    );

    let (p, calls2) = provider_with(
        AwsConfig::default()
            .with_role_chaining(false)
            .with_over_role_max(OverRoleMax::Refuse),
        Arc::new(SystemClock),
    )
    .await;
    let h = harness_for(Arc::new(p), &role_arn);
    match h.provider.issue(&spec(&h, TimeDelta::hours(2))).await {
        Err(Error::InvalidRequest(RequestError::DurationTooLong { limit, .. })) => {
            assert!(limit.contains("MaxSessionDuration"), "{limit}")
        }
        other => panic!("expected DurationTooLong, got {other:?}"),
    }
    assert_eq!(calls2.get("GetRole"), 1);
    assert_eq!(
        calls2.get("AssumeRole"),
        0,
        "AssumeRole was called for a refused window"
    );
    assert_eq!(calls.get("AssumeRole"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn role_chaining_is_detected_and_caps_at_one_hour() {
    let sdk = moto_sdk().await;
    let (broker_role, _) = create_role(&sdk, 43200, &open_trust()).await;
    let (target_role, _) = create_role(&sdk, 43200, &open_trust()).await;
    // The broker itself runs on an assumed-role session.
    let out = aws_sdk_sts::Client::new(&sdk)
        .assume_role()
        .role_arn(&broker_role)
        .role_session_name("broker")
        .send()
        .await
        .unwrap();
    let c = out.credentials().unwrap();
    let chained = common::sdk(
        &moto_url(),
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token()),
    )
    .await;
    let (clients, calls) = counted_clients(&chained);
    let p = AwsProvider::builder(AwsConfig::default())
        .clients(clients)
        .build()
        .await
        .unwrap();
    assert!(p.role_chaining());
    assert_eq!(calls.get("GetCallerIdentity"), 1);
    assert_eq!(p.capabilities().max_duration, Duration::from_secs(3600));
    let h = harness_for(Arc::new(p), &target_role);
    match h.provider.issue(&spec(&h, TimeDelta::minutes(61))).await {
        Err(Error::InvalidRequest(RequestError::DurationTooLong { limit, .. })) => {
            assert!(limit.contains("role chaining"), "{limit}")
        }
        other => panic!("expected DurationTooLong, got {other:?}"),
    }
    assert_eq!(calls.total(), 1, "a refused chained window made calls");
    let ok = h
        .provider
        .issue(&spec(&h, TimeDelta::minutes(60)))
        .await
        .unwrap();
    assert!(ok.grant.details["duration_secs"].as_u64().unwrap() < 3600);
    assert_eq!(ok.grant.details["role_chaining"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_role_is_not_found() {
    let (p, calls) = provider_with(
        AwsConfig::default().with_role_chaining(false),
        Arc::new(SystemClock),
    )
    .await;
    let h = harness_for(
        Arc::new(p),
        &format!("arn:aws:iam::{ACCOUNT}:role/does-not-exist"),
    );
    match h.provider.issue(&spec(&h, TimeDelta::minutes(20))).await {
        Err(Error::NotFound {
            kind: "aws role",
            id,
        }) => assert!(id.ends_with("does-not-exist")),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(calls.get("AssumeRole"), 0);
}

fn revocation_spec(h: &ProviderHarness) -> GrantSpec {
    spec(h, TimeDelta::minutes(20))
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_policy_names_exactly_the_revoked_sessions_and_is_idempotent() {
    let sdk = moto_sdk().await;
    let (role_arn, role_id) = create_role(&sdk, 3600, &open_trust()).await;
    let (p, calls) = provider_with(
        AwsConfig::default().with_role_chaining(false),
        Arc::new(SystemClock),
    )
    .await;
    let p = Arc::new(p);
    let h = harness_for(p.clone(), &role_arn);
    let a = p.issue(&revocation_spec(&h)).await.unwrap();
    let b = p.issue(&revocation_spec(&h)).await.unwrap();
    assert!(revocation_policy(&sdk, &role_arn, "jit-revocations")
        .await
        .is_none());

    p.revoke(&a.grant).await.unwrap();
    let doc = revocation_policy(&sdk, &role_arn, "jit-revocations")
        .await
        .unwrap();
    let a_id = format!("{role_id}:{}", a.grant.external_id);
    let b_id = format!("{role_id}:{}", b.grant.external_id);
    assert_eq!(denied_userids(&doc), vec![a_id.clone()]);
    let st = &doc["Statement"][0];
    assert_eq!(
        (
            st["Effect"].as_str(),
            st["Action"].as_str(),
            st["Resource"].as_str()
        ),
        (Some("Deny"), Some("*"), Some("*"))
    );
    let until: i64 = st["Sid"]
        .as_str()
        .unwrap()
        .strip_prefix("JitRevokedUntil")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        until >= a.grant.expires_at.timestamp() && until < a.grant.expires_at.timestamp() + 3600
    );

    // Idempotent: a second revoke reads, finds it in force, and writes nothing.
    let puts = calls.get("PutRolePolicy");
    p.revoke(&a.grant).await.unwrap();
    assert_eq!(calls.get("PutRolePolicy"), puts);
    assert_eq!(
        revocation_policy(&sdk, &role_arn, "jit-revocations")
            .await
            .unwrap(),
        doc
    );

    p.revoke(&b.grant).await.unwrap();
    let doc = revocation_policy(&sdk, &role_arn, "jit-revocations")
        .await
        .unwrap();
    let mut ids = denied_userids(&doc);
    ids.sort();
    let mut want = vec![a_id, b_id];
    want.sort();
    assert_eq!(ids, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_rebuilt_from_the_spec_alone_revokes_by_session_name() {
    let sdk = moto_sdk().await;
    let (role_arn, role_id) = create_role(&sdk, 3600, &open_trust()).await;
    let (p, _) = provider_with(
        AwsConfig::default().with_role_chaining(false),
        Arc::new(SystemClock),
    )
    .await;
    let p = Arc::new(p);
    let h = harness_for(p.clone(), &role_arn);
    // Never issued by this process (as after a crash and restart).
    let s = revocation_spec(&h);
    assert!(p.find(&s).await.unwrap().is_none());
    let rebuilt = p.reconstruct(&s).unwrap();
    assert_eq!(rebuilt.external_id, s.external_name());
    p.revoke(&rebuilt).await.unwrap();
    let doc = revocation_policy(&sdk, &role_arn, "jit-revocations")
        .await
        .unwrap();
    assert_eq!(
        denied_userids(&doc),
        vec![format!("{role_id}:{}", s.external_name())]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_entries_are_pruned_and_expired_grants_need_no_write() {
    let sdk = moto_sdk().await;
    let (role_arn, role_id) = create_role(&sdk, 3600, &open_trust()).await;
    let clock = ManualClock::starting_now();
    let (p, calls) = provider_with(
        AwsConfig::default().with_role_chaining(false),
        Arc::new(clock.clone()),
    )
    .await;
    let p = Arc::new(p);
    let mut h = harness_for(p.clone(), &role_arn);
    h.clock = Arc::new(clock.clone());
    let old = p.issue(&revocation_spec(&h)).await.unwrap();
    p.revoke(&old.grant).await.unwrap();

    // Two hours later the old session is long expired; a new revocation drops it.
    clock.advance(TimeDelta::hours(2));
    let puts = calls.get("PutRolePolicy");
    p.revoke(&old.grant).await.unwrap();
    assert_eq!(
        calls.get("PutRolePolicy"),
        puts,
        "revoking an expired session wrote a policy"
    );
    // The new grant's window is on the manual clock; moto's expiry is real
    // time, so record one by hand: revocation needs only the name and role.
    let fresh_spec = revocation_spec(&h);
    let fresh = IssuedGrant {
        provider: "aws".into(),
        external_id: fresh_spec.external_name(),
        expires_at: clock.now() + TimeDelta::minutes(20),
        details: json!({"role_arn": role_arn, "role_id": role_id}),
    };
    p.revoke(&fresh).await.unwrap();
    let doc = revocation_policy(&sdk, &role_arn, "jit-revocations")
        .await
        .unwrap();
    assert_eq!(
        denied_userids(&doc),
        vec![format!("{role_id}:{}", fresh.external_id)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_revocation_policy_is_a_typed_error_before_the_write() {
    let sdk = moto_sdk().await;
    let (role_arn, role_id) = create_role(&sdk, 3600, &open_trust()).await;
    let (p, calls) = provider_with(
        AwsConfig::default()
            .with_role_chaining(false)
            .with_revocation_policy_limit(600),
        Arc::new(SystemClock),
    )
    .await;
    let p = Arc::new(p);
    let h = harness_for(p.clone(), &role_arn);
    let mut revoked = 0;
    let err = loop {
        let s = revocation_spec(&h);
        let g = IssuedGrant {
            provider: "aws".into(),
            external_id: s.external_name(),
            expires_at: s.ends_at,
            details: json!({"role_arn": role_arn, "role_id": role_id}),
        };
        let puts = calls.get("PutRolePolicy");
        match p.revoke(&g).await {
            Ok(()) => revoked += 1,
            Err(e) => {
                assert_eq!(
                    calls.get("PutRolePolicy"),
                    puts,
                    "the overflowing document was written"
                );
                break e;
            }
        }
        assert!(revoked < 20, "the limit was never reached");
    };
    // About 140 characters of the 600 are kept for the role-wide deny.
    assert!(revoked >= 4, "only {revoked} fit in 600 characters");
    match &err {
        Error::ProviderRejected {
            operation: "revoke",
            message,
            ..
        } => {
            assert!(
                message.contains("over the limit of 600")
                    && message.contains("revoke_all_sessions"),
                "{message}"
            )
        }
        other => panic!("expected ProviderRejected, got {other:?}"),
    }
    assert!(!err.is_transient());
    let doc = revocation_policy(&sdk, &role_arn, "jit-revocations")
        .await
        .unwrap();
    assert_eq!(denied_userids(&doc).len(), revoked);
    assert!(doc.to_string().len() <= 600);
}

#[tokio::test(flavor = "multi_thread")]
async fn revoke_all_sessions_adds_the_token_issue_time_deny_and_keeps_per_grant_entries() {
    let sdk = moto_sdk().await;
    let (role_arn, role_id) = create_role(&sdk, 3600, &open_trust()).await;
    let (p, _) = provider_with(
        AwsConfig::default().with_role_chaining(false),
        Arc::new(SystemClock),
    )
    .await;
    let p = Arc::new(p);
    let h = harness_for(p.clone(), &role_arn);
    let a = p.issue(&revocation_spec(&h)).await.unwrap();
    p.revoke(&a.grant).await.unwrap();
    let role = RoleArn::parse(&role_arn).unwrap();
    let cutoff = p.revoke_all_sessions(&role).await.unwrap();
    assert!(
        cutoff > Utc::now() - TimeDelta::seconds(2) && cutoff <= Utc::now() + TimeDelta::seconds(2)
    );
    let doc = revocation_policy(&sdk, &role_arn, "jit-revocations")
        .await
        .unwrap();
    assert_eq!(
        denied_userids(&doc),
        vec![format!("{role_id}:{}", a.grant.external_id)]
    );
    let all = doc["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Sid"] == "JitRevokeOlderSessions")
        .expect("no role-wide statement");
    assert_eq!(all["Effect"], "Deny");
    assert_eq!(
        all["Condition"]["DateLessThan"]["aws:TokenIssueTime"],
        cutoff.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let missing = RoleArn::parse(&format!("arn:aws:iam::{ACCOUNT}:role/gone")).unwrap();
    assert!(matches!(
        p.revoke_all_sessions(&missing).await,
        Err(Error::NotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn session_policy_arns_external_id_and_tags_reach_assume_role() {
    // moto accepts these without evaluating them (except ExternalId, see
    // tests/moto_auth.rs); this shows a fully scoped target is issued.
    let sdk = moto_sdk().await;
    let (role_arn, _) = create_role(&sdk, 3600, &open_trust()).await;
    let (p, calls) = provider_with(
        AwsConfig::default().with_role_chaining(false),
        Arc::new(SystemClock),
    )
    .await;
    let mut h = harness_for(Arc::new(p), &role_arn);
    h.entitlement.target = json!({
        "role_arn": role_arn,
        "session_policy": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]},
        "policy_arns": ["arn:aws:iam::aws:policy/ReadOnlyAccess"],
        "external_id": "partner-42",
        "session_tags": {"team": "payments"},
    });
    h.subject = Principal::new("Jürgen Müller <jm@example.com>").unwrap();
    let issued = h
        .provider
        .issue(&spec(&h, TimeDelta::minutes(20)))
        .await
        .unwrap();
    let si = issued.grant.details["source_identity"].as_str().unwrap();
    assert!(jit_aws::session::is_valid_name(si), "{si}");
    assert!(si.starts_with("J_rgen_M_ller__jm@example.com_."), "{si}");
    assert_eq!(calls.get("AssumeRole"), 1);
}
