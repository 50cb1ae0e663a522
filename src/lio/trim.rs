//! Parsing a `saveconfig.json` for what the tool checks in it, without building the rest.
//!
//! rtslib saves some forty attributes with every storage object; a verification of 5,500
//! LUNs read them all into a JSON tree four times the file's size (32 MiB), to look at six
//! keys of each. Here the parser skips what no check reads while it goes.

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// Which keys of a JSON object to keep: `None` keeps the value whole, `Some` trims it in
/// turn. A list is trimmed element by element; anything else that is not an object becomes
/// `null` (no check reads it).
#[derive(Debug)]
pub struct Keep(pub &'static [(&'static str, Option<&'static Keep>)]);

/// A storage object: the keys [`super::managed::ManagedObject::read`] reads.
const STORAGE_OBJECT: Keep = Keep(&[
    ("plugin", None),
    ("name", None),
    ("dev", None),
    ("size", None),
    ("wwn", None),
    ("write_back", None),
    ("attributes", Some(&Keep(&[("emulate_model_alias", None)]))),
]);

/// A LUN entry: which object, at which index.
const LUN: Keep = Keep(&[("index", None), ("storage_object", None)]);

/// A TPG: what [`super::managed::TpgSettings::read`] reads, and its LUNs.
const TPG: Keep = Keep(&[
    ("tag", None),
    ("enable", None),
    ("attributes", None),
    ("portals", None),
    ("luns", Some(&LUN)),
]);

/// A target: what finds it and its TPGs.
const TARGET: Keep = Keep(&[("fabric", None), ("wwn", None), ("tpgs", Some(&TPG))]);

/// The file: its storage objects and targets trimmed to what the checks read, the rest
/// left out.
pub const MANAGED: Keep = Keep(&[
    (super::STORAGE_OBJECTS, Some(&STORAGE_OBJECT)),
    (super::TARGETS, Some(&TARGET)),
]);

/// Parses JSON text as it is read, keeping only what `keep` names.
pub fn read(reader: impl std::io::Read, keep: &Keep) -> Result<Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_reader(reader);
    let value = keep.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

impl<'de> DeserializeSeed<'de> for &Keep {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for &Keep {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut kept = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match self.0.iter().find(|(name, _)| *name == key) {
                Some((_, Some(inner))) => {
                    let value = map.next_value_seed(*inner)?;
                    kept.insert(key, value);
                }
                Some((_, None)) => {
                    let value = map.next_value::<Value>()?;
                    kept.insert(key, value);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(kept))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut kept = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(value) = seq.next_element_seed(self)? {
            kept.push(value);
        }
        Ok(Value::Array(kept))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_str<E>(self, _: &str) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_the_managed_keys_and_drops_the_rest() {
        let text = br#"{"fabric_modules": [{"name": "iscsi"}], "x": 1,
            "storage_objects": [
              {"plugin": "fileio", "name": "n", "dev": "/m/a", "size": 5, "wwn": "w",
               "write_back": false, "aio": false, "alua_tpgs": [{"name": "default_tg_pt_gp"}],
               "attributes": {"emulate_model_alias": 1, "block_size": 512, "x": [1, {"y": 2}]}},
              "odd", 7, null, [1, 2], {"attributes": "not an object"}],
            "targets": [{"fabric": "iscsi", "wwn": "iqn.x", "tpgs": [{"tag": 1, "enable": true,
              "node_acls": [{"node_wwn": "iqn.i"}], "parameters": {"x": "y"},
              "attributes": {"authentication": 0}, "portals": [{"ip_address": "0.0.0.0", "port": 3260}],
              "luns": [{"index": 0, "storage_object": "/backstores/fileio/n", "alias": "a",
                        "alua_tg_pt_gp_name": "default_tg_pt_gp"}]}]}]}"#;
        let kept = read(&text[..], &MANAGED).unwrap();
        assert_eq!(
            kept,
            json!({
                "storage_objects": [
                    {"plugin": "fileio", "name": "n", "dev": "/m/a", "size": 5, "wwn": "w",
                     "write_back": false, "attributes": {"emulate_model_alias": 1}},
                    null, null, null, [null, null], {"attributes": null}],
                "targets": [{"fabric": "iscsi", "wwn": "iqn.x", "tpgs": [{"tag": 1, "enable": true,
                    "attributes": {"authentication": 0},
                    "portals": [{"ip_address": "0.0.0.0", "port": 3260}],
                    "luns": [{"index": 0, "storage_object": "/backstores/fileio/n"}]}]}]
            })
        );
    }

    #[test]
    fn what_is_not_json_is_an_error() {
        for text in [&b""[..], b"{", b"{} {}", b"{\"storage_objects\": [1,]}"] {
            assert!(read(text, &MANAGED).is_err(), "{text:?}");
        }
    }
}
