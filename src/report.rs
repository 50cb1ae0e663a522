//! The run's report: text for people, one JSON document for programs. The JSON fields are a
//! contract (playbooks and tests read them): extend, never rename.

use crate::diff;
use crate::error::Error;
use crate::plan::{describe_image, Action, Plan, Projection, Skipped};
use crate::skip::ReasonCode;
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
    pub mode: Option<String>,
    /// Whether S3 ETags were checked against the manifests (rule 3).
    pub etag_verified: bool,
    pub summary: Summary,
    pub projections: Vec<ProjectionReport>,
    pub skipped: Vec<SkippedReport>,
    pub target_changes: Vec<String>,
    pub lun_removals: usize,
    pub backup: Option<String>,
    pub notes: Vec<String>,
    pub diff: String,
    pub error: Option<ErrorReport>,
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
pub struct ProjectionReport {
    pub kind: &'static str,
    pub image_id: Option<String>,
    pub image_name: Option<String>,
    /// Every image served, when several IMS images share one rootfs.
    pub images: Vec<ImageReport>,
    pub source: String,
    pub etag: Option<String>,
    pub name: String,
    pub wwn: String,
    pub dev: String,
    pub size: u64,
    pub lun: Option<u32>,
    pub action: &'static str,
    pub changes: Vec<String>,
    /// The summary line for the text report.
    #[serde(skip)]
    pub line: String,
}

#[derive(Debug, Serialize)]
pub struct ImageReport {
    pub id: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SkippedReport {
    pub kind: &'static str,
    pub image_id: Option<String>,
    pub image_name: Option<String>,
    pub source: Option<String>,
    pub reason_code: &'static str,
    pub reason: String,
    #[serde(skip)]
    pub code: Option<ReasonCode>,
}

#[derive(Debug, Serialize)]
pub struct ErrorReport {
    pub kind: &'static str,
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
            projections: Vec::new(),
            skipped: Vec::new(),
            target_changes: Vec::new(),
            lun_removals: 0,
            backup: None,
            notes: Vec::new(),
            diff: String::new(),
            error: None,
        }
    }

    /// The plan's part of the report.
    pub fn set_plan(&mut self, plan: &Plan, target: &str, diff: String) {
        self.target = Some(target.to_string());
        self.changed = plan.changed;
        self.summary = Summary {
            add: plan.count(Action::Add),
            remove: plan.count(Action::Remove),
            keep: plan.count(Action::Keep),
            update: plan.count(Action::Update),
            skipped: plan.skipped.len(),
        };
        self.projections = plan.projections.iter().map(projection_report).collect();
        self.skipped = plan.skipped.iter().map(skipped_report).collect();
        self.target_changes = plan.target_changes.clone();
        self.lun_removals = plan.lun_removals;
        self.diff = diff;
    }

    pub fn set_error(&mut self, error: &Error) {
        self.error = Some(ErrorReport {
            kind: error.kind().as_str(),
            message: error.to_string(),
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
        let changes: Vec<String> = self
            .projections
            .iter()
            .filter(|p| p.action != "keep")
            .map(|p| p.line.clone())
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
        let (untagged, listed): (Vec<&SkippedReport>, Vec<&SkippedReport>) = self
            .skipped
            .iter()
            .partition(|s| s.reason_code == ReasonCode::NotTagged.as_str());
        if !listed.is_empty() {
            let _ = writeln!(out, "Skipped:");
            for s in &listed {
                let who = describe_image(s.image_name.as_deref(), s.image_id.as_deref());
                let _ = writeln!(
                    out,
                    "  ! {:<6}  {who}: {}: {}",
                    s.kind, s.reason_code, s.reason
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
        if let Some(backup) = &self.backup {
            let _ = writeln!(out, "Backup of the previous configuration: {backup}");
        }
        if !self.diff.is_empty() {
            out.push_str(&self.diff);
        }
        out
    }
}

fn projection_report(p: &Projection) -> ProjectionReport {
    let first = p.images.first();
    ProjectionReport {
        kind: p.kind.as_str(),
        image_id: first.and_then(|i| i.id.clone()),
        image_name: first.and_then(|i| i.name.clone()),
        images: p
            .images
            .iter()
            .map(|i| ImageReport {
                id: i.id.clone(),
                name: i.name.clone(),
            })
            .collect(),
        source: p.source.clone(),
        etag: p.etag.clone(),
        name: p.name.clone(),
        wwn: p.wwn.clone(),
        dev: p.dev.clone(),
        size: p.size,
        lun: p.lun,
        action: p.action.as_str(),
        changes: p.changes.clone(),
        line: diff::projection_line(p),
    }
}

fn skipped_report(s: &Skipped) -> SkippedReport {
    SkippedReport {
        kind: s.kind.as_str(),
        image_id: s.image.id.clone(),
        image_name: s.image.name.clone(),
        source: s.source.clone(),
        reason_code: s.reason.code.as_str(),
        reason: s.reason.detail.clone(),
        code: Some(s.reason.code),
    }
}
