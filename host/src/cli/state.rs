//! `qi-host context …`, `qi-host events …` and `qi-host audit …`: the durable state of a data
//! directory, as the operator sees it.
//!
//! Reading commands (`context list|get|history|conflicts`, `events tail`, `audit
//! head|verify|query`) open the directory read-only ([`Store::open_read_only`]): no lock, so they
//! work beside a host that owns it. Writing ones (`context label|rollback|resolve`, `audit
//! accept-head`) open it as its owner ([`Store::open`]) and so fail at once, naming the host,
//! while one runs.

use crate::cli::{ContextArgs, ContextCommand, DataArgs, EventsArgs, EventsCommand};
use crate::context::{
    ContextConfig, ContextError, ContextService, OPERATOR, ResolveChoice, SystemClock,
};
use crate::error::Error;
use crate::events::{Event, EventBus, EventBusConfig, EventFilter};
use crate::store::{Store, StoreConfig};
use std::sync::Arc;

fn ctx_err(e: ContextError) -> Error {
    match e.category() {
        crate::ErrorCategory::Validation | crate::ErrorCategory::Business => {
            Error::field("context", e.to_string())
        }
        _ => Error::System(anyhow::anyhow!(e.to_string())),
    }
}

/// `--data-dir`, else the default data directory (`StoreConfig::default_data_dir`).
pub(crate) fn data_dir(given: Option<&std::path::Path>) -> Result<std::path::PathBuf, Error> {
    match given {
        Some(d) => Ok(d.to_path_buf()),
        None => StoreConfig::default_data_dir().ok_or_else(|| {
            Error::field(
                "--data-dir",
                "no default data directory (HOME is not set); pass --data-dir DIR",
            )
        }),
    }
}

/// How a CLI command opens a data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Reads only: works beside a host that owns the directory (no lock, no writer).
    Read,
    /// Writes: takes the directory's lock, so it fails while a host owns the directory.
    Write,
}

async fn open(data: &DataArgs, access: Access) -> Result<(Store, EventBus), Error> {
    let dir = data_dir(data.data_dir.as_deref())?;
    if !dir.join("qi.db").exists() {
        return Err(Error::field(
            "--data-dir",
            format!(
                "`{}` holds no qi-host data (no qi.db); run a task first or pass the right --data-dir",
                dir.display()
            ),
        ));
    }
    let config = StoreConfig {
        master_key: master_key(data.key_file.as_deref())?,
        ..StoreConfig::at(&dir)
    };
    let store = match access {
        Access::Read => Store::open_read_only(config),
        Access::Write => Store::open(config),
    }
    .map_err(store_err)?;
    let bus = EventBus::new(store.clone(), EventBusConfig::default())
        .await
        .map_err(|e| Error::System(anyhow::anyhow!(e.to_string())))?;
    Ok((store, bus))
}

/// The policies of `--policies`, when given.
pub fn load_policies(
    path: Option<&std::path::Path>,
) -> Result<Option<crate::security::PolicySet>, Error> {
    path.map(crate::security::PolicySet::load).transpose()
}

/// A data directory opened for running agents: its context service, its audit log, and the
/// access gate (`policies`, audited to that log).
pub struct Secured {
    /// The context service.
    pub context: ContextService,
    /// The audit log.
    pub audit: crate::audit::AuditLog,
    /// The gate.
    pub access: Arc<crate::security::AccessControl>,
}

/// Opens `dir` (creating it) with its master key and audit log, and a gate with `policies`.
pub async fn open_secured(
    dir: &std::path::Path,
    key_file: Option<&std::path::Path>,
    policies: Option<crate::security::PolicySet>,
) -> Result<Secured, Error> {
    let context = open_service(dir, key_file).await?;
    let audit = crate::audit::AuditLog::open(context.store().clone())
        .await
        .map_err(|e| Error::System(anyhow::anyhow!("opening the audit log: {e}")))?;
    context.set_audit(audit.clone());
    let access = Arc::new(crate::security::AccessControl::new(
        policies,
        Some(audit.clone()),
    ));
    Ok(Secured {
        context,
        audit,
        access,
    })
}

