//! A pod's secret declaration, parsed from its annotations, with what is derived from it alone:
//! the agent's spec as JSON and the `kura.dev/status` value. The pods of a workload carry the
//! same annotations, so [`Declarations`] parses and serializes each distinct set of `kura.dev/`
//! annotations once and shares the result (a measurable share of an admission's CPU otherwise;
//! `benches/admission.rs` guards it). The cache belongs to whoever owns it (`Admission`): there is
//! no process-global state here.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use kura_agent::annotations::{self, AnnotationError, PodSecrets};

use super::status_for;

/// What an opted-in pod declared, and the agent spec and status that follow from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    pub secrets: PodSecrets,
    /// The agent's spec (`KURA_SPEC`) as JSON, with the cluster's default refresh interval.
    pub spec_json: String,
    /// The `kura.dev/status` value for that spec.
    pub status: String,
}

impl Declared {
    pub fn new(secrets: PodSecrets, default_refresh_secs: u64) -> Declared {
        let spec_json = secrets.to_spec(default_refresh_secs).to_json();
        let status = status_for(&spec_json);
        Declared {
            secrets,
            spec_json,
            status,
        }
    }
}

/// Distinct declarations kept; past this many the cache starts over (a cluster's workloads
/// have far fewer, and a flood of distinct ones costs a parse each, as without the cache).
const MAX_ENTRIES: usize = 4096;
/// Bytes the cache may hold (its estimate of each entry, [`entry_bytes`]); past this it starts
/// over. Entries are bounded by bytes, not only by count: a caller chooses how large a
/// declaration is, and 4096 entries of 200 KB would be 800 MB.
pub const MAX_BYTES: usize = 16 * 1024 * 1024;
/// A declaration whose `kura.dev/` annotations are larger than this is parsed each time and
/// never kept (real ones are a few hundred bytes; the largest accepted value is
/// [`annotations::MAX_SECRETS_BYTES`]).
pub const MAX_ENTRY_BYTES: usize = 32 * 1024;

/// Parsed declarations, by a hash of their `kura.dev/` annotations and the default refresh
/// interval; the annotations themselves are kept to compare, so a hash collision is a miss,
/// never another pod's declaration.
#[derive(Debug, Default)]
struct Cache {
    entries: HashMap<u64, Vec<Entry>>,
    len: usize,
    /// Sum of [`entry_bytes`] over the entries.
    bytes: usize,
}

#[derive(Debug)]
struct Entry {
    default_refresh_secs: u64,
    annotations: Vec<(String, String)>,
    declared: Arc<Declared>,
}

fn ours(annotations: &BTreeMap<String, String>) -> impl Iterator<Item = (&String, &String)> {
    annotations
        .iter()
        .filter(|(k, _)| k.starts_with(annotations::PREFIX))
}

/// What an entry costs: its annotations twice (kept to compare, and parsed into [`PodSecrets`],
/// which holds the same strings), the spec JSON, the status, and a fixed overhead for the
/// allocations and the map slot.
fn entry_bytes(annotation_bytes: usize, declared: &Declared) -> usize {
    2 * annotation_bytes + declared.spec_json.len() + declared.status.len() + 512
}

/// Parsed declarations, shared between pods that carry the same `kura.dev/` annotations;
/// bounded by count ([`MAX_ENTRIES`]) and by bytes ([`MAX_BYTES`]): past either it starts over.
#[derive(Debug, Default)]
pub struct Declarations {
    cache: Mutex<Cache>,
}

