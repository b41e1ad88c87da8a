//! The RPC server: accept connections, decode frames, hand requests to a [`Handler`], write
//! answers back on the same connection (possibly out of order; ids pair them).
//!
//! Without `--cluster-secret` anyone who reaches the ring port is a peer, so what one peer can
//! make the agent hold is bounded ([`Limits`]): connections served at once (one more is sent a
//! notice and closed at once) and, per connection, requests being worked on at once (at the cap
//! the connection is not read until one finishes; nothing is refused or dropped).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::codec::{Encoder, Framed};
use tokio_util::sync::CancellationToken;

use super::auth::{self, ClusterSecret};
use super::frame::{self, Envelope, FrameError};
use super::messages::{Request, Response};
use crate::tls::Tls;

/// Connections served at once; one more is sent a notice and closed.
pub const MAX_CONNECTIONS: usize = 1024;

/// Connections from one IP address served at once, so that one host cannot take every
/// slot. A host running many agents (a development ring) holds one connection to each of its
/// peers: 256 agents on one host still fit.
pub const MAX_PER_ADDRESS: usize = 256;

/// Requests of one connection being worked on at once (those that wait, on their own tasks;
/// those answered inline do not count). Well above what one agent sends a peer under load,
/// since every call between two agents shares one connection.
pub const MAX_IN_FLIGHT: usize = 256;

/// A connection with no frame for this long is closed (peers reconnect on demand).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// At most one log line per this interval about refused connections (each is counted).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What answers requests: the agent.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Answer one request from the peer at `peer`.
    async fn handle(&self, req: Request) -> Response;

    /// A connection was refused because [`Limits::max_connections`] were open (for metrics).
    fn connection_refused(&self) {}
}

/// The server's limits; [`Limits::default`] is what the agent uses.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once ([`MAX_CONNECTIONS`]).
    pub max_connections: usize,
    /// Connections from one IP address served at once ([`MAX_PER_ADDRESS`]).
    pub max_per_address: usize,
    /// Requests of one connection being worked on at once ([`MAX_IN_FLIGHT`]).
    pub max_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            max_per_address: MAX_PER_ADDRESS,
            max_in_flight: MAX_IN_FLIGHT,
        }
    }
}

/// Serve ring RPC on `listener` until `shutdown` is cancelled, without cluster authentication.
pub async fn serve(listener: TcpListener, handler: Arc<dyn Handler>, shutdown: CancellationToken) {
    serve_with(
        listener,
        handler,
        Security::default(),
        Limits::default(),
        shutdown,
    )
    .await
}

/// How ring peers must prove who they are: the cluster secret's handshake, inside mutual TLS
/// when `tls` is given. Neither: anyone who reaches the port is a peer.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// `--cluster-secret`.
    pub secret: Option<ClusterSecret>,
    /// `--tls-cert/--tls-key/--tls-ca`: peers must present a certificate from the CA.
    pub tls: Option<Arc<Tls>>,
}

