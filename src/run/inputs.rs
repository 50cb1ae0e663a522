//! What a command plans with: the policy (its warnings logged), the clock, the snapshot and
//! the ledger read.

use super::current::CurrentFile;
use crate::cli::Cli;
use crate::deadline::Deadline;
use crate::error::Error;
use crate::lio::running::RunningState;
use crate::plan::{self, Plan};
use crate::policy::{HostFacts, Policy};
use crate::snapshot::Snapshot;
use crate::sources;
use crate::sources::ledger_store::LedgerRead;
use std::time::{SystemTime, UNIX_EPOCH};

pub(super) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(super) fn load_policy(cli: &Cli) -> Result<Policy, Error> {
    let (policy, warnings) = Policy::load(&cli.policy, &HostFacts::detect())?;
    for warning in warnings {
        log::warn!("{warning}");
    }
    Ok(policy)
}

/// What a run plans with, besides the configuration in place.
pub(super) struct Inputs<'a> {
    pub(super) policy: &'a Policy,
    pub(super) snapshot: &'a Snapshot,
    pub(super) ledger: Option<&'a LedgerRead>,
    /// Unix time of the run.
    pub(super) now: u64,
}

impl Inputs<'_> {
    pub(super) fn plan(&self, current: &CurrentFile, running: Option<&RunningState>) -> Plan {
        let context = plan::Context {
            running,
            ledger: self.ledger.map(|l| &l.ledger),
            fleet: self.ledger.map(|l| &l.fleet),
            now: self.now,
        };
        plan::plan(self.policy, self.snapshot, &current.config, &context)
    }
}

/// Opens the sources, reads the current file, then the catalogue. The sources open first:
/// they start the bucket's listings, which the server answers while the file is read. With
/// a removal grace, the mount is also asked about the files of the LUNs in place (a file
/// gone ends its grace).
pub(super) fn read_catalogue(
    policy: &Policy,
    deadline: Deadline,
) -> Result<(CurrentFile, sources::Sources, Snapshot), Error> {
    let sources = sources::open(policy, deadline)?;
    let current = CurrentFile::read(&policy.lio.saveconfig)?;
    let snapshot = sources::collect(policy, &sources, &grace_files(policy, &current))?;
    Ok((current, sources, snapshot))
}

/// With a removal grace, the files of the LUNs in place (a file gone ends its grace).
pub(super) fn grace_files(
    policy: &Policy,
    current: &CurrentFile,
) -> std::collections::BTreeSet<String> {
    if policy.safety.removal_grace.is_zero() {
        Default::default()
    } else {
        plan::files_in_place(policy, &current.config)
    }
}
