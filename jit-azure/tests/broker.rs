//! End to end through jit-core's broker: a TOML catalogue with an Azure
//! entitlement, the provider on the fake, submit → auto-approve → issue →
//! assignment at the fake → revoke → gone → the audit chain verifies; and in
//! mode `assignments`, the reaper removes the assignment at the end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use chrono::TimeDelta;
use jit_azure::testing::{reader_role, scope, subject, RunningFake, OBJECT_ID};
use jit_azure::Mode;
use jit_core::{
    AccessRequest, Broker, CataloguePolicy, Credentials, ManualClock, MemoryStore, Reaper, State,
};

fn catalogue() -> CataloguePolicy {
    CataloguePolicy::from_toml_str(&format!(
        r#"
        [[entitlements]]
        id = "rg-reader"
        provider = "azure"
        max_duration = "2h"
        target = {{ scope = "{}", role = "Reader" }}
        [entitlements.eligible]
        groups = ["oncall"]
        [entitlements.auto_approve]
        groups = ["oncall"]
        "#,
        scope()
    ))
    .unwrap()
}

fn broker(fake: &RunningFake, mode: Mode, clock: &ManualClock) -> Broker {
    let provider = Arc::new(fake.provider(fake.config(mode), clock.clone()));
    Broker::builder(Arc::new(MemoryStore::new()), Arc::new(catalogue()))
        .provider(provider)
        .clock(Arc::new(clock.clone()))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_issue_revoke_through_the_broker() {
    let clock = ManualClock::starting_now();
    let fake = RunningFake::start(clock.clone());
    fake.state.set_default_policy_max("PT8H");
    let broker = broker(&fake, Mode::Pim, &clock);
    let me = subject().with_group("oncall");
    let out = broker
        .submit(
            &me,
            AccessRequest::new("rg-reader", "45m".parse().unwrap(), "INC-7: read the logs"),
        )
        .await
        .unwrap();
    assert_eq!(out.record.state, State::Active, "{:?}", out.record.note);
    match out.credentials {
        Some(Credentials::Assignment { description, .. }) => {
            assert!(
                description.contains("Reader") && description.contains(OBJECT_ID),
                "{description}"
            )
        }
        other => panic!("expected an assignment, got {other:?}"),
    }
    assert_eq!(
        fake.state
            .active_schedules(&scope(), OBJECT_ID, &reader_role()),
        1
    );
    let rec = broker
        .revoke(&me, out.record.id, "done early")
        .await
        .unwrap();
    assert_eq!(rec.state, State::Revoked);
    assert_eq!(
        fake.state
            .active_schedules(&scope(), OBJECT_ID, &reader_role()),
        0
    );
    assert!(broker.verify_audit().await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_removes_a_plain_assignment_at_its_end() {
    let clock = ManualClock::starting_now();
    let fake = RunningFake::start(clock.clone());
    let broker = broker(&fake, Mode::Assignments, &clock);
    let me = subject().with_group("oncall");
    let out = broker
        .submit(
            &me,
            AccessRequest::new(
                "rg-reader",
                "30m".parse().unwrap(),
                "INC-8: check a setting",
            ),
        )
        .await
        .unwrap();
    assert_eq!(out.record.state, State::Active, "{:?}", out.record.note);
    assert_eq!(fake.state.assignment_count(), 1);
    clock.advance(TimeDelta::minutes(31));
    // Not native: still there until the reaper runs.
    assert_eq!(fake.state.assignment_count(), 1);
    let mut reaper = Reaper::new(broker.clone());
    reaper.tick().await.unwrap();
    assert_eq!(fake.state.assignment_count(), 0, "the reaper deleted it");
    let rec = broker.get(out.record.id).await.unwrap();
    assert_eq!(rec.state, State::Expired);
    assert!(broker.verify_audit().await.unwrap().is_ok());
}

#[tokio::test]
async fn a_bad_target_is_refused_when_the_catalogue_loads() {
    let clock = ManualClock::starting_now();
    let fake = RunningFake::start(clock.clone());
    let provider = Arc::new(fake.provider(fake.config(Mode::Pim), clock.clone()));
    let policy = CataloguePolicy::from_toml_str(
        r#"
        [[entitlements]]
        id = "bad"
        provider = "azure"
        max_duration = "1h"
        target = { scope = "/subscriptions/not-a-guid", role = "Reader" }
        [entitlements.eligible]
        groups = ["oncall"]
        "#,
    )
    .unwrap();
    let Err(err) = Broker::builder(Arc::new(MemoryStore::new()), Arc::new(policy))
        .provider(provider)
        .build()
    else {
        panic!("the catalogue was accepted");
    };
    let text = err.to_string();
    assert!(
        text.contains("target.scope") && text.contains("bad"),
        "{text}"
    );
    assert_eq!(fake.server.request_count(), 0, "validation made a call");
}
