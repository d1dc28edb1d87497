//! Cold-start configuration, read once per container from the environment.
//!
//! | variable | meaning | default |
//! | --- | --- | --- |
//! | `JIT_CATALOGUE` | the catalogue itself, inline TOML | one of the two is required |
//! | `JIT_CATALOGUE_FILE` | path of the catalogue TOML (e.g. `/var/task/catalogue.toml` in the deployment package) | |
//! | `JIT_POLICY_KIND` | `catalogue`, or `cedar` to decide with an entitlement file and a Cedar policy set (`jit_core::policy::cedar`; a function built with the `cedar` feature) | `catalogue` |
//! | `JIT_CEDAR_ENTITLEMENTS` | with `cedar`: path of the entitlement file (e.g. `/var/task/entitlements.toml`) | required with `cedar` |
//! | `JIT_CEDAR_POLICIES` | with `cedar`: path of the policy set (e.g. `/var/task/policies.cedar`), validated against the published schema at cold start | required with `cedar` |
//! | `JIT_STORE_URL` | `memory:`, `sqlite:///tmp/jit.db`, `postgres://...` | `memory:` |
//! | `JIT_CLAIM_ID` | claim (or authorizer context key) holding the caller's stable id | `sub` |
//! | `JIT_CLAIM_GROUPS` | claim holding the caller's groups | `groups` |
//! | `JIT_CLAIM_ATTRIBUTES` | comma-separated claims copied into principal attributes (for `auto_approve.attributes`) | none |
//! | `JIT_IAM_PINNED_SESSION_ROLES` | comma-separated role ARNs whose trust policy pins the session name to the caller (`sts:RoleSessionName` = `${aws:username}`, or IAM Identity Center); their callers are told apart by session name. Every other assumed role is one identity: see [`crate::event`] | none |
//! | `JIT_OVER_MAX_DURATION` | `clamp`: a duration above the entitlement's maximum is shortened (the reasons say so); `refuse`: it is a 400 | `clamp` |
//! | `JIT_AWS_*` | the AWS provider: see [`jit_aws::config`] | |
//! | `JIT_RISK_ASSESSOR` | risk review ([`jit_core::risk`]): `history` (scores against the store's history: point `JIT_STORE_URL` at the shared database) or `http` | none |
//! | `JIT_RISK_URL` | the `http` assessor's endpoint | |
//! | `JIT_RISK_TOKEN_FILE` | a file holding the `http` assessor's bearer token | |
//! | `JIT_RISK_TIMEOUT_MS` | how long an invocation waits for the assessor; past it, human review | `2000` |
//! | `JIT_TICKETS_URL` | a Jira-style tracker verifying tickets for entitlements with `require_verified_ticket` ([`jit_core::ticket`]) | none |
//! | `JIT_TICKETS_STATUSES` | comma-separated statuses a verified ticket may be in | required with the URL |
//! | `JIT_TICKETS_PROJECTS` | comma-separated projects it must be in | any |
//! | `JIT_TICKETS_REQUIRE_ASSIGNEE` | `true`: it must be assigned to the caller | `false` |
//! | `JIT_TICKETS_TOKEN_FILE` | a file holding the tracker's bearer token | |
//! | `JIT_TICKETS_TIMEOUT_MS` | how long an invocation waits for the tracker; past it, not verified | `2000` |
//! | `JIT_ONCALL_ROTA_FILE` | who is on call, for entitlements with `auto_approve.on_call` ([`jit_core::oncall`]): a rota file (e.g. `/var/task/rota.toml` in the deployment package), read and checked at cold start | none |
//! | `JIT_ONCALL_URL` | or an on-call service's endpoint (not both) | none |
//! | `JIT_ONCALL_TOKEN_FILE` | a file holding the service's bearer token | |
//! | `JIT_ONCALL_TIMEOUT_MS` | how long an invocation waits for the source; past it, not on call | `2000` |
//! | `JIT_ONCALL_CACHE_SECS` | how long the service's answers are cached per schedule (0: not cached) | `30` |
//!
//! Exactly one of `JIT_CATALOGUE` and `JIT_CATALOGUE_FILE` must be set,
//! unless `JIT_POLICY_KIND=cedar`: then both Cedar files are, and neither
//! catalogue variable.
//!
//! # Why `memory:` by default
//!
//! A Lambda container has no durable disk, and a store private to a
//! container serves the auto-approve path completely: decide, record, mint,
//! audit, answer. It cannot serve the approval path: a pending request is
//! only useful in a store that the approvers' side (the vending server)
//! reads too, so point `JIT_STORE_URL` at the vending server's PostgreSQL
//! database when any entitlement needs approval. The function logs a warning
//! at cold start whenever its store is not shared.

