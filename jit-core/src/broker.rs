//! The broker: the one entry point a host application uses.
//!
//! Every operation reads the record, checks the rules against its current
//! state, and writes the next state with its audit events as one
//! compare-and-set. When another caller wins the race, the operation re-reads
//! and re-checks (so two approvers at once both count, while an approve that
//! loses against a cancel is refused with [`Error::InvalidState`]).
//!
//! # Rules kept on every path
//!
//! 1. A requester never counts toward their own quorum: not directly, not
//!    through a group, an alias, or a case, compatibility, invisible-character
//!    or confusable variant of their id ([`Principal::may_be_same_person`]).
//!    Each person counts once. Those widened comparisons only ever *refuse*:
//!    who owns a request, who may read it, collect its credentials, cancel,
//!    issue, extend or revoke it is decided on the exact subject id
//!    ([`Principal::is`]), and approver and admin sets name exact ids and
//!    groups.
//! 2. A grant ends at `min(requested, entitlement max, provider max)`; the
//!    provider's returned expiry is recorded as the truth.
//! 3. Transitions are compare-and-set on the record's version.
//! 4. The grant is recorded (`Issuing`, provider-side name derived from the
//!    grant id) before the provider is called, and credentials are returned
//!    only after the `issued` audit record is committed and copied to every
//!    sink. When that fails, what was minted is revoked (fail-closed).
//! 5. After a crash, [`Broker::reconcile`] settles `Issuing` grants with the
//!    provider (find by derived name, then revoke: the credentials never
//!    reached anyone) and resumes `Revoking` ones.
//! 6. Failed revocations are retried with capped exponential backoff, then
//!    shown as `RevocationFailed` and still retried at a slow pace.
//! 7. Time comes from the injected [`Clock`].
//!
//! # Several replicas
//!
//! Brokers in several processes may share one store (PostgreSQL). User
//! actions need nothing extra: they are compare-and-set. Time-driven work
//! (the reaper's) is taken with [`Store::claim_due`] under this broker's
//! [`Broker::replica_id`], so each due record is handled by one replica; a
//! claim lapses after [`BrokerBuilder::claim_lease`], which is how work
//! held by a replica that died is picked up by another. On a shared store
//! ([`Store::is_shared`]) a batch also stops taking new items once half its
//! lease has gone (the rest waits for the next tick), so no item is started
//! when its claim may lapse before it is done; and the reaper's first tick
//! does not treat every `Issuing` grant as left by a crash, since another
//! replica may be issuing it. Single-process stores keep the behaviour they
//! always had: their claims are plain [`Store::due`] queries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;

use crate::audit::{
    self, AuditCheckpoint, AuditEvent, AuditKeyring, AuditKind, AuditRecord, AuditSink,
    ChainSummary, ChainVerifier,
};
use crate::clock::{Clock, SystemClock};
use crate::credentials::Credentials;
use crate::error::{ConfigError, Error, RequestError, Result};
use crate::policy::{Policy, PolicyContext};
use crate::provider::{Collateral, GrantSpec, Provider, RevocationKind};
use crate::standing::Standing;
use crate::store::{Claim, ListFilter, Store};
use crate::types::{
    check_text, format_duration, AccessRequest, Approval, Decision, Entitlement, Grant,
    GrantDuration, GrantId, IssuedGrant, Principal, RequestId, RequestRecord, Revocation, State,
    Verdict,
};

/// Actor name used for steps the broker takes by itself.
pub const SYSTEM_ACTOR: &str = "jit-broker";
/// Actor name used for steps the reaper takes.
pub const REAPER_ACTOR: &str = "jit-reaper";

const MAX_CAS_ATTEMPTS: usize = 64;

/// How failed revocations are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay after the first failure; doubles each time.
    pub base: Duration,
    /// Longest delay between fast attempts.
    pub cap: Duration,
    /// Failed attempts before the grant is shown as `RevocationFailed`.
    pub fast_attempts: u32,
    /// Delay between attempts once `RevocationFailed`.
    pub slow_interval: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(5),
            cap: Duration::from_secs(300),
            fast_attempts: 6,
            slow_interval: Duration::from_secs(900),
        }
    }
}

impl RetryPolicy {
    /// Delay before the next attempt after `attempts` failures.
    pub fn delay(&self, attempts: u32) -> Duration {
        if attempts >= self.fast_attempts {
            return self.slow_interval;
        }
        let exp = attempts.saturating_sub(1).min(30);
        self.base.saturating_mul(1u32 << exp).min(self.cap)
    }
}

/// The result of an operation that may have minted credentials.
#[derive(Debug, Clone)]
pub struct IssueOutcome {
    /// The record after the operation.
    pub record: RequestRecord,
    /// Credentials, when this call issued them. Shown once: they are not stored.
    pub credentials: Option<Credentials>,
}

/// Builds a [`Broker`].
pub struct BrokerBuilder {
    store: Arc<dyn Store>,
    policy: Arc<dyn Policy>,
    providers: HashMap<String, Arc<dyn Provider>>,
    clock: Arc<dyn Clock>,
    sinks: Vec<Arc<dyn AuditSink>>,
    auto_issue: bool,
    retry: RetryPolicy,
    reconcile_grace: Duration,
    replica_id: Option<String>,
    claim_lease: Duration,
    audit_keyring: Option<AuditKeyring>,
    checkpoint_every: u64,
}

impl std::fmt::Debug for BrokerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerBuilder")
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .field("auto_issue", &self.auto_issue)
            .finish_non_exhaustive()
    }
}

impl BrokerBuilder {
    /// Starts with a store and a policy; add at least one provider.
    pub fn new(store: Arc<dyn Store>, policy: Arc<dyn Policy>) -> Self {
        Self {
            store,
            policy,
            providers: HashMap::new(),
            clock: Arc::new(SystemClock),
            sinks: Vec::new(),
            auto_issue: true,
            retry: RetryPolicy::default(),
            reconcile_grace: Duration::from_secs(120),
            replica_id: None,
            claim_lease: Duration::from_secs(60),
            audit_keyring: None,
            checkpoint_every: 100,
        }
    }

    /// Starts with the store that `url` names ([`crate::store::connect`]):
    /// `memory:`, `sqlite://path/to/jit.db`, `postgres://user@host/db`.
    pub async fn from_store_url(url: &str, policy: Arc<dyn Policy>) -> Result<Self> {
        Ok(Self::new(crate::store::connect(url).await?, policy))
    }

    /// Registers a provider under its [`Provider::name`].
    pub fn provider(mut self, provider: Arc<dyn Provider>) -> Self {
        self.providers.insert(provider.name().to_string(), provider);
        self
    }

    /// Uses this clock (tests move time with [`crate::ManualClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Copies every audit record to this sink too; a failing sink fails the operation.
    pub fn audit_sink(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.sinks.push(sink);
        self
    }

    /// Seals every audit record with the keyring's current key and signs
    /// checkpoints with it (see [`crate::audit`]). Keep the key outside the
    /// store: without it, someone who can write the database can rewrite the
    /// chain unseen.
    pub fn audit_keyring(mut self, keyring: AuditKeyring) -> Self {
        self.audit_keyring = Some(keyring);
        self
    }

    /// With an audit keyring, sends a signed checkpoint of the chain's head
    /// to every sink once this broker has appended `records` records since
    /// its last one (default 100; 1 is every commit), besides one on every
    /// reaper tick ([`Broker::checkpoint_audit`]). Records after the latest
    /// checkpoint could be cut off unseen: this bounds that window.
    pub fn checkpoint_every(mut self, records: u64) -> Self {
        self.checkpoint_every = records.max(1);
        self
    }

    /// Whether approval issues at once (default true). When false, call [`Broker::issue`].
    pub fn auto_issue(mut self, yes: bool) -> Self {
        self.auto_issue = yes;
        self
    }

    /// How failed revocations are retried.
    pub fn retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// How long an `Issuing` grant may sit before the running reaper treats it as
    /// left by a crash (default 2 minutes; at start all of them are).
    pub fn reconcile_grace(mut self, grace: Duration) -> Self {
        self.reconcile_grace = grace;
        self
    }

