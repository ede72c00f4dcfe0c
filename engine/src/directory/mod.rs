//! The key directory: which node (and which of its shards, slots and
//! generations) holds a page, plus the reader-side cache of resolved locations.
//!
//! PeerCache has no master. Every node keeps its pages in its own published
//! pool and tells the cluster where they are by writing `key -> location`
//! entries to the key's `directory_replicas` owners on the consistent-hash
//! [`Ring`](crate::ring::Ring). On an owner node the entries are split once
//! more by [`KeyHash::shard`](crate::keys::KeyHash::shard), and each shard
//! thread owns one [`DirectoryTable`] exclusively, so nothing here locks and
//! nothing here does I/O: these are the data structures the network layer
//! feeds, not the protocol.
//!
//! Why a hand-written table ([`table`]) rather than `std::collections::HashMap`:
//! the directory is the largest structure a node keeps besides the pool itself
//! (one entry per published page, times `directory_replicas`), and its budget
//! is 64 bytes per entry *including* the index. A `HashMap` keeps
//! `buckets = next_power_of_two(entries * 8 / 7)`, so right after a doubling it
//! spends 2.3 buckets per entry: at one million 40-byte entries that is 2^21
//! buckets x 41 bytes = 86 B/entry. The table here packs an entry into one
//! 40-byte slot, grows by 1.25x instead of 2x and keeps its load between 0.656
//! and 0.82 as it grows, which bounds it to 61 B/entry at every size past its
//! start-up capacity (the figures measured by the tests are in [`table`]).
//!
//! Why only one location per key: keys are content hashes of token pages, so
//! every producer of a key holds identical bytes; the directory only has to
//! know *one* place to read them. The newest put wins because it is the most
//! likely to still be resident.
//!
//! [`LocationCache`] ([`cache`]) lives on the reader side: it keeps what a
//! batch `exists` resolved for the `get` that follows (the exists -> get
//! handoff) and, when `directory_read_cache_ttl` is set, hot locations for
//! that long. Stale entries are harmless there: every read checks the slot
//! generation, and a miss invalidates the cached location.

pub mod cache;
mod slot_array;
pub mod table;

#[cfg(test)]
mod tests;

pub use cache::{LocationCache, LocationCacheCounters, DEFAULT_CACHE_ENTRIES, HANDOFF_TTL};
pub use table::{DirectoryTable, MAX_NODES};

use std::fmt;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::pool::Location;

/// Largest slot offset a directory entry can carry: 2^48 - 1 bytes (256 TiB),
/// because the offset shares one `u64` with the 16-bit shard number.
pub const MAX_OFFSET: u64 = (1 << 48) - 1;

/// Largest page length a directory entry can carry: 2^31 - 1 bytes, because
/// the length shares one `u32` with the resident bit.
pub const MAX_LEN_BYTES: u32 = (1 << 31) - 1;

/// A cluster member as directory entries name it: the xxh3-64 of its node id,
/// seeded with its incarnation (one per process start).
///
/// Entries store this 8-byte value instead of the node id string, so they stay
/// fixed-size; the network layer maps it back to an address through the
/// membership it already holds. 64 bits make two node ids colliding
/// negligible (about 3e-14 for a thousand nodes).
///
/// Why the incarnation: a node restarted under the same `node_id` starts its
/// pool's slots and generations afresh, so a location its previous process
/// published (still in a directory, a read cache or a handoff) can name the
/// same slot and generation as another page now. Naming each process
/// lifetime separately makes such a location unroutable once the membership
/// shows the new process, and refused by the new process before that
/// (`DataRead::node`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct NodeRef(pub u64);

impl NodeRef {
    /// The reference of the process of `node_id` started as `incarnation`
    /// (xxh3-64 of the id's bytes, seeded with the incarnation).
    #[inline]
    pub fn of(node_id: &str, incarnation: u64) -> NodeRef {
        NodeRef(xxh3_64_with_seed(node_id.as_bytes(), incarnation))
    }
}

