//! The MCP server (the official Rust SDK, `rmcp`): the operations of [`super::tools`] as MCP
//! tools, contexts as resources `qi://context/<id>`, and `resources/subscribe` update
//! notifications from the event bus.
//!
//! One [`McpHandler`] serves one MCP session. Over stdio the caller is the operator; over
//! Streamable HTTP, each request's caller is the one the HTTP layer authenticated
//! ([`super::http`]), found in the request's extensions.
//!
//! Protocol versions: up to 2025-11-25 (the versions with `initialize` and
//! `resources/subscribe`); a client asking for a newer one is answered with 2025-11-25, as
//! the MCP version negotiation prescribes.

use super::tools::OnDisconnect;
use super::{Caller, OpError, Server};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
    ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource,
    ResourceContents, ResourceUpdatedNotificationParam, ServerCapabilities, ServerConfig,
    SubscribeRequestParams, Tool, UnsubscribeRequestParams,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The URI scheme prefix of context resources.
pub const CONTEXT_URI: &str = "qi://context/";
/// Most resource subscriptions one MCP session may hold.
pub const MAX_SUBSCRIPTIONS: usize = 256;

/// One MCP session.
#[derive(Clone)]
pub struct McpHandler {
    server: Arc<Server>,
    /// The caller of every request (stdio), or `None`: taken from each HTTP request.
    fixed: Option<Caller>,
    subscriptions: Arc<Mutex<HashMap<String, tokio::task::AbortHandle>>>,
}

impl Drop for McpHandler {
    fn drop(&mut self) {
        // The last clone of a session ends its watchers.
        if Arc::strong_count(&self.subscriptions) == 1 {
            for (_, w) in self
                .subscriptions
                .lock()
                .expect("subscriptions lock")
                .drain()
            {
                w.abort();
            }
        }
    }
}

impl McpHandler {
    /// A session whose every request comes from `caller` (stdio).
    pub fn stdio(server: Arc<Server>) -> McpHandler {
        McpHandler {
            server,
            fixed: Some(Caller::operator()),
            subscriptions: Arc::default(),
        }
    }

    /// A session whose callers are authenticated per HTTP request.
    pub fn http(server: Arc<Server>) -> McpHandler {
        McpHandler {
            server,
            fixed: None,
            subscriptions: Arc::default(),
        }
    }

    fn caller(&self, context: &RequestContext<RoleServer>) -> Result<Caller, McpError> {
        if let Some(c) = &self.fixed {
            return Ok(c.clone());
        }
        context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|p| p.extensions.get::<Caller>())
            .cloned()
            .ok_or_else(|| McpError::invalid_request("the request is not authenticated", None))
    }
}

fn tool_error(e: &OpError) -> CallToolResponse {
    CallToolResult::error(vec![ContentBlock::text(format!(
        "{}: {}",
        serde_json::to_value(e.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        e.message
    ))])
    .into()
}

fn context_id(uri: &str) -> Result<&str, McpError> {
    uri.strip_prefix(CONTEXT_URI)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            McpError::invalid_params(
                format!("uri: `{uri}` is not a context resource (`{CONTEXT_URI}<id>`)"),
                None,
            )
        })
}