/// The master key for encryption at rest: `key_file` when given, else `QI_HOST_MASTER_KEY`,
/// else none.
pub fn master_key(
    key_file: Option<&std::path::Path>,
) -> Result<Option<crate::store::crypto::MasterKey>, Error> {
    match key_file {
        Some(p) => crate::store::crypto::MasterKey::from_file(p)
            .map(Some)
            .map_err(|e| Error::field("--key-file", e)),
        None => crate::store::crypto::MasterKey::from_env()
            .map_err(|e| Error::field("QI_HOST_MASTER_KEY", e)),
    }
}

/// Opens (creating if needed) the context service of a data directory.
pub async fn open_service(
    dir: &std::path::Path,
    key_file: Option<&std::path::Path>,
) -> Result<ContextService, Error> {
    let store = Store::open(StoreConfig {
        master_key: master_key(key_file)?,
        ..StoreConfig::at(dir)
    })
    .map_err(store_err)?;
    let bus = EventBus::new(store.clone(), EventBusConfig::default())
        .await
        .map_err(|e| Error::System(anyhow::anyhow!(e.to_string())))?;
    ContextService::open(store, bus, Arc::new(SystemClock), ContextConfig::default())
        .await
        .map_err(ctx_err)
}

fn print_json(v: &impl serde::Serialize) -> Result<(), Error> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(|e| Error::System(e.into()))?
    );
    Ok(())
}

/// `qi-host context …`.
pub async fn context(args: ContextArgs) -> Result<i32, Error> {
    let access = match args.command {
        ContextCommand::Label { .. }
        | ContextCommand::Rollback { .. }
        | ContextCommand::Resolve { .. } => Access::Write,
        ContextCommand::List { .. }
        | ContextCommand::Get { .. }
        | ContextCommand::History { .. }
        | ContextCommand::Conflicts { .. } => Access::Read,
    };
    let (store, bus) = open(&args.data, access).await?;
    // Only writing commands are audited; reads beside a live host leave its log alone.
    let audit = match access {
        Access::Write => Some(
            crate::audit::AuditLog::open(store.clone())
                .await
                .map_err(|e| Error::System(anyhow::anyhow!("opening the audit log: {e}")))?,
        ),
        Access::Read => None,
    };
    let svc = ContextService::open(store, bus, Arc::new(SystemClock), ContextConfig::default())
        .await
        .map_err(ctx_err)?;
    if let Some(audit) = &audit {
        svc.set_audit(audit.clone());
    }
    let json = args.data.json;
    let r = context_command(&svc, args.command, json).await;
    // Label changes (and refusals) are audited: written before the process exits.
    if let Some(audit) = &audit {
        audit.flush().await;
    }
    r
}

