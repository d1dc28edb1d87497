//! Full auto-approved lifecycle on PostgreSQL (submit → decide → issue a
//! local token → audit → revoke): one broker, one broker running two tasks,
//! and two broker replicas (two pools) splitting the work concurrently,
//! against a baseline measured in the same run on the same server: raw
//! PostgreSQL doing the same number of commits (5 per lifecycle: insert,
//! issuing, active, revoking, revoked), from one connection and from two.
//!
//! The server is found like the tests find it (`JIT_TEST_POSTGRES_URL`,
//! else 127.0.0.1:5432, else a throwaway cluster); everything runs in a
//! fresh schema that is dropped at the end. Server settings are the
//! server's own (the local one: `fsync` and `synchronous_commit` on).
//!
//! `cargo bench -p jit-core --features postgres,testing --bench postgres`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use jit_core::local::{LocalKey, LocalProvider};
use jit_core::testing::postgres::TestSchema;
use jit_core::{AccessRequest, Broker, CataloguePolicy, Principal, State, Store};
use sqlx::{Connection, PgConnection};

const CATALOGUE: &str = r#"
[[entitlements]]
id = "bench"
provider = "local"
max_duration = "1h"
target = { audience = "bench" }
[entitlements.eligible]
groups = ["eng"]
[entitlements.auto_approve]
max_duration = "1h"
"#;

/// Durable commits one lifecycle makes on a SQL store.
const COMMITS_PER_LIFECYCLE: usize = 5;

fn broker(store: Arc<dyn Store>, replica: &str) -> Broker {
    Broker::builder(
        store,
        Arc::new(CataloguePolicy::from_toml_str(CATALOGUE).unwrap()),
    )
    .provider(Arc::new(LocalProvider::new(LocalKey::generate(), "bench")))
    .replica_id(replica)
    .build()
    .unwrap()
}

async fn lifecycle(b: &Broker, who: &Principal) {
    let out = b
        .submit(
            who,
            AccessRequest::new("bench", "10m".parse().unwrap(), "benchmark"),
        )
        .await
        .unwrap();
    assert!(out.credentials.is_some());
    let r = b.revoke(who, out.record.id, "done").await.unwrap();
    assert_eq!(r.state, State::Revoked);
}

/// `iters` lifecycles split evenly over `brokers`, each share run by its own task.
async fn split(brokers: &[Broker], who: &Principal, iters: u64) -> Duration {
    let n = brokers.len() as u64;
    let start = Instant::now();
    let tasks: Vec<_> = brokers
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let (b, who) = (b.clone(), who.clone());
            let share = iters / n + u64::from((i as u64) < iters % n);
            tokio::spawn(async move {
                for _ in 0..share {
                    lifecycle(&b, &who).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

/// One raw "lifecycle": an insert and four updates, each its own transaction.
async fn raw_commits(conn: &mut PgConnection, table: &str, id: &str, body: &str) {
    for v in 0..COMMITS_PER_LIFECYCLE {
        let mut tx = conn.begin().await.unwrap();
        if v == 0 {
            sqlx::query(&format!(
                "INSERT INTO {table} (id, version, body) VALUES ($1, 0, $2)"
            ))
            .bind(id)
            .bind(body)
            .execute(&mut *tx)
            .await
            .unwrap();
        } else {
            sqlx::query(&format!(
                "UPDATE {table} SET version = $1, body = $2 WHERE id = $3"
            ))
            .bind(v as i64)
            .bind(body)
            .bind(id)
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
    }
}

/// `share` raw lifecycles with ids `base..base + share`.
async fn raw_share(conn: &mut PgConnection, table: &str, body: &str, base: u64, share: u64) {
    for i in 0..share {
        raw_commits(conn, table, &format!("p{}", base + i), body).await;
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let who = Principal::new("alice").unwrap().with_group("eng");
    let schema = rt.block_on(TestSchema::new());
    let pool = |_: ()| -> Arc<dyn Store> {
        Arc::new(
            rt.block_on(schema.builder().max_connections(4).connect())
                .unwrap(),
        )
    };
    let one = broker(pool(()), "solo");
    let replicas = [broker(pool(()), "replica-a"), broker(pool(()), "replica-b")];

    let mut g = c.benchmark_group("postgres_lifecycle");
    // Each iteration takes milliseconds: flat sampling keeps the run short.
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_secs(3))
        .measurement_time(Duration::from_secs(15))
        .throughput(Throughput::Elements(1));

    g.bench_function("1_broker", |b| {
        b.to_async(&rt).iter(|| lifecycle(&one, &who))
    });
    let twice = [one.clone(), one.clone()];
    g.bench_function("1_broker_2_tasks", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| split(&twice, &who, iters))
    });
    g.bench_function("2_replicas", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| split(&replicas, &who, iters))
    });

    // Baseline: the same number of commits, raw, on the same server.
    let table = format!("{}.raw", schema.name());
    let body = "x".repeat(1500); // about the size of a stored record
    let mut conns: Vec<PgConnection> = (0..2)
        .map(|_| rt.block_on(PgConnection::connect(schema.url())).unwrap())
        .collect();
    rt.block_on(
        sqlx::query(&format!(
            "CREATE TABLE {table} (id TEXT PRIMARY KEY, version BIGINT, body TEXT)"
        ))
        .execute(&mut conns[0]),
    )
    .unwrap();
    let mut n = 0u64;
    g.bench_function("raw_postgres_5_commits", |b| {
        b.iter(|| {
            n += 1;
            rt.block_on(raw_commits(&mut conns[0], &table, &format!("s{n}"), &body))
        })
    });
    g.bench_function("raw_postgres_5_commits_2_connections", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            rt.block_on(async {
                let (first, second) = conns.split_at_mut(1);
                let base = n;
                n += 2 * iters; // ids for both halves
                tokio::join!(
                    raw_share(&mut first[0], &table, &body, base, iters / 2 + iters % 2),
                    raw_share(&mut second[0], &table, &body, base + iters, iters / 2)
                );
            });
            start.elapsed()
        })
    });
    g.finish();

    rt.block_on(schema.drop_schema());
}

criterion_group!(benches, bench);
criterion_main!(benches);
