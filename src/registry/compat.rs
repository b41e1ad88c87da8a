//! The prototype's service model, for the prototype-compatible routes (API.md, last section;
//! PROTOTYPE.md has the exchanges clients depend on).
//!
//! The prototype knew services by name (`sName`) and instances by a bare IP (`lSip`), and gave each
//! service a virtual IP (gVip) `10.212.A.B`. Here an `lSip` instance is an ordinary [`Instance`](super::Instance)
//! whose id and address are the `lSip` and whose port is 0, the only way a port-0 instance comes
//! to exist. The HTTP layer does the I/O; this module holds the shapes, texts and rules.

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize, Serializer};

use super::model::{Record, RegisterBody, StatusBody};
use super::validate::{validate_address, validate_instance_id, validate_service};
use crate::{Error, Result};

/// Reply text of a registration that created the instance.
pub const REGISTERED: &str = "success";
/// Reply text of a registration of an instance that already exists.
pub const ALREADY_REGISTERED: &str = "already register";
/// Reply text of a cancellation that removed the instance.
pub const CANCEL_DELETED: &str = "The service instance has been deleted";
/// Reply text of a cancellation of an unknown instance of a known service.
pub const CANCEL_NO_INSTANCE: &str = "The service instance does not exist";
/// Reply text of a cancellation for an unknown service.
pub const CANCEL_NO_SERVICE: &str = "The service type does not exist";
/// The gVip `resolution` answers for an unknown service.
pub const NO_GVIP: &str = "0.0.0.0";
/// How many gVips exist: `10.212.A.B` with A in 0–255 and B in 2–254.
pub const GVIP_SPACE: usize = 256 * 253;
/// Random draws [`generate_gvip`] makes before it scans the whole space for a free gVip.
pub const GVIP_RANDOM_ATTEMPTS: usize = 64;

/// Draws a gVip `10.212.A.B`, A uniform in 0–255 and B in 2–254, without checking uniqueness.
pub fn random_gvip<R: Rng + ?Sized>(rng: &mut R) -> String {
    let a: u8 = rng.gen();
    let b: u8 = rng.gen_range(2..=254);
    format!("10.212.{a}.{b}")
}

/// Draws a gVip that `is_taken` says is free.
///
/// Tries [`GVIP_RANDOM_ATTEMPTS`] random draws (the prototype's distribution), then walks the
/// whole space from a random starting point so that a nearly full space still yields its last
/// free addresses. `Unavailable` when all [`GVIP_SPACE`] addresses are taken. `is_taken` may be
/// called up to `GVIP_RANDOM_ATTEMPTS + GVIP_SPACE` times, so it should be a cheap lookup.
pub fn generate_gvip<R, F>(rng: &mut R, mut is_taken: F) -> Result<String>
where
    R: Rng + ?Sized,
    F: FnMut(&str) -> bool,
{
    for _ in 0..GVIP_RANDOM_ATTEMPTS {
        let gvip = random_gvip(rng);
        if !is_taken(&gvip) {
            return Ok(gvip);
        }
    }
    let start = rng.gen_range(0..GVIP_SPACE);
    for step in 0..GVIP_SPACE {
        let n = (start + step) % GVIP_SPACE;
        let gvip = format!("10.212.{}.{}", n / 253, n % 253 + 2);
        if !is_taken(&gvip) {
            return Ok(gvip);
        }
    }
    Err(Error::unavailable(format!(
        "no free gVip: all {GVIP_SPACE} addresses 10.212.0-255.2-254 are taken"
    )))
}

/// Whether `s` is a gVip the prototype could have drawn (`10.212.A.B`, A 0–255, B 2–254,
/// canonical decimal).
pub fn is_gvip(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("10.212.") else {
        return false;
    };
    let Some((a, b)) = rest.split_once('.') else {
        return false;
    };
    let canonical = |part: &str| part.parse::<u8>().ok().filter(|n| n.to_string() == part);
    matches!((canonical(a), canonical(b)), (Some(_), Some(b)) if (2..=254).contains(&b))
}

/// The body of `POST /services/register/` and `/services/registercancel/`, JSON whatever the
/// Content-Type says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrototypeBody {
    /// The service name.
    #[serde(rename = "sName")]
    pub service: String,
    /// The instance's IP: its id and address.
    #[serde(rename = "lSip")]
    pub lsip: String,
}

