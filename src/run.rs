//! One reconcile run, end to end: the imperative shell around the pure planner.
//!
//! policy -> sources -> snapshot -> plan -> diff -> apply -> report.

use crate::apply::{self, Lock};
use crate::cli::{Cli, Output};
use crate::diff;
use crate::error::{Error, Exit};
use crate::lio::managed::ManagedView;
use crate::lio::SaveConfig;
use crate::plan::{self, Action, Plan};
use crate::policy::{HostFacts, Policy};
use crate::report::Report;
use crate::skip::ReasonCode;
use crate::snapshot::Snapshot;
use crate::sources;
use std::path::Path;

/// The current `saveconfig.json`: its bytes (to back up and restore) and its parsed form.
#[derive(Debug, Clone)]
pub struct CurrentFile {
    /// `None` when the file does not exist.
    pub bytes: Option<Vec<u8>>,
    pub config: SaveConfig,
}

impl CurrentFile {
    /// A missing file is an empty configuration; an empty or unreadable one is an error.
    pub fn read(path: &Path) -> Result<CurrentFile, Error> {
        let invalid = |message: String| Error::CurrentConfig {
            path: path.to_owned(),
            message,
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                let config = SaveConfig::parse(&bytes)
                    .map_err(|e| invalid(format!("{e}; refusing to apply over it")))?;
                Ok(CurrentFile {
                    bytes: Some(bytes),
                    config,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CurrentFile {
                bytes: None,
                config: SaveConfig::empty(),
            }),
            Err(e) => Err(invalid(format!("cannot read it: {e}"))),
        }
    }

    /// The text the diff starts from: the canonical form of what the file holds.
    pub fn canonical(&self) -> String {
        self.config.to_canonical()
    }
}

/// Runs once; returns the report to print and the exit status.
pub fn run(cli: &Cli) -> (Report, Exit) {
    let mut report = Report::empty(cli.dry_run);
    match reconcile(cli, &mut report) {
        Ok(exit) => (report, exit),
        Err(error) => {
            log::error!("{error}");
            let exit = error.kind().exit();
            report.set_error(&error);
            (report, exit)
        }
    }
}

fn reconcile(cli: &Cli, report: &mut Report) -> Result<Exit, Error> {
    let (policy, warnings) = Policy::load(&cli.policy, &HostFacts::detect())?;
    for warning in warnings {
        log::warn!("{warning}");
    }
    let current = CurrentFile::read(&policy.lio.saveconfig)?;
    let sources = sources::open(&policy)?;
    let snapshot = sources::collect(&policy, &sources)?;
    report.mode = Some(sources.mode.to_string());
    report.etag_verified = snapshot.verifies_etags();
    if !snapshot.verifies_etags() {
        report.notes.push(
            "offline catalogue: S3 ETags were not checked; manifest etags are trusted".to_string(),
        );
    }

    let plan = plan_and_report(&policy, &snapshot, &current, report);
    log_plan(&plan);
    check_safety(&policy, &plan, cli.allow_removals)?;
    if !plan.changed {
        log::info!("no changes");
        return Ok(Exit::Success);
    }
    if cli.dry_run {
        return Ok(if cli.detailed_exitcode {
            Exit::Changed
        } else {
            Exit::Success
        });
    }

    let _lock = Lock::acquire(&policy.lio.lock_file, "sbps-reconcile")?;
    let _targetcli_lock = match &policy.lio.targetcli_lock {
        Some(path) => Some(Lock::acquire(path, "targetcli")?),
        None => None,
    };
    // The file may have changed while we read the catalogue without the lock: plan again
    // against what is there now (the planner is cheap and pure).
    let current_now = CurrentFile::read(&policy.lio.saveconfig)?;
    let (current, plan) = if current_now.bytes == current.bytes {
        (current, plan)
    } else {
        log::info!(
            "{} changed during the run; planning again",
            policy.lio.saveconfig.display()
        );
        let plan = plan_and_report(&policy, &snapshot, &current_now, report);
        check_safety(&policy, &plan, cli.allow_removals)?;
        if !plan.changed {
            return Ok(Exit::Success);
        }
        (current_now, plan)
    };

    let expected = ManagedView::of(&plan.desired, &policy.catalogue, &policy.target);
    let verify = |saved: &SaveConfig| {
        ManagedView::of(saved, &policy.catalogue, &policy.target).differences(&expected)
    };
    let stamp = jiff::Zoned::now().strftime("%Y%m%d-%H:%M:%S").to_string();
    let applied = apply::apply(
        &policy.lio,
        current.bytes.as_deref(),
        &plan.desired,
        &stamp,
        &verify,
    )?;
    report.applied = true;
    report.backup = applied.backup.map(|p| p.display().to_string());
    log::info!(
        "applied: {} added, {} removed, {} updated, {} kept",
        plan.count(Action::Add),
        plan.count(Action::Remove),
        plan.count(Action::Update),
        plan.count(Action::Keep)
    );
    Ok(if cli.detailed_exitcode {
        Exit::Changed
    } else {
        Exit::Success
    })
}

fn plan_and_report(
    policy: &Policy,
    snapshot: &Snapshot,
    current: &CurrentFile,
    report: &mut Report,
) -> Plan {
    let plan = plan::plan(policy, snapshot, &current.config);
    let diff = diff::unified(&current.canonical(), &plan.desired.to_canonical());
    report.set_plan(&plan, &policy.target.iqn, diff);
    plan
}

fn check_safety(policy: &Policy, plan: &Plan, allow_removals: bool) -> Result<(), Error> {
    let limit = policy.safety.max_removals;
    if plan.lun_removals > limit {
        if allow_removals {
            log::warn!(
                "the plan removes {} LUNs, above safety.max_removals {limit}; allowed by --allow-removals",
                plan.lun_removals
            );
        } else {
            return Err(Error::Safety(format!(
                "the plan removes {} LUNs, above safety.max_removals {limit}; nothing was touched \
                 (check the catalogue and the mount, then rerun with --allow-removals if intended)",
                plan.lun_removals
            )));
        }
    }
    Ok(())
}

fn log_plan(plan: &Plan) {
    for skipped in &plan.skipped {
        let who = match (&skipped.image.name, &skipped.image.id) {
            (Some(name), Some(id)) => format!("{name:?} (id {id})"),
            (Some(name), None) => format!("{name:?}"),
            (None, Some(id)) => format!("(id {id})"),
            (None, None) => "(record without id)".to_string(),
        };
        let line = format!(
            "skipped {} image {who}: {}",
            skipped.kind.as_str(),
            skipped.reason
        );
        if skipped.reason.code == ReasonCode::NotTagged {
            log::debug!("{line}");
        } else {
            log::warn!("{line}");
        }
    }
    for line in diff::summary_lines(plan) {
        log::info!("{line}");
    }
}

/// Prints the report in the requested format.
pub fn print(report: &Report, output: Output) {
    use std::io::Write;
    let text = match output {
        Output::Json => report.to_json(),
        Output::Text => report.to_text(),
    };
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`| head`) is not worth a panic.
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}
