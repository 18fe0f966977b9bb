//! One configured provider: its HTTP client (reqwest with rustls), key, endpoint and the bound
//! on requests in flight; sending a body with retries that honour `Retry-After` and never pass
//! the caller's deadline; reading an answer under `maxResponseBytes`.

use super::config::{ProviderConfig, ProviderKind};
use super::{LlmFailure, Secret};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// First backoff after a failure without `Retry-After`; it doubles per retry.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest error message from a provider an agent is shown, in bytes (cut after the key is
/// scrubbed, never before).
pub const MAX_MESSAGE_BYTES: usize = 1_024;

/// Longest backoff between two tries without `Retry-After`.
pub const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// A provider ready to send.
pub struct Provider {
    /// Its name in the configuration.
    pub name: String,
    /// Its configuration.
    pub config: ProviderConfig,
    key: Option<Secret>,
    endpoint: String,
    http: reqwest::Client,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("key", &self.key.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// Why one try failed, and whether another may follow.
enum Try {
    /// Worth another try after `wait` (the provider's `Retry-After`, if it gave one).
    Again {
        status: Option<u16>,
        wait: Option<Duration>,
        message: String,
    },
    /// Final.
    Fail(LlmFailure),
}

impl Provider {
    /// Builds the client and reads the key. Errors name the configuration field.
    pub fn new(name: &str, config: ProviderConfig) -> crate::error::Result<Provider> {
        let key = config.load_key(name)?;
        let http = reqwest::Client::builder()
            // Agents never choose the address; a provider that redirects is misconfigured
            // (and a redirect could carry the key elsewhere).
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                crate::error::Error::field(
                    format!("llm.providers.{name}"),
                    format!("cannot build its HTTP client: {e}"),
                )
            })?;
        Ok(Provider {
            name: name.to_string(),
            endpoint: super::providers::endpoint(config.kind, &config.base_url),
            permits: Arc::new(Semaphore::new(config.max_concurrent_requests as usize)),
            key,
            config,
            http,
        })
    }

    /// The key, to scrub from whatever the provider sends back.
    pub fn key(&self) -> Option<&Secret> {
        self.key.as_ref()
    }

    /// The endpoint requests go to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends `body` and returns the answer's JSON. Retries a 429, a 5xx or a failed connection
    /// up to `maxRetries` times, waiting what `Retry-After` says (else backing off from
    /// [`FIRST_BACKOFF`]), as long as the wait ends before `deadline`; each try is bounded by
    /// `timeoutMs` (the caller's own deadline timer drops a try still running at `deadline`).
    /// Every message is scrubbed of the key.
    pub async fn send(
        &self,
        body: &serde_json::Value,
        deadline: Instant,
    ) -> Result<serde_json::Value, LlmFailure> {
        let bytes = serde_json::to_vec(body)
            .map_err(|e| LlmFailure::InvalidRequest(format!("cannot encode the request: {e}")))?;
        let mut backoff = FIRST_BACKOFF;
        let mut tries = 0u32;
        loop {
            tries += 1;
            let outcome = self.try_once(&bytes, deadline).await;
            let (status, wait, message) = match outcome {
                Ok(v) => return Ok(v),
                Err(Try::Fail(f)) => return Err(self.scrub_failure(f)),
                Err(Try::Again {
                    status,
                    wait,
                    message,
                }) => (status, wait, message),
            };
            let message = self.scrub(&message);
            let pause = wait.unwrap_or(backoff).max(Duration::from_millis(1));
            backoff = (backoff * 2).min(MAX_BACKOFF);
            let left = deadline.saturating_duration_since(Instant::now());
            let out_of_tries = tries > self.config.max_retries;
            if out_of_tries || pause >= left {
                let why = if out_of_tries {
                    format!("after {tries} tries")
                } else {
                    format!(
                        "after {tries} tries; the next would start after the agent's deadline \
                         ({} ms left)",
                        left.as_millis()
                    )
                };
                return Err(match (status, wait) {
                    (Some(429), wait) => LlmFailure::RateLimited {
                        retry_after_ms: wait.unwrap_or(pause).as_millis() as u64,
                        message: format!(
                            "provider `{}` is rate limiting ({message}) {why}",
                            self.name
                        ),
                    },
                    _ => LlmFailure::Unavailable(format!(
                        "provider `{}` failed ({message}) {why}",
                        self.name
                    )),
                });
            }
            tracing::info!(provider = %self.name, tries, wait_ms = pause.as_millis() as u64, %message, "retrying a model call");
            tokio::time::sleep(pause).await;
        }
    }

