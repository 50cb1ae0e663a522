//! JSON text exactly as rtslib writes it: Python's `json.dump(conf, f, sort_keys=True,
//! indent=2)` followed by a newline. Python escapes every character outside printable ASCII
//! (`ensure_ascii`), so a file saved by `targetctl save` and one written here are byte-equal.

use serde::Serialize;
use serde_json::ser::{Formatter, PrettyFormatter};
use std::io;

/// Canonical text of a JSON value or object (objects are `BTreeMap`s, so keys come out
/// sorted).
pub fn to_string(value: &impl Serialize) -> String {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, AsciiPretty::default());
    // Writing JSON values into a Vec cannot fail.
    if value.serialize(&mut serializer).is_err() {
        return String::new();
    }
    out.push(b'\n');
    String::from_utf8(out).unwrap_or_default()
}

/// serde_json's pretty printer (2-space indent, `": "`), with Python's ASCII escaping.
#[derive(Default)]
struct AsciiPretty {
    inner: PrettyFormatter<'static>,
}

impl Formatter for AsciiPretty {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        // Quotes, backslashes and control characters never reach here (serde_json escapes
        // them as Python does); what is left outside ' '..='~' Python writes as \uXXXX.
        let mut start = 0;
        for (at, c) in fragment.char_indices() {
            if (' '..='~').contains(&c) {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[start..at])?;
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(writer, "\\u{unit:04x}")?;
            }
            start = at + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }

    fn begin_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.inner.begin_array(w)
    }
    fn end_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.inner.end_array(w)
    }
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.inner.begin_array_value(w, first)
    }
    fn end_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.inner.end_array_value(w)
    }
    fn begin_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.inner.begin_object(w)
    }
    fn end_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.inner.end_object(w)
    }
    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.inner.begin_object_key(w, first)
    }
    fn end_object_key<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.inner.end_object_key(w)
    }
    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.inner.begin_object_value(w)
    }
    fn end_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.inner.end_object_value(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_python_json_dump_sort_keys_indent_2() {
        // Expected text produced by: json.dump(v, f, sort_keys=True, indent=2); f.write("\n")
        let value = json!({"b": [], "a": {"z": 1, "y": [true, null, "x"]}, "c": {}, "d": "é\u{1f600}\u{7f}\"\\\n"});
        let expected = "{\n  \"a\": {\n    \"y\": [\n      true,\n      null,\n      \"x\"\n    ],\n    \"z\": 1\n  },\n  \"b\": [],\n  \"c\": {},\n  \"d\": \"\\u00e9\\ud83d\\ude00\\u007f\\\"\\\\\\n\"\n}\n";
        assert_eq!(to_string(&value), expected);
    }
}
