//! Tests of the harness itself, through a real HTTP client.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use chrono::TimeZone;

use super::*;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(test_ca().pem().as_bytes()).unwrap())
        .build()
        .unwrap()
}

/// Counts the requests that reach the routes (not those a fault answered).
fn counting_routes(hits: Arc<AtomicUsize>) -> Router {
    async fn hit(State(h): State<Arc<AtomicUsize>>) -> &'static str {
        h.fetch_add(1, Ordering::SeqCst);
        "routed"
    }
    Router::new()
        .route("/x", get(hit).put(hit))
        .route("/a/b/c", get(hit))
        .route("/token", post(hit))
        .with_state(hits)
}

#[tokio::test]
async fn https_works_with_the_exposed_root_on_every_server_name() {
    let hits = Arc::new(AtomicUsize::new(0));
    let server = FakeServer::start(counting_routes(hits.clone())).unwrap();
    let port = server.https_url().rsplit(':').next().unwrap().to_string();
    for base in [
        server.https_url().to_string(),
        format!("https://localhost:{port}"),
    ] {
        let res = client().get(format!("{base}/x")).send().await.unwrap();
        assert_eq!(res.status(), 200, "{base}");
        assert_eq!(res.text().await.unwrap(), "routed");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert!(server.requests().iter().all(|r| r.scheme == Scheme::Https));
    assert_eq!(server.tls_handshake_failures(), 0);
}

#[tokio::test]
async fn https_is_refused_without_the_root() {
    let hits = Arc::new(AtomicUsize::new(0));
    let server = FakeServer::start(counting_routes(hits.clone())).unwrap();
    let plain = reqwest::Client::builder().build().unwrap();
    let err = plain
        .get(format!("{}/x", server.https_url()))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    assert_eq!(server.request_count(), 0);
    // The server counts the failed handshake on its own thread.
    for _ in 0..500 {
        if server.tls_handshake_failures() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(server.tls_handshake_failures(), 1);
}

#[tokio::test]
async fn the_server_certificate_chains_to_the_ca_not_to_itself() {
    let server = FakeServer::start(Router::new()).unwrap();
    assert_ne!(server.server_cert_pem(), server.ca_pem());
    assert!(server.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    // One CA per process: a second server chains to the same root.
    let other = FakeServer::start(Router::new()).unwrap();
    assert_eq!(other.ca_pem(), server.ca_pem());
    assert_ne!(other.server_cert_pem(), server.server_cert_pem());
    let path = test_ca().pem_path().unwrap();
    assert_eq!(std::fs::read_to_string(path).unwrap(), server.ca_pem());
}

#[tokio::test]
async fn plain_http_serves_the_same_routes_and_record() {
    let hits = Arc::new(AtomicUsize::new(0));
    let server = FakeServer::start(counting_routes(hits.clone())).unwrap();
    let res = reqwest::get(format!("{}/x?api-version=2022-04-01", server.http_url()))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let seen = server.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].scheme, Scheme::Http);
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].path, "/x");
    assert_eq!(seen[0].query.as_deref(), Some("api-version=2022-04-01"));
    assert_eq!(
        seen[0].query_param("api-version").as_deref(),
        Some("2022-04-01")
    );
    assert!(!seen[0].faulted);
    // Unknown routes are the router's 404, and recorded too.
    let res = reqwest::get(format!("{}/nope", server.http_url()))
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(server.request_count(), 2);
}

