//! A job's events as a resumable SSE stream (`Jobs::follow_sse`), on SQLite in memory: where
//! a client resumes, when it is told to stop, and how a cut stream ends.

#![cfg(all(feature = "sse", feature = "sqlite"))]

use std::time::Duration;

use brigade_jobs::{Job, JobError, JobId, JobRecord, Jobs, NewJob, SseCut, SseFollow, SseReply};
use brigade_sse::Event;
use futures_util::StreamExt;
use tokio::sync::oneshot;

/// A store whose followers poll every 20 ms (a write in this process wakes them at once).
async fn open() -> Jobs {
    Jobs::builder()
        .poll_interval(Duration::from_millis(20))
        .open("sqlite::memory:")
        .await
        .unwrap()
}

/// A job run to its end by a worker that sends three progress events: six events in all
/// (queued, running, three progress, done).
async fn finished_job(jobs: &Jobs) -> JobRecord {
    jobs.worker("count", async |job: Job<()>| {
        for done in 1..=3 {
            job.progress().send(&done).await?;
        }
        Ok::<_, JobError>(())
    })
    .start()
    .unwrap();
    let id = jobs.enqueue(NewJob::new("count", &())).await.unwrap().id();
    let mut follow = jobs.follow(id, 0);
    while follow.next().await.is_some() {}
    let record = jobs.get(id).await.unwrap().unwrap();
    assert!(record.status.is_final());
    assert_eq!(record.last_event, 6);
    record
}

/// A queued job that no worker takes: one event so far.
async fn queued_job(jobs: &Jobs) -> (JobId, JobRecord) {
    let id = jobs.enqueue(NewJob::new("idle", &())).await.unwrap().id();
    (id, jobs.get(id).await.unwrap().unwrap())
}

fn stream(reply: SseReply) -> SseFollow {
    match reply {
        SseReply::Stream(stream) => stream,
        SseReply::NoContent => panic!("expected a stream, got no content"),
    }
}

/// Each job event as `id: seq` with its kind as data.
fn kinds(stream: SseFollow) -> SseFollow {
    stream.render(|event| Event::default().data(event.kind.as_str()))
}

fn event(seq: u64, kind: &'static str) -> Event {
    Event::default().data(kind).id(seq.to_string()).unwrap()
}

fn hint() -> Event {
    Event::default().retry(Duration::from_secs(1))
}

async fn collect(stream: SseFollow) -> Vec<Event> {
    stream.map(|item| item.unwrap()).collect().await
}

#[tokio::test]
async fn resuming_after_an_id_sends_the_events_after_it_then_ends() {
    let jobs = open().await;
    let record = finished_job(&jobs).await;
    let events = collect(kinds(stream(jobs.follow_sse(&record, Some(" 3\t"))))).await;
    assert_eq!(
        events,
        [
            hint(),
            event(4, "progress"),
            event(5, "progress"),
            event(6, "done")
        ]
    );
    jobs.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn a_live_job_is_followed_to_its_final_event() {
    let jobs = open().await;
    let (id, record) = queued_job(&jobs).await;
    let mut events = kinds(stream(jobs.follow_sse(&record, None))).map(|item| item.unwrap());
    assert_eq!(events.next().await, Some(hint()));
    assert_eq!(events.next().await, Some(event(1, "queued")));
    jobs.cancel(id, "not needed").await.unwrap();
    assert_eq!(events.next().await, Some(event(2, "cancelled")));
    assert_eq!(events.next().await, None);
    jobs.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn an_id_the_job_never_issued_is_ignored() {
    let jobs = open().await;
    let record = finished_job(&jobs).await;
    for last_event_id in [Some("7"), Some("99"), Some("x"), Some(""), None] {
        let events = collect(kinds(stream(jobs.follow_sse(&record, last_event_id)))).await;
        assert_eq!(events.len(), 7, "{last_event_id:?}: {events:?}");
        assert_eq!(events[0], hint());
        assert_eq!(
            events[1],
            event(1, "queued"),
            "{last_event_id:?}: from the first"
        );
        assert_eq!(events[6], event(6, "done"));
    }
    jobs.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn a_final_job_whose_client_has_every_event_gets_no_content() {
    let jobs = open().await;
    let record = finished_job(&jobs).await;
    assert!(matches!(
        jobs.follow_sse(&record, Some("6")),
        SseReply::NoContent
    ));
    assert!(matches!(
        jobs.follow_sse(&record, Some(" 6 ")),
        SseReply::NoContent
    ));
    // One event short: the last one is still to send.
    let events = collect(kinds(stream(jobs.follow_sse(&record, Some("5"))))).await;
    assert_eq!(events, [hint(), event(6, "done")]);
    // A job still going gets a stream even when the client has every event so far.
    let (_, queued) = queued_job(&jobs).await;
    assert!(matches!(
        jobs.follow_sse(&queued, Some("1")),
        SseReply::Stream(_)
    ));
    jobs.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn a_stopped_stream_ends_with_an_event_without_an_id() {
    let jobs = open().await;
    let (_, record) = queued_job(&jobs).await;
    let (stop, stopped) = oneshot::channel::<()>();
    let (cut_tx, cut_rx) = oneshot::channel();
    let mut events = kinds(stream(jobs.follow_sse(&record, None)))
        .retry(Duration::from_millis(250))
        .until(stopped)
        .cut(move |cut| {
            let _ = cut_tx.send(matches!(cut, SseCut::Stopped));
            Event::default().data("cut")
        })
        .map(|item| item.unwrap());
    assert_eq!(
        events.next().await,
        Some(Event::default().retry(Duration::from_millis(250)))
    );
    assert_eq!(events.next().await, Some(event(1, "queued")));
    stop.send(()).unwrap();
    assert_eq!(events.next().await, Some(Event::default().data("cut")));
    assert_eq!(events.next().await, None);
    assert!(cut_rx.await.unwrap(), "the cut is `Stopped`");
    jobs.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn a_failed_read_ends_with_an_error_event_without_an_id() {
    let jobs = open().await;
    let (_, record) = queued_job(&jobs).await;
    let mut events = kinds(stream(jobs.follow_sse(&record, Some("0")))).map(|item| item.unwrap());
    assert_eq!(events.next().await, Some(hint()));
    assert_eq!(events.next().await, Some(event(1, "queued")));
    // The store closes: the follower's next read fails.
    jobs.shutdown(Duration::ZERO).await;
    let cut = Event::default()
        .event("error")
        .unwrap()
        .data("the job's events could not be read");
    assert_eq!(events.next().await, Some(cut));
    assert_eq!(events.next().await, None);
}

#[tokio::test]
async fn a_stop_ready_at_once_cuts_before_any_event() {
    let jobs = open().await;
    let record = finished_job(&jobs).await;
    let stopped = kinds(stream(jobs.follow_sse(&record, Some("5")))).until(std::future::ready(()));
    let cut = Event::default()
        .event("error")
        .unwrap()
        .data("the stream stopped before the job's final event");
    assert_eq!(collect(stopped).await, [hint(), cut]);
    jobs.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn a_stop_after_the_final_event_sends_nothing_more() {
    let jobs = open().await;
    let record = finished_job(&jobs).await;
    let (stop, stopped) = oneshot::channel::<()>();
    let mut events = kinds(stream(jobs.follow_sse(&record, Some("5"))))
        .until(stopped)
        .map(|item| item.unwrap());
    assert_eq!(events.next().await, Some(hint()));
    assert_eq!(events.next().await, Some(event(6, "done")));
    stop.send(()).unwrap();
    assert_eq!(events.next().await, None);
    jobs.shutdown(Duration::ZERO).await;
}
