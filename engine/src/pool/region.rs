//! The memory behind the published pool: one anonymous mapping per node.
//!
//! Why one mapping: a remote reader names a page by (offset, generation), and
//! the RDMA rails register the pool once, so the whole pool must be one
//! contiguous range. The mapping is split into per-shard ranges aligned to 2 MiB
//! so each shard can bind its range to its own NUMA node and pre-fault it from
//! its own thread (first touch lands on the right node).

use memmap2::{Advice, MmapMut, MmapOptions};
use std::io;

/// Alignment of every slot, and the smallest slot: the page size of the host.
pub const SLOT_ALIGN_BYTES: usize = 4096;

/// Alignment of each shard's range: one x86-64 huge page.
pub const HUGE_PAGE_BYTES: usize = 2 << 20;

/// How the region's memory was obtained; reported in the startup log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageBacking {
    /// `MAP_HUGETLB` 2 MiB pages from the reserved pool (`vm.nr_hugepages`).
    HugeTlb,
    /// Normal pages with `MADV_HUGEPAGE` accepted: the kernel may use
    /// transparent huge pages.
    TransparentHuge,
    /// Normal 4 KiB pages (THP advice refused).
    Normal,
}

/// One anonymous, private, read-write mapping holding every pool slot of a node.
pub struct PoolRegion {
    map: MmapMut,
    backing: PageBacking,
}

impl std::fmt::Debug for PoolRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolRegion")
            .field("len_bytes", &self.map.len())
            .field("backing", &self.backing)
            .finish()
    }
}

impl PoolRegion {
    /// Maps `len_bytes` (rounded up to a whole huge page) of anonymous memory.
    ///
    /// Tries reserved huge pages first, then falls back to normal pages with
    /// transparent-huge-page advice. Memory is not touched here: shards
    /// pre-fault their own ranges (see [`prefault`]).
    pub fn allocate(len_bytes: usize) -> io::Result<Self> {
        if len_bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "published pool size is 0 bytes",
            ));
        }
        let len_bytes = len_bytes.div_ceil(HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES;
        match MmapOptions::new().len(len_bytes).huge(Some(21)).map_anon() {
            Ok(map) => {
                return Ok(Self {
                    map,
                    backing: PageBacking::HugeTlb,
                })
            }
            Err(err) => tracing::debug!(
                "no reserved 2 MiB huge pages for the published pool ({err}); using normal pages"
            ),
        }
        let map = MmapOptions::new().len(len_bytes).map_anon()?;
        let backing = match map.advise(Advice::HugePage) {
            Ok(()) => PageBacking::TransparentHuge,
            Err(err) => {
                tracing::debug!("MADV_HUGEPAGE refused for the published pool: {err}");
                PageBacking::Normal
            }
        };
        Ok(Self { map, backing })
    }

    /// First byte of the region.
    pub fn base(&self) -> *mut u8 {
        self.map.as_ptr() as *mut u8
    }

    /// Length of the region in bytes (a whole number of huge pages).
    pub fn len_bytes(&self) -> usize {
        self.map.len()
    }

    /// How the memory is backed.
    pub fn backing(&self) -> PageBacking {
        self.backing
    }

    /// Splits the region into `shards` contiguous ranges `(offset, len)`.
    ///
    /// Ranges are 2 MiB aligned when the region is large enough, so NUMA binding
    /// and huge pages never straddle two shards; otherwise 4 KiB aligned.
    pub fn split(&self, shards: usize) -> Vec<(usize, usize)> {
        split_range(self.len_bytes(), shards)
    }
}

/// Splits `len_bytes` into `shards` aligned, contiguous, non-overlapping ranges.
pub fn split_range(len_bytes: usize, shards: usize) -> Vec<(usize, usize)> {
    assert!(shards > 0, "a node has at least one shard");
    let align = if len_bytes / shards >= HUGE_PAGE_BYTES {
        HUGE_PAGE_BYTES
    } else {
        SLOT_ALIGN_BYTES
    };
    let units = len_bytes / align;
    let mut ranges = Vec::with_capacity(shards);
    let mut offset = 0;
    for shard in 0..shards {
        // Spread the remainder over the first shards so sizes differ by at most one unit.
        let shard_units = units / shards + usize::from(shard < units % shards);
        let len = shard_units * align;
        ranges.push((offset, len));
        offset += len;
    }
    debug_assert!(offset <= len_bytes);
    ranges
}

/// Touches every page of `[ptr, ptr + len)` so the first `set` does not pay
/// page faults. Uses `MADV_POPULATE_WRITE` (one syscall) and falls back to
/// writing one byte per 4 KiB page on kernels without it.
///
/// # Safety
/// The range must be mapped, writable, and not in use by anyone else yet.
pub unsafe fn prefault(ptr: *mut u8, len: usize) {
    if len == 0 {
        return;
    }
    let rc = libc::madvise(ptr.cast(), len, libc::MADV_POPULATE_WRITE);
    if rc == 0 {
        return;
    }
    for page in (0..len).step_by(SLOT_ALIGN_BYTES) {
        std::ptr::write_volatile(ptr.add(page), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_without_overlap_and_aligns() {
        for (len, shards) in [(64 << 20, 3), (8 << 20, 4), (1 << 20, 2), (4096 * 7, 3)] {
            let ranges = split_range(len, shards);
            assert_eq!(ranges.len(), shards);
            let mut end = 0;
            for &(off, l) in &ranges {
                assert_eq!(off, end, "ranges are contiguous");
                assert_eq!(off % SLOT_ALIGN_BYTES, 0);
                assert_eq!(l % SLOT_ALIGN_BYTES, 0);
                end = off + l;
            }
            assert!(end <= len);
            assert!(
                len - end < shards * HUGE_PAGE_BYTES,
                "little is left unused"
            );
        }
        let big = split_range(64 << 20, 3);
        assert!(big
            .iter()
            .all(|&(o, l)| o % HUGE_PAGE_BYTES == 0 && l % HUGE_PAGE_BYTES == 0));
    }

    #[test]
    fn allocate_rounds_up_and_prefaults() {
        let region = PoolRegion::allocate(3 << 20).unwrap();
        assert_eq!(region.len_bytes(), 4 << 20);
        unsafe { prefault(region.base(), region.len_bytes()) };
        let bytes = unsafe { std::slice::from_raw_parts(region.base(), region.len_bytes()) };
        assert!(
            bytes.iter().all(|&b| b == 0),
            "anonymous memory starts zeroed"
        );
        assert!(PoolRegion::allocate(0).is_err());
    }
}
