//! One shard's part of a node's directory: a compact `key -> location` table.
//!
//! Budget: 64 bytes per entry including the index, at any size (see the module
//! docs of [`crate::directory`] for why `std::collections::HashMap` cannot meet
//! it). Layout:
//!
//! - **One 40-byte slot per entry** (`Slot`): the key as two `u64` (align 8,
//!   where `u128` would force align 16 and pad the slot to 48), offset (48
//!   bits) and shard (16 bits) in one `u64`, the generation, the node as a
//!   `u32` index into a per-table interning list of [`NodeRef`]s, and length
//!   (31 bits) plus the resident bit in one `u32`. An empty slot is marked by
//!   the node index `EMPTY` (`u32::MAX`), so there are no control bytes.
//! - **Open addressing, linear probing, Robin Hood insertion**: a lookup reads
//!   consecutive slots from the key's home slot and stops at an empty slot or
//!   at a slot whose entry sits closer to its own home than the probe does, so
//!   a miss costs about as much as a hit. **Deletion shifts the following
//!   entries back** instead of leaving tombstones, so the table never degrades
//!   with churn and needs no periodic cleanup.
//! - **64 sub-tables** selected by the top 6 bits of the mixed hash, each with
//!   an arbitrary (not power-of-two) capacity. A sub-table grows by 1.25x when
//!   its load would pass 0.82, so once past its start-up capacity its load
//!   stays within [0.656, 0.82]: between 48.8 and 61 bytes per entry.
//!   Measured (no hint, random keys): 50.8 B/entry at 700 k entries, 55.6 at
//!   1 M, 53.5 at 1.3 M, 49.8..59.7 over 10 k..1.3 M (50.4 at 1 M when sized
//!   for 1 M); `std` `HashMap` with the same 40-byte entries: 61.4, 86.0 and
//!   66.1. Growing one sub-table rehashes 1/64 of the table, which bounds the
//!   pause a put can cause on the shard's event loop (a 2x-growth single
//!   table would stall the shard for a full rehash).
//!
//! Capacity is chosen at construction from an expected-entries hint (memory
//! sized at start-up); growth past it is the fallback, and bulk removals
//! ([`DirectoryTable::drop_node`], [`DirectoryTable::retain_owned`]) shrink a
//! sub-table back towards the hint when its load falls below the lower bound.
//! Single removals ([`DirectoryTable::remove_if_node`]) never resize, so that
//! put/remove churn around a boundary cannot thrash; they can leave the load
//! below the bound until the next growth or bulk removal, never the capacity
//! above what the peak number of entries needed.
//! While a sub-table is being resized its old and new slot arrays coexist
//! (2.25x that sub-table, i.e. a few percent of the table at most).

use super::slot_array::SlotArray;
use crate::keys::KeyHash;

use super::{mix, DirLocation, DirectoryError, NodeRef};

/// Most distinct nodes one table references at a time. Entries name their
/// node by a `u32` index; the bound keeps the interning list (searched by
/// binary search on every put) small and rejects a runaway membership instead
/// of growing without limit.
pub const MAX_NODES: usize = 1 << 16;

/// Node index of an empty slot.
const EMPTY: u32 = u32::MAX;

/// log2 of the number of sub-tables.
const SUBTABLES_LOG2: u32 = 6;

/// Number of sub-tables a table is split into.
const SUBTABLES: usize = 1 << SUBTABLES_LOG2;

/// Smallest sub-table capacity, in slots.
const MIN_SUBTABLE_SLOTS: usize = 8;

/// Maximum load, in per-mille: a sub-table grows before exceeding it. Robin
/// Hood linear probing at 0.82 averages ~2.3 extra slots read per hit, all in
/// the same or the next cache lines.
const MAX_LOAD_PERMILLE: usize = 820;

/// Load a sub-table is resized to when it grows or shrinks, in per-mille:
/// the maximum divided by the growth factor 1.25 (1.25 = 820 / 656).
const MIN_LOAD_PERMILLE: usize = 656;

