//! Shared test tooling. The moto helpers (`moto_url`, `sdk`, `create_role`,
//! `open_trust`, the call counter) are a small copy of
//! `jit-aws/tests/common/mod.rs`: test helpers are not part of jit-aws's API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_config::SdkConfig;
use jit_aws::{AwsClients, AwsConfig, AwsProvider};
use jit_core::audit::{AuditKind, AuditRecord, AuditSink};
use lambda_runtime::{Context, LambdaEvent};
use lambda_vendor::{Config, Vendor};
use serde_json::Value;

pub use jit_aws::testing::{moto_sdk, moto_url, open_trust, sdk, ACCOUNT};

/// A role with a unique name, a one-hour maximum and an open trust policy;
/// returns its ARN.
pub async fn create_role(sdk: &SdkConfig) -> String {
    jit_aws::testing::create_role(sdk, 3600, &open_trust())
        .await
        .0
}

/// The test catalogue: auto-approve for on-call, approval by leads for
/// engineering, and an entitlement only secops may ask for.
pub fn catalogue(role_arn: &str) -> String {
    format!(
        r#"
        [[entitlements]]
        id = "aws-auto"
        provider = "aws"
        max_duration = "1h"
        target = {{ role_arn = "{role_arn}" }}
        justification_pattern = "^(INC|CHG)-[0-9]+: .{{5,}}"
        [entitlements.eligible]
        groups = ["oncall", "engineering"]
        [entitlements.approval]
        groups = ["leads"]
        [entitlements.auto_approve]
        groups = ["oncall"]

        [[entitlements]]
        id = "aws-approval"
        provider = "aws"
        max_duration = "2h"
        target = {{ role_arn = "{role_arn}" }}
        require_ticket = true
        ticket_pattern = "^(INC|CHG)-[0-9]+$"
        [entitlements.eligible]
        groups = ["engineering"]
        [entitlements.approval]
        groups = ["leads"]

        [[entitlements]]
        id = "aws-break-glass"
        provider = "aws"
        max_duration = "1h"
        target = {{ role_arn = "{role_arn}" }}
        [entitlements.eligible]
        groups = ["secops"]
        [entitlements.auto_approve]
        "#
    )
}

/// Audit records as the JSON lines `StdoutSink` writes; optionally fails on one kind.
#[derive(Debug, Default)]
pub struct LinesSink {
    lines: Mutex<Vec<String>>,
    fail_on: Option<AuditKind>,
}

impl LinesSink {
    pub fn failing_on(kind: AuditKind) -> Self {
        Self {
            lines: Mutex::new(Vec::new()),
            fail_on: Some(kind),
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn text(&self) -> String {
        self.lines().join("\n")
    }
}

#[async_trait]
impl AuditSink for LinesSink {
    async fn append(&self, record: &AuditRecord) -> jit_core::Result<()> {
        if self.fail_on == Some(record.event.kind) {
            return Err(jit_core::Error::AuditFailed(
                "log stream unavailable".into(),
            ));
        }
        self.lines.lock().unwrap().push(record.to_json_line());
        Ok(())
    }
}

pub use jit_aws::testing::CallCounter;

/// STS and IAM clients for moto with a call counter on both.
pub async fn counted_clients() -> (AwsClients, CallCounter) {
    jit_aws::testing::counted_clients(&moto_sdk().await)
}

/// An AWS provider on moto. Role chaining is detected (one GetCallerIdentity):
/// moto's default identity is a user, so sessions may last up to the role's maximum.
pub async fn provider(clients: AwsClients) -> Arc<AwsProvider> {
    Arc::new(
        AwsProvider::builder(AwsConfig::default())
            .clients(clients)
            .build()
            .await
            .unwrap(),
    )
}

/// A vendor on moto with a fresh role, its audit lines and its call counter.
pub struct Fixture {
    pub vendor: Vendor,
    pub sink: Arc<LinesSink>,
    pub calls: CallCounter,
    pub role_arn: String,
}

pub async fn fixture_with(config: impl FnOnce(String) -> Config, sink: LinesSink) -> Fixture {
    let role_arn = create_role(&moto_sdk().await).await;
    let (clients, calls) = counted_clients().await;
    let sink = Arc::new(sink);
    let vendor = Vendor::builder(config(catalogue(&role_arn)))
        .provider(provider(clients).await)
        .audit_sink(sink.clone())
        .build()
        .await
        .unwrap();
    Fixture {
        vendor,
        sink,
        calls,
        role_arn,
    }
}

pub async fn fixture() -> Fixture {
    fixture_with(Config::with_catalogue, LinesSink::default()).await
}

/// A fixture event from `tests/events/`.
pub fn event(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/events")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The event with another JSON body.
pub fn with_body(mut event: Value, body: Value) -> Value {
    event["body"] = Value::String(body.to_string());
    event["isBase64Encoded"] = Value::Bool(false);
    event
}

/// A Lambda context as the runtime would pass it.
pub fn context() -> Context {
    let mut c = Context::default();
    c.request_id = uuid::Uuid::new_v4().to_string();
    c.invoked_function_arn =
        format!("arn:aws:lambda:us-east-1:{ACCOUNT}:function:jit-lambda-vendor");
    c
}

/// Invokes the handler as the runtime does; returns status and parsed body.
pub async fn invoke(vendor: &Vendor, event: Value) -> (u16, Value) {
    let proxy = vendor.handle(LambdaEvent::new(event, context())).await;
    assert_eq!(proxy["headers"]["content-type"], "application/json");
    assert_eq!(proxy["headers"]["cache-control"], "no-store");
    assert_eq!(proxy["isBase64Encoded"], false);
    let status = proxy["statusCode"].as_u64().unwrap() as u16;
    let body = serde_json::from_str(proxy["body"].as_str().unwrap()).unwrap();
    (status, body)
}

/// `sts:GetCallerIdentity` with credentials from a 200 body.
pub async fn caller_arn(creds: &Value) -> String {
    let sdk = sdk(
        &moto_url(),
        creds["AccessKeyId"].as_str().unwrap(),
        creds["SecretAccessKey"].as_str().unwrap(),
        Some(creds["SessionToken"].as_str().unwrap()),
    )
    .await;
    aws_sdk_sts::Client::new(&sdk)
        .get_caller_identity()
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_string()
}
