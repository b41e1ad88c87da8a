//! The RPC server: accept connections, decode frames, hand requests to a [`Handler`], write
//! answers back on the same connection (possibly out of order; ids pair them).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
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
    let (tx, mut rx) = mpsc::channel::<Envelope<Response>>(256);
    let writer = tokio::spawn(async move {
        while let Some(env) = rx.recv().await {
            if frame::write_queued(&mut sink, &mut rx, env, &mut sealer)
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let mut first = true;
    let result = loop {
        // A peer must speak at once after connecting (the pool connects on demand): a silent
        // one cannot hold a connection slot for the idle timeout.
        let wait = if first {
            auth::HANDSHAKE_TIMEOUT
        } else {
            IDLE_TIMEOUT
        };
        let next = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            n = tokio::time::timeout(wait, source.next()) => n,
        };
        let frame = match next {
            Err(_) if first => break Err(format!("no request within {wait:?}; dropped")),
            Err(_) => break Ok(()), // idle
            Ok(None) => break Ok(()),
            Ok(Some(Err(e))) => break Err(format!("bad frame: {e}")),
            Ok(Some(Ok(f))) => f,
        };
        let env: Envelope<Request> = match frame::decode_opened(&frame, &mut opener) {
            Ok(env) => env,
            Err(_) if first && !opener.is_authenticated() && auth::is_handshake(&frame) => {
                break Err(format!("refused: {}", auth::AuthError::PeerWithSecret))
            }
            Err(e) => break Err(format!("bad frame: {e}")),
        };
        first = false;
        let handler = handler.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let body = handler.handle(env.body).await;
            let _ = tx.send(Envelope { id: env.id, body }).await;
        });
    };
    drop(tx);
    let _ = writer.await;
    result
}