/// Bits of the offset inside the packed `offset_shard` word.
const OFFSET_BITS: u32 = 48;

/// Mask of the offset inside `offset_shard`.
const OFFSET_MASK: u64 = (1 << OFFSET_BITS) - 1;

/// The resident flag inside `len_resident`.
const RESIDENT_BIT: u32 = 1 << 31;

/// One table slot: a packed directory entry (or an empty slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    /// Low 64 bits of the key hash.
    key_lo: u64,
    /// High 64 bits of the key hash.
    key_hi: u64,
    /// Slot offset (low 48 bits) and shard (high 16 bits).
    offset_shard: u64,
    /// Slot generation.
    generation: u64,
    /// Index into the table's [`NodeInterner`], or [`EMPTY`].
    node: u32,
    /// Page length (low 31 bits) and the resident flag (bit 31).
    len_resident: u32,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 40);
const _: () = assert!(std::mem::align_of::<Slot>() == 8);

impl Slot {
    const VACANT: Slot = Slot {
        key_lo: 0,
        key_hi: 0,
        offset_shard: 0,
        generation: 0,
        node: EMPTY,
        len_resident: 0,
    };

    /// Packs `loc` for the node at interning index `node`. The caller has
    /// checked [`DirLocation::check_packable`].
    #[inline]
    fn pack(key: KeyHash, loc: &DirLocation, node: u32) -> Slot {
        debug_assert!(loc.check_packable().is_ok());
        Slot {
            key_lo: key.0 as u64,
            key_hi: (key.0 >> 64) as u64,
            offset_shard: loc.offset | (u64::from(loc.shard) << OFFSET_BITS),
            generation: loc.generation,
            node,
            len_resident: loc.len | if loc.resident { RESIDENT_BIT } else { 0 },
        }
    }

    /// Unpacks the location, given the node the slot's index stands for.
    #[inline]
    fn unpack(&self, node: NodeRef) -> DirLocation {
        DirLocation {
            node,
            shard: (self.offset_shard >> OFFSET_BITS) as u16,
            offset: self.offset_shard & OFFSET_MASK,
            generation: self.generation,
            len: self.len_resident & !RESIDENT_BIT,
            resident: self.len_resident & RESIDENT_BIT != 0,
        }
    }

    #[inline]
    fn is_empty(&self) -> bool {
        self.node == EMPTY
    }

    #[inline]
    fn key(&self) -> KeyHash {
        KeyHash(u128::from(self.key_hi) << 64 | u128::from(self.key_lo))
    }

    #[inline]
    fn hash(&self) -> u64 {
        mix(self.key_lo, self.key_hi)
    }
}

/// Splits a key into its halves and its mixed hash.
#[inline]
fn split(key: KeyHash) -> (u64, u64, u64) {
    let (lo, hi) = (key.0 as u64, (key.0 >> 64) as u64);
    (lo, hi, mix(lo, hi))
}

/// Which sub-table a hash belongs to (its top bits).
#[inline]
fn subtable_of(hash: u64) -> usize {
    (hash >> (64 - SUBTABLES_LOG2)) as usize
}

/// Slots needed to hold `entries` at the minimum load.
#[inline]
fn slots_for(entries: usize) -> usize {
    (entries * 1000)
        .div_ceil(MIN_LOAD_PERMILLE)
        .max(MIN_SUBTABLE_SLOTS)
}

/// Most entries a sub-table of `slots` slots holds before growing. Always
/// leaves at least two slots empty, so a probe always ends and an insert
/// always finds room before the growth check runs.
#[inline]
fn grow_at(slots: usize) -> usize {
    (slots * MAX_LOAD_PERMILLE / 1000).min(slots - 2)
}

/// One sub-table: a Robin Hood linear-probing array of slots.
#[derive(Debug)]
struct SubTable {
    slots: SlotArray<Slot>,
    len: usize,
    /// `grow_at(slots.len())`, cached.
    grow_at: usize,
}

