//! The one `wasmtime::Engine`, its `Linker`, and the compiled-component cache.
//!
//! # Mechanisms, and why
//!
//! - **CPU**: fuel (`consume_fuel`) with an async yield every
//!   [`DEFAULT_FUEL_YIELD_INTERVAL`](crate::spec::DEFAULT_FUEL_YIELD_INTERVAL) units. Fuel is
//!   deterministic (the same guest and input burn the same fuel), and the periodic yield hands
//!   control back to tokio so one spinning agent cannot starve the others and so a deadline or a
//!   `terminate` is noticed within one interval. Epoch interruption cost 58-80 % on a
//!   memory-write-heavy loop in a spike here, so qi-host does not enable epochs. Fuel is not free
//!   either. Cranelift adds each basic block's cost to a fuel counter and checks it at every loop
//!   back-edge and function entry: two or three instructions per iteration, so the slowdown is
//!   the larger the smaller a loop's body. `cargo bench --bench runtime -- fuel` (2 cores,
//!   `RUST_BACKTRACE=1`, other builds running) measured, against an unmetered engine in the same
//!   run: 1.01-1.10 on a CPU-bound loop, 1.01-1.02 on strided read-modify-write over 1 MiB and
//!   1.07-1.09 over 32 MiB; an earlier session measured 1.25-1.45 on the tight memory loop. The
//!   yield interval is not the cause: yielding every 10⁶ units, every 10⁷ or never gave the same
//!   slowdown within noise. What to choose: keep the default interval (10⁶) unless an agent's
//!   reaction time to a deadline or `terminate` may be longer (up to the 10⁷ ceiling); a guest
//!   whose hot loop is a few instructions pays most, and unrolling that loop is what lowers it.
//! - **Wall clock**: the agent's whole run (instantiate, `describe`, `run`, including time
//!   blocked in WASI or host calls, which are async) is one future raced against a tokio timer
//!   and the agent's terminate signal; when either fires the future is dropped, which unwinds
//!   the guest's fiber and frees its instance.
//! - **Memory**: a per-store [`ResourceLimiter`](wasmtime::ResourceLimiter) caps all linear
//!   memories together at `maxMemoryMB` and records the peak.
//! - **Instances**: the pooling allocator, sized by [`HostConfig::max_live_agents`]. Its slots
//!   are reserved when the engine is built and reused, so teardown is cheap (3x faster than
//!   on-demand at 10,000 agents in the bench). A live agent still costs about six memory
//!   mappings (stack, guard, the accessible and reserved parts of linear memory, two small
//!   regions) with either allocator, so `vm.max_map_count` (65,530 by default) caps a host at
//!   roughly 10,000 live agents; at 10,000 the on-demand allocator already failed hundreds of
//!   spawns with ENOMEM while the pool failed none. Where the pool's virtual-memory reservation
//!   fails (small address space, `ulimit -v`), the engine falls back to on-demand allocation
//!   with a warning. When the kernel supports `PAGEMAP_SCAN` (Linux 6.7+), slots are reset by
//!   scanning dirty pages and keeping them resident.
//! - **Compilation**: components are compiled once and cached on disk, keyed by the SHA-256 of
//!   their bytes and the engine's compatibility hash; a second load deserializes the
//!   precompiled artifact (tens of microseconds instead of tens of milliseconds). In memory, each
//!   component has one `InstancePre` built from the one shared `Linker`.

use crate::error::{Error, Result};
use crate::interfaces::AgentPre;
use crate::interfaces::AgentState;
use anyhow::Context as _;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Host-wide configuration. Every field has a documented default.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// How many agents may be alive at once (pool size). Default 1,000.
    pub max_live_agents: u32,
    /// Ceiling for any spec's `maxMemoryMB`. Default 1,024.
    pub max_memory_mb: u32,
    /// Ceiling for any spec's `maxExecutionTimeMs`. Default one hour.
    pub max_execution_time_ms: u64,
    /// Ceiling for any spec's `maxOutputBytes`. Default 64 MiB.
    pub max_output_bytes: u64,
    /// WebAssembly stack per agent, in bytes; deeper recursion traps as a stack overflow.
    /// Default 512 KiB.
    pub max_wasm_stack: usize,
    /// Use the pooling allocator (falls back to on-demand if the pool cannot be reserved).
    /// Default true.
    pub pooling: bool,
    /// Where precompiled components are cached. Default: `$QI_HOST_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/qi-host/components`, else `~/.cache/qi-host/components`; `None` keeps
    /// the cache in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Longest an agent may take to start and answer `describe()` while a manifest is planned
    /// (`qi-host plan` and `run` describe every agent kind first), in ms; its own
    /// `maxExecutionTimeMs` still applies if shorter. Default 5,000: `describe()` returns
    /// constants.
    pub describe_limit_ms: u64,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            max_live_agents: 1_000,
            max_memory_mb: 1_024,
            max_execution_time_ms: 3_600_000,
            max_output_bytes: 64 << 20,
            max_wasm_stack: 512 << 10,
            pooling: true,
            cache_dir: default_cache_dir(),
            describe_limit_ms: 5_000,
        }
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("QI_HOST_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("qi-host").join("components"))
}

