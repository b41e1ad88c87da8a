//! Direct watchers: change streams written to by their subscription's one fan-out task rather
//! than by a task (and an HTTP connection's buffers) of their own.
//!
//! The lean HTTP path (src/http/stream.rs) answers a change stream's request, writes the
//! answer's head, and hands the socket over with its [`Attached`] watcher. From then on the
//! subscription's [`FanOut`] task writes every event to every direct watcher of the service:
//! a change's frame is rendered once and written to each socket without waiting
//! (`try_write`, several frames in one vectored write when a burst came). What an idle watcher
//! costs is its socket and a [`Direct`] entry of a few hundred bytes.
//!
//! The promise is the same as on the other path:
//! - a watcher joins at exactly the point its first events (a snapshot or a replay) end: the
//!   join drains the watcher's receiver and the task's own under the subscription's lock, so
//!   no event is missed or sent twice;
//! - a change at or below the index a watcher was sent is not sent again, and the index sent
//!   never goes back;
//! - a socket that does not take its frames keeps them in its own queue (the task waits for
//!   it to become writable, and never blocks the other watchers or the writers); past
//!   [`WATCHER_BUFFER`] frames the queue is replaced by a `snapshot` with `reset: true`;
//! - when the task itself falls behind the subscription's channel, every watcher gets a reset.
//!
//! A watcher that closes its connection is seen at the next second's check of its socket
//! (readiness already known to the runtime: no system call unless it is readable), or at the
//! next write that fails.
//!
//! The fan-out tasks run on a runtime of their own ([`spawn`]: a thread per core), not on the
//! workers that serve requests. A change to a service with a hundred
//! watchers is a hundred socket writes (most of it the kernel's TCP path); on the request
//! workers that queued every write's next step behind other services' fan-outs, so a busy
//! agent acknowledged writes tens of milliseconds late, and notified late with them. On
//! threads of their own the operating system shares the cores between the two kinds of work.

use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::Context;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use super::registry::guard as lock;
use super::watch::{sse_frame, Attached, Event, Sub, WATCHER_BUFFER};

/// A bookmark is written to a watcher after this long without a frame.
pub const BOOKMARK_EVERY: Duration = Duration::from_secs(5);

/// Events taken from the channel for one round of writes at most.
const BATCH: usize = 64;

/// Frames given to one vectored write at most.
const SLICES: usize = 64;

/// How often quiet watchers get their bookmark and closed connections are looked for.
const TICK: Duration = Duration::from_secs(1);

/// A watcher written to by its subscription's fan-out task.
pub struct Direct {
    id: u64,
    /// The HTTP server's slot for the connection, held while it is open.
    _hold: OwnedSemaphorePermit,
    socket: Arc<TcpStream>,
    attached: Attached,
    /// The index this watcher was last sent (a reset snapshot sets it to its own index).
    last: u64,
    /// When its queue last ran empty (a bookmark is due [`BOOKMARK_EVERY`] after).
    quiet_since: Instant,
    /// Frames the socket has not taken yet; the first may be the rest of a frame partly written.
    pending: VecDeque<Bytes>,
    partial: bool,
    /// Waiting for the socket to become writable.
    waiting: bool,
    dead: bool,
}

impl Direct {
    /// Queue the frames of `events` that this watcher is still to be sent, and write what the
    /// socket takes.
    fn offer(&mut self, events: &[Arc<Event>], service: &str, metrics: &Metrics) {
        for ev in events {
            if let Some(frame) = ev.frame_after(&mut self.last, service) {
                metrics.watch_sent(1);
                self.pending.push_back(frame);
            }
        }
        self.flush();
    }

