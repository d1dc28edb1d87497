//! Provider settings: defaults, `JIT_AZURE_*` variables and string maps.
//!
//! | variable (map key without the prefix, lowercase) | default | meaning |
//! | --- | --- | --- |
//! | `JIT_AZURE_PROVIDER_NAME` (`provider_name`) | `azure` | the name entitlements use |
//! | `JIT_AZURE_MODE` (`mode`) | `pim` | `pim`: schedule requests that expire at Azure; `assignments`: plain role assignments the broker's reaper deletes (for tenants without PIM licences; never chosen silently) |
//! | `JIT_AZURE_CREDENTIAL` (`credential`) | `client_secret` | the broker's identity: `client_secret`, `workload_identity`, `managed_identity`, `azure_cli` |
//! | `JIT_AZURE_TENANT_ID` (`tenant_id`) | none | the broker's tenant (required for `client_secret`) |
//! | `JIT_AZURE_CLIENT_ID` (`client_id`) | none | the broker's application (client) id; for `managed_identity`, a user-assigned identity's client id |
//! | `JIT_AZURE_CLIENT_SECRET` (`client_secret`) | none | the application's secret (required for `client_secret`; never logged) |
//! | `JIT_AZURE_AUTHORITY_HOST` (`authority_host`) | `https://login.microsoftonline.com` | Entra ID endpoint (sovereign clouds: `https://login.microsoftonline.us`, `https://login.chinacloudapi.cn`); https only |
//! | `JIT_AZURE_ARM_ENDPOINT` (`arm_endpoint`) | `https://management.azure.com` | Azure Resource Manager; https only |
//! | `JIT_AZURE_ARM_AUDIENCE` (`arm_audience`) | the ARM endpoint | token audience; the scope asked for is `<audience>/.default` |
//! | `JIT_AZURE_CA_FILE` (`ca_file`) | none | PEM file of extra trusted roots for ARM and Entra (a private cloud's CA, a test fake's), beside the webpki roots |
//! | `JIT_AZURE_PRINCIPAL_ATTRIBUTE` (`principal_attribute`) | `azure_object_id` | principal attribute holding the requester's Entra object id |
//! | `JIT_AZURE_PRINCIPAL_TYPE_ATTRIBUTE` (`principal_type_attribute`) | `azure_principal_type` | principal attribute holding `User`, `Group` or `ServicePrincipal` |
//! | `JIT_AZURE_PRINCIPAL_TYPE` (`principal_type`) | `User` | the type when the attribute is absent |
//! | `JIT_AZURE_MAX_DURATION` (`max_duration`) | `8h` | longest grant |
//! | `JIT_AZURE_MIN_DURATION` (`min_duration`) | `5m` | shortest grant |
//! | `JIT_AZURE_OVER_POLICY_MAX` (`over_policy_max`) | `clamp` | a window longer than the role management policy allows: `clamp` to it or `refuse` |
//! | `JIT_AZURE_POLICY_CACHE_TTL` (`policy_cache_ttl`) | `10m` | how long a policy's maximum is cached per scope and role |
//! | `JIT_AZURE_PROVISIONING_WAIT` (`provisioning_wait`) | `30s` | how long `issue` and `revoke` wait for a schedule request to settle |
//! | `JIT_AZURE_POLL_INTERVAL` (`poll_interval`) | `1s` | pause between reads while waiting |
//! | `JIT_AZURE_CALL_TIMEOUT` (`call_timeout`) | `30s` | longest one ARM call may take, retries included |
//! | `JIT_AZURE_MAX_RETRIES` (`max_retries`) | `3` | retries of 408/429/5xx and connection failures (azure_core's policy, honouring `Retry-After`) |
//! | `JIT_AZURE_PROPAGATION` (`propagation`) | `5m` | advertised time until a removal takes effect everywhere (ARM caches role assignments) |
//! | `JIT_AZURE_TICKET_SYSTEM` (`ticket_system`) | `jit` | `ticketInfo.ticketSystem` sent with the ticket |
//!
//! Durations take `30m`, `1h30m` or ISO-8601 `PT30M`. Errors name the
//! variable and never echo the secret.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use std::path::PathBuf;

