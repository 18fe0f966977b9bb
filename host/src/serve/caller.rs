//! Who is calling `qi-host serve`: the operator over stdio, a bearer-token client, or an
//! external agent that proved its Ed25519 key and holds a session token.
//!
//! Every caller is a principal for the access gate with the id `client:<name>` (the stdio
//! caller is `operator`), and every request it makes is audited under that id.

use super::config::{ServeLimits, ServerConfig};
use crate::error::Error;
use crate::security::TrustLevel;
use crate::security::identity::{Credential, IdentityError, IdentityRegistry};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Shortest bearer token accepted in a token file, bytes.
pub const MIN_TOKEN_BYTES: usize = 32;
/// Longest bearer token accepted in a token file, bytes.
pub const MAX_TOKEN_BYTES: usize = 512;

/// How a caller reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    /// MCP over stdin/stdout: the operator who started the server.
    Stdio,
    /// A bearer token from a token file.
    Token,
    /// An Ed25519 session token.
    Ed25519,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Its principal id: `operator`, or `client:<name>`.
    pub id: String,
    /// Its name in the config (`operator` for stdio).
    pub name: String,
    /// Its trust level.
    pub trust: TrustLevel,
    /// What policies see as `principal.capabilities`.
    pub capabilities: Vec<String>,
    /// Whether the context store sees it as the operator.
    pub operator: bool,
    /// How it reached the server.
    pub via: Via,
}

impl Caller {
    /// The operator over stdio: full trust, the context store's operator.
    pub fn operator() -> Caller {
        Caller {
            id: crate::context::OPERATOR.to_string(),
            name: crate::context::OPERATOR.to_string(),
            trust: TrustLevel::Full,
            capabilities: Vec::new(),
            operator: true,
            via: Via::Stdio,
        }
    }

    /// The id the context store and event bus know it by.
    pub fn store_id(&self) -> &str {
        if self.operator {
            crate::context::OPERATOR
        } else {
            &self.id
        }
    }
}

/// Why a request was not authenticated (HTTP 401).
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("missing `Authorization: Bearer <token>` header")]
    Missing,
    /// The token names no client and no live session.
    #[error("the bearer token is not valid (unknown or expired)")]
    Invalid,
    /// The Ed25519 credential was refused.
    #[error("{0}")]
    Identity(#[from] IdentityError),
}

struct Session {
    caller: Caller,
    expires: Instant,
}

/// Live sessions by token digest, and each identity's, oldest first.
#[derive(Default)]
struct Sessions {
    by_token: HashMap<[u8; 32], Session>,
    by_caller: HashMap<String, std::collections::VecDeque<[u8; 32]>>,
}

