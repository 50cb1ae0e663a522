//! Why an image is not projected. Skips are values in the plan, never errors: one bad
//! manifest is reported with its reason and the run goes on with everything else.
//!
//! A new reason is one more variant below (its doc comment is what the man page prints) and
//! a row in docs/troubleshooting.md; nothing else lists them.

use crate::codes::named_enum;
use serde::{Deserialize, Serialize};
use std::fmt;

named_enum! {
    /// The reason codes of the JSON report (a contract; extend, never rename).
    pub enum ReasonCode {
        /// The IMS record has no link.path.
        NoLink = "no_link",
        /// The IMS record does not pass catalogue.ims.select.
        NotTagged = "not_tagged",
        /// The manifest could not be read (missing, larger than manifest_max_bytes, I/O error).
        ManifestUnreadable = "manifest_unreadable",
        /// The manifest is not the JSON expected (not JSON, no artifacts, link null, wrong types).
        ManifestInvalid = "manifest_invalid",
        /// The manifest has no rootfs artifact, or several.
        NoRootfsArtifact = "no_rootfs_artifact",
        /// The rootfs link.etag is absent, null or empty.
        MissingEtag = "missing_etag",
        /// No S3 object at the rootfs path (live mode).
        S3ObjectMissing = "s3_object_missing",
        /// The S3 object's ETag differs from the manifest's (live mode).
        EtagMismatch = "etag_mismatch",
        /// The file is not in the s3fs mount (or not a regular file, or stat failed).
        NotInMount = "not_in_mount",
        /// The file in the mount is empty, or differs in size from the S3 object: not yet.
        SizeMismatch = "size_mismatch",
        /// The link is outside the bucket, or the key holds "..", an empty segment, a comma,
        /// newline or NUL.
        InvalidKey = "invalid_key",
        /// Every LUN index up to target.max_lun is taken.
        NoFreeLun = "no_free_lun",
        /// The IMS record is not an object with a string id.
        RecordInvalid = "record_invalid",
        /// A storage object the tool does not manage already has this identity's name.
        NameConflict = "name_conflict",
        /// The file in the mount is a link that resolves outside the mount: never served.
        OutsideMount = "outside_mount",
        /// The file's path (mount and key) is longer than the 255 bytes a fileio device name
        /// holds: the kernel would cut it and open another file.
        PathTooLong = "path_too_long",
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
