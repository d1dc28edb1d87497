//! The vending server with a `kind = "azure"` provider against jit-azure's
//! fake of ARM and Entra, driven through the `jit` CLI: the requester's
//! Entra object id from a token claim, a request a lead approves, the PIM
//! schedule in force at the fake, `jit` saying what was assigned where and
//! until when, revocation that removes the schedule, and an audit chain
//! that verifies.
//!
//! The fake serves TLS with a test CA; the server trusts it through the
//! provider's documented `ca_file` setting (extra roots beside the webpki
//! ones). Nothing else about the server changes for the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/server.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use jit_azure::testing::{
    reader_role, scope, RunningFake, CLIENT_ID, CLIENT_SECRET, OBJECT_ID, TENANT,
};
use jit_core::local::LocalKey;
use serde_json::Value;
use support::ok;
use vending_server::demo::DemoIssuer;

type AzureServer = support::ConfigServer;

fn write_config(dir: &Path, issuer: &DemoIssuer, fake: &RunningFake) -> PathBuf {
    std::fs::write(dir.join("jwks.json"), issuer.jwks_json().to_string()).unwrap();
    std::fs::write(dir.join("fake-ca.pem"), fake.server.ca_pem()).unwrap();
    let catalogue = format!(
        r#"
[admins]
groups = ["secops"]

[[entitlements]]
id = "rg-reader"
provider = "azure"
max_duration = "1h"
target = {{ scope = "{scope}", role = "Reader" }}
[entitlements.eligible]
groups = ["engineering"]
[entitlements.approval]
groups = ["leads"]
"#,
        scope = scope()
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

[auth.claims.attributes]
azure_object_id = "oid"

[providers.azure]
kind = "azure"
tenant_id = "{TENANT}"
client_id = "{CLIENT_ID}"
authority_host = "{fake}"
arm_endpoint = "{fake}"
# The fake's test CA, relative to this file; production needs none.
ca_file = "fake-ca.pem"
provisioning_wait = "5s"
poll_interval = "1s"
"#,
        db = dir.join("jit.db").display(),
        iss = vending_server::demo::ISSUER,
        aud = vending_server::demo::AUDIENCE,
        fake = fake.url(),
    );
    let path = dir.join("server.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn start_server(dir: &Path, config: &Path) -> AzureServer {
    support::ConfigServer::start(dir, config, |c| {
        // The secret as operators pass it: a variable, which wins over the table.
        c.env("JIT_AZURE_CLIENT_SECRET", CLIENT_SECRET);
    })
}

fn jit(server: &AzureServer, token: &str, args: &[&str], cwd: &Path) -> Output {
    // Stale values in the caller's environment must not reach the child.
    server.jit(token, args, cwd, &[("JIT_ACCESS_ROLE_NAME", "stale")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_grant_requested_approved_shown_and_revoked_through_the_server() {
    // The server runs on the system clock: so must the fake it talks to.
    let fake = RunningFake::start_on_system_clock();
    fake.state.set_default_policy_max("PT8H");
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let issuer = DemoIssuer::new(LocalKey::generate());
    let config = write_config(cwd, &issuer, &fake);
    let server = start_server(cwd, &config);
    let oid: serde_json::Map<String, Value> =
        [("oid".to_string(), Value::String(OBJECT_ID.into()))]
            .into_iter()
            .collect();
    let alice = issuer
        .token_with("alice", &["engineering"], 3600, &oid)
        .unwrap();
    // A requester without the claim: refused before anything reaches Azure.
    let nobody = issuer.token("carol", &["engineering"], 3600).unwrap();
    let lead = issuer.token("bob", &["leads"], 3600).unwrap();
    let admin = issuer.token("admin", &["secops"], 3600).unwrap();

    let request = [
        "--json",
        "request",
        "rg-reader",
        "--for",
        "30m",
        "--reason",
        "INC-7: read the logs",
    ];
    let v: Value = serde_json::from_str(&ok(&jit(&server, &alice, &request, cwd))).unwrap();
    assert_eq!(v["request"]["state"], "pending", "{v}");
    let id = v["request"]["id"].as_str().unwrap().to_string();
    // Nothing at Azure before the approval.
    assert_eq!(fake.state.request_count(), 0);
    // The requester cannot approve their own request.
    assert!(!jit(&server, &alice, &["approve", &id], cwd)
        .status
        .success());

    // A lead approves: the server issues the PIM schedule request.
    let v: Value = serde_json::from_str(&ok(&jit(
        &server,
        &lead,
        &["--json", "approve", &id, "--comment", "ok"],
        cwd,
    )))
    .unwrap();
    assert_eq!(v["request"]["state"], "active", "{v}");
    assert_eq!(
        fake.state
            .active_schedules(&scope(), OBJECT_ID, &reader_role()),
        1
    );
    assert_eq!(fake.state.violations(), Vec::<String>::new());

    // `jit credentials` says what was assigned, where, to whom, until when.
    let shown = ok(&jit(&server, &alice, &["credentials", &id], cwd));
    assert!(
        shown.contains(&format!("scope        {}", scope())),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("role         Reader ({})", reader_role())),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("assigned to  {OBJECT_ID}")),
        "{shown}"
    );
    assert!(shown.contains("until "), "{shown}");
    // The same as JSON, its end the schedule's.
    let creds: Value = serde_json::from_str(&ok(&jit(
        &server,
        &alice,
        &["--json", "credentials", &id],
        cwd,
    )))
    .unwrap();
    assert_eq!(creds["kind"], "assignment");
    assert_eq!(creds["scope"], scope());
    assert_eq!(creds["role"], reader_role());
    assert_eq!(creds["role_name"], "Reader");
    assert_eq!(creds["principal"], OBJECT_ID);
    let ends = chrono::DateTime::parse_from_rfc3339(creds["expires_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let left = ends - chrono::Utc::now();
    assert!(
        left <= chrono::TimeDelta::minutes(30) && left > chrono::TimeDelta::minutes(28),
        "{left}"
    );

    // `jit exec`: the child is told the same, reusing the active grant.
    let script =
        "printf '%s\\n' \"$JIT_ACCESS_SCOPE\" \"$JIT_ACCESS_ROLE\" \"$JIT_ACCESS_ROLE_NAME\" \
                  \"$JIT_ACCESS_PRINCIPAL\" \"$JIT_ACCESS_EXPIRES_AT\" > child";
    ok(&jit(
        &server,
        &alice,
        &[
            "exec",
            "rg-reader",
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
    ));
    let child = std::fs::read_to_string(cwd.join("child")).unwrap();
    let lines: Vec<&str> = child.lines().collect();
    assert_eq!(
        lines[..4],
        [scope().as_str(), &reader_role(), "Reader", OBJECT_ID]
    );
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(lines[4]).unwrap(),
        ends
    );
    // Still one schedule: the grant was reused, not made again.
    assert_eq!(
        fake.state
            .active_schedules(&scope(), OBJECT_ID, &reader_role()),
        1
    );

    // A requester without an object id: the issue fails with a typed error
    // naming the attribute, and nothing is sent to Azure.
    let before = fake.state.request_count();
    let v: Value = serde_json::from_str(&ok(&jit(&server, &nobody, &request, cwd))).unwrap();
    let carol = v["request"]["id"].as_str().unwrap().to_string();
    let out = jit(&server, &lead, &["--json", "approve", &carol], cwd);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_str(&ok(&jit(
        &server,
        &nobody,
        &["--json", "status", &carol],
        cwd,
    )))
    .unwrap();
    assert_eq!(status["request"]["state"], "failed", "{status} {text}");
    assert!(
        status["request"]["note"]
            .as_str()
            .unwrap_or_default()
            .contains("azure_object_id"),
        "{status}"
    );
    assert_eq!(fake.state.request_count(), before);

    // Revoke: the schedule is gone at the fake.
    let v: Value = serde_json::from_str(&ok(&jit(
        &server,
        &alice,
        &["--json", "revoke", &id, "--reason", "done"],
        cwd,
    )))
    .unwrap();
    assert_eq!(v["request"]["state"], "revoked", "{v}");
    assert_eq!(
        fake.state
            .active_schedules(&scope(), OBJECT_ID, &reader_role()),
        0
    );
    // Its credentials are no longer handed out.
    assert!(!jit(&server, &alice, &["credentials", &id], cwd)
        .status
        .success());

    // The audit chain verifies, and the broker's secret reached neither the
    // audit log nor the server's debug logs.
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
    assert!(
        export.contains(OBJECT_ID) || export.contains(&id),
        "{export}"
    );
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(
        log.contains("azure grant issued"),
        "debug logs were captured"
    );
    assert!(
        !log.contains(CLIENT_SECRET),
        "the client secret is in the server log"
    );
    assert!(!export.contains(CLIENT_SECRET));
    // Nor did the fake's bearer tokens.
    assert!(
        !log.contains("fake-token-"),
        "a bearer token is in the server log"
    );
}
