//! A bucket of its own on the real S3 server (Ceph RGW) that `tests/run.sh` starts, reached
//! through a recording proxy, filled with the tool's own S3 client.

use super::http::RecordingProxy;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use sbps_reconcile::policy::{S3Credentials, S3Settings, TlsSettings};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub const ACCESS_KEY: &str = "AKIDSBPSTEST";
pub const SECRET_KEY: &str = "sbps-test-secret";

/// The S3 server's address from `SBPS_TEST_S3_ENDPOINT`. Without it a test is skipped
/// with a message, except under CI, where that is a failure.
pub fn server() -> Option<SocketAddr> {
    match std::env::var("SBPS_TEST_S3_ENDPOINT") {
        Ok(url) => {
            let hostport = url.trim_start_matches("http://").trim_end_matches('/');
            Some(
                hostport
                    .parse()
                    .unwrap_or_else(|e| panic!("SBPS_TEST_S3_ENDPOINT {url:?}: {e}")),
            )
        }
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("SBPS_TEST_S3_ENDPOINT is not set: run the suite with tests/run.sh")
        }
        Err(_) => {
            eprintln!("SKIPPED: no S3 server (SBPS_TEST_S3_ENDPOINT unset); run tests/run.sh");
            None
        }
    }
}

pub struct S3Fixture {
    pub proxy: RecordingProxy,
    pub bucket: String,
    client: aws_sdk_s3::Client,
    runtime: tokio::runtime::Runtime,
}

impl S3Fixture {
    /// A new bucket; credentials written to `credentials_file`.
    pub fn new(credentials_file: &Path) -> Option<S3Fixture> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let server = server()?;
        std::fs::write(credentials_file, format!("{ACCESS_KEY}:{SECRET_KEY}\n")).unwrap();
        let proxy = RecordingProxy::start(server);
        let bucket = format!(
            "bi-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let settings = S3Settings {
            endpoint: proxy.url(),
            region: "us-east-1".into(),
            credentials: S3Credentials::File(credentials_file.to_owned()),
            tls: TlsSettings::default(),
            timeout: Duration::from_secs(60),
            page_size: 1000,
            concurrency: 4,
            retries: 2,
            cache_dir: None,
            verify_interval: Duration::ZERO,
        };
        let deadline = sbps_reconcile::deadline::Deadline::after(Duration::from_secs(600));
        let client = sbps_reconcile::sources::s3::client(&settings, deadline).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(client.create_bucket().bucket(&bucket).send())
            .unwrap_or_else(|e| {
                panic!(
                    "create bucket: {}",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                )
            });
        proxy.clear();
        Some(S3Fixture {
            proxy,
            bucket,
            client,
            runtime,
        })
    }

    /// Lets anyone list the bucket and read its objects (a public bucket, as OpenCHAMI
    /// serves its images). RGW enforces this; moto lets anonymous requests through anyway.
    pub fn make_public(&self) {
        let policy = format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":"*","Action":["s3:GetObject","s3:ListBucket"],"Resource":["arn:aws:s3:::{b}","arn:aws:s3:::{b}/*"]}}]}}"#,
            b = self.bucket
        );
        self.runtime
            .block_on(
                self.client
                    .put_bucket_policy()
                    .bucket(&self.bucket)
                    .policy(policy)
                    .send(),
            )
            .unwrap_or_else(|e| {
                panic!(
                    "put bucket policy: {}",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                )
            });
    }

    /// Turns on object versioning for the bucket.
    pub fn enable_versioning(&self) {
        use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
        self.runtime
            .block_on(
                self.client
                    .put_bucket_versioning()
                    .bucket(&self.bucket)
                    .versioning_configuration(
                        VersioningConfiguration::builder()
                            .status(BucketVersioningStatus::Enabled)
                            .build(),
                    )
                    .send(),
            )
            .unwrap_or_else(|e| {
                panic!(
                    "put bucket versioning: {}",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                )
            });
    }

    pub fn put(&self, key: &str, bytes: &[u8]) -> String {
        let answer = self
            .runtime
            .block_on(
                self.client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .body(ByteStream::from(bytes.to_vec()))
                    .send(),
            )
            .unwrap_or_else(|e| {
                panic!("put {key}: {}", aws_sdk_s3::error::DisplayErrorContext(&e))
            });
        answer
            .e_tag()
            .unwrap_or_default()
            .trim_matches('"')
            .to_string()
    }

    /// A multipart upload (parts of 5 MiB, S3's minimum), whose ETag ends in `-N`.
    pub fn put_multipart(&self, key: &str, bytes: &[u8]) -> String {
        const PART: usize = 5 * 1024 * 1024;
        self.runtime.block_on(async {
            let upload = self
                .client
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .unwrap();
            let id = upload.upload_id().unwrap().to_string();
            let mut parts = Vec::new();
            for (i, chunk) in bytes.chunks(PART).enumerate() {
                let number = i32::try_from(i + 1).unwrap();
                let part = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&id)
                    .part_number(number)
                    .body(ByteStream::from(chunk.to_vec()))
                    .send()
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "part {number}: {}",
                            aws_sdk_s3::error::DisplayErrorContext(&e)
                        )
                    });
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .e_tag(part.e_tag().unwrap())
                        .build(),
                );
            }
            let done = self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .unwrap();
            // RGW's answer to CompleteMultipartUpload carries no ETag the SDK reads (moto's
            // does): the object's own HEAD gives it on both.
            let etag = match done.e_tag() {
                Some(etag) if !etag.is_empty() => etag.to_string(),
                _ => self
                    .client
                    .head_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .send()
                    .await
                    .unwrap()
                    .e_tag()
                    .unwrap_or_default()
                    .to_string(),
            };
            etag.trim_matches('"').to_string()
        })
    }

    /// The object's bytes, `None` when there is none.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.runtime.block_on(async {
            match self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
            {
                Ok(answer) => Some(answer.body.collect().await.unwrap().into_bytes().to_vec()),
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => None,
                Err(e) => panic!("get {key}: {}", aws_sdk_s3::error::DisplayErrorContext(&e)),
            }
        })
    }

    pub fn delete(&self, key: &str) {
        self.runtime
            .block_on(
                self.client
                    .delete_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .send(),
            )
            .unwrap();
    }
}
