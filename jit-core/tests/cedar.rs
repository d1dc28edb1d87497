//! The Cedar policy (feature `cedar`): load-time validation with errors that
//! name policy and position, the mapping of Cedar's answer to a decision,
//! and equivalence with the catalogue on a shared table of requests and on
//! generated ones.
#![cfg(feature = "cedar")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use jit_core::error::{ConfigError, RequestError};
use jit_core::policy::cedar::{CedarAction, CedarPolicy};
use jit_core::policy::{CataloguePolicy, Policy, PolicyContext};
use jit_core::risk::{RiskAssessment, RiskSignal};
use jit_core::ticket::TicketVerdict;
use jit_core::types::{AccessRequest, Decision, Principal, Verdict};
use proptest::prelude::*;

const CATALOGUE: &str = include_str!("../cedar/examples/catalogue.toml");
const ENTITLEMENTS: &str = include_str!("../cedar/examples/entitlements.toml");
const POLICIES: &str = include_str!("../cedar/examples/policies.cedar");

fn catalogue() -> &'static CataloguePolicy {
    static P: OnceLock<CataloguePolicy> = OnceLock::new();
    P.get_or_init(|| CataloguePolicy::from_toml_str(CATALOGUE).unwrap())
}

fn cedar() -> &'static CedarPolicy {
    static P: OnceLock<CedarPolicy> = OnceLock::new();
    P.get_or_init(|| CedarPolicy::from_strs(ENTITLEMENTS, POLICIES).unwrap())
}

/// A minimal entitlement file for the error and mapping tests.
const ONE: &str = r#"
[[entitlements]]
id = "db"
provider = "local"
max_duration = "1h"
target = { audience = "db" }
require_justification = false

[entitlements.approval]
groups = ["leads"]
"#;

fn load_err(policies: &str) -> ConfigError {
    match CedarPolicy::from_strs(ONE, policies) {
        Ok(_) => panic!("loaded: {policies}"),
        Err(e) => e,
    }
}

fn cedar_parts(e: &ConfigError) -> (String, usize, usize, String) {
    match e {
        ConfigError::Cedar {
            policy,
            line,
            column,
            message,
        } => (policy.clone(), *line, *column, message.clone()),
        other => panic!("not a cedar error: {other:?}"),
    }
}

fn at(h: u32) -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 7, h, 30, 0).unwrap()
}

fn ctx() -> PolicyContext {
    PolicyContext::new(at(10), Duration::from_secs(12 * 3600))
}

fn scored(score: u8) -> RiskAssessment {
    RiskAssessment::from_signals(
        "test",
        vec![RiskSignal {
            name: "test".into(),
            weight: score,
            reason: format!("scored {score}"),
        }],
    )
}

fn who(id: &str, groups: &[&str]) -> Principal {
    groups
        .iter()
        .fold(Principal::new(id).unwrap(), |p, g| p.with_group(g))
}

fn ask(policy: &dyn Policy, p: &Principal, r: &AccessRequest, c: &PolicyContext) -> Decision {
    let e = policy.entitlement(&r.entitlement).unwrap();
    policy.evaluate(p, r, &e, c).unwrap()
}

// ---------------------------------------------------------------------------
// Load-time validation.
// ---------------------------------------------------------------------------

#[test]
fn a_type_error_names_the_policy_and_its_position() {
    let text = r#"@id("fine")
permit(principal, action == Jit::Action::"request", resource == Jit::Entitlement::"db");

@id("db: long enough")
permit(principal, action == Jit::Action::"request", resource == Jit::Entitlement::"db")
when { context.duration_secs <= "15m" };
"#;
    let e = load_err(text);
    let (policy, line, column, message) = cedar_parts(&e);
    assert_eq!(policy, "db: long enough");
    assert_eq!(line, 6, "{e}");
    assert!(column > 1, "{e}");
    let shown = e.to_string();
    assert!(
        shown.starts_with("cedar policy `db: long enough` at line 6, column "),
        "{shown}"
    );
    assert!(!message.is_empty());
}

#[test]
fn an_unknown_attribute_is_a_type_error_in_strict_mode() {
    let text = r#"
@id("typo")
permit(principal, action == Jit::Action::"request", resource)
when { context.risk_scor <= 40 };
"#;
    let (policy, line, _, message) = cedar_parts(&load_err(text));
    assert_eq!(policy, "typo");
    assert_eq!(line, 4);
    assert!(message.contains("risk_scor"), "{message}");
}

#[test]
fn a_parse_error_names_the_policy_and_its_position() {
    let text = r#"@id("first")
permit(principal, action == Jit::Action::"request", resource == Jit::Entitlement::"db");

@id("second")
permit(principal, action == Jit::Action::"request", resource == Jit::Entitlement::"db")
when { context.duration_secs <== 900 };
"#;
    let e = load_err(text);
    let (policy, line, column, _) = cedar_parts(&e);
    assert_eq!(policy, "second", "{e}");
    assert_eq!(line, 6, "{e}");
    assert!(column >= 30, "{e}");
}

