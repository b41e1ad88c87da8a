//! Framing: every message travels as `u32 length | u8 version | postcard(Envelope)`.
//!
//! The length prefix is checked against [`MAX_FRAME`] (the codec refuses longer frames) and is
//! not trusted with memory: the read buffer grows with the bytes that arrive, at most
//! [`READ_RESERVE`] ahead of them ([`FrameCodec`]). Postcard decodes from the frame's bytes: a
//! length inside the body is checked against the bytes that are actually there before anything
//! of that length is allocated (sequences grow as their elements arrive), so a peer cannot make
//! us allocate more than it sent.
//!
//! With `--cluster-secret`, a connection starts with the handshake of [`super::auth`] and every
//! frame then ends with a 32-byte HMAC tag: `u32 length | u8 version | postcard(Envelope) | tag`
//! ([`encode_sealed`], [`decode_opened`]). Both sides must agree on having a secret.

use bytes::{BufMut, Bytes, BytesMut};
use futures::{Sink, SinkExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use super::auth::{AuthError, Opener, Sealer};

/// The protocol version this build speaks; a frame with another version is refused.
/// (1: 0.1.0, bincode with JSON registry messages; 2: postcard, typed registry messages.)
pub const PROTOCOL_VERSION: u8 = 2;

/// The largest frame accepted or sent (16 MiB: a whole key range of records in a transfer).
pub const MAX_FRAME: usize = 16 << 20;

/// A request or response with the id that pairs them on a multiplexed connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Chosen by the caller, echoed by the answer.
    pub id: u64,
    /// The message.
    pub body: T,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// An empty frame (no version byte).
    #[error("empty frame")]
    Empty,
    /// A version this build does not speak.
    #[error("protocol version {0} (this agent speaks {PROTOCOL_VERSION})")]
    Version(u8),
    /// The body is not a valid message.
    #[error("undecodable message: {0}")]
    Decode(String),
    /// The message's id reads, the rest does not: most likely a message of a newer agent (a
    /// request this build does not know). The server answers it with an error rather than
    /// dropping the connection and every other call on it.
    #[error("unreadable message {id}: {why}")]
    Unreadable {
        /// The envelope's id, for the answer.
        id: u64,
        /// What did not decode.
        why: String,
    },
    /// The frame's authentication tag did not verify.
    #[error("{0}")]
    Auth(#[from] AuthError),
}

/// Bytes of the length prefix.
const HEAD: usize = 4;

/// The most the read buffer grows by ahead of the bytes that arrived. A length prefix is only
/// a claim: the buffer grows with what the peer actually sends (doubling as it reads), so a
/// peer that announces [`MAX_FRAME`] and sends nothing costs this much, not 16 MiB.
pub const READ_RESERVE: usize = 64 << 10;

/// The codec of every ring RPC connection (both sides).
pub fn codec() -> FrameCodec {
    FrameCodec {
        inner: LengthDelimitedCodec::builder()
            .length_field_length(HEAD)
            .max_frame_length(MAX_FRAME)
            .new_codec(),
        max: MAX_FRAME,
    }
}

/// tokio-util's length-delimited codec (4-byte big-endian length prefix), except that it does
/// not reserve a frame's announced length when the prefix arrives (tokio-util's does, up to the
/// frame limit): until the whole frame is there, the buffer grows by at most [`READ_RESERVE`]
/// at a time, so a connection's memory follows the bytes received.
#[derive(Debug)]
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
    /// The inner codec's frame limit, which it does not expose.
    max: usize,
}

