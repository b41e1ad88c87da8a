//! The Chord state machine of one node: no sockets, no clocks, no randomness.
//!
//! The driver (the agent over TCP, or the simulator) feeds it requests from peers
//! ([`Chord::handle_request`], answered at once from local state), answers to its own requests
//! ([`Chord::on_response`]), and the time ([`Chord::tick`]). It hands back the requests to send
//! ([`Chord::take_outbound`]) and what changed ([`Chord::take_events`]). The driver must answer
//! every outbound request exactly once, with the peer's response or a failure (timeout,
//! connection refused).

use std::collections::HashMap;

use super::id::{Id, BITS};
use super::lookup::{Lookup, LookupAction, LookupResult};
use super::messages::{NodeRef, RingRequest, RingResponse, Step};

/// Tunables of the maintenance protocol. Times are in milliseconds of the driver's clock.
#[derive(Debug, Clone)]
pub struct Config {
    /// Successor-list length r.
    pub successors: usize,
    /// How often to stabilize (ask the successor for its neighbours, then notify it).
    pub stabilize_ms: u64,
    /// How often to refresh the next finger.
    pub fix_fingers_ms: u64,
    /// How often to ping the predecessor.
    pub check_predecessor_ms: u64,
    /// How often to look up our own identifier through a remembered past member, to find
    /// and merge with another ring after a partition heals.
    pub merge_check_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            successors: 8,
            stabilize_ms: 500,
            fix_fingers_ms: 250,
            check_predecessor_ms: 500,
            merge_check_ms: 5_000,
        }
    }
}

/// A request the driver must deliver; answer it with [`Chord::on_response`] and the same `id`.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// Correlates the answer with the request.
    pub id: u64,
    /// The node to send to.
    pub to: NodeRef,
    /// The request.
    pub msg: RingRequest,
}

/// What changed, for the driver to act on (log, move records, exit).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The node became a ring member (create, or join finished).
    Joined,
    /// The join could not complete; the driver may retry [`Chord::join`] or give up.
    JoinFailed(String),
    /// The predecessor changed, so the range of keys this node owns, `(predecessor, me]`,
    /// changed. `None` means "unknown": the node answers for every key routed to it.
    PredecessorChanged {
        /// The previous predecessor.
        old: Option<NodeRef>,
        /// The new one.
        new: Option<NodeRef>,
    },
    /// The successor list (the replica set of this node's keys) changed.
    SuccessorsChanged(Vec<NodeRef>),
    /// A peer failed to answer and was dropped from every pointer.
    PeerFailed(NodeRef),
    /// The graceful leave finished: predecessor and successor were told.
    Left,
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Idle,
    Joining,
    Member,
    Leaving { waiting: usize },
    Left,
}

#[derive(Debug)]
enum Purpose {
    Join,
    Finger(usize),
    MergeProbe,
}

/// Past members remembered for partition healing.
const REMEMBERED: usize = 32;

/// Members lost to failure (and not seen since) remembered at most, for the write quorum.
const LOST: usize = 64;

#[derive(Debug)]
enum Pending {
    Lookup {
        purpose: Purpose,
        lookup: Lookup,
        asked: NodeRef,
    },
    JoinAdopt {
        candidates: Vec<NodeRef>,
    },
    Stabilize {
        succ: NodeRef,
    },
    StabilizeCandidate {
        cand: NodeRef,
    },
    Notify {
        to: NodeRef,
    },
    CheckPredecessor {
        pred: NodeRef,
    },
    RectifyPing {
        old: NodeRef,
        notifier: NodeRef,
    },
    AdoptPredecessor {
        cand: NodeRef,
    },
    LeaveNotice,
}

/// One node's view of the ring and the protocol that keeps it right.
#[derive(Debug)]
pub struct Chord {
    me: NodeRef,
    cfg: Config,
    phase: Phase,
    pred: Option<NodeRef>,
    succs: Vec<NodeRef>,
    fingers: Vec<Option<NodeRef>>,
    next_finger: usize,
    pending: HashMap<u64, Pending>,
    next_req: u64,
    outbox: Vec<Outbound>,
    events: Vec<Event>,
    next_stabilize: u64,
    next_fix: u64,
    next_check: u64,
    stabilizing: bool,
    fixing: bool,
    checking: bool,
    rectifying: bool,
    remembered: Vec<NodeRef>,
    /// Members this node dropped because they failed to answer, and has not seen since: the
    /// ring may be bigger than this node can reach (a crash, or a partition), so a write
    /// quorum does not shrink with them. Members that leave gracefully are not counted.
    lost: Vec<Id>,
    /// Members that told this node they were leaving (most recent [`LOST`]): a call to one
    /// that fails afterwards does not count it as lost, even when a stale successor list
    /// brought it back for a moment.
    left: Vec<Id>,
    next_merge: u64,
    merge_cursor: usize,
    probing: bool,
}

