//! What the agent answers a DNS question, without I/O: the names of the zone (API.md, "DNS"),
//! and the records built from one service's instances as the agent's local view holds them.
//!
//! - `SERVICE.service.DOMAIN.` and `TAG.SERVICE.service.DOMAIN.`: A, AAAA, SRV (and ANY, for
//!   the address records). `_SERVICE._tcp.service.DOMAIN.`: SRV.
//! - `HEX.addr.DOMAIN.`: the address an SRV target of an IP instance names (8 hex digits for
//!   IPv4, 32 for IPv6), so the target resolves on its own too.
//! - `DOMAIN.`: its SOA.
//!
//! Which instances: [`health::visible`] with the healthy filter (passing or warning, every one
//! while the service is in panic), the decision discover and watches share. A service with
//! no instance (with the tag) is NXDOMAIN; one whose instances are all unhealthy is NOERROR
//! with no record. Every negative answer carries the SOA in the authority section.
//!
//! The zone's structural labels (`service`, `_tcp`, `addr`, the domain) match in any case.
//! Registry names are case-sensitive, while resolvers may mix a question's case at random
//! (0x20): a service's and a tag's label name the lower-case service or tag when there is
//! one, and otherwise the one written exactly as asked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::registry::health::{self, Filters};
use crate::registry::{Instance, Policy};

/// The SOA's refresh, retry and expire (seconds): nothing transfers this zone, so only their
/// shape matters.
const SOA_TIMERS: (i32, i32, i32) = (3600, 600, 86_400);

/// One service as the agent's local view holds it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// Every instance, by id.
    pub instances: Vec<Arc<Instance>>,
    /// The service's health policy (its panic threshold).
    pub policy: Policy,
    /// The registry holds the service (its index is above 0), with instances or not: one
    /// emptied of its instances is known, as HTTP discover answers it 200; one never
    /// written is not (404 there, NXDOMAIN here).
    pub known: bool,
}

/// What a question names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A service's instances (those with `tag`); `srv_only` for the `_SERVICE._tcp` form.
    Service {
        service: String,
        tag: Option<String>,
        srv_only: bool,
    },
    /// The address an SRV target names.
    Addr(IpAddr),
    /// The zone's apex.
    Apex,
    /// A name in the zone that names nothing: NXDOMAIN.
    Unknown,
    /// A name outside the zone: this agent does not answer for it (REFUSED).
    Outside,
}

/// A finished answer: its code and its three sections.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub code: ResponseCode,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub additional: Vec<Record>,
}

impl Answer {
    fn new(code: ResponseCode) -> Answer {
        Answer {
            code,
            answers: Vec::new(),
            authority: Vec::new(),
            additional: Vec::new(),
        }
    }

    /// At most how many bytes this answer to a question about `query` takes encoded, with an
    /// OPT record: names counted whole, as if nothing were compressed. `None` for a record
    /// type the zone does not answer with.
    pub fn most_bytes(&self, query: &Name) -> Option<usize> {
        // A name's labels, each with its length byte, and the root's.
        let name = |n: &Name| n.len() + 1;
        let mut total = 12 + name(query) + 4 + 11;
        for r in self
            .answers
            .iter()
            .chain(&self.authority)
            .chain(&self.additional)
        {
            let data = match &r.data {
                RData::A(_) => 4,
                RData::AAAA(_) => 16,
                RData::CNAME(c) => name(&c.0),
                RData::SRV(srv) => 6 + name(&srv.target),
                RData::SOA(soa) => name(&soa.mname) + name(&soa.rname) + 20,
                _ => return None,
            };
            total += name(&r.name) + 10 + data;
        }
        Some(total)
    }
}

/// The zone this agent answers for: its domain, its records' TTL and its SOA.
#[derive(Debug, Clone)]
pub struct Zone {
    domain: Name,
    ttl: u32,
    soa: Record,
}

