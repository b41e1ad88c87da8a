//! The service model, without I/O: instances and their status, the per-service [`Record`] a node
//! stores, validation, TTL health, discovery and picking, and the prototype's model.
//!
//! - [`model`]: [`State`], [`Status`], [`Instance`], [`Record`] and the request bodies
//!   [`RegisterBody`] and [`StatusBody`]; register, deregister and report.
//! - [`unit`]: the replication rules: every instance a unit with its own key and version, how
//!   copies merge ([`Record::apply_unit`]), store keys.
//! - [`hlc`]: hybrid logical clocks, the versions of units.
//! - [`validate`]: the limits of API.md, with messages that say exactly what was wrong.
//! - [`ttl`]: TTL expiry (`Record::sweep`, `Record::next_deadline`), and self-preservation.
//! - [`health`]: the per-service [`Policy`], consecutive thresholds, flap damping, panic, and
//!   the one filtering decision discover and explain share.
//! - [`pick`](mod@pick): [`discover`], [`Strategy`] and [`pick`](fn@pick).
//! - [`duration`]: the CLI's DURATION syntax.
//! - [`compat`]: the prototype's gVips, texts and JSON documents.
//! - [`codec`]: the stored form of units and meta entries, and 0.1.0's records (for the upgrade).
//! - [`ops`]: the registry's requests and answers between agents.
//! - [`merkle`]: anti-entropy as a hash tree over a key range: where an owner's and a
//!   replica's copies differ, found in about log₁₆ n exchanges.
//! - [`watch`]: change events, what a follower asks an owner, and the owner's [`watch::Feed`].
//!
//! Everything takes the current time (`now`) and randomness (`rng`) as arguments, so the agent,
//! the simulator and tests drive it alike. A service's owner serializes writes to it: it applies
//! an operation to its in-memory record, calls [`Record::stamp`] with a version from its
//! [`Clock`] for the instance it changed, stores and replicates that one unit. Copies keep a
//! unit only if it is newer than the one they hold.

pub mod codec;
pub mod compat;
pub mod duration;
pub mod health;
pub mod hlc;
pub mod json;
pub mod merkle;
pub mod model;
pub mod ops;
pub mod pick;
pub mod ttl;
pub mod unit;
pub mod validate;
pub mod watch;

pub use duration::parse_duration;
pub use health::{Policy, POLICY_UNIT};
pub use hlc::{Clock, Hlc};
pub use model::{
    Discovery, Instance, Metadata, Record, RegisterBody, ServiceSummary, Stamp, State, Status,
    StatusBody, ValidRegistration,
};
pub use pick::{discover, discover_with_panic, pick, Strategy};
pub use ttl::DEFAULT_GRACE_FACTOR;
pub use unit::{Unit, UnitBody};
pub use validate::{validate_instance_id, validate_service};
