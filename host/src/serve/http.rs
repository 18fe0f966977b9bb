//! The HTTP front of `qi-host serve` (axum): MCP over Streamable HTTP at `/mcp`, and a JSON
//! API at `/v1`.
//!
//! | route | auth | what |
//! |---|---|---|
//! | `GET /v1/info` | none | `{"hostId", "version"}`: the audience of Ed25519 challenges |
//! | `POST /v1/auth/ed25519` | none | a signed [`Credential`] → `{"token", "expiresInMs"}` |
//! | `GET /v1/tools` | bearer | every operation with its JSON Schema |
//! | `POST /v1/tools/<name>` | bearer | one operation; the body is its arguments (JSON object) |
//! | `GET /v1/runs/<id>/events` | bearer | the run's status as Server-Sent Events (`status`, then `end`) |
//! | `/mcp` | bearer | MCP (Streamable HTTP) |
//!
//! Every authenticated request counts against its client's rate (`limits.requests_per_second`,
//! `limits.burst`: 429 with `Retry-After` past it); bodies are bounded by
//! `limits.max_body_bytes` (413). Errors are `{"error": {"kind", "message"}}` with the status
//! of [`OpError::status`]; 401 for a missing or wrong token.

use super::mcp::McpHandler;
use super::{Caller, OpError, Server};
use crate::security::identity::Credential;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rmcp::transport::streamable_http_server::{
    StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

fn error_response(e: &OpError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (status, Json(e.to_json())).into_response();
    if let Some(wait) = e.retry_after {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    r
}

fn unauthorized(message: String) -> Response {
    let body = serde_json::json!({"error": {"kind": "unauthenticated", "message": message}});
    let mut r = (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"qi-host\""),
    );
    r
}

/// Authenticates the bearer token, checks the client's rate, and hands the [`Caller`] on in
/// the request's extensions.
async fn authenticate(State(server): State<Arc<Server>>, mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let caller = match token {
        None => Err(super::caller::AuthError::Missing),
        Some(t) => server.auth.bearer(t),
    };
    let caller = match caller {
        Ok(c) => c,
        Err(e) => {
            // Refusals share one bucket: a flood of bad tokens is slowed down (and its audit
            // entries with it) without touching any client's rate or anyone's sign-in.
            if let Err(wait) = anonymous_rate(&server, REFUSED) {
                return error_response(&wait);
            }
            let _ = server.record(
                &Caller {
                    id: ANONYMOUS.into(),
                    name: ANONYMOUS.into(),
                    ..Caller::operator()
                },
                "serve/auth",
                "authenticate",
                crate::audit::AuditDecision::Deny,
                e.to_string(),
            );
            return unauthorized(e.to_string());
        }
    };
    if let Err(e) = server.rate(&caller) {
        return error_response(&e);
    }
    // An MCP session is used only by the caller that opened it.
    let mcp = req.uri().path().starts_with("/mcp");
    let session = req
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if mcp
        && let Some(id) = &session
        && !server.mcp_sessions.may_use(&caller.id, id)
    {
        return error_response(&OpError::not_found(format!(
            "no MCP session `{id}` of `{}`; initialize a new one",
            caller.id
        )));
    }
    let deleting = req.method() == axum::http::Method::DELETE;
    let id = caller.id.clone();
    req.extensions_mut().insert(caller);
    let response = next.run(req).await;
    if mcp {
        match (&session, response.headers().get(SESSION_HEADER)) {
            (None, Some(opened)) => {
                if let Ok(opened) = opened.to_str() {
                    server.mcp_sessions.opened(&id, opened);
                }
            }
            (Some(s), _) if deleting => server.mcp_sessions.closed(s),
            _ => {}
        }
    }
    response
}

/// The Streamable HTTP session header (MCP 2025-03-26 and later).
const SESSION_HEADER: &str = "mcp-session-id";

/// The request rate of unauthenticated requests, in two buckets under the per-client limits:
/// [`REFUSED`] (requests whose token was refused) and [`SIGN_IN`] (`/v1/info`,
/// `/v1/auth/ed25519`).
fn anonymous_rate(server: &Server, bucket: &str) -> Result<(), OpError> {
    server.rate(&Caller {
        id: bucket.into(),
        name: ANONYMOUS.into(),
        ..Caller::operator()
    })
}

/// The rate bucket of requests whose token was refused.
const REFUSED: &str = "anonymous:refused";
/// The rate bucket of sign-in requests.
const SIGN_IN: &str = "anonymous:sign-in";

/// The caller id of unauthenticated requests (audit entries, the shared rate bucket).
pub const ANONYMOUS: &str = "anonymous";

async fn info(State(server): State<Arc<Server>>) -> Response {
    if let Err(e) = anonymous_rate(&server, SIGN_IN) {
        return error_response(&e);
    }
    Json(serde_json::json!({
        "hostId": server.auth.host_id(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}

fn body_json(body: Result<Bytes, BytesRejection>) -> Result<serde_json::Value, OpError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            OpError::too_large(format!(
                "the request body is too large: {e} (limits.max_body_bytes)"
            ))
        } else {
            OpError::invalid(format!("the request body: {e}"))
        }
    })?;
    if bytes.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| OpError::invalid(format!("the request body is not valid JSON: {e}")))
}

