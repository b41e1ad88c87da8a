//! Records moving with ownership: the joiner takes its range from its successor, a node that
//! gains a closer predecessor pushes it what it now owns, a leaving node hands everything to its
//! successors; anti-entropy between an owner and its replicas repairs what is missing; and the
//! upgrade of a store written by 0.1.0 (one record per service) to units.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{guard, version_item, Registry, TRANSFER_CHUNK};
use super::{REPAIR_DEADLINE_HOLD, REPAIR_DEADLINE_MAX};
use crate::agent::metrics::{HandBackRound, RepairStep};
use crate::agent::progress::{Progress, Step};
use crate::registry::merkle;
use crate::registry::ops::{range_hash, Entry, RegistryRequest, RegistryResponse};
use crate::registry::unit::{meta_key, meta_value, service_of_key, unit_key, unit_prefix};
use crate::registry::unit::{Mark, Unit};
use crate::registry::Record;
use crate::ring::{Id, NodeRef};
use crate::store::Op;
use crate::{Error, Result};

/// Most bytes of entries in one transfer message (the RPC frame limit is 16 MiB).
pub const TRANSFER_BYTES: usize = 4 << 20;

/// Most (key, version) items in one anti-entropy digest: a bigger range is compared in
/// several digests, each over its own span of store keys.
pub const DIGEST_ITEMS: usize = 8192;

/// Tree nodes asked for in one `TreeChildren` request (an answer of 128 KiB).
pub const TREE_NODES_PER_CALL: usize = 1024;

/// Most bytes of keys a replica names in one anti-entropy answer as held newer than the
/// owner's (the RPC frame limit is 16 MiB).
pub const DIFF_NEWER_BYTES: usize = 4 << 20;

/// How long a joiner's transfer snapshot is kept after the last page it asked for.
const TRANSFER_IDLE: Duration = Duration::from_secs(60);

/// Joiners' transfers kept at once (each holds its range's entries in memory).
const TRANSFERS_MAX: usize = 8;

/// A snapshot of the range a joiner takes, served page by page.
pub(super) struct Transfer {
    touched: Instant,
    entries: Arc<Vec<Entry>>,
}

/// `items` sorted by key and cut into digests of at most [`DIGEST_ITEMS`], each with the span
/// of store keys it covers: together the spans cover every key, without overlap.
fn digest_spans(mut items: Vec<(String, Mark)>) -> Vec<(Vec<(String, Mark)>, Span)> {
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let mut parts: Vec<Vec<(String, Mark)>> = Vec::new();
    let mut rest = items.into_iter().peekable();
    while rest.peek().is_some() {
        parts.push(rest.by_ref().take(DIGEST_ITEMS).collect());
    }
    if parts.is_empty() {
        // Nothing held: one empty digest still asks the replica what it holds in the range.
        parts.push(Vec::new());
    }
    let starts: Vec<String> = parts.iter().skip(1).map(|p| p[0].0.clone()).collect();
    let mut out = Vec::with_capacity(parts.len());
    let mut lo = String::new();
    for (i, part) in parts.into_iter().enumerate() {
        let hi = starts.get(i).cloned();
        out.push((part, (std::mem::take(&mut lo), hi.clone())));
        lo = hi.unwrap_or_default();
    }
    out
}

/// One side of an anti-entropy comparison, at the replica: of the owner's `items`, the keys
/// this copy (`mine`) lacks or holds older (`need`); and, when the owner's range is known,
/// the keys this copy holds that the owner lacks or holds older (`newer`), at most
/// `newer_bytes` of them. A replica holding far more of the range than its owner (an owner
/// that lost its store) names the first ones only, so its answer stays far below the RPC
/// frame limit: the owner pulls those, no longer lacks them, and gets the next ones in the
/// next round.
fn compare(
    mut mine: HashMap<String, Mark>,
    items: Vec<(String, Mark)>,
    range_known: bool,
    newer_bytes: usize,
) -> (Vec<String>, Vec<String>) {
    let mut need = Vec::new();
    for (key, theirs) in items {
        match mine.remove(&key) {
            None => need.push(key),
            // A meta entry that differs goes both ways: each side merges the other's
            // (`Meta::merge`), and both end with the same value.
            Some(v) if v != theirs && Mark::merges(&key) => {
                if range_known {
                    mine.insert(key.clone(), v);
                }
                need.push(key);
            }
            Some(v) if v < theirs => need.push(key),
            Some(v) if v > theirs && range_known => {
                mine.insert(key, v);
            }
            Some(_) => {}
        }
    }
    // Left in `mine`: keys of the range the owner lacks or holds older.
    let mut newer = Vec::new();
    if range_known {
        let mut left: Vec<String> = mine.into_keys().collect();
        left.sort_unstable();
        let mut bytes = 0;
        for key in left {
            bytes += key.len();
            if bytes > newer_bytes && !newer.is_empty() {
                break;
            }
            newer.push(key);
        }
    }
    (need, newer)
}

