//! Submit with the built-in risk assessor against submit without it, in one
//! run, on a SQLite store holding 100,000 past requests of 1,000 principals
//! (issue #14; target: at most 1.2x).
//!
//! Each submitted request asks for longer than the auto-approve limit, so
//! with or without the assessor it ends pending after one durable insert
//! (nothing is issued): the difference is the assessor's one
//! `Store::risk_facts` statement and its scoring. Requesters rotate over
//! the 1,000 principals, so each assessment reads a different history.
//! A second group measures the store's part alone (`risk_facts`) and the
//! three history lookups the assessor made before it (decoding about 300
//! request bodies), in the same run, with one `get` as the unit. Last, the
//! two submits alternate for `$JIT_RISK_BENCH_PAIRS` (1,000) rounds and
//! the ratio of their total times is printed: on a loaded machine that is
//! the steadier figure.
//!
//! The history is written once into a database under `/dev/shm` (fast
//! fsyncs), then copied (`VACUUM INTO`) to `$JIT_RISK_BENCH_DIR` (default the
//! temp dir, on disk) where the measurement runs, so submits pay real
//! durable commits as in production.
//!
//! `cargo bench -p jit-core --features testing --bench risk -- --warm-up-time 2 --measurement-time 10`
//! (`JIT_RISK_BENCH_KEEP=1` keeps the database and prints where.)
//!
//! For instruction counts, which a loaded machine does not skew:
//! `JIT_RISK_BENCH_DB=/path/history.db` fills that file once (reused by
//! later runs, each on a copy), and `JIT_RISK_BENCH_ONLY=with` (or
//! `without`) with `JIT_RISK_BENCH_N=300` runs only that many submits of
//! one kind (or `facts`: the store's part alone), no criterion; under `valgrind --tool=callgrind`, two values of
//! `N` give the instructions per submit (their difference over the
//! difference of `N`, so opening the store cancels out), and `with` less
//! `without` those of one assessment.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    missing_docs
)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chrono::{TimeDelta, Utc};
use criterion::{criterion_group, criterion_main, Criterion};
use jit_core::risk::HistoryAssessor;
use jit_core::store::{HistoryQuery, RiskFactsQuery, SqliteStore};
use jit_core::testing::store::sample_record;
use jit_core::testing::TestProvider;
use jit_core::{AccessRequest, Broker, CataloguePolicy, GrantDuration, Principal, State, Store};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

const PRINCIPALS: usize = 1000;
const PAST: usize = 100_000;
const GROUPS: usize = 20;
const ENTITLEMENTS: usize = 50;

