//! Framing: every message travels as `u32 length | u8 version | postcard(Envelope)`.
//!
//! The length prefix is checked against [`MAX_FRAME`] before anything is allocated (the codec
//! refuses longer frames), and postcard decodes from the frame's bytes: a length inside the
//! body is checked against the bytes that are actually there before anything of that length is
//! allocated (sequences grow as their elements arrive), so a peer cannot make us allocate more
//! than it sent.
//!
//! With `--cluster-secret`, a connection starts with the handshake of [`super::auth`] and every
//! frame then ends with a 32-byte HMAC tag: `u32 length | u8 version | postcard(Envelope) | tag`
//! ([`encode_sealed`], [`decode_opened`]). Both sides must agree on having a secret.

use bytes::{BufMut, Bytes, BytesMut};
use futures::{Sink, SinkExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::codec::LengthDelimitedCodec;

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
    /// The frame's authentication tag did not verify.
    #[error("{0}")]
    Auth(#[from] AuthError),
}

/// The length-delimited codec with our limits: 4-byte big-endian length prefix.
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(MAX_FRAME)
        .new_codec()
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
        Err(e) => Err(FrameError::Decode(e.to_string())),
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

    #[test]
    fn a_huge_length_inside_the_body_does_not_allocate_it() {
        // A vector claiming 2^60 elements in a 12-byte frame must fail fast.
        let mut frame = vec![PROTOCOL_VERSION, 1];
        frame.extend_from_slice(&postcard::to_allocvec(&(1u64 << 60)).expect("varint"));
        frame.extend_from_slice(&[1, 2, 3]);
        assert!(decode::<Vec<u8>>(&frame).is_err());
        assert!(decode::<Vec<String>>(&frame).is_err());
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
