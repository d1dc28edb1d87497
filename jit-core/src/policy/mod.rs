//! Policy: who may have what, for how long, with whose approval.
//!
//! A decision is a value ([`Decision`]), not an error: a deny carries its
//! reasons so that it is audited like any other outcome. Invalid input (a
//! justification that misses the entitlement's pattern, a malformed ticket)
//! is an error instead, and nothing is recorded for it.

use chrono::{DateTime, Utc};

use crate::error::RequestError;
use crate::types::{AccessRequest, Decision, Entitlement, Principal};

pub mod catalogue;

pub use catalogue::CataloguePolicy;

/// Facts the policy may use besides the request itself.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyContext {
    /// Now, from the broker's clock.
    pub now: DateTime<Utc>,
    /// The longest grant the entitlement's provider can mint.
    pub provider_max: std::time::Duration,
}

/// Decides access requests. Object safe: use it as `Arc<dyn Policy>`.
pub trait Policy: Send + Sync + std::fmt::Debug {
    /// Looks an entitlement up in the catalogue.
    fn entitlement(&self, id: &str) -> Option<Entitlement>;

    /// Every entitlement, for listing and for validating providers at start.
    fn entitlements(&self) -> Vec<Entitlement>;

    /// Decides. Field-level problems are errors; everything else is a [`Decision`].
    fn evaluate(
        &self,
        requester: &Principal,
        request: &AccessRequest,
        entitlement: &Entitlement,
        ctx: &PolicyContext,
    ) -> Result<Decision, RequestError>;

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