use std::path::PathBuf;

use jit_aws::AwsConfig;
use jit_core::{ConfigError, Error};

/// The store used when `JIT_STORE_URL` is unset.
pub const DEFAULT_STORE_URL: &str = "memory:";

/// Where the policy comes from: a catalogue (the default), or Cedar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogueSource {
    /// The TOML text itself (`JIT_CATALOGUE`).
    Inline(String),
    /// A file to read at cold start (`JIT_CATALOGUE_FILE`).
    File(PathBuf),
    /// Not a catalogue: an entitlement file and a Cedar policy set, read
    /// and validated at cold start (`JIT_POLICY_KIND=cedar`; a function
    /// built without the `cedar` feature refuses it there).
    Cedar {
        /// `JIT_CEDAR_ENTITLEMENTS`.
        entitlements: PathBuf,
        /// `JIT_CEDAR_POLICIES`.
        policies: PathBuf,
    },
}

/// What to do with a duration longer than the entitlement allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverMax {
    /// Shorten it to the maximum, as the broker does; the decision's reasons say so.
    #[default]
    Clamp,
    /// Answer 400 before anything is recorded.
    Refuse,
}

/// Which claims name the caller. They are read from the authorizer's
/// output only, never from the request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimNames {
    /// The stable id (`sub` by default).
    pub id: String,
    /// The groups (`groups` by default; `cognito:groups` for Cognito user pools).
    pub groups: String,
    /// Claims copied into [`jit_core::Principal::attributes`].
    pub attributes: Vec<String>,
    /// Roles (`account id`, `role name`) whose trust policy pins the session
    /// name, so an IAM caller in an assumed-role session of one of them is
    /// identified by the session ARN; for every other role the caller is the
    /// role, since whoever assumes it chooses the session name.
    pub pinned_session_roles: Vec<(String, String)>,
}

impl Default for ClaimNames {
    fn default() -> Self {
        Self {
            id: "sub".into(),
            groups: "groups".into(),
            attributes: Vec::new(),
            pinned_session_roles: Vec::new(),
        }
    }
}

/// Everything the function reads at cold start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The catalogue.
    pub catalogue: CatalogueSource,
    /// The store URL ([`jit_core::store::connect`]).
    pub store_url: String,
    /// Claim names.
    pub claims: ClaimNames,
    /// Durations above the entitlement's maximum.
    pub over_max: OverMax,
    /// The AWS provider's settings (`JIT_AWS_*`).
    pub aws: AwsConfig,
    /// Risk review (`JIT_RISK_*`).
    pub risk: RiskConfig,
    /// Ticket verification (`JIT_TICKETS_*`).
    pub tickets: TicketsConfig,
    /// Who is on call (`JIT_ONCALL_*`).
    pub on_call: OnCallConfig,
}

/// `JIT_ONCALL_*`: who is on call (see [`jit_core::oncall::OnCallSettings`],
/// which the vending server's `[on_call]` table builds with too). Without a
/// rota file or a URL nobody is on call, and `auto_approve.on_call` rules
/// send every request to a human.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OnCallConfig {
    /// A rota file, read and checked at cold start.
    pub rota_file: Option<PathBuf>,
    /// An on-call service's endpoint.
    pub url: Option<String>,
    /// A file holding the service's bearer token.
    pub token_file: Option<PathBuf>,
    /// How long an invocation waits for the source.
    pub timeout: Option<std::time::Duration>,
    /// How long the service's answers are cached.
    pub cache_ttl: Option<std::time::Duration>,
}

impl OnCallConfig {
    /// The settings jit-core builds the source from (reads the token file).
    pub fn settings(&self) -> Result<jit_core::oncall::OnCallSettings, Error> {
        Ok(jit_core::oncall::OnCallSettings {
            rota_file: self.rota_file.clone(),
            // A file in the deployment package never changes: the default
            // check costs a stat every 10 s of a warm container.
            rota_check_every: None,
            url: self.url.clone(),
            token: read_token("JIT_ONCALL_TOKEN_FILE", self.token_file.as_deref())?,
            timeout: Some(self.timeout.unwrap_or(std::time::Duration::from_secs(2))),
            cache_ttl: self.cache_ttl,
        })
    }
}

