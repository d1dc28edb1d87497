//! `kind = "gcp"` in a host's provider tables: the factory the
//! [registry](jit_core::provider::registry) builds [`GcpProvider`]s with.
//!
//! ```toml
//! [providers.gcp]                 # conditional bindings
//! kind = "gcp"
//! credentials = "/etc/jit/broker-sa.json"   # JIT_GCP_CREDENTIALS wins when set
//! max_duration = "8h"
//!
//! [providers.gcp-token]           # short-lived service-account tokens
//! kind = "gcp"
//! mode = "token"
//! token_max_lifetime = "1h"
//! ```
//!
//! The keys are [`crate::config::KEYS`], each the same setting as its
//! `JIT_GCP_*` variable. Building makes no remote call: the broker's
//! credentials are loaded (a key file is read and parsed, ADC and the
//! metadata server are looked up lazily by google-cloud-auth), and the
//! provider uses the context's clock.

use std::sync::Arc;

use async_trait::async_trait;
use jit_core::provider::registry::{ConfigKey, FactoryContext, ProviderConfig, ProviderFactory};
use jit_core::Provider;

use crate::config::{CredentialSource, GcpConfig, KEYS};
use crate::provider::GcpProvider;

/// Builds [`GcpProvider`]s from `kind = "gcp"` tables. See the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct GcpFactory;

/// The `gcp` factory, for [`ProviderRegistry::with`](jit_core::provider::registry::ProviderRegistry::with).
pub fn factory() -> GcpFactory {
    GcpFactory
}

#[async_trait]
impl ProviderFactory for GcpFactory {
    fn kind(&self) -> &str {
        "gcp"
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
        let mut gcp = GcpConfig::from_provider_config(name, config)?;
        // A relative key file is relative to the host's configuration file.
        if let CredentialSource::KeyFile(_) = &gcp.credentials {
            if let Some(path) = config.path("credentials", ctx) {
                gcp.credentials = CredentialSource::KeyFile(path);
            }
        }
        Ok(Arc::new(
            GcpProvider::builder(gcp).clock(ctx.clock()).build().await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use jit_core::provider::registry::ProviderRegistry;
    use jit_core::RevocationKind;

    use super::*;

    #[tokio::test]
    async fn the_registry_builds_both_modes_and_refuses_typos() {
        let registry = ProviderRegistry::builtin().with(factory());
        let ctx = FactoryContext::new();
        let dir = std::env::temp_dir().join(format!("jit-gcp-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = crate::testing::TestKey::generate("broker@prod-1234.iam.gserviceaccount.com");
        let path = dir.join("broker.json");
        std::fs::write(
            &path,
            key.key_file_json("http://127.0.0.1:9/token").to_string(),
        )
        .unwrap();
        let table = |pairs: &[(&str, &str)]| -> ProviderConfig {
            pairs.iter().map(|(k, v)| (*k, *v)).collect()
        };
        let path_s = path.display().to_string();
        let p = registry
            .build(
                "gcp",
                "gcp",
                &table(&[
                    ("credentials", &path_s),
                    ("endpoint_url", "http://127.0.0.1:9"),
                ]),
                &ctx,
            )
            .await
            .unwrap();
        assert_eq!(p.name(), "gcp");
        assert!(matches!(
            p.capabilities().revocation,
            RevocationKind::Propagates { .. }
        ));
        let t = registry
            .build(
                "gcp-token",
                "gcp",
                &table(&[("credentials", &path_s), ("mode", "token")]),
                &ctx,
            )
            .await
            .unwrap();
        assert_eq!(t.capabilities().revocation, RevocationKind::None);
        let e = registry
            .build("gcp", "gcp", &table(&[("max_duraton", "1h")]), &ctx)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("max_duraton"), "{e}");
        // A key file that is not a service-account key: refused at build, never quoted.
        std::fs::write(
            &path,
            r#"{"type":"authorized_user","refresh_token":"rt-SECRET"}"#,
        )
        .unwrap();
        let e = registry
            .build("gcp", "gcp", &table(&[("credentials", &path_s)]), &ctx)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("service_account"), "{e}");
        assert!(!format!("{e} {e:?}").contains("rt-SECRET"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
