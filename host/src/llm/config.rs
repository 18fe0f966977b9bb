//! The operator's model configuration: providers, model aliases and prices.
//!
//! Written as a TOML file (`qi-host run --llm-config FILE`, or `$QI_HOST_LLM_CONFIG`) or as a
//! manifest's `[llm]` section, in the same shape:
//!
//! ```toml
//! [providers.local]                  # a provider name: a-z, 0-9, `-`, `_`
//! kind = "openai"                    # OpenAI-compatible Chat Completions, or "anthropic"
//! baseUrl = "http://127.0.0.1:11434" # the host appends /v1/chat/completions or /v1/messages
//! apiKeyEnv = "OPENAI_API_KEY"       # or apiKeyFile = "/run/secrets/key"; neither: no key
//! timeoutMs = 120000                 # per request (each retry has its own), default 120 s
//! maxConcurrentRequests = 16         # in flight to this provider at once, default 16
//! maxRetries = 3                     # after a 429, a 5xx or a lost connection, default 3
//! maxTokensPerCall = 4096            # when a request gives no max-tokens, default 4,096
//! maxResponseBytes = 4194304         # largest answer body read, default 4 MiB
//!
//! [models]                           # aliases: name = "<provider>/<model>"
//! fast = "local/qwen2.5-7b"
//!
//! [prices."local/qwen2.5-7b"]        # USD per million tokens (for the receipts' cost)
//! inputPerMillion = 0.15
//! outputPerMillion = 0.60
//! ```
//!
//! The key is read by the host when the broker is built ([`ProviderConfig::load_key`]) and is
//! never shown: not in errors, logs, audit entries, receipts or anything an agent can read.
//! A model without a price costs 0.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Most providers in one configuration.
pub const MAX_PROVIDERS: usize = 64;
/// Most aliases in one configuration.
pub const MAX_ALIASES: usize = 1_024;
/// Most priced models in one configuration.
pub const MAX_PRICES: usize = 4_096;
/// Largest key file read, in bytes.
pub const MAX_KEY_BYTES: u64 = 4_096;
/// Largest configuration file read, in bytes.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Which wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// OpenAI Chat Completions (`POST /v1/chat/completions`, `Authorization: Bearer`): OpenAI,
    /// vLLM, llama.cpp server, Ollama, LM Studio.
    Openai,
    /// Anthropic Messages (`POST /v1/messages`, `x-api-key`, `anthropic-version: 2023-06-01`).
    Anthropic,
}

/// One provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderConfig {
    /// Its wire format.
    pub kind: ProviderKind,
    /// Scheme, host and optional port and path prefix, e.g. `https://api.openai.com`; the host
    /// appends `/v1/chat/completions` or `/v1/messages` (a trailing `/v1` is accepted).
    pub base_url: String,
    /// The environment variable holding the API key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// A file holding the API key (surrounding whitespace ignored; at most 4 KiB).
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// Per-request timeout, in ms (1 to 3,600,000; default 120,000). A retry has its own; the
    /// agent's deadline bounds them all.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Requests in flight to this provider at once, all agents together (1 to 4,096; default 16).
    #[serde(default = "default_concurrency")]
    pub max_concurrent_requests: u32,
    /// Retries after a 429, a 5xx or a failed connection (0 to 10; default 3). Waits honour
    /// `Retry-After`, else back off from 250 ms doubling, and never pass the agent's deadline.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// `max-tokens` sent when a request gives none (1 to 1,000,000; default 4,096), clamped to
    /// the agent's budget like any other.
    #[serde(default = "default_tokens_per_call")]
    pub max_tokens_per_call: u32,
    /// Largest response body read, in bytes (1 KiB to 64 MiB; default 4 MiB); a larger one is a
    /// `provider-error`.
    #[serde(default = "default_response_bytes")]
    pub max_response_bytes: u64,
}

