//! On-call: the rota file across hand-overs and daylight-saving changes
//! (with a manual clock), its validation, the catalogue's
//! `auto_approve.on_call`, and the broker asking a source at submit.
#![cfg(feature = "testing")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use jit_core::audit::AuditKind;
use jit_core::oncall::{OnCallSource, Rota};
use jit_core::testing::TestProvider;
use jit_core::{
    AccessRequest, Broker, CataloguePolicy, Clock, ConfigError, Error, ManualClock, MemoryStore,
    Policy, PolicyContext, Principal, State, Verdict,
};

const ROTA: &str = r#"
# Payments: Alice Monday to Thursday morning, Bob the rest, Berlin time.
[[schedules]]
id = "payments-primary"
time_zone = "Europe/Berlin"

[[schedules.weekly]]
from = "Mon 09:00"
until = "Thu 09:00"
subjects = ["alice"]

[[schedules.weekly]]
from = "Thu 09:00"
until = "Mon 09:00"
subjects = ["bob"]

[[schedules.overrides]]
from = "2026-12-24 18:00"
until = "2026-12-27 09:00"
subjects = ["dave"]

# Night shifts that start inside the DST gap and fold.
[[schedules]]
id = "night"
time_zone = "Europe/Berlin"

[[schedules.weekly]]
from = "Sun 02:30"
until = "Sun 06:00"
subjects = ["carol"]

# Every other Saturday, from the week of 7 December 2026.
[[schedules]]
id = "weekend-shadow"
time_zone = "Europe/Berlin"

[[schedules.weekly]]
from = "Sat 08:00"
until = "Sat 20:00"
subjects = ["erin"]
every_weeks = 2
first_week = "2026-12-09"

# Only overrides, in another zone than the schedule's.
[[schedules]]
id = "launch"
time_zone = "UTC"

[[schedules.overrides]]
from = "2026-12-10 09:00"
until = "2026-12-10 17:00"
time_zone = "America/New_York"
subjects = ["frank", "grace"]
"#;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn rota() -> Rota {
    Rota::from_toml_str(ROTA).unwrap()
}

/// Who is on call for `schedule` at the clock's now, through the trait.
async fn who(r: &Rota, clock: &ManualClock, schedule: &str) -> Vec<String> {
    r.on_call(schedule, clock.now())
        .await
        .unwrap()
        .into_iter()
        .collect()
}

#[tokio::test]
async fn the_instant_before_at_and_after_a_hand_over() {
    let r = rota();
    // Monday 7 December 2026, 09:00 in Berlin (CET, UTC+1) is 08:00 UTC.
    let clock = ManualClock::new(utc("2026-12-07T07:59:59.999999999Z"));
    assert_eq!(who(&r, &clock, "payments-primary").await, ["bob"]);
    clock.advance(TimeDelta::nanoseconds(1));
    assert_eq!(who(&r, &clock, "payments-primary").await, ["alice"]);
    clock.advance(TimeDelta::seconds(1));
    assert_eq!(who(&r, &clock, "payments-primary").await, ["alice"]);
    // Thursday 09:00 hands back to Bob, and he keeps it over the weekend.
    clock.set(utc("2026-12-10T07:59:59Z"));
    assert_eq!(who(&r, &clock, "payments-primary").await, ["alice"]);
    clock.set(utc("2026-12-10T08:00:00Z"));
    assert_eq!(who(&r, &clock, "payments-primary").await, ["bob"]);
    clock.set(utc("2026-12-13T23:00:00Z"));
    assert_eq!(who(&r, &clock, "payments-primary").await, ["bob"]);
    // Exact ids only: the rota answers ids, it never matches anything.
    let ids = r.on_call("payments-primary", clock.now()).await.unwrap();
    assert!(!ids.contains("Bob") && !ids.contains("bob@example.com"));
}

