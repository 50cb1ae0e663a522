//! Reading the catalogue: IMS records, manifests, PE listings and the s3fs mount, gathered
//! into a [`Snapshot`]. The collection steps are shared; where the facts come from sits
//! behind two small traits, so the offline source (a saved IMS answer and the mount) and the
//! live ones (IMS over HTTPS, S3) slot in side by side.

#[cfg(feature = "live")]
pub mod auth;
pub mod conditional;
#[cfg(feature = "live")]
pub mod ims;
pub mod ledger_store;
pub mod mount;
pub mod offline;
#[cfg(feature = "live")]
pub mod s3;
#[cfg(feature = "live")]
pub mod s3_cache;
#[cfg(feature = "live")]
pub mod tls;

use crate::deadline::Deadline;
use crate::error::SourceError;
use crate::image::ImageEntry;
use crate::manifest::RootfsArtifact;
use crate::policy::{ImsSource, Policy};
use crate::s3path;
use crate::snapshot::{ManifestRead, MountEntry, ObjectInfo, PeListing, Snapshot};
use ledger_store::LedgerStore;
use mount::Mount;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

/// Where the IMS image list comes from.
pub trait ImageList {
    /// Asks now for what [`ImageList::records`] will return, where that is a request: it is
    /// under way while the run does other work.
    fn start(&self) {}
    /// The records of `GET /v3/images`, each parsed. An answer that is not a JSON array is
    /// an error (the run changes nothing); odd records inside it are not.
    fn records(&self) -> Result<Vec<ImageEntry>, SourceError>;
}

/// A catalogue without IMS: no records, so no rootfs images.
pub struct NoImages;

impl ImageList for NoImages {
    fn records(&self) -> Result<Vec<ImageEntry>, SourceError> {
        Ok(Vec::new())
    }
}

/// Where manifests and object facts come from.
pub trait ObjectStore {
    /// Reads manifests and reduces each to its rootfs artifact; a manifest that cannot be
    /// read is a [`ManifestRead::Skip`], never a failed run.
    fn manifests(&self, keys: &BTreeSet<String>, max_bytes: u64) -> BTreeMap<String, ManifestRead>;
    /// S3's own facts (size, ETag) for `keys`, or `None` when this store cannot tell.
    fn objects(
        &self,
        keys: &BTreeSet<String>,
    ) -> Result<Option<BTreeMap<String, ObjectInfo>>, SourceError>;
    /// Objects under a PE prefix.
    fn list(&self, prefix: &str) -> Result<PeListing, SourceError>;
    /// Asks now for the listings of `prefixes` that [`ObjectStore::list`] and the ledger
    /// will want, so that they are under way while IMS is read.
    fn start_listing(&self, _prefixes: &BTreeSet<String>) {}
    /// Images whose rootfs object was found with its manifest's ETag, as (manifest key,
    /// rootfs key): a store that remembers them need not check them again.
    fn verified(&self, _images: &[(String, String)]) {}
    /// The rootfs objects this run took from earlier verifications, by key.
    fn trusted(&self) -> BTreeMap<String, ObjectInfo> {
        BTreeMap::new()
    }
    /// Checks these images again, as if never verified.
    fn distrust(&self, _manifest_keys: &BTreeSet<String>) {}
    /// The catalogue is read: what only its reading needed may go, but what the store holds
    /// of the prefixes in `keep` (the ledgers, read later).
    fn catalogue_read(&self, _keep: &BTreeSet<String>) {}
}

/// The sources a policy names.
pub struct Sources {
    pub images: Box<dyn ImageList>,
    pub store: Rc<dyn ObjectStore>,
    pub mount: Mount,
    /// Where the LUN ledger is kept, when the policy keeps one.
    pub ledger: Option<Box<dyn LedgerStore>>,
}

