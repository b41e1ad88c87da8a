//! The DNS interface (API.md, "DNS") against real agent processes, with a DNS client built
//! on hickory's wire types: UDP with and without EDNS0, and TCP.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::support::eventually;
use crate::support::http::{call, call_ok};
use crate::support::procs::{bin, AgentProc, Reaped};

/// Generous on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(30);

/// How a query travels.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// UDP without EDNS0: 512 bytes at most.
    Udp,
    /// UDP with EDNS0, announcing a buffer of this many bytes.
    Edns(u16),
    Tcp,
}

fn query_message(name: &str, qtype: RecordType, via: Via) -> Message {
    let name = Name::from_ascii(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut m = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name, qtype));
    if let Via::Edns(size) = via {
        let mut edns = Edns::new();
        edns.set_max_payload(size);
        m.set_edns(edns);
    }
    m
}

fn rand_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// One query, its answer (up to 5 s).
async fn ask(
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
    via: Via,
) -> Result<Message, String> {
    let query = query_message(name, qtype, via);
    let bytes = query.to_vec().map_err(|e| e.to_string())?;
    let exchange = async {
        match via {
            Via::Udp | Via::Edns(_) => {
                let sock = UdpSocket::bind("127.0.0.1:0")
                    .await
                    .map_err(|e| e.to_string())?;
                sock.send_to(&bytes, server)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut buf = vec![0u8; 65_535];
                let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
                buf.truncate(n);
                Ok::<Vec<u8>, String>(buf)
            }
            Via::Tcp => {
                let mut s = TcpStream::connect(server)
                    .await
                    .map_err(|e| e.to_string())?;
                let len = u16::try_from(bytes.len()).map_err(|e| e.to_string())?;
                s.write_all(&len.to_be_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                s.write_all(&bytes).await.map_err(|e| e.to_string())?;
                let len = s.read_u16().await.map_err(|e| e.to_string())?;
                let mut buf = vec![0u8; usize::from(len)];
                s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
                Ok(buf)
            }
        }
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| format!("no answer to {name} {qtype} over {via:?} within 5s"))??;
    let answer = Message::from_vec(&raw).map_err(|e| e.to_string())?;
    if answer.metadata.id != query.metadata.id {
        return Err("an answer to another query".into());
    }
    Ok(answer)
}

/// The addresses of the A and AAAA records of an answer, sorted.
fn addresses(m: &Message) -> BTreeSet<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter()
        .map(|s| s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
        .collect()
}

/// An agent serving DNS on a free port, and its DNS address.
fn dns_agent(seed: Option<&str>) -> (AgentProc, SocketAddr) {
    let agent = AgentProc::start(seed, &["--dns", "127.0.0.1:0", "--dns-ttl", "2s"]);
    let dns = agent
        .dns
        .as_deref()
        .unwrap_or_else(|| panic!("the agent printed no dns= address"))
        .parse()
        .unwrap_or_else(|e| panic!("dns address: {e}"));
    (agent, dns)
}

/// Register an instance, retrying while the ring settles (a write answered 503).
async fn register(agent: &AgentProc, service: &str, id: &str, body: Value) {
    let url = format!(
        "{}/v1/services/{service}/instances/{}",
        agent.url(),
        id.replace(':', "%3A")
    );
    eventually(
        &format!("register {service}/{id}"),
        DEADLINE,
        async || match call("PUT", &url, Some(body.clone())).await {
            (200, _) => Ok(()),
            (status, answer) => Err(format!("{status} {answer}")),
        },
    )
    .await;
}

async fn report(agent: &AgentProc, service: &str, id: &str, state: &str) {
    let url = format!(
        "{}/v1/services/{service}/instances/{}/status",
        agent.url(),
        id.replace(':', "%3A")
    );
    call_ok("PUT", &url, Some(json!({ "state": state }))).await;
}

/// Register instance `id` of `service` at `address` (tagged `v2`), see `question` answer it,
/// deregister it, and see `question` answer NODATA: the service emptied of its instances.
async fn register_then_empty(
    agent: &AgentProc,
    dns: SocketAddr,
    (service, id): (&str, &str),
    address: &str,
    question: &str,
) {
    let body = json!({"address": address, "port": 80, "tags": ["v2"]});
    register(agent, service, id, body).await;
    expect_addresses(dns, question, &ips(&[address])).await;
    let url = format!("{}/v1/services/{service}/instances/{id}", agent.url());
    call_ok("DELETE", &url, None).await;
    expect_no_records(dns, question).await;
}

/// Poll until `name` at `dns` answers A with NOERROR, no records and the SOA (NODATA).
async fn expect_no_records(dns: SocketAddr, name: &str) {
    eventually(&format!("NODATA {name}"), DEADLINE, async || {
        let m = ask(dns, name, RecordType::A, Via::Udp).await?;
        let soa = m
            .authorities
            .iter()
            .any(|r| r.record_type() == RecordType::SOA);
        if m.metadata.response_code == ResponseCode::NoError && m.answers.is_empty() && soa {
            Ok(())
        } else {
            Err(format!("{m:?}"))
        }
    })
    .await;
}

/// Poll until the A answer of `name` at `dns` holds exactly `want`.
async fn expect_addresses(dns: SocketAddr, name: &str, want: &BTreeSet<IpAddr>) {
    eventually(&format!("A {name} = {want:?}"), DEADLINE, async || {
        let m = ask(dns, name, RecordType::A, Via::Udp).await?;
        let got = addresses(&m);
        if m.metadata.response_code == ResponseCode::NoError && &got == want {
            Ok(())
        } else {
            Err(format!("{} {got:?}", m.metadata.response_code))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_hold_healthy_instances_and_tags_select_them() {
    let (agent, dns) = dns_agent(None);
    let instances = [
        ("10.0.0.1", "passing", vec!["v1"]),
        ("10.0.0.2", "warning", vec!["v2"]),
        ("10.0.0.3", "critical", vec!["v1"]),
        ("10.0.0.4", "maintenance", vec!["v1"]),
        ("fd00::5", "passing", vec!["v1"]),
    ];
    for (addr, state, tags) in &instances {
        let id = format!("{addr}-80");
        register(
            &agent,
            "web",
            &id,
            json!({"address": addr, "port": 80, "tags": tags}),
        )
        .await;
        report(&agent, "web", &id, state).await;
    }
    // Passing and warning; never critical or maintenance.
    expect_addresses(dns, "web.service.chord.", &ips(&["10.0.0.1", "10.0.0.2"])).await;
    let m = ask(dns, "web.service.chord.", RecordType::AAAA, Via::Udp)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(addresses(&m), ips(&["fd00::5"]), "{m:?}");
    assert!(m.metadata.authoritative, "authoritative: {m:?}");
    assert!(m.answers.iter().all(|r| r.ttl == 2), "--dns-ttl 2s: {m:?}");
    // A tag selects among the healthy ones.
    let m = ask(dns, "v1.web.service.chord.", RecordType::A, Via::Udp)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(addresses(&m), ips(&["10.0.0.1"]), "{m:?}");
    let m = ask(dns, "v2.web.service.chord.", RecordType::A, Via::Udp)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(addresses(&m), ips(&["10.0.0.2"]), "{m:?}");
    // A change reaches the answer through the subscription.
    report(&agent, "web", "10.0.0.1-80", "critical").await;
    expect_addresses(dns, "web.service.chord.", &ips(&["10.0.0.2"])).await;
    // Queries are counted by result.
    let (_, metrics) =
        crate::support::http::raw("GET", &format!("{}/metrics", agent.url()), Vec::new()).await;
    let noerror = metrics
        .lines()
        .find_map(|l| l.strip_prefix("chordctl_dns_queries_total{result=\"noerror\"} "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(noerror >= 4, "{metrics}");
}

/// DNS names are case-insensitive, and resolvers may mix a question's case at random (0x20);
/// service names are case-sensitive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_in_any_case_finds_a_lower_case_service_or_tag_and_a_capitalised_one_as_written()
{
    let (agent, dns) = dns_agent(None);
    register(
        &agent,
        "web",
        "w1",
        json!({"address": "10.0.0.1", "port": 80}),
    )
    .await;
    register(
        &agent,
        "Api",
        "a1",
        json!({"address": "10.0.0.2", "port": 80}),
    )
    .await;
    expect_addresses(dns, "web.service.chord.", &ips(&["10.0.0.1"])).await;
    for name in [
        "WEB.service.chord.",
        "wEb.SeRvIcE.ChOrD.",
        "WEB.SERVICE.CHORD.",
    ] {
        expect_addresses(dns, name, &ips(&["10.0.0.1"])).await;
    }
    // A service named with capitals: found as written; it has no lower-case twin.
    expect_addresses(dns, "Api.service.chord.", &ips(&["10.0.0.2"])).await;
    let m = ask(dns, "api.service.chord.", RecordType::A, Via::Udp)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{m:?}");
    // Tags the same way: a lower-case tag in any case, a capitalised one as written.
    register(
        &agent,
        "web",
        "w2",
        json!({"address": "10.0.0.3", "port": 80, "tags": ["primary", "Canary"]}),
    )
    .await;
    for name in [
        "primary.web.service.chord.",
        "PRIMARY.web.service.chord.",
        "pRiMaRy.WeB.service.chord.",
    ] {
        expect_addresses(dns, name, &ips(&["10.0.0.3"])).await;
    }
    expect_addresses(dns, "Canary.web.service.chord.", &ips(&["10.0.0.3"])).await;
    let m = ask(dns, "canary.web.service.chord.", RecordType::A, Via::Udp)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{m:?}");
    // A lower-case service emptied of its instances is still the one any casing names.
    register_then_empty(
        &agent,
        dns,
        ("shop", "s1"),
        "10.0.0.4",
        "SHOP.service.chord.",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_carry_weight_port_and_the_targets_address() {
    let (agent, dns) = dns_agent(None);
    register(
        &agent,
        "api",
        "a",
        json!({"address": "10.1.0.1", "port": 8080, "weight": 10}),
    )
    .await;
    register(
        &agent,
        "api",
        "b",
        json!({"address": "10.1.0.2", "port": 9090, "weight": 300}),
    )
    .await;
    for name in ["api.service.chord.", "_api._tcp.service.chord."] {
        let mut seen = BTreeSet::new();
        eventually(&format!("SRV {name}"), DEADLINE, async || {
            let m = ask(dns, name, RecordType::SRV, Via::Udp).await?;
            seen.clear();
            for r in &m.answers {
                let RData::SRV(srv) = &r.data else {
                    return Err(format!("not an SRV: {r:?}"));
                };
                // The target's address is in the additional section.
                let addr = m
                    .additionals
                    .iter()
                    .filter(|a| a.name == srv.target)
                    .find_map(|a| match &a.data {
                        RData::A(a) => Some(a.0.to_string()),
                        _ => None,
                    })
                    .ok_or_else(|| format!("no address for {}: {m:?}", srv.target))?;
                seen.insert((addr, srv.port, srv.weight, srv.priority));
            }
            if seen.len() == 2 {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        })
        .await;
        let want: BTreeSet<(String, u16, u16, u16)> = [
            ("10.1.0.1".to_string(), 8080, 10, 1),
            ("10.1.0.2".to_string(), 9090, 300, 1),
        ]
        .into_iter()
        .collect();
        assert_eq!(seen, want, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_are_nxdomain_with_an_soa_and_host_names_a_cname() {
    let (agent, dns) = dns_agent(None);
    for name in [
        "nothing.service.chord.",
        "x.y.z.service.chord.",
        "foo.chord.",
    ] {
        let m = ask(dns, name, RecordType::A, Via::Udp)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NXDomain,
            "{name}: {m:?}"
        );
        assert!(m.answers.is_empty(), "{m:?}");
        assert!(
            m.authorities
                .iter()
                .any(|r| r.record_type() == RecordType::SOA && r.name.to_ascii() == "chord."),
            "SOA in the authority section: {m:?}"
        );
    }
    // Outside the zone: not this agent's to answer.
    let m = ask(dns, "example.com.", RecordType::A, Via::Udp)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{m:?}");

    register(
        &agent,
        "db",
        "h",
        json!({"address": "db1.internal.example", "port": 5432}),
    )
    .await;
    eventually("CNAME db", DEADLINE, async || {
        let m = ask(dns, "db.service.chord.", RecordType::A, Via::Udp).await?;
        match m.answers.first().map(|r| &r.data) {
            Some(RData::CNAME(c)) if c.0.to_ascii() == "db1.internal.example." => Ok(()),
            _ => Err(format!("{m:?}")),
        }
    })
    .await;

    // A service whose every instance is unhealthy: NOERROR, no records, the SOA.
    register(
        &agent,
        "down",
        "d",
        json!({"address": "10.2.0.1", "port": 1}),
    )
    .await;
    report(&agent, "down", "d", "critical").await;
    expect_no_records(dns, "down.service.chord.").await;

    // A service emptied of its instances is still a service (HTTP discover answers it 200
    // with none): NOERROR, no records, the SOA; a tag none of its instances had is NXDOMAIN.
    register_then_empty(
        &agent,
        dns,
        ("gone", "g"),
        "10.2.0.2",
        "gone.service.chord.",
    )
    .await;
    let m = ask(dns, "v2.gone.service.chord.", RecordType::A, Via::Udp)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{m:?}");

    // Malformed packets do not stop the agent: a header and garbage, and a lone byte.
    let sock = UdpSocket::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut junk = vec![
        0x12, 0x34, 0x01, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    junk.extend_from_slice(&[0xff; 40]);
    for packet in [junk.as_slice(), &[0x01][..]] {
        sock.send_to(packet, dns)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let mut buf = [0u8; 512];
    if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf)).await {
        let m = Message::from_vec(&buf[..n]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr, "{m:?}");
    }
    let m = ask(dns, "db.service.chord.", RecordType::A, Via::Udp)
        .await
        .unwrap_or_else(|e| panic!("after malformed packets: {e}"));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_reporter_is_killed_stays_while_it_reports_and_leaves_within_ttl_plus_a_sweep(
) {
    let (agent, dns) = dns_agent(None);
    register(
        &agent,
        "pay",
        "stays",
        json!({"address": "10.3.0.1", "port": 1}),
    )
    .await;
    register(
        &agent,
        "pay",
        "dies",
        json!({"address": "10.3.0.2", "port": 1, "ttl_secs": 2}),
    )
    .await;
    // The instance's heartbeat loop, a process of its own.
    let mut reporter = Reaped::reporter(&agent.url(), "pay", "dies");
    let both = ips(&["10.3.0.1", "10.3.0.2"]);
    expect_addresses(dns, "pay.service.chord.", &both).await;
    // While it reports, it stays in every answer for over two TTLs.
    let watching = Instant::now();
    while watching.elapsed() < Duration::from_secs(5) {
        let m = ask(dns, "pay.service.chord.", RecordType::A, Via::Udp)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            addresses(&m),
            both,
            "an instance that reports left the answer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reporter.kill_group();
    let killed = Instant::now();
    expect_addresses(dns, "pay.service.chord.", &ips(&["10.3.0.1"])).await;
    // Its last report came before the kill: critical (and out of the answer) one TTL (2 s)
    // later, at the owner's next sweep (0.5 s); two more seconds of room for a loaded machine.
    let took = killed.elapsed();
    assert!(
        took < Duration::from_millis(2_000 + 500 + 2_000),
        "left the answer {took:?} after the kill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_answer_truncates_over_udp_and_travels_whole_over_tcp() {
    let (agent, dns) = dns_agent(None);
    let mut want = BTreeSet::new();
    let url = agent.url();
    let jobs: Vec<_> = (0..200u32)
        .map(|i| {
            let ip = format!("10.9.{}.{}", i / 200, i % 200 + 1);
            want.insert(ip.parse::<IpAddr>().unwrap_or_else(|e| panic!("{e}")));
            let url = format!("{url}/v1/services/big/instances/i{i}");
            async move { call_ok("PUT", &url, Some(json!({"address": ip, "port": 80}))).await }
        })
        .collect();
    use futures::StreamExt;
    futures::stream::iter(jobs)
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let mut tcp = BTreeSet::new();
    eventually("all 200 over TCP", DEADLINE, async || {
        let m = ask(dns, "big.service.chord.", RecordType::A, Via::Tcp).await?;
        tcp = addresses(&m);
        if m.metadata.truncation {
            return Err("TC over TCP".into());
        }
        if tcp.len() == 200 {
            Ok(())
        } else {
            Err(format!("{} over TCP", tcp.len()))
        }
    })
    .await;
    assert_eq!(tcp, want);
    let udp = ask(dns, "big.service.chord.", RecordType::A, Via::Udp)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let fit = udp.answers.len();
    assert!(udp.metadata.truncation, "TC over UDP: {fit} answers");
    assert!(fit < 200);
    // EDNS0 carries more, up to 4096 bytes, and says whether that was all.
    let edns = ask(dns, "big.service.chord.", RecordType::A, Via::Edns(4096))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (n, tc) = (edns.answers.len(), edns.metadata.truncation);
    assert!(n > fit, "EDNS0: {n} answers, plain UDP {fit}");
    assert_eq!(tc, n < 200, "TC over EDNS0 with {n} answers");
    assert!(edns.edns.is_some(), "an EDNS0 query gets an OPT back");
    // Cut to a smaller EDNS0 buffer, the answer still carries its OPT (RFC 6891 6.1.1): a
    // resolver that gets none takes the server for one without EDNS0. An A record takes 16
    // bytes here, so sixteen buffer sizes in a row leave every remainder once.
    for size in 1232..1248 {
        let cut = ask(dns, "big.service.chord.", RecordType::A, Via::Edns(size))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let n = cut.answers.len();
        assert!(
            cut.metadata.truncation,
            "TC in {size} bytes with {n} answers"
        );
        assert!(n > fit && n < 200, "{n} answers in {size} bytes");
        assert!(
            cut.edns.is_some(),
            "the answer cut to {size} bytes lost its OPT ({n} answers)"
        );
        let len = cut.to_vec().map_or(usize::MAX, |b| b.len());
        assert!(
            len <= usize::from(size),
            "{len} bytes for a {size}-byte buffer"
        );
    }
    let m = ask(dns, "big.service.chord.", RecordType::SRV, Via::Tcp)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.answers.len(), 200, "every SRV over TCP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_agent_of_a_ring_answers_for_every_service() {
    let (first, dns0) = dns_agent(None);
    let (second, dns1) = dns_agent(Some(&first.ring));
    let (third, dns2) = dns_agent(Some(&first.ring));
    let agents = [&first, &second, &third];
    let services: Vec<String> = (0..6).map(|i| format!("svc{i}")).collect();
    for (i, s) in services.iter().enumerate() {
        let agent = agents[i % 3];
        let addr = format!("10.4.0.{}", i + 1);
        register(agent, s, "x", json!({"address": addr, "port": 1})).await;
    }
    for dns in [dns0, dns1, dns2] {
        for (i, s) in services.iter().enumerate() {
            let want = ips(&[&format!("10.4.0.{}", i + 1)]);
            expect_addresses(dns, &format!("{s}.service.chord."), &want).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_panic_threshold_applies_to_dns_answers() {
    let (agent, dns) = dns_agent(None);
    for i in 1..=4 {
        let id = format!("p{i}");
        register(
            &agent,
            "edge",
            &id,
            json!({"address": format!("10.5.0.{i}"), "port": 1}),
        )
        .await;
        if i > 1 {
            report(&agent, "edge", &id, "critical").await;
        }
    }
    expect_addresses(dns, "edge.service.chord.", &ips(&["10.5.0.1"])).await;
    // A healthy share of 1/4 is below 0.5: every instance answers.
    call_ok(
        "PUT",
        &format!("{}/v1/services/edge/policy", agent.url()),
        Some(json!({"panic_threshold": 0.5})),
    )
    .await;
    let all = ips(&["10.5.0.1", "10.5.0.2", "10.5.0.3", "10.5.0.4"]);
    expect_addresses(dns, "edge.service.chord.", &all).await;
}

#[test]
fn agent_dev_prints_its_nodes_and_a_dig_line_that_answers() {
    let mut cmd = Command::new(bin());
    cmd.args([
        "agent",
        "dev",
        "--nodes",
        "2",
        "--stabilize-ms",
        "100",
        "--rpc-timeout-ms",
        "500",
    ])
    .env_remove("RUST_LOG")
    .env_remove("CHORDCTL_AGENT")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let _tmp = crate::support::procs::private_tmp(&mut cmd);
    let mut dev = Reaped(
        cmd.spawn()
            .unwrap_or_else(|e| panic!("spawn agent dev: {e}")),
    );
    let stdout = dev.0.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let stderr = dev.0.stderr.take().unwrap_or_else(|| panic!("no stderr"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let (etx, erx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = etx.send(line);
        }
    });
    let started = Instant::now();
    let mut printed = Vec::new();
    while !printed.iter().any(|l: &String| l.starts_with("data in ")) {
        let left = Duration::from_secs(60).saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => printed.push(line),
            Err(e) => panic!("agent dev printed no last line ({e}): {printed:#?}"),
        }
    }
    let header = printed.first().cloned().unwrap_or_default();
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(columns, ["ID", "RING", "HTTP", "DNS"], "{printed:#?}");
    let rows: Vec<&String> = printed
        .iter()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(rows.len(), 2, "one row per node: {printed:#?}");
    let agent = printed
        .iter()
        .find_map(|l| l.strip_prefix("export CHORDCTL_AGENT="))
        .unwrap_or_else(|| panic!("no export line: {printed:#?}"))
        .to_string();
    let dig = printed
        .iter()
        .find(|l| l.starts_with("dig @"))
        .unwrap_or_else(|| panic!("no dig line: {printed:#?}"));
    assert!(
        printed
            .iter()
            .any(|l| l.ends_with("/ui") && l.contains(agent.trim_start_matches("http://"))),
        "the web view of the first node: {printed:#?}"
    );
    // dig @127.0.0.1 -p PORT web.service.chord
    let words: Vec<&str> = dig.split_whitespace().collect();
    let [_, at, _, port, name] = words.as_slice() else {
        panic!("dig line: {dig}");
    };
    let dns: SocketAddr = format!("{}:{port}", at.trim_start_matches('@'))
        .parse()
        .unwrap_or_else(|e| panic!("{dig}: {e}"));
    assert!(
        rows.iter().any(|r| r.contains(&dns.to_string())),
        "{printed:#?}"
    );
    // The line's service, registered as the printed command does, answers.
    let service = name.split('.').next().unwrap_or_default().to_string();
    let run = Command::new(bin())
        .args([
            "--agent",
            &agent,
            "svc",
            "register",
            &service,
            "--address",
            "127.0.0.1",
            "--port",
            "8080",
        ])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(run.status.success(), "{run:?}");
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(async {
        let fqdn = format!("{name}.");
        expect_addresses(dns, &fqdn, &ips(&["127.0.0.1"])).await;
    });
    // Warnings only by default: no info lines.
    let logged: Vec<String> = erx.try_iter().collect();
    assert!(
        !logged.iter().any(|l| l.contains(" INFO ")),
        "info lines without -v: {logged:#?}"
    );
}

/// DNS answers for a service first asked about while clients' watchers fill the agent's cap:
/// the DNS cache follows services through the same subscriptions, but is neither held to the
/// cap nor counted as a watcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_while_watchers_fill_the_agent() {
    let c = crate::support::cluster::TestCluster::start_with(
        1,
        std::sync::Arc::new(|cfg: &mut chordctl::agent::AgentConfig| {
            cfg.max_watchers = 1;
            cfg.dns = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        }),
    )
    .await;
    let url = c.url(0);
    let dns = c.node(0).dns_addr().expect("a DNS address");
    call_ok(
        "PUT",
        &format!("{url}/v1/services/capped/instances/a"),
        Some(json!({"address": "10.0.0.7", "port": 80})),
    )
    .await;
    // One client's stream takes the only place.
    let mut held = TcpStream::connect(c.node(0).http_addr())
        .await
        .expect("connect");
    held.write_all(b"GET /v1/watch/services/other HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("ask for a stream");
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(DEADLINE, held.read(&mut buf))
            .await
            .expect("a stream's head in time")
            .expect("read");
        assert!(
            n > 0,
            "the stream closed: {}",
            String::from_utf8_lossy(&head)
        );
        head.extend_from_slice(&buf[..n]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let (status, body) = call(
        "GET",
        &format!("{url}/v1/services/capped?index=1&wait=1s"),
        None,
    )
    .await;
    assert_eq!(status, 429, "the cap is full: {body}");
    expect_addresses(dns, "capped.service.chord.", &ips(&["10.0.0.7"])).await;
    // The cache's entry is not a watcher: the gauge shows the one stream.
    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.lines().any(|l| l == "chordctl_watchers 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("watch"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(held);
}
