//! Nothing the provider, azure_core or azure_identity logs carries a
//! secret. Alone in its own test binary: a thread-local subscriber can miss
//! events whose callsite interest another test thread has cached as
//! "never" (tracing's global callsite cache).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use chrono::TimeDelta;
use jit_azure::testing::{entitlement, subject, RunningFake, CLIENT_SECRET};
use jit_azure::Mode;
use jit_core::{Clock, GrantId, GrantSpec, ManualClock, Provider, RequestId, Secret};

fn spec(clock: &ManualClock) -> GrantSpec {
    let now = clock.now();
    GrantSpec {
        grant_id: GrantId::new(),
        request_id: RequestId::new(),
        subject: subject(),
        entitlement: entitlement("azure"),
        starts_at: now,
        ends_at: now + TimeDelta::minutes(30),
        justification: "INC-42: look at the logs".into(),
        ticket: Some("INC-42".into()),
    }
}

/// Everything the provider (and azure_core, azure_identity under it) logs
/// at any level while issuing, revoking and failing on a wrong secret.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn no_secret_or_token_reaches_the_logs() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // One thread, so every span and event of the client side lands here.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let clock = ManualClock::starting_now();
        let fake = RunningFake::start(clock.clone());
        let p = fake.provider(fake.config(Mode::Pim), clock.clone());
        let issued = p.issue(&spec(&clock)).await.unwrap();
        p.revoke(&issued.grant).await.unwrap();
        let mut bad = fake.config(Mode::Pim);
        bad.client_secret = Some(Secret::new("another-wrong-secret-QQQ"));
        let wrong = fake.provider(bad, clock.clone());
        assert!(wrong.issue(&spec(&clock)).await.is_err());
    });
    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    // The pipeline's own request log is in the capture (headers included,
    // the bearer token redacted by azure_core), so the check below sees it.
    assert!(
        logs.contains("authorization: REDACTED"),
        "pipeline logs not captured"
    );
    assert!(
        logs.contains("azure grant issued"),
        "the capture saw nothing"
    );
    for secret in [CLIENT_SECRET, "another-wrong-secret-QQQ", "fake-token-"] {
        assert!(!logs.contains(secret), "`{secret}` appears in the logs");
    }
}
