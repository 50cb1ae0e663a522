//! `fleet`: which target serves which image at which LUN, read from every target's ledger
//! under the prefix, so that "who else serves what this worker serves?" has an answer from
//! any node before a worker is drained or rebuilt. Pure: the ledgers and IMS's tagged
//! images in, the view out.

use crate::codes::named_enum;
use crate::ledger::{Entry, Ledger};
use crate::terms::{ImageRef, Kind};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

/// Bumped when a field of the JSON document changes meaning.
pub const SCHEMA_VERSION: u32 = 1;

/// A target's ledger as `fleet` read it.
pub struct ReadLedger {
    pub target: String,
    pub place: String,
    /// The ledger, or why it could not be used.
    pub ledger: Result<Ledger, String>,
}

/// What the view is made from, besides the ledgers.
pub struct Context {
    /// Unix time now.
    pub now: u64,
    /// A ledger unwritten for longer than this is stale (seconds).
    pub stale_after: u64,
    /// `safety.removal_grace` (seconds), to say until when a removal is pending.
    pub removal_grace: u64,
    /// The images IMS tags for projection; `None` when there is no IMS, or it could not
    /// be read.
    pub tagged: Option<Vec<ImageRef>>,
}

#[derive(Debug, Serialize)]
pub struct Fleet {
    pub schema_version: u32,
    /// Unix time of the reading.
    pub now: u64,
    pub targets: Vec<FleetTarget>,
    pub images: Vec<FleetImage>,
    /// Whether every image is served by every readable target at the same LUN, and none
    /// that IMS tags is served by none.
    pub agree: bool,
}

#[derive(Debug, Serialize)]
pub struct FleetTarget {
    pub target: String,
    pub place: String,
    /// The tool version that last wrote the ledger (`null` for a version before the
    /// heartbeat, or an unreadable ledger).
    pub tool_version: Option<String>,
    /// Unix time of the last run that wrote it.
    pub last_run: Option<u64>,
    /// LUNs the ledger says are served.
    pub luns: usize,
    /// Not written for longer than `fleet.stale_after` (a stopped timer, a worker gone).
    pub stale: bool,
    /// Why the ledger could not be used; the rest of the fleet is still shown.
    pub error: Option<String>,
    /// Entries of a kind this version does not know (they are not in the matrix).
    pub unknown_entries: usize,
}

#[derive(Debug, Serialize)]
pub struct FleetImage {
    /// The identity (storage object name); `null` for an image IMS tags that no target
    /// serves (its identity needs its manifest).
    pub identity: Option<String>,
    pub kind: Option<Kind>,
    /// The first image's name, or the object key.
    pub name: String,
    pub image_ids: Vec<String>,
    pub source: Option<String>,
    /// By target IQN: the LUN it serves the image at; absent where it does not.
    pub luns: BTreeMap<Arc<str>, FleetLun>,
    pub marks: Vec<Mark>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FleetLun {
    pub lun: u32,
    /// Unix time until which a removal is pending (the catalogue no longer wants it).
    pub pending_removal_until: Option<u64>,
}

named_enum! {
    /// Why a row of the matrix is marked.
    pub enum Mark {
        /// Some targets serve it and others do not.
        NotEverywhere = "not_everywhere",
        /// Targets serve it at different LUN numbers.
        NumbersDiffer = "numbers_differ",
        /// IMS tags it for projection and no target serves it.
        TaggedNotServed = "tagged_not_served",
    }
}

/// The view of the fleet, from every ledger at once.
pub fn view(ledgers: Vec<ReadLedger>, context: &Context) -> Fleet {
    let mut builder = Builder::new(context);
    for read in ledgers {
        builder.add(read);
    }
    builder.finish()
}

/// The view built one ledger at a time: each is folded in and let go, so that 50 ledgers of
/// 5,000 LUNs are never all held at once.
pub struct Builder<'a> {
    context: &'a Context,
    targets: Vec<FleetTarget>,
    rows: BTreeMap<String, FleetImage>,
    /// Targets whose ledger could be used.
    readable: usize,
}

