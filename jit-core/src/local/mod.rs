//! The local provider: Ed25519-signed, short-lived bearer tokens.
//!
//! This is the embedded default: everything runs without a cloud account. An
//! internal service protects its own admin endpoints with a [`Verifier`] (or
//! the tower layer `LocalTokenLayer`, feature `tower`), and the broker hands
//! out tokens through [`LocalProvider`].
//!
//! Tokens are JWTs (`alg: EdDSA`, header `kid`) signed with `ed25519-dalek`
//! keys and checked with the maintained `jsonwebtoken` crate; see [`LocalClaims`] for the
//! claims. They expire natively at the grant's end. Early revocation puts the
//! grant id (`jti`) on a [`RevocationList`] that the verifier consults on every
//! use, so revocation is immediate for every verifier sharing that list.
//!
//! # Catalogue target
//!
//! ```json
//! {"audience": "billing-admin", "scopes": ["refunds:write"]}
//! ```
//!
//! `audience` names the protected service and is required; `scopes` is
//! optional. Any other key is refused when the catalogue loads.
//!
//! # Example
//!
//! ```
//! # async fn demo() -> jit_core::Result<()> {
//! use jit_core::local::{LocalKey, LocalProvider};
//!
//! let provider = LocalProvider::new(LocalKey::generate(), "jit-local");
//! let verifier = provider.verifier();
//! // `provider` goes to the broker; `verifier` (or a `LocalTokenLayer` built
//! // from it) guards the service named by the entitlement's audience.
//! # let _ = (provider, verifier);
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "tower")]
mod layer;
mod verifier;

#[cfg(feature = "tower")]
pub use layer::{LocalTokenLayer, LocalTokenService, ResponseFuture};
pub use verifier::{RevocationList, Verifier};

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, TimeDelta, Utc};
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use jsonwebtoken::{Algorithm, Header};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::{Clock, SystemClock};
use crate::credentials::{Credentials, Secret};
use crate::error::{ConfigError, Error, RequestError, Result};
use crate::provider::ledger::Ledger;
use crate::provider::text::input as printable;
use crate::provider::window::WindowRules;
use crate::provider::{naming, Capabilities, GrantSpec, Issued, Provider, RevocationKind};
use crate::types::MAX_GRANT_DURATION;
use crate::types::{format_duration, Entitlement, GrantId, IssuedGrant, RequestId};

/// The provider name entitlements use by default.
pub const DEFAULT_NAME: &str = "local";
/// The `iss` claim by default.
pub const DEFAULT_ISSUER: &str = "jit-local";
/// The longest token by default: twelve hours.
pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(12 * 3600);
/// How long a revocation (and a ledger entry) is kept after the token's own
/// expiry. The verifier's leeway is capped at this, so pruning a revocation can
/// never make a revoked token acceptable again.
pub const REVOCATION_RETENTION: Duration = Duration::from_secs(300);

const KEY_FIELD: &str = "signing_key";

/// An Ed25519 signing key for local tokens. `Debug` prints only the key id.
pub struct LocalKey {
    signing: SigningKey,
    public: LocalPublicKey,
}

impl LocalKey {
    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Self {
        Self::from_signing(SigningKey::generate(&mut rand_core::OsRng))
    }

    /// Loads a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) Ed25519 key, as
    /// written by [`LocalKey::to_pkcs8_pem`] or `openssl genpkey -algorithm ed25519`.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self> {
        // The parser's message is dropped: it could quote key material.
        let signing = SigningKey::from_pkcs8_pem(pem).map_err(|_| {
            Error::Config(ConfigError::InvalidField {
                entitlement: "settings".into(),
                field: KEY_FIELD.into(),
                message: "not a PKCS#8 PEM Ed25519 private key".into(),
            })
        })?;
        Ok(Self::from_signing(signing))
    }

    /// The key as PKCS#8 PEM, for storing in a secret manager.
    pub fn to_pkcs8_pem(&self) -> Result<Secret> {
        let pem = self
            .signing
            .to_pkcs8_pem(Default::default())
            .map_err(|_| key_config_error("cannot encode the key as PKCS#8"))?;
        Ok(Secret::new(pem.as_str()))
    }

    /// The verifying half.
    pub fn public_key(&self) -> LocalPublicKey {
        self.public.clone()
    }

    /// The public key, base64url without padding (the JWK `x` value).
    pub fn public_key_b64(&self) -> String {
        self.public.to_b64()
    }

    /// The key id placed in each token's header.
    pub fn kid(&self) -> &str {
        self.public.kid()
    }

    fn from_signing(signing: SigningKey) -> Self {
        let public = LocalPublicKey::from_verifying(signing.verifying_key());
        Self { signing, public }
    }

    /// The key as jsonwebtoken's signer takes it (PKCS#8 DER): tests check
    /// that [`LocalProvider`]'s own signing makes the same tokens.
    #[cfg(test)]
    fn encoding_key(&self) -> Result<jsonwebtoken::EncodingKey> {
        let der = self
            .signing
            .to_pkcs8_der()
            .map_err(|_| key_config_error("cannot encode the key as PKCS#8"))?;
        Ok(jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes()))
    }
}

