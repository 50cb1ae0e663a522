//! The run's ledger step: which ledger to plan with (the one remembered, else the store's
//! and the fleet's), and writing the ledger the plan leaves.

use super::current::CurrentFile;
use super::inputs::{now_unix, Inputs};
use crate::error::{Error, SourceError};
use crate::lio::running::RunningState;
use crate::plan::Plan;
use crate::policy::Policy;
use crate::report::{LedgerOutcome, LedgerReport, Report};
use crate::snapshot::Snapshot;
use crate::sources;
use crate::sources::ledger_store::{self, LedgerRead, Written};

/// The ledger to plan with, and the plan. A run that changes nothing needs no news from the
/// bucket: a worker that remembers its ledger (between full verifications) plans with it
/// first, and keeps that plan when it changes neither the target nor the ledger. Any other
/// plan (a LUN to number, remove or adopt, a grace to start) is made with the ledgers read
/// from the store, its own and the fleet's.
pub(super) fn plan_with_ledger(
    policy: &Policy,
    snapshot: &Snapshot,
    sources: &sources::Sources,
    current: &CurrentFile,
    running: &Option<RunningState>,
    now: u64,
) -> Result<(Option<LedgerRead>, Plan), Error> {
    let plan_with = |ledger: Option<&LedgerRead>| {
        let inputs = Inputs {
            policy,
            snapshot,
            ledger,
            now,
        };
        inputs.plan(current, running.as_ref())
    };
    let remembered = sources
        .ledger
        .as_ref()
        .and_then(|store| ledger_store::remembered(store.as_ref(), policy));
    if let Some(read) = remembered {
        let plan = plan_with(Some(&read));
        let leaves_ledger = plan.ledger.as_ref() == Some(&read.ledger);
        if !plan.needs_apply() && leaves_ledger {
            log::debug!("LUN ledger {}: as this worker last read it", read.place);
            return Ok((Some(read), plan));
        }
    }
    let ledger = read_ledger(policy, sources)?;
    let plan = plan_with(ledger.as_ref());
    Ok((ledger, plan))
}

/// The LUN ledger and the fleet's, when the policy keeps one.
pub(super) fn read_ledger(
    policy: &Policy,
    sources: &sources::Sources,
) -> Result<Option<LedgerRead>, Error> {
    match &sources.ledger {
        Some(store) => Ok(Some(ledger_store::read(store.as_ref(), policy)?)),
        None => Ok(None),
    }
}

pub(super) fn ledger_report(read: &LedgerRead) -> LedgerReport {
    LedgerReport {
        place: read.place.clone(),
        found: read.found,
        fleet_targets: read.fleet_targets,
        remembered: read.remembered,
        outcome: LedgerOutcome::NotWritten,
        bucket_versioning: read.bucket_versioning,
        read_only: read.read_only.clone(),
    }
}

/// Writes the ledger the plan leaves, conditionally on the version read. Never fails the
/// run: the target is already as planned, and a ledger that missed this run's news gets it
/// from the next run (which adopts what is in place).
pub(super) fn write_ledger(
    policy: &Policy,
    sources: &sources::Sources,
    read: Option<&LedgerRead>,
    plan: &Plan,
    report: &mut Report,
) {
    let (Some(store), Some(read), Some(next)) = (&sources.ledger, read, &plan.ledger) else {
        return;
    };
    let now = now_unix();
    // The heartbeat: a ledger that says the same is still written every verify_interval, so
    // that `fleet` tells a live worker from one whose timer stopped.
    let every = policy
        .catalogue
        .s3
        .as_ref()
        .map_or(3600, |s3| s3.verify_interval.as_secs().max(60));
    let outcome = if read.found && *next == read.ledger && !read.ledger.heartbeat_due(now, every) {
        LedgerOutcome::Unchanged
    } else if let Some(why) = &read.read_only {
        log::warn!("LUN ledger {} not written: {why}", read.place);
        LedgerOutcome::NotWritten
    } else {
        // Asked before each write: in a versioned bucket the condition may not hold.
        let versioning = store.versioning();
        if let Some(caveat) = versioning.map(|v| ledger_store::versioning_caveat(&read.place, v)) {
            log::warn!("{caveat}");
            report.warnings.push(caveat);
        }
        if let Some(ledger) = &mut report.ledger {
            ledger.bucket_versioning = versioning;
        }
        let next = next.clone().stamped(now);
        match store.write(&next.to_json(), &read.version) {
            Ok(Written::Written) => {
                log::info!("LUN ledger {} written", read.place);
                LedgerOutcome::Written
            }
            Ok(Written::Conflict(since)) => {
                log::warn!(
                    "LUN ledger {} {}: not written; the next run plans again",
                    read.place,
                    since.describe()
                );
                LedgerOutcome::Conflict
            }
            Err(source) => {
                let error = SourceError::LedgerWrite {
                    place: read.place.clone(),
                    source,
                };
                log::warn!(
                    "{}; the next run plans again",
                    crate::secrets::redact(&crate::error::chain(&error))
                );
                LedgerOutcome::Failed
            }
        }
    };
    if let Some(ledger) = &mut report.ledger {
        ledger.outcome = outcome;
    }
}