use jit_core::provider::registry::{ConfigKey, ProviderConfig};
use jit_core::types::{format_duration, parse_duration};
use jit_core::Secret;

use crate::error::{printable, setting, AzureError};

/// The longest grant this crate will ever ask for (a schedule request can
/// be longer, but a just-in-time grant is not).
pub const MAX_GRANT_DURATION: Duration = Duration::from_secs(24 * 3600);

/// How grants are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Mode {
    /// PIM `roleAssignmentScheduleRequests` (API 2020-10-01): the assignment
    /// expires at Azure.
    #[default]
    Pim,
    /// Plain `roleAssignments` (API 2022-04-01) that the broker's reaper
    /// deletes at the end: the grant is only as safe as the reaper.
    Assignments,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "pim" => Ok(Mode::Pim),
            "assignments" | "role_assignments" => Ok(Mode::Assignments),
            _ => Err(format!("`{}` is not `pim` or `assignments`", printable(s))),
        }
    }
}

/// Where the broker's own Entra token comes from (all through `azure_identity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CredentialKind {
    /// An application's client secret (tenant, client id and secret).
    #[default]
    ClientSecret,
    /// Workload identity federation (`AZURE_FEDERATED_TOKEN_FILE` and friends).
    WorkloadIdentity,
    /// The host's managed identity (system-assigned, or user-assigned by client id).
    ManagedIdentity,
    /// The signed-in Azure CLI (developer machines).
    AzureCli,
}

impl FromStr for CredentialKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "client_secret" => Ok(Self::ClientSecret),
            "workload_identity" => Ok(Self::WorkloadIdentity),
            "managed_identity" => Ok(Self::ManagedIdentity),
            "azure_cli" | "cli" => Ok(Self::AzureCli),
            _ => Err(format!(
                "`{}` is not `client_secret`, `workload_identity`, `managed_identity` or `azure_cli`",
                printable(s)
            )),
        }
    }
}

/// An Entra principal type that can hold a role assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PrincipalType {
    /// A user.
    #[default]
    User,
    /// A security group.
    Group,
    /// An application or managed identity.
    ServicePrincipal,
}

impl PrincipalType {
    /// The ARM spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalType::User => "User",
            PrincipalType::Group => "Group",
            PrincipalType::ServicePrincipal => "ServicePrincipal",
        }
    }
}

impl FromStr for PrincipalType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "user" => Ok(Self::User),
            "group" => Ok(Self::Group),
            "serviceprincipal" | "service_principal" => Ok(Self::ServicePrincipal),
            _ => Err(format!(
                "`{}` is not `User`, `Group` or `ServicePrincipal`",
                printable(s)
            )),
        }
    }
}

impl fmt::Display for PrincipalType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do with a window longer than the role management policy allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OverPolicyMax {
    /// Shorten the grant to the policy's maximum (the returned end says so).
    #[default]
    Clamp,
    /// Refuse the grant with a typed error before any write.
    Refuse,
}

/// jit-azure settings. `Debug` shows the secret as `** redacted **`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AzureConfig {
    /// The provider name entitlements use.
    pub name: String,
    /// PIM or plain assignments.
    pub mode: Mode,
    /// The broker's credential source.
    pub credential: CredentialKind,
    /// The broker's tenant.
    pub tenant_id: Option<String>,
    /// The broker's application (client) id.
    pub client_id: Option<String>,
    /// The application's secret.
    pub client_secret: Option<Secret>,
    /// Entra ID authority host (https).
    pub authority_host: String,
    /// ARM endpoint (https).
    pub arm_endpoint: String,
    /// Token audience for ARM (default: the endpoint).
    pub arm_audience: Option<String>,
    /// PEM file of extra trusted roots.
    pub ca_file: Option<PathBuf>,
    /// Principal attribute with the Entra object id.
    pub principal_attribute: String,
    /// Principal attribute with the principal type.
    pub principal_type_attribute: String,
    /// Principal type when the attribute is absent.
    pub principal_type: PrincipalType,
    /// Longest grant.
    pub max_duration: Duration,
    /// Shortest grant.
    pub min_duration: Duration,
    /// Over the policy's maximum: clamp or refuse.
    pub over_policy_max: OverPolicyMax,
    /// Policy cache lifetime.
    pub policy_cache_ttl: Duration,
    /// Longest wait for a schedule request to settle.
    pub provisioning_wait: Duration,
    /// Pause between reads while waiting.
    pub poll_interval: Duration,
    /// Longest time for one ARM call, retries included.
    pub call_timeout: Duration,
    /// Retries of throttled and failed calls.
    pub max_retries: u32,
    /// Advertised time until a removal takes effect.
    pub propagation: Duration,
    /// `ticketInfo.ticketSystem`.
    pub ticket_system: String,
}

