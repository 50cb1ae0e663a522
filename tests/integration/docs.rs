//! The docs say what the tool does: the troubleshooting page lists every exit status, skip
//! reason code and error kind in the section it names for each, every link in the README
//! and `docs/` resolves, and the layout table is the tree under `src/`.

use crate::util::repo;
use sbps_reconcile::error::{ErrorKind, Exit};
use sbps_reconcile::skip::ReasonCode;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn read(rel: &str) -> String {
    fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The lines of the `## {title}` section (up to the next heading of the same or a higher
/// level), or a failure naming the page.
fn section<'a>(page: &'a str, name: &str, title: &str) -> Vec<&'a str> {
    let heading = format!("## {title}");
    let mut lines = page.lines().skip_while(|l| *l != heading);
    assert!(lines.next().is_some(), "{name} has no section {heading:?}");
    lines
        .take_while(|l| !(l.starts_with("## ") || l.starts_with("# ")))
        .collect()
}

/// The first cell of each row of the section's table, without its backquotes.
fn first_cells(rows: &[&str]) -> Vec<String> {
    rows.iter()
        .filter_map(|row| row.strip_prefix("| "))
        .filter(|row| !row.starts_with("---") && !row.starts_with("Code |"))
        .filter(|row| !row.starts_with("Kind |"))
        .filter_map(|row| row.split(" |").next())
        .map(|cell| cell.trim().trim_matches('`').to_string())
        .collect()
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(page: &str) -> BTreeSet<String> {
    outside_code(page)
        .filter_map(|l| {
            l.trim_start_matches('#')
                .strip_prefix(' ')
                .filter(|_| l.starts_with('#'))
        })
        .map(anchor)
        .collect()
}

/// The lines of a Markdown page outside fenced code blocks.
fn outside_code(page: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    page.lines().filter(move |line| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

#[test]
fn troubleshooting_lists_every_exit_status_reason_code_and_error_kind() {
    let name = "docs/troubleshooting.md";
    let page = read(name);
    // The page says where each list is; each must be there.
    let intro: String = page.lines().take(8).collect::<Vec<_>>().join(" ");
    for (title, link) in [
        ("Exit status", "#exit-status"),
        ("Skip reason codes", "#skip-reason-codes"),
        ("Error kinds", "#error-kinds"),
    ] {
        assert!(
            intro.contains(&format!("[{title}]({link})")),
            "{name}'s first lines do not say where its {title} list is"
        );
    }

    let documented: BTreeSet<String> = first_cells(&section(&page, name, "Exit status"))
        .into_iter()
        .collect();
    let exits: BTreeSet<String> = Exit::ALL.iter().map(|e| e.code().to_string()).collect();
    assert_eq!(documented, exits, "{name}: Exit status");

    let documented: BTreeSet<String> = first_cells(&section(&page, name, "Skip reason codes"))
        .into_iter()
        .collect();
    let codes: BTreeSet<String> = ReasonCode::ALL.iter().map(|c| c.to_string()).collect();
    assert_eq!(documented, codes, "{name}: Skip reason codes");

    let rows = section(&page, name, "Error kinds");
    let documented: BTreeSet<String> = first_cells(&rows).into_iter().collect();
    let kinds: BTreeSet<String> = ErrorKind::ALL.iter().map(|k| k.to_string()).collect();
    assert_eq!(documented, kinds, "{name}: Error kinds");
    // Each kind's row gives the exit status that kind maps to.
    for kind in ErrorKind::ALL {
        let row = format!("| `{kind}` | {} |", kind.exit().code());
        assert!(
            rows.iter().any(|r| r.starts_with(&row)),
            "{name}: the row of {kind} does not start with {row:?}"
        );
    }
}

#[test]
fn every_link_in_the_readme_and_docs_resolves() {
    let readme = read("README.md");
    assert!(
        readme.lines().count() <= 250,
        "README.md is {} lines",
        readme.lines().count()
    );
    let mut pages = vec![PathBuf::from("README.md")];
    let mut docs: Vec<PathBuf> = fs::read_dir(repo("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .map(|path| path.strip_prefix(repo("")).unwrap().to_path_buf())
        .collect();
    docs.sort();
    assert!(docs.len() >= 4, "docs/ holds {docs:?}");
    pages.extend(docs);
    let mut checked = 0;
    for page in &pages {
        let text = read(page.to_str().unwrap());
        let dir = page.parent().unwrap_or(Path::new(""));
        for target in outside_code(&text).flat_map(markdown_links) {
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            let (file, fragment) = match target.split_once('#') {
                Some((file, fragment)) => (file, Some(fragment)),
                None => (target.as_str(), None),
            };
            let linked = if file.is_empty() {
                page.clone()
            } else {
                dir.join(file)
            };
            assert!(
                repo(linked.to_str().unwrap()).exists(),
                "{}: link {target:?}: {} does not exist",
                page.display(),
                linked.display()
            );
            if let Some(fragment) = fragment {
                let linked_text = read(linked.to_str().unwrap());
                assert!(
                    anchors(&linked_text).contains(fragment),
                    "{}: link {target:?}: {} has no heading #{fragment}",
                    page.display(),
                    linked.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} links found");
}

/// The targets of the Markdown links `[text](target)` on one line.
fn markdown_links(line: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        match after.find(')') {
            Some(end) => {
                targets.push(after[..end].to_string());
                rest = &after[end..];
            }
            None => break,
        }
    }
    targets
}

#[test]
fn the_layout_table_is_the_tree_and_every_module_says_its_job() {
    let name = "docs/how-it-works.md";
    let page = read(name);
    let listed: BTreeSet<String> = section(&page, name, "Layout")
        .iter()
        .filter_map(|row| row.strip_prefix("| `src/"))
        .filter_map(|row| row.split('`').next())
        .map(|path| format!("src/{path}"))
        .collect();
    let mut tree = BTreeSet::new();
    let mut dirs = vec![repo("src")];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(repo("")).unwrap().to_str().unwrap();
                let text = read(rel);
                assert!(
                    text.lines().next().is_some_and(|l| l.starts_with("//! ")),
                    "{rel} does not begin with a doc line saying its job"
                );
                tree.insert(rel.to_string());
            }
        }
    }
    assert_eq!(
        listed, tree,
        "{name}'s layout table and the files under src/"
    );
}
