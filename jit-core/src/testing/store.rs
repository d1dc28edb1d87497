//! Store conformance checks. (Being written.)
