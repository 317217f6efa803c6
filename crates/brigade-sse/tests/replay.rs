//! `Replay`: resume right after `Last-Event-ID`, or tell that it aged out or is unknown; ids carry
//! a per-buffer epoch so ids of another buffer (a restarted server) are never resumed.

use std::num::NonZeroUsize;
use std::sync::Arc;

use brigade_sse::{Decoder, Event, InvalidConfig, Replay, ReplayMiss};
use bytes::BytesMut;

/// A buffer of `max_events` with the fixed epoch `0xe`: ids `e-1`, `e-2`, ...
fn replay(max_events: usize) -> Replay {
    Replay::builder()
        .max_events(max_events)
        .epoch(0xe)
        .build()
        .unwrap()
}

fn encoded(events: &[(u64, Arc<Event>)]) -> String {
    let mut buf = BytesMut::new();
    for (_, event) in events {
        event.encode(&mut buf);
    }
    String::from_utf8(buf.to_vec()).unwrap()
}

fn seqs(events: &[(u64, Arc<Event>)]) -> Vec<u64> {
    events.iter().map(|(seq, _)| *seq).collect()
}

#[test]
fn push_numbers_events_from_one_and_sets_their_id() {
    let replay = replay(4);
    let (seq, event) = replay.push(Event::default().data("a"));
    assert_eq!(seq, 1);
    assert_eq!(encoded(&[(seq, event)]), "id: e-1\ndata: a\n\n");
    let (seq, event) = replay.push(Event::default().data("b"));
    assert_eq!(seq, 2);
    assert_eq!(encoded(&[(seq, event)]), "id: e-2\ndata: b\n\n");
    assert_eq!(replay.last_seq(), Some(2));
    assert_eq!(replay.epoch(), 0xe);
}

#[test]
fn push_replaces_an_id_the_event_had() {
    let replay = replay(4);
    let (seq, event) = replay.push(Event::default().id("mine").unwrap().data("a"));
    assert_eq!(encoded(&[(seq, event)]), "id: e-1\ndata: a\n\n");
}

#[test]
fn resume_returns_the_events_right_after_the_last_seen_id() {
    let replay = replay(8);
    for data in ["a", "b", "c", "d"] {
        replay.push(Event::default().data(data));
    }
    let missed = replay.events_after("e-2").unwrap();
    assert_eq!(seqs(&missed), [3, 4]);
    assert_eq!(encoded(&missed), "id: e-3\ndata: c\n\nid: e-4\ndata: d\n\n");
}

#[test]
fn resume_with_the_id_a_reader_decoded_from_the_stream() {
    // The id goes through a real reader and back, as a browser's `Last-Event-ID` would.
    let replay = Replay::new(NonZeroUsize::new(8).unwrap());
    let mut buf = BytesMut::new();
    for data in ["a", "b", "c"] {
        replay.push(Event::default().data(data)).1.encode(&mut buf);
    }
    let mut decoder = Decoder::new();
    decoder.feed(&buf[..buf.len() / 2]); // the client saw the first event only
    assert_eq!(decoder.next_event().unwrap().unwrap().data(), "a");
    let last_event_id = decoder.last_event_id().unwrap().to_owned();
    let missed = replay.events_after(&last_event_id).unwrap();
    assert_eq!(seqs(&missed), [2, 3]);
}

#[test]
fn resume_from_zero_replays_everything_while_nothing_aged_out() {
    let replay = replay(8);
    replay.push(Event::default().data("a"));
    replay.push(Event::default().data("b"));
    assert_eq!(seqs(&replay.events_after("e-0").unwrap()), [1, 2]);
}

#[test]
fn resume_from_the_newest_id_is_up_to_date() {
    let replay = replay(2);
    for data in ["a", "b", "c"] {
        replay.push(Event::default().data(data));
    }
    assert_eq!(replay.events_after("e-3"), Ok(vec![]));
}

