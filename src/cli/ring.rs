//! `chordctl ring show|node|leave` and `chordctl locate`.

use comfy_table::Cell;
use reqwest::Method;
use serde::Deserialize;

use super::args::{OutputFormat, RingCommand};
use super::client::Client;
use super::output::{self, short_id};
use super::{from_agent, Failure};

/// A node as the agent names it in views and lookups.
#[derive(Debug, Deserialize)]
struct NodeRef {
    id: String,
    addr: String,
    #[serde(default)]
    http: String,
}

/// One entry of `GET /v1/ring/nodes`.
#[derive(Debug, Deserialize)]
struct RingMember {
    id: String,
    addr: String,
    #[serde(default)]
    http: String,
    #[serde(default)]
    predecessor: Option<String>,
    #[serde(default)]
    successor: Option<String>,
}

/// `GET /v1/ring`: one node's own view.
#[derive(Debug, Deserialize)]
struct NodeView {
    id: String,
    addr: String,
    #[serde(default)]
    http: String,
    #[serde(default)]
    predecessor: Option<NodeRef>,
    #[serde(default)]
    successors: Vec<NodeRef>,
    #[serde(default)]
    fingers: Vec<Finger>,
}

/// One (distinct) finger-table entry.
#[derive(Debug, Deserialize)]
struct Finger {
    index: u32,
    start: String,
    node: NodeRef,
}

/// `GET /v1/locate/{key}`.
#[derive(Debug, Deserialize)]
struct Located {
    key: String,
    id: String,
    owner: NodeRef,
    #[serde(default)]
    replicas: Vec<NodeRef>,
    hops: u64,
}

/// How long a request runs before a spinner says that it is still running.
pub(crate) const SPINNER_DELAY: std::time::Duration = std::time::Duration::from_millis(300);

/// Runs one `ring` subcommand.
pub(crate) fn run(
    client: &Client,
    command: &RingCommand,
    format: OutputFormat,
) -> Result<(), Failure> {
    match command {
        RingCommand::Show => {
            // The agent walks the ring node by node: on a large ring that takes a while.
            let spinner = output::delayed_spinner("walking the ring", SPINNER_DELAY);
            let answer = client.get(&["v1", "ring", "nodes"], &[]);
            spinner.finish_and_clear();
            let answer = answer?;
            match format {
                OutputFormat::Json => output::print_json(&answer),
                OutputFormat::Table => output::print(&show_table(from_agent(answer)?)),
            }
        }
        RingCommand::Node => {
            let answer = client.get(&["v1", "ring"], &[])?;
            match format {
                OutputFormat::Json => output::print_json(&answer),
                OutputFormat::Table => output::print(&node_table(from_agent(answer)?)),
            }
        }
        RingCommand::Leave => {
            // To the agent named first only: with several given (for reaching the ring),
            // another must not leave in its place when the first cannot be reached.
            let answer =
                client.send_to_first(Method::POST, &["v1", "agent", "leave"], &[], None)?;
            match format {
                OutputFormat::Json => output::print_json(&answer),
                OutputFormat::Table => output::print(&format!(
                    "the agent at {} is leaving the ring\n",
                    client.agent()
                )),
            }
        }
    }
}

/// Runs `locate KEY`.
pub(crate) fn locate(client: &Client, key: &str, format: OutputFormat) -> Result<(), Failure> {
    let answer = client.get(&["v1", "locate", key], &[])?;
    match format {
        OutputFormat::Json => output::print_json(&answer),
        OutputFormat::Table => output::print(&locate_table(from_agent(answer)?)),
    }
}

fn show_table(nodes: Vec<RingMember>) -> String {
    let mut table = output::table(
        &[
            "node",
            "address",
            "http",
            "predecessor",
            "successor",
            "share",
        ],
        &[5],
    );
    let n = nodes.len();
    let mut settled = true;
    for (i, node) in nodes.iter().enumerate() {
        // The list is in ring order, so the previous entry is the node's predecessor on the
        // ring and the arc it owns starts there (one node: the whole ring).
        let prev = &nodes[(i + n - 1) % n];
        let next = &nodes[(i + 1) % n];
        // A lone node has no predecessor (nobody has notified it): that is settled too.
        let lone = n == 1 && node.predecessor.is_none();
        settled &= (lone || node.predecessor.as_deref() == Some(prev.id.as_str()))
            && node.successor.as_deref() == Some(next.id.as_str());
        let share = ring_share(&prev.id, &node.id)
            .map_or_else(|| "?".to_string(), |s| format!("{:.1}%", s * 100.0));
        table.add_row(vec![
            Cell::new(short_id(&node.id)),
            Cell::new(&node.addr),
            Cell::new(&node.http),
            Cell::new(node.predecessor.as_deref().map_or("-", short_id)),
            Cell::new(node.successor.as_deref().map_or("-", short_id)),
            Cell::new(share),
        ]);
    }
    let mut text = if n > 0 {
        output::render(&table)
    } else {
        String::new()
    };
    text.push_str(&match n {
        1 => "1 node".to_string(),
        n => format!("{n} nodes"),
    });
    if !settled {
        text.push_str(" (still settling: some predecessor or successor pointers skip a member)");
    }
    text.push('\n');
    text
}

