//! The commands beside reconcile: `status` (what is in place), `fleet` (every target's
//! ledger as one view) and `explain` (the planner's rules for one image).

use super::current::{read_running, CurrentFile};
use super::inputs::{grace_files, load_policy, now_unix, read_catalogue, Inputs};
use super::ledger_step::read_ledger;
use super::output::{fail_command, json, write_stdout};
use crate::backoff::FailureLog;
use crate::cli::{Cli, Output};
use crate::deadline::Deadline;
use crate::error::{Error, Exit, SourceError};
use crate::{explain, fleet, sources, status};

/// `status`: the LUNs in place now, and the images they serve where the catalogue can tell.
pub(super) fn status_command(cli: &Cli) -> Result<Exit, Error> {
    let result = (|| {
        let policy = load_policy(cli)?;
        let current = CurrentFile::read(&policy.lio.saveconfig)?;
        let running = read_running(&policy)?;
        let deadline = Deadline::after(policy.safety.run_deadline);
        // The ledger names the images even when the catalogue cannot be read.
        let (read, ledger) = match sources::open(&policy, deadline) {
            Ok(sources) => {
                let mut ledger = read_ledger(&policy, &sources).unwrap_or_else(|e| {
                    log::warn!("{}", crate::error::chain(&e));
                    None
                });
                if let (Some(read), Some(store)) = (&mut ledger, &sources.ledger) {
                    read.bucket_versioning = store.versioning();
                }
                let snapshot = sources::collect(&policy, &sources, &grace_files(&policy, &current));
                (snapshot.map_err(Error::from), ledger)
            }
            Err(e) => (Err(Error::from(e)), None),
        };
        let (plan, catalogue_error) = match read {
            Ok(snapshot) => {
                let inputs = Inputs {
                    policy: &policy,
                    snapshot: &snapshot,
                    ledger: ledger.as_ref(),
                    now: now_unix(),
                };
                (Some(inputs.plan(&current, running.as_ref())), None)
            }
            Err(e) => {
                let text = crate::error::chain(&e);
                log::warn!("{text}");
                (None, Some(text))
            }
        };
        let mut status = status::status(
            &current.config,
            &policy,
            plan.as_ref(),
            running.as_ref(),
            catalogue_error,
            ledger.as_ref(),
        );
        status.last_failure = FailureLog::new(&policy.lio.state_dir).load();
        Ok::<_, Error>(status)
    })();
    match result {
        Ok(status) => {
            let text = match cli.output {
                Output::Json => json(&status),
                Output::Text => status.to_text(),
            };
            Ok(write_stdout(&text))
        }
        Err(error) => Err(fail_command(cli, error)),
    }
}

/// `fleet`: every target's ledger under the prefix, as one view (see [`crate::fleet`]).
pub(super) fn fleet_command(cli: &Cli) -> Result<Exit, Error> {
    let result = (|| {
        let policy = load_policy(cli)?;
        let deadline = Deadline::after(policy.safety.run_deadline);
        let sources = sources::open(&policy, deadline)?;
        let store = sources.ledger.as_ref().ok_or(SourceError::NoLedger)?;
        // The images IMS tags, to find one that no target serves.
        let mut ims_failed = false;
        let tagged = match policy.catalogue.ims {
            None => None,
            Some(_) => match sources.images.records() {
                Ok(records) => Some(
                    records
                        .iter()
                        .filter_map(|entry| match entry {
                            crate::image::ImageEntry::Valid(record) => Some(record),
                            crate::image::ImageEntry::Invalid { .. } => None,
                        })
                        .filter(|record| policy.catalogue.select.check(record).is_ok())
                        .map(crate::plan::ImageRef::of)
                        .collect(),
                ),
                Err(e) => {
                    log::warn!("{}", crate::error::chain(&e));
                    ims_failed = true;
                    None
                }
            },
        };
        let context = fleet::Context {
            now: now_unix(),
            stale_after: policy.fleet_stale_after.as_secs(),
            removal_grace: policy.safety.removal_grace.as_secs(),
            tagged,
        };
        // Each ledger is parsed and folded into the view as it arrives, then let go.
        let mut builder = fleet::Builder::new(&context);
        store
            .everyone(&mut |read| {
                builder.add(fleet::ReadLedger {
                    ledger: read.bytes.map_err(|e| e.to_string()).and_then(|bytes| {
                        crate::ledger::Ledger::parse(&bytes, &read.target)
                            .map_err(|e| e.to_string())
                    }),
                    target: read.target,
                    place: read.place,
                })
            })
            .map_err(|source| SourceError::LedgerRead {
                place: store.place(),
                source,
            })?;
        Ok::<_, Error>((builder.finish(), ims_failed))
    })();
    match result {
        Ok((view, ims_failed)) => {
            for target in view.targets.iter().filter(|t| t.error.is_some()) {
                log::warn!(
                    "the LUN ledger {} cannot be used: {}",
                    crate::describe::printable(&target.place),
                    crate::describe::printable(target.error.as_deref().unwrap_or_default())
                );
            }
            let text = match cli.output {
                Output::Json => json(&view),
                Output::Text => view.to_text(),
            };
            write_stdout(&text);
            Ok(if view.incomplete() || ims_failed {
                Exit::Failure
            } else if view.agree {
                Exit::Success
            } else {
                Exit::Changed
            })
        }
        Err(error) => Err(fail_command(cli, error)),
    }
}

/// `explain IMAGE`: the rules the planner applies to that image, one by one.
pub(super) fn explain_command(cli: &Cli, query: &str) -> Result<Exit, Error> {
    let result = (|| {
        let policy = load_policy(cli)?;
        let deadline = Deadline::after(policy.safety.run_deadline);
        let (current, sources, snapshot) = read_catalogue(&policy, deadline)?;
        let ledger = read_ledger(&policy, &sources)?;
        let running = read_running(&policy)?;
        let inputs = Inputs {
            policy: &policy,
            snapshot: &snapshot,
            ledger: ledger.as_ref(),
            now: now_unix(),
        };
        let plan = inputs.plan(&current, running.as_ref());
        Ok::<_, Error>(explain::explain(&policy, &snapshot, &plan, query))
    })();
    match result {
        Ok(explanations) if explanations.is_empty() => {
            log::error!("no image, image name, object key or s3:// URL {query:?} in the catalogue");
            if cli.output == Output::Json {
                let _ = write_stdout("[]\n");
            }
            Ok(Exit::Failure)
        }
        Ok(explanations) => {
            let text = match cli.output {
                Output::Json => json(&explanations),
                Output::Text => explain::to_text(&explanations),
            };
            Ok(write_stdout(&text))
        }
        Err(error) => Err(fail_command(cli, error)),
    }
}