    /// Write what the socket takes now, without waiting.
    fn flush(&mut self) {
        while !self.pending.is_empty() && !self.dead {
            let slices: Vec<IoSlice<'_>> = self
                .pending
                .iter()
                .take(SLICES)
                .map(|b| IoSlice::new(b))
                .collect();
            match self.socket.try_write_vectored(&slices) {
                Ok(0) => self.dead = true,
                Ok(mut n) => {
                    while n > 0 {
                        let Some(front) = self.pending.front_mut() else {
                            break;
                        };
                        if n >= front.len() {
                            n -= front.len();
                            self.pending.pop_front();
                            self.partial = false;
                        } else {
                            *front = front.slice(n..);
                            self.partial = true;
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => self.dead = true,
            }
        }
        if self.pending.is_empty() {
            self.quiet_since = Instant::now();
            // An idle watcher keeps no queue (a few hundred bytes each, over thousands).
            self.pending = VecDeque::new();
        }
    }

    /// Fell too far behind: what it has not taken is replaced by the whole state.
    fn reset_to(&mut self, snapshot: &Arc<Event>, service: &str, metrics: &Metrics) {
        let keep = if self.partial {
            self.pending.pop_front()
        } else {
            None
        };
        self.pending.clear();
        self.pending.extend(keep);
        metrics.watch_reset(1);
        self.offer(std::slice::from_ref(snapshot), service, metrics);
    }

    /// Whether its connection was closed by the client, from the readiness the runtime
    /// already knows (a read only when it says readable).
    fn closed(&self) -> bool {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        if self.socket.poll_read_ready(&mut cx).is_pending() {
            return false;
        }
        let mut scratch = [0u8; 64];
        match self.socket.try_read(&mut scratch) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }
}

type Writable = Pin<Box<dyn Future<Output = u64> + Send>>;

/// The task writing one subscription's events to its direct watchers.
pub struct FanOut {
    sub: Arc<Sub>,
    metrics: Arc<Metrics>,
    events: broadcast::Receiver<Arc<Event>>,
    watchers: Vec<Direct>,
    writable: FuturesUnordered<Writable>,
}

/// Hand `attached`'s watcher, whose answer head was written on `socket` and which was sent
/// up to index `last`, to its subscription's fan-out task (started if there is none); `hold`
/// is released when the connection closes.
pub fn hand_over(attached: Attached, socket: TcpStream, last: u64, hold: OwnedSemaphorePermit) {
    let sub = attached.sub.clone();
    let metrics = attached.metrics();
    let stop = attached.stop_token();
    let mut slot = lock(&sub.direct);
    let direct = Direct {
        id: 0,
        _hold: hold,
        socket: Arc::new(socket),
        attached,
        last,
        quiet_since: Instant::now(),
        pending: VecDeque::new(),
        partial: false,
        waiting: false,
        dead: false,
    };
    let direct = match slot.as_ref() {
        Some(tx) => match tx.send(direct) {
            Ok(()) => return,
            Err(e) => e.0,
        },
        None => direct,
    };
    let (tx, joins) = mpsc::unbounded_channel();
    let _ = tx.send(direct);
    *slot = Some(tx);
    let task = FanOut {
        sub: sub.clone(),
        metrics,
        events: sub.tx.subscribe(),
        watchers: Vec::new(),
        writable: FuturesUnordered::new(),
    };
    drop(slot);
    spawn(task.run(joins, stop));
}

/// Run `task` on the fan-out runtime (started at the first call, for the whole process), or on
/// the current runtime when no thread could be started for it. Change streams are written
/// there: services' plain streams by their subscription's [`FanOut`], their HTTPS ones by a
/// task each.
pub(crate) fn spawn(task: impl Future<Output = ()> + Send + 'static) {
    static RUNTIME: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores.max(1))
            .thread_name("watch-fanout")
            .enable_all()
            .build()
            .map_err(|e| tracing::warn!("no runtime of their own for change streams: {e}"))
            .ok()
    });
    match runtime {
        Some(runtime) => drop(runtime.spawn(task)),
        None => drop(tokio::spawn(task)),
    }
}

