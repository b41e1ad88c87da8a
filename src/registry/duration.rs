//! The CLI's DURATION syntax (`--ttl 30s`).

use crate::{Error, Result};

/// Parses a DURATION, `30s`, `5m`, `1h` or a bare number of seconds, into seconds.
///
/// Only non-negative whole numbers with one optional unit are accepted; anything else (empty,
/// `1.5m`, `-5`, `5d`, `1h30m`) is `InvalidInput` with the accepted forms in the message.
pub fn parse_duration(text: &str) -> Result<u64> {
    let bad = || {
        Error::invalid(format!(
            "invalid duration {text:?}: expected a whole number of seconds or a number with s, m or h (30s, 5m, 1h)"
        ))
    };
    let (digits, multiplier) = match text.char_indices().last() {
        Some((i, 's')) => (&text[..i], 1),
        Some((i, 'm')) => (&text[..i], 60),
        Some((i, 'h')) => (&text[..i], 3600),
        _ => (text, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(multiplier)
        .ok_or_else(|| Error::invalid(format!("duration {text:?} is too long")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_seconds_minutes_hours_and_bare_numbers() {
        assert_eq!(parse_duration("30s"), Ok(30));
        assert_eq!(parse_duration("5m"), Ok(300));
        assert_eq!(parse_duration("1h"), Ok(3600));
        assert_eq!(parse_duration("45"), Ok(45));
        assert_eq!(parse_duration("0"), Ok(0));
        assert_eq!(parse_duration("007s"), Ok(7));
    }

    #[test]
    fn rejects_everything_else_with_the_accepted_forms() {
        for bad in [
            "", "s", "m", "-5", "+5", "1.5m", "5d", "1h30m", " 5", "5 ", "5S", "５",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidInput(m) if m.contains("30s, 5m, 1h")),
                "{bad:?}: {err:?}"
            );
        }
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        assert!(parse_duration("18446744073709551615").is_ok());
        assert!(parse_duration("18446744073709551616").is_err());
        assert_eq!(
            parse_duration("18446744073709551615h"),
            Err(Error::invalid(
                "duration \"18446744073709551615h\" is too long"
            ))
        );
    }
}
