//! `chordctl svc watch SERVICE`: follows `GET /v1/watch/services/{service}` (Server-Sent
//! Events) and prints one line per event, resuming by itself through the agents given when a
//! stream breaks.
//!
//! Three parts, the first two without I/O: [`SseParser`] turns the bytes of a stream, in
//! whatever chunks they come, into [`SseEvent`]s; [`Watcher`] decides what each event prints
//! (and what it does not: an event whose index is not above the last one printed is a repeat
//! after a resume); [`follow`] connects, reads, and reconnects with `Last-Event-ID`.

use std::io::Write;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Map, Value};

use super::args::{OutputFormat, WatchArgs};
use super::client::{root_cause, Attempt, Client, REQUEST_TIMEOUT};
use super::{output, Failure};

/// How long a stream may stay silent before it counts as broken. The agent sends a bookmark
/// every 5 s while nothing changes, so this is six missed bookmarks.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `chordctl svc watch`: until `--count` events were printed (exit 0), SIGINT (exit 0),
/// or a failure that resuming cannot help.
pub(crate) fn run(client: &Client, args: &WatchArgs, format: OutputFormat) -> Result<(), Failure> {
    let mut watcher = Watcher::new(format, args.count);
    let mut print = |line: &str| output::print(line);
    let pace = Pace::default();
    client.block_on(async {
        let interrupted = async {
            // Without a SIGINT handler, Ctrl-C still ends the process (with the default action).
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            result = follow(client, &args.service, &mut watcher, &mut print, &pace) => result,
            () = interrupted => Ok(()),
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Server-Sent Events, as the WHATWG HTML standard parses them.

/// One event of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; `message` when the event has none.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The `id:` field of this event, if it had one.
    pub id: Option<String>,
}

/// An incremental parser of a `text/event-stream` body: feed it chunks as they arrive (split
/// anywhere, even inside a line or a UTF-8 character); it returns the events they complete.
/// Lines end with CRLF, LF or CR; lines starting with `:` are comments (keepalives); a blank
/// line ends an event; an event without data is not dispatched.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of a line not yet ended.
    line: Vec<u8>,
    /// The last chunk ended with CR: an LF at the start of the next one ends nothing.
    after_cr: bool,
    /// The stream's first line was seen (a byte-order mark before it is skipped).
    started: bool,
    event: String,
    data: String,
    has_data: bool,
    id: Option<String>,
}

impl SseParser {
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// Parses the next chunk of the stream; returns the events it completed, in order.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for &byte in chunk {
            match byte {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.line);
                    let mut line: &[u8] = &line;
                    if !std::mem::replace(&mut self.started, true) {
                        line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
                    }
                    if let Some(event) = self.line_ended(&String::from_utf8_lossy(line)) {
                        events.push(event);
                    }
                }
                _ => {
                    self.after_cr = false;
                    self.line.push(byte);
                }
            }
        }
        events
    }

    /// Processes one complete line; a blank one may dispatch an event.
    fn line_ended(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            let data = std::mem::take(&mut self.data);
            let id = self.id.take();
            if !std::mem::take(&mut self.has_data) {
                return None;
            }
            return Some(SseEvent {
                event: if event.is_empty() {
                    "message".into()
                } else {
                    event
                },
                data,
                id,
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.id = Some(value.to_string()),
            // `retry` and unknown fields: the reconnection pace is ours.
            _ => {}
        }
        None
    }
}

// ---------------------------------------------------------------------------------------------
// What each event prints.

/// The watch's memory across streams: what was printed last, and how many events count.
#[derive(Debug)]
pub struct Watcher {
    format: OutputFormat,
    /// Stop after this many snapshot and change events.
    count: Option<u64>,
    /// Snapshot and change events printed.
    printed: u64,
    /// The index of the last snapshot or change printed.
    last_index: Option<u64>,
    /// Its event id, sent as `Last-Event-ID` when resuming.
    last_id: Option<String>,
}

impl Watcher {
    pub fn new(format: OutputFormat, count: Option<u64>) -> Watcher {
        Watcher {
            format,
            count,
            printed: 0,
            last_index: None,
            last_id: None,
        }
    }

