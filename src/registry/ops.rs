//! Registry operations as they travel between agents (inside `rpc::Request::Registry`, as JSON).

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::health::Policy;
use super::model::{Instance, Record, RegisterBody, ServiceSummary, StatusBody};
use super::unit::Mark;
use crate::ring::Id;

/// The store key of a gVip claim.
pub fn gvip_key(gvip: &str) -> String {
    format!("gvip/{gvip}")
}

/// The ring identifier that decides which node owns a stored entry: SHA-1 of the service name
/// for a service's units and meta entry (and a 0.1.0 record), of `gvip:ADDRESS` for gVip claims
/// (`:` never occurs in a service name).
pub fn routing_id(store_key: &str) -> Option<Id> {
    match super::unit::service_id_of_key(store_key) {
        Some(id) => Some(id),
        None => store_key.strip_prefix("gvip/").map(gvip_id),
    }
}

/// The prefixes of every key the registry stores: units, service meta entries, gVip claims.
pub const STORED_PREFIXES: [&str; 3] = ["u/", "s/", "gvip/"];

/// The ring identifier of a gVip claim: SHA-1 of `gvip:ADDRESS`.
pub fn gvip_id(gvip: &str) -> Id {
    Id::of_key(&format!("gvip:{gvip}"))
}

/// A stored entry as it moves between nodes (join, leave, replication).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The store key (`u/SERVICE/ID`, `s/SERVICE` or `gvip/ADDRESS`).
    pub key: String,
    /// The stored bytes (a unit, a meta entry, or the claiming service's name).
    #[serde(with = "crate::rpc::messages::blob")]
    pub value: Vec<u8>,
}

/// A write to one service's record, applied by its owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WriteOp {
    /// Register or replace an instance.
    Register {
        /// Instance id.
        id: String,
        /// The registration. Shared: routing keeps the request while the owner's write takes
        /// its operation, and a copy of a registration would copy its address, tags and
        /// metadata (the wire format is the body's own).
        body: Arc<RegisterBody>,
    },
    /// Remove an instance.
    Deregister {
        /// Instance id.
        id: String,
    },
    /// A status report (also the TTL heartbeat).
    Report {
        /// Instance id.
        id: String,
        /// The reported fields (every field written, present or not: the wire format is not
        /// self-describing).
        #[serde(with = "status_wire")]
        body: StatusBody,
    },
    /// The prototype's register: the `lSip` instance, port 0.
    LsipRegister {
        /// The instance address and id.
        lsip: String,
    },
    /// The prototype's registercancel.
    LsipCancel {
        /// The instance address and id.
        lsip: String,
    },
    /// Set the service's health policy (creating the service's record when it has none).
    SetPolicy {
        /// The policy, already checked.
        policy: Policy,
    },
}

/// [`StatusBody`] between agents: all six fields in order, `None` included.
mod status_wire {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::registry::{State, StatusBody};

    type Fields = (
        Option<State>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<String>,
    );

