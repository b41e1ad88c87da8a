//! Input validation: the limits of API.md, with messages that say exactly what was wrong.
//!
//! Every check returns `Error::InvalidInput` (HTTP 400, exit code 1) whose message names the field,
//! the rule and the offending value, e.g. `port must be 1-65535, got 70000`. Long values are
//! shortened in messages so an error never echoes a megabyte back.

use std::collections::BTreeMap;

use crate::{Error, Result};

/// Longest service name, instance id, address and tag, in characters.
pub const MAX_NAME_LEN: usize = 253;
/// Most tags on one instance.
pub const MAX_TAGS: usize = 64;
/// Most metadata entries on one instance.
pub const MAX_METADATA: usize = 64;
/// Longest metadata key, in characters.
pub const MAX_METADATA_KEY_LEN: usize = 128;
/// Longest metadata value, in characters.
pub const MAX_METADATA_VALUE_LEN: usize = 1024;
/// Longest status note, in characters.
pub const MAX_NOTE_LEN: usize = 1024;
/// Most instances one service may have: a record travels whole in one ring RPC frame, and a
/// runaway registration loop must not grow it without bound.
pub const MAX_INSTANCES: usize = 10_000;
/// Largest instance weight.
pub const MAX_WEIGHT: i64 = 10_000;
/// Longest TTL, one year: longer is surely a mistake, and it keeps deadline arithmetic in range.
pub const MAX_TTL_SECS: u64 = 365 * 24 * 3600;

/// Shortens `s` for an error message.
pub(crate) fn shown(s: &str) -> String {
    const SHOWN: usize = 64;
    if s.chars().count() <= SHOWN {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(SHOWN).collect();
        format!("{head:?}...")
    }
}

/// Checks a service name: 1–253 characters of `a-z A-Z 0-9 . _ -`.
pub fn validate_service(name: &str) -> Result<()> {
    let len = name.chars().count();
    if len == 0 {
        return Err(Error::invalid("service name must not be empty"));
    }
    if len > MAX_NAME_LEN {
        return Err(Error::invalid(format!(
            "service name must be at most {MAX_NAME_LEN} characters, got {len}"
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(Error::invalid(format!(
            "service name may contain only a-z A-Z 0-9 . _ -, got {c:?} in {}",
            shown(name)
        )));
    }
    Ok(())
}

/// Checks an instance id: 1–253 printable characters without `/`.
///
/// `.` and `..` are refused as well: HTTP clients normalize them out of URL paths, so such an
/// instance could never be addressed again.
pub fn validate_instance_id(id: &str) -> Result<()> {
    let len = id.chars().count();
    if len == 0 {
        return Err(Error::invalid("instance id must not be empty"));
    }
    if len > MAX_NAME_LEN {
        return Err(Error::invalid(format!(
            "instance id must be at most {MAX_NAME_LEN} characters, got {len}"
        )));
    }
    if id.contains('/') {
        return Err(Error::invalid(format!(
            "instance id must not contain '/', got {}",
            shown(id)
        )));
    }
    if let Some(c) = id.chars().find(|c| c.is_control()) {
        return Err(Error::invalid(format!(
            "instance id must be printable, got control character {c:?} in {}",
            shown(id)
        )));
    }
    if id == "." || id == ".." {
        return Err(Error::invalid(format!(
            "instance id must not be {id:?} (it cannot appear in a URL path)"
        )));
    }
    Ok(())
}

/// Checks an instance address (a host name or IP): 1–253 characters, no whitespace or control
/// characters.
pub fn validate_address(address: &str) -> Result<()> {
    let len = address.chars().count();
    if len == 0 {
        return Err(Error::invalid("address must not be empty"));
    }
    if len > MAX_NAME_LEN {
        return Err(Error::invalid(format!(
            "address must be at most {MAX_NAME_LEN} characters, got {len}"
        )));
    }
    if let Some(c) = address
        .chars()
        .find(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Error::invalid(format!(
            "address must not contain whitespace or control characters, got {c:?} in {}",
            shown(address)
        )));
    }
    Ok(())
}

/// Checks a port and narrows it: 1–65535, or 0–65535 when `allow_zero` (only the
/// prototype-compatible interface creates port-0 instances).
pub fn validate_port(port: i64, allow_zero: bool) -> Result<u16> {
    let min = if allow_zero { 0 } else { 1 };
    match u16::try_from(port) {
        Ok(p) if i64::from(p) >= min => Ok(p),
        _ => Err(Error::invalid(format!(
            "port must be {min}-65535, got {port}"
        ))),
    }
}

/// Checks a weight and narrows it: 0–10000.
pub fn validate_weight(weight: i64) -> Result<u32> {
    if (0..=MAX_WEIGHT).contains(&weight) {
        // In range, so the conversion cannot fail; map instead of unwrap all the same.
        u32::try_from(weight).map_err(|_| Error::invalid("weight out of range"))
    } else {
        Err(Error::invalid(format!(
            "weight must be 0-{MAX_WEIGHT}, got {weight}"
        )))
    }
}

/// Checks a TTL and narrows it: 1 second to one year.
pub fn validate_ttl(ttl_secs: i64) -> Result<u64> {
    match u64::try_from(ttl_secs) {
        Ok(t) if (1..=MAX_TTL_SECS).contains(&t) => Ok(t),
        _ => Err(Error::invalid(format!(
            "ttl_secs must be 1-{MAX_TTL_SECS} (one year), got {ttl_secs}"
        ))),
    }
}

/// Checks tags: at most 64, each 1–253 characters without control characters.
pub fn validate_tags(tags: &[String]) -> Result<()> {
    if tags.len() > MAX_TAGS {
        return Err(Error::invalid(format!(
            "at most {MAX_TAGS} tags are allowed, got {}",
            tags.len()
        )));
    }
    for tag in tags {
        let len = tag.chars().count();
        if len == 0 {
            return Err(Error::invalid("tags must not be empty"));
        }
        if len > MAX_NAME_LEN {
            return Err(Error::invalid(format!(
                "a tag must be at most {MAX_NAME_LEN} characters, got {len} in {}",
                shown(tag)
            )));
        }
        if tag.chars().any(char::is_control) {
            return Err(Error::invalid(format!(
                "tag {} must not contain control characters",
                shown(tag)
            )));
        }
    }
    Ok(())
}

/// Checks metadata: at most 64 entries, keys 1–128 characters, values at most 1024.
pub fn validate_metadata(metadata: &BTreeMap<String, String>) -> Result<()> {
    if metadata.len() > MAX_METADATA {
        return Err(Error::invalid(format!(
            "at most {MAX_METADATA} metadata entries are allowed, got {}",
            metadata.len()
        )));
    }
    for (key, value) in metadata {
        let key_len = key.chars().count();
        if key_len == 0 {
            return Err(Error::invalid("metadata keys must not be empty"));
        }
        if key_len > MAX_METADATA_KEY_LEN {
            return Err(Error::invalid(format!(
                "metadata key must be at most {MAX_METADATA_KEY_LEN} characters, got {key_len} in {}",
                shown(key)
            )));
        }
        if key.chars().any(char::is_control) {
            return Err(Error::invalid(format!(
                "metadata key {} must not contain control characters",
                shown(key)
            )));
        }
        let value_len = value.chars().count();
        if value_len > MAX_METADATA_VALUE_LEN {
            return Err(Error::invalid(format!(
                "metadata value of {} must be at most {MAX_METADATA_VALUE_LEN} characters, got {value_len}",
                shown(key)
            )));
        }
    }
    Ok(())
}

/// Checks a rate (success rate): finite and within 0–1.
pub fn validate_rate(field: &str, value: f64) -> Result<()> {
    if value.is_finite() && (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{field} must be between 0 and 1, got {value}"
        )))
    }
}