#[tokio::test]
async fn a_fault_fires_exactly_n_times_on_matching_requests_only() {
    let hits = Arc::new(AtomicUsize::new(0));
    let server = FakeServer::start(counting_routes(hits.clone())).unwrap();
    let fault = server.inject(
        Fault::respond(503)
            .method("put")
            .path("/x")
            .times(3)
            .json(serde_json::json!({"error": {"code": "ServiceUnavailable"}})),
    );
    let c = client();
    let url = format!("{}/x", server.https_url());
    let mut statuses = Vec::new();
    for _ in 0..5 {
        // A GET to the same path never matches the PUT rule.
        assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
        let res = c.put(&url).send().await.unwrap();
        statuses.push(res.status().as_u16());
        if res.status() == 503 {
            assert_eq!(res.headers()["content-type"], "application/json");
            let body: serde_json::Value = res.json().await.unwrap();
            assert_eq!(body["error"]["code"], "ServiceUnavailable");
        }
    }
    assert_eq!(statuses, [503, 503, 503, 200, 200]);
    assert_eq!(fault.fired(), 3);
    assert_eq!(fault.remaining(), 0);
    // 5 GETs and 2 PUTs reached the routes; all 10 requests are recorded.
    assert_eq!(hits.load(Ordering::SeqCst), 7);
    let seen = server.requests();
    assert_eq!(seen.len(), 10);
    assert_eq!(seen.iter().filter(|r| r.faulted).count(), 3);
    assert!(seen.iter().filter(|r| r.faulted).all(|r| r.method == "PUT"));
    // The answered status is recorded with each request.
    let recorded: Vec<_> = seen
        .iter()
        .filter(|r| r.method == "PUT")
        .map(|r| r.status)
        .collect();
    assert_eq!(
        recorded,
        [Some(503), Some(503), Some(503), Some(200), Some(200)]
    );
}

#[tokio::test]
async fn a_skipping_fault_lets_the_first_requests_through() {
    let hits = Arc::new(AtomicUsize::new(0));
    let server = FakeServer::start(counting_routes(hits.clone())).unwrap();
    let second = server.inject(Fault::respond(409).path("/x").skip(1).times(1));
    let c = client();
    let url = format!("{}/x", server.https_url());
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(c.put(&url).send().await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [200, 409, 200]);
    assert_eq!((second.fired(), second.remaining()), (1, 0));
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_fault_can_match_on_the_body_and_query() {
    let routes = Router::new().route("/req", put(|| async { "ok" }));
    let server = FakeServer::start(routes).unwrap();
    let removes = server.inject(
        Fault::respond(400)
            .method("PUT")
            .when(|r| {
                r.query_param("api-version").as_deref() == Some("2022-04-01")
                    && r.body_json()
                        .is_some_and(|b| b["properties"]["requestType"] == "AdminRemove")
            })
            .times(5),
    );
    let c = client();
    let url = format!("{}/req", server.https_url());
    let send = |kind: &'static str, version: &'static str| {
        c.put(&url)
            .query(&[("api-version", version)])
            .json(&serde_json::json!({"properties": {"requestType": kind}}))
            .send()
    };
    assert_eq!(
        send("AdminAssign", "2022-04-01").await.unwrap().status(),
        200
    );
    assert_eq!(
        send("AdminRemove", "2020-10-01").await.unwrap().status(),
        200
    );
    assert_eq!(
        send("AdminRemove", "2022-04-01").await.unwrap().status(),
        400
    );
    assert_eq!(removes.fired(), 1);
}

#[tokio::test]
async fn sequence_numbers_survive_clearing_the_record() {
    let server = FakeServer::start(Router::new()).unwrap();
    let c = client();
    let url = format!("{}/x", server.https_url());
    c.get(&url).send().await.unwrap();
    c.get(&url).send().await.unwrap();
    assert_eq!(
        server.requests().iter().map(|r| r.seq).collect::<Vec<_>>(),
        [0, 1]
    );
    server.clear_requests();
    assert_eq!(server.request_count(), 0);
    c.get(&url).send().await.unwrap();
    let seen = server.requests();
    assert_eq!((seen.len(), seen[0].seq, seen[0].status), (1, 2, Some(404)));
}

#[tokio::test]
async fn concurrent_requests_never_take_more_than_n_faults() {
    let hits = Arc::new(AtomicUsize::new(0));
    let server = FakeServer::start(counting_routes(hits.clone())).unwrap();
    let fault = server.inject(Fault::respond(429).times(5));
    let c = client();
    let url = format!("{}/x", server.https_url());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (c, url) = (c.clone(), url.clone());
        tasks.spawn(async move { c.get(&url).send().await.unwrap().status().as_u16() });
    }
    let mut throttled = 0;
    while let Some(status) = tasks.join_next().await {
        if status.unwrap() == 429 {
            throttled += 1;
        }
    }
    assert_eq!(throttled, 5);
    assert_eq!(fault.fired(), 5);
    assert_eq!(hits.load(Ordering::SeqCst), 15);
}