impl Chord {
    /// A node that is not a member yet; call [`Chord::create`] or [`Chord::join`].
    pub fn new(me: NodeRef, cfg: Config) -> Chord {
        Chord {
            me,
            cfg,
            phase: Phase::Idle,
            pred: None,
            succs: Vec::new(),
            fingers: vec![None; BITS],
            next_finger: 0,
            pending: HashMap::new(),
            next_req: 1,
            outbox: Vec::new(),
            events: Vec::new(),
            next_stabilize: 0,
            next_fix: 0,
            next_check: 0,
            stabilizing: false,
            fixing: false,
            checking: false,
            rectifying: false,
            remembered: Vec::new(),
            lost: Vec::new(),
            left: Vec::new(),
            next_merge: 0,
            merge_cursor: 0,
            probing: false,
        }
    }

    /// This node.
    pub fn me(&self) -> &NodeRef {
        &self.me
    }

    /// The tunables.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Whether the node is a ring member (answers lookups).
    pub fn is_member(&self) -> bool {
        self.phase == Phase::Member
    }

    /// Whether a graceful leave has finished.
    pub fn has_left(&self) -> bool {
        self.phase == Phase::Left
    }

    /// The predecessor, if known.
    pub fn predecessor(&self) -> Option<&NodeRef> {
        self.pred.as_ref()
    }

    /// The successor list, nearest first; empty when alone.
    pub fn successors(&self) -> &[NodeRef] {
        &self.succs
    }

    /// Whether this node lost a member to failure and has not seen it since (so a short
    /// successor list is a loss, not a ring still forming).
    pub fn lost_any(&self) -> bool {
        !self.lost.is_empty()
    }

    /// How many members this node knows the ring to have, itself included: the distinct
    /// members it points at now, plus those it lost to failure and has not seen since. A
    /// node cut off from every peer still counts them; a ring that shrank by graceful leaves
    /// does not.
    pub fn known_members(&self) -> usize {
        let mut ids: Vec<Id> = self.succs.iter().map(|n| n.id).collect();
        ids.extend(self.pred.as_ref().map(|p| p.id));
        ids.extend(self.lost.iter().copied());
        ids.retain(|id| *id != self.me.id);
        ids.sort();
        ids.dedup();
        ids.len() + 1
    }

    /// The successor: the first entry of the list, or this node when alone.
    pub fn successor(&self) -> &NodeRef {
        self.succs.first().unwrap_or(&self.me)
    }

    /// The finger table: entry `i` is the first node at or after `me + 2^i`, when known.
    pub fn fingers(&self) -> &[Option<NodeRef>] {
        &self.fingers
    }

    /// Whether this node owns `key` by its own view: `key ∈ (predecessor, me]`. With no known
    /// predecessor the node claims every key routed to it.
    pub fn owns(&self, key: &Id) -> bool {
        match &self.pred {
            Some(p) => key.in_half_open(&p.id, &self.me.id),
            None => true,
        }
    }

    /// Requests to deliver, in order.
    pub fn take_outbound(&mut self) -> Vec<Outbound> {
        std::mem::take(&mut self.outbox)
    }

    /// Events since the last call, in order.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Start a new ring with this node as its only member.
    pub fn create(&mut self) {
        self.phase = Phase::Member;
        self.events.push(Event::Joined);
    }

    /// Join the ring that the node at `seed` (a ring address) belongs to: look up our own
    /// identifier through it, fetch the would-be predecessor's successor list, check the
    /// successor is alive, and only then become a member (Zave's rule for joins).
    pub fn join(&mut self, seed: &str) {
        self.phase = Phase::Joining;
        let seed = NodeRef::new(seed, "");
        let (lookup, action) = Lookup::start(self.me.id, Step::Next(vec![seed]));
        self.drive_lookup(Purpose::Join, lookup, action);
    }

    /// Leave gracefully: tell the predecessor and the successor, then report [`Event::Left`].
    /// Hand records over before calling this.
    pub fn leave(&mut self) {
        if self.phase != Phase::Member {
            self.phase = Phase::Left;
            self.events.push(Event::Left);
            return;
        }
        let mut waiting = 0;
        let succ = self.succs.first().cloned();
        if let (Some(p), Some(_)) = (self.pred.clone(), &succ) {
            if p.id != self.me.id {
                let msg = RingRequest::LeavingToPredecessor {
                    leaver: self.me.clone(),
                    successors: self.succs.clone(),
                };
                self.send(p, msg, Pending::LeaveNotice);
                waiting += 1;
            }
        }
        if let Some(s) = succ {
            let msg = RingRequest::LeavingToSuccessor {
                leaver: self.me.clone(),
                predecessor: self.pred.clone(),
            };
            self.send(s, msg, Pending::LeaveNotice);
            waiting += 1;
        }
        if waiting == 0 {
            self.phase = Phase::Left;
            self.events.push(Event::Left);
        } else {
            self.phase = Phase::Leaving { waiting };
        }
    }

