//! A surge: refusals that cost the headers only, and a queue that refuses a wait it cannot
//! serve in time.

use std::time::Duration;

use http::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::{error_of, kitchen, metric, order, post, text};

#[tokio::test(start_paused = true)]
async fn a_refusal_does_not_wait_for_the_body() {
    let kitchen = kitchen(&["--max-streams", "1", "--queue-size", "0", "--tokens", "100"]).await;
    let holder = post(kitchen.addr, &order("long", true), &[]).await;
    assert_eq!(holder.status(), StatusCode::OK);

    // A client that sends its head, announces a body, and never sends it.
    let mut socket = TcpStream::connect(kitchen.addr).await.unwrap();
    socket
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: kitchen\r\n\
              content-type: application/json\r\ncontent-length: 1000\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), socket.read_to_end(&mut answer))
        .await
        .expect("refused without the body, and the connection closed")
        .unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(head.contains("\r\nconnection: close"), "{head}");
    assert!(head.contains("\r\nretry-after: 1"), "{head}");
    assert!(
        head.contains("\r\ncontent-type: application/json"),
        "{head}"
    );
    let error: Value = serde_json::from_str(body).unwrap();
    assert_eq!(error["error"]["code"], "overloaded");
    assert_eq!(error["error"]["type"], "server_error");
    assert_eq!(
        metric(
            kitchen.addr,
            "kitchen_refusal_closes_total{reason=\"body_unread\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            kitchen.addr,
            "kitchen_overload_refusals_total{reason=\"queue_full\"}"
        )
        .await,
        1.0
    );
    // The admitted stream is untouched.
    assert!(text(holder).await.ends_with("data: [DONE]\n\n"));
}

#[tokio::test(start_paused = true)]
async fn a_wait_predicted_past_the_queue_timeout_is_refused_at_once() {
    // One slot; a stream holds it 1.1 s (100 ms to the first token, then 10 x 100 ms); the
    // queue's timeout is 500 ms, so once a stream has ended, the next in line is predicted a
    // 1 s wait and refused at once instead of waiting 500 ms for a 503.
    let kitchen = kitchen(&[
        "--max-streams",
        "1",
        "--queue-size",
        "4",
        "--queue-timeout-ms",
        "500",
        "--ttft-ms",
        "100",
        "--token-ms",
        "100",
        "--tokens",
        "10",
    ])
    .await;
    // Before any stream has ended there is no prediction: a caller queues, and waits.
    let holder = post(kitchen.addr, &order("first", true), &[]).await;
    let start = Instant::now();
    let queued = post(kitchen.addr, &order("queued", true), &[]).await;
    assert_eq!(queued.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(start.elapsed(), Duration::from_millis(500));
    assert!(text(holder).await.ends_with("data: [DONE]\n\n"));

    let holder = post(kitchen.addr, &order("second", true), &[]).await;
    assert_eq!(holder.status(), StatusCode::OK);
    let start = Instant::now();
    let refused = post(kitchen.addr, &order("third", true), &[]).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        start.elapsed() < Duration::from_millis(5),
        "{:?}",
        start.elapsed()
    );
    // The predicted wait, the first stream's 1.1 s hold, rounded up to whole seconds.
    assert_eq!(refused.headers()["retry-after"], "2");
    assert_eq!(refused.headers()["connection"], "close");
    let error = error_of(refused).await;
    assert!(
        error["message"].as_str().unwrap().contains("outlast"),
        "{error}"
    );
    assert_eq!(
        metric(
            kitchen.addr,
            "kitchen_overload_refusals_total{reason=\"predicted_timeout\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            kitchen.addr,
            "kitchen_overload_refusals_total{reason=\"queue_timeout\"}"
        )
        .await,
        1.0
    );
    // Two admitted without waiting (the holders), each in the first bucket.
    assert_eq!(
        metric(kitchen.addr, "kitchen_queue_wait_seconds_count").await,
        2.0
    );
    assert!(text(holder).await.ends_with("data: [DONE]\n\n"));
    assert!(metric(kitchen.addr, "kitchen_process_cpu_seconds").await > 0.0);
}

