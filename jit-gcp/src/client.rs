//! The Google API calls, through the official `google-cloud-*` clients.
//!
//! | call | API | client |
//! | --- | --- | --- |
//! | `getIamPolicy` / `setIamPolicy` of a project, folder or organization | Resource Manager v3 | `google-cloud-resourcemanager-v3` |
//! | `getIamPolicy` / `setIamPolicy` of a service account | IAM v1 | `google-cloud-iam-admin-v1` |
//! | `generateAccessToken` | IAM Service Account Credentials v1 | `google-cloud-iam-credentials-v1` |
//!
//! Service accounts' policies go through `google-cloud-iam-admin-v1`, not
//! the generic `IAMPolicy` client of `google-cloud-iam-v1` (whose model
//! types are used everywhere): IAM v1's `serviceAccounts.getIamPolicy`
//! takes the requested policy version as the query parameter
//! `options.requestedPolicyVersion` (see its discovery document), which the
//! admin client sends and the generic client does not (it puts it in a
//! body the method does not define).
//!
//! The broker's identity comes from `google-cloud-auth`
//! ([`credentials()`]): Application Default Credentials, the metadata
//! server, or a service-account key file. TLS is rustls with ring's crypto
//! provider, installed process-wide when the first client is built unless
//! the application installed one.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use google_cloud_auth::credentials::{self, Credentials};
use google_cloud_iam_v1::model::{GetPolicyOptions, Policy};
use google_cloud_wkt::FieldMask;

use crate::binding::POLICY_VERSION;
use crate::config::{CredentialSource, GcpConfig};
use crate::error::{printable, GcpError};
use crate::target::Resource;

/// Installs ring as rustls's process-wide crypto provider unless one is
/// installed already (the google-cloud crates are built without their
/// default aws-lc provider; signing a service-account JWT and TLS both need one).
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing the race to another installer is fine: one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The broker's Google credentials for `source`.
pub fn credentials(source: &CredentialSource) -> jit_core::Result<Credentials> {
    install_crypto_provider();
    let setting = |message: String| {
        GcpError::Setting {
            field: "credentials".into(),
            message,
        }
        .into_core("gcp", "configure")
    };
    match source {
        CredentialSource::Adc => credentials::Builder::default().build().map_err(|e| {
            setting(format!(
                "application default credentials: {}",
                clean(&e.to_string())
            ))
        }),
        CredentialSource::Metadata => credentials::mds::Builder::default().build().map_err(|e| {
            setting(format!(
                "metadata server credentials: {}",
                clean(&e.to_string())
            ))
        }),
        CredentialSource::KeyFile(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| setting(format!("cannot read key file `{}`: {e}", path.display())))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|_| setting(format!("key file `{}` is not json", path.display())))?;
            service_account_credentials(json)
                .map_err(|m| setting(format!("key file `{}`: {m}", path.display())))
        }
    }
}

/// Credentials from a service-account key (JSON). The error never quotes the key.
pub fn service_account_credentials(key: serde_json::Value) -> Result<Credentials, String> {
    install_crypto_provider();
    if key.get("type").and_then(|t| t.as_str()) != Some("service_account") {
        return Err("`type` is not `service_account`".into());
    }
    credentials::service_account::Builder::new(key)
        .build()
        .map_err(|e| clean(&e.to_string()))
}

/// An error text without anything that looks like key material.
fn clean(s: &str) -> String {
    if s.contains("PRIVATE KEY") {
        "the key could not be used".into()
    } else {
        printable(s)
    }
}

/// The clients jit-gcp calls, each pointed at its endpoint.
#[derive(Clone, Debug)]
pub struct GcpClients {
    projects: google_cloud_resourcemanager_v3::client::Projects,
    folders: google_cloud_resourcemanager_v3::client::Folders,
    organizations: google_cloud_resourcemanager_v3::client::Organizations,
    iam: google_cloud_iam_admin_v1::client::Iam,
    credentials: google_cloud_iam_credentials_v1::client::IAMCredentials,
    timeout: Duration,
}

/// A freshly minted access token.
pub(crate) struct AccessToken {
    pub(crate) token: jit_core::Secret,
    pub(crate) expires_at: DateTime<Utc>,
}

impl GcpClients {
    /// Builds every client with `credentials`, pointed at the endpoints of `config`.
    pub async fn new(config: &GcpConfig, credentials: Credentials) -> jit_core::Result<Self> {
        install_crypto_provider();
        let err = |api: &str, e: &dyn std::fmt::Display| {
            GcpError::Setting {
                field: "endpoint".into(),
                message: format!("cannot build the {api} client: {}", clean(&e.to_string())),
            }
            .into_core(&config.name, "configure")
        };
        macro_rules! build {
            ($client:ty, $endpoint:expr, $api:literal) => {
                <$client>::builder()
                    .with_endpoint($endpoint.clone())
                    .with_credentials(credentials.clone())
                    .build()
                    .await
                    .map_err(|e| err($api, &e))?
            };
        }
        Ok(Self {
            projects: build!(
                google_cloud_resourcemanager_v3::client::Projects,
                config.resource_manager_endpoint,
                "resource manager"
            ),
            folders: build!(
                google_cloud_resourcemanager_v3::client::Folders,
                config.resource_manager_endpoint,
                "resource manager"
            ),
            organizations: build!(
                google_cloud_resourcemanager_v3::client::Organizations,
                config.resource_manager_endpoint,
                "resource manager"
            ),
            iam: build!(
                google_cloud_iam_admin_v1::client::Iam,
                config.iam_endpoint,
                "iam"
            ),
            credentials: build!(
                google_cloud_iam_credentials_v1::client::IAMCredentials,
                config.iam_credentials_endpoint,
                "iam credentials"
            ),
            timeout: config.call_timeout,
        })
    }

