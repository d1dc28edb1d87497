//! Just-in-time Google Cloud access: conditional IAM bindings that expire
//! by themselves, and short-lived service-account access tokens.

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
