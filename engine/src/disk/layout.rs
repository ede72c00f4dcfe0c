//! The on-disk format of a shard's slab file: geometry and the three kinds
//! of 4 KiB header blocks (file, segment, slot).
//!
//! ```text
//!  0            4 KiB                 4 KiB + S            4 KiB + 2S
//!  | file header | segment 0           | segment 1           | ...
//!                | seg hdr | slot | slot | ... (slot = 4 KiB header + page rounded to 4 KiB)
//! ```
//!
//! Every header carries the file's random `instance`, so a file that was
//! reset (new geometry) never resurrects the headers of its former life, and
//! its own checksum (xxh3-64), so a torn header block reads as "nothing
//! here". A slot header also carries the page's key, length, write sequence
//! number (its generation) and the xxh3-64 of the page bytes: a page whose
//! bytes do not hash to that value (torn write, bit rot, flipped byte) is
//! never returned.

use crate::keys::KeyHash;
use xxhash_rust::xxh3::xxh3_64;

/// Unit of O_DIRECT I/O, header size and slot alignment.
pub const BLOCK: usize = 4096;

/// Largest segment: big enough that a segment holds hundreds of 128 KiB
/// pages, small enough that a second page size still finds free segments.
pub const MAX_SEGMENT_BYTES: u64 = 64 << 20;

const FILE_MAGIC: [u8; 8] = *b"PCSLAB01";
const SEGMENT_MAGIC: [u8; 8] = *b"PCSEG001";
const SLOT_MAGIC: [u8; 8] = *b"PCPAGE01";

/// Bytes of the slot holding a page of `len` bytes: one header block plus
/// the page rounded up to whole blocks.
pub fn slot_bytes_for(len: usize) -> usize {
    BLOCK + len.div_ceil(BLOCK) * BLOCK
}

/// How a shard's slab file is cut up; fixed for the life of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes of one segment (a multiple of [`BLOCK`]).
    pub segment_bytes: u64,
    /// Number of segments.
    pub segments: u32,
    /// Shards of the node when the file was made: the key-to-shard function
    /// depends on it, so a file of another shard count is not reusable.
    pub shards: u32,
}

/// The smallest shard budget [`Geometry::for_budget`] accepts: the file
/// header block and four segments of two blocks (36 KiB).
pub const MIN_SHARD_BUDGET: u64 = (BLOCK + 4 * 2 * BLOCK) as u64;

impl Geometry {
    /// The geometry for a shard budget of `budget` bytes, or None when the
    /// budget is under [`MIN_SHARD_BUDGET`].
    pub fn for_budget(budget: u64, shards: u32) -> Option<Geometry> {
        let usable = budget.checked_sub(BLOCK as u64)?;
        // Four segments at least, so up to four page sizes can share the
        // file; at most MAX_SEGMENT_BYTES each.
        let segment_bytes = (usable / 4).min(MAX_SEGMENT_BYTES) / BLOCK as u64 * BLOCK as u64;
        if segment_bytes < 2 * BLOCK as u64 {
            return None;
        }
        Some(Geometry {
            segment_bytes,
            segments: (usable / segment_bytes) as u32,
            shards,
        })
    }

    /// Total bytes of the file.
    pub fn file_bytes(&self) -> u64 {
        BLOCK as u64 + u64::from(self.segments) * self.segment_bytes
    }

    /// File offset of segment `seg` (its header block).
    pub fn segment_offset(&self, seg: u32) -> u64 {
        BLOCK as u64 + u64::from(seg) * self.segment_bytes
    }

    /// Slots of `slot_bytes` in one segment (after its header block).
    pub fn slots_per_segment(&self, slot_bytes: usize) -> u32 {
        ((self.segment_bytes - BLOCK as u64) / slot_bytes as u64) as u32
    }

