//! `status`: what is projected now, from `saveconfig.json`, LUN by LUN, with the image each
//! LUN serves where the catalogue can tell. Reads only.

use crate::lio::managed::{portals, ManagedObject};
use crate::lio::{fileio_name, lun_index, luns as luns_of_tpg, path_of, SaveConfig};
use crate::plan::{Action, ImageRef, Kind, Plan, Projection};
use crate::policy::{Policy, Portal};
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
}

pub fn status(
    config: &SaveConfig,
    policy: &Policy,
    plan: Option<&Plan>,
    catalogue_error: Option<String>,
) -> Status {
    let iqn = &policy.target.iqn;
    let tpg = config.tpg1(iqn);
    // Storage objects by the path LUNs name them by, projections by name: the first of each.
    let mut objects: HashMap<String, &Value> = HashMap::new();
    for so in config.storage_objects() {
        if let Some(path) = path_of(so) {
            objects.entry(path).or_insert(so);
        }
    }
    let mut projections: HashMap<&str, &Projection> = HashMap::new();
    for p in plan.map_or(&[][..], |plan| plan.projections.as_slice()) {
        projections.entry(p.name.as_str()).or_insert(p);
    }
    let mut luns: Vec<StatusLun> = tpg
        .map_or(&[][..], luns_of_tpg)
        .iter()
        .filter_map(|lun| Some((lun_index(lun)?, lun)))
        .map(|(index, lun)| {
            let path = lun
                .get("storage_object")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let so = objects.get(&path).copied();
            let text = |key: &str| so.and_then(|so| so.get(key)?.as_str().map(str::to_owned));
            let managed = so.is_some_and(|so| ManagedObject::read(so, &policy.catalogue).is_some());
            let name = text("name").or_else(|| fileio_name(lun).map(str::to_owned));
            let projection = name
                .as_deref()
                .filter(|_| managed)
                .and_then(|name| projections.get(name).copied());
            StatusLun {
                index,
                storage_object: path,
                plugin: text("plugin"),
                managed,
                wwn: text("wwn"),
                size: so.and_then(|so| so.get("size")?.as_u64()),
                dev: text("dev"),
                kind: projection.map(|p| p.kind),
                images: projection.map(|p| p.images.clone()).unwrap_or_default(),
                next_run: projection.map(|p| p.action),
                name,
            }
        })
        .collect();
    luns.sort_by_key(|l| l.index);
    let mapped: HashSet<&str> = luns.iter().filter_map(|l| l.name.as_deref()).collect();
    let unmapped = config
        .storage_objects()
        .iter()
        .filter_map(|so| ManagedObject::read(so, &policy.catalogue))
        .map(|(name, _)| name)
        .filter(|name| !mapped.contains(name.as_str()))
        .collect();
    Status {
        schema_version: crate::report::SCHEMA_VERSION,
        target: iqn.clone(),
        present: tpg.is_some(),
        enabled: tpg.map(|tpg| tpg.get("enable").and_then(Value::as_bool).unwrap_or(true)),
        portals: tpg
            .map(|tpg| {
                portals(tpg)
                    .into_iter()
                    .map(|(ip, port)| Portal { ip, port }.to_string())
                    .collect()
            })
            .unwrap_or_default(),
        luns,
        unmapped,
        catalogue_error,
    }
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
                let images: Vec<String> = lun.images.iter().map(ImageRef::describe).collect();
                let what = match (lun.kind, lun.next_run) {
                    (Some(kind), Some(Action::Remove)) => {
                        format!("{kind}, no longer in the catalogue: the next run removes it")
                    }
                    (Some(kind), Some(Action::Update)) => {
                        format!("{kind} {} (the next run updates it)", images.join(" + "))
                    }
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
        out
    }
}
