//! Ring RPC between agents over TCP.
//!
//! - [`messages`]: the typed requests and responses (serde enums);
//! - [`auth`]: the `--cluster-secret` handshake and per-frame authentication tags;
//! - [`frame`]: the one place that sees bytes: length-prefixed frames carrying a protocol
//!   version, a request id and a postcard body, with hard limits on sizes;
//! - TLS (`--tls-*`, [`crate::tls`]): with it, every connection is mutual TLS, and the
//!   handshake of [`auth`] runs inside it;
//! - [`server`]: `serve(listener, handler, shutdown)`, one task per connection, requests on a
//!   connection handled concurrently (answered inline when the handler need not wait), with
//!   caps on connections and on requests in flight per connection;
//! - [`client`]: a pool of long-lived connections, one per peer, with many calls in flight on
//!   each and a deadline on every call; a call that times out with bytes the peer never took
//!   resets its connection ([`socket`]), so they are not delivered late.

pub mod auth;
pub mod client;
pub mod frame;
pub mod messages;
pub mod server;
mod socket;

pub use auth::ClusterSecret;
pub use client::{CallError, Pool};
pub use messages::{Request, Response};
pub use server::{serve, serve_with, Handler, Limits, Security};
