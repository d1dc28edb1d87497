//! Typed configuration of the AWS provider.
//!
//! The broker's own AWS identity, region and endpoint come from the standard
//! `aws-config` chain (environment, profile, web identity, ECS, IMDS;
//! `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_STS`,
//! `AWS_ENDPOINT_URL_IAM`), so nothing here names a credential. What this
//! holds is how jit-aws behaves; [`AwsConfig::from_env`] reads it from
//! `JIT_AWS_*` variables:
//!
//! | variable | setting | default |
//! | --- | --- | --- |
//! | `JIT_AWS_PROVIDER_NAME` | [`AwsConfig::name`] | `aws` |
//! | `JIT_AWS_REGION` | [`AwsConfig::region`] | the chain's (`AWS_REGION`, profile), else `us-east-1` |
//! | `JIT_AWS_ENDPOINT_URL` | [`AwsConfig::endpoint_url`] | the chain's (`AWS_ENDPOINT_URL*`) |
//! | `JIT_AWS_MAX_DURATION` | [`AwsConfig::max_duration`] | `12h` |
//! | `JIT_AWS_ISSUE_MARGIN` | [`AwsConfig::issue_margin`] | `1m` |
//! | `JIT_AWS_ROLE_CHAINING` | [`AwsConfig::role_chaining`] (`true`/`false`/`detect`) | `detect` |
//! | `JIT_AWS_ROLE_CACHE_TTL` | [`AwsConfig::role_cache_ttl`] | `5m` |
//! | `JIT_AWS_OVER_ROLE_MAX` | [`AwsConfig::over_role_max`] (`clamp`/`refuse`) | `clamp` |
//! | `JIT_AWS_REVOCATION_POLICY` | [`AwsConfig::revocation_policy_name`] | `jit-revocations` |
//! | `JIT_AWS_REVOCATION_POLICY_LIMIT` | [`AwsConfig::revocation_policy_limit`] | `10240` |
//! | `JIT_AWS_PROPAGATION` | [`AwsConfig::propagation`] | `5m` |
//! | `JIT_AWS_SOURCE_IDENTITY` | [`AwsConfig::source_identity`] | `true` |
//! | `JIT_AWS_SESSION_TAGS` | [`AwsConfig::session_tags`] | `true` |
//! | `JIT_AWS_ACCOUNT_ID` | [`AwsConfig::account_id`] | detected with `sts:GetCallerIdentity` |
//! | `JIT_AWS_MANAGEMENT_ROLES` | [`AwsConfig::management_roles`], as `ACCOUNT=ROLE_ARN,...` | none |
//! | `JIT_AWS_CALL_TIMEOUT` | [`AwsConfig::call_timeout`] | `30s` |
//!
//! # Roles in other accounts
//!
//! `iam:GetRole`, `iam:PutRolePolicy` and `iam:DeleteRolePolicy` name a
//! role by its name only and act in the caller's own account. To manage the
//! revocation policy of a role in another account, the broker assumes that
//! account's management role ([`AwsConfig::management_roles`]; it needs the
//! four `iam:` actions on the target roles and must trust the broker). An
//! entitlement whose role is in an account that is neither the broker's own
//! nor has a management role is refused when the catalogue loads: its
//! revocations would otherwise land on a same-named role in the broker's
//! account.

use std::collections::BTreeMap;
use std::time::Duration;

use jit_core::provider::registry::{ConfigKey, ProviderConfig};
use jit_core::types::{format_duration, parse_duration, MAX_GRANT_DURATION};

use crate::error::{printable, AwsError};

/// The shortest session STS mints.
pub const STS_MIN_DURATION: Duration = Duration::from_secs(900);
/// The longest session STS mints (a role's `MaxSessionDuration` can be at most this).
pub const STS_MAX_DURATION: Duration = Duration::from_secs(12 * 3600);
/// The cap AWS applies when the broker's own identity is an assumed role.
pub const ROLE_CHAINING_MAX: Duration = Duration::from_secs(3600);
/// IAM's limit on the aggregate size of a role's inline policies.
pub const INLINE_ROLE_POLICY_LIMIT: usize = 10_240;