#[tokio::test]
async fn hand_overs_follow_the_wall_clock_across_daylight_saving() {
    let r = rota();
    // Clocks go forward on Sunday 29 March 2026: Monday 09:00 CEST is 07:00 UTC.
    let clock = ManualClock::new(utc("2026-03-30T06:59:59Z"));
    assert_eq!(who(&r, &clock, "payments-primary").await, ["bob"]);
    clock.set(utc("2026-03-30T07:00:00Z"));
    assert_eq!(who(&r, &clock, "payments-primary").await, ["alice"]);
    // A fixed UTC+1 would still say Bob here.
    clock.set(utc("2026-03-30T07:30:00Z"));
    assert_eq!(who(&r, &clock, "payments-primary").await, ["alice"]);
    // The week before, the same wall-clock hand-over was at 08:00 UTC.
    clock.set(utc("2026-03-23T07:30:00Z"));
    assert_eq!(who(&r, &clock, "payments-primary").await, ["bob"]);
    clock.set(utc("2026-03-23T08:00:00Z"));
    assert_eq!(who(&r, &clock, "payments-primary").await, ["alice"]);

    // Clocks go back on Sunday 25 October 2026: Monday 09:00 CET is 08:00 UTC.
    clock.set(utc("2026-10-26T07:30:00Z"));
    assert_eq!(who(&r, &clock, "payments-primary").await, ["bob"]);
    clock.set(utc("2026-10-26T08:00:00Z"));
    assert_eq!(who(&r, &clock, "payments-primary").await, ["alice"]);
    // ...and the Thursday before, still summer time, at 07:00 UTC.
    clock.set(utc("2026-10-22T06:59:59Z"));
    assert_eq!(who(&r, &clock, "payments-primary").await, ["alice"]);
    clock.set(utc("2026-10-22T07:00:00Z"));
    assert_eq!(who(&r, &clock, "payments-primary").await, ["bob"]);
}

#[tokio::test]
async fn a_hand_over_in_the_gap_or_the_fold() {
    let r = rota();
    // An ordinary Sunday in summer: 02:30 CEST is 00:30 UTC.
    let clock = ManualClock::new(utc("2026-04-05T00:29:59Z"));
    assert!(who(&r, &clock, "night").await.is_empty());
    clock.set(utc("2026-04-05T00:30:00Z"));
    assert_eq!(who(&r, &clock, "night").await, ["carol"]);
    // 29 March: 02:30 does not exist (02:00 -> 03:00); the shift starts at
    // 03:30 CEST, 01:30 UTC.
    clock.set(utc("2026-03-29T00:59:59Z"));
    assert!(who(&r, &clock, "night").await.is_empty());
    clock.set(utc("2026-03-29T01:29:59Z"));
    assert!(who(&r, &clock, "night").await.is_empty());
    clock.set(utc("2026-03-29T01:30:00Z"));
    assert_eq!(who(&r, &clock, "night").await, ["carol"]);
    // It ends at 06:00 CEST, 04:00 UTC.
    clock.set(utc("2026-03-29T03:59:59Z"));
    assert_eq!(who(&r, &clock, "night").await, ["carol"]);
    clock.set(utc("2026-03-29T04:00:00Z"));
    assert!(who(&r, &clock, "night").await.is_empty());
    // 25 October: 02:30 happens twice (00:30 UTC in CEST, 01:30 UTC in
    // CET); the shift starts at the first.
    clock.set(utc("2026-10-25T00:29:59Z"));
    assert!(who(&r, &clock, "night").await.is_empty());
    clock.set(utc("2026-10-25T00:30:00Z"));
    assert_eq!(who(&r, &clock, "night").await, ["carol"]);
    // It ends at 06:00 CET, 05:00 UTC: a shift an hour longer.
    clock.set(utc("2026-10-25T04:59:59Z"));
    assert_eq!(who(&r, &clock, "night").await, ["carol"]);
    clock.set(utc("2026-10-25T05:00:00Z"));
    assert!(who(&r, &clock, "night").await.is_empty());
}

#[tokio::test]
async fn overrides_replace_the_weekly_shifts_while_they_hold() {
    let r = rota();
    // 24 December 18:00 CET is 17:00 UTC.
    let clock = ManualClock::new(utc("2026-12-24T16:59:59Z"));
    assert_eq!(who(&r, &clock, "payments-primary").await, ["bob"]);
    clock.set(utc("2026-12-24T17:00:00Z"));
    assert_eq!(who(&r, &clock, "payments-primary").await, ["dave"]);
    clock.set(utc("2026-12-27T07:59:59Z"));
    assert_eq!(who(&r, &clock, "payments-primary").await, ["dave"]);
    clock.set(utc("2026-12-27T08:00:00Z"));
    assert_eq!(who(&r, &clock, "payments-primary").await, ["bob"]);
    // An override in New York time (EST, UTC-5) on a UTC schedule.
    clock.set(utc("2026-12-10T13:59:59Z"));
    assert!(who(&r, &clock, "launch").await.is_empty());
    clock.set(utc("2026-12-10T14:00:00Z"));
    assert_eq!(who(&r, &clock, "launch").await, ["frank", "grace"]);
    clock.set(utc("2026-12-10T22:00:00Z"));
    assert!(who(&r, &clock, "launch").await.is_empty());
}

