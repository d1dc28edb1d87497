//! `kind = "aws"` in a host's provider tables: the factory the
//! [registry](jit_core::provider::registry) builds [`AwsProvider`]s with.
//!
//! ```toml
//! [providers.prod]
//! kind = "aws"
//! region = "eu-west-1"          # JIT_AWS_REGION wins when set
//! max_duration = "4h"
//! management_roles = { "111111111111" = "arn:aws:iam::111111111111:role/JitManager" }
//! ```
//!
//! The keys are [`crate::config::KEYS`], each the same setting as its
//! `JIT_AWS_*` variable. The broker's own AWS identity comes from the
//! standard `aws-config` chain. The provider takes revocation leases in the
//! context's store when there is one ([`FactoryContext::store`]), so
//! replicas (and a Lambda function on the same store) never overwrite each
//! other's revocations, and uses the context's clock. Unless both
//! `role_chaining` and `account_id` are set, building calls
//! `sts:GetCallerIdentity` once, so a host without AWS credentials fails at
//! start, not at the first request.

use std::sync::Arc;

use async_trait::async_trait;
use jit_core::provider::registry::{ConfigKey, FactoryContext, ProviderConfig, ProviderFactory};
use jit_core::Provider;

use crate::config::{AwsConfig, KEYS};
use crate::provider::AwsProvider;

/// Builds [`AwsProvider`]s from `kind = "aws"` tables. See the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct AwsFactory;

/// The `aws` factory, for [`ProviderRegistry::with`](jit_core::provider::registry::ProviderRegistry::with).
pub fn factory() -> AwsFactory {
    AwsFactory
}

