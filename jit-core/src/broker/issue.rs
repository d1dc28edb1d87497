//! Issuing: record the grant as `Issuing`, mint, record it `Active` with its
//! audit record, and take back (undo) a mint that could not be recorded;
//! delivering an active grant's credentials again.

use std::sync::Arc;

use serde_json::json;

use super::{delta, event, forbidden, invalid_state, Broker, IssueOutcome, SYSTEM_ACTOR};
use crate::audit::AuditKind;
use crate::credentials::Credentials;
use crate::error::{Error, RequestError, Result};
use crate::provider::{GrantSpec, Provider};
use crate::standing::Standing;
use crate::types::{Principal, RequestId, RequestRecord, Revocation, State};

impl Broker {
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
        self.issue_as(id, actor.id.as_str(), Some(rec)).await
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

    /// Issues `id` on behalf of `actor`; `known` is a copy of the record
    /// the caller holds (see [`Broker::commit_from`]).
    pub(crate) async fn issue_as(
        &self,
        id: RequestId,
        actor: &str,
        known: Option<RequestRecord>,
    ) -> Result<IssueOutcome> {
        // 1. Record the grant as Issuing, with its final window, before calling anyone.
        let mut provider_name = String::new();
        let (rec, _) = self
            .commit_from(id, known, |rec, now| {
                if rec.state != State::Approved {
                    return Err(invalid_state("issue", rec));
                }
                // A removed entitlement is not granted any more: a replica
                // whose catalogue lacks it leaves the record to one that has
                // it (the rolling-catalogue rule in the README). What is
                // minted is what was approved, whichever replica issues it,
                // and a catalogue tightened since only ever takes away: its
                // shorter maximum cuts the window, a longer one is ignored.
                let current = self.entitlement(&rec.request.entitlement)?;
                let approved_provider = self.approved_entitlement(rec)?.provider.clone();
                // Again at issue: this replica's provider may allow less than
                // the one the window was cut for.
                let max = self
                    .longest_grant(rec)?
                    .as_chrono()
                    .min(current.max_duration.as_chrono());
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
                provider_name = approved_provider;
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
            .commit_from(id, Some(rec), |rec, now| {
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
                .revoke_inner(id, SYSTEM_ACTOR, &reason, false, |_| Ok(()), None)
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

    pub(crate) fn spec(&self, rec: &RequestRecord) -> Result<GrantSpec> {
        let g = rec
            .grant
            .as_ref()
            .ok_or_else(|| Error::Store(format!("request `{}` has no grant", rec.id)))?;
        Ok(GrantSpec {
            grant_id: g.id,
            request_id: rec.id,
            subject: rec.requester.clone(),
            entitlement: self.approved_entitlement(rec)?.into_owned(),
            starts_at: g.starts_at,
            ends_at: g.ends_at,
            justification: rec.request.justification.clone(),
            ticket: rec.request.ticket.clone(),
        })
    }
}
