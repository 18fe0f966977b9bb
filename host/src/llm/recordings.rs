//! Recorded model calls: every answer a provider gave, durable in the data directory's
//! `llm_recordings` table, keyed by the request's hash, the caller's scope and which time in
//! its attempt the caller made that request.
//!
//! - Live, a call is answered from a recording only when the same scope (`run/<run>/<subtask>`:
//!   a retried or resumed subtask) made the same request the same number of times before, so
//!   a retry pays nothing for what an earlier attempt already bought, and two subtasks asking
//!   the same question each get their own answer.
//! - Under replay (`--llm-replay`), every call comes from a recording: the same scope's if there
//!   is one, else the newest of any scope with the same hash and occurrence, else the newest
//!   with the same hash.
//!
//! With a master key the request and the answer are sealed (XChaCha20-Poly1305 under a key
//! derived from the master key, bound to the row's hash, scope and occurrence). Without a data
//! directory recordings live in memory for the host's life, at most [`MAX_IN_MEMORY`].

use super::request::{ChatRequest, ChatResponse};
use crate::store::{Store, StoreError};
use std::collections::HashMap;
use std::sync::Mutex;
use zeroize::Zeroizing;

/// Most answers kept by [`Recordings::in_memory`] (further ones are not recorded).
pub const MAX_IN_MEMORY: usize = 10_000;

/// Where a recording is looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Only the caller's own scope (live calls).
    SameScope,
    /// The caller's scope first, then any (replay).
    AnyScope,
}

/// The durable recordings (see the module docs).
pub struct Recordings {
    store: Option<Store>,
    key: Option<Zeroizing<[u8; 32]>>,
    memory: Mutex<HashMap<(String, String, u32), ChatResponse>>,
}

impl std::fmt::Debug for Recordings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recordings")
            .field("durable", &self.store.is_some())
            .field("sealed", &self.key.is_some())
            .finish()
    }
}

const PURPOSE: &str = "llm-recording";

fn aad(hash: &str, scope: &str, occurrence: u32, column: &str) -> Vec<u8> {
    crate::store::crypto::aad(PURPOSE, &format!("{hash}/{scope}"), occurrence, column)
}

impl Recordings {
    /// Recordings kept in memory only.
    pub fn in_memory() -> Recordings {
        Recordings {
            store: None,
            key: None,
            memory: Mutex::new(HashMap::new()),
        }
    }

    /// Recordings in `store`, sealed under a key derived from `master` when given.
    pub fn durable(store: Store, master: Option<&crate::store::crypto::MasterKey>) -> Recordings {
        Recordings {
            store: Some(store),
            key: master.map(|m| m.derive(b"qi-host llm recordings v1")),
            memory: Mutex::new(HashMap::new()),
        }
    }

