//! How records are kept in the store and passed between nodes.
//!
//! Since 0.2 every instance is its own unit under its own key (`u/SERVICE/ID`, see `unit.rs`),
//! encoded here as a tag byte, a format number and postcard (variable-length integers, no
//! field names) of [`StoredUnit`]: the version and index first, so that anti-entropy reads a
//! unit's version without decoding the instance, then the instance with timestamps as seconds
//! and nanoseconds. A service's own facts (its gVip, the floor of its change index) are kept
//! under `s/SERVICE` as [`StoredMeta`].
//!
//! 0.1.0 kept a whole service under one key (`svc/SERVICE`) as a [`StoredRecord`] (tag 0xB1,
//! bincode) or, before that, as JSON. [`decode`] still reads both, for the upgrade of a data
//! directory or Redis database at start (`Registry::upgrade_store`), which rewrites them as
//! units.
//!
//! The mirror structs are the format: changing a field's type or order (or the order of
//! [`State`]'s variants, which both encodings write as their index) needs a new format number.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use bincode::Options;
use chrono::{DateTime, Utc};
use imbl::OrdMap;
use serde::{Deserialize, Serialize};

use super::health::{Health, Policy};
use super::hlc::{node_number, Hlc};
use super::model::{Instance, Liveness, Metadata, Name, Record, Stamp, State, Status};
use super::unit::{Meta, Unit, UnitBody};
use crate::{Error, Result};

/// First byte of a unit (one instance). Neither JSON nor a 0.1.0 record starts with it.
const UNIT_TAG: u8 = 0xB2;
/// First byte of a service's meta entry.
const META_TAG: u8 = 0xB3;
/// The layout of [`StoredUnit`] and [`StoredMeta`].
const UNIT_FORMAT: u8 = 1;
/// The layout of [`StoredMetaAssigned`]: a meta entry whose gVip carries the version at
/// which it was assigned. An agent before it skips such an entry as unreadable.
const META_FORMAT_ASSIGNED: u8 = 2;

/// First byte of a 0.1.0 binary record. A JSON record starts with `{`, so the two never mix up.
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
    metadata: Cow<'a, Metadata>,
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

/// The JSON form of a record written before 0.1.0's binary form.
#[derive(Deserialize)]
struct JsonRecord {
    service: String,
    version: JsonVersion,
    gvip: Option<String>,
    instances: BTreeMap<String, Instance>,
    #[serde(default)]
    liveness: BTreeMap<String, Liveness>,
    #[serde(default)]
    removed: BTreeMap<String, DateTime<Utc>>,
}

#[derive(Deserialize)]
struct JsonVersion {
    counter: u64,
    node: String,
}

/// What a 0.1.0 record held, whichever form it was in.
struct Legacy {
    service: String,
    counter: u64,
    node: u64,
    gvip: Option<String>,
    instances: Vec<Instance>,
    liveness: BTreeMap<String, Liveness>,
    removed: BTreeMap<String, DateTime<Utc>>,
}

impl Legacy {
    /// The record as units: each instance (and tombstone) versioned at the time of its last
    /// change by the node that last wrote the record, every one at the record's old counter as
    /// the service's change index, so the index keeps growing from where 0.1.0 left it.
    fn into_record(self) -> Record {
        let stamp = |at: DateTime<Utc>| Stamp {
            version: Hlc {
                wall_ms: u64::try_from(at.timestamp_millis()).unwrap_or(0),
                logical: 0,
                node: self.node,
            },
            index: self.counter,
        };
        let mut rec = Record {
            service: self.service.clone(),
            gvip: self.gvip.clone(),
            // 0.1.0 kept no assignment version: the gVip counts as assigned before any other.
            gvip_at: Hlc::default(),
            index: self.counter,
            instances: OrdMap::new(),
            liveness: OrdMap::new(),
            removed: OrdMap::new(),
            stamps: OrdMap::new(),
            policy: Policy::default(),
        };
        for (id, at) in &self.removed {
            rec.removed.insert(Name::from(id.as_str()), *at);
            rec.stamps.insert(Name::from(id.as_str()), stamp(*at));
        }
        for inst in self.instances {
            let live = self.liveness.get(&inst.id).cloned();
            let mut changed = inst.last_changed();
            if let Some(l) = &live {
                changed = changed.max(l.last_seen);
            }
            // A tombstone later than the instance's last change means it was removed.
            if self.removed.get(&inst.id).is_some_and(|r| *r > changed) {
                continue;
            }
            rec.removed.remove(inst.id.as_str());
            rec.stamps
                .insert(Name::from(inst.id.as_str()), stamp(changed));
            if let Some(l) = live {
                rec.liveness.insert(Name::from(inst.id.as_str()), l);
            }
            rec.instances
                .insert(Name::from(inst.id.as_str()), Arc::new(inst));
        }
        rec
    }
}

