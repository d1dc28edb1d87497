//! Checks of the [`Policy`] contract (see [`crate::policy`]), for every
//! policy implementation to run on a catalogue of its own. Each check
//! panics with a message naming what broke.
//!
//! Not checked here, because no test can observe it from outside: that
//! `evaluate` does no I/O and does not block.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use crate::policy::{Policy, PolicyContext};
use crate::types::{AccessRequest, GrantDuration, Principal, Verdict};

/// `entitlement(id)` and `entitlements()` agree: every listed entry is
/// found by its id and equal to the listed one, ids are unique, an unknown
/// id is `None`, and two calls to `entitlements()` give the same list.
///
/// # Panics
///
/// When the policy breaks the contract.
pub fn check_entitlements_agree(policy: &dyn Policy) {
    let all = policy.entitlements();
    let mut seen = BTreeSet::new();
    for e in &all {
        assert!(
            seen.insert(e.id.clone()),
            "entitlement `{}` is listed twice",
            e.id
        );
        assert_eq!(
            policy.entitlement(&e.id).as_ref(),
            Some(e),
            "`entitlement(\"{}\")` disagrees with `entitlements()`",
            e.id
        );
    }
    let unknown = format!("no-such-entitlement-{}", uuid::Uuid::new_v4().simple());
    assert_eq!(
        policy.entitlement(&unknown),
        None,
        "an id missing from `entitlements()` was found"
    );
    assert_eq!(policy.entitlements(), all, "`entitlements()` changed");
}

/// The requests [`check_evaluate`] asks about: `template` for each listed
/// entitlement, at a minute, at the entitlement's maximum and at the
/// longest any grant may be.
fn requests(policy: &dyn Policy, template: &AccessRequest) -> Vec<AccessRequest> {
    let mut out = Vec::new();
    for e in policy.entitlements() {
        let lengths = [
            GrantDuration::from_secs_i64(60),
            Ok(e.max_duration),
            GrantDuration::new(crate::types::MAX_GRANT_DURATION),
        ];
        for duration in lengths.into_iter().flatten() {
            let mut r = template.clone();
            r.entitlement = e.id.clone();
            r.duration = duration;
            out.push(r);
        }
    }
    out
}

/// For each requester, each entitlement and a few lengths (a minute, the
/// entitlement's maximum, the longest any grant may be): `evaluate` gives an equal answer when asked twice, and a
/// decision's `max_duration` is at most the entitlement's and the
/// provider's maximum (`ctx.provider_max`, when it is at least a second).
///
/// `template` supplies the fields the policy may insist on (justification,
/// ticket, context); its entitlement and duration are replaced. Requests
/// the policy refuses as malformed count too: they must be refused the same
/// way every time.
///
/// # Panics
///
/// When the policy breaks the contract.
pub fn check_evaluate(
    policy: &dyn Policy,
    requesters: &[Principal],
    template: &AccessRequest,
    ctx: &PolicyContext,
) {
    for request in requests(policy, template) {
        let Some(ent) = policy.entitlement(&request.entitlement) else {
            panic!("`{}` is listed but not found", request.entitlement);
        };
        for requester in requesters {
            let first = policy.evaluate(requester, &request, &ent, ctx);
            let again = policy.evaluate(requester, &request, &ent, &ctx.clone());
            assert_eq!(
                first, again,
                "`evaluate` answered `{}` asking for `{}` for {} differently the second time",
                requester.id, request.entitlement, request.duration
            );
            let Ok(decision) = first else { continue };
            assert!(
                decision.max_duration <= ent.max_duration,
                "a decision on `{}` allows {}, more than the entitlement's {}",
                ent.id,
                decision.max_duration,
                ent.max_duration
            );
            if ctx.provider_max.as_secs() >= 1 {
                assert!(
                    decision.max_duration.get() <= ctx.provider_max,
                    "a decision on `{}` allows {}, more than the provider's maximum",
                    ent.id,
                    decision.max_duration
                );
            }
        }
    }
}

/// For each approver whose approvable entitlements the policy names
/// ([`Policy::approvable_entitlements`]): every entitlement for which a
/// decision on one of `requesters` (see [`check_evaluate`]) asks that
/// approver is among them, so their approval queue misses nothing.
///
/// # Panics
///
/// When the policy breaks the contract.
pub fn check_approvable_entitlements(
    policy: &dyn Policy,
    approvers: &[Principal],
    requesters: &[Principal],
    template: &AccessRequest,
    ctx: &PolicyContext,
) {
    for approver in approvers {
        let Some(named) = policy.approvable_entitlements(approver) else {
            continue;
        };
        for request in requests(policy, template) {
            let Some(ent) = policy.entitlement(&request.entitlement) else {
                continue;
            };
            for requester in requesters {
                let Ok(d) = policy.evaluate(requester, &request, &ent, ctx) else {
                    continue;
                };
                if let Verdict::NeedsApproval { approvers, .. } = &d.verdict {
                    if approvers.contains(approver) {
                        assert!(
                            named.contains(&ent.id),
                            "`{}` approves `{}` but `approvable_entitlements` leaves it out",
                            approver.id,
                            ent.id
                        );
                    }
                }
            }
        }
    }
}

/// Design rule 1 for admins: `admin` is an admin, and nobody else is for
/// resembling them: not a case variant of their id, not someone who lists
/// their id as an alias.
///
/// # Panics
///
/// When the policy breaks the contract, or `admin` is not an admin.
pub fn check_admins_are_exact(policy: &dyn Policy, admin: &Principal) {
    assert!(policy.is_admin(admin), "`{}` is not an admin", admin.id);
    let id = admin.id.as_str();
    let upper = id.to_uppercase();
    if upper != id {
        if let Ok(variant) = Principal::new(&upper) {
            assert!(
                !policy.is_admin(&variant),
                "`{upper}` counts as admin `{id}`"
            );
        }
    }
    if let Ok(impostor) = Principal::new("conformance-impostor") {
        let impostor = impostor.with_alias(id);
        assert!(
            !policy.is_admin(&impostor),
            "an alias of `{id}` counts as admin"
        );
    }
}
