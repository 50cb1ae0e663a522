//! The live bucket: one ListObjectsV2 walk (following continuation tokens) and concurrent,
//! size-limited GetObject calls for manifests, with aws-sdk-s3.
//!
//! The SDK runs over our own HTTP connector (reqwest on the same rustls/ring stack as IMS),
//! so that `ca_bundle` and `insecure` mean the same for both sources and no second TLS
//! library is built. Credentials come from the s3fs credentials file only: no environment,
//! profile or instance-metadata lookups.

use super::conditional::{
    after_refusal, after_unknown, AfterRefusal, Answer, ETagForm, Reread, Version, Written,
};
use super::s3_cache::{S3Cache, Verified};
use super::{tls, ObjectStore};
use crate::deadline::Deadline;
use crate::error::{BoxError, SourceError};
use crate::policy::{S3Credentials, S3Settings, DELETED_PREFIX};
use crate::skip::{ReasonCode, SkipReason};
use crate::snapshot::{ManifestRead, ObjectInfo, PeListing, PeObject};
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    SharedCredentialsProvider,
};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_smithy_runtime_api::client::http::{
    http_client_fn, HttpConnector, HttpConnectorFuture, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_types::body::SdkBody;
use sha2::Digest;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Runtime;

/// A bound on listing pages: 100,000 pages of up to 1,000 keys.
const MAX_PAGES: usize = 100_000;
/// The most bytes the connector buffers for one response (manifests are checked against
/// their own, smaller limit before they are fetched).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// A listing sent ahead of need.
type Listing = tokio::task::JoinHandle<Result<BTreeMap<String, ObjectInfo>, SourceError>>;

/// How a run reads the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// The whole bucket is listed and every image checked: there is no cache, or the last
    /// full verification is older than `catalogue.s3.verify_interval`.
    Full,
    /// Verified images are trusted; only what changes is listed (the PE prefixes, the
    /// ledgers when the plan needs the bucket's) and the folder of each image not verified
    /// yet.
    Incremental,
}

pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    settings: S3Settings,
    runtime: Arc<Runtime>,
    deadline: Deadline,
    reading: Reading,
    /// Unix time of the run.
    now: u64,
    /// The whole bucket but `deleted/`, listed once (full reading), until the catalogue is
    /// read.
    listing: RefCell<Option<Rc<BTreeMap<String, ObjectInfo>>>>,
    /// Whether the catalogue is read: what only its reading needed is gone.
    catalogue_done: std::cell::Cell<bool>,
    /// Prefixes listed this run, by prefix (incremental reading).
    prefixes: RefCell<BTreeMap<String, BTreeMap<String, ObjectInfo>>>,
    /// Listings asked for ahead of need ("" for the whole bucket), not collected yet.
    started: RefCell<BTreeMap<String, Listing>>,
    /// Rootfs objects of verified images this run trusts, by key.
    trusted: RefCell<BTreeMap<String, ObjectInfo>>,
    /// Manifest keys this run asked for: the cache keeps these only.
    requested: RefCell<BTreeSet<String>>,
    cache: RefCell<S3Cache>,
}

