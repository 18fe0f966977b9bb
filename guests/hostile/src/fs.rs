//! `fs.*` attacks: links out of a mount, handle exhaustion, disk exhaustion, counted streams.
//!
//! Every mode reports what the host let it do as `{"done": N, "error": E | null, ...}`, where
//! `E` is `{"kind": "<io::ErrorKind>", "errno": <WASI errno>, "message"}` for the first refusal.
//! A refusal never panics the agent: when a mode was refused it logs its report (message
//! `fs report`, field `report`) and returns `failed` with the report as its message, so that
//! the host's report names the limit while the test can still read what the guest saw.
//! Link modes report each attempt instead and always succeed.
//!
//! | mode | input | what it does |
//! |---|---|---|
//! | `fs.hold-handles` | `path`, `count`, `sleep_ms` | opens `path` `count` times, keeping every file open (it goes on after refusals; `refused` counts them), then sleeps `sleep_ms` ms (a pollable) while holding them |
//! | `fs.fill-disk` | `path`, `bytes` | creates `path` and writes `bytes` bytes with one `write_all` |
//! | `fs.stream-write` | `path`, `bytes`, `chunk` | creates `path` and writes `bytes` bytes in `write` calls of `chunk` bytes |
//! | `fs.stream-read` | `path`, `chunk` | reads `path` to its end in `read` calls of `chunk` bytes |
//! | `fs.sparse` | `path`, `offset`, `how` | creates `path` and writes one byte at `offset`: after a seek (a stream write), or with `pwrite` when `how` is `"pwrite"` (`descriptor.write`) |
//! | `fs.set-size` | `path`, `size` | creates `path` and sets its length to `size` |
//! | `fs.create-files` | `dir`, `count` | creates `count` empty files `dir/f<i>` |
//! | `fs.symlink-out` | `links`: `[[target, link], ...]` | creates each symbolic link |
//! | `fs.hardlink-cross` | `links`: `[[existing, new], ...]` | creates each hard link |
//! | `fs.rename` | `links`: `[[from, to], ...]` | renames each (to move a link to a shallower place) |
//! | `fs.wasi` | `steps` | raw `wasi:filesystem` calls, one per step (see `fs_wasi`) |
//! | `fs.ops` | `ops`, `loop`, `repeat` | runs each step of `ops` once, then the steps of `loop` `repeat` times (`{i}` in a path is the round); never fails, reports `done`, `refused`, the first `error` and the first 64 `results` (`[step, ok]`) |
//!
//! Steps of `fs.ops`: `["create", path]` (create or truncate, following links), `["mkdir", path]`,
//! `["symlink", target, link]`, `["hardlink", existing, new]`, `["rename", from, to]`,
//! `["remove", path]`, `["append", path, bytes]`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};

use qi_guest_sdk::serde_json::{Value, json};
use qi_guest_sdk::{AgentError, TaskOutput, log};

/// Runs attack `fs.<attack>`.
pub fn run(attack: &str, input: &Value) -> Result<TaskOutput, AgentError> {
    let path = || str_arg(input, "path");
    let num = |name: &str| input[name].as_u64().unwrap_or(0);
    let report = match attack {
        "hold-handles" => hold_handles(&path()?, num("count"), num("sleep_ms")),
        "fill-disk" => write_file(&path()?, num("bytes"), None),
        "stream-write" => write_file(&path()?, num("bytes"), Some(num("chunk").max(1))),
        "stream-read" => stream_read(&path()?, num("chunk").max(1)),
        "sparse" => sparse(&path()?, num("offset"), input["how"] == "pwrite"),
        "set-size" => set_size(&path()?, num("size")),
        "create-files" => create_files(&str_arg(input, "dir")?, num("count")),
        "symlink-out" => return links(input, symlink),
        "hardlink-cross" => return links(input, |t, l| fs::hard_link(t, l)),
        "rename" => return links(input, |from, to| fs::rename(from, to)),
        "ops" => return TaskOutput::json(&ops(input)),
        "wasi" => return TaskOutput::json(&crate::fs_wasi::run(input)),
        _ => return Err(crate::unknown(&format!("fs.{attack}"))),
    };
    finish(report)
}

