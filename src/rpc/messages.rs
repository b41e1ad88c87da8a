//! The top-level RPC messages: ring maintenance and registry operations.

use serde::{Deserialize, Serialize};

use crate::ring::{RingRequest, RingResponse};
use crate::Error;

/// A request from one agent to another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Ring maintenance and lookup steps, answered by the ring core.
    Ring(RingRequest),
    /// A registry operation (`crate::registry::ops::RegistryRequest`) encoded as JSON: the
    /// registry's types rely on serde attributes that need a self-describing format.
    Registry(Vec<u8>),
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to `Request::Ring`.
    Ring(RingResponse),
    /// Answer to `Request::Registry`: a JSON-encoded `RegistryResponse`.
    Registry(Vec<u8>),
    /// The request failed at the remote agent; the error arrives as a value.
    Error(Error),
}
