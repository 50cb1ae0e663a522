//! Offline source: a saved IMS answer (`catalogue.ims.file`) and the mount itself as the
//! bucket. Manifests are read from `<mount>/<key>`, PE objects come from walking
//! `<mount>/<prefix>`, and S3 ETags cannot be checked (the manifest etag is trusted).

use super::mount::Mount;
use super::{ImageList, ObjectStore, Sources};
use crate::error::Error;
use crate::manifest;
use crate::policy::{ImsSource, Policy};
use crate::skip::{ReasonCode, SkipReason};
use crate::snapshot::{ManifestRead, ObjectInfo, PeObject};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

pub fn open(policy: &Policy) -> Sources {
    let mount = Mount::new(&policy.catalogue.mount);
    let ImsSource::File(file) = &policy.catalogue.ims;
    Sources {
        images: Box::new(ImsFile { path: file.clone() }),
        store: Box::new(MountStore {
            mount: mount.clone(),
        }),
        mount,
        mode: "offline",
    }
}

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
    fn manifest(&self, key: &str, max_bytes: u64) -> ManifestRead {
        match self.mount.read(key, max_bytes) {
            Ok(bytes) => match manifest::parse(&bytes) {
                Ok(artifact) => ManifestRead::Rootfs(artifact),
                Err(reason) => ManifestRead::Skip(reason),
            },
            Err(e) => ManifestRead::Skip(SkipReason::new(ReasonCode::ManifestUnreadable, e)),
        }
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
