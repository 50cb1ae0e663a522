//! Prometheus metrics in the text format of node_exporter's textfile collector, written
//! atomically after every run. Counters and the last success time are carried over from the
//! previous file, so the tool stays stateless: deleting the file only resets them.

use crate::error::ErrorKind;
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
    /// Projections in place after the run (or planned, on a dry run), by kind.
    pub projections: Option<BTreeMap<&'static str, usize>>,
    /// Skipped images by reason code, when the run got as far as a plan.
    pub skipped: Option<BTreeMap<ReasonCode, usize>>,
    /// Changes applied by this run, by action (empty unless it applied).
    pub applied: BTreeMap<&'static str, usize>,
}

const ALL_KINDS: [ErrorKind; 9] = [
    ErrorKind::Usage,
    ErrorKind::Policy,
    ErrorKind::Source,
    ErrorKind::CurrentConfig,
    ErrorKind::Safety,
    ErrorKind::LockBusy,
    ErrorKind::Apply,
    ErrorKind::RolledBack,
    ErrorKind::RollbackFailed,
];

const ALL_REASONS: [ReasonCode; 14] = [
    ReasonCode::NoLink,
    ReasonCode::NotTagged,
    ReasonCode::ManifestUnreadable,
    ReasonCode::ManifestInvalid,
    ReasonCode::NoRootfsArtifact,
    ReasonCode::MissingEtag,
    ReasonCode::S3ObjectMissing,
    ReasonCode::EtagMismatch,
    ReasonCode::NotInMount,
    ReasonCode::SizeMismatch,
    ReasonCode::InvalidKey,
    ReasonCode::NoFreeLun,
    ReasonCode::RecordInvalid,
    ReasonCode::NameConflict,
];

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
    let failures = ALL_KINDS
        .iter()
        .filter(|kind| kind.exit() != crate::error::Exit::Usage)
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
    let applied = ["add", "remove", "update"]
        .iter()
        .map(|action| {
            let labels = format!("{{action=\"{action}\"}}");
            let before = carried(&format!("sbps_reconcile_changes_applied_total{labels}"));
            let add = run.applied.get(action).copied().unwrap_or(0) as f64;
            (labels, before + add)
        })
        .collect();
    metric(
        "changes_applied_total",
        "counter",
        "Projections added, removed or updated by applied runs.",
        applied,
    );
    if let Some(projections) = &run.projections {
        metric(
            "projections",
            "gauge",
            "Projected images (LUNs managed by the tool) by kind, as of the last plan.",
            ["rootfs", "pe"]
                .iter()
                .map(|kind| {
                    let count = projections.get(kind).copied().unwrap_or(0) as f64;
                    (format!("{{kind=\"{kind}\"}}"), count)
                })
                .collect(),
        );
    }
    if let Some(skipped) = &run.skipped {
        metric(
            "skipped_images",
            "gauge",
            "Images not projected in the last plan, by reason code.",
            ALL_REASONS
                .iter()
                .map(|code| {
                    let count = skipped.get(code).copied().unwrap_or(0) as f64;
                    (format!("{{reason=\"{}\"}}", code.as_str()), count)
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
pub fn write(path: &std::path::Path, run: &RunMetrics) -> Result<(), String> {
    let previous = std::fs::read_to_string(path).unwrap_or_default();
    crate::apply::write_atomic_mode(path, render(&previous, run).as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(failure: Option<ErrorKind>) -> RunMetrics {
        RunMetrics {
            end_unix: 1_700_000_000.0,
            duration_seconds: 1.25,
            failure,
            projections: Some([("rootfs", 3), ("pe", 2)].into()),
            skipped: Some([(ReasonCode::MissingEtag, 1)].into()),
            applied: [("add", 2)].into(),
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
        failed.applied.clear();
        let second = render(&first, &failed);
        assert!(second.contains("sbps_reconcile_runs_total 2\n"));
        assert!(second.contains("sbps_reconcile_last_run_success 0\n"));
        assert!(second.contains("sbps_reconcile_last_success_timestamp_seconds 1700000000\n"));
        assert!(second.contains("sbps_reconcile_last_run_timestamp_seconds 1700000180\n"));
        assert!(second.contains("sbps_reconcile_failures_total{kind=\"source\"} 1\n"));
        assert!(second.contains("sbps_reconcile_changes_applied_total{action=\"add\"} 2\n"));
        assert!(second.contains("sbps_reconcile_run_duration_seconds 1.250\n"));
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
