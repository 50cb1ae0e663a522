//! Test helpers: planner inputs built in code (`model`) and a sandbox for running the real
//! binary against a stand-in `targetctl` (`sandbox`).

pub mod configfs;
#[cfg(feature = "live")]
pub mod http;
pub mod model;
#[cfg(feature = "live")]
pub mod s3;
pub mod sandbox;

/// A path in the repository.
pub fn repo(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}
