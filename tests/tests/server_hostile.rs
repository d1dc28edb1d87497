//! The vending server under hostile load, each case in the form an attacker
//! would use it: metrics scrapes during load, a flood of requests aimed at an
//! approver's queue, one subject submitting as fast as it can, credentials in
//! a shared cache, someone else's token introspected, free text as long as
//! the body limit, files other local users could read, and forged request ids.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use jit_core::audit::{AuditEvent, AuditRecord};
use jit_core::local::LocalKey;
use jit_core::store::{Claim, ListFilter, MemoryStore, Store};
use jit_core::testing::store::sample_record;
use jit_core::{RequestId, RequestRecord, State};
use serde_json::{json, Value};
use vending_server::config::Config;
use vending_server::demo::DemoIssuer;
use vending_server::Server;

/// `prod-db` is approved by `dba`, `sandbox` by `sandbox-owners`; `api` is
/// auto-approved. Everyone in `engineering` may ask for each.
const CATALOGUE: &str = r#"
[[entitlements]]
id = "prod-db"
provider = "local"
max_duration = "1h"
target = { audience = "prod-db" }
[entitlements.eligible]
groups = ["engineering"]
[entitlements.approval]
groups = ["dba"]

[[entitlements]]
id = "sandbox"
provider = "local"
max_duration = "1h"
target = { audience = "sandbox" }
[entitlements.eligible]
groups = ["engineering"]
[entitlements.approval]
groups = ["sandbox-owners"]

[[entitlements]]
id = "api"
provider = "local"
max_duration = "1h"
target = { audience = "api" }
[entitlements.eligible]
groups = ["engineering"]
[entitlements.auto_approve]
"#;

/// A config in `dir` (JWKS from `issuer`), with `extra` TOML appended.
fn config(dir: &Path, issuer: &DemoIssuer, store_url: &str, extra: &str) -> Config {
    std::fs::write(dir.join("jwks.json"), issuer.jwks_json().to_string()).unwrap();
    let text = format!(
        r#"
listen = "127.0.0.1:0"
store_url = "{store_url}"
catalogue = """{CATALOGUE}"""
[auth]
issuer = "{iss}"
audience = "{aud}"
jwks_file = "jwks.json"
algorithms = ["EdDSA"]
[providers.local]
kind = "local"
key_file = "local-key.pem"
{extra}
"#,
        iss = vending_server::demo::ISSUER,
        aud = vending_server::demo::AUDIENCE,
    );
    let path = dir.join("server.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap()
}

struct Running {
    url: String,
    metrics_url: Option<String>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Serves until the result is dropped; on `store` when given.
async fn serve(config: Config, store: Option<Arc<dyn Store>>) -> Running {
    let metrics_listener = if config.metrics.listen.is_some() {
        Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
    } else {
        None
    };
    let server = match store {
        Some(s) => Server::build_with_store(config, s, None).await.unwrap(),
        None => Server::build(config, None).await.unwrap(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let metrics_url = metrics_listener
        .as_ref()
        .map(|l| format!("http://{}", l.local_addr().unwrap()));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve_on(listener, metrics_listener, async move {
        let _ = rx.await;
    }));
    Running {
        url,
        metrics_url,
        _stop: tx,
    }
}

fn user(issuer: &DemoIssuer, sub: &str, groups: &[&str]) -> String {
    issuer.token(sub, groups, 3600).unwrap()
}

async fn send(
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, v)
}

async fn post(url: &str, token: &str, body: Value) -> (u16, Value) {
    let (s, _, v) = send(reqwest::Method::POST, url, token, Some(body)).await;
    (s, v)
}

async fn get(url: &str, token: &str) -> (u16, Value) {
    let (s, _, v) = send(reqwest::Method::GET, url, token, None).await;
    (s, v)
}

fn ask(entitlement: &str) -> Value {
    json!({"entitlement": entitlement, "duration": "30m", "justification": "INC-7: replica lag"})
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("{v}"))
}

/// A store that counts what it is asked to read.
#[derive(Debug, Default)]
struct Counting {
    inner: MemoryStore,
    listed_records: AtomicUsize,
    counts: AtomicUsize,
}

#[async_trait]
impl Store for Counting {
    async fn insert(
        &self,
        record: &RequestRecord,
        events: &[AuditEvent],
    ) -> jit_core::Result<Vec<AuditRecord>> {
        self.inner.insert(record, events).await
    }
    async fn update(
        &self,
        expected_version: u64,
        record: &RequestRecord,
        events: &[AuditEvent],
    ) -> jit_core::Result<Vec<AuditRecord>> {
        self.inner.update(expected_version, record, events).await
    }
    async fn get(&self, id: RequestId) -> jit_core::Result<Option<RequestRecord>> {
        self.inner.get(id).await
    }
    async fn list(&self, filter: &ListFilter) -> jit_core::Result<Vec<RequestRecord>> {
        let out = self.inner.list(filter).await?;
        self.listed_records.fetch_add(out.len(), Ordering::SeqCst);
        Ok(out)
    }
    async fn due(
        &self,
        states: &[State],
        now: DateTime<Utc>,
        limit: usize,
    ) -> jit_core::Result<Vec<RequestRecord>> {
        self.inner.due(states, now, limit).await
    }
    async fn audit(&self, from_seq: u64, limit: usize) -> jit_core::Result<Vec<AuditRecord>> {
        self.inner.audit(from_seq, limit).await
    }
    async fn claim_due(
        &self,
        states: &[State],
        due_by: DateTime<Utc>,
        limit: usize,
        claim: &Claim,
    ) -> jit_core::Result<Vec<RequestRecord>> {
        self.inner.claim_due(states, due_by, limit, claim).await
    }
    async fn count_by_state(&self) -> jit_core::Result<Vec<(State, u64)>> {
        self.counts.fetch_add(1, Ordering::SeqCst);
        self.inner.count_by_state().await
    }
    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }
}