impl SubTable {
    fn with_slots(slots: usize) -> Self {
        let slots = slots.max(MIN_SUBTABLE_SLOTS);
        SubTable {
            slots: SlotArray::filled(slots, Slot::VACANT),
            len: 0,
            grow_at: grow_at(slots),
        }
    }

    /// Home slot of a hash: multiply-shift of the bits below the sub-table
    /// selector, so any capacity works without a division.
    #[inline]
    fn home(&self, hash: u64) -> usize {
        ((u128::from(hash << SUBTABLES_LOG2) * self.slots.len() as u128) >> 64) as usize
    }

    /// How far slot `pos` is from `home`, going forward with wrap-around.
    #[inline]
    fn distance(&self, pos: usize, home: usize) -> usize {
        if pos >= home {
            pos - home
        } else {
            pos + self.slots.len() - home
        }
    }

    #[inline]
    fn next(&self, pos: usize) -> usize {
        if pos + 1 == self.slots.len() {
            0
        } else {
            pos + 1
        }
    }

    /// Distance of the entry in (non-empty) slot `pos` from its home.
    #[inline]
    fn displacement(&self, pos: usize) -> usize {
        self.distance(pos, self.home(self.slots[pos].hash()))
    }

    /// The slot holding the key, if present.
    #[inline]
    fn find(&self, lo: u64, hi: u64, hash: u64) -> Option<usize> {
        let mut pos = self.home(hash);
        let mut dist = 0;
        loop {
            let s = &self.slots[pos];
            if s.is_empty() {
                return None;
            }
            if s.key_lo == lo && s.key_hi == hi {
                return Some(pos);
            }
            // Robin Hood invariant: our key would have displaced this entry.
            if self.displacement(pos) < dist {
                return None;
            }
            dist += 1;
            pos = self.next(pos);
        }
    }

    /// Inserts `new`, or replaces the entry with the same key and returns it.
    /// Grows afterwards if the load passed the maximum.
    fn upsert(&mut self, new: Slot, hash: u64) -> Option<Slot> {
        let mut pos = self.home(hash);
        let mut dist = 0;
        loop {
            let s = self.slots[pos];
            if s.is_empty() {
                self.slots[pos] = new;
                break;
            }
            if s.key_lo == new.key_lo && s.key_hi == new.key_hi {
                self.slots[pos] = new;
                return Some(s);
            }
            let resident = self.displacement(pos);
            if resident < dist {
                // The key is absent (it would sit before this entry): take the
                // slot and carry the richer resident forward.
                self.slots[pos] = new;
                self.place(s, self.next(pos), resident + 1);
                break;
            }
            dist += 1;
            pos = self.next(pos);
        }
        self.len += 1;
        if self.len > self.grow_at {
            let grown = slots_for(self.len).max(self.slots.len() + 1);
            self.resize(grown);
        }
        None
    }

    /// Robin Hood placement of an entry known to be absent, starting at `pos`
    /// where it would be `dist` slots from home. Does not touch `len`.
    fn place(&mut self, mut carry: Slot, mut pos: usize, mut dist: usize) {
        loop {
            let s = &mut self.slots[pos];
            if s.is_empty() {
                *s = carry;
                return;
            }
            let resident = self.displacement(pos);
            if resident < dist {
                std::mem::swap(&mut self.slots[pos], &mut carry);
                dist = resident;
            }
            dist += 1;
            pos = self.next(pos);
        }
    }

    /// Removes the entry at `pos`, shifting the following displaced entries
    /// back by one (no tombstones), and returns it.
    fn remove_at(&mut self, mut pos: usize) -> Slot {
        let removed = self.slots[pos];
        debug_assert!(!removed.is_empty());
        loop {
            let next = self.next(pos);
            let s = self.slots[next];
            if s.is_empty() || self.displacement(next) == 0 {
                break;
            }
            self.slots[pos] = s;
            pos = next;
        }
        self.slots[pos] = Slot::VACANT;
        self.len -= 1;
        removed
    }

    /// Removes every entry for which `keep` is false, at most `limit` of
    /// them, in place; returns how many were removed.
    ///
    /// The scan starts just after an empty slot and goes once around. A
    /// removal shifts only entries the scan has not reached yet back into the
    /// current position (a shift chain stops at an empty slot, and the start
    /// slot stays empty), so each entry is looked at exactly once.
    fn retain(&mut self, limit: usize, keep: &mut impl FnMut(&Slot) -> bool) -> usize {
        if self.len == 0 || limit == 0 {
            return 0;
        }
        let start = self
            .slots
            .iter()
            .position(Slot::is_empty)
            .expect("a sub-table always has an empty slot");
        let mut pos = self.next(start);
        let mut removed = 0;
        let mut left = self.slots.len() - 1;
        while left > 0 && removed < limit {
            let s = self.slots[pos];
            if !s.is_empty() && !keep(&s) {
                self.remove_at(pos);
                removed += 1;
                continue; // re-examine the entry shifted into `pos`
            }
            pos = self.next(pos);
            left -= 1;
        }
        removed
    }

    /// Rehashes into `slots` slots (which must leave the load below the max).
    fn resize(&mut self, slots: usize) {
        let mut fresh = SubTable::with_slots(slots);
        assert!(
            self.len <= fresh.grow_at,
            "directory sub-table resize to {} slots cannot hold {} entries",
            fresh.slots.len(),
            self.len
        );
        for s in self.slots.iter().filter(|s| !s.is_empty()) {
            let home = fresh.home(s.hash());
            fresh.place(*s, home, 0);
        }
        fresh.len = self.len;
        *self = fresh;
    }

    /// After bulk removals: shrinks towards `floor_slots` if the load fell
    /// below the minimum, so memory per entry stays within bounds.
    fn shrink_if_sparse(&mut self, floor_slots: usize) {
        let cap = self.slots.len();
        if cap > floor_slots && self.len * 1000 < cap * MIN_LOAD_PERMILLE {
            let target = slots_for(self.len).max(floor_slots);
            if target < cap {
                self.resize(target);
            }
        }
    }
}

/// The per-table list of nodes entries point at, with reference counts.
///
/// Entries carry a `u32` index instead of the 8-byte [`NodeRef`]; a node's
/// index is freed when its last entry goes, so nodes that left the cluster do
/// not accumulate. Lookup by [`NodeRef`] is a binary search over a sorted
/// list (exact memory accounting, no hashing, and clusters have at most a few
/// thousand nodes).
#[derive(Debug, Default)]
struct NodeInterner {
    /// Index -> node (meaningless while the index is free).
    nodes: Vec<NodeRef>,
    /// Index -> number of entries pointing at it; 0 means free.
    refs: Vec<usize>,
    /// Free indices, reused before the lists grow.
    free: Vec<u32>,
    /// (node, index) for every node in use, sorted by node.
    sorted: Vec<(NodeRef, u32)>,
}

impl NodeInterner {
    fn index_of(&self, node: NodeRef) -> Option<u32> {
        self.sorted
            .binary_search_by_key(&node, |&(n, _)| n)
            .ok()
            .map(|i| self.sorted[i].1)
    }

    /// Adds one reference to `node`, interning it if needed.
    fn acquire(&mut self, node: NodeRef) -> Result<u32, DirectoryError> {
        match self.sorted.binary_search_by_key(&node, |&(n, _)| n) {
            Ok(i) => {
                let idx = self.sorted[i].1;
                self.refs[idx as usize] += 1;
                Ok(idx)
            }
            Err(at) => {
                if self.sorted.len() >= MAX_NODES {
                    return Err(DirectoryError::TooManyNodes);
                }
                let idx = match self.free.pop() {
                    Some(idx) => {
                        self.nodes[idx as usize] = node;
                        self.refs[idx as usize] = 1;
                        idx
                    }
                    None => {
                        self.nodes.push(node);
                        self.refs.push(1);
                        (self.nodes.len() - 1) as u32
                    }
                };
                self.sorted.insert(at, (node, idx));
                Ok(idx)
            }
        }
    }

