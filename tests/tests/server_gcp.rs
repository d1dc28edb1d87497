//! The vending server with two `kind = "gcp"` providers (binding and token
//! mode) against jit-gcp's fake, driven by the `jit` binary: the broker's
//! service-account key is generated here, the endpoints come from the
//! provider tables, and the IAM member from a token claim
//! (`[auth.claims.attributes]`). Binding mode: request → approve → the
//! member holds the role at the fake → revoke → the binding is gone. Token
//! mode: `jit exec` hands the token to gcloud and Terraform variables,
//! `jit token-file` writes it privately, and an early revoke is refused
//! with the honest error. The audit chain verifies at the end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/server.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use jit_core::local::LocalKey;
use jit_core::testing::fake::FakeServer;
use jit_core::ManualClock;
use jit_gcp::testing::{router, FakeGcp, TestKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::{install_crypto, ok};
use vending_server::demo::{DemoIssuer, AUDIENCE, ISSUER};

const PROJECT: &str = "projects/prod-1234";
const ROLE: &str = "roles/storage.admin";
const SA: &str = "deployer@prod-1234.iam.gserviceaccount.com";
const BROKER: &str = "jit-broker@prod-1234.iam.gserviceaccount.com";
const ALICE: &str = "user:alice@example.com";

type GcpServer = support::ConfigServer;

/// A token signed by the demo issuer's key, with a `gcp_member` claim.
fn token(key: &LocalKey, sub: &str, groups: &[&str], member: Option<&str>) -> String {
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "groups": groups,
                            "iat": now, "nbf": now, "exp": now + 3600});
    if let Some(m) = member {
        claims["gcp_member"] = json!(m);
    }
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(key.kid().to_string());
    let pem = key.to_pkcs8_pem().unwrap();
    let body: String = pem
        .expose()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body).unwrap();
    install_crypto();
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&der)).unwrap()
}

