//! Identity of agents that connect from outside the host (API or MCP clients, later).
//!
//! Sub-agents need none of this: the host assigns each one an id bound to its Store, and every
//! host call it makes carries that id, so a guest can never act as another agent. An external
//! agent instead proves who it is with an Ed25519 signature (`ed25519-dalek`, strict
//! verification) over a challenge string:
//!
//! ```text
//! qi-host-auth:v1:<agent id>:<unix ms>:<nonce>
//! ```
//!
//! [`IdentityRegistry::verify_agent_identity`] accepts a credential when the agent is
//! registered, the timestamp is within [`MAX_SKEW_MS`] of the host's clock, the nonce was not
//! used before within that window (no replay), and the signature verifies under the agent's
//! registered public key. Every verification, accepted or refused, is audited.

use super::TrustLevel;
use crate::audit::{AuditDecision, AuditLog, NewAuditEntry};
use ed25519_dalek::{Signature, VerifyingKey};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// How far a credential's timestamp may be from the host's clock.
pub const MAX_SKEW_MS: u64 = 60_000;

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
    /// The signed challenge.
    pub fn challenge(agent_id: &str, timestamp_ms: u64, nonce: &str) -> String {
        format!("qi-host-auth:v1:{agent_id}:{timestamp_ms}:{nonce}")
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
    /// The signature does not verify.
    #[error("signature does not verify under the agent's registered key")]
    BadSignature,
}

/// Registered external agents and recently used nonces.
#[derive(Default)]
pub struct IdentityRegistry {
    agents: Mutex<HashMap<String, ExternalAgent>>,
    nonces: Mutex<VecDeque<(u64, String, String)>>,
    audit: Option<AuditLog>,
}

impl std::fmt::Debug for IdentityRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityRegistry").finish_non_exhaustive()
    }
}

impl IdentityRegistry {
    /// An empty registry that audits to `audit`.
    pub fn new(audit: Option<AuditLog>) -> Self {
        IdentityRegistry {
            audit,
            ..Default::default()
        }
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
        self.agents.lock().expect("identity lock poisoned").insert(
            id.to_string(),
            ExternalAgent {
                id: id.to_string(),
                public_key,
                trust,
            },
        );
        self.audit(
            id,
            AuditDecision::Record,
            "register-identity",
            format!("trust {}", trust.as_str()),
        );
        Ok(())
    }

    fn audit(&self, agent: &str, decision: AuditDecision, op: &str, reason: String) {
        if let Some(a) = &self.audit {
            let _ = a.record(NewAuditEntry::new(agent, "identity", op, decision, reason));
        }
    }

    /// `verifyAgentIdentity`: checks `cred` at host time `now_ms` and returns the agent.
    pub fn verify_agent_identity(
        &self,
        cred: &Credential,
        now_ms: u64,
    ) -> Result<ExternalAgent, IdentityError> {
        let r = self.check(cred, now_ms);
        match &r {
            Ok(a) => self.audit(
                &a.id,
                AuditDecision::Allow,
                "verify-identity",
                "signature verified".into(),
            ),
            Err(e) => self.audit(
                &cred.agent_id,
                AuditDecision::Deny,
                "verify-identity",
                e.to_string(),
            ),
        }
        r
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
        let challenge = Credential::challenge(&cred.agent_id, cred.timestamp_ms, &cred.nonce);
        agent
            .public_key
            .verify_strict(challenge.as_bytes(), &Signature::from_bytes(&sig))
            .map_err(|_| IdentityError::BadSignature)?;
        // Replay: remember nonces for the skew window.
        let mut seen = self.nonces.lock().expect("nonce lock poisoned");
        while seen
            .front()
            .is_some_and(|(t, _, _)| now_ms.saturating_sub(*t) > 2 * MAX_SKEW_MS)
        {
            seen.pop_front();
        }
        if seen
            .iter()
            .any(|(_, a, n)| *a == cred.agent_id && *n == cred.nonce)
        {
            return Err(IdentityError::Replay);
        }
        seen.push_back((now_ms, cred.agent_id.clone(), cred.nonce.clone()));
        Ok(agent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn signed(key: &SigningKey, agent: &str, t: u64, nonce: &str) -> Credential {
        let sig = key.sign(Credential::challenge(agent, t, nonce).as_bytes());
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
        let reg = IdentityRegistry::new(None);
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
        let reg = IdentityRegistry::new(None);
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
        let reg = IdentityRegistry::new(Some(audit.clone()));
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
}
