//! Finding and running componentize-py: bounded in time (the whole process group is killed at
//! the timeout) and in the output kept (the last [`MAX_TOOL_OUTPUT`] bytes).

use std::collections::VecDeque;
use std::io::Read;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::BuildError;

/// At most this many bytes of componentize-py's output are kept in a [`BuildError`] (the
/// end, where its error is); the rest is read and dropped.
pub const MAX_TOOL_OUTPUT: usize = 16 * 1024;

/// The componentize-py to run: `$QI_COMPONENTIZE_PY` when set, else `componentize-py` found on
/// `PATH`.
///
/// # Errors
///
/// [`BuildError::ToolMissing`] saying where it looked.
pub fn find_componentize_py() -> Result<PathBuf, BuildError> {
    if let Some(path) = std::env::var_os("QI_COMPONENTIZE_PY") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(BuildError::ToolMissing(format!(
                "QI_COMPONENTIZE_PY={} is not a file",
                path.display()
            )))
        };
    }
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .map(|dir| dir.join("componentize-py"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            BuildError::ToolMissing("not on PATH, and QI_COMPONENTIZE_PY is unset".into())
        })
}

/// What `<tool> --version` prints (trimmed), e.g. `componentize-py 0.25.1`.
///
/// # Errors
///
/// [`BuildError::ToolMissing`] when it cannot be run or does not answer within 60 s.
pub fn tool_version(tool: &Path) -> Result<String, BuildError> {
    let mut command = Command::new(tool);
    command.arg("--version");
    let ran = run(command, tool, Duration::from_secs(60))?;
    match ran.status {
        Some(_) => Ok(String::from_utf8_lossy(&ran.stdout).trim().to_owned()),
        None => Err(BuildError::ToolMissing(format!(
            "{} --version did not answer within 60 s",
            tool.display()
        ))),
    }
}

/// How a run of the tool ended.
pub(crate) struct Ran {
    /// Its exit status; `None` when it was killed at the timeout.
    pub(crate) status: Option<ExitStatus>,
    /// The last [`MAX_TOOL_OUTPUT`] bytes of its stdout.
    pub(crate) stdout: Vec<u8>,
    /// The last [`MAX_TOOL_OUTPUT`] bytes of its stderr.
    pub(crate) stderr: Vec<u8>,
}

/// The last `limit` bytes written to it.
struct Tail {
    bytes: VecDeque<u8>,
    dropped: u64,
    limit: usize,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        self.bytes.extend(data);
        let over = self.bytes.len().saturating_sub(self.limit);
        self.bytes.drain(..over);
        self.dropped += over as u64;
    }
}

impl Tail {
    /// What was kept, marked when something was dropped before it.
    fn kept(&self) -> Vec<u8> {
        let mut kept = Vec::with_capacity(self.bytes.len() + 48);
        if self.dropped > 0 {
            kept.extend_from_slice(format!("[… {} earlier bytes]\n", self.dropped).as_bytes());
        }
        kept.extend(&self.bytes);
        kept
    }
}

/// A stream being read to its end in a thread of its own, keeping the end of it.
struct Drain {
    tail: Arc<Mutex<Tail>>,
    done: mpsc::Receiver<()>,
}

impl Drain {
    fn start(mut from: impl Read + Send + 'static) -> Drain {
        let tail = Arc::new(Mutex::new(Tail {
            bytes: VecDeque::new(),
            dropped: 0,
            limit: MAX_TOOL_OUTPUT,
        }));
        let (done_tx, done) = mpsc::channel();
        let kept = tail.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => kept.lock().expect("output tail").push(&buf[..n]),
                }
            }
            let _ = done_tx.send(());
        });
        Drain { tail, done }
    }

    /// What was read by `until`: a process that left the group (`setsid`) may hold the pipe
    /// open for ever, so the reader is not waited for past it (it ends with that process).
    fn finish(self, until: Instant) -> Vec<u8> {
        let _ = self
            .done
            .recv_timeout(until.saturating_duration_since(Instant::now()));
        self.tail.lock().expect("output tail").kept()
    }
}

/// How long the output is still read once the tool has ended (or was killed).
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Runs `command` (for `tool`) in a process group of its own, its stdin closed and its output
/// kept to the last [`MAX_TOOL_OUTPUT`] bytes of each stream; at `timeout` the whole group is
/// killed (componentize-py's own children too) and `status` is `None`.
///
/// # Errors
///
/// [`BuildError::ToolMissing`] when it cannot be started.
pub(crate) fn run(mut command: Command, tool: &Path, timeout: Duration) -> Result<Ran, BuildError> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // Its own group keeps a terminal's Ctrl-C from reaching it: it is killed when the thread
    // that started it (this one, which waits for it) ends, however that happens.
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec and only makes the prctl
    // system call, which is async-signal-safe; it touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| BuildError::ToolMissing(format!("running {}: {e}", tool.display())))?;
    let stdout = Drain::start(child.stdout.take().expect("stdout is piped"));
    let stderr = Drain::start(child.stderr.take().expect("stderr is piped"));
    let pid = child.id();
    let (done_tx, done_rx) = mpsc::channel();
    // The child is waited for in a thread; at the timeout its group is killed, which ends
    // that wait.
    let waiter = std::thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });
    let status = match done_rx.recv_timeout(timeout) {
        Ok(status) => Some(status.map_err(|e| BuildError::Io {
            what: format!("waiting for {}", tool.display()),
            source: e,
        })?),
        Err(_) => {
            kill_group(pid);
            let _ = waiter.join();
            None
        }
    };
    // A grandchild that kept the pipes open would hold the readers: the group goes too.
    if status.is_some() {
        kill_group(pid);
    }
    let until = Instant::now() + OUTPUT_GRACE;
    let stdout = stdout.finish(until);
    let stderr = stderr.finish(until);
    Ok(Ran {
        status,
        stdout,
        stderr,
    })
}

/// Sends SIGKILL to process group `pid` (gone already is fine).
fn kill_group(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}
