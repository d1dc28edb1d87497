//! Typed configuration of the Google Cloud provider.
//!
//! One provider instance works in one [`Mode`], because a provider's
//! capabilities are one value: conditional bindings expire natively and can
//! be revoked (within IAM's propagation time), access tokens cannot be
//! revoked at all. Configure two providers (say `gcp` and `gcp-token`) to
//! offer both.
//!
//! [`GcpConfig::from_env`] reads `JIT_GCP_*` variables;
//! [`GcpConfig::from_provider_config`] reads the same settings from a host's
//! `[providers.NAME]` table (`kind = "gcp"`), whose keys ([`KEYS`]) are the
//! variable names without the prefix, in lower case (`max_duration`,
//! `member_attribute`, ...); a variable that is set wins over the table.
//!
//! | variable | setting | default |
//! | --- | --- | --- |
//! | `JIT_GCP_PROVIDER_NAME` | [`GcpConfig::name`] | `gcp` |
//! | `JIT_GCP_MODE` | [`GcpConfig::mode`] (`binding` or `token`) | `binding` |
//! | `JIT_GCP_CREDENTIALS` | [`GcpConfig::credentials`]: `adc`, `metadata`, or the path of a service-account key file | `adc` |
//! | `JIT_GCP_ENDPOINT_URL` | one endpoint for all three APIs (a local fake, a private endpoint) | Google's |
//! | `JIT_GCP_RESOURCE_MANAGER_ENDPOINT` | [`GcpConfig::resource_manager_endpoint`] | `https://cloudresourcemanager.googleapis.com` |
//! | `JIT_GCP_IAM_ENDPOINT` | [`GcpConfig::iam_endpoint`] | `https://iam.googleapis.com` |
//! | `JIT_GCP_IAM_CREDENTIALS_ENDPOINT` | [`GcpConfig::iam_credentials_endpoint`] | `https://iamcredentials.googleapis.com` |
//! | `JIT_GCP_MEMBER_ATTRIBUTE` | [`GcpConfig::member_attribute`] | `gcp_member` |
//! | `JIT_GCP_MEMBER_FROM_EMAIL` | [`GcpConfig::member_from_email`] | `false` |
//! | `JIT_GCP_EMAIL_ATTRIBUTE` | [`GcpConfig::email_attribute`] | `email` |
//! | `JIT_GCP_EMAIL_VERIFIED_ATTRIBUTE` | [`GcpConfig::email_verified_attribute`] | `email_verified` |
//! | `JIT_GCP_MAX_DURATION` | [`GcpConfig::max_duration`] (binding mode) | `12h` |
//! | `JIT_GCP_TOKEN_MAX_LIFETIME` | [`GcpConfig::token_max_lifetime`] (token mode) | `1h` |
//! | `JIT_GCP_PROPAGATION` | [`GcpConfig::propagation`] | `7m` |
//! | `JIT_GCP_CONFLICT_RETRIES` | [`GcpConfig::conflict_retries`] | `5` |
//! | `JIT_GCP_CALL_TIMEOUT` | [`GcpConfig::call_timeout`] | `30s` |
//! | `JIT_GCP_HYGIENE_RESOURCES` | [`GcpConfig::hygiene_resources`]: comma-separated resources whose expired `jit-` bindings hygiene prunes, besides those the catalogue names | none |
//!
//! # Who gets the role
//!
//! The IAM member (`user:…`, `group:…`, `serviceAccount:…`, `principal://…`)
//! is the principal attribute [`GcpConfig::member_attribute`]. Only when
//! [`GcpConfig::member_from_email`] opts in, and only when the attribute
//! [`GcpConfig::email_verified_attribute`] is exactly `true`, a principal
//! without it becomes `user:<email>`: an unverified email is whatever the
//! user typed into a profile.

use std::path::PathBuf;
use std::time::Duration;

use jit_core::provider::registry::{ConfigKey, ProviderConfig};
use jit_core::types::{format_duration, parse_duration, MAX_GRANT_DURATION};

use crate::error::{printable, GcpError};

