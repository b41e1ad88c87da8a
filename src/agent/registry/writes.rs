//! Writes at the owner, in groups.
//!
//! A write to a service joins the service's queue ([`Slot::pending`](super::Slot)) and waits
//! for the slot's lock. Whoever holds the lock takes every write queued at that moment and
//! applies them as one group: each to the in-memory record (O(log n) whatever the service's
//! size, the maps are persistent), each changed instance stamped with a new version, then one
//! store batch of the changed units (the embedded store makes it one log append and one
//! fsync) and, overlapping it, the group queued on each replica's stream; every writer is
//! answered once both are done. Writes that arrive
//! meanwhile queue up for the next group, so a hot service is not limited to one write per
//! fsync and replication round trip.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};

use super::{feeds, guard, Pending, Registry};
use crate::agent::metrics::WriteStage;
use crate::registry::compat::{self, CancelOutcome};
use crate::registry::ops::{gvip_id, Entry, RegistryRequest, RegistryResponse, WriteOp};
use crate::registry::ttl::Leases;
use crate::registry::unit::{meta_key, meta_value, unit_key};
use crate::registry::watch::ChangeOp;
use crate::registry::{Record, DEFAULT_GRACE_FACTOR, POLICY_UNIT};
use crate::ring::Id;
use crate::store::Op;
use crate::{Error, Result};

/// What applying a group changed.
#[derive(Default)]
pub(super) struct Changes {
    /// Instances changed (stamped), in order, possibly repeated.
    pub(super) ids: Vec<String>,
    /// The record was created (its meta entry must be stored too).
    pub(super) created: bool,
}

impl Registry {
    /// Apply a write at the owner of `service` (`key_id` is `Id::of_key(service)`), as part of
    /// the next group.
    pub(super) async fn apply(
        self: &Arc<Self>,
        service: &str,
        key_id: Id,
        op: WriteOp,
    ) -> Result<RegistryResponse> {
        crate::registry::validate_service(service)?;
        self.check_owner(&key_id)?;
        let slot = self.slot(service);
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        guard(&slot.pending).push(Pending { op, reply });
        // Either a group that took our write answers it, or we get the lock and lead the next
        // group ourselves. Waiting for the lock alone would hold an answered writer back until
        // every group before it had committed: one fsync per writer again.
        let lock = slot.lock.clone();
        let answered = tokio::select! {
            biased;
            got = &mut answer => Some(got),
            _held = lock.lock() => {
                // Our write, unless the previous holder took it into its group; and every
                // write queued since.
                let group = std::mem::take(&mut *guard(&slot.pending));
                if !group.is_empty() {
                    self.commit_group(service, &key_id, group).await;
                }
                None
            }
        };
        self.release(service, slot);
        let got = match answered {
            Some(got) => got,
            None => answer.await,
        };
        got.unwrap_or_else(|_| Err(Error::internal("a write was dropped without an answer")))
    }

