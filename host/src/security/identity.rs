//! Identity of agents that connect from outside the host (API or MCP clients, later).
//!
//! Sub-agents need none of this: the host assigns each one an id bound to its Store, and every
//! host call it makes carries that id, so a guest can never act as another agent. An external
//! agent instead proves who it is with an Ed25519 signature (`ed25519-dalek`, strict
//! verification) over a challenge string naming the host it is meant for (the audience):
//!
//! ```text
//! qi-host-auth:v2:<host id>:<agent id>:<unix ms>:<nonce>
//! ```
//!
//! The host id is [`Store::host_id`](crate::store::Store::host_id): random, kept in the data
//! directory, so it is stable across restarts and differs between hosts. A signature made for
//! one host does not verify at another.
//!
//! [`IdentityRegistry::verify_agent_identity`] accepts a credential when the agent is
//! registered, the timestamp is within [`MAX_SKEW_MS`] of the host's clock, the nonce was not
//! used before within that window (no replay), and the signature verifies under the agent's
//! registered public key. Every verification, accepted or refused, is audited; one the audit
//! log cannot record is refused ([`IdentityError::AuditUnavailable`]), as is a registration.
//!
//! The nonce store is bounded by [`MAX_NONCES`]. Nonces older than twice the skew window are
//! dropped first (their credentials are refused as expired anyway, so forgetting them cannot
//! let a replay through). If the store is still full of live nonces, a new credential is
//! refused ([`IdentityError::TooManyNonces`]) rather than forgetting a live nonce, which would
//! let that credential be replayed.

use super::TrustLevel;
use crate::audit::{AuditDecision, AuditLog, NewAuditEntry};
use ed25519_dalek::{Signature, VerifyingKey};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

/// How far a credential's timestamp may be from the host's clock.
pub const MAX_SKEW_MS: u64 = 60_000;

/// How many used nonces the registry remembers (default capacity of
/// [`IdentityRegistry::new`]): at most this many accepted credentials per two skew windows
/// (two minutes); past it, new credentials are refused until old nonces expire.
pub const MAX_NONCES: usize = 100_000;

/// A registered external agent.
#[derive(Debug, Clone)]
pub struct ExternalAgent {
    /// Its id.
    pub id: String,
    /// Its Ed25519 public key.
    pub public_key: VerifyingKey,
    /// Its trust level.
    pub trust: TrustLevel,
}

/// What an external agent presents.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credential {
    /// Who it claims to be.
    pub agent_id: String,
    /// When it signed, unix ms.
    pub timestamp_ms: u64,
    /// A fresh random string (8 to 128 characters).
    pub nonce: String,
    /// The Ed25519 signature of the challenge, hex (128 characters).
    pub signature: String,
}

impl Credential {
    /// The signed challenge, for the host whose id is `host_id` (its audience).
    pub fn challenge(host_id: &str, agent_id: &str, timestamp_ms: u64, nonce: &str) -> String {
        format!("qi-host-auth:v2:{host_id}:{agent_id}:{timestamp_ms}:{nonce}")
    }
}

/// Why a credential was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// No such registered agent.
    #[error("agent `{0}` is not registered")]
    UnknownAgent(String),
    /// The timestamp is too far from the host's clock.
    #[error("credential timestamp is {0} ms away from the host's clock (limit {MAX_SKEW_MS} ms)")]
    Expired(u64),
    /// The nonce was seen before.
    #[error("nonce already used (replay)")]
    Replay,
    /// Malformed nonce or signature.
    #[error("malformed credential: {0}")]
    Malformed(String),
    /// The signature does not verify (also: it was made for another host).
    #[error(
        "signature does not verify under the agent's registered key (is it signed for this host's id?)"
    )]
    BadSignature,
    /// The verification (or registration) could not be recorded in the audit log.
    #[error("the audit log cannot record this: {0}")]
    AuditUnavailable(String),
    /// The nonce store is full of live nonces.
    #[error(
        "too many credentials within the replay window ({0} live nonces); retry once older ones expire ({MAX_SKEW_MS} ms)"
    )]
    TooManyNonces(usize),
}