impl Zone {
    /// The zone of `domain` (`chord`, `chord.`, `svc.example`), whose records live `ttl`.
    pub fn new(domain: &str, ttl: Duration) -> Result<Zone, String> {
        let domain = parse_domain(domain)?;
        let ttl = u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX);
        let label = |l: &str| {
            Name::from_ascii(l)
                .and_then(|n| n.append_domain(&domain))
                .map_err(|e| format!("the DNS domain {domain} is too long: {e}"))
        };
        let (refresh, retry, expire) = SOA_TIMERS;
        let soa = SOA::new(
            label("ns")?,
            label("hostmaster")?,
            1,
            refresh,
            retry,
            expire,
            ttl,
        );
        let soa = Record::from_rdata(domain.clone(), ttl, RData::SOA(soa));
        Ok(Zone { domain, ttl, soa })
    }

    /// The zone's domain, fully qualified and in lower case.
    pub fn domain(&self) -> &Name {
        &self.domain
    }

    /// What `name` names in this zone.
    pub fn target(&self, name: &Name) -> Target {
        if !self.domain.zone_of(name) {
            return Target::Outside;
        }
        let inside = usize::from(name.num_labels()) - usize::from(self.domain.num_labels());
        let labels: Vec<&[u8]> = name.iter().take(inside).collect();
        let text = |l: &[u8]| String::from_utf8_lossy(l).into_owned();
        let is = |l: &[u8], word: &str| l.eq_ignore_ascii_case(word.as_bytes());
        match labels.as_slice() {
            [] => Target::Apex,
            [hex, addr] if is(addr, "addr") => {
                parse_hex_addr(hex).map_or(Target::Unknown, Target::Addr)
            }
            [service, kind] if is(kind, "service") => Target::Service {
                service: text(service),
                tag: None,
                srv_only: false,
            },
            [tag, service, kind] if is(kind, "service") => {
                match (service.strip_prefix(b"_"), tag.strip_prefix(b"_")) {
                    (Some(b"tcp") | Some(b"TCP"), Some(service)) => Target::Service {
                        service: text(service),
                        tag: None,
                        srv_only: true,
                    },
                    _ => Target::Service {
                        service: text(service),
                        tag: Some(text(tag)),
                        srv_only: false,
                    },
                }
            }
            _ => Target::Unknown,
        }
    }

    /// The answer to a question of `qtype` about `name`, which names `target`; `view` is the
    /// service's when the target is one. `rotate` turns the order of the records (a counter
    /// of queries), so clients that take the first spread over the instances.
    pub fn answer(
        &self,
        name: &Name,
        qtype: RecordType,
        target: &Target,
        view: Option<&View>,
        rotate: usize,
    ) -> Answer {
        match target {
            Target::Outside => Answer::new(ResponseCode::Refused),
            Target::Unknown => self.negative(ResponseCode::NXDomain),
            Target::Apex => match qtype {
                RecordType::SOA | RecordType::ANY => {
                    let mut a = Answer::new(ResponseCode::NoError);
                    a.answers.push(self.soa.clone());
                    a
                }
                _ => self.negative(ResponseCode::NoError),
            },
            Target::Addr(ip) => {
                let r = address_record(name, *ip, self.ttl);
                if qtype != r.record_type() && qtype != RecordType::ANY {
                    return self.negative(ResponseCode::NoError);
                }
                let mut a = Answer::new(ResponseCode::NoError);
                a.answers.push(r);
                a
            }
            Target::Service { tag, srv_only, .. } => {
                let Some(view) = view else {
                    return self.negative(ResponseCode::NXDomain);
                };
                let all: Vec<&Instance> = view.instances.iter().map(Arc::as_ref).collect();
                let has = |t: &str| all.iter().any(|i| i.tags.iter().any(|have| have == t));
                // As for the service's label (`Handler::view_of`): the tag in lower case
                // first, as written when no instance has that.
                let lower = tag.as_deref().map(str::to_ascii_lowercase);
                let tag = match (tag.as_deref(), lower.as_deref()) {
                    (Some(t), Some(l)) if l != t && has(l) => Some(l),
                    (t, _) => t,
                };
                // A service is named while the registry holds it; a tag while an instance
                // has it.
                let named = match tag {
                    Some(t) => has(t),
                    None => view.known || !all.is_empty(),
                };
                if !named {
                    return self.negative(ResponseCode::NXDomain);
                }
                let filters = Filters { healthy: true, tag };
                let (mut shown, _panic) = health::visible(&all, &filters, &view.policy);
                if !shown.is_empty() {
                    let turn = rotate % shown.len();
                    shown.rotate_left(turn);
                }
                let mut a = Answer::new(ResponseCode::NoError);
                match (qtype, srv_only) {
                    (RecordType::SRV, _) => self.srv(name, &shown, &mut a),
                    (RecordType::A | RecordType::AAAA | RecordType::ANY, false) => {
                        self.addresses(name, qtype, &shown, &mut a)
                    }
                    _ => {}
                }
                if a.answers.is_empty() {
                    a.authority.push(self.soa.clone());
                }
                a
            }
        }
    }

    /// NXDOMAIN, or NOERROR with no data: the SOA in the authority section.
    fn negative(&self, code: ResponseCode) -> Answer {
        let mut a = Answer::new(code);
        a.authority.push(self.soa.clone());
        a
    }

    /// The address records of `instances` of the family asked for (both for ANY). When none
    /// of them has an IP address, one CNAME to the first host name: a name may hold one CNAME
    /// and nothing else.
    fn addresses(&self, name: &Name, qtype: RecordType, instances: &[&Instance], a: &mut Answer) {
        let mut hosts = Vec::new();
        let mut any_ip = false;
        for i in instances {
            match i.address.parse::<IpAddr>() {
                Ok(ip) => {
                    any_ip = true;
                    let r = address_record(name, ip, self.ttl);
                    if qtype == RecordType::ANY || r.record_type() == qtype {
                        a.answers.push(r);
                    }
                }
                Err(_) => hosts.push(i),
            }
        }
        if !any_ip {
            if let Some(host) = hosts.iter().find_map(|i| host_name(&i.address)) {
                a.answers.push(Record::from_rdata(
                    name.clone(),
                    self.ttl,
                    RData::CNAME(CNAME(host)),
                ));
            }
        }
    }

    /// One SRV record per instance (priority 1, its weight, its port); an IP instance's
    /// target is its `HEX.addr.DOMAIN.` name, whose address goes in the additional section.
    fn srv(&self, name: &Name, instances: &[&Instance], a: &mut Answer) {
        for i in instances {
            let weight = u16::try_from(i.weight).unwrap_or(u16::MAX);
            let (target, extra) = match i.address.parse::<IpAddr>() {
                Ok(ip) => {
                    let Some(target) = self.addr_name(ip) else {
                        continue;
                    };
                    let extra = address_record(&target, ip, self.ttl);
                    (target, Some(extra))
                }
                Err(_) => match host_name(&i.address) {
                    Some(host) => (host, None),
                    None => continue,
                },
            };
            a.answers.push(Record::from_rdata(
                name.clone(),
                self.ttl,
                RData::SRV(SRV::new(1, weight, i.port, target)),
            ));
            a.additional.extend(extra);
        }
    }

    /// `HEX.addr.DOMAIN.` for `ip`.
    fn addr_name(&self, ip: IpAddr) -> Option<Name> {
        let hex = match ip {
            IpAddr::V4(v4) => hex::encode(v4.octets()),
            IpAddr::V6(v6) => hex::encode(v6.octets()),
        };
        Name::from_ascii(format!("{hex}.addr"))
            .and_then(|n| n.append_domain(&self.domain))
            .ok()
    }
}

