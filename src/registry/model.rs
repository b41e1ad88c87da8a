//! The data model: instances, their status, and the per-service record a node stores.

use std::collections::BTreeMap;

use imbl::OrdMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::health::{Health, Policy};
use super::hlc::Hlc;
use super::validate::{
    validate_address, validate_instance_id, validate_metadata, validate_non_negative,
    validate_note, validate_port, validate_rate, validate_service, validate_tags, validate_ttl,
    validate_weight, MAX_INSTANCES,
};
use crate::{Error, Result};

/// An instance's health state, as reported by the instance or set by TTL expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Healthy and serving.
    Passing,
    /// Serving, but something deserves attention.
    Warning,
    /// Failing, or silent past its TTL.
    Critical,
    /// Deliberately out of rotation (draining, upgrading).
    Maintenance,
}

impl State {
    /// Every state, in the order of the docs.
    pub const ALL: [State; 4] = [
        State::Passing,
        State::Warning,
        State::Critical,
        State::Maintenance,
    ];

    /// The lowercase name used in JSON, the CLI and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Passing => "passing",
            State::Warning => "warning",
            State::Critical => "critical",
            State::Maintenance => "maintenance",
        }
    }

    /// One line for people (CLI help and completions).
    pub fn describe(self) -> &'static str {
        match self {
            State::Passing => "Healthy",
            State::Warning => "Degraded but serving",
            State::Critical => "Failing, or silent for longer than its TTL",
            State::Maintenance => "Taken out of rotation on purpose",
        }
    }

    /// Whether `discover --healthy` returns instances in this state: passing and warning are
    /// serving; critical is failing and maintenance is deliberately out of rotation.
    pub fn is_healthy(self) -> bool {
        matches!(self, State::Passing | State::Warning)
    }

    /// Rank for the `best` strategy, lower is healthier: passing, warning, maintenance, critical.
    /// Maintenance ranks above critical: a drained instance most likely still works, a critical
    /// one most likely does not.
    pub fn rank(self) -> u8 {
        match self {
            State::Passing => 0,
            State::Warning => 1,
            State::Maintenance => 2,
            State::Critical => 3,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for State {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        State::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown state {s:?}: expected passing, warning, critical or maintenance"
                ))
            })
    }
}

/// A timestamp written as chrono writes it (RFC 3339, `Z`, as many fraction digits as it
/// needs), but as one string. chrono hands serializers a `Display` (`collect_str`): serde_json
/// then escapes it a character at a time, and postcard formats it twice (once to count). Two
/// timestamps go into every answer to a write and into every unit stored and replicated.
pub(super) mod rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};

    /// `t` as the API writes times (also `registry/json.rs`).
    pub(in crate::registry) fn text(t: &DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }

    pub(super) fn serialize<S: serde::Serializer>(
        t: &DateTime<Utc>,
        s: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&text(t))
    }

    /// `t`, to serialize as a field of a hand-written `Serialize`.
    pub(super) struct Field<'a>(pub &'a DateTime<Utc>);

    impl serde::Serialize for Field<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            serialize(self.0, s)
        }
    }
}

/// An instance's last reported status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Health state.
    pub state: State,
    /// Load, a finite number ≥ 0 (the instance decides the scale, e.g. 0–1 utilisation).
    pub load: f64,
    /// Share of requests that succeed, 0–1.
    pub success_rate: f64,
    /// Latency in milliseconds, ≥ 0.
    pub latency_ms: f64,
    /// Request frequency (requests per second, or whatever the reporter counts), ≥ 0.
    pub frequency: f64,
    /// Free text: why the state is what it is.
    pub note: String,
    /// When the status last changed (report, registration or TTL expiry).
    #[serde(serialize_with = "rfc3339::serialize")]
    pub updated_at: DateTime<Utc>,
}

impl Status {
    /// The status of a new instance: passing, all measures zero, no note.
    pub fn new(now: DateTime<Utc>) -> Self {
        Status {
            state: State::Passing,
            load: 0.0,
            success_rate: 0.0,
            latency_ms: 0.0,
            frequency: 0.0,
            note: String::new(),
            updated_at: now,
        }
    }
}

/// An instance's metadata: key/value pairs sorted by key, each key once. One boxed slice,
/// not a `BTreeMap`: the smallest map allocates a node of about 550 bytes, which was a third
/// of a cached instance's memory. It serializes as a map, exactly as the `BTreeMap` did (the
/// same JSON, and the same bytes in the store and on the ring).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata(Box<[(String, String)]>);

impl Metadata {
    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        let at = self.0.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok()?;
        Some(self.0[at].1.as_str())
    }

    /// The pairs, in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<BTreeMap<String, String>> for Metadata {
    fn from(map: BTreeMap<String, String>) -> Self {
        Metadata(map.into_iter().collect())
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Metadata {
    /// Sorted by key; a key given twice keeps its last value (as a map would).
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let map: BTreeMap<String, String> = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Metadata::from(map)
    }
}

impl Serialize for Metadata {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        BTreeMap::<String, String>::deserialize(d).map(Metadata::from)
    }
}

/// One registered instance of a service; serializes exactly as API.md's INSTANCE.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Instance {
    /// The service this instance belongs to.
    pub service: String,
    /// The instance's id, unique within the service (default `ADDRESS:PORT`).
    pub id: String,
    /// Host name or IP clients connect to.
    pub address: String,
    /// Port clients connect to; 0 only for prototype (`lSip`) instances.
    pub port: u16,
    /// Free-form labels `discover --tag` filters on.
    pub tags: Vec<String>,
    /// Free-form key/value pairs.
    pub metadata: Metadata,
    /// Relative weight for the `weighted` strategy, 0–10000 (0: never picked by `weighted`).
    pub weight: u32,
    /// Heartbeat TTL: without a status report for this long the instance turns critical.
    pub ttl_secs: Option<u64>,
    /// When the instance was first registered (kept when it is registered again).
    pub registered_at: DateTime<Utc>,
    /// Last reported status.
    pub status: Status,
    /// Held in its worse state by flap damping (API.md, "Health beyond a state"); omitted from
    /// the JSON when false, so an INSTANCE keeps its documented shape.
    #[serde(default)]
    pub flapping: bool,
}

