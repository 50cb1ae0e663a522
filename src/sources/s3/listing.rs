//! Listing the bucket: the whole of it once (full reading), or the prefixes a run needs,
//! sent ahead of need and collected when needed.

use super::client::at_most;
use super::store::{folder_of, Listing, Reading, S3Store};
use crate::deadline::Deadline;
use crate::error::SourceError;
use crate::policy::DELETED_PREFIX;
use crate::snapshot::ObjectInfo;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

/// A bound on listing pages: 100,000 pages of up to 1,000 keys.
const MAX_PAGES: usize = 100_000;

impl S3Store {
    /// The whole bucket but `deleted/`, listed once per run.
    pub(super) fn listing(&self) -> Result<Rc<BTreeMap<String, ObjectInfo>>, SourceError> {
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
    pub(super) fn start(&self, prefixes: &BTreeSet<String>) {
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
    pub(super) fn list_task(
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
    pub(super) async fn collect_listing(
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
    pub(super) fn list_prefixes(&self, wanted: &BTreeSet<String>) -> Result<(), SourceError> {
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
    pub(super) fn object(&self, key: &str) -> Result<Option<ObjectInfo>, SourceError> {
        if let Some(object) = self.trusted.borrow().get(key) {
            return Ok(Some(object.clone()));
        }
        let folder = folder_of(key);
        Ok(self.objects_under(&folder)?.get(key).cloned())
    }
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
