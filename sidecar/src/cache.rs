//! The caches a request reads: bounded, concurrent, and cheap to read.
//!
//! Every request reads several of them (its token's identity, then the snapshot's: its
//! typed context, its request shape, its entity set, its decision), so a read must cost
//! next to nothing. These are quick_cache's sharded tables: a read takes its shard's
//! read lock, finds the entry and marks it used. moka, which they replace here, also records every read for its
//! admission policy (a clock read and a queued event, settled later by whichever caller
//! runs its upkeep); on the data plane's path for a new question its three reads cost
//! some 1.2 µs of a 6.3 µs decision (see bench/README.md, seventh increment). Nothing
//! here needs moka's expiry or its asynchronous loading: a snapshot's caches hold pure
//! functions of the snapshot and their keys, and go with it on a reload; a verified
//! token's identity says when it expires, and is checked for that on every read.
//!
//! Keys are hashed with the standard library's SipHash, keyed at random per cache, and
//! not with a faster unkeyed or weakly keyed hash: callers choose much of what is hashed
//! (a resource id in a path, the strings of a context, a token's subject), and a
//! long-running process that hashes what it is sent must not let a caller who studies
//! its timing build keys that collide.

use std::hash::{Hash, RandomState};

use quick_cache::sync::{Cache, DefaultLifecycle};
use quick_cache::{OptionsBuilder, UnitWeighter, Weighter};

/// A bounded cache, weighed by `W` (each entry weighs 1 by default).
pub(crate) type Bounded<K, V, W = UnitWeighter> = Cache<K, V, W, RandomState>;

/// A cache that holds at most about `capacity` entries.
pub(crate) fn bounded<K: Eq + Hash, V: Clone>(capacity: u64) -> Bounded<K, V> {
    weighed(capacity, capacity, UnitWeighter)
}

/// A cache whose entries weigh `weighter`'s answer each, at most `capacity` in all;
/// `items` is about how many entries that makes. An entry heavier than nearly all of a
/// shard's share of `capacity` is not kept (it is built again when asked again), so
/// there are at most 16 shards: an entry of a twentieth of the whole is always kept.
pub(crate) fn weighed<K: Eq + Hash, V: Clone, W: Weighter<K, V> + Clone>(
    items: u64,
    capacity: u64,
    weighter: W,
) -> Bounded<K, V, W> {
    let shards = std::thread::available_parallelism().map_or(4, usize::from).saturating_mul(4).clamp(1, 16);
    let options = OptionsBuilder::new()
        .estimated_items_capacity(usize::try_from(items).unwrap_or(usize::MAX))
        .weight_capacity(capacity)
        .shards(shards)
        .build();
    match options {
        Ok(options) => Cache::with_options(options, weighter, RandomState::new(), DefaultLifecycle::default()),
        // the builder refuses only missing capacities, and both are given
        Err(_) => Cache::with(
            usize::try_from(items).unwrap_or(usize::MAX),
            capacity,
            weighter,
            RandomState::new(),
            DefaultLifecycle::default(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct ByLength;

    impl Weighter<u32, String> for ByLength {
        fn weight(&self, _: &u32, value: &String) -> u64 {
            u64::try_from(value.len()).unwrap_or(u64::MAX)
        }
    }

    #[test]
    fn a_bounded_cache_keeps_no_more_than_its_capacity() {
        let cache = bounded::<u32, u32>(64);
        for i in 0..10_000 {
            cache.insert(i, i);
        }
        assert!(cache.len() <= 64 + 16, "kept {} entries of a 64-entry cache", cache.len());
        assert!(cache.len() >= 32, "kept only {} entries of a 64-entry cache", cache.len());
        // what is kept is what was inserted under that key
        for i in 0..10_000 {
            if let Some(v) = cache.get(&i) {
                assert_eq!(v, i);
            }
        }
    }

    #[test]
    fn a_weighed_cache_holds_no_more_than_its_weight_and_keeps_an_entry_a_twentieth_of_it() {
        let cache = weighed::<u32, String, _>(16, 1_024, ByLength);
        for i in 0..1_000 {
            cache.insert(i, "x".repeat(40));
        }
        assert!(cache.weight() <= 1_024, "weighs {}", cache.weight());
        // an entry of a twentieth of the capacity fits whatever the number of cores
        cache.insert(5_000, "y".repeat(51));
        assert_eq!(cache.get(&5_000).map(|v| v.len()), Some(51));
    }
}
