//! Parse errors without the values they complain about.
//!
//! serde's "invalid type: integer `12345`, expected a string" quotes the offending scalar, which
//! may be a secret (a local store value) or a literal credential in a pod spec. Field names and
//! positions stay; quoted scalars of type and value errors go.

/// At most `max` characters of `s` (at least 1), the last an ellipsis when it was cut: how a
/// message that quotes the caller's input stays bounded.
pub fn clip(s: &str, max: usize) -> String {
    let max = max.max(1);
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some(_) => {
            let mut out: String = s.chars().take(max - 1).collect();
            out.push('…');
            out
        }
    }
}

/// `msg` with every quoted scalar of an invalid type/value/length error replaced.
pub fn scalars(msg: &str) -> String {
    if !(msg.contains("invalid type")
        || msg.contains("invalid value")
        || msg.contains("invalid length"))
    {
        return msg.to_string();
    }
    let mut out = String::with_capacity(msg.len());
    let mut quote: Option<char> = None;
    for c in msg.chars() {
        match quote {
            Some(q) if c == q => {
                out.push_str("[REDACTED]");
                out.push(c);
                quote = None;
            }
            Some(_) => {}
            None if c == '`' || c == '"' => {
                out.push(c);
                quote = Some(c);
            }
            None => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn clip_bounds_characters_not_bytes() {
        assert_eq!(super::clip("short", 10), "short");
        assert_eq!(super::clip("abcdef", 4), "abc…");
        let long = "é".repeat(5000);
        let c = super::clip(&long, 100);
        assert_eq!(c.chars().count(), 100);
        assert!(c.ends_with('…'));
    }

    #[test]
    fn quoted_scalars_go_field_names_stay() {
        let e = serde_json::from_str::<Vec<String>>("[12345]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("12345"), "serde does quote it: {e}");
        let r = super::scalars(&e);
        assert!(!r.contains("12345") && r.contains("invalid type"), "{r}");
        assert_eq!(
            super::scalars("unknown field `colour`"),
            "unknown field `colour`"
        );
    }
}
