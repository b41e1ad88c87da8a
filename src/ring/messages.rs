//! The ring maintenance protocol: what one node asks another, and the answers.
//!
//! These are carried by the RPC layer (src/rpc) between agents and by the simulated network in
//! tests; the ring core never sees bytes.

use serde::{Deserialize, Serialize};

use super::id::Id;

/// A ring member as others know it.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeRef {
    /// SHA-1 of `addr`.
    pub id: Id,
    /// The advertised ring address (`HOST:PORT`) other nodes dial.
    pub addr: String,
    /// The node's HTTP API address (`HOST:PORT`); empty when not known yet (a seed).
    pub http: String,
}

impl NodeRef {
    /// A reference to the node advertised at `addr`.
    pub fn new(addr: impl Into<String>, http: impl Into<String>) -> NodeRef {
        let addr = addr.into();
        NodeRef {
            id: Id::of_addr(&addr),
            addr,
            http: http.into(),
        }
    }

    /// Whether the identifier is SHA-1 of the address, as every real node's is. A reference
    /// that claims another identifier (a bug, or a peer trying to take over a range) is never
    /// adopted into a successor list, a predecessor or a finger.
    pub fn is_genuine(&self) -> bool {
        self.id == Id::of_addr(&self.addr)
    }
}

impl std::fmt::Debug for NodeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.id.short(), self.addr)
    }
}

/// A request of the ring protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RingRequest {
    /// Are you alive? Answered with `Pong`.
    Ping,
    /// Stabilize: what are your predecessor and successor list? Answered with `Neighbors`.
    GetNeighbors,
    /// Rectify: "I believe I am your predecessor". Answered with `Ack`.
    Notify(NodeRef),
    /// One step of an iterative lookup of `key`. Answered with `Step`.
    FindStep {
        /// The identifier being looked up.
        key: Id,
    },
    /// Graceful leave, sent by `leaver` to its predecessor: replace me by my successors.
    LeavingToPredecessor {
        /// The node that is leaving.
        leaver: NodeRef,
        /// The leaver's successor list.
        successors: Vec<NodeRef>,
    },
    /// Graceful leave, sent by `leaver` to its successor: your new predecessor is mine.
    LeavingToSuccessor {
        /// The node that is leaving.
        leaver: NodeRef,
        /// The leaver's predecessor, if it knew one.
        predecessor: Option<NodeRef>,
    },
}

/// An answer of the ring protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RingResponse {
    /// Alive; here is who I am.
    Pong(NodeRef),
    /// My predecessor and successor list.
    Neighbors {
        /// The answering node.
        me: NodeRef,
        /// Its predecessor, if it has one.
        predecessor: Option<NodeRef>,
        /// Its successor list, nearest first (empty when it is alone).
        successors: Vec<NodeRef>,
    },
    /// Done.
    Ack,
    /// One lookup step.
    Step(Step),
    /// I am not (or no longer) a ring member: ask someone else.
    NotMember,
}

/// The answer to one step of an iterative lookup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Step {
    /// The key lies between the answering node `pred` and its successor: the owner is the first
    /// live entry of `successors` (the owner followed by its successors, the replica set).
    Done {
        /// The node that answered: the key's predecessor.
        pred: NodeRef,
        /// `pred`'s successor list; never empty (a lone node lists itself).
        successors: Vec<NodeRef>,
    },
    /// Ask one of these next: nodes strictly between the answering node and the key, closest to
    /// the key first. The later entries are fall-backs when the first does not answer.
    Next(Vec<NodeRef>),
}
