//! The RPC client: one long-lived connection per peer, many calls in flight on it, a deadline
//! on every call. A broken connection fails its calls and is replaced on the next call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;

use super::auth::{self, ClusterSecret, Opener, Sealer};
use super::frame::{self, Envelope};
use super::messages::{Request, Response};
use super::socket::Socket;
use crate::tls::Tls;

/// Why a call got no answer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    /// Could not connect (refused, unreachable, bad address).
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    /// No answer before the deadline.
    #[error("no answer from {0} within {1:?}")]
    Timeout(String, Duration),
    /// The connection broke while waiting.
    #[error("connection to {0} broke")]
    Broken(String),
    /// The cluster-secret handshake failed: the peer has no secret, or another one.
    #[error("cannot authenticate with {0}: {1}")]
    Auth(String, String),
    /// The peer closed a fresh connection without answering anything: what a node with
    /// `--cluster-secret` does to an agent without one.
    #[error("{0} closed the connection without answering: not a ring RPC port (an agent's HTTP port?), or a ring with --cluster-secret refusing agents without it")]
    Refused(String),
    /// The peer is at a cap of ring connections (it said so before closing the connection:
    /// a notice, or with `--cluster-secret` its handshake's BUSY); retrying later may succeed.
    #[error("{0} is at its cap of ring connections; retry later")]
    Busy(String),
    /// The peer closed the connection during the TLS handshake before sending any of it:
    /// what a TLS node does when it is refusing more connections than it will answer (see
    /// `tls::Refusals`), and also what a port that does not speak TLS, or a load balancer
    /// with no backend, does. Not a verdict on this agent's certificate, so a join retries;
    /// but nothing answered, so the peer is suspected as for any failed connection (a node
    /// really at its cap answers inside TLS for its first 16 refusals at a time).
    #[error("{0} closed the connection during the TLS handshake: at its cap of ring connections (retry later), or not a ring port with TLS")]
    ClosedInTls(String),
    /// This side reset the connection because another call on it timed out with bytes the
    /// peer had not taken ([`Pool::call_with_timeout`]): no verdict on the peer, which that
    /// call's caller probes.
    #[error("the connection to {0} was reset after another call on it timed out; retry")]
    Reset(String),
}

impl CallError {
    /// Whether the peer refused this agent's credentials (retrying will not help).
    pub fn is_auth(&self) -> bool {
        matches!(self, CallError::Auth(..) | CallError::Refused(_))
    }

    /// Whether the failure is a sign that the peer is gone (and may be suspected): every
    /// failure but a peer saying it is at its cap of connections, and a connection this side
    /// reset (the call that timed out on it leaves the verdict to the ring's probe).
    pub fn means_peer_down(&self) -> bool {
        !matches!(self, CallError::Busy(_) | CallError::Reset(_))
    }
}

type PendingMap = Arc<Mutex<HashMap<u64, oneshot::Sender<Response>>>>;

struct Conn {
    tx: mpsc::Sender<Envelope<Request>>,
    pending: PendingMap,
    alive: Arc<std::sync::atomic::AtomicBool>,
    /// Whether any frame arrived on this connection.
    heard: Arc<std::sync::atomic::AtomicBool>,
    /// Whether the peer said it is at a cap of connections before closing this one.
    busy: Arc<std::sync::atomic::AtomicBool>,
    /// Whether this side reset it ([`Conn::reset_if_stuck`]).
    reset: std::sync::atomic::AtomicBool,
    /// The TLS generation it was made under ([`Tls::generation`]; 0 without TLS).
    generation: u64,
    /// A second handle on the TCP socket, to reset it ([`Conn::reset_if_stuck`]).
    socket: Mutex<Option<Socket>>,
    /// The connection's writer and reader tasks.
    tasks: [tokio::task::AbortHandle; 2],
}

