#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), warn(missing_docs))]

pub mod audit;
pub mod broker;
pub mod clock;
pub mod credentials;
pub mod error;
pub mod lease;
pub mod local;
pub mod oncall;
pub mod packed;
pub mod policy;
pub mod provider;
pub mod reaper;
pub mod risk;
pub mod standing;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod ticket;
pub mod types;
pub mod wire;

pub use audit::{AuditEvent, AuditKind, AuditRecord, AuditSink};
pub use broker::{ArchiveReport, Broker, BrokerBuilder, IssueOutcome};
pub use clock::{Clock, ManualClock, SystemClock};
pub use credentials::{Credentials, Secret};
pub use error::{ConfigError, Error, RequestError, Result, TokenError};
pub use policy::{CataloguePolicy, Policy, PolicyContext};
pub use provider::{
    Capabilities, Collateral, GrantSpec, Issued, Provider, RevocationKind, RevokeOutcome, Tidied,
    TidyReport,
};
pub use reaper::Reaper;
pub use risk::{RiskAssessment, RiskAssessor};
pub use store::{ListFilter, MemoryStore, Store};
pub use types::*;

/// The workspace README's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct WorkspaceReadmeDoctests;
