//! Tests of the kitchen's fan-out (`GET /v1/fanout`), on the paused clock: the latencies and
//! timeouts below are virtual time, so the totals are exact.

use super::*;

/// The three sources at 120, 300 and 200 ms, each with a 500 ms timeout (the defaults, spelled
/// out so the tests read on their own), and the query's fault parameters accepted.
const SOURCES: [&str; 7] = [
    "--fanout-weather-ms",
    "120",
    "--fanout-image-ms",
    "300",
    "--fanout-chat-ms",
    "200",
    "--fanout-faults",
];

/// `GET path`, expecting a 200 with a JSON body.
async fn fanout_json(addr: SocketAddr, path: &str) -> Value {
    let response = get(addr, path).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    serde_json::from_str(&text(response).await).unwrap()
}

#[tokio::test(start_paused = true)]
async fn fanout_concurrent_total_is_the_slowest_source() {
    let kitchen = kitchen(&SOURCES).await;
    let start = tokio::time::Instant::now();
    let body = fanout_json(kitchen.addr, "/v1/fanout").await;
    let waited = start.elapsed();

    assert_eq!(body["object"], "fanout");
    assert_eq!(body["mode"], "concurrent");
    assert_eq!(body["breakers"], "shared");
    assert_eq!(body["partial"], false, "{body}");
    // The slowest source, not the sum (620 ms).
    assert_eq!(body["total_ms"], 300.0, "{body}");
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(350),
        "{waited:?}"
    );
    for (name, latency) in [("weather", 120.0), ("image", 300.0), ("chat", 200.0)] {
        let source = &body["sources"][name];
        assert_eq!(source["status"], "ok", "{name}: {source}");
        assert_eq!(source["latency_ms"], latency, "{name}: {source}");
        assert_eq!(source["started_ms"], 0.0, "{name} started with the others");
        assert_eq!(source["attempts"], 1);
        assert_eq!(source["timeout_ms"], 500);
        assert!(source["result"].is_object(), "{name}: {source}");
    }
    assert_eq!(body["sources"]["weather"]["result"]["city"], "Lyon");
    assert_eq!(
        body["sources"]["chat"]["result"]["text"],
        mock::Mock::answer("what is on the menu tonight", 8).concat()
    );

    // The query can change the latencies of one request; the total follows the new slowest.
    let body = fanout_json(
        kitchen.addr,
        "/v1/fanout?weather_ms=450&image_ms=30&chat_ms=0",
    )
    .await;
    assert_eq!(body["total_ms"], 450.0, "{body}");
    assert_eq!(body["sources"]["chat"]["latency_ms"], 0.0);
}

#[tokio::test(start_paused = true)]
async fn fanout_sequential_total_is_the_sum() {
    let kitchen = kitchen(&SOURCES).await;
    let body = fanout_json(kitchen.addr, "/v1/fanout?mode=sequential").await;
    assert_eq!(body["mode"], "sequential");
    assert_eq!(body["partial"], false, "{body}");
    assert_eq!(body["total_ms"], 620.0, "{body}");
    // One after another, in order: each starts when the one before has answered.
    for (name, started, latency) in [
        ("weather", 0.0, 120.0),
        ("image", 120.0, 300.0),
        ("chat", 420.0, 200.0),
    ] {
        let source = &body["sources"][name];
        assert_eq!(source["status"], "ok", "{name}: {source}");
        assert_eq!(source["started_ms"], started, "{name}: {source}");
        assert_eq!(source["latency_ms"], latency, "{name}: {source}");
    }
}