    /// Run whatever periodic maintenance is due at `now` (milliseconds).
    pub fn tick(&mut self, now: u64) {
        if self.phase != Phase::Member {
            return;
        }
        if now >= self.next_stabilize {
            self.next_stabilize = now + self.cfg.stabilize_ms;
            self.stabilize();
        }
        if now >= self.next_check {
            self.next_check = now + self.cfg.check_predecessor_ms;
            self.check_predecessor();
        }
        if now >= self.next_fix {
            self.next_fix = now + self.cfg.fix_fingers_ms;
            self.fix_next_finger();
        }
        if now >= self.next_merge {
            // The first probe waits a full period: right after joining there is nothing to heal.
            if self.next_merge > 0 {
                self.merge_probe();
            }
            self.next_merge = now + self.cfg.merge_check_ms;
        }
    }

    /// When [`Chord::tick`] next has something to do (milliseconds), or `None` when nothing
    /// periodic can do anything until the state changes: a node alone, with no predecessor
    /// and nobody remembered, has nobody to stabilize with, check or probe. The driver sleeps
    /// until then instead of waking on a fixed beat, so that an idle lone agent uses no CPU.
    pub fn next_due(&self) -> Option<u64> {
        if self.phase != Phase::Member {
            return None;
        }
        let timers = [
            (!self.succs.is_empty() || self.pred.is_some()).then_some(self.next_stabilize),
            self.pred.is_some().then_some(self.next_check),
            (self.successor().id != self.me.id).then_some(self.next_fix),
        ];
        let due = timers.into_iter().flatten().min();
        // The partition probe matters only when it comes first; only then is it worth
        // scanning who is remembered (the driver asks after every change of state).
        if due.is_none_or(|d| self.next_merge < d) {
            let current = |n: &NodeRef| {
                self.succs.iter().any(|s| s.id == n.id)
                    || self.pred.as_ref().is_some_and(|p| p.id == n.id)
            };
            if self.next_merge == 0 || self.remembered.iter().any(|n| !current(n)) {
                return Some(self.next_merge);
            }
        }
        due
    }

    /// Partition healing (not in the papers; DESIGN.md rule 8): look up our own identifier
    /// through a remembered past member that is not among our current pointers. In our own
    /// ring the answer is ourselves; in another ring it names a node closer than our
    /// successor, which we then query and adopt like any stabilization candidate, and
    /// stabilization zips the two rings together.
    fn merge_probe(&mut self) {
        if self.probing || !self.is_member() {
            return;
        }
        let current: Vec<Id> = self
            .succs
            .iter()
            .map(|n| n.id)
            .chain(self.pred.iter().map(|p| p.id))
            .collect();
        let candidates: Vec<NodeRef> = self
            .remembered
            .iter()
            .filter(|n| !current.contains(&n.id))
            .cloned()
            .collect();
        if candidates.is_empty() {
            return;
        }
        let x = candidates[self.merge_cursor % candidates.len()].clone();
        self.merge_cursor = self.merge_cursor.wrapping_add(1);
        let (lookup, action) = Lookup::start(self.me.id, Step::Next(vec![x]));
        self.drive_lookup(Purpose::MergeProbe, lookup, action);
    }

    fn merge_found(&mut self, result: LookupResult) {
        let succ = self.successor().clone();
        let closer = result
            .successors
            .iter()
            .chain(std::iter::once(&result.pred))
            .filter(|c| c.id != self.me.id)
            .filter(|c| succ.id == self.me.id || c.id.in_open(&self.me.id, &succ.id))
            .min_by_key(|c| self.me.id.distance_to(&c.id))
            .cloned();
        if let Some(c) = closer {
            if !self.stabilizing {
                self.stabilizing = true;
                self.send(
                    c.clone(),
                    RingRequest::GetNeighbors,
                    Pending::StabilizeCandidate { cand: c },
                );
            }
        }
    }

    fn remember(&mut self, n: &NodeRef) {
        self.lost.retain(|id| *id != n.id);
        if n.id == self.me.id || self.remembered.iter().any(|r| r.id == n.id) {
            return;
        }
        if self.remembered.len() == REMEMBERED {
            self.remembered.remove(0);
        }
        self.remembered.push(n.clone());
    }

    /// The driver saw `node` fail (for example during a lookup it ran itself): drop it.
    pub fn suspect(&mut self, node: &Id) {
        if *node != self.me.id {
            self.remove_node(node);
        }
    }