/// Used nonces, oldest first, with a set for lookups.
#[derive(Default)]
struct Nonces {
    order: VecDeque<(u64, String, String)>,
    seen: HashSet<(String, String)>,
}

/// Registered external agents and recently used nonces.
pub struct IdentityRegistry {
    host_id: String,
    agents: Mutex<HashMap<String, ExternalAgent>>,
    nonces: Mutex<Nonces>,
    nonce_capacity: usize,
    audit: Option<AuditLog>,
}

impl std::fmt::Debug for IdentityRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityRegistry").finish_non_exhaustive()
    }
}

impl IdentityRegistry {
    /// An empty registry for the host `host_id` (the audience credentials must name; use
    /// [`Store::host_id`](crate::store::Store::host_id)) that audits to `audit` and remembers
    /// up to [`MAX_NONCES`] nonces.
    pub fn new(host_id: &str, audit: Option<AuditLog>) -> Self {
        IdentityRegistry {
            host_id: host_id.to_string(),
            agents: Mutex::default(),
            nonces: Mutex::default(),
            nonce_capacity: MAX_NONCES,
            audit,
        }
    }

    /// The same registry remembering at most `capacity` nonces (at least 1) instead of
    /// [`MAX_NONCES`].
    pub fn with_nonce_capacity(mut self, capacity: usize) -> Self {
        self.nonce_capacity = capacity.max(1);
        self
    }