/// `JIT_TICKETS_*`: the tracker that verifies tickets (see
/// [`jit_core::ticket::TrackerSettings`], which the vending server's
/// `[tickets]` table builds with too).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TicketsConfig {
    /// The tracker's base URL; none: no verification.
    pub url: Option<String>,
    /// Statuses a verified ticket may be in.
    pub statuses: Vec<String>,
    /// Projects it must be in.
    pub projects: Option<Vec<String>>,
    /// Whether it must be assigned to the caller.
    pub require_assignee: bool,
    /// A file holding the tracker's bearer token.
    pub token_file: Option<PathBuf>,
    /// How long an invocation waits for the tracker.
    pub timeout: Option<std::time::Duration>,
}

impl TicketsConfig {
    /// The settings jit-core builds the verifier from (reads the token file).
    pub fn settings(&self) -> Result<jit_core::ticket::TrackerSettings, Error> {
        Ok(jit_core::ticket::TrackerSettings {
            url: self.url.clone(),
            statuses: self.statuses.clone(),
            projects: self.projects.clone(),
            require_assignee: self.require_assignee,
            token: read_token("JIT_TICKETS_TOKEN_FILE", self.token_file.as_deref())?,
            timeout: self.timeout,
            cache_ttl: None,
        })
    }
}

/// A bearer token from a file: trimmed, not empty.
fn read_token(
    var: &str,
    path: Option<&std::path::Path>,
) -> Result<Option<jit_core::Secret>, Error> {
    let Some(p) = path else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(p)
        .map_err(|e| setting(var, format!("cannot read `{}`: {e}", p.display())))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(setting(var, "the file is empty"));
    }
    Ok(Some(jit_core::Secret::new(text)))
}

/// Milliseconds from `var`, when set: a positive whole number.
fn millis(var: &str, value: Option<String>) -> Result<Option<std::time::Duration>, Error> {
    match value {
        None => Ok(None),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Ok(Some(std::time::Duration::from_millis(ms))),
            _ => Err(setting(
                var,
                format!("`{v}` is not a positive number of milliseconds"),
            )),
        },
    }
}

fn list(value: Option<String>) -> Option<Vec<String>> {
    value.map(|v| {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    })
}

/// `JIT_RISK_*`: which assessor reviews each request (see
/// [`jit_core::risk::RiskSettings`], which the vending server's `[risk]`
/// table builds with too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiskConfig {
    /// `history` or `http`; none when unset.
    pub assessor: Option<String>,
    /// The `http` assessor's URL.
    pub url: Option<String>,
    /// A file holding the `http` assessor's bearer token.
    pub token_file: Option<PathBuf>,
    /// How long an invocation waits for the assessor.
    pub timeout: std::time::Duration,
}

impl Default for RiskConfig {
    fn default() -> Self {
        Self {
            assessor: None,
            url: None,
            token_file: None,
            timeout: std::time::Duration::from_secs(2),
        }
    }
}

impl RiskConfig {
    /// The settings jit-core builds the assessor from (reads the token file).
    pub fn settings(&self) -> Result<jit_core::risk::RiskSettings, Error> {
        let token = read_token("JIT_RISK_TOKEN_FILE", self.token_file.as_deref())?;
        Ok(jit_core::risk::RiskSettings {
            assessor: self.assessor.clone(),
            url: self.url.clone(),
            token,
            timeout: Some(self.timeout),
        })
    }
}

pub(crate) fn setting(field: &str, message: impl Into<String>) -> Error {
    Error::Config(ConfigError::InvalidField {
        entitlement: "settings".into(),
        field: field.into(),
        message: message.into(),
    })
}

impl Config {
    /// A configuration with an inline catalogue and every default.
    pub fn with_catalogue(toml: impl Into<String>) -> Self {
        Self {
            catalogue: CatalogueSource::Inline(toml.into()),
            store_url: DEFAULT_STORE_URL.into(),
            claims: ClaimNames::default(),
            over_max: OverMax::Clamp,
            aws: AwsConfig::default(),
            risk: RiskConfig::default(),
            tickets: TicketsConfig::default(),
            on_call: OnCallConfig::default(),
        }
    }

