//! The owner's side of watching (API.md, "Watching for changes"): a [`Feed`] of recent changes
//! per watched service, filled when a group of writes or a TTL sweep has been stored and
//! replicated, reset when a merge changes a service in ways it cannot replay; and
//! `RegistryRequest::Watch`, a long poll by which a follower (the agent its watchers are
//! connected to) learns every change after the index it holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{guard, Registry};
use crate::registry::ops::{RegistryRequest, RegistryResponse};
use crate::registry::watch::{Change, ChangeOp, Feed, WatchAnswer, WatchBody, WatchItem};
use crate::registry::Record;
use crate::ring::{Id, NodeRef};
use crate::{Error, Result};

/// Changes kept per watched service for followers that resume.
pub const FEED_CAP: usize = 1024;

/// The longest a `Watch` waits before answering that nothing changed.
pub const MAX_WATCH_WAIT: Duration = Duration::from_secs(30);

/// A feed no follower asked about for this long is dropped.
const FEED_IDLE: Duration = Duration::from_secs(120);

/// The feeds of one owner, and who follows.
pub(super) struct Feeds {
    by_service: Mutex<HashMap<String, (Feed, Instant)>>,
    /// The latest request generation of each follower: an older request still waiting ends.
    followers: Mutex<HashMap<Id, u64>>,
    /// Moves on whenever a feed changes or a follower sends a newer request: every waiting
    /// `Watch` looks again.
    tick: tokio::sync::watch::Sender<u64>,
}

