//! Replication: the owner sends each group's units to its replicas (through their streams,
//! `stream.rs`); every node merges units
//! it receives (replication, hand-off, anti-entropy) by the rules of `registry/unit.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use futures::StreamExt;

use super::{guard, Registry};
use crate::registry::ops::Entry;
use crate::registry::unit::{
    decode_meta_value, meta_bytes, meta_key, service_of_key, split_unit_key, unit_key, Mark, Meta,
    Unit,
};
use crate::registry::Record;
use crate::ring::Id;
use crate::store::Op;
use crate::{Error, Result};

impl Registry {
    /// Store `entries` at every replica; succeed once enough of them confirmed for the write
    /// quorum ([`Registry::confirmations_needed`]). The other copies complete in the background.
    /// Fails at once (503) when fewer replicas are reachable than the quorum needs: an
    /// isolated node does not acknowledge alone.
    pub(super) async fn replicate(self: &Arc<Self>, entries: Vec<Entry>) -> Result<()> {
        let needed = self.confirmations_needed();
        let replicas = self.replica_set();
        if entries.is_empty() {
            return Ok(());
        }
        if replicas.len() < needed {
            self.mark_unsynced();
            self.ring.metrics().quorum_lost();
            return Err(Error::unavailable(format!(
                "the write is stored at its owner but cannot reach its write quorum: {} of {} \
                 copies are reachable (the ring knows {} members); retry once the ring heals",
                replicas.len() + 1,
                needed + 1,
                self.ring.read(|c| c.known_members()),
            )));
        }
        // Each replica's stream carries this group with whatever else is queued for it.
        let entries = Arc::new(entries);
        let mut answers: futures::stream::FuturesUnordered<_> = replicas
            .iter()
            .map(|node| self.stream_to(node, entries.clone()))
            .collect();
        let mut confirmed = 0;
        let mut last = None;
        while confirmed < needed {
            match answers.next().await {
                Some(Ok(Ok(()))) => confirmed += 1,
                Some(Err(_)) => {
                    // Its stream's task ended without answering: nothing marked it.
                    self.mark_unsynced();
                    self.ring.metrics().replication_error();
                    last = Some(Error::internal("a replication stream stopped"));
                }
                Some(Ok(Err(e))) => {
                    self.ring.metrics().replication_error();
                    last = Some(e);
                }
                None => break,
            }
        }
        if confirmed >= needed {
            return Ok(());
        }
        // (Every failed answer above marked the registry unsynced.)
        self.ring.metrics().quorum_lost();
        Err(Error::unavailable(format!(
            "the write is stored at its owner but only {} of the {} copies it needs confirmed: {}",
            confirmed + 1,
            needed + 1,
            last.map(|e| e.to_string()).unwrap_or_default()
        )))
    }