    /// Drops one reference to index `idx`, freeing it at zero.
    fn release(&mut self, idx: u32) {
        let r = &mut self.refs[idx as usize];
        debug_assert!(*r > 0, "releasing free node index {idx}");
        *r -= 1;
        if *r == 0 {
            let node = self.nodes[idx as usize];
            let at = self
                .sorted
                .binary_search_by_key(&node, |&(n, _)| n)
                .expect("interned node is in the sorted list");
            self.sorted.remove(at);
            self.free.push(idx);
        }
    }

    /// Frees index `idx` outright (its entries are all gone).
    fn forget(&mut self, idx: u32) {
        self.refs[idx as usize] = 1;
        self.release(idx);
    }

    #[inline]
    fn node(&self, idx: u32) -> NodeRef {
        self.nodes[idx as usize]
    }

    fn memory_bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<NodeRef>()
            + self.refs.capacity() * std::mem::size_of::<usize>()
            + self.free.capacity() * std::mem::size_of::<u32>()
            + self.sorted.capacity() * std::mem::size_of::<(NodeRef, u32)>()
    }
}

/// One shard's part of this node's directory: `key -> location`, one
/// location per key.
///
/// A newer [`put`](Self::put) for a key replaces the old location: keys are
/// content hashes, so every producer of a key holds identical bytes and any
/// one location will do; the newest is the likeliest to be resident. Deletes
/// are conditional on the node ([`remove_if_node`](Self::remove_if_node)) so
/// that a late eviction notice from one producer never removes the entry
/// another producer has since written.
///
/// Owned by one shard thread; not `Sync`-shared, no locks. See the module
/// docs for the memory layout and its bound.
#[derive(Debug)]
pub struct DirectoryTable {
    subtables: Box<[SubTable]>,
    nodes: NodeInterner,
    /// Per-sub-table capacity chosen from the construction hint; bulk
    /// removals never shrink a sub-table below it.
    floor_slots: usize,
    len: usize,
}

impl DirectoryTable {
    /// An empty table sized so that `expected_entries` fit without growing.
    ///
    /// Keys spread over the 64 sub-tables binomially, so each gets headroom
    /// of four standard deviations above its share. Memory is allocated here,
    /// at start-up; growth beyond the hint works but rehashes (one sub-table
    /// at a time).
    pub fn new(expected_entries: usize) -> Self {
        let share = expected_entries.div_ceil(SUBTABLES);
        let headroom = 4 * (share as f64).sqrt().ceil() as usize;
        let per = share + headroom;
        // Room for `per` entries at the maximum load.
        let floor_slots = ((per * 1000).div_ceil(MAX_LOAD_PERMILLE) + 2).max(MIN_SUBTABLE_SLOTS);
        let subtables = (0..SUBTABLES)
            .map(|_| SubTable::with_slots(floor_slots))
            .collect();
        DirectoryTable {
            subtables,
            nodes: NodeInterner::default(),
            floor_slots,
            len: 0,
        }
    }

    /// Records that `key` is at `loc`, replacing any previous location of the
    /// key, which is returned.
    ///
    /// # Errors
    ///
    /// [`DirectoryError::OffsetTooLarge`] / [`DirectoryError::LenTooLarge`]
    /// if `loc` does not fit the packed format, and
    /// [`DirectoryError::TooManyNodes`] if `loc.node` would be the
    /// [`MAX_NODES`]+1-th distinct node. The table is unchanged on error.
    pub fn put(
        &mut self,
        key: KeyHash,
        loc: DirLocation,
    ) -> Result<Option<DirLocation>, DirectoryError> {
        loc.check_packable()?;
        let idx = self.nodes.acquire(loc.node)?;
        let (_, _, hash) = split(key);
        let sub = &mut self.subtables[subtable_of(hash)];
        match sub.upsert(Slot::pack(key, &loc, idx), hash) {
            Some(old) => {
                let prev = old.unpack(self.nodes.node(old.node));
                self.nodes.release(old.node);
                Ok(Some(prev))
            }
            None => {
                self.len += 1;
                Ok(None)
            }
        }
    }