/// Which instance allocator the engine ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllocatorKind {
    /// Pooling allocator; `pagemap_scan` says whether dirty-page scanning is in use.
    Pooling {
        /// Kernel `PAGEMAP_SCAN` support detected and enabled.
        pagemap_scan: bool,
    },
    /// On-demand allocation (pooling disabled or its reservation failed).
    OnDemand,
}

/// A compiled agent component, ready to instantiate.
pub struct LoadedComponent {
    /// Where it was loaded from.
    pub path: PathBuf,
    /// SHA-256 of the component bytes, hex.
    pub sha256: String,
    /// Whether it came from the on-disk cache.
    pub from_cache: bool,
    pub(crate) component: Component,
    pub(crate) pre: AgentPre<AgentState>,
}

impl std::fmt::Debug for LoadedComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedComponent")
            .field("path", &self.path)
            .field("sha256", &self.sha256)
            .field("from_cache", &self.from_cache)
            .finish()
    }
}

impl LoadedComponent {
    /// The component's imports (`name`), as declared.
    pub fn imports(&self, engine: &Engine) -> Vec<String> {
        self.component
            .component_type()
            .imports(engine)
            .map(|(name, _)| name.to_string())
            .collect()
    }

    /// The component's exports (`name`), as declared.
    pub fn exports(&self, engine: &Engine) -> Vec<String> {
        self.component
            .component_type()
            .exports(engine)
            .map(|(name, _)| name.to_string())
            .collect()
    }
}

/// Engine, linker and component cache, shared by every agent of a host.
pub struct Runtime {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<AgentState>,
    pub(crate) config: HostConfig,
    allocator: AllocatorKind,
    engine_hash: String,
    loaded: Mutex<HashMap<String, Arc<LoadedComponent>>>,
}

impl Runtime {
    /// Builds the engine (pooling, falling back to on-demand) and the linker.
    pub fn new(config: HostConfig) -> Result<Self> {
        let (engine, allocator) = build_engine(&config)?;
        let linker = crate::interfaces::linker(&engine).map_err(anyhow::Error::from)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_hash = format!("{:016x}", hasher.finish());
        Ok(Runtime {
            engine,
            linker,
            config,
            allocator,
            engine_hash,
            loaded: Mutex::new(HashMap::new()),
        })
    }

    /// The shared engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The instance allocator in use.
    pub fn allocator(&self) -> AllocatorKind {
        self.allocator
    }

