//! Merging two copies of one record that diverged (both halves of a partitioned ring took
//! writes): per instance, the latest event wins — a registration or status change at its time,
//! a deregistration or TTL removal at the time of its tombstone. The merge is commutative,
//! associative and idempotent, so replicas converge whatever order copies meet in.
//!
//! Times come from the owners' clocks; with clocks skewed across hosts, the later clock wins a
//! tie between concurrent changes to the same instance.

use chrono::{DateTime, Utc};

use super::model::Record;

/// How long a deregistration is remembered so a stale copy cannot bring the instance back.
pub const TOMBSTONE_TTL_SECS: i64 = 7 * 24 * 3600;

enum Event {
    Present(DateTime<Utc>),
    Removed(DateTime<Utc>),
    Unknown,
}

impl Record {
    /// Remember that instance `id` was removed at `at`.
    pub fn tombstone(&mut self, id: &str, at: DateTime<Utc>) {
        let t = self.removed.entry(id.to_string()).or_insert(at);
        *t = (*t).max(at);
    }

    /// Forget tombstones older than [`TOMBSTONE_TTL_SECS`] at `now`.
    pub fn forget_tombstones(&mut self, now: DateTime<Utc>) {
        self.removed
            .retain(|_, at| (now - *at).num_seconds() < TOMBSTONE_TTL_SECS);
    }

    fn changed_at(&self, id: &str) -> Option<DateTime<Utc>> {
        let inst = self.instances.get(id)?;
        let seen = self.liveness.get(id).map(|l| l.last_seen);
        Some(
            inst.status
                .updated_at
                .max(inst.registered_at)
                .max(seen.unwrap_or(inst.registered_at)),
        )
    }

    fn event(&self, id: &str) -> Event {
        match (self.changed_at(id), self.removed.get(id)) {
            (Some(c), Some(r)) if *r > c => Event::Removed(*r),
            (Some(c), _) => Event::Present(c),
            (None, Some(r)) => Event::Removed(*r),
            (None, None) => Event::Unknown,
        }
    }

    /// Merge `other` into this copy; returns whether anything changed. The version is left to
    /// the caller.
    pub fn merge_from(&mut self, other: &Record) -> bool {
        let mut ids: Vec<String> = self
            .instances
            .keys()
            .chain(self.removed.keys())
            .chain(other.instances.keys())
            .chain(other.removed.keys())
            .cloned()
            .collect();
        ids.sort();
        ids.dedup();
        let before = self.clone();
        for id in ids {
            let take_other = match (before.event(&id), other.event(&id)) {
                (_, Event::Unknown) => false,
                (Event::Unknown, _) => true,
                (Event::Present(a), Event::Present(b)) => {
                    b > a || (b == a && tie_break(&before, other, &id))
                }
                (Event::Removed(a), Event::Removed(b)) => b > a,
                (Event::Present(a), Event::Removed(b)) => b > a,
                (Event::Removed(a), Event::Present(b)) => b > a,
            };
            if take_other {
                match other.instances.get(&id) {
                    Some(inst) if !matches!(other.event(&id), Event::Removed(_)) => {
                        self.instances.insert(id.clone(), inst.clone());
                        match other.liveness.get(&id) {
                            Some(l) => {
                                self.liveness.insert(id.clone(), l.clone());
                            }
                            None => {
                                self.liveness.remove(&id);
                            }
                        }
                    }
                    _ => {
                        self.instances.remove(&id);
                        self.liveness.remove(&id);
                    }
                }
                if let Some(r) = other.removed.get(&id) {
                    self.tombstone(&id, *r);
                }
            } else if let Some(r) = other.removed.get(&id) {
                // Keep the later tombstone time even when our state wins.
                if self.instances.contains_key(&id) || self.removed.contains_key(&id) {
                    self.tombstone(&id, *r);
                }
            }
        }
        if self.gvip.is_none() {
            self.gvip = other.gvip.clone();
        }
        *self != before
    }
}

/// Equal times, different content: a deterministic choice both sides make alike.
fn tie_break(mine: &Record, other: &Record, id: &str) -> bool {
    let a = serde_json::to_string(&mine.instances.get(id)).unwrap_or_default();
    let b = serde_json::to_string(&other.instances.get(id)).unwrap_or_default();
    b > a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::model::{RegisterBody, StatusBody};
    use chrono::Duration;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).expect("time")
    }

    fn rec() -> Record {
        Record::new("svc", None).expect("record")
    }

    #[test]
    fn instances_registered_on_either_side_are_all_kept() {
        let mut a = rec();
        a.register("x", &RegisterBody::new("h", 1), t(0))
            .expect("reg");
        let mut b = a.clone();
        a.register("from-a", &RegisterBody::new("h", 2), t(5))
            .expect("reg");
        b.register("from-b", &RegisterBody::new("h", 3), t(6))
            .expect("reg");
        let mut ab = a.clone();
        assert!(ab.merge_from(&b));
        let mut ba = b.clone();
        ba.merge_from(&a);
        let ids: Vec<&String> = ab.instances.keys().collect();
        assert_eq!(ids, vec!["from-a", "from-b", "x"]);
        assert_eq!(ab.instances, ba.instances, "commutative");
        assert!(!ab.clone().merge_from(&ab), "idempotent");
    }

    #[test]
    fn the_newest_status_of_each_instance_wins() {
        let mut a = rec();
        a.register("x", &RegisterBody::new("h", 1), t(0))
            .expect("reg");
        let mut b = a.clone();
        let late = StatusBody {
            latency_ms: Some(9.0),
            ..StatusBody::default()
        };
        let early = StatusBody {
            latency_ms: Some(1.0),
            ..StatusBody::default()
        };
        b.report("x", &late, t(20)).expect("report");
        a.report("x", &early, t(10)).expect("report");
        a.merge_from(&b);
        assert_eq!(a.instances["x"].status.latency_ms, 9.0);
        b.merge_from(&a);
        assert_eq!(b.instances["x"].status.latency_ms, 9.0);
    }

    #[test]
    fn a_later_deregistration_wins_and_an_older_one_does_not() {
        let mut a = rec();
        a.register("x", &RegisterBody::new("h", 1), t(0))
            .expect("reg");
        let stale = a.clone();
        a.deregister("x").expect("dereg");
        a.tombstone("x", t(5));
        let mut s = stale.clone();
        s.merge_from(&a);
        assert!(
            s.instances.is_empty(),
            "removal at t5 beats registration at t0"
        );
        let mut a2 = a.clone();
        a2.merge_from(&stale);
        assert!(
            a2.instances.is_empty(),
            "a stale copy does not bring it back"
        );
        let mut again = stale.clone();
        again
            .register("x", &RegisterBody::new("h", 1), t(9))
            .expect("reg");
        a2.merge_from(&again);
        assert!(
            a2.instances.contains_key("x"),
            "registering again after removal wins"
        );
        a2.forget_tombstones(t(9) + Duration::days(8));
        assert!(a2.removed.is_empty());
    }
}
