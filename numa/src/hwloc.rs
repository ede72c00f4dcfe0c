//! The process-wide hwloc topology, loaded once and shared.
//!
//! Loading a topology walks /sys and /proc and takes milliseconds, and its content
//! (objects, cpusets, nodesets) does not change while the process runs, so it is
//! loaded on first use and kept for the life of the process. hwlocality's
//! `Topology` is `Sync`: queries and binding calls only read it.

use std::sync::OnceLock;

use tracing::warn;

static HWLOC_TOPOLOGY: OnceLock<Option<hwlocality::Topology>> = OnceLock::new();

/// hwloc's view of this machine, or `None` when hwloc cannot load one.
///
/// The failure is logged once, here, because every caller degrades the same way.
pub(crate) fn topology() -> Option<&'static hwlocality::Topology> {
    HWLOC_TOPOLOGY
        .get_or_init(|| match hwlocality::Topology::new() {
            Ok(topology) => Some(topology),
            Err(error) => {
                warn!(
                    %error,
                    "hwloc could not load this machine's topology: shards are placed \
                     on the CPUs of this process's affinity mask as one NUMA node, and \
                     memory binding is off"
                );
                None
            }
        })
        .as_ref()
}

/// Number of NUMA nodes hwloc lets this process use; 0 without hwloc.
///
/// This counts memory-only nodes too (CXL, HBM, GPU memory), which
/// [`crate::Topology`] leaves out because no shard can run there.
pub(crate) fn numa_node_count() -> usize {
    topology().map_or(0, |topology| {
        topology.nodeset().weight().unwrap_or(usize::MAX)
    })
}
