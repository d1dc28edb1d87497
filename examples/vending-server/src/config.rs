//! The server's configuration: one TOML file, overridable by environment
//! variables.
//!
//! ```toml
//! listen = "127.0.0.1:8080"               # JIT_LISTEN
//! store_url = "sqlite://jit.db"           # JIT_STORE_URL
//! catalogue_file = "catalogue.toml"       # JIT_CATALOGUE_FILE; or `catalogue = """..."""` inline
//!
//! [auth]
//! issuer = "https://id.example.com/"      # JIT_AUTH_ISSUER
//! audience = "jit"                        # JIT_AUTH_AUDIENCE
//! jwks_url = "https://id.example.com/jwks.json"   # JIT_AUTH_JWKS_URL, or jwks_file (JIT_AUTH_JWKS_FILE)
//! algorithms = ["RS256", "ES256", "EdDSA"] # asymmetric only
//! leeway_secs = 30
//! refresh_min_interval_secs = 30
//! [auth.claims]
//! id = "sub"
//! groups = "groups"
//! aliases = ["email", "preferred_username"] # only refuse (self-approval, second votes); never grant
//! name = "name"
//! email_as_id = false                     # `id = "email"` needs this, and `email_verified = true` tokens
//! [auth.claims.attributes]                # principal attributes from claims
//! azure_object_id = "oid"
//!
//! [providers.local]                       # the table name is the provider name
//! kind = "local"
//! issuer = "jit"
//! key_file = "local-key.pem"              # JIT_LOCAL_KEY_FILE; created (0600) if missing
//! previous_key_files = ["local-key-2026-10.pem"]  # rotation: still verified, never signing
//! max_duration = "8h"
//!
//! [providers.aws]                         # STS AssumeRole through jit-aws
//! kind = "aws"
//! region = "eu-west-1"                    # JIT_AWS_REGION; every JIT_AWS_* variable wins over its key
//! role_chaining = "detect"                # JIT_AWS_ROLE_CHAINING: true, false or detect
//! max_duration = "4h"                     # JIT_AWS_MAX_DURATION
//! # endpoint_url, issue_margin, role_cache_ttl, over_role_max, revocation_policy,
//! # revocation_policy_limit, propagation, source_identity, session_tags,
//! # account_id, call_timeout: see ProviderConfig
//! # roles in other accounts: the role the server assumes to manage them
//! # management_roles = { "111111111111" = "arn:aws:iam::111111111111:role/JitManager" }
//!
//! [limits]
//! max_body_bytes = 65536
//! max_pending_per_requester = 20          # pending requests one principal may hold (429 past it)
//! submits_per_minute = 30                 # per verified subject, new requests and extensions
//! submit_burst = 10                       # how many of those may come at once
//!
//! [metrics]                               # `GET /metrics` (Prometheus text)
//! listen = "127.0.0.1:9464"               # JIT_METRICS_LISTEN: serve it here only, not on `listen`
//! bearer_token_file = "metrics-token"     # JIT_METRICS_TOKEN_FILE: require `Authorization: Bearer <its content>`
//! cache_secs = 5                          # the request counts are read at most this often
//!
//! [introspection]
//! # Subjects (exact `sub` of their tokens) of the resource servers that may
//! # read a local token's claims at `POST /v1/introspect`. Anyone else who is
//! # signed in learns only `{"active": true|false}`.
//! clients = ["svc-payments"]
//!
//! [reaper]
//! interval_secs = 5
//!
//! [audit]                                 # see jit_core::audit
//! key_file = "audit.key"                  # JIT_AUDIT_KEY_FILE; 64 hex digits, created (0600) if missing
//! previous_key_files = ["audit-2026-10.key"]  # rotation: their seals still verify, never sealing
//! checkpoint_file = "audit-checkpoints.jsonl" # JIT_AUDIT_CHECKPOINT_FILE; ship it off this host
//! checkpoint_every = 100                  # records between checkpoints (and one per reaper tick)
//! sealed_from = 1                         # records before this seq may be unsealed (a chain older than its key)
//! ```
//!
//! Unknown keys are errors, like in the catalogue.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::auth::ClaimNames;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Store URL: `sqlite://path.db` (the default), `postgres://...` for
    /// several replicas on one database, or `memory:` (nothing kept).
    #[serde(default = "default_store")]
    pub store_url: String,
    /// Catalogue file path (relative to the config file).
    #[serde(default)]
    pub catalogue_file: Option<PathBuf>,
    /// Catalogue TOML inline.
    #[serde(default)]
    pub catalogue: Option<String>,
    /// OIDC settings.
    pub auth: AuthConfig,
    /// Providers by name.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
    /// Reaper.
    #[serde(default)]
    pub reaper: ReaperConfig,
    /// Where and for whom `/metrics` is served.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Who may read token claims through `/v1/introspect`.
    #[serde(default)]
    pub introspection: IntrospectionConfig,
    /// The audit key and checkpoints.
    #[serde(default)]
    pub audit: AuditConfig,
}

