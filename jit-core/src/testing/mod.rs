//! Conformance suite for providers and stores, and fault-injection doubles
//! for testing hosts and the broker itself (feature `testing`).
//!
//! Checks are plain `pub async fn`s taking `&dyn Provider` / `&dyn Store`
//! (through a harness where they need more): each implementation calls the
//! ones its capabilities support.
//!
//! For providers that talk HTTP: [`tripwire::Tripwire`], an endpoint that
//! fails the test if contacted, and [`fake`], a local HTTP/HTTPS server
//! harness (routes, faults by rule, a record of requests, a shared manual
//! clock) that the cloud fakes are built on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::audit::{AuditEntry, AuditEvent, AuditRecord, AuditSink};
use crate::credentials::{Credentials, Secret};
use crate::error::{Error, RequestError, Result};
use crate::provider::{Capabilities, GrantSpec, Issued, Provider, RevocationKind};
use crate::store::{Claim, ListFilter, Store};
use crate::types::{format_duration, Entitlement, IssuedGrant, RequestId, RequestRecord, State};

pub mod fake;
pub mod policy;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod provider;
pub mod sink;
pub mod store;
pub mod tripwire;

/// A provider double that records every call and fails on demand.
///
/// Its ledger (`minted`) outlives a broker, so a test can drop a broker in the
/// middle of an issue (a crash) and check what a new broker's reconciler does.
#[derive(Debug)]
pub struct TestProvider {
    name: String,
    native_expiry: bool,
    revocation: RevocationKind,
    max: Duration,
    /// grant external id -> (issued record, revoked?)
    minted: Mutex<HashMap<String, (IssuedGrant, bool)>>,
    issue_calls: AtomicUsize,
    revoke_calls: AtomicUsize,
    fail_issue: AtomicBool,
    fail_revokes: AtomicU32,
    hang_after_mint: AtomicBool,
    revoke_by_name: bool,
    blind: AtomicBool,
}

impl TestProvider {
    /// A provider named `name` with native expiry and a 12 h maximum.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            native_expiry: true,
            revocation: RevocationKind::Immediate,
            max: Duration::from_secs(12 * 3600),
            minted: Mutex::new(HashMap::new()),
            issue_calls: AtomicUsize::new(0),
            revoke_calls: AtomicUsize::new(0),
            fail_issue: AtomicBool::new(false),
            fail_revokes: AtomicU32::new(0),
            hang_after_mint: AtomicBool::new(false),
            revoke_by_name: false,
            blind: AtomicBool::new(false),
        }
    }

    /// Without native expiry: the reaper must revoke at the end.
    pub fn without_native_expiry(mut self) -> Self {
        self.native_expiry = false;
        self
    }

    /// With another revocation kind (`RevocationKind::None`: cannot revoke early).
    pub fn with_revocation(mut self, kind: RevocationKind) -> Self {
        self.revocation = kind;
        self
    }

    /// With a maximum duration.
    pub fn with_max(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// Says it can revoke by derived name ([`Capabilities::revoke_by_name`]):
    /// [`Provider::record_by_name`] answers, and revoking its record
    /// revokes whatever was minted under the name.
    pub fn with_revoke_by_name(mut self) -> Self {
        self.revoke_by_name = true;
        self
    }

    /// Makes `find` see nothing (or see again), like STS, which cannot list
    /// the sessions a crashed process minted.
    pub fn blind(&self, yes: bool) {
        self.blind.store(yes, Ordering::SeqCst);
    }

    /// Makes every issue fail with `ProviderRejected`.
    pub fn fail_issue(&self, yes: bool) {
        self.fail_issue.store(yes, Ordering::SeqCst);
    }

    /// Makes the next `n` revocations fail with `Unavailable`.
    pub fn fail_next_revokes(&self, n: u32) {
        self.fail_revokes.store(n, Ordering::SeqCst);
    }

    /// After minting, never return (simulates a process killed mid-issue when
    /// the caller's task is then aborted).
    pub fn hang_after_mint(&self, yes: bool) {
        self.hang_after_mint.store(yes, Ordering::SeqCst);
    }

    /// Calls to `issue`.
    pub fn issue_calls(&self) -> usize {
        self.issue_calls.load(Ordering::SeqCst)
    }

    /// Calls to `revoke`.
    pub fn revoke_calls(&self) -> usize {
        self.revoke_calls.load(Ordering::SeqCst)
    }

    /// Minted grants still live (not revoked).
    pub fn live(&self) -> Vec<String> {
        let m = self.minted.lock().unwrap();
        let mut v: Vec<_> = m
            .iter()
            .filter(|(_, (_, r))| !r)
            .map(|(k, _)| k.clone())
            .collect();
        v.sort();
        v
    }

    /// Whether a grant with this external id was minted and then revoked.
    pub fn is_revoked(&self, external_id: &str) -> bool {
        self.minted
            .lock()
            .unwrap()
            .get(external_id)
            .is_some_and(|(_, r)| *r)
    }

    /// Every external id ever minted.
    pub fn minted(&self) -> Vec<String> {
        let mut v: Vec<_> = self.minted.lock().unwrap().keys().cloned().collect();
        v.sort();
        v
    }

    /// The secret the test provider puts in a token for this grant.
    pub fn secret_for(external_id: &str) -> String {
        format!("s3cr3t-token-value-for-{external_id}")
    }
}