/// The store keys one digest covers: `[lo, hi)`, `hi` `None` for no upper bound.
type Span = (String, Option<String>);

/// Whether `key` lies in the span `[lo, hi)`.
pub(super) fn in_span(key: &str, (lo, hi): &Span) -> bool {
    key >= lo.as_str() && hi.as_deref().is_none_or(|hi| key < hi)
}

/// `entries` cut into runs of at most [`TRANSFER_CHUNK`] entries and [`TRANSFER_BYTES`] bytes
/// (an entry larger than that travels alone).
pub(super) fn chunks(entries: &[Entry]) -> impl Iterator<Item = &[Entry]> {
    let mut rest = entries;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut n = 0;
        while n < rest.len() && n < TRANSFER_CHUNK {
            let size = rest[n].key.len() + rest[n].value.len();
            if n > 0 && bytes + size > TRANSFER_BYTES {
                break;
            }
            bytes += size;
            n += 1;
        }
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        Some(chunk)
    })
}

/// The entries of `entries` under the keys `need`.
fn wanted(entries: &[Entry], need: Vec<String>) -> Vec<Entry> {
    let want: std::collections::HashSet<String> = need.into_iter().collect();
    entries
        .iter()
        .filter(|e| want.contains(&e.key))
        .cloned()
        .collect()
}

/// Every entry of `rec` as stored: its units and its meta entry.
fn entries_of(rec: &Record) -> Result<Vec<Entry>> {
    let mut out = Vec::with_capacity(rec.unit_ids().count() + 1);
    for id in rec.unit_ids() {
        if let Some(unit) = rec.unit(id) {
            out.push(Entry {
                key: unit_key(&rec.service, id),
                value: unit.to_bytes()?,
            });
        }
    }
    out.push(Entry {
        key: meta_key(&rec.service),
        value: meta_value(rec)?,
    });
    Ok(out)
}

impl Registry {
    /// Convert what 0.1.0 stored (one record per service under `svc/NAME`) into units and meta
    /// entries, each service in one atomic batch that also deletes its old record. Run at start,
    /// before the agent serves; a crash in the middle leaves every service either converted or
    /// not, and the next start converts the rest. Returns how many services it converted.
    pub async fn upgrade_store(&self) -> Result<usize> {
        let old = self.store.scan_prefix("svc/").await?;
        let mut converted = 0;
        for (key, value) in old {
            let rec = Record::from_legacy_bytes(&value).map_err(|e| {
                Error::internal(format!(
                    "cannot convert {key} written by chordctl 0.1.0: {e}; move the data \
                     directory aside (or restore it from a replica) and start again"
                ))
            })?;
            self.observe(rec.max_version());
            let mut ops: Vec<Op> = entries_of(&rec)?
                .into_iter()
                .map(|e| Op::Put(e.key, e.value))
                .collect();
            ops.push(Op::Delete(key));
            self.store.apply(ops).await?;
            converted += 1;
        }
        if converted > 0 {
            tracing::info!(
                services = converted,
                "converted the store written by chordctl 0.1.0 to this version's layout"
            );
        }
        Ok(converted)
    }

    /// Anti-entropy with every replica: send the versions of what this node owns, then the
    /// entries a replica lacks or holds older. Also the repair after membership changes.
    pub async fn sync_replicas(self: &Arc<Self>) -> Result<usize> {
        let replicas = self.replica_set();
        if replicas.is_empty() {
            return Ok(0);
        }
        // One reading of the ring for the scan and the range compared.
        let own = self.ownership();
        let range = own.range;
        // Keys and marks only: the entries a replica needs are read when it names them.
        let items = self.marks_where(move |id| own.contains(id)).await?;
        if items.is_empty() && range.is_none() {
            return Ok(0);
        }
        let tree = merkle::Items::new(&items);
        // Every replica at once: one that answers slowly (its deadlines raised, see
        // `repair_call`) does not hold back the repair of the others.
        let rounds = replicas
            .iter()
            .map(|node| self.sync_with(node, range, &tree, &items));
        Ok(futures::future::join_all(rounds).await.into_iter().sum())
    }

    /// Anti-entropy with one replica: compare (the hash tree, or the flat comparison), pull
    /// what it holds newer, send what it lacks. Returns the entries moved.
    async fn sync_with(
        self: &Arc<Self>,
        node: &NodeRef,
        range: Option<(Id, Id)>,
        tree: &merkle::Items,
        items: &[(String, Mark)],
    ) -> usize {
        // The hash tree first: where the copies agree it costs one exchange, where one
        // instance differs a few. A replica that cannot answer it (an older agent, or a
        // failure) gets the flat comparison.
        let compared = match range {
            Some((from, to)) => match self.tree_compare(node, from, to, tree, items).await {
                Ok(compared) => Some(compared),
                Err(e) => {
                    tracing::debug!(peer = %node.addr, "tree anti-entropy failed ({e}); comparing flat");
                    None
                }
            },
            None => None,
        };
        let compared = match compared {
            Some(c) => Some(c),
            None => self.flat_compare(node, range, items).await,
        };
        let Some((need, pulled)) = compared else {
            self.mark_unsynced();
            self.ring.metrics().replication_error();
            return 0;
        };
        if need.is_empty() {
            return pulled;
        }
        // Only keys of this round's range: a replica names nothing else, but what it names
        // is read from the store, so it is not trusted to.
        let known: HashSet<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
        let need: Vec<String> = need
            .into_iter()
            .filter(|k| known.contains(k.as_str()))
            .collect();
        // Counted as a replication error inside; the next round tries again.
        pulled + self.send_stored(node, &need).await.unwrap_or(0)
    }

