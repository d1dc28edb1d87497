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
use jit_core::store::{audit_all, MemoryStore, RiskFactsQuery, SqliteStore, Store};
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

/// Counts stay exact through every transition, failed writes, two
/// writers at once and a prune (each store on its own: the check prunes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_counts_stay_exact() {
    conformance::check_counts_exact(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_counts_stay_exact() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("jit.db")).await.unwrap();
    conformance::check_counts_exact(Arc::new(store)).await;
}

/// Risk review's aggregates stay exact under concurrent inserts of one
/// requester, failed writes, updates and a prune, and survive a restart
/// (each store on its own: the check prunes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_risk_aggregates_stay_exact() {
    conformance::check_risk_aggregates(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_risk_aggregates_stay_exact_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jit.db");
    let store = Arc::new(SqliteStore::open(&path).await.unwrap());
    conformance::check_risk_aggregates(store.clone()).await;
    // The facts of what the check left, after closing and opening the file.
    let queries: Vec<RiskFactsQuery> = store
        .list(&jit_core::ListFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|r| RiskFactsQuery {
            groups: r.requester.groups.clone(),
            sources: vec![("ip".into(), "10.1.0.1".into())],
            since: r.created_at,
            ..RiskFactsQuery::new(r.requester.id.as_str(), &r.request.entitlement)
        })
        .collect();
    assert!(!queries.is_empty());
    let mut before = Vec::new();
    for q in &queries {
        before.push(store.risk_facts(q).await.unwrap());
    }
    store.close().await;
    drop(store);
    let store = SqliteStore::open(&path).await.unwrap();
    for (q, facts) in queries.iter().zip(&before) {
        assert_eq!(&store.risk_facts(q).await.unwrap(), facts, "{q:?}");
    }
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
    // Versions may have gaps: one row per version, none twice.
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT version) FROM schema_migrations")
            .fetch_one(&mut raw(&path).await)
            .await
            .unwrap();
    assert_eq!(rows, distinct);
}

/// Schema version 1 stored the requester folded (`Alice` as `alice`), so a
/// case variant listed someone else's requests. Migration 2 takes the exact
/// subject back from each record.
#[tokio::test]
async fn sqlite_migration_2_restores_exact_requesters() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jit.db");
    let r = sample_record("Alice", "db-admin", State::Pending, Utc::now());
    // A database exactly as version 1 wrote it (its schema is frozen).
    let mut conn = SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true),
    )
    .await
    .unwrap();
    for sql in [
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)",
        "INSERT INTO schema_migrations VALUES (1, 'then')",
        "CREATE TABLE requests (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,
            version INTEGER NOT NULL CHECK (version > 0), state TEXT NOT NULL,
            requester TEXT NOT NULL, entitlement TEXT NOT NULL, created_at TEXT NOT NULL,
            due_at TEXT, body TEXT NOT NULL) STRICT",
        "CREATE INDEX requests_state_due ON requests (state, due_at)",
        "CREATE INDEX requests_requester_created ON requests (requester, created_at)",
        "CREATE INDEX requests_created ON requests (created_at)",
        "CREATE TABLE audit (seq INTEGER PRIMARY KEY CHECK (seq > 0), hash TEXT NOT NULL,
            body TEXT NOT NULL) STRICT",
    ] {
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
    sqlx::query(
        "INSERT INTO requests (id, version, state, requester, entitlement, created_at, body)
         VALUES (?, 1, 'pending', 'alice', 'db-admin', ?, ?)",
    )
    .bind(r.id.to_string())
    .bind(r.created_at.to_rfc3339())
    .bind(serde_json::to_string(&r).unwrap())
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();

    let store = SqliteStore::open(&path).await.unwrap();
    let by = |who: &str| jit_core::ListFilter {
        requester: Some(who.into()),
        ..Default::default()
    };
    assert!(store.list(&by("alice")).await.unwrap().is_empty());
    assert_eq!(store.list(&by("Alice")).await.unwrap(), vec![r]);
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

/// The database holds every request and the audit chain: a file the store
/// creates (through a path or a URL), and the WAL files beside it, are the
/// owner's only, whatever the umask lets other files be.
#[cfg(unix)]
#[tokio::test]
async fn sqlite_creates_its_files_for_the_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let by_path = dir.path().join("by-path.db");
    let by_url = dir.path().join("by-url.db");
    let a = SqliteStore::open(&by_path).await.unwrap();
    let b = SqliteStore::connect(&format!("sqlite://{}", by_url.display()))
        .await
        .unwrap();
    for (store, path) in [(&a, &by_path), (&b, &by_url)] {
        let r = sample_record("alice", "db-admin", State::Pending, Utc::now());
        store.insert(&r, &[]).await.unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let file = format!("{}{suffix}", path.display());
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "`{file}` has mode {mode:o}");
        }
    }
    a.close().await;
    b.close().await;
    // An existing file keeps the mode its owner gave it.
    let shared = dir.path().join("shared.db");
    std::fs::write(&shared, b"").unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o640)).unwrap();
    SqliteStore::open(&shared).await.unwrap().close().await;
    let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
}

/// A store that implements only the required methods, so the trait's
/// default `count_by_state` (which lists each state in full) is what runs.
#[derive(Debug, Default)]
struct RequiredOnly(MemoryStore);

#[async_trait::async_trait]
impl Store for RequiredOnly {
    async fn insert(
        &self,
        record: &jit_core::RequestRecord,
        events: &[AuditEvent],
    ) -> jit_core::Result<Vec<jit_core::AuditRecord>> {
        self.0.insert(record, events).await
    }
    async fn update(
        &self,
        expected_version: u64,
        record: &jit_core::RequestRecord,
        events: &[AuditEvent],
    ) -> jit_core::Result<Vec<jit_core::AuditRecord>> {
        self.0.update(expected_version, record, events).await
    }
    async fn get(
        &self,
        id: jit_core::RequestId,
    ) -> jit_core::Result<Option<jit_core::RequestRecord>> {
        self.0.get(id).await
    }
    async fn list(
        &self,
        filter: &jit_core::ListFilter,
    ) -> jit_core::Result<Vec<jit_core::RequestRecord>> {
        self.0.list(filter).await
    }
    async fn due(
        &self,
        states: &[State],
        now: chrono::DateTime<Utc>,
        limit: usize,
    ) -> jit_core::Result<Vec<jit_core::RequestRecord>> {
        self.0.due(states, now, limit).await
    }
    async fn audit(
        &self,
        from_seq: u64,
        limit: usize,
    ) -> jit_core::Result<Vec<jit_core::AuditRecord>> {
        self.0.audit(from_seq, limit).await
    }
}

#[tokio::test]
async fn the_default_count_by_state_counts_everything() {
    conformance::check_count_by_state(&RequiredOnly::default()).await;
}

/// The trait's default `risk_facts`, on top of the default `history`
/// (which lists and filters), gives the facts the conformance suite expects.
#[tokio::test]
async fn the_default_risk_facts_read_the_history() {
    conformance::check_risk_facts(&RequiredOnly::default()).await;
}
