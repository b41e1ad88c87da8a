//! The registry side of an agent, one file per mechanism:
//!
//! - `routing.rs`: every operation goes to its service's owner through the ring (lookups, a
//!   route cache, retries while ownership settles, reads falling back to replicas);
//! - `writes.rs`: at the owner, writes to one service are applied in groups (group commit):
//!   one store batch and one replication message per group, every instance its own unit;
//! - `replication.rs`: sending a group's units to the replicas, and merging units received
//!   from other nodes (replication, hand-off, anti-entropy);
//! - `stream.rs`: one stream of changes per replica, many groups (of many services) per
//!   message;
//! - `handoff.rs`: records moving with ownership (join, leave), anti-entropy with the
//!   replicas, and the upgrade of a 0.1.0 store;
//! - `sweep.rs`: TTL expiry at the owner.
//!
//! This file holds the state they share: the per-service slots (lock and queue of pending
//! writes), the record cache (services owned and copied), the node's hybrid logical clock,
//! and the answers to requests from peers ([`Registry::handle_local`]).

mod cache;
mod feeds;
mod handoff;
use cache::{RecordCache, RECORD_CACHE_MAX, RECORD_CACHE_UNITS};
use handoff::in_span;
mod replication;
mod routing;
mod stream;
mod sweep;
mod writes;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::deadlines::Deadlines;
use super::metrics::{RepairStep, WriteStage};
use super::ring::RingDriver;
use crate::registry::hlc::{node_number, Clock, Hlc};
use crate::registry::merkle;
use crate::registry::ops::{
    discovered_json, gvip_id, gvip_key, range_hash, routing_id, Entry, RawJson, RegistryRequest,
    RegistryResponse, WriteOp,
};
use crate::registry::ttl::Preservation;
use crate::registry::unit::{meta_key, service_of_key, unit_prefix, Mark, Unit};
use crate::registry::{Record, ServiceSummary};
use crate::ring::{Id, LookupResult};
use crate::store::{KeyFilter, Store, Summarize, Summary, SUMMARY_LEN};
use crate::{Error, Result};

/// How long a routed operation keeps retrying while ownership settles (joins, leaves,
/// failures) before answering 503.
pub const ROUTE_DEADLINE: Duration = Duration::from_secs(8);

/// Entries per message (and per progress step) when records move on a join or a leave: small
/// enough to keep frames far below the RPC limit, large enough to cost few round trips.
pub const TRANSFER_CHUNK: usize = 1024;

/// How often the owner looks for expired TTLs.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// How long a key's looked-up owner is reused before the next lookup. A stale entry costs
/// nothing but a retry: the owner checks ownership on every request and answers "not the
/// owner" (retryable), and then the key is looked up afresh at once.
pub const ROUTE_CACHE_TTL: Duration = Duration::from_secs(2);

/// How long the ring-wide service list (`GET /v1/services`) is reused before the next walk.
pub const LIST_CACHE_TTL: Duration = Duration::from_secs(1);

/// Keys whose route is cached at most; past it new routes are not cached (each expires soon).
const ROUTE_CACHE_MAX: usize = 4096;

/// How often the heartbeat that notices pauses runs.
pub const AWAKE_BEAT: Duration = Duration::from_millis(50);

/// The process's own heartbeat (see [`Registry::beat`]).
#[derive(Default)]
struct Awake {
    /// The last beat; none before the first (opening the store, converting it, joining and
    /// taking a range over all come before the heartbeat starts, and are not a pause).
    beat: Option<Instant>,
    woke: Option<Instant>,
}

impl Awake {
    /// A beat at `now`: the gap since the last one, when it is longer than `threshold` (the
    /// process did not run meanwhile).
    fn beat(&mut self, now: Instant, threshold: Duration) -> Option<Duration> {
        let gap = self
            .beat
            .map(|last| now.saturating_duration_since(last))
            .filter(|gap| *gap > threshold);
        if gap.is_some() {
            self.woke = Some(now);
        }
        self.beat = Some(now);
        gap
    }

    /// Whether writes are refused at `now`: for four times `threshold` after a pause, and
    /// while the heartbeat is late.
    fn refuses(&self, now: Instant, threshold: Duration) -> bool {
        let late = self
            .beat
            .is_some_and(|b| now.saturating_duration_since(b) > threshold);
        let woke = self
            .woke
            .is_some_and(|w| now.saturating_duration_since(w) < threshold * 4);
        late || woke
    }
}

/// Services remembered as stamped in this ownership at most (past it, all start a new epoch).
const CLAIMED_MAX: usize = 64 * 1024;

/// Environment variable (tests only) that shifts this agent's clock by a number of
/// milliseconds, to prove that versions do not trust wall clocks.
pub const CLOCK_OFFSET_ENV: &str = "CHORDCTL_TEST_CLOCK_OFFSET_MS";

/// Environment variable (tests only) that bounds the record cache at this many units instead
/// of [`RECORD_CACHE_UNITS`], to prove that an agent whose services do not fit in memory still
/// answers from its store.
pub const RECORD_CACHE_UNITS_ENV: &str = "CHORDCTL_TEST_RECORD_CACHE_UNITS";

/// Environment variable (tests only) that makes this agent take a number of milliseconds
/// longer to store each group of writes, as an owner and as a replica (each batch of copies
/// it receives): a slow disk, to prove that a slow peer is not taken for a dead one, and that
/// replication streams gather what queues behind a slow replica.
pub const WRITE_DELAY_ENV: &str = "CHORDCTL_TEST_WRITE_DELAY_MS";

/// Environment variable (tests only) that makes this agent take a number of milliseconds
/// longer to scan a range for a peer (a joiner's range, behind the first page of its
/// transfer; an owner's range, behind an anti-entropy comparison): a store large or slow
/// enough that the scan outlasts an RPC deadline.
pub const RANGE_SCAN_DELAY_ENV: &str = "CHORDCTL_TEST_RANGE_SCAN_DELAY_MS";

