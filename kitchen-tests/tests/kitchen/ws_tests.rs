//! Tests of the kitchen's WebSocket chat (`GET /v1/ws`), with tokio-tungstenite as the client,
//! on the paused clock.

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::*;

type Socket = WebSocketStream<TcpStream>;

/// Opens a WebSocket to the kitchen.
async fn connect(addr: SocketAddr) -> Socket {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (socket, response) = tokio_tungstenite::client_async(format!("ws://{addr}/v1/ws"), stream)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    socket
}

async fn send_json(socket: &mut Socket, value: &Value) {
    socket.send(Message::text(value.to_string())).await.unwrap();
}

/// A chat request as a WebSocket message.
fn chat(content: &str) -> Value {
    json!({
        "type": "chat",
        "model": "kitchen-mock",
        "messages": [{ "role": "user", "content": content }],
    })
}

/// The next data message, as JSON (pings are skipped: the client answers them as it reads).
/// Fails after a minute of (paused) time without one, rather than wait for ever.
async fn next_json(socket: &mut Socket) -> Value {
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let next = tokio::time::timeout_at(until, socket.next())
            .await
            .expect("a message within a minute");
        match next.unwrap().unwrap() {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a JSON message, got {other:?}"),
        }
    }
}

/// Reads a generation's messages up to and including its last one (done, error, cancelled).
async fn until_end(socket: &mut Socket) -> (Vec<Value>, Value) {
    let mut tokens = Vec::new();
    loop {
        let message = next_json(socket).await;
        match message["type"].as_str().unwrap() {
            "token" => tokens.push(message),
            "start" => {}
            _ => return (tokens, message),
        }
    }
}

