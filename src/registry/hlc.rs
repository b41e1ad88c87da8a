//! Hybrid logical clocks: the versions that order the changes of one instance.
//!
//! A version is (physical milliseconds, logical counter, node). A node's [`Clock`] never hands
//! out a version below one it has seen: every version it reads (a stored change, a replicated
//! one, the current version of the instance it is about to change) moves it forward. So a node
//! whose wall clock runs ten minutes behind still writes a version above the last change of the
//! instance it changes, and its deregistration is not undone by an older registration; a clock
//! that runs ahead makes its versions large, but whoever sees them carries on above them, so a
//! later re-registration still wins. Ties between two nodes that wrote the same (physical,
//! logical) pair are broken by the node number, the same way on every copy.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One change's version. Ordered by physical time, then the logical counter, then the node.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch, as the writing node's clock (pushed forward by what it
    /// had seen) said.
    pub wall_ms: u64,
    /// Orders changes within one millisecond, and after a clock that went backwards.
    pub logical: u32,
    /// The writing node: the first 8 bytes of its ring identifier.
    pub node: u64,
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{:016x}", self.wall_ms, self.logical, self.node)
    }
}

/// The node number of a ring identifier given as 40 hex digits (its first 16 digits); 0 for
/// anything else.
pub fn node_number(node_hex: &str) -> u64 {
    node_hex
        .get(..16)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .unwrap_or(0)
}

/// One node's hybrid logical clock.
#[derive(Debug, Clone)]
pub struct Clock {
    node: u64,
    wall_ms: u64,
    logical: u32,
}

impl Clock {
    /// A clock for node `node` that has seen nothing yet.
    pub fn new(node: u64) -> Self {
        Clock {
            node,
            wall_ms: 0,
            logical: 0,
        }
    }

    /// Move the clock past `seen` (a version read from a store or a peer).
    pub fn observe(&mut self, seen: Hlc) {
        if (seen.wall_ms, seen.logical) > (self.wall_ms, self.logical) {
            self.wall_ms = seen.wall_ms;
            self.logical = seen.logical;
        }
    }

    /// A new version at physical time `now_ms`: above everything this clock handed out or saw.
    pub fn now(&mut self, now_ms: u64) -> Hlc {
        if now_ms > self.wall_ms {
            self.wall_ms = now_ms;
            self.logical = 0;
        } else if self.logical == u32::MAX {
            // Four billion changes in one millisecond: borrow the next millisecond.
            self.wall_ms += 1;
            self.logical = 0;
        } else {
            self.logical += 1;
        }
        Hlc {
            wall_ms: self.wall_ms,
            logical: self.logical,
            node: self.node,
        }
    }

    /// A new version for a change of something whose current version is `prev`: above `prev`
    /// whatever this node's wall clock says.
    pub fn after(&mut self, now_ms: u64, prev: Option<Hlc>) -> Hlc {
        if let Some(prev) = prev {
            self.observe(prev);
        }
        self.now(now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    #[test]
    fn versions_grow_within_a_millisecond_and_when_the_clock_goes_back() {
        let mut c = Clock::new(1);
        let a = c.now(1_000);
        let b = c.now(1_000);
        let back = c.now(900);
        assert!(a < b && b < back, "{a} {b} {back}");
        assert_eq!(back.wall_ms, 1_000, "never below what it handed out");
        assert!(c.now(2_000) > back);
    }

    #[test]
    fn a_clock_ten_minutes_behind_still_writes_above_what_it_has_seen() {
        let t = 1_800_000_000_000;
        let mut ahead = Clock::new(1);
        let registered = ahead.now(t);
        // The new owner's wall clock is ten minutes behind the old owner's.
        let mut behind = Clock::new(2);
        let removed = behind.after(t - 10 * MIN, Some(registered));
        assert!(
            removed > registered,
            "the deregistration wins: {removed} vs {registered}"
        );
        // Another change through the slow clock keeps growing.
        assert!(behind.now(t - 10 * MIN + 1) > removed);
    }

    #[test]
    fn after_a_clock_ten_minutes_ahead_a_later_change_still_wins() {
        let t = 1_800_000_000_000;
        let mut fast = Clock::new(1);
        let tombstone = fast.now(t + 10 * MIN);
        let mut normal = Clock::new(2);
        let again = normal.after(t, Some(tombstone));
        assert!(
            again > tombstone,
            "a re-registration after the removal wins"
        );
    }

    #[test]
    fn equal_times_are_ordered_by_node_alike_everywhere() {
        let a = Hlc {
            wall_ms: 5,
            logical: 0,
            node: 1,
        };
        let b = Hlc { node: 2, ..a };
        assert!(a < b);
        assert_eq!(node_number("00000000000000ffaaaa"), 255);
        assert_eq!(node_number("xyz"), 0);
    }
}