/// Builds the sources the policy names: IMS from a file or over HTTPS, objects from the
/// mount (offline) or from S3.
pub fn open(policy: &Policy, deadline: Deadline) -> Result<Sources, SourceError> {
    let catalogue = &policy.catalogue;
    let mount = Mount::new(&catalogue.mount);
    #[cfg(feature = "live")]
    let runtime = live_runtime()?;
    #[cfg(not(feature = "live"))]
    let _ = deadline;
    let images: Box<dyn ImageList> = match &catalogue.ims {
        None => Box::new(NoImages),
        Some(ImsSource::File(path)) => Box::new(offline::ImsFile { path: path.clone() }),
        #[cfg(feature = "live")]
        Some(ImsSource::Http(settings)) => {
            let client = ims::ImsClient::new(settings, runtime.clone(), deadline)?;
            // Sent now, answered while the bucket's client and cache are set up.
            client.start();
            Box::new(client)
        }
        #[cfg(not(feature = "live"))]
        Some(ImsSource::Http(_)) => return Err(SourceError::NoLiveSources),
    };
    #[cfg(feature = "live")]
    let bucket = match &catalogue.s3 {
        None => None,
        Some(settings) => Some(Rc::new(s3::S3Store::new(
            settings,
            &catalogue.bucket,
            runtime,
            deadline,
            &policy.target.iqn,
        )?)),
    };
    #[cfg(not(feature = "live"))]
    if catalogue.s3.is_some() {
        return Err(SourceError::NoLiveSources);
    }
    #[cfg(feature = "live")]
    let store: Rc<dyn ObjectStore> = match &bucket {
        Some(bucket) => bucket.clone(),
        None => Rc::new(offline::MountStore {
            mount: mount.clone(),
        }),
    };
    #[cfg(not(feature = "live"))]
    let store: Rc<dyn ObjectStore> = Rc::new(offline::MountStore {
        mount: mount.clone(),
    });
    let ledger = ledger_store::open(
        policy,
        #[cfg(feature = "live")]
        bucket,
    )?;
    // Asked for now, collected when needed: the server answers while the run reads the
    // current configuration, IMS and the mount. A remembered ledger is listed only if the
    // plan needs the bucket's.
    let remembers_ledger = ledger.as_ref().is_some_and(|l| l.remembers());
    store.start_listing(&listed_every_run(policy, !remembers_ledger));
    Ok(Sources {
        images,
        store,
        mount,
        ledger,
    })
}

/// One single-threaded runtime drives every live request of a run.
#[cfg(feature = "live")]
fn live_runtime() -> Result<std::sync::Arc<tokio::runtime::Runtime>, SourceError> {
    // One worker: requests sent ahead of need (IMS, the listings every run makes) go out
    // and are answered while the run reads its files; the rest waits on block_on.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map(std::sync::Arc::new)
        .map_err(SourceError::Runtime)
}

/// Manifest keys of trusted images whose file in the mount is not the size it was verified
/// with (or is gone).
fn changed_since_verified(
    manifests: &BTreeMap<String, ManifestRead>,
    trusted: &BTreeMap<String, ObjectInfo>,
    mut stat: impl FnMut(&str) -> MountEntry,
    bucket: &str,
) -> BTreeSet<String> {
    if trusted.is_empty() {
        return BTreeSet::new();
    }
    rootfs_objects(manifests, trusted, bucket)
        .filter(|(_, _, rootfs_key, object)| {
            !matches!(stat(rootfs_key), MountEntry::File { size } if size == object.size)
        })
        .map(|(manifest_key, ..)| manifest_key.clone())
        .collect()
}

/// Each manifest's rootfs artifact, its object key, and what `objects` says of that key,
/// for the manifests whose rootfs `objects` knows.
fn rootfs_objects<'a>(
    manifests: &'a BTreeMap<String, ManifestRead>,
    objects: &'a BTreeMap<String, ObjectInfo>,
    bucket: &'a str,
) -> impl Iterator<Item = (&'a String, &'a RootfsArtifact, &'a str, &'a ObjectInfo)> + 'a {
    manifests.iter().filter_map(move |(manifest_key, read)| {
        let ManifestRead::Rootfs(artifact) = read else {
            return None;
        };
        let rootfs_key = artifact.key(bucket).ok()?;
        let object = objects.get(rootfs_key)?;
        Some((manifest_key, artifact, rootfs_key, object))
    })
}

/// The images whose rootfs object S3 has with the manifest's ETag (rule 3), as (manifest
/// key, rootfs key).
fn verified(
    manifests: &BTreeMap<String, ManifestRead>,
    objects: &BTreeMap<String, ObjectInfo>,
    bucket: &str,
) -> Vec<(String, String)> {
    rootfs_objects(manifests, objects, bucket)
        .filter(|(_, artifact, _, object)| object.etag == artifact.etag && object.size > 0)
        .map(|(manifest_key, _, rootfs_key, _)| (manifest_key.clone(), rootfs_key.to_string()))
        .collect()
}

