//! The replication rules, without I/O: instances as units, their versions, how copies merge.
//!
//! Inside a service (the ring key) every instance is its own unit: one store key
//! (`u/SERVICE/ID`), one version ([`Hlc`]), and the service's change index at which it last
//! changed. A write at the owner changes one unit, stores and replicates that unit alone. A
//! copy keeps a unit only when its version is newer than the one it holds
//! ([`Record::apply_unit`]), so replicas, hand-offs and anti-entropy converge whatever order
//! the units arrive in (the rule is commutative, associative and idempotent), and a removal is
//! a unit too (a tombstone) that an older registration cannot undo.
//!
//! The agent (src/agent/registry.rs) drives these rules with real stores and sockets; the
//! tests below drive them with copies that diverge and meet again.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::health::{Policy, POLICY_UNIT};
use super::hlc::Hlc;
use super::model::{remove_present, Instance, Liveness, Name, Record, Stamp};
use crate::ring::Id;
use crate::Result;

/// How long a deregistration is remembered so a stale copy cannot bring the instance back.
pub const TOMBSTONE_TTL_SECS: i64 = 7 * 24 * 3600;

/// One instance's state as it is stored and replicated.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    /// Version and change index of the instance's last change.
    pub stamp: Stamp,
    /// What the change left.
    pub body: UnitBody,
}

/// A unit's content: the instance, or the time it was removed.
#[derive(Debug, Clone, PartialEq)]
pub enum UnitBody {
    /// Registered.
    Present {
        /// The instance.
        instance: Arc<Instance>,
        /// Its heartbeat bookkeeping.
        liveness: Liveness,
    },
    /// Deregistered or expired at `at` (a tombstone).
    Removed {
        /// When.
        at: DateTime<Utc>,
    },
    /// The service's health policy (the unit [`POLICY_UNIT`]).
    Policy {
        /// The policy.
        policy: Policy,
    },
}

/// What a copy holds under one store key, as anti-entropy compares it: a unit's version and
/// a checksum of its stored bytes (so two different contents under one version — a bug, a
/// damaged copy — are seen and repaired, the larger checksum winning everywhere). A meta
/// entry's mark is its gVip's assignment version and the checksum of its one stored form
/// ([`Meta`]): two copies whose meta entries differ are seen to differ, and are then merged,
/// not replaced ([`Mark::merges`]). gVip claims carry zeros: a claim is kept if none is held.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Mark {
    /// The unit's version.
    pub version: Hlc,
    /// CRC-32 of the unit's stored bytes.
    pub content: u32,
}

impl Mark {
    /// The mark of the entry stored under `key` as `bytes`.
    pub fn of(key: &str, bytes: &[u8]) -> Mark {
        if Mark::merges(key) {
            // Every meta value has one stored form, so its bytes' checksum tells values apart.
            return Mark {
                version: decode_meta_value(bytes)
                    .map(|meta| meta.gvip_at)
                    .unwrap_or_default(),
                content: crc32fast::hash(bytes),
            };
        }
        if !key.starts_with("u/") {
            return Mark::default();
        }
        Mark {
            version: Unit::stamp_of(bytes).map(|s| s.version).unwrap_or_default(),
            content: crc32fast::hash(bytes),
        }
    }

    /// Whether two differing copies of `key` merge (each side takes the other's, and both end
    /// with their join) rather than the one with the larger mark replacing the other: meta
    /// entries.
    pub fn merges(key: &str) -> bool {
        key.starts_with("s/")
    }
}

impl std::fmt::Display for Mark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{:08x}", self.version, self.content)
    }
}

impl Unit {
    /// The stored form.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        super::codec::encode_unit(self)
    }

    /// A unit of `service` from its stored form.
    pub fn from_bytes(service: &str, bytes: &[u8]) -> Result<Unit> {
        super::codec::decode_unit(service, bytes)
    }

    /// Whether a stored unit is a tombstone older than [`TOMBSTONE_TTL_SECS`] at `now`. Every
    /// copy forgets such a tombstone: the owner deletes it, replicas drop theirs when
    /// anti-entropy looks at the range, and nobody accepts or reports it again (else a
    /// replica's copy would bring back what the owner forgot). Cheap: the instance is not
    /// decoded.
    pub fn is_expired_tombstone(bytes: &[u8], now: DateTime<Utc>) -> bool {
        super::codec::unit_removed_at(bytes)
            .is_some_and(|at| (now - at).num_seconds() >= TOMBSTONE_TTL_SECS)
    }

    /// Whether the store entry `key` = `bytes` (any stored key: a unit, a meta entry, a gVip
    /// claim) is a unit tombstone past its time at `now` ([`Unit::is_expired_tombstone`]).
    pub fn is_expired_entry(key: &str, bytes: &[u8], now: DateTime<Utc>) -> bool {
        key.starts_with("u/") && Unit::is_expired_tombstone(bytes, now)
    }

    /// The version and index of a stored unit, without decoding the instance.
    pub fn stamp_of(bytes: &[u8]) -> Result<Stamp> {
        super::codec::unit_stamp(bytes)
    }
}

