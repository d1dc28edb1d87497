//! The PostgreSQL store against a real server (never a mock): the store
//! conformance suite, several replicas racing on one database, two reapers
//! sharing 5,000 expiries, a replica dying with claimed work, and store URLs.
//!
//! The server is found by `jit_core::testing::postgres` (`JIT_TEST_POSTGRES_URL`,
//! else 127.0.0.1:5432, else a throwaway cluster); without one these tests
//! fail, naming what to install. Each test works in a schema of its own.

#![cfg(all(feature = "testing", feature = "postgres"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use common::*;
use jit_core::audit::{self, AuditEvent, AuditKind};
use jit_core::reaper::Reaper;
use jit_core::store::postgres::SCHEMA_VERSION;
use jit_core::store::{audit_all, Claim, PostgresStore, RiskFactsQuery, Store};
use jit_core::testing::postgres::{self as pg, TestSchema};
use jit_core::testing::store::{self as conformance, sample_record};
use jit_core::testing::{FaultyStore, MemorySink, TestProvider};
use jit_core::{
    BrokerBuilder, Capabilities, CataloguePolicy, Clock, ConfigError, Entitlement, Error,
    GrantSpec, Issued, IssuedGrant, ListFilter, ManualClock, Provider, State,
};
use sqlx::{Connection, PgConnection};

async fn raw() -> PgConnection {
    PgConnection::connect(pg::server_url().await).await.unwrap()
}

// ---- the conformance suite, each check in a fresh schema ----

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $check() {
            let schema = TestSchema::new().await;
            let store = schema.store().await;
            conformance::$check(&store).await;
            store.close().await;
            schema.drop_schema().await;
        }
    )*};
}

mod conforms {
    use super::*;

    conformance!(
        check_insert_get_roundtrip,
        check_every_state_roundtrips,
        check_entitlement_copy_roundtrips,
        check_duplicate_insert,
        check_insert_requires_version_one,
        check_update_cas,
        check_audit_chain,
        check_audit_paging,
        check_list,
        check_list_by_entitlements,
        check_count_by_state,
        check_history,
        check_risk_facts,
        check_due,
        check_live_revocations,
        check_claims,
        check_leases,
    );

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn check_concurrent_lease_acquires() {
        let schema = TestSchema::new().await;
        let store: Arc<dyn Store> = Arc::new(schema.store().await);
        conformance::check_concurrent_lease_acquires(store).await;
        schema.drop_schema().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn check_concurrent_updates() {
        let schema = TestSchema::new().await;
        let store: Arc<dyn Store> = Arc::new(schema.store().await);
        conformance::check_concurrent_updates(store).await;
        schema.drop_schema().await;
    }

    /// Counts stay exact through every transition, failed writes, two
    /// writers at once (on two pooled connections, so two counter shards)
    /// and a prune.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn counts_stay_exact() {
        let schema = TestSchema::new().await;
        let store: Arc<dyn Store> = Arc::new(schema.store().await);
        conformance::check_counts_exact(store).await;
        schema.drop_schema().await;
    }

    /// Risk review's aggregates stay exact under eight writers inserting
    /// for one requester at once (upserts on the same rows, from several
    /// pooled connections), failed writes, updates and a prune.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn risk_aggregates_stay_exact() {
        let schema = TestSchema::new().await;
        let store: Arc<dyn Store> = Arc::new(schema.store().await);
        conformance::check_risk_aggregates(store).await;
        schema.drop_schema().await;
    }

    /// The whole suite twice on one schema: the checks tolerate each other's data.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn run_all_twice() {
        let schema = TestSchema::new().await;
        let store: Arc<dyn Store> = Arc::new(schema.store().await);
        conformance::run_all(store.clone()).await;
        conformance::run_all(store).await;
        schema.drop_schema().await;
    }
}

// ---- schema, migrations, errors ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_starting_at_once_migrate_once() {
    let schema = TestSchema::new().await;
    let opens: Vec<_> = (0..8)
        .map(|_| {
            let b = schema.builder().max_connections(2);
            tokio::spawn(async move { b.connect().await })
        })
        .collect();
    let mut stores = Vec::new();
    for o in opens {
        stores.push(o.await.unwrap().unwrap());
    }
    for s in &stores {
        assert_eq!(s.schema_version().await.unwrap(), SCHEMA_VERSION);
        assert_eq!(s.schema(), Some(schema.name()));
    }
    // Each migration recorded once (versions may have gaps), the last being current.
    let (rows, distinct, last): (i64, i64, Option<i64>) = sqlx::query_as(&format!(
        "SELECT COUNT(*), COUNT(DISTINCT version), MAX(version) FROM {}.schema_migrations",
        schema.name()
    ))
    .fetch_one(&mut raw().await)
    .await
    .unwrap();
    assert_eq!(rows, distinct);
    assert_eq!(last, Some(SCHEMA_VERSION));
    // Reopening later changes nothing and keeps the data.
    let r = sample_record("alice", "db-admin", State::Pending, Utc::now());
    stores[0].insert(&r, &[]).await.unwrap();
    let again = schema.store().await;
    assert_eq!(again.get(r.id).await.unwrap(), Some(r));
    for s in stores {
        s.close().await;
    }
    schema.drop_schema().await;
}

