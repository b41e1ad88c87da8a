//! Health beyond a state (API.md, "Health beyond a state" and "Explain"), without I/O:
//!
//! - [`Policy`]: a service's health policy, stored and replicated as a unit of the service
//!   under the empty instance id ([`POLICY_UNIT`]; no instance id is empty), so hand-off,
//!   replication, anti-entropy and restarts carry it exactly as they carry instances.
//! - [`Health`]: an instance's health bookkeeping, kept with its liveness and replicated with
//!   it: the streak of consecutive reports (`failures_before_critical`,
//!   `successes_before_passing`) and the flap penalty. [`Health::observe`] turns a reported
//!   state into the state the instance shows.
//! - Flap damping: every change of the state the thresholds decide adds 1 to a penalty that
//!   halves every `flap_half_life_secs`; at 4 or more the instance is held in the worse of its
//!   states until the penalty falls below 2 ([`SUPPRESS_AT`], [`REUSE_BELOW`]). The release is
//!   a deadline like a TTL's: the owner's sweep makes it.
//! - Panic: when the healthy share of a service falls below `panic_threshold`, a healthy-only
//!   discover returns every instance ([`in_panic`]).
//! - [`exclusions`]: the one function that decides whether a discover returns an instance;
//!   [`discover`](super::discover) keeps what it does not exclude, and [`explain`] puts its
//!   reasons into words, so the two can never disagree.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::model::{Instance, Record, State};
use super::pick::{best_order, pick, Strategy};
use crate::{Error, Result};

/// The unit id under which a service's policy is stored (`u/SERVICE/`): no instance id is
/// empty, so it never meets an instance.
pub const POLICY_UNIT: &str = "";

/// A flap penalty of at least this holds the instance in its worse state.
pub const SUPPRESS_AT: f64 = 4.0;
/// A held instance is released once its penalty is below this.
pub const REUSE_BELOW: f64 = 2.0;

/// Most consecutive reports a threshold may ask for.
pub const MAX_THRESHOLD: i64 = 1000;
/// The longest flap half-life: one day.
pub const MAX_HALF_LIFE_SECS: i64 = 24 * 3600;

/// A service's health policy (`PUT/GET /v1/services/{service}/policy`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// A reported `critical` takes effect after this many consecutive critical reports.
    pub failures_before_critical: u32,
    /// A reported `passing` takes effect after this many consecutive passing reports.
    pub successes_before_passing: u32,
    /// Flap damping's half-life in seconds; 0 turns damping off.
    pub flap_half_life_secs: u64,
    /// Below this healthy share a healthy-only discover returns every instance; 0 turns it off.
    pub panic_threshold: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            failures_before_critical: 1,
            successes_before_passing: 1,
            flap_half_life_secs: 0,
            panic_threshold: 0.0,
        }
    }
}

/// The body of `PUT /v1/services/{service}/policy`: omitted fields take their defaults. Wide
/// types, so that an out-of-range value gets a message naming it rather than a type error.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PolicyBody {
    #[serde(default)]
    failures_before_critical: Option<i64>,
    #[serde(default)]
    successes_before_passing: Option<i64>,
    #[serde(default)]
    flap_half_life_secs: Option<i64>,
    #[serde(default)]
    panic_threshold: Option<f64>,
}

impl Policy {
    /// The policy a request body asks for, checked; a 400 that names what is wrong.
    pub fn from_json(bytes: &[u8]) -> Result<Policy> {
        let body: PolicyBody = serde_json::from_slice(bytes)
            .map_err(|e| Error::invalid(format!("invalid policy body: {e}")))?;
        let d = Policy::default();
        let threshold = |field: &str, v: Option<i64>, default: u32| -> Result<u32> {
            let Some(v) = v else { return Ok(default) };
            if (1..=MAX_THRESHOLD).contains(&v) {
                u32::try_from(v).map_err(|_| Error::invalid(format!("{field} is too large")))
            } else {
                Err(Error::invalid(format!(
                    "{field} must be 1-{MAX_THRESHOLD}, got {v}"
                )))
            }
        };
        let half_life = match body.flap_half_life_secs {
            None => d.flap_half_life_secs,
            Some(v) if (0..=MAX_HALF_LIFE_SECS).contains(&v) => v.unsigned_abs(),
            Some(v) => {
                return Err(Error::invalid(format!(
                    "flap_half_life_secs must be 0-{MAX_HALF_LIFE_SECS}, got {v}"
                )))
            }
        };
        let panic_threshold = body.panic_threshold.unwrap_or(d.panic_threshold);
        if !(panic_threshold.is_finite() && (0.0..=1.0).contains(&panic_threshold)) {
            return Err(Error::invalid(format!(
                "panic_threshold must be between 0 and 1, got {panic_threshold}"
            )));
        }
        Ok(Policy {
            failures_before_critical: threshold(
                "failures_before_critical",
                body.failures_before_critical,
                d.failures_before_critical,
            )?,
            successes_before_passing: threshold(
                "successes_before_passing",
                body.successes_before_passing,
                d.successes_before_passing,
            )?,
            flap_half_life_secs: half_life,
            panic_threshold,
        })
    }

