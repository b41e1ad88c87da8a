//! The follower's side of watching (API.md, "Watching for changes"): the agent a client is
//! connected to follows the owner of each watched service — one subscription per service,
//! however many clients watch it — and fans the changes out to its watchers.
//!
//! - A [`Sub`] holds the service's current state as the owner last said, the index it has
//!   shown its watchers (which never goes back), and a [`Feed`] of the changes it showed, so a
//!   watcher that resumes through this agent gets them replayed.
//! - Subscriptions are grouped by owner: one long poll (`RegistryRequest::Watch`) per owner at
//!   a time carries all of them. An answer `NotOwner`, or an owner that does not answer, sends
//!   the subscription back to a lookup: after a join, a leave or a crash it follows the new
//!   owner, and asks for every change after the index it holds (a reset when the new owner
//!   cannot replay them).
//! - Watchers receive events from a bounded broadcast channel: one that falls behind is told
//!   so (`Lagged`) and gets a `snapshot` with `reset: true`; a writer never waits for one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use super::registry::{guard as lock, Registry};
use crate::registry::watch::{Change, Feed, WatchAnswer, WatchBody, WatchItem};
use crate::registry::Instance;
use crate::ring::NodeRef;
use crate::{Error, Result};

/// Events kept for a watcher that has not taken them yet; past it, the watcher resets.
pub const WATCHER_BUFFER: usize = 256;

/// Changes a subscription keeps to replay to watchers that resume through this agent.
const SUB_FEED_CAP: usize = 1024;

/// How long one long poll waits at the owner.
const POLL_WAIT: Duration = Duration::from_secs(5);

/// A subscription nobody watched for this long is dropped.
const SUB_IDLE: Duration = Duration::from_secs(60);

/// How long a watcher that resumes at an index this agent has not shown yet (it watched
/// through another agent) waits for this agent to reach it, before it gets a reset.
pub const CATCH_UP: Duration = Duration::from_secs(5);

/// Watchers one agent serves at most (more answer 429).
pub const MAX_WATCHERS: usize = 16 * 1024;

/// One Server-Sent Events frame: `event`, `id` (the index) and one `data` line (compact JSON
/// has no line breaks), ended by an empty line.
pub fn sse_frame(name: &str, id: u64, data: &str) -> Bytes {
    let mut out = Vec::with_capacity(name.len() + data.len() + 40);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\nid: ");
    out.extend_from_slice(id.to_string().as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// What a watcher receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The whole state at `index`; `reset` when it replaces what the watcher had.
    Snapshot {
        index: u64,
        instances: Vec<Arc<Instance>>,
        reset: bool,
    },
    /// One change, with its SSE frame rendered once for all the watchers it goes to.
    Change(Change, std::sync::OnceLock<Bytes>),
}

impl Event {
    /// The event of `change`.
    pub fn change(change: Change) -> Event {
        Event::Change(change, std::sync::OnceLock::new())
    }

    /// The frame to send a watcher that was last sent index `*last`, moving `*last` on; `None`
    /// for a change it already has (covered by a snapshot or a replay). A change's frame is
    /// rendered on first use and then shared by every watcher it is sent to (a clone of
    /// [`Bytes`] copies nothing). A snapshot always goes, at its own index, and the watcher
    /// continues from there: it replaces the whole state, so when its index is below the one
    /// the watcher held (the watcher resumed at an index no copy reached, or a new owner's copy
    /// is behind what the old one showed) the changes after it must still go, not be taken for
    /// ones the watcher has.
    pub fn frame_after(&self, last: &mut u64, service: &str) -> Option<Bytes> {
        match self {
            Event::Change(c, frame) => {
                if c.index <= *last {
                    return None;
                }
                *last = c.index;
                Some(
                    frame
                        .get_or_init(|| {
                            sse_frame("change", c.index, &self.data(service).to_string())
                        })
                        .clone(),
                )
            }
            Event::Snapshot { index, .. } => {
                *last = *index;
                Some(sse_frame(
                    self.name(),
                    *index,
                    &self.data(service).to_string(),
                ))
            }
        }
    }

    /// The index the event brings its watcher to.
    pub fn index(&self) -> u64 {
        match self {
            Event::Snapshot { index, .. } => *index,
            Event::Change(c, _) => c.index,
        }
    }

    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Snapshot { .. } => "snapshot",
            Event::Change(..) => "change",
        }
    }

    /// The event's data as API.md gives it.
    pub fn data(&self, service: &str) -> Value {
        match self {
            Event::Snapshot {
                index,
                instances,
                reset,
            } => {
                json!({"service": service, "index": index, "instances": instances, "reset": reset})
            }
            Event::Change(c, _) => {
                let instance = match &c.instance {
                    Some(i) => serde_json::to_value(i.as_ref()).unwrap_or(Value::Null),
                    None => json!({"id": c.id}),
                };
                json!({"service": service, "index": c.index, "op": c.op.name(), "instance": instance})
            }
        }
    }
}