    /// One step of a lookup of `key` as this node sees it: `Done` when the key lies between
    /// this node and its successor, otherwise the closest preceding nodes it knows.
    pub fn find_step(&self, key: &Id) -> Option<Step> {
        if self.phase != Phase::Member {
            return None;
        }
        let succ = self.successor();
        if key.in_half_open(&self.me.id, &succ.id) {
            return Some(self.done_step());
        }
        let candidates = self.closest_preceding(key, 4);
        if candidates.is_empty() {
            return Some(self.done_step());
        }
        Some(Step::Next(candidates))
    }

    /// Answer a peer's request from local state.
    pub fn handle_request(&mut self, req: RingRequest) -> RingResponse {
        match req {
            // Only a member answers as one (Zave): a node still joining, or gone, must not be
            // adopted by whoever pings it.
            RingRequest::Ping => match self.phase {
                Phase::Member | Phase::Leaving { .. } => RingResponse::Pong(self.me.clone()),
                Phase::Idle | Phase::Joining | Phase::Left => RingResponse::NotMember,
            },
            RingRequest::GetNeighbors => {
                if self.phase != Phase::Member {
                    return RingResponse::NotMember;
                }
                RingResponse::Neighbors {
                    me: self.me.clone(),
                    predecessor: self.pred.clone(),
                    successors: self.succs.clone(),
                }
            }
            RingRequest::FindStep { key } => match self.find_step(&key) {
                Some(step) => RingResponse::Step(step),
                None => RingResponse::NotMember,
            },
            RingRequest::Notify(q) => {
                if self.phase == Phase::Member {
                    self.rectify(q);
                    // Alone by our successor list (a seed its first joiner just notified):
                    // stabilize now, so that the notifier is our successor one round trip
                    // later rather than at the next period, and a node joining through us
                    // after that copies a list that names it. Otherwise that node knows only
                    // us, and should we fail before the next period, the two joiners never
                    // learn of each other.
                    if self.succs.is_empty() {
                        self.stabilize();
                    }
                    RingResponse::Ack
                } else {
                    RingResponse::NotMember
                }
            }
            RingRequest::LeavingToPredecessor { leaver, successors } => {
                self.splice_out(&leaver, &successors);
                RingResponse::Ack
            }
            RingRequest::LeavingToSuccessor {
                leaver,
                predecessor,
            } => {
                self.adopt_leavers_predecessor(&leaver, predecessor);
                RingResponse::Ack
            }
        }
    }

    /// The outbound request `id` was refused because its peer is busy: the peer answered, so
    /// it is alive, and it is not removed as [`Chord::on_response`] removes a peer whose call
    /// failed. The work the request was for is retried when its timer next comes round; a
    /// lookup asks elsewhere, a join tries its next candidate, and a leave counts the notice
    /// as delivered (the peer's own checks find the leaver gone).
    pub fn on_busy(&mut self, id: u64) {
        self.settle(id, Err("busy".to_string()), true);
    }

    /// The answer (or failure) of the outbound request `id`.
    pub fn on_response(&mut self, id: u64, result: Result<RingResponse, String>) {
        self.settle(id, result, false);
    }

