//! The RPC server: accept connections, decode frames, hand requests to a [`Handler`], write
//! answers back on the same connection (possibly out of order; ids pair them).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::auth::{self, ClusterSecret};
use super::frame::{self, Envelope};
use super::messages::{Request, Response};

/// Connections open at once; further peers wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 1024;

/// A connection with no frame for this long is closed (peers reconnect on demand).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// What answers requests: the agent.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Answer one request from the peer at `peer`.
    async fn handle(&self, req: Request) -> Response;
}

/// Serve ring RPC on `listener` until `shutdown` is cancelled, without cluster authentication.
pub async fn serve(listener: TcpListener, handler: Arc<dyn Handler>, shutdown: CancellationToken) {
    serve_with_secret(listener, handler, None, shutdown).await
}

/// Serve ring RPC on `listener` until `shutdown` is cancelled. With a `secret`, every
/// connection must complete the handshake of [`auth`] within [`auth::HANDSHAKE_TIMEOUT`] and
/// authenticate every frame; a peer that does not is logged with its address and dropped
/// without an answer. Without one, a peer must send its first frame within that time.
pub async fn serve_with_secret(
    listener: TcpListener,
    handler: Arc<dyn Handler>,
    secret: Option<ClusterSecret>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let shutdown = shutdown.clone();
                let secret = secret.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, handler, secret, shutdown).await {
                        tracing::warn!(%peer, "ring RPC connection dropped: {e}");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!("accept failed on the ring port: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(
    stream: TcpStream,
    handler: Arc<dyn Handler>,
    secret: Option<ClusterSecret>,
    shutdown: CancellationToken,
) -> Result<(), String> {
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
            n = source.next() => n,
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
            let env: Envelope<Request> = match frame::decode_opened(&frame, &mut opener) {
                Ok(env) => env,
                Err(_) if first && !opener.is_authenticated() && auth::is_handshake(&frame) => {
                    break Some(Err(format!("refused: {}", auth::AuthError::PeerWithSecret)));
                }
                Err(e) => break Some(Err(format!("bad frame: {e}"))),
            };
            first = false;
            if let Some(env) = answer(&handler, env, &tx) {
                frame::feed(&mut sink, &env, &mut sealer)
                    .await
                    .map_err(|e| format!("write failed: {e}"))?;
                answered = true;
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

/// Answer `env` at once when the handler can (a ring step, a cached discover); otherwise run
/// the handler on its own task, which sends the answer on `tx`, and return `None`.
fn answer(
    handler: &Arc<dyn Handler>,
    env: Envelope<Request>,
    tx: &mpsc::Sender<Envelope<Response>>,
) -> Option<Envelope<Response>> {
    let id = env.id;
    let handler = handler.clone();
    let mut work = Box::pin(async move { handler.handle(env.body).await });
    if let Some(body) = (&mut work).now_or_never() {
        return Some(Envelope { id, body });
    }
    let tx = tx.clone();
    tokio::spawn(async move {
        let body = work.await;
        let _ = tx.send(Envelope { id, body }).await;
    });
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::ops::{RegistryRequest, RegistryResponse};
    use crate::ring::{RingRequest, RingResponse};
    use crate::rpc::Pool;

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