    pub fn serialize<S: Serializer>(b: &StatusBody, s: S) -> Result<S::Ok, S::Error> {
        (
            b.state,
            b.load,
            b.success_rate,
            b.latency_ms,
            b.frequency,
            &b.note,
        )
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<StatusBody, D::Error> {
        let (state, load, success_rate, latency_ms, frequency, note): Fields =
            Deserialize::deserialize(d)?;
        Ok(StatusBody {
            state,
            load,
            success_rate,
            latency_ms,
            frequency,
            note,
        })
    }
}

/// A request between agents about records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RegistryRequest {
    /// Apply a write at the owner.
    Write {
        /// The service.
        service: String,
        /// The write.
        op: WriteOp,
    },
    /// Read a record at the owner.
    Read {
        /// The service.
        service: String,
    },
    /// The summaries of the records this node owns.
    ListOwned,
    /// A joining node takes, from its successor, the entries it now owns, one page at a time:
    /// the successor snapshots the range when `from` is 0 and answers a [`RegistryResponse::Page`]
    /// of at most `TRANSFER_CHUNK` entries and `TRANSFER_BYTES` bytes from entry `from` on.
    TakeRange {
        /// The joining node's identifier.
        joiner: Id,
        /// The first entry wanted (0 starts a new snapshot).
        from: u64,
    },
    /// The entries stored under these keys (anti-entropy pulling what a replica holds
    /// newer). The answer holds a prefix of them that fits one transfer message; the caller
    /// asks again for the rest.
    Fetch {
        /// Store keys.
        keys: Vec<String>,
    },
    /// Store these entries (leave hand-off, pushes after a range change); newer versions win.
    Handoff {
        /// The entries.
        entries: Vec<Entry>,
    },
    /// Claim a gVip for a service at the claim's owner: granted if free or already that
    /// service's.
    ClaimGvip {
        /// The address.
        gvip: String,
        /// The claiming service.
        service: String,
    },
    /// Which service holds this gVip?
    ResolveGvip {
        /// The address.
        gvip: String,
    },
    /// Read this node's copy of a record, owner or replica (reads fall back to replicas when
    /// the owner does not answer).
    ReadReplica {
        /// The service.
        service: String,
    },
    /// Anti-entropy, first step: a hash over the versions of every entry in the key range
    /// `(from, to]`; the replica answers whether its own hash over that range is the same.
    RangeHash {
        /// Range start (exclusive).
        from: Id,
        /// Range end (inclusive).
        to: Id,
        /// Hex SHA-1 over the sorted (key, version) lines, see `range_hash`.
        hash: String,
    },
    /// Discover at the owner: the instances of `service` (filtered) as the JSON answer of
    /// `GET /v1/services/{service}`, which the asking agent passes on without decoding it.
    Discover {
        /// The service.
        service: String,
        /// Only healthy instances.
        healthy: bool,
        /// Only instances with this tag.
        tag: Option<String>,
    },
    /// Anti-entropy: the versions the owner holds; the replica answers which keys it lacks or
    /// holds older, and, when a range is given, the entries of that range the owner lacks or
    /// holds older (the owner may have just inherited the range from a crashed node).
    Digest {
        /// (store key, version); meta entries and gVip claims carry version zero.
        items: Vec<(String, Mark)>,
        /// The owner's key range `(from, to]`, when it knows its predecessor.
        range: Option<(Id, Id)>,
        /// The store keys this digest covers, `[lo, hi)` (`hi` `None`: no upper bound): a
        /// big range is compared in several digests, each of a bounded size.
        span: (String, Option<String>),
    },
    /// Follow these services (owned by the node asked): answered as soon as any of them has
    /// changed after the follower's index, or after `wait_ms` (nothing new). One request per
    /// follower and owner at a time: a newer `generation` from the same `follower` ends the
    /// older one at once.
    Watch {
        /// The following node.
        follower: Id,
        /// Grows with every new request of that follower to this owner.
        generation: u64,
        /// The services, with the index the follower holds of each.
        items: Vec<crate::registry::watch::WatchItem>,
        /// How long to wait for a change, at most.
        wait_ms: u64,
    },
    /// The service's health policy, at the owner.
    Policy {
        /// The service.
        service: String,
    },
    /// Anti-entropy as a hash tree ([`crate::registry::merkle`]): the replica's hashes of
    /// these nodes' children, over what it holds in the owner's range `(from, to]`.
    /// (Appended last, so that older agents' variants keep their encoding; an older replica
    /// fails to decode it and the owner falls back to `RangeHash` and `Digest`.)
    TreeChildren {
        /// Range start (exclusive).
        from: Id,
        /// Range end (inclusive).
        to: Id,
        /// The nodes, all of one level.
        nodes: Vec<crate::registry::merkle::Node>,
    },
    /// A `Digest` of the owner's items under these tree nodes only, in its range `(from, to]`.
    TreeDigest {
        /// (store key, version) of the owner's items under `nodes`.
        items: Vec<(String, Mark)>,
        /// Range start (exclusive).
        from: Id,
        /// Range end (inclusive).
        to: Id,
        /// The nodes the walk found different.
        nodes: Vec<crate::registry::merkle::Node>,
    },
    /// The summaries of the records this node holds in the range `(from, to]`, owned or not:
    /// `svc list` asks a node's successor for the node's range when the node cannot answer
    /// (it is still taking its range over after a join, or it does not answer at all).
    ListRange {
        /// Range start (exclusive).
        from: Id,
        /// Range end (inclusive).
        to: Id,
    },
}

