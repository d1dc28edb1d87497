//! The built-in catalogue policy, loaded from TOML. (Being written.)
#![allow(missing_docs)]
use super::{Policy, PolicyContext};
use crate::error::RequestError;
use crate::types::{AccessRequest, Decision, Entitlement, Principal};

#[derive(Debug, Default)]
pub struct CataloguePolicy;

impl Policy for CataloguePolicy {
    fn entitlement(&self, _id: &str) -> Option<Entitlement> {
        None
    }
    fn entitlements(&self) -> Vec<Entitlement> {
        vec![]
    }
    fn evaluate(
        &self,
        _r: &Principal,
        _q: &AccessRequest,
        _e: &Entitlement,
        _c: &PolicyContext,
    ) -> Result<Decision, RequestError> {
        Err(RequestError::ZeroDuration)
    }
}
