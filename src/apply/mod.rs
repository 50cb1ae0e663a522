//! Applying a plan to the running target, then saving it: backup, the change itself (in
//! place through configfs, or a whole `targetctl restore`), verification, and roll back on
//! failure. The caller holds the locks ([`lock`]).

pub mod backup;
pub mod inplace;
pub mod known_broken;
pub mod lock;
pub mod restore;

use crate::error::{ApplyError, Error};
use crate::lio::managed::ManagedView;
use crate::policy::{ApplyMode, Policy};
use std::path::PathBuf;

pub use lock::Lock;

/// What the plan wants the running target and `saveconfig.json` to be.
pub struct Change<'a> {
    /// The file's bytes now (`None` when there is no file), to back up and to roll back to.
    pub previous: Option<&'a [u8]>,
    /// The configuration to save, as its canonical text (the parsed form is not needed
    /// here, and at 5,500 LUNs was 10 MB held through a restore's verification).
    pub desired: &'a str,
    /// Its managed part, which the running target must equal afterwards.
    pub expected: &'a ManagedView,
    /// The backup's time stamp, `YYYYmmdd-HH:MM:SS`.
    pub stamp: &'a str,
}

/// What an apply did.
#[derive(Debug, Default)]
pub struct Applied {
    pub backup: Option<PathBuf>,
    /// Changes made to the running target (configfs steps, or 1 for a restore).
    pub kernel_changes: usize,
    /// What the report and the log should say about it (a foreign object that was already
    /// broken).
    pub warnings: Vec<String>,
}

/// Applies `change` in the policy's mode.
pub fn apply(policy: &Policy, change: &Change) -> Result<Applied, Error> {
    match policy.lio.apply {
        ApplyMode::Restore => restore::apply(policy, change),
        ApplyMode::Configfs => inplace::apply(policy, change),
    }
}

/// Backs up the current file (when there is one) before anything changes.
fn back_up(policy: &Policy, change: &Change) -> Result<Option<PathBuf>, ApplyError> {
    let lio = &policy.lio;
    let Some(bytes) = change.previous else {
        return Ok(None);
    };
    let path = backup::backup(&lio.backup_dir, lio.backups_kept, bytes, change.stamp).map_err(
        |source| ApplyError::NotApplied {
            step: "the backup",
            source,
        },
    )?;
    if let Some(path) = &path {
        log::info!(
            "backed up {} as {}",
            lio.saveconfig.display(),
            path.display()
        );
    }
    Ok(path)
}
