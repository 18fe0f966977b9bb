//! `fs.wasi`: raw `wasi:filesystem` calls, one per step, so that the host's file gate can be
//! tested operation by operation (every descriptor method, through any descriptor, with any
//! path spelling), without wasi-libc choosing the calls.
//!
//! Input: `{"mode": "fs.wasi", "steps": [[op, args...], ...]}`. Descriptors are named: `root`
//! is the first preopened directory (the first of `get-directories`); `open` names the new
//! one. Every step runs whatever the earlier ones gave; the output is `{"results": [{"ok":
//! true, "value": V} | {"ok": false, "error": "<wasi error-code name>"}]}`, one per step.
//!
//! | step | what it calls | value |
//! |---|---|---|
//! | `["open", fd, path, flags, name]` | `open-at` (`flags` letters: `r` read, `w` write, `c` create, `t` truncate, `d` directory, `n` no `symlink-follow`) | `null` |
//! | `["read", fd]` | `read` (4 KiB at offset 0) | the text |
//! | `["write", fd, text]` | `write` at offset 0 | bytes written |
//! | `["stream-read", fd]` | `read-via-stream` then one `blocking-read` of 4 KiB | the text |
//! | `["stream-write", fd, text]` | `write-via-stream` at 0 then `blocking-write-and-flush` | `null` |
//! | `["append", fd, text]` | `append-via-stream` then `blocking-write-and-flush` | `null` |
//! | `["list", fd]` | `read-directory` and every entry | the names, sorted |
//! | `["stat", fd]`, `["hash", fd]` | `stat`, `metadata-hash` | the size / `null` |
//! | `["stat-at", fd, path]`, `["hash-at", fd, path]` | `stat-at`, `metadata-hash-at` (following links) | the size / `null` |
//! | `["mkdir", fd, path]`, `["rmdir", fd, path]`, `["unlink", fd, path]` | `create-directory-at`, `remove-directory-at`, `unlink-file-at` | `null` |
//! | `["rename", fd, old, new]`, `["link", fd, old, new]` | `rename-at`, `link-at` (both within `fd`) | `null` |
//! | `["symlink", fd, target, link]`, `["readlink", fd, path]` | `symlink-at`, `readlink-at` | `null` / the target |
//! | `["set-times", fd]`, `["set-times-at", fd, path]`, `["set-size", fd, n]` | `set-times` / `set-times-at` (both to now), `set-size` | `null` |
//! | `["reader", fd, name]` | `read-via-stream` at 0, kept as stream `name` | `null` |
//! | `["pull", name]` | one `blocking-read` of 4 KiB from stream `name` | the text |
//! | `["lister", fd, name]` | `read-directory`, kept as listing `name` | `null` |
//! | `["next", name]` | one `read-directory-entry` from listing `name` | the entry's name or `null` |
//! | `["call", tool, input]` | `qi:agent/tools.call` (to wait on a test's gate tool) | the output |
//! | `["drop", fd]` | drops the descriptor | `null` |

use std::collections::HashMap;

use qi_guest_sdk::serde_json::{Value, json};
use wasip2::filesystem::preopens::get_directories;
use wasip2::filesystem::types::{
    Descriptor, DescriptorFlags, DirectoryEntryStream, ErrorCode, NewTimestamp, OpenFlags,
    PathFlags, filesystem_error_code,
};
use wasip2::io::streams::{InputStream, StreamError};

/// What the steps have opened so far, by name.
#[derive(Default)]
struct Held {
    fds: HashMap<String, Descriptor>,
    streams: HashMap<String, InputStream>,
    listings: HashMap<String, DirectoryEntryStream>,
}

/// Runs `input.steps`; never fails.
pub fn run(input: &Value) -> Value {
    let mut held = Held::default();
    if let Some((root, _)) = get_directories().into_iter().next() {
        held.fds.insert("root".into(), root);
    }
    let steps = input["steps"].as_array().cloned().unwrap_or_default();
    let results: Vec<Value> = steps
        .iter()
        .map(|step| match run_step(&mut held, step) {
            Ok(value) => json!({"ok": true, "value": value}),
            Err(error) => json!({"ok": false, "error": error}),
        })
        .collect();
    json!({ "results": results })
}

fn code(e: ErrorCode) -> String {
    e.name().to_string()
}

fn stream_code(e: StreamError) -> String {
    match e {
        StreamError::Closed => "closed".into(),
        StreamError::LastOperationFailed(err) => filesystem_error_code(&err)
            .map(code)
            .unwrap_or_else(|| err.to_debug_string()),
    }
}

fn text(bytes: Vec<u8>) -> Value {
    Value::String(String::from_utf8_lossy(&bytes).into_owned())
}