#[async_trait]
impl ProviderFactory for AwsFactory {
    fn kind(&self) -> &str {
        "aws"
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
        let aws = AwsConfig::from_provider_config(name, config)?;
        let mut builder = AwsProvider::builder(aws).clock(ctx.clock());
        if let Some(store) = ctx.store() {
            builder = builder.lease_store(store);
        }
        Ok(Arc::new(builder.build().await?))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::time::Duration;

    use jit_core::provider::registry::{ProviderConfigError, ProviderRegistry};
    use jit_core::{ConfigError, Error};

    use super::*;
    use crate::config::OverRoleMax;

    fn table(pairs: &[(&str, &str)]) -> ProviderConfig {
        pairs.iter().map(|(k, v)| (*k, *v)).collect()
    }

    #[test]
    fn every_key_maps_to_a_jit_aws_variable_and_back() {
        // Every key has its variable, and every variable of the module docs
        // but the provider name has a key.
        let vars: Vec<&str> = KEYS.iter().filter_map(|k| k.env).collect();
        assert_eq!(vars.len(), KEYS.len());
        for k in KEYS {
            assert_eq!(
                k.env.unwrap(),
                format!("JIT_AWS_{}", k.name.to_ascii_uppercase()),
                "{}",
                k.name
            );
        }
        let docs = include_str!("config.rs");
        for line in docs.lines().filter(|l| l.starts_with("//! | `JIT_AWS_")) {
            let var = line.split('`').nth(1).unwrap();
            assert!(
                var == "JIT_AWS_PROVIDER_NAME" || vars.contains(&var),
                "{var} has no table key"
            );
        }
    }

    #[test]
    fn a_table_reads_like_the_variables() {
        let c = AwsConfig::from_provider_config(
            "prod",
            &table(&[
                ("region", "eu-west-1"),
                ("endpoint_url", "http://127.0.0.1:5000"),
                ("max_duration", "4h"),
                ("issue_margin", "30s"),
                ("role_chaining", "false"),
                ("role_cache_ttl", "1m"),
                ("over_role_max", "refuse"),
                ("revocation_policy", "revoked"),
                ("revocation_policy_limit", "4096"),
                ("propagation", "2m"),
                ("source_identity", "false"),
                ("session_tags", "false"),
                ("account_id", "123456789012"),
                (
                    "management_roles",
                    "111111111111=arn:aws:iam::111111111111:role/JitManager,222222222222=arn:aws:iam::222222222222:role/x/M",
                ),
                ("call_timeout", "10s"),
            ]),
        )
        .unwrap();
        assert_eq!(c.name, "prod");
        assert_eq!(c.region.as_deref(), Some("eu-west-1"));
        assert_eq!(c.endpoint_url.as_deref(), Some("http://127.0.0.1:5000"));
        assert_eq!(c.max_duration, Duration::from_secs(4 * 3600));
        assert_eq!(c.issue_margin, Duration::from_secs(30));
        assert_eq!(c.role_chaining, Some(false));
        assert_eq!(c.role_cache_ttl, Duration::from_secs(60));
        assert_eq!(c.over_role_max, OverRoleMax::Refuse);
        assert_eq!(c.revocation_policy_name, "revoked");
        assert_eq!(c.revocation_policy_limit, 4096);
        assert_eq!(c.propagation, Duration::from_secs(120));
        assert!(!c.source_identity && !c.session_tags);
        assert_eq!(c.account_id.as_deref(), Some("123456789012"));
        assert_eq!(
            c.management_roles["222222222222"],
            "arn:aws:iam::222222222222:role/x/M"
        );
        assert_eq!(c.call_timeout, Duration::from_secs(10));
        // An empty table is the defaults, under the table's name.
        assert_eq!(
            AwsConfig::from_provider_config("aws", &ProviderConfig::new()).unwrap(),
            AwsConfig::default()
        );
    }

    #[tokio::test]
    async fn bad_values_name_the_table_and_key() {
        let registry = ProviderRegistry::builtin().with(factory());
        for (key, value, text) in [
            (
                "max_duration",
                "13h",
                "`max_duration` is invalid: `13h` exceeds",
            ),
            ("max_duration", "soon", "`max_duration` is invalid: `soon`"),
            ("role_chaining", "maybe", "`role_chaining` is invalid"),
            ("over_role_max", "stretch", "`over_role_max` is invalid"),
            (
                "revocation_policy",
                "bad name",
                "`revocation_policy` is invalid",
            ),
            (
                "revocation_policy_limit",
                "many",
                "`revocation_policy_limit` is invalid",
            ),
            (
                "management_roles",
                "111111111111",
                "`management_roles` is invalid",
            ),
            ("call_timeout", "0s", "`call_timeout` is invalid"),
            ("endpoint_url", "ftp://x", "`endpoint_url` is invalid"),
        ] {
            // No remote call happens: the values are refused first.
            let err = registry
                .build(
                    "prod",
                    "aws",
                    &table(&[(key, value)]),
                    &FactoryContext::new(),
                )
                .await
                .unwrap_err();
            assert_eq!(err.code(), "invalid_configuration", "{key}={value}");
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("provider `prod`: {text}")),
                "{key}={value}: {msg}"
            );
        }
        let err = registry
            .build(
                "prod",
                "aws",
                &table(&[("regoin", "x")]),
                &FactoryContext::new(),
            )
            .await
            .unwrap_err();
        match err {
            Error::Config(ConfigError::Provider(ProviderConfigError::UnknownKey {
                key,
                known,
                ..
            })) => {
                assert_eq!(key, "regoin");
                assert!(known.contains(&"region".to_string()));
                assert_eq!(known.len(), KEYS.len());
            }
            other => panic!("expected an unknown key, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn variables_win_over_the_table_and_errors_say_so() {
        let registry = ProviderRegistry::new().with(factory());
        let ctx = FactoryContext::new()
            .with_env(|k| (k == "JIT_AWS_MAX_DURATION").then(|| "forever".to_string()));
        let err = registry
            .build("prod", "aws", &table(&[("max_duration", "4h")]), &ctx)
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(
                "provider `prod`: `max_duration` (from `JIT_AWS_MAX_DURATION`) is invalid"
            ),
            "{msg}"
        );
    }
}
