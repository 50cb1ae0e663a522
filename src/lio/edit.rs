//! Edits to a `saveconfig.json` value, as the planner makes them: storage objects, LUNs,
//! TPG 1, its attributes and portals. Each edit changes only what differs and keeps
//! everything else in the entry it touches, so that "no change" means the two are equal.

use super::managed::{portal_of, Difference, ManagedObject, TpgSettings};
use super::{
    fileio_name, is_target, is_tpg1, list_mut, lun_index, object_mut, storage_object_path,
    SaveConfig,
};
use crate::policy::{Catalogue, Portal, TargetPolicy};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// What [`sync_storage_objects`] did.
#[derive(Debug, Default)]
pub struct ObjectEdits {
    /// Managed objects dropped because nothing wants them any more.
    pub removed: BTreeSet<String>,
    /// Managed objects kept whose facts were rewritten, with what differed.
    pub updated: BTreeMap<String, Vec<Difference>>,
}

/// Makes the managed storage objects exactly `wanted`: drops managed objects no longer
/// wanted (and second entries of one name), rewrites kept ones whose facts differ, and
/// appends the missing ones in the order given. Objects the tool does not manage stay.
pub fn sync_storage_objects(
    config: &mut SaveConfig,
    catalogue: &Catalogue,
    wanted: &[(&str, ManagedObject)],
) -> ObjectEdits {
    let by_name: BTreeMap<&str, &ManagedObject> = wanted
        .iter()
        .map(|(name, object)| (*name, object))
        .collect();
    let mut edits = ObjectEdits::default();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    config.storage_objects_mut().retain_mut(|so| {
        let Some((name, found)) = ManagedObject::read(so, catalogue) else {
            return true;
        };
        match by_name.get(name.as_str()) {
            Some(want) if seen.insert(name.clone()) => {
                let differences = found.differences(want);
                if !differences.is_empty() {
                    want.write_into(std::sync::Arc::make_mut(so));
                    edits.updated.insert(name, differences);
                }
                true
            }
            Some(_) => false,
            None => {
                edits.removed.insert(name);
                false
            }
        }
    });
    for (name, object) in wanted {
        if !seen.contains(*name) {
            config
                .storage_objects_mut()
                .push(std::sync::Arc::new(object.storage_object(name)));
        }
    }
    edits
}

/// Removes LUNs pointing at `paths` from every TPG of every target (so that no LUN points
/// at nothing); returns how many.
pub fn remove_luns_of(config: &mut SaveConfig, paths: &BTreeSet<String>) -> usize {
    if paths.is_empty() {
        return 0;
    }
    let mut removed = 0;
    for target in config.targets_mut() {
        let Some(tpgs) = target.get_mut("tpgs").and_then(Value::as_array_mut) else {
            continue;
        };
        for tpg in tpgs {
            let Some(luns) = tpg.get_mut("luns").and_then(Value::as_array_mut) else {
                continue;
            };
            let mut gone = BTreeSet::new();
            let before = luns.len();
            luns.retain(|lun| {
                let hit = lun
                    .get("storage_object")
                    .and_then(Value::as_str)
                    .is_some_and(|p| paths.contains(p));
                if hit {
                    gone.extend(lun_index(lun));
                }
                !hit
            });
            // Every entry counts against the limit, duplicates and odd indices too.
            removed += before - luns.len();
            if !gone.is_empty() {
                remove_mapped_luns(tpg, &gone);
            }
        }
    }
    removed
}

/// What [`sync_luns`] did.
#[derive(Debug, Default)]
pub struct LunEdits {
    /// LUN entries removed.
    pub removed: usize,
    /// Storage objects that got a LUN they did not have.
    pub added: BTreeSet<String>,
}

/// Makes TPG 1 map each wanted fileio object at its index: adds missing LUNs (in the order
/// given), and removes the further LUNs of a kept object (the old agent mapped two LUNs to
/// one backstore for images sharing a rootfs). `current` is each managed object's LUN
/// indices in TPG 1 now.
pub fn sync_luns(
    tpg: &mut Value,
    wanted: &[(&str, u32)],
    current: &BTreeMap<String, BTreeSet<u32>>,
) -> LunEdits {
    let keep: BTreeMap<&str, u32> = wanted.iter().copied().collect();
    let mut extra: BTreeSet<u32> = BTreeSet::new();
    for (name, indices) in current {
        if let Some(keep) = keep.get(name.as_str()) {
            extra.extend(indices.iter().filter(|i| *i != keep));
        }
    }
    let luns = list_mut(object_mut(tpg), "luns");
    let before = luns.len();
    luns.retain(|lun| {
        !(fileio_name(lun).is_some() && lun_index(lun).is_some_and(|i| extra.contains(&i)))
    });
    let mut edits = LunEdits {
        removed: before - luns.len(),
        added: BTreeSet::new(),
    };
    for (name, index) in wanted {
        let mapped = current.get(*name).is_some_and(|l| l.contains(index));
        if !mapped {
            luns.push(json!({
                "index": index,
                "storage_object": storage_object_path("fileio", name),
            }));
            edits.added.insert((*name).to_string());
        }
    }
    if !extra.is_empty() {
        remove_mapped_luns(tpg, &extra);
    }
    edits
}