    async fn bounded<T>(
        &self,
        call: &'static str,
        resource: &str,
        f: impl std::future::Future<Output = Result<T, google_cloud_gax::error::Error>>,
    ) -> Result<T, GcpError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(GcpError::from_gax(call, resource, &e)),
            Err(_) => Err(GcpError::Unavailable {
                call,
                message: "timed out".into(),
            }),
        }
    }

    /// `getIamPolicy` with `requestedPolicyVersion: 3`.
    pub(crate) async fn get_policy(&self, resource: &Resource) -> Result<Policy, GcpError> {
        let name = resource.name().to_string();
        let options = GetPolicyOptions::new().set_requested_policy_version(POLICY_VERSION);
        let call = "getIamPolicy";
        match resource {
            Resource::Project(_) => {
                let f = self
                    .projects
                    .get_iam_policy()
                    .set_resource(&name)
                    .set_options(options)
                    .send();
                self.bounded(call, &name, f).await
            }
            Resource::Folder(_) => {
                let f = self
                    .folders
                    .get_iam_policy()
                    .set_resource(&name)
                    .set_options(options)
                    .send();
                self.bounded(call, &name, f).await
            }
            Resource::Organization(_) => {
                let f = self
                    .organizations
                    .get_iam_policy()
                    .set_resource(&name)
                    .set_options(options)
                    .send();
                self.bounded(call, &name, f).await
            }
            Resource::ServiceAccount(_) => {
                let f = self
                    .iam
                    .get_iam_policy()
                    .set_resource(&name)
                    .set_options(options)
                    .send();
                self.bounded(call, &name, f).await
            }
        }
    }

    /// `setIamPolicy` of the whole policy, with the etag it carries and
    /// version 3. The update mask names `bindings` and `etag` only, so the
    /// policy's audit configuration is never written by us.
    pub(crate) async fn set_policy(
        &self,
        resource: &Resource,
        policy: Policy,
    ) -> Result<Policy, GcpError> {
        let name = resource.name().to_string();
        let call = "setIamPolicy";
        if policy.etag.is_empty() || policy.version != POLICY_VERSION {
            // Never reached through `provider`; a guard against a future edit
            // that would silently drop every condition in the policy.
            return Err(GcpError::Unsafe {
                call,
                message: format!(
                    "refusing to write the policy of `{name}` without an etag or below version 3"
                ),
            });
        }
        let mask = FieldMask::default().set_paths(["bindings", "etag"]);
        match resource {
            Resource::Project(_) => {
                let f = self
                    .projects
                    .set_iam_policy()
                    .set_resource(&name)
                    .set_policy(policy)
                    .set_update_mask(mask)
                    .send();
                self.bounded(call, &name, f).await
            }
            Resource::Folder(_) => {
                let f = self
                    .folders
                    .set_iam_policy()
                    .set_resource(&name)
                    .set_policy(policy)
                    .set_update_mask(mask)
                    .send();
                self.bounded(call, &name, f).await
            }
            Resource::Organization(_) => {
                let f = self
                    .organizations
                    .set_iam_policy()
                    .set_resource(&name)
                    .set_policy(policy)
                    .set_update_mask(mask)
                    .send();
                self.bounded(call, &name, f).await
            }
            Resource::ServiceAccount(_) => {
                let f = self
                    .iam
                    .set_iam_policy()
                    .set_resource(&name)
                    .set_policy(policy)
                    .set_update_mask(mask)
                    .send();
                self.bounded(call, &name, f).await
            }
        }
    }

    /// `generateAccessToken` for `lifetime` whole seconds.
    pub(crate) async fn generate_access_token(
        &self,
        service_account: &str,
        scopes: &[String],
        delegates: &[String],
        lifetime_secs: i64,
    ) -> Result<AccessToken, GcpError> {
        let call = "generateAccessToken";
        let f = self
            .credentials
            .generate_access_token()
            .set_name(service_account)
            .set_scope(scopes.iter().cloned())
            .set_delegates(delegates.iter().cloned())
            .set_lifetime(google_cloud_wkt::Duration::clamp(lifetime_secs, 0))
            .send();
        let out = self.bounded(call, service_account, f).await?;
        let expire = out.expire_time.ok_or(GcpError::Incomplete {
            call,
            field: "expireTime",
        })?;
        let expires_at =
            DateTime::<Utc>::from_timestamp(expire.seconds(), expire.nanos().max(0) as u32).ok_or(
                GcpError::Incomplete {
                    call,
                    field: "expireTime",
                },
            )?;
        if out.access_token.is_empty() {
            return Err(GcpError::Incomplete {
                call,
                field: "accessToken",
            });
        }
        Ok(AccessToken {
            token: jit_core::Secret::new(out.access_token),
            expires_at,
        })
    }
}

impl GcpClients {
    /// `getIamPolicy` of `resource` at version 3, as the provider reads it
    /// (for tools and benchmarks; the provider's own edits go through its
    /// read-modify-write loop).
    pub async fn get_iam_policy(&self, resource: &Resource) -> jit_core::Result<Policy> {
        self.get_policy(resource)
            .await
            .map_err(|e| e.into_core("gcp", "get policy"))
    }

    /// `setIamPolicy` of `resource`: refused without an etag or below
    /// version 3, so it can never drop a policy's conditions.
    pub async fn set_iam_policy(
        &self,
        resource: &Resource,
        policy: Policy,
    ) -> jit_core::Result<Policy> {
        self.set_policy(resource, policy)
            .await
            .map_err(|e| e.into_core("gcp", "set policy"))
    }
}

/// Shared, cheaply cloned clients.
pub type SharedClients = Arc<GcpClients>;
