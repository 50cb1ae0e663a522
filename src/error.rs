//! Run-level errors and the exit codes they map to.
//!
//! Per-image problems are never errors: they are [`crate::skip::SkipReason`] values in the
//! plan. An [`Error`] means the run as a whole could not go on (or was refused), and its
//! [`ErrorKind`] alone decides the exit code, so `main` never reads message text.
//!
//! Variants keep their facts (paths, URLs, statuses, the command and its stderr) and their
//! causes (`source()`); [`chain`] renders an error with its causes for the report, and the
//! log prints one line per cause.

use crate::codes::named_enum;
pub use crate::fsio::{FileError, ReadError};
use std::path::PathBuf;
use std::time::Duration;

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
    /// Every exit status, in the order of their codes.
    pub const ALL: &'static [Exit] = &[
        Exit::Success,
        Exit::Failure,
        Exit::Changed,
        Exit::Refused,
        Exit::Usage,
        Exit::LockBusy,
        Exit::Config,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }
}

named_enum! {
    /// What kind of failure ended the run. Each kind maps to exactly one exit code; several
    /// kinds share a code but keep their own name in logs, metrics and the JSON report.
    pub enum ErrorKind {
        /// The policy is missing or invalid.
        Policy = "policy",
        /// A source (IMS, S3, the mount) could not be read; nothing was touched.
        Source = "source",
        /// The current saveconfig.json, or the running target in configfs, cannot be read or
        /// understood; nothing was touched.
        CurrentConfig = "current_config",
        /// A safety limit refused the plan; nothing was touched.
        Safety = "safety",
        /// Another run, or an interactive targetcli, holds the lock.
        LockBusy = "lock_busy",
        /// The apply failed before the running configuration was touched.
        Apply = "apply",
        /// The apply failed, and the previous configuration was restored.
        RolledBack = "rolled_back",
        /// The apply failed, and restoring the previous configuration failed too.
        RollbackFailed = "rollback_failed",
        /// The same plan failed the last time it was tried: the run waits (15 min, doubling
        /// to 4 h) before changing the target again; --retry-now tries at once.
        BackedOff = "backed_off",
    }
}

impl ErrorKind {
    pub fn exit(self) -> Exit {
        match self {
            ErrorKind::Policy => Exit::Config,
            ErrorKind::Safety => Exit::Refused,
            ErrorKind::LockBusy => Exit::LockBusy,
            ErrorKind::Source
            | ErrorKind::CurrentConfig
            | ErrorKind::Apply
            | ErrorKind::RolledBack
            | ErrorKind::RollbackFailed
            | ErrorKind::BackedOff => Exit::Failure,
        }
    }
}

