//! The broker's identity through Application Default Credentials: a
//! `kind = "gcp"` table with `credentials = "adc"` and
//! `GOOGLE_APPLICATION_CREDENTIALS` naming a service-account key file
//! authenticates through google-cloud-auth's ADC lookup against the fake.
//! Its own test binary (so its own process): it sets that variable.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use chrono::TimeDelta;
use common::*;
use jit_core::provider::registry::{FactoryContext, ProviderConfig, ProviderRegistry};
use jit_core::testing::provider::spec;

#[tokio::test]
async fn adc_reads_the_key_file_google_application_credentials_names() {
    let env = env();
    let dir = std::env::temp_dir().join(format!("jit-gcp-adc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("broker.json");
    std::fs::write(
        &key_file,
        env.key
            .key_file_json(&format!("{}/token", env.url))
            .to_string(),
    )
    .unwrap();
    std::env::set_var("GOOGLE_APPLICATION_CREDENTIALS", &key_file);
    let registry = ProviderRegistry::builtin().with(jit_gcp::factory());
    let ctx = FactoryContext::new().with_clock(std::sync::Arc::new(env.clock.clone()));
    let table: ProviderConfig = [("credentials", "adc"), ("endpoint_url", env.url.as_str())]
        .into_iter()
        .collect();
    let provider = registry.build("gcp", "gcp", &table, &ctx).await.unwrap();
    let e = entitlement(provider.as_ref(), binding_target(), 8);
    provider.validate(&e).unwrap();
    let h = env.harness_dyn(provider.clone(), e);
    let issued = provider
        .issue(&spec(&h, TimeDelta::minutes(30)))
        .await
        .unwrap();
    assert!(
        env.fake.holds(PROJECT, ROLE, MEMBER),
        "the adc-authenticated write did not land"
    );
    provider.revoke(&issued.grant).await.unwrap();

    // ADC naming a file that is not there is refused at build, saying so.
    std::env::set_var("GOOGLE_APPLICATION_CREDENTIALS", dir.join("missing.json"));
    let e = registry
        .build("gcp", "gcp", &table, &ctx)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("application default credentials"), "{e}");
    std::env::remove_var("GOOGLE_APPLICATION_CREDENTIALS");
    let _ = std::fs::remove_dir_all(&dir);
}
