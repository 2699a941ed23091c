//! What the version service learns from slow sources (AWS, the API server), kept for a TTL:
//! one lookup in flight per key however many agents ask at once, keys asked together looked
//! up together (one `DescribeParameters` for fifty names), failures never kept, and the whole
//! bounded in entries and in bytes (keys and answers are partly the caller's choice).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};

/// A lookup whose task ended without an answer (it panicked or the runtime is stopping).
#[derive(Debug, Clone, Copy)]
pub struct Lost;

/// What one lookup found: an answer per key it found; a key it was asked and did not find
/// has no answer (and that, too, is kept for the TTL).
type Found<V> = Arc<BTreeMap<String, V>>;
/// A lookup's answer, awaited by every asker of its keys; the lookup itself runs as a task.
type Answer<V, E> = Shared<BoxFuture<'static, Result<Found<V>, E>>>;

struct Flight<V, E> {
    born: Instant,
    key_bytes: usize,
    /// The answer's bytes, charged once it has arrived (0 before).
    value_bytes: AtomicUsize,
    answer: Answer<V, E>,
}

impl<V, E> Flight<V, E> {
    /// In flight (join it), or answered within the TTL; a failure is never reused.
    fn usable(&self, ttl: Duration, now: Instant) -> bool {
        match self.answer.peek() {
            None => true,
            Some(Ok(_)) => now.duration_since(self.born) < ttl,
            Some(Err(_)) => false,
        }
    }

    fn bytes(&self) -> usize {
        self.key_bytes + self.value_bytes.load(Ordering::Relaxed)
    }
}

struct Table<V, E> {
    map: HashMap<String, Arc<Flight<V, E>>>,
    bytes: usize,
}

impl<V, E> Table<V, E> {
    fn remove(&mut self, key: &str) {
        if let Some(f) = self.map.remove(key) {
            self.bytes -= f.bytes();
        }
    }

    /// Makes room for `more` bytes and one entry: what has expired first, then the oldest.
    fn make_room(&mut self, more: usize, bounds: Bounds, ttl: Duration, now: Instant) {
        let over = |t: &Self| t.map.len() >= bounds.entries || t.bytes + more > bounds.bytes;
        if !over(self) {
            return;
        }
        let stale: Vec<String> = self
            .map
            .iter()
            .filter(|(_, f)| !f.usable(ttl, now))
            .map(|(k, _)| k.clone())
            .collect();
        stale.iter().for_each(|k| self.remove(k));
        while !self.map.is_empty() && over(self) {
            let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, f)| f.born)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.remove(&oldest);
        }
    }
}

/// How much a [`Flights`] may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub entries: usize,
    pub bytes: usize,
}

/// Answers by key, each kept for `ttl` from when its lookup started.
pub struct Flights<V, E> {
    table: Mutex<Table<V, E>>,
    ttl: Duration,
    bounds: Bounds,
}

impl<V, E> std::fmt::Debug for Flights<V, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("Flights")
            .field("entries", &t.map.len())
            .field("bytes", &t.bytes)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// What an entry's key costs beside its answer: the map slot and the bookkeeping.
const ENTRY_OVERHEAD: usize = 160;

