//! Offline source: a saved IMS answer (`catalogue.ims.file`) and the mount itself as the
//! bucket. Manifests are read from `<mount>/<key>`, PE objects come from walking
//! `<mount>/<prefix>`, and S3 ETags cannot be checked (the manifest etag is trusted).

use super::mount::Mount;
use super::{ImageList, ObjectStore};
use crate::error::Error;
use crate::skip::{ReasonCode, SkipReason};
use crate::snapshot::{ManifestRead, ObjectInfo, PeObject};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// A saved `GET /v3/images` answer.
pub struct ImsFile {
    pub path: PathBuf,
}

impl ImageList for ImsFile {
    fn records(&self) -> Result<Vec<Value>, Error> {
        let bytes = std::fs::read(&self.path).map_err(|e| {
            Error::Source(format!("cannot read IMS file {}: {e}", self.path.display()))
        })?;
        parse_image_list(&bytes)
            .map_err(|e| Error::Source(format!("IMS file {}: {e}", self.path.display())))
    }
}

/// The IMS answer must be a JSON array; its elements are parsed one by one later.
pub fn parse_image_list(bytes: &[u8]) -> Result<Vec<Value>, String> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Array(records)) => Ok(records),
        Ok(other) => Err(format!(
            "the answer is {}, not a JSON array of images",
            crate::image::describe(&other)
        )),
        Err(e) => Err(format!("the answer is not JSON: {e}")),
    }
}

/// The mount standing in for the bucket.
pub struct MountStore {
    pub mount: Mount,
}

impl ObjectStore for MountStore {
    fn manifests(&self, keys: &BTreeSet<String>, max_bytes: u64) -> BTreeMap<String, ManifestRead> {
        let mut progress = crate::progress::Progress::new("reading manifests", keys.len());
        keys.iter()
            .map(|key| {
                progress.tick();
                let read = match self.mount.read(key, max_bytes) {
                    Ok(bytes) => ManifestRead::from_bytes(&bytes),
                    Err(e) => {
                        ManifestRead::Skip(SkipReason::new(ReasonCode::ManifestUnreadable, e))
                    }
                };
                (key.clone(), read)
            })
            .collect()
    }

    fn objects(
        &self,
        _keys: &BTreeSet<String>,
    ) -> Result<Option<BTreeMap<String, ObjectInfo>>, Error> {
        Ok(None)
    }

    fn list(&self, prefix: &str) -> Result<Vec<PeObject>, Error> {
        self.mount.walk(prefix)
    }
}