    /// The answer recorded for `hash` (see [`Lookup`]).
    pub async fn find(
        &self,
        hash: &str,
        scope: &str,
        occurrence: u32,
        lookup: Lookup,
    ) -> Result<Option<ChatResponse>, String> {
        let Some(store) = &self.store else {
            let memory = self.memory.lock().expect("recordings poisoned");
            let exact = memory.get(&(hash.to_string(), scope.to_string(), occurrence));
            let found = match (exact, lookup) {
                (Some(r), _) => Some(r.clone()),
                (None, Lookup::SameScope) => None,
                (None, Lookup::AnyScope) => memory
                    .iter()
                    .filter(|((h, _, _), _)| h == hash)
                    .min_by_key(|((_, _, o), _)| o.abs_diff(occurrence))
                    .map(|(_, r)| r.clone()),
            };
            return Ok(found);
        };
        let (h, s) = (hash.to_string(), scope.to_string());
        let row = store
            .read(move |conn| {
                let exact = "SELECT scope, occurrence, response FROM llm_recordings \
                             WHERE hash = ?1 AND scope = ?2 AND occurrence = ?3";
                let mut found = conn
                    .query_row(exact, (&h, &s, occurrence), |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get::<_, Vec<u8>>(2)?))
                    })
                    .ok();
                if found.is_none() && lookup == Lookup::AnyScope {
                    let any = "SELECT scope, occurrence, response FROM llm_recordings \
                               WHERE hash = ?1 ORDER BY occurrence != ?2, created_at DESC LIMIT 1";
                    found = conn
                        .query_row(any, (&h, occurrence), |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get::<_, Vec<u8>>(2)?))
                        })
                        .ok();
                }
                Ok::<Option<(String, u32, Vec<u8>)>, StoreError>(found)
            })
            .await
            .map_err(|e| format!("reading the recordings: {e}"))?;
        let Some((scope, occurrence, bytes)) = row else {
            return Ok(None);
        };
        let text = self.open(hash, &scope, occurrence, "response", &bytes)?;
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| format!("a recording of {hash} is damaged: {e}"))
    }

    /// Records `response` to `request` (durable before this returns).
    pub async fn record(
        &self,
        hash: &str,
        scope: &str,
        occurrence: u32,
        request: &ChatRequest,
        response: &ChatResponse,
    ) -> Result<(), String> {
        let Some(store) = &self.store else {
            let mut memory = self.memory.lock().expect("recordings poisoned");
            if memory.len() >= MAX_IN_MEMORY {
                return Err(format!(
                    "{MAX_IN_MEMORY} answers are kept in memory already; give a data directory \
                     to record more"
                ));
            }
            memory.insert(
                (hash.to_string(), scope.to_string(), occurrence),
                response.clone(),
            );
            return Ok(());
        };
        let req = serde_json::to_vec(request).map_err(|e| e.to_string())?;
        let resp = serde_json::to_vec(response).map_err(|e| e.to_string())?;
        let req = self.seal(hash, scope, occurrence, "request", &req);
        let resp = self.seal(hash, scope, occurrence, "response", &resp);
        let (h, s, model) = (hash.to_string(), scope.to_string(), response.model.clone());
        let now = crate::model::unix_ms() as i64;
        store
            .write(move |ctx| {
                ctx.tx().execute(
                    "INSERT OR REPLACE INTO llm_recordings \
                     (hash, scope, occurrence, model, request, response, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    (&h, &s, occurrence, &model, &req, &resp, now),
                )?;
                Ok(())
            })
            .await
            .map_err(|e| format!("recording the answer: {e}"))
    }

    fn seal(&self, hash: &str, scope: &str, occurrence: u32, column: &str, text: &[u8]) -> Vec<u8> {
        match &self.key {
            Some(k) => {
                crate::store::crypto::seal_with(k, &aad(hash, scope, occurrence, column), 1, text)
            }
            None => text.to_vec(),
        }
    }

    fn open(
        &self,
        hash: &str,
        scope: &str,
        occurrence: u32,
        column: &str,
        bytes: &[u8],
    ) -> Result<Vec<u8>, String> {
        let sealed = crate::store::crypto::sealed_version(bytes).is_some();
        match (&self.key, sealed) {
            (Some(k), true) => {
                crate::store::crypto::open_with(k, &aad(hash, scope, occurrence, column), bytes)
                    .map_err(|()| {
                        format!("a recording of {hash} does not open with this master key")
                    })
            }
            (None, true) => Err(format!(
                "a recording of {hash} is sealed; give the data directory's master key"
            )),
            (Some(_), false) => Err(format!(
                "a recording of {hash} is not sealed although this data directory has a master \
                 key: it was not written by this host"
            )),
            (None, false) => Ok(bytes.to_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::request::{FinishReason, Usage};

    #[tokio::test]
    async fn memory_keeps_up_to_its_bound_and_refuses_one_more() {
        let r = Recordings::in_memory();
        let request: ChatRequest =
            serde_json::from_value(serde_json::json!({"model": "p/m", "messages": []})).unwrap();
        let answer = ChatResponse {
            content: "a".into(),
            tool_calls: vec![],
            finish_reason: FinishReason::Stop,
            model: "p/m".into(),
            usage: Usage::default(),
        };
        for i in 0..MAX_IN_MEMORY {
            r.record(&i.to_string(), "s", 1, &request, &answer)
                .await
                .unwrap();
        }
        let e = r.record("one more", "s", 1, &request, &answer).await;
        assert!(e.unwrap_err().contains("in memory"));
        assert_eq!(
            r.find("7", "s", 1, Lookup::SameScope).await.unwrap(),
            Some(answer)
        );
    }
}
