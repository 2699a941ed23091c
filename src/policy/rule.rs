//! The rule catalogue: one line per rule, with its stable id, the one-line summary that
//! `kura lint` prints and the README's rules table shows, and whether it needs the store's
//! metadata. Each rule's check lives beside the others in [`super`].

/// Declares [`Rule`] and its table from one line per rule, so that adding a rule is one line
/// here, one check and one test.
macro_rules! rules {
    ($($variant:ident => $id:literal, store: $store:literal, $summary:literal;)+) => {
        /// Rule ids, stable across releases.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Rule {
            $($variant,)+
        }

        impl Rule {
            /// Every rule, in id order.
            pub const ALL: &[Rule] = &[$(Rule::$variant,)+];

            /// The id that appears in denials, warnings, audit annotations, logs and metrics.
            pub fn id(self) -> &'static str {
                match self {
                    $(Rule::$variant => $id,)+
                }
            }

            /// One line on what the rule finds (`kura lint` output, the README's rules table).
            pub fn summary(self) -> &'static str {
                match self {
                    $(Rule::$variant => $summary,)+
                }
            }

            /// Whether checking the rule needs the secret store's metadata (`DescribeSecret`):
            /// without a store (`kura lint` offline) it is reported as not verified. KURA002 is
            /// checked on the names a pod writes without one; its resolved half needs it.
            pub fn needs_store(self) -> bool {
                match self {
                    $(Rule::$variant => $store,)+
                }
            }

            /// What `kura lint` reports as not verified when it runs without a store: the id of
            /// a rule that needs one, with the part left unchecked when the rule is partly
            /// checked offline.
            pub fn not_verified_offline(self) -> Option<String> {
                self.needs_store().then(|| match self {
                    Rule::Kura002 => format!("{} (resolved identity and namespace tag)", self.id()),
                    _ => self.id().to_string(),
                })
            }
        }
    };
}

rules! {
    Kura001 => "KURA001", store: false,
        "invalid `kura.dev/` annotation, or a pod kura cannot inject correctly";
    Kura002 => "KURA002", store: true,
        "secret outside the namespace's scope: the name/ARN the pod wrote and the name, ARN and (optional) namespace tag Secrets Manager returns";
    Kura003 => "KURA003", store: true,
        "secret not encrypted with an allowed customer-managed KMS key (`DescribeSecret` without `KmsKeyId` is the AWS managed key)";
    Kura004 => "KURA004", store: true,
        "secret missing or scheduled for deletion";
    Kura005 => "KURA005", store: false,
        "plaintext credential: a literal env value under a secret-like name, a literal after a secret-like flag or shell assignment in `command`/`args`, or a value shaped like an AWS access key, PEM private key, bearer token, JWT, GitHub/Slack/Stripe token, URL with a password or storage account key";
    Kura006 => "KURA006", store: false,
        "secret-like env var sourced from a ConfigMap";
    Kura007 => "KURA007", store: false,
        "native Kubernetes Secret reference (env, envFrom, volume, projected; not the service-account token, not imagePullSecrets)";
    Kura008 => "KURA008", store: false,
        "opted-in pod whose final spec lacks the agent (`/validate`)";
    Kura009 => "KURA009", store: false,
        "the store could not be asked within `storeTimeout`";
    Kura010 => "KURA010", store: false,
        "Kubernetes Secret manifest with values in `data`/`stringData` (`kura lint`; not empty placeholders, not service-account tokens)";
    Kura011 => "KURA011", store: false,
        "secret source usable outside its namespace: a ClusterSecretStore without `conditions`, a cluster-wide or namespace-wide SealedSecret";
}

#[cfg(test)]
mod tests {
    use super::Rule;

    #[test]
    fn ids_are_distinct_and_in_order() {
        let ids: Vec<&str> = Rule::ALL.iter().map(|r| r.id()).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(ids, sorted);
        assert!(ids.iter().all(|id| id.starts_with("KURA") && id.len() == 7));
    }

    /// The README's rules table (`| id | rule | default |`) lists exactly the rules, each with
    /// its summary.
    #[test]
    fn the_readme_rules_table_is_the_catalogue() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        let readme = std::fs::read_to_string(path).expect("README.md is readable");
        let mut lines = readme
            .lines()
            .skip_while(|l| *l != "| id | rule | default |");
        assert!(lines.next().is_some(), "README.md has no rules table");
        let rows: Vec<(String, String)> = lines
            .skip(1)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
                (cells[0].to_string(), cells[1].to_string())
            })
            .collect();
        let expected: Vec<(String, String)> = Rule::ALL
            .iter()
            .map(|r| (r.id().to_string(), r.summary().to_string()))
            .collect();
        assert_eq!(rows, expected);
    }
}
