//! The endpoint grammar (`EndpointSpec`): what parses to what, what is refused and how the
//! error names the part at fault, and that the text it writes parses back to it.

use std::num::NonZeroUsize;

use brigade_balance::{Concurrency, EndpointSpec, InvalidConfig, InvalidEndpointSpec, Pool};
use proptest::prelude::*;

fn parse(text: &str) -> Result<EndpointSpec, InvalidEndpointSpec> {
    text.parse()
}

fn fixed(n: usize) -> Concurrency {
    Concurrency::Fixed(NonZeroUsize::new(n).unwrap())
}

#[test]
fn each_option_sets_its_part_and_the_others_keep_their_defaults() {
    let bare = parse("http://10.0.0.1:8000/v1").unwrap();
    assert_eq!(bare.url(), "http://10.0.0.1:8000/v1");
    assert_eq!(bare.id(), "10.0.0.1:8000");
    assert_eq!(bare.weight(), 1.0);
    assert_eq!(bare.tier(), 0);
    assert_eq!(bare.concurrency(), Concurrency::Unlimited);
    assert_eq!(bare.options().len(), 0);

    let full =
        parse(" https://api.example.com/v1 , id = provider ,weight=2.5, tier=1,concurrency=8 ")
            .unwrap();
    assert_eq!(full.url(), "https://api.example.com/v1");
    assert_eq!(full.id(), "provider");
    assert_eq!(full.weight(), 2.5);
    assert_eq!(full.tier(), 1);
    assert_eq!(full.concurrency(), fixed(8));

    let adaptive = parse("http://gpu:8000,concurrency=adaptive").unwrap();
    assert_eq!(adaptive.concurrency(), Concurrency::Adaptive);
}

#[test]
fn other_options_are_kept_in_order_for_the_caller() {
    let spec =
        parse("http://gpu:8000,alias=fast:small,tier=2,key-env=KEY,alias=big:large,note=").unwrap();
    assert_eq!(spec.tier(), 2);
    assert_eq!(
        spec.options().collect::<Vec<_>>(),
        [
            ("alias", "fast:small"),
            ("key-env", "KEY"),
            ("alias", "big:large"),
            ("note", "")
        ]
    );
}

#[test]
fn bad_text_is_refused_naming_the_part_at_fault() {
    let value = |part: &str, expected| InvalidEndpointSpec::Value {
        part: part.to_owned(),
        expected,
    };
    let above_zero = "a number above zero";
    let concurrency = "a number above zero, or `adaptive`";
    for (text, error, message) in [
        (
            "ftp://10.0.0.1",
            InvalidEndpointSpec::Url("ftp://10.0.0.1".to_owned()),
            "`ftp://10.0.0.1`: the URL must start with http:// or https:// and name a host",
        ),
        (
            "http://,tier=1",
            InvalidEndpointSpec::Url("http://".to_owned()),
            "`http://`: the URL must start with http:// or https:// and name a host",
        ),
        (
            "http://h,tier",
            InvalidEndpointSpec::NotAnOption("tier".to_owned()),
            "`tier`: expected OPTION=VALUE",
        ),
        (
            "http://h,",
            InvalidEndpointSpec::NotAnOption(String::new()),
            "``: expected OPTION=VALUE",
        ),
        (
            "http://h, =1",
            InvalidEndpointSpec::NotAnOption("=1".to_owned()),
            "`=1`: expected OPTION=VALUE",
        ),
        (
            "http://h,tier=1,tier=2",
            InvalidEndpointSpec::Repeated("tier".to_owned()),
            "`tier` is given twice",
        ),
        (
            "http://h,id=a,weight=1,id=b",
            InvalidEndpointSpec::Repeated("id".to_owned()),
            "`id` is given twice",
        ),
        (
            "http://h,id=",
            value("id=", "a name"),
            "`id=`: expected a name",
        ),
        (
            "http://h,weight=0",
            value("weight=0", above_zero),
            "`weight=0`: expected a number above zero",
        ),
        (
            "http://h,weight=-1",
            value("weight=-1", above_zero),
            "`weight=-1`: expected a number above zero",
        ),
        (
            "http://h,weight=inf",
            value("weight=inf", above_zero),
            "`weight=inf`: expected a number above zero",
        ),
        (
            "http://h,weight=NaN",
            value("weight=NaN", above_zero),
            "`weight=NaN`: expected a number above zero",
        ),
        (
            "http://h,weight=heavy",
            value("weight=heavy", above_zero),
            "`weight=heavy`: expected a number above zero",
        ),
        (
            "http://h,tier=-1",
            value("tier=-1", "0, 1, 2..."),
            "`tier=-1`: expected 0, 1, 2...",
        ),
        (
            "http://h,concurrency=0",
            value("concurrency=0", concurrency),
            "`concurrency=0`: expected a number above zero, or `adaptive`",
        ),
        (
            "http://h,concurrency=many",
            value("concurrency=many", concurrency),
            "`concurrency=many`: expected a number above zero, or `adaptive`",
        ),
    ] {
        let refused = parse(text).unwrap_err();
        assert_eq!(refused, error, "{text}");
        assert_eq!(refused.to_string(), message, "{text}");
    }
}