impl Feeds {
    pub(super) fn new() -> Feeds {
        Feeds {
            by_service: Mutex::new(HashMap::new()),
            followers: Mutex::new(HashMap::new()),
            tick: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Whether some follower watches `service` here.
    pub(super) fn watched(&self, service: &str) -> bool {
        guard(&self.by_service).contains_key(service)
    }

    /// Services watched here.
    pub(super) fn count(&self) -> usize {
        guard(&self.by_service).len()
    }

    /// `changes` were made durable: the service went from index `before` to `after`.
    pub(super) fn publish(&self, service: &str, before: u64, changes: Vec<Change>, after: u64) {
        let mut map = guard(&self.by_service);
        if let Some((feed, _)) = map.get_mut(service) {
            feed.push(before, changes, after);
            drop(map);
            self.bump();
        }
    }

    /// The service changed in a way the feed cannot replay; it is at `index` now.
    pub(super) fn reset(&self, service: &str, index: u64) {
        let mut map = guard(&self.by_service);
        if let Some((feed, _)) = map.get_mut(service) {
            feed.reset(index);
            drop(map);
            self.bump();
        }
    }

    fn bump(&self) {
        self.tick.send_modify(|t| *t = t.wrapping_add(1));
    }
}

/// The change events of a group that changed `ids` of a service from `before` to `after`
/// (each instance once, at the index of its last change in the group); removals are
/// `removal` (deregister, or expire for the TTL sweep).
pub(super) fn changes_of(
    before: Option<&Record>,
    after: &Record,
    ids: &[String],
    removal: ChangeOp,
    at_ms: i64,
) -> Vec<Change> {
    let mut ids: Vec<&String> = ids.iter().collect();
    ids.sort_unstable();
    ids.dedup();
    let mut out: Vec<Change> = ids
        .into_iter()
        .filter_map(|id| {
            let index = after.index_of(id)?;
            let was = before.is_some_and(|b| b.instances.contains_key(id.as_str()));
            let instance = after.instances.get(id.as_str()).cloned();
            let op = match (was, instance.is_some()) {
                (false, true) => ChangeOp::Register,
                (true, true) => ChangeOp::Update,
                (true, false) => removal,
                // A tombstone forgotten, or one replaced by another: nothing a watcher saw.
                (false, false) => return None,
            };
            Some(Change {
                index,
                op,
                id: id.clone(),
                instance,
                at_ms,
            })
        })
        .collect();
    out.sort_by_key(|c| c.index);
    out
}

impl Registry {
    /// Answer a follower's `Watch`: as soon as one of `items` has news, or after `wait`.
    pub(super) async fn watch(
        self: &Arc<Self>,
        follower: Id,
        generation: u64,
        items: Vec<WatchItem>,
        wait: Duration,
    ) -> Result<RegistryResponse> {
        {
            let mut followers = guard(&self.feeds.followers);
            let latest = followers.entry(follower).or_insert(0);
            if generation < *latest {
                return Ok(RegistryResponse::Watched(Vec::new()));
            }
            *latest = generation;
        }
        self.feeds.bump();
        self.drop_idle_feeds();
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WATCH_WAIT);
        let mut tick = self.feeds.tick.subscribe();
        loop {
            tick.borrow_and_update();
            let mut out = Vec::new();
            for item in &items {
                if let Some(answer) = self.watch_one(item).await? {
                    out.push(answer);
                }
            }
            let superseded = guard(&self.feeds.followers)
                .get(&follower)
                .is_some_and(|g| *g > generation);
            if !out.is_empty() || superseded || tokio::time::Instant::now() >= deadline {
                return Ok(RegistryResponse::Watched(out));
            }
            tokio::select! {
                changed = tick.changed() => {
                    if changed.is_err() {
                        return Ok(RegistryResponse::Watched(out));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// What one follower's item has to hear, if anything.
    async fn watch_one(self: &Arc<Self>, item: &WatchItem) -> Result<Option<WatchAnswer>> {
        let answer = |index, body| WatchAnswer {
            service: item.service.clone(),
            index,
            body,
        };
        if self.check_owner(&Id::of_key(&item.service)).is_err() {
            return Ok(Some(answer(item.since, WatchBody::NotOwner)));
        }
        let rec = self.read_cached(&item.service).await?;
        let now = Instant::now();
        let (index, replay) = {
            let mut map = guard(&self.feeds.by_service);
            let (feed, used) = map.entry(item.service.clone()).or_insert_with(|| {
                (
                    Feed::new(rec.as_ref().map_or(0, |r| r.index), FEED_CAP),
                    now,
                )
            });
            *used = now;
            (feed.last(), feed.replay(item.since))
        };
        let instances = || {
            rec.as_ref()
                .map(|r| r.instances.values().cloned().collect())
                .unwrap_or_default()
        };
        if item.snapshot {
            let body = WatchBody::Snapshot {
                instances: instances(),
                changes: replay,
            };
            return Ok(Some(answer(index, body)));
        }
        if item.since == index {
            return Ok(None);
        }
        let body = match replay {
            Some(changes) if !changes.is_empty() => WatchBody::Changes(changes),
            _ => WatchBody::Snapshot {
                instances: instances(),
                changes: None,
            },
        };
        Ok(Some(answer(index, body)))
    }

    fn drop_idle_feeds(&self) {
        let mut map = guard(&self.feeds.by_service);
        if map.len() > 64 {
            map.retain(|_, (_, used)| used.elapsed() < FEED_IDLE);
        }
    }

    /// The owner of `service` as far as this node knows (a recent lookup, or a new one).
    pub async fn owner_of(self: &Arc<Self>, service: &str) -> Result<NodeRef> {
        let key = Id::of_key(service);
        if self.owns(&key) {
            return Ok(self.ring.me());
        }
        if let Some(owner) = self.cached_owner(&key) {
            return Ok(owner);
        }
        let found = self.ring.lookup(key).await?;
        self.cache_route(key, &found);
        Ok(found.owner().clone())
    }

    /// Forget the cached owner of `service` (it said it is not the owner, or did not answer).
    pub fn forget_route(&self, service: &str) {
        guard(&self.routes).remove(&Id::of_key(service));
    }

    /// Follow `items` at `owner` (this node included): one long poll of at most `wait`.
    pub async fn follow(
        self: &Arc<Self>,
        owner: &NodeRef,
        generation: u64,
        items: Vec<WatchItem>,
        wait: Duration,
    ) -> Result<Vec<WatchAnswer>> {
        let me = self.ring.me();
        let req = RegistryRequest::Watch {
            follower: me.id,
            generation,
            items,
            wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        };
        let answer = if owner.id == me.id {
            self.handle_local(req).await?
        } else {
            let deadline = wait + self.ring.pool().timeout();
            self.call_within(owner, req, deadline).await?
        };
        match answer {
            RegistryResponse::Watched(answers) => Ok(answers),
            other => Err(Error::internal(format!("unexpected answer {other:?}"))),
        }
    }

    /// Services followers watch at this owner.
    pub fn watched_services(&self) -> usize {
        self.feeds.count()
    }
}
