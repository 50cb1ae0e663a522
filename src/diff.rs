//! What the plan changes, for people: one line per projection, and a unified diff of the
//! canonical JSON.

use crate::plan::{Action, ImageRef, Projection};
use similar::{Algorithm, TextDiff};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::Duration;

/// Lines of context around each change.
const CONTEXT: usize = 3;
/// How long the diff algorithm may search for the smallest diff before it settles for a
/// larger one (still correct).
const DIFF_TIMEOUT: Duration = Duration::from_millis(50);

/// Diffs longer than this are summed up unless `--diff full` asks for them: a cold start
/// at 5,000 images is a 2.8 MB diff nobody reads whole.
pub const MAX_SHOWN_LINES: usize = 2_000;

/// A diff as a report shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shown {
    /// The unified diff, or a line saying how large it is.
    pub text: String,
    /// Lines of the whole diff.
    pub lines: usize,
    pub complete: bool,
}

/// The unified diff from `current` to `desired`, whole, or past [`MAX_SHOWN_LINES`] (with
/// `full` false) one line saying how large it is.
pub fn shown(current: &str, desired: &str, full: bool) -> Shown {
    // One block (a cold start): its size is known before a line of it is written.
    if let Some(block) = OneBlock::of(current, desired) {
        let lines = block.lines();
        if full || lines <= MAX_SHOWN_LINES {
            return Shown {
                text: block.write(),
                lines,
                complete: true,
            };
        }
        return Shown::summed_up(lines, block.new_mid().len(), block.old_mid().len());
    }
    let text = unified(current, desired);
    let lines = text.lines().count();
    if full || lines <= MAX_SHOWN_LINES {
        return Shown {
            text,
            lines,
            complete: true,
        };
    }
    let count = |sign: &str, other: &str| {
        text.lines()
            .filter(|l| l.starts_with(sign) && !l.starts_with(other))
            .count()
    };
    Shown::summed_up(lines, count("+", "+++"), count("-", "---"))
}

impl Shown {
    /// The line that stands for a diff too long to show.
    fn summed_up(lines: usize, added: usize, removed: usize) -> Shown {
        Shown {
            text: format!(
                "The diff of saveconfig.json has {lines} lines ({added} added, {removed} \
                 removed): not shown; --diff full prints it.\n"
            ),
            lines,
            complete: false,
        }
    }
}

/// Unified diff (3 lines of context) between two canonical texts.
pub fn unified(current: &str, desired: &str) -> String {
    if current == desired {
        return String::new();
    }
    if let Some(block) = OneBlock::of(current, desired) {
        return block.write();
    }
    // Patience: the canonical JSON has mostly unique lines, and Myers grows quadratic on the
    // thousands of added lines of a cold start. The timeout bounds what is left.
    TextDiff::configure()
        .algorithm(Algorithm::Patience)
        .timeout(DIFF_TIMEOUT)
        .diff_lines(current, desired)
        .unified_diff()
        .context_radius(CONTEXT)
        .header("current", "desired")
        .to_string()
}

/// The diff of a change that replaces one block of lines by another with no line in common
/// (after the common head and tail): everything added to an empty configuration, or
/// everything removed. There is nothing to search: it is written directly, in the time it
/// takes to copy the text, and its size is known before a line is written.
struct OneBlock<'a> {
    old: Vec<&'a str>,
    new: Vec<&'a str>,
    /// Lines in common before and after the block.
    head: usize,
    tail: usize,
}