    /// Store entries received from another node: each unit only if it is newer than the one
    /// held ([`Record::apply_unit`]), a meta entry merged with the one held ([`Meta::merge`]:
    /// the first assigned gVip wins, the larger index floor), a gVip claim only if none is
    /// held. (A 0.1.0 peer cannot send anything: its protocol version is refused.)
    pub async fn merge(&self, entries: Vec<Entry>) -> Result<()> {
        let mut by_service: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
        let mut claims = Vec::new();
        for e in entries {
            if let Some(service) = service_of_key(&e.key) {
                by_service.entry(service.to_string()).or_default().push(e);
            } else if e.key.starts_with("gvip/") {
                claims.push(e);
            }
        }
        // Every service's slot lock (in name order, so two merges cannot wait on each other),
        // then one store batch for all of them: a transfer of many services costs one fsync.
        let mut result = Ok(());
        let mut held = Vec::with_capacity(by_service.len());
        let mut ops = Vec::new();
        let mut planned = Vec::new();
        // Services held in memory are planned at once; the others compare with the store,
        // all of them in one read.
        let mut stored: Vec<Compare> = Vec::new();
        for (service, entries) in by_service {
            let slot = self.slot(&service);
            let lock = slot.lock.clone().lock_owned().await;
            match self.plan_service(&service, entries).await {
                Ok(Plan::Cached(service_ops, rec, _)) if !service_ops.is_empty() => {
                    ops.extend(service_ops);
                    planned.push((service.clone(), Some(rec)));
                }
                // Nothing changed: a copy taken out of the cache for its merge goes back as
                // it was (an owner's record never left it).
                Ok(Plan::Cached(_, rec, taken)) => {
                    if taken {
                        self.cache_record(rec);
                    }
                }
                Ok(Plan::Stored(compare)) => stored.push(compare),
                Err(e) => result = Err(e),
            }
            held.push((service, slot, lock));
        }
        if !stored.is_empty() {
            let keys: Vec<String> = stored.iter().flat_map(Compare::keys).collect();
            match self.store.get_many(&keys).await {
                Ok(values) => {
                    let mut values = values.into_iter();
                    for compare in stored {
                        let n = compare.units.len() + 1;
                        let mine: Vec<Option<Vec<u8>>> = values.by_ref().take(n).collect();
                        let service = compare.service.clone();
                        match compare.plan(mine) {
                            Ok(service_ops) if !service_ops.is_empty() => {
                                ops.extend(service_ops);
                                planned.push((service, None));
                            }
                            Ok(_) => {}
                            Err(e) => result = Err(e),
                        }
                    }
                }
                Err(e) => result = Err(e),
            }
        }
        if !ops.is_empty() {
            self.slow_disk().await;
            match self.store.apply(ops).await {
                Ok(()) => {
                    let now = Utc::now();
                    let mut wake = false;
                    for (service, rec) in planned {
                        let key_id = Id::of_key(&service);
                        let owned = self.owns(&key_id);
                        if owned {
                            // Its replicas did not get this through the owner's stream.
                            self.mark_unsynced();
                        }
                        if let Some(rec) = rec {
                            // Watchers of what this node owns start again from the new state.
                            if owned && self.feeds.watched(&service) {
                                self.feeds.reset(&service, rec.index);
                            }
                            self.cache_record(rec);
                        }
                        // The next TTL sweep looks at what arrived (it may own it now).
                        wake |= guard(&self.deadlines).check_soon(&service, now);
                    }
                    if wake {
                        self.sweep_wake.notify_one();
                    }
                }
                Err(e) => {
                    for (service, _) in planned {
                        self.uncache(&service);
                    }
                    result = Err(e);
                }
            }
        }
        for (service, slot, lock) in held {
            drop(lock);
            self.release(&service, slot);
        }
        for claim in claims {
            let slot = self.slot(&claim.key);
            let stored = async {
                let _guard = slot.lock.lock().await;
                if self.store.get(&claim.key).await?.is_none() {
                    self.store.put(&claim.key, claim.value).await?;
                }
                Ok::<(), Error>(())
            }
            .await;
            self.release(&claim.key, slot);
            if let Err(e) = stored {
                result = Err(e);
            }
        }
        result
    }

    /// What merging one service's entries changes: for a record held in memory, the store ops
    /// and the record to cache; otherwise what to compare with the store. Call under the
    /// service's slot lock, so that no owner's write interleaves between the comparison and
    /// the store write.
    async fn plan_service(&self, service: &str, entries: Vec<Entry>) -> Result<Plan> {
        // Newest version of each key first: two versions of one unit in one batch store once.
        let mut units: BTreeMap<String, (Unit, Vec<u8>)> = BTreeMap::new();
        let mut metas = Vec::new();
        let now = self.now();
        for e in entries {
            if let Some((_, id)) = split_unit_key(&e.key) {
                // A tombstone past its time is forgotten everywhere: never taken back in.
                if Unit::is_expired_tombstone(&e.value, now) {
                    continue;
                }
                let unit = match Unit::from_bytes(service, &e.value) {
                    Ok(u) => u,
                    Err(err) => {
                        tracing::warn!(key = e.key, "skipping a received instance: {err}");
                        continue;
                    }
                };
                match units.get(id) {
                    Some((_, held)) if Mark::of(&e.key, held) >= Mark::of(&e.key, &e.value) => {}
                    _ => {
                        units.insert(id.to_string(), (unit, e.value));
                    }
                }
            } else if e.key == meta_key(service) {
                match decode_meta_value(&e.value) {
                    Ok(meta) => metas.push(meta),
                    Err(err) => {
                        tracing::warn!(service, "skipping a received service meta entry: {err}")
                    }
                }
            }
        }
        self.observe(units.values().map(|(u, _)| u.stamp.version).max());
        let mut ops = Vec::new();
        let mut cached = guard(&self.records).get(service).cloned();
        let owned = self.owns(&Id::of_key(service));
        let load = match owned {
            // Watched here: what arrives must move the index the watchers follow.
            true => self.feeds.watched(service),
            // A replica keeps the services it copies in memory as the owner does (read once,
            // here): merging into the record costs no store read and no hop to the blocking
            // pool, and a replica that takes over the range has the record at hand.
            false => self.cache_has_room_for_copy(),
        };
        if cached.is_none() && load {
            cached = self.load(service).await?;
        }
        let taken = cached.is_some() && !owned;
        if taken {
            // A copy is taken out of the cache while it merges (the caller puts it back), so
            // that the record is ours alone and changes in place: no path of map nodes copied
            // for each unit, and none freed after. Nobody is held back by it: a read standing
            // in for the owner that misses the cache waits for the slot lock we hold, and then
            // finds the record cached again.
            let _ours_now = guard(&self.records).remove(service);
        }
        if let Some(rec) = cached {
            // The record is in memory (the owner's, or a copy's): apply to it and store what
            // changed.
            let mut rec = Arc::unwrap_or_clone(rec);
            let mut changed = false;
            for (id, (unit, bytes)) in units {
                let key = unit_key(service, &id);
                if rec.apply_unit(&id, unit) {
                    ops.push(Op::Put(key, bytes));
                    changed = true;
                }
            }
            let gvip_before = rec.gvip.clone();
            for meta in &metas {
                rec.apply_meta(meta);
            }
            if owned && rec.gvip != gvip_before {
                // Two owners each assigned one (one had not seen the other's): the first
                // assigned is kept on every copy and shown from now on.
                tracing::warn!(
                    service,
                    kept = rec.gvip.as_deref().unwrap_or(""),
                    dropped = gvip_before.as_deref().unwrap_or(""),
                    "copies held different gVips for one service; keeping the first assigned"
                );
            }
            if changed && owned {
                // The owner's copy changed by another copy's units: a change of the service
                // like any other, so its index moves on (blocking queries and watchers see it).
                // Its meta entry is its own (which holds what was stored and what arrived).
                rec.index = rec.index.saturating_add(1);
                ops.push(Op::Put(meta_key(service), meta_bytes(&rec.meta())?));
            } else if !metas.is_empty() {
                // The stored entry is what it held merged with what arrived: its own value,
                // apart from the in-memory index, so that copies that received the same metas
                // hold the same bytes.
                let held = self.store.get(&meta_key(service)).await?;
                if let Some(put) = merged_meta(held.as_deref(), &metas)? {
                    ops.push(Op::Put(meta_key(service), put));
                }
            }
            return Ok(Plan::Cached(ops, rec, taken));
        }
        // Compare with what the store holds, the keys of this batch only: a service new to
        // this node, or one that finds the record cache full.
        Ok(Plan::Stored(Compare {
            service: service.to_string(),
            units: units
                .into_iter()
                .map(|(id, (_, bytes))| (unit_key(service, &id), bytes))
                .collect(),
            metas,
        }))
    }
}

