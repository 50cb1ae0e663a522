//! Run-level errors and the exit codes they map to.
//!
//! Per-image problems are never errors: they are [`crate::skip::SkipReason`] values in the
//! plan. An [`Error`] means the run as a whole could not go on (or was refused), and its
//! [`ErrorKind`] alone decides the exit code, so `main` never reads message text.

use std::fmt;
use std::path::PathBuf;

/// The exit codes of the tool: a contract with systemd units, playbooks and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The run succeeded (with or without changes, unless `--detailed-exitcode`).
    Success = 0,
    /// A run-time failure: nothing was applied, or the apply was rolled back.
    Failure = 1,
    /// With `--detailed-exitcode`: success, and the plan had changes.
    Changed = 2,
    /// Refused by a safety limit; nothing was touched.
    Refused = 3,
    /// Bad command line (EX_USAGE).
    Usage = 64,
    /// Another run holds the lock (EX_TEMPFAIL).
    LockBusy = 75,
    /// The policy cannot be read or is invalid (EX_CONFIG).
    Config = 78,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// What kind of failure ended the run. Each kind maps to exactly one exit code; several
/// kinds share a code but keep their own name in logs and in the JSON report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Usage,
    Policy,
    /// A source (IMS, S3, the mount) could not be read; the run changes nothing.
    Source,
    /// The current `saveconfig.json` cannot be read or understood; nothing is touched.
    CurrentConfig,
    /// A safety limit refused the plan.
    Safety,
    /// Another run (or targetcli) holds the lock.
    LockBusy,
    /// Apply failed before the live configuration was touched.
    Apply,
    /// Apply failed, and the previous configuration was restored.
    RolledBack,
    /// Apply failed, and restoring the previous configuration failed too.
    RollbackFailed,
}

impl ErrorKind {
    pub fn exit(self) -> Exit {
        match self {
            ErrorKind::Usage => Exit::Usage,
            ErrorKind::Policy => Exit::Config,
            ErrorKind::Safety => Exit::Refused,
            ErrorKind::LockBusy => Exit::LockBusy,
            ErrorKind::Source
            | ErrorKind::CurrentConfig
            | ErrorKind::Apply
            | ErrorKind::RolledBack
            | ErrorKind::RollbackFailed => Exit::Failure,
        }
    }

    /// Stable machine name, used in the JSON report and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Usage => "usage",
            ErrorKind::Policy => "policy",
            ErrorKind::Source => "source",
            ErrorKind::CurrentConfig => "current_config",
            ErrorKind::Safety => "safety",
            ErrorKind::LockBusy => "lock_busy",
            ErrorKind::Apply => "apply",
            ErrorKind::RolledBack => "rolled_back",
            ErrorKind::RollbackFailed => "rollback_failed",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure that ends the run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read policy {path}: {source}")]
    PolicyRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid policy {path}: {message}")]
    PolicyInvalid { path: PathBuf, message: String },
    #[error("{0}")]
    Source(String),
    #[error("current configuration {path}: {message}")]
    CurrentConfig { path: PathBuf, message: String },
    #[error("refused: {0}")]
    Safety(String),
    #[error("lock {path} is held by another process ({holder}); try again later")]
    LockBusy { path: PathBuf, holder: String },
    #[error("{0}")]
    Apply(String),
    #[error("{error}; the previous configuration was restored")]
    RolledBack { error: String },
    #[error("{error}; restoring the previous configuration also failed: {rollback}; the live configuration may match neither")]
    RollbackFailed { error: String, rollback: String },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::PolicyRead { .. } | Error::PolicyInvalid { .. } => ErrorKind::Policy,
            Error::Source(_) => ErrorKind::Source,
            Error::CurrentConfig { .. } => ErrorKind::CurrentConfig,
            Error::Safety(_) => ErrorKind::Safety,
            Error::LockBusy { .. } => ErrorKind::LockBusy,
            Error::Apply(_) => ErrorKind::Apply,
            Error::RolledBack { .. } => ErrorKind::RolledBack,
            Error::RollbackFailed { .. } => ErrorKind::RollbackFailed,
        }
    }
}
