//! Upper bounds on every count, time and size a manifest sets. A manifest comes from whoever
//! runs `qi-host run` or, through a server, from a client: no value it sets may make the host
//! overflow, allocate without bound or wait for centuries. Each bound is checked by
//! [`Manifest::check`] before anything else, and a value past it is refused naming its key.
//!
//! The figures are ceilings, not defaults: well above what a real task needs (the seeds'
//! scale is 1,000 subtasks), low enough that every sum and product the engine makes of them
//! stays far inside `u64` and `Instant`.

use super::{Manifest, manifest_error};
use crate::error::Error;
use std::path::Path;

/// Largest manifest file, in bytes: 8 MiB.
pub const MAX_MANIFEST_BYTES: usize = 8 << 20;
/// Longest time a manifest may set anywhere, in milliseconds: 7 days. Applies to
/// `task.timeLimitMs`, `strategy.stallWindowMs`, `resources.allocationGraceMs`, every
/// subtask's `estimatedDurationMs`, `timeLimitMs` and `constraints.maxDurationMs`, and every
/// sync point's `timeoutMs`.
pub const MAX_MANIFEST_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// Most subtasks in one manifest.
pub const MAX_SUBTASKS: usize = 10_000;
/// Most agent kinds in one manifest.
pub const MAX_AGENTS: usize = 1_000;
/// Most synchronization points in one manifest.
pub const MAX_SYNC_POINTS: usize = 1_000;
/// Most participant entries over all synchronization points together.
pub const MAX_SYNC_PARTICIPANTS: usize = 100_000;
/// Most inputs, outputs or `dependsOn` entries of one subtask.
pub const MAX_SUBTASK_LINKS: usize = 1_000;
/// Most success criteria of one subtask.
pub const MAX_SUCCESS_CRITERIA: usize = 64;
/// Largest `strategy.maxConcurrentAgents`.
pub const MAX_CONCURRENT_AGENTS: u64 = 1_024;
/// Largest `strategy.retry.maxAttempts` (attempts on one agent).
pub const MAX_ATTEMPTS: u64 = 100;
/// Largest `strategy.retry.maxReassignments`.
pub const MAX_REASSIGNMENTS: u64 = 100;
/// Largest `strategy.retry.maxExtensions`.
pub const MAX_EXTENSIONS: u64 = 10;
/// Largest `strategy.retry.backoffMs`: one hour (a computed backoff saturates there too).
pub const MAX_BACKOFF_MS: u64 = 60 * 60 * 1000;
/// Largest `strategy.retry.backoffFactor` and `strategy.retry.deadlineExtensionFactor`.
pub const MAX_FACTOR: f64 = 100.0;
/// Largest `resources.maxTotalMemoryMB`: 1 TiB.
pub const MAX_TOTAL_MEMORY_MB: u64 = 1 << 20;
/// Largest `maxResultBytes` of a sync point: 16 MiB, the context store's default document
/// limit (the outcome is stored as one document).
pub const MAX_RESULT_BYTES: u64 = 16 << 20;
/// Largest `strategy.maxSyncBytes` (all points of a run together): 1 GiB.
pub const MAX_SYNC_BYTES: u64 = 1 << 30;
/// Smallest `maxResultBytes` of a sync point, and of `strategy.maxSyncBytes`: 1 KiB.
pub const MIN_RESULT_BYTES: u64 = 1024;
/// Largest `resources.maxConcurrentAllocations`.
pub const MAX_CONCURRENT_ALLOCATIONS: u64 = 65_536;

