//! Discovery filters and the strategies that pick one instance for a client.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::health;
use super::model::{Instance, Record};
use crate::{Error, Result};

/// The instances of `record` a discovery returns, ordered by id.
///
/// With `healthy`, only instances whose state is passing or warning (see
/// [`State::is_healthy`](super::State::is_healthy)) — unless the service is in panic (its
/// policy's `panic_threshold`), then every instance; with `tag`, only instances carrying that
/// tag (exact, case-sensitive match). The decision is [`health::exclusions`], which explain
/// shares.
pub fn discover<'a>(record: &'a Record, healthy: bool, tag: Option<&str>) -> Vec<&'a Instance> {
    discover_with_panic(record, healthy, tag).0
}

/// [`discover`], and whether the service is in panic for this query.
pub fn discover_with_panic<'a>(
    record: &'a Record,
    healthy: bool,
    tag: Option<&str>,
) -> (Vec<&'a Instance>, bool) {
    let all: Vec<&Instance> = record.instances.values().map(Arc::as_ref).collect();
    health::visible(&all, &health::Filters { healthy, tag }, record.policy())
}

/// How `discover --pick` chooses one instance among the candidates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Among the healthiest state present, the highest success rate, then the lowest latency,
    /// then the lowest load, then the smallest id (deterministic).
    #[default]
    Best,
    /// The candidates in turn, driven by a per-service counter the caller keeps.
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// At random in proportion to weight; weight-0 instances are never picked.
    Weighted,
    /// The lowest load, ties broken by the smallest id.
    LeastLoad,
}

impl Strategy {
    /// Every strategy, in the order of the docs.
    pub const ALL: [Strategy; 5] = [
        Strategy::Best,
        Strategy::RoundRobin,
        Strategy::Random,
        Strategy::Weighted,
        Strategy::LeastLoad,
    ];

    /// The kebab-case name used in the CLI, the query string and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Best => "best",
            Strategy::RoundRobin => "round-robin",
            Strategy::Random => "random",
            Strategy::Weighted => "weighted",
            Strategy::LeastLoad => "least-load",
        }
    }

    /// One line for people (CLI help and completions).
    pub fn describe(self) -> &'static str {
        match self {
            Strategy::Best => {
                "Highest success rate, then lowest latency, then lowest load, among the healthiest state"
            }
            Strategy::RoundRobin => "Each instance in turn",
            Strategy::Random => "Uniformly at random",
            Strategy::Weighted => "At random in proportion to weight",
            Strategy::LeastLoad => "Lowest load",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Strategy::ALL
            .into_iter()
            .find(|strategy| strategy.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown pick strategy {s:?}: expected best, round-robin, random, weighted or least-load"
                ))
            })
    }
}

/// `best`'s order: healthiest state, highest success rate, lowest latency, lowest load, id.
pub(super) fn best_order(a: &Instance, b: &Instance) -> Ordering {
    let (sa, sb) = (&a.status, &b.status);
    sa.state
        .rank()
        .cmp(&sb.state.rank())
        .then_with(|| sb.success_rate.total_cmp(&sa.success_rate))
        .then_with(|| sa.latency_ms.total_cmp(&sb.latency_ms))
        .then_with(|| sa.load.total_cmp(&sb.load))
        .then_with(|| a.id.cmp(&b.id))
}