impl ServerHandler for McpHandler {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_resources_subscribe()
                .build(),
        )
        .with_server_info(Implementation::new("qi-host", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "qi-host runs sandboxed WebAssembly sub-agents: list_agents, then run_agent or run_task; shared contexts are resources qi://context/<id>.",
        )
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(ProtocolVersion::known_up_to(&ProtocolVersion::V_2025_11_25))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let caller = self.caller(&context)?;
        self.server
            .admit(&caller, "tools/list", &serde_json::Value::Null)
            .map_err(|e| McpError::internal_error(e.message, None))?;
        let tools = super::tools::tools()
            .iter()
            .map(|t| {
                let schema = match &t.input_schema {
                    serde_json::Value::Object(o) => o.clone(),
                    _ => Default::default(),
                };
                Tool::new(t.name, t.description, Arc::new(schema))
            })
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let caller = self.caller(&context)?;
        let name = request.name.to_string();
        if !super::tools::is_tool(&name) {
            return Err(McpError::invalid_params(
                format!("no tool `{name}`; see tools/list"),
                None,
            ));
        }
        let args = request
            .arguments
            .map(serde_json::Value::Object)
            .unwrap_or(serde_json::Value::Null);
        let result = if name == "run_task" {
            self.run_task(&caller, args, &context).await
        } else {
            tokio::select! {
                r = self.server.call(&caller, &name, args) => r,
                _ = context.ct.cancelled() => Err(OpError::unavailable("the request was cancelled")),
            }
        };
        Ok(match result {
            Ok(v) => CallToolResult::structured(v).into(),
            Err(e) => tool_error(&e),
        })
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let caller = self.caller(&context)?;
        let listed = self
            .server
            .call(&caller, "context_list", serde_json::json!({}))
            .await
            .map_err(|e| McpError::invalid_request(e.message, None))?;
        let resources = listed["contexts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                let id = c["id"].as_str()?;
                Some(
                    Resource::new(format!("{CONTEXT_URI}{id}"), id)
                        .with_description(format!(
                            "shared context of type `{}`, owned by `{}`",
                            c["contextType"].as_str().unwrap_or_default(),
                            c["owner"].as_str().unwrap_or_default()
                        ))
                        .with_mime_type("application/json"),
                )
            })
            .collect();
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let caller = self.caller(&context)?;
        let id = context_id(&request.uri)?;
        let view = self
            .server
            .call(&caller, "context_get", serde_json::json!({"id": id}))
            .await
            .map_err(|e| match e.kind {
                super::OpErrorKind::NotFound => McpError::resource_not_found(e.message, None),
                _ => McpError::invalid_request(e.message, None),
            })?;
        let text = serde_json::to_string(&view).unwrap_or_default();
        let contents = match ResourceContents::text(text, request.uri.clone()) {
            ResourceContents::TextResourceContents {
                uri, text, meta, ..
            } => ResourceContents::TextResourceContents {
                uri,
                mime_type: Some("application/json".into()),
                text,
                meta,
            },
            other => other,
        };
        Ok(ReadResourceResult::new(vec![contents]).into())
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let caller = self.caller(&context)?;
        self.server
            .admit(
                &caller,
                "resources/subscribe",
                &serde_json::json!({"uri": request.uri}),
            )
            .map_err(|e| McpError::invalid_request(e.message, None))?;
        let id = context_id(&request.uri)?.to_string();
        let sub = self
            .server
            .subscribe_context(&caller, &id)
            .map_err(|e| McpError::invalid_request(e.message, None))?;
        let mut subs = self.subscriptions.lock().expect("subscriptions lock");
        if subs.contains_key(&request.uri) {
            return Ok(());
        }
        if subs.len() >= MAX_SUBSCRIPTIONS {
            return Err(McpError::invalid_request(
                format!(
                    "this session already holds {MAX_SUBSCRIPTIONS} subscriptions; unsubscribe first"
                ),
                None,
            ));
        }
        let peer = context.peer.clone();
        let uri = request.uri.clone();
        let task = tokio::spawn(async move {
            let mut sub = sub;
            while sub.next().await.is_ok() {
                let note = ResourceUpdatedNotificationParam::new(uri.clone());
                if peer.notify_resource_updated(note).await.is_err() {
                    break;
                }
            }
        });
        subs.insert(request.uri, task.abort_handle());
        Ok(())
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        if let Some(w) = self
            .subscriptions
            .lock()
            .expect("subscriptions lock")
            .remove(&request.uri)
        {
            w.abort();
        }
        Ok(())
    }
}

impl McpHandler {
    /// `run_task` over MCP: progress notifications while it runs (when the request carries a
    /// progress token), the report when it ends; a client that cancels or goes away stops the
    /// run only if it asked for `on_disconnect: cancel`.
    async fn run_task(
        &self,
        caller: &Caller,
        args: serde_json::Value,
        context: &RequestContext<RoleServer>,
    ) -> Result<serde_json::Value, OpError> {
        self.server.admit(caller, "run_task", &args)?;
        let args: super::tools::RunTaskArgs = super::tools::parse("run_task", args)?;
        let wait = args.wait.unwrap_or(true);
        let started = self.server.start_run(caller, args).await?;
        if !wait {
            return Ok(serde_json::json!({"runId": started.run_id, "state": "running"}));
        }
        let token = context.meta.get_progress_token();
        let mut status = started.status.clone();
        let progress = async {
            let Some(token) = token else {
                return std::future::pending::<()>().await;
            };
            while status.changed().await.is_ok() {
                let s = status.borrow_and_update().clone();
                let running: Vec<&str> = s
                    .subtasks
                    .iter()
                    .filter(|t| t.state == crate::coord::SubtaskState::Running)
                    .map(|t| t.id.as_str())
                    .collect();
                let note = ProgressNotificationParam::new(token.clone(), s.completed_tasks as f64)
                    .with_total(s.total_tasks as f64)
                    .with_message(format!(
                        "run {}: {} of {} subtasks settled; running: {}",
                        started.run_id,
                        s.completed_tasks,
                        s.total_tasks,
                        if running.is_empty() {
                            "-".to_string()
                        } else {
                            running.join(", ")
                        }
                    ));
                if context.peer.notify_progress(note).await.is_err() {
                    break;
                }
            }
            std::future::pending::<()>().await
        };
        // Dropping `wait_on` (the request cancelled, or this future dropped with the session)
        // stops the run when it was started with `on_disconnect: cancel`.
        tokio::select! {
            r = started.wait_on(&self.server) => r,
            _ = progress => unreachable!("the progress loop never ends on its own"),
            _ = context.ct.cancelled() => {
                Err(OpError::unavailable(format!("the request was cancelled; run `{}` {}", started.run_id,
                    if started.on_disconnect == OnDisconnect::Cancel { "is stopped" } else { "goes on (run_status)" })))
            }
        }
    }
}
