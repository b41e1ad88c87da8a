//! Records moving with ownership: the joiner takes its range from its successor, a node that
//! gains a closer predecessor pushes it what it now owns, a leaving node hands everything to its
//! successors; anti-entropy between an owner and its replicas repairs what is missing; and the
//! upgrade of a store written by 0.1.0 (one record per service) to units.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{guard, version_item, Registry, TRANSFER_CHUNK};
use crate::agent::progress::{Progress, Step};
use crate::registry::hlc::Hlc;
use crate::registry::ops::{range_hash, Entry, RegistryRequest, RegistryResponse};
use crate::registry::unit::{meta_key, meta_value, unit_key};
use crate::registry::Record;
use crate::ring::{Id, NodeRef};
use crate::store::Op;
use crate::{Error, Result};

/// Most bytes of entries in one transfer message (the RPC frame limit is 16 MiB).
pub const TRANSFER_BYTES: usize = 4 << 20;

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
        let owned = self.owned_entries().await?;
        if owned.is_empty() {
            return Ok(0);
        }
        let items: Vec<(String, Hlc)> = owned.iter().map(version_item).collect();
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
            // Counted as a replication error inside; the next round tries again.
            let _ = self.send_entries(&node, &entries).await;
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
            self.call(node, req)
                .await
                .inspect_err(|_| self.ring.metrics().replication_error())?;
        }
        Ok(())
    }

    async fn owned_entries(&self) -> Result<Vec<Entry>> {
        self.entries_where(|id| self.owns(id)).await
    }

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

    /// Anti-entropy at a replica: which of the owner's `items` this node lacks or holds older,
    /// and, within the owner's `range`, what this node holds that the owner lacks or holds
    /// older.
    pub(super) async fn diff(
        &self,
        items: Vec<(String, Hlc)>,
        range: Option<(Id, Id)>,
    ) -> Result<RegistryResponse> {
        // One scan of the owner's range (everything when it knows no predecessor):
        // what we hold there, by key, with its version.
        let held = match range {
            Some((from, to)) => self.entries_where(|id| id.in_half_open(&from, &to)).await?,
            None => self.entries_where(|_| true).await?,
        };
        let mut mine: HashMap<String, (Hlc, Entry)> = held
            .into_iter()
            .map(|e| {
                let (key, v) = version_item(&e);
                (key, (v, e))
            })
            .collect();
        let mut need = Vec::new();
        for (key, theirs) in items {
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
}
