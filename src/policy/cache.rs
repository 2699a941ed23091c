//! `DescribeSecret` results, cached: a TTL for answers, a shorter one for "not found", nothing
//! kept for store failures, bounded in size, and one call in flight per secret however many
//! admissions ask at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kura_agent::store::{SecretMeta, Store, StoreError};
use tokio::sync::OnceCell;

use super::file::CacheSettings;

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
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    ttls: Mutex<Ttls>,
}

impl MetaCache {
    pub fn new(store: Store, s: &CacheSettings) -> Self {
        MetaCache {
            store,
            slots: Mutex::new(HashMap::new()),
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
        let slot = slots.get(id)?;
        let (result, _) = slot.cell.get()?;
        Self::fresh(slot, ttls, Instant::now()).then(|| result.clone())
    }

    /// Metadata for `id`, from the cache or the store.
    pub async fn describe(&self, id: &str) -> Result<SecretMeta, StoreError> {
        let ttls = self.ttls();
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            match slots.get(id) {
                Some(s) if Self::fresh(s, ttls, now) => s.clone(),
                _ => {
                    if slots.len() >= ttls.max {
                        slots.retain(|_, s| Self::fresh(s, ttls, now));
                        while slots.len() >= ttls.max {
                            let Some(k) = slots.keys().next().cloned() else {
                                break;
                            };
                            slots.remove(&k);
                        }
                    }
                    let s = Arc::new(Slot::default());
                    slots.insert(id.to_string(), s.clone());
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
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
