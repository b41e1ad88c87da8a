//! Chord, as implemented here: a state machine per node, without I/O.
//!
//! # Identifiers
//! Nodes and keys live on a circle of 2^160 identifiers: a node's identifier is the SHA-1 of its
//! advertised ring address, a key's the SHA-1 of the key. The owner of a key is its *successor*:
//! the first node at or clockwise after the key's identifier. ([`id`])
//!
//! # Pointers
//! Each node keeps a *predecessor*, a *successor list* of the next `r` nodes (default 8; the aim
//! is `r ≥ 2·log2 N`), and a *finger table* whose entry `i` is the successor of `me + 2^i`.
//! The successor list gives correctness under failures and the replica set of the keys a node
//! owns; the fingers give speed: an iterative lookup ([`lookup`]) asks, at each step, the
//! known node closest before the key, halving the remaining distance, so a lookup takes about
//! ½·log2 N hops once fingers have converged.
//!
//! # Maintenance (Zave's corrected rules)
//! The maintenance protocol of the original papers (Stoica et al., "Chord: A Scalable
//! Peer-to-peer Lookup Service for Internet Applications", SIGCOMM 2001) is not correct under
//! failures. We follow Pamela Zave, "Reasoning about identifier spaces: How to make Chord
//! correct" (IEEE TSE 2017):
//! - a node never adopts a successor or predecessor without first hearing from it;
//! - *join*: look up your own identifier, take the would-be predecessor's successor list, ask
//!   the first live entry for its neighbours, and only then become a member;
//! - *stabilize*: ask the successor for its predecessor and successor list, adopt the list
//!   (dropping dead entries), query a closer predecessor before adopting it as successor, and
//!   always notify the successor;
//! - *rectify*: on a notification, adopt the notifier as predecessor if it is closer than the
//!   current one, or if the current one no longer answers a ping;
//! - *leave*: hand records over (the agent does this), then tell predecessor and successor;
//! - failures are detected by calls that time out and repaired from the successor list.
//!
//! # Invariants
//! After a quiet period ([`invariants::check`]): every successor list has length r and holds a
//! live member; the members form one ring in identifier order; every appendage reaches it.
//!
//! # Seams
//! [`node::Chord`] reports [`node::Event`]s: `PredecessorChanged` is the change of the range of
//! keys a node owns, `SuccessorsChanged` the change of its replica set; the agent moves records
//! on these.

pub mod id;
pub mod invariants;
pub mod lookup;
pub mod messages;
pub mod node;
#[cfg(test)]
mod sim;

pub use id::Id;
pub use lookup::{Lookup, LookupAction, LookupResult};
pub use messages::{NodeRef, RingRequest, RingResponse, Step};
pub use node::{Chord, Config, Event, Outbound};
