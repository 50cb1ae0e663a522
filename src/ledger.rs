//! The LUN ledger: which index each identity has on a target, kept off the node (in the
//! bucket every worker reads, or a local file offline), so that LUN N means the same image
//! across runs, rebuilds and workers. A worker rebuilt without its `saveconfig.json` gets
//! the same numbers back; an index freed in one run is not handed to a new image in the
//! next; a new image takes the number the rest of the fleet gives it.
//!
//! Pure: read and written by [`crate::sources::ledger_store`]; the planner takes it as an
//! input and [`crate::plan::ledger_after()`] gives the ledger a plan leaves.

pub use crate::error::LedgerProblem;
use crate::terms::{ImageRef, Kind};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The ledger's major version: bumped when a field changes meaning. A ledger of a newer
/// major is used read-only (its numbers honoured where this version understands them, the
/// file never rewritten); fields and entry kinds a newer minor adds are kept as they are.
pub const SCHEMA_VERSION: u32 = 1;

/// One target's ledger. Written by every version of the tool in a fleet that upgrades one
/// worker at a time: what this version does not understand (fields, entries of a kind it
/// does not know) is kept, and written back untouched when it rewrites its own ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    pub schema_version: u32,
    /// The target's IQN.
    pub target: String,
    /// The highest LUN index ever handed out on this target.
    pub high_water: Option<u32>,
    /// The version of the tool that last wrote it.
    pub tool_version: Option<String>,
    /// Unix time of the last run that wrote it (a run writes it when it changed, and at
    /// least every `verify_interval` as a heartbeat: a worker whose timer stopped shows).
    pub last_run: Option<u64>,
    /// By identity (storage object name). Entries are shared between copies until one is
    /// changed: the planner works on a copy, and at 5,500 entries a deep one was 3 MB.
    pub entries: BTreeMap<String, Arc<Entry>>,
    /// Entries this version does not understand (a kind a newer version added), as read:
    /// their index is never handed to another identity here, and they take no part in the
    /// fleet's numbering.
    pub foreign: BTreeMap<String, Value>,
    /// Top-level fields this version does not know, as read.
    pub extra: Map<String, Value>,
}

/// What the ledger knows of one identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub lun: u32,
    pub kind: Kind,
    /// `s3://<bucket>/<key>` of the image file.
    pub source: String,
    #[serde(default)]
    pub etag: Option<String>,
    #[serde(default)]
    pub images: Vec<ImageRef>,
    /// Unix time it was first projected (or first seen, for an adopted configuration).
    pub first_projected: u64,
    /// Unix time the catalogue first stopped wanting it (cleared when it is wanted again).
    #[serde(default)]
    pub unwanted_since: Option<u64>,
    /// Unix time its LUN was removed.
    #[serde(default)]
    pub removed: Option<u64>,
    /// Fields this version does not know, as read (written back with the entry).
    #[serde(skip)]
    pub extra: Map<String, Value>,
}

/// The fields of [`Entry`] as written, to tell a newer version's additions from them.
const ENTRY_FIELDS: [&str; 8] = [
    "lun",
    "kind",
    "source",
    "etag",
    "images",
    "first_projected",
    "unwanted_since",
    "removed",
];

/// The ledger as written: the known fields, the entries (known and foreign, by name), then
/// the fields this version does not know.
impl Serialize for Ledger {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("schema_version", &self.schema_version)?;
        map.serialize_entry("target", &self.target)?;
        map.serialize_entry("high_water", &self.high_water)?;
        if let Some(version) = &self.tool_version {
            map.serialize_entry("tool_version", version)?;
        }
        if let Some(at) = self.last_run {
            map.serialize_entry("last_run", &at)?;
        }
        map.serialize_entry("entries", &AllEntries(self))?;
        for (key, value) in &self.extra {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// Known and foreign entries, in name order.
struct AllEntries<'a>(&'a Ledger);

impl Serialize for AllEntries<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let ledger = self.0;
        let mut map =
            serializer.serialize_map(Some(ledger.entries.len() + ledger.foreign.len()))?;
        let mut known = ledger.entries.iter().peekable();
        let mut foreign = ledger.foreign.iter().peekable();
        loop {
            // Both maps are sorted by name: take the smaller head.
            let foreign_first = match (known.peek(), foreign.peek()) {
                (Some((k, _)), Some((f, _))) => f < k,
                (None, Some(_)) => true,
                (_, None) => false,
            };
            if foreign_first {
                if let Some((name, value)) = foreign.next() {
                    map.serialize_entry(name, value)?;
                }
            } else if let Some((name, entry)) = known.next() {
                if entry.extra.is_empty() {
                    map.serialize_entry(name, entry.as_ref())?;
                } else {
                    // A newer version's fields, written back beside this version's.
                    let mut value =
                        serde_json::to_value(entry.as_ref()).map_err(serde::ser::Error::custom)?;
                    if let Value::Object(fields) = &mut value {
                        fields.extend(entry.extra.clone());
                    }
                    map.serialize_entry(name, &value)?;
                }
            } else {
                break;
            }
        }
        map.end()
    }
}

