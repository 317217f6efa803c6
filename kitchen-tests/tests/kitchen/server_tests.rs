//! Tests of the server's exposure to slow or idle clients: the header-read timeout and the cap
//! on open connections, on the paused clock (hyper's timer is tokio's).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::*;

/// Reads until the server closes the connection (end of stream or reset), for at most a
/// minute of virtual time; returns what it sent and when it closed.
async fn read_until_closed(stream: &mut TcpStream) -> (Vec<u8>, Option<Instant>) {
    let mut received = Vec::new();
    let mut buf = [0_u8; 1024];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    let closed_at = tokio::time::timeout(Duration::from_secs(60), read_all)
        .await
        .ok();
    (received, closed_at)
}

/// Asserts that the server closed `stream` `after` the moment `since`, give or take 10 ms.
async fn assert_closed_after(stream: &mut TcpStream, since: Instant, after: Duration, what: &str) {
    let (received, closed_at) = read_until_closed(stream).await;
    let Some(closed_at) = closed_at else {
        panic!("{what}: still open after a minute");
    };
    let waited = closed_at - since;
    assert!(
        waited >= after && waited < after + Duration::from_millis(10),
        "{what}: closed after {waited:?}, expected {after:?}; it sent {:?}",
        String::from_utf8_lossy(&received)
    );
}

#[tokio::test(start_paused = true)]
async fn half_a_request_line_is_closed_after_the_header_read_timeout() {
    let kitchen = kitchen(&["--header-read-timeout-ms", "2000"]).await;
    let mut stream = TcpStream::connect(kitchen.addr).await.unwrap();
    let start = Instant::now();
    stream.write_all(b"GET /heal").await.unwrap();
    assert_closed_after(
        &mut stream,
        start,
        Duration::from_secs(2),
        "half a request line",
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_sends_no_request_is_closed_after_the_header_read_timeout() {
    let kitchen = kitchen(&["--header-read-timeout-ms", "2000"]).await;
    // Nothing at all, and a part of the h2c preface: hyper-util is still telling HTTP/1.1 from
    // h2c, before hyper's own timer runs.
    for sent in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        let mut stream = TcpStream::connect(kitchen.addr).await.unwrap();
        let start = Instant::now();
        stream.write_all(sent).await.unwrap();
        let what = format!("a connection that sent {:?}", String::from_utf8_lossy(sent));
        assert_closed_after(&mut stream, start, Duration::from_secs(2), &what).await;
    }
    // A whole h2c preface, and no request.
    let mut stream = TcpStream::connect(kitchen.addr).await.unwrap();
    let start = Instant::now();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    assert_closed_after(
        &mut stream,
        start,
        Duration::from_secs(2),
        "an h2c connection without a request",
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_slow_but_whole_request_is_served_and_an_idle_keep_alive_connection_closed() {
    let kitchen = kitchen(&["--header-read-timeout-ms", "2000"]).await;
    let mut stream = TcpStream::connect(kitchen.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stream.write_all(b"host: kitchen\r\n\r\n").await.unwrap();
    let mut head = [0_u8; 15];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200 OK");
    // The answer is in; the next request head is due within the timeout too.
    let answered = Instant::now();
    assert_closed_after(
        &mut stream,
        answered,
        Duration::from_secs(2),
        "an idle keep-alive connection",
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_stream_longer_than_the_header_read_timeout_runs_to_its_end() {
    // 100 tokens 100 ms apart: a 10 s answer on a connection whose heads are due within 1 s.
    let kitchen = kitchen(&[
        "--header-read-timeout-ms",
        "1000",
        "--tokens",
        "100",
        "--token-ms",
        "100",
    ])
    .await;
    let mut body = order("tell me a long story", true);
    body["max_tokens"] = json!(100);
    let start = Instant::now();
    let events = sse_data(&text(post(kitchen.addr, &body, &[]).await).await);
    assert!(start.elapsed() >= Duration::from_secs(10), "{events:?}");
    assert_eq!(events.last().unwrap(), "[DONE]");
    let tokens = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .count();
    assert_eq!(tokens, 100);
}

#[test]
fn the_header_read_timeout_defaults_to_ten_seconds_and_is_bounded() {
    let parse = |args: &[&str]| Config::try_parse_from([&["kitchen"], args].concat());
    assert_eq!(
        parse(&[]).unwrap().header_read_timeout(),
        Duration::from_secs(10)
    );
    for bad in ["0", "3600001", "soon"] {
        assert!(
            parse(&["--header-read-timeout-ms", bad]).is_err(),
            "--header-read-timeout-ms {bad} was accepted"
        );
    }
}

/// An open HTTP/1.1 connection: its sender, and the task that drives it (the connection
/// closes when both are gone).
type Client = (
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    JoinHandle<()>,
);

/// Opens an HTTP/1.1 connection and asks for `/healthz` on it: the status, or `None` if no
/// answer came within a second.
async fn healthz(addr: SocketAddr) -> (Option<StatusCode>, Client) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = Request::get("/healthz").body(Full::default()).unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(1), sender.send_request(request)).await;
    (
        answered.ok().map(|r| r.unwrap().status()),
        (sender, connection),
    )
}

#[tokio::test(start_paused = true)]
async fn the_connection_cap_stops_accepting_until_a_connection_closes() {
    let kitchen = kitchen(&[
        "--max-connections",
        "2",
        "--header-read-timeout-ms",
        "60000",
    ])
    .await;
    // Two connections open: a keep-alive HTTP/1.1 one, and a WebSocket (hyper hands its socket
    // over, but the WebSocket still holds it, and its place).
    let (status, keep_alive) = healthz(kitchen.addr).await;
    assert_eq!(status, Some(StatusCode::OK));
    let stream = TcpStream::connect(kitchen.addr).await.unwrap();
    let (socket, response) =
        tokio_tungstenite::client_async(format!("ws://{}/v1/ws", kitchen.addr), stream)
            .await
            .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);

    // A third connects (the kernel's backlog takes it) but is not served.
    let stream = TcpStream::connect(kitchen.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let _third = tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = Request::get("/healthz")
        .body(Full::<Bytes>::default())
        .unwrap();
    let mut waiting = Box::pin(sender.send_request(request));
    assert!(
        tokio::time::timeout(Duration::from_secs(5), waiting.as_mut())
            .await
            .is_err(),
        "a connection over the cap was served"
    );

    // The WebSocket ends: its place goes to the waiting connection.
    drop(socket);
    let response = tokio::time::timeout(Duration::from_secs(1), waiting)
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // Both places are taken again; a closed HTTP connection frees one too.
    let (status, _fourth) = healthz(kitchen.addr).await;
    assert_eq!(status, None, "a connection over the cap was served");
    drop(keep_alive);
    let (status, _fifth) = healthz(kitchen.addr).await;
    assert_eq!(status, Some(StatusCode::OK));
}

#[test]
fn the_connection_cap_defaults_above_the_stream_bulkhead_and_is_at_least_one() {
    let config = Config::try_parse_from(["kitchen"]).unwrap();
    assert_eq!(config.max_connections, 6144);
    assert!(config.max_connections as usize > config.max_streams + config.queue_size);
    assert!(Config::try_parse_from(["kitchen", "--max-connections", "0"]).is_err());
}
