//! A shard's in-memory view of its slab: which slot holds which page, which
//! slots are free, and the LRU order per size class.
//!
//! Pure bookkeeping, no I/O: the slab (`slab.rs`) fills it from the slot
//! headers at start and the tier (`mod.rs`) drives it as writes complete.
//! Segments are given whole to one size class and never move (the pool moves
//! segments between classes; a disk slab holds one model's pages in practice,
//! and a segment that never changes class keeps restart simple).

use super::layout::{slot_bytes_for, Geometry};
use crate::keys::KeyHash;
use std::collections::{BTreeMap, HashMap};

/// A slot of the slab: segment number and index inside the segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotRef {
    /// Segment number.
    pub segment: u32,
    /// Slot index inside the segment.
    pub index: u32,
}

/// A page on disk as the index knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskEntry {
    /// Where it is.
    pub slot: SlotRef,
    /// Bytes of its slot (header block + page rounded to blocks).
    pub slot_bytes: usize,
    /// Page length.
    pub len: u32,
    /// Write sequence number recorded in its header.
    pub seq: u64,
}

/// A slot reserved for a write by [`SlabIndex::reserve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The slot to write.
    pub slot: SlotRef,
    /// Its size.
    pub slot_bytes: usize,
    /// The segment was just given to this size class: its header must be
    /// written so a restart knows the segment's slot size.
    pub new_segment: bool,
    /// The page evicted to make room, if any.
    pub evicted: Option<KeyHash>,
}

struct Class {
    slot_bytes: usize,
    free: Vec<SlotRef>,
    /// Last-use tick -> key; the first entry is the least recently used.
    lru: BTreeMap<u64, KeyHash>,
}

struct Live {
    entry: DiskEntry,
    class: usize,
    tick: u64,
}

/// The index of one shard's slab.
pub struct SlabIndex {
    geometry: Geometry,
    classes: Vec<Class>,
    /// The class each segment was given to.
    segment_class: Vec<Option<usize>>,
    live: HashMap<KeyHash, Live>,
    tick: u64,
    bytes_used: u64,
    evictions: u64,
}

impl SlabIndex {
    /// An empty index for a slab of `geometry`.
    pub fn new(geometry: Geometry) -> Self {
        Self {
            geometry,
            classes: Vec::new(),
            segment_class: vec![None; geometry.segments as usize],
            live: HashMap::new(),
            tick: 0,
            bytes_used: 0,
            evictions: 0,
        }
    }

    /// The slab's geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Pages on disk.
    pub fn keys(&self) -> u64 {
        self.live.len() as u64
    }

    /// Payload bytes on disk.
    pub fn bytes_used(&self) -> u64 {
        self.bytes_used
    }

    /// Pages evicted by LRU so far.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Where `key` is, without touching the LRU.
    pub fn get(&self, key: KeyHash) -> Option<DiskEntry> {
        self.live.get(&key).map(|l| l.entry)
    }

    /// Whether `key` is on disk.
    pub fn contains(&self, key: KeyHash) -> bool {
        self.live.contains_key(&key)
    }

    /// Every page as (key, length): what a shard re-publishes as
    /// non-resident directory entries.
    pub fn entries(&self) -> Vec<(KeyHash, u32)> {
        self.live.iter().map(|(&k, l)| (k, l.entry.len)).collect()
    }

