//! The conditional bindings jit-gcp writes, and the policy edits around them.
//!
//! One grant is one binding: `{role, members: [member], condition: {title:
//! "jit-<grant id>", description, expression: request.time <
//! timestamp("<RFC 3339 end>")}}`. The title derives from the grant id, so a
//! binding can be found (reconciliation), removed (revocation) and pruned
//! (hygiene) by title alone, and nothing else in a policy is ever touched:
//! every function here edits only bindings whose condition title is a
//! grant's derived name, and keeps every other binding, audit config and
//! unknown field of the policy as it was read.
//!
//! # Limits (checked before writing)
//!
//! From the "Policies and bindings" limits of Google's IAM quotas and
//! limits page (<https://cloud.google.com/iam/quotas>, checked again for
//! this release; "limits cannot be changed"):
//!
//! - all principals (Google groups included) in all bindings of a policy:
//!   [`MAX_PRINCIPALS`] (1,500; each occurrence counts);
//! - Google groups in all bindings of a policy: [`MAX_GROUPS`] (250);
//! - role bindings with the same role and the same principal but different
//!   condition expressions: [`MAX_CONDITIONAL_PER_ROLE_MEMBER`] (20);
//! - logic operators in a binding's condition expression: 12 (ours has none).
//!
//! That page gives no lengths for a condition's title, description or
//! expression (its 100- and 256-byte figures are a *custom role's* title
//! and description), and neither does the conditions overview
//! (<https://cloud.google.com/iam/docs/conditions-overview>). The bounds
//! used here ([`MAX_TITLE_LEN`] 100, [`MAX_DESCRIPTION_LEN`] 256,
//! [`MAX_EXPRESSION_LEN`] 1,000 characters) are therefore our own,
//! deliberately conservative choice, not Google's figures: a title and
//! expression of our own (36 and 54 characters) never come near them, and
//! the description is shortened to fit rather than refused (its request id
//! comes first, so hygiene can still read it).

use chrono::{DateTime, SecondsFormat, Utc};
use google_cloud_iam_v1::model::{Binding, Policy};
use google_cloud_type::model::Expr;
use jit_core::provider::naming::external_name;
use jit_core::{GrantId, RequestId};

/// All principals in all bindings of one policy (each occurrence counts).
pub const MAX_PRINCIPALS: usize = 1_500;
/// Google groups in all bindings of one policy.
pub const MAX_GROUPS: usize = 250;
/// Bindings with the same role and principal but different conditions.
pub const MAX_CONDITIONAL_PER_ROLE_MEMBER: usize = 20;
/// Longest condition title written.
pub const MAX_TITLE_LEN: usize = 100;
/// Longest condition description written (longer ones are shortened).
pub const MAX_DESCRIPTION_LEN: usize = 256;
/// Longest condition expression written.
pub const MAX_EXPRESSION_LEN: usize = 1_000;
/// The policy version that keeps conditions; every read asks for it and every write sets it.
pub const POLICY_VERSION: i32 = 3;

/// The condition title of a grant: its derived name, `jit-<32 hex>`.
pub fn title(grant: GrantId) -> String {
    external_name(grant)
}

