//! The one error type at qi-host's public edge.
//!
//! Categories follow the seed documents: `VALIDATION`, `BUSINESS`, `SYSTEM`, `RESOURCE`,
//! `SECURITY`. Every failure a user can hit is a named variant of [`AgentFailure`] or
//! [`Error`], with a message that says what went wrong and, where there is one, how to fix it.

use serde::Serialize;
use std::fmt;

/// Broad class of a failure, as the seeds name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCategory {
    /// Bad input: a specification, a limit, a component or a manifest that cannot be used.
    Validation,
    /// The agent ran and reported its own failure.
    Business,
    /// The host itself failed (I/O, compilation, an internal error).
    System,
    /// A resource limit stopped the agent: fuel, memory, time, counters, output size.
    Resource,
    /// A security boundary refused something.
    Security,
}

impl fmt::Display for ErrorCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorCategory::Validation => "VALIDATION",
            ErrorCategory::Business => "BUSINESS",
            ErrorCategory::System => "SYSTEM",
            ErrorCategory::Resource => "RESOURCE",
            ErrorCategory::Security => "SECURITY",
        })
    }
}

/// Errors from configuring the host, loading components and spawning agents.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field of a specification or configuration is invalid.
    #[error("invalid `{field}`: {message}")]
    InvalidField {
        /// The offending field, in the spec's own spelling (e.g. `resourceLimits.maxMemoryMB`).
        field: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// The spec asks for more than its isolation level permits.
    #[error("`{field}` is not allowed at isolation level `{level}`: {message}")]
    IsolationCeiling {
        /// The offending field.
        field: String,
        /// The isolation level asked for.
        level: String,
        /// What the level allows and how to fix the spec.
        message: String,
    },
    /// The component file could not be read.
    #[error("cannot read component `{path}`: {source}")]
    ReadComponent {
        /// Path given by the user.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not WebAssembly at all.
    #[error(
        "`{path}` is not a WebAssembly file (no `\\0asm` header); pass a component built for wasm32-wasip2"
    )]
    NotWasm {
        /// Path given by the user.
        path: String,
    },
    /// The file is a core module, not a component.
    #[error(
        "`{path}` is a core WebAssembly module, not a component; build it with `cargo build --target wasm32-wasip2` (which emits components) against qi-guest-sdk"
    )]
    CoreModule {
        /// Path given by the user.
        path: String,
    },
    /// The component does not target the `qi:agent/agent` world or imports what the host lacks.
    #[error("`{path}` cannot run as a qi-host agent: {message}")]
    WrongWorld {
        /// Path given by the user.
        path: String,
        /// What is missing or mismatched.
        message: String,
    },
    /// The component failed to compile.
    #[error("`{path}` failed to compile: {message}")]
    Compile {
        /// Path given by the user.
        path: String,
        /// The compiler's message.
        message: String,
    },
    /// No agent with this id is known.
    #[error("no agent with id `{0}`")]
    UnknownAgent(String),
    /// The host has reached its configured number of live agents.
    #[error(
        "the host already runs {limit} agents (its `max_live_agents`); wait for some to finish or raise the limit"
    )]
    TooManyAgents {
        /// The configured limit.
        limit: u32,
    },
    /// An agent failed while being spawned (instantiation or `describe`): the failure, and the
    /// usage measured up to it (fuel, peak memory, host and WASI calls, stdio), since guest code
    /// already ran.
    #[error("agent failed during spawn: {0}")]
    Spawn(AgentFailure, Box<crate::model::UsageReceipt>),
    /// A task manifest is invalid.
    #[error("{}", manifest_message(path, *line, key, message))]
    Manifest {
        /// The manifest file.
        path: String,
        /// 1-based line, when known.
        line: Option<usize>,
        /// The offending key, e.g. `subtasks[2].inputs[0].from` (empty for syntax errors).
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A resource budget refused an allocation.
    #[error("resource budget exceeded: {0}")]
    Resource(String),
    /// Any other host-side failure.
    #[error(transparent)]
    System(#[from] anyhow::Error),
}

fn manifest_message(path: &str, line: Option<usize>, key: &str, message: &str) -> String {
    let mut s = path.to_string();
    if let Some(l) = line {
        s.push_str(&format!(":{l}"));
    }
    s.push_str(": ");
    if !key.is_empty() {
        s.push_str(&format!("`{key}`: "));
    }
    s.push_str(message);
    s
}

impl Error {
    /// The seed category this error belongs to.
    pub fn category(&self) -> ErrorCategory {
        match self {
            Error::InvalidField { .. }
            | Error::IsolationCeiling { .. }
            | Error::NotWasm { .. }
            | Error::CoreModule { .. }
            | Error::WrongWorld { .. }
            | Error::Compile { .. }
            | Error::ReadComponent { .. }
            | Error::UnknownAgent(_)
            | Error::Manifest { .. } => ErrorCategory::Validation,
            Error::TooManyAgents { .. } | Error::Resource(_) => ErrorCategory::Resource,
            Error::Spawn(f, _) => f.category(),
            Error::System(_) => ErrorCategory::System,
        }
    }

    pub(crate) fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidField {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Which limit an agent ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LimitKind {
    /// `fuel`: the CPU budget.
    Fuel,
    /// `resourceLimits.maxMemoryMB`.
    Memory,
    /// `resourceLimits.maxExecutionTimeMs`.
    ExecutionTime,
    /// `resourceLimits.maxToolCalls`.
    ToolCalls,
    /// `resourceLimits.maxFileOperations`.
    FileOperations,
    /// `resourceLimits.maxConcurrentOperations`.
    ConcurrentOperations,
    /// The configured maximum output size.
    OutputSize,
    /// The wasm call stack.
    Stack,
    /// `resourceLimits.maxOpenHandles`: live descriptors, sockets, streams and other WASI
    /// resources at once.
    OpenHandles,
    /// `resourceLimits.maxDiskBytes`: bytes the agent's files on writable mounts may hold.
    DiskBytes,
    /// `resourceLimits.maxFilesCreated`: files and directories the agent may create.
    FilesCreated,
    /// `configurationOverrides.maxLogBytes`: log bytes the agent may write.
    LogBytes,
    /// Bytes of one host-call argument (see `crate::interfaces::limits`).
    ArgumentSize,
    /// `resourceLimits.maxNetworkOperations`: name lookups, binds, connects, datagrams sent
    /// and received.
    NetworkOperations,
    /// Bytes one agent may write to the shared context store and event bus in total (see
    /// `crate::interfaces::limits::MAX_STORED_BYTES_PER_AGENT`).
    StoredBytes,
    /// `resourceLimits.maxContextBytes`: bytes the agent may write to the context store.
    ContextBytes,
    /// `resourceLimits.maxContextWrites`: context writes (create, put, patch, delete).
    ContextWrites,
    /// `resourceLimits.maxLlmCalls`: model calls.
    LlmCalls,
    /// `resourceLimits.maxInputTokens`: input tokens of model calls.
    InputTokens,
    /// `resourceLimits.maxOutputTokens`: output tokens of model calls.
    OutputTokens,
    /// `resourceLimits.maxCostUsd`: what model calls cost.
    LlmCost,
}

impl LimitKind {
    /// The specification field that sets this limit.
    pub fn field(self) -> &'static str {
        match self {
            LimitKind::Fuel => "fuel",
            LimitKind::Memory => "resourceLimits.maxMemoryMB",
            LimitKind::ExecutionTime => "resourceLimits.maxExecutionTimeMs",
            LimitKind::ToolCalls => "resourceLimits.maxToolCalls",
            LimitKind::FileOperations => "resourceLimits.maxFileOperations",
            LimitKind::ConcurrentOperations => "resourceLimits.maxConcurrentOperations",
            LimitKind::OutputSize => "configurationOverrides.maxOutputBytes",
            LimitKind::Stack => "host max_wasm_stack",
            LimitKind::OpenHandles => "resourceLimits.maxOpenHandles",
            LimitKind::DiskBytes => "resourceLimits.maxDiskBytes",
            LimitKind::FilesCreated => "resourceLimits.maxFilesCreated",
            LimitKind::NetworkOperations => "resourceLimits.maxNetworkOperations",
            LimitKind::LogBytes => "configurationOverrides.maxLogBytes",
            LimitKind::ArgumentSize => "host-call argument size",
            LimitKind::StoredBytes => "host stored bytes per agent",
            LimitKind::ContextBytes => "resourceLimits.maxContextBytes",
            LimitKind::ContextWrites => "resourceLimits.maxContextWrites",
            LimitKind::LlmCalls => "resourceLimits.maxLlmCalls",
            LimitKind::InputTokens => "resourceLimits.maxInputTokens",
            LimitKind::OutputTokens => "resourceLimits.maxOutputTokens",
            LimitKind::LlmCost => "resourceLimits.maxCostUsd",
        }
    }
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LimitKind::Fuel => "fuel",
            LimitKind::Memory => "memory",
            LimitKind::ExecutionTime => "execution time",
            LimitKind::ToolCalls => "tool calls",
            LimitKind::FileOperations => "file operations",
            LimitKind::ConcurrentOperations => "concurrent operations",
            LimitKind::OutputSize => "output size",
            LimitKind::Stack => "stack",
            LimitKind::OpenHandles => "open handles",
            LimitKind::DiskBytes => "disk bytes",
            LimitKind::FilesCreated => "files created",
            LimitKind::LogBytes => "log bytes",
            LimitKind::ArgumentSize => "argument size",
            LimitKind::NetworkOperations => "network operations",
            LimitKind::StoredBytes => "stored bytes",
            LimitKind::ContextBytes => "context bytes",
            LimitKind::ContextWrites => "context writes",
            LimitKind::LlmCalls => "model calls",
            LimitKind::InputTokens => "input tokens",
            LimitKind::OutputTokens => "output tokens",
            LimitKind::LlmCost => "model cost",
        })
    }
}

