//! The output adapters, read back by real AWS SDKs (the Rust SDK's own
//! `credential_process` and profile parsers, and boto3 from moto's
//! virtualenv for environment variables, profiles and `credential_process`)
//! and used against moto: `sts:GetCallerIdentity` must name the grant's
//! session.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::ProvideCredentials;
use chrono::TimeDelta;
use common::*;
use jit_aws::output::{credential_process_json, env_vars, profile, shell_exports};
use jit_aws::{AwsConfig, AwsProvider};
use jit_core::testing::provider::{spec, ProviderHarness};
use jit_core::{Credentials, Issued, Principal, SystemClock};
use serde_json::json;

async fn issued() -> Issued {
    let sdk = moto_sdk().await;
    let (role_arn, _) = create_role(&sdk, 3600, &open_trust()).await;
    let p = AwsProvider::builder(
        AwsConfig::default()
            .with_role_chaining(false)
            .with_endpoint_url(moto_url()),
    )
    .sdk_config(sdk)
    .build()
    .await
    .unwrap();
    let h = ProviderHarness {
        provider: Arc::new(p),
        entitlement: entitlement(
            "aws.outputs",
            json!({"role_arn": role_arn}),
            Duration::from_secs(3600),
        ),
        subject: Principal::new("outputs@example.com").unwrap(),
        clock: Arc::new(SystemClock),
        probe: Arc::new(StsProbe { url: moto_url() }),
        advance: None,
    };
    h.provider
        .issue(&spec(&h, TimeDelta::minutes(20)))
        .await
        .unwrap()
}

fn parts(c: &Credentials) -> (String, String, String, SystemTime) {
    let Credentials::Aws {
        access_key_id,
        secret_access_key,
        session_token,
        expires_at,
    } = c
    else {
        panic!("not aws credentials")
    };
    (
        access_key_id.clone(),
        secret_access_key.expose().to_string(),
        session_token.expose().to_string(),
        SystemTime::from(*expires_at),
    )
}

async fn caller_arn(creds: aws_credential_types::Credentials) -> String {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(jit_aws::client::http_client())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(moto_url())
        .credentials_provider(creds)
        .load()
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

fn assert_same(
    got: &aws_credential_types::Credentials,
    want: &(String, String, String, SystemTime),
) {
    assert_eq!(got.access_key_id(), want.0);
    assert_eq!(got.secret_access_key(), want.1);
    assert_eq!(got.session_token(), Some(want.2.as_str()));
    // RFC 3339 to the second.
    let exp = got.expiry().expect("no expiry");
    let diff = exp.duration_since(want.3).unwrap_or_else(|e| e.duration());
    assert!(diff < Duration::from_secs(1), "expiry differs by {diff:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_sdk_reads_credential_process_and_profile_output() {
    let issued = issued().await;
    let want = parts(&issued.credentials);
    let arn = issued.grant.details["assumed_role_arn"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();

    let json_path = dir.path().join("creds.json");
    std::fs::write(
        &json_path,
        credential_process_json(&issued.credentials)
            .unwrap()
            .expose(),
    )
    .unwrap();
    let cp = aws_config::credential_process::CredentialProcessProvider::new(format!(
        "cat {}",
        json_path.display()
    ));
    let got = cp.provide_credentials().await.unwrap();
    assert_same(&got, &want);
    assert_eq!(caller_arn(got).await, arn);

    #[allow(deprecated)]
    let files = aws_config::profile::profile_file::ProfileFiles::builder()
        .with_contents(
            aws_config::profile::profile_file::ProfileFileKind::Credentials,
            profile(&issued.credentials, "jit-test").unwrap().expose(),
        )
        .build();
    let pp = aws_config::profile::ProfileFileCredentialsProvider::builder()
        .configure(
            &aws_config::provider_config::ProviderConfig::empty()
                .with_http_client(jit_aws::client::http_client()),
        )
        .profile_files(files)
        .profile_name("jit-test")
        .build();
    let got = pp.provide_credentials().await.unwrap();
    assert_eq!(got.access_key_id(), want.0);
    assert_eq!(got.secret_access_key(), want.1);
    assert_eq!(got.session_token(), Some(want.2.as_str()));
    assert_eq!(caller_arn(got).await, arn);
}

fn venv_python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let venv = std::env::var("JIT_MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or(root.join(".venv"));
    let py = venv.join("bin/python");
    assert!(
        py.exists(),
        "no python in {}: run scripts/moto.sh install",
        venv.display()
    );
    py
}

/// boto3 (installed with moto) asks moto who it is, with credentials from
/// wherever its default chain finds them in `env`.
fn boto3_caller_arn(env: &[(&str, String)]) -> String {
    let mut cmd = Command::new(venv_python());
    cmd.arg("-c").arg(
        "import boto3, sys; print(boto3.client('sts', endpoint_url=sys.argv[1], region_name='us-east-1').get_caller_identity()['Arn'])",
    );
    cmd.arg(moto_url());
    for k in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
    ] {
        cmd.env_remove(k);
    }
    cmd.env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent");
    cmd.env("AWS_EC2_METADATA_DISABLED", "true");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "boto3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn boto3_reads_env_vars_profile_and_credential_process() {
    let issued = issued().await;
    let arn = issued.grant.details["assumed_role_arn"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();

    let vars: Vec<(&str, String)> = env_vars(&issued.credentials)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.expose().to_string()))
        .collect();
    assert_eq!(boto3_caller_arn(&vars), arn);

    let creds_file = dir.path().join("credentials");
    std::fs::write(
        &creds_file,
        profile(&issued.credentials, "jit").unwrap().expose(),
    )
    .unwrap();
    assert_eq!(
        boto3_caller_arn(&[
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                creds_file.display().to_string()
            ),
            ("AWS_PROFILE", "jit".into()),
        ]),
        arn
    );

    let json_path = dir.path().join("creds.json");
    std::fs::write(
        &json_path,
        credential_process_json(&issued.credentials)
            .unwrap()
            .expose(),
    )
    .unwrap();
    let config_file = dir.path().join("config");
    std::fs::write(
        &config_file,
        format!(
            "[profile jit]\ncredential_process = cat {}\n",
            json_path.display()
        ),
    )
    .unwrap();
    assert_eq!(
        boto3_caller_arn(&[
            ("AWS_CONFIG_FILE", config_file.display().to_string()),
            ("AWS_PROFILE", "jit".into()),
        ]),
        arn
    );

    // `eval "$(...)"` in a shell, then boto3 in that environment.
    let script = format!(
        "{}exec {} -c \"import boto3; print(boto3.client('sts', endpoint_url='{}', region_name='us-east-1').get_caller_identity()['Arn'])\"",
        shell_exports(&issued.credentials).unwrap().expose(),
        venv_python().display(),
        moto_url()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), arn);
}
