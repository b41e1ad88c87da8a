//! The DNS server: hickory's UDP and TCP loops (framing, parsing, FORMERR for a malformed
//! message) around one request handler, which asks the [`Zone`] what a question names, the
//! [`Views`] for the service's local view, and the zone again for the records, and cuts a UDP
//! answer that does not fit to whole records with TC, keeping the OPT record (`fit_udp`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Record};
use hickory_proto::serialize::binary::BinEncoder;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

use super::answer::{Answer, Target, View, Zone};
use super::cache::Views;
use crate::agent::Metrics;
use crate::{Error, Result};

/// The largest UDP answer an EDNS0 client gets, whatever buffer it announces.
pub const MAX_UDP_PAYLOAD: u16 = 4096;

/// A TCP connection that sends no query for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Answers queued per TCP connection.
const TCP_QUEUE: usize = 32;

/// The request handler.
pub struct Handler {
    zone: Zone,
    views: Arc<Views>,
    metrics: Arc<Metrics>,
    turns: AtomicUsize,
}

impl Handler {
    /// A handler answering for `zone` from `views`.
    pub fn new(zone: Zone, views: Arc<Views>, metrics: Arc<Metrics>) -> Handler {
        Handler {
            zone,
            views,
            metrics,
            turns: AtomicUsize::new(0),
        }
    }

    /// The answer to `request`, and the response code when the question is not answered.
    async fn answer(&self, request: &Request) -> std::result::Result<Answer, ResponseCode> {
        if request.metadata.op_code != OpCode::Query {
            return Err(ResponseCode::NotImp);
        }
        let info = request.request_info().map_err(|_| ResponseCode::FormErr)?;
        let query = info.query.original();
        if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY) {
            return Err(ResponseCode::Refused);
        }
        let name = query.name();
        let target = self.zone.target(name);
        let view = match &target {
            Target::Service { service, .. } => match self.view_of(service).await {
                Ok(view) => Some(view),
                Err(e) => {
                    tracing::debug!(service, "DNS query: {e}");
                    return Err(ResponseCode::ServFail);
                }
            },
            _ => None,
        };
        let turn = self.turns.fetch_add(1, Ordering::Relaxed);
        Ok(self
            .zone
            .answer(name, query.query_type(), &target, view.as_deref(), turn))
    }
}

