//! The `qi-host` command line: the clap definitions here, one file per subcommand group.

mod build_py;
mod cluster;
mod inspect;
pub(crate) mod llm;
mod policy;
pub(crate) mod run;
mod run_agent;
mod run_report;
mod schema;
pub(crate) mod serve;
pub(crate) mod state;
mod status;

use crate::error::Error;
use crate::spec::IsolationLevel;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Runs AI sub-agents as sandboxed WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "qi-host", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `qi-host` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a multi-agent task from a manifest: distribute, coordinate, synchronize, and print
    /// the result, a per-subtask table, usage receipts and coordination metrics.
    Run(crate::cli::run::RunArgs),
    /// Validate a manifest and show its distribution plan without running anything.
    Plan(crate::cli::run::PlanArgs),
    /// Run one agent component on one task and print its output and usage receipt.
    RunAgent(RunAgentArgs),
    /// Build a Python agent (a module with one `qi_agent.Agent` subclass) into a component,
    /// with componentize-py and the host's own WIT.
    BuildPy(crate::cli::build_py::BuildPyArgs),
    /// Serve MCP (stdio and/or Streamable HTTP at /mcp) and a JSON API (/v1) to AI clients:
    /// they run the agents and manifests the server config registers.
    Serve(crate::cli::serve::ServeArgs),
    /// Show the hosts of a cluster (`qi-host serve --nats`) and their load.
    Status(crate::cli::status::StatusArgs),
    /// Show what a component is: agent info, imports, exports, and whether the host can run it.
    Inspect(InspectArgs),
    /// Look at and repair shared contexts in a data directory (as the operator).
    Context(ContextArgs),
    /// Read the event log of a data directory.
    Events(EventsArgs),
    /// Check and search the tamper-evident audit log of a data directory.
    Audit(AuditArgs),
    /// Work with access-policy files.
    Policy(PolicyArgs),
    /// Print the JSON Schema of what a command prints with `--json`, with every field's
    /// meaning and every metric's formula.
    Schema {
        /// Which output.
        #[arg(value_enum)]
        kind: SchemaKind,
    },
}

/// Outputs `qi-host schema` describes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SchemaKind {
    /// The report of `qi-host run --json`.
    RunReport,
}

/// Arguments of `qi-host policy`.
#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: PolicyCommand,
}

/// `qi-host policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file (TOML, or JSON when it ends in `.json`) against the generated
    /// schema: prints every error with its position (line:column in the file, or policy, rule,
    /// field and line:column in the condition) and exits 2, or prints a summary and exits 0.
    Check {
        /// The policy file.
        file: PathBuf,
    },
    /// Print the Cedar schema conditions are checked against.
    Schema,
}

/// Where the durable state lives, and how to print.
#[derive(Debug, clap::Args)]
pub struct DataArgs {
    /// Data directory (default: $QI_HOST_DATA_DIR, else $XDG_DATA_HOME/qi-host, else
    /// ~/.local/share/qi-host).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Master key of an encrypted data directory (default: $QI_HOST_MASTER_KEY).
    #[arg(long, global = true)]
    pub key_file: Option<PathBuf>,
}

/// Arguments of `qi-host context`.
#[derive(Debug, clap::Args)]
pub struct ContextArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ContextCommand,
    /// Data directory and output format.
    #[command(flatten)]
    pub data: DataArgs,
}