impl Instance {
    /// The later of its registration and its last status change: its last sign of life when
    /// no bookkeeping says otherwise.
    pub fn last_changed(&self) -> DateTime<Utc> {
        self.registered_at.max(self.status.updated_at)
    }
}

/// By hand for one field: `flapping` is left out of JSON when false (an INSTANCE keeps its
/// documented shape), but always written in the ring's binary encoding, whose fields are
/// positional (`skip_serializing_if` would make it undecodable).
impl Serialize for Instance {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let flag = self.flapping || !s.is_human_readable();
        let mut st = s.serialize_struct("Instance", if flag { 11 } else { 10 })?;
        st.serialize_field("service", &self.service)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("address", &self.address)?;
        st.serialize_field("port", &self.port)?;
        st.serialize_field("tags", &self.tags)?;
        st.serialize_field("metadata", &self.metadata)?;
        st.serialize_field("weight", &self.weight)?;
        st.serialize_field("ttl_secs", &self.ttl_secs)?;
        st.serialize_field("registered_at", &rfc3339::Field(&self.registered_at))?;
        st.serialize_field("status", &self.status)?;
        if flag {
            st.serialize_field("flapping", &self.flapping)?;
        } else {
            st.skip_field("flapping")?;
        }
        st.end()
    }
}

/// The version of one instance's last change, and the service's change index it was made at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// The change's version (see `hlc.rs`): the larger one wins on every copy.
    pub version: Hlc,
    /// The service's change index after this change.
    pub index: u64,
}

/// When an instance last showed a sign of life, and what TTL expiry overwrote.
///
/// Kept beside the instances rather than inside them so that `Instance` serializes exactly as the
/// public INSTANCE; replicated with the record so a new owner continues the same TTL clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Liveness {
    /// Last registration or status report.
    #[serde(serialize_with = "rfc3339::serialize")]
    pub(super) last_seen: DateTime<Utc>,
    /// Set when TTL expiry made the instance critical: the state and note it had before, restored
    /// by the next heartbeat unless that heartbeat sets its own.
    #[serde(default)]
    pub(super) expired_from: Option<(State, String)>,
    /// Consecutive reports and the flap penalty (see `health.rs`).
    #[serde(default)]
    pub(super) health: Health,
}

impl Liveness {
    pub(super) fn new(now: DateTime<Utc>) -> Self {
        Liveness {
            last_seen: now,
            expired_from: None,
            health: Health::default(),
        }
    }
}

/// An instance id as a key of a record's maps: shared, so that the copy of a map's node that
/// a change makes (the maps are persistent) copies no string and allocates nothing per key.
pub type Name = Arc<str>;

/// Remove `id` from `map` only when it is there. imbl's `remove` makes its own every node on
/// the way to where the key would be, present or not: on a map shared with the cached copy of
/// the record that is a copy of one node (64 entries) per level for nothing, as for the
/// tombstones at each registration of a new id in a service with churn.
pub(super) fn remove_present<V: Clone>(map: &mut OrdMap<Name, V>, id: &str) -> Option<V> {
    if map.contains_key(id) {
        map.remove(id)
    } else {
        None
    }
}

/// Everything a node holds about one service, in memory: its instances, their bookkeeping, and
/// tombstones of removed ones.
///
/// Every instance is its own unit (its own store key, its own version, see `unit.rs`): a write
/// changes one instance and is stored and replicated as that instance alone. The maps are
/// persistent (`imbl`), so copying a record for a write costs O(1) and changing one instance
/// O(log n), whatever the service's size.
///
/// The operations (`register`, `deregister`, `report`, `sweep`) leave versions alone: the owner
/// applies one and then calls [`Record::stamp`] for the instance it changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The service name (the record's key on the ring).
    pub service: String,
    /// The prototype-compatible virtual IP, assigned at the first registration. Copies that
    /// hold different ones (each assigned by an owner that had not seen the other) agree on
    /// the earliest assigned (`unit.rs`, [`Meta::merge`](super::unit::Meta::merge)).
    pub gvip: Option<String>,
    /// The version at which `gvip` was assigned; zero when unknown (a meta entry written
    /// before assignment versions were kept) or when there is no gVip. Not sent with a
    /// record over RPC (readers do not need it; the meta entry carries it between copies).
    #[serde(skip)]
    pub gvip_at: Hlc,
    /// The service's change index: grows with every change, on every owner (`X-Chordctl-Index`).
    pub index: u64,
    /// Instances by id. Shared (`Arc`) so that copying a record for a write copies no
    /// instance: the write replaces or changes (`Arc::make_mut`) only the one it touches.
    pub instances: OrdMap<Name, Arc<Instance>>,
    /// Heartbeat bookkeeping by instance id (see [`Liveness`]).
    #[serde(default)]
    pub(super) liveness: OrdMap<Name, Liveness>,
    /// Tombstones: when each removed instance was deregistered or expired, so that a stale
    /// copy does not bring it back.
    #[serde(default)]
    pub(super) removed: OrdMap<Name, DateTime<Utc>>,
    /// The version of every instance's last change, present or removed, and of the policy
    /// (under [`POLICY_UNIT`](super::health::POLICY_UNIT)).
    #[serde(default)]
    pub(super) stamps: OrdMap<Name, Stamp>,
    /// The service's health policy (the default until one is set).
    #[serde(default)]
    pub(super) policy: Policy,
}

