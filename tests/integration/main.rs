//! One integration test binary (faster to build than one per file).

mod cli;
mod docs;
mod examples;
#[cfg(feature = "live")]
mod fleet;
mod golden;
mod hostile;
mod inplace;
mod kill;
mod ledger;
#[cfg(feature = "live")]
mod ledger_writes;
#[cfg(feature = "live")]
mod live;
mod operator;
mod outage;
mod plan;
mod prefix_sources;
mod properties;
#[cfg(feature = "live")]
mod s3fs;
mod util;