#[test]
fn resume_from_the_id_just_before_the_oldest_still_works() {
    let replay = replay(2);
    for data in ["a", "b", "c"] {
        replay.push(Event::default().data(data));
    }
    // Held: 2 and 3. A client that saw 1 misses nothing.
    assert_eq!(
        encoded(&replay.events_after("e-1").unwrap()),
        "id: e-2\ndata: b\n\nid: e-3\ndata: c\n\n"
    );
}

#[test]
fn resume_from_an_evicted_id_has_aged_out() {
    let replay = replay(2);
    for data in ["a", "b", "c", "d"] {
        replay.push(Event::default().data(data));
    }
    // Held: 3 and 4. A client that saw 1 missed 2, which is gone.
    let aged_out = Err(ReplayMiss::AgedOut {
        oldest_seq: Some(3),
    });
    assert_eq!(replay.events_after("e-1"), aged_out);
    assert_eq!(replay.events_after("e-0"), aged_out);
    // The boundary: having seen 2, nothing is missing.
    assert_eq!(seqs(&replay.events_after("e-2").unwrap()), [3, 4]);
}

#[test]
fn id_never_issued_is_unknown() {
    let replay = replay(2);
    replay.push(Event::default().data("a"));
    for id in [
        "e-2",
        "e-99",
        "",
        "1",
        "0",
        "e-",
        "e",
        "-1",
        "e--1",
        "e-01",
        "e-+1",
        "e- 1",
        "e-1 ",
        " e-1",
        "E-1",
        "0e-1",
        "e-1-1",
        "e-99999999999999999999999",
        "abc",
    ] {
        assert_eq!(replay.events_after(id), Err(ReplayMiss::Unknown), "{id:?}");
    }
}

#[test]
fn id_from_a_buffer_before_a_restart_is_unknown_not_resumed() {
    // The old process issued ids 1..=5; the new one has issued 1..=3 of its own.
    let before = Replay::new(NonZeroUsize::new(8).unwrap());
    let old_ids: Vec<String> = (0..5)
        .map(|_| {
            let (_, event) = before.push(Event::default().data("old"));
            id_of(&event)
        })
        .collect();
    drop(before);
    let after = Replay::new(NonZeroUsize::new(8).unwrap());
    for _ in 0..3 {
        after.push(Event::default().data("new"));
    }
    for old in &old_ids {
        assert_eq!(after.events_after(old), Err(ReplayMiss::Unknown), "{old}");
    }
}

#[test]
fn buffers_have_distinct_epochs_and_short_ascii_ids() {
    let a = Replay::new(NonZeroUsize::new(1).unwrap());
    let b = Replay::new(NonZeroUsize::new(1).unwrap());
    assert_ne!(a.epoch(), b.epoch());
    let id = id_of(&a.push(Event::default().data("x")).1);
    assert_eq!(id, format!("{:x}-1", a.epoch()));
    assert!(id.len() <= 14, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_graphic()), "{id}");
    assert_eq!(b.events_after(&id), Err(ReplayMiss::Unknown));
}

#[test]
fn empty_replay_knows_only_zero() {
    let replay = replay(2);
    assert_eq!(replay.events_after("e-0"), Ok(vec![]));
    assert_eq!(replay.events_after("e-1"), Err(ReplayMiss::Unknown));
    assert_eq!(replay.last_seq(), None);
    assert!(replay.is_empty());
}

#[test]
fn buffer_keeps_at_most_its_capacity() {
    let replay = replay(3);
    for n in 0..10 {
        replay.push(Event::default().data(n.to_string()));
    }
    assert_eq!(replay.len(), 3);
    assert_eq!(replay.max_events(), 3);
    assert_eq!(seqs(&replay.events_after("e-7").unwrap()), [8, 9, 10]);
    assert_eq!(
        replay.events_after("e-6"),
        Err(ReplayMiss::AgedOut {
            oldest_seq: Some(8)
        })
    );
}

