//! A scripted stand-in for a model provider, served on loopback for tests and benchmarks.
//!
//! ```
//! use qi_llm_test_server::{Reply, TestServer};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let server = TestServer::start("sk-test").await;
//! server.push(Reply::text("hello"));
//!
//! // The client under test is pointed at `server.base_url()`; here, a raw HTTP/1.1 request.
//! let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
//! let mut stream = tokio::net::TcpStream::connect(server.addr()).await?;
//! let request = format!(
//!     "POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\nauthorization: Bearer sk-test\r\n\
//!      content-length: {}\r\nconnection: close\r\n\r\n{body}",
//!     body.len()
//! );
//! stream.write_all(request.as_bytes()).await?;
//! let mut answer = String::new();
//! stream.read_to_string(&mut answer).await?;
//!
//! assert!(answer.starts_with("HTTP/1.1 200"));
//! assert!(answer.contains(r#""content":"hello""#));
//! assert_eq!(server.requests()[0].body["messages"][0]["content"], "hi");
//! server.stop().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Wire formats
//!
//! One server speaks both, on the same port:
//!
//! - **OpenAI Chat Completions**: `POST /v1/chat/completions`, key in
//!   `Authorization: Bearer <key>`. Answers are `chat.completion` objects (`finish_reason`
//!   `"stop"`, `"tool_calls"` or `"length"`); errors are `{"error": {"message", "type", "code"}}`.
//! - **Anthropic Messages**: `POST /v1/messages`, key in `x-api-key: <key>`; the
//!   `anthropic-version` header is accepted and recorded. Answers are `message` objects
//!   (`stop_reason` `"end_turn"`, `"tool_use"` or `"max_tokens"`); errors are
//!   `{"type": "error", "error": {"type", "message"}}`.
//!
//! Each request is handled in this order:
//!
//! 1. It is recorded ([`TestServer::requests`]), whatever follows, before any reply is chosen.
//! 2. Another method than `POST` gets 405; a path other than the two above gets 404.
//! 3. A wrong or missing key (each format looks only at its own header) gets 401.
//! 4. A body that is not JSON gets 400.
//! 5. The next scripted [`Reply`] answers; refused requests (steps 2 to 4) do not take one.
//!
//! # The default reply
//!
//! When the script is empty, the server echoes: the content is `"echo: <text of the last user
//! message>"`, finishing normally. Its usage is
//!
//! - `input_tokens = 1 + (total bytes of every text in the request) / 4`, counting every
//!   message's text, the text of Anthropic `tool_result` blocks, and the Anthropic `system`
//!   prompt (so one conversation counts the same in both formats);
//! - `output_tokens` = the number of whitespace-separated words of the content.
//!
//! When the request's token limit (OpenAI `max_completion_tokens`, else `max_tokens`; Anthropic
//! `max_tokens`) is smaller than that word count, the content is cut to its first `max_tokens`
//! words, `output_tokens = max_tokens`, and the answer finishes because of the limit.
//!
//! Requests for structured output get a JSON value instead of the echo: the smallest value
//! valid for simple schemas (the first value of each `enum`, strings `"x"`, arrays empty,
//! numbers 0, booleans `false`, every declared property). For OpenAI that is the content, as
//! JSON text, when `response_format` is `json_schema` (`{}` for `json_object`); for Anthropic it
//! is a `tool_use` of tool `N`, when `tool_choice` is `{"type": "tool", "name": N}` and tool `N`
//! has an `input_schema`.

mod prompt;
mod reply;
mod schema;
mod server;
mod wire;

#[cfg(test)]
mod tests;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use reply::Reply;
use server::Shared;

/// A stand-in model provider listening on `127.0.0.1` at a port of its own.
///
/// Dropping it stops the server at once (its task is aborted, which closes the listener and
/// every connection); [`TestServer::stop`] does the same and waits until it is done.
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// One request as the server received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// The request path without the query, such as `/v1/messages`.
    pub path: String,
    /// The `Authorization` header value, verbatim (such as `Bearer sk-...`), if sent.
    pub authorization: Option<String>,
    /// The `x-api-key` header value, if sent.
    pub api_key: Option<String>,
    /// The `anthropic-version` header value, if sent.
    pub anthropic_version: Option<String>,
    /// The body parsed as JSON; a body that is not JSON is kept as a JSON string of its text
    /// (bytes that are not UTF-8 replaced by U+FFFD).
    pub body: Value,
}

impl TestServer {
    /// Starts a server on `127.0.0.1`, at a port the system picks, that accepts `key` (in
    /// either format's header). The script starts empty.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound, or outside a Tokio runtime.
    pub async fn start(key: &str) -> TestServer {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind a port on 127.0.0.1 for the test LLM server");
        let addr = listener
            .local_addr()
            .expect("the local address of a bound listener");
        let shared = Arc::new(Shared::new(key));
        let (stop, stopped) = oneshot::channel();
        let router = server::router(Arc::clone(&shared));
        let task = tokio::spawn(server::serve(listener, router, stopped));
        TestServer {
            addr,
            shared,
            stop: Some(stop),
            task,
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash: clients append `/v1/chat/completions`
    /// or `/v1/messages`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues `reply` after the replies already queued. Replies are served first in, first out,
    /// to whichever format asks; when none is left, requests get the default reply.
    ///
    /// # Panics
    ///
    /// If `reply` is a [`Reply::Status`] whose code is not an HTTP status or whose
    /// `retry_after` is not a valid header value.
    #[track_caller]
    pub fn push(&self, reply: Reply) {
        reply.assert_sendable();
        self.shared.script().push_back(reply);
    }

    /// Every request received so far, refused ones included, in the order they arrived.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.borrow().clone()
    }

    /// How many requests have arrived so far.
    pub fn request_count(&self) -> usize {
        self.shared.requests.borrow().len()
    }

    /// Resolves once at least `n` requests have arrived (at once if they already have). A
    /// request counts as soon as it is recorded, before its reply: this also waits for requests
    /// that hang.
    pub async fn wait_for_requests(&self, n: usize) {
        let mut requests = self.shared.requests.subscribe();
        // The sender lives in `self.shared`, so the channel cannot close while this waits.
        let _ = requests.wait_for(|requests| requests.len() >= n).await;
    }

    /// Lets every [`Reply::Hang`] in flight (every request received so far that took or will
    /// take one) answer 503 in its format's error shape. Later hung replies hang again.
    pub fn release_hung(&self) {
        self.shared
            .releases
            .send_modify(|generation| *generation += 1);
    }

    /// Stops accepting, closes every connection (a hung request gets no answer), and returns
    /// once the listener and all connections are closed.
    ///
    /// # Panics
    ///
    /// If the server's task panicked.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            // The receiver is gone only if the task already ended, which the join below reports.
            let _ = stop.send(());
        }
        if let Err(error) = (&mut self.task).await
            && error.is_panic()
        {
            std::panic::resume_unwind(error.into_panic());
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
