//! An Azure entitlement end to end, with no Azure account: jit-azure's fake
//! of ARM and of the Entra token endpoint (the same one the tests use)
//! stands in for Azure, and everything else is the real thing: the
//! `azure_identity` client-credentials flow, the PIM schedule request, the
//! broker, its catalogue and its audit chain.
//!
//! ```sh
//! cargo run -p jit-azure --example pim
//! ```
//!
//! alice asks for Reader on a resource group for 45 minutes, bob (a lead)
//! approves, the role assignment schedule appears at the fake with the end
//! Azure gave it, alice revokes it early, and the schedule is gone.
#![allow(clippy::print_stdout, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use jit_azure::testing::{reader_role, scope, subject, RunningFake, OBJECT_ID};
use jit_azure::Mode;
use jit_core::{
    AccessRequest, Broker, CataloguePolicy, Credentials, ManualClock, MemoryStore, Principal, State,
};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let clock = ManualClock::starting_now();
    let fake = RunningFake::start(clock.clone());
    // The tenant's role management policy: admin assignments up to 8 hours.
    fake.state.set_default_policy_max("PT8H");
    println!("fake ARM and Entra ID at {}", fake.url());

    // The catalogue names the role by its display name; jit-azure resolves
    // it at ARM's role definitions once and caches the id.
    let catalogue = CataloguePolicy::from_toml_str(&format!(
        r#"
        [[entitlements]]
        id = "rg-reader"
        provider = "azure"
        max_duration = "2h"
        target = {{ scope = "{}", role = "Reader" }}
        [entitlements.eligible]
        groups = ["oncall"]
        [entitlements.approval]
        groups = ["leads"]
        quorum = 1
        "#,
        scope()
    ))
    .expect("catalogue");
    let provider = Arc::new(fake.provider(fake.config(Mode::Pim), clock.clone()));
    let broker = Broker::builder(Arc::new(MemoryStore::new()), Arc::new(catalogue))
        .provider(provider)
        .clock(Arc::new(clock.clone()))
        .build()
        .expect("broker");

    // alice's Entra object id comes from a principal attribute (the vending
    // server fills it from the token's `oid` claim).
    let alice = subject().with_group("oncall");
    let bob = Principal::new("bob@example.com")
        .expect("principal")
        .with_group("leads");

    let out = broker
        .submit(
            &alice,
            AccessRequest::new(
                "rg-reader",
                "45m".parse().expect("duration"),
                "INC-7: read the logs",
            ),
        )
        .await
        .expect("submit");
    println!(
        "alice asked: request {} is {:?}",
        out.record.id, out.record.state
    );

    let approved = broker
        .approve(&bob, out.record.id, "looks right")
        .await
        .expect("approve");
    println!("bob approved: {:?}", approved.record.state);
    assert_eq!(
        approved.record.state,
        State::Active,
        "{:?}",
        approved.record.note
    );

    match broker
        .credentials(&alice, out.record.id)
        .await
        .expect("credentials")
    {
        Credentials::Assignment {
            scope,
            role_name,
            principal,
            expires_at,
            ..
        } => println!(
            "assigned: {} at {} to {} until {expires_at} (no secret: the access is alice's own identity)",
            role_name.unwrap_or_default(),
            scope.unwrap_or_default(),
            principal.unwrap_or_default(),
        ),
        other => panic!("expected an assignment, got {other:?}"),
    }
    let held = fake
        .state
        .active_schedules(&scope(), OBJECT_ID, &reader_role());
    println!("schedules at the fake for alice, Reader, the resource group: {held}");

    let revoked = broker
        .revoke(&alice, out.record.id, "done early")
        .await
        .expect("revoke");
    let held = fake
        .state
        .active_schedules(&scope(), OBJECT_ID, &reader_role());
    println!(
        "alice revoked: {:?}; schedules at the fake now: {held}",
        revoked.state
    );
    assert_eq!(held, 0, "the revocation missed");

    let summary = broker
        .verify_audit()
        .await
        .expect("audit read")
        .expect("audit chain verifies");
    println!("audit chain verifies: {summary:?}");
}
