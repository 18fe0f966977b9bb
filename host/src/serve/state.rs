//! Shared contexts, events and the audit log, as clients of `qi-host serve` see them.
//!
//! Each operation passes the access gate first (`context/<id>` with the context store's own
//! action names, `events/<id>` `subscribe`, `audit/log` `query`), then the context store's
//! own check of ownership and sharing under the caller's store id (`client:<name>`, or
//! `operator` for the operator and clients configured as one).

use super::tools::{
    AuditQueryArgs, ContextIdArgs, ContextListArgs, ContextPatchArgs, ContextPutArgs,
    EventsTailArgs, MAX_LIST,
};
use super::{Caller, OpError, Server};
use crate::context::{Change, NewContext};
use crate::events::EventFilter;
use crate::model::ResourceKind;
use serde_json::{Value, json};

/// `limit` within 1..=[`MAX_LIST`], or `default`.
fn limit(field: &str, given: Option<usize>, default: usize) -> Result<usize, OpError> {
    match given {
        None => Ok(default),
        Some(n) if (1..=MAX_LIST).contains(&n) => Ok(n),
        Some(n) => Err(OpError::invalid(format!(
            "{field}: {n} is outside 1..={MAX_LIST}"
        ))),
    }
}

fn to_json(v: &impl serde::Serialize) -> Result<Value, OpError> {
    serde_json::to_value(v).map_err(|e| OpError::failed(e.to_string()))
}

impl Server {
    /// `context_get`.
    pub(crate) async fn context_get(
        &self,
        caller: &Caller,
        args: ContextIdArgs,
    ) -> Result<Value, OpError> {
        if args.limit.is_some() {
            return Err(OpError::invalid(
                "limit: only `context_history` takes a limit",
            ));
        }
        self.gate(caller, ResourceKind::Context, &args.id, "get")?;
        to_json(&self.context.get(caller.store_id(), &args.id).await?)
    }

    /// `context_put`: replaces the document, or creates the context when `context_type` is
    /// given and it does not exist.
    pub(crate) async fn context_put(
        &self,
        caller: &Caller,
        args: ContextPutArgs,
    ) -> Result<Value, OpError> {
        let exists = self.context.attributes(&args.id).is_some();
        if !exists && let Some(context_type) = args.context_type {
            self.gate(caller, ResourceKind::Context, &args.id, "create")?;
            let r = self
                .context
                .create(
                    caller.store_id(),
                    NewContext {
                        id: Some(args.id),
                        context_type,
                        doc: args.doc,
                        ..NewContext::default()
                    },
                )
                .await?;
            return to_json(&r);
        }
        self.gate(caller, ResourceKind::Context, &args.id, "put")?;
        let r = self
            .context
            .write(
                caller.store_id(),
                &args.id,
                Change::Put(args.doc),
                args.base_version,
            )
            .await?;
        to_json(&r)
    }

    /// `context_patch`: a JSON merge patch.
    pub(crate) async fn context_patch(
        &self,
        caller: &Caller,
        args: ContextPatchArgs,
    ) -> Result<Value, OpError> {
        self.gate(caller, ResourceKind::Context, &args.id, "patch")?;
        let r = self
            .context
            .write(
                caller.store_id(),
                &args.id,
                Change::Merge(args.patch),
                args.base_version,
            )
            .await?;
        to_json(&r)
    }

    /// `context_list`: the contexts the caller may read (and the gate lets it `get`), without
    /// their documents.
    pub(crate) async fn context_list(
        &self,
        caller: &Caller,
        args: ContextListArgs,
    ) -> Result<Value, OpError> {
        let ids = self.context.ids(
            caller.store_id(),
            args.context_type.as_deref(),
            args.owner.as_deref(),
        );
        let mut out = Vec::new();
        for id in ids.into_iter().take(MAX_LIST * 10) {
            if self.gate_quiet(caller, &id)
                && let Some((context_type, owner, labels)) = self.context.attributes(&id)
            {
                out.push(json!({"id": id, "contextType": context_type, "owner": owner, "labels": labels}));
            }
        }
        Ok(json!({"contexts": out}))
    }

