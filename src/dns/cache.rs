//! The agent's local view of the services it is asked about over DNS.
//!
//! The first query of a service makes an entry: it attaches to the service's subscription in
//! the watch [`Hub`] (the agent follows the owner with one ring subscription per service,
//! however many watchers and caches use it) and asks the owner for the service's policy. From
//! then on the entry is kept current by the subscription's change events, and queries read it
//! without any ring RPC. The policy, which change events do not carry, is read again every
//! [`POLICY_REFRESH`] by the entry's task, off the query path.
//!
//! An entry nobody asked about for [`IDLE`] is dropped (its subscription with it, once no
//! watcher uses that either); past [`MAX_SERVICES`] entries, a new one evicts the entry asked
//! about longest ago.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::answer::View;
use crate::agent::registry::guard as lock;
use crate::agent::watch::{apply_change, Event, Hub};
use crate::agent::{Metrics, Registry};
use crate::registry::{Instance, Policy};
use crate::{Error, Result};

/// An entry nobody asked about for this long is dropped.
pub const IDLE: Duration = Duration::from_secs(120);

/// Services cached at once; a new one past this evicts the least recently asked about.
pub const MAX_SERVICES: usize = 1024;

/// How often an entry reads its service's policy again.
pub const POLICY_REFRESH: Duration = Duration::from_secs(5);

/// How long a first query waits for the owner's answer.
const FIRST_STATE_WAIT: Duration = Duration::from_secs(5);

/// What an entry holds.
#[derive(Debug, Clone)]
enum State {
    /// Waiting for the owner's first answer.
    Pending,
    Ready(Arc<View>),
    /// The owner could not be reached; the entry is gone and the next query tries again.
    Failed(String),
}

struct Entry {
    state: watch::Sender<State>,
    /// When it was last asked about, in milliseconds since the cache started.
    asked_ms: AtomicU64,
    /// Cancelled when the entry is dropped: ends its task and so its subscription.
    gone: CancellationToken,
}

/// The local view: one entry per service asked about.
pub struct Views {
    hub: Arc<Hub>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    started: Instant,
    idle: Duration,
    cap: usize,
    stop: CancellationToken,
}