    /// The audience credentials must name.
    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// Registers (or replaces) an external agent with its public key as 64 hex characters.
    pub fn register(
        &self,
        id: &str,
        public_key_hex: &str,
        trust: TrustLevel,
    ) -> Result<(), IdentityError> {
        let bytes: [u8; 32] = hex::decode(public_key_hex)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                IdentityError::Malformed("the public key must be 64 hex characters".into())
            })?;
        let public_key = VerifyingKey::from_bytes(&bytes)
            .map_err(|e| IdentityError::Malformed(format!("not an Ed25519 public key: {e}")))?;
        // Recorded first: a registration the audit log cannot record is refused.
        self.audit(
            id,
            AuditDecision::Record,
            "register-identity",
            format!("trust {}", trust.as_str()),
        )?;
        self.agents.lock().expect("identity lock poisoned").insert(
            id.to_string(),
            ExternalAgent {
                id: id.to_string(),
                public_key,
                trust,
            },
        );
        Ok(())
    }

    /// Records a decision; `Err` when the audit log cannot (the caller then refuses).
    fn audit(
        &self,
        agent: &str,
        decision: AuditDecision,
        op: &str,
        reason: String,
    ) -> Result<(), IdentityError> {
        match &self.audit {
            Some(a) => a
                .record(NewAuditEntry::new(agent, "identity", op, decision, reason))
                .map_err(|e| IdentityError::AuditUnavailable(e.to_string())),
            None => Ok(()),
        }
    }

    /// `verifyAgentIdentity`: checks `cred` at host time `now_ms` and returns the agent.
    pub fn verify_agent_identity(
        &self,
        cred: &Credential,
        now_ms: u64,
    ) -> Result<ExternalAgent, IdentityError> {
        // Fail-closed: an accepted credential the audit log cannot record is refused (a
        // refusal stays one whether or not it could be recorded).
        match self.check(cred, now_ms) {
            Ok(a) => self
                .audit(
                    &a.id,
                    AuditDecision::Allow,
                    "verify-identity",
                    "signature verified".into(),
                )
                .map(|()| a),
            Err(e) => {
                let _ = self.audit(
                    &cred.agent_id,
                    AuditDecision::Deny,
                    "verify-identity",
                    e.to_string(),
                );
                Err(e)
            }
        }
    }

    fn check(&self, cred: &Credential, now_ms: u64) -> Result<ExternalAgent, IdentityError> {
        let agent = self
            .agents
            .lock()
            .expect("identity lock poisoned")
            .get(&cred.agent_id)
            .cloned()
            .ok_or_else(|| IdentityError::UnknownAgent(cred.agent_id.clone()))?;
        let skew = now_ms.abs_diff(cred.timestamp_ms);
        if skew > MAX_SKEW_MS {
            return Err(IdentityError::Expired(skew));
        }
        if !(8..=128).contains(&cred.nonce.len()) || cred.nonce.contains(':') {
            return Err(IdentityError::Malformed(
                "the nonce must be 8 to 128 characters without `:`".into(),
            ));
        }
        let sig: [u8; 64] = hex::decode(&cred.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                IdentityError::Malformed("the signature must be 128 hex characters".into())
            })?;
        let challenge = Credential::challenge(
            &self.host_id,
            &cred.agent_id,
            cred.timestamp_ms,
            &cred.nonce,
        );
        agent
            .public_key
            .verify_strict(challenge.as_bytes(), &Signature::from_bytes(&sig))
            .map_err(|_| IdentityError::BadSignature)?;
        // Replay: remember nonces for twice the skew window (a credential older than that is
        // refused as expired above, so its nonce can be forgotten).
        let mut guard = self.nonces.lock().expect("nonce lock poisoned");
        let store = &mut *guard;
        while let Some((t, _, _)) = store.order.front() {
            if now_ms.saturating_sub(*t) <= 2 * MAX_SKEW_MS {
                break;
            }
            if let Some((_, a, n)) = store.order.pop_front() {
                store.seen.remove(&(a, n));
            }
        }
        let key = (cred.agent_id.clone(), cred.nonce.clone());
        if store.seen.contains(&key) {
            return Err(IdentityError::Replay);
        }
        if store.order.len() >= self.nonce_capacity {
            return Err(IdentityError::TooManyNonces(store.order.len()));
        }
        store
            .order
            .push_back((now_ms, key.0.clone(), key.1.clone()));
        store.seen.insert(key);
        Ok(agent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    const HOST: &str = "host-test-1";

    fn signed(key: &SigningKey, agent: &str, t: u64, nonce: &str) -> Credential {
        signed_for(HOST, key, agent, t, nonce)
    }

    fn signed_for(host: &str, key: &SigningKey, agent: &str, t: u64, nonce: &str) -> Credential {
        let sig = key.sign(Credential::challenge(host, agent, t, nonce).as_bytes());
        Credential {
            agent_id: agent.into(),
            timestamp_ms: t,
            nonce: nonce.into(),
            signature: hex::encode(sig.to_bytes()),
        }
    }

    #[test]
    fn verifies_signatures_and_refuses_forgeries_expiry_and_replay() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let other = SigningKey::from_bytes(&[9u8; 32]);
        let reg = IdentityRegistry::new(HOST, None);
        reg.register(
            "mcp-client",
            &hex::encode(key.verifying_key().to_bytes()),
            TrustLevel::Medium,
        )
        .unwrap();
        let now = 1_800_000_000_000;
        let ok = reg
            .verify_agent_identity(&signed(&key, "mcp-client", now, "nonce-0001"), now)
            .unwrap();
        assert_eq!(ok.trust, TrustLevel::Medium);
        // Same nonce again: replay.
        assert_eq!(
            reg.verify_agent_identity(&signed(&key, "mcp-client", now, "nonce-0001"), now + 5)
                .unwrap_err(),
            IdentityError::Replay
        );
        // Signed by another key.
        assert_eq!(
            reg.verify_agent_identity(&signed(&other, "mcp-client", now, "nonce-0002"), now)
                .unwrap_err(),
            IdentityError::BadSignature
        );
        // A valid signature for another agent id does not carry over.
        let mut c = signed(&key, "mcp-client", now, "nonce-0003");
        c.agent_id = "admin".into();
        assert_eq!(
            reg.verify_agent_identity(&c, now).unwrap_err(),
            IdentityError::UnknownAgent("admin".into())
        );
        // Just inside and just past the skew window.
        reg.verify_agent_identity(
            &signed(&key, "mcp-client", now - MAX_SKEW_MS, "nonce-0004"),
            now,
        )
        .unwrap();
        assert!(matches!(
            reg.verify_agent_identity(
                &signed(&key, "mcp-client", now - MAX_SKEW_MS - 1, "nonce-0005"),
                now
            ),
            Err(IdentityError::Expired(_))
        ));
        // Tampered signature.
        let mut c = signed(&key, "mcp-client", now, "nonce-0006");
        c.timestamp_ms += 1;
        assert_eq!(
            reg.verify_agent_identity(&c, now).unwrap_err(),
            IdentityError::BadSignature
        );
        assert!(matches!(
            reg.register("x", "zz", TrustLevel::Low),
            Err(IdentityError::Malformed(_))
        ));
    }

    #[test]
    fn a_timestamp_ahead_of_the_host_has_the_same_window() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let reg = IdentityRegistry::new(HOST, None);
        reg.register(
            "c",
            &hex::encode(key.verifying_key().to_bytes()),
            TrustLevel::Low,
        )
        .unwrap();
        let now = 1_800_000_000_000;
        reg.verify_agent_identity(&signed(&key, "c", now + MAX_SKEW_MS, "nonce-0001"), now)
            .unwrap();
        assert_eq!(
            reg.verify_agent_identity(&signed(&key, "c", now + MAX_SKEW_MS + 1, "nonce-0002"), now)
                .unwrap_err(),
            IdentityError::Expired(MAX_SKEW_MS + 1)
        );
        // Nonces of 8 and 128 characters pass; 7, 129 and one with `:` are malformed.
        for (n, nonce) in [
            "n".repeat(8),
            "m".repeat(128),
            "o".repeat(7),
            "p".repeat(129),
            "has:colon".into(),
        ]
        .into_iter()
        .enumerate()
        {
            let r = reg.verify_agent_identity(&signed(&key, "c", now, &nonce), now);
            if n < 2 {
                assert!(r.is_ok(), "{nonce}: {r:?}");
            } else {
                assert!(
                    matches!(r, Err(IdentityError::Malformed(_))),
                    "{nonce}: {r:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn every_verification_is_audited_with_its_outcome() {
        let store = crate::store::Store::open(crate::store::StoreConfig::in_memory()).unwrap();
        let audit = AuditLog::open(store).await.unwrap();
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let reg = IdentityRegistry::new(HOST, Some(audit.clone()));
        reg.register(
            "c",
            &hex::encode(key.verifying_key().to_bytes()),
            TrustLevel::High,
        )
        .unwrap();
        let now = 1_800_000_000_000;
        let good = signed(&key, "c", now, "nonce-0001");
        reg.verify_agent_identity(&good, now).unwrap();
        reg.verify_agent_identity(&good, now).unwrap_err();
        audit.flush().await;
        let entries = audit
            .query(&crate::audit::AuditQuery {
                resource: Some("identity".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let seen: Vec<(&str, AuditDecision, &str)> = entries
            .iter()
            .map(|e| (e.operation.as_str(), e.decision, e.reason.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("register-identity", AuditDecision::Record, "trust high"),
                (
                    "verify-identity",
                    AuditDecision::Allow,
                    "signature verified"
                ),
                (
                    "verify-identity",
                    AuditDecision::Deny,
                    IdentityError::Replay.to_string().as_str()
                ),
            ]
        );
    }

    /// Red team: a verification the audit log cannot record is refused (fail-closed), like
    /// every other audited decision, rather than accepted unrecorded.
    #[tokio::test]
    async fn a_verification_the_audit_log_cannot_record_is_refused() {
        let store = crate::store::Store::open(crate::store::StoreConfig::in_memory()).unwrap();
        let audit = AuditLog::open(store.clone()).await.unwrap();
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let reg = IdentityRegistry::new(HOST, Some(audit.clone()));
        reg.register(
            "c",
            &hex::encode(key.verifying_key().to_bytes()),
            TrustLevel::High,
        )
        .unwrap();
        // The store refuses audit writes; the next batch fails and the log stops accepting.
        store
            .write(|ctx| {
                ctx.tx().execute_batch(
                    "CREATE TRIGGER no_audit BEFORE INSERT ON audit \
                     BEGIN SELECT RAISE(ABORT, 'audit disk full'); END;",
                )?;
                Ok(())
            })
            .await
            .unwrap();
        audit.flush().await;
        assert!(audit.status().failure.is_some());
        let now = 1_800_000_000_000;
        let e = reg
            .verify_agent_identity(&signed(&key, "c", now, "nonce-0001"), now)
            .unwrap_err();
        assert!(
            matches!(&e, IdentityError::AuditUnavailable(why) if why.contains("audit disk full")),
            "{e}"
        );
    }

    /// The audience: a credential signed for one host is refused at another, whose id differs
    /// (ids from two data directories); the same data directory keeps its id across restarts.
    #[test]
    fn a_signature_for_one_host_is_not_valid_at_another() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let open = |dir: &std::path::Path| {
            crate::store::Store::open(crate::store::StoreConfig::at(dir))
                .unwrap()
                .host_id()
                .to_string()
        };
        let (host_a, host_b) = (open(a.path()), open(b.path()));
        assert_ne!(host_a, host_b);
        assert_eq!(open(a.path()), host_a, "the host id survives a restart");
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let public = hex::encode(key.verifying_key().to_bytes());
        let (reg_a, reg_b) = (
            IdentityRegistry::new(&host_a, None),
            IdentityRegistry::new(&host_b, None),
        );
        for reg in [&reg_a, &reg_b] {
            reg.register("c", &public, TrustLevel::Low).unwrap();
        }
        let now = 1_800_000_000_000;
        let for_a = signed_for(&host_a, &key, "c", now, "nonce-0001");
        assert_eq!(
            reg_b.verify_agent_identity(&for_a, now).unwrap_err(),
            IdentityError::BadSignature
        );
        reg_a.verify_agent_identity(&for_a, now).unwrap();
    }

    /// The nonce store holds `capacity` live nonces: the last one that fits is accepted, the
    /// next is refused while they are live (forgetting one would allow its replay), and once
    /// the oldest expire (past twice the skew window) room is made by dropping them.
    #[test]
    fn the_nonce_store_is_bounded_and_refuses_rather_than_forgets_live_nonces() {
        assert_eq!(IdentityRegistry::new(HOST, None).nonce_capacity, MAX_NONCES);
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let reg = IdentityRegistry::new(HOST, None).with_nonce_capacity(3);
        reg.register(
            "c",
            &hex::encode(key.verifying_key().to_bytes()),
            TrustLevel::Low,
        )
        .unwrap();
        let t0 = 1_800_000_000_000;
        for (i, t) in [t0, t0 + 1, t0 + 2].into_iter().enumerate() {
            reg.verify_agent_identity(&signed(&key, "c", t, &format!("nonce-000{i}")), t)
                .unwrap();
        }
        assert_eq!(
            reg.verify_agent_identity(&signed(&key, "c", t0 + 3, "nonce-0003"), t0 + 3)
                .unwrap_err(),
            IdentityError::TooManyNonces(3)
        );
        // Still full of live nonces: a replay of the first is refused as a replay.
        assert_eq!(
            reg.verify_agent_identity(&signed(&key, "c", t0, "nonce-0000"), t0 + 3)
                .unwrap_err(),
            IdentityError::Replay
        );
        // Just inside twice the window, the first nonce is still live; one ms later it expires
        // and makes room.
        let edge = t0 + 2 * MAX_SKEW_MS;
        assert_eq!(
            reg.verify_agent_identity(&signed(&key, "c", edge, "nonce-0004"), edge)
                .unwrap_err(),
            IdentityError::TooManyNonces(3)
        );
        reg.verify_agent_identity(&signed(&key, "c", edge + 1, "nonce-0004"), edge + 1)
            .unwrap();
    }
}