#[tokio::test]
async fn faults_match_by_prefix_and_part_and_apply_in_order() {
    let hits = Arc::new(AtomicUsize::new(0));
    let server = FakeServer::start(counting_routes(hits.clone())).unwrap();
    let prefix = server.inject(Fault::respond(409).path_prefix("/a/"));
    let part = server.inject(Fault::respond(412).path_contains("/b/").times(2));
    let c = client();
    let get = |p: &str| c.get(format!("{}{p}", server.https_url())).send();
    assert_eq!(get("/x").await.unwrap().status(), 200);
    // Both match: the first given answers.
    assert_eq!(get("/a/b/c").await.unwrap().status(), 409);
    assert_eq!(get("/a/b/c").await.unwrap().status(), 412);
    assert_eq!(get("/a/b/c").await.unwrap().status(), 412);
    assert_eq!(get("/a/b/c").await.unwrap().status(), 200);
    assert_eq!((prefix.fired(), part.fired()), (1, 2));
    // Disarmed and cleared faults fire no more.
    let left = server.inject(Fault::respond(500).times(10));
    assert_eq!(get("/x").await.unwrap().status(), 500);
    left.disarm();
    assert_eq!(get("/x").await.unwrap().status(), 200);
    server.inject(Fault::respond(500).times(10));
    server.clear_faults();
    assert_eq!(get("/x").await.unwrap().status(), 200);
}

#[tokio::test]
async fn retry_after_is_seconds_or_a_date_on_the_fake_clock() {
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 11, 29, 21, 0, 0).unwrap());
    let server = FakeServer::builder()
        .clock(clock.clone())
        .start(Router::new())
        .unwrap();
    server.inject(Fault::respond(429).retry_after_secs(17));
    server.inject(Fault::respond(503).retry_after_date(Duration::from_secs(90)));
    let c = client();
    let url = format!("{}/x", server.https_url());
    let first = c.get(&url).send().await.unwrap();
    assert_eq!(first.status(), 429);
    assert_eq!(first.headers()["retry-after"], "17");
    clock.advance(chrono::TimeDelta::hours(1));
    let second = c.get(&url).send().await.unwrap();
    assert_eq!(second.status(), 503);
    assert_eq!(
        second.headers()["retry-after"],
        "Sun, 29 Nov 2026 22:01:30 GMT"
    );
    // The kit's parser, which the providers use, reads both back against
    // the fake's clock: what a provider under test would wait.
    use crate::provider::http::{error_for_status, parse_retry_after};
    let now = clock.now();
    let value = second.headers()["retry-after"].to_str().unwrap();
    assert_eq!(parse_retry_after(value, now), Some(Duration::from_secs(90)));
    assert_eq!(parse_retry_after("17", now), Some(Duration::from_secs(17)));
    let e = error_for_status(
        "fake",
        "get",
        429,
        parse_retry_after("17", now),
        "slow down".into(),
    );
    assert!(matches!(e, crate::Error::Throttled { .. }), "{e:?}");
}

#[tokio::test]
async fn a_dropped_connection_gets_no_answer_and_the_next_request_does() {
    let hits = Arc::new(AtomicUsize::new(0));
    let server = FakeServer::start(counting_routes(hits.clone())).unwrap();
    let drop_it = server.inject(Fault::drop_connection().path("/token"));
    let c = client();
    let url = format!("{}/token", server.https_url());
    let err = c.post(&url).body("grant_type=x").send().await.unwrap_err();
    assert!(err.is_request() && err.status().is_none(), "{err:?}");
    assert_eq!(drop_it.fired(), 1);
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    let res = c.post(&url).body("grant_type=x").send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // The dropped request is in the record, marked.
    let seen = server.requests_to("POST", "/token");
    assert_eq!(seen.len(), 2);
    assert!(seen[0].faulted && !seen[1].faulted);
    assert_eq!((seen[0].status, seen[1].status), (None, Some(200)));
}

