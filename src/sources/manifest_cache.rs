//! Parsed manifests, cached on disk by object key and the ETag the listing reports, so that
//! a run with nothing new makes no manifest GET. The cache is safe to delete at any time and
//! is ignored when unreadable, corrupt, or from another endpoint or bucket.

use crate::snapshot::ManifestRead;
use std::collections::BTreeMap;
use std::path::Path;

const CACHE_VERSION: u32 = 1;
const CACHE_FILE: &str = "manifests.json";

/// Parsed manifests by key, each with the ETag of the object it was read from.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ManifestCache {
    version: u32,
    /// The endpoint and bucket the entries came from; another is another cache.
    origin: String,
    entries: BTreeMap<String, CachedManifest>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct CachedManifest {
    etag: String,
    read: ManifestRead,
}

impl ManifestCache {
    /// An empty cache for `origin`.
    pub fn new(origin: &str) -> ManifestCache {
        ManifestCache {
            version: CACHE_VERSION,
            origin: origin.to_string(),
            entries: BTreeMap::new(),
        }
    }

    /// The cache in `dir`; missing, unreadable or foreign is an empty cache.
    pub fn load(dir: &Path, origin: &str) -> ManifestCache {
        let path = dir.join(CACHE_FILE);
        let cache = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<ManifestCache>(&bytes).ok())
            .filter(|c| c.version == CACHE_VERSION && c.origin == origin);
        if cache.is_none() && path.exists() {
            log::debug!(
                "ignoring manifest cache {}: unreadable or from elsewhere",
                path.display()
            );
        }
        cache.unwrap_or_else(|| ManifestCache::new(origin))
    }

    /// Takes the entry for `key` when it was read from an object with this `etag`.
    pub fn take(&mut self, key: &str, etag: &str) -> Option<ManifestRead> {
        self.entries
            .remove(key)
            .filter(|cached| cached.etag == etag && !etag.is_empty())
            .map(|cached| cached.read)
    }

    pub fn insert(&mut self, key: String, etag: String, read: ManifestRead) {
        self.entries.insert(key, CachedManifest { etag, read });
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the cache into `dir`; a failure is logged, never fatal (the cache is only a
    /// shortcut).
    pub fn save(&self, dir: &Path) {
        let path = dir.join(CACHE_FILE);
        let bytes = match serde_json::to_vec(self) {
            Ok(bytes) => bytes,
            Err(e) => {
                log::warn!("cannot encode manifest cache {}: {e}", path.display());
                return;
            }
        };
        let saved = std::fs::create_dir_all(dir)
            .map_err(|e| crate::error::FileError::new("create directory", dir, e))
            .and_then(|()| crate::fsio::write_atomic(&path, &bytes));
        if let Err(e) = saved {
            log::warn!("cannot write manifest cache: {}", crate::error::chain(&e));
        }
    }
}
