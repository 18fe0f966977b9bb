//! [`EventFilter`]: which events a subscription or a history query wants.

use super::{Event, EventError, EventType};
use rusqlite::types::Value as SqlValue;
use serde::{Deserialize, Serialize};

/// Which events to deliver. Every part is optional; an empty list or `None` matches
/// everything, and an event must match every part that is set. Serialized in camelCase
/// (`{"eventTypes": ["updated"], "contextIds": ["ctx-1"], "timeRange": [0, 99], "minPriority": 5}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventFilter {
    /// Event types to keep.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_types: Vec<EventType>,
    /// Context ids to keep (events without a context never match a non-empty list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub context_ids: Vec<String>,
    /// Agent ids to keep (events without an agent never match a non-empty list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_ids: Vec<String>,
    /// `(start, end)` in unix milliseconds, both inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_range: Option<(u64, u64)>,
    /// Keep events whose priority is at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_priority: Option<u8>,
}

impl EventFilter {
    /// Matches every event.
    pub fn all() -> Self {
        EventFilter::default()
    }

    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &Event) -> bool {
        (self.event_types.is_empty() || self.event_types.contains(&event.event_type))
            && list_matches(&self.context_ids, event.context_id.as_deref())
            && list_matches(&self.agent_ids, event.agent_id.as_deref())
            && self
                .time_range
                .is_none_or(|(start, end)| (start..=end).contains(&event.timestamp_ms))
            && self.min_priority.is_none_or(|min| event.priority >= min)
    }

    /// Parses the command-line form: comma-separated `key=value` pairs with keys `type`,
    /// `context`, `agent` (each may repeat; the values accumulate), `since` and `until`
    /// (unix milliseconds, inclusive) and `priority` (the minimum). An empty string matches
    /// everything. Example: `type=updated,type=created,context=ctx-1,since=1700000000000`.
    pub fn parse_cli(spec: &str) -> Result<EventFilter, EventError> {
        let mut filter = EventFilter::default();
        let (mut since, mut until) = (None, None);
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(invalid(pair, "expected `key=value`"));
            };
            let (key, value) = (key.trim(), value.trim());
            if value.is_empty() {
                return Err(invalid(key, "the value is empty"));
            }
            match key {
                "type" => filter.event_types.push(
                    value
                        .parse()
                        .map_err(|e: super::UnknownEventType| invalid(key, &e.to_string()))?,
                ),
                "context" => filter.context_ids.push(value.to_string()),
                "agent" => filter.agent_ids.push(value.to_string()),
                "since" => since = Some(parse_number::<u64>(key, value)?),
                "until" => until = Some(parse_number::<u64>(key, value)?),
                "priority" => filter.min_priority = Some(parse_number::<u8>(key, value)?),
                _ => {
                    return Err(invalid(
                        key,
                        "unknown key; use type, context, agent, since, until or priority",
                    ));
                }
            }
        }
        if since.is_some() || until.is_some() {
            let range = (since.unwrap_or(0), until.unwrap_or(u64::MAX));
            if range.0 > range.1 {
                return Err(invalid("since", "is after `until`"));
            }
            filter.time_range = Some(range);
        }
        Ok(filter)
    }

    /// A SQL condition over the `events` table equivalent to [`matches`](Self::matches),
    /// with its parameters (appended to `params`).
    pub(crate) fn sql_condition(&self, params: &mut Vec<SqlValue>) -> String {
        let mut parts = Vec::new();
        let mut in_list = |column: &str, values: Vec<SqlValue>, params: &mut Vec<SqlValue>| {
            let marks = vec!["?"; values.len()].join(", ");
            params.extend(values);
            parts.push(format!("{column} IN ({marks})"));
        };
        if !self.event_types.is_empty() {
            let values = self
                .event_types
                .iter()
                .map(|t| SqlValue::Text(t.as_str().into()));
            in_list("event_type", values.collect(), params);
        }
        if !self.context_ids.is_empty() {
            let values = self.context_ids.iter().map(|c| SqlValue::Text(c.clone()));
            in_list("context_id", values.collect(), params);
        }
        if !self.agent_ids.is_empty() {
            let values = self.agent_ids.iter().map(|a| SqlValue::Text(a.clone()));
            in_list("agent_id", values.collect(), params);
        }
        if let Some((start, end)) = self.time_range {
            parts.push("ts BETWEEN ? AND ?".into());
            params.push(SqlValue::Integer(clamp_i64(start)));
            params.push(SqlValue::Integer(clamp_i64(end)));
        }
        if let Some(min) = self.min_priority {
            parts.push("priority >= ?".into());
            params.push(SqlValue::Integer(min.into()));
        }
        if parts.is_empty() {
            "1".into()
        } else {
            parts.join(" AND ")
        }
    }
}

fn list_matches(list: &[String], value: Option<&str>) -> bool {
    list.is_empty() || value.is_some_and(|v| list.iter().any(|item| item == v))
}

fn invalid(key: &str, message: &str) -> EventError {
    EventError::InvalidFilter {
        key: key.to_string(),
        message: message.to_string(),
    }
}

fn parse_number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, EventError>
where
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|e: T::Err| invalid(key, &format!("`{value}` is not a valid number ({e})")))
}

/// Timestamps are stored as SQLite integers (i64); larger bounds mean "no bound".
pub(crate) fn clamp_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
