//! Which of rtslib's ", skipped" lines a restore may shrug off: those about objects the tool
//! does not own and that were already in the file before this run. A foreign LUN whose
//! storage object someone deleted by hand was broken before the run began, and would be
//! broken the same way by a rollback: failing every restore on it left restore mode stuck
//! for ever. Everything the tool owns is still verified after the restore.

use crate::lio::managed::ManagedObject;
use crate::lio::{lun_index, path_of, SaveConfig};
use crate::policy::Policy;
use serde_json::Value;
use std::collections::BTreeSet;

/// The foreign objects of a restored configuration that were already in the file before.
#[derive(Debug, Default)]
pub struct KnownBroken {
    /// Names of storage objects the tool does not own, unchanged since the file before.
    objects: BTreeSet<String>,
    /// Indices of LUNs the tool does not own, unchanged since the file before, whose
    /// storage object is missing from the file or is one of `objects`.
    luns: BTreeSet<u32>,
}

impl KnownBroken {
    /// `restored`: the file restored; `before`: the file before this run (`None`: none).
    pub fn new(restored: &SaveConfig, before: Option<&SaveConfig>, policy: &Policy) -> KnownBroken {
        let Some(before) = before else {
            return KnownBroken::default();
        };
        let owned = |so: &Value| ManagedObject::read(so, &policy.catalogue).is_some();
        let objects: BTreeSet<String> = restored
            .storage_objects()
            .iter()
            .filter(|so| !owned(so))
            .filter(|so| before.storage_objects().iter().any(|old| **old == ***so))
            .filter_map(|so| Some(so.get("name")?.as_str()?.to_string()))
            .collect();
        let paths: BTreeSet<String> = restored
            .storage_objects()
            .iter()
            .filter_map(|so| path_of(so))
            .collect();
        let broken_path = |path: &str| {
            !paths.contains(path)
                || path
                    .rsplit('/')
                    .next()
                    .is_some_and(|name| objects.contains(name))
        };
        let owned_paths: BTreeSet<String> = restored
            .storage_objects()
            .iter()
            .filter(|so| owned(so))
            .filter_map(|so| path_of(so))
            .collect();
        let mut luns = BTreeSet::new();
        for (iqn, tag, lun) in all_luns(restored) {
            let Some(path) = lun.get("storage_object").and_then(Value::as_str) else {
                continue;
            };
            let ours = iqn == policy.target.iqn && tag == Some(1) && owned_paths.contains(path);
            let unchanged = all_luns(before).any(|(i, t, old)| i == iqn && t == tag && old == lun);
            if !ours && unchanged && broken_path(path) {
                luns.extend(lun_index(lun));
            }
        }
        KnownBroken { objects, luns }
    }

    /// Whether rtslib's `line` concerns only these objects.
    pub fn covers(&self, line: &str) -> bool {
        let line = line.trim_end();
        let Some(line) = line.strip_suffix(", skipped") else {
            return false;
        };
        if let Some(rest) = line.strip_prefix("Could not create StorageObject ") {
            let name = rest.split_once(':').map_or(rest, |(name, _)| name);
            return self.objects.contains(name.trim());
        }
        if let Some(index) = line.strip_prefix("Could not find matching StorageObject for LUN ") {
            return index
                .trim()
                .parse()
                .is_ok_and(|i: u32| self.luns.contains(&i));
        }
        if let Some(rest) = line.strip_prefix("Could not find matching TPG LUN ") {
            // "... TPG LUN N for MappedLUN M": an ACL's mapping of a known broken LUN.
            let index = rest.split(' ').next().unwrap_or_default();
            return index.parse().is_ok_and(|i: u32| self.luns.contains(&i));
        }
        false
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty() && self.luns.is_empty()
    }
}

/// Every LUN of every TPG: (target IQN, TPG tag, LUN).
fn all_luns(config: &SaveConfig) -> impl Iterator<Item = (&str, Option<u64>, &Value)> {
    config.targets().iter().flat_map(|target| {
        let iqn = target
            .get("wwn")
            .and_then(Value::as_str)
            .unwrap_or_default();
        target
            .get("tpgs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(move |tpg| {
                let tag = tpg.get("tag").and_then(Value::as_u64);
                crate::lio::luns(tpg).iter().map(move |lun| (iqn, tag, lun))
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::HostFacts;
    use serde_json::json;

    fn policy() -> Policy {
        let text = "target:\n  iqn: iqn.t:ours\n  portals: [\"10.0.0.1:3260\"]\ncatalogue:\n  mount: /m\n  ims:\n    file: /x\n";
        Policy::from_yaml(text, &HostFacts::from_hostname("h"))
            .unwrap()
            .0
    }

    fn config(objects: Value, ours: Value, theirs: Value) -> SaveConfig {
        let text = json!({
            "fabric_modules": [],
            "storage_objects": objects,
            "targets": [
                {"wwn": "iqn.t:ours", "fabric": "iscsi", "tpgs": [{"tag": 1, "luns": ours}]},
                {"wwn": "iqn.t:theirs", "fabric": "iscsi", "tpgs": [{"tag": 1, "luns": theirs}]},
            ],
        });
        SaveConfig::parse(text.to_string().as_bytes()).unwrap()
    }

    fn ours_so() -> Value {
        json!({"plugin": "fileio", "name": "mine", "dev": "/m/PE/a", "size": 5, "wwn": "w",
               "write_back": false, "attributes": {"emulate_model_alias": 1}})
    }

    fn lost_so() -> Value {
        json!({"plugin": "block", "name": "lost", "dev": "/dev/sdz", "attributes": {}})
    }

    #[test]
    fn only_foreign_objects_broken_before_the_run_are_covered() {
        let policy = policy();
        let lun = |i: u32, so: &str| json!({"index": i, "storage_object": so});
        let before = config(
            json!([ours_so(), lost_so()]),
            json!([
                lun(0, "/backstores/fileio/mine"),
                lun(9, "/backstores/block/gone")
            ]),
            json!([lun(3, "/backstores/block/lost")]),
        );
        let restored = config(
            json!([ours_so(), lost_so()]),
            json!([
                lun(0, "/backstores/fileio/mine"),
                lun(9, "/backstores/block/gone"),
                lun(12, "/backstores/block/new-and-gone")
            ]),
            json!([lun(3, "/backstores/block/lost")]),
        );
        let known = KnownBroken::new(&restored, Some(&before), &policy);
        // A foreign LUN whose object is gone, and one on a foreign object that cannot load.
        assert!(known.covers("Could not find matching StorageObject for LUN 9, skipped"));
        assert!(known.covers("Could not find matching StorageObject for LUN 3, skipped"));
        assert!(known.covers(
            "Could not create StorageObject lost: Device /dev/sdz is not a TYPE_DISK block device, skipped"
        ));
        assert!(known.covers("Could not find matching TPG LUN 9 for MappedLUN 0, skipped"));
        // Ours, one new in this run, an unknown line, a line that is not a skip.
        assert!(!known.covers("Could not create StorageObject mine: in use, skipped"));
        assert!(!known.covers("Could not find matching StorageObject for LUN 0, skipped"));
        assert!(!known.covers("Could not find matching StorageObject for LUN 12, skipped"));
        assert!(!known.covers("Could not set attribute 'x': no, skipped"));
        assert!(!known.covers("Could not find matching StorageObject for LUN 9"));
        // Without a file before, nothing was broken before.
        assert!(KnownBroken::new(&restored, None, &policy).is_empty());
    }
}
