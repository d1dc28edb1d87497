//! ARM calls on `azure_core`'s pipeline, the broker's credential from
//! `azure_identity`, and the wire formats (ISO-8601 durations) they share.
//!
//! There is no maintained ARM authorization crate, so each call is a
//! [`Request`] sent through one [`Pipeline`] whose policies add the bearer
//! token ([`BearerTokenAuthorizationPolicy`], per try, so a retried call gets
//! a fresh token) and retry 408/429/5xx and connection failures with
//! azure_core's exponential policy, honouring `Retry-After`
//! (`x-ms-retry-after-ms`, `retry-after-ms`, `Retry-After`). A whole call,
//! retries included, is bounded by [`AzureConfig::call_timeout`]; what is
//! still failing after the last retry is mapped to jit-core's error kinds
//! (the crate's private error, classified by ARM error code).
//!
//! TLS is rustls on ring ([`https_client`]) with the webpki roots plus any
//! roots the caller adds (a private cloud's CA, or a test fake's): the same
//! HTTP client serves ARM and the token endpoint.

use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::{Secret as AzSecret, TokenCredential};
use azure_core::http::policies::auth::BearerTokenAuthorizationPolicy;
use azure_core::http::policies::Policy;
use azure_core::http::{
    ClientOptions, Context, ExponentialRetryOptions, Method, Pipeline, PipelineSendOptions,
    Request, RetryOptions, Transport, Url,
};
use azure_identity::{
    AzureCliCredential, ClientSecretCredential, ClientSecretCredentialOptions,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use serde_json::Value;

use crate::config::{AzureConfig, CredentialKind};
use crate::error::{printable, AzureError};

/// API version of the PIM schedule APIs and role management policies.
pub const PIM_API_VERSION: &str = "2020-10-01";
/// API version of plain role assignments.
pub const ASSIGNMENTS_API_VERSION: &str = "2022-04-01";
/// API version of role definitions (resolving a role's display name).
pub const ROLE_DEFINITIONS_API_VERSION: &str = "2022-04-01";

/// A reqwest client on rustls with ring, trusting the webpki roots and `extra_roots` (DER).
pub fn https_client(extra_roots: &[Vec<u8>]) -> Result<reqwest::Client, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for der in extra_roots {
        roots
            .add(rustls::pki_types::CertificateDer::from(der.clone()))
            .map_err(|e| format!("extra root certificate is not usable: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .https_only(true)
        .build()
        .map_err(|e| format!("http client setup failed: {e}"))
}

/// The certificates (DER) in a PEM text; anything else in it is skipped.
pub fn pem_certificates(pem: &str) -> Vec<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .flatten()
        .map(|c| c.as_ref().to_vec())
        .collect()
}

/// The broker's credential, by configuration, on `client` for its own calls.
pub(crate) fn credential(
    config: &AzureConfig,
    client: &reqwest::Client,
) -> Result<Arc<dyn TokenCredential>, AzureError> {
    let options = || ClientOptions {
        transport: Some(Transport::new(Arc::new(client.clone()))),
        cloud: Some(Arc::new(
            {
                let mut c = azure_core::cloud::CustomConfiguration::default();
                c.authority_host = config.authority_host.clone();
                c
            }
            .into(),
        )),
        ..ClientOptions::default()
    };
    // azure_identity's messages name the credential and the failed step,
    // never the secret.
    let failed = |e: azure_core::Error| AzureError::Setting {
        field: "credential".into(),
        message: printable(&e.to_string()),
    };
    let cred: Arc<dyn TokenCredential> = match config.credential {
        CredentialKind::ClientSecret => {
            let (Some(tenant), Some(client_id), Some(secret)) =
                (&config.tenant_id, &config.client_id, &config.client_secret)
            else {
                return Err(AzureError::Setting {
                    field: "client_secret".into(),
                    message: "tenant_id, client_id and client_secret are required".into(),
                });
            };
            ClientSecretCredential::new(
                tenant,
                client_id.clone(),
                AzSecret::new(secret.expose().to_string()),
                Some(ClientSecretCredentialOptions {
                    client_options: options(),
                }),
            )
            .map_err(failed)?
        }
        CredentialKind::WorkloadIdentity => {
            let mut o = WorkloadIdentityCredentialOptions::default();
            o.credential_options.client_options = options();
            o.tenant_id = config.tenant_id.clone();
            o.client_id = config.client_id.clone();
            WorkloadIdentityCredential::new(Some(o)).map_err(failed)?
        }
        CredentialKind::ManagedIdentity => {
            let o = ManagedIdentityCredentialOptions {
                user_assigned_id: config.client_id.clone().map(UserAssignedId::ClientId),
                client_options: options(),
            };
            ManagedIdentityCredential::new(Some(o)).map_err(failed)?
        }
        CredentialKind::AzureCli => {
            let o = azure_identity::AzureCliCredentialOptions {
                tenant_id: config.tenant_id.clone(),
                ..Default::default()
            };
            AzureCliCredential::new(Some(o)).map_err(failed)?
        }
    };
    Ok(cred)
}

/// What ARM answered with a success status: the JSON body (`Null` when empty).
#[derive(Debug, Clone)]
pub(crate) struct ArmResponse {
    pub body: Value,
}

/// ARM on one pipeline.
#[derive(Clone)]
pub struct ArmClient {
    pipeline: Pipeline,
    endpoint: Url,
    call_timeout: Duration,
}

impl std::fmt::Debug for ArmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmClient")
            .field("endpoint", &self.endpoint.as_str())
            .finish_non_exhaustive()
    }
}

