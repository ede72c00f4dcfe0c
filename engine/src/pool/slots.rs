//! Slot bookkeeping for one shard's range of the published pool.
//!
//! Owned by exactly one shard thread, so nothing here locks.
//!
//! Layout: the shard's range is cut into equal **segments**. A segment is
//! given, whole, to one **size class** (slot size = page length rounded up to
//! 4 KiB) the first time that class needs room, and is cut into that class's
//! slots. SGLang pages have one size per model, so normally one class owns every
//! segment; a second class (a second model, or generic `set` calls) takes free
//! segments, and when none are left takes a whole segment from the largest
//! class. Memory is only ever handed out in whole segments, so classes never
//! fragment each other.
//!
//! Safety of one-sided reads: a [`Location`] names (offset, generation). A
//! slot's generation is bumped the moment its page is evicted or removed,
//! before the slot can hold anything else, and an evicted slot waits in a
//! **quarantine** for `quarantine` before reuse, so a reader that checks the
//! generation after its read never accepts another page's bytes. Reassigning a
//! segment to another class bumps the segment's epoch, which is the high half of
//! every generation in it, so locations from the old layout can never match.

use crate::keys::KeyHash;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use super::region::SLOT_ALIGN_BYTES;

/// Most size classes one shard tracks. Real deployments use one or two; the
/// limit keeps class lookup a short linear scan.
pub const MAX_SIZE_CLASSES: usize = 8;

/// Where a page lives in the node's published pool, as a remote reader names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    /// Byte offset of the slot from the start of the node's pool region.
    pub offset: u64,
    /// Segment epoch (high 32 bits) and slot generation (low 32 bits) at the
    /// time the page was written.
    pub generation: u64,
    /// Length of the page in bytes.
    pub len: u32,
}

/// Why a page could not be placed in the pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// Zero-length pages carry nothing and are refused.
    #[error("page length is 0 bytes")]
    EmptyPage,
    /// The page does not fit in one segment.
    #[error("page of {len_bytes} bytes exceeds the pool segment of {segment_bytes} bytes; raise global_segment_size or lower the page size")]
    PageTooLarge {
        /// The page's length.
        len_bytes: usize,
        /// The segment size of this shard.
        segment_bytes: usize,
    },
    /// A new size class arrived while every class slot is taken.
    #[error("more than {MAX_SIZE_CLASSES} distinct page sizes in one pool")]
    TooManySizeClasses,
}

/// Result of [`ShardPool::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// A slot was reserved: the caller must copy the page to `dst` now.
    Fresh {
        /// Start of the reserved slot (valid for `location.len` bytes).
        dst: *mut u8,
        /// Where the page now lives.
        location: Location,
    },
    /// The key was already present with the same length. Keys are content
    /// hashes of token pages, so the first write wins and the copy is skipped.
    Present(Location),
}

/// Counters of one shard's pool, read by the metrics layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounters {
    /// Pages currently resident.
    pub keys: u64,
    /// Bytes of resident pages (payload, not slot size).
    pub bytes_used: u64,
    /// Bytes this shard's range can hold.
    pub capacity_bytes: u64,
    /// Pages evicted by LRU to make room, since start.
    pub evictions: u64,
    /// Slots reused before their quarantine ran out because nothing else was
    /// free (safe thanks to the generation check, but a sign the pool is too
    /// small for the write rate).
    pub quarantine_early_reuses: u64,
    /// Segments taken from one size class for another.
    pub segment_steals: u64,
}

const NIL: SlotRef = SlotRef {
    segment: u32::MAX,
    index: u32::MAX,
};

/// Identifies a slot: segment number and slot number inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SlotRef {
    segment: u32,
    index: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    Live,
    Quarantined,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    key: KeyHash,
    len_bytes: u32,
    generation: u32,
    state: SlotState,
    /// LRU neighbours (towards most recent / towards least recent).
    newer: SlotRef,
    older: SlotRef,
}

