//! SQLite store. (Being written.)
#![allow(missing_docs)]
#[derive(Debug)]
pub struct SqliteStore;