// ---- store keys -----------------------------------------------------------------------------

/// The store key of instance `id` of `service`. Service names never contain `/`.
/// The default write quorum for K copies: a majority, owner included (1 → 1, 2 → 2, 3 → 2,
/// 5 → 3).
pub fn majority(replicas: usize) -> usize {
    replicas / 2 + 1
}

/// The acknowledgement rule: how many replicas must confirm a change before the owner
/// acknowledges it, for a write quorum `quorum` (copies, owner included) and a ring that the
/// owner knows to have `known_members` members, itself included (members lost to failure
/// count; see `Chord::known_members`). A ring smaller than the quorum needs all its members;
/// a node alone acknowledges alone only when it knows no other member.
pub fn confirmations_needed(quorum: usize, known_members: usize) -> usize {
    quorum.min(known_members.max(1)).saturating_sub(1)
}

pub fn unit_key(service: &str, id: &str) -> String {
    format!("u/{service}/{id}")
}

/// The prefix of every unit key of `service`.
pub fn unit_prefix(service: &str) -> String {
    format!("u/{service}/")
}

/// The store key of `service`'s meta entry (gVip, index floor).
pub fn meta_key(service: &str) -> String {
    format!("s/{service}")
}

/// (service, instance id) of a unit key.
pub fn split_unit_key(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix("u/")?.split_once('/')
}

/// The service a store key belongs to: a unit, a meta entry, or a 0.1.0 record.
pub fn service_of_key(key: &str) -> Option<&str> {
    if let Some((service, _)) = split_unit_key(key) {
        return Some(service);
    }
    key.strip_prefix("s/").or_else(|| key.strip_prefix("svc/"))
}

/// The ring identifier of the service a store key belongs to.
pub fn service_id_of_key(key: &str) -> Option<Id> {
    service_of_key(key).map(Id::of_key)
}

/// A service's meta entry (`s/SERVICE`): its gVip with the version at which it was
/// assigned, and the floor of its change index.
///
/// Copies merge by [`Meta::merge`]: of two gVips the one assigned first wins (the lower
/// assignment version; a gVip of unknown assignment — written before versions were kept, or
/// by 0.1.0 — counts as version zero, before any other; equal versions: the lower address),
/// any gVip beats none, and the index floor is the larger. That is a join on a semilattice:
/// commutative, associative, idempotent, so copies agree whatever order metas arrive in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// The service's gVip.
    pub gvip: Option<String>,
    /// When `gvip` was assigned; zero when unknown, and when there is no gVip.
    pub gvip_at: Hlc,
    /// The service's change index is at least this.
    pub index: u64,
}

impl Meta {
    /// What the gVip rule orders by: (assignment version, address), the lower winning.
    fn claim(&self) -> Option<(Hlc, &str)> {
        self.gvip.as_deref().map(|g| (self.gvip_at, g))
    }

    /// Merge `other` into this meta; whether anything changed.
    pub fn merge(&mut self, other: &Meta) -> bool {
        let mut changed = false;
        let wins = match (other.claim(), self.claim()) {
            (Some(theirs), Some(mine)) => theirs < mine,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if wins {
            self.gvip = other.gvip.clone();
            self.gvip_at = other.gvip_at;
            changed = true;
        }
        if other.index > self.index {
            self.index = other.index;
            changed = true;
        }
        changed
    }
}

/// The stored form of `meta`.
pub fn meta_bytes(meta: &Meta) -> Result<Vec<u8>> {
    super::codec::encode_meta(meta)
}

/// The meta entry's value for `rec`.
pub fn meta_value(rec: &Record) -> Result<Vec<u8>> {
    meta_bytes(&rec.meta())
}

/// A meta entry from its stored value (either layout).
pub fn decode_meta_value(bytes: &[u8]) -> Result<Meta> {
    super::codec::decode_meta(bytes)
}

// ---- the rules ------------------------------------------------------------------------------

impl Record {
    /// Instance `id` as a unit, if this record has a version of it.
    pub fn unit(&self, id: &str) -> Option<Unit> {
        let stamp = *self.stamps.get(id)?;
        let body = if id == POLICY_UNIT {
            UnitBody::Policy {
                policy: self.policy,
            }
        } else if let Some(instance) = self.instances.get(id) {
            let liveness = self
                .liveness
                .get(id)
                .cloned()
                .unwrap_or_else(|| Liveness::new(instance.last_changed()));
            UnitBody::Present {
                instance: instance.clone(),
                liveness,
            }
        } else {
            UnitBody::Removed {
                at: *self.removed.get(id)?,
            }
        };
        Some(Unit { stamp, body })
    }

