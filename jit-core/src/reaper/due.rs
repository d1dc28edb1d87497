//! The broker's time-driven work, which the [`Reaper`](super::Reaper) runs each
//! tick: every kind goes through [`Broker::settle_due`], which claims due
//! records, acts on each, and logs, counts and skips what fails, handing
//! back to other replicas what this one cannot do.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;

use crate::audit::{AuditKind, AuditRecord};
use crate::broker::{delta, event, invalid_state, Broker, REAPER_ACTOR};
use crate::clock::Clock;
use crate::error::{ConfigError, Error, RequestError, Result};
use crate::store::Claim;
use crate::store::ListFilter;
use crate::types::{IssuedGrant, RequestId, RequestRecord, Revocation, State};

/// Work taken with [`Store::claim_due`](crate::store::Store::claim_due), and until when this broker may start on it.
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
    /// Claims due work for this replica (see "Several replicas" in [`crate::broker`]).
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

    /// Hands claimed records back (see [`Store::release_claims`](crate::store::Store::release_claims)): those this
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

    /// Settles each due record: claims up to `limit` records in `states`
    /// due by `due_by` for this replica, runs `act` on each, and keeps one
    /// record's failure from touching any other (rule 9):
    ///
    /// - [`Step::Done`] counts the record and copies its audit records to
    ///   the sinks. A sink failure ends the batch with that error (the sinks
    ///   fail closed; the rest waits for the next tick, still claimed);
    /// - [`Step::Idle`] and [`Error::InvalidState`] (someone settled it
    ///   first) pass over it;
    /// - an error saying this replica cannot do the work at all (its
    ///   entitlement or provider is not configured here) is logged, counted
    ///   ([`Broker::skipped_records`]), and the claim is handed back so a
    ///   replica that can do it does so at once;
    /// - any other error is logged and the record is retried next tick.
    ///
    /// Returns how many records were settled.
    async fn settle_due<A, F>(
        &self,
        work: &'static str,
        states: &[State],
        due_by: DateTime<Utc>,
        limit: usize,
        mut act: A,
    ) -> Result<usize>
    where
        // The record is handed over owned: a future borrowing it would need a
        // higher-ranked lifetime, which keeps the reaper's future from being `Send`.
        A: FnMut(RequestRecord) -> F,
        F: Future<Output = Result<Step>>,
    {
        let claimed = self.claim_due(states, due_by, limit).await?;
        let mut settled = 0;
        let mut sinks = Ok(());
        let mut hand_back = Vec::new();
        for rec in claimed.take(&self.inner.clock) {
            match act(rec.clone()).await {
                Ok(Step::Done(recs)) => {
                    if let Err(e) = self.forward(&recs).await {
                        sinks = Err(e);
                        break;
                    }
                    settled += 1;
                }
                Ok(Step::Idle) | Err(Error::InvalidState { .. }) => {}
                Err(e) if cannot_handle(&e) => {
                    self.skipped(rec, work, &e);
                    hand_back.push(rec.id);
                }
                Err(e) => {
                    tracing::warn!(request = %rec.id, work, error = %e, "settling a due record failed; will retry")
                }
            }
        }
        self.release(hand_back).await;
        sinks.map(|()| settled)
    }

    /// Expires active grants whose end has passed: natively expiring ones are
    /// marked `Expired`; others are revoked at the provider first.
    pub async fn expire_due(&self, limit: usize) -> Result<usize> {
        let now = self.inner.clock.now();
        self.settle_due("expire", &[State::Active], now, limit, |rec| async move {
            // A provider not configured here is handed back before the
            // record is touched: moved to `Revoking` here, it would wait out
            // the reconcile grace before a replica that has the provider
            // retried it.
            let native = match rec.grant.as_ref().and_then(|g| g.issued.as_ref()) {
                Some(issued) => {
                    self.provider(&issued.provider)?
                        .capabilities()
                        .native_expiry
                }
                None => false,
            };
            if !native {
                self.revoke_inner(
                    rec.id,
                    REAPER_ACTOR,
                    "grant window ended",
                    true,
                    |_| Ok(()),
                    None,
                )
                .await?;
                return Ok(Step::Done(Vec::new()));
            }
            let (_, recs) = self
                .commit(rec.id, |r, now| {
                    if r.state != State::Active || r.ends_at().is_none_or(|e| e > now) {
                        return Err(invalid_state("expire", r));
                    }
                    r.state = State::Expired;
                    Ok(vec![event(AuditKind::Expired, r, REAPER_ACTOR, now)
                        .details(json!({ "native": true }))])
                })
                .await?;
            Ok(Step::Done(recs))
        })
        .await
    }

    /// Times out pending requests past their TTL, and settles approved ones:
    /// issues those whose start has come (with auto-issue) and expires those
    /// whose window passed without being issued.
    pub async fn settle_waiting(&self, limit: usize) -> Result<usize> {
        let now = self.inner.clock.now();
        let timed_out = self
            .settle_due(
                "time out",
                &[State::Pending],
                now,
                limit,
                |rec| async move {
                    let (_, recs) = self
                        .commit(rec.id, |r, now| {
                            if r.state != State::Pending || r.pending_until.is_none_or(|p| p > now)
                            {
                                return Err(invalid_state("time out", r));
                            }
                            r.state = State::TimedOut;
                            r.pending_until = None;
                            Ok(vec![event(AuditKind::TimedOut, r, REAPER_ACTOR, now)
                                .details(json!({ "approvals": r.approvals.len() }))])
                        })
                        .await?;
                    Ok(Step::Done(recs))
                },
            )
            .await?;
        let approved = self
            .settle_due(
                "issue approved",
                &[State::Approved],
                now,
                limit,
                |rec| async move { self.settle_approved(&rec, now).await },
            )
            .await?;
        Ok(timed_out + approved)
    }

    /// An approved request whose start has come: expired when its window
    /// passed unissued, else issued (with auto-issue) unless the call that
    /// approved it is still issuing it.
    async fn settle_approved(&self, rec: &RequestRecord, now: DateTime<Utc>) -> Result<Step> {
        if rec.ends_at().is_some_and(|e| e <= now) {
            let (_, recs) = self
                .commit(rec.id, |r, now| {
                    if r.state != State::Approved {
                        return Err(invalid_state("expire", r));
                    }
                    r.state = State::Expired;
                    Ok(vec![event(AuditKind::Expired, r, REAPER_ACTOR, now)
                        .details(json!({ "issued": false }))])
                })
                .await?;
            return Ok(Step::Done(recs));
        }
        if !self.inner.auto_issue {
            return Ok(Step::Idle);
        }
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
            return Ok(Step::Idle);
        }
        self.issue_as(rec.id, REAPER_ACTOR, None).await?;
        Ok(Step::Done(Vec::new()))
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

    /// One revocation attempt per due record; counts those that ended.
    async fn retry_revocations_due(
        &self,
        states: &[State],
        due_by: DateTime<Utc>,
        limit: usize,
    ) -> Result<usize> {
        self.settle_due(
            "retry revocation",
            states,
            due_by,
            limit,
            |rec| async move {
                // The attempt copies its own audit records to the sinks.
                let r = self.attempt_revocation(rec).await?;
                Ok(if matches!(r.state, State::Revoked | State::Expired) {
                    Step::Done(Vec::new())
                } else {
                    Step::Idle
                })
            },
        )
        .await
    }

    /// Hands every provider the grants the store records as revoked (or
    /// being revoked) whose end has not passed, so that revocation state a
    /// provider keeps in memory survives a restart (see
    /// [`Provider::restore_revocations`](crate::Provider::restore_revocations)). The reaper calls this on its
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
        self.settle_due(
            "reconcile",
            &[State::Issuing],
            cutoff,
            1000,
            |rec| async move { self.reconcile_one(&rec).await },
        )
        .await
    }

    /// Settles one grant left in `Issuing` with its provider (see [`Broker::reconcile`]).
    async fn reconcile_one(&self, rec: &RequestRecord) -> Result<Step> {
        let spec = self.spec(rec)?;
        let provider = self.provider(&spec.entitlement.provider)?.clone();
        let found = provider.find(&spec).await?;
        // Not found is not "nothing minted" when the provider cannot see
        // everything (STS lists no sessions): if it can revoke by the
        // derived name, it does, whether or not anything exists.
        let by_name = found.is_none() && provider.capabilities().revoke_by_name;
        let found = if by_name {
            Some(provider.record_by_name(&spec).await?)
        } else {
            found
        };
        let revoked = match &found {
            Some(issued) => Some(provider.revoke(issued).await),
            None => None,
        };
        let retry = self.inner.retry.clone();
        let (_, recs) = self
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
                .await?;
        Ok(Step::Done(recs))
    }
}

/// What acting on one due record did (see [`Broker::settle_due`]).
enum Step {
    /// Settled: count it, and copy these audit records to the sinks.
    Done(Vec<AuditRecord>),
    /// Nothing to do now: not yet, or not for this replica.
    Idle,
}
