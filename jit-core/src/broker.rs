//! The broker. (Being written.)
#![allow(missing_docs)]
#[derive(Debug)]
pub struct Broker;
#[derive(Debug)]
pub struct BrokerBuilder;
#[derive(Debug)]
pub struct IssueOutcome;