impl Slot {
    const EMPTY: Slot = Slot {
        key: KeyHash(0),
        len_bytes: 0,
        generation: 0,
        state: SlotState::Free,
        newer: NIL,
        older: NIL,
    };
}

#[derive(Debug)]
struct Segment {
    class: Option<u16>,
    epoch: u32,
    slots: Vec<Slot>,
}

#[derive(Debug)]
struct SizeClass {
    slot_bytes: usize,
    segments: Vec<u32>,
    free: Vec<SlotRef>,
    quarantine: VecDeque<(SlotRef, Instant)>,
    /// Most recently used live slot.
    lru_newest: SlotRef,
    /// Least recently used live slot: the next eviction victim.
    lru_oldest: SlotRef,
    live: usize,
    total_slots: usize,
}

/// Hasher for [`KeyHash`] map keys: the key is already a uniform 128-bit hash,
/// so folding it is enough and much cheaper than SipHash.
#[derive(Default)]
struct KeyHashHasher(u64);

impl Hasher for KeyHashHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached if KeyHash's Hash impl changes shape; stay correct anyway.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = (v as u64) ^ ((v >> 64) as u64);
    }
}

type KeyIndex = HashMap<KeyHash, SlotRef, BuildHasherDefault<KeyHashHasher>>;

/// The slots, LRU, generations and quarantine of one shard's pool range.
pub struct ShardPool {
    base: *mut u8,
    region_offset: u64,
    segment_bytes: usize,
    segments: Vec<Segment>,
    unassigned: Vec<u32>,
    classes: Vec<SizeClass>,
    index: KeyIndex,
    quarantine: Duration,
    counters: PoolCounters,
}

// SAFETY: the raw base pointer names memory owned by the node's PoolRegion,
// which outlives every shard; each ShardPool is used by one thread at a time.
unsafe impl Send for ShardPool {}

impl std::fmt::Debug for ShardPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardPool")
            .field("region_offset", &self.region_offset)
            .field("segment_bytes", &self.segment_bytes)
            .field("segments", &self.segments.len())
            .field("counters", &self.counters)
            .finish()
    }
}

/// Segment size for a shard range: a quarter of the range (so a second size
/// class can get room), at most 64 MiB, at least one 4 KiB slot.
pub fn default_segment_bytes(range_bytes: usize) -> usize {
    let quarter = (range_bytes / 4) / SLOT_ALIGN_BYTES * SLOT_ALIGN_BYTES;
    quarter.clamp(SLOT_ALIGN_BYTES, 64 << 20)
}

impl ShardPool {
    /// Creates the bookkeeping for `[base, base + range_bytes)`, which sits at
    /// `region_offset` in the node's region.
    ///
    /// # Safety
    /// The range must stay mapped and writable for the pool's lifetime and must
    /// not be written by anyone else while a page is resident.
    pub unsafe fn new(
        base: *mut u8,
        region_offset: u64,
        range_bytes: usize,
        segment_bytes: usize,
        quarantine: Duration,
    ) -> Self {
        assert!(
            segment_bytes >= SLOT_ALIGN_BYTES && segment_bytes.is_multiple_of(SLOT_ALIGN_BYTES)
        );
        assert_eq!(
            base as usize % SLOT_ALIGN_BYTES,
            0,
            "pool range must be 4 KiB aligned"
        );
        let count = range_bytes / segment_bytes;
        assert!(count <= u32::MAX as usize);
        let segments = (0..count)
            .map(|_| Segment {
                class: None,
                epoch: 0,
                slots: Vec::new(),
            })
            .collect();
        // Pop from the back: hand out segment 0 first.
        let unassigned = (0..count as u32).rev().collect();
        Self {
            base,
            region_offset,
            segment_bytes,
            segments,
            unassigned,
            classes: Vec::new(),
            index: KeyIndex::default(),
            quarantine,
            counters: PoolCounters {
                capacity_bytes: (count * segment_bytes) as u64,
                ..PoolCounters::default()
            },
        }
    }

    /// The counters of this shard's pool.
    pub fn counters(&self) -> PoolCounters {
        self.counters
    }