    /// Settle the outbound request `id`; `alive` when it failed but its peer is known to be
    /// alive (busy), so that the peer is kept and nothing is retried before its next round.
    fn settle(&mut self, id: u64, result: Result<RingResponse, String>, alive: bool) {
        let Some(pending) = self.pending.remove(&id) else {
            return;
        };
        // A peer that answers `NotMember` is not a ring member: treat it as failed.
        let result = match result {
            Ok(RingResponse::NotMember) => Err("not a ring member".to_string()),
            other => other,
        };
        match pending {
            Pending::Lookup {
                purpose,
                mut lookup,
                asked,
            } => {
                let action = match result {
                    Ok(RingResponse::Step(step)) => lookup.on_step(step),
                    _ => {
                        if matches!(purpose, Purpose::Finger(_)) && !alive {
                            self.remove_node(&asked.id);
                        }
                        lookup.on_failure(&asked)
                    }
                };
                self.drive_lookup(purpose, lookup, action);
            }
            Pending::JoinAdopt { mut candidates } => match result {
                Ok(RingResponse::Neighbors { me, successors, .. }) => {
                    let mut list = vec![me.clone()];
                    list.extend(successors);
                    self.phase = Phase::Member;
                    self.set_successors(list);
                    self.events.push(Event::Joined);
                    self.notify(me);
                }
                _ => {
                    candidates.remove(0);
                    self.join_adopt(candidates);
                }
            },
            Pending::Stabilize { succ } => {
                self.stabilizing = false;
                match result {
                    Ok(RingResponse::Neighbors {
                        me,
                        predecessor,
                        successors,
                    }) => {
                        let mut list = vec![me.clone()];
                        list.extend(successors);
                        self.set_successors(list);
                        match predecessor {
                            Some(x)
                                if x.id != self.me.id
                                    && x.id.in_open(&self.me.id, &succ.id)
                                    && self.is_member() =>
                            {
                                self.stabilizing = true;
                                self.send(
                                    x.clone(),
                                    RingRequest::GetNeighbors,
                                    Pending::StabilizeCandidate { cand: x },
                                );
                            }
                            _ => self.notify(me),
                        }
                    }
                    _ if alive => {}
                    _ => {
                        self.remove_node(&succ.id);
                        if !self.succs.is_empty() {
                            self.stabilize();
                        }
                    }
                }
            }
            Pending::StabilizeCandidate { cand } => {
                self.stabilizing = false;
                match result {
                    Ok(RingResponse::Neighbors { me, successors, .. }) => {
                        let mut list = vec![me.clone()];
                        list.extend(successors);
                        self.set_successors(list);
                        self.notify(me);
                    }
                    _ if alive => {}
                    _ => {
                        self.remove_node(&cand.id);
                        if let Some(s) = self.succs.first().cloned() {
                            self.notify(s);
                        }
                    }
                }
            }
            Pending::Notify { to } => {
                if result.is_err() && !alive {
                    self.remove_node(&to.id);
                }
            }
            Pending::CheckPredecessor { pred } => {
                self.checking = false;
                if result.is_err() && !alive {
                    self.remove_node(&pred.id);
                }
            }
            Pending::RectifyPing { old, notifier } => {
                self.rectifying = false;
                if result.is_err() && !alive {
                    self.remove_node(&old.id);
                    if self.pred.is_none() && self.is_member() {
                        self.set_predecessor(Some(notifier));
                    }
                }
            }
            Pending::AdoptPredecessor { cand } => {
                if result.is_ok() && self.is_member() {
                    let closer = match &self.pred {
                        None => true,
                        Some(p) => cand.id.in_open(&p.id, &self.me.id),
                    };
                    if closer {
                        self.set_predecessor(Some(cand));
                    }
                }
            }
            Pending::LeaveNotice => self.leave_notice_done(),
        }
    }

    /// One of a leaver's notices has been answered, or has failed.
    fn leave_notice_done(&mut self) {
        if let Phase::Leaving { waiting } = &mut self.phase {
            *waiting -= 1;
            if *waiting == 0 {
                self.phase = Phase::Left;
                self.events.push(Event::Left);
            }
        }
    }

    // ---- maintenance -------------------------------------------------------------------

    fn stabilize(&mut self) {
        if self.stabilizing || !self.is_member() {
            return;
        }
        if let Some(s) = self.succs.first().cloned() {
            self.stabilizing = true;
            self.send(
                s.clone(),
                RingRequest::GetNeighbors,
                Pending::Stabilize { succ: s },
            );
        } else if let Some(p) = self.pred.clone() {
            // Alone by our successor list, but someone notified us: it is our successor
            // candidate (in a ring of two, the predecessor is also the successor).
            self.stabilizing = true;
            self.send(
                p.clone(),
                RingRequest::GetNeighbors,
                Pending::StabilizeCandidate { cand: p },
            );
        }
    }

    fn notify(&mut self, to: NodeRef) {
        if to.id == self.me.id {
            return;
        }
        let msg = RingRequest::Notify(self.me.clone());
        self.send(to.clone(), msg, Pending::Notify { to });
    }

    fn rectify(&mut self, q: NodeRef) {
        if q.id == self.me.id {
            return;
        }
        match self.pred.clone() {
            None => self.set_predecessor(Some(q)),
            Some(p) if p.id == q.id => {}
            Some(p) if q.id.in_open(&p.id, &self.me.id) => self.set_predecessor(Some(q)),
            Some(p) => {
                // The notifier is farther than our predecessor: replace it only if the
                // predecessor turns out dead.
                if !self.rectifying {
                    self.rectifying = true;
                    self.send(
                        p.clone(),
                        RingRequest::Ping,
                        Pending::RectifyPing {
                            old: p,
                            notifier: q,
                        },
                    );
                }
            }
        }
    }

    fn check_predecessor(&mut self) {
        if self.checking {
            return;
        }
        if let Some(p) = self.pred.clone() {
            self.checking = true;
            self.send(
                p.clone(),
                RingRequest::Ping,
                Pending::CheckPredecessor { pred: p },
            );
        }
    }

    fn fix_next_finger(&mut self) {
        if self.fixing || !self.is_member() {
            return;
        }
        // Fingers whose start falls before the successor are the successor: no lookup needed.
        let succ = self.successor().clone();
        let mut steps = 0;
        while steps < BITS {
            let i = self.next_finger;
            let start = self.me.id.add_pow2(i);
            if !start.in_half_open(&self.me.id, &succ.id) || succ.id == self.me.id {
                break;
            }
            self.fingers[i] = Some(succ.clone());
            self.next_finger = (i + 1) % BITS;
            steps += 1;
        }
        if succ.id == self.me.id {
            return;
        }
        let i = self.next_finger;
        let start = self.me.id.add_pow2(i);
        let Some(first) = self.find_step(&start) else {
            return;
        };
        let (lookup, action) = Lookup::start(start, first);
        self.drive_lookup(Purpose::Finger(i), lookup, action);
    }