#[test]
fn a_parse_error_in_a_policy_without_id_names_its_place() {
    let text =
        "@id(\"a\") permit(principal, action, resource);\npermit(principal, action resource);";
    let (policy, line, _, _) = cedar_parts(&load_err(text));
    assert_eq!(policy, "#2");
    assert_eq!(line, 2);
}

#[test]
fn every_policy_needs_an_id() {
    let text =
        "@id(\"a\") permit(principal, action, resource);\n\n  permit(principal, action, resource);";
    let (policy, line, _, message) = cedar_parts(&load_err(text));
    assert_eq!(policy, "#2");
    assert_eq!(line, 1, "the statement starts right after the first `;`");
    assert!(message.contains("@id"), "{message}");
}

#[test]
fn ids_are_unique() {
    let text = "@id(\"a\") permit(principal, action, resource);\n@id(\"a\") forbid(principal, action, resource);";
    let (policy, _, _, message) = cedar_parts(&load_err(text));
    assert_eq!(policy, "a");
    assert!(message.contains("twice"), "{message}");
}

#[test]
fn a_policy_naming_an_unlisted_entitlement_is_refused() {
    let text = "@id(\"typo\")\npermit(principal, action, resource == Jit::Entitlement::\"dbb\");";
    let (policy, _, _, message) = cedar_parts(&load_err(text));
    assert_eq!(policy, "typo");
    assert!(message.contains("`dbb`"), "{message}");
}

#[test]
fn only_auto_approve_decisions_on_permits_are_accepted() {
    let (_, _, _, m) = cedar_parts(&load_err(
        "@id(\"x\") @decision(\"auto-approve\") permit(principal, action, resource);",
    ));
    assert!(m.contains("unknown `@decision"), "{m}");
    let (_, _, _, m) = cedar_parts(&load_err(
        "@id(\"x\") @decision(\"auto_approve\") forbid(principal, action, resource);",
    ));
    assert!(m.contains("forbid"), "{m}");
}

#[test]
fn templates_and_unknown_actions_are_refused() {
    let (_, _, _, m) = cedar_parts(&load_err(
        "@id(\"t\") permit(principal == ?principal, action, resource);",
    ));
    assert!(m.contains("templates"), "{m}");
    let (p, _, _, _) = cedar_parts(&load_err(
        "@id(\"x\") permit(principal, action == Jit::Action::\"delete\", resource);",
    ));
    assert_eq!(p, "x");
}

