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

use super::model::{Liveness, Name, Record, State};

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
        match self.liveness.get(id) {
            Some(l) => Some(l.last_seen),
            None => self.instances.get(id).map(|i| i.last_changed()),
        }
    }

    /// Applies TTL expiry as of `now`: instances silent for one TTL become critical, those silent
    /// for a further `grace_factor` TTLs are removed; instances held by flap damping whose
    /// penalty has decayed are released. Returns the ids of the instances that changed (the
    /// owner stamps and replicates). Leaves the versions alone.
    pub fn sweep(&mut self, now: DateTime<Utc>, grace_factor: u32) -> Vec<String> {
        self.sweep_holding(now, grace_factor, None).changed
    }

    /// [`Record::sweep`], removing nothing before `hold_removals_until` (self-preservation:
    /// expired instances still turn critical). Also says which leases lapsed (their TTLs).
    pub fn sweep_holding(
        &mut self,
        now: DateTime<Utc>,
        grace_factor: u32,
        hold_removals_until: Option<DateTime<Utc>>,
    ) -> Swept {
        let mut swept = Swept::default();
        let mut removed = Vec::new();
        let policy = self.policy;
        let ids: Vec<Name> = self.instances.keys().cloned().collect();
        for id in ids {
            // Looked at before anything is changed: `get_mut` copies every node on its way
            // that the record shares (with the cached copy it was cloned from), so taking it
            // for every instance would copy both maps whole at each sweep of the service.
            let release_due = self
                .liveness
                .get(&id)
                .is_some_and(|l| l.health.release_due(now, &policy));
            let held = if release_due {
                (self.instances.get_mut(&id), self.liveness.get_mut(&id))
            } else {
                (None, None)
            };
            if let (Some(instance), Some(liveness)) = held {
                if let Some(state) = liveness.health.release(now, &policy) {
                    let instance = Arc::make_mut(instance);
                    instance.flapping = false;
                    match &mut liveness.expired_from {
                        // Expired meanwhile: the heartbeat that comes back restores this one.
                        Some((before, _)) => *before = state,
                        None => instance.status.state = state,
                    }
                    swept.changed.push(id.to_string());
                }
            }
            let Some(last_seen) = self.last_seen(&id) else {
                continue;
            };
            let Some(ttl) = self.instances.get(&id).and_then(|i| i.ttl_secs) else {
                continue;
            };
            let (expiry, removal) = deadlines(last_seen, ttl, grace_factor);
            let removal = removal.map(|r| hold_removals_until.map_or(r, |h| r.max(h)));
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
                if status.state != State::Critical {
                    liveness.health.since = Some(expiry);
                }
                status.state = State::Critical;
                status.note = format!("TTL expired: no status report for {ttl}s");
                status.updated_at = expiry;
                swept.lapsed.push(ttl);
                if swept.changed.last().map(String::as_str) != Some(&*id) {
                    swept.changed.push(id.to_string());
                }
            }
        }
        for (id, at) in removed {
            self.instances.remove(&id);
            self.liveness.remove(&id);
            self.tombstone(&id, at);
            if swept.changed.last().map(String::as_str) != Some(&*id) {
                swept.changed.push(id.to_string());
            }
        }
        swept
    }

    /// The earliest instant at which [`Record::sweep`] would change something: the next expiry,
    /// removal or release. `None` when no instance has a TTL or is held.
    pub fn next_deadline(&self, grace_factor: u32) -> Option<DateTime<Utc>> {
        self.next_deadline_holding(grace_factor, None)
    }

    /// [`Record::next_deadline`] with removals held until `hold_removals_until`.
    pub fn next_deadline_holding(
        &self,
        grace_factor: u32,
        hold_removals_until: Option<DateTime<Utc>>,
    ) -> Option<DateTime<Utc>> {
        self.instances
            .keys()
            .filter_map(|id| self.deadline_holding(id, grace_factor, hold_removals_until))
            .min()
    }

    /// The earliest instant at which [`Record::sweep`] would change instance `id`: its expiry,
    /// or its removal once expired, or its release from flap damping. `None` without a TTL
    /// and not held (or without the instance).
    pub fn deadline_of(&self, id: &str, grace_factor: u32) -> Option<DateTime<Utc>> {
        self.deadline_holding(id, grace_factor, None)
    }

    fn deadline_holding(
        &self,
        id: &str,
        grace_factor: u32,
        hold_removals_until: Option<DateTime<Utc>>,
    ) -> Option<DateTime<Utc>> {
        // One look into each map: this runs for every instance of every write.
        let liveness = self.liveness.get(id);
        let release = liveness.and_then(|l| l.health.release_at(&self.policy));
        let ttl_deadline = || {
            let instance = self.instances.get(id)?;
            let ttl = instance.ttl_secs?;
            let last_seen = liveness.map_or_else(|| instance.last_changed(), |l| l.last_seen);
            let (expiry, removal) = deadlines(last_seen, ttl, grace_factor);
            let expired = liveness.is_some_and(|l| l.expired_from.is_some());
            if expired {
                removal.map(|r| hold_removals_until.map_or(r, |h| r.max(h)))
            } else {
                expiry
            }
        };
        match (release, ttl_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Instance `id`'s lease, counted as [`Record::leases`] counts it (zeros without one).
    pub fn lease(&self, id: &str) -> Leases {
        let held = self.instances.get(id).is_some_and(|i| i.ttl_secs.is_some());
        Leases {
            held: usize::from(held),
            lapsed: usize::from(held && self.expired_since(id).is_some()),
        }
    }

    /// The TTL leases this record holds: instances with a TTL, and how many of them have
    /// lapsed (turned critical by expiry, not yet removed).
    pub fn leases(&self) -> Leases {
        let mut leases = Leases::default();
        for (id, instance) in &self.instances {
            if instance.ttl_secs.is_some() {
                leases.held += 1;
                if self.expired_since(id).is_some() {
                    leases.lapsed += 1;
                }
            }
        }
        leases
    }
}

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Swept {
    /// The instances it changed (expired, released or removed), each once.
    pub changed: Vec<String>,
    /// The TTL of every lease that lapsed in this sweep.
    pub lapsed: Vec<u64>,
}

/// The TTL leases of a record (see [`Record::leases`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Leases {
    /// Instances with a TTL.
    pub held: usize,
    /// Of them, those whose lease lapsed (critical by expiry, not yet removed).
    pub lapsed: usize,
}