    /// Keep `unit` as instance `id`'s state if it is newer than what this copy holds. Returns
    /// whether anything changed. The service's index never goes down.
    pub fn apply_unit(&mut self, id: &str, unit: Unit) -> bool {
        // One look at the versions gives both the version held and the key to share.
        let held = self
            .stamps
            .get_key_value(id)
            .map(|(k, s)| (k.clone(), s.version));
        if let Some((_, cur)) = &held {
            if unit.stamp.version < *cur {
                return false;
            }
            if unit.stamp.version == *cur {
                // The same change again (the usual case), or, by a bug, another content under
                // the same version: the larger checksum wins on every copy alike.
                let mine = self.unit(id).and_then(|u| u.to_bytes().ok());
                let new = unit.to_bytes().ok();
                let (Some(mine), Some(new)) = (mine, new) else {
                    return false;
                };
                if crc32fast::hash(&new) <= crc32fast::hash(&mine) {
                    return false;
                }
            }
        }
        // One allocation of the id, shared by every map that holds it.
        // (Without a version it is no tombstone's: only the instances can hold it.)
        let name = match held {
            Some((name, _)) => name,
            None => self
                .instances
                .get_key_value(id)
                .map_or_else(|| Name::from(id), |(k, _)| k.clone()),
        };
        match unit.body {
            // Only under its own id: a policy is never an instance, nor the other way round.
            UnitBody::Policy { policy } if id == POLICY_UNIT => self.policy = policy,
            UnitBody::Policy { .. } => return false,
            _ if id == POLICY_UNIT => return false,
            UnitBody::Present { instance, liveness } => {
                remove_present(&mut self.removed, id);
                self.liveness.insert(name.clone(), liveness);
                self.instances.insert(name.clone(), instance);
            }
            UnitBody::Removed { at } => {
                remove_present(&mut self.instances, id);
                remove_present(&mut self.liveness, id);
                self.removed.insert(name.clone(), at);
            }
        }
        // Only a unit kept moves the index: the store holds only those, so the index in
        // memory stays the one a reload of the stored copy rebuilds (never above it).
        self.index = self.index.max(unit.stamp.index);
        self.stamps.insert(name, unit.stamp);
        true
    }

    /// This copy's meta entry.
    pub fn meta(&self) -> Meta {
        Meta {
            gvip: self.gvip.clone(),
            gvip_at: if self.gvip.is_some() {
                self.gvip_at
            } else {
                Hlc::default()
            },
            index: self.index,
        }
    }

    /// Merge a service's meta entry into this copy by [`Meta::merge`] (the earliest assigned
    /// gVip wins; the index never goes down). Returns whether anything changed.
    pub fn apply_meta(&mut self, meta: &Meta) -> bool {
        let mut mine = self.meta();
        if !mine.merge(meta) {
            return false;
        }
        self.gvip = mine.gvip;
        self.gvip_at = mine.gvip_at;
        self.index = mine.index;
        true
    }

    /// Merge every unit of `other` into this copy; returns the ids that changed.
    pub fn merge_from(&mut self, other: &Record) -> Vec<String> {
        let mut changed = Vec::new();
        for id in other.stamps.keys() {
            if let Some(unit) = other.unit(id) {
                if self.apply_unit(id, unit) {
                    changed.push(id.to_string());
                }
            }
        }
        self.apply_meta(&other.meta());
        changed
    }

    /// Remember that instance `id` was removed at `at` (the caller stamps the change).
    pub fn tombstone(&mut self, id: &str, at: DateTime<Utc>) {
        self.removed.insert(self.name(id), at);
    }

    /// Forget tombstones older than [`TOMBSTONE_TTL_SECS`] at `now`; returns the ids forgotten
    /// (whose store keys the owner deletes).
    pub fn forget_tombstones(&mut self, now: DateTime<Utc>) -> Vec<String> {
        let old: Vec<String> = self
            .removed
            .iter()
            .filter(|(_, at)| (now - **at).num_seconds() >= TOMBSTONE_TTL_SECS)
            .map(|(id, _)| id.to_string())
            .collect();
        for id in &old {
            self.removed.remove(id.as_str());
            self.stamps.remove(id.as_str());
        }
        old
    }

    /// A record built from its stored entries: the meta entry (if any) and every unit.
    /// An undecodable meta entry or unit is skipped with a log line (it is repaired from
    /// other copies).
    pub fn from_stored<'a>(
        service: &str,
        meta: Option<&[u8]>,
        units: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Record> {
        let mut rec = Record::new(service, None)?;
        // A damaged meta entry does not make the service unreadable: it is skipped like a
        // damaged unit, and anti-entropy (whose mark sees it differ) merges a good one back.
        match meta.map(decode_meta_value) {
            Some(Ok(meta)) => {
                rec.apply_meta(&meta);
            }
            Some(Err(e)) => tracing::warn!(service, "skipping a stored service meta entry: {e}"),
            None => {}
        }
        for (id, bytes) in units {
            match Unit::from_bytes(service, bytes) {
                Ok(unit) => {
                    rec.apply_unit(id, unit);
                }
                Err(e) => tracing::warn!(service, id, "skipping a stored instance: {e}"),
            }
        }
        Ok(rec)
    }