    /// The `Last-Event-ID` to resume with, once something was printed.
    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// Whether `--count` events were printed.
    pub fn done(&self) -> bool {
        self.count.is_some_and(|n| self.printed >= n)
    }

    /// The line (with its newline) that `event` prints, if any, and the state it moves to.
    /// An event that is not JSON with an index is a failure: the agent broke the protocol.
    pub fn accept(&mut self, event: &SseEvent) -> Result<Option<String>, String> {
        let kind = event.event.as_str();
        if !matches!(kind, "snapshot" | "change" | "bookmark") {
            // Event types of later versions: not ours to print.
            return Ok(None);
        }
        let mut data = match serde_json::from_str::<Value>(&event.data) {
            Ok(Value::Object(data)) => data,
            _ => return Err(format!("a {kind} event whose data is not a JSON object")),
        };
        let index = data
            .get("index")
            .and_then(Value::as_u64)
            .or_else(|| event.id.as_deref().and_then(|id| id.trim().parse().ok()))
            .ok_or_else(|| format!("a {kind} event without an index"))?;
        let reset = kind == "snapshot" && data.get("reset").and_then(Value::as_bool) == Some(true);
        match kind {
            "bookmark" => {
                return Ok(match self.format {
                    OutputFormat::Json => Some(json_line(kind, data)),
                    OutputFormat::Table => None,
                })
            }
            // A reset replaces everything before it, whatever its index; anything else at or
            // below the last index printed is a repeat after a resume.
            _ if !reset && self.last_index.is_some_and(|last| index <= last) => return Ok(None),
            _ => {}
        }
        self.last_index = Some(index);
        self.last_id = Some(event.id.clone().unwrap_or_else(|| index.to_string()));
        self.printed += 1;
        let line = match self.format {
            OutputFormat::Json => {
                data.entry("index").or_insert(Value::from(index));
                json_line(kind, data)
            }
            OutputFormat::Table if kind == "snapshot" => {
                let n = data
                    .get("instances")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                let noun = if n == 1 { "instance" } else { "instances" };
                let reset = if reset { "  (reset)" } else { "" };
                format!("snapshot  index {index}  {n} {noun}{reset}\n")
            }
            OutputFormat::Table => change_line(index, &data),
        };
        Ok(Some(line))
    }
}

/// `data` with `"event"` added, as one line of JSON.
fn json_line(kind: &str, mut data: Map<String, Value>) -> String {
    data.insert("event".into(), Value::from(kind));
    format!("{}\n", Value::Object(data))
}

/// `change  index 13  register  web-1  10.0.0.1:80  passing`; a removed instance may have
/// only its id.
fn change_line(index: u64, data: &Map<String, Value>) -> String {
    let op = data.get("op").and_then(Value::as_str).unwrap_or("?");
    let instance = data.get("instance");
    let field = |name: &str| instance.and_then(|i| i.get(name));
    let mut line = format!("change  index {index}  {op}");
    let id = field("id").and_then(Value::as_str).unwrap_or("?");
    line.push_str(&format!("  {id}"));
    if let Some(address) = field("address").and_then(Value::as_str) {
        let endpoint = match field("port").and_then(Value::as_u64) {
            Some(port) if address.contains(':') => format!("[{address}]:{port}"),
            Some(port) => format!("{address}:{port}"),
            None => address.to_string(),
        };
        line.push_str(&format!("  {endpoint}"));
    }
    if let Some(state) = instance
        .and_then(|i| i.pointer("/status/state"))
        .and_then(Value::as_str)
    {
        line.push_str(&format!("  {state}"));
    }
    line.push('\n');
    line
}

// ---------------------------------------------------------------------------------------------
// Connecting, reading, resuming.

