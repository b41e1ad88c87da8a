//! The top-level RPC messages: ring maintenance and registry operations.

use serde::{Deserialize, Serialize};

use crate::ring::{RingRequest, RingResponse};
use crate::Error;

/// A request from one agent to another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Ring maintenance and lookup steps, answered by the ring core.
    Ring(RingRequest),
    /// A registry operation (`crate::registry::ops::RegistryRequest`) encoded as JSON: the
    /// registry's types rely on serde attributes that need a self-describing format.
    Registry(#[serde(with = "blob")] Vec<u8>),
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to `Request::Ring`.
    Ring(RingResponse),
    /// Answer to `Request::Registry`: a JSON-encoded `RegistryResponse` (or a discover
    /// answer's text, see `RawJson::to_rpc`).
    Registry(#[serde(with = "blob")] Vec<u8>),
    /// The request failed at the remote agent; the error arrives as a value.
    Error(Error),
}

/// A `Vec<u8>` as one byte string. In bincode that is the very same bytes as the derived
/// sequence of `u8` (a length, then the bytes), but written and read with one copy instead of
/// one serde call per byte, which was most of the CPU of passing a discover answer (a few
/// KiB) through a non-owner agent.
mod blob {
    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(Blob)
    }

    struct Blob;

    impl<'de> Visitor<'de> for Blob {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            // Formats without byte strings send a sequence; never trust its claimed size.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bincode::Options;

    /// The messages as the previous build derived them: a plain `Vec<u8>`.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum OldRequest {
        Ring(RingRequest),
        Registry(Vec<u8>),
    }

    #[test]
    fn registry_bytes_keep_the_wire_format_of_a_plain_vec() {
        let opts = bincode::DefaultOptions::new();
        let body: Vec<u8> = (0..=255).cycle().take(5000).collect();
        let new = opts.serialize(&Request::Registry(body.clone())).unwrap();
        let old = opts.serialize(&OldRequest::Registry(body.clone())).unwrap();
        assert_eq!(new, old, "same bytes on the wire as before");
        assert_eq!(
            opts.deserialize::<Request>(&old).unwrap(),
            Request::Registry(body.clone())
        );
        assert_eq!(
            opts.deserialize::<OldRequest>(&new).unwrap(),
            OldRequest::Registry(body)
        );
        // Self-describing formats still work (a sequence of numbers in JSON).
        let answer = Response::Registry(vec![1, 2, 3]);
        let json = serde_json::to_string(&answer).unwrap();
        assert_eq!(serde_json::from_str::<Response>(&json).unwrap(), answer);
    }
}
