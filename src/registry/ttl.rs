//! TTL health, run by a record's owner.
//!
//! An instance registered with `ttl_secs = T` must show a sign of life (a status report, or a new
//! registration) at least every T seconds. With `last_seen` its last sign of life:
//!
//! - at `last_seen + T` exactly (not a moment before) it becomes `critical`, with a note saying
//!   why and `updated_at` set to that instant;
//! - at `last_seen + T + grace_factor × T` exactly it is removed.
//!
//! The owner calls [`Record::sweep`] at [`Record::next_deadline`] (and whenever it likes; a sweep
//! before any deadline changes nothing), then stamps and replicates each instance it changed.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};

use super::model::{Liveness, Record, State};

/// Default grace period, as a multiple of the TTL, between an instance turning critical and its
/// removal.
pub const DEFAULT_GRACE_FACTOR: u32 = 10;

/// `t + secs`, or `None` when that is beyond what a timestamp can hold (treated as "never").
fn plus_secs(t: DateTime<Utc>, secs: u64) -> Option<DateTime<Utc>> {
    let secs = i64::try_from(secs).ok()?;
    t.checked_add_signed(TimeDelta::try_seconds(secs)?)
}

/// When the instance turns critical and when it is removed.
fn deadlines(
    last_seen: DateTime<Utc>,
    ttl_secs: u64,
    grace_factor: u32,
) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
    let expiry = plus_secs(last_seen, ttl_secs);
    let removal = ttl_secs
        .checked_mul(u64::from(grace_factor))
        .and_then(|grace| expiry.and_then(|e| plus_secs(e, grace)));
    (expiry, removal)
}

impl Record {
    /// The last sign of life of instance `id`. Falls back to the later of registration and last
    /// status change for an instance without bookkeeping (inserted directly into `instances`).
    fn last_seen(&self, id: &str) -> Option<DateTime<Utc>> {
        if let Some(l) = self.liveness.get(id) {
            return Some(l.last_seen);
        }
        let inst = self.instances.get(id)?;
        Some(inst.registered_at.max(inst.status.updated_at))
    }

    /// Applies TTL expiry as of `now`: instances silent for one TTL become critical, those silent
    /// for a further `grace_factor` TTLs are removed. Returns the ids of the instances that changed (the
    /// owner stamps and replicates). Leaves the versions alone.
    pub fn sweep(&mut self, now: DateTime<Utc>, grace_factor: u32) -> Vec<String> {
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        let ids: Vec<String> = self.instances.keys().cloned().collect();
        for id in ids {
            let Some(last_seen) = self.last_seen(&id) else {
                continue;
            };
            let Some(ttl) = self.instances.get(&id).and_then(|i| i.ttl_secs) else {
                continue;
            };
            let (expiry, removal) = deadlines(last_seen, ttl, grace_factor);
            if let Some(r) = removal.filter(|r| now >= *r) {
                removed.push((id, r));
                continue;
            }
            let Some(expiry) = expiry.filter(|e| now >= *e) else {
                continue;
            };
            let Some(instance) = self.instances.get_mut(&id) else {
                continue;
            };
            let liveness = self
                .liveness
                .entry(id.clone())
                .or_insert_with(|| Liveness::new(last_seen));
            if liveness.expired_from.is_none() {
                let status = &mut Arc::make_mut(instance).status;
                liveness.expired_from = Some((status.state, std::mem::take(&mut status.note)));
                status.state = State::Critical;
                status.note = format!("TTL expired: no status report for {ttl}s");
                status.updated_at = expiry;
                changed.push(id);
            }
        }
        for (id, at) in removed {
            self.instances.remove(&id);
            self.liveness.remove(&id);
            self.tombstone(&id, at);
            changed.push(id);
        }
        changed
    }

    /// The earliest instant at which [`Record::sweep`] would change something: the next expiry
    /// or removal. `None` when no instance has a TTL.
    pub fn next_deadline(&self, grace_factor: u32) -> Option<DateTime<Utc>> {
        self.instances
            .keys()
            .filter_map(|id| self.deadline_of(id, grace_factor))
            .min()
    }