// ---- self-preservation ----------------------------------------------------------------------

/// Self-preservation engages when more than this share of the leases an owner holds lapse
/// within one TTL window...
pub const PRESERVATION_SHARE: f64 = 0.15;

/// ...and at least this many of them: one or two silent instances are not a network problem
/// but instances that went away, whatever share of a small owner's leases they are (one of
/// three is 33%), and they are removed on time.
pub const PRESERVATION_MIN_LAPSES: usize = 3;

/// Self-preservation ends, at the latest, after this many grace periods (of the longest TTL
/// that lapsed): a real mass departure is still cleaned up.
pub const PRESERVATION_GRACE_PERIODS: u32 = 3;

/// Most lapses remembered (they are forgotten after their TTL window anyway).
const LAPSES_MAX: usize = 100_000;

/// An owner's self-preservation (API.md, "Health beyond a state"), without I/O.
///
/// The owner tells it the leases each service it owns holds ([`Preservation::set`], from
/// [`Record::leases`]) and every lease that lapses ([`Preservation::lapsed`]); it measures
/// the lapses of one TTL window against the leases actually held, not against an assumed
/// heartbeat rate. While it is on, the owner still turns silent instances critical but
/// removes none before [`Preservation::hold_until`]. It ends when the lapsed leases are back
/// to at most the share (reports recovered), or after [`PRESERVATION_GRACE_PERIODS`] grace
/// periods.
#[derive(Debug, Default)]
pub struct Preservation {
    leases: std::collections::HashMap<String, Leases>,
    /// (when, TTL) of recent lapses, oldest first.
    lapses: std::collections::VecDeque<(DateTime<Utc>, u64)>,
    /// While on: since when, and until when at the latest.
    on: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// A change of self-preservation, for the log and the metric.
#[derive(Debug, Clone, PartialEq)]
pub enum Turned {
    /// It started: `lapsed` of `held` leases lapsed within one TTL window.
    On {
        /// Lapses in the window.
        lapsed: usize,
        /// Leases held.
        held: usize,
        /// Removals held until then at the latest.
        until: DateTime<Utc>,
    },
    /// It ended: reports recovered (`timed_out` false) or its time ran out.
    Off {
        /// Whether it ended by its time limit rather than by recovery.
        timed_out: bool,
        /// Leases still lapsed.
        lapsed: usize,
    },
}

impl Preservation {
    /// The leases of one owned service now.
    pub fn set(&mut self, service: &str, leases: Leases) {
        if leases == Leases::default() {
            self.leases.remove(service);
        } else {
            self.leases.insert(service.to_string(), leases);
        }
    }