fn default_timeout_ms() -> u64 {
    120_000
}
fn default_concurrency() -> u32 {
    16
}
fn default_retries() -> u32 {
    3
}
fn default_tokens_per_call() -> u32 {
    4_096
}
fn default_response_bytes() -> u64 {
    4 << 20
}

/// What a model costs, in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Price {
    /// Per million input (prompt) tokens.
    pub input_per_million: f64,
    /// Per million output tokens.
    pub output_per_million: f64,
}

impl Price {
    /// The cost of `input` and `output` tokens, in micro-dollars (rounded up).
    pub fn micro_usd(&self, input: u64, output: u64) -> u64 {
        // USD per million tokens is micro-dollars per token.
        let cost = self.input_per_million * input as f64 + self.output_per_million * output as f64;
        cost.ceil().max(0.0) as u64
    }
}

/// The whole model configuration (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LlmConfig {
    /// Providers by name.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Aliases: name → `<provider>/<model>`.
    #[serde(default)]
    pub models: BTreeMap<String, String>,
    /// Prices by `<provider>/<model>`.
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
}

/// The UTF-8 text of `path`, at most `max` bytes.
fn read_text(path: &Path, max: u64) -> std::io::Result<String> {
    let bytes = crate::bounded_read::read_at_most(path, max as usize)?;
    String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// `id` split as `<provider>/<model>`, both non-empty.
pub fn split_model_id(id: &str) -> Option<(&str, &str)> {
    let (p, m) = id.split_once('/')?;
    (!p.is_empty() && !m.is_empty()).then_some((p, m))
}

impl LlmConfig {
    /// Reads and checks a configuration file. Errors name the file and the field.
    pub fn load(path: &Path) -> Result<LlmConfig> {
        let field = "--llm-config";
        let text = read_text(path, MAX_CONFIG_BYTES)
            .map_err(|e| Error::field(field, format!("cannot read `{}`: {e}", path.display())))?;
        let config: LlmConfig = toml::from_str(&text).map_err(|e| {
            // One line, and never the offending source line (it may hold a key written inline).
            let at = e.span().map_or(String::new(), |span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(" at line {line}, column {column}")
            });
            Error::field(
                field,
                format!(
                    "`{}` is not a model configuration{at}: {}",
                    path.display(),
                    e.message().replace('\n', " ").trim()
                ),
            )
        })?;
        config.check("llm")?;
        Ok(config)
    }

    /// Whether nothing is configured.
    pub fn is_empty(&self) -> bool {
        self.providers.is_empty() && self.models.is_empty() && self.prices.is_empty()
    }

    /// `other`'s providers, aliases and prices added to these; `other` wins on a name both
    /// have.
    pub fn merged(mut self, other: LlmConfig) -> LlmConfig {
        self.providers.extend(other.providers);
        self.models.extend(other.models);
        self.prices.extend(other.prices);
        self
    }

    /// Checks every bound and reference; errors name the field under `prefix` (`llm` for a
    /// manifest's section).
    pub fn check(&self, prefix: &str) -> Result<()> {
        self.check_with(prefix, true)
    }

    /// [`check`](Self::check) without requiring that aliases and prices name a provider of
    /// this configuration (a manifest's section may name the operator's providers).
    pub fn check_shape(&self, prefix: &str) -> Result<()> {
        self.check_with(prefix, false)
    }

    fn check_with(&self, prefix: &str, references: bool) -> Result<()> {
        let over = |what: &str, n: usize, max: usize| {
            Error::field(
                format!("{prefix}.{what}"),
                format!("{n} entries; at most {max} are allowed"),
            )
        };
        if self.providers.len() > MAX_PROVIDERS {
            return Err(over("providers", self.providers.len(), MAX_PROVIDERS));
        }
        if self.models.len() > MAX_ALIASES {
            return Err(over("models", self.models.len(), MAX_ALIASES));
        }
        if self.prices.len() > MAX_PRICES {
            return Err(over("prices", self.prices.len(), MAX_PRICES));
        }
        for (name, p) in &self.providers {
            let f = |field: &str| format!("{prefix}.providers.{name}.{field}");
            if !valid_name(name) {
                return Err(Error::field(
                    format!("{prefix}.providers"),
                    format!("`{name}` is not a provider name: use 1 to 64 of a-z, 0-9, `-`, `_`"),
                ));
            }
            let url = reqwest::Url::parse(&p.base_url).map_err(|e| {
                Error::field(
                    f("baseUrl"),
                    format!(
                        "`{}` is not a URL ({e}); e.g. `http://127.0.0.1:11434`",
                        p.base_url
                    ),
                )
            })?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(Error::field(
                    f("baseUrl"),
                    format!(
                        "`{}` must be an http:// or https:// URL with a host",
                        p.base_url
                    ),
                ));
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err(Error::field(
                    f("baseUrl"),
                    "must not hold credentials; give the key with apiKeyEnv or apiKeyFile",
                ));
            }
            if p.api_key_env.is_some() && p.api_key_file.is_some() {
                return Err(Error::field(
                    f("apiKeyEnv"),
                    "give apiKeyEnv or apiKeyFile, not both",
                ));
            }
            let range = |field: &str, v: u64, lo: u64, hi: u64| {
                if (lo..=hi).contains(&v) {
                    Ok(())
                } else {
                    Err(Error::field(
                        f(field),
                        format!("{v} is out of range; use {lo} to {hi}"),
                    ))
                }
            };
            range("timeoutMs", p.timeout_ms, 1, 3_600_000)?;
            range(
                "maxConcurrentRequests",
                p.max_concurrent_requests.into(),
                1,
                4_096,
            )?;
            range("maxRetries", p.max_retries.into(), 0, 10)?;
            range(
                "maxTokensPerCall",
                p.max_tokens_per_call.into(),
                1,
                1_000_000,
            )?;
            range("maxResponseBytes", p.max_response_bytes, 1 << 10, 64 << 20)?;
        }
        for (alias, target) in &self.models {
            let field = format!("{prefix}.models.{alias}");
            if alias.is_empty() || alias.len() > 128 || alias.contains('/') {
                return Err(Error::field(
                    format!("{prefix}.models"),
                    format!("`{alias}` is not an alias: 1 to 128 bytes, no `/`"),
                ));
            }
            self.known_id(target, &field, references)?;
        }
        for (id, price) in &self.prices {
            let field = format!("{prefix}.prices.\"{id}\"");
            self.known_id(id, &field, references)?;
            for (name, v) in [
                ("inputPerMillion", price.input_per_million),
                ("outputPerMillion", price.output_per_million),
            ] {
                if !v.is_finite() || !(0.0..=1_000_000.0).contains(&v) {
                    return Err(Error::field(
                        format!("{field}.{name}"),
                        format!("{v} is not a price; use 0 to 1,000,000 USD per million tokens"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn known_id(&self, id: &str, field: &str, references: bool) -> Result<()> {
        let Some((provider, model)) = split_model_id(id) else {
            return Err(Error::field(
                field,
                format!("`{id}` is not `<provider>/<model>`, e.g. `local/qwen2.5-7b`"),
            ));
        };
        if model.len() > 256 {
            return Err(Error::field(
                field,
                "the model name is longer than 256 bytes",
            ));
        }
        if references && !self.providers.contains_key(provider) {
            return Err(Error::field(
                field,
                format!(
                    "`{id}` names provider `{provider}`, which is not configured; configured: {}",
                    self.providers
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Ok(())
    }
}

impl ProviderConfig {
    /// The provider's API key, read from its environment variable or file; `None` when it has
    /// neither (a local server). Errors name the field, never the key.
    pub fn load_key(&self, name: &str) -> Result<Option<super::Secret>> {
        if let Some(var) = &self.api_key_env {
            let value = std::env::var(var).map_err(|_| {
                Error::field(
                    format!("llm.providers.{name}.apiKeyEnv"),
                    format!("the environment variable `{var}` is not set (or not UTF-8)"),
                )
            })?;
            return super::Secret::new(value.trim()).map(Some).ok_or_else(|| {
                Error::field(
                    format!("llm.providers.{name}.apiKeyEnv"),
                    format!("`{var}` is empty or not a header value"),
                )
            });
        }
        if let Some(path) = &self.api_key_file {
            let field = format!("llm.providers.{name}.apiKeyFile");
            let text = read_text(path, MAX_KEY_BYTES).map_err(|e| {
                Error::field(&field, format!("cannot read `{}`: {e}", path.display()))
            })?;
            return super::Secret::new(text.trim()).map(Some).ok_or_else(|| {
                Error::field(
                    field,
                    format!("`{}` is empty or not a header value", path.display()),
                )
            });
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LlmConfig> {
        let c: LlmConfig = toml::from_str(text).map_err(|e| Error::field("llm", e.to_string()))?;
        c.check("llm")?;
        Ok(c)
    }

    #[test]
    fn a_full_configuration_parses() {
        let c = parse(
            r#"
            [providers.local]
            kind = "openai"
            baseUrl = "http://127.0.0.1:11434"
            [providers.claude]
            kind = "anthropic"
            baseUrl = "https://api.anthropic.com"
            apiKeyEnv = "ANTHROPIC_API_KEY"
            [models]
            fast = "local/qwen2.5-7b"
            [prices."local/qwen2.5-7b"]
            inputPerMillion = 0.15
            outputPerMillion = 0.6
            "#,
        )
        .unwrap();
        assert_eq!(c.providers["local"].max_concurrent_requests, 16);
        assert_eq!(c.models["fast"], "local/qwen2.5-7b");
        assert_eq!(
            c.prices["local/qwen2.5-7b"].micro_usd(1_000_000, 0),
            150_000
        );
    }

    #[test]
    fn mistakes_name_their_field() {
        let cases = [
            (
                "[providers.local]\nkind = \"openai\"\nbaseUrl = \"ftp://x\"",
                "llm.providers.local.baseUrl",
            ),
            (
                "[providers.local]\nkind = \"openai\"\nbaseUrl = \"http://x\"\ntimeoutMs = 0",
                "llm.providers.local.timeoutMs",
            ),
            (
                "[providers.local]\nkind = \"openai\"\nbaseUrl = \"http://x\"\nmaxRetries = 11",
                "llm.providers.local.maxRetries",
            ),
            ("[models]\nfast = \"nowhere/x\"", "llm.models.fast"),
            ("[models]\nfast = \"no-slash\"", "llm.models.fast"),
            (
                "[providers.a]\nkind = \"openai\"\nbaseUrl = \"http://u:p@x\"",
                "llm.providers.a.baseUrl",
            ),
        ];
        for (text, field) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn the_retry_bound_is_inclusive() {
        let ok = "[providers.a]\nkind = \"openai\"\nbaseUrl = \"http://x\"\nmaxRetries = 10";
        assert!(parse(ok).is_ok());
    }

    #[test]
    fn a_missing_key_variable_is_named_without_a_value() {
        let p = ProviderConfig {
            kind: ProviderKind::Openai,
            base_url: "http://x".into(),
            api_key_env: Some("QI_TEST_SURELY_UNSET_KEY_VAR".into()),
            api_key_file: None,
            timeout_ms: 1,
            max_concurrent_requests: 1,
            max_retries: 0,
            max_tokens_per_call: 1,
            max_response_bytes: 1024,
        };
        let e = p.load_key("a").unwrap_err().to_string();
        assert!(e.contains("QI_TEST_SURELY_UNSET_KEY_VAR"), "{e}");
    }
}
