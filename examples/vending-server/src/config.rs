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
//! aliases = ["email", "preferred_username"]
//! name = "name"
//!
//! [providers.local]                       # the table name is the provider name
//! kind = "local"
//! issuer = "jit"
//! key_file = "local-key.pem"              # JIT_LOCAL_KEY_FILE; created (0600) if missing
//! max_duration = "8h"
//!
//! [limits]
//! max_body_bytes = 65536
//!
//! [reaper]
//! interval_secs = 5
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
    /// Store URL: `sqlite://path.db` (PostgreSQL once `jit_core::store::connect` exists).
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

/// `[providers.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Only `local` for now (AWS comes with jit-aws).
    pub kind: String,
    /// Token issuer name.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Ed25519 PKCS#8 PEM key file; generated if missing.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Longest token, e.g. `8h`.
    #[serde(default)]
    pub max_duration: Option<String>,
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
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
        for pc in c.providers.values_mut() {
            if let Some(p) = pc.key_file.as_mut() {
                rel(p);
            }
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
}
