//! The HTTP/JSON client of the agent's API, and the mapping of its outcomes to exit codes.

use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use super::Failure;

/// How long one request may take in all.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to the agent may take before it counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Everything but RFC 3986's unreserved characters is percent-encoded in a path segment, so
/// that instance ids such as `10.0.0.7:8080` travel as one segment whatever they contain.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A client of one agent.
pub struct Client {
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    base: Url,
    /// `base` without user and password, for messages.
    shown: String,
    token: Option<String>,
}

impl Client {
    /// A client of the agent at `base` that sends `token` (if any) as a bearer token.
    pub fn new(base: Url, token: Option<String>) -> Result<Client, Failure> {
        let mut builder = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("chordctl/", env!("CARGO_PKG_VERSION")));
        // HTTP_PROXY and friends are honoured, except for an agent on this machine (as Go's
        // clients such as consul and etcdctl do): a proxy cannot reach the caller's loopback.
        if is_loopback(&base) {
            builder = builder.no_proxy();
        }
        let http = builder
            .build()
            .map_err(|e| Failure::Failed(format!("cannot set up the HTTP client: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::Failed(format!("cannot start the async runtime: {e}")))?;
        let mut shown = base.clone();
        // Both fail only for URLs that cannot have credentials, which then have none to hide.
        let _ = shown.set_password(None);
        let _ = shown.set_username("");
        let shown = shown.as_str().trim_end_matches('/').to_string();
        Ok(Client {
            http,
            runtime,
            base,
            shown,
            token: token.filter(|t| !t.is_empty()),
        })
    }

    /// The agent's URL as the user would write it (without credentials), for messages.
    pub fn agent(&self) -> &str {
        &self.shown
    }

    /// `GET` the resource at the path made of `segments`, with `query` parameters.
    pub fn get(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<Value, Failure> {
        self.send(Method::GET, segments, query, None)
    }

    /// Sends one request and returns the agent's JSON answer (`Value::Null` for an empty body).
    ///
    /// Errors: [`Failure::Unreachable`] when no connection could be made, [`Failure::NotFound`]
    /// for 404, [`Failure::Failed`] for any other error status (with the agent's message).
    pub fn send(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, Failure> {
        let url = self.url(segments, query)?;
        let mut request = self.http.request(method, url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        self.runtime.block_on(async {
            let response = request.send().await.map_err(|e| self.transport(&e))?;
            let status = response.status();
            let bytes = response.bytes().await.map_err(|e| self.transport(&e))?;
            if status.is_success() {
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    return Ok(Value::Null);
                }
                serde_json::from_slice(&bytes).map_err(|e| {
                    Failure::Failed(format!(
                        "the agent at {} answered with invalid JSON: {e}",
                        self.agent()
                    ))
                })
            } else {
                Err(self.http_error(status, &bytes))
            }
        })
    }

    /// The URL of a path made of `segments`, each percent-encoded, under the agent's base URL.
    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<Url, Failure> {
        let mut path = self.base.path().trim_end_matches('/').to_string();
        for segment in segments {
            // URL parsers resolve `.` and `..` (even percent-encoded) as path navigation, so
            // such a segment cannot name anything.
            if segment.is_empty() || segment.chars().all(|c| c == '.') {
                return Err(Failure::Usage(format!(
                    "'{segment}' cannot be used as a name in a URL path"
                )));
            }
            path.push('/');
            path.extend(utf8_percent_encode(segment, SEGMENT));
        }
        let mut url = self.base.clone();
        url.set_path(&path);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    /// A failure to get an answer at all.
    fn transport(&self, e: &reqwest::Error) -> Failure {
        if e.is_connect() {
            Failure::Unreachable(format!(
                "cannot reach the agent at {}: {} (is an agent running there? see --agent)",
                self.agent(),
                root_cause(e)
            ))
        } else if e.is_timeout() {
            Failure::Failed(format!(
                "the agent at {} did not answer within {}s",
                self.agent(),
                REQUEST_TIMEOUT.as_secs()
            ))
        } else {
            Failure::Failed(format!(
                "request to the agent at {} failed: {}",
                self.agent(),
                root_cause(e)
            ))
        }
    }

    /// The failure an error status stands for, with the agent's message when it sent one.
    fn http_error(&self, status: StatusCode, body: &[u8]) -> Failure {
        let message = error_message(body)
            .filter(|m| !m.trim().is_empty())
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                let reason = status.canonical_reason().unwrap_or("error");
                if text.is_empty() || text.len() > 200 || text.contains('\n') {
                    format!("the agent answered {} {reason}", status.as_u16())
                } else {
                    format!("the agent answered {} {reason}: {text}", status.as_u16())
                }
            });
        match status {
            StatusCode::NOT_FOUND => Failure::NotFound(message),
            StatusCode::UNAUTHORIZED if self.token.is_none() => Failure::Failed(format!(
                "{message} (the agent requires a token: set --token or CHORDCTL_TOKEN)"
            )),
            _ => Failure::Failed(message),
        }
    }
}

/// Whether the URL names this machine: `localhost` or a loopback address.
fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => {
            let host = host.to_ascii_lowercase();
            host == "localhost" || host.ends_with(".localhost")
        }
    }
}

/// The `error.message` of an agent's JSON error body, if it is one.
pub(super) fn error_message(body: &[u8]) -> Option<String> {
    let v = serde_json::from_slice::<Value>(body).ok()?;
    v.pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// The innermost cause of an error, which says what actually happened ("Connection refused").
pub(super) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str) -> Client {
        let url = crate::cli::args::parse_agent_url(base).unwrap_or_else(|e| panic!("{e}"));
        Client::new(url, None).unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn segments_are_percent_encoded() {
        let c = client("127.0.0.1:7500");
        let url = c
            .url(
                &["v1", "services", "pay.ments", "instances", "10.0.0.7:8080"],
                &[],
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:7500/v1/services/pay.ments/instances/10.0.0.7%3A8080"
        );
        let url = c
            .url(&["v1", "locate", "a/b c?d#e%f~"], &[("tag", "v 2&x")])
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:7500/v1/locate/a%2Fb%20c%3Fd%23e%25f~?tag=v+2%26x"
        );
        assert!(c.url(&["v1", ".."], &[]).is_err());
        assert!(c.url(&["v1", ""], &[]).is_err());
    }

    #[test]
    fn a_base_path_is_kept() {
        let c = client("http://gw:80/chord/");
        let url = c
            .url(&["v1", "ring"], &[])
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(url.as_str(), "http://gw/chord/v1/ring");
        assert_eq!(c.agent(), "http://gw/chord");
        assert_eq!(client("http://u:pw@gw:1").agent(), "http://gw:1");
    }

    #[test]
    fn loopback_agents_bypass_proxies() {
        let loopback = |s| {
            is_loopback(&crate::cli::args::parse_agent_url(s).unwrap_or_else(|e| panic!("{e}")))
        };
        assert!(loopback("127.0.0.1:7500") && loopback("[::1]:1") && loopback("LOCALHOST:1"));
        assert!(!loopback("10.0.0.1:7500") && !loopback("node1:7500"));
    }
}