    /// Bytes per segment.
    pub fn segment_bytes(&self) -> usize {
        self.segment_bytes
    }

    /// Reserves a slot for `key` (or finds it present). Keys evicted to make
    /// room are appended to `evicted`, so a whole batch reports its evictions
    /// at once.
    pub fn insert(
        &mut self,
        key: KeyHash,
        len_bytes: usize,
        now: Instant,
        evicted: &mut Vec<KeyHash>,
    ) -> Result<Insert, PoolError> {
        if len_bytes == 0 {
            return Err(PoolError::EmptyPage);
        }
        let slot_bytes = len_bytes.div_ceil(SLOT_ALIGN_BYTES) * SLOT_ALIGN_BYTES;
        if slot_bytes > self.segment_bytes || len_bytes > u32::MAX as usize {
            return Err(PoolError::PageTooLarge {
                len_bytes,
                segment_bytes: self.segment_bytes,
            });
        }
        if let Some(&slot) = self.index.get(&key) {
            if self.slot(slot).len_bytes as usize == len_bytes {
                self.touch(slot);
                return Ok(Insert::Present(self.location_of(slot)));
            }
            // Same key, different length: the newer page replaces the old one.
            self.release(slot, now);
        }
        let class = self.class_for(slot_bytes)?;
        let slot = self.alloc(class, now, evicted);
        let s = self.slot_mut(slot);
        debug_assert_eq!(s.state, SlotState::Free);
        s.state = SlotState::Live;
        s.key = key;
        s.len_bytes = len_bytes as u32;
        self.lru_push_newest(class, slot);
        self.classes[class].live += 1;
        self.index.insert(key, slot);
        self.counters.keys += 1;
        self.counters.bytes_used += len_bytes as u64;
        Ok(Insert::Fresh {
            dst: self.slot_ptr(slot),
            location: self.location_of(slot),
        })
    }

    /// Finds a resident page and marks it most recently used.
    pub fn get(&mut self, key: KeyHash) -> Option<(*const u8, Location)> {
        let slot = *self.index.get(&key)?;
        self.touch(slot);
        Some((self.slot_ptr(slot), self.location_of(slot)))
    }

    /// Whether a page is resident, without touching the LRU (a probe is not a use).
    pub fn contains(&self, key: KeyHash) -> bool {
        self.index.contains_key(&key)
    }

    /// Where a resident page lives, without touching the LRU.
    pub fn location(&self, key: KeyHash) -> Option<Location> {
        self.index.get(&key).map(|&slot| self.location_of(slot))
    }

    /// Appends every resident page as (key, location) to `out`: what a shard
    /// re-publishes to the directory after a membership change.
    pub fn live_entries(&self, out: &mut Vec<(KeyHash, Location)>) {
        out.reserve(self.index.len());
        out.extend(
            self.index
                .iter()
                .map(|(&key, &slot)| (key, self.location_of(slot))),
        );
    }

    /// Checks a location named by a remote reader: the offset must be the
    /// start of a live slot in this shard's range whose generation and length
    /// still match. Returns the slot's bytes.
    pub fn validate(&self, location: Location) -> Option<*const u8> {
        let rel = location.offset.checked_sub(self.region_offset)? as usize;
        let segment = rel / self.segment_bytes;
        let seg = self.segments.get(segment)?;
        let class = &self.classes[usize::from(seg.class?)];
        let within = rel % self.segment_bytes;
        if !within.is_multiple_of(class.slot_bytes) {
            return None;
        }
        let slot = SlotRef {
            segment: segment as u32,
            index: (within / class.slot_bytes) as u32,
        };
        let s = seg.slots.get(slot.index as usize)?;
        let ok = s.state == SlotState::Live
            && self.generation_of(slot) == location.generation
            && s.len_bytes == location.len;
        ok.then(|| self.slot_ptr(slot) as *const u8)
    }

