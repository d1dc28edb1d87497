//! Policy: who may have what, for how long, with whose approval.
//!
//! A decision is a value ([`Decision`]), not an error: a deny carries its
//! reasons so that it is audited like any other outcome. Invalid input (a
//! justification that misses the entitlement's pattern, a malformed ticket)
//! is an error instead, and nothing is recorded for it.
//!
//! # Contract
//!
//! What the broker relies on from every [`Policy`]; the checks in
//! `jit_core::testing::policy` (feature `testing`) test the parts that can
//! be tested, and every built-in policy runs them.
//!
//! - **[`Policy::evaluate`] is pure and deterministic.** Its answer depends
//!   only on its arguments: the same requester, request, entitlement and
//!   context give an equal result every time. It reads no clock but
//!   [`PolicyContext::now`], draws no random numbers, does no I/O and does
//!   not block (it runs on the broker's async tasks). The broker calls it
//!   once, at submit, and records the decision: approvals, issue and every
//!   later step work from that recorded decision and never ask again, so a
//!   policy that answered differently on a second call would make the audit
//!   trail describe a decision that was never taken. Facts that change
//!   (on-call rotas, risk scores) reach it through its arguments (the
//!   requester's attributes, the request's context, the broker's risk
//!   review in [`PolicyContext::risk`]), fetched beforehand.
//! - **Risk only adds scrutiny.** A policy may use [`PolicyContext::risk`]
//!   to refuse an auto-approval; it must never approve, or lift a deny or
//!   a human review, because of it. A missing or unavailable assessment
//!   ([`RiskAssessment::score`] is `None`) counts as above every threshold.
//! - **Errors are for malformed input only.** `Err` means the request
//!   itself is invalid (nothing is stored); every judgement about a valid
//!   request, refusal included, is a [`Decision`] with reasons.
//! - **A decision never promises more than its bounds.** Its
//!   [`Decision::max_duration`] is at most the entitlement's
//!   [`Entitlement::max_duration`] and [`PolicyContext::provider_max`]. The
//!   broker clamps every grant to all of them anyway
//!   ([`DurationLimits`](crate::DurationLimits), design rule 2), but the
//!   decision is what is audited and shown to approvers.
//! - **[`Policy::entitlement`] and [`Policy::entitlements`] agree.**
//!   `entitlement(id)` is `Some(e)` exactly when `entitlements()` holds an
//!   entry `e` with `e.id == id`, equal to it; ids are unique in the list;
//!   both are stable for the life of the policy (a new catalogue is a new
//!   policy and a new broker; see the README on rolling catalogue changes).
//!   The broker validates providers against `entitlements()` at build and
//!   looks entitlements up with `entitlement()` afterwards: if the two
//!   disagreed, a request could reach an entitlement no provider checked.
//! - **Who may act is decided on exact ids** (design rule 1):
//!   [`Policy::is_admin`] and the approvers a decision names match the
//!   exact subject id or a group, never an alias or a folded form.
//!   [`Policy::approvable_entitlements`], when it answers, names every
//!   entitlement whose requests the principal may approve, or their
//!   approval queue misses requests they are asked to approve.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use crate::error::RequestError;
use crate::risk::RiskAssessment;
use crate::types::{AccessRequest, Decision, Entitlement, Principal};

pub mod catalogue;
#[cfg(feature = "cedar")]
pub mod cedar;

pub use catalogue::CataloguePolicy;

/// Facts the policy may use besides the request itself.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyContext {
    /// Now, from the broker's clock.
    pub now: DateTime<Utc>,
    /// The longest grant the entitlement's provider can mint.
    pub provider_max: std::time::Duration,
    /// The broker's risk review of this request ([`crate::risk`]); `None`
    /// when the broker has no risk assessor.
    pub risk: Option<RiskAssessment>,
    /// The verdict on the request's ticket ([`crate::ticket`]); `None` when
    /// the request names no ticket or the broker has no ticket verifier.
    pub ticket: Option<crate::ticket::TicketVerdict>,
    /// The on-call schedules, among those the policy asked about
    /// ([`Policy::on_call_schedules`]), that the requester is on call for
    /// at [`PolicyContext::now`]. `None` when the broker has no on-call
    /// source or the policy asked about no schedule. A schedule the source
    /// could not answer for is left out: not knowing counts as not on call,
    /// so an on-call rule can only fail closed.
    pub on_call: Option<BTreeSet<String>>,
}