fn str_arg(input: &Value, name: &str) -> Result<String, AgentError> {
    input[name]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| AgentError::InvalidInput(format!("expected a string `{name}`")))
}

/// What an I/O error looks like from inside the guest.
fn error(e: &io::Error) -> Value {
    json!({"kind": format!("{:?}", e.kind()), "errno": e.raw_os_error(), "message": e.to_string()})
}

/// A report with `done` successful steps and the first refusal, if any.
fn report(done: u64, first: Option<io::Error>, extra: Value) -> Value {
    let mut r = json!({"done": done, "error": first.as_ref().map(error)});
    if let (Value::Object(r), Value::Object(extra)) = (&mut r, extra) {
        r.extend(extra);
    }
    r
}

/// Succeeds with the report, or (after a refusal) logs it and fails with it.
fn finish(report: Value) -> Result<TaskOutput, AgentError> {
    if report["error"].is_null() {
        return TaskOutput::json(&report);
    }
    let text = report.to_string();
    log::warn!(report = text; "fs report");
    Err(AgentError::Failed(text))
}

fn hold_handles(path: &str, count: u64, sleep_ms: u64) -> Value {
    let mut held = Vec::new();
    let mut refused = 0;
    let mut first = None;
    for _ in 0..count {
        match File::open(path) {
            Ok(f) => held.push(f),
            Err(e) => {
                refused += 1;
                first.get_or_insert(e);
            }
        }
    }
    // Waiting needs one more handle (a pollable), which `subscribe` cannot refuse with an
    // error.
    if sleep_ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(sleep_ms));
    }
    report(held.len() as u64, first, json!({"refused": refused}))
}

/// Writes `bytes` bytes of `x` to a new file at `path`, in one `write_all` or in `write` calls
/// of `chunk` bytes.
fn write_file(path: &str, bytes: u64, chunk: Option<u64>) -> Value {
    let mut file = match File::create(path) {
        Ok(f) => f,
        Err(e) => return report(0, Some(e), json!({})),
    };
    let Some(chunk) = chunk else {
        let data = vec![b'x'; bytes as usize];
        return match file.write_all(&data) {
            Ok(()) => report(bytes, None, json!({})),
            Err(e) => report(0, Some(e), json!({})),
        };
    };
    let buf = vec![b'x'; chunk as usize];
    let (mut written, mut calls) = (0u64, 0u64);
    while written < bytes {
        let n = chunk.min(bytes - written) as usize;
        calls += 1;
        match file.write(&buf[..n]) {
            Ok(w) => written += w as u64,
            Err(e) => return report(written, Some(e), json!({"calls": calls})),
        }
    }
    report(written, None, json!({"calls": calls}))
}

fn stream_read(path: &str, chunk: u64) -> Value {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return report(0, Some(e), json!({})),
    };
    let mut buf = vec![0; chunk as usize];
    let (mut read, mut calls) = (0u64, 0u64);
    loop {
        calls += 1;
        match file.read(&mut buf) {
            Ok(0) => return report(read, None, json!({"calls": calls})),
            Ok(n) => read += n as u64,
            Err(e) => return report(read, Some(e), json!({"calls": calls})),
        }
    }
}

fn sparse(path: &str, offset: u64, with_pwrite: bool) -> Value {
    let result = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .and_then(|mut f| {
            if with_pwrite {
                return pwrite(&f, b"!", offset);
            }
            f.seek(SeekFrom::Start(offset))?;
            f.write_all(b"!")?;
            f.flush()
        });
    match result {
        Ok(()) => report(1, None, json!({"size": offset + 1})),
        Err(e) => report(0, Some(e), json!({})),
    }
}

fn set_size(path: &str, size: u64) -> Value {
    match File::create(path).and_then(|f| f.set_len(size)) {
        Ok(()) => report(1, None, json!({"size": size})),
        Err(e) => report(0, Some(e), json!({})),
    }
}

fn create_files(dir: &str, count: u64) -> Value {
    for i in 0..count {
        if let Err(e) = File::create(format!("{dir}/f{i}")) {
            return report(i, Some(e), json!({}));
        }
    }
    report(count, None, json!({}))
}

