//! Demo mode: a built-in catalogue, the local provider, and the server as its
//! own OIDC issuer (an Ed25519 key, a JWKS, and ready-made bearer tokens).

use std::path::Path;

use chrono::Utc;
use jit_core::local::LocalKey;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// Issuer name of demo tokens.
pub const ISSUER: &str = "jit-demo";
/// Audience of demo tokens.
pub const AUDIENCE: &str = "jit-vending";
/// The demo's resource server: the one subject that reads token claims at
/// `/v1/introspect` (`[introspection] clients`).
pub const RESOURCE_SERVER: &str = "demo-service";

/// The demo catalogue: `demo-api` is auto-approved up to 15 minutes, longer
/// needs a lead; `prod-db` always needs a lead; `secops` members are admins.
pub const CATALOGUE: &str = r#"
[admins]
groups = ["secops"]

[[entitlements]]
id = "demo-api"
description = "The demo admin API (auto-approved up to 15 minutes)"
provider = "local"
max_duration = "1h"
target = { audience = "demo-api", scopes = ["admin"] }
[entitlements.eligible]
groups = ["engineering"]
[entitlements.approval]
groups = ["leads"]
[entitlements.auto_approve]
max_duration = "15m"

[[entitlements]]
id = "prod-db"
description = "Production database, read-only (a lead approves)"
provider = "local"
max_duration = "4h"
target = { audience = "prod-db", scopes = ["read"] }
[entitlements.eligible]
groups = ["engineering"]
[entitlements.approval]
groups = ["leads"]
"#;

/// The demo identity provider.
pub struct DemoIssuer {
    key: LocalKey,
}

impl std::fmt::Debug for DemoIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoIssuer")
            .field("kid", &self.key.kid())
            .finish_non_exhaustive()
    }
}

/// Loads a PKCS#8 PEM Ed25519 key from `path`, or generates one (and writes
/// it there with mode 0600 when a path is given).
pub fn load_or_generate_key(path: Option<&Path>) -> Result<LocalKey, String> {
    if let Some(p) = path {
        if p.exists() {
            let pem = std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read key `{}`: {e}", p.display()))?;
            return LocalKey::from_pkcs8_pem(&pem).map_err(|e| format!("`{}`: {e}", p.display()));
        }
    }
    let key = LocalKey::generate();
    if let Some(p) = path {
        let pem = key.to_pkcs8_pem().map_err(|e| e.to_string())?;
        write_private(p, pem.expose())?;
    }
    Ok(key)
}

pub(crate) fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot write key `{}`: {e}", path.display()))
}

impl DemoIssuer {
    /// An issuer with this key.
    pub fn new(key: LocalKey) -> Self {
        Self { key }
    }

    /// The public JWKS.
    pub fn jwks_json(&self) -> Value {
        json!({ "keys": [crate::api::jwk(&self.key.public_key())] })
    }

    /// The JWKS as a typed set.
    pub fn jwk_set(&self) -> Result<JwkSet, String> {
        serde_json::from_value(self.jwks_json()).map_err(|e| e.to_string())
    }

    /// A bearer token for `sub` in `groups`, valid for `ttl_secs`.
    pub fn token(&self, sub: &str, groups: &[&str], ttl_secs: i64) -> Result<String, String> {
        self.token_with(sub, groups, ttl_secs, &serde_json::Map::new())
    }

    /// [`DemoIssuer::token`] with further claims, such as an Entra `oid`
    /// that `[auth.claims.attributes]` maps to a principal attribute; they
    /// cannot replace the standard ones.
    pub fn token_with(
        &self,
        sub: &str,
        groups: &[&str],
        ttl_secs: i64,
        extra: &serde_json::Map<String, Value>,
    ) -> Result<String, String> {
        let now = Utc::now().timestamp();
        let mut claims = json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "groups": groups,
            "email": format!("{sub}@demo.invalid"), "name": sub,
            "iat": now, "nbf": now, "exp": now + ttl_secs,
        });
        if let Some(c) = claims.as_object_mut() {
            for (k, v) in extra {
                c.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.key.kid().to_string());
        let pem = self.key.to_pkcs8_pem().map_err(|e| e.to_string())?;
        // jsonwebtoken signs EdDSA with a PKCS#8 DER key: the PEM body, decoded.
        let body: String = pem
            .expose()
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body)
            .map_err(|_| "cannot decode the demo key".to_string())?;
        let enc = EncodingKey::from_ed_der(&der);
        jsonwebtoken::encode(&header, &claims, &enc).map_err(|e| e.to_string())
    }
}