/// `[audit]`: the key that seals the audit chain and where signed
/// checkpoints of its head go. Without a key the chain is a plain hash
/// chain, which someone who can write the database can rewrite unseen.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The current audit key (64 hexadecimal digits); created (0600) if missing.
    pub key_file: Option<PathBuf>,
    /// Earlier keys: records and checkpoints they sealed still verify.
    pub previous_key_files: Vec<PathBuf>,
    /// Signed checkpoints are appended here, and read back by `GET /v1/audit/verify`.
    pub checkpoint_file: Option<PathBuf>,
    /// Records between checkpoints (besides one per reaper tick).
    pub checkpoint_every: u64,
    /// Records before this seq may be unsealed: for a chain begun before its key.
    pub sealed_from: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            key_file: None,
            previous_key_files: Vec::new(),
            checkpoint_file: None,
            checkpoint_every: 100,
            sealed_from: 1,
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_store() -> String {
    "sqlite://jit.db".into()
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Expected issuer.
    pub issuer: String,
    /// Expected audience.
    pub audience: String,
    /// JWKS URL.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// JWKS file.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Accepted algorithms.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Allowed clock skew.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Shortest time between JWKS refreshes.
    #[serde(default = "default_refresh")]
    pub refresh_min_interval_secs: u64,
    /// Claim names.
    #[serde(default)]
    pub claims: ClaimNames,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into(), "EdDSA".into()]
}
fn default_leeway() -> u64 {
    30
}
fn default_refresh() -> u64 {
    30
}

/// `[providers.NAME]`: the table name is the provider name entitlements
/// select (`provider = "NAME"`).
///
/// `kind = "local"` takes `issuer`, `key_file`, `previous_key_files` and
/// `max_duration`.
/// `kind = "aws"` takes `max_duration` and the AWS settings below, each the
/// same as a `JIT_AWS_*` variable of [`jit_aws::config`] (which wins when
/// set); the server's own AWS identity comes from the standard chain
/// (environment, profile, web identity, ECS, IMDS).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// `local` (signed tokens, no cloud) or `aws` (STS `AssumeRole`).
    pub kind: String,
    /// Token issuer name (`local`).
    #[serde(default)]
    pub issuer: Option<String>,
    /// Ed25519 PKCS#8 PEM key file; generated if missing (`local`).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Key rotation (`local`): earlier key files whose tokens are still
    /// accepted (introspection, the published JWKS) but which sign nothing
    /// new. Put the old `key_file` here and a new path in `key_file`; drop it
    /// once the longest grant issued under it has ended.
    #[serde(default)]
    pub previous_key_files: Vec<PathBuf>,
    /// Longest grant, e.g. `8h`.
    #[serde(default)]
    pub max_duration: Option<String>,
    /// Region for STS and IAM (`aws`; `JIT_AWS_REGION`).
    #[serde(default)]
    pub region: Option<String>,
    /// One endpoint for STS and IAM: a VPC endpoint, a test server (`aws`; `JIT_AWS_ENDPOINT_URL`).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// `true`, `false` or `detect`: whether the server's identity is an
    /// assumed role, which caps sessions at 1 h (`aws`; `JIT_AWS_ROLE_CHAINING`).
    #[serde(default)]
    pub role_chaining: Option<String>,
    /// Room between fixing a window and calling STS, e.g. `1m` (`aws`; `JIT_AWS_ISSUE_MARGIN`).
    #[serde(default)]
    pub issue_margin: Option<String>,
    /// How long a role's `MaxSessionDuration` is cached (`aws`; `JIT_AWS_ROLE_CACHE_TTL`).
    #[serde(default)]
    pub role_cache_ttl: Option<String>,
    /// `clamp` or `refuse` windows longer than the role allows (`aws`; `JIT_AWS_OVER_ROLE_MAX`).
    #[serde(default)]
    pub over_role_max: Option<String>,
    /// Inline role policy holding revocations (`aws`; `JIT_AWS_REVOCATION_POLICY`).
    #[serde(default)]
    pub revocation_policy: Option<String>,
    /// Largest revocation policy in characters (`aws`; `JIT_AWS_REVOCATION_POLICY_LIMIT`).
    #[serde(default)]
    pub revocation_policy_limit: Option<u64>,
    /// Advertised time for a revocation to take effect (`aws`; `JIT_AWS_PROPAGATION`).
    #[serde(default)]
    pub propagation: Option<String>,
    /// Set `SourceIdentity` to the requester (`aws`; `JIT_AWS_SOURCE_IDENTITY`).
    #[serde(default)]
    pub source_identity: Option<bool>,
    /// Pass session tags (`aws`; `JIT_AWS_SESSION_TAGS`).
    #[serde(default)]
    pub session_tags: Option<bool>,
    /// The server's own account, skipping detection (`aws`; `JIT_AWS_ACCOUNT_ID`).
    #[serde(default)]
    pub account_id: Option<String>,
    /// Per other account, the role the server assumes to manage role
    /// policies there, e.g. `{ "111111111111" = "arn:aws:iam::111111111111:role/JitManager" }`
    /// (`aws`; `JIT_AWS_MANAGEMENT_ROLES` as `ACCOUNT=ARN,...`).
    #[serde(default)]
    pub management_roles: BTreeMap<String, String>,
    /// Longest time one STS or IAM call may take, e.g. `30s` (`aws`; `JIT_AWS_CALL_TIMEOUT`).
    #[serde(default)]
    pub call_timeout: Option<String>,
}

