//! A scripted upstream: a raw-socket HTTP/1.1 server (plain, or TLS through tokio-rustls) that
//! answers each request with the next answer of its script, written exactly as scripted (head,
//! chunks, pauses, a cut, a stall), and records what it was sent and when a client hung up.
//!
//! Answers are written in HTTP/1.1 chunked framing, one frame per scripted write, so a test
//! decides the packets: a multi-byte character can be split between two of them. Pauses and
//! stalls run on tokio's clock (paused in the tests), and while it waits the server reads its
//! socket, so a client that closes the connection is seen at once.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

/// One request the upstream was sent.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// When its head and body were read.
    pub(crate) at: Instant,
    /// The connection it came on (numbered from 1).
    pub(crate) connection: usize,
}

impl Seen {
    /// The body as JSON.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// A client that closed the connection while an answer was being written.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hangup {
    /// When the upstream saw it.
    pub(crate) at: Instant,
    /// The events (`data:` writes) of the answer written before.
    pub(crate) events_written: usize,
}

/// One step of an answer.
#[derive(Clone, Debug)]
enum Step {
    /// Bytes written as they are (a head, a whole body, the last chunk).
    Raw(Bytes),
    /// Bytes written as one chunk of the chunked body; `event` if it is an event.
    Chunk {
        bytes: Bytes,
        event: bool,
    },
    Pause(Duration),
    /// Never goes on (until the client leaves).
    Stall,
    /// Closes the connection.
    Cut,
}

/// An answer: its steps, written in order.
#[derive(Clone, Debug, Default)]
pub(crate) struct Answer {
    steps: Vec<Step>,
}

impl Answer {
    /// A whole answer: status, headers, and a body with its length.
    pub(crate) fn whole(status: u16, headers: &[(&str, &str)], body: &str) -> Self {
        let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
        Self {
            steps: vec![Step::Raw(Bytes::from(head))],
        }
    }

    /// A JSON answer (200).
    pub(crate) fn json(body: &str) -> Self {
        Self::whole(200, &[("content-type", "application/json")], body)
    }

    /// The head of an event stream (200, chunked); its events follow.
    pub(crate) fn sse() -> Self {
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                    transfer-encoding: chunked\r\n\r\n";
        Self {
            steps: vec![Step::Raw(Bytes::from_static(head.as_bytes()))],
        }
    }

    /// Nothing at all, not even a head, until the client leaves.
    pub(crate) fn silent() -> Self {
        Self::default().stall()
    }

    /// An event: `data: {json}` and a blank line, in one chunk.
    #[must_use]
    pub(crate) fn event(mut self, json: &str) -> Self {
        self.steps.push(Step::Chunk {
            bytes: Bytes::from(format!("data: {json}\n\n")),
            event: true,
        });
        self
    }

    /// Bytes of the event stream, in one chunk of their own (part of an event, a comment).
    #[must_use]
    pub(crate) fn raw(mut self, bytes: &[u8]) -> Self {
        self.steps.push(Step::Chunk {
            bytes: Bytes::copy_from_slice(bytes),
            event: false,
        });
        self
    }

    #[must_use]
    pub(crate) fn pause(mut self, pause: Duration) -> Self {
        self.steps.push(Step::Pause(pause));
        self
    }

    /// `data: [DONE]` and the end of the body.
    #[must_use]
    pub(crate) fn done(self) -> Self {
        self.event("[DONE]").end()
    }

    /// The end of the body (a clean HTTP end, with or without `[DONE]` before it).
    #[must_use]
    pub(crate) fn end(mut self) -> Self {
        self.steps.push(Step::Raw(Bytes::from_static(b"0\r\n\r\n")));
        self
    }

    /// Closes the connection here (a body cut off mid-way).
    #[must_use]
    pub(crate) fn cut(mut self) -> Self {
        self.steps.push(Step::Cut);
        self
    }

    /// Waits here until the client leaves.
    #[must_use]
    pub(crate) fn stall(mut self) -> Self {
        self.steps.push(Step::Stall);
        self
    }
}

fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|status| status.canonical_reason())
        .unwrap_or("Whatever")
}

#[derive(Debug, Default)]
struct Log {
    script: VecDeque<Answer>,
    seen: Vec<Seen>,
    hangups: Vec<Hangup>,
    connections: usize,
}

/// A scripted upstream, serving until the test ends.
#[derive(Clone, Debug)]
pub(crate) struct Scripted {
    pub(crate) addr: SocketAddr,
    log: Arc<Mutex<Log>>,
}

impl Scripted {
    /// Serves `script` over plain HTTP: each request gets the next answer (a 500 when none is
    /// left).
    pub(crate) async fn start(script: Vec<Answer>) -> Self {
        Self::serve(script, None).await
    }

    /// Serves `script` over TLS.
    pub(crate) async fn start_tls(script: Vec<Answer>, tls: TlsAcceptor) -> Self {
        Self::serve(script, Some(tls)).await
    }

