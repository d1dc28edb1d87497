//! The vending server with a `kind = "aws"` provider against a real moto
//! server, driven through the `jit` CLI the way AWS users meet it:
//! `credential-process` (reusing a still-valid grant), `exec` with the AWS
//! variables in the child only, revocation by the role's deny policy, and
//! no secret in the server's logs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/server.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use aws_config::SdkConfig;
use jit_aws::testing::{moto_url, sdk as moto_sdk_with};
use jit_core::local::LocalKey;
use serde_json::Value;
use support::ok;
use vending_server::demo::DemoIssuer;

/// The identity the server runs as (moto checks no signatures by default).
const BROKER_KEY: &str = "AKIATESTVENDING00000";
const BROKER_SECRET: &str = "vending-broker-secret";

async fn sdk(key: &str, secret: &str, token: Option<&str>) -> SdkConfig {
    moto_sdk_with(&moto_url(), key, secret, token).await
}

async fn create_role(sdk: &SdkConfig) -> String {
    let trust = jit_aws::testing::open_trust();
    jit_aws::testing::create_role(sdk, 3600, &trust).await.0
}

/// A server run from a config file: OIDC keys from a JWKS file, the
/// catalogue inline, SQLite, and an AWS provider pointed at moto.
type AwsServer = support::ConfigServer;

fn write_config(dir: &Path, issuer: &DemoIssuer, role_arn: &str) -> PathBuf {
    std::fs::write(dir.join("jwks.json"), issuer.jwks_json().to_string()).unwrap();
    let catalogue = format!(
        r#"
[admins]
groups = ["secops"]

[[entitlements]]
id = "prod-readonly"
provider = "aws"
max_duration = "1h"
target = {{ role_arn = "{role_arn}" }}
[entitlements.eligible]
groups = ["engineering"]
[entitlements.auto_approve]
groups = ["engineering"]
"#
    );
    let config = format!(
        r#"
listen = "127.0.0.1:0"
store_url = "sqlite://{db}"
catalogue = """{catalogue}"""

[auth]
issuer = "{iss}"
audience = "{aud}"
jwks_file = "jwks.json"
algorithms = ["EdDSA"]

[providers.aws]
kind = "aws"
endpoint_url = "{moto}"
region = "us-east-1"
role_chaining = "false"
"#,
        db = dir.join("jit.db").display(),
        iss = vending_server::demo::ISSUER,
        aud = vending_server::demo::AUDIENCE,
        moto = moto_url(),
    );
    let path = dir.join("server.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn start_server(dir: &Path, config: &Path) -> AwsServer {
    support::ConfigServer::start(dir, config, |c| {
        c.env("AWS_ACCESS_KEY_ID", BROKER_KEY)
            .env("AWS_SECRET_ACCESS_KEY", BROKER_SECRET)
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/aws-credentials",
            )
            .env("AWS_EC2_METADATA_DISABLED", "true");
    })
}

