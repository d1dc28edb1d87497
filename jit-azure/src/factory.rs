//! `kind = "azure"` in a host's provider tables: the factory the
//! [registry](jit_core::provider::registry) builds [`AzureProvider`]s with.
//!
//! ```toml
//! [providers.azure-prod]
//! kind = "azure"
//! tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
//! client_id = "5f9d3b1e-0c3a-4e9b-9d1e-6f1a2b3c4d5e"
//! # client_secret from JIT_AZURE_CLIENT_SECRET, which wins over the table
//! max_duration = "4h"
//! ```
//!
//! The keys are [`crate::config::KEYS`], each the same setting as its
//! `JIT_AZURE_*` variable. Building makes no remote call: the broker's
//! first Entra token is fetched by the first ARM call, so a wrong secret
//! shows at the first request (as an `unavailable` error naming the
//! credential), not at start. The provider uses the context's clock.

use std::sync::Arc;

use async_trait::async_trait;
use jit_core::provider::registry::{ConfigKey, FactoryContext, ProviderConfig, ProviderFactory};
use jit_core::Provider;

use crate::config::{AzureConfig, KEYS};
use crate::provider::AzureProvider;

/// Builds [`AzureProvider`]s from `kind = "azure"` tables. See the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct AzureFactory;

/// The `azure` factory, for [`ProviderRegistry::with`](jit_core::provider::registry::ProviderRegistry::with).
pub fn factory() -> AzureFactory {
    AzureFactory
}

#[async_trait]
impl ProviderFactory for AzureFactory {
    fn kind(&self) -> &str {
        "azure"
    }

    fn keys(&self) -> &[ConfigKey] {
        KEYS
    }

    async fn build(
        &self,
        name: &str,
        config: &ProviderConfig,
        ctx: &FactoryContext,
    ) -> jit_core::Result<Arc<dyn Provider>> {
        let mut azure = AzureConfig::from_provider_config(name, config)?;
        // A relative CA file is relative to the host's configuration file.
        if let Some(path) = azure.ca_file.take() {
            azure.ca_file = Some(ctx.resolve(&path));
        }
        let provider = AzureProvider::builder(azure).clock(ctx.clock()).build()?;
        Ok(Arc::new(provider))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::time::Duration;

    use jit_core::provider::registry::ProviderRegistry;

    use super::*;
    use crate::config::Mode;

    const SECRET: &str = "table-secret-never-shown";

    fn table(pairs: &[(&str, &str)]) -> ProviderConfig {
        pairs.iter().map(|(k, v)| (*k, *v)).collect()
    }

    #[test]
    fn every_key_maps_to_a_jit_azure_variable_and_back() {
        for k in KEYS {
            assert_eq!(
                k.env.unwrap(),
                format!("JIT_AZURE_{}", k.name.to_ascii_uppercase()),
                "{}",
                k.name
            );
        }
        let vars: Vec<&str> = KEYS.iter().filter_map(|k| k.env).collect();
        let docs = include_str!("config.rs");
        for line in docs.lines().filter(|l| l.starts_with("//! | `JIT_AZURE_")) {
            let var = line.split('`').nth(1).unwrap();
            assert!(
                var == "JIT_AZURE_PROVIDER_NAME" || vars.contains(&var),
                "{var} has no table key"
            );
        }
        assert!(KEYS.iter().any(|k| k.name == "client_secret" && k.secret));
    }

    #[test]
    fn a_table_reads_like_the_variables_and_errors_name_the_key() {
        let c = AzureConfig::from_provider_config(
            "azure-prod",
            &table(&[
                ("tenant_id", "contoso.onmicrosoft.com"),
                ("client_id", "app"),
                ("client_secret", SECRET),
                ("mode", "assignments"),
                ("max_duration", "4h"),
            ]),
        )
        .unwrap();
        assert_eq!(c.name, "azure-prod");
        assert_eq!(c.mode, Mode::Assignments);
        assert_eq!(c.max_duration, Duration::from_secs(4 * 3600));
        let e = AzureConfig::from_provider_config(
            "azure-prod",
            &table(&[("credential", "managed_identity"), ("max_duration", "30h")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("max_duration"), "{e}");
        let e =
            AzureConfig::from_provider_config("azure-prod", &table(&[("client_secret", SECRET)]))
                .unwrap_err();
        assert!(!format!("{e} {e:?}").contains(SECRET), "{e}");
    }

    #[tokio::test]
    async fn the_registry_builds_it_and_refuses_unknown_keys() {
        let registry = ProviderRegistry::builtin().with(factory());
        let ctx = FactoryContext::new();
        let p = registry
            .build(
                "azure-prod",
                "azure",
                &table(&[("credential", "managed_identity"), ("mode", "pim")]),
                &ctx,
            )
            .await
            .unwrap();
        assert_eq!(p.name(), "azure-prod");
        assert!(p.capabilities().native_expiry);
        let err = registry
            .build(
                "azure-prod",
                "azure",
                &table(&[("credential", "managed_identity"), ("tennant_id", "x")]),
                &ctx,
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("tennant_id"), "{err}");
    }
}
