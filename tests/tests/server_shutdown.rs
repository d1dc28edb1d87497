//! Graceful shutdown: a stop signal while issues are in flight lets every
//! one of them finish (recorded active, credentials delivered) before the
//! server returns; nothing is cut off half-done.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jit_core::local::{LocalKey, LocalProvider};
use jit_core::store::SqliteStore;
use jit_core::{
    Broker, Capabilities, CataloguePolicy, Entitlement, GrantSpec, Issued, IssuedGrant, ListFilter,
    Provider, Result, State,
};
use serde_json::{json, Value};
use vending_server::config::Config;
use vending_server::demo::{self, DemoIssuer};
use vending_server::Server;

/// The local provider, slowed down so that issues are surely in flight.
#[derive(Debug)]
struct Slow {
    inner: LocalProvider,
    entered: AtomicUsize,
}

#[async_trait]
impl Provider for Slow {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn validate(&self, e: &Entitlement) -> Result<()> {
        self.inner.validate(e)
    }
    async fn issue(&self, spec: &GrantSpec) -> Result<Issued> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(700)).await;
        self.inner.issue(spec).await
    }
    async fn revoke(&self, issued: &IssuedGrant) -> Result<()> {
        self.inner.revoke(issued).await
    }
    async fn find(&self, spec: &GrantSpec) -> Result<Option<IssuedGrant>> {
        self.inner.find(spec).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_signal_lets_in_flight_issues_finish() {
    let dir = tempfile::tempdir().unwrap();
    let issuer_key = LocalKey::generate()
        .to_pkcs8_pem()
        .unwrap()
        .expose()
        .to_string();
    let issuer = DemoIssuer::new(LocalKey::from_pkcs8_pem(&issuer_key).unwrap());
    let db = dir.path().join("jit.db");
    let config = Config::from_toml_str(&format!(
        r#"
listen = "127.0.0.1:0"
store_url = "sqlite://{}"
catalogue = """{}"""
[auth]
issuer = "{}"
audience = "{}"
algorithms = ["EdDSA"]
[providers.local]
kind = "local"
"#,
        db.display(),
        demo::CATALOGUE,
        demo::ISSUER,
        demo::AUDIENCE
    ))
    .unwrap();
    let slow = Arc::new(Slow {
        inner: LocalProvider::new(LocalKey::generate(), "jit"),
        entered: AtomicUsize::new(0),
    });
    // The server runs as the binary does: on a runtime of its own that ends
    // when `serve` returns, cancelling whatever is still running on it.
    let (url_tx, url_rx) = std::sync::mpsc::channel::<String>();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server_thread = {
        let (slow, issuer_key, db) = (slow.clone(), issuer_key.clone(), db.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let result = rt.block_on(async move {
                let issuer = DemoIssuer::new(LocalKey::from_pkcs8_pem(&issuer_key).unwrap());
                let mut server = Server::build(config, Some(&issuer)).await.unwrap();
                // The broker the server built, but with the slow provider.
                server.state.broker = Broker::builder(
                    Arc::new(SqliteStore::open(&db).await.unwrap()),
                    Arc::new(CataloguePolicy::from_toml_str(demo::CATALOGUE).unwrap()),
                )
                .provider(slow)
                .build()
                .unwrap();
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                url_tx
                    .send(format!("http://{}", listener.local_addr().unwrap()))
                    .unwrap();
                server
                    .serve(listener, async move {
                        let _ = stopped.await;
                    })
                    .await
            });
            drop(rt);
            result
        })
    };
    let url = url_rx.recv().unwrap();

    let token = issuer.token("alice", &["engineering"], 600).unwrap();
    let http = reqwest::Client::new();
    let n = 8;
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let (http, url, token) = (http.clone(), url.clone(), token.clone());
            tokio::spawn(async move {
                let resp = http
                    .post(format!("{url}/v1/requests"))
                    .bearer_auth(token)
                    .json(&json!({"entitlement": "demo-api", "duration": "10m",
                                  "justification": format!("job {i}")}))
                    .send()
                    .await
                    .unwrap();
                (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
            })
        })
        .collect();
    // Every issue is inside the provider: now the signal.
    while slow.entered.load(Ordering::SeqCst) < n {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(()).unwrap();

    for call in calls {
        let (status, body) = call.await.unwrap();
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["request"]["state"], "active");
        assert!(body["credentials"]["token"].is_string());
    }
    server_thread
        .join()
        .unwrap()
        .expect("the server returns once in-flight work is done");
    // The server is gone; its work is all on disk.
    assert!(http.get(format!("{url}/healthz")).send().await.is_err());
    let store = SqliteStore::open(&db).await.unwrap();
    let records = jit_core::Store::list(&store, &ListFilter::default())
        .await
        .unwrap();
    assert_eq!(records.len(), n);
    assert!(records.iter().all(|r| r.state == State::Active));
}
