//! Auto-approved local-token grants per second through the vending server
//! (HTTP, OIDC token check, policy, three durable SQLite commits with the
//! audit chain, an Ed25519 token minted), against a baseline measured in the
//! same run: a bare axum endpoint on the same HTTP client doing the same three
//! durable SQLite commits (insert, issuing, active) with the store's pragmas.
//!
//! The databases go to `$JIT_BENCH_DIR` (default: the temp dir), so the
//! same bench runs on the default disk and on a tmpfs:
//!
//! `cargo bench -p vending-server --bench grants`
//! `JIT_BENCH_DIR=/dev/shm cargo bench -p vending-server --bench grants`
//!
//! For profilers: `JIT_BENCH_GRANTS=N` runs N requests of one case
//! (`JIT_BENCH_CASE`: `server` (the default), `many` or `baseline`) one
//! after another after the same setup, then exits without criterion.
//! `JIT_BENCH_CASE=paired` (or `paired-many`) alternates server and
//! baseline requests N times and prints their ratio: the steadiest figure
//! on a noisy machine. Two
//! runs with different N under `valgrind --tool=callgrind` or `strace -c -f`
//! give the instructions and system calls of one grant by difference, which
//! the machine's load does not move.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::routing::post;
use axum::Router;
use criterion::{criterion_group, Criterion, Throughput};
use jit_core::local::LocalKey;
use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous};
use vending_server::config::{AuthConfig, Config, Limits, ProviderTable, ReaperConfig};
use vending_server::demo::{self, DemoIssuer};
use vending_server::Server;

/// Durable commits one auto-approved grant makes.
const COMMITS_PER_GRANT: i64 = 3;
/// Requesters in the many-requesters case.
const SUBJECTS: usize = 1000;