impl Record {
    /// An empty record for `service` at index 0, after checking the service name.
    pub fn new(service: &str, gvip: Option<String>) -> Result<Self> {
        validate_service(service)?;
        Ok(Record {
            service: service.to_string(),
            gvip,
            gvip_at: Hlc::default(),
            index: 0,
            instances: OrdMap::new(),
            liveness: OrdMap::new(),
            removed: OrdMap::new(),
            stamps: OrdMap::new(),
            policy: Policy::default(),
        })
    }

    /// The service's health policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Set the service's health policy (the caller stamps [`POLICY_UNIT`](super::health::POLICY_UNIT)). Instances held by
    /// flap damping are released by the next sweep when damping is turned off.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// Instance `id`'s health bookkeeping, if it has any.
    pub fn health_of(&self, id: &str) -> Option<&Health> {
        self.liveness.get(id).map(|l| &l.health)
    }

    /// The last sign of life of instance `id` when TTL expiry made it critical.
    pub fn expired_since(&self, id: &str) -> Option<DateTime<Utc>> {
        let l = self.liveness.get(id)?;
        l.expired_from.as_ref().map(|_| l.last_seen)
    }

    /// The version of instance `id`'s last change (registration, report or removal), if any.
    pub fn version_of(&self, id: &str) -> Option<Hlc> {
        self.stamps.get(id).map(|s| s.version)
    }

    /// The service's index at instance `id`'s last change, if any.
    pub fn index_of(&self, id: &str) -> Option<u64> {
        self.stamps.get(id).map(|s| s.index)
    }

    /// The key to hold instance `id` under: the one the record's maps already hold, if any,
    /// so that all of them share one allocation of the id rather than one each.
    pub(super) fn name(&self, id: &str) -> Name {
        // A present instance first (reports and re-registrations, the usual writes), then
        // anything with a version (a tombstone).
        if let Some((k, _)) = self.instances.get_key_value(id) {
            return k.clone();
        }
        self.tombstone_name(id)
    }

    /// The key of instance `id` as its version's map holds it (a removed instance's), or a
    /// new one.
    fn tombstone_name(&self, id: &str) -> Name {
        match self.stamps.get_key_value(id) {
            Some((k, _)) => k.clone(),
            None => Name::from(id),
        }
    }

    /// Record that instance `id` just changed with `version`: the service's index grows by one.
    /// Returns the new index.
    pub fn stamp(&mut self, id: &str, version: Hlc) -> u64 {
        self.index = self.index.saturating_add(1);
        self.stamps.insert(
            self.name(id),
            Stamp {
                version,
                index: self.index,
            },
        );
        self.index
    }

    /// The ids of every unit this record knows of: instances present or removed, and the
    /// policy ([`POLICY_UNIT`](super::health::POLICY_UNIT)) once set.
    pub fn unit_ids(&self) -> impl Iterator<Item = &Name> {
        self.stamps.keys()
    }

    /// How many units this record knows of ([`Record::unit_ids`]), in O(1).
    pub fn units_len(&self) -> usize {
        self.stamps.len()
    }

    /// Whether the service has no instances (the record is a tombstone).
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// The instance `id`, or `NotFound` naming the service and the id.
    pub fn instance(&self, id: &str) -> Result<&Instance> {
        self.instances
            .get(id)
            .map(Arc::as_ref)
            .ok_or_else(|| self.no_instance(id))
    }

    fn no_instance(&self, id: &str) -> Error {
        Error::not_found(format!("service {:?} has no instance {id:?}", self.service))
    }

    /// Registers instance `id`, or replaces it when it exists (idempotent).
    ///
    /// Replacing takes the new address, port, tags, metadata, weight and TTL, but keeps the
    /// instance's `registered_at` and reported status: registering again (a restart script, a
    /// retried request) must not wipe a maintenance state an operator set or the last measures.
    /// Registration counts as a heartbeat: it renews the TTL, and if TTL expiry had made the
    /// instance critical, the state and note from before the expiry come back.
    pub fn register(
        &mut self,
        id: &str,
        body: &RegisterBody,
        now: DateTime<Utc>,
    ) -> Result<Arc<Instance>> {
        let valid = body.validate(false)?;
        self.register_valid(id, valid, now)
    }

    /// `register` for input already checked by [`RegisterBody::validate`]; the prototype interface
    /// uses it for port-0 instances.
    pub(super) fn register_valid(
        &mut self,
        id: &str,
        valid: ValidRegistration,
        now: DateTime<Utc>,
    ) -> Result<Arc<Instance>> {
        validate_instance_id(id)?;
        // One look into the instances for everything the old instance decides: whether the
        // cap applies, the key to share, what carries over. Each look is a descent through
        // a map of up to 10,000 ids, comparing strings, on every write.
        let old = self
            .instances
            .get_key_value(id)
            .map(|(k, v)| (k.clone(), v.clone()));
        if old.is_none() && self.instances.len() >= MAX_INSTANCES {
            return Err(Error::invalid(format!(
                "service {:?} already has {MAX_INSTANCES} instances, the most one service may have; \
                 deregister some first",
                self.service
            )));
        }
        let name = match &old {
            Some((k, _)) => k.clone(),
            None => self.tombstone_name(id),
        };
        let restored = self.renew(&name, old.is_some(), now);
        remove_present(&mut self.removed, id);

        let instance = match old {
            Some((_, old)) => {
                // Only its registration time and status carry over: no copy of the rest (the
                // old instance is usually shared with the cached copy of the record).
                let mut status = old.status.clone();
                if let Some((state, note)) = restored {
                    status.state = state;
                    status.note = note;
                    status.updated_at = now;
                }
                Instance {
                    registered_at: old.registered_at,
                    status,
                    flapping: old.flapping,
                    ..valid.into_instance(&self.service, id, now)
                }
            }
            None => valid.into_instance(&self.service, id, now),
        };
        let instance = Arc::new(instance);
        self.instances.insert(name, Arc::clone(&instance));
        Ok(instance)
    }

