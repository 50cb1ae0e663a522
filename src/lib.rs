//! sbps-reconcile: project IMS and PE boot images as read-only LIO iSCSI LUNs.
//!
//! The pipeline, one module per step:
//! policy -> sources -> snapshot -> plan -> diff -> apply -> report.

pub mod apply;
pub mod cli;
pub mod diff;
pub mod error;
pub mod identity;
pub mod image;
pub mod lio;
pub mod logger;
pub mod manifest;
pub mod plan;
pub mod policy;
pub mod report;
pub mod run;
pub mod s3path;
pub mod skip;
pub mod snapshot;
pub mod sources;