#[tokio::test]
async fn a_slow_answer_trips_the_client_timeout_and_then_passes() {
    let hits = Arc::new(AtomicUsize::new(0));
    let server = FakeServer::start(counting_routes(hits.clone())).unwrap();
    // Far longer than the client waits: the assertion is on the timeout,
    // not on how long anything took.
    server.inject(Fault::pass_after(Duration::from_secs(600)).path("/x"));
    let c = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(server.ca_pem().as_bytes()).unwrap())
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let url = format!("{}/x", server.https_url());
    let err = c.get(&url).send().await.unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    server.inject(Fault::pass_after(Duration::from_millis(1)).path("/x"));
    assert_eq!(
        c.get(&url).send().await.unwrap().text().await.unwrap(),
        "routed"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn recording_excludes_secrets() {
    let server = FakeServer::builder()
        .redact_header("x-api-key")
        .redact_field("sig")
        .start(Router::new().route("/token", post(|| async { "ok" })))
        .unwrap();
    let c = client();
    let url = format!("{}/token", server.https_url());
    c.post(&url)
        .bearer_auth("eyJ-bearer-SECRET-1")
        .header("cookie", "session=SECRET-2")
        .header("x-api-key", "SECRET-3")
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "app-id"),
            ("client_secret", "SECRET-4"),
            ("scope", "https://management.azure.com/.default"),
        ])
        .send()
        .await
        .unwrap();
    c.post(&url)
        .basic_auth("user", Some("SECRET-5"))
        .json(&serde_json::json!({
            "keys": [{"private_key": "SECRET-6", "client_email": "sa@example.iam"}],
            "assertion": "SECRET-7",
            "sig": "SECRET-8",
            "lifetime": "3600s",
        }))
        .send()
        .await
        .unwrap();
    // A form sent without its content type is still redacted.
    c.post(&url)
        .header("authorization", "SECRET-9")
        .body("refresh_token=SECRET-10&grant_type=refresh_token")
        .send()
        .await
        .unwrap();
    let seen = server.requests();
    assert_eq!(seen.len(), 3);
    let everything = format!("{seen:?}");
    for n in 1..=10 {
        assert!(
            !everything.contains(&format!("SECRET-{n}")),
            "secret {n} recorded: {everything}"
        );
    }
    // What is not secret is kept, and the auth scheme stays visible.
    assert_eq!(
        seen[0].header("authorization"),
        Some("Bearer ** redacted **")
    );
    assert_eq!(seen[0].header("cookie"), Some(REDACTED));
    assert_eq!(seen[0].header("x-api-key"), Some(REDACTED));
    assert_eq!(
        seen[0].form_param("grant_type").as_deref(),
        Some("client_credentials")
    );
    assert_eq!(seen[0].form_param("client_id").as_deref(), Some("app-id"));
    assert_eq!(
        seen[0].form_param("client_secret").as_deref(),
        Some(REDACTED)
    );
    assert_eq!(
        seen[0].form_param("scope").as_deref(),
        Some("https://management.azure.com/.default")
    );
    assert_eq!(
        seen[1].header("authorization"),
        Some("Basic ** redacted **")
    );
    let body = seen[1].body_json().unwrap();
    assert_eq!(body["keys"][0]["private_key"], REDACTED);
    assert_eq!(body["keys"][0]["client_email"], "sa@example.iam");
    assert_eq!(body["lifetime"], "3600s");
    assert_eq!(seen[2].header("authorization"), Some(REDACTED));
    assert_eq!(
        seen[2].form_param("grant_type").as_deref(),
        Some("refresh_token")
    );
}

#[tokio::test]
async fn the_clock_is_shared_with_the_routes_and_the_record() {
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap());
    let routes = Router::new().route(
        "/now",
        get(|Extension(ctx): Extension<FakeContext>| async move { ctx.now().to_rfc3339() }),
    );
    let server = FakeServer::builder()
        .clock(clock.clone())
        .start(routes)
        .unwrap();
    let c = client();
    let url = format!("{}/now", server.https_url());
    let t0 = c.get(&url).send().await.unwrap().text().await.unwrap();
    clock.advance(chrono::TimeDelta::minutes(61));
    let t1 = c.get(&url).send().await.unwrap().text().await.unwrap();
    assert_eq!(t0, "2026-01-01T00:00:00+00:00");
    assert_eq!(t1, "2026-01-01T01:01:00+00:00");
    let seen = server.requests();
    assert_eq!(seen[1].at - seen[0].at, chrono::TimeDelta::minutes(61));
    assert_eq!(server.clock().now(), clock.now());
}