/// A database written before version 12 gets its counts back-filled from
/// the rows it holds, and the triggers keep them from then on, on every
/// replica's connections (two stores, two pools).
#[tokio::test]
async fn migration_12_backfills_the_counts() {
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    for state in [
        State::Pending,
        State::Pending,
        State::Active,
        State::Revoked,
    ] {
        let r = sample_record("alice", "db-admin", state, Utc::now());
        store.insert(&r, &[]).await.unwrap();
    }
    store.close().await;
    // As a version 11 database would hold them.
    let mut conn = raw().await;
    for stmt in [
        "DROP TABLE {s}.state_counts",
        "DROP TRIGGER requests_count_insert ON {s}.requests",
        "DROP TRIGGER requests_count_update ON {s}.requests",
        "DROP TRIGGER requests_count_delete ON {s}.requests",
        "DROP FUNCTION {s}.jit_count_insert()",
        "DROP FUNCTION {s}.jit_count_update()",
        "DROP FUNCTION {s}.jit_count_delete()",
        "DROP FUNCTION {s}.jit_count_add(TEXT, BIGINT)",
        // Nor the later versions' tables.
        "DROP TABLE {s}.risk_hours, {s}.risk_durations, {s}.risk_sources, {s}.risk_peers",
        "DELETE FROM {s}.schema_migrations WHERE version >= 12",
    ] {
        sqlx::query(&stmt.replace("{s}", schema.name()))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let (a, b) = (schema.store().await, schema.store().await);
    assert_eq!(a.schema_version().await.unwrap(), SCHEMA_VERSION);
    let count =
        |counts: &[(State, u64)], s: State| counts.iter().find(|(c, _)| *c == s).map(|(_, n)| *n);
    let counts = b.count_by_state().await.unwrap();
    assert_eq!(count(&counts, State::Pending), Some(2));
    assert_eq!(count(&counts, State::Active), Some(1));
    assert_eq!(count(&counts, State::Revoked), Some(1));
    assert_eq!(count(&counts, State::Approved), Some(0));
    let r = sample_record("bob", "db-admin", State::Pending, Utc::now());
    a.insert(&r, &[]).await.unwrap();
    let mut next = r.clone();
    next.version = 2;
    next.state = State::Cancelled;
    b.update(1, &next, &[]).await.unwrap();
    let counts = a.count_by_state().await.unwrap();
    assert_eq!(count(&counts, State::Pending), Some(2));
    assert_eq!(count(&counts, State::Cancelled), Some(1));
    a.close().await;
    b.close().await;
    schema.drop_schema().await;
}

/// A database written before version 13 gets risk review's aggregates
/// back-filled from the requests it holds: the same facts as inserting
/// them gave, and inserts after it keep counting.
#[tokio::test]
async fn migration_13_backfills_the_risk_aggregates() {
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    let t0 = Utc::now() - TimeDelta::days(1);
    let mut made = Vec::new();
    for (i, (who, ent, ip)) in [
        ("alice", "db", "10.0.0.1"),
        ("alice", "db", "10.0.0.2"),
        ("alice", "web", "10.0.0.1"),
        ("bob", "db", "10.0.0.3"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = sample_record(
            who,
            ent,
            State::Pending,
            t0 + TimeDelta::hours(i as i64 * 5),
        );
        r.request.context.insert("ip".into(), ip.into());
        r.request.duration = jit_core::GrantDuration::from_secs_i64(600 * (i as i64 + 1)).unwrap();
        store.insert(&r, &[]).await.unwrap();
        made.push(r);
    }
    let queries: Vec<RiskFactsQuery> = [("alice", "db"), ("alice", "web"), ("bob", "db")]
        .iter()
        .map(|(who, ent)| RiskFactsQuery {
            groups: ["engineering".to_string()].into(),
            sources: vec![("ip".into(), "10.0.0.1".into())],
            since: t0 + TimeDelta::hours(5),
            ..RiskFactsQuery::new(who, ent)
        })
        .collect();
    let mut inserted = Vec::new();
    for q in &queries {
        inserted.push(store.risk_facts(q).await.unwrap());
    }
    assert_eq!(inserted[0].entitlement_requests, 2, "{:?}", inserted[0]);
    store.close().await;
    // As a version 12 database would hold them.
    let mut conn = raw().await;
    for stmt in [
        "DROP TABLE {s}.risk_hours, {s}.risk_durations, {s}.risk_sources, {s}.risk_peers",
        "DELETE FROM {s}.schema_migrations WHERE version >= 13",
    ] {
        sqlx::query(&stmt.replace("{s}", schema.name()))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let store = schema.store().await;
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
    for (q, before) in queries.iter().zip(&inserted) {
        assert_eq!(&store.risk_facts(q).await.unwrap(), before, "{q:?}");
    }
    let mut late = made[3].clone();
    late.id = jit_core::RequestId::new();
    store.insert(&late, &[]).await.unwrap();
    let bob = store.risk_facts(&queries[2]).await.unwrap();
    assert_eq!(bob.entitlement_requests, 2, "{bob:?}");
    store.close().await;
    schema.drop_schema().await;
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let schema = TestSchema::new().await;
    schema.store().await.close().await;
    let future = SCHEMA_VERSION + 7;
    sqlx::query(&format!(
        "INSERT INTO {}.schema_migrations (version) VALUES ($1)",
        schema.name()
    ))
    .bind(future)
    .execute(&mut raw().await)
    .await
    .unwrap();
    let err = schema.builder().connect().await.unwrap_err();
    match &err {
        Error::Store(msg) => {
            assert!(msg.contains(&future.to_string()), "{msg}");
            assert!(msg.contains("upgrade jit-core"), "{msg}");
        }
        other => panic!("expected a store error, got {other:?}"),
    }
    schema.drop_schema().await;
}

#[tokio::test]
async fn schemas_are_isolated_and_tables_stay_in_their_schema() {
    let (one, two) = (TestSchema::new().await, TestSchema::new().await);
    let (a, b) = (one.store().await, two.store().await);
    let r = sample_record("alice", "db-admin", State::Pending, Utc::now());
    let ev = AuditEvent::new(r.created_at, AuditKind::Requested, r.id, "alice", r.state);
    a.insert(&r, &[ev]).await.unwrap();
    assert_eq!(a.get(r.id).await.unwrap(), Some(r.clone()));
    assert_eq!(b.get(r.id).await.unwrap(), None);
    assert!(audit_all(&b).await.unwrap().is_empty());
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::TEXT FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
    )
    .bind(one.name())
    .fetch_all(&mut raw().await)
    .await
    .unwrap();
    assert_eq!(
        tables,
        [
            "audit",
            "audit_anchor",
            "audit_head",
            "leases",
            "requests",
            "risk_durations",
            "risk_hours",
            "risk_peers",
            "risk_sources",
            "schema_migrations",
            "state_counts"
        ]
    );
    // The count triggers' functions live beside their table too.
    let functions: Vec<String> = sqlx::query_scalar(
        "SELECT routine_name::TEXT FROM information_schema.routines WHERE routine_schema = $1 ORDER BY 1",
    )
    .bind(one.name())
    .fetch_all(&mut raw().await)
    .await
    .unwrap();
    assert_eq!(
        functions,
        [
            "jit_count_add",
            "jit_count_delete",
            "jit_count_insert",
            "jit_count_update"
        ]
    );
    a.close().await;
    b.close().await;
    one.drop_schema().await;
    two.drop_schema().await;
}

#[tokio::test]
async fn bad_options_and_unreachable_servers_are_typed_errors_without_secrets() {
    let err = PostgresStore::builder("postgres://jit@127.0.0.1:5432/test")
        .schema("Bad-Name")
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Store(m) if m.contains("`Bad-Name`")),
        "{err:?}"
    );

    // Port 1: nothing listens; a refused connection is transient.
    let builder = PostgresStore::builder("postgres://jit:hunter2@127.0.0.1:1/test")
        .acquire_timeout(Duration::from_secs(3));
    let shown = format!("{builder:?}");
    assert!(shown.contains("jit:***@127.0.0.1:1"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
    let err = builder.connect().await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(!err.to_string().contains("hunter2"), "{err}");

    let err = PostgresStore::connect("postgres://jit@127.0.0.1:5432/test?sslmode=bogus")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Store(_)), "{err:?}");
}