impl Default for AzureConfig {
    fn default() -> Self {
        Self {
            name: "azure".into(),
            mode: Mode::Pim,
            credential: CredentialKind::ClientSecret,
            tenant_id: None,
            client_id: None,
            client_secret: None,
            authority_host: "https://login.microsoftonline.com".into(),
            arm_endpoint: "https://management.azure.com".into(),
            arm_audience: None,
            ca_file: None,
            principal_attribute: "azure_object_id".into(),
            principal_type_attribute: "azure_principal_type".into(),
            principal_type: PrincipalType::User,
            max_duration: Duration::from_secs(8 * 3600),
            min_duration: Duration::from_secs(5 * 60),
            over_policy_max: OverPolicyMax::Clamp,
            policy_cache_ttl: Duration::from_secs(600),
            provisioning_wait: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            call_timeout: Duration::from_secs(30),
            max_retries: 3,
            propagation: Duration::from_secs(300),
            ticket_system: "jit".into(),
        }
    }
}

/// The variable prefix.
pub const ENV_PREFIX: &str = "JIT_AZURE_";

impl AzureConfig {
    /// Reads `JIT_AZURE_*` variables (see the module docs) over the defaults.
    pub fn from_env() -> jit_core::Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads a string map (keys as in the module docs, without the prefix,
    /// lowercase: `tenant_id`, `mode`, ...), with `JIT_AZURE_*` variables
    /// winning over it. Unknown keys are errors, so a typo is not ignored.
    pub fn from_map(map: &BTreeMap<String, String>) -> jit_core::Result<Self> {
        Self::from_map_and(map, |k| std::env::var(k).ok())
    }

    /// Like [`AzureConfig::from_map`] with any variable lookup (tests pass a map).
    pub fn from_map_and(
        map: &BTreeMap<String, String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> jit_core::Result<Self> {
        let wrap = |e: AzureError| e.into_core("azure", "configure");
        for key in map.keys() {
            // `kind` selects the factory in a host's table; it is no setting.
            if key != "kind" && key != "provider_name" && !KEYS.iter().any(|k| k.name == key) {
                let names: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
                return Err(wrap(setting(
                    key,
                    format!("unknown key; use one of {}", names.join(", ")),
                )));
            }
        }
        Self::from_lookup(|var| {
            env(var).or_else(|| {
                let key = var.strip_prefix(ENV_PREFIX)?.to_ascii_lowercase();
                map.get(&key).cloned()
            })
        })
    }

    /// From a host's `[providers.NAME]` table, as the registry hands it
    /// over (variables already applied); the provider is named `name`.
    /// Errors name the table key, and never quote a secret.
    pub fn from_provider_config(name: &str, config: &ProviderConfig) -> jit_core::Result<Self> {
        let lookup = |var: &str| {
            KEYS.iter()
                .find(|k| k.env == Some(var))
                .and_then(|k| config.get(k.name))
                .map(String::from)
        };
        let key_error = |e: AzureError| match e {
            AzureError::Setting { field, message } => {
                let key = field
                    .strip_prefix(ENV_PREFIX)
                    .map(str::to_ascii_lowercase)
                    .unwrap_or(field);
                config.invalid(&key, message)
            }
            other => other.into_core(name, "configure"),
        };
        let c = Self::from_lookup_inner(lookup)
            .map_err(key_error)?
            .with_name(name);
        c.check().map_err(key_error)?;
        Ok(c)
    }

    /// Like [`AzureConfig::from_env`], from any lookup (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> jit_core::Result<Self> {
        Self::from_lookup_inner(get).map_err(|e| e.into_core("azure", "configure"))
    }

    fn from_lookup_inner(get: impl Fn(&str) -> Option<String>) -> Result<Self, AzureError> {
        let mut c = Self::default();
        let var = |k: &str| get(&format!("{ENV_PREFIX}{k}")).filter(|v| !v.trim().is_empty());
        let duration = |k: &str| -> Result<Option<Duration>, AzureError> {
            var(k)
                .map(|v| {
                    parse_duration(&v).map_err(|e| {
                        setting(
                            &format!("{ENV_PREFIX}{k}"),
                            format!("`{}`: {e}", printable(&v)),
                        )
                    })
                })
                .transpose()
        };
        fn parsed<T>(k: &str, r: Result<T, String>) -> Result<T, AzureError> {
            r.map_err(|m| setting(&format!("{ENV_PREFIX}{k}"), m))
        }
        if let Some(v) = var("PROVIDER_NAME") {
            c.name = v.trim().to_string();
        }
        if let Some(v) = var("MODE") {
            c.mode = parsed("MODE", v.parse())?;
        }
        if let Some(v) = var("CREDENTIAL") {
            c.credential = parsed("CREDENTIAL", v.parse())?;
        }
        c.tenant_id = var("TENANT_ID").map(|v| v.trim().to_string());
        c.client_id = var("CLIENT_ID").map(|v| v.trim().to_string());
        // Never trimmed or echoed: it is passed as given.
        c.client_secret = get(&format!("{ENV_PREFIX}CLIENT_SECRET"))
            .filter(|v| !v.is_empty())
            .map(Secret::new);
        if let Some(v) = var("AUTHORITY_HOST") {
            c.authority_host = v.trim().trim_end_matches('/').to_string();
        }
        if let Some(v) = var("ARM_ENDPOINT") {
            c.arm_endpoint = v.trim().trim_end_matches('/').to_string();
        }
        c.arm_audience = var("ARM_AUDIENCE").map(|v| v.trim().trim_end_matches('/').to_string());
        c.ca_file = var("CA_FILE").map(|v| PathBuf::from(v.trim()));
        if let Some(v) = var("PRINCIPAL_ATTRIBUTE") {
            c.principal_attribute = v.trim().to_string();
        }
        if let Some(v) = var("PRINCIPAL_TYPE_ATTRIBUTE") {
            c.principal_type_attribute = v.trim().to_string();
        }
        if let Some(v) = var("PRINCIPAL_TYPE") {
            c.principal_type = parsed("PRINCIPAL_TYPE", v.parse())?;
        }
        if let Some(d) = duration("MAX_DURATION")? {
            c.max_duration = d;
        }
        if let Some(d) = duration("MIN_DURATION")? {
            c.min_duration = d;
        }
        if let Some(v) = var("OVER_POLICY_MAX") {
            c.over_policy_max = match v.trim().to_ascii_lowercase().as_str() {
                "clamp" => OverPolicyMax::Clamp,
                "refuse" => OverPolicyMax::Refuse,
                _ => {
                    return Err(setting(
                        "JIT_AZURE_OVER_POLICY_MAX",
                        format!("`{}` is not `clamp` or `refuse`", printable(&v)),
                    ))
                }
            };
        }
        if let Some(d) = duration("POLICY_CACHE_TTL")? {
            c.policy_cache_ttl = d;
        }
        if let Some(d) = duration("PROVISIONING_WAIT")? {
            c.provisioning_wait = d;
        }
        if let Some(d) = duration("POLL_INTERVAL")? {
            c.poll_interval = d;
        }
        if let Some(d) = duration("CALL_TIMEOUT")? {
            c.call_timeout = d;
        }
        if let Some(v) = var("MAX_RETRIES") {
            c.max_retries = v.trim().parse().map_err(|_| {
                setting(
                    "JIT_AZURE_MAX_RETRIES",
                    format!("`{}` is not a number", printable(&v)),
                )
            })?;
        }
        if let Some(d) = duration("PROPAGATION")? {
            c.propagation = d;
        }
        if let Some(v) = var("TICKET_SYSTEM") {
            c.ticket_system = v.trim().to_string();
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

    /// Uses an application's client secret as the broker's identity.
    pub fn with_client_secret(
        mut self,
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        secret: Secret,
    ) -> Self {
        self.credential = CredentialKind::ClientSecret;
        self.tenant_id = Some(tenant_id.into());
        self.client_id = Some(client_id.into());
        self.client_secret = Some(secret);
        self
    }

    /// Sets the credential source.
    pub fn with_credential(mut self, kind: CredentialKind) -> Self {
        self.credential = kind;
        self
    }

    /// Sets the Entra ID authority host.
    pub fn with_authority_host(mut self, url: impl Into<String>) -> Self {
        self.authority_host = url.into().trim_end_matches('/').to_string();
        self
    }

    /// Sets the ARM endpoint.
    pub fn with_arm_endpoint(mut self, url: impl Into<String>) -> Self {
        self.arm_endpoint = url.into().trim_end_matches('/').to_string();
        self
    }

    /// Sets the longest grant.
    pub fn with_max_duration(mut self, d: Duration) -> Self {
        self.max_duration = d;
        self
    }

    /// Sets the shortest grant.
    pub fn with_min_duration(mut self, d: Duration) -> Self {
        self.min_duration = d;
        self
    }

    /// Sets what happens over the policy's maximum.
    pub fn with_over_policy_max(mut self, over: OverPolicyMax) -> Self {
        self.over_policy_max = over;
        self
    }

    /// Sets the policy cache lifetime.
    pub fn with_policy_cache_ttl(mut self, ttl: Duration) -> Self {
        self.policy_cache_ttl = ttl;
        self
    }

    /// Sets the wait for provisioning and the pause between reads.
    pub fn with_provisioning_wait(mut self, wait: Duration, poll: Duration) -> Self {
        self.provisioning_wait = wait;
        self.poll_interval = poll;
        self
    }

    /// Sets the retries of throttled and failed calls.
    pub fn with_max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Sets the longest time for one ARM call.
    pub fn with_call_timeout(mut self, d: Duration) -> Self {
        self.call_timeout = d;
        self
    }

    /// The token scope for ARM: `<audience>/.default`.
    pub fn arm_scope(&self) -> String {
        format!(
            "{}/.default",
            self.arm_audience.as_deref().unwrap_or(&self.arm_endpoint)
        )
    }

    /// Checks the settings against each other.
    pub(crate) fn check(&self) -> Result<(), AzureError> {
        if self.name.is_empty()
            || self
                .name
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(setting("name", "must be non-empty without spaces"));
        }
        for (field, url) in [
            ("authority_host", &self.authority_host),
            ("arm_endpoint", &self.arm_endpoint),
        ] {
            // azure_identity refuses plain http for authorities, and a bearer
            // token must never travel in the clear to ARM either.
            if !url.starts_with("https://") || url.len() <= "https://".len() {
                return Err(setting(
                    field,
                    format!("`{}` is not an https URL", printable(url)),
                ));
            }
        }
        if self.credential == CredentialKind::ClientSecret {
            for (field, v) in [
                ("tenant_id", &self.tenant_id),
                ("client_id", &self.client_id),
            ] {
                if v.is_none() {
                    return Err(setting(
                        field,
                        "is required for the `client_secret` credential",
                    ));
                }
            }
            if self.client_secret.is_none() {
                return Err(setting(
                    "client_secret",
                    "is required for the `client_secret` credential",
                ));
            }
        }
        if let Some(t) = &self.tenant_id {
            if t.is_empty()
                || t.len() > 64
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                return Err(setting(
                    "tenant_id",
                    format!(
                        "`{}` is not a tenant id or domain (letters, digits, `-`, `.`)",
                        printable(t)
                    ),
                ));
            }
        }
        if self.max_duration > MAX_GRANT_DURATION {
            return Err(setting(
                "max_duration",
                format!(
                    "`{}` exceeds the maximum of {}",
                    format_duration(self.max_duration),
                    format_duration(MAX_GRANT_DURATION)
                ),
            ));
        }
        if self.min_duration < Duration::from_secs(60) || self.min_duration > self.max_duration {
            return Err(setting(
                "min_duration",
                "must be at least 1m and at most `max_duration`",
            ));
        }
        if self.call_timeout < Duration::from_secs(1)
            || self.call_timeout > Duration::from_secs(300)
        {
            return Err(setting("call_timeout", "must be between 1s and 5m"));
        }
        if self.provisioning_wait > Duration::from_secs(600) {
            return Err(setting("provisioning_wait", "must be at most 10m"));
        }
        if self.poll_interval.is_zero() || self.poll_interval > Duration::from_secs(60) {
            return Err(setting("poll_interval", "must be between 1ms and 1m"));
        }
        if self.max_retries > 10 {
            return Err(setting("max_retries", "must be at most 10"));
        }
        for (field, v) in [
            ("principal_attribute", &self.principal_attribute),
            ("principal_type_attribute", &self.principal_type_attribute),
        ] {
            if v.is_empty() || v.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(setting(field, "must be non-empty without spaces"));
            }
        }
        if self.ticket_system.is_empty() || self.ticket_system.chars().count() > MAX_TICKET_LEN {
            return Err(setting(
                "ticket_system",
                format!("must be 1 to {MAX_TICKET_LEN} characters"),
            ));
        }
        Ok(())
    }
}