impl<V, E> Flights<V, E>
where
    V: Clone + Send + Sync + 'static,
    E: Clone + From<Lost> + Send + Sync + 'static,
{
    pub fn new(ttl: Duration, bounds: Bounds) -> Self {
        Flights {
            table: Mutex::new(Table {
                map: HashMap::new(),
                bytes: 0,
            }),
            ttl,
            bounds,
        }
    }

    /// The answer for each of `keys` (`None`: looked up and not found), from the table where
    /// fresh or in flight; the rest looked up together by one `lookup`, which runs as a task
    /// of its own so that it finishes (and its answer is kept) even if every asker gives up.
    /// `size` says what an answer costs in bytes. A failed lookup fails each asker that
    /// waited on it and is not kept.
    pub async fn get<F, Fut>(
        &self,
        keys: &[String],
        size: impl Fn(&V) -> usize,
        lookup: F,
    ) -> Result<BTreeMap<String, Option<V>>, E>
    where
        F: FnOnce(Vec<String>) -> Fut,
        Fut: Future<Output = Result<BTreeMap<String, V>, E>> + Send + 'static,
    {
        let mut waits: Vec<(String, Arc<Flight<V, E>>)> = Vec::with_capacity(keys.len());
        let mut missing: Vec<String> = Vec::new();
        // One critical section, so that two askers of a new key never both look it up.
        {
            let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            for key in keys {
                if waits.iter().any(|(k, _)| k == key) || missing.contains(key) {
                    continue;
                }
                match t.map.get(key) {
                    Some(f) if f.usable(self.ttl, now) => waits.push((key.clone(), f.clone())),
                    _ => missing.push(key.clone()),
                }
            }
            if !missing.is_empty() {
                let task = tokio::spawn(lookup(missing.clone()));
                let answer: Answer<V, E> = async move {
                    match task.await {
                        Ok(r) => r.map(Arc::new),
                        Err(_) => Err(E::from(Lost)),
                    }
                }
                .boxed()
                .shared();
                for key in missing {
                    t.remove(&key);
                    let key_bytes = 2 * key.len() + ENTRY_OVERHEAD;
                    t.make_room(key_bytes, self.bounds, self.ttl, now);
                    let f = Arc::new(Flight {
                        born: now,
                        key_bytes,
                        value_bytes: AtomicUsize::new(0),
                        answer: answer.clone(),
                    });
                    t.map.insert(key.clone(), f.clone());
                    t.bytes += key_bytes;
                    waits.push((key, f));
                }
            }
        }
        let mut out = BTreeMap::new();
        for (key, flight) in waits {
            let found = flight.answer.clone().await?;
            let value = found.get(&key).cloned();
            if let Some(v) = &value {
                self.charge(&key, &flight, size(v));
            }
            out.insert(key, value);
        }
        Ok(out)
    }

    /// Keeps `found` as fresh answers (born now) for its keys, replacing what the table held
    /// for them: how a lookup made ahead of time (the version service's refresher) lands.
    pub fn put(&self, found: BTreeMap<String, V>, size: impl Fn(&V) -> usize) {
        let sizes: Vec<(String, usize)> = found.iter().map(|(k, v)| (k.clone(), size(v))).collect();
        let answer: Answer<V, E> = futures_util::future::ready(Ok(Arc::new(found)))
            .boxed()
            .shared();
        let now = Instant::now();
        for (key, bytes) in sizes {
            let key_bytes = 2 * key.len() + ENTRY_OVERHEAD;
            let flight = Arc::new(Flight {
                born: now,
                key_bytes,
                value_bytes: AtomicUsize::new(0),
                answer: answer.clone(),
            });
            {
                let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
                t.remove(&key);
                t.make_room(key_bytes, self.bounds, self.ttl, now);
                t.map.insert(key.clone(), flight.clone());
                t.bytes += key_bytes;
            }
            self.charge(&key, &flight, bytes);
        }
    }

    /// Counts an arrived answer's bytes once, if its entry is still in the table, and makes
    /// room for it.
    fn charge(&self, key: &str, flight: &Arc<Flight<V, E>>, bytes: usize) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let current = t.map.get(key).is_some_and(|f| Arc::ptr_eq(f, flight));
        if !current || flight.value_bytes.load(Ordering::Relaxed) != 0 {
            return;
        }
        // Out of the table while room is made, so it is not what gets dropped for itself.
        t.map.remove(key);
        t.bytes -= flight.key_bytes;
        let total = flight.key_bytes + bytes.max(1);
        if total > self.bounds.bytes {
            return;
        }
        t.make_room(total, self.bounds, self.ttl, Instant::now());
        flight.value_bytes.store(bytes.max(1), Ordering::Relaxed);
        t.map.insert(key.to_string(), flight.clone());
        t.bytes += total;
    }

    pub fn len(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len()
    }

    /// The bytes held, by the table's own estimate (at most `bounds.bytes`).
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Down;
    impl From<Lost> for Down {
        fn from(_: Lost) -> Self {
            Down
        }
    }

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn keys_asked_together_are_looked_up_once_and_kept_with_their_absence() {
        let f: Flights<u32, Down> = Flights::new(
            Duration::from_secs(60),
            Bounds {
                entries: 100,
                bytes: 1 << 20,
            },
        );
        let calls = Arc::new(AtomicU32::new(0));
        for _ in 0..3 {
            let c = calls.clone();
            let got = f
                .get(
                    &keys(&["a", "b", "a"]),
                    |_| 8,
                    move |asked| async move {
                        c.fetch_add(1, Ordering::Relaxed);
                        assert_eq!(asked, keys(&["a", "b"]));
                        Ok(BTreeMap::from([("a".to_string(), 1)]))
                    },
                )
                .await
                .expect("answered");
            assert_eq!(got.get("a"), Some(&Some(1)));
            assert_eq!(got.get("b"), Some(&None));
        }
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn failures_are_not_kept_and_answers_expire() {
        let f: Flights<u32, Down> = Flights::new(
            Duration::ZERO,
            Bounds {
                entries: 100,
                bytes: 1 << 20,
            },
        );
        let e = f
            .get(&keys(&["a"]), |_| 8, |_| async { Err(Down) })
            .await
            .expect_err("failed");
        assert_eq!(e, Down);
        // A TTL of zero: every ask looks up again.
        for n in 0..2 {
            let got = f
                .get(
                    &keys(&["a"]),
                    |_| 8,
                    move |_| async move { Ok(BTreeMap::from([("a".to_string(), n)])) },
                )
                .await
                .expect("answered");
            assert_eq!(got["a"], Some(n));
        }
    }

    #[tokio::test]
    async fn the_table_is_bounded_by_entries_and_bytes() {
        let f: Flights<String, Down> = Flights::new(
            Duration::from_secs(60),
            Bounds {
                entries: 50,
                bytes: 64 * 1024,
            },
        );
        for i in 0..500 {
            let key = format!("{i}-{}", "k".repeat(i % 300));
            f.get(
                std::slice::from_ref(&key),
                |v: &String| v.len(),
                move |asked| async move {
                    Ok(asked.into_iter().map(|k| (k, "v".repeat(900))).collect())
                },
            )
            .await
            .expect("answered");
            assert!(f.len() <= 50, "{} entries", f.len());
            assert!(f.bytes() <= 64 * 1024, "{} bytes", f.bytes());
        }
        // An answer larger than the whole bound is returned, not kept.
        let got = f
            .get(
                &keys(&["huge"]),
                |v: &String| v.len(),
                |asked| async move {
                    Ok(asked
                        .into_iter()
                        .map(|k| (k, "v".repeat(100_000)))
                        .collect())
                },
            )
            .await
            .expect("answered");
        assert_eq!(got["huge"].as_ref().map(String::len), Some(100_000));
        assert!(f.bytes() <= 64 * 1024);
    }
}