#[tokio::test]
async fn debug_shows_where_not_secrets() {
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    let shown = format!("{store:?}");
    assert!(shown.starts_with("PostgresStore { location: "), "{shown}");
    assert!(shown.contains(schema.name()), "{shown}");
    store.close().await;
    schema.drop_schema().await;
}

/// Two pools on one schema stand for two replicas: their interleaved writes
/// form one chain, and exactly one of each racing CAS wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_write_one_chain() {
    let schema = TestSchema::new().await;
    let a: Arc<dyn Store> = Arc::new(schema.store().await);
    let b: Arc<dyn Store> = Arc::new(schema.store().await);
    let mut targets = Vec::new();
    for i in 0..8 {
        let r = sample_record(&format!("user{i}"), "db-admin", State::Pending, Utc::now());
        let ev = AuditEvent::new(Utc::now(), AuditKind::Requested, r.id, "u", r.state);
        a.insert(&r, &[ev]).await.unwrap();
        targets.push(r);
    }
    let mut tasks = Vec::new();
    for r in &targets {
        for i in 0..8 {
            for shared in [&a, &b] {
                let store = shared.clone();
                let mut next = r.clone();
                next.version = 2;
                next.state = State::Approved;
                next.note = Some(format!("winner {i}"));
                let ev = AuditEvent::new(Utc::now(), AuditKind::Approved, r.id, "lead", next.state);
                tasks.push(tokio::spawn(async move {
                    store
                        .update(1, &next, &[ev.clone(), ev])
                        .await
                        .map(|_| true)
                }));
                let store2 = shared.clone();
                let other = sample_record("bob", "db-admin", State::Pending, Utc::now());
                let ev = AuditEvent::new(
                    Utc::now(),
                    AuditKind::Requested,
                    other.id,
                    "bob",
                    other.state,
                );
                tasks.push(tokio::spawn(async move {
                    store2.insert(&other, &[ev]).await.map(|_| false)
                }));
            }
        }
    }
    let (mut cas_wins, mut inserts) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(true) => cas_wins += 1,
            Ok(false) => inserts += 1,
            Err(Error::Conflict { expected: 1, .. }) => {}
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!(cas_wins, targets.len(), "one CAS winner per record");
    assert_eq!(inserts, targets.len() * 16);
    let chain = audit_all(&*b).await.unwrap();
    assert_eq!(chain.len(), targets.len() + 2 * targets.len() + inserts);
    let summary = audit::verify(&chain).unwrap();
    assert_eq!(summary.records, chain.len() as u64);
    let head: (i64, String) = sqlx::query_as(&format!(
        "SELECT seq, hash FROM {}.audit_head",
        schema.name()
    ))
    .fetch_one(&mut raw().await)
    .await
    .unwrap();
    assert_eq!(head.0, chain.len() as i64);
    assert_eq!(Some(&head.1), chain.last().map(|r| &r.hash));
    schema.drop_schema().await;
}

