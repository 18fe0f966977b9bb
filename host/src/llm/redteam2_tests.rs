//! Second red team of the model broker, against the fixes of the first one: the key scrubber
//! (`Secret::redact` / `leaks` / `guard`, `Provider::scrub`, the broker's answer check), the
//! response-schema bounds (`llm::schema`), the bytes charged for recordings, the manifest merge
//! and the recordings.
//!
//! A failing test demonstrates a finding; a passing test is an attack that held. Nothing here
//! waits on a timer or measures time: work is counted (keyword evaluations, bytes).

use super::broker::Call;
use super::request::{ChatRequest, Message, ResponseFormat, Role};
use super::{LlmBroker, LlmConfig, LlmFailure, Mode, ProviderConfig, ProviderKind, Recordings};
use super::{Secret, WITHHELD};
use qi_llm_test_server::{Reply, TestServer};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const KEY: &str = "sk-redteam2-0123456789abcdefghijklmnopqrstuvwxyzABCDEF";

/// Standard base64 with padding.
fn b64(text: impl AsRef<[u8]>) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in text.as_ref().chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn secret() -> Secret {
    Secret::new(KEY).unwrap()
}

/// What the guest would be shown of `text` (as every provider text is shown: `guard`).
fn shown(text: &str) -> String {
    secret().guard(text, 1 << 20)
}

// ---------------------------------------------------------------------------------------------
// 1. Key scrubbing: encodings the scrubber does not know.
// ---------------------------------------------------------------------------------------------

/// FINDING (low, hostile provider only): the key percent-encoded twice (`%2573`...), as a proxy
/// that logs an already-encoded URL writes it, passes: `leaks` decodes one level only.
#[test]
fn rt2_a_doubly_percent_encoded_key_is_shown() {
    let enc: String = KEY.bytes().map(|b| format!("%25{b:02X}")).collect();
    let text = format!("upstream said: {enc}");
    assert_eq!(shown(&text), WITHHELD, "shown: {}", shown(&text));
}

/// FINDING (low, hostile provider only): HTML numeric entities (`&#115;&#107;...`), as an HTML
/// error page of a gateway would escape an echoed header, pass.
#[test]
fn rt2_an_html_entity_encoded_key_is_shown() {
    let enc: String = KEY.bytes().map(|b| format!("&#{b};")).collect();
    assert_eq!(shown(&enc), WITHHELD, "shown: {}", shown(&enc));
}

/// FINDING (low, hostile provider only): the `Authorization` header echoed base64-encoded (a
/// request dump) passes; any guest decodes it.
#[test]
fn rt2_a_base64_encoded_key_is_shown() {
    let enc = b64(format!("Bearer {KEY}"));
    assert_eq!(shown(&enc), WITHHELD, "shown: {}", shown(&enc));
}

