//! Offline source: a saved IMS answer (`catalogue.ims.file`) and the mount itself as the
//! bucket. Manifests are read from `<mount>/<key>`, PE objects come from walking
//! `<mount>/<prefix>`, and S3 ETags cannot be checked (the manifest etag is trusted).

use super::mount::Mount;
use super::{ImageList, ObjectStore};
use crate::error::{ReadError, SourceError};
use crate::image::{parse_answer, ImageEntry};
use crate::skip::{ReasonCode, SkipReason};
use crate::snapshot::{ManifestRead, ObjectInfo, PeListing};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// A saved `GET /v3/images` answer.
pub struct ImsFile {
    pub path: PathBuf,
}

impl ImageList for ImsFile {
    fn records(&self) -> Result<Vec<ImageEntry>, SourceError> {
        let bytes = crate::fsio::read_regular(&self.path, crate::image::MAX_ANSWER_BYTES).map_err(
            |source| SourceError::Read {
                what: "IMS file",
                source,
            },
        )?;
        parse_answer(&bytes).map_err(|problem| SourceError::ImsFile {
            path: self.path.clone(),
            problem,
        })
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
                    Err(e @ ReadError::TooLarge { .. }) => ManifestRead::Skip(SkipReason::new(
                        ReasonCode::ManifestUnreadable,
                        format!("{e} (catalogue.manifest_max_bytes)"),
                    )),
                    Err(e) => ManifestRead::Skip(SkipReason::new(
                        ReasonCode::ManifestUnreadable,
                        e.to_string(),
                    )),
                };
                (key.clone(), read)
            })
            .collect()
    }

    fn objects(
        &self,
        _keys: &BTreeSet<String>,
    ) -> Result<Option<BTreeMap<String, ObjectInfo>>, SourceError> {
        Ok(None)
    }

    fn list(&self, prefix: &str) -> Result<PeListing, SourceError> {
        self.mount.walk(prefix)
    }
}
