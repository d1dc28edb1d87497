//! `GET /v1/audit/verify` on a server with an audit key and a checkpoint
//! file, against an insider editing its SQLite database: an invalid row is
//! a `200` naming that record (it used to be a `500`), deleting the last
//! records is caught by the checkpoints, a re-hash by the seals.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use jit_core::{AccessRequest, AuditRecord, Principal};
use serde_json::Value;
use tower::ServiceExt;
use vending_server::config::{
    AuditConfig, AuthConfig, Config, Limits, ProviderTable, ReaperConfig,
};
use vending_server::{demo, Server};

/// The tests of this file run one at a time: the log-capture test installs a
/// thread-local subscriber, and tracing caches a callsite's interest
/// globally, so a test hitting the same callsite on another thread at that
/// moment (with no subscriber) could hide the line it looks for.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config(dir: &Path) -> Config {
    let mut providers = BTreeMap::new();
    providers.insert(
        "local".to_string(),
        ProviderTable::new("local").with("key_file", dir.join("local.pem").display().to_string()),
    );
    Config {
        listen: "127.0.0.1:0".into(),
        store_url: format!("sqlite://{}", dir.join("jit.db").display()),
        catalogue_file: None,
        catalogue: Some(demo::CATALOGUE.into()),
        policy: Default::default(),
        auth: AuthConfig {
            issuer: demo::ISSUER.into(),
            audience: demo::AUDIENCE.into(),
            jwks_url: None,
            jwks_file: None,
            algorithms: vec!["EdDSA".into()],
            leeway_secs: 5,
            refresh_min_interval_secs: 30,
            claims: Default::default(),
        },
        providers,
        limits: Limits::default(),
        reaper: ReaperConfig::default(),
        metrics: Default::default(),
        introspection: Default::default(),
        audit: AuditConfig {
            key_file: Some(dir.join("audit.key")),
            checkpoint_file: Some(dir.join("checkpoints.jsonl")),
            checkpoint_every: 1,
            ..Default::default()
        },
        risk: Default::default(),
        tickets: Default::default(),
        on_call: Default::default(),
        retention: Default::default(),
        base_dir: None,
        ignore_provider_env: true,
    }
}

struct World {
    server: Server,
    admin: String,
    alice: String,
    db: sqlx::SqlitePool,
    dir: tempfile::TempDir,
}

async fn world() -> World {
    // (Callers hold `SERIAL`.)
    use jsonwebtoken::crypto::{rust_crypto, CryptoProvider};
    let _ = CryptoProvider::install_default(&rust_crypto::DEFAULT_PROVIDER);
    let dir = tempfile::tempdir().unwrap();
    let issuer = demo::DemoIssuer::new(demo::load_or_generate_key(None).unwrap());
    let server = Server::build(config(dir.path()), Some(&issuer))
        .await
        .unwrap();
    let broker = &server.state.broker;
    let alice = Principal::new("alice").unwrap().with_group("engineering");
    for _ in 0..3 {
        let req = AccessRequest::new("demo-api", "10m".parse().unwrap(), "INC-1: checking");
        let id = broker.submit(&alice, req).await.unwrap().record.id;
        broker.revoke(&alice, id, "done").await.unwrap();
    }
    let db =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.path().join("jit.db").display()))
            .await
            .unwrap();
    World {
        admin: issuer.token("admin", &["secops"], 600).unwrap(),
        alice: issuer.token("alice", &["engineering"], 600).unwrap(),
        server,
        db,
        dir,
    }
}

async fn verify(w: &World) -> (StatusCode, Value) {
    let resp = w
        .server
        .router()
        .oneshot(
            Request::get("/v1/audit/verify")
                .header("authorization", format!("Bearer {}", w.admin))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn an_invalid_audit_row_is_named_not_a_500() {
    let _serial = SERIAL.lock().await;
    let w = world().await;
    let (status, v) = verify(&w).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["ok"], true, "{v}");
    let n = v["records"].as_u64().unwrap();
    assert_eq!(v["sealed"].as_u64(), Some(n), "{v}");
    assert_eq!(v["checkpoint"].as_u64(), Some(n), "{v}");

    sqlx::query("UPDATE audit SET body = CAST('{\"seq\": 3, oops' AS BLOB) WHERE seq = 3")
        .execute(&w.db)
        .await
        .unwrap();
    let (status, v) = verify(&w).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        (&v["ok"], &v["seq"], &v["kind"]),
        (
            &Value::Bool(false),
            &Value::from(3),
            &Value::from("malformed")
        ),
        "{v}"
    );
}