/// Node ACLs map TPG LUNs by index; a mapping to a removed LUN would fail the restore.
fn remove_mapped_luns(tpg: &mut Value, indices: &BTreeSet<u32>) {
    let Some(acls) = tpg.get_mut("node_acls").and_then(Value::as_array_mut) else {
        return;
    };
    for acl in acls {
        if let Some(mapped) = acl.get_mut("mapped_luns").and_then(Value::as_array_mut) {
            mapped.retain(|m| {
                !m.get("tpg_lun")
                    .and_then(Value::as_u64)
                    .is_some_and(|i| u32::try_from(i).is_ok_and(|i| indices.contains(&i)))
            });
        }
    }
}

/// The target `iqn` and its TPG 1, created when missing (one phrase in `changes` for what
/// was created).
pub fn ensure_tpg1<'a>(
    config: &'a mut SaveConfig,
    iqn: &str,
    changes: &mut Vec<String>,
) -> &'a mut Value {
    let targets = config.targets_mut();
    let mut created_target = false;
    // Positions found or pushed just now: indexing with them cannot fail.
    let target_at = match targets.iter().position(|t| is_target(t, iqn)) {
        Some(at) => at,
        None => {
            changes.push(format!("create target {iqn}"));
            created_target = true;
            targets.push(json!({"fabric": "iscsi", "tpgs": [], "wwn": iqn}));
            targets.len() - 1
        }
    };
    let tpgs = list_mut(object_mut(&mut targets[target_at]), "tpgs");
    let tpg_at = match tpgs.iter().position(is_tpg1) {
        Some(at) => at,
        None => {
            if !created_target {
                changes.push("create TPG 1".to_string());
            }
            tpgs.push(json!({
                "attributes": {},
                "enable": true,
                "luns": [],
                "node_acls": [],
                "portals": [],
                "tag": 1,
            }));
            tpgs.len() - 1
        }
    };
    &mut tpgs[tpg_at]
}

/// Sets TPG 1's enable flag, the policy's attributes and the portal list where they differ
/// from the policy; one phrase per change.
pub fn apply_tpg_settings(tpg: &mut Value, target: &TargetPolicy, changes: &mut Vec<String>) {
    let wanted = TpgSettings::wanted(target);
    let found = TpgSettings::read(tpg, target);
    let object = object_mut(tpg);
    if found.enable != wanted.enable {
        changes.push(
            Difference {
                field: "TPG 1 enable".to_string(),
                found: found.enable.map_or("unset".to_string(), |e| e.to_string()),
                wanted: target.enabled.to_string(),
            }
            .as_change(),
        );
        object.insert("enable".into(), json!(target.enabled));
    }
    let attributes = object_mut(
        object
            .entry("attributes")
            .or_insert_with(|| Value::Object(Default::default())),
    );
    for (key, want) in &target.attributes {
        let got = found.attributes.get(key).copied().flatten();
        if got != Some(i64::from(*want)) {
            let got = got.map_or("unset".to_string(), |v| v.to_string());
            changes.push(format!("TPG 1 attribute {key} {got} -> {want}"));
            attributes.insert(key.clone(), json!(want));
        }
    }
    // Rebuilt also when entries are duplicated or unreadable, so the list is exactly the
    // policy's.
    let entries = tpg
        .get("portals")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if found.portals != wanted.portals || entries != wanted.portals.len() {
        rebuild_portals(tpg, &target.portals, changes);
    }
}

/// Keeps current portal entries the policy lists (with their fields), drops the rest, and
/// adds the missing ones in policy order.
fn rebuild_portals(tpg: &mut Value, wanted: &[Portal], changes: &mut Vec<String>) {
    let list = list_mut(object_mut(tpg), "portals");
    let mut kept: BTreeSet<(IpAddr, u16)> = BTreeSet::new();
    list.retain(|entry| {
        let keep = portal_of(entry).is_some_and(|(ip, port)| {
            wanted.iter().any(|w| w.ip == ip && w.port == port) && kept.insert((ip, port))
        });
        if !keep {
            let text = match (entry.get("ip_address"), entry.get("port")) {
                (Some(ip), Some(port)) => format!("{}:{port}", ip.as_str().unwrap_or("?")),
                _ => entry.to_string(),
            };
            changes.push(format!("portal {text} removed"));
        }
        keep
    });
    for portal in wanted {
        if !kept.contains(&(portal.ip, portal.port)) {
            changes.push(format!("portal {portal} added"));
            list.push(json!({
                "ip_address": portal.ip_address(),
                "iser": false,
                "offload": false,
                "port": portal.port,
            }));
        }
    }
}
