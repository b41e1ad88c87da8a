//! Watching a service, without I/O: the change events, the requests an agent sends an owner
//! to follow its services, and the [`Feed`] an owner keeps per watched service.
//!
//! The promise (API.md, "Watching for changes"): a watcher never misses a change silently.
//! An owner keeps the last changes of each watched service in a [`Feed`]; a follower asks for
//! every change after the index it holds and gets exactly those, in order, or — when the feed
//! cannot say (it was reset, it dropped old changes, the follower is ahead of it) — nothing but
//! the whole current state, which the follower passes on as a `snapshot` with `reset: true`.
//!
//! Indexes grow by one per change an owner stamps; changes of one instance inside one group
//! commit fold into the last of them (so indexes may skip), and a new owner continues in a new
//! epoch above every index the old one could have given out (see `agent::registry`).

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Instance;

/// Bits of an index below its epoch.
pub const EPOCH_SHIFT: u32 = 32;

/// The first index of the epoch after the one `index` is in: a new owner's first change
/// lands above anything the previous owner can have numbered.
pub fn next_epoch(index: u64) -> u64 {
    let epoch = (index >> EPOCH_SHIFT)
        .saturating_add(1)
        .min(u64::from(u32::MAX));
    (epoch << EPOCH_SHIFT).max(index)
}

/// What happened to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    /// It appeared.
    Register,
    /// It changed (registered again, a status report, TTL expiry marking it critical).
    Update,
    /// It was deregistered.
    Deregister,
    /// TTL expiry removed it.
    Expire,
}

impl ChangeOp {
    /// The name API.md gives it.
    pub fn name(self) -> &'static str {
        match self {
            ChangeOp::Register => "register",
            ChangeOp::Update => "update",
            ChangeOp::Deregister => "deregister",
            ChangeOp::Expire => "expire",
        }
    }
}

/// One change of one instance, at the service's index `index`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The service's index after the change.
    pub index: u64,
    /// What happened.
    pub op: ChangeOp,
    /// The instance's id.
    pub id: String,
    /// The instance as it is after the change (`None` once removed).
    pub instance: Option<Arc<Instance>>,
    /// When the owner made the change (its wall clock, milliseconds since the epoch): for the
    /// write-to-notify latency only, never for ordering.
    pub at_ms: i64,
}

/// One service a follower asks an owner about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchItem {
    /// The service.
    pub service: String,
    /// The index the follower holds: it wants every change after it.
    pub since: u64,
    /// Send the whole current state (the follower has none yet), with the changes after
    /// `since` when the feed still holds them.
    pub snapshot: bool,
}

/// What an owner says about one [`WatchItem`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WatchBody {
    /// This node does not own the service (any more): ask the owner.
    NotOwner,
    /// Every change after the follower's index, in order (possibly none: nothing new).
    Changes(Vec<Change>),
    /// The whole current state; with the changes after the follower's index when the feed
    /// holds them (`None`: it cannot say, the follower resets).
    Snapshot {
        /// Every instance, by id.
        instances: Vec<Arc<Instance>>,
        /// The changes after the follower's index, if known.
        changes: Option<Vec<Change>>,
    },
}

/// An owner's answer about one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchAnswer {
    /// The service.
    pub service: String,
    /// The service's index the answer is at.
    pub index: u64,
    /// The answer.
    pub body: WatchBody,
}

/// Changes one owner keeps of one service, to replay to followers that resume.
///
/// It holds every change with an index in `(first, last]`, at most `cap` of them; a follower
/// at an index in `[first, last]` can be brought up to date by replaying, any other needs the
/// whole state.
#[derive(Debug, Clone)]
pub struct Feed {
    log: VecDeque<Change>,
    first: u64,
    last: u64,
    cap: usize,
}

impl Feed {
    /// A feed that knows the service is at `index` and holds no change yet.
    pub fn new(index: u64, cap: usize) -> Feed {
        Feed {
            log: VecDeque::new(),
            first: index,
            last: index,
            cap: cap.max(1),
        }
    }

    /// The index of the last change the feed knows of.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Changes made to the service, which was at `before` and is now at `after`. If the feed
    /// did not end at `before` (something it did not see changed the service), what it held
    /// can no longer be replayed: it starts again from `before`.
    pub fn push(&mut self, before: u64, mut changes: Vec<Change>, after: u64) {
        if before != self.last {
            self.reset(before);
        }
        changes.sort_by_key(|c| c.index);
        for c in changes {
            if c.index <= self.last {
                // Not after what it holds: it cannot be placed in order; start over.
                self.reset(after);
                return;
            }
            self.last = c.index;
            self.log.push_back(c);
            if self.log.len() > self.cap {
                if let Some(old) = self.log.pop_front() {
                    self.first = old.index;
                }
            }
        }
        self.last = self.last.max(after);
    }

