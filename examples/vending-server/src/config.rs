//! The server's configuration: one TOML file, overridable by environment
//! variables.
//!
//! ```toml
//! listen = "127.0.0.1:8080"               # JIT_LISTEN
//! store_url = "sqlite://jit.db"           # JIT_STORE_URL
//! catalogue_file = "catalogue.toml"       # JIT_CATALOGUE_FILE; or `catalogue = """..."""` inline
//!
//! [policy]                                # who may have what; the catalogue when absent
//! kind = "catalogue"                      # JIT_POLICY_KIND: `catalogue` (the default) or `cedar` (feature `cedar`)
//! # kind = "cedar"                        # jit_core::policy::cedar: instead of a catalogue,
//! # entitlements = "entitlements.toml"    # JIT_CEDAR_ENTITLEMENTS: what can be requested
//! # policies = "policies.cedar"           # JIT_CEDAR_POLICIES: who may have it, and when without a human
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
//! kind = "local"                          # the factory; the other keys are its own
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
//! # account_id, call_timeout: see jit_aws::config::KEYS
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
//!
//! [risk]                                  # risk review (jit_core::risk); none when absent
//! assessor = "history"                    # JIT_RISK_ASSESSOR: `history` (built in) or `http`
//! url = "https://risk.internal/score"     # JIT_RISK_URL: the `http` assessor's endpoint
//! token_file = "risk-token"               # JIT_RISK_TOKEN_FILE: its bearer token (optional)
//! timeout_ms = 2000                       # how long a submit waits; past it: human review
//!
//! [tickets]                               # ticket verification (jit_core::ticket); none when absent
//! url = "https://example.atlassian.net"   # JIT_TICKETS_URL: a Jira-style tracker
//! statuses = ["Open", "In Progress"]      # a ticket must be in one of these
//! projects = ["INC", "CHG"]               # optional: and in one of these projects
//! require_assignee = false                # optional: and assigned to the requester
//! token_file = "jira-token"               # JIT_TICKETS_TOKEN_FILE: bearer token (optional)
//! timeout_ms = 2000                       # past it, or on any tracker error: not verified
//! cache_secs = 60                         # answers cached per ticket (at most 1,024)
//!
//! [on_call]                               # who is on call (jit_core::oncall), for `auto_approve.on_call`; none when absent
//! rota_file = "rota.toml"                 # JIT_ONCALL_ROTA_FILE: a rota (jit_core::oncall::rota), checked at start
//! rota_check_secs = 10                    # read again when it changes (a bad edit keeps the last good one)
//! # url = "https://oncall.internal/oncalls" # JIT_ONCALL_URL: or an on-call service (jit_core::oncall::http)
//! # token_file = "oncall-token"          # JIT_ONCALL_TOKEN_FILE: its bearer token (optional)
//! # cache_secs = 30                       # its answers cached per schedule (at most 256)
//! timeout_ms = 2000                       # past it, or on any error: not on call
//! [retention]                             # archive finished requests; none without `dir`
//! dir = "archive"                         # JIT_RETENTION_DIR: archive files (0700), ship them off this host
//! keep = "90d"                            # finished requests older than this go
//! every = "1h"                            # optional schedule; else only `jit admin archive`
//! batch = 1000                            # requests per archive file and prune
//! ```
//!
//! Unknown keys are errors, like in the catalogue: in a provider table, when
//! the server starts (the table's factory knows its keys, see
//! [`ProviderTable`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jit_core::provider::registry::ProviderConfig;
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
    /// Which policy decides: the catalogue (the default) or Cedar.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// OIDC settings.
    pub auth: AuthConfig,
    /// Providers by name.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderTable>,
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
    /// Risk review of every submitted request.
    #[serde(default)]
    pub risk: RiskConfig,
    /// Ticket verification.
    #[serde(default)]
    pub tickets: TicketsConfig,
    /// Who is on call.
    #[serde(default)]
    pub on_call: OnCallConfig,
    /// Archiving finished requests out of the store.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Where relative paths in provider tables are resolved: the config
    /// file's directory ([`Config::load`] sets it).
    #[serde(skip)]
    pub base_dir: Option<PathBuf>,
    /// Whether provider settings ignore their environment variables
    /// (`JIT_AWS_*`, `JIT_LOCAL_KEY_FILE`): demo mode, which must not pick
    /// up a production key file from the environment.
    #[serde(skip)]
    pub ignore_provider_env: bool,
}

