//! Why an image is not projected. Skips are values in the plan, never errors: one bad
//! manifest is reported with its reason and the run goes on with everything else.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The reason codes of the JSON report (a contract; extend, never rename).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// The IMS record has no `link.path`.
    NoLink,
    /// The IMS record does not pass the policy's tag filter.
    NotTagged,
    /// The manifest could not be read (missing, too large, I/O error).
    ManifestUnreadable,
    /// The manifest is not the JSON document expected.
    ManifestInvalid,
    /// The manifest has no rootfs artifact, or several.
    NoRootfsArtifact,
    /// The rootfs artifact's `link.etag` is absent, null or empty.
    MissingEtag,
    /// The S3 object named by the manifest does not exist.
    S3ObjectMissing,
    /// The S3 object's ETag differs from the manifest's.
    EtagMismatch,
    /// The file is not in the s3fs mount.
    NotInMount,
    /// The file in the mount is empty or differs in size from the S3 object.
    SizeMismatch,
    /// The link or key cannot be served (other bucket, `..`, comma, newline, NUL).
    InvalidKey,
    /// Every LUN index up to `target.max_lun` is taken.
    NoFreeLun,
    /// The IMS record itself is not an object with a string `id`.
    RecordInvalid,
    /// A storage object the tool does not manage already has this identity's name.
    NameConflict,
}

impl ReasonCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::NoLink => "no_link",
            ReasonCode::NotTagged => "not_tagged",
            ReasonCode::ManifestUnreadable => "manifest_unreadable",
            ReasonCode::ManifestInvalid => "manifest_invalid",
            ReasonCode::NoRootfsArtifact => "no_rootfs_artifact",
            ReasonCode::MissingEtag => "missing_etag",
            ReasonCode::S3ObjectMissing => "s3_object_missing",
            ReasonCode::EtagMismatch => "etag_mismatch",
            ReasonCode::NotInMount => "not_in_mount",
            ReasonCode::SizeMismatch => "size_mismatch",
            ReasonCode::InvalidKey => "invalid_key",
            ReasonCode::NoFreeLun => "no_free_lun",
            ReasonCode::RecordInvalid => "record_invalid",
            ReasonCode::NameConflict => "name_conflict",
        }
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reason code with the sentence an operator reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkipReason {
    pub code: ReasonCode,
    pub detail: String,
}

impl SkipReason {
    pub fn new(code: ReasonCode, detail: impl Into<String>) -> SkipReason {
        SkipReason {
            code,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}
