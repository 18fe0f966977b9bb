//! Coordination: task manifests, distribution across agents, coordinated execution with
//! strategies and failure handling, synchronization points and a resource manager.
//!
//! ```no_run
//! use qi_host::coord::{self, RunOptions};
//! # async fn demo(host: std::sync::Arc<qi_host::AgentHost>) -> Result<(), qi_host::Error> {
//! let prepared = coord::prepare(&host, "examples/code-review/task.toml".as_ref(), None).await?;
//! println!("{}", serde_json::to_string_pretty(&prepared.plan).unwrap());
//! let report = prepared.run(host, RunOptions::default()).await?;
//! println!("success: {}", report.success);
//! # Ok(())
//! # }
//! ```

pub mod channels;
mod dag;
pub mod deadlock;
pub mod exec;
pub mod graph;
pub mod manifest;
pub mod plan;
pub mod resources;
pub mod strategy;
pub mod sync;

#[cfg(test)]
mod fuzz_tests;

pub use exec::{
    CoordinationMetrics, ExecutionStatus, RunOptions, RunReport, SubtaskResult, SubtaskState,
    execute,
};
pub use manifest::Manifest;
pub use plan::{Plan, PreparedAgent, default_guest_dir};

use crate::agents::AgentHost;
use crate::error::Error;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// A validated manifest with its agents loaded and its plan made.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The manifest.
    pub manifest: Arc<Manifest>,
    /// Its agents, loaded and described.
    pub agents: Arc<BTreeMap<String, PreparedAgent>>,
    /// The distribution.
    pub plan: Plan,
}

/// Loads a manifest, validates it, loads and describes its agents, and plans the distribution.
/// `guest_dir` is where `guest:<name>` components live ([`default_guest_dir`] when `None`).
pub async fn prepare(
    host: &AgentHost,
    path: &Path,
    guest_dir: Option<&Path>,
) -> Result<Prepared, Error> {
    let (manifest, text) = Manifest::load(path)?;
    prepare_parsed(host, manifest, &text, path, guest_dir).await
}

/// [`prepare`] for a manifest already parsed from `text` (errors still cite `path`).
pub async fn prepare_parsed(
    host: &AgentHost,
    manifest: Manifest,
    text: &str,
    path: &Path,
    guest_dir: Option<&Path>,
) -> Result<Prepared, Error> {
    manifest.check(text, path)?;
    let dir = guest_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(default_guest_dir);
    let agents = plan::prepare_agents(host, &manifest, text, path, &dir).await?;
    let plan = plan::plan(&manifest, &agents, text, path)?;
    deadlock::check_points_can_gather(
        &manifest,
        &plan,
        &agents,
        host.runtime().config().max_live_agents,
        text,
        path,
    )?;
    deadlock::check_channels_can_flow(&manifest, &plan, text, path)?;
    Ok(Prepared {
        manifest: Arc::new(manifest),
        agents: Arc::new(agents),
        plan,
    })
}

impl Prepared {
    /// Runs the task (see [`exec`]).
    pub async fn run(&self, host: Arc<AgentHost>, options: RunOptions) -> Result<RunReport, Error> {
        execute(
            host,
            self.manifest.clone(),
            self.agents.clone(),
            &self.plan,
            options,
        )
        .await
    }
}