/// Which [`jit_core::Policy`] decides requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// The catalogue of `catalogue_file` or `catalogue`
    /// ([`jit_core::CataloguePolicy`]).
    #[default]
    Catalogue,
    /// An entitlement file and a Cedar policy set
    /// (`jit_core::policy::cedar::CedarPolicy`): needs a server built with
    /// the `cedar` feature.
    Cedar,
}

/// `[policy]`: which policy decides. Absent, or `kind = "catalogue"`: the
/// catalogue (`catalogue_file` or `catalogue`). `kind = "cedar"`: the
/// entitlement file and the Cedar policy set named here (both required,
/// relative to the config file; no catalogue may be set then), validated
/// against the published schema when the server starts, so a policy that
/// does not parse or type-check stops the start, naming its `@id` and line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// `catalogue` (the default) or `cedar`.
    pub kind: PolicyKind,
    /// The Cedar entitlement file (TOML).
    pub entitlements: Option<PathBuf>,
    /// The Cedar policy set.
    pub policies: Option<PathBuf>,
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

/// `[risk]`: which assessor reviews each submitted request (see
/// `jit_core::risk`); the catalogue's `auto_approve.max_risk` uses its
/// score. Without `assessor`, no review runs and `max_risk` rules send
/// every request to a human (they fail closed).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RiskConfig {
    /// `history` (the built-in `HistoryAssessor`) or `http`.
    pub assessor: Option<String>,
    /// The `http` assessor's URL.
    pub url: Option<String>,
    /// A file holding the `http` assessor's bearer token.
    pub token_file: Option<PathBuf>,
    /// How long a submit waits for the assessor, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for RiskConfig {
    fn default() -> Self {
        Self {
            assessor: None,
            url: None,
            token_file: None,
            timeout_ms: 2000,
        }
    }
}

/// `[tickets]`: the tracker that verifies tickets for entitlements with
/// `require_verified_ticket` (see `jit_core::ticket`). Without `url`, no
/// verification runs and those entitlements deny every request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TicketsConfig {
    /// The Jira-style tracker's base URL.
    pub url: Option<String>,
    /// Statuses a verified ticket may be in.
    pub statuses: Vec<String>,
    /// Projects a verified ticket must be in (any when absent).
    pub projects: Option<Vec<String>>,
    /// Whether the ticket must be assigned to the requester.
    pub require_assignee: bool,
    /// A file holding the tracker's bearer token.
    pub token_file: Option<PathBuf>,
    /// How long a submit waits for the tracker, in milliseconds.
    pub timeout_ms: u64,
    /// How long answers are cached, in seconds (0: not cached).
    pub cache_secs: u64,
}

impl Default for TicketsConfig {
    fn default() -> Self {
        Self {
            url: None,
            statuses: Vec::new(),
            projects: None,
            require_assignee: false,
            token_file: None,
            timeout_ms: 2000,
            cache_secs: 60,
        }
    }
}

/// `[on_call]`: who is on call, for entitlements with
/// `auto_approve.on_call` (see `jit_core::oncall`): a rota file or an
/// on-call service, not both. Without either, nobody is on call and those
/// rules send every request to a human (they fail closed).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OnCallConfig {
    /// A rota file, read and validated at start, and read again when it
    /// changes (a bad edit keeps the last good version and is logged).
    pub rota_file: Option<PathBuf>,
    /// How often the rota file is looked at for changes, in seconds
    /// (default 10; 0: at every submit that asks about a schedule).
    pub rota_check_secs: Option<u64>,
    /// An on-call service's endpoint.
    pub url: Option<String>,
    /// A file holding the service's bearer token.
    pub token_file: Option<PathBuf>,
    /// How long a submit waits for the source, in milliseconds.
    pub timeout_ms: u64,
    /// How long the service's answers are cached, in seconds (0: not cached).
    pub cache_secs: Option<u64>,
}