    /// [`put`](Self::put), except that a non-resident location does not
    /// replace another node's resident one: a page some node holds in
    /// memory is read from there at once, where a disk copy would first be
    /// promoted. Producers re-publish their disk pages periodically, and
    /// the newest put winning would otherwise move readers to the disk
    /// copy every time. Returns whether `loc` was stored.
    ///
    /// # Errors
    ///
    /// As [`put`](Self::put).
    pub fn offer(&mut self, key: KeyHash, loc: DirLocation) -> Result<bool, DirectoryError> {
        if !loc.resident {
            if let Some(held) = self.get(key) {
                if held.resident && held.node != loc.node {
                    return Ok(false);
                }
            }
        }
        self.put(key, loc).map(|_| true)
    }

    /// [`put`](Self::put) for a batch, in order; returns how many keys were
    /// new (the rest replaced an existing location).
    ///
    /// # Errors
    ///
    /// [`DirectoryError::InBatch`] naming the first refused entry. The
    /// entries before it stay applied and the ones after it are not; puts
    /// are idempotent, so retrying the corrected batch converges.
    pub fn put_many(
        &mut self,
        entries: &[(KeyHash, DirLocation)],
    ) -> Result<usize, DirectoryError> {
        let mut new_keys = 0;
        for (index, &(key, loc)) in entries.iter().enumerate() {
            match self.put(key, loc) {
                Ok(None) => new_keys += 1,
                Ok(Some(_)) => {}
                Err(e) => {
                    return Err(DirectoryError::InBatch {
                        index,
                        source: Box::new(e),
                    })
                }
            }
        }
        Ok(new_keys)
    }

    /// The location of `key`, if the table has one.
    #[inline]
    pub fn get(&self, key: KeyHash) -> Option<DirLocation> {
        let (lo, hi, hash) = split(key);
        let sub = &self.subtables[subtable_of(hash)];
        sub.find(lo, hi, hash).map(|pos| {
            let s = &sub.slots[pos];
            s.unpack(self.nodes.node(s.node))
        })
    }

    /// [`get`](Self::get) for a batch: `out` is cleared and receives one
    /// answer per key, in order (reuse it across batches to avoid allocating).
    pub fn get_many(&self, keys: &[KeyHash], out: &mut Vec<Option<DirLocation>>) {
        out.clear();
        out.extend(keys.iter().map(|&k| self.get(k)));
    }

    /// Removes the entry of `key` only if it still points at `node`; returns
    /// whether it did.
    ///
    /// This is how eviction notices apply: node A evicting its copy must not
    /// delete the location node B has written for the same key since.
    pub fn remove_if_node(&mut self, key: KeyHash, node: NodeRef) -> bool {
        let Some(idx) = self.nodes.index_of(node) else {
            return false; // no entry can point at a node the table never saw
        };
        let (lo, hi, hash) = split(key);
        let sub = &mut self.subtables[subtable_of(hash)];
        match sub.find(lo, hi, hash) {
            Some(pos) if sub.slots[pos].node == idx => {
                sub.remove_at(pos);
                self.nodes.release(idx);
                self.len -= 1;
                true
            }
            _ => false,
        }
    }

    /// [`remove_if_node`](Self::remove_if_node) for a batch of keys evicted
    /// by one node; returns how many entries were removed.
    pub fn remove_many_if_node(&mut self, keys: &[KeyHash], node: NodeRef) -> usize {
        keys.iter()
            .filter(|&&k| self.remove_if_node(k, node))
            .count()
    }

