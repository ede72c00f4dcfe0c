//! The published pool: the only memory of a node that peers may read.
//!
//! One region per node ([`region::PoolRegion`]), sized
//! `global_segment_size / tp_size`, split into one range per shard. Each shard
//! owns the bookkeeping of its range ([`slots::ShardPool`]): slots, LRU,
//! generations and quarantine. A page lives in the range of the shard its key
//! hashes to, so no two shards ever touch the same slot.

pub mod region;
pub mod slots;

pub use region::{PageBacking, PoolRegion, SLOT_ALIGN_BYTES};
pub use slots::{Insert, Location, PoolCounters, PoolError, ShardPool};
