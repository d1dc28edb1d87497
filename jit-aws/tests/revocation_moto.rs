//! Revocations that must never be recorded while the session keeps working
//! (tracker issue 10): roles in other accounts, a stale role id, a full deny
//! list, an operator's edit of the policy. Against a real moto server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use chrono::TimeDelta;
use common::*;
use jit_aws::{AwsConfig, AwsProvider};
use jit_core::testing::provider::{spec, ProviderHarness};
use jit_core::{
    AccessRequest, AuditKind, Clock, Error, IssuedGrant, ManualClock, Principal, Provider, State,
    SystemClock,
};
use serde_json::json;

/// Another account, which moto keeps apart from the default one.
const OTHER: &str = "111111111111";

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

fn harness(provider: Arc<AwsProvider>, role_arn: &str, clock: Arc<dyn Clock>) -> ProviderHarness {
    ProviderHarness {
        provider,
        entitlement: entitlement(
            "aws.revocation",
            json!({"role_arn": role_arn}),
            Duration::from_secs(3600),
        ),
        subject: Principal::new("revocation@example.com").unwrap(),
        clock,
        probe: Arc::new(StsProbe { url: moto_url() }),
        advance: None,
    }
}

/// An SDK configuration acting in `account`: moto hands out credentials of
/// the account whose role was assumed (the role need not exist).
async fn sdk_in(account: &str) -> SdkConfig {
    let out = aws_sdk_sts::Client::new(&moto_sdk().await)
        .assume_role()
        .role_arn(format!("arn:aws:iam::{account}:role/bootstrap"))
        .role_session_name("test-bootstrap")
        .send()
        .await
        .unwrap();
    let c = out.credentials().unwrap();
    sdk(
        &moto_url(),
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token()),
    )
    .await
}

