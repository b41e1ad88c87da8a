//! `chordctl svc ...` and `chordctl status ...`: the service registry's client commands.

use chrono::{DateTime, Utc};
use comfy_table::Cell;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::args::{DiscoverArgs, OutputFormat, PolicyArgs, ReportArgs, StatusCommand, SvcCommand};
use super::client::Client;
use super::output;
use super::{from_agent, Failure};

/// An instance as far as the table shows it (API.md, INSTANCE); absent fields show as `-`.
#[derive(Debug, Deserialize)]
struct Instance {
    id: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: Option<u64>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    weight: Option<f64>,
    #[serde(default)]
    registered_at: Option<DateTime<Utc>>,
    #[serde(default)]
    status: Status,
    /// Held in its worse state by flap damping (absent: not).
    #[serde(default)]
    flapping: bool,
}

impl Instance {
    /// Whether the instance has had a status report (or a TTL expiry) since it was registered.
    ///
    /// A registration stamps `registered_at` and the status's `updated_at` with the same
    /// instant, and registering again keeps both; every report (and a TTL expiry) moves
    /// `updated_at` on. So the two being equal means the measures are the zeros a new instance
    /// starts with, not values anyone reported. When either is missing (another agent version,
    /// a hand-made answer) the measures are shown as they are.
    fn has_reported(&self) -> bool {
        match (self.registered_at, self.status.updated_at) {
            (Some(registered), Some(updated)) => registered != updated,
            _ => true,
        }
    }
}

/// An instance's reported status.
#[derive(Debug, Default, Deserialize)]
struct Status {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    load: Option<f64>,
    #[serde(default)]
    success_rate: Option<f64>,
    #[serde(default)]
    latency_ms: Option<f64>,
    #[serde(default)]
    updated_at: Option<DateTime<Utc>>,
}

/// The discover answer: `{"service", "instances": [...]}`.
#[derive(Debug, Deserialize)]
struct Discovered {
    service: String,
    instances: Vec<Instance>,
}

/// One entry of `GET /v1/services`: the instance count and the counts by state (absent from an
/// agent older than the counts: shown as `-`).
#[derive(Debug, Deserialize)]
struct ServiceCount {
    service: String,
    instances: u64,
    #[serde(default)]
    passing: Option<u64>,
    #[serde(default)]
    warning: Option<u64>,
    #[serde(default)]
    critical: Option<u64>,
    #[serde(default)]
    maintenance: Option<u64>,
}

/// Runs one `svc` subcommand.
pub(crate) fn run(
    client: &Client,
    command: &SvcCommand,
    format: OutputFormat,
) -> Result<(), Failure> {
    match command {
        SvcCommand::Register(args) => {
            let id = args.instance_id();
            let mut body = json!({
                "address": args.address,
                "port": args.port,
                "tags": args.tags,
                "metadata": args.metadata(),
            });
            if let Some(weight) = args.weight {
                body["weight"] = json!(weight);
            }
            if let Some(ttl) = args.ttl {
                body["ttl_secs"] = json!(ttl);
            }
            let answer = client.send(
                Method::PUT,
                &["v1", "services", &args.service, "instances", &id],
                &[],
                Some(&body),
            )?;
            confirm(
                format,
                &answer,
                &format!("registered {} instance {id}", args.service),
            )
        }
        SvcCommand::Deregister { service, id } => {
            let answer = client.send(
                Method::DELETE,
                &["v1", "services", service, "instances", id],
                &[],
                None,
            )?;
            confirm(
                format,
                &answer,
                &format!("deregistered {service} instance {id}"),
            )
        }
        SvcCommand::Discover(args) => {
            discover(client, &args.service, &discover_query(args), format)
        }
        SvcCommand::Explain(args) => explain(client, args, format),
        SvcCommand::Policy(args) => policy(client, args, format),
        SvcCommand::List => {
            // The agent asks every node of the ring in turn.
            let spinner = output::delayed_spinner(
                "asking every node of the ring",
                super::ring::SPINNER_DELAY,
            );
            let answer = client.get(&["v1", "services"], &[]);
            spinner.finish_and_clear();
            let answer = answer?;
            if format == OutputFormat::Json {
                return output::print_json(&answer);
            }
            let services: Vec<ServiceCount> = from_agent(answer)?;
            if services.is_empty() {
                return output::print("no services registered\n");
            }
            let mut text = services_table(&services);
            text.push_str(&plural(services.len(), "service"));
            text.push('\n');
            output::print(&text)
        }
        // `mod.rs` runs it with a client made for streams (no overall request deadline).
        SvcCommand::Watch(_) => Err(Failure::Failed(
            "internal: svc watch needs a streaming client".into(),
        )),
    }
}