/// The longest access token IAM Credentials mints by default.
pub const TOKEN_DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// The longest access token IAM Credentials mints for a service account the
/// organization policy `constraints/iam.allowServiceAccountCredentialLifetimeExtension`
/// lists (see `lifetime` in the iamcredentials v1 discovery document).
pub const TOKEN_EXTENDED_MAX_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Google's default endpoints.
pub const RESOURCE_MANAGER_ENDPOINT: &str = "https://cloudresourcemanager.googleapis.com";
/// IAM v1 (service accounts' own policies).
pub const IAM_ENDPOINT: &str = "https://iam.googleapis.com";
/// IAM Service Account Credentials v1.
pub const IAM_CREDENTIALS_ENDPOINT: &str = "https://iamcredentials.googleapis.com";

/// What one provider instance mints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Conditional IAM bindings that expire natively.
    #[default]
    Binding,
    /// Short-lived OAuth access tokens of a service account (not revocable).
    Token,
}

/// Where the broker's own Google identity comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CredentialSource {
    /// Application Default Credentials (`GOOGLE_APPLICATION_CREDENTIALS`,
    /// gcloud's file, the metadata server).
    #[default]
    Adc,
    /// The metadata server of the VM, GKE pod or Cloud Run service.
    Metadata,
    /// A service-account key file (JSON).
    KeyFile(PathBuf),
}

/// How jit-gcp behaves. Build with [`GcpConfig::default`] and the `with_*`
/// methods, or read it with [`GcpConfig::from_env`] / [`GcpConfig::from_provider_config`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcpConfig {
    /// The provider name entitlements select (`provider = "gcp"`).
    pub name: String,
    /// What this instance mints.
    pub mode: Mode,
    /// The broker's own identity.
    pub credentials: CredentialSource,
    /// Resource Manager v3 (projects, folders, organizations).
    pub resource_manager_endpoint: String,
    /// IAM v1 (service accounts' own policies).
    pub iam_endpoint: String,
    /// IAM Service Account Credentials v1 (`generateAccessToken`).
    pub iam_credentials_endpoint: String,
    /// The principal attribute holding the IAM member.
    pub member_attribute: String,
    /// Whether a principal without [`GcpConfig::member_attribute`] becomes
    /// `user:<email>` when its email is verified.
    pub member_from_email: bool,
    /// The principal attribute holding the email.
    pub email_attribute: String,
    /// The principal attribute that must be exactly `true` for the email to count.
    pub email_verified_attribute: String,
    /// The longest conditional binding (binding mode).
    pub max_duration: Duration,
    /// The longest access token (token mode): 1 h unless the organization
    /// policy allows up to 12 h for the service accounts concerned.
    pub token_max_lifetime: Duration,
    /// Advertised worst-case time for a removed binding to stop working.
    /// Google: "changes to allow or deny policies typically propagate in 2
    /// minutes, but could potentially take 7 minutes or longer"
    /// (<https://cloud.google.com/iam/docs/access-change-propagation>).
    pub propagation: Duration,
    /// How many times one read-modify-write is tried when the policy's etag
    /// changes between read and write.
    pub conflict_retries: u32,
    /// Longest time one API call may take.
    pub call_timeout: Duration,
    /// Resources (`projects/…`, `folders/…`, `organizations/…`,
    /// `projects/-/serviceAccounts/…`) whose expired `jit-` bindings the
    /// reaper's hygiene prunes besides those it learns by itself: every
    /// resource an entitlement of this provider names (seen when the
    /// catalogue is validated) and every resource it issued on since
    /// start. List here resources that catalogue entries no longer name
    /// but earlier grants were issued on.
    pub hygiene_resources: Vec<String>,
}