/// A 0.1.0 record (either form) as a record of units; `Internal` ("corrupt service record")
/// when it is neither.
pub(super) fn decode(bytes: &[u8]) -> Result<Record> {
    let legacy = match bytes {
        [TAG, FORMAT, body @ ..] => decode_binary(body)?,
        [TAG, format, ..] => {
            return Err(Error::internal(format!(
                "corrupt service record: unknown format {format} (written by a newer agent?)"
            )))
        }
        _ => {
            let j: JsonRecord = serde_json::from_slice(bytes)
                .map_err(|e| Error::internal(format!("corrupt service record: {e}")))?;
            Legacy {
                service: j.service,
                counter: j.version.counter,
                node: node_number(&j.version.node),
                gvip: j.gvip,
                instances: j.instances.into_values().collect(),
                liveness: j.liveness,
                removed: j.removed,
            }
        }
    };
    Ok(legacy.into_record())
}

fn decode_binary(body: &[u8]) -> Result<Legacy> {
    let s: StoredRecord<'_> = options()
        .deserialize(body)
        .map_err(|e| Error::internal(format!("corrupt service record: {e}")))?;
    let service = s.service.into_owned();
    let mut instances = Vec::with_capacity(s.instances.len());
    for i in s.instances {
        instances.push(i.into_instance(&service)?);
    }
    let mut liveness = BTreeMap::new();
    for (id, last_seen, expired) in s.liveness {
        let l = Liveness {
            last_seen: from_ts(last_seen)?,
            expired_from: expired.map(|(state, note)| (state, note.into_owned())),
            health: Health::default(),
        };
        liveness.insert(id.into_owned(), l);
    }
    let mut removed = BTreeMap::new();
    for (id, at) in s.removed {
        removed.insert(id.into_owned(), from_ts(at)?);
    }
    Ok(Legacy {
        service,
        counter: s.counter,
        node: node_number(&s.node),
        gvip: s.gvip.map(Cow::into_owned),
        instances,
        liveness,
        removed,
    })
}

impl<'a> StoredInstance<'a> {
    fn of(i: &'a Instance) -> Self {
        StoredInstance {
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
        }
    }

    fn into_instance(self, service: &str) -> Result<Instance> {
        Ok(Instance {
            service: service.to_string(),
            id: self.id.into_owned(),
            address: self.address.into_owned(),
            port: self.port,
            tags: self.tags.into_owned(),
            metadata: self.metadata.into_owned(),
            weight: self.weight,
            ttl_secs: self.ttl_secs,
            registered_at: from_ts(self.registered_at)?,
            status: Status {
                state: self.state,
                load: self.load,
                success_rate: self.success_rate,
                latency_ms: self.latency_ms,
                frequency: self.frequency,
                note: self.note.into_owned(),
                updated_at: from_ts(self.updated_at)?,
            },
            flapping: false,
        })
    }
}

// ---- units (0.2) ---------------------------------------------------------------------------

/// The head of a unit, for tests that look at what follows it.
#[cfg(test)]
pub(super) type UnitHeadForTests = UnitHead;

/// The head of a unit: its version and index, readable without the rest.
#[derive(Serialize, Deserialize)]
pub(super) struct UnitHead {
    wall_ms: u64,
    logical: u32,
    node: u64,
    index: u64,
}

