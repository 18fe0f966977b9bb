//! `net-probe`: opens a TCP connection (WASI sockets) and optionally speaks HTTP/1.0 over it,
//! so the host's tests can check the network allow-list from inside a guest.
//!
//! Input: `{"target": "host:port", "http": bool}`. Output: `{"connected": bool,
//! "error": "..." | null, "response": "..." | null}`. The agent itself never fails on network
//! errors; it reports them.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use qi_guest_sdk::{Agent, AgentError, AgentInfo, AgentType, Task, TaskOutput, log};
use serde::{Deserialize, Serialize};

/// The `net-probe` agent.
pub struct NetProbe;

#[derive(Deserialize)]
struct Input {
    target: String,
    #[serde(default)]
    http: bool,
}

#[derive(Serialize, Default)]
struct Output {
    connected: bool,
    error: Option<String>,
    response: Option<String>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_RESPONSE_BYTES: u64 = 64 * 1024;

impl Agent for NetProbe {
    fn describe() -> AgentInfo {
        AgentInfo {
            name: "net-probe".into(),
            version: "0.1.0".into(),
            agent_type: AgentType::Basic,
            capabilities: vec!["sandbox-probe".into(), "network".into()],
            description: "Connects to a TCP address and optionally sends an HTTP GET.".into(),
        }
    }

    fn run(task: Task) -> Result<TaskOutput, AgentError> {
        let Some(input) = task.input_json::<Option<Input>>()? else {
            return Err(AgentError::InvalidInput(
                r#"expected input {"target": "host:port", "http": bool}"#.into(),
            ));
        };
        log::info!(target = input.target, http = input.http; "probing the network");

        let mut output = Output::default();
        match connect(&input.target) {
            Err(error) => output.error = Some(error.to_string()),
            Ok(mut stream) => {
                output.connected = true;
                if input.http {
                    let mut response = Vec::new();
                    if let Err(error) = http_get(&mut stream, host_of(&input.target), &mut response)
                    {
                        output.error = Some(error.to_string());
                    }
                    if output.error.is_none() || !response.is_empty() {
                        output.response = Some(String::from_utf8_lossy(&response).into_owned());
                    }
                }
            }
        }
        TaskOutput::json(&output)
    }
}

/// Connects to the first address of `target` that accepts, with a timeout where the platform
/// supports one.
fn connect(target: &str) -> io::Result<TcpStream> {
    let mut last_error = io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{target} did not resolve to any address"),
    );
    for address in target.to_socket_addrs()? {
        let attempt = match TcpStream::connect_timeout(&address, CONNECT_TIMEOUT) {
            Err(error) if error.kind() == io::ErrorKind::Unsupported => TcpStream::connect(address),
            other => other,
        };
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(error) => last_error = error,
        }
    }
    Err(last_error)
}

/// Sends `GET /` and reads the response, at most [`MAX_RESPONSE_BYTES`], into `response`.
fn http_get(stream: &mut TcpStream, host: &str, response: &mut Vec<u8>) -> io::Result<()> {
    // Best effort: not every platform supports socket timeouts, and the host's deadline bounds
    // the read anyway.
    let _ = stream.set_read_timeout(Some(CONNECT_TIMEOUT));
    stream.write_all(format!("GET / HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())?;
    stream.flush()?;
    stream.take(MAX_RESPONSE_BYTES).read_to_end(response)?;
    Ok(())
}

/// The host part of `host:port` (brackets kept for IPv6 literals, as `Host:` wants them).
fn host_of(target: &str) -> &str {
    target.rsplit_once(':').map_or(target, |(host, _port)| host)
}

qi_guest_sdk::export_agent!(NetProbe);

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::{connect, host_of, http_get};

    #[test]
    fn host_of_strips_the_port() {
        assert_eq!(host_of("example.com:80"), "example.com");
        assert_eq!(host_of("[::1]:8080"), "[::1]");
        assert_eq!(host_of("localhost"), "localhost");
    }

    #[test]
    fn http_get_sends_the_request_and_reads_the_response() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buffer = [0_u8; 256];
            while !request.ends_with(b"\r\n\r\n") {
                let read = stream.read(&mut buffer).unwrap();
                assert_ne!(read, 0, "client closed before the end of the request");
                request.extend_from_slice(&buffer[..read]);
            }
            stream.write_all(b"HTTP/1.0 200 OK\r\n\r\nhi").unwrap();
            String::from_utf8(request).unwrap()
        });

        let mut stream = connect(&target).unwrap();
        let mut response = Vec::new();
        http_get(&mut stream, host_of(&target), &mut response).unwrap();
        assert_eq!(response, b"HTTP/1.0 200 OK\r\n\r\nhi");
        assert_eq!(
            server.join().unwrap(),
            "GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
        );
    }

    #[test]
    fn connect_reports_a_refused_connection() {
        // Bind then drop, so the port is (almost certainly) closed.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(connect(&format!("127.0.0.1:{port}")).is_err());
    }
}