    /// Removes a page; its slot goes to quarantine. Returns whether it was resident.
    pub fn remove(&mut self, key: KeyHash, now: Instant) -> bool {
        match self.index.get(&key) {
            Some(&slot) => {
                self.release(slot, now);
                true
            }
            None => false,
        }
    }

    /// Removes every page (all slots go to quarantine).
    pub fn clear(&mut self, now: Instant) {
        let slots: Vec<SlotRef> = self.index.values().copied().collect();
        for slot in slots {
            self.release(slot, now);
        }
    }

    fn generation_of(&self, slot: SlotRef) -> u64 {
        let seg = &self.segments[slot.segment as usize];
        (u64::from(seg.epoch) << 32) | u64::from(seg.slots[slot.index as usize].generation)
    }

    fn location_of(&self, slot: SlotRef) -> Location {
        let s = self.slot(slot);
        Location {
            offset: self.region_offset + self.slot_offset(slot) as u64,
            generation: self.generation_of(slot),
            len: s.len_bytes,
        }
    }

    fn slot_offset(&self, slot: SlotRef) -> usize {
        let seg = &self.segments[slot.segment as usize];
        let class = &self.classes[usize::from(seg.class.expect("slot of an assigned segment"))];
        slot.segment as usize * self.segment_bytes + slot.index as usize * class.slot_bytes
    }

    fn slot_ptr(&self, slot: SlotRef) -> *mut u8 {
        // SAFETY: slot_offset is inside this shard's range by construction.
        unsafe { self.base.add(self.slot_offset(slot)) }
    }

    fn slot(&self, slot: SlotRef) -> &Slot {
        &self.segments[slot.segment as usize].slots[slot.index as usize]
    }

    fn slot_mut(&mut self, slot: SlotRef) -> &mut Slot {
        &mut self.segments[slot.segment as usize].slots[slot.index as usize]
    }

    fn class_of(&self, slot: SlotRef) -> usize {
        usize::from(
            self.segments[slot.segment as usize]
                .class
                .expect("assigned segment"),
        )
    }

    fn class_for(&mut self, slot_bytes: usize) -> Result<usize, PoolError> {
        if let Some(i) = self.classes.iter().position(|c| c.slot_bytes == slot_bytes) {
            return Ok(i);
        }
        if self.classes.len() == MAX_SIZE_CLASSES {
            return Err(PoolError::TooManySizeClasses);
        }
        self.classes.push(SizeClass {
            slot_bytes,
            segments: Vec::new(),
            free: Vec::new(),
            quarantine: VecDeque::new(),
            lru_newest: NIL,
            lru_oldest: NIL,
            live: 0,
            total_slots: 0,
        });
        Ok(self.classes.len() - 1)
    }

    /// Takes a free slot of `class`, making room if needed.
    fn alloc(&mut self, class: usize, now: Instant, evicted: &mut Vec<KeyHash>) -> SlotRef {
        self.reclaim_expired(class, now);
        if let Some(slot) = self.classes[class].free.pop() {
            return slot;
        }
        if let Some(segment) = self.unassigned.pop() {
            self.assign(segment, class);
            return self.classes[class]
                .free
                .pop()
                .expect("new segment has slots");
        }
        if self.classes[class].total_slots == 0 {
            // A new size class with no memory left: take a segment from the largest class.
            self.steal_segment_for(class, evicted);
            return self.classes[class]
                .free
                .pop()
                .expect("stolen segment has slots");
        }
        // Evict ahead so the quarantine holds a reserve of slots that age
        // while the next writes arrive; one eviction per write would leave
        // nothing old enough to reuse.
        let reserve = (self.classes[class].total_slots / 32).max(1);
        let mut budget = 64;
        while self.classes[class].quarantine.len() < reserve
            && self.classes[class].live > 0
            && budget > 0
        {
            self.evict_oldest(class, now, evicted);
            budget -= 1;
        }
        self.reclaim_expired(class, now);
        if let Some(slot) = self.classes[class].free.pop() {
            return slot;
        }
        // Nothing aged enough: reuse the oldest quarantined slot. Its
        // generation was bumped at eviction, so a reader racing with this
        // reuse sees a miss, never these bytes.
        let (slot, _) = self.classes[class]
            .quarantine
            .pop_front()
            .expect("a class with slots has free, live or quarantined slots");
        self.slot_mut(slot).state = SlotState::Free;
        self.counters.quarantine_early_reuses += 1;
        slot
    }

