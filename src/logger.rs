//! Logs: one line each, no timestamps (journald adds its own).
//!
//! Under systemd (`JOURNAL_STREAM` set) each entry goes to the journal over its native
//! protocol, with its priority and the decision's fields (`REASON_CODE`, `IMAGE_ID`, ...), so
//! that `journalctl -u sbps-reconcile REASON_CODE=missing_etag` finds the skipped images. When
//! the journal socket cannot be reached, the line goes to stderr starting with its syslog
//! priority (`<3>` an error, `<4>` a warning such as a skipped image, `<6>` info, `<7>` debug),
//! which journald turns into the entry's priority: `journalctl -p warning -u sbps-reconcile`
//! shows the skipped images and the failures either way. Elsewhere, plain lines on stderr.

use log::kv::{Key, Value, VisitSource};
use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::{IsTerminal, Write};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

struct StderrLogger {
    level: LevelFilter,
    journal: bool,
    /// The journal's native socket, when under systemd and it answers.
    native: Option<UnixDatagram>,
}

/// Where journald listens for native entries.
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// The journal socket: `SBPS_JOURNAL_SOCKET` (for tests, and for a journald in a container
/// that puts it elsewhere), else systemd's own.
fn journal_socket_path() -> PathBuf {
    std::env::var_os("SBPS_JOURNAL_SOCKET").map_or_else(|| JOURNAL_SOCKET.into(), PathBuf::from)
}

/// The syslog priority of a level.
fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// A field name the journal accepts: upper-case ASCII letters, digits and '_', not starting
/// with '_' or a digit (those are the journal's own), at most 64 bytes.
fn journal_field_name(key: &str) -> Option<String> {
    let name = key.to_ascii_uppercase();
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && name.bytes().next().is_some_and(|b| b.is_ascii_uppercase());
    valid.then_some(name)
}

/// Appends one field in the native protocol: `NAME=value\n`, or for a value holding a newline
/// the binary form `NAME\n<u64 length, little-endian>value\n`.
fn push_field(entry: &mut Vec<u8>, name: &str, value: &str) {
    entry.extend_from_slice(name.as_bytes());
    if value.contains('\n') {
        entry.push(b'\n');
        entry.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        entry.push(b'=');
    }
    entry.extend_from_slice(value.as_bytes());
    entry.push(b'\n');
}

/// The fields a record carries (`log::info!(reason_code = "x"; "...")`), as journal fields.
#[derive(Default)]
struct Fields(Vec<(String, String)>);

impl<'kvs> VisitSource<'kvs> for Fields {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        if let Some(name) = journal_field_name(key.as_str()) {
            let text = value.to_string();
            self.0
                .push((name, crate::secrets::redact(&text).into_owned()));
        }
        Ok(())
    }
}

/// A whole native journal entry for a record.
pub fn journal_entry(record: &Record, message: &str) -> Vec<u8> {
    let mut entry = Vec::with_capacity(message.len() + 128);
    push_field(&mut entry, "MESSAGE", message);
    push_field(
        &mut entry,
        "PRIORITY",
        &priority(record.level()).to_string(),
    );
    push_field(&mut entry, "SYSLOG_IDENTIFIER", "sbps-reconcile");
    let mut fields = Fields::default();
    let _ = record.key_values().visit(&mut fields);
    for (name, value) in &fields.0 {
        push_field(&mut entry, name, value);
    }
    entry
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
        // One line per record whatever it holds, and no secret in it.
        let text = record.args().to_string();
        let redacted = crate::secrets::redact(&text);
        let text = crate::describe::printable(&redacted);
        if let Some(socket) = &self.native {
            let entry = journal_entry(record, &text);
            if socket.send(&entry).is_ok() {
                return;
            }
        }
        let prefix = prefix(record.level(), self.journal);
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "{prefix}{text}");
    }

    fn flush(&self) {}
}

/// Whether stderr goes to the journal (systemd sets `JOURNAL_STREAM` for such units).
pub fn under_journal() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some()
}

/// Whether stdout is the journal too (systemd sets `JOURNAL_STREAM` to the device and inode
/// of the stream it connected): then the text report would land in the journal at info, on
/// top of the log's entries.
pub fn stdout_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    rustix::fs::fstat(std::io::stdout()).is_ok_and(|stat| stat.st_dev == dev && stat.st_ino == ino)
}

/// Installs the logger; `RUST_LOG` (error, warn, info, debug, trace) overrides `level`.
pub fn init(level: LevelFilter) {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
        .unwrap_or(level);
    let journal = under_journal();
    let native = journal
        .then(|| {
            let socket = UnixDatagram::unbound().ok()?;
            socket.connect(journal_socket_path()).ok()?;
            Some(socket)
        })
        .flatten();
    let logger = StderrLogger {
        level,
        journal,
        native,
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
}

/// Whether each decision (a projection, a skipped image, a target change) is logged as well
/// as reported: yes for the journal and for pipes and files, where the log is the record;
/// not on a terminal, where the report already shows each one once.
pub fn log_decisions() -> bool {
    under_journal() || !std::io::stderr().is_terminal()
}

/// Logs one decision with fields the journal can be queried by (`IMAGE_ID=...`); fields with
/// no value are left out.
pub fn decision(level: Level, fields: &[(&str, Option<&str>)], message: std::fmt::Arguments) {
    let present: Vec<(&str, &str)> = fields
        .iter()
        .filter_map(|(key, value)| value.map(|v| (*key, v)))
        .collect();
    let present: &[(&str, &str)] = &present;
    let record = Record::builder()
        .level(level)
        .target("sbps_reconcile::decision")
        .args(message)
        .key_values(&present)
        .build();
    let logger = log::logger();
    if level <= log::max_level() && logger.enabled(record.metadata()) {
        logger.log(&record);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_fields_are_named_as_the_journal_wants() {
        assert_eq!(
            journal_field_name("reason_code").as_deref(),
            Some("REASON_CODE")
        );
        for bad in ["_pid", "1x", "", "image-id", "a b"] {
            assert_eq!(journal_field_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_value_with_a_newline_takes_the_binary_form() {
        let mut entry = Vec::new();
        push_field(&mut entry, "MESSAGE", "plain");
        push_field(&mut entry, "DETAIL", "two\nlines");
        let mut expected = b"MESSAGE=plain\nDETAIL\n".to_vec();
        expected.extend_from_slice(&9u64.to_le_bytes());
        expected.extend_from_slice(b"two\nlines\n");
        assert_eq!(entry, expected);
    }

    #[test]
    fn an_entry_holds_message_priority_identifier_and_fields() {
        let fields: &[(&str, &str)] = &[("reason_code", "missing_etag"), ("bad-name", "x")];
        let record = Record::builder()
            .level(Level::Warn)
            .args(format_args!("m"))
            .key_values(&fields)
            .build();
        let entry = String::from_utf8(journal_entry(&record, "skipped")).unwrap();
        assert_eq!(
            entry,
            "MESSAGE=skipped\nPRIORITY=4\nSYSLOG_IDENTIFIER=sbps-reconcile\nREASON_CODE=missing_etag\n"
        );
    }
}
