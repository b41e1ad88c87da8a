//! The iterative lookup as a small state machine, shared by the ring core (fix-fingers, join)
//! and the agent (locate, routing requests to a record's owner).
//!
//! The asking node drives the lookup: it asks one node at a time for the next step, so it
//! controls deadlines and retries. When a node does not answer, the next candidate of the same
//! step is tried, then the candidates of the step before.

use std::collections::HashSet;

use super::id::Id;
use super::messages::{NodeRef, Step};

/// Lookups longer than this are abandoned: a healthy ring needs about log2 N hops.
pub const MAX_HOPS: u32 = 64;

/// The outcome of a finished lookup.
#[derive(Debug, Clone, PartialEq)]
pub struct LookupResult {
    /// The key's predecessor: the node that answered `Done`.
    pub pred: NodeRef,
    /// The predecessor's successor list: the owner first, then the next nodes (replicas).
    pub successors: Vec<NodeRef>,
    /// Remote lookup steps it took (0 when the asking node is the key's predecessor).
    pub hops: u32,
}

impl LookupResult {
    /// The owner followed by up to `k − 1` next nodes: the key's replica set. On a ring too
    /// small for the predecessor's list to reach `k` nodes, the list wraps back to the
    /// predecessor itself, which is then the last copy.
    pub fn replica_chain(&self, k: usize) -> Vec<NodeRef> {
        let mut chain: Vec<NodeRef> = Vec::with_capacity(k);
        for n in self.successors.iter().chain(std::iter::once(&self.pred)) {
            if chain.len() == k {
                break;
            }
            if !chain.iter().any(|c| c.id == n.id) {
                chain.push(n.clone());
            }
        }
        chain
    }

    /// The key's owner as the predecessor sees it.
    pub fn owner(&self) -> &NodeRef {
        // `Step::Done` never carries an empty list (see `Chord::find_step`); fall back to the
        // predecessor itself so this never panics on a peer's bad answer.
        self.successors.first().unwrap_or(&self.pred)
    }
}

/// What the driver of a lookup does next.
#[derive(Debug, Clone, PartialEq)]
pub enum LookupAction {
    /// Send `FindStep` for the key to this node and report its answer.
    Ask(NodeRef),
    /// Finished.
    Done(LookupResult),
    /// No route: every candidate failed, or the hop limit was reached.
    Failed(String),
}

/// An iterative lookup in progress.
#[derive(Debug, Clone)]
pub struct Lookup {
    key: Id,
    hops: u32,
    /// Candidate lists of the steps so far, latest last; the first entry of the last list is
    /// the node being asked.
    frontier: Vec<Vec<NodeRef>>,
    failed: HashSet<Id>,
}

impl Lookup {
    /// Start a lookup of `key` from the asking node's own first step.
    pub fn start(key: Id, first: Step) -> (Lookup, LookupAction) {
        let mut lookup = Lookup {
            key,
            hops: 0,
            frontier: Vec::new(),
            failed: HashSet::new(),
        };
        let action = lookup.apply(first);
        (lookup, action)
    }

    /// The identifier being looked up.
    pub fn key(&self) -> Id {
        self.key
    }

    /// The node asked answered with `step`.
    pub fn on_step(&mut self, step: Step) -> LookupAction {
        self.hops += 1;
        if self.hops > MAX_HOPS {
            return LookupAction::Failed(format!("lookup exceeded {MAX_HOPS} hops"));
        }
        self.apply(step)
    }

    /// The node asked did not answer (or is not a member): try the next candidate.
    pub fn on_failure(&mut self, node: &NodeRef) -> LookupAction {
        self.failed.insert(node.id);
        self.next_candidate()
    }

    fn apply(&mut self, step: Step) -> LookupAction {
        match step {
            Step::Done { pred, successors } => {
                let mut successors: Vec<NodeRef> = successors
                    .into_iter()
                    .filter(|n| !self.failed.contains(&n.id))
                    .collect();
                if successors.is_empty() {
                    successors.push(pred.clone());
                }
                LookupAction::Done(LookupResult {
                    pred,
                    successors,
                    hops: self.hops,
                })
            }
            Step::Next(candidates) => {
                self.frontier.push(candidates);
                self.next_candidate()
            }
        }
    }

    fn next_candidate(&mut self) -> LookupAction {
        while let Some(top) = self.frontier.last_mut() {
            top.retain(|n| !self.failed.contains(&n.id));
            if let Some(next) = top.first() {
                return LookupAction::Ask(next.clone());
            }
            self.frontier.pop();
            // The node that gave the exhausted list is alive but leads nowhere now: ask the
            // fall-back of the step before it instead of asking it again.
            if let Some(prev) = self.frontier.last_mut() {
                if !prev.is_empty() {
                    prev.remove(0);
                }
            }
        }
        LookupAction::Failed("no live node to route the lookup through".to_string())
    }
}