impl Conn {
    /// If some bytes written on this connection were never acknowledged by the peer, reset
    /// it: abortive close, both tasks stopped, every call waiting on it failed. Returns
    /// whether it did.
    fn reset_if_stuck(&self) -> bool {
        let Some(socket) = self
            .socket
            .lock()
            .ok()
            .and_then(|mut s| s.take_if(|s| s.unacknowledged() > 0))
        else {
            return false;
        };
        socket.abort_on_close();
        self.reset.store(true, Ordering::Relaxed);
        self.alive.store(false, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
        if let Ok(mut p) = self.pending.lock() {
            p.clear();
        }
        // Dropping `socket` closes this handle; the aborted tasks close the stream's.
        true
    }
}

/// A pool of connections to peers, keyed by ring address.
pub struct Pool {
    conns: Mutex<HashMap<String, Arc<Conn>>>,
    /// Peers this pool refuses to call: a network partition under test control.
    blocked: Mutex<std::collections::HashSet<String>>,
    /// How long every call waits before it is sent (milliseconds): a slow network under
    /// test control. Zero outside tests.
    delay_ms: AtomicU64,
    next_id: AtomicU64,
    timeout: Duration,
    secret: Option<ClusterSecret>,
    /// With TLS, every connection is mutual TLS with the material in force when it is made.
    tls: Option<Arc<Tls>>,
}

impl Pool {
    /// A pool whose calls wait at most `timeout` (connecting included), without cluster
    /// authentication.
    pub fn new(timeout: Duration) -> Pool {
        Pool::with_secret(timeout, None)
    }

    /// A pool whose connections prove `secret` (if any) with the handshake of [`auth`].
    pub fn with_secret(timeout: Duration, secret: Option<ClusterSecret>) -> Pool {
        Pool::with_security(timeout, secret, None)
    }

    /// A pool whose connections speak mutual TLS with `tls` (if any) and prove `secret` (if
    /// any) inside it. After the TLS material changes, new calls go over new connections
    /// made with it; calls already sent on an older connection finish on it.
    pub fn with_security(
        timeout: Duration,
        secret: Option<ClusterSecret>,
        tls: Option<Arc<Tls>>,
    ) -> Pool {
        Pool {
            conns: Mutex::new(HashMap::new()),
            blocked: Mutex::new(std::collections::HashSet::new()),
            delay_ms: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            timeout,
            secret,
            tls,
        }
    }

    /// The deadline of one call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Call `addr` with the pool's deadline.
    pub async fn call(&self, addr: &str, req: Request) -> Result<Response, CallError> {
        self.call_with_timeout(addr, req, self.timeout).await
    }

    /// Call `addr`, waiting at most `timeout` for connection and answer together.
    ///
    /// When the deadline passes while some of the connection's bytes were never acknowledged
    /// by the peer, the connection is reset (RST, its queue dropped) and replaced: the call's
    /// request must not reach the peer later, after the caller gave it up and maybe retried
    /// it elsewhere. Bytes the peer's kernel did take are its to handle (a paused peer
    /// refuses them when it wakes, `Registry`'s pause detector).
    pub async fn call_with_timeout(
        &self,
        addr: &str,
        req: Request,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let timed_out = || CallError::Timeout(addr.to_string(), timeout);
        if self.blocked.lock().is_ok_and(|b| b.contains(addr)) {
            return Err(CallError::Connect(
                addr.to_string(),
                "traffic cut (partition under test control)".to_string(),
            ));
        }
        let delay = self.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            // The call's deadline runs while it is delayed, as it would on a slow network.
            let until = tokio::time::Instant::now() + Duration::from_millis(delay);
            if until >= deadline {
                tokio::time::sleep_until(deadline).await;
                return Err(timed_out());
            }
            tokio::time::sleep_until(until).await;
        }
        let conn = tokio::time::timeout_at(deadline, self.conn(addr))
            .await
            .map_err(|_| timed_out())??;
        match tokio::time::timeout_at(deadline, self.exchange(addr, &conn, req)).await {
            Ok(r) => r,
            Err(_) => {
                if conn.reset_if_stuck() {
                    self.drop_conn(addr, &conn);
                    tracing::warn!(
                        peer = %addr,
                        "ring RPC call timed out with bytes the peer never took; connection reset"
                    );
                }
                Err(timed_out())
            }
        }
    }

