//! A small JSON HTTP client for tests.

use serde_json::Value;

/// Send `method url` with an optional JSON body; returns (status, body as JSON or as a string).
pub async fn call(method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    let (status, _, value) = call_with_headers(method, url, body).await;
    (status, value)
}

/// [`call`], with the answer's headers.
pub async fn call_with_headers(
    method: &str,
    url: &str,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let client = reqwest::Client::new();
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client.request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, value)
}

/// [`call`] that must answer 200; returns the body.
pub async fn call_ok(method: &str, url: &str, body: Option<Value>) -> Value {
    let (status, answer) = call(method, url, body).await;
    assert_eq!(status, 200, "{method} {url}: {answer}");
    answer
}

/// Send a raw body (any content type).
pub async fn raw(method: &str, url: &str, body: Vec<u8>) -> (u16, String) {
    let client = reqwest::Client::new();
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let resp = client
        .request(method, url)
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

/// The value of the sample `name` (unlabelled, or with its labels: `x{a="b"}`) in the metrics
/// of the agent at `url`; panics, with the metrics, when there is none.
pub async fn metric(url: &str, name: &str) -> u64 {
    let (st, text) = raw("GET", &format!("{url}/metrics"), Vec::new()).await;
    assert_eq!(st, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in the metrics:\n{text}"))
}