/// The longest an anti-entropy call waits for a replica that answered the same kind of call
/// late before (each timeout doubles its deadline, up to this).
const REPAIR_DEADLINE_MAX: Duration = Duration::from_secs(30);

/// How long a raised anti-entropy deadline holds after it was last raised; then the RPC
/// deadline again.
const REPAIR_DEADLINE_HOLD: Duration = Duration::from_secs(60);

/// A write waiting for its group.
struct Pending {
    op: WriteOp,
    reply: tokio::sync::oneshot::Sender<Result<RegistryResponse>>,
}

/// One service's (or gVip claim's) serialization point: whoever holds `lock` applies every
/// write queued in `pending` as one group.
#[derive(Default)]
struct Slot {
    lock: Arc<tokio::sync::Mutex<()>>,
    pending: Mutex<Vec<Pending>>,
}

/// The registry of one agent.
pub struct Registry {
    ring: Arc<RingDriver>,
    /// This node's scans of owners' ranges, kept for their comparisons with it (one scan
    /// answers every call of a comparison, and the next round's: [`RANGE_SCAN_REUSE`]).
    range_scans: Mutex<HashMap<(Id, Id), RangeScan>>,
    replicas: usize,
    /// Copies (owner included) durable before a write is acknowledged.
    quorum: usize,
    store: Arc<dyn Store>,
    /// This node's hybrid logical clock: every version it writes comes from here.
    clock: Mutex<Clock>,
    /// Test-only shift of this agent's clock ([`CLOCK_OFFSET_ENV`]).
    offset_ms: i64,
    /// Test-only delay of every stored group ([`WRITE_DELAY_ENV`]).
    write_delay: Option<Duration>,
    /// Test-only delay of a joiner's range scan ([`RANGE_SCAN_DELAY_ENV`]).
    range_scan_delay: Option<Duration>,
    /// Per-service slots, dropped again once nobody uses them.
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    leaving: AtomicBool,
    /// False between joining the ring and having taken the owned range from the successor:
    /// until then this node must not answer for its keys (it would say "not found").
    ready: AtomicBool,
    rr: AtomicU64,
    /// Recently looked-up owners by key, so that a request through a non-owner costs one
    /// RPC to the owner rather than a lookup (log N RPCs) and then one.
    routes: Mutex<HashMap<Id, (Instant, LookupResult)>>,
    /// Anti-entropy's raised deadlines for each kind of call to each replica, and when each
    /// was raised (`Registry::repair_call`): a replica that answered late gets longer, so a
    /// slow one takes a repair in one round rather than a chunk a round.
    repair_deadlines: Mutex<HashMap<(Id, RepairStep), (Duration, Instant)>>,
    /// Service records, by name, as last written to or read from the store (write-through):
    /// a write or discover at the owner of a cached record reads nothing from the store (one
    /// that does not fit in the cache's bounds is read at each use). Filled and changed only
    /// under the service's slot lock (see [`Registry::load`]).
    records: Mutex<RecordCache>,
    /// When each owned record next needs the TTL sweep, so an idle sweep reads no store.
    deadlines: Mutex<Deadlines>,
    /// Wakes the sleeping sweep when a deadline comes before the one it planned for.
    sweep_wake: tokio::sync::Notify,
    /// The unfiltered discover answer of recently discovered records, made once per version of
    /// a record rather than per request.
    discovered: Mutex<DiscoveredCache>,
    /// Snapshots of the ranges joiners are taking, by joiner, served page by page.
    transfers: Mutex<HashMap<Id, handoff::Transfer>>,
    /// The last ring-wide service list and when it was made (see [`Registry::list`]).
    listed: tokio::sync::Mutex<Option<(Instant, Vec<ServiceSummary>)>>,
    /// When this process last ran its heartbeat, and when it last woke from a pause.
    awake: Mutex<Awake>,
    /// A pause longer than this (the heartbeat did not run) makes the node refuse writes
    /// for a while: callers have timed out and may have written elsewhere meanwhile.
    pause_threshold: Duration,
    /// Recent changes of the services followers watch here (see `feeds.rs`).
    feeds: feeds::Feeds,
    /// The services this node stamped since it last became their owner, with the predecessor
    /// it had then: the first change after an ownership change starts a new index epoch.
    claimed: Mutex<HashMap<String, Option<Id>>>,
    /// Self-preservation over the TTL leases this node owns (see `sweep.rs`).
    preservation: Mutex<Preservation>,
    /// The replication streams to this node's replicas (see `stream.rs`).
    streams: stream::Streams,
    /// Whether a replica may lack something this node owns: a replication message or a
    /// transfer failed, or units of an owned service arrived from elsewhere (hand-off, a
    /// pull). Anti-entropy compares when it is set (and on ring changes, and every
    /// [`FULL_SYNC_ROUNDS`]th round regardless), so that an idle, healthy ring does not
    /// rescan everything it holds every few seconds.
    unsynced: AtomicBool,
}

/// Anti-entropy compares every copy at least every this many rounds even when nothing it
/// knows of suggests a difference (a replica's data lost behind its back, a damaged copy).
pub const FULL_SYNC_ROUNDS: u32 = 10;

/// One reading of what a node owns (see [`Registry::owns`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Ownership {
    member: bool,
    /// Its own successor: alone on the ring, it owns every key.
    alone: bool,
    /// (predecessor, itself), when it knows its predecessor.
    pub(super) range: Option<(Id, Id)>,
}

impl Ownership {
    pub(super) fn contains(&self, id: &Id) -> bool {
        self.member
            && (self.alone
                || self
                    .range
                    .is_some_and(|(from, to)| id.in_half_open(&from, &to)))
    }
}

/// Most bytes of discover answers kept by [`DiscoveredCache`].
const DISCOVERED_CACHE_BYTES: usize = 4 << 20;

