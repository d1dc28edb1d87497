//! jit-aws inside a real broker, against moto: a whole lifecycle whose audit
//! export, logs (every crate, every level, the AWS SDK's traces included),
//! errors and `Debug` output are scanned for the secret bytes.
//!
//! Alone in its own test binary, with a global subscriber: tracing caches
//! per-callsite interest process-wide, so a thread-local subscriber racing
//! other tests' threads could miss events.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use jit_core::{AccessRequest, Credentials, ListFilter, Principal, State};

/// Collects every log line (all crates, all levels) written on this thread.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn secrets(c: &Credentials) -> Vec<String> {
    let Credentials::Aws {
        secret_access_key,
        session_token,
        ..
    } = c
    else {
        panic!("not aws credentials")
    };
    vec![
        secret_access_key.expose().to_string(),
        session_token.expose().to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_reach_audit_logs_errors_or_debug() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let (broker, _) = broker(true).await;
    let alice = Principal::new("alice@example.com")
        .unwrap()
        .with_group("oncall");
    let admin = Principal::new("sec").unwrap().with_group("secops");
    let outcome = broker
        .submit(
            &alice,
            AccessRequest::new("aws-auto", "20m".parse().unwrap(), "INC-1: debug")
                .with_ticket("INC-1"),
        )
        .await
        .unwrap();
    assert_eq!(outcome.record.state, State::Active);
    let creds = outcome.credentials.clone().expect("no credentials");
    let secret_values = secrets(&creds);
    let id = outcome.record.id;
    let mut texts = vec![
        format!("{outcome:?}"),
        format!("{:#?}", outcome.record),
        format!("{creds:?}"),
        format!("{broker:?}", broker = broker.get(id).await.unwrap()),
        serde_json::to_string(&broker.get(id).await.unwrap()).unwrap(),
    ];
    let revoked = broker.revoke(&admin, id, "done early").await.unwrap();
    assert_eq!(revoked.state, State::Revoked);
    texts.push(format!("{revoked:?}"));
    // Errors around the grant: revoking again, issuing a revoked request.
    texts.push(format!("{:?}", broker.revoke(&admin, id, "again").await));
    texts.push(format!("{:?}", broker.issue(&admin, id).await.unwrap_err()));
    // A second grant, left active.
    let second = broker
        .submit(
            &alice,
            AccessRequest::new("aws-auto", "20m".parse().unwrap(), "INC-2: more"),
        )
        .await
        .unwrap();
    let more = secrets(second.credentials.as_ref().unwrap());
    let mut export = Vec::new();
    broker.export_audit(&mut export).await.unwrap();
    let export = String::from_utf8(export).unwrap();
    assert!(
        export.contains("\"issued\"") && export.contains("\"revoked\""),
        "{export}"
    );
    assert!(
        export.contains("assumed_role_arn"),
        "the audit lacks the provider details"
    );
    texts.push(export);
    for rec in broker.list(&ListFilter::default()).await.unwrap() {
        texts.push(format!("{rec:?}"));
    }
    let log_text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        log_text.contains("aws session issued"),
        "logs were not captured"
    );
    // The SDK's own trace output (operation spans, responses) is in the scan too.
    assert!(
        log_text.contains("AssumeRole") && log_text.contains("TRACE"),
        "sdk traces were not captured"
    );
    texts.push(log_text);

    for (i, t) in texts.iter().enumerate() {
        for s in secret_values.iter().chain(more.iter()) {
            assert!(
                !t.contains(s.as_str()),
                "a secret value appears in output #{i}"
            );
        }
    }
}
