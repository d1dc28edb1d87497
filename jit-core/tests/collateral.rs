//! A coarse revocation's collateral (design rule 8): the broker records
//! every other live grant that the provider says it cut off as revoked,
//! with the reason and its own audit record, and nothing else.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use common::*;
use jit_core::testing::{MemorySink, TestProvider};
use jit_core::{
    Capabilities, Clock, Collateral, Entitlement, GrantSpec, Issued, IssuedGrant, MemoryStore,
    Provider, Result, RevokeOutcome, State,
};

/// Revokes like [`TestProvider`], but every revocation also cuts off all
/// other grants except those of `spared`.
#[derive(Debug)]
struct Coarse {
    inner: Arc<TestProvider>,
    clock: Arc<dyn Clock>,
}

#[async_trait]
impl Provider for Coarse {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn validate(&self, e: &Entitlement) -> Result<()> {
        self.inner.validate(e)
    }
    async fn issue(&self, spec: &GrantSpec) -> Result<Issued> {
        self.inner.issue(spec).await
    }
    async fn revoke(&self, issued: &IssuedGrant) -> Result<()> {
        self.inner.revoke(issued).await
    }
    async fn revoke_reporting(&self, issued: &IssuedGrant) -> Result<RevokeOutcome> {
        self.inner.revoke(issued).await?;
        Ok(RevokeOutcome::with_collateral(Collateral::new(
            "everything",
            self.clock.now(),
            "the exact list is full",
        )))
    }
    fn cut_off_by(&self, c: &Collateral, issued: &IssuedGrant) -> bool {
        c.scope == "everything" && issued.details["subject"] != "spared"
    }
    async fn find(&self, spec: &GrantSpec) -> Result<Option<IssuedGrant>> {
        self.inner.find(spec).await
    }
}

#[tokio::test]
async fn the_broker_records_exactly_the_grants_a_coarse_revocation_cut_off() {
    let clock = jit_core::ManualClock::starting_now();
    let inner = Arc::new(TestProvider::new("test"));
    let manual = Arc::new(TestProvider::new("manual-expiry").without_native_expiry());
    let sink = Arc::new(MemorySink::new());
    let policy = Arc::new(jit_core::CataloguePolicy::from_toml_str(CATALOGUE).unwrap());
    let broker = jit_core::Broker::builder(Arc::new(MemoryStore::new()), policy)
        .provider(Arc::new(Coarse {
            inner: inner.clone(),
            clock: Arc::new(clock.clone()),
        }))
        .provider(manual.clone())
        .clock(Arc::new(clock.clone()))
        .audit_sink(sink.clone())
        .build()
        .unwrap();
    let active = |who: &str, ent: &'static str| {
        let broker = broker.clone();
        let who = user(who);
        async move {
            let out = broker.submit(&who, req(ent, "15m")).await.unwrap();
            assert_eq!(out.record.state, State::Active);
            out.record.id
        }
    };
    let origin = active("alice", "dev-read").await;
    let bystander = active("bob", "dev-read").await;
    let spared = active("spared", "dev-read").await;
    let other_provider = active("erin", "batch-job").await;
    // A grant whose own revocation is failing is cut off all the same.
    let failing = active("dave", "dev-read").await;
    inner.fail_next_revokes(1);
    let r = broker
        .revoke(&user("dave"), failing, "leaving")
        .await
        .unwrap();
    assert_eq!(r.state, State::Revoking);

    let r = broker.revoke(&user("alice"), origin, "done").await.unwrap();
    assert_eq!(r.state, State::Revoked);
    let origin_grant = r.grant_id().unwrap();
    let reason = format!("collateral of role-wide revocation of grant {origin_grant}");
    for id in [bystander, failing] {
        let rec = broker.get(id).await.unwrap();
        assert_eq!(rec.state, State::Revoked, "{id}");
        assert_eq!(rec.revocation.as_ref().unwrap().reason, reason);
        let audit = broker.audit_records().await.unwrap();
        let last = audit
            .iter()
            .rev()
            .find(|a| a.event.request_id == id)
            .unwrap();
        assert_eq!(last.event.kind, jit_core::AuditKind::Revoked);
        assert_eq!(last.event.actor, "alice");
        assert_eq!(
            last.event.details["collateral_of"],
            origin_grant.to_string()
        );
        assert_eq!(last.event.details["cause"], "the exact list is full");
    }
    assert_eq!(broker.get(spared).await.unwrap().state, State::Active);
    assert_eq!(
        broker.get(other_provider).await.unwrap().state,
        State::Active
    );
    assert!(broker.verify_audit().await.unwrap().is_ok());
    assert_eq!(sink.records(), broker.audit_records().await.unwrap());
}