/// Any error a source of ours wraps (reqwest, the AWS SDK), kept with its own causes.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failure that ends the run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read policy {}", path.display())]
    PolicyRead {
        path: PathBuf,
        #[source]
        source: ReadError,
    },
    #[error("invalid policy {}: {problem}", path.display())]
    PolicyInvalid {
        path: PathBuf,
        problem: Box<PolicyError>,
    },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("current configuration {}: {problem}; refusing to apply over it", path.display())]
    CurrentConfig {
        path: PathBuf,
        problem: ConfigProblem,
    },
    #[error("cannot read the current configuration {}", path.display())]
    CurrentConfigRead {
        path: PathBuf,
        #[source]
        source: ReadError,
    },
    #[error("cannot read the running target from configfs")]
    RunningConfig(#[source] KernelError),
    #[error("refused: {0}")]
    Safety(#[from] Refusal),
    #[error("lock {} is held by another process ({holder}); try again later", path.display())]
    LockBusy { path: PathBuf, holder: String },
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("the apply failed; the previous configuration was restored")]
    RolledBack {
        #[source]
        error: ApplyError,
    },
    #[error(
        "the same plan failed {count} time(s) in a row, last at {last} ({kind}: {message}); not \
         tried again before {retry} (sbps-reconcile --retry-now tries at once)"
    )]
    BackedOff {
        count: u32,
        kind: ErrorKind,
        message: String,
        /// Local times, as text.
        last: String,
        retry: String,
    },
    /// Two failures side by side (neither caused the other), so both are in the message.
    #[error(
        "{}; restoring the previous configuration also failed: {}; \
         the running configuration may match neither",
        chain(.error),
        chain(.rollback.as_ref())
    )]
    RollbackFailed {
        error: ApplyError,
        rollback: Box<ApplyError>,
    },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::PolicyRead { .. } | Error::PolicyInvalid { .. } => ErrorKind::Policy,
            Error::Source(_) => ErrorKind::Source,
            Error::CurrentConfig { .. }
            | Error::CurrentConfigRead { .. }
            | Error::RunningConfig(_) => ErrorKind::CurrentConfig,
            Error::Safety(_) => ErrorKind::Safety,
            Error::LockBusy { .. } => ErrorKind::LockBusy,
            Error::Apply(_) => ErrorKind::Apply,
            Error::RolledBack { .. } => ErrorKind::RolledBack,
            Error::RollbackFailed { .. } => ErrorKind::RollbackFailed,
            Error::BackedOff { .. } => ErrorKind::BackedOff,
        }
    }
}

/// A configfs operation the kernel refused, or that failed: what, where, and the OS error
/// (`EINVAL` is the kernel refusing a value; `EBUSY` an object still exported).
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}{}", path.display(), value.as_ref().map(|v| format!(" (value {v:?})")).unwrap_or_default())]
pub struct KernelError {
    /// `mkdir`, `rmdir`, `write`, `read`, `list`, `link`, `unlink`.
    pub op: &'static str,
    pub path: PathBuf,
    /// What was written, for a write.
    pub value: Option<String>,
    #[source]
    pub source: std::io::Error,
}

/// Why a policy cannot be used, and where. `section` is the path the message is shown
/// under (`catalogue`, `s3`, `ledger_prefix`: "catalogue: s3: ledger_prefix: ..."); `key`, when
/// set, is the key the message names in its own words ("iqn ... is not an iSCSI name"). The
/// line and column are where that key stands in the file, when it can be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub section: Vec<String>,
    pub key: Option<String>,
    pub message: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

impl PolicyError {
    /// A problem with the section it is reported in as a whole.
    pub fn new(message: impl Into<String>) -> PolicyError {
        PolicyError {
            section: Vec::new(),
            key: None,
            message: message.into(),
            line: None,
            column: None,
        }
    }

    /// A problem with `key`, which the message names.
    pub fn named(key: &str, message: impl Into<String>) -> PolicyError {
        PolicyError {
            key: Some(key.to_string()),
            ..PolicyError::new(message)
        }
    }

    /// The same problem, inside `section`.
    pub fn within(mut self, section: &str) -> PolicyError {
        self.section.insert(0, section.to_string());
        self
    }

    /// The dotted path of the key the problem is about: `target.portals`,
    /// `catalogue.prefix_sources[0].identity` (empty for the file as a whole).
    pub fn key_path(&self) -> String {
        let mut path = self.section.clone();
        path.extend(self.key.clone());
        path.join(".")
    }
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for part in &self.section {
            write!(f, "{part}: ")?;
        }
        f.write_str(&self.message)?;
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, " at line {line} column {column}"),
            (Some(line), None) => write!(f, " at line {line}"),
            _ => Ok(()),
        }
    }
}

impl std::error::Error for PolicyError {}