/// Picks one instance of `candidates` (normally [`discover`]'s result) by `strategy`.
///
/// `rr_counter` drives `round-robin` (the caller increments it per pick of the service);
/// `rng` drives `random` and `weighted`. `None` when there are no candidates, or for `weighted`
/// when every candidate has weight 0: weight 0 means "send no traffic", so picking one anyway
/// would defeat draining by weight.
pub fn pick<'a, R: Rng + ?Sized>(
    candidates: &[&'a Instance],
    strategy: Strategy,
    rr_counter: u64,
    rng: &mut R,
) -> Option<&'a Instance> {
    match strategy {
        Strategy::Best => candidates.iter().copied().min_by(|a, b| best_order(a, b)),
        Strategy::RoundRobin => {
            let len = u64::try_from(candidates.len()).ok().filter(|&n| n > 0)?;
            let index = usize::try_from(rr_counter % len).ok()?;
            candidates.get(index).copied()
        }
        Strategy::Random => candidates.choose(rng).copied(),
        Strategy::Weighted => {
            let total: u64 = candidates.iter().map(|i| u64::from(i.weight)).sum();
            if total == 0 {
                return None;
            }
            let mut ticket = rng.gen_range(0..total);
            for inst in candidates {
                let w = u64::from(inst.weight);
                if ticket < w {
                    return Some(inst);
                }
                ticket -= w;
            }
            None
        }
        Strategy::LeastLoad => candidates.iter().copied().min_by(|a, b| {
            a.status
                .load
                .total_cmp(&b.status.load)
                .then_with(|| a.id.cmp(&b.id))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::model::tests::{at, record};
    use crate::registry::model::{RegisterBody, State, StatusBody};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// `(id, state, success_rate, latency, load, weight, tags)` of one test instance.
    type Spec<'a> = (&'a str, State, f64, f64, f64, i64, &'a [&'a str]);

    /// A record with the given instances.
    fn fleet(specs: &[Spec]) -> Record {
        let mut r = record();
        for (id, state, sr, lat, load, weight, tags) in specs {
            let mut body = RegisterBody::new("10.0.0.1", 80);
            body.weight = *weight;
            body.tags = tags.iter().map(|t| t.to_string()).collect();
            r.register(id, &body, at(0)).unwrap();
            let status = StatusBody {
                state: Some(*state),
                success_rate: Some(*sr),
                latency_ms: Some(*lat),
                load: Some(*load),
                ..StatusBody::default()
            };
            r.report(id, &status, at(1)).unwrap();
        }
        r
    }

    fn ids(instances: &[&Instance]) -> Vec<String> {
        instances.iter().map(|i| i.id.clone()).collect()
    }

    fn pick_id(r: &Record, strategy: Strategy, counter: u64) -> Option<String> {
        let all = discover(r, false, None);
        let mut rng = StdRng::seed_from_u64(7);
        pick(&all, strategy, counter, &mut rng).map(|i| i.id.clone())
    }

    #[test]
    fn strategy_names_parse_and_unknown_names_are_explained() {
        for s in Strategy::ALL {
            assert_eq!(s.as_str().parse::<Strategy>(), Ok(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert_eq!(Strategy::default(), Strategy::Best);
        assert_eq!(
            "round_robin".parse::<Strategy>(),
            Err(Error::invalid(
                "unknown pick strategy \"round_robin\": expected best, round-robin, random, weighted or least-load"
            ))
        );
    }

    #[test]
    fn discover_filters_by_health_and_tag() {
        use State::*;
        let r = fleet(&[
            ("a", Passing, 1.0, 1.0, 0.0, 1, &["v1"]),
            ("b", Warning, 1.0, 1.0, 0.0, 1, &["v2"]),
            ("c", Critical, 1.0, 1.0, 0.0, 1, &["v2"]),
            ("d", Maintenance, 1.0, 1.0, 0.0, 1, &["v1", "v2"]),
        ]);
        assert_eq!(ids(&discover(&r, false, None)), ["a", "b", "c", "d"]);
        assert_eq!(ids(&discover(&r, true, None)), ["a", "b"]);
        assert_eq!(ids(&discover(&r, false, Some("v2"))), ["b", "c", "d"]);
        assert_eq!(ids(&discover(&r, true, Some("v2"))), ["b"]);
        assert!(discover(&r, false, Some("V2")).is_empty());
    }

    #[test]
    fn every_strategy_returns_none_for_no_candidates() {
        let mut rng = StdRng::seed_from_u64(1);
        for s in Strategy::ALL {
            assert_eq!(pick(&[], s, 3, &mut rng), None, "{s}");
        }
    }

    #[test]
    fn best_prefers_the_healthiest_state_over_better_numbers() {
        use State::*;
        let r = fleet(&[
            ("a", Warning, 1.0, 1.0, 0.0, 1, &[]),
            ("b", Passing, 0.5, 99.0, 9.0, 1, &[]),
        ]);
        assert_eq!(pick_id(&r, Strategy::Best, 0).as_deref(), Some("b"));
        let r = fleet(&[
            ("a", Critical, 1.0, 1.0, 0.0, 1, &[]),
            ("b", Maintenance, 0.5, 99.0, 9.0, 1, &[]),
        ]);
        assert_eq!(pick_id(&r, Strategy::Best, 0).as_deref(), Some("b"));
    }

    #[test]
    fn best_orders_by_success_rate_then_latency_then_load_then_id() {
        use State::*;
        let r = fleet(&[
            ("a", Passing, 0.9, 1.0, 0.0, 1, &[]),
            ("b", Passing, 0.99, 50.0, 0.9, 1, &[]),
        ]);
        assert_eq!(pick_id(&r, Strategy::Best, 0).as_deref(), Some("b"));
        let r = fleet(&[
            ("a", Passing, 0.99, 20.0, 0.0, 1, &[]),
            ("b", Passing, 0.99, 10.0, 0.9, 1, &[]),
        ]);
        assert_eq!(pick_id(&r, Strategy::Best, 0).as_deref(), Some("b"));
        let r = fleet(&[
            ("a", Passing, 0.99, 10.0, 0.5, 1, &[]),
            ("b", Passing, 0.99, 10.0, 0.1, 1, &[]),
        ]);
        assert_eq!(pick_id(&r, Strategy::Best, 0).as_deref(), Some("b"));
        let r = fleet(&[
            ("b", Passing, 0.99, 10.0, 0.1, 1, &[]),
            ("a", Passing, 0.99, 10.0, 0.1, 1, &[]),
        ]);
        assert_eq!(pick_id(&r, Strategy::Best, 0).as_deref(), Some("a"));
    }

    #[test]
    fn round_robin_cycles_by_counter() {
        use State::*;
        let r = fleet(&[
            ("a", Passing, 0.0, 0.0, 0.0, 1, &[]),
            ("b", Passing, 0.0, 0.0, 0.0, 1, &[]),
            ("c", Passing, 0.0, 0.0, 0.0, 1, &[]),
        ]);
        let picked: Vec<String> = (0..7)
            .filter_map(|n| pick_id(&r, Strategy::RoundRobin, n))
            .collect();
        assert_eq!(picked, ["a", "b", "c", "a", "b", "c", "a"]);
        assert_eq!(
            pick_id(&r, Strategy::RoundRobin, u64::MAX).as_deref(),
            Some("a"),
            "u64::MAX % 3 == 0"
        );
    }

    #[test]
    fn random_picks_every_candidate_eventually() {
        use State::*;
        let r = fleet(&[
            ("a", Passing, 0.0, 0.0, 0.0, 1, &[]),
            ("b", Passing, 0.0, 0.0, 0.0, 1, &[]),
            ("c", Passing, 0.0, 0.0, 0.0, 1, &[]),
        ]);
        let all = discover(&r, false, None);
        let mut rng = StdRng::seed_from_u64(42);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..100 {
            seen.insert(
                pick(&all, Strategy::Random, 0, &mut rng)
                    .unwrap()
                    .id
                    .clone(),
            );
        }
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn weighted_follows_weights_and_never_picks_weight_zero() {
        use State::*;
        let r = fleet(&[
            ("a", Passing, 0.0, 0.0, 0.0, 1, &[]),
            ("b", Passing, 0.0, 0.0, 0.0, 3, &[]),
            ("z", Passing, 0.0, 0.0, 0.0, 0, &[]),
        ]);
        let all = discover(&r, false, None);
        let mut rng = StdRng::seed_from_u64(2026);
        let (mut a, mut b) = (0, 0);
        for _ in 0..10_000 {
            match pick(&all, Strategy::Weighted, 0, &mut rng)
                .unwrap()
                .id
                .as_str()
            {
                "a" => a += 1,
                "b" => b += 1,
                other => panic!("picked weight-0 instance {other}"),
            }
        }
        // Expect 2500 / 7500; allow generous slack for the seeded sample.
        assert!((2200..=2800).contains(&a), "a picked {a} times");
        assert!((7200..=7800).contains(&b), "b picked {b} times");
    }

    #[test]
    fn weighted_with_all_zero_weights_picks_nothing() {
        use State::*;
        let r = fleet(&[
            ("a", Passing, 0.0, 0.0, 0.0, 0, &[]),
            ("b", Passing, 0.0, 0.0, 0.0, 0, &[]),
        ]);
        assert_eq!(pick_id(&r, Strategy::Weighted, 0), None);
    }

    #[test]
    fn least_load_picks_lowest_load_ties_by_id() {
        use State::*;
        let r = fleet(&[
            ("c", Passing, 0.0, 0.0, 0.2, 1, &[]),
            ("b", Passing, 0.0, 0.0, 0.1, 1, &[]),
            ("a", Critical, 0.0, 0.0, 0.1, 1, &[]),
        ]);
        assert_eq!(pick_id(&r, Strategy::LeastLoad, 0).as_deref(), Some("a"));
        let healthy = discover(&r, true, None);
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(
            pick(&healthy, Strategy::LeastLoad, 0, &mut rng).map(|i| i.id.as_str()),
            Some("b")
        );
    }

    #[test]
    fn a_single_candidate_is_picked_by_every_strategy() {
        let r = fleet(&[("only", State::Warning, 0.5, 5.0, 0.5, 2, &[])]);
        for s in Strategy::ALL {
            assert_eq!(pick_id(&r, s, 9).as_deref(), Some("only"), "{s}");
        }
    }
}
