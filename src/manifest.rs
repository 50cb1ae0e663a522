//! Tolerant parsing of an image's `manifest.json`.
//!
//! Hand-made manifests break every rule (no `etag`, `link: null`, no `artifacts`, numbers
//! where strings belong, not JSON at all); the old agent crashed on one of them and stopped
//! nodes from booting. Here every way a manifest can be wrong is a [`SkipReason`].

use crate::describe::json_value as describe;
use crate::s3path::{self, KeyProblem};
use crate::skip::{ReasonCode, SkipReason};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The artifact type prefix that marks the root file system.
pub const ROOTFS_TYPE: &str = "application/vnd.cray.image.rootfs.squashfs";

/// The rootfs artifact of a manifest: the two strings the LUN identity is derived from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsArtifact {
    /// `link.path`, e.g. `s3://boot-images/<id>/rootfs`.
    pub path: String,
    /// `link.etag`, unquoted as manifests store it.
    pub etag: String,
}

impl RootfsArtifact {
    /// The rootfs file's object key in `bucket`.
    pub fn key(&self, bucket: &str) -> Result<&str, KeyProblem> {
        s3path::key_in_bucket(&self.path, bucket)
    }
}

/// Parses manifest bytes into its single rootfs artifact.
pub fn parse(bytes: &[u8]) -> Result<RootfsArtifact, SkipReason> {
    let invalid = |detail: String| SkipReason::new(ReasonCode::ManifestInvalid, detail);
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("manifest is not JSON: {e}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| invalid(format!("manifest is {}, not an object", describe(&value))))?;
    let artifacts = match object.get("artifacts") {
        Some(Value::Array(list)) => list,
        None => return Err(invalid("manifest has no \"artifacts\" list".to_string())),
        Some(other) => {
            return Err(invalid(format!(
                "manifest \"artifacts\" is {}, not a list",
                describe(other)
            )))
        }
    };
    let rootfs: Vec<&Value> = artifacts
        .iter()
        .filter(|artifact| {
            artifact
                .get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.starts_with(ROOTFS_TYPE))
        })
        .collect();
    let artifact = match rootfs.as_slice() {
        [one] => *one,
        [] => {
            return Err(SkipReason::new(
                ReasonCode::NoRootfsArtifact,
                format!(
                    "manifest lists {} artifact(s), none of type {ROOTFS_TYPE}",
                    artifacts.len()
                ),
            ))
        }
        several => {
            return Err(SkipReason::new(
                ReasonCode::NoRootfsArtifact,
                format!(
                    "manifest lists {} rootfs artifacts; exactly one is expected",
                    several.len()
                ),
            ))
        }
    };
    let link = match artifact.get("link") {
        Some(Value::Object(link)) => link,
        None => return Err(invalid("rootfs artifact has no link".to_string())),
        Some(other) => {
            return Err(invalid(format!(
                "rootfs artifact link is {}, not an object",
                describe(other)
            )))
        }
    };
    let path = match link.get("path") {
        Some(Value::String(path)) if !path.is_empty() => path.clone(),
        Some(Value::String(_)) => return Err(invalid("rootfs link.path is empty".to_string())),
        None => return Err(invalid("rootfs link has no path".to_string())),
        Some(other) => {
            return Err(invalid(format!(
                "rootfs link.path is {}, not a string",
                describe(other)
            )))
        }
    };
    let missing = |what: &str| {
        SkipReason::new(
            ReasonCode::MissingEtag,
            format!("rootfs link.etag is {what}; the image cannot be identified"),
        )
    };
    let etag = match link.get("etag") {
        Some(Value::String(etag)) if !etag.trim_matches('"').is_empty() => {
            // Manifests store ETags unquoted; tolerate a quoted one as S3 would send it.
            etag.trim_matches('"').to_string()
        }
        Some(Value::String(_)) => return Err(missing("empty")),
        None => return Err(missing("absent")),
        Some(Value::Null) => return Err(missing("null")),
        Some(other) => {
            return Err(invalid(format!(
                "rootfs link.etag is {}, not a string",
                describe(other)
            )))
        }
    };
    Ok(RootfsArtifact { path, etag })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest(artifacts: Value) -> Vec<u8> {
        json!({"version": "1.0", "created": "2025-03-04 10:11:12", "artifacts": artifacts})
            .to_string()
            .into_bytes()
    }

    fn rootfs(link: Value) -> Value {
        json!({"type": "application/vnd.cray.image.rootfs.squashfs", "md5": "x", "link": link})
    }

    fn code(bytes: &[u8]) -> ReasonCode {
        parse(bytes).expect_err("should be skipped").code
    }

    #[test]
    fn reads_the_rootfs_artifact() {
        let bytes = manifest(json!([
            {"type": "application/vnd.cray.image.kernel", "link": {"path": "s3://b/k", "etag": "k"}},
            rootfs(json!({"path": "s3://b/i/rootfs", "etag": "2a94-56", "type": "s3"})),
            {"type": "application/vnd.cray.image.initrd", "link": null},
        ]));
        assert_eq!(
            parse(&bytes),
            Ok(RootfsArtifact {
                path: "s3://b/i/rootfs".into(),
                etag: "2a94-56".into()
            })
        );
    }

    #[test]
    fn etag_absent_null_or_empty_is_missing_etag() {
        for link in [
            json!({"path": "s3://b/r"}),
            json!({"path": "s3://b/r", "etag": null}),
            json!({"path": "s3://b/r", "etag": ""}),
            json!({"path": "s3://b/r", "etag": "\"\""}),
        ] {
            assert_eq!(
                code(&manifest(json!([rootfs(link)]))),
                ReasonCode::MissingEtag
            );
        }
    }

    #[test]
    fn broken_shapes_are_manifest_invalid() {
        for bytes in [
            b"not json".to_vec(),
            b"".to_vec(),
            b"[1,2]".to_vec(),
            br#"{"version": "1.0"}"#.to_vec(),
            br#"{"artifacts": {"a": 1}}"#.to_vec(),
            manifest(json!([rootfs(json!(null))])),
            manifest(json!([{"type": "application/vnd.cray.image.rootfs.squashfs"}])),
            manifest(json!([rootfs(json!({"path": null, "etag": "e"}))])),
            manifest(json!([rootfs(json!({"path": 5, "etag": "e"}))])),
            manifest(json!([rootfs(json!({"path": "s3://b/r", "etag": 5}))])),
        ] {
            assert_eq!(
                code(&bytes),
                ReasonCode::ManifestInvalid,
                "{}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }

    #[test]
    fn zero_or_two_rootfs_artifacts_or_odd_types() {
        assert_eq!(code(&manifest(json!([]))), ReasonCode::NoRootfsArtifact);
        let link = json!({"path": "s3://b/r", "etag": "e"});
        assert_eq!(
            code(&manifest(json!([
                rootfs(link.clone()),
                rootfs(link.clone())
            ]))),
            ReasonCode::NoRootfsArtifact
        );
        // An artifact without a type, or with a number for a type, is simply not a rootfs.
        assert_eq!(
            code(&manifest(json!([{"link": link}, {"type": 7}, "x", null]))),
            ReasonCode::NoRootfsArtifact
        );
    }
}
