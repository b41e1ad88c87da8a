//! The HTTP/JSON client of the agent's API, and the mapping of its outcomes to exit codes.

use std::cell::Cell;
use std::path::Path;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use super::Failure;

/// How long one request may take in all.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to the agent may take before it counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a read (`GET`) waits for an agent's answer to begin before it is passed over for
/// the next agent given, when there is one: an agent that accepts connections but does not
/// answer (stopped, hung, its host overloaded) is then no better than one that cannot be
/// reached. A write is never sent to another agent this way: the first may still apply it.
pub const READ_ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// Everything but RFC 3986's unreserved characters is percent-encoded in a path segment, so
/// that instance ids such as `10.0.0.7:8080` travel as one segment whatever they contain.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One agent the client may talk to.
struct Agent {
    base: Url,
    /// `base` without user and password, for messages.
    shown: String,
    http: reqwest::Client,
}

/// A client of the agents given with `--agent`: each request goes to the agent that answered
/// last (at first the first one given), and to the next ones in order, wrapping around, while
/// an agent cannot be reached (for a read, also while one does not begin its answer within
/// [`READ_ANSWER_TIMEOUT`]). An agent that answers, even with an error, is the answer.
pub struct Client {
    runtime: tokio::runtime::Runtime,
    agents: Vec<Agent>,
    /// The agent that answered last, where requests start.
    current: Cell<usize>,
    token: Option<String>,
}

/// Why one attempt to open a request at one agent got no answer.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// No connection could be made (refused, connect timeout, name not resolved): the cause,
    /// for messages. The next agent may be tried: nothing was sent.
    Unreachable(String),
    /// Anything else, final for this request.
    Failed(Failure),
}

impl Client {
    /// A client of the agents at `bases` (tried in this order) that sends `token` (if any) as
    /// a bearer token. Every request must be answered within [`REQUEST_TIMEOUT`].
    #[cfg(test)]
    pub fn new(bases: &[Url], token: Option<String>) -> Result<Client, Failure> {
        Client::build(bases, token, &ClientTls::default(), Some(REQUEST_TIMEOUT))
    }

    /// A client for long-lived answers (watch streams): only connecting has a deadline; the
    /// caller bounds the rest.
    #[cfg(test)]
    pub fn streaming(bases: &[Url], token: Option<String>) -> Result<Client, Failure> {
        Client::build(bases, token, &ClientTls::default(), None)
    }

    /// A client of the agents at `bases` that speaks TLS with `tls` to https:// agents: every
    /// request answered within [`REQUEST_TIMEOUT`], or with `streaming` (watch streams) only
    /// connecting has a deadline.
    pub fn with_tls(
        bases: &[Url],
        token: Option<String>,
        tls: &ClientTls,
        streaming: bool,
    ) -> Result<Client, Failure> {
        let total = (!streaming).then_some(REQUEST_TIMEOUT);
        Client::build(bases, token, tls, total)
    }

    fn build(
        bases: &[Url],
        token: Option<String>,
        tls: &ClientTls,
        total: Option<Duration>,
    ) -> Result<Client, Failure> {
        if bases.is_empty() {
            return Err(Failure::Usage("no agent given; see --agent".into()));
        }
        let mut agents = Vec::with_capacity(bases.len());
        for base in bases {
            tls.check(base)?;
            let mut builder = tls.apply(
                reqwest::Client::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .user_agent(concat!("chordctl/", env!("CARGO_PKG_VERSION"))),
            );
            if let Some(total) = total {
                builder = builder.timeout(total);
            }
            // HTTP_PROXY and friends are honoured, except for an agent on this machine (as
            // Go's clients such as consul and etcdctl do): a proxy cannot reach the caller's
            // loopback.
            if is_loopback(base) {
                builder = builder.no_proxy();
            }
            let http = builder
                .build()
                .map_err(|e| Failure::Failed(format!("cannot set up the HTTP client: {e}")))?;
            agents.push(Agent {
                base: base.clone(),
                shown: shown(base),
                http,
            });
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::Failed(format!("cannot start the async runtime: {e}")))?;
        Ok(Client {
            runtime,
            agents,
            current: Cell::new(0),
            token: token.filter(|t| !t.is_empty()),
        })
    }

