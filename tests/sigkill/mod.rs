//! What the kill -9 tests (`crash.rs`, `crash_context.rs`, `crash_run.rs`) share: the child is
//! the test binary itself, re-executed to run one ignored test, whose stdout lines the parent
//! reads until the moment it kills it; and the wait for the data directory's lock.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// A child test process and its stdout, line by line.
pub struct Child {
    /// The process (`kill` sends SIGKILL: no destructor, flush or checkpoint runs).
    pub process: std::process::Child,
    /// Its stdout lines, as it prints them; disconnected once it exits.
    pub lines: mpsc::Receiver<String>,
    /// The thread reading them.
    pub reader: JoinHandle<()>,
}

/// Re-executes this test binary to run only the ignored test `test`, with `envs` set and
/// backtraces off.
pub fn spawn_child(test: &str, envs: &[(&str, &OsStr)]) -> Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", test, "--include-ignored", "--nocapture"])
        .arg("--test-threads=1")
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (key, value) in envs {
        command.env(key, value);
    }
    let mut process = command.spawn().unwrap();
    let stdout = process.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Child {
        process,
        lines,
        reader,
    }
}

/// Waits until nobody holds the data directory's lock (a killed child's is released by the
/// kernel as it dies, possibly after `wait` returned).
#[allow(dead_code)]
pub fn wait_for_the_lock(dir: &Path) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(qi_host::store::LOCK_FILE))
        .unwrap();
    // `flock` waits for the holder (another open file, even in this process) to let go.
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).unwrap();
    // Closing the file releases it.
}

/// A context service (with its event bus) over the store `config` opens, with the default
/// context configuration: what the children write through and the parents check.
#[allow(dead_code)]
pub async fn context_service(config: qi_host::StoreConfig) -> qi_host::context::ContextService {
    let store = qi_host::Store::open(config).unwrap();
    let bus = qi_host::EventBus::new(store.clone(), qi_host::EventBusConfig::default())
        .await
        .unwrap();
    qi_host::context::ContextService::open(
        store,
        bus,
        std::sync::Arc::new(qi_host::context::SystemClock),
        qi_host::context::ContextConfig::default(),
    )
    .await
    .unwrap()
}
