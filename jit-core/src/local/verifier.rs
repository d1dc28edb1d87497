//! Checking local tokens: signature, issuer, audience, time and revocation.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::{ensure_crypto_provider, printable, LocalClaims, LocalPublicKey, REVOCATION_RETENTION};
use crate::clock::{Clock, SystemClock};
use crate::error::TokenError;

/// Revoked grant ids (`jti`), each kept until its token's expiry.
///
/// Cloning shares the same list. It lives in memory, in the broker's
/// process: a restarted broker refills it from its store on the reaper's
/// first tick ([`crate::Broker::restore_revocations`]), so a restart does not
/// revive a revoked token. Verifiers in other processes do not see it: they
/// ask the broker instead (the vending server's `POST /v1/introspect`
/// answers from the store, on every replica).
#[derive(Clone, Default)]
pub struct RevocationList(Arc<Mutex<HashMap<String, DateTime<Utc>>>>);

impl RevocationList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Revokes `jti` until `expires_at`. Idempotent; a later expiry wins.
    pub fn revoke(&self, jti: &str, expires_at: DateTime<Utc>) {
        let mut map = self.lock();
        let until = map.entry(jti.to_string()).or_insert(expires_at);
        if expires_at > *until {
            *until = expires_at;
        }
    }

    /// Whether `jti` is revoked.
    pub fn is_revoked(&self, jti: &str) -> bool {
        self.lock().contains_key(jti)
    }

    /// Drops entries whose tokens expired before `now`, which fail on `exp`
    /// anyway; returns how many were dropped. Pass a time at least the
    /// verifiers' leeway in the past.
    pub fn prune(&self, now: DateTime<Utc>) -> usize {
        let mut map = self.lock();
        let before = map.len();
        map.retain(|_, until| *until >= now);
        before - map.len()
    }

    /// How many entries the list holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, DateTime<Utc>>> {
        // Plain data: a panic in another holder cannot leave it inconsistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl fmt::Debug for RevocationList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevocationList")
            .field("len", &self.len())
            .finish()
    }
}

/// Verifies local tokens for one service.
///
/// Accepts only `EdDSA` tokens whose header `kid` names one of its keys (add
/// the next key before rotating the signer, drop the old one once its tokens
/// expired). jsonwebtoken checks the signature; issuer, audience, `nbf`/`exp`
/// (against the injected clock) and the revocation list are checked here.
#[derive(Clone)]
pub struct Verifier {
    keys: HashMap<String, LocalPublicKey>,
    issuer: String,
    revocations: RevocationList,
    clock: Arc<dyn Clock>,
    leeway: TimeDelta,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<&String> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("Verifier")
            .field("kids", &kids)
            .field("issuer", &self.issuer)
            .field("leeway_secs", &self.leeway.num_seconds())
            .field("revocations", &self.revocations)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for tokens signed by `key` with issuer `issuer`, consulting
    /// `revocations`, with the system clock and no leeway.
    pub fn new(
        key: LocalPublicKey,
        issuer: impl Into<String>,
        revocations: RevocationList,
    ) -> Self {
        let mut keys = HashMap::new();
        keys.insert(key.kid().to_string(), key);
        Self {
            keys,
            issuer: issuer.into(),
            revocations,
            clock: Arc::new(SystemClock),
            leeway: TimeDelta::zero(),
        }
    }

    /// Also accepts tokens signed by `key` (key rotation).
    pub fn with_key(mut self, key: LocalPublicKey) -> Self {
        self.keys.insert(key.kid().to_string(), key);
        self
    }

