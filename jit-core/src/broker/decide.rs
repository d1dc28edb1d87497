//! Decisions: submit, approve, deny, cancel and extend. Nothing here calls a
//! provider; an approval that is due to issue hands over to `issue.rs`.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{
    check_reason, delta, event, forbidden, invalid_state, Broker, IssueOutcome, SYSTEM_ACTOR,
};
use crate::audit::AuditKind;
use crate::error::{Error, RequestError, Result};
use crate::oncall::OnCallCheck;
use crate::policy::PolicyContext;
use crate::risk::{History, RiskAssessment, RiskInput, MAX_SCORE};
use crate::standing::Standing;
use crate::ticket::TicketVerdict;
use crate::types::{
    check_text, format_duration, AccessRequest, Approval, Grant, GrantDuration, GrantId, Principal,
    RequestId, RequestRecord, State, Verdict,
};

impl Broker {
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
        // Independent, each bounded by its own timeout: asked together, a
        // submit waits for the slowest, not for the sum of all three.
        let (risk, ticket, on_call) = tokio::join!(
            self.assess_risk(requester, &request, &ent, now),
            self.verify_ticket(requester, &request),
            self.check_on_call(requester, &ent, now),
        );
        let ctx = PolicyContext {
            now,
            provider_max: caps.max_duration,
            risk: risk.clone(),
            ticket: ticket.clone(),
            // Without a source nobody could tell: `None`, as the context documents.
            on_call: on_call
                .as_ref()
                .filter(|c| c.source.is_some())
                .map(|c| c.on_call.clone()),
        };
        let mut decision = self
            .inner
            .policy
            .evaluate(requester, &request, &ent, &ctx)?;
        // The broker's checks are the record, whatever a policy put there:
        // an approver sees what the decision saw.
        decision.risk = risk;
        decision.ticket = ticket;
        decision.on_call = on_call;
        let mut rec = RequestRecord {
            id: RequestId::new(),
            version: 1,
            state: State::Pending,
            requester: requester.clone(),
            request: request.clone(),
            decision: decision.clone(),
            entitlement: Some(ent.clone()),
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
        // The decision carries the risk review, the ticket's verdict and the
        // on-call check: one copy in the trail.
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
                rec.grant = Some(self.window(&rec, now, extends.map(|(_, end)| end))?);
                events.push(
                    // The reasons are the decision's, in the event just before.
                    event(AuditKind::Approved, &rec, "policy", now)
                        .details(json!({ "auto": true })),
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
        // Held until the request is stored (see `pending.rs`); a request
        // that does not wait never reads the store for the cap.
        let _slot = match rec.state {
            State::Pending => self.pending_slot(requester).await?,
            _ => None,
        };
        let events = self.seal(events);
        let recs = self.inner.store.insert(&rec, &events).await?;
        self.forward(&recs).await?;
        self.after_approval(rec, SYSTEM_ACTOR).await
    }

    /// The risk review of a request about to be decided, if the broker has
    /// an assessor. A failure, a timeout or a score above the maximum is an
    /// unavailable assessment: never an error that stops the submit, and
    /// never a low score (see [`crate::risk`]).
    async fn assess_risk(
        &self,
        requester: &Principal,
        request: &AccessRequest,
        entitlement: &crate::types::Entitlement,
        now: DateTime<Utc>,
    ) -> Option<RiskAssessment> {
        let assessor = self.inner.risk.as_ref()?;
        let input = RiskInput {
            requester,
            request,
            entitlement,
            now,
            history: History::new(self.inner.store.as_ref()),
        };
        let name = assessor.name();
        let timeout = self.inner.risk_timeout;
        let assessment = match tokio::time::timeout(timeout, assessor.assess(&input)).await {
            Ok(Ok(a)) => match a.score {
                Some(s) if s > MAX_SCORE => RiskAssessment::unavailable(
                    name,
                    format!("score {s} is above the maximum of {MAX_SCORE}"),
                ),
                _ => a,
            },
            Ok(Err(e)) => RiskAssessment::unavailable(name, e.to_string()),
            Err(_) => RiskAssessment::unavailable(
                name,
                // In milliseconds, as the other hooks say it: a 500 ms
                // timeout is not "0s".
                format!("no answer within {} ms", timeout.as_millis()),
            ),
        };
        if let Some(error) = &assessment.error {
            tracing::warn!(assessor = name, %error, entitlement = %request.entitlement, "risk review unavailable; no auto-approval");
        }
        Some(assessment)
    }

    /// Who is on call, for the schedules the policy names for this
    /// entitlement (none: no check). Never an error that stops the submit:
    /// a schedule not answered counts as not on call (see [`crate::oncall`]).
    async fn check_on_call(
        &self,
        requester: &Principal,
        entitlement: &crate::types::Entitlement,
        now: DateTime<Utc>,
    ) -> Option<OnCallCheck> {
        let schedules = self.inner.policy.on_call_schedules(entitlement);
        if schedules.is_empty() {
            return None;
        }
        Some(
            OnCallCheck::run(
                self.inner.on_call.as_deref(),
                schedules,
                requester.id.as_str(),
                now,
                self.inner.on_call_timeout,
            )
            .await,
        )
    }

    /// The verdict on the request's ticket, if it names one and the broker
    /// has a verifier. A failure or a timeout is an unverified verdict,
    /// never an error that stops the submit (see [`crate::ticket`]).
    async fn verify_ticket(
        &self,
        requester: &Principal,
        request: &AccessRequest,
    ) -> Option<TicketVerdict> {
        let verifier = self.inner.tickets.as_ref()?;
        let ticket = request.ticket.as_deref().filter(|t| !t.trim().is_empty())?;
        let name = verifier.name();
        let timeout = self.inner.ticket_timeout;
        let verdict = match tokio::time::timeout(timeout, verifier.verify(ticket, requester)).await
        {
            // A verdict about another ticket verifies nothing.
            Ok(Ok(v)) if v.ticket != ticket => TicketVerdict::unavailable(
                ticket,
                name,
                format!("the verifier answered about `{}`", v.ticket),
            ),
            Ok(Ok(v)) => v,
            Ok(Err(e)) => TicketVerdict::unavailable(ticket, name, e),
            Err(_) => TicketVerdict::unavailable(
                ticket,
                name,
                format!("no answer within {} ms", timeout.as_millis()),
            ),
        };
        if !verdict.verified {
            tracing::info!(verifier = name, ticket, reason = %verdict.reason, "ticket not verified");
        }
        Some(verdict)
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
            self.issue_as(rec.id, actor, Some(rec)).await
        } else {
            Ok(IssueOutcome {
                record: rec,
                credentials: None,
            })
        }
    }

    /// The grant window at approval time: from the scheduled start (or now) for
    /// the requested length cut to the grant's limits
    /// ([`Broker::longest_grant`]). An extension ends at the extended
    /// grant's end plus its length, and never more than the maximum from now.
    fn window(
        &self,
        rec: &RequestRecord,
        now: DateTime<Utc>,
        extends_end: Option<DateTime<Utc>>,
    ) -> Result<Grant> {
        let max = self.longest_grant(rec)?;
        let len = rec.request.duration.min(max).as_chrono();
        let starts_at = rec.request.start_at.map_or(now, |s| s.max(now));
        let ends_at = match extends_end {
            Some(end) => (end.max(now) + len).min(now + max.as_chrono()),
            None => starts_at + len,
        };
        Ok(Grant {
            id: GrantId::new(),
            starts_at,
            ends_at,
            issued: None,
        })
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
                    rec.grant = Some(self.window(rec, now, extends_end)?);
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
}
