//! What a provider can do, as data.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::types::MAX_GRANT_DURATION;

/// How a provider takes access away before its natural end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RevocationKind {
    /// Stops working at once (a revocation list checked on every use, a deleted assignment).
    Immediate,
    /// A deny policy that the cloud propagates within the given time.
    DenyPolicy {
        /// Typical worst-case propagation.
        propagation: Duration,
    },
    /// A change of the cloud's own access policy (a removed IAM binding, a
    /// removed role assignment) that takes effect within the given time.
    Propagates {
        /// Typical worst-case propagation.
        within: Duration,
    },
    /// Cannot be revoked early (a GCP access token): such requests are refused
    /// when early revocation is required, never faked.
    None,
}

impl RevocationKind {
    /// Whether early revocation exists at all.
    pub fn can_revoke(&self) -> bool {
        !matches!(self, RevocationKind::None)
    }

    /// How long after a successful revoke the access may still work.
    pub fn delay(&self) -> Duration {
        match self {
            RevocationKind::Immediate | RevocationKind::None => Duration::ZERO,
            RevocationKind::DenyPolicy { propagation } => *propagation,
            RevocationKind::Propagates { within } => *within,
        }
    }
}

/// What a provider can do, as data: the broker and the tests branch on
/// this, never on provider names.
///
/// `#[non_exhaustive]` with a [`Default`]: a field added later breaks no
/// provider. Outside this crate build it from the default with the `with_*`
/// methods:
///
/// ```
/// use std::time::Duration;
/// use jit_core::provider::{Capabilities, RevocationKind};
///
/// let caps = Capabilities::default()
///     .with_native_expiry(true)
///     .with_min_duration(Duration::from_secs(900))
///     .with_max_duration(Duration::from_secs(3600))
///     .with_revocation(RevocationKind::Immediate);
/// assert!(caps.native_expiry);
/// assert_eq!(caps.max_duration, Duration::from_secs(3600));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Capabilities {
    /// Whether the access expires at the provider without the broker's help.
    /// When false the broker's reaper revokes it at the end (default false:
    /// a provider must claim native expiry, never get it by omission).
    pub native_expiry: bool,
    /// The longest grant the provider can mint (default: the crate-wide
    /// [`MAX_GRANT_DURATION`]).
    pub max_duration: Duration,
    /// The shortest grant the provider can mint (AWS: 15 minutes; default one second).
    pub min_duration: Duration,
    /// How early revocation works (default [`RevocationKind::None`]: a
    /// provider must claim it can revoke).
    pub revocation: RevocationKind,
    /// Whether [`Provider::revoke`](super::Provider::revoke) works on a
    /// record rebuilt from the grant's derived name alone
    /// ([`Provider::record_by_name`](super::Provider::record_by_name)),
    /// whether or not anything was minted under that name (AWS: a deny on
    /// the session name). The broker's reconciler then revokes a grant
    /// interrupted mid-issue that [`Provider::find`](super::Provider::find)
    /// cannot see, instead of assuming nothing was minted. False (the
    /// default) for providers that can find everything they minted, or
    /// that need what `issue` returned to revoke.
    pub revoke_by_name: bool,
    /// Whether [`Provider::tidy`](super::Provider::tidy) has housekeeping
    /// to do at the provider (GCP: expired conditional bindings, which
    /// Google never removes and which count toward a policy's limits). The
    /// reaper calls `tidy` on its own slower cadence only for providers
    /// that say so (default false).
    pub tidy: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            native_expiry: false,
            max_duration: MAX_GRANT_DURATION,
            min_duration: Duration::from_secs(1),
            revocation: RevocationKind::None,
            revoke_by_name: false,
            tidy: false,
        }
    }
}

impl Capabilities {
    /// Sets [`Capabilities::native_expiry`].
    pub fn with_native_expiry(mut self, native: bool) -> Self {
        self.native_expiry = native;
        self
    }

    /// Sets [`Capabilities::max_duration`].
    pub fn with_max_duration(mut self, max: Duration) -> Self {
        self.max_duration = max;
        self
    }

    /// Sets [`Capabilities::min_duration`].
    pub fn with_min_duration(mut self, min: Duration) -> Self {
        self.min_duration = min;
        self
    }

    /// Sets [`Capabilities::revocation`].
    pub fn with_revocation(mut self, revocation: RevocationKind) -> Self {
        self.revocation = revocation;
        self
    }

    /// Sets [`Capabilities::revoke_by_name`].
    pub fn with_revoke_by_name(mut self, by_name: bool) -> Self {
        self.revoke_by_name = by_name;
        self
    }

    /// Sets [`Capabilities::tidy`].
    pub fn with_tidy(mut self, tidy: bool) -> Self {
        self.tidy = tidy;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_claims_nothing() {
        let caps = Capabilities::default();
        assert!(!caps.native_expiry);
        assert!(!caps.revoke_by_name);
        assert!(!caps.tidy);
        assert_eq!(caps.revocation, RevocationKind::None);
        assert!(!caps.revocation.can_revoke());
        assert_eq!(caps.max_duration, MAX_GRANT_DURATION);
    }

    #[test]
    fn revocation_delay_is_the_propagation() {
        let d = Duration::from_secs(60);
        assert_eq!(RevocationKind::Immediate.delay(), Duration::ZERO);
        assert_eq!(RevocationKind::DenyPolicy { propagation: d }.delay(), d);
        assert_eq!(RevocationKind::Propagates { within: d }.delay(), d);
        assert!(RevocationKind::Propagates { within: d }.can_revoke());
    }
}
