//! OIDC bearer authentication: JWTs checked against a configured issuer,
//! audience and JWKS, with key rotation.
//!
//! Only asymmetric algorithms are accepted, and a key is used only with the
//! algorithms its own type allows: an `HS256` token "signed" with an RSA
//! public key, `alg: none`, or a symmetric key in the JWKS are all refused.
//! An unknown `kid` triggers one JWKS refresh, at most once per
//! `refresh_min_interval`, so a flood of made-up kids cannot hammer the
//! identity provider.
//!
//! A token that passed every check is remembered, by the SHA-256 of the
//! token (never the token itself), with the principal it names, so the
//! next request with the same token skips the signature check. An entry is
//! used only while the token's `exp` is still ahead (strictly: never at or
//! past it, leeway or not; after that the token is checked again and fails
//! as "token expired" like any other), it is forgotten when the keys are
//! reloaded (a rotated-out key verifies nothing any more), and at most
//! [`VERIFIED_CACHE_SIZE`] are kept (expired ones go first when it is full,
//! then all of them). Only tokens that verified are remembered: a flood of
//! bad tokens costs a full check each, as before.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jit_core::{Clock, Principal, SystemClock};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Where the signing keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// Fetched over HTTP(S), refreshed when an unknown `kid` shows up.
    Url(String),
    /// Read from a file (re-read when an unknown `kid` shows up).
    File(PathBuf),
    /// Given directly (demo mode: the server is its own issuer).
    Static(JwkSet),
}

/// Which claims carry what.
///
/// Only the `id` claim makes someone who they are: it decides who owns a
/// request, who may read it or collect its credentials, and who is named as
/// an approver or admin. `aliases` are other names the identity provider
/// asserts for the same person; they only ever *take away* (a requester
/// cannot approve their own request under an alias, and one person cannot
/// vote twice), so a token carrying `email = alice@...` or
/// `preferred_username = alice` gains nothing of alice's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimNames {
    /// The principal id (default `sub`). `email` is refused here unless
    /// [`ClaimNames::email_as_id`] opts in.
    pub id: String,
    /// Groups: an array of strings or one string (default `groups`).
    pub groups: String,
    /// Other names of the same person (default `email`, `preferred_username`);
    /// used only to refuse self-approvals and second votes.
    pub aliases: Vec<String>,
    /// Display name (default `name`).
    pub name: String,
    /// Lets `id = "email"` identify people, and then only in tokens whose
    /// `email_verified` claim is `true` (default `false`). An unverified
    /// email is whatever the user typed into their profile.
    pub email_as_id: bool,
    /// Principal attributes filled from claims: attribute name → claim name
    /// (for example `azure_object_id = "oid"`). A claim that is a string,
    /// number or boolean becomes the attribute's text; a missing claim leaves
    /// the attribute unset.
    pub attributes: std::collections::BTreeMap<String, String>,
}

impl Default for ClaimNames {
    fn default() -> Self {
        Self {
            id: "sub".into(),
            groups: "groups".into(),
            aliases: vec!["email".into(), "preferred_username".into()],
            name: "name".into(),
            email_as_id: false,
            attributes: Default::default(),
        }
    }
}

impl ClaimNames {
    /// Refuses settings that would let a user choose who they are.
    pub fn validate(&self) -> Result<(), String> {
        if self.id == "email" && !self.email_as_id {
            return Err(
                "auth.claims: `id = \"email\"` needs `email_as_id = true`, and then only \
                 tokens with `email_verified = true` are accepted; prefer `sub`"
                    .into(),
            );
        }
        if matches!(
            self.id.as_str(),
            "preferred_username" | "name" | "upn" | "unique_name"
        ) {
            return Err(format!(
                "auth.claims: `id = \"{}\"` is a name users or admins can change; use `sub` \
                 (or `oid` for Entra ID)",
                self.id
            ));
        }
        Ok(())
    }
}

/// Authentication settings.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Expected `iss`.
    pub issuer: String,
    /// Expected `aud`.
    pub audience: String,
    /// Key source.
    pub jwks: JwksSource,
    /// Accepted algorithms (asymmetric only).
    pub algorithms: Vec<Algorithm>,
    /// Claim names.
    pub claims: ClaimNames,
    /// Clock skew allowed on `exp`/`nbf`.
    pub leeway: Duration,
    /// Shortest time between two JWKS refreshes.
    pub refresh_min_interval: Duration,
}