fn write_config(dir: &Path, issuer: &DemoIssuer, fake_url: &str) -> PathBuf {
    std::fs::write(dir.join("jwks.json"), issuer.jwks_json().to_string()).unwrap();
    let catalogue = format!(
        r#"
[admins]
groups = ["secops"]

[[entitlements]]
id = "gcp-storage-admin"
provider = "gcp"
max_duration = "2h"
target = {{ resource = "{PROJECT}", role = "{ROLE}" }}
[entitlements.eligible]
groups = ["engineering"]
[entitlements.approval]
groups = ["leads"]

[[entitlements]]
id = "gcp-deployer"
provider = "gcp-token"
max_duration = "1h"
target = {{ service_account = "{SA}" }}
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
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
jwks_file = "jwks.json"
algorithms = ["EdDSA"]
[auth.claims.attributes]
gcp_member = "gcp_member"

[providers.gcp]
kind = "gcp"
credentials = "broker-sa.json"
endpoint_url = "{fake_url}"

[providers.gcp-token]
kind = "gcp"
mode = "token"
credentials = "broker-sa.json"
endpoint_url = "{fake_url}"
"#,
        db = dir.join("jit.db").display(),
    );
    let path = dir.join("server.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn start_server(dir: &Path, config: &Path) -> GcpServer {
    support::ConfigServer::start(dir, config, |c| {
        // Nothing of the machine's own Google setup may leak in.
        c.env_remove("GOOGLE_APPLICATION_CREDENTIALS")
            .env("CLOUDSDK_CONFIG", dir.join("no-gcloud"));
    })
}

fn jit(server: &GcpServer, token: &str, args: &[&str], cwd: &Path) -> Output {
    // The caller's own token file must not compete with the grant's token.
    server.jit(
        token,
        args,
        cwd,
        &[("CLOUDSDK_AUTH_ACCESS_TOKEN_FILE", "/should/not/leak")],
    )
}

fn id_of(out: &Output) -> String {
    let v: Value = serde_json::from_str(&ok(out)).unwrap();
    v["request"]["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_bindings_and_tokens_through_the_server_and_the_cli() {
    // The fake, with the broker's key generated here and registered with it.
    let clock = ManualClock::starting_now();
    let fake = FakeGcp::new(Arc::new(clock.clone()));
    fake.add_resource(PROJECT);
    fake.add_service_account(SA);
    let key = TestKey::generate(BROKER);
    fake.register_key(&key);
    let unrelated = json!({"role": "roles/viewer", "members": ["user:bob@example.com"]});
    fake.put_bindings(PROJECT, vec![unrelated.clone()]);
    let fake_server = FakeServer::builder()
        .clock(clock.clone())
        .name("fake-gcp")
        .start(router(fake.clone()))
        .unwrap();
    let fake_url = fake_server.http_url().to_string();

    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    std::fs::write(
        cwd.join("broker-sa.json"),
        key.key_file_json(&format!("{fake_url}/token")).to_string(),
    )
    .unwrap();
    let issuer_key = LocalKey::generate();
    let issuer = DemoIssuer::new(
        LocalKey::from_pkcs8_pem(issuer_key.to_pkcs8_pem().unwrap().expose()).unwrap(),
    );
    let config = write_config(cwd, &issuer, &fake_url);
    let server = start_server(cwd, &config);
    let alice = token(&issuer_key, "alice", &["engineering"], Some(ALICE));
    let bob = token(&issuer_key, "bob", &["leads"], None);
    let admin = token(&issuer_key, "admin", &["secops"], None);

    // Binding mode: request, approved by someone else, held at the fake.
    let req = [
        "--json",
        "request",
        "gcp-storage-admin",
        "--for",
        "30m",
        "--reason",
        "INC-21: fix the bucket ACLs",
    ];
    let id = id_of(&jit(&server, &alice, &req, cwd));
    assert!(!fake.holds(PROJECT, ROLE, ALICE), "held before approval");
    ok(&jit(&server, &bob, &["approve", &id], cwd));
    let status: Value =
        serde_json::from_str(&ok(&jit(&server, &alice, &["--json", "status", &id], cwd))).unwrap();
    assert_eq!(status["request"]["state"], "active", "{status}");
    assert!(fake.holds(PROJECT, ROLE, ALICE), "approved but not held");
    let bindings = fake.bindings(PROJECT);
    assert_eq!(bindings.len(), 2, "{bindings:?}");
    assert!(bindings.contains(&unrelated));
    let ours = bindings.iter().find(|b| b != &&unrelated).unwrap();
    assert!(ours["condition"]["title"]
        .as_str()
        .unwrap()
        .starts_with("jit-"));
    assert!(ours["condition"]["expression"]
        .as_str()
        .unwrap()
        .starts_with("request.time < timestamp("));
    // Revoke: the binding is gone, the unrelated one untouched.
    ok(&jit(
        &server,
        &alice,
        &["revoke", &id, "--reason", "done"],
        cwd,
    ));
    assert!(!fake.holds(PROJECT, ROLE, ALICE), "revoked but still held");
    assert_eq!(fake.bindings(PROJECT), vec![unrelated.clone()]);

    // Token mode: `exec` hands the token to gcloud and Terraform.
    let env_file = cwd.join("child-env");
    let script = format!("env > '{}'", env_file.display());
    let exec = [
        "exec",
        "gcp-deployer",
        "--for",
        "20m",
        "--reason",
        "INC-22: deploy",
        "--",
        "sh",
        "-c",
        &script,
    ];
    ok(&jit(&server, &alice, &exec, cwd));
    let env = std::fs::read_to_string(&env_file).unwrap();
    let var = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} missing from the child's environment"))
            .to_string()
    };
    let access = var("CLOUDSDK_AUTH_ACCESS_TOKEN");
    assert_eq!(var("GOOGLE_OAUTH_ACCESS_TOKEN"), access);
    assert_eq!(var("JIT_ACCESS_TOKEN"), access);
    assert!(fake.token_works(&access), "not a token the fake minted");
    assert!(!env.contains("CLOUDSDK_AUTH_ACCESS_TOKEN_FILE="));
    assert!(!env.contains("JIT_TOKEN="));
    let token_id = var("JIT_REQUEST_ID");

    // `token-file`: the same grant (reused, not a new request), its token
    // delivered again (an access token is never stored, so the provider
    // mints it anew under the same grant), in a private file.
    let file = cwd.join("gcloud-token");
    let tf = [
        "token-file",
        "gcp-deployer",
        "--for",
        "20m",
        "--reason",
        "INC-22: deploy",
        "--out",
        file.to_str().unwrap(),
    ];
    let printed = ok(&jit(&server, &alice, &tf, cwd));
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(fake.token_works(&written), "not a token the fake minted");
    assert!(printed.contains(&token_id), "not the same grant: {printed}");
    assert!(!printed.contains(&written), "the token was printed");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }

    // An early revoke is refused with the honest reason; the token still works.
    let out = jit(
        &server,
        &alice,
        &["revoke", &token_id, "--reason", "done"],
        cwd,
    );
    assert!(!out.status.success(), "an access token was 'revoked'");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("revo"), "{err}");
    let status: Value = serde_json::from_str(&ok(&jit(
        &server,
        &alice,
        &["--json", "status", &token_id],
        cwd,
    )))
    .unwrap();
    assert_eq!(status["request"]["state"], "active", "{status}");
    assert!(fake.token_works(&access));

    // The audit chain verifies, and no secret reached the server's log.
    ok(&jit(&server, &admin, &["audit", "verify"], cwd));
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(
        !log.contains(&access),
        "the access token is in the server log"
    );
    assert!(
        !log.contains("PRIVATE KEY"),
        "the broker's key is in the server log"
    );
    assert!(fake.calls("setIamPolicy") >= 2);
}
