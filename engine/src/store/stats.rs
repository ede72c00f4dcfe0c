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

        impl NodeStats {
            /// Every counter with its name, in declaration order (for
            /// exporters: Python dicts, metrics, benchmark JSON).
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![ $( (stringify!($name), self.$name), )* ]
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
    /// Hits read from another node's pool over the network.
    read_remote_hits,
    /// Pages found but not delivered (destination length differs from the page).
    read_failures,
    /// Payload bytes delivered by `batch_get`.
    bytes_read,
    /// Remote exchanges (directory or data) that failed or timed out.
    remote_failures,
    /// Pages `batch_set` stored locally but no directory owner accepted (so no
    /// other node can find them; reported as failed).
    directory_put_failures,
    /// Directory entries re-published after a membership change.
    directory_republishes,
    /// Directory lookups a get skipped thanks to a location resolved by the
    /// preceding exists (or the read cache).
    directory_lookups_saved,
    /// Channels to peers opened.
    channels_opened,
    /// Channels dropped after a failed exchange.
    channel_discards,
    /// Channel leases that gave up (all channels busy, or connect failed).
    lease_failures,
    /// Directory entries this shard holds for the cluster.
    directory_entries,
    /// Malformed or unexpected frames received (connection closed).
    protocol_errors,
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