/// Runs one `status` subcommand.
pub(crate) fn status(
    client: &Client,
    command: &StatusCommand,
    format: OutputFormat,
) -> Result<(), Failure> {
    match command {
        StatusCommand::Report(args) => report(client, args, format),
        StatusCommand::Query { service, id: None } => discover(client, service, &[], format),
        StatusCommand::Query {
            service,
            id: Some(id),
        } => {
            let answer = client.get(&["v1", "services", service, "instances", id], &[])?;
            match format {
                OutputFormat::Json => output::print_json(&answer),
                OutputFormat::Table => output::print(&instances_table(&[from_agent(answer)?])),
            }
        }
    }
}

fn report(client: &Client, args: &ReportArgs, format: OutputFormat) -> Result<(), Failure> {
    // Only the fields given: the agent keeps the others as they were.
    let mut body = Map::new();
    body.insert("state".into(), json!(args.state.as_str()));
    let numbers = [
        ("load", args.load),
        ("success_rate", args.success_rate),
        ("latency_ms", args.latency_ms),
        ("frequency", args.frequency),
    ];
    for (name, value) in numbers {
        if let Some(value) = value {
            body.insert(name.into(), json!(value));
        }
    }
    if let Some(note) = &args.note {
        body.insert("note".into(), json!(note));
    }
    let answer = client.send(
        Method::PUT,
        &[
            "v1",
            "services",
            &args.service,
            "instances",
            &args.id,
            "status",
        ],
        &[],
        Some(&Value::Object(body)),
    )?;
    confirm(
        format,
        &answer,
        &format!(
            "reported {} instance {}: {}",
            args.service,
            args.id,
            args.state.as_str()
        ),
    )
}

/// `GET /v1/services/{service}` and its table: every instance, or the one picked.
fn discover(
    client: &Client,
    service: &str,
    query: &[(&str, &str)],
    format: OutputFormat,
) -> Result<(), Failure> {
    let answer = client.get(&["v1", "services", service], query)?;
    if format == OutputFormat::Json {
        return output::print_json(&answer);
    }
    if answer.get("instances").is_some() {
        let found: Discovered = from_agent(answer)?;
        if found.instances.is_empty() {
            return output::print(&format!("no instances of {}\n", found.service));
        }
        let mut text = instances_table(&found.instances);
        text.push_str(&plural(found.instances.len(), "instance"));
        text.push_str(&format!(" of {}\n", found.service));
        output::print(&text)
    } else {
        // `--pick`: one instance.
        output::print(&instances_table(&[from_agent(answer)?]))
    }
}

/// The query of a discover (or an explain) with these filters.
fn discover_query(args: &DiscoverArgs) -> Vec<(&'static str, &str)> {
    let mut query = Vec::new();
    if args.healthy {
        query.push(("healthy", "true"));
    }
    if let Some(tag) = &args.tag {
        query.push(("tag", tag.as_str()));
    }
    if let Some(pick) = args.pick {
        query.push(("pick", pick.as_str()));
    }
    query
}

/// One instance of an explain answer.
#[derive(Debug, Deserialize)]
struct Explained {
    id: String,
    returned: bool,
    #[serde(default)]
    reasons: Vec<String>,
    #[serde(default)]
    score: Value,
}

/// The explain answer.
#[derive(Debug, Deserialize)]
struct Explanation {
    service: String,
    #[serde(default)]
    panic: bool,
    #[serde(default)]
    picked: Option<String>,
    instances: Vec<Explained>,
}

/// `svc explain`: a table with a REASONS column (and a SCORE column with `--pick`).
fn explain(client: &Client, args: &DiscoverArgs, format: OutputFormat) -> Result<(), Failure> {
    let answer = client.get(
        &["v1", "services", &args.service, "explain"],
        &discover_query(args),
    )?;
    if format == OutputFormat::Json {
        return output::print_json(&answer);
    }
    let e: Explanation = from_agent(answer)?;
    output::print(&explain_text(&e, args.pick.is_some()))
}