impl ArmClient {
    /// A client for `config.arm_endpoint` with `credential`, sending through `http`.
    pub fn new(
        config: &AzureConfig,
        credential: Arc<dyn TokenCredential>,
        http: reqwest::Client,
    ) -> Result<Self, String> {
        let endpoint = Url::parse(&config.arm_endpoint)
            .map_err(|e| format!("arm endpoint is not a URL: {e}"))?;
        let auth: Arc<dyn Policy> = Arc::new(BearerTokenAuthorizationPolicy::new(
            credential,
            [config.arm_scope()],
        ));
        let retry = ExponentialRetryOptions {
            max_retries: config.max_retries,
            initial_delay: azure_core::time::Duration::milliseconds(200),
            max_delay: azure_core::time::Duration::seconds(10),
            ..Default::default()
        };
        let options = ClientOptions {
            retry: RetryOptions::exponential(retry),
            transport: Some(Transport::new(Arc::new(http))),
            ..ClientOptions::default()
        };
        let pipeline = Pipeline::new(
            Some(env!("CARGO_PKG_NAME")),
            Some(env!("CARGO_PKG_VERSION")),
            options,
            Vec::new(),
            vec![auth],
            None,
        );
        Ok(Self {
            pipeline,
            endpoint,
            call_timeout: config.call_timeout,
        })
    }

    /// Sends one call; any status comes back as a response, transport
    /// failures and timeouts as [`AzureError::Unavailable`].
    pub(crate) async fn send(
        &self,
        call: &'static str,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<ArmResponse, AzureError> {
        let mut url = self.endpoint.clone();
        // Scopes are validated ARM ids: safe path characters only.
        url.set_path(path);
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
        }
        let mut request = Request::new(url, method);
        request.insert_header("accept", "application/json");
        if let Some(b) = body {
            request.insert_header("content-type", "application/json");
            request.set_body(serde_json::to_vec(b).map_err(|_| AzureError::Incomplete {
                call,
                field: "request body",
            })?);
        }
        let ctx = Context::new();
        let sent = self.pipeline.send(
            &ctx,
            &mut request,
            Some(PipelineSendOptions {
                skip_checks: true,
                ..Default::default()
            }),
        );
        let response = match tokio::time::timeout(self.call_timeout, sent).await {
            Err(_) => {
                return Err(AzureError::Unavailable {
                    call,
                    message: format!("timed out after {}s", self.call_timeout.as_secs()),
                })
            }
            Ok(Err(e)) => return Err(transport_error(call, &e)),
            Ok(Ok(r)) => r,
        };
        let status = u16::from(response.status());
        let retry_after = retry_after(response.headers());
        let bytes = response.body().as_ref().to_vec();
        if !(200..300).contains(&status) {
            return Err(AzureError::from_response(call, status, &bytes, retry_after));
        }
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|_| AzureError::Incomplete {
                call,
                field: "body",
            })?
        };
        Ok(ArmResponse { body })
    }
}