/// Token clients, identities and live Ed25519 sessions.
pub struct Auth {
    /// SHA-256 of each client's token → the client.
    tokens: HashMap<[u8; 32], Caller>,
    identities: IdentityRegistry,
    identity_callers: HashMap<String, Caller>,
    sessions: Mutex<Sessions>,
    limits: ServeLimits,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("clients", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Auth {
    /// Reads every client's token file and registers every identity with `identities`.
    pub fn new(config: &ServerConfig, identities: IdentityRegistry) -> Result<Auth, Error> {
        let mut tokens = HashMap::new();
        for (name, c) in &config.clients {
            let field = format!("config.clients.{name}.token_file");
            let text = crate::bounded_read::read_at_most(&c.token_file, MAX_TOKEN_BYTES + 64)
                .map_err(|e| {
                    Error::field(
                        field.clone(),
                        format!("cannot read `{}`: {e}", c.token_file.display()),
                    )
                })?;
            let token = String::from_utf8(text)
                .map_err(|_| Error::field(field.clone(), "the token file is not UTF-8 text"))?;
            let token = token.trim();
            if !(MIN_TOKEN_BYTES..=MAX_TOKEN_BYTES).contains(&token.len())
                || token.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(Error::field(
                    field,
                    format!(
                        "a token is {MIN_TOKEN_BYTES} to {MAX_TOKEN_BYTES} bytes without \
                         spaces (e.g. `openssl rand -hex 32`)"
                    ),
                ));
            }
            let caller = Caller {
                id: format!("client:{name}"),
                name: name.clone(),
                trust: c.trust,
                capabilities: c.capabilities.clone(),
                operator: c.operator,
                via: Via::Token,
            };
            if tokens.insert(digest(token), caller).is_some() {
                return Err(Error::field(
                    field,
                    "the same token is given to two clients",
                ));
            }
        }
        let mut identity_callers = HashMap::new();
        for (name, i) in &config.identities {
            let id = format!("client:{name}");
            identities
                .register(&id, &i.public_key, i.trust)
                .map_err(|e| {
                    Error::field(
                        format!("config.identities.{name}.public_key"),
                        e.to_string(),
                    )
                })?;
            identity_callers.insert(
                id.clone(),
                Caller {
                    id,
                    name: name.clone(),
                    trust: i.trust,
                    capabilities: i.capabilities.clone(),
                    operator: i.operator,
                    via: Via::Ed25519,
                },
            );
        }
        Ok(Auth {
            tokens,
            identities,
            identity_callers,
            sessions: Mutex::default(),
            limits: config.limits,
        })
    }

    /// The host id Ed25519 challenges must name (their audience).
    pub fn host_id(&self) -> &str {
        self.identities.host_id()
    }

    /// The caller a bearer token stands for.
    pub fn bearer(&self, token: &str) -> Result<Caller, AuthError> {
        let d = digest(token);
        if let Some(c) = self.tokens.get(&d) {
            return Ok(c.clone());
        }
        let sessions = self.sessions.lock().expect("session lock poisoned");
        match sessions.by_token.get(&d) {
            Some(s) if s.expires > Instant::now() => Ok(s.caller.clone()),
            _ => Err(AuthError::Invalid),
        }
    }

    /// Verifies an Ed25519 credential (`security::identity`: audience, skew, no replay) and
    /// opens a session: returns its bearer token and how long it lasts.
    pub fn open_session(
        &self,
        credential: &Credential,
        now_ms: u64,
    ) -> Result<(String, Duration), AuthError> {
        let agent = self.identities.verify_agent_identity(credential, now_ms)?;
        let caller = self
            .identity_callers
            .get(&agent.id)
            .cloned()
            .ok_or_else(|| IdentityError::UnknownAgent(agent.id.clone()))?;
        let ttl = Duration::from_millis(self.limits.session_ttl_ms);
        let now = Instant::now();
        let mut guard = self.sessions.lock().expect("session lock poisoned");
        let Sessions {
            by_token,
            by_caller,
        } = &mut *guard;
        // Tokens of expired sessions of any identity are dropped now and then.
        if by_token.len() > 2 * self.limits.max_sessions * by_caller.len().max(1) {
            by_token.retain(|_, s| s.expires > now);
        }
        // Each identity holds at most `max_sessions`: its oldest ends first, so no identity
        // can take sessions from another. Expired ones of this identity go too.
        let mine = by_caller.entry(caller.id.clone()).or_default();
        mine.retain(|d| by_token.get(d).is_some_and(|s| s.expires > now));
        while mine.len() >= self.limits.max_sessions {
            if let Some(old) = mine.pop_front() {
                by_token.remove(&old);
            }
        }
        let token = format!("qis_{}", crate::model::random_hex(64));
        let d = digest(&token);
        mine.push_back(d);
        by_token.insert(
            d,
            Session {
                caller,
                expires: now + ttl,
            },
        );
        Ok((token, ttl))
    }
}

/// Per-client request rate (a token bucket: `burst` at once, `requests_per_second`
/// sustained) and runs in progress.
#[derive(Debug)]
pub struct Quotas {
    limits: ServeLimits,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
    runs: Mutex<HashMap<String, usize>>,
}

/// A run slot of one client; given back when dropped.
#[derive(Debug)]
pub struct RunSlot {
    quotas: Arc<Quotas>,
    client: String,
}

impl Drop for RunSlot {
    fn drop(&mut self) {
        let mut runs = self.quotas.runs.lock().expect("quota lock poisoned");
        if let Some(n) = runs.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                runs.remove(&self.client);
            }
        }
    }
}