async fn context_command(
    svc: &ContextService,
    command: ContextCommand,
    json: bool,
) -> Result<i32, Error> {
    match command {
        ContextCommand::Label { id, labels } => {
            let now = svc
                .set_labels(OPERATOR, &id, &labels)
                .await
                .map_err(ctx_err)?;
            if json {
                print_json(&serde_json::json!({"id": id, "labels": now}))?;
            } else if now.is_empty() {
                println!("{id}: no labels");
            } else {
                println!("{id}: labels {}", now.join(", "));
            }
        }
        ContextCommand::List {
            context_type,
            owner,
        } => {
            let list = svc
                .list(OPERATOR, context_type.as_deref(), owner.as_deref())
                .await
                .map_err(ctx_err)?;
            if json {
                print_json(&list)?;
            } else {
                println!(
                    "{:<24} {:<16} {:<16} {:<9} {:>7} {:<8}",
                    "ID", "TYPE", "OWNER", "STRATEGY", "VERSION", "STATUS"
                );
                for c in list {
                    println!(
                        "{:<24} {:<16} {:<16} {:<9} {:>7} {:<8}",
                        c.id,
                        c.context_type,
                        c.owner,
                        c.strategy.as_str(),
                        c.version,
                        c.status.as_str()
                    );
                }
            }
        }
        ContextCommand::Get { id } => {
            let v = svc.get(OPERATOR, &id).await.map_err(ctx_err)?;
            if json {
                print_json(&v)?;
            } else {
                println!("context  {} ({}, owner {})", v.id, v.context_type, v.owner);
                println!(
                    "version  {} (revision {}, hlc {})",
                    v.version, v.revision, v.hlc
                );
                println!("status   {} ({})", v.status.as_str(), v.strategy.as_str());
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v.doc).unwrap_or_default()
                );
                if let Some(p) = &v.pending {
                    println!("competing values:");
                    for (field, values) in &p.fields {
                        for (agent, value) in values {
                            println!("  {field:<20} {agent:<16} {value}");
                        }
                    }
                }
            }
        }
        ContextCommand::History { id, limit } => {
            let h = svc.history(OPERATOR, &id, limit).await.map_err(ctx_err)?;
            if json {
                print_json(&h)?;
            } else {
                for v in h {
                    println!(
                        "v{:<5} rev {:<8} {:<10} {:<16} {}  {}",
                        v.version, v.revision, v.op, v.agent_id, v.hlc, v.doc
                    );
                }
            }
        }
        ContextCommand::Conflicts { id } => {
            let c = svc.conflicts(OPERATOR, &id).await.map_err(ctx_err)?;
            if json {
                print_json(&c)?;
            } else {
                for c in c {
                    let state = match &c.resolution {
                        Some(r) => format!("resolved by {} ({:?})", r.resolved_by, r.strategy),
                        None => "unresolved".into(),
                    };
                    println!(
                        "#{:<5} {:?} {:?} field `{}` {}",
                        c.id, c.conflict_type, c.severity, c.field, state
                    );
                    for (agent, value) in &c.agent_values {
                        println!("       {agent:<16} {value}");
                    }
                }
            }
        }
        ContextCommand::Rollback { id, version } => {
            let r = svc
                .rollback(OPERATOR, &id, version)
                .await
                .map_err(ctx_err)?;
            if json {
                print_json(&r)?;
            } else {
                println!(
                    "{} rolled back to the content of v{version}: now v{} (revision {})",
                    r.context_id, r.version, r.revision
                );
            }
        }
        ContextCommand::Resolve {
            id,
            agent,
            document,
        } => {
            let choice = match (agent, document) {
                (Some(a), None) => ResolveChoice::Agent(a),
                (None, Some(d)) => ResolveChoice::Document(
                    serde_json::from_str(&d)
                        .map_err(|e| Error::field("--document", format!("not valid JSON: {e}")))?,
                ),
                _ => {
                    return Err(Error::field(
                        "resolve",
                        "pass --agent AGENT or --document JSON",
                    ));
                }
            };
            let r = svc.resolve(OPERATOR, &id, choice).await.map_err(ctx_err)?;
            if json {
                print_json(&r)?;
            } else {
                println!(
                    "{} resolved: now v{} ({} conflict(s) closed)",
                    r.context_id,
                    r.version,
                    r.conflicts.len()
                );
            }
        }
    }
    Ok(0)
}

fn print_event(e: &Event, json: bool) {
    if json {
        println!("{}", serde_json::to_string(e).unwrap_or_default());
    } else {
        println!(
            "#{:<8} {:<13} {:<8} ctx={:<20} agent={:<14} {}",
            e.seq,
            e.timestamp_ms,
            e.event_type.as_str(),
            e.context_id.as_deref().unwrap_or("-"),
            e.agent_id.as_deref().unwrap_or("-"),
            e.data
        );
    }
}