/// Serve ring RPC on `listener` under `limits` until `shutdown` is cancelled. With TLS, a peer
/// must complete a mutual TLS handshake (a certificate from the configured CA) within
/// [`auth::HANDSHAKE_TIMEOUT`] before anything else; one that does not is logged with its
/// address and dropped. With a `secret`,
/// every connection must complete the handshake of [`auth`] within [`auth::HANDSHAKE_TIMEOUT`]
/// and authenticate every frame; a peer that does not is logged with its address and dropped
/// without an answer. Without one, a peer must send its first frame within that time.
///
/// A connection over `limits.max_connections` is closed at once rather than left waiting in
/// the accept queue: the accept loop keeps running, so the refusal is counted and logged, the
/// caller fails at once instead of at its deadline (and routes around this node meanwhile),
/// and no connection is served late, after its caller gave up.
pub async fn serve_with(
    listener: TcpListener,
    handler: Arc<dyn Handler>,
    security: Security,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let Security { secret, tls } = security;
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // What a connection over a cap is told before it is closed. With a secret the peer
    // expects a handshake, and reads BUSY in place of the challenge. A TLS peer reads either
    // only inside TLS (`tls::Refusals`).
    let notice = |what: String| match &secret {
        None => refusal_notice(what),
        Some(_) => framed(auth::busy()),
    };
    let tls_refusals = crate::tls::Refusals::new();
    let notice_all = notice(format!("{} open", limits.max_connections));
    let notice_address = notice(format!("{} open from this address", limits.max_per_address));
    let per_address = Arc::new(Mutex::new(HashMap::<IpAddr, usize>::new()));
    let mut last_warning: Option<Instant> = None;
    let mut unreported = 0u64;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("accept failed on the ring port: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let taken = match slots.clone().try_acquire_owned() {
            Err(_) => Err((limits.max_connections, "", notice_all.as_ref())),
            Ok(permit) => {
                match AddressSlot::take(&per_address, peer.ip(), limits.max_per_address) {
                    Some(slot) => Ok((permit, slot)),
                    None => Err((
                        limits.max_per_address,
                        " from this address",
                        notice_address.as_ref(),
                    )),
                }
            }
        };
        let (permit, address_slot) = match taken {
            Ok(taken) => taken,
            Err((cap, from, notice)) => {
                handler.connection_refused();
                unreported += 1;
                if last_warning.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_INTERVAL) {
                    tracing::warn!(
                        %peer,
                        "ring RPC connection refused: {cap} connections{from} open already \
                         ({unreported} refused since the last such line; all counted in \
                         chordctl_rpc_connections_refused_total)",
                    );
                    last_warning = Some(Instant::now());
                    unreported = 0;
                }
                match &tls {
                    None => refuse(stream, notice),
                    Some(tls) => {
                        tls_refusals.spawn(|| {
                            let (tls, notice) = (tls.clone(), notice.cloned());
                            let shutdown = shutdown.clone();
                            async move { refuse_in_tls(&tls, stream, notice, &shutdown).await }
                        });
                    }
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        let secret = secret.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let served = match tls {
                None => connection(stream, handler, secret, limits, shutdown).await,
                Some(tls) => match accept_tls(&tls, stream, &shutdown).await {
                    Ok(Some(stream)) => connection(stream, handler, secret, limits, shutdown).await,
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                },
            };
            if let Err(e) = served {
                tracing::warn!(%peer, "ring RPC connection dropped: {e}");
            }
            drop(address_slot);
            drop(permit);
        });
    }
}

/// The mutual TLS handshake of one ring connection, bounded by [`auth::HANDSHAKE_TIMEOUT`];
/// `None` when the agent stops meanwhile.
async fn accept_tls(
    tls: &Tls,
    stream: TcpStream,
    shutdown: &CancellationToken,
) -> Result<Option<tokio_rustls::server::TlsStream<TcpStream>>, String> {
    let accept = tokio::time::timeout(auth::HANDSHAKE_TIMEOUT, tls.ring_acceptor().accept(stream));
    tokio::select! {
        _ = shutdown.cancelled() => Ok(None),
        r = accept => match r {
            Ok(Ok(stream)) => Ok(Some(stream)),
            Ok(Err(e)) => Err(format!("refused: TLS handshake failed: {e}")),
            Err(_) => Err(format!(
                "refused: no TLS handshake within {:?}",
                auth::HANDSHAKE_TIMEOUT
            )),
        },
    }
}

/// Tell a TLS connection over a cap why it is closed: `notice` inside TLS, once the
/// handshake (bounded like any other) is made.
async fn refuse_in_tls(
    tls: &Tls,
    stream: TcpStream,
    notice: Option<Bytes>,
    shutdown: &CancellationToken,
) {
    let (Ok(Some(mut stream)), Some(notice)) = (accept_tls(tls, stream, shutdown).await, notice)
    else {
        return;
    };
    let _ = tokio::time::timeout(auth::HANDSHAKE_TIMEOUT, async {
        stream.write_all(&notice).await?;
        stream.shutdown().await
    })
    .await;
}

