//! `qi-host serve`: MCP over stdio and/or Streamable HTTP plus the JSON API, until SIGTERM
//! or SIGINT (see [`crate::serve`]).

use crate::error::Error;
use crate::serve::{Server, ServerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Arguments of `qi-host serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The server config (TOML): registered agents and manifests, clients, limits.
    #[arg(long)]
    pub config: PathBuf,
    /// Speak MCP over stdin/stdout, as the operator (for an MCP client that starts the
    /// server as a subprocess). The server stops when stdin closes.
    #[arg(long)]
    pub mcp_stdio: bool,
    /// Serve MCP (Streamable HTTP) at `/mcp` and the JSON API at `/v1` on this address,
    /// e.g. 127.0.0.1:8080 (port 0: any free port, printed on stderr).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Data directory (default: $QI_HOST_DATA_DIR, else $XDG_DATA_HOME/qi-host, else
    /// ~/.local/share/qi-host). The server holds its lock while it runs.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Master key: encrypts context values at rest (as for `qi-host run`), and everything
    /// this host puts on NATS in cluster mode (every host of a cluster needs the same key).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Join the cluster of hosts on this NATS server (with JetStream), e.g.
    /// nats://127.0.0.1:4222: this host's events go to the cluster's stream and it is listed
    /// by `qi-host status --nats`.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// This host's name in the cluster (default: the data directory's host id).
    #[arg(long, value_name = "NAME", requires = "nats")]
    pub cluster_name: Option<String>,
}

/// Resolves on SIGTERM or SIGINT.
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `qi-host serve`. Exit 0 after a clean shutdown; 2 for bad input.
pub async fn serve(args: ServeArgs) -> Result<i32, Error> {
    if !args.mcp_stdio && args.listen.is_none() {
        return Err(Error::field(
            "serve",
            "pass --mcp-stdio, --listen ADDR, or both",
        ));
    }
    let config = ServerConfig::load(&args.config)?;
    let dir = crate::cli::state::data_dir(args.data_dir.as_deref())?;
    let host_config = crate::HostConfig {
        max_live_agents: 1_000,
        ..crate::HostConfig::default()
    };
    let server = Server::open(config, &dir, args.key_file.as_deref(), host_config).await?;
    let node = match &args.nats {
        Some(url) => {
            let load = {
                let server = server.clone();
                Arc::new(move || crate::cluster::HostLoad {
                    running_agents: server.host().live_count() as u64,
                    running_runs: server.quotas.runs_in_progress() as u64,
                })
            };
            let name = args.cluster_name.as_deref();
            let node = crate::cli::cluster::join(server.context(), url, name, load).await?;
            eprintln!(
                "qi-host serve: joined the cluster at {url} as `{}`",
                node.cluster().host_name()
            );
            Some(node)
        }
        None => None,
    };
    let resumed = server.resume_runs().await?;
    if !resumed.is_empty() {
        eprintln!("resumed {} run(s): {}", resumed.len(), resumed.join(", "));
    }
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = args.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::field("--listen", format!("cannot listen on {addr}: {e}")))?;
        let local = listener.local_addr().map_err(|e| Error::System(e.into()))?;
        eprintln!("qi-host serve: listening on http://{local} (MCP at /mcp, API at /v1)");
        let app =
            crate::serve::http::router(server.clone(), shutdown.clone(), local.ip().is_loopback());
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let r = axum::serve(crate::serve::http::no_delay(listener), app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "the HTTP server failed");
            }
        });
    }
    if args.mcp_stdio {
        let handler = crate::serve::mcp::McpHandler::stdio(server.clone());
        let stop = shutdown.clone();
        tasks.spawn(async move {
            use rmcp::ServiceExt;
            match handler
                .serve_with_ct(rmcp::transport::stdio(), stop.child_token())
                .await
            {
                Ok(running) => {
                    let _ = running.waiting().await;
                }
                Err(e) => tracing::error!(error = %e, "the MCP stdio session failed to start"),
            }
            // stdin closed: the stdio client is gone (the server stops unless it also listens).
        });
    }
    let grace = Duration::from_millis(server.config().limits.shutdown_grace_ms);
    let stdio_only = args.listen.is_none();
    tokio::select! {
        _ = terminated() => eprintln!("qi-host serve: stopping (runs get {} ms to finish)", grace.as_millis()),
        _ = tasks.join_next(), if stdio_only => {}
    }
    stop(&server, &shutdown, grace, tasks).await;
    if let Some(node) = node {
        crate::cli::cluster::leave(node, grace, "serve").await;
    }
    Ok(0)
}

/// Stops accepting, gives runs `grace` to finish, then ends sessions and connections.
async fn stop(
    server: &Arc<Server>,
    shutdown: &CancellationToken,
    grace: Duration,
    mut tasks: tokio::task::JoinSet<()>,
) {
    server.shutdown(grace).await;
    shutdown.cancel();
    // Connections get a moment to see their streams end; then the rest is dropped.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
}