    /// Names this broker among the replicas sharing a store: its claims on
    /// due work carry this id (default: random per broker; an empty id also
    /// means random). Give each replica its own; a restarted process may
    /// reuse its id to take back its unfinished claims at once.
    pub fn replica_id(mut self, id: impl Into<String>) -> Self {
        self.replica_id = Some(id.into());
        self
    }

    /// How long claimed reaper work stays with this replica (default 60 s).
    /// Longer than twice the slowest provider call; a replica that dies holds
    /// its claims this long before another replica takes them over.
    pub fn claim_lease(mut self, lease: Duration) -> Self {
        self.claim_lease = lease;
        self
    }

    /// Checks that every entitlement names a registered provider that accepts its target.
    pub fn build(self) -> Result<Broker> {
        for e in self.policy.entitlements() {
            let p = self.providers.get(&e.provider).ok_or_else(|| {
                Error::Config(ConfigError::UnknownProvider {
                    entitlement: e.id.clone(),
                    provider: e.provider.clone(),
                })
            })?;
            p.validate(&e)?;
        }
        Ok(Broker {
            inner: Arc::new(Inner {
                store: self.store,
                policy: self.policy,
                providers: self.providers,
                clock: self.clock.clone(),
                sinks: self.sinks,
                auto_issue: self.auto_issue,
                retry: self.retry,
                reconcile_grace: self.reconcile_grace,
                replica_id: self
                    .replica_id
                    .filter(|id| !id.is_empty())
                    .unwrap_or_else(|| format!("broker-{}", uuid::Uuid::new_v4().simple())),
                claim_lease: self.claim_lease,
                started_at: self.clock.now(),
                skipped: Default::default(),
                audit_keyring: self.audit_keyring,
                checkpoint_every: self.checkpoint_every,
                checkpoints: std::sync::Mutex::new(CheckpointState::default()),
            }),
        })
    }
}

struct Inner {
    store: Arc<dyn Store>,
    policy: Arc<dyn Policy>,
    providers: HashMap<String, Arc<dyn Provider>>,
    clock: Arc<dyn Clock>,
    sinks: Vec<Arc<dyn AuditSink>>,
    auto_issue: bool,
    retry: RetryPolicy,
    reconcile_grace: Duration,
    replica_id: String,
    claim_lease: Duration,
    /// When this broker was built: older `Approved` records were left by an earlier process.
    started_at: DateTime<Utc>,
    /// Records the time-driven work skipped (see [`Broker::skipped_records`]).
    skipped: std::sync::atomic::AtomicU64,
    audit_keyring: Option<AuditKeyring>,
    checkpoint_every: u64,
    checkpoints: std::sync::Mutex<CheckpointState>,
}

/// The newest audit head this broker wrote, and the newest it checkpointed.
#[derive(Debug, Default)]
struct CheckpointState {
    written: Option<(u64, String)>,
    emitted: u64,
}

/// Work taken with [`Store::claim_due`], and until when this broker may start on it.
struct Claimed {
    records: Vec<RequestRecord>,
    /// Half the lease: an item started later might outlive the claim. `None`
    /// on single-process stores, where there is nobody to hand work over to.
    start_by: Option<DateTime<Utc>>,
}

impl Claimed {
    /// The records, cut off at the first one that may no longer be started.
    fn take<'a>(&'a self, clock: &'a Arc<dyn Clock>) -> impl Iterator<Item = &'a RequestRecord> {
        self.records
            .iter()
            .take_while(move |_| self.start_by.is_none_or(|t| clock.now() <= t))
    }
}