/// `pwrite(2)` through wasi-libc (`descriptor.write` at `offset`).
#[allow(
    unsafe_code,
    reason = "std's `FileExt::write_at` is unstable on WASI; wasi-libc's `pwrite` is the same call"
)]
fn pwrite(file: &File, data: &[u8], offset: u64) -> io::Result<()> {
    use std::ffi::{c_int, c_void};
    use std::os::fd::AsRawFd;
    unsafe extern "C" {
        fn pwrite(fd: c_int, buf: *const c_void, len: usize, offset: i64) -> isize;
    }
    let offset = i64::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: `data` is valid for `data.len()` bytes and `file` is open for the whole call.
    match unsafe { pwrite(file.as_raw_fd(), data.as_ptr().cast(), data.len(), offset) } {
        n if n < 0 => Err(io::Error::last_os_error()),
        _ => Ok(()),
    }
}

/// `symlink(2)` through wasi-libc (which calls `symlink-at` on the link's preopen).
#[allow(
    unsafe_code,
    reason = "std's `symlink_path` is unstable on WASI; wasi-libc's `symlink` is the same call"
)]
fn symlink(target: &str, link: &str) -> io::Result<()> {
    use std::ffi::{CString, c_char, c_int};
    unsafe extern "C" {
        fn symlink(target: *const c_char, link: *const c_char) -> c_int;
    }
    let (target, link) = (CString::new(target)?, CString::new(link)?);
    // SAFETY: both are NUL-terminated strings that outlive the call.
    match unsafe { symlink(target.as_ptr(), link.as_ptr()) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Creates each `[target, link]` pair of `input.links` with `make`, reporting every attempt.
fn links(
    input: &Value,
    make: impl Fn(&str, &str) -> io::Result<()>,
) -> Result<TaskOutput, AgentError> {
    let pairs = input["links"].as_array().cloned().unwrap_or_default();
    let attempts: Vec<Value> = pairs
        .iter()
        .map(|pair| {
            let target = pair[0].as_str().unwrap_or_default();
            let link = pair[1].as_str().unwrap_or_default();
            let result = make(target, link);
            json!({
                "target": target,
                "link": link,
                "ok": result.is_ok(),
                "error": result.as_ref().err().map(error),
            })
        })
        .collect();
    TaskOutput::json(&json!({ "attempts": attempts }))
}

/// Runs one step of `fs.ops` with `{i}` replaced by `round`.
fn step(op: &Value, round: u64) -> io::Result<()> {
    let arg = |n: usize| {
        op[n]
            .as_str()
            .unwrap_or_default()
            .replace("{i}", &round.to_string())
    };
    match op[0].as_str().unwrap_or_default() {
        "create" => File::create(arg(1)).map(drop),
        "mkdir" => fs::create_dir(arg(1)),
        "symlink" => symlink(&arg(1), &arg(2)),
        "hardlink" => fs::hard_link(arg(1), arg(2)),
        "rename" => fs::rename(arg(1), arg(2)),
        "remove" => fs::remove_file(arg(1)),
        "append" => OpenOptions::new()
            .append(true)
            .open(arg(1))
            .and_then(|mut f| f.write_all(&vec![b'a'; op[2].as_u64().unwrap_or(0) as usize])),
        other => Err(io::Error::other(format!("unknown step `{other}`"))),
    }
}

/// `fs.ops`: `ops` once, then `loop` `repeat` times; every refusal is reported, none stops it.
fn ops(input: &Value) -> Value {
    let once = input["ops"].as_array().cloned().unwrap_or_default();
    let each = input["loop"].as_array().cloned().unwrap_or_default();
    let rounds = input["repeat"].as_u64().unwrap_or(0);
    let steps = once
        .iter()
        .map(|op| (op, 0))
        .chain((0..rounds).flat_map(|i| each.iter().map(move |op| (op, i))));
    let (mut done, mut refused, mut first) = (0u64, 0u64, None);
    let mut results = Vec::new();
    for (op, round) in steps {
        let result = step(op, round);
        if results.len() < 64 {
            results.push(json!([op, result.is_ok()]));
        }
        match result {
            Ok(()) => done += 1,
            Err(e) => {
                refused += 1;
                first.get_or_insert(e);
            }
        }
    }
    report(done, first, json!({"refused": refused, "results": results}))
}
