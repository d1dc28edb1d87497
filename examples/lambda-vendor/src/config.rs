//! Cold-start configuration, read once per container from the environment.
//!
//! | variable | meaning | default |
//! | --- | --- | --- |
//! | `JIT_CATALOGUE` | the catalogue itself, inline TOML | one of the two is required |
//! | `JIT_CATALOGUE_FILE` | path of the catalogue TOML (e.g. `/var/task/catalogue.toml` in the deployment package) | |
//! | `JIT_STORE_URL` | `memory:`, `sqlite:///tmp/jit.db`, `postgres://...` | `memory:` |
//! | `JIT_CLAIM_ID` | claim (or authorizer context key) holding the caller's stable id | `sub` |
//! | `JIT_CLAIM_GROUPS` | claim holding the caller's groups | `groups` |
//! | `JIT_CLAIM_ATTRIBUTES` | comma-separated claims copied into principal attributes (for `auto_approve.attributes`) | none |
//! | `JIT_IAM_PINNED_SESSION_ROLES` | comma-separated role ARNs whose trust policy pins the session name to the caller (`sts:RoleSessionName` = `${aws:username}`, or IAM Identity Center); their callers are told apart by session name. Every other assumed role is one identity: see [`crate::event`] | none |
//! | `JIT_OVER_MAX_DURATION` | `clamp`: a duration above the entitlement's maximum is shortened (the reasons say so); `refuse`: it is a 400 | `clamp` |
//! | `JIT_AWS_*` | the AWS provider: see [`jit_aws::config`] | |
//!
//! Exactly one of `JIT_CATALOGUE` and `JIT_CATALOGUE_FILE` must be set.
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

/// Where the catalogue comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogueSource {
    /// The TOML text itself (`JIT_CATALOGUE`).
    Inline(String),
    /// A file to read at cold start (`JIT_CATALOGUE_FILE`).
    File(PathBuf),
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
}

fn setting(field: &str, message: impl Into<String>) -> Error {
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
        }
    }

    /// Reads the variables in the [module docs](self).
    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Like [`Config::from_env`], from any lookup (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let catalogue = match (get("JIT_CATALOGUE"), get("JIT_CATALOGUE_FILE")) {
            (Some(text), None) => CatalogueSource::Inline(text),
            (None, Some(path)) => CatalogueSource::File(PathBuf::from(path)),
            (Some(_), Some(_)) => {
                return Err(setting(
                    "JIT_CATALOGUE",
                    "set `JIT_CATALOGUE` or `JIT_CATALOGUE_FILE`, not both",
                ))
            }
            (None, None) => return Err(setting(
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
        Ok(Self {
            catalogue,
            store_url: get("JIT_STORE_URL").unwrap_or_else(|| DEFAULT_STORE_URL.into()),
            claims,
            over_max,
            aws: AwsConfig::from_lookup(get)?,
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
        ] {
            match from(&pairs) {
                Err(Error::Config(e)) => assert!(e.to_string().contains(var), "{var}: {e}"),
                other => panic!("{var}: expected a config error, got {other:?}"),
            }
        }
    }
}
