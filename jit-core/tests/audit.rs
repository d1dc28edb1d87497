//! The audit chain of a real broker: editing, deleting or reordering any
//! record of an export is found at its position; the JSON Lines file sink
//! holds a verifiable copy; no credential secret of any type reaches Debug,
//! errors or audit records.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use chrono::Utc;
use common::*;
use jit_core::audit::{verify_jsonl, ChainBreakReason, JsonlFileSink};
use jit_core::{AuditRecord, Credentials, Reaper, Secret};

async fn exported_chain() -> Vec<AuditRecord> {
    let e = env();
    let alice = user("alice");
    let a = e
        .broker
        .submit(&alice, req("dev-read", "10m"))
        .await
        .unwrap()
        .record
        .id;
    let p = e
        .broker
        .submit(&alice, req("prod-read", "1h"))
        .await
        .unwrap()
        .record
        .id;
    e.broker.approve(&lead("carol"), p, "ok").await.unwrap();
    e.broker.approve(&lead("dave"), p, "ok").await.unwrap();
    e.broker.revoke(&alice, a, "done").await.unwrap();
    e.clock.advance(chrono::TimeDelta::hours(2));
    Reaper::new(e.broker.clone()).tick().await.unwrap();
    let mut buf = Vec::new();
    e.broker.export_audit(&mut buf).await.unwrap();
    String::from_utf8(buf)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn to_jsonl(records: &[AuditRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    jit_core::audit::export_jsonl(records, &mut out).unwrap();
    out
}

#[tokio::test]
async fn every_edit_delete_and_reorder_of_an_export_is_found_at_its_position() {
    let chain = exported_chain().await;
    let n = chain.len();
    assert_eq!(n, 11, "a realistic chain: {n} records");
    assert_eq!(
        verify_jsonl(&to_jsonl(&chain)[..]).unwrap().records,
        n as u64
    );

    for i in 0..n {
        // Edit a field in the event.
        let mut c = chain.clone();
        c[i].event.actor.push('x');
        let b = verify_jsonl(&to_jsonl(&c)[..]).unwrap_err();
        assert_eq!(
            (b.position, b.reason.clone()),
            (i, ChainBreakReason::HashMismatch),
            "edit {i}"
        );

        // Edit the raw text of the line (here: the timestamp's year).
        let mut lines: Vec<String> = String::from_utf8(to_jsonl(&chain))
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        let year = Utc::now().format("\"%Y-").to_string();
        lines[i] = lines[i].replacen(&year, "\"1999-", 1);
        let b = verify_jsonl(lines.join("\n").as_bytes()).unwrap_err();
        assert_eq!(b.position, i, "raw edit {i}");

        // Edit and re-hash the record itself: the next link breaks instead.
        if i + 1 < n {
            let mut c = chain.clone();
            c[i].event.details = serde_json::json!({"forged": true});
            c[i].hash = c[i].compute_hash();
            let b = verify_jsonl(&to_jsonl(&c)[..]).unwrap_err();
            assert_eq!(
                (b.position, b.reason),
                (i + 1, ChainBreakReason::BrokenLink),
                "rehash {i}"
            );
        }

        // Delete.
        if i + 1 < n {
            let mut c = chain.clone();
            c.remove(i);
            let b = verify_jsonl(&to_jsonl(&c)[..]).unwrap_err();
            assert_eq!(b.position, i, "delete {i}");
        }

        // Reorder with the next record.
        if i + 1 < n {
            let mut c = chain.clone();
            c.swap(i, i + 1);
            let b = verify_jsonl(&to_jsonl(&c)[..]).unwrap_err();
            assert_eq!(b.position, i, "swap {i}");
        }
    }
    // A truncated tail verifies on its own; its head differs from the one the store holds.
    let head = jit_core::audit::verify(&chain).unwrap().head;
    let short = jit_core::audit::verify(&chain[..n - 1]).unwrap().head;
    assert_ne!(head, short);
}

#[tokio::test]
async fn jsonl_file_sink_holds_a_verifiable_copy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let store = Arc::new(jit_core::MemoryStore::new());
    let policy = Arc::new(jit_core::CataloguePolicy::from_toml_str(CATALOGUE).unwrap());
    let provider = Arc::new(jit_core::testing::TestProvider::new("test"));
    let broker = jit_core::Broker::builder(store, policy)
        .provider(provider)
        .provider(Arc::new(jit_core::testing::TestProvider::new(
            "manual-expiry",
        )))
        .audit_sink(Arc::new(JsonlFileSink::open(&path).unwrap()))
        .build()
        .unwrap();
    let alice = user("alice");
    let id = broker
        .submit(&alice, req("dev-read", "10m"))
        .await
        .unwrap()
        .record
        .id;
    broker.revoke(&alice, id, "done").await.unwrap();
    let file = std::fs::read(&path).unwrap();
    let summary = verify_jsonl(&file[..]).unwrap();
    assert_eq!(summary.records, 5);
    assert_eq!(
        summary.head,
        broker.verify_audit().await.unwrap().unwrap().head
    );

    // A sink that cannot be opened is an audit error, not a panic.
    let err = JsonlFileSink::open(dir.path().join("missing-dir/audit.jsonl")).unwrap_err();
    assert!(matches!(err, jit_core::Error::AuditFailed(_)));
}

#[test]
fn no_credential_type_prints_its_secrets() {
    let now = Utc::now();
    let secrets = [
        "AKIA-secret-key-0123456789abcdef",
        "session-token-FwoGZXIvYXdzEJr",
        "ya29.access-token-value",
        "eyJhbGciOiJFZERTQSJ9.local-token",
    ];
    let all = [
        Credentials::Aws {
            access_key_id: "ASIAEXAMPLEKEYID".into(),
            secret_access_key: Secret::new(secrets[0]),
            session_token: Secret::new(secrets[1]),
            expires_at: now,
        },
        Credentials::AccessToken {
            token: Secret::new(secrets[2]),
            expires_at: now,
        },
        Credentials::LocalToken {
            token: Secret::new(secrets[3]),
            expires_at: now,
        },
        Credentials::Assignment {
            description: "Reader on /subscriptions/x".into(),
            scope: Some("/subscriptions/x".into()),
            role: None,
            role_name: Some("Reader".into()),
            principal: None,
            expires_at: now,
        },
    ];
    for c in &all {
        let text = format!("{c:?}\n{c:#?}\n{:?}", c.clone());
        for s in secrets {
            assert!(!text.contains(s), "{s} leaked in {text}");
            // Not even a recognisable fragment.
            assert!(!text.contains(&s[..12]), "{s} fragment leaked in {text}");
        }
    }
    // An error built around a credential-bearing operation carries no secret either.
    let err = jit_core::Error::ProviderRejected {
        provider: "aws".into(),
        operation: "issue",
        message: format!("{:?}", all[0]),
    };
    assert!(!err.to_string().contains(secrets[0]) && !err.to_string().contains(secrets[1]));
}
