//! Backing off a plan that keeps failing. A failure that repeats (a foreign LUN pointing at
//! a missing object, a save that always differs) would otherwise make every run apply and
//! roll back, every 3 minutes, forever; with `targetctl restore` that drops every session
//! twice a run. So the failure is remembered with the plan's fingerprint, and the same plan
//! is not tried again before a delay that doubles with each failure (15 min, 30 min, ...,
//! 4 h). Another plan, `--retry-now`, or a successful run clears it.
//!
//! The record is soft state, safe to delete: `lio.state_dir/failures.json`.

use crate::error::{ErrorKind, FileError};
use crate::plan::Plan;
use crate::policy::ApplyMode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha224};
use std::path::{Path, PathBuf};
use std::time::Duration;

const FILE: &str = "failures.json";

/// The last failure of a plan, and how many times in a row it failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// What was tried: see [`fingerprint`].
    pub fingerprint: String,
    pub kind: ErrorKind,
    /// The error with its causes.
    pub message: String,
    /// Failures in a row of this plan.
    pub count: u32,
    /// Unix times of the first and the last failure.
    pub first_unix: u64,
    pub last_unix: u64,
}

impl FailureRecord {
    /// Unix time from which the same plan may be tried again.
    pub fn retry_unix(&self) -> u64 {
        self.last_unix.saturating_add(delay(self.count).as_secs())
    }
}

/// The pause after `count` failures in a row: 15 minutes, doubling, at most 4 hours.
pub fn delay(count: u32) -> Duration {
    let minutes = 15u64.saturating_mul(1 << count.saturating_sub(1).min(4));
    Duration::from_secs(minutes * 60)
}

/// What a plan would change: the desired configuration, how the running target differs
/// from it, and how it is applied. The same fingerprint means the same attempt.
pub fn fingerprint(plan: &Plan, mode: ApplyMode) -> String {
    let mut digest = Sha224::new();
    digest.update(plan.desired.to_canonical());
    for line in &plan.drift {
        digest.update(b"\n");
        digest.update(line);
    }
    digest.update(format!("{mode:?}"));
    digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether an apply of the plan with `fingerprint` must wait: the record of its last
/// failure, when the pause after it has not passed at `now_unix`.
pub fn must_wait<'a>(
    record: Option<&'a FailureRecord>,
    fingerprint: &str,
    now_unix: u64,
) -> Option<&'a FailureRecord> {
    record.filter(|r| r.fingerprint == fingerprint && now_unix < r.retry_unix())
}

/// The record after another failure at `now_unix`: counted on when the plan is the same.
pub fn next_record(
    previous: Option<&FailureRecord>,
    fingerprint: &str,
    kind: ErrorKind,
    message: &str,
    now_unix: u64,
) -> FailureRecord {
    match previous.filter(|r| r.fingerprint == fingerprint) {
        Some(r) => FailureRecord {
            kind,
            message: message.to_string(),
            count: r.count.saturating_add(1),
            last_unix: now_unix,
            ..r.clone()
        },
        None => FailureRecord {
            fingerprint: fingerprint.to_string(),
            kind,
            message: message.to_string(),
            count: 1,
            first_unix: now_unix,
            last_unix: now_unix,
        },
    }
}

/// The record on disk.
#[derive(Debug, Clone)]
pub struct FailureLog {
    path: PathBuf,
}

impl FailureLog {
    pub fn new(state_dir: &Path) -> FailureLog {
        FailureLog {
            path: state_dir.join(FILE),
        }
    }

    /// The last failure; none when the file is missing, unreadable or corrupt.
    pub fn load(&self) -> Option<FailureRecord> {
        let bytes = crate::fsio::read_regular(&self.path, 64 * 1024).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn save(&self, record: &FailureRecord) -> Result<(), FileError> {
        crate::fsio::create_private_dir(&crate::fsio::parent_dir(&self.path))?;
        let bytes = serde_json::to_vec_pretty(record).unwrap_or_default();
        crate::fsio::write_atomic(&self.path, &bytes)
    }

    pub fn clear(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_plan_waits_longer_after_each_failure() {
        assert_eq!(delay(1), Duration::from_secs(15 * 60));
        assert_eq!(delay(2), Duration::from_secs(30 * 60));
        assert_eq!(delay(5), Duration::from_secs(4 * 3600));
        assert_eq!(delay(50), Duration::from_secs(4 * 3600));
        let first = next_record(None, "f1", ErrorKind::RolledBack, "boom", 1000);
        assert_eq!(first.count, 1);
        assert_eq!(must_wait(Some(&first), "f1", 1000 + 14 * 60), Some(&first));
        assert_eq!(must_wait(Some(&first), "f1", 1000 + 15 * 60), None);
        assert_eq!(
            must_wait(Some(&first), "f2", 1001),
            None,
            "another plan goes"
        );
        let second = next_record(Some(&first), "f1", ErrorKind::RolledBack, "boom", 2000);
        assert_eq!((second.count, second.first_unix), (2, 1000));
        assert_eq!(second.retry_unix(), 2000 + 30 * 60);
        let other = next_record(Some(&second), "f2", ErrorKind::Apply, "x", 3000);
        assert_eq!(other.count, 1);
    }
}
