//! The agent's metrics, kept in memory and written out in the Prometheus text exposition format
//! (version 0.0.4) for `GET /metrics`.
//!
//! Hand-written rather than built on a metrics crate: the agent needs three counters, two
//! histogram families and a few gauges read at scrape time, which is less code than wiring a
//! registry, and keeps the dependency tree (and the build on small machines) as it is.
//!
//! What is counted where:
//! - HTTP requests and their latency, by matched route template and status: the middleware in
//!   `src/http/metrics.rs` calls [`Metrics::observe_http`].
//! - Lookups and their hop counts: [`super::RingDriver::lookup`].
//! - Replication errors (a replica that did not confirm a write or a repair):
//!   [`super::Registry`].
//! - Store errors, by operation: [`MeteredStore`], the wrapper the agent puts around its store.
//! - Ring RPC connections refused over the cap: the RPC server, through
//!   `RpcHandler::connection_refused`.
//! - Gauges (ring size, membership, records stored) are read when scraped, by
//!   `GET /metrics` (`src/http/metrics.rs`), which passes them to [`Metrics::render`] as
//!   [`Gauges`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::store::{Op, Store};
use crate::Result;

/// Upper bounds (seconds) of the HTTP latency histogram buckets.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds (seconds) of the write stages' histogram buckets: from a tenth of a
/// millisecond, since a store's sync on a fast disk takes a few of those.
pub const STAGE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Upper bounds of the lookup hop-count histogram buckets. A healthy ring of N nodes needs
/// about log2 N hops; more than 32 hints at broken fingers.
pub const HOP_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 32.0,
];

/// A Prometheus histogram: cumulative buckets are computed when rendered.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); one more slot for `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        let slot = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[slot] += 1;
        self.sum += value;
        self.count += 1;
    }

    /// Appends the `_bucket`, `_sum` and `_count` lines; `labels` is `k="v",` pairs, possibly
    /// empty, each followed by a comma.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&self.counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {}", self.count);
        let bare = labels.trim_end_matches(',');
        if bare.is_empty() {
            let _ = writeln!(out, "{name}_sum {}", self.sum);
            let _ = writeln!(out, "{name}_count {}", self.count);
        } else {
            let _ = writeln!(out, "{name}_sum{{{bare}}} {}", self.sum);
            let _ = writeln!(out, "{name}_count{{{bare}}} {}", self.count);
        }
    }
}

/// HTTP request series, by method → route template → status, and by route. Nested maps,
/// so that counting a request looks keys up by reference and allocates nothing once its
/// series exists.
#[derive(Debug, Default)]
struct HttpSeries {
    requests: BTreeMap<String, BTreeMap<String, BTreeMap<u16, u64>>>,
    latency: BTreeMap<String, Histogram>,
}

/// `map[name]`, made with `new` the first time: looked up by reference, so counting into a
/// series that exists allocates nothing. (Always `Some`; an `Option` rather than a panic.)
fn by_name<'a, V>(
    map: &'a mut BTreeMap<String, V>,
    name: &str,
    new: impl FnOnce() -> V,
) -> Option<&'a mut V> {
    if !map.contains_key(name) {
        map.insert(name.to_string(), new());
    }
    map.get_mut(name)
}