/// The keys of a `kind = "aws"` provider table ([`crate::factory()`]): each
/// sets the same as the `JIT_AWS_*` variable of the [module docs](self),
/// which wins when set. `JIT_AWS_PROVIDER_NAME` has no key: the table name
/// is the provider name.
pub const KEYS: &[ConfigKey] = &[
    ConfigKey::optional("region", "region for STS and IAM (default: the chain's, else `us-east-1`)")
        .env("JIT_AWS_REGION"),
    ConfigKey::optional("endpoint_url", "one endpoint for STS and IAM (a VPC endpoint, a test server)")
        .env("JIT_AWS_ENDPOINT_URL"),
    ConfigKey::optional("max_duration", "the longest grant (default `12h`)")
        .env("JIT_AWS_MAX_DURATION"),
    ConfigKey::optional("issue_margin", "room between fixing a window and calling STS (default `1m`)")
        .env("JIT_AWS_ISSUE_MARGIN"),
    ConfigKey::optional(
        "role_chaining",
        "`true`, `false` or `detect` whether the broker's identity is an assumed role (default `detect`)",
    )
    .env("JIT_AWS_ROLE_CHAINING"),
    ConfigKey::optional("role_cache_ttl", "how long role facts are cached (default `5m`)")
        .env("JIT_AWS_ROLE_CACHE_TTL"),
    ConfigKey::optional(
        "over_role_max",
        "`clamp` or `refuse` windows longer than the role allows (default `clamp`)",
    )
    .env("JIT_AWS_OVER_ROLE_MAX"),
    ConfigKey::optional(
        "revocation_policy",
        "inline role policy holding revocations (default `jit-revocations`)",
    )
    .env("JIT_AWS_REVOCATION_POLICY"),
    ConfigKey::optional(
        "revocation_policy_limit",
        "largest revocation policy in characters (default 10240)",
    )
    .env("JIT_AWS_REVOCATION_POLICY_LIMIT"),
    ConfigKey::optional("propagation", "advertised time for a revocation to take effect (default `5m`)")
        .env("JIT_AWS_PROPAGATION"),
    ConfigKey::optional("source_identity", "set `SourceIdentity` to the requester (default `true`)")
        .env("JIT_AWS_SOURCE_IDENTITY"),
    ConfigKey::optional("session_tags", "pass session tags (default `true`)")
        .env("JIT_AWS_SESSION_TAGS"),
    ConfigKey::optional("account_id", "the broker's own account (default: detected)")
        .env("JIT_AWS_ACCOUNT_ID"),
    ConfigKey::optional(
        "management_roles",
        "per other account, the role assumed to manage role policies there, as `ACCOUNT=ROLE_ARN,...`",
    )
    .env("JIT_AWS_MANAGEMENT_ROLES"),
    ConfigKey::optional("call_timeout", "longest time one STS or IAM call may take (default `30s`)")
        .env("JIT_AWS_CALL_TIMEOUT"),
];

/// What to do when a grant's window is longer than the role's `MaxSessionDuration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverRoleMax {
    /// Mint the longest session the role allows; the grant records the
    /// earlier expiry STS returns (the core treats it as the truth).
    #[default]
    Clamp,
    /// Refuse with a typed `DurationTooLong` before `AssumeRole`.
    Refuse,
}

/// How jit-aws behaves. Build with [`AwsConfig::default`] and the `with_*`
/// methods, or read it with [`AwsConfig::from_env`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsConfig {
    /// The provider name entitlements select (`provider = "aws"`).
    pub name: String,
    /// Region for STS and IAM; `None` takes the chain's.
    pub region: Option<String>,
    /// One endpoint for STS and IAM (a moto server, a VPC endpoint); `None`
    /// leaves it to the chain's `AWS_ENDPOINT_URL*` variables.
    pub endpoint_url: Option<String>,
    /// The longest grant, at most 12 h (and 1 h when role chaining).
    pub max_duration: Duration,
    /// Time allowed between the broker fixing a grant's window and the
    /// `AssumeRole` call. STS's minimum is 15 minutes measured from the call,
    /// and a session never ends after its window, so the shortest window
    /// accepted is 15 minutes plus this margin.
    pub issue_margin: Duration,
    /// Whether the broker's own identity is an assumed role (AWS then caps
    /// sessions at 1 h); `None` detects it with `sts:GetCallerIdentity` when
    /// the provider is built.
    pub role_chaining: Option<bool>,
    /// How long a role's `MaxSessionDuration` and id (from `iam:GetRole`) are cached.
    pub role_cache_ttl: Duration,
    /// What to do with a window longer than the role allows.
    pub over_role_max: OverRoleMax,
    /// Name of the inline role policy holding per-grant revocations.
    pub revocation_policy_name: String,
    /// Largest revocation policy written, in non-whitespace characters; IAM
    /// allows 10,240 for all of a role's inline policies together, so lower
    /// this when the role has other inline policies.
    pub revocation_policy_limit: usize,
    /// Advertised worst-case time for a revocation to take effect.
    pub propagation: Duration,
    /// Whether to set `SourceIdentity` (needs `sts:SetSourceIdentity` in the role's trust policy).
    pub source_identity: bool,
    /// Whether to pass session tags (needs `sts:TagSession` in the role's trust policy).
    pub session_tags: bool,
    /// The broker's own account (where its IAM calls act); `None` detects it
    /// with `sts:GetCallerIdentity` when the provider is built.
    pub account_id: Option<String>,
    /// Per account (12 digits): the ARN of a role in that account the broker
    /// assumes to read roles and write revocation policies there.
    pub management_roles: BTreeMap<String, String>,
    /// Longest time one STS or IAM call may take, retries included, so a
    /// stalled call cannot hold a role's revocation lock for ever.
    pub call_timeout: Duration,
}

