//! The live IMS image list: exactly `GET <url>` (the gateway allows nothing else for this
//! identity), with a bearer token, over verified TLS.

use super::{auth, tls, ImageList};
use crate::deadline::{backoff, Deadline};
use crate::error::SourceError;
use crate::image::{parse_answer, ImageEntry};
use crate::policy::ImsHttp;
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Runtime;

/// The most bytes an IMS answer may have (thousands of records are a few MiB).
const MAX_ANSWER_BYTES: usize = crate::image::MAX_ANSWER_BYTES as usize;
/// How much of an error answer's body goes into the message.
const EXCERPT_CHARS: usize = 200;

pub struct ImsClient {
    settings: ImsHttp,
    client: reqwest::Client,
    runtime: Arc<Runtime>,
    deadline: Deadline,
}

impl ImsClient {
    pub fn new(
        settings: &ImsHttp,
        runtime: Arc<Runtime>,
        deadline: Deadline,
    ) -> Result<ImsClient, SourceError> {
        let client = tls::http_client(&settings.tls, "IMS", settings.timeout)?;
        Ok(ImsClient {
            settings: settings.clone(),
            client,
            runtime,
            deadline,
        })
    }

    fn request_error(&self, error: reqwest::Error, timeout: Duration) -> SourceError {
        if error.is_timeout() {
            SourceError::ImsTimeout {
                url: self.settings.url.clone(),
                timeout,
            }
        } else {
            SourceError::ImsRequest {
                url: self.settings.url.clone(),
                source: Box::new(error),
            }
        }
    }

    /// One `GET <url>`, within `timeout`: the body of a success, else the error.
    fn fetch(&self, token: Option<&str>, timeout: Duration) -> Result<Vec<u8>, SourceError> {
        let url = &self.settings.url;
        self.runtime.block_on(async {
            let mut request = self.client.get(url).timeout(timeout);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let mut response = request
                .send()
                .await
                .map_err(|e| self.request_error(e, timeout))?;
            let status = response.status();
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| self.request_error(e, timeout))?
            {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_ANSWER_BYTES {
                    return Err(SourceError::ImsTooLarge {
                        url: url.clone(),
                        limit: MAX_ANSWER_BYTES,
                    });
                }
            }
            if status.is_success() {
                Ok(body)
            } else {
                let text = String::from_utf8_lossy(&body);
                let excerpt: String = text.chars().take(EXCERPT_CHARS).collect();
                Err(SourceError::ImsStatus {
                    url: url.clone(),
                    status: status.to_string(),
                    code: status.as_u16(),
                    refused: matches!(status.as_u16(), 401 | 403),
                    excerpt: excerpt.trim().to_string(),
                })
            }
        })
    }
}

/// Failures worth another try: the server or the way to it may be back in a moment.
fn transient(error: &SourceError) -> bool {
    match error {
        SourceError::ImsTimeout { .. } | SourceError::ImsRequest { .. } => true,
        SourceError::ImsStatus { code, .. } => *code >= 500 || *code == 429,
        _ => false,
    }
}

impl ImageList for ImsClient {
    fn records(&self) -> Result<Vec<ImageEntry>, SourceError> {
        // The token is fetched (or re-read) on every run, and never logged.
        let token = auth::token(&self.settings.auth, &self.deadline)?;
        let url = &self.settings.url;
        let mut attempt = 0;
        let bytes = loop {
            if self.deadline.passed() {
                return Err(SourceError::Deadline {
                    what: format!("IMS {url}"),
                    deadline: self.deadline.total(),
                });
            }
            let timeout = self.deadline.cap(self.settings.timeout);
            match self.fetch(token.as_deref(), timeout) {
                Ok(bytes) => break bytes,
                Err(error) if transient(&error) && attempt < self.settings.retries => {
                    let pause = backoff(attempt);
                    if self.deadline.remaining() <= pause {
                        return Err(error);
                    }
                    attempt += 1;
                    log::warn!(
                        "{}; retry {attempt} of {} in {:.1} s",
                        crate::error::chain(&error),
                        self.settings.retries,
                        pause.as_secs_f64()
                    );
                    std::thread::sleep(pause);
                }
                Err(error) => return Err(error),
            }
        };
        parse_answer(&bytes).map_err(|problem| SourceError::ImsAnswer {
            url: url.clone(),
            problem,
        })
    }
}