impl FanOut {
    async fn run(mut self, mut joins: mpsc::UnboundedReceiver<Direct>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_id = 0u64;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                joined = joins.recv() => match joined {
                    Some(mut d) => {
                        next_id += 1;
                        d.id = next_id;
                        self.join(d);
                    }
                    None => return,
                },
                got = self.events.recv() => match got {
                    Ok(ev) => {
                        let mut batch = vec![ev];
                        let mut lagged = false;
                        while batch.len() < BATCH {
                            match self.events.try_recv() {
                                Ok(ev) => batch.push(ev),
                                Err(TryRecvError::Lagged(_)) => {
                                    lagged = true;
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        self.dispatch(&batch);
                        if lagged {
                            self.lagged();
                        }
                    }
                    Err(RecvError::Lagged(_)) => self.lagged(),
                    Err(RecvError::Closed) => return,
                },
                Some(id) = self.writable.next(), if !self.writable.is_empty() => {
                    if let Some(d) = self.watchers.iter_mut().find(|d| d.id == id) {
                        d.waiting = false;
                        d.flush();
                    }
                }
                _ = tick.tick() => self.tick(),
            }
            self.settle();
            if self.watchers.is_empty() {
                // Quit only when no joiner is on its way: joiners find the task under the
                // same lock.
                let mut slot = lock(&self.sub.direct);
                if joins.is_empty() {
                    *slot = None;
                    return;
                }
            }
        }
    }

    /// After a round: resets for queues past the bound, a wait for sockets that did not take
    /// everything, and the closed ones dropped.
    fn settle(&mut self) {
        let mut snapshot = None;
        for d in &mut self.watchers {
            if d.pending.len() > WATCHER_BUFFER && !d.dead {
                let snap = snapshot.get_or_insert_with(|| {
                    let st = lock(&self.sub.state);
                    Arc::new(Sub::snapshot_event(&st, true))
                });
                d.reset_to(snap, &self.sub.service, &self.metrics);
            }
            if !d.pending.is_empty() && !d.waiting && !d.dead {
                d.waiting = true;
                let (socket, id) = (d.socket.clone(), d.id);
                self.writable.push(Box::pin(async move {
                    let _ = socket.writable().await;
                    id
                }));
            }
        }
        // Dropping a watcher detaches it (its `Attached`), outside any lock.
        self.watchers.retain(|d| !d.dead);
    }

    /// Take in a new watcher: its first events and what its receiver holds, while the task
    /// catches up with the channel under the subscription's lock, so that both stand at the
    /// same point afterwards.
    fn join(&mut self, mut d: Direct) {
        let mut mine = Vec::new();
        let mut theirs = std::mem::take(&mut d.attached.first);
        let mut lagged = false;
        {
            let st = lock(&self.sub.state);
            loop {
                match self.events.try_recv() {
                    Ok(ev) => mine.push(ev),
                    Err(TryRecvError::Lagged(_)) => lagged = true,
                    Err(_) => break,
                }
            }
            loop {
                match d.attached.rx.try_recv() {
                    Ok(ev) => theirs.push(ev),
                    Err(TryRecvError::Lagged(_)) => {
                        // Its first events are gone from the channel: the whole state, as of
                        // now (this lock stops the channel).
                        theirs.clear();
                        self.metrics.watch_reset(1);
                        theirs.push(Arc::new(Sub::snapshot_event(&st, true)));
                    }
                    Err(_) => break,
                }
            }
        }
        if lagged {
            self.lagged();
        } else {
            self.dispatch(&mine);
        }
        d.offer(&theirs, &self.sub.service, &self.metrics);
        self.watchers.push(d);
    }

    fn dispatch(&mut self, events: &[Arc<Event>]) {
        if events.is_empty() {
            return;
        }
        for d in &mut self.watchers {
            d.offer(events, &self.sub.service, &self.metrics);
        }
    }

    /// The task fell behind the channel: every watcher gets the whole state, taken where the
    /// task catches up again (under the lock that stops the channel).
    fn lagged(&mut self) {
        let snapshot = {
            let st = lock(&self.sub.state);
            while !matches!(
                self.events.try_recv(),
                Err(TryRecvError::Empty | TryRecvError::Closed)
            ) {}
            Arc::new(Sub::snapshot_event(&st, true))
        };
        for d in &mut self.watchers {
            d.reset_to(&snapshot, &self.sub.service, &self.metrics);
        }
    }

    /// Bookmarks for watchers that were sent nothing for a while; closed connections seen.
    fn tick(&mut self) {
        let mut bookmark: Option<(u64, Bytes)> = None;
        for d in &mut self.watchers {
            if d.closed() {
                d.dead = true;
                continue;
            }
            if !d.pending.is_empty() || d.quiet_since.elapsed() < BOOKMARK_EVERY {
                continue;
            }
            let frame = match &bookmark {
                Some((index, frame)) if *index == d.last => frame.clone(),
                _ => {
                    let data = json!({"service": self.sub.service, "index": d.last});
                    let frame = sse_frame("bookmark", d.last, &data.to_string());
                    bookmark = Some((d.last, frame.clone()));
                    frame
                }
            };
            d.pending.push_back(frame);
            d.flush();
        }
    }
}
