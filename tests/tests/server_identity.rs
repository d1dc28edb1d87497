//! Identity that cannot be borrowed, tried as an attacker would against the
//! real server binary: tokens from the server's own (demo) issuer that carry
//! someone else's id in an alias claim, or a case, width or invisible-
//! character variant of it. Aliases and folded forms may only take away
//! (refuse a self-approval or a second vote); they never give ownership,
//! visibility, credentials or approver rights.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/server.rs"]
mod support;

use reqwest::Method;
use serde_json::{json, Value};
use support::{call, Server};

fn with(mut claims: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    claims
}

async fn request(s: &Server, http: &reqwest::Client, token: &str, ent: &str, dur: &str) -> Value {
    let (status, body) = call(
        http,
        Method::POST,
        &format!("{}/v1/requests", s.url),
        Some(token),
        Some(json!({"entitlement": ent, "duration": dur, "justification": "INC-1: look into it"})),
    )
    .await;
    assert!(status == 201 || status == 202, "{status} {body}");
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn alias_claims_never_make_someone_else() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let http = reqwest::Client::new();
    let alice = s
        .token(with(
            Server::claims("alice", &["engineering"]),
            json!({"email": "alice@example.com", "email_verified": true}),
        ))
        .await;
    // mallory's token names alice in every alias claim the server reads.
    let mallory = s
        .token(with(
            Server::claims("mallory", &["engineering"]),
            json!({"email": "alice@example.com", "preferred_username": "alice"}),
        ))
        .await;
    // Variants of alice's subject are other subjects.
    let variants = [
        "ALICE",
        "Alice",
        "ａｌｉｃｅ",
        "alice\u{200b}",
        "ali\u{ad}ce",
    ];

    let pending = request(&s, &http, &alice, "prod-db", "30m").await;
    let pending_id = pending["request"]["id"].as_str().unwrap().to_string();
    let active = request(&s, &http, &alice, "demo-api", "10m").await;
    assert_eq!(active["request"]["state"], "active", "{active}");
    let active_id = active["request"]["id"].as_str().unwrap().to_string();

    let mut intruders = vec![("mallory with alias claims", mallory.clone())];
    for v in variants {
        intruders.push((v, s.token(Server::claims(v, &["engineering"])).await));
    }
    for (who, token) in &intruders {
        for id in [&pending_id, &active_id] {
            let (status, body) = call(
                &http,
                Method::GET,
                &format!("{}/v1/requests/{id}", s.url),
                Some(token),
                None,
            )
            .await;
            assert_eq!(status, 404, "{who} read alice's request: {body}");
        }
        let (status, body) = call(
            &http,
            Method::GET,
            &format!("{}/v1/requests/{active_id}/credentials", s.url),
            Some(token),
            None,
        )
        .await;
        assert_eq!(status, 404, "{who} collected alice's credentials: {body}");
        assert!(body.get("token").is_none() && body.get("credentials").is_none());
        let (status, body) = call(
            &http,
            Method::GET,
            &format!("{}/v1/requests", s.url),
            Some(token),
            None,
        )
        .await;
        assert_eq!(status, 200);
        assert!(
            body["requests"].as_array().unwrap().is_empty(),
            "{who} listed alice's requests: {body}"
        );
        let (status, body) = call(
            &http,
            Method::POST,
            &format!("{}/v1/requests/{pending_id}/cancel", s.url),
            Some(token),
            Some(json!({"reason": "mine now"})),
        )
        .await;
        assert!(
            status == 404 || status == 403,
            "{who} cancelled alice's request: {status} {body}"
        );
        let (status, body) = call(
            &http,
            Method::POST,
            &format!("{}/v1/requests/{active_id}/revoke", s.url),
            Some(token),
            Some(json!({"reason": "mine now"})),
        )
        .await;
        assert!(
            status == 404 || status == 403,
            "{who} revoked alice's grant: {status} {body}"
        );
    }
    // alice herself still sees, collects and cancels.
    let (status, body) = call(
        &http,
        Method::GET,
        &format!("{}/v1/requests/{active_id}/credentials", s.url),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = call(
        &http,
        Method::POST,
        &format!("{}/v1/requests/{pending_id}/cancel", s.url),
        Some(&alice),
        Some(json!({"reason": "not needed"})),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_self_approval_under_any_spelling() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let http = reqwest::Client::new();
    // (requester, approver): the approver is a lead whose subject or alias
    // could be the requester under case folding, invisible characters,
    // compatibility forms or confusables.
    let pairs: [(&str, &str, Value); 6] = [
        ("straße", "STRASSE", json!({})),
        ("alice", "alice\u{200b}", json!({})),
        ("alice", "ali\u{ad}ce", json!({})),
        ("alice", "ＡＬＩＣＥ", json!({})),
        ("alice", "\u{430}lice", json!({})), // Cyrillic a
        ("alice", "lena", json!({"preferred_username": "Alice"})),
    ];
    for (requester, approver, extra) in pairs {
        let rt = s.token(Server::claims(requester, &["engineering"])).await;
        let at = s
            .token(with(Server::claims(approver, &["leads"]), extra))
            .await;
        let body = request(&s, &http, &rt, "prod-db", "30m").await;
        let id = body["request"]["id"].as_str().unwrap();
        let (status, body) = call(
            &http,
            Method::POST,
            &format!("{}/v1/requests/{id}/approve", s.url),
            Some(&at),
            Some(json!({"comment": "lgtm"})),
        )
        .await;
        assert_eq!(
            status, 403,
            "{approver:?} approved {requester:?}'s request: {body}"
        );
        // Nor does it show in that approver's queue.
        let (_, queue) = call(
            &http,
            Method::GET,
            &format!("{}/v1/requests?scope=approvals", s.url),
            Some(&at),
            None,
        )
        .await;
        assert!(
            !queue["requests"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["id"] == id),
            "{queue}"
        );
    }
    // A real second person still approves.
    let rt = s.token(Server::claims("straße", &["engineering"])).await;
    let at = s.token(Server::claims("bob", &["leads"])).await;
    let body = request(&s, &http, &rt, "prod-db", "30m").await;
    let id = body["request"]["id"].as_str().unwrap();
    let (status, body) = call(
        &http,
        Method::POST,
        &format!("{}/v1/requests/{id}/approve", s.url),
        Some(&at),
        Some(json!({"comment": "lgtm"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}