    async fn serve(script: Vec<Answer>, tls: Option<TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Log {
            script: script.into(),
            ..Log::default()
        }));
        let serving = Arc::clone(&log);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                // Each write goes out at once: with Nagle's algorithm a small write could wait
                // for the client's delayed ACK, tens of milliseconds of real time in which the
                // paused clock would jump to the kitchen's next timer.
                socket.set_nodelay(true).unwrap();
                let log = Arc::clone(&serving);
                let connection = {
                    let mut log = log.lock().unwrap();
                    log.connections += 1;
                    log.connections
                };
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve_connection(socket, connection, &log).await,
                        Some(tls) => {
                            if let Ok(socket) = tls.accept(socket).await {
                                serve_connection(socket, connection, &log).await;
                            }
                        }
                    }
                });
            }
        });
        Self { addr, log }
    }

    /// `http://` and the address.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests seen so far.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().seen.clone()
    }

    /// The clients seen hanging up mid-answer so far.
    pub(crate) fn hangups(&self) -> Vec<Hangup> {
        self.log.lock().unwrap().hangups.clone()
    }

    /// Answers to come.
    pub(crate) fn push(&self, answer: Answer) {
        self.log.lock().unwrap().script.push_back(answer);
    }
}

async fn serve_connection<S>(socket: S, connection: usize, log: &Mutex<Log>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(socket);
    let mut buf = Vec::new();
    loop {
        let Some(seen) = read_request(&mut reader, &mut buf, connection).await else {
            return;
        };
        let answer = {
            let mut log = log.lock().unwrap();
            log.seen.push(seen);
            log.script.pop_front()
        };
        let answer = answer.unwrap_or_else(|| Answer::whole(500, &[], "the script is over"));
        match play(&mut reader, &mut writer, &mut buf, answer).await {
            Played::Finished => {}
            Played::Cut => return,
            Played::HungUp(events_written) => {
                log.lock().unwrap().hangups.push(Hangup {
                    at: Instant::now(),
                    events_written,
                });
                return;
            }
        }
    }
}

/// Reads one request: its head, then a body of `content-length` bytes. `None` at the end of
/// the connection.
async fn read_request<S: AsyncRead>(
    reader: &mut ReadHalf<S>,
    buf: &mut Vec<u8>,
    connection: usize,
) -> Option<Seen> {
    let head_end = loop {
        if let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") {
            break end;
        }
        if reader.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap().split(' ');
    let method = request_line.next().unwrap().to_owned();
    let path = request_line.next().unwrap().to_owned();
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').unwrap();
        headers.append(
            HeaderName::try_from(name.trim()).unwrap(),
            HeaderValue::try_from(value.trim()).unwrap(),
        );
    }
    let length: usize = headers
        .get("content-length")
        .map_or(0, |v| v.to_str().unwrap().parse().unwrap());
    let body_start = head_end + 4;
    while buf.len() < body_start + length {
        if reader.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
    let body = Bytes::copy_from_slice(&buf[body_start..body_start + length]);
    buf.drain(..body_start + length);
    Some(Seen {
        method,
        path,
        headers,
        body,
        at: Instant::now(),
        connection,
    })
}

enum Played {
    Finished,
    Cut,
    /// The client closed the connection, after this many events.
    HungUp(usize),
}

/// Writes an answer step by step, watching the connection while it waits.
async fn play<S: AsyncRead + AsyncWrite>(
    reader: &mut ReadHalf<S>,
    writer: &mut WriteHalf<S>,
    buf: &mut Vec<u8>,
    answer: Answer,
) -> Played {
    let mut events = 0;
    for step in answer.steps {
        let written = match step {
            Step::Raw(bytes) => write(writer, &bytes).await,
            Step::Chunk { bytes, event } => {
                let mut framed = format!("{:x}\r\n", bytes.len()).into_bytes();
                framed.extend_from_slice(&bytes);
                framed.extend_from_slice(b"\r\n");
                let written = write(writer, &framed).await;
                events += usize::from(written && event);
                written
            }
            Step::Pause(pause) => wait(reader, buf, Some(pause)).await,
            Step::Stall => wait(reader, buf, None).await,
            Step::Cut => return Played::Cut,
        };
        if !written {
            return Played::HungUp(events);
        }
    }
    Played::Finished
}

/// Writes and flushes; `false` if the client is gone.
async fn write<S: AsyncWrite>(writer: &mut WriteHalf<S>, bytes: &[u8]) -> bool {
    writer.write_all(bytes).await.is_ok() && writer.flush().await.is_ok()
}

/// Waits `pause` (forever if `None`) while reading the socket: `false` if the client closes
/// it meanwhile.
async fn wait<S: AsyncRead>(
    reader: &mut ReadHalf<S>,
    buf: &mut Vec<u8>,
    pause: Option<Duration>,
) -> bool {
    let sleep = async {
        match pause {
            Some(pause) => tokio::time::sleep(pause).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => return true,
            read = reader.read_buf(buf) => match read {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            },
        }
    }
}
