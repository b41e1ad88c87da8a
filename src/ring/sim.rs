//! A deterministic simulator for the ring core: seeded randomness, virtual time, message delay
//! and loss, crashes, joins and graceful leaves. Rings of thousands of nodes run in a unit test,
//! and any failure reproduces exactly from its seed.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::id::Id;
use super::invariants::{self, View};
use super::lookup::{Lookup, LookupAction, LookupResult};
use super::messages::{NodeRef, RingRequest, RingResponse};
use super::node::{Chord, Config, Event};

enum Ev {
    Deliver {
        from: Id,
        to: NodeRef,
        req: u64,
        msg: RingRequest,
        lost_reply: bool,
    },
    Reply {
        to: Id,
        req: u64,
        result: Result<RingResponse, String>,
    },
    RetryJoin(Id),
}

struct Item {
    at: u64,
    seq: u64,
    ev: Ev,
}
impl PartialEq for Item {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Item {
    fn cmp(&self, o: &Self) -> Ordering {
        // Min-heap on (time, sequence).
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// The simulated world.
pub struct Sim {
    pub now: u64,
    pub rng: StdRng,
    pub cfg: Config,
    /// Probability that a request or its answer is lost.
    pub loss: f64,
    /// Message delay range in ms.
    pub delay: (u64, u64),
    /// How long a caller waits before it declares a call failed.
    pub timeout: u64,
    /// How often every node's `tick` runs.
    pub tick_ms: u64,
    nodes: BTreeMap<Id, Chord>,
    queue: BinaryHeap<Item>,
    seq: u64,
    next_port: u64,
    /// Nodes whose join has not finished yet.
    joining: HashSet<Id>,
    /// Nodes whose join finished since the last `take_joined`.
    joined: Vec<Id>,
    /// A network partition: messages between this side and the rest are lost.
    pub partition: Option<HashSet<Id>>,
    /// Check [`invariants::check_step`] after every delivered message and tick, keeping the
    /// first violation (with its virtual time) in `violation`.
    pub check_every_step: bool,
    /// The first invariant violation seen by a step check.
    pub violation: Option<String>,
}

impl Sim {
    pub fn new(seed: u64, cfg: Config) -> Sim {
        Sim {
            now: 0,
            rng: StdRng::seed_from_u64(seed),
            cfg,
            loss: 0.0,
            delay: (1, 5),
            timeout: 100,
            tick_ms: 50,
            nodes: BTreeMap::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            next_port: 1,
            joining: HashSet::new(),
            joined: Vec::new(),
            partition: None,
            check_every_step: false,
            violation: None,
        }
    }

    fn cut(&self, a: &Id, b: &Id) -> bool {
        self.partition
            .as_ref()
            .is_some_and(|side| side.contains(a) != side.contains(b))
    }

    /// Nodes that finished joining since the last call.
    pub fn take_joined(&mut self) -> Vec<Id> {
        std::mem::take(&mut self.joined)
    }

    /// A live node's state machine.
    pub fn node(&self, id: &Id) -> Option<&Chord> {
        self.nodes.get(id)
    }

    fn new_ref(&mut self) -> NodeRef {
        let port = self.next_port;
        self.next_port += 1;
        let addr = format!(
            "10.{}.{}.{}:7400",
            port / 65536,
            (port / 256) % 256,
            port % 256
        );
        NodeRef::new(addr.clone(), addr)
    }

    /// The first node, creating the ring.
    pub fn create(&mut self) -> Id {
        let me = self.new_ref();
        let id = me.id;
        let mut chord = Chord::new(me, self.cfg.clone());
        chord.create();
        self.nodes.insert(id, chord);
        self.flush(id);
        id
    }

    /// A new node joining through a random live member.
    pub fn join(&mut self) -> Id {
        let seed = self.random_member().expect("a member to join through");
        self.join_through(seed)
    }

    /// A new node joining through `seed`.
    pub fn join_through(&mut self, seed: Id) -> Id {
        let me = self.new_ref();
        let id = me.id;
        let seed_addr = self.nodes[&seed].me().addr.clone();
        let mut chord = Chord::new(me, self.cfg.clone());
        chord.join(&seed_addr);
        self.nodes.insert(id, chord);
        self.joining.insert(id);
        self.flush(id);
        id
    }

    /// Kill a node at once: it answers nothing from now on.
    pub fn crash(&mut self, id: Id) {
        self.nodes.remove(&id);
        self.joining.remove(&id);
    }

    /// Start a graceful leave; the node disappears once it has told its neighbours.
    pub fn leave(&mut self, id: Id) {
        if let Some(c) = self.nodes.get_mut(&id) {
            c.leave();
            self.flush(id);
        }
    }

    pub fn random_member(&mut self) -> Option<Id> {
        let members: Vec<Id> = self
            .nodes
            .iter()
            .filter(|(_, c)| c.is_member())
            .map(|(id, _)| *id)
            .collect();
        if members.is_empty() {
            return None;
        }
        Some(members[self.rng.gen_range(0..members.len())])
    }

    pub fn members(&self) -> Vec<Id> {
        self.nodes
            .iter()
            .filter(|(_, c)| c.is_member())
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Item {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn delay(&mut self) -> u64 {
        self.rng.gen_range(self.delay.0..=self.delay.1)
    }

    fn lost(&mut self) -> bool {
        self.loss > 0.0 && self.rng.gen_bool(self.loss)
    }

    fn flush(&mut self, id: Id) {
        let Some(chord) = self.nodes.get_mut(&id) else {
            return;
        };
        let out = chord.take_outbound();
        let events = chord.take_events();
        for o in out {
            if self.lost() {
                let at = self.now + self.timeout;
                self.schedule(
                    at,
                    Ev::Reply {
                        to: id,
                        req: o.id,
                        result: Err("lost".into()),
                    },
                );
            } else {
                let at = self.now + self.delay();
                let lost_reply = self.lost();
                self.schedule(
                    at,
                    Ev::Deliver {
                        from: id,
                        to: o.to,
                        req: o.id,
                        msg: o.msg,
                        lost_reply,
                    },
                );
            }
        }
        for e in events {
            match e {
                Event::Joined => {
                    self.joining.remove(&id);
                    self.joined.push(id);
                }
                Event::JoinFailed(_) => {
                    let at = self.now + 200;
                    self.schedule(at, Ev::RetryJoin(id));
                }
                Event::Left => {
                    self.nodes.remove(&id);
                }
                _ => {}
            }
        }
    }

    fn step(&mut self, item: Item) {
        self.now = self.now.max(item.at);
        match item.ev {
            Ev::Deliver {
                from,
                to,
                req,
                msg,
                lost_reply,
            } => {
                let sent_at = self.now;
                let cut = self.cut(&from, &to.id);
                let result = match self.nodes.get_mut(&to.id) {
                    Some(dest) if dest.me().addr == to.addr && !cut => {
                        let resp = dest.handle_request(msg);
                        self.flush(to.id);
                        if lost_reply {
                            None
                        } else {
                            Some(resp)
                        }
                    }
                    _ => None,
                };
                match result {
                    Some(resp) => {
                        let at = self.now + self.delay();
                        self.schedule(
                            at,
                            Ev::Reply {
                                to: from,
                                req,
                                result: Ok(resp),
                            },
                        );
                    }
                    None => {
                        let at = sent_at + self.timeout;
                        self.schedule(
                            at,
                            Ev::Reply {
                                to: from,
                                req,
                                result: Err("timeout".into()),
                            },
                        );
                    }
                }
            }
            Ev::Reply { to, req, result } => {
                if let Some(c) = self.nodes.get_mut(&to) {
                    c.on_response(req, result);
                    self.flush(to);
                }
            }
            Ev::RetryJoin(id) => {
                let seed = self.random_member();
                if let (Some(seed), true) = (seed, self.nodes.contains_key(&id)) {
                    let addr = self.nodes[&seed].me().addr.clone();
                    if let Some(c) = self.nodes.get_mut(&id) {
                        c.join(&addr);
                    }
                    self.flush(id);
                }
            }
        }
    }

    /// Advance virtual time by `ms`, ticking every node every `tick_ms`.
    pub fn run_for(&mut self, ms: u64) {
        let end = self.now + ms;
        let mut next_tick = self.now;
        while self.now < end {
            let tick_at = next_tick.min(end);
            while self.queue.peek().is_some_and(|i| i.at <= tick_at) {
                if let Some(item) = self.queue.pop() {
                    self.step(item);
                    self.check_step();
                }
            }
            self.now = tick_at;
            if tick_at == next_tick {
                let ids: Vec<Id> = self.nodes.keys().copied().collect();
                for id in ids {
                    // Ticked only when it says work is due, as the agent's driver does, so
                    // that every convergence test here also checks `next_due`.
                    if let Some(c) = self.nodes.get_mut(&id) {
                        if c.next_due().is_some_and(|due| due <= tick_at) {
                            c.tick(tick_at);
                        }
                    }
                    self.flush(id);
                }
                next_tick += self.tick_ms;
            }
            if tick_at == end {
                break;
            }
        }
    }

    fn check_step(&mut self) {
        if !self.check_every_step || self.violation.is_some() {
            return;
        }
        if let Err(e) = invariants::check_step(&self.member_views(), self.cfg.successors) {
            self.violation = Some(format!("at {} ms: {e}", self.now));
        }
    }

    /// Check the invariants over the live members among `ids` only (one side of a partition).
    pub fn check_among(&self, ids: &HashSet<Id>) -> Result<(), String> {
        let views: Vec<View> = self
            .nodes
            .values()
            .filter(|c| c.is_member() && ids.contains(&c.me().id))
            .map(View::of)
            .collect();
        invariants::check(&views, self.cfg.successors, true)
    }

    /// Check the invariants over the live members.
    pub fn check(&self, converged: bool) -> Result<(), String> {
        if !self.joining.is_empty() {
            return Err(format!("{} nodes still joining", self.joining.len()));
        }
        invariants::check(&self.member_views(), self.cfg.successors, converged)
    }

    fn member_views(&self) -> Vec<View> {
        self.nodes
            .values()
            .filter(|c| c.is_member())
            .map(View::of)
            .collect()
    }

    /// Run until the invariants hold (converged) or `max_ms` of virtual time pass.
    pub fn settle(&mut self, max_ms: u64) -> Result<u64, String> {
        let start = self.now;
        loop {
            self.run_for(self.cfg.stabilize_ms);
            if self.check(true).is_ok() && self.fingers_settled() {
                return Ok(self.now - start);
            }
            if self.now - start >= max_ms {
                return self.check(true).map(|_| self.now - start);
            }
        }
    }

    /// Whether every member has run a full round of finger fixing since the last change is
    /// not observable from outside; approximate it by "every finger points at a live member".
    fn fingers_settled(&self) -> bool {
        self.nodes.values().all(|c| {
            c.fingers()
                .iter()
                .flatten()
                .all(|f| self.nodes.contains_key(&f.id))
        })
    }

    /// The true owner of `key`: the first live member at or after it.
    pub fn true_owner(&self, key: &Id) -> Id {
        let members = self.members();
        members
            .iter()
            .find(|m| *m >= key)
            .or(members.first())
            .copied()
            .expect("a member")
    }

    /// Run a lookup from `from` against the current states (instant delivery, dead nodes
    /// and nodes across a partition fail), as the agent would over the network.
    pub fn lookup(&mut self, from: Id, key: Id) -> Result<LookupResult, String> {
        let first = self.nodes[&from].find_step(&key).ok_or("not a member")?;
        let (mut lookup, mut action) = Lookup::start(key, first);
        loop {
            match action {
                LookupAction::Done(r) => return Ok(r),
                LookupAction::Failed(e) => return Err(e),
                LookupAction::Ask(node) => {
                    let step = self
                        .nodes
                        .get(&node.id)
                        .filter(|_| !self.cut(&from, &node.id))
                        .and_then(|c| c.find_step(&key));
                    action = match step {
                        Some(s) => lookup.on_step(s),
                        None => lookup.on_failure(&node),
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::hlc::{node_number, Clock, Hlc};
    use crate::registry::unit::{confirmations_needed, majority};
    use crate::registry::{Record, RegisterBody};

    fn cfg(r: usize) -> Config {
        Config {
            successors: r,
            stabilize_ms: 200,
            fix_fingers_ms: 50,
            check_predecessor_ms: 200,
            merge_check_ms: 2_000,
        }
    }

    /// Grow a ring to `n` nodes in waves (each wave at most doubles it), settling in between.
    fn grow(sim: &mut Sim, n: usize) {
        if sim.len() == 0 {
            sim.create();
        }
        while sim.len() < n {
            let wave = sim.len().min(n - sim.len());
            for _ in 0..wave {
                sim.join();
            }
            sim.settle(600_000)
                .expect("ring settles after a wave of joins");
        }
    }

    /// Look up `count` random keys from random members; return (failures, mean hops).
    fn lookups(sim: &mut Sim, count: usize) -> (usize, f64) {
        let mut failures = 0;
        let mut hops = 0u64;
        for _ in 0..count {
            let key = Id::hash(&sim.rng.gen::<[u8; 16]>());
            let from = sim.random_member().expect("member");
            match sim.lookup(from, key) {
                Ok(r) if r.owner().id == sim.true_owner(&key) => hops += r.hops as u64,
                _ => failures += 1,
            }
        }
        (failures, hops as f64 / count as f64)
    }

    #[test]
    fn a_lone_node_has_nothing_due_until_another_joins() {
        let mut sim = Sim::new(3, cfg(4));
        let first = sim.create();
        sim.run_for(5_000);
        let due = |sim: &Sim| sim.node(&first).and_then(|c| c.next_due());
        assert_eq!(due(&sim), None, "alone: no timer to wake for");
        sim.join();
        sim.settle(60_000).expect("two nodes settle");
        assert!(
            due(&sim).is_some(),
            "with a neighbour: stabilization is due"
        );
    }

    /// Run until `id` has joined (at most `max_ms`).
    fn until_joined(sim: &mut Sim, id: Id, max_ms: u64) {
        let start = sim.now;
        while !sim.take_joined().contains(&id) {
            assert!(sim.now - start < max_ms, "{id} did not join");
            sim.run_for(5);
        }
    }

    /// Two nodes join through the first, the second a moment after the first is in, and the
    /// first crashes as soon as the second is in, before any periodic stabilization: the two
    /// joiners must still know of each other and become one ring. (A seed alone on the ring
    /// used to learn its first joiner only at its next stabilization round, so a second
    /// joiner that came before it copied an empty successor list and knew only the seed; with
    /// the seed gone, each joiner was left alone for good.)
    #[test]
    fn a_seed_crashed_right_after_two_joins_leaves_the_joiners_one_ring() {
        for seed in 0..40 {
            let mut sim = Sim::new(seed, cfg(4));
            let a = sim.create();
            let b = sim.join_through(a);
            until_joined(&mut sim, b, 10_000);
            sim.run_for(30);
            let c = sim.join_through(a);
            until_joined(&mut sim, c, 10_000);
            sim.crash(a);
            sim.settle(60_000)
                .unwrap_or_else(|e| panic!("seed {seed}: the joiners are not one ring: {e}"));
            assert_eq!(sim.len(), 2);
        }
    }

    #[test]
    fn small_rings_of_one_two_and_three_nodes_converge() {
        let mut sim = Sim::new(1, cfg(4));
        sim.create();
        sim.check(true).expect("one node is a ring");
        for n in 2..=5 {
            sim.join();
            sim.settle(60_000)
                .unwrap_or_else(|e| panic!("{n} nodes: {e}"));
            let (failures, _) = lookups(&mut sim, 200);
            assert_eq!(failures, 0, "{n} nodes");
        }
    }

    /// The write quorum's view of the ring (`Chord::known_members`): members lost to a crash
    /// still count, members that left gracefully do not.
    #[test]
    fn crashed_members_still_count_for_the_quorum_but_leavers_do_not() {
        let mut sim = Sim::new(5, cfg(4));
        grow(&mut sim, 3);
        sim.settle(60_000).expect("3 nodes settle");
        let ids = sim.members();
        sim.crash(ids[1]);
        sim.crash(ids[2]);
        sim.settle(60_000).expect("the survivor settles");
        let survivor = sim.node(&ids[0]).expect("survivor");
        assert_eq!(survivor.successor().id, ids[0], "alone on its ring");
        assert_eq!(survivor.known_members(), 3, "the crashed two still count");

        let mut sim = Sim::new(6, cfg(4));
        grow(&mut sim, 3);
        sim.settle(60_000).expect("3 nodes settle");
        let ids = sim.members();
        sim.leave(ids[1]);
        sim.settle(60_000).expect("2 nodes settle");
        sim.leave(ids[2]);
        sim.settle(60_000).expect("1 node settles");
        let last = sim.node(&ids[0]).expect("last");
        assert_eq!(
            last.known_members(),
            1,
            "a ring shrunk by leaves is a ring of one: {last:?}"
        );
    }

    #[test]
    fn thousand_nodes_lookups_find_true_owner_with_half_log_n_hops() {
        let n = 1000;
        let mut sim = Sim::new(7, cfg(8));
        grow(&mut sim, n);
        // Let fingers converge fully: a few finger rounds.
        sim.run_for(20_000);
        let (failures, mean) = lookups(&mut sim, 5000);
        let expected = 0.5 * (n as f64).log2();
        println!("1000 nodes: mean hops {mean:.3} (½·log2 N = {expected:.3})");
        assert_eq!(failures, 0);
        assert!(
            (mean - expected).abs() <= 0.5,
            "mean hops {mean:.3} not within ½·log2 N ± 0.5 = {expected:.3} ± 0.5"
        );
    }

    #[test]
    fn crash_half_the_nodes_at_once_then_zero_failed_lookups() {
        let n = 1000usize;
        let r = 2 * (n as f64).log2().ceil() as usize;
        let mut sim = Sim::new(11, cfg(r));
        grow(&mut sim, n);
        let mut members = sim.members();
        // Crash a random half.
        for i in (1..members.len()).rev() {
            let j = sim.rng.gen_range(0..=i);
            members.swap(i, j);
        }
        for id in members.iter().take(n / 2) {
            sim.crash(*id);
        }
        let took = sim
            .settle(600_000)
            .expect("invariants hold after crashing half");
        println!("repaired after crashing half of {n} in {took} ms of virtual time");
        let (failures, mean) = lookups(&mut sim, 3000);
        println!("after the crash: mean hops {mean:.3}");
        assert_eq!(failures, 0);
    }

    #[test]
    fn churn_with_loss_then_invariants_hold_after_every_quiet_period() {
        let mut sim = Sim::new(23, cfg(6));
        grow(&mut sim, 60);
        for round in 0..8 {
            sim.loss = 0.05;
            for _ in 0..10 {
                match sim.rng.gen_range(0..3) {
                    0 => {
                        sim.join();
                    }
                    1 if sim.members().len() > 10 => {
                        let id = sim.random_member().expect("member");
                        sim.leave(id);
                    }
                    2 if sim.members().len() > 10 => {
                        // Crash at most 2 nodes between quiet periods: fewer than r neighbours.
                        let id = sim.random_member().expect("member");
                        sim.crash(id);
                    }
                    _ => {}
                }
                let pause = sim.rng.gen_range(0..300);
                sim.run_for(pause);
            }
            sim.loss = 0.0;
            sim.settle(300_000)
                .unwrap_or_else(|e| panic!("round {round}: invariants after quiet period: {e}"));
            let (failures, _) = lookups(&mut sim, 300);
            assert_eq!(failures, 0, "round {round}");
        }
    }

    #[test]
    fn graceful_leaves_keep_the_ring_whole() {
        let mut sim = Sim::new(5, cfg(4));
        grow(&mut sim, 20);
        for _ in 0..15 {
            let id = sim.random_member().expect("member");
            sim.leave(id);
            sim.settle(60_000).expect("ring settles after a leave");
        }
        assert_eq!(sim.members().len(), 5);
        let (failures, _) = lookups(&mut sim, 200);
        assert_eq!(failures, 0);
    }

    /// Zave's invariant at every step, not only once settled: joins and graceful leaves
    /// interleaved without waiting for the ring to settle in between.
    #[test]
    fn one_ordered_ring_holds_after_every_step_of_joins_and_leaves() {
        let mut sim = Sim::new(21, cfg(4));
        grow(&mut sim, 12);
        sim.check_every_step = true;
        for round in 0..30 {
            if round % 2 == 0 || sim.len() < 6 {
                sim.join();
            } else if let Some(id) = sim.random_member() {
                sim.leave(id);
            }
            sim.run_for(300);
            if let Some(v) = &sim.violation {
                panic!("round {round}: {v}");
            }
        }
        sim.settle(120_000).expect("settles at the end");
        assert!(sim.violation.is_none(), "{:?}", sim.violation);
    }

    /// Records on top of the simulated ring: every copy is a real `registry::Record`, changed
    /// by the real model (`register`, `deregister`, `stamp` with a real hybrid logical
    /// clock) and merged by the real replication rules (`registry/unit.rs`: `apply_unit`,
    /// `merge_from`) — the simulator has no rules of its own. Moved as the agent moves them
    /// (src/agent/registry/): the owner stores a change and sends the unit to its first K−1
    /// successors and acknowledges once W−1 replicas have it by the agent's own rule
    /// (`unit::confirmations_needed`, W a majority of K; the others receive it only with some
    /// probability, as a background copy may be lost in a crash); a
    /// joiner takes what it owns from its successor; a leaver hands everything it holds to its
    /// first K successors; a crash loses the node's copies; repair (anti-entropy) pulls what
    /// the replicas hold into the owner and pushes the owner's copy to them; under a
    /// partition (`Sim::partition`) lookups and replica copies stop at the cut, and after the
    /// heal a copy a node neither owns nor replicates goes back to its owner (`hand_back`).
    struct Data {
        k: usize,
        held: std::collections::HashMap<Id, std::collections::HashMap<String, Record>>,
        clocks: std::collections::HashMap<Id, Clock>,
        /// The version of every acknowledged change, by (service, instance).
        acked: std::collections::HashMap<(String, String), Hlc>,
    }

    impl Data {
        fn new(k: usize) -> Data {
            Data {
                k,
                held: Default::default(),
                clocks: Default::default(),
                acked: Default::default(),
            }
        }

        fn replica_set(&self, sim: &Sim, n: &Id) -> Vec<Id> {
            sim.node(n)
                .map(|c| {
                    c.successors()
                        .iter()
                        .take(self.k - 1)
                        .map(|s| s.id)
                        .collect()
                })
                .unwrap_or_default()
        }

        fn copy(&mut self, n: Id, service: &str) -> &mut Record {
            self.held
                .entry(n)
                .or_default()
                .entry(service.to_string())
                .or_insert_with(|| Record::new(service, None).expect("service name"))
        }

        /// Merge `rec` into `to`'s copy by the real rules.
        fn merge(&mut self, to: Id, rec: &Record) {
            self.copy(to, &rec.service).merge_from(rec);
        }

        fn copies(&self, n: &Id) -> Vec<Record> {
            self.held
                .get(n)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default()
        }

        fn owned(&self, sim: &Sim, n: &Id) -> Vec<Record> {
            let Some(p) = sim.node(n).and_then(|c| c.predecessor().map(|p| p.id)) else {
                return vec![];
            };
            self.copies(n)
                .into_iter()
                .filter(|r| Id::of_key(&r.service).in_half_open(&p, n))
                .collect()
        }

        /// A client change through a random member: register (or, sometimes, deregister)
        /// instance `id` of `service`. True when acknowledged.
        fn write(&mut self, sim: &mut Sim, service: &str, id: &str) -> bool {
            let key = Id::of_key(service);
            let Some(from) = sim.random_member() else {
                return false;
            };
            let Ok(r) = sim.lookup(from, key) else {
                return false;
            };
            let owner = r.owner().id;
            if !sim
                .node(&owner)
                .is_some_and(|c| c.is_member() && c.owns(&key))
            {
                return false;
            }
            let now = chrono::DateTime::from_timestamp_millis(1_800_000_000_000 + sim.now as i64)
                .expect("time");
            let deregister = sim.rng.gen_bool(0.2);
            let port = sim.rng.gen_range(1..60_000);
            let mut clock = self
                .clocks
                .remove(&owner)
                .unwrap_or_else(|| Clock::new(node_number(&owner.to_hex())));
            let rec = self.copy(owner, service);
            let changed = if deregister && rec.instances.contains_key(id) {
                rec.deregister(id).is_ok() && {
                    rec.tombstone(id, now);
                    true
                }
            } else {
                rec.register(id, &RegisterBody::new("10.0.0.1", port), now)
                    .is_ok()
            };
            let unit = changed.then(|| {
                let v = clock.after(now.timestamp_millis() as u64, rec.version_of(id));
                rec.stamp(id, v);
                rec.unit(id).expect("a stamped unit")
            });
            self.clocks.insert(owner, clock);
            let Some(unit) = unit else {
                return false;
            };
            let replicas: Vec<Id> = self
                .replica_set(sim, &owner)
                .into_iter()
                .filter(|r| sim.node(r).is_some() && !sim.cut(&owner, r))
                .collect();
            // The agent's rule (`unit::confirmations_needed`): the first W−1 replicas confirm
            // before the answer; the others receive the unit in the background, which a crash
            // may cut short.
            let members = sim.node(&owner).map_or(1, |c| c.known_members());
            let needed = confirmations_needed(majority(self.k), members);
            for (i, rep) in replicas.iter().enumerate() {
                if i < needed || sim.rng.gen_bool(0.7) {
                    self.copy(*rep, service).apply_unit(id, unit.clone());
                }
            }
            if replicas.len() < needed {
                return false;
            }
            self.acked
                .insert((service.to_string(), id.to_string()), unit.stamp.version);
            true
        }

        fn joined(&mut self, sim: &Sim, j: Id) {
            let Some(succ) = sim.node(&j).map(|c| c.successor().id) else {
                return;
            };
            for rec in self.copies(&succ) {
                if !Id::of_key(&rec.service).in_half_open(&j, &succ) {
                    self.merge(j, &rec);
                }
            }
        }

        fn leave(&mut self, sim: &mut Sim, n: Id) {
            // Everything the leaver holds (its range and the ranges it replicates) goes to
            // its first K successors: each replica set it was part of gains its next member.
            let targets: Vec<Id> = sim
                .node(&n)
                .map(|c| c.successors().iter().take(self.k).map(|s| s.id).collect())
                .unwrap_or_default();
            let all = self.copies(&n);
            for t in targets {
                for rec in &all {
                    self.merge(t, rec);
                }
            }
            sim.leave(n);
            self.held.remove(&n);
        }

        fn crash(&mut self, sim: &mut Sim, n: Id) {
            sim.crash(n);
            self.held.remove(&n);
            self.clocks.remove(&n);
        }

        fn repair(&mut self, sim: &Sim) {
            for n in sim.members() {
                let Some(p) = sim.node(&n).and_then(|c| c.predecessor().map(|p| p.id)) else {
                    continue;
                };
                let replicas = self.replica_set(sim, &n);
                // Pull what the replicas hold newer in this node's range, then push.
                for rep in &replicas {
                    for rec in self.copies(rep) {
                        if Id::of_key(&rec.service).in_half_open(&p, &n) {
                            self.merge(n, &rec);
                        }
                    }
                }
                for rep in &replicas {
                    for rec in self.owned(sim, &n) {
                        self.merge(*rep, &rec);
                    }
                }
            }
        }

        /// Whether `n` keeps `service`: it owns it or replicates it (its key lies in the arc
        /// from `n`'s K-th predecessor to `n`), as `Registry::kept_arc` decides.
        fn keeps(&self, sim: &Sim, n: &Id, service: &str) -> bool {
            let owner = sim.true_owner(&Id::of_key(service));
            owner == *n || self.replica_set(sim, &owner).contains(n)
        }

        /// One round of `Registry::hand_back` on every member: a copy it neither owns nor
        /// replicates goes to the owner where the owner lacks or holds older units, and is
        /// deleted only once the owner already had everything. Returns the copies sent.
        fn hand_back(&mut self, sim: &Sim) -> usize {
            let mut sent = 0;
            for n in sim.members() {
                for rec in self.copies(&n) {
                    if self.keeps(sim, &n, &rec.service) {
                        continue;
                    }
                    let owner = sim.true_owner(&Id::of_key(&rec.service));
                    let mut merged = self.copy(owner, &rec.service).clone();
                    merged.merge_from(&rec);
                    if Some(&merged) == self.held.get(&owner).and_then(|m| m.get(&rec.service)) {
                        if let Some(m) = self.held.get_mut(&n) {
                            m.remove(&rec.service);
                        }
                    } else {
                        self.merge(owner, &rec);
                        sent += 1;
                    }
                }
            }
            sent
        }

        /// Copies held by members that neither own nor replicate them.
        fn strays(&self, sim: &Sim) -> Vec<String> {
            let mut out = Vec::new();
            for n in sim.members() {
                for rec in self.copies(&n) {
                    if !self.keeps(sim, &n, &rec.service) {
                        out.push(format!("{} at {}", rec.service, n.short()));
                    }
                }
            }
            out
        }

        /// Acknowledged changes whose true owner does not hold that version or a newer one.
        fn lost(&self, sim: &Sim) -> Vec<String> {
            self.acked
                .iter()
                .filter(|((service, id), v)| {
                    let owner = sim.true_owner(&Id::of_key(service));
                    let held = self
                        .held
                        .get(&owner)
                        .and_then(|m| m.get(service))
                        .and_then(|r| r.version_of(id));
                    held.is_none_or(|h| h < **v)
                })
                .map(|((s, i), v)| format!("{s}/{i}@{v}"))
                .collect()
        }

        /// Services whose copies at the owner's replicas differ from the owner's.
        fn diverged(&self, sim: &Sim) -> Vec<String> {
            let mut out = Vec::new();
            for n in sim.members() {
                for rec in self.owned(sim, &n) {
                    for rep in self.replica_set(sim, &n) {
                        let copy = self.held.get(&rep).and_then(|m| m.get(&rec.service));
                        if copy != Some(&rec) {
                            out.push(format!("{} at {}", rec.service, rep.short()));
                        }
                    }
                }
            }
            out
        }
    }

    #[test]
    fn long_churn_with_records_loses_no_acknowledged_write() {
        let k = 3;
        let mut sim = Sim::new(31, cfg(8));
        grow(&mut sim, 40);
        let mut data = Data::new(k);
        let services: Vec<String> = (0..100).map(|i| format!("record-{i}")).collect();
        for service in &services {
            assert!(
                data.write(&mut sim, service, "i0"),
                "initial write acknowledged"
            );
        }
        data.repair(&sim);
        // Zave's "one ordered ring" after every delivered message, through the crashes too
        // (never more than K − 1 at once, fewer than the successor list's length).
        sim.check_every_step = true;
        let mut acked_writes = 0;
        for round in 0..25 {
            // Churn: joins, graceful leaves, and crashes before the next repair: of at most
            // K−1 nodes (possibly neighbours) while every change has its K copies (right after
            // a repair), and of at most W−1 = 1 once changes were acknowledged with only the
            // owner and one replica (the acknowledgement rule, docs/CONSISTENCY.md).
            let mut crashes = 0;
            let mut changed_since_repair = false;
            for _ in 0..6 {
                match sim.rng.gen_range(0..4) {
                    0 => {
                        sim.join();
                    }
                    1 if sim.members().len() > 12 => {
                        let id = sim.random_member().expect("member");
                        data.leave(&mut sim, id);
                    }
                    2 if sim.members().len() > 12
                        && crashes < if changed_since_repair { 1 } else { k - 1 } =>
                    {
                        let id = sim.random_member().expect("member");
                        // Sometimes the crashed node's successor too: adjacent crashes.
                        let next = sim.node(&id).map(|c| c.successor().id);
                        data.crash(&mut sim, id);
                        crashes += 1;
                        let room = !changed_since_repair && crashes < k - 1;
                        if let (Some(next), true) = (next, room && sim.rng.gen_bool(0.5)) {
                            data.crash(&mut sim, next);
                            crashes += 1;
                        }
                    }
                    _ => {
                        for _ in 0..20 {
                            let service = services[sim.rng.gen_range(0..services.len())].clone();
                            let id = format!("i{}", sim.rng.gen_range(0..8));
                            if data.write(&mut sim, &service, &id) {
                                acked_writes += 1;
                                changed_since_repair = true;
                            }
                        }
                    }
                }
                let pause = sim.rng.gen_range(0..200);
                sim.run_for(pause);
                for j in sim.take_joined() {
                    data.joined(&sim, j);
                }
            }
            sim.settle(300_000)
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            for j in sim.take_joined() {
                data.joined(&sim, j);
            }
            data.repair(&sim);
            if let Some(v) = &sim.violation {
                panic!("round {round}: the ring broke an invariant mid-step: {v}");
            }
            assert_eq!(
                data.lost(&sim),
                Vec::<String>::new(),
                "round {round}: acknowledged changes lost"
            );
            assert_eq!(
                data.diverged(&sim),
                Vec::<String>::new(),
                "round {round}: copies differ after repair"
            );
        }
        println!("churn with records: 25 rounds, {acked_writes} acknowledged changes, 0 lost");
    }

    #[test]
    fn writes_acknowledged_on_both_sides_of_a_cut_into_arcs_reach_their_true_owners_after_the_heal()
    {
        let k = 3;
        let mut sim = Sim::new(53, cfg(6));
        grow(&mut sim, 16);
        let mut data = Data::new(k);
        let services: Vec<String> = (0..60).map(|i| format!("arc-{i}")).collect();
        for service in &services {
            assert!(data.write(&mut sim, service, "i0"), "initial write");
        }
        data.repair(&sim);
        let (mut acked_in_cuts, mut refused_in_cuts, mut most_rounds) = (0, 0, 0);
        for round in 0..12 {
            // A contiguous arc of 1 to n−1 members against the rest (members() is in ring
            // order), sometimes with a crash on one side while cut. Every third round cuts
            // off one node and crashes it before the heal: whatever it acknowledged alone
            // would be lost.
            let members = sim.members();
            let n = members.len();
            let lone = round % 3 == 0;
            let len = if lone { 1 } else { sim.rng.gen_range(1..n) };
            let at = sim.rng.gen_range(0..n);
            let arc: HashSet<Id> = (0..len).map(|i| members[(at + i) % n]).collect();
            sim.partition = Some(arc.clone());
            let mut crashed = false;
            for _ in 0..8 {
                let pause = sim.rng.gen_range(100..1_500);
                sim.run_for(pause);
                for _ in 0..15 {
                    let service = services[sim.rng.gen_range(0..services.len())].clone();
                    let id = format!("i{}", sim.rng.gen_range(0..6));
                    if data.write(&mut sim, &service, &id) {
                        acked_in_cuts += 1;
                    } else {
                        refused_in_cuts += 1;
                    }
                }
                if !crashed && !lone && sim.members().len() > 8 && sim.rng.gen_bool(0.15) {
                    let id = sim.random_member().expect("member");
                    data.crash(&mut sim, id);
                    crashed = true;
                }
            }
            if lone {
                let gone = arc.iter().next().copied().expect("the lone node");
                data.crash(&mut sim, gone);
            }
            // Heal, then the agent's background rounds: hand-back and anti-entropy.
            sim.partition = None;
            sim.settle(600_000)
                .unwrap_or_else(|e| panic!("round {round}: no one ring after the heal: {e}"));
            let mut rounds = 0;
            loop {
                rounds += 1;
                let sent = data.hand_back(&sim);
                data.repair(&sim);
                if sent == 0 && data.strays(&sim).is_empty() {
                    break;
                }
                assert!(
                    rounds < 10,
                    "round {round}: strays remain: {:?}",
                    data.strays(&sim)
                );
            }
            most_rounds = most_rounds.max(rounds);
            assert_eq!(
                data.lost(&sim),
                Vec::<String>::new(),
                "round {round}: acknowledged changes lost (arc of {len} of {n})"
            );
            assert_eq!(
                data.diverged(&sim),
                Vec::<String>::new(),
                "round {round}: copies differ after repair"
            );
            while sim.members().len() < 16 {
                sim.join();
                sim.settle(600_000).expect("a rejoin settles");
                for j in sim.take_joined() {
                    data.joined(&sim, j);
                }
                data.repair(&sim);
            }
        }
        assert!(acked_in_cuts > 0 && refused_in_cuts > 0);
        println!(
            "cuts into arcs: 12 rounds, {acked_in_cuts} writes acknowledged while cut \
             ({refused_in_cuts} refused), every one at its true owner after at most \
             {most_rounds} hand-back rounds"
        );
    }

    #[test]
    fn a_partitioned_ring_becomes_two_rings_then_merges_back_into_one() {
        let mut sim = Sim::new(41, cfg(6));
        grow(&mut sim, 40);
        let members = sim.members();
        let side: HashSet<Id> = members.iter().step_by(2).copied().collect();
        let other: HashSet<Id> = members
            .iter()
            .filter(|m| !side.contains(m))
            .copied()
            .collect();
        sim.partition = Some(side.clone());
        // Each side repairs itself into a ring of its own.
        let start = sim.now;
        loop {
            sim.run_for(500);
            if sim.check_among(&side).is_ok() && sim.check_among(&other).is_ok() {
                break;
            }
            assert!(
                sim.now - start < 600_000,
                "the sides did not become rings: {:?} / {:?}",
                sim.check_among(&side),
                sim.check_among(&other)
            );
        }
        // Heal: remembered members are probed, and the two rings merge into one.
        sim.partition = None;
        let took = sim
            .settle(600_000)
            .expect("one ring again after the partition heals");
        println!("40 nodes: merged {took} ms of virtual time after the partition healed");
        let (failures, _) = lookups(&mut sim, 500);
        assert_eq!(failures, 0);
    }

    #[test]
    #[ignore = "10,000 nodes take a while; run with --ignored"]
    fn ten_thousand_nodes_converge_with_half_log_n_hops() {
        let n = 10_000;
        let mut sim = Sim::new(3, cfg(16));
        grow(&mut sim, n);
        sim.run_for(30_000);
        let (failures, mean) = lookups(&mut sim, 5000);
        println!("10000 nodes: mean hops {mean:.3}");
        assert_eq!(failures, 0);
    }
}