    /// Marks the entry of `key` resident (in the node's memory pool) or not
    /// (only on its disk tier), if it still points at `node`; returns whether
    /// the entry was found pointing at `node`.
    pub fn set_resident(&mut self, key: KeyHash, node: NodeRef, resident: bool) -> bool {
        let Some(idx) = self.nodes.index_of(node) else {
            return false;
        };
        let (lo, hi, hash) = split(key);
        let sub = &mut self.subtables[subtable_of(hash)];
        match sub.find(lo, hi, hash) {
            Some(pos) if sub.slots[pos].node == idx => {
                let s = &mut sub.slots[pos];
                if resident {
                    s.len_resident |= RESIDENT_BIT;
                } else {
                    s.len_resident &= !RESIDENT_BIT;
                }
                true
            }
            _ => false,
        }
    }

    /// [`set_resident`](Self::set_resident) for a batch of keys of one node;
    /// returns how many entries were found pointing at `node`.
    pub fn set_resident_many(&mut self, keys: &[KeyHash], node: NodeRef, resident: bool) -> usize {
        keys.iter()
            .filter(|&&k| self.set_resident(k, node, resident))
            .count()
    }

    /// Removes every entry pointing at `node` (a node that left the
    /// cluster); returns how many were removed.
    ///
    /// O(1) when the table holds nothing of `node`; otherwise one pass over
    /// the sub-tables, stopping as soon as the node's last entry is gone.
    pub fn drop_node(&mut self, node: NodeRef) -> usize {
        let Some(idx) = self.nodes.index_of(node) else {
            return 0;
        };
        let mut left = self.nodes.refs[idx as usize];
        let total = left;
        for sub in self.subtables.iter_mut() {
            if left == 0 {
                break;
            }
            left -= sub.retain(left, &mut |s: &Slot| s.node != idx);
            sub.shrink_if_sparse(self.floor_slots);
        }
        debug_assert_eq!(left, 0, "node reference count out of step with entries");
        self.nodes.forget(idx);
        self.len -= total;
        total
    }

    /// Keeps only the entries whose key `owned` says this node still owns
    /// (after a ring change); returns how many were removed.
    ///
    /// `owned` is typically "does `ring.owners_into(key, directory_replicas)`
    /// contain this node", with a reused output vector. One pass over the
    /// table, in place.
    pub fn retain_owned(&mut self, mut owned: impl FnMut(KeyHash) -> bool) -> usize {
        let nodes = &mut self.nodes;
        let mut removed = 0;
        for sub in self.subtables.iter_mut() {
            removed += sub.retain(usize::MAX, &mut |s: &Slot| {
                let keep = owned(s.key());
                if !keep {
                    nodes.release(s.node);
                }
                keep
            });
            sub.shrink_if_sparse(self.floor_slots);
        }
        self.len -= removed;
        removed
    }

    /// Number of entries (keys with a location).
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table has no entries.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of distinct nodes the entries currently point at.
    pub fn node_count(&self) -> usize {
        self.nodes.sorted.len()
    }

    /// Number of entries pointing at `node`.
    pub fn entries_of(&self, node: NodeRef) -> usize {
        self.nodes
            .index_of(node)
            .map_or(0, |idx| self.nodes.refs[idx as usize])
    }

    /// Total slots allocated (entries plus free slots).
    pub fn capacity_slots(&self) -> usize {
        self.subtables.iter().map(|s| s.slots.len()).sum()
    }

    /// Heap bytes the table holds: every slot array (from its real length),
    /// the sub-table headers and the node interning lists (from their real
    /// capacities). Excludes only the `DirectoryTable` value itself.
    pub fn memory_bytes(&self) -> usize {
        self.capacity_slots() * std::mem::size_of::<Slot>()
            + self.subtables.len() * std::mem::size_of::<SubTable>()
            + self.nodes.memory_bytes()
    }

    /// Mean distance of entries from their home slot (0 = every entry in its
    /// home slot); a probe reads this many slots beyond the first on average.
    pub fn mean_probe_distance(&self) -> f64 {
        if self.len == 0 {
            return 0.0;
        }
        let total: usize = self
            .subtables
            .iter()
            .map(|sub| {
                (0..sub.slots.len())
                    .filter(|&p| !sub.slots[p].is_empty())
                    .map(|p| sub.displacement(p))
                    .sum::<usize>()
            })
            .sum();
        total as f64 / self.len as f64
    }

