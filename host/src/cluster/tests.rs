//! The bounds of cluster settings and messages (the NATS-backed behaviour is tested in
//! `tests/all/cluster`).

use super::events::{ClusterEvent, FRAMING_BYTES, encode, message_limit};
use super::streams::MAX_MESSAGE_BYTES;
use super::{ClusterConfig, ClusterError};
use crate::events::{Event, EventType};
use serde_json::json;
use std::time::Duration;

fn field(c: &ClusterConfig) -> Option<&'static str> {
    match c.validate() {
        Ok(()) => None,
        Err(ClusterError::InvalidConfig { field, .. }) => Some(field),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn every_setting_has_a_bound_just_inside_passes_just_past_names_it() {
    let ok = ClusterConfig::new("nats://127.0.0.1:4222", "h");
    assert_eq!(field(&ok), None);
    let mut c = ok.clone();
    c.heartbeat = Duration::from_millis(100);
    c.host_ttl = Duration::from_millis(200);
    assert_eq!(field(&c), None);
    c.heartbeat = Duration::from_millis(99);
    assert_eq!(field(&c), Some("heartbeat"));
    let mut c = ok.clone();
    c.heartbeat = Duration::from_secs(60);
    c.host_ttl = Duration::from_secs(120);
    assert_eq!(field(&c), None);
    c.heartbeat = Duration::from_millis(60_001);
    assert_eq!(field(&c), Some("heartbeat"));
    let mut c = ok.clone();
    c.host_ttl = c.heartbeat * 2 - Duration::from_millis(1);
    assert_eq!(field(&c), Some("host_ttl"));
    c.host_ttl = Duration::from_secs(600);
    assert_eq!(field(&c), None);
    c.host_ttl = Duration::from_millis(600_001);
    assert_eq!(field(&c), Some("host_ttl"));
    let mut c = ok.clone();
    c.duplicate_window = Duration::from_secs(1);
    assert_eq!(field(&c), None);
    c.duplicate_window = Duration::from_millis(999);
    assert_eq!(field(&c), Some("duplicate_window"));
    c.duplicate_window = Duration::from_secs(3601);
    assert_eq!(field(&c), Some("duplicate_window"));
    let mut c = ok.clone();
    c.request_timeout = Duration::from_millis(99);
    assert_eq!(field(&c), Some("request_timeout"));
    c.request_timeout = Duration::from_secs(60);
    assert_eq!(field(&c), None);
    let mut c = ok.clone();
    c.events_max_bytes = 1 << 20;
    assert_eq!(field(&c), None);
    c.events_max_bytes = (1 << 20) - 1;
    assert_eq!(field(&c), Some("events_max_bytes"));
    c.events_max_bytes = (1 << 40) + 1;
    assert_eq!(field(&c), Some("events_max_bytes"));
    let mut c = ok.clone();
    c.host_name = "h".repeat(65);
    assert_eq!(field(&c), Some("host_name"));
    c.host_name = "h".repeat(64);
    assert_eq!(field(&c), None);
    c.url = " ".into();
    assert_eq!(field(&c), Some("url"));
}

fn wire(data_len: usize) -> ClusterEvent {
    ClusterEvent {
        stream_seq: 0,
        host: "h".into(),
        instance: "i".into(),
        event: Event {
            seq: 1,
            event_type: EventType::Updated,
            context_id: Some("c".into()),
            agent_id: None,
            timestamp_ms: 1,
            priority: 0,
            data: json!("x".repeat(data_len)),
        },
    }
}

#[test]
fn an_event_that_fits_keeps_its_data_and_one_byte_more_is_forwarded_without_it() {
    let limit = MAX_MESSAGE_BYTES - FRAMING_BYTES;
    let overhead = encode(wire(0), MAX_MESSAGE_BYTES).len();
    let inside = encode(wire(limit - overhead), MAX_MESSAGE_BYTES);
    assert_eq!(inside.len(), limit);
    let back: ClusterEvent = serde_json::from_slice(&inside).unwrap();
    assert_eq!(back.event.data.as_str().unwrap().len(), limit - overhead);
    let past = encode(wire(limit - overhead + 1), MAX_MESSAGE_BYTES);
    let back: ClusterEvent = serde_json::from_slice(&past).unwrap();
    assert_eq!(
        back.event.data,
        json!({"dataOmitted": true, "bytes": limit + 1})
    );
}

#[test]
fn the_message_limit_is_the_smallest_of_ours_the_streams_and_the_servers() {
    assert_eq!(message_limit(-1, 8 << 20), MAX_MESSAGE_BYTES);
    assert_eq!(message_limit(0, 8 << 20), MAX_MESSAGE_BYTES);
    assert_eq!(message_limit(1024, 8 << 20), 1024);
    assert_eq!(message_limit(-1, 512 << 10), 512 << 10);
    // A small event fits in a small stream's messages; at the framing, only the stub
    // (no data) is sent.
    let small = encode(wire(10), message_limit(1024, 8 << 20));
    let back: ClusterEvent = serde_json::from_slice(&small).unwrap();
    assert_eq!(back.event.data.as_str().map(str::len), Some(10));
    let stub = encode(wire(10), message_limit(FRAMING_BYTES as i32, 8 << 20));
    let back: ClusterEvent = serde_json::from_slice(&stub).unwrap();
    assert_eq!(back.event.data["dataOmitted"], true);
}