#[tokio::test]
async fn every_other_week_counts_from_the_first_week_both_ways() {
    let r = rota();
    // Saturdays 08:00-20:00 CET (07:00-19:00 UTC) of even weeks from 7 December.
    let on = |d: &str| utc(&format!("{d}T12:00:00Z"));
    let clock = ManualClock::new(on("2026-12-12"));
    for (day, expected) in [
        ("2026-11-28", true),
        ("2026-12-05", false),
        ("2026-12-12", true),
        ("2026-12-19", false),
        ("2026-12-26", true),
        ("2027-01-02", false),
        ("2027-01-09", true),
    ] {
        clock.set(on(day));
        assert_eq!(
            who(&r, &clock, "weekend-shadow").await == ["erin"],
            expected,
            "{day}"
        );
    }
    clock.set(utc("2026-12-12T06:59:59Z"));
    assert!(who(&r, &clock, "weekend-shadow").await.is_empty());
    clock.set(utc("2026-12-12T07:00:00Z"));
    assert_eq!(who(&r, &clock, "weekend-shadow").await, ["erin"]);
}

#[tokio::test]
async fn an_unknown_schedule_is_an_error_and_the_rota_lists_its_own() {
    let r = rota();
    let err = r
        .on_call("payments", utc("2026-12-07T08:00:00Z"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no schedule `payments`"), "{err}");
    assert_eq!(
        r.schedules().unwrap(),
        BTreeSet::from(["launch", "night", "payments-primary", "weekend-shadow"].map(String::from))
    );
}

#[test]
fn bad_rotas_are_refused_naming_the_line_and_the_field() {
    let base = "[[schedules]]\nid = \"s\"\ntime_zone = \"Europe/Berlin\"\n[[schedules.weekly]]\n";
    let cases: Vec<(String, usize, &str, &str)> = vec![
        (String::new(), 1, "schedules", "at least one schedule"),
        (
            "[[schedules]]\nid = \"s\"\ntime_zone = \"Europe/Berln\"\n[[schedules.weekly]]\nfrom = \"Mon 09:00\"\nuntil = \"Tue 09:00\"\nsubjects = [\"a\"]\n".into(),
            3,
            "schedules[0].time_zone",
            "unknown time zone `Europe/Berln`",
        ),
        (
            format!("{base}from = \"Mon 9:00\"\nuntil = \"Tue 09:00\"\nsubjects = [\"a\"]\n"),
            5,
            "schedules[0].weekly[0].from",
            "not a day and a time",
        ),
        (
            format!("{base}from = \"Mon 09:00\"\nuntil = \"Mon 09:00\"\nsubjects = [\"a\"]\n"),
            6,
            "schedules[0].weekly[0].until",
            "equals `from`",
        ),
        (
            format!("{base}from = \"Mon 09:00\"\nuntil = \"Tue 09:00\"\nsubjects = []\n"),
            7,
            "schedules[0].weekly[0].subjects",
            "at least one subject",
        ),
        (
            format!("{base}from = \"Mon 09:00\"\nuntil = \"Tue 09:00\"\nsubjects = [\"a\", \" b\"]\n"),
            7,
            "schedules[0].weekly[0].subjects",
            "",
        ),
        (
            format!("{base}from = \"Mon 09:00\"\nuntil = \"Tue 09:00\"\nsubjects = [\"a\"]\nevery_weeks = 2\n"),
            5,
            "schedules[0].weekly[0].first_week",
            "needs `first_week`",
        ),
        (
            format!("{base}from = \"Mon 09:00\"\nuntil = \"Tue 09:00\"\nsubjects = [\"a\"]\nevery_weeks = 0\n"),
            8,
            "schedules[0].weekly[0].every_weeks",
            "from 1 to 52",
        ),
        (
            format!("{base}from = \"Mon 09:00\"\nuntil = \"Tue 09:00\"\nsubject = [\"a\"]\n"),
            7,
            "subject",
            "unknown field",
        ),
        (
            format!("{base}from = \"Mon 09:00\"\nsubjects = [\"a\"]\n"),
            4,
            "until",
            "missing field",
        ),
        (
            "[[schedules]]\nid = \"s\"\ntime_zone = \"UTC\"\n[[schedules.overrides]]\nfrom = \"2026-12-24 18:00\"\nuntil = \"2026-12-24 18:00\"\nsubjects = [\"a\"]\n".into(),
            6,
            "schedules[0].overrides[0].until",
            "not after `from`",
        ),
        (
            "[[schedules]]\nid = \"s\"\ntime_zone = \"UTC\"\n[[schedules.overrides]]\nfrom = \"2026-12-24T18:00Z\"\nuntil = \"2026-12-25 18:00\"\nsubjects = [\"a\"]\n".into(),
            5,
            "schedules[0].overrides[0].from",
            "not a local date and time",
        ),
        (
            "[[schedules]]\nid = \"s\"\ntime_zone = \"UTC\"\n".into(),
            2,
            "schedules[0].weekly",
            "no weekly shift and no override",
        ),
        (
            format!("{base}from = \"Mon 09:00\"\nuntil = \"Tue 09:00\"\nsubjects = [\"a\"]\n[[schedules]]\nid = \"s\"\ntime_zone = \"UTC\"\n"),
            9,
            "schedules[1].id",
            "defined twice",
        ),
        ("schedules = 3\n".into(), 1, "toml", "invalid type"),
    ];
    for (text, line, field, message) in cases {
        match Rota::from_toml_str(&text) {
            Err(ConfigError::Rota {
                file,
                line: l,
                field: f,
                message: m,
            }) => {
                assert_eq!(file, "(inline)");
                assert_eq!((l, f.as_str()), (line, field), "{text}\n{m}");
                assert!(m.contains(message), "{text}\n{m}");
            }
            other => panic!("{text}\nexpected a rota error, got {other:?}"),
        }
    }
}

#[test]
fn a_rota_file_is_read_and_its_errors_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rota.toml");
    std::fs::write(&path, ROTA).unwrap();
    assert!(Rota::from_file(&path).is_ok());
    std::fs::write(&path, "[[schedules]]\nid = \"x\"\n").unwrap();
    let err = Rota::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("rota.toml"), "{err}");
    assert!(err.contains("time_zone"), "{err}");
    let err = Rota::from_file(dir.path().join("missing.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------
// The catalogue and the broker.
// ---------------------------------------------------------------------------

const CATALOGUE: &str = r#"
[[entitlements]]
id = "payments-db"
provider = "test"
max_duration = "4h"
[entitlements.eligible]
groups = ["payments"]
[entitlements.approval]
groups = ["leads"]
[entitlements.auto_approve]
max_duration = "1h"
on_call = ["payments-primary", "night"]

[[entitlements]]
id = "payments-admin"
provider = "test"
max_duration = "1h"
[entitlements.eligible]
groups = ["payments"]
[entitlements.auto_approve]
on_call = ["payments-primary"]

[[entitlements]]
id = "plain"
provider = "test"
max_duration = "1h"
[entitlements.eligible]
groups = ["payments"]
[entitlements.auto_approve]
"#;

fn person(id: &str) -> Principal {
    Principal::new(id).unwrap().with_group("payments")
}

fn req(entitlement: &str) -> AccessRequest {
    AccessRequest::new(entitlement, "30m".parse().unwrap(), "INC-7: payments stuck")
}

fn policy() -> CataloguePolicy {
    CataloguePolicy::from_toml_str(CATALOGUE).unwrap()
}

#[test]
fn the_catalogue_names_its_schedules_and_fails_closed() {
    let p = policy();
    let ent = p.entitlement("payments-db").unwrap();
    assert_eq!(p.on_call_schedules(&ent), ["payments-primary", "night"]);
    assert!(p
        .on_call_schedules(&p.entitlement("plain").unwrap())
        .is_empty());
    let ctx = PolicyContext::new(utc("2026-12-07T08:00:00Z"), Duration::from_secs(12 * 3600));
    let decide = |ctx: &PolicyContext, who: &str, ent: &str| {
        let e = p.entitlement(ent).unwrap();
        p.evaluate(&person(who), &req(ent), &e, ctx).unwrap()
    };
    // No source: nobody is on call; human approval, or a deny without one.
    let d = decide(&ctx, "alice", "payments-db");
    assert!(matches!(d.verdict, Verdict::NeedsApproval { .. }), "{d:?}");
    assert!(
        d.reasons.iter().any(|r| r.contains("no on-call source")),
        "{d:?}"
    );
    assert_eq!(
        decide(&ctx, "alice", "payments-admin").verdict,
        Verdict::Deny
    );
    // On call for the second schedule is enough.
    let on = ctx.clone().with_on_call(["night"]);
    let d = decide(&on, "alice", "payments-db");
    assert_eq!(d.verdict, Verdict::AutoApprove, "{d:?}");
    assert!(
        d.reasons
            .iter()
            .any(|r| r.contains("`alice` is on call for `night`")),
        "{d:?}"
    );
    // On call for a schedule the rule does not name is not enough.
    let other = ctx.clone().with_on_call(["night"]);
    assert_eq!(
        decide(&other, "alice", "payments-admin").verdict,
        Verdict::Deny
    );
    let none = ctx.clone().with_on_call(Vec::<String>::new());
    let d = decide(&none, "alice", "payments-db");
    assert!(
        d.reasons
            .iter()
            .any(|r| r.contains("not on call for any of `payments-primary`, `night`")),
        "{d:?}"
    );
    // The other conditions still apply.
    let on = ctx.with_on_call(["payments-primary"]);
    let long = AccessRequest::new(
        "payments-db",
        "2h".parse().unwrap(),
        "INC-7: payments stuck",
    );
    let e = p.entitlement("payments-db").unwrap();
    let d = p.evaluate(&person("alice"), &long, &e, &on).unwrap();
    assert!(matches!(d.verdict, Verdict::NeedsApproval { .. }), "{d:?}");
}

#[test]
fn bad_on_call_rules_are_refused() {
    for (rule, message) in [
        ("on_call = []", "at least one on-call schedule"),
        ("on_call = [\"\"]", "empty"),
        ("on_call = [\" padded\"]", "padded"),
        ("on_call = \"payments-primary\"", "invalid type"),
    ] {
        let text = format!(
            "[[entitlements]]\nid = \"x\"\nprovider = \"test\"\nmax_duration = \"1h\"\n[entitlements.eligible]\ngroups = [\"g\"]\n[entitlements.auto_approve]\n{rule}\n"
        );
        let err = CataloguePolicy::from_toml_str(&text)
            .unwrap_err()
            .to_string();
        assert!(err.contains(message), "{rule}: {err}");
    }
}

fn broker(clock: &ManualClock, source: Option<Arc<dyn OnCallSource>>) -> Broker {
    let mut b = Broker::builder(Arc::new(MemoryStore::new()), Arc::new(policy()))
        .provider(Arc::new(TestProvider::new("test")))
        .clock(Arc::new(clock.clone()));
    if let Some(s) = source {
        b = b.on_call_source(s);
    }
    b.build().unwrap()
}

#[tokio::test]
async fn auto_approved_when_on_call_and_human_review_right_after_the_hand_over() {
    let clock = ManualClock::new(utc("2026-12-10T07:59:59Z"));
    let b = broker(&clock, Some(Arc::new(rota())));
    // Thursday, one second before Alice hands over to Bob.
    let alice = b
        .submit(&person("alice"), req("payments-db"))
        .await
        .unwrap();
    assert_eq!(
        alice.record.state,
        State::Active,
        "{:?}",
        alice.record.decision
    );
    let bob = b.submit(&person("bob"), req("payments-db")).await.unwrap();
    assert_eq!(bob.record.state, State::Pending);
    clock.advance(TimeDelta::seconds(1));
    let alice_late = b
        .submit(&person("alice"), req("payments-db"))
        .await
        .unwrap();
    assert_eq!(alice_late.record.state, State::Pending);
    let bob_now = b.submit(&person("bob"), req("payments-db")).await.unwrap();
    assert_eq!(bob_now.record.state, State::Active);
    // Without human approval to fall back on, not on call is a deny.
    let denied = b
        .submit(&person("alice"), req("payments-admin"))
        .await
        .unwrap();
    assert_eq!(denied.record.state, State::Denied);
    // An alias of the on-call person is nobody.
    let alias = b.submit(&person("Bob"), req("payments-db")).await.unwrap();
    assert_eq!(alias.record.state, State::Pending);

    let plain = b.submit(&person("alice"), req("plain")).await.unwrap();
    assert_eq!(plain.record.state, State::Active);

    // The decision's audit record says what was asked and what held.
    let audit = b.audit_records().await.unwrap();
    let on_call = |id| {
        audit
            .iter()
            .find(|r| r.event.request_id == id && r.event.kind == AuditKind::Decided)
            .unwrap()
            .event
            .details["decision"]["on_call"]
            .clone()
    };
    let a = on_call(alice.record.id);
    assert_eq!(a["source"], "rota");
    assert_eq!(a["asked"], serde_json::json!(["payments-primary", "night"]));
    assert_eq!(a["on_call"], serde_json::json!(["payments-primary"]));
    assert_eq!(a["at"], "2026-12-10T07:59:59Z");
    assert!(a.get("unanswered").is_none(), "{a}");
    // The record an approver reads carries the same check.
    let check = alice.record.decision.on_call.as_ref().unwrap();
    assert_eq!(serde_json::to_value(check).unwrap(), a);
    assert_eq!(plain.record.decision.on_call, None);
    assert_eq!(
        on_call(alice_late.record.id)["on_call"],
        serde_json::json!([])
    );
    assert_eq!(
        on_call(bob_now.record.id)["on_call"],
        serde_json::json!(["payments-primary"])
    );
    // Entitlements without an on-call rule ask nothing.
    assert_eq!(on_call(plain.record.id), serde_json::Value::Null);
}

/// A source that fails for one schedule and answers for the other.
#[derive(Debug)]
struct HalfBroken;

#[async_trait]
impl OnCallSource for HalfBroken {
    fn name(&self) -> &str {
        "half-broken"
    }
    async fn on_call(
        &self,
        schedule: &str,
        _at: DateTime<Utc>,
    ) -> jit_core::Result<BTreeSet<String>> {
        match schedule {
            "night" => Ok(BTreeSet::from(["carol".to_string()])),
            _ => Err(Error::Unavailable {
                what: "pager".into(),
                message: "connection refused".into(),
            }),
        }
    }
}

#[tokio::test]
async fn unanswered_schedules_are_not_on_call_and_are_audited() {
    let clock = ManualClock::new(utc("2026-12-10T07:00:00Z"));
    let b = broker(&clock, Some(Arc::new(HalfBroken)));
    // Alice would be on call for payments-primary, but the source cannot say.
    let alice = b
        .submit(&person("alice"), req("payments-db"))
        .await
        .unwrap();
    assert_eq!(alice.record.state, State::Pending);
    let carol = b
        .submit(&person("carol"), req("payments-db"))
        .await
        .unwrap();
    assert_eq!(carol.record.state, State::Active);
    let audit = b.audit_records().await.unwrap();
    let details = &audit
        .iter()
        .find(|r| r.event.request_id == alice.record.id && r.event.kind == AuditKind::Decided)
        .unwrap()
        .event
        .details;
    assert_eq!(
        details["decision"]["on_call"]["unanswered"]["payments-primary"],
        "pager unavailable: connection refused"
    );

    // No source at all: every on-call rule goes to a human, and says why.
    let b = broker(&clock, None);
    let alice = b
        .submit(&person("alice"), req("payments-db"))
        .await
        .unwrap();
    assert_eq!(alice.record.state, State::Pending);
    let audit = b.audit_records().await.unwrap();
    let details = &audit
        .iter()
        .find(|r| r.event.request_id == alice.record.id && r.event.kind == AuditKind::Decided)
        .unwrap()
        .event
        .details;
    assert_eq!(
        details["decision"]["on_call"]["source"],
        serde_json::Value::Null
    );
    assert_eq!(
        details["decision"]["on_call"]["unanswered"]["night"],
        "the broker has no on-call source"
    );
}

#[test]
fn the_broker_refuses_a_schedule_the_rota_does_not_have() {
    let rota = Rota::from_toml_str(
        "[[schedules]]\nid = \"payments-primary\"\ntime_zone = \"UTC\"\n[[schedules.weekly]]\nfrom = \"Mon 00:00\"\nuntil = \"Sun 00:00\"\nsubjects = [\"alice\"]\n",
    )
    .unwrap();
    let err = Broker::builder(Arc::new(MemoryStore::new()), Arc::new(policy()))
        .provider(Arc::new(TestProvider::new("test")))
        .on_call_source(Arc::new(rota))
        .build()
        .unwrap_err();
    match err {
        Error::Config(ConfigError::InvalidField {
            entitlement,
            field,
            message,
        }) => {
            assert_eq!(
                (entitlement.as_str(), field.as_str()),
                ("payments-db", "auto_approve.on_call")
            );
            assert!(message.contains("no schedule `night`"), "{message}");
        }
        other => panic!("expected a config error, got {other:?}"),
    }
    // The full rota has both: it starts.
    let clock = ManualClock::new(utc("2026-12-10T07:00:00Z"));
    broker(&clock, Some(Arc::new(self::rota())));
}

/// The TOML block of the workspace README that contains `marker`.
fn readme_block(marker: &str) -> String {
    let readme = include_str!("../../README.md");
    readme
        .split("```toml\n")
        .skip(1)
        .filter_map(|b| b.split_once("\n```").map(|(block, _)| block))
        .find(|b| b.contains(marker))
        .unwrap_or_else(|| panic!("no README block with {marker}"))
        .to_string()
}

#[test]
fn the_readme_example_decides_as_it_says() {
    use jit_core::risk::{RiskAssessment, RiskSignal};
    use jit_core::ticket::TicketVerdict;
    let policy =
        CataloguePolicy::from_toml_str(&readme_block("id = \"payments-db-write\"")).unwrap();
    let rota = Rota::from_toml_str(&readme_block("# rota.toml")).unwrap();
    let ent = policy.entitlement("payments-db-write").unwrap();
    assert_eq!(policy.on_call_schedules(&ent), ["payments-primary"]);
    assert!(rota.schedules().unwrap().contains("payments-primary"));
    // Monday 09:30 in Berlin: Alice is on call.
    let now = utc("2026-12-07T08:30:00Z");
    let on_call = rota.on_call_at("payments-primary", now).unwrap();
    assert_eq!(on_call, BTreeSet::from(["alice".to_string()]));
    let ticket = |verified: bool| TicketVerdict {
        ticket: "INC-42".into(),
        verifier: "jira".into(),
        verified,
        reason: if verified {
            "ticket `INC-42` is `Open`".into()
        } else {
            "ticket `INC-42` is `Done`".into()
        },
        summary: None,
        status: None,
    };
    let risk = |score: u8| {
        RiskAssessment::from_signals(
            "history",
            vec![RiskSignal {
                name: "x".into(),
                weight: score,
                reason: "x".into(),
            }],
        )
    };
    let decide = |who: &str, verified: bool, score: u8| {
        let requester = Principal::new(who).unwrap().with_group("payments-eng");
        let ids: Vec<String> = on_call
            .iter()
            .filter(|id| id.as_str() == who)
            .map(|_| "payments-primary".to_string())
            .collect();
        let ctx = PolicyContext::new(now, Duration::from_secs(12 * 3600))
            .with_ticket(ticket(verified))
            .with_risk(risk(score))
            .with_on_call(ids);
        let request = AccessRequest::new(
            "payments-db-write",
            "30m".parse().unwrap(),
            "INC-42: fix the ledger",
        )
        .with_ticket("INC-42");
        policy
            .evaluate(&requester, &request, &ent, &ctx)
            .unwrap()
            .verdict
    };
    // On call, verified, routine: at once.
    assert_eq!(decide("alice", true, 10), Verdict::AutoApprove);
    // Unusual: a lead.
    assert!(matches!(
        decide("alice", true, 41),
        Verdict::NeedsApproval { .. }
    ));
    // Off call: a lead.
    assert!(matches!(
        decide("bob", true, 10),
        Verdict::NeedsApproval { .. }
    ));
    // No real ticket: denied, whoever asks.
    assert_eq!(decide("alice", false, 10), Verdict::Deny);
}