fn run_step(held: &mut Held, step: &Value) -> Result<Value, String> {
    let arg = |n: usize| step[n].as_str().unwrap_or_default().to_string();
    let op = arg(0);
    if op == "pull" {
        let stream = held
            .streams
            .get(&arg(1))
            .ok_or_else(|| format!("no stream `{}`", arg(1)))?;
        return stream.blocking_read(4096).map(text).map_err(stream_code);
    }
    if op == "next" {
        let listing = held
            .listings
            .get(&arg(1))
            .ok_or_else(|| format!("no listing `{}`", arg(1)))?;
        return listing
            .read_directory_entry()
            .map(|e| e.map_or(Value::Null, |e| Value::String(e.name)))
            .map_err(code);
    }
    let fds = &mut held.fds;
    if op == "call" {
        return qi_guest_sdk::tools::call::<Value, Value>(&arg(1), &step[2])
            .map_err(|e| e.to_string());
    }
    if op == "drop" {
        fds.remove(&arg(1));
        return Ok(Value::Null);
    }
    let fd = fds
        .get(&arg(1))
        .ok_or_else(|| format!("no descriptor `{}`", arg(1)))?;
    let follow = PathFlags::SYMLINK_FOLLOW;
    let now = NewTimestamp::Now;
    let done = |r: Result<(), ErrorCode>| r.map(|()| Value::Null).map_err(code);
    match op.as_str() {
        "open" => {
            let letters = arg(3);
            let has = |c: char| letters.contains(c);
            let mut oflags = OpenFlags::empty();
            let mut flags = DescriptorFlags::empty();
            if has('r') {
                flags |= DescriptorFlags::READ;
            }
            if has('w') {
                flags |= DescriptorFlags::WRITE;
            }
            if has('c') {
                oflags |= OpenFlags::CREATE;
            }
            if has('t') {
                oflags |= OpenFlags::TRUNCATE;
            }
            if has('d') {
                oflags |= OpenFlags::DIRECTORY;
            }
            let path_flags = if has('n') { PathFlags::empty() } else { follow };
            let new = fd
                .open_at(path_flags, &arg(2), oflags, flags)
                .map_err(code)?;
            fds.insert(arg(4), new);
            Ok(Value::Null)
        }
        "read" => fd.read(4096, 0).map(|(b, _)| text(b)).map_err(code),
        "lister" => {
            let listing = fd.read_directory().map_err(code)?;
            held.listings.insert(arg(2), listing);
            Ok(Value::Null)
        }
        "reader" => {
            let stream = fd.read_via_stream(0).map_err(code)?;
            held.streams.insert(arg(2), stream);
            Ok(Value::Null)
        }
        "write" => fd
            .write(arg(2).as_bytes(), 0)
            .map(|n| json!(n))
            .map_err(code),
        "stream-read" => {
            let stream = fd.read_via_stream(0).map_err(code)?;
            stream.blocking_read(4096).map(text).map_err(stream_code)
        }
        "stream-write" | "append" => {
            let stream = if op == "append" {
                fd.append_via_stream()
            } else {
                fd.write_via_stream(0)
            }
            .map_err(code)?;
            stream
                .blocking_write_and_flush(arg(2).as_bytes())
                .map(|()| Value::Null)
                .map_err(stream_code)
        }
        "list" => {
            let entries = fd.read_directory().map_err(code)?;
            let mut names = Vec::new();
            while let Some(entry) = entries.read_directory_entry().map_err(code)? {
                names.push(entry.name);
            }
            names.sort();
            Ok(json!(names))
        }
        "stat" => fd.stat().map(|s| json!(s.size)).map_err(code),
        "stat-at" => fd
            .stat_at(follow, &arg(2))
            .map(|s| json!(s.size))
            .map_err(code),
        "hash" => fd.metadata_hash().map(|_| Value::Null).map_err(code),
        "hash-at" => fd
            .metadata_hash_at(follow, &arg(2))
            .map(|_| Value::Null)
            .map_err(code),
        "mkdir" => done(fd.create_directory_at(&arg(2))),
        "rmdir" => done(fd.remove_directory_at(&arg(2))),
        "unlink" => done(fd.unlink_file_at(&arg(2))),
        "rename" => done(fd.rename_at(&arg(2), fd, &arg(3))),
        "link" => done(fd.link_at(PathFlags::empty(), &arg(2), fd, &arg(3))),
        "symlink" => done(fd.symlink_at(&arg(2), &arg(3))),
        "readlink" => fd.readlink_at(&arg(2)).map(Value::String).map_err(code),
        "set-times" => done(fd.set_times(now, now)),
        "set-times-at" => done(fd.set_times_at(follow, &arg(2), now, now)),
        "set-size" => done(fd.set_size(step[2].as_u64().unwrap_or(0))),
        other => Err(format!("unknown step `{other}`")),
    }
}
