//! The facts the tool manages, in one place each: a storage object's ([`ManagedObject`]) and
//! TPG 1's ([`TpgSettings`]). The same types are built from what the plan wants, read from
//! a configuration, compared, and written, so that the plan's diff and the verification of
//! an apply can never disagree about what differs.
//!
//! Verification compares the managed view of what was written with the view of what the
//! kernel holds: the kernel adds its full attribute set, LUN aliases and ALUA groups, none
//! of which the tool owns, so bytes would never match.

use super::{fileio_name, lun_index, object_mut, SaveConfig};
use crate::policy::{Catalogue, Portal, TargetPolicy};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::net::IpAddr;

/// One managed fact that differs: what was found and what is wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub field: String,
    pub found: String,
    pub wanted: String,
}

impl Difference {
    fn of<T: Display + PartialEq>(
        field: &str,
        found: &Option<T>,
        wanted: &Option<T>,
    ) -> Option<Difference> {
        (found != wanted).then(|| Difference {
            field: field.to_string(),
            found: show(found),
            wanted: show(wanted),
        })
    }

    /// As the plan says it: `size 1 -> 2`.
    pub fn as_change(&self) -> String {
        format!("{} {} -> {}", self.field, self.found, self.wanted)
    }

    /// As verification says it: `size is 1, expected 2`.
    pub fn as_mismatch(&self) -> String {
        format!("{} is {}, expected {}", self.field, self.found, self.wanted)
    }
}

fn show<T: Display>(value: &Option<T>) -> String {
    value
        .as_ref()
        .map_or_else(|| "unset".to_string(), T::to_string)
}

/// The managed facts of a fileio storage object whose file lies under the mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedObject {
    pub dev: String,
    pub size: Option<u64>,
    pub wwn: Option<String>,
    pub write_back: Option<bool>,
    /// 1 exports the object's name as the SCSI product ID, which compute nodes look for.
    pub emulate_model_alias: Option<i64>,
}

impl ManagedObject {
    /// What the tool wants for a projected image: its file, exact size and unit serial,
    /// read-through caching off, and the name exported as the product ID.
    pub fn wanted(dev: &str, size: u64, wwn: &str) -> ManagedObject {
        ManagedObject {
            dev: dev.to_string(),
            size: Some(size),
            wwn: Some(wwn.to_string()),
            write_back: Some(false),
            emulate_model_alias: Some(1),
        }
    }

