//! Reading the log back: the chain walk of [`AuditLog::verify`](super::AuditLog::verify) and the
//! filtered scan of [`AuditLog::query`](super::AuditLog::query). Both run on a read connection
//! inside one read transaction, so they see one consistent snapshot.

use super::chain::{ChainKeys, Content, GENESIS_HASH, entry_hash};
use super::head::AuditHead;
use super::{AuditDecision, AuditEntry, AuditQuery, BrokenEntry, VerifyReport};
use crate::store::StoreError;
use globset::GlobMatcher;
use rusqlite::Connection;
use rusqlite::types::{Value as SqlValue, ValueRef};

/// Columns of an [`AuditEntry`], in [`entry_from_row`] and [`check_row`] order.
pub(crate) const AUDIT_COLUMNS: &str =
    "seq, time_ms, agent, resource, operation, decision, reason, details, prev_hash, hash";

/// The newest stored `(seq, hash)`, or `(0, GENESIS_HASH)` for an empty log.
pub(crate) fn head(conn: &Connection) -> Result<(u64, String), StoreError> {
    let mut stmt = conn.prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")?;
    let mut rows = stmt.query([])?;
    match rows.next()? {
        Some(row) => Ok((row.get::<_, i64>(0)?.max(0) as u64, row.get(1)?)),
        None => Ok((0, GENESIS_HASH.to_string())),
    }
}

/// The `meta` key holding the seq of the first HMAC-keyed entry.
pub(crate) const KEYED_FROM: &str = "audit.keyed_from";

/// The first keyed entry, if the log was ever written with a master key.
pub(crate) fn keyed_from(conn: &Connection) -> Result<Option<u64>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")?;
    let mut rows = stmt.query([KEYED_FROM])?;
    match rows.next()? {
        None => Ok(None),
        Some(row) => {
            let text: String = row.get(0)?;
            text.parse::<u64>().map(Some).map_err(|_| {
                StoreError::CorruptRow(format!(
                    "meta `{KEYED_FROM}` holds `{text}`, not an entry number (modified); run \
                     `qi-host audit verify`"
                ))
            })
        }
    }
}

/// The committed head: newest `(seq, hash)`, its scheme, and where keying starts.
pub(crate) fn current_head(conn: &Connection) -> Result<AuditHead, StoreError> {
    let (seq, hash) = head(conn)?;
    let keyed_from = keyed_from(conn)?;
    Ok(AuditHead {
        seq,
        hash,
        scheme: AuditHead::scheme_of(seq, keyed_from),
        keyed_from,
    })
}

/// One row as stored, for the chain walk.
struct RawRow<'r> {
    seq: i64,
    time_ms: u64,
    text: [&'r [u8]; 6],
    prev_hash: &'r [u8],
    hash: &'r [u8],
}

const TEXT_COLUMNS: [&str; 6] = [
    "agent",
    "resource",
    "operation",
    "decision",
    "reason",
    "details",
];

fn text_column<'r>(
    row: &'r rusqlite::Row<'_>,
    index: usize,
    name: &str,
) -> Result<&'r [u8], String> {
    match row.get_ref(index).map_err(|e| e.to_string())? {
        ValueRef::Text(bytes) => Ok(bytes),
        other => Err(format!(
            "column `{name}` holds {} instead of text (modified)",
            type_name(other)
        )),
    }
}

fn type_name(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::Integer(i) => format!("the integer {i}"),
        other => other.data_type().to_string().to_lowercase(),
    }
}