impl Default for OnCallConfig {
    fn default() -> Self {
        Self {
            rota_file: None,
            rota_check_secs: None,
            url: None,
            token_file: None,
            timeout_ms: 2000,
            cache_secs: None,
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
/// select (`provider = "NAME"`), `kind` picks the factory of the
/// [`jit_core::provider::registry`] that builds it, and every other key is
/// that factory's, passed on as a string map (scalars as their text, arrays
/// comma-separated, inline tables as `KEY=VALUE` pairs joined by commas).
///
/// The kinds this server registers ([`crate::provider_registry`]):
///
/// - `local` ([`jit_core::provider::registry::LocalFactory`]): `issuer`,
///   `key_file` (`JIT_LOCAL_KEY_FILE`), `previous_key_files`, `max_duration`;
/// - `aws` ([`jit_aws::factory()`]): the keys of [`jit_aws::config::KEYS`],
///   each the same as its `JIT_AWS_*` variable, which wins when set; the
///   server's own AWS identity comes from the standard chain (environment,
///   profile, web identity, ECS, IMDS);
/// - `azure` ([`jit_azure::factory()`]) and `gcp` ([`jit_gcp::factory()`]):
///   the keys on their provider pages (`jit-azure/README.md`,
///   `jit-gcp/README.md`), each the same as its `JIT_AZURE_*` / `JIT_GCP_*`
///   variable.
///
/// An unknown kind or key is refused when the server starts, naming the
/// table. Relative paths are resolved against the config file's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderTable {
    /// Which factory builds the provider (`local`, `aws`, `azure`, `gcp`).
    pub kind: String,
    /// Every other key of the table.
    pub settings: ProviderConfig,
}

impl ProviderTable {
    /// A table of `kind` with no other keys.
    pub fn new(kind: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            settings: ProviderConfig::new(),
        }
    }

    /// Adds a key.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.insert(key, value);
        self
    }
}

/// A TOML value as the factories' string map takes it.
fn setting_text(key: &str, v: &toml::Value) -> Result<String, String> {
    use toml::Value as V;
    let scalar = |v: &V| -> Option<String> {
        match v {
            V::String(s) => Some(s.clone()),
            V::Integer(n) => Some(n.to_string()),
            V::Float(f) => Some(f.to_string()),
            V::Boolean(b) => Some(b.to_string()),
            V::Datetime(d) => Some(d.to_string()),
            V::Array(_) | V::Table(_) => None,
        }
    };
    let nested = || format!("`{key}`: nested arrays and tables are not supported");
    Ok(match v {
        V::Array(items) => items
            .iter()
            .map(|i| scalar(i).ok_or_else(nested))
            .collect::<Result<Vec<_>, _>>()?
            .join(","),
        V::Table(t) => t
            .iter()
            .map(|(k, i)| scalar(i).map(|i| format!("{k}={i}")).ok_or_else(nested))
            .collect::<Result<Vec<_>, _>>()?
            .join(","),
        other => scalar(other).ok_or_else(nested)?,
    })
}

impl<'de> Deserialize<'de> for ProviderTable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut table = toml::Table::deserialize(d)?;
        let kind = match table.remove("kind") {
            Some(toml::Value::String(k)) => k,
            Some(_) => return Err(D::Error::custom("`kind` must be a string")),
            None => return Err(D::Error::missing_field("kind")),
        };
        let mut settings = ProviderConfig::new();
        for (k, v) in &table {
            settings.insert(k.clone(), setting_text(k, v).map_err(D::Error::custom)?);
        }
        Ok(Self { kind, settings })
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// How many pending requests one principal may hold; a submit that
    /// would wait for approval past it is 429 until some are decided,
    /// cancelled or time out (one the policy auto-approves still goes
    /// through). 0: no limit.
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