/// A role with this exact name; returns its ARN and id.
async fn create_named_role(sdk: &SdkConfig, name: &str) -> (String, String) {
    let out = aws_sdk_iam::Client::new(sdk)
        .create_role()
        .role_name(name)
        .assume_role_policy_document(open_trust())
        .max_session_duration(3600)
        .send()
        .await
        .unwrap();
    let r = out.role().unwrap();
    (r.arn().to_string(), r.role_id().to_string())
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

// Regression (issue 10 item 1): `GetRole` and `PutRolePolicy` take a bare
// role name and act in the caller's account, so a role in another account
// had its deny written into a same-named role in the broker's account,
// leaving the session working while its grant said `Revoked`.
#[tokio::test(flavor = "multi_thread")]
async fn a_role_in_another_account_is_revoked_there_not_in_a_same_named_role_at_home() {
    let home = moto_sdk().await;
    let other = sdk_in(OTHER).await;
    let name = unique("jit-xacct");
    let (home_arn, _) = create_named_role(&home, &name).await;
    let (other_arn, other_id) = create_named_role(&other, &name).await;
    assert!(other_arn.contains(OTHER) && home_arn.contains(ACCOUNT));
    let (manager_arn, _) = create_named_role(&other, &unique("jit-manager")).await;

    let (p, _) = provider_with(
        AwsConfig::default()
            .with_role_chaining(false)
            .with_management_role(OTHER, &manager_arn),
        Arc::new(SystemClock),
    )
    .await;
    assert_eq!(p.account(), ACCOUNT);
    let p = Arc::new(p);
    let h = harness(p.clone(), &other_arn, Arc::new(SystemClock));
    p.validate(&h.entitlement).unwrap();
    let issued = p.issue(&spec(&h, TimeDelta::minutes(20))).await.unwrap();
    let session = &issued.grant.external_id;
    // The deny value is what STS said the session is.
    assert_eq!(
        issued.grant.details["assumed_role_id"],
        format!("{other_id}:{session}")
    );
    p.revoke(&issued.grant).await.unwrap();

    let there = revocation_policy(&other, &other_arn, "jit-revocations")
        .await
        .expect("no revocation policy on the role in the other account");
    assert_eq!(
        denied_userids(&there),
        vec![format!("{other_id}:{session}")]
    );
    assert!(
        revocation_policy(&home, &home_arn, "jit-revocations")
            .await
            .is_none(),
        "the deny was written into the same-named role of the broker's account"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_role_in_an_account_without_a_management_role_is_refused_at_catalogue_load() {
    let (p, calls) = provider_with(
        AwsConfig::default().with_role_chaining(false),
        Arc::new(SystemClock),
    )
    .await;
    let p = Arc::new(p);
    let foreign = "arn:aws:iam::222222222222:role/Elsewhere";
    let h = harness(p.clone(), foreign, Arc::new(SystemClock));
    match p.validate(&h.entitlement) {
        Err(Error::Config(e)) => {
            let m = e.to_string();
            assert!(
                m.contains("222222222222")
                    && m.contains(ACCOUNT)
                    && m.contains("JIT_AWS_MANAGEMENT_ROLES"),
                "{m}"
            );
        }
        other => panic!("expected a config error, got {other:?}"),
    }
    let before = calls.total();
    assert!(p.issue(&spec(&h, TimeDelta::minutes(20))).await.is_err());
    assert_eq!(calls.total(), before, "a refused role was called");
    // The broker refuses such a catalogue when it is built.
    let policy = jit_core::CataloguePolicy::from_toml_str(&format!(
        r#"
        [[entitlements]]
        id = "elsewhere"
        provider = "aws"
        max_duration = "1h"
        target = {{ role_arn = "{foreign}" }}
        [entitlements.eligible]
        groups = ["oncall"]
        "#
    ))
    .unwrap();
    let built = jit_core::Broker::builder(Arc::new(jit_core::MemoryStore::new()), Arc::new(policy))
        .provider(p)
        .build();
    assert!(
        built.is_err(),
        "the broker accepted a role it cannot revoke"
    );
}

// Regression (issue 10 item 1): the role id was taken from the `GetRole`
// cache, so after the role was deleted and recreated under the same name the
// deny named the old id and matched nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_recreated_role_is_revoked_by_its_new_id_not_the_cached_one() {
    let home = moto_sdk().await;
    let name = unique("jit-recreated");
    let (role_arn, old_id) = create_named_role(&home, &name).await;
    let (p, _) = provider_with(
        AwsConfig::default()
            .with_role_chaining(false)
            .with_role_cache_ttl(Duration::from_secs(3600)),
        Arc::new(SystemClock),
    )
    .await;
    let p = Arc::new(p);
    let h = harness(p.clone(), &role_arn, Arc::new(SystemClock));
    // Caches the old id.
    p.issue(&spec(&h, TimeDelta::minutes(20))).await.unwrap();
    let iam = aws_sdk_iam::Client::new(&home);
    iam.delete_role().role_name(&name).send().await.unwrap();
    let (_, new_id) = create_named_role(&home, &name).await;
    assert_ne!(old_id, new_id);

    let s = spec(&h, TimeDelta::minutes(20));
    let issued = p.issue(&s).await.unwrap();
    p.revoke(&issued.grant).await.unwrap();
    let doc = revocation_policy(&home, &role_arn, "jit-revocations")
        .await
        .unwrap();
    let want = format!("{new_id}:{}", issued.grant.external_id);
    assert_eq!(denied_userids(&doc), vec![want.clone()]);

    // A record rebuilt from the spec alone (no ids) reads the role afresh.
    let s2 = spec(&h, TimeDelta::minutes(20));
    let rebuilt = p.reconstruct(&s2).unwrap();
    p.revoke(&rebuilt).await.unwrap();
    let doc = revocation_policy(&home, &role_arn, "jit-revocations")
        .await
        .unwrap();
    assert!(
        denied_userids(&doc).contains(&format!("{new_id}:{}", rebuilt.external_id)),
        "{doc}"
    );
}

/// A revocable record for a session of `role_arn` issued `age` ago.
fn recorded(
    p: &AwsProvider,
    h: &ProviderHarness,
    role_arn: &str,
    role_id: &str,
    age: TimeDelta,
) -> IssuedGrant {
    let s = spec(h, TimeDelta::minutes(20));
    let name = s.external_name();
    let now = p_now(h);
    IssuedGrant {
        provider: p.name().to_string(),
        external_id: name.clone(),
        expires_at: now - age + TimeDelta::minutes(20),
        details: json!({
            "role_arn": role_arn,
            "role_id": role_id,
            "assumed_role_id": format!("{role_id}:{name}"),
            "duration_secs": 1200,
        }),
    }
}

fn p_now(h: &ProviderHarness) -> chrono::DateTime<chrono::Utc> {
    h.clock.now()
}

fn older_sessions_cutoff(doc: &serde_json::Value) -> Option<String> {
    doc["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Sid"] == "JitRevokeOlderSessions")
        .map(|s| {
            s["Condition"]["DateLessThan"]["aws:TokenIssueTime"]
                .as_str()
                .unwrap()
                .to_string()
        })
}

// Regression (issue 10 item 3): once the per-grant list was full, a
// revocation failed, and the role-wide deny the error recommended went
// through the same size check and failed too.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_deny_list_falls_back_to_the_role_wide_deny_and_reports_the_collateral() {
    let home = moto_sdk().await;
    let (role_arn, role_id) = create_role(&home, 3600, &open_trust()).await;
    let limit = 600;
    let (p, _) = provider_with(
        AwsConfig::default()
            .with_role_chaining(false)
            .with_revocation_policy_limit(limit),
        Arc::new(SystemClock),
    )
    .await;
    let p = Arc::new(p);
    let h = harness(p.clone(), &role_arn, Arc::new(SystemClock));
    // Sessions of other grants: one issued ten minutes ago, one just now.
    let old = recorded(&p, &h, &role_arn, &role_id, TimeDelta::minutes(10));
    let fresh = recorded(&p, &h, &role_arn, &role_id, TimeDelta::zero());
    let mut n = 0;
    loop {
        let g = recorded(&p, &h, &role_arn, &role_id, TimeDelta::minutes(1));
        match p.revoke(&g).await {
            Ok(()) => n += 1,
            // Plain `revoke` never cuts off other grants: it fails.
            Err(e) => {
                assert!(e.to_string().contains("kept for the role-wide deny"), "{e}");
                break;
            }
        }
        assert!(n < 20, "the list never filled");
    }
    let last = recorded(&p, &h, &role_arn, &role_id, TimeDelta::minutes(1));
    let outcome = p.revoke_reporting(&last).await.unwrap();
    let collateral = outcome.collateral.expect("no collateral reported");
    assert_eq!(collateral.scope, role_arn);
    assert!(collateral.cause.contains("over the limit"));
    let doc = revocation_policy(&home, &role_arn, "jit-revocations")
        .await
        .unwrap();
    assert!(doc.to_string().len() <= limit, "{}", doc.to_string().len());
    assert_eq!(
        older_sessions_cutoff(&doc).as_deref(),
        Some(
            collateral
                .issued_before
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                .as_str()
        )
    );
    assert!(collateral.issued_before >= chrono::Utc::now() - TimeDelta::seconds(5));
    // Earlier per-grant entries are kept.
    assert_eq!(denied_userids(&doc).len(), n);
    // Which other grants it certainly cut off: the one issued well before
    // the cutoff, not one issued within the clock allowance of it.
    assert!(p.cut_off_by(&collateral, &old));
    assert!(!p.cut_off_by(&collateral, &fresh));
    let mut elsewhere = old.clone();
    elsewhere.details["role_arn"] = json!(format!("{role_arn}-other"));
    assert!(!p.cut_off_by(&collateral, &elsewhere));
}

