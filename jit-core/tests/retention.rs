//! Retention: finished requests and the audit chain's prefix go to an
//! archive file that verifies on its own, the store keeps a signed anchor
//! and its chain verifies from there; nothing live goes; a crash between
//! the export and the prune loses nothing; records stored whole before the
//! compact form still verify next to compact ones; concurrent writers and
//! prunes on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use chrono::TimeDelta;
use common::*;
use jit_core::audit::{
    AuditEvent, AuditKey, AuditKeyring, AuditKind, ChainBreakReason, ChainVerifier, GENESIS_HASH,
};
use jit_core::store::SqliteStore;
use jit_core::testing::{FaultyStore, TestProvider};
use jit_core::Clock;
use jit_core::{
    Broker, CataloguePolicy, ManualClock, MemoryStore, Reaper, RequestId, RequestRecord, State,
    Store,
};

struct World {
    broker: Broker,
    clock: ManualClock,
    store: Arc<dyn Store>,
    keyring: AuditKeyring,
}

fn world(store: Arc<dyn Store>) -> World {
    let clock = ManualClock::starting_now();
    let keyring = AuditKeyring::new(AuditKey::generate());
    let broker = Broker::builder(
        store.clone(),
        Arc::new(CataloguePolicy::from_toml_str(CATALOGUE).unwrap()),
    )
    .provider(Arc::new(TestProvider::new("test")))
    .provider(Arc::new(
        TestProvider::new("manual-expiry").without_native_expiry(),
    ))
    .clock(Arc::new(clock.clone()))
    .audit_keyring(keyring.clone())
    .build()
    .unwrap();
    World {
        broker,
        clock,
        store,
        keyring,
    }
}

async fn sqlite(dir: &Path) -> Arc<dyn Store> {
    Arc::new(SqliteStore::open(dir.join("jit.db")).await.unwrap())
}

/// An auto-approved grant, issued and revoked: five audit records.
async fn finished(w: &World, who: &str) -> RequestId {
    let alice = user(who);
    let id = w
        .broker
        .submit(&alice, req("dev-read", "10m"))
        .await
        .unwrap()
        .record
        .id;
    w.broker.revoke(&alice, id, "done").await.unwrap();
    id
}

/// An auto-approved grant, issued and still running.
async fn active(w: &World, who: &str) -> RequestId {
    let out = w
        .broker
        .submit(&user(who), req("dev-read", "10m"))
        .await
        .unwrap();
    assert_eq!(out.record.state, State::Active);
    out.record.id
}

fn archive_lines(path: &Path) -> (Vec<serde_json::Value>, Vec<RequestRecord>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut audit = Vec::new();
    let mut records = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(r) = v.get("record") {
            records.push(serde_json::from_value(r.clone()).unwrap());
        } else if v.get("seq").is_some() {
            audit.push(v);
        }
    }
    (audit, records)
}

fn verify_file(v: &ChainVerifier, path: &Path) -> jit_core::audit::ChainSummary {
    let file = std::fs::File::open(path).unwrap();
    v.verify_jsonl(std::io::BufReader::new(file)).unwrap()
}

async fn export_verifies(w: &World) -> u64 {
    let mut buf = Vec::new();
    w.broker.export_audit(&mut buf).await.unwrap();
    ChainVerifier::new()
        .keyring(w.keyring.clone())
        .verify_jsonl(&buf[..])
        .unwrap()
        .records
}