async fn start(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// The servers under test and their clients, set up once.
struct Setup {
    rt: tokio::runtime::Runtime,
    server_url: String,
    baseline_url: String,
    token: String,
    tokens: Vec<String>,
    next: AtomicU64,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn server_grant(&self, token: &str) {
        let r = self
            .http
            .post(format!("{}/v1/requests", self.server_url))
            .bearer_auth(token)
            .json(&json!({"entitlement": "demo-api", "duration": "5m", "justification": "bench"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        r.bytes().await.unwrap();
    }

    async fn one_subject(&self) {
        self.server_grant(&self.token).await;
    }

    async fn many_subjects(&self) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize % SUBJECTS;
        self.server_grant(&self.tokens[i]).await;
    }

    async fn baseline(&self) {
        let r = self
            .http
            .post(format!("{}/baseline", self.baseline_url))
            .json(&json!({"entitlement": "demo-api", "duration": "5m", "justification": "bench"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.bytes().await.unwrap();
    }
}

fn setup() -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = match std::env::var_os("JIT_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let issuer = DemoIssuer::new(LocalKey::generate());
    let token = issuer.token("alice", &["engineering"], 24 * 3600).unwrap();
    // Many requesters, each with a token used for many requests (as a
    // browser or CLI reuses its token until it expires).
    let tokens: Vec<String> = (0..SUBJECTS)
        .map(|i| {
            issuer
                .token(&format!("user-{i}"), &["engineering"], 24 * 3600)
                .unwrap()
        })
        .collect();
    let next = AtomicU64::new(0);
    let mut providers = BTreeMap::new();
    providers.insert("local".to_string(), ProviderTable::new("local"));
    let config = Config {
        listen: "127.0.0.1:0".into(),
        store_url: format!("sqlite://{}", dir.path().join("jit.db").display()),
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
        // One subject submits every grant: the rate limit would refuse
        // most of them; the pending cap (a store read per submit) stays.
        limits: Limits {
            submits_per_minute: 0,
            ..Limits::default()
        },
        reaper: ReaperConfig { interval_secs: 60 },
        metrics: Default::default(),
        introspection: Default::default(),
        audit: Default::default(),
        risk: Default::default(),
        tickets: Default::default(),
        on_call: Default::default(),
        retention: Default::default(),
        base_dir: None,
        ignore_provider_env: true,
    };
    let server_url = rt.block_on(async {
        let server = Server::build(config, Some(&issuer)).await.unwrap();
        start(server.router()).await
    });

    // Baseline: the same number of durable commits behind a bare axum route.
    let pool = rt.block_on(async {
        let pool = SqlitePool::connect_with(
            SqliteConnectOptions::new()
                .filename(dir.path().join("raw.db"))
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full),
        )
        .await
        .unwrap();
        sqlx::query("CREATE TABLE t (id TEXT PRIMARY KEY, version INTEGER, body TEXT)")
            .execute(&pool)
            .await
            .unwrap();
        pool
    });
    let counter = Arc::new(AtomicU64::new(0));
    let body = Arc::new("x".repeat(1500)); // about the size of a stored record
    let baseline = Router::new().route(
        "/baseline",
        post(move || {
            let (pool, counter, body) = (pool.clone(), counter.clone(), body.clone());
            async move {
                let id = counter.fetch_add(1, Ordering::Relaxed).to_string();
                for v in 0..COMMITS_PER_GRANT {
                    let mut tx = pool.begin().await.unwrap();
                    let q = if v == 0 {
                        sqlx::query("INSERT INTO t VALUES (?, 0, ?)")
                            .bind(id.clone())
                            .bind(body.as_str())
                    } else {
                        sqlx::query("UPDATE t SET version = ?, body = ? WHERE id = ?")
                            .bind(v)
                            .bind(body.as_str())
                    };
                    let q = if v == 0 { q } else { q.bind(id.clone()) };
                    q.execute(&mut *tx).await.unwrap();
                    tx.commit().await.unwrap();
                }
                axum::Json(json!({ "id": id }))
            }
        }),
    );
    let baseline_url = rt.block_on(start(baseline));

    Setup {
        rt,
        server_url,
        baseline_url,
        token,
        tokens,
        next,
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

fn bench(c: &mut Criterion) {
    let s = setup();
    let mut g = c.benchmark_group("grants");
    g.throughput(Throughput::Elements(1));
    g.sample_size(30);
    g.bench_function("server_auto_approved_local_token", |b| {
        b.to_async(&s.rt).iter(|| s.one_subject())
    });
    g.bench_function("server_1000_requesters", |b| {
        b.to_async(&s.rt).iter(|| s.many_subjects())
    });
    g.bench_function("baseline_axum_3_sqlite_commits", |b| {
        b.to_async(&s.rt).iter(|| s.baseline())
    });
    g.finish();
}

/// `JIT_BENCH_GRANTS=N`: N requests of `JIT_BENCH_CASE`, nothing else.
/// `paired` (or `paired-many`) instead alternates a server grant (one
/// subject, or 1,000) and a baseline request N times, timing each, and
/// prints the ratio of the means and the median of the ratios of blocks
/// of 100 pairs: on a machine whose speed drifts, neighbours in time are
/// the fairest comparison.
fn counted(n: u64) {
    let s = setup();
    let case = std::env::var("JIT_BENCH_CASE").unwrap_or_else(|_| "server".into());
    if let Some(rest) = case.strip_prefix("paired") {
        return paired(&s, n, rest == "-many");
    }
    s.rt.block_on(async {
        for _ in 0..n {
            match case.as_str() {
                "server" => s.one_subject().await,
                "many" => s.many_subjects().await,
                "baseline" => s.baseline().await,
                other => panic!("unknown JIT_BENCH_CASE `{other}`"),
            }
        }
    });
}

fn paired(s: &Setup, n: u64, many: bool) {
    use std::time::{Duration, Instant};
    const BLOCK: usize = 100;
    let (server, baseline) = s.rt.block_on(async {
        let (mut server, mut baseline) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let t = Instant::now();
            if many {
                s.many_subjects().await;
            } else {
                s.one_subject().await;
            }
            server.push(t.elapsed());
            let t = Instant::now();
            s.baseline().await;
            baseline.push(t.elapsed());
        }
        (server, baseline)
    });
    let total = |v: &[Duration]| v.iter().sum::<Duration>().as_secs_f64();
    let mut blocks: Vec<f64> = server
        .chunks(BLOCK)
        .zip(baseline.chunks(BLOCK))
        .map(|(a, b)| total(a) / total(b))
        .collect();
    blocks.sort_by(f64::total_cmp);
    let per = |v: &[Duration]| total(v) * 1e3 / v.len().max(1) as f64;
    println!(
        "paired{}: {n} pairs, server {:.3} ms, baseline {:.3} ms per grant, ratio of means {:.2}, \
         median block ratio {:.2} (blocks of {BLOCK}: {:.2} to {:.2})",
        if many {
            " (1,000 subjects)"
        } else {
            " (one subject)"
        },
        per(&server),
        per(&baseline),
        total(&server) / total(&baseline),
        blocks.get(blocks.len() / 2).copied().unwrap_or(f64::NAN),
        blocks.first().copied().unwrap_or(f64::NAN),
        blocks.last().copied().unwrap_or(f64::NAN),
    );
}

criterion_group!(benches, bench);

fn main() {
    match std::env::var("JIT_BENCH_GRANTS") {
        Ok(n) => counted(n.parse().expect("JIT_BENCH_GRANTS is a number")),
        Err(_) => {
            benches();
            Criterion::default().configure_from_args().final_summary();
        }
    }
}
