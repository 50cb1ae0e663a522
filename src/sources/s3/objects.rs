//! Reading objects: manifests (concurrent, size-limited GETs, cached by ETag), the objects
//! behind images, and the ledgers.

use super::client::at_most;
use super::store::{folder_of, Reading, S3Store};
use crate::error::{BoxError, SourceError};
use crate::skip::{ReasonCode, SkipReason};
use crate::snapshot::{ManifestRead, ObjectInfo, PeListing, PeObject};
use crate::sources::s3_cache::Verified;
use crate::sources::ObjectStore;
use aws_sdk_s3::error::DisplayErrorContext;
use std::collections::{BTreeMap, BTreeSet};

/// GETs and parses a manifest. The flag says whether the outcome came from the object's
/// bytes (and so may be cached with its ETag), not from a failed request.
async fn get_manifest(
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
) -> (ManifestRead, bool) {
    let unreadable = |detail: String| {
        ManifestRead::Skip(SkipReason::new(ReasonCode::ManifestUnreadable, detail))
    };
    let answer = match client.get_object().bucket(&bucket).key(&key).send().await {
        Ok(answer) => answer,
        Err(e) => {
            let detail = format!(
                "GET s3://{bucket}/{key} failed: {}",
                DisplayErrorContext(&e)
            );
            return (unreadable(detail), false);
        }
    };
    match answer.body.collect().await {
        Ok(bytes) => (ManifestRead::from_bytes(&bytes.into_bytes()), true),
        Err(e) => (
            unreadable(format!("reading s3://{bucket}/{key} failed: {e}")),
            false,
        ),
    }
}

impl ObjectStore for S3Store {
    fn manifests(&self, keys: &BTreeSet<String>, max_bytes: u64) -> BTreeMap<String, ManifestRead> {
        let mut reads = BTreeMap::new();
        self.requested.borrow_mut().extend(keys.iter().cloned());
        // Incremental reading: a verified image needs no request at all.
        let mut unverified = Vec::new();
        {
            let cache = self.cache.borrow();
            let mut trusted = self.trusted.borrow_mut();
            for key in keys {
                match cache
                    .verified(key)
                    .filter(|_| self.reading == Reading::Incremental)
                {
                    Some((read, verified)) => {
                        reads.insert(key.clone(), read.clone());
                        trusted.insert(verified.rootfs_key.clone(), verified.rootfs.clone());
                    }
                    None => unverified.push(key),
                }
            }
        }
        if self.reading == Reading::Incremental {
            let folders = unverified.iter().map(|key| folder_of(key)).collect();
            if let Err(e) = self.list_prefixes(&folders) {
                log::warn!("{}", crate::error::chain(&e));
            }
        }
        // What the listing already rules out, or the cache already holds, needs no GET.
        let mut fetch = Vec::new();
        for key in unverified {
            let url = format!("s3://{}/{key}", self.bucket);
            match self.object(key) {
                Ok(None) => {
                    reads.insert(
                        key.clone(),
                        ManifestRead::Skip(SkipReason::new(
                            ReasonCode::ManifestUnreadable,
                            format!("no S3 object at {url}"),
                        )),
                    );
                }
                Ok(Some(object)) if object.size > max_bytes => {
                    reads.insert(
                        key.clone(),
                        ManifestRead::Skip(SkipReason::new(
                            ReasonCode::ManifestUnreadable,
                            format!(
                                "{url} has {} bytes, above the {max_bytes}-byte limit \
                                 (catalogue.manifest_max_bytes)",
                                object.size
                            ),
                        )),
                    );
                }
                Ok(Some(object)) => match self.cache.borrow().manifest(key, &object.etag) {
                    Some(read) => {
                        reads.insert(key.clone(), read.clone());
                    }
                    None => fetch.push((key.clone(), Some(object.etag))),
                },
                Err(e) => {
                    log::warn!("{}", crate::error::chain(&e));
                    fetch.push((key.clone(), None));
                }
            }
        }
        log::debug!(
            "{} manifest(s) from the cache; fetching {}, {} at a time",
            reads.len(),
            fetch.len(),
            self.settings.concurrency
        );
        let mut progress = crate::progress::Progress::new("reading manifests", fetch.len());
        let fetch = fetch.into_iter().map(|(key, etag)| {
            let (client, bucket) = (self.client.clone(), self.bucket.clone());
            async move {
                let (read, complete) = get_manifest(client, bucket, key.clone()).await;
                (key, read, etag.filter(|_| complete))
            }
        });
        let fetched = self
            .runtime
            .block_on(at_most(self.settings.concurrency, fetch, || {
                progress.tick()
            }));
        let mut cache = self.cache.borrow_mut();
        for (key, read, etag) in fetched {
            if let Some(etag) = etag {
                cache.insert_manifest(key.clone(), etag, read.clone());
            }
            reads.insert(key, read);
        }
        for key in keys {
            reads.entry(key.clone()).or_insert_with(|| {
                ManifestRead::Skip(SkipReason::new(
                    ReasonCode::ManifestUnreadable,
                    format!("s3://{}/{key} was not read", self.bucket),
                ))
            });
        }
        reads
    }

