//! The server through real HTTP/1.1 on loopback: raw requests written on a `TcpStream`.

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Reply, TestServer};

const KEY: &str = "sk-test-key";
const OPENAI: &str = "/v1/chat/completions";
const ANTHROPIC: &str = "/v1/messages";

/// A response as read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        let mut matching = self.headers.iter().filter(|(n, _)| n == name);
        matching.next().map(|(_, value)| value.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// Sends one request on a new connection (`connection: close`) and reads the whole answer;
/// `None` when the server closed the connection without answering.
async fn exchange(
    server_addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<Answer> {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {server_addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    let mut stream = TcpStream::connect(server_addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    // A connection the server drops may end in a reset rather than an orderly close.
    let _ = stream.read_to_end(&mut raw).await;
    if raw.is_empty() {
        return None;
    }
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .expect("a complete response head");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    let answer = Answer {
        status: status.parse().unwrap(),
        headers,
        body: body.to_owned(),
    };
    let length = answer.header("content-length").expect("a sized body");
    assert_eq!(length.parse::<usize>().unwrap(), answer.body.len());
    Some(answer)
}

async fn post(server: &TestServer, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    exchange(server.addr(), "POST", path, headers, body)
        .await
        .expect("an answer")
}

async fn openai(server: &TestServer, body: &Value) -> Answer {
    let bearer = format!("Bearer {KEY}");
    post(
        server,
        OPENAI,
        &[("authorization", &bearer)],
        &body.to_string(),
    )
    .await
}

async fn anthropic(server: &TestServer, body: &Value) -> Answer {
    let headers = [("x-api-key", KEY), ("anthropic-version", "2023-06-01")];
    post(server, ANTHROPIC, &headers, &body.to_string()).await
}

fn chat(user_text: &str) -> Value {
    json!({"model": "test-model", "messages": [{"role": "user", "content": user_text}]})
}

#[tokio::test]
async fn openai_text_and_tool_calls_have_the_chat_completion_shape() {
    let server = TestServer::start(KEY).await;
    server.push(Reply::Text {
        content: "hello there".into(),
        input_tokens: 7,
        output_tokens: 2,
    });
    server.push(Reply::ToolCalls {
        calls: vec![
            ("read_file".into(), json!({"path": "a.txt"})),
            ("list".into(), json!({})),
        ],
        input_tokens: 11,
        output_tokens: 5,
    });

    let text = openai(&server, &chat("hi")).await;
    assert_eq!(text.status, 200);
    assert_eq!(text.header("content-type"), Some("application/json"));
    assert_eq!(
        text.json(),
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "test-model",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "hello there"},
                "finish_reason": "stop",
            }],
            "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
        })
    );

    let calls = openai(&server, &chat("go")).await.json();
    assert_eq!(calls["choices"][0]["finish_reason"], "tool_calls");
    let message = &calls["choices"][0]["message"];
    assert_eq!(message["content"], Value::Null);
    assert_eq!(
        message["tool_calls"],
        json!([
            {"id": "call_3", "type": "function",
             "function": {"name": "read_file", "arguments": r#"{"path":"a.txt"}"#}},
            {"id": "call_4", "type": "function", "function": {"name": "list", "arguments": "{}"}},
        ])
    );
    assert_eq!(calls["usage"]["total_tokens"], 16);

    let recorded = server.requests();
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[0].path, OPENAI);
    assert_eq!(
        recorded[0].authorization.as_deref(),
        Some("Bearer sk-test-key")
    );
    assert_eq!(recorded[0].api_key, None);
    assert_eq!(recorded[1].body, chat("go"));
}

#[tokio::test]
async fn anthropic_text_and_tool_use_have_the_message_shape() {
    let server = TestServer::start(KEY).await;
    server.push(Reply::text("one two three"));
    server.push(Reply::tool_call("search", json!({"query": "rust"}), 20, 4));

    let text = anthropic(&server, &chat("abcdefgh")).await;
    assert_eq!(text.status, 200);
    assert_eq!(
        text.json(),
        json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "test-model",
            "content": [{"type": "text", "text": "one two three"}],
            "stop_reason": "end_turn", "stop_sequence": null,
            // 1 + 8 bytes / 4; three words.
            "usage": {"input_tokens": 3, "output_tokens": 3},
        })
    );

    let tool_use = anthropic(&server, &chat("go")).await.json();
    assert_eq!(tool_use["stop_reason"], "tool_use");
    assert_eq!(
        tool_use["content"],
        json!([{"type": "tool_use", "id": "toolu_3", "name": "search", "input": {"query": "rust"}}])
    );
    assert_eq!(
        tool_use["usage"],
        json!({"input_tokens": 20, "output_tokens": 4})
    );

    let recorded = &server.requests()[0];
    assert_eq!(recorded.path, ANTHROPIC);
    assert_eq!(recorded.api_key.as_deref(), Some(KEY));
    assert_eq!(recorded.anthropic_version.as_deref(), Some("2023-06-01"));
    assert_eq!(recorded.authorization, None);
}