    /// The earliest instant at which [`Record::sweep`] would change instance `id`: its expiry,
    /// or its removal once expired. `None` without a TTL (or without the instance).
    pub fn deadline_of(&self, id: &str, grace_factor: u32) -> Option<DateTime<Utc>> {
        let ttl = self.instances.get(id)?.ttl_secs?;
        let last_seen = self.last_seen(id)?;
        let (expiry, removal) = deadlines(last_seen, ttl, grace_factor);
        let expired = self
            .liveness
            .get(id)
            .is_some_and(|l| l.expired_from.is_some());
        if expired {
            removal
        } else {
            expiry
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::model::tests::{at, record};
    use crate::registry::model::{RegisterBody, StatusBody};

    const MS: TimeDelta = TimeDelta::milliseconds(1);

    fn with_ttl(ttl: i64) -> RegisterBody {
        let mut body = RegisterBody::new("10.0.0.7", 8080);
        body.ttl_secs = Some(ttl);
        body
    }

    #[test]
    fn instance_turns_critical_exactly_at_ttl_not_before() {
        let mut r = record();
        r.register("a", &with_ttl(30), at(0)).unwrap();
        assert_eq!(r.next_deadline(DEFAULT_GRACE_FACTOR), Some(at(30)));

        assert!(r.sweep(at(30) - MS, DEFAULT_GRACE_FACTOR).is_empty());
        assert_eq!(r.instances["a"].status.state, State::Passing);

        assert!(!r.sweep(at(30), DEFAULT_GRACE_FACTOR).is_empty());
        let s = &r.instances["a"].status;
        assert_eq!(s.state, State::Critical);
        assert_eq!(s.note, "TTL expired: no status report for 30s");
        assert_eq!(s.updated_at, at(30));

        assert!(
            r.sweep(at(31), DEFAULT_GRACE_FACTOR).is_empty(),
            "expiry applies once"
        );
    }

    #[test]
    fn instance_is_removed_exactly_after_the_grace_period() {
        let mut r = record();
        r.register("a", &with_ttl(30), at(0)).unwrap();
        assert!(!r.sweep(at(30), DEFAULT_GRACE_FACTOR).is_empty());
        // 30 s TTL + 10 × 30 s grace.
        assert_eq!(r.next_deadline(DEFAULT_GRACE_FACTOR), Some(at(330)));
        assert!(r.sweep(at(330) - MS, DEFAULT_GRACE_FACTOR).is_empty());
        assert!(r.instances.contains_key("a"));
        assert!(!r.sweep(at(330), DEFAULT_GRACE_FACTOR).is_empty());
        assert!(r.is_empty());
        assert!(r.gvip.is_some(), "the emptied record keeps its gVip");
        assert_eq!(r.next_deadline(DEFAULT_GRACE_FACTOR), None);
    }

    #[test]
    fn a_late_sweep_removes_directly() {
        let mut r = record();
        r.register("a", &with_ttl(1), at(0)).unwrap();
        assert!(!r.sweep(at(1000), DEFAULT_GRACE_FACTOR).is_empty());
        assert!(r.is_empty());
    }

    #[test]
    fn grace_factor_is_honoured() {
        let mut r = record();
        r.register("a", &with_ttl(10), at(0)).unwrap();
        assert_eq!(r.next_deadline(0), Some(at(10)));
        assert!(!r.sweep(at(10), 0).is_empty());
        assert!(r.is_empty());
    }

    #[test]
    fn report_renews_the_ttl_and_restores_the_state_before_expiry() {
        let mut r = record();
        r.register("a", &with_ttl(30), at(0)).unwrap();
        let warn = StatusBody {
            state: Some(State::Warning),
            note: Some("slow".into()),
            ..StatusBody::default()
        };
        r.report("a", &warn, at(20)).unwrap();
        assert_eq!(r.next_deadline(DEFAULT_GRACE_FACTOR), Some(at(50)));
        assert!(r.sweep(at(49), DEFAULT_GRACE_FACTOR).is_empty());
        assert!(!r.sweep(at(50), DEFAULT_GRACE_FACTOR).is_empty());
        assert_eq!(r.instances["a"].status.state, State::Critical);

        // A bare heartbeat brings back what TTL expiry overwrote.
        let s = &r
            .report("a", &StatusBody::default(), at(60))
            .unwrap()
            .status;
        assert_eq!((s.state, s.note.as_str()), (State::Warning, "slow"));
        assert_eq!(r.next_deadline(DEFAULT_GRACE_FACTOR), Some(at(90)));

        // A heartbeat that names a state sets it.
        r.sweep(at(90), DEFAULT_GRACE_FACTOR);
        let pass = StatusBody {
            state: Some(State::Passing),
            ..StatusBody::default()
        };
        let s = &r.report("a", &pass, at(95)).unwrap().status;
        assert_eq!((s.state, s.note.as_str()), (State::Passing, "slow"));
    }

    #[test]
    fn registering_again_is_a_heartbeat() {
        let mut r = record();
        r.register("a", &with_ttl(30), at(0)).unwrap();
        r.sweep(at(30), DEFAULT_GRACE_FACTOR);
        r.register("a", &with_ttl(30), at(40)).unwrap();
        assert_eq!(r.instances["a"].status.state, State::Passing);
        assert_eq!(r.instances["a"].status.note, "");
        assert_eq!(r.next_deadline(DEFAULT_GRACE_FACTOR), Some(at(70)));
    }

    #[test]
    fn instances_without_ttl_never_expire() {
        let mut r = record();
        r.register("a", &RegisterBody::new("h", 1), at(0)).unwrap();
        assert_eq!(r.next_deadline(DEFAULT_GRACE_FACTOR), None);
        assert!(r.sweep(at(1_000_000_000), DEFAULT_GRACE_FACTOR).is_empty());
        assert_eq!(r.instances["a"].status.state, State::Passing);
    }

    #[test]
    fn reported_critical_instance_still_expires_and_is_removed() {
        let mut r = record();
        r.register("a", &with_ttl(5), at(0)).unwrap();
        let crit = StatusBody {
            state: Some(State::Critical),
            ..StatusBody::default()
        };
        r.report("a", &crit, at(1)).unwrap();
        assert_eq!(r.next_deadline(DEFAULT_GRACE_FACTOR), Some(at(6)));
        assert!(!r.sweep(at(6), DEFAULT_GRACE_FACTOR).is_empty());
        assert_eq!(r.next_deadline(DEFAULT_GRACE_FACTOR), Some(at(56)));
        assert!(!r.sweep(at(56), DEFAULT_GRACE_FACTOR).is_empty());
        assert!(r.is_empty());
    }

    #[test]
    fn next_deadline_is_the_earliest_over_instances() {
        let mut r = record();
        r.register("slow", &with_ttl(60), at(0)).unwrap();
        r.register("fast", &with_ttl(10), at(5)).unwrap();
        r.register("none", &RegisterBody::new("h", 1), at(0))
            .unwrap();
        assert_eq!(r.next_deadline(DEFAULT_GRACE_FACTOR), Some(at(15)));
    }

    #[test]
    fn expiry_survives_replication_through_bytes() {
        let mut r = record();
        r.register("a", &with_ttl(30), at(0)).unwrap();
        r.sweep(at(30), DEFAULT_GRACE_FACTOR);
        r.stamp("a", crate::registry::Hlc::default());
        let bytes = r.unit("a").unwrap().to_bytes().unwrap();
        let mut copy = record();
        assert!(copy.apply_unit(
            "a",
            crate::registry::Unit::from_bytes("payments", &bytes).unwrap()
        ));
        assert_eq!(copy.next_deadline(DEFAULT_GRACE_FACTOR), Some(at(330)));
        let s = &copy
            .report("a", &StatusBody::default(), at(40))
            .unwrap()
            .status;
        assert_eq!(s.state, State::Passing);
    }

    #[test]
    fn instance_without_bookkeeping_counts_from_its_registration() {
        let mut r = record();
        r.register("a", &with_ttl(30), at(0)).unwrap();
        r.liveness.clear();
        assert_eq!(r.next_deadline(DEFAULT_GRACE_FACTOR), Some(at(30)));
        assert!(!r.sweep(at(30), DEFAULT_GRACE_FACTOR).is_empty());
        assert_eq!(r.next_deadline(DEFAULT_GRACE_FACTOR), Some(at(330)));
    }

    #[test]
    fn huge_grace_factor_never_removes_and_does_not_overflow() {
        let mut r = record();
        r.register("a", &with_ttl(365 * 24 * 3600), at(0)).unwrap();
        r.sweep(at(365 * 24 * 3600), u32::MAX);
        assert_eq!(r.instances["a"].status.state, State::Critical);
        assert_eq!(r.next_deadline(u32::MAX), None);
        assert!(r.sweep(DateTime::<Utc>::MAX_UTC, u32::MAX).is_empty());
    }
}