impl ProviderConfig {
    /// The settings given for `kind = "aws"`, as the `JIT_AWS_*` variables they mirror.
    pub fn aws_settings(&self) -> BTreeMap<&'static str, String> {
        let mut m = BTreeMap::new();
        let mut put = |k: &'static str, v: Option<String>| {
            if let Some(v) = v {
                m.insert(k, v);
            }
        };
        put("JIT_AWS_MAX_DURATION", self.max_duration.clone());
        put("JIT_AWS_REGION", self.region.clone());
        put("JIT_AWS_ENDPOINT_URL", self.endpoint_url.clone());
        put("JIT_AWS_ROLE_CHAINING", self.role_chaining.clone());
        put("JIT_AWS_ISSUE_MARGIN", self.issue_margin.clone());
        put("JIT_AWS_ROLE_CACHE_TTL", self.role_cache_ttl.clone());
        put("JIT_AWS_OVER_ROLE_MAX", self.over_role_max.clone());
        put("JIT_AWS_REVOCATION_POLICY", self.revocation_policy.clone());
        put(
            "JIT_AWS_REVOCATION_POLICY_LIMIT",
            self.revocation_policy_limit.map(|n| n.to_string()),
        );
        put("JIT_AWS_PROPAGATION", self.propagation.clone());
        put(
            "JIT_AWS_SOURCE_IDENTITY",
            self.source_identity.map(|b| b.to_string()),
        );
        put(
            "JIT_AWS_SESSION_TAGS",
            self.session_tags.map(|b| b.to_string()),
        );
        put("JIT_AWS_ACCOUNT_ID", self.account_id.clone());
        put(
            "JIT_AWS_MANAGEMENT_ROLES",
            (!self.management_roles.is_empty()).then(|| {
                self.management_roles
                    .iter()
                    .map(|(account, arn)| format!("{account}={arn}"))
                    .collect::<Vec<_>>()
                    .join(",")
            }),
        );
        put("JIT_AWS_CALL_TIMEOUT", self.call_timeout.clone());
        m
    }

    /// Refuses keys that do not belong to the provider's kind, so a typo'd
    /// kind or a misplaced key is an error, not a silently ignored setting.
    pub fn check(&self, name: &str) -> Result<(), String> {
        let local_only = [
            ("issuer", self.issuer.is_some()),
            ("key_file", self.key_file.is_some()),
            ("previous_key_files", !self.previous_key_files.is_empty()),
        ];
        let aws_keys = self.aws_settings();
        let misplaced: Vec<String> = match self.kind.as_str() {
            "local" => aws_keys
                .keys()
                .filter(|k| **k != "JIT_AWS_MAX_DURATION")
                .map(|k| k.trim_start_matches("JIT_AWS_").to_ascii_lowercase())
                .collect(),
            "aws" => local_only
                .iter()
                .filter(|(_, set)| *set)
                .map(|(k, _)| k.to_string())
                .collect(),
            other => {
                return Err(format!(
                    "provider `{name}`: kind `{other}` is not supported (use `local` or `aws`)"
                ))
            }
        };
        match misplaced.as_slice() {
            [] => Ok(()),
            keys => Err(format!(
                "provider `{name}`: `{}` do not apply to kind `{}`",
                keys.join("`, `"),
                self.kind
            )),
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// How many pending requests one principal may hold; a submit past it
    /// is 429 until some are decided, cancelled or time out. 0: no limit.
    pub max_pending_per_requester: usize,
    /// Sustained rate of new requests (and extensions) per verified
    /// subject, per minute; faster is 429 with `Retry-After`. 0: no limit.
    pub submits_per_minute: u32,
    /// How many submits one subject may make at once before the rate applies.
    pub submit_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            max_pending_per_requester: 20,
            submits_per_minute: 30,
            submit_burst: 10,
        }
    }
}