    /// The highest version this copy holds (the owner's clock moves past it).
    pub fn max_version(&self) -> Option<Hlc> {
        self.stamps.values().map(|s| s.version).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::hlc::Clock;
    use crate::registry::model::tests::at;
    use crate::registry::{RegisterBody, StatusBody};
    use chrono::Duration;

    fn rec() -> Record {
        Record::new("svc", None).expect("record")
    }

    #[test]
    fn the_acknowledgement_rule_needs_w_minus_one_replicas_but_never_more_than_the_ring_has() {
        // K = 3, W = 2: one replica, in any ring of two or more members.
        assert_eq!(confirmations_needed(majority(3), 6), 1);
        assert_eq!(confirmations_needed(majority(3), 2), 1);
        // A ring of one acknowledges alone; W = 3 in a ring of two needs the one other.
        assert_eq!(confirmations_needed(majority(3), 1), 0);
        assert_eq!(confirmations_needed(3, 2), 1);
        assert_eq!(confirmations_needed(1, 8), 0, "W = 1: the owner alone");
        assert_eq!(confirmations_needed(majority(5), 8), 2);
        assert_eq!(confirmations_needed(2, 0), 0, "nonsense input stays sane");
    }

    #[test]
    fn two_contents_under_one_version_converge_to_the_same_one_on_every_copy() {
        let mut a = Owner::new(1, 0);
        a.register("x", 1, at(0));
        let v = a.rec.version_of("x");
        // Another copy holds another content under the very same version (a bug, a damaged
        // copy): the port differs.
        let mut b = a.rec.clone();
        let mut other = b.unit("x").expect("unit");
        if let UnitBody::Present { instance, .. } = &mut other.body {
            Arc::make_mut(instance).port = 2;
        }
        b.instances.remove("x");
        b.stamps.remove("x");
        assert!(b.apply_unit("x", other.clone()));
        assert_eq!(b.version_of("x"), v, "same version");
        let (ua, ub) = (a.rec.unit("x").expect("a"), b.unit("x").expect("b"));
        let (ba, bb) = (ua.to_bytes().expect("a"), ub.to_bytes().expect("b"));
        assert_ne!(
            Mark::of("u/svc/x", &ba),
            Mark::of("u/svc/x", &bb),
            "anti-entropy sees the difference"
        );
        // Each side applies the other's: both keep the same one, whichever order.
        let mut a2 = a.rec.clone();
        a2.apply_unit("x", ub.clone());
        let mut b2 = b.clone();
        b2.apply_unit("x", ua.clone());
        assert_eq!(a2.instances["x"].port, b2.instances["x"].port);
        let winner = if crc32fast::hash(&ba) > crc32fast::hash(&bb) {
            1
        } else {
            2
        };
        assert_eq!(a2.instances["x"].port, winner, "the larger checksum wins");
        // The same unit again changes nothing.
        assert!(!a2.clone().apply_unit("x", a2.unit("x").expect("unit")));
    }

    #[test]
    fn a_unit_refused_as_older_leaves_the_index_a_reload_of_the_stored_copy_rebuilds() {
        let mut a = Owner::new(1, 0);
        a.register("x", 1, at(0));
        let older = a.rec.unit("x").expect("unit");
        a.register("x", 2, at(5));
        let newer = a.rec.unit("x").expect("unit");
        // A replica holds the newer change; the older one arrives late, stamped by an owner
        // whose index had run further (two owners in a split).
        let mut replica = rec();
        assert!(replica.apply_unit("x", newer.clone()));
        let before = replica.index;
        let mut late = older;
        late.stamp.index = 1_000;
        assert!(
            !replica.apply_unit("x", late),
            "the older change is refused"
        );
        assert_eq!(replica.instances["x"].port, 2);
        assert_eq!(
            replica.index, before,
            "a refused unit does not move the index"
        );
        // What the replica stored (the unit it kept; no meta entry) rebuilds the same index.
        let bytes = newer.to_bytes().expect("bytes");
        let reloaded = Record::from_stored("svc", None, [("x", bytes.as_slice())]).expect("load");
        assert_eq!(reloaded.index, replica.index);
    }

    /// An owner: a record and a clock whose wall time is `skew_ms` off.
    struct Owner {
        rec: Record,
        clock: Clock,
        skew_ms: i64,
    }

    impl Owner {
        fn new(node: u64, skew_ms: i64) -> Self {
            Owner {
                rec: rec(),
                clock: Clock::new(node),
                skew_ms,
            }
        }

        fn ms(&self, t: DateTime<Utc>) -> u64 {
            (t.timestamp_millis() + self.skew_ms) as u64
        }

        fn register(&mut self, id: &str, port: i64, t: DateTime<Utc>) {
            self.rec
                .register(id, &RegisterBody::new("h", port), t)
                .expect("reg");
            self.stamp(id, t);
        }

        /// Stamp a change of `id` made at `t`, as the agent's owner does.
        fn stamp(&mut self, id: &str, t: DateTime<Utc>) {
            let v = self.clock.after(self.ms(t), self.rec.version_of(id));
            self.rec.stamp(id, v);
        }

        fn deregister(&mut self, id: &str, t: DateTime<Utc>) {
            self.rec.deregister(id).expect("dereg");
            self.rec.tombstone(id, t);
            self.stamp(id, t);
        }

        /// Take over another copy (a new owner after a crash): its clock moves past it.
        fn inherit(&mut self, other: &Record) {
            self.rec.merge_from(other);
            if let Some(v) = self.rec.max_version() {
                self.clock.observe(v);
            }
        }
    }

    #[test]
    fn instances_registered_on_either_side_are_all_kept() {
        let mut a = Owner::new(1, 0);
        a.register("x", 1, at(0));
        let mut b = Owner::new(2, 0);
        b.inherit(&a.rec);
        a.register("from-a", 2, at(5));
        b.register("from-b", 3, at(6));
        let mut ab = a.rec.clone();
        assert!(!ab.merge_from(&b.rec).is_empty());
        let mut ba = b.rec.clone();
        ba.merge_from(&a.rec);
        let ids: Vec<&str> = ab.instances.keys().map(|k| &**k).collect();
        assert_eq!(ids, vec!["from-a", "from-b", "x"]);
        assert_eq!(ab.instances, ba.instances, "commutative");
        assert_eq!(ab.stamps, ba.stamps);
        assert!(ab.clone().merge_from(&ab).is_empty(), "idempotent");
    }

    #[test]
    fn the_newest_status_of_each_instance_wins() {
        let mut a = Owner::new(1, 0);
        a.register("x", 1, at(0));
        let mut b = Owner::new(2, 0);
        b.inherit(&a.rec);
        let report = |o: &mut Owner, ms: f64, t| {
            let body = StatusBody {
                latency_ms: Some(ms),
                ..StatusBody::default()
            };
            o.rec.report("x", &body, t).expect("report");
            o.stamp("x", t);
        };
        report(&mut b, 9.0, at(20));
        report(&mut a, 1.0, at(10));
        a.rec.merge_from(&b.rec);
        assert_eq!(a.rec.instances["x"].status.latency_ms, 9.0);
        b.rec.merge_from(&a.rec);
        assert_eq!(b.rec.instances["x"].status.latency_ms, 9.0);
    }

    #[test]
    fn a_deregistration_by_an_owner_ten_minutes_behind_stays_done() {
        // The old owner registered x with a correct clock; the new owner's clock is 10 minutes
        // behind, so by wall clocks its removal would be older than the registration.
        let mut old = Owner::new(1, 0);
        old.register("x", 1, at(600));
        let stale_copy = old.rec.clone();
        let mut new = Owner::new(2, -600_000);
        new.inherit(&old.rec);
        new.deregister("x", at(601));
        // Anti-entropy with a replica still holding the registration does not undo it.
        let mut replica = stale_copy.clone();
        replica.merge_from(&new.rec);
        assert!(
            replica.instances.is_empty(),
            "the replica applies the removal"
        );
        new.rec.merge_from(&stale_copy);
        assert!(
            new.rec.instances.is_empty(),
            "a stale copy does not bring it back"
        );
        assert!(new.rec.index > stale_copy.index, "the index kept growing");
    }

    #[test]
    fn after_a_clock_ten_minutes_ahead_a_registration_still_works() {
        let mut fast = Owner::new(1, 600_000);
        fast.register("x", 1, at(0));
        fast.deregister("x", at(1));
        let mut normal = Owner::new(2, 0);
        normal.inherit(&fast.rec);
        normal.register("x", 2, at(2));
        assert_eq!(normal.rec.instances["x"].port, 2);
        let mut back = fast.rec.clone();
        back.merge_from(&normal.rec);
        assert_eq!(
            back.instances["x"].port, 2,
            "the re-registration wins everywhere"
        );
    }

    #[test]
    fn tombstones_are_forgotten_after_their_ttl() {
        let mut a = Owner::new(1, 0);
        a.register("x", 1, at(0));
        a.deregister("x", at(5));
        assert!(a.rec.forget_tombstones(at(6)).is_empty());
        let gone = a.rec.forget_tombstones(at(5) + Duration::days(8));
        assert_eq!(gone, ["x"]);
        assert!(a.rec.unit("x").is_none());
    }

    #[test]
    fn a_stored_tombstone_past_its_time_is_recognised_without_decoding_the_instance() {
        let mut a = Owner::new(1, 0);
        a.register("x", 1, at(0));
        a.register("y", 1, at(0));
        a.deregister("x", at(5));
        let tomb = a
            .rec
            .unit("x")
            .and_then(|u| u.to_bytes().ok())
            .unwrap_or_default();
        let live = a
            .rec
            .unit("y")
            .and_then(|u| u.to_bytes().ok())
            .unwrap_or_default();
        assert!(!Unit::is_expired_tombstone(
            &tomb,
            at(5) + Duration::days(6)
        ));
        assert!(Unit::is_expired_tombstone(&tomb, at(5) + Duration::days(7)));
        assert!(!Unit::is_expired_tombstone(
            &live,
            at(5) + Duration::days(700)
        ));
        assert!(!Unit::is_expired_tombstone(
            b"garbage",
            at(5) + Duration::days(700)
        ));
    }

    #[test]
    fn keys_name_their_service() {
        assert_eq!(
            split_unit_key(&unit_key("pay", "10.0.0.1:80")),
            Some(("pay", "10.0.0.1:80"))
        );
        assert_eq!(split_unit_key("u/pay/a/b"), Some(("pay", "a/b")));
        assert_eq!(service_of_key(&meta_key("pay")), Some("pay"));
        assert_eq!(service_of_key("svc/pay"), Some("pay"));
        assert_eq!(service_id_of_key("gvip/10.0.0.1"), None);
        assert!(unit_key("pay", "x").starts_with(&unit_prefix("pay")));
        assert!(!unit_key("pay", "x").starts_with(&unit_prefix("pa")));
    }

    #[test]
    fn the_policy_is_a_unit_that_replicates_merges_and_is_stored_like_an_instance() {
        use crate::registry::health::{Policy, POLICY_UNIT};
        let mut a = Owner::new(1, 0);
        a.register("x", 1, at(0));
        let policy = Policy {
            failures_before_critical: 3,
            successes_before_passing: 2,
            flap_half_life_secs: 60,
            panic_threshold: 0.25,
        };
        a.rec.set_policy(policy);
        a.stamp(POLICY_UNIT, at(1));
        let unit = a.rec.unit(POLICY_UNIT).expect("the policy unit");
        // Anti-entropy sees its version like an instance's.
        let key = unit_key("svc", POLICY_UNIT);
        let mark = Mark::of(&key, &unit.to_bytes().expect("encode"));
        assert_eq!(Some(mark.version), a.rec.version_of(POLICY_UNIT));
        assert_ne!(mark, Mark::default());
        assert_eq!(
            split_unit_key(&unit_key("svc", POLICY_UNIT)),
            Some(("svc", POLICY_UNIT))
        );
        // Stored and read back (a restart).
        let bytes = unit.to_bytes().expect("encode");
        assert_eq!(Unit::from_bytes("svc", &bytes).expect("decode"), unit);
        let stored =
            Record::from_stored("svc", None, [(POLICY_UNIT, bytes.as_slice())]).expect("record");
        assert_eq!(*stored.policy(), policy);
        assert!(stored.instances.is_empty(), "not an instance");
        // A replica (or a new owner) merging the copy takes it; an older policy loses.
        let mut b = Owner::new(2, 0);
        b.inherit(&a.rec);
        assert_eq!(*b.rec.policy(), policy);
        b.rec.set_policy(Policy::default());
        b.stamp(POLICY_UNIT, at(2));
        a.rec.merge_from(&b.rec);
        assert_eq!(*a.rec.policy(), Policy::default(), "the newer one wins");
        let mut stale = a.rec.clone();
        stale.apply_unit(POLICY_UNIT, unit);
        assert_eq!(*stale.policy(), Policy::default(), "an older one does not");
    }

    #[test]
    fn without_a_policy_an_instance_is_stored_as_before_the_policy_existed() {
        use crate::registry::State;
        let mut a = Owner::new(1, 0);
        a.register("x", 1, at(0));
        let before = a.rec.unit("x").expect("unit").to_bytes().expect("encode");
        let critical = StatusBody {
            state: Some(State::Critical),
            ..StatusBody::default()
        };
        a.rec.report("x", &critical, at(1)).expect("report");
        a.stamp("x", at(1));
        let after = a.rec.unit("x").expect("unit").to_bytes().expect("encode");
        // The body's variant (after the tag, format and head) is `Present` (0) in both.
        let variant = |b: &[u8]| {
            let (_, rest): (super::super::codec::UnitHeadForTests, &[u8]) =
                postcard::take_from_bytes(&b[2..]).expect("head");
            rest[0]
        };
        assert_eq!(variant(&before), 0);
        assert_eq!(variant(&after), 0);
    }

    #[test]
    fn health_bookkeeping_travels_with_the_instance() {
        use crate::registry::health::Policy;
        use crate::registry::State;
        let mut a = Owner::new(1, 0);
        a.rec.set_policy(Policy {
            failures_before_critical: 3,
            flap_half_life_secs: 100,
            ..Policy::default()
        });
        a.register("x", 1, at(0));
        let critical = StatusBody {
            state: Some(State::Critical),
            ..StatusBody::default()
        };
        a.rec.report("x", &critical, at(1)).expect("report");
        a.rec.report("x", &critical, at(2)).expect("report");
        a.stamp("x", at(2));
        let bytes = a.rec.unit("x").expect("unit").to_bytes().expect("encode");
        let mut b = Owner::new(2, 0);
        b.rec
            .apply_unit("x", Unit::from_bytes("svc", &bytes).expect("decode"));
        b.rec.set_policy(*a.rec.policy());
        // The third critical report at the new owner is the one that counts.
        let s = b.rec.report("x", &critical, at(3)).expect("report");
        assert_eq!(s.status.state, State::Critical, "the streak came along");
    }

    // ---- meta entries ------------------------------------------------------------------

    #[test]
    fn a_damaged_meta_entry_leaves_the_service_readable_and_is_merged_over() {
        let mut a = Owner::new(1, 0);
        a.register("x", 80, at(1));
        let unit = a.rec.unit("x").expect("unit");
        let bytes = unit.to_bytes().expect("encode");
        let damaged = [0xFFu8, 0x00, 0x13];
        assert!(decode_meta_value(&damaged).is_err());
        let mut stored = Record::from_stored("svc", Some(&damaged), [("x", bytes.as_slice())])
            .expect("a damaged meta entry does not make the service unreadable");
        assert!(stored.instances.contains_key("x"), "its instances are read");
        assert_eq!(stored.gvip, None);
        // Its mark differs from a good copy's, so anti-entropy merges the good one in.
        let good = meta(Some("10.212.0.7"), 1_000, 1, 4);
        let good_bytes = meta_bytes(&good).expect("encode");
        assert_ne!(Mark::of("s/svc", &damaged), Mark::of("s/svc", &good_bytes));
        assert!(stored.apply_meta(&decode_meta_value(&good_bytes).expect("decode")));
        assert_eq!(stored.gvip.as_deref(), Some("10.212.0.7"));
    }

    fn meta(gvip: Option<&str>, wall_ms: u64, node: u64, index: u64) -> Meta {
        Meta {
            gvip: gvip.map(String::from),
            gvip_at: Hlc {
                wall_ms,
                logical: 0,
                node,
            },
            index,
        }
    }

    /// Metas of one service as copies may hold them: none, gVips of unknown assignment (an
    /// earlier layout, 0.1.0), gVips assigned at different versions, two assigned at one
    /// (wall, logical) by two nodes, index floors up and down. Each through its stored form.
    fn metas() -> Vec<Meta> {
        [
            meta(None, 0, 0, 7),
            meta(Some("10.212.0.9"), 0, 0, 3),
            meta(Some("10.212.0.4"), 0, 0, 1),
            meta(Some("10.212.1.1"), 2_000, 1, 12),
            meta(Some("10.212.1.2"), 1_000, 2, 5),
            meta(Some("10.212.1.3"), 1_000, 1, 9),
            meta(Some("10.212.0.2"), 1_000, 1, 2),
        ]
        .into_iter()
        .map(|m| decode_meta_value(&meta_bytes(&m).expect("encode")).expect("decode"))
        .collect()
    }

    /// `metas` applied in this order to an empty copy: (gVip, its version, index, stored form).
    fn applied(metas: &[&Meta]) -> (Option<String>, Hlc, u64, Vec<u8>) {
        let mut r = rec();
        for m in metas {
            r.apply_meta(m);
        }
        let bytes = meta_value(&r).expect("encode");
        (r.gvip.clone(), r.meta().gvip_at, r.index, bytes)
    }

    /// Every permutation of `items` (Heap's algorithm).
    fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
        fn go<T: Clone>(k: usize, a: &mut Vec<T>, out: &mut Vec<Vec<T>>) {
            if k <= 1 {
                out.push(a.clone());
                return;
            }
            for i in 0..k {
                go(k - 1, a, out);
                let j = if k.is_multiple_of(2) { i } else { 0 };
                a.swap(j, k - 1);
            }
        }
        let mut a = items.to_vec();
        let mut out = Vec::new();
        go(a.len(), &mut a, &mut out);
        out
    }

