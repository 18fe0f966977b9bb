//! `qi-host run <manifest>` (the main job) and `qi-host plan <manifest>`.

use crate::coord::{self, ExecutionStatus, RunOptions, SubtaskState};
use crate::error::Error;
use crate::{AgentHost, HostConfig};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

/// Arguments of `qi-host run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The task manifest (TOML); see examples/.
    pub manifest: PathBuf,
    /// Data directory for the shared context, events and checkpoints (default:
    /// $QI_HOST_DATA_DIR, else $XDG_DATA_HOME/qi-host, else ~/.local/share/qi-host).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Where `guest:<name>` components are (default: $QI_GUEST_DIR, else
    /// target/guests/wasm32-wasip2/guest).
    #[arg(long)]
    pub guest_dir: Option<PathBuf>,
    /// Run id (default: a fresh one).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Continue the run given by --run-id: completed subtasks are not run again.
    #[arg(long, requires = "run_id")]
    pub resume: bool,
    /// Master key: encrypts context values at rest (64 hex characters or 32 raw bytes;
    /// default: $QI_HOST_MASTER_KEY, else values are stored in plaintext).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Access policies (TOML or JSON) every host call is checked against; the file is re-read
    /// when it changes during the run. Without it the gate is open.
    #[arg(long)]
    pub policies: Option<PathBuf>,
    /// Model providers and record/replay.
    #[command(flatten)]
    pub llm: crate::cli::llm::LlmArgs,
    /// Print the full report as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Join the cluster of hosts on this NATS server for the run (as `qi-host serve
    /// --nats`): the run's events go to the cluster's stream and the host is listed by
    /// `qi-host status` while it runs. The subtasks still run on this host.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// This host's name in the cluster (default: the data directory's host id).
    #[arg(long, value_name = "NAME", requires = "nats")]
    pub cluster_name: Option<String>,
}

/// Re-reads `path` every half second; a changed file replaces the policies (a broken one is
/// reported and the previous policies stay).
pub(crate) fn watch_policies(
    path: PathBuf,
    access: Arc<crate::security::AccessControl>,
) -> tokio::task::JoinHandle<()> {
    let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    // Read now, not when the task first runs: a change made before then is still seen.
    let mut last = modified(&path);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let now = modified(&path);
            if now == last {
                continue;
            }
            last = now;
            match crate::security::PolicySet::load(&path) {
                Ok(p) => {
                    access.set_policies(Some(p));
                    tracing::warn!(file = %path.display(), "access policies reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "policy file changed but is invalid; keeping the previous policies")
                }
            }
        }
    })
}

/// Arguments of `qi-host plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The task manifest (TOML).
    pub manifest: PathBuf,
    /// Where `guest:<name>` components are.
    #[arg(long)]
    pub guest_dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn host_config() -> HostConfig {
    HostConfig {
        max_live_agents: 1_000,
        ..HostConfig::default()
    }
}

/// `qi-host plan`: validation, analysis, allocation, sync and fallback plans.
pub async fn plan(args: PlanArgs) -> Result<i32, Error> {
    let host = AgentHost::new(host_config())?;
    let prepared = coord::prepare(&host, &args.manifest, args.guest_dir.as_deref()).await?;
    let p = &prepared.plan;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(p).map_err(|e| Error::System(e.into()))?
        );
        return Ok(0);
    }
    let a = &p.analysis;
    println!(
        "task {}  strategy {}  failure handling {}",
        p.task_id,
        p.strategy.as_str(),
        p.failure_handling.as_str()
    );
    println!(
        "analysis: {} ({}); recommended agents {}; estimated {} ms of {} ms total work (critical path {} ms: {}); expected saving {:.0}%",
        if a.suitable {
            "distribute"
        } else {
            "do not distribute"
        },
        a.reason,
        a.recommended_agents,
        a.estimated_ms,
        a.total_estimated_ms,
        a.critical_path_ms,
        a.critical_path.join(" → "),
        a.estimated_benefit * 100.0
    );
    println!("\nlevels");
    for (i, l) in a.levels.iter().enumerate() {
        println!("  {i}: {}", l.join(", "));
    }
    println!("\nsubtasks");
    println!(
        "  {:<20} {:<6} {:<30} {:<30} sync",
        "id", "level", "agents (in order tried)", "waits for"
    );
    for s in &p.subtasks {
        let mut waits = s.depends_on.clone();
        waits.extend(s.waits_for_points.iter().map(|x| format!("sync.{x}")));
        println!(
            "  {:<20} {:<6} {:<30} {:<30} {}",
            s.id,
            s.level,
            s.candidates.join(", "),
            waits.join(", "),
            s.participates_in.join(", ")
        );
    }
    println!("\nagent allocations");
    for al in &p.agent_allocations {
        println!(
            "  {:<16} {} MiB each; subtasks {}; waits for {}",
            al.agent,
            al.memory_mb,
            al.assigned_subtasks.join(", "),
            if al.dependencies.is_empty() {
                "-".to_string()
            } else {
                al.dependencies.join(", ")
            }
        );
    }
    println!(
        "\nsynchronization plan ({})",
        p.synchronization_plan.strategy
    );
    for pt in &p.synchronization_plan.points {
        println!(
            "  {:<16} {:<11} {:<17} timeout {} on timeout {}; participants {}",
            pt.id,
            pt.point_type.as_str(),
            pt.condition.name(),
            pt.timeout_ms
                .map(|t| format!("{t} ms"))
                .unwrap_or_else(|| "none".into()),
            serde_json::to_value(pt.on_timeout)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            pt.participants.join(", ")
        );
    }
    let declared: Vec<_> = p
        .communication_channels
        .iter()
        .filter_map(|c| c.declared.as_ref().map(|d| (c, d)))
        .collect();
    if !declared.is_empty() {
        println!("\nchannels (created by the run)");
        for (c, d) in declared {
            let queue = match (d.ack_timeout_ms, d.max_deliveries) {
                (Some(ms), Some(n)) => format!("; ack within {ms} ms, at most {n} deliveries"),
                _ => String::new(),
            };
            println!(
                "  {:<16} {:<13} {} → {}; messages ≤ {} bytes, depth ≤ {}{queue}; kept as {}",
                c.id.trim_start_matches("channel."),
                c.channel_type,
                d.producers.join(", "),
                d.consumers.join(", "),
                d.max_message_bytes,
                d.max_depth,
                d.stored_at
            );
        }
    }
    println!("\nfallback plan ({})", p.fallback_plan.recovery_strategy);
    for act in &p.fallback_plan.actions {
        println!(
            "  when {}: {} {}",
            act.condition, act.action, act.parameters
        );
    }
    Ok(0)
}