    /// Walk the hash tree of the range `(from, to]` with `node`, then compare the items under
    /// the nodes that differ: (keys `node` needs, entries pulled from it).
    async fn tree_compare(
        self: &Arc<Self>,
        node: &NodeRef,
        from: Id,
        to: Id,
        tree: &merkle::Items,
        items: &[(String, Mark)],
    ) -> Result<(Vec<String>, usize)> {
        let (mut walk, mut step) = merkle::Descent::start(tree);
        let leaves = loop {
            match step {
                merkle::Step::Compare(leaves) => break leaves,
                merkle::Step::Ask(nodes) => {
                    let mut theirs = Vec::with_capacity(nodes.len());
                    for part in nodes.chunks(TREE_NODES_PER_CALL) {
                        let req = RegistryRequest::TreeChildren {
                            from,
                            to,
                            nodes: part.to_vec(),
                        };
                        match self.repair_call(node, req, RepairStep::Tree).await? {
                            RegistryResponse::TreeChildren(c) if c.len() == part.len() => {
                                theirs.extend(c)
                            }
                            other => {
                                return Err(Error::internal(format!("unexpected answer {other:?}")))
                            }
                        }
                    }
                    step = walk.on_answer(&theirs);
                }
            }
        };
        self.ring.metrics().tree_exchanges(walk.exchanges);
        if leaves.is_empty() {
            return Ok((Vec::new(), 0));
        }
        // The items under the differing nodes, in digests of bounded size: the nodes are cut
        // into groups, each holding at most DIGEST_ITEMS of ours (a deepest node may hold more
        // alone, and is sent alone).
        let mut by_node: HashMap<merkle::Node, Vec<(String, Mark)>> = HashMap::new();
        let cover = merkle::Cover::new(&leaves);
        for (key, mark) in items {
            if let Some(n) = cover.find(key) {
                by_node.entry(n).or_default().push((key.clone(), *mark));
            }
        }
        let (mut need, mut pulled) = (Vec::new(), 0);
        let mut group: Vec<merkle::Node> = Vec::new();
        let mut group_items: Vec<(String, Mark)> = Vec::new();
        let mut leaves = leaves.into_iter().peekable();
        while let Some(leaf) = leaves.next() {
            let mine = by_node.remove(&leaf).unwrap_or_default();
            group.push(leaf);
            group_items.extend(mine);
            let next_len = leaves
                .peek()
                .and_then(|n| by_node.get(n))
                .map_or(0, Vec::len);
            if leaves.peek().is_some()
                && group_items.len() + next_len <= DIGEST_ITEMS
                && group.len() < TREE_NODES_PER_CALL
            {
                continue;
            }
            let req = RegistryRequest::TreeDigest {
                items: std::mem::take(&mut group_items),
                from,
                to,
                nodes: std::mem::take(&mut group),
            };
            match self.repair_call(node, req, RepairStep::TreeDigest).await? {
                RegistryResponse::Diff { need: more, newer } => {
                    if !newer.is_empty() {
                        pulled += self.pull(node, newer).await?;
                    }
                    need.extend(more);
                }
                other => return Err(Error::internal(format!("unexpected answer {other:?}"))),
            }
        }
        Ok((need, pulled))
    }

    /// The comparison without the tree (a replica of an older version, or an owner that
    /// knows no predecessor): one hash over the range, then digests of every key in spans.
    /// `None` when the replica did not answer.
    async fn flat_compare(
        self: &Arc<Self>,
        node: &NodeRef,
        range: Option<(Id, Id)>,
        items: &[(String, Mark)],
    ) -> Option<(Vec<String>, usize)> {
        self.ring.metrics().flat_comparison();
        if let Some((from, to)) = range {
            let req = RegistryRequest::RangeHash {
                from,
                to,
                hash: range_hash(items),
            };
            if let Ok(RegistryResponse::Same(true)) =
                self.repair_call(node, req, RepairStep::RangeHash).await
            {
                return Some((Vec::new(), 0));
            }
        }
        let (mut need, mut pulled) = (Vec::new(), 0);
        for (items, span) in digest_spans(items.to_vec()) {
            let req = RegistryRequest::Digest { items, range, span };
            match self.repair_call(node, req, RepairStep::Digest).await {
                Ok(RegistryResponse::Diff { need: more, newer }) => {
                    // What the replica holds newer in our range (we may have inherited the
                    // range from a crashed node it was a replica of) comes to us first.
                    if !newer.is_empty() {
                        pulled += self.pull(node, newer).await.ok()?;
                    }
                    need.extend(more);
                }
                _ => return None,
            }
        }
        Some((need, pulled))
    }