impl Default for AwsConfig {
    fn default() -> Self {
        Self {
            name: "aws".into(),
            region: None,
            endpoint_url: None,
            max_duration: STS_MAX_DURATION,
            issue_margin: Duration::from_secs(60),
            role_chaining: None,
            role_cache_ttl: Duration::from_secs(300),
            over_role_max: OverRoleMax::Clamp,
            revocation_policy_name: "jit-revocations".into(),
            revocation_policy_limit: INLINE_ROLE_POLICY_LIMIT,
            propagation: Duration::from_secs(300),
            source_identity: true,
            session_tags: true,
            account_id: None,
            management_roles: BTreeMap::new(),
            call_timeout: Duration::from_secs(30),
        }
    }
}

fn setting(field: &str, message: impl Into<String>) -> AwsError {
    AwsError::Setting {
        field: field.into(),
        message: message.into(),
    }
}

impl AwsConfig {
    /// Reads `JIT_AWS_*` variables (see the module docs) over the defaults.
    pub fn from_env() -> jit_core::Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Like [`AwsConfig::from_env`], from any lookup (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> jit_core::Result<Self> {
        Self::from_lookup_inner(get).map_err(|e| e.into_core("aws", "configure"))
    }

    /// Reads a provider table's settings (see [`KEYS`]), with `name` as
    /// the provider name. The [registry](jit_core::provider::registry) has
    /// already applied the `JIT_AWS_*` variables; errors name the table's
    /// key (and the variable when the value came from one).
    pub fn from_provider_config(name: &str, config: &ProviderConfig) -> jit_core::Result<Self> {
        let lookup = |var: &str| {
            KEYS.iter()
                .find(|k| k.env == Some(var))
                .and_then(|k| config.get(k.name))
                .map(String::from)
        };
        match Self::from_lookup_inner(lookup) {
            Ok(c) => {
                let c = c.with_name(name);
                c.check().map_err(|e| key_error(config, e))?;
                Ok(c)
            }
            Err(e) => Err(key_error(config, e)),
        }
    }

    fn from_lookup_inner(get: impl Fn(&str) -> Option<String>) -> Result<Self, AwsError> {
        let mut c = Self::default();
        let duration = |key: &str| -> Result<Option<Duration>, AwsError> {
            get(key)
                .map(|v| {
                    parse_duration(&v)
                        .map_err(|e| setting(key, format!("`{}`: {e}", printable(&v))))
                })
                .transpose()
        };
        let boolean = |key: &str| -> Result<Option<bool>, AwsError> {
            get(key)
                .map(|v| match v.trim().to_ascii_lowercase().as_str() {
                    "1" | "true" | "yes" | "on" => Ok(true),
                    "0" | "false" | "no" | "off" => Ok(false),
                    _ => Err(setting(
                        key,
                        format!("`{}` is not `true` or `false`", printable(&v)),
                    )),
                })
                .transpose()
        };
        if let Some(v) = get("JIT_AWS_PROVIDER_NAME") {
            c.name = v;
        }
        c.region = get("JIT_AWS_REGION").filter(|v| !v.is_empty());
        c.endpoint_url = get("JIT_AWS_ENDPOINT_URL").filter(|v| !v.is_empty());
        if let Some(d) = duration("JIT_AWS_MAX_DURATION")? {
            c.max_duration = d;
        }
        if let Some(d) = duration("JIT_AWS_ISSUE_MARGIN")? {
            c.issue_margin = d;
        }
        if let Some(v) = get("JIT_AWS_ROLE_CHAINING") {
            c.role_chaining = match v.trim().to_ascii_lowercase().as_str() {
                "" | "detect" | "auto" => None,
                _ => boolean("JIT_AWS_ROLE_CHAINING")?,
            };
        }
        if let Some(d) = duration("JIT_AWS_ROLE_CACHE_TTL")? {
            c.role_cache_ttl = d;
        }
        if let Some(v) = get("JIT_AWS_OVER_ROLE_MAX") {
            c.over_role_max = match v.trim().to_ascii_lowercase().as_str() {
                "clamp" => OverRoleMax::Clamp,
                "refuse" => OverRoleMax::Refuse,
                _ => {
                    return Err(setting(
                        "JIT_AWS_OVER_ROLE_MAX",
                        format!("`{}` is not `clamp` or `refuse`", printable(&v)),
                    ))
                }
            };
        }
        if let Some(v) = get("JIT_AWS_REVOCATION_POLICY") {
            c.revocation_policy_name = v;
        }
        if let Some(v) = get("JIT_AWS_REVOCATION_POLICY_LIMIT") {
            c.revocation_policy_limit = v.trim().parse().map_err(|_| {
                setting(
                    "JIT_AWS_REVOCATION_POLICY_LIMIT",
                    format!("`{}` is not a number", printable(&v)),
                )
            })?;
        }
        if let Some(d) = duration("JIT_AWS_PROPAGATION")? {
            c.propagation = d;
        }
        if let Some(b) = boolean("JIT_AWS_SOURCE_IDENTITY")? {
            c.source_identity = b;
        }
        if let Some(b) = boolean("JIT_AWS_SESSION_TAGS")? {
            c.session_tags = b;
        }
        c.account_id = get("JIT_AWS_ACCOUNT_ID").filter(|v| !v.trim().is_empty());
        if let Some(v) = get("JIT_AWS_MANAGEMENT_ROLES") {
            for pair in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let Some((account, arn)) = pair.split_once('=') else {
                    return Err(setting(
                        "JIT_AWS_MANAGEMENT_ROLES",
                        format!("`{}` is not `ACCOUNT=ROLE_ARN`", printable(pair)),
                    ));
                };
                c.management_roles
                    .insert(account.trim().to_string(), arn.trim().to_string());
            }
        }
        if let Some(d) = duration("JIT_AWS_CALL_TIMEOUT")? {
            c.call_timeout = d;
        }
        c.check()?;
        Ok(c)
    }