/// Why a ledger cannot be used. Never a reason to number afresh: the run stops.
#[derive(Debug, thiserror::Error)]
pub enum LedgerProblem {
    #[error("it is not a ledger: {0}")]
    NotALedger(#[source] serde_json::Error),
    #[error("its schema_version is {found}, this tool reads {reads} and older")]
    Version { found: u32, reads: u32 },
    #[error("it is the ledger of {found}, not of {expected}")]
    OtherTarget { found: String, expected: String },
    #[error("identities {first} and {second} both hold LUN {lun}")]
    SharedIndex {
        lun: u32,
        first: String,
        second: String,
    },
}

/// Why a `saveconfig.json` cannot be edited safely.
#[derive(Debug, thiserror::Error)]
pub enum ConfigProblem {
    #[error("the file is empty")]
    Empty,
    #[error("the file is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("the file holds {0}, not a JSON object")]
    NotAnObject(String),
    #[error("\"{key}\" is {found}, not a list")]
    NotAList { key: &'static str, found: String },
}

/// What a safety limit refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the plan removes {removals} LUNs, above safety.max_removals {limit}; nothing was touched \
         (check the catalogue and the mount, then rerun with --allow-removals if intended)"
    )]
    TooManyRemovals { removals: usize, limit: usize },
    #[error(
        "the plan keeps {kept} of the {before} projections in place, below \
         safety.min_kept_fraction {fraction}; nothing was touched (check the catalogue and the \
         mount, then rerun with --allow-removals if intended)"
    )]
    TooFewKept {
        kept: usize,
        before: usize,
        fraction: f64,
    },
}

/// Why the IMS answer (a file, or the body of a response) is not a list of records.
#[derive(Debug, thiserror::Error)]
pub enum AnswerProblem {
    #[error("the answer is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("the answer is {0}, not a JSON array of images")]
    NotAnArray(String),
}

/// Why a program run with a time limit gave no output.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("could not start `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` gave no answer within {:.1} s; killed", timeout.as_secs_f64())]
    TimedOut { command: String, timeout: Duration },
    #[error("cannot wait for `{command}`")]
    Wait {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

/// A source (IMS, S3, the mount, credentials) could not be read: the run changes nothing.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("cannot read {what}")]
    Read {
        what: &'static str,
        #[source]
        source: ReadError,
    },
    /// A file that was read but does not hold what it should.
    #[error("{what} {} {problem}", path.display())]
    FileContent {
        what: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error("IMS file {}", path.display())]
    ImsFile {
        path: PathBuf,
        #[source]
        problem: AnswerProblem,
    },
    #[error("image mount {} is not readable; refusing to plan against it", path.display())]
    MountUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image mount {} is not a directory", path.display())]
    MountNotADirectory { path: PathBuf },
    #[error(
        "image mount {} is not a mount point (is s3fs mounted?); refusing to plan against it \
         (catalogue.require_mountpoint: false for a plain directory)",
        path.display()
    )]
    NotAMountPoint { path: PathBuf },
    /// A source that yields nothing while projections exist: an outage, not "every image
    /// is gone".
    #[error(
        "{what}, but {projected} LUN(s) are projected from it: treated as an outage, nothing \
         touched (rerun with --allow-removals if every one must go)"
    )]
    Empty { what: String, projected: usize },
    #[error("more than {limit} entries under {}", path.display())]
    TooManyEntries { path: PathBuf, limit: usize },
    #[error("cannot fetch IMS images from {url}")]
    ImsRequest {
        url: String,
        #[source]
        source: BoxError,
    },
    #[error("IMS {url} did not answer within {:.1} s (catalogue.ims.timeout)", timeout.as_secs_f64())]
    ImsTimeout { url: String, timeout: Duration },
    #[error("IMS {url} answered HTTP {status}{}: {excerpt}", if *refused { " (the credentials were refused)" } else { "" })]
    ImsStatus {
        url: String,
        /// Code and reason, e.g. "401 Unauthorized".
        status: String,
        code: u16,
        /// 401 or 403.
        refused: bool,
        /// The start of the body.
        excerpt: String,
    },
    #[error("IMS answer from {url} is larger than {limit} bytes")]
    ImsTooLarge { url: String, limit: usize },
    #[error("IMS {url}")]
    ImsAnswer {
        url: String,
        #[source]
        problem: AnswerProblem,
    },
    #[error("cannot list {place} (page {page})")]
    S3List {
        /// `bucket NAME`, or the `s3://` URL of a prefix.
        place: String,
        page: usize,
        #[source]
        source: BoxError,
    },
    #[error("listing {place} did not end within {pages} pages")]
    S3ListEndless { place: String, pages: usize },
    #[error("SPIRE agent {}", agent.display())]
    SpireRun {
        agent: PathBuf,
        #[source]
        source: ProcessError,
    },
    #[error("SPIRE agent {} failed ({status}): {stderr}", agent.display())]
    SpireFailed {
        agent: PathBuf,
        status: String,
        /// The first line the agent wrote on stderr.
        stderr: String,
    },
    #[error("SPIRE agent {}: {problem}", agent.display())]
    SpireAnswer {
        agent: PathBuf,
        problem: SvidProblem,
    },
    #[error("{what}: {problem}")]
    Tls { what: &'static str, problem: String },
    #[error("cannot start the I/O runtime")]
    Runtime(#[source] std::io::Error),
    #[error(
        "{what}: the run's deadline of {:.0} s passed (safety.run_deadline); nothing touched",
        deadline.as_secs_f64()
    )]
    Deadline { what: String, deadline: Duration },
    #[error("this build has no live sources (IMS url, S3); rebuild with the `live` feature")]
    NoLiveSources,
    #[error(
        "the policy keeps no LUN ledger (catalogue.s3.ledger_prefix, lio.ledger_file): there \
         is no fleet to read"
    )]
    NoLedger,
    #[error(
        "cannot read the LUN ledger {place}; nothing touched (numbering without it could \
         give an initiator's LUN to another image)"
    )]
    LedgerRead {
        place: String,
        #[source]
        source: BoxError,
    },
    #[error(
        "the LUN ledger {place} cannot be used; nothing touched (repair it, or restore an \
         earlier version: see LUN LEDGER in sbps-reconcile.policy(5))"
    )]
    LedgerInvalid {
        place: String,
        #[source]
        problem: LedgerProblem,
    },
    #[error("cannot write the LUN ledger {place}")]
    LedgerWrite {
        place: String,
        #[source]
        source: BoxError,
    },
}

