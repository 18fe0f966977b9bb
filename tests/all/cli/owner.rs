//! One owner per data directory, across processes: a host that owns a data directory keeps
//! every other writer out (naming itself), read-only commands work beside it, and a killed
//! owner's directory is taken over by the next host.
//!
//! The owner is a real `qi-host` holding the directory while its agent sleeps; the tests wait
//! for the line it logs once it owns the directory (`QI_LOG=qi_host::store=info`), never on time.

use super::*;
use qi_guest_artifacts::{HELLO_COMPONENT, SLEEPER_COMPONENT};
use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Stdio};

/// A `qi-host` process that owns a data directory until it is dropped (then killed).
struct Holder {
    child: Child,
}

impl Holder {
    /// Starts `qi-host args…` and returns once it logged that it owns its data directory.
    fn start(args: &[&str]) -> Holder {
        let mut child = crate::common::qi_host_command()
            .args(args)
            .env("QI_LOG", "qi_host::store=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qi-host starts");
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = Vec::new();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("took the lock of the data directory") => break,
                Some(Ok(line)) => seen.push(line),
                _ => {
                    let status = child.wait().unwrap();
                    panic!(
                        "the holder ended ({status}) before owning its directory:\n{}",
                        seen.join("\n")
                    );
                }
            }
        }
        // Keep its stderr drained, so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Holder { child }
    }

    /// `run-agent sleeper` on `dir`: sleeps ten minutes (it is killed long before).
    fn sleeper(dir: &Path) -> Holder {
        Holder::start(&[
            "run-agent",
            SLEEPER_COMPONENT,
            "--task",
            "hold",
            "--input",
            r#"{"ms": 600000}"#,
            "--timeout-ms",
            "600000",
            "--data-dir",
            dir.to_str().unwrap(),
        ])
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`, and wait until it is gone.
    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn on(dir: &Path, args: &[&str]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--data-dir", dir.to_str().unwrap()]);
    qi_host(&all)
}

/// The one-line error of a writer refused beside `holder`: it names the holder (pid, command,
/// since when) and says what to do.
#[track_caller]
fn refused_by(o: &Output, holder: &Holder, command: &str) {
    one_line_error(o, &format!("a host (pid {}, `", holder.pid()));
    let err = stderr(o);
    assert!(err.contains(command), "the holder's command: {err}");
    assert!(err.contains(", since 20") && err.contains(" UTC)"), "{err}");
    assert!(err.contains("wait for it to finish or stop it"), "{err}");
}

#[test]
fn a_second_host_on_an_owned_directory_fails_naming_the_owner() {
    let data = tempfile::tempdir().unwrap();
    let holder = Holder::sleeper(data.path());
    let second = on(
        data.path(),
        &["run-agent", HELLO_COMPONENT, "--task", "greet"],
    );
    refused_by(&second, &holder, "run-agent");
    assert!(
        stderr(&second).contains(SLEEPER_COMPONENT),
        "the whole command line: {}",
        stderr(&second)
    );
    // Without the owner the same command runs: the refusal was the lock, not the command.
    drop(holder);
    let again = on(
        data.path(),
        &["run-agent", HELLO_COMPONENT, "--task", "greet"],
    );
    assert!(again.status.success(), "{}", stderr(&again));
}

#[test]
fn a_lock_file_removed_beside_the_owner_lets_no_second_host_in() {
    // An operator takes `lock` for a stale pid file and removes it while the host runs.
    let data = tempfile::tempdir().unwrap();
    let holder = Holder::sleeper(data.path());
    std::fs::remove_file(data.path().join(qi_host::store::LOCK_FILE)).unwrap();
    let second = on(
        data.path(),
        &["run-agent", HELLO_COMPONENT, "--task", "greet"],
    );
    assert!(
        !second.status.success(),
        "a second writer ran beside the owner: {}",
        stderr(&second)
    );
    assert!(
        stderr(&second).contains("owns the data directory"),
        "{}",
        stderr(&second)
    );
    drop(holder);
}