fn catalogue() -> String {
    let mut s = String::new();
    for e in 0..ENTITLEMENTS {
        s.push_str(&format!(
            r#"
[[entitlements]]
id = "ent-{e:02}"
provider = "test"
max_duration = "8h"
[entitlements.eligible]
groups = [{groups}]
[entitlements.approval]
groups = ["leads"]
[entitlements.auto_approve]
max_duration = "5m"
max_risk = 40
"#,
            groups = (0..GROUPS)
                .map(|g| format!("\"g{g:02}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    s
}

fn principal(i: usize) -> Principal {
    Principal::new(&format!("user-{i:04}"))
        .unwrap()
        .with_group(&format!("g{:02}", i % GROUPS))
}

/// An entitlement user `i` commonly uses: each group shares five.
fn entitlement_of(i: usize, k: usize) -> String {
    format!("ent-{:02}", ((i % GROUPS) * 5 + k % 5) % ENTITLEMENTS)
}

async fn fill(path: &Path) {
    let store = SqliteStore::open(path).await.unwrap();
    let now = Utc::now();
    let start = Instant::now();
    for n in 0..PAST {
        let i = n % PRINCIPALS;
        let k = n / PRINCIPALS;
        // 100 days back, one request a day per principal, at their usual hour.
        let at = now - TimeDelta::days(100 - k as i64) + TimeDelta::minutes((i % 480) as i64);
        let who = principal(i);
        let mut r = sample_record(who.id.as_str(), &entitlement_of(i, k), State::Expired, at);
        r.requester = who;
        r.request.duration = GrantDuration::from_secs_i64(1800).unwrap();
        r.request
            .context
            .insert("ip".into(), format!("10.0.{}.{}", i / 250, i % 250));
        store.insert(&r, &[]).await.unwrap();
    }
    store.close().await;
    println!(
        "filled {PAST} past requests of {PRINCIPALS} principals in {:.1}s",
        start.elapsed().as_secs_f64()
    );
}

fn broker(store: Arc<dyn Store>, with_risk: bool) -> Broker {
    let policy = Arc::new(CataloguePolicy::from_toml_str(&catalogue()).unwrap());
    let b = Broker::builder(store, policy).provider(Arc::new(TestProvider::new("test")));
    let b = if with_risk {
        b.risk_assessor(Arc::new(HistoryAssessor::new()))
    } else {
        b
    };
    b.build().unwrap()
}

async fn submit(b: &Broker, next: &AtomicUsize) {
    let n = next.fetch_add(1, Ordering::Relaxed);
    let i = (n * 7919) % PRINCIPALS;
    let req = AccessRequest::new(&entitlement_of(i, n), "30m".parse().unwrap(), "benchmark")
        .with_context("ip", &format!("10.0.{}.{}", i / 250, i % 250));
    let out = b.submit(&principal(i), req).await.unwrap();
    assert_eq!(out.record.state, State::Pending);
}

/// What the assessor asks the store for user `i` (its defaults: the
/// last ten minutes, the request's IP).
fn facts_query(i: usize, n: usize) -> RiskFactsQuery {
    let who = principal(i);
    RiskFactsQuery {
        groups: who.groups.clone(),
        sources: vec![("ip".into(), format!("10.0.{}.{}", i / 250, i % 250))],
        since: Utc::now() - TimeDelta::minutes(10),
        ..RiskFactsQuery::new(who.id.as_str(), &entitlement_of(i, n))
    }
}

/// The store's part of one assessment alone.
async fn facts(store: &dyn Store, next: &AtomicUsize) {
    let n = next.fetch_add(1, Ordering::Relaxed);
    let i = (n * 7919) % PRINCIPALS;
    let f = store.risk_facts(&facts_query(i, n)).await.unwrap();
    assert!(f.requests > 0 && f.peer_used);
}

/// What the assessor read before `Store::risk_facts` (three history
/// lookups, about 300 request bodies decoded), for comparison.
async fn history_before(store: &dyn Store, next: &AtomicUsize) {
    let n = next.fetch_add(1, Ordering::Relaxed);
    let i = (n * 7919) % PRINCIPALS;
    let who = principal(i);
    let ent = entitlement_of(i, n);
    let mine = HistoryQuery::of_requester(who.id.as_str(), 200);
    let here = HistoryQuery::of_requester(who.id.as_str(), 50).for_entitlement(&ent);
    let peers = HistoryQuery::of_entitlement(&ent, 200).excluding(who.id.as_str());
    let (a, _, _) = tokio::try_join!(
        store.history(&mine),
        store.history(&here),
        store.history(&peers)
    )
    .unwrap();
    assert!(!a.is_empty());
}

/// Fills the history under `/dev/shm` (fast fsyncs) and copies it to `db`.
fn fill_and_copy(rt: &tokio::runtime::Runtime, db: &Path) {
    let shm = Path::new("/dev/shm");
    let fill_dir = tempfile::tempdir_in(if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    })
    .unwrap();
    let filled = fill_dir.path().join("history.db");
    rt.block_on(fill(&filled));
    // SQLite copies it (`VACUUM INTO`): a consistent database whatever
    // state the fill's WAL was left in (copying the files raced with the
    // last connection's checkpoint and could give a malformed copy).
    rt.block_on(async {
        let mut conn = SqliteConnectOptions::new()
            .filename(&filled)
            .connect()
            .await
            .unwrap();
        sqlx::query("VACUUM INTO ?")
            .bind(db.display().to_string())
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    });
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let run_dir = match std::env::var_os("JIT_RISK_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(PathBuf::from(d)).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let db = run_dir.path().join("history.db");
    match std::env::var_os("JIT_RISK_BENCH_DB") {
        // A history filled once and kept (closed, so one consistent file),
        // copied for each run: for instruction counts under valgrind,
        // where filling would take hours.
        Some(kept) => {
            let kept = PathBuf::from(kept);
            if !kept.exists() {
                rt.block_on(fill(&kept));
            }
            std::fs::copy(&kept, &db).unwrap();
        }
        None => fill_and_copy(&rt, &db),
    }
    println!("measuring on {}", db.display());
    if std::env::var_os("JIT_RISK_BENCH_KEEP").is_some() {
        // To inspect the database (query plans, timings) after the run.
        let kept = run_dir.keep();
        println!("keeping {}", kept.display());
    }

    let store: Arc<dyn Store> = Arc::new(rt.block_on(SqliteStore::open(&db)).unwrap());
    let plain = broker(store.clone(), false);
    let reads = store.clone();
    let assessed = broker(store, true);
    let next = AtomicUsize::new(0);
    if let Ok(only) = std::env::var("JIT_RISK_BENCH_ONLY") {
        let n: u32 = std::env::var("JIT_RISK_BENCH_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(500);
        let t = Instant::now();
        rt.block_on(async {
            for _ in 0..n {
                match only.as_str() {
                    "with" => submit(&assessed, &next).await,
                    "without" => submit(&plain, &next).await,
                    "facts" => facts(&*reads, &next).await,
                    other => {
                        panic!("JIT_RISK_BENCH_ONLY is `with`, `without` or `facts`, not `{other}`")
                    }
                }
            }
        });
        println!(
            "{n} of `{only}`: {:.3} ms each",
            t.elapsed().as_secs_f64() * 1e3 / f64::from(n)
        );
        return;
    }

    let mut g = c.benchmark_group("risk_submit");
    g.bench_function("without_assessor", |b| {
        b.to_async(&rt).iter(|| submit(&plain, &next))
    });
    g.bench_function("with_history_assessor", |b| {
        b.to_async(&rt).iter(|| submit(&assessed, &next))
    });
    g.finish();
    // Where the difference goes: the store's answer alone, and the reads
    // the assessor made before it had `Store::risk_facts`.
    let mut g = c.benchmark_group("risk_reads");
    // The unit: the cheapest read there is (one row by primary key),
    // which pays the same pool and driver round trip as any statement.
    let some_id = rt
        .block_on(reads.history(&HistoryQuery::of_requester(principal(0).id.as_str(), 1)))
        .unwrap()[0]
        .id;
    g.bench_function("get_one_record", |b| {
        b.to_async(&rt)
            .iter(|| async { assert!(reads.get(some_id).await.unwrap().is_some()) })
    });
    g.bench_function("risk_facts", |b| {
        b.to_async(&rt).iter(|| facts(&*reads, &next))
    });
    g.bench_function("history_lookups_before", |b| {
        b.to_async(&rt).iter(|| history_before(&*reads, &next))
    });
    g.finish();

    // The two submits alternated, one of each per round, so that a load
    // that drifts while criterion measures one case and then the other
    // (other builds on a shared machine) weighs on both alike.
    let rounds: u32 = std::env::var("JIT_RISK_BENCH_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let (mut without, mut with) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    rt.block_on(async {
        for _ in 0..rounds {
            let t = Instant::now();
            submit(&plain, &next).await;
            without += t.elapsed();
            let t = Instant::now();
            submit(&assessed, &next).await;
            with += t.elapsed();
        }
    });
    println!(
        "interleaved, {rounds} rounds: without {:.3} ms, with {:.3} ms per submit: ratio {:.2}",
        without.as_secs_f64() * 1e3 / f64::from(rounds),
        with.as_secs_f64() * 1e3 / f64::from(rounds),
        with.as_secs_f64() / without.as_secs_f64()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
