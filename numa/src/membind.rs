//! Binding a memory range to one NUMA node.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;

use hwlocality::memory::binding::{MemoryBindingFlags, MemoryBindingPolicy};
use tracing::{debug, warn};

/// Bytes as hwloc sees them through a binding call: maybe uninitialized (a fresh
/// mapping) and maybe written by other threads or a NIC while the call runs.
type Area = [UnsafeCell<MaybeUninit<u8>>];

/// Binds the pages holding `[ptr, ptr + len)` to NUMA node `numa_node`
/// (hwloc's bind policy to the node's nodeset, `mbind(MPOL_BIND)` on Linux):
/// pages not yet touched will be allocated on that node. Returns whether the
/// range is now bound.
///
/// Bind before the first touch: pages already allocated elsewhere stay where
/// they are. Binding works on whole pages, so a range that does not start and end
/// on page boundaries also binds its neighbours on the first and last page; pass
/// page-aligned buffers (an mmap) to bind exactly.
///
/// Returns `false`, logged, and changes nothing when: `len` is 0; `ptr` is null
/// or the range wraps the address space; hwloc is unavailable; the machine has
/// one NUMA node (debug: there is nothing to choose); the node does not exist or
/// the kernel refuses (warning). It never panics.
///
/// # Safety
///
/// When `len > 0` and `ptr` is not null, `[ptr, ptr + len)` must lie inside
/// memory mapped into this process for the duration of the call (one
/// allocation or mapping). The bytes may be uninitialized and may be written
/// concurrently; they are neither read nor written.
pub unsafe fn bind_memory(ptr: *const u8, len: usize, numa_node: usize) -> bool {
    if len == 0 {
        debug!(numa_node, "empty range: nothing to bind");
        return false;
    }
    if ptr.is_null() || (ptr as usize).checked_add(len).is_none() || len > isize::MAX as usize {
        warn!(?ptr, len, numa_node, "not a memory range: not bound");
        return false;
    }
    let Some(hwloc) = crate::hwloc::topology() else {
        debug!(numa_node, len, "hwloc unavailable: memory not bound");
        return false;
    };
    let node_count = crate::hwloc::numa_node_count();
    if node_count <= 1 {
        debug!(
            numa_node,
            len, "one NUMA node: binding memory changes nothing"
        );
        return false;
    }

    // SAFETY: the caller guarantees the range is mapped for the whole call; it
    // is non-null and at most isize::MAX bytes (checked above); u8 has alignment
    // 1; MaybeUninit allows uninitialized bytes and UnsafeCell allows concurrent
    // writes through other pointers while this shared slice lives.
    let area: &Area = unsafe { std::slice::from_raw_parts(ptr.cast(), len) };
    match bind_area(hwloc, area, numa_node) {
        Ok(()) => {
            debug!(?ptr, len, numa_node, "memory bound to NUMA node");
            true
        }
        Err(reason) => {
            warn!(
                ?ptr,
                len,
                numa_node,
                %reason,
                "cannot bind memory to NUMA node: pages go where they are first touched"
            );
            false
        }
    }
}