    /// Sets the provider name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the region.
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Sends STS and IAM calls to one endpoint.
    pub fn with_endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.endpoint_url = Some(url.into());
        self
    }

    /// Sets the longest grant.
    pub fn with_max_duration(mut self, d: Duration) -> Self {
        self.max_duration = d;
        self
    }

    /// Sets the margin between window and call (see [`AwsConfig::issue_margin`]).
    pub fn with_issue_margin(mut self, d: Duration) -> Self {
        self.issue_margin = d;
        self
    }

    /// States whether the broker's identity is an assumed role, skipping detection.
    pub fn with_role_chaining(mut self, chaining: bool) -> Self {
        self.role_chaining = Some(chaining);
        self
    }

    /// Sets how long role facts are cached.
    pub fn with_role_cache_ttl(mut self, ttl: Duration) -> Self {
        self.role_cache_ttl = ttl;
        self
    }

    /// Sets what to do with windows longer than the role allows.
    pub fn with_over_role_max(mut self, over: OverRoleMax) -> Self {
        self.over_role_max = over;
        self
    }

    /// Sets the name of the revocation policy.
    pub fn with_revocation_policy_name(mut self, name: impl Into<String>) -> Self {
        self.revocation_policy_name = name.into();
        self
    }

    /// Sets the size budget of the revocation policy.
    pub fn with_revocation_policy_limit(mut self, limit: usize) -> Self {
        self.revocation_policy_limit = limit;
        self
    }

    /// Sets the advertised propagation time of a revocation.
    pub fn with_propagation(mut self, d: Duration) -> Self {
        self.propagation = d;
        self
    }

    /// Turns `SourceIdentity` on or off.
    pub fn with_source_identity(mut self, on: bool) -> Self {
        self.source_identity = on;
        self
    }

    /// Turns session tags on or off.
    pub fn with_session_tags(mut self, on: bool) -> Self {
        self.session_tags = on;
        self
    }

    /// States the broker's own account, skipping detection.
    pub fn with_account_id(mut self, account: impl Into<String>) -> Self {
        self.account_id = Some(account.into());
        self
    }

    /// Manages role policies in `account` through `role_arn` (see the module docs).
    pub fn with_management_role(
        mut self,
        account: impl Into<String>,
        role_arn: impl Into<String>,
    ) -> Self {
        self.management_roles
            .insert(account.into(), role_arn.into());
        self
    }

    /// Sets the longest time one STS or IAM call may take.
    pub fn with_call_timeout(mut self, d: Duration) -> Self {
        self.call_timeout = d;
        self
    }

    /// The shortest window accepted: STS's 15 minutes plus the issue margin.
    pub fn min_window(&self) -> Duration {
        STS_MIN_DURATION + self.issue_margin
    }

    /// Checks the settings against each other and AWS's limits.
    pub(crate) fn check(&self) -> Result<(), AwsError> {
        if self.name.is_empty()
            || self
                .name
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(setting("name", "must be non-empty without spaces"));
        }
        if self.max_duration > STS_MAX_DURATION.min(MAX_GRANT_DURATION) {
            return Err(setting(
                "max_duration",
                format!(
                    "`{}` exceeds STS's maximum of 12h",
                    format_duration(self.max_duration)
                ),
            ));
        }
        if self.max_duration < self.min_window() {
            return Err(setting(
                "max_duration",
                format!(
                    "`{}` is below the shortest window of {} (15m for STS plus the issue margin)",
                    format_duration(self.max_duration),
                    format_duration(self.min_window())
                ),
            ));
        }
        if self.issue_margin > Duration::from_secs(3600) {
            return Err(setting("issue_margin", "must be at most 1h"));
        }
        let n = &self.revocation_policy_name;
        if n.is_empty()
            || n.len() > 128
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
        {
            return Err(setting(
                "revocation_policy_name",
                format!(
                    "`{}` must be 1 to 128 characters of `[A-Za-z0-9_+=,.@-]`",
                    printable(n)
                ),
            ));
        }
        if self.revocation_policy_limit < 512
            || self.revocation_policy_limit > INLINE_ROLE_POLICY_LIMIT
        {
            return Err(setting(
                "revocation_policy_limit",
                format!("must be between 512 and {INLINE_ROLE_POLICY_LIMIT}"),
            ));
        }
        let is_account = |a: &str| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit());
        if let Some(a) = &self.account_id {
            if !is_account(a) {
                return Err(setting(
                    "account_id",
                    format!("`{}` is not 12 digits", printable(a)),
                ));
            }
        }
        for (account, arn) in &self.management_roles {
            if !is_account(account) {
                return Err(setting(
                    "management_roles",
                    format!("account `{}` is not 12 digits", printable(account)),
                ));
            }
            let role = crate::target::RoleArn::parse(arn)
                .map_err(|m| setting("management_roles", format!("role for `{account}`: {m}")))?;
            if role.account() != account {
                return Err(setting(
                    "management_roles",
                    format!("role `{}` is not in account `{account}`", printable(arn)),
                ));
            }
        }
        if self.call_timeout < Duration::from_secs(1)
            || self.call_timeout > Duration::from_secs(300)
        {
            return Err(setting("call_timeout", "must be between 1s and 5m"));
        }
        if let Some(url) = &self.endpoint_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(setting(
                    "endpoint_url",
                    format!("`{}` is not an http(s) URL", printable(url)),
                ));
            }
        }
        Ok(())
    }
}

