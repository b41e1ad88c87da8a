//! Cluster authentication of ring RPC (`--cluster-secret`).
//!
//! Without a secret, connections carry plain frames (see [`super::frame`]). With one, every
//! connection opens with a mutual challenge–response handshake, HMAC-SHA256 keyed with the
//! secret, over a fresh random nonce from each side:
//!
//! ```text
//! client → server   HELLO      marker 'H' | client nonce (32)
//! server → client   CHALLENGE  marker 'C' | server nonce (32) | HMAC(secret, "server" | Nc | Ns)
//! client → server   PROOF      marker 'P' | HMAC(secret, "client" | Nc | Ns)
//! ```
//!
//! A server at its cap of ring connections answers a new connection with `marker 'B'` (BUSY)
//! instead, and closes it: the client then knows to retry later, rather than suspect the
//! secret.
//!
//! Each side proves it knows the secret over nonces it could not choose alone, so a recorded
//! handshake cannot be replayed, and the labels keep one side's proof from being reflected as
//! the other's. Both then derive a session key `HMAC(secret, "session" | Nc | Ns)`, and every
//! later frame carries a tag `HMAC(key, direction | counter | frame)`: the per-direction counter
//! is implicit (never sent), so a replayed, reordered, dropped or reflected frame fails its tag
//! and the connection is closed. Tags are compared in constant time (`Mac::verify_slice`).
//!
//! This authenticates; it does not encrypt (docs/SECURITY.md). Handshake frames start with
//! [`HANDSHAKE_MARKER`], which is never a protocol version, so a node with a secret and a node
//! without one recognise each other's mistake and say so in their logs.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;

use super::frame::{FrameCodec, MAX_FRAME, PROTOCOL_VERSION};

type HmacSha256 = Hmac<Sha256>;

/// Bytes of each side's nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes of an HMAC-SHA256 tag or proof.
pub const TAG_LEN: usize = 32;
/// First byte of every handshake message; never a [`PROTOCOL_VERSION`].
pub const HANDSHAKE_MARKER: u8 = 0xA5;
/// The largest frame read before the peer is authenticated: an unauthenticated peer cannot
/// make us reserve a [`MAX_FRAME`] buffer.
pub const MAX_HANDSHAKE_FRAME: usize = 128;
/// How long a handshake (or, without a secret, the first frame) may take; a silent peer is
/// dropped after this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

const HELLO: u8 = b'H';
const CHALLENGE: u8 = b'C';
const PROOF: u8 = b'P';
const BUSY: u8 = b'B';
const TO_SERVER: u8 = b'c';
const TO_CLIENT: u8 = b's';

/// The shared cluster secret. Its `Debug` never shows it.
#[derive(Clone)]
pub struct ClusterSecret(Arc<[u8]>);

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(<masked>)")
    }
}

impl ClusterSecret {
    /// The secret as given by `--cluster-secret` / `CHORDCTL_CLUSTER_SECRET`.
    pub fn new(secret: &str) -> ClusterSecret {
        ClusterSecret(Arc::from(secret.as_bytes()))
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        match HmacSha256::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable_hmac(),
        }
    }

    /// HMAC(secret, label | client nonce | server nonce).
    fn prove(&self, label: &[u8], nc: &[u8; NONCE_LEN], ns: &[u8; NONCE_LEN]) -> HmacSha256 {
        let mut m = self.mac();
        m.update(label);
        m.update(nc);
        m.update(ns);
        m
    }

    fn session_key(&self, nc: &[u8; NONCE_LEN], ns: &[u8; NONCE_LEN]) -> [u8; TAG_LEN] {
        self.prove(b"chordctl session", nc, ns)
            .finalize()
            .into_bytes()
            .into()
    }
}

#[cold]
fn unreachable_hmac() -> ! {
    // Hmac<Sha256>::new_from_slice accepts every key length (long keys are hashed).
    panic!("HMAC-SHA256 refused a key, which it never does")
}