impl Default for GcpConfig {
    fn default() -> Self {
        Self {
            name: "gcp".into(),
            mode: Mode::Binding,
            credentials: CredentialSource::Adc,
            resource_manager_endpoint: RESOURCE_MANAGER_ENDPOINT.into(),
            iam_endpoint: IAM_ENDPOINT.into(),
            iam_credentials_endpoint: IAM_CREDENTIALS_ENDPOINT.into(),
            member_attribute: "gcp_member".into(),
            member_from_email: false,
            email_attribute: "email".into(),
            email_verified_attribute: "email_verified".into(),
            max_duration: Duration::from_secs(12 * 3600),
            token_max_lifetime: TOKEN_DEFAULT_MAX_LIFETIME,
            propagation: Duration::from_secs(7 * 60),
            conflict_retries: 5,
            call_timeout: Duration::from_secs(30),
            hygiene_resources: Vec::new(),
        }
    }
}

fn setting(field: &str, message: impl Into<String>) -> GcpError {
    GcpError::Setting {
        field: field.into(),
        message: message.into(),
    }
}

/// The keys of a `kind = "gcp"` provider table, each the same setting as
/// its `JIT_GCP_*` variable (which wins when set). The provider's name is the
/// table's name.
pub const KEYS: &[ConfigKey] = &[
    ConfigKey::optional("mode", "`binding` (conditional IAM bindings) or `token` (access tokens); default `binding`")
        .env("JIT_GCP_MODE"),
    ConfigKey::optional("credentials", "the broker's identity: `adc`, `metadata`, or a service-account key file path (default `adc`)")
        .env("JIT_GCP_CREDENTIALS"),
    ConfigKey::optional("endpoint_url", "one endpoint for all three APIs (a private endpoint, a test fake)")
        .env("JIT_GCP_ENDPOINT_URL"),
    ConfigKey::optional("resource_manager_endpoint", "Resource Manager v3 endpoint")
        .env("JIT_GCP_RESOURCE_MANAGER_ENDPOINT"),
    ConfigKey::optional("iam_endpoint", "IAM v1 endpoint").env("JIT_GCP_IAM_ENDPOINT"),
    ConfigKey::optional("iam_credentials_endpoint", "IAM Credentials v1 endpoint")
        .env("JIT_GCP_IAM_CREDENTIALS_ENDPOINT"),
    ConfigKey::optional("member_attribute", "the principal attribute holding the IAM member (default `gcp_member`)")
        .env("JIT_GCP_MEMBER_ATTRIBUTE"),
    ConfigKey::optional("member_from_email", "let a verified email become `user:<email>` (default `false`)")
        .env("JIT_GCP_MEMBER_FROM_EMAIL"),
    ConfigKey::optional("email_attribute", "the principal attribute holding the email (default `email`)")
        .env("JIT_GCP_EMAIL_ATTRIBUTE"),
    ConfigKey::optional("email_verified_attribute", "the attribute that must be `true` (default `email_verified`)")
        .env("JIT_GCP_EMAIL_VERIFIED_ATTRIBUTE"),
    ConfigKey::optional("max_duration", "the longest binding (default `12h`)")
        .env("JIT_GCP_MAX_DURATION"),
    ConfigKey::optional("token_max_lifetime", "the longest access token (default `1h`, at most `12h`)")
        .env("JIT_GCP_TOKEN_MAX_LIFETIME"),
    ConfigKey::optional("propagation", "advertised time for a removed binding to stop working (default `7m`)")
        .env("JIT_GCP_PROPAGATION"),
    ConfigKey::optional("conflict_retries", "read-modify-write attempts on an etag conflict (default `5`)")
        .env("JIT_GCP_CONFLICT_RETRIES"),
    ConfigKey::optional("call_timeout", "the longest one API call may take (default `30s`)")
        .env("JIT_GCP_CALL_TIMEOUT"),
    ConfigKey::optional("hygiene_resources", "comma-separated resources whose expired `jit-` bindings hygiene prunes, besides those the catalogue names")
        .env("JIT_GCP_HYGIENE_RESOURCES"),
];