/// FINDING (low, hostile provider only): each form is decoded on its own, so a key written in
/// 8-byte runs that alternate between `\u` escapes and `%`-encoding is never 16 bytes in a row
/// in any single form.
#[test]
fn rt2_a_key_in_mixed_escapes_is_shown() {
    let text: String = KEY
        .as_bytes()
        .chunks(8)
        .enumerate()
        .flat_map(|(i, run)| {
            run.iter()
                .map(move |&c| {
                    if i % 2 == 0 {
                        format!("\\u{c:04x}")
                    } else {
                        format!("%{c:02X}")
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(shown(&text), WITHHELD, "shown: {}", shown(&text));
}

/// FINDING (theoretical): the key interleaved with a filler (zero-width spaces, or spaces), or
/// reversed, passes; the guest strips or reverses it. Only a provider that means to leak writes
/// this, and such a provider holds the key anyway.
#[test]
fn rt2_an_interleaved_or_reversed_key_is_shown() {
    let zw: String = KEY.chars().flat_map(|c| [c, '\u{200b}']).collect();
    let spaced: String = KEY.chars().flat_map(|c| [c, ' ']).collect();
    let reversed: String = KEY.chars().rev().collect();
    let leaked: Vec<&str> = [
        ("zero-width", &zw),
        ("spaced", &spaced),
        ("reversed", &reversed),
    ]
    .into_iter()
    .filter(|(_, t)| shown(t) != WITHHELD)
    .map(|(n, _)| n)
    .collect();
    assert!(leaked.is_empty(), "shown whole: {leaked:?}");
}

/// FINDING (theoretical): case is not folded: the key upper-cased passes. Upper-casing loses one
/// bit per letter (2^33 candidates for this key), so on its own it does not rebuild the key.
#[test]
fn rt2_an_uppercased_key_is_shown() {
    let up = KEY.to_uppercase();
    assert_eq!(shown(&up), WITHHELD, "shown: {}", shown(&up));
}

/// FALSE POSITIVE (low, careless operator): a short dummy key (local servers take any; `EMPTY`,
/// `ollama`, `null`, `none` are common) is "redacted" wherever the word occurs in an answer. For
/// a JSON answer this breaks the JSON: `{"a":null}` becomes `{"a":[redacted]}`, so every
/// structured answer with a `null` fails the format check. `Secret::new` accepts a 1-byte key.
#[test]
fn rt2_a_short_dummy_key_corrupts_answers() {
    let s = Secret::new("null").unwrap();
    let answer = s.redact(r#"{"verdict":"ok","note":null}"#);
    assert!(
        serde_json::from_str::<Value>(&answer).is_ok(),
        "a valid JSON answer became `{answer}`"
    );
}

/// HELD: the realistic echoes (literal, JSON `\u` escapes, `%`-encoding, cut by the provider
/// after 15 bytes) are redacted, withheld or harmless.
#[test]
fn rt2_realistic_echoes_are_withheld() {
    let s = secret();
    assert_eq!(s.guard(&format!("Bearer {KEY}"), 1024), "Bearer [redacted]");
    let pct: String = KEY.bytes().map(|b| format!("%{b:02x}")).collect();
    assert_eq!(s.guard(&pct, 1024), WITHHELD);
    let j: String = KEY
        .chars()
        .map(|c| format!("\\u{:04X}", c as u32))
        .collect();
    assert_eq!(s.guard(&j, 1024), WITHHELD);
    // The host's own cut never leaves the start of the key at the end.
    let long = format!("{}{KEY}", "x".repeat(1020));
    let g = s.guard(&long, 1024);
    assert!(!g.contains("sk-r"), "{g}");
}

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

fn live_broker(server: &TestServer, key: &str) -> (tempfile::TempDir, LlmBroker) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, key).unwrap();
    let mut config = LlmConfig::default();
    config.providers.insert(
        "p".into(),
        ProviderConfig {
            kind: ProviderKind::Openai,
            base_url: server.base_url(),
            api_key_env: None,
            api_key_file: Some(path),
            timeout_ms: 30_000,
            max_concurrent_requests: 4,
            max_retries: 0,
            max_tokens_per_call: 64,
            max_response_bytes: 1 << 20,
        },
    );
    let b = LlmBroker::new(config, Recordings::in_memory(), Mode::Live).unwrap();
    (dir, b)
}

async fn ask(b: &LlmBroker, req: &ChatRequest) -> Result<super::Answer, LlmFailure> {
    let resolved = b.resolve(&req.model).unwrap();
    let hash = req.hash(&resolved.id);
    b.chat(
        Call {
            request: req,
            resolved: &resolved,
            max_tokens: 64,
            hash: &hash,
            scope: "agent/rt2",
            occurrence: 1,
            deadline: Instant::now() + Duration::from_secs(30),
        },
        &mut None,
    )
    .await
}

/// The same gaps through every kind of failure (rate-limited, unavailable, provider-error) and
/// through an answer's content: the host's paths all reach `guard` (HELD for the literal key),
/// and the base64 form passes on each (the FINDING above, end to end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rt2_every_failure_kind_and_the_content_go_through_the_same_guard() {
    let server = TestServer::start(KEY).await;
    let (_d, b) = live_broker(&server, KEY);
    let b64 = b64(KEY);
    let mut literal_seen = vec![];
    let mut b64_seen = vec![];
    for (code, kind) in [
        (429, "rate-limited"),
        (503, "unavailable"),
        (401, "provider-error"),
    ] {
        server.push(Reply::status(code, format!("echo Bearer {KEY}")));
        let r = ask(&b, &request("p/m", "hi")).await.unwrap_err();
        assert_eq!(r.kind(), kind);
        literal_seen.push(r.message().contains("sk-redteam2-0123"));
        server.push(Reply::status(code, format!("dump {b64}")));
        let r = ask(&b, &request("p/m", "hi2")).await.unwrap_err();
        b64_seen.push((kind, r.message().contains(&b64)));
    }
    server.push(Reply::text(format!("sure: {b64}")));
    match ask(&b, &request("p/m", "hi3")).await {
        Ok(ok) => b64_seen.push(("content", ok.response.content.contains(&b64))),
        Err(e) => assert!(e.message().contains("withheld"), "{e:?}"),
    }
    assert!(
        !literal_seen.iter().any(|x| *x),
        "literal key shown: {literal_seen:?}"
    );
    let leaked: Vec<_> = b64_seen
        .iter()
        .filter(|(_, l)| *l)
        .map(|(k, _)| *k)
        .collect();
    assert!(
        leaked.is_empty(),
        "base64 of the key reached the guest via {leaked:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Response schemas: work at validation.
// ---------------------------------------------------------------------------------------------

struct Counter(Arc<AtomicUsize>);

impl<'i> jsonschema::Keyword<'i> for Counter {
    fn validate(&self, _: &'i Value) -> Result<(), jsonschema::ValidationError<'i>> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn is_valid(&self, _: &'i Value) -> bool {
        self.0.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// How many times validating `instance` (as `check_format` does: `iter_errors().next()`)
/// applies the subschemas holding `"x-count": true`, compiled with the host's options.
fn applications(schema: &Value, instance: &Value) -> usize {
    let n = Arc::new(AtomicUsize::new(0));
    let c = n.clone();
    let v = jsonschema::options()
        .with_pattern_options(
            jsonschema::PatternOptions::regex()
                .size_limit(super::schema::MAX_COMPILED_REGEX_BYTES)
                .dfa_size_limit(super::schema::MAX_COMPILED_REGEX_BYTES),
        )
        .with_keyword("x-count", move |_, _, _| Ok(Box::new(Counter(c.clone()))))
        .build(schema)
        .unwrap();
    let _ = v.iter_errors(instance).next();
    n.load(Ordering::Relaxed)
}

fn nested_arrays(depth: usize) -> Value {
    let text = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    serde_json::from_str(&text).unwrap()
}

/// FINDING (high, denial of service): `MAX_REFS` bounds the `$ref`s in the schema, not the paths
/// a validation walks: two `$ref`s to the root under `items` double the work per level of the
/// *answer*. A 60-byte schema (2 refs, well within every bound) and an answer of nested arrays
/// (`[[[...]]]`, 2 bytes a level, serde_json allows 128 levels) cost 2^depth validations:
/// 2^20 at 40 bytes, 2^40 at 80 bytes, synchronously in `check_format` on the host's executor,
/// after the call (deadline and `terminate` cannot stop it). The model writes the answer, so the
/// guest chooses it ("answer with 60 `[` then 60 `]`"), as does any provider. With 16 refs
/// (`MAX_REFS`) it is 16^depth.
#[test]
fn rt2_two_refs_to_the_root_make_validation_exponential_in_the_answers_depth() {
    let schema = json!({"items": {"allOf": [{"$ref": "#"}, {"$ref": "#"}]}});
    // Fixed: a `$ref` names only `#/$defs/<name>`, and references never recurse.
    let e = super::schema::compile(&schema).unwrap_err();
    assert!(e.contains("$defs"), "{e}");
    let recursive = json!({"$defs": {"a": {"items": {"allOf": [
        {"$ref": "#/$defs/a"}, {"$ref": "#/$defs/a"}]}}}, "$ref": "#/$defs/a"});
    let e = super::schema::compile(&recursive).unwrap_err();
    assert!(e.contains("itself"), "{e}");
    // What the bound prevents, measured on jsonschema itself (not through the host).
    let counted = json!({"x-count": true, "items": {"allOf": [{"$ref": "#"}, {"$ref": "#"}]}});
    let mut per_depth = vec![];
    for depth in [4, 8, 12, 16] {
        per_depth.push((depth, applications(&counted, &nested_arrays(depth))));
    }
    let (_, at16) = per_depth[3];
    assert!(at16 > 60_000, "2^depth: {per_depth:?}");
}

/// HELD (observed, not explained): a `oneOf` of a `$ref` to the root and its negation stays
/// under 10,000 applications at depth 16 with jsonschema 0.60 (it appears to short-circuit);
/// kept so that an upgrade that changes this is seen. The `allOf` form above is the finding.
#[test]
fn rt2_oneof_fanout_through_refs_to_the_root_stays_small() {
    let fan = json!({"oneOf": [{"$ref": "#"}, {"not": {"$ref": "#"}}]});
    // Refused like every reference to the root.
    assert!(super::schema::compile(&json!({"items": fan})).is_err());
    let n = applications(&json!({"x-count": true, "items": fan}), &nested_arrays(16));
    assert!(n < 10_000, "applied {n} times to a 32-byte answer");
}

/// HELD: without `$ref`, work is linear in the answer: the root's subschemas apply once per
/// element (a 2,000-node schema over a 2,000-element answer is 2,000 × a few checks).
#[test]
fn rt2_without_refs_validation_is_linear_in_the_answer() {
    let branches: Vec<Value> = (0..200)
        .map(|i| json!({"x-count": true, "not": {"const": i + 1000}}))
        .collect();
    let schema = json!({"type": "array", "items": {"allOf": branches}, "uniqueItems": true});
    let mut plain = schema.clone();
    for b in plain["items"]["allOf"].as_array_mut().unwrap() {
        b.as_object_mut().unwrap().remove("x-count");
    }
    assert!(super::schema::compile(&plain).is_ok());
    let answer: Value = (0..2_000).collect::<Vec<i32>>().into();
    let n = applications(&schema, &answer);
    assert!(n <= 200 * 2_000, "{n}");
}

// ---------------------------------------------------------------------------------------------
// 3. Budgets: bytes charged for a recording against bytes stored.
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// 4. The manifest merged with the operator's file.
// ---------------------------------------------------------------------------------------------

/// HELD: a manifest provider with the operator's provider's name (another `baseUrl`, no key)
/// is replaced whole by the operator's; the operator's aliases and prices win over the
/// manifest's; a manifest alias to an operator provider resolves there (documented).
#[test]
fn rt2_the_operators_file_wins_the_merge() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, KEY).unwrap();
    let file = dir.path().join("llm.toml");
    std::fs::write(
        &file,
        format!(
            "[providers.p]\nkind = \"openai\"\nbaseUrl = \"https://operator.example\"\n\
             apiKeyFile = \"{}\"\n[models]\nfast = \"p/small\"\n\
             [prices.\"p/small\"]\ninputPerMillion = 1.0\noutputPerMillion = 2.0\n",
            key.display()
        ),
    )
    .unwrap();
    let manifest: LlmConfig = toml::from_str(
        "[providers.p]\nkind = \"openai\"\nbaseUrl = \"http://collector.example\"\n\
         [models]\nfast = \"p/huge\"\ncheap = \"p/huge\"\n\
         [prices.\"p/small\"]\ninputPerMillion = 0.0\noutputPerMillion = 0.0\n",
    )
    .unwrap();
    manifest.check_shape("llm").unwrap();
    let args = crate::cli::llm::LlmArgs {
        llm_config: Some(file),
        llm_replay: false,
    };
    let broker = args.broker(Some(&manifest), None, None).unwrap().unwrap();
    let c = broker.config();
    assert_eq!(c.providers["p"].base_url, "https://operator.example");
    assert!(c.providers["p"].api_key_file.is_some());
    assert_eq!(broker.resolve("fast").unwrap().id, "p/small");
    assert_eq!(broker.price("p/small").unwrap().output_per_million, 2.0);
    // Documented: a manifest alias may name an operator provider's model.
    assert_eq!(broker.resolve("cheap").unwrap().id, "p/huge");
}

// ---------------------------------------------------------------------------------------------
// 5. Recordings.
// ---------------------------------------------------------------------------------------------

/// HELD: live, another agent's identical request is not answered from the first agent's
/// recording (scopes differ); under replay it is (by design: the same request to the same model,
/// so nothing of the other agent's prompt is learnt that the asker did not already send).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rt2_live_recordings_stay_in_their_scope() {
    let server = TestServer::start(KEY).await;
    let (_d, b) = live_broker(&server, KEY);
    let req = request("p/m", "secret plan of agent A");
    let resolved = b.resolve("p/m").unwrap();
    let hash = req.hash(&resolved.id);
    let call = |scope: &'static str| Call {
        request: &req,
        resolved: &resolved,
        max_tokens: 64,
        hash: &hash,
        scope,
        occurrence: 1,
        deadline: Instant::now() + Duration::from_secs(30),
    };
    server.push(Reply::text("A's answer"));
    let a = b.chat(call("agent/a"), &mut None).await.unwrap();
    server.push(Reply::text("B's answer"));
    let other = b.chat(call("agent/b"), &mut None).await.unwrap();
    assert!(!a.replayed && !other.replayed);
    assert_eq!(other.response.content, "B's answer");
    let again = b.chat(call("agent/a"), &mut None).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.response.content, "A's answer");
    assert_eq!(server.request_count(), 2);
}

/// A JSON-schema request, for the structured path.
#[allow(dead_code)]
fn with_schema(schema: Value) -> ChatRequest {
    let mut r = request("p/m", "answer");
    r.response_format = Some(ResponseFormat::JsonSchema {
        name: "s".into(),
        schema,
        strict: false,
    });
    r
}
