//! LIO's `saveconfig.json`: the model, its canonical text, and the managed view.
//!
//! The file is kept as JSON values rather than typed structs, so that every storage object,
//! target, attribute and field the tool does not manage survives a round trip untouched, and
//! an odd field in a part we do not own can never stop a run.

pub mod canonical;
pub mod managed;

use serde_json::{Map, Value};

/// The key names rtslib uses at the top level.
pub const STORAGE_OBJECTS: &str = "storage_objects";
pub const TARGETS: &str = "targets";
pub const FABRIC_MODULES: &str = "fabric_modules";

/// A parsed `saveconfig.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct SaveConfig {
    root: Map<String, Value>,
}

impl SaveConfig {
    /// What a host with no configuration has (and what a missing file means).
    pub fn empty() -> SaveConfig {
        let mut root = Map::new();
        for key in [FABRIC_MODULES, STORAGE_OBJECTS, TARGETS] {
            root.insert(key.to_string(), Value::Array(Vec::new()));
        }
        SaveConfig { root }
    }

    /// Parses the file's bytes. An empty file, text that is not JSON, or a shape the tool
    /// cannot edit safely is an error: the caller refuses to apply over it.
    pub fn parse(bytes: &[u8]) -> Result<SaveConfig, String> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err("the file is empty".to_string());
        }
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("the file is not JSON: {e}"))?;
        let Value::Object(root) = value else {
            return Err(format!(
                "the file holds {}, not a JSON object",
                crate::image::describe(&value)
            ));
        };
        for key in [FABRIC_MODULES, STORAGE_OBJECTS, TARGETS] {
            match root.get(key) {
                None | Some(Value::Array(_)) => {}
                Some(other) => {
                    return Err(format!(
                        "\"{key}\" is {}, not a list",
                        crate::image::describe(other)
                    ))
                }
            }
        }
        Ok(SaveConfig { root })
    }

    pub fn storage_objects(&self) -> &[Value] {
        self.list(STORAGE_OBJECTS)
    }

    pub fn storage_objects_mut(&mut self) -> &mut Vec<Value> {
        self.list_mut(STORAGE_OBJECTS)
    }

    pub fn targets(&self) -> &[Value] {
        self.list(TARGETS)
    }

    pub fn targets_mut(&mut self) -> &mut Vec<Value> {
        self.list_mut(TARGETS)
    }

    fn list(&self, key: &str) -> &[Value] {
        match self.root.get(key) {
            Some(Value::Array(list)) => list,
            _ => &[],
        }
    }

    fn list_mut(&mut self, key: &str) -> &mut Vec<Value> {
        let slot = self
            .root
            .entry(key.to_string())
            .or_insert_with(|| Value::Array(Vec::new()));
        if !slot.is_array() {
            // parse() refuses such files; this keeps the accessor total anyway.
            *slot = Value::Array(Vec::new());
        }
        match slot {
            Value::Array(list) => list,
            _ => unreachable!("slot was just made an array"),
        }
    }

    /// The file as rtslib writes it: keys sorted, 2-space indent, trailing newline.
    pub fn to_canonical(&self) -> String {
        canonical::to_string(&Value::Object(self.root.clone()))
    }
}

/// A storage object's path as LUNs refer to it: `/backstores/<plugin>/<name>`.
pub fn storage_object_path(plugin: &str, name: &str) -> String {
    format!("/backstores/{plugin}/{name}")
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
}
