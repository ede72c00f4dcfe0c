//! Reader-side cache of resolved directory locations.
//!
//! Two uses, one structure, because both map a key to the location a
//! directory lookup returned and both expire it by age:
//!
//! - **The exists -> get handoff.** SGLang calls `batch_exists` and then
//!   `batch_get` on the same keys. The lookup `exists` did already resolved
//!   every hit, so [`LocationCache::insert`] keeps those locations and the
//!   `get` consumes them with [`LocationCache::take`] instead of asking the
//!   owners again (`directory_lookups_saved`). A primed location is used once
//!   and only within [`HANDOFF_TTL`] of the lookup.
//! - **The read cache** (`directory_read_cache_ttl`, 0 = off). For hot,
//!   static working sets, [`LocationCache::get`] keeps answering from the
//!   cache, unconsumed, for the configured TTL; a read that misses at the
//!   data node calls [`LocationCache::invalidate`].
//!
//! A stale location can never return wrong bytes (the data node checks the
//! slot generation), it can only cost a miss, which is why a plain TTL is
//! enough and no invalidation protocol is needed.
//!
//! Bounded: at most `max_entries` entries, kept in insertion order in a ring;
//! the oldest insertion is dropped to make room (an entry lives at most
//! `max_entries` insertions). Time is passed in as an [`Instant`] by the
//! caller (one clock read per batch), never read here.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use crate::keys::KeyHash;

use super::{mix, DirLocation};

/// How long a location primed by `exists` stays usable by the following
/// `get`. SGLang issues the get right after the exists of the same batch;
/// two seconds covers that with a wide margin while keeping stale primes from
/// lingering.
pub const HANDOFF_TTL: Duration = Duration::from_secs(2);

/// Default bound on cached locations: 65,536 entries (about 5 MiB).
pub const DEFAULT_CACHE_ENTRIES: usize = 1 << 16;

/// Hasher for [`KeyHash`] map keys: the key is already a hash, so one
/// [`mix`] of its halves is enough (SipHash would cost more than the lookup).
#[derive(Default)]
struct KeyMixHasher(u64);

impl Hasher for KeyMixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached if KeyHash's Hash impl changes shape; stay correct.
        for &b in bytes {
            self.0 = mix(self.0 ^ u64::from(b), 0x51);
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.0 = mix(v as u64, (v >> 64) as u64);
    }
}

/// What the cache has saved and dropped since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocationCacheCounters {
    /// Locations handed from an `exists` to the following `get`.
    pub handoff_hits: u64,
    /// Lookups answered by the read cache.
    pub read_hits: u64,
    /// Entries removed because they had outlived both TTLs.
    pub expired: u64,
    /// Still-valid entries dropped to stay within `max_entries`.
    pub dropped_oldest: u64,
    /// Entries removed by [`LocationCache::invalidate`].
    pub invalidated: u64,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    key: KeyHash,
    loc: DirLocation,
    /// When the location was resolved.
    at: Instant,
    /// Not yet consumed by a handoff [`LocationCache::take`].
    primed: bool,
}

/// Bounded, TTL-expiring `key -> location` cache on the reader side; see the
/// module docs for its two uses.
#[derive(Debug)]
pub struct LocationCache {
    handoff_ttl: Duration,
    read_ttl: Duration,
    max_entries: usize,
    /// Insertion-ordered ring; `None` marks a removed entry. Grows to
    /// `max_entries`, then `cursor` cycles over it.
    slots: Vec<Option<Entry>>,
    /// Next slot to overwrite once `slots` is full: the oldest insertion.
    cursor: usize,
    /// Key -> position in `slots`.
    index: HashMap<KeyHash, u32, BuildHasherDefault<KeyMixHasher>>,
    counters: LocationCacheCounters,
}

