//! The routes, the handling of one request, and the accept loop.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use crate::prompt::Prompt;
use crate::wire::{Answer, ErrorKind, Finish, Format, Ids};
use crate::{Recorded, Reply};

/// State shared by the [`TestServer`](crate::TestServer) handle and the request handlers.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The one key the server accepts, in either format.
    pub(crate) key: String,
    /// Replies not yet served, first in first out.
    pub(crate) script: Mutex<VecDeque<Reply>>,
    /// Every request received, in order; a watch so that `wait_for_requests` can await a count.
    pub(crate) requests: watch::Sender<Vec<Recorded>>,
    /// Bumped by `release_hung`; each hung reply waits for it to change.
    pub(crate) releases: watch::Sender<u64>,
    pub(crate) ids: Ids,
}

impl Shared {
    pub(crate) fn new(key: &str) -> Shared {
        Shared {
            key: key.to_owned(),
            script: Mutex::new(VecDeque::new()),
            requests: watch::Sender::new(Vec::new()),
            releases: watch::Sender::new(0),
            ids: Ids::default(),
        }
    }

    /// The script. A test that panicked while pushing cannot leave it half-changed (a
    /// `VecDeque` push or pop is one step), so a poisoned lock is still safe to use.
    pub(crate) fn script(&self) -> MutexGuard<'_, VecDeque<Reply>> {
        self.script.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", any(openai))
        .route("/v1/messages", any(anthropic))
        .fallback(unknown_path)
        // Providers accept prompts of tens of megabytes; the client under test decides the size.
        .layer(DefaultBodyLimit::disable())
        .with_state(shared)
}

/// Serves connections until `stop` fires (or its sender is dropped), then closes the listener
/// and every connection, hung ones included, and returns once they are all closed.
pub(crate) async fn serve(listener: TcpListener, router: Router, mut stop: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of descriptors, or a connection reset before it was accepted. A pause
                    // keeps a lasting error (EMFILE) from spinning this loop.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let service = TowerToHyperService::new(router.clone());
                connections.spawn(async move {
                    // An error here is a client that went away mid-request: nothing to report.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

async fn openai(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&shared, Format::OpenAi, &method, &uri, &headers, &body).await
}

async fn anthropic(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&shared, Format::Anthropic, &method, &uri, &headers, &body).await
}

/// Records the request and answers 404, in Anthropic's error shape when the request carries
/// `x-api-key` or `anthropic-version`, in OpenAI's otherwise.
async fn unknown_path(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (recorded, _) = read_request(&uri, &headers, &body);
    let format = if recorded.api_key.is_some() || recorded.anthropic_version.is_some() {
        Format::Anthropic
    } else {
        Format::OpenAi
    };
    shared
        .requests
        .send_modify(|requests| requests.push(recorded));
    format.error(
        ErrorKind::NotFound,
        &format!("no API at {method} {}", uri.path()),
    )
}

/// The record of a request, and its body parsed as JSON if it is JSON.
fn read_request(uri: &Uri, headers: &HeaderMap, body: &[u8]) -> (Recorded, Option<Value>) {
    let header = |name: &str| {
        let value = headers.get(name)?;
        Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
    };
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let recorded = Recorded {
        path: uri.path().to_owned(),
        authorization: header("authorization"),
        api_key: header("x-api-key"),
        anthropic_version: header("anthropic-version"),
        body: parsed
            .clone()
            .unwrap_or_else(|| Value::String(String::from_utf8_lossy(body).into_owned())),
    };
    (recorded, parsed)
}

async fn handle(
    shared: &Shared,
    format: Format,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    // Subscribed before the request is recorded, so that a `release_hung` called after
    // `wait_for_requests` saw this request also releases it if it turns out to hang.
    let mut releases = shared.releases.subscribe();
    let (recorded, parsed) = read_request(uri, headers, body);
    let authorized = format.is_authorized(&recorded, &shared.key);
    let echoed_credentials = format!(
        "Incorrect API key provided: authorization={}, x-api-key={}",
        recorded.authorization.as_deref().unwrap_or("<none>"),
        recorded.api_key.as_deref().unwrap_or("<none>"),
    );
    shared
        .requests
        .send_modify(|requests| requests.push(recorded));

    if method != Method::POST {
        let message = format!("{method} {} accepts only POST", uri.path());
        return format.error(ErrorKind::MethodNotAllowed, &message);
    }
    if !authorized {
        return format.error(ErrorKind::Authentication, "Incorrect API key provided.");
    }
    let Some(request) = parsed else {
        return format.error(ErrorKind::InvalidJson, "the request body is not JSON");
    };
    let prompt = Prompt::read(format, &request);
    let scripted = shared.script().pop_front();
    let answer = match scripted {
        None => prompt.default_answer(),
        Some(Reply::Text {
            content,
            input_tokens,
            output_tokens,
        }) => Answer {
            text: Some(content),
            tool_calls: Vec::new(),
            finish: Finish::Stop,
            input_tokens,
            output_tokens,
        },
        Some(Reply::TextDefaultUsage(content)) => prompt.text_answer(content, Finish::Stop),
        Some(Reply::ToolCalls {
            calls,
            input_tokens,
            output_tokens,
        }) => Answer {
            text: None,
            tool_calls: calls,
            finish: Finish::ToolCalls,
            input_tokens,
            output_tokens,
        },
        Some(Reply::Json(value)) => prompt.text_answer(value.to_string(), Finish::Stop),
        Some(Reply::Large(bytes)) => prompt.text_answer(filler(bytes), Finish::Stop),
        Some(Reply::Length { content }) => prompt.text_answer(content, Finish::Length),
        Some(Reply::Status {
            code,
            retry_after,
            body,
        }) => return status_response(code, retry_after, body),
        Some(Reply::Hang) => {
            // The sender lives as long as `shared`, which this handler borrows: `changed` only
            // returns once `release_hung` is called. A server that stops drops this future.
            let _ = releases.changed().await;
            return format.error(ErrorKind::Unavailable, "released by release_hung");
        }
        Some(Reply::Malformed(body)) => {
            return ([(header::CONTENT_TYPE, "application/json")], body).into_response();
        }
        Some(Reply::EchoCredentials) => {
            return format.error(ErrorKind::Authentication, &echoed_credentials);
        }
    };
    format.render(answer, &request["model"], &shared.ids)
}

/// A [`Reply::Status`]; `push` has checked that the code and header value are valid.
fn status_response(code: u16, retry_after: Option<String>, body: String) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if serde_json::from_str::<Value>(&body).is_ok() {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = (status, [(header::CONTENT_TYPE, content_type)], body).into_response();
    if let Some(value) = retry_after.and_then(|value| HeaderValue::from_str(&value).ok()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Exactly `bytes` bytes of ASCII words separated by spaces.
fn filler(bytes: usize) -> String {
    let mut text = "large ".repeat(bytes / 6 + 1);
    text.truncate(bytes);
    text
}