/// Why a peer was not authenticated, or a frame was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// This side has a secret and the peer sent a plain frame.
    #[error("the peer sent an unauthenticated frame: it runs without --cluster-secret, and this agent requires one")]
    PeerWithoutSecret,
    /// This side has no secret and the peer started a handshake.
    #[error(
        "the peer tried to authenticate: it runs with --cluster-secret, and this agent has none"
    )]
    PeerWithSecret,
    /// The peer's proof did not verify.
    #[error("the peer did not prove the cluster secret (it has another --cluster-secret)")]
    BadProof,
    /// A handshake message of the wrong kind or size.
    #[error("malformed handshake message")]
    Malformed,
    /// The peer closed the connection mid-handshake.
    #[error("the peer closed the connection during the handshake (does it have the same --cluster-secret?)")]
    Closed,
    /// The peer is at its cap of ring connections (it said BUSY).
    #[error("the peer is at its cap of ring connections; retry later")]
    Busy,
    /// The handshake did not complete in time.
    #[error("the handshake did not complete within {0:?}")]
    Timeout(Duration),
    /// A frame's tag did not verify: tampered, replayed, reordered or reflected.
    #[error("a frame failed authentication (tampered, replayed or reordered)")]
    BadTag,
    /// Reading or writing failed.
    #[error("I/O error during the handshake: {0}")]
    Io(String),
}

/// Authenticates frames sent on one connection (a no-op without a secret).
#[derive(Debug)]
pub struct Sealer(Option<Direction>);

/// Checks frames received on one connection (a no-op without a secret).
#[derive(Debug)]
pub struct Opener(Option<Direction>);

/// One direction of an authenticated connection: the session key, which way, how many frames.
struct Direction {
    key: [u8; TAG_LEN],
    label: u8,
    counter: u64,
}

impl fmt::Debug for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Direction")
            .field("label", &(self.label as char))
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl Direction {
    fn mac(&self, payload: &[u8]) -> HmacSha256 {
        // The key is 32 bytes; HMAC accepts it.
        let mut m = match HmacSha256::new_from_slice(&self.key) {
            Ok(m) => m,
            Err(_) => unreachable_hmac(),
        };
        m.update(&[self.label]);
        m.update(&self.counter.to_be_bytes());
        m.update(payload);
        m
    }
}

impl Sealer {
    /// Frames go out as they are (no secret).
    pub fn plain() -> Sealer {
        Sealer(None)
    }

    /// Whether frames are authenticated.
    pub fn is_authenticated(&self) -> bool {
        self.0.is_some()
    }

    /// The frame to send for `payload`: itself, or itself followed by its tag.
    pub fn seal(&mut self, payload: Bytes) -> Bytes {
        let Some(dir) = &mut self.0 else {
            return payload;
        };
        let tag = dir.mac(&payload).finalize().into_bytes();
        dir.counter = dir.counter.wrapping_add(1);
        let mut out = BytesMut::with_capacity(payload.len() + TAG_LEN);
        out.extend_from_slice(&payload);
        out.extend_from_slice(&tag);
        out.freeze()
    }
}

impl Opener {
    /// Frames come in as they are (no secret).
    pub fn plain() -> Opener {
        Opener(None)
    }

    /// Whether frames must carry a tag.
    pub fn is_authenticated(&self) -> bool {
        self.0.is_some()
    }

    /// The payload of a received frame, once its tag verified; the next frame must carry the
    /// next counter.
    pub fn open<'a>(&mut self, frame: &'a [u8]) -> Result<&'a [u8], AuthError> {
        let Some(dir) = &mut self.0 else {
            return Ok(frame);
        };
        let split = frame.len().checked_sub(TAG_LEN).ok_or(AuthError::BadTag)?;
        let (payload, tag) = frame.split_at(split);
        dir.mac(payload)
            .verify_slice(tag)
            .map_err(|_| AuthError::BadTag)?;
        dir.counter = dir.counter.wrapping_add(1);
        Ok(payload)
    }
}

fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut n);
    n
}

fn message(kind: u8, parts: &[&[u8]]) -> Bytes {
    let mut out = BytesMut::with_capacity(2 + parts.iter().map(|p| p.len()).sum::<usize>());
    out.put_u8(HANDSHAKE_MARKER);
    out.put_u8(kind);
    for p in parts {
        out.extend_from_slice(p);
    }
    out.freeze()
}

/// The body of a handshake message of `kind` and exactly `len` bytes; a plain frame instead
/// means the peer has no secret.
fn parse(frame: &[u8], kind: u8, len: usize) -> Result<&[u8], AuthError> {
    match frame {
        [HANDSHAKE_MARKER, k, body @ ..] if *k == kind && body.len() == len => Ok(body),
        [PROTOCOL_VERSION, ..] => Err(AuthError::PeerWithoutSecret),
        _ => Err(AuthError::Malformed),
    }
}