    async fn try_once(&self, body: &[u8], deadline: Instant) -> Result<serde_json::Value, Try> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Try::Fail(LlmFailure::Unavailable(
                "the agent's deadline passed before the call could be sent".into(),
            )));
        }
        // Not cut to the time left: at the deadline the agent's own timer ends the agent and
        // drops this call, so the agent ends at its time limit, never with a timeout of ours
        // racing it.
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let waiting = tokio::time::timeout(left, self.permits.acquire()).await;
        let _permit = match waiting {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => {
                return Err(Try::Fail(LlmFailure::Unavailable(
                    "the broker is shutting down".into(),
                )));
            }
            Err(_) => {
                return Err(Try::Fail(LlmFailure::Unavailable(format!(
                    "the agent's deadline passed while {} other calls to provider `{}` were in \
                     flight (maxConcurrentRequests)",
                    self.config.max_concurrent_requests, self.name
                ))));
            }
        };
        if Instant::now() >= deadline {
            return Err(Try::Fail(LlmFailure::Unavailable(
                "the agent's deadline passed before the call could be sent".into(),
            )));
        }
        let mut req = self
            .http
            .post(&self.endpoint)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        match (self.config.kind, &self.key) {
            (ProviderKind::Openai, Some(k)) => {
                req = req.header(reqwest::header::AUTHORIZATION, k.bearer());
            }
            (ProviderKind::Anthropic, key) => {
                req = req.header("anthropic-version", super::providers::anthropic::VERSION);
                if let Some(k) = key {
                    req = req.header("x-api-key", k.header());
                }
            }
            (ProviderKind::Openai, None) => {}
        }
        let resp = req.send().await.map_err(|e| Try::Again {
            status: None,
            wait: None,
            message: describe_reqwest(&e, timeout),
        })?;
        let status = resp.status();
        let wait = retry_after(resp.headers());
        let max = self.config.max_response_bytes;
        let text = read_bounded(resp, max, timeout).await;
        if status.is_success() {
            let text = text.map_err(|e| match e {
                Read::TooLarge => Try::Fail(LlmFailure::ProviderError(format!(
                    "the answer is larger than {max} bytes (llm.providers.{}.maxResponseBytes)",
                    self.name
                ))),
                Read::Failed(m) => Try::Again {
                    status: None,
                    wait: None,
                    message: m,
                },
            })?;
            return serde_json::from_slice(&text).map_err(|e| {
                Try::Fail(LlmFailure::ProviderError(format!(
                    "the answer is not JSON ({e}): {}",
                    super::providers::cap(&String::from_utf8_lossy(&text), 16 << 10)
                )))
            });
        }
        let detail = match &text {
            Ok(t) => super::providers::error_message(t),
            Err(Read::TooLarge) => format!("an error body over {max} bytes"),
            Err(Read::Failed(m)) => m.clone(),
        };
        let message = format!("{}: {detail}", status.as_u16());
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(Try::Again {
                status: Some(status.as_u16()),
                wait,
                message,
            });
        }
        Err(Try::Fail(LlmFailure::ProviderError(format!(
            "provider `{}` refused the request ({message})",
            self.name
        ))))
    }

    /// What may be shown of `text` from this provider: at most [`MAX_MESSAGE_BYTES`], the key
    /// redacted, withheld whole when it holds part of the key (see [`Secret::guard`]).
    pub fn scrub(&self, text: &str) -> String {
        match &self.key {
            Some(k) => k.guard(text, MAX_MESSAGE_BYTES),
            None => super::providers::cap(text, MAX_MESSAGE_BYTES),
        }
    }

    /// Whether a text from this provider holds part of its key ([`Secret::leaks`]).
    pub fn leaks(&self, text: &str) -> bool {
        self.key.as_ref().is_some_and(|k| k.leaks(text))
    }

    fn scrub_failure(&self, f: LlmFailure) -> LlmFailure {
        f.map_message(|m| self.scrub(&m))
    }
}

enum Read {
    TooLarge,
    Failed(String),
}

/// The body of `resp`, refused once it passes `max` bytes (before reading further).
async fn read_bounded(
    mut resp: reqwest::Response,
    max: u64,
    timeout: Duration,
) -> Result<Vec<u8>, Read> {
    if resp.content_length().is_some_and(|n| n > max) {
        return Err(Read::TooLarge);
    }
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() as u64 + chunk.len() as u64 > max {
                    return Err(Read::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(Read::Failed(describe_reqwest(&e, timeout))),
        }
    }
}

/// What went wrong with a request, without the URL (which is the operator's) or the body.
fn describe_reqwest(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        format!("no answer within {} ms", timeout.as_millis())
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else if e.is_body() || e.is_decode() {
        "the answer broke off".to_string()
    } else {
        "the request failed".to_string()
    }
}

/// The wait a `Retry-After` (seconds or an HTTP date, RFC 9110 section 10.2.3) or a
/// `retry-after-ms` header asks for, at most one hour.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    const MAX: Duration = Duration::from_secs(3_600);
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
    {
        return Some(Duration::from_secs_f64(
            (ms / 1000.0).min(MAX.as_secs_f64()),
        ));
    }
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(MAX.as_secs_f64())));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
            .min(MAX),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn retry_after_reads_seconds_dates_and_milliseconds() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO), "a date in the past");
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("99999999"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3_600)));
        h.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1_500)));
    }
}