impl S3Store {
    /// `host` makes the full verification of each host fall at its own time.
    pub fn new(
        settings: &S3Settings,
        bucket: &str,
        runtime: Arc<Runtime>,
        deadline: Deadline,
        host: &str,
    ) -> Result<S3Store, SourceError> {
        let origin = format!("{} {bucket}", settings.endpoint);
        let cache = match &settings.cache_dir {
            Some(dir) => S3Cache::load(dir, &origin),
            None => S3Cache::new(&origin),
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let reading = reading(settings, &cache, now, host);
        log::debug!(
            "S3: {} reading ({} verified image(s) in the cache)",
            match reading {
                Reading::Full => "full",
                Reading::Incremental => "incremental",
            },
            cache.verified_len()
        );
        Ok(S3Store {
            client: client(settings, deadline)?,
            bucket: bucket.to_string(),
            settings: settings.clone(),
            runtime,
            deadline,
            reading,
            now,
            listing: RefCell::new(None),
            catalogue_done: std::cell::Cell::new(false),
            prefixes: RefCell::new(BTreeMap::new()),
            started: RefCell::new(BTreeMap::new()),
            trusted: RefCell::new(BTreeMap::new()),
            requested: RefCell::new(BTreeSet::new()),
            cache: RefCell::new(cache),
        })
    }

    pub fn reading(&self) -> Reading {
        self.reading
    }

    /// The whole bucket but `deleted/`, listed once per run.
    fn listing(&self) -> Result<Rc<BTreeMap<String, ObjectInfo>>, SourceError> {
        if let Some(listing) = self.listing.borrow().as_ref() {
            return Ok(listing.clone());
        }
        let started = self.started.borrow_mut().remove("");
        let listing = Rc::new(self.runtime.block_on(self.collect_listing("", started))?);
        *self.listing.borrow_mut() = Some(listing.clone());
        Ok(listing)
    }

    /// Sends the listings of `prefixes` now, to be collected when they are needed: the
    /// server answers while the run reads its files, IMS and the mount, instead of after. A
    /// full reading lists the whole bucket once (every prefix and image is in it).
    fn start(&self, prefixes: &BTreeSet<String>) {
        let wanted: Vec<&str> = match self.reading {
            Reading::Full => vec![""],
            Reading::Incremental => prefixes.iter().map(String::as_str).collect(),
        };
        let mut started = self.started.borrow_mut();
        for prefix in wanted {
            if started.contains_key(prefix) || self.prefixes.borrow().contains_key(prefix) {
                continue;
            }
            let listing = self.runtime.spawn(self.list_task(prefix.to_string()));
            started.insert(prefix.to_string(), listing);
        }
    }

    /// The listing of `prefix` as a task that owns what it needs.
    fn list_task(
        &self,
        prefix: String,
    ) -> impl std::future::Future<Output = Result<BTreeMap<String, ObjectInfo>, SourceError>> + 'static
    {
        let client = self.client.clone();
        let bucket = self.bucket.clone();
        let (page_size, deadline) = (self.settings.page_size, self.deadline);
        async move { list_objects(&client, &bucket, &prefix, page_size, deadline).await }
    }

    /// The listing of `prefix`: the one started earlier if there is one, else listed now.
    async fn collect_listing(
        &self,
        prefix: &str,
        started: Option<Listing>,
    ) -> Result<BTreeMap<String, ObjectInfo>, SourceError> {
        if let Some(listing) = started {
            if let Ok(outcome) = listing.await {
                return outcome;
            }
        }
        // Not started, or the task was lost: list now.
        self.list_task(prefix.to_string()).await
    }

    /// The objects under `prefix`: from the whole listing (full reading, while the catalogue
    /// is read), else listed once per run.
    pub fn objects_under(&self, prefix: &str) -> Result<BTreeMap<String, ObjectInfo>, SourceError> {
        if self.reading == Reading::Full && !self.catalogue_done.get() {
            return Ok(self
                .listing()?
                .range(prefix.to_string()..)
                .take_while(|(key, _)| key.starts_with(prefix))
                .map(|(key, object)| (key.clone(), object.clone()))
                .collect());
        }
        self.list_prefixes(&BTreeSet::from([prefix.to_string()]))?;
        Ok(self
            .prefixes
            .borrow()
            .get(prefix)
            .cloned()
            .unwrap_or_default())
    }

    /// Lists the prefixes not listed yet this run, `concurrency` at a time.
    fn list_prefixes(&self, wanted: &BTreeSet<String>) -> Result<(), SourceError> {
        let missing: Vec<String> = {
            let listed = self.prefixes.borrow();
            wanted
                .iter()
                .filter(|p| !listed.contains_key(*p))
                .cloned()
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        log::debug!("listing {} prefix(es)", missing.len());
        let (started, missing): (Vec<_>, Vec<_>) = {
            let mut started = self.started.borrow_mut();
            missing
                .into_iter()
                .map(|prefix| (started.remove(&prefix), prefix))
                .partition(|(listing, _)| listing.is_some())
        };
        let listed = self.runtime.block_on(async {
            let mut done = Vec::new();
            for (listing, prefix) in started {
                let objects = self.collect_listing(&prefix, listing).await;
                done.push((prefix, objects));
            }
            let listings = missing.into_iter().map(|(_, prefix)| {
                let listing = self.list_task(prefix.clone());
                async move { (prefix, listing.await) }
            });
            done.extend(at_most(self.settings.concurrency, listings, || {}).await);
            done
        });
        let mut prefixes = self.prefixes.borrow_mut();
        for (prefix, objects) in listed {
            prefixes.insert(prefix, objects?);
        }
        Ok(())
    }

    /// What S3 says of one object: from the whole listing, or from its folder's.
    fn object(&self, key: &str) -> Result<Option<ObjectInfo>, SourceError> {
        if let Some(object) = self.trusted.borrow().get(key) {
            return Ok(Some(object.clone()));
        }
        let folder = folder_of(key);
        Ok(self.objects_under(&folder)?.get(key).cloned())
    }

    /// The cache, written into `cache_dir` when this run changed it.
    fn save_cache(&self) {
        let cache = self.cache.borrow();
        if let Some(dir) = self
            .settings
            .cache_dir
            .as_deref()
            .filter(|_| cache.changed())
        {
            cache.save(dir);
        }
    }
}

impl Drop for S3Store {
    /// The cache is written once, when the run is done with the bucket (a run that is
    /// killed loses only a shortcut).
    fn drop(&mut self) {
        self.save_cache();
    }
}

/// Full reading when there is no cache to trust, or its last full verification is older
/// than the interval (plus up to a tenth of it, fixed per host, so that a fleet does not
/// list the bucket at the same moment).
fn reading(settings: &S3Settings, cache: &S3Cache, now: u64, host: &str) -> Reading {
    let interval = settings.verify_interval.as_secs();
    let Some(last) = cache
        .full_verification()
        .filter(|_| settings.cache_dir.is_some())
    else {
        return Reading::Full;
    };
    if interval == 0 {
        return Reading::Full;
    }
    let digest = sha2::Sha224::digest(host.as_bytes());
    let spread = u64::from(u16::from_be_bytes([digest[0], digest[1]]));
    let jitter = interval / 10 * spread / u64::from(u16::MAX);
    if now.saturating_sub(last) >= interval + jitter || last > now {
        Reading::Full
    } else {
        Reading::Incremental
    }
}

/// The prefix that lists an object with its neighbours: its folder (`<id>/` for an IMS
/// image), or the key itself at the top of the bucket.
fn folder_of(key: &str) -> String {
    match key.rsplit_once('/') {
        Some((folder, _)) => format!("{folder}/"),
        None => key.to_string(),
    }
}

/// Reads `ACCESS_KEY_ID:SECRET_KEY` from the credentials file.
pub fn read_credentials(path: &Path) -> Result<Credentials, SourceError> {
    crate::fsio::warn_if_shared("S3 credentials", path);
    let bytes =
        crate::fsio::read_regular(path, super::auth::MAX_SECRET_FILE_BYTES).map_err(|source| {
            SourceError::Read {
                what: "S3 credentials",
                source,
            }
        })?;
    let text = String::from_utf8_lossy(&bytes);
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    match line.split_once(':') {
        Some((key, secret)) if !key.is_empty() && !secret.is_empty() => {
            crate::secrets::register(secret);
            Ok(Credentials::new(
                key,
                secret,
                None,
                None,
                "sbps-reconcile credentials file",
            ))
        }
        _ => Err(SourceError::FileContent {
            what: "S3 credentials",
            path: path.to_owned(),
            problem: "do not hold one line ACCESS_KEY_ID:SECRET_KEY".to_string(),
        }),
    }
}

/// An S3 client for the policy's endpoint: path-style, static credentials, our connector;
/// transient failures retried `settings.retries` times with the SDK's backoff, and no
/// operation (retries included) outliving the run's deadline.
pub fn client(
    settings: &S3Settings,
    deadline: Deadline,
) -> Result<aws_sdk_s3::Client, SourceError> {
    let http = tls::http_client(&settings.tls, "S3", settings.timeout)?;
    let connector = SharedHttpConnector::new(ReqwestConnector { client: http });
    let mut config = aws_sdk_s3::Config::builder();
    match &settings.credentials {
        S3Credentials::File(path) => {
            config.set_credentials_provider(Some(SharedCredentialsProvider::new(
                read_credentials(path)?,
            )));
        }
        // No credentials provider: the signing scheme finds no identity and the requests go
        // unsigned (a public bucket).
        S3Credentials::Anonymous => {
            config.set_allow_no_auth();
        }
    }
    let config = config
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(settings.region.clone()))
        .endpoint_url(&settings.endpoint)
        .force_path_style(true)
        .http_client(http_client_fn(move |_, _| connector.clone()))
        // Whole-body checksums need streaming bodies; ETags are checked by the planner.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .retry_config(RetryConfig::standard().with_max_attempts(settings.retries + 1))
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(deadline.remaining().max(Duration::from_millis(1)))
                .build(),
        )
        .build();
    Ok(aws_sdk_s3::Client::from_conf(config))
}