    /// Uses `clock` for `nbf` and `exp`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Tolerates this much clock skew on `nbf` and `exp`. Capped at
    /// [`REVOCATION_RETENTION`], so a pruned revocation cannot be accepted again.
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        let secs = leeway.min(REVOCATION_RETENTION).as_secs();
        self.leeway = TimeDelta::seconds(secs as i64);
        self
    }

    /// The key ids accepted.
    pub fn kids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self.keys.keys().cloned().collect();
        kids.sort();
        kids
    }

    /// Checks a token for `expected_audience` and returns its claims.
    pub fn verify(&self, token: &str, expected_audience: &str) -> Result<LocalClaims, TokenError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        // `alg: none` and unknown algorithms fail here: jsonwebtoken's header
        // type has no such variant.
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| TokenError::Invalid("malformed token".into()))?;
        // Checked before any key is touched, so an attacker cannot pick the
        // algorithm (HS256 keyed with our public key, RS256, ...).
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Invalid(format!(
                "algorithm `{:?}` is not accepted; only `EdDSA` is",
                header.alg
            )));
        }
        if header.crit.is_some() {
            return Err(TokenError::Invalid(
                "critical header extensions are not supported".into(),
            ));
        }
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| TokenError::Invalid("token has no key id".into()))?;
        let key = self
            .keys
            .get(kid)
            .ok_or_else(|| TokenError::Invalid(format!("unknown key id `{}`", printable(kid))))?;
        // jsonwebtoken's EdDSA verifier takes the 32 raw public key bytes.
        let decoding = DecodingKey::from_ed_der(key.as_bytes());

        ensure_crypto_provider();
        let mut validation = Validation::new(Algorithm::EdDSA);
        // Time, audience and issuer are checked below against the injected
        // clock and with typed errors; the claims type makes every field required.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<LocalClaims>(token, &decoding, &validation)
            .map_err(|e| {
                TokenError::Invalid(
                    match e.kind() {
                        ErrorKind::InvalidSignature => "bad signature",
                        ErrorKind::InvalidAlgorithm => "algorithm not accepted",
                        ErrorKind::Json(_) => "claims are not local token claims",
                        _ => "malformed token",
                    }
                    .into(),
                )
            })?
            .claims;

        if claims.iss != self.issuer {
            return Err(TokenError::Invalid(format!(
                "issuer `{}` is not trusted",
                printable(&claims.iss)
            )));
        }
        if claims.aud != expected_audience {
            return Err(TokenError::WrongAudience(expected_audience.to_string()));
        }
        let now = self.clock.now().timestamp();
        let leeway = self.leeway.num_seconds();
        // RFC 7519: not accepted on or after `exp`.
        if now >= claims.exp.saturating_add(leeway) {
            return Err(TokenError::Expired);
        }
        if now.saturating_add(leeway) < claims.nbf {
            return Err(TokenError::Invalid("token is not valid yet".into()));
        }
        let jti = claims.jti.to_string();
        if self.revocations.is_revoked(&jti) {
            return Err(TokenError::Revoked(jti));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn revocation_list_keeps_the_later_expiry_and_prunes() {
        let list = RevocationList::new();
        let t0 = DateTime::from_timestamp(1_000_000, 0).unwrap();
        list.revoke("a", t0);
        list.revoke("a", t0 - TimeDelta::seconds(10));
        list.revoke("b", t0 + TimeDelta::seconds(100));
        assert_eq!(list.len(), 2);
        assert!(list.is_revoked("a"));
        assert!(!list.is_revoked("c"));
        // Shared through clones.
        let other = list.clone();
        assert_eq!(other.prune(t0 + TimeDelta::seconds(1)), 1);
        assert!(!list.is_revoked("a"));
        assert!(list.is_revoked("b"));
        assert_eq!(list.prune(t0), 0);
        assert!(!list.is_empty());
    }

    #[test]
    fn leeway_is_capped() {
        let v = Verifier::new(
            super::super::LocalKey::generate().public_key(),
            "i",
            RevocationList::new(),
        )
        .with_leeway(Duration::from_secs(86_400));
        assert_eq!(
            v.leeway.num_seconds(),
            REVOCATION_RETENTION.as_secs() as i64
        );
    }
}
