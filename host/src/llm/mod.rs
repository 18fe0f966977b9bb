//! The model broker behind `qi:agent/llm`: agents ask, the host holds the credentials, sends
//! the request to the provider the operator configured, records the answer and returns it.
//!
//! Files: [`config`] (providers, aliases, prices: the operator's TOML or a manifest's `[llm]`),
//! [`request`] (the host's form of a call and an answer, their bounds, the request hash),
//! [`providers`] (OpenAI Chat Completions and Anthropic Messages), [`client`] (one provider: HTTP,
//! retries, bounded reads), [`recordings`] (durable record and replay), [`broker`] (resolving a
//! model name and answering a call). The agent-facing side (grants, budgets, gate, audit,
//! receipts) is `crate::interfaces::llm`.
//!
//! The key of a provider is read when the broker is built and lives only in [`Secret`]: it is
//! sent in the provider's auth header and scrubbed (`[redacted]`) from everything a provider
//! sends back before an agent, a log or the audit log sees it.

pub mod broker;
pub mod client;
pub mod config;
pub mod providers;
pub mod recordings;
pub mod request;
pub mod schema;

#[cfg(test)]
mod redteam_tests;

pub use broker::{Answer, Call, LlmBroker, Mode, Resolved};
pub use config::{LlmConfig, Price, ProviderConfig, ProviderKind};
pub use recordings::Recordings;
pub use request::{ChatRequest, ChatResponse, FinishReason, Usage};

use zeroize::Zeroizing;

/// An API key: never printed (`Debug` shows `[redacted]`), wiped from memory when dropped.
pub struct Secret(Zeroizing<String>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl Secret {
    /// `text` as a key, if it is non-empty visible ASCII (what an HTTP header carries).
    pub fn new(text: &str) -> Option<Secret> {
        let ok = !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic());
        ok.then(|| Secret(Zeroizing::new(text.to_string())))
    }

    fn value(text: &str) -> reqwest::header::HeaderValue {
        let mut v = reqwest::header::HeaderValue::from_str(text)
            .expect("a key is checked to be visible ASCII");
        v.set_sensitive(true);
        v
    }

    /// `Bearer <key>`, marked sensitive.
    pub(crate) fn bearer(&self) -> reqwest::header::HeaderValue {
        Self::value(&Zeroizing::new(format!("Bearer {}", self.0.as_str())))
    }

    /// The key as a header value, marked sensitive.
    pub(crate) fn header(&self) -> reqwest::header::HeaderValue {
        Self::value(&self.0)
    }

    /// `text` with every occurrence of the key replaced by `[redacted]`.
    pub fn redact(&self, text: &str) -> String {
        if text.contains(self.0.as_str()) {
            text.replace(self.0.as_str(), "[redacted]")
        } else {
            text.to_string()
        }
    }

    /// Whether `text` holds [`LEAK_WINDOW`] bytes in a row of the key, as written, with `%XX`
    /// escapes decoded, or with JSON `\uXXXX` and `\x` escapes decoded.
    pub fn leaks(&self, text: &str) -> bool {
        let key = self.0.as_bytes();
        let w = LEAK_WINDOW.min(key.len());
        let forms = [
            text.to_string(),
            percent_decoded(text),
            json_unescaped(text),
        ];
        forms.iter().any(|form| {
            key.windows(w).any(|part| {
                // The key is visible ASCII (checked in `new`).
                form.contains(std::str::from_utf8(part).unwrap_or_default())
            })
        })
    }

    /// What may be shown of `text` from a provider, at most `max` bytes: the key redacted;
    /// the whole text withheld when it still holds part of the key in any form
    /// ([`leaks`](Self::leaks)); cut after that, and a cut that ends in the start of the key
    /// loses that start too.
    pub fn guard(&self, text: &str, max: usize) -> String {
        let text = self.redact(text);
        if self.leaks(&text) {
            return WITHHELD.to_string();
        }
        let mut cut = providers::cap(&text, max);
        if cut.len() < text.len() {
            cut.pop(); // the `…`
            let key = self.0.as_str();
            if let Some(n) = (1..key.len()).rev().find(|&n| cut.ends_with(&key[..n])) {
                cut.truncate(cut.len() - n);
            }
            cut.push('…');
        }
        cut
    }
}

