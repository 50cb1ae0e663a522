//! LIO's `saveconfig.json`: the model, its canonical text, the managed facts, and the edits
//! the planner makes to it.
//!
//! The file is kept as JSON values rather than typed structs, so that every storage object,
//! target, attribute and field the tool does not manage survives a round trip untouched, and
//! an odd field in a part we do not own can never stop a run.

pub mod canonical;
pub mod edit;
pub mod managed;
pub mod running;
pub mod trim;

use crate::describe::json_value as describe;
use crate::error::ConfigProblem;
use serde_json::{Map, Value};
use std::sync::Arc;

/// The key names rtslib uses at the top level.
pub const STORAGE_OBJECTS: &str = "storage_objects";
pub const TARGETS: &str = "targets";
pub const FABRIC_MODULES: &str = "fabric_modules";

/// A parsed `saveconfig.json`.
///
/// Storage objects, and the rest of the file, are shared between copies until edited: the
/// planner starts the desired configuration as a copy of the current one, and at 5,500 LUNs
/// a deep copy was 12 MiB for the objects and 3.5 MiB for the target's LUN list, and a tenth
/// of a no-op run's instructions, for parts that mostly stay as they are.
#[derive(Debug, Clone)]
pub struct SaveConfig {
    /// Every top-level key but `storage_objects`.
    root: Arc<Map<String, Value>>,
    /// `None` when the file has no `storage_objects` key.
    storage_objects: Option<Vec<Arc<Value>>>,
}

impl SaveConfig {
    /// What a host with no configuration has (and what a missing file means).
    pub fn empty() -> SaveConfig {
        let mut root = Map::new();
        for key in [FABRIC_MODULES, TARGETS] {
            root.insert(key.to_string(), Value::Array(Vec::new()));
        }
        SaveConfig {
            root: Arc::new(root),
            storage_objects: Some(Vec::new()),
        }
    }

    /// Parses the file's bytes. An empty file, text that is not JSON, or a shape the tool
    /// cannot edit safely is an error: the caller refuses to apply over it.
    pub fn parse(bytes: &[u8]) -> Result<SaveConfig, ConfigProblem> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ConfigProblem::Empty);
        }
        let value: Value = serde_json::from_slice(bytes).map_err(ConfigProblem::NotJson)?;
        SaveConfig::from_value(value)
    }

    /// Reads a file for what [`managed::ManagedView`] reads only: the managed keys of its
    /// storage objects and targets (see [`trim`]), parsed as it is read. Checked as
    /// [`SaveConfig::parse`] checks; never written back.
    pub fn read_managed(file: impl std::io::Read) -> Result<SaveConfig, ConfigProblem> {
        let mut reader = std::io::BufReader::new(file);
        let starts_empty = std::io::BufRead::fill_buf(&mut reader)
            .map(|head| head.iter().all(u8::is_ascii_whitespace))
            .unwrap_or(false);
        let value = trim::read(reader, &trim::MANAGED).map_err(|e| {
            if starts_empty && e.is_eof() {
                ConfigProblem::Empty
            } else {
                ConfigProblem::NotJson(e)
            }
        })?;
        SaveConfig::from_value(value)
    }

    fn from_value(value: Value) -> Result<SaveConfig, ConfigProblem> {
        let Value::Object(mut root) = value else {
            return Err(ConfigProblem::NotAnObject(describe(&value)));
        };
        for key in [FABRIC_MODULES, STORAGE_OBJECTS, TARGETS] {
            match root.get(key) {
                None | Some(Value::Array(_)) => {}
                Some(other) => {
                    return Err(ConfigProblem::NotAList {
                        key,
                        found: describe(other),
                    })
                }
            }
        }
        let storage_objects = match root.remove(STORAGE_OBJECTS) {
            Some(Value::Array(list)) => Some(list.into_iter().map(Arc::new).collect()),
            _ => None,
        };
        Ok(SaveConfig {
            root: Arc::new(root),
            storage_objects,
        })
    }

    /// The storage object entries (edit one through [`Arc::make_mut`]: copies of this
    /// configuration share them until then).
    pub fn storage_objects(&self) -> &[Arc<Value>] {
        self.storage_objects.as_deref().unwrap_or(&[])
    }

    pub fn storage_objects_mut(&mut self) -> &mut Vec<Arc<Value>> {
        self.storage_objects.get_or_insert_with(Vec::new)
    }

    pub fn targets(&self) -> &[Value] {
        self.list(TARGETS)
    }

    /// The target entries, to edit: the first call copies what copies of this configuration
    /// shared.
    pub fn targets_mut(&mut self) -> &mut Vec<Value> {
        list_mut(Arc::make_mut(&mut self.root), TARGETS)
    }

    /// TPG 1 of the iSCSI target `iqn`, if the configuration has it.
    pub fn tpg1(&self, iqn: &str) -> Option<&Value> {
        self.targets()
            .iter()
            .find(|t| is_target(t, iqn))?
            .get("tpgs")?
            .as_array()?
            .iter()
            .find(|tpg| is_tpg1(tpg))
    }

    fn list(&self, key: &str) -> &[Value] {
        match self.root.get(key) {
            Some(Value::Array(list)) => list,
            _ => &[],
        }
    }

    /// The file as rtslib writes it: keys sorted, 2-space indent, trailing newline.
    pub fn to_canonical(&self) -> String {
        canonical::to_string(self)
    }
}

