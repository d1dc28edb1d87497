//! Revocation with moto's IAM enforcement on.
//!
//! Auth mode is server-wide, so this test runs its own moto server
//! (`target/moto-auth`), stopped when the test ends.
//!
//! # What this proves, exactly
//!
//! moto 5.2.5 evaluates identity-policy conditions without any request
//! context: `check_action_permitted` passes no condition values, and a
//! condition with no values counts as satisfied. So in moto a conditioned
//! `Deny` on a role applies to **every** session of that role; it cannot
//! tell `aws:userid` = `ROLE_ID:session-a` from `session-b`. The test
//! therefore verifies, against the real server with enforcement on:
//!
//! 1. both sessions work before the revocation (`iam:ListRoles` succeeds
//!    with each session's credentials; the role allows `*`);
//! 2. after `revoke(a)`, session a is denied (`AccessDenied`): the deny
//!    statement jit-aws wrote is in force in moto's evaluator;
//! 3. the document jit-aws wrote, read back with `iam:GetRolePolicy`, denies
//!    exactly one `aws:userid`, and it is the `UserId` moto's
//!    `sts:GetCallerIdentity` reports for session a, while session b's
//!    `UserId` is not in it. Under AWS's documented `StringEquals`
//!    semantics that is what keeps b working on AWS;
//! 4. session b is *also* denied in moto after the revocation: that is
//!    moto's condition gap described above, asserted so that a moto which
//!    starts evaluating `aws:userid` makes this test fail and be tightened
//!    to "b still works";
//! 5. `ExternalId` (which moto does evaluate, in trust policies): the right
//!    id is issued, a wrong one maps to a typed `AccessDenied` rejection;
//!    a broker without IAM permissions gets a typed `AccessDenied` too;
//! 6. `revoke_all_sessions` denies every existing session.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use chrono::TimeDelta;
use common::*;
use jit_aws::{AwsConfig, AwsProvider, RoleArn};
use jit_core::testing::provider::{spec, ProviderHarness};
use jit_core::{Credentials, Error, Principal, Provider, SystemClock};
use serde_json::json;

async fn session_sdk(url: &str, c: &Credentials) -> SdkConfig {
    let Credentials::Aws {
        access_key_id,
        secret_access_key,
        session_token,
        ..
    } = c
    else {
        panic!("not aws credentials")
    };
    common::sdk(
        url,
        access_key_id,
        secret_access_key.expose(),
        Some(session_token.expose()),
    )
    .await
}

/// The AWS error code of a failed call. moto's auth layer answers in an
/// envelope (`ErrorResponse/Errors/Error`) the SDK does not parse, so the
/// code is read from the body when the SDK found none.
fn error_code<E: aws_sdk_iam::error::ProvideErrorMetadata + std::fmt::Debug>(
    e: &aws_sdk_iam::error::SdkError<E, aws_sdk_iam::config::http::HttpResponse>,
) -> String {
    if let Some(c) = e.as_service_error().and_then(|s| s.code()) {
        return c.to_string();
    }
    let body = e
        .raw_response()
        .and_then(|r| r.body().bytes())
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    body.split("<Code>")
        .nth(1)
        .and_then(|r| r.split("</Code>").next())
        .unwrap_or_else(|| panic!("no error code in {e:?}"))
        .to_string()
}

/// `true` when `iam:ListRoles` works, `false` on `AccessDenied`.
async fn can_list_roles(sdk: &SdkConfig) -> bool {
    match aws_sdk_iam::Client::new(sdk).list_roles().send().await {
        Ok(_) => true,
        Err(e) => {
            assert_eq!(error_code(&e), "AccessDenied", "unexpected error: {e:?}");
            false
        }
    }
}

async fn user_id(sdk: &SdkConfig) -> String {
    aws_sdk_sts::Client::new(sdk)
        .get_caller_identity()
        .send()
        .await
        .unwrap()
        .user_id()
        .unwrap()
        .to_string()
}

