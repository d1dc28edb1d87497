//! Shared set-up for the broker's integration tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

pub mod race;

use std::sync::Arc;

use jit_core::testing::{MemorySink, TestProvider};
use jit_core::{
    AccessRequest, Broker, BrokerBuilder, CataloguePolicy, ManualClock, MemoryStore, Principal,
    Store,
};

/// `dev-read`: auto-approved up to 30m, else one lead. `prod-read`: two leads.
/// `slow-revoke`: a provider without native expiry. Admin: `root-admin`.
pub const CATALOGUE: &str = r#"
[settings]
pending_ttl = "1h"

[admins]
ids = ["root-admin"]

[[entitlements]]
id = "dev-read"
provider = "test"
max_duration = "1h"
target = { audience = "dev" }
[entitlements.eligible]
groups = ["eng"]
[entitlements.approval]
groups = ["leads"]
quorum = 1
[entitlements.auto_approve]
max_duration = "30m"

[[entitlements]]
id = "prod-read"
provider = "test"
max_duration = "8h"
target = { audience = "prod" }
[entitlements.eligible]
groups = ["eng"]
[entitlements.approval]
groups = ["leads"]
quorum = 2

[[entitlements]]
id = "batch-job"
provider = "manual-expiry"
max_duration = "2h"
target = { audience = "batch" }
[entitlements.eligible]
groups = ["eng"]
[entitlements.auto_approve]
max_duration = "2h"
"#;

pub struct Env {
    pub broker: Broker,
    pub clock: ManualClock,
    pub provider: Arc<TestProvider>,
    pub manual: Arc<TestProvider>,
    pub sink: Arc<MemorySink>,
}

pub fn env_with_store(store: Arc<dyn Store>) -> Env {
    env_with(store, Arc::new(TestProvider::new("test")))
}

pub fn env_with(store: Arc<dyn Store>, provider: Arc<TestProvider>) -> Env {
    let clock = ManualClock::starting_now();
    let manual = Arc::new(TestProvider::new("manual-expiry").without_native_expiry());
    let sink = Arc::new(MemorySink::new());
    let broker = broker_with(store, &provider, &manual, &clock, &sink, None);
    Env {
        broker,
        clock,
        provider,
        manual,
        sink,
    }
}

/// A broker on [`CATALOGUE`] with these parts; `replica` names it among replicas.
pub fn broker_with(
    store: Arc<dyn Store>,
    provider: &Arc<TestProvider>,
    manual: &Arc<TestProvider>,
    clock: &ManualClock,
    sink: &Arc<MemorySink>,
    replica: Option<&str>,
) -> Broker {
    let mut b = builder_with(store, provider, manual, clock, sink);
    if let Some(id) = replica {
        b = b.replica_id(id);
    }
    b.build().unwrap()
}

/// [`broker_with`]'s builder, for a test that sets more on it.
pub fn builder_with(
    store: Arc<dyn Store>,
    provider: &Arc<TestProvider>,
    manual: &Arc<TestProvider>,
    clock: &ManualClock,
    sink: &Arc<MemorySink>,
) -> BrokerBuilder {
    let policy = Arc::new(CataloguePolicy::from_toml_str(CATALOGUE).unwrap());
    Broker::builder(store, policy)
        .provider(provider.clone())
        .provider(manual.clone())
        .clock(Arc::new(clock.clone()))
        .audit_sink(sink.clone())
}

pub fn env() -> Env {
    env_with_store(Arc::new(MemoryStore::new()))
}

pub fn user(id: &str) -> Principal {
    Principal::new(id).unwrap().with_group("eng")
}

pub fn lead(id: &str) -> Principal {
    Principal::new(id).unwrap().with_group("leads")
}

pub fn req(ent: &str, dur: &str) -> AccessRequest {
    AccessRequest::new(ent, dur.parse().unwrap(), "investigating INC-42")
}

pub fn kinds(records: &[jit_core::AuditRecord], id: jit_core::RequestId) -> Vec<&'static str> {
    records
        .iter()
        .filter(|r| r.event.request_id == id)
        .map(|r| r.event.kind.as_str())
        .collect()
}
