//! Reading the catalogue: IMS records, manifests, PE listings and the s3fs mount, gathered
//! into a [`Snapshot`]. The collection steps are shared; where the facts come from sits
//! behind two small traits, so the offline source (a saved IMS answer and the mount) and the
//! live ones (IMS over HTTPS, S3) slot in side by side.

pub mod mount;
pub mod offline;

use crate::error::Error;
use crate::image::{parse_record, ImageEntry};
use crate::policy::Policy;
use crate::s3path;
use crate::snapshot::{ManifestRead, ObjectInfo, PeObject, Snapshot};
use mount::Mount;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Where the IMS image list comes from.
pub trait ImageList {
    /// The records of `GET /v3/images`. An answer that is not a JSON array is an error (the
    /// run changes nothing); odd records inside it are not.
    fn records(&self) -> Result<Vec<Value>, Error>;
}

/// Where manifests and object facts come from.
pub trait ObjectStore {
    /// Reads a manifest and reduces it to its rootfs artifact; never fails the run.
    fn manifest(&self, key: &str, max_bytes: u64) -> ManifestRead;
    /// S3's own facts (size, ETag) for `keys`, or `None` when this store cannot tell.
    fn objects(
        &self,
        keys: &BTreeSet<String>,
    ) -> Result<Option<BTreeMap<String, ObjectInfo>>, Error>;
    /// Objects under a PE prefix.
    fn list(&self, prefix: &str) -> Result<Vec<PeObject>, Error>;
}

/// The sources a policy names.
pub struct Sources {
    pub images: Box<dyn ImageList>,
    pub store: Box<dyn ObjectStore>,
    pub mount: Mount,
    /// "offline" or "live", for the report.
    pub mode: &'static str,
}

/// Builds the sources the policy names.
pub fn open(policy: &Policy) -> Sources {
    offline::open(policy)
}

/// Gathers a snapshot: the IMS records, the manifests of the images that pass the tag filter,
/// the S3 facts and mount entries of their rootfs files, and the PE candidates.
pub fn collect(policy: &Policy, sources: &Sources) -> Result<Snapshot, Error> {
    let catalogue = &policy.catalogue;
    // An unreachable mount must not read as "every file is gone": that would remove every
    // LUN (the old agent un-projected everything during an s3fs outage).
    sources.mount.check_root()?;

    let images: Vec<ImageEntry> = sources.images.records()?.iter().map(parse_record).collect();

    let manifest_keys: BTreeSet<String> = images
        .iter()
        .filter_map(|entry| match entry {
            ImageEntry::Valid(record) if catalogue.select.check(record).is_ok() => {
                record.link_path.as_deref()
            }
            _ => None,
        })
        .filter_map(|link| s3path::key_in_bucket(link, &catalogue.bucket).ok())
        .map(str::to_owned)
        .collect();
    log::debug!("reading {} manifest(s)", manifest_keys.len());
    let manifests: BTreeMap<String, ManifestRead> = manifest_keys
        .into_iter()
        .map(|key| {
            let read = sources.store.manifest(&key, catalogue.manifest_max_bytes);
            (key, read)
        })
        .collect();

    let mut pe_objects = Vec::new();
    for prefix in &catalogue.pe_prefixes {
        pe_objects.extend(sources.store.list(prefix)?);
    }
    pe_objects.sort_by(|a, b| a.key.cmp(&b.key));
    pe_objects.dedup_by(|a, b| a.key == b.key);

    let rootfs_keys: BTreeSet<String> = manifests
        .values()
        .filter_map(|read| match read {
            ManifestRead::Rootfs(artifact) => {
                s3path::key_in_bucket(&artifact.path, &catalogue.bucket).ok()
            }
            ManifestRead::Skip(_) => None,
        })
        .map(str::to_owned)
        .collect();
    let objects = sources.store.objects(&rootfs_keys)?;
    let mount = rootfs_keys
        .iter()
        .chain(pe_objects.iter().map(|object| &object.key))
        .filter(|key| s3path::check_key(key).is_ok())
        .map(|key| (key.clone(), sources.mount.stat(key)))
        .collect();
    Ok(Snapshot {
        images,
        manifests,
        objects,
        pe_objects,
        mount,
    })
}
