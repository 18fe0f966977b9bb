//! `net.*` attacks: name resolution, connects, datagrams, listening and holding sockets, all
//! through the standard library (WASI sockets underneath). Every mode reports what happened
//! and never fails on a refusal; `error` is the refusal as the guest saw it (`null` when none)
//! and `errno` its raw OS error number where there is one.
//!
//! | mode | input | output |
//! |---|---|---|
//! | `net.resolve` | `name` | `addresses` (text), `error`, `errno` |
//! | `net.connect` | `target` (`host:port`) | `connected`, `error`, `errno` |
//! | `net.udp-send` | `target` (`host:port`), `payload` (text, default `hostile`), `count` (default 1) | sends `count` datagrams from one socket: `sent` (bytes of the last, or `null` at the first refusal), `datagrams` (sent before it), `error`, `errno` |
//! | `net.listen` | `port` (default 0) | `listening`, `error`, `errno` |
//! | `net.lookup-burst` | `name`, `count`, `rounds` (default 1) | `rounds` times: starts `count` lookups of `name` with `resolve-addresses`, sleeps 1 ms holding them (so the host can start them), then drops them all without waiting for an answer: `started`, `refused` |
//! | `net.bind` | `proto` (`tcp` or `udp`), `port` | `bound` (a socket bound to the unspecified address and `port`, held until the mode ends), `error`, `errno` |
//! | `net.sockets` | `count`; `target` (`host:port`) to hold TCP connections to it instead of UDP sockets | `opened` (sockets held at once before the first refusal), `error`, `errno` |

use qi_guest_sdk::serde_json::{Value, json};
use qi_guest_sdk::{AgentError, TaskOutput};
use std::io;
use std::net::{TcpListener, TcpStream, ToSocketAddrs, UdpSocket};

/// Runs attack `net.<attack>`.
pub fn run(attack: &str, input: &Value) -> Result<TaskOutput, AgentError> {
    let text = |field: &str| {
        input[field].as_str().map(str::to_string).ok_or_else(|| {
            AgentError::InvalidInput(format!("net.{attack} needs a string `{field}`"))
        })
    };
    let out = match attack {
        "resolve" => resolve(&text("name")?),
        "connect" => connect(&text("target")?),
        "udp-send" => udp_send(
            &text("target")?,
            input["payload"].as_str().unwrap_or("hostile"),
            input["count"].as_u64().unwrap_or(1),
        ),
        "listen" => listen(input["port"].as_u64().unwrap_or(0) as u16),
        "lookup-burst" => lookup_burst(
            &text("name")?,
            input["count"].as_u64().unwrap_or(1),
            input["rounds"].as_u64().unwrap_or(1),
        ),
        "bind" => bind(
            input["proto"].as_str().unwrap_or("udp"),
            input["port"].as_u64().unwrap_or(0) as u16,
        ),
        "sockets" => sockets(
            input["count"].as_u64().unwrap_or(1),
            input["target"].as_str(),
        ),
        _ => return Err(crate::unknown(&format!("net.{attack}"))),
    };
    TaskOutput::json(&out)
}

/// `error` and `errno` of an outcome.
fn refusal<T>(result: &io::Result<T>) -> (Value, Value) {
    match result {
        Ok(_) => (Value::Null, Value::Null),
        Err(e) => (json!(e.to_string()), json!(e.raw_os_error())),
    }
}

fn resolve(name: &str) -> Value {
    let result = (name, 0).to_socket_addrs();
    let (error, errno) = refusal(&result);
    let addresses: Vec<String> = result
        .map(|addrs| addrs.map(|a| a.ip().to_string()).collect())
        .unwrap_or_default();
    json!({"addresses": addresses, "error": error, "errno": errno})
}

fn connect(target: &str) -> Value {
    let result = TcpStream::connect(target);
    let (error, errno) = refusal(&result);
    json!({"connected": result.is_ok(), "error": error, "errno": errno})
}

fn udp_send(target: &str, payload: &str, count: u64) -> Value {
    let mut datagrams = 0u64;
    let result = UdpSocket::bind("0.0.0.0:0").and_then(|socket| {
        let mut sent = 0;
        for _ in 0..count {
            sent = socket.send_to(payload.as_bytes(), target)?;
            datagrams += 1;
        }
        Ok(sent)
    });
    let (error, errno) = refusal(&result);
    json!({"sent": result.ok(), "datagrams": datagrams, "error": error, "errno": errno})
}

fn listen(port: u16) -> Value {
    let result = TcpListener::bind(("0.0.0.0", port));
    let (error, errno) = refusal(&result);
    json!({"listening": result.is_ok(), "error": error, "errno": errno})
}

