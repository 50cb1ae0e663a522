//! `status`: what is projected now, LUN by LUN, with the image each LUN serves where the
//! catalogue can tell: what the kernel runs (configfs) where LIO is loaded, else what
//! `saveconfig.json` holds, and where the two differ. Reads only.

use crate::backoff::FailureRecord;
use crate::lio::managed::{portals, ManagedObject, ManagedView};
use crate::lio::running::RunningState;
use crate::lio::{fileio_name, lun_index, luns as luns_of_tpg, path_of, SaveConfig};
use crate::plan::{Action, ImageRef, Kind, Plan, Projection};
use crate::policy::{Policy, Portal};
use crate::sources::ledger_store::LedgerRead;
use serde::Serialize;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

#[derive(Debug, Serialize)]
pub struct Status {
    pub schema_version: u32,
    pub target: String,
    /// Whether the policy's target has a TPG 1 in the configuration.
    pub present: bool,
    pub enabled: Option<bool>,
    pub portals: Vec<String>,
    pub luns: Vec<StatusLun>,
    /// Storage objects the tool manages that no LUN of TPG 1 maps.
    pub unmapped: Vec<String>,
    /// Why the catalogue could not be read (then no image is named).
    pub catalogue_error: Option<String>,
    /// `running` (read from configfs) or `file` (saveconfig.json: LIO is not loaded here).
    pub source: &'static str,
    /// How saveconfig.json differs from the running target, one line each (the next run
    /// repairs it).
    pub file_differs: Vec<String>,
    /// The plan that keeps failing, when runs are backing off from it.
    pub last_failure: Option<FailureRecord>,
    /// The target's LUN ledger, when the policy keeps one and it could be read.
    pub ledger: Option<StatusLedger>,
}