    /// Reads the variables in the [module docs](self).
    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Like [`Config::from_env`], from any lookup (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let kind = get("JIT_POLICY_KIND").map(|v| v.trim().to_ascii_lowercase());
        let catalogue = match (kind.as_deref(), get("JIT_CATALOGUE"), get("JIT_CATALOGUE_FILE")) {
            (Some("cedar"), None, None) => {
                let file = |var: &str| {
                    get(var).map(PathBuf::from).ok_or_else(|| {
                        setting(var, "`JIT_POLICY_KIND=cedar` needs `JIT_CEDAR_ENTITLEMENTS` and `JIT_CEDAR_POLICIES` (paths)")
                    })
                };
                CatalogueSource::Cedar {
                    entitlements: file("JIT_CEDAR_ENTITLEMENTS")?,
                    policies: file("JIT_CEDAR_POLICIES")?,
                }
            }
            (Some("cedar"), _, _) => {
                return Err(setting(
                    "JIT_POLICY_KIND",
                    "`cedar` takes its entitlements from `JIT_CEDAR_ENTITLEMENTS`: unset `JIT_CATALOGUE` and `JIT_CATALOGUE_FILE`",
                ))
            }
            (Some(other), _, _) if other != "catalogue" => {
                return Err(setting(
                    "JIT_POLICY_KIND",
                    format!("`{other}` is not `catalogue` or `cedar`"),
                ))
            }
            (_, Some(text), None) => CatalogueSource::Inline(text),
            (_, None, Some(path)) => CatalogueSource::File(PathBuf::from(path)),
            (_, Some(_), Some(_)) => {
                return Err(setting(
                    "JIT_CATALOGUE",
                    "set `JIT_CATALOGUE` or `JIT_CATALOGUE_FILE`, not both",
                ))
            }
            (_, None, None) => return Err(setting(
                "JIT_CATALOGUE",
                "no catalogue: set `JIT_CATALOGUE` (inline TOML) or `JIT_CATALOGUE_FILE` (a path)",
            )),
        };
        let claim = |key: &str, default: &str| -> Result<String, Error> {
            let v = get(key).unwrap_or_else(|| default.to_string());
            let v = v.trim().to_string();
            if v.chars().any(char::is_control) || v.len() > 128 {
                return Err(setting(
                    key,
                    "must be a claim name of at most 128 characters",
                ));
            }
            Ok(v)
        };
        let claims = ClaimNames {
            id: claim("JIT_CLAIM_ID", "sub")?,
            groups: claim("JIT_CLAIM_GROUPS", "groups")?,
            attributes: get("JIT_CLAIM_ATTRIBUTES")
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            pinned_session_roles: match get("JIT_IAM_PINNED_SESSION_ROLES") {
                None => Vec::new(),
                Some(v) => v
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|arn| {
                        role_of_arn(arn).ok_or_else(|| {
                            setting(
                                "JIT_IAM_PINNED_SESSION_ROLES",
                                format!("`{arn}` is not a role ARN (`arn:aws:iam::123456789012:role/NAME`)"),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?,
            },
        };
        let over_max = match get("JIT_OVER_MAX_DURATION")
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("clamp") => OverMax::Clamp,
            Some("refuse") => OverMax::Refuse,
            Some(other) => {
                return Err(setting(
                    "JIT_OVER_MAX_DURATION",
                    format!("`{other}` is not `clamp` or `refuse`"),
                ))
            }
        };
        let timeout = millis("JIT_RISK_TIMEOUT_MS", get("JIT_RISK_TIMEOUT_MS"))?
            .unwrap_or(RiskConfig::default().timeout);
        let tickets = TicketsConfig {
            url: get("JIT_TICKETS_URL"),
            statuses: list(get("JIT_TICKETS_STATUSES")).unwrap_or_default(),
            projects: list(get("JIT_TICKETS_PROJECTS")),
            require_assignee: match get("JIT_TICKETS_REQUIRE_ASSIGNEE")
                .map(|v| v.trim().to_ascii_lowercase())
                .as_deref()
            {
                None | Some("false") => false,
                Some("true") => true,
                Some(other) => {
                    return Err(setting(
                        "JIT_TICKETS_REQUIRE_ASSIGNEE",
                        format!("`{other}` is not `true` or `false`"),
                    ))
                }
            },
            token_file: get("JIT_TICKETS_TOKEN_FILE").map(PathBuf::from),
            timeout: millis("JIT_TICKETS_TIMEOUT_MS", get("JIT_TICKETS_TIMEOUT_MS"))?,
        };
        let on_call = OnCallConfig {
            rota_file: get("JIT_ONCALL_ROTA_FILE").map(PathBuf::from),
            url: get("JIT_ONCALL_URL"),
            token_file: get("JIT_ONCALL_TOKEN_FILE").map(PathBuf::from),
            timeout: millis("JIT_ONCALL_TIMEOUT_MS", get("JIT_ONCALL_TIMEOUT_MS"))?,
            cache_ttl: match get("JIT_ONCALL_CACHE_SECS") {
                None => None,
                Some(v) => Some(std::time::Duration::from_secs(
                    v.trim().parse::<u64>().map_err(|_| {
                        setting(
                            "JIT_ONCALL_CACHE_SECS",
                            format!("`{v}` is not a whole number of seconds"),
                        )
                    })?,
                )),
            },
        };
        if on_call.rota_file.is_some() && on_call.url.is_some() {
            return Err(setting(
                "JIT_ONCALL_URL",
                "set `JIT_ONCALL_ROTA_FILE` or `JIT_ONCALL_URL`, not both",
            ));
        }
        let risk = RiskConfig {
            assessor: get("JIT_RISK_ASSESSOR").map(|v| v.trim().to_string()),
            url: get("JIT_RISK_URL"),
            token_file: get("JIT_RISK_TOKEN_FILE").map(PathBuf::from),
            timeout,
        };
        Ok(Self {
            catalogue,
            store_url: get("JIT_STORE_URL").unwrap_or_else(|| DEFAULT_STORE_URL.into()),
            claims,
            over_max,
            aws: AwsConfig::from_lookup(get)?,
            risk,
            tickets,
            on_call,
        })
    }
}

/// The account and role name of an IAM role ARN (`arn:PARTITION:iam::ACCOUNT:role/PATH/NAME`).
fn role_of_arn(arn: &str) -> Option<(String, String)> {
    let mut parts = arn.splitn(6, ':');
    let (arn_, _partition, service, region, account, resource) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    let name = resource.strip_prefix("role/")?.rsplit('/').next()?;
    let ok = arn_ == "arn"
        && service == "iam"
        && region.is_empty()
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && !name.is_empty();
    ok.then(|| (account.to_string(), name.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::collections::HashMap;

    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<Config, Error> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_and_overrides() {
        let c = from(&[("JIT_CATALOGUE", "x = 1")]).unwrap();
        assert_eq!(c.catalogue, CatalogueSource::Inline("x = 1".into()));
        assert_eq!(c.store_url, "memory:");
        assert_eq!(c.claims, ClaimNames::default());
        assert_eq!(c.over_max, OverMax::Clamp);
        let c = from(&[
            ("JIT_CATALOGUE_FILE", "/var/task/catalogue.toml"),
            ("JIT_STORE_URL", "postgres://jit@db/jit"),
            ("JIT_CLAIM_ID", "email"),
            ("JIT_CLAIM_GROUPS", "cognito:groups"),
            ("JIT_CLAIM_ATTRIBUTES", "oncall, dept ,"),
            ("JIT_OVER_MAX_DURATION", "Refuse"),
            ("JIT_AWS_REGION", "eu-west-1"),
        ])
        .unwrap();
        assert_eq!(
            c.catalogue,
            CatalogueSource::File("/var/task/catalogue.toml".into())
        );
        assert_eq!(c.store_url, "postgres://jit@db/jit");
        assert_eq!(c.claims.id, "email");
        assert_eq!(c.claims.groups, "cognito:groups");
        assert_eq!(c.claims.attributes, vec!["oncall", "dept"]);
        assert_eq!(c.over_max, OverMax::Refuse);
        assert_eq!(c.aws.region.as_deref(), Some("eu-west-1"));
        assert_eq!(c.risk, RiskConfig::default());
    }

    #[test]
    fn risk_settings_from_the_environment() {
        let c = from(&[
            ("JIT_CATALOGUE", "x = 1"),
            ("JIT_RISK_ASSESSOR", "http"),
            ("JIT_RISK_URL", "https://risk.internal/score"),
            ("JIT_RISK_TIMEOUT_MS", "750"),
        ])
        .unwrap();
        assert_eq!(c.risk.assessor.as_deref(), Some("http"));
        assert_eq!(c.risk.timeout, std::time::Duration::from_millis(750));
        let built = c.risk.settings().unwrap().build().unwrap().unwrap();
        assert_eq!(built.name(), "http");
        let c = from(&[("JIT_CATALOGUE", "x = 1"), ("JIT_RISK_ASSESSOR", "history")]).unwrap();
        let built = c.risk.settings().unwrap().build().unwrap().unwrap();
        assert_eq!(built.name(), "history");
        let c = from(&[
            ("JIT_CATALOGUE", "x = 1"),
            ("JIT_RISK_ASSESSOR", "http"),
            ("JIT_RISK_TOKEN_FILE", "/nonexistent/risk-token"),
        ])
        .unwrap();
        let err = c.risk.settings().unwrap_err().to_string();
        assert!(err.contains("JIT_RISK_TOKEN_FILE"), "{err}");
    }

    #[test]
    fn ticket_settings_from_the_environment() {
        let c = from(&[("JIT_CATALOGUE", "x = 1")]).unwrap();
        assert_eq!(c.tickets, TicketsConfig::default());
        let c = from(&[
            ("JIT_CATALOGUE", "x = 1"),
            ("JIT_TICKETS_URL", "https://jira.internal"),
            ("JIT_TICKETS_STATUSES", "Open, In Progress,"),
            ("JIT_TICKETS_PROJECTS", "INC"),
            ("JIT_TICKETS_REQUIRE_ASSIGNEE", "TRUE"),
            ("JIT_TICKETS_TIMEOUT_MS", "900"),
        ])
        .unwrap();
        assert_eq!(c.tickets.statuses, ["Open", "In Progress"]);
        assert_eq!(
            c.tickets.projects.as_deref(),
            Some(&["INC".to_string()][..])
        );
        assert!(c.tickets.require_assignee);
        assert_eq!(
            c.tickets.timeout,
            Some(std::time::Duration::from_millis(900))
        );
        let s = c.tickets.settings().unwrap();
        assert_eq!(s.url.as_deref(), Some("https://jira.internal"));
    }

    #[test]
    fn on_call_settings_from_the_environment() {
        let c = from(&[("JIT_CATALOGUE", "x = 1")]).unwrap();
        assert_eq!(c.on_call, OnCallConfig::default());
        assert!(c.on_call.settings().unwrap().build().unwrap().is_none());
        let c = from(&[
            ("JIT_CATALOGUE", "x = 1"),
            ("JIT_ONCALL_URL", "https://pager.internal/oncalls"),
            ("JIT_ONCALL_TIMEOUT_MS", "700"),
            ("JIT_ONCALL_CACHE_SECS", "0"),
        ])
        .unwrap();
        assert_eq!(
            c.on_call.timeout,
            Some(std::time::Duration::from_millis(700))
        );
        assert_eq!(c.on_call.cache_ttl, Some(std::time::Duration::ZERO));
        let source = c.on_call.settings().unwrap().build().unwrap().unwrap();
        assert_eq!(source.name(), "http");

        // A rota file is read and checked when the broker is built: a bad
        // one names its line and field.
        let dir = tempfile::tempdir().unwrap();
        let rota = dir.path().join("rota.toml");
        std::fs::write(
            &rota,
            "[[schedules]]\nid = \"payments-primary\"\ntime_zone = \"Mars/Olympus\"\n[[schedules.weekly]]\nfrom = \"Mon 09:00\"\nuntil = \"Thu 09:00\"\nsubjects = [\"alice\"]\n",
        )
        .unwrap();
        let c = from(&[
            ("JIT_CATALOGUE", "x = 1"),
            ("JIT_ONCALL_ROTA_FILE", rota.to_str().unwrap()),
        ])
        .unwrap();
        let err = c
            .on_call
            .settings()
            .unwrap()
            .build()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "line 3: `schedules[0].time_zone` is invalid: unknown time zone `Mars/Olympus`"
            ),
            "{err}"
        );
        std::fs::write(
            &rota,
            "[[schedules]]\nid = \"payments-primary\"\ntime_zone = \"Europe/Berlin\"\n[[schedules.weekly]]\nfrom = \"Mon 09:00\"\nuntil = \"Thu 09:00\"\nsubjects = [\"alice\"]\n",
        )
        .unwrap();
        let source = c.on_call.settings().unwrap().build().unwrap().unwrap();
        assert_eq!(source.name(), "rota");
    }

    #[test]
    fn the_policy_kind_picks_the_catalogue_or_the_cedar_files() {
        let c = from(&[("JIT_POLICY_KIND", "catalogue"), ("JIT_CATALOGUE", "x = 1")]).unwrap();
        assert_eq!(c.catalogue, CatalogueSource::Inline("x = 1".into()));
        let c = from(&[
            ("JIT_POLICY_KIND", " Cedar "),
            ("JIT_CEDAR_ENTITLEMENTS", "/var/task/entitlements.toml"),
            ("JIT_CEDAR_POLICIES", "/var/task/policies.cedar"),
        ])
        .unwrap();
        assert_eq!(
            c.catalogue,
            CatalogueSource::Cedar {
                entitlements: "/var/task/entitlements.toml".into(),
                policies: "/var/task/policies.cedar".into(),
            }
        );
    }

    #[test]
    fn bad_settings_name_the_variable() {
        for (pairs, var) in [
            (vec![], "JIT_CATALOGUE"),
            (
                vec![("JIT_CATALOGUE", "a"), ("JIT_CATALOGUE_FILE", "b")],
                "JIT_CATALOGUE",
            ),
            (
                vec![("JIT_CATALOGUE", "a"), ("JIT_OVER_MAX_DURATION", "stretch")],
                "JIT_OVER_MAX_DURATION",
            ),
            (
                vec![("JIT_CATALOGUE", "a"), ("JIT_AWS_MAX_DURATION", "13h")],
                "max_duration",
            ),
            (
                vec![("JIT_CATALOGUE", "a"), ("JIT_RISK_TIMEOUT_MS", "soon")],
                "JIT_RISK_TIMEOUT_MS",
            ),
            (
                vec![
                    ("JIT_CATALOGUE", "a"),
                    ("JIT_TICKETS_REQUIRE_ASSIGNEE", "yes"),
                ],
                "JIT_TICKETS_REQUIRE_ASSIGNEE",
            ),
            (
                vec![("JIT_CATALOGUE", "a"), ("JIT_TICKETS_TIMEOUT_MS", "0")],
                "JIT_TICKETS_TIMEOUT_MS",
            ),
            (
                vec![
                    ("JIT_CATALOGUE", "a"),
                    ("JIT_ONCALL_ROTA_FILE", "/var/task/rota.toml"),
                    ("JIT_ONCALL_URL", "https://pager"),
                ],
                "JIT_ONCALL_URL",
            ),
            (
                vec![("JIT_CATALOGUE", "a"), ("JIT_ONCALL_CACHE_SECS", "-1")],
                "JIT_ONCALL_CACHE_SECS",
            ),
            (
                vec![("JIT_CATALOGUE", "a"), ("JIT_ONCALL_TIMEOUT_MS", "soon")],
                "JIT_ONCALL_TIMEOUT_MS",
            ),
            (
                vec![("JIT_CATALOGUE", "a"), ("JIT_POLICY_KIND", "rego")],
                "JIT_POLICY_KIND",
            ),
            (
                vec![
                    ("JIT_POLICY_KIND", "cedar"),
                    ("JIT_CATALOGUE_FILE", "/var/task/catalogue.toml"),
                    ("JIT_CEDAR_ENTITLEMENTS", "/var/task/e.toml"),
                    ("JIT_CEDAR_POLICIES", "/var/task/p.cedar"),
                ],
                "JIT_POLICY_KIND",
            ),
            (
                vec![
                    ("JIT_POLICY_KIND", "cedar"),
                    ("JIT_CEDAR_POLICIES", "/var/task/p.cedar"),
                ],
                "JIT_CEDAR_ENTITLEMENTS",
            ),
            (
                vec![
                    ("JIT_POLICY_KIND", "cedar"),
                    ("JIT_CEDAR_ENTITLEMENTS", "/var/task/e.toml"),
                ],
                "JIT_CEDAR_POLICIES",
            ),
        ] {
            match from(&pairs) {
                Err(Error::Config(e)) => assert!(e.to_string().contains(var), "{var}: {e}"),
                other => panic!("{var}: expected a config error, got {other:?}"),
            }
        }
    }
}