async fn user_with_keys(
    admin: &SdkConfig,
    name: &str,
    policy: Option<&str>,
) -> (String, String, String) {
    let iam = aws_sdk_iam::Client::new(admin);
    let user = iam.create_user().user_name(name).send().await.unwrap();
    let arn = user.user().unwrap().arn().to_string();
    if let Some(p) = policy {
        iam.put_user_policy()
            .user_name(name)
            .policy_name("all")
            .policy_document(p)
            .send()
            .await
            .unwrap();
    }
    let key = iam
        .create_access_key()
        .user_name(name)
        .send()
        .await
        .unwrap();
    let key = key.access_key().unwrap();
    (
        arn,
        key.access_key_id().to_string(),
        key.secret_access_key().to_string(),
    )
}

async fn enable_auth(url: &str) {
    let url = format!("{url}/moto-api/reset-auth");
    let status = tokio::task::spawn_blocking(move || {
        // A plain HTTP/1.1 POST with a body of `0`: authenticate from the next request on.
        use std::io::{Read, Write};
        let addr = url.trim_start_matches("http://").split('/').next().unwrap().to_string();
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "POST /moto-api/reset-auth HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\nContent-Length: 1\r\nConnection: close\r\n\r\n0"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "reset-auth failed: {status}"
    );
    assert!(
        status.contains("PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_session_is_denied_with_moto_auth_on() {
    let moto = PrivateMoto::start("auth");
    let url = moto.url.clone();

    // Setup while auth is still off.
    let setup = common::sdk(&url, "AKIASETUP", "setup", None).await;
    let allow_all = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}).to_string();
    let (broker_arn, broker_key, broker_secret) =
        user_with_keys(&setup, "jit-broker", Some(&allow_all)).await;
    let (_, weak_key, weak_secret) = user_with_keys(&setup, "jit-weak", None).await;
    let trust = |cond: Option<serde_json::Value>| {
        let mut st = json!({"Effect": "Allow", "Principal": {"AWS": broker_arn}, "Action": "sts:AssumeRole"});
        if let Some(c) = cond {
            st["Condition"] = c;
        }
        json!({"Version": "2012-10-17", "Statement": [st]}).to_string()
    };
    let (role_arn, role_id) = create_role(&setup, 3600, &trust(None)).await;
    let (partner_arn, _) = create_role(
        &setup,
        3600,
        &trust(Some(
            json!({"StringEquals": {"sts:ExternalId": "partner-42"}}),
        )),
    )
    .await;
    let iam = aws_sdk_iam::Client::new(&setup);
    for arn in [&role_arn, &partner_arn] {
        iam.put_role_policy()
            .role_name(arn.rsplit('/').next().unwrap())
            .policy_name("permissive")
            .policy_document(&allow_all)
            .send()
            .await
            .unwrap();
    }

    enable_auth(&url).await;
    // From here on every request is authenticated and authorised by moto.
    let unknown = aws_sdk_iam::Client::new(&setup)
        .list_roles()
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        error_code(&unknown),
        "InvalidClientTokenId",
        "auth mode is not on"
    );

    let broker_sdk = common::sdk(&url, &broker_key, &broker_secret, None).await;
    // Session tags and SourceIdentity need trust-policy actions moto's
    // trust check would also require; this role's trust allows AssumeRole only.
    let config = AwsConfig::default()
        .with_session_tags(false)
        .with_source_identity(false);
    let provider = Arc::new(
        AwsProvider::builder(config.clone())
            .sdk_config(broker_sdk.clone())
            .build()
            .await
            .unwrap(),
    );
    assert!(!provider.role_chaining());
    let h = ProviderHarness {
        provider: provider.clone(),
        entitlement: entitlement(
            "aws.auth",
            json!({"role_arn": role_arn}),
            Duration::from_secs(3600),
        ),
        subject: Principal::new("alice@example.com").unwrap(),
        clock: Arc::new(SystemClock),
        probe: Arc::new(StsProbe { url: url.clone() }),
        advance: None,
    };
    let a = provider
        .issue(&spec(&h, TimeDelta::minutes(20)))
        .await
        .unwrap();
    let b = provider
        .issue(&spec(&h, TimeDelta::minutes(20)))
        .await
        .unwrap();
    let a_sdk = session_sdk(&url, &a.credentials).await;
    let b_sdk = session_sdk(&url, &b.credentials).await;

    // 1. Both work.
    assert!(
        can_list_roles(&a_sdk).await,
        "session a does not work before revocation"
    );
    assert!(
        can_list_roles(&b_sdk).await,
        "session b does not work before revocation"
    );
    let a_uid = user_id(&a_sdk).await;
    let b_uid = user_id(&b_sdk).await;
    assert_eq!(a_uid, format!("{role_id}:{}", a.grant.external_id));
    assert_eq!(b_uid, format!("{role_id}:{}", b.grant.external_id));

    // 2. Revoke a: a is denied.
    provider.revoke(&a.grant).await.unwrap();
    assert!(
        !can_list_roles(&a_sdk).await,
        "revoked session a still works"
    );

    // 3. The deny names exactly a's aws:userid.
    let doc = revocation_policy(&broker_sdk, &role_arn, "jit-revocations")
        .await
        .unwrap();
    assert_eq!(denied_userids(&doc), vec![a_uid.clone()]);
    assert!(!denied_userids(&doc).contains(&b_uid));

    // 4. moto's condition gap (see the module docs): b is denied too in moto.
    assert!(
        !can_list_roles(&b_sdk).await,
        "moto now evaluates aws:userid: tighten this test to assert that session b still works"
    );

    // 5. ExternalId and permission errors, typed.
    let mut partner = h.entitlement.clone();
    partner.target = json!({"role_arn": partner_arn, "external_id": "partner-42"});
    let mut s = spec(&h, TimeDelta::minutes(20));
    s.entitlement = partner.clone();
    let p = provider.issue(&s).await.unwrap();
    assert!(h.probe.works(&p.credentials, &p.grant).await);
    partner.target["external_id"] = json!("partner-43");
    let mut s = spec(&h, TimeDelta::minutes(20));
    s.entitlement = partner;
    match provider.issue(&s).await {
        Err(Error::ProviderRejected {
            operation: "issue",
            message,
            ..
        }) => {
            assert!(
                message.starts_with("sts:AssumeRole: AccessDenied"),
                "{message}"
            )
        }
        other => panic!("wrong external id: expected AccessDenied, got {other:?}"),
    }
    let weak = AwsProvider::builder(config)
        .sdk_config(common::sdk(&url, &weak_key, &weak_secret, None).await)
        .build()
        .await
        .unwrap();
    match weak.issue(&spec(&h, TimeDelta::minutes(20))).await {
        Err(Error::ProviderRejected { message, .. }) => {
            assert!(
                message.starts_with("iam:GetRole: AccessDenied"),
                "{message}"
            )
        }
        other => panic!("unprivileged broker: expected AccessDenied, got {other:?}"),
    }
    match weak.revoke(&b.grant).await {
        Err(e @ Error::ProviderRejected { .. }) => assert!(!e.is_transient()),
        other => panic!("unprivileged revoke: expected a rejection, got {other:?}"),
    }

    // 6. Role-wide revocation.
    let role = RoleArn::parse(&role_arn).unwrap();
    provider.revoke_all_sessions(&role).await.unwrap();
    assert!(!can_list_roles(&b_sdk).await);
    let doc = revocation_policy(&broker_sdk, &role_arn, "jit-revocations")
        .await
        .unwrap();
    // The per-grant entry stays; the role-wide statement is added beside it.
    assert_eq!(denied_userids(&doc), vec![a_uid], "{doc}");
    assert!(doc["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["Sid"] == "JitRevokeOlderSessions"));
    drop(moto);
}
