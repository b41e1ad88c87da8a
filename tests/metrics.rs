//! `GET /metrics` after some traffic through a 2-node in-process ring, read by a strict parser
//! of the Prometheus text exposition format (0.0.4) written here, so that a malformed line, a
//! sample without its `# TYPE`, or a histogram whose buckets are not cumulative fails the test.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::cluster::TestCluster;
use crate::support::http::call;

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: the declared type of every family and the samples in order.
#[derive(Debug, Default)]
struct Exposition {
    types: HashMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    /// Samples of `name` whose labels include every pair of `with`.
    fn find(&self, name: &str, with: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && with
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The value of the one sample of `name` with labels `with`; panics if not exactly one.
    fn value(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        let found = self.find(name, with);
        assert_eq!(found.len(), 1, "{name} {with:?}: {found:?}");
        found[0].value
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s
            .parse::<f64>()
            .map_err(|e| format!("bad value {s:?}: {e}")),
    }
}

/// `k="v",k2="v2"` (the text between the braces) into a map; escapes `\\`, `\"`, `\n`.
fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let eq = rest
            .find('=')
            .ok_or(format!("label without '=': {rest:?}"))?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut chars = rest[eq + 1..].char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err(format!("label value of {name} not quoted"));
        }
        let mut value = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next().map(|(_, c)| c) {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => return Err(format!("bad escape \\{other:?} in {name}")),
                },
                '"' => {
                    end = Some(eq + 1 + i + 1);
                    break;
                }
                '\n' => return Err("raw newline in a label value".into()),
                c => value.push(c),
            }
        }
        let end = end.ok_or(format!("unterminated value of {name}"))?;
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = &rest[end..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.is_empty() {
            return Err(format!("junk after label {name}: {rest:?}"));
        }
    }
    Ok(labels)
}

/// The family a sample belongs to: `x_bucket`/`x_sum`/`x_count` belong to histogram `x`.
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).map(String::as_str) == Some("histogram") {
                return Some(base);
            }
        }
    }
    None
}

/// Parses strictly: every line is a `# HELP`, a `# TYPE` (once per family, before its
/// samples), or a sample of a declared family; no duplicate series; histograms well formed.
fn parse(text: &str) -> Result<Exposition, String> {
    let mut exp = Exposition::default();
    let mut seen = std::collections::HashSet::new();
    if !text.ends_with('\n') {
        return Err("the exposition must end with a newline".into());
    }
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(name), Some(_)) if is_metric_name(name) => {}
                (Some("TYPE"), Some(name), Some(kind)) if is_metric_name(name) => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(at(format!("unknown type {kind}")));
                    }
                    if exp.types.insert(name.into(), kind.into()).is_some() {
                        return Err(at("TYPE given twice".into()));
                    }
                    if exp
                        .samples
                        .iter()
                        .any(|s| family_of(&s.name, &exp.types) == Some(name))
                    {
                        return Err(at("TYPE after samples of the family".into()));
                    }
                }
                _ => return Err(at("malformed comment".into())),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value".into()))?;
        let value = parse_value(value).map_err(at)?;
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .ok_or_else(|| at("unclosed labels".into()))?;
                (name, parse_labels(inner).map_err(at)?)
            }
            None => (series, BTreeMap::new()),
        };
        if !is_metric_name(name) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let family = family_of(name, &exp.types)
            .ok_or_else(|| at(format!("sample of {name} without a # TYPE")))?;
        let kind = exp.types[family].as_str();
        if kind == "counter" && (value.is_nan() || value < 0.0) {
            return Err(at("negative or NaN counter".into()));
        }
        if !seen.insert(format!("{name}{labels:?}")) {
            return Err(at("duplicate series".into()));
        }
        exp.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    check_histograms(&exp)?;
    Ok(exp)
}