#[tokio::test]
async fn deleting_the_last_records_is_caught_by_the_checkpoint_file() {
    let _serial = SERIAL.lock().await;
    let w = world().await;
    let n = verify(&w).await.1["records"].as_u64().unwrap();
    sqlx::query("DELETE FROM audit WHERE seq > ?")
        .bind(n as i64 - 2)
        .execute(&w.db)
        .await
        .unwrap();
    let (status, v) = verify(&w).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (&v["ok"], &v["kind"], v["seq"].as_u64()),
        (&Value::Bool(false), &Value::from("truncated"), Some(n - 1)),
        "{v}"
    );
}

#[tokio::test]
async fn a_rehashed_record_fails_on_its_seal() {
    let _serial = SERIAL.lock().await;
    let w = world().await;
    // The SQLite store keeps hashes as bytes and bodies packed.
    let rows: Vec<(i64, String, Vec<u8>)> =
        sqlx::query_as("SELECT seq, lower(hex(hash)), body FROM audit ORDER BY seq")
            .fetch_all(&w.db)
            .await
            .unwrap();
    // Rows are stored compactly: `prev_hash` is the row before's hash.
    let mut prev = jit_core::audit::GENESIS_HASH.to_string();
    let mut chain: Vec<AuditRecord> = Vec::new();
    for (seq, hash, body) in &rows {
        chain.push(AuditRecord::from_stored_bytes(*seq as u64, hash, &prev, body).unwrap());
        prev.clone_from(hash);
    }
    // Pretend the first revocation was by someone else, and re-hash from there.
    let at = chain
        .iter()
        .position(|r| r.event.kind.as_str() == "revoked")
        .unwrap();
    chain[at].event.actor = "bob".into();
    for i in at..chain.len() {
        chain[i].prev_hash = chain[i - 1].hash.clone();
        chain[i].hash = chain[i].compute_hash();
        sqlx::query("UPDATE audit SET hash = unhex(?), body = CAST(? AS BLOB) WHERE seq = ?")
            .bind(&chain[i].hash)
            .bind(serde_json::to_string(&chain[i]).unwrap())
            .bind(rows[i].0)
            .execute(&w.db)
            .await
            .unwrap();
    }
    assert!(
        jit_core::audit::verify(&chain).is_ok(),
        "a valid hash chain"
    );
    let (status, v) = verify(&w).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (&v["ok"], &v["kind"], v["seq"].as_u64()),
        (
            &Value::Bool(false),
            &Value::from("bad_mac"),
            Some(at as u64 + 1)
        ),
        "{v}"
    );
}

#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_audit_key_is_created_private_and_its_bytes_never_reach_the_logs() {
    let _serial = SERIAL.lock().await;
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let w = world().await;
    sqlx::query("DELETE FROM audit WHERE seq > 2")
        .execute(&w.db)
        .await
        .unwrap();
    let (_, v) = verify(&w).await;
    assert_eq!(v["kind"], "truncated", "{v}");

    let path = w.dir.path().join("audit.key");
    let key = std::fs::read_to_string(&path).unwrap();
    let key = key.trim();
    assert_eq!(key.len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("created a new audit key"), "{text}");
    assert!(!text.contains(key) && !text.contains(&key[..16]), "{text}");
    let shown = format!("{:?}", w.server.state);
    assert!(!shown.contains(&key[..16]), "{shown}");
}

/// `POST /v1/admin/archive` on a server without `[retention] dir`: a
/// `409` that says so, and nothing pruned; for a non-admin a `403` first.
#[tokio::test]
async fn archiving_without_a_retention_dir_is_a_conflict() {
    let _serial = SERIAL.lock().await;
    let w = world().await;
    let before = verify(&w).await.1["records"].as_u64().unwrap();
    for (token, status, code) in [
        (&w.alice, StatusCode::FORBIDDEN, "forbidden"),
        (&w.admin, StatusCode::CONFLICT, "retention_off"),
    ] {
        let resp = w
            .server
            .router()
            .oneshot(
                Request::post("/v1/admin/archive")
                    .header("authorization", format!("Bearer {token}"))
                    .header("content-type", "application/json")
                    .body(Body::from(r#"{"older_than": "0s"}"#))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), status);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], code, "{v}");
    }
    assert_eq!(verify(&w).await.1["records"].as_u64(), Some(before));
}
