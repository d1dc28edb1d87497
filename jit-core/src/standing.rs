//! Who a principal is to a request, and so what they may do with it: the one
//! place that decides it, used by the broker and by hosts serving requests
//! over HTTP (the vending server, the Lambda function).
//!
//! Everything here *gives* (read a request, collect its credentials, cancel,
//! issue, extend or revoke it), so it is decided on the exact subject id from
//! the identity provider ([`Principal::is`]) and on approver and admin sets
//! that name exact ids and groups. Aliases, case and Unicode variants never
//! count here; they only ever refuse (a self-approval, a second vote: see
//! [`Principal::may_be_same_person`]).

use crate::policy::Policy;
use crate::types::{Principal, RequestRecord, Verdict};

/// How a principal stands to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Standing {
    /// The principal is exactly the requester.
    pub requester: bool,
    /// The request's decision names the principal as an approver (by exact id
    /// or through a group).
    pub approver: bool,
    /// The principal recorded an approval of this request.
    pub approved: bool,
    /// The policy makes the principal an admin.
    pub admin: bool,
}

impl Standing {
    /// Works out how `p` stands to `rec` under `policy`.
    pub fn of(policy: &dyn Policy, p: &Principal, rec: &RequestRecord) -> Self {
        Self {
            requester: p.is(&rec.requester.id),
            approver: matches!(
                &rec.decision.verdict,
                Verdict::NeedsApproval { approvers, .. } if approvers.contains(p)
            ),
            approved: rec.approvals.iter().any(|a| a.approver.is(&p.id)),
            admin: policy.is_admin(p),
        }
    }

    /// May know the request exists and read it. Everyone else is answered as
    /// if it did not exist.
    pub fn may_see(&self) -> bool {
        self.requester || self.approver || self.approved || self.admin
    }

    /// May receive the grant's credentials: the requester alone, never an
    /// admin or an approver.
    pub fn may_collect(&self) -> bool {
        self.requester
    }

    /// May cancel, issue or extend: the requester or an admin.
    pub fn may_manage(&self) -> bool {
        self.requester || self.admin
    }

    /// May revoke: the requester, an approver of the request, or an admin.
    pub fn may_revoke(&self) -> bool {
        self.requester || self.approver || self.admin
    }
}
