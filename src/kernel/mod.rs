//! The running LIO target: its configfs tree, and rtslib's `targetctl`.

pub mod configfs;
pub mod targetctl;
