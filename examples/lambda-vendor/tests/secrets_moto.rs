//! Secrets never reach the logs, the audit lines or an error answer.
//!
//! In its own test binary: the subscriber is global (TRACE, every crate), so
//! spans and events from the SDK, jit-aws and jit-core are all captured.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use jit_core::audit::AuditKind;
use lambda_vendor::Config;
use serde_json::json;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_stay_out_of_logs_audit_lines_and_errors() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let f = fixture().await;
    let (status, issued) = invoke(&f.vendor, event("http-api-v2-jwt.json")).await;
    assert_eq!(status, 200, "{issued}");
    let secret = issued["credentials"]["SecretAccessKey"]
        .as_str()
        .unwrap()
        .to_string();
    let token = issued["credentials"]["SessionToken"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(secret.len() >= 16 && token.len() >= 16);

    // The same response as a value: its Debug form shows no body.
    let response = f
        .vendor
        .respond(&event("http-api-v2-jwt.json"), &context())
        .await;
    assert_eq!(response.status, 200);
    let debug_response = format!("{response:?}");
    let second_secret = response.body["credentials"]["SecretAccessKey"]
        .as_str()
        .unwrap()
        .to_string();

    // Other outcomes on the same container.
    let mut others = Vec::new();
    for body in [
        json!({"entitlement": "aws-break-glass", "duration": "20m", "justification": "x"}),
        json!({"entitlement": "aws-auto", "duration": "5m", "justification": "INC-1: short"}),
        json!({"entitlement": "aws-approval", "duration": "1h", "justification": "INC-1: x", "ticket": "INC-1"}),
    ] {
        let (status, b) = invoke(&f.vendor, with_body(event("http-api-v2-jwt.json"), body)).await;
        assert_ne!(status, 200);
        others.push(b.to_string());
    }

    // A failed audit write after minting: 500, nothing returned.
    let failing = fixture_with(
        Config::with_catalogue,
        LinesSink::failing_on(AuditKind::Issued),
    )
    .await;
    let (status, failed) = invoke(&failing.vendor, event("http-api-v2-jwt.json")).await;
    assert_eq!(status, 500);
    others.push(failed.to_string());

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("invocation done"),
        "the capture works: {logs:.200}"
    );
    let audit = format!("{}\n{}", f.sink.text(), failing.sink.text());
    assert!(audit.contains("\"issued\""), "{audit:.400}");
    let debug_vendor = format!("{:?}", f.vendor);
    for (what, text) in [
        ("tracing output", &logs),
        ("audit lines", &audit),
        ("error answers", &others.join("\n")),
        ("ApiResponse debug", &debug_response),
        ("Vendor debug", &debug_vendor),
    ] {
        for (name, value) in [
            ("secret key", &secret),
            ("session token", &token),
            ("second secret key", &second_secret),
        ] {
            assert!(!text.contains(value.as_str()), "{name} found in {what}");
        }
    }
}
