//! What the bucket told earlier runs, kept on disk (`catalogue.s3.cache_dir`), so that a run
//! with nothing new asks S3 for almost nothing:
//! - parsed manifests, by object key and the ETag they were read at;
//! - images verified: IMS writes an image's manifest and rootfs once, so once the rootfs
//!   object was seen with the manifest's ETag, later runs trust both until the next full
//!   verification (the mount is still checked every run);
//! - ledgers read or written, by key and ETag (a run that changes nothing plans with the
//!   target's own as last read or written, until the next full verification);
//! - when the whole bucket was last listed.
//!
//! The cache is safe to delete at any time (the next run verifies everything) and is ignored
//! when unreadable, corrupt, or from another endpoint or bucket.

use crate::snapshot::{ManifestRead, ObjectInfo};
use std::collections::BTreeMap;
use std::path::Path;

const CACHE_VERSION: u32 = 2;
const CACHE_FILE: &str = "s3-cache.json";
/// The largest cache file read: far above 20,000 images.
const MAX_CACHE_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct S3Cache {
    version: u32,
    /// The endpoint and bucket the entries came from; another is another cache.
    origin: String,
    /// Unix time of the last run that listed the whole bucket.
    #[serde(default)]
    full_verification: Option<u64>,
    #[serde(default)]
    manifests: BTreeMap<String, CachedManifest>,
    /// Verified images, by manifest key.
    #[serde(default)]
    verified: BTreeMap<String, Verified>,
    /// Ledgers, by key.
    #[serde(default)]
    ledgers: BTreeMap<String, CachedObject>,
    /// Whether this run changed anything (then it is written back).
    #[serde(skip)]
    changed: bool,
    /// The manifests and verified images were saved and let go: a later save writes the
    /// ledgers into the file on disk.
    #[serde(skip)]
    released: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct CachedManifest {
    etag: String,
    read: ManifestRead,
}

/// An image whose rootfs object was seen with its manifest's ETag.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Verified {
    pub rootfs_key: String,
    pub rootfs: ObjectInfo,
    /// Unix time it was verified.
    pub at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CachedObject {
    pub etag: String,
    pub bytes: String,
}

impl S3Cache {
    /// An empty cache for `origin`.
    pub fn new(origin: &str) -> S3Cache {
        S3Cache {
            version: CACHE_VERSION,
            origin: origin.to_string(),
            ..S3Cache::default()
        }
    }

    /// The cache in `dir`; missing, unreadable or foreign is an empty cache.
    pub fn load(dir: &Path, origin: &str) -> S3Cache {
        let path = dir.join(CACHE_FILE);
        let cache = crate::fsio::read_regular(&path, MAX_CACHE_BYTES)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<S3Cache>(&bytes).ok())
            .filter(|c| c.version == CACHE_VERSION && c.origin == origin);
        if cache.is_none() && path.exists() {
            log::debug!(
                "ignoring S3 cache {}: unreadable or from elsewhere",
                path.display()
            );
        }
        cache.unwrap_or_else(|| S3Cache::new(origin))
    }

    /// The parsed manifest at `key` when it was read from an object with this `etag`.
    pub fn manifest(&self, key: &str, etag: &str) -> Option<&ManifestRead> {
        self.manifests
            .get(key)
            .filter(|cached| cached.etag == etag && !etag.is_empty())
            .map(|cached| &cached.read)
    }

    pub fn insert_manifest(&mut self, key: String, etag: String, read: ManifestRead) {
        let entry = CachedManifest { etag, read };
        if self.manifests.get(&key) != Some(&entry) {
            self.manifests.insert(key, entry);
            self.changed = true;
        }
    }

    pub fn full_verification(&self) -> Option<u64> {
        self.full_verification
    }

    pub fn set_full_verification(&mut self, at: u64) {
        self.full_verification = Some(at);
        self.changed = true;
    }

    /// Whether anything changed since it was loaded.
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// A verified image: its manifest, and its rootfs object as S3 had it.
    pub fn verified(&self, manifest_key: &str) -> Option<(&ManifestRead, &Verified)> {
        let verified = self.verified.get(manifest_key)?;
        let manifest = self.manifests.get(manifest_key)?;
        Some((&manifest.read, verified))
    }

    pub fn forget_verified(&mut self, manifest_key: &str) {
        self.changed |= self.verified.remove(manifest_key).is_some();
    }

    pub fn insert_verified(&mut self, manifest_key: String, verified: Verified) {
        if self.verified.get(&manifest_key) != Some(&verified) {
            self.verified.insert(manifest_key, verified);
            self.changed = true;
        }
    }

    pub fn ledger(&self, key: &str, etag: &str) -> Option<&str> {
        self.ledgers
            .get(key)
            .filter(|cached| cached.etag == etag && !etag.is_empty())
            .map(|cached| cached.bytes.as_str())
    }

    /// The ledger at `key` as this worker last read or wrote it: its ETag and bytes.
    pub fn last_ledger(&self, key: &str) -> Option<(&str, &str)> {
        self.ledgers
            .get(key)
            .filter(|cached| !cached.etag.is_empty())
            .map(|cached| (cached.etag.as_str(), cached.bytes.as_str()))
    }

    pub fn insert_ledger(&mut self, key: String, etag: String, bytes: String) {
        let entry = CachedObject { etag, bytes };
        if self.ledgers.get(&key) != Some(&entry) {
            self.ledgers.insert(key, entry);
            self.changed = true;
        }
    }

    /// Keeps the manifests and verified images of `keys` only (what this run's catalogue
    /// still names).
    pub fn retain(&mut self, keys: &dyn Fn(&str) -> bool) {
        let before = (self.manifests.len(), self.verified.len());
        self.manifests.retain(|key, _| keys(key));
        self.verified.retain(|key, _| keys(key));
        self.changed |= before != (self.manifests.len(), self.verified.len());
    }

    /// Keeps the ledgers of `keys` only (those still in the bucket).
    pub fn retain_ledgers(&mut self, keys: &dyn Fn(&str) -> bool) {
        let before = self.ledgers.len();
        self.ledgers.retain(|key, _| keys(key));
        self.changed |= before != self.ledgers.len();
    }

    pub fn manifests_len(&self) -> usize {
        self.manifests.len()
    }

    pub fn verified_len(&self) -> usize {
        self.verified.len()
    }

    /// Saves what changed into `dir` (when there is one) and lets go of the manifests and
    /// verified images: the run has read its catalogue, and only the ledgers are used after.
    pub fn release_catalogue(&mut self, dir: Option<&Path>) {
        if let Some(dir) = dir.filter(|_| self.changed) {
            self.save(dir);
        }
        self.changed = false;
        self.manifests = BTreeMap::new();
        self.verified = BTreeMap::new();
        self.released = true;
    }

    /// Writes the cache into `dir`; a failure is logged, never fatal (the cache is only a
    /// shortcut). Once the catalogue part was let go, the ledgers go into the file on disk.
    pub fn save(&self, dir: &Path) {
        if self.released {
            let mut whole = S3Cache::load(dir, &self.origin);
            whole.ledgers.clone_from(&self.ledgers);
            whole.save(dir);
            return;
        }
        let path = dir.join(CACHE_FILE);
        let bytes = match serde_json::to_vec(self) {
            Ok(bytes) => bytes,
            Err(e) => {
                log::warn!("cannot encode the S3 cache {}: {e}", path.display());
                return;
            }
        };
        let saved = std::fs::create_dir_all(dir)
            .map_err(|e| crate::error::FileError::new("create directory", dir, e))
            .and_then(|()| crate::fsio::write_atomic(&path, &bytes));
        if let Err(e) = saved {
            log::warn!("cannot write the S3 cache: {}", crate::error::chain(&e));
        }
        // The cache of earlier versions.
        let _ = std::fs::remove_file(dir.join("manifests.json"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skip::{ReasonCode, SkipReason};

    #[test]
    fn a_cache_let_go_after_the_catalogue_still_saves_its_ledgers_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = S3Cache::new("http://s3 bucket");
        let read = ManifestRead::Skip(SkipReason::new(ReasonCode::ManifestUnreadable, "x"));
        cache.insert_manifest("a/manifest.json".into(), "e1".into(), read.clone());
        cache.insert_verified(
            "a/manifest.json".into(),
            Verified {
                rootfs_key: "a/rootfs".into(),
                rootfs: ObjectInfo {
                    size: 9,
                    etag: "e2".into(),
                },
                at: 7,
            },
        );
        cache.insert_ledger("luns/t.json".into(), "l1".into(), "{}".into());
        cache.release_catalogue(Some(dir.path()));
        assert_eq!((cache.manifests_len(), cache.verified_len()), (0, 0));
        assert!(!cache.changed());
        assert_eq!(cache.last_ledger("luns/t.json"), Some(("l1", "{}")));

        // A ledger written after: saved into the file with the catalogue part it had.
        cache.insert_ledger("luns/t.json".into(), "l2".into(), "{\"a\":1}".into());
        cache.save(dir.path());
        let again = S3Cache::load(dir.path(), "http://s3 bucket");
        assert_eq!(again.manifest("a/manifest.json", "e1"), Some(&read));
        assert!(again.verified("a/manifest.json").is_some());
        assert_eq!(again.last_ledger("luns/t.json"), Some(("l2", "{\"a\":1}")));
    }
}
