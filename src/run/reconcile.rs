//! The reconcile conductor: policy -> sources -> snapshot -> plan -> diff -> apply ->
//! report, with its safety checks, back-off, metrics and exit status.

use super::current::{read_running, CurrentFile};
use super::inputs::{load_policy, now_unix, read_catalogue, Inputs};
use super::ledger_step::{ledger_report, plan_with_ledger, write_ledger};
use super::log_lines::{keep_diff, log_plan, log_summary, log_summary_with};
use super::output::print;
use crate::apply::{self, Lock};
use crate::backoff::{self, FailureLog, FailureRecord};
use crate::cli::Cli;
use crate::deadline::Deadline;
use crate::error::{Error, ErrorKind, Exit, SourceError};
use crate::lio::managed::ManagedView;
use crate::lio::running::RunningState;
use crate::lio::SaveConfig;
use crate::metrics::{PlanFigures, RunMetrics};
use crate::plan::Plan;
use crate::report::Report;
use crate::safety;
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// What a reconcile run has found out so far; what is left of it when it fails.
pub(super) struct RunRecord {
    report: Report,
    /// `metrics.file` from the policy, once it was read.
    metrics_file: Option<PathBuf>,
    /// The figures of the last plan, once there was one.
    figures: Option<PlanFigures>,
    /// The failing plan's record, when the run got as far as looking at it.
    last_failure: Option<FailureRecord>,
}

/// One reconcile run: prints the report (also on failure), writes the metrics, and returns
/// the exit status, or the error that ended the run (for `main` to log). Never panics on bad
/// input.
pub(super) fn reconcile_command(cli: &Cli) -> Result<Exit, Error> {
    let started = Instant::now();
    let mut record = RunRecord {
        report: Report::empty(cli.dry_run),
        metrics_file: None,
        figures: None,
        last_failure: None,
    };
    let result = reconcile(cli, &mut record);
    if let Err(error) = &result {
        record.report.set_error(error);
    }
    print(&record.report, cli.output);
    let failure = result.as_ref().err().map(Error::kind);
    write_metrics(cli, &record, failure, started);
    result
}

/// policy -> sources -> snapshot -> plan -> diff -> apply, filling `record` on the way.
pub(super) fn reconcile(cli: &Cli, record: &mut RunRecord) -> Result<Exit, Error> {
    let policy = load_policy(cli)?;
    record.metrics_file.clone_from(&policy.metrics_file);
    let deadline = Deadline::after(policy.safety.run_deadline);
    let (current, sources, snapshot) = read_catalogue(&policy, deadline)?;
    let running = read_running(&policy)?;
    let now = now_unix();
    let (ledger, plan) = plan_with_ledger(&policy, &snapshot, &sources, &current, &running, now)?;
    let inputs = Inputs {
        policy: &policy,
        snapshot: &snapshot,
        ledger: ledger.as_ref(),
        now,
    };

    let plan = report_plan(&inputs, &current, running.as_ref(), plan, cli, record)?;
    let failures = FailureLog::new(&policy.lio.state_dir);
    if !plan.needs_apply() {
        if !cli.dry_run {
            // Nothing left to try: a failure of an older plan no longer matters.
            failures.clear();
            // The target is as planned: the ledger may still have news (a grace that
            // started, a configuration adopted).
            write_ledger(
                &policy,
                &sources,
                ledger.as_ref(),
                &plan,
                &mut record.report,
            );
        }
        log_summary(&plan, false, cli.dry_run);
        return Ok(Exit::Success);
    }
    if cli.dry_run {
        log_summary(&plan, false, true);
        return Ok(changed_exit(cli));
    }

    let lock = Lock::acquire(&policy.lio.lock_file, "sbps-reconcile")?;
    let targetcli_lock = match &policy.lio.targetcli_lock {
        Some(path) => Some(Lock::acquire(path, "targetcli")?),
        None => None,
    };
    // The file or the running target may have changed while we read the catalogue without
    // the lock: plan again against what is there now (the planner is cheap and pure).
    let (locked, file_changed) = current.read_again(&policy.lio.saveconfig)?;
    let current = &locked.file;
    let running_now = read_running(&policy)?;
    let mut plan = if !file_changed && running_now == running {
        plan
    } else {
        log::info!("the configuration changed during the run; planning again");
        drop(plan);
        let plan = inputs.plan(current, running_now.as_ref());
        let plan = report_plan(&inputs, current, running_now.as_ref(), plan, cli, record)?;
        if !plan.needs_apply() {
            write_ledger(
                &policy,
                &sources,
                ledger.as_ref(),
                &plan,
                &mut record.report,
            );
            log_summary(&plan, false, false);
            return Ok(Exit::Success);
        }
        plan
    };

    // Sources that took the whole allowance leave no time to change the target safely.
    if deadline.passed() {
        return Err(SourceError::Deadline {
            what: "reading the catalogue".to_string(),
            deadline: deadline.total(),
        }
        .into());
    }
    // The same plan failed the last time: do not tear the target down again yet.
    let fingerprint = backoff::fingerprint(&plan, policy.lio.apply);
    let last_failure = failures.load();
    record.last_failure.clone_from(&last_failure);
    if let Some(last) = backoff::must_wait(last_failure.as_ref(), &fingerprint, now_unix()) {
        if cli.retry_now {
            log::warn!(
                "the same plan failed {} time(s); trying again (--retry-now)",
                last.count
            );
        } else {
            return Err(Error::BackedOff {
                count: last.count,
                kind: last.kind,
                message: last.message.clone(),
                last: crate::describe::local_time(last.last_unix),
                retry: crate::describe::local_time(last.retry_unix()),
            });
        }
    }
    let expected = ManagedView::of(&plan.desired, &policy.catalogue, &policy.target);
    // Saved as its text; the parsed form goes before the apply reads the target back.
    let desired = std::mem::replace(&mut plan.desired, SaveConfig::empty()).to_canonical();
    let stamp = jiff::Zoned::now().strftime("%Y%m%d-%H:%M:%S").to_string();
    let change = apply::Change {
        previous: locked.bytes.as_deref(),
        desired: &desired,
        expected: &expected,
        stamp: &stamp,
    };
    // targetctl holds the locks with us, and after us if this run is killed.
    let share = |yes| {
        lock.share_with_children(yes);
        if let Some(lock) = &targetcli_lock {
            lock.share_with_children(yes);
        }
    };
    share(true);
    let result = apply::apply(&policy, &change);
    share(false);
    let applied = match result {
        Ok(applied) => {
            failures.clear();
            record.last_failure = None;
            applied
        }
        Err(error) => {
            let next = backoff::next_record(
                last_failure.as_ref(),
                &fingerprint,
                error.kind(),
                &crate::secrets::redact(&crate::error::chain(&error)),
                now_unix(),
            );
            if let Err(e) = failures.save(&next) {
                log::warn!("cannot record the failure: {}", crate::error::chain(&e));
            }
            log::warn!(
                "the same plan is not tried again before {} ({} failure(s) in a row)",
                crate::describe::local_time(next.retry_unix()),
                next.count
            );
            record.last_failure = Some(next);
            return Err(error);
        }
    };
    record.report.applied = true;
    record.report.kernel_changes = applied.kernel_changes;
    for warning in applied.warnings {
        log::warn!("{warning}");
        record.report.warnings.push(warning);
    }
    record.report.backup = applied.backup.map(|p| p.display().to_string());
    // Only now does the target hold the plan's numbers.
    write_ledger(
        &policy,
        &sources,
        ledger.as_ref(),
        &plan,
        &mut record.report,
    );
    let diff_file = keep_diff(&policy, &stamp, &record.report);
    log_summary_with(&plan, true, false, diff_file.as_deref());
    Ok(changed_exit(cli))
}

