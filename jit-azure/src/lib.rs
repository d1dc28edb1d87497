//! Just-in-time Azure access: role assignments that expire at Azure (PIM
//! schedule requests), or plain role assignments the broker removes, for
//! tenants without PIM licences.
//!
//! ```no_run
//! use std::sync::Arc;
//! use jit_azure::{AzureConfig, AzureProvider};
//! use jit_core::{AccessRequest, Broker, CataloguePolicy, MemoryStore, Principal};
//!
//! # async fn run() -> jit_core::Result<()> {
//! // JIT_AZURE_TENANT_ID, JIT_AZURE_CLIENT_ID, JIT_AZURE_CLIENT_SECRET, ...
//! let azure = AzureProvider::builder(AzureConfig::from_env()?).build()?;
//! let policy = CataloguePolicy::from_toml_str(r#"
//!     [[entitlements]]
//!     id = "prod-rg-contributor"
//!     provider = "azure"
//!     max_duration = "2h"
//!     target = { scope = "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/prod", role = "Contributor" }
//!     [entitlements.eligible]
//!     groups = ["oncall"]
//!     [entitlements.auto_approve]
//!     groups = ["oncall"]
//! "#)?;
//! let broker = Broker::builder(Arc::new(MemoryStore::new()), Arc::new(policy))
//!     .provider(Arc::new(azure))
//!     .build()?;
//! // The host fills the Entra object id (for Entra tokens: the `oid` claim).
//! let me = Principal::new("alice@example.com")?
//!     .with_group("oncall")
//!     .with_attribute("azure_object_id", "a3bb8764-cb92-4276-9d2a-ca1e895e55ea");
//! let outcome = broker
//!     .submit(&me, AccessRequest::new("prod-rg-contributor", "45m".parse()?, "INC-1: restart the app"))
//!     .await?;
//! // Azure grants carry no secret: the principal uses its own identity.
//! println!("{:?}", outcome.credentials);
//! # Ok(()) }
//! ```
//!
//! # What it does
//!
//! | step | Azure | module |
//! | --- | --- | --- |
//! | validate an entitlement | nothing remote: scope kind, role definition id or the shape of a role's display name, ABAC condition and version | [`target`] |
//! | issue (mode `pim`, default) | a role's display name resolved (`roleDefinitions`, cached); role management policy read (cached) for the admin assignment maximum; `PUT roleAssignmentScheduleRequests/{derived guid}` (`AdminAssign`, `AfterDuration`), followed to `Provisioned`; end = the `endDateTime` of the schedule the answer names (one `GET`) | [`provider`] |
//! | revoke (mode `pim`) | `AdminRemove` schedule request under its own derived name, confirmed by the schedule's absence | [`provider`] |
//! | issue / revoke (mode `assignments`) | `PUT` / `DELETE roleAssignments/{derived guid}` (API 2022-04-01); the reaper deletes at the end | [`provider`] |
//! | broker identity | `azure_identity`: client secret, workload identity, managed identity, Azure CLI | [`client`], [`config`] |
//!
//! Capabilities: native expiry in mode `pim` (not in mode `assignments`);
//! at most [`AzureConfig::max_duration`] (8 h by default) and never more
//! than the role management policy allows; at least
//! [`AzureConfig::min_duration`]; revocation that takes effect within
//! [`AzureConfig::propagation`] (ARM caches role assignments).
//!
//! # Permissions the broker needs
//!
//! Mode `pim`: `Microsoft.Authorization/roleAssignmentScheduleRequests/write`
//! and `/read`, `roleAssignmentScheduleRequests/cancel/action`,
//! `roleAssignmentSchedules/read` and `roleManagementPolicyAssignments/read`
//! at the entitlements' scopes (the built-in *Role Based Access Control
//! Administrator* or *User Access Administrator* roles have them). Mode
//! `assignments`: `Microsoft.Authorization/roleAssignments/write`, `/read`
//! and `/delete`. Roles named by display name: also
//! `Microsoft.Authorization/roleDefinitions/read`.

#![cfg_attr(not(test), warn(missing_docs))]

pub mod client;
pub mod config;
mod error;
pub mod factory;
pub mod provider;
pub mod target;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::{AzureConfig, CredentialKind, Mode, OverPolicyMax, PrincipalType};
pub use factory::{factory, AzureFactory};
pub use provider::{AzureProvider, AzureProviderBuilder};
pub use target::{AzureTarget, RoleRef, Scope, ScopeKind};
