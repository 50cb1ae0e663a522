//! The live IMS image list: exactly `GET <url>` (the gateway allows nothing else for this
//! identity), with a bearer token, over verified TLS.

use super::{auth, offline::parse_image_list, tls, ImageList};
use crate::error::Error;
use crate::policy::ImsHttp;
use serde_json::Value;
use std::sync::Arc;
use tokio::runtime::Runtime;

/// The most bytes an IMS answer may have (thousands of records are a few MiB).
const MAX_ANSWER_BYTES: usize = 256 * 1024 * 1024;

pub struct ImsClient {
    settings: ImsHttp,
    client: reqwest::Client,
    runtime: Arc<Runtime>,
}

impl ImsClient {
    pub fn new(settings: &ImsHttp, runtime: Arc<Runtime>) -> Result<ImsClient, Error> {
        let client = tls::http_client(&settings.tls, "IMS", settings.timeout)?;
        Ok(ImsClient {
            settings: settings.clone(),
            client,
            runtime,
        })
    }
}

impl ImageList for ImsClient {
    fn records(&self) -> Result<Vec<Value>, Error> {
        // The token is fetched (or re-read) on every run, and never logged.
        let token = auth::token(&self.settings.auth)?;
        let url = &self.settings.url;
        let timeout = self.settings.timeout;
        let bytes = self.runtime.block_on(async {
            let mut request = self.client.get(url);
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            let mut response = request
                .send()
                .await
                .map_err(|e| describe(&e, url, timeout))?;
            let status = response.status();
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| describe(&e, url, timeout))?
            {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_ANSWER_BYTES {
                    return Err(format!(
                        "IMS answer from {url} is larger than {MAX_ANSWER_BYTES} bytes"
                    ));
                }
            }
            if status.is_success() {
                Ok(body)
            } else {
                let text = String::from_utf8_lossy(&body);
                let excerpt: String = text.chars().take(200).collect();
                let hint = match status.as_u16() {
                    401 | 403 => " (the credentials were refused)",
                    _ => "",
                };
                Err(format!(
                    "IMS {url} answered HTTP {status}{hint}: {}",
                    excerpt.trim()
                ))
            }
        });
        let bytes = bytes.map_err(Error::Source)?;
        parse_image_list(&bytes).map_err(|e| Error::Source(format!("IMS {url}: {e}")))
    }
}

fn describe(error: &reqwest::Error, url: &str, timeout: std::time::Duration) -> String {
    if error.is_timeout() {
        format!(
            "IMS {url} did not answer within {:.1} s (catalogue.ims.timeout)",
            timeout.as_secs_f64()
        )
    } else {
        format!("cannot fetch IMS images: {}", tls::chain(error))
    }
}