/// Reads a row for the walk; `Err` says which column was changed to something no writer
/// stores.
fn raw_row<'r>(row: &'r rusqlite::Row<'_>) -> Result<RawRow<'r>, String> {
    let seq = match row.get_ref(0).map_err(|e| e.to_string())? {
        ValueRef::Integer(seq) => seq,
        other => return Err(format!("seq holds {} (modified)", type_name(other))),
    };
    let time_ms = match row.get_ref(1).map_err(|e| e.to_string())? {
        ValueRef::Integer(t) if t >= 0 => t as u64,
        other => {
            return Err(format!(
                "column `time_ms` holds {} instead of a non-negative integer (modified)",
                type_name(other)
            ));
        }
    };
    let mut text: [&[u8]; 6] = [&[]; 6];
    for (i, name) in TEXT_COLUMNS.iter().enumerate() {
        text[i] = text_column(row, 2 + i, name)?;
    }
    Ok(RawRow {
        seq,
        time_ms,
        text,
        prev_hash: text_column(row, 8, "prev_hash")?,
        hash: text_column(row, 9, "hash")?,
    })
}

/// Why the chain broke at a row whose own content may still be fine.
enum Break {
    /// The entries after `after` are missing: the next row is `found`.
    Gap { after: u64, found: u64 },
    /// The row's `seq` is below 1 (no writer stores that).
    BadSeq(i64),
    /// The row's `prev_hash` is not the previous entry's hash.
    Link { seq: u64, prev_hash: Vec<u8> },
    /// A column holds something no writer stores.
    Column { seq: u64, problem: String },
    /// The row's hash is not the hash of its content.
    Modified { seq: u64 },
}

/// Walks the whole log in seq order and stops at the first entry that breaks the chain.
pub(crate) fn verify(
    conn: &Connection,
    keys: Option<&ChainKeys>,
) -> Result<VerifyReport, StoreError> {
    walk(conn, keys, 0, GENESIS_HASH.to_string())
}

/// Walks the entries after `from` (whose hash is `from_hash`) in seq order and stops at the
/// first one that breaks the chain. Entries from the `meta` keyed-from seq on are checked as
/// HMAC-SHA-256 under `keys` (a break when there are none), earlier ones as SHA-256.
pub(crate) fn walk(
    conn: &Connection,
    keys: Option<&ChainKeys>,
    from: u64,
    from_hash: String,
) -> Result<VerifyReport, StoreError> {
    let tx = conn.unchecked_transaction()?;
    let keyed_from = keyed_from(&tx)?;
    let mut entries = from;
    let mut last_hash = from_hash;
    let mut broken = None;
    {
        let mut stmt = tx.prepare(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > ?1 ORDER BY seq"
        ))?;
        let mut rows = stmt.query([clamp_i64(from)])?;
        while let Some(row) = rows.next()? {
            let expected = entries + 1;
            let raw = match raw_row(row) {
                Ok(raw) => raw,
                Err(problem) => {
                    let seq = row.get::<_, i64>(0).map_or(expected, |s| s.max(0) as u64);
                    broken = Some(Break::Column { seq, problem });
                    break;
                }
            };
            if raw.seq < 1 {
                broken = Some(Break::BadSeq(raw.seq));
                break;
            }
            let seq = raw.seq as u64;
            if seq != expected {
                // Rows come in ascending seq order, so `seq > expected`.
                broken = Some(Break::Gap {
                    after: entries,
                    found: seq,
                });
                break;
            }
            if raw.prev_hash != last_hash.as_bytes() {
                broken = Some(Break::Link {
                    seq,
                    prev_hash: raw.prev_hash.to_vec(),
                });
                break;
            }
            let key = match (AuditHead::scheme_of(seq, keyed_from), keys) {
                (super::ChainScheme::Sha256, _) => None,
                (super::ChainScheme::HmacSha256, Some(k)) => Some(&*k.chain),
                (super::ChainScheme::HmacSha256, None) => {
                    broken = Some(Break::Column {
                        seq,
                        problem: "the entries from here on are keyed with the master key; give \
                                  it (--key-file FILE or QI_HOST_MASTER_KEY) to verify them"
                            .into(),
                    });
                    break;
                }
            };
            let [agent, resource, operation, decision, reason, details] = raw.text;
            let computed = entry_hash(
                key,
                raw.prev_hash,
                &Content {
                    seq,
                    time_ms: raw.time_ms,
                    agent,
                    resource,
                    operation,
                    decision,
                    reason,
                    details,
                },
            );
            if computed.as_bytes() != raw.hash {
                broken = Some(Break::Modified { seq });
                break;
            }
            entries = seq;
            last_hash = computed;
        }
    }
    let first_broken = match broken {
        None => None,
        Some(b) => Some(describe(&tx, b, entries)?),
    };
    Ok(VerifyReport {
        entries,
        first_broken,
        scheme: AuditHead::scheme_of(entries, keyed_from),
        keyed_from,
        last_hash,
    })
}