/// Everything one agent counts. Shared (`Arc`) by the ring driver, the registry, the store
/// wrapper and the HTTP layer; all methods take `&self` and are cheap.
#[derive(Debug)]
pub struct Metrics {
    http: Mutex<HttpSeries>,
    lookups_ok: AtomicU64,
    lookups_failed: AtomicU64,
    hops: Mutex<Histogram>,
    replication_errors: AtomicU64,
    /// Owned records the record cache had no room for.
    record_cache_full: AtomicU64,
    record_cache_evictions: AtomicU64,
    tree_rounds: AtomicU64,
    /// Anti-entropy rounds by why they ran (or that they compared nothing): [`SyncRound`].
    sync_rounds: [AtomicU64; 4],
    /// Hand-back rounds, by [`HandBackRound`].
    hand_back_rounds: [AtomicU64; 3],
    /// Copies handed back to their owners and deleted here.
    hand_back_copies: AtomicU64,
    /// Anti-entropy calls to a replica that failed, by [`RepairStep`] and cause.
    repair_failures: Mutex<BTreeMap<(RepairStep, &'static str), u64>>,
    /// Groups queued on replication streams, and the messages that carried them.
    stream_groups: AtomicU64,
    stream_messages: AtomicU64,
    tree_exchanges: AtomicU64,
    flat_rounds: AtomicU64,
    quorum_failures: AtomicU64,
    store_errors: Mutex<BTreeMap<&'static str, u64>>,
    /// Bytes of keys and values read from and written to the store.
    store_read_bytes: AtomicU64,
    store_written_bytes: AtomicU64,
    /// Nodes found by the last full walk of the ring; 0 until one ran.
    last_walk: AtomicU64,
    /// Ring RPC connections closed at once because the most were open already.
    rpc_connections_refused: AtomicU64,
    /// Peers this node dropped from its ring state as failed.
    peers_dropped: AtomicU64,
    /// Watch events sent to watchers, and resets among them.
    watch_events: AtomicU64,
    watch_resets: AtomicU64,
    /// From a change at its owner to its event here (seconds).
    notify_latency: Mutex<Histogram>,
    /// How long each [`WriteStage`] took (seconds), by stage.
    write_stages: [Mutex<Histogram>; WriteStage::ALL.len()],
    /// DNS queries answered, by result ([`DNS_RESULTS`]), those truncated, and the services
    /// the DNS view holds.
    dns_queries: [AtomicU64; DNS_RESULTS.len()],
    dns_truncated: AtomicU64,
    dns_services: AtomicU64,
}

/// The results DNS queries are counted by: the response codes the agent gives, and `other`.
pub const DNS_RESULTS: [&str; 7] = [
    "noerror", "nxdomain", "servfail", "refused", "formerr", "notimp", "other",
];

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            http: Mutex::new(HttpSeries::default()),
            lookups_ok: AtomicU64::new(0),
            lookups_failed: AtomicU64::new(0),
            hops: Mutex::new(Histogram::new(HOP_BUCKETS)),
            replication_errors: AtomicU64::new(0),
            record_cache_full: AtomicU64::new(0),
            record_cache_evictions: AtomicU64::new(0),
            tree_rounds: AtomicU64::new(0),
            sync_rounds: Default::default(),
            hand_back_rounds: Default::default(),
            hand_back_copies: AtomicU64::new(0),
            stream_groups: AtomicU64::new(0),
            stream_messages: AtomicU64::new(0),
            tree_exchanges: AtomicU64::new(0),
            repair_failures: Mutex::new(BTreeMap::new()),
            flat_rounds: AtomicU64::new(0),
            quorum_failures: AtomicU64::new(0),
            store_errors: Mutex::new(BTreeMap::new()),
            store_read_bytes: AtomicU64::new(0),
            store_written_bytes: AtomicU64::new(0),
            last_walk: AtomicU64::new(0),
            rpc_connections_refused: AtomicU64::new(0),
            peers_dropped: AtomicU64::new(0),
            watch_events: AtomicU64::new(0),
            watch_resets: AtomicU64::new(0),
            notify_latency: Mutex::new(Histogram::new(LATENCY_BUCKETS)),
            write_stages: WriteStage::ALL.map(|_| Mutex::new(Histogram::new(STAGE_BUCKETS))),
            dns_queries: Default::default(),
            dns_truncated: AtomicU64::new(0),
            dns_services: AtomicU64::new(0),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Values read at scrape time from the ring and the store.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Whether the node is a ring member.
    pub member: bool,
    /// This node plus the distinct nodes on its successor list.
    pub ring_size: usize,
    /// Service records in the store that this node owns, and that it holds as a replica;
    /// `None` when the store could not be read.
    pub records: Option<(usize, usize)>,
    /// Watchers attached to this agent, and services it follows for them.
    pub watchers: usize,
    pub subscriptions: usize,
    /// Whether this node holds back TTL removals (self-preservation).
    pub self_preservation: bool,
    /// Records and units (instances, tombstones, policies) in the record cache.
    pub cache: (usize, usize),
}

