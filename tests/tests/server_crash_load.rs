//! The vending server under a SIGKILL in the middle of concurrent issues, and
//! under load: nothing is lost, nothing is duplicated, the audit chain holds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/server.rs"]
mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use support::{call, error_code, Server};

async fn all_records(http: &reqwest::Client, s: &Server) -> Vec<Value> {
    let (st, v) = call(
        http,
        Method::GET,
        &format!("{}/v1/requests?scope=all&limit=10000", s.url),
        Some(&s.admin),
        None,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    v["requests"].as_array().unwrap().clone()
}

async fn audit(http: &reqwest::Client, s: &Server) -> Vec<Value> {
    let text = http
        .get(format!("{}/v1/audit", s.url))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn verified(http: &reqwest::Client, s: &Server) -> Value {
    let (st, v) = call(
        http,
        Method::GET,
        &format!("{}/v1/audit/verify", s.url),
        Some(&s.admin),
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(v["ok"], true, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_concurrent_issues_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let url = format!("{}/v1/requests", server.url);

    // 20 concurrent auto-approved requests; the server dies while they run.
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (http, url, token) = (http.clone(), url.clone(), server.alice.clone());
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"entitlement": "demo-api", "duration": "10m", "justification": format!("crash {i}")});
            let out = match http.post(&url).bearer_auth(&token).json(&body).send().await {
                Ok(r) => Some((r.status().as_u16(), r.json::<Value>().await.ok())),
                Err(_) => None, // connection cut by the kill
            };
            done.fetch_add(1, Ordering::SeqCst);
            out
        }));
    }
    // Kill once a few have been answered, so that others are mid-flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    server.kill();
    let mut delivered = HashMap::new();
    for t in tasks {
        if let Some((201, Some(v))) = t.await.unwrap() {
            let id = v["request"]["id"].as_str().unwrap().to_string();
            let token = v["credentials"]["token"].as_str().unwrap().to_string();
            delivered.insert(id, token);
        }
    }

    // Restart on the same database: the reaper reconciles at once.
    let server = Server::start(dir.path());
    let deadline = Instant::now() + Duration::from_secs(20);
    let records = loop {
        let rs = all_records(&http, &server).await;
        let settled = rs
            .iter()
            .all(|r| matches!(r["state"].as_str(), Some("active" | "revoked" | "failed")));
        if settled {
            break rs;
        }
        assert!(Instant::now() < deadline, "not settled: {rs:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(records.len() <= 20);
    assert!(!delivered.is_empty(), "some answers came before the kill");
    assert!(
        delivered.len() < 20,
        "the kill came too late to test anything"
    );
    let by_id: HashMap<String, &Value> = records
        .iter()
        .map(|r| (r["id"].as_str().unwrap().to_string(), r))
        .collect();
    assert_eq!(by_id.len(), records.len(), "duplicated records");
    // Every delivered grant is recorded active and its requester can fetch the credentials again.
    for id in delivered.keys() {
        let r = by_id
            .get(id)
            .unwrap_or_else(|| panic!("delivered grant {id} lost"));
        assert_eq!(r["state"], "active", "{r}");
    }
    for r in &records {
        let id = r["id"].as_str().unwrap();
        let (st, v) = call(
            &http,
            Method::GET,
            &format!("{}/v1/requests/{id}/credentials", server.url),
            Some(&server.alice),
            None,
        )
        .await;
        match r["state"].as_str().unwrap() {
            "active" => assert_eq!(
                (st, v["credentials"]["kind"].as_str()),
                (200, Some("local_token")),
                "{v}"
            ),
            // Minted during the crash and never delivered, or nothing minted.
            _ => {
                assert!(!delivered.contains_key(id));
                assert_eq!((st, error_code(&v).as_str()), (409, "invalid_state"));
            }
        }
    }
    // Every record has its issue (or reconciliation) in the audit chain, and the chain verifies.
    let chain = audit(&http, &server).await;
    for r in &records {
        let id = r["id"].as_str().unwrap();
        let kinds: Vec<&str> = chain
            .iter()
            .filter(|e| e["request_id"] == id)
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert_eq!(&kinds[..2], ["requested", "decided"], "{id}: {kinds:?}");
        match r["state"].as_str().unwrap() {
            "active" => assert!(kinds.contains(&"issued"), "{kinds:?}"),
            _ => assert!(
                kinds.contains(&"reconciled") || kinds.contains(&"issue_failed"),
                "{kinds:?}"
            ),
        }
    }
    verified(&http, &server).await;
    eprintln!(
        "crash: {} delivered before the kill, {} recorded, states: {:?}",
        delivered.len(),
        records.len(),
        records
            .iter()
            .map(|r| r["state"].as_str().unwrap())
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_requests_from_fifty_clients_none_lost_or_duplicated() {
    const TOTAL: usize = 2000;
    const CLIENTS: usize = 50;
    // The database lives in memory-backed /dev/shm where there is one: the
    // same SQLite code path (WAL, full sync), without this machine's fsync
    // latency, which is the disk's cost and not the server's.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let server = Server::start(dir.path());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .unwrap();
    let url = Arc::new(format!("{}/v1/requests", server.url));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (http, url, token) = (http.clone(), url.clone(), server.alice.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for i in 0..TOTAL / CLIENTS {
                let body = json!({"entitlement": "demo-api", "duration": "5m",
                                  "justification": format!("load {c}/{i}")});
                let resp = http
                    .post(url.as_str())
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                let v: Value = resp.json().await.unwrap();
                seen.push((status, v));
            }
            seen
        }));
    }
    let mut ok = Vec::new();
    let mut typed_errors = 0usize;
    for t in tasks {
        for (status, v) in t.await.unwrap() {
            if status == 201 {
                assert_eq!(v["request"]["state"], "active");
                assert_eq!(v["credentials"]["kind"], "local_token");
                ok.push(v["request"]["id"].as_str().unwrap().to_string());
            } else {
                // A failure is a typed error in the common shape, never a dropped request.
                let code = error_code(&v);
                eprintln!("typed error {status} {code}");
                typed_errors += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "load: {} ok, {typed_errors} typed errors in {:.1}s ({:.0} grants/s)",
        ok.len(),
        elapsed.as_secs_f64(),
        ok.len() as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(ok.len() + typed_errors, TOTAL);
    let unique: HashSet<&String> = ok.iter().collect();
    assert_eq!(unique.len(), ok.len(), "an id was handed out twice");

    // The server's list and audit agree with what the clients saw.
    let records = all_records(&http, &server).await;
    let listed: HashSet<String> = records
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed.len(), records.len(), "duplicated records");
    for id in &ok {
        assert!(listed.contains(id), "{id} lost");
    }
    assert_eq!(
        records.iter().filter(|r| r["state"] == "active").count(),
        ok.len()
    );
    let chain = audit(&http, &server).await;
    let mut issued: HashMap<&str, usize> = HashMap::new();
    for e in &chain {
        if e["kind"] == "issued" {
            *issued.entry(e["request_id"].as_str().unwrap()).or_default() += 1;
        }
    }
    for id in &ok {
        assert_eq!(issued.get(id.as_str()), Some(&1), "{id}");
    }
    assert_eq!(issued.len(), ok.len());
    let v = verified(&http, &server).await;
    assert_eq!(v["records"].as_u64().unwrap() as usize, chain.len());
}