/// A pipeline error: the token could not be had, or the request could not be sent.
fn transport_error(call: &'static str, e: &azure_core::Error) -> AzureError {
    use azure_core::error::ErrorKind;
    let what = match e.kind() {
        ErrorKind::Credential => "the broker's azure credential could not get a token",
        ErrorKind::Io | ErrorKind::Connection => "connection failed",
        _ => "request failed",
    };
    // The error text of azure_identity names the credential and the Entra
    // error, never the secret or a token; clipped like any wire text.
    AzureError::Unavailable {
        call,
        message: format!("{what}: {}", crate::error::clip(&e.to_string())),
    }
}

fn retry_after(headers: &azure_core::http::headers::Headers) -> Option<Duration> {
    jit_core::provider::http::retry_after_from_headers(
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        chrono::Utc::now(),
    )
}

/// Parses an ISO-8601 duration as ARM writes them (`P90D`, `PT8H`,
/// `P1DT2H30M`, `PT0.5H` is refused). Years and months count as 365 and 30
/// days: they only appear in policy maximums, where an upper bound suffices.
pub fn parse_iso_duration(s: &str) -> Option<Duration> {
    let rest = s.trim().strip_prefix(['P', 'p'])?;
    if rest.is_empty() {
        return None;
    }
    let (date, time) = match rest.split_once(['T', 't']) {
        Some((d, t)) if !t.is_empty() => (d, Some(t)),
        Some(_) => return None,
        None => (rest, None),
    };
    let mut total: u64 = 0;
    let mut eat = |part: &str, units: &[(char, u64)]| -> Option<()> {
        let mut num = String::new();
        let mut last = 0usize;
        for c in part.chars() {
            if c.is_ascii_digit() {
                num.push(c);
            } else {
                let i = units.iter().position(|(u, _)| u.eq_ignore_ascii_case(&c))?;
                // Units in order, each at most once.
                if i < last || num.is_empty() {
                    return None;
                }
                last = i + 1;
                let n: u64 = num.parse().ok()?;
                total = total.checked_add(n.checked_mul(units[i].1)?)?;
                num.clear();
            }
        }
        num.is_empty().then_some(())
    };
    eat(
        date,
        &[
            ('Y', 365 * 86400),
            ('M', 30 * 86400),
            ('W', 7 * 86400),
            ('D', 86400),
        ],
    )?;
    if let Some(t) = time {
        eat(t, &[('H', 3600), ('M', 60), ('S', 1)])?;
    }
    Some(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn iso_durations_round_trip() {
        use jit_core::provider::window::iso8601;
        for (secs, text) in [
            (2700, "PT45M"),
            (5400, "PT1H30M"),
            (8 * 3600, "PT8H"),
            (90, "PT1M30S"),
            (30 * 3600 + 1, "PT30H1S"),
        ] {
            assert_eq!(iso8601(Duration::from_secs(secs)), text);
            assert_eq!(parse_iso_duration(text), Some(Duration::from_secs(secs)));
        }
        assert_eq!(
            parse_iso_duration("P90D"),
            Some(Duration::from_secs(90 * 86400))
        );
        assert_eq!(
            parse_iso_duration("P1DT2H"),
            Some(Duration::from_secs(26 * 3600))
        );
        for bad in [
            "", "P", "PT", "8H", "PT8", "PTH", "PT1M1H", "PT0.5H", "P1DT", "PT1H1H",
        ] {
            assert_eq!(parse_iso_duration(bad), None, "{bad}");
        }
    }
}