/// The answer to a [`RegistryRequest`].
// Answers live only as long as one call; boxing the record would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RegistryResponse {
    /// A write was applied: the instance it touched, and the prototype's reply text where the
    /// operation has one. (Not the whole record: a forwarded write would carry every instance
    /// of the service back over the ring for nothing.)
    Applied {
        /// The instance registered, reported on, or removed (shared with the stored record:
        /// answering does not copy it).
        instance: Option<Arc<Instance>>,
        /// The prototype's reply text.
        text: Option<String>,
        /// The service's change index after the write.
        index: u64,
    },
    /// A record, if it exists.
    Record(Option<Record>),
    /// Record summaries.
    Summaries(Vec<ServiceSummary>),
    /// Entries.
    Entries(Vec<Entry>),
    /// Whether a claim was granted.
    Claimed(bool),
    /// The difference found by a `Digest`.
    Diff {
        /// Keys the replica needs (missing, or older than the owner's).
        need: Vec<String>,
        /// Keys of the owner's range that the replica holds newer or the owner lacks (the
        /// owner fetches them with `Fetch`).
        newer: Vec<String>,
    },
    /// One page of a `TakeRange` transfer.
    Page {
        /// The entries.
        entries: Vec<Entry>,
        /// Entries in the whole transfer.
        total: u64,
        /// Where the next page starts; `None` after the last.
        next: Option<u64>,
    },
    /// Whether the replica's range hash matched.
    Same(bool),
    /// The service holding a gVip.
    Service(Option<String>),
    /// A JSON answer to pass on as it is (see [`RegistryRequest::Discover`]), with the
    /// service's change index.
    Json {
        /// The answer.
        json: RawJson,
        /// The service's change index (`X-Chordctl-Index`).
        index: u64,
    },
    /// What changed in the services a `Watch` asked about (only those with news, or every
    /// one when asked for snapshots; none when the wait ended quietly).
    Watched(Vec<crate::registry::watch::WatchAnswer>),
    /// Done.
    Done,
    /// A service's health policy (`None`: no such service).
    Policy(Option<Policy>),
    /// A healthy-only discover answer of a service in panic (API.md, "Health beyond a
    /// state"): as `Json`, holding every instance; answered with `X-Chordctl-Panic: true`.
    /// (A variant of its own rather than a field of `Json`, so that the usual answer keeps
    /// its encoding.)
    PanicJson {
        /// The answer.
        json: RawJson,
        /// The service's change index.
        index: u64,
    },
    /// The children's hashes of the nodes a `TreeChildren` asked for, in order.
    TreeChildren(Vec<[u64; crate::registry::merkle::FANOUT]>),
}

/// JSON text made by one agent and passed through another untouched: over ring RPC it travels
/// as a byte string, neither escaped, nor parsed, nor copied into values on the way; in a
/// JSON-encoded answer it is embedded as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawJson(Bytes);

impl RawJson {
    /// JSON text this agent made (trusted to be JSON).
    pub fn from_trusted(json: Bytes) -> Self {
        RawJson(json)
    }

    /// Length of the text in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the text is empty (never, for an answer made by an agent).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The JSON text, for an HTTP body.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

/// In JSON the text is embedded as it is; in the RPC frame (postcard) it is a byte string,
/// passed on without being parsed (checked to be UTF-8 when received).
impl Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            return s.serialize_bytes(&self.0);
        }
        let text = std::str::from_utf8(&self.0).map_err(serde::ser::Error::custom)?;
        let raw = serde_json::value::RawValue::from_string(text.to_string())
            .map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        if !d.is_human_readable() {
            let bytes = crate::rpc::messages::blob::deserialize(d)?;
            std::str::from_utf8(&bytes).map_err(|e| {
                serde::de::Error::custom(format!("a discover answer that is not UTF-8: {e}"))
            })?;
            return Ok(RawJson(Bytes::from(bytes)));
        }
        let raw = Box::<serde_json::value::RawValue>::deserialize(d)?;
        Ok(RawJson(Bytes::from(Box::<str>::from(raw).into_string())))
    }
}

/// `record`'s instances that pass the filters, as the discover answer's JSON.
pub fn discovered_json(record: &Record, healthy: bool, tag: Option<&str>) -> RawJson {
    discovered(record, healthy, tag).0
}

/// [`discovered_json`], and whether the service is in panic for this query.
pub fn discovered(record: &Record, healthy: bool, tag: Option<&str>) -> (RawJson, bool) {
    let (instances, panic) = super::discover_with_panic(record, healthy, tag);
    let json = super::json::discover_answer(&record.service, &instances, panic);
    (RawJson(Bytes::from(json)), panic)
}

impl RegistryResponse {
    /// The answer to a `Discover` of `record`: `Json`, or `PanicJson` in panic.
    pub fn discover_answer(record: &Record, healthy: bool, tag: Option<&str>) -> Self {
        let (json, panic) = discovered(record, healthy, tag);
        let index = record.index;
        if panic {
            RegistryResponse::PanicJson { json, index }
        } else {
            RegistryResponse::Json { json, index }
        }
    }
}