/// A ledger this version wrote, or one just like it: read in one pass (the common case, and
/// at 5,500 entries the cheap one).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KnownLedger {
    schema_version: u32,
    target: String,
    #[serde(default)]
    high_water: Option<u32>,
    #[serde(default)]
    tool_version: Option<String>,
    #[serde(default)]
    last_run: Option<u64>,
    #[serde(default)]
    entries: BTreeMap<String, Arc<Entry>>,
}

/// Any other ledger, before its entries are sorted into known and foreign.
#[derive(Deserialize)]
struct RawLedger {
    schema_version: u32,
    target: String,
    #[serde(default)]
    high_water: Option<u32>,
    #[serde(default)]
    tool_version: Option<String>,
    #[serde(default)]
    last_run: Option<u64>,
    #[serde(default)]
    entries: BTreeMap<String, Box<serde_json::value::RawValue>>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

impl Ledger {
    /// Reads a ledger: in one pass when it holds only what this version knows, else entry by
    /// entry, keeping what it does not know.
    fn from_bytes(bytes: &[u8]) -> Result<Ledger, serde_json::Error> {
        if let Ok(known) = serde_json::from_slice::<KnownLedger>(bytes) {
            return Ok(Ledger {
                schema_version: known.schema_version,
                target: known.target,
                high_water: known.high_water,
                tool_version: known.tool_version,
                last_run: known.last_run,
                entries: known.entries,
                ..Ledger::default()
            });
        }
        let raw: RawLedger = serde_json::from_slice(bytes)?;
        let mut entries = BTreeMap::new();
        let mut foreign = BTreeMap::new();
        for (name, text) in raw.entries {
            if let Ok(entry) = serde_json::from_str::<Entry>(text.get()) {
                entries.insert(name, Arc::new(entry));
                continue;
            }
            // A newer version's fields beside this version's, or a kind it does not know.
            let value: Value = serde_json::from_str(text.get())?;
            let Value::Object(mut fields) = value else {
                foreign.insert(name, value);
                continue;
            };
            let extra: Map<String, Value> = fields
                .iter()
                .filter(|(key, _)| !ENTRY_FIELDS.contains(&key.as_str()))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
            fields.retain(|key, _| ENTRY_FIELDS.contains(&key.as_str()));
            match serde_json::from_value::<Entry>(Value::Object(fields.clone())) {
                Ok(mut entry) => {
                    entry.extra = extra;
                    entries.insert(name, Arc::new(entry));
                }
                Err(_) => {
                    fields.extend(extra);
                    foreign.insert(name, Value::Object(fields));
                }
            }
        }
        Ok(Ledger {
            schema_version: raw.schema_version,
            target: raw.target,
            high_water: raw.high_water,
            tool_version: raw.tool_version,
            last_run: raw.last_run,
            entries,
            foreign,
            extra: raw.extra,
        })
    }
}

impl Entry {
    /// Whether the identity is served now (its LUN exists).
    pub fn is_live(&self) -> bool {
        self.removed.is_none()
    }
}

/// A managed LUN in place now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The storage object's name (the identity).
    pub name: String,
    pub lun: u32,
    pub kind: Kind,
    pub source: String,
}

impl Ledger {
    pub fn empty(target: &str) -> Ledger {
        Ledger {
            schema_version: SCHEMA_VERSION,
            target: target.to_string(),
            ..Ledger::default()
        }
    }

    /// Why this version must not rewrite the ledger, if it must not: a newer major version
    /// may mean what this one cannot see.
    pub fn read_only(&self) -> Option<String> {
        (self.schema_version > SCHEMA_VERSION).then(|| {
            format!(
                "its schema_version {} is newer than this tool's {SCHEMA_VERSION}: used \
                 read-only (its numbers are honoured, it is not rewritten) until this worker \
                 runs the newer version",
                self.schema_version
            )
        })
    }