#[test]
fn the_config_carries_weight_tier_and_a_limit_held_at_n() {
    let spec = parse("http://gpu:8000,weight=3,tier=1,concurrency=2").unwrap();
    let pool = Pool::builder()
        .endpoint(spec.id(), (), spec.config().unwrap())
        .build()
        .unwrap();
    let first = pool.pick().unwrap();
    assert_eq!(first.tier(), 1);
    let second = pool.pick().unwrap();
    // Two calls in flight: the limit held at 2 keeps the endpoint out.
    let refused = pool.pick().unwrap_err();
    assert_eq!(refused.saturated(), 1);
    drop((first, second));
    assert!(pool.pick().is_ok());
}

#[test]
fn a_limit_beyond_what_a_semaphore_holds_is_refused_when_configured() {
    let spec = parse(&format!("http://gpu:8000,concurrency={}", usize::MAX)).unwrap();
    assert!(matches!(spec.config(), Err(InvalidConfig::Limit(_))));
}

fn spec_text() -> impl Strategy<Value = String> {
    let url = prop_oneof![
        Just("http://10.0.0.1:8000".to_owned()),
        Just("https://api.example.com/v1".to_owned()),
        Just("http://[::1]:9000/v1?x=1".to_owned()),
        "[a-z][a-z0-9.-]{0,12}(:[0-9]{1,5})?".prop_map(|host| format!("http://{host}")),
    ];
    let option = prop_oneof![
        "[a-z0-9_.-]{1,12}".prop_map(|id| ("id", id)),
        (1e-6..1e6_f64).prop_map(|w| ("weight", w.to_string())),
        any::<u32>().prop_map(|t| ("tier", t.to_string())),
        (1..100_000_usize).prop_map(|n| ("concurrency", n.to_string())),
        Just(("concurrency", "adaptive".to_owned())),
        "[a-z0-9:_-]{0,10}".prop_map(|v| ("extra", v)),
    ];
    (url, proptest::collection::vec(option, 0..6)).prop_map(|(url, options)| {
        let mut seen = Vec::new();
        let mut text = url;
        for (name, value) in options {
            // The crate's options once each; the caller's may repeat.
            if name != "extra" && seen.contains(&name) {
                continue;
            }
            seen.push(name);
            text.push_str(&format!(",{name}={value}"));
        }
        text
    })
}

proptest! {
    #[test]
    fn the_text_it_writes_parses_back_to_it(text in spec_text()) {
        let spec = parse(&text).unwrap();
        let written = spec.to_string();
        prop_assert_eq!(parse(&written).unwrap(), spec, "{} wrote {}", text, written);
    }

    #[test]
    fn blanks_around_parts_change_nothing(text in spec_text(), pad in "[ \t]{0,3}") {
        let padded = text
            .split(',')
            .enumerate()
            .map(|(i, part)| match part.split_once('=') {
                Some((name, value)) if i > 0 => format!("{pad}{name}{pad}={pad}{value}{pad}"),
                _ => format!("{pad}{part}{pad}"),
            })
            .collect::<Vec<_>>()
            .join(",");
        prop_assert_eq!(parse(&padded).unwrap(), parse(&text).unwrap());
    }

    #[test]
    fn any_text_parses_or_is_refused_without_a_panic(text in "\\PC{0,60}") {
        let _ = parse(&text);
    }

    #[test]
    fn a_valid_weight_is_any_finite_positive_number(weight in any::<f64>()) {
        let parsed = parse(&format!("http://h,weight={weight}"));
        prop_assert_eq!(parsed.is_ok(), weight.is_finite() && weight > 0.0, "{}", weight);
    }
}
