//! The local provider. (Being written.)