#[tokio::test(start_paused = true)]
async fn fanout_timed_out_source_gives_a_partial_result() {
    let kitchen = kitchen(&[&SOURCES[..], &["--fanout-image-timeout-ms", "250"]].concat()).await;
    let body = fanout_json(kitchen.addr, "/v1/fanout").await;
    assert_eq!(body["partial"], true, "{body}");
    let image = &body["sources"]["image"];
    assert_eq!(image["status"], "timeout", "{image}");
    assert_eq!(
        image["latency_ms"], 250.0,
        "cut off at its timeout: {image}"
    );
    assert_eq!(image["timeout_ms"], 250);
    assert!(image.get("result").is_none(), "{image}");
    // The others answered in full, and the request waited for no more than the timeout.
    for name in ["weather", "chat"] {
        assert_eq!(body["sources"][name]["status"], "ok", "{body}");
        assert!(body["sources"][name]["result"].is_object());
    }
    assert_eq!(body["total_ms"], 250.0, "{body}");

    // The same with one request's `timeout_ms`, in sequential mode: every source gets 150 ms,
    // so the weather (120 ms) answers and the other two time out one after the other.
    let body = fanout_json(kitchen.addr, "/v1/fanout?mode=sequential&timeout_ms=150").await;
    assert_eq!(body["partial"], true);
    assert_eq!(body["sources"]["weather"]["status"], "ok");
    assert_eq!(body["sources"]["image"]["status"], "timeout");
    assert_eq!(body["sources"]["chat"]["status"], "timeout");
    assert_eq!(body["total_ms"], 420.0, "{body}");
}

#[tokio::test(start_paused = true)]
async fn fanout_failed_source_is_retried_once_then_partial() {
    let kitchen = kitchen(&SOURCES).await;
    // Every attempt of the chat source fails: two attempts, 20 ms apart, then a partial result.
    let body = fanout_json(kitchen.addr, "/v1/fanout?fail=chat").await;
    assert_eq!(body["partial"], true, "{body}");
    let chat = &body["sources"]["chat"];
    assert_eq!(chat["status"], "error", "{chat}");
    assert_eq!(chat["attempts"], 2, "{chat}");
    assert_eq!(chat["latency_ms"], 420.0, "200 + 20 + 200: {chat}");
    assert!(chat["error"].as_str().unwrap().contains("injected failure"));
    assert_eq!(body["total_ms"], 420.0);

    // A first attempt that fails is retried, and the retry answers: not partial.
    let body = fanout_json(kitchen.addr, "/v1/fanout?flaky=weather").await;
    assert_eq!(body["partial"], false, "{body}");
    let weather = &body["sources"]["weather"];
    assert_eq!(weather["status"], "ok");
    assert_eq!(weather["attempts"], 2);
    assert_eq!(weather["latency_ms"], 260.0, "120 + 20 + 120: {weather}");
    assert_eq!(body["total_ms"], 300.0, "still the image's 300 ms");
}

#[tokio::test(start_paused = true)]
async fn fanout_breaker_skips_a_source_that_keeps_timing_out() {
    let kitchen = kitchen(&[&SOURCES[..], &["--fanout-image-timeout-ms", "250"]].concat()).await;
    // Five timeouts in a row trip the image source's breaker (5 calls, 100 % failures).
    for _ in 0..5 {
        let body = fanout_json(kitchen.addr, "/v1/fanout").await;
        assert_eq!(body["sources"]["image"]["status"], "timeout", "{body}");
    }
    // Now it is skipped at once: the request no longer waits for its 250 ms timeout.
    let body = fanout_json(kitchen.addr, "/v1/fanout").await;
    let image = &body["sources"]["image"];
    assert_eq!(image["status"], "circuit_open", "{image}");
    assert_eq!(image["attempts"], 0);
    assert_eq!(image["latency_ms"], 0.0);
    assert_eq!(image["retry_after_ms"], 10_000, "{image}");
    assert_eq!(body["partial"], true);
    assert_eq!(
        body["total_ms"], 200.0,
        "the chat is now the slowest: {body}"
    );
    // The other sources have breakers of their own, untouched.
    assert_eq!(body["sources"]["weather"]["status"], "ok");

    // After the open period a probe goes through; it times out again, and the source is
    // skipped again at once.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let body = fanout_json(kitchen.addr, "/v1/fanout").await;
    assert_eq!(body["sources"]["image"]["status"], "timeout", "{body}");
    let body = fanout_json(kitchen.addr, "/v1/fanout").await;
    assert_eq!(body["sources"]["image"]["status"], "circuit_open", "{body}");
}