    /// Apply `group` and answer each of its writers.
    async fn commit_group(self: &Arc<Self>, service: &str, key_id: &Id, group: Vec<Pending>) {
        let ops: Vec<&WriteOp> = group.iter().map(|p| &p.op).collect();
        match self.commit(service, key_id, &ops).await {
            Ok(answers) => {
                for (p, a) in group.into_iter().zip(answers) {
                    let _ = p.reply.send(a);
                }
            }
            Err(e) => {
                for p in group {
                    let _ = p.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Apply `ops` in order to `service`'s record, store the changed units in one batch and
    /// replicate them in one message. Each op gets its own answer (a bad one fails alone); an
    /// error of the store or of replication fails the whole group.
    async fn commit(
        self: &Arc<Self>,
        service: &str,
        key_id: &Id,
        ops: &[&WriteOp],
    ) -> Result<Vec<Result<RegistryResponse>>> {
        // Ownership may have moved while the group waited for the lock, or the process was
        // paused with this group in its socket; a ring still forming has no replica set yet.
        self.check_owner(key_id)?;
        self.check_formed()?;
        self.check_awake()?;
        let before = self.load(service).await?;
        let before_index = before.as_ref().map_or(0, |r| r.index);
        let mut rec = before.clone().map(Arc::unwrap_or_clone);
        let now = self.now();
        let mut changes = Changes::default();
        let mut answers = Vec::with_capacity(ops.len());
        for op in ops {
            answers.push(
                self.apply_op(service, &mut rec, op, now, &mut changes)
                    .await,
            );
        }
        let Some(rec) = rec else {
            return Ok(answers);
        };
        if changes.ids.is_empty() && !changes.created {
            return Ok(answers);
        }
        let leases = lease_change(before.as_deref(), &rec, &changes.ids);
        let watched = self.feeds.watched(service).then(|| {
            let events = feeds::changes_of(
                before.as_deref(),
                &rec,
                &changes.ids,
                ChangeOp::Deregister,
                now.timestamp_millis(),
            );
            (events, rec.index)
        });
        let replicated = self.save_and_replicate(rec, changes).await?;
        self.leases_changed(service, leases.0, leases.1);
        replicated?;
        // Durable on a quorum: watchers may hear of it.
        if let Some((events, after)) = watched {
            self.feeds.publish(service, before_index, events, after);
        }
        Ok(answers)
    }

    /// Store the changed units of `rec` (and its meta entry when it was created) and, at the
    /// same time, send them to the replicas; once stored, cache `rec` and note its TTL
    /// deadlines. The owner's own `fdatasync` and the replicas' round trip overlap, as a Raft
    /// leader's append does with its followers': nothing is acknowledged before both are done.
    /// A replica that stored a group its owner then failed to store holds a version the owner's
    /// clock already passed: the write is refused (it may still appear, as any unacknowledged
    /// write may), the registry is marked unsynced, and the next anti-entropy round brings the
    /// copies together as it does any newer copy. Call under the
    /// slot's lock. The outer error is the store's (the write failed here); the inner result
    /// is the replication's.
    pub(super) async fn save_and_replicate(
        self: &Arc<Self>,
        rec: Record,
        changes: Changes,
    ) -> Result<Result<()>> {
        let service = rec.service.clone();
        let mut ids = changes.ids;
        ids.sort_unstable();
        ids.dedup();
        let mut entries = Vec::with_capacity(ids.len() + 1);
        let mut deletes = Vec::new();
        for id in &ids {
            match rec.unit(id) {
                Some(unit) => entries.push(Entry {
                    key: unit_key(&service, id),
                    value: unit.to_bytes()?,
                }),
                // A forgotten tombstone: its key goes.
                None => deletes.push(unit_key(&service, id)),
            }
        }
        if changes.created || !deletes.is_empty() {
            entries.push(Entry {
                key: meta_key(&service),
                value: meta_value(&rec)?,
            });
        }
        let mut batch: Vec<Op> = entries
            .iter()
            .map(|e| Op::Put(e.key.clone(), e.value.clone()))
            .collect();
        batch.extend(deletes.into_iter().map(Op::Delete));
        let metrics = self.ring.metrics();
        let store = async {
            let started = Instant::now();
            self.slow_disk().await;
            let stored = self.store.apply(batch).await;
            metrics.write_stage(WriteStage::OwnerStore, started.elapsed());
            stored
        };
        let replicate = async {
            let started = Instant::now();
            let replicated = self.replicate(entries).await;
            metrics.write_stage(WriteStage::Quorum, started.elapsed());
            replicated
        };
        let (stored, replicated) = tokio::join!(store, replicate);
        if let Err(e) = stored {
            // The replicas may hold what this store did not: the next anti-entropy round
            // compares, and the owner pulls it as a newer copy.
            self.uncache(&service);
            self.mark_unsynced();
            return Err(e);
        }
        let wake = {
            let mut deadlines = guard(&self.deadlines);
            let mut wake = false;
            for id in &ids {
                if let Some(at) = rec.deadline_of(id, DEFAULT_GRACE_FACTOR) {
                    wake |= deadlines.earlier(&service, at);
                }
            }
            wake
        };
        if wake {
            self.sweep_wake.notify_one();
        }
        self.cache_record(rec);
        Ok(replicated)
    }

    /// Apply one write to `rec` (created by a registration when missing), stamping what it
    /// changes.
    async fn apply_op(
        self: &Arc<Self>,
        service: &str,
        rec: &mut Option<Record>,
        op: &WriteOp,
        now: DateTime<Utc>,
        changes: &mut Changes,
    ) -> Result<RegistryResponse> {
        let creates = matches!(op, WriteOp::Register { .. } | WriteOp::LsipRegister { .. });
        let r = match rec {
            Some(r) => r,
            None if creates => rec.insert(Record::new(service, None)?),
            // A policy may come before the first instance: the record (and its meta entry)
            // is made for it; the first registration gives the service its gVip.
            None if matches!(op, WriteOp::SetPolicy { .. }) => {
                changes.created = true;
                rec.insert(Record::new(service, None)?)
            }
            None => {
                return match op {
                    WriteOp::LsipCancel { .. } => Ok(RegistryResponse::Applied {
                        instance: None,
                        text: Some(CancelOutcome::NoService.text().to_string()),
                        index: 0,
                    }),
                    _ => Err(Error::not_found(format!("service {service} not found"))),
                };
            }
        };
        if creates && r.gvip.is_none() {
            r.gvip = Some(self.assign_gvip(service).await?);
            // When it was assigned: should another owner, that had not seen this one, assign
            // another, every copy keeps the first assigned (`Meta::merge`).
            let ms = u64::try_from(now.timestamp_millis()).unwrap_or(0);
            r.gvip_at = guard(&self.clock).now(ms);
            changes.created = true;
        }
        let (instance, text) = match op {
            WriteOp::Register { id, body } => {
                let instance = r.register(id, body, now)?;
                self.stamp(r, id, now);
                changes.ids.push(id.clone());
                (Some(instance), None)
            }
            WriteOp::Deregister { id } => {
                let inst = r.deregister(id)?;
                r.tombstone(id, now);
                self.stamp(r, id, now);
                changes.ids.push(id.clone());
                (Some(Arc::new(inst)), None)
            }
            WriteOp::Report { id, body } => {
                body.validate()?;
                r.report(id, body, now)?;
                self.stamp(r, id, now);
                changes.ids.push(id.clone());
                (r.instances.get(id.as_str()).cloned(), None)
            }
            WriteOp::LsipRegister { lsip } => {
                let outcome = compat::register_lsip(r, lsip, now)?;
                if outcome == compat::RegisterOutcome::Registered {
                    self.stamp(r, lsip, now);
                    changes.ids.push(lsip.clone());
                }
                let inst = r.instances.get(lsip.as_str()).cloned();
                (inst, Some(outcome.text().to_string()))
            }
            WriteOp::SetPolicy { policy } => {
                r.set_policy(*policy);
                self.stamp(r, POLICY_UNIT, now);
                changes.ids.push(POLICY_UNIT.to_string());
                // Turning damping off releases the held instances at the next sweep.
                if guard(&self.deadlines).check_soon(service, now) {
                    self.sweep_wake.notify_one();
                }
                (None, None)
            }
            WriteOp::LsipCancel { lsip } => {
                let outcome = compat::cancel_lsip(Some(r), lsip);
                if outcome == CancelOutcome::Deleted {
                    r.tombstone(lsip, now);
                    self.stamp(r, lsip, now);
                    changes.ids.push(lsip.clone());
                }
                (None, Some(outcome.text().to_string()))
            }
        };
        Ok(RegistryResponse::Applied {
            instance,
            text,
            index: r.index,
        })
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
            // Boxed: routing a claim may come back to this node's own `handle_local`.
            let answer = Box::pin(self.route(id, req)).await?;
            if let RegistryResponse::Claimed(true) = answer {
                return Ok(candidate);
            }
        }
        Err(Error::unavailable("could not find a free gVip; retry"))
    }
}

/// The TTL leases of the instances `ids` before and after a group (for self-preservation).
fn lease_change(before: Option<&Record>, after: &Record, ids: &[String]) -> (Leases, Leases) {
    let mut seen: Vec<&String> = ids.iter().collect();
    seen.sort_unstable();
    seen.dedup();
    let (mut was, mut is) = (Leases::default(), Leases::default());
    for id in seen {
        let b = before.map(|r| r.lease(id)).unwrap_or_default();
        let a = after.lease(id);
        was.held += b.held;
        was.lapsed += b.lapsed;
        is.held += a.held;
        is.lapsed += a.lapsed;
    }
    (was, is)
}

impl Changes {
    /// The changes of a TTL sweep: `ids` expired or removed, `forgotten` tombstones dropped.
    pub(super) fn of(ids: Vec<String>, forgotten: Vec<String>) -> Self {
        let mut all = ids;
        all.extend(forgotten);
        Changes {
            ids: all,
            created: false,
        }
    }
}
