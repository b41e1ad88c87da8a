//! DNS interface (API.md, "DNS"): any agent answers `SERVICE.service.DOMAIN.` and its SRV
//! and tag forms for any service, from a local view kept current by the watch subscriptions
//! the agent already holds.
//!
//! - [`answer`]: the zone's names and the records of an answer, without I/O.
//! - [`cache`]: [`Views`], the local view: one entry per service asked about, fed by its
//!   subscription's change events, dropped when idle, capped in number.
//! - [`server`]: hickory's UDP and TCP server around the request handler.

pub mod answer;
pub mod cache;
pub mod server;

use std::sync::Arc;

pub use answer::{Answer, Target, View, Zone};
pub use cache::Views;

/// Start serving DNS for `agent` on the sockets bound by [`server::bind`], until `stop`.
pub async fn serve(
    agent: Arc<crate::agent::Agent>,
    zone: Zone,
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
) {
    let stop = agent.stop_token();
    let views = Views::new(
        agent.hub.clone(),
        agent.registry.clone(),
        agent.metrics.clone(),
        stop.clone(),
    );
    let handler = server::Handler::new(zone, views, agent.metrics.clone());
    server::serve(udp, tcp, handler, stop).await
}
