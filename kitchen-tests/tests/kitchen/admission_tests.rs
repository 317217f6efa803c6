//! Tests of the one admission path (rate limits, bulkhead, breaker, retries before the first
//! token) that HTTP and WebSocket chat share: a request refused before its first token gives
//! its whole token estimate back.
//!
//! Each kitchen allows 100 tokens a minute, and each refused request reserves 81 (one prompt
//! word plus `max_tokens` 80): had the first refusal kept its estimate charged, the second
//! request would be refused by the token limit (429) instead of meeting the same refusal.

use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

use super::*;

/// A request that reserves 81 of the 100 tokens a minute.
fn costly(stream: bool) -> Value {
    let mut body = order("hi", stream);
    body["max_tokens"] = json!(80);
    body
}

/// A kitchen with 100 tokens a minute and no request quota, and these flags.
async fn budget_kitchen(flags: &[&str]) -> Running {
    let mut all = vec!["--tokens-per-min", "100", "--requests-per-min", "0"];
    all.extend_from_slice(flags);
    kitchen(&all).await
}

/// Sends the costly request twice; both must meet `status` with `code`, never 429.
async fn refused_twice(
    kitchen: &Running,
    status: StatusCode,
    code: &str,
    headers: &[(&str, &str)],
) {
    for round in 0..2 {
        let response = post(kitchen.addr, &costly(true), headers).await;
        assert_eq!(response.status(), status, "round {round}");
        assert_eq!(error_of(response).await["code"], code, "round {round}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_502_before_the_first_token_refunds_the_estimate() {
    let kitchen = budget_kitchen(&["--fail-rate", "1", "--max-attempts", "2"]).await;
    refused_twice(&kitchen, StatusCode::BAD_GATEWAY, "upstream_error", &[]).await;
}

#[tokio::test(start_paused = true)]
async fn a_504_before_the_first_token_refunds_the_estimate() {
    let kitchen = budget_kitchen(&["--stall-rate", "1"]).await;
    let timeout = [("x-request-timeout-ms", "300")];
    refused_twice(
        &kitchen,
        StatusCode::GATEWAY_TIMEOUT,
        "deadline_exceeded",
        &timeout,
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_refunds_the_estimate() {
    let kitchen = budget_kitchen(&[]).await;
    kitchen.app.breaker.handle().force_open();
    refused_twice(
        &kitchen,
        StatusCode::SERVICE_UNAVAILABLE,
        "circuit_open",
        &[],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_full_bulkhead_refunds_the_estimate() {
    // The only stream slot is held by a request waiting 10 s for its first token (estimate:
    // 1 + 5 tokens); nobody may queue.
    let kitchen = budget_kitchen(&[
        "--max-streams",
        "1",
        "--queue-size",
        "0",
        "--ttft-ms",
        "10000",
    ])
    .await;
    let mut small = order("hi", true);
    small["max_tokens"] = json!(5);
    let addr = kitchen.addr;
    let holder = tokio::spawn(async move { post(addr, &small, &[]).await.status() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    refused_twice(&kitchen, StatusCode::SERVICE_UNAVAILABLE, "overloaded", &[]).await;
    assert_eq!(holder.await.unwrap(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn a_client_gone_before_the_first_token_refunds_the_estimate() {
    let kitchen = budget_kitchen(&["--stall-rate", "1"]).await;
    for _ in 0..2 {
        // The request, on a bare socket that hangs up while the line cook stalls.
        let body = costly(true).to_string();
        let mut socket = TcpStream::connect(kitchen.addr).await.unwrap();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: kitchen\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        socket.write_all(body.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(socket);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both estimates came back: a third costly request is admitted (it stalls: cut it short).
    let response = post(
        kitchen.addr,
        &costly(true),
        &[("x-request-timeout-ms", "100")],
    )
    .await;
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
}

/// A WebSocket chat request that reserves 81 of the 100 tokens a minute.
fn ws_costly() -> Value {
    let mut body = costly(false);
    body["type"] = json!("chat");
    body.as_object_mut().unwrap().remove("stream");
    body
}

/// The last message of the next generation on `socket` (after its `start`).
async fn ws_end(socket: &mut tokio_tungstenite::WebSocketStream<TcpStream>) -> Value {
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let next = tokio::time::timeout_at(until, socket.next())
            .await
            .expect("a message within a minute");
        if let Message::Text(text) = next.unwrap().unwrap() {
            let message: Value = serde_json::from_str(text.as_str()).unwrap();
            if message["type"] != "start" && message["type"] != "token" {
                return message;
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn ws_refusals_before_the_first_token_refund_the_estimate() {
    let kitchen = budget_kitchen(&["--fail-rate", "1", "--max-attempts", "2"]).await;
    let stream = TcpStream::connect(kitchen.addr).await.unwrap();
    let (mut socket, _) =
        tokio_tungstenite::client_async(format!("ws://{}/v1/ws", kitchen.addr), stream)
            .await
            .unwrap();
    // Twice 502, then twice 503 with the breaker forced open: never 429.
    for (status, code) in [(502, "upstream_error"), (502, "upstream_error")] {
        socket
            .send(Message::text(ws_costly().to_string()))
            .await
            .unwrap();
        let end = ws_end(&mut socket).await;
        assert_eq!(
            (end["status"].as_u64(), end["error"]["code"].as_str()),
            (Some(status), Some(code)),
            "{end}"
        );
    }
    kitchen.app.breaker.handle().force_open();
    for _ in 0..2 {
        socket
            .send(Message::text(ws_costly().to_string()))
            .await
            .unwrap();
        let end = ws_end(&mut socket).await;
        assert_eq!(end["status"], 503, "{end}");
        assert_eq!(end["error"]["code"], "circuit_open", "{end}");
    }
}