/// Parts still shared with a copy are equal without a look inside them (a no-op plan compares
/// 5,500 unedited objects).
impl PartialEq for SaveConfig {
    fn eq(&self, other: &SaveConfig) -> bool {
        let same_objects = match (&self.storage_objects, &other.storage_objects) {
            (Some(mine), Some(theirs)) => {
                mine.len() == theirs.len()
                    && mine
                        .iter()
                        .zip(theirs)
                        .all(|(a, b)| Arc::ptr_eq(a, b) || a == b)
            }
            (None, None) => true,
            _ => false,
        };
        same_objects && (Arc::ptr_eq(&self.root, &other.root) || self.root == other.root)
    }
}

/// The file's object with its keys in order, `storage_objects` among them.
impl serde::Serialize for SaveConfig {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let objects = self
            .storage_objects
            .as_ref()
            .map(|list| Objects(list.as_slice()));
        let mut map =
            serializer.serialize_map(Some(self.root.len() + usize::from(objects.is_some())))?;
        let mut pending = objects.as_ref();
        for (key, value) in self.root.iter() {
            if key.as_str() > STORAGE_OBJECTS {
                if let Some(objects) = pending.take() {
                    map.serialize_entry(STORAGE_OBJECTS, objects)?;
                }
            }
            map.serialize_entry(key, value)?;
        }
        if let Some(objects) = pending {
            map.serialize_entry(STORAGE_OBJECTS, objects)?;
        }
        map.end()
    }
}

/// Shared storage object entries, written as the list they are.
struct Objects<'a>(&'a [Arc<Value>]);

impl serde::Serialize for Objects<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|object| object.as_ref()))
    }
}

/// The list at `key` of a JSON object, made a list if absent or not one. (`parse` refuses a
/// file whose top-level lists are not lists; deeper in the file, an odd value we must edit
/// is replaced.)
pub fn list_mut<'a>(object: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let slot = object
        .entry(key)
        .or_insert_with(|| Value::Array(Vec::new()));
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    match slot {
        Value::Array(list) => list,
        _ => unreachable!("the slot was just made a list"),
    }
}

/// The object a JSON value is, made an empty object if it is not one.
pub fn object_mut(value: &mut Value) -> &mut Map<String, Value> {
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    match value {
        Value::Object(object) => object,
        _ => unreachable!("the value was just made an object"),
    }
}

/// Whether a target entry is the iSCSI target `iqn` (iSCSI names are case-insensitive).
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