impl LocationCache {
    /// A cache whose primed locations serve one `take` within `handoff_ttl`,
    /// whose locations serve `get` within `read_ttl` (`Duration::ZERO`
    /// disables the read cache, the `directory_read_cache_ttl` default), and
    /// which holds at most `max_entries` (clamped to `1..=u32::MAX`).
    pub fn new(handoff_ttl: Duration, read_ttl: Duration, max_entries: usize) -> Self {
        let max_entries = max_entries.clamp(1, u32::MAX as usize);
        LocationCache {
            handoff_ttl,
            read_ttl,
            max_entries,
            slots: Vec::new(),
            cursor: 0,
            index: HashMap::default(),
            counters: LocationCacheCounters::default(),
        }
    }

    /// Records that `key` resolved to `loc` at `now`: primes it for one
    /// [`take`](Self::take) and, if the read cache is on, serves
    /// [`get`](Self::get) until `now + read_ttl`. Replaces any earlier entry
    /// of `key`. A no-op when both TTLs are zero.
    pub fn insert(&mut self, key: KeyHash, loc: DirLocation, now: Instant) {
        if self.handoff_ttl.is_zero() && self.read_ttl.is_zero() {
            return;
        }
        if let Some(pos) = self.index.remove(&key) {
            self.slots[pos as usize] = None;
        }
        let entry = Some(Entry {
            key,
            loc,
            at: now,
            primed: true,
        });
        let pos = if self.slots.len() < self.max_entries {
            self.slots.push(entry);
            self.slots.len() - 1
        } else {
            let pos = self.cursor;
            self.cursor = if pos + 1 == self.max_entries {
                0
            } else {
                pos + 1
            };
            if let Some(old) = self.slots[pos].take() {
                self.index.remove(&old.key);
                if self.is_useful(&old, now) {
                    self.counters.dropped_oldest += 1;
                } else {
                    self.counters.expired += 1;
                }
            }
            self.slots[pos] = entry;
            pos
        };
        self.index.insert(key, pos as u32);
    }

    /// The exists -> get handoff: the location primed by the last
    /// [`insert`](Self::insert) of `key`, if that was less than the handoff
    /// TTL before `now` and no `take` consumed it yet. Consumes it (the entry
    /// itself stays while the read cache still serves it).
    pub fn take(&mut self, key: KeyHash, now: Instant) -> Option<DirLocation> {
        let pos = *self.index.get(&key)? as usize;
        let e = self.slots[pos].as_mut().expect("indexed slot is occupied");
        let age = now.saturating_duration_since(e.at);
        if e.primed && age < self.handoff_ttl {
            e.primed = false;
            let loc = e.loc;
            if age >= self.read_ttl {
                self.remove_at(pos);
            }
            self.counters.handoff_hits += 1;
            return Some(loc);
        }
        self.expire_if_useless(pos, now);
        None
    }

    /// The read cache: the location of `key` if it was inserted less than
    /// `directory_read_cache_ttl` before `now`. Not consumed. Always `None`
    /// when the read cache is off.
    pub fn get(&mut self, key: KeyHash, now: Instant) -> Option<DirLocation> {
        let pos = *self.index.get(&key)? as usize;
        let e = self.slots[pos].as_ref().expect("indexed slot is occupied");
        if now.saturating_duration_since(e.at) < self.read_ttl {
            self.counters.read_hits += 1;
            return Some(e.loc);
        }
        self.expire_if_useless(pos, now);
        None
    }

    /// Forgets `key` (its location missed at the data node); returns whether
    /// it was cached.
    pub fn invalidate(&mut self, key: KeyHash) -> bool {
        match self.index.get(&key) {
            Some(&pos) => {
                self.remove_at(pos as usize);
                self.counters.invalidated += 1;
                true
            }
            None => false,
        }
    }

    /// Forgets every entry (e.g. after a membership change), keeping the
    /// allocated capacity.
    pub fn clear(&mut self) {
        self.slots.clear();
        self.index.clear();
        self.cursor = 0;
    }