// Regression (issue 10 item 4): what a process once wrote was merged into
// every later write from memory, so a statement an operator removed came
// back with the next revocation.
#[tokio::test(flavor = "multi_thread")]
async fn an_operators_removal_is_not_re_added_from_process_memory() {
    let home = moto_sdk().await;
    let (role_arn, role_id) = create_role(&home, 3600, &open_trust()).await;
    let clock = ManualClock::starting_now();
    let (p, _) = provider_with(
        AwsConfig::default().with_role_chaining(false),
        Arc::new(clock.clone()),
    )
    .await;
    let p = Arc::new(p);
    let h = harness(p.clone(), &role_arn, Arc::new(clock.clone()));
    let a = recorded(&p, &h, &role_arn, &role_id, TimeDelta::zero());
    p.revoke(&a).await.unwrap();
    let name = role_arn.rsplit('/').next().unwrap();
    aws_sdk_iam::Client::new(&home)
        .delete_role_policy()
        .role_name(name)
        .policy_name("jit-revocations")
        .send()
        .await
        .unwrap();
    clock.advance(TimeDelta::minutes(3));
    let b = recorded(&p, &h, &role_arn, &role_id, TimeDelta::zero());
    p.revoke(&b).await.unwrap();
    let doc = revocation_policy(&home, &role_arn, "jit-revocations")
        .await
        .unwrap();
    assert_eq!(
        denied_userids(&doc),
        vec![format!("{role_id}:{}", b.external_id)],
        "the removed entry came back"
    );
}

