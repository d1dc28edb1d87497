//! The vending server and the `jit` CLI, end to end: a whole flow through
//! the binaries, and every kind of refusal with its status and error shape.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/server.rs"]
mod support;

use std::process::{Command, Output};

use base64::Engine;
use reqwest::Method;
use serde_json::{json, Value};
use support::{bins, call, error_code, Server};

fn jit(server: &Server, token: &str, args: &[&str]) -> Output {
    Command::new(&bins().1)
        .args(args)
        .env("JIT_SERVER", &server.url)
        .env("JIT_TOKEN", token)
        .env("JIT_CONFIG", "/nonexistent/jit.toml")
        .output()
        .unwrap()
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn request_approve_exec_revoke_and_verify_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());

    // alice asks for prod-db: a lead must approve.
    let out = jit(
        &server,
        &server.alice,
        &[
            "--json",
            "request",
            "prod-db",
            "--for",
            "30m",
            "--reason",
            "INC-7: slow queries",
        ],
    );
    let v = json_of(&out);
    assert_eq!(v["request"]["state"], "pending");
    assert!(v.get("credentials").is_none());
    let id = v["request"]["id"].as_str().unwrap().to_string();

    // Waiting with a short timeout ends with exit code 4.
    let out = jit(
        &server,
        &server.alice,
        &["status", &id, "--wait", "--timeout", "1s"],
    );
    assert_eq!(out.status.code(), Some(4));

    // alice may not approve her own request (exit 3); bob may.
    let out = jit(&server, &server.alice, &["approve", &id]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("own requests"));
    let listed = json_of(&jit(&server, &server.bob, &["--json", "ls", "--approvals"]));
    assert_eq!(listed["requests"][0]["id"], id.as_str());
    let v = json_of(&jit(
        &server,
        &server.bob,
        &["--json", "approve", &id, "--comment", "ok"],
    ));
    assert_eq!(v["request"]["state"], "active");
    // The approver never receives the requester's credentials.
    assert!(v.get("credentials").is_none());

    // The credentials, to alice only.
    let creds = json_of(&jit(&server, &server.alice, &["credentials", &id]));
    let token = creds["token"].as_str().unwrap().to_string();
    assert_eq!(creds["kind"], "local_token");
    let out = jit(&server, &server.bob, &["credentials", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));

    // exec reuses the active grant: the token is in the child's environment,
    // not in its parent's (the jit process), and the caller's own token is gone.
    let work = tempfile::tempdir().unwrap();
    let script = "printf %s \"$JIT_ACCESS_TOKEN\" > child_token; \
                  printf %s \"${JIT_TOKEN:-}\" > child_oidc; \
                  tr '\\0' '\\n' < /proc/$PPID/environ > parent_env; exit 7";
    let out = Command::new(&bins().1)
        .args([
            "exec", "prod-db", "--for", "30m", "--reason", "x", "--", "sh", "-c", script,
        ])
        .current_dir(work.path())
        .env("JIT_SERVER", &server.url)
        .env("JIT_TOKEN", &server.alice)
        .env("JIT_CONFIG", "/nonexistent/jit.toml")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let child_token = std::fs::read_to_string(work.path().join("child_token")).unwrap();
    assert_eq!(child_token, token);
    assert_eq!(
        std::fs::read_to_string(work.path().join("child_oidc")).unwrap(),
        ""
    );
    let parent_env = std::fs::read_to_string(work.path().join("parent_env")).unwrap();
    assert!(parent_env.contains("JIT_SERVER="), "read the right process");
    assert!(!parent_env.contains(&token));
    assert!(!parent_env.contains("JIT_ACCESS_TOKEN"));
    // Still one grant: exec reused it.
    let mine = json_of(&jit(
        &server,
        &server.alice,
        &["--json", "ls", "--state", "active"],
    ));
    assert_eq!(mine["requests"].as_array().unwrap().len(), 1);

    // Revoke; the state and the audit chain say so.
    let v = json_of(&jit(
        &server,
        &server.alice,
        &["--json", "revoke", &id, "--reason", "done"],
    ));
    assert_eq!(v["request"]["state"], "revoked");
    let out = jit(&server, &server.alice, &["credentials", &id]);
    assert_eq!(out.status.code(), Some(1));

    let out = jit(&server, &server.admin, &["audit", "verify"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("audit chain verified"));
    let v = json_of(&jit(&server, &server.admin, &["--json", "audit", "verify"]));
    assert_eq!(v["ok"], true);
    // requested, decided, approved (bob), issued, issued (redelivered) x2, revoked.
    assert_eq!(v["records"], 7);
    // Not for alice (3), and a bad token is an authentication failure (5).
    assert_eq!(
        jit(&server, &server.alice, &["audit", "verify"])
            .status
            .code(),
        Some(3)
    );
    assert_eq!(jit(&server, "nope", &["ls"]).status.code(), Some(5));
    // Usage errors are 2.
    assert_eq!(
        jit(&server, &server.alice, &["ls", "--mine", "--all"])
            .status
            .code(),
        Some(2)
    );
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_have_the_right_status_and_one_error_shape() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let http = reqwest::Client::new();
    let u = |p: &str| format!("{}{p}", server.url);

    let (st, v) = call(
        &http,
        Method::POST,
        &u("/v1/requests"),
        Some(&server.alice),
        Some(json!({"entitlement": "prod-db", "duration": "30m", "justification": "x"})),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let id = v["request"]["id"].as_str().unwrap().to_string();

    // Self-approval, also through an alias of the same person.
    let (st, v) = call(
        &http,
        Method::POST,
        &u(&format!("/v1/requests/{id}/approve")),
        Some(&server.alice),
        None,
    )
    .await;
    assert_eq!((st, error_code(&v).as_str()), (403, "forbidden"));
    let alias = server
        .token(
            json!({"iss": "jit-demo", "aud": "jit-vending", "sub": "alice-2",
            "email": "ALICE", "groups": ["leads"], "exp": chrono::Utc::now().timestamp() + 600}),
        )
        .await;
    let (st, v) = call(
        &http,
        Method::POST,
        &u(&format!("/v1/requests/{id}/approve")),
        Some(&alias),
        None,
    )
    .await;
    assert_eq!((st, error_code(&v).as_str()), (403, "forbidden"), "{v}");

    // Someone else's id answers exactly like a missing one.
    let carol = server
        .token(Server::claims("carol", &["engineering"]))
        .await;
    let missing = "00000000-0000-4000-8000-000000000000";
    for path in ["", "/credentials"] {
        let (st1, v1) = call(
            &http,
            Method::GET,
            &u(&format!("/v1/requests/{id}{path}")),
            Some(&carol),
            None,
        )
        .await;
        let (st2, v2) = call(
            &http,
            Method::GET,
            &u(&format!("/v1/requests/{missing}{path}")),
            Some(&carol),
            None,
        )
        .await;
        assert_eq!((st1, st2), (404, 404));
        assert_eq!(
            v1.to_string().replace(&id, "ID"),
            v2.to_string().replace(missing, "ID")
        );
        assert_eq!(error_code(&v1), "not_found");
    }
    for op in ["approve", "deny", "cancel", "revoke", "issue"] {
        let (st, v) = call(
            &http,
            Method::POST,
            &u(&format!("/v1/requests/{id}/{op}")),
            Some(&carol),
            Some(json!({"reason": "x"})),
        )
        .await;
        assert_eq!((st, error_code(&v).as_str()), (404, "not_found"), "{op}");
    }
    // The approver sees the request, but not its credentials.
    let (st, _) = call(
        &http,
        Method::GET,
        &u(&format!("/v1/requests/{id}")),
        Some(&server.bob),
        None,
    )
    .await;
    assert_eq!(st, 200);
    let (st, v) = call(
        &http,
        Method::GET,
        &u("/v1/requests/not-a-uuid"),
        Some(&carol),
        None,
    )
    .await;
    assert_eq!((st, error_code(&v).as_str()), (404, "not_found"));

    // Bad tokens: none, alg none, wrong audience, wrong issuer, expired, not yet valid, HS256 with the public key.
    let now = chrono::Utc::now().timestamp();
    let jwks = server.jwks().await;
    let kid = jwks["keys"][0]["kid"].as_str().unwrap();
    let x = jwks["keys"][0]["x"].as_str().unwrap();
    let claims = Server::claims("alice", &["engineering"]);
    let with = |k: &str, val: Value| {
        let mut c = claims.clone();
        c[k] = val;
        c
    };
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims)
    );
    support::install_crypto();
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = Some(kid.to_string());
    let hs_pub = jsonwebtoken::encode(
        &hs,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(x.as_bytes()),
    )
    .unwrap();
    let hs_raw = jsonwebtoken::encode(
        &hs,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(x)
                .unwrap(),
        ),
    )
    .unwrap();
    let bad = vec![
        ("no token", None),
        ("garbage", Some("garbage".to_string())),
        ("alg none", Some(alg_none)),
        (
            "wrong audience",
            Some(server.token(with("aud", json!("other"))).await),
        ),
        (
            "wrong issuer",
            Some(server.token(with("iss", json!("evil"))).await),
        ),
        (
            "expired",
            Some(server.token(with("exp", json!(now - 3600))).await),
        ),
        (
            "not yet valid",
            Some(server.token(with("nbf", json!(now + 3600))).await),
        ),
        ("HS256 with the public key", Some(hs_pub)),
        ("HS256 with the raw public key", Some(hs_raw)),
        (
            "no sub",
            Some(
                server
                    .token(json!({"iss": "jit-demo", "aud": "jit-vending", "exp": now + 600}))
                    .await,
            ),
        ),
    ];
    for (what, token) in bad {
        let (st, v) = call(
            &http,
            Method::GET,
            &u("/v1/requests"),
            token.as_deref(),
            None,
        )
        .await;
        assert_eq!(
            (st, error_code(&v).as_str()),
            (401, "unauthorized"),
            "{what}: {v}"
        );
    }
    // A tampered signature.
    let good = server.token(claims.clone()).await;
    let tampered = format!("{}x", &good[..good.len() - 1]);
    let (st, _) = call(
        &http,
        Method::GET,
        &u("/v1/requests"),
        Some(&tampered),
        None,
    )
    .await;
    assert_eq!(st, 401);
    let (st, _) = call(&http, Method::GET, &u("/v1/requests"), Some(&good), None).await;
    assert_eq!(st, 200);

    // Bodies: too large, malformed, unknown fields, wrong types.
    let big = "x".repeat(100 * 1024);
    let (st, v) = call(
        &http,
        Method::POST,
        &u("/v1/requests"),
        Some(&server.alice),
        Some(json!({"entitlement": "demo-api", "duration": "5m", "justification": big})),
    )
    .await;
    assert_eq!((st, error_code(&v).as_str()), (413, "payload_too_large"));
    let resp = http
        .post(u("/v1/requests"))
        .bearer_auth(&server.alice)
        .header("content-type", "application/json")
        .body("{\"entitlement\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(error_code(&v), "invalid_request");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid JSON"),
        "{v}"
    );
    let (st, v) = call(&http, Method::POST, &u("/v1/requests"), Some(&server.alice),
        Some(json!({"entitlement": "demo-api", "duration": "5m", "justification": "x", "role": "admin"}))).await;
    assert_eq!((st, error_code(&v).as_str()), (400, "invalid_request"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `role`"),
        "{v}"
    );
    let (st, v) = call(
        &http,
        Method::POST,
        &u("/v1/requests"),
        Some(&server.alice),
        Some(json!({"entitlement": "demo-api", "duration": "forever", "justification": "x"})),
    )
    .await;
    assert_eq!((st, error_code(&v).as_str()), (400, "invalid_request"));
    let (st, v) = call(
        &http,
        Method::POST,
        &u("/v1/requests"),
        Some(&server.alice),
        Some(json!({"entitlement": "nope", "duration": "5m", "justification": "x"})),
    )
    .await;
    assert_eq!((st, error_code(&v).as_str()), (400, "invalid_request"));
    // Ineligible: a policy deny, with its reasons.
    let (st, v) = call(
        &http,
        Method::POST,
        &u("/v1/requests"),
        Some(&carol),
        Some(json!({"entitlement": "demo-api", "duration": "5m", "justification": "x"})),
    )
    .await;
    assert_eq!(st, 201, "carol is in engineering: {v}");
    let outsider = server.token(Server::claims("mallory", &["sales"])).await;
    let (st, v) = call(
        &http,
        Method::POST,
        &u("/v1/requests"),
        Some(&outsider),
        Some(json!({"entitlement": "demo-api", "duration": "5m", "justification": "x"})),
    )
    .await;
    assert_eq!((st, error_code(&v).as_str()), (403, "denied"));
    assert!(
        v["error"]["details"]["reasons"]
            .as_array()
            .is_some_and(|r| !r.is_empty()),
        "{v}"
    );
    // State errors are 409; admin-only routes 403; unknown routes 404; wrong methods 405.
    let (st, v) = call(
        &http,
        Method::POST,
        &u(&format!("/v1/requests/{id}/revoke")),
        Some(&server.alice),
        Some(json!({"reason": "x"})),
    )
    .await;
    assert_eq!((st, error_code(&v).as_str()), (409, "invalid_state"));
    let (st, v) = call(
        &http,
        Method::GET,
        &u("/v1/audit"),
        Some(&server.alice),
        None,
    )
    .await;
    assert_eq!((st, error_code(&v).as_str()), (403, "forbidden"));
    for q in [
        "?scope=everything",
        "?state=bogus",
        "?color=red",
        "?limit=-1",
    ] {
        let (st, v) = call(
            &http,
            Method::GET,
            &u(&format!("/v1/requests{q}")),
            Some(&server.alice),
            None,
        )
        .await;
        assert_eq!(
            (st, error_code(&v).as_str()),
            (400, "invalid_request"),
            "{q}: {v}"
        );
    }
    let (st, v) = call(
        &http,
        Method::GET,
        &u("/v1/nope"),
        Some(&server.alice),
        None,
    )
    .await;
    assert_eq!((st, error_code(&v).as_str()), (404, "not_found"));
    let (st, v) = call(
        &http,
        Method::DELETE,
        &u("/v1/requests"),
        Some(&server.alice),
        None,
    )
    .await;
    assert_eq!((st, error_code(&v).as_str()), (405, "method_not_allowed"));

    // The admin exports the chain as JSON Lines; health, readiness and metrics answer.
    let resp = http
        .get(u("/v1/audit"))
        .bearer_auth(&server.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    let text = resp.text().await.unwrap();
    assert!(text.lines().count() >= 4);
    for line in text.lines() {
        serde_json::from_str::<Value>(line).unwrap();
    }
    for p in ["/healthz", "/readyz"] {
        assert_eq!(http.get(u(p)).send().await.unwrap().status().as_u16(), 200);
    }
    let m = http
        .get(u("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains(
            "jit_http_requests_total{method=\"POST\",route=\"/v1/requests\",status=\"413\"}"
        ),
        "{m}"
    );
    assert!(m.contains("jit_requests{state=\"pending\"} 1"), "{m}");
    assert!(
        m.contains("jit_issue_seconds_count{outcome=\"ok\",provider=\"local\"}"),
        "{m}"
    );
}

/// A service that accepts local tokens: it verifies them offline with the
/// provider's published keys and asks the server whether they are still
/// active, which sees a revocation at once and after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_and_provider_keys_follow_the_grant() {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let http = reqwest::Client::new();
    let u = |s: &Server, p: &str| format!("{}{p}", s.url);

    // Two auto-approved grants of demo-api for alice.
    let mut grants = Vec::new();
    for _ in 0..2 {
        let (st, v) = call(
            &http,
            Method::POST,
            &u(&server, "/v1/requests"),
            Some(&server.alice),
            Some(json!({"entitlement": "demo-api", "duration": "10m", "justification": "x"})),
        )
        .await;
        assert_eq!(st, 201, "{v}");
        grants.push((
            v["request"]["id"].as_str().unwrap().to_string(),
            v["credentials"]["token"].as_str().unwrap().to_string(),
        ));
    }
    let (revoked_id, revoked_token) = grants[0].clone();
    let (_, live_token) = grants[1].clone();

    // The published key verifies the token offline.
    let (st, jwks) = call(
        &http,
        Method::GET,
        &u(&server, "/v1/providers/local/jwks.json"),
        None,
        None,
    )
    .await;
    assert_eq!(st, 200, "{jwks}");
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwks["keys"][0].clone()).unwrap();
    support::install_crypto();
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&["demo-api"]);
    let claims = jsonwebtoken::decode::<Value>(
        &live_token,
        &DecodingKey::from_jwk(&jwk).unwrap(),
        &validation,
    )
    .unwrap()
    .claims;
    assert_eq!(claims["sub"], "alice");
    let (st, v) = call(
        &http,
        Method::GET,
        &u(&server, "/v1/providers/nope/jwks.json"),
        None,
        None,
    )
    .await;
    assert_eq!((st, error_code(&v).as_str()), (404, "not_found"));

    let introspect = |s: &Server, caller: Option<String>, body: Value| {
        let http = http.clone();
        let url = u(s, "/v1/introspect");
        async move { call(&http, Method::POST, &url, caller.as_deref(), Some(body)).await }
    };
    // Active, with the claims a resource server needs, for the configured
    // resource server; any other signed-in caller learns `active` alone.
    let (st, v) = introspect(
        &server,
        Some(server.bob.clone()),
        json!({"token": revoked_token}),
    )
    .await;
    assert_eq!((st, v), (200, json!({"active": true})));
    let service = server
        .token(Server::claims(vending_server::demo::RESOURCE_SERVER, &[]))
        .await;
    let (st, v) = introspect(
        &server,
        Some(service.clone()),
        json!({"token": revoked_token}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["sub"], "alice");
    assert_eq!(v["aud"], "demo-api");
    assert_eq!(v["scope"], "admin");
    assert_eq!(v["request_id"], revoked_id.as_str());
    // The form encoding of RFC 7662 works too.
    let resp = http
        .post(u(&server, "/v1/introspect"))
        .bearer_auth(&server.bob)
        .form(&[("token", live_token.as_str()), ("audience", "demo-api")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["active"], true);
    // For another audience, tampered, or garbage: inactive, and nothing more.
    // One signature byte changed (well inside the last segment).
    let mut tampered = revoked_token.clone().into_bytes();
    let i = tampered.len() - 20;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for body in [
        json!({"token": revoked_token, "audience": "prod-db"}),
        json!({"token": tampered}),
        json!({"token": "not-a-token"}),
    ] {
        let (st, v) = introspect(&server, Some(server.bob.clone()), body).await;
        assert_eq!((st, v), (200, json!({"active": false})));
    }
    // Callers must authenticate; unknown fields are refused.
    let (st, v) = introspect(&server, None, json!({"token": live_token})).await;
    assert_eq!((st, error_code(&v).as_str()), (401, "unauthorized"));
    let (st, v) = introspect(
        &server,
        Some(server.bob.clone()),
        json!({"token": live_token, "extra": 1}),
    )
    .await;
    assert_eq!(
        (st, error_code(&v).as_str()),
        (400, "invalid_request"),
        "{v}"
    );

    // Revoked: inactive at once, and still after a restart (the process's
    // own revocation list is gone; the store is not).
    let (st, _) = call(
        &http,
        Method::POST,
        &u(&server, &format!("/v1/requests/{revoked_id}/revoke")),
        Some(&server.alice),
        Some(json!({"reason": "done"})),
    )
    .await;
    assert_eq!(st, 200);
    let (_, v) = introspect(
        &server,
        Some(server.bob.clone()),
        json!({"token": revoked_token}),
    )
    .await;
    assert_eq!(v, json!({"active": false}));
    server.kill();
    server = Server::start(dir.path());
    let (_, v) = introspect(
        &server,
        Some(server.bob.clone()),
        json!({"token": revoked_token}),
    )
    .await;
    assert_eq!(v, json!({"active": false}));
    let (_, v) = introspect(
        &server,
        Some(server.bob.clone()),
        json!({"token": live_token}),
    )
    .await;
    assert_eq!(v["active"], true, "{v}");
}
