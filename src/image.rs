//! IMS image records, read leniently, and the policy's tag filter.
//!
//! IMS answers with a bare JSON array whose records vary by IMS version: `metadata` absent
//! before 3.16, `link: null` for an image never linked, `etag: ""`, and in the wild an old
//! `{"key": .., "value": ..}` form. Each record is parsed on its own so that one odd record
//! is one skipped image, never a failed pass.

use crate::describe::json_value as describe;
use crate::error::AnswerProblem;
use crate::s3path::{self, KeyProblem};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The largest IMS answer read (from a file or over HTTP): 32 MiB, about 30,000 records (a
/// CSM system's thousands are a few MiB). A larger one is a source failure rather than a
/// run that takes gigabytes of memory.
pub const MAX_ANSWER_BYTES: u64 = 32 * 1024 * 1024;

/// The IMS answer (`GET /v3/images`, or a saved copy of it) must be a JSON array; its
/// elements are parsed one by one by [`parse_record`], as they are read: one record's JSON
/// tree at a time, not the whole answer's.
pub fn parse_answer(bytes: &[u8]) -> Result<Vec<ImageEntry>, AnswerProblem> {
    let starts_an_array = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'[');
    if !starts_an_array {
        return match serde_json::from_slice::<Value>(bytes) {
            Ok(other) => Err(AnswerProblem::NotAnArray(describe(&other))),
            Err(e) => Err(AnswerProblem::NotJson(e)),
        };
    }
    serde_json::from_slice::<Records>(bytes)
        .map(|records| records.0)
        .map_err(AnswerProblem::NotJson)
}

/// The entries of an IMS answer, each parsed as soon as its element is read.
struct Records(Vec<ImageEntry>);

impl<'de> Deserialize<'de> for Records {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Records;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON array of images")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Records, A::Error> {
                let mut entries = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(value) = seq.next_element::<Value>()? {
                    entries.push(parse_record(&value));
                }
                Ok(Records(entries))
            }
        }
        deserializer.deserialize_seq(Visitor)
    }
}

/// One entry of the IMS answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum ImageEntry {
    Valid(ImageRecord),
    /// Not an object, or no string `id`: reported as `record_invalid`.
    Invalid {
        id: Option<String>,
        name: Option<String>,
        problem: String,
    },
}

/// The parts of an IMS image record the tool uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// `link.path`, when the record has one that is a non-empty string.
    #[serde(default)]
    pub link_path: Option<String>,
    #[serde(default)]
    pub metadata: Metadata,
}

impl ImageRecord {
    /// The key of the image's manifest in `bucket`: the first step from an image to its
    /// rootfs file (the rest is [`crate::snapshot::Snapshot::trail`]). `None` without a link.
    pub fn manifest_key(&self, bucket: &str) -> Option<Result<&str, KeyProblem>> {
        let link = self.link_path.as_deref()?;
        Some(s3path::key_in_bucket(link, bucket))
    }
}

/// The record's `metadata`, as found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "form", content = "value", rename_all = "snake_case")]
pub enum Metadata {
    /// No `metadata` key at all (IMS older than 3.16, before tagging existed).
    #[default]
    Absent,
    /// A JSON object; values that are not strings are kept as their JSON text.
    Map(Tags),
    /// `metadata` is present but null, a list, a number...: described for the skip reason.
    Other(String),
}

/// A record's metadata pairs, in key order. A record holds a tag or two: a map for each of
/// 5,000 records took 3 MB (a map node is 600 bytes however few its keys), the pairs 0.3 MB.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tags(Vec<(String, MetadataValue)>);

impl Tags {
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        let at = self.0.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok()?;
        self.0.get(at).map(|(_, value)| value)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
}

/// In key order, the last of a repeated key kept (as a map keeps it).
impl FromIterator<(String, MetadataValue)> for Tags {
    fn from_iter<I: IntoIterator<Item = (String, MetadataValue)>>(pairs: I) -> Tags {
        let mut tags: Vec<(String, MetadataValue)> = pairs.into_iter().collect();
        // Stable: of one key's pairs, the last stays last; reversed, dedup keeps it.
        tags.sort_by(|(a, _), (b, _)| a.cmp(b));
        tags.reverse();
        tags.dedup_by(|(a, _), (b, _)| a == b);
        tags.reverse();
        tags.shrink_to_fit();
        Tags(tags)
    }
}

