//! Conformance suite for providers and stores (feature `testing`).
//!
//! Plain `pub async fn` checks taking `&dyn Provider` / `&dyn Store`: each
//! implementation calls the ones its capabilities support.

pub mod provider;
pub mod store;