/// Every object under `prefix` ("" for the whole bucket) but `deleted/`, page by page.
async fn list_objects(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    page_size: u32,
    deadline: Deadline,
) -> Result<BTreeMap<String, ObjectInfo>, SourceError> {
    let mut objects = BTreeMap::new();
    let mut token: Option<String> = None;
    let place = if prefix.is_empty() {
        format!("bucket {bucket}")
    } else {
        format!("s3://{bucket}/{prefix}")
    };
    for page in 1..=MAX_PAGES {
        if deadline.passed() {
            return Err(SourceError::Deadline {
                what: format!("listing {place} (page {page})"),
                deadline: deadline.total(),
            });
        }
        let mut request = client
            .list_objects_v2()
            .bucket(bucket)
            .max_keys(i32::try_from(page_size).unwrap_or(1000));
        if !prefix.is_empty() {
            request = request.prefix(prefix);
        }
        if let Some(token) = token.take() {
            request = request.continuation_token(token);
        }
        let answer = request.send().await.map_err(|e| SourceError::S3List {
            place: place.clone(),
            page,
            source: Box::new(e),
        })?;
        for object in answer.contents() {
            let Some(key) = object.key() else { continue };
            if key.starts_with(DELETED_PREFIX) {
                continue;
            }
            objects.insert(
                key.to_string(),
                ObjectInfo {
                    size: object
                        .size()
                        .and_then(|s| u64::try_from(s).ok())
                        .unwrap_or(0),
                    etag: object.e_tag().unwrap_or("").trim_matches('"').to_string(),
                },
            );
        }
        match (answer.is_truncated(), answer.next_continuation_token()) {
            (Some(true), Some(next)) if !next.is_empty() => token = Some(next.to_string()),
            _ => {
                log::debug!(
                    "listed {} object(s) of {place} in {page} page(s)",
                    objects.len()
                );
                return Ok(objects);
            }
        }
    }
    Err(SourceError::S3ListEndless {
        place,
        pages: MAX_PAGES,
    })
}

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