#[test]
fn clones_share_one_buffer_across_threads() {
    let replay = replay(1000);
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let replay = replay.clone();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    replay.push(Event::default().data("x"));
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    assert_eq!(replay.last_seq(), Some(400));
    let all = replay.events_after("e-0").unwrap();
    assert_eq!(seqs(&all), (1..=400).collect::<Vec<_>>());
    // Each event carries the id matching its sequence number.
    for (seq, event) in &all {
        assert_eq!(id_of(event), format!("e-{seq}"));
    }
}

#[test]
fn replay_miss_messages_are_lowercase_without_period() {
    for miss in [
        ReplayMiss::AgedOut { oldest_seq: None },
        ReplayMiss::Unknown,
    ] {
        let message = miss.to_string();
        assert!(message.chars().next().unwrap().is_lowercase());
        assert!(!message.ends_with('.'));
    }
}

/// The id an event carries, read back as a client would.
fn id_of(event: &Event) -> String {
    let mut buf = BytesMut::new();
    event.encode(&mut buf);
    let mut decoder = Decoder::new();
    decoder.feed(&buf);
    decoder
        .next_event()
        .unwrap()
        .unwrap()
        .id()
        .unwrap()
        .to_owned()
}

#[test]
fn huge_capacity_is_not_allocated_up_front() {
    // `VecDeque::with_capacity(usize::MAX)` would panic (or abort on a large real allocation).
    let replay = Replay::builder()
        .max_events(usize::MAX)
        .epoch(1)
        .build()
        .unwrap();
    replay.push(Event::default().data("x"));
    assert_eq!((replay.len(), replay.max_events()), (1, usize::MAX));
    assert_eq!(seqs(&replay.events_after("1-0").unwrap()), [1]);
}

/// An event of 100 encoded bytes in a buffer of epoch `e` while the sequence number has one
/// digit: `id: e-1\n` (8), `data: ` and 84 bytes and a LF (91), the blank line (1).
fn hundred_bytes() -> Event {
    Event::default().data("x".repeat(84))
}

/// A buffer of epoch `e` keeping at most `max_bytes` (and 1000 events).
fn replay_of_bytes(max_bytes: usize) -> Replay {
    Replay::builder()
        .max_events(1000)
        .max_bytes(max_bytes)
        .epoch(0xe)
        .build()
        .unwrap()
}

#[test]
fn byte_bound_evicts_the_oldest_events() {
    let replay = replay_of_bytes(300);
    for _ in 0..5 {
        let (_, event) = replay.push(hundred_bytes());
        assert_eq!(event.encoded_len(), 100);
    }
    assert_eq!((replay.len(), replay.bytes()), (3, 300));
    assert_eq!(seqs(&replay.events_after("e-2").unwrap()), [3, 4, 5]);
    // One byte less and only two fit.
    let replay = replay_of_bytes(299);
    for _ in 0..5 {
        replay.push(hundred_bytes());
    }
    assert_eq!((replay.len(), replay.bytes()), (2, 200));
}

#[test]
fn resume_after_eviction_by_bytes_has_aged_out() {
    let replay = replay_of_bytes(300);
    for _ in 0..5 {
        replay.push(hundred_bytes());
    }
    // Held: 3, 4 and 5 (the event count alone would have kept all five).
    let aged_out = Err(ReplayMiss::AgedOut {
        oldest_seq: Some(3),
    });
    assert_eq!(replay.events_after("e-1"), aged_out);
    assert_eq!(replay.events_after("e-0"), aged_out);
    assert_eq!(seqs(&replay.events_after("e-2").unwrap()), [3, 4, 5]);
}

#[test]
fn replay_from_new_is_bounded_by_a_mebibyte() {
    // Twenty events of about 100 KB: 2 MB, within the event count of 1024.
    let replay = Replay::new(NonZeroUsize::new(1024).unwrap());
    for _ in 0..20 {
        replay.push(Event::default().data("x".repeat(100_000)));
    }
    let first = format!("{:x}-1", replay.epoch());
    assert!(
        matches!(
            replay.events_after(&first),
            Err(ReplayMiss::AgedOut {
                oldest_seq: Some(_)
            })
        ),
        "the whole 2 MB is still held"
    );
    assert_eq!(replay.len(), 10); // 10 events of about 100,030 bytes within 1 MiB
    assert!(replay.bytes() <= 1024 * 1024);
}

