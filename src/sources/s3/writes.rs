//! Conditional writes: the ledger PUT only if it is still as it was read, and what a
//! refusal or a lost answer means (decided in [`crate::sources::conditional`]).

use super::store::S3Store;
use crate::error::BoxError;
use crate::sources::conditional::{
    after_refusal, after_unknown, AfterRefusal, Answer, ETagForm, Reread, Version, Written,
};
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::error::DisplayErrorContext;

impl S3Store {
    /// PUTs `bytes` at `key` only if the object is still at `version` (`If-Match`, or
    /// `If-None-Match: *` to create it). A refusal or an answer that leaves the outcome
    /// unknown is decided by looking at the object again (see [`crate::sources::conditional`]); the
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
    pub(super) fn put_once(
        &self,
        key: &str,
        bytes: &[u8],
        version: &Version,
        form: ETagForm,
    ) -> Answer {
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
    pub(super) fn head_etag(&self, key: &str) -> Result<Option<String>, BoxError> {
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
    pub(super) fn remember_written(&self, key: &str, bytes: &[u8], etag: Option<String>) {
        if let (Some(etag), Ok(text)) = (etag, std::str::from_utf8(bytes)) {
            self.cache.borrow_mut().insert_ledger(
                key.to_string(),
                etag.trim_matches('"').to_string(),
                text.to_string(),
            );
        }
    }
}