    fn objects(
        &self,
        keys: &BTreeSet<String>,
    ) -> Result<Option<BTreeMap<String, ObjectInfo>>, SourceError> {
        if self.reading == Reading::Incremental {
            let trusted = self.trusted.borrow();
            let folders = keys
                .iter()
                .filter(|key| !trusted.contains_key(*key))
                .map(|key| folder_of(key))
                .collect();
            drop(trusted);
            self.list_prefixes(&folders)?;
        }
        let mut found = BTreeMap::new();
        for key in keys {
            if let Some(object) = self.object(key)? {
                found.insert(key.clone(), object);
            }
        }
        Ok(Some(found))
    }

    fn start_listing(&self, prefixes: &BTreeSet<String>) {
        self.start(prefixes);
    }

    fn list(&self, prefix: &str) -> Result<PeListing, SourceError> {
        let objects = self
            .objects_under(prefix)?
            .into_iter()
            .map(|(key, object)| PeObject {
                key,
                size: object.size,
                etag: Some(object.etag),
                mtime: None,
            })
            .collect();
        Ok(PeListing {
            objects,
            unreadable: BTreeMap::new(),
        })
    }

    fn trusted(&self) -> BTreeMap<String, ObjectInfo> {
        self.trusted.borrow().clone()
    }

    /// Saves what the catalogue's reading changed in the cache, and lets go of what only
    /// that reading needed: the whole bucket's listing (but `keep`), the cached manifests
    /// and verified images. At 5,000 images these were 8 MB held through the plan and the
    /// apply; the ledgers, read and written after, stay.
    fn catalogue_read(&self, keep: &BTreeSet<String>) {
        if let Some(listing) = self.listing.borrow_mut().take() {
            let mut prefixes = self.prefixes.borrow_mut();
            for prefix in keep {
                let under = listing
                    .range(prefix.clone()..)
                    .take_while(|(key, _)| key.starts_with(prefix.as_str()))
                    .map(|(key, object)| (key.clone(), object.clone()))
                    .collect();
                prefixes.insert(prefix.clone(), under);
            }
        }
        self.catalogue_done.set(true);
        self.trusted.borrow_mut().clear();
        self.requested.borrow_mut().clear();
        self.cache
            .borrow_mut()
            .release_catalogue(self.settings.cache_dir.as_deref());
    }

    fn distrust(&self, manifest_keys: &BTreeSet<String>) {
        let mut cache = self.cache.borrow_mut();
        let mut trusted = self.trusted.borrow_mut();
        for key in manifest_keys {
            if let Some((_, verified)) = cache.verified(key) {
                trusted.remove(&verified.rootfs_key);
            }
            cache.forget_verified(key);
        }
    }