    /// [`Registry::call`] for anti-entropy, with a deadline of its own for each kind of call
    /// to each replica: a replica slower than the RPC deadline (a large range to scan, a
    /// loaded store taking a chunk) would otherwise time out at the same step every round, and
    /// be sent the next chunk only in the next round. A timeout doubles the deadline, an
    /// answer that took more than half of it sets it to twice its time
    /// ([`REPAIR_DEADLINE_MAX`] at most); a raised deadline holds for
    /// [`REPAIR_DEADLINE_HOLD`] after the last raise.
    ///
    /// A failure is counted by `step` and cause (and logged), so a repair that fails round
    /// after round says where.
    async fn repair_call(
        &self,
        node: &NodeRef,
        req: RegistryRequest,
        step: RepairStep,
    ) -> Result<RegistryResponse> {
        let base = self.ring.pool().timeout();
        let most = REPAIR_DEADLINE_MAX.max(base);
        let key = (node.id, step);
        // A raised deadline holds for a while, whatever the answers in between: a chunk sent
        // again while the replica still applies the first copy is answered at once, and must
        // not bring the deadline down before the next new chunk.
        let deadline = match guard(&self.repair_deadlines).get(&key) {
            Some((raised, at)) if at.elapsed() < REPAIR_DEADLINE_HOLD => (*raised).max(base),
            _ => base,
        };
        let started = Instant::now();
        let answer = self.call_within(node, req, deadline).await;
        let took = started.elapsed();
        // A routing error at the deadline is the replica not answering in time; before it,
        // no connection; an error the replica answered keeps its own code.
        let timed_out = matches!(answer, Err(Error::Routing(_))) && took >= deadline;
        let raise = match &answer {
            Ok(_) if took * 2 > deadline => Some((took * 2).min(most)),
            Err(_) if timed_out => Some((deadline * 2).min(most)),
            _ => None,
        };
        if let Some(raised) = raise {
            let mut deadlines = guard(&self.repair_deadlines);
            deadlines.retain(|_, (_, at)| at.elapsed() < REPAIR_DEADLINE_HOLD);
            deadlines.insert(key, (raised, Instant::now()));
        }
        if let Err(e) = &answer {
            tracing::debug!(peer = %node.addr, ?step, ?deadline, "anti-entropy call failed: {e}");
            let cause = match e {
                _ if timed_out => "timeout",
                Error::Routing(_) => "unreachable",
                e => e.code(),
            };
            self.ring.metrics().repair_failure(step, cause);
        }
        answer
    }

    /// Send what this node stores under `keys` to `node`, read and sent [`TRANSFER_CHUNK`]
    /// keys at a time (so a replica that lacks everything never makes this node hold every
    /// entry at once). A key deleted since it was named, and a tombstone past its time, are
    /// not sent. Returns how many entries were sent.
    async fn send_stored(&self, node: &NodeRef, keys: &[String]) -> Result<usize> {
        let mut sent = 0;
        for part in keys.chunks(TRANSFER_CHUNK) {
            let values = self.store.get_many(part).await.inspect_err(|_| {
                self.mark_unsynced();
            })?;
            let now = self.now();
            let entries: Vec<Entry> = part
                .iter()
                .zip(values)
                .filter_map(|(key, value)| {
                    let value = value?;
                    (!Unit::is_expired_entry(key, &value, now)).then(|| Entry {
                        key: key.clone(),
                        value,
                    })
                })
                .collect();
            self.send_entries(node, &entries).await?;
            sent += entries.len();
        }
        Ok(sent)
    }

    /// Send `entries` to `node` as `Handoff` messages of at most [`TRANSFER_CHUNK`] entries
    /// and [`TRANSFER_BYTES`] bytes each, far below the RPC frame limit.
    async fn send_entries(&self, node: &NodeRef, entries: &[Entry]) -> Result<()> {
        for chunk in chunks(entries) {
            let req = RegistryRequest::Handoff {
                entries: chunk.to_vec(),
            };
            self.repair_call(node, req, RepairStep::Handoff)
                .await
                .inspect_err(|_| {
                    self.mark_unsynced();
                    self.ring.metrics().replication_error()
                })?;
        }
        Ok(())
    }

    /// The start of the arc whose copies this node keeps: `(start, me]` covers its own range
    /// and the ranges of the K−1 predecessors it replicates. Found by walking K predecessor
    /// links back; `None` when not sure (a predecessor unknown or unreachable on the way, or
    /// a ring so small that the walk comes back here: then every copy is kept).
    async fn kept_arc(&self) -> Option<Id> {
        let me = self.ring.me();
        let mut cur = self.ring.read(|c| c.predecessor().cloned())?;
        for _ in 1..self.replicas {
            if cur.id == me.id {
                return None;
            }
            let (_, pred, _) = self.ring.neighbors(&cur).await.ok()?;
            cur = pred?;
        }
        (cur.id != me.id).then_some(cur.id)
    }

