//! Drives the ring core ([`crate::ring::Chord`]) with real time and ring RPC: delivers its
//! outbound requests over the pooled client, feeds answers back, ticks it, and runs the
//! iterative lookups the HTTP layer asks for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use crate::ring::{
    Chord, Event, Id, Lookup, LookupAction, LookupResult, NodeRef, Outbound, RingRequest,
    RingResponse,
};
use crate::rpc::{Pool, Request, Response};
use crate::{Error, Result};

/// The ring side of an agent: the state machine behind a mutex, and the means to talk.
/// Times a lookup starts again from this node after every node it asked failed.
const LOOKUP_ATTEMPTS: usize = 3;

pub struct RingDriver {
    chord: Mutex<Chord>,
    pool: Arc<Pool>,
    epoch: Instant,
    events: broadcast::Sender<Event>,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
    /// The first successor last logged, so that only a change of it is logged at info (the
    /// tail of the list moves often while a ring settles; that is debug).
    first_successor: Mutex<Option<Id>>,
    /// When the ticker means to wake next (ms since `epoch`; `u64::MAX`: not until told),
    /// read and written under the `chord` lock so that no change of state slips between the
    /// ticker's plan and its sleep.
    planned: AtomicU64,
    /// Wakes the ticker when a change of state makes periodic work due before `planned`.
    wake: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl RingDriver {
    /// Wrap a state machine; lookups are counted into `metrics`.
    pub fn new(
        chord: Chord,
        pool: Arc<Pool>,
        stop: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Arc<RingDriver> {
        let (events, _) = broadcast::channel(1024);
        Arc::new(RingDriver {
            chord: Mutex::new(chord),
            pool,
            epoch: Instant::now(),
            events,
            stop,
            metrics,
            first_successor: Mutex::new(None),
            planned: AtomicU64::new(0),
            wake: Notify::new(),
        })
    }

    /// The metrics this driver counts into (shared with the agent).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Run `f` on the state machine, then deliver whatever it wants sent.
    pub fn with<T>(self: &Arc<Self>, f: impl FnOnce(&mut Chord) -> T) -> T {
        let (out, events, value) = {
            let mut chord = lock(&self.chord);
            let value = f(&mut chord);
            if chord.next_due().unwrap_or(u64::MAX) < self.planned.load(Ordering::Relaxed) {
                self.wake.notify_one();
            }
            let events = chord.take_events();
            // Logged under the lock, so that the lines come in the order the events happened.
            let me = chord.me().id.short();
            for e in &events {
                self.log_event(&me, e);
                if matches!(e, Event::PeerFailed(_)) {
                    self.metrics.peer_dropped();
                }
            }
            (chord.take_outbound(), events, value)
        };
        self.deliver(out);
        for e in events {
            let _ = self.events.send(e);
        }
        value
    }

    /// One info line per significant ring event (joined, first successor changed,
    /// predecessor changed or lost, peer failed, left); the rest at debug. `node` names this
    /// node, so that the lines of `agent dev`'s nodes can be told apart.
    fn log_event(&self, node: &str, e: &Event) {
        match e {
            Event::Joined => tracing::info!(node, "joined the ring"),
            Event::JoinFailed(reason) => tracing::warn!(node, "join attempt failed: {reason}"),
            Event::PredecessorChanged { old, new } => match (old, new) {
                (_, Some(p)) => tracing::info!(node, predecessor = ?p, "predecessor changed"),
                (Some(o), None) => {
                    tracing::info!(node, was = ?o, "predecessor failed or left; unknown until notified")
                }
                (None, None) => {}
            },
            Event::SuccessorsChanged(list) => {
                let first = list.first();
                let mut last = lock(&self.first_successor);
                if first.map(|n| n.id) != *last {
                    *last = first.map(|n| n.id);
                    match first {
                        Some(s) => tracing::info!(node, successor = ?s, "successor changed"),
                        None => tracing::info!(node, "successor list empty: alone on the ring"),
                    }
                } else {
                    tracing::debug!(node, len = list.len(), "successor list changed");
                }
            }
            Event::PeerFailed(peer) => {
                tracing::warn!(node, peer = ?peer, "peer failed; dropped from the ring")
            }
            Event::Left => tracing::info!(node, "left the ring"),
        }
    }

    /// A copy of something read from the state machine (no messages result).
    pub fn read<T>(&self, f: impl FnOnce(&Chord) -> T) -> T {
        f(&lock(&self.chord))
    }

    /// Subscribe to ring events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// This node.
    pub fn me(&self) -> NodeRef {
        self.read(|c| c.me().clone())
    }

    /// The connection pool (shared with the registry's forwarding).
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn deliver(self: &Arc<Self>, out: Vec<Outbound>) {
        if self.stop.is_cancelled() {
            return;
        }
        for o in out {
            let me = self.clone();
            tokio::spawn(async move {
                let result = match me.pool.call(&o.to.addr, Request::Ring(o.msg)).await {
                    Ok(Response::Ring(r)) => Ok(r),
                    Ok(other) => Err(format!("unexpected answer {other:?}")),
                    // A busy peer is alive: it must not be dropped from the ring's lists.
                    Err(e) if !e.means_peer_down() => {
                        if !me.stop.is_cancelled() {
                            me.with(|c| c.on_busy(o.id));
                        }
                        return;
                    }
                    Err(e) => Err(e.to_string()),
                };
                if me.stop.is_cancelled() {
                    return;
                }
                me.with(|c| c.on_response(o.id, result));
            });
        }
    }

    /// Tick the state machine until `stop`: wake when its periodic work is next due (see
    /// [`Chord::next_due`]) or when a change of state brings that earlier, not on a fixed
    /// beat. Work due within `slack` of a wake-up is done with it, so that the timers of one
    /// node share their wake-ups.
    pub async fn run_ticker(self: Arc<Self>, slack: Duration) {
        let slack = slack.as_millis() as u64;
        loop {
            let now = self.now_ms();
            let due = self.with(|c| {
                c.tick(now + slack);
                let due = c.next_due().unwrap_or(u64::MAX);
                self.planned.store(due, Ordering::Relaxed);
                due
            });
            let sleep = match due {
                u64::MAX => None,
                due => Some(self.epoch + Duration::from_millis(due)),
            };
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = async {
                    match sleep {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
    }

    /// Answer a peer's ring request.
    pub fn handle(self: &Arc<Self>, req: RingRequest) -> RingResponse {
        self.with(|c| c.handle_request(req))
    }

    /// Join through `seed`, retrying until `deadline`; an error names the seed.
    pub async fn join(self: &Arc<Self>, seed: &str, deadline: Duration) -> Result<()> {
        let mut events = self.subscribe();
        let started = Instant::now();
        let mut last = String::from("no answer");
        self.with(|c| c.join(seed));
        loop {
            let left = deadline.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(Error::unavailable(format!(
                    "cannot join the ring through {seed}: {last}"
                )));
            }
            match tokio::time::timeout(left, events.recv()).await {
                Ok(Ok(Event::Joined)) => return Ok(()),
                Ok(Ok(Event::JoinFailed(reason))) => {
                    last = reason;
                    // A seed that refuses this agent's cluster secret will not change its mind:
                    // say so at once rather than retrying until the deadline.
                    if let Err(e) = self.pool.call(seed, Request::Ring(RingRequest::Ping)).await {
                        if e.is_auth() {
                            return Err(Error::unavailable(format!(
                                "cannot join the ring through {seed}: {e}"
                            )));
                        }
                        // What the seed itself did says more than the lookup's failure (a
                        // refused connection, a seed at its cap, a port without TLS).
                        last = e.to_string();
                    }
                    let pause = Duration::from_millis(200).min(left);
                    tokio::time::sleep(pause).await;
                    self.with(|c| c.join(seed));
                }
                Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(_)) | Err(_) => {}
            }
        }
    }

    /// Leave gracefully: tell the neighbours, wait (bounded) until they have been told.
    pub async fn leave(self: &Arc<Self>, deadline: Duration) {
        let mut events = self.subscribe();
        self.with(|c| c.leave());
        if self.read(|c| c.has_left()) {
            return;
        }
        let _ = tokio::time::timeout(deadline, async {
            while let Ok(e) = events.recv().await {
                if e == Event::Left {
                    return;
                }
            }
        })
        .await;
    }

    /// Look up the owner of `key`, iteratively from this node. Counted in the metrics: found
    /// (with its hops) or failed.
    pub async fn lookup(self: &Arc<Self>, key: Id) -> Result<LookupResult> {
        let result = self.lookup_uncounted(key).await;
        match &result {
            Ok(found) => self.metrics.lookup_done(found.hops),
            Err(_) => self.metrics.lookup_failed(),
        }
        result
    }

    async fn lookup_uncounted(self: &Arc<Self>, key: Id) -> Result<LookupResult> {
        // A lookup whose every candidate failed starts again from this node's own state,
        // which no longer holds the nodes it just suspected (their successors stand in) —
        // a few times at most, and only while it made someone suspect.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (result, suspected) = self.lookup_once(key).await;
            match result {
                Err(e) if suspected && attempts < LOOKUP_ATTEMPTS => {
                    tracing::debug!(%key, error = %e, "lookup restarts without the nodes it suspected");
                }
                other => return other,
            }
        }
    }

    /// One lookup of `key` from this node's state; also says whether a node asked failed (and
    /// was suspected).
    async fn lookup_once(self: &Arc<Self>, key: Id) -> (Result<LookupResult>, bool) {
        let Some(first) = self.read(|c| c.find_step(&key)) else {
            return (
                Err(Error::routing("this agent is not a ring member (yet)")),
                false,
            );
        };
        let mut suspected = false;
        let (mut lookup, mut action) = Lookup::start(key, first);
        loop {
            match action {
                LookupAction::Done(result) => return (Ok(result), suspected),
                LookupAction::Failed(reason) => {
                    let e = Error::routing(format!("lookup failed: {reason}"));
                    return (Err(e), suspected);
                }
                LookupAction::Ask(node) => {
                    let req = Request::Ring(RingRequest::FindStep { key });
                    action = match self.pool.call(&node.addr, req).await {
                        Ok(Response::Ring(RingResponse::Step(step))) => lookup.on_step(step),
                        Ok(_) => lookup.on_failure(&node),
                        Err(e) => {
                            if e.means_peer_down() {
                                self.with(|c| c.suspect(&node.id));
                                suspected = true;
                            }
                            lookup.on_failure(&node)
                        }
                    };
                }
            }
        }
    }

    /// Ask `node` for its predecessor and successor list.
    pub async fn neighbors(
        &self,
        node: &NodeRef,
    ) -> Result<(NodeRef, Option<NodeRef>, Vec<NodeRef>)> {
        if node.id == self.read(|c| c.me().id) {
            return Ok(self.read(|c| {
                (
                    c.me().clone(),
                    c.predecessor().cloned(),
                    c.successors().to_vec(),
                )
            }));
        }
        match self
            .pool
            .call(&node.addr, Request::Ring(RingRequest::GetNeighbors))
            .await
        {
            Ok(Response::Ring(RingResponse::Neighbors {
                me,
                predecessor,
                successors,
            })) => Ok((me, predecessor, successors)),
            Ok(other) => Err(Error::unavailable(format!(
                "{} answered {other:?}",
                node.addr
            ))),
            Err(e) => Err(Error::unavailable(e.to_string())),
        }
    }

    /// The ring's own judgement of a peer that an application call found slow: a `Ping`,
    /// answered by the peer's RPC loop without touching its store. A peer that does not
    /// answer it is suspected; one that does is alive and merely busy (a long fsync, a write
    /// waiting on its replicas, a big transfer) and keeps its place. Returns whether it
    /// answered.
    pub async fn probe(self: &Arc<Self>, node: &NodeRef) -> bool {
        if node.id == self.read(|c| c.me().id) {
            return true;
        }
        match self
            .pool
            .call(&node.addr, Request::Ring(RingRequest::Ping))
            .await
        {
            Ok(_) => true,
            // Alive, at its cap of connections.
            Err(e) if !e.means_peer_down() => true,
            Err(_) => {
                self.with(|c| c.suspect(&node.id));
                false
            }
        }
    }

    /// Walk the ring from this node along successors: every node in ring order with its
    /// predecessor and successor. Dead entries are skipped via the successor lists.
    pub async fn walk(&self, limit: usize) -> Result<Vec<(NodeRef, Option<NodeRef>, NodeRef)>> {
        let me = self.me();
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut cur = me.clone();
        let mut fallbacks: Vec<NodeRef> = Vec::new();
        while out.len() < limit {
            match self.neighbors(&cur).await {
                Ok((node, pred, succs)) => {
                    if !seen.insert(node.id) {
                        break;
                    }
                    let succ = succs.first().cloned().unwrap_or_else(|| node.clone());
                    out.push((node.clone(), pred, succ.clone()));
                    fallbacks = succs.into_iter().skip(1).collect();
                    if succ.id == me.id || seen.contains(&succ.id) {
                        break;
                    }
                    cur = succ;
                }
                Err(_) => {
                    // A dead successor: continue with the next entry of the last list.
                    match fallbacks.iter().position(|n| !seen.contains(&n.id)) {
                        Some(i) => {
                            cur = fallbacks.remove(i);
                            if cur.id == me.id {
                                break;
                            }
                        }
                        None => break,
                    }
                }
            }
        }
        if out.len() < limit {
            self.metrics.walked(out.len());
        }
        Ok(out)
    }
}
