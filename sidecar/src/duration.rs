//! The one duration syntax of kura: flags of both binaries, the policy file and the
//! `kura.dev/refresh-interval` annotation all read durations here.
//!
//! A duration is a plain number of seconds (`90`) or one or more `<number><unit>` terms with the
//! units `h`, `m`, `s` and `ms`, largest first or not (`500ms`, `2m`, `1h30m`, `1s500ms`).

use std::time::Duration;

/// A text that is not a duration. The text is not repeated beyond its first 32 characters: it
/// may come from a pod annotation of any size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{shown:?} is not a duration such as 500ms, 90s, 2m or 1h30m")]
pub struct DurationError {
    shown: String,
}

impl DurationError {
    fn new(s: &str) -> Self {
        let mut shown: String = s.chars().take(32).collect();
        if shown.len() < s.len() {
            shown.push('…');
        }
        DurationError { shown }
    }
}

/// Parses a duration; see the module docs for the syntax.
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let bad = || DurationError::new(s);
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    if s.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else {
            match rest.bytes().next() {
                Some(b'h') => (Duration::from_secs(3600), 1),
                Some(b'm') => (Duration::from_secs(60), 1),
                Some(b's') => (Duration::from_secs(1), 1),
                _ => return Err(bad()),
            }
        };
        rest = &rest[len..];
        let n = u32::try_from(n).map_err(|_| bad())?;
        total = unit
            .checked_mul(n)
            .and_then(|d| total.checked_add(d))
            .ok_or_else(bad)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_seconds_and_unit_terms() {
        let d = |s| parse(s).map_err(|e| e.to_string());
        assert_eq!(d("90"), Ok(Duration::from_secs(90)));
        assert_eq!(d("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(d("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(d("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(d("1s500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(d("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn anything_else_is_refused_without_echoing_a_long_value() {
        for bad in [
            "",
            "m",
            "1d",
            "5m3",
            "5x",
            "1.5s",
            "-1s",
            "5 m",
            "s5",
            "1h30",
            "ms",
            "99999999999999999999s",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let long = "9".repeat(10_000) + "x";
        let msg = parse(&long).expect_err("not a duration").to_string();
        assert!(msg.len() < 120, "{msg}");
    }
}
