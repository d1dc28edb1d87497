//! Azure provider for just-in-time access — **not implemented yet**.
//!
//! This crate reserves the name and records the design; it exports nothing,
//! so no one can mistake it for a working provider. The plan (see the
//! project's DESIGN.md):
//!
//! - PIM-native issue: `PUT {scope}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/{grant-guid}`
//!   (API 2020-10-01) with `requestType: AdminAssign`, `scheduleInfo.expiration
//!   {type: AfterDuration, duration: PT…}`, the justification and `ticketInfo`;
//!   revoke with `AdminRemove`; native expiry at the provider.
//! - A fallback for tenants without PIM: plain `roleAssignments` (API
//!   2022-04-01) that the reaper deletes at the end (capabilities say the
//!   expiry is not native).
//! - Broker identity through `azure_identity` (client secret, managed
//!   identity, workload identity, Azure CLI); ARM errors such as
//!   `RoleAssignmentExists` and 429 with `Retry-After` mapped to typed errors.
//! - Tests against a local fake that follows the ARM Swagger in the shared
//!   specs, with the real `azure_identity` token flow pointed at it.