// Lives only while one unit is encoded or decoded: boxing the instance would only allocate.
#[allow(clippy::large_enum_variant)]
#[derive(Serialize, Deserialize)]
enum StoredBody<'a> {
    Present {
        #[serde(borrow)]
        instance: StoredInstance<'a>,
        last_seen: Ts,
        expired_from: Option<(State, Cow<'a, str>)>,
    },
    Removed {
        at: Ts,
    },
    /// A service's health policy (the unit under the empty id).
    Policy {
        failures_before_critical: u32,
        successes_before_passing: u32,
        flap_half_life_secs: u64,
        panic_threshold: f64,
    },
    /// `Present` with health bookkeeping; an instance without any is written as `Present`, as
    /// before the bookkeeping existed (an older agent reads it).
    Tracked {
        #[serde(borrow)]
        instance: StoredInstance<'a>,
        last_seen: Ts,
        expired_from: Option<(State, Cow<'a, str>)>,
        health: StoredHealth,
    },
}

/// [`Health`] as stored: streak, judged, penalty, penalty_at, held, since.
type StoredHealth = (
    Option<(State, u32)>,
    Option<State>,
    f64,
    Option<Ts>,
    Option<State>,
    Option<Ts>,
);

fn stored_health(h: &Health) -> StoredHealth {
    (
        h.streak,
        h.judged,
        h.penalty,
        h.penalty_at.as_ref().map(ts),
        h.held,
        h.since.as_ref().map(ts),
    )
}

fn health_of(s: StoredHealth) -> Result<Health> {
    let (streak, judged, penalty, penalty_at, held, since) = s;
    Ok(Health {
        streak,
        judged,
        penalty,
        penalty_at: penalty_at.map(from_ts).transpose()?,
        held,
        since: since.map(from_ts).transpose()?,
    })
}

/// A service's own facts, under `s/SERVICE` (format [`UNIT_FORMAT`]): the layout of every
/// meta entry written before gVip assignment versions were kept, and still of those without
/// one (no gVip, or a gVip of unknown assignment), so that they stay byte for byte what an
/// older agent writes and reads.
#[derive(Serialize, Deserialize)]
struct StoredMeta<'a> {
    gvip: Option<Cow<'a, str>>,
    /// The service's change index is at least this (it survives forgotten tombstones).
    index: u64,
}

/// A meta entry whose gVip has a known assignment version (format [`META_FORMAT_ASSIGNED`]):
/// the version first, then [`StoredMeta`]'s fields.
#[derive(Serialize, Deserialize)]
struct StoredMetaAssigned<'a> {
    /// The version at which the gVip was assigned (wall_ms, logical, node).
    assigned: (u64, u32, u64),
    gvip: Cow<'a, str>,
    index: u64,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("corrupt {what}: {e}"))
}

/// `unit` in the stored form.
pub(super) fn encode_unit(unit: &Unit) -> Result<Vec<u8>> {
    let head = UnitHead {
        wall_ms: unit.stamp.version.wall_ms,
        logical: unit.stamp.version.logical,
        node: unit.stamp.version.node,
        index: unit.stamp.index,
    };
    let body = match &unit.body {
        UnitBody::Present { instance, liveness } => {
            let instance = StoredInstance::of(instance);
            let last_seen = ts(&liveness.last_seen);
            let expired_from = liveness
                .expired_from
                .as_ref()
                .map(|(s, n)| (*s, Cow::Borrowed(n.as_str())));
            if liveness.health == Health::default() {
                StoredBody::Present {
                    instance,
                    last_seen,
                    expired_from,
                }
            } else {
                StoredBody::Tracked {
                    instance,
                    last_seen,
                    expired_from,
                    health: stored_health(&liveness.health),
                }
            }
        }
        UnitBody::Removed { at } => StoredBody::Removed { at: ts(at) },
        UnitBody::Policy { policy } => StoredBody::Policy {
            failures_before_critical: policy.failures_before_critical,
            successes_before_passing: policy.successes_before_passing,
            flap_half_life_secs: policy.flap_half_life_secs,
            panic_threshold: policy.panic_threshold,
        },
    };
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&[UNIT_TAG, UNIT_FORMAT]);
    let out = postcard::to_extend(&head, out).map_err(|e| corrupt("instance unit", e))?;
    postcard::to_extend(&body, out).map_err(|e| corrupt("instance unit", e))
}