impl Declarations {
    /// [`annotations::parse`] with the derived spec and status. Errors and pods that did not
    /// opt in are not cached.
    pub fn get(
        &self,
        annotations: &BTreeMap<String, String>,
        default_refresh_secs: u64,
    ) -> Result<Option<Arc<Declared>>, Vec<AnnotationError>> {
        let mut hasher = DefaultHasher::new();
        default_refresh_secs.hash(&mut hasher);
        for (k, v) in ours(annotations) {
            k.hash(&mut hasher);
            v.hash(&mut hasher);
        }
        let key = hasher.finish();
        let same = |e: &Entry| {
            e.default_refresh_secs == default_refresh_secs
                && e.annotations.len() == ours(annotations).count()
                && e.annotations
                    .iter()
                    .zip(ours(annotations))
                    .all(|((k, v), (k2, v2))| k == k2 && v == v2)
        };
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = cache
                .entries
                .get(&key)
                .and_then(|es| es.iter().find(|e| same(e)))
            {
                return Ok(Some(e.declared.clone()));
            }
        }
        let Some(secrets) = annotations::parse(annotations)? else {
            return Ok(None);
        };
        let declared = Arc::new(Declared::new(secrets, default_refresh_secs));
        let annotation_bytes: usize = ours(annotations).map(|(k, v)| k.len() + v.len()).sum();
        if annotation_bytes > MAX_ENTRY_BYTES {
            return Ok(Some(declared));
        }
        let size = entry_bytes(annotation_bytes, &declared);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len >= MAX_ENTRIES || cache.bytes + size > MAX_BYTES {
            *cache = Cache::default();
        }
        cache.len += 1;
        cache.bytes += size;
        cache.entries.entry(key).or_default().push(Entry {
            default_refresh_secs,
            annotations: ours(annotations)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            declared: declared.clone(),
        });
        Ok(Some(declared))
    }

    /// The bytes the cache holds, by its own estimate (at most [`MAX_BYTES`]).
    pub fn bytes(&self) -> usize {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_declaration_is_what_parsing_gives_and_is_shared_by_equal_annotations() {
        let a = annotations(&[
            ("kura.dev/inject", "true"),
            ("kura.dev/secret.db", "/declared-test/db#password"),
            ("app", "x"),
        ]);
        let cache = Declarations::default();
        let declared = |a: &BTreeMap<String, String>, refresh| cache.get(a, refresh);
        let first = declared(&a, 120).expect("parses").expect("opted in");
        let parsed = annotations::parse(&a).expect("parses").expect("opted in");
        assert_eq!(*first, Declared::new(parsed, 120));
        assert!(first.status.starts_with("injected sha256:"));

        // Other annotations do not matter; kura's and the refresh default do.
        let mut b = a.clone();
        b.insert("team".into(), "y".into());
        let again = declared(&b, 120).expect("parses").expect("opted in");
        assert!(Arc::ptr_eq(&first, &again));
        let other = declared(&a, 300).expect("parses").expect("opted in");
        assert!(!Arc::ptr_eq(&first, &other));
        assert_ne!(other.spec_json, first.spec_json);
        b.insert("kura.dev/file-mode".into(), "0440".into());
        let changed = declared(&b, 120).expect("parses").expect("opted in");
        assert_ne!(changed.secrets, first.secrets);

        // Not opted in, and malformed, are answered as parsing answers them.
        assert_eq!(declared(&annotations(&[("app", "x")]), 120), Ok(None));
        let bad = annotations(&[("kura.dev/inject", "yes")]);
        assert_eq!(
            declared(&bad, 120).expect_err("malformed"),
            annotations::parse(&bad).expect_err("malformed")
        );
    }

    #[test]
    fn the_cache_is_bounded_and_each_admission_owns_its_own() {
        let cache = Declarations::default();
        let len = |c: &Declarations| c.cache.lock().expect("lock").len;
        for i in 0..=MAX_ENTRIES {
            let a = annotations(&[
                ("kura.dev/inject", "true"),
                ("kura.dev/secret.db", &format!("/bounded-test/db-{i}")),
            ]);
            cache.get(&a, 120).expect("parses").expect("opted in");
        }
        assert_eq!(len(&cache), 1, "past the bound the cache starts over");
        assert_eq!(len(&Declarations::default()), 0, "no state is shared");
    }

    /// A declaration of about `size` bytes, distinct for each `i`: a `kura.dev/secrets` list
    /// as long as it may be, then short forms.
    fn large(i: usize, size: usize) -> BTreeMap<String, String> {
        let mut a = annotations(&[("kura.dev/inject", "true")]);
        let (mut list, mut total) = (String::new(), 0);
        for n in 0.. {
            if total >= size {
                break;
            }
            let entry = format!("- file: f{i}-{n}\n  secret: /bounded-test/db-{i}-{n}\n");
            if list.len() + entry.len() < annotations::MAX_SECRETS_BYTES {
                total += entry.len();
                list.push_str(&entry);
            } else {
                let (k, v) = (
                    format!("kura.dev/secret.g{i}-{n}"),
                    format!("/bounded-test/g-{i}-{n}"),
                );
                total += k.len() + v.len();
                a.insert(k, v);
            }
        }
        a.insert("kura.dev/secrets".into(), list);
        a
    }

    #[test]
    fn the_cache_is_bounded_by_bytes_under_a_stream_of_distinct_large_declarations() {
        let cache = Declarations::default();
        let mut most = 0;
        // 300 distinct declarations of ~30 KB (about 90 KB each once parsed and serialized):
        // more than the bound.
        for i in 0..300 {
            cache
                .get(&large(i, 30_000), 120)
                .expect("parses")
                .expect("opted in");
            most = most.max(cache.bytes());
            assert!(cache.bytes() <= MAX_BYTES, "{} bytes held", cache.bytes());
        }
        assert!(
            most > MAX_BYTES / 2,
            "the accounting counts what is kept: {most}"
        );

        // A declaration over the per-entry bound parses but is never kept.
        let before = cache.bytes();
        let huge = large(9999, MAX_ENTRY_BYTES + 100);
        let a = cache.get(&huge, 120).expect("parses").expect("opted in");
        let b = cache.get(&huge, 120).expect("parses").expect("opted in");
        assert_eq!(a, b);
        assert!(!Arc::ptr_eq(&a, &b), "parsed each time, not cached");
        assert_eq!(cache.bytes(), before);
    }
}
