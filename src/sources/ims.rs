//! The live IMS image list: exactly `GET <url>` (the gateway allows nothing else for this
//! identity), with a bearer token, over verified TLS.

use super::{auth, tls, ImageList};
use crate::deadline::{backoff, Deadline};
use crate::error::SourceError;
use crate::image::{parse_answer, ImageEntry};
use crate::policy::ImsHttp;
use std::cell::RefCell;
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
    /// The first request, sent ahead of need, with the token it carries.
    started: RefCell<Option<(Option<String>, Answer)>>,
}

/// A request under way.
type Answer = tokio::task::JoinHandle<Result<Vec<u8>, SourceError>>;

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
            started: RefCell::new(None),
        })
    }
}

/// One GET of the image list: the answer's bytes, at most [`MAX_ANSWER_BYTES`].
async fn get(
    client: reqwest::Client,
    url: String,
    token: Option<String>,
    timeout: Duration,
) -> Result<Vec<u8>, SourceError> {
    let request_error = |error: reqwest::Error| {
        if error.is_timeout() {
            SourceError::ImsTimeout {
                url: url.clone(),
                timeout,
            }
        } else {
            SourceError::ImsRequest {
                url: url.clone(),
                source: Box::new(error),
            }
        }
    };
    let mut request = client.get(&url).timeout(timeout);
    if let Some(token) = &token {
        request = request.bearer_auth(token);
    }
    let mut response = request.send().await.map_err(request_error)?;
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(request_error)? {
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
    /// Sends the first request now (on the runtime's worker), so that IMS answers while
    /// the run reads its files; [`ImageList::records`] collects it.
    fn start(&self) {
        let Ok(token) = auth::token(&self.settings.auth, &self.deadline) else {
            // `records` asks again and reports it.
            return;
        };
        let timeout = self.deadline.cap(self.settings.timeout);
        let request = get(
            self.client.clone(),
            self.settings.url.clone(),
            token.clone(),
            timeout,
        );
        let answer = self.runtime.spawn(request);
        *self.started.borrow_mut() = Some((token, answer));
    }

    fn records(&self) -> Result<Vec<ImageEntry>, SourceError> {
        let url = &self.settings.url;
        // The token is fetched (or re-read) on every run, and never logged.
        let (token, mut first) = match self.started.borrow_mut().take() {
            Some((token, answer)) => (token, self.runtime.block_on(answer).ok()),
            None => (auth::token(&self.settings.auth, &self.deadline)?, None),
        };
        let mut attempt = 0;
        let bytes = loop {
            if self.deadline.passed() {
                return Err(SourceError::Deadline {
                    what: format!("IMS {url}"),
                    deadline: self.deadline.total(),
                });
            }
            let timeout = self.deadline.cap(self.settings.timeout);
            let answer = match first.take() {
                Some(answer) => answer,
                None => self.runtime.block_on(get(
                    self.client.clone(),
                    url.clone(),
                    token.clone(),
                    timeout,
                )),
            };
            match answer {
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