/// Written and read as the JSON object it came from.
impl Serialize for Tags {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(key, value)| (key, value)))
    }
}

impl<'de> Deserialize<'de> for Tags {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Tags, D::Error> {
        BTreeMap::<String, MetadataValue>::deserialize(deserializer).map(Tags::from_iter)
    }
}

/// A metadata value: tags are strings, but records in the wild hold `true` or numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MetadataValue {
    Text(String),
    /// Any other JSON value, kept as its JSON text.
    Json(Value),
}

/// Parses one element of the IMS answer; never fails.
pub fn parse_record(value: &Value) -> ImageEntry {
    let Some(object) = value.as_object() else {
        return ImageEntry::Invalid {
            id: None,
            name: None,
            problem: format!("record is {}, not an object", describe(value)),
        };
    };
    let name = object
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let id = match object.get("id") {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        other => {
            return ImageEntry::Invalid {
                id: other.and_then(|v| v.as_str()).map(str::to_owned),
                name,
                problem: match other {
                    None => "record has no id".to_string(),
                    Some(v) => format!("record id is {}, not a non-empty string", describe(v)),
                },
            }
        }
    };
    let link_path = object
        .get("link")
        .and_then(|link| link.get("path"))
        .and_then(Value::as_str)
        .filter(|path| !path.is_empty())
        .map(str::to_owned);
    let metadata = match object.get("metadata") {
        None => Metadata::Absent,
        Some(Value::Object(map)) => Metadata::Map(
            map.iter()
                .map(|(key, value)| {
                    let value = match value {
                        Value::String(text) => MetadataValue::Text(text.clone()),
                        other => MetadataValue::Json(other.clone()),
                    };
                    (key.clone(), value)
                })
                .collect(),
        ),
        Some(other) => Metadata::Other(describe(other)),
    };
    ImageEntry::Valid(ImageRecord {
        id,
        name: name.unwrap_or_default(),
        link_path,
        metadata,
    })
}

/// What to do with records that have no `metadata` key at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Untagged {
    /// Project them: the old agent's rule for IMS without tagging.
    Project,
    Skip,
}

/// The policy's tag filter (`catalogue.ims.select`).
/// Why a record does not pass the tag filter (the detail of its `not_tagged` skip).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotSelected(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// Every pair must match, as strings.
    pub metadata: BTreeMap<String, String>,
    pub untagged: Untagged,
}

impl Selector {
    /// `Ok(())` when the record passes the filter, else why not (for a `not_tagged` skip).
    pub fn check(&self, record: &ImageRecord) -> Result<(), NotSelected> {
        let map = match &record.metadata {
            Metadata::Absent => {
                return match self.untagged {
                    Untagged::Project => Ok(()),
                    Untagged::Skip => Err(NotSelected(
                        "record has no metadata and the policy skips untagged records".to_string(),
                    )),
                }
            }
            Metadata::Other(what) => {
                return Err(NotSelected(format!("metadata is {what}, not an object")))
            }
            Metadata::Map(map) => map,
        };
        for (key, wanted) in &self.metadata {
            match map.get(key) {
                Some(MetadataValue::Text(found)) if found == wanted => {}
                Some(MetadataValue::Text(found)) => {
                    return Err(NotSelected(format!(
                        "metadata {key:?} is {found:?}, not {wanted:?}"
                    )))
                }
                Some(MetadataValue::Json(found)) => {
                    return Err(NotSelected(format!(
                        "metadata {key:?} is {}, not the string {wanted:?}",
                        describe(found)
                    )))
                }
                None if is_key_value_form(map, key) => {
                    return Err(NotSelected(format!(
                    "metadata uses the old {{\"key\": {key:?}, \"value\": ..}} form (an IMS bug); \
                         not tagged under the strict rule: set metadata {key:?} to {wanted:?}"
                )))
                }
                None => return Err(NotSelected(format!("metadata has no {key:?} tag"))),
            }
        }
        Ok(())
    }
}