/// `[metrics]`: by default `/metrics` is served on the API listener to
/// anyone; a separate `listen` address (open, for a scraper on an internal
/// network) or a `bearer_token_file` (or both) keep it away from the API's
/// callers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` on this address instead of the API's.
    pub listen: Option<String>,
    /// A file whose content (trimmed) scrapers must send as a bearer token.
    pub bearer_token_file: Option<PathBuf>,
    /// Seconds the request counts are cached between store reads.
    pub cache_secs: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: None,
            bearer_token_file: None,
            cache_secs: 5,
        }
    }
}

/// `[introspection]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntrospectionConfig {
    /// Exact subject ids of the resource servers that may read claims.
    pub clients: Vec<String>,
}

/// `[reaper]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReaperConfig {
    /// Seconds between ticks.
    pub interval_secs: u64,
}

impl Default for ReaperConfig {
    fn default() -> Self {
        Self { interval_secs: 5 }
    }
}

impl Config {
    /// Parses a config file, resolving relative paths against its directory.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        let mut c = Self::from_toml_str(&text).map_err(|e| format!("`{}`: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rel = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(p) = c.catalogue_file.as_mut() {
            rel(p);
        }
        if let Some(p) = c.auth.jwks_file.as_mut() {
            rel(p);
        }
        if let Some(p) = c.metrics.bearer_token_file.as_mut() {
            rel(p);
        }
        for pc in c.providers.values_mut() {
            if let Some(p) = pc.key_file.as_mut() {
                rel(p);
            }
            pc.previous_key_files.iter_mut().for_each(rel);
        }
        if let Some(p) = c.audit.key_file.as_mut() {
            rel(p);
        }
        c.audit.previous_key_files.iter_mut().for_each(rel);
        if let Some(p) = c.audit.checkpoint_file.as_mut() {
            rel(p);
        }
        Ok(c)
    }

    /// Parses TOML text.
    pub fn from_toml_str(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().to_string())
    }

    /// Applies `JIT_*` environment overrides through `get` (injectable for tests).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        if let Some(v) = get("JIT_LISTEN") {
            self.listen = v;
        }
        if let Some(v) = get("JIT_STORE_URL") {
            self.store_url = v;
        }
        if let Some(v) = get("JIT_CATALOGUE_FILE") {
            self.catalogue_file = Some(v.into());
            self.catalogue = None;
        }
        if let Some(v) = get("JIT_AUTH_ISSUER") {
            self.auth.issuer = v;
        }
        if let Some(v) = get("JIT_AUTH_AUDIENCE") {
            self.auth.audience = v;
        }
        if let Some(v) = get("JIT_AUTH_JWKS_URL") {
            self.auth.jwks_url = Some(v);
            self.auth.jwks_file = None;
        }
        if let Some(v) = get("JIT_AUTH_JWKS_FILE") {
            self.auth.jwks_file = Some(v.into());
            self.auth.jwks_url = None;
        }
        if let Some(v) = get("JIT_METRICS_LISTEN") {
            self.metrics.listen = Some(v);
        }
        if let Some(v) = get("JIT_METRICS_TOKEN_FILE") {
            self.metrics.bearer_token_file = Some(v.into());
        }
        if let Some(v) = get("JIT_AUDIT_KEY_FILE") {
            self.audit.key_file = Some(v.into());
        }
        if let Some(v) = get("JIT_AUDIT_CHECKPOINT_FILE") {
            self.audit.checkpoint_file = Some(v.into());
        }
        if let Some(v) = get("JIT_LOCAL_KEY_FILE") {
            for p in self.providers.values_mut().filter(|p| p.kind == "local") {
                p.key_file = Some(v.clone().into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const MIN: &str = r#"
        catalogue_file = "cat.toml"
        [auth]
        issuer = "https://id"
        audience = "jit"
        jwks_url = "https://id/jwks"
        [providers.local]
        kind = "local"
    "#;

    #[test]
    fn defaults_env_overrides_and_unknown_keys() {
        let mut c = Config::from_toml_str(MIN).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert_eq!(c.limits.max_body_bytes, 65536);
        assert_eq!(c.auth.claims.id, "sub");
        c.apply_env(|k| match k {
            "JIT_LISTEN" => Some("0.0.0.0:9".into()),
            "JIT_AUTH_JWKS_FILE" => Some("/k.json".into()),
            _ => None,
        });
        assert_eq!(c.listen, "0.0.0.0:9");
        assert_eq!(c.auth.jwks_url, None);
        assert_eq!(c.auth.jwks_file.as_deref(), Some(Path::new("/k.json")));

        let err = Config::from_toml_str(&format!("{MIN}\n[limits]\nmax_body = 1\n")).unwrap_err();
        assert!(err.contains("unknown field `max_body`"), "{err}");
    }

    #[test]
    fn limits_metrics_and_introspection_sections() {
        let c = Config::from_toml_str(MIN).unwrap();
        assert_eq!(c.limits.max_pending_per_requester, 20);
        assert_eq!(
            (c.limits.submits_per_minute, c.limits.submit_burst),
            (30, 10)
        );
        assert_eq!(c.metrics.listen, None);
        assert_eq!(c.metrics.cache_secs, 5);
        assert!(c.introspection.clients.is_empty());

        let mut c = Config::from_toml_str(&format!(
            "{MIN}\n[limits]\nmax_pending_per_requester = 3\nsubmits_per_minute = 0\n[metrics]\nlisten = \"127.0.0.1:9464\"\nbearer_token_file = \"t\"\n[introspection]\nclients = [\"svc\"]\n"
        ))
        .unwrap();
        assert_eq!(c.limits.max_pending_per_requester, 3);
        assert_eq!(c.limits.submits_per_minute, 0);
        assert_eq!(c.metrics.listen.as_deref(), Some("127.0.0.1:9464"));
        assert_eq!(c.introspection.clients, ["svc"]);
        c.apply_env(|k| match k {
            "JIT_METRICS_LISTEN" => Some("0.0.0.0:9100".into()),
            "JIT_METRICS_TOKEN_FILE" => Some("/run/secrets/metrics".into()),
            _ => None,
        });
        assert_eq!(c.metrics.listen.as_deref(), Some("0.0.0.0:9100"));
        assert_eq!(
            c.metrics.bearer_token_file.as_deref(),
            Some(Path::new("/run/secrets/metrics"))
        );
        let err = Config::from_toml_str(&format!("{MIN}\n[metrics]\ntoken = \"x\"\n")).unwrap_err();
        assert!(err.contains("unknown field `token`"), "{err}");
    }

    #[test]
    fn audit_keys_and_checkpoints_from_file_and_env() {
        let mut c = Config::from_toml_str(&format!(
            "{MIN}\n[audit]\nkey_file = \"a.key\"\nprevious_key_files = [\"old.key\"]\ncheckpoint_every = 7\n"
        ))
        .unwrap();
        assert_eq!(c.audit.key_file.as_deref(), Some(Path::new("a.key")));
        assert_eq!(c.audit.previous_key_files, vec![PathBuf::from("old.key")]);
        assert_eq!((c.audit.checkpoint_every, c.audit.sealed_from), (7, 1));
        c.apply_env(|k| match k {
            "JIT_AUDIT_KEY_FILE" => Some("/k/audit.key".into()),
            "JIT_AUDIT_CHECKPOINT_FILE" => Some("/cp.jsonl".into()),
            _ => None,
        });
        assert_eq!(c.audit.key_file.as_deref(), Some(Path::new("/k/audit.key")));
        assert_eq!(
            c.audit.checkpoint_file.as_deref(),
            Some(Path::new("/cp.jsonl"))
        );
        let err = Config::from_toml_str(&format!("{MIN}\n[audit]\nkey = \"x\"\n")).unwrap_err();
        assert!(err.contains("unknown field `key`"), "{err}");
        assert!(Config::from_toml_str(MIN).unwrap().audit.key_file.is_none());
    }

    #[test]
    fn aws_providers_mirror_jit_aws_variables_and_misplaced_keys_are_refused() {
        let c = Config::from_toml_str(&format!(
            "{MIN}\n[providers.prod]\nkind = \"aws\"\nregion = \"eu-west-1\"\nrole_chaining = \"false\"\nmax_duration = \"4h\"\nsession_tags = false\nrevocation_policy_limit = 4096\n"
        ))
        .unwrap();
        let prod = &c.providers["prod"];
        prod.check("prod").unwrap();
        let s = prod.aws_settings();
        assert_eq!(s["JIT_AWS_REGION"], "eu-west-1");
        assert_eq!(s["JIT_AWS_ROLE_CHAINING"], "false");
        assert_eq!(s["JIT_AWS_MAX_DURATION"], "4h");
        assert_eq!(s["JIT_AWS_SESSION_TAGS"], "false");
        assert_eq!(s["JIT_AWS_REVOCATION_POLICY_LIMIT"], "4096");
        assert_eq!(s.len(), 5);
        // jit-aws parses exactly these names.
        let aws = jit_aws::AwsConfig::from_lookup(|k| s.get(k).cloned()).unwrap();
        assert_eq!(aws.region.as_deref(), Some("eu-west-1"));
        assert_eq!(aws.role_chaining, Some(false));
        assert!(!aws.session_tags);
        assert_eq!(aws.revocation_policy_limit, 4096);
        c.providers["local"].check("local").unwrap();

        // Roles in other accounts: the management roles reach jit-aws.
        let c = Config::from_toml_str(&format!(
            "{MIN}\n[providers.multi]\nkind = \"aws\"\naccount_id = \"123456789012\"\ncall_timeout = \"10s\"\n[providers.multi.management_roles]\n111111111111 = \"arn:aws:iam::111111111111:role/JitManager\"\n222222222222 = \"arn:aws:iam::222222222222:role/JitManager\"\n"
        ))
        .unwrap();
        let s = c.providers["multi"].aws_settings();
        let aws = jit_aws::AwsConfig::from_lookup(|k| s.get(k).cloned()).unwrap();
        assert_eq!(aws.account_id.as_deref(), Some("123456789012"));
        assert_eq!(aws.management_roles.len(), 2);
        assert_eq!(
            aws.management_roles["222222222222"],
            "arn:aws:iam::222222222222:role/JitManager"
        );
        assert_eq!(aws.call_timeout, std::time::Duration::from_secs(10));

        let local_with_region = ProviderConfig {
            kind: "local".into(),
            region: Some("eu-west-1".into()),
            ..Default::default()
        };
        let err = local_with_region.check("l").unwrap_err();
        assert!(
            err.contains("`region` do not apply to kind `local`"),
            "{err}"
        );
        let aws_with_key = ProviderConfig {
            kind: "aws".into(),
            key_file: Some("k.pem".into()),
            ..Default::default()
        };
        let err = aws_with_key.check("a").unwrap_err();
        assert!(
            err.contains("`key_file` do not apply to kind `aws`"),
            "{err}"
        );
        let gcp = ProviderConfig {
            kind: "gcp".into(),
            ..Default::default()
        };
        assert!(gcp
            .check("g")
            .unwrap_err()
            .contains("kind `gcp` is not supported"));
    }
}