async fn ed25519(
    State(server): State<Arc<Server>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(e) = anonymous_rate(&server, SIGN_IN) {
        return error_response(&e);
    }
    let value = match body_json(body) {
        Ok(v) => v,
        Err(e) => return error_response(&e),
    };
    let cred: Credential = match serde_json::from_value(value) {
        Ok(c) => c,
        Err(e) => {
            return error_response(&OpError::invalid(format!(
                "the credential: {e}; send {{\"agentId\", \"timestampMs\", \"nonce\", \"signature\"}}"
            )));
        }
    };
    match server.auth.open_session(&cred, crate::model::unix_ms()) {
        Ok((token, ttl)) => Json(serde_json::json!({
            "token": token,
            "expiresInMs": ttl.as_millis() as u64,
        }))
        .into_response(),
        Err(e) => unauthorized(e.to_string()),
    }
}

async fn list_tools(
    State(server): State<Arc<Server>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Response {
    if let Err(e) = server.admit(&caller, "tools/list", &serde_json::Value::Null) {
        return error_response(&e);
    }
    Json(serde_json::json!({"tools": super::tools::tools()})).into_response()
}

async fn call_tool(
    State(server): State<Arc<Server>>,
    Path(name): Path<String>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let args = match body_json(body) {
        Ok(v) => v,
        Err(e) => return error_response(&e),
    };
    match server.call(&caller, &name, args).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => error_response(&e),
    }
}

async fn run_events(
    State(server): State<Arc<Server>>,
    Path(run_id): Path<String>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Response {
    if let Err(e) = server.admit(
        &caller,
        "run_events",
        &serde_json::json!({"run_id": run_id}),
    ) {
        return error_response(&e);
    }
    let (mut status, mut outcome) = match server.run_watch(&caller, &run_id) {
        Ok(w) => w,
        Err(e) => return error_response(&e),
    };
    let stream = async_stream(move |tx| async move {
        let send = |name: &str, v: serde_json::Value| {
            tx.send(Ok::<_, std::convert::Infallible>(
                Event::default().event(name).data(v.to_string()),
            ))
        };
        let first = serde_json::to_value(&*status.borrow_and_update()).unwrap_or_default();
        if send("status", first).await.is_err() {
            return;
        }
        // Status changes until the run's end is known (its status channel closes a moment
        // before: the end is recorded first).
        let mut open = true;
        loop {
            tokio::select! {
                changed = status.changed(), if open => {
                    if changed.is_err() {
                        open = false;
                        continue;
                    }
                    let v = serde_json::to_value(&*status.borrow_and_update()).unwrap_or_default();
                    if send("status", v).await.is_err() { return; }
                }
                _ = async { outcome.wait_for(Option::is_some).await.map(|_| ()) } => break,
            }
        }
        let end = match outcome.borrow().clone() {
            Some(super::runs::Outcome::Finished(r)) => {
                serde_json::json!({"state": if r.get("success").and_then(serde_json::Value::as_bool) == Some(true) {"completed"} else {"failed"}, "report": &*r})
            }
            Some(super::runs::Outcome::Error(e)) => {
                serde_json::json!({"state": "failed", "error": e})
            }
            Some(super::runs::Outcome::Terminated(w)) => {
                serde_json::json!({"state": "terminated", "reason": w})
            }
            Some(super::runs::Outcome::Interrupted) | None => {
                serde_json::json!({"state": "interrupted"})
            }
        };
        let _ = send("end", end).await;
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// A stream fed by a task through a bounded channel (ends when the task does).
fn async_stream<F, Fut>(
    f: F,
) -> tokio_stream::wrappers::ReceiverStream<Result<Event, std::convert::Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Event, std::convert::Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The whole HTTP app: `/v1` and `/mcp`. `shutdown` ends MCP sessions. `loopback_only`:
/// MCP requests must name a loopback `Host` (rmcp's guard against DNS rebinding, for a
/// server listening on loopback); otherwise any `Host` is accepted.
pub fn router(server: Arc<Server>, shutdown: CancellationToken, loopback_only: bool) -> Router {
    let limit = server.config().limits.max_body_bytes;
    let mut mcp_config = StreamableHttpServerConfig::default()
        .with_cancellation_token(shutdown)
        .with_max_request_body_bytes(limit);
    if !loopback_only {
        mcp_config = mcp_config.disable_allowed_hosts();
    }
    let mcp_server = server.clone();
    let mcp: StreamableHttpService<McpHandler, LocalSessionManager> = StreamableHttpService::new(
        move || Ok(McpHandler::http(mcp_server.clone())),
        Default::default(),
        mcp_config,
    );
    let authed = Router::new()
        .route("/v1/tools", get(list_tools))
        .route("/v1/tools/{name}", post(call_tool))
        .route("/v1/runs/{id}/events", get(run_events))
        .nest_service("/mcp", mcp)
        .layer(axum::middleware::from_fn_with_state(
            server.clone(),
            authenticate,
        ));
    Router::new()
        .route("/v1/info", get(info))
        .route("/v1/auth/ed25519", post(ed25519))
        .merge(authed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(server)
}

/// `listener` with `TCP_NODELAY` on every connection it accepts: an MCP answer is an SSE
/// stream written in several pieces, and with Nagle's algorithm a piece waits for the
/// client's delayed ACK (about 40 ms on Linux) before it is sent. Serve the [`router`] on it.
pub fn no_delay(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set on a connection");
        }
    })
}
