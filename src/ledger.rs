//! The LUN ledger: which index each identity has on a target, kept off the node (in the
//! bucket every worker reads, or a local file offline), so that LUN N means the same image
//! across runs, rebuilds and workers. A worker rebuilt without its `saveconfig.json` gets
//! the same numbers back; an index freed in one run is not handed to a new image in the
//! next; a new image takes the number the rest of the fleet gives it.
//!
//! Pure: read and written by [`crate::sources::ledger_store`]; the planner takes it as an
//! input and [`Ledger::after`] gives the ledger a plan leaves.

use crate::plan::{Action, ImageRef, Kind, Plan};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Bumped when a field changes meaning.
pub const SCHEMA_VERSION: u32 = 1;

/// One target's ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ledger {
    pub schema_version: u32,
    /// The target's IQN.
    pub target: String,
    /// The highest LUN index ever handed out on this target.
    #[serde(default)]
    pub high_water: Option<u32>,
    /// By identity (storage object name). Entries are shared between copies until one is
    /// changed: the planner works on a copy, and at 5,500 entries a deep one was 3 MB.
    #[serde(default)]
    pub entries: BTreeMap<String, Arc<Entry>>,
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

/// Why a ledger cannot be used. Never a reason to number afresh: the run stops.
#[derive(Debug, thiserror::Error)]
pub enum LedgerProblem {
    #[error("it is not a ledger: {0}")]
    NotALedger(#[source] serde_json::Error),
    #[error("its schema_version is {found}, this tool reads {SCHEMA_VERSION}")]
    Version { found: u32 },
    #[error("it is the ledger of {found}, not of {expected}")]
    OtherTarget { found: String, expected: String },
    #[error("identities {first} and {second} both hold LUN {lun}")]
    SharedIndex {
        lun: u32,
        first: String,
        second: String,
    },
}

impl Ledger {
    pub fn empty(target: &str) -> Ledger {
        Ledger {
            schema_version: SCHEMA_VERSION,
            target: target.to_string(),
            high_water: None,
            entries: BTreeMap::new(),
        }
    }

    /// Parses and checks a ledger of `target`.
    pub fn parse(bytes: &[u8], target: &str) -> Result<Ledger, LedgerProblem> {
        let ledger: Ledger = serde_json::from_slice(bytes).map_err(LedgerProblem::NotALedger)?;
        if ledger.schema_version != SCHEMA_VERSION {
            return Err(LedgerProblem::Version {
                found: ledger.schema_version,
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
                    };
                    self.entries.insert(lun.name.clone(), Arc::new(entry));
                }
            }
            self.raise_high_water(lun.lun);
        }
        self
    }

    fn raise_high_water(&mut self, lun: u32) {
        self.high_water = Some(self.high_water.map_or(lun, |h| h.max(lun)));
    }

    /// Indices another identity holds, or held: not to be handed to a new identity while a
    /// never-used one is left.
    pub fn claimed(&self) -> BTreeSet<u32> {
        self.entries.values().map(|e| e.lun).collect()
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

    /// The ledger a plan leaves at `now`: every projection placed, kept, pending or removed.
    pub fn after(self, plan: &Plan, now: u64) -> Ledger {
        let mut next = self;
        for p in plan.projections.iter() {
            let Some(lun) = p.lun else { continue };
            let previous = next.entries.get(&p.name).cloned();
            let first_projected = previous
                .as_ref()
                .filter(|e| e.lun == lun)
                .map_or(now, |e| e.first_projected);
            let images = if p.images.iter().any(ImageRef::is_known) {
                p.images.clone()
            } else {
                previous
                    .as_ref()
                    .map(|e| e.images.clone())
                    .unwrap_or_default()
            };
            let entry = Entry {
                lun,
                kind: p.kind,
                source: p.source.clone(),
                etag: p
                    .etag
                    .clone()
                    .or_else(|| previous.as_ref().and_then(|e| e.etag.clone())),
                images,
                first_projected,
                unwanted_since: match (p.action, &p.removal_pending_until) {
                    (Action::Remove, _) | (_, Some(_)) => Some(
                        previous
                            .as_ref()
                            .and_then(|e| e.unwanted_since)
                            .unwrap_or(now),
                    ),
                    _ => None,
                },
                removed: (p.action == Action::Remove).then_some(now),
            };
            // An entry as it was stays shared.
            if previous.as_deref() != Some(&entry) {
                next.entries.insert(p.name.clone(), Arc::new(entry));
            }
            next.raise_high_water(lun);
        }
        // An identity the plan does not serve is not served once it is applied.
        let served: BTreeSet<&str> = plan
            .projections
            .iter()
            .filter(|p| p.lun.is_some() && p.action != Action::Remove)
            .map(|p| p.name.as_str())
            .collect();
        for (name, entry) in next.entries.iter_mut() {
            if entry.is_live() && !served.contains(name.as_str()) {
                let entry = Arc::make_mut(entry);
                entry.removed = Some(now);
                entry.unwanted_since.get_or_insert(now);
            }
        }
        next.prune();
        next
    }

    /// Drops removed entries whose index another entry has taken since, or was freed later
    /// by another identity: they claim nothing the newer entry does not. Bounds the ledger
    /// by the number of indices.
    fn prune(&mut self) {
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
            Ledger::parse(br#"{"schema_version": 9, "target": "iqn.x:a"}"#, "iqn.x:a"),
            Err(LedgerProblem::Version { found: 9 })
        ));
        assert!(Ledger::parse(b"[]", "iqn.x:a").is_err());
        // A removed entry may share the index it once had with the identity that has it now.
        Arc::make_mut(ledger.entries.get_mut("n1").unwrap()).removed = Some(5);
        assert!(Ledger::parse(&ledger.to_json(), "IQN.X:A").is_ok());
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
