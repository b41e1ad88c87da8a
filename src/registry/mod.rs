//! The service model, without I/O: instances and their status, the per-service [`Record`] a node
//! stores, validation, TTL health, discovery and picking, and the prototype's model.
//!
//! - [`model`]: [`State`], [`Status`], [`Instance`], [`Version`], [`Record`] and the request
//!   bodies [`RegisterBody`] and [`StatusBody`]; register, deregister and report.
//! - [`validate`]: the limits of API.md, with messages that say exactly what was wrong.
//! - [`ttl`]: TTL expiry (`Record::sweep`, `Record::next_deadline`).
//! - [`pick`](mod@pick): [`discover`], [`Strategy`] and [`pick`](fn@pick).
//! - [`duration`]: the CLI's DURATION syntax.
//! - [`compat`]: the prototype's gVips, texts and JSON documents.
//! - [`codec`]: the compact binary form records are stored and replicated in.
//!
//! Everything takes the current time (`now`) and randomness (`rng`) as arguments, so the agent,
//! the simulator and tests drive it alike. A record's owner serializes writes to it: it loads the
//! record, applies operations, calls [`Record::bump_version`] with its node id, stores and
//! replicates. Replicas keep a copy only if [`Record::is_newer_than`] the one they hold.

pub mod codec;
pub mod compat;
pub mod duration;
pub mod merge;
pub mod model;
pub mod ops;
pub mod pick;
pub mod ttl;
pub mod validate;

pub use duration::parse_duration;
pub use model::{
    Discovery, Instance, Record, RegisterBody, ServiceSummary, State, Status, StatusBody,
    ValidRegistration, Version,
};
pub use pick::{discover, pick, Strategy};
pub use ttl::DEFAULT_GRACE_FACTOR;
pub use validate::{validate_instance_id, validate_service};