fn array(bytes: &[u8]) -> Result<[u8; NONCE_LEN], AuthError> {
    bytes.try_into().map_err(|_| AuthError::Malformed)
}

/// The BUSY message a server at its cap of ring connections sends a new connection instead
/// of a CHALLENGE.
pub fn busy() -> Bytes {
    message(BUSY, &[])
}

/// Whether a frame received by a node without a secret is a handshake (the peer has one).
pub fn is_handshake(frame: &[u8]) -> bool {
    frame.first() == Some(&HANDSHAKE_MARKER)
}

/// The client side of the handshake, between HELLO and CHALLENGE.
pub struct ClientHandshake {
    secret: ClusterSecret,
    nc: [u8; NONCE_LEN],
}

impl ClientHandshake {
    /// Start: the HELLO to send.
    pub fn start(secret: &ClusterSecret) -> (ClientHandshake, Bytes) {
        let nc = nonce();
        let hello = message(HELLO, &[&nc]);
        (
            ClientHandshake {
                secret: secret.clone(),
                nc,
            },
            hello,
        )
    }

    /// Check the server's CHALLENGE; the PROOF to send and this side's halves of the session.
    pub fn on_challenge(self, frame: &[u8]) -> Result<(Bytes, Sealer, Opener), AuthError> {
        if frame == [HANDSHAKE_MARKER, BUSY] {
            return Err(AuthError::Busy);
        }
        let body = parse(frame, CHALLENGE, NONCE_LEN + TAG_LEN)?;
        let (ns, server_proof) = body.split_at(NONCE_LEN);
        let ns = array(ns)?;
        self.secret
            .prove(b"chordctl server", &self.nc, &ns)
            .verify_slice(server_proof)
            .map_err(|_| AuthError::BadProof)?;
        let proof = self
            .secret
            .prove(b"chordctl client", &self.nc, &ns)
            .finalize()
            .into_bytes();
        let key = self.secret.session_key(&self.nc, &ns);
        Ok((
            message(PROOF, &[&proof]),
            Sealer(Some(Direction {
                key,
                label: TO_SERVER,
                counter: 0,
            })),
            Opener(Some(Direction {
                key,
                label: TO_CLIENT,
                counter: 0,
            })),
        ))
    }
}

/// The server side of the handshake, between CHALLENGE and PROOF.
pub struct ServerHandshake {
    secret: ClusterSecret,
    nc: [u8; NONCE_LEN],
    ns: [u8; NONCE_LEN],
}

impl ServerHandshake {
    /// Answer a client's HELLO: the CHALLENGE to send (with this side's proof).
    pub fn on_hello(
        secret: &ClusterSecret,
        frame: &[u8],
    ) -> Result<(ServerHandshake, Bytes), AuthError> {
        let nc = array(parse(frame, HELLO, NONCE_LEN)?)?;
        let ns = nonce();
        let proof = secret
            .prove(b"chordctl server", &nc, &ns)
            .finalize()
            .into_bytes();
        let challenge = message(CHALLENGE, &[&ns, &proof]);
        Ok((
            ServerHandshake {
                secret: secret.clone(),
                nc,
                ns,
            },
            challenge,
        ))
    }

    /// Check the client's PROOF; this side's halves of the session.
    pub fn on_proof(self, frame: &[u8]) -> Result<(Sealer, Opener), AuthError> {
        let proof = parse(frame, PROOF, TAG_LEN)?;
        self.secret
            .prove(b"chordctl client", &self.nc, &self.ns)
            .verify_slice(proof)
            .map_err(|_| AuthError::BadProof)?;
        let key = self.secret.session_key(&self.nc, &self.ns);
        Ok((
            Sealer(Some(Direction {
                key,
                label: TO_CLIENT,
                counter: 0,
            })),
            Opener(Some(Direction {
                key,
                label: TO_SERVER,
                counter: 0,
            })),
        ))
    }
}

async fn recv<T: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<T, FrameCodec>,
) -> Result<BytesMut, AuthError> {
    match framed.next().await {
        Some(Ok(f)) => Ok(f),
        Some(Err(e)) => Err(AuthError::Io(e.to_string())),
        None => Err(AuthError::Closed),
    }
}