impl Metrics {
    /// A fresh set of metrics, shared.
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// One HTTP request answered: `route` is the matched route template (`/v1/services/{service}`),
    /// never the raw path, so that the number of series stays bounded.
    pub fn observe_http(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let mut http = lock(&self.http);
        let http = &mut *http;
        if let Some(by_route) = by_name(&mut http.requests, method, BTreeMap::new) {
            if let Some(by_status) = by_name(by_route, route, BTreeMap::new) {
                *by_status.entry(status).or_insert(0) += 1;
            }
        }
        if let Some(h) = by_name(&mut http.latency, route, || Histogram::new(LATENCY_BUCKETS)) {
            h.observe(elapsed.as_secs_f64());
        }
    }

    /// A lookup finished with the owner found after `hops` remote steps.
    pub fn lookup_done(&self, hops: u32) {
        self.lookups_ok.fetch_add(1, Ordering::Relaxed);
        lock(&self.hops).observe(f64::from(hops));
    }

    /// A lookup found no route.
    pub fn lookup_failed(&self) {
        self.lookups_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// A replica did not confirm a write, a repair or a hand-off sent to it.
    pub fn replication_error(&self) {
        self.replication_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A record this node owns found no room in the record cache (larger than the cache).
    pub fn record_uncached(&self) {
        self.record_cache_full.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` records were dropped from the record cache to make room for another.
    pub fn records_evicted(&self, n: usize) {
        if n > 0 {
            self.record_cache_evictions
                .fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// One anti-entropy round ran (or compared nothing), for `why`.
    pub fn sync_round(&self, why: SyncRound) {
        self.sync_rounds[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// One hand-back round ended as `how`.
    pub fn hand_back_round(&self, how: HandBackRound) {
        self.hand_back_rounds[how as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A copy this node no longer keeps was handed back to its owner and deleted here.
    pub fn hand_back_copy(&self) {
        self.hand_back_copies.fetch_add(1, Ordering::Relaxed);
    }

    /// An anti-entropy call to a replica failed at `step`, for `cause` (`timeout`,
    /// `unreachable`, or the code of the error the replica answered).
    pub fn repair_failure(&self, step: RepairStep, cause: &'static str) {
        *lock(&self.repair_failures)
            .entry((step, cause))
            .or_insert(0) += 1;
    }

    /// A group was queued on the replication stream to one replica.
    pub fn stream_group(&self) {
        self.stream_groups.fetch_add(1, Ordering::Relaxed);
    }

    /// A replication stream sent one message (of one or more groups).
    pub fn stream_message(&self) {
        self.stream_messages.fetch_add(1, Ordering::Relaxed);
    }

    /// One anti-entropy comparison with a replica walked the hash tree in `n` exchanges.
    pub fn tree_exchanges(&self, n: usize) {
        self.tree_rounds.fetch_add(1, Ordering::Relaxed);
        self.tree_exchanges.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// One anti-entropy comparison with a replica went without the tree (an older replica,
    /// or a range not known).
    pub fn flat_comparison(&self) {
        self.flat_rounds.fetch_add(1, Ordering::Relaxed);
    }

    /// A write was refused (503) because fewer copies than the write quorum confirmed it.
    pub fn quorum_lost(&self) {
        self.quorum_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A store call (`get`, `apply`, `scan`, `check`) failed.
    pub fn store_error(&self, op: &'static str) {
        *lock(&self.store_errors).entry(op).or_insert(0) += 1;
    }

    /// (bytes read, bytes written) of the store so far: keys and values.
    pub fn store_bytes(&self) -> (u64, u64) {
        (
            self.store_read_bytes.load(Ordering::Relaxed),
            self.store_written_bytes.load(Ordering::Relaxed),
        )
    }

    /// A ring RPC connection was refused: the most were open already.
    pub fn rpc_connection_refused(&self) {
        self.rpc_connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// A DNS query was answered with `result` (one of [`DNS_RESULTS`]; anything else counts
    /// as `other`), `truncated` when its UDP answer did not fit.
    pub fn dns_query(&self, result: &str, truncated: bool) {
        let slot = DNS_RESULTS
            .iter()
            .position(|r| *r == result)
            .unwrap_or(DNS_RESULTS.len() - 1);
        if let Some(n) = self.dns_queries.get(slot) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        if truncated {
            self.dns_truncated.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The DNS view holds `n` services now.
    pub fn dns_services(&self, n: usize) {
        self.dns_services
            .store(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// One `stage` of writing a group took `elapsed`.
    pub fn write_stage(&self, stage: WriteStage, elapsed: Duration) {
        lock(&self.write_stages[stage as usize]).observe(elapsed.as_secs_f64());
    }

    /// A change made at `at_ms` (its owner's clock) reached this agent's watchers now.
    pub fn watch_notified(&self, at_ms: i64) {
        let now = chrono::Utc::now().timestamp_millis();
        let secs = (now.saturating_sub(at_ms)).max(0) as f64 / 1000.0;
        lock(&self.notify_latency).observe(secs);
    }

    /// `n` watchers were sent a reset.
    pub fn watch_reset(&self, n: u64) {
        self.watch_resets.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` events were sent to a watcher.
    pub fn watch_sent(&self, n: u64) {
        self.watch_events.fetch_add(n, Ordering::Relaxed);
    }

    /// This node dropped a peer from its ring state as failed.
    pub fn peer_dropped(&self) {
        self.peers_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// A full walk of the ring found `nodes` nodes.
    pub fn walked(&self, nodes: usize) {
        self.last_walk.store(nodes as u64, Ordering::Relaxed);
    }

    /// Lookups so far: (found, failed).
    pub fn lookups(&self) -> (u64, u64) {
        (
            self.lookups_ok.load(Ordering::Relaxed),
            self.lookups_failed.load(Ordering::Relaxed),
        )
    }

    /// The exposition text: every family with `# HELP` and `# TYPE`, then its samples.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
        };
        // A counter family with one unlabelled sample.
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            family(out, name, "counter", help);
            let _ = writeln!(out, "{name} {value}");
        };
        {
            let http = lock(&self.http);
            family(
                &mut out,
                "chordctl_http_requests_total",
                "counter",
                "HTTP requests answered, by method, matched route template and status.",
            );
            let series = http.requests.iter().flat_map(|(method, by_route)| {
                by_route.iter().flat_map(move |(route, by_status)| {
                    by_status
                        .iter()
                        .map(move |(status, n)| (method, route, status, n))
                })
            });
            for (method, route, status, n) in series {
                let _ = writeln!(
                    out,
                    "chordctl_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
                    escape(method),
                    escape(route)
                );
            }
            family(
                &mut out,
                "chordctl_http_request_duration_seconds",
                "histogram",
                "Time to answer an HTTP request, by matched route template.",
            );
            for (route, h) in &http.latency {
                let labels = format!("route=\"{}\",", escape(route));
                h.render(&mut out, "chordctl_http_request_duration_seconds", &labels);
            }
        }
        family(
            &mut out,
            "chordctl_ring_member",
            "gauge",
            "1 while this node is a ring member.",
        );
        let _ = writeln!(out, "chordctl_ring_member {}", u8::from(gauges.member));
        family(
            &mut out,
            "chordctl_ring_size",
            "gauge",
            "Ring size as this node knows it: itself plus its successor list (exact up to \
             successors + 1 nodes).",
        );
        let _ = writeln!(out, "chordctl_ring_size {}", gauges.ring_size);
        let walked = self.last_walk.load(Ordering::Relaxed);
        if walked > 0 {
            family(
                &mut out,
                "chordctl_ring_walk_size",
                "gauge",
                "Nodes found by the last full walk of the ring (ring show, svc list).",
            );
            let _ = writeln!(out, "chordctl_ring_walk_size {walked}");
        }
        let (ok, failed) = self.lookups();
        family(
            &mut out,
            "chordctl_lookups_total",
            "counter",
            "Key lookups started at this node, by result.",
        );
        let _ = writeln!(out, "chordctl_lookups_total{{result=\"found\"}} {ok}");
        let _ = writeln!(out, "chordctl_lookups_total{{result=\"failed\"}} {failed}");
        family(
            &mut out,
            "chordctl_lookup_hops",
            "histogram",
            "Remote steps a successful lookup took.",
        );
        lock(&self.hops).render(&mut out, "chordctl_lookup_hops", "");
        if let Some((owned, replica)) = gauges.records {
            family(
                &mut out,
                "chordctl_records",
                "gauge",
                "Service records in this node's store: those it owns, and copies it holds as a \
                 replica.",
            );
            let _ = writeln!(out, "chordctl_records{{role=\"owned\"}} {owned}");
            let _ = writeln!(out, "chordctl_records{{role=\"replica\"}} {replica}");
        }
        family(
            &mut out,
            "chordctl_record_cache",
            "gauge",
            "Service records held in memory (owned and copies), and their units (one per \
             record and per instance, tombstone and policy).",
        );
        let (cached, units) = gauges.cache;
        let _ = writeln!(out, "chordctl_record_cache{{what=\"records\"}} {cached}");
        let _ = writeln!(out, "chordctl_record_cache{{what=\"units\"}} {units}");
        counter(
            &mut out,
            "chordctl_record_cache_full_total",
            "Times a record this node owns was not kept in the record cache because it is \
             larger than the whole cache (it is read from the store at each use).",
            self.record_cache_full.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "chordctl_record_cache_evictions_total",
            "Records dropped from the record cache, the least recently used first, to make \
             room for one this node owns (read from the store again at their next use).",
            self.record_cache_evictions.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "chordctl_replication_errors_total",
            "Copies sent to a replica (writes, repairs, hand-offs) that it did not confirm.",
            self.replication_errors.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "chordctl_antientropy_comparisons_total",
            "Anti-entropy comparisons with a replica by the hash tree.",
            self.tree_rounds.load(Ordering::Relaxed),
        );
        family(
            &mut out,
            "chordctl_antientropy_rounds_total",
            "counter",
            "Anti-entropy rounds, by why they compared (ring_change, unsynced: a replica may \
             lack a change, periodic) or that they compared nothing (idle).",
        );
        for why in SyncRound::ALL {
            let n = self.sync_rounds[why as usize].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "chordctl_antientropy_rounds_total{{reason=\"{}\"}} {n}",
                why.label()
            );
        }
        family(
            &mut out,
            "chordctl_handback_rounds_total",
            "counter",
            "Rounds handing copies this node no longer keeps back to their owners, by how they \
             ended (done; failed: an owner or a lookup failed; arc_unsure: skipped, the arc of \
             copies this node keeps was not known).",
        );
        for how in HandBackRound::ALL {
            let n = self.hand_back_rounds[how as usize].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "chordctl_handback_rounds_total{{outcome=\"{}\"}} {n}",
                how.label()
            );
        }
        counter(
            &mut out,
            "chordctl_handback_copies_total",
            "Copies of services this node no longer keeps, handed back to their owners and \
             deleted here.",
            self.hand_back_copies.load(Ordering::Relaxed),
        );
        family(
            &mut out,
            "chordctl_antientropy_failures_total",
            "counter",
            "Anti-entropy calls to a replica that failed, by step (tree, tree_digest, \
             range_hash, digest, pull, handoff, hand_back) and cause (timeout, unreachable, or the code \
             of the error the replica answered).",
        );
        for ((step, cause), n) in lock(&self.repair_failures).iter() {
            let _ = writeln!(
                out,
                "chordctl_antientropy_failures_total{{step=\"{}\",cause=\"{cause}\"}} {n}",
                step.label()
            );
        }
        counter(
            &mut out,
            "chordctl_replication_groups_total",
            "Groups of changes queued on the replication streams to replicas (one per replica).",
            self.stream_groups.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "chordctl_replication_messages_total",
            "Messages the replication streams sent; each carries every group queued for it.",
            self.stream_messages.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "chordctl_antientropy_flat_comparisons_total",
            "Anti-entropy comparisons with a replica without the tree (digests of every key).",
            self.flat_rounds.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "chordctl_antientropy_tree_exchanges_total",
            "Exchanges of tree hashes those comparisons took (one where the copies agree).",
            self.tree_exchanges.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "chordctl_write_quorum_failures_total",
            "Writes answered 503 because fewer copies than the write quorum confirmed them.",
            self.quorum_failures.load(Ordering::Relaxed),
        );
        family(
            &mut out,
            "chordctl_store_errors_total",
            "counter",
            "Failed calls to this node's store, by operation.",
        );
        let errors = lock(&self.store_errors).clone();
        for op in STORE_OPS {
            let n = errors.get(op).copied().unwrap_or(0);
            let _ = writeln!(out, "chordctl_store_errors_total{{op=\"{op}\"}} {n}");
        }
        let (read, written) = self.store_bytes();
        counter(
            &mut out,
            "chordctl_store_read_bytes_total",
            "Bytes of keys and values this node read from its store.",
            read,
        );
        counter(
            &mut out,
            "chordctl_store_written_bytes_total",
            "Bytes of keys and values this node wrote to its store.",
            written,
        );
        counter(
            &mut out,
            "chordctl_rpc_connections_refused_total",
            "Ring RPC connections closed at once because the most were open already.",
            self.rpc_connections_refused.load(Ordering::Relaxed),
        );
        family(
            &mut out,
            "chordctl_watchers",
            "gauge",
            "Watchers (streams and blocking queries) attached to this agent.",
        );
        let _ = writeln!(out, "chordctl_watchers {}", gauges.watchers);
        family(
            &mut out,
            "chordctl_watch_subscriptions",
            "gauge",
            "Services this agent follows at their owners for its watchers.",
        );
        let _ = writeln!(out, "chordctl_watch_subscriptions {}", gauges.subscriptions);
        family(
            &mut out,
            "chordctl_self_preservation",
            "gauge",
            "1 while this node holds back TTL removals because many of its leases lapsed at once.",
        );
        let _ = writeln!(
            out,
            "chordctl_self_preservation {}",
            u8::from(gauges.self_preservation)
        );
        counter(
            &mut out,
            "chordctl_watch_events_sent_total",
            "Watch events (snapshots and changes) sent to watchers.",
            self.watch_events.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "chordctl_watch_resets_total",
            "Snapshots with reset: true sent to watchers that fell behind or resumed where no replay was possible.",
            self.watch_resets.load(Ordering::Relaxed),
        );
        family(
            &mut out,
            "chordctl_watch_notify_seconds",
            "histogram",
            "From a change at its owner to its event at this agent (the owner's clock against this one's).",
        );
        lock(&self.notify_latency).render(&mut out, "chordctl_watch_notify_seconds", "");
        family(
            &mut out,
            "chordctl_write_stage_seconds",
            "histogram",
            "How long each stage of a write group took: the owner's store batch made durable (owner_store), its copies confirmed by the write quorum's replicas (quorum, in parallel with owner_store), a batch received from a peer merged and made durable (replica_merge).",
        );
        for stage in WriteStage::ALL {
            let labels = format!("stage=\"{}\",", stage.label());
            lock(&self.write_stages[stage as usize]).render(
                &mut out,
                "chordctl_write_stage_seconds",
                &labels,
            );
        }
        family(
            &mut out,
            "chordctl_dns_queries_total",
            "counter",
            "DNS queries answered, by result (the response code).",
        );
        for (result, n) in DNS_RESULTS.iter().zip(&self.dns_queries) {
            let n = n.load(Ordering::Relaxed);
            let _ = writeln!(out, "chordctl_dns_queries_total{{result=\"{result}\"}} {n}");
        }
        counter(
            &mut out,
            "chordctl_dns_truncated_total",
            "DNS answers sent over UDP with the TC bit: they did not fit the client's buffer.",
            self.dns_truncated.load(Ordering::Relaxed),
        );
        family(
            &mut out,
            "chordctl_dns_services",
            "gauge",
            "Services the DNS view holds, each kept current by its watch subscription.",
        );
        let _ = writeln!(
            out,
            "chordctl_dns_services {}",
            self.dns_services.load(Ordering::Relaxed)
        );
        counter(
            &mut out,
            "chordctl_ring_peers_dropped_total",
            "Peers this node dropped from its successors, predecessor or fingers as failed.",
            self.peers_dropped.load(Ordering::Relaxed),
        );
        out
    }
}