/// Reads data messages for `duration` of (paused) time, answering pings.
async fn messages_within(socket: &mut Socket, duration: Duration) -> Vec<Value> {
    let until = tokio::time::Instant::now() + duration;
    let mut seen = Vec::new();
    while let Ok(next) = tokio::time::timeout_at(until, socket.next()).await {
        match next {
            Some(Ok(Message::Text(text))) => {
                seen.push(serde_json::from_str(text.as_str()).unwrap())
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("the socket should stay open, got {other:?}"),
        }
    }
    seen
}

#[tokio::test(start_paused = true)]
async fn ws_tokens_arrive_in_order_then_done() {
    let kitchen = kitchen(&["--tokens", "8"]).await;
    let mut socket = connect(kitchen.addr).await;
    assert_eq!(
        metric(kitchen.addr, "kitchen_ws_connections_open").await,
        1.0
    );

    send_json(&mut socket, &chat("tell me a story")).await;
    let start = next_json(&mut socket).await;
    assert_eq!(start["type"], "start", "{start}");
    assert_eq!(start["model"], "kitchen-mock");
    let id = start["id"].as_str().unwrap().to_owned();
    let (tokens, done) = until_end(&mut socket).await;
    assert_eq!(done["type"], "done", "{done}");
    assert_eq!(done["id"], id.as_str());
    assert_eq!(done["finish_reason"], "stop");
    assert_eq!(done["usage"]["completion_tokens"], 8);
    assert_eq!(done["usage"]["prompt_tokens"], 4);
    // In order, numbered, the mock's answer to this prompt.
    let indices: Vec<u64> = tokens
        .iter()
        .map(|t| t["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, (0..8).collect::<Vec<u64>>());
    assert!(tokens.iter().all(|t| t["id"] == id.as_str()));
    let answer: String = tokens.iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert_eq!(answer, mock::Mock::answer("tell me a story", 8).concat());
    assert_eq!(
        metric(kitchen.addr, "kitchen_ws_tokens_sent_total").await,
        8.0
    );
    assert_eq!(
        metric(kitchen.addr, "kitchen_tokens_generated_total").await,
        8.0
    );

    // The socket serves another generation, with `max_tokens` honoured.
    let mut request = chat("again");
    request["max_tokens"] = json!(3);
    send_json(&mut socket, &request).await;
    let (tokens, done) = until_end(&mut socket).await;
    assert_eq!(tokens.len(), 3);
    assert_eq!(done["finish_reason"], "length");
    assert_ne!(done["id"], id.as_str(), "each generation has its own id");
    assert_eq!(
        metric(kitchen.addr, "kitchen_ws_generations_total").await,
        2.0
    );
    assert_eq!(
        metric(kitchen.addr, "kitchen_ws_messages_total{direction=\"in\"}").await,
        2.0
    );

    // A close frame ends the connection; nothing was running, so nothing was cancelled.
    socket.close(None).await.unwrap();
    let answer = socket.next().await;
    assert!(
        matches!(answer, None | Some(Ok(Message::Close(_)))),
        "the server answers the close: {answer:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        metric(kitchen.addr, "kitchen_ws_connections_open").await,
        0.0
    );
    let body = text(get(kitchen.addr, "/metrics").await).await;
    assert!(
        !body.contains("kitchen_ws_generations_cancelled_total{"),
        "{body}"
    );
}

#[tokio::test(start_paused = true)]
async fn ws_cancel_message_stops_the_generation() {
    let kitchen = kitchen(&["--tokens", "1000", "--token-ms", "20"]).await;
    let mut socket = connect(kitchen.addr).await;
    send_json(&mut socket, &chat("a long story")).await;
    assert_eq!(next_json(&mut socket).await["type"], "start");
    for i in 0..3 {
        let token = next_json(&mut socket).await;
        assert_eq!(token["type"], "token");
        assert_eq!(token["index"], i);
    }

    send_json(&mut socket, &json!({ "type": "cancel" })).await;
    let (tokens, ack) = until_end(&mut socket).await;
    assert_eq!(ack["type"], "cancelled", "{ack}");
    assert_eq!(ack["reason"], "client_cancel");
    // The tokens written before the ack are all there is: the ack counts them.
    let sent = 3 + tokens.len() as u64;
    assert_eq!(ack["completion_tokens"], sent, "{ack}");
    assert!(sent < 10, "the cancel took effect at once ({sent} tokens)");

    // No token after the ack, however long we wait, and the line cook stopped.
    let generated = metric(kitchen.addr, "kitchen_tokens_generated_total").await;
    assert_eq!(generated, sent as f64);
    assert_eq!(
        messages_within(&mut socket, Duration::from_secs(5)).await,
        Vec::<Value>::new()
    );
    assert_eq!(
        metric(kitchen.addr, "kitchen_tokens_generated_total").await,
        generated
    );
    assert_eq!(
        metric(
            kitchen.addr,
            "kitchen_ws_generations_cancelled_total{reason=\"client_cancel\"}"
        )
        .await,
        1.0
    );
    // A client's cancel is not an upstream failure.
    assert_eq!(kitchen.app.breaker.metrics().failed_calls, 0);

    // The cancel stopped the generation, not the connection: the next one runs to its end.
    let mut request = chat("short");
    request["max_tokens"] = json!(2);
    send_json(&mut socket, &request).await;
    let (tokens, done) = until_end(&mut socket).await;
    assert_eq!((tokens.len(), done["type"].as_str()), (2, Some("done")));
}

#[tokio::test(start_paused = true)]
async fn ws_closing_the_socket_stops_the_generation() {
    // One stream slot, no queue: the HTTP request at the end gets it only if the socket's
    // generation gave it back.
    let kitchen = kitchen(&[
        "--tokens",
        "1000",
        "--token-ms",
        "20",
        "--max-streams",
        "1",
        "--queue-size",
        "0",
    ])
    .await;
    let mut socket = connect(kitchen.addr).await;
    send_json(&mut socket, &chat("a long story")).await;
    let mut seen = 0;
    while seen < 4 {
        if next_json(&mut socket).await["type"] == "token" {
            seen += 1;
        }
    }
    assert_eq!(
        metric(kitchen.addr, "kitchen_ws_connections_open").await,
        1.0
    );
    // The client goes away without a close frame: the TCP connection just drops.
    drop(socket);

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        metric(
            kitchen.addr,
            "kitchen_ws_generations_cancelled_total{reason=\"client_disconnected\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(kitchen.addr, "kitchen_ws_connections_open").await,
        0.0
    );
    let generated = metric(kitchen.addr, "kitchen_tokens_generated_total").await;
    let sent = metric(kitchen.addr, "kitchen_ws_tokens_sent_total").await;
    assert!(generated < 30.0, "generated {generated} tokens");
    // The line cook stopped: no token more, however long we wait.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        metric(kitchen.addr, "kitchen_tokens_generated_total").await,
        generated
    );
    assert_eq!(
        metric(kitchen.addr, "kitchen_ws_tokens_sent_total").await,
        sent
    );
    // Nothing was blamed on the line cook, and the stream slot came back.
    assert_eq!(kitchen.app.breaker.metrics().calls, 0);
    let response = post(kitchen.addr, &order("my turn", false), &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn ws_handshake_errors_are_json() {
    let kitchen = kitchen(&[]).await;
    // A plain GET: 426 with `Upgrade: websocket`.
    let response = get(kitchen.addr, "/v1/ws").await;
    assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
    assert_eq!(response.headers()["upgrade"], "websocket");
    assert_eq!(error_of(response).await["code"], "upgrade_required");

    let upgrade = |version: &str, key: &str| {
        Request::get("/v1/ws")
            .header("host", "kitchen")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", version)
            .header("sec-websocket-key", key)
            .body(Full::default())
            .unwrap()
    };
    // An unknown protocol version: 426 naming the one we speak.
    let (response, _) = send(kitchen.addr, upgrade("8", "dGhlIHNhbXBsZSBub25jZQ==")).await;
    assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
    assert_eq!(response.headers()["sec-websocket-version"], "13");
    error_of(response).await;
    // A key that is not 16 bytes in base64: 400 naming the header.
    let (response, _) = send(kitchen.addr, upgrade("13", "not-a-key")).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(
        error_of(response).await["message"]
            .as_str()
            .unwrap()
            .contains("Sec-WebSocket-Key")
    );
    // A good handshake: 101 with RFC 6455's accept value for this key.
    let (response, _) = send(kitchen.addr, upgrade("13", "dGhlIHNhbXBsZSBub25jZQ==")).await;
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(
        response.headers()["sec-websocket-accept"],
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    // Another method: 405.
    let (response, _) = send(
        kitchen.addr,
        Request::post("/v1/ws").body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "GET");

    // With API keys configured, the upgrade needs one.
    let locked = kitchen_with_key().await;
    let (response, _) = send(locked.addr, upgrade("13", "dGhlIHNhbXBsZSBub25jZQ==")).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    error_of(response).await;
}

async fn kitchen_with_key() -> Running {
    kitchen(&["--api-key", "k"]).await
}

#[tokio::test(start_paused = true)]
async fn ws_bad_messages_get_errors_and_the_socket_stays_open() {
    let kitchen = kitchen(&["--tokens", "50", "--token-ms", "20"]).await;
    let mut socket = connect(kitchen.addr).await;

    socket.send(Message::text("{\"model\":")).await.unwrap();
    let error = next_json(&mut socket).await;
    assert_eq!(
        (error["type"].as_str(), error["status"].as_u64()),
        (Some("error"), Some(400))
    );
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("malformed JSON")
    );

    send_json(&mut socket, &json!({ "type": "chat", "messages": [] })).await;
    let error = next_json(&mut socket).await;
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`model`"),
        "{error}"
    );

    send_json(&mut socket, &json!({ "type": "dance" })).await;
    let error = next_json(&mut socket).await;
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`type`"),
        "{error}"
    );

    socket.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(next_json(&mut socket).await["status"], 400);

    // One generation at a time: a second request while one runs is refused, the first goes on.
    send_json(&mut socket, &chat("first")).await;
    assert_eq!(next_json(&mut socket).await["type"], "start");
    send_json(&mut socket, &chat("second")).await;
    let mut refused = None;
    let mut tokens = 0;
    let done = loop {
        let message = next_json(&mut socket).await;
        match message["type"].as_str().unwrap() {
            "token" => tokens += 1,
            "error" => refused = Some(message),
            _ => break message,
        }
    };
    let refused = refused.expect("the second request is refused");
    assert_eq!(refused["status"], 409);
    assert_eq!(refused["error"]["code"], "generation_in_progress");
    assert_eq!((tokens, done["type"].as_str()), (50, Some("done")));
    assert_eq!(
        metric(kitchen.addr, "kitchen_ws_generations_total").await,
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn ws_generations_share_the_chat_rate_limits() {
    let kitchen = kitchen(&["--requests-per-min", "2", "--tokens", "2"]).await;
    // One request over HTTP, one over the socket: the third, over the socket, is limited.
    assert_eq!(
        post(kitchen.addr, &order("hi", false), &[]).await.status(),
        StatusCode::OK
    );
    let mut socket = connect(kitchen.addr).await;
    send_json(&mut socket, &chat("hi")).await;
    assert_eq!(until_end(&mut socket).await.1["type"], "done");
    send_json(&mut socket, &chat("hi")).await;
    let (tokens, error) = until_end(&mut socket).await;
    assert!(tokens.is_empty());
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["status"], 429);
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    let retry_after = error["retry_after"].as_u64().unwrap();
    assert!((1..=30).contains(&retry_after), "{error}");
    assert_eq!(
        metric(
            kitchen.addr,
            "kitchen_rate_limit_rejections_total{limit=\"requests\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn ws_ping_keeps_a_reading_client_and_drops_a_silent_one() {
    // Not the default 20 s: the test also shows that the flag sets the interval.
    let every = Duration::from_secs(7);
    let kitchen = kitchen(&["--tokens", "2", "--ws-ping-secs", "7"]).await;
    // A client that reads answers the server's pings (tungstenite does it as it reads): after
    // three ping intervals the socket is still open and serves a generation; it keeps reading.
    let mut reading = connect(kitchen.addr).await;
    let mut pings = 0;
    let until = tokio::time::Instant::now() + every * 3 + Duration::from_secs(1);
    while let Ok(next) = tokio::time::timeout_at(until, reading.next()).await {
        match next {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("expected pings only, got {other:?}"),
        }
    }
    assert_eq!(pings, 3);
    send_json(&mut reading, &chat("still here")).await;
    assert_eq!(until_end(&mut reading).await.1["type"], "done");
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = reading.next().await {
            assert!(matches!(message, Message::Ping(_)), "{message:?}");
        }
    });

    // A client that reads nothing answers no ping: at the second ping the server closes.
    let mut silent = connect(kitchen.addr).await;
    tokio::time::sleep(every * 2 + Duration::from_secs(1)).await;
    let mut frames = Vec::new();
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_secs(5), silent.next()).await
    {
        frames.push(message);
    }
    assert!(
        matches!(frames.first(), Some(Message::Ping(_))),
        "{frames:?}"
    );
    match frames.last() {
        Some(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Policy),
        other => panic!("expected a close frame, got {other:?}"),
    }
    assert_eq!(
        metric(kitchen.addr, "kitchen_ws_connections_open").await,
        1.0,
        "only the reading client is left"
    );
    assert!(!reader.is_finished());
}

#[tokio::test(start_paused = true)]
async fn ws_shutdown_closes_sockets_and_cancels_generations_after_the_grace() {
    let kitchen = kitchen(&[
        "--tokens",
        "100000",
        "--token-ms",
        "100",
        "--grace-secs",
        "2",
    ])
    .await;
    let mut idle = connect(kitchen.addr).await;
    let mut busy = connect(kitchen.addr).await;
    send_json(&mut busy, &chat("endless")).await;
    assert_eq!(next_json(&mut busy).await["type"], "start");
    assert_eq!(next_json(&mut busy).await["type"], "token");

    let shutdown = kitchen.app.shutdown.clone();
    assert!(shutdown.trigger());
    let drained = tokio::spawn(async move { shutdown.drained().await });

    // The idle socket is closed at once, as going away.
    match idle.next().await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a close frame, got {other:?}"),
    }
    // The busy one goes on through the grace period, then its generation is cancelled with
    // reason shutdown, then the socket is closed.
    let (tokens, last) = until_end(&mut busy).await;
    assert_eq!(last["type"], "cancelled", "{last}");
    assert_eq!(last["reason"], "shutdown");
    assert!(
        tokens.len() > 15,
        "tokens kept coming during the grace period"
    );
    match busy.next().await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a close frame, got {other:?}"),
    }

    let report = drained.await.unwrap();
    assert_eq!(report.outcome(), ShutdownOutcome::Cancelled);
    assert_eq!(report.still_running(), 0, "the socket tasks were joined");
    assert_eq!(
        kitchen
            .app
            .metrics
            .ws
            .cancelled
            .get_or_create(&vec![("reason", "shutdown".to_owned())])
            .get(),
        1
    );
    assert_eq!(kitchen.app.metrics.ws.connections_open.get(), 0);
}

#[test]
fn ws_ping_flag_out_of_range_is_refused_when_parsed() {
    let parse = |secs: &str| Config::try_parse_from(["kitchen", "--ws-ping-secs", secs]);
    assert_eq!(
        parse("86400").unwrap().ws_ping(),
        Duration::from_secs(86_400)
    );
    for bad in ["0", "86401", "18446744073709551615", "soon"] {
        assert!(parse(bad).is_err(), "--ws-ping-secs {bad} was accepted");
    }
}
