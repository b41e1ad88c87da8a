//! How a [`Record`] is kept in the store and passed between nodes: a compact binary form.
//!
//! Every registration at an owner stores the service's whole record (all its instances), so the
//! encoding is on the hot path of a write. JSON cost most of a register's CPU (timestamps
//! formatted as text, strings escaped) and made a 10-instance record 4 KiB, two store pages.
//! The binary form is a one-byte tag, a format number, then bincode (variable-length integers)
//! of the mirror structs below: timestamps as seconds and nanoseconds, the service name once
//! instead of once per instance, strings and maps borrowed while encoding. A 10-instance record
//! takes about a quarter of the JSON's bytes.
//!
//! Decoding accepts both forms: records written as JSON by earlier versions of the agent (in a
//! data directory, a Redis database, or sent by an older peer) still read, and are written back
//! in the binary form the next time they change.
//!
//! The mirror structs are the format: changing a field's type or order (or the order of
//! [`State`]'s variants, which bincode writes as their index) needs a new format number.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use bincode::Options;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::model::{Instance, Liveness, Record, State, Status, Version};
use crate::{Error, Result};

/// First byte of a binary record. A JSON record starts with `{`, so the two never mix up.
const TAG: u8 = 0xB1;
/// The layout of the mirror structs below.
const FORMAT: u8 = 1;
/// The most bytes a record may decode from (a bound on what corrupt input can allocate).
const MAX_RECORD_BYTES: u64 = 64 * 1024 * 1024;

fn options() -> impl Options {
    bincode::DefaultOptions::new().with_limit(MAX_RECORD_BYTES)
}

/// A point in time as (seconds, nanoseconds) since the Unix epoch.
type Ts = (i64, u32);

fn ts(t: &DateTime<Utc>) -> Ts {
    (t.timestamp(), t.timestamp_subsec_nanos())
}

fn from_ts((secs, nanos): Ts) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp(secs, nanos)
        .ok_or_else(|| Error::internal(format!("corrupt service record: bad time {secs}.{nanos}")))
}

/// An instance's liveness: (id, last seen, the state and note TTL expiry overwrote).
type StoredLiveness<'a> = (Cow<'a, str>, Ts, Option<(State, Cow<'a, str>)>);

#[derive(Serialize, Deserialize)]
struct StoredRecord<'a> {
    service: Cow<'a, str>,
    counter: u64,
    node: Cow<'a, str>,
    gvip: Option<Cow<'a, str>>,
    instances: Vec<StoredInstance<'a>>,
    liveness: Vec<StoredLiveness<'a>>,
    removed: Vec<(Cow<'a, str>, Ts)>,
}

#[derive(Serialize, Deserialize)]
struct StoredInstance<'a> {
    id: Cow<'a, str>,
    address: Cow<'a, str>,
    port: u16,
    tags: Cow<'a, [String]>,
    metadata: Cow<'a, BTreeMap<String, String>>,
    weight: u32,
    ttl_secs: Option<u64>,
    registered_at: Ts,
    state: State,
    load: f64,
    success_rate: f64,
    latency_ms: f64,
    frequency: f64,
    note: Cow<'a, str>,
    updated_at: Ts,
}