    /// File offset of slot `index` of segment `seg` for `slot_bytes` slots.
    pub fn slot_offset(&self, seg: u32, index: u32, slot_bytes: usize) -> u64 {
        self.segment_offset(seg) + BLOCK as u64 + u64::from(index) * slot_bytes as u64
    }
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

/// Writes `body_len` bytes of header fields followed by their checksum.
fn seal(buf: &mut [u8], body_len: usize) {
    let sum = xxh3_64(&buf[..body_len]);
    put(buf, body_len, &sum.to_le_bytes());
}

fn sealed(buf: &[u8], body_len: usize, magic: &[u8; 8]) -> bool {
    buf.len() >= body_len + 8
        && &buf[..8] == magic
        && xxh3_64(&buf[..body_len]) == u64_at(buf, body_len)
}

/// The file header block: geometry and instance.
pub fn encode_file_header(buf: &mut [u8], g: &Geometry, instance: u64) {
    buf[..BLOCK].fill(0);
    put(buf, 0, &FILE_MAGIC);
    put(buf, 8, &instance.to_le_bytes());
    put(buf, 16, &g.segment_bytes.to_le_bytes());
    put(buf, 24, &g.segments.to_le_bytes());
    put(buf, 28, &g.shards.to_le_bytes());
    seal(buf, 32);
}

/// Geometry and instance of a file header block, None when it is not one.
pub fn decode_file_header(buf: &[u8]) -> Option<(Geometry, u64)> {
    sealed(buf, 32, &FILE_MAGIC).then(|| {
        let g = Geometry {
            segment_bytes: u64_at(buf, 16),
            segments: u32_at(buf, 24),
            shards: u32_at(buf, 28),
        };
        (g, u64_at(buf, 8))
    })
}

/// A segment header block: which slot size the segment was given to.
pub fn encode_segment_header(buf: &mut [u8], instance: u64, slot_bytes: usize) {
    buf[..BLOCK].fill(0);
    put(buf, 0, &SEGMENT_MAGIC);
    put(buf, 8, &instance.to_le_bytes());
    put(buf, 16, &(slot_bytes as u64).to_le_bytes());
    seal(buf, 24);
}

/// The slot size of a segment header of this file's `instance`.
pub fn decode_segment_header(buf: &[u8], instance: u64) -> Option<usize> {
    (sealed(buf, 24, &SEGMENT_MAGIC) && u64_at(buf, 8) == instance)
        .then(|| u64_at(buf, 16) as usize)
}

/// What a slot header says about the page after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotHeader {
    /// The page's key.
    pub key: KeyHash,
    /// Page length in bytes.
    pub len: u32,
    /// Write sequence number: the slot's generation. On restart the highest
    /// one wins when a key was written twice, and it orders the LRU.
    pub seq: u64,
    /// xxh3-64 of the page bytes.
    pub checksum: u64,
}

/// Writes a slot header into the first block of `buf`.
pub fn encode_slot_header(buf: &mut [u8], instance: u64, h: &SlotHeader) {
    buf[..BLOCK].fill(0);
    put(buf, 0, &SLOT_MAGIC);
    put(buf, 8, &instance.to_le_bytes());
    put(buf, 16, &h.key.to_be_bytes());
    put(buf, 32, &h.len.to_le_bytes());
    put(buf, 40, &h.seq.to_le_bytes());
    put(buf, 48, &h.checksum.to_le_bytes());
    seal(buf, 56);
}

/// The slot header of this file's `instance` in `buf`, None when the block
/// is empty, torn, or from a former life of the file.
pub fn decode_slot_header(buf: &[u8], instance: u64) -> Option<SlotHeader> {
    if !sealed(buf, 56, &SLOT_MAGIC) || u64_at(buf, 8) != instance {
        return None;
    }
    Some(SlotHeader {
        key: KeyHash::from_be_bytes(buf[16..32].try_into().expect("16 bytes")),
        len: u32_at(buf, 32),
        seq: u64_at(buf, 40),
        checksum: u64_at(buf, 48),
    })
}

/// The checksum stored for page bytes.
pub fn page_checksum(page: &[u8]) -> u64 {
    xxh3_64(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_fits_the_budget_and_slots_fit_segments() {
        let g = Geometry::for_budget(32 << 20, 2).unwrap();
        assert!(g.file_bytes() <= 32 << 20);
        assert_eq!(g.segments, 4);
        assert_eq!(g.segment_bytes % BLOCK as u64, 0);
        let slot = slot_bytes_for(128 << 10);
        assert_eq!(slot, 132 << 10);
        let per = g.slots_per_segment(slot);
        let last_end = g.slot_offset(g.segments - 1, per - 1, slot) + slot as u64;
        assert!(last_end <= g.file_bytes());
        // A huge budget is cut into 64 MiB segments.
        let big = Geometry::for_budget(100 << 30, 1).unwrap();
        assert_eq!(big.segment_bytes, MAX_SEGMENT_BYTES);
        assert!(Geometry::for_budget(8 << 10, 1).is_none());
        // The smallest budget the start-up message names is the real one.
        assert_eq!(MIN_SHARD_BUDGET, 36 << 10);
        assert!(Geometry::for_budget(MIN_SHARD_BUDGET, 1).is_some());
        assert!(Geometry::for_budget(MIN_SHARD_BUDGET - 1, 1).is_none());
    }

    #[test]
    fn headers_round_trip_and_reject_damage_and_other_instances() {
        let mut buf = vec![0u8; BLOCK];
        let h = SlotHeader {
            key: KeyHash::from_be_bytes([7; 16]),
            len: 5000,
            seq: 42,
            checksum: page_checksum(b"abc"),
        };
        encode_slot_header(&mut buf, 9, &h);
        assert_eq!(decode_slot_header(&buf, 9), Some(h));
        assert_eq!(decode_slot_header(&buf, 10), None, "another instance");
        buf[33] ^= 1;
        assert_eq!(decode_slot_header(&buf, 9), None, "a flipped bit");
        assert_eq!(decode_slot_header(&[0u8; BLOCK], 9), None, "an empty block");

        encode_segment_header(&mut buf, 9, 20480);
        assert_eq!(decode_segment_header(&buf, 9), Some(20480));
        assert_eq!(decode_segment_header(&buf, 8), None);

        let g = Geometry::for_budget(1 << 20, 3).unwrap();
        encode_file_header(&mut buf, &g, 77);
        assert_eq!(decode_file_header(&buf), Some((g, 77)));
        buf[20] ^= 0x80;
        assert_eq!(decode_file_header(&buf), None);
    }
}