/// Every histogram series: `le` ascending ending in `+Inf`, counts cumulative, `+Inf` equal to
/// `_count`, and a `_sum`.
fn check_histograms(exp: &Exposition) -> Result<(), String> {
    for (family, kind) in &exp.types {
        if kind != "histogram" {
            continue;
        }
        // Buckets grouped by their labels other than `le`.
        let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for s in exp.find(&format!("{family}_bucket"), &[]) {
            let le = s
                .labels
                .get("le")
                .ok_or(format!("{family} bucket without le"))?;
            let mut rest = s.labels.clone();
            rest.remove("le");
            series
                .entry(format!("{rest:?}"))
                .or_default()
                .push((parse_value(le)?, s.value));
        }
        for (labels, buckets) in series {
            let ordered = buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
            if !ordered {
                return Err(format!(
                    "{family}{labels}: buckets not cumulative: {buckets:?}"
                ));
            }
            let (last_le, inf) = buckets[buckets.len() - 1];
            if last_le != f64::INFINITY {
                return Err(format!("{family}{labels}: no +Inf bucket"));
            }
            let count = exp
                .samples
                .iter()
                .find(|s| {
                    s.name == format!("{family}_count") && format!("{:?}", s.labels) == labels
                })
                .ok_or(format!("{family}{labels}: no _count"))?;
            if count.value != inf {
                return Err(format!(
                    "{family}{labels}: +Inf {inf} != _count {}",
                    count.value
                ));
            }
            let has_sum = exp
                .samples
                .iter()
                .any(|s| s.name == format!("{family}_sum") && format!("{:?}", s.labels) == labels);
            if !has_sum {
                return Err(format!("{family}{labels}: no _sum"));
            }
        }
    }
    Ok(())
}

#[test]
fn the_parser_is_strict() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\"} 3\n\
                # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 4\nh_count 2\n";
    let exp = parse(good).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(exp.value("a_total", &[("x", "q\"")]), 3.0);
    for bad in [
        "a_total 1\n",                    // no TYPE
        "# TYPE a counter\na{x=\"1} 1\n", // unterminated
        "# TYPE a counter\na 1\na 2\n",   // duplicate
        "# TYPE a counter\na -1\n",       // negative counter
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", // no +Inf
        "# TYPE a counter\na 1",                                          // no final newline
        "# TYPE a gauge\na one\n",
    ] {
        assert!(parse(bad).is_err(), "accepted {bad:?}");
    }
}