#[tokio::test(start_paused = true)]
async fn fanout_retry_and_breaker_follow_their_flags() {
    let flags = [
        "--fanout-attempts",
        "3",
        "--fanout-retry-ms",
        "50",
        "--fanout-breaker-window",
        "2",
        "--fanout-breaker-min-calls",
        "2",
        "--fanout-breaker-open-secs",
        "4",
        "--fanout-image-timeout-ms",
        "250",
        "--fanout-chat-timeout-ms",
        "1000",
    ];
    let kitchen = kitchen(&[&SOURCES[..], &flags[..]].concat()).await;
    // Three attempts, 50 ms apart, not the default two 20 ms apart.
    let body = fanout_json(kitchen.addr, "/v1/fanout?fail=chat&image_ms=100").await;
    let chat = &body["sources"]["chat"];
    assert_eq!(chat["attempts"], 3, "{chat}");
    assert_eq!(
        chat["latency_ms"], 700.0,
        "200 + 50 + 200 + 50 + 200: {chat}"
    );

    assert_eq!(body["sources"]["image"]["status"], "ok", "{body}");

    // Two more answers, then a timeout (300 ms against 250): 1 failure in 4 calls would not
    // trip a 10-call window (25%), but it is half of the 2-call one, enough to trip it (at
    // 50%). The breaker then skips the source for 4 s, not 10. (These requests ask for faults,
    // so all of it happens on the faulted breakers.)
    for (image_ms, want) in [(100, "ok"), (100, "ok"), (300, "timeout")] {
        let body = fanout_json(kitchen.addr, &format!("/v1/fanout?image_ms={image_ms}")).await;
        assert_eq!(body["sources"]["image"]["status"], want, "{body}");
    }
    let body = fanout_json(kitchen.addr, "/v1/fanout?image_ms=100").await;
    let image = &body["sources"]["image"];
    assert_eq!(image["status"], "circuit_open", "{image}");
    assert_eq!(image["retry_after_ms"], 4_000, "{image}");
    // After the open period a probe goes through; a fast enough answer closes it again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let body = fanout_json(kitchen.addr, "/v1/fanout?image_ms=100").await;
    assert_eq!(body["sources"]["image"]["status"], "ok", "{body}");
    let body = fanout_json(kitchen.addr, "/v1/fanout?image_ms=100").await;
    assert_eq!(body["sources"]["image"]["status"], "ok", "{body}");
}

#[tokio::test]
async fn fanout_flags_out_of_range_fail_at_start_with_the_reason() {
    for (flag, value, reason) in [
        ("--fanout-attempts", "0", "fan-out retry"),
        ("--fanout-breaker-window", "0", "fan-out breaker"),
        ("--fanout-breaker-min-calls", "0", "fan-out breaker"),
    ] {
        let config = Config::parse_from([
            "kitchen",
            "--addr",
            "127.0.0.1:0",
            "--jobs-db",
            "sqlite::memory:",
            flag,
            value,
        ]);
        let error = match server::start(config).await {
            Ok(_) => panic!("{flag} {value} was accepted"),
            Err(error) => error.to_string(),
        };
        assert!(error.starts_with(reason), "{flag} {value}: {error}");
    }
}

#[tokio::test(start_paused = true)]
async fn fanout_bad_query_is_400_naming_the_parameter() {
    let kitchen = kitchen(&["--fanout-faults"]).await;
    for (query, named) in [
        ("mode=parallel", "`mode`"),
        ("weather_ms=soon", "`weather_ms`"),
        ("image_ms=-5", "`image_ms`"),
        ("chat_ms=60001", "`chat_ms`"),
        ("timeout_ms=0", "`timeout_ms`"),
        ("fail=moon", "`fail`"),
        ("fail=image%2Cmoon", "`moon`"),
        ("flaky=", "`flaky`"),
        ("colour=blue", "`colour`"),
    ] {
        let response = get(kitchen.addr, &format!("/v1/fanout?{query}")).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        let error = error_of(response).await;
        assert_eq!(error["code"], "invalid_request", "{query}");
        assert!(
            error["message"].as_str().unwrap().contains(named),
            "{query}: {error} should name {named}"
        );
    }
    // The route is GET only.
    let (response, _) = send(
        kitchen.addr,
        Request::post("/v1/fanout").body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "GET");
}