#[tokio::test]
async fn a_wrong_or_missing_key_is_refused_in_the_format_of_the_request() {
    let server = TestServer::start(KEY).await;
    server.push(Reply::text("kept for the authorized request"));
    let body = chat("hi").to_string();

    let wrong = post(&server, OPENAI, &[("authorization", "Bearer nope")], &body).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"]["code"], "invalid_api_key");
    assert_eq!(wrong.json()["error"]["type"], "invalid_request_error");
    // Each format reads only its own header.
    let other_header = post(&server, OPENAI, &[("x-api-key", KEY)], &body).await;
    assert_eq!(other_header.status, 401);
    let not_bearer = post(&server, OPENAI, &[("authorization", KEY)], &body).await;
    assert_eq!(not_bearer.status, 401);

    let missing = post(&server, ANTHROPIC, &[], &body).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.json()["type"], "error");
    assert_eq!(missing.json()["error"]["type"], "authentication_error");
    let bearer = format!("Bearer {KEY}");
    let other_header = post(&server, ANTHROPIC, &[("authorization", &bearer)], &body).await;
    assert_eq!(other_header.status, 401);

    assert_eq!(server.request_count(), 5, "refused requests are recorded");
    let accepted = anthropic(&server, &chat("hi")).await.json();
    assert_eq!(
        accepted["content"][0]["text"],
        "kept for the authorized request"
    );
}

#[tokio::test]
async fn scripted_replies_are_served_in_order_to_either_format_then_the_echo() {
    let server = TestServer::start(KEY).await;
    for content in ["first", "second", "third"] {
        server.push(Reply::text(content));
    }
    let first = openai(&server, &chat("a")).await.json();
    let second = anthropic(&server, &chat("b")).await.json();
    let third = openai(&server, &chat("c")).await.json();
    let fourth = anthropic(&server, &chat("d")).await.json();
    assert_eq!(first["choices"][0]["message"]["content"], "first");
    assert_eq!(second["content"][0]["text"], "second");
    assert_eq!(third["choices"][0]["message"]["content"], "third");
    assert_eq!(fourth["content"][0]["text"], "echo: d");
}

#[tokio::test]
async fn the_echo_counts_tokens_and_is_cut_at_max_tokens() {
    let server = TestServer::start(KEY).await;
    // 14 + 18 + 4 bytes of text: input_tokens = 1 + 36 / 4 = 10 in both formats.
    let openai_messages = json!([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "one two three four"}]},
        {"role": "assistant", "content": null,
         "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "done"},
    ]);
    let anthropic_messages = json!([
        {"role": "user", "content": "one two three four"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "c", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c", "content": "done"}]},
    ]);

    let full = openai(&server, &json!({"model": "m", "messages": openai_messages})).await;
    let full = full.json();
    assert_eq!(
        full["choices"][0]["message"]["content"],
        "echo: one two three four"
    );
    assert_eq!(full["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        full["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})
    );

    let request = json!({"model": "m", "max_completion_tokens": 3, "messages": openai_messages});
    let cut = openai(&server, &request).await.json();
    assert_eq!(cut["choices"][0]["message"]["content"], "echo: one two");
    assert_eq!(cut["choices"][0]["finish_reason"], "length");
    assert_eq!(cut["usage"]["completion_tokens"], 3);

    let request = json!({"model": "m", "max_tokens": 5, "messages": openai_messages});
    let just_fits = openai(&server, &request).await.json();
    assert_eq!(just_fits["choices"][0]["finish_reason"], "stop");

    let request = json!({"model": "m", "max_tokens": 2, "system": "You are terse.",
                         "messages": anthropic_messages});
    let cut = anthropic(&server, &request).await.json();
    assert_eq!(
        cut["content"],
        json!([{"type": "text", "text": "echo: one"}])
    );
    assert_eq!(cut["stop_reason"], "max_tokens");
    assert_eq!(
        cut["usage"],
        json!({"input_tokens": 10, "output_tokens": 2})
    );

    let request = json!({"model": "m", "max_tokens": 1024, "system": "You are terse.",
                         "messages": anthropic_messages});
    let full = anthropic(&server, &request).await.json();
    assert_eq!(full["content"][0]["text"], "echo: one two three four");
    assert_eq!(full["stop_reason"], "end_turn");
}

