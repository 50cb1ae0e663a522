//! The live bucket: one ListObjectsV2 walk (following continuation tokens) and concurrent,
//! size-limited GetObject calls for manifests, with aws-sdk-s3.
//!
//! The SDK runs over our own HTTP connector (reqwest on the same rustls/ring stack as IMS),
//! so that `ca_bundle` and `insecure` mean the same for both sources and no second TLS
//! library is built. Credentials come from the s3fs credentials file only: no environment,
//! profile or instance-metadata lookups.

use super::ledger_store::{Version, Written};
use super::manifest_cache::ManifestCache;
use super::{tls, ObjectStore};
use crate::deadline::Deadline;
use crate::error::{BoxError, SourceError};
use crate::policy::{S3Settings, DELETED_PREFIX};
use crate::skip::{ReasonCode, SkipReason};
use crate::snapshot::{ManifestRead, ObjectInfo, PeListing, PeObject};
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_smithy_runtime_api::client::http::{
    http_client_fn, HttpConnector, HttpConnectorFuture, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_types::body::SdkBody;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::runtime::Runtime;

/// A bound on listing pages: 100,000 pages of up to 1,000 keys.
const MAX_PAGES: usize = 100_000;
/// The most bytes the connector buffers for one response (manifests are checked against
/// their own, smaller limit before they are fetched).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    settings: S3Settings,
    runtime: Arc<Runtime>,
    deadline: Deadline,
    listing: OnceLock<BTreeMap<String, ObjectInfo>>,
}

impl S3Store {
    pub fn new(
        settings: &S3Settings,
        bucket: &str,
        runtime: Arc<Runtime>,
        deadline: Deadline,
    ) -> Result<S3Store, SourceError> {
        Ok(S3Store {
            client: client(settings, deadline)?,
            bucket: bucket.to_string(),
            settings: settings.clone(),
            runtime,
            deadline,
            listing: OnceLock::new(),
        })
    }

