//! Input from people who mean harm: a flood of requests aimed at an
//! approver's queue, and free text as long as the body limit allows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use jit_core::testing::TestProvider;
use jit_core::{
    AccessRequest, Broker, CataloguePolicy, Error, MemoryStore, Principal, RequestError, State,
    MAX_TEXT_LEN,
};

/// `prod-db` is approved by `dba`; `sandbox` (anyone in `eng` may ask) by `sandbox-owners`.
const CATALOGUE: &str = r#"
[[entitlements]]
id = "prod-db"
provider = "test"
max_duration = "1h"
[entitlements.eligible]
groups = ["eng"]
[entitlements.approval]
groups = ["dba"]

[[entitlements]]
id = "sandbox"
provider = "test"
max_duration = "1h"
[entitlements.eligible]
groups = ["eng"]
[entitlements.approval]
groups = ["sandbox-owners"]
"#;

fn broker() -> Broker {
    let policy = Arc::new(CataloguePolicy::from_toml_str(CATALOGUE).unwrap());
    Broker::builder(Arc::new(MemoryStore::new()), policy)
        .provider(Arc::new(TestProvider::new("test")))
        .build()
        .unwrap()
}

fn eng(id: &str) -> Principal {
    Principal::new(id).unwrap().with_group("eng")
}

fn ask(ent: &str) -> AccessRequest {
    AccessRequest::new(ent, "30m".parse().unwrap(), "INC-7: replica lag")
}

#[tokio::test]
async fn a_flood_for_another_entitlement_never_pushes_a_request_out_of_its_approvers_queue() {
    let b = broker();
    let real = b
        .submit(&eng("alice"), ask("prod-db"))
        .await
        .unwrap()
        .record;
    assert_eq!(real.state, State::Pending);
    // The queue reads at most 1,000 records: file more than that, newer.
    for _ in 0..1_050 {
        b.submit(&eng("mallory"), ask("sandbox")).await.unwrap();
    }
    let dba = Principal::new("dave").unwrap().with_group("dba");
    let queue = b.awaiting_approval_by(&dba).await.unwrap();
    assert_eq!(
        queue.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![real.id]
    );
    // Someone who approves nothing has an empty queue.
    assert!(b
        .awaiting_approval_by(&eng("eve"))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn every_free_text_field_has_the_same_cap() {
    let b = broker();
    let alice = eng("alice");
    let dba = Principal::new("dave").unwrap().with_group("dba");
    let at_cap = "x".repeat(MAX_TEXT_LEN);
    let over = "x".repeat(MAX_TEXT_LEN + 1);
    let too_long = |e: Error, field: &str| match e {
        Error::InvalidRequest(RequestError::TextTooLong {
            field: f,
            len,
            limit,
        }) => {
            assert_eq!((f, len, limit), (field, MAX_TEXT_LEN + 1, MAX_TEXT_LEN));
        }
        other => panic!("{field}: {other:?}"),
    };

    let err = b
        .submit(
            &alice,
            AccessRequest::new("prod-db", "30m".parse().unwrap(), &over),
        )
        .await
        .unwrap_err();
    too_long(err, "justification");

    let id = b.submit(&alice, ask("prod-db")).await.unwrap().record.id;
    too_long(b.cancel(&alice, id, &over).await.unwrap_err(), "reason");
    too_long(b.approve(&dba, id, &over).await.unwrap_err(), "comment");
    too_long(b.deny(&dba, id, &over).await.unwrap_err(), "reason");
    // Nothing was recorded by the refusals.
    assert_eq!(b.get(id).await.unwrap().state, State::Pending);
    assert!(b.get(id).await.unwrap().approvals.is_empty());

    // Approved and (auto-)issued: the cap itself is allowed.
    let out = b.approve(&dba, id, &at_cap).await.unwrap();
    assert_eq!(out.record.state, State::Active);
    too_long(b.revoke(&alice, id, &over).await.unwrap_err(), "reason");
    b.revoke(&alice, id, &at_cap).await.unwrap();

    let other = b.submit(&alice, ask("prod-db")).await.unwrap().record.id;
    b.cancel(&alice, other, &at_cap).await.unwrap();
}
