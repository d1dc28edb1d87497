//! A record keeps the entitlement its request was decided on, so a grant
//! does not depend on the catalogue still containing it (#11), on every
//! store. The rule, as the README states it for rolling catalogue changes:
//! - once minted (`Issuing`, `Active`, revoking), a grant is delivered
//!   again, revoked, expired and reconciled from the stored entitlement;
//! - not yet minted (`Approved`), it is issued only by a replica whose
//!   catalogue still has the entitlement, and always as approved: a target
//!   changed since does not change what the approvers approved, and a
//!   maximum shortened since cuts the window (a change only takes away).
#![cfg(all(feature = "testing", feature = "sqlite", feature = "postgres"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::TimeDelta;
use common::*;
use jit_core::provider::{Capabilities, GrantSpec, Issued, Provider};
use jit_core::store::{SqliteStore, Store};
use jit_core::testing::postgres::TestSchema;
use jit_core::testing::{MemorySink, TestProvider};
use jit_core::{
    Broker, CataloguePolicy, Clock, Entitlement, IssuedGrant, ManualClock, MemoryStore, Reaper,
    Result, State,
};

/// The `test` provider, noting the target of every grant it is asked for.
#[derive(Debug)]
struct Recording {
    inner: TestProvider,
    targets: Mutex<Vec<serde_json::Value>>,
}

#[async_trait]
impl Provider for Recording {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn validate(&self, entitlement: &Entitlement) -> Result<()> {
        self.inner.validate(entitlement)
    }

    async fn issue(&self, spec: &GrantSpec) -> Result<Issued> {
        self.targets
            .lock()
            .unwrap()
            .push(spec.entitlement.target.clone());
        self.inner.issue(spec).await
    }

    async fn revoke(&self, issued: &IssuedGrant) -> Result<()> {
        self.inner.revoke(issued).await
    }

    async fn find(&self, spec: &GrantSpec) -> Result<Option<IssuedGrant>> {
        self.inner.find(spec).await
    }
}

fn broker(
    store: &Arc<dyn Store>,
    catalogue: &str,
    provider: &Arc<Recording>,
    clock: &ManualClock,
    replica: &str,
) -> Broker {
    Broker::builder(
        store.clone(),
        Arc::new(CataloguePolicy::from_toml_str(catalogue).unwrap()),
    )
    .provider(provider.clone())
    .provider(Arc::new(
        TestProvider::new("manual-expiry").without_native_expiry(),
    ))
    .clock(Arc::new(clock.clone()))
    .audit_sink(Arc::new(MemorySink::new()))
    .replica_id(replica)
    .build()
    .unwrap()
}

/// The test catalogue without `dev-read`: it was removed.
fn without_dev_read() -> String {
    let start = CATALOGUE
        .find("[[entitlements]]\nid = \"dev-read\"")
        .unwrap();
    let end = CATALOGUE
        .find("[[entitlements]]\nid = \"prod-read\"")
        .unwrap();
    format!("{}{}", &CATALOGUE[..start], &CATALOGUE[end..])
}