/// The timing of a watch: how long a stream may be silent, and the backoff between attempts
/// to resume (doubling from `first_delay` up to `max_delay`).
#[derive(Debug, Clone)]
pub struct Pace {
    pub idle: Duration,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for Pace {
    fn default() -> Pace {
        Pace {
            idle: IDLE_TIMEOUT,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl Pace {
    /// The wait before the next attempt after `failures` failed attempts in a row: none after
    /// none (a stream that delivered events and then broke is retried at once).
    fn delay(&self, failures: u32) -> Duration {
        match failures {
            0 => Duration::ZERO,
            n => self
                .first_delay
                .saturating_mul(1 << (n - 1).min(16))
                .min(self.max_delay),
        }
    }
}

/// How one stream ended, when it did not end the watch.
enum Ended {
    /// It delivered events, then broke: resume at the same agent first.
    AfterEvents(String),
    /// It delivered nothing: count a failed attempt and move on to the next agent.
    Empty(String),
}

/// Watches `service` through the agents of `client`, printing each line through `print`, until
/// `watcher` is done or a failure that resuming cannot help.
///
/// The first connection follows the rules of every client command (the agents in order; exit 3
/// when none can be reached; an error answer is final). Once a stream was open, an agent that
/// cannot be reached, breaks its stream, stays silent for `pace.idle`, or answers 429 or 5xx is
/// left for the next one (the same one first after a stream that delivered events), forever,
/// with `Last-Event-ID` set to the last event printed.
pub(crate) async fn follow(
    client: &Client,
    service: &str,
    watcher: &mut Watcher,
    print: &mut dyn FnMut(&str) -> Result<(), Failure>,
    pace: &Pace,
) -> Result<(), Failure> {
    let segments = ["v1", "watch", "services", service];
    let mut index = client.current();
    // Until a stream opens: the agents not reachable, for the exit-3 message.
    let mut first: Option<Vec<(usize, String)>> = Some(Vec::new());
    let mut failures: u32 = 0;
    loop {
        if first.is_none() {
            tokio::time::sleep(pace.delay(failures)).await;
        }
        let last_id = watcher.last_id().map(str::to_string);
        let mut headers = vec![("Accept", "text/event-stream")];
        if let Some(id) = &last_id {
            headers.push(("Last-Event-ID", id.as_str()));
        }
        let opened = tokio::time::timeout(
            REQUEST_TIMEOUT,
            client.open_at(index, Method::GET, &segments, &[], None, &headers),
        )
        .await;
        let why = match opened {
            Err(_) => format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()),
            Ok(Err(Attempt::Unreachable(cause))) => match &mut first {
                Some(tried) => {
                    tried.push((index, cause));
                    if tried.len() == client.len() {
                        return Err(client.unreachable(tried));
                    }
                    index = (index + 1) % client.len();
                    continue;
                }
                None => format!("cannot reach it: {cause}"),
            },
            Ok(Err(Attempt::Failed(failure))) if first.is_some() => return Err(failure),
            Ok(Err(Attempt::Failed(failure))) => describe(failure),
            Ok(Ok(response)) => {
                let status = response.status();
                if status.is_success() {
                    if !is_event_stream(&response) {
                        return Err(Failure::Failed(format!(
                            "the agent at {} does not serve watch streams (it answered {}); \
                             it may be older than 0.2",
                            client.shown_at(index),
                            content_type(&response)
                        )));
                    }
                    first = None;
                    match read_stream(client, index, response, watcher, print, pace).await? {
                        None => return Ok(()),
                        Some(Ended::AfterEvents(why)) => {
                            failures = 0;
                            note(&format!(
                                "the stream from {} ended ({why}); resuming",
                                client.shown_at(index)
                            ));
                            continue;
                        }
                        Some(Ended::Empty(why)) => why,
                    }
                } else if first.is_none()
                    && (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error())
                {
                    let body = tokio::time::timeout(REQUEST_TIMEOUT, response.bytes()).await;
                    let body = body.ok().and_then(Result::ok).unwrap_or_default();
                    describe(client.http_error(status, &body))
                } else {
                    let body = tokio::time::timeout(REQUEST_TIMEOUT, response.bytes())
                        .await
                        .map_err(|_| {
                            Failure::Failed(format!(
                                "the agent at {} answered {} and then nothing",
                                client.shown_at(index),
                                status.as_u16()
                            ))
                        })?
                        .map_err(|e| client.transport(index, &e))?;
                    return Err(client.http_error(status, &body));
                }
            }
        };
        failures = failures.saturating_add(1);
        let from = client.shown_at(index).to_string();
        index = (index + 1) % client.len();
        note(&format!(
            "{from}: {why}; resuming through {} in {:?}",
            client.shown_at(index),
            pace.delay(failures)
        ));
    }
}

/// Reads one open stream until it ends or the watch is done (`None`).
async fn read_stream(
    client: &Client,
    index: usize,
    mut response: reqwest::Response,
    watcher: &mut Watcher,
    print: &mut dyn FnMut(&str) -> Result<(), Failure>,
    pace: &Pace,
) -> Result<Option<Ended>, Failure> {
    let mut parser = SseParser::new();
    let mut events = 0u64;
    let why = loop {
        let chunk = match tokio::time::timeout(pace.idle, response.chunk()).await {
            Err(_) => break format!("nothing for {}s", pace.idle.as_secs()),
            Ok(Err(e)) => break root_cause(&e),
            Ok(Ok(None)) => break "the agent closed it".to_string(),
            Ok(Ok(Some(chunk))) => chunk,
        };
        for event in parser.feed(&chunk) {
            events += 1;
            let line = watcher.accept(&event).map_err(|e| {
                Failure::Failed(format!(
                    "the agent at {} sent {e}: {}",
                    client.shown_at(index),
                    event.data
                ))
            })?;
            if let Some(line) = line {
                print(&line)?;
            }
            if watcher.done() {
                return Ok(None);
            }
        }
    };
    Ok(Some(if events > 0 {
        Ended::AfterEvents(why)
    } else {
        Ended::Empty(why)
    }))
}

fn content_type(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("no Content-Type")
        .to_string()
}

fn is_event_stream(response: &reqwest::Response) -> bool {
    content_type(response)
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// A failure's message, for a note about resuming.
fn describe(failure: Failure) -> String {
    match failure {
        Failure::Usage(m) | Failure::Unreachable(m) | Failure::NotFound(m) | Failure::Failed(m) => {
            m
        }
        Failure::BrokenPipe => "stdout closed".into(),
    }
}

/// A line on stderr about the watch itself (stdout is for events).
fn note(message: &str) {
    // Nothing sensible is left to do if stderr itself is gone.
    let _ = writeln!(std::io::stderr(), "chordctl: watch: {message}");
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};

    use serde_json::json;

    use super::*;

    fn event(kind: &str, data: &str, id: Option<&str>) -> SseEvent {
        SseEvent {
            event: kind.into(),
            data: data.into(),
            id: id.map(str::to_string),
        }
    }

    #[test]
    fn events_end_at_blank_lines_with_ids_and_comments() {
        let mut p = SseParser::new();
        let text = ": hello\n\nevent: snapshot\nid: 12\ndata: {\"index\": 12}\n\n\
                    :keepalive\n\nevent: change\ndata: {\"a\":\ndata: 1}\nid: 13\n\n";
        assert_eq!(
            p.feed(text.as_bytes()),
            vec![
                event("snapshot", "{\"index\": 12}", Some("12")),
                event("change", "{\"a\":\n1}", Some("13")),
            ]
        );
    }

    #[test]
    fn chunks_may_split_anything() {
        let text = "\u{feff}event: change\r\nid: 7\r\ndata: {\"note\": \"é\"}\r\n\r\n\
                    data:x\rdata\r\r";
        let bytes = text.as_bytes();
        let expected = vec![
            event("change", "{\"note\": \"é\"}", Some("7")),
            event("message", "x\n", None),
        ];
        // Every split point, including inside CRLF and inside the two bytes of `é`.
        for cut in 0..=bytes.len() {
            let mut p = SseParser::new();
            let mut got = p.feed(&bytes[..cut]);
            got.extend(p.feed(&bytes[cut..]));
            assert_eq!(got, expected, "split at {cut}");
        }
        // One byte at a time.
        let mut p = SseParser::new();
        let got: Vec<SseEvent> = bytes.iter().flat_map(|b| p.feed(&[*b])).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn events_without_data_or_unfinished_are_not_dispatched() {
        let mut p = SseParser::new();
        assert!(p.feed(b"event: bookmark\nid: 3\n\n").is_empty());
        // The id of an undispatched event does not leak into the next one.
        assert_eq!(
            p.feed(b"event: change\ndata\n\n"),
            vec![event("change", "", None)]
        );
        assert!(p.feed(b"event: change\ndata: {}\n").is_empty());
        assert_eq!(p.feed(b"\n"), vec![event("change", "{}", None)]);
        // No space after the colon; a value with colons; unknown fields and retry ignored.
        assert_eq!(
            p.feed(b"retry: 10\nfoo: bar\nevent:change\ndata:a: b\n\n"),
            vec![event("change", "a: b", None)]
        );
    }

    fn snapshot(index: u64, n: usize, reset: bool) -> SseEvent {
        let instances: Vec<Value> = (0..n).map(|i| json!({"id": format!("i{i}")})).collect();
        let data =
            json!({"service": "web", "index": index, "instances": instances, "reset": reset});
        event("snapshot", &data.to_string(), Some(&index.to_string()))
    }

    fn change(index: u64, op: &str, instance: Value) -> SseEvent {
        let data = json!({"service": "web", "index": index, "op": op, "instance": instance});
        event("change", &data.to_string(), Some(&index.to_string()))
    }

    fn bookmark(index: u64) -> SseEvent {
        let data = json!({"service": "web", "index": index});
        event("bookmark", &data.to_string(), Some(&index.to_string()))
    }

    fn web1() -> Value {
        json!({"id": "web-1", "address": "10.0.0.1", "port": 80,
               "status": {"state": "passing"}})
    }

    #[test]
    fn table_lines_for_people() {
        let mut w = Watcher::new(OutputFormat::Table, None);
        let mut line = |e: &SseEvent| w.accept(e).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            line(&snapshot(12, 3, false)).as_deref(),
            Some("snapshot  index 12  3 instances\n")
        );
        assert_eq!(line(&bookmark(12)), None);
        assert_eq!(
            line(&change(13, "register", web1())).as_deref(),
            Some("change  index 13  register  web-1  10.0.0.1:80  passing\n")
        );
        assert_eq!(
            line(&change(14, "deregister", json!({"id": "web-1"}))).as_deref(),
            Some("change  index 14  deregister  web-1\n")
        );
        let v6 = json!({"id": "x", "address": "::1", "port": 8080});
        assert_eq!(
            line(&change(15, "update", v6)).as_deref(),
            Some("change  index 15  update  x  [::1]:8080\n")
        );
        assert_eq!(
            line(&snapshot(20, 1, true)).as_deref(),
            Some("snapshot  index 20  1 instance  (reset)\n")
        );
    }

    #[test]
    fn json_lines_are_the_data_with_the_event_and_bookmarks_do_not_count() {
        let mut w = Watcher::new(OutputFormat::Json, Some(2));
        let parse = |line: Option<String>| -> Value {
            let line = line.unwrap_or_else(|| panic!("nothing printed"));
            assert!(
                line.ends_with('\n') && line.matches('\n').count() == 1,
                "{line:?}"
            );
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
        };
        let first = parse(
            w.accept(&snapshot(5, 0, false))
                .unwrap_or_else(|e| panic!("{e}")),
        );
        assert_eq!(first["event"], "snapshot");
        assert_eq!(first["index"], 5);
        assert_eq!(first["reset"], false);
        let b = parse(w.accept(&bookmark(5)).unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(
            b,
            json!({"event": "bookmark", "service": "web", "index": 5})
        );
        assert!(!w.done());
        let c = parse(
            w.accept(&change(6, "register", web1()))
                .unwrap_or_else(|e| panic!("{e}")),
        );
        assert_eq!(c["event"], "change");
        assert_eq!(c["instance"]["id"], "web-1");
        assert!(w.done());
    }

    #[test]
    fn repeats_are_skipped_and_resets_replace_everything() {
        let mut w = Watcher::new(OutputFormat::Json, None);
        let printed =
            |w: &mut Watcher, e: &SseEvent| w.accept(e).unwrap_or_else(|e| panic!("{e}")).is_some();
        assert!(printed(&mut w, &snapshot(5, 1, false)));
        assert!(printed(&mut w, &change(6, "register", web1())));
        assert!(printed(&mut w, &change(7, "update", web1())));
        // A resume replays from an older index: not printed twice.
        assert!(!printed(&mut w, &snapshot(7, 1, false)));
        assert!(!printed(&mut w, &change(6, "register", web1())));
        assert!(!printed(&mut w, &change(7, "update", web1())));
        assert!(printed(&mut w, &change(8, "update", web1())));
        // A reset is printed whatever its index, and later changes follow it.
        assert!(printed(&mut w, &snapshot(8, 1, true)));
        assert!(printed(
            &mut w,
            &change(9, "expire", json!({"id": "web-1"}))
        ));
        assert_eq!(w.last_id(), Some("9"));
        assert_eq!(w.printed, 6);
        // Later event types are ignored; broken data is a protocol error.
        assert!(!printed(&mut w, &event("catalog", "{}", None)));
        assert!(w.accept(&event("change", "not json", None)).is_err());
        assert!(w
            .accept(&event("change", "{\"op\": \"register\"}", None))
            .is_err());
        // Without an index in the data, the id stands for it.
        assert!(w
            .accept(&event("change", "{\"op\": \"register\"}", Some("10")))
            .unwrap_or_else(|e| panic!("{e}"))
            .is_some());
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let pace = Pace::default();
        assert_eq!(pace.delay(0), Duration::ZERO);
        assert_eq!(pace.delay(1), Duration::from_millis(100));
        assert_eq!(pace.delay(3), Duration::from_millis(400));
        assert_eq!(pace.delay(10), Duration::from_secs(2));
        assert_eq!(pace.delay(u32::MAX), Duration::from_secs(2));
    }

    // -----------------------------------------------------------------------------------------
    // `follow` against a scripted agent: each connection gets the next answer of the script
    // (written at once, then the connection is closed, which ends a stream).

    struct Scripted {
        url: reqwest::Url,
        /// The `Last-Event-ID` of each request (`-` when absent) and its path.
        seen: Arc<Mutex<Vec<(String, String)>>>,
    }

    fn sse(events: &[SseEvent]) -> String {
        let mut body = String::from(": hello\n\n");
        for e in events {
            body.push_str(&format!("event: {}\n", e.event));
            if let Some(id) = &e.id {
                body.push_str(&format!("id: {id}\n"));
            }
            for line in e.data.split('\n') {
                body.push_str(&format!("data: {line}\n"));
            }
            body.push('\n');
        }
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{body}"
        )
    }

    fn answer(status: u16, content_type: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status} Canned\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn scripted(script: Vec<String>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        // Detached: it ends with the script, or with the test process.
        std::thread::spawn(move || {
            for reply in script {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                let (path, last) = read_head(&stream);
                if let Ok(mut log) = log.lock() {
                    log.push((last, path));
                }
                let mut stream = stream;
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        let url = reqwest::Url::parse(&format!("http://{addr}")).unwrap_or_else(|e| panic!("{e}"));
        Scripted { url, seen }
    }

    fn read_head(stream: &TcpStream) -> (String, String) {
        let mut reader = BufReader::new(stream);
        let mut path = String::new();
        let mut last = "-".to_string();
        let mut first = true;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                break;
            }
            if first {
                path = line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                first = false;
            } else if let Some((k, v)) = line.split_once(':') {
                if k.trim().eq_ignore_ascii_case("last-event-id") {
                    last = v.trim().to_string();
                }
            }
        }
        (path, last)
    }

    /// An address that refuses connections while the socket returned lives.
    fn dead_url() -> (socket2::Socket, reqwest::Url) {
        let (socket, addr) = crate::testing::refused_addr();
        let url = reqwest::Url::parse(&format!("http://{addr}")).unwrap_or_else(|e| panic!("{e}"));
        (socket, url)
    }

    fn fast() -> Pace {
        Pace {
            idle: Duration::from_secs(10),
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(20),
        }
    }

    /// Runs `follow` and returns what it printed and how it ended.
    fn watch(agents: &[reqwest::Url], count: Option<u64>) -> (Vec<Value>, Result<(), Failure>) {
        let client = Client::streaming(agents, None).unwrap_or_else(|e| panic!("{e:?}"));
        let mut watcher = Watcher::new(OutputFormat::Json, count);
        let mut lines = Vec::new();
        let mut print = |line: &str| {
            lines.push(serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")));
            Ok(())
        };
        let pace = fast();
        let result = client.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(60),
                follow(&client, "web", &mut watcher, &mut print, &pace),
            )
            .await
        });
        let result = result.unwrap_or_else(|_| panic!("the watch did not finish"));
        (lines, result)
    }

    #[test]
    fn a_watch_resumes_from_its_last_event_through_the_next_agent() {
        let good = scripted(vec![
            // The first stream: a snapshot and two changes, then it breaks.
            sse(&[
                snapshot(5, 1, false),
                change(6, "register", web1()),
                change(7, "update", web1()),
            ]),
            // Resumed at once at the same agent: a replay from before 7, a new change.
            sse(&[
                change(7, "update", web1()),
                change(8, "update", web1()),
                bookmark(8),
            ]),
            // Resumed again: too busy, so the dead agent, and then this one again.
            answer(
                503,
                "application/json",
                r#"{"error": {"code": "unavailable", "message": "busy"}}"#,
            ),
            // It cannot replay: a reset, then a change.
            sse(&[
                snapshot(10, 0, true),
                change(11, "register", web1()),
                change(12, "update", web1()),
            ]),
        ]);
        let (_refusing, dead) = dead_url();
        let (lines, result) = watch(&[dead, good.url.clone()], Some(6));
        assert!(result.is_ok(), "{result:?}");
        let shown: Vec<(String, u64)> = lines
            .iter()
            .map(|l| {
                (
                    l["event"].as_str().unwrap_or("?").to_string(),
                    l["index"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        let expected: Vec<(String, u64)> = [
            ("snapshot", 5),
            ("change", 6),
            ("change", 7),
            ("change", 8),
            ("bookmark", 8),
            ("snapshot", 10),
            ("change", 11),
        ]
        .iter()
        .map(|(e, i)| (e.to_string(), *i))
        .collect();
        assert_eq!(shown, expected);
        let seen = good.seen.lock().map(|s| s.clone()).unwrap_or_default();
        let last_ids: Vec<&str> = seen.iter().map(|(last, _)| last.as_str()).collect();
        assert_eq!(last_ids, ["-", "7", "8", "8"]);
        assert!(
            seen.iter()
                .all(|(_, path)| path == "/v1/watch/services/web"),
            "{seen:?}"
        );
    }

    #[test]
    fn the_first_connection_follows_the_client_rules() {
        // Nobody there: exit 3, every agent named.
        let ((_ra, a), (_rb, b)) = (dead_url(), dead_url());
        let (_, result) = watch(&[a.clone(), b.clone()], Some(1));
        match result {
            Err(failure @ Failure::Unreachable(_)) => {
                let message = describe(failure);
                for url in [&a, &b] {
                    let shown = url.as_str().trim_end_matches('/');
                    assert!(message.contains(shown), "{message}");
                }
            }
            other => panic!("{other:?}"),
        }
        // An error answer is the answer: the next agent is not asked.
        let not_found = scripted(vec![answer(
            404,
            "application/json",
            r#"{"error": {"code": "not_found", "message": "no such route"}}"#,
        )]);
        let never = scripted(vec![sse(&[snapshot(1, 0, false)])]);
        let (_, result) = watch(&[not_found.url.clone(), never.url.clone()], Some(1));
        assert!(
            matches!(result, Err(Failure::NotFound(ref m)) if m == "no such route"),
            "{result:?}"
        );
        assert!(never.seen.lock().map(|s| s.is_empty()).unwrap_or(false));
        // An agent that answers JSON does not serve streams.
        let old = scripted(vec![answer(200, "application/json", "{}")]);
        let (_, result) = watch(std::slice::from_ref(&old.url), Some(1));
        assert!(
            matches!(result, Err(Failure::Failed(ref m)) if m.contains("does not serve watch streams")),
            "{result:?}"
        );
    }
}