impl PrototypeBody {
    /// Parses and checks a body: a 400 that says what was wrong when it is not JSON with string
    /// fields `sName` (a valid service name) and `lSip` (a valid instance id and address).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let body: PrototypeBody = serde_json::from_slice(bytes)
            .map_err(|e| Error::invalid(format!("invalid body: {e}")))?;
        validate_service(&body.service)?;
        validate_lsip(&body.lsip)?;
        Ok(body)
    }
}

/// Checks an `lSip`: it must be both a valid instance id and a valid address.
pub fn validate_lsip(lsip: &str) -> Result<()> {
    validate_instance_id(lsip)?;
    validate_address(lsip)
}

/// What `POST /services/register/` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterOutcome {
    /// The instance was created.
    Registered,
    /// The instance existed and was left as it was.
    AlreadyRegistered,
}

impl RegisterOutcome {
    /// The prototype's reply text.
    pub fn text(self) -> &'static str {
        match self {
            RegisterOutcome::Registered => REGISTERED,
            RegisterOutcome::AlreadyRegistered => ALREADY_REGISTERED,
        }
    }
}

/// Registers the `lSip` instance (id and address `lsip`, port 0) unless an instance with that id
/// exists, which is then left untouched (the prototype's "already register"). The caller creates
/// the record, with a fresh gVip, when the service is new.
pub fn register_lsip(
    record: &mut Record,
    lsip: &str,
    now: DateTime<Utc>,
) -> Result<RegisterOutcome> {
    validate_lsip(lsip)?;
    if record.instances.contains_key(lsip) {
        return Ok(RegisterOutcome::AlreadyRegistered);
    }
    let valid = RegisterBody::new(lsip, 0).validate(true)?;
    record.register_valid(lsip, valid, now)?;
    Ok(RegisterOutcome::Registered)
}

/// What `POST /services/registercancel/` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The instance was removed.
    Deleted,
    /// The service exists but has no such instance.
    NoInstance,
    /// The service does not exist.
    NoService,
}

impl CancelOutcome {
    /// The prototype's reply text.
    pub fn text(self) -> &'static str {
        match self {
            CancelOutcome::Deleted => CANCEL_DELETED,
            CancelOutcome::NoInstance => CANCEL_NO_INSTANCE,
            CancelOutcome::NoService => CANCEL_NO_SERVICE,
        }
    }
}

/// Removes the instance `lsip` from `record` (`None`: the service has no record).
///
/// A record emptied earlier (a tombstone) still counts as an existing service, as the prototype's
/// emptied Redis entry did: the answer is "instance does not exist".
pub fn cancel_lsip(record: Option<&mut Record>, lsip: &str) -> CancelOutcome {
    match record {
        None => CancelOutcome::NoService,
        Some(record) => match record.deregister(lsip) {
            Ok(_) => CancelOutcome::Deleted,
            Err(_) => CancelOutcome::NoInstance,
        },
    }
}

/// The JSON of `GET /services/resolution/`: `{"gVip":"10.212.x.y","msg":"Success"}`, or
/// `{"gVip":"0.0.0.0","msg":"Failed"}` for `None` (unknown service, or a record without gVip).
pub fn resolution_json(gvip: Option<&str>) -> String {
    let (gvip, msg) = match gvip {
        Some(g) => (g, "Success"),
        None => (NO_GVIP, "Failed"),
    };
    serde_json::json!({ "gVip": gvip, "msg": msg }).to_string()
}

/// Writes a measure as the prototype did: `0` for a value never reported (zero), otherwise a
/// number with a fractional part (`30.0`).
///
/// The prototype stored integer zeros at registration and Python floats from reports. The model
/// keeps f64 only, so an exact zero is written as the integer `0`: exact for new instances; a
/// reported 0 also comes back as `0` where the prototype wrote `0.0`, the same JSON number.
fn prototype_number<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    if *value == 0.0 {
        serializer.serialize_u64(0)
    } else {
        serializer.serialize_f64(*value)
    }
}

/// One entry of `Service_instance` in the prototype's servicestate document.
///
/// Fields are declared in alphabetical order, the order Flask's sorted keys produce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrototypeInstanceState {
    /// The instance's id (its IP for `lSip` instances).
    #[serde(rename = "Lsip")]
    pub lsip: String,
    /// Request frequency.
    #[serde(serialize_with = "prototype_number")]
    pub frequency: f64,
    /// Latency in milliseconds.
    #[serde(serialize_with = "prototype_number")]
    pub latency: f64,
    /// Success rate, 0–1.
    #[serde(serialize_with = "prototype_number")]
    pub success_rate: f64,
}