    /// Renew instance `name`'s heartbeat at `now`, making its bookkeeping when it has none;
    /// returns the state and note TTL expiry had overwritten. `present`: whether the instance
    /// is (its bookkeeping then is too). A present one's is changed in one descent of the map,
    /// a new one's inserted in one: imbl's `entry` would look the key up first, and look it up
    /// again after inserting.
    fn renew(&mut self, name: &Name, present: bool, now: DateTime<Utc>) -> Option<(State, String)> {
        if present || self.liveness.contains_key(name) {
            if let Some(liveness) = self.liveness.get_mut(name) {
                liveness.last_seen = now;
                return liveness.expired_from.take();
            }
        }
        self.liveness.insert(name.clone(), Liveness::new(now));
        None
    }

    /// Removes instance `id`; `NotFound` when there is none. The record stays (see [`Record`]).
    pub fn deregister(&mut self, id: &str) -> Result<Instance> {
        let instance = self
            .instances
            .remove(id)
            .ok_or_else(|| self.no_instance(id))?;
        self.liveness.remove(id);
        Ok(Arc::unwrap_or_clone(instance))
    }

    /// Applies a status report to instance `id` and renews its TTL heartbeat.
    ///
    /// Fields the body omits keep their value; the exception is an instance TTL expiry made
    /// critical: an omitted state or note comes back to what it was before the expiry, since the
    /// heartbeat shows the instance is alive again. `NotFound` for an unknown instance; nothing
    /// changes when the body is invalid.
    pub fn report(&mut self, id: &str, body: &StatusBody, now: DateTime<Utc>) -> Result<&Instance> {
        body.validate()?;
        let name = self.name(id);
        let Some(instance) = self.instances.get_mut(id) else {
            return Err(no_instance(&self.service, id));
        };
        let instance = Arc::make_mut(instance);
        let liveness = self
            .liveness
            .entry(name)
            .or_insert_with(|| Liveness::new(now));
        if let Some((state, note)) = liveness.expired_from.take() {
            instance.status.state = state;
            instance.status.note = note;
        }
        liveness.last_seen = now;
        let shown = instance.status.state;
        body.apply(&mut instance.status, now);
        if let Some(reported) = body.state {
            // The thresholds and flap damping decide what the report shows.
            let health = &mut liveness.health;
            instance.status.state = health.observe(shown, reported, &self.policy, now);
            instance.flapping = health.is_flapping();
        }
        Ok(instance)
    }

    /// A record of the 0.1.0 layout (one stored value per service), for the upgrade.
    pub fn from_legacy_bytes(bytes: &[u8]) -> Result<Self> {
        super::codec::decode(bytes)
    }
}

/// One entry of `GET /v1/services` (`svc list`): a service, how many instances it has, and how
/// many of them are in each state.
///
/// It travels between agents (ring RPC) as well as to clients, and the catalog watch stream
/// compares summaries with `!=`: a change of the counts by state is a change of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSummary {
    /// The service name.
    pub service: String,
    /// Number of instances (0 for an emptied record).
    pub instances: usize,
    /// Instances whose status state is `passing`.
    pub passing: usize,
    /// Instances whose status state is `warning`.
    pub warning: usize,
    /// Instances whose status state is `critical`.
    pub critical: usize,
    /// Instances whose status state is `maintenance`.
    pub maintenance: usize,
}

impl ServiceSummary {
    /// A summary of `service` with no instances.
    pub fn empty(service: impl Into<String>) -> Self {
        ServiceSummary {
            service: service.into(),
            instances: 0,
            passing: 0,
            warning: 0,
            critical: 0,
            maintenance: 0,
        }
    }

    /// Counts one more instance in `state`.
    pub fn count(&mut self, state: State) {
        self.instances += 1;
        let by_state = match state {
            State::Passing => &mut self.passing,
            State::Warning => &mut self.warning,
            State::Critical => &mut self.critical,
            State::Maintenance => &mut self.maintenance,
        };
        *by_state += 1;
    }
}

/// The answer of a discovery without `pick` (`GET /v1/services/{service}`, `svc discover`,
/// `status query SERVICE`): `{"service", "instances": [INSTANCE...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Discovery {
    /// The service name.
    pub service: String,
    /// The matching instances, by id.
    pub instances: Vec<Instance>,
}

impl Record {
    /// This record's entry in the service list: its instances counted by their status state.
    pub fn summary(&self) -> ServiceSummary {
        let mut summary = ServiceSummary::empty(self.service.clone());
        for instance in self.instances.values() {
            summary.count(instance.status.state);
        }
        summary
    }
}

/// The `NotFound` for an unknown instance, naming the service and the id.
fn no_instance(service: &str, id: &str) -> Error {
    Error::not_found(format!("service {service:?} has no instance {id:?}"))
}

/// Maps a JSON body parse failure to a 400 that says what was wrong.
fn parse_body<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    // One check of the whole body rather than serde_json's of each string in it; a body that
    // is not UTF-8 is parsed as bytes, for the same error as always.
    let parsed = match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(bytes),
    };
    parsed.map_err(|e| Error::invalid(format!("invalid {what} body: {e}")))
}