/// The anti-entropy digest of a range: SHA-1 over `key version` lines, sorted by key.
/// Two nodes holding the same versions of the same entries compute the same hash.
pub fn range_hash(items: &[(String, Mark)]) -> String {
    use sha1::{Digest, Sha1};
    let mut sorted: Vec<&(String, Mark)> = items.iter().collect();
    sorted.sort();
    let mut h = Sha1::new();
    for (k, v) in sorted {
        h.update(format!("{k} {v}\n").as_bytes());
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registration is shared (`Arc`) inside the operation, but goes over the ring exactly
    /// as before: the variant, the id, then the body's own encoding.
    #[test]
    fn a_shared_registration_goes_over_the_wire_as_the_body_itself() {
        let body = RegisterBody::new("10.0.0.7", 8080);
        let op = WriteOp::Register {
            id: "a".to_string(),
            body: Arc::new(body.clone()),
        };
        let mut want = vec![0u8];
        want.extend(postcard::to_stdvec("a").unwrap());
        want.extend(postcard::to_stdvec(&body).unwrap());
        assert_eq!(postcard::to_stdvec(&op).unwrap(), want);
        let back: WriteOp = postcard::from_bytes(&want).unwrap();
        assert_eq!(back, op);
    }

    #[test]
    fn raw_json_travels_over_rpc_as_its_text() {
        let json =
            RawJson::from_trusted(Bytes::from_static(br#"{"service":"pay","instances":[]}"#));
        let answer = RegistryResponse::Json {
            json: json.clone(),
            index: 42,
        };
        let wire = postcard::to_allocvec(&answer).unwrap();
        let text = br#"{"service":"pay","instances":[]}"#;
        assert!(
            wire.windows(text.len()).any(|w| w == text),
            "the text itself is on the wire"
        );
        assert_eq!(
            postcard::from_bytes::<RegistryResponse>(&wire).unwrap(),
            answer
        );
        // Bytes that are not UTF-8 are refused when received.
        let bad = RegistryResponse::Json {
            json: RawJson::from_trusted(Bytes::from_static(&[0xff, 0xfe])),
            index: 1,
        };
        let wire = postcard::to_allocvec(&bad).unwrap();
        assert!(postcard::from_bytes::<RegistryResponse>(&wire).is_err());
    }

    #[test]
    fn a_status_report_travels_with_every_field() {
        let op = WriteOp::Report {
            id: "a".into(),
            body: StatusBody {
                latency_ms: Some(3.5),
                note: Some("slow".into()),
                ..StatusBody::default()
            },
        };
        let wire = postcard::to_allocvec(&op).unwrap();
        assert_eq!(postcard::from_bytes::<WriteOp>(&wire).unwrap(), op);
    }

    #[test]
    fn raw_json_embeds_as_it_is_in_a_json_answer() {
        let json = RawJson::from_trusted(Bytes::from_static(br#"{"a":[1,2]}"#));
        let answer = RegistryResponse::Json { json, index: 3 };
        let text = serde_json::to_string(&answer).unwrap();
        assert_eq!(text, r#"{"Json":{"json":{"a":[1,2]},"index":3}}"#);
        assert_eq!(
            serde_json::from_str::<RegistryResponse>(&text).unwrap(),
            answer
        );
    }

    #[test]
    fn range_hash_ignores_order_and_sees_any_version_change() {
        let v = |wall_ms, node| Mark {
            version: crate::registry::hlc::Hlc {
                wall_ms,
                logical: 0,
                node,
            },
            content: 7,
        };
        let a = vec![
            ("u/a/x".to_string(), v(3, 1)),
            ("u/b/y".to_string(), v(1, 2)),
        ];
        let mut b = a.clone();
        b.reverse();
        assert_eq!(range_hash(&a), range_hash(&b));
        let mut c = a.clone();
        c[1].1.version.logical = 2;
        assert_ne!(range_hash(&a), range_hash(&c));
        let mut d = a.clone();
        d[0].1.content = 8;
        assert_ne!(
            range_hash(&a),
            range_hash(&d),
            "same versions, another content"
        );
        assert_ne!(range_hash(&a), range_hash(&a[..1]));
    }

    #[test]
    fn routing_ids_of_records_and_gvip_claims_differ() {
        assert_eq!(routing_id("svc/pay"), Some(Id::of_key("pay")));
        assert_eq!(routing_id("u/pay/10.0.0.1:80"), Some(Id::of_key("pay")));
        assert_eq!(routing_id("s/pay"), Some(Id::of_key("pay")));
        assert_eq!(
            routing_id("gvip/10.212.0.2"),
            Some(Id::of_key("gvip:10.212.0.2"))
        );
        assert_eq!(routing_id("other/x"), None);
    }
}