async fn send<T: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<T, FrameCodec>,
    msg: Bytes,
) -> Result<(), AuthError> {
    framed
        .send(msg)
        .await
        .map_err(|e| AuthError::Io(e.to_string()))
}

/// Run the client side on a fresh connection (nothing to do without a secret), within
/// [`HANDSHAKE_TIMEOUT`].
pub async fn client<T: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<T, FrameCodec>,
    secret: Option<&ClusterSecret>,
) -> Result<(Sealer, Opener), AuthError> {
    let Some(secret) = secret else {
        return Ok((Sealer::plain(), Opener::plain()));
    };
    bounded(framed, async |framed| {
        let (hs, hello) = ClientHandshake::start(secret);
        send(framed, hello).await?;
        let (proof, sealer, opener) = hs.on_challenge(&recv(framed).await?)?;
        send(framed, proof).await?;
        Ok((sealer, opener))
    })
    .await
}

/// Run the server side on an accepted connection (nothing to do without a secret), within
/// [`HANDSHAKE_TIMEOUT`].
pub async fn server<T: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<T, FrameCodec>,
    secret: Option<&ClusterSecret>,
) -> Result<(Sealer, Opener), AuthError> {
    let Some(secret) = secret else {
        return Ok((Sealer::plain(), Opener::plain()));
    };
    bounded(framed, async |framed| {
        let (hs, challenge) = ServerHandshake::on_hello(secret, &recv(framed).await?)?;
        send(framed, challenge).await?;
        hs.on_proof(&recv(framed).await?)
    })
    .await
}