/// A run that had changes: exit 2 with `--detailed-exitcode`.
pub(super) fn changed_exit(cli: &Cli) -> Exit {
    if cli.detailed_exitcode {
        Exit::Changed
    } else {
        Exit::Success
    }
}

/// Reports and logs the plan, and checks it against the safety limits.
pub(super) fn report_plan(
    inputs: &Inputs,
    current: &CurrentFile,
    running: Option<&RunningState>,
    plan: Plan,
    cli: &Cli,
    record: &mut RunRecord,
) -> Result<Plan, Error> {
    record.report = Report::of_plan(
        inputs.policy,
        inputs.snapshot,
        &current.config,
        running.is_some(),
        &plan,
        cli.dry_run,
        cli.diff,
    );
    record.report.ledger = inputs.ledger.map(ledger_report);
    if let Some(why) = inputs.ledger.and_then(|l| l.read_only.as_ref()) {
        record.report.warnings.push(format!(
            "the LUN ledger is read-only for this version: {why}"
        ));
    }
    record.figures = Some(PlanFigures::of(&plan));
    log_plan(&plan);
    safety::check(inputs.policy, inputs.snapshot, &plan, cli.allow_removals)?;
    Ok(plan)
}

/// Writes the metrics file named by `--metrics-file`, or by the policy for runs that are
/// not dry runs. A failure to write it is logged, not fatal.
pub(super) fn write_metrics(
    cli: &Cli,
    record: &RunRecord,
    failure: Option<ErrorKind>,
    started: Instant,
) {
    let path = match (&cli.metrics_file, &record.metrics_file) {
        (Some(path), _) => path,
        (None, Some(path)) if !cli.dry_run => path,
        _ => return,
    };
    let run = RunMetrics {
        end_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        duration_seconds: started.elapsed().as_secs_f64(),
        failure,
        plan: record.figures.clone(),
        applied: record.report.applied,
        failures_in_a_row: record.last_failure.as_ref().map_or(0, |r| r.count),
        retry_unix: record.last_failure.as_ref().map(FailureRecord::retry_unix),
    };
    if let Err(e) = crate::metrics::write(path, &run) {
        log::warn!("cannot write metrics: {}", crate::error::chain(&e));
    }
}