/// Bytes of the key in a row that count as a leak ([`Secret::leaks`]): long enough that the
/// well-known starts of keys (`sk-proj-`, `sk-ant-api03-`, 8 to 13 bytes) never count.
pub const LEAK_WINDOW: usize = 16;

/// What replaces a text that held part of a key.
pub const WITHHELD: &str = "[withheld: it held part of the provider's key]";

fn percent_decoded(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_unescaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    Some(d) => out.push(d),
                    None => out.push_str(&hex),
                }
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// Why a model call failed: the host's side of `qi:agent/llm`'s `llm-error`. Messages never
/// hold a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LlmFailure {
    /// Not granted, or refused by the access policies.
    AccessDenied(String),
    /// A budget is spent.
    LimitExceeded(String),
    /// Malformed, too large, or an unknown model.
    InvalidRequest(String),
    /// The provider kept rate limiting.
    RateLimited {
        /// The wait the provider asked for, in ms.
        retry_after_ms: u64,
        /// What happened.
        message: String,
    },
    /// Unreachable, failing, timed out, or no recording under replay.
    Unavailable(String),
    /// Refused by the provider (4xx) or answered with something unusable.
    ProviderError(String),
}

impl LlmFailure {
    /// The WIT variant's name (`access-denied`, ...), as receipts and audit entries spell it.
    pub fn kind(&self) -> &'static str {
        match self {
            LlmFailure::AccessDenied(_) => "access-denied",
            LlmFailure::LimitExceeded(_) => "limit-exceeded",
            LlmFailure::InvalidRequest(_) => "invalid-request",
            LlmFailure::RateLimited { .. } => "rate-limited",
            LlmFailure::Unavailable(_) => "unavailable",
            LlmFailure::ProviderError(_) => "provider-error",
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        match self {
            LlmFailure::AccessDenied(m)
            | LlmFailure::LimitExceeded(m)
            | LlmFailure::InvalidRequest(m)
            | LlmFailure::RateLimited { message: m, .. }
            | LlmFailure::Unavailable(m)
            | LlmFailure::ProviderError(m) => m,
        }
    }

    /// The same failure with `f` applied to its message.
    pub fn map_message(self, f: impl FnOnce(String) -> String) -> LlmFailure {
        match self {
            LlmFailure::AccessDenied(m) => LlmFailure::AccessDenied(f(m)),
            LlmFailure::LimitExceeded(m) => LlmFailure::LimitExceeded(f(m)),
            LlmFailure::InvalidRequest(m) => LlmFailure::InvalidRequest(f(m)),
            LlmFailure::RateLimited {
                retry_after_ms,
                message,
            } => LlmFailure::RateLimited {
                retry_after_ms,
                message: f(message),
            },
            LlmFailure::Unavailable(m) => LlmFailure::Unavailable(f(m)),
            LlmFailure::ProviderError(m) => LlmFailure::ProviderError(f(m)),
        }
    }
}

impl std::fmt::Display for LlmFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind(), self.message())
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn a_secret_is_never_printed_and_is_scrubbed_from_text() {
        let s = Secret::new("sk-test-123").unwrap();
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
        assert_eq!(
            s.redact("echo Bearer sk-test-123 and sk-test-123"),
            "echo Bearer [redacted] and [redacted]"
        );
        assert!(Secret::new("").is_none());
        assert!(Secret::new("has space").is_none());
        assert!(s.bearer().is_sensitive());
    }

    #[test]
    fn parts_and_encodings_of_the_key_are_withheld_and_a_cut_never_ends_in_it() {
        let s = Secret::new("sk-0123456789abcdefXYZ").unwrap();
        assert!(s.leaks("xx 0123456789abcdef yy"), "16 bytes of it");
        assert!(!s.leaks("xx 0123456789abcde yy"), "15 bytes are not a leak");
        assert!(!s.leaks("keys look like sk-0123..."));
        assert!(s.leaks("%30%31%32%33%34%35%36%37%38%39%61%62%63%64%65%66"));
        assert!(s.leaks("\\u0030123456789abcdef"));
        assert_eq!(s.guard("say sk-0123456789abcdefXYZ", 100), "say [redacted]");
        assert_eq!(s.guard("say 3456789abcdefXYZ", 100), super::WITHHELD);
        // A cut inside the key leaves none of it.
        assert_eq!(s.guard("aaaa sk-0123", 7), "aaaa …");
        assert_eq!(s.guard("aaaa bbbb", 7), "aaaa bb…");
    }
}
