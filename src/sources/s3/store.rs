//! The S3 store itself: its client, the run's view of the bucket (listings, trusted
//! objects, the manifest cache) and how this run reads it (full or incremental).

use super::client::client;
use crate::deadline::Deadline;
use crate::error::SourceError;
use crate::policy::S3Settings;
use crate::snapshot::ObjectInfo;
use crate::sources::s3_cache::S3Cache;
use sha2::Digest;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;
use tokio::runtime::Runtime;

/// A listing sent ahead of need.
pub(super) type Listing =
    tokio::task::JoinHandle<Result<BTreeMap<String, ObjectInfo>, SourceError>>;

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
    pub(super) client: aws_sdk_s3::Client,
    pub(super) bucket: String,
    pub(super) settings: S3Settings,
    pub(super) runtime: Arc<Runtime>,
    pub(super) deadline: Deadline,
    pub(super) reading: Reading,
    /// Unix time of the run.
    pub(super) now: u64,
    /// The whole bucket but `deleted/`, listed once (full reading), until the catalogue is
    /// read.
    pub(super) listing: RefCell<Option<Rc<BTreeMap<String, ObjectInfo>>>>,
    /// Whether the catalogue is read: what only its reading needed is gone.
    pub(super) catalogue_done: std::cell::Cell<bool>,
    /// Prefixes listed this run, by prefix (incremental reading).
    pub(super) prefixes: RefCell<BTreeMap<String, BTreeMap<String, ObjectInfo>>>,
    /// Listings asked for ahead of need ("" for the whole bucket), not collected yet.
    pub(super) started: RefCell<BTreeMap<String, Listing>>,
    /// Rootfs objects of verified images this run trusts, by key.
    pub(super) trusted: RefCell<BTreeMap<String, ObjectInfo>>,
    /// Manifest keys this run asked for: the cache keeps these only.
    pub(super) requested: RefCell<BTreeSet<String>>,
    pub(super) cache: RefCell<S3Cache>,
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

    /// The cache, written into `cache_dir` when this run changed it.
    pub(super) fn save_cache(&self) {
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
pub(super) fn folder_of(key: &str) -> String {
    match key.rsplit_once('/') {
        Some((folder, _)) => format!("{folder}/"),
        None => key.to_string(),
    }
}