    #[test]
    fn meta_entries_merge_to_the_same_value_whatever_the_order_and_repetition() {
        let all = metas();
        let refs: Vec<&Meta> = all.iter().collect();
        let expected = applied(&refs);
        for order in permutations(&refs) {
            assert_eq!(applied(&order), expected, "order {order:?}");
            // Twice over, in that order: idempotent.
            let twice: Vec<&Meta> = order.iter().chain(order.iter()).copied().collect();
            assert_eq!(applied(&twice), expected);
        }
        // Commutative and associative pairwise, idempotent.
        for a in &all {
            let mut aa = a.clone();
            assert!(!aa.merge(a), "a meta merged with itself changes nothing");
            for b in &all {
                let (mut ab, mut ba) = (a.clone(), b.clone());
                ab.merge(b);
                ba.merge(a);
                assert_eq!(ab, ba, "{a:?} ⊔ {b:?}");
                for c in &all {
                    let mut left = a.clone();
                    left.merge(b);
                    left.merge(c);
                    let mut bc = b.clone();
                    bc.merge(c);
                    let mut right = a.clone();
                    right.merge(&bc);
                    assert_eq!(left, right, "({a:?} ⊔ {b:?}) ⊔ {c:?}");
                }
            }
        }
        // A gVip of unknown assignment counts as the first (the lower address of two), the
        // index floor is the largest.
        assert_eq!(expected.0.as_deref(), Some("10.212.0.4"));
        assert_eq!(expected.2, 12);
    }