/// Checks a non-negative measure (load, latency, frequency): finite and ≥ 0.
pub fn validate_non_negative(field: &str, value: f64) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{field} must be a finite number >= 0, got {value}"
        )))
    }
}

/// Checks a status note: at most 1024 characters.
pub fn validate_note(note: &str) -> Result<()> {
    let len = note.chars().count();
    if len > MAX_NOTE_LEN {
        return Err(Error::invalid(format!(
            "note must be at most {MAX_NOTE_LEN} characters, got {len}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(r: Result<impl std::fmt::Debug>) -> String {
        match r {
            Err(Error::InvalidInput(m)) => m,
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }

    #[test]
    fn service_names_accept_the_documented_alphabet_up_to_253() {
        assert!(validate_service("payments").is_ok());
        assert!(validate_service("a.B_c-9").is_ok());
        assert!(validate_service(&"x".repeat(253)).is_ok());
        assert_eq!(
            message(validate_service(&"x".repeat(254))),
            "service name must be at most 253 characters, got 254"
        );
        assert_eq!(
            message(validate_service("")),
            "service name must not be empty"
        );
        assert!(message(validate_service("pay/ments")).contains("'/'"));
        assert!(message(validate_service("pay ments")).contains("' '"));
        assert!(validate_service("paymënts").is_err());
    }

    #[test]
    fn instance_ids_are_printable_without_slash() {
        assert!(validate_instance_id("10.0.0.7:8080").is_ok());
        assert!(validate_instance_id("node a#1").is_ok());
        assert!(validate_instance_id("ünïcode").is_ok());
        assert!(validate_instance_id(&"é".repeat(253)).is_ok());
        assert!(validate_instance_id(&"é".repeat(254)).is_err());
        assert_eq!(
            message(validate_instance_id("")),
            "instance id must not be empty"
        );
        assert!(message(validate_instance_id("a/b")).contains("'/'"));
        assert!(message(validate_instance_id("a\nb")).contains("control"));
        assert!(validate_instance_id(".").is_err());
        assert!(validate_instance_id("..").is_err());
        assert!(validate_instance_id("...").is_ok());
    }

    #[test]
    fn addresses_reject_whitespace_and_empty() {
        assert!(validate_address("10.0.0.7").is_ok());
        assert!(validate_address("[::1]").is_ok());
        assert!(validate_address("db-1.example.internal").is_ok());
        assert!(validate_address("").is_err());
        assert!(validate_address("10.0.0.7 ").is_err());
        assert!(validate_address(&"a".repeat(254)).is_err());
    }

    #[test]
    fn ports_are_1_to_65535_and_0_only_when_allowed() {
        assert_eq!(validate_port(1, false), Ok(1));
        assert_eq!(validate_port(65535, false), Ok(65535));
        assert_eq!(
            message(validate_port(70000, false)),
            "port must be 1-65535, got 70000"
        );
        assert_eq!(
            message(validate_port(0, false)),
            "port must be 1-65535, got 0"
        );
        assert_eq!(
            message(validate_port(-1, false)),
            "port must be 1-65535, got -1"
        );
        assert_eq!(validate_port(0, true), Ok(0));
        assert_eq!(
            message(validate_port(65536, true)),
            "port must be 0-65535, got 65536"
        );
    }

    #[test]
    fn weights_are_0_to_10000() {
        assert_eq!(validate_weight(0), Ok(0));
        assert_eq!(validate_weight(10_000), Ok(10_000));
        assert_eq!(
            message(validate_weight(10_001)),
            "weight must be 0-10000, got 10001"
        );
        assert!(validate_weight(-1).is_err());
    }

    #[test]
    fn ttls_are_one_second_to_one_year() {
        assert_eq!(validate_ttl(1), Ok(1));
        assert_eq!(validate_ttl(MAX_TTL_SECS as i64), Ok(MAX_TTL_SECS));
        assert!(message(validate_ttl(0)).contains("got 0"));
        assert!(validate_ttl(-5).is_err());
        assert!(validate_ttl(MAX_TTL_SECS as i64 + 1).is_err());
    }

    #[test]
    fn tags_are_capped_in_number_and_length() {
        let ok: Vec<String> = (0..64).map(|i| format!("t{i}")).collect();
        assert!(validate_tags(&ok).is_ok());
        let too_many: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
        assert_eq!(
            message(validate_tags(&too_many)),
            "at most 64 tags are allowed, got 65"
        );
        assert!(validate_tags(&["x".repeat(253)]).is_ok());
        assert!(validate_tags(&["x".repeat(254)]).is_err());
        assert!(validate_tags(&[String::new()]).is_err());
    }

    #[test]
    fn metadata_is_capped_in_entries_keys_and_values() {
        let mut m: BTreeMap<String, String> =
            (0..64).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(validate_metadata(&m).is_ok());
        m.insert("one-more".into(), "v".into());
        assert!(message(validate_metadata(&m)).contains("got 65"));

        let key_ok = BTreeMap::from([("k".repeat(128), "x".repeat(1024))]);
        assert!(validate_metadata(&key_ok).is_ok());
        let key_long = BTreeMap::from([("k".repeat(129), String::new())]);
        assert!(message(validate_metadata(&key_long)).contains("got 129"));
        let value_long = BTreeMap::from([("k".into(), "x".repeat(1025))]);
        assert!(message(validate_metadata(&value_long)).contains("got 1025"));
        let key_empty = BTreeMap::from([(String::new(), "v".into())]);
        assert!(validate_metadata(&key_empty).is_err());
    }

    #[test]
    fn rates_are_0_to_1_and_finite() {
        assert!(validate_rate("success_rate", 0.0).is_ok());
        assert!(validate_rate("success_rate", 1.0).is_ok());
        assert_eq!(
            message(validate_rate("success_rate", 1.5)),
            "success_rate must be between 0 and 1, got 1.5"
        );
        assert!(validate_rate("success_rate", -0.1).is_err());
        assert!(validate_rate("success_rate", f64::NAN).is_err());
    }

    #[test]
    fn measures_are_finite_and_non_negative() {
        assert!(validate_non_negative("latency_ms", 0.0).is_ok());
        assert!(validate_non_negative("latency_ms", 1e9).is_ok());
        assert_eq!(
            message(validate_non_negative("latency_ms", -1.0)),
            "latency_ms must be a finite number >= 0, got -1"
        );
        assert!(validate_non_negative("load", f64::INFINITY).is_err());
        assert!(validate_non_negative("frequency", f64::NAN).is_err());
    }

    #[test]
    fn notes_are_capped_at_1024_characters() {
        assert!(validate_note(&"n".repeat(1024)).is_ok());
        assert_eq!(
            message(validate_note(&"n".repeat(1025))),
            "note must be at most 1024 characters, got 1025"
        );
    }

    #[test]
    fn long_values_are_shortened_in_messages() {
        let m = message(validate_service(&format!("{}/", "x".repeat(500))));
        assert!(m.len() < 200, "{m}");
    }
}