    fn verified(&self, images: &[(String, String)]) {
        let mut cache = self.cache.borrow_mut();
        // What this run's catalogue no longer names goes.
        let requested = self.requested.borrow();
        cache.retain(&|key| requested.contains(key));
        for (manifest_key, rootfs_key) in images {
            // A verified image keeps the time it was first verified.
            if cache.verified(manifest_key).is_some() && self.reading == Reading::Incremental {
                continue;
            }
            let Ok(Some(rootfs)) = self.object(rootfs_key) else {
                continue;
            };
            cache.insert_verified(
                manifest_key.clone(),
                Verified {
                    rootfs_key: rootfs_key.clone(),
                    rootfs,
                    at: self.now,
                },
            );
        }
        if self.reading == Reading::Full && self.listing.borrow().is_some() {
            cache.set_full_verification(self.now);
        }
    }
}

/// Where the run's LUN ledger and the fleet's are kept in the bucket.
impl S3Store {
    /// The ledgers under `prefix`, with their ETags.
    pub fn ledgers(&self, prefix: &str) -> Result<BTreeMap<String, ObjectInfo>, SourceError> {
        let ledgers = self.objects_under(prefix)?;
        self.cache
            .borrow_mut()
            .retain_ledgers(&|key| ledgers.contains_key(key));
        Ok(ledgers)
    }

    /// The ledger at `key` as this worker last read or wrote it (bytes and ETag), between
    /// full verifications: `None` on a full reading, which reads the ledgers again.
    pub fn remembered_ledger(&self, key: &str) -> Option<(Vec<u8>, String)> {
        if !self.remembers_ledger(key) {
            return None;
        }
        let cache = self.cache.borrow();
        let (etag, bytes) = cache.last_ledger(key)?;
        Some((bytes.as_bytes().to_vec(), etag.to_string()))
    }

    /// Whether [`S3Store::remembered_ledger`] has one for `key`.
    pub fn remembers_ledger(&self, key: &str) -> bool {
        self.reading == Reading::Incremental && self.cache.borrow().last_ledger(key).is_some()
    }

    /// A ledger's bytes, from the cache when its ETag is the one listed, else GET (at most
    /// `limit` bytes). Returns the bytes and the ETag they were read at.
    pub fn ledger(
        &self,
        key: &str,
        listed: &ObjectInfo,
        limit: u64,
    ) -> Result<Option<(Vec<u8>, String)>, BoxError> {
        if let Some(bytes) = self.cache.borrow().ledger(key, &listed.etag) {
            return Ok(Some((bytes.as_bytes().to_vec(), listed.etag.clone())));
        }
        let Some((bytes, etag)) = self.get_object(key, limit)? else {
            return Ok(None);
        };
        if let Ok(text) = std::str::from_utf8(&bytes) {
            self.cache
                .borrow_mut()
                .insert_ledger(key.to_string(), etag.clone(), text.to_string());
        }
        Ok(Some((bytes, etag)))
    }

    /// A ledger's bytes read once, not kept in the cache (`fleet` reads every target's, and
    /// folds each into its view as it comes).
    pub fn ledger_once(&self, key: &str, limit: u64) -> Result<Option<Vec<u8>>, BoxError> {
        Ok(self.get_object(key, limit)?.map(|(bytes, _)| bytes))
    }

    /// An object's bytes and ETag (quotes stripped), `None` when there is no such object;
    /// one larger than `limit` is an error.
    pub(super) fn get_object(
        &self,
        key: &str,
        limit: u64,
    ) -> Result<Option<(Vec<u8>, String)>, BoxError> {
        self.runtime.block_on(async {
            let answer = match self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
            {
                Ok(answer) => answer,
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                    return Ok(None)
                }
                Err(e) => return Err(DisplayErrorContext(e).to_string().into()),
            };
            let length = answer.content_length().and_then(|l| u64::try_from(l).ok());
            if length.is_some_and(|l| l > limit) {
                return Err(format!("it is larger than the {limit}-byte limit").into());
            }
            let etag = answer
                .e_tag()
                .unwrap_or_default()
                .trim_matches('"')
                .to_string();
            let bytes = answer.body.collect().await?.into_bytes();
            if bytes.len() as u64 > limit {
                return Err(format!("it is larger than the {limit}-byte limit").into());
            }
            Ok(Some((bytes.to_vec(), etag)))
        })
    }
}