/// The prototype's servicestate document, answered by `GET /services/servicestate` and
/// `GET /service_status_storage`:
/// `{"Gvip", "Service_instance": [{"Lsip", "frequency", "latency", "success_rate"}], "Sname"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceState {
    /// The service's gVip (`0.0.0.0` if the record has none).
    #[serde(rename = "Gvip")]
    pub gvip: String,
    /// Every instance of the service, by id. Instances registered through the v1 API are listed
    /// too, with their id as `Lsip`, so prototype clients can report their status by that id.
    #[serde(rename = "Service_instance")]
    pub instances: Vec<PrototypeInstanceState>,
    /// The service name.
    #[serde(rename = "Sname")]
    pub service: String,
}

impl ServiceState {
    /// The document for `record`, current as of the record.
    pub fn of(record: &Record) -> Self {
        ServiceState {
            gvip: record.gvip.clone().unwrap_or_else(|| NO_GVIP.to_string()),
            instances: record
                .instances
                .values()
                .map(|inst| PrototypeInstanceState {
                    lsip: inst.id.clone(),
                    frequency: inst.status.frequency,
                    latency: inst.status.latency_ms,
                    success_rate: inst.status.success_rate,
                })
                .collect(),
            service: record.service.clone(),
        }
    }

    /// The document as the prototype wrote it: two-space indentation and a final newline.
    pub fn to_json_pretty(&self) -> Result<String> {
        serde_json::to_string_pretty(self)
            .map(|mut s| {
                s.push('\n');
                s
            })
            .map_err(|e| Error::internal(format!("cannot serialize servicestate: {e}")))
    }
}

/// The query of `GET /service_status_storage?sname=S&Lsip=L&success_rate=R&latency=MS&frequency=F`.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusStorageQuery {
    /// `sname`: the service (required).
    pub service: String,
    /// `Lsip`: the instance id (required).
    pub lsip: String,
    /// `success_rate`, 0–1; omitted keeps the current value.
    pub success_rate: Option<f64>,
    /// `latency` in milliseconds, ≥ 0; omitted keeps the current value.
    pub latency: Option<f64>,
    /// `frequency`, ≥ 0; omitted keeps the current value.
    pub frequency: Option<f64>,
}