    /// Copies this node neither owns nor replicates (left by a partition, a join, or a
    /// replica set that moved on) go back to their owner, and are then deleted here.
    ///
    /// For each such service the owner is asked which of its units it lacks or holds older
    /// (and whether its meta entry differs, to merge this one in); those are sent to it. The
    /// local copy is then deleted, in one batch and only if it is unchanged meanwhile.
    /// Returns how many entries were sent.
    pub async fn hand_back(self: &Arc<Self>) -> Result<usize> {
        if self.leaving.load(Ordering::Relaxed) || !self.ready.load(Ordering::Relaxed) {
            return Ok(0);
        }
        let metrics = self.ring.metrics();
        let Some(start) = self.kept_arc().await else {
            metrics.hand_back_round(HandBackRound::ArcUnsure);
            return Ok(0);
        };
        let me = self.ring.me().id;
        let held = self.held_services().await.inspect_err(|_| {
            metrics.hand_back_round(HandBackRound::Failed);
        })?;
        let orphans: Vec<String> = held
            .into_iter()
            .map(|(service, _)| service)
            .filter(|s| !Id::of_key(s).in_half_open(&start, &me))
            .collect();
        // Each owner's copies go back in order, and the owners at once: one that answers
        // slowly (its deadlines raised, see `repair_call`) does not hold back the copies of
        // the others. An owner that fails (it is down, or its store is) keeps its other
        // copies for the next round, so a round costs at most one failed call per owner. A
        // failed lookup means the ring is unsettled: the copies looked up before it go, the
        // rest wait. The round reports the first error.
        let mut failed = None;
        let mut by_owner: HashMap<Id, (NodeRef, Vec<String>)> = HashMap::new();
        for service in orphans {
            let key = Id::of_key(&service);
            let owner = match self.ring.lookup(key).await {
                Ok(found) => found.owner().clone(),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            if owner.id == me {
                continue;
            }
            let at = by_owner
                .entry(owner.id)
                .or_insert_with(|| (owner, Vec::new()));
            at.1.push(service);
        }
        let rounds = by_owner.into_values().map(|(owner, services)| async move {
            let mut sent = 0;
            for service in services {
                match self.hand_back_one(&service, &owner).await {
                    Ok(n) => sent += n,
                    Err(e) => {
                        tracing::debug!(service, owner = %owner.addr, "hand-back of a copy failed: {e}");
                        return (sent, Some(e));
                    }
                }
            }
            (sent, None)
        });
        let mut sent = 0;
        for (n, error) in futures::future::join_all(rounds).await {
            sent += n;
            if let Some(e) = error {
                failed.get_or_insert(e);
            }
        }
        match failed {
            Some(e) => {
                metrics.hand_back_round(HandBackRound::Failed);
                Err(e)
            }
            None => {
                metrics.hand_back_round(HandBackRound::Done);
                Ok(sent)
            }
        }
    }

    /// Hand `service`'s copy back to `owner` and delete it here. Returns how many entries
    /// were sent.
    async fn hand_back_one(&self, service: &str, owner: &NodeRef) -> Result<usize> {
        let mut entries = self.store.scan_prefix(&unit_prefix(service)).await?;
        entries.extend(
            self.store
                .get(&meta_key(service))
                .await?
                .map(|v| (meta_key(service), v)),
        );
        let entries: Vec<Entry> = entries
            .into_iter()
            .map(|(key, value)| Entry { key, value })
            .collect();
        let items: Vec<(String, Mark)> = entries.iter().map(version_item).collect();
        let mut need = Vec::new();
        for (items, span) in digest_spans(items) {
            let req = RegistryRequest::Digest {
                items,
                range: None,
                span,
            };
            match self.repair_call(owner, req, RepairStep::HandBack).await? {
                RegistryResponse::Diff { need: more, .. } => need.extend(more),
                other => return Err(Error::internal(format!("unexpected answer {other:?}"))),
            }
        }
        let mut sent = 0;
        if !need.is_empty() {
            let missing = wanted(&entries, need);
            sent = missing.len();
            self.send_entries(owner, &missing).await?;
            tracing::info!(
                service,
                count = missing.len(),
                owner = ?owner,
                "handed copies this node does not keep back to their owner"
            );
        }
        // The owner holds all of this copy or newer now (it stored what it lacked, newest
        // version wins): the copy goes. Waiting for a round in which the owner needs
        // nothing never ends when it keeps "needing" a tombstone its merge drops as past
        // its time, and the copy, frozen meanwhile, would later hand back an instance the
        // owner has since removed and forgotten.
        if self.drop_copy(service, &entries).await? {
            self.ring.metrics().hand_back_copy();
        }
        Ok(sent)
    }

    /// Delete the copy of `service` this node no longer keeps, in one batch, if it is still
    /// exactly `entries` (under the service's slot lock); otherwise something arrived
    /// meanwhile and the next round looks again. Returns whether it was deleted.
    async fn drop_copy(&self, service: &str, entries: &[Entry]) -> Result<bool> {
        let slot = self.slot(service);
        let dropped = async {
            let _guard = slot.lock.lock().await;
            // The units as they are now, in one scan (not a read per unit: a copy holds
            // thousands, and on Redis each read is a round trip); then the meta entry.
            let held = self.store.scan_prefix(&unit_prefix(service)).await?;
            let (units, others): (Vec<&Entry>, Vec<&Entry>) =
                entries.iter().partition(|e| e.key.starts_with("u/"));
            let sent: HashMap<&str, &[u8]> = units
                .iter()
                .map(|e| (e.key.as_str(), e.value.as_slice()))
                .collect();
            let unchanged = held.len() == sent.len()
                && held
                    .iter()
                    .all(|(key, value)| sent.get(key.as_str()) == Some(&value.as_slice()));
            if !unchanged {
                return Ok(false);
            }
            for e in &others {
                if self.store.get(&e.key).await?.as_deref() != Some(e.value.as_slice()) {
                    return Ok(false);
                }
            }
            let ops: Vec<Op> = entries.iter().map(|e| Op::Delete(e.key.clone())).collect();
            self.uncache(service);
            self.store.apply(ops).await?;
            tracing::debug!(service, "dropped a copy this node no longer keeps");
            Ok::<bool, Error>(true)
        }
        .await;
        self.release(service, slot);
        dropped
    }

    /// Fetch the entries under `keys` from `node` (a page at a time) and merge them.
    async fn pull(&self, node: &NodeRef, keys: Vec<String>) -> Result<usize> {
        // The store lacks these (or holds them older): see `uncache_keys`.
        self.uncache_keys(&keys);
        let mut rest = &keys[..];
        let mut got = 0;
        while !rest.is_empty() {
            let ask = &rest[..rest.len().min(TRANSFER_CHUNK)];
            let req = RegistryRequest::Fetch { keys: ask.to_vec() };
            match self.repair_call(node, req, RepairStep::Pull).await? {
                RegistryResponse::Page { entries, next, .. } => {
                    got += entries.len();
                    self.merge(entries).await?;
                    // `next`: how many of the keys asked for were answered.
                    let done = next.map_or(ask.len(), |n| {
                        usize::try_from(n).unwrap_or(ask.len()).clamp(1, ask.len())
                    });
                    rest = &rest[done..];
                }
                other => return Err(Error::internal(format!("unexpected answer {other:?}"))),
            }
        }
        Ok(got)
    }

    /// The entries under `keys` this node holds, as many as fit one transfer message; `next`
    /// counts the keys answered (`None`: all of them).
    pub(super) async fn fetch(&self, keys: Vec<String>) -> Result<RegistryResponse> {
        let total = keys.len() as u64;
        let mut entries = Vec::new();
        let mut bytes = 0;
        let mut next = None;
        for (i, key) in keys.into_iter().enumerate() {
            if let Some(value) = self.store.get(&key).await? {
                let size = key.len() + value.len();
                if !entries.is_empty() && bytes + size > TRANSFER_BYTES {
                    next = Some(i as u64);
                    break;
                }
                bytes += size;
                entries.push(Entry { key, value });
            }
        }
        Ok(RegistryResponse::Page {
            entries,
            total,
            next,
        })
    }

    /// One page of the range `joiner` takes over: a snapshot of the range made when `from`
    /// is 0, served from entry `from` on in at most one transfer message.
    pub(super) async fn range_page(&self, joiner: Id, from: u64) -> Result<RegistryResponse> {
        let entries = if from == 0 {
            if let Some(delay) = self.range_scan_delay {
                tokio::time::sleep(delay).await;
            }
            let me = self.ring.me().id;
            let entries = Arc::new(
                self.entries_where(move |id| !id.in_half_open(&joiner, &me))
                    .await?,
            );
            let mut transfers = guard(&self.transfers);
            transfers.retain(|_, t| t.touched.elapsed() < TRANSFER_IDLE);
            if transfers.len() >= TRANSFERS_MAX && !transfers.contains_key(&joiner) {
                return Err(Error::routing(
                    "too many joiners are taking records from this node at once; retry",
                ));
            }
            transfers.insert(
                joiner,
                Transfer {
                    touched: Instant::now(),
                    entries: entries.clone(),
                },
            );
            entries
        } else {
            match guard(&self.transfers).get_mut(&joiner) {
                Some(t) => {
                    t.touched = Instant::now();
                    t.entries.clone()
                }
                None => {
                    return Err(Error::routing(
                        "this transfer is no longer held (it expired); start it again",
                    ))
                }
            }
        };
        let start = usize::try_from(from)
            .unwrap_or(usize::MAX)
            .min(entries.len());
        let page = chunks(&entries[start..]).next().unwrap_or(&[]);
        let end = start + page.len();
        let next = (end < entries.len()).then_some(end as u64);
        if next.is_none() {
            guard(&self.transfers).remove(&joiner);
        }
        Ok(RegistryResponse::Page {
            entries: page.to_vec(),
            total: entries.len() as u64,
            next,
        })
    }

    /// After joining: take the entries this node now owns from its successor, reporting them
    /// to `progress` as they are stored. The first page waits up to `first_page`: the
    /// successor gathers the whole range for it (one scan of its store, which grows with the
    /// data), while the later pages are slices of what it gathered.
    pub async fn take_from_successor(
        &self,
        progress: &Progress,
        first_page: Duration,
    ) -> Result<usize> {
        let (me, succ) = self.ring.read(|c| (c.me().clone(), c.successor().clone()));
        if succ.id == me.id {
            return Ok(0);
        }
        // Page by page, each stored before the next is asked for; a failure part way makes
        // the caller start again from a new snapshot (merging is idempotent).
        let mut from = 0;
        let mut n = 0;
        loop {
            let req = RegistryRequest::TakeRange {
                joiner: me.id,
                from,
            };
            let deadline = if from == 0 {
                first_page
            } else {
                self.ring.pool().timeout()
            };
            match self.call_within(&succ, req, deadline).await? {
                RegistryResponse::Page {
                    entries,
                    total,
                    next,
                } => {
                    if from == 0 {
                        progress(Step::Receiving {
                            total: usize::try_from(total).unwrap_or(usize::MAX),
                        });
                    }
                    let count = entries.len();
                    if count > 0 {
                        self.merge(entries).await?;
                    }
                    progress(Step::Received { count });
                    n += count;
                    match next {
                        Some(next) if next > from => from = next,
                        Some(_) => {
                            return Err(Error::internal("a transfer page did not move on"));
                        }
                        None => break,
                    }
                }
                other => return Err(Error::internal(format!("unexpected answer {other:?}"))),
            }
        }
        if n > 0 {
            tracing::info!(count = n, from = ?succ, "records transferred to this node");
        }
        Ok(n)
    }

    /// Our predecessor moved closer (a node joined between): push the entries it now owns,
    /// in case they were written here after it took its range.
    pub async fn push_to_predecessor(&self, old: &NodeRef, new: NodeRef) -> Result<()> {
        let entries = self
            .entries_where({
                let (from, to) = (old.id, new.id);
                move |id| id.in_half_open(&from, &to)
            })
            .await?;
        self.send_entries(&new, &entries).await
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
        // Wait for writes in progress: take and release every slot's lock.
        let slots: Vec<_> = guard(&self.slots).values().cloned().collect();
        for s in slots {
            drop(s.lock.lock().await);
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
            for chunk in chunks(&entries) {
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

    /// Drop from the record cache the services of `keys`, which anti-entropy found the store
    /// to lack or hold older. Such a key may still be in a cached record (a store that lost
    /// writes under a running agent, as Redis with `appendfsync everysec` can): merged into
    /// that record, the copy that arrives would change nothing and never be stored. Without
    /// the record the merge starts again from what the store holds.
    fn uncache_keys(&self, keys: &[String]) {
        for key in keys {
            if let Some(service) = service_of_key(key) {
                self.uncache(service);
            }
        }
    }

    /// Anti-entropy at a replica: which of the owner's `items` this node lacks or holds older,
    /// and, within the owner's `range`, what this node holds that the owner lacks or holds
    /// older.
    pub(super) async fn diff(
        &self,
        items: Vec<(String, Mark)>,
        range: Option<(Id, Id)>,
        covers: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<RegistryResponse> {
        // One scan of the owner's range (everything when it knows no predecessor): what we
        // hold there, within the digest's span of keys, by key, with its version. Tombstones
        // past their time are neither compared nor kept: the owner has forgotten them.
        let held = match range {
            Some((from, to)) => self.range_scan(from, to).await?.0,
            None => Arc::new(self.marks_where(|_| true).await?),
        };
        let mine: HashMap<String, Mark> = held
            .iter()
            .filter(|(key, _)| covers(key))
            .cloned()
            .collect();
        let (need, newer) = compare(mine, items, range.is_some(), DIFF_NEWER_BYTES);
        self.uncache_keys(&need);
        Ok(RegistryResponse::Diff { need, newer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(bytes: usize) -> Entry {
        Entry {
            key: "k".into(),
            value: vec![0; bytes - 1],
        }
    }

    #[test]
    fn transfers_are_cut_by_count_and_by_bytes() {
        let many: Vec<Entry> = (0..TRANSFER_CHUNK * 2 + 1).map(|_| entry(10)).collect();
        let sizes: Vec<usize> = chunks(&many).map(<[Entry]>::len).collect();
        assert_eq!(sizes, [TRANSFER_CHUNK, TRANSFER_CHUNK, 1]);
        let big: Vec<Entry> = (0..5).map(|_| entry(TRANSFER_BYTES / 2)).collect();
        let sizes: Vec<usize> = chunks(&big).map(<[Entry]>::len).collect();
        assert_eq!(sizes, [2, 2, 1], "at most TRANSFER_BYTES per message");
        let huge = vec![entry(TRANSFER_BYTES * 2), entry(1)];
        let sizes: Vec<usize> = chunks(&huge).map(<[Entry]>::len).collect();
        assert_eq!(sizes, [1, 1], "an oversized entry travels alone");
        assert_eq!(chunks(&[]).count(), 0);
    }

    fn mark(version: u64) -> Mark {
        Mark {
            version: crate::registry::hlc::Hlc {
                wall_ms: version,
                logical: 0,
                node: 0,
            },
            content: 0,
        }
    }

    #[test]
    fn a_replica_names_what_each_side_lacks_or_holds_older() {
        let mine: HashMap<String, Mark> = [("a", 1), ("b", 2), ("c", 3), ("x", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), mark(v)))
            .collect();
        let theirs = vec![
            ("a".to_string(), mark(1)),
            ("b".to_string(), mark(3)),
            ("c".to_string(), mark(2)),
            ("d".to_string(), mark(1)),
        ];
        let (need, newer) = compare(mine.clone(), theirs.clone(), true, DIFF_NEWER_BYTES);
        assert_eq!(need, ["b", "d"], "older here, and missing here");
        assert_eq!(newer, ["c", "x"], "newer here, and missing at the owner");
        let (need, newer) = compare(mine, theirs, false, DIFF_NEWER_BYTES);
        assert_eq!(need, ["b", "d"]);
        assert!(newer.is_empty(), "outside a known range nothing is offered");
    }

    #[test]
    fn a_meta_entry_that_differs_goes_both_ways() {
        let mine: HashMap<String, Mark> = [("s/pay".to_string(), mark(1))].into();
        let theirs = vec![("s/pay".to_string(), mark(2))];
        let (need, newer) = compare(mine.clone(), theirs.clone(), true, DIFF_NEWER_BYTES);
        assert_eq!(
            (need, newer),
            (vec!["s/pay".to_string()], vec!["s/pay".to_string()])
        );
        let (need, newer) = compare(
            mine.clone(),
            vec![("s/pay".into(), mark(1))],
            true,
            DIFF_NEWER_BYTES,
        );
        assert!(
            need.is_empty() && newer.is_empty(),
            "equal metas: nothing to do"
        );
        let (need, newer) = compare(mine, theirs, false, DIFF_NEWER_BYTES);
        assert_eq!(need, ["s/pay"]);
        assert!(newer.is_empty());
    }

    #[test]
    fn a_replica_holding_far_more_than_its_owner_answers_in_bounded_parts() {
        // An owner that lost its store: it lists nothing, the replica holds every key.
        let mut mine: HashMap<String, Mark> = (0..10_000)
            .map(|i| (format!("u/s/{i:08}"), mark(1)))
            .collect();
        let cap = 1000;
        let mut rounds = 0;
        let mut owner: Vec<(String, Mark)> = Vec::new();
        loop {
            let (need, newer) = compare(mine.clone(), owner.clone(), true, cap);
            assert!(need.is_empty());
            if newer.is_empty() {
                break;
            }
            let bytes: usize = newer.iter().map(String::len).sum();
            assert!(bytes <= cap, "an answer of {bytes} bytes");
            // The owner pulls what it was told of.
            owner.extend(newer.into_iter().map(|k| {
                let m = mine[&k];
                (k, m)
            }));
            rounds += 1;
            assert!(rounds < 1000, "no progress");
        }
        assert_eq!(owner.len(), 10_000, "every key reached the owner");
        assert!(rounds > 1);
        mine.clear();
        let (_, newer) = compare(mine, Vec::new(), true, 0);
        assert!(newer.is_empty());
    }

    #[test]
    fn digests_cover_every_key_once_in_spans_of_bounded_size() {
        let items: Vec<(String, Mark)> = (0..DIGEST_ITEMS * 2 + 5)
            .rev()
            .map(|i| (format!("u/s/{i:08}"), Mark::default()))
            .collect();
        let spans = digest_spans(items.clone());
        assert_eq!(spans.len(), 3);
        assert_eq!(spans[0].1 .0, "", "the first span starts at the beginning");
        assert_eq!(spans[2].1 .1, None, "the last span has no end");
        for w in spans.windows(2) {
            assert_eq!(w[0].1 .1.as_deref(), Some(w[1].1 .0.as_str()), "spans meet");
        }
        for (part, span) in &spans {
            assert!(part.len() <= DIGEST_ITEMS);
            assert!(part.iter().all(|(k, _)| in_span(k, span)));
        }
        // Every key falls in exactly one span, also keys no digest lists.
        for key in items
            .iter()
            .map(|(k, _)| k.as_str())
            .chain(["", "a", "zzz"])
        {
            let n = spans.iter().filter(|(_, span)| in_span(key, span)).count();
            assert_eq!(n, 1, "{key}");
        }
        let empty = digest_spans(Vec::new());
        assert_eq!(empty.len(), 1, "an owner holding nothing still asks");
        assert_eq!(empty[0].1, (String::new(), None));
    }
}