fn explain_text(e: &Explanation, with_scores: bool) -> String {
    if e.instances.is_empty() {
        return format!("no instances of {}\n", e.service);
    }
    let mut headers = vec!["instance", "returned"];
    if with_scores {
        headers.push("score");
    }
    headers.push("reasons");
    let mut table = output::table(&headers, &[]);
    for i in &e.instances {
        let mut row = vec![
            i.id.clone(),
            if i.returned { "yes" } else { "no" }.to_string(),
        ];
        if with_scores {
            row.push(score_text(&i.score));
        }
        row.push(if i.reasons.is_empty() {
            "-".to_string()
        } else {
            i.reasons.join("; ")
        });
        table.add_row(row);
    }
    let mut text = output::render(&table);
    if e.panic {
        text.push_str(&format!(
            "{} is in panic: below its healthy share, --healthy returns every instance\n",
            e.service
        ));
    }
    if with_scores {
        match &e.picked {
            Some(id) => text.push_str(&format!("picked {id}\n")),
            None => text.push_str("nothing to pick\n"),
        }
    }
    text
}

/// A score object as `key=value` pairs.
fn score_text(score: &Value) -> String {
    match score {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

/// `svc policy`: show the policy, or change the fields given and keep the others.
fn policy(client: &Client, args: &PolicyArgs, format: OutputFormat) -> Result<(), Failure> {
    let path = ["v1", "services", args.service.as_str(), "policy"];
    let mut policy = if args.changes() {
        // The current policy, or the defaults for a service that has none yet.
        match client.get(&path, &[]) {
            Ok(current) => current,
            Err(Failure::NotFound(_)) => json!({}),
            Err(e) => return Err(e),
        }
    } else {
        let current = client.get(&path, &[])?;
        return match format {
            OutputFormat::Json => output::print_json(&current),
            OutputFormat::Table => output::print(&policy_table(&current)),
        };
    };
    let fields = [
        (
            "failures_before_critical",
            args.failures_before_critical.map(|v| json!(v)),
        ),
        (
            "successes_before_passing",
            args.successes_before_passing.map(|v| json!(v)),
        ),
        ("flap_half_life_secs", args.flap_half_life.map(|v| json!(v))),
        ("panic_threshold", args.panic_threshold.map(|v| json!(v))),
    ];
    for (name, value) in fields {
        if let Some(value) = value {
            policy[name] = value;
        }
    }
    let answer = client.send(Method::PUT, &path, &[], Some(&policy))?;
    match format {
        OutputFormat::Json => output::print_json(&answer),
        OutputFormat::Table => output::print(&policy_table(&answer)),
    }
}

/// A policy as a two-column table.
fn policy_table(policy: &Value) -> String {
    let mut table = output::table(&["setting", "value"], &[1]);
    let rows = [
        "failures_before_critical",
        "successes_before_passing",
        "flap_half_life_secs",
        "panic_threshold",
    ];
    for name in rows {
        let value = policy
            .get(name)
            .map_or_else(|| "-".to_string(), Value::to_string);
        table.add_row(vec![name.to_string(), value]);
    }
    output::render(&table)
}

/// The services with their instance counts, in total and by state.
fn services_table(services: &[ServiceCount]) -> String {
    let headers = [
        "service",
        "instances",
        "passing",
        "warning",
        "critical",
        "maintenance",
    ];
    let mut table = output::table(&headers, &[1, 2, 3, 4, 5]);
    let count = |n: Option<u64>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
    for s in services {
        table.add_row(vec![
            s.service.clone(),
            s.instances.to_string(),
            count(s.passing),
            count(s.warning),
            count(s.critical),
            count(s.maintenance),
        ]);
    }
    output::render(&table)
}

/// Instances as a table that fits 80 columns: the id alone when every id is the default
/// `ADDRESS:PORT`, otherwise the id and the endpoint.
fn instances_table(instances: &[Instance]) -> String {
    let color = output::use_color();
    let endpoint = |i: &Instance| match i.port {
        Some(p) if i.address.contains(':') => format!("[{}]:{p}", i.address),
        Some(p) => format!("{}:{p}", i.address),
        None => i.address.clone(),
    };
    let default_ids = instances.iter().all(|i| i.id == endpoint(i));
    let mut headers = vec!["instance"];
    if !default_ids {
        headers.push("endpoint");
    }
    headers.extend(["state", "succ", "lat", "load", "wt", "tags"]);
    let first_number = headers.len() - 5;
    let right: Vec<usize> = (first_number..first_number + 4).collect();
    let mut table = output::table(&headers, &right);
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for i in instances {
        let s = &i.status;
        // A new instance's zeros are not measures: "0.0%" would say it failed every call.
        let reported = i.has_reported();
        let mut row = vec![Cell::new(&i.id)];
        if !default_ids {
            row.push(Cell::new(endpoint(i)));
        }
        row.extend([
            output::state_cell(
                s.state.as_deref().unwrap_or("-"),
                if i.flapping { " (flapping)" } else { "" },
                color,
            ),
            Cell::new(or_dash(
                s.success_rate
                    .filter(|_| reported)
                    .map(|r| format!("{:.1}%", r * 100.0)),
            )),
            Cell::new(or_dash(s.latency_ms.filter(|_| reported).map(|l| {
                if l >= 100.0 {
                    format!("{l:.0}ms")
                } else {
                    format!("{l:.1}ms")
                }
            }))),
            Cell::new(or_dash(s.load.map(|l| format!("{l:.2}")))),
            Cell::new(or_dash(i.weight.map(|w| w.to_string()))),
            Cell::new(if i.tags.is_empty() {
                "-".into()
            } else {
                i.tags.join(",")
            }),
        ]);
        table.add_row(row);
    }
    output::render(&table)
}

/// A one-line confirmation in table mode; the agent's JSON in JSON mode.
fn confirm(format: OutputFormat, answer: &Value, message: &str) -> Result<(), Failure> {
    match format {
        OutputFormat::Json => output::print_json(answer),
        OutputFormat::Table => output::print(&format!("{message}\n")),
    }
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, address: &str, port: u64) -> Instance {
        serde_json::from_value(json!({
            "id": id, "address": address, "port": port, "tags": ["v2"], "weight": 100,
            "status": {"state": "maintenance", "load": 12.25, "success_rate": 0.995,
                       "latency_ms": 1234.5}
        }))
        .expect("instance")
    }

    #[test]
    fn discover_tables_fit_80_columns() {
        let default_ids: Vec<Instance> = (0..3)
            .map(|i| {
                inst(
                    &format!("10.100.200.{i}:65535"),
                    &format!("10.100.200.{i}"),
                    65535,
                )
            })
            .collect();
        let text = instances_table(&default_ids);
        assert!(!text.to_lowercase().contains("endpoint"), "{text}");
        assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");
        let named = vec![inst("payments-eu-7", "10.100.200.1", 65535)];
        let text = instances_table(&named);
        assert!(
            text.to_lowercase().contains("endpoint") && text.contains("10.100.200.1:65535"),
            "{text}"
        );
        assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");
    }

    #[test]
    fn instance_table_reads_the_api_shape() {
        let instance: Instance = serde_json::from_value(json!({
            "service": "payments", "id": "10.0.0.7:8080", "address": "10.0.0.7", "port": 8080,
            "tags": ["v2", "eu"], "metadata": {"zone": "a"}, "weight": 1, "ttl_secs": 30,
            "registered_at": "2026-11-25T14:00:00Z",
            "status": {"state": "passing", "load": 0.25, "success_rate": 0.99, "latency_ms": 12.5,
                       "frequency": 30.0, "note": "", "updated_at": "2026-11-25T14:00:05Z"}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let text = instances_table(&[instance]);
        for part in [
            "10.0.0.7:8080",
            "8080",
            "passing",
            "99.0%",
            "12.5ms",
            "0.25",
            "v2,eu",
        ] {
            assert!(text.contains(part), "{part} missing from\n{text}");
        }
        assert!(text.lines().all(|l| l.len() <= 80), "{text}");
    }

    /// The cells of the first row under the header, split on runs of blanks.
    fn first_row(text: &str) -> Vec<String> {
        let row = text.lines().nth(1).unwrap_or_default();
        row.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn a_new_instance_shows_no_success_rate_or_latency_until_it_reports() {
        let fresh = json!({
            "service": "payments", "id": "10.0.0.7:8080", "address": "10.0.0.7", "port": 8080,
            "tags": [], "metadata": {}, "weight": 1, "ttl_secs": null,
            "registered_at": "2026-11-25T14:00:00.123456789Z",
            "status": {"state": "passing", "load": 0.0, "success_rate": 0.0, "latency_ms": 0.0,
                       "frequency": 0.0, "note": "",
                       "updated_at": "2026-11-25T14:00:00.123456789Z"}
        });
        let instance = |v: &Value| -> Instance {
            serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}"))
        };
        let text = instances_table(&[instance(&fresh)]);
        assert_eq!(
            first_row(&text),
            ["10.0.0.7:8080", "passing", "-", "-", "0.00", "1", "-"],
            "{text}"
        );
        let mut reported = fresh.clone();
        reported["status"]["success_rate"] = json!(0.95);
        reported["status"]["latency_ms"] = json!(12.0);
        reported["status"]["updated_at"] = json!("2026-11-25T14:00:05Z");
        let text = instances_table(&[instance(&reported)]);
        assert_eq!(
            first_row(&text),
            [
                "10.0.0.7:8080",
                "passing",
                "95.0%",
                "12.0ms",
                "0.00",
                "1",
                "-"
            ],
            "{text}"
        );
        // A report of zeros is a report: 0.0% is what it said.
        let mut zeros = fresh.clone();
        zeros["status"]["updated_at"] = json!("2026-11-25T14:00:05Z");
        let text = instances_table(&[instance(&zeros)]);
        assert_eq!(first_row(&text)[2..4], ["0.0%", "0.0ms"], "{text}");
        // Without the timestamps (not an INSTANCE of this version), the numbers as they are.
        let bare = json!({"id": "x", "status": {"success_rate": 0.0, "latency_ms": 0.0}});
        let text = instances_table(&[instance(&bare)]);
        assert!(text.contains("0.0%") && text.contains("0.0ms"), "{text}");
    }

    #[test]
    fn the_service_list_shows_the_counts_by_state() {
        let services: Vec<ServiceCount> = serde_json::from_value(json!([
            {"service": "payments", "instances": 7, "passing": 3, "warning": 2, "critical": 1,
             "maintenance": 1},
            {"service": "old-agent", "instances": 2}
        ]))
        .unwrap_or_else(|e| panic!("{e}"));
        let text = services_table(&services);
        let lines: Vec<&str> = text.lines().collect();
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            header,
            [
                "SERVICE",
                "INSTANCES",
                "PASSING",
                "WARNING",
                "CRITICAL",
                "MAINTENANCE"
            ],
            "{text}"
        );
        let cells =
            |line: &str| -> Vec<String> { line.split_whitespace().map(str::to_string).collect() };
        assert_eq!(
            cells(lines[1]),
            ["payments", "7", "3", "2", "1", "1"],
            "{text}"
        );
        assert_eq!(
            cells(lines[2]),
            ["old-agent", "2", "-", "-", "-", "-"],
            "{text}"
        );
        assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");
    }

    #[test]
    fn a_flapping_instance_says_so_in_its_state_column() {
        let mut flapping = inst("a", "10.0.0.1", 80);
        flapping.flapping = true;
        let text = instances_table(&[flapping, inst("b", "10.0.0.1", 81)]);
        assert!(text.contains("maintenance (flapping)"), "{text}");
        assert_eq!(text.matches("(flapping)").count(), 1, "{text}");
    }

    #[test]
    fn explain_prints_a_reasons_column_the_scores_and_the_pick() {
        let e: Explanation = serde_json::from_value(json!({
            "service": "pay", "filters": {}, "panic": true, "picked": "a",
            "instances": [
                {"id": "a", "returned": true, "reasons": [], "score": {"rank": 1, "load": 0.5}},
                {"id": "b", "returned": false, "reasons": ["no tag v2", "in maintenance"],
                 "score": null}
            ]
        }))
        .expect("explanation");
        let text = explain_text(&e, true);
        assert!(text.to_lowercase().contains("reasons"), "{text}");
        assert!(text.contains("no tag v2; in maintenance"), "{text}");
        assert!(text.contains("load=0.5 rank=1"), "{text}");
        assert!(text.contains("picked a"), "{text}");
        assert!(text.contains("pay is in panic"), "{text}");
        let text = explain_text(&e, false);
        assert!(!text.to_lowercase().contains("score"), "{text}");
    }
}