/// Binds `area` to `numa_node` with hwloc, or says why not.
fn bind_area(hwloc: &hwlocality::Topology, area: &Area, numa_node: usize) -> Result<(), String> {
    let node = hwloc.node_with_os_index(numa_node).ok_or_else(|| {
        format!(
            "no NUMA node {numa_node} (this process may use nodes {})",
            hwloc.nodeset()
        )
    })?;
    let nodeset = node
        .nodeset()
        .ok_or_else(|| format!("NUMA node {numa_node} has no nodeset"))?;
    // No MIGRATE: hwlocality refuses it for areas, and callers bind before
    // touching. No STRICT: on Linux it would fail on pages already elsewhere
    // instead of binding the rest.
    hwloc
        .bind_memory_area(
            area,
            nodeset,
            MemoryBindingPolicy::Bind,
            MemoryBindingFlags::empty(),
        )
        .map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use hwlocality::memory::nodeset::NodeSet;

    use super::*;

    /// An anonymous private mapping of `len` bytes, unmapped on drop.
    struct Mapping {
        ptr: *mut u8,
        len: usize,
    }

    impl Mapping {
        fn new(len: usize) -> Mapping {
            // SAFETY: a fresh anonymous mapping, no file, no fixed address.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(ptr, libc::MAP_FAILED, "mmap {len} bytes");
            Mapping {
                ptr: ptr.cast(),
                len,
            }
        }

        fn area(&self) -> &Area {
            // SAFETY: the mapping lives as long as &self.
            unsafe { std::slice::from_raw_parts(self.ptr.cast(), self.len) }
        }

        fn fill_and_check(&self, byte: u8) {
            // SAFETY: the mapping is readable and writable, and only this test
            // touches it.
            let bytes = unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) };
            bytes.fill(byte);
            assert!(bytes.iter().all(|&b| b == byte));
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: ptr and len are those mmap returned.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }

    const PAGE_BYTES: usize = 4096;

    /// A node this process may bind memory to.
    fn first_node() -> usize {
        let hwloc = crate::hwloc::topology().expect("hwloc loads on this machine");
        usize::from(hwloc.nodeset().first_set().expect("at least one NUMA node"))
    }

    #[test]
    fn binds_a_real_mapping_where_binding_means_something() {
        let mapping = Mapping::new(16 * PAGE_BYTES);
        let node = first_node();
        // SAFETY: the mapping outlives the call.
        let bound = unsafe { bind_memory(mapping.ptr, mapping.len, node) };
        // One NUMA node (this machine): a no-op; several: bound.
        assert_eq!(bound, crate::hwloc::numa_node_count() > 1);
        mapping.fill_and_check(0xA5);

        // A range inside the mapping that is not page-aligned.
        // SAFETY: inside the mapping, which outlives the call.
        let bound = unsafe { bind_memory(mapping.ptr.add(100), 3 * PAGE_BYTES, node) };
        assert_eq!(bound, crate::hwloc::numa_node_count() > 1);
        mapping.fill_and_check(0x5A);
    }

    #[test]
    fn hwloc_binding_takes_effect() {
        // Exercises the hwloc call itself, which the public function skips on a
        // single-node machine, and reads the binding back from the kernel.
        let hwloc = crate::hwloc::topology().expect("hwloc loads on this machine");
        let mapping = Mapping::new(8 * PAGE_BYTES);
        let node = first_node();
        bind_area(hwloc, mapping.area(), node).expect("bind to an existing node");

        let (nodeset, policy) = hwloc
            .area_memory_binding::<Area, NodeSet>(mapping.area(), MemoryBindingFlags::STRICT)
            .expect("read the binding back");
        assert_eq!(policy, Some(MemoryBindingPolicy::Bind));
        let mut expected = NodeSet::new();
        expected.set(node);
        assert_eq!(nodeset, expected);
        mapping.fill_and_check(0x11);
    }

    #[test]
    fn hwloc_binding_to_a_missing_node_fails() {
        let hwloc = crate::hwloc::topology().expect("hwloc loads on this machine");
        let mapping = Mapping::new(PAGE_BYTES);
        let error = bind_area(hwloc, mapping.area(), 1_000_000).unwrap_err();
        assert!(error.contains("no NUMA node 1000000"), "{error}");
    }

    #[test]
    fn refuses_ranges_that_are_not_ranges() {
        let mapping = Mapping::new(PAGE_BYTES);
        // SAFETY: nothing is dereferenced for an empty range.
        assert!(!unsafe { bind_memory(mapping.ptr, 0, 0) });
        // SAFETY: a null pointer is refused before any use.
        assert!(!unsafe { bind_memory(std::ptr::null(), PAGE_BYTES, 0) });
        // SAFETY: a range wrapping the address space is refused before any use.
        assert!(!unsafe { bind_memory(usize::MAX as *const u8, 2, 0) });
        // SAFETY: the mapping outlives the call; node 1000000 does not exist.
        assert!(!unsafe { bind_memory(mapping.ptr, mapping.len, 1_000_000) });
    }
}