/// The report line for a break; looks up which entry a wrong `prev_hash` points at.
fn describe(conn: &Connection, b: Break, last_good: u64) -> Result<BrokenEntry, StoreError> {
    Ok(match b {
        Break::Gap { after, found } => {
            let missing = if found - after == 2 {
                format!("entry {} is", after + 1)
            } else {
                format!("entries {} to {} are", after + 1, found - 1)
            };
            let problem = if after == 0 {
                format!("{missing} missing (deleted): the log starts at entry {found}")
            } else {
                format!(
                    "{missing} missing (deleted): the log jumps from entry {after} to entry {found}"
                )
            };
            BrokenEntry {
                seq: after + 1,
                problem,
            }
        }
        Break::BadSeq(seq) => BrokenEntry {
            seq: 0,
            problem: format!("an entry has sequence number {seq}, below 1 (inserted)"),
        },
        Break::Column { seq, problem } => BrokenEntry { seq, problem },
        Break::Modified { seq } => BrokenEntry {
            seq,
            problem: "hash does not match its content (modified)".into(),
        },
        Break::Link { seq, prev_hash } => {
            let expected = if last_good == 0 {
                "64 zeros, as the first entry's must be".to_string()
            } else {
                format!("the hash of entry {last_good}")
            };
            let points_at: Option<i64> = match std::str::from_utf8(&prev_hash) {
                Ok(text) => conn
                    .prepare("SELECT seq FROM audit WHERE hash = ?1 ORDER BY seq LIMIT 1")?
                    .query_row([text], |row| row.get(0))
                    .map(Some)
                    .or_else(|e| match e {
                        rusqlite::Error::QueryReturnedNoRows => Ok(None),
                        e => Err(e),
                    })?,
                Err(_) => None,
            };
            let why = match points_at {
                Some(p) if p > seq as i64 => {
                    format!("it follows entry {p}, which comes after it (reordered)")
                }
                Some(p) => format!(
                    "it follows entry {p}, so the entries in between were deleted and the rest \
                     renumbered, or the entries were reordered"
                ),
                None if last_good == 0 => "it follows no entry still in the log (the first \
                                           entries were deleted and the rest renumbered, or \
                                           this entry was modified)"
                    .to_string(),
                None => "it follows no entry still in the log (an earlier entry was modified, \
                         or deleted with the later ones renumbered)"
                    .to_string(),
            };
            BrokenEntry {
                seq,
                problem: format!("prev_hash is not {expected}: {why}"),
            }
        }
    })
}

/// An [`AuditQuery`] ready to run: exact patterns go to SQL, globs are matched here.
pub(crate) struct Compiled {
    conditions: Vec<&'static str>,
    params: Vec<SqlValue>,
    agent: Option<GlobMatcher>,
    resource: Option<GlobMatcher>,
    operation: Option<GlobMatcher>,
    limit: Option<usize>,
}

/// Whether `pattern` has glob syntax (else it matches only itself).
fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', ']', '{', '}', '\\'])
}