fn is_key_value_form(map: &Tags, key: &str) -> bool {
    matches!(map.get("key"), Some(MetadataValue::Text(k)) if k == key) && map.contains_key("value")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn selector() -> Selector {
        Selector {
            metadata: [("sbps-project".to_string(), "true".to_string())].into(),
            untagged: Untagged::Project,
        }
    }

    fn valid(value: Value) -> ImageRecord {
        match parse_record(&value) {
            ImageEntry::Valid(record) => record,
            other => panic!("expected a valid record, got {other:?}"),
        }
    }

    #[test]
    fn tagged_record_passes() {
        let record = valid(
            json!({"id": "a", "name": "n", "metadata": {"sbps-project": "true"},
                                  "link": {"path": "s3://b/a/manifest.json", "etag": ""}}),
        );
        assert_eq!(record.link_path.as_deref(), Some("s3://b/a/manifest.json"));
        assert_eq!(selector().check(&record), Ok(()));
    }

    #[test]
    fn absent_metadata_follows_the_untagged_setting() {
        let record = valid(json!({"id": "a"}));
        assert_eq!(selector().check(&record), Ok(()));
        let skip = Selector {
            untagged: Untagged::Skip,
            ..selector()
        };
        assert!(skip.check(&record).is_err());
    }

    #[test]
    fn present_but_untagged_metadata_is_not_tagged() {
        for metadata in [
            json!({}),
            json!({"sbps-project": "false"}),
            json!({"other": "x"}),
        ] {
            let record = valid(json!({"id": "a", "metadata": metadata}));
            assert!(selector().check(&record).is_err(), "{metadata}");
        }
    }

    #[test]
    fn odd_metadata_shapes_are_reasons_not_crashes() {
        let record = valid(json!({"id": "a", "metadata": null}));
        assert_eq!(
            selector().check(&record),
            Err(NotSelected("metadata is null, not an object".to_string()))
        );
        let record = valid(json!({"id": "a", "metadata": {"sbps-project": true}}));
        let reason = selector().check(&record).unwrap_err().0;
        assert!(reason.contains("the boolean true"), "{reason}");
        let record =
            valid(json!({"id": "a", "metadata": {"key": "sbps-project", "value": "true"}}));
        let reason = selector().check(&record).unwrap_err().0;
        assert!(reason.contains("old"), "{reason}");
    }

    #[test]
    fn link_null_or_odd_is_no_link_path() {
        for link in [
            json!(null),
            json!({"path": null}),
            json!({"path": ""}),
            json!("s3://x"),
            json!({"path": 7}),
        ] {
            assert_eq!(valid(json!({"id": "a", "link": link})).link_path, None);
        }
    }

    #[test]
    fn records_without_a_string_id_are_invalid_entries() {
        for value in [
            json!(null),
            json!([1]),
            json!("x"),
            json!({"name": "n"}),
            json!({"id": 5}),
            json!({"id": ""}),
        ] {
            assert!(
                matches!(parse_record(&value), ImageEntry::Invalid { .. }),
                "{value}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_tolerated() {
        let record = valid(
            json!({"id": "a", "name": 7, "arch": "aarch64", "created": "2024-01-01T00:00:00",
                                  "new_field": {"x": 1}}),
        );
        assert_eq!(record.name, "");
    }

    #[test]
    fn tags_are_found_by_key_and_written_back_as_the_object_they_were() {
        let record = valid(json!({"id": "a", "metadata": {
            "z": "last", "sbps-project": "true", "a": 1, "m": {"x": [true]}}}));
        let Metadata::Map(tags) = &record.metadata else {
            panic!("{record:?}")
        };
        assert_eq!(
            tags.get("sbps-project"),
            Some(&MetadataValue::Text("true".into()))
        );
        assert_eq!(tags.get("a"), Some(&MetadataValue::Json(json!(1))));
        assert!(tags.contains_key("z") && tags.contains_key("m"));
        assert_eq!(tags.get("b"), None);
        let written = serde_json::to_value(&record.metadata).unwrap();
        assert_eq!(
            written,
            json!({"form": "map", "value": {"a": 1, "m": {"x": [true]}, "sbps-project": "true", "z": "last"}})
        );
        let read: Metadata = serde_json::from_value(written).unwrap();
        assert_eq!(read, record.metadata);

        // Pairs given out of order, a key twice: in order, the last one kept.
        let tags: Tags = [("b", "1"), ("a", "2"), ("b", "3")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), MetadataValue::Text(v.to_string())))
            .collect();
        assert_eq!(tags.get("b"), Some(&MetadataValue::Text("3".into())));
        assert_eq!(
            serde_json::to_value(&tags).unwrap(),
            json!({"a": "2", "b": "3"})
        );
    }
}
