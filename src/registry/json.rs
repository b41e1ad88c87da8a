//! The INSTANCE's JSON (API.md) written by hand, byte for byte as `serde_json` writes
//! [`Instance`]'s `Serialize`, for the answers that carry instances: a write's answer and
//! discover's.
//!
//! `serde_json` runs every string through its escaping loop one byte at a time, field names
//! included, and an INSTANCE has eighteen field names among some twenty-six strings: that was
//! about 9% of a registration's instructions. Here field names are constants, a string that
//! needs no escaping (almost every one: ids, addresses, tags, times) is checked with a loop
//! the compiler vectorizes and copied whole, and anything else — a string to escape, every
//! number — is still written by `serde_json` itself, so the bytes cannot drift from it (the
//! tests compare both).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::model::{rfc3339, Instance};

/// Append `instance` as JSON to `out`: the same bytes as `serde_json::to_writer(out, instance)`.
pub fn write_instance(out: &mut Vec<u8>, instance: &Instance) {
    let names: [(&[u8], &str); 3] = [
        (b"{\"service\":", &instance.service),
        (b",\"id\":", &instance.id),
        (b",\"address\":", &instance.address),
    ];
    for (key, value) in names {
        out.extend_from_slice(key);
        string(out, value);
    }
    out.extend_from_slice(b",\"port\":");
    by_serde_json(out, &instance.port);
    out.extend_from_slice(b",\"tags\":[");
    for (i, tag) in instance.tags.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, tag);
    }
    out.extend_from_slice(b"],\"metadata\":{");
    for (i, (k, v)) in instance.metadata.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, k);
        out.push(b':');
        string(out, v);
    }
    out.extend_from_slice(b"},\"weight\":");
    by_serde_json(out, &instance.weight);
    out.extend_from_slice(b",\"ttl_secs\":");
    by_serde_json(out, &instance.ttl_secs);
    out.extend_from_slice(b",\"registered_at\":");
    time(out, &instance.registered_at);
    let s = &instance.status;
    out.extend_from_slice(b",\"status\":{\"state\":\"");
    out.extend_from_slice(s.state.as_str().as_bytes());
    out.push(b'"');
    let measures: [(&[u8], f64); 4] = [
        (b",\"load\":", s.load),
        (b",\"success_rate\":", s.success_rate),
        (b",\"latency_ms\":", s.latency_ms),
        (b",\"frequency\":", s.frequency),
    ];
    for (key, value) in measures {
        out.extend_from_slice(key);
        by_serde_json(out, &value);
    }
    out.extend_from_slice(b",\"note\":");
    string(out, &s.note);
    out.extend_from_slice(b",\"updated_at\":");
    time(out, &s.updated_at);
    out.push(b'}');
    if instance.flapping {
        out.extend_from_slice(b",\"flapping\":true");
    }
    out.push(b'}');
}

/// Discover's answer: `{"service", "instances": [INSTANCE...]}`, and `"panic": true` when the
/// service is in panic; the same bytes as `serde_json` writes for such a struct.
pub fn discover_answer(service: &str, instances: &[&Instance], panic: bool) -> Vec<u8> {
    // An INSTANCE is about 400 bytes.
    let mut out = Vec::with_capacity(64 + 512 * instances.len());
    out.extend_from_slice(b"{\"service\":");
    string(&mut out, service);
    out.extend_from_slice(b",\"instances\":[");
    for (i, instance) in instances.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_instance(&mut out, instance);
    }
    out.push(b']');
    if panic {
        out.extend_from_slice(b",\"panic\":true");
    }
    out.push(b'}');
    out
}

