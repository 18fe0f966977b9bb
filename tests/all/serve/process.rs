//! A `qi-host serve` process for the lifecycle and red-team tests: started on a fixture,
//! synchronised on the lines it prints, stopped with a signal.

use super::*;
use std::io::BufRead as _;
use std::process::{Child, Stdio};

/// A `qi-host serve --listen 127.0.0.1:0` process.
pub struct Process {
    child: Child,
    pub base: String,
    early: Vec<String>,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Process {
    /// Starts it; `Err(what it printed)` when it ends before listening.
    pub fn try_start(f: &Fixture) -> Result<Process, Vec<String>> {
        Process::try_start_with(f, &[])
    }

    /// [`try_start`](Self::try_start) with more arguments.
    pub fn try_start_with(f: &Fixture, extra: &[&str]) -> Result<Process, Vec<String>> {
        let mut child = crate::common::qi_host_command()
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(f.config_path())
            .arg("--data-dir")
            .arg(f.data_dir())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qi-host serve starts");
        let (tx, lines) = std::sync::mpsc::channel();
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut seen = Vec::new();
        let base = loop {
            match lines.recv() {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        break rest.split_whitespace().next().unwrap().to_string();
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.wait();
                    return Err(seen);
                }
            }
        };
        Ok(Process {
            child,
            base,
            early: seen,
            lines,
        })
    }

    pub async fn call(&self, token: &str, tool: &str, args: Value) -> (u16, Value) {
        self.client().call(token, tool, args).await
    }

    /// A client of its HTTP tools that tasks can own.
    pub fn client(&self) -> ToolClient {
        ToolClient {
            base: self.base.clone(),
        }
    }

    /// SIGTERM (or SIGKILL), then its exit code and everything it printed.
    pub fn stop(mut self, signal: rustix::process::Signal) -> (Option<i32>, Vec<String>) {
        rustix::process::kill_process(rustix::process::Pid::from_child(&self.child), signal)
            .unwrap();
        let status = self.child.wait().unwrap();
        let mut lines = std::mem::take(&mut self.early);
        lines.extend(self.lines.iter());
        (status.code(), lines)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Starts it on the fixture and returns once it listens.
    pub fn start(f: &Fixture) -> Process {
        Process::try_start(f).unwrap_or_else(|seen| {
            panic!("qi-host serve ended before listening:\n{}", seen.join("\n"))
        })
    }

    /// SIGTERM, then its exit code and everything it printed.
    pub fn terminate(self) -> (Option<i32>, Vec<String>) {
        self.stop(rustix::process::Signal::TERM)
    }

    /// The first line it printed that contains `needle`.
    pub fn line_with(&self, needle: &str) -> String {
        if let Some(l) = self.early.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        loop {
            let line = self.lines.recv().expect("the server prints on");
            if line.contains(needle) {
                return line;
            }
        }
    }
}

/// Calls the HTTP tools of a server process (`POST /v1/tools/<tool>`).
#[derive(Clone)]
pub struct ToolClient {
    base: String,
}

impl ToolClient {
    /// The call's status and JSON answer.
    pub async fn call(&self, token: &str, tool: &str, args: Value) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/tools/{tool}", self.base))
            .bearer_auth(token)
            .body(args.to_string())
            .send()
            .await
            .expect("the server answers");
        let status = r.status().as_u16();
        (status, json_of(r).await)
    }
}
