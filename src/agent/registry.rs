//! The registry side of an agent: routes every operation to the record's owner through the
//! ring, and, at the owner, applies it under a per-service lock (no lost updates), stores it
//! durably, and answers. Also: records moving with ownership (join, leave) and TTL expiry.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;

use super::deadlines::Deadlines;
use super::progress::{Progress, Step};
use super::ring::RingDriver;
use crate::registry::compat::{self, CancelOutcome};
use crate::registry::ops::{
    discovered_json, gvip_id, gvip_key, range_hash, record_key, routing_id, Entry, RawJson,
    RegistryRequest, RegistryResponse, WriteOp,
};
use crate::registry::{Record, ServiceSummary, DEFAULT_GRACE_FACTOR};
use crate::ring::{Id, LookupResult, NodeRef};
use crate::rpc::{Request, Response};
use crate::store::{Op, Store};
use crate::{Error, Result};

/// How long a routed operation keeps retrying while ownership settles (joins, leaves,
/// failures) before answering 503.
pub const ROUTE_DEADLINE: Duration = Duration::from_secs(8);

/// Records per message (and per progress step) when records move on a join or a leave: small
/// enough to keep frames far below the RPC limit, large enough to cost few round trips.
pub const TRANSFER_CHUNK: usize = 256;

/// How often the owner looks for expired TTLs.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// How long a key's looked-up owner is reused before the next lookup. A stale entry costs
/// nothing but a retry: the owner checks ownership on every request and answers "not the
/// owner" (retryable), and then the key is looked up afresh at once.
pub const ROUTE_CACHE_TTL: Duration = Duration::from_secs(2);

/// Keys whose route is cached at most; past it new routes are not cached (each expires soon).
const ROUTE_CACHE_MAX: usize = 4096;

/// Decoded records kept at the owner at most; past it new records are not cached.
const RECORD_CACHE_MAX: usize = 16 * 1024;

/// The registry of one agent.
pub struct Registry {
    ring: Arc<RingDriver>,
    replicas: usize,
    store: Arc<dyn Store>,
    node: String,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    leaving: AtomicBool,
    /// False between joining the ring and having taken the owned range from the successor:
    /// until then this node must not answer for its keys (it would say "not found").
    ready: AtomicBool,
    rr: AtomicU64,
    /// Recently looked-up owners by key, so that a request through a non-owner costs one
    /// RPC to the owner rather than a lookup (log N RPCs) and then one.
    routes: Mutex<HashMap<Id, (Instant, LookupResult)>>,
    /// Decoded service records, by service name, as last written to or read from the store
    /// (write-through): a register or discover at the owner neither reads the store nor
    /// decodes JSON. Filled and changed only under the record's lock (see [`Registry::load`]),
    /// and dropped around every write that bypasses `apply` (merge).
    records: Mutex<HashMap<String, Arc<Record>>>,
    /// When each owned record next needs the TTL sweep, so an idle sweep reads no store.
    deadlines: Mutex<Deadlines>,
    /// Wakes the sleeping sweep when a deadline comes before the one it planned for.
    sweep_wake: tokio::sync::Notify,
    /// The unfiltered discover answer of recently discovered records, made once per version of
    /// a record rather than per request.
    discovered: Mutex<DiscoveredCache>,
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
fn guard<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// (store key, version counter, version node) of an entry; gVip claims have no version.
fn version_item(e: &Entry) -> (String, u64, String) {
    match Record::version_of(&e.value) {
        Ok(v) if e.key.starts_with("svc/") => (e.key.clone(), v.counter, v.node),
        _ => (e.key.clone(), 0, String::new()),
    }
}

fn not_owner() -> Error {
    Error::routing("this node does not own the record (ring ownership is settling); retry")
}

impl Registry {
    /// A registry over `store`, owning what `ring` says this node owns.
    pub fn new(ring: Arc<RingDriver>, store: Arc<dyn Store>, replicas: usize) -> Arc<Registry> {
        let node = ring.me().id.to_hex();
        Arc::new(Registry {
            ring,
            replicas: replicas.max(1),
            store,
            node,
            locks: Mutex::new(HashMap::new()),
            leaving: AtomicBool::new(false),
            ready: AtomicBool::new(true),
            rr: AtomicU64::new(0),
            routes: Mutex::new(HashMap::new()),
            records: Mutex::new(HashMap::new()),
            deadlines: Mutex::new(Deadlines::default()),
            sweep_wake: tokio::sync::Notify::new(),
            discovered: Mutex::new(DiscoveredCache::default()),
        })
    }

    /// Mark whether this node has its records and may answer for the keys it owns.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The store (for health checks).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// A counter for round-robin picks made through this agent.
    pub fn next_rr(&self) -> u64 {
        self.rr.fetch_add(1, Ordering::Relaxed)
    }