fn default_weight() -> i64 {
    1
}

/// The body of `PUT /v1/services/{service}/instances/{id}`.
///
/// Numbers are wide signed integers so that an out-of-range value reaches validation and gets a
/// precise message (`port must be 1-65535, got 70000`) rather than a generic type error.
/// Unknown fields are ignored (forward compatibility); missing required ones are a 400 naming
/// the field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterBody {
    /// Host name or IP (required).
    pub address: String,
    /// Port, 1–65535 (required).
    pub port: i64,
    /// Labels; default none.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Key/value pairs; default none.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Weight, 0–10000; default 1.
    #[serde(default = "default_weight")]
    pub weight: i64,
    /// Heartbeat TTL in seconds (1 s to one year); default none (never expires).
    #[serde(default)]
    pub ttl_secs: Option<i64>,
}

/// A registration that passed validation, narrowed to the stored types.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRegistration {
    address: String,
    port: u16,
    tags: Vec<String>,
    metadata: Metadata,
    weight: u32,
    ttl_secs: Option<u64>,
}

impl ValidRegistration {
    fn into_instance(self, service: &str, id: &str, now: DateTime<Utc>) -> Instance {
        Instance {
            service: service.to_string(),
            id: id.to_string(),
            address: self.address,
            port: self.port,
            tags: self.tags,
            metadata: self.metadata,
            weight: self.weight,
            ttl_secs: self.ttl_secs,
            registered_at: now,
            status: Status::new(now),
            flapping: false,
        }
    }
}

impl RegisterBody {
    /// A body with the defaults for everything but address and port.
    pub fn new(address: impl Into<String>, port: i64) -> Self {
        RegisterBody {
            address: address.into(),
            port,
            tags: Vec::new(),
            metadata: BTreeMap::new(),
            weight: default_weight(),
            ttl_secs: None,
        }
    }

    /// Parses a request body; a 400 naming the problem when it is not valid JSON of this shape.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        parse_body("registration", bytes)
    }

    /// The default instance id, `ADDRESS:PORT`.
    pub fn default_id(&self) -> String {
        format!("{}:{}", self.address, self.port)
    }

    /// Checks every field. Port 0 passes only with `allow_port_zero`, which only the
    /// prototype-compatible interface sets.
    pub fn validate(&self, allow_port_zero: bool) -> Result<ValidRegistration> {
        let (port, weight, ttl_secs) = self.checked(allow_port_zero)?;
        Ok(ValidRegistration {
            address: self.address.clone(),
            port,
            tags: self.tags.clone(),
            metadata: Metadata::from(self.metadata.clone()),
            weight,
            ttl_secs,
        })
    }

    /// [`RegisterBody::validate`] without building the result: for an early answer to bad
    /// input before the body travels to the record's owner.
    pub fn check(&self, allow_port_zero: bool) -> Result<()> {
        self.checked(allow_port_zero).map(|_| ())
    }

    /// Every field checked: the port, weight and TTL as stored.
    fn checked(&self, allow_port_zero: bool) -> Result<(u16, u32, Option<u64>)> {
        validate_address(&self.address)?;
        let port = validate_port(self.port, allow_port_zero)?;
        validate_tags(&self.tags)?;
        validate_metadata(&self.metadata)?;
        let weight = validate_weight(self.weight)?;
        let ttl_secs = self.ttl_secs.map(validate_ttl).transpose()?;
        Ok((port, weight, ttl_secs))
    }
}

/// The body of `PUT /v1/services/{service}/instances/{id}/status`: every field optional, an
/// omitted field keeps its current value. Unknown fields are ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusBody {
    /// New state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
    /// New load, finite and ≥ 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<f64>,
    /// New success rate, 0–1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<f64>,
    /// New latency in milliseconds, finite and ≥ 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// New frequency, finite and ≥ 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency: Option<f64>,
    /// New note, at most 1024 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl StatusBody {
    /// Parses a request body; a 400 naming the problem when it is not valid JSON of this shape.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        parse_body("status", bytes)
    }

    /// Checks every field that is present.
    pub fn validate(&self) -> Result<()> {
        if let Some(v) = self.load {
            validate_non_negative("load", v)?;
        }
        if let Some(v) = self.success_rate {
            validate_rate("success_rate", v)?;
        }
        if let Some(v) = self.latency_ms {
            validate_non_negative("latency_ms", v)?;
        }
        if let Some(v) = self.frequency {
            validate_non_negative("frequency", v)?;
        }
        if let Some(note) = &self.note {
            validate_note(note)?;
        }
        Ok(())
    }

    /// Writes the present fields into `status` and stamps it; the body must be valid.
    fn apply(&self, status: &mut Status, now: DateTime<Utc>) {
        if let Some(state) = self.state {
            status.state = state;
        }
        if let Some(v) = self.load {
            status.load = v;
        }
        if let Some(v) = self.success_rate {
            status.success_rate = v;
        }
        if let Some(v) = self.latency_ms {
            status.latency_ms = v;
        }
        if let Some(v) = self.frequency {
            status.frequency = v;
        }
        if let Some(note) = &self.note {
            status.note = note.clone();
        }
        status.updated_at = now;
    }
}

#[cfg(test)]
pub(super) mod tests {

