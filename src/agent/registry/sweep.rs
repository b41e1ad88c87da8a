//! TTL expiry at the owner: the sweep wakes at the earliest deadline it knows of
//! (`agent/deadlines.rs`), expires and removes what is due in each such service, and stores
//! and replicates the instances it changed.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;

use super::writes::Changes;
use super::{feeds, guard, Registry};
use crate::registry::watch::ChangeOp;
use crate::registry::DEFAULT_GRACE_FACTOR;
use crate::ring::Id;
use crate::Result;

impl Registry {
    /// Expire TTLs of owned records whose deadline has passed. Reads the store only for the
    /// records [`Deadlines`] says are due (and to rebuild it, see there).
    pub async fn sweep(self: &Arc<Self>) -> Result<()> {
        // Right after a pause the heartbeats of the instances it owns may have gone to another
        // node: no expiry until this node is sure again (the deadlines stay due).
        if self.check_awake().is_err() {
            return Ok(());
        }
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
            let slot = self.slot(&service);
            let swept = async {
                let _guard = slot.lock.lock().await;
                self.sweep_one(&service).await
            }
            .await;
            self.release(&service, slot);
            swept?;
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

    /// Rebuild the deadline index from the services this node owns (from the record cache
    /// where it has them, so only uncached records are read).
    async fn rescan_deadlines(&self, predecessor: Option<Id>) -> Result<()> {
        guard(&self.deadlines).rescanning(Instant::now(), predecessor);
        for (service, owned) in self.held_services().await? {
            if !owned {
                continue;
            }
            let Some(rec) = self.read_cached(&service).await? else {
                continue;
            };
            if let Some(at) = rec.next_deadline(DEFAULT_GRACE_FACTOR) {
                guard(&self.deadlines).scanned(&service, at);
            }
        }
        Ok(())
    }

    /// Sweep one owned service (under its slot lock): expire and remove what is due, forget
    /// old tombstones, store and replicate the instances that changed; then set the
    /// service's next deadline.
    async fn sweep_one(self: &Arc<Self>, service: &str) -> Result<()> {
        let Some(rec) = self.load(service).await? else {
            guard(&self.deadlines).remove(service);
            return Ok(());
        };
        let now = self.now();
        let before = rec.clone();
        let mut rec = Arc::unwrap_or_clone(rec);
        let forgotten = rec.forget_tombstones(now);
        let changed = rec.sweep(now, DEFAULT_GRACE_FACTOR);
        for id in &changed {
            self.stamp(&mut rec, id, now);
        }
        let next = rec.next_deadline(DEFAULT_GRACE_FACTOR);
        if !changed.is_empty() || !forgotten.is_empty() {
            let watched = self.feeds.watched(service).then(|| {
                let events = feeds::changes_of(
                    Some(&before),
                    &rec,
                    &changed,
                    ChangeOp::Expire,
                    now.timestamp_millis(),
                );
                (events, rec.index)
            });
            let entries = self.save(rec, Changes::of(changed, forgotten)).await?;
            if let Err(e) = self.replicate(entries).await {
                // Stored here; the replicas catch up through anti-entropy.
                tracing::debug!("replicating a TTL change: {e}");
            }
            if let Some((events, after)) = watched {
                self.feeds.publish(service, before.index, events, after);
            }
        }
        // The sweep is running, so there is nothing to wake.
        let _ = guard(&self.deadlines).set(service, next);
        Ok(())
    }
}