fn unit_parts(bytes: &[u8]) -> Result<(Stamp, &[u8])> {
    let body = match bytes {
        [UNIT_TAG, UNIT_FORMAT, body @ ..] => body,
        [UNIT_TAG, format, ..] => {
            return Err(Error::internal(format!(
                "corrupt instance unit: unknown format {format} (written by a newer agent?)"
            )))
        }
        _ => return Err(Error::internal("corrupt instance unit: bad tag")),
    };
    let (head, rest): (UnitHead, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| corrupt("instance unit", e))?;
    let stamp = Stamp {
        version: Hlc {
            wall_ms: head.wall_ms,
            logical: head.logical,
            node: head.node,
        },
        index: head.index,
    };
    Ok((stamp, rest))
}

/// A unit's version and index, without decoding the instance.
pub(super) fn unit_stamp(bytes: &[u8]) -> Result<Stamp> {
    unit_parts(bytes).map(|(stamp, _)| stamp)
}

/// When a stored unit's instance was removed, if it is a tombstone; without decoding an
/// instance (the body's variant tag comes first).
pub(super) fn unit_removed_at(bytes: &[u8]) -> Option<DateTime<Utc>> {
    let (_, rest) = unit_parts(bytes).ok()?;
    // postcard writes the variant index first: 1 is `Removed`.
    if rest.first() != Some(&1) {
        return None;
    }
    match postcard::from_bytes::<StoredBody<'_>>(rest).ok()? {
        StoredBody::Removed { at } => from_ts(at).ok(),
        _ => None,
    }
}