/// Runs `work`, at most `limit` at a time, the next started as one ends (`ended` is told
/// each time): a task holds its request's whole state from its start, and 5,000 manifest
/// GETs spawned at once held 35 MB. What a lost task would have returned is missing from
/// the answer (logged).
async fn at_most<T: Send + 'static>(
    limit: usize,
    work: impl IntoIterator<Item = impl std::future::Future<Output = T> + Send + 'static>,
    mut ended: impl FnMut(),
) -> Vec<T> {
    let mut pending = work.into_iter();
    let mut tasks = tokio::task::JoinSet::new();
    for future in pending.by_ref().take(limit.max(1)) {
        tasks.spawn(future);
    }
    let mut done = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        ended();
        match joined {
            Ok(outcome) => done.push(outcome),
            Err(e) => log::error!("a request task failed: {e}"),
        }
        if let Some(future) = pending.next() {
            tasks.spawn(future);
        }
    }
    done
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
    fn get_object(&self, key: &str, limit: u64) -> Result<Option<(Vec<u8>, String)>, BoxError> {
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

    /// PUTs `bytes` at `key` only if the object is still at `version` (`If-Match`, or
    /// `If-None-Match: *` to create it). A refusal or an answer that leaves the outcome
    /// unknown is decided by looking at the object again (see [`super::conditional`]); the
    /// PUT itself is never retried blindly (no SDK retries): only a refusal while the object
    /// is still at `version` sends it once more, with the ETag in its other form.
    pub fn put_if(
        &self,
        key: &str,
        bytes: &[u8],
        version: &Version,
        limit: u64,
    ) -> Result<Written, BoxError> {
        if matches!(version, Version::Bytes(_)) {
            return Err("an object has no byte version".into());
        }
        let mut form = ETagForm::Bare;
        for _ in 0..2 {
            match self.put_once(key, bytes, version, form) {
                Answer::Stored(etag) => {
                    self.remember_written(key, bytes, etag);
                    return Ok(Written::Written);
                }
                Answer::Refused(status) => {
                    let now = self.head_etag(key)?;
                    log::debug!(
                        "S3: conditional PUT {key} refused ({status}); the object's ETag now: {now:?}"
                    );
                    match after_refusal(version, form, now.as_deref()) {
                        AfterRefusal::Conflict(since) => return Ok(Written::Conflict(since)),
                        AfterRefusal::Retry(other) => form = other,
                        AfterRefusal::Error(message) => return Err(message.into()),
                    }
                }
                Answer::Unknown(error) => {
                    log::warn!(
                        "S3: the answer to the conditional PUT of {key} leaves its outcome \
                         unknown ({error}); reading it again to compare"
                    );
                    let now = self.get_object(key, limit)?;
                    let reread = now.as_ref().map(|(bytes, etag)| Reread { bytes, etag });
                    let written = after_unknown(version, bytes, reread, &error)?;
                    if let (Written::Written, Some((_, etag))) = (written, now) {
                        self.remember_written(key, bytes, Some(etag));
                    }
                    return Ok(written);
                }
                Answer::Failed(error) => return Err(error.into()),
            }
        }
        Err("the conditional PUT was refused in both forms of the ETag".into())
    }

    /// One conditional PUT, without the SDK's retries.
    fn put_once(&self, key: &str, bytes: &[u8], version: &Version, form: ETagForm) -> Answer {
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .body(bytes.to_vec().into());
        request = match version {
            Version::ETag(etag) => request.if_match(form.header(etag)),
            Version::Absent | Version::Bytes(_) => request.if_none_match("*"),
        };
        let sent = request
            .customize()
            .config_override(aws_sdk_s3::Config::builder().retry_config(RetryConfig::disabled()))
            .send();
        match self.runtime.block_on(sent) {
            Ok(answer) => Answer::Stored(answer.e_tag().map(str::to_string)),
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                let text = match (status, e.as_service_error()) {
                    (Some(status), Some(service)) => format!(
                        "HTTP {status} {}",
                        aws_sdk_s3::error::ProvideErrorMetadata::code(service).unwrap_or("")
                    ),
                    _ => DisplayErrorContext(e).to_string(),
                };
                Answer::of_status(status, text.trim_end().to_string())
            }
        }
    }

    /// Whether the bucket keeps object versions: `Some("enabled")` or `Some("suspended")`
    /// (versions made before are still there), `None` when it never did.
    pub fn versioning(&self) -> Result<Option<&'static str>, BoxError> {
        use aws_sdk_s3::types::BucketVersioningStatus;
        let answer = self
            .runtime
            .block_on(
                self.client
                    .get_bucket_versioning()
                    .bucket(&self.bucket)
                    .send(),
            )
            .map_err(|e| DisplayErrorContext(e).to_string())?;
        Ok(match answer.status() {
            Some(BucketVersioningStatus::Enabled) => Some("enabled"),
            Some(BucketVersioningStatus::Suspended) => Some("suspended"),
            _ => None,
        })
    }

    /// The object's ETag (quotes stripped), `None` when there is no such object.
    fn head_etag(&self, key: &str) -> Result<Option<String>, BoxError> {
        self.runtime.block_on(async {
            match self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
            {
                Ok(answer) => Ok(Some(
                    answer
                        .e_tag()
                        .unwrap_or_default()
                        .trim_matches('"')
                        .to_string(),
                )),
                Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
                Err(e) => Err(DisplayErrorContext(e).to_string().into()),
            }
        })
    }

    /// The next run finds what this run wrote in the cache, by the ETag the listing will show.
    fn remember_written(&self, key: &str, bytes: &[u8], etag: Option<String>) {
        if let (Some(etag), Ok(text)) = (etag, std::str::from_utf8(bytes)) {
            self.cache.borrow_mut().insert_ledger(
                key.to_string(),
                etag.trim_matches('"').to_string(),
                text.to_string(),
            );
        }
    }
}

