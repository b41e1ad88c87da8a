//! TTL expiry at the owner: the sweep wakes at the earliest deadline it knows of
//! (`agent/deadlines.rs`), expires and removes what is due in each such service, and stores
//! and replicates the instances it changed; and self-preservation (`ttl.rs`, [`Preservation`]):
//! the lapses and leases of the services this node owns, told to it here and by writes, decide
//! whether removals are held back.
//!
//! [`Preservation`]: crate::registry::ttl::Preservation

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;

use super::writes::Changes;
use super::{feeds, guard, Registry};
use crate::registry::ttl::{Leases, Turned, PRESERVATION_GRACE_PERIODS};
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
                guard(&self.preservation).forget(&service);
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
        let hold = guard(&self.preservation).hold_until();
        for (service, owned) in self.held_services().await? {
            if !owned {
                guard(&self.preservation).forget(&service);
                continue;
            }
            let Some(rec) = self.read_cached(&service).await? else {
                continue;
            };
            guard(&self.preservation).set(&service, rec.leases());
            if let Some(at) = rec.next_deadline_holding(DEFAULT_GRACE_FACTOR, hold) {
                guard(&self.deadlines).scanned(&service, at);
            }
        }
        Ok(())
    }

    /// Whether this node holds back TTL removals now (self-preservation).
    pub fn self_preservation(&self) -> bool {
        guard(&self.preservation).is_on()
    }

    /// A write at the owner changed `service`'s leases from `before` to `after`: instances
    /// coming back may end self-preservation.
    pub(super) fn leases_changed(&self, service: &str, before: Leases, after: Leases) {
        if before == after {
            return;
        }
        let turned = {
            let mut p = guard(&self.preservation);
            p.adjust(service, before, after);
            p.update(self.now(), DEFAULT_GRACE_FACTOR)
        };
        self.preservation_turned(turned);
    }

    /// Log a change of self-preservation; when it ends, the removals it held back are due.
    fn preservation_turned(&self, turned: Option<Turned>) {
        match turned {
            None => {}
            Some(Turned::On {
                lapsed,
                held,
                until,
            }) => tracing::warn!(
                lapsed,
                held,
                %until,
                "self-preservation on: {lapsed} of the {held} TTL leases this node owns lapsed \
                 within one TTL; they turn critical but none is removed until reports recover"
            ),
            Some(Turned::Off { timed_out, lapsed }) => {
                if timed_out {
                    tracing::info!(
                        lapsed,
                        "self-preservation off after {PRESERVATION_GRACE_PERIODS} grace periods: \
                         the {lapsed} leases still lapsed are removed"
                    );
                } else {
                    tracing::info!(lapsed, "self-preservation off: reports recovered");
                }
                let services = guard(&self.preservation).lapsed_services();
                let now = Utc::now();
                let mut wake = false;
                {
                    let mut deadlines = guard(&self.deadlines);
                    for service in &services {
                        wake |= deadlines.check_soon(service, now);
                    }
                }
                if wake {
                    self.sweep_wake.notify_one();
                }
            }
        }
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
        let hold = guard(&self.preservation).hold_until();
        let swept = rec.sweep_holding(now, DEFAULT_GRACE_FACTOR, hold);
        let changed = swept.changed;
        for id in &changed {
            self.stamp(&mut rec, id, now);
        }
        let turned = {
            let mut p = guard(&self.preservation);
            p.set(service, rec.leases());
            for ttl in swept.lapsed {
                p.lapsed(now, ttl);
            }
            p.update(now, DEFAULT_GRACE_FACTOR)
        };
        self.preservation_turned(turned);
        let hold = guard(&self.preservation).hold_until();
        let next = rec.next_deadline_holding(DEFAULT_GRACE_FACTOR, hold);
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
            let replicated = self
                .save_and_replicate(rec, Changes::of(changed, forgotten))
                .await?;
            if let Err(e) = replicated {
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
