//! One integration test binary (faster to build than one per file).

mod cli;
mod golden;
mod plan;
mod util;