async fn archive_then_verify_both_halves(store: Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let w = world(store);
    let a = finished(&w, "alice").await;
    let b = finished(&w, "bob").await;
    w.clock.advance(TimeDelta::minutes(1));
    let c = active(&w, "carol").await;
    let d = w
        .broker
        .submit(&user("dave"), req("prod-read", "1h"))
        .await
        .unwrap()
        .record
        .id;
    let total = w.broker.audit_records().await.unwrap().len() as u64;
    w.clock.advance(TimeDelta::hours(2));

    let report = w
        .broker
        .archive_finished(w.clock.now() - TimeDelta::hours(1), dir.path(), 1000)
        .await
        .unwrap();
    let segment = report.segment.clone().unwrap();
    let to = segment.to.clone().unwrap();
    assert_eq!((segment.from.seq, to.seq, segment.records), (0, 10, 2));
    assert_eq!(report.audit_records, 10);
    assert!(to.signed.is_some(), "signed with the audit key");

    // The finished requests left the store; the live ones did not.
    assert_eq!(w.store.get(a).await.unwrap(), None);
    assert_eq!(w.store.get(b).await.unwrap(), None);
    assert_eq!(w.store.get(c).await.unwrap().unwrap().state, State::Active);
    assert_eq!(w.store.get(d).await.unwrap().unwrap().state, State::Pending);
    assert_eq!(w.store.audit_anchor().await.unwrap(), Some(to.clone()));

    // The archive verifies on its own, seals and both anchors included, and
    // holds the two requests.
    let path = report.path.unwrap();
    let keyed = ChainVerifier::new().keyring(w.keyring.clone());
    let s = verify_file(&keyed, &path);
    assert_eq!((s.records, s.head.as_str()), (10, to.hash.as_str()));
    let (audit, records) = archive_lines(&path);
    assert_eq!(audit.len(), 10);
    let ids: BTreeSet<_> = records.iter().map(|r| r.id).collect();
    assert_eq!(ids, BTreeSet::from([a, b]));

    // The hot chain verifies from the anchor, in the store and exported.
    let s = w.broker.verify_audit().await.unwrap().unwrap();
    assert_eq!(s.records, total - 10);
    assert_eq!(w.broker.audit_records().await.unwrap()[0].seq, 11);
    assert_eq!(export_verifies(&w).await, total - 10);

    // The chain goes on, and the next archive starts where this one ended.
    Reaper::new(w.broker.clone()).tick().await.unwrap();
    assert_eq!(w.store.get(c).await.unwrap().unwrap().state, State::Expired);
    assert_eq!(
        w.store.get(d).await.unwrap().unwrap().state,
        State::TimedOut
    );
    w.clock.advance(TimeDelta::hours(2));
    let next = w
        .broker
        .archive_finished(w.clock.now(), dir.path(), 1000)
        .await
        .unwrap();
    let seg2 = next.segment.unwrap();
    assert_eq!(seg2.from, to);
    let s = verify_file(&keyed, &next.path.unwrap());
    assert_eq!(s.head, seg2.to.unwrap().hash);
    assert!(w.store.get(c).await.unwrap().is_none());
    assert!(w.store.get(d).await.unwrap().is_none());
    // Everything went: the store's chain is empty and still verifies...
    assert!(w.broker.audit_records().await.unwrap().is_empty());
    assert_eq!(w.broker.verify_audit().await.unwrap().unwrap().records, 0);
    // ... and the next record continues the numbering and links to the anchor.
    let anchor = w.store.audit_anchor().await.unwrap().unwrap();
    finished(&w, "erin").await;
    let hot = w.broker.audit_records().await.unwrap();
    assert_eq!(hot[0].seq, anchor.seq + 1);
    assert_eq!(hot[0].prev_hash, anchor.hash);
    assert_eq!(w.broker.verify_audit().await.unwrap().unwrap().records, 5);
    // Nothing more to archive while it is recent.
    let none = w
        .broker
        .archive_finished(w.clock.now() - TimeDelta::hours(1), dir.path(), 1000)
        .await
        .unwrap();
    assert_eq!(none.segment, None);
}