    /// Metadata replaced a `BTreeMap`: every encoding must give the bytes the map gave, so
    /// that stored units, ring messages and the JSON API do not change.
    #[test]
    fn metadata_encodes_exactly_as_the_map_it_replaced() {
        let map = BTreeMap::from([
            ("zone".to_string(), "eu-1".to_string()),
            ("a".to_string(), "first".to_string()),
            ("quote\"d".to_string(), "v\n".to_string()),
        ]);
        let meta = Metadata::from(map.clone());
        assert_eq!(
            serde_json::to_string(&meta).expect("json"),
            serde_json::to_string(&map).expect("json")
        );
        let bytes = postcard::to_allocvec(&map).expect("postcard");
        assert_eq!(postcard::to_allocvec(&meta).expect("postcard"), bytes);
        assert_eq!(
            postcard::from_bytes::<Metadata>(&bytes).expect("decode"),
            meta
        );
        // 0.1.0's records: bincode with the codec's options (varint lengths).
        use bincode::Options;
        let opts = bincode::DefaultOptions::new;
        let old = opts().serialize(&map).expect("bincode");
        assert_eq!(opts().serialize(&meta).expect("bincode"), old);
        assert_eq!(opts().deserialize::<Metadata>(&old).expect("decode"), meta);
        let back: Metadata = serde_json::from_str(r#"{"b":"2","a":"1","b":"3"}"#).expect("json");
        assert_eq!(
            back,
            Metadata::from_iter([("a", "1"), ("b", "3")]),
            "a map's rules"
        );
        assert_eq!(
            (meta.get("zone"), meta.get("nope"), meta.len()),
            (Some("eu-1"), None, 3)
        );
        assert_eq!(Metadata::default(), Metadata::from(BTreeMap::new()));
    }

    /// The timestamps written as one string are byte for byte what chrono writes, in JSON and
    /// in the ring's binary encoding, for every precision chrono picks (and a leap second).
    #[test]
    fn timestamps_serialize_exactly_as_chrono_writes_them() {
        use chrono::NaiveDate;
        let day = NaiveDate::from_ymd_opt(2026, 12, 7).unwrap();
        let times = [
            Utc.from_utc_datetime(&day.and_hms_opt(20, 1, 2).unwrap()),
            Utc.from_utc_datetime(&day.and_hms_milli_opt(20, 1, 2, 340).unwrap()),
            Utc.from_utc_datetime(&day.and_hms_micro_opt(20, 1, 2, 345_600).unwrap()),
            Utc.from_utc_datetime(&day.and_hms_nano_opt(20, 1, 2, 345_678_901).unwrap()),
            Utc.from_utc_datetime(&day.and_hms_nano_opt(23, 59, 59, 1_500_000_000).unwrap()),
            Utc.timestamp_opt(0, 0).unwrap(),
        ];
        for t in times {
            let ours = super::rfc3339::Field(&t);
            assert_eq!(
                serde_json::to_string(&ours).unwrap(),
                serde_json::to_string(&t).unwrap()
            );
            assert_eq!(
                postcard::to_stdvec(&ours).unwrap(),
                postcard::to_stdvec(&t).unwrap()
            );
        }
    }

    /// Removing an id a shared map does not hold leaves it shared: nothing is copied.
    #[test]
    fn removing_an_absent_id_copies_nothing() {
        let map: OrdMap<Name, u32> = (0..1000u32)
            .map(|i| (Name::from(format!("i{i:04}")), i))
            .collect();
        let mut copy = map.clone();
        assert_eq!(remove_present(&mut copy, "absent"), None);
        assert!(
            copy.ptr_eq(&map),
            "the absent id made the map copy its path"
        );
        assert_eq!(remove_present(&mut copy, "i0500"), Some(500));
        assert!(!copy.ptr_eq(&map) && copy.len() == 999 && map.len() == 1000);
    }

    use super::*;
    use chrono::TimeZone;

    /// A fixed instant plus `secs` seconds.
    pub(crate) fn at(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 14, 0, 0).unwrap() + chrono::TimeDelta::seconds(secs)
    }

    pub(crate) fn record() -> Record {
        Record::new("payments", Some("10.212.228.136".into())).unwrap()
    }

    #[test]
    fn state_parses_lowercase_names_and_rejects_others_clearly() {
        for state in State::ALL {
            assert_eq!(state.as_str().parse::<State>(), Ok(state));
            assert_eq!(state.to_string(), state.as_str());
        }
        assert_eq!(
            "Passing".parse::<State>(),
            Err(Error::invalid(
                "unknown state \"Passing\": expected passing, warning, critical or maintenance"
            ))
        );
        assert!(serde_json::from_str::<State>("\"ok\"").is_err());
        assert_eq!(
            serde_json::to_string(&State::Maintenance).unwrap(),
            "\"maintenance\""
        );
    }

