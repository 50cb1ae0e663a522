//! Where in the policy text a problem stands: the YAML parser's own place for a parse error,
//! and the line and column of the key a failed check names.

use crate::error::PolicyError;

/// A parse error as a [`PolicyError`]: its key path (the parser's prefix, `catalogue.ims: `)
/// and its place. For the document's own keys the parser gives no place, or the document's
/// start: an unknown or repeated top-level key is looked up in the text.
pub fn parse_error(error: &serde_yaml::Error, text: &str) -> PolicyError {
    let mut message = error.to_string();
    let mut place = error.location().map(|l| (l.line(), l.column()));
    if let Some((line, column)) = place {
        let suffix = format!(" at line {line} column {column}");
        if let Some(stripped) = message.strip_suffix(&suffix) {
            message = stripped.to_string();
        }
    }
    let mut section = Vec::new();
    if let Some((path, rest)) = message.split_once(": ") {
        let is_path = !path.is_empty()
            && !path.contains(char::is_whitespace)
            && !path.contains('`')
            && !rest.is_empty();
        if is_path {
            // Kept as the parser wrote it (`catalogue.ims`), one part of the key path.
            section = vec![path.to_string()];
            message = rest.to_string();
        }
    }
    let top_level = section.is_empty()
        && (message.starts_with("unknown field") || message.starts_with("duplicate field"));
    if top_level {
        let key = message.split('`').nth(1).unwrap_or_default();
        let mut hits = text.lines().enumerate().filter(|(_, line)| {
            line.strip_prefix(key)
                .is_some_and(|rest| rest.starts_with(':'))
        });
        let hit = if message.starts_with("duplicate field") {
            hits.nth(1)
        } else {
            hits.next()
        };
        place = hit.map(|(number, _)| (number + 1, 1));
    }
    PolicyError {
        section,
        key: None,
        message,
        line: place.map(|p| p.0),
        column: place.map(|p| p.1),
    }
}

/// The same problem, with the place of its key in `text` when the text shows it (block
/// YAML, one key per line; a key in flow style gives the place of its nearest enclosing key).
pub fn place(mut problem: PolicyError, text: &str) -> PolicyError {
    if problem.line.is_none() {
        let mut path: Vec<&str> = Vec::new();
        for part in problem.section.iter().chain(&problem.key) {
            path.extend(part.split('.'));
        }
        if let Some((line, column)) = key_place(text, &path) {
            problem.line = Some(line);
            problem.column = Some(column);
        }
    }
    problem
}

/// The line and column (1-based) of the deepest key of `path` found in `text`, descending
/// one indented block at a time. `prefix_sources[0]` finds `prefix_sources`, and stops.
fn key_place(text: &str, path: &[&str]) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = None;
    let (mut from, mut to) = (0, lines.len());
    let mut parent_indent: Option<usize> = None;
    for part in path {
        let (name, indexed) = match part.split_once('[') {
            Some((name, _)) => (name, true),
            None => (*part, false),
        };
        let hit = (from..to).find_map(|at| {
            let line = lines.get(at)?;
            let indent = line.len() - line.trim_start().len();
            let deeper = parent_indent.is_none_or(|p| indent > p);
            let rest = line.trim_start().strip_prefix(name)?;
            (deeper && rest.trim_start().starts_with(':')).then_some((at, indent))
        });
        let Some((at, indent)) = hit else { break };
        found = Some((at + 1, indent + 1));
        if indexed {
            break;
        }
        // The key's block: the lines after it that are indented deeper.
        let end = (at + 1..to)
            .find(|&next| {
                lines.get(next).is_some_and(|line| {
                    let body = line.trim_start();
                    !body.is_empty() && !body.starts_with('#') && line.len() - body.len() <= indent
                })
            })
            .unwrap_or(to);
        (from, to, parent_indent) = (at + 1, end, Some(indent));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_in_their_own_block() {
        let text = "target:\n  iqn: x\ncatalogue:\n  # iqn: no\n  s3:\n    ledger_prefix: a\n  pe: {prefixes: [x]}\n";
        assert_eq!(key_place(text, &["target", "iqn"]), Some((2, 3)));
        assert_eq!(
            key_place(text, &["catalogue", "s3", "ledger_prefix"]),
            Some((6, 5))
        );
        // In flow style: the nearest enclosing key.
        assert_eq!(
            key_place(text, &["catalogue", "pe", "prefixes"]),
            Some((7, 3))
        );
        assert_eq!(key_place(text, &["catalogue", "iqn"]), Some((3, 1)));
        assert_eq!(key_place(text, &["lio"]), None);
    }
}