/// `qi-host events …`.
pub async fn events(args: EventsArgs) -> Result<i32, Error> {
    let (_store, bus) = open(&args.data, Access::Read).await?;
    let EventsCommand::Tail {
        filter,
        after,
        limit,
        follow,
    } = args.command;
    let filter =
        EventFilter::parse_cli(&filter).map_err(|e| Error::field("--filter", e.to_string()))?;
    let sys = |e: crate::events::EventError| Error::System(anyhow::anyhow!(e.to_string()));
    let mut last = match after {
        Some(seq) => seq,
        None => {
            let newest = bus.history(&filter, None, limit).await.map_err(sys)?;
            for e in &newest {
                print_event(e, args.data.json);
            }
            match newest.last() {
                Some(e) => e.seq,
                None => bus.metrics().last_seq,
            }
        }
    };
    if !follow && after.is_none() {
        return Ok(0);
    }
    loop {
        let page = bus.history(&filter, Some(last), 1_000).await.map_err(sys)?;
        for e in &page {
            print_event(e, args.data.json);
            last = e.seq;
        }
        if !follow {
            return Ok(0);
        }
        if page.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

fn store_err(e: crate::store::StoreError) -> Error {
    match e {
        crate::store::StoreError::InvalidConfig {
            field: "master_key",
            message,
        } => Error::field("--key-file", message),
        crate::store::StoreError::InvalidConfig { field, message } => {
            Error::field(format!("--{field}"), message)
        }
        other => Error::System(anyhow::anyhow!(other.to_string())),
    }
}

/// `qi-host audit …`. Exit codes: 0 intact (or the query ran), 1 the log is broken.
pub async fn audit(args: crate::cli::AuditArgs) -> Result<i32, Error> {
    use crate::audit::{AuditError, AuditLog, AuditOptions, AuditQuery, BrokenEntry};
    use crate::cli::AuditCommand;
    let access = match args.command {
        AuditCommand::AcceptHead => Access::Write,
        AuditCommand::Head | AuditCommand::Verify { .. } | AuditCommand::Query { .. } => {
            Access::Read
        }
    };
    let (store, _bus) = open(&args.data, access).await?;
    let audit_err = |e: AuditError| match e {
        AuditError::Store(e) => store_err(e),
        other => Error::System(anyhow::anyhow!(other.to_string())),
    };
    let json = args.data.json;
    if let AuditCommand::AcceptHead = args.command {
        return match AuditLog::accept_head(store).await {
            Ok(head) if json => print_json(&head).map(|()| 0),
            Ok(head) => {
                println!("accepted: the head file now names {head}");
                Ok(0)
            }
            Err(e @ AuditError::Broken { .. }) => {
                println!("{e}");
                Ok(1)
            }
            Err(e) => Err(audit_err(e)),
        };
    }
    // Opened without the head check, so that verify can report the mismatch.
    let log = AuditLog::open_with(
        store,
        AuditOptions {
            check_head: false,
            ..AuditOptions::default()
        },
    )
    .await
    .map_err(audit_err)?;
    match args.command {
        AuditCommand::AcceptHead => unreachable!("handled above"),
        AuditCommand::Head => {
            let head = log.head().await.map_err(store_err)?;
            if json {
                print_json(&head)?;
            } else {
                println!("audit head: {head}");
            }
            Ok(0)
        }
        AuditCommand::Verify { anchor } => {
            let anchor = match anchor {
                Some(a) => {
                    let parsed = a.split_once(':').and_then(|(seq, hash)| {
                        let hash = hash.trim().to_ascii_lowercase();
                        let valid = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
                        Some((seq.trim().parse::<u64>().ok()?, hash)).filter(|_| valid)
                    });
                    Some(parsed.ok_or_else(|| {
                        Error::field(
                            "--anchor",
                            format!("`{a}` is not SEQ:HASH (HASH: 64 hex characters)"),
                        )
                    })?)
                }
                None => None,
            };
            let mut report = log.verify().await.map_err(store_err)?;
            if let (None, Some((seq, hash))) = (&report.first_broken, &anchor) {
                let problem = match log.entry(*seq).await.map_err(store_err)? {
                    None => Some(format!(
                        "missing: the anchor names entry {seq} with hash {hash}, but the log \
                         ends at entry {} (newest entries deleted)",
                        report.entries
                    )),
                    Some(e) if e.hash != *hash => Some(format!(
                        "hash {} differs from the anchored {hash} (the log was rewritten)",
                        e.hash
                    )),
                    Some(_) => None,
                };
                report.first_broken = problem.map(|problem| BrokenEntry { seq: *seq, problem });
            }
            if json {
                print_json(&report)?;
            } else {
                match &report.first_broken {
                    Some(broken) => println!("{broken}"),
                    None => {
                        println!(
                            "audit log intact: {} entries, last hash {} ({})",
                            report.entries, report.last_hash, report.scheme
                        );
                        if let Some((seq, _)) = anchor {
                            println!("anchor matches: entry {seq}");
                        }
                    }
                }
            }
            Ok(if report.first_broken.is_some() { 1 } else { 0 })
        }
        AuditCommand::Query {
            agent,
            resource,
            operation,
            decision,
            since,
            until,
            limit,
        } => {
            let q = AuditQuery {
                agent,
                resource,
                operation,
                decision,
                since_ms: since,
                until_ms: until,
                limit,
            };
            for e in log.query(&q).await.map_err(store_err)? {
                if json {
                    println!("{}", serde_json::to_string(&e).unwrap_or_default());
                } else {
                    println!(
                        "{:<13} #{:<7} {:<6} {:<16} {:<14} {:<28} {}",
                        e.time_ms,
                        e.seq,
                        e.decision.as_str(),
                        e.agent,
                        e.operation,
                        e.resource,
                        e.reason
                    );
                }
            }
            Ok(0)
        }
    }
}