#[tokio::test(start_paused = true)]
async fn one_client_cannot_fill_the_queue() {
    let kitchen = kitchen(&[
        "--api-key",
        "alice-key,bob-key",
        "--max-streams",
        "1",
        "--queue-size",
        "8",
        "--queue-per-key",
        "2",
        "--queue-timeout-ms",
        "5000",
        "--tokens",
        "100",
    ])
    .await;
    let alice = [("authorization", "Bearer alice-key")];
    let holder = post(kitchen.addr, &order("long", true), &alice).await;
    assert_eq!(holder.status(), StatusCode::OK);
    let addr = kitchen.addr;
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(async move {
                post(
                    addr,
                    &order("more", true),
                    &[("authorization", "Bearer alice-key")],
                )
                .await
                .status()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        metric(kitchen.addr, "kitchen_bulkhead_queue_depth").await,
        2.0
    );

    // Alice's third waiting request is refused at once; the queue has room for bob.
    let start = Instant::now();
    let refused = post(kitchen.addr, &order("and more", true), &alice).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(refused.headers().contains_key("retry-after"));
    let error = error_of(refused).await;
    assert_eq!(error["code"], "overloaded");
    assert!(
        error["message"].as_str().unwrap().contains("this client"),
        "{error}"
    );
    let bob = tokio::spawn(async move {
        post(
            addr,
            &order("bob", true),
            &[("authorization", "Bearer bob-key")],
        )
        .await
        .status()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        metric(kitchen.addr, "kitchen_bulkhead_queue_depth").await,
        3.0
    );
    assert_eq!(
        metric(
            kitchen.addr,
            "kitchen_overload_refusals_total{reason=\"key_queue_full\"}"
        )
        .await,
        1.0
    );
    // Served in turn as the slot frees (each stream holds it a while).
    assert!(text(holder).await.ends_with("data: [DONE]\n\n"));
    for waiter in waiting {
        assert_eq!(waiter.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(bob.await.unwrap(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn a_body_that_trickles_is_cut_at_the_body_read_timeout() {
    let kitchen = kitchen(&["--body-read-timeout-ms", "2000"]).await;
    let mut socket = TcpStream::connect(kitchen.addr).await.unwrap();
    socket
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: kitchen\r\n\
              content-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\":",
        )
        .await
        .unwrap();
    let start = Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), socket.read_to_end(&mut answer))
        .await
        .expect("answered and closed at the body-read timeout")
        .unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 408"), "{head}");
    assert!(head.contains("\r\nconnection: close"), "{head}");
    let error: Value = serde_json::from_str(body).unwrap();
    assert_eq!(error["error"]["code"], "request_timeout");
}

#[tokio::test(start_paused = true)]
async fn refusals_over_the_shedding_rate_close_their_connections() {
    // One request a minute per client, so every later one is a 429; two refusals a second
    // keep their connections, the third within the same second closes its own.
    let kitchen = kitchen(&[
        "--requests-per-min",
        "1",
        "--tokens-per-min",
        "0",
        "--shed-refusals-per-sec",
        "2",
    ])
    .await;
    let admitted = post(kitchen.addr, &order("first", false), &[]).await;
    assert_eq!(admitted.status(), StatusCode::OK);
    assert!(admitted.headers().get("connection").is_none());
    for _ in 0..2 {
        let refused = post(kitchen.addr, &order("again", false), &[]).await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.headers().get("connection").is_none());
    }
    let shed = post(kitchen.addr, &order("again", false), &[]).await;
    assert_eq!(shed.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(shed.headers()["connection"], "close");
    assert!(shed.headers().contains_key("retry-after"));
    // The refusal rate falls back under the threshold: refusals keep their connections again.
    tokio::time::advance(Duration::from_secs(1)).await;
    let refused = post(kitchen.addr, &order("later", false), &[]).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().get("connection").is_none());
    assert_eq!(
        metric(
            kitchen.addr,
            "kitchen_refusal_closes_total{reason=\"shedding\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn with_no_shedding_rate_every_refusal_closes_its_connection() {
    let kitchen = kitchen(&[
        "--requests-per-min",
        "1",
        "--tokens-per-min",
        "0",
        "--shed-refusals-per-sec",
        "0",
    ])
    .await;
    assert_eq!(
        post(kitchen.addr, &order("first", false), &[])
            .await
            .status(),
        StatusCode::OK
    );
    let refused = post(kitchen.addr, &order("again", false), &[]).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["connection"], "close");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_asks_once_is_served_before_a_flooding_clients_later_requests() {
    let kitchen = kitchen(&[
        "--api-key",
        "alice-key,bob-key",
        "--max-streams",
        "1",
        "--queue-size",
        "8",
        "--queue-per-key",
        "4",
        "--queue-timeout-ms",
        "60000",
    ])
    .await;
    let holder = post(
        kitchen.addr,
        &order("first", true),
        &[("authorization", "Bearer alice-key")],
    )
    .await;
    assert_eq!(holder.status(), StatusCode::OK);
    let served = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let addr = kitchen.addr;
    let ask = |who: &'static str| {
        let served = std::sync::Arc::clone(&served);
        tokio::spawn(async move {
            let bearer = format!("Bearer {who}-key");
            let response = post(addr, &order(who, true), &[("authorization", &bearer)]).await;
            assert_eq!(response.status(), StatusCode::OK);
            served.lock().unwrap().push(who);
            // The stream to its end: the slot is held until then.
            assert!(text(response).await.ends_with("data: [DONE]\n\n"));
        })
    };
    // Alice floods the queue with three more, then bob asks once.
    let mut waiters = Vec::new();
    for _ in 0..3 {
        waiters.push(ask("alice"));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    waiters.push(ask("bob"));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        metric(kitchen.addr, "kitchen_bulkhead_queue_depth").await,
        4.0
    );
    drop(holder);
    for waiter in waiters {
        waiter.await.unwrap();
    }
    // In turn across clients: bob waits for one of alice's, not for all three.
    assert_eq!(*served.lock().unwrap(), ["alice", "bob", "alice", "alice"]);
}