    /// Whether the gate lets `caller` get context `id`, without recording the decision (a
    /// listing would otherwise write one audit entry per context).
    pub(crate) fn gate_quiet(&self, caller: &Caller, id: &str) -> bool {
        let Some(policies) = self.access.current() else {
            return true;
        };
        let (rtype, owner, labels) = self.context.attributes(id).unwrap_or_default();
        policies
            .decide(&crate::security::Request {
                agent_id: &caller.id,
                agent_name: Some(&caller.name),
                trust: caller.trust,
                capabilities: &caller.capabilities,
                isolation: crate::spec::IsolationLevel::Sandbox,
                kind: "context",
                id,
                resource_type: Some(rtype.as_str()).filter(|t| !t.is_empty()),
                owner: Some(owner.as_str()).filter(|o| !o.is_empty()),
                labels: &labels,
                action: "get",
            })
            .allowed
    }

    /// `context_history`.
    pub(crate) async fn context_history(
        &self,
        caller: &Caller,
        args: ContextIdArgs,
    ) -> Result<Value, OpError> {
        let n = limit("limit", args.limit, 20)?;
        self.gate(caller, ResourceKind::Context, &args.id, "history")?;
        to_json(&self.context.history(caller.store_id(), &args.id, n).await?)
    }

    /// `events_tail`: events of one context the caller may read.
    pub(crate) async fn events_tail(
        &self,
        caller: &Caller,
        args: EventsTailArgs,
    ) -> Result<Value, OpError> {
        let n = limit("limit", args.limit, 50)?;
        self.gate(caller, ResourceKind::Events, &args.context, "subscribe")?;
        self.context.allowed(
            caller.store_id(),
            &args.context,
            crate::context::Permission::Read,
        )?;
        let filter = EventFilter {
            context_ids: vec![args.context.clone()],
            ..EventFilter::default()
        };
        let events = self
            .context
            .bus()
            .history(&filter, args.after, n)
            .await
            .map_err(|e| OpError::invalid(format!("after: {e}")))?;
        let last = events.last().map(|e| e.seq).or(args.after);
        Ok(json!({"events": events, "lastSeq": last}))
    }

    /// A live subscription to context `id`'s events from now on, for a caller that may read
    /// it (`resources/subscribe`): the gate's `events/<id>` `subscribe`, then read permission.
    pub(crate) fn subscribe_context(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<crate::events::Subscription, OpError> {
        self.gate(caller, ResourceKind::Events, id, "subscribe")?;
        self.context
            .allowed(caller.store_id(), id, crate::context::Permission::Read)?;
        let filter = EventFilter {
            context_ids: vec![id.to_string()],
            ..EventFilter::default()
        };
        self.context
            .bus()
            .subscribe(filter, crate::events::SubscribeFrom::Now)
            .map_err(|e| OpError::failed(e.to_string()))
    }

    /// `audit_query`: a caller that is not the operator sees only its own entries.
    pub(crate) async fn audit_query(
        &self,
        caller: &Caller,
        args: AuditQueryArgs,
    ) -> Result<Value, OpError> {
        self.gate(caller, ResourceKind::Audit, "log", "query")?;
        let agent = if caller.operator {
            args.agent
        } else {
            match args.agent {
                Some(a) if a != caller.id => {
                    return Err(OpError::denied(format!(
                        "agent: `{}` may query only its own entries (agent `{}`)",
                        caller.id, caller.id
                    )));
                }
                _ => Some(caller.id.clone()),
            }
        };
        let decision = args
            .decision
            .map(|d| {
                d.parse::<crate::audit::AuditDecision>()
                    .map_err(|e| OpError::invalid(format!("decision: {e}")))
            })
            .transpose()?;
        let q = crate::audit::AuditQuery {
            agent,
            resource: args.resource,
            operation: args.operation,
            decision,
            since_ms: args.since_ms,
            until_ms: args.until_ms,
            limit: Some(limit("limit", args.limit, 100)?),
        };
        // What was recorded before this query (its own request included) is written first.
        self.audit.flush().await;
        let entries = self
            .audit
            .query(&q)
            .await
            .map_err(|e| OpError::invalid(e.to_string()))?;
        Ok(json!({"entries": entries}))
    }
}
