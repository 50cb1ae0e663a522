//! What the catalogue holds at one moment: plain data, produced by a source and consumed by
//! the pure planner. Golden tests write it as JSON (`tests/cases/*/snapshot.json`).

use crate::image::ImageEntry;
use crate::manifest::RootfsArtifact;
use crate::skip::SkipReason;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// The IMS answer, record by record, in the order IMS sent it.
    #[serde(default)]
    pub images: Vec<ImageEntry>,
    /// The outcome of reading each needed manifest, by the manifest's object key.
    #[serde(default)]
    pub manifests: BTreeMap<String, ManifestRead>,
    /// S3's own facts for the keys that matter (size, ETag), or `None` when the source cannot
    /// tell (offline mode: the manifest etag is trusted).
    #[serde(default)]
    pub objects: Option<BTreeMap<String, ObjectInfo>>,
    /// Candidate PE images: objects under the PE prefixes, sorted by key.
    #[serde(default)]
    pub pe_objects: Vec<PeObject>,
    /// What the s3fs mount holds for every key above that matters.
    #[serde(default)]
    pub mount: BTreeMap<String, MountEntry>,
}

/// A manifest, read and reduced to its rootfs artifact, or why that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ManifestRead {
    Rootfs(RootfsArtifact),
    Skip(SkipReason),
}

impl ManifestRead {
    /// Parses manifest bytes (see [`crate::manifest::parse`]).
    pub fn from_bytes(bytes: &[u8]) -> ManifestRead {
        match crate::manifest::parse(bytes) {
            Ok(artifact) => ManifestRead::Rootfs(artifact),
            Err(reason) => ManifestRead::Skip(reason),
        }
    }
}

/// An S3 object as the bucket listing reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    pub size: u64,
    /// ETag with its quotes stripped.
    pub etag: String,
}

/// A candidate PE image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeObject {
    pub key: String,
    /// Size in S3 (live), or of the file in the mount (offline).
    pub size: u64,
    #[serde(default)]
    pub etag: Option<String>,
}

/// One key, looked up in the s3fs mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountEntry {
    File {
        size: u64,
    },
    Missing,
    /// Exists but is not a regular file (a directory, a socket...).
    NotAFile,
    /// stat failed with something other than "not found" (an s3fs outage gives EIO).
    Error(String),
}

impl Snapshot {
    /// Whether S3 ETags were checked (rule 3 of the projection rules).
    pub fn verifies_etags(&self) -> bool {
        self.objects.is_some()
    }
}