/// One watched service at this agent.
pub struct Sub {
    pub(super) service: String,
    pub(super) state: Mutex<SubState>,
    pub(super) tx: broadcast::Sender<Arc<Event>>,
    /// Its fan-out task's door, while it has one (src/agent/fanout.rs).
    pub(super) direct: Mutex<Option<mpsc::UnboundedSender<super::fanout::Direct>>>,
    /// Wakes those waiting for the first state or for the shown index to move.
    moved: Notify,
}

pub(super) struct SubState {
    /// The index watchers were last shown; never goes back.
    shown: u64,
    /// The index to ask the owner for changes after.
    owner_index: u64,
    /// The state as the owner last said.
    instances: BTreeMap<String, Arc<Instance>>,
    have_state: bool,
    /// The state differs from what watchers were shown (the owner's index was behind).
    dirty: bool,
    /// The changes shown, for watchers resuming through this agent.
    feed: Feed,
    /// What the first request to the owner asks changes after (a resuming watcher's index).
    first_since: u64,
    /// Watchers attached now, and when the last one left.
    watchers: usize,
    idle_since: Instant,
}

impl Sub {
    /// Nobody has watched it for [`SUB_IDLE`].
    fn is_idle(&self) -> bool {
        let st = lock(&self.state);
        st.watchers == 0 && st.idle_since.elapsed() > SUB_IDLE
    }

    fn item(&self) -> WatchItem {
        let st = lock(&self.state);
        WatchItem {
            service: self.service.clone(),
            since: if st.have_state {
                st.owner_index
            } else {
                st.first_since
            },
            snapshot: !st.have_state,
        }
    }

    fn send(&self, st: &mut SubState, event: Event, metrics: &Metrics) {
        if let Event::Change(c, _) = &event {
            metrics.watch_notified(c.at_ms);
        }
        st.shown = event.index();
        let _ = self.tx.send(Arc::new(event));
    }

    pub(super) fn snapshot_event(st: &SubState, reset: bool) -> Event {
        Event::Snapshot {
            index: st.shown,
            instances: st.instances.values().cloned().collect(),
            reset,
        }
    }

    /// Take in what the owner answered.
    fn apply(&self, index: u64, body: WatchBody, metrics: &Metrics) {
        let mut st = lock(&self.state);
        match body {
            WatchBody::NotOwner => return,
            WatchBody::Changes(changes) => {
                st.owner_index = index;
                for c in &changes {
                    apply_change(&mut st.instances, c);
                }
                if st.dirty || index <= st.shown {
                    self.catch_up(&mut st, index, metrics);
                } else {
                    let before = st.shown;
                    let fresh: Vec<Change> =
                        changes.into_iter().filter(|c| c.index > before).collect();
                    st.feed.push(before, fresh.clone(), index);
                    for c in fresh {
                        self.send(&mut st, Event::change(c), metrics);
                    }
                    st.shown = st.shown.max(index);
                }
            }
            WatchBody::Snapshot { instances, changes } => {
                let first = !st.have_state;
                st.instances = instances.into_iter().map(|i| (i.id.clone(), i)).collect();
                st.have_state = true;
                st.owner_index = index;
                match (first, changes) {
                    // The first state: changes after the first watcher's index seed the feed,
                    // so it resumes without a reset.
                    (true, Some(changes)) if index >= st.first_since => {
                        let since = st.first_since;
                        st.feed = Feed::new(since, SUB_FEED_CAP);
                        st.feed.push(since, changes, index);
                        st.shown = index;
                    }
                    (true, _) => {
                        st.feed = Feed::new(index, SUB_FEED_CAP);
                        st.shown = index;
                    }
                    (false, _) => {
                        st.dirty = true;
                        self.catch_up(&mut st, index, metrics);
                    }
                }
            }
        }
        drop(st);
        self.moved.notify_waiters();
    }

    /// The state changed in ways the watchers cannot be told change by change: once the
    /// owner's index is above what they were shown, they get it whole (`reset`).
    fn catch_up(&self, st: &mut SubState, index: u64, metrics: &Metrics) {
        if index > st.shown {
            st.shown = index;
            st.feed.reset(index);
            st.dirty = false;
            metrics.watch_reset(st.watchers as u64);
            let event = Self::snapshot_event(st, true);
            let _ = self.tx.send(Arc::new(event));
        } else {
            st.dirty = true;
        }
    }
}