/// `[retention]`: finished requests and their audit records leave the
/// store for archive files in `dir` (JSON Lines, each verifiable on its own
/// with `jit audit verify --file`), so the database holds the retention
/// window, not the whole history. Without `dir`, nothing is archived and
/// `POST /v1/admin/archive` answers `409`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Where archive files go (created `0700` if missing). Ship them to
    /// write-once storage: they are the only copy of what was pruned.
    pub dir: Option<PathBuf>,
    /// Finished requests whose last change is older than this go (`90d`).
    pub keep: String,
    /// Archive on this schedule (`1h`); only on demand when absent.
    pub every: Option<String>,
    /// Requests per archive file and prune transaction.
    pub batch: usize,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            dir: None,
            keep: "90d".into(),
            every: None,
            batch: 1000,
        }
    }
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
        if let Some(p) = c.policy.entitlements.as_mut() {
            rel(p);
        }
        if let Some(p) = c.policy.policies.as_mut() {
            rel(p);
        }
        if let Some(p) = c.metrics.bearer_token_file.as_mut() {
            rel(p);
        }
        // Provider tables are the factories' business: they resolve their
        // own paths against this directory.
        c.base_dir = Some(base.to_path_buf());
        if let Some(p) = c.audit.key_file.as_mut() {
            rel(p);
        }
        c.audit.previous_key_files.iter_mut().for_each(rel);
        if let Some(p) = c.audit.checkpoint_file.as_mut() {
            rel(p);
        }
        if let Some(p) = c.risk.token_file.as_mut() {
            rel(p);
        }
        if let Some(p) = c.tickets.token_file.as_mut() {
            rel(p);
        }
        if let Some(p) = c.on_call.rota_file.as_mut() {
            rel(p);
        }
        if let Some(p) = c.on_call.token_file.as_mut() {
            rel(p);
        }
        if let Some(p) = c.retention.dir.as_mut() {
            rel(p);
        }
        Ok(c)
    }

    /// Parses TOML text.
    pub fn from_toml_str(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().to_string())
    }

    /// Applies `JIT_*` environment overrides through `get` (injectable for
    /// tests). An override that does not parse is an error naming the
    /// variable, never ignored.
    ///
    /// `JIT_POLICY_KIND` (`catalogue` or `cedar`) replaces `[policy] kind`
    /// and drops the other kind's files from the file config, so one
    /// config file can be switched by the environment alone; the files of
    /// the chosen kind then come from the file or from `JIT_CATALOGUE_FILE`
    /// / `JIT_CEDAR_*`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        if let Some(v) = get("JIT_POLICY_KIND") {
            match v.trim() {
                "catalogue" => {
                    self.policy.kind = PolicyKind::Catalogue;
                    self.policy.entitlements = None;
                    self.policy.policies = None;
                }
                "cedar" => {
                    self.policy.kind = PolicyKind::Cedar;
                    self.catalogue = None;
                    self.catalogue_file = None;
                }
                other => {
                    return Err(format!(
                        "JIT_POLICY_KIND: unknown policy kind `{other}` (`catalogue` or `cedar`)"
                    ))
                }
            }
        }
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
        if let Some(v) = get("JIT_CEDAR_ENTITLEMENTS") {
            self.policy.entitlements = Some(v.into());
        }
        if let Some(v) = get("JIT_CEDAR_POLICIES") {
            self.policy.policies = Some(v.into());
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
        if let Some(v) = get("JIT_RISK_ASSESSOR") {
            self.risk.assessor = Some(v);
        }
        if let Some(v) = get("JIT_RISK_URL") {
            self.risk.url = Some(v);
        }
        if let Some(v) = get("JIT_RISK_TOKEN_FILE") {
            self.risk.token_file = Some(v.into());
        }
        if let Some(v) = get("JIT_TICKETS_URL") {
            self.tickets.url = Some(v);
        }
        if let Some(v) = get("JIT_TICKETS_TOKEN_FILE") {
            self.tickets.token_file = Some(v.into());
        }
        // A rota file and a service exclude each other: the variable replaces both.
        if let Some(v) = get("JIT_ONCALL_ROTA_FILE") {
            self.on_call.rota_file = Some(v.into());
            self.on_call.url = None;
        }
        if let Some(v) = get("JIT_ONCALL_URL") {
            self.on_call.url = Some(v);
            self.on_call.rota_file = None;
        }
        if let Some(v) = get("JIT_ONCALL_TOKEN_FILE") {
            self.on_call.token_file = Some(v.into());
        }
        if let Some(v) = get("JIT_RETENTION_DIR") {
            self.retention.dir = Some(v.into());
        }
        Ok(())
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
        })
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:9");
        assert_eq!(c.auth.jwks_url, None);
        assert_eq!(c.auth.jwks_file.as_deref(), Some(Path::new("/k.json")));

        let err = Config::from_toml_str(&format!("{MIN}\n[limits]\nmax_body = 1\n")).unwrap_err();
        assert!(err.contains("unknown field `max_body`"), "{err}");
    }

    #[test]
    fn risk_section_and_env_overrides() {
        let c = Config::from_toml_str(MIN).unwrap();
        assert_eq!(c.risk.assessor, None);
        assert_eq!(c.risk.timeout_ms, 2000);
        let mut c = Config::from_toml_str(&format!(
            "{MIN}\n[risk]\nassessor = \"http\"\nurl = \"https://risk/score\"\ntimeout_ms = 500\n"
        ))
        .unwrap();
        assert_eq!(c.risk.assessor.as_deref(), Some("http"));
        assert_eq!(c.risk.url.as_deref(), Some("https://risk/score"));
        assert_eq!(c.risk.timeout_ms, 500);
        c.apply_env(|k| match k {
            "JIT_RISK_ASSESSOR" => Some("history".into()),
            "JIT_RISK_URL" => Some("https://other/score".into()),
            "JIT_RISK_TOKEN_FILE" => Some("/run/secrets/risk".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.risk.assessor.as_deref(), Some("history"));
        assert_eq!(c.risk.url.as_deref(), Some("https://other/score"));
        assert_eq!(
            c.risk.token_file.as_deref(),
            Some(Path::new("/run/secrets/risk"))
        );
        let err = Config::from_toml_str(&format!("{MIN}\n[risk]\nmodel = \"x\"\n")).unwrap_err();
        assert!(err.contains("unknown field `model`"), "{err}");
    }

    #[test]
    fn on_call_section_and_env_overrides() {
        let c = Config::from_toml_str(MIN).unwrap();
        assert_eq!((c.on_call.rota_file, c.on_call.url), (None, None));
        assert_eq!(c.on_call.timeout_ms, 2000);
        let mut c = Config::from_toml_str(&format!(
            "{MIN}\n[on_call]\nrota_file = \"rota.toml\"\ntimeout_ms = 500\n"
        ))
        .unwrap();
        assert_eq!(c.on_call.rota_file.as_deref(), Some(Path::new("rota.toml")));
        assert_eq!(c.on_call.timeout_ms, 500);
        c.apply_env(|k| match k {
            "JIT_ONCALL_URL" => Some("https://pager/oncalls".into()),
            "JIT_ONCALL_TOKEN_FILE" => Some("/run/secrets/pager".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.on_call.url.as_deref(), Some("https://pager/oncalls"));
        assert_eq!(c.on_call.rota_file, None);
        c.apply_env(|k| (k == "JIT_ONCALL_ROTA_FILE").then(|| "/etc/jit/rota.toml".into()))
            .unwrap();
        assert_eq!(c.on_call.url, None);
        assert_eq!(
            c.on_call.rota_file.as_deref(),
            Some(Path::new("/etc/jit/rota.toml"))
        );
        let err =
            Config::from_toml_str(&format!("{MIN}\n[on_call]\nschedule = \"x\"\n")).unwrap_err();
        assert!(err.contains("unknown field `schedule`"), "{err}");
    }

    #[test]
    fn the_readme_server_config_for_risk_tickets_and_on_call_parses() {
        let readme = include_str!("../../../README.md");
        let block = readme
            .split("```toml\n")
            .skip(1)
            .filter_map(|b| b.split_once("\n```").map(|(block, _)| block))
            .find(|b| b.contains("[on_call]"))
            .unwrap();
        let c = Config::from_toml_str(&format!("{MIN}\n{block}")).unwrap();
        assert_eq!(c.risk.assessor.as_deref(), Some("history"));
        assert_eq!(c.tickets.statuses, ["Open", "In Progress"]);
        assert_eq!(c.on_call.rota_file.as_deref(), Some(Path::new("rota.toml")));
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
        })
        .unwrap();
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
        })
        .unwrap();
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
    fn provider_tables_become_string_maps_for_their_factory() {
        let c = Config::from_toml_str(&format!(
            "{MIN}\n[providers.prod]\nkind = \"aws\"\nregion = \"eu-west-1\"\nrole_chaining = \"false\"\nmax_duration = \"4h\"\nsession_tags = false\nrevocation_policy_limit = 4096\n[providers.prod.management_roles]\n111111111111 = \"arn:aws:iam::111111111111:role/JitManager\"\n222222222222 = \"arn:aws:iam::222222222222:role/JitManager\"\n[providers.tokens]\nkind = \"local\"\nprevious_key_files = [\"a.pem\", \"b.pem\"]\n"
        ))
        .unwrap();
        let prod = &c.providers["prod"];
        assert_eq!(prod.kind, "aws");
        let s = &prod.settings;
        assert_eq!(s.get("region"), Some("eu-west-1"));
        assert_eq!(s.get("session_tags"), Some("false"));
        assert_eq!(s.get("revocation_policy_limit"), Some("4096"));
        assert_eq!(
            s.get("management_roles"),
            Some("111111111111=arn:aws:iam::111111111111:role/JitManager,222222222222=arn:aws:iam::222222222222:role/JitManager")
        );
        assert!(!s.contains("kind"));
        // jit-aws reads exactly these keys.
        let aws = jit_aws::AwsConfig::from_provider_config("prod", s).unwrap();
        assert_eq!(aws.region.as_deref(), Some("eu-west-1"));
        assert_eq!(aws.role_chaining, Some(false));
        assert!(!aws.session_tags);
        assert_eq!(aws.revocation_policy_limit, 4096);
        assert_eq!(aws.management_roles.len(), 2);
        assert_eq!(
            c.providers["tokens"].settings.list("previous_key_files"),
            ["a.pem", "b.pem"]
        );
        assert_eq!(c.providers["local"], ProviderTable::new("local"));
    }

    #[test]
    fn a_provider_table_needs_a_string_kind_and_flat_values() {
        for (table, text) in [
            ("[providers.p]\nregion = \"x\"\n", "missing field `kind`"),
            ("[providers.p]\nkind = 1\n", "`kind` must be a string"),
            (
                "[providers.p]\nkind = \"aws\"\nx = [[1]]\n",
                "`x`: nested arrays and tables are not supported",
            ),
        ] {
            let err = Config::from_toml_str(&format!("{MIN}\n{table}")).unwrap_err();
            assert!(err.contains(text), "{table}: {err}");
        }
    }

    #[test]
    fn policy_section_paths_env_overrides_and_mistakes() {
        let c = Config::from_toml_str(MIN).unwrap();
        assert_eq!(c.policy, PolicyConfig::default());
        assert_eq!(c.policy.kind, PolicyKind::Catalogue);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        std::fs::write(
            &path,
            "[policy]\nkind = \"cedar\"\nentitlements = \"cedar/entitlements.toml\"\npolicies = \"/etc/jit/policies.cedar\"\n[auth]\nissuer = \"i\"\naudience = \"a\"\n",
        )
        .unwrap();
        let mut c = Config::load(&path).unwrap();
        assert_eq!(c.policy.kind, PolicyKind::Cedar);
        assert_eq!(
            c.policy.entitlements.as_deref(),
            Some(dir.path().join("cedar/entitlements.toml").as_path())
        );
        assert_eq!(
            c.policy.policies.as_deref(),
            Some(Path::new("/etc/jit/policies.cedar"))
        );
        c.apply_env(|k| match k {
            "JIT_CEDAR_ENTITLEMENTS" => Some("/run/e.toml".into()),
            "JIT_CEDAR_POLICIES" => Some("/run/p.cedar".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            (
                c.policy.entitlements.as_deref(),
                c.policy.policies.as_deref()
            ),
            (
                Some(Path::new("/run/e.toml")),
                Some(Path::new("/run/p.cedar"))
            )
        );

        // The environment alone switches a catalogue config to Cedar (the
        // catalogue is dropped, so `load_policy` does not refuse the mix),
        // and back; a kind it does not know stops the start.
        let mut c = Config::from_toml_str(MIN).unwrap();
        assert_eq!(c.policy.kind, PolicyKind::Catalogue);
        c.apply_env(|k| match k {
            "JIT_POLICY_KIND" => Some("cedar".into()),
            "JIT_CEDAR_ENTITLEMENTS" => Some("/run/e.toml".into()),
            "JIT_CEDAR_POLICIES" => Some("/run/p.cedar".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.policy.kind, PolicyKind::Cedar);
        assert_eq!(
            (c.catalogue_file.as_deref(), c.catalogue.as_deref()),
            (None, None)
        );
        assert_eq!(
            c.policy.policies.as_deref(),
            Some(Path::new("/run/p.cedar"))
        );
        c.apply_env(|k| match k {
            "JIT_POLICY_KIND" => Some("catalogue".into()),
            "JIT_CATALOGUE_FILE" => Some("/run/cat.toml".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.policy.kind, PolicyKind::Catalogue);
        assert_eq!(
            (
                c.policy.entitlements.as_deref(),
                c.policy.policies.as_deref()
            ),
            (None, None)
        );
        assert_eq!(
            c.catalogue_file.as_deref(),
            Some(Path::new("/run/cat.toml"))
        );
        let err = c
            .apply_env(|k| (k == "JIT_POLICY_KIND").then(|| "rego".into()))
            .unwrap_err();
        assert!(
            err.contains("JIT_POLICY_KIND") && err.contains("`rego`"),
            "{err}"
        );
        assert_eq!(c.policy.kind, PolicyKind::Catalogue);

        for (table, want) in [
            ("kind = \"rego\"", "unknown variant `rego`"),
            (
                "kind = \"cedar\"\npolicy = \"p.cedar\"",
                "unknown field `policy`",
            ),
        ] {
            let err = Config::from_toml_str(&format!("{MIN}\n[policy]\n{table}\n")).unwrap_err();
            assert!(err.contains(want), "{table}: {err}");
        }
    }

    #[test]
    fn the_readme_server_config_for_cedar_parses() {
        let readme = include_str!("../../../README.md");
        let block = readme
            .split("```toml\n")
            .skip(1)
            .filter_map(|b| b.split_once("\n```").map(|(block, _)| block))
            .find(|b| b.contains("kind = \"cedar\""))
            .unwrap();
        let c = Config::from_toml_str(&format!(
            "{}\n{block}",
            MIN.replace("catalogue_file = \"cat.toml\"", "")
        ))
        .unwrap();
        assert_eq!(c.policy.kind, PolicyKind::Cedar);
        assert_eq!(
            c.policy.policies.as_deref(),
            Some(Path::new("policies.cedar"))
        );
    }

    #[test]
    fn load_records_the_directory_provider_paths_resolve_against() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        std::fs::write(&path, MIN).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.base_dir.as_deref(), Some(dir.path()));
        assert!(Config::from_toml_str(MIN).unwrap().base_dir.is_none());
    }
}
