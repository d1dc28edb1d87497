//! The fake servers' TLS: one throwaway certificate authority per test
//! process, and a server certificate per fake signed by it.
//!
//! One CA for the whole process (not one per server) because some clients
//! read their trusted roots once, from a file named by an environment
//! variable, when they are first built: a test process can then point that
//! variable at [`TestCa::pem_path`] once and trust every fake it starts.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The names every fake's certificate is valid for: the loopback addresses
/// a fake binds, and `localhost`.
pub const SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The test process's certificate authority (see [`test_ca`]).
///
/// Only its certificate leaves this module: the key signs the fakes'
/// certificates and nothing else.
pub struct TestCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    pem_path: OnceLock<Result<PathBuf, String>>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// The certificate authority of this test process, made on first use.
///
/// # Panics
/// When the key or certificate cannot be generated (a broken crypto
/// backend): no fake can serve HTTPS then, and the test fails.
pub fn test_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| TestCa::generate().expect("cannot generate the test CA"))
}

impl TestCa {
    fn generate() -> Result<Self, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params
            .distinguished_name
            .push(DnType::CommonName, "jit-core test CA (throwaway)");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            pem_path: OnceLock::new(),
        })
    }

    /// The CA certificate, PEM-encoded: what a client adds to its trusted
    /// roots (for reqwest, `Certificate::from_pem(ca.pem().as_bytes())`).
    pub fn pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER-encoded.
    pub fn der(&self) -> &[u8] {
        &self.cert_der
    }

    /// A file holding [`pem`](Self::pem), written once per process under
    /// the system's temporary directory: for clients that only take a path
    /// (`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`-style settings).
    pub fn pem_path(&self) -> io::Result<PathBuf> {
        self.pem_path
            .get_or_init(|| {
                let path = std::env::temp_dir().join(format!(
                    "jit-core-test-ca-{}-{:x}.pem",
                    std::process::id(),
                    // Two test processes with the same pid (containers) must
                    // not trust each other's CA file by accident.
                    fingerprint(&self.cert_der)
                ));
                std::fs::write(&path, &self.cert_pem)
                    .map(|()| path)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(io::Error::other)
    }

    /// A fresh server certificate for [`SERVER_NAMES`], signed by this CA,
    /// with its key.
    pub(crate) fn server_identity(&self) -> Result<ServerIdentity, rcgen::Error> {
        let mut params = CertificateParams::new(
            SERVER_NAMES
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )?;
        params
            .distinguished_name
            .push(DnType::CommonName, "jit-core fake server");
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ServerIdentity {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        })
    }
}

fn fingerprint(der: &[u8]) -> u64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(der);
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// A fake server's certificate and key.
pub(crate) struct ServerIdentity {
    pub(crate) cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl ServerIdentity {
    /// A rustls server configuration on the ring provider (not the process
    /// default, which an SDK in the same test binary may have installed),
    /// HTTP/1.1 only.
    pub(crate) fn server_config(&self) -> io::Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert_der.clone(), test_ca().cert_der.clone()], key)
            .map_err(io::Error::other)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}
