//! The storage of one directory sub-table's slots.
//!
//! Why not a plain `Box<[T]>`: sub-tables grow by 1.25× and free their old
//! array each time. glibc raises its mmap threshold after such frees, so
//! later arrays come from the heap, and freed heap memory mostly stays
//! resident. At 1 M entries the process then holds about a third more than
//! the table uses. Arrays of at least [`MAPPED_MIN_BYTES`] get an anonymous
//! mapping of their own instead, which goes back to the OS the moment it is
//! dropped. Small arrays stay on the heap, where a mapping would waste most
//! of a page.

use memmap2::{MmapMut, MmapOptions};
use std::ops::{Deref, DerefMut};

/// Arrays at least this large get their own mapping.
pub(super) const MAPPED_MIN_BYTES: usize = 64 << 10;

/// A fixed-length array of `T`, filled with one value at creation.
pub(super) enum SlotArray<T: Copy> {
    /// Small arrays.
    Heap(Box<[T]>),
    /// Large arrays: their own anonymous mapping, `len` elements long.
    Mapped {
        /// Keeps the memory mapped; the elements live at its start.
        map: MmapMut,
        /// Number of elements.
        len: usize,
    },
}

impl<T: Copy> SlotArray<T> {
    /// `len` copies of `fill`.
    pub(super) fn filled(len: usize, fill: T) -> Self {
        let bytes = len * std::mem::size_of::<T>();
        if bytes >= MAPPED_MIN_BYTES {
            // A mapping is page-aligned, which satisfies any `T` alignment
            // below 4 KiB (asserted), and `T: Copy` has no drop glue, so the
            // bytes can be viewed as `T`s once written.
            assert!(std::mem::align_of::<T>() <= 4096);
            if let Ok(mut map) = MmapOptions::new().len(bytes).map_anon() {
                let ptr = map.as_mut_ptr().cast::<T>();
                for i in 0..len {
                    // SAFETY: i < len and the mapping holds len elements.
                    unsafe { ptr.add(i).write(fill) };
                }
                return SlotArray::Mapped { map, len };
            }
            // Mapping refused (address space or map count exhausted): the heap still works.
        }
        SlotArray::Heap(vec![fill; len].into_boxed_slice())
    }
}

impl<T: Copy> Deref for SlotArray<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match self {
            SlotArray::Heap(b) => b,
            // SAFETY: written with `len` initialised elements in `filled`.
            SlotArray::Mapped { map, len } => unsafe {
                std::slice::from_raw_parts(map.as_ptr().cast::<T>(), *len)
            },
        }
    }
}

impl<T: Copy> DerefMut for SlotArray<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            SlotArray::Heap(b) => b,
            // SAFETY: as above; `&mut self` makes the view unique.
            SlotArray::Mapped { map, len } => unsafe {
                std::slice::from_raw_parts_mut(map.as_mut_ptr().cast::<T>(), *len)
            },
        }
    }
}

impl<T: Copy + std::fmt::Debug> std::fmt::Debug for SlotArray<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if matches!(self, SlotArray::Heap(_)) {
            "heap"
        } else {
            "mapped"
        };
        write!(f, "SlotArray({} {kind} slots)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_arrays_use_the_heap_and_large_ones_a_mapping() {
        let small = SlotArray::filled(16, 7u64);
        assert!(matches!(small, SlotArray::Heap(_)));
        assert!(small.iter().all(|&v| v == 7));
        let mut large = SlotArray::filled(MAPPED_MIN_BYTES / 8 + 3, 9u64);
        assert!(matches!(large, SlotArray::Mapped { .. }));
        assert_eq!(large.len(), MAPPED_MIN_BYTES / 8 + 3);
        assert!(large.iter().all(|&v| v == 9));
        large[5] = 1;
        let last = large.len() - 1;
        large[last] = 2;
        assert_eq!((large[5], large[last], large[6]), (1, 2, 9));
    }
}