    /// Reads a storage object entry: its name and facts, if it is a fileio object whose
    /// `dev` lies under the mount (what the tool manages); `None` otherwise.
    pub fn read(so: &Value, catalogue: &Catalogue) -> Option<(String, ManagedObject)> {
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

    /// The managed facts that differ from `wanted`.
    pub fn differences(&self, wanted: &ManagedObject) -> Vec<Difference> {
        [
            Difference::of("dev", &Some(&self.dev), &Some(&wanted.dev)),
            Difference::of("size", &self.size, &wanted.size),
            Difference::of("wwn", &self.wwn, &wanted.wwn),
            Difference::of("write_back", &self.write_back, &wanted.write_back),
            Difference::of(
                "emulate_model_alias",
                &self.emulate_model_alias,
                &wanted.emulate_model_alias,
            ),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Writes these facts into a storage object entry, keeping everything else in it (the
    /// kernel's attributes, ALUA groups).
    pub fn write_into(&self, so: &mut Value) {
        let object = object_mut(so);
        object.insert("dev".into(), json!(self.dev));
        let mut set = |key: &str, value: Option<Value>| {
            if let Some(value) = value {
                object.insert(key.into(), value);
            }
        };
        set("size", self.size.map(Value::from));
        set("wwn", self.wwn.clone().map(Value::from));
        set("write_back", self.write_back.map(Value::from));
        if let Some(alias) = self.emulate_model_alias {
            let attributes = object_mut(
                object
                    .entry("attributes")
                    .or_insert_with(|| Value::Object(Map::new())),
            );
            attributes.insert("emulate_model_alias".into(), json!(alias));
        }
    }

    /// A new fileio storage object entry with these facts, as rtslib expects it (no key it
    /// does not know: an unknown key makes it reject the object).
    pub fn storage_object(&self, name: &str) -> Value {
        let mut so = json!({
            "aio": false,
            "alua_tpgs": [],
            "attributes": {},
            "name": name,
            "plugin": "fileio",
        });
        self.write_into(&mut so);
        so
    }
}

/// The managed settings of TPG 1: what the policy sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpgSettings {
    /// rtslib treats an absent `enable` as enabled; `None` when it is not a boolean.
    pub enable: Option<bool>,
    /// The attributes the policy sets, as found (`None` when absent or not a number).
    pub attributes: BTreeMap<String, Option<i64>>,
    pub portals: BTreeSet<(IpAddr, u16)>,
}

impl TpgSettings {
    /// What the policy wants.
    pub fn wanted(target: &TargetPolicy) -> TpgSettings {
        TpgSettings {
            enable: Some(target.enabled),
            attributes: target
                .attributes
                .iter()
                .map(|(key, value)| (key.clone(), Some(i64::from(*value))))
                .collect(),
            portals: target.portals.iter().map(|p| (p.ip, p.port)).collect(),
        }
    }

    /// Reads a TPG entry, for the attributes the policy sets.
    pub fn read(tpg: &Value, target: &TargetPolicy) -> TpgSettings {
        TpgSettings {
            enable: match tpg.get("enable") {
                None => Some(true),
                Some(value) => value.as_bool(),
            },
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
        }
    }

    /// The settings that differ from `wanted` (portals as one field: they are rebuilt as a
    /// list).
    pub fn differences(&self, wanted: &TpgSettings) -> Vec<Difference> {
        let mut found = Vec::new();
        found.extend(Difference::of("TPG 1 enable", &self.enable, &wanted.enable));
        for (key, want) in &wanted.attributes {
            let got = self.attributes.get(key).copied().flatten();
            found.extend(Difference::of(
                &format!("TPG 1 attribute {key}"),
                &got,
                want,
            ));
        }
        if self.portals != wanted.portals {
            found.push(Difference {
                field: "portals".to_string(),
                found: format!("{:?}", self.portals),
                wanted: format!("{:?}", wanted.portals),
            });
        }
        found
    }
}

/// The portals of a TPG as comparable (address, port) pairs; odd entries are left out.
pub fn portals(tpg: &Value) -> BTreeSet<(IpAddr, u16)> {
    tpg.get("portals")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(portal_of)
        .collect()
}

/// A portal entry's (address, port), when it has both.
pub fn portal_of(entry: &Value) -> Option<(IpAddr, u16)> {
    let ip = Portal::parse_ip_address(entry.get("ip_address")?.as_str()?)?;
    let port = u16::try_from(entry.get("port")?.as_u64()?).ok()?;
    Some((ip, port))
}

/// Everything the tool manages in a configuration, reduced to comparable values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManagedView {
    /// fileio storage objects whose `dev` lies under the mount, by name.
    pub objects: BTreeMap<String, ManagedObject>,
    /// The policy's target, TPG 1; `None` when absent.
    pub tpg: Option<TpgView>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpgView {
    pub settings: TpgSettings,
    /// LUN index to fileio storage object name, for LUNs of managed objects.
    pub luns: BTreeMap<u32, String>,
}

impl ManagedView {
    pub fn of(config: &SaveConfig, catalogue: &Catalogue, target: &TargetPolicy) -> ManagedView {
        let objects: BTreeMap<String, ManagedObject> = config
            .storage_objects()
            .iter()
            .filter_map(|so| ManagedObject::read(so, catalogue))
            .collect();
        let tpg = config.tpg1(&target.iqn).map(|tpg| TpgView {
            settings: TpgSettings::read(tpg, target),
            luns: super::luns(tpg)
                .iter()
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

    /// One line for each managed difference from `expected`.
    pub fn differences(&self, expected: &ManagedView) -> Vec<String> {
        let mut lines = Vec::new();
        for (name, want) in &expected.objects {
            match self.objects.get(name) {
                None => lines.push(format!("storage object fileio/{name} is missing")),
                Some(got) => {
                    let found: Vec<String> = got
                        .differences(want)
                        .iter()
                        .map(Difference::as_mismatch)
                        .collect();
                    if !found.is_empty() {
                        lines.push(format!(
                            "storage object fileio/{name}: {}",
                            found.join(", ")
                        ));
                    }
                }
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
            (Some(got), Some(want)) => {
                lines.extend(
                    got.settings
                        .differences(&want.settings)
                        .iter()
                        .map(Difference::as_mismatch),
                );
                if got.luns != want.luns {
                    lines.push(format!("LUNs are {:?}, expected {:?}", got.luns, want.luns));
                }
            }
            (None, Some(_)) => lines.push("the target or its TPG 1 is missing".to_string()),
            (Some(_), None) => lines.push("an unexpected target TPG 1 exists".to_string()),
            (None, None) => {}
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lio::SaveConfig;
    use crate::policy::{HostFacts, Policy};

    fn policy() -> Policy {
        let text = "target:\n  portals: [\"10.0.0.1:3260\"]\ncatalogue:\n  mount: /m\n  ims:\n    file: /x\n";
        Policy::from_yaml(text, &HostFacts::from_hostname("h"))
            .unwrap()
            .0
    }

    #[test]
    fn a_written_object_reads_back_as_wanted() {
        let policy = policy();
        let wanted = ManagedObject::wanted("/m/PE/a", 10, "abc");
        let so = wanted.storage_object("n1");
        let (name, read) = ManagedObject::read(&so, &policy.catalogue).unwrap();
        assert_eq!(name, "n1");
        assert_eq!(read, wanted);
        assert!(read.differences(&wanted).is_empty());
    }

    #[test]
    fn differences_read_as_changes_and_as_mismatches() {
        let policy = policy();
        let so = json!({"plugin": "fileio", "name": "n", "dev": "/m/a", "size": 5,
                        "attributes": {"emulate_model_alias": 0, "block_size": 512}});
        let (_, found) = ManagedObject::read(&so, &policy.catalogue).unwrap();
        let wanted = ManagedObject::wanted("/m/a", 6, "w");
        let changes: Vec<String> = found
            .differences(&wanted)
            .iter()
            .map(Difference::as_change)
            .collect();
        assert_eq!(
            changes,
            [
                "size 5 -> 6",
                "wwn unset -> w",
                "write_back unset -> false",
                "emulate_model_alias 0 -> 1"
            ]
        );
        let mut patched = so.clone();
        wanted.write_into(&mut patched);
        assert_eq!(patched["attributes"]["block_size"], json!(512));
        let (_, now) = ManagedObject::read(&patched, &policy.catalogue).unwrap();
        assert_eq!(now, wanted);
    }

    /// What verification parses (the managed keys only) reads as the whole file does, on a
    /// file `targetctl save` wrote and on one with the managed facts changed.
    #[test]
    fn the_trimmed_parse_reads_the_same_view() {
        let text = include_str!("../../tests/cases/02-adopt-targetctl-save/current.json");
        let policy = Policy::from_yaml(
            include_str!("../../tests/cases/02-adopt-targetctl-save/policy.yaml"),
            &HostFacts::from_hostname("h"),
        )
        .unwrap()
        .0;
        let changed = text
            .replace("\"emulate_model_alias\": 1", "\"emulate_model_alias\": 0")
            .replace("\"write_back\": false", "\"write_back\": true");
        assert_ne!(changed, text);
        for text in [text, changed.as_str()] {
            let whole = SaveConfig::parse(text.as_bytes()).unwrap();
            let trimmed = SaveConfig::read_managed(text.as_bytes()).unwrap();
            let view = ManagedView::of(&whole, &policy.catalogue, &policy.target);
            assert!(!view.objects.is_empty());
            assert_eq!(
                ManagedView::of(&trimmed, &policy.catalogue, &policy.target),
                view
            );
            assert!(trimmed.to_canonical().len() < whole.to_canonical().len() / 2);
        }
    }

    #[test]
    fn objects_outside_the_mount_are_not_managed() {
        let policy = policy();
        for so in [
            json!({"plugin": "fileio", "name": "n", "dev": "/elsewhere/a"}),
            json!({"plugin": "block", "name": "n", "dev": "/m/a"}),
            json!({"plugin": "fileio", "name": "n"}),
        ] {
            assert!(
                ManagedObject::read(&so, &policy.catalogue).is_none(),
                "{so}"
            );
        }
    }
}