/// `qi-host context` subcommands.
#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// Set a context's labels (what access policies see as `resource.labels`), replacing the
    /// ones it had; with no LABEL, clear them. Audited.
    Label {
        /// Context id.
        id: String,
        /// Labels: ASCII letters, digits, `-`, `_`, `.`, `:` (at most 32, each up to 64 bytes).
        labels: Vec<String>,
    },
    /// List contexts.
    List {
        /// Only this context type.
        #[arg(long = "type")]
        context_type: Option<String>,
        /// Only contexts owned by this agent.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Show one context.
    Get {
        /// Context id.
        id: String,
    },
    /// Show a context's versions, newest first.
    History {
        /// Context id.
        id: String,
        /// How many versions.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Show a context's conflicts.
    Conflicts {
        /// Context id.
        id: String,
    },
    /// Commit a new version equal to an old one.
    Rollback {
        /// Context id.
        id: String,
        /// The version to restore.
        version: u64,
    },
    /// Resolve a context in conflict: take one agent's values, or a whole document.
    Resolve {
        /// Context id.
        id: String,
        /// Take this agent's value for every conflicting field.
        #[arg(long, conflicts_with = "document")]
        agent: Option<String>,
        /// Replace the document with this JSON.
        #[arg(long)]
        document: Option<String>,
    },
}

/// Arguments of `qi-host events`.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: EventsCommand,
    /// Data directory and output format.
    #[command(flatten)]
    pub data: DataArgs,
}

/// `qi-host events` subcommands.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print the newest events (and, with --follow, new ones as they are committed).
    Tail {
        /// Filter: `type=updated,context=ctx-1,agent=a,since=MS,until=MS,priority=N`.
        #[arg(long, default_value = "")]
        filter: String,
        /// Start after this sequence number instead of the newest `--limit` events.
        #[arg(long)]
        after: Option<u64>,
        /// How many of the newest events to print first.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Keep printing events as they are committed (polls the store).
        #[arg(long)]
        follow: bool,
    },
}

/// Arguments of `qi-host audit`.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: AuditCommand,
    /// Data directory and output format.
    #[command(flatten)]
    pub data: DataArgs,
}

/// `qi-host audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the head of the chain: the newest entry's seq and hash, and its scheme (sha256,
    /// or hmac-sha256 with a master key). Keep it outside the host as an anchor.
    Head,
    /// Adopt the log as it now stands after reviewing why it no longer matches its head file
    /// (e.g. entries deleted on purpose): the chain must still verify; the head file is
    /// rewritten and the acceptance recorded in the log. Exit 1 when the chain is broken.
    AcceptHead,
    /// Check the hash chain and the head file: exit 0 when intact, 1 when broken (naming the
    /// first broken entry, or the head file's problem). Prints the entry count and last hash
    /// to keep as an external anchor.
    Verify {
        /// Also require entry SEQ to still have hash HASH (an anchor kept from an earlier
        /// verify): detects deleted newest entries and a rewritten log.
        #[arg(long, value_name = "SEQ:HASH")]
        anchor: Option<String>,
    },
    /// Print entries, one line each (time, seq, decision, agent, operation, resource, reason),
    /// or one JSON object per line with --json.
    Query {
        /// Agent glob, e.g. `worker-*`.
        #[arg(long)]
        agent: Option<String>,
        /// Resource glob, e.g. `context/plan*`.
        #[arg(long)]
        resource: Option<String>,
        /// Operation glob, e.g. `fs.*`.
        #[arg(long)]
        operation: Option<String>,
        /// Only this decision: allow, deny or record.
        #[arg(long)]
        decision: Option<crate::audit::AuditDecision>,
        /// Recorded at or after this time (unix milliseconds).
        #[arg(long, value_name = "MS")]
        since: Option<u64>,
        /// Recorded at or before this time (unix milliseconds).
        #[arg(long, value_name = "MS")]
        until: Option<u64>,
        /// Only the newest N matching entries.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
}

