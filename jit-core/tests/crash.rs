//! Crash safety: a grant minted but never recorded is found and settled by a
//! restarted broker on the same SQLite file — revoked, never lost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use jit_core::store::SqliteStore;
use jit_core::testing::{FaultyStore, TestProvider};
use jit_core::{Error, ListFilter, Reaper, State};

#[tokio::test]
async fn killed_between_mint_and_record_is_reconciled_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jit.db");
    let provider = Arc::new(TestProvider::new("test"));

    // First life: the provider mints, then the process "dies" (the task is aborted).
    {
        let store = SqliteStore::open(&path).await.unwrap();
        let e = env_with(Arc::new(store), provider.clone());
        provider.hang_after_mint(true);
        let b = e.broker.clone();
        let task =
            tokio::spawn(async move { b.submit(&user("alice"), req("dev-read", "10m")).await });
        while provider.minted().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        task.abort();
        let _ = task.await;
        let recs = e.broker.list(&ListFilter::default()).await.unwrap();
        assert_eq!(recs[0].state, State::Issuing);
        assert_eq!(
            provider.live().len(),
            1,
            "minted and unrecorded: live at the provider"
        );
    }
    provider.hang_after_mint(false);

    // Second life on the same file.
    let store = SqliteStore::open(&path).await.unwrap();
    let e = env_with(Arc::new(store), provider.clone());
    let report = Reaper::new(e.broker.clone()).tick().await.unwrap();
    assert_eq!(report.reconciled, 1);
    let rec = &e.broker.list(&ListFilter::default()).await.unwrap()[0];
    assert_eq!(rec.state, State::Revoked);
    assert!(provider.live().is_empty());
    let ext = &provider.minted()[0];
    assert!(provider.is_revoked(ext));
    let audit = e.broker.audit_records().await.unwrap();
    assert_eq!(kinds(&audit, rec.id).last(), Some(&"reconciled"));
    assert!(e.broker.verify_audit().await.unwrap().is_ok());
}

#[tokio::test]
async fn store_failing_before_recording_then_restart_never_loses_the_grant() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jit.db");
    let provider = Arc::new(TestProvider::new("test"));
    let id;
    {
        let sqlite = Arc::new(SqliteStore::open(&path).await.unwrap());
        let faulty = Arc::new(FaultyStore::new(sqlite));
        let e = env_with(faulty.clone(), provider.clone());
        // The store dies right after the grant is recorded as Issuing: the
        // provider mints, and neither Active nor Failed can be written.
        faulty.fail_updates_into(&[State::Active, State::Failed, State::Revoking]);
        provider.fail_next_revokes(1); // and the immediate take-back fails too
        let b = e.broker.clone();
        let f = faulty.clone();
        let err = tokio::spawn(async move {
            let r = b.submit(&user("alice"), req("dev-read", "10m")).await;
            f.fail_updates(true);
            r
        })
        .await
        .unwrap()
        .unwrap_err();
        assert!(matches!(err, Error::Store(_)), "{err}");
        let rec = &e.broker.list(&ListFilter::default()).await.unwrap()[0];
        id = rec.id;
        assert_eq!(rec.state, State::Issuing, "left for the reconciler");
        assert_eq!(provider.live().len(), 1);
    }
    let store = SqliteStore::open(&path).await.unwrap();
    let e = env_with(Arc::new(store), provider.clone());
    let mut reaper = Reaper::new(e.broker.clone());
    reaper.tick().await.unwrap();
    // Revoking records are retried when due.
    e.clock.advance(chrono::TimeDelta::minutes(1));
    reaper.tick().await.unwrap();
    let rec = e.broker.get(id).await.unwrap();
    assert_eq!(rec.state, State::Revoked);
    assert!(provider.live().is_empty());
    assert!(e.broker.verify_audit().await.unwrap().is_ok());
}
