//! The catalogue policy: loading errors, request-field errors and decisions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use jit_core::policy::{CataloguePolicy, Policy, PolicyContext};
use jit_core::types::{AccessRequest, ApproverSet, Decision, Principal, Verdict};
use jit_core::{ConfigError, RequestError};

const FULL: &str = r#"
[settings]
pending_ttl = "2h"

[admins]
ids = ["alice"]
groups = ["secops"]

[[entitlements]]
id = "prod-db-read"
description = "Read-only access to the production database"
provider = "local"
max_duration = "1h"
target = { audience = "prod-db", scopes = ["read"] }
require_justification = true
justification_pattern = "^(INC|CHG)-[0-9]+: .{10,}"
require_ticket = false
ticket_pattern = "^INC-[0-9]+$"

[entitlements.eligible]
ids = ["bob"]
groups = ["engineering"]

[entitlements.approval]
ids = ["carol"]
groups = ["sre-leads"]
quorum = 1

[entitlements.auto_approve]
max_duration = "15m"
groups = ["oncall"]
attributes = { oncall = "true" }

[[entitlements]]
id = "prod-admin"
provider = "local"
max_duration = "8h"
require_ticket = true

[entitlements.eligible]
groups = ["sre"]

[entitlements.approval]
ids = ["carol", "dave"]
quorum = 2

[[entitlements]]
id = "frozen"
provider = "local"
max_duration = "1h"
require_justification = false

[entitlements.eligible]
ids = ["bob"]

[[entitlements]]
id = "auto-only"
provider = "local"
max_duration = "1h"
require_justification = false

[entitlements.eligible]
ids = ["bob"]

[entitlements.auto_approve]
max_duration = "30m"
"#;

const JUST: &str = "INC-42: restore the orders table";

fn policy() -> CataloguePolicy {
    CataloguePolicy::from_toml_str(FULL).unwrap()
}

fn ctx(provider_max: Duration) -> PolicyContext {
    PolicyContext::new(chrono::Utc::now(), provider_max)
}

fn hours(h: u64) -> Duration {
    Duration::from_secs(h * 3600)
}

fn req(ent: &str, dur: &str, justification: &str) -> AccessRequest {
    AccessRequest::new(ent, dur.parse().unwrap(), justification)
}

fn eval(p: &CataloguePolicy, who: &Principal, r: &AccessRequest) -> Result<Decision, RequestError> {
    let e = p.entitlement(&r.entitlement).unwrap();
    p.evaluate(who, r, &e, &ctx(hours(12)))
}

fn load_err(text: &str) -> ConfigError {
    CataloguePolicy::from_toml_str(text).unwrap_err()
}

/// A minimal valid entitlement, for error tests that change one thing.
fn one(extra_top: &str, extra_tables: &str) -> String {
    format!(
        "[[entitlements]]\nid = \"e1\"\nprovider = \"local\"\nmax_duration = \"1h\"\n{extra_top}\n[entitlements.eligible]\nids = [\"bob\"]\n{extra_tables}"
    )
}