impl Quotas {
    /// Quotas under `limits`.
    pub fn new(limits: ServeLimits) -> Quotas {
        Quotas {
            limits,
            buckets: Mutex::default(),
            runs: Mutex::default(),
        }
    }

    /// Takes one request from `client`'s bucket; `Err(retry after)` when it is empty.
    pub fn request(&self, client: &str) -> Result<(), Duration> {
        let rate = f64::from(self.limits.requests_per_second);
        let burst = f64::from(self.limits.burst);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("quota lock poisoned");
        // Full buckets carry no information: dropped so the map stays as small as the set of
        // clients that called recently (clients are config entries, so it is bounded anyway).
        if buckets.len() > 4 * crate::serve::config::MAX_ENTRIES {
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(client.to_string()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rate))
        }
    }

    /// A run slot for `client`, or `Err(in progress)` when it has `max_runs_per_client`.
    pub fn run_slot(self: &Arc<Self>, client: &str) -> Result<RunSlot, usize> {
        let mut runs = self.runs.lock().expect("quota lock poisoned");
        let n = runs.entry(client.to_string()).or_insert(0);
        if *n >= self.limits.max_runs_per_client {
            return Err(*n);
        }
        *n += 1;
        Ok(RunSlot {
            quotas: self.clone(),
            client: client.to_string(),
        })
    }

    /// Runs in progress, over every client.
    pub fn runs_in_progress(&self) -> usize {
        self.runs
            .lock()
            .expect("quota lock poisoned")
            .values()
            .sum()
    }

    /// A slot that is not counted against any limit (a run resumed after a restart).
    pub fn unlimited_slot(self: &Arc<Self>, client: &str) -> RunSlot {
        *self
            .runs
            .lock()
            .expect("quota lock poisoned")
            .entry(client.to_string())
            .or_insert(0) += 1;
        RunSlot {
            quotas: self.clone(),
            client: client.to_string(),
        }
    }
}

/// Session id → caller, and caller → its session ids, oldest first.
type SessionOwners = (
    HashMap<String, String>,
    HashMap<String, std::collections::VecDeque<String>>,
);

/// Which caller opened each MCP session (Streamable HTTP): a session is used only by the
/// caller that opened it, and one caller holds at most `max_per_caller` sessions (opening one
/// more forgets its oldest, which is then refused like an unknown one).
#[derive(Debug)]
pub struct McpSessions {
    max_per_caller: usize,
    owners: Mutex<SessionOwners>,
}

impl McpSessions {
    /// Sessions of at most `max_per_caller` per caller.
    pub fn new(max_per_caller: usize) -> McpSessions {
        McpSessions {
            max_per_caller: max_per_caller.max(1),
            owners: Mutex::default(),
        }
    }

    /// Whether `caller` may use session `id` (it opened it, and it is not forgotten).
    pub fn may_use(&self, caller: &str, id: &str) -> bool {
        let owners = self.owners.lock().expect("session lock poisoned");
        owners.0.get(id).is_some_and(|o| o == caller)
    }

    /// Records that `caller` opened session `id`.
    pub fn opened(&self, caller: &str, id: &str) {
        let mut guard = self.owners.lock().expect("session lock poisoned");
        let (owners, by_caller) = &mut *guard;
        let mine = by_caller.entry(caller.to_string()).or_default();
        while mine.len() >= self.max_per_caller {
            if let Some(old) = mine.pop_front() {
                owners.remove(&old);
            }
        }
        mine.push_back(id.to_string());
        owners.insert(id.to_string(), caller.to_string());
    }

    /// Forgets session `id` (it was deleted).
    pub fn closed(&self, id: &str) {
        let mut guard = self.owners.lock().expect("session lock poisoned");
        let (owners, by_caller) = &mut *guard;
        if let Some(owner) = owners.remove(id)
            && let Some(mine) = by_caller.get_mut(&owner)
        {
            mine.retain(|x| x != id);
            if mine.is_empty() {
                by_caller.remove(&owner);
            }
        }
    }
}