impl<'a> Builder<'a> {
    pub fn new(context: &'a Context) -> Builder<'a> {
        Builder {
            context,
            targets: Vec::new(),
            rows: BTreeMap::new(),
            readable: 0,
        }
    }

    pub fn add(&mut self, read: ReadLedger) {
        let ledger = match read.ledger {
            Ok(ledger) => ledger,
            Err(error) => {
                self.targets.push(FleetTarget {
                    target: read.target,
                    place: read.place,
                    tool_version: None,
                    last_run: None,
                    luns: 0,
                    stale: false,
                    error: Some(error),
                    unknown_entries: 0,
                });
                return;
            }
        };
        let target: Arc<str> = Arc::from(ledger.target.as_str());
        let mut luns = 0;
        for (name, entry) in ledger.entries.iter().filter(|(_, e)| e.is_live()) {
            luns += 1;
            let row = self
                .rows
                .entry(name.clone())
                .or_insert_with(|| row_of(name, entry));
            row.luns.insert(
                target.clone(),
                FleetLun {
                    lun: entry.lun,
                    pending_removal_until: entry
                        .unwanted_since
                        .map(|since| since.saturating_add(self.context.removal_grace)),
                },
            );
        }
        self.readable += 1;
        self.targets.push(FleetTarget {
            stale: ledger
                .last_run
                .is_none_or(|at| self.context.now.saturating_sub(at) > self.context.stale_after),
            target: ledger.target,
            place: read.place,
            tool_version: ledger.tool_version,
            last_run: ledger.last_run,
            luns,
            error: None,
            unknown_entries: ledger.foreign.len(),
        });
    }

    pub fn finish(self) -> Fleet {
        let Builder {
            context,
            mut targets,
            mut rows,
            readable,
        } = self;
        for row in rows.values_mut() {
            if row.luns.len() < readable {
                row.marks.push(Mark::NotEverywhere);
            }
            let numbers: BTreeSet<u32> = row.luns.values().map(|l| l.lun).collect();
            if numbers.len() > 1 {
                row.marks.push(Mark::NumbersDiffer);
            }
        }
        let served_ids: BTreeSet<&str> = rows
            .values()
            .flat_map(|r| r.image_ids.iter().map(String::as_str))
            .collect();
        let mut unserved: Vec<FleetImage> = context
            .tagged
            .iter()
            .flatten()
            .filter(|image| {
                image
                    .id
                    .as_deref()
                    .is_some_and(|id| !served_ids.contains(id))
            })
            .map(|image| FleetImage {
                identity: None,
                kind: Some(Kind::Rootfs),
                name: image.name.clone().unwrap_or_default(),
                image_ids: image.id.iter().cloned().collect(),
                source: None,
                luns: BTreeMap::new(),
                marks: vec![Mark::TaggedNotServed],
            })
            .collect();
        targets.sort_by(|a, b| a.target.cmp(&b.target));
        let mut images: Vec<FleetImage> = rows.into_values().collect();
        images.sort_by(|a, b| (&a.name, &a.identity).cmp(&(&b.name, &b.identity)));
        images.append(&mut unserved);
        let agree = images.iter().all(|i| i.marks.is_empty());
        Fleet {
            schema_version: SCHEMA_VERSION,
            now: context.now,
            targets,
            images,
            agree,
        }
    }
}

fn row_of(name: &str, entry: &Entry) -> FleetImage {
    let known: Vec<&ImageRef> = entry.images.iter().filter(|i| i.is_known()).collect();
    FleetImage {
        identity: Some(name.to_string()),
        kind: Some(entry.kind),
        name: known
            .iter()
            .find_map(|i| i.name.clone())
            .unwrap_or_else(|| key_of(&entry.source).to_string()),
        image_ids: known.iter().filter_map(|i| i.id.clone()).collect(),
        source: Some(entry.source.clone()),
        luns: BTreeMap::new(),
        marks: Vec::new(),
    }
}

/// The object key of an `s3://bucket/key` source.
fn key_of(source: &str) -> &str {
    source
        .strip_prefix("s3://")
        .and_then(|rest| rest.split_once('/'))
        .map_or(source, |(_, key)| key)
}

impl Fleet {
    /// Whether any ledger could not be read.
    pub fn incomplete(&self) -> bool {
        self.targets.iter().any(|t| t.error.is_some())
    }