fn invalid(err: ConfigError) -> (String, String, String) {
    match err {
        ConfigError::InvalidField {
            entitlement,
            field,
            message,
        } => (entitlement, field, message),
        other => panic!("expected InvalidField, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Loading.
// ---------------------------------------------------------------------------

#[test]
fn full_catalogue_loads_with_every_field() {
    let p = policy();
    assert_eq!(p.pending_ttl(), hours(2));
    assert_eq!(p.settings().pending_ttl(), hours(2));
    assert!(p.admins().ids.contains("alice"));
    assert!(p.admins().groups.contains("secops"));

    let ids: Vec<String> = p.entitlements().into_iter().map(|e| e.id).collect();
    assert_eq!(ids, ["prod-db-read", "prod-admin", "frozen", "auto-only"]);

    let e = p.entitlement("prod-db-read").unwrap();
    assert_eq!(e.description, "Read-only access to the production database");
    assert_eq!(e.provider, "local");
    assert_eq!(e.max_duration, "1h".parse().unwrap());
    assert_eq!(
        e.target,
        serde_json::json!({ "audience": "prod-db", "scopes": ["read"] })
    );
    assert!(p.entitlement("nope").is_none());
}

#[test]
fn defaults_apply_when_sections_are_absent() {
    let p = CataloguePolicy::from_toml_str(&one("", "")).unwrap();
    assert_eq!(p.pending_ttl(), hours(24));
    assert!(p.admins().is_empty());
    assert_eq!(p.entitlement("e1").unwrap().target, serde_json::json!({}));
    // require_justification defaults to true.
    let bob = Principal::new("bob").unwrap();
    assert_eq!(
        eval(&p, &bob, &req("e1", "10m", " ")),
        Err(RequestError::JustificationMissing)
    );
    let empty = CataloguePolicy::from_toml_str("").unwrap();
    assert!(empty.entitlements().is_empty());
}

#[test]
fn target_datetimes_and_nesting_become_json() {
    let p = CataloguePolicy::from_toml_str(&one(
        "target = { at = 1979-05-27T07:32:00Z, n = 3, f = 1.5, nested = { ok = true } }",
        "",
    ))
    .unwrap();
    assert_eq!(
        p.entitlement("e1").unwrap().target,
        serde_json::json!({ "at": "1979-05-27T07:32:00Z", "n": 3, "f": 1.5, "nested": { "ok": true } })
    );
    let (ent, field, _) = invalid(load_err(&one("target = { x = nan }", "")));
    assert_eq!((ent.as_str(), field.as_str()), ("e1", "target"));
}

#[test]
fn from_file_reads_and_reports_io_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalogue.toml");
    std::fs::write(&path, FULL).unwrap();
    assert_eq!(
        CataloguePolicy::from_file(&path)
            .unwrap()
            .entitlements()
            .len(),
        4
    );

    let missing = dir.path().join("missing.toml");
    match CataloguePolicy::from_file(&missing).unwrap_err() {
        ConfigError::Io { path, message } => {
            assert_eq!(path, missing.display().to_string());
            assert!(!message.is_empty());
        }
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn unknown_key_in_approval_names_key_and_line() {
    let text = one("", "[entitlements.approval]\napprovers = [\"carol\"]\n");
    let line = text
        .lines()
        .position(|l| l.starts_with("approvers"))
        .unwrap()
        + 1;
    assert_eq!(
        load_err(&text),
        ConfigError::UnknownKey {
            key: "approvers".into(),
            line
        }
    );
}

#[test]
fn unknown_top_level_key() {
    let text = "# a comment\n\nversion = 2\n";
    assert_eq!(
        load_err(text),
        ConfigError::UnknownKey {
            key: "version".into(),
            line: 3
        }
    );
    // A misspelt table header is an unknown key too.
    let text = "[setting]\npending_ttl = \"1h\"\n";
    assert_eq!(
        load_err(text),
        ConfigError::UnknownKey {
            key: "setting".into(),
            line: 1
        }
    );
}

#[test]
fn unknown_key_in_entitlement() {
    let text = one("max_durration = \"2h\"", "");
    assert_eq!(
        load_err(&text),
        ConfigError::UnknownKey {
            key: "max_durration".into(),
            line: 5
        }
    );
}

#[test]
fn unknown_key_in_other_tables() {
    let cases = [
        ("[settings]\nttl = \"1h\"\n".to_string(), "ttl", 2),
        ("[admins]\nusers = [\"a\"]\n".to_string(), "users", 2),
        (
            one("", "[entitlements.auto_approve]\nmax = \"5m\"\n"),
            "max",
            9,
        ),
        (one("", "risk = 3\n"), "risk", 8),
    ];
    for (text, key, line) in cases {
        assert_eq!(
            load_err(&text),
            ConfigError::UnknownKey {
                key: key.into(),
                line
            },
            "{text}"
        );
    }
}

#[test]
fn syntax_and_type_errors_carry_the_line() {
    match load_err("[[entitlements]]\nid = \"e1\"\nprovider = \n") {
        ConfigError::Syntax { line, message } => {
            assert_eq!(line, 3);
            assert!(!message.is_empty() && !message.contains('\n'), "{message}");
        }
        other => panic!("expected Syntax, got {other:?}"),
    }
    match load_err(&one("require_ticket = \"yes\"", "")) {
        ConfigError::Syntax { line, message } => {
            assert_eq!(line, 5);
            assert!(message.contains("bool"), "{message}");
        }
        other => panic!("expected Syntax, got {other:?}"),
    }
    // A missing required key.
    assert!(matches!(
        load_err("[[entitlements]]\nid = \"e1\"\nmax_duration = \"1h\"\n[entitlements.eligible]\nids = [\"b\"]\n"),
        ConfigError::Syntax { ref message, .. } if message.contains("provider")
    ));
}

#[test]
fn duplicate_entitlement() {
    let text = format!("{}\n{}", one("", ""), one("", ""));
    assert_eq!(
        load_err(&text),
        ConfigError::DuplicateEntitlement("e1".into())
    );
}

#[test]
fn bad_entitlement_id() {
    let text = one("", "").replace("id = \"e1\"", "id = \"bad id!\"");
    let (ent, field, msg) = invalid(load_err(&text));
    assert_eq!((ent.as_str(), field.as_str()), ("bad id!", "id"));
    assert!(msg.contains("[A-Za-z0-9._:/-]"), "{msg}");
}

#[test]
fn empty_provider() {
    let text = one("", "").replace("provider = \"local\"", "provider = \"  \"");
    let (ent, field, _) = invalid(load_err(&text));
    assert_eq!((ent.as_str(), field.as_str()), ("e1", "provider"));
}

#[test]
fn unparsable_durations() {
    for bad in ["\"soon\"", "\"0m\"", "\"8d\"", "\"-1h\""] {
        let text = one("", "").replace("max_duration = \"1h\"", &format!("max_duration = {bad}"));
        let (ent, field, _) = invalid(load_err(&text));
        assert_eq!(
            (ent.as_str(), field.as_str()),
            ("e1", "max_duration"),
            "{bad}"
        );
    }
    let (ent, field, _) = invalid(load_err(&one(
        "",
        "[entitlements.auto_approve]\nmax_duration = \"later\"\n",
    )));
    assert_eq!(
        (ent.as_str(), field.as_str()),
        ("e1", "auto_approve.max_duration")
    );
    let (ent, field, _) = invalid(load_err("[settings]\npending_ttl = \"a while\"\n"));
    assert_eq!((ent.as_str(), field.as_str()), ("settings", "pending_ttl"));
    let (_, field, _) = invalid(load_err("[settings]\npending_ttl = \"0s\"\n"));
    assert_eq!(field, "pending_ttl");
}

#[test]
fn regex_that_does_not_compile() {
    let (ent, field, msg) = invalid(load_err(&one("justification_pattern = \"(INC\"", "")));
    assert_eq!(
        (ent.as_str(), field.as_str()),
        ("e1", "justification_pattern")
    );
    assert!(msg.contains("`(INC`"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    let (ent, field, _) = invalid(load_err(&one("ticket_pattern = \"[\"", "")));
    assert_eq!((ent.as_str(), field.as_str()), ("e1", "ticket_pattern"));
}

#[test]
fn quorum_zero_or_negative() {
    for q in ["0", "-1"] {
        let (ent, field, _) = invalid(load_err(&one(
            "",
            &format!("[entitlements.approval]\ngroups = [\"x\"]\nquorum = {q}\n"),
        )));
        assert_eq!((ent.as_str(), field.as_str()), ("e1", "approval.quorum"));
    }
}

#[test]
fn auto_approve_max_above_entitlement_max() {
    let (ent, field, msg) = invalid(load_err(&one(
        "",
        "[entitlements.auto_approve]\nmax_duration = \"2h\"\n",
    )));
    assert_eq!(
        (ent.as_str(), field.as_str()),
        ("e1", "auto_approve.max_duration")
    );
    assert!(msg.contains("`2h`") && msg.contains("`1h`"), "{msg}");
}

#[test]
fn empty_eligibility() {
    let text = one("", "").replace("ids = [\"bob\"]", "ids = []\ngroups = []");
    let (ent, field, _) = invalid(load_err(&text));
    assert_eq!((ent.as_str(), field.as_str()), ("e1", "eligible"));
    // A missing `[entitlements.eligible]` table is the same mistake.
    let text = "[[entitlements]]\nid = \"e1\"\nprovider = \"local\"\nmax_duration = \"1h\"\n";
    let (_, field, _) = invalid(load_err(text));
    assert_eq!(field, "eligible");
}

#[test]
fn empty_auto_approve_groups_and_bad_names() {
    let (_, field, _) = invalid(load_err(&one(
        "",
        "[entitlements.auto_approve]\ngroups = []\n",
    )));
    assert_eq!(field, "auto_approve.groups");
    let text = one("", "").replace("ids = [\"bob\"]", "ids = [\"\"]");
    let (_, field, _) = invalid(load_err(&text));
    assert_eq!(field, "eligible.ids");
    let (ent, field, _) = invalid(load_err("[admins]\ngroups = [\" \"]\n"));
    assert_eq!((ent.as_str(), field.as_str()), ("admins", "groups"));
}

#[test]
fn unreachable_quorum() {
    let err = load_err(&one(
        "",
        "[entitlements.approval]\nids = [\"carol\", \"CAROL\"]\nquorum = 2\n",
    ));
    match err {
        ConfigError::UnreachableQuorum {
            entitlement,
            quorum,
            ..
        } => assert_eq!((entitlement.as_str(), quorum), ("e1", 2)),
        other => panic!("expected UnreachableQuorum, got {other:?}"),
    }
    // With a group the quorum may be reachable: accepted.
    CataloguePolicy::from_toml_str(&one(
        "",
        "[entitlements.approval]\nids = [\"carol\"]\ngroups = [\"leads\"]\nquorum = 3\n",
    ))
    .unwrap();
    // An approval section that names no one at all.
    assert!(matches!(
        load_err(&one("", "[entitlements.approval]\nquorum = 1\n")),
        ConfigError::UnreachableQuorum { quorum: 1, .. }
    ));
}

// ---------------------------------------------------------------------------
// Request-field errors.
// ---------------------------------------------------------------------------

#[test]
fn justification_missing() {
    let bob = Principal::new("bob").unwrap();
    assert_eq!(
        eval(&policy(), &bob, &req("prod-db-read", "10m", "  \t")),
        Err(RequestError::JustificationMissing)
    );
}

#[test]
fn justification_pattern_mismatch() {
    let bob = Principal::new("bob").unwrap();
    assert_eq!(
        eval(
            &policy(),
            &bob,
            &req("prod-db-read", "10m", "because I want to")
        ),
        Err(RequestError::JustificationPattern {
            pattern: "^(INC|CHG)-[0-9]+: .{10,}".into()
        })
    );
}

#[test]
fn ticket_missing() {
    let sre = Principal::new("sam").unwrap().with_group("sre");
    assert_eq!(
        eval(&policy(), &sre, &req("prod-admin", "1h", "fix")),
        Err(RequestError::TicketMissing("prod-admin".into()))
    );
    let ok = eval(
        &policy(),
        &sre,
        &req("prod-admin", "1h", "fix").with_ticket("T-1"),
    )
    .unwrap();
    assert!(matches!(
        ok.verdict,
        Verdict::NeedsApproval { quorum: 2, .. }
    ));
}

#[test]
fn ticket_pattern_mismatch() {
    let bob = Principal::new("bob").unwrap();
    let r = req("prod-db-read", "10m", JUST).with_ticket("CHG-7");
    assert_eq!(
        eval(&policy(), &bob, &r),
        Err(RequestError::TicketPattern {
            ticket: "CHG-7".into(),
            pattern: "^INC-[0-9]+$".into()
        })
    );
    // A matching ticket passes.
    let r = req("prod-db-read", "10m", JUST).with_ticket("INC-7");
    assert!(eval(&policy(), &bob, &r).is_ok());
}

#[test]
fn field_errors_come_before_eligibility() {
    let stranger = Principal::new("mallory").unwrap();
    assert_eq!(
        eval(&policy(), &stranger, &req("prod-db-read", "10m", "")),
        Err(RequestError::JustificationMissing)
    );
}

#[test]
fn entitlement_not_in_catalogue_is_an_error() {
    let p = policy();
    let mut e = p.entitlement("frozen").unwrap();
    e.id = "elsewhere".into();
    let bob = Principal::new("bob").unwrap();
    assert_eq!(
        p.evaluate(&bob, &req("elsewhere", "1h", "x"), &e, &ctx(hours(1))),
        Err(RequestError::UnknownEntitlement("elsewhere".into()))
    );
}

// ---------------------------------------------------------------------------
// Eligibility.
// ---------------------------------------------------------------------------

#[test]
fn eligible_by_exact_id_only() {
    let bob = Principal::new("bob").unwrap();
    let d = eval(&policy(), &bob, &req("prod-db-read", "30m", JUST)).unwrap();
    assert!(!d.is_deny(), "{d:?}");
    assert!(d.reasons[0].contains("by id"), "{:?}", d.reasons);
    // OIDC subjects are case-sensitive: a variant of `bob` is someone else.
    for other in ["BOB", "Bob", "ｂｏｂ", "bob\u{200b}"] {
        let p = Principal::new(other).unwrap();
        let d = eval(&policy(), &p, &req("prod-db-read", "30m", JUST)).unwrap();
        assert!(d.is_deny(), "{other:?} was eligible as bob: {d:?}");
    }
}

#[test]
fn aliases_never_make_anyone_eligible() {
    // A token can carry any `email` or `preferred_username`: an alias naming
    // an eligible id gives nothing.
    let b = Principal::new("u-123").unwrap().with_alias("bob");
    let d = eval(&policy(), &b, &req("prod-db-read", "30m", JUST)).unwrap();
    assert!(d.is_deny(), "{d:?}");
}

#[test]
fn eligible_by_group_spelled_exactly() {
    let e = Principal::new("erin").unwrap().with_group("engineering");
    let d = eval(&policy(), &e, &req("prod-db-read", "30m", JUST)).unwrap();
    assert!(!d.is_deny(), "{d:?}");
    assert_eq!(
        d.reasons[0],
        "`erin` is eligible for `prod-db-read` through group `engineering`"
    );
    let e = Principal::new("erin").unwrap().with_group("Engineering");
    let d = eval(&policy(), &e, &req("prod-db-read", "30m", JUST)).unwrap();
    assert!(
        d.is_deny(),
        "a group in another case is another group: {d:?}"
    );
}

#[test]
fn approver_sets_name_exact_ids_and_groups() {
    let d = eval(
        &policy(),
        &Principal::new("erin").unwrap().with_group("engineering"),
        &req("prod-db-read", "30m", JUST),
    )
    .unwrap();
    let Verdict::NeedsApproval { approvers, .. } = &d.verdict else {
        panic!("{d:?}")
    };
    assert!(approvers.contains(&Principal::new("carol").unwrap()));
    assert!(approvers.contains(&Principal::new("x").unwrap().with_group("sre-leads")));
    for p in [
        Principal::new("CAROL").unwrap(),
        Principal::new("mallory").unwrap().with_alias("carol"),
        Principal::new("mallory").unwrap().with_group("SRE-Leads"),
    ] {
        assert!(!approvers.contains(&p), "{p:?} is not an approver");
    }
}

#[test]
fn not_eligible_is_a_deny_with_a_reason() {
    let m = Principal::new("mallory")
        .unwrap()
        .with_group("marketing")
        .with_alias("mallory@example.com");
    let d = eval(&policy(), &m, &req("prod-db-read", "10m", JUST)).unwrap();
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.reasons, ["`mallory` is not eligible for `prod-db-read`"]);
}

// ---------------------------------------------------------------------------
// Durations.
// ---------------------------------------------------------------------------

#[test]
fn long_request_is_clamped_with_a_reason() {
    let sre = Principal::new("sam").unwrap().with_group("sre");
    let r = req("prod-admin", "10h", "fix").with_ticket("T-1");
    let d = eval(&policy(), &sre, &r).unwrap();
    assert_eq!(d.max_duration, "8h".parse().unwrap());
    assert!(
        d.reasons
            .contains(&"duration `10h` clamped to the maximum of `8h`".to_string()),
        "{:?}",
        d.reasons
    );
    // Within the maximum: no clamping reason.
    let d = eval(
        &policy(),
        &sre,
        &req("prod-admin", "2h", "fix").with_ticket("T-1"),
    )
    .unwrap();
    assert!(!d.reasons.iter().any(|r| r.contains("clamped")));
}

#[test]
fn provider_max_lowers_the_effective_maximum() {
    let p = policy();
    let sre = Principal::new("sam").unwrap().with_group("sre");
    let e = p.entitlement("prod-admin").unwrap();
    let r = req("prod-admin", "4h", "fix").with_ticket("T-1");
    let d = p
        .evaluate(&sre, &r, &e, &ctx(Duration::from_millis(3_600_900)))
        .unwrap();
    assert_eq!(d.max_duration, "1h".parse().unwrap());
    assert!(d
        .reasons
        .contains(&"duration `4h` clamped to the maximum of `1h`".to_string()));
}

#[test]
fn provider_max_below_a_second_denies() {
    let p = policy();
    let sre = Principal::new("sam").unwrap().with_group("sre");
    let e = p.entitlement("prod-admin").unwrap();
    let r = req("prod-admin", "4h", "fix").with_ticket("T-1");
    let d = p
        .evaluate(&sre, &r, &e, &ctx(Duration::from_millis(500)))
        .unwrap();
    assert!(d.is_deny());
    assert!(
        d.reasons.iter().any(|r| r.contains("one-second")),
        "{:?}",
        d.reasons
    );
}

// ---------------------------------------------------------------------------
// Approval paths.
// ---------------------------------------------------------------------------

fn oncall_bob() -> Principal {
    Principal::new("bob")
        .unwrap()
        .with_group("oncall")
        .with_attribute("oncall", "true")
}

#[test]
fn auto_approve_when_all_conditions_hold() {
    let d = eval(&policy(), &oncall_bob(), &req("prod-db-read", "15m", JUST)).unwrap();
    assert_eq!(d.verdict, Verdict::AutoApprove);
    assert_eq!(d.max_duration, "1h".parse().unwrap());
    let joined = d.reasons.join("\n");
    assert!(
        joined.contains("duration `15m` is within the auto-approve limit of `15m`"),
        "{joined}"
    );
    assert!(joined.contains("group `oncall`"), "{joined}");
    assert!(joined.contains("attribute `oncall` is `true`"), "{joined}");
}

fn assert_needs_approval(d: &Decision, failed: &str) {
    assert_eq!(
        d.verdict,
        Verdict::NeedsApproval {
            approvers: ApproverSet {
                ids: ["carol".to_string()].into(),
                groups: ["sre-leads".to_string()].into(),
            },
            quorum: 1,
        }
    );
    assert!(
        d.reasons
            .iter()
            .any(|r| r == &format!("not auto-approved: {failed}")),
        "{:?}",
        d.reasons
    );
    assert!(
        d.reasons
            .iter()
            .any(|r| r == "needs 1 approval from ids `carol` or groups `sre-leads`"),
        "{:?}",
        d.reasons
    );
}

#[test]
fn auto_approve_duration_fails() {
    let d = eval(&policy(), &oncall_bob(), &req("prod-db-read", "16m", JUST)).unwrap();
    assert_needs_approval(&d, "duration `16m` exceeds the auto-approve limit of `15m`");
}

#[test]
fn auto_approve_group_fails() {
    let bob = Principal::new("bob")
        .unwrap()
        .with_attribute("oncall", "true");
    let d = eval(&policy(), &bob, &req("prod-db-read", "5m", JUST)).unwrap();
    assert_needs_approval(&d, "`bob` is in none of the groups `oncall`");
}

#[test]
fn auto_approve_attribute_fails() {
    let bob = Principal::new("bob")
        .unwrap()
        .with_group("oncall")
        .with_attribute("oncall", "false");
    let d = eval(&policy(), &bob, &req("prod-db-read", "5m", JUST)).unwrap();
    assert_needs_approval(&d, "attribute `oncall` is `false`, not `true`");
    let bob = Principal::new("bob").unwrap().with_group("oncall");
    let d = eval(&policy(), &bob, &req("prod-db-read", "5m", JUST)).unwrap();
    assert_needs_approval(&d, "attribute `oncall` is not set");
}

#[test]
fn auto_approve_duration_is_compared_after_clamping() {
    // auto-only: max 1h, auto up to 30m. With a 20m provider maximum a 2h
    // request is clamped to 20m and then qualifies.
    let p = policy();
    let bob = Principal::new("bob").unwrap();
    let e = p.entitlement("auto-only").unwrap();
    let r = req("auto-only", "2h", "");
    let d = p
        .evaluate(&bob, &r, &e, &ctx(Duration::from_secs(20 * 60)))
        .unwrap();
    assert_eq!(d.verdict, Verdict::AutoApprove);
    assert_eq!(d.max_duration, "20m".parse().unwrap());
    // Without the provider limit it is clamped to 1h, above 30m: no fallback, so deny.
    let d = eval(&p, &bob, &req("auto-only", "2h", "")).unwrap();
    assert!(d.is_deny());
    assert!(
        d.reasons.iter().any(|r| r.starts_with("not auto-approved")),
        "{:?}",
        d.reasons
    );
    assert!(
        d.reasons.iter().any(|r| r.starts_with("no approval rule")),
        "{:?}",
        d.reasons
    );
}

#[test]
fn no_approval_and_no_auto_approve_denies() {
    let bob = Principal::new("bob").unwrap();
    let d = eval(&policy(), &bob, &req("frozen", "10m", "")).unwrap();
    assert_eq!(d.verdict, Verdict::Deny);
    let last = d.reasons.last().unwrap();
    assert!(last.starts_with("no approval rule"), "{last}");
}

#[test]
fn empty_auto_approve_approves_every_eligible_request() {
    let p = CataloguePolicy::from_toml_str(&one("", "[entitlements.auto_approve]\n")).unwrap();
    let bob = Principal::new("bob").unwrap();
    let d = eval(&p, &bob, &req("e1", "1h", "x")).unwrap();
    assert_eq!(d.verdict, Verdict::AutoApprove);
    let eve = Principal::new("eve").unwrap();
    assert!(eval(&p, &eve, &req("e1", "1h", "x")).unwrap().is_deny());
}

// ---------------------------------------------------------------------------
// Admins and settings.
// ---------------------------------------------------------------------------

#[test]
fn admins_by_exact_id_and_group_never_by_alias() {
    let p = policy();
    assert!(p.is_admin(&Principal::new("alice").unwrap()));
    assert!(p.is_admin(&Principal::new("zed").unwrap().with_group("secops")));
    // `preferred_username = alice` in mallory's token makes nobody an admin.
    assert!(!p.is_admin(&Principal::new("u-1").unwrap().with_alias("alice")));
    assert!(!p.is_admin(&Principal::new("Alice").unwrap()));
    assert!(!p.is_admin(&Principal::new("zed").unwrap().with_group("SecOps")));
    assert!(!p.is_admin(&Principal::new("bob").unwrap().with_group("engineering")));
    let none = CataloguePolicy::from_toml_str(&one("", "")).unwrap();
    assert!(!none.is_admin(&Principal::new("alice").unwrap()));
}

#[test]
fn errors_display_lowercase_without_trailing_period() {
    let errs = [
        load_err("version = 2\n"),
        load_err(&one("justification_pattern = \"(\"", "")),
        load_err(&one(
            "",
            "[entitlements.approval]\nids = [\"c\"]\nquorum = 2\n",
        )),
    ];
    for e in errs {
        let s = e.to_string();
        assert!(!s.ends_with('.'), "{s}");
        assert!(s.chars().next().unwrap().is_lowercase(), "{s}");
    }
}
