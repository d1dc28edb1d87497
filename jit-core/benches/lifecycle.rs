//! Full auto-approved lifecycle: submit → decide → issue a local token → audit
//! → revoke, on the memory and SQLite stores, against a baseline measured in
//! the same run: raw SQLite (same pragmas) doing the same number of durable
//! commits (5 per lifecycle: insert, issuing, active, revoking, revoked).
//!
//! `cargo bench -p jit-core --bench lifecycle`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use jit_core::local::{LocalKey, LocalProvider};
use jit_core::store::SqliteStore;
use jit_core::{AccessRequest, Broker, CataloguePolicy, MemoryStore, Principal, State, Store};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};

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

fn broker(store: Arc<dyn Store>) -> Broker {
    Broker::builder(
        store,
        Arc::new(CataloguePolicy::from_toml_str(CATALOGUE).unwrap()),
    )
    .provider(Arc::new(LocalProvider::new(LocalKey::generate(), "bench")))
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

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let who = Principal::new("alice").unwrap().with_group("eng");
    let dir = tempfile::tempdir().unwrap();

    let mut g = c.benchmark_group("lifecycle");

    let mem = broker(Arc::new(MemoryStore::new()));
    g.bench_function("memory_store", |b| {
        b.to_async(&rt).iter(|| lifecycle(&mem, &who))
    });

    let sqlite = rt
        .block_on(SqliteStore::open(dir.path().join("bench.db")))
        .unwrap();
    let sq = broker(Arc::new(sqlite));
    g.bench_function("sqlite_store", |b| {
        b.to_async(&rt).iter(|| lifecycle(&sq, &who))
    });

    // Baseline: the same number of durable commits, raw, with the store's pragmas.
    let mut conn = rt
        .block_on(
            SqliteConnectOptions::new()
                .filename(dir.path().join("raw.db"))
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .connect(),
        )
        .unwrap();
    rt.block_on(
        sqlx::query("CREATE TABLE t (id TEXT PRIMARY KEY, version INTEGER, body TEXT)")
            .execute(&mut conn),
    )
    .unwrap();
    let body = "x".repeat(1500); // about the size of a stored record
    let mut n = 0u64;
    g.bench_function("raw_sqlite_5_commits", |b| {
        b.iter(|| {
            rt.block_on(async {
                n += 1;
                let id = n.to_string();
                for v in 0..COMMITS_PER_LIFECYCLE {
                    let mut tx = conn.begin().await.unwrap();
                    if v == 0 {
                        sqlx::query("INSERT INTO t VALUES (?, 0, ?)")
                            .bind(&id)
                            .bind(&body)
                            .execute(&mut *tx)
                            .await
                            .unwrap();
                    } else {
                        sqlx::query("UPDATE t SET version = ?, body = ? WHERE id = ?")
                            .bind(v as i64)
                            .bind(&body)
                            .bind(&id)
                            .execute(&mut *tx)
                            .await
                            .unwrap();
                    }
                    tx.commit().await.unwrap();
                }
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