/// Unfiltered discover answers by service, each with the record it was made from. An answer
/// is served only for that very record (`Arc::ptr_eq`): every write stores a new `Arc`, so a
/// changed record never meets an old answer, and no invalidation is needed. (Holding the
/// `Arc` also keeps its address from being reused by another record.)
#[derive(Default)]
struct DiscoveredCache {
    by_service: HashMap<String, (Arc<Record>, RawJson)>,
    bytes: usize,
}

impl DiscoveredCache {
    fn get(&self, rec: &Arc<Record>) -> Option<RawJson> {
        match self.by_service.get(&rec.service) {
            Some((made_from, json)) if Arc::ptr_eq(made_from, rec) => Some(json.clone()),
            _ => None,
        }
    }

    /// Keep `json` as `rec`'s answer, replacing an older one; skipped when the cache is full.
    fn put(&mut self, rec: &Arc<Record>, json: &RawJson) {
        if let Some((_, old)) = self.by_service.remove(&rec.service) {
            self.bytes -= old.len();
        }
        if self.bytes + json.len() <= DISCOVERED_CACHE_BYTES {
            self.bytes += json.len();
            self.by_service
                .insert(rec.service.clone(), (rec.clone(), json.clone()));
        }
    }
}

/// Locks a std mutex, taking the data of a poisoned one (no invariant spans a panic here).
pub(crate) fn guard<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// (store key, mark) of an entry, as anti-entropy compares it ([`Mark`]).
/// A replica's scan of an owner's range for anti-entropy: the (key, mark) of each entry, and
/// their hash tree.
pub(super) type Scanned = (Arc<Vec<(String, Mark)>>, Arc<merkle::Items>);

/// A replica's scan of an owner's range: when it was started, and the scan (made once, by the
/// first call that needs it; see `Registry::range_scan`).
type RangeScan = (Instant, Arc<tokio::sync::OnceCell<Scanned>>);

/// How long a replica reuses its scan of an owner's range, from the scan's start: across one
/// comparison's several exchanges (the tree's levels, the digests under the nodes that differ, or the flat
/// comparison's range hash and digests, each answered from the one scan), and into the next
/// round (3 s later). A scan that outlasts the owner's RPC deadline (a large store, a loaded
/// machine) then still serves the next round's comparison; made again for each call, it
/// outlasted the deadline again, round after round, and the replica was never repaired. A
/// comparison against a scan a few seconds old costs resends of what changed since (merging
/// is idempotent); what the replica took in since is seen at the next scan.
const RANGE_SCAN_REUSE: Duration = Duration::from_secs(10);

/// Ranges whose scans a replica keeps at once (one per owner it replicates, with room).
const RANGE_SCANS_KEPT: usize = 16;

fn version_item(e: &Entry) -> (String, Mark) {
    (e.key.clone(), Mark::of(&e.key, &e.value))
}

/// A test of a stored entry's routing identifier (which node owns or copies it).
type RoutingTest = dyn Fn(&Id) -> bool + Send + Sync;

/// The store keys whose routing identifier passes `keep`. A service's units are one run of
/// keys: its identifier (a SHA-1) is made once per run, not once per unit.
fn routing_filter(keep: Arc<RoutingTest>) -> KeyFilter {
    let mut last: Option<(String, Id)> = None;
    Box::new(move |key: &str| {
        let id = match service_of_key(key) {
            Some(service) => match &last {
                Some((held, id)) if held == service => Some(*id),
                _ => {
                    let id = Id::of_key(service);
                    last = Some((service.to_string(), id));
                    Some(id)
                }
            },
            None => routing_id(key),
        };
        id.is_some_and(|id| keep(&id))
    })
}

/// A mark, and whether its entry is a tombstone past its time, as a store summary.
fn mark_summary(mark: Mark, expired: bool) -> Summary {
    let mut out = [0u8; SUMMARY_LEN];
    out[..8].copy_from_slice(&mark.version.wall_ms.to_be_bytes());
    out[8..12].copy_from_slice(&mark.version.logical.to_be_bytes());
    out[12..20].copy_from_slice(&mark.version.node.to_be_bytes());
    out[20..24].copy_from_slice(&mark.content.to_be_bytes());
    out[24] = u8::from(expired);
    out
}

/// What [`mark_summary`] made.
fn mark_of_summary(s: &Summary) -> (Mark, bool) {
    let word = |at: usize| u64::from_be_bytes(s[at..at + 8].try_into().unwrap_or_default());
    let half = |at: usize| u32::from_be_bytes(s[at..at + 4].try_into().unwrap_or_default());
    let version = Hlc {
        wall_ms: word(0),
        logical: half(8),
        node: word(12),
    };
    let mark = Mark {
        version,
        content: half(20),
    };
    (mark, s[24] != 0)
}

/// The number in the test-only environment variable `name`, if it is set to one.
fn test_setting<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok()?.trim().parse().ok()
}

fn not_owner() -> Error {
    Error::routing("this node does not own the record (ring ownership is settling); retry")
}

