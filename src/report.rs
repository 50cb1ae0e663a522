//! The run's report: text for people, one JSON document for programs. The JSON fields are a
//! contract (playbooks and tests read them): extend, never rename. The plan's own types
//! (`Projection`, `Skipped`) serialize to the contract's shape, so the report holds them as
//! they are.

use crate::cli::DiffMode;
use crate::codes::named_enum;
use crate::describe::printable;
use crate::diff;
use crate::error::{self, Error, ErrorKind};
use crate::lio::SaveConfig;
use crate::plan::{Action, Plan, Projection, Skipped};
use crate::policy::{ApplyMode, Policy};
use crate::prefix_source::IdentityRule;
use crate::skip::ReasonCode;
use crate::snapshot::Snapshot;
use serde::Serialize;
use std::fmt::Write as _;

/// Bumped when a field changes meaning; new fields do not bump it.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub dry_run: bool,
    pub changed: bool,
    pub applied: bool,
    pub target: Option<String>,
    /// `offline` or `live`.
    pub mode: Option<&'static str>,
    /// Whether S3 ETags were checked against the manifests (rule 3).
    pub etag_verified: bool,
    pub summary: Summary,
    pub projections: std::sync::Arc<Vec<Projection>>,
    pub skipped: Vec<Skipped>,
    pub target_changes: Vec<String>,
    /// How the running target differs from the plan (read from configfs), one line each.
    pub drift: Vec<String>,
    pub lun_removals: usize,
    /// `configfs` (in place) or `restore`.
    pub apply_mode: Option<ApplyMode>,
    /// Changes made to the running target by this run: configfs steps, or 1 for a restore.
    pub kernel_changes: usize,
    pub backup: Option<String>,
    pub notes: Vec<String>,
    /// What the operator must know that is neither a skip nor an error (an object rewritten
    /// in place under a served LUN), one line each; also logged at warning.
    pub warnings: Vec<String>,
    /// The unified diff of saveconfig.json, or past 2,000 lines (without `--diff full`) a
    /// line saying how large it is.
    pub diff: String,
    /// Lines of the whole diff.
    pub diff_lines: usize,
    /// Whether `diff` holds the whole diff.
    pub diff_complete: bool,
    pub error: Option<ErrorReport>,
    /// The target's LUN ledger, when the policy keeps one.
    pub ledger: Option<LedgerReport>,
}

/// What a run did with the LUN ledger.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerReport {
    /// A path or an `s3://` URL.
    pub place: String,
    /// Whether there was a ledger when the run read it.
    pub found: bool,
    /// How many other targets' ledgers were read under the prefix.
    pub fleet_targets: usize,
    /// Whether the run planned with the ledger as this worker last read or wrote it (kept in
    /// `catalogue.s3.cache_dir`), without asking the bucket: a run that changes nothing,
    /// between full verifications.
    pub remembered: bool,
    pub outcome: LedgerOutcome,
    /// `"enabled"` or `"suspended"` when the ledger's bucket keeps object versions (the
    /// conditional write may not hold there: see `warnings`); `null` when it does not, or
    /// when the run did not ask (it planned with the remembered ledger).
    pub bucket_versioning: Option<&'static str>,
    /// Why this version does not rewrite the ledger (a newer major version wrote it: its
    /// numbers are honoured, the file left as it is); `null` when it may.
    pub read_only: Option<String>,
}