/// aws-sdk-s3's HTTP connector over reqwest. Request bodies are in memory (the tool only
/// lists and reads), responses are buffered up to [`MAX_RESPONSE_BYTES`].
#[derive(Debug, Clone)]
struct ReqwestConnector {
    client: reqwest::Client,
}

impl HttpConnector for ReqwestConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = self.client.clone();
        HttpConnectorFuture::new(async move {
            let request = request
                .try_into_http1x()
                .map_err(|e| ConnectorError::user(e.into()))?;
            let (parts, body) = request.into_parts();
            let bytes = body
                .bytes()
                .ok_or_else(|| {
                    ConnectorError::user("streaming request bodies are not supported".into())
                })?
                .to_vec();
            let request = reqwest::Request::try_from(http::Request::from_parts(parts, bytes))
                .map_err(|e| ConnectorError::user(e.into()))?;
            let mut response = client.execute(request).await.map_err(classify)?;
            let mut builder = http::Response::builder().status(response.status());
            for (name, value) in response.headers() {
                builder = builder.header(name, value);
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(classify)? {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_RESPONSE_BYTES {
                    return Err(ConnectorError::other(
                        format!("response larger than {MAX_RESPONSE_BYTES} bytes").into(),
                        None,
                    ));
                }
            }
            let response = builder
                .body(SdkBody::from(body))
                .map_err(|e| ConnectorError::other(e.into(), None))?;
            HttpResponse::try_from(response).map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

fn classify(error: reqwest::Error) -> ConnectorError {
    let text = crate::error::chain(&error);
    if error.is_timeout() {
        ConnectorError::timeout(text.into())
    } else if error.is_connect() || error.is_request() || error.is_body() {
        ConnectorError::io(text.into())
    } else {
        ConnectorError::other(text.into(), None)
    }
}