/// Keys of a `[providers.NAME]` table with `kind = "azure"` (and of
/// [`AzureConfig::from_map`]), each the same setting as its `JIT_AZURE_*`
/// variable, which wins. The provider name is the table's name.
pub const KEYS: &[ConfigKey] = &[
    ConfigKey::optional("mode", "`pim` (schedule requests that expire at Azure, default) or `assignments` (plain role assignments the reaper deletes)")
        .env("JIT_AZURE_MODE"),
    ConfigKey::optional("credential", "the broker's identity: `client_secret` (default), `workload_identity`, `managed_identity`, `azure_cli`")
        .env("JIT_AZURE_CREDENTIAL"),
    ConfigKey::optional("tenant_id", "the broker's tenant (required for `client_secret`)")
        .env("JIT_AZURE_TENANT_ID"),
    ConfigKey::optional("client_id", "the broker's application id; for `managed_identity`, a user-assigned identity's client id")
        .env("JIT_AZURE_CLIENT_ID"),
    ConfigKey::optional("client_secret", "the application's secret (required for `client_secret`)")
        .secret()
        .env("JIT_AZURE_CLIENT_SECRET"),
    ConfigKey::optional("authority_host", "Entra ID endpoint, https (default `https://login.microsoftonline.com`)")
        .env("JIT_AZURE_AUTHORITY_HOST"),
    ConfigKey::optional("arm_endpoint", "Azure Resource Manager, https (default `https://management.azure.com`)")
        .env("JIT_AZURE_ARM_ENDPOINT"),
    ConfigKey::optional("arm_audience", "token audience, scope `<audience>/.default` (default: the ARM endpoint)")
        .env("JIT_AZURE_ARM_AUDIENCE"),
    ConfigKey::optional("ca_file", "PEM file of extra trusted roots for ARM and Entra (a private cloud's CA, a test fake's)")
        .env("JIT_AZURE_CA_FILE"),
    ConfigKey::optional("principal_attribute", "principal attribute with the Entra object id (default `azure_object_id`)")
        .env("JIT_AZURE_PRINCIPAL_ATTRIBUTE"),
    ConfigKey::optional("principal_type_attribute", "principal attribute with `User`, `Group` or `ServicePrincipal` (default `azure_principal_type`)")
        .env("JIT_AZURE_PRINCIPAL_TYPE_ATTRIBUTE"),
    ConfigKey::optional("principal_type", "principal type when the attribute is absent (default `User`)")
        .env("JIT_AZURE_PRINCIPAL_TYPE"),
    ConfigKey::optional("max_duration", "the longest grant (default `8h`, at most `24h`)")
        .env("JIT_AZURE_MAX_DURATION"),
    ConfigKey::optional("min_duration", "the shortest grant (default `5m`)")
        .env("JIT_AZURE_MIN_DURATION"),
    ConfigKey::optional("over_policy_max", "over the role management policy's maximum: `clamp` (default) or `refuse`")
        .env("JIT_AZURE_OVER_POLICY_MAX"),
    ConfigKey::optional("policy_cache_ttl", "how long a policy maximum is cached (default `10m`)")
        .env("JIT_AZURE_POLICY_CACHE_TTL"),
    ConfigKey::optional("provisioning_wait", "how long issue and revoke wait for a request to settle (default `30s`)")
        .env("JIT_AZURE_PROVISIONING_WAIT"),
    ConfigKey::optional("poll_interval", "pause between reads while waiting (default `1s`)")
        .env("JIT_AZURE_POLL_INTERVAL"),
    ConfigKey::optional("call_timeout", "longest one ARM call may take, retries included (default `30s`)")
        .env("JIT_AZURE_CALL_TIMEOUT"),
    ConfigKey::optional("max_retries", "retries of 408/429/5xx and connection failures (default `3`)")
        .env("JIT_AZURE_MAX_RETRIES"),
    ConfigKey::optional("propagation", "advertised time until a removal is enforced everywhere (default `5m`; `0s`: immediate)")
        .env("JIT_AZURE_PROPAGATION"),
    ConfigKey::optional("ticket_system", "`ticketInfo.ticketSystem` (default `jit`)")
        .env("JIT_AZURE_TICKET_SYSTEM"),
];