/// The ledger's view of the LUNs, and where they differ from the rest of the fleet.
#[derive(Debug, Serialize)]
pub struct StatusLedger {
    pub place: String,
    pub found: bool,
    /// How many other targets' ledgers were read.
    pub fleet_targets: usize,
    /// Managed LUNs whose image another target serves under a different number.
    pub fleet_differs: Vec<FleetDifference>,
    /// Why the ledger's conditional write may not hold (a versioned bucket), if it may not.
    pub caveat: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct FleetDifference {
    pub index: u32,
    pub storage_object: String,
    /// The number most other targets give it.
    pub fleet_index: u32,
}

#[derive(Debug, Serialize)]
pub struct StatusLun {
    pub index: u32,
    pub storage_object: String,
    pub name: Option<String>,
    pub plugin: Option<String>,
    pub managed: bool,
    pub wwn: Option<String>,
    pub size: Option<u64>,
    pub dev: Option<String>,
    pub kind: Option<Kind>,
    pub images: Vec<ImageRef>,
    /// What the next run does with it (keep, update, remove), when the catalogue was read.
    pub next_run: Option<Action>,
    /// No longer wanted, kept within `safety.removal_grace` until then (Unix time).
    pub removal_pending_until: Option<u64>,
}

pub fn status(
    config: &SaveConfig,
    policy: &Policy,
    plan: Option<&Plan>,
    running: Option<&RunningState>,
    catalogue_error: Option<String>,
    ledger: Option<&LedgerRead>,
) -> Status {
    let mut projections: HashMap<&str, &Projection> = HashMap::new();
    for p in plan.map_or(&[][..], |plan| plan.projections.as_slice()) {
        projections.entry(p.name.as_str()).or_insert(p);
    }
    let mut status = match running {
        Some(running) => from_running(config, policy, running),
        None => from_file(config, policy),
    };
    for lun in &mut status.luns {
        let projection = lun
            .name
            .as_deref()
            .filter(|_| lun.managed)
            .and_then(|name| projections.get(name).copied());
        lun.kind = projection.map(|p| p.kind);
        lun.images = projection.map(|p| p.images.clone()).unwrap_or_default();
        lun.next_run = projection.map(|p| p.action);
        lun.removal_pending_until = projection.and_then(|p| p.removal_pending_until);
        // The ledger remembers what the catalogue may have forgotten (or not be reachable
        // to tell).
        let remembered = lun
            .name
            .as_deref()
            .filter(|_| lun.managed)
            .and_then(|name| ledger?.ledger.entries.get(name));
        if let Some(entry) = remembered {
            lun.kind.get_or_insert(entry.kind);
            if !lun.images.iter().any(ImageRef::is_known) {
                lun.images.clone_from(&entry.images);
            }
        }
    }
    status.luns.sort_by_key(|l| l.index);
    status.catalogue_error = catalogue_error;
    status.ledger = ledger.map(|read| StatusLedger {
        place: read.place.clone(),
        found: read.found,
        fleet_targets: read.fleet_targets,
        caveat: read.versioning_caveat(),
        fleet_differs: status
            .luns
            .iter()
            .filter(|lun| lun.managed)
            .filter_map(|lun| {
                let fleet_index = *read.fleet.get(lun.name.as_deref()?)?;
                (fleet_index != lun.index).then(|| FleetDifference {
                    index: lun.index,
                    storage_object: lun.storage_object.clone(),
                    fleet_index,
                })
            })
            .collect(),
    });
    status
}

fn empty_status(policy: &Policy, source: &'static str) -> Status {
    Status {
        schema_version: crate::report::SCHEMA_VERSION,
        target: policy.target.iqn.clone(),
        present: false,
        enabled: None,
        portals: Vec::new(),
        luns: Vec::new(),
        unmapped: Vec::new(),
        catalogue_error: None,
        source,
        file_differs: Vec::new(),
        last_failure: None,
        ledger: None,
    }
}

fn portal_texts(portals: impl IntoIterator<Item = (std::net::IpAddr, u16)>) -> Vec<String> {
    portals
        .into_iter()
        .map(|(ip, port)| Portal { ip, port }.to_string())
        .collect()
}

/// The LUNs the kernel runs, and how the file differs from them.
fn from_running(config: &SaveConfig, policy: &Policy, running: &RunningState) -> Status {
    let mut status = empty_status(policy, "running");
    let file = ManagedView::of(config, &policy.catalogue, &policy.target);
    // The file's view as found, the kernel's as wanted: "size is 1, expected 2" reads as
    // "the file says 1, the kernel runs 2".
    status.file_differs = file.differences(&running.view);
    if let Some(tpg) = &running.view.tpg {
        status.present = true;
        status.enabled = tpg.settings.enable;
        status.portals = portal_texts(tpg.settings.portals.iter().copied());
    }
    for (index, lun) in &running.luns {
        let (hba, name) = lun
            .object
            .as_deref()
            .and_then(|o| o.split_once('/'))
            .map_or((None, None), |(hba, name)| (Some(hba), Some(name)));
        let plugin = hba
            .and_then(|h| h.rsplit_once('_'))
            .map(|(p, _)| p.to_string());
        let facts = lun
            .managed
            .as_ref()
            .and_then(|n| running.view.objects.get(n));
        status.luns.push(StatusLun {
            index: *index,
            storage_object: match (&plugin, name) {
                (Some(plugin), Some(name)) => format!("/backstores/{plugin}/{name}"),
                _ => String::new(),
            },
            name: name.map(str::to_owned),
            plugin,
            managed: lun.managed.is_some(),
            wwn: facts.and_then(|f| f.wwn.clone()),
            size: facts.and_then(|f| f.size),
            dev: facts.map(|f| f.dev.clone()),
            kind: None,
            images: Vec::new(),
            next_run: None,
            removal_pending_until: None,
        });
    }
    let mapped: HashSet<&str> = running
        .luns
        .values()
        .filter_map(|l| l.managed.as_deref())
        .collect();
    status.unmapped = running
        .view
        .objects
        .keys()
        .filter(|name| !mapped.contains(name.as_str()))
        .cloned()
        .collect();
    status
}

/// The LUNs `saveconfig.json` holds.
fn from_file(config: &SaveConfig, policy: &Policy) -> Status {
    let mut status = empty_status(policy, "file");
    let tpg = config.tpg1(&policy.target.iqn);
    // Storage objects by the path LUNs name them by: the first of each.
    let mut objects: HashMap<String, &Value> = HashMap::new();
    for so in config.storage_objects() {
        if let Some(path) = path_of(so) {
            objects.entry(path).or_insert(so);
        }
    }
    for lun in tpg.map_or(&[][..], luns_of_tpg) {
        let Some(index) = lun_index(lun) else {
            continue;
        };
        let path = lun
            .get("storage_object")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let so = objects.get(&path).copied();
        let text = |key: &str| so.and_then(|so| so.get(key)?.as_str().map(str::to_owned));
        let managed = so.is_some_and(|so| ManagedObject::read(so, &policy.catalogue).is_some());
        status.luns.push(StatusLun {
            index,
            storage_object: path,
            plugin: text("plugin"),
            managed,
            wwn: text("wwn"),
            size: so.and_then(|so| so.get("size")?.as_u64()),
            dev: text("dev"),
            kind: None,
            images: Vec::new(),
            next_run: None,
            removal_pending_until: None,
            name: text("name").or_else(|| fileio_name(lun).map(str::to_owned)),
        });
    }
    let mapped: HashSet<&str> = status
        .luns
        .iter()
        .filter_map(|l| l.name.as_deref())
        .collect();
    status.unmapped = config
        .storage_objects()
        .iter()
        .filter_map(|so| ManagedObject::read(so, &policy.catalogue))
        .map(|(name, _)| name)
        .filter(|name| !mapped.contains(name.as_str()))
        .collect();
    status.present = tpg.is_some();
    status.enabled = tpg.map(|tpg| tpg.get("enable").and_then(Value::as_bool).unwrap_or(true));
    status.portals = tpg
        .map(|tpg| portal_texts(portals(tpg)))
        .unwrap_or_default();
    status
}

impl Status {
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if !self.present {
            let _ = writeln!(
                out,
                "Target {}: not configured (no TPG 1 in the configuration).",
                self.target
            );
            return out;
        }
        let _ = writeln!(
            out,
            "Target {} (TPG 1 {}; portals {})",
            self.target,
            if self.enabled == Some(false) {
                "disabled"
            } else {
                "enabled"
            },
            if self.portals.is_empty() {
                "none".to_string()
            } else {
                self.portals.join(", ")
            }
        );
        let _ = writeln!(
            out,
            "{}",
            if self.source == "running" {
                "As the kernel runs it (configfs):"
            } else {
                "As saveconfig.json holds it (LIO is not loaded here):"
            }
        );
        if let Some(error) = &self.catalogue_error {
            let _ = writeln!(out, "Catalogue unavailable, images not named: {error}");
        }
        let _ = writeln!(
            out,
            "{:>4}  {:<16} {:<32} {:>12}  IMAGE / FILE",
            "LUN", "NAME", "WWN", "SIZE"
        );
        for lun in &self.luns {
            let served = if !lun.managed {
                format!(
                    "not managed ({}) {}",
                    lun.plugin.as_deref().unwrap_or("unknown object"),
                    lun.dev.as_deref().unwrap_or("")
                )
            } else {
                let images: Vec<String> = lun
                    .images
                    .iter()
                    .filter(|i| i.is_known())
                    .map(ImageRef::describe)
                    .collect();
                let what = match (lun.kind, lun.next_run) {
                    (Some(kind), Some(Action::Remove)) if images.is_empty() => {
                        format!("{kind}, no longer in the catalogue: the next run removes it")
                    }
                    (Some(kind), Some(Action::Remove)) => format!(
                        "{kind} {}, no longer in the catalogue: the next run removes it",
                        images.join(" + ")
                    ),
                    (Some(kind), Some(Action::Update)) => {
                        format!("{kind} {} (the next run updates it)", images.join(" + "))
                    }
                    (Some(kind), _) if lun.removal_pending_until.is_some() => format!(
                        "{kind} {}, no longer wanted: removal pending until {}",
                        images.join(" + "),
                        crate::describe::local_time(lun.removal_pending_until.unwrap_or(0))
                    ),
                    (Some(kind), _) => format!("{kind} {}", images.join(" + ")),
                    (None, _) => "image unknown".to_string(),
                };
                format!("{what}  {}", lun.dev.as_deref().unwrap_or(""))
            };
            let _ = writeln!(
                out,
                "{:>4}  {:<16} {:<32} {:>12}  {served}",
                lun.index,
                lun.name.as_deref().unwrap_or("?"),
                lun.wwn.as_deref().unwrap_or("-"),
                lun.size.map_or("-".to_string(), |s| s.to_string()),
            );
        }
        if !self.unmapped.is_empty() {
            let _ = writeln!(
                out,
                "Managed storage objects without a LUN: {}",
                self.unmapped.join(", ")
            );
        }
        if let Some(failure) = &self.last_failure {
            let _ = writeln!(
                out,
                "Backing off: the same plan failed {} time(s) in a row ({}: {}); runs try it \
                 again from {} (sbps-reconcile --retry-now tries at once)",
                failure.count,
                failure.kind,
                crate::describe::printable(&failure.message),
                crate::describe::local_time(failure.retry_unix())
            );
        }
        if let Some(ledger) = &self.ledger {
            let _ = write!(
                out,
                "LUN ledger {}{}",
                crate::describe::printable(&ledger.place),
                if ledger.found { "" } else { " (none yet)" }
            );
            if ledger.fleet_targets == 0 {
                let _ = writeln!(out, "; no other target's ledger to compare with.");
            } else if ledger.fleet_differs.is_empty() {
                let _ = writeln!(
                    out,
                    "; every LUN has the number the fleet gives its image ({} other target(s)).",
                    ledger.fleet_targets
                );
            } else {
                let _ = writeln!(
                    out,
                    "; {} LUN(s) differ from the number the fleet gives their image ({} other \
                     target(s)):",
                    ledger.fleet_differs.len(),
                    ledger.fleet_targets
                );
                for d in &ledger.fleet_differs {
                    let _ = writeln!(
                        out,
                        "  LUN {} {} is LUN {} elsewhere",
                        d.index, d.storage_object, d.fleet_index
                    );
                }
            }
            if let Some(caveat) = &ledger.caveat {
                let _ = writeln!(out, "Warning: {caveat}.");
            }
        }
        if !self.file_differs.is_empty() {
            let _ = writeln!(
                out,
                "saveconfig.json differs from the running target (the next run repairs it):"
            );
            for line in &self.file_differs {
                let _ = writeln!(out, "  ~ {line}");
            }
        }
        out
    }
}
