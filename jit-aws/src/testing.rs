//! Test tooling (feature `testing`): a real moto server, SDK configurations
//! pointing at it, and IAM role fixtures. Used by jit-aws's own tests and by
//! every crate that tests against AWS through jit-aws (the vending server's
//! end-to-end tests, the Lambda function).
//!
//! [`moto_url`] takes `JIT_TEST_MOTO_URL` (set by the workspace's
//! `scripts/test.sh`), else starts or reuses a server through
//! `scripts/moto.sh` of the workspace this crate was built in. It panics,
//! failing the test, when neither works: tests against AWS never skip.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sts::config::interceptors::BeforeSerializationInterceptorContextRef;
use aws_sdk_sts::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;

use crate::AwsClients;

/// The account moto answers as.
pub const ACCOUNT: &str = "123456789012";

/// The workspace this crate was built in (where `scripts/moto.sh` lives).
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `scripts/moto.sh start`, with its state under `state` (relative to
/// the workspace; `target/moto` when `None`), and returns the server's URL.
pub fn start_moto(state: Option<&Path>) -> String {
    let dir = workspace().join(state.unwrap_or(Path::new("target/moto")));
    let out = Command::new("bash")
        .arg(workspace().join("scripts/moto.sh"))
        .arg("start")
        .env("JIT_MOTO_STATE", &dir)
        .output()
        .expect("cannot run scripts/moto.sh");
    assert!(
        out.status.success(),
        "scripts/moto.sh start failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = std::fs::read_to_string(dir.join("port")).expect("moto port file missing");
    format!("http://127.0.0.1:{}", port.trim())
}

/// Stops a server [`start_moto`] started with this `state`.
pub fn stop_moto(state: &Path) {
    let _ = Command::new("bash")
        .arg(workspace().join("scripts/moto.sh"))
        .arg("stop")
        .env("JIT_MOTO_STATE", workspace().join(state))
        .status();
}

/// The shared moto server of this test process (see the module docs).
pub fn moto_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match std::env::var("JIT_TEST_MOTO_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => start_moto(None),
    })
    .clone()
}

/// An SDK configuration for a moto server with static credentials, on
/// jit-aws's HTTP client.
pub async fn sdk(url: &str, key: &str, secret: &str, token: Option<&str>) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(crate::client::http_client())
        .region(Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(aws_credential_types::Credentials::new(
            key,
            secret,
            token.map(str::to_string),
            None,
            "test",
        ))
        .load()
        .await
}

/// The shared moto server as a broker would see it (moto checks no
/// signatures by default, so any key works).
pub async fn moto_sdk() -> SdkConfig {
    sdk(&moto_url(), "AKIATESTBROKER000000", "broker-secret", None).await
}

/// A trust policy anyone in the account may use, with the three actions a
/// broker needs.
pub fn open_trust() -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"},
            "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"]}],
    })
    .to_string()
}

/// A role with a unique name, this `MaxSessionDuration` and trust policy;
/// returns its ARN and id.
pub async fn create_role(sdk: &SdkConfig, max_session: i32, trust: &str) -> (String, String) {
    let iam = aws_sdk_iam::Client::new(sdk);
    let name = format!("jit-test-{}", uuid::Uuid::new_v4().simple());
    let out = iam
        .create_role()
        .role_name(&name)
        .assume_role_policy_document(trust)
        .max_session_duration(max_session)
        .send()
        .await
        .expect("create_role");
    let role = out.role().expect("create_role returned no role");
    (role.arn().to_string(), role.role_id().to_string())
}

/// Who these credentials are, says STS.
pub async fn caller_arn_of(url: &str, key: &str, secret: &str, token: &str) -> String {
    let out = aws_sdk_sts::Client::new(&sdk(url, key, secret, Some(token)).await)
        .get_caller_identity()
        .send()
        .await
        .expect("get_caller_identity");
    out.arn().expect("no arn").to_string()
}

/// Counts SDK operations by name (`AssumeRole`, `GetRole`, ...).
#[derive(Debug, Default, Clone)]
pub struct CallCounter(pub Arc<Mutex<BTreeMap<String, usize>>>);

impl CallCounter {
    /// Calls of one operation.
    pub fn get(&self, op: &str) -> usize {
        self.0.lock().unwrap().get(op).copied().unwrap_or(0)
    }

    /// Calls of every operation.
    pub fn total(&self) -> usize {
        self.0.lock().unwrap().values().sum()
    }
}

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "CallCounter"
    }

    fn read_before_serialization(
        &self,
        _ctx: &BeforeSerializationInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let op = cfg
            .load::<Metadata>()
            .map(|m| m.name().to_string())
            .unwrap_or_else(|| "?".into());
        *self.0.lock().unwrap().entry(op).or_default() += 1;
        Ok(())
    }
}

/// STS and IAM clients for `sdk` with a call counter on both.
pub fn counted_clients(sdk: &SdkConfig) -> (AwsClients, CallCounter) {
    let counter = CallCounter::default();
    let sts = aws_sdk_sts::Client::from_conf(
        aws_sdk_sts::config::Builder::from(sdk)
            .interceptor(counter.clone())
            .build(),
    );
    let iam = aws_sdk_iam::Client::from_conf(
        aws_sdk_iam::config::Builder::from(sdk)
            .interceptor(counter.clone())
            .build(),
    );
    (AwsClients { sts, iam }, counter)
}