/// Apply one change to a state.
pub(crate) fn apply_change(instances: &mut BTreeMap<String, Arc<Instance>>, c: &Change) {
    match &c.instance {
        Some(i) => {
            instances.insert(c.id.clone(), i.clone());
        }
        None => {
            instances.remove(&c.id);
        }
    }
}

/// A watcher attached to a subscription: the events to send first, then the live ones.
pub struct Attached {
    /// The subscription.
    pub sub: Arc<Sub>,
    /// Sent first: a snapshot, or the changes after the watcher's index.
    pub first: Vec<Arc<Event>>,
    /// Everything after.
    pub rx: broadcast::Receiver<Arc<Event>>,
    hub: Arc<Hub>,
    /// A client's watcher, counted against the agent's cap (a DNS cache entry is not).
    counted: bool,
}

impl Attached {
    /// The agent's metrics.
    pub(super) fn metrics(&self) -> Arc<Metrics> {
        self.hub.metrics.clone()
    }

    /// Cancelled when the agent stops.
    pub(super) fn stop_token(&self) -> CancellationToken {
        self.hub.stop.clone()
    }

    /// After the watcher fell behind: a reset snapshot of the current state, and a new
    /// receiver from there.
    pub fn reset(&mut self) -> Arc<Event> {
        let st = lock(&self.sub.state);
        self.rx = self.sub.tx.subscribe();
        self.hub.metrics.watch_reset(1);
        Arc::new(Sub::snapshot_event(&st, true))
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let mut st = lock(&self.sub.state);
        st.watchers = st.watchers.saturating_sub(1);
        if st.watchers == 0 {
            st.idle_since = Instant::now();
        }
        drop(st);
        if self.counted {
            self.hub.watchers.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Subscriptions of one owner, followed by one long poll at a time.
struct Group {
    owner: NodeRef,
    services: Mutex<HashSet<String>>,
    changed: Notify,
}

/// The agent's subscriptions and watchers.
pub struct Hub {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    subs: Mutex<HashMap<String, Arc<Sub>>>,
    groups: Mutex<HashMap<String, Arc<Group>>>,
    watchers: AtomicUsize,
    generation: AtomicU64,
    max_watchers: usize,
    stop: CancellationToken,
}

impl Hub {
    /// A hub following owners through `registry`.
    pub fn new(
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        max_watchers: usize,
        stop: CancellationToken,
    ) -> Arc<Hub> {
        Arc::new(Hub {
            registry,
            metrics,
            subs: Mutex::new(HashMap::new()),
            groups: Mutex::new(HashMap::new()),
            watchers: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            max_watchers,
            stop,
        })
    }

    /// Watchers attached now, and services followed.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.watchers.load(Ordering::Relaxed),
            lock(&self.subs).len(),
        )
    }

    /// A request generation above every earlier one of this process (and, taken from the
    /// wall clock, above those of an earlier run of it).
    fn next_generation(&self) -> u64 {
        let now = u64::try_from(chrono::Utc::now().timestamp_micros()).unwrap_or(0);
        let mut cur = self.generation.load(Ordering::Relaxed);
        loop {
            let next = now.max(cur + 1);
            match self
                .generation
                .compare_exchange(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => cur = seen,
            }
        }
    }

    /// The subscription of `service`, made (and homed at its owner) if there is none. A new
    /// one asks the owner for the changes after `since` beside the state.
    fn sub(self: &Arc<Self>, service: &str, since: u64) -> Arc<Sub> {
        let mut subs = lock(&self.subs);
        if let Some(s) = subs.get(service) {
            return s.clone();
        }
        let (tx, _) = broadcast::channel(WATCHER_BUFFER);
        let sub = Arc::new(Sub {
            service: service.to_string(),
            state: Mutex::new(SubState {
                shown: 0,
                owner_index: 0,
                instances: BTreeMap::new(),
                have_state: false,
                dirty: false,
                feed: Feed::new(0, SUB_FEED_CAP),
                first_since: since,
                watchers: 0,
                idle_since: Instant::now(),
            }),
            tx,
            direct: Mutex::new(None),
            moved: Notify::new(),
        });
        subs.insert(service.to_string(), sub.clone());
        drop(subs);
        let hub = self.clone();
        let service = service.to_string();
        tokio::spawn(async move { hub.home(service).await });
        sub
    }

    /// Find `service`'s owner and add the subscription to that owner's group (retrying until
    /// the ring answers, or the subscription is gone).
    async fn home(self: Arc<Self>, service: String) {
        let mut pause = Duration::from_millis(50);
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            {
                // Nobody watches it any more (and it never reached an owner): forget it.
                let mut subs = lock(&self.subs);
                let Some(sub) = subs.get(&service) else {
                    return;
                };
                if sub.is_idle() {
                    subs.remove(&service);
                    return;
                }
            }
            match self.registry.owner_of(&service).await {
                Ok(owner) => {
                    self.join_group(owner, service);
                    return;
                }
                Err(e) => tracing::debug!(service, "finding the owner to follow: {e}"),
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    fn join_group(self: &Arc<Self>, owner: NodeRef, service: String) {
        let mut groups = lock(&self.groups);
        if let Some(g) = groups.get(&owner.addr) {
            if g.owner.id == owner.id {
                lock(&g.services).insert(service);
                g.changed.notify_one();
                return;
            }
        }
        let group = Arc::new(Group {
            owner: owner.clone(),
            services: Mutex::new(HashSet::from([service])),
            changed: Notify::new(),
        });
        groups.insert(owner.addr.clone(), group.clone());
        drop(groups);
        let hub = self.clone();
        tokio::spawn(async move { hub.follow(group).await });
    }

    /// One owner's long polls, until it has no subscription left.
    async fn follow(self: Arc<Self>, group: Arc<Group>) {
        loop {
            self.drop_idle(&group);
            let services: Vec<String> = lock(&group.services).iter().cloned().collect();
            let subs: Vec<Arc<Sub>> = {
                let all = lock(&self.subs);
                services
                    .iter()
                    .filter_map(|s| all.get(s).cloned())
                    .collect()
            };
            if subs.is_empty() {
                // Nothing left to follow here, unless a subscription joined meanwhile (it
                // joins under the groups' lock, under which this looks).
                if self.remove_group(&group, true) {
                    return;
                }
                continue;
            }
            let items: Vec<WatchItem> = subs.iter().map(|s| s.item()).collect();
            let generation = self.next_generation();
            let polled = tokio::select! {
                _ = self.stop.cancelled() => return,
                // A subscription joined: ask again with it (the owner ends the older poll).
                _ = group.changed.notified() => continue,
                r = self.registry.follow(&group.owner, generation, items, POLL_WAIT) => r,
            };
            match polled {
                Ok(answers) => self.take(&group, answers),
                Err(e) => {
                    tracing::debug!(owner = %group.owner.addr, "following the owner failed: {e}");
                    // Every subscription of this owner looks its owner up again.
                    let moved: Vec<String> = lock(&group.services).drain().collect();
                    self.remove_group(&group, false);
                    for service in moved {
                        self.registry.forget_route(&service);
                        let hub = self.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            hub.home(service).await
                        });
                    }
                    return;
                }
            }
        }
    }

    /// Forget `group` (when `only_if_empty`, only if it follows nothing); whether it is gone.
    fn remove_group(&self, group: &Arc<Group>, only_if_empty: bool) -> bool {
        let mut groups = lock(&self.groups);
        if only_if_empty && !lock(&group.services).is_empty() {
            return false;
        }
        if groups
            .get(&group.owner.addr)
            .is_some_and(|g| Arc::ptr_eq(g, group))
        {
            groups.remove(&group.owner.addr);
        }
        true
    }

    fn take(self: &Arc<Self>, group: &Arc<Group>, answers: Vec<WatchAnswer>) {
        for a in answers {
            let sub = lock(&self.subs).get(&a.service).cloned();
            let Some(sub) = sub else {
                lock(&group.services).remove(&a.service);
                continue;
            };
            if a.body == WatchBody::NotOwner {
                lock(&group.services).remove(&a.service);
                self.registry.forget_route(&a.service);
                let hub = self.clone();
                let service = a.service.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    hub.home(service).await
                });
                continue;
            }
            sub.apply(a.index, a.body, &self.metrics);
        }
    }

    /// Drop the subscriptions of `group` nobody watched for a while.
    fn drop_idle(&self, group: &Group) {
        let mut subs = lock(&self.subs);
        let mut services = lock(&group.services);
        services.retain(|s| {
            let Some(sub) = subs.get(s) else {
                return false;
            };
            let idle = sub.is_idle();
            if idle {
                subs.remove(s);
            }
            !idle
        });
    }

    /// Wait until `sub` has its first state (or `deadline`).
    async fn ready(&self, sub: &Sub, deadline: tokio::time::Instant) -> Result<()> {
        loop {
            let moved = sub.moved.notified();
            if lock(&sub.state).have_state {
                return Ok(());
            }
            tokio::select! {
                _ = moved => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Error::unavailable(format!(
                        "the owner of {} did not answer in time; retry", sub.service
                    )))
                }
            }
        }
    }

    /// Attach a watcher of `service` that holds index `since` (`None`: it holds nothing).
    /// 429 past the most watchers; 503 when the owner cannot be reached in time.
    /// A watcher that resumes at an index this agent has not shown yet waits up to
    /// `catch_up` for it (see [`CATCH_UP`]).
    pub async fn attach(
        self: &Arc<Self>,
        service: &str,
        since: Option<u64>,
        catch_up: Duration,
    ) -> Result<Attached> {
        if self.watchers.fetch_add(1, Ordering::Relaxed) >= self.max_watchers {
            self.watchers.fetch_sub(1, Ordering::Relaxed);
            return Err(Error::TooMany(format!(
                "this agent serves {} watchers already; watch through another agent",
                self.max_watchers
            )));
        }
        self.attach_as(service, since, catch_up, true).await
    }

    /// Attach the agent's own DNS cache to `service`: not a client's watcher, so neither held
    /// to the cap (the cache bounds its entries itself) nor counted as one. DNS keeps
    /// answering when clients' watchers fill the agent.
    pub async fn attach_cache(self: &Arc<Self>, service: &str) -> Result<Attached> {
        self.attach_as(service, None, Duration::ZERO, false).await
    }

    async fn attach_as(
        self: &Arc<Self>,
        service: &str,
        since: Option<u64>,
        catch_up: Duration,
        counted: bool,
    ) -> Result<Attached> {
        let sub = self.sub(service, since.unwrap_or(0));
        {
            let mut st = lock(&sub.state);
            st.watchers += 1;
        }
        let attached = |first, rx| Attached {
            sub: sub.clone(),
            first,
            rx,
            hub: self.clone(),
            counted,
        };
        // From here on a failure detaches (Drop) the watcher again.
        let mut out = attached(Vec::new(), sub.tx.subscribe());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        self.ready(&sub, deadline).await?;
        // A watcher that resumes at an index this agent has not shown yet (it was watching
        // through another) waits a moment for it: an answer from here should not go back.
        // Past that moment it gets a reset at the index there is.
        if let Some(since) = since {
            let deadline = tokio::time::Instant::now() + catch_up;
            loop {
                let moved = sub.moved.notified();
                if lock(&sub.state).shown >= since {
                    break;
                }
                tokio::select! {
                    _ = moved => {}
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
        }
        let st = lock(&sub.state);
        out.rx = sub.tx.subscribe();
        out.first = match since {
            None => vec![Arc::new(Sub::snapshot_event(&st, false))],
            Some(since) if since == st.shown => Vec::new(),
            Some(since) => match st.feed.replay(since) {
                Some(changes) if since < st.shown => changes
                    .into_iter()
                    .map(|c| Arc::new(Event::change(c)))
                    .collect(),
                _ => {
                    self.metrics.watch_reset(1);
                    vec![Arc::new(Sub::snapshot_event(&st, true))]
                }
            },
        };
        drop(st);
        Ok(out)
    }

    /// Wait until `service`'s index is above `index` and, when `visible` says so, the change
    /// shows through the caller's filters; or until `wait` ends. Returns at once for index 0.
    pub async fn wait_past(
        self: &Arc<Self>,
        service: &str,
        index: u64,
        wait: Duration,
        visible: impl Fn(&[Arc<Instance>]) -> Value,
    ) -> Result<()> {
        if index == 0 {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + wait;
        // The wait for an index not shown yet counts against the caller's own `wait`.
        let mut watcher = self
            .attach(service, Some(index), wait.min(CATCH_UP))
            .await?;
        let view = |w: &Attached| {
            let st = lock(&w.sub.state);
            let all: Vec<Arc<Instance>> = st.instances.values().cloned().collect();
            (st.shown, visible(&all))
        };
        let (shown, baseline) = view(&watcher);
        if shown > index && watcher.first.iter().any(|e| e.index() > index) {
            return Ok(());
        }
        loop {
            tokio::select! {
                got = watcher.rx.recv() => match got {
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        let (shown, now) = view(&watcher);
                        if shown > index && now != baseline {
                            return Ok(());
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                _ = tokio::time::sleep_until(deadline) => return Ok(()),
            }
        }
    }
}
