//! The kitchen in front of a pool of upstreams (`--upstream` repeated): an attempt that fails
//! before its first token goes to another upstream, never one after it; throttles cool an
//! upstream down; tiers fall back and return; hedges race a slow upstream; `/metrics` has a
//! series per upstream; bad `--upstream` values fail at start.
//!
//! The pool's draws are seeded (`--seed 42`): an upstream given `weight=1000` is the one its
//! first pick chooses (it is drawn first, and costs the same as the other while neither has a
//! latency sample).

use super::scripted::{Answer, Scripted};
use super::upstream_tests::{short_stream, streamed_order};
use super::*;

/// A kitchen in front of `upstreams` (each `URL[,OPTION=VALUE]...`), with these flags.
async fn pool(upstreams: &[String], flags: &[&str]) -> Running {
    let mut all = Vec::new();
    for upstream in upstreams {
        all.extend(["--upstream", upstream.as_str()]);
    }
    all.extend_from_slice(flags);
    kitchen(&all).await
}

/// The content of a streamed answer's chunks.
fn content(body: &str) -> String {
    sse_data(body)
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// A URL on which nothing listens: every connection is refused.
async fn refused() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

#[tokio::test(start_paused = true)]
async fn a_500_before_the_first_token_goes_to_the_other_upstream() {
    let first = Scripted::start(vec![Answer::whole(500, &[], "down")]).await;
    let second = Scripted::start(vec![short_stream("from the second")]).await;
    let proxy = pool(&[format!("{},weight=1000", first.url()), second.url()], &[]).await;
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = text(response).await;
    assert_eq!(content(&body), "from the second");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    assert_eq!((first.seen().len(), second.seen().len()), (1, 1));
    assert_eq!(upstream_breaker(&proxy, 0).metrics().failed_calls, 1);
    assert_eq!(metric(proxy.addr, "kitchen_retries_total").await, 1.0);
}

#[tokio::test(start_paused = true)]
async fn a_refused_connection_goes_to_the_other_upstream() {
    let second = Scripted::start(vec![short_stream("from the second")]).await;
    let proxy = pool(
        &[format!("{},weight=1000", refused().await), second.url()],
        &[],
    )
    .await;
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(content(&text(response).await), "from the second");
    assert_eq!(second.seen().len(), 1);
    assert_eq!(upstream_breaker(&proxy, 0).metrics().failed_calls, 1);
    assert_eq!(metric(proxy.addr, "kitchen_retries_total").await, 1.0);
}

#[tokio::test(start_paused = true)]
async fn a_first_chunk_timeout_goes_to_the_other_upstream() {
    let first = Scripted::start(vec![Answer::sse().stall()]).await;
    let second = Scripted::start(vec![short_stream("from the second")]).await;
    let proxy = pool(
        &[format!("{},weight=1000", first.url()), second.url()],
        &["--upstream-first-chunk-timeout-ms", "1000"],
    )
    .await;
    let start = tokio::time::Instant::now();
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(content(&text(response).await), "from the second");
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert_eq!((first.seen().len(), second.seen().len()), (1, 1));
    // The stalled attempt's connection was closed.
    assert_eq!(first.hangups().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failure_after_the_first_token_is_never_retried() {
    let chunk = r#"{"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":[{"index":0,"delta":{"content":"half"},"finish_reason":null}]}"#;
    let first = Scripted::start(vec![Answer::sse().event(chunk).cut()]).await;
    let second = Scripted::start(vec![short_stream("never")]).await;
    let proxy = pool(&[format!("{},weight=1000", first.url()), second.url()], &[]).await;
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    let events = sse_data(&text(response).await);
    assert_eq!(events[0], chunk);
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_error", "{events:?}");
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
    assert_eq!((first.seen().len(), second.seen().len()), (1, 0));
    assert_eq!(upstream_breaker(&proxy, 0).metrics().failed_calls, 1);
    assert_eq!(metric(proxy.addr, "kitchen_retries_total").await, 0.0);
}

#[tokio::test(start_paused = true)]
async fn a_429_with_retry_after_five_cools_its_upstream_for_five_seconds() {
    let busy = r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
    let first = Scripted::start(vec![
        Answer::whole(
            429,
            &[("content-type", "application/json"), ("retry-after", "5")],
            busy,
        ),
        short_stream("the first again"),
    ])
    .await;
    let second = Scripted::start(vec![
        short_stream("second 1"),
        short_stream("second 2"),
        Answer::whole(500, &[], "down"),
    ])
    .await;
    let proxy = pool(
        &[
            format!("{},id=first,weight=1000", first.url()),
            format!("{},id=second", second.url()),
        ],
        &[],
    )
    .await;
    // Throttled: retried at once on the other upstream, not after the 5 s.
    let start = tokio::time::Instant::now();
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    assert_eq!(content(&text(response).await), "second 1");
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(
        metric(
            proxy.addr,
            "kitchen_upstream_cooling_down{upstream=\"first\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            proxy.addr,
            "kitchen_upstream_cooldowns_total{upstream=\"first\"}"
        )
        .await,
        1.0
    );
    // A throttle is not a breaker failure.
    assert_eq!(upstream_breaker(&proxy, 0).metrics().failed_calls, 0);

    // Still cooling: the requests go elsewhere.
    tokio::time::sleep(Duration::from_millis(4_900)).await;
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    assert_eq!(content(&text(response).await), "second 2");
    assert_eq!((first.seen().len(), second.seen().len()), (1, 2));

    // Five seconds on, it is used again (here when the other fails).
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        metric(
            proxy.addr,
            "kitchen_upstream_cooling_down{upstream=\"first\"}"
        )
        .await,
        0.0
    );
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    assert_eq!(content(&text(response).await), "the first again");
    assert_eq!(first.seen().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn tier_one_answers_while_tier_zero_is_down_and_tier_zero_when_it_is_back() {
    let primary = Scripted::start(vec![
        Answer::whole(500, &[], "down"),
        short_stream("primary back"),
    ])
    .await;
    let fallback =
        Scripted::start(vec![short_stream("fallback 1"), short_stream("fallback 2")]).await;
    let proxy = pool(
        &[
            format!("{},id=primary", primary.url()),
            format!("{},id=fallback,tier=1", fallback.url()),
        ],
        &[
            "--breaker-window",
            "1",
            "--breaker-min-calls",
            "1",
            "--breaker-open-secs",
            "2",
            "--breaker-probes",
            "1",
        ],
    )
    .await;
    // Tier 0 fails and opens its breaker: the retry falls back to tier 1.
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    assert_eq!(content(&text(response).await), "fallback 1");
    assert_eq!(
        metric(
            proxy.addr,
            "kitchen_upstream_breaker_state{upstream=\"primary\",state=\"open\"}"
        )
        .await,
        1.0
    );
    // While it is open, tier 1 answers.
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    assert_eq!(content(&text(response).await), "fallback 2");
    assert_eq!((primary.seen().len(), fallback.seen().len()), (1, 2));

    // Half-open after 2 s: tier 0 is back, and answers.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    assert_eq!(content(&text(response).await), "primary back");
    assert_eq!((primary.seen().len(), fallback.seen().len()), (2, 2));
    assert_eq!(
        upstream_breaker(&proxy, 0).state(),
        brigade_breaker::State::Closed
    );
}

#[tokio::test(start_paused = true)]
async fn a_hedge_after_50_ms_wins_on_the_fast_upstream_and_the_slow_one_is_cancelled() {
    let slow = Scripted::start(vec![
        Answer::sse()
            .pause(Duration::from_secs(5))
            .event(r#"{"choices":[]}"#)
            .done(),
    ])
    .await;
    let fast = Scripted::start(vec![short_stream("from the fast one")]).await;
    let proxy = pool(
        &[format!("{},weight=1000", slow.url()), fast.url()],
        &["--hedge-after-ms", "50"],
    )
    .await;
    let start = tokio::time::Instant::now();
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    let waited = start.elapsed();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        waited >= Duration::from_millis(50) && waited < Duration::from_millis(60),
        "{waited:?}"
    );
    assert_eq!(content(&text(response).await), "from the fast one");
    assert_eq!((slow.seen().len(), fast.seen().len()), (1, 1));
    // The slow request lost: its connection was closed at once.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let hangups = slow.hangups();
    assert_eq!(hangups.len(), 1);
    assert!(
        hangups[0].at - start < Duration::from_millis(60),
        "{hangups:?}"
    );
    assert_eq!(metric(proxy.addr, "kitchen_hedges_total").await, 1.0);
    assert_eq!(metric(proxy.addr, "kitchen_retries_total").await, 0.0);

    // A first chunk before the delay: no hedge.
    let quick = Scripted::start(vec![
        Answer::sse()
            .pause(Duration::from_millis(20))
            .event(r#"{"choices":[{"index":0,"delta":{"content":"in time"}}]}"#)
            .done(),
    ])
    .await;
    let idle = Scripted::start(Vec::new()).await;
    let proxy = pool(
        &[format!("{},weight=1000", quick.url()), idle.url()],
        &["--hedge-after-ms", "50"],
    )
    .await;
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    assert_eq!(content(&text(response).await), "in time");
    assert_eq!(idle.seen().len(), 0);
    assert_eq!(metric(proxy.addr, "kitchen_hedges_total").await, 0.0);
}

#[tokio::test(start_paused = true)]
async fn metrics_have_a_series_per_upstream() {
    let a = Scripted::start(vec![short_stream("one")]).await;
    let b = Scripted::start(Vec::new()).await;
    let proxy = pool(
        &[
            format!("{},id=a,weight=1000,concurrency=4", a.url()),
            format!("{},id=b,concurrency=adaptive", b.url()),
        ],
        &[],
    )
    .await;
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    assert_eq!(content(&text(response).await), "one");
    let series = [
        ("kitchen_upstream_picks_total{upstream=\"a\"}", 1.0),
        ("kitchen_upstream_picks_total{upstream=\"b\"}", 0.0),
        ("kitchen_upstream_in_flight{upstream=\"a\"}", 0.0),
        ("kitchen_upstream_limit{upstream=\"a\"}", 4.0),
        ("kitchen_upstream_limit{upstream=\"b\"}", 20.0),
        (
            "kitchen_upstream_breaker_state{upstream=\"a\",state=\"closed\"}",
            1.0,
        ),
        (
            "kitchen_upstream_breaker_state{upstream=\"b\",state=\"open\"}",
            0.0,
        ),
        ("kitchen_upstream_cooling_down{upstream=\"b\"}", 0.0),
        ("kitchen_upstream_cooldowns_total{upstream=\"a\"}", 0.0),
        ("kitchen_hedges_total", 0.0),
    ];
    // The scrape reads the job store, on sqlx's threads: the paused clock is held meanwhile.
    let body = {
        let _held = crate::HeldClock::new();
        text(get(proxy.addr, "/metrics").await).await
    };
    for (name, value) in series {
        let line = body
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in\n{body}"));
        assert_eq!(line.trim().parse::<f64>().unwrap(), value, "{name}");
    }
    // The latency estimate: a's first byte came at once on the paused clock; b has none yet
    // (the pool's default, 1 s).
    assert_eq!(
        metric(
            proxy.addr,
            "kitchen_upstream_latency_seconds{upstream=\"a\"}"
        )
        .await,
        0.0
    );
    assert_eq!(
        metric(
            proxy.addr,
            "kitchen_upstream_latency_seconds{upstream=\"b\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn bad_upstream_values_fail_at_start_naming_the_bad_part() {
    let parse = |values: &[&str]| {
        let mut args = vec!["kitchen", "--addr", "127.0.0.1:0"];
        for value in values {
            args.extend(["--upstream", value]);
        }
        Config::try_parse_from(args).map_err(|e| e.to_string())
    };
    for (bad, named) in [
        (
            "http://10.0.0.1:8000,weight=0",
            "`weight=0`: expected a number above zero",
        ),
        ("http://10.0.0.1:8000,weight=heavy", "`weight=heavy`"),
        ("http://10.0.0.1:8000,wieght=2", "`wieght`: unknown option"),
        ("http://10.0.0.1:8000,tier", "`tier`: expected OPTION=VALUE"),
        ("http://10.0.0.1:8000,tier=-1", "`tier=-1`"),
        (
            "http://10.0.0.1:8000,concurrency=many",
            "`concurrency=many`",
        ),
        (
            "http://10.0.0.1:8000,tier=1,tier=2",
            "`tier` is given twice",
        ),
        (
            "http://10.0.0.1:8000,alias=fast",
            "`alias=fast`: expected NAME:MODEL",
        ),
        (
            "ftp://10.0.0.1",
            "`ftp://10.0.0.1`: the URL must start with http://",
        ),
        (
            "http://10.0.0.1:8000,key-env=BRIGADE_TEST_SURELY_UNSET",
            "`key-env=BRIGADE_TEST_SURELY_UNSET`: the variable is not set",
        ),
    ] {
        let error = parse(&[bad]).unwrap_err();
        assert!(error.contains(named), "{bad}: {error}");
    }
    // Two upstreams with one id: refused when the kitchen starts.
    for twice in [
        ["http://10.0.0.1:8000", "http://10.0.0.1:8000/v1"],
        ["http://10.0.0.1:8000,id=gpu", "http://10.0.0.2:8000,id=gpu"],
    ] {
        let config = parse(&twice).unwrap();
        let error = server::start(config).await.unwrap_err().to_string();
        assert!(error.contains("two upstreams have the id"), "{error}");
    }

    let spec = upstream_spec::UpstreamSpec::parse_with(
        "https://api.example.com/v1,tier=1,weight=2.5,concurrency=8,key-env=PROVIDER_KEY,\
         alias=fast:gpt-4o-mini,alias=big:gpt-4o",
        |name| (name == "PROVIDER_KEY").then(|| "sk-provider".to_owned()),
    )
    .unwrap();
    assert_eq!(spec.endpoint.id(), "api.example.com");
    assert_eq!((spec.endpoint.tier(), spec.endpoint.weight()), (1, 2.5));
    assert_eq!(
        spec.endpoint.concurrency(),
        brigade_balance::Concurrency::Fixed(8.try_into().unwrap())
    );
    assert_eq!(spec.key.as_ref().unwrap().expose(), "sk-provider");
    assert_eq!(spec.aliases[1].upstream, "gpt-4o");
    assert!(!format!("{spec:?}").contains("sk-provider"), "{spec:?}");
}

#[test]
fn the_upstream_key_is_not_in_the_configurations_debug() {
    let config = Config::try_parse_from([
        "kitchen",
        "--upstream",
        "http://10.0.0.1:8000",
        "--upstream-key",
        "sk-very-secret",
    ])
    .unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains("sk-very-secret"), "{debug}");
    assert!(debug.contains("***"), "{debug}");
}

#[tokio::test(start_paused = true)]
async fn each_upstream_gets_its_own_key_and_aliases() {
    let own = Scripted::start(vec![short_stream("own")]).await;
    let shared = Scripted::start(vec![short_stream("shared")]).await;
    let mut config = Config::parse_from([
        "kitchen",
        "--addr",
        "127.0.0.1:0",
        "--upstream",
        &format!("{},weight=1000,alias=fast:small-model", own.url()),
        "--upstream",
        &shared.url(),
        "--upstream-key",
        "sk-shared",
        "--model-alias",
        "fast=shared-model",
    ]);
    // As `key-env=OWN_KEY` would read it (a test cannot set a variable safely).
    config.upstreams[0].key = Some(upstream_spec::Secret::from("sk-own".to_owned()));
    let proxy = crate::start(config).await;
    let mut order = streamed_order();
    order["model"] = json!("fast");
    let response = post(proxy.addr, &order, &[]).await;
    assert_eq!(content(&text(response).await), "own");
    let seen = own.seen();
    assert_eq!(seen[0].header("authorization"), Some("Bearer sk-own"));
    assert_eq!(seen[0].json()["model"], "small-model");
    // The next goes to the first again (its latency is the lower), whose script is over (a
    // 500): the retry goes to the other.
    let response = post(proxy.addr, &order, &[]).await;
    assert_eq!(content(&text(response).await), "shared");
    let seen = shared.seen();
    assert_eq!(seen[0].header("authorization"), Some("Bearer sk-shared"));
    assert_eq!(seen[0].json()["model"], "shared-model");
}

#[tokio::test(start_paused = true)]
async fn a_whole_answer_fails_over_and_hedges_too() {
    let answer = r#"{"id":"c","object":"chat.completion","created":0,"model":"m","choices":[]}"#;
    let first = Scripted::start(vec![Answer::whole(502, &[], "bad gateway")]).await;
    let second = Scripted::start(vec![Answer::json(answer)]).await;
    let proxy = pool(&[format!("{},weight=1000", first.url()), second.url()], &[]).await;
    let mut order = streamed_order();
    order["stream"] = json!(false);
    let response = post(proxy.addr, &order, &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response).await, answer);
    assert_eq!((first.seen().len(), second.seen().len()), (1, 1));

    // Hedged: the slow whole answer loses to the fast one after 50 ms.
    let slow = Scripted::start(vec![Answer::silent()]).await;
    let fast = Scripted::start(vec![Answer::json(answer)]).await;
    let proxy = pool(
        &[format!("{},weight=1000", slow.url()), fast.url()],
        &["--hedge-after-ms", "50"],
    )
    .await;
    let start = tokio::time::Instant::now();
    let response = post(proxy.addr, &order, &[]).await;
    assert_eq!(text(response).await, answer);
    assert!(start.elapsed() < Duration::from_millis(60));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(slow.hangups().len(), 1);
    assert_eq!(metric(proxy.addr, "kitchen_hedges_total").await, 1.0);
}