/// Why one agent's run ended without a result. Only that agent is affected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum AgentFailure {
    /// The agent exceeded one of its limits and was stopped (or refused and gave up).
    #[error("{limit} limit exceeded ({field} = {limit_value}): {detail}", field = limit.field())]
    LimitExceeded {
        /// Which limit.
        limit: LimitKind,
        /// The configured value of the limit.
        limit_value: u64,
        /// What happened at the limit.
        detail: String,
    },
    /// The agent was terminated by `terminate`.
    #[error("terminated: {reason}")]
    Terminated {
        /// Who or what terminated it.
        reason: String,
    },
    /// The agent panicked (Rust `panic!`); the message is the guest's own.
    #[error("guest panicked: {message}")]
    Panicked {
        /// The panic message, from the guest's stderr.
        message: String,
    },
    /// The guest hit a WebAssembly trap (a bug in the guest).
    #[error("guest trapped: {message}")]
    Trapped {
        /// The trap, e.g. `out of bounds memory access`.
        message: String,
    },
    /// The guest called `exit` (WASI `wasi:cli/exit`) instead of returning from `run`.
    #[error("guest exited with status {status}")]
    Exited {
        /// The exit status (0 for `exit(0)`; WASI 0.2 carries only success or failure, reported
        /// as 0 or 1).
        status: i32,
    },
    /// The agent returned an error from `run`.
    #[error("agent reported an error: {message}")]
    AgentError {
        /// `invalid-input`, `tool-failed` or `failed`.
        error_kind: String,
        /// The agent's message.
        message: String,
    },
    /// The component does not declare what the spec asks of it (`agentType`, `capabilities`),
    /// found once it had described itself (VALIDATION): the spec or the component is wrong.
    #[error("invalid `{field}`: {message}")]
    NotDeclared {
        /// The spec field the component does not satisfy.
        field: String,
        /// What the spec asks and what the component declares.
        message: String,
    },
    /// The agent's output is not valid JSON.
    #[error("agent output is not valid JSON: {message}")]
    InvalidOutput {
        /// The parse error.
        message: String,
    },
    /// The host failed while running the agent.
    #[error("host error while running the agent: {message}")]
    Host {
        /// The error chain.
        message: String,
    },
}

impl AgentFailure {
    /// The seed category of this failure.
    pub fn category(&self) -> ErrorCategory {
        match self {
            AgentFailure::LimitExceeded { .. } => ErrorCategory::Resource,
            AgentFailure::Terminated { .. } => ErrorCategory::Business,
            AgentFailure::Panicked { .. }
            | AgentFailure::Trapped { .. }
            | AgentFailure::AgentError { .. }
            | AgentFailure::Exited { .. }
            | AgentFailure::InvalidOutput { .. } => ErrorCategory::Business,
            AgentFailure::NotDeclared { .. } => ErrorCategory::Validation,
            AgentFailure::Host { .. } => ErrorCategory::System,
        }
    }

    /// The limit this failure is about, if it is a limit failure.
    pub fn limit(&self) -> Option<LimitKind> {
        match self {
            AgentFailure::LimitExceeded { limit, .. } => Some(*limit),
            _ => None,
        }
    }
}

/// `Result` with qi-host's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
