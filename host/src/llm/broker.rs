//! The broker: resolves a model name the operator configured, answers a call from a recording
//! or from its provider, and records what the provider answered.

use super::client::Provider;
use super::config::{LlmConfig, Price, split_model_id};
use super::recordings::{Lookup, Recordings};
use super::request::{ChatRequest, ChatResponse};
use super::{LlmFailure, providers};
use std::collections::BTreeMap;
use std::time::Instant;

/// Where answers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// From the providers; a retried or resumed subtask's repeated request from its recording.
    Live,
    /// From recordings only (`--llm-replay`): nothing is sent, no key is read, and a request
    /// without a recording fails with `unavailable` naming it.
    Replay,
}

/// A model name resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// `<provider>/<model>`.
    pub id: String,
    /// The provider's name.
    pub provider: String,
    /// The model as the provider names it.
    pub model: String,
}

/// One call, checked and budgeted by the caller.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The request as the agent made it.
    pub request: &'a ChatRequest,
    /// Its model, resolved.
    pub resolved: &'a Resolved,
    /// `max_tokens` to send (the budget's clamp applied).
    pub max_tokens: u32,
    /// [`ChatRequest::hash`] for `resolved.id`.
    pub hash: &'a str,
    /// The caller's recording scope (`run/<run>/<subtask>` or `agent/<id>`).
    pub scope: &'a str,
    /// Which time in its attempt the caller makes this request (from 1).
    pub occurrence: u32,
    /// The caller's deadline: no try starts, and no wait ends, after it.
    pub deadline: Instant,
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// What the model said.
    pub response: ChatResponse,
    /// Whether it came from a recording (nothing was sent or paid).
    pub replayed: bool,
}

/// The host's model broker (see [`crate::llm`]).
pub struct LlmBroker {
    config: LlmConfig,
    providers: BTreeMap<String, Provider>,
    recordings: Recordings,
    mode: Mode,
}

impl std::fmt::Debug for LlmBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmBroker")
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .field("mode", &self.mode)
            .finish()
    }
}

impl LlmBroker {
    /// Checks `config`, builds each provider's client and reads its key (not under
    /// [`Mode::Replay`], which never sends). Errors name the configuration field.
    pub fn new(
        config: LlmConfig,
        recordings: Recordings,
        mode: Mode,
    ) -> crate::error::Result<LlmBroker> {
        config.check("llm")?;
        let mut providers = BTreeMap::new();
        if mode == Mode::Live {
            for (name, p) in &config.providers {
                providers.insert(name.clone(), Provider::new(name, p.clone())?);
            }
        }
        Ok(LlmBroker {
            config,
            providers,
            recordings,
            mode,
        })
    }

    /// Where answers come from.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The configuration.
    pub fn config(&self) -> &LlmConfig {
        &self.config
    }

    /// `name` (an alias or a `<provider>/<model>` id of a configured provider) resolved;
    /// `Err` says which names are known.
    pub fn resolve(&self, name: &str) -> Result<Resolved, String> {
        let id = self.config.models.get(name).map_or(name, String::as_str);
        match split_model_id(id) {
            Some((provider, model)) if self.config.providers.contains_key(provider) => {
                Ok(Resolved {
                    id: id.to_string(),
                    provider: provider.to_string(),
                    model: model.to_string(),
                })
            }
            _ => Err(format!(
                "request.model: `{name}` is not a model this host knows; use an alias ({}) or \
                 `<provider>/<model>` with a configured provider ({})",
                join(self.config.models.keys()),
                join(self.config.providers.keys()),
            )),
        }
    }

    /// Every name the configuration mentions, sorted: aliases, their targets and priced ids.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .config
            .models
            .iter()
            .flat_map(|(a, t)| [a.clone(), t.clone()])
            .chain(self.config.prices.keys().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The price of `id`, if configured.
    pub fn price(&self, id: &str) -> Option<Price> {
        self.config.prices.get(id).copied()
    }

    /// `maxTokensPerCall` of `provider`.
    pub fn max_tokens_per_call(&self, provider: &str) -> u32 {
        self.config
            .providers
            .get(provider)
            .map_or(4_096, |p| p.max_tokens_per_call)
    }

    /// Answers `call`: from a recording when [`Recordings`] has one for it (see there), else,
    /// live, from its provider, recording the answer (durably) before returning it. `paid` is
    /// set to the usage a provider reported for a live answer, also when the answer is then
    /// refused (malformed, too many tool calls, holding part of the key): it was paid for.
    pub async fn chat(
        &self,
        call: Call<'_>,
        paid: &mut Option<super::Usage>,
    ) -> Result<Answer, LlmFailure> {
        let lookup = match self.mode {
            Mode::Live => Lookup::SameScope,
            Mode::Replay => Lookup::AnyScope,
        };
        if let Some(response) = self
            .recordings
            .find(call.hash, call.scope, call.occurrence, lookup)
            .await
            .map_err(LlmFailure::Unavailable)?
        {
            return Ok(Answer {
                response,
                replayed: true,
            });
        }
        if self.mode == Mode::Replay {
            return Err(LlmFailure::Unavailable(format!(
                "--llm-replay: there is no recording of {}",
                call.request.describe(call.hash)
            )));
        }
        let provider = self.providers.get(&call.resolved.provider).ok_or_else(|| {
            LlmFailure::InvalidRequest(format!(
                "provider `{}` is not configured",
                call.resolved.provider
            ))
        })?;
        let kind = provider.config.kind;
        let body = providers::encode(kind, call.request, &call.resolved.model, call.max_tokens)
            .map_err(LlmFailure::InvalidRequest)?;
        let json = provider.send(&body, call.deadline).await?;
        *paid = providers::usage(kind, &json);
        let mut response =
            providers::decode(kind, call.request, &provider.name, &json).map_err(|e| {
                LlmFailure::ProviderError(provider.scrub(&format!(
                    "the answer of provider `{}` cannot be used: {e}",
                    provider.name
                )))
            })?;
        if let Some(key) = provider.key() {
            response.content = key.redact(&response.content);
            response.model = key.redact(&response.model);
            let mut all = format!("{}{}", response.content, response.model);
            for c in &mut response.tool_calls {
                c.id = key.redact(&c.id);
                c.name = key.redact(&c.name);
                c.arguments = key.redact(&c.arguments);
                all.push_str(&c.id);
                all.push_str(&c.name);
                all.push_str(&c.arguments);
            }
            // Part of the key, encoded or split over fields: nothing of the answer is shown.
            let fields = std::iter::once(&response.content)
                .chain(std::iter::once(&response.model))
                .chain(
                    response
                        .tool_calls
                        .iter()
                        .flat_map(|c| [&c.id, &c.name, &c.arguments]),
                );
            if provider.leaks(&all) || fields.into_iter().any(|f| provider.leaks(f)) {
                return Err(LlmFailure::ProviderError(format!(
                    "the answer of provider `{}` held part of the host's key; it was withheld",
                    provider.name
                )));
            }
        }
        if let Err(e) = self
            .recordings
            .record(
                call.hash,
                call.scope,
                call.occurrence,
                call.request,
                &response,
            )
            .await
        {
            // The answer is paid for: the agent gets it; a retry will pay again.
            tracing::warn!(error = %e, "a model answer could not be recorded");
        }
        Ok(Answer {
            response,
            replayed: false,
        })
    }
}

fn join<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = names.map(String::as_str).collect();
    if v.is_empty() {
        "none configured".into()
    } else {
        v.join(", ")
    }
}
