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
//! 2. A grant ends at `min(requested, entitlement max, policy max, provider
//!    max)`, computed in one place ([`DurationLimits`]); the provider's
//!    returned expiry is recorded as the truth.
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
//!
//! # Layout
//!
//! One file per seam: `builder.rs` ([`BrokerBuilder`], [`RetryPolicy`]),
//! `decide.rs` (submit, approve, deny, cancel, extend), `pending.rs` (the
//! cap on a requester's pending requests), `issue.rs` (mint,
//! undo a mint that could not be recorded, deliver again), `revoke.rs` and
//! `retention.rs` (archive finished requests and prune them).
//! The time-driven work (expiry, timeouts, scheduled issue, revocation
//! retries, reconciliation) lives with the [`Reaper`](crate::Reaper) in
//! `reaper/`, where every kind of due work goes through one "settle each
//! due record" loop.

mod builder;
mod decide;
mod issue;
mod pending;
mod retention;
mod revoke;

pub use builder::{BrokerBuilder, RetryPolicy};
pub use retention::ArchiveReport;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::audit::{
    self, AuditCheckpoint, AuditEvent, AuditKeyring, AuditKind, AuditRecord, AuditSink,
    ChainSummary, ChainVerifier,
};
use crate::clock::Clock;
use crate::credentials::Credentials;
use crate::error::{ConfigError, Error, RequestError, Result};
use crate::policy::Policy;
use crate::provider::Provider;
use crate::store::{ListFilter, Store};
use crate::types::{
    check_text, format_duration, DurationLimits, Entitlement, GrantDuration, Principal, RequestId,
    RequestRecord, State, Verdict,
};

/// Actor name used for steps the broker takes by itself.
pub const SYSTEM_ACTOR: &str = "jit-broker";

/// Actor name used for steps the reaper takes.
pub const REAPER_ACTOR: &str = "jit-reaper";

const MAX_CAS_ATTEMPTS: usize = 64;

/// The result of an operation that may have minted credentials.
#[derive(Debug, Clone)]
pub struct IssueOutcome {
    /// The record after the operation.
    pub record: RequestRecord,
    /// Credentials, when this call issued them. Shown once: they are not stored.
    pub credentials: Option<Credentials>,
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) policy: Arc<dyn Policy>,
    pub(crate) providers: HashMap<String, Arc<dyn Provider>>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) sinks: Vec<Arc<dyn AuditSink>>,
    pub(crate) auto_issue: bool,
    pub(crate) retry: RetryPolicy,
    pub(crate) reconcile_grace: Duration,
    pub(crate) replica_id: String,
    pub(crate) claim_lease: Duration,
    /// When this broker was built: older `Approved` records were left by an earlier process.
    pub(crate) started_at: DateTime<Utc>,
    /// Records the time-driven work skipped (see [`Broker::skipped_records`]).
    pub(crate) skipped: std::sync::atomic::AtomicU64,
    pub(crate) audit_keyring: Option<AuditKeyring>,
    pub(crate) checkpoint_every: u64,
    pub(crate) checkpoints: std::sync::Mutex<CheckpointState>,
    pub(crate) risk: Option<Arc<dyn crate::risk::RiskAssessor>>,
    pub(crate) risk_timeout: Duration,
    pub(crate) tickets: Option<Arc<dyn crate::ticket::TicketVerifier>>,
    pub(crate) ticket_timeout: Duration,
    pub(crate) on_call: Option<Arc<dyn crate::oncall::OnCallSource>>,
    pub(crate) on_call_timeout: Duration,
    /// Pending requests one requester may hold (0: no cap).
    pub(crate) max_pending: usize,
    pub(crate) pending_slots: pending::PendingSlots,
}

/// The newest audit head this broker wrote, and the newest it checkpointed.
#[derive(Debug, Default)]
pub(crate) struct CheckpointState {
    written: Option<(u64, String)>,
    emitted: u64,
}