/// Run `f` with small frames allowed and a deadline, then allow full-size frames again.
async fn bounded<T, R>(
    framed: &mut Framed<T, FrameCodec>,
    f: impl AsyncFnOnce(&mut Framed<T, FrameCodec>) -> Result<R, AuthError>,
) -> Result<R, AuthError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    framed.codec_mut().set_max_frame_length(MAX_HANDSHAKE_FRAME);
    let result = match tokio::time::timeout(HANDSHAKE_TIMEOUT, f(framed)).await {
        Ok(r) => r,
        Err(_) => Err(AuthError::Timeout(HANDSHAKE_TIMEOUT)),
    };
    framed.codec_mut().set_max_frame_length(MAX_FRAME);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(
        client_secret: &str,
        server_secret: &str,
    ) -> Result<(Sealer, Opener, Sealer, Opener), AuthError> {
        let (hs_c, hello) = ClientHandshake::start(&ClusterSecret::new(client_secret));
        let (hs_s, challenge) =
            ServerHandshake::on_hello(&ClusterSecret::new(server_secret), &hello)?;
        let (proof, cs, co) = hs_c.on_challenge(&challenge)?;
        let (ss, so) = hs_s.on_proof(&proof)?;
        Ok((cs, co, ss, so))
    }

    #[test]
    fn same_secret_authenticates_both_ways() {
        let (mut cs, mut co, mut ss, mut so) = pair("s3cret", "s3cret").expect("handshake");
        for i in 0..3u8 {
            let f = cs.seal(Bytes::from(vec![1, i]));
            assert_eq!(so.open(&f).expect("client to server"), &[1, i]);
            let f = ss.seal(Bytes::from(vec![1, i, i]));
            assert_eq!(co.open(&f).expect("server to client"), &[1, i, i]);
        }
    }

    #[test]
    fn another_secret_fails_on_both_sides() {
        // The client checks the server's proof first.
        assert_eq!(pair("a", "b").err(), Some(AuthError::BadProof));
        // A client that skips checking (an attacker) still cannot forge the client proof.
        let (hs_s, challenge) =
            ServerHandshake::on_hello(&ClusterSecret::new("right"), &message(HELLO, &[&[7; 32]]))
                .expect("hello");
        assert_eq!(challenge.len(), 2 + NONCE_LEN + TAG_LEN);
        let forged = message(PROOF, &[&[0u8; TAG_LEN]]);
        assert_eq!(hs_s.on_proof(&forged).err(), Some(AuthError::BadProof));
    }

    #[test]
    fn a_tampered_challenge_or_proof_is_refused() {
        let secret = ClusterSecret::new("s");
        let (hs_c, hello) = ClientHandshake::start(&secret);
        let (hs_s, challenge) = ServerHandshake::on_hello(&secret, &hello).expect("hello");
        let mut bad = challenge.to_vec();
        bad[5] ^= 1; // a bit of the server nonce
        assert_eq!(
            ClientHandshake {
                secret: secret.clone(),
                nc: hs_c.nc
            }
            .on_challenge(&bad)
            .err(),
            Some(AuthError::BadProof)
        );
        let (proof, _, _) = hs_c.on_challenge(&challenge).expect("challenge");
        let mut bad = proof.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0x80;
        assert_eq!(hs_s.on_proof(&bad).err(), Some(AuthError::BadProof));
    }

    #[test]
    fn a_recorded_proof_does_not_pass_a_new_challenge() {
        let secret = ClusterSecret::new("s");
        let (hs_c, hello) = ClientHandshake::start(&secret);
        let (_, challenge) = ServerHandshake::on_hello(&secret, &hello).expect("hello");
        let (recorded, _, _) = hs_c.on_challenge(&challenge).expect("challenge");
        // The same HELLO replayed gets a fresh server nonce: the old proof no longer fits.
        let (hs_s2, _) = ServerHandshake::on_hello(&secret, &hello).expect("hello again");
        assert_eq!(hs_s2.on_proof(&recorded).err(), Some(AuthError::BadProof));
    }

    #[test]
    fn tampered_replayed_reordered_and_reflected_frames_fail() {
        let (mut cs, mut co, mut ss, mut so) = pair("k", "k").expect("handshake");
        let f0 = cs.seal(Bytes::from_static(b"\x01first"));
        let f1 = cs.seal(Bytes::from_static(b"\x01second"));
        // Reordered: the second frame first.
        assert_eq!(
            so_clone_for_test(&so).open(&f1).err(),
            Some(AuthError::BadTag)
        );
        // Tampered payload and tampered tag.
        let mut t = f0.to_vec();
        t[1] ^= 1;
        assert_eq!(
            so_clone_for_test(&so).open(&t).err(),
            Some(AuthError::BadTag)
        );
        let mut t = f0.to_vec();
        let last = t.len() - 1;
        t[last] ^= 1;
        assert_eq!(
            so_clone_for_test(&so).open(&t).err(),
            Some(AuthError::BadTag)
        );
        // In order: accepted; replayed: refused.
        assert!(so.open(&f0).is_ok());
        assert_eq!(
            so_clone_for_test(&so).open(&f0).err(),
            Some(AuthError::BadTag)
        );
        assert!(so.open(&f1).is_ok());
        // Reflected: a server frame sent back to the server fails (direction label).
        let g = ss.seal(Bytes::from_static(b"\x01answer"));
        assert_eq!(so.open(&g).err(), Some(AuthError::BadTag));
        assert!(co.open(&g).is_ok());
        // Too short to hold a tag.
        assert_eq!(co.open(&[1, 2, 3]).err(), Some(AuthError::BadTag));
    }

    /// An opener in the same state, to try a frame without advancing the real one.
    fn so_clone_for_test(o: &Opener) -> Opener {
        Opener(o.0.as_ref().map(|d| Direction {
            key: d.key,
            label: d.label,
            counter: d.counter,
        }))
    }

    #[test]
    fn plain_frames_are_recognised_as_a_peer_without_secret() {
        let secret = ClusterSecret::new("s");
        let plain = [PROTOCOL_VERSION, 0, 0, 0];
        assert_eq!(
            ServerHandshake::on_hello(&secret, &plain).err(),
            Some(AuthError::PeerWithoutSecret)
        );
        assert!(is_handshake(&message(HELLO, &[&[0; 32]])));
        assert!(!is_handshake(&plain));
        assert_eq!(
            ServerHandshake::on_hello(&secret, &[HANDSHAKE_MARKER, HELLO, 1]).err(),
            Some(AuthError::Malformed)
        );
        assert_eq!(format!("{secret:?}"), "ClusterSecret(<masked>)");
    }

    #[tokio::test]
    async fn the_async_handshake_over_a_pipe() {
        let (a, b) = tokio::io::duplex(4096);
        let mut fa = Framed::new(a, super::super::frame::codec());
        let mut fb = Framed::new(b, super::super::frame::codec());
        let secret = ClusterSecret::new("pipe");
        let s2 = secret.clone();
        let serving = tokio::spawn(async move { server(&mut fb, Some(&s2)).await.map(|_| ()) });
        assert!(client(&mut fa, Some(&secret)).await.is_ok());
        assert_eq!(serving.await.expect("join"), Ok(()));
    }
}
