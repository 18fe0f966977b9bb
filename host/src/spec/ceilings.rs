//! The isolation ceiling table: for each isolation level, the largest value a spec may set for
//! every budget. A spec over a ceiling is refused at spawn, naming the field and the ceiling.
//!
//! The ceilings protect the host and the other agents from a spec (a manifest author or an
//! operator's mistake) that would let one agent exhaust a shared resource: CPU (`fuel`), the
//! reaction time to a deadline or `terminate` (`fuelYieldInterval`), tool and file-operation
//! traffic, concurrent host operations, log volume, host descriptors, disk. The memory, wall-time
//! and output ceilings are the host's own ([`super::SpecCeilings`], from `HostConfig`).
//!
//! | field | default | `sandbox` | `restricted` | `monitored` |
//! |---|---|---|---|---|
//! | `fuel` | 2·10⁹ | 5·10¹⁰ | 2·10¹¹ | 10¹² |
//! | `configurationOverrides.fuelYieldInterval` | 10⁶ | 10⁷ | 10⁷ | 10⁷ |
//! | `resourceLimits.maxToolCalls` | 100 | 1,000 | 10,000 | 100,000 |
//! | `resourceLimits.maxFileOperations` | 10,000 | 10,000 | 1,000,000 | 10,000,000 |
//! | `resourceLimits.maxConcurrentOperations` | 4 | 16 | 64 | 256 |
//! | `configurationOverrides.maxLogBytes` | 256 KiB | 1 MiB | 16 MiB | 64 MiB |
//! | `resourceLimits.maxOpenHandles` | 256 | 256 | 1,024 | 4,096 |
//! | `resourceLimits.maxDiskBytes` | 64 MiB | 64 MiB | 4 GiB | 64 GiB |
//! | `resourceLimits.maxFilesCreated` | 1,000 | 1,000 | 100,000 | 1,000,000 |
//! | `resourceLimits.maxNetworkOperations` | 10,000 | 10,000 | 1,000,000 | 10,000,000 |
//! | `resourceLimits.maxContextBytes` | 64 MiB | 64 MiB | 1 GiB | 16 GiB |
//! | `resourceLimits.maxContextWrites` | 10,000 | 100,000 | 1,000,000 | 10,000,000 |
//! | `resourceLimits.maxLlmCalls` | 100 | 1,000 | 10,000 | 100,000 |
//! | `resourceLimits.maxInputTokens` | 10⁶ | 10⁷ | 10⁸ | 10⁹ |
//! | `resourceLimits.maxOutputTokens` | 10⁵ | 10⁶ | 10⁷ | 10⁸ |
//! | `resourceLimits.maxCostUsd` | the ceiling | 10 | 100 | 1,000 |
//!
//! `fuelYieldInterval` is the number of fuel units between the points where a running agent
//! hands control back to the host, which is when its deadline and `terminate` are noticed; its
//! ceiling of 10⁷ units (a few milliseconds of guest code on this project's 2-core machines)
//! keeps both effective whatever the spec says.

use super::IsolationLevel;

/// The largest value a spec at one isolation level may set for each budget (see the module
/// table). Units: fuel units, counts, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsolationCeilings {
    /// Largest `fuel`.
    pub fuel: u64,
    /// Largest `configurationOverrides.fuelYieldInterval`.
    pub fuel_yield_interval: u64,
    /// Largest `resourceLimits.maxToolCalls`.
    pub max_tool_calls: u32,
    /// Largest `resourceLimits.maxFileOperations`.
    pub max_file_operations: u32,
    /// Largest `resourceLimits.maxConcurrentOperations`.
    pub max_concurrent_operations: u32,
    /// Largest `configurationOverrides.maxLogBytes`.
    pub max_log_bytes: u64,
    /// Largest `resourceLimits.maxOpenHandles`.
    pub max_open_handles: u32,
    /// Largest `resourceLimits.maxDiskBytes`.
    pub max_disk_bytes: u64,
    /// Largest `resourceLimits.maxFilesCreated`.
    pub max_files_created: u32,
    /// Largest `resourceLimits.maxNetworkOperations`.
    pub max_network_operations: u32,
    /// Largest `resourceLimits.maxContextBytes`.
    pub max_context_bytes: u64,
    /// Largest `resourceLimits.maxContextWrites`.
    pub max_context_writes: u32,
    /// Largest `resourceLimits.maxLlmCalls`.
    pub max_llm_calls: u32,
    /// Largest `resourceLimits.maxInputTokens`.
    pub max_input_tokens: u64,
    /// Largest `resourceLimits.maxOutputTokens`.
    pub max_output_tokens: u64,
    /// Largest `resourceLimits.maxCostUsd`, in micro-dollars; also the cost limit of a spec
    /// that sets none.
    pub max_cost_micro_usd: u64,
}

/// Ceiling of `fuelYieldInterval` at every level.
pub const MAX_FUEL_YIELD_INTERVAL: u64 = 10_000_000;