    /// Whether a run should write the ledger even though it holds the same numbers: its last
    /// write is `every` or longer ago (or unknown), so that the fleet sees this target alive.
    pub fn heartbeat_due(&self, now: u64, every: u64) -> bool {
        self.last_run
            .is_none_or(|at| now.saturating_sub(at) >= every)
    }

    /// The ledger as this run writes it: with this tool's version and the run's time.
    pub fn stamped(mut self, now: u64) -> Ledger {
        self.tool_version = Some(env!("CARGO_PKG_VERSION").to_string());
        self.last_run = Some(now);
        self
    }

    /// The indices of entries this version does not understand, where they name one.
    fn foreign_luns(&self) -> impl Iterator<Item = u32> + '_ {
        self.foreign.values().filter_map(|v| {
            v.get("lun")
                .and_then(Value::as_u64)
                .and_then(|l| u32::try_from(l).ok())
        })
    }

    /// Parses and checks a ledger of `target`. A newer major version is read as far as this
    /// version understands it: see [`Ledger::read_only`].
    pub fn parse(bytes: &[u8], target: &str) -> Result<Ledger, LedgerProblem> {
        let ledger = Ledger::from_bytes(bytes).map_err(LedgerProblem::NotALedger)?;
        if ledger.schema_version == 0 {
            return Err(LedgerProblem::Version {
                found: ledger.schema_version,
                reads: SCHEMA_VERSION,
            });
        }
        if !ledger.target.eq_ignore_ascii_case(target) {
            return Err(LedgerProblem::OtherTarget {
                found: ledger.target,
                expected: target.to_string(),
            });
        }
        let mut holders: BTreeMap<u32, &String> = BTreeMap::new();
        for (name, entry) in ledger.entries.iter().filter(|(_, e)| e.is_live()) {
            if let Some(first) = holders.insert(entry.lun, name) {
                return Err(LedgerProblem::SharedIndex {
                    lun: entry.lun,
                    first: first.clone(),
                    second: name.clone(),
                });
            }
        }
        Ok(ledger)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// The ledger brought in line with what is served now: a first run, a migration from a
    /// configuration made without a ledger, a write that lost a race, or a LUN changed by
    /// hand. What initiators hold wins, so each served LUN is taken as it is, and an entry
    /// that claims the same index for another identity is marked removed.
    pub fn reconciled(mut self, served: &[Served], now: u64) -> Ledger {
        let mut live_at: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for (name, entry) in self.entries.iter().filter(|(_, e)| e.is_live()) {
            live_at.entry(entry.lun).or_default().push(name.clone());
        }
        for lun in served {
            for name in live_at.get(&lun.lun).into_iter().flatten() {
                let Some(entry) = self.entries.get_mut(name) else {
                    continue;
                };
                if *name != lun.name && entry.lun == lun.lun {
                    let entry = Arc::make_mut(entry);
                    entry.removed = Some(now);
                    entry.unwanted_since.get_or_insert(now);
                }
            }
            match self.entries.get_mut(&lun.name) {
                Some(entry) if entry.lun == lun.lun => {
                    if entry.removed.is_some() {
                        Arc::make_mut(entry).removed = None;
                    }
                }
                _ => {
                    let previous = self.entries.get(&lun.name);
                    let entry = Entry {
                        lun: lun.lun,
                        kind: lun.kind,
                        source: lun.source.clone(),
                        etag: previous.and_then(|e| e.etag.clone()),
                        images: previous.map(|e| e.images.clone()).unwrap_or_default(),
                        first_projected: now,
                        unwanted_since: None,
                        removed: None,
                        extra: previous.map(|e| e.extra.clone()).unwrap_or_default(),
                    };
                    self.entries.insert(lun.name.clone(), Arc::new(entry));
                }
            }
            self.raise_high_water(lun.lun);
        }
        self
    }

    pub(crate) fn raise_high_water(&mut self, lun: u32) {
        self.high_water = Some(self.high_water.map_or(lun, |h| h.max(lun)));
    }

    /// Indices another identity holds, or held: not to be handed to a new identity while a
    /// never-used one is left.
    pub fn claimed(&self) -> BTreeSet<u32> {
        self.entries
            .values()
            .map(|e| e.lun)
            .chain(self.foreign_luns())
            .collect()
    }

    /// When each index was last freed (Unix time), for the indices this ledger freed.
    pub fn freed_at(&self) -> BTreeMap<u32, u64> {
        let live: BTreeSet<u32> = self
            .entries
            .values()
            .filter(|e| e.is_live())
            .map(|e| e.lun)
            .collect();
        let mut freed: BTreeMap<u32, u64> = BTreeMap::new();
        for entry in self.entries.values() {
            if let Some(at) = entry.removed.filter(|_| !live.contains(&entry.lun)) {
                let slot = freed.entry(entry.lun).or_insert(at);
                *slot = (*slot).max(at);
            }
        }
        freed
    }

    /// Drops removed entries whose index another entry has taken since, or was freed later
    /// by another identity: they claim nothing the newer entry does not. Bounds the ledger
    /// by the number of indices.
    pub(crate) fn prune(&mut self) {
        let mut newest: BTreeMap<u32, (bool, u64, &str)> = BTreeMap::new();
        for (name, entry) in &self.entries {
            // Live entries rank above every removed one.
            let rank = (entry.is_live(), entry.removed.unwrap_or(0), name.as_str());
            let slot = newest.entry(entry.lun).or_insert(rank);
            if rank > *slot {
                *slot = rank;
            }
        }
        let keep: BTreeSet<String> = newest.values().map(|(_, _, n)| n.to_string()).collect();
        self.entries.retain(|name, _| keep.contains(name));
    }
}

