//! Tests of the kitchen's request parsing and wire types (`examples/kitchen/api.rs`).

use std::num::NonZeroU32;

use bytes::Bytes;

use crate::api::{ChatCompletionChunk, ChatRequest, ChunkChoice, ChunkView, Delta};

fn parse(body: &str) -> Result<ChatRequest, String> {
    ChatRequest::parse(Bytes::copy_from_slice(body.as_bytes())).map_err(|e| e.message)
}

#[test]
fn max_tokens_absent_stays_absent() {
    let request = parse(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#).unwrap();
    assert_eq!(request.max_tokens, None);
    let request =
        parse(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":null}"#)
            .unwrap();
    assert_eq!(request.max_tokens, None);
    let request = parse(
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"max_completion_tokens":9}"#,
    )
    .unwrap();
    assert_eq!(request.max_tokens.map(NonZeroU32::get), Some(9));
}

#[test]
fn the_body_is_kept_byte_for_byte() {
    let body = r#" {"model":"m","messages":[{"role":"user","content":"a\"b\u00e9"}],"temperature":0.2,"tools":[{"x":[1,{"y":null}]}]} "#;
    let request = parse(body).unwrap();
    assert_eq!(&request.body[..], body.as_bytes());
    assert_eq!(request.prompt(), "a\"bé");
}

#[test]
fn the_prompt_joins_strings_and_text_parts() {
    let request = parse(
        r#"{"model":"m","n":2,"stream":true,"stream_options":{"include_usage":true},"messages":[
            {"role":"system","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"one two"},{"type":"image_url"},{"text":"three"}]},
            {"role":"assistant","content":null,"tool_calls":[{"id":"c"}]}]}"#,
    )
    .unwrap();
    assert_eq!(request.prompt(), "be brief\none two\nthree");
    assert_eq!(request.prompt_tokens(), 5);
    assert_eq!(request.n.get(), 2);
    assert!(request.stream && request.include_usage);
}

#[test]
fn each_rejection_names_its_field() {
    // A valid request with `extra` fields after its messages.
    let with = |extra: &str| {
        format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#)
    };
    let messages = |messages: &str| format!(r#"{{"model":"m","messages":{messages}}}"#);
    for (body, named) in [
        (String::new(), "malformed JSON"),
        (with("").replace("}]}", "}]"), "malformed JSON"),
        (with("") + " x", "malformed JSON"),
        (
            r#"["m",[{"role":"user","content":"hi"}]]"#.to_owned(),
            "a JSON object",
        ),
        (r#""hi""#.to_owned(), "a JSON object"),
        (with("").replace(r#""model":"m","#, ""), "`model`"),
        (with("").replace(r#""m""#, r#""""#), "`model`"),
        (with("").replace(r#""m""#, "7"), "`model`"),
        (with(r#","model":"n""#), "duplicate field `model`"),
        (r#"{"model":"m"}"#.to_owned(), "`messages`"),
        (messages("[]"), "`messages`"),
        (messages("{}"), "`messages`"),
        (messages(r#"[["user","hi"]]"#), "`messages[0]`"),
        (messages(r#"[{"content":"hi"}]"#), "`role`"),
        (
            messages(r#"[{"role":"chef","content":"hi"}]"#),
            "`messages[0].role`",
        ),
        (
            messages(r#"[{"role":"user","content":7}]"#),
            "`messages[0].content`",
        ),
        (
            messages(r#"[{"role":"user","content":[7]}]"#),
            "`messages[0].content`",
        ),
        (
            messages(r#"[{"role":"user","content":"a"},{"role":"user"}]"#),
            "`messages[1].content`",
        ),
        (
            messages(r#"[{"role":"tool","content":null}]"#),
            "`messages[0].content`",
        ),
        (with(r#","max_tokens":0"#), "`max_tokens`"),
        (with(r#","max_tokens":-1"#), "`max_tokens`"),
        (with(r#","max_tokens":1.5"#), "`max_tokens`"),
        (
            with(r#","max_completion_tokens":0"#),
            "`max_completion_tokens`",
        ),
        (with(r#","stream":"yes""#), "`stream`"),
        (with(r#","stream_options":[true]"#), "`stream_options`"),
        (
            with(r#","stream_options":{"include_usage":1}"#),
            "`stream_options.include_usage`",
        ),
        (with(r#","n":0"#), "`n`"),
    ] {
        let error = parse(&body).expect_err(&body);
        assert!(
            error.contains(named),
            "{body}: {error:?} should name {named}"
        );
    }
}

#[test]
fn a_chunk_reads_back_as_written() {
    let choices = [ChunkChoice {
        index: 0,
        delta: Delta {
            role: None,
            content: Some("a \"quoted\" é"),
        },
        finish_reason: None,
    }];
    let chunk = ChatCompletionChunk {
        id: "chatcmpl-1",
        object: ChatCompletionChunk::OBJECT,
        created: 7,
        model: "m",
        choices: &choices,
        usage: None,
    };
    let json = serde_json::to_string(&chunk).unwrap();
    assert_eq!(
        json,
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{"content":"a \"quoted\" é"},"finish_reason":null}]}"#
    );
    let view: ChunkView<'_> = serde_json::from_str(&json).unwrap();
    assert_eq!(
        view.choices[0].delta.content.as_deref(),
        Some("a \"quoted\" é")
    );
}