impl Compiled {
    pub(crate) fn new(q: &AuditQuery) -> Result<Compiled, StoreError> {
        let mut compiled = Compiled {
            conditions: Vec::new(),
            params: Vec::new(),
            agent: None,
            resource: None,
            operation: None,
            limit: q.limit,
        };
        let patterns: [(&'static str, &'static str, &Option<String>); 3] = [
            ("agent", "agent = ?", &q.agent),
            ("resource", "resource = ?", &q.resource),
            ("operation", "operation = ?", &q.operation),
        ];
        for (field, condition, pattern) in patterns {
            let Some(pattern) = pattern else { continue };
            if !is_glob(pattern) {
                compiled.conditions.push(condition);
                compiled.params.push(SqlValue::Text(pattern.clone()));
                continue;
            }
            let matcher = globset::Glob::new(pattern)
                .map_err(|e| StoreError::InvalidConfig {
                    field,
                    message: format!("`{pattern}` is not a valid glob pattern: {e}"),
                })?
                .compile_matcher();
            match field {
                "agent" => compiled.agent = Some(matcher),
                "resource" => compiled.resource = Some(matcher),
                _ => compiled.operation = Some(matcher),
            }
        }
        if let Some(decision) = q.decision {
            compiled.conditions.push("decision = ?");
            compiled
                .params
                .push(SqlValue::Text(decision.as_str().to_string()));
        }
        if let Some(since) = q.since_ms {
            compiled.conditions.push("time_ms >= ?");
            compiled.params.push(SqlValue::Integer(clamp_i64(since)));
        }
        if let Some(until) = q.until_ms {
            compiled.conditions.push("time_ms <= ?");
            compiled.params.push(SqlValue::Integer(clamp_i64(until)));
        }
        Ok(compiled)
    }

    fn matches(&self, entry: &AuditEntry) -> bool {
        let glob = |m: &Option<GlobMatcher>, s: &str| m.as_ref().is_none_or(|m| m.is_match(s));
        glob(&self.agent, &entry.agent)
            && glob(&self.resource, &entry.resource)
            && glob(&self.operation, &entry.operation)
    }
}

/// The newest `limit` (all, without one) entries matching `q`, in seq order.
pub(crate) fn query(conn: &Connection, q: Compiled) -> Result<Vec<AuditEntry>, StoreError> {
    let limit = q.limit.unwrap_or(usize::MAX);
    if limit == 0 {
        return Ok(Vec::new());
    }
    let condition = if q.conditions.is_empty() {
        "1".to_string()
    } else {
        q.conditions.join(" AND ")
    };
    let tx = conn.unchecked_transaction()?;
    let mut stmt = tx.prepare(&format!(
        "SELECT {AUDIT_COLUMNS} FROM audit WHERE {condition} ORDER BY seq DESC"
    ))?;
    let mut rows = stmt.query(rusqlite::params_from_iter(q.params.iter()))?;
    let mut found = Vec::new();
    while let Some(row) = rows.next()? {
        let entry = entry_from_row(row)?;
        if q.matches(&entry) {
            found.push(entry);
            if found.len() >= limit {
                break;
            }
        }
    }
    found.reverse();
    Ok(found)
}

/// One entry as stored. A `details` text that is not JSON (only a tampered row has one) comes
/// back as a JSON string holding that text.
pub(crate) fn entry_from_row(row: &rusqlite::Row<'_>) -> Result<AuditEntry, StoreError> {
    let seq: i64 = row.get(0)?;
    let decision: String = row.get(5)?;
    let details: String = row.get(7)?;
    Ok(AuditEntry {
        seq: seq.max(0) as u64,
        time_ms: row.get::<_, i64>(1)?.max(0) as u64,
        agent: row.get(2)?,
        resource: row.get(3)?,
        operation: row.get(4)?,
        decision: decision.parse::<AuditDecision>().map_err(|_| {
            StoreError::CorruptRow(format!(
                "audit entry {seq} has decision `{decision}`, which is none of allow, deny, \
                 record; run `qi-host audit verify`"
            ))
        })?,
        reason: row.get(6)?,
        details: serde_json::from_str(&details).unwrap_or(serde_json::Value::String(details)),
        prev_hash: row.get(8)?,
        hash: row.get(9)?,
    })
}

/// One entry by seq.
pub(crate) fn entry(conn: &Connection, seq: u64) -> Result<Option<AuditEntry>, StoreError> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE seq = ?1"))?;
    let mut rows = stmt.query([clamp_i64(seq)])?;
    match rows.next()? {
        Some(row) => Ok(Some(entry_from_row(row)?)),
        None => Ok(None),
    }
}

pub(crate) fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