    fn assign(&mut self, segment: u32, class: usize) {
        let slot_bytes = self.classes[class].slot_bytes;
        let per_segment = self.segment_bytes / slot_bytes;
        let seg = &mut self.segments[segment as usize];
        debug_assert!(seg.class.is_none());
        seg.class = Some(class as u16);
        seg.slots = vec![Slot::EMPTY; per_segment];
        let c = &mut self.classes[class];
        c.segments.push(segment);
        c.total_slots += per_segment;
        // Reverse so slot 0 is handed out first (ascending addresses).
        c.free.extend(
            (0..per_segment as u32)
                .rev()
                .map(|index| SlotRef { segment, index }),
        );
    }

    fn steal_segment_for(&mut self, class: usize, evicted: &mut Vec<KeyHash>) {
        let victim = (0..self.classes.len())
            .filter(|&c| c != class)
            .max_by_key(|&c| self.classes[c].segments.len())
            .expect("some other class owns the segments");
        let segment = self.classes[victim]
            .segments
            .pop()
            .expect("victim has a segment");
        let slot_count = self.segments[segment as usize].slots.len();
        for index in 0..slot_count as u32 {
            let slot = SlotRef { segment, index };
            if self.slot(slot).state == SlotState::Live {
                let key = self.slot(slot).key;
                self.unlink_live(slot);
                evicted.push(key);
                self.counters.evictions += 1;
            }
        }
        let c = &mut self.classes[victim];
        c.free.retain(|s| s.segment != segment);
        c.quarantine.retain(|(s, _)| s.segment != segment);
        c.total_slots -= slot_count;
        let seg = &mut self.segments[segment as usize];
        seg.class = None;
        // New epoch: every generation in this segment changes, so no location
        // from the old layout can ever validate again.
        seg.epoch = seg.epoch.wrapping_add(1);
        seg.slots = Vec::new();
        self.counters.segment_steals += 1;
        self.assign(segment, class);
    }

    fn evict_oldest(&mut self, class: usize, now: Instant, evicted: &mut Vec<KeyHash>) {
        let slot = self.classes[class].lru_oldest;
        debug_assert_ne!(slot, NIL);
        evicted.push(self.slot(slot).key);
        self.counters.evictions += 1;
        self.release(slot, now);
    }

    /// Drops a live page: out of the index and LRU, generation bumped, into quarantine.
    fn release(&mut self, slot: SlotRef, now: Instant) {
        self.unlink_live(slot);
        let class = self.class_of(slot);
        let s = self.slot_mut(slot);
        s.state = SlotState::Quarantined;
        self.classes[class].quarantine.push_back((slot, now));
    }

    /// Removes a live slot from the index, the LRU and the counters and bumps
    /// its generation; leaves its state for the caller to set.
    fn unlink_live(&mut self, slot: SlotRef) {
        let class = self.class_of(slot);
        self.lru_unlink(class, slot);
        let s = self.slot_mut(slot);
        debug_assert_eq!(s.state, SlotState::Live);
        // Bump before the slot can be reused: the reader's generation check
        // depends on this happening first.
        s.generation = s.generation.wrapping_add(1);
        let (key, len) = (s.key, s.len_bytes);
        s.state = SlotState::Free;
        self.index.remove(&key);
        self.classes[class].live -= 1;
        self.counters.keys -= 1;
        self.counters.bytes_used -= u64::from(len);
    }

    fn reclaim_expired(&mut self, class: usize, now: Instant) {
        while let Some(&(slot, since)) = self.classes[class].quarantine.front() {
            if now.saturating_duration_since(since) < self.quarantine {
                break;
            }
            self.classes[class].quarantine.pop_front();
            self.slot_mut(slot).state = SlotState::Free;
            self.classes[class].free.push(slot);
        }
    }

