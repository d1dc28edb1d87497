//! Provider conformance checks. (Being written.)