/// The broker. Cheap to clone; share it between tasks.
#[derive(Clone)]
pub struct Broker {
    pub(crate) inner: Arc<Inner>,
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

pub(crate) fn event(
    kind: AuditKind,
    rec: &RequestRecord,
    actor: &str,
    now: DateTime<Utc>,
) -> AuditEvent {
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

pub(crate) fn delta(d: Duration) -> TimeDelta {
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

pub(crate) fn invalid_state(operation: &'static str, rec: &RequestRecord) -> Error {
    Error::InvalidState {
        operation,
        request: rec.id,
        state: rec.state,
    }
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

    pub(crate) fn provider(&self, name: &str) -> Result<&Arc<dyn Provider>> {
        self.inner.providers.get(name).ok_or_else(|| {
            Error::Config(ConfigError::UnknownProvider {
                entitlement: String::new(),
                provider: name.to_string(),
            })
        })
    }

    pub(crate) fn entitlement(&self, id: &str) -> Result<Entitlement> {
        self.inner
            .policy
            .entitlement(id)
            .ok_or_else(|| RequestError::UnknownEntitlement(id.to_string()).into())
    }

    /// The entitlement `rec` was decided on: the copy stored with it, or,
    /// for records written before copies were kept, the catalogue's entry.
    pub(crate) fn approved_entitlement<'r>(
        &self,
        rec: &'r RequestRecord,
    ) -> Result<std::borrow::Cow<'r, Entitlement>> {
        match &rec.entitlement {
            Some(e) => Ok(std::borrow::Cow::Borrowed(e)),
            None => self
                .entitlement(&rec.request.entitlement)
                .map(std::borrow::Cow::Owned),
        }
    }

    /// The bounds on `rec`'s grant (design rule 2): its entitlement's and
    /// its decision's maximum, and its provider's as configured here.
    pub(crate) fn duration_limits(&self, rec: &RequestRecord) -> Result<DurationLimits> {
        let ent = self.approved_entitlement(rec)?;
        let provider = self.provider(&ent.provider)?;
        Ok(DurationLimits {
            entitlement: ent.max_duration,
            policy: rec.decision.max_duration,
            provider: provider.capabilities().max_duration,
        })
    }

    /// The longest grant `rec` may have ([`DurationLimits::max`]); an error
    /// when its provider cannot mint even one second.
    pub(crate) fn longest_grant(&self, rec: &RequestRecord) -> Result<GrantDuration> {
        let limits = self.duration_limits(rec)?;
        limits.max().ok_or_else(|| {
            RequestError::DurationTooLong {
                requested: rec.request.duration.to_string(),
                limit: format_duration(limits.provider),
            }
            .into()
        })
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
    pub(crate) async fn forward(&self, records: &[AuditRecord]) -> Result<()> {
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
    pub(crate) async fn commit<F>(
        &self,
        id: RequestId,
        f: F,
    ) -> Result<(RequestRecord, Vec<AuditRecord>)>
    where
        F: FnMut(&mut RequestRecord, DateTime<Utc>) -> Result<Vec<AuditEvent>>,
    {
        self.commit_from(id, None, f).await
    }

    /// Like [`Broker::commit`], trying `known` first: a copy of the record
    /// this broker has just written or read, which saves the store a read
    /// on the common path. A stale copy costs nothing in safety: the write
    /// is a compare-and-set on its version, so it fails with a conflict and
    /// the loop reads the stored record. `f` refusing the copy is not
    /// trusted either: the stored record is read and `f` asked again.
    pub(crate) async fn commit_from<F>(
        &self,
        id: RequestId,
        mut known: Option<RequestRecord>,
        mut f: F,
    ) -> Result<(RequestRecord, Vec<AuditRecord>)>
    where
        F: FnMut(&mut RequestRecord, DateTime<Utc>) -> Result<Vec<AuditEvent>>,
    {
        let mut last = None;
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let (current, from_copy) = match known.take().filter(|r| r.id == id) {
                Some(r) => (r, true),
                None => (
                    self.inner
                        .store
                        .get(id)
                        .await?
                        .ok_or_else(|| Error::request_not_found(id))?,
                    false,
                ),
            };
            let now = self.inner.clock.now();
            // `f` changes the record in place: a refused or conflicting
            // attempt starts again from the stored record, never from this
            // one, so only its version is kept.
            let expected = current.version;
            let mut next = current;
            let events = match f(&mut next, now) {
                Ok(events) => self.seal(events),
                Err(_) if from_copy => continue,
                Err(e) => return Err(e),
            };
            next.version = expected + 1;
            next.updated_at = now;
            match self.inner.store.update(expected, &next, &events).await {
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
    ///
    /// A chain that was pruned ([`Broker::archive_finished`]) is verified
    /// from the store's anchor ([`ChainVerifier::anchor`]) unless the
    /// verifier names one itself.
    pub async fn verify_audit_with(
        &self,
        verifier: &ChainVerifier,
    ) -> Result<std::result::Result<ChainSummary, audit::ChainBreak>> {
        let store = self.inner.store.as_ref();
        // A prune between reading the anchor and the records would look
        // like a gap: read again until the anchor held still.
        let mut attempts = 0;
        let (anchor, entries) = loop {
            let anchor = store.audit_anchor().await?;
            let entries = crate::store::audit_entries_all(store).await?;
            attempts += 1;
            if attempts >= 3 || store.audit_anchor().await? == anchor {
                break (anchor, entries);
            }
        };
        Ok(match anchor {
            Some(a) if verifier.anchored_at().is_none() => {
                verifier.clone().anchor(a).verify_entries(&entries)
            }
            _ => verifier.verify_entries(&entries),
        })
    }

    /// Writes the stored chain as JSON Lines. A pruned chain starts with an
    /// [`audit::ArchiveSegment`] line naming its anchor, so the export
    /// verifies on its own ([`ChainVerifier::verify_jsonl`]).
    pub async fn export_audit<W: std::io::Write>(&self, mut out: W) -> Result<()> {
        let fail = |e: std::io::Error| Error::AuditFailed(format!("export: {e}"));
        let anchor = self.inner.store.audit_anchor().await?;
        let recs = self.audit_records().await?;
        if let Some(from) = anchor {
            let segment = audit::ArchiveSegment {
                from,
                to: None,
                records: 0,
            };
            writeln!(out, "{}", segment.to_json_line()).map_err(fail)?;
        }
        audit::export_jsonl(&recs, out).map_err(fail)
    }
}
