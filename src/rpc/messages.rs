//! The top-level RPC messages: ring maintenance and registry operations, typed end to end.

use serde::{Deserialize, Serialize};

use crate::registry::ops::{RegistryRequest, RegistryResponse};
use crate::ring::{RingRequest, RingResponse};
use crate::Error;

/// A request from one agent to another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Ring maintenance and lookup steps, answered by the ring core.
    Ring(RingRequest),
    /// A registry operation, answered by the registry.
    Registry(RegistryRequest),
}

/// The answer to a [`Request`].
// Answers live only as long as one call; boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to `Request::Ring`.
    Ring(RingResponse),
    /// Answer to `Request::Registry`.
    Registry(RegistryResponse),
    /// The request failed at the remote agent; the error arrives as a value.
    Error(Error),
}

/// A `Vec<u8>` as one byte string: the same bytes as the derived sequence of `u8` in postcard
/// (a length, then the bytes), but written and read with one copy instead of one serde call per
/// byte. Self-describing formats (JSON) get a sequence of numbers, as before.
pub mod blob {
    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    /// Serialize `v` as one byte string.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_seq(v)
        } else {
            s.serialize_bytes(v)
        }
    }

    /// Deserialize a byte string (or a sequence of bytes).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() {
            d.deserialize_seq(Blob)
        } else {
            d.deserialize_byte_buf(Blob)
        }
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
            // Never trust a sequence's claimed size.
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
    use crate::registry::ops::Entry;

    /// An entry as the derive would write it: a plain `Vec<u8>`.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct PlainEntry {
        key: String,
        value: Vec<u8>,
    }

    #[test]
    fn byte_strings_keep_the_wire_format_of_a_plain_vec() {
        let value: Vec<u8> = (0..=255).cycle().take(5000).collect();
        let entry = Entry {
            key: "u/a/b".into(),
            value: value.clone(),
        };
        let plain = PlainEntry {
            key: "u/a/b".into(),
            value,
        };
        let new = postcard::to_allocvec(&entry).unwrap();
        assert_eq!(new, postcard::to_allocvec(&plain).unwrap(), "same bytes");
        assert_eq!(postcard::from_bytes::<Entry>(&new).unwrap(), entry);
        // Self-describing formats still work (a sequence of numbers in JSON).
        let json = serde_json::to_string(&entry).unwrap();
        assert_eq!(serde_json::from_str::<Entry>(&json).unwrap(), entry);
    }

    #[test]
    fn registry_messages_travel_typed() {
        let req = Request::Registry(RegistryRequest::Read {
            service: "pay".into(),
        });
        let bytes = postcard::to_allocvec(&req).unwrap();
        assert_eq!(postcard::from_bytes::<Request>(&bytes).unwrap(), req);
        let answer = Response::Error(Error::not_found("service pay not found"));
        let bytes = postcard::to_allocvec(&answer).unwrap();
        assert_eq!(postcard::from_bytes::<Response>(&bytes).unwrap(), answer);
    }
}
