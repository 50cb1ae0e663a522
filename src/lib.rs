//! sbps-reconcile: project IMS and PE boot images as read-only LIO iSCSI LUNs.
//!
//! The pipeline, one module per step:
//! policy -> sources -> snapshot -> plan -> diff -> apply -> report.

#![forbid(unsafe_code)]

pub mod apply;
pub mod backoff;
pub mod cli;
mod codes;
pub mod deadline;
pub mod describe;
pub mod diff;
pub mod error;
pub mod explain;
pub mod fleet;
pub mod fsio;
pub mod identity;
pub mod image;
pub mod kernel;
pub mod ledger;
pub mod lio;
pub mod logger;
pub mod man;
pub mod manifest;
pub mod metrics;
pub mod plan;
pub mod policy;
pub mod prefix_source;
pub mod process;
pub mod progress;
pub mod report;
pub mod run;
pub mod s3path;
pub mod safety;
pub mod secrets;
pub mod skip;
pub mod snapshot;
pub mod sources;
pub mod status;
pub mod terms;