    /// Refuse every call to these ring addresses from now on (empty: none) — how tests cut
    /// a running ring in two inside the transport.
    pub fn set_blocked(&self, addrs: impl IntoIterator<Item = String>) {
        if let Ok(mut b) = self.blocked.lock() {
            *b = addrs.into_iter().collect();
        }
    }

    /// Delay every call by `delay` before it is sent (zero: none) — how tests make the
    /// network of a running agent slow.
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// Send `req` on `conn` and wait for its answer.
    async fn exchange(
        &self,
        addr: &str,
        conn: &Arc<Conn>,
        req: Request,
    ) -> Result<Response, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = conn.pending.lock() {
            p.insert(id, tx);
        }
        let _guard = PendingGuard {
            pending: conn.pending.clone(),
            id,
        };
        if conn.tx.send(Envelope { id, body: req }).await.is_err() {
            self.drop_conn(addr, conn);
            return Err(CallError::Broken(addr.to_string()));
        }
        match rx.await {
            Ok(resp) => Ok(resp),
            Err(_) => {
                self.drop_conn(addr, conn);
                if conn.reset.load(Ordering::Relaxed) {
                    return Err(CallError::Reset(addr.to_string()));
                }
                if conn.busy.load(Ordering::Relaxed) {
                    return Err(CallError::Busy(addr.to_string()));
                }
                if self.secret.is_none()
                    && self.tls.is_none()
                    && !conn.heard.load(Ordering::Relaxed)
                {
                    return Err(CallError::Refused(addr.to_string()));
                }
                Err(CallError::Broken(addr.to_string()))
            }
        }
    }

    fn drop_conn(&self, addr: &str, conn: &Arc<Conn>) {
        if let Ok(mut conns) = self.conns.lock() {
            if conns.get(addr).is_some_and(|c| Arc::ptr_eq(c, conn)) {
                conns.remove(addr);
            }
        }
    }

    async fn conn(&self, addr: &str) -> Result<Arc<Conn>, CallError> {
        let generation = self.tls.as_ref().map_or(0, |t| t.generation());
        if let Ok(conns) = self.conns.lock() {
            if let Some(c) = conns.get(addr) {
                if c.alive.load(Ordering::Relaxed) && c.generation == generation {
                    return Ok(c.clone());
                }
            }
        }
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| CallError::Connect(addr.to_string(), e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let socket = Socket::of(&stream);
        let mut conn = match &self.tls {
            None => self.start(addr, stream, 0).await?,
            Some(tls) => {
                let (connector, generation) = tls.ring_connector();
                let name = crate::tls::server_name(addr)
                    .map_err(|e| CallError::Connect(addr.to_string(), e))?;
                let stream = connector.connect(name, stream).await.map_err(|e| {
                    if closed_bare(&e) {
                        return CallError::ClosedInTls(addr.to_string());
                    }
                    tracing::warn!(peer = %addr, "ring RPC TLS handshake failed: {e}");
                    CallError::Auth(addr.to_string(), format!("TLS: {e}"))
                })?;
                self.start(addr, stream, generation).await?
            }
        };
        conn.socket = Mutex::new(socket);
        let conn = Arc::new(conn);
        if let Ok(mut conns) = self.conns.lock() {
            // Another call may have connected meanwhile; keep one.
            if let Some(c) = conns.get(addr) {
                if c.alive.load(Ordering::Relaxed) && c.generation == conn.generation {
                    return Ok(c.clone());
                }
            }
            conns.insert(addr.to_string(), conn.clone());
        }
        Ok(conn)
    }

    /// Frame `stream`, run the cluster-secret handshake on it and start its tasks.
    async fn start<S>(&self, addr: &str, stream: S, generation: u64) -> Result<Conn, CallError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut framed = Framed::new(stream, frame::codec());
        framed.set_backpressure_boundary(frame::WRITE_BUFFER);
        let (sealer, opener) = auth::client(&mut framed, self.secret.as_ref())
            .await
            .map_err(|e| {
                if e == auth::AuthError::Busy {
                    // Not a verdict on this agent's secret: the caller retries.
                    return CallError::Busy(addr.to_string());
                }
                tracing::warn!(peer = %addr, "ring RPC handshake failed: {e}");
                CallError::Auth(addr.to_string(), e.to_string())
            })?;
        Ok(spawn_conn(addr, framed, sealer, opener, generation))
    }
}