#[tokio::test]
async fn structured_output_requests_get_a_minimal_valid_value() {
    let server = TestServer::start(KEY).await;
    let schema = json!({
        "type": "object",
        "properties": {
            "verdict": {"type": "string", "enum": ["approve", "reject"]},
            "notes": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["verdict", "notes"],
        "additionalProperties": false,
    });
    let expected = json!({"verdict": "approve", "notes": []});

    let mut request = chat("review this");
    request["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "review", "strict": true, "schema": schema}});
    let answer = openai(&server, &request).await.json();
    let content = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(serde_json::from_str::<Value>(content).unwrap(), expected);
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");

    let mut request = chat("anything");
    request["response_format"] = json!({"type": "json_object"});
    let answer = openai(&server, &request).await.json();
    assert_eq!(answer["choices"][0]["message"]["content"], "{}");

    let mut request = chat("review this");
    request["max_tokens"] = json!(1024);
    request["tools"] = json!([
        {"name": "other", "input_schema": {"type": "object"}},
        {"name": "review", "description": "d", "input_schema": schema},
    ]);
    request["tool_choice"] = json!({"type": "tool", "name": "review"});
    let answer = anthropic(&server, &request).await.json();
    assert_eq!(answer["stop_reason"], "tool_use");
    assert_eq!(answer["content"].as_array().unwrap().len(), 1);
    assert_eq!(answer["content"][0]["type"], "tool_use");
    assert_eq!(answer["content"][0]["name"], "review");
    assert_eq!(answer["content"][0]["input"], expected);

    // `auto` does not force the tool: the echo again.
    request["tool_choice"] = json!({"type": "auto"});
    let answer = anthropic(&server, &request).await.json();
    assert_eq!(answer["content"][0]["text"], "echo: review this");
}

#[tokio::test]
async fn status_replies_carry_retry_after_verbatim() {
    let server = TestServer::start(KEY).await;
    let limited = r#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#;
    server.push(Reply::status_with_retry_after(429, "7", limited));
    server.push(Reply::status(500, "upstream exploded"));

    let first = openai(&server, &chat("a")).await;
    assert_eq!(first.status, 429);
    assert_eq!(first.header("retry-after"), Some("7"));
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert_eq!(first.body, limited);

    let second = anthropic(&server, &chat("b")).await;
    assert_eq!(second.status, 500);
    assert_eq!(second.header("retry-after"), None);
    assert_eq!(
        second.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(second.body, "upstream exploded");
}

#[tokio::test]
#[should_panic(expected = "Reply::Status code 42 is not an HTTP status")]
async fn pushing_an_impossible_status_panics_at_the_push() {
    let server = TestServer::start(KEY).await;
    server.push(Reply::status(42, ""));
}

#[tokio::test]
async fn hung_replies_are_recorded_and_answer_503_once_released() {
    let server = TestServer::start(KEY).await;
    server.push(Reply::Hang);
    server.push(Reply::Hang);
    let addr = server.addr();
    let bearer = format!("Bearer {KEY}");
    let body = chat("wait").to_string();
    let hung_openai = tokio::spawn({
        let body = body.clone();
        async move { exchange(addr, "POST", OPENAI, &[("authorization", &bearer)], &body).await }
    });
    let hung_anthropic = tokio::spawn(async move {
        exchange(addr, "POST", ANTHROPIC, &[("x-api-key", KEY)], &body).await
    });

    // On this single-threaded test runtime a handler runs from recording its request to taking
    // its reply without yielding, so both hung requests hold a `Hang` once they are counted and
    // the request below gets the echo.
    server.wait_for_requests(2).await;
    assert_eq!(server.request_count(), 2);
    assert!(!hung_openai.is_finished() && !hung_anthropic.is_finished());
    // The hung requests do not hold up others.
    let echo = openai(&server, &chat("meanwhile")).await.json();
    assert_eq!(echo["choices"][0]["message"]["content"], "echo: meanwhile");

    server.release_hung();
    let openai_answer = hung_openai.await.unwrap().expect("an answer");
    assert_eq!(openai_answer.status, 503);
    assert_eq!(openai_answer.json()["error"]["type"], "server_error");
    let anthropic_answer = hung_anthropic.await.unwrap().expect("an answer");
    assert_eq!(anthropic_answer.status, 503);
    assert_eq!(anthropic_answer.json()["type"], "error");
}

#[tokio::test]
async fn stopping_closes_hung_connections_without_an_answer_and_the_listener() {
    let server = TestServer::start(KEY).await;
    server.push(Reply::Hang);
    let addr = server.addr();
    let hung = tokio::spawn(async move {
        exchange(
            addr,
            "POST",
            ANTHROPIC,
            &[("x-api-key", KEY)],
            &chat("x").to_string(),
        )
        .await
    });
    server.wait_for_requests(1).await;

    server.stop().await;
    assert!(hung.await.unwrap().is_none(), "no answer after stop");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn dropping_the_server_closes_hung_connections() {
    let server = TestServer::start(KEY).await;
    server.push(Reply::Hang);
    let addr = server.addr();
    let hung = tokio::spawn(async move {
        exchange(
            addr,
            "POST",
            ANTHROPIC,
            &[("x-api-key", KEY)],
            &chat("x").to_string(),
        )
        .await
    });
    server.wait_for_requests(1).await;

    drop(server);
    assert!(hung.await.unwrap().is_none(), "no answer after drop");
}

#[tokio::test]
async fn echo_credentials_repeats_the_headers_the_client_sent() {
    let server = TestServer::start(KEY).await;
    server.push(Reply::EchoCredentials);
    server.push(Reply::EchoCredentials);

    let openai_answer = openai(&server, &chat("a")).await;
    assert_eq!(openai_answer.status, 401);
    let message = openai_answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("authorization=Bearer sk-test-key"),
        "{message}"
    );
    assert!(message.contains("x-api-key=<none>"), "{message}");

    let anthropic_answer = anthropic(&server, &chat("b")).await;
    assert_eq!(anthropic_answer.status, 401);
    assert_eq!(
        anthropic_answer.json()["error"]["type"],
        "authentication_error"
    );
    let message = anthropic_answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("x-api-key=sk-test-key"), "{message}");
}

#[tokio::test]
async fn malformed_large_and_length_replies() {
    let server = TestServer::start(KEY).await;
    server.push(Reply::Malformed("{\"id\": ".into()));
    server.push(Reply::Large(100_000));
    server.push(Reply::length("cut short"));
    server.push(Reply::json(json!({"answer": 42})));

    let malformed = openai(&server, &chat("a")).await;
    assert_eq!(malformed.status, 200);
    assert_eq!(malformed.body, "{\"id\": ");

    let large = anthropic(&server, &chat("b")).await.json();
    let content = large["content"][0]["text"].as_str().unwrap();
    assert_eq!(content.len(), 100_000);
    assert_eq!(
        large["usage"]["output_tokens"],
        content.split_whitespace().count()
    );

    let length = openai(&server, &chat("c")).await.json();
    assert_eq!(length["choices"][0]["message"]["content"], "cut short");
    assert_eq!(length["choices"][0]["finish_reason"], "length");
    assert_eq!(length["usage"]["completion_tokens"], 2);

    let json_reply = anthropic(&server, &chat("d")).await.json();
    assert_eq!(json_reply["content"][0]["text"], r#"{"answer":42}"#);
}

#[tokio::test]
async fn bodies_that_are_not_json_and_unknown_routes_are_refused_and_recorded() {
    let server = TestServer::start(KEY).await;
    server.push(Reply::text("still queued"));
    let bearer = format!("Bearer {KEY}");

    let not_json = post(&server, OPENAI, &[("authorization", &bearer)], "hello?").await;
    assert_eq!(not_json.status, 400);
    assert_eq!(not_json.json()["error"]["type"], "invalid_request_error");
    let not_json = post(&server, ANTHROPIC, &[("x-api-key", KEY)], "").await;
    assert_eq!(not_json.status, 400);
    assert_eq!(not_json.json()["error"]["type"], "invalid_request_error");

    let wrong_method = exchange(
        server.addr(),
        "GET",
        OPENAI,
        &[("authorization", &bearer)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(wrong_method.status, 405);
    let unknown = post(
        &server,
        "/v1/completions",
        &[("authorization", &bearer)],
        "{}",
    )
    .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["code"], "unknown_url");

    let recorded = server.requests();
    assert_eq!(recorded.len(), 4);
    assert_eq!(recorded[0].body, json!("hello?"));
    assert_eq!(recorded[3].path, "/v1/completions");
    let answer = openai(&server, &chat("x")).await.json();
    assert_eq!(answer["choices"][0]["message"]["content"], "still queued");
}