#[tokio::test]
async fn memory_archive_verifies_alone_and_the_hot_chain_from_its_anchor() {
    archive_then_verify_both_halves(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn sqlite_archive_verifies_alone_and_the_hot_chain_from_its_anchor() {
    let dir = tempfile::tempdir().unwrap();
    archive_then_verify_both_halves(sqlite(dir.path()).await).await;
}

/// Nothing live goes, whatever the cut-off: pending, approved, active,
/// revoked with time left on the grant, failing revocations. A live request
/// holds back the finished ones after it (the chain is cut as a prefix).
async fn nothing_live_is_pruned(store: Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let w = world(store);
    let first = finished(&w, "alice").await;
    let pending = w
        .broker
        .submit(&user("bob"), req("prod-read", "1h"))
        .await
        .unwrap()
        .record
        .id;
    let later = finished(&w, "carol").await;
    let running = active(&w, "dave").await;
    w.clock.advance(TimeDelta::minutes(1));
    let everything = w.broker.audit_records().await.unwrap().len();

    // A cut-off in the future is today: the revoked grants still have time
    // left on their window, so not even they go.
    let report = w
        .broker
        .archive_finished(w.clock.now() + TimeDelta::days(1), dir.path(), 1000)
        .await
        .unwrap();
    assert_eq!(report.segment, None);
    assert_eq!(w.broker.audit_records().await.unwrap().len(), everything);

    // Once their windows have passed, the first goes; the pending request
    // holds back the one after it.
    w.clock.advance(TimeDelta::hours(1));
    let report = w
        .broker
        .archive_finished(w.clock.now(), dir.path(), 1000)
        .await
        .unwrap();
    assert_eq!(report.segment.unwrap().records, 1);
    assert!(w.store.get(first).await.unwrap().is_none());
    for id in [pending, later, running] {
        assert!(w.store.get(id).await.unwrap().is_some(), "{id} kept");
    }
    assert!(w.broker.verify_audit().await.unwrap().is_ok());
}

#[tokio::test]
async fn memory_nothing_live_is_pruned() {
    nothing_live_is_pruned(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn sqlite_nothing_live_is_pruned() {
    let dir = tempfile::tempdir().unwrap();
    nothing_live_is_pruned(sqlite(dir.path()).await).await;
}

#[tokio::test]
async fn a_crash_between_export_and_prune_loses_nothing_and_a_rerun_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let faulty = Arc::new(FaultyStore::new(sqlite(dir.path()).await));
    let w = world(faulty.clone());
    let ids = [finished(&w, "alice").await, finished(&w, "bob").await];
    w.clock.advance(TimeDelta::hours(2));
    let cut = w.clock.now() - TimeDelta::hours(1);

    faulty.fail_prunes(true);
    let err = w
        .broker
        .archive_finished(cut, out.path(), 1000)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("injected prune failure"), "{err}");
    // The archive was written and synced first; the store is untouched.
    let files: Vec<_> = std::fs::read_dir(out.path()).unwrap().collect();
    assert_eq!(files.len(), 1, "one archive, no temporary file left");
    for id in ids {
        assert!(w.store.get(id).await.unwrap().is_some());
    }
    assert_eq!(w.store.audit_anchor().await.unwrap(), None);
    assert_eq!(w.broker.verify_audit().await.unwrap().unwrap().records, 10);

    // Running again archives the same segment (into the same file) and prunes it.
    faulty.fail_prunes(false);
    let report = w
        .broker
        .archive_finished(cut, out.path(), 1000)
        .await
        .unwrap();
    assert_eq!(report.segment.unwrap().to.unwrap().seq, 10);
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 1);
    let s = verify_file(
        &ChainVerifier::new().keyring(w.keyring.clone()),
        &report.path.unwrap(),
    );
    assert_eq!(s.records, 10);
    for id in ids {
        assert!(w.store.get(id).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn batches_stop_at_a_request_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(Arc::new(MemoryStore::new()));
    for who in ["a", "b", "c", "d", "e"] {
        finished(&w, who).await;
    }
    w.clock.advance(TimeDelta::hours(2));
    let mut ends = Vec::new();
    loop {
        let r = w
            .broker
            .archive_finished(w.clock.now(), dir.path(), 2)
            .await
            .unwrap();
        let Some(seg) = r.segment else { break };
        assert!(seg.records <= 2, "{seg:?}");
        // Every request's five records stay together.
        assert_eq!(seg.to.as_ref().unwrap().seq % 5, 0);
        ends.push(seg.to.unwrap().seq);
    }
    assert_eq!(ends.last(), Some(&25));
    assert!(ends.len() >= 3);
}

/// Clearing a backlog in batches reads each batch and a little more, not
/// the chain to its head every time (which made it quadratic): with 40
/// old finished requests (an hour apart) behind 1,000 recent ones, ten
/// batches of four read a fraction of the chain in all, not ten times the
/// whole chain.
#[tokio::test]
async fn a_batch_reads_its_own_records_not_the_chain_to_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = Arc::new(FaultyStore::new(Arc::new(MemoryStore::new())));
    let w = world(faulty.clone());
    for i in 0..40 {
        finished(&w, &format!("old-{i}")).await;
        w.clock.advance(TimeDelta::hours(1));
    }
    w.clock.advance(TimeDelta::days(30));
    let cut = w.clock.now() - TimeDelta::days(1);
    for i in 0..1000 {
        finished(&w, &format!("new-{i}")).await;
    }
    let chain = 1040 * 5;
    let mut archived = 0;
    let mut batches = 0;
    loop {
        let r = w.broker.archive_finished(cut, dir.path(), 4).await.unwrap();
        let Some(seg) = r.segment else { break };
        archived += r.audit_records as usize;
        batches += 1;
        assert!(seg.records <= 5, "{seg:?}");
    }
    assert_eq!(archived, 40 * 5, "all old requests, nothing recent");
    assert!(batches >= 8, "{batches}");
    // Each call reads its batch and the rest of a small page past the
    // stop; reading to the head each time would be 55,000 records.
    let read = faulty.audit_records_read();
    assert!(
        read < chain / 2,
        "{batches} batches read {read} audit records; the chain has {chain}"
    );
    assert_eq!(
        w.broker.verify_audit().await.unwrap().unwrap().records,
        1000 * 5
    );
}

/// Someone with write access moves the anchor (here: strips its
/// signature to point the chain's start elsewhere): with the key, the
/// chain no longer verifies.
#[tokio::test]
async fn an_unsigned_anchor_is_a_break_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let path = dir.path().join("jit.db");
    let w = world(Arc::new(SqliteStore::open(&path).await.unwrap()));
    finished(&w, "alice").await;
    finished(&w, "bob").await;
    w.clock.advance(TimeDelta::hours(2));
    w.broker
        .archive_finished(w.clock.now(), out.path(), 1)
        .await
        .unwrap();
    assert!(w.broker.verify_audit().await.unwrap().is_ok());

    let raw = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let mut anchor = w.store.audit_anchor().await.unwrap().unwrap();
    anchor.signed = None;
    sqlx::query("UPDATE audit_anchor SET body = ?")
        .bind(serde_json::to_string(&anchor).unwrap())
        .execute(&raw)
        .await
        .unwrap();
    let brk = w.broker.verify_audit().await.unwrap().unwrap_err();
    assert_eq!(brk.reason, ChainBreakReason::BadAnchor);
    assert_eq!(brk.seq, anchor.seq + 1);
    // Without the key there is nothing to check it against.
    assert!(ChainVerifier::new()
        .anchor(anchor)
        .verify(&w.broker.audit_records().await.unwrap())
        .is_ok());
}

/// An edited record is never archived (and so never blessed by a signed
/// anchor): the archiver refuses and prunes nothing.
#[tokio::test]
async fn a_chain_that_does_not_verify_is_not_archived() {
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let path = dir.path().join("jit.db");
    let w = world(Arc::new(SqliteStore::open(&path).await.unwrap()));
    let id = finished(&w, "alice").await;
    w.clock.advance(TimeDelta::hours(2));
    let raw = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    // The first record names another actor (written back whole, as JSON,
    // which the store reads as it reads records stored before packing).
    let mut edited = jit_core::store::audit_all(&*w.store)
        .await
        .unwrap()
        .remove(0);
    edited.event.actor = "mallory".into();
    sqlx::query("UPDATE audit SET body = ? WHERE seq = 1")
        .bind(serde_json::to_vec(&edited).unwrap())
        .execute(&raw)
        .await
        .unwrap();
    let err = w
        .broker
        .archive_finished(w.clock.now(), out.path(), 100)
        .await
        .unwrap_err();
    assert!(matches!(err, jit_core::Error::AuditFailed(_)), "{err:?}");
    assert!(w.store.get(id).await.unwrap().is_some());
    assert_eq!(w.store.audit_anchor().await.unwrap(), None);
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

/// Rows stored whole (as every store wrote them before the compact form)
/// are read as they were and the compact rows after them link to them.
#[tokio::test]
async fn records_stored_whole_before_the_compact_form_still_verify() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jit.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
    let raw = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let keyring = AuditKeyring::new(AuditKey::generate());
    let mut prev = GENESIS_HASH.to_string();
    let mut old = Vec::new();
    for seq in 1..=3u64 {
        let r = AuditEvent::new(
            chrono::Utc::now(),
            AuditKind::Requested,
            RequestId::new(),
            "alice",
            State::Pending,
        )
        .details(serde_json::json!({ "reasons": ["old shape"], "by": "alice" }))
        .sealed_with(Some(&keyring))
        .chain(seq, &prev);
        // As the SQLite store holds them since its version 13: the hash as
        // bytes, a body written before packing as the JSON's bytes.
        sqlx::query("INSERT INTO audit (seq, hash, body) VALUES (?, ?, ?)")
            .bind(seq as i64)
            .bind(hex::decode(&r.hash).unwrap())
            .bind(serde_json::to_vec(&r).unwrap())
            .execute(&raw)
            .await
            .unwrap();
        prev = r.hash.clone();
        old.push(r);
    }
    let w = World {
        broker: Broker::builder(
            store.clone(),
            Arc::new(CataloguePolicy::from_toml_str(CATALOGUE).unwrap()),
        )
        .provider(Arc::new(TestProvider::new("test")))
        .provider(Arc::new(TestProvider::new("manual-expiry")))
        .audit_keyring(keyring.clone())
        .build()
        .unwrap(),
        clock: ManualClock::starting_now(),
        store,
        keyring,
    };
    finished(&w, "bob").await;
    let all = w.broker.audit_records().await.unwrap();
    assert_eq!(&all[..3], &old[..]);
    assert_eq!(all[3].prev_hash, old[2].hash);
    let packed: Vec<u8> = sqlx::query_scalar("SELECT body FROM audit WHERE seq = 4")
        .fetch_one(&raw)
        .await
        .unwrap();
    assert!(jit_core::packed::is_packed(&packed), "{packed:?}");
    let s = w.broker.verify_audit().await.unwrap().unwrap();
    assert_eq!((s.records, s.sealed), (8, 8));
    assert_eq!(export_verifies(&w).await, 8);

    // A deleted compact row shows: the next one no longer matches its hash.
    sqlx::query("DELETE FROM audit WHERE seq = 5")
        .execute(&raw)
        .await
        .unwrap();
    let brk = w.broker.verify_audit().await.unwrap().unwrap_err();
    assert_eq!((brk.position, brk.seq), (4, 6), "{brk}");
}

/// The store's own checks, whatever the planner did: a live record, a
/// record that changed since it was archived, a stale anchor or an anchor
/// naming another hash are refused and nothing changes.
async fn prune_refuses_what_was_not_archived(store: Arc<dyn Store>) {
    use jit_core::audit::AuditAnchor;
    use jit_core::store::Prune;
    let w = world(store.clone());
    let done = finished(&w, "alice").await;
    let live = active(&w, "bob").await;
    let chain = w.broker.audit_records().await.unwrap();
    let at = |seq: u64| {
        AuditAnchor::new(
            seq,
            &chain[seq as usize - 1].hash,
            w.clock.now(),
            Some(&w.keyring),
        )
    };
    let version = |id| {
        let store = store.clone();
        async move { store.get(id).await.unwrap().unwrap().version }
    };
    let (dv, lv) = (version(done).await, version(live).await);
    let refused = [
        // A live record.
        Prune {
            after: 0,
            anchor: at(9),
            records: vec![(done, dv), (live, lv)],
        },
        // A record at another version than the one archived.
        Prune {
            after: 0,
            anchor: at(5),
            records: vec![(done, dv - 1)],
        },
        // Planned against another anchor.
        Prune {
            after: 3,
            anchor: at(5),
            records: vec![(done, dv)],
        },
        // An anchor whose hash is not the stored record's.
        Prune {
            after: 0,
            anchor: AuditAnchor::new(5, GENESIS_HASH, w.clock.now(), None),
            records: vec![(done, dv)],
        },
    ];
    for p in &refused {
        assert!(store.prune(p).await.is_err(), "{p:?}");
        assert!(store.get(done).await.unwrap().is_some());
        assert!(store.get(live).await.unwrap().is_some());
        assert_eq!(store.audit_anchor().await.unwrap(), None);
        assert_eq!(w.broker.audit_records().await.unwrap().len(), chain.len());
    }
    let err = store.prune(&refused[0]).await.unwrap_err();
    assert!(
        matches!(err, jit_core::Error::Conflict { request, .. } if request == live),
        "{err:?}"
    );
    store
        .prune(&Prune {
            after: 0,
            anchor: at(5),
            records: vec![(done, dv)],
        })
        .await
        .unwrap();
    assert!(store.get(done).await.unwrap().is_none());
    assert_eq!(w.broker.verify_audit().await.unwrap().unwrap().records, 4);
}

#[tokio::test]
async fn memory_prune_refuses_what_was_not_archived() {
    prune_refuses_what_was_not_archived(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn sqlite_prune_refuses_what_was_not_archived() {
    let dir = tempfile::tempdir().unwrap();
    prune_refuses_what_was_not_archived(sqlite(dir.path()).await).await;
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use jit_core::testing::postgres::TestSchema;

    #[tokio::test]
    async fn postgres_archive_verifies_alone_and_the_hot_chain_from_its_anchor() {
        let schema = TestSchema::new().await;
        archive_then_verify_both_halves(Arc::new(schema.store().await)).await;
    }

    #[tokio::test]
    async fn postgres_nothing_live_is_pruned() {
        let schema = TestSchema::new().await;
        nothing_live_is_pruned(Arc::new(schema.store().await)).await;
    }

    #[tokio::test]
    async fn postgres_prune_refuses_what_was_not_archived() {
        let schema = TestSchema::new().await;
        prune_refuses_what_was_not_archived(Arc::new(schema.store().await)).await;
    }

    /// Writers keep appending while two archivers race: at most one prune
    /// applies per anchor, the loser changes nothing, and the archives plus
    /// the store's chain hold every record ever appended.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_and_prunes_lose_nothing() {
        let schema = TestSchema::new().await;
        let store: Arc<dyn Store> = Arc::new(schema.store().await);
        let out = tempfile::tempdir().unwrap();
        let w = Arc::new(world(store));
        for i in 0..20 {
            finished(&w, &format!("old-{i}")).await;
        }
        w.clock.advance(TimeDelta::hours(2));
        let cut = w.clock.now() - TimeDelta::hours(1);

        let writer = {
            let w = w.clone();
            tokio::spawn(async move {
                for i in 0..20 {
                    finished(&w, &format!("new-{i}")).await;
                }
            })
        };
        let archivers: Vec<_> = (0..2)
            .map(|k| {
                let w = w.clone();
                let dir = out.path().join(format!("a{k}"));
                std::fs::create_dir(&dir).unwrap();
                tokio::spawn(async move { w.broker.archive_finished(cut, &dir, 7).await })
            })
            .collect();
        let mut applied = 0;
        for a in archivers {
            match a.await.unwrap() {
                Ok(r) => applied += usize::from(r.segment.is_some()),
                Err(e) => assert!(
                    matches!(
                        e,
                        jit_core::Error::Store(_) | jit_core::Error::Conflict { .. }
                    ),
                    "{e:?}"
                ),
            }
        }
        writer.await.unwrap();
        assert!(applied >= 1);
        // Finish the job, then account for every record.
        while w
            .broker
            .archive_finished(cut, &out.path().join("a0"), 7)
            .await
            .unwrap()
            .segment
            .is_some()
        {}
        let keyed = ChainVerifier::new().keyring(w.keyring.clone());
        let mut seen = BTreeSet::new();
        for sub in ["a0", "a1"] {
            for f in std::fs::read_dir(out.path().join(sub)).unwrap() {
                let path = f.unwrap().path();
                verify_file(&keyed, &path);
                for v in archive_lines(&path).0 {
                    seen.insert(v["seq"].as_u64().unwrap());
                }
            }
        }
        let hot = w.broker.audit_records().await.unwrap();
        seen.extend(hot.iter().map(|r| r.seq));
        let head = hot.last().unwrap().seq;
        assert_eq!(seen, (1..=head).collect::<BTreeSet<_>>());
        assert_eq!(head, 200, "40 lifecycles of five records");
        assert!(w.broker.verify_audit().await.unwrap().is_ok());
        for i in 0..20 {
            let kept = w
                .broker
                .list(&jit_core::ListFilter {
                    requester: Some(format!("old-{i}")),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert!(kept.is_empty(), "old-{i} archived");
        }
    }
}