impl fmt::Debug for LocalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKey")
            .field("kid", &self.kid())
            .finish_non_exhaustive()
    }
}

/// Makes jsonwebtoken use RustCrypto. If another crate in the build also
/// enables jsonwebtoken's `aws_lc_rs` feature, jsonwebtoken cannot choose a
/// provider by features and would panic on first use; a provider the host
/// installed itself is kept (installing then fails, which is fine).
fn ensure_crypto_provider() {
    use jsonwebtoken::crypto::{rust_crypto, CryptoProvider};
    let _ = CryptoProvider::install_default(&rust_crypto::DEFAULT_PROVIDER);
}

fn key_config_error(message: &str) -> Error {
    Error::Config(ConfigError::InvalidField {
        entitlement: "settings".into(),
        field: KEY_FIELD.into(),
        message: message.into(),
    })
}

/// An Ed25519 public key that verifies local tokens, with its key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPublicKey {
    bytes: [u8; 32],
    kid: String,
}

impl LocalPublicKey {
    /// From the 32 raw key bytes; refuses bytes that are not a curve point.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self> {
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| public_key_error("not a valid Ed25519 public key"))?;
        Ok(Self::from_verifying(key))
    }

    /// From base64url without padding, as [`LocalPublicKey::to_b64`] writes it.
    pub fn from_b64(b64: &str) -> Result<Self> {
        let raw = URL_SAFE_NO_PAD
            .decode(b64.trim())
            .map_err(|_| public_key_error("not base64url without padding"))?;
        let bytes: [u8; 32] = raw
            .try_into()
            .map_err(|_| public_key_error("an Ed25519 public key is 32 bytes"))?;
        Self::from_bytes(bytes)
    }

    /// Base64url without padding (the JWK `x` value).
    pub fn to_b64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.bytes)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// The key id: the first 8 bytes of the key's SHA-256, in hex.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    fn from_verifying(key: VerifyingKey) -> Self {
        let bytes = key.to_bytes();
        let digest = Sha256::digest(bytes);
        Self {
            bytes,
            kid: hex::encode(&digest[..8]),
        }
    }
}

fn public_key_error(message: &str) -> Error {
    Error::Config(ConfigError::InvalidField {
        entitlement: "settings".into(),
        field: "public_key".into(),
        message: message.into(),
    })
}

/// The claims of a local token. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalClaims {
    /// Issuer.
    pub iss: String,
    /// The principal the grant is for.
    pub sub: String,
    /// The protected service (the entitlement target's `audience`).
    pub aud: String,
    /// The grant id; also the revocation handle.
    pub jti: GrantId,
    /// The request the grant belongs to.
    pub rid: RequestId,
    /// The entitlement id.
    pub ent: String,
    /// Scopes from the entitlement target.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Issued at.
    pub iat: i64,
    /// Not before: the grant's start.
    pub nbf: i64,
    /// Expiry: the grant's end.
    pub exp: i64,
}

impl LocalClaims {
    /// When the token stops working.
    pub fn expires_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.exp, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// Whether the token carries the scope.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// An entitlement target for the local provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTarget {
    /// The protected service; becomes the token's `aud`.
    pub audience: String,
    /// Scopes; become the token's `scopes`.
    pub scopes: Vec<String>,
}