impl Views {
    /// A cache following services through `hub`, reading policies through `registry`.
    pub fn new(
        hub: Arc<Hub>,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Arc<Views> {
        Views::with_limits(hub, registry, metrics, stop, IDLE, MAX_SERVICES)
    }

    /// [`Views::new`] with another idle time and cap (tests).
    pub fn with_limits(
        hub: Arc<Hub>,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
        idle: Duration,
        cap: usize,
    ) -> Arc<Views> {
        Arc::new(Views {
            hub,
            registry,
            metrics,
            entries: Mutex::new(HashMap::new()),
            started: Instant::now(),
            idle,
            cap: cap.max(1),
            stop,
        })
    }

    /// Services cached now.
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The view of `service`: at once from the cache, else once the owner has answered (503
    /// if it does not in time).
    pub async fn get(self: &Arc<Self>, service: &str) -> Result<Arc<View>> {
        let entry = self.entry(service);
        entry.asked_ms.store(self.now_ms(), Ordering::Relaxed);
        if let State::Ready(view) = &*entry.state.borrow() {
            return Ok(view.clone());
        }
        let mut rx = entry.state.subscribe();
        let waited = tokio::time::timeout(
            FIRST_STATE_WAIT,
            rx.wait_for(|s| !matches!(s, State::Pending)),
        )
        .await;
        let state = match waited {
            Ok(Ok(state)) => state.clone(),
            Ok(Err(_)) => State::Failed("the service's view was dropped; retry".into()),
            Err(_) => State::Failed(format!("the owner of {service} did not answer in time")),
        };
        match state {
            State::Ready(view) => Ok(view),
            State::Failed(e) => Err(Error::unavailable(e)),
            State::Pending => Err(Error::unavailable("the service's view is not ready; retry")),
        }
    }

    /// The entry of `service`, made (evicting the stalest past the cap) if there is none.
    fn entry(self: &Arc<Self>, service: &str) -> Arc<Entry> {
        let mut entries = lock(&self.entries);
        if let Some(e) = entries.get(service) {
            return e.clone();
        }
        if entries.len() >= self.cap {
            let stalest = entries
                .iter()
                .min_by_key(|(_, e)| e.asked_ms.load(Ordering::Relaxed))
                .map(|(name, _)| name.clone());
            if let Some(e) = stalest.and_then(|name| entries.remove(&name)) {
                e.gone.cancel();
            }
        }
        let (state, _) = watch::channel(State::Pending);
        let entry = Arc::new(Entry {
            state,
            asked_ms: AtomicU64::new(self.now_ms()),
            gone: self.stop.child_token(),
        });
        entries.insert(service.to_string(), entry.clone());
        self.metrics.dns_services(entries.len());
        drop(entries);
        let views = self.clone();
        let (service, e) = (service.to_string(), entry.clone());
        tokio::spawn(async move { views.follow(service, e).await });
        entry
    }

    /// Forget `entry` (if it is still the one cached for `service`).
    fn remove(&self, service: &str, entry: &Arc<Entry>) {
        let mut entries = lock(&self.entries);
        if entries.get(service).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            entries.remove(service);
        }
        self.metrics.dns_services(entries.len());
        entry.gone.cancel();
    }

    /// The entry's task: attach, take the first state, then every change, until the entry
    /// idles out, is evicted or the agent stops.
    async fn follow(self: Arc<Self>, service: String, entry: Arc<Entry>) {
        let first = tokio::select! {
            _ = entry.gone.cancelled() => return,
            r = async { tokio::join!(self.hub.attach_cache(&service), self.policy(&service)) } => r,
        };
        let (mut attached, mut policy) = match first {
            (Ok(attached), Ok(policy)) => (attached, policy),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(service, "DNS view: {e}");
                entry.state.send_replace(State::Failed(e.to_string()));
                self.remove(&service, &entry);
                return;
            }
        };
        let mut held = Held::default();
        for event in std::mem::take(&mut attached.first) {
            held.take(&event);
        }
        publish(&entry, &held, policy);
        let mut every = tokio::time::interval(POLICY_REFRESH);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.reset();
        loop {
            tokio::select! {
                _ = entry.gone.cancelled() => break,
                got = attached.rx.recv() => match got {
                    Ok(event) => held.take(&event),
                    Err(broadcast::error::RecvError::Lagged(_)) => held.take(&attached.reset()),
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = every.tick() => {
                    let asked = entry.asked_ms.load(Ordering::Relaxed);
                    let idle = Duration::from_millis(self.now_ms().saturating_sub(asked));
                    if idle >= self.idle {
                        break;
                    }
                    match self.policy(&service).await {
                        Ok(p) if p == policy => continue,
                        Ok(p) => policy = p,
                        Err(e) => {
                            tracing::debug!(service, "DNS view: reading the policy: {e}");
                            continue;
                        }
                    }
                }
            }
            publish(&entry, &held, policy);
        }
        self.remove(&service, &entry);
    }

    async fn policy(self: &Arc<Self>, service: &str) -> Result<Policy> {
        Ok(self.registry.policy(service).await?.unwrap_or_default())
    }
}

/// What a view is made from: the service's instances and its index, as its events say.
#[derive(Default)]
struct Held {
    instances: BTreeMap<String, Arc<Instance>>,
    /// The service's index; 0 while the registry has never held the service.
    index: u64,
}

impl Held {
    /// Apply a watch event.
    fn take(&mut self, event: &Event) {
        match event {
            Event::Snapshot {
                instances: all,
                index,
                ..
            } => {
                self.instances = all.iter().map(|i| (i.id.clone(), i.clone())).collect();
                self.index = *index;
            }
            Event::Change(change, _) => {
                apply_change(&mut self.instances, change);
                self.index = self.index.max(change.index);
            }
        }
    }
}

/// Make the entry's view the one queries read.
fn publish(entry: &Entry, held: &Held, policy: Policy) {
    let view = View {
        instances: held.instances.values().cloned().collect(),
        policy,
        known: held.index > 0,
    };
    entry.state.send_replace(State::Ready(Arc::new(view)));
}