/// Why the SPIRE agent's output holds no usable SVID.
#[derive(Debug, thiserror::Error)]
pub enum SvidProblem {
    #[error("its output is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("no SVID for an accepted SPIFFE ID (accepted: {accepted:?}; offered: {offered:?})")]
    NoAcceptedId {
        accepted: Vec<String>,
        offered: Vec<String>,
    },
}

/// The apply failed; what was attempted, with its facts.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot use targetctl {}", path.display())]
    TargetctlMissing {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("targetctl {} is not an executable file", path.display())]
    TargetctlNotExecutable { path: PathBuf },
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Targetctl(Box<TargetctlFailure>),
    #[error(transparent)]
    File(#[from] FileError),
    /// A step before the running configuration was touched failed.
    #[error("{step} failed, nothing applied")]
    NotApplied {
        step: &'static str,
        #[source]
        source: FileError,
    },
    #[error("verify: `targetctl save` wrote an unreadable file: {0}")]
    VerifyUnreadable(ConfigProblem),
    #[error(
        "LIO's configfs is not at {} (is configfs mounted and target_core_mod loaded, as \
         target.service does?); nothing applied",
        root.display()
    )]
    NotLoaded { root: PathBuf },
    #[error("cannot read the running target")]
    Kernel(#[source] KernelError),
    #[error("configfs step \"{step}\" failed")]
    Step {
        step: String,
        #[source]
        source: KernelError,
    },
    #[error(
        "undoing failed: {}{}",
        failures.join("; "),
        if differences.is_empty() { String::new() } else { format!("; the running target differs from before: {}", differences.join("; ")) }
    )]
    Undo {
        failures: Vec<String>,
        differences: Vec<String>,
    },
    /// The kernel runs the plan, but the file could not be written.
    #[error(
        "the running target was changed, but saving the configuration failed (the next run \
         saves it)"
    )]
    Unsaved {
        #[source]
        source: FileError,
    },
    #[error(
        "verify: the running configuration differs from what was written: {}",
        differences.join("; ")
    )]
    Verify { differences: Vec<String> },
}