async fn grants_outlive_their_catalogue_entry(store: Arc<dyn Store>) {
    let clock = ManualClock::starting_now();
    let provider = Arc::new(Recording {
        inner: TestProvider::new("test"),
        targets: Mutex::new(Vec::new()),
    });
    let alice = user("alice");
    let before = broker(&store, CATALOGUE, &provider, &clock, "before");
    let submit = |dur: &str| {
        let (b, a, r) = (before.clone(), alice.clone(), req("dev-read", dur));
        async move { b.submit(&a, r).await.unwrap().record }
    };
    let redelivered = submit("20m").await;
    let revoked = submit("20m").await;
    let expiring = submit("5m").await;
    for r in [&redelivered, &revoked, &expiring] {
        assert_eq!(r.state, State::Active, "{:?}", r.note);
        assert!(r.entitlement.is_some(), "the record keeps its entitlement");
    }
    let mut later = req("dev-read", "10m");
    later.start_at = Some(clock.now() + TimeDelta::minutes(8));
    let scheduled = before.submit(&alice, later).await.unwrap().record;
    assert_eq!(scheduled.state, State::Approved);
    // A crash between mint and record leaves a grant `Issuing`.
    provider.inner.hang_after_mint(true);
    let b = before.clone();
    let minted = provider.inner.minted().len();
    let task = tokio::spawn(async move { b.submit(&user("alice"), req("dev-read", "10m")).await });
    while provider.inner.minted().len() == minted {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    task.abort();
    let _ = task.await;
    provider.inner.hang_after_mint(false);
    drop(before);

    // The catalogue no longer has `dev-read`.
    let after = broker(&store, &without_dev_read(), &provider, &clock, "after");
    let creds = after.credentials(&alice, redelivered.id).await.unwrap();
    assert_eq!(creds.expires_at(), redelivered.ends_at().unwrap());
    let rec = after.revoke(&alice, revoked.id, "done").await.unwrap();
    assert_eq!(rec.state, State::Revoked);

    clock.advance(TimeDelta::minutes(10));
    let mut reaper = Reaper::new(after.clone());
    let report = reaper.tick().await.unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(after.get(expiring.id).await.unwrap().state, State::Expired);
    let known = [redelivered.id, revoked.id, expiring.id, scheduled.id];
    let others: Vec<_> = after
        .list(&jit_core::ListFilter::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|r| !known.contains(&r.id))
        .collect();
    let [stuck] = others.as_slice() else {
        panic!("expected the crashed request alone: {others:?}");
    };
    assert_eq!(
        stuck.state,
        State::Revoked,
        "reconciled from the stored entitlement: minted, never delivered, revoked"
    );
    assert_eq!(report.reconciled, 1, "{report:?}");
    // Not yet minted: the replica without `dev-read` does not issue it.
    assert_eq!(
        after.get(scheduled.id).await.unwrap().state,
        State::Approved
    );
    assert!(after.skipped_records() >= 1);

    // A replica whose catalogue has `dev-read` with another target and a
    // shorter maximum issues it with the target that was approved, cut to
    // the new maximum (a tightened catalogue only takes away).
    let changed = CATALOGUE
        .replace(r#"audience = "dev""#, r#"audience = "dev-v2""#)
        .replace(
            "id = \"dev-read\"\nprovider = \"test\"\nmax_duration = \"1h\"",
            "id = \"dev-read\"\nprovider = \"test\"\nmax_duration = \"5m\"",
        )
        .replace(
            "[entitlements.auto_approve]\nmax_duration = \"30m\"",
            "[entitlements.auto_approve]\nmax_duration = \"5m\"",
        );
    assert!(changed.contains("max_duration = \"5m\""), "{changed}");
    let current = broker(&store, &changed, &provider, &clock, "current");
    let report = Reaper::new(current.clone()).tick().await.unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    let rec = current.get(scheduled.id).await.unwrap();
    assert_eq!(rec.state, State::Active, "{:?}", rec.note);
    let grant = rec.grant.as_ref().unwrap();
    assert_eq!(
        grant.ends_at - grant.starts_at,
        TimeDelta::minutes(5),
        "approved for 10m, issued under a 5m maximum"
    );
    assert_eq!(
        provider.targets.lock().unwrap().last(),
        Some(&serde_json::json!({ "audience": "dev" }))
    );
    assert!(current.verify_audit().await.unwrap().is_ok());
}

#[tokio::test]
async fn on_the_memory_store() {
    grants_outlive_their_catalogue_entry(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("jit.db")).await.unwrap();
    grants_outlive_their_catalogue_entry(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgres() {
    let schema = TestSchema::new().await;
    grants_outlive_their_catalogue_entry(Arc::new(schema.store().await)).await;
    schema.drop_schema().await;
}