    fn touch(&mut self, slot: SlotRef) {
        let class = self.class_of(slot);
        if self.classes[class].lru_newest != slot {
            self.lru_unlink(class, slot);
            self.lru_push_newest(class, slot);
        }
    }

    fn lru_push_newest(&mut self, class: usize, slot: SlotRef) {
        let old_newest = self.classes[class].lru_newest;
        {
            let s = self.slot_mut(slot);
            s.newer = NIL;
            s.older = old_newest;
        }
        if old_newest == NIL {
            self.classes[class].lru_oldest = slot;
        } else {
            self.slot_mut(old_newest).newer = slot;
        }
        self.classes[class].lru_newest = slot;
    }

    fn lru_unlink(&mut self, class: usize, slot: SlotRef) {
        let (newer, older) = {
            let s = self.slot(slot);
            (s.newer, s.older)
        };
        if newer == NIL {
            self.classes[class].lru_newest = older;
        } else {
            self.slot_mut(newer).older = older;
        }
        if older == NIL {
            self.classes[class].lru_oldest = newer;
        } else {
            self.slot_mut(older).newer = newer;
        }
        let s = self.slot_mut(slot);
        s.newer = NIL;
        s.older = NIL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TestRange {
        buf: Vec<u8>,
        start: usize,
    }

    impl TestRange {
        fn new(bytes: usize) -> Self {
            let buf = vec![0u8; bytes + SLOT_ALIGN_BYTES];
            let start = buf.as_ptr().align_offset(SLOT_ALIGN_BYTES);
            Self { buf, start }
        }
        fn pool(&mut self, bytes: usize, segment: usize, quarantine: Duration) -> ShardPool {
            let base = unsafe { self.buf.as_mut_ptr().add(self.start) };
            unsafe { ShardPool::new(base, 1 << 20, bytes, segment, quarantine) }
        }
    }

    fn k(i: u128) -> KeyHash {
        KeyHash(i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835) | 1)
    }

    fn fresh(
        pool: &mut ShardPool,
        key: KeyHash,
        len: usize,
        now: Instant,
        ev: &mut Vec<KeyHash>,
    ) -> Location {
        match pool.insert(key, len, now, ev).unwrap() {
            Insert::Fresh { dst, location } => {
                unsafe { std::ptr::write_bytes(dst, key.0 as u8, len) };
                location
            }
            Insert::Present(_) => panic!("expected a fresh slot"),
        }
    }

    #[test]
    fn evicts_least_recently_used_first() {
        let mut r = TestRange::new(16 * 4096);
        let mut pool = r.pool(16 * 4096, 4 * 4096, Duration::ZERO);
        let now = Instant::now();
        let mut ev = Vec::new();
        for i in 0..16 {
            fresh(&mut pool, k(i), 4096, now, &mut ev);
        }
        assert!(ev.is_empty());
        // Use key 0 so key 1 becomes the oldest.
        assert!(pool.get(k(0)).is_some());
        fresh(&mut pool, k(100), 4096, now, &mut ev);
        assert_eq!(
            ev,
            vec![k(1)],
            "16 slots / 32 = reserve of 1: exactly the LRU page goes"
        );
        assert!(pool.contains(k(0)));
        assert!(!pool.contains(k(1)));
        // exists-style probes do not refresh: k(2) is still the next victim.
        assert!(pool.contains(k(2)));
        ev.clear();
        fresh(&mut pool, k(101), 4096, now, &mut ev);
        assert_eq!(ev, vec![k(2)]);
    }

    #[test]
    fn capacity_is_never_exceeded() {
        let mut r = TestRange::new(64 * 4096);
        let mut pool = r.pool(64 * 4096, 8 * 4096, Duration::ZERO);
        let now = Instant::now();
        let mut ev = Vec::new();
        for i in 0..1000u128 {
            let len = 1 + (i as usize * 37) % 4096;
            fresh(&mut pool, k(i), len, now, &mut ev);
            let c = pool.counters();
            assert!(c.keys <= 64);
            assert!(c.bytes_used <= c.capacity_bytes);
        }
        let c = pool.counters();
        assert_eq!(c.keys + c.evictions, 1000);
        assert_eq!(ev.len() as u64, c.evictions);
    }