/// The broker. Cheap to clone; share it between tasks.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("store", &self.inner.store)
            .field(
                "providers",
                &self.inner.providers.keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn event(kind: AuditKind, rec: &RequestRecord, actor: &str, now: DateTime<Utc>) -> AuditEvent {
    AuditEvent::new(now, kind, rec.id, actor, rec.state).grant(rec.grant_id())
}

fn audit_failed(e: Error) -> Error {
    match e {
        Error::AuditFailed(m) => Error::AuditFailed(m),
        other => Error::AuditFailed(other.to_string()),
    }
}

fn check_reason(reason: &str) -> Result<()> {
    if reason.trim().is_empty() {
        return Err(RequestError::Reason("a reason is required".into()).into());
    }
    Ok(check_text("reason", reason)?)
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::seconds(d.as_secs().min(i64::MAX as u64 / 1000) as i64)
}

fn forbidden(p: &Principal, operation: &'static str, rec: &RequestRecord, reason: &str) -> Error {
    Error::Forbidden {
        principal: p.id.to_string(),
        operation,
        request: rec.id,
        reason: reason.to_string(),
    }
}

fn invalid_state(operation: &'static str, rec: &RequestRecord) -> Error {
    Error::InvalidState {
        operation,
        request: rec.id,
        state: rec.state,
    }
}

/// Whether an error says this replica cannot do a record's work at all (its
/// entitlement or provider is not configured here), as opposed to a failure
/// that a retry may fix. Such records are handed back to other replicas.
fn cannot_handle(e: &Error) -> bool {
    matches!(
        e,
        Error::InvalidRequest(RequestError::UnknownEntitlement(_))
            | Error::Config(ConfigError::UnknownProvider { .. })
    )
}

impl Broker {
    /// Starts a builder.
    pub fn builder(store: Arc<dyn Store>, policy: Arc<dyn Policy>) -> BrokerBuilder {
        BrokerBuilder::new(store, policy)
    }

    /// The clock in use.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The store in use.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The policy in use.
    pub fn policy(&self) -> &Arc<dyn Policy> {
        &self.inner.policy
    }

    /// This broker's name among replicas: the owner of its claims on due work.
    pub fn replica_id(&self) -> &str {
        &self.inner.replica_id
    }

    /// Claims due work for this replica (see the module docs).
    async fn claim_due(
        &self,
        states: &[State],
        due_by: DateTime<Utc>,
        limit: usize,
    ) -> Result<Claimed> {
        let now = self.inner.clock.now();
        let claim = Claim {
            owner: self.inner.replica_id.clone(),
            now,
            lease: self.inner.claim_lease,
        };
        let records = self
            .inner
            .store
            .claim_due(states, due_by, limit, &claim)
            .await?;
        let start_by = if self.inner.store.is_shared() {
            TimeDelta::from_std(self.inner.claim_lease / 2)
                .ok()
                .and_then(|half| now.checked_add_signed(half))
        } else {
            None
        };
        Ok(Claimed { records, start_by })
    }

    /// Hands claimed records back (see [`Store::release_claims`]): those this
    /// replica cannot handle (what a batch leaves unstarted stays claimed:
    /// this replica renews the claim on its next tick). A failure to
    /// release is only logged: the claims then lapse by themselves.
    async fn release(&self, ids: Vec<RequestId>) {
        if ids.is_empty() {
            return;
        }
        let claim = Claim {
            owner: self.inner.replica_id.clone(),
            now: self.inner.clock.now(),
            lease: self.inner.claim_lease,
        };
        if let Err(e) = self.inner.store.release_claims(&ids, &claim).await {
            tracing::warn!(error = %e, count = ids.len(), "could not hand back claimed records; their claims will lapse");
        }
    }

    /// Logs and counts a record the time-driven work skipped; one bad record
    /// never stops the work on the others (rule 9).
    fn skipped(&self, rec: &RequestRecord, work: &'static str, e: &Error) {
        self.inner
            .skipped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            request = %rec.id,
            entitlement = %rec.request.entitlement,
            state = %rec.state,
            work,
            error = %e,
            "skipped a record this replica cannot handle; handed to other replicas"
        );
    }

    /// How many records the time-driven work skipped because this replica
    /// could not handle them (an entitlement or provider not configured
    /// here), since the broker was built. Hosts export it as a metric.
    pub fn skipped_records(&self) -> u64 {
        self.inner
            .skipped
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn provider(&self, name: &str) -> Result<&Arc<dyn Provider>> {
        self.inner.providers.get(name).ok_or_else(|| {
            Error::Config(ConfigError::UnknownProvider {
                entitlement: String::new(),
                provider: name.to_string(),
            })
        })
    }

    fn entitlement(&self, id: &str) -> Result<Entitlement> {
        self.inner
            .policy
            .entitlement(id)
            .ok_or_else(|| RequestError::UnknownEntitlement(id.to_string()).into())
    }

    /// Events that the store will seal with the audit key, if there is one.
    fn seal(&self, events: Vec<AuditEvent>) -> Vec<AuditEvent> {
        match &self.inner.audit_keyring {
            Some(k) => events.into_iter().map(|e| e.sealed_with(Some(k))).collect(),
            None => events,
        }
    }

    /// Copies committed records to every sink, then a checkpoint when one is
    /// due; the first failure fails the call.
    async fn forward(&self, records: &[AuditRecord]) -> Result<()> {
        for sink in &self.inner.sinks {
            for r in records {
                sink.append(r).await.map_err(audit_failed)?;
            }
        }
        let due = {
            let mut cp = self.lock_checkpoints()?;
            if let Some(last) = records.iter().max_by_key(|r| r.seq) {
                if cp.written.as_ref().is_none_or(|(seq, _)| *seq < last.seq) {
                    cp.written = Some((last.seq, last.hash.clone()));
                }
            }
            cp.written.as_ref().is_some_and(|(seq, _)| {
                seq.saturating_sub(cp.emitted) >= self.inner.checkpoint_every
            })
        };
        if due {
            self.checkpoint_audit().await?;
        }
        Ok(())
    }

    fn lock_checkpoints(&self) -> Result<std::sync::MutexGuard<'_, CheckpointState>> {
        self.inner
            .checkpoints
            .lock()
            .map_err(|_| Error::AuditFailed("checkpoint state lock poisoned".into()))
    }

    /// With an audit keyring, sends every sink a signed checkpoint of the
    /// newest audit head this broker wrote, unless it was checkpointed
    /// already; returns it. The reaper calls this every tick.
    ///
    /// Only heads this broker appended itself are signed, never heads read
    /// back from the store: a checkpoint must not vouch for a chain someone
    /// else may have rewritten.
    pub async fn checkpoint_audit(&self) -> Result<Option<AuditCheckpoint>> {
        let Some(keyring) = &self.inner.audit_keyring else {
            return Ok(None);
        };
        let cp = {
            let state = self.lock_checkpoints()?;
            match &state.written {
                Some((seq, head)) if *seq > state.emitted => {
                    keyring.checkpoint(*seq, head, self.inner.clock.now())
                }
                _ => return Ok(None),
            }
        };
        for sink in &self.inner.sinks {
            sink.checkpoint(&cp).await.map_err(audit_failed)?;
        }
        let mut state = self.lock_checkpoints()?;
        state.emitted = state.emitted.max(cp.seq);
        Ok(Some(cp))
    }

    /// Reads, applies `f`, and writes with compare-and-set, re-reading on conflict.
    /// `f` returns the events to append; it sees the record with `updated_at` not yet set.
    async fn commit<F>(&self, id: RequestId, mut f: F) -> Result<(RequestRecord, Vec<AuditRecord>)>
    where
        F: FnMut(&mut RequestRecord, DateTime<Utc>) -> Result<Vec<AuditEvent>>,
    {
        let mut last = None;
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let current = self
                .inner
                .store
                .get(id)
                .await?
                .ok_or_else(|| Error::request_not_found(id))?;
            let now = self.inner.clock.now();
            let mut next = current.clone();
            let events = self.seal(f(&mut next, now)?);
            next.version = current.version + 1;
            next.updated_at = now;
            match self
                .inner
                .store
                .update(current.version, &next, &events)
                .await
            {
                Ok(recs) => return Ok((next, recs)),
                Err(e @ Error::Conflict { .. }) => {
                    last = Some(e);
                    if attempt > 4 {
                        tokio::time::sleep(Duration::from_millis(1 + attempt as u64)).await;
                    } else {
                        tokio::task::yield_now().await;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(Error::Conflict {
            request: id,
            expected: 0,
        }))
    }

    /// Submits a request. The policy decides at once:
    /// - deny: the record is stored as `Denied` with the reasons (a decision, not an error);
    /// - auto-approve: `Approved`, and issued at once when auto-issue is on and the start has come;
    /// - needs approval: `Pending` until approvers act or the pending TTL passes.
    ///
    /// Invalid fields are errors and nothing is stored.
    pub async fn submit(
        &self,
        requester: &Principal,
        request: AccessRequest,
    ) -> Result<IssueOutcome> {
        self.submit_inner(requester, request, None).await
    }

    async fn submit_inner(
        &self,
        requester: &Principal,
        request: AccessRequest,
        extends: Option<(RequestId, DateTime<Utc>)>,
    ) -> Result<IssueOutcome> {
        let now = self.inner.clock.now();
        request.validate(now)?;
        let ent = self.entitlement(&request.entitlement)?;
        let provider = self.provider(&ent.provider)?;
        let caps = provider.capabilities();
        if request.duration.get() < caps.min_duration {
            return Err(RequestError::DurationTooShort {
                requested: request.duration.to_string(),
                minimum: format_duration(caps.min_duration),
            }
            .into());
        }
        let ctx = PolicyContext {
            now,
            provider_max: caps.max_duration,
        };
        let decision = self
            .inner
            .policy
            .evaluate(requester, &request, &ent, &ctx)?;
        let mut rec = RequestRecord {
            id: RequestId::new(),
            version: 1,
            state: State::Pending,
            requester: requester.clone(),
            request: request.clone(),
            decision: decision.clone(),
            approvals: Vec::new(),
            grant: None,
            extends: extends.map(|(id, _)| id),
            revocation: None,
            pending_until: Some(now + delta(self.inner.policy.pending_ttl())),
            note: None,
            created_at: now,
            updated_at: now,
        };
        let mut events = vec![
            event(AuditKind::Requested, &rec, requester.id.as_str(), now).details(json!({
                "entitlement": request.entitlement,
                "provider": ent.provider,
                "duration_secs": request.duration.as_secs(),
                "start_at": request.start_at,
                "justification": request.justification,
                "ticket": request.ticket,
                "context": request.context,
                "groups": requester.groups,
                "extends": rec.extends,
            })),
        ];
        events.push(
            event(AuditKind::Decided, &rec, "policy", now).details(json!({ "decision": decision })),
        );
        match &decision.verdict {
            Verdict::Deny => {
                rec.state = State::Denied;
                rec.pending_until = None;
                rec.note = Some(decision.reasons.join("; "));
                events.push(
                    event(AuditKind::Denied, &rec, "policy", now)
                        .details(json!({ "reasons": decision.reasons })),
                );
            }
            Verdict::AutoApprove => {
                rec.state = State::Approved;
                rec.pending_until = None;
                rec.grant = Some(self.window(&rec, now, extends.map(|(_, end)| end)));
                events.push(
                    event(AuditKind::Approved, &rec, "policy", now)
                        .details(json!({ "auto": true, "reasons": decision.reasons })),
                );
            }
            Verdict::NeedsApproval { .. } => {}
        }
        // Each event records the state after it; the last one the final state.
        let n = events.len();
        for (i, e) in events.iter_mut().enumerate() {
            e.state = if i + 1 == n {
                rec.state
            } else {
                State::Pending
            };
            e.grant_id = rec.grant_id();
        }
        let events = self.seal(events);
        let recs = self.inner.store.insert(&rec, &events).await?;
        self.forward(&recs).await?;
        self.after_approval(rec, SYSTEM_ACTOR).await
    }

    /// Issues at once when the request is approved, auto-issue is on and the start has come.
    async fn after_approval(&self, rec: RequestRecord, actor: &str) -> Result<IssueOutcome> {
        let due = rec.state == State::Approved
            && self.inner.auto_issue
            && rec
                .grant
                .as_ref()
                .is_some_and(|g| g.starts_at <= self.inner.clock.now());
        if due {
            self.issue_as(rec.id, actor).await
        } else {
            Ok(IssueOutcome {
                record: rec,
                credentials: None,
            })
        }
    }

    /// The grant window at approval time: from the scheduled start (or now) for
    /// the approved length. An extension ends at the extended grant's end plus
    /// its length, and never more than the maximum from now.
    fn window(
        &self,
        rec: &RequestRecord,
        now: DateTime<Utc>,
        extends_end: Option<DateTime<Utc>>,
    ) -> Grant {
        let len = rec
            .request
            .duration
            .min(rec.decision.max_duration)
            .as_chrono();
        let max = rec.decision.max_duration.as_chrono();
        let starts_at = rec.request.start_at.map_or(now, |s| s.max(now));
        let ends_at = match extends_end {
            Some(end) => (end.max(now) + len).min(now + max),
            None => starts_at + len,
        };
        Grant {
            id: GrantId::new(),
            starts_at,
            ends_at,
            issued: None,
        }
    }

    /// Records an approval. When the quorum of distinct approvers (never the
    /// requester) is reached the request is approved, and issued at once when
    /// auto-issue is on.
    pub async fn approve(
        &self,
        approver: &Principal,
        id: RequestId,
        comment: &str,
    ) -> Result<IssueOutcome> {
        check_text("comment", comment)?;
        let extends_end = self.extends_end(id).await?;
        let (rec, recs) = self
            .commit(id, |rec, now| {
                if rec.state != State::Pending {
                    return Err(invalid_state("approve", rec));
                }
                let (approvers, quorum) = match &rec.decision.verdict {
                    Verdict::NeedsApproval { approvers, quorum } => (approvers, *quorum),
                    _ => return Err(invalid_state("approve", rec)),
                };
                if approver.may_be_same_person(&rec.requester) {
                    return Err(forbidden(
                        approver,
                        "approve",
                        rec,
                        "requesters may not approve their own requests",
                    ));
                }
                if !approvers.contains(approver) && !self.inner.policy.is_admin(approver) {
                    return Err(forbidden(
                        approver,
                        "approve",
                        rec,
                        "not an approver for this entitlement",
                    ));
                }
                if rec
                    .approvals
                    .iter()
                    .any(|a| a.approver.may_be_same_person(approver))
                {
                    return Err(forbidden(
                        approver,
                        "approve",
                        rec,
                        "already approved by this person",
                    ));
                }
                rec.approvals.push(Approval {
                    approver: approver.clone(),
                    at: now,
                    comment: comment.to_string(),
                });
                let count = rec.approvals.len() as u32;
                if count >= quorum {
                    rec.state = State::Approved;
                    rec.pending_until = None;
                    rec.grant = Some(self.window(rec, now, extends_end));
                }
                Ok(vec![event(
                    AuditKind::Approved,
                    rec,
                    approver.id.as_str(),
                    now,
                )
                .details(
                    json!({ "approvals": count, "quorum": quorum, "comment": comment }),
                )])
            })
            .await?;
        self.forward(&recs).await?;
        self.after_approval(rec, approver.id.as_str()).await
    }

    async fn extends_end(&self, id: RequestId) -> Result<Option<DateTime<Utc>>> {
        let rec = self.get(id).await?;
        match rec.extends {
            None => Ok(None),
            Some(orig) => Ok(self.get(orig).await?.ends_at()),
        }
    }

    /// Denies a pending request (an approver or an admin, never the requester: they cancel).
    pub async fn deny(
        &self,
        approver: &Principal,
        id: RequestId,
        reason: &str,
    ) -> Result<RequestRecord> {
        check_reason(reason)?;
        let (rec, recs) = self
            .commit(id, |rec, now| {
                if rec.state != State::Pending {
                    return Err(invalid_state("deny", rec));
                }
                if approver.may_be_same_person(&rec.requester) {
                    return Err(forbidden(
                        approver,
                        "deny",
                        rec,
                        "requesters cancel their own requests instead",
                    ));
                }
                let allowed = match &rec.decision.verdict {
                    Verdict::NeedsApproval { approvers, .. } => approvers.contains(approver),
                    _ => false,
                } || self.inner.policy.is_admin(approver);
                if !allowed {
                    return Err(forbidden(
                        approver,
                        "deny",
                        rec,
                        "not an approver for this entitlement",
                    ));
                }
                rec.state = State::Denied;
                rec.pending_until = None;
                rec.note = Some(reason.to_string());
                Ok(vec![event(
                    AuditKind::Denied,
                    rec,
                    approver.id.as_str(),
                    now,
                )
                .details(json!({ "reason": reason }))])
            })
            .await?;
        self.forward(&recs).await?;
        Ok(rec)
    }

    /// Withdraws a request that has not been issued (the requester or an admin).
    pub async fn cancel(
        &self,
        requester: &Principal,
        id: RequestId,
        reason: &str,
    ) -> Result<RequestRecord> {
        check_text("reason", reason)?;
        let (rec, recs) = self
            .commit(id, |rec, now| {
                if !matches!(rec.state, State::Pending | State::Approved) {
                    return Err(invalid_state("cancel", rec));
                }
                if !Standing::of(self.inner.policy.as_ref(), requester, rec).may_manage() {
                    return Err(forbidden(
                        requester,
                        "cancel",
                        rec,
                        "only the requester or an admin may cancel",
                    ));
                }
                rec.state = State::Cancelled;
                rec.pending_until = None;
                rec.note = (!reason.is_empty()).then(|| reason.to_string());
                Ok(vec![event(
                    AuditKind::Cancelled,
                    rec,
                    requester.id.as_str(),
                    now,
                )
                .details(json!({ "reason": reason }))])
            })
            .await?;
        self.forward(&recs).await?;
        Ok(rec)
    }

    /// Issues an approved request (the requester or an admin). Credentials are
    /// returned once; they are not stored.
    pub async fn issue(&self, actor: &Principal, id: RequestId) -> Result<IssueOutcome> {
        let rec = self.get(id).await?;
        if !Standing::of(self.inner.policy.as_ref(), actor, &rec).may_manage() {
            return Err(forbidden(
                actor,
                "issue",
                &rec,
                "only the requester or an admin may issue",
            ));
        }
        self.issue_as(id, actor.id.as_str()).await
    }

    /// Delivers the credentials of an active grant again, to its requester only
    /// (a host serving them over HTTP does not keep them: they are not stored).
    ///
    /// The provider's `issue` is called again for the recorded grant: providers
    /// are idempotent by grant id, so this returns the same grant (for the local
    /// provider, the same token) or fresh credentials for the same window, never
    /// a longer one: the window ends at the recorded end. An `issued` audit
    /// record with `details.redelivered = true` is committed before anything is
    /// returned. Someone else's request answers like a missing one; a grant too
    /// close to its end for the provider's minimum is [`Error::InvalidState`].
    pub async fn credentials(&self, requester: &Principal, id: RequestId) -> Result<Credentials> {
        let rec = self.get(id).await?;
        if !Standing::of(self.inner.policy.as_ref(), requester, &rec).may_collect() {
            return Err(Error::request_not_found(id));
        }
        let issued = match (
            rec.state,
            rec.grant.as_ref().and_then(|g| g.issued.as_ref()),
        ) {
            (State::Active, Some(i)) => i.clone(),
            _ => return Err(invalid_state("deliver credentials for", &rec)),
        };
        let provider = self.provider(&issued.provider)?.clone();
        let now = self.inner.clock.now();
        let mut spec = self.spec(&rec)?;
        let remaining = spec.ends_at - now;
        if remaining < delta(provider.capabilities().min_duration) {
            return Err(Error::InvalidState {
                operation: "deliver credentials (too little time left for the provider) for",
                request: id,
                state: rec.state,
            });
        }
        spec.starts_at = now;
        let out = provider.issue(&spec).await?;
        let external_id = out.grant.external_id.clone();
        let (_, recs) = self
            .commit(id, |r, now| {
                if r.state != State::Active || r.grant_id() != Some(spec.grant_id) {
                    return Err(invalid_state("deliver credentials for", r));
                }
                Ok(vec![event(
                    AuditKind::Issued,
                    r,
                    requester.id.as_str(),
                    now,
                )
                .details(json!({
                    "redelivered": true,
                    "provider": issued.provider,
                    "external_id": external_id,
                    "expires_at": out.credentials.expires_at(),
                }))])
            })
            .await?;
        self.forward(&recs).await?;
        Ok(out.credentials)
    }

    pub(crate) async fn issue_as(&self, id: RequestId, actor: &str) -> Result<IssueOutcome> {
        // 1. Record the grant as Issuing, with its final window, before calling anyone.
        let mut provider_name = String::new();
        let (rec, _) = self
            .commit(id, |rec, now| {
                if rec.state != State::Approved {
                    return Err(invalid_state("issue", rec));
                }
                let ent = self.entitlement(&rec.request.entitlement)?;
                let caps = self.provider(&ent.provider)?.capabilities();
                let max = rec
                    .decision
                    .max_duration
                    .as_chrono()
                    .min(delta(caps.max_duration));
                let is_extension = rec.extends.is_some();
                if rec.grant.is_none() {
                    return Err(invalid_state("issue", rec));
                }
                let request_id = rec.id;
                let Some(g) = rec.grant.as_mut() else {
                    return Err(Error::Store(format!("request `{request_id}` has no grant")));
                };
                if g.starts_at > now {
                    return Err(RequestError::NotYetStarted {
                        request: request_id,
                        starts_at: g.starts_at.to_rfc3339(),
                    }
                    .into());
                }
                let ends = if is_extension {
                    g.ends_at
                } else {
                    now + (g.ends_at - g.starts_at)
                }
                .min(now + max);
                if ends <= now {
                    return Err(Error::InvalidState {
                        operation: "issue (window already over)",
                        request: request_id,
                        state: State::Approved,
                    });
                }
                g.starts_at = now;
                g.ends_at = ends;
                rec.state = State::Issuing;
                provider_name = ent.provider;
                Ok(Vec::new())
            })
            .await?;
        let provider = self.provider(&provider_name)?.clone();
        let spec = self.spec(&rec)?;

        // 2. Mint.
        let issued = match provider.issue(&spec).await {
            Ok(i) => i,
            Err(e) => {
                let msg = e.to_string();
                let settled = self
                    .commit(id, |rec, now| {
                        if rec.state != State::Issuing {
                            return Err(invalid_state("record issue failure", rec));
                        }
                        rec.state = State::Failed;
                        rec.note = Some(msg.clone());
                        Ok(vec![event(AuditKind::IssueFailed, rec, actor, now)
                            .details(
                                json!({ "provider": provider_name, "error": msg }),
                            )])
                    })
                    .await;
                if let Ok((_, recs)) = settled {
                    // The provider error is what the caller needs; a sink failure here
                    // leaves nothing minted, so it is only logged.
                    if let Err(se) = self.forward(&recs).await {
                        tracing::error!(request = %id, error = %se, "audit sink failed recording an issue failure");
                    }
                }
                return Err(e);
            }
        };

        // 3. Record it as Active with its `issued` audit record.
        let record_issued = self
            .commit(id, |rec, now| {
                if rec.state != State::Issuing {
                    return Err(invalid_state("record issue", rec));
                }
                let g = rec.grant.as_mut().ok_or_else(|| Error::Store("issuing record without grant".into()))?;
                if issued.grant.expires_at > g.ends_at {
                    tracing::warn!(request = %rec.id, provider = %issued.grant.provider, "provider returned an expiry later than asked; recording the provider's value");
                }
                // The provider's expiry is the source of truth.
                g.ends_at = issued.grant.expires_at;
                g.issued = Some(issued.grant.clone());
                let starts_at = g.starts_at;
                rec.state = State::Active;
                Ok(vec![event(AuditKind::Issued, rec, actor, now).details(json!({
                    "provider": issued.grant.provider,
                    "external_id": issued.grant.external_id,
                    "starts_at": starts_at,
                    "expires_at": issued.grant.expires_at,
                    "details": issued.grant.details,
                }))])
            })
            .await;
        let (rec, recs) = match record_issued {
            Ok(v) => v,
            Err(e) => {
                // Could not record: take back what was minted (fail-closed).
                self.undo_mint(id, &provider, &issued.grant, actor, &e)
                    .await;
                return Err(e);
            }
        };

        // 4. Copy to the sinks before anything leaves the broker.
        if let Err(e) = self.forward(&recs).await {
            tracing::error!(request = %id, error = %e, "audit sink failed; revoking what was minted");
            let reason = format!("audit sink failed: {e}");
            let _ = self
                .revoke_inner(id, SYSTEM_ACTOR, &reason, false, |_| Ok(()))
                .await;
            return Err(e);
        }
        Ok(IssueOutcome {
            record: rec,
            credentials: Some(issued.credentials),
        })
    }

    /// After a mint that could not be recorded: revoke at the provider, then
    /// try to record the failure. If even that fails, the grant stays `Issuing`
    /// and the reconciler settles it.
    async fn undo_mint(
        &self,
        id: RequestId,
        provider: &Arc<dyn Provider>,
        issued: &crate::types::IssuedGrant,
        actor: &str,
        cause: &Error,
    ) {
        let revoked = provider.revoke(issued).await;
        if let Err(e) = &revoked {
            tracing::error!(request = %id, error = %e, "could not revoke a grant that failed to record; the reconciler will retry");
        }
        let msg = cause.to_string();
        let res = self
            .commit(id, |rec, now| {
                if rec.state != State::Issuing {
                    return Err(invalid_state("record issue failure", rec));
                }
                let ev;
                if revoked.is_ok() {
                    rec.state = State::Failed;
                    ev = AuditKind::IssueFailed;
                } else {
                    // Minted and still live: keep the provider record so it can be revoked.
                    if let Some(g) = rec.grant.as_mut() {
                        g.issued = Some(issued.clone());
                    }
                    rec.state = State::Revoking;
                    rec.revocation = Some(Revocation {
                        by: SYSTEM_ACTOR.into(),
                        reason: format!("could not record issue: {msg}"),
                        expiry: false,
                        attempts: 1,
                        last_error: revoked.as_ref().err().map(|e| e.to_string()),
                        next_attempt_at: now + delta(self.inner.retry.delay(1)),
                    });
                    ev = AuditKind::IssueFailed;
                }
                rec.note = Some(msg.clone());
                Ok(vec![event(ev, rec, actor, now).details(json!({
                    "error": msg,
                    "minted_and_revoked": revoked.is_ok(),
                }))])
            })
            .await;
        if let Ok((_, recs)) = res {
            if let Err(e) = self.forward(&recs).await {
                tracing::error!(request = %id, error = %e, "audit sink failed recording an issue failure");
            }
        }
    }

    fn spec(&self, rec: &RequestRecord) -> Result<GrantSpec> {
        let g = rec
            .grant
            .as_ref()
            .ok_or_else(|| Error::Store(format!("request `{}` has no grant", rec.id)))?;
        Ok(GrantSpec {
            grant_id: g.id,
            request_id: rec.id,
            subject: rec.requester.clone(),
            entitlement: self.entitlement(&rec.request.entitlement)?,
            starts_at: g.starts_at,
            ends_at: g.ends_at,
            justification: rec.request.justification.clone(),
            ticket: rec.request.ticket.clone(),
        })
    }

    /// Revokes an active grant early (its requester, one of its approvers, or an admin).
    ///
    /// Returns the record: `Revoked` when the provider confirmed, or `Revoking`
    /// / `RevocationFailed` with the provider's error when it did not (the
    /// reaper keeps retrying). Revoking a revoked grant returns it unchanged.
    pub async fn revoke(
        &self,
        actor: &Principal,
        id: RequestId,
        reason: &str,
    ) -> Result<RequestRecord> {
        check_reason(reason)?;
        let policy = self.inner.policy.clone();
        let who = actor.clone();
        let authorize = move |rec: &RequestRecord| {
            if Standing::of(policy.as_ref(), &who, rec).may_revoke() {
                Ok(())
            } else {
                Err(forbidden(
                    &who,
                    "revoke",
                    rec,
                    "only the requester, an approver or an admin may revoke",
                ))
            }
        };
        // Rule 6: a provider that cannot revoke early says so; the broker refuses
        // instead of pretending (the access still ends at its natural expiry).
        let current = self.get(id).await?;
        authorize(&current)?;
        if let Some(issued) = current.grant.as_ref().and_then(|g| g.issued.as_ref()) {
            let caps = self.provider(&issued.provider)?.capabilities();
            if caps.revocation == RevocationKind::None && current.state == State::Active {
                return Err(Error::ProviderRejected {
                    provider: issued.provider.clone(),
                    operation: "revoke",
                    message: format!(
                        "these credentials cannot be revoked early; they expire at {}",
                        issued.expires_at.to_rfc3339()
                    ),
                });
            }
        }
        self.revoke_inner(id, actor.id.as_str(), reason, false, authorize)
            .await
    }

    async fn revoke_inner<A>(
        &self,
        id: RequestId,
        actor: &str,
        reason: &str,
        expiry: bool,
        authorize: A,
    ) -> Result<RequestRecord>
    where
        A: Fn(&RequestRecord) -> Result<()>,
    {
        let started = self
            .commit(id, |rec, now| {
                authorize(rec)?;
                if rec.state != State::Active {
                    return Err(invalid_state("revoke", rec));
                }
                rec.state = State::Revoking;
                rec.revocation = Some(Revocation {
                    by: actor.to_string(),
                    reason: reason.to_string(),
                    expiry,
                    attempts: 0,
                    last_error: None,
                    // This call makes the first attempt; the reaper steps in only if
                    // it has not finished within the grace (a crash mid-revoke).
                    next_attempt_at: now + delta(self.inner.reconcile_grace),
                });
                Ok(Vec::new())
            })
            .await;
        match started {
            Ok((rec, _)) => self.attempt_revocation(rec).await,
            Err(Error::InvalidState { state, .. })
                if !expiry
                    && matches!(
                        state,
                        State::Revoked | State::Revoking | State::RevocationFailed
                    ) =>
            {
                // Idempotent: already revoked or being revoked.
                self.get(id).await
            }
            Err(e) => Err(e),
        }
    }

    /// One provider revocation attempt for a `Revoking`/`RevocationFailed` record.
    pub(crate) async fn attempt_revocation(&self, rec: RequestRecord) -> Result<RequestRecord> {
        let issued = rec
            .grant
            .as_ref()
            .and_then(|g| g.issued.clone())
            .ok_or_else(|| {
                Error::Store(format!("request `{}` has nothing issued to revoke", rec.id))
            })?;
        let provider = self.provider(&issued.provider)?.clone();
        let result = match provider.revoke_reporting(&issued).await {
            Ok(outcome) => {
                if let Some(collateral) = &outcome.collateral {
                    // Before this record's own commit: the other grants are
                    // cut off at the provider whatever happens to this one.
                    self.record_collateral(&provider, &rec, collateral).await;
                }
                Ok(())
            }
            Err(e) => Err(e),
        };
        let retry = self.inner.retry.clone();
        let (next, recs) = self
            .commit(rec.id, |r, now| {
                if !matches!(r.state, State::Revoking | State::RevocationFailed) {
                    return Err(invalid_state("record revocation", r));
                }
                let Some(rv) = r.revocation.as_mut() else {
                    return Err(Error::Store(format!(
                        "request `{}` is revoking without a revocation",
                        r.id
                    )));
                };
                match &result {
                    Ok(()) => {
                        let (state, kind) = if rv.expiry {
                            (State::Expired, AuditKind::Expired)
                        } else {
                            (State::Revoked, AuditKind::Revoked)
                        };
                        let details = json!({
                            "reason": rv.reason,
                            "by": rv.by,
                            "attempts": rv.attempts + 1,
                        });
                        let by = rv.by.clone();
                        r.state = state;
                        Ok(vec![event(kind, r, &by, now).details(details)])
                    }
                    Err(e) => {
                        rv.attempts += 1;
                        rv.last_error = Some(e.to_string());
                        rv.next_attempt_at = now + delta(retry.delay(rv.attempts));
                        let details = json!({ "attempts": rv.attempts, "error": e.to_string() });
                        if rv.attempts >= retry.fast_attempts && r.state == State::Revoking {
                            r.state = State::RevocationFailed;
                            r.note = rv.last_error.clone();
                            Ok(vec![event(
                                AuditKind::RevocationFailed,
                                r,
                                REAPER_ACTOR,
                                now,
                            )
                            .details(details)])
                        } else {
                            Ok(Vec::new())
                        }
                    }
                }
            })
            .await?;
        self.forward(&recs).await?;
        Ok(next)
    }

    /// Records every other live grant of `provider` that a coarse revocation
    /// of `origin` cut off ([`Provider::cut_off_by`]) as `Revoked`, each
    /// with its own audit record naming the grant whose revocation caused
    /// it, and warns like a failed revocation does (rule 8: the collateral
    /// of a coarse revocation is recorded, never silently lost). A record
    /// that cannot be updated is logged and skipped (rule 9); it stays in its
    /// state and its own revocation, if any, goes on.
    async fn record_collateral(
        &self,
        provider: &Arc<dyn Provider>,
        origin: &RequestRecord,
        collateral: &Collateral,
    ) {
        let origin_grant = origin
            .grant_id()
            .map_or_else(|| origin.id.to_string(), |g| g.to_string());
        let reason = format!("collateral of role-wide revocation of grant {origin_grant}");
        let actor = origin
            .revocation
            .as_ref()
            .map_or(REAPER_ACTOR.to_string(), |rv| rv.by.clone());
        tracing::warn!(
            provider = provider.name(),
            request = %origin.id,
            grant = %origin_grant,
            scope = %collateral.scope,
            issued_before = %collateral.issued_before,
            cause = %collateral.cause,
            "revocation fell back to a role-wide deny; recording the other grants it cut off"
        );
        let live = [State::Active, State::Revoking, State::RevocationFailed];
        let records = match self
            .inner
            .store
            .list(&ListFilter {
                states: live.to_vec(),
                limit: 10_000,
                ..ListFilter::default()
            })
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, scope = %collateral.scope, "cannot list the grants a role-wide revocation cut off; they stay recorded as live");
                return;
            }
        };
        for rec in records {
            let cut = rec.id != origin.id
                && rec
                    .grant
                    .as_ref()
                    .and_then(|g| g.issued.as_ref())
                    .is_some_and(|i| {
                        i.provider == provider.name() && provider.cut_off_by(collateral, i)
                    });
            if !cut {
                continue;
            }
            let committed = self
                .commit(rec.id, |r, now| {
                    if !live.contains(&r.state) {
                        return Err(invalid_state("record collateral revocation", r));
                    }
                    let previous = r.state;
                    r.state = State::Revoked;
                    r.note = Some(reason.clone());
                    r.revocation = Some(Revocation {
                        by: actor.clone(),
                        reason: reason.clone(),
                        expiry: false,
                        attempts: r.revocation.as_ref().map_or(0, |rv| rv.attempts),
                        last_error: None,
                        next_attempt_at: now,
                    });
                    Ok(vec![event(AuditKind::Revoked, r, &actor, now).details(
                        json!({
                            "reason": reason,
                            "by": actor,
                            "collateral_of": origin_grant,
                            "collateral_of_request": origin.id.to_string(),
                            "scope": collateral.scope,
                            "issued_before": collateral.issued_before.to_rfc3339(),
                            "cause": collateral.cause,
                            "previous_state": previous.as_str(),
                        }),
                    )])
                })
                .await;
            match committed {
                Ok((_, recs)) => {
                    tracing::warn!(request = %rec.id, collateral_of = %origin_grant, scope = %collateral.scope, "grant revoked as collateral of a role-wide revocation");
                    if let Err(e) = self.forward(&recs).await {
                        tracing::error!(request = %rec.id, error = %e, "audit sink failed for a collateral revocation");
                    }
                }
                Err(Error::InvalidState { .. }) => {}
                Err(e) => {
                    tracing::error!(request = %rec.id, error = %e, scope = %collateral.scope, "cannot record a grant cut off by a role-wide revocation")
                }
            }
        }
    }

    /// Asks for more time on an active grant: a new request linked to it,
    /// decided by the same policy and bounds. Once issued, its grant ends at
    /// the old end plus the extra duration, never more than the maximum from now.
    pub async fn extend(
        &self,
        requester: &Principal,
        id: RequestId,
        extra: GrantDuration,
        justification: &str,
    ) -> Result<IssueOutcome> {
        let orig = self.get(id).await?;
        if !Standing::of(self.inner.policy.as_ref(), requester, &orig).may_collect() {
            // Someone else's grant answers like a missing one.
            return Err(Error::request_not_found(id));
        }
        let end = match (orig.state, orig.ends_at()) {
            (State::Active, Some(end)) => end,
            _ => return Err(RequestError::NotExtendable(id).into()),
        };
        let mut req = AccessRequest::new(&orig.request.entitlement, extra, justification);
        req.ticket = orig.request.ticket.clone();
        req.context = orig.request.context.clone();
        req.context.insert("extends".into(), id.to_string());
        self.submit_inner(requester, req, Some((id, end))).await
    }

    /// One record.
    pub async fn get(&self, id: RequestId) -> Result<RequestRecord> {
        self.inner
            .store
            .get(id)
            .await?
            .ok_or_else(|| Error::request_not_found(id))
    }

    /// Records matching a filter, newest first.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<RequestRecord>> {
        self.inner.store.list(filter).await
    }

    /// Pending requests the principal may approve (never their own), newest
    /// first, at most 1,000.
    ///
    /// The store is asked only for pending requests of the entitlements the
    /// policy says this principal approves
    /// ([`Policy::approvable_entitlements`]; every entitlement for admins),
    /// so requests for entitlements they do not approve never take their
    /// place under the limit.
    pub async fn awaiting_approval_by(&self, approver: &Principal) -> Result<Vec<RequestRecord>> {
        let admin = self.inner.policy.is_admin(approver);
        let entitlements = if admin {
            Vec::new()
        } else {
            match self.inner.policy.approvable_entitlements(approver) {
                Some(ids) if ids.is_empty() => return Ok(Vec::new()),
                Some(ids) => ids,
                None => Vec::new(),
            }
        };
        let pending = self
            .list(&ListFilter {
                states: vec![State::Pending],
                entitlements,
                limit: 1000,
                ..Default::default()
            })
            .await?;
        Ok(pending
            .into_iter()
            .filter(|r| !approver.may_be_same_person(&r.requester))
            .filter(|r| match &r.decision.verdict {
                Verdict::NeedsApproval { approvers, .. } => admin || approvers.contains(approver),
                _ => false,
            })
            .filter(|r| {
                !r.approvals
                    .iter()
                    .any(|a| a.approver.may_be_same_person(approver))
            })
            .collect())
    }

    /// The whole audit chain.
    pub async fn audit_records(&self) -> Result<Vec<AuditRecord>> {
        crate::store::audit_all(self.inner.store.as_ref()).await
    }

    /// Verifies the stored chain, and every seal when the broker has an
    /// audit keyring; `Ok(Err(break))` names the first broken record. A
    /// stored row that does not decode is such a break, not an error. To
    /// check against checkpoints too, use [`Broker::verify_audit_with`].
    pub async fn verify_audit(
        &self,
    ) -> Result<std::result::Result<ChainSummary, audit::ChainBreak>> {
        self.verify_audit_with(&self.audit_verifier()).await
    }

    /// A verifier holding this broker's audit keyring, if any.
    pub fn audit_verifier(&self) -> ChainVerifier {
        match &self.inner.audit_keyring {
            Some(k) => ChainVerifier::new().keyring(k.clone()),
            None => ChainVerifier::new(),
        }
    }

    /// Verifies the stored chain with `verifier` (a keyring, checkpoints);
    /// `Ok(Err(break))` names the first broken record, an undecodable row
    /// included. `Err` only when the store cannot be read.
    pub async fn verify_audit_with(
        &self,
        verifier: &ChainVerifier,
    ) -> Result<std::result::Result<ChainSummary, audit::ChainBreak>> {
        let entries = crate::store::audit_entries_all(self.inner.store.as_ref()).await?;
        Ok(verifier.verify_entries(&entries))
    }

    /// Writes the chain as JSON Lines.
    pub async fn export_audit<W: std::io::Write>(&self, out: W) -> Result<()> {
        let recs = self.audit_records().await?;
        audit::export_jsonl(&recs, out).map_err(|e| Error::AuditFailed(format!("export: {e}")))
    }

    // ---- time-driven work, used by the reaper ----

    /// Expires active grants whose end has passed: natively expiring ones are
    /// marked `Expired`; others are revoked at the provider first.
    pub async fn expire_due(&self, limit: usize) -> Result<usize> {
        let now = self.inner.clock.now();
        let due = self.claim_due(&[State::Active], now, limit).await?;
        let mut n = 0;
        let mut release = Vec::new();
        for rec in due.take(&self.inner.clock) {
            let native = rec
                .grant
                .as_ref()
                .and_then(|g| g.issued.as_ref())
                .and_then(|i| self.inner.providers.get(&i.provider))
                .is_some_and(|p| p.capabilities().native_expiry);
            let res = if native {
                self.commit(rec.id, |r, now| {
                    if r.state != State::Active || r.ends_at().is_none_or(|e| e > now) {
                        return Err(invalid_state("expire", r));
                    }
                    r.state = State::Expired;
                    Ok(vec![event(AuditKind::Expired, r, REAPER_ACTOR, now)
                        .details(json!({ "native": true }))])
                })
                .await
            } else {
                self.revoke_inner(rec.id, REAPER_ACTOR, "grant window ended", true, |_| Ok(()))
                    .await
                    .map(|r| (r, Vec::new()))
            };
            match res {
                Ok((_, recs)) => {
                    self.forward(&recs).await?;
                    n += 1;
                }
                Err(Error::InvalidState { .. }) => {} // someone else settled it first
                Err(e) if cannot_handle(&e) => {
                    self.skipped(rec, "expire", &e);
                    release.push(rec.id);
                }
                Err(e) => {
                    tracing::warn!(request = %rec.id, error = %e, "expiry failed; will retry")
                }
            }
        }
        self.release(release).await;
        Ok(n)
    }

    /// Times out pending requests past their TTL, and settles approved ones:
    /// issues those whose start has come (with auto-issue) and expires those
    /// whose window passed without being issued.
    pub async fn settle_waiting(&self, limit: usize) -> Result<usize> {
        let now = self.inner.clock.now();
        let mut n = 0;
        let pending = self.claim_due(&[State::Pending], now, limit).await?;
        for rec in pending.take(&self.inner.clock) {
            let res = self
                .commit(rec.id, |r, now| {
                    if r.state != State::Pending || r.pending_until.is_none_or(|p| p > now) {
                        return Err(invalid_state("time out", r));
                    }
                    r.state = State::TimedOut;
                    r.pending_until = None;
                    Ok(vec![event(AuditKind::TimedOut, r, REAPER_ACTOR, now)
                        .details(json!({ "approvals": r.approvals.len() }))])
                })
                .await;
            match res {
                Ok((_, recs)) => {
                    self.forward(&recs).await?;
                    n += 1;
                }
                Err(Error::InvalidState { .. }) => {}
                Err(e) => {
                    tracing::warn!(request = %rec.id, error = %e, "timeout failed; will retry")
                }
            }
        }
        let approved = self.claim_due(&[State::Approved], now, limit).await?;
        let mut release = Vec::new();
        for rec in approved.take(&self.inner.clock) {
            let over = rec.ends_at().is_some_and(|e| e <= now);
            let res = if over {
                self.commit(rec.id, |r, now| {
                    if r.state != State::Approved {
                        return Err(invalid_state("expire", r));
                    }
                    r.state = State::Expired;
                    Ok(vec![event(AuditKind::Expired, r, REAPER_ACTOR, now)
                        .details(json!({ "issued": false }))])
                })
                .await
                .map(|(_, recs)| recs)
            } else if self.inner.auto_issue {
                // The call that approved a request with an immediate start issues it
                // itself; issuing it here too races that call and answers its caller
                // with an error although the grant is issued. Step in only for a
                // scheduled start, a record left by an earlier process, or one whose
                // approving call has not issued it within the grace (it crashed).
                let immediate = rec
                    .grant
                    .as_ref()
                    .is_some_and(|g| g.starts_at <= rec.updated_at);
                // On a shared store an approval older than this broker may be
                // another live replica's, issuing right now: only the grace
                // tells a crashed issuer from a live one there.
                let left_by_earlier_process =
                    rec.updated_at < self.inner.started_at && !self.inner.store.is_shared();
                if immediate
                    && !left_by_earlier_process
                    && now - rec.updated_at < delta(self.inner.reconcile_grace)
                {
                    continue;
                }
                self.issue_as(rec.id, REAPER_ACTOR)
                    .await
                    .map(|_| Vec::new())
            } else {
                continue;
            };
            match res {
                Ok(recs) => {
                    self.forward(&recs).await?;
                    n += 1;
                }
                Err(Error::InvalidState { .. }) => {}
                Err(e) if cannot_handle(&e) => {
                    self.skipped(rec, "issue approved", &e);
                    release.push(rec.id);
                }
                Err(e) => {
                    tracing::warn!(request = %rec.id, error = %e, "settling an approved request failed")
                }
            }
        }
        self.release(release).await;
        Ok(n)
    }

    /// Retries revocations whose next attempt is due.
    pub async fn retry_revocations(&self, limit: usize) -> Result<usize> {
        let now = self.inner.clock.now();
        self.retry_revocations_due(&[State::Revoking, State::RevocationFailed], now, limit)
            .await
    }

    /// At start: finishes revocations a crash interrupted (`Revoking`, whose
    /// first attempt was given the reconcile grace) at once instead of after
    /// the grace. Only on a store this process has to itself: on a shared
    /// store a `Revoking` record may be another replica's revocation in
    /// flight, and waits for the grace as usual. The reaper calls this on
    /// its first tick.
    pub async fn resume_revocations(&self, limit: usize) -> Result<usize> {
        if self.inner.store.is_shared() {
            return Ok(0);
        }
        // Only what an earlier process left: a revocation this broker starts
        // gets its first retry due after `started_at + grace` (equal only
        // on a clock that has not moved since the broker was built).
        let due_by = self.inner.started_at + delta(self.inner.reconcile_grace);
        self.retry_revocations_due(&[State::Revoking], due_by, limit)
            .await
    }

    async fn retry_revocations_due(
        &self,
        states: &[State],
        due_by: DateTime<Utc>,
        limit: usize,
    ) -> Result<usize> {
        let due = self.claim_due(states, due_by, limit).await?;
        let mut n = 0;
        for rec in due.take(&self.inner.clock) {
            match self.attempt_revocation(rec.clone()).await {
                Ok(r) if matches!(r.state, State::Revoked | State::Expired) => n += 1,
                Ok(_) | Err(Error::InvalidState { .. }) => {}
                Err(e) => tracing::warn!(error = %e, "revocation retry failed"),
            }
        }
        Ok(n)
    }

    /// Hands every provider the grants the store records as revoked (or
    /// being revoked) whose end has not passed, so that revocation state a
    /// provider keeps in memory survives a restart (see
    /// [`Provider::restore_revocations`]). The reaper calls this on its
    /// first tick; a host without a reaper calls it once at start. Looks at
    /// the newest 10,000 such records, far more than can be live at once
    /// for any realistic catalogue. Returns how many grants were handed over.
    pub async fn restore_revocations(&self) -> Result<usize> {
        let now = self.inner.clock.now();
        let records = self
            .inner
            .store
            .list(&ListFilter {
                states: vec![State::Revoked, State::Revoking, State::RevocationFailed],
                ends_after: Some(now),
                limit: 10_000,
                ..ListFilter::default()
            })
            .await?;
        let mut by_provider: HashMap<String, Vec<IssuedGrant>> = HashMap::new();
        for rec in &records {
            let Some(grant) = rec.grant.as_ref() else {
                continue;
            };
            if let Some(issued) = grant.issued.as_ref().filter(|_| grant.ends_at > now) {
                by_provider
                    .entry(issued.provider.clone())
                    .or_default()
                    .push(issued.clone());
            }
        }
        let mut n = 0;
        for (name, grants) in by_provider {
            match self.provider(&name) {
                Ok(p) => {
                    p.restore_revocations(&grants).await?;
                    n += grants.len();
                }
                // A provider no longer configured cannot honour anything:
                // its grants expire natively.
                Err(e) => {
                    tracing::warn!(provider = %name, error = %e, "cannot restore revocations")
                }
            }
        }
        Ok(n)
    }

    /// Settles grants left in `Issuing` by a crash: older than the grace
    /// period, or, when `all` (at start), all those an earlier process left
    /// (written before this broker was built). Found at the provider →
    /// revoked (the credentials never reached anyone); not found, but the
    /// provider can revoke by derived name ([`Capabilities::revoke_by_name`](crate::Capabilities::revoke_by_name))
    /// → revoked by name, since not finding is not proof that nothing was
    /// minted; otherwise not found → `Failed`.
    /// On a store shared by several replicas `all` is ignored: a fresh
    /// `Issuing` grant may be another replica's issue in flight.
    pub async fn reconcile(&self, all: bool) -> Result<usize> {
        let now = self.inner.clock.now();
        let cutoff = if all && !self.inner.store.is_shared() {
            // Everything an earlier process left (last written before this
            // broker was built), and nothing this one may be issuing now.
            self.inner.started_at
        } else {
            now - delta(self.inner.reconcile_grace)
        };
        let stuck = self.claim_due(&[State::Issuing], cutoff, 1000).await?;
        let mut n = 0;
        let mut release = Vec::new();
        for rec in stuck.take(&self.inner.clock) {
            let found_provider = self.spec(rec).and_then(|spec| {
                let provider = self.provider(&spec.entitlement.provider)?.clone();
                Ok((spec, provider))
            });
            let (spec, provider) = match found_provider {
                Ok(x) => x,
                Err(e) => {
                    self.skipped(rec, "reconcile", &e);
                    release.push(rec.id);
                    continue;
                }
            };
            let found = match provider.find(&spec).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(request = %rec.id, error = %e, "reconcile: provider lookup failed; will retry");
                    continue;
                }
            };
            // Not found is not "nothing minted" when the provider cannot see
            // everything (STS lists no sessions): if it can revoke by the
            // derived name, it does, whether or not anything exists.
            let by_name = found.is_none() && provider.capabilities().revoke_by_name;
            let found = if by_name {
                match provider.record_by_name(&spec).await {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::warn!(request = %rec.id, error = %e, "reconcile: cannot build a record by name; will retry");
                        continue;
                    }
                }
            } else {
                found
            };
            let revoked = match &found {
                Some(issued) => Some(provider.revoke(issued).await),
                None => None,
            };
            let retry = self.inner.retry.clone();
            let res = self
                .commit(rec.id, |r, now| {
                    if r.state != State::Issuing || r.version != rec.version {
                        return Err(invalid_state("reconcile", r));
                    }
                    let outcome = match (&found, &revoked) {
                        (None, _) => {
                            r.state = State::Failed;
                            r.note = Some("interrupted before anything was minted".into());
                            "nothing minted"
                        }
                        (Some(issued), Some(Ok(()))) if by_name => {
                            if let Some(g) = r.grant.as_mut() {
                                g.issued = Some(issued.clone());
                            }
                            r.state = State::Revoked;
                            r.note = Some(
                                "interrupted mid-issue and not found; whatever was minted under its name is revoked"
                                    .into(),
                            );
                            "not found, revoked by name"
                        }
                        (Some(issued), Some(Ok(()))) => {
                            if let Some(g) = r.grant.as_mut() {
                                g.issued = Some(issued.clone());
                            }
                            r.state = State::Revoked;
                            r.note =
                                Some("minted during a crash and never delivered; revoked".into());
                            "minted, revoked"
                        }
                        (Some(issued), _) => {
                            if let Some(g) = r.grant.as_mut() {
                                g.issued = Some(issued.clone());
                            }
                            let err = revoked
                                .as_ref()
                                .and_then(|x| x.as_ref().err())
                                .map(|e| e.to_string());
                            r.state = State::Revoking;
                            r.revocation = Some(Revocation {
                                by: REAPER_ACTOR.into(),
                                reason: if by_name {
                                    "interrupted mid-issue and not found; revoking by name".into()
                                } else {
                                    "minted during a crash and never delivered".into()
                                },
                                expiry: false,
                                attempts: 1,
                                last_error: err,
                                next_attempt_at: now + delta(retry.delay(1)),
                            });
                            if by_name {
                                "not found, revocation by name pending"
                            } else {
                                "minted, revocation pending"
                            }
                        }
                    };
                    Ok(vec![event(AuditKind::Reconciled, r, REAPER_ACTOR, now)
                        .details(json!({
                            "outcome": outcome,
                            "external_id": found.as_ref().map(|f| f.external_id.clone()),
                            "by_name": by_name,
                        }))])
                })
                .await;
            match res {
                Ok((_, recs)) => {
                    self.forward(&recs).await?;
                    n += 1;
                }
                Err(Error::InvalidState { .. }) => {}
                Err(e) => {
                    tracing::warn!(request = %rec.id, error = %e, "reconcile failed; will retry")
                }
            }
        }
        self.release(release).await;
        Ok(n)
    }
}

/// Decision helper for hosts and tests: the effective grant length of a decision.
pub fn effective_duration(request: &AccessRequest, decision: &Decision) -> GrantDuration {
    request.duration.min(decision.max_duration)
}