#[tokio::test]
async fn read_only_commands_work_beside_the_owner() {
    let data = crate::cli_state::seeded().await;
    // An audited change first, so the audit head file exists before the owner appends to the
    // log (the owner writes its head file just after each commit: a log without any head file
    // yet would read as one whose head file was deleted).
    let label = on(data.path(), &["context", "label", "plan", "team"]);
    assert!(label.status.success(), "{}", stderr(&label));
    let holder = Holder::sleeper(data.path());
    let list = on(data.path(), &["context", "list", "--json"]);
    assert!(list.status.success(), "{}", stderr(&list));
    assert!(stdout(&list).contains("\"plan\""), "{}", stdout(&list));
    let get = on(data.path(), &["context", "get", "plan", "--json"]);
    assert!(get.status.success(), "{}", stderr(&get));
    assert!(stdout(&get).contains("alice-way"), "{}", stdout(&get));
    let history = on(data.path(), &["context", "history", "plan", "--json"]);
    assert!(history.status.success(), "{}", stderr(&history));
    assert!(stdout(&history).contains("draft"), "{}", stdout(&history));
    let conflicts = on(data.path(), &["context", "conflicts", "plan", "--json"]);
    assert!(conflicts.status.success(), "{}", stderr(&conflicts));
    let events = on(data.path(), &["events", "tail", "--json"]);
    assert!(events.status.success(), "{}", stderr(&events));
    assert!(
        stdout(&events).contains("\"created\""),
        "{}",
        stdout(&events)
    );
    for audit in [
        &["audit", "head"][..],
        &["audit", "verify"],
        &["audit", "query"],
    ] {
        let o = on(data.path(), audit);
        assert!(o.status.success(), "{audit:?}: {}", stderr(&o));
    }
    // The owner still owns it: the reads took no lock.
    let second = on(
        data.path(),
        &["run-agent", HELLO_COMPONENT, "--task", "greet"],
    );
    refused_by(&second, &holder, "run-agent");
}

#[tokio::test]
async fn writing_commands_beside_the_owner_fail_naming_it() {
    let data = crate::cli_state::seeded().await;
    let holder = Holder::sleeper(data.path());
    for command in [
        &["context", "rollback", "plan", "1"][..],
        &["context", "resolve", "plan", "--agent", "alice"],
        &["context", "label", "plan", "secret"],
        &["audit", "accept-head"],
    ] {
        let o = on(data.path(), command);
        refused_by(&o, &holder, "run-agent");
    }
    // Nothing was written: the conflict is still open and the context has no labels.
    drop(holder);
    let get = on(data.path(), &["context", "get", "plan", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&get.stdout).unwrap();
    assert_eq!(v["status"], "conflict", "{v}");
    let resolve = on(
        data.path(),
        &["context", "resolve", "plan", "--agent", "alice"],
    );
    assert!(resolve.status.success(), "{}", stderr(&resolve));
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A run killed with `kill -9` leaves its lock behind in the file, but not in the kernel: a
/// resume takes the directory over, and a second resume of the same run beside it is refused.
#[test]
fn a_killed_owner_is_taken_over_and_two_resumes_cannot_run_at_once() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("hold.toml");
    std::fs::write(
        &manifest,
        r#"
[task]
id = "hold"
timeLimitMs = 600000
[strategy]
type = "parallel"
[agents.s]
component = "guest:sleeper"
spec = { resourceLimits = { maxExecutionTimeMs = 600000 } }
[[subtasks]]
id = "sleep"
agent = "s"
inputs = [{ name = "ms", value = 600000 }]
timeLimitMs = 600000
"#,
    )
    .unwrap();
    let guests = std::path::Path::new(SLEEPER_COMPONENT).parent().unwrap();
    let run = |resume: bool| {
        let mut args = vec![
            "run",
            manifest.to_str().unwrap(),
            "--guest-dir",
            guests.to_str().unwrap(),
            "--run-id",
            "r1",
            "--data-dir",
            data.path().to_str().unwrap(),
        ];
        if resume {
            args.push("--resume");
        }
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let first = Holder::start(&as_strs(&run(false)));
    let dead = first.pid();
    first.kill9();
    assert!(
        std::fs::read_to_string(data.path().join("lock"))
            .unwrap()
            .contains(&format!("\"pid\":{dead}")),
        "the killed owner's record is still in the file"
    );
    let resumed = Holder::start(&as_strs(&run(true)));
    let second = qi_host(&as_strs(&run(true)));
    refused_by(&second, &resumed, "--resume");
    assert!(
        !stderr(&second).contains(&format!("pid {dead},")),
        "the record names the live owner, not the killed one: {}",
        stderr(&second)
    );
}