/// Whether a TLS handshake failed because the peer closed the connection rather than because
/// either side rejected the other's certificate (a TLS alert or a bad certificate is an
/// `InvalidData` error).
fn closed_bare(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
    )
}

/// Removes a call's entry when the call ends, answered or not (timeouts drop the future).
struct PendingGuard {
    pending: PendingMap,
    id: u64,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&self.id);
        }
    }
}

fn spawn_conn<S>(
    peer: &str,
    framed: Framed<S, frame::FrameCodec>,
    mut sealer: Sealer,
    mut opener: Opener,
    generation: u64,
) -> Conn
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut source) = framed.split();
    let (tx, mut rx) = mpsc::channel::<Envelope<Request>>(1024);
    let pending: PendingMap = Arc::new(Mutex::new(HashMap::new()));
    let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let alive_w = alive.clone();
    let writer = tokio::spawn(async move {
        while let Some(env) = rx.recv().await {
            if frame::write_queued(&mut sink, &mut rx, env, &mut sealer)
                .await
                .is_err()
            {
                break;
            }
        }
        alive_w.store(false, Ordering::Relaxed);
        // No caller holds the connection any more (replaced after a TLS reload, or the pool
        // is gone): close it, so that the peer ends its side and the reader below ends too.
        let _ = sink.close().await;
    });
    let pending_r = pending.clone();
    let alive_r = alive.clone();
    let heard = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let heard_r = heard.clone();
    let busy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy_r = busy.clone();
    let peer = peer.to_string();
    let reader = tokio::spawn(async move {
        while let Some(Ok(bytes)) = source.next().await {
            let env = match frame::decode_opened::<Response>(&bytes, &mut opener) {
                Ok(env) => env,
                Err(e) => {
                    tracing::warn!("bad RPC answer ({e}); closing the connection");
                    break;
                }
            };
            heard_r.store(true, Ordering::Relaxed);
            let waiter = pending_r.lock().ok().and_then(|mut p| p.remove(&env.id));
            match (waiter, env.body) {
                (Some(w), body) => {
                    let _ = w.send(body);
                }
                // Id 0 is no call's: the peer's notice before it closes the connection (it
                // serves as many connections as it can already).
                (None, Response::Error(e)) if env.id == 0 => {
                    tracing::warn!(%peer, "ring RPC peer closed the connection: {e}");
                    busy_r.store(true, Ordering::Relaxed);
                }
                (None, _) => {}
            }
        }
        alive_r.store(false, Ordering::Relaxed);
        // Fail every call still waiting on this connection.
        if let Ok(mut p) = pending_r.lock() {
            p.clear();
        }
    });
    Conn {
        tx,
        pending,
        alive,
        heard,
        busy,
        reset: std::sync::atomic::AtomicBool::new(false),
        generation,
        socket: Mutex::new(None),
        tasks: [writer.abort_handle(), reader.abort_handle()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::ops::{Entry, RegistryRequest};
    use crate::ring::RingRequest;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpSocket;

    /// A listener on loopback whose connections have a 4 KiB receive window, and its address.
    fn tiny_window_listener() -> (tokio::net::TcpListener, String) {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let listener = socket.listen(8).expect("listen");
        let addr = listener.local_addr().expect("addr").to_string();
        (listener, addr)
    }

    /// A request of `size` bytes.
    fn big_request(size: usize) -> Request {
        Request::Registry(RegistryRequest::Handoff {
            entries: vec![Entry {
                key: "u/big/a".to_string(),
                value: vec![7u8; size],
            }],
        })
    }

    /// A peer that accepts and never reads, with a tiny receive window: it takes a few KiB of
    /// a big request and leaves the rest unacknowledged at the caller, as a cut network does.
    /// After the caller's deadline the peer starts reading: it must never get the whole
    /// request, or a write given up (and retried elsewhere) would be applied late.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_call_that_times_out_with_bytes_the_peer_never_took_is_never_delivered_late() {
        let (listener, addr) = tiny_window_listener();
        let accepted = tokio::spawn(async move { listener.accept().await.map(|(s, _)| s) });

        let size = 8 << 20;
        let pool = Pool::new(Duration::from_millis(500));
        let answer = pool.call(&addr, big_request(size)).await;
        assert!(matches!(answer, Err(CallError::Timeout(..))), "{answer:?}");

        let mut peer = accepted.await.expect("join").expect("accept");
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0;
        let reading = async {
            loop {
                match peer.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got += n,
                }
                if got >= size {
                    return;
                }
            }
        };
        let ended = tokio::time::timeout(Duration::from_secs(30), reading).await;
        assert!(ended.is_ok(), "the connection neither ended nor delivered");
        assert!(
            got < size,
            "the peer got the whole request ({got} bytes) after the caller gave it up"
        );
    }

    /// A test's slow network (`set_delay`): a call waits its delay before anything is sent,
    /// within its deadline; a delay past the deadline is a timeout, and nothing reached the
    /// peer.
    #[tokio::test]
    async fn a_delayed_call_sends_nothing_before_its_delay_and_times_out_past_its_deadline() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let pool = Pool::new(Duration::from_millis(300));
        pool.set_delay(Duration::from_millis(400));
        let started = std::time::Instant::now();
        let answer = pool.call(&addr, Request::Ring(RingRequest::Ping)).await;
        assert!(matches!(answer, Err(CallError::Timeout(..))), "{answer:?}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(
            accepted.is_err(),
            "the delayed call connected: {accepted:?}"
        );
        // Without the delay the call connects at once.
        pool.set_delay(Duration::ZERO);
        let call = pool.call(&addr, Request::Ring(RingRequest::Ping));
        let (_, accepted) = tokio::join!(call, listener.accept());
        assert!(accepted.is_ok(), "{accepted:?}");
    }

    /// The other calls waiting on a connection reset for a stuck call fail as `Reset`, which
    /// says nothing of the peer: a peer that is only slow must not be dropped from the ring
    /// by the calls that happened to share the connection (the stuck call's caller probes it).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn calls_sharing_a_connection_reset_for_a_stuck_call_do_not_mean_the_peer_is_down() {
        let (listener, addr) = tiny_window_listener();
        // The peer accepts and holds every connection, and reads nothing.
        let _peer = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });

        let pool = Arc::new(Pool::new(Duration::from_secs(30)));
        // A small call that the peer never answers, waiting long.
        let waiting = {
            let (pool, addr) = (pool.clone(), addr.clone());
            tokio::spawn(async move {
                pool.call_with_timeout(
                    &addr,
                    Request::Registry(RegistryRequest::Handoff { entries: vec![] }),
                    Duration::from_secs(30),
                )
                .await
            })
        };
        // Once its connection is in the pool, a big call on the same connection times out
        // with bytes the peer never took.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !pool.conns.lock().unwrap().contains_key(&addr) {
            assert!(std::time::Instant::now() < deadline, "no connection made");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let stuck = pool
            .call_with_timeout(&addr, big_request(8 << 20), Duration::from_millis(500))
            .await;
        assert!(matches!(stuck, Err(CallError::Timeout(..))), "{stuck:?}");
        let other = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the waiting call ends with the reset")
            .expect("join");
        assert!(matches!(other, Err(CallError::Reset(_))), "{other:?}");
        assert!(!other.unwrap_err().means_peer_down());
    }
}
