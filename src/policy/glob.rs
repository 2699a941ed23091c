//! Glob patterns for secret names and ARNs: `*` matches any run of characters except `:`, `?`
//! one such character. `:` never matches a wildcard, so a pattern cannot slide across ARN
//! fields (Secrets Manager names cannot contain `:`).

/// Whether `text` matches `pattern` in full. Case-sensitive, like Secrets Manager names.
pub fn matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // reach[j]: the first i pattern characters can match the first j text characters.
    let mut reach = vec![false; t.len() + 1];
    reach[0] = true;
    for &pc in &p {
        let mut next = vec![false; t.len() + 1];
        for j in 0..=t.len() {
            if pc == '*' {
                // Stay, or extend the previous reach by one non-':' character.
                next[j] = reach[j] || (j > 0 && next[j - 1] && t[j - 1] != ':');
            } else if j > 0 && reach[j - 1] {
                next[j] = if pc == '?' {
                    t[j - 1] != ':'
                } else {
                    t[j - 1] == pc
                };
            }
        }
        reach = next;
    }
    reach[t.len()]
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
    }
}
