//! The imperative shell: the command a command line asks for, around the pure planner.
//! [`execute`] is the one entry point; a reconcile run goes
//! policy -> sources -> snapshot -> plan -> diff -> apply -> report.

use crate::apply::{self, Lock};
use crate::backoff::{self, FailureLog, FailureRecord};
use crate::cli::{Cli, Command, Output};
use crate::deadline::Deadline;
use crate::diff;
use crate::error::{Error, ErrorKind, Exit, SourceError};
use crate::kernel::configfs::Configfs;
use crate::lio::managed::ManagedView;
use crate::lio::running::RunningState;
use crate::lio::SaveConfig;
use crate::logger;
use crate::metrics::{PlanFigures, RunMetrics};
use crate::plan::{self, Action, Plan};
use crate::policy::{HostFacts, Policy};
use crate::report::{LedgerOutcome, LedgerReport, Report};
use crate::skip::ReasonCode;
use crate::snapshot::Snapshot;
use crate::sources::ledger_store::{self, LedgerRead, Written};
use crate::{explain, fleet, man, safety, sources, status};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Runs what the command line asks for and returns the exit status.
pub fn execute(cli: &Cli) -> Exit {
    match &cli.command {
        None => reconcile_command(cli),
        Some(Command::Status) => status_command(cli),
        Some(Command::Explain { image }) => explain_command(cli, image),
        Some(Command::Fleet) => fleet_command(cli),
        Some(Command::Completions { shell }) => write_stdout(&man::completions(*shell)),
        Some(Command::Man) => write_stdout(&man::page()),
    }
}

/// The largest `saveconfig.json` read: 16 MiB, about 10,000 storage objects as
/// `targetctl save` writes them (5,000 projections are under 8 MiB).
pub const MAX_SAVECONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// The current `saveconfig.json` as the run planned with it: its parsed form, and the length
/// and hash of its bytes (the bytes themselves, 2.6 MB at 5,500 LUNs, are read again under
/// the lock only by a run that applies: see [`LockedFile`]).
#[derive(Debug, Clone)]
pub struct CurrentFile {
    /// `None` when the file does not exist.
    digest: Option<Digest>,
    pub config: SaveConfig,
}

/// What tells whether the file changed between two reads a few seconds apart: its length,
/// and a 64-bit hash of its bytes (std's `DefaultHasher`, SipHash-1-3 today: a change of the
/// same length that keeps the hash has a chance of 2^-64; it needs no SHA instructions,
/// which valgrind and older CPUs lack, and hashes 2.6 MB in about 2 ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Digest {
    len: usize,
    hash: u64,
}

/// The current file read again under the lock, with its bytes: what an apply backs up and
/// rolls back to.
#[derive(Debug)]
pub struct LockedFile {
    /// `None` when the file does not exist.
    pub bytes: Option<Vec<u8>>,
    pub file: CurrentFile,
}

impl CurrentFile {
    /// A missing file is an empty configuration; an empty or unreadable one is an error, and
    /// so is one larger than [`MAX_SAVECONFIG_BYTES`].
    pub fn read(path: &Path) -> Result<CurrentFile, Error> {
        let bytes = Self::read_bytes(path)?;
        Self::parse(path, bytes.as_deref())
    }

    /// The file read again, with its bytes; the parsed form is `self`'s when the bytes did
    /// not change (it is parsed again only when they did: at 5,500 LUNs a second parse held
    /// 14 MiB more through the apply). The flag says whether they changed.
    pub fn read_again(self, path: &Path) -> Result<(LockedFile, bool), Error> {
        let bytes = Self::read_bytes(path)?;
        if bytes.as_deref().map(digest) == self.digest {
            return Ok((LockedFile { bytes, file: self }, false));
        }
        drop(self);
        let file = Self::parse(path, bytes.as_deref())?;
        Ok((LockedFile { bytes, file }, true))
    }