impl LocalTarget {
    /// Parses and checks an entitlement's target.
    pub fn from_entitlement(entitlement: &Entitlement) -> Result<Self> {
        let invalid = |field: &str, message: &str| {
            Error::Config(ConfigError::InvalidField {
                entitlement: entitlement.id.clone(),
                field: field.to_string(),
                message: message.to_string(),
            })
        };
        let map = entitlement.target.as_object().ok_or_else(|| {
            invalid(
                "target",
                "must be a table with `audience` and optional `scopes`",
            )
        })?;
        if let Some(key) = map
            .keys()
            .find(|k| !matches!(k.as_str(), "audience" | "scopes"))
        {
            return Err(invalid(
                &format!("target.{}", printable(key)),
                "unknown key; the local provider takes `audience` and `scopes`",
            ));
        }
        let audience = match map.get("audience") {
            None => return Err(invalid("target.audience", "is required")),
            Some(v) => v
                .as_str()
                .ok_or_else(|| invalid("target.audience", "must be a string"))?,
        };
        if !is_token_text(audience, 256) {
            return Err(invalid(
                "target.audience",
                "must be 1 to 256 characters without spaces or control characters",
            ));
        }
        let scopes = match map.get("scopes") {
            None => Vec::new(),
            Some(v) => {
                let list = v
                    .as_array()
                    .ok_or_else(|| invalid("target.scopes", "must be a list of strings"))?;
                let mut scopes = Vec::with_capacity(list.len());
                for s in list {
                    let s = s
                        .as_str()
                        .ok_or_else(|| invalid("target.scopes", "must be a list of strings"))?;
                    if !is_token_text(s, 128) {
                        return Err(invalid(
                            "target.scopes",
                            "each scope must be 1 to 128 characters without spaces or control characters",
                        ));
                    }
                    scopes.push(s.to_string());
                }
                scopes
            }
        };
        Ok(Self {
            audience: audience.to_string(),
            scopes,
        })
    }
}

fn is_token_text(s: &str, max: usize) -> bool {
    let n = s.chars().count();
    n > 0 && n <= max && !s.chars().any(|c| c.is_control() || c.is_whitespace())
}

#[derive(Debug, Clone)]
struct LedgerEntry {
    claims: LocalClaims,
    issued: IssuedGrant,
}

/// Issues local tokens. See the [module docs](self).
///
/// The ledger of issued grants (for idempotency and [`Provider::find`]) is in
/// memory: after a restart `find` returns `None` for earlier grants, which is
/// safe because their tokens still expire natively and revocations are keyed
/// by grant id, not by ledger entry.
pub struct LocalProvider {
    name: String,
    issuer: String,
    key: LocalKey,
    max_duration: Duration,
    clock: Arc<dyn Clock>,
    revocations: RevocationList,
    /// Earlier keys still accepted (rotation); never used to sign.
    previous: Vec<LocalPublicKey>,
    ledger: Ledger<LedgerEntry>,
}

impl fmt::Debug for LocalProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalProvider")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .field("kid", &self.key.kid())
            .field(
                "previous_kids",
                &self.previous.iter().map(|k| k.kid()).collect::<Vec<_>>(),
            )
            .field("max_duration", &format_duration(self.max_duration))
            .field("revocations", &self.revocations.len())
            .finish_non_exhaustive()
    }
}

/// Builds a [`LocalProvider`]. Deliberately without `Debug`: it holds the signing key.
pub struct LocalProviderBuilder {
    key: LocalKey,
    name: String,
    issuer: String,
    max_duration: Duration,
    clock: Arc<dyn Clock>,
    revocations: RevocationList,
    previous: Vec<LocalPublicKey>,
}

