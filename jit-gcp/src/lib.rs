//! Google Cloud provider for just-in-time access — **not implemented yet**.
//!
//! This crate reserves the name and records the design; it exports nothing,
//! so no one can mistake it for a working provider. The plan (see the
//! project's DESIGN.md):
//!
//! - Conditional IAM bindings: `getIamPolicy` (requested version 3), add
//!   `{role, members: [principal], condition: {title: jit-<grant>, expression:
//!   request.time < timestamp("…")}}`, `setIamPolicy` with the etag, retried on
//!   conflict; revoke removes exactly that binding; the reaper prunes expired
//!   bindings, which GCP never removes and which count toward policy limits.
//!   Refused when an unconditional binding already grants the role.
//! - Short-lived tokens: `iamcredentials generateAccessToken` with a lifetime
//!   of at most 3600 s; such tokens cannot be revoked, and capabilities say so
//!   (`RevocationKind::None`), so the broker refuses early revocation instead
//!   of faking it.
//! - Broker identity from a service-account key (JWT assertion), the metadata
//!   server, or ADC; tests against a local fake that follows the discovery
//!   documents and protos in the shared specs.
