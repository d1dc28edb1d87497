//! Every store passes the conformance suite; SQLite-specific durability,
//! migration and locking behaviour on top.

// The suite lives behind `testing`; run with `--all-features`.
#![cfg(all(feature = "testing", feature = "sqlite"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;

use chrono::Utc;
use jit_core::audit::{self, AuditEvent, AuditKind};
use jit_core::store::sqlite::SCHEMA_VERSION;
use jit_core::store::{audit_all, MemoryStore, SqliteStore, Store};
use jit_core::testing::store::{self as conformance, sample_record};
use jit_core::{Error, State};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};

/// A plain connection to the file, as another tool or process would open it.
async fn raw(path: &Path) -> SqliteConnection {
    SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(path))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_conforms() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    conformance::run_all(store.clone()).await;
    // The checks must not depend on an empty store.
    conformance::run_all(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_file_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("jit.db")).await.unwrap();
    conformance::run_all(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_memory_store_conforms() {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::connect("sqlite::memory:").await.unwrap());
    conformance::run_all(store.clone()).await;
    conformance::run_all(store).await;
}

#[tokio::test]
async fn sqlite_memory_urls_are_separate_databases() {
    let a = SqliteStore::connect("sqlite::memory:").await.unwrap();
    let b = SqliteStore::connect("sqlite::memory:").await.unwrap();
    let r = sample_record("alice", "db-admin", State::Pending, Utc::now());
    a.insert(&r, &[]).await.unwrap();
    assert!(a.get(r.id).await.unwrap().is_some());
    assert!(b.get(r.id).await.unwrap().is_none());
}

#[tokio::test]
async fn sqlite_data_survives_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jit.db");
    let r = sample_record("alice", "db-admin", State::Active, Utc::now());
    let ev = AuditEvent::new(r.created_at, AuditKind::Issued, r.id, "alice", r.state);
    let written = {
        let store = SqliteStore::open(&path).await.unwrap();
        let w = store.insert(&r, &[ev.clone(), ev.clone()]).await.unwrap();
        store.close().await;
        w
    };

    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.get(r.id).await.unwrap(), Some(r.clone()));
    let chain = audit_all(&store).await.unwrap();
    assert_eq!(chain, written);
    audit::verify(&chain).unwrap();
    // New appends continue the old chain.
    let mut next = r.clone();
    next.version = 2;
    next.state = State::Revoking;
    let more = store.update(1, &next, &[ev]).await.unwrap();
    assert_eq!(more[0].seq, 3);
    assert_eq!(more[0].prev_hash, written[1].hash);
    assert_eq!(
        audit::verify(&audit_all(&store).await.unwrap())
            .unwrap()
            .records,
        3
    );
}

#[tokio::test]
async fn sqlite_migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jit.db");
    let r = sample_record("alice", "db-admin", State::Pending, Utc::now());
    {
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
        store.insert(&r, &[]).await.unwrap();
        store.close().await;
    }
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
    assert_eq!(store.get(r.id).await.unwrap(), Some(r));
    // Opened through a URL as well: still one row per migration.
    let again = SqliteStore::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    assert_eq!(again.schema_version().await.unwrap(), SCHEMA_VERSION);
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM schema_migrations")
        .fetch_one(&mut raw(&path).await)
        .await
        .unwrap();
    // One row per migration this build knows: versions 1 and 5 (2 to 4
    // come from other branches and are renumbered when they merge).
    assert_eq!(rows, 2);
}

#[tokio::test]
async fn sqlite_refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jit.db");
    SqliteStore::open(&path).await.unwrap().close().await;
    let future = SCHEMA_VERSION + 7;
    sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES (?, 'later')")
        .bind(future)
        .execute(&mut raw(&path).await)
        .await
        .unwrap();

    let err = SqliteStore::open(&path).await.unwrap_err();
    match &err {
        Error::Store(msg) => {
            assert!(msg.contains(&future.to_string()), "{msg}");
            assert!(msg.contains(&SCHEMA_VERSION.to_string()), "{msg}");
        }
        other => panic!("expected a store error, got {other:?}"),
    }
}

#[tokio::test]
async fn sqlite_file_is_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jit.db");
    let _store = SqliteStore::open(&path).await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut raw(&path).await)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

/// Two stores on one file stand for two broker processes: the in-process
/// writer queue does not cover them, `BEGIN IMMEDIATE` must.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_two_handles_on_one_file_serialize_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jit.db");
    let a: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
    let b: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());

    let r = sample_record("alice", "db-admin", State::Pending, Utc::now());
    let ev = |actor: &str| {
        AuditEvent::new(
            Utc::now(),
            AuditKind::Approved,
            r.id,
            actor,
            State::Approved,
        )
    };
    a.insert(&r, &[ev("alice")]).await.unwrap();

    let mut tasks = Vec::new();
    for i in 0..16 {
        for store in [&a, &b] {
            let store = store.clone();
            let mut next = r.clone();
            next.version = 2;
            next.state = State::Approved;
            next.note = Some(format!("winner {i}"));
            let e = ev(&format!("approver-{i}"));
            tasks.push(tokio::spawn(
                async move { store.update(1, &next, &[e]).await },
            ));
        }
        // Interleaved inserts from both handles extend the same chain.
        for store in [&a, &b] {
            let store = store.clone();
            let other = sample_record("bob", "db-admin", State::Pending, Utc::now());
            let e = AuditEvent::new(
                Utc::now(),
                AuditKind::Requested,
                other.id,
                "bob",
                State::Pending,
            );
            tasks.push(tokio::spawn(
                async move { store.insert(&other, &[e]).await },
            ));
        }
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(Error::Conflict {
                request,
                expected: 1,
            }) if request == r.id => {}
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!(wins, 1 + 32, "one update and every insert must succeed");
    let chain = audit_all(&*b).await.unwrap();
    assert_eq!(chain.len(), 1 + 1 + 32);
    audit::verify(&chain).unwrap();
}

#[tokio::test]
async fn sqlite_debug_is_small() {
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    let shown = format!("{store:?}");
    assert_eq!(shown, r#"SqliteStore { location: "sqlite::memory:", .. }"#);
}
