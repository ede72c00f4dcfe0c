//! Per-shard counters, summed when someone asks.
//!
//! Each shard owns one [`ShardStats`] and is its only writer, so an update is a
//! plain load + store on a cache line no other shard writes (no locked
//! read-modify-write, no sharing on the hot path). Readers (metrics scrapes,
//! tests) load every shard's values and add them up.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! stats {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// Live counters of one shard (single writer: the shard thread).
        #[derive(Debug, Default)]
        #[repr(align(128))]
        pub struct ShardStats {
            $( $(#[$doc])* pub $name: AtomicU64, )*
        }

        /// A snapshot of counters, for one shard or summed over a node.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct NodeStats {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl ShardStats {
            /// Copies the current values.
            pub fn snapshot(&self) -> NodeStats {
                NodeStats { $( $name: self.$name.load(Ordering::Relaxed), )* }
            }
        }

        impl std::ops::AddAssign for NodeStats {
            fn add_assign(&mut self, o: NodeStats) {
                $( self.$name += o.$name; )*
            }
        }
    };
}

stats! {
    /// Pages offered to `batch_set`.
    write_requests,
    /// Pages `batch_set` could not store (page too large, too many size classes, queue full).
    write_failures,
    /// Payload bytes copied into the pool.
    bytes_written,
    /// Pages asked for by `batch_get`.
    read_requests,
    /// Pages `batch_get` delivered.
    read_hits,
    /// Pages `batch_get` did not find.
    read_misses,
    /// Hits served from this node's own pool.
    read_local_hits,
    /// Pages found but not delivered (destination length differs from the page).
    read_failures,
    /// Payload bytes delivered by `batch_get`.
    bytes_read,
    /// Pages probed by `batch_exists`.
    exists_requests,
    /// Pages `batch_exists` found.
    exists_pages_found,
    /// Pages resident in the pool now.
    pool_keys,
    /// Payload bytes resident in the pool now.
    pool_bytes_used,
    /// Bytes the pool can hold.
    pool_capacity_bytes,
    /// Pages evicted from the pool by LRU.
    evictions,
    /// Pool slots reused before their quarantine ran out (pool too small for the write rate).
    quarantine_early_reuses,
    /// Pool segments moved from one page size class to another.
    segment_steals,
}

impl ShardStats {
    /// Adds `n` to a counter. Only the owning shard may call this.
    #[inline]
    pub fn bump(counter: &AtomicU64, n: u64) {
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Sets a gauge. Only the owning shard may call this.
    #[inline]
    pub fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Ordering::Relaxed);
    }
}
