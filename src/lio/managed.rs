//! The part of a configuration the tool manages, reduced to comparable values.
//!
//! Verification compares this view of what was written with the view of what
//! `targetctl save` reads back from the kernel: the kernel adds its full attribute set, LUN
//! aliases and ALUA groups, none of which the tool owns, so bytes would never match.

use super::{fileio_name, lun_index, SaveConfig};
use crate::policy::{Catalogue, Portal, TargetPolicy};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedView {
    /// fileio storage objects whose `dev` lies under the mount, by name.
    pub objects: BTreeMap<String, ManagedObject>,
    /// The policy's target, TPG 1; `None` when absent.
    pub tpg: Option<TpgView>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedObject {
    pub dev: String,
    pub size: Option<u64>,
    pub wwn: Option<String>,
    pub write_back: Option<bool>,
    pub emulate_model_alias: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpgView {
    /// rtslib treats an absent `enable` as enabled.
    pub enable: bool,
    /// The attributes the policy sets, as found (`None` when absent or not a number).
    pub attributes: BTreeMap<String, Option<i64>>,
    pub portals: BTreeSet<(IpAddr, u16)>,
    /// LUN index to fileio storage object name, for LUNs of managed objects.
    pub luns: BTreeMap<u32, String>,
}

impl ManagedView {
    pub fn of(config: &SaveConfig, catalogue: &Catalogue, target: &TargetPolicy) -> ManagedView {
        let objects: BTreeMap<String, ManagedObject> = config
            .storage_objects()
            .iter()
            .filter_map(|so| managed_object(so, catalogue))
            .collect();
        let tpg = find_tpg(config.targets(), &target.iqn).map(|tpg| TpgView {
            enable: tpg.get("enable").and_then(Value::as_bool).unwrap_or(true),
            attributes: target
                .attributes
                .keys()
                .map(|key| {
                    let found = tpg
                        .get("attributes")
                        .and_then(|a| a.get(key))
                        .and_then(Value::as_i64);
                    (key.clone(), found)
                })
                .collect(),
            portals: portals(tpg),
            luns: tpg
                .get("luns")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|lun| {
                    let name = fileio_name(lun)?;
                    objects
                        .contains_key(name)
                        .then(|| Some((lun_index(lun)?, name.to_string())))?
                })
                .collect(),
        });
        ManagedView { objects, tpg }
    }

    /// Human lines for each managed difference from `other` (what was expected).
    pub fn differences(&self, expected: &ManagedView) -> Vec<String> {
        let mut lines = Vec::new();
        for (name, want) in &expected.objects {
            match self.objects.get(name) {
                None => lines.push(format!("storage object fileio/{name} is missing")),
                Some(got) if got != want => lines.push(format!(
                    "storage object fileio/{name} differs: expected {want:?}, found {got:?}"
                )),
                Some(_) => {}
            }
        }
        for name in self
            .objects
            .keys()
            .filter(|n| !expected.objects.contains_key(*n))
        {
            lines.push(format!("unexpected storage object fileio/{name}"));
        }
        match (&self.tpg, &expected.tpg) {
            (Some(got), Some(want)) if got != want => {
                if got.enable != want.enable {
                    lines.push(format!(
                        "TPG 1 enable is {}, expected {}",
                        got.enable, want.enable
                    ));
                }
                if got.attributes != want.attributes {
                    lines.push(format!(
                        "TPG 1 attributes are {:?}, expected {:?}",
                        got.attributes, want.attributes
                    ));
                }
                if got.portals != want.portals {
                    lines.push(format!(
                        "portals are {:?}, expected {:?}",
                        got.portals, want.portals
                    ));
                }
                if got.luns != want.luns {
                    lines.push(format!("LUNs are {:?}, expected {:?}", got.luns, want.luns));
                }
            }
            (None, Some(_)) => lines.push("the target or its TPG 1 is missing".to_string()),
            (Some(_), None) => lines.push("an unexpected target TPG 1 exists".to_string()),
            _ => {}
        }
        lines
    }
}

/// The managed facts of a storage object, if it is a fileio object under the mount.
pub fn managed_object(so: &Value, catalogue: &Catalogue) -> Option<(String, ManagedObject)> {
    if so.get("plugin").and_then(Value::as_str) != Some("fileio") {
        return None;
    }
    let name = so.get("name").and_then(Value::as_str)?;
    let dev = so.get("dev").and_then(Value::as_str)?;
    catalogue.key_for_dev(dev)?;
    Some((
        name.to_string(),
        ManagedObject {
            dev: dev.to_string(),
            size: so.get("size").and_then(Value::as_u64),
            wwn: so.get("wwn").and_then(Value::as_str).map(str::to_owned),
            write_back: so.get("write_back").and_then(Value::as_bool),
            emulate_model_alias: so
                .get("attributes")
                .and_then(|a| a.get("emulate_model_alias"))
                .and_then(Value::as_i64),
        },
    ))
}

/// Whether a target entry is the policy's iSCSI target.
pub fn is_target(target: &Value, iqn: &str) -> bool {
    target.get("fabric").and_then(Value::as_str) == Some("iscsi")
        && target
            .get("wwn")
            .and_then(Value::as_str)
            .is_some_and(|wwn| wwn.eq_ignore_ascii_case(iqn))
}

/// Whether a TPG entry has tag 1.
pub fn is_tpg1(tpg: &Value) -> bool {
    tpg.get("tag").and_then(Value::as_u64) == Some(1)
}

fn find_tpg<'a>(targets: &'a [Value], iqn: &str) -> Option<&'a Value> {
    targets
        .iter()
        .find(|t| is_target(t, iqn))?
        .get("tpgs")?
        .as_array()?
        .iter()
        .find(|tpg| is_tpg1(tpg))
}

/// The portals of a TPG as comparable (address, port) pairs; odd entries are left out.
pub fn portals(tpg: &Value) -> BTreeSet<(IpAddr, u16)> {
    tpg.get("portals")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let ip = Portal::parse_ip_address(p.get("ip_address")?.as_str()?)?;
            let port = u16::try_from(p.get("port")?.as_u64()?).ok()?;
            Some((ip, port))
        })
        .collect()
}