named_enum! {
    /// What became of the ledger in a run.
    pub enum LedgerOutcome {
        /// Not written: a dry run, or the run stopped before the target was as planned.
        NotWritten = "not_written",
        /// The ledger already said what the plan leaves.
        Unchanged = "unchanged",
        /// Written (conditionally on the version read).
        Written = "written",
        /// Another run wrote it first: nothing written, the next run plans again.
        Conflict = "conflict",
        /// The write failed (logged); the next run plans again.
        Failed = "failed",
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub add: usize,
    pub remove: usize,
    pub keep: usize,
    pub update: usize,
    pub skipped: usize,
}

#[derive(Debug, Serialize)]
pub struct ErrorReport {
    pub kind: ErrorKind,
    /// The error with its causes, on one line.
    pub message: String,
}

impl Report {
    /// A report with no plan (the run failed before planning).
    pub fn empty(dry_run: bool) -> Report {
        Report {
            schema_version: SCHEMA_VERSION,
            dry_run,
            changed: false,
            applied: false,
            target: None,
            mode: None,
            etag_verified: false,
            summary: Summary::default(),
            projections: Default::default(),
            skipped: Vec::new(),
            target_changes: Vec::new(),
            drift: Vec::new(),
            lun_removals: 0,
            apply_mode: None,
            kernel_changes: 0,
            backup: None,
            notes: Vec::new(),
            warnings: Vec::new(),
            diff: String::new(),
            diff_lines: 0,
            diff_complete: true,
            error: None,
            ledger: None,
        }
    }

    /// The report of a plan, as a run prints it before it applies anything: where the
    /// catalogue came from, what changes and why images are skipped, and the diff from the
    /// current configuration.
    pub fn of_plan(
        policy: &Policy,
        snapshot: &Snapshot,
        current: &SaveConfig,
        running_read: bool,
        plan: &Plan,
        dry_run: bool,
        diff_mode: DiffMode,
    ) -> Report {
        let mut report = Report::empty(dry_run);
        report.mode = Some(policy.catalogue.mode());
        report.apply_mode = Some(policy.lio.apply);
        report.etag_verified = snapshot.verifies_etags();
        if !snapshot.verifies_etags() {
            report.notes.push(
                "offline catalogue: S3 ETags were not checked; manifest etags are trusted"
                    .to_string(),
            );
            let by_version: Vec<&str> = policy
                .catalogue
                .sources
                .iter()
                .filter(|s| s.identity == IdentityRule::KeyEtag)
                .map(|s| s.prefix.as_str())
                .collect();
            if !by_version.is_empty() {
                report.notes.push(format!(
                    "offline catalogue: objects under {} (identity: key+etag) are identified \
                     by their size and modification time in the mount, not by an ETag; the \
                     same object served live gets another identity",
                    by_version.join(", ")
                ));
            }
        }
        if !running_read {
            report.notes.push(format!(
                "running target not read: LIO is not loaded here ({} has no core/); planned \
                 against saveconfig.json alone",
                policy.lio.configfs.display()
            ));
        }
        report.target = Some(policy.target.iqn.clone());
        report.changed = plan.needs_apply();
        report.drift = plan.drift.clone();
        report.warnings = plan.warnings.clone();
        report.summary = Summary {
            add: plan.count(Action::Add),
            remove: plan.count(Action::Remove),
            keep: plan.count(Action::Keep),
            update: plan.count(Action::Update),
            skipped: plan.skipped.len(),
        };
        report.projections = plan.projections.clone();
        report.skipped = plan.skipped.clone();
        report.target_changes = plan.target_changes.clone();
        report.lun_removals = plan.lun_removals;
        // A plan that changes nothing in the file has no diff to compute.
        if plan.changed {
            let shown = diff::shown(
                &current.to_canonical(),
                &plan.desired.to_canonical(),
                diff_mode == DiffMode::Full,
            );
            report.diff = shown.text;
            report.diff_lines = shown.lines;
            report.diff_complete = shown.complete;
        }
        report
    }

    pub fn set_error(&mut self, error: &Error) {
        self.error = Some(ErrorReport {
            kind: error.kind(),
            message: crate::secrets::redact(&error::chain(error)).into_owned(),
        });
    }

    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// The text report: what changes, what is skipped and why, the summary, the diff.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if let Some(target) = &self.target {
            let _ = write!(out, "Target {target}");
            if let Some(mode) = &self.mode {
                let _ = write!(out, " ({mode} catalogue)");
            }
            out.push('\n');
        }
        for note in &self.notes {
            let _ = writeln!(out, "Note: {note}");
        }
        for warning in &self.warnings {
            let _ = writeln!(out, "Warning: {}", printable(warning));
        }
        let changes: Vec<String> = self
            .projections
            .iter()
            .filter(|p| p.action != Action::Keep)
            .map(diff::projection_line)
            .chain(self.target_changes.iter().map(|c| format!("~ target  {c}")))
            .collect();
        if !changes.is_empty() {
            let heading = if self.applied {
                "Applied"
            } else if self.dry_run {
                "Changes (dry run, nothing applied)"
            } else {
                "Changes (not applied)"
            };
            let _ = writeln!(out, "{heading}:");
            for line in &changes {
                let _ = writeln!(out, "  {line}");
            }
        }
        if !self.drift.is_empty() {
            let _ = writeln!(
                out,
                "Running target differs from the plan (repaired by an apply):"
            );
            for line in &self.drift {
                let _ = writeln!(out, "  ~ {}", printable(line));
            }
        }
        let (untagged, listed): (Vec<&Skipped>, Vec<&Skipped>) = self
            .skipped
            .iter()
            .partition(|s| s.reason.code == ReasonCode::NotTagged);
        if !listed.is_empty() {
            let _ = writeln!(out, "Skipped:");
            for s in &listed {
                let _ = writeln!(
                    out,
                    "  ! {:<6}  {}: {}: {}",
                    s.kind.as_str(),
                    s.image.describe(),
                    s.reason.code,
                    printable(&s.reason.detail)
                );
            }
        }
        if !untagged.is_empty() {
            let _ = writeln!(
                out,
                "{} image(s) not tagged for projection (--output json lists them).",
                untagged.len()
            );
        }
        if self.target.is_some() {
            let s = &self.summary;
            let _ = writeln!(
                out,
                "Summary: {} to add, {} to remove, {} to update, {} kept, {} skipped.",
                s.add, s.remove, s.update, s.keep, s.skipped
            );
            if !self.changed {
                let _ = writeln!(out, "No changes.");
            }
        }
        let pending: Vec<&Projection> = self
            .projections
            .iter()
            .filter(|p| p.removal_pending_until.is_some())
            .collect();
        if !pending.is_empty() {
            let _ = writeln!(
                out,
                "No longer wanted, kept while initiators may still read them (safety.removal_grace):"
            );
            for p in pending {
                let until = p.removal_pending_until.unwrap_or_default();
                let lun = p.lun.map_or_else(|| "-".to_string(), |l| l.to_string());
                let _ = writeln!(
                    out,
                    "  LUN {lun:<5} {}: removal pending until {}",
                    diff::describe_images(p),
                    crate::describe::local_time(until)
                );
            }
        }
        if let Some(ledger) = &self.ledger {
            let _ = writeln!(
                out,
                "LUN ledger {}: {}",
                printable(&ledger.place),
                ledger.outcome.as_str().replace('_', " ")
            );
        }
        if let Some(backup) = &self.backup {
            let _ = writeln!(out, "Backup of the previous configuration: {backup}");
        }
        if !self.diff.is_empty() {
            out.push_str(&self.diff);
        }
        out
    }
}