impl Registry {
    /// A registry over `store`, owning what `ring` says this node owns, keeping `replicas`
    /// copies of everything and acknowledging a write once `quorum` of them are durable.
    pub fn new(
        ring: Arc<RingDriver>,
        store: Arc<dyn Store>,
        replicas: usize,
        quorum: usize,
    ) -> Arc<Registry> {
        let node = ring.me().id.to_hex();
        let offset_ms = test_setting::<i64>(CLOCK_OFFSET_ENV).unwrap_or(0);
        if offset_ms != 0 {
            tracing::warn!(offset_ms, "this agent's clock is shifted for a test");
        }
        let write_delay = test_setting::<u64>(WRITE_DELAY_ENV)
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis);
        if let Some(delay) = write_delay {
            tracing::warn!(?delay, "this agent's writes are slowed down for a test");
        }
        let range_scan_delay = test_setting::<u64>(RANGE_SCAN_DELAY_ENV)
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis);
        if let Some(delay) = range_scan_delay {
            tracing::warn!(
                ?delay,
                "this agent's range scans for peers are slowed down for a test"
            );
        }
        let cache_units = test_setting::<usize>(RECORD_CACHE_UNITS_ENV);
        if let Some(units) = cache_units {
            tracing::warn!(units, "this agent's record cache is bounded for a test");
        }
        let cache_units = cache_units.unwrap_or(RECORD_CACHE_UNITS);
        let pause_threshold = (ring.pool().timeout() / 2).max(Duration::from_millis(100));
        Arc::new(Registry {
            range_scans: Mutex::new(HashMap::new()),
            ring,
            replicas: replicas.max(1),
            quorum: quorum.clamp(1, replicas.max(1)),
            store,
            clock: Mutex::new(Clock::new(node_number(&node))),
            offset_ms,
            write_delay,
            range_scan_delay,
            slots: Mutex::new(HashMap::new()),
            leaving: AtomicBool::new(false),
            ready: AtomicBool::new(true),
            rr: AtomicU64::new(0),
            routes: Mutex::new(HashMap::new()),
            repair_deadlines: Mutex::new(HashMap::new()),
            records: Mutex::new(RecordCache::new(RECORD_CACHE_MAX, cache_units)),
            deadlines: Mutex::new(Deadlines::default()),
            sweep_wake: tokio::sync::Notify::new(),
            discovered: Mutex::new(DiscoveredCache::default()),
            transfers: Mutex::new(HashMap::new()),
            listed: tokio::sync::Mutex::new(None),
            awake: Mutex::new(Awake::default()),
            pause_threshold,
            feeds: feeds::Feeds::new(),
            claimed: Mutex::new(HashMap::new()),
            preservation: Mutex::new(Preservation::default()),
            streams: stream::Streams::default(),
            // Nothing is known of the replicas at start: compare.
            unsynced: AtomicBool::new(true),
        })
    }

    /// Mark whether this node has its records and may answer for the keys it owns.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Per-service slots currently held (each a lock and a queue); they are dropped as soon
    /// as nobody uses them, so this stays small whatever names were asked for.
    pub fn slot_count(&self) -> usize {
        guard(&self.slots).len()
    }

    /// The store (for health checks).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// A counter for round-robin picks made through this agent.
    pub fn next_rr(&self) -> u64 {
        self.rr.fetch_add(1, Ordering::Relaxed)
    }

    /// The round-robin counter's next value, without taking it (explain).
    pub fn peek_rr(&self) -> u64 {
        self.rr.load(Ordering::Relaxed)
    }

    /// This agent's idea of the time (its wall clock, shifted in clock-skew tests).
    fn now(&self) -> DateTime<Utc> {
        let now = Utc::now();
        if self.offset_ms == 0 {
            return now;
        }
        now.checked_add_signed(chrono::TimeDelta::milliseconds(self.offset_ms))
            .unwrap_or(now)
    }

    /// A new version for a change of instance `id` of `rec`, above its current one, and the
    /// record's index moved on.
    fn stamp(&self, rec: &mut Record, id: &str, now: DateTime<Utc>) {
        // The first change this node makes since it became the owner (by a join, a leave or
        // a crash, or its own restart) starts a new epoch of the index: above every index the
        // previous owner can have given out, even those this copy never received, so that a
        // watcher's index never goes back and a blocking query never misses a change.
        let pred = self.ring.read(|c| c.predecessor().map(|p| p.id));
        {
            let mut claimed = guard(&self.claimed);
            if claimed.get(&rec.service) != Some(&pred) {
                if claimed.len() >= CLAIMED_MAX {
                    claimed.clear();
                }
                claimed.insert(rec.service.clone(), pred);
                rec.index = crate::registry::watch::next_epoch(rec.index);
            }
        }
        let ms = u64::try_from(now.timestamp_millis()).unwrap_or(0);
        let v = guard(&self.clock).after(ms, rec.version_of(id));
        rec.stamp(id, v);
    }

    /// Let the clock move past versions this node now holds.
    fn observe(&self, seen: Option<Hlc>) {
        if let Some(v) = seen {
            guard(&self.clock).observe(v);
        }
    }

    /// The heartbeat, every [`AWAKE_BEAT`]: notices when this process did not run for longer
    /// than `pause_threshold` (SIGSTOP, a VM or container paused, a machine starved).
    pub fn beat(&self) {
        let gap = guard(&self.awake).beat(Instant::now(), self.pause_threshold);
        if let Some(gap) = gap {
            tracing::warn!(
                ?gap,
                "this agent did not run for a while: it refuses writes for a moment, since \
                 callers timed out and may have written through another node meanwhile"
            );
        }
    }

    /// Refuse a write right after a pause: requests that waited in the socket while the
    /// process was stopped were given up by their callers, who retried elsewhere; applied now,
    /// with a new version, such a stale write would undo what was acknowledged since (a
    /// removal, say). The refusal lasts two RPC deadlines after the wake-up (requests still
    /// queued then are as stale), and also holds while the heartbeat is late (the pause may
    /// not be over as far as the heartbeat knows).
    fn check_awake(&self) -> Result<()> {
        if guard(&self.awake).refuses(Instant::now(), self.pause_threshold) {
            return Err(Error::routing(
                "this node was paused moments ago and takes no writes until its place in the \
                 ring is confirmed; retry",
            ));
        }
        Ok(())
    }

    /// How many replicas must confirm a write before it is acknowledged: W − 1, where W is
    /// the write quorum, but never more than the ring has members beside this node. The
    /// members a node lost to failure still count, so a node cut off from its peers cannot
    /// acknowledge alone; a ring of one (created alone, or shrunk by graceful leaves) can.
    fn confirmations_needed(&self) -> usize {
        let members = self.ring.read(|c| c.known_members());
        crate::registry::unit::confirmations_needed(self.quorum, members)
    }

    /// Refuse, as a routing problem, a write while this node's replica set is still forming:
    /// it knows of more members than its successor list holds yet, and lost none of them to
    /// failure (a ring just created or joined, or a successor that left gracefully). `route`
    /// retries it (as while ownership settles, without holding the service's lock), so a write
    /// sent the moment a ring starts is acknowledged once stabilization has filled the list.
    /// A node that lost members to failure does not: its short list is a failure, and the
    /// write is refused by [`Registry::replicate`].
    fn check_formed(&self) -> Result<()> {
        let forming = self.ring.read(|c| {
            let needed =
                crate::registry::unit::confirmations_needed(self.quorum, c.known_members());
            c.successors().len().min(self.replicas - 1) < needed && !c.lost_any()
        });
        if forming {
            return Err(Error::routing(
                "this node's replica set is still forming (the ring just started); retry",
            ));
        }
        Ok(())
    }

    /// The test-only slow disk ([`WRITE_DELAY_ENV`]): wait before a group's store write.
    async fn slow_disk(&self) {
        if let Some(delay) = self.write_delay {
            tokio::time::sleep(delay).await;
        }
    }

    /// A replica may lack something this node owns: the next anti-entropy round compares.
    pub fn mark_unsynced(&self) {
        self.unsynced.store(true, Ordering::Relaxed);
    }

    /// Whether anti-entropy has something to look for (and clears it: a failure in the round
    /// that follows sets it again).
    pub fn take_unsynced(&self) -> bool {
        self.unsynced.swap(false, Ordering::Relaxed)
    }

    /// The nodes that hold copies of what this node owns: the next K−1 successors.
    pub fn replica_set(&self) -> Vec<crate::ring::NodeRef> {
        self.ring.read(|c| {
            c.successors()
                .iter()
                .take(self.replicas - 1)
                .cloned()
                .collect()
        })
    }

    // ---- slots and the record cache ----------------------------------------------------

    /// The slot of `key` (a service name, or `gvip/ADDRESS` for a claim).
    fn slot(&self, key: &str) -> Arc<Slot> {
        let mut slots = guard(&self.slots);
        if let Some(slot) = slots.get(key) {
            return slot.clone();
        }
        slots.entry(key.to_string()).or_default().clone()
    }

    /// Done with `slot`: drop it from the map when nobody else holds it, so that the map does
    /// not grow with every name ever asked for.
    fn release(&self, key: &str, slot: Arc<Slot>) {
        let mut slots = guard(&self.slots);
        // Ours and the map's: nobody else can reach it (taking one needs this lock).
        if Arc::strong_count(&slot) == 2 {
            slots.remove(key);
        }
    }

    /// `service`'s record: from the cache, else from the store (and then cached). `None` when
    /// this node holds nothing of it.
    ///
    /// The caller must hold the service's slot lock so that the cache is only ever filled
    /// with what the store holds; [`Registry::read_cached`] is the way in without it.
    async fn load(&self, service: &str) -> Result<Option<Arc<Record>>> {
        if let Some(rec) = guard(&self.records).get(service) {
            return Ok(Some(rec.clone()));
        }
        let meta = self.store.get(&meta_key(service)).await?;
        let prefix = unit_prefix(service);
        let units = self.store.scan_prefix(&prefix).await?;
        if meta.is_none() && units.is_empty() {
            return Ok(None);
        }
        let rec = Record::from_stored(
            service,
            meta.as_deref(),
            units
                .iter()
                .map(|(k, v)| (&k[prefix.len()..], v.as_slice())),
        )?;
        self.observe(rec.max_version());
        Ok(Some(self.cache_record(rec)))
    }

    /// A read (at the owner, or at a replica standing in for it): from the cache without
    /// waiting for writers, else from the store under the service's slot lock.
    async fn read_cached(&self, service: &str) -> Result<Option<Arc<Record>>> {
        if let Some(rec) = guard(&self.records).get(service) {
            return Ok(Some(rec.clone()));
        }
        let slot = self.slot(service);
        let loaded = {
            let _guard = slot.lock.lock().await;
            self.load(service).await
        };
        self.release(service, slot);
        loaded
    }

    /// Whether the record cache takes another copy of a service this node does not own:
    /// copies fill at most half of it, so that what a node owns (its writes, its discovers)
    /// keeps room; a copy cached before its node came to own it stays.
    fn cache_has_room_for_copy(&self) -> bool {
        guard(&self.records).has_room_for_copy()
    }

    /// Remembers `rec` as what the store holds (call under the service's slot lock), if it
    /// fits in the cache; a record this node owns makes room by dropping the least recently
    /// used records, copies first.
    fn cache_record(&self, rec: Record) -> Arc<Record> {
        let rec = Arc::new(rec);
        let copy = !self.owns(&Id::of_key(&rec.service));
        // The records it replaced or dropped are freed here, once the cache's lock is let go.
        let placed = guard(&self.records).put(rec.clone(), copy);
        let metrics = self.ring.metrics();
        metrics.records_evicted(placed.evicted);
        if !placed.cached && !copy {
            metrics.record_uncached();
        }
        drop(placed.released);
        rec
    }

    /// (records, units) in the record cache.
    pub fn cache_size(&self) -> (usize, usize) {
        guard(&self.records).size()
    }

    /// Forgets the cached record of `service`: the store may or may not hold what was last
    /// written, so it is read again.
    fn uncache(&self, service: &str) {
        // Dropped once the cache's lock is let go.
        let _forgotten = guard(&self.records).remove(service);
    }

    // ---- ownership ---------------------------------------------------------------------

    /// Whether this node owns `id` beyond doubt: it is a member, and either alone on the ring
    /// or `id` lies between its known predecessor and itself. "No predecessor" means "not
    /// sure", never "owner of everything": such a node takes no writes (they are retried),
    /// sweeps no TTLs and pushes nothing until it knows its range again.
    fn owns(&self, id: &Id) -> bool {
        self.ownership().contains(id)
    }

    /// What this node owns as of now, by the rule of [`Registry::owns`]: for a scan that tests
    /// many keys against one reading of the ring.
    pub(super) fn ownership(&self) -> Ownership {
        self.ring.read(|c| {
            let me = c.me().id;
            Ownership {
                member: c.is_member(),
                alone: c.successor().id == me,
                range: c.predecessor().map(|p| (p.id, me)),
            }
        })
    }

    fn check_owner(&self, id: &Id) -> Result<()> {
        if self.leaving.load(Ordering::Relaxed) {
            return Err(Error::routing(
                "this node is leaving the ring; retry through another agent",
            ));
        }
        if !self.owns(id) {
            return Err(not_owner());
        }
        self.check_ready()
    }

    /// The summaries of `services` as this node holds them (empty ones left out).
    async fn summaries(&self, services: impl Iterator<Item = String>) -> Result<RegistryResponse> {
        let mut out: Vec<ServiceSummary> = Vec::new();
        for service in services {
            if let Some(rec) = self.read_cached(&service).await? {
                if !rec.is_empty() {
                    out.push(rec.summary());
                }
            }
        }
        Ok(RegistryResponse::Summaries(out))
    }

    /// Refuse while this node is still taking its range over after a join: its copy of the
    /// range is partial, and a partial answer would hide acknowledged instances.
    fn check_ready(&self) -> Result<()> {
        if self.ready.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(Error::routing(
                "this node joined moments ago and is still taking over its records; retry",
            ))
        }
    }

    /// The services this node holds anything of (a meta entry), with whether it owns them.
    async fn held_services(&self) -> Result<Vec<(String, bool)>> {
        Ok(self
            .store
            .scan_prefix("s/")
            .await?
            .into_iter()
            .filter_map(|(key, _)| {
                let service = key.strip_prefix("s/")?.to_string();
                let owned = self.owns(&Id::of_key(&service));
                Some((service, owned))
            })
            .collect())
    }

    /// Service records in this node's store: (owned by this node, held as a replica of
    /// another node's), for the metrics.
    pub async fn record_counts(&self) -> Result<(usize, usize)> {
        let held = self.held_services().await?;
        let owned = held.iter().filter(|(_, owned)| *owned).count();
        Ok((owned, held.len() - owned))
    }

    // ---- answers to peers --------------------------------------------------------------

    /// Answer a registry request from a peer (or from this agent's own routing).
    pub async fn handle_local(self: &Arc<Self>, req: RegistryRequest) -> Result<RegistryResponse> {
        match req {
            RegistryRequest::Write { service, op } => {
                self.apply(&service, Id::of_key(&service), op).await
            }
            RegistryRequest::Read { service } => {
                self.check_owner(&Id::of_key(&service))?;
                let rec = self.read_cached(&service).await?;
                Ok(RegistryResponse::Record(rec.map(Arc::unwrap_or_clone)))
            }
            RegistryRequest::ListOwned => {
                self.check_ready()?;
                let held = self.held_services().await?;
                self.summaries(held.into_iter().filter(|(_, owned)| *owned).map(|(s, _)| s))
                    .await
            }
            RegistryRequest::ListRange { from, to } => {
                self.check_ready()?;
                let held = self.held_services().await?;
                self.summaries(
                    held.into_iter()
                        .map(|(s, _)| s)
                        .filter(|s| Id::of_key(s).in_half_open(&from, &to)),
                )
                .await
            }
            RegistryRequest::TakeRange { joiner, from } => self.range_page(joiner, from).await,
            RegistryRequest::Watch {
                follower,
                generation,
                items,
                wait_ms,
            } => {
                self.watch(follower, generation, items, Duration::from_millis(wait_ms))
                    .await
            }
            RegistryRequest::Fetch { keys } => self.fetch(keys).await,
            RegistryRequest::Handoff { entries } => {
                // A leaving node has taken (or is taking) the snapshot it hands over: what
                // it accepted now would leave with it. Refused, the sender counts one
                // confirmation less and its anti-entropy finds the node's successor.
                if self.leaving.load(Ordering::Relaxed) {
                    return Err(Error::routing(
                        "this node is leaving the ring and takes no more copies",
                    ));
                }
                let started = Instant::now();
                self.merge(entries).await?;
                let elapsed = started.elapsed();
                self.ring
                    .metrics()
                    .write_stage(WriteStage::ReplicaMerge, elapsed);
                Ok(RegistryResponse::Done)
            }
            RegistryRequest::ClaimGvip { gvip, service } => self.claim_gvip(gvip, service).await,
            RegistryRequest::Discover {
                service,
                healthy,
                tag,
            } => {
                self.check_owner(&Id::of_key(&service))?;
                let rec = self
                    .read_cached(&service)
                    .await?
                    .ok_or_else(|| Error::not_found(format!("service {service} not found")))?;
                let index = rec.index;
                if healthy || tag.is_some() {
                    return Ok(RegistryResponse::discover_answer(
                        &rec,
                        healthy,
                        tag.as_deref(),
                    ));
                }
                let cached = guard(&self.discovered).get(&rec);
                let json = match cached {
                    Some(json) => json,
                    None => {
                        let json = discovered_json(&rec, false, None);
                        guard(&self.discovered).put(&rec, &json);
                        json
                    }
                };
                Ok(RegistryResponse::Json { json, index })
            }
            RegistryRequest::ReadReplica { service } => {
                // A joiner's copy is incomplete until it has taken its range: it stands in
                // for nobody (a partial list, or a 404, would hide acknowledged instances).
                self.check_ready()?;
                let rec = self.read_cached(&service).await?;
                Ok(RegistryResponse::Record(rec.map(Arc::unwrap_or_clone)))
            }
            RegistryRequest::RangeHash { from, to, hash } => {
                let (mine, _) = self.range_scan(from, to).await?;
                Ok(RegistryResponse::Same(range_hash(&mine) == hash))
            }
            RegistryRequest::Digest { items, range, span } => {
                self.diff(items, range, &|e| in_span(e, &span)).await
            }
            RegistryRequest::TreeChildren { from, to, nodes } => {
                // At most this many nodes per request (answers of 128 bytes a node).
                if nodes.len() > handoff::TREE_NODES_PER_CALL {
                    return Err(Error::invalid(format!(
                        "at most {} tree nodes per request",
                        handoff::TREE_NODES_PER_CALL
                    )));
                }
                let (_, items) = self.range_scan(from, to).await?;
                Ok(RegistryResponse::TreeChildren(merkle::children(
                    &items, &nodes,
                )))
            }
            RegistryRequest::TreeDigest {
                items,
                from,
                to,
                nodes,
            } => {
                let cover = merkle::Cover::new(&nodes);
                self.diff(items, Some((from, to)), &|key| cover.contains(key))
                    .await
            }
            RegistryRequest::Policy { service } => {
                self.check_owner(&Id::of_key(&service))?;
                let rec = self.read_cached(&service).await?;
                Ok(RegistryResponse::Policy(rec.map(|r| *r.policy())))
            }
            RegistryRequest::ResolveGvip { gvip } => {
                let id = gvip_id(&gvip);
                self.check_owner(&id)?;
                let holder = self.store.get(&gvip_key(&gvip)).await?;
                Ok(RegistryResponse::Service(
                    holder.map(|b| String::from_utf8_lossy(&b).to_string()),
                ))
            }
        }
    }

    /// Grant `gvip` to `service` at the claim's owner if it is free or already that service's.
    async fn claim_gvip(
        self: &Arc<Self>,
        gvip: String,
        service: String,
    ) -> Result<RegistryResponse> {
        let id = gvip_id(&gvip);
        self.check_owner(&id)?;
        let key = gvip_key(&gvip);
        let slot = self.slot(&key);
        let answer = async {
            let _guard = slot.lock.lock().await;
            match self.store.get(&key).await? {
                Some(holder) => Ok(RegistryResponse::Claimed(holder == service.as_bytes())),
                None => {
                    let value = service.into_bytes();
                    self.store.put(&key, value.clone()).await?;
                    self.replicate(vec![Entry {
                        key: key.clone(),
                        value,
                    }])
                    .await?;
                    Ok(RegistryResponse::Claimed(true))
                }
            }
        }
        .await;
        self.release(&key, slot);
        answer
    }

    /// What this node holds in `(from, to]` as anti-entropy compares it — each entry's
    /// (key, mark) and their hash tree — made by one scan and reused for
    /// [`RANGE_SCAN_REUSE`] (see there). Calls that arrive while the scan is under way wait
    /// for it rather than scan again (an owner whose call timed out asks the next step of its
    /// comparison at once); a scan that fails is made again by the next call.
    pub(super) async fn range_scan(&self, from: Id, to: Id) -> Result<Scanned> {
        let cell = {
            let mut scans = guard(&self.range_scans);
            scans.retain(|_, (made, _)| made.elapsed() < RANGE_SCAN_REUSE);
            match scans.get(&(from, to)) {
                Some((_, cell)) => cell.clone(),
                None => {
                    if scans.len() >= RANGE_SCANS_KEPT {
                        let oldest = scans
                            .iter()
                            .min_by_key(|(_, (made, _))| *made)
                            .map(|(k, _)| *k);
                        if let Some(k) = oldest {
                            scans.remove(&k);
                        }
                    }
                    let cell = Arc::new(tokio::sync::OnceCell::new());
                    scans.insert((from, to), (Instant::now(), cell.clone()));
                    cell
                }
            }
        };
        cell.get_or_try_init(|| async {
            let marks = Arc::new(self.marks_in(from, to).await?);
            let items = Arc::new(merkle::Items::new(marks.iter()));
            Ok((marks, items))
        })
        .await
        .cloned()
    }

    /// (key, mark) of every entry held in the range `(from, to]`.
    async fn marks_in(&self, from: Id, to: Id) -> Result<Vec<(String, Mark)>> {
        if let Some(delay) = self.range_scan_delay {
            tokio::time::sleep(delay).await;
        }
        self.marks_where(move |id| id.in_half_open(&from, &to))
            .await
    }

    /// Every stored entry (units, service meta entries and gVip claims) whose routing
    /// identifier passes `keep`, except tombstones past their time, which no copy keeps,
    /// sends or reports ([`Unit::is_expired_tombstone`]): those the scan meets are deleted.
    /// (Call without holding a slot lock.)
    async fn entries_where(
        &self,
        keep: impl Fn(&Id) -> bool + Send + Sync + 'static,
    ) -> Result<Vec<Entry>> {
        let (live, expired) = self.split_expired(self.stored_where(keep).await?);
        if !expired.is_empty() {
            self.drop_expired(expired.into_iter().map(|e| e.key).collect())
                .await;
        }
        Ok(live)
    }

    /// (key, mark) of every stored entry whose routing identifier passes `keep`, except
    /// tombstones past their time, which are deleted (as [`Registry::entries_where`] does).
    /// The store reduces each value to its mark where it reads it: a comparison over a large
    /// range holds its keys and marks, never its entries.
    pub(super) async fn marks_where(
        &self,
        keep: impl Fn(&Id) -> bool + Send + Sync + 'static,
    ) -> Result<Vec<(String, Mark)>> {
        let keep: Arc<RoutingTest> = Arc::new(keep);
        let now = self.now();
        let (mut marks, mut expired) = (Vec::new(), Vec::new());
        for prefix in crate::registry::ops::STORED_PREFIXES {
            let summarize: Summarize = Box::new(move |key: &str, value: &[u8]| {
                let gone = Unit::is_expired_entry(key, value, now);
                mark_summary(Mark::of(key, value), gone)
            });
            let filter = routing_filter(keep.clone());
            for (key, summary) in self
                .store
                .scan_prefix_summaries(prefix, filter, summarize)
                .await?
            {
                match mark_of_summary(&summary) {
                    (_, true) => expired.push(key),
                    (mark, false) => marks.push((key, mark)),
                }
            }
        }
        if !expired.is_empty() {
            self.drop_expired(expired).await;
        }
        Ok(marks)
    }

    /// `entries` split into (live, tombstones past their time).
    fn split_expired(&self, entries: Vec<Entry>) -> (Vec<Entry>, Vec<Entry>) {
        let now = self.now();
        entries
            .into_iter()
            .partition(|e| !Unit::is_expired_entry(&e.key, &e.value, now))
    }

    /// Delete the tombstones past their time that a scan found under `keys`, each only if
    /// what is stored there is still one (checked under its service's slot lock: a write may
    /// have stored a newer unit since the scan).
    async fn drop_expired(&self, keys: Vec<String>) {
        for key in keys {
            let Some(service) = service_of_key(&key).map(String::from) else {
                continue;
            };
            let slot = self.slot(&service);
            let dropped = async {
                let _guard = slot.lock.lock().await;
                let held = self.store.get(&key).await?;
                if held.is_some_and(|v| Unit::is_expired_tombstone(&v, self.now())) {
                    self.store.delete(&key).await?;
                    self.uncache(&service);
                }
                Ok::<(), Error>(())
            }
            .await;
            self.release(&service, slot);
            if let Err(err) = dropped {
                tracing::debug!(key, "dropping an old tombstone: {err}");
            }
        }
    }

    /// Every stored entry whose routing identifier passes `keep`, as stored. The store runs
    /// the test where it reads the keys: the values of entries outside are not copied.
    async fn stored_where(
        &self,
        keep: impl Fn(&Id) -> bool + Send + Sync + 'static,
    ) -> Result<Vec<Entry>> {
        let keep: Arc<RoutingTest> = Arc::new(keep);
        let mut entries = Vec::new();
        for prefix in crate::registry::ops::STORED_PREFIXES {
            let filter = routing_filter(keep.clone());
            for (key, value) in self.store.scan_prefix_where(prefix, filter).await? {
                entries.push(Entry { key, value });
            }
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn the_heartbeat_sees_a_pause_between_beats_but_not_before_the_first() {
        let threshold = Duration::from_millis(500);
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut awake = Awake::default();
        // Opening the store, converting it and taking a range over ran before the first beat.
        assert!(!awake.refuses(at(30_000), threshold));
        assert_eq!(
            awake.beat(at(30_000), threshold),
            None,
            "no pause before the first beat"
        );
        assert!(!awake.refuses(at(30_010), threshold));
        assert_eq!(awake.beat(at(30_050), threshold), None);
        // Late: the beat due has not come.
        assert!(awake.refuses(at(30_600), threshold));
        // Stopped for 3 s: a pause, and writes refused for four thresholds after it.
        assert_eq!(
            awake.beat(at(33_050), threshold),
            Some(Duration::from_secs(3))
        );
        assert_eq!(awake.beat(at(33_100), threshold), None);
        assert!(awake.refuses(at(33_100), threshold));
        assert_eq!(
            awake.beat(at(35_000), threshold),
            Some(Duration::from_millis(1900))
        );
        for ms in (35_050..=37_050).step_by(50) {
            awake.beat(at(ms), threshold);
        }
        assert!(!awake.refuses(at(37_060), threshold), "the refusal ends");
    }

    #[test]
    fn a_discover_answer_is_served_only_for_the_record_it_was_made_from() {
        let mut cache = DiscoveredCache::default();
        let v1 = Arc::new(Record::new("pay", None).unwrap());
        let json = discovered_json(&v1, false, None);
        cache.put(&v1, &json);
        assert_eq!(cache.get(&v1), Some(json.clone()));
        // The same content in another Arc (a write stored a new record) is not served.
        let v2 = Arc::new(Record::clone(&v1));
        assert_eq!(cache.get(&v2), None);
        cache.put(&v2, &json);
        assert_eq!(cache.get(&v1), None);
        assert_eq!(
            cache.bytes,
            json.len(),
            "the replaced answer no longer counts"
        );
    }

    #[test]
    fn a_mark_comes_back_whole_from_its_store_summary() {
        for (wall_ms, logical, node, content, expired) in [
            (0, 0, 0, 0, false),
            (
                1_765_000_000_123,
                7,
                0xdead_beef_0bad_f00d,
                0x1234_5678,
                true,
            ),
            (u64::MAX, u32::MAX, u64::MAX, u32::MAX, false),
        ] {
            let mark = Mark {
                version: Hlc {
                    wall_ms,
                    logical,
                    node,
                },
                content,
            };
            assert_eq!(
                mark_of_summary(&mark_summary(mark, expired)),
                (mark, expired)
            );
        }
    }

    #[test]
    fn the_discover_cache_stays_within_its_byte_budget() {
        let mut cache = DiscoveredCache::default();
        let big = RawJson::from_trusted(Bytes::from(vec![b' '; DISCOVERED_CACHE_BYTES / 2 + 1]));
        let a = Arc::new(Record::new("a", None).unwrap());
        let b = Arc::new(Record::new("b", None).unwrap());
        cache.put(&a, &big);
        cache.put(&b, &big);
        assert!(cache.get(&a).is_some());
        assert!(cache.get(&b).is_none(), "over the budget: not kept");
        assert!(cache.bytes <= DISCOVERED_CACHE_BYTES);
    }
}
