//! Revocation: early (by a person), at the end of a window (by the reaper),
//! one provider attempt at a time, and the collateral of a coarse revocation.

use std::sync::Arc;

use serde_json::json;

use super::{check_reason, delta, event, forbidden, invalid_state, Broker, REAPER_ACTOR};
use crate::audit::AuditKind;
use crate::error::{Error, Result};
use crate::provider::{Collateral, Provider, RevocationKind};
use crate::standing::Standing;
use crate::store::ListFilter;
use crate::types::{Principal, RequestId, RequestRecord, Revocation, State};

impl Broker {
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
        self.revoke_inner(
            id,
            actor.id.as_str(),
            reason,
            false,
            authorize,
            Some(current),
        )
        .await
    }

    pub(crate) async fn revoke_inner<A>(
        &self,
        id: RequestId,
        actor: &str,
        reason: &str,
        expiry: bool,
        authorize: A,
        known: Option<RequestRecord>,
    ) -> Result<RequestRecord>
    where
        A: Fn(&RequestRecord) -> Result<()>,
    {
        // `known`: the record the caller has just read, tried first (see
        // `Broker::commit_from`: a stale copy is a conflict and a re-read).
        let started = self
            .commit_from(id, known, |rec, now| {
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
            .commit_from(rec.id, Some(rec), |r, now| {
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
                        // Who asked is the event's actor.
                        let details = json!({
                            "reason": rv.reason,
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
}
