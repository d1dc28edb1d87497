//! Just-in-time AWS access: STS credentials that expire by themselves,
//! per-grant early revocation, and the outputs AWS users expect.
//!
//! ```no_run
//! use std::sync::Arc;
//! use jit_aws::{AwsConfig, AwsProvider};
//! use jit_core::{AccessRequest, Broker, CataloguePolicy, MemoryStore, Principal};
//!
//! # async fn run() -> jit_core::Result<()> {
//! // The broker's own identity comes from the standard aws-config chain.
//! let aws = AwsProvider::builder(AwsConfig::from_env()?).build().await?;
//! let policy = CataloguePolicy::from_toml_str(r#"
//!     [[entitlements]]
//!     id = "prod-readonly"
//!     provider = "aws"
//!     max_duration = "1h"
//!     target = { role_arn = "arn:aws:iam::123456789012:role/ProdReadOnly" }
//!     [entitlements.eligible]
//!     groups = ["oncall"]
//!     [entitlements.auto_approve]
//!     groups = ["oncall"]
//! "#)?;
//! let broker = Broker::builder(Arc::new(MemoryStore::new()), Arc::new(policy))
//!     .provider(Arc::new(aws))
//!     .build()?;
//! let me = Principal::new("alice@example.com")?.with_group("oncall");
//! let outcome = broker
//!     .submit(&me, AccessRequest::new("prod-readonly", "30m".parse()?, "INC-1: look at logs"))
//!     .await?;
//! if let Some(credentials) = outcome.credentials {
//!     // `credential_process` output, env vars or a credentials-file profile:
//!     println!("{}", jit_aws::output::credential_process_json(&credentials)?.expose());
//! }
//! # Ok(()) }
//! ```
//!
//! # What it does
//!
//! | step | AWS | module |
//! | --- | --- | --- |
//! | validate an entitlement | nothing remote: role ARN shape, session policy size, tags, external id | [`target`] |
//! | issue | `iam:GetRole` (cached) for the role's `MaxSessionDuration` and id, then `sts:AssumeRole` with a session name derived from the grant, `SourceIdentity` = the requester, session tags (grant, request, entitlement, requester, ticket) | [`provider`], [`session`] |
//! | revoke one grant | a `Deny *` on `aws:userid` = the session's `AssumedRoleId` (`ROLE_ID:session-name`) in the role's inline policy `jit-revocations`, pruned after the session's expiry; through the role account's management role when it is not the broker's | [`revoke`] |
//! | revoke when the per-grant list is full | the role-wide deny below, reported to the broker, which records every other grant it cut off as revoked | [`revoke`] |
//! | revoke all sessions of a role (admin) | a `Deny *` on `aws:TokenIssueTime` before now | [`AwsProvider::revoke_all_sessions`] |
//! | hand credentials over | `credential_process` JSON, environment variables, a credentials-file profile | [`output`] |
//! | use them from Rust | an `aws-config` credentials provider that requests and renews grants | [`BrokerCredentialsProvider`] |
//! | configure it as data | `[providers.NAME] kind = "aws"` tables through the provider registry | [`factory()`], [`config::KEYS`] |
//!
//! Capabilities: native expiry; at most 12 hours (1 hour when the broker's
//! identity is itself an assumed role, and never more than the role's
//! `MaxSessionDuration`); at least 15 minutes plus an issue margin;
//! revocation by deny policy, effective within minutes; revocation by the
//! derived session name alone, so a session minted by a process that
//! crashed before recording it is still denied after a restart.
//!
//! # Several processes
//!
//! When more than one process may revoke grants of the same role (server
//! replicas, a Lambda function), give the provider the shared store with
//! [`AwsProviderBuilder::lease_store`]: writes of a role's revocation
//! policy then take a lease in it, since IAM has no conditional write for
//! inline policies. Without one, only the writers of this process are
//! serialised.
//!
//! # Permissions the broker needs
//!
//! `sts:GetCallerIdentity` (optional, for role-chaining detection),
//! `sts:AssumeRole`, `sts:TagSession` and `sts:SetSourceIdentity` on the
//! target roles (their trust policies must allow the broker, with the same
//! three actions); `iam:GetRole`, `iam:GetRolePolicy`, `iam:PutRolePolicy`
//! and `iam:DeleteRolePolicy` on the target roles, in the broker's own
//! account directly and in any other account through that account's
//! management role ([`config`]: `sts:AssumeRole` on it for the broker, the
//! four `iam:` actions for it).
//!
//! # HTTP and TLS
//!
//! The SDK crates are built without their default HTTPS client (which
//! compiles aws-lc); jit-aws supplies a rustls client on ring
//! ([`client::http_client`]) for both the provider and the credentials
//! chain.

#![cfg_attr(not(test), warn(missing_docs))]

pub mod client;
pub mod config;
pub mod credentials_provider;
mod error;
pub mod factory;
pub mod output;
pub mod provider;
pub mod revoke;
pub mod session;
pub mod target;
#[cfg(feature = "testing")]
pub mod testing;

pub use client::AwsClients;
pub use config::{AwsConfig, OverRoleMax};
pub use credentials_provider::BrokerCredentialsProvider;
pub use factory::{factory, AwsFactory};
pub use provider::{AwsProvider, AwsProviderBuilder};
pub use target::{AwsTarget, RoleArn};
