//! `chordctl bench` against a real agent process: the JSON summary's shape, that load was
//! sent without errors, and that the benchmark's services are gone afterwards. No timing is
//! asserted: the figures depend on the machine.

use serde_json::Value;

use crate::support::procs::{client, AgentProc};

fn bench_json(url: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "-o",
        "json",
        "bench",
        "--duration",
        "1s",
        "--concurrency",
        "4",
        "--services",
        "2",
    ];
    args.extend_from_slice(extra);
    let out = client(url, &args);
    assert!(
        out.status.success(),
        "bench failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bench -o json is not JSON ({e}): {:?}", out.stdout))
}

fn bench_services(url: &str) -> Vec<Value> {
    let out = client(url, &["-o", "json", "svc", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(Vec::new()));
    list.as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|s| {
            s["service"]
                .as_str()
                .is_some_and(|n| n.starts_with("bench-"))
                && s["instances"].as_u64() != Some(0)
        })
        .collect()
}

#[test]
fn bench_mixed_reports_ops_and_cleans_up() {
    let agent = AgentProc::start(None, &[]);
    let url = agent.url();
    let v = bench_json(&url, &["--mix", "mixed"]);
    for key in [
        "agent",
        "mix",
        "concurrency",
        "services",
        "duration_secs",
        "first_error",
    ] {
        assert!(v.get(key).is_some(), "no {key} in {v}");
    }
    assert_eq!(v["mix"], "mixed");
    assert_eq!(v["concurrency"], 4);
    assert!(v["ops"].as_u64().is_some_and(|n| n > 0), "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    assert!(v["ops_per_sec"].as_f64().is_some_and(|r| r > 0.0), "{v}");
    for p in ["p50", "p90", "p99", "max"] {
        assert!(
            v["latency_ms"][p].as_f64().is_some_and(|x| x >= 0.0),
            "{p} in {v}"
        );
    }
    let ops = v["operations"].as_array().cloned().unwrap_or_default();
    assert!(!ops.is_empty(), "{v}");
    for op in &ops {
        assert!(
            ["register", "discover", "report"].contains(&op["op"].as_str().unwrap_or("")),
            "{op}"
        );
        assert!(op["latency_ms"]["p99"].is_number(), "{op}");
    }
    assert!(
        bench_services(&url).is_empty(),
        "bench left services behind"
    );
}

#[test]
fn bench_keep_leaves_its_services_and_table_output_works() {
    let agent = AgentProc::start(None, &[]);
    let url = agent.url();
    let v = bench_json(&url, &["--mix", "register", "--keep"]);
    assert_eq!(v["errors"], 0, "{v}");
    assert!(v["ops"].as_u64().is_some_and(|n| n > 0), "{v}");
    assert_eq!(bench_services(&url).len(), 2, "--keep removed the services");

    let out = client(
        &url,
        &[
            "bench",
            "--mix",
            "discover",
            "--duration",
            "1",
            "--concurrency",
            "2",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for header in ["OP", "OPS/S", "P50", "P99", "discover"] {
        assert!(text.contains(header), "{header} missing from\n{text}");
    }
}

#[test]
fn bench_against_no_agent_exits_3() {
    let out = client(
        "http://127.0.0.1:9",
        &["bench", "--duration", "1s", "--concurrency", "1"],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