impl IsolationCeilings {
    /// The ceilings of `level`.
    pub const fn of(level: IsolationLevel) -> Self {
        match level {
            IsolationLevel::Sandbox => IsolationCeilings {
                fuel: 50_000_000_000,
                fuel_yield_interval: MAX_FUEL_YIELD_INTERVAL,
                max_tool_calls: 1_000,
                max_file_operations: 10_000,
                max_concurrent_operations: 16,
                max_log_bytes: 1 << 20,
                max_open_handles: 256,
                max_disk_bytes: 64 << 20,
                max_files_created: 1_000,
                max_network_operations: 10_000,
                max_context_bytes: 64 << 20,
                max_context_writes: 100_000,
                max_llm_calls: 1_000,
                max_input_tokens: 10_000_000,
                max_output_tokens: 1_000_000,
                max_cost_micro_usd: 10_000_000,
            },
            IsolationLevel::Restricted => IsolationCeilings {
                fuel: 200_000_000_000,
                fuel_yield_interval: MAX_FUEL_YIELD_INTERVAL,
                max_tool_calls: 10_000,
                max_file_operations: 1_000_000,
                max_concurrent_operations: 64,
                max_log_bytes: 16 << 20,
                max_open_handles: 1_024,
                max_disk_bytes: 4 << 30,
                max_files_created: 100_000,
                max_network_operations: 1_000_000,
                max_context_bytes: 1 << 30,
                max_context_writes: 1_000_000,
                max_llm_calls: 10_000,
                max_input_tokens: 100_000_000,
                max_output_tokens: 10_000_000,
                max_cost_micro_usd: 100_000_000,
            },
            IsolationLevel::Monitored => IsolationCeilings {
                fuel: 1_000_000_000_000,
                fuel_yield_interval: MAX_FUEL_YIELD_INTERVAL,
                max_tool_calls: 100_000,
                max_file_operations: 10_000_000,
                max_concurrent_operations: 256,
                max_log_bytes: 64 << 20,
                max_open_handles: 4_096,
                max_disk_bytes: 64 << 30,
                max_files_created: 1_000_000,
                max_network_operations: 10_000_000,
                max_context_bytes: 16 << 30,
                max_context_writes: 10_000_000,
                max_llm_calls: 100_000,
                max_input_tokens: 1_000_000_000,
                max_output_tokens: 100_000_000,
                max_cost_micro_usd: 1_000_000_000,
            },
        }
    }

    /// `(field, value asked for, ceiling)` for every budget of `spec` (with `overrides`
    /// resolved), in the order they are checked.
    pub(super) fn checks(
        &self,
        spec: &super::SubAgentSpecification,
        overrides: &super::ResolvedOverrides,
    ) -> [(&'static str, u64, u64); 16] {
        let l = &spec.resource_limits;
        [
            ("fuel", spec.fuel, self.fuel),
            (
                "configurationOverrides.fuelYieldInterval",
                overrides.fuel_yield_interval,
                self.fuel_yield_interval,
            ),
            (
                "resourceLimits.maxToolCalls",
                l.max_tool_calls.into(),
                self.max_tool_calls.into(),
            ),
            (
                "resourceLimits.maxFileOperations",
                l.max_file_operations.into(),
                self.max_file_operations.into(),
            ),
            (
                "resourceLimits.maxConcurrentOperations",
                l.max_concurrent_operations.into(),
                self.max_concurrent_operations.into(),
            ),
            (
                "configurationOverrides.maxLogBytes",
                overrides.max_log_bytes,
                self.max_log_bytes,
            ),
            (
                "resourceLimits.maxOpenHandles",
                l.max_open_handles.into(),
                self.max_open_handles.into(),
            ),
            (
                "resourceLimits.maxDiskBytes",
                l.max_disk_bytes,
                self.max_disk_bytes,
            ),
            (
                "resourceLimits.maxFilesCreated",
                l.max_files_created.into(),
                self.max_files_created.into(),
            ),
            (
                "resourceLimits.maxNetworkOperations",
                l.max_network_operations.into(),
                self.max_network_operations.into(),
            ),
            (
                "resourceLimits.maxContextBytes",
                l.max_context_bytes,
                self.max_context_bytes,
            ),
            (
                "resourceLimits.maxContextWrites",
                l.max_context_writes.into(),
                self.max_context_writes.into(),
            ),
            (
                "resourceLimits.maxLlmCalls",
                l.max_llm_calls.into(),
                self.max_llm_calls.into(),
            ),
            (
                "resourceLimits.maxInputTokens",
                l.max_input_tokens,
                self.max_input_tokens,
            ),
            (
                "resourceLimits.maxOutputTokens",
                l.max_output_tokens,
                self.max_output_tokens,
            ),
            (
                "resourceLimits.maxCostUsd (in micro-dollars)",
                l.max_cost_usd.map_or(0, super::usd_to_micro),
                self.max_cost_micro_usd,
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{ResourceLimits, SubAgentSpecification};

    #[test]
    fn defaults_fit_every_level() {
        let spec = SubAgentSpecification::default();
        let limits = ResourceLimits::default();
        for level in [
            IsolationLevel::Sandbox,
            IsolationLevel::Restricted,
            IsolationLevel::Monitored,
        ] {
            let c = IsolationCeilings::of(level);
            assert!(spec.fuel <= c.fuel);
            assert!(limits.max_tool_calls <= c.max_tool_calls);
            assert!(limits.max_file_operations <= c.max_file_operations);
            assert!(limits.max_concurrent_operations <= c.max_concurrent_operations);
            assert!(limits.max_open_handles <= c.max_open_handles);
            assert!(limits.max_disk_bytes <= c.max_disk_bytes);
            assert!(limits.max_files_created <= c.max_files_created);
            assert!(limits.max_network_operations <= c.max_network_operations);
            assert!(limits.max_context_bytes <= c.max_context_bytes);
            assert!(limits.max_context_writes <= c.max_context_writes);
            assert!(limits.max_llm_calls <= c.max_llm_calls);
            assert!(limits.max_input_tokens <= c.max_input_tokens);
            assert!(limits.max_output_tokens <= c.max_output_tokens);
            assert!(crate::spec::DEFAULT_MAX_LOG_BYTES <= c.max_log_bytes);
            assert!(crate::spec::DEFAULT_FUEL_YIELD_INTERVAL <= c.fuel_yield_interval);
        }
    }
}