/// One connection counted against its address's cap while it lives.
struct AddressSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl AddressSlot {
    /// A slot for a connection from `ip`, if fewer than `cap` are open from it.
    fn take(counts: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr, cap: usize) -> Option<Self> {
        let mut map = counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= cap.max(1) {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// The frame sent on a refused connection: an error answer with id 0, which no call uses, so
/// the peer's pool logs it and fails its calls as `CallError::Busy` (retryable, the node not
/// suspected), not as a closed connection (which reads as a refusal of its credentials).
/// `what`: the cap that was met.
fn refusal_notice(what: String) -> Option<Bytes> {
    let env = Envelope {
        id: 0,
        body: Response::Error(crate::Error::unavailable(format!(
            "too many ring connections ({what}); retry later"
        ))),
    };
    framed(frame::encode(&env).ok()?)
}

/// `body` as one frame on the wire (its length first).
fn framed(body: Bytes) -> Option<Bytes> {
    let mut out = BytesMut::new();
    frame::codec().encode(body, &mut out).ok()?;
    Some(out.freeze())
}

/// Close a connection over the cap without a task: the notice (a few dozen bytes) fits the
/// fresh socket's send buffer, so it is written without waiting, or not at all.
fn refuse(stream: TcpStream, notice: Option<&Bytes>) {
    if let Some(notice) = notice {
        let _ = stream.try_write(notice);
    }
}

async fn connection<S>(
    stream: S,
    handler: Arc<dyn Handler>,
    secret: Option<ClusterSecret>,
    limits: Limits,
    shutdown: CancellationToken,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut framed = Framed::new(stream, frame::codec());
    framed.set_backpressure_boundary(frame::WRITE_BUFFER);
    let handshake = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        h = auth::server(&mut framed, secret.as_ref()) => h,
    };
    let (mut sealer, mut opener) =
        handshake.map_err(|e| format!("refused: cluster authentication failed: {e}"))?;
    let (mut sink, mut source) = framed.split();
    // Answers of requests that had to wait (a store write, a lookup) come back from their
    // tasks on this channel; the others are answered inline.
    let (tx, mut rx) = mpsc::channel::<Envelope<Response>>(256);
    // One permit per request being worked on; with none left the connection is not read (the
    // peer's frames wait in the socket) until a task gives its permit back, which it does
    // before it sends its answer, so the answer that wakes this loop finds the permit free.
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight.max(1)));
    let mut first = true;
    let idle = tokio::time::sleep(auth::HANDSHAKE_TIMEOUT);
    tokio::pin!(idle);
    loop {
        let frame = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            Some(env) = rx.recv() => {
                frame::write_queued(&mut sink, &mut rx, env, &mut sealer)
                    .await
                    .map_err(|e| format!("write failed: {e}"))?;
                continue;
            }
            n = source.next(), if in_flight.available_permits() > 0 => n,
            _ = &mut idle => {
                // A peer must speak at once after connecting (the pool connects on demand):
                // a silent one cannot hold a connection slot for the idle timeout.
                if first {
                    return Err(format!("no request within {:?}; dropped", auth::HANDSHAKE_TIMEOUT));
                }
                return Ok(());
            }
        };
        // Every frame already received is handled before the answers are flushed, so that a
        // burst of calls on this connection is answered with one write.
        let mut next = frame;
        let mut answered = false;
        let end = loop {
            let frame = match next {
                None => break Some(Ok(())),
                Some(Err(e)) => break Some(Err(format!("bad frame: {e}"))),
                Some(Ok(f)) => f,
            };
            let answered_now = match frame::decode_opened(&frame, &mut opener) {
                Ok(env) => answer(&handler, env, &tx, &in_flight),
                Err(_) if first && !opener.is_authenticated() && auth::is_handshake(&frame) => {
                    break Some(Err(format!("refused: {}", auth::AuthError::PeerWithSecret)));
                }
                // A request this build cannot read (a newer agent's, during a rolling
                // upgrade): an error answer; the connection and its other calls go on.
                Err(FrameError::Unreadable { id, why }) => Some(unreadable(id, &why)),
                Err(e) => break Some(Err(format!("bad frame: {e}"))),
            };
            first = false;
            if let Some(env) = answered_now {
                frame::feed(&mut sink, &env, &mut sealer)
                    .await
                    .map_err(|e| format!("write failed: {e}"))?;
                answered = true;
            }
            if in_flight.available_permits() == 0 {
                break None;
            }
            match source.next().now_or_never() {
                Some(n) => next = n,
                None => break None,
            }
        };
        if answered {
            sink.flush()
                .await
                .map_err(|e| format!("write failed: {e}"))?;
        }
        if let Some(end) = end {
            // The peer is gone or broke the protocol: still send what is being worked on
            // (as far as the socket takes it), then close.
            drop(tx);
            while let Some(env) = rx.recv().await {
                if frame::write_queued(&mut sink, &mut rx, env, &mut sealer)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            return end;
        }
        idle.as_mut()
            .reset(tokio::time::Instant::now() + IDLE_TIMEOUT);
    }
}

