//! `qi:agent/log`: structured log records, bounded per record and per agent.
//!
//! Logging never fails from the guest's point of view: a message or field over its limit in
//! [`super::limits`] is truncated in place (no further copy), fields past
//! [`MAX_LOG_FIELDS`] are dropped before anything else is done with them, and once the agent's
//! `maxLogBytes` are spent further records are dropped and counted (`logs_dropped`). A record
//! costs [`LOG_RECORD_OVERHEAD_BYTES`] plus its message and its fields (`k=v`, each key and value
//! plus 2), so even empty records use up the budget.

use super::AgentState;
use super::Level;
use super::limits::{LOG_RECORD_OVERHEAD_BYTES, MAX_LOG_KEY_BYTES, MAX_LOG_VALUE_BYTES};
pub use super::limits::{MAX_LOG_FIELDS, MAX_LOG_MESSAGE_BYTES};
use super::qi;
use crate::sandbox::{LogRecord, MAX_KEPT_LOG_RECORDS};
use std::sync::atomic::Ordering;
use std::time::Instant;
use wasmtime::component::{HasSelf, Linker};

/// Adds `qi:agent/log` to `linker`.
pub fn add_to_linker(linker: &mut Linker<AgentState>) -> wasmtime::Result<()> {
    qi::agent::log::add_to_linker::<AgentState, HasSelf<AgentState>>(linker, |s| s)
}

impl qi::agent::log::Host for AgentState {
    async fn log(&mut self, level: Level, message: String, fields: Vec<qi::agent::log::Field>) {
        let shared = &self.shared;
        shared.count_host_call();
        let start = Instant::now();
        let mut message = message;
        truncate_utf8(&mut message, MAX_LOG_MESSAGE_BYTES);
        let mut fields = fields;
        fields.truncate(MAX_LOG_FIELDS);
        let fields: Vec<(String, String)> = fields
            .into_iter()
            .map(|f| {
                let (mut k, mut v) = (f.key, f.value);
                truncate_utf8(&mut k, MAX_LOG_KEY_BYTES);
                truncate_utf8(&mut v, MAX_LOG_VALUE_BYTES);
                (k, v)
            })
            .collect();
        // What the record costs: its rendering plus a fixed overhead, so that no record is
        // free (see `LOG_RECORD_OVERHEAD_BYTES`).
        let bytes = (LOG_RECORD_OVERHEAD_BYTES
            + message.len()
            + fields
                .iter()
                .map(|(k, v)| k.len() + v.len() + 2)
                .sum::<usize>()) as u64;
        let used = shared
            .counters
            .log_bytes
            .fetch_add(bytes, Ordering::Relaxed)
            + bytes;
        if used > shared.overrides.max_log_bytes {
            shared
                .counters
                .log_bytes
                .fetch_sub(bytes, Ordering::Relaxed);
            shared.counters.logs_dropped.fetch_add(1, Ordering::Relaxed);
            shared.record_call("log.log", "", bytes as usize, start, "dropped");
            return;
        }
        // Rendered only when the host's subscriber wants the record at that level.
        let rendered = || -> String { fields.iter().map(|(k, v)| format!(" {k}={v}")).collect() };
        let agent = shared.id.as_str();
        match level {
            Level::Trace if tracing::enabled!(target: "qi.guest", tracing::Level::TRACE) => {
                tracing::trace!(target: "qi.guest", agent, "{message}{}", rendered())
            }
            Level::Debug if tracing::enabled!(target: "qi.guest", tracing::Level::DEBUG) => {
                tracing::debug!(target: "qi.guest", agent, "{message}{}", rendered())
            }
            Level::Info if tracing::enabled!(target: "qi.guest", tracing::Level::INFO) => {
                tracing::info!(target: "qi.guest", agent, "{message}{}", rendered())
            }
            Level::Warn if tracing::enabled!(target: "qi.guest", tracing::Level::WARN) => {
                tracing::warn!(target: "qi.guest", agent, "{message}{}", rendered())
            }
            Level::Error if tracing::enabled!(target: "qi.guest", tracing::Level::ERROR) => {
                tracing::error!(target: "qi.guest", agent, "{message}{}", rendered())
            }
            _ => {}
        }
        {
            let mut logs = shared.logs.lock().expect("log lock poisoned");
            if logs.len() < MAX_KEPT_LOG_RECORDS {
                logs.push(LogRecord {
                    level: match level {
                        Level::Trace => "trace",
                        Level::Debug => "debug",
                        Level::Info => "info",
                        Level::Warn => "warn",
                        Level::Error => "error",
                    }
                    .to_string(),
                    message,
                    fields,
                });
            }
        }
        shared.record_call("log.log", "", bytes as usize, start, "ok");
    }
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
}