/// The index the rest of the fleet gives each identity: the one most targets use (the
/// lowest on a tie).
pub fn fleet_numbers(others: &[Ledger]) -> BTreeMap<String, u32> {
    let mut votes: BTreeMap<&str, BTreeMap<u32, usize>> = BTreeMap::new();
    for ledger in others {
        for (name, entry) in ledger.entries.iter().filter(|(_, e)| e.is_live()) {
            *votes.entry(name).or_default().entry(entry.lun).or_default() += 1;
        }
    }
    votes
        .into_iter()
        .filter_map(|(name, counts)| {
            let best = counts
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))?;
            Some((name.to_string(), *best.0))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(lun: u32, removed: Option<u64>) -> Arc<Entry> {
        Arc::new(Entry {
            lun,
            kind: Kind::Pe,
            source: "s3://b/PE/x".into(),
            etag: None,
            images: Vec::new(),
            first_projected: 1,
            unwanted_since: removed,
            removed,
            extra: Map::new(),
        })
    }

    #[test]
    fn a_ledger_that_cannot_be_trusted_is_refused() {
        let mut ledger = Ledger::empty("iqn.x:a");
        ledger.entries.insert("n1".into(), entry(3, None));
        ledger.entries.insert("n2".into(), entry(3, None));
        let bytes = ledger.to_json();
        assert!(matches!(
            Ledger::parse(&bytes, "iqn.x:a"),
            Err(LedgerProblem::SharedIndex { lun: 3, .. })
        ));
        assert!(matches!(
            Ledger::parse(&Ledger::empty("iqn.x:b").to_json(), "iqn.x:a"),
            Err(LedgerProblem::OtherTarget { .. })
        ));
        assert!(matches!(
            Ledger::parse(br#"{"schema_version": 0, "target": "iqn.x:a"}"#, "iqn.x:a"),
            Err(LedgerProblem::Version { found: 0, .. })
        ));
        // A newer major version is read, and not to be rewritten.
        let newer = Ledger::parse(br#"{"schema_version": 9, "target": "iqn.x:a"}"#, "iqn.x:a");
        assert!(newer.is_ok_and(|l| l.read_only().is_some()));
        assert!(Ledger::parse(b"[]", "iqn.x:a").is_err());
        // A removed entry may share the index it once had with the identity that has it now.
        Arc::make_mut(ledger.entries.get_mut("n1").unwrap()).removed = Some(5);
        assert!(Ledger::parse(&ledger.to_json(), "IQN.X:A").is_ok());
    }

    /// A ledger "written by a newer version": a new top-level field, a new field on an
    /// entry, an entry of a kind this version does not know.
    const NEWER: &str = r#"{
  "schema_version": 1,
  "target": "iqn.x:a",
  "high_water": 7,
  "entries": {
    "aaa": {
      "lun": 1,
      "kind": "pe",
      "source": "s3://b/PE/a",
      "first_projected": 5,
      "checksum": "sha256:00ff"
    },
    "bbb": {
      "first_projected": 6,
      "kind": "volume",
      "lun": 7,
      "pool": {
        "name": "fast",
        "tier": 2
      },
      "source": "s3://b/vol/x"
    }
  },
  "schema_minor": 4,
  "written_by": {
    "tool": "sbps-reconcile",
    "version": "9.9.9"
  }
}
"#;

    #[test]
    fn what_a_newer_version_wrote_is_kept_and_numbered_around() {
        let ledger = Ledger::parse(NEWER.as_bytes(), "iqn.x:a").unwrap();
        assert!(
            ledger.read_only().is_none(),
            "a newer minor is read and written"
        );
        assert_eq!(ledger.entries.len(), 1);
        assert_eq!(ledger.entries["aaa"].extra["checksum"], "sha256:00ff");
        assert_eq!(ledger.foreign["bbb"]["kind"], "volume");
        // The unknown entry's index is never handed to another identity here...
        assert!(ledger.claimed().contains(&7));
        // ...and takes no part in the fleet's numbering.
        let numbers = fleet_numbers(std::slice::from_ref(&ledger));
        assert_eq!(numbers.get("aaa"), Some(&1));
        assert_eq!(numbers.get("bbb"), None);
        // Written back, every part it did not understand is there as it was: the foreign
        // entry byte for byte, the unknown fields with their values.
        let written = String::from_utf8(ledger.to_json()).unwrap();
        let foreign_text = &NEWER
            [NEWER.find("    \"bbb\"").unwrap()..NEWER.find("\n  },\n  \"schema_minor\"").unwrap()];
        assert!(written.contains(foreign_text), "{written}");
        let before: Value = serde_json::from_str(NEWER).unwrap();
        let after: Value = serde_json::from_str(&written).unwrap();
        for field in ["schema_minor", "written_by", "high_water", "target"] {
            assert_eq!(after[field], before[field], "{field}");
        }
        assert_eq!(after["entries"]["bbb"], before["entries"]["bbb"]);
        assert_eq!(after["entries"]["aaa"]["checksum"], "sha256:00ff");
        // A change of this version's own entries leaves them all in place.
        let mut changed = ledger.clone();
        changed.entries.insert("ccc".into(), entry(8, None));
        let after: Value = serde_json::from_slice(&changed.to_json()).unwrap();
        assert_eq!(after["entries"]["bbb"], before["entries"]["bbb"]);
        assert_eq!(after["written_by"], before["written_by"]);
        assert_eq!(after["schema_minor"], before["schema_minor"]);
        assert_eq!(after["entries"]["aaa"]["checksum"], "sha256:00ff");
    }

    #[test]
    fn the_heartbeat_is_due_once_the_last_write_is_old_enough() {
        let ledger = Ledger::empty("iqn.x:a");
        assert!(
            ledger.heartbeat_due(1000, 3600),
            "never written by a version that stamps"
        );
        let stamped = ledger.stamped(1000);
        assert_eq!(
            stamped.tool_version.as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert!(!stamped.heartbeat_due(1000 + 3599, 3600));
        assert!(stamped.heartbeat_due(1000 + 3600, 3600));
        // A clock that went back is not a reason to write.
        assert!(!stamped.heartbeat_due(10, 3600));
        // Round trip.
        let again = Ledger::parse(&stamped.to_json(), "iqn.x:a").unwrap();
        assert_eq!(again, stamped);
    }

    #[test]
    fn freed_indices_remember_when() {
        let mut ledger = Ledger::empty("iqn.x:a");
        ledger.entries.insert("old".into(), entry(1, Some(100)));
        ledger.entries.insert("older".into(), entry(2, Some(50)));
        ledger.entries.insert("back".into(), entry(3, Some(10)));
        ledger.entries.insert("live".into(), entry(3, None));
        assert_eq!(ledger.freed_at(), [(1, 100), (2, 50)].into());
        assert_eq!(ledger.claimed(), [1, 2, 3].into());
    }

    #[test]
    fn the_fleet_number_is_the_most_used() {
        let ledger = |lun| {
            let mut l = Ledger::empty("iqn.x:w");
            l.entries.insert("img".into(), entry(lun, None));
            l
        };
        assert_eq!(
            fleet_numbers(&[ledger(4), ledger(7), ledger(4)]).get("img"),
            Some(&4)
        );
        assert_eq!(fleet_numbers(&[ledger(7), ledger(4)]).get("img"), Some(&4));
        assert!(fleet_numbers(&[]).is_empty());
    }
}