impl Handler {
    /// The view of the service a question names. DNS names are case-insensitive (RFC 4343)
    /// and resolvers may mix a question's case at random (0x20), while service names are
    /// case-sensitive: a name with capitals is looked up in lower case first (one cache entry
    /// for every casing of a lower-case service), and as written when no instance has the
    /// lower-case name.
    async fn view_of(&self, service: &str) -> Result<Arc<View>> {
        let lower = service.to_ascii_lowercase();
        let view = self.views.get(&lower).await?;
        if lower == service || !view.instances.is_empty() {
            return Ok(view);
        }
        // As written when it has instances, or when the lower-case one is not a service.
        let written = self.views.get(service).await?;
        Ok(if written.instances.is_empty() && view.known {
            view
        } else {
            written
        })
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let answered = self.answer(request).await;
        let code = match &answered {
            Ok(a) => a.code,
            Err(code) => *code,
        };
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = code;
        metadata.recursion_available = false;
        metadata.authoritative = answered.is_ok() && code != ResponseCode::Refused;
        let edns = request.edns.as_ref().map(|asked| {
            let mut edns = Edns::new();
            edns.set_max_payload(asked.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            edns
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let empty = Answer {
            code,
            answers: Vec::new(),
            authority: Vec::new(),
            additional: Vec::new(),
        };
        let a = answered.as_ref().unwrap_or(&empty);
        // Over UDP an answer too large is cut here, to whole records that leave room for the
        // OPT record: the encoder would fill the buffer with records and drop what does not
        // fit after them, the OPT included (RFC 6891 6.1.1 wants it in every answer to an
        // EDNS0 query).
        let fitted;
        let cut = match request.protocol() {
            Protocol::Udp => fit_udp(request, &metadata, a, edns.as_ref()),
            _ => None,
        };
        let a = match cut {
            Some(cut) => {
                metadata.truncation = true;
                fitted = cut;
                &fitted
            }
            None => a,
        };
        let message = builder.build(
            metadata,
            a.answers.iter(),
            a.authority.iter(),
            std::iter::empty(),
            a.additional.iter(),
        );
        match response.send_response(message).await {
            Ok(info) => {
                self.metrics.dns_query(result_name(code), info.truncation);
                info
            }
            Err(e) => {
                tracing::debug!("sending a DNS answer failed: {e}");
                self.metrics.dns_query("servfail", false);
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

/// `a` cut to fit a UDP answer to `request` (the EDNS0 buffer `edns` announces, else 512
/// bytes) with the OPT record, or `None` when it fits whole: as many answer records as fit,
/// the authority section when it fits, no additional records (a resolver asks again over TCP
/// for all). Sizes are measured by encoding the answer as it is sent.
fn fit_udp(
    request: &Request,
    metadata: &Metadata,
    a: &Answer,
    edns: Option<&Edns>,
) -> Option<Answer> {
    let limit = usize::from(edns.map_or(512, Edns::max_payload));
    // Most answers are far below the limit: a bound without compression says so without
    // encoding them twice.
    let query = request.request_info().ok()?.query.original().name().clone();
    if a.most_bytes(&query).is_some_and(|most| most <= limit) {
        return None;
    }
    let size = |answers: usize, authority: bool, additional: bool| -> usize {
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = edns {
            builder.edns(edns);
        }
        let none: &[Record] = &[];
        let message = builder.build(
            *metadata,
            a.answers[..answers].iter(),
            if authority { &a.authority[..] } else { none }.iter(),
            std::iter::empty(),
            if additional { &a.additional[..] } else { none }.iter(),
        );
        let mut bytes = Vec::with_capacity(limit);
        let mut encoder = BinEncoder::new(&mut bytes);
        match message.destructive_emit(&mut encoder) {
            Ok(_) => bytes.len(),
            Err(_) => usize::MAX,
        }
    };
    if size(a.answers.len(), true, true) <= limit {
        return None;
    }
    let authority = size(0, true, false) <= limit;
    // The most answer records that fit: all of them without the additional section, else a
    // bisection in which `fit` always fits and `over` never does.
    let all = a.answers.len();
    let fit = if size(all, authority, false) <= limit {
        all
    } else {
        let (mut fit, mut over) = (0, all);
        while over - fit > 1 {
            let mid = fit + (over - fit) / 2;
            if size(mid, authority, false) <= limit {
                fit = mid;
            } else {
                over = mid;
            }
        }
        fit
    };
    Some(Answer {
        code: a.code,
        answers: a.answers[..fit].to_vec(),
        authority: if authority {
            a.authority.clone()
        } else {
            Vec::new()
        },
        additional: Vec::new(),
    })
}

/// The metric's name of a response code.
fn result_name(code: ResponseCode) -> &'static str {
    match code {
        ResponseCode::NoError => "noerror",
        ResponseCode::NXDomain => "nxdomain",
        ResponseCode::ServFail => "servfail",
        ResponseCode::Refused => "refused",
        ResponseCode::FormErr => "formerr",
        ResponseCode::NotImp => "notimp",
        _ => "other",
    }
}

/// Bind UDP and TCP on `addr` (port 0: one free port for both); the bound address.
pub async fn bind(addr: SocketAddr) -> Result<(UdpSocket, TcpListener, SocketAddr)> {
    let cannot = |e: std::io::Error| Error::invalid(format!("cannot bind DNS address {addr}: {e}"));
    // With port 0 the UDP port the kernel picks may be taken for TCP: try a few.
    let mut last = None;
    for _ in 0..16 {
        let udp = UdpSocket::bind(addr).await.map_err(cannot)?;
        let bound = udp.local_addr().map_err(cannot)?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp, bound)),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => return Err(cannot(e)),
        }
    }
    Err(cannot(last.unwrap_or_else(|| {
        std::io::Error::other("no port free for both UDP and TCP")
    })))
}

/// Serve `handler` on `udp` and `tcp` until `stop`.
pub async fn serve(udp: UdpSocket, tcp: TcpListener, handler: Handler, stop: CancellationToken) {
    let mut server = Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE, TCP_QUEUE);
    stop.cancelled().await;
    if let Err(e) = server.shutdown_gracefully().await {
        tracing::debug!("DNS server stopped: {e}");
    }
}