    /// Forget every change: the service is at `index` now, by ways the feed cannot replay.
    pub fn reset(&mut self, index: u64) {
        self.log.clear();
        self.first = index;
        self.last = index;
    }

    /// Every change after `since`, in order — or `None` when the feed cannot say (the
    /// changes right after `since` are gone, or `since` is not an index it has seen pass).
    pub fn replay(&self, since: u64) -> Option<Vec<Change>> {
        if since < self.first || since > self.last {
            return None;
        }
        let start = self.log.partition_point(|c| c.index <= since);
        Some(self.log.range(start..).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn change(index: u64) -> Change {
        Change {
            index,
            op: ChangeOp::Update,
            id: format!("i{}", index % 7),
            instance: None,
            at_ms: 0,
        }
    }

    #[test]
    fn a_feed_replays_what_follows_an_index_it_saw() {
        let mut f = Feed::new(10, 100);
        f.push(10, vec![change(12), change(11)], 12);
        f.push(12, vec![change(13)], 13);
        let idx = |v: Option<Vec<Change>>| v.map(|v| v.iter().map(|c| c.index).collect::<Vec<_>>());
        assert_eq!(idx(f.replay(10)), Some(vec![11, 12, 13]));
        assert_eq!(idx(f.replay(12)), Some(vec![13]));
        assert_eq!(idx(f.replay(13)), Some(vec![]));
        assert_eq!(f.replay(9), None, "before the feed began");
        assert_eq!(f.replay(14), None, "ahead of the feed");
        // A change it did not see: what it held is no longer a full account.
        f.push(20, vec![change(21)], 21);
        assert_eq!(f.replay(13), None);
        assert_eq!(idx(f.replay(20)), Some(vec![21]));
    }

    /// One step of a random history an owner's feed goes through.
    #[derive(Debug, Clone)]
    enum Step {
        /// A group of `n` changes (indexes may skip by `skip`), seen by the feed.
        Group { n: u8, skip: u8 },
        /// A change the feed cannot replay (a merge of another copy's units): the owner moves
        /// the index on and resets the feed there.
        Unseen { skip: u8 },
        /// A group the feed is told of late: the next group starts from an index it has not
        /// seen (a write stored but not acknowledged, published with the next one).
        Late { n: u8 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (1u8..5, 0u8..3).prop_map(|(n, skip)| Step::Group { n, skip }),
            1 => (1u8..4).prop_map(|skip| Step::Unseen { skip }),
            1 => (1u8..3).prop_map(|n| Step::Late { n }),
        ]
    }

    proptest! {
        /// The resume rule over random histories: for every index a follower may hold, the
        /// feed answers exactly the changes after it, in order — every one of them — or says
        /// it cannot (and the follower takes a snapshot). Never a partial list.
        #[test]
        fn a_resume_gets_every_change_after_its_index_or_a_reset(
            start in 0u64..1000,
            cap in 1usize..12,
            steps in proptest::collection::vec(step(), 0..60),
        ) {
            let mut f = Feed::new(start, cap);
            let mut index = start;
            // Every change made, and the indexes at which something the feed did not see
            // happened.
            let mut history: Vec<u64> = Vec::new();
            let mut unseen: Vec<u64> = Vec::new();
            for s in steps {
                match s {
                    Step::Group { n, skip } => {
                        let before = index;
                        let mut group = Vec::new();
                        for _ in 0..n {
                            index += 1 + u64::from(skip);
                            group.push(change(index));
                            history.push(index);
                        }
                        f.push(before, group, index);
                    }
                    Step::Unseen { skip } => {
                        index += u64::from(skip);
                        f.reset(index);
                        unseen.push(index);
                    }
                    Step::Late { n } => {
                        // Changes the feed will not hold; then a group that tells it where
                        // the service was before it.
                        index += u64::from(n);
                        unseen.push(index);
                        let before = index;
                        index += 1;
                        history.push(index);
                        f.push(before, vec![change(index)], index);
                    }
                }
            }
            for since in start.saturating_sub(2)..=index + 2 {
                let Some(got) = f.replay(since) else { continue };
                let got: Vec<u64> = got.iter().map(|c| c.index).collect();
                let want: Vec<u64> = history.iter().copied().filter(|i| *i > since).collect();
                prop_assert_eq!(&got, &want, "replay after {}", since);
                // Nothing unseen happened after `since` either.
                prop_assert!(
                    unseen.iter().all(|u| *u <= since),
                    "replayed after {} across an unseen change", since
                );
            }
            // The feed always knows where the service is.
            prop_assert_eq!(f.replay(index), Some(Vec::new()));
        }
    }
}
