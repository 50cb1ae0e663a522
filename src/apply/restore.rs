//! The restore apply: write `saveconfig.json`, `targetctl restore` it (which clears the whole
//! running target first: every session drops), verify with `targetctl save`, and put the
//! previous file back and restore it on failure.

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

    let outcome = targetctl.restore(live).and_then(|()| {
        let check = parent_dir(live).join(format!(
            ".sbps-reconcile-verify-{}.json",
            std::process::id()
        ));
        let saved = targetctl
            .save_and_read(&check, SaveConfig::read_managed)?
            .map_err(ApplyError::VerifyUnreadable)?;
        let differences =
            ManagedView::of(&saved, &policy.catalogue, &policy.target).differences(change.expected);
        if differences.is_empty() {
            Ok(())
        } else {
            Err(ApplyError::Verify { differences })
        }
    });
    match outcome {
        Ok(()) => Ok(Applied {
            backup,
            kernel_changes: 1,
        }),
        Err(error) => {
            log::warn!(
                "{}; rolling back to the previous configuration",
                crate::error::chain(&error)
            );
            match rollback(&targetctl, live, change.previous) {
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

fn rollback(targetctl: &Targetctl, live: &Path, previous: Option<&[u8]>) -> Result<(), ApplyError> {
    match previous {
        Some(bytes) => {
            write_atomic(live, bytes)?;
            targetctl.restore(live)
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