impl fmt::Display for NodeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Where a page lives: which node, which of its shards, and which pool slot.
///
/// `offset`, `generation` and `len` are the node's pool [`Location`]; a reader
/// hands them back to that node (or reads them one-sided) and the generation
/// check rejects the read if the slot was reused meanwhile.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct DirLocation {
    /// The node holding the page.
    pub node: NodeRef,
    /// The shard of that node whose pool range holds the slot.
    pub shard: u16,
    /// Byte offset of the slot from the start of the node's pool region;
    /// at most [`MAX_OFFSET`] to be stored in a [`DirectoryTable`].
    pub offset: u64,
    /// Slot generation when the page was written (see
    /// [`Location::generation`]).
    pub generation: u64,
    /// Page length in bytes; at most [`MAX_LEN_BYTES`] to be stored.
    pub len: u32,
    /// Whether the page is in the node's memory pool (`true`) or only on its
    /// disk tier, from where a read must ask the node to promote it first.
    pub resident: bool,
}

impl DirLocation {
    /// The directory entry for a page at `location` in `shard` of `node`.
    #[inline]
    pub fn from_pool(node: NodeRef, shard: u16, location: Location, resident: bool) -> Self {
        DirLocation {
            node,
            shard,
            offset: location.offset,
            generation: location.generation,
            len: location.len,
            resident,
        }
    }

    /// The pool location on the data node, as its pool validates it.
    #[inline]
    pub fn pool_location(&self) -> Location {
        Location {
            offset: self.offset,
            generation: self.generation,
            len: self.len,
        }
    }

    /// Checks that the location fits the packed entry format.
    ///
    /// # Errors
    ///
    /// [`DirectoryError::OffsetTooLarge`] or [`DirectoryError::LenTooLarge`].
    pub fn check_packable(&self) -> Result<(), DirectoryError> {
        if self.offset > MAX_OFFSET {
            return Err(DirectoryError::OffsetTooLarge {
                offset: self.offset,
            });
        }
        if self.len > MAX_LEN_BYTES {
            return Err(DirectoryError::LenTooLarge { len: self.len });
        }
        Ok(())
    }
}

/// Why a directory entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// The slot offset does not fit the 48 bits an entry keeps for it.
    #[error("slot offset {offset} exceeds the directory limit of {MAX_OFFSET} (2^48-1); the sending node's pool is larger than 256 TiB or its entry is corrupt")]
    OffsetTooLarge {
        /// The rejected offset.
        offset: u64,
    },
    /// The page length does not fit the 31 bits an entry keeps for it.
    #[error("page length {len} bytes exceeds the directory limit of {MAX_LEN_BYTES} (2^31-1); pages must be smaller than 2 GiB")]
    LenTooLarge {
        /// The rejected length.
        len: u32,
    },
    /// The table already references [`MAX_NODES`] distinct nodes.
    #[error("directory shard already references {MAX_NODES} distinct nodes; drop departed nodes (drop_node) before adding more")]
    TooManyNodes,
    /// An entry of a batch was refused; the entries before it were applied.
    #[error("entry {index} of the batch was refused: {source}")]
    InBatch {
        /// Position of the refused entry in the batch.
        index: usize,
        /// Why it was refused.
        source: Box<DirectoryError>,
    },
}

/// Mixes the two halves of a key hash into 64 well-spread bits.
///
/// A key's halves are uniform over the whole key space, but not over the keys
/// one table holds: its owner node only holds keys whose high half lands on
/// its ring arcs, and its shard only keys whose low half has particular top
/// bits. Their low bits stay uniform, so folding the halves and multiplying
/// (keeping both product halves) spreads that uniformity over all 64 bits.
/// One multiply, no branches.
#[inline]
pub(crate) fn mix(key_lo: u64, key_hi: u64) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let m = u128::from(key_lo ^ key_hi.rotate_left(32)) * u128::from(K);
    (m as u64) ^ ((m >> 64) as u64)
}