    /// The whole bucket but `deleted/`, listed once per run.
    fn listing(&self) -> Result<&BTreeMap<String, ObjectInfo>, SourceError> {
        if let Some(listing) = self.listing.get() {
            return Ok(listing);
        }
        let listing = self.runtime.block_on(list_bucket(
            &self.client,
            &self.bucket,
            self.settings.page_size,
            self.deadline,
        ))?;
        Ok(self.listing.get_or_init(|| listing))
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
    let credentials = read_credentials(&settings.credentials_file)?;
    let http = tls::http_client(&settings.tls, "S3", settings.timeout)?;
    let connector = SharedHttpConnector::new(ReqwestConnector { client: http });
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(settings.region.clone()))
        .endpoint_url(&settings.endpoint)
        .force_path_style(true)
        .credentials_provider(credentials)
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

async fn list_bucket(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    page_size: u32,
    deadline: Deadline,
) -> Result<BTreeMap<String, ObjectInfo>, SourceError> {
    let mut objects = BTreeMap::new();
    let mut token: Option<String> = None;
    for page in 1..=MAX_PAGES {
        if deadline.passed() {
            return Err(SourceError::Deadline {
                what: format!("listing bucket {bucket} (page {page})"),
                deadline: deadline.total(),
            });
        }
        let mut request = client
            .list_objects_v2()
            .bucket(bucket)
            .max_keys(i32::try_from(page_size).unwrap_or(1000));
        if let Some(token) = token.take() {
            request = request.continuation_token(token);
        }
        let answer = request.send().await.map_err(|e| SourceError::S3List {
            bucket: bucket.to_string(),
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
                log::debug!("listed {} object(s) in {page} page(s)", objects.len());
                return Ok(objects);
            }
        }
    }
    Err(SourceError::S3ListEndless {
        bucket: bucket.to_string(),
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

impl ObjectStore for S3Store {
    fn manifests(&self, keys: &BTreeSet<String>, max_bytes: u64) -> BTreeMap<String, ManifestRead> {
        let mut reads = BTreeMap::new();
        let listing = match self.listing() {
            Ok(listing) => Some(listing),
            Err(e) => {
                log::warn!("{}", crate::error::chain(&e));
                None
            }
        };
        let origin = format!("{} {}", self.settings.endpoint, self.bucket);
        let mut cache = match &self.settings.cache_dir {
            Some(dir) => ManifestCache::load(dir, &origin),
            None => ManifestCache::new(&origin),
        };
        // What the listing already rules out, or the cache already holds, needs no GET.
        let mut fetch = Vec::new();
        // What this run saw, to be cached: entries of deleted images go.
        let mut current = ManifestCache::new(&origin);
        for key in keys {
            let url = format!("s3://{}/{key}", self.bucket);
            let listed = listing.map(|l| l.get(key));
            match listed {
                Some(None) => {
                    reads.insert(
                        key.clone(),
                        ManifestRead::Skip(SkipReason::new(
                            ReasonCode::ManifestUnreadable,
                            format!("no S3 object at {url}"),
                        )),
                    );
                }
                Some(Some(object)) if object.size > max_bytes => {
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
                Some(Some(object)) => match cache.take(key, &object.etag) {
                    Some(read) => {
                        reads.insert(key.clone(), read.clone());
                        current.insert(key.clone(), object.etag.clone(), read);
                    }
                    None => fetch.push((key.clone(), Some(object.etag.clone()))),
                },
                None => fetch.push((key.clone(), None)),
            }
        }
        log::debug!(
            "{} manifest(s) from the cache; fetching {}, {} at a time",
            current.len(),
            fetch.len(),
            self.settings.concurrency
        );
        let fetched = self.runtime.block_on(async {
            let permits = Arc::new(tokio::sync::Semaphore::new(self.settings.concurrency));
            let mut tasks = tokio::task::JoinSet::new();
            for (key, etag) in fetch {
                let permits = permits.clone();
                let client = self.client.clone();
                let bucket = self.bucket.clone();
                tasks.spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    let (read, complete) = get_manifest(client, bucket, key.clone()).await;
                    (key, read, etag.filter(|_| complete))
                });
            }
            let mut done = Vec::new();
            let mut progress = crate::progress::Progress::new("reading manifests", tasks.len());
            while let Some(joined) = tasks.join_next().await {
                progress.tick();
                match joined {
                    Ok(outcome) => done.push(outcome),
                    Err(e) => log::error!("a manifest fetch task failed: {e}"),
                }
            }
            done
        });
        for (key, read, etag) in fetched {
            if let Some(etag) = etag {
                current.insert(key.clone(), etag, read.clone());
            }
            reads.insert(key, read);
        }
        if let Some(dir) = &self.settings.cache_dir {
            current.save(dir);
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
        let listing = self.listing()?;
        Ok(Some(
            keys.iter()
                .filter_map(|key| Some((key.clone(), listing.get(key)?.clone())))
                .collect(),
        ))
    }

    fn list(&self, prefix: &str) -> Result<PeListing, SourceError> {
        let objects = self
            .listing()?
            .range(prefix.to_string()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, object)| PeObject {
                key: key.clone(),
                size: object.size,
                etag: Some(object.etag.clone()),
            })
            .collect();
        Ok(PeListing {
            objects,
            unreadable: BTreeMap::new(),
        })
    }
}

/// Where the run's LUN ledger and the fleet's are kept in the bucket.
impl S3Store {
    /// An object's bytes and ETag (as the server sent it), `None` when there is no such
    /// object; one larger than `limit` is an error.
    pub fn get_object(&self, key: &str, limit: u64) -> Result<Option<(Vec<u8>, String)>, BoxError> {
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
            let etag = answer.e_tag().unwrap_or_default().to_string();
            let bytes = answer.body.collect().await?.into_bytes();
            if bytes.len() as u64 > limit {
                return Err(format!("it is larger than the {limit}-byte limit").into());
            }
            Ok(Some((bytes.to_vec(), etag)))
        })
    }

    /// PUTs `bytes` at `key` only if the object is still at `version` (`If-Match`, or
    /// `If-None-Match: *` to create it). A server that ignores the conditions overwrites.
    pub fn put_if(&self, key: &str, bytes: &[u8], version: &Version) -> Result<Written, BoxError> {
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .body(bytes.to_vec().into());
        request = match version {
            Version::Absent => request.if_none_match("*"),
            Version::ETag(etag) => request.if_match(etag),
            Version::Bytes(_) => return Err("an object has no byte version".into()),
        };
        match self.runtime.block_on(request.send()) {
            Ok(_) => Ok(Written::Written),
            // 412: changed since it was read; 404 with If-Match: deleted since; 409: another
            // conditional write is in flight.
            Err(e)
                if matches!(
                    e.raw_response().map(|r| r.status().as_u16()),
                    Some(409 | 412)
                ) || (matches!(version, Version::ETag(_))
                    && e.raw_response().is_some_and(|r| r.status().as_u16() == 404)) =>
            {
                Ok(Written::Conflict)
            }
            Err(e) => Err(DisplayErrorContext(e).to_string().into()),
        }
    }

    /// Keys under `prefix`, from the run's one listing.
    pub fn keys_under(&self, prefix: &str) -> Result<Vec<String>, SourceError> {
        Ok(self
            .listing()?
            .range(prefix.to_string()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, _)| key.clone())
            .collect())
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
