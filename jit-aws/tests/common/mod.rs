//! Shared test tooling on top of `jit_aws::testing` (moto, SDK
//! configurations, roles, call counting): a private moto server. (The
//! endpoint that must never be contacted is jit-core's
//! `testing::tripwire::Tripwire`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use jit_core::testing::provider::AccessProbe;
use jit_core::{Credentials, Entitlement, GrantDuration, IssuedGrant};

#[allow(unused_imports)] // each test binary uses its own part
pub use jit_aws::testing::{
    counted_clients, create_role, moto_sdk, moto_url, open_trust, sdk, CallCounter, ACCOUNT,
};

/// A private moto server (for auth mode, which is server-wide), stopped on drop.
pub struct PrivateMoto {
    pub url: String,
    state: PathBuf,
}

impl PrivateMoto {
    pub fn start(name: &str) -> Self {
        let state = PathBuf::from(format!("target/moto-{name}"));
        // A previous run that panicked may have left one behind.
        jit_aws::testing::stop_moto(&state);
        let url = jit_aws::testing::start_moto(Some(&state));
        Self { url, state }
    }
}

impl Drop for PrivateMoto {
    fn drop(&mut self) {
        jit_aws::testing::stop_moto(&self.state);
    }
}

pub fn entitlement(id: &str, target: serde_json::Value, max: Duration) -> Entitlement {
    Entitlement {
        id: id.into(),
        description: String::new(),
        provider: "aws".into(),
        target,
        max_duration: GrantDuration::new(max).unwrap(),
    }
}

/// The inline revocation policy of a role, decoded.
pub async fn revocation_policy(
    sdk: &SdkConfig,
    role_arn: &str,
    name: &str,
) -> Option<serde_json::Value> {
    let iam = aws_sdk_iam::Client::new(sdk);
    let role_name = role_arn.rsplit('/').next().unwrap();
    match iam
        .get_role_policy()
        .role_name(role_name)
        .policy_name(name)
        .send()
        .await
    {
        Ok(out) => {
            let text = jit_aws::client::percent_decode(out.policy_document());
            Some(serde_json::from_str(&text).unwrap())
        }
        Err(e) => {
            let svc = e.into_service_error();
            assert!(svc.is_no_such_entity_exception(), "{svc:?}");
            None
        }
    }
}

/// The `aws:userid` values the revocation policy denies, per statement.
pub fn denied_userids(doc: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for s in doc["Statement"].as_array().unwrap() {
        if s["Effect"] != "Deny" {
            continue;
        }
        match &s["Condition"]["StringEquals"]["aws:userid"] {
            serde_json::Value::String(x) => out.push(x.clone()),
            serde_json::Value::Array(a) => {
                out.extend(a.iter().map(|v| v.as_str().unwrap().to_string()))
            }
            _ => {}
        }
    }
    out
}

/// Works when `sts:GetCallerIdentity` with the credentials answers with the
/// grant's assumed-role ARN and `ROLE_ID:session-name` user id. Moto answers
/// unknown keys with a default identity, which does not match.
pub struct StsProbe {
    pub url: String,
}

#[async_trait]
impl AccessProbe for StsProbe {
    async fn works(&self, credentials: &Credentials, issued: &IssuedGrant) -> bool {
        let Credentials::Aws {
            access_key_id,
            secret_access_key,
            session_token,
            ..
        } = credentials
        else {
            return false;
        };
        let sdk = sdk(
            &self.url,
            access_key_id,
            secret_access_key.expose(),
            Some(session_token.expose()),
        )
        .await;
        let Ok(me) = aws_sdk_sts::Client::new(&sdk)
            .get_caller_identity()
            .send()
            .await
        else {
            return false;
        };
        let want_arn = issued.details["assumed_role_arn"].as_str();
        let want_id = format!(
            "{}:{}",
            issued.details["role_id"].as_str().unwrap_or_default(),
            issued.external_id
        );
        me.arn() == want_arn && me.user_id() == Some(want_id.as_str())
    }
}

/// The broker tests' catalogue: `aws-auto` (auto-approved for on-call, with
/// a session tag) and `aws-approved` (leads approve).
pub fn broker_catalogue(role_arn: &str) -> jit_core::CataloguePolicy {
    jit_core::CataloguePolicy::from_toml_str(&format!(
        r#"
        [admins]
        groups = ["secops"]

        [[entitlements]]
        id = "aws-auto"
        provider = "aws"
        max_duration = "1h"
        target = {{ role_arn = "{role_arn}", session_tags = {{ team = "payments" }} }}
        [entitlements.eligible]
        groups = ["oncall"]
        [entitlements.auto_approve]
        groups = ["oncall"]

        [[entitlements]]
        id = "aws-approved"
        provider = "aws"
        max_duration = "1h"
        target = {{ role_arn = "{role_arn}" }}
        [entitlements.eligible]
        groups = ["oncall"]
        [entitlements.approval]
        groups = ["leads"]
        "#
    ))
    .unwrap()
}

/// A broker on a memory store with a jit-aws provider on moto and a fresh
/// role; returns the broker and the role's ARN.
pub async fn broker(auto_issue: bool) -> (jit_core::Broker, String) {
    let sdk = moto_sdk().await;
    let (role_arn, _) = create_role(&sdk, 3600, &open_trust()).await;
    let provider =
        jit_aws::AwsProvider::builder(jit_aws::AwsConfig::default().with_role_chaining(false))
            .sdk_config(sdk)
            .build()
            .await
            .unwrap();
    let broker = jit_core::Broker::builder(
        Arc::new(jit_core::MemoryStore::new()),
        Arc::new(broker_catalogue(&role_arn)),
    )
    .provider(Arc::new(provider))
    .auto_issue(auto_issue)
    .build()
    .unwrap();
    (broker, role_arn)
}