#[test]
fn the_entitlement_file_rejects_unknown_keys_with_their_line() {
    let e = CedarPolicy::from_strs(
        "[[entitlements]]\nid = \"db\"\nprovider = \"local\"\nmax_duration = \"1h\"\neligible = { ids = [\"bob\"] }\n",
        "",
    )
    .unwrap_err();
    assert_eq!(
        e,
        ConfigError::UnknownKey {
            key: "eligible".into(),
            line: 5
        }
    );
    let e = CedarPolicy::from_strs("[settings]\non_call_schedules = [\" \"]\n", "").unwrap_err();
    assert!(
        matches!(e, ConfigError::InvalidField { ref field, .. } if field == "on_call_schedules"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------
// From a Cedar answer to a decision.
// ---------------------------------------------------------------------------

fn one(policies: &str) -> CedarPolicy {
    CedarPolicy::from_strs(ONE, policies).unwrap()
}

fn db(duration: &str) -> AccessRequest {
    AccessRequest::new("db", duration.parse().unwrap(), "")
}

const ELIGIBLE: &str = r#"
@id("eligible")
permit(principal in Jit::Group::"eng", action == Jit::Action::"request", resource == Jit::Entitlement::"db");
"#;

#[test]
fn an_auto_approve_permit_alone_makes_no_one_eligible() {
    let policy = one(&format!(
        "{ELIGIBLE}\n@id(\"auto\") @decision(\"auto_approve\") permit(principal, action == Jit::Action::\"request\", resource);"
    ));
    let outsider = who("eve", &[]);
    let d = ask(&policy, &outsider, &db("10m"), &ctx());
    assert!(d.is_deny(), "{d:?}");
    assert!(
        d.reasons.iter().any(|r| r.contains("make no one eligible")),
        "{d:?}"
    );
    let d = ask(&policy, &who("bob", &["eng"]), &db("10m"), &ctx());
    assert_eq!(d.verdict, Verdict::AutoApprove, "{d:?}");
    assert!(d.reasons.iter().any(|r| r.contains("`auto`")), "{d:?}");
}

#[test]
fn a_forbid_wins_and_its_reason_is_given() {
    let policy = one(&format!(
        "{ELIGIBLE}\n@id(\"night\") @reason(\"not at night\") forbid(principal, action, resource) when {{ context.hour_utc < 6 }};"
    ));
    let bob = who("bob", &["eng"]);
    let night = PolicyContext::new(at(3), Duration::from_secs(3600));
    let d = ask(&policy, &bob, &db("10m"), &night);
    assert!(d.is_deny());
    assert_eq!(
        d.reasons,
        vec!["forbidden by policy `night`: not at night".to_string()]
    );
    let d = ask(&policy, &bob, &db("10m"), &ctx());
    assert!(
        matches!(d.verdict, Verdict::NeedsApproval { quorum: 1, .. }),
        "{d:?}"
    );
}

#[test]
fn no_permit_is_a_deny_that_says_so() {
    let policy = one(ELIGIBLE);
    let d = ask(&policy, &who("eve", &["other"]), &db("10m"), &ctx());
    assert!(d.is_deny());
    assert!(d.reasons[0].contains("not permitted"), "{d:?}");
}

#[test]
fn an_evaluation_error_never_lets_a_request_through() {
    // Overflows at run time for any duration of 2s or more: Cedar skips the
    // failing forbid, which would allow; the decision denies instead.
    let policy = one(&format!(
        "{ELIGIBLE}\n@id(\"broken forbid\") forbid(principal, action, resource) when {{ context.duration_secs * 9223372036854775807 > 0 }};"
    ));
    let d = ask(&policy, &who("bob", &["eng"]), &db("10m"), &ctx());
    assert!(d.is_deny(), "{d:?}");
    assert!(
        d.reasons.iter().any(|r| r.contains("broken forbid")),
        "{d:?}"
    );

    let policy = one(&format!(
        "{ELIGIBLE}\n@id(\"broken auto\") @decision(\"auto_approve\") permit(principal, action, resource) when {{ context.duration_secs * 9223372036854775807 > 0 }};"
    ));
    let d = ask(&policy, &who("bob", &["eng"]), &db("10m"), &ctx());
    assert!(d.is_deny(), "{d:?}");
}

#[test]
fn risk_never_approves_even_when_a_policy_says_so() {
    // A perverse set: eligibility and auto-approval *because* the score is high.
    let policy = one(r#"
@id("eligible when risky")
permit(principal, action == Jit::Action::"request", resource) when { context.risk_score > 50 };
@id("auto when risky") @decision("auto_approve")
permit(principal, action == Jit::Action::"request", resource) when { context.risk_score > 50 };
"#);
    let bob = who("bob", &[]);
    for c in [
        ctx(),
        ctx().with_risk(scored(90)),
        ctx().with_risk(RiskAssessment::unavailable("t", "down")),
    ] {
        let d = ask(&policy, &bob, &db("10m"), &c);
        assert!(d.is_deny(), "{d:?}");
        assert!(
            d.reasons
                .iter()
                .any(|r| r.contains("risk only adds scrutiny")),
            "{d:?}"
        );
    }
    // Auto-approval that needs a high score falls back to a human.
    let policy = one(&format!(
        "{ELIGIBLE}\n@id(\"auto when risky\") @decision(\"auto_approve\") permit(principal, action, resource) when {{ context.risk_score > 50 }};"
    ));
    let d = ask(
        &policy,
        &who("bob", &["eng"]),
        &db("10m"),
        &ctx().with_risk(scored(90)),
    );
    assert!(matches!(d.verdict, Verdict::NeedsApproval { .. }), "{d:?}");
}

#[test]
fn an_unscored_request_is_above_every_threshold() {
    let policy = one(&format!(
        "{ELIGIBLE}\n@id(\"calm\") @decision(\"auto_approve\") permit(principal, action, resource) when {{ context.risk_score <= 100 }};"
    ));
    let bob = who("bob", &["eng"]);
    let d = ask(&policy, &bob, &db("10m"), &ctx());
    assert!(matches!(d.verdict, Verdict::NeedsApproval { .. }), "{d:?}");
    let d = ask(
        &policy,
        &bob,
        &db("10m"),
        &ctx().with_risk(RiskAssessment::unavailable("t", "timeout")),
    );
    assert!(matches!(d.verdict, Verdict::NeedsApproval { .. }), "{d:?}");
    let d = ask(&policy, &bob, &db("10m"), &ctx().with_risk(scored(100)));
    assert_eq!(d.verdict, Verdict::AutoApprove, "{d:?}");
}

#[test]
fn on_call_reaches_the_policies_and_schedules_come_from_the_files() {
    let file = r#"
[settings]
on_call_schedules = ["primary"]

[[entitlements]]
id = "db"
provider = "local"
max_duration = "1h"
require_justification = false
on_call_schedules = ["db-secondary", "primary"]

[entitlements.approval]
groups = ["leads"]
"#;
    let policy = CedarPolicy::from_strs(
        file,
        &format!(
            "{ELIGIBLE}\n@id(\"on call\") @decision(\"auto_approve\") permit(principal, action, resource) when {{ context.on_call.contains(\"primary\") }};"
        ),
    )
    .unwrap();
    let e = policy.entitlement("db").unwrap();
    assert_eq!(
        policy.on_call_schedules(&e),
        vec!["db-secondary", "primary"]
    );
    let bob = who("bob", &["eng"]);
    let d = ask(&policy, &bob, &db("10m"), &ctx().with_on_call(["primary"]));
    assert_eq!(d.verdict, Verdict::AutoApprove, "{d:?}");
    let d = ask(
        &policy,
        &bob,
        &db("10m"),
        &ctx().with_on_call(["secondary"]),
    );
    assert!(matches!(d.verdict, Verdict::NeedsApproval { .. }), "{d:?}");
    // Nobody could tell: not on call.
    let d = ask(&policy, &bob, &db("10m"), &ctx());
    assert!(matches!(d.verdict, Verdict::NeedsApproval { .. }), "{d:?}");
}

#[test]
fn attributes_tags_and_time_reach_the_policies() {
    let policy = one(r#"
@id("eligible") permit(principal, action == Jit::Action::"request", resource)
when {
  principal.hasTag("dept") && principal.getTag("dept") == "payments" &&
  resource.hasTag("audience") && resource.getTag("audience") == "db" &&
  resource.provider == "local" &&
  resource.max_duration_secs == 3600 &&
  context.weekday_utc == 1 && context.hour_utc >= 9 && context.minute_utc == 30
};
"#);
    let payments = Principal::new("p")
        .unwrap()
        .with_attribute("dept", "payments");
    let d = ask(&policy, &payments, &db("10m"), &ctx());
    assert!(matches!(d.verdict, Verdict::NeedsApproval { .. }), "{d:?}");
    let d = ask(
        &policy,
        &payments,
        &db("10m"),
        &PolicyContext::new(at(8), Duration::from_secs(3600)),
    );
    assert!(d.is_deny(), "{d:?}");
    let other = Principal::new("p").unwrap().with_attribute("dept", "sales");
    assert!(ask(&policy, &other, &db("10m"), &ctx()).is_deny());
}

#[test]
fn durations_are_clamped_before_cedar_sees_them() {
    let policy = one(&format!(
        "{ELIGIBLE}\n@id(\"short\") @decision(\"auto_approve\") permit(principal, action, resource) when {{ context.duration_secs <= 600 }};"
    ));
    let bob = who("bob", &["eng"]);
    // A provider that allows 10 minutes: the 5h request becomes 10m.
    let c = PolicyContext::new(at(10), Duration::from_secs(600));
    let d = ask(&policy, &bob, &db("5h"), &c);
    assert_eq!(d.verdict, Verdict::AutoApprove, "{d:?}");
    assert_eq!(d.max_duration.to_string(), "10m");
    // Below a second: nothing can be minted.
    let c = PolicyContext::new(at(10), Duration::from_millis(500));
    assert!(ask(&policy, &bob, &db("5m"), &c).is_deny());
}

#[test]
fn other_actions_can_be_asked_directly() {
    let policy = one(r#"
@id("leads approve") permit(principal in Jit::Group::"leads", action == Jit::Action::"approve", resource);
@id("eligible") permit(principal, action == Jit::Action::"request", resource);
"#);
    let e = policy.entitlement("db").unwrap();
    let lead = who("lena", &["leads"]);
    let allowed = |p: &Principal, a| {
        policy
            .is_authorized(a, p, &db("10m"), &e, &ctx())
            .unwrap()
            .decision()
            == cedar_policy::Decision::Allow
    };
    assert!(allowed(&lead, CedarAction::Approve));
    assert!(!allowed(&who("bob", &[]), CedarAction::Approve));
    assert!(!allowed(&lead, CedarAction::BreakGlass));
    let unknown = jit_core::Entitlement {
        id: "nope".into(),
        ..e.clone()
    };
    assert!(policy
        .is_authorized(CedarAction::Request, &lead, &db("10m"), &unknown, &ctx())
        .is_err());
}

#[test]
fn text_rules_are_errors_as_in_the_catalogue() {
    let policy = cedar();
    let bob = who("bob", &["engineering"]);
    let e = policy.entitlement("prod-db-read").unwrap();
    let r = AccessRequest::new("prod-db-read", "10m".parse().unwrap(), "because");
    assert!(matches!(
        policy.evaluate(&bob, &r, &e, &ctx()),
        Err(RequestError::JustificationPattern { .. })
    ));
    let e = policy.entitlement("prod-admin").unwrap();
    let r = AccessRequest::new("prod-admin", "10m".parse().unwrap(), "x");
    assert_eq!(
        policy.evaluate(&bob, &r, &e, &ctx()),
        Err(RequestError::TicketMissing("prod-admin".into()))
    );
}

// ---------------------------------------------------------------------------
// Equivalence with the catalogue.
// ---------------------------------------------------------------------------

/// What the broker knows about the ticket.
#[derive(Debug, Clone, Copy)]
enum TicketFact {
    NoVerifier,
    Verified,
    Refused,
    /// A verdict on another ticket than the request's.
    VerifiedOther,
}

#[derive(Debug, Clone, Copy)]
enum Risk {
    NoAssessor,
    Unavailable,
    Score(u8),
}

#[derive(Debug, Clone)]
struct Case {
    requester: Principal,
    entitlement: &'static str,
    duration: String,
    justification: &'static str,
    ticket: Option<&'static str>,
    ticket_fact: TicketFact,
    risk: Risk,
    provider_max: Duration,
    /// The schedules the requester is on call for, as the broker's on-call
    /// source answered; `None`: no source.
    on_call: Option<&'static [&'static str]>,
}

impl Case {
    fn request(&self) -> AccessRequest {
        let mut r = AccessRequest::new(
            self.entitlement,
            self.duration.parse().unwrap(),
            self.justification,
        );
        r.ticket = self.ticket.map(str::to_string);
        r
    }

    fn context(&self) -> PolicyContext {
        let mut c = PolicyContext::new(at(10), self.provider_max);
        c = match self.risk {
            Risk::NoAssessor => c,
            Risk::Unavailable => c.with_risk(RiskAssessment::unavailable("t", "timed out")),
            Risk::Score(s) => c.with_risk(scored(s)),
        };
        if let Some(schedules) = self.on_call {
            c = c.with_on_call(schedules.iter().copied());
        }
        let ticket = self.ticket.unwrap_or("");
        match self.ticket_fact {
            TicketFact::NoVerifier => c,
            TicketFact::Verified => c.with_ticket(verdict(ticket, true)),
            TicketFact::Refused => c.with_ticket(verdict(ticket, false)),
            TicketFact::VerifiedOther => c.with_ticket(verdict("INC-999999", true)),
        }
    }
}

fn verdict(ticket: &str, verified: bool) -> TicketVerdict {
    TicketVerdict {
        ticket: ticket.to_string(),
        verifier: "test".into(),
        verified,
        reason: if verified {
            "open".into()
        } else {
            "closed".into()
        },
        summary: None,
        status: None,
    }
}

/// Runs a case through both policies; returns the shared answer.
fn both(
    cat: &CataloguePolicy,
    ced: &CedarPolicy,
    case: &Case,
) -> Result<(Verdict, String), RequestError> {
    let request = case.request();
    let c = case.context();
    let e = cat.entitlement(case.entitlement).unwrap();
    assert_eq!(
        Some(&e),
        ced.entitlement(case.entitlement).as_ref(),
        "entitlement differs"
    );
    let a = cat.evaluate(&case.requester, &request, &e, &c);
    let b = ced.evaluate(&case.requester, &request, &e, &c);
    match (a, b) {
        (Ok(a), Ok(b)) => {
            assert_eq!(
                a.verdict, b.verdict,
                "{case:?}\ncatalogue: {:?}\ncedar: {:?}",
                a.reasons, b.reasons
            );
            assert_eq!(a.max_duration, b.max_duration, "{case:?}");
            Ok((a.verdict, a.max_duration.to_string()))
        }
        (Err(a), Err(b)) => {
            assert_eq!(a, b, "{case:?}");
            Err(a)
        }
        (a, b) => panic!("{case:?}\ncatalogue: {a:?}\ncedar: {b:?}"),
    }
}

#[derive(Debug, PartialEq)]
enum Expect {
    Deny,
    Human(u32),
    Auto,
    Error,
}

fn kind(r: &Result<(Verdict, String), RequestError>) -> Expect {
    match r {
        Ok((Verdict::Deny, _)) => Expect::Deny,
        Ok((Verdict::NeedsApproval { quorum, .. }, _)) => Expect::Human(*quorum),
        Ok((Verdict::AutoApprove, _)) => Expect::Auto,
        Err(_) => Expect::Error,
    }
}

fn oncall_engineer() -> Principal {
    who("bob", &["engineering", "oncall"]).with_attribute("oncall", "true")
}

#[test]
fn the_examples_load_and_agree_on_the_listing() {
    let (cat, ced) = (catalogue(), cedar());
    assert_eq!(cat.entitlements(), ced.entitlements());
    assert_eq!(cat.pending_ttl(), ced.pending_ttl());
    assert_eq!(cat.admins(), ced.admins());
    for p in [
        who("carol", &[]),
        who("x", &["sre-leads"]),
        who("y", &["secops"]),
    ] {
        assert_eq!(
            cat.approvable_entitlements(&p),
            ced.approvable_entitlements(&p)
        );
        assert_eq!(cat.is_admin(&p), ced.is_admin(&p));
    }
    for e in cat.entitlements() {
        assert_eq!(
            cat.on_call_schedules(&e),
            ced.on_call_schedules(&e),
            "{}",
            e.id
        );
    }
}

#[test]
fn the_shared_table_gives_the_same_decisions() {
    let (cat, ced) = (catalogue(), cedar());
    let long = Duration::from_secs(12 * 3600);
    let base = |requester: Principal, entitlement: &'static str, duration: &str| Case {
        requester,
        entitlement,
        duration: duration.to_string(),
        justification: "INC-42: restore the orders table",
        ticket: None,
        ticket_fact: TicketFact::NoVerifier,
        risk: Risk::Score(10),
        provider_max: long,
        on_call: None,
    };
    let with = |mut c: Case, f: &dyn Fn(&mut Case)| {
        f(&mut c);
        c
    };
    let table: Vec<(&str, Case, Expect)> = vec![
        (
            "on call, short, calm",
            base(oncall_engineer(), "prod-db-read", "10m"),
            Expect::Auto,
        ),
        (
            "on call at the limit",
            base(oncall_engineer(), "prod-db-read", "15m"),
            Expect::Auto,
        ),
        (
            "on call, a second too long",
            base(oncall_engineer(), "prod-db-read", "901s"),
            Expect::Human(1),
        ),
        (
            "on call, risky",
            with(base(oncall_engineer(), "prod-db-read", "10m"), &|c| {
                c.risk = Risk::Score(41)
            }),
            Expect::Human(1),
        ),
        (
            "on call, risk at the limit",
            with(base(oncall_engineer(), "prod-db-read", "10m"), &|c| {
                c.risk = Risk::Score(40)
            }),
            Expect::Auto,
        ),
        (
            "on call, no assessor",
            with(base(oncall_engineer(), "prod-db-read", "10m"), &|c| {
                c.risk = Risk::NoAssessor
            }),
            Expect::Human(1),
        ),
        (
            "on call, assessor down",
            with(base(oncall_engineer(), "prod-db-read", "10m"), &|c| {
                c.risk = Risk::Unavailable
            }),
            Expect::Human(1),
        ),
        (
            "oncall group without the attribute",
            base(
                who("bob", &["engineering", "oncall"]),
                "prod-db-read",
                "10m",
            ),
            Expect::Human(1),
        ),
        (
            "attribute false",
            base(
                who("bob", &["engineering", "oncall"]).with_attribute("oncall", "false"),
                "prod-db-read",
                "10m",
            ),
            Expect::Human(1),
        ),
        (
            "on call but not eligible",
            base(
                who("eve", &["oncall"]).with_attribute("oncall", "true"),
                "prod-db-read",
                "10m",
            ),
            Expect::Deny,
        ),
        (
            "eligible by id",
            base(who("olivia", &[]), "prod-db-read", "30m"),
            Expect::Human(1),
        ),
        (
            "not eligible",
            base(who("eve", &["sales"]), "prod-db-read", "10m"),
            Expect::Deny,
        ),
        (
            "group spelled differently",
            base(who("bob", &["Engineering"]), "prod-db-read", "10m"),
            Expect::Deny,
        ),
        (
            "clamped to the maximum",
            base(who("bob", &["engineering"]), "prod-db-read", "5h"),
            Expect::Human(1),
        ),
        (
            "provider below a second",
            with(base(oncall_engineer(), "prod-db-read", "10m"), &|c| {
                c.provider_max = Duration::from_millis(400)
            }),
            Expect::Deny,
        ),
        (
            "provider caps at 10m",
            with(base(oncall_engineer(), "prod-db-read", "1h"), &|c| {
                c.provider_max = Duration::from_secs(600)
            }),
            Expect::Auto,
        ),
        (
            "bad justification",
            with(base(oncall_engineer(), "prod-db-read", "10m"), &|c| {
                c.justification = "because"
            }),
            Expect::Error,
        ),
        (
            "bad ticket",
            with(base(oncall_engineer(), "prod-db-read", "10m"), &|c| {
                c.ticket = Some("JIRA-1")
            }),
            Expect::Error,
        ),
        (
            "good ticket",
            with(base(oncall_engineer(), "prod-db-read", "10m"), &|c| {
                c.ticket = Some("INC-7")
            }),
            Expect::Auto,
        ),
        (
            "admin: verified",
            with(base(who("sam", &["sre"]), "prod-admin", "1h"), &|c| {
                c.ticket = Some("INC-9");
                c.ticket_fact = TicketFact::Verified;
            }),
            Expect::Human(2),
        ),
        (
            "admin: refused ticket",
            with(base(who("sam", &["sre"]), "prod-admin", "1h"), &|c| {
                c.ticket = Some("INC-9");
                c.ticket_fact = TicketFact::Refused;
            }),
            Expect::Deny,
        ),
        (
            "admin: no verifier",
            with(base(who("sam", &["sre"]), "prod-admin", "1h"), &|c| {
                c.ticket = Some("INC-9")
            }),
            Expect::Deny,
        ),
        (
            "admin: verdict on another ticket",
            with(base(who("sam", &["sre"]), "prod-admin", "1h"), &|c| {
                c.ticket = Some("INC-9");
                c.ticket_fact = TicketFact::VerifiedOther;
            }),
            Expect::Deny,
        ),
        (
            "admin: no ticket",
            base(who("sam", &["sre"]), "prod-admin", "1h"),
            Expect::Error,
        ),
        (
            "admin: not sre",
            with(
                base(who("bob", &["engineering"]), "prod-admin", "1h"),
                &|c| {
                    c.ticket = Some("INC-9");
                    c.ticket_fact = TicketFact::Verified;
                },
            ),
            Expect::Deny,
        ),
        (
            "staging: engineer",
            base(who("bob", &["engineering"]), "staging-deploy", "8h"),
            Expect::Auto,
        ),
        (
            "staging: no justification needed",
            with(
                base(who("bob", &["engineering"]), "staging-deploy", "1h"),
                &|c| c.justification = "",
            ),
            Expect::Auto,
        ),
        (
            "staging: outsider",
            base(who("eve", &[]), "staging-deploy", "1h"),
            Expect::Deny,
        ),
        (
            "billing: bob, short",
            base(who("bob", &[]), "billing-export", "30m"),
            Expect::Auto,
        ),
        (
            "billing: bob, a second too long, no human",
            base(who("bob", &[]), "billing-export", "1801s"),
            Expect::Deny,
        ),
        (
            "billing: someone else",
            base(who("eve", &["engineering"]), "billing-export", "10m"),
            Expect::Deny,
        ),
        (
            "billing: justification required",
            with(base(who("bob", &[]), "billing-export", "10m"), &|c| {
                c.justification = "  "
            }),
            Expect::Error,
        ),
        (
            "audit: always closed",
            base(who("ann", &["auditors"]), "audit-read", "10m"),
            Expect::Deny,
        ),
        (
            "ci: calm",
            with(
                base(who("bob", &["engineering"]), "ci-secrets", "10m"),
                &|c| c.risk = Risk::Score(20),
            ),
            Expect::Auto,
        ),
        (
            "ci: uneasy",
            with(
                base(who("bob", &["engineering"]), "ci-secrets", "10m"),
                &|c| c.risk = Risk::Score(21),
            ),
            Expect::Human(1),
        ),
        (
            "ci: not scored",
            with(
                base(who("bob", &["engineering"]), "ci-secrets", "10m"),
                &|c| c.risk = Risk::NoAssessor,
            ),
            Expect::Human(1),
        ),
        (
            "ci: score 0",
            with(
                base(who("bob", &["engineering"]), "ci-secrets", "10m"),
                &|c| c.risk = Risk::Score(0),
            ),
            Expect::Auto,
        ),
        (
            "payments: on call",
            with(
                base(who("bob", &["engineering"]), "payments-db-write", "20m"),
                &|c| c.on_call = Some(&["payments-primary"]),
            ),
            Expect::Auto,
        ),
        (
            "payments: on call, too long",
            with(
                base(who("bob", &["engineering"]), "payments-db-write", "31m"),
                &|c| c.on_call = Some(&["payments-primary"]),
            ),
            Expect::Human(1),
        ),
        (
            "payments: on call for another schedule",
            with(
                base(who("bob", &["engineering"]), "payments-db-write", "20m"),
                &|c| c.on_call = Some(&["db-primary"]),
            ),
            Expect::Human(1),
        ),
        (
            "payments: nobody could tell (no source)",
            base(who("bob", &["engineering"]), "payments-db-write", "20m"),
            Expect::Human(1),
        ),
        (
            "payments: on call but not eligible",
            with(
                base(who("bob", &["oncall"]), "payments-db-write", "20m"),
                &|c| c.on_call = Some(&["payments-primary"]),
            ),
            Expect::Deny,
        ),
    ];
    for (name, case, expect) in table {
        let got = both(cat, ced, &case);
        assert_eq!(kind(&got), expect, "{name}: {got:?}");
        if let Ok((Verdict::NeedsApproval { approvers, .. }, _)) = &got {
            assert!(!approvers.is_empty(), "{name}");
        }
    }
}

fn arb_case() -> impl Strategy<Value = Case> {
    // Who the examples are written for, plus random extra groups and a
    // random on-call attribute, so that most cases reach a real judgement.
    let profile = prop::sample::select(vec![
        ("bob", vec!["engineering", "oncall"]),
        ("bob", vec!["engineering"]),
        ("bob", vec![]),
        ("olivia", vec![]),
        ("sam", vec!["sre"]),
        ("ann", vec!["auditors"]),
        ("eve", vec!["Engineering"]),
    ]);
    let extra = prop::collection::btree_set(
        prop::sample::select(vec![
            "engineering",
            "oncall",
            "sre",
            "auditors",
            "sre-leads",
        ]),
        0..2,
    );
    let ids = (profile, extra).prop_map(|((id, mut groups), extra)| {
        groups.extend(extra);
        (id, groups)
    });
    let attr = prop::sample::select(vec![None, Some("true"), Some("true"), Some("false")]);
    let ent = prop::sample::select(vec![
        "prod-db-read",
        "prod-admin",
        "staging-deploy",
        "billing-export",
        "audit-read",
        "ci-secrets",
        "payments-db-write",
    ]);
    let justification = prop::sample::select(vec![
        "",
        "INC-1: restore the orders table",
        "fix",
        "CHG-77: rotate the replica certificates",
    ]);
    let ticket = prop::sample::select(vec![None, Some("INC-42"), Some(" INC-42 "), Some("JIRA-1")]);
    let ticket_fact = prop::sample::select(vec![
        TicketFact::NoVerifier,
        TicketFact::Verified,
        TicketFact::Refused,
        TicketFact::VerifiedOther,
    ]);
    let risk = prop_oneof![
        Just(Risk::NoAssessor),
        Just(Risk::Unavailable),
        (0u8..=100).prop_map(Risk::Score),
        // The thresholds of the examples, and either side of them.
        prop::sample::select(vec![0u8, 19, 20, 21, 39, 40, 41, 100]).prop_map(Risk::Score),
    ];
    let secs = prop_oneof![
        1u64..(9 * 3600),
        prop::sample::select(vec![
            599u64, 600, 601, 899, 900, 901, 1799, 1800, 1801, 3600, 7200
        ]),
    ];
    let provider = prop::sample::select(vec![0u64, 600, 1800, 12 * 3600]);
    let on_call: BoxedStrategy<Option<&'static [&'static str]>> = prop::sample::select(vec![
        None,
        Some(&[][..]),
        Some(&["payments-primary"][..]),
        Some(&["db-primary"][..]),
        Some(&["db-primary", "payments-primary"][..]),
    ])
    .boxed();
    (
        (ids, attr, on_call),
        ent,
        secs,
        (justification, ticket, ticket_fact),
        risk,
        provider,
    )
        .prop_map(
            |(
                ((id, groups), attr, on_call),
                entitlement,
                secs,
                (justification, ticket, ticket_fact),
                risk,
                provider,
            )| {
                let mut requester = groups
                    .into_iter()
                    .fold(Principal::new(id).unwrap(), |p, g| p.with_group(g));
                if let Some(v) = attr {
                    requester = requester.with_attribute("oncall", v);
                }
                Case {
                    requester,
                    entitlement,
                    duration: format!("{secs}s"),
                    justification,
                    ticket,
                    ticket_fact,
                    risk,
                    provider_max: if provider == 0 {
                        Duration::from_millis(300)
                    } else {
                        Duration::from_secs(provider)
                    },
                    on_call,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Generated requests get the same verdict, approvers, quorum and
    /// maximum from both policies (or the same error).
    #[test]
    fn generated_requests_get_the_same_decisions(case in arb_case()) {
        let _ = both(catalogue(), cedar(), &case);
    }
}

/// The generator reaches every kind of answer, so the property above
/// compares real decisions, not only errors and denials.
#[test]
fn generated_requests_reach_every_verdict() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = arb_case();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..2000 {
        let case = strategy.new_tree(&mut runner).unwrap().current();
        let got = both(catalogue(), cedar(), &case);
        seen.insert(format!("{:?}", kind(&got)));
    }
    for k in ["Auto", "Deny", "Error", "Human(1)", "Human(2)"] {
        assert!(seen.contains(k), "never generated {k}: {seen:?}");
    }
}

// ---------------------------------------------------------------------------
// The policy contract.
// ---------------------------------------------------------------------------

#[cfg(feature = "testing")]
#[test]
fn the_cedar_policy_keeps_the_contract() {
    use jit_core::testing::policy as contract;
    let policy = cedar();
    let people = vec![
        oncall_engineer(),
        who("olivia", &[]),
        who("sam", &["sre"]),
        who("carol", &[]),
        who("lena", &["sre-leads"]),
        who("root", &["secops"]),
        who("eve", &[]),
    ];
    let template = AccessRequest::new(
        "x",
        "10m".parse().unwrap(),
        "INC-42: restore the orders table",
    )
    .with_ticket("INC-42");
    contract::check_entitlements_agree(policy);
    for provider_max in [Duration::from_secs(12 * 3600), Duration::from_secs(600)] {
        for c in [
            PolicyContext::new(at(10), provider_max),
            PolicyContext::new(at(10), provider_max)
                .with_risk(scored(5))
                .with_ticket(verdict("INC-42", true)),
        ] {
            contract::check_evaluate(policy, &people, &template, &c);
            contract::check_approvable_entitlements(policy, &people, &people, &template, &c);
        }
    }
    contract::check_admins_are_exact(policy, &who("root", &["secops"]));
}

/// The README's Cedar example loads and decides as the README says.
#[test]
fn the_readme_example_holds() {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("```cedar\n")
        .expect("a cedar block in the README")
        + 9;
    let len = readme[start..].find("```").unwrap();
    let policies = &readme[start..start + len];
    let entitlements = r#"
[[entitlements]]
id = "prod-db-read"
provider = "local"
max_duration = "1h"
target = { audience = "prod-db", scopes = ["read"] }
require_ticket = true
on_call_schedules = ["db-primary"]

[entitlements.approval]
groups = ["db-leads"]
"#;
    let policy = CedarPolicy::from_strs(entitlements, policies).unwrap();
    let e = policy.entitlement("prod-db-read").unwrap();
    assert_eq!(policy.on_call_schedules(&e), vec!["db-primary"]);
    let bob = who("bob", &["engineering"]);
    let r =
        AccessRequest::new("prod-db-read", "10m".parse().unwrap(), "restore").with_ticket("INC-7");
    let good = ctx()
        .with_ticket(verdict("INC-7", true))
        .with_risk(scored(10))
        .with_on_call(["db-primary"]);
    assert_eq!(ask(&policy, &bob, &r, &good).verdict, Verdict::AutoApprove);
    let off_duty = ctx()
        .with_ticket(verdict("INC-7", true))
        .with_risk(scored(10));
    let d = ask(&policy, &bob, &r, &off_duty);
    assert!(
        matches!(&d.verdict, Verdict::NeedsApproval { approvers, quorum: 1 } if approvers.groups.contains("db-leads")),
        "{d:?}"
    );
    let unverified = good.clone().with_ticket(verdict("INC-7", false));
    let d = ask(&policy, &bob, &r, &unverified);
    assert!(d.is_deny());
    assert!(d.reasons[0].contains("verified"), "{d:?}");
}