/// Why a token was refused; every variant is a 401.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token")]
    Missing,
    /// Anything wrong with the token.
    #[error("invalid token: {0}")]
    Invalid(String),
}

struct KeyEntry {
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// The most verified tokens an [`Authenticator`] remembers at once.
pub const VERIFIED_CACHE_SIZE: usize = 10_000;

/// A token that passed every check.
struct Verified {
    principal: Principal,
    /// The token's `exp`, seconds since the epoch: used only before it.
    exp: i64,
}

/// Verified tokens by the SHA-256 of the token, for one key set
/// (`generation` moves when the keys are reloaded, and empties it).
#[derive(Default)]
struct VerifiedTokens {
    generation: u64,
    entries: HashMap<[u8; 32], Verified>,
}

/// Verifies bearer tokens and maps their claims to a [`Principal`].
pub struct Authenticator {
    settings: AuthSettings,
    keys: RwLock<HashMap<String, Arc<KeyEntry>>>,
    last_refresh: Mutex<Option<Instant>>,
    refresh_lock: tokio::sync::Mutex<()>,
    http: reqwest::Client,
    verified: Mutex<VerifiedTokens>,
    cache_size: usize,
    clock: Arc<dyn Clock>,
    /// Full verifications run (signature checked), for the tests.
    checks: AtomicU64,
}

fn token_digest(token: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes()).into()
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuer", &self.settings.issuer)
            .field("audience", &self.settings.audience)
            .finish_non_exhaustive()
    }
}

fn ensure_crypto_provider() {
    use jsonwebtoken::crypto::{rust_crypto, CryptoProvider};
    let _ = CryptoProvider::install_default(&rust_crypto::DEFAULT_PROVIDER);
}

fn is_asymmetric(alg: Algorithm) -> bool {
    !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// Whether a JWK may verify signatures at all: RFC 7517 `use` (if present)
/// must be `sig`, and `key_ops` (if present) must include `verify`. An
/// encryption key published in the same set never verifies a token.
fn verifies_signatures(jwk: &Jwk) -> bool {
    use jsonwebtoken::jwk::{KeyOperations, PublicKeyUse};
    let usable = jwk
        .common
        .public_key_use
        .as_ref()
        .is_none_or(|u| *u == PublicKeyUse::Signature);
    let ops = jwk
        .common
        .key_operations
        .as_ref()
        .is_none_or(|ops| ops.contains(&KeyOperations::Verify));
    usable && ops
}

/// The algorithms a JWK may be used with, from its own type (and `alg` if
/// set); none for a key that is not for verifying signatures.
fn key_algorithms(jwk: &Jwk) -> Vec<Algorithm> {
    use Algorithm::*;
    if !verifies_signatures(jwk) {
        return vec![];
    }
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![ES256],
            EllipticCurve::P384 => vec![ES384],
            _ => vec![],
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => vec![EdDSA],
        // Symmetric keys never verify user tokens: the "secret" would be public.
        _ => vec![],
    };
    let pinned = jwk.common.key_algorithm.map(|ka| match ka {
        KeyAlgorithm::RS256 => RS256,
        KeyAlgorithm::RS384 => RS384,
        KeyAlgorithm::RS512 => RS512,
        KeyAlgorithm::PS256 => PS256,
        KeyAlgorithm::PS384 => PS384,
        KeyAlgorithm::PS512 => PS512,
        KeyAlgorithm::ES256 => ES256,
        KeyAlgorithm::ES384 => ES384,
        KeyAlgorithm::EdDSA => EdDSA,
        _ => HS256, // an encryption or HMAC key: matches nothing below
    });
    match pinned {
        Some(a) => by_type.into_iter().filter(|b| *b == a).collect(),
        None => by_type,
    }
}

fn parse_set(set: &JwkSet) -> HashMap<String, Arc<KeyEntry>> {
    let mut out = HashMap::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let algorithms = key_algorithms(jwk);
        if algorithms.is_empty() {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            tracing::warn!(kid = ?jwk.common.key_id, "skipping a JWKS key that cannot be parsed");
            continue;
        };
        let kid = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{i}"));
        out.insert(kid, Arc::new(KeyEntry { key, algorithms }));
    }
    out
}

