//! What the catalogue holds at one moment: plain data, produced by a source and consumed by
//! the pure planner. Golden tests write it as JSON (`tests/cases/*/snapshot.json`).

use crate::image::{ImageEntry, ImageRecord};
use crate::manifest::RootfsArtifact;
use crate::s3path::KeyProblem;
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
    /// Candidate objects under the prefix sources (PE and `prefix_sources`), sorted by key.
    #[serde(default)]
    pub pe_objects: Vec<PeObject>,
    /// What the s3fs mount holds for every key above that matters.
    #[serde(default)]
    pub mount: BTreeMap<String, MountEntry>,
    /// Folders under the prefix sources that could not be listed, with why.
    #[serde(default)]
    pub pe_unreadable: BTreeMap<String, String>,
}

/// What a listing of the PE prefixes found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeListing {
    pub objects: Vec<PeObject>,
    /// Folder key (ending in '/') to why it could not be listed.
    pub unreadable: BTreeMap<String, String>,
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
    /// Modification time in the mount, seconds since the epoch (offline only: what stands
    /// in for the ETag of a `key+etag` prefix source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<u64>,
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
    /// A link that resolves outside the mount (to this path).
    Outside {
        target: String,
    },
    /// stat failed with something other than "not found" (an s3fs outage gives EIO).
    Error(String),
}

/// How far an IMS record leads towards its rootfs file: link, manifest key, manifest,
/// rootfs key. Each variant is where the walk stopped, with what it found on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootfsTrail<'a> {
    /// The record has no `link.path`.
    NoLink,
    /// The link is not a key in the bucket.
    BadLink { link: &'a str, problem: KeyProblem },
    /// The manifest was not read (it is not in the snapshot).
    ManifestNotRead {
        link: &'a str,
        manifest_key: &'a str,
    },
    /// The manifest was read and is unusable.
    ManifestSkipped {
        link: &'a str,
        manifest_key: &'a str,
        reason: &'a SkipReason,
    },
    /// The manifest's rootfs path is not a key in the bucket.
    BadRootfsPath {
        link: &'a str,
        manifest_key: &'a str,
        artifact: &'a RootfsArtifact,
        problem: KeyProblem,
    },
    /// The whole way: the rootfs artifact and its object key.
    Rootfs {
        link: &'a str,
        manifest_key: &'a str,
        artifact: &'a RootfsArtifact,
        key: &'a str,
    },
}

impl<'a> RootfsTrail<'a> {
    /// The manifest key, when the walk got that far.
    pub fn manifest_key(&self) -> Option<&'a str> {
        match self {
            RootfsTrail::NoLink | RootfsTrail::BadLink { .. } => None,
            RootfsTrail::ManifestNotRead { manifest_key, .. }
            | RootfsTrail::ManifestSkipped { manifest_key, .. }
            | RootfsTrail::BadRootfsPath { manifest_key, .. }
            | RootfsTrail::Rootfs { manifest_key, .. } => Some(manifest_key),
        }
    }

    /// The rootfs artifact, when the manifest named one.
    pub fn artifact(&self) -> Option<&'a RootfsArtifact> {
        match self {
            RootfsTrail::BadRootfsPath { artifact, .. } | RootfsTrail::Rootfs { artifact, .. } => {
                Some(artifact)
            }
            _ => None,
        }
    }

    /// The rootfs file's object key, when the walk went the whole way.
    pub fn rootfs_key(&self) -> Option<&'a str> {
        match self {
            RootfsTrail::Rootfs { key, .. } => Some(key),
            _ => None,
        }
    }
}

impl Snapshot {
    /// Whether S3 ETags were checked (rule 3 of the projection rules).
    pub fn verifies_etags(&self) -> bool {
        self.objects.is_some()
    }

    /// The one walk from an IMS record to its rootfs file, as far as this snapshot goes.
    pub fn trail<'a>(&'a self, record: &'a ImageRecord, bucket: &str) -> RootfsTrail<'a> {
        let Some(link) = record.link_path.as_deref() else {
            return RootfsTrail::NoLink;
        };
        let manifest_key = match record.manifest_key(bucket) {
            Some(Ok(key)) => key,
            Some(Err(problem)) => return RootfsTrail::BadLink { link, problem },
            None => return RootfsTrail::NoLink,
        };
        match self.manifests.get(manifest_key) {
            None => RootfsTrail::ManifestNotRead { link, manifest_key },
            Some(ManifestRead::Skip(reason)) => RootfsTrail::ManifestSkipped {
                link,
                manifest_key,
                reason,
            },
            Some(ManifestRead::Rootfs(artifact)) => match artifact.key(bucket) {
                Ok(key) => RootfsTrail::Rootfs {
                    link,
                    manifest_key,
                    artifact,
                    key,
                },
                Err(problem) => RootfsTrail::BadRootfsPath {
                    link,
                    manifest_key,
                    artifact,
                    problem,
                },
            },
        }
    }

    /// The valid IMS records.
    pub fn records(&self) -> impl Iterator<Item = &ImageRecord> {
        self.images.iter().filter_map(|entry| match entry {
            ImageEntry::Valid(record) => Some(record),
            ImageEntry::Invalid { .. } => None,
        })
    }
}
