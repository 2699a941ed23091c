//! `DescribeSecret` results, cached: a TTL for answers, a shorter one for "not found", nothing
//! kept for store failures, bounded in entries (the policy's `cache.maxEntries`) and in bytes
//! ([`MAX_BYTES`]), and one call in flight per secret however many admissions ask at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kura_agent::store::{SecretMeta, Store, StoreError};
use tokio::sync::OnceCell;

use super::file::CacheSettings;

/// Bytes the cache may hold, by [`slot_bytes`]' estimate. Secret ids come from pod
/// annotations, so their length is the caller's choice: the bound is in bytes, not only entries.
pub const MAX_BYTES: usize = 8 * 1024 * 1024;

/// What a slot costs: its id as the key, and the ARN and name of the answer (which repeat it),
/// plus a fixed overhead for the answer's other fields and the map slot. Tags and KMS key ids
/// come from the store, which its administrators write, not from the caller.
fn slot_bytes(id: &str) -> usize {
    3 * id.len() + 512
}

#[derive(Debug, Default)]
struct Slots {
    map: HashMap<String, Arc<Slot>>,
    /// Sum of [`slot_bytes`] over `map`.
    bytes: usize,
}

impl Slots {
    fn remove(&mut self, id: &str) {
        if self.map.remove(id).is_some() {
            self.bytes -= slot_bytes(id);
        }
    }
}

#[derive(Debug, Default)]
struct Slot {
    cell: OnceCell<(Result<SecretMeta, StoreError>, Instant)>,
}

#[derive(Debug, Clone, Copy)]
struct Ttls {
    ttl: Duration,
    negative: Duration,
    max: usize,
}

/// The cache in front of a store.
#[derive(Debug)]
pub struct MetaCache {
    store: Store,
    slots: Mutex<Slots>,
    ttls: Mutex<Ttls>,
}

impl MetaCache {
    pub fn new(store: Store, s: &CacheSettings) -> Self {
        MetaCache {
            store,
            slots: Mutex::new(Slots::default()),
            ttls: Mutex::new(Ttls {
                ttl: s.ttl,
                negative: s.negative_ttl,
                max: s.max_entries.max(1),
            }),
        }
    }

    pub fn set_ttls(&self, s: &CacheSettings) {
        *self.ttls.lock().unwrap_or_else(|p| p.into_inner()) = Ttls {
            ttl: s.ttl,
            negative: s.negative_ttl,
            max: s.max_entries.max(1),
        };
    }

    fn ttls(&self) -> Ttls {
        *self.ttls.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fresh(slot: &Slot, ttls: Ttls, now: Instant) -> bool {
        match slot.cell.get() {
            // In flight: join it.
            None => true,
            Some((Ok(_), at)) => now.duration_since(*at) < ttls.ttl,
            Some((Err(StoreError::NotFound { .. }), at)) => now.duration_since(*at) < ttls.negative,
            // Store failures are not remembered: the next admission asks again.
            Some((Err(_), _)) => false,
        }
    }

    /// A fresh cached answer, without waiting: the warm path of every admission.
    pub fn cached(&self, id: &str) -> Option<Result<SecretMeta, StoreError>> {
        let ttls = self.ttls();
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = slots.map.get(id)?;
        let (result, _) = slot.cell.get()?;
        Self::fresh(slot, ttls, Instant::now()).then(|| result.clone())
    }

    /// Metadata for `id`, from the cache or the store.
    pub async fn describe(&self, id: &str) -> Result<SecretMeta, StoreError> {
        let ttls = self.ttls();
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            match slots.map.get(id) {
                Some(s) if Self::fresh(s, ttls, now) => s.clone(),
                _ => {
                    slots.remove(id);
                    let size = slot_bytes(id);
                    if slots.map.len() >= ttls.max || slots.bytes + size > MAX_BYTES {
                        let stale: Vec<String> = slots
                            .map
                            .iter()
                            .filter(|(_, s)| !Self::fresh(s, ttls, now))
                            .map(|(k, _)| k.clone())
                            .collect();
                        stale.iter().for_each(|k| slots.remove(k));
                        while !slots.map.is_empty()
                            && (slots.map.len() >= ttls.max || slots.bytes + size > MAX_BYTES)
                        {
                            let Some(k) = slots.map.keys().next().cloned() else {
                                break;
                            };
                            slots.remove(&k);
                        }
                    }
                    let s = Arc::new(Slot::default());
                    slots.map.insert(id.to_string(), s.clone());
                    slots.bytes += size;
                    s
                }
            }
        };
        let (result, _) = slot
            .cell
            .get_or_init(|| async { (self.store.describe(id).await, Instant::now()) })
            .await;
        result.clone()
    }

    pub fn len(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len()
    }

    /// The bytes the cache holds, by its own estimate (at most [`MAX_BYTES`]).
    pub fn bytes(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use kura_agent::store::FileStore;

    use super::*;

    #[tokio::test]
    async fn the_cache_is_bounded_by_bytes_under_a_stream_of_distinct_long_ids() {
        let store = Store::File(
            FileStore::open(Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/examples/store.yaml"
            )))
            .expect("the example store opens"),
        );
        let cache = MetaCache::new(store, &CacheSettings::default());
        // Answers for missing secrets are kept (the negative TTL): 4,000 distinct 4 KB ids,
        // 16 MB of ids, fewer than the entry bound.
        let mut most = 0;
        for i in 0..4000 {
            let id = format!("/cache-test/{i}-{}", "x".repeat(4096));
            let answer = cache.describe(&id).await;
            assert!(matches!(answer, Err(StoreError::NotFound { .. })));
            most = most.max(cache.bytes());
            assert!(cache.bytes() <= MAX_BYTES, "{} bytes held", cache.bytes());
        }
        assert!(most > MAX_BYTES - slot_bytes(&"x".repeat(4200)), "{most}");
        assert!(cache.len() < 4000);
        // What is kept is still answered from the cache.
        let id = format!("/cache-test/3999-{}", "x".repeat(4096));
        assert!(cache.cached(&id).is_some());
    }
}
