//! Just-in-time Google Cloud access: conditional IAM bindings that expire
//! by themselves, and short-lived service-account access tokens.
//!
//! ```no_run
//! use std::sync::Arc;
//! use jit_gcp::{GcpConfig, GcpProvider};
//! use jit_core::{AccessRequest, Broker, CataloguePolicy, MemoryStore, Principal};
//!
//! # async fn run() -> jit_core::Result<()> {
//! // The broker's own identity: Application Default Credentials.
//! let gcp = GcpProvider::builder(GcpConfig::from_env()?).build().await?;
//! let policy = CataloguePolicy::from_toml_str(r#"
//!     [[entitlements]]
//!     id = "prod-storage-admin"
//!     provider = "gcp"
//!     max_duration = "2h"
//!     target = { resource = "projects/prod-1234", role = "roles/storage.admin" }
//!     [entitlements.eligible]
//!     groups = ["oncall"]
//!     [entitlements.auto_approve]
//!     groups = ["oncall"]
//! "#)?;
//! let broker = Broker::builder(Arc::new(MemoryStore::new()), Arc::new(policy))
//!     .provider(Arc::new(gcp))
//!     .build()?;
//! // The IAM member comes from a principal attribute the host fills.
//! let me = Principal::new("sub-alice")?
//!     .with_group("oncall")
//!     .with_attribute("gcp_member", "user:alice@example.com");
//! broker
//!     .submit(&me, AccessRequest::new("prod-storage-admin", "30m".parse()?, "INC-1: fix a bucket"))
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # What it does
//!
//! | step | Google | module |
//! | --- | --- | --- |
//! | validate an entitlement | nothing remote: resource and role names, no basic roles, the target's mode | [`target`] |
//! | find the member | the principal attribute `gcp_member`, or a verified email where configured | [`member`] |
//! | issue a binding | `getIamPolicy` (version 3), add `{role, [member], condition jit-<grant>}`, `setIamPolicy` with the etag, again on 409 `ABORTED` | [`provider`], [`binding`] |
//! | revoke a binding | remove the binding titled `jit-<grant>`, the same way | [`provider`] |
//! | prune | remove expired `jit-` bindings, nothing else | [`GcpProvider::prune_expired`] |
//! | issue a token | `generateAccessToken` with the window as `lifetime` (at most 1 h unless configured) | [`provider`] |
//! | configure | `JIT_GCP_*`, or a host's `kind = "gcp"` table | [`config`], [`mod@factory`] |
//! | call Google | the official `google-cloud-*` clients, identity from `google-cloud-auth` | [`client`] |
//!
//! The provider page (capabilities, configuration keys, permissions,
//! limits) is the crate's `README.md`.

#![cfg_attr(not(test), warn(missing_docs))]

pub mod binding;
pub mod client;
pub mod config;
mod error;
pub mod factory;
pub mod member;
pub mod provider;
pub mod target;
#[cfg(feature = "testing")]
pub mod testing;

pub use client::GcpClients;
pub use config::{CredentialSource, GcpConfig, Mode};
pub use factory::{factory, GcpFactory};
pub use provider::{GcpProvider, GcpProviderBuilder};
pub use target::{GcpTarget, Resource};