    /// Marks `key` most recently used.
    pub fn touch(&mut self, key: KeyHash) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(l) = self.live.get_mut(&key) {
            let class = &mut self.classes[l.class];
            class.lru.remove(&l.tick);
            class.lru.insert(tick, key);
            l.tick = tick;
        }
    }

    /// Forgets `key` (a page that failed its checksum); its slot is free again.
    pub fn remove(&mut self, key: KeyHash) -> bool {
        let Some(l) = self.live.remove(&key) else {
            return false;
        };
        let class = &mut self.classes[l.class];
        class.lru.remove(&l.tick);
        class.free.push(l.entry.slot);
        self.bytes_used -= u64::from(l.entry.len);
        true
    }

    fn class_of(&mut self, slot_bytes: usize) -> usize {
        match self.classes.iter().position(|c| c.slot_bytes == slot_bytes) {
            Some(c) => c,
            None => {
                self.classes.push(Class {
                    slot_bytes,
                    free: Vec::new(),
                    lru: BTreeMap::new(),
                });
                self.classes.len() - 1
            }
        }
    }

    /// Gives segment `seg` to the class of `slot_bytes`, all its slots free.
    fn assign(&mut self, seg: u32, class: usize) {
        let per = self
            .geometry
            .slots_per_segment(self.classes[class].slot_bytes);
        self.segment_class[seg as usize] = Some(class);
        // Reverse order so slots are handed out front to back.
        self.classes[class]
            .free
            .extend((0..per).rev().map(|index| SlotRef {
                segment: seg,
                index,
            }));
    }

    /// Reserves a slot for a page of `len` bytes: a free slot of its class,
    /// else a fresh segment, else the class's least recently used page.
    /// None when the page cannot fit (larger than a segment, or a new size
    /// class after every segment was given away).
    pub fn reserve(&mut self, len: usize) -> Option<Reservation> {
        let slot_bytes = slot_bytes_for(len);
        if self.geometry.slots_per_segment(slot_bytes) == 0 {
            return None;
        }
        let class = self.class_of(slot_bytes);
        let mut new_segment = false;
        if self.classes[class].free.is_empty() {
            if let Some(seg) = self.segment_class.iter().position(Option::is_none) {
                self.assign(seg as u32, class);
                new_segment = true;
            }
        }
        if let Some(slot) = self.classes[class].free.pop() {
            return Some(Reservation {
                slot,
                slot_bytes,
                new_segment,
                evicted: None,
            });
        }
        let (_, &victim) = self.classes[class].lru.first_key_value()?;
        let l = self.live.remove(&victim).expect("LRU keys are live");
        self.classes[class].lru.remove(&l.tick);
        self.bytes_used -= u64::from(l.entry.len);
        self.evictions += 1;
        Some(Reservation {
            slot: l.entry.slot,
            slot_bytes,
            new_segment: false,
            evicted: Some(victim),
        })
    }

    /// Gives back a reserved slot whose write failed.
    pub fn abort(&mut self, r: &Reservation) {
        let class = self.class_of(r.slot_bytes);
        self.classes[class].free.push(r.slot);
    }

    /// Records that a reserved slot now holds `key`. A copy of `key` already
    /// on disk (two writes raced) is dropped and its slot freed.
    pub fn commit(&mut self, r: &Reservation, key: KeyHash, len: u32, seq: u64) {
        self.remove(key);
        let class = self.class_of(r.slot_bytes);
        self.tick = self.tick.max(seq) + 1;
        let tick = self.tick;
        self.insert_live(
            key,
            class,
            tick,
            DiskEntry {
                slot: r.slot,
                slot_bytes: r.slot_bytes,
                len,
                seq,
            },
        );
    }

    fn insert_live(&mut self, key: KeyHash, class: usize, tick: u64, entry: DiskEntry) {
        self.classes[class].lru.insert(tick, key);
        self.bytes_used += u64::from(entry.len);
        self.live.insert(key, Live { entry, class, tick });
    }

    /// Restores segment `seg` at start-up from its header (`slot_bytes`) and
    /// the valid slot headers found in it: (slot index, key, length, seq).
    /// When a key appears twice the higher sequence number wins. The LRU is
    /// rebuilt in write order.
    pub fn restore_segment(
        &mut self,
        seg: u32,
        slot_bytes: usize,
        pages: &[(u32, KeyHash, u32, u64)],
    ) {
        let per = self.geometry.slots_per_segment(slot_bytes);
        if per == 0 || self.segment_class[seg as usize].is_some() {
            return;
        }
        let class = self.class_of(slot_bytes);
        self.segment_class[seg as usize] = Some(class);
        let mut used = vec![false; per as usize];
        for &(index, key, len, seq) in pages {
            if index >= per || slot_bytes_for(len as usize) != slot_bytes {
                continue;
            }
            if let Some(old) = self.live.get(&key) {
                if old.entry.seq >= seq {
                    continue;
                }
                self.remove(key);
            }
            used[index as usize] = true;
            let slot = SlotRef {
                segment: seg,
                index,
            };
            self.insert_live(
                key,
                class,
                seq,
                DiskEntry {
                    slot,
                    slot_bytes,
                    len,
                    seq,
                },
            );
            self.tick = self.tick.max(seq);
        }
        self.classes[class]
            .free
            .extend(
                (0..per)
                    .rev()
                    .filter(|&i| !used[i as usize])
                    .map(|index| SlotRef {
                        segment: seg,
                        index,
                    }),
            );
    }

    /// The highest sequence number seen: new writes continue after it.
    pub fn max_seq(&self) -> u64 {
        self.live.values().map(|l| l.entry.seq).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u128) -> KeyHash {
        KeyHash(i)
    }

    fn geometry() -> Geometry {
        // 4 segments of 64 KiB: 3 slots of 20 KiB (16 KiB pages) each.
        Geometry {
            segment_bytes: 64 << 10,
            segments: 4,
            shards: 1,
        }
    }

    fn write(ix: &mut SlabIndex, k: u128, len: usize, seq: u64) -> Reservation {
        let r = ix.reserve(len).expect("room");
        ix.commit(&r, key(k), len as u32, seq);
        r
    }

    #[test]
    fn fills_segments_then_evicts_the_least_recently_used() {
        let mut ix = SlabIndex::new(geometry());
        let first = write(&mut ix, 1, 16 << 10, 1);
        assert!(first.new_segment);
        for k in 2..=12 {
            let r = write(&mut ix, k, 16 << 10, k as u64);
            assert_eq!(r.evicted, None);
        }
        assert_eq!(ix.keys(), 12);
        assert_eq!(ix.bytes_used(), 12 * (16 << 10));
        ix.touch(key(1));
        // Full: the next write evicts key 2 (key 1 was used since).
        let r = write(&mut ix, 13, 16 << 10, 13);
        assert_eq!(r.evicted, Some(key(2)));
        assert!(ix.contains(key(1)) && !ix.contains(key(2)));
        assert_eq!(ix.keys(), 12);
        assert_eq!(ix.evictions(), 1);
    }

    #[test]
    fn a_second_size_class_takes_its_own_segment_and_oversized_pages_are_refused() {
        let mut ix = SlabIndex::new(geometry());
        write(&mut ix, 1, 16 << 10, 1);
        let r = write(&mut ix, 2, 4 << 10, 2);
        assert!(r.new_segment);
        assert_ne!(ix.get(key(1)).unwrap().slot.segment, r.slot.segment);
        assert_eq!(ix.reserve(64 << 10), None, "a page larger than a segment");
    }

    #[test]
    fn removed_and_aborted_slots_are_reused() {
        let mut ix = SlabIndex::new(geometry());
        let r = write(&mut ix, 1, 16 << 10, 1);
        assert!(ix.remove(key(1)));
        assert!(!ix.remove(key(1)));
        let again = ix.reserve(16 << 10).unwrap();
        assert_eq!(again.slot, r.slot);
        ix.abort(&again);
        assert_eq!(ix.reserve(16 << 10).unwrap().slot, r.slot);
        assert_eq!(ix.keys(), 0);
    }

    #[test]
    fn restore_keeps_the_newest_copy_and_orders_the_lru_by_write() {
        let mut ix = SlabIndex::new(geometry());
        let s = slot_bytes_for(16 << 10);
        ix.restore_segment(0, s, &[(0, key(5), 16 << 10, 7), (1, key(6), 16 << 10, 3)]);
        ix.restore_segment(1, s, &[(2, key(5), 16 << 10, 9), (0, key(6), 100, 4)]);
        assert_eq!(
            ix.get(key(5)).unwrap().slot,
            SlotRef {
                segment: 1,
                index: 2
            }
        );
        // Key 6's second copy has the wrong length for the segment: ignored.
        assert_eq!(ix.get(key(6)).unwrap().seq, 3);
        assert_eq!(ix.keys(), 2);
        assert_eq!(ix.max_seq(), 9);
        // 6 free slots in two segments (one slot of segment 0 was key 5's
        // stale copy and is free), then segments 2 and 3, then eviction.
        let mut evicted = None;
        for k in 0..(2 * 3 - 2 + 2 * 3 + 1) {
            let r = ix.reserve(16 << 10).unwrap();
            ix.commit(&r, key(100 + k), 16 << 10, 20 + k as u64);
            evicted = evicted.or(r.evicted);
        }
        assert_eq!(evicted, Some(key(6)), "the oldest write goes first");
    }
}