/// The prefixes every run lists: the PE prefixes and prefix sources, and the ledgers' when
/// `ledgers`.
fn listed_every_run(policy: &Policy, ledgers: bool) -> BTreeSet<String> {
    let sources = policy.catalogue.sources.iter().map(|s| s.prefix.clone());
    let ledgers = match &policy.ledger {
        Some(crate::policy::LedgerPlace::Bucket { prefix, .. }) if ledgers => Some(prefix.clone()),
        _ => None,
    };
    sources.chain(ledgers).collect()
}

/// Gathers a snapshot: the IMS records, the manifests of the images that pass the tag filter,
/// the S3 facts and mount entries of their rootfs files, and the PE candidates. The mount
/// is also asked about `also_stat` (the files of LUNs in place, for the removal grace).
pub fn collect(
    policy: &Policy,
    sources: &Sources,
    also_stat: &BTreeSet<String>,
) -> Result<Snapshot, SourceError> {
    let catalogue = &policy.catalogue;
    // An unreachable mount must not read as "every file is gone": that would remove every
    // LUN (the old agent un-projected everything during an s3fs outage).
    sources.mount.check_root(catalogue.require_mountpoint)?;

    let images: Vec<ImageEntry> = sources.images.records()?;

    let manifest_keys: BTreeSet<String> = images
        .iter()
        .filter_map(|entry| match entry {
            ImageEntry::Valid(record) if catalogue.select.check(record).is_ok() => {
                record.manifest_key(&catalogue.bucket)?.ok()
            }
            _ => None,
        })
        .map(str::to_owned)
        .collect();
    log::debug!("reading {} manifest(s)", manifest_keys.len());
    let mut manifests = sources
        .store
        .manifests(&manifest_keys, catalogue.manifest_max_bytes);
    // A verified image is trusted while the mount shows its file with the size it was
    // verified with; one that changed there is checked again now.
    let mut stats = BTreeMap::new();
    let changed = changed_since_verified(
        &manifests,
        &sources.store.trusted(),
        |key| {
            stats
                .entry(key.to_string())
                .or_insert_with(|| sources.mount.stat(key))
                .clone()
        },
        &catalogue.bucket,
    );
    if !changed.is_empty() {
        log::debug!("{} verified image(s) changed in the mount", changed.len());
        sources.store.distrust(&changed);
        let again = sources
            .store
            .manifests(&changed, catalogue.manifest_max_bytes);
        manifests.extend(again);
    }

    let mut pe_objects = Vec::new();
    let mut pe_unreadable = BTreeMap::new();
    for source in &catalogue.sources {
        let listing = sources.store.list(&source.prefix)?;
        pe_objects.extend(listing.objects);
        pe_unreadable.extend(listing.unreadable);
    }
    pe_objects.sort_by(|a, b| a.key.cmp(&b.key));
    pe_objects.dedup_by(|a, b| a.key == b.key);

    let rootfs_keys: BTreeSet<String> = manifests
        .values()
        .filter_map(|read| match read {
            ManifestRead::Rootfs(artifact) => artifact.key(&catalogue.bucket).ok(),
            ManifestRead::Skip(_) => None,
        })
        .map(str::to_owned)
        .collect();
    let objects = sources.store.objects(&rootfs_keys)?;
    if let Some(objects) = &objects {
        sources
            .store
            .verified(&verified(&manifests, objects, &catalogue.bucket));
    }
    let mount = rootfs_keys
        .iter()
        .chain(pe_objects.iter().map(|object| &object.key))
        .chain(also_stat)
        .filter(|key| s3path::check_key(key).is_ok())
        .map(|key| {
            let entry = stats.remove(key).unwrap_or_else(|| sources.mount.stat(key));
            (key.clone(), entry)
        })
        .collect();
    sources
        .store
        .catalogue_read(&listed_every_run(policy, true));
    Ok(Snapshot {
        images,
        manifests,
        objects,
        pe_objects,
        mount,
        pe_unreadable,
    })
}