/// Whether `title` is a grant's derived name (`jit-` and 32 lower-case hex digits).
pub fn is_grant_title(title: &str) -> bool {
    title.strip_prefix("jit-").is_some_and(|h| {
        h.len() == 32
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The expression that ends the binding at `end`: `request.time <
/// timestamp("<RFC 3339, whole seconds, Z>")`.
pub fn expression(end: DateTime<Utc>) -> String {
    format!(
        "request.time < timestamp(\"{}\")",
        end.to_rfc3339_opts(SecondsFormat::Secs, true)
    )
}

/// The end of a binding written by [`expression`] (and nothing else).
pub fn expiry_of(expression: &str) -> Option<DateTime<Utc>> {
    let inner = expression
        .trim()
        .strip_prefix("request.time < timestamp(\"")?
        .strip_suffix("\")")?;
    DateTime::parse_from_rfc3339(inner)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A description of a grant's binding, shortened to [`MAX_DESCRIPTION_LEN`]
/// characters: `jit grant <grant> (request <request>) of entitlement <id>,
/// ticket <ticket>`. The request id comes first so that shortening never
/// cuts it: hygiene reads it back ([`request_of`]) to put a pruned
/// binding into its grant's audit trail.
pub fn description(
    entitlement: &str,
    ticket: Option<&str>,
    grant: GrantId,
    request: RequestId,
) -> String {
    let mut d = format!("jit grant {grant} (request {request}) of entitlement {entitlement}");
    if let Some(t) = ticket {
        d.push_str(&format!(", ticket {t}"));
    }
    let d: String = d.chars().filter(|c| !c.is_control()).collect();
    if d.chars().count() > MAX_DESCRIPTION_LEN {
        let mut s: String = d.chars().take(MAX_DESCRIPTION_LEN - 3).collect();
        s.push_str("...");
        s
    } else {
        d
    }
}

/// The request a [`description`] names, if it is one of ours. Only a hint:
/// anyone who may set the policy can edit a description, so the broker
/// checks it against its own record before trusting it.
pub fn request_of(description: &str) -> Option<RequestId> {
    let rest = description.split_once("(request ")?.1;
    rest.get(..36)?.parse().ok()
}

/// What one grant's binding says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantBinding {
    /// The role.
    pub role: String,
    /// The member.
    pub member: String,
    /// The condition title (`jit-<grant>`).
    pub title: String,
    /// The end its expression states (`None` if the expression is not ours).
    pub expires_at: Option<DateTime<Utc>>,
    /// The request its description names ([`request_of`]), if any.
    pub request_id: Option<RequestId>,
}

/// Why a binding is not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The member already holds the role without a condition: a condition
    /// would mean nothing.
    Unconditional,
    /// A documented IAM limit would be broken.
    Limit(String),
    /// Title, description or expression over its length bound.
    Length(String),
}

/// The bindings of a policy that carry a grant title, in order.
pub fn grant_bindings(policy: &Policy) -> Vec<GrantBinding> {
    policy
        .bindings
        .iter()
        .filter_map(|b| {
            let c = b.condition.as_ref()?;
            if !is_grant_title(&c.title) {
                return None;
            }
            Some(b.members.iter().map(move |m| GrantBinding {
                role: b.role.clone(),
                member: m.clone(),
                title: c.title.clone(),
                expires_at: expiry_of(&c.expression),
                request_id: request_of(&c.description),
            }))
        })
        .flatten()
        .collect()
}

/// The binding titled `title`, if the policy has it.
pub fn find(policy: &Policy, title: &str) -> Option<GrantBinding> {
    grant_bindings(policy)
        .into_iter()
        .find(|b| b.title == title)
}

/// Whether any binding of the policy has a condition (a version 1 write
/// would then drop it).
pub fn has_conditions(policy: &Policy) -> bool {
    policy.bindings.iter().any(|b| b.condition.is_some())
}

/// Adds the grant's binding to `policy`, after the checks in the module
/// docs. Returns `Ok(false)` when the binding is already there (a repeated
/// issue), leaving the policy unchanged.
pub fn add(
    policy: &mut Policy,
    role: &str,
    member: &str,
    title: &str,
    description: &str,
    end: DateTime<Utc>,
) -> Result<bool, Refusal> {
    let expression = expression(end);
    for (what, text, max) in [
        ("title", title, MAX_TITLE_LEN),
        ("description", description, MAX_DESCRIPTION_LEN),
        ("expression", expression.as_str(), MAX_EXPRESSION_LEN),
    ] {
        if text.chars().count() > max {
            return Err(Refusal::Length(format!(
                "condition {what} is {} characters, over the limit of {max}",
                text.chars().count()
            )));
        }
    }
    if policy.bindings.iter().any(|b| {
        b.condition.as_ref().is_some_and(|c| c.title == title)
            && b.role == role
            && b.members.iter().any(|m| m == member)
    }) {
        return Ok(false);
    }
    if policy
        .bindings
        .iter()
        .any(|b| b.condition.is_none() && b.role == role && b.members.iter().any(|m| m == member))
    {
        return Err(Refusal::Unconditional);
    }
    let principals: usize = policy.bindings.iter().map(|b| b.members.len()).sum();
    if principals + 1 > MAX_PRINCIPALS {
        return Err(Refusal::Limit(format!(
            "the policy already names {principals} principals, iam's limit is {MAX_PRINCIPALS} per policy (expired jit bindings count until pruned)"
        )));
    }
    if member.starts_with("group:") {
        let groups = policy
            .bindings
            .iter()
            .flat_map(|b| b.members.iter())
            .filter(|m| m.starts_with("group:"))
            .count();
        if groups + 1 > MAX_GROUPS {
            return Err(Refusal::Limit(format!(
                "the policy already names {groups} groups, iam's limit is {MAX_GROUPS} per policy"
            )));
        }
    }
    let same = policy
        .bindings
        .iter()
        .filter(|b| {
            b.condition.is_some() && b.role == role && b.members.iter().any(|m| m == member)
        })
        .count();
    if same + 1 > MAX_CONDITIONAL_PER_ROLE_MEMBER {
        return Err(Refusal::Limit(format!(
            "`{member}` already has {same} conditional bindings of `{role}`, iam's limit is {MAX_CONDITIONAL_PER_ROLE_MEMBER} (expired jit bindings count until pruned)"
        )));
    }
    let mut condition = Expr::new();
    condition.title = title.to_string();
    condition.description = description.to_string();
    condition.expression = expression;
    let mut binding = Binding::new()
        .set_role(role)
        .set_members([member.to_string()]);
    binding.condition = Some(condition);
    policy.bindings.push(binding);
    policy.version = POLICY_VERSION;
    Ok(true)
}

/// Removes the member from every binding titled `title` (a binding left
/// without members is dropped). Returns whether anything changed.
pub fn remove(policy: &mut Policy, title: &str) -> bool {
    if !is_grant_title(title) {
        return false;
    }
    let before = policy.bindings.len();
    policy
        .bindings
        .retain(|b| b.condition.as_ref().is_none_or(|c| c.title != title));
    let changed = policy.bindings.len() != before;
    if changed {
        policy.version = POLICY_VERSION;
    }
    changed
}

/// Removes every grant binding whose stated end is at or before `now`.
/// Returns what was removed; bindings whose expression is not ours are kept.
pub fn prune_expired(policy: &mut Policy, now: DateTime<Utc>) -> Vec<GrantBinding> {
    let expired: Vec<GrantBinding> = grant_bindings(policy)
        .into_iter()
        .filter(|b| b.expires_at.is_some_and(|t| t <= now))
        .collect();
    if expired.is_empty() {
        return expired;
    }
    policy.bindings.retain(|b| {
        !b.condition.as_ref().is_some_and(|c| {
            is_grant_title(&c.title) && expiry_of(&c.expression).is_some_and(|t| t <= now)
        })
    });
    policy.version = POLICY_VERSION;
    expired
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use chrono::TimeDelta;

    use super::*;

    fn unconditional(role: &str, members: &[&str]) -> Binding {
        Binding::new()
            .set_role(role)
            .set_members(members.iter().map(|m| m.to_string()))
    }

    fn other_conditional(role: &str, member: &str, title: &str) -> Binding {
        let mut c = Expr::new();
        c.title = title.into();
        c.expression = "resource.name.startsWith(\"projects/_/buckets/a\")".into();
        let mut b = unconditional(role, &[member]);
        b.condition = Some(c);
        b
    }

    fn end() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-29T21:30:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn expressions_round_trip_and_only_ours_parse() {
        let e = expression(end());
        assert_eq!(e, "request.time < timestamp(\"2026-11-29T21:30:00Z\")");
        assert_eq!(expiry_of(&e), Some(end()));
        assert_eq!(expiry_of("request.time < timestamp(\"soon\")"), None);
        assert_eq!(
            expiry_of("request.time > timestamp(\"2026-11-29T21:30:00Z\")"),
            None
        );
        let id = GrantId::new();
        assert!(is_grant_title(&title(id)));
        assert!(!is_grant_title("jit-other"));
        assert!(!is_grant_title(&title(id).to_uppercase()));
    }

    #[test]
    fn add_keeps_everything_else_and_is_idempotent() {
        let mut p = Policy::new().set_version(1).set_bindings([
            unconditional("roles/viewer", &["user:bob@example.com"]),
            other_conditional("roles/storage.admin", "user:carol@example.com", "bucket a"),
        ]);
        let before = p.clone();
        let t = title(GrantId::new());
        assert!(add(
            &mut p,
            "roles/storage.admin",
            "user:alice@example.com",
            &t,
            "d",
            end()
        )
        .unwrap());
        assert_eq!(p.version, 3);
        assert_eq!(p.bindings.len(), 3);
        assert_eq!(p.bindings[..2], before.bindings[..]);
        let b = find(&p, &t).unwrap();
        assert_eq!(b.member, "user:alice@example.com");
        assert_eq!(b.expires_at, Some(end()));
        let again = p.clone();
        assert!(!add(
            &mut p,
            "roles/storage.admin",
            "user:alice@example.com",
            &t,
            "d",
            end()
        )
        .unwrap());
        assert_eq!(p, again);
        // Remove exactly that binding; the rest stays as read.
        assert!(remove(&mut p, &t));
        assert_eq!(p.bindings, before.bindings);
        assert!(!remove(&mut p, &t), "a second removal changes nothing");
        assert!(
            !remove(&mut p, "bucket a"),
            "a title that is not a grant's is never removed"
        );
    }

    #[test]
    fn an_unconditional_holder_is_refused() {
        let mut p = Policy::new().set_bindings([unconditional(
            "roles/storage.admin",
            &["user:alice@example.com"],
        )]);
        let t = title(GrantId::new());
        assert_eq!(
            add(
                &mut p,
                "roles/storage.admin",
                "user:alice@example.com",
                &t,
                "d",
                end()
            ),
            Err(Refusal::Unconditional)
        );
        // Another role, or another member, is fine.
        add(
            &mut p,
            "roles/storage.viewer",
            "user:alice@example.com",
            &t,
            "d",
            end(),
        )
        .unwrap();
    }

    #[test]
    fn documented_limits_are_refused_before_writing() {
        // 1,500 principals per policy.
        let members: Vec<String> = (0..MAX_PRINCIPALS)
            .map(|i| format!("user:u{i}@example.com"))
            .collect();
        let mut p = Policy::new()
            .set_bindings([Binding::new().set_role("roles/viewer").set_members(members)]);
        let r = add(
            &mut p,
            "roles/x",
            "user:a@example.com",
            &title(GrantId::new()),
            "d",
            end(),
        );
        assert!(
            matches!(&r, Err(Refusal::Limit(m)) if m.contains("1500")),
            "{r:?}"
        );

        // 20 conditional bindings per role and member.
        let mut p = Policy::new();
        for _ in 0..MAX_CONDITIONAL_PER_ROLE_MEMBER {
            add(
                &mut p,
                "roles/x",
                "user:a@example.com",
                &title(GrantId::new()),
                "d",
                end(),
            )
            .unwrap();
        }
        let r = add(
            &mut p,
            "roles/x",
            "user:a@example.com",
            &title(GrantId::new()),
            "d",
            end(),
        );
        assert!(
            matches!(&r, Err(Refusal::Limit(m)) if m.contains("20")),
            "{r:?}"
        );
        add(
            &mut p,
            "roles/y",
            "user:a@example.com",
            &title(GrantId::new()),
            "d",
            end(),
        )
        .unwrap();

        // 250 groups.
        let groups: Vec<String> = (0..MAX_GROUPS)
            .map(|i| format!("group:g{i}@example.com"))
            .collect();
        let mut p = Policy::new()
            .set_bindings([Binding::new().set_role("roles/viewer").set_members(groups)]);
        let r = add(
            &mut p,
            "roles/x",
            "group:new@example.com",
            &title(GrantId::new()),
            "d",
            end(),
        );
        assert!(
            matches!(&r, Err(Refusal::Limit(m)) if m.contains("250")),
            "{r:?}"
        );
        add(
            &mut p,
            "roles/x",
            "user:new@example.com",
            &title(GrantId::new()),
            "d",
            end(),
        )
        .unwrap();

        // Lengths.
        let r = add(
            &mut Policy::new(),
            "roles/x",
            "user:a@example.com",
            &"t".repeat(101),
            "d",
            end(),
        );
        assert!(matches!(r, Err(Refusal::Length(_))), "{r:?}");
    }

    #[test]
    fn descriptions_are_shortened_not_refused_and_keep_the_request() {
        let request = RequestId::new();
        let d = description(&"e".repeat(300), Some("INC-1"), GrantId::new(), request);
        assert_eq!(d.chars().count(), MAX_DESCRIPTION_LEN);
        assert_eq!(request_of(&d), Some(request));
        let d = description("prod", Some("INC-1\n2"), GrantId::new(), request);
        assert!(d.ends_with("ticket INC-12"), "{d}");
        assert_eq!(request_of(&d), Some(request));
        assert_eq!(request_of("jit grant x of entitlement prod"), None);
        assert_eq!(
            request_of("(request not-a-uuid-at-all-not-a-uuid-at-all)"),
            None
        );
    }

    #[test]
    fn pruning_removes_only_expired_grant_bindings() {
        let now = end();
        let mut p = Policy::new().set_bindings([
            unconditional("roles/viewer", &["user:bob@example.com"]),
            other_conditional("roles/x", "user:carol@example.com", "not ours"),
        ]);
        let old = title(GrantId::new());
        let live = title(GrantId::new());
        add(
            &mut p,
            "roles/x",
            "user:a@example.com",
            &old,
            "d",
            now - TimeDelta::minutes(1),
        )
        .unwrap();
        add(
            &mut p,
            "roles/x",
            "user:a@example.com",
            &live,
            "d",
            now + TimeDelta::minutes(1),
        )
        .unwrap();
        // A binding titled like ours whose expression is someone else's is kept.
        let mut foreign =
            other_conditional("roles/x", "user:d@example.com", &title(GrantId::new()));
        foreign.condition.as_mut().unwrap().expression =
            "request.time < timestamp(\"soon\")".into();
        p.bindings.push(foreign.clone());
        let pruned = prune_expired(&mut p, now);
        assert_eq!(pruned.len(), 1);
        assert_eq!(pruned[0].title, old);
        assert!(find(&p, &old).is_none());
        assert!(find(&p, &live).is_some());
        assert_eq!(p.bindings.len(), 4);
        assert_eq!(p.bindings[3], foreign);
        assert!(prune_expired(&mut p, now).is_empty());
    }
}