/// The store operations counted by [`MeteredStore`].
const STORE_OPS: [&str; 4] = ["get", "apply", "scan", "check"];

/// A label value with `\`, `"` and newlines escaped, as the text format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A [`Store`] that counts the failures of the store it wraps.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    /// Wrap `inner`, counting into `metrics`.
    pub fn wrap(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Arc<dyn Store> {
        Arc::new(MeteredStore { inner, metrics })
    }

    fn read(&self, bytes: u64) {
        self.metrics
            .store_read_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }

    fn count<T>(&self, op: &'static str, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.metrics.store_error(op);
        }
        result
    }
}

#[async_trait]
impl Store for MeteredStore {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let r = self.inner.get(key).await;
        if let Ok(Some(v)) = &r {
            self.read((key.len() + v.len()) as u64);
        }
        self.count("get", r)
    }
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        let r = self.inner.get_many(keys).await;
        if let Ok(values) = &r {
            let bytes = keys
                .iter()
                .zip(values)
                .filter_map(|(k, v)| v.as_ref().map(|v| (k.len() + v.len()) as u64))
                .sum();
            self.read(bytes);
        }
        self.count("get", r)
    }
    async fn apply(&self, ops: Vec<Op>) -> Result<()> {
        let bytes: usize = ops
            .iter()
            .map(|op| match op {
                Op::Put(k, v) => k.len() + v.len(),
                Op::Delete(k) => k.len(),
            })
            .sum();
        let r = self.inner.apply(ops).await;
        if r.is_ok() {
            self.metrics
                .store_written_bytes
                .fetch_add(bytes as u64, Ordering::Relaxed);
        }
        self.count("apply", r)
    }
    async fn scan_prefix_where(
        &self,
        prefix: &str,
        keep: crate::store::KeyFilter,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let r = self.inner.scan_prefix_where(prefix, keep).await;
        if let Ok(found) = &r {
            self.read(found.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum());
        }
        self.count("scan", r)
    }
    async fn scan_prefix_summaries(
        &self,
        prefix: &str,
        keep: crate::store::KeyFilter,
        summarize: crate::store::Summarize,
    ) -> Result<Vec<(String, crate::store::Summary)>> {
        let r = self
            .inner
            .scan_prefix_summaries(prefix, keep, summarize)
            .await;
        if let Ok(found) = &r {
            let each = crate::store::SUMMARY_LEN;
            self.read(found.iter().map(|(k, _)| (k.len() + each) as u64).sum());
        }
        self.count("scan", r)
    }
    async fn check(&self) -> Result<()> {
        let r = self.inner.check().await;
        self.count("check", r)
    }
}

