//! Logs on stderr, one line each, no timestamps (journald adds its own).
//!
//! Under systemd (`JOURNAL_STREAM` set) each line starts with its syslog priority (`<3>` an
//! error, `<4>` a warning such as a skipped image, `<6>` info, `<7>` debug), which journald
//! turns into the entry's priority: `journalctl -p warning -u sbps-reconcile` then shows the
//! skipped images and the failures.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;

struct StderrLogger {
    level: LevelFilter,
    journal: bool,
}

/// The text a log line starts with, for a level.
pub fn prefix(level: Level, journal: bool) -> &'static str {
    match (level, journal) {
        (Level::Error, false) => "error: ",
        (Level::Warn, false) => "warning: ",
        (Level::Info, false) => "info: ",
        (Level::Debug, false) => "debug: ",
        (Level::Trace, false) => "trace: ",
        (Level::Error, true) => "<3>error: ",
        (Level::Warn, true) => "<4>warning: ",
        (Level::Info, true) => "<6>",
        (Level::Debug, true) => "<7>debug: ",
        (Level::Trace, true) => "<7>trace: ",
    }
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level && metadata.target().starts_with("sbps_reconcile")
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let prefix = prefix(record.level(), self.journal);
        // One line per record whatever it holds, and no secret in it.
        let text = record.args().to_string();
        let text = crate::secrets::redact(&text);
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "{prefix}{}", crate::describe::printable(&text));
    }

    fn flush(&self) {}
}

/// Whether stderr goes to the journal (systemd sets `JOURNAL_STREAM` for such units).
pub fn under_journal() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some()
}

/// Installs the logger; `RUST_LOG` (error, warn, info, debug, trace) overrides `level`.
pub fn init(level: LevelFilter) {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
        .unwrap_or(level);
    let logger = StderrLogger {
        level,
        journal: under_journal(),
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
}

/// Logs an error that ends a run: its message, then one line per cause (as zincati does), so
/// that the journal shows what failed and why, nearest cause first.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) {
    log::error!("{error}");
    for cause in crate::error::cause_lines(error) {
        log::error!("  caused by: {cause}");
    }
}