    /// The host configuration.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// Loads a component from a file: checks it is a component of the `qi:agent/agent` world,
    /// compiles it (or loads it precompiled from the cache) and prepares its `InstancePre`.
    pub fn load_file(&self, path: &Path) -> Result<Arc<LoadedComponent>> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| Error::ReadComponent {
            path: shown.clone(),
            source,
        })?;
        self.load_bytes(path, &bytes)
    }

    /// Like [`load_file`](Self::load_file), from bytes already in memory.
    pub fn load_bytes(&self, path: &Path, bytes: &[u8]) -> Result<Arc<LoadedComponent>> {
        let shown = path.display().to_string();
        check_header(&shown, bytes)?;
        let sha256 = hex::encode(Sha256::digest(bytes));
        let key = format!("{sha256}-{}", self.engine_hash);
        if let Some(hit) = self
            .loaded
            .lock()
            .expect("component map poisoned")
            .get(&key)
        {
            return Ok(hit.clone());
        }

        let (component, from_cache) = self.compile_cached(&shown, &key, bytes)?;
        let instance_pre =
            self.linker
                .instantiate_pre(&component)
                .map_err(|e| Error::WrongWorld {
                    path: shown.clone(),
                    message: format!(
                        "{}; qi-host provides qi:agent/{{log,tools,budget}}@0.1.0 and WASI 0.2",
                        error_chain(&e)
                    ),
                })?;
        let pre = AgentPre::new(instance_pre).map_err(|e| Error::WrongWorld {
            path: shown.clone(),
            message: format!(
                "it does not export the `qi:agent/agent` world (`describe` and `run`): {}; build it against qi-guest-sdk with `qi_guest_sdk::export_agent!`",
                error_chain(&e)
            ),
        })?;
        let loaded = Arc::new(LoadedComponent {
            path: path.to_path_buf(),
            sha256,
            from_cache,
            component,
            pre,
        });
        // Two first loads of one component may compile it side by side: the first inserted
        // wins, so every caller gets the same `Arc`.
        Ok(self
            .loaded
            .lock()
            .expect("component map poisoned")
            .entry(key)
            .or_insert(loaded)
            .clone())
    }

    fn compile_cached(&self, shown: &str, key: &str, bytes: &[u8]) -> Result<(Component, bool)> {
        let cache_file = self
            .config
            .cache_dir
            .as_ref()
            .map(|dir| dir.join(format!("{key}.cwasm")));
        if let Some(file) = &cache_file
            && file.exists()
        {
            match deserialize_cached(&self.engine, file) {
                Ok(component) => return Ok((component, true)),
                Err(e) => tracing::warn!(
                    file = %file.display(),
                    error = %e,
                    "discarding unusable cached component; recompiling"
                ),
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(|e| Error::Compile {
            path: shown.to_string(),
            message: error_chain(&e),
        })?;
        if let Some(file) = &cache_file
            && let Err(e) = write_cache(&component, file)
        {
            tracing::warn!(file = %file.display(), error = %e, "cannot write component cache");
        }
        Ok((component, false))
    }
}

fn check_header(shown: &str, bytes: &[u8]) -> Result<()> {
    if bytes.len() < 8 || &bytes[0..4] != b"\0asm" {
        return Err(Error::NotWasm {
            path: shown.to_string(),
        });
    }
    // Core modules have version 1 and layer 0; components have layer 1.
    if bytes[6..8] == [0, 0] {
        return Err(Error::CoreModule {
            path: shown.to_string(),
        });
    }
    Ok(())
}

/// Loads a precompiled artifact that this host wrote itself into its own cache directory.
#[allow(unsafe_code)]
fn deserialize_cached(engine: &Engine, file: &Path) -> wasmtime::Result<Component> {
    // SAFETY: `Component::deserialize_file` trusts its input to be a genuine precompiled
    // artifact. The cache directory is written only by `write_cache` below (atomic rename of a
    // file produced by `Component::serialize` with an engine whose compatibility hash is part of
    // the file name), so a file found under that name is one of ours. Wasmtime additionally
    // checks the artifact's header and engine compatibility and errors out on a mismatch.
    unsafe { Component::deserialize_file(engine, file) }
}

fn write_cache(component: &Component, file: &Path) -> anyhow::Result<()> {
    let dir = file.parent().context("cache file has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let bytes = component.serialize().map_err(anyhow::Error::from)?;
    let mut tmp = tempfile_in(dir)?;
    std::io::Write::write_all(&mut tmp.0, &bytes)?;
    tmp.0.sync_all()?;
    std::fs::rename(&tmp.1, file).with_context(|| format!("renaming into {}", file.display()))?;
    Ok(())
}

fn tempfile_in(dir: &Path) -> anyhow::Result<(std::fs::File, PathBuf)> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!(".tmp-{}-{n}", std::process::id()));
    let file = std::fs::File::create(&path)?;
    Ok((file, path))
}

/// Renders an error and its causes on one line.
pub(crate) fn error_chain(e: &wasmtime::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !out.contains(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
    }
    out
}

fn base_config(config: &HostConfig) -> Config {
    let mut c = Config::new();
    c.consume_fuel(true);
    c.epoch_interruption(false);
    c.max_wasm_stack(config.max_wasm_stack);
    // The fiber stack must hold the wasm stack plus host frames.
    c.async_stack_size(config.max_wasm_stack + (1 << 20));
    // Guest errors are routine here; no wasm backtrace capture on those paths.
    c.wasm_backtrace_max_frames(None);
    c
}

fn build_engine(config: &HostConfig) -> Result<(Engine, AllocatorKind)> {
    if config.pooling {
        let pagemap = PoolingAllocationConfig::is_pagemap_scan_available();
        let mut pool = PoolingAllocationConfig::new();
        let n = config.max_live_agents;
        pool.total_component_instances(n)
            // A wasm32-wasip2 Rust component has a handful of core instances (the program,
            // wit-component shims) and one or two memories and tables; a componentize-py
            // component has 14 core instances (CPython, its libc and shims), so the pool holds
            // 16 per live agent (the runtime bench's `python` section holds 1,000 alive).
            .max_core_instances_per_component(16)
            .max_memories_per_component(4)
            .max_tables_per_component(8)
            .total_core_instances(n.saturating_mul(16))
            .total_memories(n.saturating_mul(2))
            .total_tables(n.saturating_mul(4))
            .total_stacks(n)
            .max_memory_size((config.max_memory_mb as usize) << 20);
        if pagemap {
            pool.pagemap_scan(Enabled::Yes)
                .linear_memory_keep_resident(1 << 20)
                .async_stack_keep_resident(128 << 10)
                .table_keep_resident(64 << 10);
        }
        let mut c = base_config(config);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        match Engine::new(&c) {
            Ok(engine) => {
                return Ok((
                    engine,
                    AllocatorKind::Pooling {
                        pagemap_scan: pagemap,
                    },
                ));
            }
            Err(e) => tracing::warn!(
                error = %error_chain(&e),
                max_live_agents = n,
                "cannot reserve the pooling allocator; falling back to on-demand allocation"
            ),
        }
    }
    let c = base_config(config);
    let engine = Engine::new(&c)
        .map_err(|e| Error::System(anyhow::Error::from(e).context("creating the engine")))?;
    Ok((engine, AllocatorKind::OnDemand))
}
