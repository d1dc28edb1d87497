//! Test service-account keys: an RSA key pair generated in the test, its
//! key file JSON for google-cloud-auth, and its public half for the fake.

use std::fmt;
use std::sync::{Arc, OnceLock};

use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::{RsaPrivateKey, RsaPublicKey};
use secrecy::{ExposeSecret, SecretString};

/// A service account's test key. `Debug` never shows the private half.
#[derive(Clone)]
pub struct TestKey {
    /// The account (`name@project.iam.gserviceaccount.com`).
    pub client_email: String,
    /// The key id (`kid` of the JWTs it signs).
    pub key_id: String,
    private_pem: Arc<SecretString>,
    /// The public half, which the fake verifies signatures with.
    pub public: RsaPublicKey,
}

impl fmt::Debug for TestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestKey")
            .field("client_email", &self.client_email)
            .field("key_id", &self.key_id)
            .field("private_key", &"** redacted **")
            .finish()
    }
}

/// One 2,048-bit key per test process: generating RSA keys is slow in
/// debug builds, and what the tests need is a key nobody else has, not a
/// new one per account.
fn shared_private_key() -> &'static RsaPrivateKey {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| {
        RsaPrivateKey::new(&mut rand_core::OsRng, 2048).expect("rsa key generation failed")
    })
}

impl TestKey {
    /// A key for `client_email` (the process's test key pair, a fresh key id).
    pub fn generate(client_email: &str) -> Self {
        let private = shared_private_key();
        let pem = private
            .to_pkcs8_pem(LineEnding::LF)
            .expect("pkcs8 encoding failed");
        Self {
            client_email: client_email.to_string(),
            key_id: uuid::Uuid::new_v4().simple().to_string(),
            private_pem: Arc::new(SecretString::from(pem.to_string())),
            public: RsaPublicKey::from(private),
        }
    }

    /// The private key in PEM (PKCS #8), for a key file.
    pub fn private_pem(&self) -> &str {
        self.private_pem.expose_secret()
    }

    /// The service-account key file JSON, with `token_uri` pointing at `token_uri`.
    pub fn key_file_json(&self, token_uri: &str) -> serde_json::Value {
        let project = self
            .client_email
            .split('@')
            .nth(1)
            .and_then(|d| d.split('.').next())
            .unwrap_or("test-project");
        serde_json::json!({
            "type": "service_account",
            "project_id": project,
            "private_key_id": self.key_id,
            "private_key": self.private_pem(),
            "client_email": self.client_email,
            "client_id": "100000000000000000001",
            "token_uri": token_uri,
            "universe_domain": "googleapis.com",
        })
    }

    /// google-cloud-auth credentials for this key (the real service-account flow).
    pub fn credentials(&self, token_uri: &str) -> google_cloud_auth::credentials::Credentials {
        crate::client::service_account_credentials(self.key_file_json(token_uri))
            .expect("test key rejected by google-cloud-auth")
    }

    /// Signs `header.claims` (both JSON) as an RS256 JWT: for tests that
    /// talk to the fake's token endpoint directly.
    pub fn sign_jwt(&self, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        use rsa::signature::{SignatureEncoding, Signer};
        let signing: rsa::pkcs1v15::SigningKey<sha2::Sha256> =
            rsa::pkcs1v15::SigningKey::new(shared_private_key().clone());
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = signing.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_private_key() {
        let k = TestKey::generate("broker@test-project.iam.gserviceaccount.com");
        let d = format!("{k:?} {k:#?}");
        assert!(!d.contains("PRIVATE KEY"), "{d}");
        assert!(!d.contains(&k.private_pem()[40..80]), "{d}");
        assert!(d.contains("redacted"));
        assert!(k.private_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
    }
}
