//! qi-host runs AI sub-agents as sandboxed WebAssembly components and coordinates them.
//!
//! Each agent is a component built against `qi-guest-sdk` for `wasm32-wasip2`. The host runs it
//! in its own wasmtime Store with fuel, memory, wall-clock and capability limits, and reports
//! what it measured.
//!
//! ```no_run
//! use qi_host::{AgentHost, HostConfig, SubAgentSpecification, TaskRequest};
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let host = AgentHost::new(HostConfig::default())?;
//! let component = host.load("hello.wasm")?;
//! let mut spec = SubAgentSpecification::default();
//! spec.resource_limits.max_memory_mb = 32;
//! let report = host
//!     .run(&component, spec, TaskRequest::new("say hi", serde_json::json!({"name": "qi"})))
//!     .await?;
//! println!("{:?} used {} fuel", report.output, report.usage.fuel_consumed);
//! # Ok(())
//! # }
//! ```
//!
//! Module map: [`engine`] (the one Engine, pooling, component cache), [`spec`] (specification
//! and validation), [`sandbox`] (Store data, limits, WASI, usage), [`agents`] (spawn, run,
//! terminate), [`tools`] (host tools), [`interfaces`] (WIT bindings, one module per host interface), [`wasi`] (counted WASI filesystem), [`store`]
//! (SQLite with group commit, blob tier), [`events`] (event bus), [`context`] (shared context),
//! [`audit`] (tamper-evident audit log),
//! [`coord`] (task manifests, distribution, coordinated execution, synchronization points),
//! [`serve`] (`qi-host serve`: MCP and HTTP front for AI clients), [`cluster`] (several hosts
//! through NATS JetStream),
//! [`error`].

pub mod agents;
pub mod audit;
mod bounded_read;
pub mod cli;
pub mod cluster;
pub mod context;
pub mod coord;
pub mod engine;
pub mod error;
pub mod events;
pub mod interfaces;
pub mod llm;
pub mod model;
pub mod sandbox;
pub mod security;
pub mod serve;
pub mod spec;
pub mod store;
pub mod tools;
pub mod wasi;

pub use agents::{AgentDescription, AgentHost, AgentReport, AgentStatus, SubAgent, TaskRequest};
pub use engine::{AllocatorKind, HostConfig, LoadedComponent, Runtime};
pub use error::{AgentFailure, Error, ErrorCategory, LimitKind, Result};
pub use events::{EventBus, EventBusConfig, EventError};
pub use sandbox::UsageReceipt;
pub use spec::{
    AgentType, DirectoryGrant, FileSystemAccess, IsolationLevel, NetworkAccessLevel,
    ResourceLimits, SecurityConstraints, SubAgentSpecification,
};
pub use store::{Durability, Store, StoreConfig, StoreError};
pub use tools::{Tool, ToolContext, ToolFailure, ToolFuture, ToolRegistry};
