//! Sub-agent factory and registry: validate a spec, spawn an agent into its own Store, run one
//! task, terminate, and report measured usage.
//!
//! Lifecycle: `initializing` (Store built, component instantiating) → `ready` (`describe`
//! answered) → `executing` (`run` in progress) → `completed` | `failed` | `terminated`.
//! Every agent runs exactly one task in a fresh instance, so nothing leaks from one task to the
//! next. A failing agent ends with an [`AgentFailure`]; the host and every other agent go on.
//!
//! Files: [`report`] (statuses, descriptions, tasks, reports), [`spawn`] (the host: validate,
//! spawn, terminate, trust), [`lifecycle`] (one agent's run, deadline, terminate, outcome),
//! `registry` (live agents), `failure` (how a guest's end is classified).

mod failure;
mod lifecycle;
mod registry;
mod report;
mod spawn;

pub use lifecycle::SubAgent;
pub use report::{AgentDescription, AgentReport, AgentStatus, TaskRequest};
pub use spawn::AgentHost;