#[tokio::test]
async fn routes_built_with_the_context_can_name_the_server() {
    let server = FakeServer::builder()
        .start_with(|ctx| {
            let issuer = format!("{}/tenant/v2.0", ctx.https_url());
            Router::new().route(
                "/tenant/v2.0/.well-known/openid-configuration",
                get(move || async move {
                    Json(serde_json::json!({
                        "issuer": issuer,
                        "token_endpoint": format!("{issuer}/token"),
                    }))
                }),
            )
        })
        .unwrap();
    let doc: serde_json::Value = client()
        .get(format!(
            "{}/tenant/v2.0/.well-known/openid-configuration",
            server.https_url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        doc["token_endpoint"],
        format!("{}/tenant/v2.0/token", server.https_url())
    );
}

#[tokio::test]
async fn put_bodies_reach_the_routes_intact() {
    let routes = Router::new().route("/echo", put(|body: String| async move { body }));
    let server = FakeServer::start(routes).unwrap();
    let res = client()
        .put(format!("{}/echo", server.https_url()))
        .json(&serde_json::json!({"properties": {"principalId": "p"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.text().await.unwrap(),
        r#"{"properties":{"principalId":"p"}}"#
    );
    assert_eq!(
        server.requests()[0].body_json().unwrap()["properties"]["principalId"],
        "p"
    );
}

#[tokio::test]
async fn shutting_down_closes_both_ports() {
    let server = FakeServer::start(Router::new()).unwrap();
    let http = server.http_url().trim_start_matches("http://").to_string();
    let https = server
        .https_url()
        .trim_start_matches("https://")
        .to_string();
    assert!(std::net::TcpStream::connect(&http).is_ok());
    server.shutdown();
    assert!(
        std::net::TcpStream::connect(&http).is_err(),
        "http port still open"
    );
    assert!(
        std::net::TcpStream::connect(&https).is_err(),
        "https port still open"
    );
}

#[tokio::test]
async fn dropping_ends_open_connections() {
    // A request parked in a slow fault is cut off when the server goes.
    let server = FakeServer::start(Router::new()).unwrap();
    server.inject(Fault::pass_after(Duration::from_secs(600)));
    let c = client();
    let url = format!("{}/x", server.https_url());
    let pending = tokio::spawn(async move { c.get(&url).send().await });
    for _ in 0..500 {
        if server.request_count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(server.request_count(), 1);
    drop(server);
    let err = pending.await.unwrap().unwrap_err();
    assert!(err.is_request() && !err.is_timeout(), "{err:?}");
}

#[test]
fn a_server_outlives_the_runtime_of_the_test_that_uses_it() {
    // Blocking use from a plain #[test], and from two runtimes in turn.
    let server = FakeServer::start(counting_routes(Arc::new(AtomicUsize::new(0)))).unwrap();
    for _ in 0..2 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let status = rt.block_on(async {
            client()
                .get(format!("{}/x", server.https_url()))
                .send()
                .await
                .unwrap()
                .status()
        });
        assert_eq!(status, 200);
    }
    assert_eq!(server.request_count(), 2);
}

#[tokio::test]
async fn the_ca_file_alone_is_enough_to_trust_the_fake() {
    // What a client reading `SSL_CERT_FILE` does: a root store holding only
    // the certificates of that file (it replaces the system bundle).
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = FakeServer::start(counting_routes(Arc::new(AtomicUsize::new(0)))).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(test_ca().pem_path().unwrap()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    assert_eq!(roots.len(), 1);
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let addr = server
        .https_url()
        .trim_start_matches("https://")
        .to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /x HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("routed"), "{answer}");
}
