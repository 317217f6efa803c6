//! The kitchen as a gateway, against a scripted upstream (`scripted.rs`): requests go as the
//! client sent them, answers come back as the upstream wrote them, errors pass or are retried
//! as they should, the timeouts hold, and a client that leaves closes the upstream's
//! connection. Every test runs on the paused clock: the scripted upstream's pauses are virtual
//! time, and what the sockets carry is read before the clock moves on.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::value::RawValue;
use tokio::time::Instant;

use super::scripted::{Answer, Scripted};
use super::*;

/// A kitchen in front of `upstream`, with these flags.
async fn gateway(upstream: &Scripted, flags: &[&str]) -> Running {
    let url = upstream.url();
    let mut all = vec!["--upstream", url.as_str()];
    all.extend_from_slice(flags);
    kitchen(&all).await
}

/// Posts a raw JSON body to `path`.
async fn post_raw(
    addr: SocketAddr,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Response<Incoming> {
    let mut request = Request::post(path).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .unwrap();
    send(addr, request).await.0
}

/// A JSON object's members, each as its JSON text.
fn members(json: &[u8]) -> HashMap<String, Box<RawValue>> {
    serde_json::from_slice(json).unwrap()
}

/// The chunks of a streamed tool call, as an OpenAI upstream writes them with
/// `include_usage`: `"usage":null` in every chunk but the last, which has no choices.
const TOOL_CALL_CHUNKS: [&str; 5] = [
    r#"{"id":"chatcmpl-up1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_50cad350e4","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_W1","type":"function","function":{"name":"get_weather","arguments":""}}],"refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    r#"{"id":"chatcmpl-up1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_50cad350e4","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    r#"{"id":"chatcmpl-up1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_50cad350e4","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    r#"{"id":"chatcmpl-up1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_50cad350e4","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}],"usage":null}"#,
    r#"{"id":"chatcmpl-up1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_50cad350e4","choices":[],"usage":{"prompt_tokens":82,"completion_tokens":17,"total_tokens":99,"completion_tokens_details":{"reasoning_tokens":0}}}"#,
];

/// The tool call streamed, then `[DONE]`.
fn tool_call_stream() -> Answer {
    TOOL_CALL_CHUNKS
        .iter()
        .fold(Answer::sse(), |answer, chunk| answer.event(chunk))
        .done()
}

/// A short streamed answer: one content chunk, the finish, the usage.
pub(super) fn short_stream(content: &str) -> Answer {
    let chunk = json!({
        "id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 0, "model": "m",
        "choices": [{ "index": 0, "delta": { "content": content }, "finish_reason": null }],
    });
    let finish = json!({
        "id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 0, "model": "m",
        "choices": [{ "index": 0, "delta": {}, "finish_reason": "stop" }],
    });
    let usage = json!({
        "id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 0, "model": "m",
        "choices": [], "usage": { "prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4 },
    });
    Answer::sse()
        .event(&chunk.to_string())
        .event(&finish.to_string())
        .event(&usage.to_string())
        .done()
}

pub(super) fn streamed_order() -> Value {
    json!({
        "model": "gpt-4o",
        "messages": [{ "role": "user", "content": "the weather in Paris?" }],
        "stream": true,
    })
}

#[tokio::test(start_paused = true)]
async fn every_field_reaches_the_upstream_byte_identical_but_those_the_kitchen_sets() {
    let upstream = Scripted::start(vec![
        short_stream("ok"),
        Answer::json(r#"{"choices":[],"usage":null}"#),
    ])
    .await;
    let proxy = gateway(&upstream, &["--model-alias", "fast=gpt-4o-mini"]).await;
    // Spacing, escapes, number spellings, key order and unknown members, as a client wrote
    // them; `model` is an alias, and the stream does not ask for the usage chunk.
    let body = r#"{ "model" : "fast",
        "messages":[{"role":"user","content":"caf\u00e9 \"quoted\"","name":"ann"}],
        "temperature":0.70, "top_p":1e0, "seed":-42, "stop":["\n\n"],
        "tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}],
        "tool_choice":"auto", "parallel_tool_calls":false, "response_format":{"type":"json_object"},
        "logprobs":true, "top_logprobs":2, "logit_bias":{"50256":-100}, "user":"u-1",
        "x_vendor_extension":{"deep":[1, 2.50, {"k":null}]},
        "max_completion_tokens":64, "stream":true, "stream_options":{"include_obfuscation":false} }"#;
    let response = post_raw(proxy.addr, "/v1/chat/completions", body, &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(text(response).await.ends_with("data: [DONE]\n\n"));

    let seen = &upstream.seen()[0];
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/v1/chat/completions")
    );
    let sent = members(body.as_bytes());
    let got = members(&seen.body);
    assert_eq!(
        got.keys().collect::<std::collections::BTreeSet<_>>(),
        sent.keys().collect(),
        "no member added or lost"
    );
    for (key, value) in &sent {
        match key.as_str() {
            "model" => assert_eq!(got[key].get(), r#""gpt-4o-mini""#),
            "stream_options" => assert_eq!(
                got[key].get(),
                r#"{"include_obfuscation":false,"include_usage":true}"#
            ),
            _ => assert_eq!(got[key].get(), value.get(), "{key} changed"),
        }
    }
    // The members keep their order.
    let at = |json: &str, key: &str| json.find(&format!("\"{key}\"")).unwrap();
    let upstream_body = std::str::from_utf8(&seen.body).unwrap();
    let mut keys: Vec<&String> = sent.keys().collect();
    keys.sort_by_key(|key| at(body, key));
    assert!(
        keys.windows(2)
            .all(|pair| at(upstream_body, pair[0]) < at(upstream_body, pair[1])),
        "{upstream_body}"
    );

    // Nothing to change (no alias, not a stream): the body goes byte for byte, spacing and all.
    let body = r#"{"model": "gpt-4o",  "messages": [{"role": "user", "content": "hi"}], "n": 1, "x": [1.0e2]}"#;
    let response = post_raw(proxy.addr, "/v1/chat/completions", body, &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(&upstream.seen()[1].body[..], body.as_bytes());
}

#[tokio::test(start_paused = true)]
async fn no_max_tokens_is_invented() {
    let upstream = Scripted::start(vec![short_stream("a"), short_stream("b")]).await;
    let proxy = gateway(&upstream, &["--default-max-tokens", "100"]).await;
    for body in [
        streamed_order(),
        json!({ "model": "m", "messages": [{ "role": "user", "content": "hi" }] }),
    ] {
        let response = post(proxy.addr, &body, &[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        text(response).await;
    }
    for seen in upstream.seen() {
        let sent = seen.json();
        assert!(sent.get("max_tokens").is_none(), "{sent}");
        assert!(sent.get("max_completion_tokens").is_none(), "{sent}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_streamed_tool_call_passes_as_written_and_the_upstreams_usage_settles() {
    let upstream = Scripted::start(vec![
        tool_call_stream(),
        tool_call_stream(),
        tool_call_stream(),
    ])
    .await;
    // 150 tokens a minute. Each request reserves 4 + 20; each answer settles with the
    // upstream's 99 (not the 4 + 4 chunks a count would make): two answers exhaust the minute.
    let proxy = gateway(
        &upstream,
        &[
            "--tokens-per-min",
            "150",
            "--requests-per-min",
            "0",
            "--default-max-tokens",
            "20",
        ],
    )
    .await;

    // Asked for the usage: every chunk, as the upstream wrote it, then [DONE].
    let mut body = streamed_order();
    body["stream_options"] = json!({ "include_usage": true });
    let response = post(proxy.addr, &body, &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    let events = sse_data(&text(response).await);
    let mut expected: Vec<&str> = TOOL_CALL_CHUNKS.to_vec();
    expected.push("[DONE]");
    assert_eq!(events, expected);

    // Not asked: the same, but for the usage chunk.
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    let events = sse_data(&text(response).await);
    let mut expected: Vec<&str> = TOOL_CALL_CHUNKS[..4].to_vec();
    expected.push("[DONE]");
    assert_eq!(events, expected);

    assert_eq!(
        metric(proxy.addr, "kitchen_tokens_generated_total").await,
        34.0
    );
    assert_eq!(metric(proxy.addr, "kitchen_usage_counted_total").await, 0.0);
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(upstream.seen().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_whole_tool_call_passes_whole() {
    let answer = r#"{"id":"chatcmpl-up2","object":"chat.completion","created":1700000000,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_50cad350e4","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_W1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}],"refusal":null},"logprobs":null,"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":82,"completion_tokens":17,"total_tokens":99}}"#;
    let upstream = Scripted::start(vec![Answer::whole(
        200,
        &[("content-type", "application/json; charset=utf-8")],
        answer,
    )])
    .await;
    let proxy = gateway(&upstream, &[]).await;
    let mut body = streamed_order();
    body["stream"] = json!(false);
    let response = post(proxy.addr, &body, &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    assert_eq!(text(response).await, answer);
    assert_eq!(upstream.seen()[0].json()["stream"], json!(false));
    assert_eq!(
        metric(proxy.addr, "kitchen_tokens_generated_total").await,
        17.0
    );
}

#[tokio::test(start_paused = true)]
async fn an_upstream_400_reaches_the_client_with_its_status_and_body() {
    let error = r#"{"error":{"message":"This model's maximum context length is 128000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
    let upstream = Scripted::start(vec![Answer::whole(
        400,
        &[("content-type", "application/json")],
        error,
    )])
    .await;
    let proxy = gateway(&upstream, &["--max-attempts", "3"]).await;
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(text(response).await, error);
    // The request's fault: not retried, and nothing for the breaker.
    assert_eq!(upstream.seen().len(), 1);
    assert_eq!(upstream_breaker(&proxy, 0).metrics().calls, 0);
    assert_eq!(metric(proxy.addr, "kitchen_retries_total").await, 0.0);
}

#[tokio::test(start_paused = true)]
async fn a_429_is_retried_after_its_retry_after() {
    let busy = r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
    let upstream = Scripted::start(vec![
        Answer::whole(
            429,
            &[("content-type", "application/json"), ("retry-after", "3")],
            busy,
        ),
        short_stream("after the wait"),
    ])
    .await;
    let proxy = gateway(&upstream, &["--max-attempts", "3"]).await;
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(text(response).await.contains("after the wait"));
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    let waited = seen[1].at - seen[0].at;
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_millis(3500),
        "{waited:?}"
    );

    // Throttled on every attempt: the client gets the upstream's last answer.
    for _ in 0..2 {
        upstream.push(Answer::whole(
            429,
            &[("content-type", "application/json"), ("retry-after", "1")],
            busy,
        ));
    }
    let proxy = gateway(&upstream, &["--max-attempts", "2"]).await;
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(text(response).await, busy);
    assert_eq!(upstream.seen().len(), 4);

    // The upstream cools down for the last 429's second: a request meanwhile gets a 503
    // saying when to come back, and the upstream sees nothing of it.
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(error_of(response).await["code"], "upstreams_unavailable");
    assert_eq!(upstream.seen().len(), 4);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A Retry-After past the request's deadline is not waited for: the 429 passes at once.
    upstream.push(Answer::whole(
        429,
        &[("content-type", "application/json"), ("retry-after", "30")],
        busy,
    ));
    let start = Instant::now();
    let response = post(
        proxy.addr,
        &streamed_order(),
        &[("x-request-timeout-ms", "10000")],
    )
    .await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_5xx_on_every_attempt_reaches_the_client_and_the_breaker() {
    let down = r#"{"error":{"message":"The server is overloaded","type":"server_error"}}"#;
    let upstream = Scripted::start(vec![
        Answer::whole(503, &[("content-type", "application/json")], down),
        Answer::whole(503, &[("content-type", "application/json")], down),
    ])
    .await;
    let proxy = gateway(&upstream, &["--max-attempts", "2"]).await;
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(text(response).await, down);
    assert_eq!(upstream.seen().len(), 2);
    // Each attempt is a failure of the upstream's breaker.
    assert_eq!(upstream_breaker(&proxy, 0).metrics().failed_calls, 2);
}

#[tokio::test(start_paused = true)]
async fn a_truncated_stream_ends_in_an_error_event() {
    let chunk = r#"{"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":[{"index":0,"delta":{"content":"half"},"finish_reason":null}]}"#;
    let upstream = Scripted::start(vec![
        // The body ends cleanly, but without `[DONE]`.
        Answer::sse().event(chunk).end(),
        // The connection is cut mid-body.
        Answer::sse().event(chunk).raw(b"data: {\"id\"").cut(),
    ])
    .await;
    let proxy = gateway(&upstream, &[]).await;
    for round in 0..2 {
        let response = post(proxy.addr, &streamed_order(), &[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        let events = sse_data(&text(response).await);
        assert_eq!(events[0], chunk, "round {round}");
        assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
        let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
        assert_eq!(last["error"]["code"], "upstream_error", "{events:?}");
    }
    // Failures after the commit point: recorded on the breaker, never retried.
    assert_eq!(upstream_breaker(&proxy, 0).metrics().failed_calls, 2);
    assert_eq!(upstream.seen().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_character_split_across_packets_arrives_intact() {
    // "é" is C3 A9, the cook emoji F0 9F 8D B3: each split between two packets.
    let data = r#"{"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":[{"index":0,"delta":{"content":"café 🍳"},"finish_reason":null}]}"#;
    let bytes = format!("data: {data}\n\n").into_bytes();
    let e_acute = bytes.windows(2).position(|w| w == [0xC3, 0xA9]).unwrap();
    let cook = bytes
        .windows(4)
        .position(|w| w == [0xF0, 0x9F, 0x8D, 0xB3])
        .unwrap();
    let pause = Duration::from_millis(10);
    let upstream = Scripted::start(vec![
        Answer::sse()
            .raw(&bytes[..=e_acute])
            .pause(pause)
            .raw(&bytes[e_acute + 1..cook + 2])
            .pause(pause)
            .raw(&bytes[cook + 2..])
            .done(),
    ])
    .await;
    let proxy = gateway(&upstream, &[]).await;
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    let events = sse_data(&text(response).await);
    assert_eq!(events, [data, "[DONE]"]);
}

#[tokio::test(start_paused = true)]
async fn a_client_hang_up_closes_the_upstream_connection_within_a_chunk_interval() {
    let interval = Duration::from_millis(100);
    let chunk = r#"{"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":[{"index":0,"delta":{"content":" word"},"finish_reason":null}]}"#;
    let endless = (0..1000).fold(Answer::sse(), |answer, _| {
        answer.pause(interval).event(chunk)
    });
    let upstream = Scripted::start(vec![endless.done(), short_stream("next")]).await;
    let proxy = gateway(&upstream, &[]).await;
    let request = chat_request(&Value::Null)
        .body(Full::new(Bytes::from(streamed_order().to_string())))
        .unwrap();
    let (response, connection) = send(proxy.addr, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut seen = String::new();
    while seen.matches(" word").count() < 3 {
        let frame = body.frame().await.unwrap().unwrap();
        seen.push_str(std::str::from_utf8(frame.data_ref().unwrap()).unwrap());
    }
    // The client goes away.
    let left_at = Instant::now();
    drop(body);
    connection.abort();
    let _ = connection.await;

    tokio::time::sleep(interval * 10).await;
    let hangups = upstream.hangups();
    assert_eq!(hangups.len(), 1, "the upstream saw its connection closed");
    assert!(
        hangups[0].at - left_at <= interval,
        "closed {:?} after the client left",
        hangups[0].at - left_at
    );
    assert!(hangups[0].events_written <= 4, "{hangups:?}");
    assert_eq!(metric(proxy.addr, "kitchen_streams_in_flight").await, 0.0);
    // A client's leaving is nobody's failure.
    assert_eq!(upstream_breaker(&proxy, 0).metrics().calls, 0);

    // The next request goes on a new connection: the cut one was not pooled.
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    assert!(text(response).await.contains("next"));
    let seen = upstream.seen();
    assert_ne!(seen[1].connection, seen[0].connection);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_first_chunk_is_cut_and_retried() {
    let upstream = Scripted::start(vec![
        // A head, then nothing.
        Answer::sse().stall(),
        // Not even a head.
        Answer::silent(),
        short_stream("third time lucky"),
    ])
    .await;
    let proxy = gateway(
        &upstream,
        &[
            "--upstream-first-chunk-timeout-ms",
            "2000",
            "--max-attempts",
            "3",
        ],
    )
    .await;
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(text(response).await.contains("third time lucky"));
    let seen = upstream.seen();
    assert_eq!(seen.len(), 3);
    for pair in seen.windows(2) {
        let waited = pair[1].at - pair[0].at;
        assert!(
            waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
    }
    // Each stalled attempt's connection was closed when it was cut.
    assert_eq!(upstream.hangups().len(), 2);

    // Every attempt stalls: 504, in the error shape.
    upstream.push(Answer::silent());
    upstream.push(Answer::silent());
    upstream.push(Answer::silent());
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(error_of(response).await["code"], "upstream_timeout");
}

#[tokio::test(start_paused = true)]
async fn a_silent_stream_ends_with_an_error_event_after_the_idle_timeout() {
    let chunk = r#"{"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":[{"index":0,"delta":{"content":"then silence"},"finish_reason":null}]}"#;
    let upstream = Scripted::start(vec![Answer::sse().event(chunk).stall()]).await;
    let proxy = gateway(&upstream, &["--upstream-idle-timeout-ms", "5000"]).await;
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    let start = Instant::now();
    let events = sse_data(&text(response).await);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
    assert_eq!(events[0], chunk);
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_timeout");
    assert_eq!(upstream.hangups().len(), 1);

    // An upstream's keep-alive comments are not silence: 12 s with one every 3 s is fine.
    let alive = (0..4).fold(Answer::sse().event(chunk), |answer, _| {
        answer
            .pause(Duration::from_secs(3))
            .raw(b": keep-alive\n\n")
    });
    upstream.push(alive.done());
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    let events = sse_data(&text(response).await);
    assert_eq!(events, [chunk, "[DONE]"]);
}

#[tokio::test(start_paused = true)]
async fn models_come_from_the_upstream_cached_with_the_aliases() {
    let first = r#"{"id":"gpt-4o-mini","object":"model","created":1721172741,"owned_by":"system"}"#;
    let second = r#"{"id":"text-embedding-3-small","object":"model","created":1705948997,"owned_by":"system","x":{"y":[1.50]}}"#;
    let list = format!(r#"{{"object":"list","data":[{first},{second}]}}"#);
    let upstream = Scripted::start(vec![Answer::json(&list), Answer::json(&list)]).await;
    let proxy = gateway(&upstream, &["--model-alias", "fast=gpt-4o-mini"]).await;
    let models = text(get(proxy.addr, "/v1/models").await).await;
    assert!(
        models.contains(first) && models.contains(second),
        "{models}"
    );
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|model| model["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gpt-4o-mini", "text-embedding-3-small", "fast"]);
    assert_eq!(upstream.seen()[0].path, "/v1/models");

    // Cached for 10 s.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(get(proxy.addr, "/v1/models").await.status(), StatusCode::OK);
    assert_eq!(upstream.seen().len(), 1);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(get(proxy.addr, "/v1/models").await.status(), StatusCode::OK);
    assert_eq!(upstream.seen().len(), 2);

    // The mock lists its own model, and the aliases.
    let mock = kitchen(&["--model-alias", "fast=kitchen-mock"]).await;
    let models: Value =
        serde_json::from_str(&text(get(mock.addr, "/v1/models").await).await).unwrap();
    assert_eq!(models["data"][0]["id"], "kitchen-mock");
    assert_eq!(models["data"][1]["id"], "fast");
}

#[tokio::test(start_paused = true)]
async fn request_ids_are_taken_or_made_returned_and_sent_upstream() {
    let upstream = Scripted::start(vec![
        short_stream("a"),
        short_stream("b"),
        short_stream("c"),
    ])
    .await;
    let proxy = gateway(&upstream, &[]).await;
    let timeout = [("x-request-timeout-ms", "20000")];

    let mut headers = vec![("x-request-id", "trace-7f3a")];
    headers.extend(timeout);
    let response = post(proxy.addr, &streamed_order(), &headers).await;
    assert_eq!(response.headers()["x-request-id"], "trace-7f3a");
    text(response).await;

    let long = "x".repeat(129);
    for asked in [None, Some(long.as_str())] {
        let mut headers = timeout.to_vec();
        headers.extend(asked.map(|id| ("x-request-id", id)));
        let response = post(proxy.addr, &streamed_order(), &headers).await;
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        text(response).await;
    }
    let seen = upstream.seen();
    assert_eq!(seen[0].header("x-request-id"), Some("trace-7f3a"));
    assert_ne!(
        seen[1].header("x-request-id"),
        seen[2].header("x-request-id")
    );
    for seen in &seen {
        // What is left of the 20 s deadline.
        let left: u64 = seen
            .header("x-request-timeout-ms")
            .unwrap()
            .parse()
            .unwrap();
        assert!((19_000..=20_000).contains(&left), "{left}");
    }

    // The mock's completion ids are random too.
    let mock = kitchen(&["--tokens", "2"]).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let answer: Value =
            serde_json::from_str(&text(post(mock.addr, &order("hi", false), &[]).await).await)
                .unwrap();
        ids.push(answer["id"].as_str().unwrap().to_owned());
    }
    assert_ne!(ids[0], ids[1]);
    assert!(
        ids.iter()
            .all(|id| id.starts_with("chatcmpl-") && id.len() == 41),
        "{ids:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn completions_and_embeddings_pass_through_and_settle_with_the_upstreams_usage() {
    let embedding = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.0023,-0.0093]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#;
    let completion = r#"{"id":"cmpl-1","object":"text_completion","created":0,"model":"gpt-3.5-turbo-instruct","choices":[{"text":" there","index":0,"logprobs":null,"finish_reason":"length"}],"usage":{"prompt_tokens":1,"completion_tokens":5,"total_tokens":6}}"#;
    let text_chunk = r#"{"id":"cmpl-2","object":"text_completion","created":0,"choices":[{"text":" there","index":0,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct"}"#;
    let usage_chunk = r#"{"id":"cmpl-2","object":"text_completion","created":0,"choices":[],"model":"gpt-3.5-turbo-instruct","usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
    let upstream = Scripted::start(vec![
        Answer::json(embedding),
        Answer::json(completion),
        Answer::sse().event(text_chunk).event(usage_chunk).done(),
    ])
    .await;
    let proxy = gateway(&upstream, &[]).await;

    let body = r#"{"model":"text-embedding-3-small","input":["one two","three"],"dimensions":2}"#;
    let response = post_raw(proxy.addr, "/v1/embeddings", body, &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response).await, embedding);

    let body = r#"{"model":"gpt-3.5-turbo-instruct","prompt":"hi","max_tokens":5}"#;
    let response = post_raw(proxy.addr, "/v1/completions", body, &[]).await;
    assert_eq!(text(response).await, completion);

    let body = r#"{"model":"gpt-3.5-turbo-instruct","prompt":"hi","stream":true}"#;
    let response = post_raw(proxy.addr, "/v1/completions", body, &[]).await;
    assert_eq!(sse_data(&text(response).await), [text_chunk, "[DONE]"]);

    let seen = upstream.seen();
    let paths: Vec<&str> = seen.iter().map(|seen| seen.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/v1/embeddings", "/v1/completions", "/v1/completions"]
    );
    assert_eq!(
        &seen[0].body[..],
        br#"{"model":"text-embedding-3-small","input":["one two","three"],"dimensions":2}"#
    );
    assert_eq!(
        seen[2].json()["stream_options"],
        json!({ "include_usage": true })
    );
    assert_eq!(
        metric(proxy.addr, "kitchen_tokens_generated_total").await,
        6.0
    );

    // The mock answers chat only.
    let mock = kitchen(&[]).await;
    let response = post_raw(
        mock.addr,
        "/v1/embeddings",
        r#"{"model":"m","input":"x"}"#,
        &[],
    )
    .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(
        error_of(response).await["message"]
            .as_str()
            .unwrap()
            .contains("--upstream")
    );
}

/// A file removed when dropped, whatever the test's outcome.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A test CA and a certificate it signs for 127.0.0.1: the CA's certificate (PEM) in a file,
/// and a TLS acceptor serving the certificate.
fn test_ca() -> (TempFile, tokio_rustls::TlsAcceptor) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "kitchen test CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let path = std::env::temp_dir().join(format!(
        "kitchen-test-ca-{:032x}.pem",
        crate::ids::random_bits()
    ));
    std::fs::write(&path, ca.pem()).unwrap();
    let path = TempFile(path);

    #[allow(deprecated, reason = "the kitchen's provider, ring")]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![server.der().clone()], key)
        .unwrap();
    (path, tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[tokio::test(start_paused = true)]
async fn an_https_upstream_with_a_test_ca() {
    let (ca_file, tls) = test_ca();
    let upstream = Scripted::start_tls(vec![short_stream("over TLS")], tls).await;
    let url = format!("https://{}", upstream.addr);
    let ca = ca_file.0.to_str().unwrap();
    let proxy = kitchen(&["--upstream", &url, "--upstream-ca-file", ca]).await;
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    let events = sse_data(&text(response).await);
    assert!(events[0].contains("over TLS"), "{events:?}");
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert_eq!(upstream.seen().len(), 1);

    // A certificate from a CA the kitchen was not told to trust: no answer (502).
    let (other_ca, _) = test_ca();
    let other = other_ca.0.to_str().unwrap();
    let proxy = kitchen(&[
        "--upstream",
        &url,
        "--upstream-ca-file",
        other,
        "--max-attempts",
        "1",
    ])
    .await;
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let error = error_of(response).await;
    assert!(
        error["message"].as_str().unwrap().contains("certificate"),
        "{error}"
    );
    assert_eq!(upstream.seen().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_upstream_that_sends_no_usage_is_settled_by_counting_its_chunks() {
    let chunk = r#"{"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":[{"index":0,"delta":{"content":" w"},"finish_reason":null}]}"#;
    // It ignores `include_usage`: three chunks, then [DONE].
    let upstream = Scripted::start(vec![
        Answer::sse().event(chunk).event(chunk).event(chunk).done(),
    ])
    .await;
    let proxy = gateway(&upstream, &[]).await;
    let mut body = streamed_order();
    body["stream_options"] = json!({ "include_usage": true });
    let response = post(proxy.addr, &body, &[]).await;
    let events = sse_data(&text(response).await);
    assert_eq!(events, [chunk, chunk, chunk, "[DONE]"]);
    assert_eq!(metric(proxy.addr, "kitchen_usage_counted_total").await, 1.0);
    assert_eq!(
        metric(proxy.addr, "kitchen_tokens_generated_total").await,
        3.0
    );
}

#[tokio::test]
async fn model_aliases_are_checked_at_start() {
    let start = |aliases: &[&str]| {
        let mut args = vec![
            "kitchen",
            "--addr",
            "127.0.0.1:0",
            "--jobs-db",
            "sqlite::memory:",
        ];
        for alias in aliases {
            args.extend(["--model-alias", alias]);
        }
        Config::try_parse_from(args).map_err(|e| e.to_string())
    };
    for bad in ["fast", "=gpt", "fast=", " = "] {
        let error = start(&[bad]).unwrap_err();
        assert!(error.contains("NAME=UPSTREAM_MODEL"), "{bad}: {error}");
    }
    let twice = start(&["fast=a", "fast=b"]).unwrap();
    let error = server::start(twice).await.unwrap_err().to_string();
    assert!(error.contains("`fast` is given more than once"), "{error}");
    let aliases = start(&["fast=gpt-4o-mini", "big=gpt-4o"])
        .unwrap()
        .model_aliases;
    assert_eq!(aliases[1].name, "big");
    assert_eq!(aliases[1].upstream, "gpt-4o");
}