    fn read_bytes(path: &Path) -> Result<Option<Vec<u8>>, Error> {
        match crate::fsio::read_regular(path, MAX_SAVECONFIG_BYTES) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(source) => Err(Error::CurrentConfigRead {
                path: path.to_owned(),
                source,
            }),
        }
    }

    fn parse(path: &Path, bytes: Option<&[u8]>) -> Result<CurrentFile, Error> {
        let config = match bytes {
            Some(bytes) => SaveConfig::parse(bytes).map_err(|problem| Error::CurrentConfig {
                path: path.to_owned(),
                problem,
            })?,
            None => SaveConfig::empty(),
        };
        Ok(CurrentFile {
            digest: bytes.map(digest),
            config,
        })
    }
}

fn digest(bytes: &[u8]) -> Digest {
    use std::hash::Hasher;
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write(bytes);
    Digest {
        len: bytes.len(),
        hash: hasher.finish(),
    }
}

/// What a reconcile run has found out so far; what is left of it when it fails.
struct RunRecord {
    report: Report,
    /// `metrics.file` from the policy, once it was read.
    metrics_file: Option<PathBuf>,
    /// The figures of the last plan, once there was one.
    figures: Option<PlanFigures>,
    /// The failing plan's record, when the run got as far as looking at it.
    last_failure: Option<FailureRecord>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One reconcile run: prints the report (also on failure), writes the metrics, and returns
/// the exit status. Never panics on bad input.
fn reconcile_command(cli: &Cli) -> Exit {
    let started = Instant::now();
    let mut record = RunRecord {
        report: Report::empty(cli.dry_run),
        metrics_file: None,
        figures: None,
        last_failure: None,
    };
    let result = reconcile(cli, &mut record);
    let (exit, failure) = match result {
        Ok(exit) => (exit, None),
        Err(error) => {
            logger::error_chain(&error);
            record.report.set_error(&error);
            (error.kind().exit(), Some(error.kind()))
        }
    };
    print(&record.report, cli.output);
    write_metrics(cli, &record, failure, started);
    exit
}

fn load_policy(cli: &Cli) -> Result<Policy, Error> {
    let (policy, warnings) = Policy::load(&cli.policy, &HostFacts::detect())?;
    for warning in warnings {
        log::warn!("{warning}");
    }
    Ok(policy)
}

/// policy -> sources -> snapshot -> plan -> diff -> apply, filling `record` on the way.
fn reconcile(cli: &Cli, record: &mut RunRecord) -> Result<Exit, Error> {
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
            write_ledger(&policy, &sources, ledger.as_ref(), &plan, record);
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
            write_ledger(&policy, &sources, ledger.as_ref(), &plan, record);
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
    write_ledger(&policy, &sources, ledger.as_ref(), &plan, record);
    let diff_file = keep_diff(&policy, &stamp, &record.report);
    log_summary_with(&plan, true, false, diff_file.as_deref());
    Ok(changed_exit(cli))
}

/// What the kernel runs, from configfs; `None` where LIO is not loaded (nothing to compare
/// with: the plan is made against the file alone).
fn read_running(policy: &Policy) -> Result<Option<RunningState>, Error> {
    let configfs = Configfs::new(&policy.lio.configfs);
    if !configfs.is_loaded() {
        return Ok(None);
    }
    configfs
        .read(&policy.catalogue, &policy.target)
        .map(Some)
        .map_err(Error::RunningConfig)
}

/// A run that had changes: exit 2 with `--detailed-exitcode`.
fn changed_exit(cli: &Cli) -> Exit {
    if cli.detailed_exitcode {
        Exit::Changed
    } else {
        Exit::Success
    }
}

/// Opens the sources, reads the current file, then the catalogue. The sources open first:
/// they start the bucket's listings, which the server answers while the file is read. With
/// a removal grace, the mount is also asked about the files of the LUNs in place (a file
/// gone ends its grace).
fn read_catalogue(
    policy: &Policy,
    deadline: Deadline,
) -> Result<(CurrentFile, sources::Sources, Snapshot), Error> {
    let sources = sources::open(policy, deadline)?;
    let current = CurrentFile::read(&policy.lio.saveconfig)?;
    let snapshot = sources::collect(policy, &sources, &grace_files(policy, &current))?;
    Ok((current, sources, snapshot))
}

/// With a removal grace, the files of the LUNs in place (a file gone ends its grace).
fn grace_files(policy: &Policy, current: &CurrentFile) -> std::collections::BTreeSet<String> {
    if policy.safety.removal_grace.is_zero() {
        Default::default()
    } else {
        plan::files_in_place(policy, &current.config)
    }
}

/// The ledger to plan with, and the plan. A run that changes nothing needs no news from the
/// bucket: a worker that remembers its ledger (between full verifications) plans with it
/// first, and keeps that plan when it changes neither the target nor the ledger. Any other
/// plan (a LUN to number, remove or adopt, a grace to start) is made with the ledgers read
/// from the store, its own and the fleet's.
fn plan_with_ledger(
    policy: &Policy,
    snapshot: &Snapshot,
    sources: &sources::Sources,
    current: &CurrentFile,
    running: &Option<RunningState>,
    now: u64,
) -> Result<(Option<LedgerRead>, Plan), Error> {
    let plan_with = |ledger: Option<&LedgerRead>| {
        let inputs = Inputs {
            policy,
            snapshot,
            ledger,
            now,
        };
        inputs.plan(current, running.as_ref())
    };
    let remembered = sources
        .ledger
        .as_ref()
        .and_then(|store| ledger_store::remembered(store.as_ref(), policy));
    if let Some(read) = remembered {
        let plan = plan_with(Some(&read));
        let leaves_ledger = plan.ledger.as_ref() == Some(&read.ledger);
        if !plan.needs_apply() && leaves_ledger {
            log::debug!("LUN ledger {}: as this worker last read it", read.place);
            return Ok((Some(read), plan));
        }
    }
    let ledger = read_ledger(policy, sources)?;
    let plan = plan_with(ledger.as_ref());
    Ok((ledger, plan))
}

/// The LUN ledger and the fleet's, when the policy keeps one.
fn read_ledger(policy: &Policy, sources: &sources::Sources) -> Result<Option<LedgerRead>, Error> {
    match &sources.ledger {
        Some(store) => Ok(Some(ledger_store::read(store.as_ref(), policy)?)),
        None => Ok(None),
    }
}

fn ledger_report(read: &LedgerRead) -> LedgerReport {
    LedgerReport {
        place: read.place.clone(),
        found: read.found,
        fleet_targets: read.fleet_targets,
        remembered: read.remembered,
        outcome: LedgerOutcome::NotWritten,
        bucket_versioning: read.bucket_versioning,
        read_only: read.read_only.clone(),
    }
}

/// Writes the ledger the plan leaves, conditionally on the version read. Never fails the
/// run: the target is already as planned, and a ledger that missed this run's news gets it
/// from the next run (which adopts what is in place).
fn write_ledger(
    policy: &Policy,
    sources: &sources::Sources,
    read: Option<&LedgerRead>,
    plan: &Plan,
    record: &mut RunRecord,
) {
    let (Some(store), Some(read), Some(next)) = (&sources.ledger, read, &plan.ledger) else {
        return;
    };
    let now = now_unix();
    // The heartbeat: a ledger that says the same is still written every verify_interval, so
    // that `fleet` tells a live worker from one whose timer stopped.
    let every = policy
        .catalogue
        .s3
        .as_ref()
        .map_or(3600, |s3| s3.verify_interval.as_secs().max(60));
    let outcome = if read.found && *next == read.ledger && !read.ledger.heartbeat_due(now, every) {
        LedgerOutcome::Unchanged
    } else if let Some(why) = &read.read_only {
        log::warn!("LUN ledger {} not written: {why}", read.place);
        LedgerOutcome::NotWritten
    } else {
        // Asked before each write: in a versioned bucket the condition may not hold.
        let versioning = store.versioning();
        if let Some(caveat) = versioning.map(|v| ledger_store::versioning_caveat(&read.place, v)) {
            log::warn!("{caveat}");
            record.report.warnings.push(caveat);
        }
        if let Some(report) = &mut record.report.ledger {
            report.bucket_versioning = versioning;
        }
        let next = next.clone().stamped(now);
        match store.write(&next.to_json(), &read.version) {
            Ok(Written::Written) => {
                log::info!("LUN ledger {} written", read.place);
                LedgerOutcome::Written
            }
            Ok(Written::Conflict(since)) => {
                log::warn!(
                    "LUN ledger {} {}: not written; the next run plans again",
                    read.place,
                    since.describe()
                );
                LedgerOutcome::Conflict
            }
            Err(source) => {
                let error = SourceError::LedgerWrite {
                    place: read.place.clone(),
                    source,
                };
                log::warn!(
                    "{}; the next run plans again",
                    crate::secrets::redact(&crate::error::chain(&error))
                );
                LedgerOutcome::Failed
            }
        }
    };
    if let Some(report) = &mut record.report.ledger {
        report.outcome = outcome;
    }
}

/// What a run plans with, besides the configuration in place.
struct Inputs<'a> {
    policy: &'a Policy,
    snapshot: &'a Snapshot,
    ledger: Option<&'a LedgerRead>,
    /// Unix time of the run.
    now: u64,
}