/// Binds a socket to the unspecified address and `port` (without listening).
fn bind(proto: &str, port: u16) -> Value {
    let result = match proto {
        // std has no bind-without-listen for TCP; wasi-libc's `bind` is the same call.
        "tcp" => tcp_bind(port),
        _ => UdpSocket::bind(("0.0.0.0", port)).map(drop),
    };
    let (error, errno) = refusal(&result);
    json!({"bound": result.is_ok(), "error": error, "errno": errno})
}

/// `socket(2)` and `bind(2)` through wasi-libc (`tcp-socket.start-bind`).
#[allow(
    unsafe_code,
    reason = "std cannot bind a TCP socket without listening; wasi-libc's `bind` is the same call"
)]
fn tcp_bind(port: u16) -> io::Result<()> {
    use std::ffi::c_int;
    #[repr(C)]
    struct SockaddrIn {
        family: u16,
        port: u16,
        addr: u32,
        zero: [u8; 8],
    }
    unsafe extern "C" {
        fn socket(domain: c_int, kind: c_int, protocol: c_int) -> c_int;
        fn bind(fd: c_int, addr: *const SockaddrIn, len: u32) -> c_int;
        fn close(fd: c_int) -> c_int;
    }
    // wasi-libc: AF_INET = 1, SOCK_STREAM = 6.
    // SAFETY: plain calls with a valid address of the right length.
    unsafe {
        let fd = socket(1, 6, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let addr = SockaddrIn {
            family: 1,
            port: port.to_be(),
            addr: 0,
            zero: [0; 8],
        };
        let bound = bind(fd, &addr, size_of::<SockaddrIn>() as u32);
        let result = if bound == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        };
        close(fd);
        result
    }
}

/// Holds `count` sockets at once: UDP sockets bound to the unspecified address, or TCP
/// connections to `tcp_target`.
fn sockets(count: u64, tcp_target: Option<&str>) -> Value {
    let (mut udp, mut tcp) = (Vec::new(), Vec::new());
    let mut last = Ok(());
    for _ in 0..count {
        let opened = match tcp_target {
            Some(target) => TcpStream::connect(target).map(|s| tcp.push(s)),
            None => UdpSocket::bind("0.0.0.0:0").map(|s| udp.push(s)),
        };
        if opened.is_err() {
            last = opened;
            break;
        }
    }
    let opened = udp.len() + tcp.len();
    drop((udp, tcp));
    let (error, errno) = refusal(&last);
    json!({"opened": opened, "error": error, "errno": errno})
}

/// Starts `count` lookups of `name` and drops each unanswered (`wasi:sockets/ip-name-lookup`
/// called directly: the standard library always waits for the answer).
#[allow(
    unsafe_code,
    reason = "no crate binds wasi:sockets here; these are the imports wasi-libc uses itself"
)]
fn lookup_burst(name: &str, count: u64, rounds: u64) -> Value {
    #[link(wasm_import_module = "wasi:sockets/instance-network@0.2.0")]
    unsafe extern "C" {
        #[link_name = "instance-network"]
        fn instance_network() -> i32;
    }
    #[link(wasm_import_module = "wasi:sockets/network@0.2.0")]
    unsafe extern "C" {
        #[link_name = "[resource-drop]network"]
        fn drop_network(handle: i32);
    }
    #[link(wasm_import_module = "wasi:sockets/ip-name-lookup@0.2.0")]
    unsafe extern "C" {
        #[link_name = "resolve-addresses"]
        fn resolve_addresses(network: i32, name: *const u8, len: usize, ret: *mut u32);
        #[link_name = "[resource-drop]resolve-address-stream"]
        fn drop_stream(handle: i32);
    }
    let (mut started, mut refused) = (0u64, 0u64);
    // SAFETY: canonical ABI calls: a borrowed network handle, a string, and a return area of
    // `result<own<resolve-address-stream>, error-code>` (tag at 0, payload at 4).
    unsafe {
        let network = instance_network();
        for _ in 0..rounds {
            let mut held = Vec::new();
            for _ in 0..count {
                let mut ret = [0u32; 2];
                resolve_addresses(network, name.as_ptr(), name.len(), ret.as_mut_ptr());
                if ret[0] & 0xff == 0 {
                    started += 1;
                    held.push(ret[1] as i32);
                } else {
                    refused += 1;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
            for stream in held {
                drop_stream(stream);
            }
        }
        drop_network(network);
    }
    json!({"started": started, "refused": refused})
}