    #[test]
    fn the_first_assigned_gvip_wins_on_both_copies() {
        // Copy A holds the gVip clients saw first; copy B missed it and, as the new owner,
        // assigned another later. Each merges the other's meta entry.
        let first = meta(Some("10.212.0.7"), 1_000, 0xa, 3);
        let later = meta(Some("10.212.9.9"), 5_000, 0xb, 4);
        let (mut a, mut b) = (rec(), rec());
        a.apply_meta(&first);
        b.apply_meta(&later);
        let (ma, mb) = (a.meta(), b.meta());
        a.apply_meta(&mb);
        assert!(b.apply_meta(&ma));
        assert_eq!(
            a.gvip.as_deref(),
            Some("10.212.0.7"),
            "A keeps its own, the first"
        );
        assert_eq!(b.gvip, a.gvip);
        // The index floor is the larger on both; the stored forms are the same bytes.
        assert_eq!(a.index, 4);
        assert_eq!(meta_value(&a).expect("a"), meta_value(&b).expect("b"));
        // Two gVips under one version (which two owners cannot write, the version naming its
        // node; but a damaged copy can) are ordered by address: the same on every copy.
        let x = meta(Some("10.212.0.8"), 1_000, 0xa, 0);
        let y = meta(Some("10.212.0.3"), 1_000, 0xa, 0);
        assert_eq!(both_ways(&x, &y).gvip.as_deref(), Some("10.212.0.3"));
    }

