//! The ring's invariants (Zave), checked by the simulator after every quiet period and
//! available to the agent for a whole-ring check.

use std::collections::{BTreeMap, HashSet};

use super::id::Id;
use super::node::Chord;

/// A node's pointers as seen from outside.
#[derive(Debug, Clone)]
pub struct View {
    /// The node.
    pub id: Id,
    /// Its successor list, nearest first.
    pub successors: Vec<Id>,
    /// Its predecessor.
    pub predecessor: Option<Id>,
}

impl View {
    /// The view of a local state machine.
    pub fn of(chord: &Chord) -> View {
        View {
            id: chord.me().id,
            successors: chord.successors().iter().map(|n| n.id).collect(),
            predecessor: chord.predecessor().map(|p| p.id),
        }
    }
}

/// Check, for the live members given (`views`, one per live member), that:
/// - every successor list has length `min(r, N-1)` and holds a live member;
/// - following each member's first live successor forms exactly one cycle (one ring), which
///   visits its members in identifier order (it wraps around the circle once);
/// - every member reaches that ring (appendages reach it);
/// - when `converged` is set: the ring holds every member, each successor list is exactly the
///   next members in identifier order, and each predecessor is the previous member.
pub fn check(views: &[View], r: usize, converged: bool) -> Result<(), String> {
    check_views(views, r, true, converged)
}

/// The invariants that hold at *every* step of a ring under joins and graceful leaves, not
/// only once it settles (Zave's "one ordered ring"): every member's successor list holds a
/// live member, the first live successors form exactly one cycle in identifier order, and
/// every member reaches it. Tolerated, because the rules allow them for a while: lists
/// shorter than `r` (a joiner's, or one that just dropped a leaver) and members not yet on
/// the cycle (appendages).
pub fn check_step(views: &[View], r: usize) -> Result<(), String> {
    check_views(views, r, false, false)
}

fn check_views(views: &[View], r: usize, exact_len: bool, converged: bool) -> Result<(), String> {
    let n = views.len();
    if n == 0 {
        return Ok(());
    }
    let by_id: BTreeMap<Id, &View> = views.iter().map(|v| (v.id, v)).collect();
    let live: HashSet<Id> = by_id.keys().copied().collect();
    let want_len = r.min(n - 1);
    let mut next: BTreeMap<Id, Id> = BTreeMap::new();
    for v in views {
        if v.successors.len() != want_len && (exact_len || v.successors.is_empty() && n > 1) {
            return Err(format!(
                "{:?}: successor list has length {}, want {}: {:?}",
                v.id,
                v.successors.len(),
                want_len,
                v.successors
            ));
        }
        if n == 1 {
            continue;
        }
        match v.successors.iter().find(|s| live.contains(s)) {
            Some(s) => {
                next.insert(v.id, *s);
            }
            None => return Err(format!("{:?}: no live member in its successor list", v.id)),
        }
    }
    if n == 1 {
        return Ok(());
    }
    // Find the cycle every member's successor path ends in; there must be exactly one.
    let mut ring: Option<HashSet<Id>> = None;
    for v in views {
        let mut seen: Vec<Id> = Vec::new();
        let mut seen_set = HashSet::new();
        let mut cur = v.id;
        while seen_set.insert(cur) {
            seen.push(cur);
            cur = next[&cur];
        }
        let start = seen.iter().position(|x| *x == cur).unwrap_or(0);
        let cycle: HashSet<Id> = seen[start..].iter().copied().collect();
        match &ring {
            None => {
                // In identifier order: walking the cycle wraps around the circle once.
                let mut wraps = 0;
                let mut c = cur;
                loop {
                    let nx = next[&c];
                    if nx <= c {
                        wraps += 1;
                    }
                    c = nx;
                    if c == cur {
                        break;
                    }
                }
                if wraps != 1 {
                    return Err(format!("the ring wraps the circle {wraps} times"));
                }
                ring = Some(cycle);
            }
            Some(r) => {
                if !cycle.is_subset(r) || cycle.len() != r.len() {
                    return Err(format!("{:?} reaches a second ring", v.id));
                }
            }
        }
    }
    if converged {
        let ids: Vec<Id> = by_id.keys().copied().collect();
        for (i, id) in ids.iter().enumerate() {
            let v = by_id[id];
            let want: Vec<Id> = (1..=want_len).map(|k| ids[(i + k) % n]).collect();
            if v.successors != want {
                return Err(format!(
                    "{id:?}: successor list is not the next {want_len} members"
                ));
            }
            let want_pred = ids[(i + n - 1) % n];
            if v.predecessor != Some(want_pred) {
                return Err(format!(
                    "{id:?}: predecessor is {:?}, want {want_pred:?}",
                    v.predecessor
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<Id> {
        let mut v: Vec<Id> = (0..n).map(|i| Id::of_key(&format!("n{i}"))).collect();
        v.sort();
        v
    }

    fn view(id: Id, successors: &[Id]) -> View {
        View {
            id,
            successors: successors.to_vec(),
            predecessor: None,
        }
    }

    #[test]
    fn the_step_check_tolerates_short_lists_and_appendages_but_not_two_rings() {
        let n = ids(4);
        // A ring of 0 → 1 → 2 → 0 with 3 hanging off 1 (a joiner whose predecessor has not
        // noticed it yet), lists shorter than r = 3.
        let ok = [
            view(n[0], &[n[1]]),
            view(n[1], &[n[2], n[0]]),
            view(n[2], &[n[0]]),
            view(n[3], &[n[0], n[1]]),
        ];
        assert!(check_step(&ok, 3).is_ok());
        assert!(check(&ok, 3, false).is_err(), "settled lists must be full");
        // Two rings: 0 ↔ 1 and 2 ↔ 3.
        let split = [
            view(n[0], &[n[1]]),
            view(n[1], &[n[0]]),
            view(n[2], &[n[3]]),
            view(n[3], &[n[2]]),
        ];
        assert!(check_step(&split, 3).is_err());
        // An unordered cycle: 0 → 2 → 1 → 3 → 0 wraps twice.
        let tangled = [
            view(n[0], &[n[2]]),
            view(n[2], &[n[1]]),
            view(n[1], &[n[3]]),
            view(n[3], &[n[0]]),
        ];
        assert!(check_step(&tangled, 3).is_err());
        // A member with an empty list in a ring of several.
        let lost = [view(n[0], &[n[1]]), view(n[1], &[])];
        assert!(check_step(&lost, 3).is_err());
    }
}