// Issue 10 item 3, end to end: the broker records every other live grant of
// the role that the fallback cut off as revoked, with the reason and its own
// audit record.
#[tokio::test(flavor = "multi_thread")]
async fn the_broker_records_the_grants_a_role_wide_fallback_cut_off() {
    let home = moto_sdk().await;
    let (role_arn, _) = create_role(&home, 3600, &open_trust()).await;
    let clock = ManualClock::starting_now();
    let provider = AwsProvider::builder(
        AwsConfig::default()
            .with_role_chaining(false)
            .with_revocation_policy_limit(600),
    )
    .sdk_config(home.clone())
    .clock(Arc::new(clock.clone()))
    .build()
    .await
    .unwrap();
    let broker = jit_core::Broker::builder(
        Arc::new(jit_core::MemoryStore::new()),
        Arc::new(broker_catalogue(&role_arn)),
    )
    .provider(Arc::new(provider))
    .clock(Arc::new(clock.clone()))
    .build()
    .unwrap();
    let alice = Principal::new("alice@example.com")
        .unwrap()
        .with_group("oncall");
    let mut ids = Vec::new();
    for i in 0..7 {
        let out = broker
            .submit(
                &alice,
                AccessRequest::new("aws-auto", "30m".parse().unwrap(), &format!("INC-{i}")),
            )
            .await
            .unwrap();
        assert_eq!(out.record.state, State::Active);
        ids.push(out.record.id);
    }
    // Well past the clock allowance after the sessions were issued.
    clock.advance(TimeDelta::seconds(30));
    let mut revoked = 0;
    let mut fell_back = None;
    for id in &ids {
        let r = broker.revoke(&alice, *id, "done").await.unwrap();
        if r.state != State::Revoked {
            continue;
        }
        revoked += 1;
        let doc = revocation_policy(&home, &role_arn, "jit-revocations")
            .await
            .unwrap();
        if older_sessions_cutoff(&doc).is_some() {
            fell_back = Some(r);
            break;
        }
    }
    let origin = fell_back.expect("the list never filled");
    assert!(revoked < ids.len(), "nothing was left to cut off");
    let origin_grant = origin.grant_id().unwrap();
    let mut collateral = 0;
    for id in &ids {
        let r = broker.get(*id).await.unwrap();
        assert_eq!(r.state, State::Revoked, "grant of {id} still recorded live");
        if r.id != origin.id
            && r.revocation.as_ref().unwrap().reason
                == format!("collateral of role-wide revocation of grant {origin_grant}")
        {
            collateral += 1;
        }
    }
    assert_eq!(collateral, ids.len() - revoked);
    let audit = broker.audit_records().await.unwrap();
    let recorded: Vec<_> = audit
        .iter()
        .filter(|a| {
            a.event.kind == AuditKind::Revoked
                && a.event.details["collateral_of"] == origin_grant.to_string()
        })
        .collect();
    assert_eq!(recorded.len(), collateral);
    assert!(recorded
        .iter()
        .all(|a| a.event.details["scope"] == role_arn.as_str()));
    assert!(broker.verify_audit().await.unwrap().is_ok());
}

// Regression (issue 10 item 4): a broker running on an EC2 instance
// profile (an assumed-role session named after the instance) was treated
// as role chaining and capped at one hour.
#[tokio::test(flavor = "multi_thread")]
async fn a_broker_on_an_ec2_instance_profile_is_not_capped_as_role_chaining() {
    let home = moto_sdk().await;
    let (instance_role, _) = create_role(&home, 3600, &open_trust()).await;
    let out = aws_sdk_sts::Client::new(&home)
        .assume_role()
        .role_arn(&instance_role)
        .role_session_name("i-0123456789abcdef0")
        .send()
        .await
        .unwrap();
    let c = out.credentials().unwrap();
    let ec2 = sdk(
        &moto_url(),
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token()),
    )
    .await;
    let p = AwsProvider::builder(AwsConfig::default())
        .sdk_config(ec2)
        .build()
        .await
        .unwrap();
    assert!(!p.role_chaining());
    assert_eq!(
        p.capabilities().max_duration,
        Duration::from_secs(12 * 3600)
    );

    // Any other assumed-role identity still is.
    let out = aws_sdk_sts::Client::new(&home)
        .assume_role()
        .role_arn(&instance_role)
        .role_session_name("deploy-bot")
        .send()
        .await
        .unwrap();
    let c = out.credentials().unwrap();
    let chained = sdk(
        &moto_url(),
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token()),
    )
    .await;
    let p = AwsProvider::builder(AwsConfig::default())
        .sdk_config(chained)
        .build()
        .await
        .unwrap();
    assert!(p.role_chaining());
}

// Regression (issue 10 item 4): a role of another partition than the
// region's passed the catalogue and failed at every AssumeRole.
#[tokio::test(flavor = "multi_thread")]
async fn a_role_of_another_partition_than_the_region_is_refused_at_load() {
    let cn = moto_sdk()
        .await
        .into_builder()
        .region(aws_config::Region::new("cn-north-1"))
        .build();
    let p = Arc::new(
        AwsProvider::builder(
            AwsConfig::default()
                .with_role_chaining(false)
                .with_account_id(ACCOUNT),
        )
        .sdk_config(cn)
        .build()
        .await
        .unwrap(),
    );
    let h = harness(
        p.clone(),
        &format!("arn:aws:iam::{ACCOUNT}:role/Commercial"),
        Arc::new(SystemClock),
    );
    match p.validate(&h.entitlement) {
        Err(Error::Config(e)) => {
            let m = e.to_string();
            assert!(m.contains("partition `aws`") && m.contains("aws-cn"), "{m}");
        }
        other => panic!("expected a config error, got {other:?}"),
    }
    let h = harness(
        p.clone(),
        &format!("arn:aws-cn:iam::{ACCOUNT}:role/China"),
        Arc::new(SystemClock),
    );
    p.validate(&h.entitlement).unwrap();
}