/// `qi-host run`: exit 0 when every subtask completed, 1 when the run failed or is partial,
/// 2 for bad input.
pub async fn run(args: RunArgs) -> Result<i32, Error> {
    // The manifest first: a bad one should not create a data directory.
    let (manifest, text) = coord::Manifest::load(&args.manifest)?;
    let dir = crate::cli::state::data_dir(args.data_dir.as_deref())?;
    std::fs::create_dir_all(&dir).map_err(|e| {
        Error::field(
            "--data-dir",
            format!("cannot create `{}`: {e}", dir.display()),
        )
    })?;
    let policies = crate::cli::state::load_policies(args.policies.as_deref())?;
    let crate::cli::state::Secured {
        context,
        audit,
        access,
    } = crate::cli::state::open_secured(&dir, args.key_file.as_deref(), policies).await?;
    let watcher = args
        .policies
        .clone()
        .map(|p| watch_policies(p, access.clone()));
    let broker = args.llm.broker(
        manifest.llm.as_ref(),
        Some(context.store().clone()),
        args.key_file.as_deref(),
    );
    let setup = async {
        let mut host = AgentHost::new(host_config())?
            .with_context(context)
            .with_access(access);
        if let Some(broker) = broker? {
            host = host.with_llm(broker);
        }
        let host = Arc::new(host);
        let prepared = coord::prepare_parsed(
            &host,
            manifest,
            &text,
            &args.manifest,
            args.guest_dir.as_deref(),
        )
        .await?;
        Ok::<_, Error>((host, prepared))
    };
    // What opening the data directory recorded is written before an early error returns
    // (the audit writer's batch window would otherwise hold it when the process exits).
    let (host, prepared) = match setup.await {
        Ok(ready) => ready,
        Err(e) => {
            if let Some(w) = &watcher {
                w.abort();
            }
            audit.flush().await;
            return Err(e);
        }
    };
    let node = match &args.nats {
        Some(url) => {
            let context = host.context().expect("the run's host has a context store");
            let load = {
                let host = host.clone();
                Arc::new(move || crate::cluster::HostLoad {
                    running_agents: host.live_count() as u64,
                    running_runs: 1,
                })
            };
            match crate::cli::cluster::join(context, url, args.cluster_name.as_deref(), load).await
            {
                Ok(node) => Some(node),
                Err(e) => {
                    if let Some(w) = &watcher {
                        w.abort();
                    }
                    audit.flush().await;
                    return Err(e);
                }
            }
        }
        None => None,
    };
    let total = prepared.manifest.subtasks.len();
    let (tx, rx) = watch::channel(ExecutionStatus {
        coordination_id: String::new(),
        status: "starting".into(),
        progress: 0.0,
        active_agents: 0,
        completed_tasks: 0,
        total_tasks: total,
        subtasks: Vec::new(),
    });
    let monitor = tokio::spawn(monitor(rx, !args.json));
    let report = prepared
        .run(
            host,
            RunOptions {
                run_id: args.run_id.clone(),
                resume: args.resume,
                status: Some(tx),
            },
        )
        .await;
    let _ = monitor.await;
    if let Some(w) = watcher {
        w.abort();
    }
    audit.flush().await;
    if let Some(node) = node {
        crate::cli::cluster::leave(node, std::time::Duration::from_secs(10), "run").await;
    }
    let report = report?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| Error::System(e.into()))?
        );
    } else {
        super::run_report::print_run(&report, &dir);
        // The audit head after this run: keep it as an anchor (`qi-host audit head`).
        let head = audit.head().await.map_err(|e| Error::System(e.into()))?;
        println!("audit head: {head}");
    }
    Ok(if report.success { 0 } else { 1 })
}