/// `s` as a JSON string.
pub fn string(out: &mut Vec<u8>, s: &str) {
    // No early exit, so that the loop vectorizes: most strings are short and clean.
    let escape = s.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if escape {
        by_serde_json(out, s);
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// `v` as `serde_json` writes it (numbers, `null`, strings to escape).
fn by_serde_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Writing into a Vec cannot fail, nor can serializing a number or a string.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// `t` as the INSTANCE's times are written (RFC 3339, UTC, `Z`, fractions as needed).
fn time(out: &mut Vec<u8>, t: &DateTime<Utc>) {
    out.push(b'"');
    out.extend_from_slice(rfc3339::text(t).as_bytes());
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::TimeZone;

    use super::*;
    use crate::registry::model::{Metadata, State, Status};

    fn instance(i: usize) -> Instance {
        let strings = [
            "plain",
            "",
            "with \"quotes\" and \\ backslash",
            "control \u{1} \n \t \u{1f} chars",
            "unicode é ü 中文 🚀 \u{2028} \u{7f}",
            "10.0.0.7:8080",
        ];
        let s = |k: usize| strings[(i + k) % strings.len()].to_string();
        let numbers = [0.0, 1.0, 0.25, 0.1 + 0.2, 1e-7, 1e21, 12345.678, f64::MAX];
        let f = |k: usize| numbers[(i + k) % numbers.len()];
        let meta: BTreeMap<String, String> = (0..i % 4).map(|k| (s(k + 2), s(k + 3))).collect();
        let at = Utc.timestamp_opt(1_764_000_000 + i as i64, (i as u32 % 3) * 123_456_789);
        let at = at.single().expect("a valid time");
        Instance {
            service: format!("svc-{i}.a_b"),
            id: s(0),
            address: s(1),
            port: (i * 7919 % 65536) as u16,
            tags: (0..i % 3).map(s).collect(),
            metadata: Metadata::from(meta),
            weight: (i * 31 % 10001) as u32,
            ttl_secs: i.is_multiple_of(2).then_some(i as u64 * 5),
            registered_at: at,
            status: Status {
                state: State::ALL[i % 4],
                load: f(0),
                success_rate: f(1),
                latency_ms: f(2),
                frequency: f(3),
                note: s(4),
                updated_at: at + chrono::Duration::milliseconds(i as i64),
            },
            flapping: i.is_multiple_of(5),
        }
    }

    #[test]
    fn an_instance_is_written_byte_for_byte_as_serde_json_writes_it() {
        for i in 0..200 {
            let inst = instance(i);
            let mut mine = Vec::new();
            write_instance(&mut mine, &inst);
            let theirs = serde_json::to_vec(&inst).expect("serialize");
            assert_eq!(
                String::from_utf8_lossy(&mine),
                String::from_utf8_lossy(&theirs),
                "instance {i}"
            );
        }
    }

    #[test]
    fn a_discover_answer_is_written_byte_for_byte_as_serde_json_writes_it() {
        #[derive(Serialize)]
        struct Discovered<'a> {
            service: &'a str,
            instances: &'a [&'a Instance],
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            panic: bool,
        }
        let all: Vec<Instance> = (0..12).map(instance).collect();
        for n in [0, 1, 12] {
            let instances: Vec<&Instance> = all.iter().take(n).collect();
            for panic in [false, true] {
                let theirs = serde_json::to_vec(&Discovered {
                    service: "pay\"ments",
                    instances: &instances,
                    panic,
                })
                .expect("serialize");
                let mine = discover_answer("pay\"ments", &instances, panic);
                assert_eq!(
                    String::from_utf8_lossy(&mine),
                    String::from_utf8_lossy(&theirs),
                    "{n} instances, panic {panic}"
                );
            }
        }
    }

    #[test]
    fn a_string_is_escaped_only_when_it_must_be_and_then_as_serde_json_does() {
        for s in [
            "",
            "a",
            "\"",
            "\\",
            "\u{0}",
            "\u{1f}",
            " ",
            "\u{7f}",
            "é🚀",
            "a\"b\\c\nd",
        ] {
            let mut mine = Vec::new();
            string(&mut mine, s);
            assert_eq!(mine, serde_json::to_vec(s).expect("serialize"), "{s:?}");
        }
    }
}
