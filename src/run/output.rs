//! How a command answers: the report as text or JSON, a failure, bytes on stdout.

use crate::cli::{Cli, Output};
use crate::error::{Error, Exit};
use crate::logger;
use crate::report::Report;
use std::io::Write;

/// A command beside reconcile that failed: with `--output json`, a report that holds only the
/// error; the error itself goes on, for `main` to log.
pub(super) fn fail_command(cli: &Cli, error: Error) -> Error {
    if cli.output == Output::Json {
        let mut report = Report::empty(true);
        report.set_error(&error);
        let _ = write_stdout(&report.to_json());
    }
    error
}

pub(super) fn json(value: &impl serde::Serialize) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

pub(super) fn write_stdout(text: &str) -> Exit {
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`| head`) is not worth a panic.
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
    Exit::Success
}

/// Prints the report in the requested format.
pub(super) fn print(report: &Report, output: Output) {
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