#[derive(Deserialize)]
struct AnyClaims(serde_json::Map<String, serde_json::Value>);

impl Authenticator {
    /// Builds an authenticator; the keys are loaded by [`Authenticator::refresh`].
    pub fn new(settings: AuthSettings) -> Self {
        ensure_crypto_provider();
        let keys = match &settings.jwks {
            JwksSource::Static(set) => parse_set(set),
            _ => HashMap::new(),
        };
        Self {
            settings,
            keys: RwLock::new(keys),
            last_refresh: Mutex::new(None),
            refresh_lock: tokio::sync::Mutex::new(()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            verified: Mutex::new(VerifiedTokens::default()),
            cache_size: VERIFIED_CACHE_SIZE,
            clock: Arc::new(SystemClock),
            checks: AtomicU64::new(0),
        }
    }

    /// Remembers at most `n` verified tokens (0: none, every request is
    /// checked in full).
    pub fn with_cache_size(mut self, n: usize) -> Self {
        self.cache_size = n;
        self
    }

    /// The clock that decides when a remembered token's `exp` has come
    /// (the full check uses the system clock, as jsonwebtoken does).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// How many verified tokens are remembered now.
    pub fn cached_tokens(&self) -> usize {
        self.verified.lock().map(|v| v.entries.len()).unwrap_or(0)
    }

    /// The principal of a remembered token whose `exp` is still ahead.
    fn remembered(&self, digest: &[u8; 32], now: i64) -> Option<Principal> {
        let mut v = self.verified.lock().ok()?;
        match v.entries.get(digest) {
            Some(e) if now < e.exp => Some(e.principal.clone()),
            Some(_) => {
                v.entries.remove(digest);
                None
            }
            None => None,
        }
    }

    /// The key-set generation a verification starts under.
    fn generation(&self) -> Option<u64> {
        self.verified.lock().ok().map(|v| v.generation)
    }

    /// Remembers a verified token, unless the keys were reloaded since its
    /// check began (it may have been verified with a key now gone).
    fn remember(&self, digest: [u8; 32], generation: u64, principal: &Principal, exp: i64) {
        if self.cache_size == 0 {
            return;
        }
        let now = self.clock.now().timestamp();
        let Ok(mut v) = self.verified.lock() else {
            return;
        };
        if v.generation != generation || now >= exp {
            return;
        }
        if v.entries.len() >= self.cache_size && !v.entries.contains_key(&digest) {
            v.entries.retain(|_, e| now < e.exp);
            if v.entries.len() >= self.cache_size {
                v.entries.clear();
            }
        }
        v.entries.insert(
            digest,
            Verified {
                principal: principal.clone(),
                exp,
            },
        );
    }

    /// Forgets every verified token: the keys changed.
    fn forget_verified(&self) {
        if let Ok(mut v) = self.verified.lock() {
            v.generation += 1;
            v.entries.clear();
        }
    }

    /// Number of usable keys loaded.
    pub fn key_count(&self) -> usize {
        self.keys.read().map(|k| k.len()).unwrap_or(0)
    }

    /// Loads the key set from its source, replacing the current one (rotation).
    pub async fn refresh(&self) -> Result<usize, String> {
        let set: JwkSet = match &self.settings.jwks {
            JwksSource::Static(_) => return Ok(self.key_count()),
            JwksSource::File(p) => {
                let text = tokio::fs::read_to_string(p)
                    .await
                    .map_err(|e| format!("cannot read JWKS file `{}`: {e}", p.display()))?;
                serde_json::from_str(&text)
                    .map_err(|e| format!("JWKS file `{}` is not valid: {e}", p.display()))?
            }
            JwksSource::Url(u) => {
                let resp = self
                    .http
                    .get(u)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| format!("cannot fetch JWKS from `{u}`: {e}"))?;
                resp.json()
                    .await
                    .map_err(|e| format!("JWKS from `{u}` is not valid: {e}"))?
            }
        };
        let keys = parse_set(&set);
        let n = keys.len();
        if let Ok(mut k) = self.keys.write() {
            *k = keys;
        }
        self.forget_verified();
        if let Ok(mut t) = self.last_refresh.lock() {
            *t = Some(Instant::now());
        }
        Ok(n)
    }