    /// The URL of the agent that answered last (at first the first one given), as the user
    /// would write it (without credentials), for messages.
    pub fn agent(&self) -> &str {
        self.shown_at(self.current.get())
    }

    /// The URL of agent `index` (modulo the number of agents), for messages.
    pub(crate) fn shown_at(&self, index: usize) -> &str {
        &self.agents[index % self.agents.len()].shown
    }

    /// How many agents were given.
    pub(crate) fn len(&self) -> usize {
        self.agents.len()
    }

    /// Index of the agent that answered last.
    pub(crate) fn current(&self) -> usize {
        self.current.get()
    }

    /// Runs `future` on the client's runtime.
    pub(crate) fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// `GET` the resource at the path made of `segments`, with `query` parameters.
    pub fn get(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<Value, Failure> {
        self.send(Method::GET, segments, query, None)
    }

    /// Sends one request and returns the agent's JSON answer (`Value::Null` for an empty body).
    ///
    /// Errors: [`Failure::Unreachable`] when no connection could be made to any agent,
    /// [`Failure::NotFound`] for 404, [`Failure::Failed`] for any other error status (with the
    /// agent's message).
    pub fn send(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, Failure> {
        self.runtime.block_on(async {
            let (index, response) = self.open(method, segments, query, body).await?;
            self.answer(index, response).await
        })
    }

    /// Sends one request to the first agent given, never to another: for a request about that
    /// agent itself (`ring leave`), which another agent must not take for its own.
    pub fn send_to_first(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, Failure> {
        self.runtime.block_on(async {
            match self.open_at(0, method, segments, query, body, &[]).await {
                Ok(response) => self.answer(0, response).await,
                Err(Attempt::Unreachable(cause)) => Err(Failure::Unreachable(format!(
                    "cannot reach the agent at {}: {cause} (is an agent running there? this \
                     asks the first --agent only)",
                    self.shown_at(0)
                ))),
                Err(Attempt::Failed(failure)) => Err(failure),
            }
        })
    }

    /// The JSON of agent `index`'s `response` (`Value::Null` for an empty body), or the
    /// failure its status stands for.
    async fn answer(&self, index: usize, response: reqwest::Response) -> Result<Value, Failure> {
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport(index, &e))?;
        if status.is_success() {
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(Value::Null);
            }
            serde_json::from_slice(&bytes).map_err(|e| {
                Failure::Failed(format!(
                    "the agent at {} answered with invalid JSON: {e}",
                    self.shown_at(index)
                ))
            })
        } else {
            Err(self.http_error(status, &bytes))
        }
    }

    /// The URL of the first agent, from the one that answered last on, that accepts a
    /// connection (any answer to `GET /healthz` counts), for commands that make their own
    /// requests (`bench`).
    pub(crate) fn first_reachable(&self) -> Result<Url, Failure> {
        let (index, _) = self
            .runtime
            .block_on(self.open(Method::GET, &["healthz"], &[], None))?;
        Ok(self.agents[index].base.clone())
    }

    /// Sends the request to each agent in turn, from the one that answered last, until one
    /// answers; returns its index and its answer (whatever the status). A read that another
    /// agent could still take waits [`READ_ANSWER_TIMEOUT`] for an answer to begin.
    async fn open(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<(usize, reqwest::Response), Failure> {
        let first = self.current.get();
        let mut unreachable = Vec::new();
        let n = self.agents.len();
        for k in 0..n {
            let index = (first + k) % n;
            let within = (method == Method::GET && k + 1 < n).then_some(READ_ANSWER_TIMEOUT);
            let request = self.request(index, method.clone(), segments, query, body, &[])?;
            match self.dispatch(index, request, &method, within).await {
                Ok(response) => return Ok((index, response)),
                Err(Attempt::Unreachable(cause)) => unreachable.push((index, cause)),
                Err(Attempt::Failed(failure)) => return Err(failure),
            }
        }
        Err(self.unreachable(&unreachable))
    }

    /// Sends one request to agent `index` only and returns its answer, whatever the status;
    /// that agent becomes the one requests start at.
    pub(crate) async fn open_at(
        &self,
        index: usize,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<reqwest::Response, Attempt> {
        let index = index % self.agents.len();
        let request = self
            .request(index, method.clone(), segments, query, body, headers)
            .map_err(Attempt::Failed)?;
        self.dispatch(index, request, &method, None).await
    }

    /// The request to agent `index`, with the token, `headers` and `body` (as JSON).
    fn request(
        &self,
        index: usize,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<reqwest::RequestBuilder, Failure> {
        let agent = &self.agents[index];
        let url = url(&agent.base, segments, query)?;
        let mut request = agent.http.request(method, url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        Ok(request)
    }

    /// Sends `request` (a `method` request) to agent `index`; with `within`, an answer that
    /// has not begun by then counts as the agent being unreachable. The agent that answers
    /// becomes the one requests start at.
    async fn dispatch(
        &self,
        index: usize,
        request: reqwest::RequestBuilder,
        method: &Method,
        within: Option<Duration>,
    ) -> Result<reqwest::Response, Attempt> {
        let writes = *method != Method::GET;
        let sent = match within {
            Some(limit) => match tokio::time::timeout(limit, request.send()).await {
                Ok(sent) => sent,
                Err(_) => {
                    return Err(Attempt::Unreachable(format!(
                        "connected, but no answer within {}s",
                        limit.as_secs()
                    )))
                }
            },
            None => request.send().await,
        };
        match sent {
            Ok(response) => {
                self.current.set(index);
                Ok(response)
            }
            Err(e) if tls_cause(&e).is_some() => Err(Attempt::Failed(self.transport(index, &e))),
            Err(e) if e.is_connect() => Err(Attempt::Unreachable(root_cause(&e))),
            Err(e) if e.is_timeout() && writes => Err(Attempt::Failed(Failure::Failed(format!(
                "the agent at {} did not answer within {}s: the write may or may not have \
                 taken effect (it was not sent to another agent, which could apply it twice); \
                 read it back before sending it again",
                self.shown_at(index),
                REQUEST_TIMEOUT.as_secs()
            )))),
            Err(e) => Err(Attempt::Failed(self.transport(index, &e))),
        }
    }

    /// The failure when no agent could be reached: `tried` holds each agent's index and why.
    /// With one agent the message is the one chordctl always gave.
    pub(crate) fn unreachable(&self, tried: &[(usize, String)]) -> Failure {
        match tried {
            [(index, cause)] if self.agents.len() == 1 => Failure::Unreachable(format!(
                "cannot reach the agent at {}: {cause} (is an agent running there? see --agent)",
                self.shown_at(*index)
            )),
            _ => {
                let each: Vec<String> = tried
                    .iter()
                    .map(|(index, cause)| format!("{} ({cause})", self.shown_at(*index)))
                    .collect();
                Failure::Unreachable(format!(
                    "cannot reach any of the {} agents: {} (is an agent running at one of \
                     them? see --agent)",
                    tried.len(),
                    each.join(", ")
                ))
            }
        }
    }

    /// A failure to get an answer from agent `index` after connecting (or to connect at all).
    pub(crate) fn transport(&self, index: usize, e: &reqwest::Error) -> Failure {
        let agent = self.shown_at(index);
        if let Some(cause) = tls_cause(e) {
            Failure::Failed(format!(
                "TLS with the agent at {agent} failed: {cause} (check --cacert, --cert and --key)"
            ))
        } else if e.is_connect() {
            Failure::Unreachable(format!(
                "cannot reach the agent at {agent}: {} (is an agent running there? see --agent)",
                root_cause(e)
            ))
        } else if e.is_timeout() {
            Failure::Failed(format!(
                "the agent at {agent} did not answer within {}s",
                REQUEST_TIMEOUT.as_secs()
            ))
        } else {
            Failure::Failed(format!(
                "request to the agent at {agent} failed: {}",
                root_cause(e)
            ))
        }
    }

    /// The failure an error status stands for, with the agent's message when it sent one.
    pub(crate) fn http_error(&self, status: StatusCode, body: &[u8]) -> Failure {
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

/// The client's TLS settings (`--cacert`, `--cert`, `--key`), read and checked once.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// CA certificates that agents' certificates must be signed by.
    roots: Vec<reqwest::Certificate>,
    /// The client certificate and key, for agents with `--http-verify-clients`.
    identity: Option<reqwest::Identity>,
}

impl ClientTls {
    /// Reads the files; a missing or malformed one is a usage error naming it.
    pub fn load(
        cacert: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<ClientTls, Failure> {
        let read = |flag: &str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| Failure::Usage(format!("{flag} {}: {e}", path.display())))
        };
        let mut tls = ClientTls::default();
        if let Some(path) = cacert {
            let pem = read("--cacert", path)?;
            crate::tls::parse_certs(&pem, path).map_err(Failure::Usage)?;
            tls.roots = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Failure::Usage(format!("--cacert {}: {e}", path.display())))?;
        }
        match (cert, key) {
            (Some(cert), Some(key)) => {
                let mut pem = read("--cert", cert)?;
                crate::tls::parse_certs(&pem, cert).map_err(Failure::Usage)?;
                let key_pem = read("--key", key)?;
                crate::tls::parse_key(&key_pem, key).map_err(Failure::Usage)?;
                pem.push(b'\n');
                pem.extend_from_slice(&key_pem);
                tls.identity = Some(reqwest::Identity::from_pem(&pem).map_err(|e| {
                    Failure::Usage(format!(
                        "--cert {} with --key {}: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?);
            }
            (None, None) => {}
            _ => return Err(Failure::Usage("--cert and --key go together".into())),
        }
        Ok(tls)
    }

    /// Refuse an https:// agent without a CA to check it against (no built-in roots: agents'
    /// certificates come from the cluster's own CA).
    fn check(&self, base: &Url) -> Result<(), Failure> {
        if base.scheme() == "https" && self.roots.is_empty() {
            return Err(Failure::Usage(format!(
                "{} is https: give --cacert (or CHORDCTL_CACERT), the CA that signed the \
                 agent's certificate",
                shown(base)
            )));
        }
        Ok(())
    }

    /// `builder` with these roots and identity.
    pub(crate) fn apply(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        let mut builder = builder.use_rustls_tls();
        for root in &self.roots {
            builder = builder.add_root_certificate(root.clone());
        }
        if let Some(identity) = &self.identity {
            builder = builder.identity(identity.clone());
        }
        builder
    }
}

/// The TLS error in `e`'s causes, if the request failed on TLS (a certificate refused on
/// either side): that is a configuration to fix, not an agent to skip.
pub(crate) fn tls_cause(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(tls) = c.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        // An `io::Error`'s `source` skips the error it wraps, which is where rustls puts its
        // own.
        if let Some(inner) = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return Some(tls.to_string());
            }
        }
        cause = c.source();
    }
    None
}

/// `base` as the user would write it, without credentials, for messages.
fn shown(base: &Url) -> String {
    let mut shown = base.clone();
    // Both fail only for URLs that cannot have credentials, which then have none to hide.
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    shown.as_str().trim_end_matches('/').to_string()
}

/// The URL of a path made of `segments`, each percent-encoded, under an agent's base URL.
fn url(base: &Url, segments: &[&str], query: &[(&str, &str)]) -> Result<Url, Failure> {
    let mut path = base.path().trim_end_matches('/').to_string();
    for segment in segments {
        // URL parsers resolve `.` and `..` (even percent-encoded) as path navigation, so such
        // a segment cannot name anything.
        if segment.is_empty() || segment.chars().all(|c| c == '.') {
            return Err(Failure::Usage(format!(
                "'{segment}' cannot be used as a name in a URL path"
            )));
        }
        path.push('/');
        path.extend(utf8_percent_encode(segment, SEGMENT));
    }
    let mut url = base.clone();
    url.set_path(&path);
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    Ok(url)
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

    impl Client {
        fn url_at(
            &self,
            index: usize,
            segments: &[&str],
            query: &[(&str, &str)],
        ) -> Result<Url, Failure> {
            url(&self.agents[index].base, segments, query)
        }
    }

    fn client(base: &str) -> Client {
        let url = crate::cli::args::parse_agent_url(base).unwrap_or_else(|e| panic!("{e}"));
        Client::new(&[url], None).unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn segments_are_percent_encoded() {
        let c = client("127.0.0.1:7500");
        let url = c
            .url_at(
                0,
                &["v1", "services", "pay.ments", "instances", "10.0.0.7:8080"],
                &[],
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:7500/v1/services/pay.ments/instances/10.0.0.7%3A8080"
        );
        let url = c
            .url_at(0, &["v1", "locate", "a/b c?d#e%f~"], &[("tag", "v 2&x")])
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:7500/v1/locate/a%2Fb%20c%3Fd%23e%25f~?tag=v+2%26x"
        );
        assert!(c.url_at(0, &["v1", ".."], &[]).is_err());
        assert!(c.url_at(0, &["v1", ""], &[]).is_err());
    }

    #[test]
    fn a_base_path_is_kept() {
        let c = client("http://gw:80/chord/");
        let url = c
            .url_at(0, &["v1", "ring"], &[])
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

    /// An address that refuses connections while the socket returned lives.
    fn dead() -> (socket2::Socket, Url) {
        let (socket, addr) = crate::testing::refused_addr();
        let url =
            crate::cli::args::parse_agent_url(&addr.to_string()).unwrap_or_else(|e| panic!("{e}"));
        (socket, url)
    }

    /// An agent that answers `answers` connections with `status` and `body`, one each.
    fn answering(status: u16, body: &'static str, answers: usize) -> Url {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        std::thread::spawn(move || {
            for _ in 0..answers {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                let mut reader = BufReader::new(&stream);
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 && line.trim() != "" {
                    line.clear();
                }
                let mut stream = &stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        crate::cli::args::parse_agent_url(&addr.to_string()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn an_unreachable_agent_is_passed_over_and_the_next_one_kept() {
        let live = answering(200, r#"{"ok": true}"#, 2);
        let (_refusing, dead) = dead();
        let c = Client::new(&[dead, live.clone()], None).unwrap_or_else(|e| panic!("{e:?}"));
        let answer = c
            .get(&["v1", "ring"], &[])
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(answer["ok"], true);
        assert_eq!(c.agent(), live.as_str().trim_end_matches('/'));
        // The next request starts at the agent that answered.
        assert_eq!(c.current(), 1);
        assert!(c.get(&["v1", "ring"], &[]).is_ok());
    }

    #[test]
    fn an_error_answer_is_the_answer() {
        let busy = answering(
            503,
            r#"{"error": {"code": "unavailable", "message": "busy"}}"#,
            1,
        );
        let never = answering(200, "{}", 0);
        let c = Client::new(&[busy, never], None).unwrap_or_else(|e| panic!("{e:?}"));
        match c.get(&["v1", "ring"], &[]) {
            Err(Failure::Failed(m)) => assert_eq!(m, "busy"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unreachable_names_every_agent_tried() {
        let ((_ra, a), (_rb, b)) = (dead(), dead());
        let c = Client::new(&[a.clone(), b.clone()], None).unwrap_or_else(|e| panic!("{e:?}"));
        match c.get(&["v1", "ring"], &[]) {
            Err(Failure::Unreachable(m)) => {
                for url in [&a, &b] {
                    assert!(m.contains(url.as_str().trim_end_matches('/')), "{m}");
                }
                assert!(m.contains("any of the 2 agents"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        // One agent: the message chordctl always gave.
        let c = Client::new(std::slice::from_ref(&a), None).unwrap_or_else(|e| panic!("{e:?}"));
        match c.get(&["v1", "ring"], &[]) {
            Err(Failure::Unreachable(m)) => assert!(
                m.starts_with(&format!(
                    "cannot reach the agent at {}: ",
                    a.as_str().trim_end_matches('/')
                )) && m.ends_with("(is an agent running there? see --agent)"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
    }
}