impl From<TargetctlFailure> for ApplyError {
    fn from(failure: TargetctlFailure) -> ApplyError {
        ApplyError::Targetctl(Box::new(failure))
    }
}

/// `targetctl` ran and said it failed, or said so only in its output (`restore` exits 0
/// even when it skipped objects).
#[derive(Debug)]
pub struct TargetctlFailure {
    /// The command line, e.g. `/usr/bin/targetctl restore /etc/target/saveconfig.json`.
    pub command: String,
    /// The exit status, when it was not success.
    pub status: Option<String>,
    /// The first non-empty line of stderr.
    pub stderr_first_line: Option<String>,
    /// Lines ending in `, skipped`: objects rtslib could not load.
    pub skipped: Vec<String>,
    /// The file that `targetctl restore` did not find.
    pub no_file: Option<PathBuf>,
}

impl std::fmt::Display for TargetctlFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut problems = Vec::new();
        if let Some(status) = &self.status {
            problems.push(match &self.stderr_first_line {
                Some(line) => format!("exited with {status}: {line}"),
                None => format!("exited with {status}"),
            });
        }
        problems.extend(self.skipped.iter().cloned());
        if let Some(file) = &self.no_file {
            problems.push(format!("targetctl found no file at {}", file.display()));
        }
        write!(f, "`{}` failed: {}", self.command, problems.join("; "))
    }
}

impl std::error::Error for TargetctlFailure {}

/// An error and its causes on one line, `top: cause: cause`.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    for cause in cause_lines(error) {
        text.push_str(": ");
        text.push_str(&cause);
    }
    text
}

/// The causes of an error, nearest first. A cause whose text its parent's message already
/// holds is left out (some libraries repeat their source in their own message).
pub fn cause_lines(error: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut parent = error.to_string();
    let mut lines = Vec::new();
    let mut next = error.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !parent.contains(&text) {
            lines.push(text.clone());
        }
        parent = text;
        next = cause.source();
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_an_exit_code_and_a_name() {
        for kind in ErrorKind::ALL {
            assert_ne!(kind.exit(), Exit::Success, "{kind}");
            assert!(!kind.description().is_empty(), "{kind}");
        }
        assert_eq!(ErrorKind::RollbackFailed.as_str(), "rollback_failed");
    }

    #[test]
    fn the_chain_keeps_every_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let error = Error::Apply(ApplyError::NotApplied {
            step: "backup",
            source: FileError::new("create", "/etc/target/backup", io),
        });
        assert_eq!(
            chain(&error),
            "backup failed, nothing applied: cannot create /etc/target/backup: denied"
        );
        assert_eq!(
            cause_lines(&error),
            ["cannot create /etc/target/backup", "denied"]
        );
    }

    #[test]
    fn a_failed_rollback_names_both_failures() {
        let failure = |status: &str| {
            ApplyError::from(TargetctlFailure {
                command: "targetctl restore /x".to_string(),
                status: Some(status.to_string()),
                stderr_first_line: None,
                skipped: vec!["Could not create StorageObject a, skipped".to_string()],
                no_file: None,
            })
        };
        let error = Error::RollbackFailed {
            error: failure("exit status: 1"),
            rollback: Box::new(failure("exit status: 1")),
        };
        // The same failure twice is still said twice.
        let text = chain(&error);
        assert_eq!(text.matches("exit status: 1").count(), 2, "{text}");
        assert_eq!(error.kind().exit(), Exit::Failure);
    }
}
