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
mod redteam2_tests;
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
        if self.0.len() >= LEAK_WINDOW && text.contains(self.0.as_str()) {
            text.replace(self.0.as_str(), "[redacted]")
        } else {
            text.to_string()
        }
    }

    /// Whether `text` holds [`LEAK_WINDOW`] bytes in a row of the key (or of its base64, or of
    /// `Bearer <key>` in base64, or of the key reversed), in any letter case, as written or with
    /// `%XX`, JSON `\\uXXXX` and HTML `&#N;` escapes decoded (up to three times over), and with
    /// white space, zero-width and control characters between its characters dropped. A key
    /// shorter than [`LEAK_WINDOW`] is taken for a local server's placeholder (`EMPTY`,
    /// `ollama`): never searched for, never redacted.
    pub fn leaks(&self, text: &str) -> bool {
        let key = self.0.as_str();
        if key.len() < LEAK_WINDOW {
            return false;
        }
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let reversed: String = key.chars().rev().collect();
        let needles: Vec<String> = [
            key.to_string(),
            reversed,
            b64.encode(key),
            b64.encode(format!("Bearer {key}")),
        ]
        .iter()
        .flat_map(|n| {
            n.as_bytes()
                .windows(LEAK_WINDOW)
                .map(|w| String::from_utf8_lossy(w).to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect();
        let mut forms = vec![text.to_string()];
        for _ in 0..3 {
            let last = forms.last().expect("one form at least");
            let next = html_unescaped(&json_unescaped(&percent_decoded(last)));
            if &next == last {
                break;
            }
            forms.push(next);
        }
        let squeezed: Vec<String> = forms
            .iter()
            .map(|f| {
                f.chars()
                    .filter(|c| {
                        !c.is_whitespace()
                            && !c.is_control()
                            && !matches!(c, '\u{200b}'..='\u{200f}' | '\u{2060}' | '\u{feff}')
                    })
                    .collect()
            })
            .collect();
        forms
            .iter()
            .chain(&squeezed)
            .map(|f| f.to_ascii_lowercase())
            .any(|form| needles.iter().any(|n| form.contains(n.as_str())))
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
/// well-known starts of keys (`sk-proj-`, `sk-ant-api03-`, 8 to 13 bytes) never count. A key
/// shorter than this is a placeholder (see there).
pub const LEAK_WINDOW: usize = 16;

/// What replaces a text that held part of a key.
pub const WITHHELD: &str = "[withheld: it held part of the provider's key]";

fn percent_decoded(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// `text` with numeric HTML character references (`&#115;`, `&#x73;`) decoded.
fn html_unescaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("&#") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let decoded = after.find(';').and_then(|end| {
            let n = &after[..end];
            let code = match n.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok(),
                None => n.parse().ok(),
            }?;
            char::from_u32(code).map(|c| (c, end + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &after[len..];
            }
            None => {
                out.push_str("&#");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
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
        let s = Secret::new("sk-test-1234567890").unwrap();
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
        assert_eq!(
            s.redact("echo Bearer sk-test-1234567890 and sk-test-1234567890"),
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
        // Other forms.
        assert!(s.leaks("SK-0123456789ABCDEF"), "upper case");
        assert!(s.leaks("s k - 0 1 2 3 4 5 6 7 8 9 a b c d"), "spaced");
        assert!(s.leaks("fedcba9876543210-ks"), "reversed");
        assert!(s.leaks("&#115;&#107;&#45;0123456789abcdef"), "HTML");
        assert!(s.leaks("%2573k-0123456789abcdef"), "percent-encoded twice");
        use base64::Engine as _;
        let b = base64::engine::general_purpose::STANDARD.encode("Bearer sk-0123456789abcdefXYZ");
        assert!(s.leaks(&b), "base64 of the header");
        // A placeholder key is neither searched for nor redacted.
        let p = Secret::new("ollama").unwrap();
        assert!(!p.leaks("ollama"));
        assert_eq!(
            p.guard("{\"note\":\"ollama\"}", 100),
            "{\"note\":\"ollama\"}"
        );
    }
}