impl<'a> OneBlock<'a> {
    /// `None` for any other change.
    fn of(current: &'a str, desired: &'a str) -> Option<OneBlock<'a>> {
        // Whole lines only: a text without a final newline goes to the general path,
        // which marks it.
        let whole_lines = |text: &str| text.is_empty() || text.ends_with('\n');
        if current == desired || !whole_lines(current) || !whole_lines(desired) {
            return None;
        }
        let old: Vec<&str> = current.split_inclusive('\n').collect();
        let new: Vec<&str> = desired.split_inclusive('\n').collect();
        let head = old.iter().zip(&new).take_while(|(a, b)| a == b).count();
        let tail = old[head..]
            .iter()
            .rev()
            .zip(new[head..].iter().rev())
            .take_while(|(a, b)| a == b)
            .count();
        let block = OneBlock {
            old,
            new,
            head,
            tail,
        };
        block.has_no_line_in_common().then_some(block)
    }

    fn old_mid(&self) -> &[&'a str] {
        &self.old[self.head..self.old.len() - self.tail]
    }

    fn new_mid(&self) -> &[&'a str] {
        &self.new[self.head..self.new.len() - self.tail]
    }

    /// Context lines before and after the block.
    fn before(&self) -> usize {
        self.head.min(CONTEXT)
    }

    fn after(&self) -> usize {
        self.tail.min(CONTEXT)
    }

    /// Lines of the unified diff: two file headers, one hunk header, the hunk.
    fn lines(&self) -> usize {
        3 + self.before() + self.old_mid().len() + self.new_mid().len() + self.after()
    }

    fn has_no_line_in_common(&self) -> bool {
        let (old, head, tail) = (&self.old, self.head, self.tail);
        let (old_mid, new_mid) = (self.old_mid(), self.new_mid());
        let (small, large) = if old_mid.len() <= new_mid.len() {
            (old_mid, new_mid)
        } else {
            (new_mid, old_mid)
        };
        let small: HashSet<&str> = small.iter().copied().collect();
        // A middle line equal to a context line could be aligned elsewhere: leave it to the
        // algorithm, so that the result is always the smallest diff.
        let context: HashSet<&str> = old[head.saturating_sub(CONTEXT)..head]
            .iter()
            .chain(&old[old.len() - tail..(old.len() - tail + CONTEXT).min(old.len())])
            .copied()
            .collect();
        !(large.iter().any(|line| small.contains(line))
            || old_mid
                .iter()
                .chain(new_mid)
                .any(|line| context.contains(line)))
    }

    fn write(&self) -> String {
        let (old, new, head, tail) = (&self.old, &self.new, self.head, self.tail);
        let (old_mid, new_mid) = (self.old_mid(), self.new_mid());
        let (before, after) = (self.before(), self.after());
        let start = head - before;
        let size: usize = new_mid.iter().chain(old_mid).map(|l| l.len() + 1).sum();
        let mut out = String::with_capacity(size + 256);
        out.push_str("--- current\n+++ desired\n");
        let _ = writeln!(
            out,
            "@@ -{} +{} @@",
            HunkRange(start, old.len() - tail + after),
            HunkRange(start, new.len() - tail + after)
        );
        let lines = |out: &mut String, sign: char, lines: &[&str]| {
            for line in lines {
                out.push(sign);
                out.push_str(line);
            }
        };
        lines(&mut out, ' ', &old[start..head]);
        lines(&mut out, '-', old_mid);
        lines(&mut out, '+', new_mid);
        lines(
            &mut out,
            ' ',
            &old[old.len() - tail..old.len() - tail + after],
        );
        out
    }
}

/// A hunk's line range as unified diffs write it: `start,length` from 1, the start alone
/// for one line, and the line before for none.
struct HunkRange(usize, usize);

impl std::fmt::Display for HunkRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let length = self.1.saturating_sub(self.0);
        match length {
            1 => write!(f, "{}", self.0 + 1),
            0 => write!(f, "{},0", self.0),
            _ => write!(f, "{},{length}", self.0 + 1),
        }
    }
}

/// `+ add     LUN 3    rootfs  "cos-2.5" (id 8f2c..), 2097152 bytes, de4cc04e7dacfb9`
pub fn projection_line(p: &Projection) -> String {
    let sign = match p.action {
        Action::Add => '+',
        Action::Remove => '-',
        Action::Update => '~',
        Action::Keep => ' ',
    };
    let lun = p
        .lun
        .map_or_else(|| "LUN -".to_string(), |l| format!("LUN {l}"));
    let mut line = format!(
        "{sign} {:<7} {lun:<8} {:<6}  {}, {} bytes, {}",
        p.action.as_str(),
        p.kind.as_str(),
        describe_images(p),
        p.size,
        p.name
    );
    if !p.changes.is_empty() {
        line.push_str(": ");
        line.push_str(&crate::describe::printable(&p.changes.join("; ")));
    }
    line
}