impl LocalProviderBuilder {
    /// The name entitlements use to select this provider (default `local`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The `iss` claim (default `jit-local`).
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = issuer.into();
        self
    }

    /// The longest token (default 12h). Kept between one second and the
    /// crate-wide maximum of seven days.
    pub fn max_duration(mut self, max: Duration) -> Self {
        self.max_duration = max;
        self
    }

    /// The clock for `iat`, pruning and the verifier from [`LocalProvider::verifier`].
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The revocation list to write to; share it with every [`Verifier`].
    pub fn revocations(mut self, revocations: RevocationList) -> Self {
        self.revocations = revocations;
        self
    }

    /// Key rotation: tokens signed with this earlier key stay valid for
    /// [`LocalProvider::verifier`] (and are listed by
    /// [`LocalProvider::public_keys`]), while every new token is signed with
    /// the builder's key. Drop it once the longest grant issued under it has
    /// ended.
    pub fn previous_key(mut self, key: LocalPublicKey) -> Self {
        if key != self.key.public_key() && !self.previous.contains(&key) {
            self.previous.push(key);
        }
        self
    }

    /// The provider.
    pub fn build(self) -> LocalProvider {
        let max_duration = self
            .max_duration
            .clamp(Duration::from_secs(1), MAX_GRANT_DURATION);
        // Whole seconds: JWT times are whole seconds.
        let max_duration = Duration::from_secs(max_duration.as_secs());
        LocalProvider {
            name: self.name,
            issuer: self.issuer,
            key: self.key,
            max_duration,
            clock: self.clock,
            revocations: self.revocations,
            previous: self.previous,
            ledger: Ledger::new(REVOCATION_RETENTION),
        }
    }
}

impl LocalProvider {
    /// A builder with the defaults: name `local`, issuer `jit-local`, 12h
    /// maximum, the system clock and a new revocation list.
    pub fn builder(key: LocalKey) -> LocalProviderBuilder {
        LocalProviderBuilder {
            key,
            name: DEFAULT_NAME.into(),
            issuer: DEFAULT_ISSUER.into(),
            max_duration: DEFAULT_MAX_DURATION,
            clock: Arc::new(SystemClock),
            revocations: RevocationList::new(),
            previous: Vec::new(),
        }
    }

    /// A provider with the defaults and the given issuer.
    pub fn new(key: LocalKey, issuer: impl Into<String>) -> Self {
        Self::builder(key).issuer(issuer).build()
    }

    /// The issuer (`iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The verifying half of the signing key.
    pub fn public_key(&self) -> LocalPublicKey {
        self.key.public_key()
    }

    /// Every key the provider's tokens may be signed with: the signing key
    /// first, then the earlier ones still accepted (rotation).
    pub fn public_keys(&self) -> Vec<LocalPublicKey> {
        std::iter::once(self.public_key())
            .chain(self.previous.iter().cloned())
            .collect()
    }

    /// The revocation list this provider writes to.
    pub fn revocations(&self) -> &RevocationList {
        &self.revocations
    }

    /// A verifier for this provider's tokens: same keys (the earlier ones
    /// too), issuer, revocation list and clock, no leeway.
    pub fn verifier(&self) -> Verifier {
        self.previous.iter().fold(
            Verifier::new(
                self.public_key(),
                self.issuer.clone(),
                self.revocations.clone(),
            )
            .with_clock(self.clock.clone()),
            |v, k| v.with_key(k.clone()),
        )
    }

    fn check_window(&self, spec: &GrantSpec) -> Result<(), RequestError> {
        // Tokens carry `nbf`, so a window may start later; whole-second
        // `exp` is why the kit refuses windows under a second.
        WindowRules::new(&self.name, &self.capabilities())
            .check(spec, self.clock.now())
            .map(|_| ())
    }

    /// The compact JWS `header.claims.signature`, each part base64url
    /// without padding, the header jsonwebtoken's own (`typ`, `alg`, `kid`).
    /// Signed with the Ed25519 key held here: jsonwebtoken's signer takes
    /// the key as PKCS#8 DER and parses it again (deriving the public key
    /// with it) on every call. The token is byte for byte the one
    /// `jsonwebtoken::encode` makes (a test checks), and the [`Verifier`]
    /// checks it with jsonwebtoken.
    fn sign(&self, claims: &LocalClaims) -> Result<Secret> {
        let fail = |part: &str, e: serde_json::Error| Error::ProviderRejected {
            provider: self.name.clone(),
            operation: "issue",
            message: format!("cannot sign the token: cannot encode its {part}: {e}"),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.key.kid().to_string());
        let header = serde_json::to_vec(&header).map_err(|e| fail("header", e))?;
        let claims = serde_json::to_vec(claims).map_err(|e| fail("claims", e))?;
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(claims, &mut token);
        let signature = self.key.signing.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut token);
        Ok(Secret::new(token))
    }

    fn retention(&self) -> TimeDelta {
        TimeDelta::seconds(REVOCATION_RETENTION.as_secs() as i64)
    }
}

