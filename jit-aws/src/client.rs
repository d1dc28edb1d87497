//! The AWS calls jit-aws makes, and nothing else: `sts:GetCallerIdentity`,
//! `sts:AssumeRole`, `iam:GetRole`, `iam:GetRolePolicy`, `iam:PutRolePolicy`
//! and `iam:DeleteRolePolicy`. Each SDK error is classified here by its AWS
//! error code, never by its message.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::{future, ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_sts::config::timeout::TimeoutConfig;
use aws_sdk_sts::types::{PolicyDescriptorType, Tag};
use chrono::{DateTime, Utc};
use jit_core::Secret;

use crate::config::AwsConfig;
use crate::error::AwsError;
use crate::session::SessionTag;

/// The region used when neither the configuration nor the chain names one.
/// STS and IAM answer in every commercial region; IAM is global.
pub const FALLBACK_REGION: &str = "us-east-1";

/// An HTTPS client on rustls with ring (also speaks plain HTTP, for moto).
pub fn http_client() -> aws_sdk_sts::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// Loads the standard `aws-config` chain (credentials, region, endpoint
/// variables) with jit-aws's HTTP client and the configuration's region and
/// endpoint overrides.
///
/// Without a configured region the loader's own chain looks for one
/// (`AWS_REGION`, the profile, IMDS); it is built from the loader's provider
/// configuration, so it uses the same HTTP client. (A region chain built
/// apart from the loader would carry no HTTP client, and the SDK panics
/// when such a chain constructs its IMDS client.)
pub async fn load_sdk_config(config: &AwsConfig) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http_client());
    if let Some(region) = &config.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(url) = &config.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    let sdk = loader.load().await;
    if sdk.region().is_some() {
        return sdk;
    }
    sdk.into_builder()
        .region(Region::from_static(FALLBACK_REGION))
        .build()
}

/// The STS and IAM clients jit-aws uses.
#[derive(Clone, Debug)]
pub struct AwsClients {
    /// STS.
    pub sts: aws_sdk_sts::Client,
    /// IAM.
    pub iam: aws_sdk_iam::Client,
}

impl AwsClients {
    /// Clients for one SDK configuration.
    pub fn from_sdk_config(sdk: &SdkConfig) -> Self {
        Self {
            sts: aws_sdk_sts::Client::new(sdk),
            iam: aws_sdk_iam::Client::new(sdk),
        }
    }
}

impl AwsClients {
    /// The same clients with every call bounded by `timeout` (retries
    /// included, the SDK's operation timeout), keeping their endpoint,
    /// credentials, interceptors and other timeouts.
    pub fn with_call_timeout(&self, timeout: Duration) -> Self {
        let bound = |existing: Option<&TimeoutConfig>| {
            existing
                .map(TimeoutConfig::to_builder)
                .unwrap_or_default()
                .operation_timeout(timeout)
                .build()
        };
        Self {
            sts: aws_sdk_sts::Client::from_conf(
                self.sts
                    .config()
                    .to_builder()
                    .timeout_config(bound(self.sts.config().timeout_config()))
                    .build(),
            ),
            iam: aws_sdk_iam::Client::from_conf(
                self.iam
                    .config()
                    .to_builder()
                    .timeout_config(bound(self.iam.config().timeout_config()))
                    .build(),
            ),
        }
    }

    /// Clients whose IAM calls act in another account: the same
    /// configuration, with the credentials of `role_arn` (that account's
    /// management role) for IAM, assumed through this STS client and renewed
    /// before they expire. STS stays the broker's own.
    pub fn for_management_role(&self, role_arn: &str) -> Self {
        let creds = ManagementCredentials {
            sts: self.sts.clone(),
            role_arn: role_arn.to_string(),
        };
        Self {
            sts: self.sts.clone(),
            iam: aws_sdk_iam::Client::from_conf(
                self.iam
                    .config()
                    .to_builder()
                    .credentials_provider(SharedCredentialsProvider::new(creds))
                    .build(),
            ),
        }
    }
}

/// Session name of the broker's management sessions in other accounts.
pub const MANAGEMENT_SESSION_NAME: &str = "jit-broker-management";

/// Credentials of a management role, from `sts:AssumeRole` with the broker's
/// own identity; the SDK's identity cache renews them before expiry.
#[derive(Debug)]
struct ManagementCredentials {
    sts: aws_sdk_sts::Client,
    role_arn: String,
}