/// Eight claimers (two pools) drain 300 due records in small batches, doing
/// the work of each before the next claim: every record is claimed exactly
/// once (a second claim of a finished record would fail its update).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_never_overlap() {
    let schema = TestSchema::new().await;
    let a: Arc<dyn Store> = Arc::new(schema.store().await);
    let b: Arc<dyn Store> = Arc::new(schema.store().await);
    let now = Utc::now();
    let mut ids = Vec::new();
    for i in 0..300 {
        let mut r = sample_record("carl", "db-admin", State::Active, now - TimeDelta::hours(1));
        if let Some(g) = r.grant.as_mut() {
            g.ends_at = now - TimeDelta::seconds(i % 7);
        }
        a.insert(&r, &[]).await.unwrap();
        ids.push(r.id);
    }
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                let claim = Claim {
                    owner: format!("replica-{i}"),
                    now,
                    lease: Duration::from_secs(60),
                };
                let mut mine = Vec::new();
                loop {
                    let got = store
                        .claim_due(&[State::Active], now, 7, &claim)
                        .await
                        .unwrap();
                    if got.is_empty() {
                        return mine;
                    }
                    // Do the work, as a reaper would: the record is no longer due.
                    for r in got {
                        let mut done = r.clone();
                        done.version += 1;
                        done.state = State::Expired;
                        store.update(r.version, &done, &[]).await.unwrap();
                        mine.push(r.id);
                    }
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let n = all.len();
    all.sort_by_key(|id| id.to_string());
    all.dedup();
    assert_eq!(all.len(), n, "a record was claimed by two owners");
    assert_eq!(n, ids.len(), "every due record was claimed");
    schema.drop_schema().await;
}

// ---- brokers as replicas ----