impl StatusStorageQuery {
    /// Parses the query parameters (decoded name/value pairs; for a repeated name the first
    /// wins). `sname` and `Lsip` are required; a measure that is not a finite number in range is
    /// `InvalidInput` naming it (the prototype crashed with a 500 here).
    pub fn from_params<'a, I>(params: I) -> Result<Self>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let (mut service, mut lsip, mut success_rate, mut latency, mut frequency) =
            (None, None, None, None, None);
        for (name, value) in params {
            let slot = match name {
                "sname" => &mut service,
                "Lsip" => &mut lsip,
                "success_rate" => &mut success_rate,
                "latency" => &mut latency,
                "frequency" => &mut frequency,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value);
            }
        }
        let service = service
            .ok_or_else(|| Error::invalid("missing query parameter sname"))?
            .to_string();
        validate_service(&service)?;
        let lsip = lsip
            .ok_or_else(|| Error::invalid("missing query parameter Lsip"))?
            .to_string();
        validate_instance_id(&lsip)?;
        let number = |name: &str, value: Option<&str>| -> Result<Option<f64>> {
            value
                .map(|v| {
                    v.trim()
                        .parse::<f64>()
                        .map_err(|_| Error::invalid(format!("{name} must be a number, got {v:?}")))
                })
                .transpose()
        };
        let query = StatusStorageQuery {
            service,
            lsip,
            success_rate: number("success_rate", success_rate)?,
            latency: number("latency", latency)?,
            frequency: number("frequency", frequency)?,
        };
        // Check ranges here so the message names the prototype's parameter (`latency`).
        let body = query.to_status_body();
        if let Some(v) = query.latency {
            super::validate::validate_non_negative("latency", v)?;
        }
        body.validate()?;
        Ok(query)
    }

    /// The equivalent v1 status report (state and note unchanged).
    pub fn to_status_body(&self) -> StatusBody {
        StatusBody {
            success_rate: self.success_rate,
            latency_ms: self.latency,
            frequency: self.frequency,
            ..StatusBody::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::model::tests::{at, record};
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::collections::HashSet;

    #[test]
    fn random_gvips_have_the_prototype_format_and_range() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut seen_a = HashSet::new();
        let mut seen_b = HashSet::new();
        for _ in 0..20_000 {
            let g = random_gvip(&mut rng);
            assert!(is_gvip(&g), "{g}");
            let parts: Vec<u32> = g.split('.').map(|p| p.parse().unwrap()).collect();
            assert_eq!(&parts[..2], &[10, 212]);
            seen_a.insert(parts[2]);
            seen_b.insert(parts[3]);
        }
        assert_eq!(seen_a.len(), 256, "A covers 0-255");
        assert_eq!(seen_b.len(), 253, "B covers 2-254");
        assert!(!seen_b.contains(&0) && !seen_b.contains(&1) && !seen_b.contains(&255));
    }

    #[test]
    fn generate_gvip_retries_until_free() {
        let mut rng = StdRng::seed_from_u64(9);
        let first_draw = random_gvip(&mut StdRng::seed_from_u64(9));
        let mut asked = Vec::new();
        let g = generate_gvip(&mut rng, |g| {
            asked.push(g.to_string());
            asked.len() <= 3
        })
        .unwrap();
        assert_eq!(asked.len(), 4);
        assert_eq!(asked[0], first_draw);
        assert_eq!(g, asked[3]);
        assert!(is_gvip(&g));
    }

    #[test]
    fn generate_gvip_finds_the_last_free_address_and_fails_when_full() {
        let mut rng = StdRng::seed_from_u64(1);
        let g = generate_gvip(&mut rng, |g| g != "10.212.255.254").unwrap();
        assert_eq!(g, "10.212.255.254");
        let g = generate_gvip(&mut rng, |g| g != "10.212.0.2").unwrap();
        assert_eq!(g, "10.212.0.2");
        let mut calls = 0;
        let err = generate_gvip(&mut rng, |_| {
            calls += 1;
            true
        })
        .unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        assert_eq!(calls, GVIP_RANDOM_ATTEMPTS + GVIP_SPACE);
    }

    #[test]
    fn generate_gvip_scan_covers_every_address_once() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut seen = HashSet::new();
        let _ = generate_gvip(&mut rng, |g| {
            assert!(is_gvip(g), "{g}");
            seen.insert(g.to_string());
            true
        });
        assert_eq!(seen.len(), GVIP_SPACE);
    }

    #[test]
    fn is_gvip_accepts_only_canonical_prototype_addresses() {
        assert!(is_gvip("10.212.228.136"));
        assert!(is_gvip("10.212.0.2"));
        assert!(!is_gvip("10.212.0.1"));
        assert!(!is_gvip("10.212.0.255"));
        assert!(!is_gvip("10.212.256.2"));
        assert!(!is_gvip("10.212.01.2"));
        assert!(!is_gvip("10.213.1.2"));
        assert!(!is_gvip("10.212.1"));
        assert!(!is_gvip("10.212.1.2.3"));
        assert!(!is_gvip("0.0.0.0"));
    }

    #[test]
    fn prototype_body_parses_and_validates() {
        let body = PrototypeBody::from_bytes(br#"{"sName":"payments","lSip":"10.0.0.7"}"#).unwrap();
        assert_eq!(body.service, "payments");
        assert_eq!(body.lsip, "10.0.0.7");
        let err = PrototypeBody::from_bytes(br#"{"sName":"payments"}"#).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidInput(m) if m.contains("`lSip`")),
            "{err:?}"
        );
        assert!(PrototypeBody::from_bytes(b"sName=payments").is_err());
        assert!(PrototypeBody::from_bytes(br#"{"sName":"a b","lSip":"1.2.3.4"}"#).is_err());
        assert!(PrototypeBody::from_bytes(br#"{"sName":"a","lSip":"1.2.3.4 "}"#).is_err());
        assert!(PrototypeBody::from_bytes(br#"{"sName":"a","lSip":"1/2"}"#).is_err());
    }

    #[test]
    fn register_lsip_creates_a_port_zero_instance_once() {
        let mut r = record();
        assert_eq!(
            register_lsip(&mut r, "10.0.0.7", at(0)).unwrap().text(),
            "success"
        );
        let inst = &r.instances["10.0.0.7"];
        assert_eq!((inst.address.as_str(), inst.port), ("10.0.0.7", 0));
        assert_eq!(inst.ttl_secs, None);
        let before = r.clone();
        assert_eq!(
            register_lsip(&mut r, "10.0.0.7", at(5)).unwrap().text(),
            "already register"
        );
        assert_eq!(r, before);
        assert!(register_lsip(&mut r, "", at(0)).is_err());
    }

    #[test]
    fn cancel_lsip_answers_the_three_prototype_texts() {
        let mut r = record();
        register_lsip(&mut r, "10.0.0.7", at(0)).unwrap();
        assert_eq!(
            cancel_lsip(Some(&mut r), "10.0.0.7").text(),
            "The service instance has been deleted"
        );
        assert_eq!(
            cancel_lsip(Some(&mut r), "10.0.0.7").text(),
            "The service instance does not exist"
        );
        assert_eq!(
            cancel_lsip(None, "10.0.0.7").text(),
            "The service type does not exist"
        );
    }

    #[test]
    fn resolution_json_matches_the_recording() {
        assert_eq!(
            resolution_json(Some("10.212.228.136")),
            r#"{"gVip":"10.212.228.136","msg":"Success"}"#
        );
        assert_eq!(
            resolution_json(None),
            r#"{"gVip":"0.0.0.0","msg":"Failed"}"#
        );
    }

    #[test]
    fn servicestate_matches_the_recorded_document_after_a_report() {
        let mut r = record();
        register_lsip(&mut r, "10.0.0.7", at(0)).unwrap();
        let q = StatusStorageQuery::from_params([
            ("sname", "payments"),
            ("Lsip", "10.0.0.7"),
            ("success_rate", "0.99"),
            ("latency", "12"),
            ("frequency", "30"),
        ])
        .unwrap();
        r.report(&q.lsip, &q.to_status_body(), at(1)).unwrap();
        let expected = r#"{
  "Gvip": "10.212.228.136",
  "Service_instance": [
    {
      "Lsip": "10.0.0.7",
      "frequency": 30.0,
      "latency": 12.0,
      "success_rate": 0.99
    }
  ],
  "Sname": "payments"
}
"#;
        assert_eq!(ServiceState::of(&r).to_json_pretty().unwrap(), expected);
    }

    #[test]
    fn servicestate_writes_integer_zeros_for_a_new_instance() {
        let mut r = record();
        register_lsip(&mut r, "10.0.0.7", at(0)).unwrap();
        let json = serde_json::to_string(&ServiceState::of(&r)).unwrap();
        assert_eq!(
            json,
            r#"{"Gvip":"10.212.228.136","Service_instance":[{"Lsip":"10.0.0.7","frequency":0,"latency":0,"success_rate":0}],"Sname":"payments"}"#
        );
        let empty = Record::new("ghost", None).unwrap();
        assert_eq!(
            serde_json::to_string(&ServiceState::of(&empty)).unwrap(),
            r#"{"Gvip":"0.0.0.0","Service_instance":[],"Sname":"ghost"}"#
        );
    }

    #[test]
    fn status_storage_query_requires_names_and_numeric_measures() {
        let q = StatusStorageQuery::from_params([
            ("Lsip", "10.0.0.7"),
            ("sname", "payments"),
            ("sname", "ignored"),
            ("other", "x"),
        ])
        .unwrap();
        assert_eq!(q.service, "payments");
        assert_eq!(q.to_status_body(), StatusBody::default());

        let parse = |pairs: &[(&'static str, &'static str)]| {
            StatusStorageQuery::from_params(
                [("sname", "payments"), ("Lsip", "10.0.0.7")]
                    .into_iter()
                    .chain(pairs.iter().copied()),
            )
        };
        assert_eq!(
            parse(&[("success_rate", "high")]).unwrap_err(),
            Error::invalid("success_rate must be a number, got \"high\"")
        );
        assert_eq!(
            parse(&[("latency", "-1")]).unwrap_err(),
            Error::invalid("latency must be a finite number >= 0, got -1")
        );
        assert!(parse(&[("frequency", "NaN")]).is_err());
        assert!(parse(&[("frequency", "inf")]).is_err());
        assert!(parse(&[("frequency", "")]).is_err());
        assert!(parse(&[("success_rate", "1.01")]).is_err());
        assert_eq!(
            StatusStorageQuery::from_params([("sname", "payments")]).unwrap_err(),
            Error::invalid("missing query parameter Lsip")
        );
        assert_eq!(
            StatusStorageQuery::from_params([("Lsip", "1.2.3.4")]).unwrap_err(),
            Error::invalid("missing query parameter sname")
        );
    }
}
