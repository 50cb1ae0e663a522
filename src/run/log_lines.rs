//! The run's log lines: one per decision, the summary, and under the journal the diff kept
//! in a file beside the backups.

use crate::apply::{self};
use crate::diff;
use crate::logger;
use crate::plan::{Action, Plan};
use crate::policy::Policy;
use crate::report::Report;
use crate::skip::ReasonCode;
use std::path::PathBuf;

/// One line per decision: projections at info, skipped images as warnings (kept projections
/// and images simply not tagged at debug: a catalogue holds thousands), target changes at
/// info.
/// On a terminal the report shows each decision once, and only the plan's warnings are
/// logged; under journald each line carries fields (`REASON_CODE`, `IMAGE_ID`, `LUN`, ...).
pub(super) fn log_plan(plan: &Plan) {
    for warning in &plan.warnings {
        log::warn!("{warning}");
    }
    if !logger::log_decisions() {
        return;
    }
    for skipped in &plan.skipped {
        let level = if skipped.reason.code == ReasonCode::NotTagged {
            log::Level::Debug
        } else {
            log::Level::Warn
        };
        if level > log::max_level() {
            continue;
        }
        logger::decision(
            level,
            &[
                ("reason_code", Some(skipped.reason.code.as_str())),
                ("kind", Some(skipped.kind.as_str())),
                ("image_id", skipped.image.id.as_deref()),
                ("image_name", skipped.image.name.as_deref()),
                ("image_source", skipped.source.as_deref()),
            ],
            format_args!(
                "skipped {} image {}: {}",
                skipped.kind.as_str(),
                skipped.image.describe(),
                skipped.reason
            ),
        );
    }
    for projection in plan.projections.iter() {
        // A kept projection is news to nobody: at info, every run would log the whole
        // catalogue (1,100 lines every 3 minutes at 1,000 images); the summary counts them.
        let level = if projection.action == Action::Keep {
            log::Level::Debug
        } else {
            log::Level::Info
        };
        if level > log::max_level() {
            // Not written: not formatted either.
            continue;
        }
        let lun = projection.lun.map(|lun| lun.to_string());
        let first = projection.images.first();
        logger::decision(
            level,
            &[
                ("action", Some(projection.action.as_str())),
                ("kind", Some(projection.kind.as_str())),
                ("lun", lun.as_deref()),
                ("storage_object", Some(projection.name.as_str())),
                ("image_id", first.and_then(|i| i.id.as_deref())),
                ("image_name", first.and_then(|i| i.name.as_deref())),
                ("image_source", Some(projection.source.as_str())),
            ],
            format_args!("{}", diff::projection_line(projection)),
        );
    }
    for change in &plan.target_changes {
        log::info!("~ target  {change}");
    }
}

/// Under the journal, the diff of an applied run goes to a file beside the backups (named
/// in the summary) instead of into the journal at info.
pub(super) fn keep_diff(policy: &Policy, stamp: &str, report: &Report) -> Option<PathBuf> {
    if report.diff.is_empty() || !logger::stdout_is_journal() {
        return None;
    }
    let lio = &policy.lio;
    match apply::backup::keep_diff(&lio.backup_dir, lio.backups_kept, &report.diff, stamp) {
        Ok(path) => Some(path),
        Err(e) => {
            log::warn!("cannot keep the diff: {}", crate::error::chain(&e));
            None
        }
    }
}

/// The one summary line of a run (not on a terminal: the report ends with it).
pub(super) fn log_summary(plan: &Plan, applied: bool, dry_run: bool) {
    log_summary_with(plan, applied, dry_run, None);
}

/// [`log_summary`], naming the file that holds the run's diff.
pub(super) fn log_summary_with(
    plan: &Plan,
    applied: bool,
    dry_run: bool,
    diff: Option<&std::path::Path>,
) {
    if !logger::log_decisions() {
        return;
    }
    let state = if applied {
        "applied"
    } else if !plan.changed {
        "no changes"
    } else if dry_run {
        "dry run, changes pending"
    } else {
        "not applied"
    };
    let diff = diff.map_or_else(String::new, |path| {
        format!("; the diff: {}", path.display())
    });
    log::info!(
        "summary: {state}: {} added, {} removed, {} updated, {} kept, {} skipped{diff}",
        plan.count(Action::Add),
        plan.count(Action::Remove),
        plan.count(Action::Update),
        plan.count(Action::Keep),
        plan.skipped.len()
    );
}