/// `"name" (id ID)`, several joined with " + ", or the source when no image is known.
pub fn describe_images(p: &Projection) -> String {
    let known: Vec<String> = p
        .images
        .iter()
        .filter(|i| i.is_known())
        .map(ImageRef::describe)
        .collect();
    if known.is_empty() {
        crate::describe::printable(&p.source).into_owned()
    } else {
        known.join(" + ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unified_diff_has_headers_and_context() {
        let current = "a\nb\nc\nd\ne\nf\ng\n";
        let desired = "a\nb\nc\nD\ne\nf\ng\n";
        let diff = unified(current, desired);
        assert!(
            diff.starts_with("--- current\n+++ desired\n@@ -1,7 +1,7 @@\n"),
            "{diff}"
        );
        assert!(diff.contains("-d\n+D\n"));
        assert_eq!(unified(current, current), "");
    }

    fn by_the_algorithm(current: &str, desired: &str) -> String {
        TextDiff::configure()
            .algorithm(Algorithm::Patience)
            .diff_lines(current, desired)
            .unified_diff()
            .context_radius(CONTEXT)
            .header("current", "desired")
            .to_string()
    }

    #[test]
    fn a_block_replaced_is_written_as_the_algorithm_would() {
        let cases = [
            ("", "x\ny\n"),
            ("x\ny\n", ""),
            ("a\nb\nc\nd\ne\nf\ng\nh\n", "a\nb\nc\nd\nX\nY\ne\nf\ng\nh\n"),
            ("a\nb\nc\n", "a\nb\nc\nd\n"),
            ("a\nb\nc\n", "z\na\nb\nc\n"),
            ("a\nb\nc\nd\ne\n", "a\nb\nQ\nR\nS\nd\ne\n"),
            (
                "{\n  \"s\": [],\n  \"t\": []\n}\n",
                "{\n  \"s\": [\n    1,\n    2\n  ],\n  \"t\": [\n    3\n  ]\n}\n",
            ),
            ("a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n", "a\n"),
            ("a\n", "b\n"),
        ];
        for (current, desired) in cases {
            let fast = OneBlock::of(current, desired);
            let expected = by_the_algorithm(current, desired);
            assert!(fast.is_some(), "{current:?} -> {desired:?}");
            assert_eq!(
                fast.as_ref().map(OneBlock::write).as_deref(),
                Some(expected.as_str()),
                "{current:?} -> {desired:?}"
            );
            // Its size, known before it is written.
            assert_eq!(
                fast.as_ref().map(OneBlock::lines),
                Some(expected.lines().count()),
                "{current:?} -> {desired:?}"
            );
        }
        // Shared lines, or none at the end: the algorithm's business.
        assert!(OneBlock::of("a\nb\nc\n", "a\nX\nc\nb\n").is_none());
        assert!(OneBlock::of("a\nb\nc\nd\n", "a\nX\nd\nY\n").is_none());
        assert!(OneBlock::of("a\nb", "a\nc").is_none());
        assert_eq!(unified("a\nb", "a\nc"), by_the_algorithm("a\nb", "a\nc"));
    }

    /// Past the limit a diff is summed up with the same figures, whichever way it was made.
    #[test]
    fn a_long_diff_is_summed_up_alike_from_one_block_or_the_algorithm() {
        let lines = |from: usize, count: usize| -> String {
            (from..from + count)
                .map(|i| format!("line {i}\n"))
                .collect()
        };
        let many = MAX_SHOWN_LINES + 10;
        // All added (one block), and added among shared lines (the algorithm).
        let cases = [
            (String::new(), lines(0, many)),
            (
                lines(0, 5) + &lines(1_000_000, 5),
                lines(0, 5) + &lines(10, many) + &lines(1_000_000, 3) + &lines(2_000_000, 2),
            ),
        ];
        for (index, (current, desired)) in cases.iter().enumerate() {
            assert_eq!(OneBlock::of(current, desired).is_some(), index == 0);
            let summed = shown(current, desired, false);
            let whole = shown(current, desired, true);
            assert!(!summed.complete && whole.complete);
            assert_eq!(summed.lines, whole.lines);
            assert_eq!(whole.lines, whole.text.lines().count());
            let added = whole
                .text
                .lines()
                .filter(|l| l.starts_with("+") && !l.starts_with("+++"))
                .count();
            let removed = whole
                .text
                .lines()
                .filter(|l| l.starts_with("-") && !l.starts_with("---"))
                .count();
            assert_eq!(
                summed.text,
                format!(
                    "The diff of saveconfig.json has {} lines ({added} added, {removed} removed): \
                     not shown; --diff full prints it.\n",
                    whole.lines
                )
            );
        }
    }
}