    fn drive_lookup(&mut self, purpose: Purpose, lookup: Lookup, action: LookupAction) {
        match action {
            LookupAction::Ask(node) => {
                match purpose {
                    Purpose::Finger(_) => self.fixing = true,
                    Purpose::MergeProbe => self.probing = true,
                    Purpose::Join => {}
                }
                let msg = RingRequest::FindStep { key: lookup.key() };
                self.send(
                    node.clone(),
                    msg,
                    Pending::Lookup {
                        purpose,
                        lookup,
                        asked: node,
                    },
                );
            }
            LookupAction::Done(result) => match purpose {
                Purpose::Join => self.join_found(result),
                Purpose::Finger(i) => {
                    self.fixing = false;
                    self.set_finger(i, result.owner().clone());
                }
                Purpose::MergeProbe => {
                    self.probing = false;
                    self.merge_found(result);
                }
            },
            LookupAction::Failed(reason) => match purpose {
                Purpose::Join => {
                    self.phase = Phase::Idle;
                    self.events.push(Event::JoinFailed(reason));
                }
                Purpose::Finger(i) => {
                    self.fixing = false;
                    self.next_finger = (i + 1) % BITS;
                }
                Purpose::MergeProbe => self.probing = false,
            },
        }
    }

    fn set_finger(&mut self, i: usize, owner: NodeRef) {
        if owner.id == self.me.id || !owner.is_genuine() {
            self.fingers[i] = None;
            self.next_finger = (i + 1) % BITS;
            return;
        }
        let mut j = i;
        while j < BITS && self.me.id.add_pow2(j).in_half_open(&self.me.id, &owner.id) {
            self.fingers[j] = Some(owner.clone());
            j += 1;
        }
        if j == i {
            self.fingers[i] = Some(owner);
            j += 1;
        }
        self.next_finger = j % BITS;
    }

    fn join_found(&mut self, result: LookupResult) {
        let mut candidates: Vec<NodeRef> = result
            .successors
            .into_iter()
            .filter(|n| n.id != self.me.id)
            .collect();
        if result.pred.id != self.me.id {
            candidates.push(result.pred);
        }
        self.join_adopt(candidates);
    }

    fn join_adopt(&mut self, candidates: Vec<NodeRef>) {
        let Some(first) = candidates.first().cloned() else {
            self.phase = Phase::Idle;
            self.events.push(Event::JoinFailed(
                "no live successor candidate answered".to_string(),
            ));
            return;
        };
        self.send(
            first,
            RingRequest::GetNeighbors,
            Pending::JoinAdopt { candidates },
        );
    }

    /// `leaver` said it is leaving gracefully: it no longer counts as a member.
    fn forget_leaver(&mut self, leaver: &Id) {
        self.lost.retain(|id| id != leaver);
        if !self.left.contains(leaver) {
            if self.left.len() == LOST {
                self.left.remove(0);
            }
            self.left.push(*leaver);
        }
    }

    /// Our successor `leaver` is leaving: drop it, and take its successor only once that
    /// node has answered (Zave: never adopt a successor without checking it is alive; the
    /// leaver's list may be stale). Until then the rest of our own list stands in.
    fn splice_out(&mut self, leaver: &NodeRef, their_succs: &[NodeRef]) {
        self.forget_leaver(&leaver.id);
        self.clear_fingers(&leaver.id);
        if !self.drop_successor(&leaver.id) {
            return;
        }
        let candidate = their_succs
            .iter()
            .find(|n| n.id != leaver.id && n.id != self.me.id && n.is_genuine())
            .cloned();
        if let Some(cand) = candidate {
            let closer = match self.succs.first() {
                None => true,
                Some(first) => cand.id.in_open(&self.me.id, &first.id),
            };
            if closer {
                self.stabilizing = true;
                self.send(
                    cand.clone(),
                    RingRequest::GetNeighbors,
                    Pending::StabilizeCandidate { cand },
                );
            }
        }
    }

    /// Take `id` out of the successor list; whether it was in it.
    fn drop_successor(&mut self, id: &Id) -> bool {
        if !self.succs.iter().any(|n| n.id == *id) {
            return false;
        }
        let list = self.succs.iter().filter(|n| n.id != *id).cloned().collect();
        self.set_successors(list);
        true
    }