#[async_trait]
impl Provider for TestProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            native_expiry: self.native_expiry,
            max_duration: self.max,
            min_duration: Duration::from_secs(1),
            revocation: self.revocation,
            revoke_by_name: self.revoke_by_name,
            tidy: false,
        }
    }

    fn validate(&self, _entitlement: &Entitlement) -> Result<()> {
        Ok(())
    }

    async fn issue(&self, spec: &GrantSpec) -> Result<Issued> {
        self.issue_calls.fetch_add(1, Ordering::SeqCst);
        let duration = spec.duration()?;
        if duration.get() > self.max {
            return Err(RequestError::DurationTooLong {
                requested: duration.to_string(),
                limit: format_duration(self.max),
            }
            .into());
        }
        if self.fail_issue.load(Ordering::SeqCst) {
            return Err(Error::ProviderRejected {
                provider: self.name.clone(),
                operation: "issue",
                message: "injected failure".into(),
            });
        }
        let name = spec.external_name();
        let grant = IssuedGrant {
            provider: self.name.clone(),
            external_id: name.clone(),
            expires_at: spec.ends_at,
            details: serde_json::json!({ "subject": spec.subject.id.as_str() }),
        };
        self.minted
            .lock()
            .unwrap()
            .entry(name.clone())
            .or_insert((grant.clone(), false));
        if self.hang_after_mint.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        Ok(Issued {
            grant,
            credentials: Credentials::LocalToken {
                token: Secret::new(Self::secret_for(&name)),
                expires_at: spec.ends_at,
            },
        })
    }

    async fn revoke(&self, issued: &IssuedGrant) -> Result<()> {
        self.revoke_calls.fetch_add(1, Ordering::SeqCst);
        let failing = self
            .fail_revokes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(Error::Unavailable {
                what: format!("provider `{}`", self.name),
                message: "injected revocation failure".into(),
            });
        }
        if let Some(e) = self.minted.lock().unwrap().get_mut(&issued.external_id) {
            e.1 = true;
        }
        Ok(())
    }

    async fn find(&self, spec: &GrantSpec) -> Result<Option<IssuedGrant>> {
        if self.blind.load(Ordering::SeqCst) {
            return Ok(None);
        }
        Ok(self
            .minted
            .lock()
            .unwrap()
            .get(&spec.external_name())
            .map(|(g, _)| g.clone()))
    }

    async fn record_by_name(&self, spec: &GrantSpec) -> Result<IssuedGrant> {
        if !self.revoke_by_name {
            return Err(Error::ProviderRejected {
                provider: self.name.clone(),
                operation: "revoke by name",
                message: "not supported".into(),
            });
        }
        Ok(IssuedGrant {
            provider: self.name.clone(),
            external_id: spec.external_name(),
            expires_at: spec.ends_at,
            details: serde_json::json!({ "by_name": true }),
        })
    }
}

/// A store wrapper that fails on demand (a full disk, a lost connection),
/// and counts the audit records read through it.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    fail_updates: AtomicBool,
    fail_updates_into: Mutex<Vec<State>>,
    crash_on_updates_into: Mutex<Vec<State>>,
    fail_prunes: AtomicBool,
    audit_read: std::sync::atomic::AtomicUsize,
}

impl FaultyStore {
    /// Wraps a store; nothing fails until told.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            fail_updates: AtomicBool::new(false),
            fail_updates_into: Mutex::new(Vec::new()),
            crash_on_updates_into: Mutex::new(Vec::new()),
            fail_prunes: AtomicBool::new(false),
            audit_read: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// How many audit records [`Store::audit`] has returned through this
    /// wrapper so far: what a pass over the chain cost.
    pub fn audit_records_read(&self) -> usize {
        self.audit_read.load(Ordering::SeqCst)
    }

    /// Makes every [`Store::prune`] fail before it changes anything: a
    /// crash between writing an archive and pruning what it holds.
    pub fn fail_prunes(&self, yes: bool) {
        self.fail_prunes.store(yes, Ordering::SeqCst);
    }

