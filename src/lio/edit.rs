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

/// Whether [`ensure_tpg1`], [`apply_tpg_settings`] and [`sync_luns`] would leave this TPG 1
/// exactly as it is: then the planner does not copy the target to edit nothing (at 5,500
/// LUNs its LUN list is the largest part of the file). Anything those edits would touch,
/// even a missing list they would create, says no.
pub fn tpg_untouched(
    tpg: &Value,
    target: &TargetPolicy,
    wanted: &[(&str, u32)],
    current: &BTreeMap<String, BTreeSet<u32>>,
) -> bool {
    let settings = TpgSettings::wanted(target);
    let portal_entries = tpg.get("portals").and_then(Value::as_array).map(Vec::len);
    let shaped = tpg.get("attributes").is_some_and(Value::is_object)
        && tpg.get("luns").is_some_and(Value::is_array)
        && portal_entries == Some(settings.portals.len());
    let luns_in_place = wanted.iter().all(|(name, index)| {
        current
            .get(*name)
            .is_some_and(|indices| indices.len() == 1 && indices.contains(index))
    });
    shaped && luns_in_place && TpgSettings::read(tpg, target) == settings
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{HostFacts, Policy};
    use serde_json::Map;

    fn target() -> TargetPolicy {
        let text = "target:\n  iqn: iqn.2023-06.csm.iscsi:h\n  portals: [\"10.0.0.1:3260\"]\n  \
                    attributes: {generate_node_acls: 1}\ncatalogue:\n  mount: /m\n  ims:\n    file: /x\n";
        Policy::from_yaml(text, &HostFacts::from_hostname("h"))
            .unwrap()
            .0
            .target
    }

    /// TPG 1 as rtslib writes it for the policy above, serving a at LUN 0 and b at LUN 1.
    fn tpg() -> Value {
        let mut attributes = json!(target().attributes);
        attributes["cache_dynamic_acls"] = json!(1);
        json!({
            "attributes": attributes,
            "enable": true,
            "luns": [
                {"index": 0, "storage_object": "/backstores/fileio/a", "alias": "x"},
                {"index": 1, "storage_object": "/backstores/fileio/b"},
            ],
            "node_acls": [],
            "portals": [{"ip_address": "10.0.0.1", "iser": false, "offload": false, "port": 3260}],
            "tag": 1,
        })
    }

    fn config(tpg: Value) -> SaveConfig {
        let file = json!({
            "storage_objects": [],
            "targets": [{"fabric": "iscsi", "tpgs": [tpg], "wwn": "iqn.2023-06.csm.iscsi:h"}],
        });
        SaveConfig::parse(file.to_string().as_bytes()).unwrap()
    }

    /// What the planner's edits make of `tpg`, and whether the check said they leave it.
    fn edited(tpg: Value, wanted: &[(&str, u32)]) -> (bool, bool) {
        let target = target();
        let current: BTreeMap<String, BTreeSet<u32>> = super::super::luns(&tpg)
            .iter()
            .filter_map(|lun| Some((fileio_name(lun)?.to_string(), lun_index(lun)?)))
            .fold(BTreeMap::new(), |mut map, (name, index)| {
                map.entry(name).or_default().insert(index);
                map
            });
        let untouched = tpg_untouched(&tpg, &target, wanted, &current);
        let before = config(tpg);
        let mut after = before.clone();
        let tpg = ensure_tpg1(&mut after, &target.iqn, &mut Vec::new());
        apply_tpg_settings(tpg, &target, &mut Vec::new());
        sync_luns(tpg, wanted, &current);
        (untouched, after == before)
    }

    #[test]
    fn a_tpg_is_left_shared_only_when_the_edits_would_leave_it_as_it_is() {
        let both = [("a", 0), ("b", 1)];
        assert_eq!(edited(tpg(), &both), (true, true));
        // (what, TPG 1, the LUNs wanted)
        type Case<'a> = (&'a str, Value, Vec<(&'a str, u32)>);
        let mut cases: Vec<Case> = vec![
            ("a new LUN", tpg(), vec![("a", 0), ("b", 1), ("c", 2)]),
            ("a LUN gone", tpg(), vec![("a", 0)]),
        ];
        let mut with = |what, edit: &dyn Fn(&mut Map<String, Value>)| {
            let mut tpg = tpg();
            edit(object_mut(&mut tpg));
            cases.push((what, tpg, both.to_vec()));
        };
        with("no enable (rtslib: enabled)", &|t| {
            t.remove("enable");
        });
        with("disabled", &|t| {
            t.insert("enable".into(), json!(false));
        });
        with("enable not a flag", &|t| {
            t.insert("enable".into(), json!("yes"));
        });
        with("no attributes", &|t| {
            t.remove("attributes");
        });
        with("attributes not a map", &|t| {
            t.insert("attributes".into(), json!([]));
        });
        with("an attribute differs", &|t| {
            t.insert("attributes".into(), json!({"generate_node_acls": 0}));
        });
        with("no luns list", &|t| {
            t.remove("luns");
        });
        with("a second LUN for a", &|t| {
            list_mut(t, "luns").push(json!({"index": 7, "storage_object": "/backstores/fileio/a"}));
        });
        with("an unmanaged LUN", &|t| {
            list_mut(t, "luns").push(json!({"index": 9, "storage_object": "/backstores/block/d"}));
        });
        with("no portals", &|t| {
            t.remove("portals");
        });
        with("a portal twice", &|t| {
            let portal = list_mut(t, "portals")[0].clone();
            list_mut(t, "portals").push(portal);
        });
        with("another portal", &|t| {
            list_mut(t, "portals")[0]["port"] = json!(3261);
        });
        for (what, tpg, wanted) in cases {
            let (untouched, unchanged) = edited(tpg, &wanted);
            assert!(
                !untouched || unchanged,
                "{what}: said untouched, but edited"
            );
            if what == "an unmanaged LUN" || what == "no enable (rtslib: enabled)" {
                assert!(untouched, "{what}: the edits leave it, so must the check");
            }
        }
    }
}
