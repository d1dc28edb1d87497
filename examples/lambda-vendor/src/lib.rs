#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), warn(missing_docs))]

pub mod config;
pub mod event;
pub mod response;
pub mod vendor;

pub use config::{CatalogueSource, ClaimNames, Config, OverMax};
pub use event::{AuthSource, Body, CollectBody, EventError, Invocation, RequestBody};
pub use response::ApiResponse;
pub use vendor::{Vendor, VendorBuilder};