/// Longest `ticketNumber` / `ticketSystem` sent.
pub const MAX_TICKET_LEN: usize = 100;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::collections::HashMap;

    use super::*;

    const SECRET: &str = "s3cr3t-value-never-shown";

    fn from(pairs: &[(&str, &str)]) -> jit_core::Result<AzureConfig> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AzureConfig::from_lookup(|k| m.get(k).cloned())
    }

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            (
                "JIT_AZURE_TENANT_ID",
                "72f988bf-86f1-41af-91ab-2d7cd011db47",
            ),
            (
                "JIT_AZURE_CLIENT_ID",
                "00000000-0000-0000-0000-000000000001",
            ),
            ("JIT_AZURE_CLIENT_SECRET", SECRET),
        ]
    }

    #[test]
    fn defaults_and_env() {
        let c = from(&base()).unwrap();
        assert_eq!(c.mode, Mode::Pim);
        assert_eq!(c.arm_scope(), "https://management.azure.com/.default");
        let mut pairs = base();
        pairs.extend([
            ("JIT_AZURE_PROVIDER_NAME", "azure-prod"),
            ("JIT_AZURE_MODE", "assignments"),
            (
                "JIT_AZURE_AUTHORITY_HOST",
                "https://login.microsoftonline.us/",
            ),
            (
                "JIT_AZURE_ARM_ENDPOINT",
                "https://management.usgovcloudapi.net",
            ),
            (
                "JIT_AZURE_ARM_AUDIENCE",
                "https://management.core.usgovcloudapi.net/",
            ),
            ("JIT_AZURE_PRINCIPAL_ATTRIBUTE", "oid"),
            ("JIT_AZURE_PRINCIPAL_TYPE", "Group"),
            ("JIT_AZURE_MAX_DURATION", "4h"),
            ("JIT_AZURE_MIN_DURATION", "PT10M"),
            ("JIT_AZURE_OVER_POLICY_MAX", "refuse"),
            ("JIT_AZURE_POLICY_CACHE_TTL", "1m"),
            ("JIT_AZURE_PROVISIONING_WAIT", "10s"),
            ("JIT_AZURE_CALL_TIMEOUT", "10s"),
            ("JIT_AZURE_MAX_RETRIES", "5"),
            ("JIT_AZURE_TICKET_SYSTEM", "servicenow"),
        ]);
        let c = from(&pairs).unwrap();
        assert_eq!(c.name, "azure-prod");
        assert_eq!(c.mode, Mode::Assignments);
        assert_eq!(c.authority_host, "https://login.microsoftonline.us");
        assert_eq!(
            c.arm_scope(),
            "https://management.core.usgovcloudapi.net/.default"
        );
        assert_eq!(c.principal_attribute, "oid");
        assert_eq!(c.principal_type, PrincipalType::Group);
        assert_eq!(c.max_duration, Duration::from_secs(4 * 3600));
        assert_eq!(c.min_duration, Duration::from_secs(600));
        assert_eq!(c.over_policy_max, OverPolicyMax::Refuse);
        assert_eq!(c.max_retries, 5);
        assert_eq!(c.ticket_system, "servicenow");
        assert_eq!(c.client_secret.as_ref().unwrap().expose(), SECRET);
    }

    #[test]
    fn map_keys_mirror_the_variables_and_variables_win() {
        let map: BTreeMap<String, String> = [
            ("kind", "azure"),
            ("tenant_id", "contoso.onmicrosoft.com"),
            ("client_id", "app"),
            ("client_secret", SECRET),
            ("max_duration", "2h"),
            ("mode", "pim"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let c = AzureConfig::from_map_and(&map, |k| {
            (k == "JIT_AZURE_MAX_DURATION").then(|| "3h".to_string())
        })
        .unwrap();
        assert_eq!(c.max_duration, Duration::from_secs(3 * 3600));
        assert_eq!(c.tenant_id.as_deref(), Some("contoso.onmicrosoft.com"));
        let mut bad = map.clone();
        bad.insert("tenant".into(), "x".into());
        let e = AzureConfig::from_map_and(&bad, |_| None).unwrap_err();
        assert!(e.to_string().contains("`tenant`"), "{e}");
    }

    #[test]
    fn bad_settings_are_config_errors_naming_the_setting() {
        for (k, v) in [
            ("JIT_AZURE_MODE", "hybrid"),
            ("JIT_AZURE_CREDENTIAL", "password"),
            ("JIT_AZURE_AUTHORITY_HOST", "http://login.example"),
            ("JIT_AZURE_ARM_ENDPOINT", "ftp://x"),
            ("JIT_AZURE_PRINCIPAL_TYPE", "Device"),
            ("JIT_AZURE_MAX_DURATION", "25h"),
            ("JIT_AZURE_MAX_DURATION", "soon"),
            ("JIT_AZURE_MIN_DURATION", "10s"),
            ("JIT_AZURE_OVER_POLICY_MAX", "stretch"),
            ("JIT_AZURE_CALL_TIMEOUT", "0s"),
            ("JIT_AZURE_MAX_RETRIES", "many"),
            ("JIT_AZURE_TENANT_ID", "bad tenant"),
        ] {
            let mut pairs = base();
            pairs.push((k, v));
            match from(&pairs) {
                Err(jit_core::Error::Config(e)) => {
                    assert!(e.to_string().contains("settings"), "{k}={v}: {e}")
                }
                other => panic!("{k}={v}: expected a config error, got {other:?}"),
            }
        }
        // The client secret credential needs all three parts.
        let e = from(&base()[..2]).unwrap_err();
        assert!(e.to_string().contains("client_secret"), "{e}");
        // Other credentials need none of them.
        from(&[("JIT_AZURE_CREDENTIAL", "managed_identity")]).unwrap();
    }

    #[test]
    fn the_secret_never_shows() {
        let c = from(&base()).unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(debug.contains("redacted"), "{debug}");
        let mut pairs = base();
        pairs.push(("JIT_AZURE_MAX_RETRIES", "x"));
        let e = from(&pairs).unwrap_err();
        assert!(!format!("{e} {e:?}").contains(SECRET));
    }
}
