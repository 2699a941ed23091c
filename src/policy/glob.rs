//! Glob patterns for secret names and ARNs: `*` matches any run of characters except `:`, `?`
//! one such character. `:` never matches a wildcard, so a pattern cannot slide across ARN
//! fields (Secrets Manager names cannot contain `:`).

/// Whether `text` matches `pattern` in full. Case-sensitive, like Secrets Manager names.
///
/// Greedy with backtracking to the last `*` only, without allocating: that is complete here
/// because no wildcard crosses `:`, so every `:` of the text is matched by a literal `:` after
/// the last star, and later alignments of the rest of the pattern were all tried already.
pub fn matches(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && (p[pi] == t[ti] || (p[pi] == b'?' && t[ti] != b':')) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            // Let the last star take one more character, unless that character is ':'.
            if t[st] == b':' {
                return false;
            }
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs() {
        assert!(matches("/prod/*", "/prod/db"));
        assert!(matches("/prod/*", "/prod/a/b/c"));
        assert!(!matches("/prod/*", "/production/db"));
        assert!(!matches("/prod/*", "/Prod/db"));
        assert!(!matches("/prod/*", "/prod"));
        assert!(matches(
            "arn:*:secretsmanager:*:*:secret:/prod/*",
            "arn:aws:secretsmanager:us-east-1:111122223333:secret:/prod/db-AbCdEf"
        ));
        assert!(!matches(
            "arn:*:secretsmanager:*:*:secret:/prod/*",
            "arn:aws:secretsmanager:us-east-1:111122223333:secret:/other/db-AbCdEf"
        ));
        // A star cannot cross ':' to line the pattern up somewhere else.
        assert!(!matches(
            "arn:*:secret:/prod/*",
            "arn:aws:secretsmanager:r:1:secret:/prod/x"
        ));
        assert!(matches("a?c", "abc"));
        assert!(!matches("a?c", "a:c"));
        assert!(matches("*", ""));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(matches("*:x", "ab:x"));
        assert!(!matches("*:x", "a:b:x"));
        assert!(matches("arn:*:s:*", "arn:aws:s:r"));
    }
}