    fn lookup(&self, kid: Option<&str>) -> Option<Arc<KeyEntry>> {
        let keys = self.keys.read().ok()?;
        match kid {
            Some(k) => keys.get(k).cloned(),
            // Without a kid, only an unambiguous set will do.
            None if keys.len() == 1 => keys.values().next().cloned(),
            None => None,
        }
    }

    async fn refresh_if_allowed(&self) {
        if matches!(self.settings.jwks, JwksSource::Static(_)) {
            return;
        }
        let _guard = self.refresh_lock.lock().await;
        let recent = self
            .last_refresh
            .lock()
            .ok()
            .and_then(|t| *t)
            .is_some_and(|t| t.elapsed() < self.settings.refresh_min_interval);
        if recent {
            return;
        }
        if let Err(e) = self.refresh().await {
            tracing::warn!(error = %e, "JWKS refresh failed");
            if let Ok(mut t) = self.last_refresh.lock() {
                *t = Some(Instant::now());
            }
        }
    }

    /// Verifies a bearer token and returns the principal it names.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let digest = token_digest(token);
        if self.cache_size > 0 {
            if let Some(p) = self.remembered(&digest, self.clock.now().timestamp()) {
                return Ok(p);
            }
        }
        let generation = self.generation();
        let (principal, exp) = self.verify(token).await?;
        if let (Some(generation), Some(exp)) = (generation, exp) {
            self.remember(digest, generation, &principal, exp);
        }
        Ok(principal)
    }

    /// The full check: header, key, signature, issuer, audience, times,
    /// claims. Returns the principal and the token's `exp`.
    async fn verify(&self, token: &str) -> Result<(Principal, Option<i64>), AuthError> {
        self.checks.fetch_add(1, Ordering::Relaxed);
        let invalid = |m: &str| AuthError::Invalid(m.to_string());
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("malformed token or unsupported algorithm"))?;
        if !is_asymmetric(header.alg) || !self.settings.algorithms.contains(&header.alg) {
            return Err(AuthError::Invalid(format!(
                "algorithm `{:?}` is not accepted",
                header.alg
            )));
        }
        let kid = header.kid.as_deref();
        let entry = match self.lookup(kid) {
            Some(e) => e,
            None => {
                self.refresh_if_allowed().await;
                self.lookup(kid)
                    .ok_or_else(|| invalid("unknown signing key"))?
            }
        };
        if !entry.algorithms.contains(&header.alg) {
            return Err(invalid("algorithm does not match the signing key"));
        }
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.set_issuer(&[self.settings.issuer.as_str()]);
        v.set_audience(&[self.settings.audience.as_str()]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.validate_nbf = true;
        v.leeway = self.settings.leeway.as_secs();
        let data = jsonwebtoken::decode::<AnyClaims>(token, &entry.key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => invalid("token expired"),
                K::ImmatureSignature => invalid("token not yet valid"),
                K::InvalidIssuer => invalid("wrong issuer"),
                K::InvalidAudience => invalid("wrong audience"),
                K::InvalidSignature => invalid("bad signature"),
                K::MissingRequiredClaim(c) => AuthError::Invalid(format!("missing claim `{c}`")),
                _ => invalid("token rejected"),
            }
        })?;
        let exp = data.claims.0.get("exp").and_then(serde_json::Value::as_i64);
        Ok((self.principal(&data.claims.0)?, exp))
    }

    fn principal(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Principal, AuthError> {
        let names = &self.settings.claims;
        let id = claims
            .get(&names.id)
            .and_then(|v| v.as_str())
            .ok_or_else(|| AuthError::Invalid(format!("missing claim `{}`", names.id)))?;
        if names.id == "email" {
            // Only a verified email identifies anyone, and only where configured.
            let verified = matches!(
                claims.get("email_verified"),
                Some(serde_json::Value::Bool(true))
            ) || matches!(claims.get("email_verified"), Some(serde_json::Value::String(v)) if v == "true");
            if !names.email_as_id || !verified {
                return Err(AuthError::Invalid(
                    "claim `email` is not verified (`email_verified` is not true)".into(),
                ));
            }
        }
        let mut p = Principal::new(id).map_err(|e| AuthError::Invalid(e.to_string()))?;
        for (attribute, claim) in &names.attributes {
            let text = match claims.get(claim) {
                Some(serde_json::Value::String(v)) => v.clone(),
                Some(serde_json::Value::Bool(v)) => v.to_string(),
                Some(serde_json::Value::Number(v)) => v.to_string(),
                _ => continue,
            };
            p = p.with_attribute(attribute, &text);
        }
        match claims.get(&names.groups) {
            Some(serde_json::Value::Array(gs)) => {
                for g in gs.iter().filter_map(|g| g.as_str()) {
                    p = p.with_group(g);
                }
            }
            Some(serde_json::Value::String(g)) => p = p.with_group(g),
            _ => {}
        }
        for a in &names.aliases {
            if let Some(v) = claims.get(a).and_then(|v| v.as_str()) {
                if !v.is_empty() {
                    p = p.with_alias(v);
                }
            }
        }
        p.display_name = claims
            .get(&names.name)
            .and_then(|v| v.as_str())
            .map(str::to_string);
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::demo::{DemoIssuer, AUDIENCE, ISSUER};
    use jit_core::local::LocalKey;

    fn settings(jwks: JwksSource) -> AuthSettings {
        AuthSettings {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            jwks,
            algorithms: vec![Algorithm::EdDSA, Algorithm::RS256],
            claims: ClaimNames::default(),
            leeway: Duration::from_secs(0),
            refresh_min_interval: Duration::from_millis(0),
        }
    }

    #[tokio::test]
    async fn keys_rotate_through_the_jwks_file_and_claims_map_to_a_principal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let (a, b) = (
            DemoIssuer::new(LocalKey::generate()),
            DemoIssuer::new(LocalKey::generate()),
        );
        std::fs::write(&path, a.jwks_json().to_string()).unwrap();
        let auth = Authenticator::new(settings(JwksSource::File(path.clone())));
        assert_eq!(auth.refresh().await.unwrap(), 1);

        let p = auth
            .authenticate(&a.token("alice", &["eng", "leads"], 60).unwrap())
            .await
            .unwrap();
        assert_eq!(p.id.as_str(), "alice");
        assert!(p.in_group("leads"));
        assert!(p.aliases.contains("alice@demo.invalid"));

        // Rotation: the new key is picked up on its first unknown kid; the old one is gone.
        std::fs::write(&path, b.jwks_json().to_string()).unwrap();
        let tb = b.token("bob", &[], 60).unwrap();
        assert_eq!(auth.authenticate(&tb).await.unwrap().id.as_str(), "bob");
        let ta = a.token("alice", &[], 60).unwrap();
        assert!(matches!(
            auth.authenticate(&ta).await,
            Err(AuthError::Invalid(_))
        ));
    }

    fn claim_exp(token: &str) -> i64 {
        use base64::Engine;
        let payload = token.split('.').nth(1).unwrap();
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&json).unwrap()["exp"]
            .as_i64()
            .unwrap()
    }

    fn checks(auth: &Authenticator) -> u64 {
        auth.checks.load(Ordering::Relaxed)
    }

    /// A remembered token skips the signature check only while its `exp`
    /// is ahead on the authenticator's clock; at `exp` it is checked again.
    #[tokio::test]
    async fn verified_tokens_are_remembered_until_their_exp_and_never_past_it() {
        let issuer = DemoIssuer::new(LocalKey::generate());
        let token = issuer.token("alice", &["eng"], 60).unwrap();
        let exp = claim_exp(&token);
        let clock =
            jit_core::ManualClock::new(chrono::DateTime::from_timestamp(exp - 60, 0).unwrap());
        let auth = Authenticator::new(settings(JwksSource::Static(issuer.jwk_set().unwrap())))
            .with_clock(Arc::new(clock.clone()));
        for _ in 0..3 {
            let p = auth.authenticate(&token).await.unwrap();
            assert_eq!(p.id.as_str(), "alice");
            assert!(p.in_group("eng"));
        }
        assert_eq!((checks(&auth), auth.cached_tokens()), (1, 1));

        // One second before `exp`: still remembered. At `exp`: checked again.
        clock.advance(chrono::TimeDelta::seconds(59));
        auth.authenticate(&token).await.unwrap();
        assert_eq!(checks(&auth), 1);
        clock.advance(chrono::TimeDelta::seconds(1));
        auth.authenticate(&token).await.unwrap();
        assert_eq!(
            checks(&auth),
            2,
            "a token at its exp is never taken from memory"
        );
    }

    /// On the system clock: a remembered token that expires fails as
    /// "token expired", exactly as one never seen before.
    #[tokio::test]
    async fn a_remembered_token_that_expires_fails_like_any_expired_token() {
        let issuer = DemoIssuer::new(LocalKey::generate());
        let auth = Authenticator::new(settings(JwksSource::Static(issuer.jwk_set().unwrap())));
        // Two seconds: `exp` is in whole seconds, so a one-second token
        // could already be at its `exp` when checked on a loaded machine
        // (and then rightly not remembered).
        let token = issuer.token("alice", &[], 2).unwrap();
        auth.authenticate(&token).await.unwrap();
        assert_eq!(auth.cached_tokens(), 1);
        // Leeway is 0 in these settings: three whole seconds later `exp` has passed.
        tokio::time::sleep(Duration::from_millis(3100)).await;
        let err = auth.authenticate(&token).await.unwrap_err();
        assert_eq!(err.to_string(), "invalid token: token expired");
        let fresh = Authenticator::new(settings(JwksSource::Static(issuer.jwk_set().unwrap())));
        assert_eq!(
            fresh.authenticate(&token).await.unwrap_err().to_string(),
            err.to_string()
        );
    }

    #[tokio::test]
    async fn remembered_tokens_are_bounded_and_bad_tokens_are_never_remembered() {
        let issuer = DemoIssuer::new(LocalKey::generate());
        let auth = Authenticator::new(settings(JwksSource::Static(issuer.jwk_set().unwrap())))
            .with_cache_size(2);
        for user in ["a", "b", "c", "d", "e"] {
            auth.authenticate(&issuer.token(user, &[], 60).unwrap())
                .await
                .unwrap();
            assert!(auth.cached_tokens() <= 2, "{}", auth.cached_tokens());
        }
        assert!(auth.cached_tokens() >= 1);

        // A token of another key and a tampered one: refused, never remembered.
        let other = DemoIssuer::new(LocalKey::generate());
        let good = issuer.token("f", &[], 60).unwrap();
        let mut tampered = good.clone();
        tampered.pop();
        let before = auth.cached_tokens();
        for bad in [other.token("f", &[], 60).unwrap(), tampered] {
            for _ in 0..2 {
                assert!(auth.authenticate(&bad).await.is_err());
            }
        }
        assert_eq!(auth.cached_tokens(), before);

        let off = Authenticator::new(settings(JwksSource::Static(issuer.jwk_set().unwrap())))
            .with_cache_size(0);
        off.authenticate(&good).await.unwrap();
        off.authenticate(&good).await.unwrap();
        assert_eq!((checks(&off), off.cached_tokens()), (2, 0));
    }

    /// A key rotated out of the JWKS verifies nothing any more, even a
    /// token it verified a moment before.
    #[tokio::test]
    async fn rotating_the_keys_forgets_every_remembered_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let (a, b) = (
            DemoIssuer::new(LocalKey::generate()),
            DemoIssuer::new(LocalKey::generate()),
        );
        std::fs::write(&path, a.jwks_json().to_string()).unwrap();
        let auth = Authenticator::new(settings(JwksSource::File(path.clone())));
        auth.refresh().await.unwrap();
        let ta = a.token("alice", &[], 60).unwrap();
        auth.authenticate(&ta).await.unwrap();
        auth.authenticate(&ta).await.unwrap();
        assert_eq!((checks(&auth), auth.cached_tokens()), (1, 1));

        std::fs::write(&path, b.jwks_json().to_string()).unwrap();
        auth.refresh().await.unwrap();
        assert_eq!(auth.cached_tokens(), 0);
        assert_eq!(
            auth.authenticate(&ta).await.unwrap_err().to_string(),
            "invalid token: unknown signing key"
        );
        let tb = b.token("bob", &[], 60).unwrap();
        assert_eq!(auth.authenticate(&tb).await.unwrap().id.as_str(), "bob");
    }

    #[tokio::test]
    async fn refreshes_are_rate_limited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let a = DemoIssuer::new(LocalKey::generate());
        std::fs::write(&path, a.jwks_json().to_string()).unwrap();
        let mut s = settings(JwksSource::File(path.clone()));
        s.refresh_min_interval = Duration::from_secs(3600);
        let auth = Authenticator::new(s);
        auth.refresh().await.unwrap();
        // A new key within the interval is not fetched: unknown kids cannot force refreshes.
        let b = DemoIssuer::new(LocalKey::generate());
        std::fs::write(&path, b.jwks_json().to_string()).unwrap();
        assert!(auth
            .authenticate(&b.token("bob", &[], 60).unwrap())
            .await
            .is_err());
    }

    #[test]
    fn only_the_id_claim_identifies_and_email_needs_verification_and_opt_in() {
        let claims = |v: serde_json::Value| v.as_object().unwrap().clone();
        let auth = Authenticator::new(settings(JwksSource::Static(JwkSet { keys: vec![] })));
        let p = auth
            .principal(&claims(serde_json::json!({
                "sub": "mallory", "email": "alice@example.com", "preferred_username": "alice",
                "oid": "00000000-0000-0000-0000-000000000001"
            })))
            .unwrap();
        assert_eq!(p.id.as_str(), "mallory");
        assert!(p.attributes.is_empty(), "no attribute mapping configured");

        let mut s = settings(JwksSource::Static(JwkSet { keys: vec![] }));
        s.claims.id = "email".into();
        assert!(s.claims.validate().is_err(), "email as id needs the opt-in");
        s.claims.email_as_id = true;
        assert!(s.claims.validate().is_ok());
        s.claims
            .attributes
            .insert("azure_object_id".into(), "oid".into());
        let auth = Authenticator::new(s);
        for unverified in [
            serde_json::json!({"email": "alice@example.com"}),
            serde_json::json!({"email": "alice@example.com", "email_verified": false}),
            serde_json::json!({"email": "alice@example.com", "email_verified": "yes"}),
        ] {
            assert!(matches!(
                auth.principal(&claims(unverified)),
                Err(AuthError::Invalid(_))
            ));
        }
        let p = auth
            .principal(&claims(serde_json::json!({
                "email": "alice@example.com", "email_verified": true, "oid": "o-1"
            })))
            .unwrap();
        assert_eq!(p.id.as_str(), "alice@example.com");
        assert_eq!(p.attributes["azure_object_id"], "o-1");

        for changeable in ["preferred_username", "name", "upn"] {
            let c = ClaimNames {
                id: changeable.into(),
                ..ClaimNames::default()
            };
            assert!(c.validate().is_err(), "{changeable}");
        }
    }

    #[test]
    fn symmetric_and_mismatched_keys_are_never_usable() {
        let set: JwkSet = serde_json::from_value(serde_json::json!({ "keys": [
            { "kty": "oct", "k": "c2VjcmV0", "kid": "hmac" },
            { "kty": "OKP", "crv": "Ed25519", "kid": "ed", "alg": "RS256",
              "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" },
        ]}))
        .unwrap();
        assert!(parse_set(&set).is_empty());
    }

    /// A key published for encryption (`use: enc`), or whose `key_ops` do
    /// not include `verify`, never verifies a token, even one signed with it.
    #[tokio::test]
    async fn keys_not_for_signatures_never_verify() {
        let issuer = DemoIssuer::new(LocalKey::generate());
        let token = issuer.token("mallory", &["secops"], 60).unwrap();
        let with = |change: serde_json::Value| {
            let mut set = issuer.jwks_json();
            let key = &mut set["keys"][0];
            key.as_object_mut().unwrap().remove("use");
            for (k, v) in change.as_object().unwrap() {
                key[k] = v.clone();
            }
            serde_json::from_value::<JwkSet>(set).unwrap()
        };
        for bad in [
            serde_json::json!({ "use": "enc" }),
            serde_json::json!({ "key_ops": ["encrypt", "sign"] }),
            serde_json::json!({ "use": "sig", "key_ops": ["sign"] }),
        ] {
            let auth = Authenticator::new(settings(JwksSource::Static(with(bad.clone()))));
            assert_eq!(auth.key_count(), 0, "{bad}");
            assert!(auth.authenticate(&token).await.is_err(), "{bad}");
        }
        for good in [
            serde_json::json!({}),
            serde_json::json!({ "use": "sig" }),
            serde_json::json!({ "key_ops": ["verify"] }),
        ] {
            let auth = Authenticator::new(settings(JwksSource::Static(with(good.clone()))));
            let p = auth.authenticate(&token).await.unwrap();
            assert_eq!(p.id.as_str(), "mallory", "{good}");
        }
    }
}
