//! NUMA placement for PeerCache: this crate owns the answer to "which core does a
//! shard run on, and where does its memory live". It reads the machine's NUMA
//! topology through hwloc ([`Topology`]), maps RDMA NICs to their NUMA node through
//! sysfs ([`Sysfs`]), chooses the cores of a rank's shards so that co-located ranks
//! do not pile onto the same cores ([`place_shards`], [`choose_cpus`]), pins the
//! calling thread to a core ([`pin_current_thread`]) and binds a memory range to a
//! node ([`bind_memory`]). Every operation degrades to a logged no-op where the
//! machine cannot do it (one NUMA node, no hwloc, no permission), so callers never
//! branch on the platform and nothing here panics.
#![warn(missing_docs)]

mod hwloc;
mod membind;
mod pin;
mod placement;
mod sysfs;
#[cfg(test)]
mod testing;
mod topology;

pub use membind::bind_memory;
pub use pin::pin_current_thread;
pub use placement::{choose_cpus, place_shards, ShardPlacement, SHARDS_MAX};
pub use sysfs::Sysfs;
pub use topology::{Topology, TopologyError};