/// The answer to request `id`, which this agent could not read (`why`): retryable, and saying
/// that the sender is probably newer.
fn unreadable(id: u64, why: &str) -> Envelope<Response> {
    tracing::debug!(
        id,
        "ring RPC request unreadable ({why}); answered with an error"
    );
    let message = format!(
        "this agent (chordctl {}) cannot read the request ({why}); the sender is probably a \
         newer version: retry once the ring runs one version",
        env!("CARGO_PKG_VERSION")
    );
    Envelope {
        id,
        body: Response::Error(crate::Error::unavailable(message)),
    }
}

/// Answer `env` at once when the handler can (a ring step, a cached discover); otherwise run
/// the handler on its own task, holding one of `in_flight`'s permits, which sends the answer on
/// `tx`, and return `None`.
fn answer(
    handler: &Arc<dyn Handler>,
    env: Envelope<Request>,
    tx: &mpsc::Sender<Envelope<Response>>,
    in_flight: &Arc<Semaphore>,
) -> Option<Envelope<Response>> {
    let id = env.id;
    let handler = handler.clone();
    let mut work = Box::pin(async move { handler.handle(env.body).await });
    if let Some(body) = (&mut work).now_or_never() {
        return Some(Envelope { id, body });
    }
    // The caller reads a request only with a permit free, and only it takes them.
    let permit = in_flight.clone().try_acquire_owned().ok();
    let tx = tx.clone();
    tokio::spawn(async move {
        let body = work.await;
        drop(permit);
        let _ = tx.send(Envelope { id, body }).await;
    });
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::ops::{RegistryRequest, RegistryResponse};
    use crate::ring::{RingRequest, RingResponse};
    use crate::rpc::{CallError, Pool};
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;

    /// How long a test waits for something that should happen.
    const WAIT: Duration = Duration::from_secs(10);

    fn ping() -> Request {
        Request::Ring(RingRequest::Ping)
    }

    fn slow() -> Request {
        Request::Registry(RegistryRequest::ListOwned)
    }

    /// Answers a ring ping at once; a registry request waits for a permit of `gate`, which the
    /// test hands out. Counts the registry requests being worked on, and refused connections.
    struct Gate {
        gate: Semaphore,
        inside: tokio::sync::watch::Sender<usize>,
        most_inside: AtomicUsize,
        refused: AtomicU64,
    }

    impl Gate {
        fn new() -> Arc<Gate> {
            Arc::new(Gate {
                gate: Semaphore::new(0),
                inside: tokio::sync::watch::Sender::new(0),
                most_inside: AtomicUsize::new(0),
                refused: AtomicU64::new(0),
            })
        }

        /// Wait until at least `n` registry requests are being worked on at once.
        async fn wait_inside(&self, n: usize) {
            let mut inside = self.inside.subscribe();
            let reached = tokio::time::timeout(WAIT, inside.wait_for(|k| *k >= n)).await;
            assert!(
                reached.is_ok_and(|r| r.is_ok()),
                "{n} requests never were worked on at once"
            );
        }
    }

    #[async_trait]
    impl Handler for Gate {
        async fn handle(&self, req: Request) -> Response {
            match req {
                Request::Registry(_) => {
                    self.inside.send_modify(|n| {
                        *n += 1;
                        self.most_inside.fetch_max(*n, Ordering::SeqCst);
                    });
                    if let Ok(permit) = self.gate.acquire().await {
                        permit.forget();
                    }
                    self.inside.send_modify(|n| *n -= 1);
                    Response::Registry(RegistryResponse::Done)
                }
                Request::Ring(_) => Response::Ring(RingResponse::Ack),
            }
        }

        fn connection_refused(&self) {
            self.refused.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// `body` is an `Unavailable` error whose message holds `part`.
    fn assert_unavailable(body: Response, part: &str) {
        match body {
            Response::Error(crate::Error::Unavailable(m)) => assert!(m.contains(part), "{m}"),
            other => panic!("an unavailable error, not {other:?}"),
        }
    }

    async fn send<S: AsyncRead + AsyncWrite + Unpin>(
        peer: &mut Framed<S, frame::FrameCodec>,
        id: u64,
        body: Request,
    ) {
        let bytes = frame::encode(&Envelope { id, body }).expect("encode");
        peer.send(bytes).await.expect("send a request");
    }

    async fn recv<S: AsyncRead + AsyncWrite + Unpin>(
        peer: &mut Framed<S, frame::FrameCodec>,
    ) -> Envelope<Response> {
        let frame = tokio::time::timeout(WAIT, peer.next())
            .await
            .expect("an answer in time")
            .expect("an answer, not the end of the connection")
            .expect("a valid frame");
        frame::decode(&frame).expect("an answer that decodes")
    }

    /// A server of `Gate`s on port 0 taking at most `max_connections`: (address, handler, stop).
    async fn capped(
        max_connections: usize,
        security: Security,
    ) -> (String, Arc<Gate>, CancellationToken) {
        let limits = Limits {
            max_connections,
            ..Limits::default()
        };
        serving(limits, security).await
    }

    /// A server of `Gate`s on port 0 with `limits`: (address, handler, stop).
    async fn serving(limits: Limits, security: Security) -> (String, Arc<Gate>, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let handler = Gate::new();
        let stop = CancellationToken::new();
        tokio::spawn(serve_with(
            listener,
            handler.clone(),
            security,
            limits,
            stop.clone(),
        ));
        (addr, handler, stop)
    }

    /// Wait until `pool` gets `ack` from `addr` (a slot freed), within [`WAIT`].
    async fn served_again(pool: &Pool, addr: &str, ack: &Response) {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            match pool.call(addr, ping()).await {
                Ok(answer) => break assert_eq!(&answer, ack),
                Err(e) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "no slot after a connection closed: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// Connections over the cap are sent a notice and closed at once, and counted; the
    /// connections being served keep being answered, and a slot that frees is used again.
    #[tokio::test]
    async fn connections_over_the_cap_are_refused_at_once_and_counted() {
        let (addr, handler, stop) = capped(2, Security::default()).await;
        let ack = Response::Ring(RingResponse::Ack);
        let good = Pool::new(WAIT);
        assert_eq!(good.call(&addr, ping()).await, Ok(ack.clone()));
        // A second peer takes the last slot.
        let connect = || async { TcpStream::connect(&addr).await.expect("connect") };
        let mut held = Framed::new(connect().await, frame::codec());
        send(&mut held, 1, ping()).await;
        assert_eq!(recv(&mut held).await.id, 1);

        for _ in 0..3 {
            let mut extra = Framed::new(connect().await, frame::codec());
            let notice = recv(&mut extra).await;
            assert_eq!(notice.id, 0);
            assert_unavailable(notice.body, "too many ring connections (2 open)");
            let end = tokio::time::timeout(WAIT, extra.next())
                .await
                .expect("closed at once");
            assert!(!matches!(end, Some(Ok(_))), "more than the notice: {end:?}");
        }
        assert_eq!(handler.refused.load(Ordering::SeqCst), 3);

        // The peers being served are still answered.
        for id in 2..12 {
            send(&mut held, id, ping()).await;
            assert_eq!(recv(&mut held).await.id, id);
        }
        for _ in 0..10 {
            assert_eq!(good.call(&addr, ping()).await, Ok(ack.clone()));
        }
        // An agent that connects now fails at once, as a peer at its cap (it retries, and
        // does not suspect the node), not as a peer that refuses its credentials (which
        // makes a join give up).
        let late = Pool::new(WAIT);
        let err = late.call(&addr, ping()).await.expect_err("refused");
        assert!(matches!(err, CallError::Busy(_)) && !err.is_auth(), "{err}");

        // Once a served connection closes, its slot is used again.
        drop(held);
        served_again(&late, &addr, &ack).await;
        stop.cancel();
    }

    /// One address cannot take every slot: past its own cap its connections are refused
    /// (with a notice that names the address cap, and counted) while other addresses are
    /// still served; its slots free as its connections close.
    #[tokio::test]
    async fn one_address_cannot_take_every_connection() {
        let limits = Limits {
            max_connections: 8,
            max_per_address: 2,
            max_in_flight: MAX_IN_FLIGHT,
        };
        let (addr, handler, stop) = serving(limits, Security::default()).await;
        let from = |ip: &'static str| {
            let addr = addr.clone();
            async move {
                let socket = tokio::net::TcpSocket::new_v4().expect("socket");
                socket
                    .bind(format!("{ip}:0").parse().expect("address"))
                    .expect("bind the source address");
                let stream = socket
                    .connect(addr.parse().expect("address"))
                    .await
                    .expect("connect");
                Framed::new(stream, frame::codec())
            }
        };
        let mut held = Vec::new();
        for id in 0..2 {
            let mut c = from("127.0.0.1").await;
            send(&mut c, id, ping()).await;
            assert_eq!(recv(&mut c).await.id, id);
            held.push(c);
        }
        let mut over = from("127.0.0.1").await;
        let notice = recv(&mut over).await;
        assert_unavailable(notice.body, "2 open from this address");
        assert_eq!(handler.refused.load(Ordering::SeqCst), 1);
        // Another address is served meanwhile.
        let mut other = from("127.0.0.2").await;
        send(&mut other, 7, ping()).await;
        assert_eq!(recv(&mut other).await.id, 7);
        // A connection that closes frees its address's slot.
        held.pop();
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let mut again = from("127.0.0.1").await;
            send(&mut again, 9, ping()).await;
            let answer = tokio::time::timeout(WAIT, again.next()).await;
            match answer {
                Ok(Some(Ok(frame)))
                    if frame::decode::<Response>(&frame).is_ok_and(|e| e.id == 9) =>
                {
                    break;
                }
                other => assert!(
                    std::time::Instant::now() < deadline,
                    "no slot for the address after one of its connections closed: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
    }

    /// With a cluster secret, a connection over the cap is told BUSY in place of the
    /// handshake's challenge: the caller retries, and does not take it for a secret the
    /// node refuses (which makes a join give up at once).
    #[tokio::test]
    async fn with_a_secret_a_connection_over_the_cap_is_told_busy_not_refused() {
        let secret = crate::rpc::auth::ClusterSecret::new("s3cret");
        let security = Security {
            secret: Some(secret.clone()),
            tls: None,
        };
        let (addr, handler, stop) = capped(1, security).await;
        let ack = Response::Ring(RingResponse::Ack);
        let first = Pool::with_secret(WAIT, Some(secret.clone()));
        assert_eq!(first.call(&addr, ping()).await, Ok(ack.clone()));
        let late = Pool::with_secret(WAIT, Some(secret));
        let err = late.call(&addr, ping()).await.expect_err("over the cap");
        assert!(
            matches!(err, CallError::Busy(_)) && !err.is_auth() && !err.means_peer_down(),
            "{err}"
        );
        assert_eq!(handler.refused.load(Ordering::SeqCst), 1);
        // Once the first connection closes, the slot is used again.
        drop(first);
        served_again(&late, &addr, &ack).await;
        stop.cancel();
    }

    /// One connection never has more than `max_in_flight` requests worked on at once: at the
    /// cap it is not read at all (a quick request behind waits too) until one finishes, and
    /// nothing is refused or lost.
    #[tokio::test(start_paused = true)]
    async fn a_connection_works_on_at_most_max_in_flight_requests() {
        let handler = Gate::new();
        let (client, server) = tokio::io::duplex(64 << 10);
        let limits = Limits {
            max_connections: 1,
            max_per_address: MAX_PER_ADDRESS,
            max_in_flight: 2,
        };
        let stop = CancellationToken::new();
        tokio::spawn(connection(
            server,
            handler.clone(),
            None,
            limits,
            stop.clone(),
        ));
        let mut client = Framed::new(client, frame::codec());
        for id in 1..=3 {
            send(&mut client, id, slow()).await;
        }
        send(&mut client, 4, ping()).await;
        handler.wait_inside(2).await;
        // Time is paused and moves only when every task waits, so this times out only if the
        // server cannot go on: the third request and the ping behind it are not read.
        let nothing_yet = |early: Result<Option<_>, _>| match early {
            Err(_) => {}
            Ok(answer) => panic!("answered while two requests held the slots: {answer:?}"),
        };
        nothing_yet(tokio::time::timeout(WAIT, client.next()).await);
        assert_eq!(*handler.inside.borrow(), 2);

        // One finishes: its answer goes out and the third request takes the slot it freed, so
        // the ping behind it still waits.
        let done = Response::Registry(RegistryResponse::Done);
        let mut answered = std::collections::BTreeMap::new();
        handler.gate.add_permits(1);
        let env = recv(&mut client).await;
        answered.insert(env.id, env.body);
        nothing_yet(tokio::time::timeout(WAIT, client.next()).await);
        assert_eq!(*handler.inside.borrow(), 2);
        // Another finishes: the ping is read and answered; then the last one.
        handler.gate.add_permits(1);
        while !answered.contains_key(&4) {
            let env = recv(&mut client).await;
            answered.insert(env.id, env.body);
        }
        handler.gate.add_permits(1);
        while answered.len() < 4 {
            let env = recv(&mut client).await;
            answered.insert(env.id, env.body);
        }
        let want = [
            (1, done.clone()),
            (2, done.clone()),
            (3, done),
            (4, Response::Ring(RingResponse::Ack)),
        ];
        assert_eq!(answered, want.into_iter().collect());
        assert_eq!(handler.most_inside.load(Ordering::SeqCst), 2);
        stop.cancel();
    }

    /// Collects log lines for a test.
    #[derive(Clone, Default)]
    struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut logs) = self.0.lock() {
                logs.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Logs {
        fn text(&self) -> String {
            self.0
                .lock()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .unwrap_or_default()
        }
    }

    /// Garbage after a request: the connection is dropped with a log line that names the peer
    /// and what was wrong, and the request received before the garbage is still answered.
    /// (A current-thread runtime: every task logs to this thread's subscriber.)
    #[tokio::test]
    async fn garbage_is_logged_and_the_request_before_it_still_answered() {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer({
                let logs = logs.clone();
                move || logs.clone()
            })
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let handler = Gate::new();
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, handler.clone(), stop.clone()));
        let mut peer = Framed::new(
            TcpStream::connect(addr).await.expect("connect"),
            frame::codec(),
        );
        let me = peer.get_ref().local_addr().expect("local addr").to_string();
        send(&mut peer, 1, slow()).await;
        handler.wait_inside(1).await;
        peer.get_mut()
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write garbage");
        handler.gate.add_permits(1);
        let answer = recv(&mut peer).await;
        assert_eq!(answer.id, 1);
        assert_eq!(answer.body, Response::Registry(RegistryResponse::Done));
        let end = tokio::time::timeout(WAIT, peer.next())
            .await
            .expect("closed after the answer");
        assert!(!matches!(end, Some(Ok(_))), "{end:?}");
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let text = logs.text();
            let line = text
                .lines()
                .find(|l| l.contains("ring RPC connection dropped"));
            if let Some(line) = line {
                assert!(line.contains(&me) && line.contains("bad frame"), "{line}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no log line: {text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
    }

    /// A request this build does not know (a newer agent's) is answered with an error under
    /// its id, and the connection goes on: the next request is answered as usual.
    #[tokio::test]
    async fn an_unknown_request_is_answered_with_an_error_and_the_connection_kept() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, Gate::new(), stop.clone()));
        let mut peer = Framed::new(
            TcpStream::connect(addr).await.expect("connect"),
            frame::codec(),
        );
        let mut unknown = vec![frame::PROTOCOL_VERSION];
        unknown.extend_from_slice(&postcard::to_allocvec(&7u64).expect("varint"));
        unknown.extend_from_slice(&[0x7f, 0, 1, 2]);
        peer.send(Bytes::from(unknown)).await.expect("send");
        let answer = recv(&mut peer).await;
        assert_eq!(answer.id, 7);
        assert_unavailable(answer.body, "cannot read the request");
        send(&mut peer, 8, ping()).await;
        let answer = recv(&mut peer).await;
        assert_eq!(answer.id, 8);
        assert_eq!(answer.body, Response::Ring(RingResponse::Ack));
        stop.cancel();
    }

    /// Answers a ring ping at once; a registry request waits until `release` is notified.
    struct SlowAndFast {
        waiting: std::sync::atomic::AtomicBool,
        release: tokio::sync::Notify,
    }

    #[async_trait]
    impl Handler for SlowAndFast {
        async fn handle(&self, req: Request) -> Response {
            match req {
                Request::Registry(_) => {
                    let released = self.release.notified();
                    self.waiting
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    released.await;
                    Response::Registry(RegistryResponse::Done)
                }
                Request::Ring(_) => Response::Ring(RingResponse::Ack),
            }
        }
    }

    /// A request the handler answers at once is answered inline, one that must wait runs on
    /// its own task: a waiting call does not hold up the calls behind it on the same
    /// connection, and its answer still arrives when it is ready.
    #[tokio::test]
    async fn a_waiting_call_does_not_block_the_calls_behind_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let handler = Arc::new(SlowAndFast {
            waiting: std::sync::atomic::AtomicBool::new(false),
            release: tokio::sync::Notify::new(),
        });
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, handler.clone(), stop.clone()));
        let pool = Arc::new(Pool::new(Duration::from_secs(20)));
        let slow = {
            let (pool, addr) = (pool.clone(), addr.clone());
            tokio::spawn(async move {
                let slow = Request::Registry(RegistryRequest::ListOwned);
                pool.call(&addr, slow).await
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !handler.waiting.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(
                std::time::Instant::now() < deadline,
                "the slow call never arrived"
            );
            tokio::task::yield_now().await;
        }
        for _ in 0..50 {
            let answer = pool.call(&addr, Request::Ring(RingRequest::Ping)).await;
            assert_eq!(answer, Ok(Response::Ring(RingResponse::Ack)));
        }
        assert!(
            !slow.is_finished(),
            "the slow call was answered before its release"
        );
        handler.release.notify_waiters();
        let answer = slow.await.expect("slow call task");
        assert_eq!(answer, Ok(Response::Registry(RegistryResponse::Done)));
        stop.cancel();
    }
}