    // ---- routing -----------------------------------------------------------------------

    /// Send `req` to the owner of `key_id`, retrying while ownership settles.
    async fn route(self: &Arc<Self>, key_id: Id, req: RegistryRequest) -> Result<RegistryResponse> {
        let started = Instant::now();
        let mut last = Error::routing("no owner found");
        while started.elapsed() < ROUTE_DEADLINE {
            match self.try_route(key_id, &req).await {
                Ok(r) => return Ok(r),
                // Only routing problems (ownership settling, an unreachable owner) are worth
                // retrying; anything else (bad input, a store outage at the owner) is the answer.
                Err(e @ Error::Routing(_)) => last = e,
                Err(e) => return Err(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(last)
    }

    async fn try_route(
        self: &Arc<Self>,
        key_id: Id,
        req: &RegistryRequest,
    ) -> Result<RegistryResponse> {
        // This node owns the key (its predecessor is known, or it is alone): no lookup.
        if self.surely_owns(&key_id) {
            // A write needs no copy of the request: the record takes what it keeps.
            if let RegistryRequest::Write { service, op } = req {
                return self.apply(service, key_id, op).await;
            }
            return self.handle_local(req.clone()).await;
        }
        // The owner found by a recent lookup: one RPC. A routing failure (the node no longer
        // owns the key, or does not answer) drops the entry and falls through to a lookup.
        if let Some(owner) = self.cached_owner(&key_id) {
            match self.call(&owner, req.clone()).await {
                Err(Error::Routing(_)) => {
                    guard(&self.routes).remove(&key_id);
                }
                answer => return answer,
            }
        }
        let found = self.ring.lookup(key_id).await?;
        let owner = found.owner().clone();
        if owner.id == self.ring.me().id {
            return self.handle_local(req.clone()).await;
        }
        self.cache_route(key_id, &found);
        match self.call(&owner, req.clone()).await {
            // The owner does not answer: a read is served by the next replica that does.
            Err(Error::Routing(why))
                if matches!(
                    req,
                    RegistryRequest::Read { .. } | RegistryRequest::Discover { .. }
                ) =>
            {
                let (RegistryRequest::Read { service } | RegistryRequest::Discover { service, .. }) =
                    req
                else {
                    return Err(Error::Routing(why));
                };
                let chain = found.replica_chain(self.replicas);
                for node in chain.iter().skip(1) {
                    let r = RegistryRequest::ReadReplica {
                        service: service.clone(),
                    };
                    let answer = if node.id == self.ring.me().id {
                        self.handle_local(r).await
                    } else {
                        self.call(node, r).await
                    };
                    if let Ok(answer) = answer {
                        return match (req, answer) {
                            (
                                RegistryRequest::Discover { healthy, tag, .. },
                                RegistryResponse::Record(Some(rec)),
                            ) => Ok(RegistryResponse::Json(discovered_json(
                                &rec,
                                *healthy,
                                tag.as_deref(),
                            )?)),
                            (RegistryRequest::Discover { .. }, _) => {
                                Err(Error::not_found(format!("service {service} not found")))
                            }
                            (_, answer) => Ok(answer),
                        };
                    }
                }
                Err(Error::Routing(why))
            }
            other => other,
        }
    }

    /// Whether this node owns `id` beyond doubt: it is a member, and either alone on the ring
    /// or `id` lies between its known predecessor and itself. (Without a predecessor a node
    /// counts itself the owner of everything, which is only safe to act on after a lookup.)
    fn surely_owns(&self, id: &Id) -> bool {
        self.ring.read(|c| {
            c.is_member()
                && (c.successor().id == c.me().id || (c.predecessor().is_some() && c.owns(id)))
        })
    }

    /// The owner of `key` from a lookup made less than [`ROUTE_CACHE_TTL`] ago.
    fn cached_owner(&self, key: &Id) -> Option<NodeRef> {
        let mut routes = guard(&self.routes);
        match routes.get(key) {
            Some((at, found)) if at.elapsed() < ROUTE_CACHE_TTL => Some(found.owner().clone()),
            Some(_) => {
                routes.remove(key);
                None
            }
            None => None,
        }
    }

    fn cache_route(&self, key: Id, found: &LookupResult) {
        let mut routes = guard(&self.routes);
        if routes.len() >= ROUTE_CACHE_MAX {
            routes.retain(|_, (at, _)| at.elapsed() < ROUTE_CACHE_TTL);
        }
        if routes.len() < ROUTE_CACHE_MAX {
            routes.insert(key, (Instant::now(), found.clone()));
        }
    }

    /// The nodes that hold copies of what this node owns: the next K−1 successors.
    pub fn replica_set(&self) -> Vec<NodeRef> {
        self.ring.read(|c| {
            c.successors()
                .iter()
                .take(self.replicas - 1)
                .cloned()
                .collect()
        })
    }

    /// Store `entries` at every replica; succeed once at least one has them (when there are
    /// replicas). The other copies complete in the background.
    async fn replicate(self: &Arc<Self>, entries: Vec<Entry>) -> Result<()> {
        let replicas = self.replica_set();
        if replicas.is_empty() {
            return Ok(());
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(replicas.len());
        for node in replicas {
            let me = self.clone();
            let tx = tx.clone();
            let entries = entries.clone();
            tokio::spawn(async move {
                let r = me.call(&node, RegistryRequest::Handoff { entries }).await;
                let _ = tx.send(r).await;
            });
        }
        drop(tx);
        let mut last = None;
        while let Some(r) = rx.recv().await {
            match r {
                Ok(_) => return Ok(()),
                Err(e) => {
                    self.ring.metrics().replication_error();
                    last = Some(e);
                }
            }
        }
        Err(Error::unavailable(format!(
            "the write is stored at its owner but no replica confirmed it: {}",
            last.map(|e| e.to_string()).unwrap_or_default()
        )))
    }

    /// Anti-entropy with every replica: send the versions of what this node owns, then the
    /// entries a replica lacks or holds older. Also the repair after membership changes.
    pub async fn sync_replicas(self: &Arc<Self>) -> Result<usize> {
        let replicas = self.replica_set();
        if replicas.is_empty() {
            return Ok(0);
        }
        let owned = self.owned_entries().await?;
        if owned.is_empty() {
            return Ok(0);
        }
        let items: Vec<(String, u64, String)> = owned.iter().map(version_item).collect();
        let range = self
            .ring
            .read(|c| c.predecessor().map(|p| (p.id, c.me().id)));
        let hash = range_hash(&items);
        let mut sent = 0;
        for node in replicas {
            // Cheap check first: one hash over the whole range; the full digest only when
            // the replica's differs.
            if let Some((from, to)) = range {
                let req = RegistryRequest::RangeHash {
                    from,
                    to,
                    hash: hash.clone(),
                };
                if let Ok(RegistryResponse::Same(true)) = self.call(&node, req).await {
                    continue;
                }
            }
            let req = RegistryRequest::Digest {
                items: items.clone(),
                range,
            };
            let need = match self.call(&node, req).await {
                Ok(RegistryResponse::Diff { need, newer }) => {
                    // What the replica holds newer in our range (we may have inherited the
                    // range from a crashed node it was a replica of) comes to us first.
                    if !newer.is_empty() {
                        sent += newer.len();
                        self.merge(newer).await?;
                    }
                    need
                }
                _ => {
                    self.ring.metrics().replication_error();
                    continue;
                }
            };
            if need.is_empty() {
                continue;
            }
            let want: std::collections::HashSet<String> = need.into_iter().collect();
            let entries: Vec<Entry> = owned
                .iter()
                .filter(|e| want.contains(&e.key))
                .cloned()
                .collect();
            sent += entries.len();
            if self
                .call(&node, RegistryRequest::Handoff { entries })
                .await
                .is_err()
            {
                self.ring.metrics().replication_error();
            }
        }
        Ok(sent)
    }

    async fn owned_entries(&self) -> Result<Vec<Entry>> {
        self.entries_where(|id| self.owns(id)).await
    }

    /// Every stored entry (service records and gVip claims) whose routing identifier passes
    /// `keep`.
    async fn entries_where(&self, keep: impl Fn(&Id) -> bool) -> Result<Vec<Entry>> {
        let mut entries = Vec::new();
        for prefix in ["svc/", "gvip/"] {
            for (key, value) in self.store.scan_prefix(prefix).await? {
                if routing_id(&key).is_some_and(|id| keep(&id)) {
                    entries.push(Entry { key, value });
                }
            }
        }
        Ok(entries)
    }

    /// Service records in this node's store: (owned by this node, held as a replica of
    /// another node's), for the metrics.
    pub async fn record_counts(&self) -> Result<(usize, usize)> {
        let mut owned = 0;
        let mut held = 0;
        for (key, _) in self.store.scan_prefix("svc/").await? {
            if routing_id(&key).is_some_and(|id| self.owns(&id)) {
                owned += 1;
            } else {
                held += 1;
            }
        }
        Ok((owned, held))
    }

    /// Call `node` with a registry request.
    pub async fn call(&self, node: &NodeRef, req: RegistryRequest) -> Result<RegistryResponse> {
        let body = serde_json::to_vec(&req).map_err(|e| Error::internal(e.to_string()))?;
        match self
            .ring
            .pool()
            .call(&node.addr, Request::Registry(body))
            .await
        {
            Ok(Response::Registry(bytes)) => {
                let bytes = Bytes::from(bytes);
                if let Some(raw) = RawJson::from_rpc(&bytes) {
                    return raw.map(RegistryResponse::Json);
                }
                serde_json::from_slice(&bytes)
                    .map_err(|e| Error::internal(format!("bad registry answer: {e}")))
            }
            Ok(Response::Error(e)) => Err(e),
            Ok(other) => Err(Error::internal(format!("unexpected answer {other:?}"))),
            Err(e) => {
                self.ring.with(|c| c.suspect(&node.id));
                Err(Error::routing(e.to_string()))
            }
        }
    }

    /// Apply a write to `service` at its owner.
    pub async fn write(self: &Arc<Self>, service: &str, op: WriteOp) -> Result<RegistryResponse> {
        let req = RegistryRequest::Write {
            service: service.to_string(),
            op,
        };
        self.route(Id::of_key(service), req).await
    }

    /// Read `service`'s record from its owner.
    pub async fn read(self: &Arc<Self>, service: &str) -> Result<Option<Record>> {
        let req = RegistryRequest::Read {
            service: service.to_string(),
        };
        match self.route(Id::of_key(service), req).await? {
            RegistryResponse::Record(r) => Ok(r),
            other => Err(Error::internal(format!("unexpected answer {other:?}"))),
        }
    }

    /// The discover answer for `service` (`{"service", "instances"}`, filtered), made at the
    /// owner and passed on as JSON text: through a non-owner this costs one RPC and no record
    /// decoding. An owner that predates this request is asked for the record instead.
    pub async fn discover_json(
        self: &Arc<Self>,
        service: &str,
        healthy: bool,
        tag: Option<&str>,
    ) -> Result<RawJson> {
        let req = RegistryRequest::Discover {
            service: service.to_string(),
            healthy,
            tag: tag.map(str::to_string),
        };
        match self.route(Id::of_key(service), req).await {
            Ok(RegistryResponse::Json(json)) => Ok(json),
            Ok(other) => Err(Error::internal(format!("unexpected answer {other:?}"))),
            Err(Error::InvalidInput(m)) if m.starts_with("undecodable registry request") => {
                let rec = self
                    .read(service)
                    .await?
                    .ok_or_else(|| Error::not_found(format!("service {service} not found")))?;
                discovered_json(&rec, healthy, tag)
            }
            Err(e) => Err(e),
        }
    }

    /// The service holding `gvip`, from the claim's owner.
    pub async fn resolve_gvip(self: &Arc<Self>, gvip: &str) -> Result<Option<String>> {
        let id = gvip_id(gvip);
        let req = RegistryRequest::ResolveGvip {
            gvip: gvip.to_string(),
        };
        match self.route(id, req).await? {
            RegistryResponse::Service(s) => Ok(s),
            other => Err(Error::internal(format!("unexpected answer {other:?}"))),
        }
    }

    /// Every service on the ring with its instance count: ask every node for what it owns.
    pub async fn list(self: &Arc<Self>) -> Result<Vec<ServiceSummary>> {
        let nodes = self.ring.walk(100_000).await?;
        let mut all: BTreeMap<String, usize> = BTreeMap::new();
        for (node, _, _) in nodes {
            let got = if node.id == self.ring.me().id {
                self.handle_local(RegistryRequest::ListOwned).await?
            } else {
                self.call(&node, RegistryRequest::ListOwned).await?
            };
            if let RegistryResponse::Summaries(list) = got {
                for s in list {
                    all.insert(s.service, s.instances);
                }
            }
        }
        Ok(all
            .into_iter()
            .map(|(service, instances)| ServiceSummary { service, instances })
            .collect())
    }

    // ---- at the owner ------------------------------------------------------------------

    /// Answer a registry request from a peer (or from this agent's own routing).
    pub async fn handle_local(self: &Arc<Self>, req: RegistryRequest) -> Result<RegistryResponse> {
        match req {
            RegistryRequest::Write { service, op } => {
                self.apply(&service, Id::of_key(&service), &op).await
            }
            RegistryRequest::Read { service } => {
                self.check_owner(&Id::of_key(&service))?;
                let rec = self.read_cached(&service).await?;
                Ok(RegistryResponse::Record(rec.map(Arc::unwrap_or_clone)))
            }
            RegistryRequest::ListOwned => {
                let mut out = Vec::new();
                for (key, value) in self.store.scan_prefix("svc/").await? {
                    let owned = routing_id(&key).is_some_and(|id| self.owns(&id));
                    if owned {
                        if let Ok(rec) = Record::from_bytes(&value) {
                            if !rec.is_empty() {
                                out.push(rec.summary());
                            }
                        }
                    }
                }
                Ok(RegistryResponse::Summaries(out))
            }
            RegistryRequest::TakeRange { joiner } => {
                let me = self.ring.me().id;
                let out = self
                    .entries_where(|id| !id.in_half_open(&joiner, &me))
                    .await?;
                Ok(RegistryResponse::Entries(out))
            }
            RegistryRequest::Handoff { entries } => {
                self.merge(entries).await?;
                Ok(RegistryResponse::Done)
            }
            RegistryRequest::ClaimGvip { gvip, service } => {
                let id = gvip_id(&gvip);
                self.check_owner(&id)?;
                let lock = self.lock_for(&gvip_key(&gvip));
                let _guard = lock.lock().await;
                let key = gvip_key(&gvip);
                match self.store.get(&key).await? {
                    Some(holder) => Ok(RegistryResponse::Claimed(holder == service.as_bytes())),
                    None => {
                        let value = service.into_bytes();
                        self.store.put(&key, value.clone()).await?;
                        self.replicate(vec![Entry { key, value }]).await?;
                        Ok(RegistryResponse::Claimed(true))
                    }
                }
            }
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
                if healthy || tag.is_some() {
                    return Ok(RegistryResponse::Json(discovered_json(
                        &rec,
                        healthy,
                        tag.as_deref(),
                    )?));
                }
                let cached = guard(&self.discovered).get(&rec);
                let json = match cached {
                    Some(json) => json,
                    None => {
                        let json = discovered_json(&rec, false, None)?;
                        guard(&self.discovered).put(&rec, &json);
                        json
                    }
                };
                Ok(RegistryResponse::Json(json))
            }
            RegistryRequest::ReadReplica { service } => {
                let rec = self.read_cached(&service).await?;
                Ok(RegistryResponse::Record(rec.map(Arc::unwrap_or_clone)))
            }
            RegistryRequest::RangeHash { from, to, hash } => {
                let mine: Vec<_> = self
                    .entries_where(|id| id.in_half_open(&from, &to))
                    .await?
                    .iter()
                    .map(version_item)
                    .collect();
                Ok(RegistryResponse::Same(range_hash(&mine) == hash))
            }
            RegistryRequest::Digest { items, range } => {
                // One scan of the owner's range (everything when it knows no predecessor):
                // what we hold there, by key, with its version.
                let held = match range {
                    Some((from, to)) => {
                        self.entries_where(|id| id.in_half_open(&from, &to)).await?
                    }
                    None => self.entries_where(|_| true).await?,
                };
                let mut mine: HashMap<String, (crate::registry::Version, Entry)> = held
                    .into_iter()
                    .map(|e| {
                        let (key, counter, node) = version_item(&e);
                        (key, (crate::registry::Version { counter, node }, e))
                    })
                    .collect();
                let mut need = Vec::new();
                for (key, counter, node) in items {
                    let theirs = crate::registry::Version { counter, node };
                    match mine.remove(&key) {
                        None => need.push(key),
                        Some((v, _)) if v < theirs => need.push(key),
                        Some((v, e)) if v > theirs && range.is_some() => {
                            mine.insert(key, (v, e));
                        }
                        Some(_) => {}
                    }
                }
                // Left in `mine`: entries of the range the owner lacks or holds older.
                let newer = if range.is_some() {
                    mine.into_values().map(|(_, e)| e).collect()
                } else {
                    Vec::new()
                };
                Ok(RegistryResponse::Diff { need, newer })
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

    fn owns(&self, id: &Id) -> bool {
        self.ring.read(|c| c.is_member() && c.owns(id))
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
        if !self.ready.load(Ordering::Relaxed) {
            return Err(Error::routing(
                "this node joined moments ago and is still taking over its records; retry",
            ));
        }
        Ok(())
    }

    fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = match self.locks.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        if let Some(lock) = locks.get(key) {
            return lock.clone();
        }
        locks.entry(key.to_string()).or_default().clone()
    }

    /// `service`'s record: from the cache, else from the store (and then cached).
    ///
    /// The caller must hold the record's lock (see [`Registry::lock_for`]) so that the cache
    /// is only ever filled with what the store holds; [`Registry::read_cached`] is the way in
    /// without the lock.
    async fn load(&self, service: &str) -> Result<Option<Arc<Record>>> {
        if let Some(rec) = guard(&self.records).get(service) {
            return Ok(Some(rec.clone()));
        }
        match self.store.get(&record_key(service)).await? {
            Some(bytes) => Ok(Some(self.cache_record(Record::from_bytes(&bytes)?))),
            None => Ok(None),
        }
    }

    /// A read (at the owner, or at a replica standing in for it): from the cache without
    /// waiting for writers, else from the store under the record's lock.
    async fn read_cached(&self, service: &str) -> Result<Option<Arc<Record>>> {
        if let Some(rec) = guard(&self.records).get(service) {
            return Ok(Some(rec.clone()));
        }
        let lock = self.lock_for(&record_key(service));
        let _guard = lock.lock().await;
        self.load(service).await
    }

    /// Remembers `rec` as what the store holds (call under the record's lock).
    fn cache_record(&self, rec: Record) -> Arc<Record> {
        let rec = Arc::new(rec);
        let mut records = guard(&self.records);
        if records.len() < RECORD_CACHE_MAX || records.contains_key(&rec.service) {
            records.insert(rec.service.clone(), rec.clone());
        }
        rec
    }

    /// Forgets the cached record under `key` (a store key), if it is a service record.
    fn uncache_key(&self, key: &str) {
        if let Some(service) = key.strip_prefix("svc/") {
            guard(&self.records).remove(service);
        }
    }

    /// Stores `rec` durably, then caches it (call under the record's lock). On a failure the
    /// cached copy is dropped: the store may or may not hold the write, so it is read again.
    /// Returns the stored entry, for replication.
    async fn save(&self, rec: Record) -> Result<Entry> {
        let key = record_key(&rec.service);
        let value = rec.to_bytes()?;
        match self.store.put(&key, value.clone()).await {
            Ok(()) => {
                let next = rec.next_deadline(DEFAULT_GRACE_FACTOR);
                if guard(&self.deadlines).set(&rec.service, next) {
                    self.sweep_wake.notify_one();
                }
                self.cache_record(rec);
                Ok(Entry { key, value })
            }
            Err(e) => {
                self.uncache_key(&key);
                Err(e)
            }
        }
    }

    /// A gVip claimed ring-wide for `service`.
    async fn assign_gvip(self: &Arc<Self>, service: &str) -> Result<String> {
        for _ in 0..16 {
            let candidate = compat::random_gvip(&mut rand::thread_rng());
            let id = gvip_id(&candidate);
            let req = RegistryRequest::ClaimGvip {
                gvip: candidate.clone(),
                service: service.to_string(),
            };
            // Boxed: routing a claim may come back to this node's own `apply` path.
            let answer = Box::pin(self.route(id, req)).await?;
            if let RegistryResponse::Claimed(true) = answer {
                return Ok(candidate);
            }
        }
        Err(Error::unavailable("could not find a free gVip; retry"))
    }

    /// Apply a write at the owner: one writer per service at a time. `key_id` is
    /// `Id::of_key(service)`, which the caller has already computed to route the request.
    async fn apply(
        self: &Arc<Self>,
        service: &str,
        key_id: Id,
        op: &WriteOp,
    ) -> Result<RegistryResponse> {
        crate::registry::validate_service(service)?;
        self.check_owner(&key_id)?;
        let lock = self.lock_for(&record_key(service));
        let _guard = lock.lock().await;
        // Ownership may have moved while we waited for the lock.
        self.check_owner(&key_id)?;
        let now = Utc::now();
        let existing = self.load(service).await?;
        let creates = matches!(op, WriteOp::Register { .. } | WriteOp::LsipRegister { .. });
        // The cache keeps the stored copy until the write is durable; this is the one copy made.
        let mut rec = match existing {
            Some(r) => Arc::unwrap_or_clone(r),
            None if creates => Record::new(service, None)?,
            None => {
                return match op {
                    WriteOp::LsipCancel { .. } => Ok(RegistryResponse::Applied {
                        instance: None,
                        text: Some(CancelOutcome::NoService.text().to_string()),
                    }),
                    _ => Err(Error::not_found(format!("service {service} not found"))),
                }
            }
        };
        if creates && rec.gvip.is_none() {
            rec.gvip = Some(self.assign_gvip(service).await?);
        }
        let (instance, text, changed) = match op {
            WriteOp::Register { id, body } => {
                rec.register(id, body, now)?;
                (rec.instances.get(id.as_str()).cloned(), None, true)
            }
            WriteOp::Deregister { id } => {
                let inst = rec.deregister(id)?;
                rec.tombstone(id, now);
                (Some(Arc::new(inst)), None, true)
            }
            WriteOp::Report { id, body } => {
                body.validate()?;
                rec.report(id, body, now)?;
                (rec.instances.get(id.as_str()).cloned(), None, true)
            }
            WriteOp::LsipRegister { lsip } => {
                let outcome = compat::register_lsip(&mut rec, lsip, now)?;
                let inst = rec.instances.get(lsip.as_str()).cloned();
                (inst, Some(outcome.text().to_string()), true)
            }
            WriteOp::LsipCancel { lsip } => {
                let outcome = compat::cancel_lsip(Some(&mut rec), lsip);
                let changed = outcome == CancelOutcome::Deleted;
                if changed {
                    rec.tombstone(lsip, now);
                }
                (None, Some(outcome.text().to_string()), changed)
            }
        };
        if changed {
            rec.bump_version(&self.node);
            let entry = self.save(rec).await?;
            self.replicate(vec![entry]).await?;
        }
        Ok(RegistryResponse::Applied { instance, text })
    }

    /// Store entries received from another node. Records are merged instance by instance
    /// (`Record::merge_from`: the latest registration, status change or removal of each
    /// instance wins), so copies that diverged — both halves of a partition took writes —
    /// converge without losing either side's registrations. A gVip claim only fills a gap.
    pub async fn merge(&self, entries: Vec<Entry>) -> Result<()> {
        let mut ops = Vec::new();
        for e in entries {
            let lock = self.lock_for(&e.key);
            let _guard = lock.lock().await;
            let current = self.store.get(&e.key).await?;
            let value = match (&current, e.key.starts_with("svc/")) {
                (None, _) => Some(e.value),
                (Some(cur), true) => {
                    match (Record::from_bytes(cur), Record::from_bytes(&e.value)) {
                        (Ok(cur), Ok(new)) => {
                            self.merged(cur, new).map(|r| r.to_bytes()).transpose()?
                        }
                        (Err(_), Ok(_)) => Some(e.value),
                        _ => None,
                    }
                }
                (Some(_), false) => None,
            };
            if let Some(v) = value {
                self.uncache_key(&e.key);
                ops.push(Op::Put(e.key, v));
            }
        }
        if ops.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Put(k, _) if k.starts_with("svc/") => Some(k.clone()),
                _ => None,
            })
            .collect();
        let stored = self.store.apply(ops).await;
        // Whatever a load cached between the check above and this write is stale now: drop
        // it under the lock, after which a load reads what the store holds. The next TTL
        // sweep looks at what arrived.
        let now = Utc::now();
        for key in keys {
            let lock = self.lock_for(&key);
            let _guard = lock.lock().await;
            self.uncache_key(&key);
            if let Some(service) = key.strip_prefix("svc/") {
                if guard(&self.deadlines).check_soon(service, now) {
                    self.sweep_wake.notify_one();
                }
            }
        }
        stored
    }

    /// `cur` merged with `new`, or `None` when `cur` already has everything. The version is
    /// the larger of the two, bumped by this node when the result differs from both copies.
    fn merged(&self, cur: Record, new: Record) -> Option<Record> {
        let mut out = cur.clone();
        let content_changed = out.merge_from(&new);
        let top = cur.version.clone().max(new.version.clone());
        if !content_changed {
            if new.version > cur.version {
                out.version = top;
                return Some(out);
            }
            return None;
        }
        let mut as_new = out.clone();
        as_new.version = new.version.clone();
        out.version = top;
        if as_new != new {
            out.bump_version(&self.node);
        }
        Some(out)
    }

    // ---- ownership moves ---------------------------------------------------------------

    /// After joining: take the entries this node now owns from its successor, reporting them
    /// to `progress` as they are stored.
    pub async fn take_from_successor(&self, progress: &Progress) -> Result<usize> {
        let (me, succ) = self.ring.read(|c| (c.me().clone(), c.successor().clone()));
        if succ.id == me.id {
            return Ok(0);
        }
        match self
            .call(&succ, RegistryRequest::TakeRange { joiner: me.id })
            .await?
        {
            RegistryResponse::Entries(entries) => {
                let n = entries.len();
                progress(Step::Receiving { total: n });
                for chunk in entries.chunks(TRANSFER_CHUNK) {
                    self.merge(chunk.to_vec()).await?;
                    progress(Step::Received { count: chunk.len() });
                }
                if n > 0 {
                    tracing::info!(count = n, from = ?succ, "records transferred to this node");
                }
                Ok(n)
            }
            other => Err(Error::internal(format!("unexpected answer {other:?}"))),
        }
    }

    /// Our predecessor moved closer (a node joined between): push the entries it now owns,
    /// in case they were written here after it took its range.
    pub async fn push_to_predecessor(&self, old: &NodeRef, new: NodeRef) -> Result<()> {
        let entries = self
            .entries_where(|id| id.in_half_open(&old.id, &new.id))
            .await?;
        if !entries.is_empty() {
            self.call(&new, RegistryRequest::Handoff { entries })
                .await
                .inspect_err(|_| self.ring.metrics().replication_error())?;
        }
        Ok(())
    }

    /// Before leaving: stop taking writes and hand everything this node holds — its own range
    /// and the ranges it replicates — to its first K successors, so that every replica set it
    /// was part of keeps K copies once it is gone. Sent in chunks of [`TRANSFER_CHUNK`]; the
    /// chunks confirmed by the first successor are reported to `progress`.
    pub async fn hand_off_all(&self, progress: &Progress) -> Result<usize> {
        self.leaving.store(true, Ordering::Relaxed);
        let targets: Vec<NodeRef> = self
            .ring
            .read(|c| c.successors().iter().take(self.replicas).cloned().collect());
        if targets.is_empty() {
            return Ok(0);
        }
        // Wait for writes in progress: take and release every lock.
        let locks: Vec<_> = match self.locks.lock() {
            Ok(l) => l.values().cloned().collect(),
            Err(p) => p.into_inner().values().cloned().collect(),
        };
        for l in locks {
            drop(l.lock().await);
        }
        let entries = self.entries_where(|_| true).await?;
        let n = entries.len();
        if n == 0 {
            return Ok(0);
        }
        progress(Step::HandingOver { total: n });
        let mut delivered = 0;
        let mut last = None;
        for (i, node) in targets.iter().enumerate() {
            let mut ok = true;
            for chunk in entries.chunks(TRANSFER_CHUNK) {
                let req = RegistryRequest::Handoff {
                    entries: chunk.to_vec(),
                };
                match self.call(node, req).await {
                    Ok(_) => {
                        if i == 0 {
                            progress(Step::HandedOver { count: chunk.len() });
                        }
                    }
                    Err(e) => {
                        self.ring.metrics().replication_error();
                        last = Some(e);
                        ok = false;
                        break;
                    }
                }
            }
            if ok {
                delivered += 1;
            }
        }
        if delivered == 0 {
            return Err(last.unwrap_or_else(|| Error::unavailable("no successor to hand over to")));
        }
        tracing::info!(
            count = n,
            nodes = delivered,
            "records handed over before leaving"
        );
        Ok(n)
    }

    // ---- TTL ---------------------------------------------------------------------------

    /// Expire TTLs of owned records whose deadline has passed. Reads the store only for the
    /// records [`Deadlines`] says are due (and to rebuild it, see there).
    pub async fn sweep(self: &Arc<Self>) -> Result<()> {
        guard(&self.deadlines).running();
        let predecessor = self.ring.read(|c| c.predecessor().map(|p| p.id));
        let rescan = guard(&self.deadlines).needs_rescan(Instant::now(), predecessor);
        if rescan {
            self.rescan_deadlines(predecessor).await?;
        }
        let now = Utc::now();
        let due = guard(&self.deadlines).due(now);
        for service in due {
            if !self.owns(&Id::of_key(&service)) {
                guard(&self.deadlines).remove(&service);
                continue;
            }
            let lock = self.lock_for(&record_key(&service));
            let _guard = lock.lock().await;
            let Some(rec) = self.load(&service).await? else {
                guard(&self.deadlines).remove(&service);
                continue;
            };
            let mut rec = Arc::unwrap_or_clone(rec);
            rec.forget_tombstones(now);
            if rec.sweep(now, DEFAULT_GRACE_FACTOR) {
                rec.bump_version(&self.node);
                // Saving sets the record's next deadline.
                let entry = self.save(rec).await?;
                if let Err(e) = self.replicate(vec![entry]).await {
                    tracing::debug!("replicating a TTL change: {e}");
                }
            } else {
                let next = rec.next_deadline(DEFAULT_GRACE_FACTOR);
                // The sweep is running, so there is nothing to wake.
                let _ = guard(&self.deadlines).set(&service, next);
            }
        }
        Ok(())
    }

    /// Wait until the sweep is next due: the earliest known deadline, the next periodic
    /// rescan, or an earlier deadline set meanwhile (a write, a replicated record).
    pub async fn sweep_due(&self) {
        let now = Utc::now();
        let at = guard(&self.deadlines).plan(now, Instant::now());
        let left = (at - now).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(left) => {}
            _ = self.sweep_wake.notified() => {}
        }
    }

    /// Rebuild the deadline index from the owned records in the store (from the record cache
    /// where it has them, so only uncached records are decoded).
    async fn rescan_deadlines(&self, predecessor: Option<Id>) -> Result<()> {
        guard(&self.deadlines).rescanning(Instant::now(), predecessor);
        for (key, value) in self.store.scan_prefix("svc/").await? {
            let Some(service) = key.strip_prefix("svc/") else {
                continue;
            };
            if !self.owns(&Id::of_key(service)) {
                continue;
            }
            let cached = guard(&self.records)
                .get(service)
                .map(|rec| rec.next_deadline(DEFAULT_GRACE_FACTOR));
            let deadline = match cached {
                Some(deadline) => deadline,
                None => match Record::from_bytes(&value) {
                    Ok(rec) => rec.next_deadline(DEFAULT_GRACE_FACTOR),
                    Err(_) => continue,
                },
            };
            if let Some(at) = deadline {
                guard(&self.deadlines).scanned(service, at);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_discover_answer_is_served_only_for_the_record_it_was_made_from() {
        let mut cache = DiscoveredCache::default();
        let v1 = Arc::new(Record::new("pay", None).unwrap());
        let json = discovered_json(&v1, false, None).unwrap();
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