struct Replica {
    broker: jit_core::Broker,
    manual: Arc<TestProvider>,
    store: Arc<dyn Store>,
}

fn replica(store: Arc<dyn Store>, clock: &ManualClock, id: &str) -> Replica {
    let provider = Arc::new(TestProvider::new("test"));
    let manual = Arc::new(TestProvider::new("manual-expiry").without_native_expiry());
    let sink = Arc::new(MemorySink::new());
    let broker = broker_with(store.clone(), &provider, &manual, clock, &sink, Some(id));
    Replica {
        broker,
        manual,
        store,
    }
}

/// Two brokers, two pools, one schema: 64 tasks split across them race
/// approve/deny/cancel/revoke on one request, 200 rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_brokers_race_on_one_database() {
    let schema = TestSchema::new().await;
    let clock = ManualClock::starting_now();
    // One provider for both: the same cloud behind both replicas.
    let provider = Arc::new(TestProvider::new("test"));
    let manual = Arc::new(TestProvider::new("manual-expiry").without_native_expiry());
    let sink = Arc::new(MemorySink::new());
    let mut brokers = Vec::new();
    for id in ["replica-a", "replica-b"] {
        let store = schema
            .builder()
            .max_connections(16)
            .connect()
            .await
            .unwrap();
        brokers.push(broker_with(
            Arc::new(store),
            &provider,
            &manual,
            &clock,
            &sink,
            Some(id),
        ));
    }
    race::run(&brokers, &provider, 200).await;
    schema.drop_schema().await;
}

