//! Short descriptions of values from outside, for messages an operator reads.

use serde_json::Value;
use std::borrow::Cow;
use std::fmt::Write as _;

/// What a JSON value is: "null", "a list", "the number 3", "the string \"x\"".
pub fn json_value(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

/// A Unix time as this host's local time, for messages.
pub fn local_time(unix: u64) -> String {
    jiff::Timestamp::from_second(i64::try_from(unix).unwrap_or(i64::MAX))
        .map(|t| {
            t.to_zoned(jiff::tz::TimeZone::system())
                .strftime("%Y-%m-%d %H:%M:%S %Z")
                .to_string()
        })
        .unwrap_or_else(|_| unix.to_string())
}

/// Text from outside (an IMS id or name, an object key, a server's answer) as one printable
/// line: control characters are escaped, so that a name holding a newline cannot forge a
/// log line (`<3>error: ...`) or a line of the text report.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The most characters of a key or path a message shows.
pub const KEY_CHARS: usize = 120;

/// An object key or a path, printable (see [`printable`]) and cut to a readable length: a
/// longer one keeps its start and its end (where `/rootfs` or `.squashfs` is), the middle
/// elided with its length, so every skip names its key without a 300-character line.
pub fn key(text: &str) -> String {
    let text = printable(text);
    let count = text.chars().count();
    if count <= KEY_CHARS {
        return text.into_owned();
    }
    let head: String = text.chars().take(64).collect();
    let tail: String = text.chars().skip(count - 40).collect();
    format!("{head}…{tail} ({} bytes)", text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_key_keeps_its_start_and_end() {
        assert_eq!(key("abc/rootfs"), "abc/rootfs");
        let long = format!("image-1/{}/rootfs", "x".repeat(300));
        let short = key(&long);
        assert!(short.starts_with("image-1/xxx") && short.ends_with("/rootfs (315 bytes)"));
        assert!(short.chars().count() <= KEY_CHARS, "{short}");
        assert_eq!(key("a\nb"), "a\\nb");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("plain name"), "plain name");
        assert_eq!(
            printable("a\n<3>error: forged\r\u{1b}[31m"),
            "a\\n<3>error: forged\\r\\u{1b}[31m"
        );
    }
}
