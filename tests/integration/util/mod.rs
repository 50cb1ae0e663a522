//! Test helpers: planner inputs built in code (`model`) and a sandbox for running the real
//! binary against a stand-in `targetctl` (`sandbox`).

pub mod configfs;
#[cfg(feature = "live")]
pub mod http;
pub mod model;
#[cfg(feature = "live")]
pub mod s3;
pub mod sandbox;