/// An enum whose variants name the values of a metric's label: `ALL`, every variant in
/// declaration order (the variant's discriminant is its index), and `label()`, the value each
/// is rendered as.
macro_rules! metric_labels {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident => $label:literal,)+
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: [$name; [$($label),+].len()] = [$($name::$variant),+];

            fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }
        }
    };
}

metric_labels! {
    /// Why an anti-entropy round compared the copies, or that it did not.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum SyncRound {
        /// The predecessor or successors changed.
        RingChange => "ring_change",
        /// A replica may lack a change (a replication message failed, units arrived from
        /// elsewhere).
        Unsynced => "unsynced",
        /// The periodic full comparison.
        Periodic => "periodic",
        /// Nothing suggested a difference: no comparison.
        Idle => "idle",
    }
}

metric_labels! {
    /// How a hand-back round ended.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum HandBackRound {
        /// Every copy this node no longer keeps was compared with its owner (and handed back).
        Done => "done",
        /// A lookup or an owner failed: some copies wait for the next round.
        Failed => "failed",
        /// Skipped: the arc of copies this node keeps was not known (a predecessor unknown or
        /// unreachable on the walk).
        ArcUnsure => "arc_unsure",
    }
}

metric_labels! {
    /// A stage of writing a group, timed by `chordctl_write_stage_seconds`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum WriteStage {
        /// At the owner: the group's store batch, until durable.
        OwnerStore => "owner_store",
        /// At the owner: the group queued on the replicas' streams, until the write quorum's
        /// replicas confirmed it (overlaps `OwnerStore`).
        Quorum => "quorum",
        /// At a replica: a batch received from a peer (a replication stream, a hand-off),
        /// merged and stored, until durable.
        ReplicaMerge => "replica_merge",
    }
}