    /// Entries held, including ones that expired but were not yet looked at
    /// or overwritten.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the cache holds no entries.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The bound on entries.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// Whether [`get`](Self::get) can ever hit (`directory_read_cache_ttl` > 0).
    pub fn read_cache_enabled(&self) -> bool {
        !self.read_ttl.is_zero()
    }

    /// Hits and drops so far.
    pub fn counters(&self) -> LocationCacheCounters {
        self.counters
    }

    /// Whether `e` can still answer a `take` or a `get` at `now`.
    fn is_useful(&self, e: &Entry, now: Instant) -> bool {
        let age = now.saturating_duration_since(e.at);
        (e.primed && age < self.handoff_ttl) || age < self.read_ttl
    }

    fn expire_if_useless(&mut self, pos: usize, now: Instant) {
        let e = self.slots[pos].as_ref().expect("indexed slot is occupied");
        if !self.is_useful(e, now) {
            self.remove_at(pos);
            self.counters.expired += 1;
        }
    }

    fn remove_at(&mut self, pos: usize) {
        let e = self.slots[pos].take().expect("indexed slot is occupied");
        self.index.remove(&e.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::NodeRef;

    fn loc(i: u64) -> DirLocation {
        DirLocation {
            node: NodeRef(i % 3),
            shard: (i % 5) as u16,
            offset: i * 4096,
            generation: i,
            len: 4096,
            resident: true,
        }
    }

    fn k(i: u128) -> KeyHash {
        KeyHash(i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835) ^ 0xABCD)
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn handoff_is_consumed_once_and_expires() {
        let mut c = LocationCache::new(HANDOFF_TTL, Duration::ZERO, 16);
        let t0 = Instant::now();
        c.insert(k(1), loc(1), t0);
        c.insert(k(2), loc(2), t0);
        assert_eq!(c.len(), 2);
        assert_eq!(c.take(k(1), t0 + 1999 * MS), Some(loc(1)));
        assert_eq!(c.take(k(1), t0 + 1999 * MS), None, "consumed");
        assert_eq!(c.len(), 1, "consumed entry with no read cache is gone");
        // At exactly the TTL the prime has expired, and the entry is removed.
        assert_eq!(c.take(k(2), t0 + HANDOFF_TTL), None);
        assert!(c.is_empty());
        assert_eq!(c.take(k(3), t0), None);
        let n = c.counters();
        assert_eq!((n.handoff_hits, n.read_hits, n.expired), (1, 0, 1));
        // The read cache is off: get never answers, even right away.
        c.insert(k(4), loc(4), t0);
        assert_eq!(c.get(k(4), t0), None);
        assert_eq!(c.take(k(4), t0), Some(loc(4)));
    }

    #[test]
    fn read_cache_serves_until_its_ttl_and_survives_take() {
        let ttl = Duration::from_secs(5);
        let mut c = LocationCache::new(HANDOFF_TTL, ttl, 16);
        let t0 = Instant::now();
        c.insert(k(1), loc(1), t0);
        assert_eq!(c.get(k(1), t0 + MS), Some(loc(1)));
        assert_eq!(c.take(k(1), t0 + MS), Some(loc(1)));
        // Consumed for the handoff but still a read-cache entry.
        assert_eq!(c.take(k(1), t0 + 2 * MS), None);
        assert_eq!(c.get(k(1), t0 + 4999 * MS), Some(loc(1)));
        assert_eq!(
            c.get(k(1), t0 + 4999 * MS),
            Some(loc(1)),
            "get does not consume"
        );
        assert_eq!(c.get(k(1), t0 + ttl), None);
        assert!(c.is_empty(), "expired entry removed on access");
        // Re-inserting refreshes the age and re-primes.
        c.insert(k(2), loc(2), t0);
        c.insert(k(2), loc(20), t0 + 4 * ttl);
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(k(2), t0 + 4 * ttl + ttl - MS), Some(loc(20)));
        assert_eq!(c.take(k(2), t0 + 4 * ttl + MS), Some(loc(20)));
        let n = c.counters();
        assert_eq!((n.handoff_hits, n.read_hits, n.expired), (2, 4, 1));
    }

    #[test]
    fn read_ttl_shorter_than_handoff() {
        let mut c = LocationCache::new(HANDOFF_TTL, 500 * MS, 16);
        let t0 = Instant::now();
        c.insert(k(1), loc(1), t0);
        assert_eq!(c.get(k(1), t0 + 600 * MS), None, "read TTL passed");
        assert_eq!(c.len(), 1, "still primed, so kept");
        assert_eq!(c.take(k(1), t0 + 600 * MS), Some(loc(1)));
        assert!(c.is_empty());
    }

    #[test]
    fn invalidate_removes_for_both_uses() {
        let mut c = LocationCache::new(HANDOFF_TTL, Duration::from_secs(5), 16);
        let t0 = Instant::now();
        c.insert(k(1), loc(1), t0);
        assert!(c.invalidate(k(1)));
        assert!(!c.invalidate(k(1)));
        assert_eq!(c.get(k(1), t0), None);
        assert_eq!(c.take(k(1), t0), None);
        assert_eq!(c.counters().invalidated, 1);
    }

    #[test]
    fn both_ttls_zero_caches_nothing() {
        let mut c = LocationCache::new(Duration::ZERO, Duration::ZERO, 16);
        let t0 = Instant::now();
        c.insert(k(1), loc(1), t0);
        assert!(c.is_empty());
        assert_eq!(c.take(k(1), t0), None);
        assert!(!c.read_cache_enabled());
    }

    #[test]
    fn bound_drops_the_oldest_insertion() {
        let mut c = LocationCache::new(HANDOFF_TTL, Duration::from_secs(60), 4);
        let t0 = Instant::now();
        for i in 0..4 {
            c.insert(k(i), loc(i as u64), t0 + i as u32 * MS);
        }
        assert_eq!(c.len(), 4);
        c.insert(k(4), loc(4), t0 + 4 * MS);
        assert_eq!(c.len(), 4);
        assert_eq!(c.get(k(0), t0 + 5 * MS), None, "oldest dropped");
        for i in 1..5 {
            assert_eq!(c.get(k(i), t0 + 5 * MS), Some(loc(i as u64)));
        }
        assert_eq!(c.counters().dropped_oldest, 1);
        // Re-inserting k(1) moves it to the newest position: the next two
        // inserts drop k(2) and k(3), not k(1).
        c.insert(k(1), loc(11), t0 + 6 * MS);
        c.insert(k(5), loc(5), t0 + 7 * MS);
        c.insert(k(6), loc(6), t0 + 8 * MS);
        let t = t0 + 9 * MS;
        assert_eq!(c.get(k(1), t), Some(loc(11)));
        assert_eq!(c.get(k(2), t), None);
        assert_eq!(c.get(k(3), t), None);
        assert_eq!(c.get(k(4), t), Some(loc(4)));
        assert!(c.len() <= c.max_entries());
        // Thousands of inserts never exceed the bound; expired victims are
        // counted as expired, not as dropped.
        let before = c.counters().dropped_oldest;
        let late = t0 + Duration::from_secs(3600);
        for i in 100..10_100u128 {
            c.insert(k(i), loc(i as u64), late);
            assert!(c.len() <= 4);
            assert!(c.slots.len() <= 4);
        }
        assert!(c.index.len() <= 4);
        let n = c.counters();
        assert_eq!(n.expired, 4, "the four entries from t0 had expired");
        assert_eq!(n.dropped_oldest - before, 10_000 - 4);
        c.clear();
        assert!(c.is_empty());
        assert_eq!(c.get(k(10_099), late), None);
    }
}
