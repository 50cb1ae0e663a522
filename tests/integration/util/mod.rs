//! Test helpers: planner inputs built in code (`model`) and a sandbox for running the real
//! binary against a stand-in `targetctl` (`sandbox`).

pub mod model;
pub mod sandbox;