/// Arguments of `qi-host run-agent`.
#[derive(Debug, clap::Args)]
pub struct RunAgentArgs {
    /// The agent component (`.wasm`, built for wasm32-wasip2).
    pub component: PathBuf,
    /// What the agent should do.
    #[arg(long)]
    pub task: String,
    /// Task input as JSON (default: null).
    #[arg(long)]
    pub input: Option<String>,
    /// A full SubAgentSpecification as a JSON file; the flags below override its fields.
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Isolation level: sandbox, restricted or monitored. Default: sandbox, or restricted when
    /// --dir or --allow-host is given.
    #[arg(long)]
    pub isolation: Option<IsolationLevel>,
    /// Memory cap in MiB (resourceLimits.maxMemoryMB).
    #[arg(long)]
    pub max_memory_mb: Option<u32>,
    /// CPU budget in fuel units.
    #[arg(long)]
    pub fuel: Option<u64>,
    /// Wall-clock limit in milliseconds (resourceLimits.maxExecutionTimeMs).
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Tool-call budget (resourceLimits.maxToolCalls).
    #[arg(long)]
    pub max_tool_calls: Option<u32>,
    /// File-operation budget (resourceLimits.maxFileOperations).
    #[arg(long)]
    pub max_file_operations: Option<u32>,
    /// Grant a directory: HOST[:GUEST][:ro|rw]; GUEST defaults to /workspace, access to ro.
    #[arg(long = "dir", value_name = "HOST[:GUEST][:ro|rw]")]
    pub dirs: Vec<String>,
    /// Allow connections to HOST:PORT (globs on IPs, e.g. 127.0.0.1:8080, 10.0.0.*:443).
    #[arg(long = "allow-host", value_name = "PATTERN")]
    pub allow_hosts: Vec<String>,
    /// Allow a tool (glob, e.g. `fs.*`).
    #[arg(long = "allow-tool", value_name = "NAME")]
    pub allow_tools: Vec<String>,
    /// Give the agent the shared context store and event bus of this data directory (created
    /// if missing). Without it, the agent's context and events calls fail with `failed`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Master key for encryption at rest of the data directory's context values (64 hex
    /// characters or 32 raw bytes; default: $QI_HOST_MASTER_KEY, else none).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Access policies (TOML or JSON) the agent's host calls are checked against; the file is
    /// re-read when it changes during the run (a broken one keeps the previous policies). With
    /// --data-dir, every decision and the agent's lifecycle go to that directory's audit log.
    #[arg(long)]
    pub policies: Option<PathBuf>,
    /// The agent's name as access policies see it (`agent.name`; the spec's `name`). Without
    /// it (and without one in --spec) rules on `agent.name` do not match; the name the
    /// component declares in `describe()` is never used for access decisions.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Model names (globs) the agent may call through `qi:agent/llm` (the spec's
    /// `securityConstraints.allowedModels`); repeat the flag for several.
    #[arg(long = "allow-model", value_name = "PATTERN")]
    pub allow_models: Vec<String>,
    /// Model providers and record/replay.
    #[command(flatten)]
    pub llm: crate::cli::llm::LlmArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `qi-host inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The component to inspect.
    pub component: PathBuf,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

impl clap::builder::ValueParserFactory for IsolationLevel {
    type Parser = clap::builder::ValueParser;
    fn value_parser() -> Self::Parser {
        clap::builder::ValueParser::new(|s: &str| {
            s.parse::<IsolationLevel>().map_err(|e| e.to_string())
        })
    }
}

/// Exit codes: 0 success, 1 the agent failed, 2 bad input or host error.
pub async fn run(cli: Cli) -> Result<i32, Error> {
    match cli.command {
        Command::Run(args) => crate::cli::run::run(args).await,
        Command::Plan(args) => crate::cli::run::plan(args).await,
        Command::RunAgent(args) => run_agent::run_agent(args).await,
        Command::Inspect(args) => inspect::inspect(args).await,
        Command::Serve(args) => serve::serve(args).await,
        Command::Status(args) => status::status(args).await,
        Command::BuildPy(args) => Ok(build_py::build_py(args)),
        Command::Context(args) => crate::cli::state::context(args).await,
        Command::Events(args) => crate::cli::state::events(args).await,
        Command::Audit(args) => crate::cli::state::audit(args).await,
        Command::Policy(args) => Ok(policy::policy(args)),
        Command::Schema { kind } => {
            println!("{}", schema::schema_text(kind));
            Ok(0)
        }
    }
}