    /// Makes every update fail.
    pub fn fail_updates(&self, yes: bool) {
        self.fail_updates.store(yes, Ordering::SeqCst);
    }

    /// Makes updates that move a record into any of `states` fail.
    pub fn fail_updates_into(&self, states: &[State]) {
        *self.fail_updates_into.lock().unwrap() = states.to_vec();
    }

    /// Makes an update that moves a record into any of `states` abort the
    /// whole process before anything is written: a crash at that point, for
    /// tests that run the broker in a child process and restart it.
    pub fn crash_on_updates_into(&self, states: &[State]) {
        *self.crash_on_updates_into.lock().unwrap() = states.to_vec();
    }
}

#[async_trait]
impl Store for FaultyStore {
    async fn insert(
        &self,
        record: &RequestRecord,
        events: &[AuditEvent],
    ) -> Result<Vec<AuditRecord>> {
        self.inner.insert(record, events).await
    }

    async fn update(
        &self,
        expected_version: u64,
        record: &RequestRecord,
        events: &[AuditEvent],
    ) -> Result<Vec<AuditRecord>> {
        let into = self
            .fail_updates_into
            .lock()
            .unwrap()
            .contains(&record.state);
        if self
            .crash_on_updates_into
            .lock()
            .unwrap()
            .contains(&record.state)
        {
            eprintln!(
                "FaultyStore: crashing before request `{}` moves to `{}`",
                record.id, record.state
            );
            std::process::abort();
        }
        if self.fail_updates.load(Ordering::SeqCst) || into {
            return Err(Error::Store("injected store failure".into()));
        }
        self.inner.update(expected_version, record, events).await
    }

    async fn get(&self, id: RequestId) -> Result<Option<RequestRecord>> {
        self.inner.get(id).await
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<RequestRecord>> {
        self.inner.list(filter).await
    }

    async fn history(
        &self,
        query: &crate::store::HistoryQuery,
    ) -> Result<Vec<crate::store::HistoryEntry>> {
        self.inner.history(query).await
    }

    async fn risk_facts(
        &self,
        query: &crate::store::RiskFactsQuery,
    ) -> Result<crate::store::RiskFacts> {
        self.inner.risk_facts(query).await
    }

    async fn due(
        &self,
        states: &[State],
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<RequestRecord>> {
        self.inner.due(states, now, limit).await
    }

    async fn audit(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        let page = self.inner.audit(from_seq, limit).await?;
        self.audit_read.fetch_add(page.len(), Ordering::SeqCst);
        Ok(page)
    }

    async fn audit_entries(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        self.inner.audit_entries(from_seq, limit).await
    }

    async fn claim_due(
        &self,
        states: &[State],
        due_by: DateTime<Utc>,
        limit: usize,
        claim: &Claim,
    ) -> Result<Vec<RequestRecord>> {
        self.inner.claim_due(states, due_by, limit, claim).await
    }

    async fn release_claims(&self, ids: &[RequestId], claim: &Claim) -> Result<()> {
        self.inner.release_claims(ids, claim).await
    }

    async fn count_by_state(&self) -> Result<Vec<(State, u64)>> {
        self.inner.count_by_state().await
    }

    async fn audit_anchor(&self) -> Result<Option<crate::audit::AuditAnchor>> {
        self.inner.audit_anchor().await
    }

    async fn prune(&self, prune: &crate::store::Prune) -> Result<()> {
        if self.fail_prunes.load(Ordering::SeqCst) {
            return Err(Error::Store("injected prune failure".into()));
        }
        self.inner.prune(prune).await
    }

    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }

    async fn try_acquire_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        self.inner.try_acquire_lease(key, holder, ttl, now).await
    }

    async fn renew_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        self.inner.renew_lease(key, holder, ttl, now).await
    }

    async fn release_lease(&self, key: &str, holder: &str) -> Result<bool> {
        self.inner.release_lease(key, holder).await
    }
}

/// An audit sink that keeps records in memory and fails on demand.
#[derive(Debug, Default)]
pub struct MemorySink {
    records: Mutex<Vec<AuditRecord>>,
    failing: AtomicBool,
}

impl MemorySink {
    /// A working sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes appends fail (or work again).
    pub fn set_failing(&self, yes: bool) {
        self.failing.store(yes, Ordering::SeqCst);
    }

    /// Records received.
    pub fn records(&self) -> Vec<AuditRecord> {
        self.records.lock().unwrap().clone()
    }
}

#[async_trait]
impl AuditSink for MemorySink {
    async fn append(&self, record: &AuditRecord) -> Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(Error::AuditFailed("injected sink failure".into()));
        }
        self.records.lock().unwrap().push(record.clone());
        Ok(())
    }
}
