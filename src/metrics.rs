//! Prometheus metrics in the text format of node_exporter's textfile collector, written
//! atomically after every run. Counters and the last success time are carried over from the
//! previous file, so the tool stays stateless: deleting the file only resets them.

use crate::error::ErrorKind;
use crate::plan::{Action, Kind, Plan};
use crate::skip::ReasonCode;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// What one run contributes.
#[derive(Debug, Clone, Default)]
pub struct RunMetrics {
    /// Unix time the run ended.
    pub end_unix: f64,
    pub duration_seconds: f64,
    /// The failure, if the run failed (a refusal by a safety limit counts as one).
    pub failure: Option<ErrorKind>,
    /// The plan's figures, when the run got as far as a plan.
    pub plan: Option<PlanFigures>,
    /// Whether the plan was applied (its changes count as applied).
    pub applied: bool,
    /// Failures in a row of the plan this run tried (0 when it applied, or had nothing to do).
    pub failures_in_a_row: u32,
    /// Unix time from which a failing plan is tried again.
    pub retry_unix: Option<u64>,
}

/// What a plan holds, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanFigures {
    /// Projections in place after the plan, by kind.
    pub projections: BTreeMap<Kind, usize>,
    /// Skipped images by reason code.
    pub skipped: BTreeMap<ReasonCode, usize>,
    /// Projections by action.
    pub actions: BTreeMap<Action, usize>,
}

impl PlanFigures {
    pub fn of(plan: &Plan) -> PlanFigures {
        let mut figures = PlanFigures::default();
        for p in plan.projections.iter() {
            *figures.actions.entry(p.action).or_default() += 1;
            if p.action != Action::Remove {
                *figures.projections.entry(p.kind).or_default() += 1;
            }
        }
        for s in &plan.skipped {
            *figures.skipped.entry(s.reason.code).or_default() += 1;
        }
        figures
    }
}

/// Samples of a previous file: `name{labels}` to value. Lines that do not parse are ignored.
fn parse_previous(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.trim().to_string(), value.trim().parse::<f64>().ok()?))
        })
        .filter(|(_, value)| value.is_finite() && *value >= 0.0)
        .collect()
}

/// The new file's text.
pub fn render(previous: &str, run: &RunMetrics) -> String {
    let old = parse_previous(previous);
    let carried = |series: &str| old.get(series).copied().unwrap_or(0.0);
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP sbps_reconcile_{name} {help}");
        let _ = writeln!(out, "# TYPE sbps_reconcile_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "sbps_reconcile_{name}{labels} {}", number(value));
        }
    };
    let success = run.failure.is_none();
    metric(
        "last_run_timestamp_seconds",
        "gauge",
        "Unix time the last run ended.",
        vec![(String::new(), run.end_unix)],
    );
    let last_success = if success {
        run.end_unix
    } else {
        carried("sbps_reconcile_last_success_timestamp_seconds")
    };
    metric(
        "last_success_timestamp_seconds",
        "gauge",
        "Unix time the last successful run ended (0: none recorded).",
        vec![(String::new(), last_success)],
    );
    metric(
        "last_run_success",
        "gauge",
        "1 when the last run succeeded, 0 when it failed or was refused.",
        vec![(String::new(), if success { 1.0 } else { 0.0 })],
    );
    metric(
        "run_duration_seconds",
        "gauge",
        "How long the last run took.",
        vec![(String::new(), run.duration_seconds)],
    );
    metric(
        "runs_total",
        "counter",
        "Runs, since the metrics file was created.",
        vec![(String::new(), carried("sbps_reconcile_runs_total") + 1.0)],
    );
    let failures = ErrorKind::ALL
        .iter()
        .map(|kind| {
            let labels = format!("{{kind=\"{}\"}}", kind.as_str());
            let before = carried(&format!("sbps_reconcile_failures_total{labels}"));
            let add = if run.failure == Some(*kind) { 1.0 } else { 0.0 };
            (labels, before + add)
        })
        .collect();
    metric(
        "failures_total",
        "counter",
        "Failed or refused runs by kind.",
        failures,
    );
    // The actions that change something, in the order the file has always listed them.
    let applied = [Action::Add, Action::Remove, Action::Update]
        .iter()
        .map(|action| {
            let labels = format!("{{action=\"{action}\"}}");
            let before = carried(&format!("sbps_reconcile_changes_applied_total{labels}"));
            let add = match &run.plan {
                Some(plan) if run.applied => plan.actions.get(action).copied().unwrap_or(0),
                _ => 0,
            };
            (labels, before + add as f64)
        })
        .collect();
    metric(
        "changes_applied_total",
        "counter",
        "Projections added, removed or updated by applied runs.",
        applied,
    );
    metric(
        "consecutive_failures",
        "gauge",
        "Failures in a row of the plan the last run tried (0: it applied, or had nothing to do).",
        vec![(String::new(), f64::from(run.failures_in_a_row))],
    );
    metric(
        "retry_after_timestamp_seconds",
        "gauge",
        "Unix time from which a failing plan is tried again (0: nothing is backing off).",
        vec![(String::new(), run.retry_unix.map_or(0.0, |t| t as f64))],
    );
    if let Some(plan) = &run.plan {
        metric(
            "projections",
            "gauge",
            "Projected images (LUNs managed by the tool) by kind, as of the last plan.",
            Kind::ALL
                .iter()
                .map(|kind| {
                    let count = plan.projections.get(kind).copied().unwrap_or(0) as f64;
                    (format!("{{kind=\"{kind}\"}}"), count)
                })
                .collect(),
        );
        metric(
            "skipped_images",
            "gauge",
            "Images not projected in the last plan, by reason code.",
            ReasonCode::ALL
                .iter()
                .map(|code| {
                    let count = plan.skipped.get(code).copied().unwrap_or(0) as f64;
                    (format!("{{reason=\"{code}\"}}"), count)
                })
                .collect(),
        );
    }
    out
}

fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        format!("{value:.3}")
    }
}

/// Writes the metrics file atomically, readable by node_exporter (mode 0644).
pub fn write(path: &std::path::Path, run: &RunMetrics) -> Result<(), crate::error::FileError> {
    let previous = std::fs::read_to_string(path).unwrap_or_default();
    crate::fsio::write_atomic_mode(path, render(&previous, run).as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(failure: Option<ErrorKind>) -> RunMetrics {
        RunMetrics {
            end_unix: 1_700_000_000.0,
            duration_seconds: 1.25,
            failure,
            plan: Some(PlanFigures {
                projections: [(Kind::Rootfs, 3), (Kind::Pe, 2)].into(),
                skipped: [(ReasonCode::MissingEtag, 1)].into(),
                actions: [(Action::Add, 2), (Action::Keep, 3)].into(),
            }),
            applied: true,
            ..RunMetrics::default()
        }
    }

    #[test]
    fn counters_and_the_last_success_carry_over() {
        let first = render("", &run(None));
        assert!(first.contains("sbps_reconcile_runs_total 1\n"));
        assert!(first.contains("sbps_reconcile_last_success_timestamp_seconds 1700000000\n"));
        assert!(first.contains("sbps_reconcile_changes_applied_total{action=\"add\"} 2\n"));
        assert!(first.contains("sbps_reconcile_skipped_images{reason=\"missing_etag\"} 1\n"));
        assert!(first.contains("sbps_reconcile_projections{kind=\"pe\"} 2\n"));
        let mut failed = run(Some(ErrorKind::Source));
        failed.end_unix = 1_700_000_180.0;
        failed.applied = false;
        let second = render(&first, &failed);
        assert!(second.contains("sbps_reconcile_runs_total 2\n"));
        assert!(second.contains("sbps_reconcile_last_run_success 0\n"));
        assert!(second.contains("sbps_reconcile_last_success_timestamp_seconds 1700000000\n"));
        assert!(second.contains("sbps_reconcile_last_run_timestamp_seconds 1700000180\n"));
        assert!(second.contains("sbps_reconcile_failures_total{kind=\"source\"} 1\n"));
        assert!(second.contains("sbps_reconcile_changes_applied_total{action=\"add\"} 2\n"));
        assert!(second.contains("sbps_reconcile_run_duration_seconds 1.250\n"));
        assert!(second.contains("sbps_reconcile_consecutive_failures 0\n"));
        let backing_off = RunMetrics {
            failures_in_a_row: 2,
            retry_unix: Some(1_700_001_800),
            ..failed
        };
        let third = render(&second, &backing_off);
        assert!(third.contains("sbps_reconcile_consecutive_failures 2\n"));
        assert!(third.contains("sbps_reconcile_retry_after_timestamp_seconds 1700001800\n"));
    }

    #[test]
    fn garbage_in_the_previous_file_is_ignored() {
        let text = render(
            "not metrics\nsbps_reconcile_runs_total NaN\nsbps_reconcile_runs_total -4\n",
            &run(None),
        );
        assert!(text.contains("sbps_reconcile_runs_total 1\n"));
    }
}