impl PolicyContext {
    /// A context without a risk review.
    pub fn new(now: DateTime<Utc>, provider_max: std::time::Duration) -> Self {
        Self {
            now,
            provider_max,
            risk: None,
            ticket: None,
            on_call: None,
        }
    }

    /// With a risk review.
    pub fn with_risk(mut self, risk: RiskAssessment) -> Self {
        self.risk = Some(risk);
        self
    }

    /// With a ticket verdict.
    pub fn with_ticket(mut self, verdict: crate::ticket::TicketVerdict) -> Self {
        self.ticket = Some(verdict);
        self
    }

    /// With the schedules the requester is on call for now.
    pub fn with_on_call<I, S>(mut self, schedules: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.on_call = Some(schedules.into_iter().map(Into::into).collect());
        self
    }

    /// Whether the requester is on call for `schedule` now (false when
    /// nobody could tell).
    pub fn is_on_call(&self, schedule: &str) -> bool {
        self.on_call.as_ref().is_some_and(|s| s.contains(schedule))
    }
}

/// Decides access requests. Object safe: use it as `Arc<dyn Policy>`.
pub trait Policy: Send + Sync + std::fmt::Debug {
    /// Looks an entitlement up in the catalogue; agrees with
    /// [`Policy::entitlements`] (see the module's contract).
    fn entitlement(&self, id: &str) -> Option<Entitlement>;

    /// Every entitlement, for listing and for validating providers at start;
    /// ids are unique.
    fn entitlements(&self) -> Vec<Entitlement>;

    /// Decides. Field-level problems are errors; everything else is a
    /// [`Decision`]. Pure and deterministic (see the module's contract).
    fn evaluate(
        &self,
        requester: &Principal,
        request: &AccessRequest,
        entitlement: &Entitlement,
        ctx: &PolicyContext,
    ) -> Result<Decision, RequestError>;

    /// Whether the entitlement must be revocable early: the broker then
    /// refuses to start when its provider's capabilities say it cannot
    /// revoke ([`RevocationKind::None`](crate::RevocationKind::None), a GCP
    /// access token), instead of granting access nobody could take back.
    /// The catalogue's `require_revocation` (default false).
    fn requires_revocation(&self, _entitlement: &str) -> bool {
        false
    }

    /// The on-call schedules whose rota a decision on `entitlement` may
    /// depend on: the broker asks its on-call source about exactly these
    /// before [`Policy::evaluate`] and passes the answer in
    /// [`PolicyContext::on_call`]. Empty (the default): none.
    fn on_call_schedules(&self, _entitlement: &Entitlement) -> Vec<String> {
        Vec::new()
    }

    /// Whether the principal may act as an administrator (revoke anything, read the audit log).
    fn is_admin(&self, _principal: &Principal) -> bool {
        false
    }

    /// The entitlements whose requests `principal` may approve, if the
    /// policy can tell: an approver's queue
    /// ([`Broker::awaiting_approval_by`](crate::Broker::awaiting_approval_by))
    /// asks the store for pending requests of exactly these, so a flood of
    /// requests for other entitlements cannot push theirs out. `None` (the
    /// default) means the policy cannot tell; the queue then reads pending
    /// requests of every entitlement. Admins' queues ignore it.
    fn approvable_entitlements(&self, _principal: &Principal) -> Option<Vec<String>> {
        None
    }

    /// How long a pending request waits for approvals before it times out.
    fn pending_ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs(24 * 3600)
    }
}
