//! The S3 client: the SDK over our own HTTP connector (reqwest on the same rustls/ring
//! stack as IMS, so that `ca_bundle` and `insecure` mean the same for both sources and no
//! second TLS library is built), credentials from the s3fs credentials file only (no
//! environment, profile or instance-metadata lookups), and the bound on requests in flight.

use crate::deadline::Deadline;
use crate::error::SourceError;
use crate::policy::{S3Credentials, S3Settings};
use crate::sources::tls;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    SharedCredentialsProvider,
};
use aws_smithy_runtime_api::client::http::{
    http_client_fn, HttpConnector, HttpConnectorFuture, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_types::body::SdkBody;
use std::path::Path;
use std::time::Duration;

/// The most bytes the connector buffers for one response (manifests are checked against
/// their own, smaller limit before they are fetched).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Reads `ACCESS_KEY_ID:SECRET_KEY` from the credentials file.
pub fn read_credentials(path: &Path) -> Result<Credentials, SourceError> {
    crate::fsio::warn_if_shared("S3 credentials", path);
    let bytes = crate::fsio::read_regular(path, crate::sources::auth::MAX_SECRET_FILE_BYTES)
        .map_err(|source| SourceError::Read {
            what: "S3 credentials",
            source,
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

/// Runs `work`, at most `limit` at a time, the next started as one ends (`ended` is told
/// each time): a task holds its request's whole state from its start, and 5,000 manifest
/// GETs spawned at once held 35 MB. What a lost task would have returned is missing from
/// the answer (logged).
pub(super) async fn at_most<T: Send + 'static>(
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