    /// Verifies every structural invariant; panics with a description on the
    /// first violation. O(capacity): for tests and debug assertions.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let mut counted = vec![0usize; self.nodes.refs.len()];
        let mut total = 0;
        for (t, sub) in self.subtables.iter().enumerate() {
            let cap = sub.slots.len();
            assert!(cap >= MIN_SUBTABLE_SLOTS);
            assert!(sub.len <= sub.grow_at, "sub-table {t} over its load limit");
            let mut live = 0;
            for pos in 0..cap {
                let s = &sub.slots[pos];
                if s.is_empty() {
                    continue;
                }
                live += 1;
                assert_eq!(subtable_of(s.hash()), t, "entry in the wrong sub-table");
                let d = sub.displacement(pos);
                // Linear probing: no empty slot between home and position.
                let home = sub.home(s.hash());
                let mut p = home;
                for _ in 0..d {
                    assert!(!sub.slots[p].is_empty(), "gap in a probe chain");
                    p = sub.next(p);
                }
                // Robin Hood: the predecessor is at most one step less displaced.
                let prev = (pos + cap - 1) % cap;
                if d > 0 {
                    assert!(sub.displacement(prev) + 1 >= d, "Robin Hood order broken");
                }
                assert!(
                    sub.find(s.key_lo, s.key_hi, s.hash()) == Some(pos),
                    "entry not findable"
                );
                counted[s.node as usize] += 1;
            }
            assert_eq!(live, sub.len, "sub-table {t} length out of step");
            total += live;
        }
        assert_eq!(total, self.len);
        assert_eq!(
            counted, self.nodes.refs,
            "node reference counts out of step"
        );
        for &(node, idx) in &self.nodes.sorted {
            assert!(self.nodes.refs[idx as usize] > 0);
            assert_eq!(self.nodes.nodes[idx as usize], node);
        }
        assert!(self.nodes.sorted.windows(2).all(|w| w[0].0 < w[1].0));
        let in_use = self.nodes.refs.iter().filter(|&&r| r > 0).count();
        assert_eq!(in_use, self.nodes.sorted.len());
        assert_eq!(in_use + self.nodes.free.len(), self.nodes.refs.len());
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn packing_round_trips_extreme_values() {
        let key = KeyHash(u128::MAX - 5);
        let loc = DirLocation {
            node: NodeRef(u64::MAX),
            shard: u16::MAX,
            offset: super::super::MAX_OFFSET,
            generation: u64::MAX,
            len: super::super::MAX_LEN_BYTES,
            resident: true,
        };
        let s = Slot::pack(key, &loc, 7);
        assert_eq!(s.key(), key);
        assert_eq!(s.node, 7);
        assert_eq!(s.unpack(loc.node), loc);
        let zero = DirLocation {
            node: NodeRef(0),
            shard: 0,
            offset: 0,
            generation: 0,
            len: 0,
            resident: false,
        };
        assert_eq!(Slot::pack(KeyHash(0), &zero, 0).unpack(zero.node), zero);
        // Resident flag and shard do not bleed into neighbouring fields.
        let mid = DirLocation {
            shard: 0x8001,
            offset: 1 << 47,
            len: 1 << 30,
            resident: false,
            ..loc
        };
        assert_eq!(Slot::pack(key, &mid, 0).unpack(mid.node), mid);
    }

    #[test]
    fn growth_keeps_load_between_bounds() {
        // Every growth step lands at or above the minimum load.
        for slots in MIN_SUBTABLE_SLOTS..5000 {
            let at = grow_at(slots);
            assert!(at + 2 <= slots);
            let grown = slots_for(at + 1).max(slots + 1);
            assert!(
                at < grow_at(grown),
                "{slots} -> {grown} cannot hold {}",
                at + 1
            );
            if slots > 200 {
                let load = (at + 1) as f64 / grown as f64;
                assert!(load >= 0.650, "{slots} -> {grown}: load {load}");
            }
        }
    }
}
