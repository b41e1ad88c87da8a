//! When each owned service record next needs the TTL sweep, kept in memory so that an idle
//! agent reads nothing from its store twice a second.
//!
//! The index is a hint, never the truth: the sweep still loads a due record under its lock and
//! applies `Record::sweep`, which changes nothing before a real deadline. So the index only has
//! to err early, never late:
//!
//! - a write at the owner ([`Deadlines::set`]) records the exact next deadline of what it stored;
//! - a record stored by replication or hand-off ([`Deadlines::check_soon`]) is due at once, and
//!   the sweep finds out what it really holds;
//! - a rescan of the store (at start, when the predecessor changes — this node may own more
//!   now — and every [`RESCAN_EVERY`] as a safety net) only ever moves a deadline earlier
//!   ([`Deadlines::scanned`]), so a scan that read a record just before a write cannot undo
//!   what the write set.
//!
//! The sweep sleeps until the earliest deadline it knows of (or the next rescan) rather than
//! waking on a fixed beat ([`Deadlines::plan`]); a deadline set earlier than that plan tells the
//! caller to wake it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::ring::Id;

/// How often the index is rebuilt from the store even when nothing says it must be.
pub const RESCAN_EVERY: Duration = Duration::from_secs(30);

/// Next sweep deadline by service name, for records this node owns.
#[derive(Debug, Default)]
pub struct Deadlines {
    due: HashMap<String, DateTime<Utc>>,
    /// When the last rescan started, and the predecessor this node had then.
    rescanned: Option<(Instant, Option<Id>)>,
    /// When the sweep means to run next (`None`: not until woken, or not sleeping).
    planned: Option<DateTime<Utc>>,
}

impl Deadlines {
    /// After a write of `service`'s record: its exact next deadline (`None`: nothing to sweep).
    /// True when the sweep must be woken: the deadline comes before its plan.
    #[must_use]
    pub fn set(&mut self, service: &str, at: Option<DateTime<Utc>>) -> bool {
        match at {
            Some(at) => {
                self.due.insert(service.to_string(), at);
                self.before_plan(at)
            }
            None => {
                self.due.remove(service);
                false
            }
        }
    }

    /// After a write of one instance of `service`: its deadline `at`, which moves the service's
    /// deadline earlier, never later (other instances may be due before it). True when the
    /// sweep must be woken.
    #[must_use]
    pub fn earlier(&mut self, service: &str, at: DateTime<Utc>) -> bool {
        let at = match self.due.get_mut(service) {
            Some(known) => {
                *known = (*known).min(at);
                *known
            }
            None => {
                self.due.insert(service.to_string(), at);
                at
            }
        };
        self.before_plan(at)
    }

    /// A record was stored without this node knowing its deadline: check it at the next sweep.
    /// True when the sweep must be woken.
    #[must_use]
    pub fn check_soon(&mut self, service: &str, now: DateTime<Utc>) -> bool {
        self.due.insert(service.to_string(), now);
        self.before_plan(now)
    }

    /// A rescan saw `service` with next deadline `at`: keep the earlier of what is known.
    /// (The rescan runs inside the sweep, which plans afterwards: nothing to wake.)
    pub fn scanned(&mut self, service: &str, at: DateTime<Utc>) {
        let _ = self.earlier(service, at);
    }

    fn before_plan(&self, at: DateTime<Utc>) -> bool {
        self.planned.is_some_and(|planned| at < planned)
    }

    /// The sweep is about to sleep: when it must run next — at the earliest deadline or the
    /// next periodic rescan, whichever comes first. Later deadlines set meanwhile do not wake
    /// it; earlier ones do (see [`Deadlines::set`]).
    pub fn plan(&mut self, now: DateTime<Utc>, instant: Instant) -> DateTime<Utc> {
        let rescan = match &self.rescanned {
            None => now,
            Some((at, _)) => {
                let left = RESCAN_EVERY.saturating_sub(instant.duration_since(*at));
                now + chrono::Duration::from_std(left).unwrap_or_default()
            }
        };
        let next = self.due.values().copied().fold(rescan, DateTime::min);
        self.planned = Some(next);
        next
    }

    /// The sweep is running: nothing needs to wake it.
    pub fn running(&mut self) {
        self.planned = None;
    }

    /// Forget `service` (no longer owned, or gone).
    pub fn remove(&mut self, service: &str) {
        self.due.remove(service);
    }