    #[test]
    fn location_is_stable_and_generation_bumps_on_eviction() {
        let mut r = TestRange::new(4 * 4096);
        let mut pool = r.pool(4 * 4096, 4 * 4096, Duration::ZERO);
        let now = Instant::now();
        let mut ev = Vec::new();
        let first = fresh(&mut pool, k(1), 4000, now, &mut ev);
        assert_eq!(pool.location(k(1)), Some(first));
        let mut live = Vec::new();
        pool.live_entries(&mut live);
        assert_eq!(live, vec![(k(1), first)]);
        assert!(pool.validate(first).is_some());
        assert!(
            matches!(pool.insert(k(1), 4000, now, &mut ev), Ok(Insert::Present(l)) if l == first)
        );
        for i in 2..=4 {
            fresh(&mut pool, k(i), 4000, now, &mut ev);
        }
        // The fifth page evicts k(1) and, with no quarantine, reuses its slot.
        let reused = fresh(&mut pool, k(5), 4000, now, &mut ev);
        assert_eq!(ev, vec![k(1)]);
        assert_eq!(reused.offset, first.offset);
        assert_ne!(reused.generation, first.generation);
        assert!(
            pool.validate(first).is_none(),
            "stale generation is refused"
        );
        assert!(pool.validate(reused).is_some());
        // Wrong length, misaligned offset, offset outside the range.
        assert!(pool.validate(Location { len: 1, ..reused }).is_none());
        assert!(pool
            .validate(Location {
                offset: reused.offset + 8,
                ..reused
            })
            .is_none());
        assert!(pool
            .validate(Location {
                offset: 0,
                ..reused
            })
            .is_none());
        assert!(pool
            .validate(Location {
                offset: u64::MAX,
                ..reused
            })
            .is_none());
    }

    #[test]
    fn quarantine_delays_reuse() {
        let mut r = TestRange::new(64 * 4096);
        let mut pool = r.pool(64 * 4096, 64 * 4096, Duration::from_millis(200));
        let t0 = Instant::now();
        let mut ev = Vec::new();
        let mut first_locs = Vec::new();
        for i in 0..64 {
            first_locs.push(fresh(&mut pool, k(i), 4096, t0, &mut ev));
        }
        // Remove two pages: their slots are quarantined, not free.
        assert!(pool.remove(k(0), t0));
        assert!(pool.remove(k(1), t0));
        assert!(!pool.remove(k(0), t0));
        // A write 100 ms later must not reuse them: it evicts ahead instead
        // and, with nothing aged, takes the oldest quarantined slot (counted).
        let t1 = t0 + Duration::from_millis(100);
        let loc = fresh(&mut pool, k(1000), 4096, t1, &mut ev);
        assert_eq!(pool.counters().quarantine_early_reuses, 1);
        assert_eq!(loc.offset, first_locs[0].offset);
        // After the quarantine ran out, aged slots are reused without counting.
        let t2 = t0 + Duration::from_millis(250);
        fresh(&mut pool, k(1001), 4096, t2, &mut ev);
        assert_eq!(pool.counters().quarantine_early_reuses, 1);
    }

    #[test]
    fn quarantined_slot_is_not_reused_while_others_are_free() {
        let mut r = TestRange::new(8 * 4096);
        let mut pool = r.pool(8 * 4096, 8 * 4096, Duration::from_secs(3600));
        let now = Instant::now();
        let mut ev = Vec::new();
        let a = fresh(&mut pool, k(1), 4096, now, &mut ev);
        assert!(pool.remove(k(1), now));
        for i in 2..9 {
            let loc = fresh(&mut pool, k(i), 4096, now, &mut ev);
            assert_ne!(
                loc.offset, a.offset,
                "quarantined slot reused while free slots existed"
            );
        }
        assert_eq!(pool.counters().quarantine_early_reuses, 0);
    }

