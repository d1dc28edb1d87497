//! The reaper. (Being written.)
#![allow(missing_docs)]
#[derive(Debug)]
pub struct Reaper;
