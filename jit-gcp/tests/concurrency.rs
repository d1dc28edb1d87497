//! Two brokers adding and removing bindings on one policy at the same time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use chrono::TimeDelta;
use common::*;
use jit_core::testing::provider::spec;
use jit_core::Provider;
use jit_gcp::Mode;

const PER_BROKER: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_brokers_lose_no_binding_and_keep_none_they_removed() {
    let env = env();
    let unrelated =
        serde_json::json!({"role": "roles/viewer", "members": ["user:bob@example.com"]});
    env.fake.put_bindings(PROJECT, vec![unrelated.clone()]);
    let config = env.config(Mode::Binding).with_conflict_retries(20);
    let brokers = [
        env.provider_with(config.clone()).await,
        env.provider_with(config).await,
    ];
    let e = entitlement(brokers[0].as_ref(), binding_target(), 8);
    let h = env.harness(brokers[0].clone(), e);

    // Phase 1: 2 × 50 grants at once, each for its own member (IAM allows
    // at most 20 conditional bindings per role and member).
    let mut tasks = Vec::new();
    for (b, broker) in brokers.iter().enumerate() {
        for i in 0..PER_BROKER {
            let mut s = spec(&h, TimeDelta::hours(1));
            let member = format!("user:b{b}-u{i}@example.com");
            s.subject = jit_core::Principal::new(&format!("sub-{b}-{i}"))
                .unwrap()
                .with_attribute("gcp_member", &member);
            let broker = broker.clone();
            tasks.push(tokio::spawn(async move {
                let issued = broker.issue(&s).await.unwrap();
                (member, issued.grant)
            }));
        }
    }
    let mut grants = Vec::new();
    for t in tasks {
        grants.push(t.await.unwrap());
    }
    for (member, _) in &grants {
        assert!(
            env.fake.holds(PROJECT, ROLE, member),
            "{member} lost its binding"
        );
    }
    assert_eq!(env.fake.bindings(PROJECT).len(), 2 * PER_BROKER + 1);

    // Phase 2: the other broker revokes every second grant while both add 10 more.
    let mut tasks = Vec::new();
    for (n, (member, grant)) in grants.iter().enumerate().filter(|(n, _)| n % 2 == 0) {
        let broker: Arc<_> = brokers[(n + 1) % 2].clone();
        let (member, grant) = (member.clone(), grant.clone());
        tasks.push(tokio::spawn(async move {
            broker.revoke(&grant).await.unwrap();
            (member, None)
        }));
    }
    for (b, broker) in brokers.iter().enumerate() {
        for i in 0..10 {
            let mut s = spec(&h, TimeDelta::hours(1));
            let member = format!("user:late-b{b}-u{i}@example.com");
            s.subject = jit_core::Principal::new(&format!("sub-late-{b}-{i}"))
                .unwrap()
                .with_attribute("gcp_member", &member);
            let broker = broker.clone();
            tasks.push(tokio::spawn(async move {
                let issued = broker.issue(&s).await.unwrap();
                (member, Some(issued.grant))
            }));
        }
    }
    let mut late = Vec::new();
    for t in tasks {
        if let (member, Some(_)) = t.await.unwrap() {
            late.push(member);
        }
    }
    for (n, (member, grant)) in grants.iter().enumerate() {
        let present = env
            .fake
            .bindings(PROJECT)
            .iter()
            .any(|b| b["condition"]["title"] == grant.external_id.as_str());
        if n % 2 == 0 {
            assert!(
                !env.fake.holds(PROJECT, ROLE, member),
                "{member} kept a revoked binding"
            );
            assert!(
                !present,
                "revoked binding {} is still there",
                grant.external_id
            );
        } else {
            assert!(
                env.fake.holds(PROJECT, ROLE, member),
                "{member} lost its binding"
            );
        }
    }
    for member in &late {
        assert!(
            env.fake.holds(PROJECT, ROLE, member),
            "{member} did not land"
        );
    }
    let stored = env.fake.bindings(PROJECT);
    assert_eq!(stored.len(), PER_BROKER + 20 + 1);
    assert_eq!(stored[0], unrelated, "the unrelated binding changed");
    // Every condition that should be there still has its title and expression.
    for b in &stored[1..] {
        assert!(b["condition"]["title"]
            .as_str()
            .unwrap()
            .starts_with("jit-"));
        assert!(b["condition"]["expression"]
            .as_str()
            .unwrap()
            .starts_with("request.time < timestamp("));
    }
    assert!(
        env.fake.conflicts() > 0,
        "the brokers never raced: the test proves nothing"
    );
    env.assert_schema_clean();
}