impl ManagementCredentials {
    async fn assume(&self) -> aws_credential_types::provider::Result {
        use aws_credential_types::provider::error::CredentialsError;
        let out = self
            .sts
            .assume_role()
            .role_arn(&self.role_arn)
            .role_session_name(MANAGEMENT_SESSION_NAME)
            .send()
            .await
            .map_err(|e| {
                CredentialsError::provider_error(AwsError::from_sdk("sts:AssumeRole", &e))
            })?;
        let c = out.credentials().ok_or_else(|| {
            CredentialsError::provider_error(AwsError::Incomplete {
                call: "sts:AssumeRole",
                field: "Credentials",
            })
        })?;
        let exp = c.expiration();
        let expiry = u64::try_from(exp.secs())
            .ok()
            .map(|s| std::time::UNIX_EPOCH + Duration::from_secs(s));
        Ok(aws_credential_types::Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_string()),
            expiry,
            "jit-aws-management-role",
        ))
    }
}

impl ProvideCredentials for ManagementCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(self.assume())
    }
}

/// Whether an SDK configuration signs with long-term (static) credentials,
/// which nothing refreshes: an `ExpiredToken` is then final. Credentials
/// without an expiry are static (access keys, also a session token given
/// in the environment, which nothing renews either).
pub(crate) async fn has_static_credentials(sdk: &SdkConfig) -> bool {
    match sdk.credentials_provider() {
        Some(p) => p
            .provide_credentials()
            .await
            .is_ok_and(|c| c.expiry().is_none()),
        None => false,
    }
}

/// What `iam:GetRole` says about a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoleInfo {
    /// `AROA...`: the first half of `aws:userid` for the role's sessions.
    pub role_id: String,
    /// The role's `MaxSessionDuration` in seconds (3600 when IAM omits it).
    pub max_session_secs: u32,
}

/// Parameters of one `AssumeRole`.
#[derive(Debug, Clone)]
pub(crate) struct AssumeRoleInput<'a> {
    pub role_arn: &'a str,
    pub session_name: &'a str,
    pub duration_secs: u32,
    pub source_identity: Option<&'a str>,
    pub tags: &'a [SessionTag],
    pub policy: Option<&'a str>,
    pub policy_arns: &'a [String],
    pub external_id: Option<&'a str>,
}

/// What `AssumeRole` returned. No `Debug` derive: it holds secrets in
/// [`Secret`], whose `Debug` is redacted anyway, but nobody needs to print it.
pub(crate) struct AssumedSession {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Secret,
    pub expiration: DateTime<Utc>,
    pub assumed_role_arn: String,
    pub assumed_role_id: String,
}

/// The broker's own identity: its ARN and account.
pub(crate) async fn caller_identity(clients: &AwsClients) -> Result<(String, String), AwsError> {
    const CALL: &str = "sts:GetCallerIdentity";
    let out = clients
        .sts
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(CALL, &e))?;
    let arn = out.arn().map(str::to_string).ok_or(AwsError::Incomplete {
        call: CALL,
        field: "Arn",
    })?;
    let account = out
        .account()
        .map(str::to_string)
        .ok_or(AwsError::Incomplete {
            call: CALL,
            field: "Account",
        })?;
    Ok((arn, account))
}

pub(crate) async fn get_role(clients: &AwsClients, role_name: &str) -> Result<RoleInfo, AwsError> {
    const CALL: &str = "iam:GetRole";
    let out = clients
        .iam
        .get_role()
        .role_name(role_name)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(CALL, &e))?;
    let role = out.role().ok_or(AwsError::Incomplete {
        call: CALL,
        field: "Role",
    })?;
    let max = role.max_session_duration().unwrap_or(3600);
    Ok(RoleInfo {
        role_id: role.role_id().to_string(),
        // IAM's range is 3600..=43200; anything else is treated as the default.
        max_session_secs: u32::try_from(max)
            .ok()
            .filter(|m| (3600..=43_200).contains(m))
            .unwrap_or(3600),
    })
}