/// `--dns-domain`: a DNS name, fully qualified and lower-cased; not the root.
pub fn parse_domain(text: &str) -> Result<Name, String> {
    let name =
        Name::from_ascii(text.trim()).map_err(|e| format!("not a DNS domain: {text:?}: {e}"))?;
    if name.num_labels() == 0 {
        return Err("the DNS domain must not be the root".into());
    }
    let mut name = name.to_lowercase();
    name.set_fqdn(true);
    Ok(name)
}

/// The A or AAAA record of `ip` under `name`.
fn address_record(name: &Name, ip: IpAddr, ttl: u32) -> Record {
    let data = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name.clone(), ttl, data)
}

/// An instance's host-name address as a fully qualified name (`None` if it is not one).
fn host_name(address: &str) -> Option<Name> {
    let mut name = Name::from_ascii(address).ok()?;
    if name.num_labels() == 0 {
        return None;
    }
    name.set_fqdn(true);
    Some(name)
}

/// The address of an `addr` label: 8 hex digits (IPv4) or 32 (IPv6).
fn parse_hex_addr(label: &[u8]) -> Option<IpAddr> {
    let bytes = hex::decode(label).ok()?;
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes.as_slice())
            .ok()
            .map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        16 => <[u8; 16]>::try_from(bytes.as_slice())
            .ok()
            .map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {

    use chrono::Utc;

    use super::*;
    use crate::registry::{State, Status};

    fn instance(id: &str, address: &str, port: u16, state: State, tags: &[&str]) -> Arc<Instance> {
        let mut status = Status::new(Utc::now());
        status.state = state;
        Arc::new(Instance {
            service: "web".into(),
            id: id.into(),
            address: address.into(),
            port,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            metadata: Default::default(),
            weight: 100,
            ttl_secs: None,
            registered_at: Utc::now(),
            status,
            flapping: false,
        })
    }

    fn zone() -> Zone {
        Zone::new("Chord.", Duration::from_secs(7)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn ask(z: &Zone, q: &str, t: RecordType, view: Option<&View>) -> Answer {
        let n = name(q);
        z.answer(&n, t, &z.target(&n), view, 0)
    }

    fn ips(a: &Answer) -> Vec<String> {
        let mut out: Vec<String> = a
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0.to_string()),
                RData::AAAA(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect();
        out.sort();
        out
    }

    fn has_soa(a: &Answer) -> bool {
        a.authority
            .iter()
            .any(|r| r.record_type() == RecordType::SOA)
    }

    #[test]
    fn names_of_the_zone() {
        let z = zone();
        let svc = |service: &str, tag: Option<&str>, srv_only| Target::Service {
            service: service.into(),
            tag: tag.map(String::from),
            srv_only,
        };
        assert_eq!(
            z.target(&name("web.service.chord.")),
            svc("web", None, false)
        );
        assert_eq!(
            z.target(&name("Web.SERVICE.CHORD.")),
            svc("Web", None, false)
        );
        assert_eq!(
            z.target(&name("v1.web.service.chord.")),
            svc("web", Some("v1"), false)
        );
        assert_eq!(
            z.target(&name("_web._tcp.service.chord.")),
            svc("web", None, true)
        );
        assert_eq!(z.target(&name("chord.")), Target::Apex);
        assert_eq!(
            z.target(&name("0a000001.addr.chord.")),
            Target::Addr("10.0.0.1".parse().unwrap_or_else(|e| panic!("{e}")))
        );
        assert_eq!(z.target(&name("zz.addr.chord.")), Target::Unknown);
        assert_eq!(z.target(&name("a.b.c.service.chord.")), Target::Unknown);
        assert_eq!(z.target(&name("web.chord.")), Target::Unknown);
        assert_eq!(z.target(&name("example.com.")), Target::Outside);
        assert_eq!(z.target(&name("chordx.")), Target::Outside);
    }

    #[test]
    fn address_records_hold_the_healthy_instances_with_the_zone_ttl() {
        let view = View {
            instances: vec![
                instance("a", "10.0.0.1", 80, State::Passing, &["v1"]),
                instance("b", "10.0.0.2", 80, State::Warning, &["v2"]),
                instance("c", "10.0.0.3", 80, State::Critical, &["v1"]),
                instance("d", "10.0.0.4", 80, State::Maintenance, &["v1"]),
                instance("e", "fd00::1", 80, State::Passing, &["v1"]),
            ],
            policy: Policy::default(),
            known: true,
        };
        let z = zone();
        let a = ask(&z, "web.service.chord.", RecordType::A, Some(&view));
        assert_eq!(a.code, ResponseCode::NoError);
        assert_eq!(ips(&a), ["10.0.0.1", "10.0.0.2"]);
        assert!(a.answers.iter().all(|r| r.ttl == 7));
        let a = ask(&z, "web.service.chord.", RecordType::AAAA, Some(&view));
        assert_eq!(ips(&a), ["fd00::1"]);
        let a = ask(&z, "web.service.chord.", RecordType::ANY, Some(&view));
        assert_eq!(ips(&a), ["10.0.0.1", "10.0.0.2", "fd00::1"]);
        let a = ask(&z, "v1.web.service.chord.", RecordType::A, Some(&view));
        assert_eq!(ips(&a), ["10.0.0.1"]);
        // A tag no instance has names nothing; one only unhealthy instances have is empty.
        let a = ask(&z, "v9.web.service.chord.", RecordType::A, Some(&view));
        assert_eq!(a.code, ResponseCode::NXDomain);
        assert!(has_soa(&a));
        let view = View {
            instances: vec![instance("c", "10.0.0.3", 80, State::Critical, &[])],
            policy: Policy::default(),
            known: true,
        };
        let a = ask(&z, "web.service.chord.", RecordType::A, Some(&view));
        assert_eq!(
            (a.code, a.answers.len(), has_soa(&a)),
            (ResponseCode::NoError, 0, true)
        );
    }

    #[test]
    fn a_service_in_panic_answers_every_instance() {
        let mut view = View {
            instances: vec![
                instance("a", "10.0.0.1", 80, State::Passing, &[]),
                instance("b", "10.0.0.2", 80, State::Critical, &[]),
                instance("c", "10.0.0.3", 80, State::Critical, &[]),
            ],
            policy: Policy::default(),
            known: true,
        };
        let z = zone();
        assert_eq!(
            ips(&ask(&z, "web.service.chord.", RecordType::A, Some(&view))),
            ["10.0.0.1"]
        );
        view.policy.panic_threshold = 0.5;
        assert_eq!(
            ips(&ask(&z, "web.service.chord.", RecordType::A, Some(&view))),
            ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        );
    }

    #[test]
    fn srv_records_name_targets_whose_addresses_are_additional() {
        let mut heavy = (*instance("a", "10.0.0.1", 8080, State::Passing, &[])).clone();
        heavy.weight = 300;
        let view = View {
            instances: vec![
                Arc::new(heavy),
                instance("h", "db.example", 5432, State::Passing, &[]),
            ],
            policy: Policy::default(),
            known: true,
        };
        let z = zone();
        for q in ["web.service.chord.", "_web._tcp.service.chord."] {
            let a = ask(&z, q, RecordType::SRV, Some(&view));
            let srv: Vec<(u16, u16, u16, String)> = a
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(s) => Some((s.priority, s.weight, s.port, s.target.to_ascii())),
                    _ => None,
                })
                .collect();
            assert_eq!(
                srv,
                [
                    (1, 300, 8080, "0a000001.addr.chord.".to_string()),
                    (1, 100, 5432, "db.example.".to_string())
                ],
                "{q}"
            );
            assert_eq!(a.additional.len(), 1);
            assert_eq!(a.additional[0].name.to_ascii(), "0a000001.addr.chord.");
        }
        // The SRV form answers no address records.
        let a = ask(&z, "_web._tcp.service.chord.", RecordType::A, Some(&view));
        assert!(a.answers.is_empty() && has_soa(&a));
        // The target resolves on its own.
        let a = ask(&z, "0a000001.addr.chord.", RecordType::A, None);
        assert_eq!(ips(&a), ["10.0.0.1"]);
    }

    #[test]
    fn host_names_answer_one_cname_and_only_without_ip_instances() {
        let z = zone();
        let hosts = View {
            instances: vec![
                instance("h1", "db1.example", 1, State::Passing, &[]),
                instance("h2", "db2.example", 1, State::Passing, &[]),
            ],
            policy: Policy::default(),
            known: true,
        };
        let a = ask(&z, "web.service.chord.", RecordType::A, Some(&hosts));
        let cnames: Vec<String> = a
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::CNAME(c) => Some(c.0.to_ascii()),
                _ => None,
            })
            .collect();
        assert_eq!(cnames, ["db1.example."]);
        let mixed = View {
            instances: vec![
                instance("h1", "db1.example", 1, State::Passing, &[]),
                instance("i", "10.0.0.9", 1, State::Passing, &[]),
            ],
            policy: Policy::default(),
            known: true,
        };
        let a = ask(&z, "web.service.chord.", RecordType::A, Some(&mixed));
        assert_eq!(ips(&a), ["10.0.0.9"]);
        assert_eq!(a.answers.len(), 1, "no CNAME beside address records");
    }

    /// The bound that lets most UDP answers skip a trial encoding is never below the
    /// encoded size: A, AAAA, CNAME, SRV with its additional addresses, and negative answers.
    #[test]
    fn most_bytes_is_never_below_the_encoded_size() {
        use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
        let z = zone();
        let view = View {
            instances: (0..40)
                .map(|i| {
                    let address = match i % 3 {
                        0 => format!("10.0.{i}.1"),
                        1 => format!("fd00::{i:x}"),
                        _ => format!("host-{i}.example"),
                    };
                    instance(&format!("i{i}"), &address, 80, State::Passing, &["v1"])
                })
                .collect(),
            policy: Policy::default(),
            known: true,
        };
        let cases = [
            ("web.service.chord.", RecordType::A, Some(&view)),
            ("web.service.chord.", RecordType::AAAA, Some(&view)),
            ("_web._tcp.service.chord.", RecordType::SRV, Some(&view)),
            ("v1.web.service.chord.", RecordType::SRV, Some(&view)),
            ("nothing.service.chord.", RecordType::A, None),
            ("chord.", RecordType::SOA, None),
        ];
        for (q, t, v) in cases {
            let a = ask(&z, q, t, v);
            let mut m = Message::new(1, MessageType::Response, OpCode::Query);
            m.add_query(Query::query(name(q), t));
            m.add_answers(a.answers.iter().cloned());
            m.add_authorities(a.authority.iter().cloned());
            m.add_additionals(a.additional.iter().cloned());
            m.set_edns(Edns::new());
            let encoded = m.to_vec().map_or(usize::MAX, |b| b.len());
            let Some(most) = a.most_bytes(&name(q)) else {
                panic!("{q} {t}: no bound for {a:?}");
            };
            assert!(encoded <= most, "{q} {t}: {encoded} bytes, bound {most}");
        }
    }

    #[test]
    fn negative_answers_carry_the_soa() {
        let z = zone();
        let a = ask(&z, "nothing.service.chord.", RecordType::A, None);
        assert_eq!(a.code, ResponseCode::NXDomain);
        assert!(has_soa(&a));
        let a = ask(
            &z,
            "nothing.service.chord.",
            RecordType::A,
            Some(&View::default()),
        );
        assert_eq!(a.code, ResponseCode::NXDomain);
        // Emptied of its instances, a service is still known: no records, not NXDOMAIN
        // (HTTP discover answers it 200 with none); a tag none of its instances has is.
        let emptied = View {
            known: true,
            ..View::default()
        };
        let a = ask(&z, "gone.service.chord.", RecordType::A, Some(&emptied));
        assert_eq!((a.code, a.answers.len()), (ResponseCode::NoError, 0));
        assert!(has_soa(&a));
        let a = ask(&z, "v2.gone.service.chord.", RecordType::A, Some(&emptied));
        assert_eq!(a.code, ResponseCode::NXDomain);
        let a = ask(&z, "x.y.z.service.chord.", RecordType::A, None);
        assert_eq!(a.code, ResponseCode::NXDomain);
        let a = ask(&z, "chord.", RecordType::SOA, None);
        assert_eq!(a.answers.len(), 1);
        let RData::SOA(soa) = &a.answers[0].data else {
            panic!("{a:?}");
        };
        assert_eq!(soa.minimum, 7, "negative answers live the zone's TTL");
        let a = ask(&z, "example.org.", RecordType::A, None);
        assert_eq!(a.code, ResponseCode::Refused);
    }

    #[test]
    fn answers_rotate_over_the_instances() {
        let view = View {
            instances: vec![
                instance("a", "10.0.0.1", 80, State::Passing, &[]),
                instance("b", "10.0.0.2", 80, State::Passing, &[]),
            ],
            policy: Policy::default(),
            known: true,
        };
        let z = zone();
        let n = name("web.service.chord.");
        let first = |turn| {
            let a = z.answer(&n, RecordType::A, &z.target(&n), Some(&view), turn);
            a.answers.first().map(|r| r.data.clone())
        };
        assert_ne!(first(0), first(1));
        assert_eq!(first(0), first(2));
    }

    #[test]
    fn domains_are_checked() {
        assert!(parse_domain("").is_err());
        assert!(parse_domain(".").is_err());
        assert!(parse_domain("bad..name").is_err());
        assert_eq!(
            parse_domain("Svc.Example").map(|n| n.to_ascii()),
            Ok("svc.example.".to_string())
        );
    }
}