    fn adopt_leavers_predecessor(&mut self, leaver: &NodeRef, predecessor: Option<NodeRef>) {
        self.forget_leaver(&leaver.id);
        self.clear_fingers(&leaver.id);
        self.drop_successor(&leaver.id);
        if self.pred.as_ref().map(|p| p.id) == Some(leaver.id) {
            self.set_predecessor(None);
            if let Some(p) = predecessor {
                if p.id != self.me.id {
                    self.send(
                        p.clone(),
                        RingRequest::Ping,
                        Pending::AdoptPredecessor { cand: p },
                    );
                }
            }
        }
    }

    // ---- state helpers -----------------------------------------------------------------

    fn done_step(&self) -> Step {
        let successors = if self.succs.is_empty() {
            vec![self.me.clone()]
        } else {
            self.succs.clone()
        };
        Step::Done {
            pred: self.me.clone(),
            successors,
        }
    }

    /// Up to `n` known nodes strictly between this node and `key`: first the closest
    /// preceding finger (the classic Chord step, which halves the distance), then fall-backs
    /// from the fingers and the successor list, closest to `key` first, for when it does not
    /// answer.
    fn closest_preceding(&self, key: &Id, n: usize) -> Vec<NodeRef> {
        let between = |c: &&NodeRef| c.id.in_open(&self.me.id, key);
        let mut fingers: Vec<&NodeRef> = self.fingers.iter().flatten().filter(between).collect();
        fingers.sort_by_key(|c| c.id.distance_to(key));
        fingers.dedup_by_key(|c| c.id);
        let mut rest: Vec<&NodeRef> = fingers.iter().skip(1).copied().collect();
        rest.extend(self.succs.iter().filter(between));
        rest.sort_by_key(|c| c.id.distance_to(key));
        rest.dedup_by_key(|c| c.id);
        let mut out: Vec<NodeRef> = Vec::with_capacity(n);
        for c in fingers.first().into_iter().chain(rest.iter()) {
            if out.len() == n {
                break;
            }
            if !out.iter().any(|o| o.id == c.id) {
                out.push((*c).clone());
            }
        }
        out
    }

    fn set_successors(&mut self, list: Vec<NodeRef>) {
        let mut out: Vec<NodeRef> = Vec::with_capacity(self.cfg.successors);
        for n in list {
            // A list that reaches this node has wrapped around the ring (fewer than r + 1
            // members): what follows is behind us, and stale entries there would circulate.
            if n.id == self.me.id {
                break;
            }
            if !n.is_genuine() || out.iter().any(|o| o.id == n.id) {
                continue;
            }
            if out.len() == self.cfg.successors {
                break;
            }
            out.push(n);
        }
        for n in &out {
            self.remember(n);
        }
        if out != self.succs {
            self.succs = out;
            self.events
                .push(Event::SuccessorsChanged(self.succs.clone()));
        }
    }

    fn set_predecessor(&mut self, new: Option<NodeRef>) {
        if let Some(n) = &new {
            if !n.is_genuine() {
                return;
            }
            self.remember(n);
        }
        if self.pred != new {
            let old = std::mem::replace(&mut self.pred, new.clone());
            self.events.push(Event::PredecessorChanged { old, new });
        }
    }

    fn clear_fingers(&mut self, id: &Id) {
        for f in self.fingers.iter_mut() {
            if f.as_ref().map(|n| n.id) == Some(*id) {
                *f = None;
            }
        }
    }

    fn remove_node(&mut self, id: &Id) {
        let mut failed = None;
        self.clear_fingers(id);
        if let Some(pos) = self.succs.iter().position(|n| n.id == *id) {
            failed = Some(self.succs[pos].clone());
            let mut list = self.succs.clone();
            list.remove(pos);
            self.set_successors(list);
        }
        if self.pred.as_ref().map(|p| p.id) == Some(*id) {
            failed = self.pred.clone();
            self.set_predecessor(None);
        }
        if let Some(node) = failed {
            if !self.lost.contains(&node.id) && !self.left.contains(&node.id) {
                if self.lost.len() == LOST {
                    self.lost.remove(0);
                }
                self.lost.push(node.id);
            }
            self.events.push(Event::PeerFailed(node));
        }
    }