impl Manifest {
    /// Checks every bound of this module; the error names the key, the value and the bound.
    pub(super) fn check_bounds(&self, text: &str, path: &Path) -> Result<(), Error> {
        let over = |key: String, needle: &str, value: String, max: String| {
            manifest_error(
                text,
                path,
                key,
                Some(needle),
                format!("is {value}; the most a manifest may set is {max}"),
            )
        };
        let number = |key: String, needle: &str, value: u64, max: u64| {
            if value > max {
                Err(over(key, needle, value.to_string(), max.to_string()))
            } else {
                Ok(())
            }
        };
        let count = |key: String, needle: &str, value: usize, max: usize| {
            if value > max {
                Err(over(
                    key,
                    needle,
                    format!("{value} entries"),
                    format!("{max} entries"),
                ))
            } else {
                Ok(())
            }
        };
        let ms = |key: String, needle: &str, value: Option<u64>| match value {
            Some(v) => number(key, needle, v, MAX_MANIFEST_MS),
            None => Ok(()),
        };
        let factor = |key: String, needle: &str, value: f64| {
            // NaN and infinities are refused by the range checks of `check`; only the
            // ceiling is checked here.
            if value > MAX_FACTOR {
                Err(over(key, needle, value.to_string(), MAX_FACTOR.to_string()))
            } else {
                Ok(())
            }
        };

        count(
            "subtasks".into(),
            "subtasks",
            self.subtasks.len(),
            MAX_SUBTASKS,
        )?;
        count("agents".into(), "agents", self.agents.len(), MAX_AGENTS)?;
        let s = &self.strategy;
        count(
            "strategy.synchronizationPoints".into(),
            "synchronizationPoints",
            s.synchronization_points.len(),
            MAX_SYNC_POINTS,
        )?;
        count(
            "strategy.synchronizationPoints[*].participants".into(),
            "participants",
            s.synchronization_points
                .iter()
                .map(|p| p.participants.len())
                .fold(0, usize::saturating_add),
            MAX_SYNC_PARTICIPANTS,
        )?;
        ms(
            "task.timeLimitMs".into(),
            "timeLimitMs",
            self.task.time_limit_ms,
        )?;
        number(
            "strategy.maxConcurrentAgents".into(),
            "maxConcurrentAgents",
            u64::from(s.max_concurrent_agents),
            MAX_CONCURRENT_AGENTS,
        )?;
        ms(
            "strategy.stallWindowMs".into(),
            "stallWindowMs",
            Some(s.stall_window_ms),
        )?;
        number(
            "strategy.maxSyncBytes".into(),
            "maxSyncBytes",
            s.max_sync_bytes,
            MAX_SYNC_BYTES,
        )?;
        if s.max_sync_bytes < MIN_RESULT_BYTES {
            return Err(manifest_error(
                text,
                path,
                "strategy.maxSyncBytes",
                Some("maxSyncBytes"),
                format!(
                    "is {}; it must be at least {MIN_RESULT_BYTES}",
                    s.max_sync_bytes
                ),
            ));
        }
        let r = &s.retry;
        number(
            "strategy.retry.maxAttempts".into(),
            "maxAttempts",
            u64::from(r.max_attempts),
            MAX_ATTEMPTS,
        )?;
        number(
            "strategy.retry.backoffMs".into(),
            "backoffMs",
            r.backoff_ms,
            MAX_BACKOFF_MS,
        )?;
        factor(
            "strategy.retry.backoffFactor".into(),
            "backoffFactor",
            r.backoff_factor,
        )?;
        number(
            "strategy.retry.maxReassignments".into(),
            "maxReassignments",
            u64::from(r.max_reassignments),
            MAX_REASSIGNMENTS,
        )?;
        factor(
            "strategy.retry.deadlineExtensionFactor".into(),
            "deadlineExtensionFactor",
            r.deadline_extension_factor,
        )?;
        number(
            "strategy.retry.maxExtensions".into(),
            "maxExtensions",
            u64::from(r.max_extensions),
            MAX_EXTENSIONS,
        )?;
        let b = &self.resources;
        number(
            "resources.maxTotalMemoryMB".into(),
            "maxTotalMemoryMB",
            b.max_total_memory_mb,
            MAX_TOTAL_MEMORY_MB,
        )?;
        number(
            "resources.maxConcurrentAllocations".into(),
            "maxConcurrentAllocations",
            u64::from(b.max_concurrent_allocations),
            MAX_CONCURRENT_ALLOCATIONS,
        )?;
        ms(
            "resources.allocationGraceMs".into(),
            "allocationGraceMs",
            Some(b.allocation_grace_ms),
        )?;
        for (i, p) in s.synchronization_points.iter().enumerate() {
            ms(
                format!("strategy.synchronizationPoints[{i}].timeoutMs"),
                &p.id,
                p.timeout_ms,
            )?;
            number(
                format!("strategy.synchronizationPoints[{i}].maxResultBytes"),
                &p.id,
                p.max_result_bytes,
                MAX_RESULT_BYTES,
            )?;
            if p.max_result_bytes < MIN_RESULT_BYTES {
                return Err(manifest_error(
                    text,
                    path,
                    format!("strategy.synchronizationPoints[{i}].maxResultBytes"),
                    Some(&p.id),
                    format!(
                        "is {}; it must be at least {MIN_RESULT_BYTES} (every arrival holds at \
                         least `null`)",
                        p.max_result_bytes
                    ),
                ));
            }
        }
        for (i, t) in self.subtasks.iter().enumerate() {
            let key = |field: &str| format!("subtasks[{i}].{field}");
            ms(
                key("estimatedDurationMs"),
                &t.id,
                Some(t.estimated_duration_ms),
            )?;
            ms(key("timeLimitMs"), &t.id, t.time_limit_ms)?;
            ms(
                key("constraints.maxDurationMs"),
                &t.id,
                t.constraints.max_duration_ms,
            )?;
            count(key("inputs"), &t.id, t.inputs.len(), MAX_SUBTASK_LINKS)?;
            count(key("outputs"), &t.id, t.outputs.len(), MAX_SUBTASK_LINKS)?;
            count(
                key("dependsOn"),
                &t.id,
                t.depends_on.len(),
                MAX_SUBTASK_LINKS,
            )?;
            count(
                key("successCriteria"),
                &t.id,
                t.success_criteria.len(),
                MAX_SUCCESS_CRITERIA,
            )?;
            for (j, c) in t.success_criteria.iter().enumerate() {
                if c.threshold.is_some_and(|v| !v.is_finite()) {
                    return Err(manifest_error(
                        text,
                        path,
                        format!("subtasks[{i}].successCriteria[{j}].threshold"),
                        Some(&t.id),
                        "must be a finite number",
                    ));
                }
            }
        }
        Ok(())
    }
}