/// The LUN entries of a TPG.
pub fn luns(tpg: &Value) -> &[Value] {
    tpg.get("luns")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// A storage object's path as LUNs refer to it: `/backstores/<plugin>/<name>`.
pub fn storage_object_path(plugin: &str, name: &str) -> String {
    format!("/backstores/{plugin}/{name}")
}

/// The path a storage object entry is referred to by, when it names its plugin and name.
pub fn path_of(so: &Value) -> Option<String> {
    let plugin = so.get("plugin")?.as_str()?;
    let name = so.get("name")?.as_str()?;
    Some(storage_object_path(plugin, name))
}

/// The fileio storage object name a LUN's `storage_object` refers to, if it is one.
pub fn fileio_name(lun: &Value) -> Option<&str> {
    lun.get("storage_object")
        .and_then(Value::as_str)
        .and_then(|path| path.strip_prefix("/backstores/fileio/"))
}

/// A LUN's index, when it is a valid one.
pub fn lun_index(lun: &Value) -> Option<u32> {
    lun.get("index")
        .and_then(Value::as_u64)
        .and_then(|index| u32::try_from(index).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_it_cannot_edit() {
        for bytes in [
            &b""[..],
            b"  \n",
            b"{",
            b"[]",
            b"null",
            b"{\"targets\": {}}",
        ] {
            assert!(SaveConfig::parse(bytes).is_err(), "{bytes:?}");
            assert!(SaveConfig::read_managed(bytes).is_err(), "{bytes:?}");
        }
        for bytes in [&b""[..], b"  \n"] {
            assert!(matches!(
                SaveConfig::read_managed(bytes),
                Err(ConfigProblem::Empty)
            ));
        }
    }

    #[test]
    fn keeps_unknown_top_level_keys_and_missing_lists() {
        let config = SaveConfig::parse(br#"{"targets": [], "x-note": 1}"#).unwrap();
        assert!(config.storage_objects().is_empty());
        assert_eq!(
            config.to_canonical(),
            "{\n  \"targets\": [],\n  \"x-note\": 1\n}\n"
        );
    }

    #[test]
    fn storage_objects_keep_their_place_and_copies_share_them_until_edited() {
        let text = "{\n  \"a\": 1,\n  \"fabric_modules\": [],\n  \"storage_objects\": [\n    {\n      \"name\": \"n\"\n    }\n  ],\n  \"sz\": true,\n  \"targets\": []\n}\n";
        let config = SaveConfig::parse(text.as_bytes()).unwrap();
        assert_eq!(config.to_canonical(), text);
        let last = "{\n  \"a\": 1,\n  \"storage_objects\": []\n}\n";
        assert_eq!(
            SaveConfig::parse(last.as_bytes()).unwrap().to_canonical(),
            last
        );

        let mut copy = config.clone();
        assert!(Arc::ptr_eq(
            &copy.storage_objects()[0],
            &config.storage_objects()[0]
        ));
        if let Some(first) = copy.storage_objects_mut().first_mut() {
            object_mut(Arc::make_mut(first)).insert("dev".into(), Value::from("/m/a"));
        }
        assert_ne!(copy, config);
        assert_eq!(config.to_canonical(), text);
        assert!(copy.to_canonical().contains("\"dev\": \"/m/a\""));

        // The rest of the file too, until the targets are edited.
        let mut copy = config.clone();
        assert!(Arc::ptr_eq(&copy.root, &config.root));
        assert_eq!(copy, config);
        copy.targets_mut().push(Value::from("t"));
        assert!(!Arc::ptr_eq(&copy.root, &config.root));
        assert_ne!(copy, config);
        assert_eq!(config.to_canonical(), text);
    }

    #[test]
    fn finds_tpg1_of_the_target_by_its_iqn_in_any_case() {
        let config = SaveConfig::parse(
            br#"{"targets": [{"fabric": "iscsi", "wwn": "IQN.X:Y", "tpgs": [{"tag": 2}, {"tag": 1, "luns": [{"index": 3}]}]}]}"#,
        )
        .unwrap();
        let tpg = config.tpg1("iqn.x:y").unwrap();
        assert_eq!(luns(tpg).len(), 1);
        assert!(config.tpg1("iqn.x:z").is_none());
    }
}
