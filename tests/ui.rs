//! The web view (`GET /ui`, issue 17) in a real browser: a headless Chromium over the DevTools
//! protocol (tests/support/browser.rs) against real agent processes, checking the rendered DOM
//! through the page's stable hooks (`[data-node-id]`, `[data-service]`, `[data-instance]`).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::browser::{artifact_dir, Browser};
use crate::support::http;
use crate::support::procs::{client, poll, AgentProc};

/// Generous: Chromium and three agents share a small, busy machine.
const DEADLINE: Duration = Duration::from_secs(60);

fn ring_size(url: &str, token: Option<&str>) -> Result<usize, String> {
    let mut args = vec!["-o", "json"];
    if let Some(t) = token {
        args.extend(["--token", t]);
    }
    args.extend(["ring", "show"]);
    let out = client(url, &args);
    let nodes: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    nodes
        .as_array()
        .map(Vec::len)
        .ok_or_else(|| nodes.to_string())
}

/// Run the client against `url` with the words of `line`; it must succeed.
fn cli(url: &str, line: &str) {
    let args: Vec<&str> = line.split_whitespace().collect();
    let out = client(url, &args);
    assert!(
        out.status.success(),
        "{line}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The ids drawn on the ring, sorted.
const DRAWN: &str = "JSON.stringify([...document.querySelectorAll('[data-node-id]')]\
                     .map(n => n.dataset.nodeId).sort())";

fn drawn(b: &mut Browser) -> Vec<String> {
    let text = b.eval(DRAWN);
    serde_json::from_str(text.as_str().unwrap_or("[]")).unwrap_or_default()
}

#[test]
fn ui_draws_the_ring_shows_a_new_service_live_and_drops_a_killed_node() {
    let a = AgentProc::start(None, &[]);
    let b = AgentProc::start(Some(&a.ring), &[]);
    let mut c = AgentProc::start(Some(&a.ring), &[]);
    poll(DEADLINE, "a ring of three", || {
        match ring_size(&a.url(), None) {
            Ok(3) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let Some(mut browser) = Browser::start() else {
        return;
    };
    browser.navigate(&format!("{}/ui", a.url()));

    // Three nodes, each at its identifier, with its successor arrow; shares add up to 100 %.
    let mut ids = vec![a.id.clone(), b.id.clone(), c.id.clone()];
    ids.sort();
    browser.wait_for(
        "three nodes drawn",
        DEADLINE,
        "document.querySelectorAll('[data-node-id]').length === 3",
    );
    assert_eq!(drawn(&mut browser), ids);
    browser.wait_for(
        "a successor arrow from every node",
        DEADLINE,
        "document.querySelectorAll('#ring-arrows [data-to]').length === 3",
    );
    let shares = browser.eval(
        "[...document.querySelectorAll('[data-node-id]')]\
         .reduce((s, n) => s + Number(n.dataset.share), 0)",
    );
    let shares = shares.as_f64().expect("shares are numbers");
    assert!((shares - 100.0).abs() < 0.01, "shares add up to {shares}");

    // A service registered after the page loaded appears without a reload, counted by state,
    // as a record of the node that owns its key.
    let loaded = browser.eval("performance.timeOrigin");
    cli(
        &b.url(),
        "svc register payments --address 10.0.0.7 --port 8080 --ttl 30s",
    );
    let registered = Instant::now();
    browser.wait_for(
        "the new service shown live",
        DEADLINE,
        "(r => r && r.dataset.instances === '1' && r.dataset.passing === '1')\
         (document.querySelector('[data-service=\"payments\"]'))",
    );
    let shown_after = registered.elapsed();
    assert_eq!(
        browser.eval("performance.timeOrigin"),
        loaded,
        "the page was not reloaded"
    );
    let owner = chordctl::ring::Id::of_key("payments").to_hex();
    let owner = ids
        .iter()
        .find(|id| **id >= owner)
        .unwrap_or(&ids[0])
        .clone();
    browser.wait_for(
        "the owner of the key counts the record",
        DEADLINE,
        &format!("document.querySelector('[data-node-id=\"{owner}\"]').dataset.records === '1'"),
    );

    // Its instances, live from the service's stream: status, TTL left, then a status change.
    browser.eval("location.hash = 'service=payments'");
    let ttl = browser.wait_for(
        "the instance shown with its TTL left",
        DEADLINE,
        "(r => r && r.dataset.state === 'passing' && Number(r.dataset.ttlLeft) > 0 \
         && r.dataset.ttlLeft)(document.querySelector('[data-instance=\"10.0.0.7:8080\"]'))",
    );
    let ttl: u64 = ttl.as_str().and_then(|t| t.parse().ok()).expect("seconds");
    assert!(ttl <= 30, "TTL left {ttl}s of 30s");
    cli(
        &c.url(),
        "status report payments 10.0.0.7:8080 --state critical --note <b>disk</b>",
    );
    browser.wait_for(
        "the status change shown live, its note as text",
        DEADLINE,
        "(r => r && r.dataset.state === 'critical' \
         && r.querySelector('[data-cell=\"report\"]').textContent.includes('<b>disk</b>') \
         && !r.querySelector('b'))(document.querySelector('[data-instance=\"10.0.0.7:8080\"]'))",
    );
    let shot = artifact_dir().join("ring.png");
    browser.screenshot(&shot);
    println!("web view screenshot: {}", shot.display());
    println!("a new service was shown {shown_after:?} after its registration");

    // A crashed node leaves the drawing.
    c.kill9();
    browser.wait_for(
        "the killed node gone from the ring",
        DEADLINE,
        &format!(
            "document.querySelectorAll('[data-node-id]').length === 2 \
             && !document.querySelector('[data-node-id=\"{}\"]')",
            c.id
        ),
    );
    let mut left = vec![a.id.clone(), b.id.clone()];
    left.sort();
    assert_eq!(drawn(&mut browser), left);
    let shot = artifact_dir().join("ring-after-kill.png");
    browser.screenshot(&shot);
    println!("web view screenshot after the kill: {}", shot.display());
}

#[test]
fn ui_asks_for_the_token_then_shows_data() {
    let token = "ui-s3cret";
    let a = AgentProc::start(None, &["--api-token", token]);
    cli(
        &a.url(),
        &format!("--token {token} svc register inventory --address 10.0.0.9 --port 9000"),
    );
    let Some(mut browser) = Browser::start() else {
        return;
    };
    browser.navigate(&format!("{}/ui", a.url()));
    browser.wait_for(
        "the page asks for the token",
        DEADLINE,
        "document.body.dataset.needsToken === 'true' \
         && !document.getElementById('token-form').hidden",
    );
    assert_eq!(
        browser.eval("document.querySelectorAll('[data-node-id], [data-service]').length"),
        0,
        "nothing shown without the token"
    );

    // A wrong token: asked again, with the agent's reason.
    browser.eval(
        "document.getElementById('token-input').value = 'wrong'; \
         document.getElementById('token-form').requestSubmit(); true",
    );
    browser.wait_for(
        "the wrong token refused",
        DEADLINE,
        "!document.getElementById('token-form').hidden \
         && document.getElementById('token-error').textContent.includes('wrong')",
    );

    browser.eval(&format!(
        "document.getElementById('token-input').value = '{token}'; \
         document.getElementById('token-form').requestSubmit(); true"
    ));
    browser.wait_for(
        "the ring and the services shown with the token",
        DEADLINE,
        &format!(
            "document.getElementById('token-form').hidden \
             && !!document.querySelector('[data-node-id=\"{}\"]') \
             && !!document.querySelector('[data-service=\"inventory\"]')",
            a.id
        ),
    );
    // The instance stream too carries the token.
    browser.eval("location.hash = 'service=inventory'; true");
    browser.wait_for(
        "the instances shown with the token",
        DEADLINE,
        "!!document.querySelector('[data-instance=\"10.0.0.9:9000\"][data-state=\"passing\"]')",
    );
    let shot = artifact_dir().join("token.png");
    browser.screenshot(&shot);
    println!("web view screenshot with a token: {}", shot.display());
}

#[tokio::test]
async fn ui_is_served_without_a_token_with_its_type_policy_and_validator() {
    let a = AgentProc::start(None, &["--api-token", "t0ken"]);
    for (path, kind) in [
        ("/ui", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let url = format!("{}{path}", a.url());
        let (status, headers, _) = http::call_with_headers("GET", &url, None).await;
        assert_eq!(status, 200, "{path} without a token");
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert!(header("content-type").starts_with(kind), "{path}");
        let csp = header("content-security-policy");
        assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
        assert!(csp.contains("connect-src 'self'"), "{path}: {csp}");
        assert_eq!(header("cache-control"), "no-cache", "{path}");
        assert!(header("etag").starts_with('"'), "{path}");
    }
    // The data still needs the token.
    let (status, _) = http::call("GET", &format!("{}/v1/ring/nodes", a.url()), None).await;
    assert_eq!(status, 401);
}