    /// How many consecutive reports of `state` it takes for the state to take effect.
    fn needed(&self, state: State) -> u32 {
        match state {
            State::Critical => self.failures_before_critical,
            State::Passing => self.successes_before_passing,
            State::Warning | State::Maintenance => 1,
        }
        .max(1)
    }

    /// Whether this is the default behaviour: every report takes effect at once, no damping.
    /// Instances of such a service keep no health bookkeeping at all, so their stored form is
    /// the one agents before the policy existed read.
    pub fn is_plain(&self) -> bool {
        self.needed(State::Critical) == 1
            && self.needed(State::Passing) == 1
            && self.half_life().is_none()
    }

    /// The half-life, when damping is on.
    fn half_life(&self) -> Option<TimeDelta> {
        let secs = i64::try_from(self.flap_half_life_secs).ok()?;
        TimeDelta::try_seconds(secs).filter(|d| *d > TimeDelta::zero())
    }
}

/// The worse of two states (by [`State::rank`]: critical is the worst).
pub fn worse(a: State, b: State) -> State {
    if b.rank() > a.rank() {
        b
    } else {
        a
    }
}

/// An instance's health bookkeeping (replicated with its liveness; see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// The last reported state and how many consecutive reports said it.
    pub streak: Option<(State, u32)>,
    /// The state the thresholds decided, when it differs from what the instance shows or the
    /// instance is held (`None`: the shown state).
    pub judged: Option<State>,
    /// The flap penalty as of `penalty_at`.
    pub penalty: f64,
    /// When the penalty was last raised.
    pub penalty_at: Option<DateTime<Utc>>,
    /// The state a flapping instance is held in.
    pub held: Option<State>,
    /// When the shown state last changed by a report, an expiry or a release.
    pub since: Option<DateTime<Utc>>,
}

impl Health {
    /// The penalty at `now`, decayed by the half-life.
    pub fn penalty_at(&self, now: DateTime<Utc>, policy: &Policy) -> f64 {
        let (Some(half_life), Some(at)) = (policy.half_life(), self.penalty_at) else {
            return 0.0;
        };
        let elapsed = (now - at).num_milliseconds().max(0) as f64;
        self.penalty * 0.5f64.powf(elapsed / half_life.num_milliseconds() as f64)
    }

    /// When a held instance is released: when its penalty falls below [`REUSE_BELOW`]
    /// (`None` when it is not held). With damping turned off, at once.
    pub fn release_at(&self, policy: &Policy) -> Option<DateTime<Utc>> {
        self.held?;
        let at = self.penalty_at?;
        let Some(half_life) = policy.half_life() else {
            return Some(at);
        };
        if self.penalty < REUSE_BELOW {
            return Some(at);
        }
        // penalty · 2^(−t/h) < 2  ⇔  t > h · log2(penalty / 2); one millisecond past it.
        let ms = half_life.num_milliseconds() as f64 * (self.penalty / REUSE_BELOW).log2();
        let ms = if ms.is_finite() {
            ms.ceil() as i64 + 1
        } else {
            0
        };
        at.checked_add_signed(TimeDelta::milliseconds(ms))
    }

    /// Whether a held instance's time to be released has come at `now`.
    pub fn release_due(&self, now: DateTime<Utc>, policy: &Policy) -> bool {
        self.release_at(policy).is_some_and(|at| now >= at)
    }