impl FrameCodec {
    /// Change the largest frame accepted (the handshake lowers it until the peer proves itself).
    pub fn set_max_frame_length(&mut self, max: usize) {
        self.inner.set_max_frame_length(max);
        self.max = max;
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> std::io::Result<Option<BytesMut>> {
        if let Some(&[a, b, c, d]) = src.get(..HEAD) {
            let len = usize::try_from(u32::from_be_bytes([a, b, c, d])).unwrap_or(usize::MAX);
            let whole = len.saturating_add(HEAD);
            // A frame over the limit goes to the inner codec, which refuses it; a frame that
            // is all here too (it then reserves nothing more than the next prefix).
            if len <= self.max && src.len() < whole {
                src.reserve((whole - src.len()).min(READ_RESERVE));
                return Ok(None);
            }
        }
        self.inner.decode(src)
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = std::io::Error;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> std::io::Result<()> {
        self.inner.encode(frame, dst)
    }
}

/// Most frames written with one flush.
const MAX_BATCH: usize = 64;

/// Bytes a connection buffers before it must write them out; big enough for a batch of
/// discover answers (a few KiB each) to leave in one write system call.
pub const WRITE_BUFFER: usize = 64 << 10;

/// Write `first` and the envelopes already queued behind it (up to a batch), sealed in order,
/// then flush once: concurrent calls on one pooled connection share write system calls
/// instead of paying one each. An envelope that cannot be encoded is logged and skipped.
pub async fn write_queued<T, S>(
    sink: &mut S,
    queue: &mut mpsc::Receiver<Envelope<T>>,
    first: Envelope<T>,
    sealer: &mut Sealer,
) -> Result<(), S::Error>
where
    T: Serialize,
    S: Sink<Bytes> + Unpin,
{
    let mut next = Some(first);
    let mut written = 0;
    let mut yielded = false;
    while let Some(env) = next.take() {
        feed(sink, &env, sealer).await?;
        written += 1;
        if written < MAX_BATCH {
            next = queue.try_recv().ok();
            if next.is_none() && !yielded {
                // Let the tasks that are ready to run queue their frames first: under load
                // they are the other calls of the same burst, which then share this write.
                yielded = true;
                tokio::task::yield_now().await;
                next = queue.try_recv().ok();
            }
        }
    }
    sink.flush().await
}

/// Seal `env` and queue it on `sink` without flushing. An envelope that cannot be encoded is
/// logged and skipped (only a write error is an error).
pub async fn feed<T, S>(
    sink: &mut S,
    env: &Envelope<T>,
    sealer: &mut Sealer,
) -> Result<(), S::Error>
where
    T: Serialize,
    S: Sink<Bytes> + Unpin,
{
    match encode_sealed(env, sealer) {
        Ok(bytes) => sink.feed(bytes).await,
        Err(e) => {
            tracing::error!("cannot encode an RPC message: {e}");
            Ok(())
        }
    }
}

/// Encode one envelope as a frame body (version byte + postcard).
pub fn encode<T: Serialize>(env: &Envelope<T>) -> Result<Bytes, FrameError> {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_u8(PROTOCOL_VERSION);
    let buf = postcard::serialize_with_flavor(env, BytesFlavor(buf))
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    if buf.len() > MAX_FRAME {
        return Err(FrameError::Decode(format!(
            "a message of {} bytes is over the {} MiB frame limit",
            buf.len(),
            MAX_FRAME >> 20
        )));
    }
    Ok(buf.freeze())
}

/// `BytesMut` as postcard's output: byte strings are copied in one piece.
struct BytesFlavor(BytesMut);

impl postcard::ser_flavors::Flavor for BytesFlavor {
    type Output = BytesMut;

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.put_u8(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<BytesMut> {
        Ok(self.0)
    }
}

/// Decode one frame body into an envelope.
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<Envelope<T>, FrameError> {
    let (&version, body) = frame.split_first().ok_or(FrameError::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(FrameError::Version(version));
    }
    match postcard::take_from_bytes(body) {
        Ok((env, [])) => Ok(env),
        Ok((_, rest)) => Err(FrameError::Decode(format!(
            "{} bytes after the message",
            rest.len()
        ))),
        Err(e) => match postcard::take_from_bytes::<u64>(body) {
            Ok((id, rest)) if !rest.is_empty() => Err(FrameError::Unreadable {
                id,
                why: e.to_string(),
            }),
            _ => Err(FrameError::Decode(e.to_string())),
        },
    }
}

/// Encode one envelope and authenticate it for this connection (see [`super::auth`]).
pub fn encode_sealed<T: Serialize>(
    env: &Envelope<T>,
    sealer: &mut Sealer,
) -> Result<Bytes, FrameError> {
    Ok(sealer.seal(encode(env)?))
}

/// Check a received frame's tag for this connection, then decode it.
pub fn decode_opened<T: DeserializeOwned>(
    frame: &[u8],
    opener: &mut Opener,
) -> Result<Envelope<T>, FrameError> {
    decode(opener.open(frame)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::RingRequest;
    use crate::rpc::messages::Request;

    #[test]
    fn round_trip_keeps_id_and_body() {
        let env = Envelope {
            id: 42,
            body: Request::Ring(RingRequest::Ping),
        };
        let bytes = encode(&env).expect("encode");
        assert_eq!(bytes[0], PROTOCOL_VERSION);
        assert_eq!(decode::<Request>(&bytes).expect("decode"), env);
    }

    #[test]
    fn wrong_version_empty_and_garbage_are_errors_not_panics() {
        assert_eq!(decode::<Request>(&[]), Err(FrameError::Empty));
        assert_eq!(decode::<Request>(&[9, 0, 0]), Err(FrameError::Version(9)));
        assert!(matches!(
            decode::<Request>(&[PROTOCOL_VERSION, 0xff, 0xff, 0xff]),
            Err(FrameError::Decode(_))
        ));
    }

    /// A request this build does not know (a variant past the last) still gives its id, so
    /// that it can be answered.
    #[test]
    fn an_unknown_request_gives_its_id() {
        let mut frame = vec![PROTOCOL_VERSION];
        frame.extend_from_slice(&postcard::to_allocvec(&300u64).expect("varint"));
        frame.extend_from_slice(&[0x7f, 1, 2, 3]);
        assert!(matches!(
            decode::<Request>(&frame),
            Err(FrameError::Unreadable { id: 300, .. })
        ));
    }

    #[test]
    fn a_huge_length_inside_the_body_does_not_allocate_it() {
        // A vector claiming 2^60 elements in a 12-byte frame must fail fast.
        let mut frame = vec![PROTOCOL_VERSION, 1];
        frame.extend_from_slice(&postcard::to_allocvec(&(1u64 << 60)).expect("varint"));
        frame.extend_from_slice(&[1, 2, 3]);
        assert!(decode::<Vec<u8>>(&frame).is_err());
        assert!(decode::<Vec<String>>(&frame).is_err());
    }

    /// A peer without a secret sends a prefix announcing a frame of the largest size, then
    /// nothing: the buffer grows by at most READ_RESERVE, not by the announced 16 MiB
    /// (tokio-util's codec reserves the announced length at once).
    #[test]
    fn a_length_prefix_alone_does_not_reserve_the_frame() {
        let mut codec = codec();
        let mut buf = BytesMut::new();
        buf.put_u32(u32::try_from(MAX_FRAME).expect("fits u32"));
        assert_eq!(codec.decode(&mut buf).expect("a valid prefix"), None);
        assert!(
            buf.capacity() <= 2 * (HEAD + READ_RESERVE),
            "{} bytes reserved for a 4-byte prefix",
            buf.capacity()
        );
        // Still a frame too long is refused.
        let mut buf = BytesMut::new();
        buf.put_u32(u32::try_from(MAX_FRAME + 1).expect("fits u32"));
        assert!(codec.decode(&mut buf).is_err());
    }

    /// Through the connection's reader: the read buffer follows the bytes received while a
    /// frame of the largest size arrives, and the frame is delivered whole.
    #[tokio::test]
    async fn the_read_buffer_grows_with_the_bytes_received() {
        use futures::{FutureExt, StreamExt};
        use tokio::io::AsyncWriteExt;
        use tokio_util::codec::FramedRead;

        let first = 1 << 20;
        let (mut tx, rx) = tokio::io::duplex(2 * first);
        let mut reader = FramedRead::new(rx, codec());
        let body: Vec<u8> = (0..MAX_FRAME).map(|i| (i % 251) as u8).collect();
        tx.write_all(&u32::try_from(MAX_FRAME).expect("fits u32").to_be_bytes())
            .await
            .expect("write the prefix");
        tx.write_all(&body[..first]).await.expect("write 1 MiB");
        // Everything written is read, and no frame is complete yet.
        assert!(reader.next().now_or_never().is_none());
        let received = reader.read_buffer().len();
        assert_eq!(received, HEAD + first);
        assert!(
            reader.read_buffer().capacity() <= 2 * received + READ_RESERVE,
            "{} bytes reserved after {received} received",
            reader.read_buffer().capacity()
        );
        let rest = body[first..].to_vec();
        let writer = tokio::spawn(async move { tx.write_all(&rest).await });
        let frame = tokio::time::timeout(std::time::Duration::from_secs(30), reader.next())
            .await
            .expect("the frame arrives")
            .expect("a frame")
            .expect("a valid frame");
        assert_eq!(frame.len(), MAX_FRAME);
        assert!(frame[..] == body[..], "the frame arrives intact");
        writer.await.expect("writer task").expect("write the rest");
    }

    #[test]
    fn bytes_after_the_message_are_refused() {
        let env = Envelope {
            id: 7,
            body: Request::Ring(RingRequest::Ping),
        };
        let mut bytes = encode(&env).expect("encode").to_vec();
        bytes.push(0);
        assert!(matches!(
            decode::<Request>(&bytes),
            Err(FrameError::Decode(_))
        ));
    }
}