/// A unit of service `service` from its stored form.
pub(super) fn decode_unit(service: &str, bytes: &[u8]) -> Result<Unit> {
    let (stamp, rest) = unit_parts(bytes)?;
    let body: StoredBody<'_> =
        postcard::from_bytes(rest).map_err(|e| corrupt("instance unit", e))?;
    let present = |instance: StoredInstance<'_>,
                   last_seen: Ts,
                   expired_from: Option<(State, Cow<'_, str>)>,
                   health: Health| {
        let mut instance = instance.into_instance(service)?;
        instance.flapping = health.is_flapping();
        Ok::<_, Error>(UnitBody::Present {
            instance: Arc::new(instance),
            liveness: Liveness {
                last_seen: from_ts(last_seen)?,
                expired_from: expired_from.map(|(s, n)| (s, n.into_owned())),
                health,
            },
        })
    };
    let body = match body {
        StoredBody::Present {
            instance,
            last_seen,
            expired_from,
        } => present(instance, last_seen, expired_from, Health::default())?,
        StoredBody::Tracked {
            instance,
            last_seen,
            expired_from,
            health,
        } => present(instance, last_seen, expired_from, health_of(health)?)?,
        StoredBody::Removed { at } => UnitBody::Removed { at: from_ts(at)? },
        StoredBody::Policy {
            failures_before_critical,
            successes_before_passing,
            flap_half_life_secs,
            panic_threshold,
        } => UnitBody::Policy {
            policy: Policy {
                failures_before_critical,
                successes_before_passing,
                flap_half_life_secs,
                panic_threshold,
            },
        },
    };
    Ok(Unit { stamp, body })
}

/// A service's meta entry in its one stored form: format 2 when the gVip has an assignment
/// version, else format 1 (as written before such versions were kept). A version without a
/// gVip is not written: the encoding is a function of what [`Meta::merge`] compares, so two
/// copies that agree hold the same bytes.
pub(super) fn encode_meta(meta: &Meta) -> Result<Vec<u8>> {
    let out = match &meta.gvip {
        Some(gvip) if meta.gvip_at != Hlc::default() => {
            let at = meta.gvip_at;
            let stored = StoredMetaAssigned {
                assigned: (at.wall_ms, at.logical, at.node),
                gvip: Cow::Borrowed(gvip),
                index: meta.index,
            };
            postcard::to_extend(&stored, vec![META_TAG, META_FORMAT_ASSIGNED])
        }
        gvip => {
            let stored = StoredMeta {
                gvip: gvip.as_deref().map(Cow::Borrowed),
                index: meta.index,
            };
            postcard::to_extend(&stored, vec![META_TAG, UNIT_FORMAT])
        }
    };
    out.map_err(|e| corrupt("service meta", e))
}

/// A meta entry, either format.
pub(super) fn decode_meta(bytes: &[u8]) -> Result<Meta> {
    match bytes {
        [META_TAG, UNIT_FORMAT, body @ ..] => {
            let m: StoredMeta<'_> =
                postcard::from_bytes(body).map_err(|e| corrupt("service meta", e))?;
            Ok(Meta {
                gvip: m.gvip.map(Cow::into_owned),
                gvip_at: Hlc::default(),
                index: m.index,
            })
        }
        [META_TAG, META_FORMAT_ASSIGNED, body @ ..] => {
            let m: StoredMetaAssigned<'_> =
                postcard::from_bytes(body).map_err(|e| corrupt("service meta", e))?;
            let (wall_ms, logical, node) = m.assigned;
            Ok(Meta {
                gvip: Some(m.gvip.into_owned()),
                gvip_at: Hlc {
                    wall_ms,
                    logical,
                    node,
                },
                index: m.index,
            })
        }
        _ => Err(Error::internal("corrupt service meta: bad tag or format")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::model::tests::{at, record};
    use crate::registry::{RegisterBody, StatusBody};

    fn stamp(ms: u64, index: u64) -> Stamp {
        Stamp {
            version: Hlc {
                wall_ms: ms,
                logical: 3,
                node: 0xab12,
            },
            index,
        }
    }

    /// A unit with every kind of field set: tags, metadata, TTL, reported status, and the state
    /// TTL expiry overwrote.
    fn full_unit() -> Unit {
        let mut rec = record();
        let body: RegisterBody = serde_json::from_value(serde_json::json!({
            "address": "10.0.0.1", "port": 8001, "tags": ["a", "b ü"],
            "metadata": {"zone": "eu-1", "quote\"d": "v\n"}, "weight": 7, "ttl_secs": 10,
        }))
        .unwrap();
        rec.register("i1", &body, at(0)).unwrap();
        let report: StatusBody = serde_json::from_value(serde_json::json!({
            "state": "warning", "load": 0.25, "success_rate": 0.5, "latency_ms": 12.5,
            "frequency": 3.0, "note": "slow disk"
        }))
        .unwrap();
        rec.report("i1", &report, at(1)).unwrap();
        rec.sweep(at(15), 100);
        rec.stamp("i1", stamp(7, 9).version);
        rec.unit("i1").unwrap()
    }

    #[test]
    fn a_unit_round_trips_with_every_field() {
        let unit = full_unit();
        let UnitBody::Present { liveness, .. } = &unit.body else {
            panic!("present")
        };
        assert!(liveness.expired_from.is_some());
        let bytes = encode_unit(&unit).unwrap();
        assert_eq!(bytes[..2], [UNIT_TAG, UNIT_FORMAT]);
        assert_eq!(decode_unit("payments", &bytes).unwrap(), unit);
        assert_eq!(unit_stamp(&bytes).unwrap(), unit.stamp);
        let gone = Unit {
            stamp: stamp(8, 10),
            body: UnitBody::Removed { at: at(20) },
        };
        let bytes = encode_unit(&gone).unwrap();
        assert_eq!(decode_unit("payments", &bytes).unwrap(), gone);
        assert!(bytes.len() < 32, "a tombstone is tiny: {}", bytes.len());
    }

    #[test]
    fn meta_round_trips() {
        let meta = |gvip: Option<&str>, wall_ms, index| Meta {
            gvip: gvip.map(String::from),
            gvip_at: Hlc {
                wall_ms,
                logical: 0,
                node: if wall_ms == 0 { 0 } else { 0xab },
            },
            index,
        };
        for m in [
            meta(Some("10.212.0.7"), 0, 42),
            meta(Some("10.212.0.7"), 1_700_000_000_000, 42),
            meta(None, 0, 0),
        ] {
            assert_eq!(decode_meta(&encode_meta(&m).unwrap()).unwrap(), m);
        }
        assert!(decode_meta(b"{}").is_err());
        assert!(decode_meta(&[META_TAG, 3, 0]).is_err(), "a newer format");
    }

    /// A meta entry without an assignment version is written exactly as before versions were
    /// kept (format 1), and one written then decodes as a gVip of unknown assignment.
    #[test]
    fn a_meta_entry_of_the_earlier_layout_still_decodes_and_is_written_the_same() {
        let earlier = StoredMeta {
            gvip: Some(Cow::Borrowed("10.212.0.7")),
            index: 42,
        };
        let bytes = postcard::to_extend(&earlier, vec![META_TAG, UNIT_FORMAT]).unwrap();
        let m = decode_meta(&bytes).unwrap();
        assert_eq!(m.gvip.as_deref(), Some("10.212.0.7"));
        assert_eq!(m.gvip_at, Hlc::default());
        assert_eq!(m.index, 42);
        assert_eq!(encode_meta(&m).unwrap(), bytes);
        let assigned = Meta {
            gvip_at: Hlc {
                wall_ms: 5,
                logical: 1,
                node: 2,
            },
            ..m
        };
        assert_eq!(encode_meta(&assigned).unwrap()[..2], [META_TAG, 2]);
        // A version without a gVip is not kept: the same bytes as no version.
        let none = Meta {
            gvip: None,
            ..assigned
        };
        assert_eq!(
            encode_meta(&none).unwrap(),
            encode_meta(&Meta {
                index: 42,
                ..Meta::default()
            })
            .unwrap()
        );
    }

    #[test]
    fn corrupt_units_are_an_internal_error_not_a_panic() {
        let bytes = encode_unit(&full_unit()).unwrap();
        for cut in [0, 1, 2, 3, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                matches!(decode_unit("p", &bytes[..cut]), Err(Error::Internal(_))),
                "cut {cut}"
            );
        }
        let mut unknown = bytes.clone();
        unknown[1] = UNIT_FORMAT + 1;
        let err = decode_unit("p", &unknown).unwrap_err().to_string();
        assert!(err.contains("unknown format"), "{err}");
        // A tag count of 2^64 - 1 must not allocate its claim.
        let mut huge = vec![UNIT_TAG, UNIT_FORMAT, 1, 1, 1, 1, 0, 1, b'i', 1, b'h', 1];
        huge.extend_from_slice(&[0xff; 10]);
        assert!(matches!(decode_unit("p", &huge), Err(Error::Internal(_))));
    }

    #[test]
    fn json_records_of_early_versions_convert_to_units() {
        let json = serde_json::json!({
            "service": "pay", "version": {"counter": 12, "node": "00000000000000ff00"},
            "gvip": "10.212.0.7",
            "instances": {"a": {
                "service": "pay", "id": "a", "address": "10.0.0.1", "port": 80, "tags": [],
                "metadata": {}, "weight": 1, "ttl_secs": null,
                "registered_at": "2026-11-25T14:00:00Z",
                "status": {"state": "passing", "load": 0.0, "success_rate": 0.0,
                           "latency_ms": 0.0, "frequency": 0.0, "note": "",
                           "updated_at": "2026-11-25T14:00:05Z"}}},
            "removed": {"b": "2026-11-25T14:00:09Z"}
        });
        let rec = decode(&serde_json::to_vec(&json).unwrap()).unwrap();
        assert_eq!(rec.index, 12, "the index continues from the old counter");
        assert_eq!(rec.gvip.as_deref(), Some("10.212.0.7"));
        assert_eq!(
            rec.instances.keys().map(|k| &**k).collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!(
            rec.version_of("a").unwrap().wall_ms,
            at(5).timestamp_millis() as u64
        );
        assert_eq!(rec.version_of("a").unwrap().node, 0xff);
        assert!(matches!(
            rec.unit("b").unwrap().body,
            UnitBody::Removed { .. }
        ));
        assert!(matches!(decode(b"NULL"), Err(Error::Internal(_))));
    }
}
