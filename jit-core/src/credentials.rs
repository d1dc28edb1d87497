//! Credentials handed to the requester. Secret parts are zeroized on drop and
//! never printed: `Debug` shows `** redacted **`, there is no `Display`, and
//! `Serialize` is deliberately not implemented for the secret wrapper, so a
//! credential can only leave the process through [`Secret::expose`].

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};

/// A secret string, shared behind an `Arc`, zeroized when the last copy drops.
#[derive(Clone)]
pub struct Secret(Arc<SecretString>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(Arc::new(SecretString::from(value.into())))
    }

    /// The secret value. Call this only where the value must leave the process
    /// (an HTTP response to its owner, a child process's environment).
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("** redacted **")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        // Not constant time: only used by tests comparing credentials they made.
        self.expose() == other.expose()
    }
}

/// What a requester receives.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Credentials {
    /// A signed local bearer token.
    LocalToken {
        /// The token.
        token: Secret,
        /// Its expiry.
        expires_at: DateTime<Utc>,
    },
    /// AWS temporary credentials.
    Aws {
        /// Access key id (not secret, but identifying).
        access_key_id: String,
        /// Secret access key.
        secret_access_key: Secret,
        /// Session token.
        session_token: Secret,
        /// Expiry as returned by STS.
        expires_at: DateTime<Utc>,
    },
    /// An OAuth 2 access token (GCP service account impersonation).
    AccessToken {
        /// The token.
        token: Secret,
        /// Its expiry.
        expires_at: DateTime<Utc>,
    },
    /// Access bound to the principal's own identity (an Azure role assignment,
    /// a GCP conditional binding): nothing secret to hand over. What was
    /// assigned is said twice: as text for people, and in the structured,
    /// non-secret fields below for programs (`jit exec` puts them into the
    /// child's environment). A field is `None` where a provider has nothing
    /// to put there.
    Assignment {
        /// Human description of what was granted.
        description: String,
        /// Where the role holds: an Azure scope id, a GCP resource name.
        scope: Option<String>,
        /// The role as the cloud identifies it: an Azure role definition id,
        /// a GCP role name (`roles/viewer`).
        role: Option<String>,
        /// The role's display name, where `role` is an id people do not
        /// read (Azure: `Reader`).
        role_name: Option<String>,
        /// Who holds it, as the cloud names them: an Entra object id, a GCP
        /// member (`user:alice@example.com`).
        principal: Option<String>,
        /// When it ends.
        expires_at: DateTime<Utc>,
    },
}

impl Credentials {
    /// When these credentials stop working.
    pub fn expires_at(&self) -> DateTime<Utc> {
        match self {
            Credentials::LocalToken { expires_at, .. }
            | Credentials::Aws { expires_at, .. }
            | Credentials::AccessToken { expires_at, .. }
            | Credentials::Assignment { expires_at, .. } => *expires_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_masks_every_secret_field() {
        let c = Credentials::Aws {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: Secret::new("wJalrXUtnFEMI-SECRET"),
            session_token: Secret::new("FwoGZXIvYXdzE-TOKEN"),
            expires_at: Utc::now(),
        };
        let s = format!("{c:?} {c:#?}");
        assert!(!s.contains("wJalrXUtnFEMI-SECRET"));
        assert!(!s.contains("FwoGZXIvYXdzE-TOKEN"));
        assert!(s.contains("** redacted **"));
        assert!(s.contains("ASIAEXAMPLE"));
    }
}