/// 32 parallel scrapes while someone submits: one grouped count for all of
/// them (not twelve full-table reads each), the counts are complete (no
/// limit), and the submit goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_scrapes_during_load_share_one_grouped_count() {
    const RECORDS: usize = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let issuer = DemoIssuer::new(LocalKey::generate());
    let store = Arc::new(Counting::default());
    let now = Utc::now();
    for i in 0..RECORDS {
        let r = sample_record(&format!("user-{}", i % 50), "prod-db", State::Pending, now);
        store.inner.insert(&r, &[]).await.unwrap();
    }
    let cfg = config(
        dir.path(),
        &issuer,
        "memory:",
        "[metrics]\ncache_secs = 600\n",
    );
    let s = serve(cfg, Some(store.clone())).await;
    let alice = user(&issuer, "alice", &["engineering"]);

    let scrapes: Vec<_> = (0..32)
        .map(|_| {
            let url = format!("{}/metrics", s.url);
            tokio::spawn(async move {
                let resp = reqwest::get(url).await.unwrap();
                (resp.status().as_u16(), resp.text().await.unwrap())
            })
        })
        .collect();
    let (st, v) = post(&format!("{}/v1/requests", s.url), &alice, ask("api")).await;
    assert_eq!(st, 201, "{v}");
    for t in scrapes {
        let (st, text) = t.await.unwrap();
        assert_eq!(st, 200);
        assert!(
            text.contains(&format!("jit_requests{{state=\"pending\"}} {RECORDS}")),
            "{text}"
        );
    }
    assert_eq!(
        store.counts.load(Ordering::SeqCst),
        1,
        "one count per cache period"
    );
    // The submit's own pending check reads alice's pending requests (none);
    // the scrapes read no records at all.
    assert_eq!(store.listed_records.load(Ordering::SeqCst), 0);
}

