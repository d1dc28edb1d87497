//! Cross-crate end-to-end tests live in `tests/tests/`: they drive the broker
//! the way a host application does, across stores, providers and the
//! services that consume the credentials.
