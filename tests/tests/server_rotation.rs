//! Rotating a local provider's signing key: tokens signed with the previous
//! key stay valid (introspection, the published JWKS) while new tokens are
//! signed with the new one; once the previous key is dropped they are not.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use jit_core::local::LocalKey;
use serde_json::{json, Value};
use vending_server::config::Config;
use vending_server::demo::DemoIssuer;
use vending_server::Server;

const CATALOGUE: &str = r#"
[[entitlements]]
id = "api"
provider = "local"
max_duration = "1h"
target = { audience = "api" }
[entitlements.eligible]
groups = ["engineering"]
[entitlements.auto_approve]
"#;

fn config(dir: &Path, key: &str, previous: &[&str]) -> Config {
    let previous: Vec<String> = previous.iter().map(|p| format!("\"{p}\"")).collect();
    let text = format!(
        r#"
listen = "127.0.0.1:0"
store_url = "sqlite://{db}"
catalogue = """{CATALOGUE}"""
[auth]
issuer = "{iss}"
audience = "{aud}"
jwks_file = "jwks.json"
algorithms = ["EdDSA"]
[providers.local]
kind = "local"
key_file = "{key}"
previous_key_files = [{previous}]
"#,
        db = dir.join("jit.db").display(),
        iss = vending_server::demo::ISSUER,
        aud = vending_server::demo::AUDIENCE,
        previous = previous.join(", "),
    );
    let path = dir.join("server.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap()
}

/// Serves one life of the server until the returned sender is dropped.
async fn serve(config: Config) -> (String, tokio::sync::oneshot::Sender<()>) {
    let server = Server::build(config, None).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(listener, async move {
        let _ = rx.await;
    }));
    (url, tx)
}

async fn post(url: &str, token: &str, body: Value) -> Value {
    reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn kids(url: &str) -> Vec<String> {
    let v: Value = reqwest::get(format!("{url}/v1/providers/local/jwks.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_keeps_earlier_tokens_valid_until_it_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = DemoIssuer::new(LocalKey::generate());
    std::fs::write(dir.path().join("jwks.json"), issuer.jwks_json().to_string()).unwrap();
    let alice = issuer.token("alice", &["engineering"], 3600).unwrap();
    let grant = |url: String| {
        let alice = alice.clone();
        async move {
            let v = post(
                &format!("{url}/v1/requests"),
                &alice,
                json!({"entitlement": "api", "duration": "30m", "justification": "x"}),
            )
            .await;
            v["credentials"]["token"].as_str().unwrap().to_string()
        }
    };
    let active = |url: String, token: String| {
        let alice = alice.clone();
        async move {
            post(
                &format!("{url}/v1/introspect"),
                &alice,
                json!({"token": token}),
            )
            .await["active"]
                == true
        }
    };

    // First life: key 1 signs.
    let (url, stop) = serve(config(dir.path(), "key-1.pem", &[])).await;
    let old = grant(url.clone()).await;
    let kid1 = kid_of(&old);
    assert_eq!(kids(&url).await, vec![kid1.clone()]);
    drop(stop);

    // Rotation: key 2 signs, key 1 still verifies.
    let (url, stop) = serve(config(dir.path(), "key-2.pem", &["key-1.pem"])).await;
    let new = grant(url.clone()).await;
    let kid2 = kid_of(&new);
    assert_ne!(kid1, kid2);
    assert_eq!(kids(&url).await, [kid2.clone(), kid1.clone()]);
    assert!(active(url.clone(), old.clone()).await);
    assert!(active(url.clone(), new.clone()).await);
    drop(stop);

    // Rotation finished: key 1 is gone, and so are its tokens.
    let (url, stop) = serve(config(dir.path(), "key-2.pem", &[])).await;
    assert_eq!(kids(&url).await, [kid2]);
    assert!(!active(url.clone(), old).await);
    assert!(active(url.clone(), new).await);
    drop(stop);

    // A previous key file that cannot be read stops the start with its name.
    let err = Server::build(config(dir.path(), "key-2.pem", &["missing.pem"]), None)
        .await
        .unwrap_err();
    assert!(err.contains("missing.pem"), "{err}");
}