    /// Release a held instance whose time has come; returns the state it shows then.
    pub fn release(&mut self, now: DateTime<Utc>, policy: &Policy) -> Option<State> {
        if !self.release_due(now, policy) {
            return None;
        }
        self.held = None;
        self.since = Some(now);
        self.judged.take()
    }

    /// A reported `state` for an instance showing `shown`: the thresholds decide whether it
    /// takes effect, damping whether the instance is held. Returns the state to show.
    pub fn observe(
        &mut self,
        shown: State,
        reported: State,
        policy: &Policy,
        now: DateTime<Utc>,
    ) -> State {
        if policy.is_plain() {
            *self = Health::default();
            return reported;
        }
        let before = self.judged.unwrap_or(shown);
        let count = match self.streak {
            // Capped: no threshold asks for more, and the stored number stays small.
            Some((state, n)) if state == reported => n.saturating_add(1).min(MAX_THRESHOLD as u32),
            _ => 1,
        };
        self.streak = Some((reported, count));
        let judged = if reported == before || count >= policy.needed(reported) {
            reported
        } else {
            before
        };
        if policy.half_life().is_none() {
            self.penalty = 0.0;
            self.penalty_at = None;
            self.held = None;
        } else if judged != before {
            let penalty = self.penalty_at(now, policy) + 1.0;
            self.penalty = penalty;
            self.penalty_at = Some(now);
            self.held = match self.held {
                Some(held) => Some(worse(held, judged)),
                None if penalty >= SUPPRESS_AT => Some(worse(before, judged)),
                None => None,
            };
        }
        self.judged = Some(judged);
        self.release(now, policy);
        let show = self.held.unwrap_or(judged);
        if self.held.is_none() {
            self.judged = None;
        }
        if show != shown {
            self.since = Some(now);
        }
        show
    }

    /// Whether the instance is held in its worse state (`"flapping": true`).
    pub fn is_flapping(&self) -> bool {
        self.held.is_some()
    }
}

// ---- panic --------------------------------------------------------------------------------

/// The share of `instances` that is healthy (passing or warning) among those not in
/// maintenance; `None` when every one is in maintenance (or there are none).
pub fn healthy_share<'a>(instances: impl IntoIterator<Item = &'a Instance>) -> Option<f64> {
    let (mut healthy, mut counted) = (0usize, 0usize);
    for i in instances {
        match i.status.state {
            State::Maintenance => continue,
            s if s.is_healthy() => healthy += 1,
            _ => {}
        }
        counted += 1;
    }
    (counted > 0).then(|| healthy as f64 / counted as f64)
}

/// Whether a service with `instances` and `policy` is in panic: its healthy share below the
/// threshold (a threshold of 0 never panics).
pub fn in_panic<'a>(instances: impl IntoIterator<Item = &'a Instance>, policy: &Policy) -> bool {
    policy.panic_threshold > 0.0
        && healthy_share(instances).is_some_and(|share| share < policy.panic_threshold)
}

// ---- the decision -------------------------------------------------------------------------

/// Discover's filters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Filters<'a> {
    /// Only healthy instances (passing or warning), unless the service is in panic.
    pub healthy: bool,
    /// Only instances with this tag.
    pub tag: Option<&'a str>,
}

/// Why a discover does not return an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusion<'a> {
    /// A healthy-only discover, and the instance is critical or in maintenance.
    Unhealthy(State),
    /// The instance lacks the tag asked for.
    NoTag(&'a str),
}

/// Every reason `filters` exclude `instance` from a discover of a service that is (`panic`)
/// or is not in panic; none when it is returned. The one decision discover, blocking
/// discover, watches and explain share.
pub fn exclusions<'a>(
    instance: &Instance,
    filters: &Filters<'a>,
    panic: bool,
) -> Vec<Exclusion<'a>> {
    let mut out = Vec::new();
    let state = instance.status.state;
    if filters.healthy && !panic && !state.is_healthy() {
        out.push(Exclusion::Unhealthy(state));
    }
    if let Some(tag) = filters.tag {
        if !instance.tags.iter().any(|have| have == tag) {
            out.push(Exclusion::NoTag(tag));
        }
    }
    out
}