    #[test]
    fn instance_serializes_with_the_documented_field_names() {
        let mut r = record();
        let mut body = RegisterBody::new("10.0.0.7", 8080);
        body.tags = vec!["v2".into()];
        body.metadata = BTreeMap::from([("zone".into(), "a".into())]);
        body.ttl_secs = Some(30);
        r.register("10.0.0.7:8080", &body, at(0)).unwrap();
        let report = StatusBody {
            load: Some(0.25),
            success_rate: Some(0.99),
            latency_ms: Some(12.5),
            frequency: Some(30.0),
            ..StatusBody::default()
        };
        let inst = r.report("10.0.0.7:8080", &report, at(5)).unwrap();
        let json = serde_json::to_value(inst).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "service": "payments", "id": "10.0.0.7:8080", "address": "10.0.0.7", "port": 8080,
                "tags": ["v2"], "metadata": {"zone": "a"}, "weight": 1, "ttl_secs": 30,
                "registered_at": "2026-11-25T14:00:00Z",
                "status": {"state": "passing", "load": 0.25, "success_rate": 0.99,
                           "latency_ms": 12.5, "frequency": 30.0, "note": "",
                           "updated_at": "2026-11-25T14:00:05Z"}
            })
        );
        let back: Instance = serde_json::from_value(json).unwrap();
        assert_eq!(&back, inst);
        // Between agents (postcard, positional), flapping or not.
        for flapping in [false, true] {
            let mut inst = inst.clone();
            inst.flapping = flapping;
            let wire = postcard::to_allocvec(&inst).unwrap();
            assert_eq!(postcard::from_bytes::<Instance>(&wire).unwrap(), inst);
            let json = serde_json::to_value(&inst).unwrap();
            assert_eq!(json.get("flapping").is_some(), flapping);
        }
    }

    #[test]
    fn stamp_moves_the_index_and_keeps_the_version_per_instance() {
        let mut r = record();
        let v = |ms| Hlc {
            wall_ms: ms,
            logical: 0,
            node: 1,
        };
        assert_eq!(r.stamp("a", v(5)), 1);
        assert_eq!(r.stamp("b", v(3)), 2);
        assert_eq!(r.version_of("a"), Some(v(5)));
        assert_eq!(r.version_of("b"), Some(v(3)));
        assert_eq!(r.version_of("c"), None);
        assert_eq!(r.index, 2);
    }

    #[test]
    fn new_record_checks_the_service_name() {
        assert!(Record::new("bad/name", None).is_err());
        let r = Record::new("ok", None).unwrap();
        assert!(r.is_empty());
        assert_eq!(r.index, 0);
    }

    #[test]
    fn register_creates_a_passing_instance_with_zeros() {
        let mut r = record();
        let inst = r
            .register("a", &RegisterBody::new("10.0.0.7", 8080), at(0))
            .unwrap()
            .clone();
        assert_eq!(inst.service, "payments");
        assert_eq!(inst.id, "a");
        assert_eq!(inst.weight, 1);
        assert_eq!(inst.ttl_secs, None);
        assert_eq!(inst.registered_at, at(0));
        assert_eq!(inst.status, Status::new(at(0)));
        assert_eq!(r.index, 0, "register leaves the index alone");
        assert_eq!(r.version_of("a"), None, "and the version");
    }

    #[test]
    fn register_rejects_bad_input_without_changing_anything() {
        let mut r = record();
        let before = r.clone();
        assert_eq!(
            r.register("a", &RegisterBody::new("h", 70000), at(0))
                .unwrap_err(),
            Error::invalid("port must be 1-65535, got 70000")
        );
        assert!(r.register("a", &RegisterBody::new("h", 0), at(0)).is_err());
        assert!(r
            .register("a/b", &RegisterBody::new("h", 1), at(0))
            .is_err());
        let mut heavy = RegisterBody::new("h", 1);
        heavy.weight = 10_001;
        assert!(r.register("a", &heavy, at(0)).is_err());
        assert_eq!(r, before);
    }

    #[test]
    fn instances_per_service_are_capped_but_existing_ones_can_be_replaced() {
        let mut r = record();
        for i in 0..MAX_INSTANCES {
            r.register(&format!("i{i}"), &RegisterBody::new("h", 1), at(0))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let err = r
            .register("one-more", &RegisterBody::new("h", 1), at(0))
            .unwrap_err();
        assert_eq!(err.http_status(), 400);
        assert!(err.to_string().contains("10000 instances"), "{err}");
        assert!(r.register("i7", &RegisterBody::new("h2", 2), at(1)).is_ok());
        assert_eq!(r.instances.len(), MAX_INSTANCES);
    }

    #[test]
    fn register_again_replaces_data_but_keeps_registered_at_and_status() {
        let mut r = record();
        r.register("a", &RegisterBody::new("10.0.0.7", 8080), at(0))
            .unwrap();
        let maintenance = StatusBody {
            state: Some(State::Maintenance),
            latency_ms: Some(7.0),
            ..StatusBody::default()
        };
        r.report("a", &maintenance, at(1)).unwrap();
        let mut again = RegisterBody::new("10.0.0.8", 9090);
        again.tags = vec!["v3".into()];
        again.weight = 5;
        let inst = r.register("a", &again, at(2)).unwrap();
        assert_eq!((inst.address.as_str(), inst.port), ("10.0.0.8", 9090));
        assert_eq!(inst.tags, vec!["v3".to_string()]);
        assert_eq!(inst.weight, 5);
        assert_eq!(inst.registered_at, at(0));
        assert_eq!(inst.status.state, State::Maintenance);
        assert_eq!(inst.status.latency_ms, 7.0);
        assert_eq!(r.instances.len(), 1);
    }

    #[test]
    fn register_is_idempotent() {
        let mut r = record();
        let body = RegisterBody::new("10.0.0.7", 8080);
        r.register("a", &body, at(0)).unwrap();
        let once = r.clone();
        r.register("a", &body, at(0)).unwrap();
        assert_eq!(r, once);
    }

    #[test]
    fn deregister_removes_and_unknown_is_not_found() {
        let mut r = record();
        r.register("a", &RegisterBody::new("h", 1), at(0)).unwrap();
        assert_eq!(r.deregister("a").unwrap().id, "a");
        assert!(r.is_empty());
        assert_eq!(r.gvip.as_deref(), Some("10.212.228.136"), "gVip survives");
        assert_eq!(
            r.deregister("a").unwrap_err(),
            Error::not_found("service \"payments\" has no instance \"a\"")
        );
    }

    #[test]
    fn report_updates_only_given_fields_and_stamps_time() {
        let mut r = record();
        r.register("a", &RegisterBody::new("h", 1), at(0)).unwrap();
        let first = StatusBody {
            state: Some(State::Warning),
            load: Some(0.5),
            note: Some("slow disk".into()),
            ..StatusBody::default()
        };
        r.report("a", &first, at(3)).unwrap();
        let second = StatusBody {
            success_rate: Some(0.9),
            ..StatusBody::default()
        };
        let s = &r.report("a", &second, at(4)).unwrap().status;
        assert_eq!(s.state, State::Warning);
        assert_eq!(s.load, 0.5);
        assert_eq!(s.success_rate, 0.9);
        assert_eq!(s.note, "slow disk");
        assert_eq!(s.updated_at, at(4));
    }

    #[test]
    fn report_to_unknown_instance_is_not_found() {
        let mut r = record();
        assert!(matches!(
            r.report("nope", &StatusBody::default(), at(0)),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn invalid_report_changes_nothing() {
        let mut r = record();
        r.register("a", &RegisterBody::new("h", 1), at(0)).unwrap();
        let before = r.clone();
        let bad = StatusBody {
            state: Some(State::Critical),
            success_rate: Some(1.5),
            ..StatusBody::default()
        };
        assert_eq!(
            r.report("a", &bad, at(1)).unwrap_err(),
            Error::invalid("success_rate must be between 0 and 1, got 1.5")
        );
        assert_eq!(r, before);
    }

    #[test]
    fn register_body_defaults_ignores_unknown_fields_and_names_missing_ones() {
        let body = RegisterBody::from_json(br#"{"address":"h","port":80,"extra":true}"#).unwrap();
        assert_eq!(body, RegisterBody::new("h", 80));
        assert_eq!(body.default_id(), "h:80");
        let err = RegisterBody::from_json(br#"{"port":80}"#).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidInput(m) if m.contains("missing field `address`")),
            "{err:?}"
        );
        let err = RegisterBody::from_json(b"not json").unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)));
        let body = RegisterBody::from_json(br#"{"address":"h","port":70000}"#).unwrap();
        assert_eq!(
            body.validate(false).unwrap_err(),
            Error::invalid("port must be 1-65535, got 70000")
        );
        let body = RegisterBody::from_json(br#"{"address":"h","port":80,"ttl_secs":null}"#);
        assert_eq!(body.unwrap().ttl_secs, None);
    }

    #[test]
    fn a_body_that_is_not_utf8_is_refused_as_serde_json_refuses_it() {
        let bad: &[u8] = b"{\"address\":\"h\xff\",\"port\":80}";
        let err = RegisterBody::from_json(bad).unwrap_err();
        let serde = serde_json::from_slice::<RegisterBody>(bad).unwrap_err();
        assert_eq!(
            err,
            Error::invalid(format!("invalid registration body: {serde}"))
        );
        // Text, escapes and all, parses as serde_json parses the same bytes.
        let good = "{\"address\":\"h\\u00e9\u{e9}\",\"port\":80,\"tags\":[\"\\\"\"]}";
        assert_eq!(
            RegisterBody::from_json(good.as_bytes()).unwrap(),
            serde_json::from_slice::<RegisterBody>(good.as_bytes()).unwrap()
        );
    }

    #[test]
    fn status_body_fields_are_optional_and_state_is_checked() {
        assert_eq!(StatusBody::from_json(b"{}").unwrap(), StatusBody::default());
        let body = StatusBody::from_json(br#"{"state":"warning","load":1.5,"x":1}"#).unwrap();
        assert_eq!(body.state, Some(State::Warning));
        assert_eq!(body.load, Some(1.5));
        let err = StatusBody::from_json(br#"{"state":"sleepy"}"#).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidInput(m) if m.contains("unknown variant `sleepy`")),
            "{err:?}"
        );
    }

    #[test]
    fn summary_counts_instances_and_discovery_has_the_documented_shape() {
        let mut r = record();
        assert_eq!(
            serde_json::to_value(r.summary()).unwrap(),
            serde_json::json!({"service": "payments", "instances": 0, "passing": 0,
                               "warning": 0, "critical": 0, "maintenance": 0})
        );
        r.register("a", &RegisterBody::new("h", 1), at(0)).unwrap();
        assert_eq!(r.summary().instances, 1);
        assert_eq!(r.summary().passing, 1, "a new instance is passing");
        let d = Discovery {
            service: r.service.clone(),
            instances: r.instances.values().map(|i| Instance::clone(i)).collect(),
        };
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["service"], "payments");
        assert_eq!(json["instances"][0]["id"], "a");
    }

    #[test]
    fn summary_counts_instances_by_their_state_and_differs_when_a_state_changes() {
        let mut r = record();
        for id in ["a", "b", "c", "d", "e"] {
            r.register(id, &RegisterBody::new("h", 1), at(0)).unwrap();
        }
        let report = |state| StatusBody {
            state: Some(state),
            ..StatusBody::default()
        };
        r.report("b", &report(State::Warning), at(1)).unwrap();
        r.report("c", &report(State::Critical), at(1)).unwrap();
        r.report("d", &report(State::Critical), at(1)).unwrap();
        let before = r.summary();
        r.report("e", &report(State::Maintenance), at(2)).unwrap();
        let after = r.summary();
        assert_eq!(
            serde_json::to_value(&after).unwrap(),
            serde_json::json!({"service": "payments", "instances": 5, "passing": 1,
                               "warning": 1, "critical": 2, "maintenance": 1})
        );
        // The catalog watch compares summaries: a state change with the same number of
        // instances is a change.
        assert_eq!(before.instances, after.instances);
        assert_ne!(before, after);
        // It crosses the ring as postcard.
        let bytes = postcard::to_allocvec(&after).unwrap();
        assert_eq!(
            postcard::from_bytes::<ServiceSummary>(&bytes).unwrap(),
            after
        );
    }
}