fn node_table(view: NodeView) -> String {
    let mut table = output::table(&["role", "node", "address", "http"], &[]);
    let mut row = |role: String, id: &str, addr: &str, http: &str| {
        table.add_row(vec![
            role,
            short_id(id).to_string(),
            addr.into(),
            http.into(),
        ]);
    };
    row("self".into(), &view.id, &view.addr, &view.http);
    match &view.predecessor {
        Some(p) => row("predecessor".into(), &p.id, &p.addr, &p.http),
        None => row("predecessor".into(), "-", "(none yet)", ""),
    }
    for (i, s) in view.successors.iter().enumerate() {
        row(format!("successor {}", i + 1), &s.id, &s.addr, &s.http);
    }
    let mut text = output::render(&table);
    if !view.fingers.is_empty() {
        let mut fingers = output::table(&["finger", "start", "node", "address"], &[0]);
        for f in &view.fingers {
            fingers.add_row(vec![
                f.index.to_string(),
                short_id(&f.start).to_string(),
                short_id(&f.node.id).to_string(),
                f.node.addr.clone(),
            ]);
        }
        text.push('\n');
        text.push_str(&output::render(&fingers));
    }
    text
}

fn locate_table(found: Located) -> String {
    let mut text = format!(
        "key     {}\nkey id  {}\nhops    {}\n\n",
        found.key, found.id, found.hops
    );
    let mut table = output::table(&["role", "node", "address", "http"], &[]);
    table.add_row(vec![
        "owner".to_string(),
        short_id(&found.owner.id).to_string(),
        found.owner.addr.clone(),
        found.owner.http.clone(),
    ]);
    for (i, r) in found.replicas.iter().enumerate() {
        table.add_row(vec![
            format!("replica {}", i + 1),
            short_id(&r.id).to_string(),
            r.addr.clone(),
            r.http.clone(),
        ]);
    }
    text.push_str(&output::render(&table));
    text
}

/// The share of the 2^160 identifier ring on the arc (from, to], as a fraction; `from == to`
/// is the whole ring (a ring of one). `None` if either is not a 40-hex-digit identifier.
fn ring_share(from: &str, to: &str) -> Option<f64> {
    let a = id_bytes(from)?;
    let b = id_bytes(to)?;
    // (b - a) mod 2^160, big-endian, with borrow.
    let mut distance = [0u8; 20];
    let mut borrow = 0u8;
    for i in (0..20).rev() {
        let (d, under1) = b[i].overflowing_sub(a[i]);
        let (d, under2) = d.overflowing_sub(borrow);
        distance[i] = d;
        borrow = u8::from(under1 || under2);
    }
    if distance == [0; 20] {
        return Some(1.0);
    }
    let value = distance
        .iter()
        .fold(0.0f64, |acc, &byte| acc * 256.0 + f64::from(byte));
    Some(value / 2f64.powi(160))
}

fn id_bytes(id: &str) -> Option<[u8; 20]> {
    let mut bytes = [0u8; 20];
    hex::decode_to_slice(id, &mut bytes).ok()?;
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZERO: &str = "0000000000000000000000000000000000000000";
    const HALF: &str = "8000000000000000000000000000000000000000";
    const QUARTER: &str = "4000000000000000000000000000000000000000";

    #[test]
    fn shares_of_the_ring() {
        assert_eq!(ring_share(ZERO, HALF), Some(0.5));
        assert_eq!(ring_share(HALF, ZERO), Some(0.5), "wraps around");
        assert_eq!(ring_share(HALF, QUARTER), Some(0.75), "wraps around");
        assert_eq!(ring_share(QUARTER, QUARTER), Some(1.0), "a ring of one");
        assert_eq!(ring_share(ZERO, "zz"), None);
        let last = "ffffffffffffffffffffffffffffffffffffffff";
        assert!(ring_share(last, ZERO).is_some_and(|s| s > 0.0 && s < 1e-40));
    }

    #[test]
    fn show_table_lists_nodes_and_counts_them() {
        let member = |id: &str, pred: &str, succ: &str| RingMember {
            id: id.into(),
            addr: format!("10.0.0.{}:7400", &id[..1]),
            http: format!("10.0.0.{}:7500", &id[..1]),
            predecessor: Some(pred.into()),
            successor: Some(succ.into()),
        };
        let text = show_table(vec![
            member(QUARTER, HALF, HALF),
            member(HALF, QUARTER, QUARTER),
        ]);
        assert!(
            text.contains("40000000") && text.contains("10.0.0.8:7400"),
            "{text}"
        );
        assert!(text.contains("75.0%") && text.contains("25.0%"), "{text}");
        assert!(text.trim_end().ends_with("2 nodes"), "{text}");
        let unsettled = show_table(vec![
            member(QUARTER, QUARTER, QUARTER),
            member(HALF, QUARTER, QUARTER),
        ]);
        assert!(unsettled.contains("still settling"), "{unsettled}");
    }
}