    /// Change the leases of one owned service from `before` to `after` (one write's effect).
    pub fn adjust(&mut self, service: &str, before: Leases, after: Leases) {
        if before == after {
            return;
        }
        let held = self.leases.get(service).copied().unwrap_or_default();
        let now = Leases {
            held: (held.held + after.held).saturating_sub(before.held),
            lapsed: (held.lapsed + after.lapsed).saturating_sub(before.lapsed),
        };
        self.set(service, now);
    }

    /// The services with lapsed leases (their removals may be due once this ends).
    pub fn lapsed_services(&self) -> Vec<String> {
        self.leases
            .iter()
            .filter(|(_, l)| l.lapsed > 0)
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// `service` is no longer owned here.
    pub fn forget(&mut self, service: &str) {
        self.leases.remove(service);
    }

    /// A lease with `ttl_secs` lapsed at `at`.
    pub fn lapsed(&mut self, at: DateTime<Utc>, ttl_secs: u64) {
        if self.lapses.len() >= LAPSES_MAX {
            self.lapses.pop_front();
        }
        self.lapses.push_back((at, ttl_secs));
    }

    /// Whether removals are held now.
    pub fn is_on(&self) -> bool {
        self.on.is_some()
    }

    /// Removals wait until then (while on).
    pub fn hold_until(&self) -> Option<DateTime<Utc>> {
        self.on.map(|(_, until)| until)
    }

    fn totals(&self) -> Leases {
        self.leases.values().fold(Leases::default(), |a, l| Leases {
            held: a.held + l.held,
            lapsed: a.lapsed + l.lapsed,
        })
    }

    fn over_share(count: usize, held: usize) -> bool {
        count >= PRESERVATION_MIN_LAPSES && count as f64 > PRESERVATION_SHARE * held as f64
    }

    /// Decide at `now` whether self-preservation starts or ends.
    pub fn update(&mut self, now: DateTime<Utc>, grace_factor: u32) -> Option<Turned> {
        while let Some(&(at, ttl)) = self.lapses.front() {
            if plus_secs(at, ttl).is_some_and(|end| end < now) {
                self.lapses.pop_front();
            } else {
                break;
            }
        }
        let totals = self.totals();
        match self.on {
            Some((_, until)) => {
                let timed_out = now >= until;
                if timed_out || !Self::over_share(totals.lapsed, totals.held) {
                    self.on = None;
                    // What started it is over: it must not start it again.
                    self.lapses.clear();
                    return Some(Turned::Off {
                        timed_out,
                        lapsed: totals.lapsed,
                    });
                }
                None
            }
            None => {
                let recent = self.lapses.len();
                if !Self::over_share(recent, totals.held) {
                    return None;
                }
                let ttl = self.lapses.iter().map(|(_, t)| *t).max().unwrap_or(1);
                let grace = ttl
                    .saturating_mul(u64::from(grace_factor))
                    .saturating_mul(u64::from(PRESERVATION_GRACE_PERIODS));
                let until = plus_secs(now, grace).unwrap_or(now);
                self.on = Some((now, until));
                Some(Turned::On {
                    lapsed: recent,
                    held: totals.held,
                    until,
                })
            }
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
    fn a_sweep_copies_only_what_it_changes() {
        // The owner sweeps a clone of its cached record: nodes it does not change must stay
        // shared with the cache, or a 10,000-instance service is copied whole at each sweep.
        let mut r = record();
        for i in 0..2000 {
            let ttl = if i == 1234 { 10 } else { 60 };
            r.register(&format!("i{i:04}"), &with_ttl(ttl), at(0))
                .unwrap();
        }
        let cached = r.clone();
        assert!(r.sweep(at(5), DEFAULT_GRACE_FACTOR).is_empty());
        assert!(
            r.instances.ptr_eq(&cached.instances) && r.liveness.ptr_eq(&cached.liveness),
            "a sweep that changed nothing copied the record's maps"
        );
        assert_eq!(r.sweep(at(10), DEFAULT_GRACE_FACTOR), ["i1234"]);
        assert_eq!(r.instances["i1234"].status.state, State::Critical);
        // Only the path to the expired instance was copied: every other leaf is still the
        // cached copy's (2,000 ids make more than one leaf).
        let shared = r
            .instances
            .iter()
            .zip(cached.instances.iter())
            .filter(|((_, mine), (_, held))| Arc::ptr_eq(mine, held))
            .count();
        assert_eq!(shared, 1999);
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

    /// A record with `n` instances of TTL 1s, last seen at 0.
    fn leased(n: usize) -> Record {
        let mut r = record();
        for i in 0..n {
            r.register(&format!("i{i}"), &with_ttl(1), at(0)).unwrap();
        }
        r
    }

    /// The owner's sweep of `r` at `now` with `p`, as the agent runs it.
    fn owner_sweep(r: &mut Record, p: &mut Preservation, now: DateTime<Utc>) -> Option<Turned> {
        let swept = r.sweep_holding(now, DEFAULT_GRACE_FACTOR, p.hold_until());
        p.set("payments", r.leases());
        for ttl in swept.lapsed {
            p.lapsed(now, ttl);
        }
        p.update(now, DEFAULT_GRACE_FACTOR)
    }

    #[test]
    fn a_lone_lapse_on_a_small_owner_does_not_engage_self_preservation() {
        // One of three leases is 33%, far over 15%, but one silent instance is not a network
        // problem: it is removed on time.
        let mut r = leased(3);
        let mut p = Preservation::default();
        for id in ["i1", "i2"] {
            r.report(id, &StatusBody::default(), at(1)).unwrap();
        }
        assert_eq!(owner_sweep(&mut r, &mut p, at(1)), None);
        assert!(!p.is_on());
        assert_eq!(r.instances["i0"].status.state, State::Critical);
        // Removed at last_seen + TTL + grace, exactly.
        assert_eq!(
            r.next_deadline_holding(DEFAULT_GRACE_FACTOR, p.hold_until()),
            Some(at(2))
        );
        for id in ["i1", "i2"] {
            r.report(id, &StatusBody::default(), at(10)).unwrap();
        }
        owner_sweep(&mut r, &mut p, at(11));
        assert!(!r.instances.contains_key("i0"), "removed on time");
    }

    #[test]
    fn forty_percent_lapsing_together_holds_removals_until_reports_recover() {
        let mut r = record();
        for i in 0..10 {
            r.register(&format!("i{i}"), &with_ttl(5), at(0)).unwrap();
        }
        let mut p = Preservation::default();
        let beat = |r: &mut Record, ids: std::ops::Range<usize>, t: i64| {
            for i in ids {
                r.report(&format!("i{i}"), &StatusBody::default(), at(t))
                    .unwrap();
            }
        };
        beat(&mut r, 4..10, 4);
        let turned = owner_sweep(&mut r, &mut p, at(5));
        assert!(
            matches!(
                turned,
                Some(Turned::On {
                    lapsed: 4,
                    held: 10,
                    ..
                })
            ),
            "{turned:?}"
        );
        assert_eq!(p.hold_until(), Some(at(5 + 3 * 50)), "three grace periods");
        // Past their removal time (5 + 50s) they are still there, critical.
        for t in [8, 30, 60] {
            beat(&mut r, 4..10, t);
            assert_eq!(owner_sweep(&mut r, &mut p, at(t)), None);
        }
        assert_eq!(r.instances.len(), 10, "none removed");
        assert_eq!(r.instances["i0"].status.state, State::Critical);
        // Three come back: one lapsed of ten is within the share, it ends.
        let before = r.leases();
        beat(&mut r, 0..3, 61);
        p.adjust("payments", before, r.leases());
        let turned = p.update(at(61), DEFAULT_GRACE_FACTOR);
        assert_eq!(
            turned,
            Some(Turned::Off {
                timed_out: false,
                lapsed: 1
            })
        );
        assert_eq!(p.lapsed_services(), ["payments"]);
        // The one still silent is removed by the next sweep (its time has passed).
        beat(&mut r, 4..10, 61);
        owner_sweep(&mut r, &mut p, at(61));
        assert!(!r.instances.contains_key("i3"));
        assert_eq!(r.instances.len(), 9);
        assert!(
            !p.is_on(),
            "and it does not start again for the same lapses"
        );
    }

    #[test]
    fn a_real_mass_departure_is_cleaned_up_after_three_grace_periods() {
        let mut r = leased(10);
        let mut p = Preservation::default();
        assert!(matches!(
            owner_sweep(&mut r, &mut p, at(1)),
            Some(Turned::On { lapsed: 10, .. })
        ));
        assert_eq!(owner_sweep(&mut r, &mut p, at(30)), None);
        assert_eq!(r.instances.len(), 10);
        // At the end of the hold, the same sweep removes them all.
        let turned = owner_sweep(&mut r, &mut p, at(31));
        assert_eq!(
            turned,
            Some(Turned::Off {
                timed_out: true,
                lapsed: 0
            })
        );
        assert!(r.is_empty(), "every one removed");
        assert!(!p.is_on());
    }
}
