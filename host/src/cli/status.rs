//! `qi-host status`: the hosts of a cluster and their load.

use crate::cluster::{Cluster, ClusterConfig, membership};
use crate::error::Error;
use std::path::PathBuf;

/// Arguments of `qi-host status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The cluster's NATS server, e.g. nats://127.0.0.1:4222.
    #[arg(long, value_name = "URL")]
    pub nats: String,
    /// The cluster's master key, when its hosts run with one (their entries are sealed).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Print JSON (an array of host entries) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Lists the live hosts: name, process, version, uptime, last heartbeat, load, and how far
/// each has forwarded its events.
pub async fn status(args: StatusArgs) -> Result<i32, Error> {
    let key = crate::cli::state::master_key(args.key_file.as_deref())?;
    let name = format!("status-{}", std::process::id());
    let cluster = Cluster::connect(ClusterConfig::new(&args.nats, name), key.as_ref())
        .await
        .map_err(|e| Error::field("--nats", e.to_string()))?;
    let hosts = membership::hosts(&cluster)
        .await
        .map_err(|e| Error::field("--nats", e.to_string()))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&hosts).expect("host entries serialize")
        );
        return Ok(0);
    }
    let now = crate::cluster::now_ms();
    println!(
        "{:<34} {:>8} {:>9} {:>10} {:>9} {:>7} {:>5} {:>9}",
        "HOST", "PID", "VERSION", "UP", "SEEN", "AGENTS", "RUNS", "FORWARDED"
    );
    for h in &hosts {
        println!(
            "{:<34} {:>8} {:>9} {:>10} {:>9} {:>7} {:>5} {:>9}",
            h.host,
            h.pid,
            h.version,
            ago(now, h.started_ms),
            format!("{} ago", ago(now, h.seen_ms)),
            h.load.running_agents,
            h.load.running_runs,
            h.events_forwarded
        );
    }
    println!("{} host(s)", hosts.len());
    Ok(0)
}

/// `now - then` as `12s`, `3m04s` or `2h05m`.
fn ago(now: u64, then: u64) -> String {
    let s = now.saturating_sub(then) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}