fn key_error(config: &ProviderConfig, e: GcpError) -> jit_core::Error {
    match e {
        GcpError::Setting { field, message } => {
            let key = KEYS
                .iter()
                .find(|k| k.env == Some(field.as_str()) || k.name == field)
                .map(|k| k.name)
                .unwrap_or(match field.as_str() {
                    "resource_manager_endpoint" | "iam_endpoint" | "iam_credentials_endpoint" => {
                        "endpoint_url"
                    }
                    other => other,
                });
            config.invalid(key, message)
        }
        other => other.into_core(config.provider(), "configure"),
    }
}

impl GcpConfig {
    /// Reads `JIT_GCP_*` variables (see the module docs) over the defaults.
    pub fn from_env() -> jit_core::Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads a host's provider table (keys as in [`KEYS`]; the registry has
    /// already refused unknown keys and applied the `JIT_GCP_*` variables).
    pub fn from_provider_config(name: &str, config: &ProviderConfig) -> jit_core::Result<Self> {
        let lookup = |var: &str| {
            KEYS.iter()
                .find(|k| k.env == Some(var))
                .and_then(|k| config.get(k.name))
                .map(String::from)
        };
        // A provider table names its identity: the ADC default would fall
        // back to the metadata server and fail only at the first call on a
        // machine that has none (see the crate README).
        if config
            .get("credentials")
            .is_none_or(|v| v.trim().is_empty())
        {
            return Err(config.invalid(
                "credentials",
                "no credentials source configured: set `credentials` (or `JIT_GCP_CREDENTIALS`) to `adc`, `metadata`, or a service-account key file",
            ));
        }
        match Self::from_lookup_inner(lookup) {
            Ok(c) => {
                let c = c.with_name(name);
                c.check().map_err(|e| key_error(config, e))?;
                Ok(c)
            }
            Err(e) => Err(key_error(config, e)),
        }
    }