    /// `x` merged into `y` and `y` into `x`: the same, returned.
    fn both_ways(x: &Meta, y: &Meta) -> Meta {
        let (mut xy, mut yx) = (x.clone(), y.clone());
        xy.merge(y);
        yx.merge(x);
        assert_eq!(xy, yx, "{x:?} ⊔ {y:?}");
        xy
    }

    #[test]
    fn a_meta_entry_of_the_earlier_layout_converges_with_a_new_one() {
        // Written before assignment versions were kept (or converted from 0.1.0): its gVip
        // was there before any this version assigns, and wins on both copies.
        let old = decode_meta_value(&meta_bytes(&meta(Some("10.212.3.3"), 0, 0, 8)).expect("e"))
            .expect("d");
        assert_eq!(old.gvip_at, Hlc::default());
        let new = meta(Some("10.212.0.2"), 1_000, 1, 2);
        let a = both_ways(&old, &new);
        assert_eq!(a.gvip.as_deref(), Some("10.212.3.3"));
        assert_eq!(a.index, 8);
        // Two of the earlier layout: the lower address, on both.
        let other = meta(Some("10.212.2.2"), 0, 0, 1);
        assert_eq!(both_ways(&old, &other).gvip.as_deref(), Some("10.212.2.2"));
    }

    #[test]
    fn meta_entries_that_differ_in_any_way_have_different_marks() {
        let key = meta_key("svc");
        let a = meta(Some("10.212.0.7"), 1_000, 1, 3);
        let b = meta(Some("10.212.9.9"), 2_000, 2, 3);
        let (ba, bb) = (meta_bytes(&a).expect("a"), meta_bytes(&b).expect("b"));
        assert_ne!(Mark::of(&key, &ba), Mark::of(&key, &bb));
        let none = meta_bytes(&Meta::default()).expect("none");
        assert_ne!(
            Mark::of(&key, &none),
            Mark::of(&key, &ba),
            "a gVip against none"
        );
        let floor = meta_bytes(&Meta {
            index: 4,
            ..a.clone()
        })
        .expect("floor");
        assert_ne!(
            Mark::of(&key, &floor),
            Mark::of(&key, &ba),
            "another index floor"
        );
        assert!(Mark::merges(&key));
        assert!(!Mark::merges(&unit_key("svc", "x")));
        // Merged both ways, the copies hold one value, hence one mark.
        assert_eq!(both_ways(&a, &b), a);
    }
}
