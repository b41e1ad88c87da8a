//! Helpers for the unit tests, also compiled into the integration tests
//! (`tests/support/mod.rs` includes this file).

use std::net::SocketAddr;

/// A loopback address that refuses connections for as long as the returned socket lives: the
/// socket is bound to a port the kernel picks and never listens, and without `SO_REUSEADDR`
/// no other socket (an agent another test starts meanwhile) can bind that port. A port bound
/// and released at once is free for the next bind: in one CI run another test's agent took
/// such a "dead" seed, and the agent told to join it joined that test's ring instead of failing.
pub(crate) fn refused_addr() -> (socket2::Socket, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let socket =
        Socket::new(Domain::IPV4, Type::STREAM, None).unwrap_or_else(|e| panic!("socket: {e}"));
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    socket
        .bind(&any.into())
        .unwrap_or_else(|e| panic!("bind 127.0.0.1:0: {e}"));
    let addr = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or_else(|| panic!("no bound address"));
    (socket, addr)
}