/// What merging one service's entries does.
enum Plan {
    /// Its record is in memory: the store ops and the record to cache.
    /// (Whether the record was taken out of the cache for the merge: a copy's is, and goes
    /// back even when nothing changed.)
    Cached(Vec<Op>, Record, bool),
    /// It is not: compare with what the store holds.
    Stored(Compare),
}

/// Received units and meta entries of a service not held in memory, to compare with the
/// store's copies of the same keys.
struct Compare {
    service: String,
    /// (store key, stored bytes), the newest received of each key.
    units: Vec<(String, Vec<u8>)>,
    metas: Vec<Meta>,
}

impl Compare {
    /// The keys whose held values [`Compare::plan`] needs, in its order: the units, then the
    /// meta entry.
    fn keys(&self) -> impl Iterator<Item = String> + '_ {
        self.units
            .iter()
            .map(|(key, _)| key.clone())
            .chain(std::iter::once(meta_key(&self.service)))
    }

    /// The store ops, given the values held under [`Compare::keys`].
    fn plan(self, mut held: Vec<Option<Vec<u8>>>) -> Result<Vec<Op>> {
        let mut ops = Vec::new();
        let held_meta = held.pop().flatten();
        for ((key, bytes), held) in self.units.into_iter().zip(held) {
            // Newer version, or (by a bug, or a damaged copy) another content under the same
            // version whose checksum is larger: the rule `Record::apply_unit` also follows.
            let newer = match held {
                None => true,
                Some(held) => match Unit::stamp_of(&held) {
                    Ok(_) => Mark::of(&key, &bytes) > Mark::of(&key, &held),
                    Err(_) => true,
                },
            };
            if newer {
                ops.push(Op::Put(key, bytes));
            }
        }
        // Every service a node holds has a meta entry (how it finds them).
        if let Some(put) = merged_meta(held_meta.as_deref(), &self.metas)? {
            ops.push(Op::Put(meta_key(&self.service), put));
        }
        Ok(ops)
    }
}

/// The meta entry to store when `held` (the stored value, if any) meets the received
/// `metas`: their merge ([`Meta::merge`]) in its one stored form, or `None` when that is what
/// is held already. A held value that does not decode is replaced by the merge of the rest.
fn merged_meta(held: Option<&[u8]>, metas: &[Meta]) -> Result<Option<Vec<u8>>> {
    let mut meta = held
        .and_then(|h| decode_meta_value(h).ok())
        .unwrap_or_default();
    for m in metas {
        meta.merge(m);
    }
    let bytes = meta_bytes(&meta)?;
    Ok((held != Some(bytes.as_slice())).then_some(bytes))
}