    /// Like [`GcpConfig::from_env`], from any lookup (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> jit_core::Result<Self> {
        Self::from_lookup_inner(get).map_err(|e| e.into_core("gcp", "configure"))
    }

    fn from_lookup_inner(get: impl Fn(&str) -> Option<String>) -> Result<Self, GcpError> {
        let mut c = Self::default();
        let duration = |key: &str| -> Result<Option<Duration>, GcpError> {
            get(key)
                .filter(|v| !v.trim().is_empty())
                .map(|v| {
                    parse_duration(v.trim())
                        .map_err(|e| setting(key, format!("`{}`: {e}", printable(&v))))
                })
                .transpose()
        };
        let boolean = |key: &str| -> Result<Option<bool>, GcpError> {
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
        let text = |key: &str| {
            get(key)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if let Some(v) = text("JIT_GCP_PROVIDER_NAME") {
            c.name = v;
        }
        if let Some(v) = text("JIT_GCP_MODE") {
            c.mode = match v.to_ascii_lowercase().as_str() {
                "binding" | "bindings" => Mode::Binding,
                "token" | "tokens" | "access_token" => Mode::Token,
                _ => {
                    return Err(setting(
                        "JIT_GCP_MODE",
                        format!("`{}` is not `binding` or `token`", printable(&v)),
                    ))
                }
            };
        }
        if let Some(v) = text("JIT_GCP_CREDENTIALS") {
            c.credentials = match v.to_ascii_lowercase().as_str() {
                "adc" | "default" => CredentialSource::Adc,
                "metadata" | "mds" => CredentialSource::Metadata,
                _ => CredentialSource::KeyFile(PathBuf::from(v)),
            };
        }
        if let Some(url) = text("JIT_GCP_ENDPOINT_URL") {
            c.resource_manager_endpoint = url.clone();
            c.iam_endpoint = url.clone();
            c.iam_credentials_endpoint = url;
        }
        if let Some(url) = text("JIT_GCP_RESOURCE_MANAGER_ENDPOINT") {
            c.resource_manager_endpoint = url;
        }
        if let Some(url) = text("JIT_GCP_IAM_ENDPOINT") {
            c.iam_endpoint = url;
        }
        if let Some(url) = text("JIT_GCP_IAM_CREDENTIALS_ENDPOINT") {
            c.iam_credentials_endpoint = url;
        }
        if let Some(v) = text("JIT_GCP_MEMBER_ATTRIBUTE") {
            c.member_attribute = v;
        }
        if let Some(b) = boolean("JIT_GCP_MEMBER_FROM_EMAIL")? {
            c.member_from_email = b;
        }
        if let Some(v) = text("JIT_GCP_EMAIL_ATTRIBUTE") {
            c.email_attribute = v;
        }
        if let Some(v) = text("JIT_GCP_EMAIL_VERIFIED_ATTRIBUTE") {
            c.email_verified_attribute = v;
        }
        if let Some(d) = duration("JIT_GCP_MAX_DURATION")? {
            c.max_duration = d;
        }
        if let Some(d) = duration("JIT_GCP_TOKEN_MAX_LIFETIME")? {
            c.token_max_lifetime = d;
        }
        if let Some(d) = duration("JIT_GCP_PROPAGATION")? {
            c.propagation = d;
        }
        if let Some(v) = text("JIT_GCP_CONFLICT_RETRIES") {
            c.conflict_retries = v.parse().map_err(|_| {
                setting(
                    "JIT_GCP_CONFLICT_RETRIES",
                    format!("`{}` is not a number", printable(&v)),
                )
            })?;
        }
        if let Some(d) = duration("JIT_GCP_CALL_TIMEOUT")? {
            c.call_timeout = d;
        }
        if let Some(v) = text("JIT_GCP_HYGIENE_RESOURCES") {
            c.hygiene_resources = v
                .split(',')
                .map(|r| r.trim().to_string())
                .filter(|r| !r.is_empty())
                .collect();
        }
        c.check()?;
        Ok(c)
    }

    /// Sets the provider name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the mode.
    pub fn with_mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets where the broker's identity comes from.
    pub fn with_credentials(mut self, source: CredentialSource) -> Self {
        self.credentials = source;
        self
    }

    /// Sends every API call to one endpoint (a local fake).
    pub fn with_endpoint_url(mut self, url: impl Into<String>) -> Self {
        let url = url.into();
        self.resource_manager_endpoint = url.clone();
        self.iam_endpoint = url.clone();
        self.iam_credentials_endpoint = url;
        self
    }

    /// Sets the principal attribute holding the member.
    pub fn with_member_attribute(mut self, attribute: impl Into<String>) -> Self {
        self.member_attribute = attribute.into();
        self
    }

    /// Lets a verified email become `user:<email>` (see the module docs).
    pub fn with_member_from_email(mut self, on: bool) -> Self {
        self.member_from_email = on;
        self
    }

    /// Sets the longest binding.
    pub fn with_max_duration(mut self, d: Duration) -> Self {
        self.max_duration = d;
        self
    }

    /// Sets the longest access token.
    pub fn with_token_max_lifetime(mut self, d: Duration) -> Self {
        self.token_max_lifetime = d;
        self
    }

    /// Sets the advertised propagation time of a revocation.
    pub fn with_propagation(mut self, d: Duration) -> Self {
        self.propagation = d;
        self
    }

    /// Sets how many times a read-modify-write is tried.
    pub fn with_conflict_retries(mut self, n: u32) -> Self {
        self.conflict_retries = n;
        self
    }

    /// Sets the resources hygiene visits besides those it learns by itself.
    pub fn with_hygiene_resources<S: Into<String>>(
        mut self,
        resources: impl IntoIterator<Item = S>,
    ) -> Self {
        self.hygiene_resources = resources.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the longest time one call may take.
    pub fn with_call_timeout(mut self, d: Duration) -> Self {
        self.call_timeout = d;
        self
    }

    /// The longest grant this configuration mints.
    pub fn max_grant(&self) -> Duration {
        match self.mode {
            Mode::Binding => self.max_duration,
            Mode::Token => self.token_max_lifetime,
        }
    }

    /// Checks the settings against each other and Google's limits.
    pub(crate) fn check(&self) -> Result<(), GcpError> {
        if self.name.is_empty()
            || self
                .name
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(setting("name", "must be non-empty without spaces"));
        }
        for (field, url) in [
            ("resource_manager_endpoint", &self.resource_manager_endpoint),
            ("iam_endpoint", &self.iam_endpoint),
            ("iam_credentials_endpoint", &self.iam_credentials_endpoint),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(setting(
                    field,
                    format!("`{}` is not an http(s) URL", printable(url)),
                ));
            }
        }
        for (field, a) in [
            ("member_attribute", &self.member_attribute),
            ("email_attribute", &self.email_attribute),
            ("email_verified_attribute", &self.email_verified_attribute),
        ] {
            if a.is_empty() || a.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(setting(field, "must be a non-empty attribute name"));
            }
        }
        if self.max_duration < Duration::from_secs(60) || self.max_duration > MAX_GRANT_DURATION {
            return Err(setting(
                "max_duration",
                format!(
                    "`{}` must be between 1m and {}",
                    format_duration(self.max_duration),
                    format_duration(MAX_GRANT_DURATION)
                ),
            ));
        }
        if self.token_max_lifetime < Duration::from_secs(60)
            || self.token_max_lifetime > TOKEN_EXTENDED_MAX_LIFETIME
        {
            return Err(setting(
                "token_max_lifetime",
                format!(
                    "`{}` must be between 1m and 12h (iam credentials' maximum; over 1h needs the organization policy `constraints/iam.allowServiceAccountCredentialLifetimeExtension`)",
                    format_duration(self.token_max_lifetime)
                ),
            ));
        }
        if self.propagation > Duration::from_secs(3600) {
            return Err(setting("propagation", "must be at most 1h"));
        }
        if self.conflict_retries == 0 || self.conflict_retries > 20 {
            return Err(setting("conflict_retries", "must be between 1 and 20"));
        }
        if self.call_timeout < Duration::from_secs(1)
            || self.call_timeout > Duration::from_secs(300)
        {
            return Err(setting("call_timeout", "must be between 1s and 5m"));
        }
        for r in &self.hygiene_resources {
            crate::target::Resource::parse(r)
                .map_err(|m| setting("hygiene_resources", format!("`{}`: {m}", printable(r))))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::collections::HashMap;

    use super::*;

    fn from(pairs: &[(&str, &str)]) -> jit_core::Result<GcpConfig> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        GcpConfig::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_and_env() {
        let c = from(&[]).unwrap();
        assert_eq!(c, GcpConfig::default());
        assert_eq!(c.max_grant(), Duration::from_secs(12 * 3600));
        let c = from(&[
            ("JIT_GCP_PROVIDER_NAME", "gcp-token"),
            ("JIT_GCP_MODE", "token"),
            ("JIT_GCP_CREDENTIALS", "/etc/jit/broker.json"),
            ("JIT_GCP_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ("JIT_GCP_IAM_ENDPOINT", "http://127.0.0.1:9001"),
            ("JIT_GCP_MEMBER_ATTRIBUTE", "google_member"),
            ("JIT_GCP_MEMBER_FROM_EMAIL", "yes"),
            ("JIT_GCP_EMAIL_ATTRIBUTE", "mail"),
            ("JIT_GCP_EMAIL_VERIFIED_ATTRIBUTE", "mail_verified"),
            ("JIT_GCP_MAX_DURATION", "4h"),
            ("JIT_GCP_TOKEN_MAX_LIFETIME", "30m"),
            ("JIT_GCP_PROPAGATION", "2m"),
            ("JIT_GCP_CONFLICT_RETRIES", "8"),
            ("JIT_GCP_CALL_TIMEOUT", "10s"),
            (
                "JIT_GCP_HYGIENE_RESOURCES",
                "projects/old-proj-1, folders/123 ,",
            ),
        ])
        .unwrap();
        assert_eq!(c.name, "gcp-token");
        assert_eq!(c.mode, Mode::Token);
        assert_eq!(
            c.credentials,
            CredentialSource::KeyFile("/etc/jit/broker.json".into())
        );
        assert_eq!(c.resource_manager_endpoint, "http://127.0.0.1:9000");
        assert_eq!(c.iam_credentials_endpoint, "http://127.0.0.1:9000");
        assert_eq!(c.iam_endpoint, "http://127.0.0.1:9001");
        assert_eq!(c.member_attribute, "google_member");
        assert!(c.member_from_email);
        assert_eq!(c.email_attribute, "mail");
        assert_eq!(c.email_verified_attribute, "mail_verified");
        assert_eq!(c.max_duration, Duration::from_secs(4 * 3600));
        assert_eq!(c.max_grant(), Duration::from_secs(1800));
        assert_eq!(c.propagation, Duration::from_secs(120));
        assert_eq!(c.conflict_retries, 8);
        assert_eq!(c.call_timeout, Duration::from_secs(10));
        assert_eq!(c.hygiene_resources, ["projects/old-proj-1", "folders/123"]);
        assert_eq!(
            from(&[("JIT_GCP_CREDENTIALS", "metadata")])
                .unwrap()
                .credentials,
            CredentialSource::Metadata
        );
    }

    #[test]
    fn a_table_reads_like_the_variables_and_every_key_has_its_variable() {
        for k in KEYS {
            assert_eq!(
                k.env.unwrap(),
                format!("JIT_GCP_{}", k.name.to_ascii_uppercase()),
                "{}",
                k.name
            );
        }
        let docs = include_str!("config.rs");
        for line in docs.lines().filter(|l| l.starts_with("//! | `JIT_GCP_")) {
            let var = line.split('`').nth(1).unwrap();
            assert!(
                var == "JIT_GCP_PROVIDER_NAME" || KEYS.iter().any(|k| k.env == Some(var)),
                "{var} has no table key"
            );
        }
        let table: ProviderConfig = [
            ("credentials", "adc"),
            ("mode", "token"),
            ("max_duration", "2h"),
            ("token_max_lifetime", "30m"),
            ("endpoint_url", "http://127.0.0.1:1"),
        ]
        .into_iter()
        .collect();
        let c = GcpConfig::from_provider_config("gcp-prod", &table).unwrap();
        assert_eq!(c.name, "gcp-prod");
        assert_eq!(c.mode, Mode::Token);
        assert_eq!(c.max_duration, Duration::from_secs(7200));
        assert_eq!(c.iam_endpoint, "http://127.0.0.1:1");
        let bad: ProviderConfig = [("credentials", "adc"), ("token_max_lifetime", "13h")]
            .into_iter()
            .collect();
        let e = GcpConfig::from_provider_config("gcp-prod", &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("token_max_lifetime"), "{e}");
        // A table must name the broker's identity: no silent fallback.
        for creds in [None, Some("  ")] {
            let mut pairs = vec![("mode", "binding")];
            pairs.extend(creds.map(|c| ("credentials", c)));
            let t: ProviderConfig = pairs.into_iter().collect();
            let e = GcpConfig::from_provider_config("gcp", &t)
                .unwrap_err()
                .to_string();
            assert!(e.contains("no credentials source configured"), "{e}");
            assert!(e.contains("`credentials`"), "{e}");
        }
    }

    #[test]
    fn bad_settings_are_config_errors_naming_the_variable() {
        for (k, v) in [
            ("JIT_GCP_MODE", "both"),
            ("JIT_GCP_MAX_DURATION", "30s"),
            ("JIT_GCP_MAX_DURATION", "8d"),
            ("JIT_GCP_MAX_DURATION", "soon"),
            ("JIT_GCP_TOKEN_MAX_LIFETIME", "13h"),
            ("JIT_GCP_MEMBER_FROM_EMAIL", "maybe"),
            ("JIT_GCP_ENDPOINT_URL", "ftp://x"),
            ("JIT_GCP_CONFLICT_RETRIES", "0"),
            ("JIT_GCP_CONFLICT_RETRIES", "many"),
            ("JIT_GCP_CALL_TIMEOUT", "0s"),
            ("JIT_GCP_PROVIDER_NAME", "g c p"),
            ("JIT_GCP_HYGIENE_RESOURCES", "projects/ok-1,buckets/x"),
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
