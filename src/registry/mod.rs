//! The service model, without I/O (being built up; see the final module docs).

pub mod duration;
pub mod model;
pub mod pick;
pub mod ttl;
pub mod validate;