#[test]
fn fanout_breaker_open_flag_out_of_range_is_refused_when_parsed() {
    let parse =
        |secs: &str| Config::try_parse_from(["kitchen", "--fanout-breaker-open-secs", secs]);
    assert_eq!(
        parse("86400").unwrap().fanout.fanout_breaker_open_secs,
        86_400
    );
    for bad in ["0", "86401", "18446744073709551615"] {
        assert!(
            parse(bad).is_err(),
            "--fanout-breaker-open-secs {bad} was accepted"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn fanout_fault_parameters_are_a_400_without_the_flag() {
    let kitchen = kitchen(&SOURCES[..6]).await;
    for query in [
        "weather_ms=450",
        "image_ms=30",
        "chat_ms=0",
        "timeout_ms=150",
        "fail=image",
        "flaky=weather",
        "mode=sequential&fail=chat",
    ] {
        let response = get(kitchen.addr, &format!("/v1/fanout?{query}")).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        let error = error_of(response).await;
        let message = error["message"].as_str().unwrap();
        let named = query.rsplit('&').next().unwrap().split('=').next().unwrap();
        assert!(
            message.contains(&format!("`{named}`")) && message.contains("--fanout-faults"),
            "{query}: {error} should name `{named}` and the flag"
        );
    }
    // `mode` makes nothing slow nor fail: always accepted.
    let body = fanout_json(kitchen.addr, "/v1/fanout?mode=sequential").await;
    assert_eq!(body["total_ms"], 620.0, "{body}");
    assert_eq!(body["breakers"], "shared");
}

#[tokio::test(start_paused = true)]
async fn fanout_faults_never_open_the_breakers_other_requests_use() {
    let kitchen = kitchen(&SOURCES).await;
    // Five requests whose image source fails, and five whose every source times out: enough
    // to trip every breaker that records them (5 calls, 100 % failures).
    for query in ["fail=image", "timeout_ms=1"] {
        for _ in 0..5 {
            let body = fanout_json(kitchen.addr, &format!("/v1/fanout?{query}")).await;
            assert_eq!(body["breakers"], "faulted", "{body}");
            assert_eq!(body["partial"], true, "{body}");
        }
    }
    // They did trip the faulted breakers: the next faulted request skips every source.
    let body = fanout_json(kitchen.addr, "/v1/fanout?fail=image").await;
    for name in ["weather", "image", "chat"] {
        assert_eq!(body["sources"][name]["status"], "circuit_open", "{body}");
    }
    // A request without faults calls every source, and every one answers.
    let body = fanout_json(kitchen.addr, "/v1/fanout").await;
    assert_eq!(body["breakers"], "shared");
    assert_eq!(body["partial"], false, "{body}");
    for name in ["weather", "image", "chat"] {
        assert_eq!(body["sources"][name]["status"], "ok", "{body}");
        assert_eq!(body["sources"][name]["attempts"], 1, "{body}");
    }
}

#[tokio::test(start_paused = true)]
async fn fanout_query_is_percent_decoded() {
    let kitchen = kitchen(&SOURCES).await;
    // `%31%30` is "10", `%73` an "s": the weather source at 10 ms, the sources in sequence.
    let body = fanout_json(
        kitchen.addr,
        "/v1/fanout?mode=%73equential&weather_ms=%31%30",
    )
    .await;
    assert_eq!(body["mode"], "sequential", "{body}");
    assert_eq!(body["sources"]["weather"]["latency_ms"], 10.0, "{body}");
    assert_eq!(body["total_ms"], 510.0, "10 + 300 + 200: {body}");
}