/// `rec` in the binary form.
pub(super) fn encode(rec: &Record) -> Result<Vec<u8>> {
    let stored = StoredRecord {
        service: Cow::Borrowed(&rec.service),
        counter: rec.version.counter,
        node: Cow::Borrowed(&rec.version.node),
        gvip: rec.gvip.as_deref().map(Cow::Borrowed),
        instances: rec
            .instances
            .values()
            .map(|i| StoredInstance {
                id: Cow::Borrowed(&i.id),
                address: Cow::Borrowed(&i.address),
                port: i.port,
                tags: Cow::Borrowed(&i.tags),
                metadata: Cow::Borrowed(&i.metadata),
                weight: i.weight,
                ttl_secs: i.ttl_secs,
                registered_at: ts(&i.registered_at),
                state: i.status.state,
                load: i.status.load,
                success_rate: i.status.success_rate,
                latency_ms: i.status.latency_ms,
                frequency: i.status.frequency,
                note: Cow::Borrowed(&i.status.note),
                updated_at: ts(&i.status.updated_at),
            })
            .collect(),
        liveness: rec
            .liveness
            .iter()
            .map(|(id, l)| {
                let expired = l
                    .expired_from
                    .as_ref()
                    .map(|(state, note)| (*state, Cow::Borrowed(note.as_str())));
                (Cow::Borrowed(id.as_str()), ts(&l.last_seen), expired)
            })
            .collect(),
        removed: rec
            .removed
            .iter()
            .map(|(id, at)| (Cow::Borrowed(id.as_str()), ts(at)))
            .collect(),
    };
    // Room for a typical instance up front (growing the vector showed as realloc in the
    // profile). No byte limit on the way out: with one, bincode measures the whole record in
    // an extra pass before writing it; the limit guards decoding, where input may be corrupt.
    let mut out = Vec::with_capacity(64 + 160 * rec.instances.len());
    out.extend_from_slice(&[TAG, FORMAT]);
    bincode::DefaultOptions::new()
        .serialize_into(&mut out, &stored)
        .map_err(|e| Error::internal(format!("cannot encode record {:?}: {e}", rec.service)))?;
    // What decoding would refuse is never stored.
    if out.len() as u64 > MAX_RECORD_BYTES {
        return Err(Error::invalid(format!(
            "service {:?} has grown past {} MiB; deregister instances or shorten their metadata",
            rec.service,
            MAX_RECORD_BYTES >> 20
        )));
    }
    Ok(out)
}

/// A record from either form; `Internal` ("corrupt service record") when it is neither.
pub(super) fn decode(bytes: &[u8]) -> Result<Record> {
    match bytes {
        [TAG, FORMAT, body @ ..] => decode_binary(body),
        [TAG, format, ..] => Err(Error::internal(format!(
            "corrupt service record: unknown format {format} (written by a newer agent?)"
        ))),
        _ => serde_json::from_slice(bytes)
            .map_err(|e| Error::internal(format!("corrupt service record: {e}"))),
    }
}

/// The first fields of [`StoredRecord`]: enough for a record's version.
#[derive(Deserialize)]
struct StoredHead<'a> {
    #[serde(borrow)]
    _service: Cow<'a, str>,
    counter: u64,
    #[serde(borrow)]
    node: Cow<'a, str>,
}

/// A record's version without decoding its instances (anti-entropy compares versions of every
/// record a node owns, every few seconds).
pub(super) fn version(bytes: &[u8]) -> Result<Version> {
    match bytes {
        [TAG, FORMAT, body @ ..] => {
            let head: StoredHead<'_> = options()
                .allow_trailing_bytes()
                .deserialize(body)
                .map_err(|e| Error::internal(format!("corrupt service record: {e}")))?;
            Ok(Version {
                counter: head.counter,
                node: head.node.into_owned(),
            })
        }
        _ => decode(bytes).map(|r| r.version),
    }
}