/// What a discover of `instances` (one service's, by id) with `filters` returns, and whether
/// the service is in panic (only a healthy-only discover is affected by it).
pub fn visible<'a, 'f>(
    instances: &[&'a Instance],
    filters: &Filters<'f>,
    policy: &Policy,
) -> (Vec<&'a Instance>, bool) {
    let panic = filters.healthy && in_panic(instances.iter().copied(), policy);
    let shown = instances
        .iter()
        .copied()
        .filter(|i| exclusions(i, filters, panic).is_empty())
        .collect();
    (shown, panic)
}

// ---- explain ------------------------------------------------------------------------------

/// One instance in an explain answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explained {
    /// The instance id.
    pub id: String,
    /// Whether discover with these filters returns it.
    pub returned: bool,
    /// Every reason it is not returned, in words (empty when it is).
    pub reasons: Vec<String>,
    /// With a pick, what the strategy looked at for this candidate; `null` otherwise.
    pub score: Value,
}

/// The answer of `GET /v1/services/{service}/explain`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// The service.
    pub service: String,
    /// The filters explained: `{"healthy", "tag", "pick"}`.
    pub filters: Value,
    /// Whether the service is in panic for this query.
    pub panic: bool,
    /// The instance a pick chose (`null` without a pick, or with nothing to pick).
    pub picked: Option<String>,
    /// Every instance of the service, by id.
    pub instances: Vec<Explained>,
}

/// A time of day, as explain writes it.
fn clock(t: DateTime<Utc>) -> String {
    t.format("%H:%M:%S").to_string()
}

/// Why an unhealthy instance is in its state, in words.
fn unhealthy_reason(rec: &Record, instance: &Instance, state: State, now: DateTime<Utc>) -> String {
    let health = rec.health_of(&instance.id);
    let since = health
        .and_then(|h| h.since)
        .unwrap_or(instance.status.updated_at);
    if health.is_some_and(Health::is_flapping) {
        return format!("held {state}: flapping");
    }
    if state == State::Maintenance {
        return "in maintenance".to_string();
    }
    if let (Some(ttl), Some(last_seen)) = (instance.ttl_secs, rec.expired_since(&instance.id)) {
        let silent = (now - last_seen).num_seconds().max(0);
        let since = instance.status.updated_at;
        return format!(
            "{state} since {}: no report for {silent}s with a {ttl}s TTL",
            clock(since)
        );
    }
    let note = &instance.status.note;
    if note.is_empty() {
        format!("{state} since {}: reported {state}", clock(since))
    } else {
        format!("{state} since {}: reported {state} ({note})", clock(since))
    }
}

/// What `strategy` looked at for each candidate (by position in `candidates`).
fn scores(candidates: &[&Instance], strategy: Strategy) -> Vec<Value> {
    let n = candidates.len();
    let rank_by = |order: &dyn Fn(&Instance, &Instance) -> std::cmp::Ordering| -> Vec<usize> {
        let mut idx: Vec<usize> = (0..n).collect();
        idx.sort_by(|&a, &b| order(candidates[a], candidates[b]));
        let mut rank = vec![0; n];
        for (r, i) in idx.into_iter().enumerate() {
            rank[i] = r + 1;
        }
        rank
    };
    match strategy {
        Strategy::Best => {
            let rank = rank_by(&best_order);
            candidates
                .iter()
                .zip(rank)
                .map(|(i, rank)| {
                    json!({"rank": rank, "state": i.status.state,
                           "success_rate": i.status.success_rate,
                           "latency_ms": i.status.latency_ms, "load": i.status.load})
                })
                .collect()
        }
        Strategy::LeastLoad => {
            let rank = rank_by(&|a, b| {
                a.status
                    .load
                    .total_cmp(&b.status.load)
                    .then_with(|| a.id.cmp(&b.id))
            });
            candidates
                .iter()
                .zip(rank)
                .map(|(i, rank)| json!({"rank": rank, "load": i.status.load}))
                .collect()
        }
        Strategy::Weighted => {
            let total: u64 = candidates.iter().map(|i| u64::from(i.weight)).sum();
            candidates
                .iter()
                .map(|i| {
                    let chance = if total == 0 {
                        0.0
                    } else {
                        f64::from(i.weight) / total as f64
                    };
                    json!({"weight": i.weight, "chance": chance})
                })
                .collect()
        }
        Strategy::Random => candidates
            .iter()
            .map(|_| json!({"chance": 1.0 / n as f64}))
            .collect(),
        Strategy::RoundRobin => (0..n).map(|turn| json!({"turn": turn})).collect(),
    }
}