    /// The text an operator reads: the targets, then the matrix (one column per target).
    pub fn to_text(&self) -> String {
        use crate::describe::{local_time, printable};
        let mut out = String::new();
        let _ = writeln!(out, "Targets ({}):", self.targets.len());
        for (i, t) in self.targets.iter().enumerate() {
            let _ = write!(out, "  [{}] {}", i + 1, printable(&t.target));
            match &t.error {
                Some(error) => {
                    let _ = writeln!(
                        out,
                        ": UNREADABLE ledger {}: {}",
                        printable(&t.place),
                        printable(error)
                    );
                }
                None => {
                    let _ = write!(
                        out,
                        ": {} LUN(s), last run {}, by version {}",
                        t.luns,
                        t.last_run.map_or_else(|| "unknown".to_string(), local_time),
                        t.tool_version.as_deref().unwrap_or("unknown")
                    );
                    if t.stale {
                        let _ = write!(out, "; STALE: no run recorded within fleet.stale_after");
                    }
                    if t.unknown_entries > 0 {
                        let _ = write!(
                            out,
                            "; {} entries of a kind this version does not know",
                            t.unknown_entries
                        );
                    }
                    out.push('\n');
                }
            }
        }
        let columns: Vec<&str> = self
            .targets
            .iter()
            .filter(|t| t.error.is_none())
            .map(|t| t.target.as_str())
            .collect();
        let _ = write!(out, "\n  {:<40} {:<7} {:<16}", "IMAGE", "KIND", "IDENTITY");
        for (i, t) in self.targets.iter().enumerate() {
            if t.error.is_none() {
                let _ = write!(out, " {:>6}", format!("[{}]", i + 1));
            }
        }
        out.push('\n');
        for image in &self.images {
            let mark = if image.marks.contains(&Mark::NumbersDiffer) {
                '!'
            } else if image.marks.contains(&Mark::NotEverywhere) {
                '~'
            } else if image.marks.contains(&Mark::TaggedNotServed) {
                '?'
            } else {
                ' '
            };
            let _ = write!(
                out,
                "{mark} {:<40} {:<7} {:<16}",
                shorten(&printable(&image.name), 40),
                image.kind.map_or("-", |k| k.as_str()),
                image.identity.as_deref().unwrap_or("-")
            );
            for target in &columns {
                let cell = match image.luns.get(*target) {
                    Some(FleetLun {
                        lun,
                        pending_removal_until: Some(_),
                    }) => format!("{lun}*"),
                    Some(FleetLun { lun, .. }) => lun.to_string(),
                    None => "-".to_string(),
                };
                let _ = write!(out, " {cell:>6}");
            }
            out.push('\n');
        }
        let count = |mark| {
            self.images
                .iter()
                .filter(|i| i.marks.contains(&mark))
                .count()
        };
        let _ = writeln!(
            out,
            "\n{} image(s): {} at different LUN numbers (!), {} not on every target (~), {} \
             tagged in IMS and served by none (?).",
            self.images.len(),
            count(Mark::NumbersDiffer),
            count(Mark::NotEverywhere),
            count(Mark::TaggedNotServed)
        );
        let pending: Vec<String> = self
            .images
            .iter()
            .flat_map(|image| {
                image.luns.iter().filter_map(move |(target, l)| {
                    let until = l.pending_removal_until?;
                    Some(format!(
                        "  * {} on {}: LUN {}, pending removal until {}",
                        printable(&image.name),
                        printable(target),
                        l.lun,
                        local_time(until)
                    ))
                })
            })
            .collect();
        if !pending.is_empty() {
            let _ = writeln!(out, "Pending removal (*):");
            for line in pending {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }
}

/// At most `width` characters: the start and the end.
fn shorten(text: &str, width: usize) -> String {
    let count = text.chars().count();
    if count <= width {
        return text.to_string();
    }
    let head: String = text.chars().take(width - 11).collect();
    let tail: String = text.chars().skip(count - 10).collect();
    format!("{head}…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(lun: u32, id: &str) -> Arc<Entry> {
        Arc::new(Entry {
            lun,
            kind: Kind::Rootfs,
            source: format!("s3://b/{id}/rootfs"),
            etag: Some("e".into()),
            images: vec![ImageRef {
                id: Some(id.into()),
                name: Some(format!("name-{id}")),
            }],
            first_projected: 1,
            unwanted_since: None,
            removed: None,
            extra: Default::default(),
        })
    }

    fn ledger(target: &str, luns: &[(&str, u32)], last_run: Option<u64>) -> ReadLedger {
        let mut ledger = Ledger::empty(target);
        ledger.last_run = last_run;
        for (id, lun) in luns {
            ledger.entries.insert(format!("so-{id}"), entry(*lun, id));
        }
        ReadLedger {
            target: target.into(),
            place: format!("s3://b/l/{target}.json"),
            ledger: Ok(ledger),
        }
    }

    fn context(tagged: &[&str]) -> Context {
        Context {
            now: 10_000,
            stale_after: 600,
            removal_grace: 0,
            tagged: Some(
                tagged
                    .iter()
                    .map(|id| ImageRef {
                        id: Some((*id).into()),
                        name: Some(format!("name-{id}")),
                    })
                    .collect(),
            ),
        }
    }

    #[test]
    fn agreement_differences_and_stale_targets() {
        let fleet = view(
            vec![
                ledger("t1", &[("a", 0), ("b", 1)], Some(9_900)),
                ledger("t2", &[("a", 0), ("b", 2)], Some(9_000)),
                ledger("t3", &[("a", 0)], None),
                ReadLedger {
                    target: "t4".into(),
                    place: "s3://b/l/t4.json".into(),
                    ledger: Err("it is not a ledger".into()),
                },
            ],
            &context(&["a", "b", "c"]),
        );
        let marks = |name: &str| -> Vec<Mark> {
            fleet
                .images
                .iter()
                .find(|i| i.name == name)
                .unwrap()
                .marks
                .clone()
        };
        assert_eq!(marks("name-a"), []);
        assert_eq!(marks("name-b"), [Mark::NotEverywhere, Mark::NumbersDiffer]);
        assert_eq!(marks("name-c"), [Mark::TaggedNotServed]);
        assert!(!fleet.agree);
        assert!(fleet.incomplete());
        let stale: Vec<(&str, bool)> = fleet
            .targets
            .iter()
            .map(|t| (t.target.as_str(), t.stale))
            .collect();
        assert_eq!(
            stale,
            [("t1", false), ("t2", true), ("t3", true), ("t4", false)]
        );
        let text = fleet.to_text();
        assert!(
            text.contains("UNREADABLE ledger s3://b/l/t4.json: it is not a ledger"),
            "{text}"
        );
        assert!(text.contains("STALE"), "{text}");

        let agreeing = view(
            vec![
                ledger("t1", &[("a", 0)], Some(9_900)),
                ledger("t2", &[("a", 0)], Some(9_900)),
            ],
            &context(&["a"]),
        );
        assert!(agreeing.agree && !agreeing.incomplete());
    }
}
