//! Shared setup: the fake behind jit-core's fake-server harness, a broker key registered
//! with it, and providers pointed at it through the real google-cloud-auth
//! service-account flow.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use jit_core::testing::fake::FakeServer;
use jit_core::testing::provider::ProviderHarness;
use jit_core::{Entitlement, GrantDuration, ManualClock, Principal, Provider};
use jit_gcp::testing::{router, FakeGcp, FakeProbe, TestKey};
use jit_gcp::{GcpConfig, GcpProvider, Mode};

pub const PROJECT: &str = "projects/prod-1234";
pub const SA: &str = "deployer@prod-1234.iam.gserviceaccount.com";
pub const BROKER: &str = "jit-broker@prod-1234.iam.gserviceaccount.com";
pub const ROLE: &str = "roles/storage.admin";
pub const MEMBER: &str = "user:alice@example.com";

pub struct Env {
    pub fake: Arc<FakeGcp>,
    pub clock: ManualClock,
    pub key: TestKey,
    pub url: String,
    pub server: FakeServer,
}

pub fn env() -> Env {
    let clock = ManualClock::starting_now();
    let fake = FakeGcp::new(Arc::new(clock.clone()));
    fake.add_resource(PROJECT);
    fake.add_resource("folders/123456789012");
    fake.add_resource("organizations/42");
    fake.add_service_account(SA);
    fake.add_service_account("hop@prod-1234.iam.gserviceaccount.com");
    let key = TestKey::generate(BROKER);
    fake.register_key(&key);
    let server = FakeServer::builder()
        .clock(clock.clone())
        .name("fake-gcp")
        .start(router(fake.clone()))
        .unwrap();
    let url = server.http_url().to_string();
    Env {
        fake,
        clock,
        key,
        url,
        server,
    }
}

impl Env {
    pub fn config(&self, mode: Mode) -> GcpConfig {
        GcpConfig::default()
            .with_name(match mode {
                Mode::Binding => "gcp",
                Mode::Token => "gcp-token",
            })
            .with_mode(mode)
            .with_endpoint_url(&self.url)
            .with_call_timeout(Duration::from_secs(10))
    }

    pub async fn provider_with(&self, config: GcpConfig) -> Arc<GcpProvider> {
        Arc::new(
            GcpProvider::builder(config)
                .credentials(self.key.credentials(&format!("{}/token", self.url)))
                .clock(Arc::new(self.clock.clone()))
                .build()
                .await
                .unwrap(),
        )
    }

    pub async fn provider(&self, mode: Mode) -> Arc<GcpProvider> {
        self.provider_with(self.config(mode)).await
    }

    pub fn harness(&self, provider: Arc<GcpProvider>, entitlement: Entitlement) -> ProviderHarness {
        self.harness_dyn(provider, entitlement)
    }

    pub fn harness_dyn(
        &self,
        provider: Arc<dyn Provider>,
        entitlement: Entitlement,
    ) -> ProviderHarness {
        let advance = self.clock.clone();
        ProviderHarness {
            provider,
            entitlement,
            subject: alice(),
            clock: Arc::new(self.clock.clone()),
            probe: Arc::new(FakeProbe(self.fake.clone())),
            advance: Some(Arc::new(move |d| advance.advance(d))),
        }
    }

    /// No request body the fake saw broke its discovery schema.
    pub fn assert_schema_clean(&self) {
        assert_eq!(self.fake.schema_violations(), Vec::<String>::new());
        assert_eq!(
            self.fake.writes_without_etag(),
            0,
            "a policy was written without an etag"
        );
        assert_eq!(
            self.fake.writes_below_v3(),
            0,
            "a policy was written below version 3"
        );
    }
}

pub fn alice() -> Principal {
    Principal::new("sub-alice")
        .unwrap()
        .with_attribute("gcp_member", MEMBER)
}

pub fn entitlement(provider: &dyn Provider, target: serde_json::Value, hours: u64) -> Entitlement {
    Entitlement {
        id: "gcp.test".into(),
        description: "test".into(),
        provider: provider.name().to_string(),
        target,
        max_duration: GrantDuration::new(Duration::from_secs(hours * 3600)).unwrap(),
    }
}

pub fn binding_target() -> serde_json::Value {
    serde_json::json!({"resource": PROJECT, "role": ROLE})
}

pub fn token_target() -> serde_json::Value {
    serde_json::json!({"service_account": SA})
}

impl Env {
    pub fn clock_now(&self) -> chrono::DateTime<chrono::Utc> {
        use jit_core::Clock;
        self.clock.now()
    }
}