impl Inputs<'_> {
    fn plan(&self, current: &CurrentFile, running: Option<&RunningState>) -> Plan {
        let context = plan::Context {
            running,
            ledger: self.ledger.map(|l| &l.ledger),
            fleet: self.ledger.map(|l| &l.fleet),
            now: self.now,
        };
        plan::plan(self.policy, self.snapshot, &current.config, &context)
    }
}

/// Reports and logs the plan, and checks it against the safety limits.
fn report_plan(
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

/// One line per decision: projections at info, skipped images as warnings (kept projections
/// and images simply not tagged at debug: a catalogue holds thousands), target changes at
/// info.
/// On a terminal the report shows each decision once, and only the plan's warnings are
/// logged; under journald each line carries fields (`REASON_CODE`, `IMAGE_ID`, `LUN`, ...).
fn log_plan(plan: &Plan) {
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
fn keep_diff(policy: &Policy, stamp: &str, report: &Report) -> Option<PathBuf> {
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
fn log_summary(plan: &Plan, applied: bool, dry_run: bool) {
    log_summary_with(plan, applied, dry_run, None);
}

/// [`log_summary`], naming the file that holds the run's diff.
fn log_summary_with(plan: &Plan, applied: bool, dry_run: bool, diff: Option<&std::path::Path>) {
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

/// Writes the metrics file named by `--metrics-file`, or by the policy for runs that are
/// not dry runs. A failure to write it is logged, not fatal.
fn write_metrics(cli: &Cli, record: &RunRecord, failure: Option<ErrorKind>, started: Instant) {
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

/// `status`: the LUNs in place now, and the images they serve where the catalogue can tell.
fn status_command(cli: &Cli) -> Exit {
    let result = (|| {
        let policy = load_policy(cli)?;
        let current = CurrentFile::read(&policy.lio.saveconfig)?;
        let running = read_running(&policy)?;
        let deadline = Deadline::after(policy.safety.run_deadline);
        // The ledger names the images even when the catalogue cannot be read.
        let (read, ledger) = match sources::open(&policy, deadline) {
            Ok(sources) => {
                let mut ledger = read_ledger(&policy, &sources).unwrap_or_else(|e| {
                    log::warn!("{}", crate::error::chain(&e));
                    None
                });
                if let (Some(read), Some(store)) = (&mut ledger, &sources.ledger) {
                    read.bucket_versioning = store.versioning();
                }
                let snapshot = sources::collect(&policy, &sources, &grace_files(&policy, &current));
                (snapshot.map_err(Error::from), ledger)
            }
            Err(e) => (Err(Error::from(e)), None),
        };
        let (plan, catalogue_error) = match read {
            Ok(snapshot) => {
                let inputs = Inputs {
                    policy: &policy,
                    snapshot: &snapshot,
                    ledger: ledger.as_ref(),
                    now: now_unix(),
                };
                (Some(inputs.plan(&current, running.as_ref())), None)
            }
            Err(e) => {
                let text = crate::error::chain(&e);
                log::warn!("{text}");
                (None, Some(text))
            }
        };
        let mut status = status::status(
            &current.config,
            &policy,
            plan.as_ref(),
            running.as_ref(),
            catalogue_error,
            ledger.as_ref(),
        );
        status.last_failure = FailureLog::new(&policy.lio.state_dir).load();
        Ok::<_, Error>(status)
    })();
    match result {
        Ok(status) => {
            let text = match cli.output {
                Output::Json => json(&status),
                Output::Text => status.to_text(),
            };
            write_stdout(&text)
        }
        Err(error) => fail_command(cli, &error),
    }
}

/// `fleet`: every target's ledger under the prefix, as one view (see [`crate::fleet`]).
fn fleet_command(cli: &Cli) -> Exit {
    let result = (|| {
        let policy = load_policy(cli)?;
        let deadline = Deadline::after(policy.safety.run_deadline);
        let sources = sources::open(&policy, deadline)?;
        let store = sources.ledger.as_ref().ok_or(SourceError::NoLedger)?;
        // The images IMS tags, to find one that no target serves.
        let mut ims_failed = false;
        let tagged = match policy.catalogue.ims {
            None => None,
            Some(_) => match sources.images.records() {
                Ok(records) => Some(
                    records
                        .iter()
                        .filter_map(|entry| match entry {
                            crate::image::ImageEntry::Valid(record) => Some(record),
                            crate::image::ImageEntry::Invalid { .. } => None,
                        })
                        .filter(|record| policy.catalogue.select.check(record).is_ok())
                        .map(crate::plan::ImageRef::of)
                        .collect(),
                ),
                Err(e) => {
                    log::warn!("{}", crate::error::chain(&e));
                    ims_failed = true;
                    None
                }
            },
        };
        let context = fleet::Context {
            now: now_unix(),
            stale_after: policy.fleet_stale_after.as_secs(),
            removal_grace: policy.safety.removal_grace.as_secs(),
            tagged,
        };
        // Each ledger is parsed and folded into the view as it arrives, then let go.
        let mut builder = fleet::Builder::new(&context);
        store
            .everyone(&mut |read| {
                builder.add(fleet::ReadLedger {
                    ledger: read.bytes.map_err(|e| e.to_string()).and_then(|bytes| {
                        crate::ledger::Ledger::parse(&bytes, &read.target)
                            .map_err(|e| e.to_string())
                    }),
                    target: read.target,
                    place: read.place,
                })
            })
            .map_err(|source| SourceError::LedgerRead {
                place: store.place(),
                source,
            })?;
        Ok::<_, Error>((builder.finish(), ims_failed))
    })();
    match result {
        Ok((view, ims_failed)) => {
            for target in view.targets.iter().filter(|t| t.error.is_some()) {
                log::warn!(
                    "the LUN ledger {} cannot be used: {}",
                    crate::describe::printable(&target.place),
                    crate::describe::printable(target.error.as_deref().unwrap_or_default())
                );
            }
            let text = match cli.output {
                Output::Json => json(&view),
                Output::Text => view.to_text(),
            };
            write_stdout(&text);
            if view.incomplete() || ims_failed {
                Exit::Failure
            } else if view.agree {
                Exit::Success
            } else {
                Exit::Changed
            }
        }
        Err(error) => fail_command(cli, &error),
    }
}

/// `explain IMAGE`: the rules the planner applies to that image, one by one.
fn explain_command(cli: &Cli, query: &str) -> Exit {
    let result = (|| {
        let policy = load_policy(cli)?;
        let deadline = Deadline::after(policy.safety.run_deadline);
        let (current, sources, snapshot) = read_catalogue(&policy, deadline)?;
        let ledger = read_ledger(&policy, &sources)?;
        let running = read_running(&policy)?;
        let inputs = Inputs {
            policy: &policy,
            snapshot: &snapshot,
            ledger: ledger.as_ref(),
            now: now_unix(),
        };
        let plan = inputs.plan(&current, running.as_ref());
        Ok::<_, Error>(explain::explain(&policy, &snapshot, &plan, query))
    })();
    match result {
        Ok(explanations) if explanations.is_empty() => {
            log::error!("no image, image name, object key or s3:// URL {query:?} in the catalogue");
            if cli.output == Output::Json {
                let _ = write_stdout("[]\n");
            }
            Exit::Failure
        }
        Ok(explanations) => {
            let text = match cli.output {
                Output::Json => json(&explanations),
                Output::Text => explain::to_text(&explanations),
            };
            write_stdout(&text)
        }
        Err(error) => fail_command(cli, &error),
    }
}

fn fail_command(cli: &Cli, error: &Error) -> Exit {
    logger::error_chain(error);
    if cli.output == Output::Json {
        let mut report = Report::empty(true);
        report.set_error(error);
        let _ = write_stdout(&report.to_json());
    }
    error.kind().exit()
}

fn json(value: &impl serde::Serialize) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

fn write_stdout(text: &str) -> Exit {
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`| head`) is not worth a panic.
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
    Exit::Success
}

/// Prints the report in the requested format.
fn print(report: &Report, output: Output) {
    match output {
        // Written as it is encoded: at 5,000 images the document is megabytes.
        Output::Json => {
            let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
            // A closed pipe (`| head`) is not worth a panic.
            let _ = serde_json::to_writer_pretty(&mut stdout, report);
            let _ = stdout.write_all(b"\n");
            let _ = stdout.flush();
        }
        // Under the unit stdout is the journal too: the log already holds each decision
        // and the one summary; the report's text (and its diff) would repeat them at info.
        Output::Text if logger::stdout_is_journal() => {
            for note in &report.notes {
                log::info!("note: {note}");
            }
            if !report.diff.is_empty() {
                log::debug!("diff:\n{}", report.diff);
            }
        }
        Output::Text => {
            let _ = write_stdout(&report.to_text());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Under the lock the file is read again: parsed again only when it changed.
    #[test]
    fn the_file_read_again_is_parsed_again_only_when_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("saveconfig.json");
        let one = "{\n  \"storage_objects\": [],\n  \"targets\": []\n}\n";
        std::fs::write(&path, one).unwrap();
        let first = CurrentFile::read(&path).unwrap();

        let (same, changed) = first.clone().read_again(&path).unwrap();
        assert!(!changed);
        assert_eq!(same.bytes.as_deref(), Some(one.as_bytes()));
        assert_eq!(same.file.config, first.config);

        std::fs::write(&path, "{\n  \"targets\": [],\n  \"x\": 1\n}\n").unwrap();
        let (other, changed) = first.clone().read_again(&path).unwrap();
        assert!(changed);
        assert!(other.file.config.to_canonical().contains("\"x\": 1"));
        // The same length, one byte changed.
        std::fs::write(&path, "{\n  \"targets\": [],\n  \"x\": 2\n}\n").unwrap();
        let (again, changed) = other.file.read_again(&path).unwrap();
        assert!(changed);
        assert!(again.file.config.to_canonical().contains("\"x\": 2"));

        std::fs::remove_file(&path).unwrap();
        let (gone, changed) = first.clone().read_again(&path).unwrap();
        assert!(changed);
        assert_eq!(gone.bytes, None);
        assert_eq!(gone.file.config, SaveConfig::empty());

        std::fs::write(&path, "not json").unwrap();
        assert!(first.read_again(&path).is_err());
    }
}