async fn scrape(url: &str) -> Exposition {
    let resp = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap_or_else(|e| panic!("{url}/metrics: {e}"));
    assert_eq!(resp.status().as_u16(), 200);
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = resp.text().await.unwrap_or_else(|e| panic!("body: {e}"));
    parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_traffic_on_two_nodes() {
    let c = TestCluster::start(2).await;
    c.settle().await;
    let (a, b) = (c.url(0), c.url(1));
    for i in 0..5 {
        let (st, body) = call(
            "PUT",
            &format!("{a}/v1/services/svc-{i}/instances/x"),
            Some(json!({"address": "10.0.0.1", "port": 80})),
        )
        .await;
        assert_eq!(st, 200, "{body}");
    }
    for i in 0..5 {
        let (st, body) = call("GET", &format!("{a}/v1/services/svc-{i}"), None).await;
        assert_eq!(st, 200, "{body}");
    }
    let (st, _) = call("GET", &format!("{a}/v1/services/absent"), None).await;
    assert_eq!(st, 404);
    let (st, _) = call("GET", &format!("{a}/no/such/route"), None).await;
    assert_eq!(st, 404);
    let (st, _) = call("GET", &format!("{a}/v1/ring/nodes"), None).await;
    assert_eq!(st, 200);
    for key in ["k1", "k2", "k3"] {
        let (st, _) = call("GET", &format!("{b}/v1/locate/{key}"), None).await;
        assert_eq!(st, 200);
        let (st, _) = call("GET", &format!("{a}/v1/locate/{key}"), None).await;
        assert_eq!(st, 200);
    }

    let m = scrape(&a).await;
    let requests = "chordctl_http_requests_total";
    let put = "/v1/services/{service}/instances/{id}";
    assert_eq!(
        m.value(
            requests,
            &[("method", "PUT"), ("route", put), ("status", "200")]
        ),
        5.0
    );
    assert_eq!(
        m.value(
            requests,
            &[
                ("method", "GET"),
                ("route", "/v1/services/{service}"),
                ("status", "200")
            ]
        ),
        5.0
    );
    assert_eq!(
        m.value(
            requests,
            &[
                ("method", "GET"),
                ("route", "/v1/services/{service}"),
                ("status", "404")
            ]
        ),
        1.0
    );
    assert_eq!(
        m.value(requests, &[("route", "unmatched"), ("status", "404")]),
        1.0
    );
    // Route templates only: no raw path becomes a label.
    for s in m.find(requests, &[]) {
        let route = &s.labels["route"];
        assert!(!route.contains("svc-") && !route.contains("/no/"), "{s:?}");
    }
    assert_eq!(
        m.value(
            "chordctl_http_request_duration_seconds_count",
            &[("route", put)]
        ),
        5.0
    );
    assert_eq!(
        m.types["chordctl_http_request_duration_seconds"],
        "histogram"
    );

    assert_eq!(m.types["chordctl_ring_size"], "gauge");
    assert_eq!(m.value("chordctl_ring_size", &[]), 2.0);
    assert_eq!(m.value("chordctl_ring_walk_size", &[]), 2.0);
    assert_eq!(m.value("chordctl_ring_member", &[]), 1.0);

    // Every locate looks its key up (routed service requests may skip the lookup: an owner
    // answers its own keys, and a non-owner reuses a recent route).
    let found = m.value("chordctl_lookups_total", &[("result", "found")]);
    assert!(found >= 3.0, "{found} lookups");
    assert_eq!(m.types["chordctl_lookup_hops"], "histogram");
    assert_eq!(m.value("chordctl_lookup_hops_count", &[]), found);
    let hops = m.value("chordctl_lookup_hops_sum", &[]);
    // On two nodes a lookup takes at most a couple of remote steps.
    assert!(
        hops >= 0.0 && hops <= 2.0 * found,
        "{hops} hops in {found} lookups"
    );
    assert_eq!(
        m.value("chordctl_lookup_hops_bucket", &[("le", "+Inf")]),
        found
    );

    assert_eq!(m.value("chordctl_replication_errors_total", &[]), 0.0);
    assert_eq!(m.types["chordctl_rpc_connections_refused_total"], "counter");
    assert_eq!(m.value("chordctl_rpc_connections_refused_total", &[]), 0.0);
    assert_eq!(
        m.value("chordctl_store_errors_total", &[("op", "apply")]),
        0.0
    );
    // The lookups at b were counted at b.
    let mb = scrape(&b).await;
    // Each write was a group of its own at its owner (a or b): its store batch and its
    // quorum timed once each; its copy merged at the other node.
    assert_eq!(m.types["chordctl_write_stage_seconds"], "histogram");
    let stage = |stage: &str| {
        let labels = [("stage", stage)];
        m.value("chordctl_write_stage_seconds_count", &labels)
            + mb.value("chordctl_write_stage_seconds_count", &labels)
    };
    assert_eq!(stage("owner_store"), 5.0);
    assert_eq!(stage("quorum"), 5.0);
    assert!(stage("replica_merge") >= 1.0, "{}", stage("replica_merge"));
    assert!(mb.value("chordctl_lookups_total", &[("result", "found")]) >= 3.0);

    // With three copies wanted and two nodes, each node holds every record: owned or replica.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ma, mb) = (scrape(&a).await, scrape(&b).await);
        let held = |m: &Exposition| {
            m.value("chordctl_records", &[("role", "owned")])
                + m.value("chordctl_records", &[("role", "replica")])
        };
        let owned = ma.value("chordctl_records", &[("role", "owned")])
            + mb.value("chordctl_records", &[("role", "owned")]);
        if held(&ma) == 5.0 && held(&mb) == 5.0 && owned == 5.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "records: a holds {}, b holds {}, owned {owned}",
            held(&ma),
            held(&mb)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every record written is in memory at its owner (or a copy): far below the bounds.
    let (ma, mb) = (scrape(&a).await, scrape(&b).await);
    assert_eq!(ma.types["chordctl_record_cache"], "gauge");
    assert_eq!(ma.types["chordctl_record_cache_full_total"], "counter");
    assert_eq!(ma.types["chordctl_record_cache_evictions_total"], "counter");
    let cached = |m: &Exposition, what: &str| m.value("chordctl_record_cache", &[("what", what)]);
    assert!(cached(&ma, "records") + cached(&mb, "records") >= 5.0);
    assert!(cached(&ma, "units") >= cached(&ma, "records"));
    assert_eq!(ma.value("chordctl_record_cache_full_total", &[]), 0.0);
}
