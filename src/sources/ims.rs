//! The live IMS image list: exactly `GET <url>` (the gateway allows nothing else for this
//! identity), with a bearer token, over verified TLS.

use super::{auth, tls, ImageList};
use crate::error::SourceError;
use crate::image::parse_answer;
use crate::policy::ImsHttp;
use serde_json::Value;
use std::sync::Arc;
use tokio::runtime::Runtime;

/// The most bytes an IMS answer may have (thousands of records are a few MiB).
const MAX_ANSWER_BYTES: usize = crate::image::MAX_ANSWER_BYTES as usize;
/// How much of an error answer's body goes into the message.
const EXCERPT_CHARS: usize = 200;

pub struct ImsClient {
    settings: ImsHttp,
    client: reqwest::Client,
    runtime: Arc<Runtime>,
}

impl ImsClient {
    pub fn new(settings: &ImsHttp, runtime: Arc<Runtime>) -> Result<ImsClient, SourceError> {
        let client = tls::http_client(&settings.tls, "IMS", settings.timeout)?;
        Ok(ImsClient {
            settings: settings.clone(),
            client,
            runtime,
        })
    }

    fn request_error(&self, error: reqwest::Error) -> SourceError {
        if error.is_timeout() {
            SourceError::ImsTimeout {
                url: self.settings.url.clone(),
                timeout: self.settings.timeout,
            }
        } else {
            SourceError::ImsRequest {
                url: self.settings.url.clone(),
                source: Box::new(error),
            }
        }
    }
}

impl ImageList for ImsClient {
    fn records(&self) -> Result<Vec<Value>, SourceError> {
        // The token is fetched (or re-read) on every run, and never logged.
        let token = auth::token(&self.settings.auth)?;
        let url = &self.settings.url;
        let bytes = self.runtime.block_on(async {
            let mut request = self.client.get(url);
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            let mut response = request.send().await.map_err(|e| self.request_error(e))?;
            let status = response.status();
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| self.request_error(e))? {
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
                    refused: matches!(status.as_u16(), 401 | 403),
                    excerpt: excerpt.trim().to_string(),
                })
            }
        })?;
        parse_answer(&bytes).map_err(|problem| SourceError::ImsAnswer {
            url: url.clone(),
            problem,
        })
    }
}