/// Explain a discover of `rec` with `filters` (and a pick by `strategy`): for every instance
/// whether it is returned and why not, from [`exclusions`] — the decision discover makes.
pub fn explain<R: Rng + ?Sized>(
    rec: &Record,
    filters: &Filters<'_>,
    strategy: Option<Strategy>,
    rr_counter: u64,
    rng: &mut R,
    now: DateTime<Utc>,
) -> Explanation {
    let all: Vec<&Instance> = rec.instances.values().map(Arc::as_ref).collect();
    let (returned, panic) = visible(&all, filters, rec.policy());
    let mut instances: Vec<Explained> = all
        .iter()
        .map(|i| Explained {
            id: i.id.clone(),
            returned: false,
            reasons: exclusions(i, filters, panic)
                .into_iter()
                .map(|e| match e {
                    Exclusion::Unhealthy(state) => unhealthy_reason(rec, i, state, now),
                    Exclusion::NoTag(tag) => format!("no tag {tag}"),
                })
                .collect(),
            score: Value::Null,
        })
        .collect();
    for e in &mut instances {
        e.returned = e.reasons.is_empty();
    }
    let mut picked = None;
    if let Some(strategy) = strategy {
        let scored = scores(&returned, strategy);
        for (candidate, score) in returned.iter().zip(scored) {
            if let Some(e) = instances.iter_mut().find(|e| e.id == candidate.id) {
                e.score = score;
            }
        }
        picked = pick(&returned, strategy, rr_counter, rng).map(|i| i.id.clone());
    }
    Explanation {
        service: rec.service.clone(),
        filters: json!({"healthy": filters.healthy, "tag": filters.tag,
                        "pick": strategy.map(Strategy::as_str)}),
        panic,
        picked,
        instances,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::model::tests::{at, record};
    use crate::registry::{RegisterBody, StatusBody};

    fn policy(fails: u32, successes: u32, half_life: u64) -> Policy {
        Policy {
            failures_before_critical: fails,
            successes_before_passing: successes,
            flap_half_life_secs: half_life,
            panic_threshold: 0.0,
        }
    }

    fn report(state: State) -> StatusBody {
        StatusBody {
            state: Some(state),
            ..StatusBody::default()
        }
    }

    #[test]
    fn the_policy_body_takes_defaults_and_names_what_is_out_of_range() {
        assert_eq!(Policy::from_json(b"{}").unwrap(), Policy::default());
        let p = Policy::from_json(
            br#"{"failures_before_critical":3,"successes_before_passing":2,
                 "flap_half_life_secs":60,"panic_threshold":0.5,"other":1}"#,
        )
        .unwrap();
        assert_eq!(
            p,
            Policy {
                panic_threshold: 0.5,
                ..policy(3, 2, 60)
            }
        );
        let err = |body: &[u8]| Policy::from_json(body).unwrap_err().to_string();
        let out_of_range: [(&[u8], &str); 4] = [
            (
                br#"{"failures_before_critical":0}"#,
                "failures_before_critical must be 1-1000, got 0",
            ),
            (
                br#"{"successes_before_passing":-1}"#,
                "successes_before_passing must be 1-1000, got -1",
            ),
            (
                br#"{"flap_half_life_secs":-5}"#,
                "flap_half_life_secs must be 0-86400, got -5",
            ),
            (
                br#"{"panic_threshold":1.5}"#,
                "panic_threshold must be between 0 and 1, got 1.5",
            ),
        ];
        for (body, message) in out_of_range {
            assert_eq!(err(body), message);
        }
        assert!(err(b"\"x\"").starts_with("invalid policy body"));
        assert!(err(br#"{"panic_threshold":"x"}"#).starts_with("invalid policy body"));
    }

    #[test]
    fn n_minus_one_critical_reports_do_not_flip_the_state_and_the_nth_does() {
        let mut r = record();
        r.set_policy(policy(3, 2, 0));
        r.register("a", &RegisterBody::new("h", 1), at(0)).unwrap();
        for t in 1..=2 {
            let s = r.report("a", &report(State::Critical), at(t)).unwrap();
            assert_eq!(s.status.state, State::Passing, "report {t} of 3");
        }
        let s = r.report("a", &report(State::Critical), at(3)).unwrap();
        assert_eq!(s.status.state, State::Critical, "the third");
        // Same for passing: one is not enough, the second is.
        let s = r.report("a", &report(State::Passing), at(4)).unwrap();
        assert_eq!(s.status.state, State::Critical);
        let s = r.report("a", &report(State::Passing), at(5)).unwrap();
        assert_eq!(s.status.state, State::Passing);
        // A streak broken by another state starts again.
        r.report("a", &report(State::Critical), at(6)).unwrap();
        r.report("a", &report(State::Critical), at(7)).unwrap();
        r.report("a", &report(State::Passing), at(8)).unwrap();
        let s = r.report("a", &report(State::Critical), at(9)).unwrap();
        assert_eq!(s.status.state, State::Passing, "the streak restarted");
        // Warning and maintenance take effect at once.
        let s = r.report("a", &report(State::Warning), at(10)).unwrap();
        assert_eq!(s.status.state, State::Warning);
    }

    #[test]
    fn the_default_policy_keeps_the_old_behaviour() {
        let mut r = record();
        r.register("a", &RegisterBody::new("h", 1), at(0)).unwrap();
        for (t, state) in [State::Critical, State::Passing, State::Critical]
            .into_iter()
            .enumerate()
        {
            let s = r.report("a", &report(state), at(t as i64 + 1)).unwrap();
            assert_eq!(s.status.state, state);
            assert!(!s.flapping);
        }
        let json = serde_json::to_value(&r.instances["a"]).unwrap();
        assert!(json.get("flapping").is_none(), "not flapping: omitted");
    }

    #[test]
    fn a_stream_flipping_every_second_is_held_critical_and_released_after_decay() {
        let mut r = record();
        r.set_policy(policy(1, 1, 10));
        r.register("a", &RegisterBody::new("h", 1), at(0)).unwrap();
        let mut held_at = None;
        for t in 1..=10 {
            let state = if t % 2 == 1 {
                State::Critical
            } else {
                State::Passing
            };
            let s = r.report("a", &report(state), at(t)).unwrap().clone();
            if t < 5 {
                assert_eq!(s.status.state, state, "damping not yet engaged at {t}s");
                assert!(!s.flapping);
            } else {
                held_at.get_or_insert(t);
                assert!(s.flapping, "flapping at {t}s");
                assert_eq!(s.status.state, State::Critical, "held in the worse state");
                let json = serde_json::to_value(&s).unwrap();
                assert_eq!(json["flapping"], true);
            }
        }
        // 1, 1.93, 2.80, 3.62, 4.38: with the decay in between, the fifth change is the one
        // that reaches 4.
        assert_eq!(held_at, Some(5));
        // The stream stops on passing. The penalty (about 7.5 at 10s) halves every 10s: it
        // is below 2 after log2(7.5/2)·10 ≈ 19s more; the sweep releases it then.
        let release = r.next_deadline(10).expect("a release deadline");
        assert!(release > at(28) && release < at(31), "{release}");
        assert!(r.sweep(release - TimeDelta::milliseconds(1), 10).is_empty());
        assert!(r.instances["a"].flapping);
        assert_eq!(r.sweep(release, 10), vec!["a".to_string()]);
        let a = &r.instances["a"];
        assert!(!a.flapping, "released");
        assert_eq!(
            a.status.state,
            State::Passing,
            "the state it was reported in"
        );
    }

    #[test]
    fn panic_returns_every_instance_below_the_healthy_share() {
        let mut r = record();
        for id in ["a", "b", "c", "d", "m"] {
            r.register(id, &RegisterBody::new("h", 1), at(0)).unwrap();
        }
        r.report("m", &report(State::Maintenance), at(1)).unwrap();
        r.report("b", &report(State::Critical), at(1)).unwrap();
        r.report("c", &report(State::Critical), at(1)).unwrap();
        let healthy = Filters {
            healthy: true,
            tag: None,
        };
        let all: Vec<&Instance> = r.instances.values().map(Arc::as_ref).collect();
        // 2 healthy of 4 outside maintenance: 50%.
        assert_eq!(healthy_share(all.iter().copied()), Some(0.5));
        let at_half = Policy {
            panic_threshold: 0.5,
            ..Policy::default()
        };
        let (shown, panic) = visible(&all, &healthy, &at_half);
        assert!(!panic, "at the threshold is not below it");
        assert_eq!(shown.len(), 2);
        let above = Policy {
            panic_threshold: 0.6,
            ..Policy::default()
        };
        let (shown, panic) = visible(&all, &healthy, &above);
        assert!(panic);
        assert_eq!(shown.len(), 5, "every instance");
        let (shown, panic) = visible(&all, &Filters::default(), &above);
        assert!(!panic, "only a healthy-only discover panics");
        assert_eq!(shown.len(), 5);
    }

    #[test]
    fn explain_gives_every_reason_in_words_and_the_scores_of_a_pick() {
        let mut r = record();
        let mut body = RegisterBody::new("h", 1);
        body.tags = vec!["v2".into()];
        body.ttl_secs = Some(30);
        for id in ["ok", "slow", "silent", "drained", "flappy"] {
            r.register(id, &body, at(0)).unwrap();
        }
        r.register("old", &RegisterBody::new("h", 1), at(0))
            .unwrap();
        r.set_policy(policy(1, 1, 60));
        let measures = |sr, lat| StatusBody {
            success_rate: Some(sr),
            latency_ms: Some(lat),
            ..StatusBody::default()
        };
        r.report("ok", &measures(0.99, 5.0), at(1)).unwrap();
        r.report("slow", &measures(0.99, 50.0), at(1)).unwrap();
        r.report("drained", &report(State::Maintenance), at(1))
            .unwrap();
        for t in 1..=6 {
            let state = if t % 2 == 1 {
                State::Critical
            } else {
                State::Passing
            };
            r.report("flappy", &report(state), at(t)).unwrap();
        }
        assert!(r.instances["flappy"].flapping);
        // Keep the others alive, let "silent" expire at 30s.
        for id in ["ok", "slow", "drained", "flappy", "old"] {
            r.report(id, &StatusBody::default(), at(20)).unwrap();
        }
        r.sweep(at(31), 10);
        let filters = Filters {
            healthy: true,
            tag: Some("v2"),
        };
        let mut rng = rand::thread_rng();
        let e = explain(&r, &filters, Some(Strategy::Best), 0, &mut rng, at(31));
        let by_id = |id: &str| e.instances.iter().find(|i| i.id == id).unwrap().clone();
        assert_eq!(e.picked.as_deref(), Some("ok"));
        assert!(!e.panic);
        assert!(by_id("ok").returned && by_id("ok").reasons.is_empty());
        assert_eq!(by_id("ok").score["rank"], 1);
        assert_eq!(by_id("slow").score["rank"], 2, "same rate, higher latency");
        assert_eq!(by_id("slow").score["latency_ms"], 50.0);
        assert_eq!(
            by_id("silent").reasons,
            ["critical since 14:00:30: no report for 31s with a 30s TTL"]
        );
        assert_eq!(by_id("drained").reasons, ["in maintenance"]);
        assert_eq!(by_id("flappy").reasons, ["held critical: flapping"]);
        assert_eq!(by_id("old").reasons, ["no tag v2"]);
        assert!(by_id("old").score.is_null());
        // Explain and discover agree on every instance.
        let found: Vec<String> = crate::registry::discover(&r, true, Some("v2"))
            .iter()
            .map(|i| i.id.clone())
            .collect();
        let returned: Vec<String> = e
            .instances
            .iter()
            .filter(|i| i.returned)
            .map(|i| i.id.clone())
            .collect();
        assert_eq!(found, returned);
        // A reported critical says so, with its note.
        r.report(
            "ok",
            &StatusBody {
                state: Some(State::Critical),
                note: Some("disk full".into()),
                ..StatusBody::default()
            },
            at(40),
        )
        .unwrap();
        let e = explain(&r, &filters, None, 0, &mut rng, at(41));
        let ok = e.instances.iter().find(|i| i.id == "ok").unwrap();
        assert_eq!(
            ok.reasons,
            ["critical since 14:00:40: reported critical (disk full)"]
        );
        assert_eq!(e.picked, None);
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(
            json["filters"],
            json!({"healthy": true, "tag": "v2", "pick": null})
        );
    }
}