/// Operators can keep `/metrics` away from the API's callers: on a listener
/// of its own, or behind a bearer token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_to_their_own_listener_or_need_a_bearer() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = DemoIssuer::new(LocalKey::generate());
    let cfg = config(
        dir.path(),
        &issuer,
        "memory:",
        "[metrics]\nlisten = \"127.0.0.1:0\"\n",
    );
    let s = serve(cfg, None).await;
    let on_api = reqwest::get(format!("{}/metrics", s.url)).await.unwrap();
    assert_eq!(on_api.status(), 404);
    let own = reqwest::get(format!("{}/metrics", s.metrics_url.as_ref().unwrap()))
        .await
        .unwrap();
    assert_eq!(own.status(), 200);
    assert!(own.text().await.unwrap().contains("jit_requests"));
    drop(s);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("metrics-token"),
        "scraper-secret-0123456789\n",
    )
    .unwrap();
    let cfg = config(
        dir.path(),
        &issuer,
        "memory:",
        "[metrics]\nbearer_token_file = \"metrics-token\"\n",
    );
    let s = serve(cfg, None).await;
    let url = format!("{}/metrics", s.url);
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 401);
    for (token, want) in [
        ("scraper-secret-012345678", 401),
        ("scraper-secret-0123456789x", 401),
        ("scraper-secret-0123456789", 200),
    ] {
        let (st, _, _) = send(reqwest::Method::GET, &url, token, None).await;
        assert_eq!(st, want, "{token}");
    }
    // A signed-in API user is not a scraper.
    let alice = user(&issuer, "alice", &["engineering"]);
    let (st, _, _) = send(reqwest::Method::GET, &url, &alice, None).await;
    assert_eq!(st, 401);
}