fn jit(server: &AwsServer, token: &str, args: &[&str], cwd: &Path) -> Output {
    // A profile in the caller's environment must not reach the child.
    server.jit(token, args, cwd, &[("AWS_PROFILE", "should-not-leak")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_grants_through_credential_process_exec_and_revoke() {
    let admin_sdk = sdk(BROKER_KEY, BROKER_SECRET, None).await;
    let role_arn = create_role(&admin_sdk).await;
    let dir = tempfile::tempdir().unwrap();
    let issuer = DemoIssuer::new(LocalKey::generate());
    let config = write_config(dir.path(), &issuer, &role_arn);
    let server = start_server(dir.path(), &config);
    let alice = issuer.token("alice", &["engineering"], 3600).unwrap();
    let admin = issuer.token("admin", &["secops"], 3600).unwrap();
    let cwd = dir.path();

    // credential_process: exactly one JSON line on stdout, version 1.
    let cp = [
        "credential-process",
        "prod-readonly",
        "--for",
        "30m",
        "--reason",
        "INC-9: read the logs",
    ];
    let first = ok(&jit(&server, &alice, &cp, cwd));
    assert_eq!(first.lines().count(), 1, "{first}");
    let doc: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(doc["Version"], 1);
    let key = doc["AccessKeyId"].as_str().unwrap().to_string();
    let secret = doc["SecretAccessKey"].as_str().unwrap().to_string();
    let session = doc["SessionToken"].as_str().unwrap().to_string();
    let expiration = chrono::DateTime::parse_from_rfc3339(doc["Expiration"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let left = expiration - chrono::Utc::now();
    assert!(
        left <= chrono::TimeDelta::minutes(30) && left > chrono::TimeDelta::minutes(28),
        "{left}"
    );

    // They work, as a session of the role named after the grant.
    let arn = arn_of(&key, &secret, &session).await;
    let role_name = role_arn.rsplit('/').next().unwrap();
    assert!(
        arn.contains(&format!(":assumed-role/{role_name}/jit-")),
        "{arn}"
    );

    // Called again, as AWS tools do for every command: the cached answer,
    // once the server says its grant is still active. Nothing new is minted.
    let cached: Value = serde_json::from_str(&ok(&jit(&server, &alice, &cp, cwd))).unwrap();
    assert_eq!(cached, doc);
    let cache_dir = cwd.join("cache");
    let files: Vec<_> = std::fs::read_dir(&cache_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&files[0]), 0o600);
        assert_eq!(mode(&cache_dir), 0o700);
    }

    // Without the cache: the same grant re-delivered, so the same session
    // (one revocation covers both) and the same end; STS never hands out a
    // secret twice, so the keys are fresh ones for that window.
    let mut uncached = cp.to_vec();
    uncached.push("--no-cache");
    let again: Value = serde_json::from_str(&ok(&jit(&server, &alice, &uncached, cwd))).unwrap();
    assert_ne!(again["AccessKeyId"], key.as_str());
    let arn_again = arn_of(
        again["AccessKeyId"].as_str().unwrap(),
        again["SecretAccessKey"].as_str().unwrap(),
        again["SessionToken"].as_str().unwrap(),
    )
    .await;
    assert_eq!(arn_again, arn);
    let again_ends = chrono::DateTime::parse_from_rfc3339(again["Expiration"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    assert!(again_ends <= expiration, "{again_ends} > {expiration}");
    assert!(expiration - again_ends < chrono::TimeDelta::seconds(30));
    let active = |out: String| -> usize {
        let v: Value = serde_json::from_str(&out).unwrap();
        v["requests"].as_array().unwrap().len()
    };
    let ls = ["--json", "ls", "--state", "active"];
    assert_eq!(active(ok(&jit(&server, &alice, &ls, cwd))), 1);
    // Unless the grant has less left than asked for: then a new one.
    let mut longer = cp.to_vec();
    longer.extend(["--min-remaining", "31m"]);
    let fresh: Value = serde_json::from_str(&ok(&jit(&server, &alice, &longer, cwd))).unwrap();
    assert_ne!(fresh["AccessKeyId"], key.as_str());
    assert_eq!(active(ok(&jit(&server, &alice, &ls, cwd))), 2);

    // exec: the AWS variables in the child only, the profile and the OIDC token gone.
    let script = "printf '%s\\n' \"$AWS_ACCESS_KEY_ID\" \"$AWS_SECRET_ACCESS_KEY\" \"$AWS_SESSION_TOKEN\" \
                  \"$AWS_CREDENTIAL_EXPIRATION\" \"${AWS_PROFILE:-unset}\" \"${JIT_TOKEN:-unset}\" > child; exit 3";
    let out = jit(
        &server,
        &alice,
        &[
            "exec",
            "prod-readonly",
            "--for",
            "30m",
            "--reason",
            "x",
            "--",
            "sh",
            "-c",
            script,
        ],
        cwd,
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let child = std::fs::read_to_string(cwd.join("child")).unwrap();
    let lines: Vec<&str> = child.lines().collect();
    // The grant ending last is reused: the fresh one's session, window and end.
    assert_eq!(
        arn_of(lines[0], lines[1], lines[2]).await,
        arn_of(
            fresh["AccessKeyId"].as_str().unwrap(),
            fresh["SecretAccessKey"].as_str().unwrap(),
            fresh["SessionToken"].as_str().unwrap()
        )
        .await
    );
    let child_ends = chrono::DateTime::parse_from_rfc3339(lines[3]).unwrap();
    let fresh_ends =
        chrono::DateTime::parse_from_rfc3339(fresh["Expiration"].as_str().unwrap()).unwrap();
    assert!(child_ends <= fresh_ends && fresh_ends - child_ends < chrono::TimeDelta::seconds(30));
    assert_eq!(&lines[4..], ["unset", "unset"]);
    // The secrets were in the child's environment only, never on jit's stdout.
    assert!(out.stdout.is_empty());

    // An unknown entitlement is a clear error on stderr, nothing on stdout.
    let out = jit(
        &server,
        &alice,
        &[
            "credential-process",
            "nope",
            "--for",
            "30m",
            "--reason",
            "x",
        ],
        cwd,
    );
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nope"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Revoke the first grant: its session is denied by the role's inline policy.
    let mine: Value = serde_json::from_str(&ok(&jit(
        &server,
        &alice,
        &["--json", "ls", "--state", "active"],
        cwd,
    )))
    .unwrap();
    let rows = mine["requests"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{mine}");
    // The first grant is the one ending first.
    let first_id = rows
        .iter()
        .min_by_key(|r| r["grant"]["ends_at"].as_str().unwrap().to_string())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let v: Value = serde_json::from_str(&ok(&jit(
        &server,
        &alice,
        &["--json", "revoke", &first_id, "--reason", "done"],
        cwd,
    )))
    .unwrap();
    assert_eq!(v["request"]["state"], "revoked");
    let policy = aws_sdk_iam::Client::new(&admin_sdk)
        .get_role_policy()
        .role_name(role_name)
        .policy_name("jit-revocations")
        .send()
        .await
        .unwrap();
    let doc = jit_aws::client::percent_decode(policy.policy_document());
    let session_name = arn.rsplit('/').next().unwrap();
    assert!(doc.contains(&format!(":{session_name}")), "{doc}");
    // The fresh grant's session is not denied.
    assert_eq!(doc.matches("\"Deny\"").count(), 1, "{doc}");

    // The audit chain verifies, and nothing secret reached the audit log or
    // the server's (debug) logs.
    let out = ok(&jit(&server, &admin, &["audit", "verify"], cwd));
    assert!(out.contains("audit chain verified"), "{out}");
    let export = reqwest::Client::new()
        .get(format!("{}/v1/audit", server.url))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(export.contains(&key), "the audit names the access key id");
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(
        log.contains("aws provider") || log.contains("AssumeRole"),
        "debug logs were captured"
    );
    for s in [
        secret.as_str(),
        session.as_str(),
        fresh["SecretAccessKey"].as_str().unwrap(),
        fresh["SessionToken"].as_str().unwrap(),
        BROKER_SECRET,
    ] {
        assert!(!log.contains(s), "a secret is in the server log");
        assert!(!export.contains(s), "a secret is in the audit log");
    }

    // The cached grant (the fresh one) is revoked: the cache is not used
    // again, and a new grant is made.
    let fresh_id = rows
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .find(|id| *id != first_id)
        .unwrap()
        .to_string();
    ok(&jit(
        &server,
        &alice,
        &["revoke", &fresh_id, "--reason", "done"],
        cwd,
    ));
    let after: Value = serde_json::from_str(&ok(&jit(&server, &alice, &cp, cwd))).unwrap();
    assert_ne!(after["AccessKeyId"], fresh["AccessKeyId"]);
    assert_ne!(
        arn_of(
            after["AccessKeyId"].as_str().unwrap(),
            after["SecretAccessKey"].as_str().unwrap(),
            after["SessionToken"].as_str().unwrap()
        )
        .await,
        arn
    );
}

/// Who these credentials are, says STS (moto).
async fn arn_of(key: &str, secret: &str, token: &str) -> String {
    jit_aws::testing::caller_arn_of(&moto_url(), key, secret, token).await
}