/// Two reapers on one database, 5,000 grants (on a provider without native
/// expiry) ending at the same instant: every grant is revoked exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_reapers_revoke_each_of_5000_grants_once() {
    const GRANTS: usize = 5000;
    let schema = TestSchema::new().await;
    let clock = ManualClock::starting_now();
    // 25,000 commits: without waiting for each fsync (see `bulk_builder`).
    let a = replica(
        Arc::new(
            schema
                .bulk_builder()
                .max_connections(12)
                .connect()
                .await
                .unwrap(),
        ),
        &clock,
        "replica-a",
    );
    let b = replica(
        Arc::new(
            schema
                .bulk_builder()
                .max_connections(12)
                .connect()
                .await
                .unwrap(),
        ),
        &clock,
        "replica-b",
    );

    // Auto-approved and issued at once, from both replicas, all ending together.
    let creators: Vec<_> = (0..16)
        .map(|t| {
            let broker = if t % 2 == 0 {
                a.broker.clone()
            } else {
                b.broker.clone()
            };
            tokio::spawn(async move {
                for _ in 0..GRANTS / 16 + usize::from(t < GRANTS % 16) {
                    let out = broker
                        .submit(&user(&format!("worker{t}")), req("batch-job", "1h"))
                        .await
                        .unwrap();
                    assert_eq!(out.record.state, State::Active);
                }
            })
        })
        .collect();
    for c in creators {
        c.await.unwrap();
    }
    let filter = ListFilter {
        entitlement: Some("batch-job".into()),
        limit: GRANTS * 2,
        ..Default::default()
    };
    assert_eq!(a.broker.list(&filter).await.unwrap().len(), GRANTS);
    assert_eq!(a.manual.revoke_calls() + b.manual.revoke_calls(), 0);

    clock.advance(TimeDelta::hours(1) + TimeDelta::seconds(1));
    let reapers: Vec<_> = [&a, &b]
        .into_iter()
        .map(|r| {
            let mut reaper = Reaper::new(r.broker.clone()).batch(500);
            let store = r.store.clone();
            let clock = clock.clone();
            tokio::spawn(async move {
                let mut expired = 0;
                loop {
                    let report = reaper.tick().await.unwrap();
                    expired += report.expired;
                    let left = store
                        .due(
                            &[State::Active, State::Revoking, State::RevocationFailed],
                            clock.now(),
                            1,
                        )
                        .await
                        .unwrap();
                    if left.is_empty() {
                        return expired;
                    }
                    if report.expired == 0 {
                        // The rest is leased to the other reaper: wait for it.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect();
    let mut per_reaper = Vec::new();
    for r in reapers {
        per_reaper.push(r.await.unwrap());
    }

    let (calls_a, calls_b) = (a.manual.revoke_calls(), b.manual.revoke_calls());
    assert_eq!(
        calls_a + calls_b,
        GRANTS,
        "revoke calls: {calls_a} + {calls_b}"
    );
    assert!(
        calls_a > 0 && calls_b > 0,
        "both reapers took part: {calls_a}, {calls_b}"
    );
    assert_eq!((per_reaper[0], per_reaper[1]), (calls_a, calls_b));
    let records = a.broker.list(&filter).await.unwrap();
    assert_eq!(records.len(), GRANTS);
    assert!(records.iter().all(|r| r.state == State::Expired));
    let chain = a.broker.audit_records().await.unwrap();
    audit::verify(&chain).unwrap();
    let expired_events = chain
        .iter()
        .filter(|r| r.event.kind == AuditKind::Expired)
        .count();
    assert_eq!(expired_events, GRANTS, "one `expired` record per grant");
    schema.drop_schema().await;
}

/// Replica A claims an expired grant and dies without doing the work: B
/// leaves it alone until A's lease lapses, then expires it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_replicas_claim_is_finished_by_another_after_the_lease() {
    let schema = TestSchema::new().await;
    let clock = ManualClock::starting_now();
    let a = replica(Arc::new(schema.store().await), &clock, "replica-a");
    let b = replica(Arc::new(schema.store().await), &clock, "replica-b");
    let id = b
        .broker
        .submit(&user("dora"), req("batch-job", "1h"))
        .await
        .unwrap()
        .record
        .id;
    clock.advance(TimeDelta::hours(1));
    let now = clock.now();
    let claim = Claim {
        owner: a.broker.replica_id().to_string(),
        now,
        lease: Duration::from_secs(60),
    };
    let claimed = a
        .store
        .claim_due(&[State::Active], now, 10, &claim)
        .await
        .unwrap();
    assert_eq!(claimed.iter().map(|r| r.id).collect::<Vec<_>>(), vec![id]);
    // A dies: its pool goes away, its lease stays.
    drop(a.broker);
    drop(a.store);

    let mut reaper = Reaper::new(b.broker.clone());
    for wait in [0, 30, 29] {
        clock.advance(TimeDelta::seconds(wait));
        let report = reaper.tick().await.unwrap();
        assert_eq!(report.expired, 0, "B took A's claim {wait}s early");
        assert_eq!(b.broker.get(id).await.unwrap().state, State::Active);
    }
    assert_eq!(b.manual.revoke_calls() + a.manual.revoke_calls(), 0);
    clock.advance(TimeDelta::seconds(1)); // the lease's end
    let report = reaper.tick().await.unwrap();
    assert_eq!(report.expired, 1);
    assert_eq!(b.manual.revoke_calls(), 1);
    assert_eq!(a.manual.revoke_calls(), 0);
    assert_eq!(b.broker.get(id).await.unwrap().state, State::Expired);
    assert!(b.broker.verify_audit().await.unwrap().is_ok());
    schema.drop_schema().await;
}

/// Replica A dies halfway through an expiry: the grant is `Revoking` (A
/// revoked at its provider, then could not record it). B does not touch it
/// while A's lease and the in-flight grace hold, then finishes the revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_dying_mid_expiry_is_finished_after_the_lease() {
    let schema = TestSchema::new().await;
    let clock = ManualClock::starting_now();
    let faulty = Arc::new(FaultyStore::new(Arc::new(schema.store().await)));
    let a = replica(faulty.clone(), &clock, "replica-a");
    let b = replica(Arc::new(schema.store().await), &clock, "replica-b");
    let id = a
        .broker
        .submit(&user("erin"), req("batch-job", "1h"))
        .await
        .unwrap()
        .record
        .id;
    clock.advance(TimeDelta::hours(1));
    faulty.fail_updates_into(&[State::Expired]);
    assert_eq!(a.broker.expire_due(500).await.unwrap(), 0);
    assert_eq!(a.manual.revoke_calls(), 1);
    assert_eq!(b.broker.get(id).await.unwrap().state, State::Revoking);
    drop(a.broker); // dies

    let mut reaper = Reaper::new(b.broker.clone());
    clock.advance(TimeDelta::seconds(59));
    assert_eq!(reaper.tick().await.unwrap().revoked, 0);
    assert_eq!(b.manual.revoke_calls(), 0);
    assert_eq!(b.broker.get(id).await.unwrap().state, State::Revoking);
    // The lease has lapsed, but an in-flight revocation also has a grace
    // (`reconcile_grace`, 120 s) before anyone retries it.
    clock.advance(TimeDelta::seconds(1));
    assert_eq!(reaper.tick().await.unwrap().revoked, 0);
    assert_eq!(b.manual.revoke_calls(), 0);
    clock.advance(TimeDelta::seconds(60));
    assert_eq!(reaper.tick().await.unwrap().revoked, 1);
    assert_eq!(b.manual.revoke_calls(), 1);
    let rec = b.broker.get(id).await.unwrap();
    assert_eq!(rec.state, State::Expired);
    let k = kinds(&b.broker.audit_records().await.unwrap(), id);
    assert_eq!(k.iter().filter(|k| **k == "expired").count(), 1, "{k:?}");
    schema.drop_schema().await;
}

/// A provider that takes `step` of (manual) time per revocation.
#[derive(Debug)]
struct SlowRevoker {
    inner: Arc<TestProvider>,
    clock: ManualClock,
    step: TimeDelta,
}

#[async_trait::async_trait]
impl Provider for SlowRevoker {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn validate(&self, e: &Entitlement) -> jit_core::Result<()> {
        self.inner.validate(e)
    }
    async fn issue(&self, spec: &GrantSpec) -> jit_core::Result<Issued> {
        self.inner.issue(spec).await
    }
    async fn revoke(&self, issued: &IssuedGrant) -> jit_core::Result<()> {
        self.clock.advance(self.step);
        self.inner.revoke(issued).await
    }
    async fn find(&self, spec: &GrantSpec) -> jit_core::Result<Option<IssuedGrant>> {
        self.inner.find(spec).await
    }
}

/// On a shared store a batch starts no item after half its lease: slow
/// revocations leave the rest of the batch for the next tick (when the
/// claim is renewed) instead of working past the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_batch_stops_at_half_its_lease() {
    let schema = TestSchema::new().await;
    let clock = ManualClock::starting_now();
    let manual = Arc::new(TestProvider::new("manual-expiry").without_native_expiry());
    let slow = Arc::new(SlowRevoker {
        inner: manual.clone(),
        clock: clock.clone(),
        step: TimeDelta::seconds(20),
    });
    let broker = BrokerBuilder::new(
        Arc::new(schema.store().await),
        Arc::new(CataloguePolicy::from_toml_str(CATALOGUE).unwrap()),
    )
    .provider(Arc::new(TestProvider::new("test")))
    .provider(slow)
    .clock(Arc::new(clock.clone()))
    .claim_lease(Duration::from_secs(60))
    .build()
    .unwrap();
    for _ in 0..3 {
        broker
            .submit(&user("gus"), req("batch-job", "1h"))
            .await
            .unwrap();
    }
    clock.advance(TimeDelta::hours(1));
    // Starts at 0 s and 20 s; at 40 s more than half the 60 s lease has gone.
    assert_eq!(broker.expire_due(10).await.unwrap(), 2);
    assert_eq!(manual.revoke_calls(), 2);
    assert_eq!(broker.expire_due(10).await.unwrap(), 1);
    assert_eq!(manual.revoke_calls(), 3);
    schema.drop_schema().await;
}

/// On a shared store the first tick does not take a fresh `Issuing` grant
/// (another replica's issue in flight) for a crash leftover.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_starting_replica_leaves_other_replicas_issues_alone() {
    let schema = TestSchema::new().await;
    let clock = ManualClock::starting_now();
    let a = replica(Arc::new(schema.store().await), &clock, "replica-a");
    let b = replica(Arc::new(schema.store().await), &clock, "replica-b");
    a.manual.hang_after_mint(true);
    let issuing = {
        let broker = a.broker.clone();
        tokio::spawn(async move { broker.submit(&user("finn"), req("batch-job", "1h")).await })
    };
    // Wait until A has minted and hangs (its grant is `Issuing`).
    while a.manual.issue_calls() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let report = Reaper::new(b.broker.clone()).tick().await.unwrap();
    assert_eq!(report.reconciled, 0, "B reconciled A's issue in flight");
    // Past the grace period it is a crash leftover, on any store.
    issuing.abort();
    clock.advance(TimeDelta::minutes(3));
    let report = Reaper::new(b.broker.clone()).tick().await.unwrap();
    assert_eq!(report.reconciled, 1);
    schema.drop_schema().await;
}

// ---- store URLs ----

#[tokio::test]
async fn store_urls_choose_the_backend() {
    let schema = TestSchema::new().await;
    // Create the schema, then reach it through the URL alone.
    schema.store().await.close().await;
    let base = pg::server_url().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-csearch_path%3D{}", schema.name());
    let store = jit_core::store::connect(&url).await.unwrap();
    assert!(
        format!("{store:?}").starts_with("PostgresStore"),
        "{store:?}"
    );
    assert!(store.is_shared());
    let r = sample_record("alice", "db-admin", State::Pending, Utc::now());
    store.insert(&r, &[]).await.unwrap();
    assert_eq!(
        schema.store().await.get(r.id).await.unwrap(),
        Some(r.clone())
    );

    let alias = url.replacen("postgres://", "postgresql://", 1);
    assert!(alias.starts_with("postgresql://"), "{alias}");
    let store = jit_core::store::connect(&alias).await.unwrap();
    assert_eq!(store.get(r.id).await.unwrap(), Some(r.clone()));

    for (url, kind) in [
        ("memory:", "MemoryStore"),
        ("sqlite::memory:", "SqliteStore"),
    ] {
        let store = jit_core::store::connect(url).await.unwrap();
        assert!(format!("{store:?}").starts_with(kind), "{url}: {store:?}");
        assert!(!store.is_shared());
    }
    let err = jit_core::store::connect("mysql://root:hunter2@db/jit")
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(err, Error::Config(ConfigError::StoreUrl { .. })),
        "{err:?}"
    );
    assert!(!err.to_string().contains("hunter2"));

    // The broker builder takes the same URLs.
    let policy = Arc::new(CataloguePolicy::from_toml_str(CATALOGUE).unwrap());
    let broker = BrokerBuilder::from_store_url(&url, policy.clone())
        .await
        .unwrap()
        .provider(Arc::new(TestProvider::new("test")))
        .provider(Arc::new(TestProvider::new("manual-expiry")))
        .build()
        .unwrap();
    assert_eq!(broker.get(r.id).await.unwrap(), r);
    assert!(broker.store().is_shared());
    assert!(broker.replica_id().starts_with("broker-"));
    let err = BrokerBuilder::from_store_url("nope", policy)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Config(ConfigError::StoreUrl { .. })),
        "{err:?}"
    );
    schema.drop_schema().await;
}