metric_labels! {
    /// The anti-entropy call that failed: its place in a comparison with a replica.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum RepairStep {
        /// A level of the hash tree (`TreeChildren`).
        Tree => "tree",
        /// The keys under the tree's differing nodes (`TreeDigest`).
        TreeDigest => "tree_digest",
        /// The flat comparison's hash of the whole range (`RangeHash`).
        RangeHash => "range_hash",
        /// The flat comparison's digests of every key (`Digest`).
        Digest => "digest",
        /// Entries the replica holds newer, fetched from it (`Fetch`).
        Pull => "pull",
        /// Entries the replica lacks, sent to it (`Handoff`).
        Handoff => "handoff",
        /// A hand-back's digest of a copy this node no longer keeps, to the copy's owner
        /// (`Digest`).
        HandBack => "hand_back",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        for hops in [0, 1, 1, 3, 40] {
            m.lookup_done(hops);
        }
        let text = m.render(&Gauges::default());
        assert!(
            text.contains("chordctl_lookup_hops_bucket{le=\"0\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("chordctl_lookup_hops_bucket{le=\"1\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("chordctl_lookup_hops_bucket{le=\"3\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("chordctl_lookup_hops_bucket{le=\"32\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("chordctl_lookup_hops_bucket{le=\"+Inf\"} 5\n"),
            "{text}"
        );
        assert!(text.contains("chordctl_lookup_hops_sum 45\n"), "{text}");
        assert!(text.contains("chordctl_lookup_hops_count 5\n"), "{text}");
    }

    #[test]
    fn refused_rpc_connections_are_counted() {
        let m = Metrics::default();
        let text = m.render(&Gauges::default());
        assert!(
            text.contains("# TYPE chordctl_rpc_connections_refused_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("\nchordctl_rpc_connections_refused_total 0\n"),
            "{text}"
        );
        m.rpc_connection_refused();
        m.rpc_connection_refused();
        m.peer_dropped();
        let text = m.render(&Gauges::default());
        assert!(
            text.contains("\nchordctl_rpc_connections_refused_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains("\nchordctl_ring_peers_dropped_total 1\n"),
            "{text}"
        );
    }

    #[test]
    fn http_series_are_labelled_by_route_and_escaped() {
        let m = Metrics::default();
        m.observe_http("GET", "/v1/ring", 200, Duration::from_millis(3));
        m.observe_http("GET", "/v1/ring", 200, Duration::from_millis(30));
        m.observe_http("PUT", "a\"b", 400, Duration::from_millis(1));
        let text = m.render(&Gauges::default());
        assert!(
            text.contains(
                "chordctl_http_requests_total{method=\"GET\",route=\"/v1/ring\",status=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("route=\"a\\\"b\""), "{text}");
        assert!(
            text.contains(
                "chordctl_http_request_duration_seconds_bucket{route=\"/v1/ring\",le=\"0.005\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("chordctl_http_request_duration_seconds_count{route=\"/v1/ring\"} 2"),
            "{text}"
        );
    }
}