    fn send(&mut self, to: NodeRef, msg: RingRequest, pending: Pending) {
        let id = self.next_req;
        self.next_req += 1;
        self.pending.insert(id, pending);
        self.outbox.push(Outbound { id, to, msg });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(port: u16) -> NodeRef {
        NodeRef::new(format!("10.0.0.1:{port}"), "")
    }

    fn member(port: u16) -> Chord {
        let mut c = Chord::new(node(port), Config::default());
        c.create();
        c.take_outbound();
        c
    }

    /// Answer every outbound request of `c` matching `pick` as busy; how many were.
    fn answer_busy(c: &mut Chord, pick: impl Fn(&RingRequest) -> bool) -> usize {
        let out = c.take_outbound();
        let busy: Vec<u64> = out.iter().filter(|o| pick(&o.msg)).map(|o| o.id).collect();
        for id in &busy {
            c.on_busy(*id);
        }
        busy.len()
    }

    #[test]
    fn a_busy_successor_or_predecessor_is_kept_and_asked_again_next_round() {
        let mut c = member(1);
        let (succ, pred) = (node(2), node(3));
        c.set_successors(vec![succ.clone()]);
        c.set_predecessor(Some(pred.clone()));
        c.take_outbound();
        c.take_events();
        let period = c.cfg.stabilize_ms.max(c.cfg.check_predecessor_ms);
        for round in 1..=3u64 {
            c.tick(round * period * 2);
            let asked = answer_busy(&mut c, |m| {
                matches!(m, RingRequest::GetNeighbors | RingRequest::Ping)
            });
            assert_eq!(
                asked, 2,
                "round {round}: stabilize and the predecessor check are sent"
            );
            assert_eq!(
                c.succs,
                vec![succ.clone()],
                "round {round}: the busy successor stays"
            );
            assert_eq!(
                c.pred.as_ref(),
                Some(&pred),
                "round {round}: the busy predecessor stays"
            );
            assert!(
                !c.take_events()
                    .iter()
                    .any(|e| matches!(e, Event::PeerFailed(_))),
                "round {round}: a busy peer is not reported failed"
            );
        }
        // The same answers as a failure drop both, as before.
        c.tick(8 * period * 2);
        for o in c.take_outbound() {
            c.on_response(o.id, Err("connection refused".into()));
        }
        assert!(c.succs.iter().all(|n| n.id != succ.id));
        assert!(c.pred.is_none());
    }

    #[test]
    fn a_leave_whose_notices_are_refused_as_busy_still_completes() {
        let mut c = member(1);
        c.set_successors(vec![node(2)]);
        c.set_predecessor(Some(node(3)));
        c.take_outbound();
        c.take_events();
        c.leave();
        let sent = answer_busy(&mut c, |_| true);
        assert!(sent > 0, "the leaver tells its neighbours");
        assert!(
            c.take_events().iter().any(|e| matches!(e, Event::Left)),
            "a busy neighbour does not hold the leave open"
        );
    }

    #[test]
    fn only_a_member_answers_a_ping_as_one() {
        let mut c = Chord::new(node(1), Config::default());
        assert_eq!(c.handle_request(RingRequest::Ping), RingResponse::NotMember);
        c.join(&node(9).addr);
        assert_eq!(
            c.handle_request(RingRequest::Ping),
            RingResponse::NotMember,
            "a joining node is not a member yet"
        );
        let mut c = member(1);
        assert!(matches!(
            c.handle_request(RingRequest::Ping),
            RingResponse::Pong(_)
        ));
    }

    #[test]
    fn a_node_whose_id_is_not_sha1_of_its_address_is_never_adopted() {
        let mut c = member(1);
        let mut fake = node(2);
        fake.id = c.me.id.add_pow2(3);
        assert!(!fake.is_genuine() && node(3).is_genuine());
        c.set_successors(vec![fake.clone(), node(3)]);
        assert_eq!(c.succs, vec![node(3)], "the impostor is skipped");
        c.set_predecessor(Some(fake.clone()));
        assert!(c.pred.is_none());
        c.handle_request(RingRequest::Notify(fake.clone()));
        assert!(c.pred.as_ref().is_none_or(|p| p.id != fake.id));
        c.set_finger(0, fake.clone());
        assert!(c.fingers.iter().flatten().all(|f| f.id != fake.id));
    }

    #[test]
    fn a_leavers_successor_is_asked_before_it_is_adopted() {
        let mut c = member(1);
        let (leaver, next) = (node(2), node(3));
        c.set_successors(vec![leaver.clone()]);
        c.take_outbound();
        c.handle_request(RingRequest::LeavingToPredecessor {
            leaver: leaver.clone(),
            successors: vec![next.clone()],
        });
        assert!(
            c.succs.iter().all(|n| n.id != next.id && n.id != leaver.id),
            "neither the leaver nor its unchecked successor: {:?}",
            c.succs
        );
        let out = c.take_outbound();
        assert!(
            out.iter()
                .any(|o| o.to.id == next.id && o.msg == RingRequest::GetNeighbors),
            "the candidate is asked first: {out:?}"
        );
        // It answers: now it is adopted.
        let id = out
            .iter()
            .find(|o| o.to.id == next.id)
            .map(|o| o.id)
            .unwrap_or_default();
        c.on_response(
            id,
            Ok(RingResponse::Neighbors {
                me: next.clone(),
                predecessor: Some(c.me.clone()),
                successors: vec![c.me.clone()],
            }),
        );
        assert_eq!(c.succs.first().map(|n| n.id), Some(next.id));
    }
}