#[test]
fn event_larger_than_the_byte_bound_is_sent_but_not_kept() {
    let replay = replay_of_bytes(300);
    replay.push(hundred_bytes());
    replay.push(hundred_bytes());
    let (seq, big) = replay.push(Event::default().data("x".repeat(400)));
    assert_eq!(seq, 3);
    assert_eq!(id_of(&big), "e-3", "the event is numbered and sent");
    assert_eq!(
        (replay.len(), replay.bytes()),
        (0, 0),
        "and nothing is kept"
    );
    // A client that saw 2 missed 3, which cannot be replayed; one that saw 3 is up to date.
    assert_eq!(
        replay.events_after("e-2"),
        Err(ReplayMiss::AgedOut { oldest_seq: None })
    );
    assert_eq!(replay.events_after("e-3"), Ok(vec![]));
    // The next event is kept again.
    replay.push(hundred_bytes());
    assert_eq!(seqs(&replay.events_after("e-3").unwrap()), [4]);
    assert_eq!(
        replay.events_after("e-2"),
        Err(ReplayMiss::AgedOut {
            oldest_seq: Some(4)
        })
    );
}

#[test]
fn event_of_exactly_the_byte_bound_is_kept() {
    let replay = replay_of_bytes(100);
    replay.push(hundred_bytes());
    replay.push(hundred_bytes());
    assert_eq!((replay.len(), replay.bytes()), (1, 100));
    assert_eq!(seqs(&replay.events_after("e-1").unwrap()), [2]);
}

#[test]
fn bounds_of_zero_are_refused_when_built() {
    assert_eq!(
        Replay::builder().max_events(0).build().unwrap_err(),
        InvalidConfig::ZeroMaxEvents
    );
    assert_eq!(
        Replay::builder().max_bytes(0).build().unwrap_err(),
        InvalidConfig::ZeroMaxBytes
    );
    let message = InvalidConfig::ZeroMaxBytes.to_string();
    assert!(message.starts_with(char::is_lowercase) && !message.ends_with('.'));
}

#[test]
fn builder_defaults_are_1024_events_and_a_mebibyte() {
    let replay = Replay::builder().build().unwrap();
    assert_eq!(
        (replay.max_events(), replay.max_bytes()),
        (1024, 1024 * 1024)
    );
    let replay = Replay::new(NonZeroUsize::new(16).unwrap());
    assert_eq!((replay.max_events(), replay.max_bytes()), (16, 1024 * 1024));
}

#[test]
fn resume_shares_the_pushed_events_without_copying() {
    let replay = replay(8);
    let pushed: Vec<Arc<Event>> = (0..4)
        .map(|n| replay.push(Event::default().data(n.to_string())).1)
        .collect();
    let resumed = replay.events_after("e-0").unwrap();
    assert_eq!(resumed.len(), 4);
    for ((_, resumed), pushed) in resumed.iter().zip(&pushed) {
        assert!(Arc::ptr_eq(resumed, pushed), "a resume copied an event");
    }
    // The buffer, the pushed handle and the resumed one.
    assert_eq!(Arc::strong_count(&pushed[0]), 3);
}

#[test]
fn bytes_count_the_encoded_events_with_their_ids() {
    let replay = replay(8);
    let mut total = 0;
    for data in ["a", "bb", ""] {
        let (_, event) = replay.push(Event::default().data(data));
        let mut buf = BytesMut::new();
        event.encode(&mut buf);
        total += buf.len();
    }
    // An event with nothing but the id still ends with its blank line.
    let (_, event) = replay.push(Event::default());
    assert_eq!(event.encoded_len(), "id: e-4\n\n".len());
    total += event.encoded_len();
    assert_eq!(replay.bytes(), total);
}