/// Live progress on stderr: a bar on a terminal, one line per change otherwise.
async fn monitor(mut rx: watch::Receiver<ExecutionStatus>, enabled: bool) {
    if !enabled {
        while rx.changed().await.is_ok() {}
        return;
    }
    let tty = std::io::stderr().is_terminal();
    let bar = tty.then(|| {
        let b = indicatif::ProgressBar::new(rx.borrow().total_tasks as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} subtasks  {elapsed_precise}  {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let mut last: Vec<(String, SubtaskState)> = Vec::new();
    while rx.changed().await.is_ok() {
        let st = rx.borrow_and_update().clone();
        let now: Vec<(String, SubtaskState)> = st
            .subtasks
            .iter()
            .map(|s| (s.id.clone(), s.state))
            .collect();
        match &bar {
            Some(b) => {
                b.set_position(st.completed_tasks as u64);
                let running: Vec<&str> = st
                    .subtasks
                    .iter()
                    .filter(|s| s.state == SubtaskState::Running)
                    .map(|s| s.id.as_str())
                    .collect();
                b.set_message(format!("running: {}", running.join(", ")));
            }
            None => {
                for (id, state) in &now {
                    if !last.iter().any(|(i, s)| i == id && s == state)
                        && *state != SubtaskState::Pending
                    {
                        let agent = st
                            .subtasks
                            .iter()
                            .find(|s| &s.id == id)
                            .and_then(|s| s.agent.clone())
                            .unwrap_or_default();
                        eprintln!(
                            "[{:>3.0}%] {id} {} {agent}",
                            st.progress * 100.0,
                            serde_json::to_value(state)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_string))
                                .unwrap_or_default()
                        );
                    }
                }
            }
        }
        last = now;
        if st.status != "running" && st.status != "starting" {
            break;
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::{AccessControl, PolicySet};
    use std::path::Path;
    use std::time::{Duration, SystemTime};

    fn write_policy(path: &Path, id: &str, bump_s: u64) {
        let text = format!(
            "[[policies]]\nid = \"{id}\"\n[[policies.rules]]\neffect = \"allow\"\nresources = [\"*\"]\n"
        );
        write_at(path, &text, bump_s);
    }

    /// Writes `text` with an mtime `bump_s` seconds from now, so each write is a change even
    /// on a filesystem with a coarse clock.
    fn write_at(path: &Path, text: &str, bump_s: u64) {
        std::fs::write(path, text).unwrap();
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(SystemTime::now() + Duration::from_secs(bump_s))
            .unwrap();
    }

    fn ids(access: &AccessControl) -> Vec<String> {
        access
            .current()
            .map(|p| p.policies().iter().map(|p| p.id.clone()).collect())
            .unwrap_or_default()
    }

    // The watcher polls on a tokio timer: paused time steps it exactly.
    #[tokio::test(start_paused = true)]
    async fn a_changed_policy_file_replaces_the_policies_and_a_broken_one_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policies.toml");
        write_policy(&path, "first", 0);
        let access = Arc::new(AccessControl::new(
            Some(PolicySet::load(&path).unwrap()),
            None,
        ));
        let watcher = watch_policies(path.clone(), access.clone());
        // Let the watcher take its first look at the file.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(ids(&access), ["first"]);

        write_policy(&path, "second", 10);
        // Not yet re-read: the next poll is at 500 ms.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(ids(&access), ["first"]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(ids(&access), ["second"]);

        write_at(&path, "[[policies]]\nid = \"broken\"\ncolour = 1\n", 20);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(ids(&access), ["second"], "a broken file keeps the policies");

        // A condition nested far past the limit: an error on reload, never a stack overflow.
        let deep = format!("{}true{}", "(".repeat(1000), ")".repeat(1000));
        write_at(
            &path,
            &format!(
                "[[policies]]\nid = \"deep\"\n[[policies.rules]]\neffect = \"allow\"\nresources = [\"*\"]\ncondition = '{deep}'\n"
            ),
            25,
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            ids(&access),
            ["second"],
            "a too deep file keeps the policies"
        );

        write_policy(&path, "third", 30);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(ids(&access), ["third"], "a mended file is read again");
        watcher.abort();
    }
}