fn decode_binary(body: &[u8]) -> Result<Record> {
    let s: StoredRecord<'_> = options()
        .deserialize(body)
        .map_err(|e| Error::internal(format!("corrupt service record: {e}")))?;
    let service = s.service.into_owned();
    let mut instances = BTreeMap::new();
    for i in s.instances {
        let id = i.id.into_owned();
        let instance = Instance {
            service: service.clone(),
            id: id.clone(),
            address: i.address.into_owned(),
            port: i.port,
            tags: i.tags.into_owned(),
            metadata: i.metadata.into_owned(),
            weight: i.weight,
            ttl_secs: i.ttl_secs,
            registered_at: from_ts(i.registered_at)?,
            status: Status {
                state: i.state,
                load: i.load,
                success_rate: i.success_rate,
                latency_ms: i.latency_ms,
                frequency: i.frequency,
                note: i.note.into_owned(),
                updated_at: from_ts(i.updated_at)?,
            },
        };
        instances.insert(id, Arc::new(instance));
    }
    let mut liveness = BTreeMap::new();
    for (id, last_seen, expired) in s.liveness {
        let l = Liveness {
            last_seen: from_ts(last_seen)?,
            expired_from: expired.map(|(state, note)| (state, note.into_owned())),
        };
        liveness.insert(id.into_owned(), l);
    }
    let mut removed = BTreeMap::new();
    for (id, at) in s.removed {
        removed.insert(id.into_owned(), from_ts(at)?);
    }
    Ok(Record {
        service,
        version: Version {
            counter: s.counter,
            node: s.node.into_owned(),
        },
        gvip: s.gvip.map(Cow::into_owned),
        instances,
        liveness,
        removed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{RegisterBody, StatusBody};
    use chrono::TimeZone;

    /// A record with every kind of field set: instances with tags, metadata, TTLs and reported
    /// status, an expired instance (liveness with `expired_from`) and a tombstone.
    fn full_record() -> Record {
        let t0 = Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap()
            + chrono::Duration::nanoseconds(123_456_789);
        let mut rec = Record::new("pay", Some("10.212.0.7".into())).unwrap();
        for i in 0..4 {
            let body: RegisterBody = serde_json::from_value(serde_json::json!({
                "address": format!("10.0.0.{i}"),
                "port": 8000 + i,
                "tags": ["a", "b ü"],
                "metadata": {"zone": "eu-1", "quote\"d": "v\n"},
                "weight": 7,
                "ttl_secs": 10,
            }))
            .unwrap();
            rec.register(&format!("i{i}"), &body, t0).unwrap();
        }
        let report: StatusBody = serde_json::from_value(serde_json::json!({
            "state": "warning", "load": 0.25, "success_rate": 0.5, "latency_ms": 12.5,
            "frequency": 3.0, "note": "slow disk"
        }))
        .unwrap();
        rec.report("i1", &report, t0).unwrap();
        rec.deregister("i3").unwrap();
        rec.tombstone("i3", t0);
        // Past the TTL, within the grace: i0, i1 and i2 turn critical and remember their state.
        rec.sweep(t0 + chrono::Duration::seconds(15), 100);
        rec.bump_version("ab12");
        rec
    }

    #[test]
    fn binary_round_trip_keeps_every_field() {
        let rec = full_record();
        assert!(rec.liveness.values().any(|l| l.expired_from.is_some()));
        assert!(!rec.removed.is_empty());
        let bytes = encode(&rec).unwrap();
        assert_eq!(bytes[..2], [TAG, FORMAT]);
        assert_eq!(decode(&bytes).unwrap(), rec);
    }

    #[test]
    fn the_version_reads_without_the_instances() {
        let rec = full_record();
        assert_eq!(version(&encode(&rec).unwrap()).unwrap(), rec.version);
        assert_eq!(
            version(&serde_json::to_vec(&rec).unwrap()).unwrap(),
            rec.version
        );
        assert!(matches!(
            version(&[TAG, FORMAT, 9]),
            Err(Error::Internal(_))
        ));
    }

    #[test]
    fn json_records_of_earlier_versions_still_decode() {
        let rec = full_record();
        let json = serde_json::to_vec(&rec).unwrap();
        assert_eq!(decode(&json).unwrap(), rec);
    }

    #[test]
    fn binary_is_much_smaller_than_json() {
        let rec = full_record();
        let (bin, json) = (encode(&rec).unwrap(), serde_json::to_vec(&rec).unwrap());
        assert!(
            bin.len() * 2 < json.len(),
            "{} vs {}",
            bin.len(),
            json.len()
        );
    }

    #[test]
    fn corrupt_bytes_are_an_internal_error_not_a_panic() {
        let bytes = encode(&full_record()).unwrap();
        for cut in [0, 1, 2, 3, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                matches!(decode(&bytes[..cut]), Err(Error::Internal(_))),
                "cut {cut}"
            );
        }
        let mut unknown = bytes.clone();
        unknown[1] = FORMAT + 1;
        let err = decode(&unknown).unwrap_err().to_string();
        assert!(err.contains("unknown format"), "{err}");
        // An instance count of 2^64 - 1 (varint 253 + u64) must not allocate its claim.
        let mut huge = vec![TAG, FORMAT, 3, b'p', b'a', b'y', 0, 1, b'n', 0, 253];
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(decode(&huge), Err(Error::Internal(_))));
    }
}