/// The grant id behind an [`IssuedGrant`]: from `details.jti`, else from the
/// derived name, so that a record rebuilt from the name alone can be revoked.
fn grant_id_of(provider: &str, issued: &IssuedGrant) -> Result<GrantId> {
    let from_details = issued
        .details
        .get("jti")
        .and_then(|v| v.as_str())
        .and_then(|s| uuid::Uuid::parse_str(s).ok());
    let from_name = || naming::grant_id_from_name(&issued.external_id);
    from_details
        .map(GrantId)
        .or_else(from_name)
        .ok_or_else(|| Error::ProviderRejected {
            provider: provider.to_string(),
            operation: "revoke",
            message: format!(
                "`{}` is not a local grant name and `details.jti` is missing",
                printable(&issued.external_id)
            ),
        })
}

#[async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        // Its ledger is in the process: a token a crashed process signed is
        // unknown to the next, and unrevocable by name (`revoke_by_name` false).
        Capabilities::default()
            .with_native_expiry(true)
            .with_max_duration(self.max_duration)
            .with_revocation(RevocationKind::Immediate)
    }

    fn validate(&self, entitlement: &Entitlement) -> Result<()> {
        LocalTarget::from_entitlement(entitlement).map(|_| ())
    }

    async fn issue(&self, spec: &GrantSpec) -> Result<Issued> {
        self.check_window(spec)?;
        let target = LocalTarget::from_entitlement(&spec.entitlement)?;
        let now = self.clock.now();

        // Re-issuing re-signs the recorded claims: Ed25519 is deterministic, so
        // the caller gets the very same token, and the ledger keeps one entry.
        if let Some(entry) = self.ledger.get(spec.grant_id) {
            let token = self.sign(&entry.claims)?;
            return Ok(Issued {
                credentials: Credentials::LocalToken {
                    token,
                    expires_at: entry.issued.expires_at,
                },
                grant: entry.issued,
            });
        }

        let claims = LocalClaims {
            iss: self.issuer.clone(),
            sub: spec.subject.id.as_str().to_string(),
            aud: target.audience.clone(),
            jti: spec.grant_id,
            rid: spec.request_id,
            ent: spec.entitlement.id.clone(),
            scopes: target.scopes,
            iat: now.timestamp(),
            nbf: spec.starts_at.timestamp(),
            exp: spec.ends_at.timestamp(),
        };
        // `exp` is whole seconds, so the token may end up to a second before
        // the requested end; report what the token really says.
        let expires_at = claims.expires_at();
        let issued = IssuedGrant {
            provider: self.name.clone(),
            external_id: spec.external_name(),
            expires_at,
            details: serde_json::json!({
                "jti": spec.grant_id.to_string(),
                "kid": self.key.kid(),
                "audience": target.audience,
            }),
        };
        let token = self.sign(&claims)?;
        // A concurrent issue of the same grant may have recorded first: keep
        // its entry and hand out its token, so there is one token per grant.
        let new = LedgerEntry { claims, issued };
        let kept = self.ledger.update(spec.grant_id, now, |prev| match prev {
            Some(p) => (p.clone(), p.issued.expires_at),
            None => (new.clone(), expires_at),
        });
        let token = if kept.claims == new.claims {
            token
        } else {
            self.sign(&kept.claims)?
        };
        let issued = kept.issued;
        tracing::debug!(provider = %self.name, grant = %spec.grant_id, "local token issued");
        Ok(Issued {
            credentials: Credentials::LocalToken {
                token,
                expires_at: issued.expires_at,
            },
            grant: issued,
        })
    }

    async fn revoke(&self, issued: &IssuedGrant) -> Result<()> {
        let grant = grant_id_of(&self.name, issued)?;
        // Keep the entry at least as long as the real token lives, even if the
        // caller's record carries an earlier expiry.
        let recorded = self.ledger.expires_at(grant);
        let until = recorded.map_or(issued.expires_at, |r| r.max(issued.expires_at));
        self.revocations.revoke(&grant.to_string(), until);
        self.revocations.prune(self.clock.now() - self.retention());
        tracing::debug!(provider = %self.name, %grant, "local token revoked");
        Ok(())
    }

    async fn find(&self, spec: &GrantSpec) -> Result<Option<IssuedGrant>> {
        Ok(self.ledger.get(spec.grant_id).map(|e| e.issued))
    }

    async fn restore_revocations(&self, revoked: &[IssuedGrant]) -> Result<()> {
        for issued in revoked.iter().filter(|i| i.provider == self.name) {
            let grant = grant_id_of(&self.name, issued)?;
            self.revocations
                .revoke(&grant.to_string(), issued.expires_at);
        }
        self.revocations.prune(self.clock.now() - self.retention());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn pem_round_trip_keeps_the_key_and_debug_hides_it() {
        let key = LocalKey::generate();
        let pem = key.to_pkcs8_pem().unwrap();
        assert!(pem.expose().starts_with("-----BEGIN PRIVATE KEY-----"));
        let again = LocalKey::from_pkcs8_pem(pem.expose()).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        assert_eq!(again.kid(), key.kid());
        assert_eq!(key.kid().len(), 16);

        let dbg = format!("{key:?} {key:#?}");
        assert!(dbg.contains(key.kid()));
        let body: String = pem
            .expose()
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        assert!(!dbg.contains(&body));
        assert!(!format!("{pem:?}").contains(&body));
    }

    /// The provider signs with the dalek key itself; its tokens are the
    /// ones jsonwebtoken makes from the same key and claims, and verify.
    #[tokio::test]
    async fn tokens_are_the_ones_jsonwebtoken_signs() {
        let key = LocalKey::generate();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid().to_string());
        let provider = LocalProvider::new(key, "jit-local");
        let claims = LocalClaims {
            iss: "jit-local".into(),
            sub: "alice".into(),
            aud: "billing".into(),
            jti: GrantId::new(),
            rid: RequestId::new(),
            ent: "billing-admin".into(),
            scopes: vec!["refunds:write".into()],
            iat: 1_700_000_000,
            nbf: 1_700_000_000,
            exp: 4_000_000_000,
        };
        let ours = provider.sign(&claims).unwrap();
        ensure_crypto_provider();
        let theirs =
            jsonwebtoken::encode(&header, &claims, &provider.key.encoding_key().unwrap()).unwrap();
        assert_eq!(ours.expose(), theirs);
        let checked = provider.verifier().verify(ours.expose(), "billing");
        assert_eq!(checked.unwrap().jti, claims.jti);
        // Another key's signature over the same claims is refused.
        let other = LocalProvider::new(LocalKey::generate(), "jit-local");
        let forged = other.sign(&claims).unwrap();
        assert!(provider
            .verifier()
            .verify(forged.expose(), "billing")
            .is_err());
    }

    #[test]
    fn bad_keys_are_config_errors() {
        let err = LocalKey::from_pkcs8_pem(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .err()
        .unwrap();
        assert!(
            matches!(err, Error::Config(ConfigError::InvalidField { ref field, .. }) if field == KEY_FIELD)
        );
        assert!(matches!(
            LocalPublicKey::from_b64("abc"),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            LocalPublicKey::from_b64("!!"),
            Err(Error::Config(_))
        ));
        let pk = LocalKey::generate().public_key();
        assert_eq!(LocalPublicKey::from_b64(&pk.to_b64()).unwrap(), pk);
    }

    #[test]
    fn grant_id_comes_from_details_or_the_derived_name() {
        let id = GrantId::new();
        let mut issued = IssuedGrant {
            provider: "local".into(),
            external_id: crate::provider::external_name(id),
            expires_at: Utc::now(),
            details: serde_json::Value::Null,
        };
        assert_eq!(grant_id_of("local", &issued).unwrap(), id);
        issued.external_id = "something-else".into();
        assert!(matches!(
            grant_id_of("local", &issued),
            Err(Error::ProviderRejected { .. })
        ));
        issued.details = serde_json::json!({"jti": id.to_string()});
        assert_eq!(grant_id_of("local", &issued).unwrap(), id);
    }
}