    #[test]
    fn second_size_class_takes_whole_segments() {
        let mut r = TestRange::new(16 * 4096);
        let mut pool = r.pool(16 * 4096, 4 * 4096, Duration::ZERO);
        let now = Instant::now();
        let mut ev = Vec::new();
        // Class A (4 KiB) fills all four segments.
        for i in 0..16 {
            fresh(&mut pool, k(i), 4096, now, &mut ev);
        }
        // Class B (8 KiB pages) has no memory: it takes one whole segment,
        // evicting exactly the four class-A pages that lived there.
        let b = fresh(&mut pool, k(500), 8192, now, &mut ev);
        assert_eq!(ev.len(), 4);
        assert_eq!(pool.counters().segment_steals, 1);
        assert_eq!(
            b.offset % (4 * 4096) as u64,
            (1u64 << 20) % (4 * 4096) as u64
        );
        fresh(&mut pool, k(501), 8192, now, &mut ev);
        assert_eq!(pool.counters().keys, 12 + 2);
        // A third B page evicts B's own LRU, not A's pages.
        ev.clear();
        fresh(&mut pool, k(502), 8192, now, &mut ev);
        assert_eq!(ev, vec![k(500)]);
        // Every class-A page that survived is intact and readable.
        for i in 0..16 {
            if let Some((ptr, loc)) = pool.get(k(i)) {
                let bytes = unsafe { std::slice::from_raw_parts(ptr, loc.len as usize) };
                assert!(bytes.iter().all(|&x| x == k(i).0 as u8));
            }
        }
        assert!(pool.counters().bytes_used <= pool.counters().capacity_bytes);
    }

    #[test]
    fn refuses_bad_sizes() {
        let mut r = TestRange::new(8 * 4096);
        let mut pool = r.pool(8 * 4096, 4 * 4096, Duration::ZERO);
        let mut ev = Vec::new();
        let now = Instant::now();
        assert_eq!(
            pool.insert(k(1), 0, now, &mut ev),
            Err(PoolError::EmptyPage)
        );
        assert!(matches!(
            pool.insert(k(1), 4 * 4096 + 1, now, &mut ev),
            Err(PoolError::PageTooLarge { .. })
        ));
        assert_eq!(pool.counters().keys, 0);
    }

    #[test]
    fn size_classes_are_bounded() {
        let seg = 16 * 4096;
        let mut r = TestRange::new(8 * seg);
        let mut pool = r.pool(8 * seg, seg, Duration::ZERO);
        let mut ev = Vec::new();
        let now = Instant::now();
        for class in 1..=MAX_SIZE_CLASSES {
            fresh(&mut pool, k(class as u128), class * 4096, now, &mut ev);
        }
        assert_eq!(
            pool.insert(k(99), (MAX_SIZE_CLASSES + 1) * 4096, now, &mut ev),
            Err(PoolError::TooManySizeClasses)
        );
        assert_eq!(pool.counters().keys, MAX_SIZE_CLASSES as u64);
        assert!(ev.is_empty());
    }

    #[test]
    fn same_key_new_length_replaces() {
        let mut r = TestRange::new(8 * 4096);
        let mut pool = r.pool(8 * 4096, 8 * 4096, Duration::ZERO);
        let mut ev = Vec::new();
        let now = Instant::now();
        let a = fresh(&mut pool, k(1), 100, now, &mut ev);
        let b = fresh(&mut pool, k(1), 200, now, &mut ev);
        assert_eq!(b.len, 200);
        assert!(pool.validate(a).is_none());
        assert_eq!(pool.counters().keys, 1);
        assert_eq!(pool.counters().bytes_used, 200);
        pool.clear(now);
        assert_eq!(pool.counters().keys, 0);
        assert_eq!(pool.counters().bytes_used, 0);
        assert!(pool.get(k(1)).is_none());
    }
}
