//! Route cache: fingerprint → route, so that a repeated statement shape skips the parser.
//!
//! Data flow: [`super::Classifier::classify`] looks a statement's fingerprint up here first and
//! stores the parser's verdict after a miss (only verdicts without session effects and without
//! unknown functions). Each entry remembers the function-table generation it was computed
//! under; a refreshed table makes older entries miss.
//!
//! Shared by every client task: the map is split into shards, each a `Mutex<LruCache>`, and a
//! lookup holds one shard lock for a hash-map probe only.

use std::num::NonZeroUsize;
use std::sync::{Mutex, MutexGuard};

use lru::LruCache;

use super::Route;

/// Number of shards; a power of two so the shard is picked by masking the fingerprint.
const SHARDS: usize = 16;

/// One cached verdict.
#[derive(Clone, Copy, Debug)]
struct Entry {
    route: Route,
    generation: u64,
}

/// Bounded, sharded LRU map from fingerprint to route.
#[derive(Debug)]
pub struct RouteCache {
    shards: Vec<Mutex<LruCache<u128, Entry>>>,
}

impl RouteCache {
    /// A cache holding about `capacity` entries in total (at least one per shard).
    pub fn new(capacity: usize) -> RouteCache {
        let per_shard = NonZeroUsize::new(capacity.div_ceil(SHARDS)).unwrap_or(NonZeroUsize::MIN);
        RouteCache { shards: (0..SHARDS).map(|_| Mutex::new(LruCache::new(per_shard))).collect() }
    }

    fn shard(&self, key: u128) -> Option<MutexGuard<'_, LruCache<u128, Entry>>> {
        // The low bits are SipHash output, so they spread evenly over the shards.
        let index = (key as usize) & (SHARDS - 1);
        let shard = self.shards.get(index)?;
        // A poisoned shard only means another thread panicked mid-probe; the map is still sound.
        Some(shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// The cached route for `key` if it was computed under `generation`.
    pub fn get(&self, key: u128, generation: u64) -> Option<Route> {
        let mut shard = self.shard(key)?;
        match shard.get(&key) {
            Some(entry) if entry.generation == generation => Some(entry.route),
            Some(_) => {
                shard.pop(&key);
                None
            }
            None => None,
        }
    }

    /// Remembers `route` for `key`, evicting the least recently used entry of its shard.
    pub fn put(&self, key: u128, route: Route, generation: u64) {
        if let Some(mut shard) = self.shard(key) {
            shard.put(key, Entry { route, generation });
        }
    }

    /// Number of entries (for tests and metrics).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        (0..SHARDS).filter_map(|i| self.shards.get(i).map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_evicts_and_respects_generation() {
        let cache = RouteCache::new(16);
        cache.put(1, Route::Read, 0);
        cache.put(2, Route::Write, 0);
        assert_eq!(cache.get(1, 0), Some(Route::Read));
        assert_eq!(cache.get(2, 0), Some(Route::Write));
        assert_eq!(cache.get(1, 1), None);
        assert_eq!(cache.get(1, 0), None, "stale entry is dropped");
        // One entry per shard: a second key in shard 3 evicts the first.
        cache.put(3, Route::Read, 0);
        cache.put(3 + SHARDS as u128, Route::Read, 0);
        assert_eq!(cache.get(3, 0), None);
        assert_eq!(cache.get(3 + SHARDS as u128, 0), Some(Route::Read));
        assert!(cache.len() <= 16);
    }
}