pub(crate) async fn assume_role(
    clients: &AwsClients,
    input: &AssumeRoleInput<'_>,
) -> Result<AssumedSession, AwsError> {
    const CALL: &str = "sts:AssumeRole";
    let mut req = clients
        .sts
        .assume_role()
        .role_arn(input.role_arn)
        .role_session_name(input.session_name)
        .duration_seconds(i32::try_from(input.duration_secs).unwrap_or(i32::MAX));
    if let Some(si) = input.source_identity {
        req = req.source_identity(si);
    }
    for t in input.tags {
        let tag = Tag::builder()
            .key(&t.key)
            .value(&t.value)
            .build()
            .map_err(|_| AwsError::Incomplete {
                call: CALL,
                field: "Tags",
            })?;
        req = req.tags(tag);
    }
    if let Some(p) = input.policy {
        req = req.policy(p);
    }
    for arn in input.policy_arns {
        req = req.policy_arns(PolicyDescriptorType::builder().arn(arn).build());
    }
    if let Some(x) = input.external_id {
        req = req.external_id(x);
    }
    let out = req.send().await.map_err(|e| AwsError::from_sdk(CALL, &e))?;
    let creds = out.credentials().ok_or(AwsError::Incomplete {
        call: CALL,
        field: "Credentials",
    })?;
    let user = out.assumed_role_user().ok_or(AwsError::Incomplete {
        call: CALL,
        field: "AssumedRoleUser",
    })?;
    let exp = creds.expiration();
    let expiration = DateTime::<Utc>::from_timestamp(exp.secs(), exp.subsec_nanos()).ok_or(
        AwsError::Incomplete {
            call: CALL,
            field: "Expiration",
        },
    )?;
    Ok(AssumedSession {
        access_key_id: creds.access_key_id().to_string(),
        secret_access_key: Secret::new(creds.secret_access_key()),
        session_token: Secret::new(creds.session_token()),
        expiration,
        assumed_role_arn: user.arn().to_string(),
        assumed_role_id: user.assumed_role_id().to_string(),
    })
}

/// The inline policy's document, or `None` when the role has no such policy.
pub(crate) async fn get_role_policy(
    clients: &AwsClients,
    role_name: &str,
    policy_name: &str,
) -> Result<Option<String>, AwsError> {
    const CALL: &str = "iam:GetRolePolicy";
    match clients
        .iam
        .get_role_policy()
        .role_name(role_name)
        .policy_name(policy_name)
        .send()
        .await
    {
        // IAM returns the document URL-encoded (RFC 3986).
        Ok(out) => Ok(Some(percent_decode(out.policy_document()))),
        Err(e) => {
            let err = AwsError::from_sdk(CALL, &e);
            if err.is_no_such_entity() {
                Ok(None)
            } else {
                Err(err)
            }
        }
    }
}

pub(crate) async fn put_role_policy(
    clients: &AwsClients,
    role_name: &str,
    policy_name: &str,
    document: &str,
) -> Result<(), AwsError> {
    const CALL: &str = "iam:PutRolePolicy";
    clients
        .iam
        .put_role_policy()
        .role_name(role_name)
        .policy_name(policy_name)
        .policy_document(document)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| AwsError::from_sdk(CALL, &e))
}

pub(crate) async fn delete_role_policy(
    clients: &AwsClients,
    role_name: &str,
    policy_name: &str,
) -> Result<(), AwsError> {
    const CALL: &str = "iam:DeleteRolePolicy";
    match clients
        .iam
        .delete_role_policy()
        .role_name(role_name)
        .policy_name(policy_name)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => {
            let err = AwsError::from_sdk(CALL, &e);
            if err.is_no_such_entity() {
                Ok(())
            } else {
                Err(err)
            }
        }
    }
}

/// Decodes `%XX` escapes (IAM URL-encodes policy documents). A document that
/// is already plain JSON passes through: `%` cannot start a JSON token.
/// Public for tools that read role policies themselves.
pub fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    // Regression: the standard chain used to be assembled from a region
    // chain without an HTTP client, which panics as soon as it is built, so
    // every provider built from the environment (the vending server, the
    // Lambda function) died at start.
    #[tokio::test]
    async fn the_standard_chain_loads_with_and_without_a_region() {
        let sdk = load_sdk_config(&AwsConfig::default().with_region("eu-west-3")).await;
        assert_eq!(sdk.region().map(|r| r.as_ref()), Some("eu-west-3"));
        let sdk =
            load_sdk_config(&AwsConfig::default().with_endpoint_url("http://127.0.0.1:9")).await;
        // Whatever the environment says, or the fallback: never none.
        assert!(sdk.region().is_some());
        assert!(sdk.http_client().is_some());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("%7B%22a%22%3A1%7D"), r#"{"a":1}"#);
        assert_eq!(percent_decode(r#"{"a":1}"#), r#"{"a":1}"#);
        assert_eq!(percent_decode("%C3%A9"), "é");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