/// Many people filing requests for an entitlement the approver does not
/// approve never push a real request out of that approver's queue, and one
/// person cannot hold more than the pending cap (yet still gets what is
/// auto-approved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_flood_neither_hides_a_real_request_nor_passes_the_pending_cap() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = DemoIssuer::new(LocalKey::generate());
    let cfg = config(
        dir.path(),
        &issuer,
        "memory:",
        "[limits]\nmax_pending_per_requester = 20\nsubmits_per_minute = 0\n",
    );
    let s = serve(cfg, None).await;
    let url = format!("{}/v1/requests", s.url);
    let alice = user(&issuer, "alice", &["engineering"]);
    let (st, real) = post(&url, &alice, ask("prod-db")).await;
    assert_eq!(st, 201, "{real}");
    let real_id = real["request"]["id"].as_str().unwrap().to_string();

    // One person: 20 pending, then 429.
    let mallory = user(&issuer, "mallory", &["engineering"]);
    for i in 0..20 {
        let (st, v) = post(&url, &mallory, ask("sandbox")).await;
        assert_eq!(st, 201, "{i}: {v}");
    }
    let (st, v) = post(&url, &mallory, ask("sandbox")).await;
    assert_eq!((st, code(&v)), (429, "too_many_requests"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("20 pending requests"),
        "{v}"
    );
    // The cap is on requests that wait: what the policy auto-approves
    // still goes through, credentials and all.
    let (st, v) = post(&url, &mallory, ask("api")).await;
    assert_eq!(
        (st, v["request"]["state"].as_str()),
        (201, Some("active")),
        "{v}"
    );
    assert!(v["credentials"].is_object(), "{v}");
    let (st, v) = post(&url, &mallory, ask("sandbox")).await;
    assert_eq!((st, code(&v)), (429, "too_many_requests"), "{v}");

    // Many people: more than the queue's 1,000, all newer than the real one.
    let people: Vec<String> = (0..52)
        .map(|i| user(&issuer, &format!("sock-{i}"), &["engineering"]))
        .collect();
    let tasks: Vec<_> = people
        .chunks(13)
        .map(|chunk| {
            let (chunk, url) = (chunk.to_vec(), url.clone());
            tokio::spawn(async move {
                for t in chunk {
                    for _ in 0..20 {
                        let (st, v) = post(&url, &t, ask("sandbox")).await;
                        assert_eq!(st, 201, "{v}");
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }

    let dave = user(&issuer, "dave", &["dba"]);
    let (st, q) = get(&format!("{url}?scope=approvals"), &dave).await;
    assert_eq!(st, 200, "{q}");
    let ids: Vec<&str> = q["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![real_id.as_str()]);
}

/// Parallel submits by one person cannot race past the pending cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_submits_cannot_race_past_the_pending_cap() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = DemoIssuer::new(LocalKey::generate());
    // SQLite: its reads really wait, so parallel submits interleave.
    let db = format!("sqlite://{}", dir.path().join("jit.db").display());
    let cfg = config(
        dir.path(),
        &issuer,
        &db,
        "[limits]\nmax_pending_per_requester = 5\nsubmits_per_minute = 0\n",
    );
    let s = serve(cfg, None).await;
    let url = format!("{}/v1/requests", s.url);
    let mallory = user(&issuer, "mallory", &["engineering"]);
    let tasks: Vec<_> = (0..24)
        .map(|_| {
            let (url, t) = (url.clone(), mallory.clone());
            tokio::spawn(async move { post(&url, &t, ask("sandbox")).await.0 })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        19,
        "{statuses:?}"
    );
}

/// One subject submitting as fast as it can: a burst, then 429 with
/// `Retry-After`; other people are not slowed down by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subject_submitting_too_fast_gets_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = DemoIssuer::new(LocalKey::generate());
    let cfg = config(
        dir.path(),
        &issuer,
        "memory:",
        "[limits]\nsubmits_per_minute = 1\nsubmit_burst = 3\n",
    );
    let s = serve(cfg, None).await;
    let url = format!("{}/v1/requests", s.url);
    let alice = user(&issuer, "alice", &["engineering"]);
    for _ in 0..3 {
        assert_eq!(post(&url, &alice, ask("api")).await.0, 201);
    }
    let (st, headers, v) = send(reqwest::Method::POST, &url, &alice, Some(ask("api"))).await;
    assert_eq!((st, code(&v)), (429, "too_many_requests"), "{v}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Keyed by the verified subject: bob, from the same address, is fine.
    let bob = user(&issuer, "bob", &["engineering"]);
    assert_eq!(post(&url, &bob, ask("api")).await.0, 201);
}

/// Credentials and request records are never stored by a cache on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_with_credentials_are_no_store() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = DemoIssuer::new(LocalKey::generate());
    let s = serve(config(dir.path(), &issuer, "memory:", ""), None).await;
    let alice = user(&issuer, "alice", &["engineering"]);
    let (st, h, v) = send(
        reqwest::Method::POST,
        &format!("{}/v1/requests", s.url),
        &alice,
        Some(ask("api")),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    assert!(v["credentials"]["token"].is_string());
    assert_eq!(h["cache-control"], "no-store");
    let id = v["request"]["id"].as_str().unwrap();
    let (st, h, v) = send(
        reqwest::Method::GET,
        &format!("{}/v1/requests/{id}/credentials", s.url),
        &alice,
        None,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(h["cache-control"], "no-store");
    // Errors too; only the public keys may be cached.
    let (st, h, _) = send(
        reqwest::Method::GET,
        &format!("{}/v1/requests/{id}", s.url),
        "garbage",
        None,
    )
    .await;
    assert_eq!(
        (st, &h["cache-control"]),
        (401, &"no-store".parse().unwrap())
    );
    let keys = reqwest::get(format!("{}/v1/providers/local/jwks.json", s.url))
        .await
        .unwrap();
    assert_eq!(keys.headers()["cache-control"], "public, max-age=300");
}

/// Someone else's token: a signed-in user learns whether it is active, not
/// its claims; the configured resource server and the token's subject do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_tells_claims_only_to_resource_servers() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = DemoIssuer::new(LocalKey::generate());
    let cfg = config(
        dir.path(),
        &issuer,
        "memory:",
        "[introspection]\nclients = [\"svc-payments\"]\n",
    );
    let s = serve(cfg, None).await;
    let alice = user(&issuer, "alice", &["engineering"]);
    let (_, v) = post(&format!("{}/v1/requests", s.url), &alice, ask("api")).await;
    let token = v["credentials"]["token"].as_str().unwrap().to_string();
    let url = format!("{}/v1/introspect", s.url);

    let eve = user(&issuer, "eve", &["engineering"]);
    assert_eq!(
        post(&url, &eve, json!({"token": token})).await,
        (200, json!({"active": true}))
    );
    // An alias-like spelling of the client is not the client.
    let lookalike = user(&issuer, "SVC-PAYMENTS", &[]);
    assert_eq!(
        post(&url, &lookalike, json!({"token": token})).await,
        (200, json!({"active": true}))
    );
    for caller in ["svc-payments", "alice"] {
        let t = user(&issuer, caller, &[]);
        let (st, v) = post(&url, &t, json!({"token": token})).await;
        assert_eq!(st, 200);
        assert_eq!(
            (&v["active"], &v["sub"]),
            (&json!(true), &json!("alice")),
            "{caller}: {v}"
        );
        assert_eq!(v["aud"], "api");
    }
}

/// Free text as long as the body limit allows: every field stops at the same cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_free_text_field_stops_at_one_cap() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = DemoIssuer::new(LocalKey::generate());
    let s = serve(config(dir.path(), &issuer, "memory:", ""), None).await;
    let url = format!("{}/v1/requests", s.url);
    let alice = user(&issuer, "alice", &["engineering"]);
    let dave = user(&issuer, "dave", &["dba"]);
    let over = "x".repeat(jit_core::MAX_TEXT_LEN + 1);
    let refused = |(st, v): (u16, Value), field: &str| {
        assert_eq!((st, code(&v)), (400, "invalid_request"), "{field}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(&format!(
                "{field} is 1025 characters long; the maximum is 1024"
            )),
            "{msg}"
        );
    };

    let mut long = ask("prod-db");
    long["justification"] = json!(over);
    refused(post(&url, &alice, long).await, "justification");
    let (_, v) = post(&url, &alice, ask("prod-db")).await;
    let id = v["request"]["id"].as_str().unwrap().to_string();
    let op = |o: &str| format!("{url}/{id}/{o}");
    refused(
        post(&op("cancel"), &alice, json!({"reason": over})).await,
        "reason",
    );
    refused(
        post(&op("approve"), &dave, json!({"comment": over})).await,
        "comment",
    );
    refused(
        post(&op("deny"), &dave, json!({"reason": over})).await,
        "reason",
    );
    let (st, v) = get(&format!("{url}/{id}"), &alice).await;
    assert_eq!((st, &v["request"]["state"]), (200, &json!("pending")));
    let at_cap = "y".repeat(jit_core::MAX_TEXT_LEN);
    let (st, v) = post(&op("approve"), &dave, json!({"comment": at_cap})).await;
    assert_eq!(st, 200, "{v}");
    refused(
        post(&op("revoke"), &alice, json!({"reason": over})).await,
        "reason",
    );
}

/// Files the server creates (the database, its WAL files, a generated key)
/// are readable by the server's user only.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_the_server_creates_are_its_owners_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let issuer = DemoIssuer::new(LocalKey::generate());
    let db = dir.path().join("jit.db");
    let cfg = config(
        dir.path(),
        &issuer,
        &format!("sqlite://{}", db.display()),
        "",
    );
    let s = serve(cfg, None).await;
    let alice = user(&issuer, "alice", &["engineering"]);
    assert_eq!(
        post(&format!("{}/v1/requests", s.url), &alice, ask("api"))
            .await
            .0,
        201
    );
    for name in ["jit.db", "jit.db-wal", "jit.db-shm", "local-key.pem"] {
        let mode = std::fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{name}: {mode:o}");
    }
}

/// A client-chosen `x-request-id` is echoed (and logged) only when it is
/// short and plain; anything else is replaced by a fresh id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_request_ids_are_bounded_or_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = DemoIssuer::new(LocalKey::generate());
    let s = serve(config(dir.path(), &issuer, "memory:", ""), None).await;
    let http = reqwest::Client::new();
    let id_for = |given: &'static str| {
        let (http, url) = (http.clone(), format!("{}/healthz", s.url));
        async move {
            let resp = http
                .get(url)
                .header("x-request-id", given)
                .send()
                .await
                .unwrap();
            resp.headers()["x-request-id"].to_str().unwrap().to_string()
        }
    };
    assert_eq!(id_for("trace-42:a.b_c").await, "trace-42:a.b_c");
    let long: &'static str = Box::leak("a".repeat(5_000).into_boxed_str());
    for forged in [long, "x\" level=error msg=\"forged", "a b", "ü-bytes"] {
        let got = id_for(forged).await;
        assert_ne!(got, forged);
        assert!(uuid::Uuid::parse_str(&got).is_ok(), "{got}");
    }
}
