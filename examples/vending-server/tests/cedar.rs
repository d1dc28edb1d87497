//! A server configured with `[policy] kind = "cedar"` decides requests with
//! its Cedar policy set: a short request is auto-approved by the
//! `@decision("auto_approve")` permit, a longer one waits for a human, and a
//! requester no permit covers is denied, naming nothing of the catalogue.
#![cfg(feature = "cedar")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;
use vending_server::config::Config;
use vending_server::{demo, Server};

const ENTITLEMENTS: &str = r#"
[[entitlements]]
id = "orders-db"
provider = "local"
max_duration = "1h"
target = { audience = "orders-db" }
require_justification = false

[entitlements.approval]
groups = ["db-leads"]
"#;

const POLICIES: &str = r#"
@id("orders-db: engineering")
permit (
  principal in Jit::Group::"engineering",
  action == Jit::Action::"request",
  resource == Jit::Entitlement::"orders-db"
);

@id("orders-db: short")
@decision("auto_approve")
permit (
  principal,
  action == Jit::Action::"request",
  resource == Jit::Entitlement::"orders-db"
)
when { context.duration_secs <= 900 };
"#;

async fn server(dir: &std::path::Path) -> (Server, demo::DemoIssuer) {
    use jsonwebtoken::crypto::{rust_crypto, CryptoProvider};
    let _ = CryptoProvider::install_default(&rust_crypto::DEFAULT_PROVIDER);
    std::fs::create_dir(dir.join("cedar")).unwrap();
    std::fs::write(dir.join("cedar/entitlements.toml"), ENTITLEMENTS).unwrap();
    std::fs::write(dir.join("cedar/policies.cedar"), POLICIES).unwrap();
    std::fs::write(
        dir.join("server.toml"),
        format!(
            r#"
store_url = "memory:"

[policy]
kind = "cedar"
entitlements = "cedar/entitlements.toml"
policies = "cedar/policies.cedar"

[auth]
issuer = "{}"
audience = "{}"
algorithms = ["EdDSA"]

[providers.local]
kind = "local"
key_file = "local.pem"
"#,
            demo::ISSUER,
            demo::AUDIENCE
        ),
    )
    .unwrap();
    // Paths are relative to the config file's directory.
    let mut config = Config::load(&dir.join("server.toml")).unwrap();
    config.ignore_provider_env = true;
    assert_eq!(
        config.policy.policies.as_deref(),
        Some(dir.join("cedar/policies.cedar").as_path())
    );
    let issuer = demo::DemoIssuer::new(demo::load_or_generate_key(None).unwrap());
    let server = Server::build(config, Some(&issuer)).await.unwrap();
    (server, issuer)
}

async fn submit(server: &Server, token: &str, duration: &str) -> (StatusCode, Value) {
    let body = json!({"entitlement": "orders-db", "duration": duration, "justification": ""});
    let resp = server
        .router()
        .oneshot(
            Request::post("/v1/requests")
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn requests_are_decided_by_the_cedar_policy_set() {
    let dir = tempfile::tempdir().unwrap();
    let (server, issuer) = server(dir.path()).await;
    assert_eq!(server.state.broker.policy().entitlements().len(), 1);
    let alice = issuer.token("alice", &["engineering"], 600).unwrap();

    // Ten minutes: the auto-approve permit holds, credentials at once.
    let (status, v) = submit(&server, &alice, "10m").await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["request"]["state"], "active", "{v}");
    assert!(v["credentials"].is_object(), "{v}");

    // Thirty minutes: eligible, but only the plain permit holds: a human decides.
    let (status, v) = submit(&server, &alice, "30m").await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["request"]["state"], "pending", "{v}");
    assert!(v["credentials"].is_null(), "{v}");

    // Not in `engineering`: the auto-approve permit alone makes no one eligible.
    let eve = issuer.token("eve", &["sales"], 600).unwrap();
    let (status, v) = submit(&server, &eve, "10m").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["error"]["code"], "denied", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("only by auto-approve policies (`orders-db: short`)"),
        "{v}"
    );
}

#[tokio::test]
async fn a_policy_that_does_not_type_check_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policies.cedar");
    std::fs::write(dir.path().join("entitlements.toml"), ENTITLEMENTS).unwrap();
    std::fs::write(
        &path,
        format!(
            "{POLICIES}\n@id(\"orders-db: typo\")\npermit (principal, action == Jit::Action::\"request\", resource)\nwhen {{ context.duratoin_secs < 60 }};\n"
        ),
    )
    .unwrap();
    let mut config = Config::from_toml_str(&format!(
        "store_url = \"memory:\"\n[policy]\nkind = \"cedar\"\nentitlements = \"{}\"\npolicies = \"{}\"\n[auth]\nissuer = \"{}\"\naudience = \"{}\"\n[providers.local]\nkind = \"local\"\n",
        dir.path().join("entitlements.toml").display(),
        path.display(),
        demo::ISSUER,
        demo::AUDIENCE
    ))
    .unwrap();
    config.ignore_provider_env = true;
    let issuer = demo::DemoIssuer::new(demo::load_or_generate_key(None).unwrap());
    let err = Server::build(config, Some(&issuer)).await.unwrap_err();
    assert!(err.contains("orders-db: typo"), "{err}");
    assert!(err.contains("at line 20, column 8"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
}
