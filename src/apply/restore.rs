//! The restore apply: write `saveconfig.json`, `targetctl restore` it (which clears the whole
//! running target first: every session drops), verify with `targetctl save`, and put the
//! previous file back and restore it on failure.

use super::known_broken::KnownBroken;
use super::{back_up, Applied, Change};
use crate::error::{ApplyError, Error, FileError};
use crate::fsio::{create_parent_dir, parent_dir, write_atomic};
use crate::kernel::targetctl::Targetctl;
use crate::lio::managed::ManagedView;
use crate::lio::SaveConfig;
use crate::policy::Policy;
use std::fs;
use std::path::Path;

pub fn apply(policy: &Policy, change: &Change) -> Result<Applied, Error> {
    let lio = &policy.lio;
    let targetctl = Targetctl {
        path: lio.targetctl.clone(),
        timeout: lio.command_timeout,
    };
    targetctl.preflight()?;
    remove_stale_verify_files(&parent_dir(&lio.saveconfig));
    let backup = back_up(policy, change)?;
    let not_applied = |step| move |source| ApplyError::NotApplied { step, source };
    let live = &lio.saveconfig;
    create_parent_dir(live).map_err(not_applied("creating the directory"))?;
    write_atomic(live, change.desired.as_bytes())
        .map_err(not_applied("writing the configuration"))?;

    // Built only if rtslib skips something: parsing both files costs at 5,000 LUNs.
    let mut known = None;
    let mut known_broken = |line: &str| {
        known
            .get_or_insert_with(|| known_broken(policy, change.desired.as_bytes(), change.previous))
            .covers(line)
    };
    let outcome = targetctl
        .restore(live, &mut known_broken)
        .and_then(|tolerated| {
            let check = parent_dir(live).join(format!(
                ".sbps-reconcile-verify-{}.json",
                std::process::id()
            ));
            let saved = targetctl
                .save_and_read(&check, SaveConfig::read_managed)?
                .map_err(ApplyError::VerifyUnreadable)?;
            let differences = ManagedView::of(&saved, &policy.catalogue, &policy.target)
                .differences(change.expected);
            if differences.is_empty() {
                Ok(tolerated)
            } else {
                Err(ApplyError::Verify { differences })
            }
        });
    match outcome {
        Ok(tolerated) => Ok(Applied {
            backup,
            kernel_changes: 1,
            warnings: tolerated
                .iter()
                .map(|line| {
                    format!(
                        "targetctl restore: {}: an object this tool does not own, broken \
                         before this run (it was already in {}); left as it is",
                        crate::describe::printable(line.trim()),
                        live.display()
                    )
                })
                .collect(),
        }),
        Err(error) => {
            log::warn!(
                "{}; rolling back to the previous configuration",
                crate::error::chain(&error)
            );
            match rollback(&targetctl, live, change.previous, policy) {
                Ok(()) => Err(Error::RolledBack { error }),
                Err(rollback) => Err(Error::RollbackFailed {
                    error,
                    rollback: Box::new(rollback),
                }),
            }
        }
    }
}

/// Files of `targetctl save` that killed runs left (up to tens of MB each). The caller holds
/// the lock, so no other run is verifying: every one is stale.
fn remove_stale_verify_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".sbps-reconcile-verify-") && name.ends_with(".json") {
            match fs::remove_file(entry.path()) {
                Ok(()) => log::info!(
                    "removed {}, left by an interrupted run",
                    entry.path().display()
                ),
                Err(e) => log::warn!("cannot remove {}: {e}", entry.path().display()),
            }
        }
    }
}

fn rollback(
    targetctl: &Targetctl,
    live: &Path,
    previous: Option<&[u8]>,
    policy: &Policy,
) -> Result<(), ApplyError> {
    match previous {
        Some(bytes) => {
            write_atomic(live, bytes)?;
            // What was broken in the file before is broken the same way after.
            let mut known = None;
            let mut known_broken = |line: &str| {
                known
                    .get_or_insert_with(|| known_broken(policy, bytes, Some(bytes)))
                    .covers(line)
            };
            targetctl.restore(live, &mut known_broken).map(drop)
        }
        None => {
            // There was no file: the previous configuration was empty.
            match fs::remove_file(live) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(FileError::new("remove", live, e).into()),
            }
            targetctl.clear()
        }
    }
}

/// The foreign objects of `restored` that were already broken in `before`.
fn known_broken(policy: &Policy, restored: &[u8], before: Option<&[u8]>) -> KnownBroken {
    let Ok(restored) = SaveConfig::parse(restored) else {
        return KnownBroken::default();
    };
    let before = before.and_then(|bytes| SaveConfig::parse(bytes).ok());
    KnownBroken::new(&restored, before.as_ref(), policy)
}