    /// The services whose deadline is not after `now`.
    pub fn due(&self, now: DateTime<Utc>) -> Vec<String> {
        self.due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(service, _)| service.clone())
            .collect()
    }

    /// Whether the index must be rebuilt from the store: never built, built under another
    /// predecessor (this node's range changed), or older than [`RESCAN_EVERY`].
    pub fn needs_rescan(&self, now: Instant, predecessor: Option<Id>) -> bool {
        match &self.rescanned {
            None => true,
            Some((at, pred)) => *pred != predecessor || now.duration_since(*at) >= RESCAN_EVERY,
        }
    }

    /// A rescan starts now, under `predecessor`.
    pub fn rescanning(&mut self, now: Instant, predecessor: Option<Id>) {
        self.rescanned = Some((now, predecessor));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn due_lists_only_what_is_not_after_now() {
        let mut d = Deadlines::default();
        let _ = d.set("a", Some(t(10)));
        let _ = d.set("b", Some(t(20)));
        let _ = d.set("c", None);
        assert!(d.due(t(9)).is_empty());
        assert_eq!(d.due(t(10)), vec!["a".to_string()]);
        let mut both = d.due(t(25));
        both.sort();
        assert_eq!(both, vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn a_write_sets_the_exact_deadline_and_none_forgets_it() {
        let mut d = Deadlines::default();
        let _ = d.set("a", Some(t(10)));
        let _ = d.set("a", Some(t(50)));
        assert!(
            d.due(t(20)).is_empty(),
            "a heartbeat moved the deadline later"
        );
        let _ = d.set("a", None);
        assert!(d.due(t(100)).is_empty());
    }

    #[test]
    fn a_rescan_only_moves_deadlines_earlier() {
        let mut d = Deadlines::default();
        let _ = d.set("a", Some(t(50)));
        // A scan that finds an earlier deadline than the index knows: the earlier one wins.
        d.scanned("a", t(10));
        assert_eq!(d.due(t(10)), vec!["a".to_string()]);
        // A scan that read an older copy with a later deadline cannot postpone the sweep.
        let _ = d.set("b", Some(t(10)));
        d.scanned("b", t(90));
        assert!(d.due(t(10)).contains(&"b".to_string()));
        d.scanned("new", t(5));
        assert!(d.due(t(5)).contains(&"new".to_string()));
    }

    #[test]
    fn replicated_records_are_checked_at_the_next_sweep() {
        let mut d = Deadlines::default();
        let _ = d.set("a", Some(t(100)));
        let _ = d.check_soon("a", t(1));
        assert_eq!(d.due(t(1)), vec!["a".to_string()]);
        d.remove("a");
        assert!(d.due(t(1000)).is_empty());
    }

    #[test]
    fn the_plan_is_the_earliest_deadline_or_the_next_rescan() {
        let mut d = Deadlines::default();
        let now = Instant::now();
        d.rescanning(now, None);
        let rescan = t(0) + chrono::Duration::from_std(RESCAN_EVERY).unwrap();
        assert_eq!(d.plan(t(0), now), rescan, "nothing due: the next rescan");
        assert!(
            d.set("a", Some(t(10))),
            "a deadline before the plan wakes the sweep"
        );
        assert_eq!(d.plan(t(0), now), t(10));
        assert!(!d.set("b", Some(t(20))), "a later deadline does not");
        assert!(!d.set("b", None));
        assert!(d.check_soon("c", t(1)));
        assert_eq!(d.plan(t(0), now), t(1));
        d.running();
        assert!(!d.set("d", Some(t(0))), "a running sweep is not woken");
        d.remove("c");
        d.remove("d");
        assert_eq!(d.plan(t(0), now), t(10));
    }

    #[test]
    fn rescans_at_start_on_a_new_predecessor_and_periodically() {
        let mut d = Deadlines::default();
        let now = Instant::now();
        let p1 = Some(Id::of_key("p1"));
        assert!(d.needs_rescan(now, p1), "never built");
        d.rescanning(now, p1);
        assert!(!d.needs_rescan(now, p1));
        assert!(d.needs_rescan(now, Some(Id::of_key("p2"))), "range changed");
        assert!(d.needs_rescan(now, None), "predecessor lost");
        assert!(d.needs_rescan(now + RESCAN_EVERY, p1), "periodic");
    }
}