/// A setting error worded with the table's key: parse errors name the
/// `JIT_AWS_*` variable, [`AwsConfig::check`] the struct field.
fn key_error(config: &ProviderConfig, e: AwsError) -> jit_core::Error {
    match e {
        AwsError::Setting { field, message } => {
            let key = KEYS
                .iter()
                .find(|k| k.env == Some(field.as_str()))
                .map(|k| k.name)
                .unwrap_or(match field.as_str() {
                    "revocation_policy_name" => "revocation_policy",
                    other => other,
                });
            config.invalid(key, message)
        }
        other => other.into_core(config.provider(), "configure"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::collections::HashMap;

    use super::*;

    fn from(pairs: &[(&str, &str)]) -> jit_core::Result<AwsConfig> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AwsConfig::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_and_env() {
        let c = from(&[]).unwrap();
        assert_eq!(c, AwsConfig::default());
        assert_eq!(c.min_window(), Duration::from_secs(960));
        let c = from(&[
            ("JIT_AWS_PROVIDER_NAME", "aws-prod"),
            ("JIT_AWS_REGION", "eu-west-1"),
            ("JIT_AWS_ENDPOINT_URL", "http://127.0.0.1:5000"),
            ("JIT_AWS_MAX_DURATION", "4h"),
            ("JIT_AWS_ISSUE_MARGIN", "30s"),
            ("JIT_AWS_ROLE_CHAINING", "true"),
            ("JIT_AWS_ROLE_CACHE_TTL", "1m"),
            ("JIT_AWS_OVER_ROLE_MAX", "refuse"),
            ("JIT_AWS_REVOCATION_POLICY", "revoked"),
            ("JIT_AWS_REVOCATION_POLICY_LIMIT", "6000"),
            ("JIT_AWS_PROPAGATION", "2m"),
            ("JIT_AWS_SOURCE_IDENTITY", "no"),
            ("JIT_AWS_SESSION_TAGS", "off"),
            ("JIT_AWS_ACCOUNT_ID", "123456789012"),
            (
                "JIT_AWS_MANAGEMENT_ROLES",
                "111111111111=arn:aws:iam::111111111111:role/JitManager, 222222222222=arn:aws:iam::222222222222:role/x/M",
            ),
            ("JIT_AWS_CALL_TIMEOUT", "10s"),
        ])
        .unwrap();
        assert_eq!(c.account_id.as_deref(), Some("123456789012"));
        assert_eq!(c.management_roles.len(), 2);
        assert_eq!(
            c.management_roles["222222222222"],
            "arn:aws:iam::222222222222:role/x/M"
        );
        assert_eq!(c.call_timeout, Duration::from_secs(10));
        assert_eq!(c.name, "aws-prod");
        assert_eq!(c.region.as_deref(), Some("eu-west-1"));
        assert_eq!(c.max_duration, Duration::from_secs(4 * 3600));
        assert_eq!(c.issue_margin, Duration::from_secs(30));
        assert_eq!(c.role_chaining, Some(true));
        assert_eq!(c.over_role_max, OverRoleMax::Refuse);
        assert_eq!(c.revocation_policy_limit, 6000);
        assert!(!c.source_identity && !c.session_tags);
        assert_eq!(
            from(&[("JIT_AWS_ROLE_CHAINING", "detect")])
                .unwrap()
                .role_chaining,
            None
        );
    }

    #[test]
    fn bad_settings_are_config_errors_naming_the_variable() {
        for (k, v) in [
            ("JIT_AWS_MAX_DURATION", "13h"),
            ("JIT_AWS_MAX_DURATION", "10m"),
            ("JIT_AWS_MAX_DURATION", "soon"),
            ("JIT_AWS_ROLE_CHAINING", "maybe"),
            ("JIT_AWS_OVER_ROLE_MAX", "stretch"),
            ("JIT_AWS_REVOCATION_POLICY", "bad name"),
            ("JIT_AWS_REVOCATION_POLICY_LIMIT", "20000"),
            ("JIT_AWS_REVOCATION_POLICY_LIMIT", "many"),
            ("JIT_AWS_ENDPOINT_URL", "ftp://x"),
            ("JIT_AWS_ISSUE_MARGIN", "2h"),
            ("JIT_AWS_ACCOUNT_ID", "12345"),
            ("JIT_AWS_MANAGEMENT_ROLES", "111111111111"),
            (
                "JIT_AWS_MANAGEMENT_ROLES",
                "1111=arn:aws:iam::111111111111:role/M",
            ),
            (
                "JIT_AWS_MANAGEMENT_ROLES",
                "111111111111=arn:aws:iam::222222222222:role/M",
            ),
            ("JIT_AWS_CALL_TIMEOUT", "0s"),
        ] {
            match from(&[(k, v)]) {
                Err(jit_core::Error::Config(e)) => {
                    let s = e.to_string();
                    assert!(s.contains("settings"), "{k}={v}: {s}");
                }
                other => panic!("{k}={v}: expected a config error, got {other:?}"),
            }
        }
    }
}