// ---- finding a server ----

/// The throwaway-cluster fallback works on a machine with PostgreSQL
/// binaries; without them, it says what to install.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throwaway_cluster_starts_from_the_installed_binaries() {
    let started = tokio::task::spawn_blocking(pg::Cluster::start)
        .await
        .unwrap();
    if !pg::binaries_installed() {
        let err = started.unwrap_err();
        assert!(err.contains("initdb"), "{err}");
        return;
    }
    let cluster = started.unwrap_or_else(|e| panic!("cannot start a throwaway cluster: {e}"));
    let mut conn = PgConnection::connect(cluster.url()).await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    let store = PostgresStore::builder(cluster.url())
        .schema("jit")
        .connect()
        .await
        .unwrap();
    conformance::check_insert_get_roundtrip(&store).await;
    store.close().await;
    conn.close().await.unwrap();
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn the_server_is_found() {
    let server = pg::server().await;
    assert!(!server.source.is_empty());
    let mut conn = raw().await;
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(!version.is_empty());
}

/// TLS comes from the URL as libpq reads it: with `sslmode=require` every
/// pooled connection is encrypted (the server's own `pg_stat_ssl` says so),
/// and `verify-full` refuses a server whose certificate is not trusted (the
/// test server's is self-signed). A server without TLS makes `require` fail
/// with a typed error instead of falling back to plain text.
#[tokio::test]
async fn tls_is_used_when_the_url_asks_for_it() {
    let schema = TestSchema::new().await;
    let url = schema.url();
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut admin = raw().await;
    let offered: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    let app = format!("jit_tls_{}", &schema.name()[9..]);
    let require = format!("{url}{sep}sslmode=require&application_name={app}");
    let opened = PostgresStore::builder(&require)
        .schema(schema.name())
        .max_connections(2)
        .connect()
        .await;
    if offered != "on" {
        let err = opened.unwrap_err();
        assert!(
            matches!(err, Error::Store(_) | Error::Unavailable { .. }),
            "{err}"
        );
        schema.drop_schema().await;
        return;
    }
    let store = opened.unwrap();
    let now = Utc::now();
    let rec = sample_record("alice", "dev-read", State::Pending, now);
    store.insert(&rec, &[]).await.unwrap();
    assert_eq!(store.get(rec.id).await.unwrap().unwrap().id, rec.id);
    let (sessions, all_tls): (i64, Option<bool>) = sqlx::query_as(
        "SELECT count(*), bool_and(s.ssl) FROM pg_stat_activity a
         JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = $1",
    )
    .bind(&app)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(sessions >= 1, "the store's sessions are visible");
    assert_eq!(all_tls, Some(true), "every session of the store is TLS");
    store.close().await;

    let strict = format!("{url}{sep}sslmode=verify-full");
    let err = PostgresStore::builder(&strict)
        .schema(schema.name())
        .connect()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("certificate") || text.contains("Certificate"),
        "{text}"
    );
    assert!(!text.contains("password="), "{text}");
    schema.drop_schema().await;
}
